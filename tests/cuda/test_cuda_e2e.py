"""End to end on a GPU (make test-cuda): `prune --device cuda` writes the very
bytes `--device cpu` writes, for every generated model and pattern family and
for the real exported models of `make deps`, and `check` passes.  Skipped,
saying why, where no CUDA device answers (or no real model is unpacked)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def prune_on_both(model, pattern, tmp_path):
    """{device: (exit code, the output's bytes and its external data's, stderr)} for cpu and cuda."""
    outs = {}
    for dev in ("cpu", "cuda"):
        (tmp_path / dev).mkdir(exist_ok=True)
        out = tmp_path / dev / model.name  # same name: an external data file's location matches
        r = run("prune", model, "-o", out, "--pattern", pattern, "--device", dev, "-q")
        data = out.with_name(out.name + ".data")
        outs[dev] = (r.returncode, (out.read_bytes() if out.exists() else b"") +
                     (data.read_bytes() if data.exists() else b""), r.stderr)
    return outs


@pytest.mark.parametrize("pattern", PATTERNS)
def test_cuda_writes_what_cpu_writes(models, device, pattern, tmp_path):
    compared = 0
    for m in models:
        outs = prune_on_both(m, pattern, tmp_path)
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
        outs = prune_on_both(m, pattern, tmp_path)
        for dev in ("cpu", "cuda"):
            assert outs[dev][0] == 0, (m.name, dev, outs[dev][2])
        assert outs["cpu"][1] == outs["cuda"][1], f"{m.name} {pattern}: the files differ"


def _mlp(path, rng):
    """x [b, 6, 96] -> MatMul W1 [96, 40] -> Relu -> MatMul W2 [40, 24]: K 96 and 40, neither a multiple of 128."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx
    w1 = rng.standard_normal((96, 40)).astype(np.float32)
    w2 = rng.standard_normal((40, 24)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 6, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "40%"])
def test_sparsegpt_on_cuda_matches_the_cpu(device, pattern, tmp_path):
    """The sweep on the GPU (cuBLAS): the same masks as on the CPU, weights within 1e-5 of the largest."""
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file, save_file
    rng = np.random.default_rng(5)
    _mlp(tmp_path / "mlp.onnx", rng)
    scale = np.exp(rng.standard_normal(96)).astype(np.float32)
    save_file({"x": (rng.standard_normal((16, 2, 6, 96)) * scale).astype(np.float32)}, str(tmp_path / "d.safetensors"))
    got = {}
    for dev in ("cpu", "cuda"):
        r = run("prune", tmp_path / "mlp.onnx", "-o", tmp_path / f"{dev}.onnx", "--method", "sparsegpt",
                "--calibration", tmp_path / "d.safetensors", "--align", "none", "--pattern", pattern,
                "--device", dev, "--save-masks", tmp_path / f"{dev}.safetensors", "--json")
        assert r.returncode == 0, r.stderr
        notes = [w["calibration"].get("note", "") for w in json.loads(r.stdout)["weights"]]
        assert not any("on the CPU" in n for n in notes), notes
        weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / f"{dev}.onnx")).graph.initializer}
        got[dev] = (load_file(str(tmp_path / f"{dev}.safetensors")), weights)
    for name in ("W1", "W2"):
        assert np.array_equal(got["cpu"][0][name], got["cuda"][0][name]), name
        cpu, cuda = got["cpu"][1][name], got["cuda"][1][name]
        assert (cuda[got["cpu"][0][name] == 0] == 0).all()
        assert np.abs(cpu - cuda).max() <= 1e-5 * np.abs(cpu).max(), name
