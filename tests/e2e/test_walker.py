"""Graph walker and selection: every axis-table row, every look-through case,
with a known answer asserted through `nmprune inspect --json`."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import nmprune, save

F = TensorProto.FLOAT


def model(nodes, inits, inputs=(("X", F, None),), outputs=(("Y", F, None),), opset=21):
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def w(name, shape, dtype=np.float32, seed=0):
    return numpy_helper.from_array(
        np.random.default_rng(seed).standard_normal(shape).astype(dtype), name)


def inspect(tmp_path, m, *args):
    p = save(m, tmp_path / "m.onnx")
    r = nmprune("inspect", p, "--json", *args, check=0)
    return {c["name"]: c for c in json.loads(r.out)}


# ---- DESIGN.md's axis table ---------------------------------------------------------

@pytest.mark.parametrize("op, attrs, side, shape, axis", [
    ("Conv", {}, 1, (32, 16, 3, 3), 1),
    ("Conv", {}, 1, (32, 16, 5), 1),               # 1-D
    ("Conv", {}, 1, (32, 16, 3, 3, 3), 1),         # 3-D
    ("Gemm", {}, 1, (64, 32), 0),                  # B [K,N]
    ("Gemm", {"transB": 1}, 1, (32, 64), 1),       # B [N,K]
    ("Gemm", {}, 0, (32, 64), 1),                  # A [M,K]
    ("Gemm", {"transA": 1}, 0, (64, 32), 0),       # A [K,M]
    ("MatMul", {}, 1, (64, 32), 0),                # B [K,N]
    ("MatMul", {}, 1, (4, 64, 32), 1),             # batched B [..,K,N]: r-2
    ("MatMul", {}, 1, (64,), 0),                   # rank-1 B
    ("MatMul", {}, 0, (32, 64), 1),                # A [M,K]: r-1
    ("MatMul", {}, 0, (2, 32, 64), 2),             # batched A
])
def test_axis_table(tmp_path, op, attrs, side, shape, axis):
    ins = ["X", "W"] if side == 1 else ["W", "X"]
    m = model([helper.make_node(op, ins, ["Y"], name="n", **attrs)], [w("W", shape)])
    c = inspect(tmp_path, m, "--align", "none")["W"]
    assert c["axis"] == axis
    assert c["axis_length"] == shape[axis]
    assert c["consumers"] == [{"node": "n", "op": op, "input": side}]


def test_conv_transpose_is_opt_in(tmp_path):
    m = model([helper.make_node("ConvTranspose", ["X", "W"], ["Y"], name="ct")], [w("W", (32, 16, 3, 3))])
    c = inspect(tmp_path, m)["W"]
    assert c["axis"] == 0 and not c["eligible"]
    assert c["reason"] == "op ConvTranspose not in --ops"
    c = inspect(tmp_path, m, "--ops", "ConvTranspose")["W"]
    assert c["axis"] == 0 and c["eligible"], c


def test_grouped_and_depthwise_conv(tmp_path):
    m = model([
        helper.make_node("Conv", ["X", "Wg"], ["A"], name="grouped", group=2),
        helper.make_node("Conv", ["A", "Wd"], ["Y"], name="depthwise", group=64),
    ], [w("Wg", (64, 16, 3, 3)), w("Wd", (64, 1, 3, 3))])
    c = inspect(tmp_path, m)
    assert c["Wg"]["axis"] == 1 and c["Wg"]["eligible"]
    assert c["Wd"]["reason"] == "depthwise convolution"


# ---- look-through -------------------------------------------------------------------

def test_transpose_perm_not_its_own_inverse_conv(tmp_path):
    # HWIO weight -> Transpose(perm=[3,2,0,1]) -> OIHW for the Conv: group axis 1 of the
    # Conv's view is axis perm[1] = 2 (I) of the weight; the inverse would give 3 (O).
    m = model([
        helper.make_node("Transpose", ["W"], ["Wt"], perm=[3, 2, 0, 1]),
        helper.make_node("Conv", ["X", "Wt"], ["Y"], name="conv"),
    ], [w("W", (3, 3, 16, 32))])
    c = inspect(tmp_path, m)["W"]
    assert c["axis"] == 2 and c["axis_length"] == 16 and c["eligible"], c


def test_transpose_perm_rank3_matmul(tmp_path):
    # W [a,b,c] -> perm [1,2,0] -> [b,c,a]; MatMul B reduces axis 1 of that: weight axis 2.
    m = model([
        helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 2, 0]),
        helper.make_node("MatMul", ["X", "Wt"], ["Y"], name="mm"),
    ], [w("W", (8, 4, 32))])
    c = inspect(tmp_path, m, "--align", "none")["W"]
    assert c["axis"] == 2 and c["axis_length"] == 32, c


def test_default_transpose_and_chain(tmp_path):
    # Cast and Identity pass through; a default Transpose reverses the axes.
    m = model([
        helper.make_node("Cast", ["W"], ["Wc"], to=F),
        helper.make_node("Identity", ["Wc"], ["Wi"]),
        helper.make_node("Transpose", ["Wi"], ["Wt"]),
        helper.make_node("MatMul", ["X", "Wt"], ["Y"], name="mm"),
    ], [w("W", (32, 64))])
    c = inspect(tmp_path, m)["W"]
    assert c["axis"] == 1 and c["axis_length"] == 64, c


def test_int8_qdq_per_axis(tmp_path):
    q = numpy_helper.from_array(np.random.default_rng(1).integers(-100, 100, (64, 32), dtype=np.int8), "Wq")
    scale = numpy_helper.from_array(np.full(32, 0.02, np.float32), "scale")
    zp = numpy_helper.from_array(np.zeros(32, np.int8), "zp")
    m = model([
        helper.make_node("DequantizeLinear", ["Wq", "scale", "zp"], ["W"], axis=1),
        helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm"),
    ], [q, scale, zp])
    c = inspect(tmp_path, m)["Wq"]
    assert c["dtype"] == "INT8" and c["axis"] == 0 and c["eligible"], c
    assert c["quantization"] == {"axis": 1, "block_size": 0}


def test_int8_without_dequantize(tmp_path):
    q = numpy_helper.from_array(np.ones((64, 32), np.int8), "Wq")
    m = model([
        helper.make_node("Cast", ["Wq"], ["W"], to=F),
        helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm"),
    ], [q])
    assert inspect(tmp_path, m)["Wq"]["reason"] == "quantized weight without DequantizeLinear"


def test_shared_weight_agreeing_and_conflicting(tmp_path):
    agree = model([
        helper.make_node("MatMul", ["X", "W"], ["A"], name="mm1"),
        helper.make_node("MatMul", ["A", "W"], ["Y"], name="mm2"),
    ], [w("W", (64, 64))])
    c = inspect(tmp_path, agree)["W"]
    assert c["eligible"] and [u["node"] for u in c["consumers"]] == ["mm1", "mm2"]
    conflict = model([
        helper.make_node("MatMul", ["X", "W"], ["A"], name="mm1"),
        helper.make_node("MatMul", ["W", "A"], ["Y"], name="mm2"),
    ], [w("W", (64, 64))])
    c = inspect(tmp_path, conflict)["W"]
    assert not c["eligible"] and c["reason"] == "conflicting axes"
    twice = model([helper.make_node("MatMul", ["W", "W"], ["Y"], name="sq")], [w("W", (64, 64))])
    assert inspect(tmp_path, twice)["W"]["reason"] == "conflicting axes"


def test_constant_node_weight(tmp_path):
    m = model([
        helper.make_node("Constant", [], ["W"], value=w("value", (64, 32))),
        helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm"),
    ], [])
    c = inspect(tmp_path, m)["W"]
    assert c["constant"] and c["eligible"] and c["axis"] == 0, c


def _if_model(inner_inits, inner_weight="W"):
    then = helper.make_graph(
        [helper.make_node("MatMul", ["X", inner_weight], ["T"], name="then_mm")], "then", [],
        [helper.make_tensor_value_info("T", F, None)], inner_inits)
    other = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["E"])], "else", [],
        [helper.make_tensor_value_info("E", F, None)])
    return model([
        helper.make_node("If", ["C"], ["Y"], name="if", then_branch=then, else_branch=other),
    ], [w("W", (64, 32))], inputs=(("X", F, None), ("C", TensorProto.BOOL, [])))


def test_weight_used_inside_if_branch(tmp_path):
    c = inspect(tmp_path, _if_model([]))["W"]
    assert c["consumers"] == [{"node": "then_mm", "op": "MatMul", "input": 1}]
    assert c["shape"] == [64, 32] and c["eligible"]


def test_name_shadowed_in_subgraph(tmp_path):
    cands = list(inspect(tmp_path, _if_model([w("W", (128, 16), seed=3)])).values())
    assert len(cands) == 1
    assert cands[0]["shape"] == [128, 16]      # the subgraph's own W, not the outer one


def _loop_model(update_w=False, transposed=False, final_out=False):
    """A decoder loop as exporters write it: the weight W enters the Loop as a carried value and every iteration
    passes it on unchanged (or, with update_w, replaces it: then it is state, not a weight).  The Loop's final
    value of it, W_final, is read by nothing, or with final_out is a graph output."""
    body_nodes = [helper.make_node("Identity", ["cond_in"], ["cond_out"])]
    w_in = "w_in"
    if transposed:
        body_nodes.append(helper.make_node("Transpose", ["w_in"], ["w_t"], perm=[1, 0]))
        w_in = "w_t"
    body_nodes.append(helper.make_node("MatMul", ["h_in", w_in], ["h_out"], name="step_mm"))
    w_out = "w_in"
    if update_w:
        body_nodes.append(helper.make_node("Neg", ["w_in"], ["w_next"]))
        w_out = "w_next"
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", F, None), helper.make_tensor_value_info("w_in", F, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", F, None), helper.make_tensor_value_info(w_out, F, None)])
    shape = (32, 32)
    return model([helper.make_node("Constant", [], ["W"], value=w("value", shape)),
                  helper.make_node("Loop", ["n", "", "X", "W"], ["Y", "W_final"], name="decoder", body=body)],
                 [numpy_helper.from_array(np.array(3, np.int64), "n")], inputs=(("X", F, [4, 32]),),
                 outputs=(("Y", F, None),) + ((("W_final", F, None),) if final_out else ()))


@pytest.mark.parametrize("transposed", [False, True])
def test_weight_a_loop_carries_unchanged_is_a_candidate(tmp_path, transposed):
    c = inspect(tmp_path, _loop_model(transposed=transposed), "--align", "none")["W"]
    assert c["consumers"] == [{"node": "step_mm", "op": "MatMul", "input": 1}]
    assert c["constant"] and c["eligible"] and c["axis"] == (1 if transposed else 0), c


def test_value_a_loop_updates_is_state_not_a_weight(tmp_path):
    assert inspect(tmp_path, _loop_model(update_w=True), "--align", "none") == {}


def test_weight_a_scan_carries_as_unchanged_state_is_a_candidate(tmp_path):
    """Scan (opset 9 and later: states, then scan inputs): state W passes through every step."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "w_s"], ["y_t"], name="scan_mm")], "body",
        [helper.make_tensor_value_info("w_s", F, None), helper.make_tensor_value_info("x_t", F, None)],
        [helper.make_tensor_value_info("w_s", F, None), helper.make_tensor_value_info("y_t", F, None)])
    m = model([helper.make_node("Scan", ["W", "X"], ["W_end", "Y"], name="scan", body=body, num_scan_inputs=1)],
              [w("W", (32, 16))], inputs=(("X", F, [5, 32]),), outputs=(("Y", F, None),))
    c = inspect(tmp_path, m, "--align", "none")["W"]
    assert c["consumers"] == [{"node": "scan_mm", "op": "MatMul", "input": 1}] and c["axis"] == 0
    assert c["eligible"], c
    # The final state is W itself: a model that returns it would return the pruned weight.
    m.graph.output.insert(0, helper.make_tensor_value_info("W_end", F, None))
    assert inspect(tmp_path, m, "--align", "none")["W"]["reason"] == "also a graph output: pruning would change it"


