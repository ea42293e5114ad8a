"""Robustness, round two: a failed run leaves no output and an unchanged input;
outputs that collide are refused before anything is written; patterns whose
sizes wrap are refused; the permutation search ends on every graph, blocks what
it cannot follow, and a permuted model computes what the original computes."""
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import NMPRUNE, ROOT, nmprune


def digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, str(ROOT / "models" / "make_models.py"), "all", str(d)], check=True)
    return d / "bert.onnx"


def leftovers(d):
    return sorted(p.name for p in d.iterdir() if ".nmprune-" in p.name)


# ---- 1: side outputs fail before the model lands -----------------------------------------------

@pytest.mark.parametrize("side", [["--report", "/dev/full"], ["--report", "nodir/r.json"],
                                  ["--report-html", "nodir/r.html"], ["--save-masks", "nodir/m.safetensors"]])
def test_failed_side_output_leaves_no_output(bert, tmp_path, side):
    inp = tmp_path / "in.onnx"
    inp.write_bytes(bert.read_bytes())
    before = digest(inp)
    side = [s if s.startswith("/") or s.startswith("-") else str(tmp_path / s) for s in side]
    r = nmprune("prune", inp, "-o", tmp_path / "out.onnx", *side, "-q")
    assert r.code == 4, r
    assert "cannot write" in r.err and r.err.count("\n") == 1, r.err
    assert not (tmp_path / "out.onnx").exists()
    r = nmprune("prune", inp, "--in-place", *side, "-q")
    assert r.code == 4, r
    assert digest(inp) == before
    assert leftovers(tmp_path) == []


def test_failed_stdout_leaves_no_output(bert, tmp_path):
    with open("/dev/full", "w") as full:
        p = subprocess.run([NMPRUNE, "prune", str(bert), "-o", str(tmp_path / "out.onnx"), "--json"],
                           stdout=full, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 4 and "standard output" in p.stderr, p.stderr
    assert not (tmp_path / "out.onnx").exists()
    assert leftovers(tmp_path) == []


def test_side_outputs_land_with_the_model(bert, tmp_path):
    nmprune("prune", bert, "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.json",
            "--report-html", tmp_path / "r.html", "--save-masks", tmp_path / "m.safetensors", "-q", check=0)
    assert json.loads((tmp_path / "r.json").read_text())["command"] == "prune"
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "m.safetensors").stat().st_size > 8
    assert leftovers(tmp_path) == []
    # A report to a device is written directly, not renamed over it.
    nmprune("prune", bert, "-o", tmp_path / "out2.onnx", "--report", "/dev/null", "-q", check=0)
    assert leftovers(tmp_path) == [] and (tmp_path / "out2.onnx").exists()


def test_long_output_name(bert, tmp_path):
    out = tmp_path / ("x" * 245 + ".onnx")
    nmprune("prune", bert, "-o", out, "--report", tmp_path / ("r" * 250), "-q", check=0)
    assert out.exists()


# ---- 5: outputs that collide ---------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["-o", "{in}"], "-o names the input model"),
    (["-o", "{link}"], "-o names the input model"),
    (["-o", "{out}", "--report", "{in}"], "--report names the input model"),
    (["-o", "{out}", "--save-masks", "{link}"], "--save-masks names the input model"),
    (["-o", "{out}", "--report-html", "{out}"], "--report-html names the output model"),
    (["-o", "{out}", "--external-data", "{out}"], "--external-data names the output model"),
    (["-o", "{out}", "--report", "{d}/r", "--save-masks", "{d}/./r"], "name the same file"),
    (["-o", "{out}", "--report", "{out}.data"], "names the output's data file"),
    (["--in-place", "--report", "{in}"], "--report names the input model"),
])
def test_collisions_are_refused(bert, tmp_path, args, needle):
    inp = tmp_path / "in.onnx"
    inp.write_bytes(bert.read_bytes())
    (tmp_path / "link.onnx").symlink_to(inp)
    before = digest(inp)
    sub = {"in": str(inp), "link": str(tmp_path / "link.onnx"), "out": str(tmp_path / "out.onnx"), "d": str(tmp_path)}
    r = nmprune("prune", inp, *[a.format(**sub) for a in args], "-q")
    assert r.code == 2 and needle in r.err, r
    assert digest(inp) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "link.onnx"]


def test_collision_with_a_data_file(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "models" / "make_models.py"), "all", str(tmp_path)], check=True)
    ext = tmp_path / "resnet_external.onnx"
    data = [tmp_path / "resnet_external.data"]
    assert ext.exists() and data[0].exists()
    r = nmprune("prune", ext, "-o", tmp_path / "o.onnx", "--report", data[0], "-q")
    assert r.code == 2 and "a data file of the input model" in r.err, r


