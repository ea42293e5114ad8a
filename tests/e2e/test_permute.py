"""Channel permutation (prune --permute): the permuted model computes what the
original computes (onnxruntime, exact kernels, relative error <= 1e-5 in fp32);
after masking it passes check and keeps at least the magnitude it kept without
permutation; groups that cannot be permuted are reported with their reason."""
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT, nmprune, save, weights
import reference


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, str(ROOT / "models" / "make_models.py"), "all", str(d)], check=True)
    return d


def _init(rng, name, shape, dtype=np.float32):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_zoo():
    """Two permutable groups: 16 channels through BatchNormalization, a per-channel
    Mul and Add, a depthwise Conv, MaxPool, Concat and Split on the batch axis; 32
    channels through GlobalAveragePool and Flatten into a Gemm."""
    rng = np.random.default_rng(5)
    inits = [
        _init(rng, "W1", (16, 8, 3, 3)), _init(rng, "B1", (16,)),
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal(16)).astype(np.float32), "bn.scale"),
        _init(rng, "bn.bias", (16,)), _init(rng, "bn.mean", (16,)),
        numpy_helper.from_array((1 + np.abs(rng.standard_normal(16))).astype(np.float32), "bn.var"),
        _init(rng, "s", (16, 1, 1)), _init(rng, "t", (1, 16, 1, 1)),
        _init(rng, "dw.W", (16, 1, 3, 3)), _init(rng, "dw.B", (16,)),
        _init(rng, "W2", (32, 16, 1, 1)), _init(rng, "W3", (32, 10)), _init(rng, "C3", (10,)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b1"], name="bn"),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("Mul", ["r1", "s"], ["m1"], name="mul"),
        helper.make_node("Add", ["m1", "t"], ["a1"], name="add"),
        helper.make_node("Conv", ["a1", "dw.W", "dw.B"], ["d1"], name="dw", group=16, pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["d1"], ["p1"], name="pool", kernel_shape=[2, 2]),
        helper.make_node("Sigmoid", ["p1"], ["g1"]),
        helper.make_node("Concat", ["g1", "g1"], ["cat"], name="cat", axis=0),
        helper.make_node("Split", ["cat"], ["s0", "s1"], name="split", axis=0, num_outputs=2),
        helper.make_node("Add", ["s0", "s1"], ["j1"], name="join"),
        helper.make_node("Conv", ["j1", "W2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["fl"], name="flatten"),
        helper.make_node("Gemm", ["fl", "W3", "C3"], ["y"], name="head"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits, opset=18)


def mlp_zoo():
    """Two permutable groups: 32 channels through a bias Add, LayerNormalization, Tanh
    and two Transposes into a weight read through a Transpose; 64 channels into an
    int8 weight behind a per-channel DequantizeLinear."""
    rng = np.random.default_rng(6)
    q = rng.integers(-100, 100, (64, 16)).astype(np.int8)
    inits = [
        _init(rng, "W1", (16, 32)), _init(rng, "b1", (32,)),
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal(32)).astype(np.float32), "ln.g"),
        _init(rng, "ln.b", (32,)), _init(rng, "W2T", (64, 32)), _init(rng, "b2", (64,)),
        numpy_helper.from_array(q, "Wq"),
        numpy_helper.from_array((0.01 + 0.01 * rng.random(16)).astype(np.float32), "Wq.scale"),
        numpy_helper.from_array(rng.integers(-3, 3, 16).astype(np.int8), "Wq.zp"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("LayerNormalization", ["hb", "ln.g", "ln.b"], ["ln"], name="ln", axis=-1),
        helper.make_node("Tanh", ["ln"], ["t"]),
        helper.make_node("Transpose", ["t"], ["tt"], name="tr1", perm=[0, 2, 1]),
        helper.make_node("Transpose", ["tt"], ["t2"], name="tr2", perm=[0, 2, 1]),
        helper.make_node("Transpose", ["W2T"], ["W2"], name="w2t", perm=[1, 0]),
        helper.make_node("MatMul", ["t2", "W2"], ["h2"], name="fc2"),
        helper.make_node("Add", ["h2", "b2"], ["h2b"]),
        helper.make_node("Relu", ["h2b"], ["r2"]),
        helper.make_node("DequantizeLinear", ["Wq", "Wq.scale", "Wq.zp"], ["W3"], name="dq", axis=1),
        helper.make_node("MatMul", ["r2", "W3"], ["y"], name="fc3"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 16])], inits)


def shape_zoo():
    """Biases shaped for broadcasting in the graph, as exporters leave them: a [16] bias through Reshape to
    [1, -1, 1, 1] and a [16] scale through Unsqueeze on axes [0, 2, 3] move with the 16 channels; 32 pooled
    channels through Squeeze of axes [2, 3] into a MatMul; a [2, 8] constant reshaped to [16] regroups its
    axes and blocks."""
    rng = np.random.default_rng(10)
    inits = [_init(rng, "W1", (16, 8, 3, 3)), _init(rng, "b1", (16,)), _init(rng, "s1", (16,)),
             _init(rng, "W2", (32, 16, 1, 1)), _init(rng, "W3", (32, 10)), _init(rng, "W4", (16, 16)),
             _init(rng, "bq", (2, 8)), _init(rng, "W5", (16, 8)),
             numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64), "to4d"),
             numpy_helper.from_array(np.array([0, 2, 3], np.int64), "unit"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "spatial"),
             numpy_helper.from_array(np.array([16], np.int64), "flat")]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["b1", "to4d"], ["rb1"], name="bias4d"),
        helper.make_node("Add", ["c1", "rb1"], ["a1"]),
        helper.make_node("Unsqueeze", ["s1", "unit"], ["us1"], name="scale4d"),
        helper.make_node("Mul", ["a1", "us1"], ["m1"]),
        helper.make_node("Relu", ["m1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["gp"]),
        helper.make_node("Squeeze", ["gp", "spatial"], ["sq"], name="squeeze"),
        helper.make_node("MatMul", ["sq", "W3"], ["y"], name="head"),
        helper.make_node("MatMul", ["x2", "W4"], ["h"], name="fc4"),
        helper.make_node("Reshape", ["bq", "flat"], ["rq"], name="regroup"),
        helper.make_node("Add", ["h", "rq"], ["hq"]),
        helper.make_node("MatMul", ["hq", "W5"], ["y2"], name="fc5"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 6, 6]),
                          helper.make_tensor_value_info("x2", TensorProto.FLOAT, [4, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10]),
                   helper.make_tensor_value_info("y2", TensorProto.FLOAT, [4, 8])], inits)


def blockers():
    """Each eligible weight reads channels that something blocks."""
    rng = np.random.default_rng(7)
    inits = [_init(rng, n, s) for n, s in (("W1", (16, 24)), ("W2", (16, 16)), ("W3", (16, 16)),
                                           ("W4", (32, 8)))]
    inits.append(numpy_helper.from_array(np.array([6, 16], np.int64), "shape"))  # rows of 24 become rows of 16
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["a"], name="fc1"),
        helper.make_node("Reshape", ["a", "shape"], ["b"], name="reshape"),
        helper.make_node("MatMul", ["b", "W2"], ["c"], name="fc2"),
        helper.make_node("MatMul", ["c", "W3"], ["d"], name="fc3"),
        helper.make_node("Concat", ["x3", "x4"], ["e"], name="concat", axis=1),
        helper.make_node("MatMul", ["e", "W4"], ["y"], name="fc4"),
    ]
    return _model(nodes, [helper.make_tensor_value_info(x, TensorProto.FLOAT, [4, 16]) for x in ("x", "x3", "x4")],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8]),
                   helper.make_tensor_value_info("c", TensorProto.FLOAT, [6, 16])], inits)


def csp_zoo():
    """A C2f block and an SPPF block as YOLOv8 exports them.  C2f: a Conv's 32 channels split in two
    (sizes from an input), the second half through a residual bottleneck, and [first half, second half,
    bottleneck sum] concatenated into a Conv.  SPPF: a Conv's output and two MaxPools of it concatenated
    into a Conv, then pooled into a Gemm."""
    rng = np.random.default_rng(11)
    inits = [_init(rng, "W1", (32, 8, 1, 1)), _init(rng, "B1", (32,)),
             numpy_helper.from_array(np.array([16, 16], np.int64), "halves"),
             _init(rng, "Wm1", (16, 16, 3, 3)), _init(rng, "Wm2", (16, 16, 3, 3)),
             _init(rng, "W2", (32, 48, 1, 1)), _init(rng, "B2", (32,)),
             _init(rng, "W3", (32, 96, 1, 1)), _init(rng, "W4", (32, 10))]
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="cv1"),
        helper.make_node("Sigmoid", ["c1"], ["g1"]),
        helper.make_node("Mul", ["c1", "g1"], ["a1"]),
        helper.make_node("Split", ["a1", "halves"], ["y0", "y1"], name="split", axis=1),
        helper.make_node("Conv", ["y1", "Wm1"], ["m1"], name="m.cv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["m1"], ["r1"]),
        helper.make_node("Conv", ["r1", "Wm2"], ["m2"], name="m.cv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["y1", "m2"], ["y2"], name="residual"),
        helper.make_node("Concat", ["y0", "y1", "y2"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "W2", "B2"], ["c2"], name="cv2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["p1"], ["p2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["r2", "p1", "p2"], ["pools"], name="sppf", axis=-3),
        helper.make_node("Conv", ["pools", "W3"], ["c3"], name="cv3"),
        helper.make_node("GlobalAveragePool", ["c3"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["fl"]),
        helper.make_node("Gemm", ["fl", "W4"], ["y"], name="head"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)


def captured():
    """The channels of 'h' are also read inside an If branch."""
    rng = np.random.default_rng(8)
    then = helper.make_graph([helper.make_node("MatMul", ["h", "Wt"], ["t"], name="then.fc")], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, 16])],
                             [_init(rng, "Wt", (16, 16))])
    other = helper.make_graph([helper.make_node("Identity", ["h2"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4, 16])])
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("MatMul", ["h", "W2"], ["h2"], name="fc2"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16]),
                          helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
                  [_init(rng, "W1", (16, 16)), _init(rng, "W2", (16, 16))])