def test_reshape_blocks_the_path(tmp_path):
    shape = numpy_helper.from_array(np.array([64, 32], np.int64), "shape")
    m = model([
        helper.make_node("Reshape", ["W", "shape"], ["Wr"]),
        helper.make_node("MatMul", ["X", "Wr"], ["Y"], name="mm"),
    ], [w("W", (2048,)), shape])
    c = inspect(tmp_path, m)["Wr"]
    assert not c["eligible"] and c["reason"] == "unsupported path: Reshape"


def test_activations_are_not_candidates(tmp_path):
    m = model([
        helper.make_node("Transpose", ["X"], ["Xt"]),
        helper.make_node("MatMul", ["X", "Xt"], ["Y"], name="attention"),
    ], [])
    assert inspect(tmp_path, m) == {}


# ---- weights that something besides their consumers reads ------------------------------

def _read_elsewhere(case):
    """W (64x32) feeds MatMul 'mm' and, by `case`, something else that would see the pruned values."""
    ids = ("ids", TensorProto.INT64, [1, 8])
    mm = helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")
    if case == "tied embedding":  # a language model's head shares the token embedding, as [vocab, hidden]
        return model([helper.make_node("Gather", ["W", "ids"], ["E"], name="embed"),
                      helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
                      helper.make_node("MatMul", ["E", "Wt"], ["Y"], name="head")],
                     [w("W", (64, 32))], inputs=(ids,)), "also read by Gather 'embed'"
    if case == "behind DequantizeLinear":
        q = numpy_helper.from_array(np.random.default_rng(1).integers(-100, 100, (64, 32), dtype=np.int8), "W")
        s = numpy_helper.from_array(np.array(0.02, np.float32), "s")
        return model([helper.make_node("DequantizeLinear", ["W", "s"], ["Wd"]),
                      helper.make_node("MatMul", ["X", "Wd"], ["Y"], name="mm"),
                      helper.make_node("ReduceSum", ["Wd"], ["R"], name="norm")],
                     [q, s], outputs=(("Y", F, None), ("R", F, None))), "also read by ReduceSum 'norm'"
    if case == "graph output":
        return model([mm, helper.make_node("Identity", ["W"], ["W_copy"])], [w("W", (64, 32))],
                     outputs=(("Y", F, None), ("W_copy", F, None))), "also a graph output"
    if case == "other domain":
        return model([mm, helper.make_node("FusedMatMul", ["X", "W"], ["Z"], name="fused", domain="com.microsoft")],
                     [w("W", (64, 32))], outputs=(("Y", F, None), ("Z", F, None))), "also read by FusedMatMul 'fused'"
    if case == "inside an If branch":
        then = helper.make_graph([helper.make_node("Gather", ["W", "ids"], ["T"], name="lookup")], "then", [],
                                 [helper.make_tensor_value_info("T", F, None)])
        other = helper.make_graph([helper.make_node("Identity", ["Y"], ["E"])], "else", [],
                                  [helper.make_tensor_value_info("E", F, None)])
        return model([mm, helper.make_node("If", ["C"], ["Z"], name="if", then_branch=then, else_branch=other)],
                     [w("W", (64, 32))], inputs=(("X", F, None), ("C", TensorProto.BOOL, []), ids),
                     outputs=(("Z", F, None),)), "also read by Gather 'lookup'"
    if case == "returned by an If branch":
        then = helper.make_graph([helper.make_node("Transpose", ["W"], ["T"])], "then", [],
                                 [helper.make_tensor_value_info("T", F, None)])
        other = helper.make_graph([helper.make_node("Transpose", ["Y"], ["E"])], "else", [],
                                  [helper.make_tensor_value_info("E", F, None)])
        return model([mm, helper.make_node("If", ["C"], ["Z"], name="pick", then_branch=then, else_branch=other)],
                     [w("W", (64, 32))], inputs=(("X", F, None), ("C", TensorProto.BOOL, [])),
                     outputs=(("Z", F, None),)), "also read by If 'pick'"
    if case == "final value of a Loop":
        return _loop_model(final_out=True), "also a graph output"
    if case == "inside a Loop body":  # the body carries W unchanged and reads it besides its MatMul
        body = helper.make_graph(
            [helper.make_node("Identity", ["c_in"], ["c_out"]),
             helper.make_node("MatMul", ["h_in", "w_in"], ["p"], name="step_mm"),
             helper.make_node("ReduceMean", ["w_in"], ["bias"], name="mean", keepdims=0),
             helper.make_node("Add", ["p", "bias"], ["h_out"])],
            "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                     helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                     helper.make_tensor_value_info("h_in", F, None), helper.make_tensor_value_info("w_in", F, None)],
            [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("h_out", F, None), helper.make_tensor_value_info("w_in", F, None)])
        return model([helper.make_node("Loop", ["n", "", "X", "W"], ["Y", "W_final"], name="decoder", body=body)],
                     [w("W", (32, 32)), numpy_helper.from_array(np.array(3, np.int64), "n")]), \
            "also read by ReduceMean 'mean'"
    if case == "state a Loop updates":  # W starts a value the body replaces: the Loop reads it as data
        body = helper.make_graph(
            [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Neg", ["s_in"], ["s_out"])],
            "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                     helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                     helper.make_tensor_value_info("s_in", F, None)],
            [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("s_out", F, None)])
        return model([mm, helper.make_node("Loop", ["n", "", "W"], ["S"], name="flip", body=body)],
                     [w("W", (64, 32)), numpy_helper.from_array(np.array(3, np.int64), "n")],
                     outputs=(("Y", F, None), ("S", F, None))), "also read by Loop 'flip'"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["tied embedding", "behind DequantizeLinear", "graph output", "other domain",
                                  "inside an If branch", "returned by an If branch", "final value of a Loop",
                                  "inside a Loop body", "state a Loop updates"])
