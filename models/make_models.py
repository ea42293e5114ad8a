#!/usr/bin/env python3
"""Builds nmprune's small models with seeded random weights.

    python3 models/make_models.py demo OUT.onnx     the committed demo model
    python3 models/make_models.py all OUTDIR        every model the tests use

Each model is a real architecture in miniature, a few MB at most.
"""
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


def demo():
    """A small CNN feature extractor and MLP head: Conv, Relu, Flatten, Gemm, MatMul."""
    rng = np.random.default_rng(2024)
    inits = [
        _init(rng, "conv1.weight", (32, 16, 3, 3)), _init(rng, "conv1.bias", (32,), 0.1),
        _init(rng, "conv2.weight", (64, 32, 3, 3)), _init(rng, "conv2.bias", (64,), 0.1),
        _init(rng, "fc1.weight", (128, 64 * 8 * 8)), _init(rng, "fc1.bias", (128,), 0.1),
        _init(rng, "fc2.weight", (128, 64)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["g1"], name="fc1", transB=1),
        helper.make_node("Relu", ["g1"], ["r3"], name="relu3"),
        helper.make_node("MatMul", ["r3", "fc2.weight"], ["output"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "demo",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="nmprune-models")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


BUILDERS = {"demo": demo}


def main(argv):
    if len(argv) != 3 or argv[1] not in list(BUILDERS) + ["all"]:
        sys.exit(__doc__)
    if argv[1] == "all":
        out = Path(argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for name, build in BUILDERS.items():
            onnx.save_model(build(), out / f"{name}.onnx")
    else:
        onnx.save_model(BUILDERS[argv[1]](), argv[2])


if __name__ == "__main__":
    main(sys.argv)