def bodies():
    """Weights inside subgraphs, each body a graph of its own: an If whose then_branch holds an MLP on the outer
    'x' (its hidden channels move, its input channels come from outside), whose else_branch nests another If
    whose MLP has a Constant-node weight and a main-graph weight that only it reads, and a Loop whose body runs
    an MLP on its carried state with one weight of its own and one from the main graph.  'Wz', read by the
    then_branch and by the loop body, stays where it is."""
    rng = np.random.default_rng(9)
    f32 = TensorProto.FLOAT

    def const(name, shape):
        return helper.make_node("Constant", [], [name], name=name, value=_init(rng, name, shape))

    def mlp(x, w1, w2, y, prefix):
        return [helper.make_node("MatMul", [x, w1], [f"{prefix}.h"], name=f"{prefix}.fc1"),
                helper.make_node("Relu", [f"{prefix}.h"], [f"{prefix}.r"]),
                helper.make_node("MatMul", [f"{prefix}.r", w2], [y], name=f"{prefix}.fc2")]

    def plus_wz(x, y, prefix):
        return [helper.make_node("MatMul", [x, "Wz"], [f"{prefix}.z"], name=f"{prefix}.fcz"),
                helper.make_node("Add", [f"{prefix}.m", f"{prefix}.z"], [y])]

    then = helper.make_graph(mlp("x", "Wa", "Wb", "then.m", "then") + plus_wz("x", "t", "then"), "then", [],
                             [helper.make_tensor_value_info("t", f32, [4, 16])],
                             [_init(rng, "Wa", (16, 32)), _init(rng, "Wb", (32, 16))])
    inner_then = helper.make_graph([const("Wc1", (16, 32))] + mlp("x", "Wc1", "Wc2", "u", "in"),
                                   "inner_then", [], [helper.make_tensor_value_info("u", f32, [4, 16])])
    inner_else = helper.make_graph([helper.make_node("Identity", ["x"], ["v"])], "inner_else", [],
                                   [helper.make_tensor_value_info("v", f32, [4, 16])])
    other = helper.make_graph([helper.make_node("If", ["cond2"], ["w"], name="inner", then_branch=inner_then,
                                                else_branch=inner_else)], "else", [],
                              [helper.make_tensor_value_info("w", f32, [4, 16])])
    body = helper.make_graph(
        mlp("s_in", "Wl1", "Wl2", "loop.m", "loop") + plus_wz("s_in", "s_out", "loop") +
        [helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", f32, [4, 16])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", f32, [4, 16])],
        [_init(rng, "Wl1", (16, 32))])
    nodes = [
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other),
        helper.make_node("Loop", ["trips", "go", "x"], ["z"], name="loop", body=body),
    ]
    small = lambda name, shape: numpy_helper.from_array((0.2 * rng.standard_normal(shape)).astype(np.float32), name)
    return _model(nodes, [helper.make_tensor_value_info("x", f32, [4, 16]),
                          helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                          helper.make_tensor_value_info("cond2", TensorProto.BOOL, [])],
                  [helper.make_tensor_value_info("y", f32, [4, 16]), helper.make_tensor_value_info("z", f32, [4, 16])],
                  [numpy_helper.from_array(np.array(3, np.int64), "trips"),
                   numpy_helper.from_array(np.array(True), "go"), _init(rng, "Wc2", (32, 16)),
                   small("Wl2", (32, 16)), small("Wz", (16, 16))])


ZOO = {"conv_zoo": conv_zoo, "mlp_zoo": mlp_zoo, "shape_zoo": shape_zoo, "csp_zoo": csp_zoo}
# groups each model has that must be permuted
PERMUTED = {"resnet": 2, "bert": 2, "bert_int8": 2, "bert_fp16": 2, "conv_zoo": 2, "mlp_zoo": 2, "shape_zoo": 2,
            "csp_zoo": 5}


def _path(suite, tmp_path, name):
    if name in ZOO:
        return save(ZOO[name](), tmp_path / f"{name}.onnx")
    return suite / f"{name}.onnx"


def _outputs(path, feeds):
    so = ort.SessionOptions()
    # exact kernels: onnxruntime's fused int8 kernels quantize activations
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _feeds(path):
    rng = np.random.default_rng(3)
    feeds = {}
    for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs():
        dtype = np.float16 if i.type == "tensor(float16)" else np.float32
        feeds[i.name] = rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(dtype)
    return feeds


@pytest.mark.parametrize("name", sorted(PERMUTED))
def test_permuted_model_computes_the_same(suite, tmp_path, name):
    src = _path(suite, tmp_path, name)
    out = tmp_path / "permuted.onnx"
    nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--report", tmp_path / "r.json",
            "-q", check=0)
    groups = json.loads((tmp_path / "r.json").read_text())["permutation"]["groups"]
    assert sum(g["permuted"] for g in groups) == PERMUTED[name], groups
    before, after = weights(src), weights(out)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert changed, "nothing was permuted"
    for k in changed:  # a permutation moves values, never changes them
        np.testing.assert_array_equal(np.sort(before[k], axis=None), np.sort(after[k], axis=None), err_msg=k)
    onnx.checker.check_model(str(out), full_check=True)
    feeds = _feeds(src)
    tol = 2e-3 if name == "bert_fp16" else 1e-5
    for want, have in zip(_outputs(src, feeds), _outputs(out, feeds)):
        want, have = want.astype(np.float64), have.astype(np.float64)
        assert np.abs(have - want).max() <= tol * np.abs(want).max(), name


@pytest.mark.parametrize("name", sorted(PERMUTED))
def test_permute_then_mask(suite, tmp_path, name):
    """Masked after permutation: complies, keeps at least as much as without, and its
    masks are the reference masks of the permuted weights."""
    src = _path(suite, tmp_path, name)
    plain, permuted, only = tmp_path / "plain.onnx", tmp_path / "permuted.onnx", tmp_path / "only.onnx"
    nmprune("prune", src, "-o", plain, "--align", "none", "--report", tmp_path / "plain.json", "-q", check=0)
    nmprune("prune", src, "-o", permuted, "--permute", "--align", "none", "--report", tmp_path / "perm.json",
            "-q", check=0)
    nmprune("prune", src, "-o", only, "--permute-only", "--align", "none", "-q", check=0)
    assert nmprune("check", permuted, "--align", "none", "-q").code == 0

    plain_w = {w["name"]: w for w in json.loads((tmp_path / "plain.json").read_text())["weights"]}
    gained = 0
    for w in json.loads((tmp_path / "perm.json").read_text())["weights"]:
        if "kept_l1_ratio" not in w:
            continue  # not eligible
        if "kept_l1_ratio_unpermuted" not in w:
            assert w["kept_l1_ratio"] == pytest.approx(plain_w[w["name"]]["kept_l1_ratio"], abs=1e-9)
            continue
        # the unpermuted figure is what plain pruning keeps
        assert w["kept_l1_ratio_unpermuted"] == pytest.approx(plain_w[w["name"]]["kept_l1_ratio"], rel=1e-5)
        assert w["kept_l1_ratio"] >= w["kept_l1_ratio_unpermuted"] - 1e-6
        gained += w["kept_l1_ratio"] > w["kept_l1_ratio_unpermuted"] + 1e-4
    assert gained >= 1

    if name in ("bert_int8", "mlp_zoo"):
        return  # quantized weights: the masks are checked by check above
    masked = weights(permuted)
    for k, w in weights(only).items():
        meta = next((x for x in json.loads((tmp_path / "perm.json").read_text())["weights"]
                     if x["name"] == k and "sparsity" in x), None)
        if meta is None:
            np.testing.assert_array_equal(masked[k], w, err_msg=k)
            continue
        out_axis = 0 if w.ndim == 4 else (1 - meta["axis"] if w.ndim == 2 else -1)
        keep = reference.mask(w, "2:4", meta["axis"], out_axis)
        np.testing.assert_array_equal(masked[k], np.where(keep, w, np.zeros_like(w)), err_msg=k)


