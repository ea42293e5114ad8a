"""Hostile models: each gets a clear error (or a correct result) in bounded time
and memory, and none crashes."""
import json
import subprocess
import time

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import NMPRUNE, save

F = TensorProto.FLOAT


def _measured(args):
    """Exit code, stderr, seconds and peak RSS (KiB) of one nmprune run."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", NMPRUNE, *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    lines = p.stderr.strip().splitlines()
    return p.returncode, "\n".join(lines[:-1]), time.perf_counter() - t0, int(lines[-1])


def _graph(nodes, inits, name="g"):
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", F, [1, 64])],
                          [helper.make_tensor_value_info("y", F, [1, 32])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _w(shape=(64, 32)):
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), "w")


def test_hundred_thousand_nodes(tmp_path):
    nodes = [helper.make_node("Relu", ["x" if i == 0 else f"a{i - 1}"], [f"a{i}"]) for i in range(100_000)]
    nodes.append(helper.make_node("MatMul", ["a99999", "w"], ["y"], name="mm"))
    src = save(_graph(nodes, [_w()]), tmp_path / "m.onnx")
    code, err, secs, rss = _measured(["prune", src, "-o", tmp_path / "o.onnx", "-q"])
    assert code == 0, err
    assert secs < 30 and rss < 512 * 1024, (secs, rss)


def test_hundred_thousand_identities_between_weight_and_consumer(tmp_path):
    nodes = [helper.make_node("Identity", ["w" if i == 0 else f"i{i - 1}"], [f"i{i}"]) for i in range(100_000)]
    nodes.append(helper.make_node("MatMul", ["x", "i99999"], ["y"], name="mm"))
    src = save(_graph(nodes, [_w()]), tmp_path / "m.onnx")
    code, err, secs, rss = _measured(["inspect", src, "--json"])
    assert code == 0, err
    assert secs < 30 and rss < 512 * 1024, (secs, rss)


def _varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_subgraphs_nested_ten_thousand_deep(tmp_path):
    # graph { node { attribute { g: graph { ... } } } }, 10 000 levels, written at the wire level
    # (protobuf's own serializer refuses such depth).
    msg = b""
    for _ in range(10_000):
        msg = _field(1, _field(5, _field(6, msg)))   # GraphProto.node / NodeProto.attribute / AttributeProto.g
    path = tmp_path / "deep.onnx"
    path.write_bytes(_varint(1 << 3) + _varint(8) + _field(7, msg))
    code, err, secs, rss = _measured(["inspect", path])
    assert code == 3 and "messages nested too deeply at byte offset" in err, err
    assert secs < 30 and rss < 512 * 1024


def test_duplicate_names(tmp_path):
    m = _graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_w(), _w()])
    code, err, _, _ = _measured(["prune", save(m, tmp_path / "m.onnx"), "-o", tmp_path / "o.onnx"])
    assert code == 3 and "graph 'g': name 'w' is defined twice" in err, err
    m = _graph([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Relu", ["x"], ["h"]),
                helper.make_node("MatMul", ["h", "w"], ["y"], name="mm")], [_w()])
    code, err, _, _ = _measured(["inspect", save(m, tmp_path / "m2.onnx")])
    assert code == 3 and "name 'h' is defined twice" in err, err
    assert not (tmp_path / "o.onnx").exists()


def _unnamed(where):
    """A decoder loop whose `where` (a graph's input, output or value_info, a node's op type, an attribute) has
    no name."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("MatMul", ["h_in", "w_in"], ["h_out"])],
        "body", [helper.make_tensor_value_info(n, t, s) for n, t, s in
                 (("i", TensorProto.INT64, []), ("c_in", TensorProto.BOOL, []), ("h_in", F, [1, 64]),
                  ("w_in", F, [64, 64]))],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in
         (("c_out", TensorProto.BOOL, []), ("h_out", F, [1, 64]), ("w_in", F, [64, 64]))])
    m = _graph([helper.make_node("Loop", ["n", "", "x", "w"], ["h", "w_end"], name="loop", body=body),
                helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Slice", ["r", "lo", "hi", "ax"], ["y"])],
               [_w((64, 64))] + [numpy_helper.from_array(np.array(v, np.int64), k)
                                 for k, v in (("n", 2), ("lo", [0]), ("hi", [32]), ("ax", [1]))])
    m.graph.value_info.append(helper.make_tensor_value_info("r", F, [1, 64]))
    if where == "op type":  # the node that holds the body
        m.graph.node[0].ClearField("op_type")
        return m, "graph 'g': node 0 'loop' has no op_type"
    if where == "attribute":
        body.node[1].attribute.append(helper.make_attribute("x", 1))
        body.node[1].attribute[0].ClearField("name")
        m.graph.node[0].attribute[0].g.CopyFrom(body)
        return m, "graph 'body': node 1 '(unnamed)': attribute 0 has no name"
    graph, field, i = {"graph input": (m.graph, "input", 0), "graph output": (m.graph, "output", 0),
                       "value_info": (m.graph, "value_info", 0), "body input": (body, "input", 1),
                       "body output": (body, "output", 2)}[where]
    getattr(graph, field)[i].ClearField("name")
    if graph is body:
        m.graph.node[0].attribute[0].g.CopyFrom(body)
    return m, f"graph '{graph.name}': {field} {i} has no name"


@pytest.mark.parametrize("where", ["graph input", "graph output", "value_info", "body input", "body output",
                                   "op type", "attribute"])
def test_a_missing_required_name_is_a_bad_model(tmp_path, where):
    """The IR requires every graph input, output and value_info to name its value, every node its op type and
    every attribute its name; lookups by name crashed on a model without one (a Loop body's unnamed input, or a
    node without an op type that holds a subgraph, stopped the walker with a segmentation fault)."""
    m, why = _unnamed(where)
    src = save(m, tmp_path / "m.onnx")
    before = src.read_bytes()
    for args in (["inspect", src], ["prune", src, "-o", tmp_path / "o.onnx"], ["check", src]):
        code, err, _, _ = _measured(args)
        assert code == 3 and err.splitlines()[0] == f"nmprune: error: {src}: {why}", (args, err)
    assert not (tmp_path / "o.onnx").exists() and src.read_bytes() == before


def test_model_with_every_value_named_prunes_its_loop_weight(tmp_path):
    """The same model with its names in place: the weight the loop carries is found and pruned."""
    m, _ = _unnamed("graph input")
    m.graph.input[0].name = "x"
    src = save(m, tmp_path / "m.onnx")
    code, err, _, _ = _measured(["prune", src, "-o", tmp_path / "o.onnx", "--align", "none"])
    assert code == 0 and "pruned 1 weights" in err, err


def test_graph_cycle(tmp_path):
    m = _graph([helper.make_node("Identity", ["b"], ["a"]), helper.make_node("Identity", ["a"], ["b"]),
                helper.make_node("MatMul", ["x", "a"], ["y"], name="mm")], [])
    code, err, secs, _ = _measured(["prune", save(m, tmp_path / "m.onnx"), "-o", tmp_path / "o.onnx"])
    assert code == 3 and "graph 'g': cycle through" in err, err
    assert secs < 10 and not (tmp_path / "o.onnx").exists()


def test_loading_never_keeps_the_weights_mapped(tmp_path):
    """The passes over the structure drop the pages behind them: 1000 weights of 128 KiB, nothing to prune."""
    rng = np.random.default_rng(1)
    ws = [numpy_helper.from_array(rng.standard_normal((64, 512)).astype(np.float32), f"w{i}") for i in range(1000)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"a{i}"]) for i in range(1000)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 64])],
                          [helper.make_tensor_value_info("a0", F, [1, 512])], ws)
    src = save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    for cmd in (["prune", src, "-o", tmp_path / "o.onnx", "--include", "^none$", "-q"], ["inspect", src]):
        code, err, _, rss = _measured(cmd)
        assert code == 0, err
        assert rss < 48 * 1024, (cmd[0], rss)  # the file is 128 MiB