def test_weight_another_node_reads_is_not_pruned(tmp_path, case):
    """Pruning a weight changes what every reader of its values computes, not only the sparse consumer's
    product: one read by anything else is listed with that reader and left dense."""
    m, reader = _read_elsewhere(case)
    c = inspect(tmp_path, m, "--align", "none")["W"]
    assert not c["eligible"] and c["reason"] == f"{reader}: pruning would change it", c


def test_tied_weight_is_left_as_it_was_and_said_why(tmp_path):
    from conftest import weights
    m, _ = _read_elsewhere("tied embedding")
    src = save(m, tmp_path / "tied.onnx")
    out = tmp_path / "out.onnx"
    r = nmprune("prune", src, "-o", out, "--align", "none", "--report", tmp_path / "r.json")
    assert "pruned 0 weights, skipped 1" in r.err
    np.testing.assert_array_equal(weights(out)["W"], weights(src)["W"])
    entries = json.loads((tmp_path / "r.json").read_text())["weights"]
    assert [(e["name"], e["eligible"], e["reason"]) for e in entries] == [
        ("W", False, "also read by Gather 'embed': pruning would change it")]


@pytest.mark.parametrize("reader", ["Shape", "Size"])
def test_readers_of_the_shape_alone_do_not_stop_pruning(tmp_path, reader):
    m = model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm"), helper.make_node(reader, ["W"], ["S"])],
              [w("W", (64, 32))], outputs=(("Y", F, None), ("S", TensorProto.INT64, None)))
    assert inspect(tmp_path, m, "--align", "none")["W"]["eligible"]


