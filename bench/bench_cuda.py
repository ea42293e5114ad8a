#!/usr/bin/env python3
"""make bench-cuda: the CUDA backend on a GPU, every figure beside a baseline
measured in the same run.

  1. bench/cuda_bench: per family and dtype, kernel bandwidth beside a
     device-to-device copy of the same bytes, and the whole backend with its
     transfers;
  2. end-to-end `prune --dry-run` and `prune` of the 1.2 GB fp32 transformer
     (bench.py's) with --device cuda against --device cpu on this machine's
     cores, and the two outputs compared byte for byte.
Without a device it says so and measures nothing.  CUDA_BENCH_SIDE (8192)
and BENCH_CUDA_SMALL=1 (a 2-layer model instead of 1.2 GB) shrink the work,
for the CUDA emulator's run of this script, whose figures mean nothing.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the 1.2 GB model and the measuring helpers)

NMPRUNE = bench.NMPRUNE
CUDA_BENCH = os.environ.get("CUDA_BENCH", str(bench.ROOT / "build" / "bench" / "cuda_bench"))
SIDE = os.environ.get("CUDA_BENCH_SIDE", "8192")
SMALL = os.environ.get("BENCH_CUDA_SMALL") == "1"


def measure(argv, cleanup=()):
    """Median wall seconds of REPEAT runs (the GPU machine has no GNU time for RSS)."""
    walls = []
    for _ in range(bench.REPEAT):
        for p in cleanup:
            Path(p).unlink(missing_ok=True)
        os.sync()
        t0 = time.perf_counter()
        subprocess.run([str(a) for a in argv], check=True)
        walls.append(time.perf_counter() - t0)
    return sorted(walls)[len(walls) // 2]


def main():
    r = subprocess.run([NMPRUNE, "prune", str(bench.ROOT / "models" / "demo.onnx"), "--dry-run", "--device", "cuda",
                        "-q"], capture_output=True, text=True)
    if r.returncode == 5:
        print(f"bench-cuda: no usable CUDA device ({r.stderr.strip()}): nothing measured")
        return 0
    print("== CUDA kernels beside a device-to-device copy; the backend with transfers ==", flush=True)
    subprocess.run([CUDA_BENCH, SIDE], check=True)

    if SMALL:
        model = bench.transformer_model(bench.OUT / "transformer-small.onnx", layers=2, d=128, ff=512)
    else:
        model = bench.transformer_model(bench.OUT / "transformer-1.2g.onnx")
    size = model.stat().st_size
    print(f"\n== end-to-end, {model.name}, {size / 1e9:.2f} GB, median of {bench.REPEAT} ==", flush=True)
    outs = {}
    for mode in ("--dry-run", "-o"):
        walls = {}
        for dev in ("cpu", "cuda"):
            out = bench.OUT / f"pruned-{dev}.onnx"
            argv = [NMPRUNE, "prune", model, "--device", dev, "-q"]
            argv += ["--dry-run"] if mode == "--dry-run" else ["-o", out]
            walls[dev] = measure(argv, cleanup=[out])
            if mode == "-o":
                outs[dev] = out
            print(f"  {mode:9} --device {dev:4}: {walls[dev]:.3f} s, {size / walls[dev] / 1e9:.2f} GB/s", flush=True)
        print(f"  {mode:9} cuda / cpu time: {walls['cuda'] / walls['cpu']:.2f}")
    same = outs["cpu"].read_bytes() == outs["cuda"].read_bytes()
    print(f"  outputs byte-identical: {'yes' if same else 'NO'}")
    for p in outs.values():
        p.unlink(missing_ok=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
