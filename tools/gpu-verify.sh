#!/usr/bin/env bash
# On the GPU machine, from the repository root with .gpu/ carried (made by
# make gpu-bundle): the CUDA backend against the CPU backend, prune --device
# cuda against --device cpu end to end, and the CUDA benchmark.  Output goes
# to stdout and to $OUT/gpu-verify.log when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" PYTHONUNBUFFERED=1
log=${OUT:-/tmp}/gpu-verify.log
{
	nvidia-smi -L || true
	echo "== test-cuda: backend against CPU"
	.gpu/bin/cuda_backend; rc1=$?
	echo "== test-cuda: end to end"
	NMPRUNE=.gpu/bin/nmprune python3 -m pytest -q -rs tests/cuda; rc2=$?
	echo "== bench-cuda"
	NMPRUNE=.gpu/bin/nmprune CUDA_BENCH=.gpu/bin/cuda_bench BENCH_REPEAT=3 python3 bench/bench_cuda.py; rc3=$?
	echo "== exit codes: backend $rc1, e2e $rc2, bench $rc3"
	[ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && [ $rc3 -eq 0 ]
} 2>&1 | tee "$log"