def test_fp16_in_int32_data(tmp_path):
    t = helper.make_tensor("W", TensorProto.FLOAT16, (64, 32),
                           np.ones((64, 32), np.float16).view(np.uint16).flatten().tolist())
    assert not t.raw_data and len(t.int32_data) == 2048
    m = model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [t])
    c = inspect(tmp_path, m)["W"]
    assert c["dtype"] == "FLOAT16" and c["eligible"]


def test_external_data_weight(tmp_path):
    m = model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [w("W", (64, 32))])
    onnx.save_model(m, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.bin",
                    size_threshold=0)
    r = nmprune("inspect", tmp_path / "ext.onnx", "--json", check=0)
    c = json.loads(r.out)[0]
    assert c["name"] == "W" and c["eligible"] and c["axis"] == 0


def test_graph_input_flag(tmp_path):
    m = model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [w("W", (64, 32))],
              inputs=(("X", F, None), ("W", F, [64, 32])))
    c = inspect(tmp_path, m)["W"]
    assert c["graph_input"] and c["eligible"]
    r = nmprune("inspect", save(m, tmp_path / "gi.onnx"), check=0)
    assert "also a graph input" in r.out


# ---- selection ------------------------------------------------------------------------

def test_alignment_presets(tmp_path):
    m = model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [w("W", (24, 64))])
    assert inspect(tmp_path, m)["W"]["reason"] == "group axis 24 is not a multiple of 16 (--align asp)"
    assert inspect(tmp_path, m, "--align", "none")["W"]["eligible"]
    assert inspect(tmp_path, m, "--align", "cusparselt")["W"]["eligible"]
    assert inspect(tmp_path, m, "--pattern", "2:8", "--align", "none")["W"]["eligible"]
    assert inspect(tmp_path, m, "--pattern", "3:32", "--align", "none")["W"]["reason"] == \
        "group axis 24 is not a multiple of 32 (3:32)"
    m = model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [w("W", (64, 12))])
    assert inspect(tmp_path, m)["W"]["reason"] == "output channels 12 are not a multiple of 8 (--align asp)"
    h = model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [w("W", (64, 8), np.float16)])
    assert inspect(tmp_path, h, "--align", "cusparselt")["W"]["reason"] == \
        "output channels 8 are not a multiple of 16 (--align cusparselt)"
    assert inspect(tmp_path, h, "--pattern", "2:4@v16", "--align", "none")["W"]["reason"] == \
        "output channels 8 are not a multiple of 16 (2:4@v16)"