def test_blocked_groups_name_their_reason(tmp_path):
    src = save(blockers(), tmp_path / "b.onnx")
    r = nmprune("prune", src, "-o", tmp_path / "o.onnx", "--permute", "--align", "none", "--json", check=0)
    groups = {g["from"]: g for g in json.loads(r.out)["permutation"]["groups"]}
    assert groups["W1"]["blocked"] == "'x' is a graph input"
    assert groups["W2"]["blocked"] == "Reshape 'reshape' mixes or reorders the channels of 'b'"
    assert groups["W3"]["blocked"] == "'c' is a graph output"
    # neither graph input's channel count is known, so where each begins in 'e' is not
    assert groups["W4"]["blocked"] == "the channel counts of Concat 'concat' are unknown or do not add up"
    assert not any(g["permuted"] for g in groups.values())
    # nothing permuted: the output is what plain pruning writes
    nmprune("prune", src, "-o", tmp_path / "plain.onnx", "--align", "none", "-q", check=0)
    assert (tmp_path / "o.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()
    text = nmprune("prune", src, "-o", tmp_path / "o2.onnx", "--permute", "--align", "none", check=0).err
    assert "group 1 from 'W2': blocked: Reshape 'reshape' mixes or reorders the channels of 'b'" in text


def _column_order(before, after):
    """The old column of each new column of a 2-D view, matched by its values whatever order its rows took
    (random weights: no two columns hold the same values)."""
    cols = {tuple(np.sort(before[:, j])): j for j in range(before.shape[1])}
    return np.array([cols[tuple(np.sort(after[:, j]))] for j in range(after.shape[1])])


def test_concat_and_split_divide_the_channels_into_runs(tmp_path):
    """A Concat or Split along the channels divides them: each run moves in its own group's order, inside the
    run, and the runs a Concat equates (a branch and its residual sum; a Conv output and its MaxPools) share
    one order."""
    src = save(csp_zoo(), tmp_path / "c.onnx")
    out = tmp_path / "o.onnx"
    r = nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--json", check=0)
    rep = json.loads(r.out)
    groups = rep["permutation"]["groups"]
    by_weight = {w["name"]: w for w in rep["weights"]}
    assert [g["from"] for g in groups if "blocked" in g] == ["W1"]
    assert groups[by_weight["W1"]["permutation_group"]]["blocked"] == "'x' is a graph input"

    runs = [(x["offset"], x["channels"]) for x in by_weight["W2"]["permutation_runs"]]
    assert runs == [(0, 16), (16, 16), (32, 16)]
    first, branch, residual = (x["group"] for x in by_weight["W2"]["permutation_runs"])
    assert branch == residual != first
    assert by_weight["Wm1"]["permutation_group"] == branch and "permutation_runs" not in by_weight["Wm1"]
    sppf = by_weight["W3"]["permutation_runs"]
    assert [(x["offset"], x["channels"]) for x in sppf] == [(0, 32), (32, 32), (64, 32)]
    assert len({x["group"] for x in sppf}) == 1 and groups[sppf[0]["group"]]["channels"] == 32
    assert all(groups[g]["permuted"] for g in (first, branch, sppf[0]["group"]))
    assert groups[branch]["weights"] == 2 and groups[first]["weights"] == 1

    before, after = weights(src), weights(out)
    w2 = _column_order(before["W2"][:, :, 0, 0], after["W2"][:, :, 0, 0])
    w3 = _column_order(before["W3"][:, :, 0, 0], after["W3"][:, :, 0, 0])
    for order, width in ((w2, 16), (w3, 32)):
        for at in range(0, len(order), width):  # every run keeps its channels
            assert sorted(order[at:at + width]) == list(range(at, at + width))
    np.testing.assert_array_equal(w2[16:32] - 16, w2[32:48] - 32)  # the residual sum moves as the branch
    np.testing.assert_array_equal(w3[:32], w3[32:64] - 32)
    np.testing.assert_array_equal(w3[:32], w3[64:] - 64)
    assert not np.array_equal(w2[:16], np.arange(16)) and not np.array_equal(w2[16:32], np.arange(16, 32))
    # the producers' output channels follow: W1's rows are [first half's order, branch's order]
    rows = _column_order(before["W1"][:, :, 0, 0].T, after["W1"][:, :, 0, 0].T)
    np.testing.assert_array_equal(rows, w2[:32])
    np.testing.assert_array_equal(after["B1"], before["B1"][w2[:32]])
    np.testing.assert_array_equal(_column_order(before["Wm2"].reshape(16, -1).T, after["Wm2"].reshape(16, -1).T),
                                  w2[16:32] - 16)


def _concat_of(parts, opset=17):
    """MatMuls whose outputs (parts[k] channels each) are concatenated into the 16 rows of W."""
    rng = np.random.default_rng(12)
    inits, nodes, names = [_init(rng, "W", (16, 8))], [], []
    for k, width in enumerate(parts):
        inits.append(_init(rng, f"P{k}", (16, width)))
        nodes.append(helper.make_node("MatMul", ["x", f"P{k}"], [f"h{k}"], name=f"fc{k}"))
        names.append(f"h{k}")
    nodes += [helper.make_node("Concat", names, ["cat"], name="cat", axis=1),
              helper.make_node("MatMul", ["cat", "W"], ["y"], name="fc")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits, opset)


def _permute_only(tmp_path, nodes, inits, outputs, name):
    """A model of x [4, 16] and 2-D outputs of 8 columns, --permute-only: (input, output, report, report's
    weights by name, its groups)."""
    outs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, [4, 8]) for y in outputs]
    src = save(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])], outs, inits),
               tmp_path / f"{name}.onnx")
    out = tmp_path / "o.onnx"
    rep = json.loads(nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--json", check=0).out)
    return src, out, rep, {w["name"]: w for w in rep["weights"]}, rep["permutation"]["groups"]


def test_runs_that_straddle_groups_of_m_are_not_searched(tmp_path):
    """A Concat of 6 and 10 channels: at 2:4 the run at 6 begins inside a group of four, and the first run
    has 6 channels: neither is searched, and nothing moves."""
    src = save(_concat_of([6, 10]), tmp_path / "c.onnx")
    r = nmprune("prune", src, "-o", tmp_path / "o.onnx", "--permute", "--align", "none", "--json", check=0)
    rep = json.loads(r.out)
    w = next(x for x in rep["weights"] if x["name"] == "W")
    groups = rep["permutation"]["groups"]
    head, tail = (groups[x["group"]] for x in w["permutation_runs"])
    assert head["skipped"] == "6 channels do not fall into groups of 4"
    assert tail["skipped"] == "channels 6 to 15 of 'W' do not begin a group of 4"
    assert not any(g["permuted"] for g in groups)
    nmprune("prune", src, "-o", tmp_path / "plain.onnx", "--align", "none", "-q", check=0)
    assert (tmp_path / "o.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()
    # aligned runs (8 and 8) move
    src = save(_concat_of([8, 8]), tmp_path / "a.onnx")
    r = nmprune("prune", src, "-o", tmp_path / "o.onnx", "--permute", "--align", "none", "--json", check=0)
    rep = json.loads(r.out)
    w = next(x for x in rep["weights"] if x["name"] == "W")
    assert [(x["offset"], x["channels"]) for x in w["permutation_runs"]] == [(0, 8), (8, 8)]
    assert all(rep["permutation"]["groups"][x["group"]]["permuted"] for x in w["permutation_runs"])
    assert w["kept_l1_ratio"] > w["kept_l1_ratio_unpermuted"]


def test_cuts_pass_both_ways_and_counts_follow_from_the_whole(tmp_path):
    """Concat [h0 (16), h1 (16)], then Split [8, 24]: the Split's cut at 8 also cuts h0, and so P0's output
    channels, into two runs.  And a Concat of h and a graph input of unknown width: the input's count is what
    W leaves, so h's run still moves while the input's blocks."""
    rng = np.random.default_rng(13)
    inits = [_init(rng, n, s) for n, s in (("P0", (16, 16)), ("P1", (16, 16)), ("Wa", (8, 8)), ("Wb", (24, 8)))]
    inits.append(numpy_helper.from_array(np.array([8, 24], np.int64), "sizes"))
    nodes = [helper.make_node("MatMul", ["x", "P0"], ["h0"]), helper.make_node("MatMul", ["x", "P1"], ["h1"]),
             helper.make_node("Concat", ["h0", "h1"], ["cat"], name="cat", axis=-1),
             helper.make_node("Split", ["cat", "sizes"], ["s0", "s1"], name="split", axis=1),
             helper.make_node("MatMul", ["s0", "Wa"], ["ya"]), helper.make_node("MatMul", ["s1", "Wb"], ["yb"])]
    src, out, rep, by_weight, groups = _permute_only(tmp_path, nodes, inits, ("ya", "yb"), "s")
    wb = by_weight["Wb"]["permutation_runs"]
    assert [(x["offset"], x["channels"]) for x in wb] == [(0, 8), (8, 16)]
    assert all(groups[x["group"]]["permuted"] for x in wb) and groups[by_weight["Wa"]["permutation_group"]]["permuted"]
    before, after = weights(src), weights(out)
    p0 = _column_order(before["P0"], after["P0"])  # h0's channels: [s0's order, the start of s1's]
    np.testing.assert_array_equal(p0, np.concatenate([_column_order(before["Wa"].T, after["Wa"].T),
                                                      _column_order(before["Wb"].T, after["Wb"].T)[:8] + 8]))
    assert sorted(p0[:8]) == list(range(8)) and not np.array_equal(p0, np.arange(16))
    feeds = _feeds(src)
    for want, have in zip(_outputs(src, feeds), _outputs(out, feeds)):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

    inits = [_init(rng, "P", (16, 16)), _init(rng, "W", (24, 8))]
    nodes = [helper.make_node("MatMul", ["x", "P"], ["h"]),
             helper.make_node("Concat", ["h", "x2"], ["cat"], name="cat", axis=1),
             helper.make_node("MatMul", ["cat", "W"], ["y"])]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16]),
           helper.make_tensor_value_info("x2", TensorProto.FLOAT, [4, "n"])]
    src = save(_model(nodes, ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits),
               tmp_path / "g.onnx")
    rep = json.loads(nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--json", check=0).out)
    w = next(x for x in rep["weights"] if x["name"] == "W")
    head, tail = (rep["permutation"]["groups"][x["group"]] for x in w["permutation_runs"])
    assert [(x["offset"], x["channels"]) for x in w["permutation_runs"]] == [(0, 16), (16, 8)]
    assert head["permuted"] and tail["blocked"] == "'x2' is a graph input"


def test_runs_no_eligible_weight_reads_are_no_groups(tmp_path):
    """h (16) split in two: the first half is read only by an excluded weight, so it forms no group and
    stays in place; the second half moves with Wa's rows."""
    rng = np.random.default_rng(14)
    inits = [_init(rng, "P", (16, 16)), _init(rng, "Wz", (8, 4)), _init(rng, "Wa", (8, 4)),
             numpy_helper.from_array(np.array([8, 8], np.int64), "halves")]
    nodes = [helper.make_node("MatMul", ["x", "P"], ["h"]),
             helper.make_node("Split", ["h", "halves"], ["s0", "s1"], name="split", axis=1),
             helper.make_node("MatMul", ["s0", "Wz"], ["yz"]), helper.make_node("MatMul", ["s1", "Wa"], ["ya"])]
    outs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, [4, 4]) for y in ("yz", "ya")]
    src = save(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])], outs, inits),
               tmp_path / "h.onnx")
    out = tmp_path / "o.onnx"
    rep = json.loads(nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--exclude", "^Wz$",
                             "--json", check=0).out)
    groups = rep["permutation"]["groups"]
    assert sorted(g["from"] for g in groups) == ["P", "Wa"] and all(g["weights"] == 1 for g in groups)
    assert groups[next(w for w in rep["weights"] if w["name"] == "Wa")["permutation_group"]]["permuted"]
    before, after = weights(src), weights(out)
    order = _column_order(before["P"], after["P"])
    np.testing.assert_array_equal(order[:8], np.arange(8))
    np.testing.assert_array_equal(order[8:] - 8, _column_order(before["Wa"].T, after["Wa"].T))
    np.testing.assert_array_equal(after["Wz"], before["Wz"])