def test_declared_sizes_far_beyond_the_file(tmp_path):
    # 2^50 elements declared, a few bytes present: refused before anything is allocated for them.
    t = TensorProto(name="w", data_type=F, dims=[1 << 25, 1 << 25], raw_data=b"\0" * 16)
    m = _graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [t])
    code, err, _, rss = _measured(["prune", save(m, tmp_path / "m.onnx"), "-o", tmp_path / "o.onnx"])
    assert code == 3 and "raw_data has 16 bytes, dims and type say 4503599627370496" in err, err
    assert rss < 64 * 1024
    # External data that claims far more than its file holds.
    (tmp_path / "w.bin").write_bytes(b"\0" * 64)
    t = TensorProto(name="w", data_type=F, dims=[1 << 20, 1 << 20], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", "w.bin"), ("offset", "0"), ("length", str(1 << 42))):
        e = t.external_data.add()
        e.key, e.value = k, v
    m = _graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [t])
    code, err, _, rss = _measured(["inspect", save(m, tmp_path / "e.onnx")])
    assert code == 3 and "is beyond the end of 'w.bin' (64 bytes)" in err, err
    assert rss < 64 * 1024


def test_many_weights_fast(tmp_path):
    # 20 000 small weights: the walker and selection stay linear.
    nodes, inits, x = [], [], "x"
    for i in range(20_000):
        inits.append(numpy_helper.from_array(np.ones((64, 64), np.float32) * (i % 7 + 1), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        x = f"h{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 64])],
                          [helper.make_tensor_value_info("y", F, [1, 64])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    src = save(m, tmp_path / "m.onnx")
    code, err, secs, _ = _measured(["prune", src, "-o", tmp_path / "o.onnx", "-q", "--threads", "1"])
    assert code == 0, err
    assert secs < 60, secs


def test_permute_through_a_hundred_thousand_ops(tmp_path):
    # One channel group of 100 000 slots between two weights, and a tensor read by 100 000 nodes.
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1")]
    nodes += [helper.make_node("Relu", ["h" if i == 0 else f"a{i - 1}"], [f"a{i}"]) for i in range(100_000)]
    nodes += [helper.make_node("Sigmoid", ["h"], [f"s{i}"]) for i in range(100_000)]
    nodes.append(helper.make_node("MatMul", ["a99999", "w2"], ["y"], name="fc2"))
    src = save(_graph(nodes, [w1, w2]), tmp_path / "m.onnx")
    code, err, secs, rss = _measured(["prune", src, "-o", tmp_path / "o.onnx", "--permute", "-q"])
    assert code == 0, err
    assert secs < 30 and rss < 512 * 1024, (secs, rss)
    out = subprocess.run([NMPRUNE, "prune", src, "--dry-run", "--permute", "--json"], capture_output=True,
                         text=True, timeout=300).stdout
    groups = json.loads(out)["permutation"]["groups"]
    assert [(g["from"], g["permuted"]) for g in groups] == [("w1", False), ("w2", True)], groups