def _four_layers():
    nodes, inits, x = [], [], "X"
    for i in range(4):
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"layer{i}"))
        inits.append(w(f"w{i}", (64, 64), seed=i))
        x = f"h{i}"
    nodes.append(helper.make_node("Identity", [x], ["Y"]))
    return model(nodes, inits)


def test_dense_first_include_exclude(tmp_path):
    m = _four_layers()
    c = inspect(tmp_path, m, "--dense-first", "0.5")
    assert [c[f"w{i}"]["eligible"] for i in range(4)] == [False, False, True, True]
    assert c["w0"]["reason"] == "dense-first"
    c = inspect(tmp_path, m, "--dense-first", "0.3")        # floor(0.3 * 4) = 1
    assert [c[f"w{i}"]["eligible"] for i in range(4)] == [False, True, True, True]
    c = inspect(tmp_path, m, "--include", "layer[12]", "--exclude", "w2")
    assert [c[f"w{i}"]["reason"] for i in range(4)] == [
        "not matched by --include", None, "excluded by --exclude", "not matched by --include"]


def test_rules_file(tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([
        {"match": "^w0$", "dense": True},
        {"match": "layer[12]", "pattern": "4:8"},
        {"match": ".*", "pattern": "1:4"},
    ]))
    c = inspect(tmp_path, _four_layers(), "--rules", rules)
    assert c["w0"]["reason"] == "dense by rule 0"
    assert [c[f"w{i}"]["pattern"] for i in (1, 2, 3)] == ["4:8", "4:8", "1:4"]


