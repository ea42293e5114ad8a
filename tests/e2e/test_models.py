"""Validation on real-architecture models (models/make_models.py): for each model
and pattern, the pruned model (a) passes onnx.checker with full_check, (b) runs
in onnxruntime, (c) computes what the original computes with the masks of an
independent numpy reference applied, (d) passes nmprune check; and (e) for 2:4
on the fp32 and fp16 models, polygraphy finds every pruned weight sparse."""
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import ROOT, nmprune
import reference

MODELS = ["resnet", "bert", "bert_int8", "bert_fp16", "resnet_external", "constant_weight", "if_branch"]
PATTERNS = ["2:4", "1:4", "16:32", "2:4@v4", "2:4@b4x4", "2:4@t"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, str(ROOT / "models" / "make_models.py"), "all", str(d)], check=True)
    return d


def _tensors(graph):
    """Every weight by its graph name: initializers and Constant values, subgraphs included."""
    for t in graph.initializer:
        yield t.name, t
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    yield n.output[0], a.t
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(a.g)


def _feeds(meta, cond):
    rng = np.random.default_rng(2)
    feeds = {}
    for name, spec in meta["inputs"].items():
        if spec["dtype"] == "bool":
            feeds[name] = np.array(cond)
        else:
            feeds[name] = rng.standard_normal(spec["shape"]).astype(spec["dtype"])
    return feeds


def _run(model, feeds):
    so = ort.SessionOptions()
    # onnxruntime's fused int8 kernels quantize activations; compare without them.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _quant_magnitude(model, name, q):
    """|q - zero_point| * scale in fp32, for the weight behind a per-channel DequantizeLinear."""
    base = name[: -len(".q")]
    t = dict(_tensors(model.graph))
    scale = numpy_helper.to_array(t[base + ".scale"])
    zp = numpy_helper.to_array(t[base + ".zp"])
    return (np.abs(q.astype(np.float32) - zp.astype(np.float32)) * scale).astype(np.float64), zp


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name", MODELS)
def test_model_pattern(suite, tmp_path, name, pattern):
    src = suite / f"{name}.onnx"
    meta = json.loads((suite / f"{name}.axes.json").read_text())
    out = tmp_path / "pruned.onnx"
    r = nmprune("prune", src, "-o", out, "--pattern", pattern, "--report", tmp_path / "r.json", "-q", check=0)
    report = json.loads((tmp_path / "r.json").read_text())
    pruned_names = sorted(w["name"] for w in report["weights"] if "sparsity" in w)
    assert pruned_names == sorted(meta["axes"]), r

    onnx.checker.check_model(str(out), full_check=True)                           # (a)

    original = onnx.load(src)
    expected = onnx.load(src)
    got = dict(_tensors(onnx.load(out).graph))
    for wname, tensor in _tensors(expected.graph):
        if wname not in meta["axes"]:
            continue
        axis, out_axis = meta["axes"][wname]
        w = numpy_helper.to_array(tensor)
        if w.dtype == np.int8:
            mag, zp = _quant_magnitude(original, wname, w)
            keep = reference.mask(w, pattern, axis, out_axis, magnitude=mag)
            want = np.where(keep, w, np.broadcast_to(zp, w.shape)).astype(np.int8)
        else:
            keep = reference.mask(w, pattern, axis, out_axis)
            want = np.where(keep, w, np.zeros_like(w))
        np.testing.assert_array_equal(numpy_helper.to_array(got[wname]), want, err_msg=wname)
        tensor.CopyFrom(numpy_helper.from_array(want, tensor.name))

    for cond in (True, False):                                                    # (b), (c)
        feeds = _feeds(meta, cond)
        have, want = _run(str(out), feeds), _run(expected, feeds)
        tol = 2e-2 if name == "bert_fp16" else 1e-5
        np.testing.assert_allclose(have.astype(np.float32), want.astype(np.float32), rtol=tol, atol=tol)
        if not any(s["dtype"] == "bool" for s in meta["inputs"].values()):
            break

    assert nmprune("check", out, "--pattern", pattern, "-q").code == 0             # (d)


@pytest.mark.parametrize("name", ["resnet", "bert", "bert_fp16"])
def test_polygraphy_finds_pruned_weights_sparse(suite, tmp_path, name):           # (e)
    out = tmp_path / "pruned.onnx"
    nmprune("prune", suite / f"{name}.onnx", "-o", out, "-q", check=0)
    meta = json.loads((suite / f"{name}.axes.json").read_text())
    r = subprocess.run(["polygraphy", "inspect", "sparsity", str(out)], capture_output=True, text=True, timeout=300)
    found = {line.split("Found sparse tensor: ")[1].strip()
             for line in (r.stdout + r.stderr).splitlines() if "Found sparse tensor: " in line}
    assert set(meta["axes"]) <= found, r.stdout + r.stderr
