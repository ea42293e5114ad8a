"""prune and check end to end: the pruned model's weights equal the original's
times an independent numpy mask, onnxruntime computes the same outputs, the
ONNX checker accepts it, and check passes with the pattern it was pruned with."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import nmprune, save
import reference

F = TensorProto.FLOAT


def _model(nodes, inits, x_shape, y_shape, dtype=F):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", dtype, x_shape)],
                          [helper.make_tensor_value_info("Y", dtype, y_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _w(name, shape, seed, dtype=np.float32):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(dtype), name)


def matmul_b():          # weight [K,N] reduced on axis 0, output channels axis 1
    return _model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [_w("W", (64, 32), 1)],
                  [3, 64], [3, 32]), {"W": (0, 1)}


def gemm_trans_b():      # weight [N,K] reduced on axis 1
    return _model([helper.make_node("Gemm", ["X", "W"], ["Y"], name="gemm", transB=1)],
                  [_w("W", (32, 64), 2)], [3, 64], [3, 32]), {"W": (1, 0)}


def conv():              # weight [Cout,Cin,kh,kw] reduced on axis 1
    return _model([helper.make_node("Conv", ["X", "W"], ["Y"], name="conv", pads=[1, 1, 1, 1])],
                  [_w("W", (32, 64, 3, 3), 3)], [1, 64, 6, 6], [1, 32, 6, 6]), {"W": (1, 0)}


def transposed_conv_weight():   # HWIO stored, Transpose(perm=[3,2,0,1]) to OIHW
    return _model([helper.make_node("Transpose", ["W"], ["Wt"], perm=[3, 2, 0, 1]),
                   helper.make_node("Conv", ["X", "Wt"], ["Y"], name="conv")],
                  [_w("W", (3, 3, 64, 32), 4)], [1, 64, 5, 5], [1, 32, 3, 3]), {"W": (2, 3)}


def fp16_matmul():
    m = _model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")],
               [_w("W", (64, 32), 5, np.float16)], [3, 64], [3, 32], TensorProto.FLOAT16)
    return m, {"W": (0, 1)}


MODELS = [matmul_b, gemm_trans_b, conv, transposed_conv_weight, fp16_matmul]
PATTERNS = ["2:4", "1:4", "16:32", "2:4@v4", "2:4@b4x4", "2:4@t", "50%"]


def _weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def _run(model_or_path, x, optimize=True):
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    so = ort.SessionOptions()
    if not optimize:
        # The optimizer fuses DequantizeLinear + MatMul into a kernel that also
        # quantizes the activations, which changes the numbers.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


@pytest.mark.parametrize("build", MODELS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_prune_matches_numpy_reference(tmp_path, build, pattern):
    model, axes = build()
    src = save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    nmprune("prune", src, "-o", out, "--pattern", pattern, "-q", check=0)
    onnx.checker.check_model(str(out), full_check=True)

    before, after = _weights(src), _weights(out)
    expected = onnx.load(src)
    for name, (axis, out_axis) in axes.items():
        keep = reference.mask(before[name], pattern, axis, out_axis)
        want = np.where(keep, before[name], np.zeros_like(before[name]))
        np.testing.assert_array_equal(after[name], want)
        for t in expected.graph.initializer:
            if t.name == name:
                t.CopyFrom(numpy_helper.from_array(want, name))

    dtype = np.float16 if build is fp16_matmul else np.float32
    x_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(9).standard_normal(x_shape).astype(dtype)
    got, ref = _run(str(out), x), _run(expected, x)
    np.testing.assert_allclose(got, ref, rtol=1e-3 if dtype == np.float16 else 1e-6, atol=1e-5)

    assert nmprune("check", out, "--pattern", pattern).code == 0
    if pattern != "50%":
        assert nmprune("check", src, "--pattern", pattern).code == 1


def test_int8_qdq_prunes_to_zero_point(tmp_path):
    rng = np.random.default_rng(3)
    q = rng.integers(-120, 120, (64, 32), dtype=np.int8)
    scale = np.linspace(0.01, 0.05, 32).astype(np.float32)
    zp = rng.integers(-5, 5, 32).astype(np.int8)
    m = _model([helper.make_node("DequantizeLinear", ["Wq", "scale", "zp"], ["W"], axis=1),
                helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")],
               [numpy_helper.from_array(q, "Wq"), numpy_helper.from_array(scale, "scale"),
                numpy_helper.from_array(zp, "zp")], [3, 64], [3, 32])
    src = save(m, tmp_path / "q.onnx")
    out = tmp_path / "out.onnx"
    nmprune("prune", src, "-o", out, "-q", check=0)
    onnx.checker.check_model(str(out), full_check=True)
    magnitude = np.abs(q.astype(np.float32) - zp) * scale      # fp32, as the engine computes
    keep = reference.mask(q, "2:4", 0, 1, magnitude=magnitude.astype(np.float64))
    got = _weights(out)["Wq"]
    np.testing.assert_array_equal(got, np.where(keep, q, np.broadcast_to(zp, q.shape)))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    deq = (np.where(keep, q, zp).astype(np.float32) - zp) * scale
    np.testing.assert_allclose(_run(str(out), x, optimize=False), x @ deq, rtol=1e-5, atol=1e-5)
    assert nmprune("check", out).code == 0


def test_external_data_and_general_path(tmp_path):
    model, _ = matmul_b()
    onnx.save_model(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.bin",
                    size_threshold=0)
    raw_before = (tmp_path / "ext.bin").read_bytes()
    out = tmp_path / "out.onnx"
    nmprune("prune", tmp_path / "ext.onnx", "-o", out, "-q", check=0)
    assert (tmp_path / "ext.bin").read_bytes() == raw_before          # input untouched
    w = numpy_helper.to_array(onnx.load(tmp_path / "ext.onnx").graph.initializer[0])
    np.testing.assert_array_equal(_weights(out)["W"], np.where(reference.mask(w, "2:4", 0, 1), w, 0))
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    src = save(matmul_b()[0], tmp_path / "in.onnx")   # save_model above made `model` external
    nmprune("prune", src, "-o", a, "-q", check=0)
    nmprune("prune", src, "-o", b, "-q", "--general-path", check=0)
    assert a.read_bytes() == b.read_bytes()


def test_metadata_dry_run_report_and_quiet(tmp_path):
    model, _ = conv()
    src = save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    r = nmprune("prune", src, "-o", out, "--report", tmp_path / "r.json", check=0)
    assert r.out == ""
    lines = r.err.splitlines()
    assert lines[0].split() == ["WEIGHT", "OP", "SHAPE", "PATTERN", "SPARSITY", "KEPT", "L1", "VS", "UNSTRUCTURED"]
    assert lines[1].split()[:5] == ["W", "Conv", "[32,64,3,3]", "2:4", "50.00%"]
    assert lines[-1].startswith("pruned 1 weights, skipped 0; 9216 of 18432 parameters in candidate weights zeroed (50.00%)")
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["nmprune.version"] == "0.1.0" and meta["nmprune.pattern"] == "2:4"
    w = json.loads(meta["nmprune.weights"])["W"]
    assert w["pattern"] == "2:4" and w["axis"] == 1 and w["sparsity"] == 0.5 and 0.5 < w["kept"] < 1
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["summary"]["params_zeroed"] == 9216 and rep["weights"][0]["sparsity"] == 0.5
    assert rep["weights"][0]["kept_vs_unstructured"] <= 1.0

    # Pruning again replaces nmprune's metadata rather than repeating it.
    again = tmp_path / "again.onnx"
    nmprune("prune", out, "-o", again, "-q", "--pattern", "1:4", check=0)
    keys = [p.key for p in onnx.load(again).metadata_props]
    assert keys.count("nmprune.pattern") == 1

    dry = nmprune("prune", src, "--dry-run", "--json", check=0)
    assert json.loads(dry.out)["dry_run"] is True
    assert not (tmp_path / "none.onnx").exists()
    q = nmprune("prune", src, "-o", tmp_path / "q.onnx", "-q", check=0)
    assert q.out == "" and q.err == ""


def test_nan_weight_is_an_error(tmp_path):
    model, _ = matmul_b()
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[5, 7] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    src = save(model, tmp_path / "in.onnx")
    r = nmprune("prune", src, "-o", tmp_path / "out.onnx")
    assert r.code == 3 and "tensor 'W': NaN at flat index 167" in r.err, r
    assert not (tmp_path / "out.onnx").exists()


def test_check_json_and_device(tmp_path):
    model, _ = matmul_b()
    src = save(model, tmp_path / "in.onnx")
    r = nmprune("check", src, "--json")
    assert r.code == 1
    rep = json.loads(r.out)
    assert rep["summary"]["failing"] == 1 and rep["weights"][0]["violations"] == 512
    r = nmprune("prune", src, "-o", tmp_path / "o.onnx", "--device", "cuda")
    assert r.code == 5 and "--device cuda:" in r.err, r
    assert not (tmp_path / "o.onnx").exists()
    r = nmprune("prune", src, "-o", tmp_path / "o.onnx", "--device", "auto", "-v", check=0)
    assert "mask engine: CPU" in r.err