# ---- 4: sizes that wrap --------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["1:256@b1x16777216", "1:16@b1x268435457", "2:4@b65536x65536"])
def test_wrapping_patterns_are_refused(bert, tmp_path, pattern):
    for cmd in (["inspect", bert], ["check", bert], ["prune", bert, "-o", tmp_path / "o.onnx"]):
        r = nmprune(*cmd, "--pattern", pattern)
        assert r.code == 2 and "spans more than 2^31" in r.err, r
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"match": ".*", "pattern": pattern}]))
    r = nmprune("check", bert, "--rules", rules)
    assert r.code == 2 and "rule 0" in r.err, r
    assert not (tmp_path / "o.onnx").exists()


# ---- 2, 3, 4: the permutation ends, blocks what it cannot follow, and keeps the function ----------

def init(rng, name, shape, scale=0.2):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def conv_bn(rng, nodes, inits, x, y, cin, cout, k, group=1):
    inits.append(init(rng, f"{y}.w", (cout, cin // group, k, k)))
    nodes.append(helper.make_node("Conv", [x, f"{y}.w"], [f"{y}.c"], name=y, group=group, pads=[k // 2] * 4))
    inits += [init(rng, f"{y}.s", (cout,)), init(rng, f"{y}.b", (cout,)), init(rng, f"{y}.m", (cout,)),
              numpy_helper.from_array((1 + np.abs(rng.standard_normal(cout))).astype(np.float32), f"{y}.v")]
    nodes.append(helper.make_node("BatchNormalization", [f"{y}.c", f"{y}.s", f"{y}.b", f"{y}.m", f"{y}.v"], [y]))
    return y


def resnext(path, width, groups, seed=0):
    """stem -> [1x1 -> BN -> ReLU -> 3x3 grouped -> BN -> ReLU -> 1x1 -> BN] + residual -> ReLU -> 1x1 head."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    stem = conv_bn(rng, nodes, inits, "x", "stem", 16, width, 3)
    nodes.append(helper.make_node("Relu", [stem], ["h0"]))
    a = conv_bn(rng, nodes, inits, "h0", "a", width, width, 1)
    nodes.append(helper.make_node("Relu", [a], ["ra"]))
    b = conv_bn(rng, nodes, inits, "ra", "b", width, width, 3, group=groups)
    nodes.append(helper.make_node("Relu", [b], ["rb"]))
    c = conv_bn(rng, nodes, inits, "rb", "c", width, width, 1)
    nodes += [helper.make_node("Add", [c, "h0"], ["s"]), helper.make_node("Relu", ["s"], ["h1"])]
    head = conv_bn(rng, nodes, inits, "h1", "head", width, 16, 1)
    g = helper.make_graph(nodes, "resnext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 6, 6])],
                          [helper.make_tensor_value_info(head, TensorProto.FLOAT, [1, 16, 6, 6])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def outputs(path, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_same_function(a, b, feeds):
    for x, y in zip(outputs(a, feeds), outputs(b, feeds)):
        err = np.abs(x - y).max() / (np.abs(x).max() + 1e-30)
        assert err <= 1e-5, err


@pytest.mark.parametrize("width,groups,pattern", [(128, 32, "2:4"), (64, 32, "2:4"), (128, 32, "4:8"),
                                                  (128, 4, "16:32"), (128, 8, "16:32")])
def test_resnext_bottleneck_ends(tmp_path, width, groups, pattern):
    model = resnext(tmp_path / "m.onnx", width, groups)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 16, 6, 6)).astype(np.float32)}
    t0 = time.monotonic()
    r = nmprune("prune", model, "--permute-only", "-o", tmp_path / "p.onnx", "--pattern", pattern, "--json")
    assert r.code == 0, r
    assert time.monotonic() - t0 < 60
    assert_same_function(model, tmp_path / "p.onnx", feeds)
    nmprune("prune", model, "--permute", "-o", tmp_path / "q.onnx", "--pattern", pattern, "-q", check=0)
    nmprune("check", tmp_path / "q.onnx", "--pattern", pattern, "-q", check=0)


def rank_model(path, rank, claim=None):
    """MatMul W1 -> Transpose swapping axes 0 and rank-1 -> Relu -> MatMul W2, activations of `rank` axes."""
    rng = np.random.default_rng(2)
    perm = list(range(rank))
    perm[0], perm[-1] = rank - 1, 0
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Transpose", ["h"], ["t"], name="tr", perm=perm),
             helper.make_node("Relu", ["t"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")]
    vi = [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1] * claim)] if claim else []
    g = helper.make_graph(nodes, "hr", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32] + [1] * (rank - 2) + [16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [init(rng, "W1", (16, 32)), init(rng, "W2", (32, 16))], value_info=vi)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("rank,claim", [(34, None), (33, None), (4, 33)])
def test_high_rank_blocks_or_moves_everything(tmp_path, rank, claim):
    model = rank_model(tmp_path / "m.onnx", rank, claim)
    r = nmprune("prune", model, "--permute-only", "-o", tmp_path / "p.onnx", "--align", "none", "--json")
    assert r.code == 0, r
    groups = json.loads(r.out)["permutation"]["groups"]
    w2 = [g for g in groups if "W2" in json.dumps(g)]
    assert w2 and all(g.get("blocked") for g in w2), groups
    feeds = {"x": np.random.default_rng(3).standard_normal([32] + [1] * (rank - 2) + [16]).astype(np.float32)}
    if claim is None:
        assert_same_function(model, tmp_path / "p.onnx", feeds)


def test_empty_grouped_conv_under_permute(tmp_path):
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "W"], ["h"], group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["h", "W2"], ["y"])]
    g = helper.make_graph(nodes, "e", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 0, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.zeros((64, 0, 3, 3), np.float32), "W"), init(rng, "W2", (64, 64, 1, 1))])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    for args in (["--permute", "-o", tmp_path / "o.onnx"], ["--permute", "--dry-run"], ["--permute-only", "-o", tmp_path / "p.onnx"]):
        r = nmprune("prune", tmp_path / "m.onnx", *args, "--align", "none", "-q")
        assert r.code == 0, r


def random_cnn(path, seed):
    """A random chain of the ops the permutation follows: plain, grouped and depthwise convs with
    BatchNormalization, activations, residual joins, per-channel Mul, a QDQ pair, a [C] bias reshaped or
    unsqueezed to [1, C, 1, 1], an Unsqueeze/Squeeze round trip of the activation, and the channel Split and
    Concat of CSP blocks (random part sizes, some not multiples of M; parts reordered, a residual branch,
    a part read twice) and of SPPF blocks (MaxPools of one tensor concatenated), and Slices: a run of the
    channels (bounds negative, past the end or exact; now and then every other channel) into a Conv, or a
    spatial axis reversed; and reductions: squeeze-and-excitation pooled by ReduceMean over H and W, a
    spatial gate from the mean and max over the channels, and a LayerNorm written out over the channels."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    width = int(rng.choice([32, 64]))
    x = conv_bn(rng, nodes, inits, "x", "stem", 8, width, 3)
    skip = x
    for i in range(int(rng.integers(3, 7))):
        kind = rng.choice(["conv", "grouped", "depthwise", "residual", "mul", "qdq", "act", "bias", "unit", "csp",
                           "sppf", "slice", "se", "gate", "norm"])
        y = f"n{i}"
        if kind == "conv":
            x = conv_bn(rng, nodes, inits, x, y, width, width, int(rng.choice([1, 3])))
        elif kind == "grouped":
            x = conv_bn(rng, nodes, inits, x, y, width, width, 3, group=int(rng.choice([2, 4, 8])))
        elif kind == "depthwise":
            x = conv_bn(rng, nodes, inits, x, y, width, width, 3, group=width)
        elif kind == "residual":
            nodes.append(helper.make_node("Add", [x, skip], [y]))
            x = skip = y
        elif kind == "mul":
            inits.append(init(rng, f"{y}.k", (width, 1, 1)))
            nodes.append(helper.make_node("Mul", [x, f"{y}.k"], [y]))
            x = y
        elif kind == "qdq":
            inits += [numpy_helper.from_array(np.float32(0.05), f"{y}.sc"), numpy_helper.from_array(np.int8(0), f"{y}.zp")]
            nodes += [helper.make_node("QuantizeLinear", [x, f"{y}.sc", f"{y}.zp"], [f"{y}.q"]),
                      helper.make_node("DequantizeLinear", [f"{y}.q", f"{y}.sc", f"{y}.zp"], [y])]
            x = y
        elif kind == "bias":
            inits += [init(rng, f"{y}.b", (width,)),
                      numpy_helper.from_array(np.array([1, -1, 1, 1] if rng.random() < 0.5 else [0, 2, 3], np.int64),
                                              f"{y}.shape")]
            op = "Reshape" if inits[-1].dims[0] == 4 else "Unsqueeze"
            nodes += [helper.make_node(op, [f"{y}.b", f"{y}.shape"], [f"{y}.b4"]),
                      helper.make_node(str(rng.choice(["Add", "Mul"])), [x, f"{y}.b4"], [y])]
            x = y
        elif kind == "unit":
            inits.append(numpy_helper.from_array(np.array([int(rng.choice([0, 2, -1]))], np.int64), f"{y}.ax"))
            nodes += [helper.make_node("Unsqueeze", [x, f"{y}.ax"], [f"{y}.u"]),
                      helper.make_node("Relu", [f"{y}.u"], [f"{y}.r"]),
                      helper.make_node("Squeeze", [f"{y}.r", f"{y}.ax"], [y])]
            x = y
        elif kind == "csp":
            cuts = sorted(rng.choice(np.arange(2, width - 1), size=int(rng.integers(1, 3)), replace=False))
            if rng.random() < 0.7:  # mostly runs that groups of 4 and 8 divide
                cuts = sorted({max(8, min(width - 8, int(c) // 8 * 8)) for c in cuts})
            sizes = np.diff([0, *cuts, width]).astype(np.int64)
            inits.append(numpy_helper.from_array(sizes, f"{y}.sizes"))
            parts = [f"{y}.p{k}" for k in range(len(sizes))]
            nodes.append(helper.make_node("Split", [x, f"{y}.sizes"], parts, axis=1))
            last = int(sizes[-1])
            branch = conv_bn(rng, nodes, inits, parts[-1], f"{y}.br", last, last, 3)
            nodes.append(helper.make_node("Add", [parts[-1], branch], [f"{y}.sum"]))
            cat = [parts[int(k)] for k in rng.permutation(len(parts))] + [f"{y}.sum"]
            if rng.random() < 0.5:
                cat.append(parts[0])
            total = int(sum(sizes)) + last + (int(sizes[0]) if len(cat) > len(parts) + 1 else 0)
            nodes.append(helper.make_node("Concat", cat, [f"{y}.cat"], axis=int(rng.choice([1, -3]))))
            x = conv_bn(rng, nodes, inits, f"{y}.cat", y, total, width, 1)
        elif kind == "sppf":
            pools = [x]
            for k in range(int(rng.integers(1, 4))):
                nodes.append(helper.make_node("MaxPool", [pools[-1]], [f"{y}.mp{k}"], kernel_shape=[3, 3],
                                              pads=[1, 1, 1, 1]))
                pools.append(f"{y}.mp{k}")
            nodes.append(helper.make_node("Concat", pools, [f"{y}.cat"], axis=1))
            x = conv_bn(rng, nodes, inits, f"{y}.cat", y, width * len(pools), width, 1)
        elif kind == "slice" and rng.random() < 0.3:
            inits += [numpy_helper.from_array(np.array(v, np.int64), f"{y}.{k}")
                      for k, v in (("st", [-1]), ("en", [-2**63]), ("ax", [int(rng.choice([2, 3, -1]))]), ("sp", [-1]))]
            nodes.append(helper.make_node("Slice", [x] + [f"{y}.{k}" for k in ("st", "en", "ax", "sp")], [y]))
            x = y
        elif kind == "slice":
            start = int(rng.choice([0, 8, 16, int(rng.integers(1, width // 2))]))
            end = int(rng.choice([width, width - 8, start + int(rng.integers(1, width - start + 1))]))
            step = 2 if rng.random() < 0.15 else 1
            count = len(range(start, end, step))
            bounds = [rng.choice([start, start - width]),
                      rng.choice([2**63 - 1, 10**9, end]) if end == width else rng.choice([end, end - width])]
            inits += [numpy_helper.from_array(np.array([v], np.int64), f"{y}.{k}")
                      for k, v in zip(("st", "en", "ax", "sp"), (*bounds, int(rng.choice([1, -3])), step))]
            nodes.append(helper.make_node("Slice", [x] + [f"{y}.{k}" for k in ("st", "en", "ax", "sp")], [f"{y}.cut"]))
            x = conv_bn(rng, nodes, inits, f"{y}.cut", y, count, width, 1)
        elif kind == "se":
            nodes.append(helper.make_node("ReduceMean", [x], [f"{y}.p"], axes=[2, 3]))
            squeezed = conv_bn(rng, nodes, inits, f"{y}.p", f"{y}.sq", width, 8, 1)
            nodes.append(helper.make_node("Relu", [squeezed], [f"{y}.r"]))
            excited = conv_bn(rng, nodes, inits, f"{y}.r", f"{y}.ex", 8, width, 1)
            nodes += [helper.make_node("Sigmoid", [excited], [f"{y}.g"]), helper.make_node("Mul", [x, f"{y}.g"], [y])]
            x = y
        elif kind == "gate":
            nodes += [helper.make_node("ReduceMean", [x], [f"{y}.avg"], axes=[1]),
                      helper.make_node("ReduceMax", [x], [f"{y}.top"], axes=[-3]),
                      helper.make_node("Concat", [f"{y}.avg", f"{y}.top"], [f"{y}.both"], axis=1)]
            gate = conv_bn(rng, nodes, inits, f"{y}.both", f"{y}.gc", 2, 1, 3)
            nodes += [helper.make_node("Sigmoid", [gate], [f"{y}.g"]), helper.make_node("Mul", [x, f"{y}.g"], [y])]
            x = y
        elif kind == "norm":
            inits += [init(rng, f"{y}.k", (width, 1, 1)), numpy_helper.from_array(np.float32(1e-3), f"{y}.eps")]
            nodes += [helper.make_node("ReduceMean", [x], [f"{y}.mu"], axes=[1]),
                      helper.make_node("Sub", [x, f"{y}.mu"], [f"{y}.d"]),
                      helper.make_node("Mul", [f"{y}.d", f"{y}.d"], [f"{y}.d2"]),
                      helper.make_node("ReduceMean", [f"{y}.d2"], [f"{y}.var"], axes=[1]),
                      helper.make_node("Add", [f"{y}.var", f"{y}.eps"], [f"{y}.ve"]),
                      helper.make_node("Sqrt", [f"{y}.ve"], [f"{y}.sd"]),
                      helper.make_node("Div", [f"{y}.d", f"{y}.sd"], [f"{y}.n"]),
                      helper.make_node("Mul", [f"{y}.n", f"{y}.k"], [y])]
            x = y
        else:
            nodes.append(helper.make_node(str(rng.choice(["Relu", "Sigmoid", "Tanh"])), [x], [y]))
            x = y
    head = conv_bn(rng, nodes, inits, x, "head", width, 16, 1)
    g = helper.make_graph(nodes, "rnd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                          [helper.make_tensor_value_info(head, TensorProto.FLOAT, [1, 16, 6, 6])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("seed", range(16))
def test_random_graphs_keep_their_function(tmp_path, seed):
    """Invariant: --permute-only never changes what a model computes, and ends within a bound."""
    model = random_cnn(tmp_path / "m.onnx", seed)
    feeds = {"x": np.random.default_rng(seed).standard_normal((1, 8, 6, 6)).astype(np.float32)}
    for pattern in ("2:4", "4:8"):
        t0 = time.monotonic()
        r = nmprune("prune", model, "--permute-only", "-o", tmp_path / "p.onnx", "--pattern", pattern, "-q")
        assert r.code == 0, r
        assert time.monotonic() - t0 < 30
        assert_same_function(model, tmp_path / "p.onnx", feeds)


# ---- 6: signals, limits, FIFOs ---------------------------------------------------------------------

FAULT_SO = __import__("os").environ.get("FAULT_SO", str(ROOT / "build" / "tests" / "fault_inject.so"))


def paused_run(tmp_path, src, extra=()):
    """Starts prune with its first fsync paused; returns the process once a temporary exists."""
    env = dict(__import__("os").environ, LD_PRELOAD=FAULT_SO, NMP_FAULT_PAUSE="1")
    p = subprocess.Popen([NMPRUNE, "prune", str(src), "-o", str(tmp_path / "out.onnx"), "-q", *map(str, extra)],
                         env=env, stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if leftovers(tmp_path):
            return p
        time.sleep(0.05)
    p.kill()
    pytest.fail("no temporary appeared")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_signals_remove_temporaries(bert, tmp_path, sig):
    import signal
    src = tmp_path / "in.onnx"
    src.write_bytes(bert.read_bytes())
    before = digest(src)
    p = paused_run(tmp_path, src, ["--report", tmp_path / "r.json"])
    time.sleep(0.2)
    p.send_signal(getattr(signal, sig))
    p.wait(timeout=20)
    assert p.returncode == -getattr(signal, sig)
    assert leftovers(tmp_path) == [] and not (tmp_path / "out.onnx").exists() and not (tmp_path / "r.json").exists()
    assert digest(src) == before


def test_sigbus_is_an_io_error(bert, tmp_path):
    import signal
    src = tmp_path / "in.onnx"
    src.write_bytes(bert.read_bytes())
    p = paused_run(tmp_path, src)
    p.send_signal(signal.SIGBUS)
    p.wait(timeout=20)
    err = p.stderr.read()
    assert p.returncode == 4 and "changed size while it was read" in err and err.count("\n") == 1, err
    assert leftovers(tmp_path) == []


def test_file_size_limit_is_an_io_error(bert, tmp_path):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, 32 << 10))
    p = subprocess.run([NMPRUNE, "prune", str(bert), "-o", str(tmp_path / "out.onnx")], preexec_fn=limit,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 4 and "File too large" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert leftovers(tmp_path) == [] and not (tmp_path / "out.onnx").exists()


def test_fifos_are_refused(bert, tmp_path):
    import os
    os.mkfifo(tmp_path / "model.onnx")
    r = nmprune("prune", tmp_path / "model.onnx", "-o", tmp_path / "o.onnx")
    assert r.code == 4 and "not a regular file" in r.err, r
    os.mkfifo(tmp_path / "rules.json")
    r = nmprune("check", bert, "--rules", tmp_path / "rules.json")
    assert r.code == 4 and "not a regular file" in r.err, r


# ---- 8: records that tell the truth about odd weights and names -------------------------------------

def test_inf_weight_keeps_its_records(tmp_path):
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    w[3, 5], w[7, 1] = np.inf, -np.inf
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    r = nmprune("prune", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json")
    assert r.code == 0 and "nan" not in r.err.lower(), r
    rep = json.loads((tmp_path / "r.json").read_text())["weights"]
    assert rep[0]["name"] == "W" and rep[0]["kept_l1_ratio"] is None and rep[0]["sparsity"] == 0.5
    meta = {p.key: p.value for p in onnx.load(tmp_path / "o.onnx").metadata_props}
    assert json.loads(meta["nmprune.weights"])["W"]["kept"] is None
    pruned = numpy_helper.to_array(onnx.load(tmp_path / "o.onnx").graph.initializer[0])
    assert np.isinf(pruned[3, 5]) and np.isinf(pruned[7, 1])   # +-Inf is the largest magnitude: kept


def hostile_names(path):
    """A weight named W<0xff><ESC>[31mred and a node named n<0xc3><ESC>[2Jxyzw (bytes patched in place)."""
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "WWWWWWWWWW"], ["y"], name="NNNNNNNNNN")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                          [numpy_helper.from_array(w, "WWWWWWWWWW")])
    b = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    path.write_bytes(b.replace(b"WWWWWWWWWW", b"W\xff\x1b[31mred").replace(b"NNNNNNNNNN", b"n\xc3\x1b[2Jxyzw"))
    return path


def test_hostile_names_are_shown_safely(tmp_path):
    m = hostile_names(tmp_path / "m.onnx")
    p = subprocess.run([NMPRUNE, "inspect", str(m), "--json"], capture_output=True)
    listed = json.loads(p.stdout)
    assert len(listed) == 1 and listed[0]["name"] == "W\ufffd\\x1b[31mred" and listed[0]["eligible"]
    for args in (["inspect", m], ["prune", m, "-o", tmp_path / "o.onnx", "--save-masks", tmp_path / "k.safetensors"]):
        p = subprocess.run([NMPRUNE, *map(str, args)], capture_output=True)
        assert p.returncode == 0 and b"\x1b" not in p.stdout + p.stderr, p
    head = (tmp_path / "k.safetensors").read_bytes()
    n = int.from_bytes(head[:8], "little")
    assert "W\ufffd\\x1b[31mred" in json.loads(head[8:8 + n])


# ---- 9: smaller ones ---------------------------------------------------------------------------------

def test_in_place_through_a_link_prunes_the_target(bert, tmp_path):
    (tmp_path / "t.onnx").write_bytes(bert.read_bytes())
    (tmp_path / "l.onnx").symlink_to("t.onnx")
    nmprune("prune", tmp_path / "l.onnx", "--in-place", "-q", check=0)
    assert (tmp_path / "l.onnx").is_symlink()
    nmprune("check", tmp_path / "t.onnx", "-q", check=0)


def test_output_onto_a_device_is_refused(bert, tmp_path):
    r = nmprune("prune", bert, "-o", "/dev/null")
    assert r.code == 4 and "not a regular file" in r.err, r
    import stat
    assert stat.S_ISCHR(__import__("os").stat("/dev/null").st_mode)


def test_dense_first_is_a_floor(bert, tmp_path):
    def up(frac):
        r = nmprune("inspect", bert, "--dense-first", frac, "--include", "ffn.up", "--json", check=0)
        return [(w["eligible"], w["reason"]) for w in json.loads(r.out) if w["name"] == "ffn.up.weight"]
    assert up("0.9999999999") == [(True, None)]   # floor(0.9999999999 x 1) = 0 kept dense
    assert up("1") == [(False, "dense-first")]


def test_exact_tiles_are_bounded_and_greedy_needs_tiles(bert, tmp_path):
    r = nmprune("prune", bert, "--dry-run", "--pattern", "64:128@t", "--align", "none")
    assert r.code == 2 and "takes M up to 32" in r.err, r
    nmprune("prune", bert, "--dry-run", "--pattern", "32:64@t", "--method", "greedy", "--align", "none", "-q", check=0)
    r = nmprune("prune", bert, "--dry-run", "--pattern", "2:4", "--method", "greedy")
    assert r.code == 2 and "not transposable" in r.err, r


def many_initializers(path, n, read):
    """n empty float initializers; a Concat reads them all when `read`, and a MatMul reads W."""
    rng = np.random.default_rng(5)
    names = [f"e{i}" for i in range(n)]
    nodes = [helper.make_node("MatMul", ["X", "W"], ["Y"])]
    if read:
        nodes.append(helper.make_node("Concat", names, ["Z"], axis=0))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 64])],
                          [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")])
    for name in names:
        t = g.initializer.add()
        t.name, t.data_type = name, TensorProto.FLOAT
        t.dims.append(0)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def resource_limit(mib):
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (mib << 20, mib << 20))


def limit_address_space():
    resource_limit(128)


@pytest.mark.skipif("ASAN_OPTIONS" in __import__("os").environ,
                    reason="AddressSanitizer reserves more address space than the limit this test sets")
def test_out_of_memory_is_an_io_error(tmp_path):
    many_initializers(tmp_path / "many.onnx", 1000000, read=True)  # about 400 MB of structure
    p = subprocess.run([NMPRUNE, "inspect", str(tmp_path / "many.onnx")], capture_output=True, text=True,
                       preexec_fn=limit_address_space)
    assert p.returncode == 4 and "out of memory" in p.stderr and "not a valid ONNX model" not in p.stderr, p.stderr


def prune_many_under_limit(tmp_path, n, read, mib, extra):
    """Prunes many_initializers(n, read) 2:4 under an address-space limit of `mib` MiB: W is pruned along K,
    the MatMul's reduction axis, and every other record comes back as it was, where it was."""
    src = tmp_path / "many.onnx"
    many_initializers(src, n, read=read)
    out = tmp_path / "out.onnx"
    p = subprocess.run([os.path.abspath(NMPRUNE), "prune", str(src), "-o", str(out), "--pattern", "2:4", "-q",
                        *extra], capture_output=True, text=True, preexec_fn=lambda: resource_limit(mib), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    a, b = onnx.load(str(src)), onnx.load(str(out))
    assert len(b.graph.initializer) == len(a.graph.initializer) == n + 1
    assert [t.name for t in b.graph.initializer] == [t.name for t in a.graph.initializer]
    assert b.graph.initializer[0].name == "W"
    assert [t.SerializeToString() for t in b.graph.initializer[1:]] == \
        [t.SerializeToString() for t in a.graph.initializer[1:]]
    w = numpy_helper.to_array(b.graph.initializer[0], base_dir=str(tmp_path))
    assert ((w.T.reshape(64, 16, 4) != 0).sum(axis=2) == 2).all()
    return src


@pytest.mark.skipif("ASAN_OPTIONS" in __import__("os").environ,
                    reason="AddressSanitizer reserves more address space than the limit this test sets")
@pytest.mark.parametrize("extra", [[], ["--external-data", "out.data"]], ids=["copy", "general"])
def test_unread_initializers_cost_no_memory(tmp_path, extra):
    """A million initializers that nothing reads pass through as bytes, in the memory a small model takes."""
    src = prune_many_under_limit(tmp_path, 1000000, False, 128, extra)
    r = nmprune("prune", src, "--dry-run", "--pattern", "2:4", "-v")
    assert "1000000 initializers that nothing reads are kept as they are" in r.err, r.err


@pytest.mark.skipif("ASAN_OPTIONS" in __import__("os").environ,
                    reason="AddressSanitizer reserves more address space than the limit this test sets")
@pytest.mark.parametrize("extra", [[], ["--external-data", "out.data"]], ids=["copy", "general"])
def test_read_initializers_cost_little_memory(tmp_path, extra):
    """Half a million small initializers that a node reads are described from their bytes (under 192 MiB of
    address space, where parsing each into a message needs more), and come back as they were, where they were."""
    src = prune_many_under_limit(tmp_path, 500000, True, 192, extra)
    r = nmprune("prune", src, "--dry-run", "--pattern", "2:4", "-v")
    assert "500000 small initializers are read from their bytes" in r.err, r.err


@pytest.mark.parametrize("regex", ["((a{255}){255}){255}", "(" * 22 + "a" + ")+" * 22, "((((x*)*)*)*)" * 3 + "(y{9}){99}{0}"])
def test_regex_guard_bounds_the_compiled_size(bert, regex):
    r = nmprune("inspect", bert, "--include", regex)
    assert r.code == 2 and ("too large" in r.err or "applied to another" in r.err), r


@pytest.mark.parametrize("regex", ["(a{255}){255}", "attn\\.(q|k|v)", "(a|b|c)*d+e?(f{2,5}){3}", "w[+*]{1,2}|layer[0-9]+"])
def test_regex_guard_accepts_ordinary_patterns(bert, regex):
    assert nmprune("inspect", bert, "--include", regex).code == 0


def test_identity_chain_read_at_every_link_is_linear(tmp_path):
    """30 000 Identity links, each read by a MatMul: every trace crosses the chain once, not once per reader."""
    n = 30000
    nodes, outs, prev = [], [], "W"
    for i in range(n):
        nodes += [helper.make_node("Identity", [prev], [f"i{i}"]), helper.make_node("MatMul", ["x", f"i{i}"], [f"y{i}"])]
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 64]))
        prev = f"i{i}"
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])], outs,
                          [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    t0 = time.monotonic()
    r = nmprune("inspect", tmp_path / "m.onnx", "--json")
    assert r.code == 0, r
    listed = json.loads(r.out)
    assert len(listed) == 1 and len(listed[0]["consumers"]) == n and listed[0]["eligible"]
    assert time.monotonic() - t0 < 10


# ---- issue 14, item 4: reports that tell the truth ------------------------------------------------

def test_reports_tell_the_truth(tmp_path):
    rng = np.random.default_rng(9)
    # A group=1 Conv on one input channel is not depthwise; a pruned weight that is also a graph input is flagged.
    inits = [numpy_helper.from_array(rng.standard_normal((16, 1, 3, 3)).astype(np.float32), "C"),
             numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "G")]
    g = helper.make_graph([helper.make_node("Conv", ["x", "C"], ["c"], name="conv"),
                           helper.make_node("MatMul", ["v", "G"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8]),
                           helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 64]),
                           helper.make_tensor_value_info("G", TensorProto.FLOAT, [64, 64])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    r = nmprune("prune", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json")
    assert r.code == 0, r
    rep = {w["name"]: w for w in json.loads((tmp_path / "r.json").read_text())["weights"]}
    assert rep["C"]["reason"] != "depthwise convolution" and "not a multiple" in rep["C"]["reason"]
    assert rep["G"]["graph_input"] is True and rep["C"]["graph_input"] is False
    assert "also a graph input" in r.err
    meta = {p.key: p.value for p in onnx.load(tmp_path / "o.onnx").metadata_props}
    assert json.loads(meta["nmprune.weights"])["G"]["graph_input"] is True
    # No candidate weight at all: no percentage of nothing.
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")
    r = nmprune("prune", tmp_path / "relu.onnx", "--dry-run")
    assert "0 of 0 parameters in candidate weights zeroed;" in r.err and "100.00%" not in r.err, r


def test_unread_initializer_checked_as_protobuf(tmp_path):
    """An initializer nothing reads is not parsed, but its wire is checked as protobuf-c's parser would
    check it (protobuf-c refuses a known field of the wrong wire type; upb would keep it as unknown)."""
    g = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 8])],
                          [numpy_helper.from_array(np.ones((8, 8), np.float32), "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    graph = model.graph.SerializeToString()
    model.ClearField("graph")
    head = model.SerializeToString()

    def with_record(record, name):
        body = graph + bytes([0x2a, len(record)]) + record
        n, size = bytearray(), len(body)
        while size >= 0x80:
            n.append(size & 0x7f | 0x80)
            size >>= 7
        n.append(size)
        path = tmp_path / name
        path.write_bytes(head + bytes([0x3a]) + bytes(n) + body)
        return path

    bad = with_record(bytes([0x0d, 1, 0, 0, 0]), "bad.onnx")  # dims (varint) as a fixed32
    r = nmprune("prune", bad, "-o", tmp_path / "out.onnx")
    assert r.code == 3 and "wrong wire type for its field at byte offset" in r.err, r
    assert not (tmp_path / "out.onnx").exists()

    # dims say 2 elements, no data: not a valid tensor, but nothing reads it, so it passes as it was.
    odd = with_record(bytes([0x08, 0x02, 0x10, 0x01, 0x42, 0x01, ord("z")]), "odd.onnx")
    r = nmprune("prune", odd, "-o", tmp_path / "out.onnx", "--external-data", tmp_path / "out.data")
    assert r.code == 0, r
    z = next(t for t in onnx.load(str(tmp_path / "out.onnx"), load_external_data=False).graph.initializer
             if t.name == "z")
    assert list(z.dims) == [2] and z.data_type == TensorProto.FLOAT and not z.raw_data