def _ints(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def test_slices_take_runs_of_the_channels(tmp_path):
    """Three Slices of r = relu(x @ P), 32 channels: [8:24] into W1, the last 8 (bounds -8 to INT64_MAX) into
    W2, and all of them (0 to 10^9, as jax2tf writes a whole axis) into W3.  The Slices cut r, and P's columns,
    into runs of 8, 16 and 8: each run moves in its own order, the run W1 reads in W1's order and the one W2 reads
    in W2's; the Slices' bounds stay as they are."""
    rng = np.random.default_rng(15)
    inits = [_init(rng, "P", (16, 32)), _init(rng, "W1", (16, 8)), _init(rng, "W2", (8, 8)), _init(rng, "W3", (32, 8)),
             _ints("s1", [8]), _ints("e1", [24]), _ints("ax", [1]), _ints("s2", [-8]), _ints("e2", [2**63 - 1]),
             _ints("s3", [0]), _ints("e3", [10**9]), _ints("one", [1])]
    nodes = [helper.make_node("MatMul", ["x", "P"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Slice", ["r", "s1", "e1", "ax"], ["a"], name="mid"),
             helper.make_node("Slice", ["r", "s2", "e2", "ax", "one"], ["b"], name="tail"),
             helper.make_node("Slice", ["r", "s3", "e3", "ax"], ["c"], name="all"),
             helper.make_node("MatMul", ["a", "W1"], ["y1"]), helper.make_node("MatMul", ["b", "W2"], ["y2"]),
             helper.make_node("MatMul", ["c", "W3"], ["y3"])]
    src, out, rep, by_weight, groups = _permute_only(tmp_path, nodes, inits, ("y1", "y2", "y3"), "s")
    runs = by_weight["W3"]["permutation_runs"]
    assert [(x["offset"], x["channels"]) for x in runs] == [(0, 8), (8, 16), (24, 8)]
    assert [x["group"] for x in runs[1:]] == [by_weight["W1"]["permutation_group"],
                                              by_weight["W2"]["permutation_group"]]
    assert all(groups[x["group"]]["permuted"] for x in runs)
    before, after = weights(src), weights(out)
    order = _column_order(before["P"], after["P"])
    assert sorted(order[:8]) == list(range(8)) and not np.array_equal(order, np.arange(32))
    np.testing.assert_array_equal(order[8:24] - 8, _column_order(before["W1"].T, after["W1"].T))
    np.testing.assert_array_equal(order[24:] - 24, _column_order(before["W2"].T, after["W2"].T))
    np.testing.assert_array_equal(order, _column_order(before["W3"].T, after["W3"].T))
    for k in ("s1", "e1", "s2", "e2", "s3", "e3"):
        np.testing.assert_array_equal(after[k], before[k])
    feeds = _feeds(src)
    for want, have in zip(_outputs(src, feeds), _outputs(out, feeds)):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("opset", [9, 17])
def test_slices_of_other_axes_pass_the_channels(tmp_path, opset):
    """A crop of the spatial axes (bounds as inputs from opset 10, attributes before) leaves the channels whole:
    the group between the two Convs moves through it, and a Slice that takes a run of the channels
    (attributes: [8:24] of 32) makes that run a group of its own."""
    rng = np.random.default_rng(16)
    inits = [_init(rng, "W1", (32, 8, 3, 3)), _init(rng, "W2", (16, 32, 1, 1)), _init(rng, "W3", (8, 16, 1, 1))]
    if opset < 10:
        crop = helper.make_node("Slice", ["c1"], ["s"], name="crop", starts=[1, 1], ends=[-1, 10**9], axes=[2, 3])
        run = helper.make_node("Slice", ["c1"], ["t"], name="run", starts=[8], ends=[24], axes=[-3])
    else:
        inits += [_ints("st", [1, 1]), _ints("en", [-1, 10**9]), _ints("ax", [2, -1]),
                  _ints("rs", [8]), _ints("re", [24]), _ints("ra", [1])]
        crop = helper.make_node("Slice", ["c1", "st", "en", "ax"], ["s"], name="crop")
        run = helper.make_node("Slice", ["c1", "rs", "re", "ra"], ["t"], name="run")
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]), crop, run,
             helper.make_node("Conv", ["s", "W2"], ["y"]), helper.make_node("Conv", ["t", "W3"], ["z"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 7]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, 8, 8])]
    src = save(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])], outs, inits,
                      opset), tmp_path / "c.onnx")
    out = tmp_path / "o.onnx"
    rep = json.loads(nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--json", check=0).out)
    by_weight = {w["name"]: w for w in rep["weights"]}
    w2 = by_weight["W2"]["permutation_runs"]
    assert [(x["offset"], x["channels"]) for x in w2] == [(0, 8), (8, 16), (24, 8)]
    assert w2[1]["group"] == by_weight["W3"]["permutation_group"]
    assert all(rep["permutation"]["groups"][x["group"]]["permuted"] for x in w2)
    before, after = weights(src), weights(out)
    order = _column_order(before["W2"][:, :, 0, 0], after["W2"][:, :, 0, 0])
    np.testing.assert_array_equal(order[8:24] - 8, _column_order(before["W3"][:, :, 0, 0], after["W3"][:, :, 0, 0]))
    np.testing.assert_array_equal(after["W1"], before["W1"][order])
    feeds = _feeds(src)
    for want, have in zip(_outputs(src, feeds), _outputs(out, feeds)):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("variant,reason", [
    ("step", "Slice 'slice' takes channels by a step other than 1 or by bounds it computes"),
    ("bounds", "Slice 'slice' takes channels by a step other than 1 or by bounds it computes"),
    ("axes", "the axes that Slice 'slice' cuts are not known"),
    ("reshape", "Reshape 'reshape' mixes or reorders the channels of 'm'"),
    ("broadcast", "the channel counts of Slice 'slice' are unknown or do not add up"),
])
def test_slices_that_cannot_carry_the_channels_block(tmp_path, variant, reason):
    """Every other channel, bounds or axes from a graph input: the Slice blocks, saying why.  A whole Slice
    (0 to 10^9) of a tensor whose own count is not known: the count follows from the part (the bounds go past
    it), so the group reaches the Reshape before it and blocks there, not at the Slice.  And m + m[:, 0:1]: the
    Slice's one channel is broadcast over m's, so one group holds both sides of the Slice and no run can be cut."""
    rng = np.random.default_rng(17)
    wide = 16 if variant == "reshape" else 32  # what Ww reads: the reshape makes 4 rows of 24 into 6 of 16
    inits = [_init(rng, "P", (16, 24 if variant == "reshape" else 32)), _init(rng, "W", (16, 8)),
             _init(rng, "Ww", (wide, 8)), _ints("st", [0]), _ints("en", [10**9 if variant == "reshape" else 32]),
             _ints("ax", [-1 if variant == "reshape" else 1]), _ints("sp", [2]), _ints("shape", [6, 16])]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])]
    args = {"step": ["m", "st", "en", "ax", "sp"], "bounds": ["m", "st", "lim", "ax"],
            "axes": ["m", "st", "en", "dyn"], "reshape": ["m", "st", "en", "ax"],
            "broadcast": ["m", "st", "first", "ax"]}[variant]
    inits.append(_ints("first", [1]))
    ins += [helper.make_tensor_value_info(n, TensorProto.INT64, [1]) for n in ("lim", "dyn") if n in args]
    if variant == "reshape":
        nodes = [helper.make_node("MatMul", ["x", "P"], ["h"]),
                 helper.make_node("Reshape", ["h", "shape"], ["m"], name="reshape")]
        weight = "Ww"
    else:
        nodes = [helper.make_node("MatMul", ["x", "P"], ["m"])]
        weight = "W"
    nodes.append(helper.make_node("Slice", args, ["s"], name="slice"))
    if variant == "broadcast":
        nodes.append(helper.make_node("Add", ["m", "s"], ["sum"]))
        weight = "Ww"
    nodes.append(helper.make_node("MatMul", ["sum" if variant == "broadcast" else "s", weight], ["y"]))
    if weight == "W":
        inits = [i for i in inits if i.name != "Ww"]
    else:
        inits = [i for i in inits if i.name != "W"]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 8] if variant == "reshape" else [4, 8])
    src = save(_model(nodes, ins, [y], inits), tmp_path / "b.onnx")
    rep = json.loads(nmprune("prune", src, "-o", tmp_path / "o.onnx", "--permute", "--align", "none", "--json",
                             check=0).out)
    groups = {g["from"]: g for g in rep["permutation"]["groups"]}
    assert groups[weight]["blocked"] == reason and not any(g["permuted"] for g in groups.values())


def test_unit_axes_carry_the_channels_and_regrouping_blocks(tmp_path):
    src = save(shape_zoo(), tmp_path / "s.onnx")
    r = nmprune("prune", src, "-o", tmp_path / "o.onnx", "--permute-only", "--align", "none", "--json", check=0)
    groups = {g["from"]: g for g in json.loads(r.out)["permutation"]["groups"]}
    assert groups["W2"]["permuted"] and groups["W2"]["channels"] == 16
    assert groups["W2"]["tensors"] == 4  # W1's outputs, b1, s1, W2's inputs
    assert groups["W3"]["permuted"] and groups["W3"]["channels"] == 32 and groups["W3"]["tensors"] == 2
    assert groups["W5"]["blocked"] == "Reshape 'regroup' mixes or reorders the channels of 'rq'"
    assert groups["W1"]["blocked"] == "'x' is a graph input"
    moved, original = weights(tmp_path / "o.onnx"), weights(src)
    order = [next(j for j in range(16) if np.array_equal(moved["W1"][i], original["W1"][j])) for i in range(16)]
    rows = [next(j for j in range(32) if np.array_equal(moved["W3"][i], original["W3"][j])) for i in range(32)]
    assert order != list(range(16)) and rows != list(range(32))
    np.testing.assert_array_equal(moved["b1"], original["b1"][order])
    np.testing.assert_array_equal(moved["s1"], original["s1"][order])
    np.testing.assert_array_equal(moved["W2"], original["W2"][rows][:, order])


