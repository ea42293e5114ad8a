"""End to end on a GPU (make test-cuda): `prune --device cuda` writes the very
bytes `--device cpu` writes, for every generated model and pattern family and
for the real exported models of `make deps`, and `check` passes.  Skipped,
saying why, where no CUDA device answers (or no real model is unpacked)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NMPRUNE = os.environ.get("NMPRUNE", str(ROOT / "build" / "nmprune"))
PATTERNS = ["2:4", "1:4", "16:32", "5:64", "2:4@v4", "2:4@b4x4", "2:4@t", "4:8@t", "50%", "30%@v4"]
REAL = ROOT / ".cache" / "real-models"


def run(*args):
    return subprocess.run([NMPRUNE, *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, str(ROOT / "models" / "make_models.py"), "all", str(d)], check=True,
                   capture_output=True)
    found = sorted(p for p in d.glob("*.onnx"))
    assert len(found) >= 6
    return found


@pytest.fixture(scope="module")
def device(models):
    r = run("prune", models[0], "--dry-run", "--device", "cuda", "-q")
    if r.returncode == 5:
        pytest.skip(f"no usable CUDA device: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("pattern", PATTERNS)
def test_cuda_writes_what_cpu_writes(models, device, pattern, tmp_path):
    compared = 0
    for m in models:
        outs = {}
        for dev in ("cpu", "cuda"):
            (tmp_path / dev).mkdir(exist_ok=True)
            out = tmp_path / dev / m.name  # same name: an external data file's location matches
            r = run("prune", m, "-o", out, "--pattern", pattern, "--device", dev, "-q")
            data = out.with_name(out.name + ".data")
            outs[dev] = (r.returncode, (out.read_bytes() if out.exists() else b"") +
                         (data.read_bytes() if data.exists() else b""), r.stderr)
        assert outs["cpu"][0] == outs["cuda"][0], (m.name, outs["cpu"][2], outs["cuda"][2])
        if outs["cpu"][0] != 0:
            continue
        assert outs["cpu"][1] == outs["cuda"][1], f"{m.name} {pattern}: the files differ"
        assert run("check", tmp_path / "cuda" / m.name, "--pattern", pattern, "-q").returncode == 0
        compared += 1
    assert compared >= 3


@pytest.mark.parametrize("pattern", ["2:4", "2:4@v4", "2:4@t", "50%"])
def test_cuda_writes_what_cpu_writes_on_real_models(device, pattern, tmp_path):
    real = sorted(REAL.glob("*.onnx"))
    if not real:
        pytest.skip("real models not unpacked: run make deps")
    for m in real:
        outs = {}
        for dev in ("cpu", "cuda"):
            out = tmp_path / f"{dev}.onnx"
            r = run("prune", m, "-o", out, "--pattern", pattern, "--device", dev, "-q")
            assert r.returncode == 0, (m.name, dev, r.stderr)
            outs[dev] = out.read_bytes()
        assert outs["cpu"] == outs["cuda"], f"{m.name} {pattern}: the files differ"