@pytest.mark.parametrize("rules, message", [
    ([{"match": "x", "pattern": "2:4", "colour": "red"}], "rule 0: unknown key 'colour'"),
    ([{"match": "x", "pattern": "2:4"}, {"match": "(", "dense": True}], "rule 1: bad regex '('"),
    ([{"match": "x", "pattern": "3:2"}], "rule 0: pattern '3:2': N must be less than M"),
    ([{"match": "x"}], "rule 0: needs exactly one of \"pattern\" or \"dense\""),
    ([{"match": "x", "dense": False}], "rule 0: \"dense\" must be true"),
    ({"match": "x"}, "expected a JSON array of rules"),
])
def test_rules_errors(tmp_path, rules, message):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    r = nmprune("inspect", save(_four_layers(), tmp_path / "m.onnx"), "--rules", path)
    assert r.code == 2 and message in r.err, r


def test_regex_and_ops_errors(tmp_path):
    p = save(_four_layers(), tmp_path / "m.onnx")
    r = nmprune("inspect", p, "--include", "[a-")
    assert r.code == 2 and "--include: bad regex '[a-'" in r.err, r
    for bad, why in (("x+++", "a repetition operator applied to another"), ("a{1000}", "above 255"),
                     ("a{" + "3" * 40 + ",}", "above 255"), ("a{2," + "9" * 30 + "}", "above 255"),
                     ("z" * 1100, "longer than 1024")):
        r = nmprune("inspect", p, "--exclude", bad)
        assert r.code == 2 and why in r.err, r
    assert nmprune("inspect", p, "--include", "w[+*]{1,2}|layer[0-9]+").code == 0
    r = nmprune("inspect", p, "--ops", "MatMul,Softmax")
    assert r.code == 2 and "--ops: unknown op 'Softmax'" in r.err, r
    r = nmprune("inspect", p, "--rules", tmp_path / "missing.json")
    assert r.code == 4 and "cannot open rules file" in r.err, r


def test_inspect_text_table(tmp_path):
    r = nmprune("inspect", save(_four_layers(), tmp_path / "m.onnx"), "--exclude", "w3", check=0)
    lines = r.out.splitlines()
    assert lines[0].split() == ["WEIGHT", "CONSUMERS", "DTYPE", "SHAPE", "AXIS", "LENGTH",
                                "PATTERN", "ELIGIBLE", "REASON"]
    assert lines[1].split() == ["w0", "layer0", "(MatMul)", "FLOAT", "[64,64]", "0", "64", "2:4", "yes"]
    assert lines[4].split()[-3:] == ["excluded", "by", "--exclude"]
    assert all(line == line.rstrip() for line in lines)
    assert lines[-1] == "4 candidate weights, 3 eligible"


def test_same_name_in_two_scopes_gets_two_metadata_entries(tmp_path):
    """An outer W and a subgraph's own W are two weights: nmprune.weights keeps both (W, W#2)."""
    then = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["T"], name="then_mm")], "then", [],
        [helper.make_tensor_value_info("T", F, None)], [w("W", (128, 16), seed=3)])
    other = helper.make_graph([helper.make_node("Identity", ["X"], ["E"])], "else", [],
                              [helper.make_tensor_value_info("E", F, None)])
    m = model([
        helper.make_node("MatMul", ["X", "W"], ["Z"], name="outer_mm"),
        helper.make_node("If", ["C"], ["Y"], name="if", then_branch=then, else_branch=other),
    ], [w("W", (64, 32))], inputs=(("X", F, None), ("C", TensorProto.BOOL, [])))
    src = tmp_path / "m.onnx"
    src.write_bytes(m.SerializeToString())
    nmprune("prune", src, "-o", tmp_path / "o.onnx", "-q", check=0)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "o.onnx")).metadata_props}
    entries = json.loads(meta["nmprune.weights"])
    assert sorted(entries) == ["W", "W#2"] and all(e["sparsity"] == 0.5 for e in entries.values())