def test_channels_read_in_a_subgraph_block(tmp_path):
    src = save(captured(), tmp_path / "c.onnx")
    r = nmprune("prune", src, "-o", tmp_path / "o.onnx", "--permute", "--align", "none", "--json", check=0)
    groups = {g["from"]: g for g in json.loads(r.out)["permutation"]["groups"]}
    assert groups["W2"]["blocked"] == "'h' is read inside a subgraph of 'branch'"
    # the branch is analysed as a graph of its own: there, 'h' comes from the graph around it
    assert groups["Wt"]["blocked"] == "'h' comes from outside the then_branch of 'branch'"
    assert groups["Wt"]["weights"] == 1 and not groups["Wt"]["permuted"]


def test_weights_inside_if_and_loop_bodies_are_permuted(tmp_path):
    """Every If branch and Loop body, nested ones too, is a graph of its own: the channels it keeps inside move,
    those from its inputs or from the graphs around it block; both branches and the loop compute what they did."""
    src = save(bodies(), tmp_path / "b.onnx")
    out, pruned = tmp_path / "o.onnx", tmp_path / "p.onnx"
    r = nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--json", check=0)
    groups = {g["from"]: g for g in json.loads(r.out)["permutation"]["groups"]}
    assert groups["Wa"]["blocked"] == "'x' comes from outside the then_branch of 'branch'"
    assert groups["Wc1"]["blocked"] == "'x' comes from outside the then_branch of 'inner'"
    assert groups["Wl1"]["blocked"] == "'s_in' is an input of the body of 'loop'"
    # read by two subgraphs: neither may move it alone
    assert groups["Wz"]["blocked"] == "'Wz' is read inside a subgraph of 'branch'"
    # the hidden channels: the first weight's outputs, the second's inputs; Wc2 (main graph, read two levels
    # down) and Wl2 (main graph) belong to the subgraph that alone reads them
    for w in ("Wb", "Wc2", "Wl2"):
        assert groups[w]["permuted"] and groups[w]["channels"] == 32 and groups[w]["tensors"] == 2, groups[w]
    assert len(groups) == 7
    for cond, cond2 in ((True, False), (False, True), (False, False)):
        feeds = {"x": np.random.default_rng(4).standard_normal((4, 16)).astype(np.float32),
                 "cond": np.array(cond), "cond2": np.array(cond2)}
        for a, b in zip(_outputs(src, feeds), _outputs(out, feeds)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    original, moved = weights(src), weights(out)
    for w in ("Wb", "Wc2", "Wl2"):  # rows reordered, none lost
        assert not np.array_equal(original[w], moved[w])
        assert sorted(map(tuple, original[w])) == sorted(map(tuple, moved[w]))
    nmprune("prune", src, "-o", pruned, "--permute", "--align", "none", "-q", check=0)
    assert nmprune("check", pruned, "--align", "none", "-q").code == 0


def test_permute_is_deterministic_and_dry_run_agrees(suite, tmp_path):
    src = suite / "resnet.onnx"
    for k in (1, 2):
        nmprune("prune", src, "-o", tmp_path / f"o{k}.onnx", "--permute", "--report", tmp_path / f"r{k}.json",
                "-q", check=0)
    assert (tmp_path / "o1.onnx").read_bytes() == (tmp_path / "o2.onnx").read_bytes()
    dry = json.loads(nmprune("prune", src, "--dry-run", "--permute", "--json", check=0).out)
    real = json.loads((tmp_path / "r1.json").read_text())
    strip = lambda gs: [{k: v for k, v in g.items() if k != "search_s"} for g in gs]
    assert strip(dry["permutation"]["groups"]) == strip(real["permutation"]["groups"])
    assert [w.get("kept_l1_ratio") for w in dry["weights"]] == [w.get("kept_l1_ratio") for w in real["weights"]]


def test_permutation_needs_an_element_wise_pattern(suite, tmp_path):
    src = suite / "bert.onnx"
    r = nmprune("prune", src, "-o", tmp_path / "o.onnx", "--permute", "--pattern", "50%", "--json", check=0)
    groups = json.loads(r.out)["permutation"]["groups"]
    assert {g.get("skipped") for g in groups if "blocked" not in g} == {
        "weight 'attn.o.weight' has pattern 50%; the search is for element-wise N:M",
        "weight 'ffn.down.weight' has pattern 50%; the search is for element-wise N:M"}
    assert not any("kept_l1_ratio_unpermuted" in w for w in json.loads(r.out)["weights"])


def test_permute_usage_errors(suite, tmp_path):
    src = suite / "bert.onnx"
    r = nmprune("check", src, "--permute", check=2)
    assert "--permute is an option of prune and inspect --sensitivity" in r.err
    r = nmprune("prune", src, "-o", tmp_path / "o.onnx", "--permute-only", "--save-masks", tmp_path / "m", check=2)
    assert "--permute-only writes no masks" in r.err
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("name", ["resnet_external", "bert_int8"])
def test_both_save_paths_permute_alike(suite, tmp_path, name):
    """The copy path and the re-serializing path write the same permuted weights
    (external data and int8 payloads with their permuted scales included)."""
    src = suite / f"{name}.onnx"
    copy, general = tmp_path / "copy.onnx", tmp_path / "general.onnx"
    nmprune("prune", src, "-o", copy, "--permute", "-q", check=0)
    nmprune("prune", src, "-o", general, "--permute", "--general-path", "-q", check=0)
    a, b, orig = weights(copy), weights(general), weights(src)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert any(not np.array_equal(a[k], orig[k]) for k in a)
    assert nmprune("check", general, "-q").code == 0


def test_permute_effort_searches_longer_and_never_keeps_less(tmp_path):
    """The same seeded search runs K times the budget: its best order is at least as good."""
    rng = np.random.default_rng(11)
    W0 = rng.standard_normal((64, 512)).astype(np.float32)
    W = rng.standard_normal((512, 64)).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "W0"], ["h"], name="mm0"), helper.make_node("Relu", ["h"], ["r"]),
                helper.make_node("MatMul", ["r", "W"], ["y"], name="mm")],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
               [numpy_helper.from_array(W0, "W0"), numpy_helper.from_array(W, "W")])
    src = save(m, tmp_path / "m.onnx")
    kept = {}
    for effort in (None, "6"):
        extra = ["--permute-effort", effort] if effort else []
        r = nmprune("prune", src, "--dry-run", "--permute", "--json", *extra, check=0)
        groups = [g for g in json.loads(r.out)["permutation"]["groups"] if g.get("channels") == 512]
        kept[effort] = groups[0]["kept"]
    assert kept["6"] >= kept[None]
    assert "--permute-effort goes with" in nmprune("prune", src, "--dry-run", "--permute-effort", "2", check=2).err
    assert "from 1 to 1000" in nmprune("prune", src, "--dry-run", "--permute", "--permute-effort", "0", check=2).err


def test_groups_that_cross_activation_quantization_say_so(tmp_path):
    """A QDQ model: the hidden channels pass an activation's QuantizeLinear/DequantizeLinear pair."""
    rng = np.random.default_rng(12)
    inits = [_init(rng, "W1", (16, 32)), _init(rng, "W2", (32, 16)),
             numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"], name="q"),
        helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["hd"], name="dq"),
        helper.make_node("Relu", ["hd"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2"),
    ]
    qdq = save(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])], inits), tmp_path / "q.onnx")
    plain = save(_model([nodes[0], helper.make_node("Relu", ["h"], ["r"]), nodes[4]],
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])], inits[:2]),
                 tmp_path / "p.onnx")
    for path, crosses in ((qdq, True), (plain, False)):
        r = nmprune("prune", path, "--permute-only", "-o", tmp_path / "out.onnx", "--align", "none", "--json", check=0)
        g = [g for g in json.loads(r.out)["permutation"]["groups"] if g["channels"] == 32][0]
        assert "blocked" not in g
        assert g.get("crosses_activation_quantization", False) is crosses
    r = nmprune("prune", qdq, "--permute-only", "-o", tmp_path / "out.onnx", "--align", "none", check=0)
    assert "crosses activation quantization" in r.err


