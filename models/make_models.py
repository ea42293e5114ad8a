#!/usr/bin/env python3
"""Builds nmprune's small models with seeded random weights.

    python3 models/make_models.py demo OUT.onnx     the committed demo model
    python3 models/make_models.py all OUTDIR        every model the tests use

Each model is a real architecture in miniature, a few MB at most.  Beside
each NAME.onnx, `all` writes NAME.axes.json: for every weight a sparse kernel
could use, its group (reduction) axis and output-channel axis, as the model's
structure defines them, and the input the model takes.  The tests use these
to build masks independently of nmprune.
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _init(rng, name, shape, scale=None, dtype=np.float32):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    scale = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(dtype), name)


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _finish(nodes, name, inputs, outputs, inits, opset=OPSET):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="nmprune-models")
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def resnet():
    """ResNet-style: Conv+BatchNormalization+Relu, a residual block with 1x1 and grouped
    3x3 convs, a depthwise conv, global pooling and a Gemm head with transB=1."""
    rng = np.random.default_rng(7)
    inits, nodes, axes = [], [], {}

    def conv(name, x, cout, cin, k, group=1):
        inits.append(_init(rng, f"{name}.weight", (cout, cin // group, k, k)))
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight"], [f"{name}.out"], name=name,
                                      pads=[k // 2] * 4, group=group))
        if cin // group > 1:
            axes[f"{name}.weight"] = [1, 0]
        return f"{name}.out"

    def bn(name, x, c):
        for p, v in (("scale", 1 + 0.1 * rng.standard_normal(c)), ("bias", 0.1 * rng.standard_normal(c)),
                     ("mean", 0.1 * rng.standard_normal(c)), ("var", 1 + 0.1 * np.abs(rng.standard_normal(c)))):
            inits.append(numpy_helper.from_array(v.astype(np.float32), f"{name}.{p}"))
        nodes.append(helper.make_node("BatchNormalization", [x] + [f"{name}.{p}" for p in ("scale", "bias", "mean", "var")],
                                      [f"{name}.out"], name=name))
        return f"{name}.out"

    def relu(x):
        nodes.append(helper.make_node("Relu", [x], [x + ".relu"]))
        return x + ".relu"

    h = relu(bn("bn0", conv("stem", "input", 64, 32, 3), 64))
    b = relu(bn("bn1", conv("block.conv1", h, 64, 64, 1), 64))
    b = bn("bn2", conv("block.conv2", b, 64, 64, 3, group=2), 64)
    nodes.append(helper.make_node("Add", [h, b], ["residual"], name="residual"))
    h = relu("residual")
    h = relu(bn("bn3", conv("depthwise", h, 64, 64, 3, group=64), 64))
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"]))
    inits.append(_init(rng, "head.weight", (16, 64)))
    inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(16)).astype(np.float32), "head.bias"))
    nodes.append(helper.make_node("Gemm", ["flat", "head.weight", "head.bias"], ["output"], name="head", transB=1))
    axes["head.weight"] = [1, 0]
    model = _finish(nodes, "resnet", [_vi("input", TensorProto.FLOAT, [1, 32, 8, 8])],
                    [_vi("output", TensorProto.FLOAT, [1, 16])], inits)
    return model, axes


def bert(dtype=np.float32, seq=16, hidden=64, ff=128):
    """BERT-style encoder block: MatMul weights [K,N] with bias Add, attention MatMuls
    between activations (never candidates), LayerNormalization and Gelu (opset 20)."""
    rng = np.random.default_rng(11)
    ot = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    inits, nodes, axes = [], [], {}

    def linear(name, x, k, n):
        inits.append(_init(rng, f"{name}.weight", (k, n), dtype=dtype))
        inits.append(numpy_helper.from_array((0.02 * rng.standard_normal(n)).astype(dtype), f"{name}.bias"))
        nodes.append(helper.make_node("MatMul", [x, f"{name}.weight"], [f"{name}.mm"], name=name))
        nodes.append(helper.make_node("Add", [f"{name}.mm", f"{name}.bias"], [f"{name}.out"]))
        axes[f"{name}.weight"] = [0, 1]
        return f"{name}.out"

    def layernorm(name, x):
        inits.append(numpy_helper.from_array(np.ones(hidden, dtype), f"{name}.gamma"))
        inits.append(numpy_helper.from_array(np.zeros(hidden, dtype), f"{name}.beta"))
        nodes.append(helper.make_node("LayerNormalization", [x, f"{name}.gamma", f"{name}.beta"], [f"{name}.out"],
                                      axis=-1, epsilon=1e-5))
        return f"{name}.out"

    q, k, v = (linear(f"attn.{p}", "x", hidden, hidden) for p in "qkv")
    nodes.append(helper.make_node("Transpose", [k], ["kt"], perm=[0, 2, 1]))
    nodes.append(helper.make_node("MatMul", [q, "kt"], ["scores"], name="attn.scores"))
    inits.append(numpy_helper.from_array(np.array(1 / np.sqrt(hidden), dtype), "attn.scale"))
    nodes.append(helper.make_node("Mul", ["scores", "attn.scale"], ["scaled"]))
    nodes.append(helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1))
    nodes.append(helper.make_node("MatMul", ["probs", v], ["context"], name="attn.context"))
    o = linear("attn.o", "context", hidden, hidden)
    nodes.append(helper.make_node("Add", ["x", o], ["res1"]))
    h = layernorm("ln1", "res1")
    f = linear("ffn.up", h, hidden, ff)
    nodes.append(helper.make_node("Gelu", [f], ["gelu"]))
    f = linear("ffn.down", "gelu", ff, hidden)
    nodes.append(helper.make_node("Add", [h, f], ["res2"]))
    out = layernorm("ln2", "res2")
    nodes.append(helper.make_node("Identity", [out], ["output"]))
    model = _finish(nodes, "bert", [_vi("x", ot, [1, seq, hidden])], [_vi("output", ot, [1, seq, hidden])],
                    inits, opset=20)
    return model, axes


def bert_int8():
    """The BERT block with int8 weights behind per-channel DequantizeLinear."""
    model, axes = bert()
    g = model.graph
    by_name = {t.name: t for t in g.initializer}
    new_nodes = []
    for name in list(axes):
        w = numpy_helper.to_array(by_name[name])
        scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        zp = np.random.default_rng(len(name)).integers(-3, 4, w.shape[1]).astype(np.int8)
        q = np.clip(np.round(w / scale) + zp, -128, 127).astype(np.int8)
        by_name[name].CopyFrom(numpy_helper.from_array(q, name + ".q"))
        g.initializer.extend([numpy_helper.from_array(scale, name + ".scale"),
                              numpy_helper.from_array(zp, name + ".zp")])
        new_nodes.append(helper.make_node("DequantizeLinear", [name + ".q", name + ".scale", name + ".zp"], [name],
                                          axis=1))
        axes[name + ".q"] = axes.pop(name)
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    return model, axes


def constant_weight():
    """An MLP whose second weight is a Constant node's value."""
    rng = np.random.default_rng(5)
    w1 = _init(rng, "w1", (64, 64))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Constant", [], ["w2"], value=_init(rng, "w2_value", (64, 32))),
        helper.make_node("MatMul", ["r", "w2"], ["output"], name="fc2"),
    ]
    model = _finish(nodes, "constant", [_vi("x", TensorProto.FLOAT, [4, 64])],
                    [_vi("output", TensorProto.FLOAT, [4, 32])], [w1])
    return model, {"w1": [0, 1], "w2": [0, 1]}


