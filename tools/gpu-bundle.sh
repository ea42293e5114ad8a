#!/usr/bin/env bash
# Builds nmprune with CUDA here and packs into .gpu/ what the GPU machine
# needs to verify it without a package registry: the tool, the CUDA test and
# benchmark binaries, and the shared libraries they load (protobuf-c,
# jansson, cmocka, zlib, OpenBLAS for sparsegpt's CPU sweep; the CUDA runtime is
# linked statically, cuBLAS is the machine's own).  Then, with the
# device tool: carry [".gpu"], command "bash tools/gpu-verify.sh".
set -euo pipefail
cd "$(dirname "$0")/.."
make CUDA=1 all build/tests/cuda_backend build/bench/cuda_bench
rm -rf .gpu
mkdir -p .gpu/bin .gpu/lib
cp build/nmprune build/tests/cuda_backend build/bench/cuda_bench .gpu/bin/
for bin in .gpu/bin/*; do
	ldd "$bin" | awk '/=> \// { print $3 }' | grep -E 'protobuf-c|jansson|cmocka|libz\.' || true
done | sort -u | while read -r lib; do cp -L "$lib" .gpu/lib/; done
# sparsegpt's CPU sweep, which the GPU sweep is compared with, loads OpenBLAS at run time.
for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
	path=$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')
	[ -n "$path" ] && cp -L "$path" .gpu/lib/
done
# .gpu/ is in .gitignore: it travels to the device only when carried.
du -sh .gpu
ls .gpu/bin .gpu/lib