def test_reductions_pass_the_axes_they_keep_and_end_the_ones_they_reduce(tmp_path):
    """Over an axis it reduces, a reduction gives the same result in any order; the axes it keeps move through
    it.  A LayerNorm as opsets before 17 export it (ReduceMean over the hidden axis, Sub, Pow, ReduceMean,
    Add, Sqrt, Div, Mul, Add): the hidden group passes it, its scale and bias moving, the means broadcast
    back; the variance plus epsilon (a scalar, which has no hidden axis) has one entry per row, so its
    Reshape to an output is not reached.  A squeeze-and-excitation block that pools by ReduceMean over H and W (axes as an input, opset 18):
    the channels pass to the excitation Convs.  A spatial gate (mean and max over the channels, concatenated
    and convolved to one channel) leaves the channels whole."""
    rng = np.random.default_rng(21)
    inits = [_init(rng, "W1", (16, 32)), _init(rng, "W2", (32, 8)), _init(rng, "g", (32,)), _init(rng, "b", (32,)),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["mu"], name="mean", axes=[-1]),
             helper.make_node("Sub", ["h", "mu"], ["d"]), helper.make_node("Pow", ["d", "two"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]), helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]), helper.make_node("Div", ["d", "sd"], ["n"]),
             helper.make_node("Mul", ["n", "g"], ["ng"]), helper.make_node("Add", ["ng", "b"], ["nb"]),
             helper.make_node("MatMul", ["nb", "W2"], ["y"]), helper.make_node("Reshape", ["ve", "flat"], ["stat"])]
    inits.append(_ints("flat", [4]))
    ln = save(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8]),
                      helper.make_tensor_value_info("stat", TensorProto.FLOAT, [4])], inits, opset=13),
              tmp_path / "ln.onnx")
    inits = [_init(rng, "C1", (32, 8, 3, 3)), _init(rng, "S1", (8, 32, 1, 1)), _init(rng, "S2", (32, 8, 1, 1)),
             _init(rng, "G", (1, 2, 3, 3)), _init(rng, "C2", (16, 32, 1, 1)), _ints("hw", [2, 3])]
    nodes = [helper.make_node("Conv", ["x", "C1"], ["c"], pads=[1] * 4),
             helper.make_node("ReduceMean", ["c", "hw"], ["p"], name="pool"),
             helper.make_node("Conv", ["p", "S1"], ["s1"]), helper.make_node("Relu", ["s1"], ["s2"]),
             helper.make_node("Conv", ["s2", "S2"], ["s3"]), helper.make_node("Sigmoid", ["s3"], ["s4"]),
             helper.make_node("Mul", ["c", "s4"], ["e"]),
             helper.make_node("ReduceMean", ["e", "one"], ["avg"]), helper.make_node("ReduceMax", ["e", "one"], ["top"]),
             helper.make_node("Concat", ["avg", "top"], ["both"], axis=1),
             helper.make_node("Conv", ["both", "G"], ["gate"], pads=[1] * 4), helper.make_node("Sigmoid", ["gate"], ["gs"]),
             helper.make_node("Mul", ["e", "gs"], ["f"]), helper.make_node("Conv", ["f", "C2"], ["y"])]
    inits.append(_ints("one", [1]))
    se = save(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])], inits, opset=18),
              tmp_path / "se.onnx")
    for src, moved in ((ln, {"W2": 32}), (se, {"S1": 32, "S2": 8})):
        out = tmp_path / "o.onnx"
        rep = json.loads(nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--json", check=0).out)
        groups = {g["from"]: g for g in rep["permutation"]["groups"]}
        assert {k: g["channels"] for k, g in groups.items() if g["permuted"]} == moved, groups
        feeds = _feeds(src)
        for want, have in zip(_outputs(src, feeds), _outputs(out, feeds)):
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        before, after = weights(src), weights(out)
        if src == ln:
            order = _column_order(before["W1"], after["W1"])
            for k in ("g", "b", "W2"):
                np.testing.assert_array_equal(after[k], before[k][order])
        else:
            order = _column_order(before["C2"][:, :, 0, 0], after["C2"][:, :, 0, 0])
            np.testing.assert_array_equal(after["C1"], before["C1"][order])
            np.testing.assert_array_equal(_column_order(before["S1"][:, :, 0, 0], after["S1"][:, :, 0, 0]), order)
            np.testing.assert_array_equal(_column_order(before["S2"][:, :, 0, 0].T, after["S2"][:, :, 0, 0].T), order)
            np.testing.assert_array_equal(after["G"], before["G"])
    # axes the graph computes: the reduction blocks, saying so
    model = onnx.load(str(ln))
    model.graph.node[1].ClearField("attribute")
    model.graph.node[1].input.append("axes")
    model.graph.input.append(helper.make_tensor_value_info("axes", TensorProto.INT64, [1]))
    src = save(model, tmp_path / "dyn.onnx")
    rep = json.loads(nmprune("prune", src, "-o", tmp_path / "o.onnx", "--permute", "--align", "none", "--json",
                             check=0).out)
    assert {g["from"]: g.get("blocked") for g in rep["permutation"]["groups"]}["W2"] == \
        "the axes that ReduceMean 'mean' reduces are not known"


def test_statistics_shaped_back_by_reshape_and_expand_are_broadcast(tmp_path):
    """A LayerNorm as jax2tf writes it: the mean without keepdims, reshaped to [rows, 1] by a shape the graph
    computes (Shape, Slice, Concat with a constant 1) and expanded to that shape before the Sub.  The 1 in the
    shape marks the axis as broadcast, so the hidden group moves through; Expand carries its input's axes
    like an element-wise op (the scale, expanded to the activation's shape, moves), and a 1 in its shape
    keeps an axis its input has whole (h expanded to [rows, 1] is h)."""
    rng = np.random.default_rng(22)
    inits = [_init(rng, "W1", (16, 32)), _init(rng, "W2", (32, 8)), _ints("ax", [1]), _ints("zero", [0]),
             _ints("one", [1])]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Shape", ["h"], ["hs"]),
             helper.make_node("Slice", ["hs", "zero", "one"], ["rows"]),
             helper.make_node("Concat", ["rows", "one"], ["shape"], axis=0),
             helper.make_node("ReduceMean", ["h"], ["mu"], axes=[1], keepdims=0),
             helper.make_node("Reshape", ["mu", "shape"], ["mu2"], name="col"),
             helper.make_node("Expand", ["mu2", "shape"], ["mu3"], name="bcast"),
             helper.make_node("Expand", ["h", "shape"], ["hx"], name="keep"),
             helper.make_node("Sub", ["hx", "mu3"], ["d"]), helper.make_node("Shape", ["d"], ["ds"]),
             helper.make_node("Expand", ["g", "ds"], ["gx"], name="scale"), helper.make_node("Mul", ["d", "gx"], ["e"]),
             helper.make_node("MatMul", ["e", "W2"], ["y"])]
    inits.append(_init(rng, "g", (32,)))
    src = save(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits, opset=13),
               tmp_path / "jax.onnx")
    out = tmp_path / "o.onnx"
    rep = json.loads(nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--json", check=0).out)
    groups = {g["from"]: g for g in rep["permutation"]["groups"]}
    assert groups["W2"]["permuted"] and groups["W2"]["tensors"] == 3, groups["W2"]  # W1's columns, g, W2's rows
    before, after = weights(src), weights(out)
    np.testing.assert_array_equal(after["g"], before["g"][_column_order(before["W1"], after["W1"])])
    feeds = _feeds(src)
    for want, have in zip(_outputs(src, feeds), _outputs(out, feeds)):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_reshapes_that_keep_the_last_axis_pass_it(tmp_path):
    """[10, 32] reshaped to [2, 5, 32] and back to [-1, 32], as exports fold tokens into the batch (and tf2onnx
    writes Dense on a sequence): rows of 32 stay rows of 32, so W1's columns and W2's rows move in one order.
    [4, 24] reshaped to [6, 16] makes rows of 16 out of rows of 24, neither a run of the other: P's 24 columns
    say so, and the group blocks at the Reshape.  A Reshape to [-1, 16] of a graph input's channels: how many
    they are is not known."""
    rng = np.random.default_rng(23)
    inits = [_init(rng, "W1", (64, 32)), _init(rng, "W2", (32, 8)), _ints("tokens", [2, 5, 32]),
             _ints("rows", [-1, 32])]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Reshape", ["h", "tokens"], ["t"]),
             helper.make_node("Relu", ["t"], ["r"]), helper.make_node("Reshape", ["r", "rows"], ["f"]),
             helper.make_node("MatMul", ["f", "W2"], ["y"])]
    src = save(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [10, 64])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10, 8])], inits), tmp_path / "t.onnx")
    out = tmp_path / "o.onnx"
    rep = json.loads(nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--json", check=0).out)
    groups = {g["from"]: g for g in rep["permutation"]["groups"]}
    assert groups["W2"]["permuted"] and groups["W2"]["tensors"] == 2
    before, after = weights(src), weights(out)
    order = _column_order(before["W1"], after["W1"])
    assert not np.array_equal(order, np.arange(32))
    np.testing.assert_array_equal(after["W2"], before["W2"][order])
    feeds = _feeds(src)
    for want, have in zip(_outputs(src, feeds), _outputs(out, feeds)):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

    for producer, reason in ((["MatMul", ["x", "P"]], "Reshape 'halve' mixes or reorders the channels of 'v'"),
                             (["Relu", ["x2"]], "the channel counts of Reshape 'halve' are unknown or do not add up")):
        inits = [_init(rng, "P", (16, 24)), _init(rng, "W", (16, 8)), _ints("halves", [-1, 16])]
        nodes = [helper.make_node(producer[0], producer[1], ["h"]),
                 helper.make_node("Reshape", ["h", "halves"], ["v"], name="halve"),
                 helper.make_node("MatMul", ["v", "W"], ["y"])]
        ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16]),
               helper.make_tensor_value_info("x2", TensorProto.FLOAT, [4, 24])]
        src = save(_model(nodes, ins if producer[0] == "Relu" else ins[:1],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 8])],
                          inits if producer[0] == "MatMul" else inits[1:]), tmp_path / "h.onnx")
        rep = json.loads(nmprune("prune", src, "-o", out, "--permute", "--align", "none", "--json", check=0).out)
        groups = {g["from"]: g for g in rep["permutation"]["groups"]}
        assert groups["W"]["blocked"] == reason