def if_branch():
    """A weight used inside an If branch, resolved from the outer scope."""
    rng = np.random.default_rng(6)
    inner = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t"], name="then.fc")], "then", [],
                              [_vi("t", TensorProto.FLOAT, [4, 32])])
    other = helper.make_graph([helper.make_node("MatMul", ["x", "w_else"], ["e"], name="else.fc")], "else", [],
                              [_vi("e", TensorProto.FLOAT, [4, 32])], [_init(rng, "w_else", (64, 32))])
    nodes = [helper.make_node("If", ["cond"], ["output"], name="branch", then_branch=inner, else_branch=other)]
    model = _finish(nodes, "if_branch", [_vi("x", TensorProto.FLOAT, [4, 64]), _vi("cond", TensorProto.BOOL, [])],
                    [_vi("output", TensorProto.FLOAT, [4, 32])], [_init(rng, "w", (64, 32))])
    return model, {"w": [0, 1], "w_else": [0, 1]}


def demo():
    """The committed demo model is the ResNet-style model."""
    return resnet()[0]


BUILDERS = {"demo": demo}
# name -> (builder, save with external data)
SUITE = {
    "resnet": (resnet, False),
    "bert": (bert, False),
    "bert_int8": (bert_int8, False),
    "bert_fp16": (lambda: bert(np.float16), False),
    "resnet_external": (resnet, True),
    "constant_weight": (constant_weight, False),
    "if_branch": (if_branch, False),
}


def _inputs(model):
    feeds = {}
    for i in model.graph.input:
        t = i.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        dtype = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BOOL: "bool"}[t.elem_type]
        feeds[i.name] = {"shape": dims, "dtype": dtype}
    return feeds


def main(argv):
    if len(argv) != 3 or argv[1] not in list(BUILDERS) + ["all"]:
        sys.exit(__doc__)
    if argv[1] != "all":
        onnx.save_model(BUILDERS[argv[1]](), argv[2])
        return
    out = Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for name, (build, external) in SUITE.items():
        model, axes = build()
        path = out / f"{name}.onnx"
        if external:
            onnx.save_model(model, path, save_as_external_data=True, location=f"{name}.data",
                            size_threshold=1024)
        else:
            onnx.save_model(model, path)
        (out / f"{name}.axes.json").write_text(json.dumps({"axes": axes, "inputs": _inputs(model)}, indent=1))


if __name__ == "__main__":
    main(sys.argv)