def _dynamic_quant_model():
    """MatMulInteger with a per-column zero point and ConvInteger with a per-tensor one (what ONNX Runtime
    runs), as dynamic quantization writes them, and an LSTM."""
    rng = np.random.default_rng(0)
    Wq = rng.integers(-100, 100, (64, 32)).astype(np.int8)
    zp = rng.integers(-3, 3, 32).astype(np.int8)
    Wc = rng.integers(-100, 100, (16, 8, 3, 3)).astype(np.int8)
    wzp = np.array(2, np.int8)
    Wl = rng.standard_normal((1, 64, 8)).astype(np.float32)
    R = rng.standard_normal((1, 64, 16)).astype(np.float32)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "Wq", "xz", "zp"], ["y"], name="mmi"),
        helper.make_node("DynamicQuantizeLinear", ["img"], ["iq", "is", "iz"]),
        helper.make_node("ConvInteger", ["iq", "Wc", "iz", "wzp"], ["c"], name="convi"),
        helper.make_node("LSTM", ["seq", "Wl", "R"], ["h"], name="lstm", hidden_size=16),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in [("Wq", Wq), ("zp", zp), ("Wc", Wc), ("wzp", wzp),
                                                           ("Wl", Wl), ("R", R)]]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [4, 64]),
                                       helper.make_tensor_value_info("img", F, [1, 8, 6, 6]),
                                       helper.make_tensor_value_info("seq", F, [5, 1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 32]),
                           helper.make_tensor_value_info("c", TensorProto.INT32, [1, 16, 4, 4]),
                           helper.make_tensor_value_info("h", F, [5, 1, 1, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, Wq, zp, Wc, wzp


def test_recurrent_weights_behind_unsqueeze_say_they_are_recurrent(tmp_path):
    """PyTorch exports an LSTM's W and R as Unsqueeze of 2-D initializers: the candidate is listed, not
    pruned, and the reason is the LSTM, not the path to it."""
    rng = np.random.default_rng(0)
    W2, R2 = rng.standard_normal((64, 8)).astype(np.float32), rng.standard_normal((64, 16)).astype(np.float32)
    axes = np.array([0], np.int64)
    nodes = [helper.make_node("Unsqueeze", ["W2", "axes"], ["W"]), helper.make_node("Unsqueeze", ["R2", "axes"], ["R"]),
             helper.make_node("LSTM", ["seq", "W", "R"], ["h"], name="lstm", hidden_size=16)]
    inits = [numpy_helper.from_array(a, n) for n, a in [("W2", W2), ("R2", R2), ("axes", axes)]]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("seq", TensorProto.FLOAT, [5, 1, 8])],
                          [helper.make_tensor_value_info("h", TensorProto.FLOAT, [5, 1, 1, 16])], inits)
    src = tmp_path / "m.onnx"
    src.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    cands = json.loads(nmprune("inspect", src, "--align", "none", "--json", check=0).out)
    assert [c["consumers"][0]["op"] for c in cands] == ["LSTM", "LSTM"]
    assert all(not c["eligible"] and c["reason"] == "read by LSTM: recurrent weights are not pruned" for c in cands)
    out = tmp_path / "o.onnx"
    r = nmprune("prune", src, "-o", out, "--align", "none", "--json", check=0)
    assert json.loads(r.out)["summary"]["done"] == 0
    assert {t.name: numpy_helper.to_array(t).tobytes() for t in onnx.load(str(out)).graph.initializer}["W2"] == W2.tobytes()