def _dynamic_int8(tmp_path, per_channel):
    """A float Conv-Conv-pool-MatMul-MatMul model, quantized by onnxruntime's quantize_dynamic: activations by
    DynamicQuantizeLinear, weights to uint8 for ConvInteger and MatMulInteger (per column with per_channel: the
    MatMul weights' zero points and scales are vectors), the Conv biases reshaped to [1, C, 1, 1]."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    rng = np.random.default_rng(18)
    inits = [_init(rng, "W1", (32, 8, 3, 3)), _init(rng, "B1", (32,)), _init(rng, "W2", (32, 32, 3, 3)),
             _init(rng, "B2", (32,)), _init(rng, "W3", (32, 16)), _init(rng, "W4", (16, 10))]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1] * 4), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1] * 4),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "W3"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("MatMul", ["r", "W4"], ["y"])]
    src = save(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits), tmp_path / "f.onnx")
    out = tmp_path / "dq.onnx"
    quantize_dynamic(str(src), str(out), per_channel=per_channel, weight_type=QuantType.QUInt8)
    model = onnx.load(str(out))
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= {n.op_type for n in model.graph.node}
    return out


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamically_quantized_models_permute_exactly(tmp_path, per_channel):
    """Integer ops carry the channels as their float ops do, each DynamicQuantizeLinear's scale is the whole
    tensor's, and the zero points and scales along a MatMul's columns move with them: all three groups move,
    and the integer sums give the original outputs bit for bit."""
    src = _dynamic_int8(tmp_path, per_channel)
    out = tmp_path / "o.onnx"
    rep = json.loads(nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--json", check=0).out)
    groups = rep["permutation"]["groups"]
    assert sorted(g["channels"] for g in groups if g["permuted"]) == [16, 32, 32], groups
    assert not any("crosses_activation_quantization" in g for g in groups)
    before, after = weights(src), weights(out)
    cols = _column_order(before["W3_quantized"].astype(np.int64), after["W3_quantized"].astype(np.int64))
    assert not np.array_equal(cols, np.arange(16))
    np.testing.assert_array_equal(after["W4_quantized"], before["W4_quantized"][cols])
    for k in ("W3_zero_point", "W3_scale"):
        np.testing.assert_array_equal(after[k], before[k][cols] if before[k].ndim else before[k])
    feeds = _feeds(src)
    for want, have in zip(_outputs(src, feeds), _outputs(out, feeds)):
        np.testing.assert_array_equal(have, want)
    if not per_channel:
        return
    # a zero point per output channel of a ConvInteger (the spec allows one; onnxruntime's CPU kernel does not
    # run it) moves with the weight's rows
    model = onnx.load(str(src))
    zp = next(i for i in model.graph.initializer if i.name == "W2_zero_point")
    zp.CopyFrom(numpy_helper.from_array(np.random.default_rng(19).integers(100, 156, 32).astype(np.uint8), zp.name))
    src = save(model, tmp_path / "zp.onnx")
    nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "-q", check=0)
    before, after = weights(src), weights(out)
    rows = _column_order(before["W2_quantized"].reshape(32, -1).T.astype(np.int64),
                         after["W2_quantized"].reshape(32, -1).T.astype(np.int64))
    assert not np.array_equal(rows, np.arange(32))
    np.testing.assert_array_equal(after["W2_zero_point"], before["W2_zero_point"][rows])


def test_matmulinteger_row_zero_points_move_with_the_rows(tmp_path):
    """W's input channels reach a MatMulInteger's rows (through a Transpose): A's zero point, one per row,
    moves with them, as do P's columns."""
    rng = np.random.default_rng(20)
    inits = [_init(rng, "P", (16, 8)), _init(rng, "W", (8, 8)),
             numpy_helper.from_array(rng.integers(0, 255, (4, 4)).astype(np.uint8), "B"),
             numpy_helper.from_array(rng.integers(100, 156, 8).astype(np.uint8), "a_zp")]
    nodes = [helper.make_node("MatMul", ["x", "P"], ["h"]), helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0]),
             helper.make_node("DynamicQuantizeLinear", ["ht"], ["q", "q_scale", "q_zp"]),
             helper.make_node("MatMulInteger", ["q", "B", "a_zp"], ["p"]),
             helper.make_node("Cast", ["p"], ["pf"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["pf"], ["pt"], perm=[1, 0]), helper.make_node("MatMul", ["pt", "W"], ["y"])]
    src = save(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    rep = json.loads(nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--json", check=0).out)
    group = next(g for g in rep["permutation"]["groups"] if g["from"] == "W")
    assert group["permuted"] and group["tensors"] == 3  # P's columns, A's zero point, W's rows
    before, after = weights(src), weights(out)
    order = _column_order(before["P"], after["P"])
    assert not np.array_equal(order, np.arange(8))
    np.testing.assert_array_equal(after["a_zp"], before["a_zp"][order])
    np.testing.assert_array_equal(after["W"], before["W"][order])
    np.testing.assert_array_equal(after["B"], before["B"])


def _embedding_ffn():
    """An exported encoder's feed-forward block without value_info: Gather (embedding), MatMul, bias Add,
    Gelu in its Erf form, MatMul; and a Conv pair across a Resize of the spatial axes."""
    rng = np.random.default_rng(21)
    inits = [_init(rng, "E", (100, 32)), _init(rng, "W1", (32, 64)), _init(rng, "b1", (64,)),
             _init(rng, "W2", (64, 32)), _init(rng, "C1", (16, 8, 3, 3)), _init(rng, "C2", (16, 16, 1, 1)),
             numpy_helper.from_array(np.array(1.4142135, np.float32), "sqrt2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["emb"]),
        helper.make_node("MatMul", ["emb", "W1"], ["h"], name="up"),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Div", ["hb", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["hb", "e1"], ["g0"]),
        helper.make_node("Mul", ["g0", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "W2"], ["y"], name="down"),
        helper.make_node("Conv", ["img", "C1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Resize", ["r1", "", "scales"], ["up2"], mode="nearest"),
        helper.make_node("Conv", ["up2", "C2"], ["c2"], name="conv2"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8]),
                          helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 8, 6, 6])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32]),
                   helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1, 16, 12, 12])], inits)


def test_ranks_known_on_exports_without_value_info(tmp_path):
    """Ranks come from Gather, the weights and Resize's scales: the FFN's 64 hidden channels and the 16 channels
    across the Resize both move, and the model computes what it computed."""
    src = save(_embedding_ffn(), tmp_path / "m.onnx")
    out = tmp_path / "p.onnx"
    r = nmprune("prune", src, "--permute-only", "-o", out, "--align", "none", "--json", check=0)
    groups = {g["channels"]: g for g in json.loads(r.out)["permutation"]["groups"]}
    assert "blocked" not in groups[64] and groups[64]["permuted"], groups[64]
    assert "blocked" not in groups[16] and groups[16]["weights"] == 1, groups[16]
    feeds = {"ids": np.array([[1, 5, 9, 33, 2, 77, 3, 0]], np.int64),
             "img": np.random.default_rng(2).standard_normal((1, 8, 6, 6)).astype(np.float32)}
    for a, b in zip(_outputs(src, feeds), _outputs(out, feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def _flatten_by_computed_shape(variant):
    """A recogniser's neck as exporters write it, without value_info: Conv, Relu, then Reshape to [N, C, H*W] by a
    shape the graph computes from Shape (Slice, Gather, Unsqueeze and Concat; or Shape's start and end), a
    Transpose and a MatMul reading the 16 channels."""
    rng = np.random.default_rng(5)
    inits = [_init(rng, "C1", (16, 8, 1, 1)), _init(rng, "W", (8 if variant == "other_tensor" else 16, 32)),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array(1, np.int64), "ch"),
             numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             numpy_helper.from_array(np.array([-1], np.int64), "rest")]
    nodes = [helper.make_node("Conv", ["img", "C1"], ["c1"], name="conv"),
             helper.make_node("Relu", ["c1"], ["r1"])]
    if variant == "slice_gather":
        nodes += [helper.make_node("Shape", ["r1"], ["s"]),
                  helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
                  helper.make_node("Gather", ["s", "ch"], ["c"]),
                  helper.make_node("Unsqueeze", ["c", "axes0"], ["cu"]),
                  helper.make_node("Concat", ["n", "cu", "rest"], ["shape"], axis=0)]
    else:  # shape_start_end; other_tensor takes the sizes of the Conv's input, not of the tensor reshaped
        nodes += [helper.make_node("Shape", ["img" if variant == "other_tensor" else "r1"], ["nc"], start=0, end=-2),
                  helper.make_node("Concat", ["nc", "rest"], ["shape"], axis=0)]
    nodes += [helper.make_node("Reshape", ["r1", "shape"], ["f"]),
              helper.make_node("Transpose", ["f"], ["t"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["t", "W"], ["y"], name="mm")]
    return _model(nodes, [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 8, 1, 6])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12 if variant == "other_tensor" else 6,
                                                                           32])], inits)


def test_reshape_to_the_sizes_of_another_tensor_is_blocked(tmp_path):
    """[1, 16, 1, 6] reshaped to [1, 8, 12] by the sizes of another tensor mixes the channels: the group that
    reaches it stops there."""
    src = save(_flatten_by_computed_shape("other_tensor"), tmp_path / "m.onnx")
    r = nmprune("prune", src, "--permute-only", "-o", tmp_path / "p.onnx", "--align", "none", "--json", check=0)
    (group,) = [g for g in json.loads(r.out)["permutation"]["groups"] if g["from"] == "W"]
    assert group["blocked"] == "Reshape 'f' mixes or reorders the channels of 'f'", group


