"""Shared fixtures of the end-to-end tests: the binary and small models."""
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
NMPRUNE = os.environ.get("NMPRUNE", str(ROOT / "build" / "nmprune"))


class Run:
    def __init__(self, proc):
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def __repr__(self):
        return f"exit {self.code}\nstdout: {self.out}\nstderr: {self.err}"


def nmprune(*args, check=None):
    proc = subprocess.run([NMPRUNE, *map(str, args)], capture_output=True, text=True, timeout=600)
    r = Run(proc)
    if check is not None:
        assert r.code == check, r
    return r


def matmul_model(weights, *, opset=17, name="W", a_side=False, ir_version=8):
    """Y = MatMul(X, W) (or MatMul(W, X) with a_side), W an initializer."""
    w = numpy_helper.from_array(np.asarray(weights), name)
    k, n = w.dims[-2], w.dims[-1]
    if a_side:
        x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [n, 4])
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [k, 4])
        node = helper.make_node("MatMul", [name, "X"], ["Y"], name="mm")
    else:
        x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, k])
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, n])
        node = helper.make_node("MatMul", ["X", name], ["Y"], name="mm")
    graph = helper.make_graph([node], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def save(model, path):
    Path(path).write_bytes(model.SerializeToString())
    return Path(path)


def weights(path):
    """Every initializer and Constant node value, in the main graph and every subgraph, by name."""
    out = {}

    def walk(g):
        out.update({t.name: numpy_helper.to_array(t) for t in g.initializer})
        for n in g.node:
            for a in n.attribute:
                if a.name == "value" and n.op_type == "Constant":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(sub)
    walk(onnx.load(str(path)).graph)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