def test_dynamic_quantization_weights_prune_to_their_zero_points(tmp_path):
    import reference
    import onnxruntime as ort
    m, Wq, zp, Wc, wzp = _dynamic_quant_model()
    src = tmp_path / "m.onnx"
    src.write_bytes(m.SerializeToString())
    cands = {c["name"]: c for c in json.loads(nmprune("inspect", src, "--align", "none", "--json", check=0).out)}
    assert cands["Wq"]["eligible"] and cands["Wc"]["eligible"]
    assert [c["consumers"][0]["op"] for c in cands.values()] == ["MatMulInteger", "ConvInteger", "LSTM", "LSTM"]
    for name in ("Wl", "R"):
        assert not cands[name]["eligible"] and cands[name]["reason"] == "read by LSTM: recurrent weights are not pruned"
    out = tmp_path / "o.onnx"
    nmprune("prune", src, "-o", out, "--align", "none", "-q", check=0)
    got = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    keep = reference.mask(Wq, "2:4", 0, 1, magnitude=np.abs(Wq.astype(np.int32) - zp[None, :]).astype(np.float64))
    assert np.array_equal(got["Wq"], np.where(keep, Wq, np.broadcast_to(zp, Wq.shape)))
    mag = np.abs(Wc.astype(np.int32) - int(wzp)).astype(np.float64)
    keep = reference.mask(Wc, "2:4", 1, 0, magnitude=mag)
    assert np.array_equal(got["Wc"], np.where(keep, Wc, wzp))
    assert np.array_equal(got["Wl"], numpy_helper.to_array([t for t in m.graph.initializer if t.name == "Wl"][0]))
    nmprune("check", out, "--align", "none", "-q", check=0)
    assert "op MatMulInteger not in --ops" in nmprune("inspect", src, "--ops", "Conv", check=0).out
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((4, 64)).astype(np.float32),
             "img": rng.standard_normal((1, 8, 6, 6)).astype(np.float32),
             "seq": rng.standard_normal((5, 1, 8)).astype(np.float32)}
    outs = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert [o.shape for o in outs] == [(4, 32), (1, 16, 4, 4), (5, 1, 1, 16)]


@pytest.mark.parametrize("scale_shape,axis", [((32,), 1), ((64, 1), 0), ((), None)])
def test_weight_only_int8_through_cast_and_mul(tmp_path, scale_shape, axis):
    """W_int8 -> Cast(float) -> Mul(scale) -> MatMul: the scale broadcast is the quantization axis."""
    import reference
    import onnxruntime as ort
    rng = np.random.default_rng(4)
    Wq = rng.integers(-120, 120, (64, 32)).astype(np.int8)
    scale = (0.01 + rng.random(scale_shape)).astype(np.float32)
    m = model([
        helper.make_node("Cast", ["Wq"], ["Wf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["scale", "Wf"], ["W"]),
        helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm"),
    ], [numpy_helper.from_array(Wq, "Wq"), numpy_helper.from_array(scale, "scale")],
        inputs=(("X", F, [3, 64]),), outputs=(("Y", F, [3, 32]),), opset=17)
    src = tmp_path / "m.onnx"
    src.write_bytes(m.SerializeToString())
    c = {c["name"]: c for c in json.loads(nmprune("inspect", src, "--align", "none", "--json", check=0).out)}["Wq"]
    assert c["eligible"] and c["dtype"] == "INT8" and c["axis"] == 0
    assert c["quantization"]["axis"] == (axis if axis is not None else 0)
    out = tmp_path / "o.onnx"
    nmprune("prune", src, "-o", out, "--align", "none", "-q", check=0)
    got = numpy_helper.to_array([t for t in onnx.load(str(out)).graph.initializer if t.name == "Wq"][0])
    mag = (np.abs(Wq.astype(np.float32)) * np.broadcast_to(scale, Wq.shape)).astype(np.float64)
    keep = reference.mask(Wq, "2:4", 0, 1, magnitude=mag)
    assert np.array_equal(got, np.where(keep, Wq, 0))
    nmprune("check", out, "--align", "none", "-q", check=0)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    np.testing.assert_allclose(y, x @ (got.astype(np.float32) * scale), rtol=1e-5, atol=1e-4)


def test_loop_carried_weight_is_pruned_where_it_is_defined_and_the_loop_computes_with_it(tmp_path):
    """The pruned Constant feeds the Loop: the model computes what the dense one computes with the pruned weight,
    --permute leaves it as it is (the Loop moves channels it cannot follow) and keeps the function."""
    import onnxruntime as ort
    from conftest import weights
    import reference
    m = _loop_model()
    src = save(m, tmp_path / "loop.onnx")
    W = weights(src)["W"]
    keep = reference.mask(W, "2:4", 0, 1)
    for extra in ([], ["--permute"]):
        out = tmp_path / f"out{len(extra)}.onnx"
        nmprune("prune", src, "-o", out, "--align", "none", "-q", *extra, check=0)
        np.testing.assert_array_equal(weights(out)["W"], np.where(keep, W, 0))
        x = np.random.default_rng(2).standard_normal((4, 32)).astype(np.float32)
        y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["Y"], {"X": x})[0]
        want = x.astype(np.float64)
        for _ in range(3):
            want = want @ np.where(keep, W, 0).astype(np.float64)
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