@pytest.mark.parametrize("variant", ["slice_gather", "shape_start_end"])
def test_rank_of_a_reshape_to_a_computed_shape(tmp_path, variant):
    """The shape's length is known from the ops that compute it, so the Reshape's rank is, and the 16 channels move
    from the Conv to the MatMul; the model computes what it computed."""
    src = save(_flatten_by_computed_shape(variant), tmp_path / "m.onnx")
    out = tmp_path / "p.onnx"
    r = nmprune("prune", src, "--permute-only", "-o", out, "--align", "none", "--json", check=0)
    groups = json.loads(r.out)["permutation"]["groups"]
    (group,) = [g for g in groups if g["channels"] == 16 and "blocked" not in g]
    assert group["permuted"], group
    before, after = weights(src), weights(out)
    assert not np.array_equal(before["W"], after["W"])   # its rows
    assert not np.array_equal(before["C1"], after["C1"])  # and the Conv's output channels that feed them
    feeds = {"img": np.random.default_rng(2).standard_normal((1, 8, 1, 6)).astype(np.float32)}
    for a, b in zip(_outputs(src, feeds), _outputs(out, feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_groups_searched_in_parallel_give_the_same_output(suite, tmp_path):
    """Groups are spread over threads; each depends on its own seed only."""
    src = suite / "resnet.onnx"
    reps = {}
    for t in ("1", "2", "3"):
        out = tmp_path / f"o{t}.onnx"
        r = nmprune("prune", src, "-o", out, "--permute", "--threads", t, "--json", check=0)
        reps[t] = [{k: v for k, v in g.items() if k != "search_s"} for g in json.loads(r.out)["permutation"]["groups"]]
    assert (tmp_path / "o1.onnx").read_bytes() == (tmp_path / "o2.onnx").read_bytes() == (tmp_path / "o3.onnx").read_bytes()
    assert reps["1"] == reps["2"] == reps["3"]
    assert sum(g["permuted"] for g in reps["1"]) >= 2


def test_one_large_group_searched_on_several_threads_gives_the_same_output(tmp_path):
    """A single group of 8192 channels (far more column pairs than its budget) is searched in parted rounds
    whose parts run at once: the output is the same on 1, 2 and 3 threads, and computes what the input does."""
    rng = np.random.default_rng(11)
    scale = np.exp(0.5 * rng.standard_normal(8192)).astype(np.float32)  # channels of unequal size, as trained
    inits = [numpy_helper.from_array(rng.standard_normal((64, 8192)).astype(np.float32) * scale, "W1"),
             numpy_helper.from_array(rng.standard_normal((8192, 64)).astype(np.float32) * scale[:, None], "W2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="down")]
    src = save(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])], inits), tmp_path / "wide.onnx")
    reps = {}
    for t in ("1", "2", "3"):
        r = nmprune("prune", src, "-o", tmp_path / f"o{t}.onnx", "--permute-only", "--threads", t, "--json", check=0)
        reps[t] = [{k: v for k, v in g.items() if k != "search_s"} for g in json.loads(r.out)["permutation"]["groups"]]
    assert (tmp_path / "o1.onnx").read_bytes() == (tmp_path / "o2.onnx").read_bytes() == (tmp_path / "o3.onnx").read_bytes()
    assert reps["1"] == reps["2"] == reps["3"]
    (group,) = [g for g in reps["1"] if g["channels"] == 8192]
    assert group["permuted"] and group["efficacy"] > 0.2, group
    feeds = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    for a, b in zip(_outputs(src, feeds), _outputs(tmp_path / "o2.onnx", feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())


def _attention(variant="heads"):
    """Self-attention as exporters write it: x [1, 6, 32] projected to Q, K and V, each split into 4 heads of 8
    by a Reshape to a shape computed from x's Shape ([B, -1, 4, 8], opset 14 allowzero as torch writes it),
    transposed to [B, 4, S, 8]; V's heads scaled by one gain of 8 that all of them share; softmax(Q K^T /
    sqrt(8)) V, transposed back and merged to [B, S, 32] by a second Reshape, into the output projection Wo
    (32 x 16).  Variants: "regroup" merges to [B, -1, 12] instead (rows of 12 out of heads of 8, read by a
    12-row Wo); "rope" cuts V's heads into halves and joins them again (a Slice and a Concat on the head's
    axis); "nested" splits V's heads of 8 again into [2, 4] before merging."""
    rng = np.random.default_rng(31)
    wo_rows = 12 if variant == "regroup" else 32
    inits = [_init(rng, n, s) for n, s in (("Wq", (32, 32)), ("Wk", (32, 32)), ("Wv", (32, 32)), ("bv", (32,)),
                                          ("Wo", (wo_rows, 16)), ("bo", (16,)), ("gain", (8,)))]
    inits += [_ints("heads", [-1, 4, 8]), _ints("merged", [-1, wo_rows]), _ints("zero", [0]), _ints("one", [1]),
              _ints("half", [4]), _ints("end", [8]), _ints("axis", [-1]), _ints("quarters", [4, -1, 2, 4]),
              _ints("two", [2]),
              numpy_helper.from_array(np.array(8 ** -0.5, np.float32), "scale")]
    nodes = [helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Slice", ["xs", "zero", "one"], ["batch"]),
             helper.make_node("Concat", ["batch", "heads"], ["split_shape"], axis=0),
             helper.make_node("Concat", ["batch", "merged"], ["merge_shape"], axis=0)]
    for p in "qkv":
        src = f"{p}0" if p == "v" else f"{p}p"
        nodes.append(helper.make_node("MatMul", ["x", f"W{p}"], [src], name=f"{p}_proj"))
        if p == "v":
            nodes.append(helper.make_node("Add", [src, "bv"], ["vp"]))
        nodes += [helper.make_node("Reshape", [f"{p}p", "split_shape"], [f"{p}h"], name=f"{p}_heads", allowzero=1),
                  helper.make_node("Transpose", [f"{p}h"], [f"{p}t"], perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3])]
    nodes.append(helper.make_node("Mul", ["vt", "gain"], ["vg"]))  # one gain per channel of a head, in every head
    v = "vg"
    if variant == "rope":
        nodes += [helper.make_node("Slice", ["vg", "zero", "half", "axis"], ["v_lo"], name="lo"),
                  helper.make_node("Slice", ["vg", "half", "end", "axis"], ["v_hi"], name="hi"),
                  helper.make_node("Concat", ["v_hi", "v_lo"], ["v_rot"], axis=-1, name="rotate")]
        v = "v_rot"
    elif variant == "nested":
        nodes += [helper.make_node("Shape", ["vg"], ["vts"]),
                  helper.make_node("Slice", ["vts", "zero", "one"], ["vb"]),
                  helper.make_node("Concat", ["vb", "quarters"], ["q_shape"], axis=0),
                  helper.make_node("Reshape", ["vg", "q_shape"], ["v_q"], name="quarter")]
        v = "v_q"
    nodes += [helper.make_node("MatMul", ["qt", "kt"], ["logits"]),
              helper.make_node("Mul", ["logits", "scale"], ["scaled"]),
              helper.make_node("Softmax", ["scaled"], ["attn"], axis=-1)]
    if variant == "nested":  # [B, 4, S, S] against [B, 4, S, 2, 4]: attention over S for each quarter
        nodes += [helper.make_node("Unsqueeze", ["attn", "two"], ["attn_q"]),
                  helper.make_node("Transpose", ["v_q"], ["v_qt"], perm=[0, 1, 3, 2, 4]),
                  helper.make_node("MatMul", ["attn_q", "v_qt"], ["ctx_q"]),
                  helper.make_node("Transpose", ["ctx_q"], ["ctx_qt"], perm=[0, 3, 1, 2, 4])]
        merge_from = "ctx_qt"
    else:
        nodes += [helper.make_node("MatMul", ["attn", v], ["ctx"]),
                  helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3])]
        merge_from = "ctx_t"
    nodes += [helper.make_node("Reshape", [merge_from, "merge_shape"], ["merged_ctx"], name="merge", allowzero=1),
              helper.make_node("MatMul", ["merged_ctx", "Wo"], ["o"], name="o_proj"),
              helper.make_node("Add", ["o", "bo"], ["y"])]
    rows = 16 if variant == "regroup" else 6
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 32])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, 16])], inits, opset=14)


def test_attention_heads_split_and_merge_the_channels(tmp_path):
    """A Reshape that splits the last axis into runs ([B, S, 32] to [B, S, 4, 8]) or merges runs back keeps each
    channel's index modulo the run: V's 32 output channels and Wo's 32 rows move in one order of 8 repeated in
    every head, and the heads' axis of 8 (Transpose, MatMul with the attention weights) in that order.  Q's and
    K's heads meet in Q K^T, which sums over them: their group holds no eligible weight's input channels."""
    src = save(_attention(), tmp_path / "a.onnx")
    out = tmp_path / "o.onnx"
    rep = json.loads(nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--json", check=0).out)
    groups = {g["from"]: g for g in rep["permutation"]["groups"]}
    wo = groups["Wo"]
    assert wo["permuted"] and wo["channels"] == 32 and wo["tensors"] == 4, wo  # Wv's columns, bv, gain, Wo's rows
    before, after = weights(src), weights(out)
    order = _column_order(before["Wv"], after["Wv"])
    head = order[:8]
    assert sorted(head) == list(range(8)) and not np.array_equal(head, np.arange(8))
    np.testing.assert_array_equal(order, np.concatenate([head + 8 * h for h in range(4)]))
    np.testing.assert_array_equal(after["bv"], before["bv"][order])
    np.testing.assert_array_equal(after["Wo"], before["Wo"][order])
    np.testing.assert_array_equal(after["gain"], before["gain"][head])
    for k in ("Wq", "Wk", "bo"):
        np.testing.assert_array_equal(after[k], before[k])
    feeds = _feeds(src)
    for want, have in zip(_outputs(src, feeds), _outputs(out, feeds)):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # the order searched is the one that prune --permute masks by: Wo keeps more than unpermuted
    pr = json.loads(nmprune("prune", src, "-o", tmp_path / "p.onnx", "--permute", "--align", "none",
                            "--json", check=0).out)
    (w,) = [w for w in pr["weights"] if w["name"] == "Wo"]
    assert w["kept_l1_ratio"] > w["kept_l1_ratio_unpermuted"]
    assert nmprune("check", tmp_path / "p.onnx", "--align", "none", "-q").code == 0


@pytest.mark.parametrize("variant,reason", [
    ("regroup", "Reshape 'merge' mixes or reorders the channels of 'merged_ctx'"),
    ("rope", "splits or merges channels that a Concat, Split or Slice divides"),
    ("nested", "Reshapes split the channels of 'Wo' into runs of 4 and of 8"),
])
def test_heads_that_cannot_repeat_one_order_block(tmp_path, variant, reason):
    """Heads of 8 merged into rows of 12: neither is a run of the other, so the Reshape regroups.  Halves of each head swapped (a Slice and a Concat on the head's axis): the cuts would
    divide the run that must repeat, which is not followed.  Heads of 8 split into [2, 4]: the group would
    repeat one order in runs of 8 and of 4 at once."""
    src = save(_attention(variant), tmp_path / "a.onnx")
    out = tmp_path / "o.onnx"
    rep = json.loads(nmprune("prune", src, "-o", out, "--permute-only", "--align", "none", "--json", check=0).out)
    groups = {g["from"]: g for g in rep["permutation"]["groups"]}
    assert reason in groups["Wo"].get("blocked", ""), groups["Wo"]
    feeds = _feeds(src)
    for want, have in zip(_outputs(src, feeds), _outputs(out, feeds)):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
