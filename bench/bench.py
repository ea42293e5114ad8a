#!/usr/bin/env python3
"""nmprune benchmarks: every figure is a ratio against a baseline measured in
the same run (cp of the same file, or the reference tool).

    make bench                      # everything
    python3 bench/bench.py io       # one section: io, engine, prune, reference, permute, structure
Set BENCH_DIR to put the generated 1.2 GB model elsewhere (default bench/out).
"""
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NMPRUNE = os.environ.get("NMPRUNE", str(ROOT / "build" / "nmprune"))
OUT = Path(os.environ.get("BENCH_DIR", ROOT / "bench" / "out"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))


def run_measured(argv):
    """Wall seconds and peak RSS (bytes) of one command.

    The RSS comes from GNU time, whose child is forked from a small process:
    a child forked from this Python process would inherit its high-water mark.
    """
    rss_file = OUT / ".rss"
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *map(str, argv)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, argv))}\n{proc.stderr.decode()}")
    return wall, int(rss_file.read_text().split()[-1]) * 1024


def measure(argv, cleanup=()):
    walls, rss = [], 0
    for _ in range(REPEAT):
        for p in cleanup:
            Path(p).unlink(missing_ok=True)
        os.sync()  # no writeback left over from the previous run
        w, r = run_measured(argv)
        walls.append(w)
        rss = max(rss, r)
    return statistics.median(walls), rss


def transformer_model(path, layers=24, d=1024, ff=4096, dtype="float32"):
    """Generated in a child process, so this one stays small for RSS figures."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, __file__, "--make-transformer", str(path), str(layers),
                        str(d), str(ff), dtype], check=True)
    return path


def make_transformer(path, layers, d, ff, dtype):
    """A transformer-shaped chain of MatMuls: per layer 4 x [d,d], [d,ff], [ff,d]."""
    import onnx
    from onnx import TensorProto, helper

    dtype = np.dtype(dtype).type
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    onnx_type = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}[dtype]
    inits, nodes, h = [], [], "x"
    for layer in range(layers):
        for name, shape in (("q", (d, d)), ("k", (d, d)), ("v", (d, d)), ("o", (d, d)),
                            ("fc1", (d, ff)), ("fc2", (ff, d))):
            w = f"layer{layer}.{name}.weight"
            data = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
            inits.append(helper.make_tensor(w, onnx_type, shape, data.tobytes(), raw=True))
            out = f"layer{layer}.{name}"
            nodes.append(helper.make_node("MatMul", [h, w], [out], name=out))
            h = out
    graph = helper.make_graph(
        nodes, "transformer",
        [helper.make_tensor_value_info("x", onnx_type, [1, d])],
        [helper.make_tensor_value_info(h, onnx_type, [1, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.rename(path)
    return path


def row(name, wall, rss, base_wall, size, sync_wall=None):
    extra = f"  {wall / sync_wall:5.2f}x cp+fsync" if sync_wall else ""
    print(f"  {name:<34} {wall:7.3f} s  {wall / base_wall:5.2f}x cp{extra}   "
          f"peak RSS {rss / 2**20:7.1f} MiB ({rss / size:4.2f}x model)")


def section_io():
    model = transformer_model(OUT / "transformer-1.2g.onnx")
    size = model.stat().st_size
    out = OUT / "out.onnx"
    subprocess.run(["cat", str(model)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    print(f"\n== model I/O: {model.name}, {size / 1e9:.2f} GB, median of {REPEAT} ==")
    cp_wall, cp_rss = measure(["cp", str(model), str(out)], cleanup=[out])
    row("cp", cp_wall, cp_rss, cp_wall, size)
    sync_wall, sync_rss = measure(["dd", f"if={model}", f"of={out}", "bs=4M", "conv=fsync",
                                   "status=none"], cleanup=[out])
    row("cp + fsync (dd conv=fsync)", sync_wall, sync_rss, cp_wall, size)
    w, r = measure([NMPRUNE, "prune", str(model), "-o", str(out), "--exclude", ".*", "-q"],
                   cleanup=[out])
    row("nmprune prune, nothing to prune", w, r, cp_wall, size, sync_wall)
    print(f"    target <= 1.5x cp: {'met' if w <= 1.5 * cp_wall else 'NOT met'}; "
          f"<= 1.5x cp+fsync: {'met' if w <= 1.5 * sync_wall else 'NOT met'} "
          "(nmprune fsyncs its output before the rename, cp does not: the durable copy is the design's baseline)")
    gw, gr = measure([NMPRUNE, "prune", str(model), "-o", str(out), "--exclude", ".*",
                      "--general-path", "-q"], cleanup=[out])
    row("nmprune, general re-serialization", gw, gr, cp_wall, size, sync_wall)
    print(f"    target <= 3x cp: {'met' if gw <= 3 * cp_wall else 'NOT met'}; "
          f"peak RSS <= 1.2x model: {'met' if max(r, gr) <= 1.2 * size else 'NOT met'}")
    out.unlink(missing_ok=True)


def section_engine():
    exe = os.environ.get("ENGINE_BENCH", str(ROOT / "build" / "bench" / "engine_bench"))
    print(f"\n== CPU mask engine: GB/s of weight bytes, 64 MB tensor as a MatMul's B (groups strided), "
          f"a Gemm's transposed B (groups contiguous) and a 3x3 Conv's weight, best of 3 ==")
    sys.stdout.flush()
    out = subprocess.run([exe, "64", "2:4", "16:32", "2:4@v4", "2:4@v32", "2:4@b4x4", "2:4@t", "50%", "50%@v4"], check=True,
                         capture_output=True, text=True).stdout
    print(out, end="")
    rates = {}
    for line in out.splitlines()[1:]:
        pattern, dtype, layout, threads, gbs = line.split()[:5]
        rates[(pattern, dtype, layout, int(threads))] = float(gbs)
    one = {(p, l): g for (p, d, l, t), g in rates.items() if d == "fp32" and t == 1}
    many = {(p, l, t): g for (p, d, l, t), g in rates.items() if d == "fp32" and t > 1}
    slow = [f"{p} {l}" for (p, l), g in one.items() if g < 1.0]
    print(f"    target every family >= 1 GB/s per core (fp32, every layout): "
          f"{'met' if not slow else 'NOT met: ' + ', '.join(slow)}")
    for (p, l, t), g in sorted(many.items()):
        print(f"    {p:9s} {l:11s} on {t} threads: {g / (one[(p, l)] * t):.2f} of linear scaling (target >= 0.6)")


NUMPY_PRUNE = r"""
import sys, numpy as np, onnx
from onnx import numpy_helper
m = onnx.load(sys.argv[1])
users = {n.input[1]: n for n in m.graph.node if n.op_type == "MatMul"}
for t in m.graph.initializer:
    if t.name not in users:
        continue
    w = numpy_helper.to_array(t)                       # [K, N], groups along K
    g = np.moveaxis(w, 0, -1).reshape(w.shape[1], -1, 4)
    idx = np.argsort(-np.abs(g), axis=-1, kind="stable")[..., :2]
    keep = np.zeros(g.shape, bool)
    np.put_along_axis(keep, idx, True, axis=-1)
    pruned = np.moveaxis((g * keep).reshape(w.shape[1], -1), -1, 0)
    t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(pruned), t.name))
onnx.save(m, sys.argv[2])
"""


def section_prune():
    model = transformer_model(OUT / "transformer-1.2g.onnx")
    size = model.stat().st_size
    out = OUT / "out.onnx"
    subprocess.run(["cat", str(model)], stdout=subprocess.DEVNULL, check=True)
    print(f"\n== end-to-end prune --pattern 2:4: {model.name}, {size / 1e9:.2f} GB, median of {REPEAT} ==")
    cp_wall, cp_rss = measure(["cp", str(model), str(out)], cleanup=[out])
    row("cp", cp_wall, cp_rss, cp_wall, size)
    sync_wall, _ = measure(["dd", f"if={model}", f"of={out}", "bs=4M", "conv=fsync", "status=none"],
                           cleanup=[out])
    row("cp + fsync (dd conv=fsync)", sync_wall, 0, cp_wall, size)
    dry, dry_rss = measure([NMPRUNE, "prune", str(model), "--dry-run", "-q"])
    row("nmprune --dry-run (masks, no output)", dry, dry_rss, cp_wall, size, sync_wall)
    w, r = measure([NMPRUNE, "prune", str(model), "-o", str(out), "-q"], cleanup=[out])
    row("nmprune prune 2:4", w, r, cp_wall, size, sync_wall)
    print(f"    target <= 2.5x cp: {'met' if w <= 2.5 * cp_wall else 'NOT met'}; "
          f"<= 2.5x cp+fsync: {'met' if w <= 2.5 * sync_wall else 'NOT met'}")
    script = OUT / "numpy_prune.py"
    script.write_text(NUMPY_PRUNE)
    np_out = OUT / "numpy-out.onnx"
    os.sync()
    nw, nr = run_measured([sys.executable, str(script), str(model), str(np_out)])
    row("numpy reference (onnx load, mask, save)", nw, nr, cp_wall, size)
    print(f"    nmprune is {nw / w:.1f}x faster than the numpy reference (target >= 10x)")
    np_out.unlink(missing_ok=True)
    out.unlink(missing_ok=True)


def make_large(onnx_path, layers, d, ff):
    """A transformer-shaped fp16 model whose weights live in one external data file.

    The bytes are a 128 MB random fp16 block, rotated per tensor: generating
    6G random values would dominate the run, and pruning cost does not depend
    on them being distinct."""
    import onnx
    from onnx import TensorProto, helper

    data_path = onnx_path.with_suffix(".data")
    block = np.random.default_rng(0).standard_normal(64 << 20, dtype=np.float32).astype(np.float16)
    inits, nodes, h, offset = [], [], "x", 0
    with open(data_path, "wb") as f:
        for layer in range(layers):
            for name, shape in (("q", (d, d)), ("k", (d, d)), ("v", (d, d)), ("o", (d, d)),
                                ("fc1", (d, ff)), ("fc2", (ff, d))):
                n = shape[0] * shape[1]
                rot = (layer * 7919 + len(inits) * 104729) % block.size
                data = np.roll(block, rot)
                written = 0
                while written < n:
                    chunk = data[: min(n - written, data.size)]
                    f.write(chunk.tobytes())
                    written += chunk.size
                w = f"layer{layer}.{name}.weight"
                t = TensorProto(name=w, data_type=TensorProto.FLOAT16, dims=shape)
                t.data_location = TensorProto.EXTERNAL
                for k, v in (("location", data_path.name), ("offset", str(offset)), ("length", str(2 * n))):
                    e = t.external_data.add()
                    e.key, e.value = k, v
                offset += 2 * n
                inits.append(t)
                out = f"layer{layer}.{name}"
                nodes.append(helper.make_node("MatMul", [h, w], [out], name=out))
                h = out
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, d])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT16, [1, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx_path.write_bytes(model.SerializeToString())
    return data_path


def section_large():
    """make bench-large: a 12 GB fp16 model with external data; deleted afterwards."""
    d = OUT / "large"
    d.mkdir(parents=True, exist_ok=True)
    model = d / "large.onnx"
    print("\n== large model: 30 layers, d=4096, ff=16384, fp16, external data (generating) ==")
    sys.stdout.flush()
    data = make_large(model, 30, 4096, 16384)
    size = data.stat().st_size + model.stat().st_size
    out = d / "out.onnx"
    try:
        cp_wall, _ = measure_once(["cp", str(model), str(data), str(OUT / "large-copy")], mkdir=OUT / "large-copy")
        row("cp of the model and its data", cp_wall, 0, cp_wall, size)
        w, r = measure_once([NMPRUNE, "prune", str(model), "-o", str(out), "-q"])
        row("nmprune prune 2:4", w, r, cp_wall, size)
        print(f"    peak RSS {r / 2**30:.2f} GiB (target <= 1.5 GB); largest tensor "
              f"{4096 * 16384 * 2 / 2**20:.0f} MiB; output checked: "
              f"{'ok' if subprocess.run([NMPRUNE, 'check', str(out), '-q']).returncode == 0 else 'FAILED'}")
    finally:
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(OUT / "large-copy", ignore_errors=True)


def measure_once(argv, mkdir=None):
    if mkdir:
        shutil.rmtree(mkdir, ignore_errors=True)
        Path(mkdir).mkdir(parents=True)
    os.sync()
    return run_measured(argv)


def _weights(path):
    """Initializers and Constant-node values, by name."""
    import onnx
    from onnx import numpy_helper
    g = onnx.load(str(path)).graph
    out = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _tie_explains(w, a, b, axis):
    """Every group where the masks differ holds equal magnitudes at the cut."""
    ga = np.moveaxis(a != 0, axis, -1).reshape(-1, 4)
    gb = np.moveaxis(b != 0, axis, -1).reshape(-1, 4)
    gw = np.abs(np.moveaxis(w, axis, -1).reshape(-1, 4).astype(np.float64))
    for i in np.nonzero((ga != gb).any(axis=1))[0]:
        only = gw[i][ga[i] & ~gb[i]].tolist() + gw[i][gb[i] & ~ga[i]].tolist()
        if len(set(only)) != 1:
            return False
    return True


def _axes_2of4(w):
    """Axes along which every run of 4 holds at most 2 nonzeros."""
    out = []
    for a in range(w.ndim):
        if w.shape[a] % 4:
            continue
        g = np.moveaxis(w != 0, a, -1).reshape(-1, 4)
        if (g.sum(axis=1) <= 2).all():
            out.append(a)
    return out


def compare_with_polygraphy(model, workdir):
    """Masks weight by weight; every difference with its cause.  Returns both tools' times."""
    import json
    ours, theirs, report = workdir / "nmprune.onnx", workdir / "polygraphy.onnx", workdir / "report.json"
    t0 = time.perf_counter()
    subprocess.run([NMPRUNE, "prune", str(model), "-o", str(ours), "-q", "--report", str(report)], check=True)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(["polygraphy", "surgeon", "prune", str(model), "-o", str(theirs)], check=True,
                   capture_output=True)
    t_theirs = time.perf_counter() - t0
    import onnx
    constants = {n.output[0] for n in onnx.load(str(model)).graph.node if n.op_type == "Constant"}
    before, a, b = _weights(model), _weights(ours), _weights(theirs)
    rep = {w["name"]: w for w in json.loads(report.read_text())["weights"]}
    agree, notes = 0, []
    for name, w in before.items():
        ours_pruned, theirs_pruned = not np.array_equal(w, a[name]), not np.array_equal(w, b[name])
        if not ours_pruned and not theirs_pruned:
            continue
        if ours_pruned != theirs_pruned:
            if name in constants and ours_pruned:
                why = "a Constant node's value, which Polygraphy does not visit"
            elif name in rep:
                why = f"nmprune: {rep[name].get('reason', '')}"
            else:
                why = "not a candidate of nmprune"
            notes.append(f"{name}: only {'nmprune' if ours_pruned else 'Polygraphy'} pruned it ({why})")
            continue
        axis = rep[name]["axis"]
        pg_axes = _axes_2of4(b[name])
        same = np.array_equal(a[name] != 0, b[name] != 0)
        if same:
            agree += 1
        elif axis not in pg_axes:
            notes.append(f"{name}: Polygraphy grouped along axis {pg_axes}, the consumer "
                         f"{rep[name]['op']} reduces along axis {axis}: different masks, Polygraphy's "
                         f"are not usable by a sparse kernel")
        else:
            diff = int((a[name] != b[name]).sum())
            why = ("equal magnitudes at the cut: nmprune keeps the lower index, Polygraphy the higher"
                   if _tie_explains(before[name], a[name], b[name], axis) else "UNEXPLAINED")
            notes.append(f"{name}: same axis {axis}, {diff} elements differ: {why}")
    return agree, notes, t_ours, t_theirs


def transposed_conv(path):
    """An HWIO conv weight reaching its Conv through Transpose(perm=[3,2,0,1])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = np.random.default_rng(3).standard_normal((3, 3, 64, 32)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Transpose", ["w"], ["wt"], perm=[3, 2, 0, 1]),
         helper.make_node("Conv", ["x", "wt"], ["y"], name="conv")], "transposed_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 6, 6])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def section_reference():
    print("\n== side by side with polygraphy surgeon prune (2:4) ==")
    work = OUT / "reference"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run([sys.executable, str(ROOT / "models" / "make_models.py"), "all", str(work / "models")],
                   check=True)
    transposed_conv(work / "models" / "transposed_conv.onnx")
    for name in ("resnet", "bert", "bert_fp16", "constant_weight", "transposed_conv"):
        agree, notes, t_ours, t_theirs = compare_with_polygraphy(work / "models" / f"{name}.onnx", work)
        print(f"  {name:<16} masks agree on {agree} weights; nmprune {t_ours:.3f} s, "
              f"polygraphy {t_theirs:.3f} s ({t_theirs / t_ours:.0f}x)")
        for n in notes:
            print(f"      difference: {n}")
    small = transformer_model(OUT / "transformer-2layer.onnx", layers=2)
    agree, notes, t_ours, t_theirs = compare_with_polygraphy(small, work)
    params_small, params_big = 2 * 12 * 1024 * 1024, 24 * 12 * 1024 * 1024
    print(f"  transformer, 2 layers ({params_small / 1e6:.0f}M weights): masks agree on {agree} weights; "
          f"nmprune {t_ours:.2f} s, polygraphy {t_theirs:.2f} s")
    for n in notes:
        print(f"      difference: {n}")
    big = transformer_model(OUT / "transformer-1.2g.onnx")
    t_big, _ = measure([NMPRUNE, "prune", str(big), "-o", str(work / "big.onnx"), "-q"], cleanup=[work / "big.onnx"])
    scaled = t_theirs * params_big / params_small
    print(f"  1.2 GB model ({params_big / 1e6:.0f}M weights): nmprune {t_big:.2f} s; polygraphy about "
          f"{scaled:.0f} s, scaled linearly from the 2-layer run (not run: its Python loop is about "
          f"{t_theirs / params_small * 1e6:.2f} us per weight) -> {scaled / t_big:.0f}x")
    shutil.rmtree(work, ignore_errors=True)


def section_permute():
    import json

    exe = os.environ.get("PERM_BENCH", str(ROOT / "build" / "bench" / "perm_bench"))
    print("\n== channel permutation search: seeded random matrices, one core ==")
    sys.stdout.flush()
    subprocess.run([exe], check=True)

    print("\n== prune --permute per model: kept magnitude of the permuted weights, without -> with ==")
    models = OUT / "models"
    if not (models / "bert.onnx").exists():
        subprocess.run([sys.executable, str(ROOT / "models" / "make_models.py"), "all", str(models)], check=True)
    chain = transformer_model(OUT / "transformer-2x1024.onnx", layers=2)
    cases = [(n, models / f"{n}.onnx", p) for n in ("resnet", "bert", "bert_int8") for p in ("2:4", "2:8")]
    cases += [("transformer 2x1024", chain, "2:4")]
    # real exported models from their PyPI wheels (make deps), when present
    real = ROOT / ".cache" / "real-models"
    cases += [(n, real / f"{n}.onnx", "2:4") for n in ("ppocrv4_det", "ppocrv4_rec", "ppocr_cls", "yolov8n_320", "magika_standard_v3_3",
                                                          "silero_vad_16k_op15", "silero_vad", "ddddocr_det",
                                                          "ddddocr_ocr_int8", "ppocrv6_det", "ppocrv6_rec",
                                                          "smart_turn_v3_2", "slanet")
              if (real / f"{n}.onnx").exists()]
    print(f"  {'model':<20} {'N:M':<5} {'groups':>7} {'weights':>7} {'kept w/o':>9} {'kept with':>9} "
          f"{'gain':>7} {'efficacy':>8} {'search':>8} {'prune':>7} {'+permute':>8}")
    for name, path, pattern in cases:
        base = ["prune", str(path), "--dry-run", "--pattern", pattern, "--json", "-q"]
        t0 = time.perf_counter()
        subprocess.run([NMPRUNE, *base], check=True, capture_output=True)
        plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = subprocess.run([NMPRUNE, *base, "--permute"], check=True, capture_output=True, text=True).stdout
        permuted = time.perf_counter() - t0
        rep = json.loads(out)
        groups = rep["permutation"]["groups"]
        done = [g for g in groups if g["permuted"]]
        ws = [w for w in rep["weights"] if "kept_l1_ratio_unpermuted" in w]
        before = statistics.mean(w["kept_l1_ratio_unpermuted"] for w in ws) if ws else 0.0
        after = statistics.mean(w["kept_l1_ratio"] for w in ws) if ws else 0.0
        eff = statistics.mean(g["efficacy"] for g in done) if done else 0.0
        search = sum(g.get("search_s", 0.0) for g in groups)
        print(f"  {name:<20} {pattern:<5} {len(done):>3}/{len(groups):<3} {len(ws):>7} {100 * before:8.2f}% "
              f"{100 * after:8.2f}% {100 * (after - before):+6.2f}pp {100 * eff:7.1f}% {search:7.2f}s "
              f"{plain:6.2f}s {permuted:7.2f}s")
    print("  (kept: mean over the weights in permuted or searched groups of the share of L1 magnitude kept;"
          " gain in percentage points;\n   groups: permuted / found; blocked groups touch a graph input or"
          " output, or an op that mixes channels)")


def make_structure(path, kind, n):
    """A file that is all structure: n empty named initializers (that nothing reads, or that one Concat
    reads), or a chain of n Relu nodes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    g = onnx.GraphProto(name="g")
    g.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]))
    g.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8]))
    g.initializer.append(numpy_helper.from_array(np.ones((8, 8), np.float32), "W"))
    prev = "x"
    if kind == "nodes":
        for i in range(n):
            node = g.node.add()
            node.op_type = "Relu"
            node.input.append(prev)
            prev = f"t{i}"
            node.output.append(prev)
    else:
        for i in range(n):
            t = g.initializer.add()
            t.name, t.data_type = f"e{i}", TensorProto.FLOAT
            t.dims.append(0)
        if kind == "read-initializers":
            g.node.append(helper.make_node("Concat", [f"e{i}" for i in range(n)], ["z"], axis=0))
    g.node.append(helper.make_node("MatMul", [prev, "W"], ["y"]))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())


def section_structure():
    """Files of millions of messages: peak memory per message, against the reference loader."""
    cases = [("initializers", 3_000_000), ("read-initializers", 1_000_000), ("nodes", 1_000_000)]
    print(f"\n== structure-heavy files: peak RSS against the file and ONNX's own loader, median of {REPEAT} ==")
    out = OUT / "structure-out.onnx"
    data = OUT / "structure-out.data"
    for kind, n in cases:
        model = OUT / f"structure-{kind}-{n}.onnx"
        if not model.exists():
            OUT.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, __file__, "--make-structure", str(model), kind, str(n)], check=True)
        size = model.stat().st_size
        unit = kind[:-1].split("-")[-1]
        print(f"  {model.name}: {size / 1e6:.1f} MB, {n:,} {kind}")
        cp_wall, _ = measure(["cp", str(model), str(out)], cleanup=[out])
        ow, orss = measure([sys.executable, "-c", f"import onnx; onnx.load({str(model)!r})"])
        print(f"  {'onnx.load (Python)':<34} {ow:7.3f} s  {ow / cp_wall:6.1f}x cp   "
              f"peak RSS {orss / 2**20:7.1f} MiB ({orss / size:5.1f}x file, {orss / n:5.0f} B per {unit})")
        runs = [("prune (copy path)", ["prune", model, "-o", out, "-q"]),
                ("prune --external-data (general)", ["prune", model, "-o", out, "--external-data", data, "-q"]),
                ("prune --permute", ["prune", model, "-o", out, "--permute", "-q"])]
        worst = 0
        for name, argv in runs:
            w, r = measure([NMPRUNE, *argv], cleanup=[out, data])
            worst = max(worst, r)
            print(f"  {name:<34} {w:7.3f} s  {w / cp_wall:6.1f}x cp   "
                  f"peak RSS {r / 2**20:7.1f} MiB ({r / size:5.1f}x file, {r / n:5.0f} B per {unit})")
        print(f"    nmprune's worst peak is {worst / orss:.2f}x onnx.load's")
    out.unlink(missing_ok=True)
    data.unlink(missing_ok=True)


SECTIONS = {"io": section_io, "engine": section_engine, "prune": section_prune, "reference": section_reference,
            "permute": section_permute, "structure": section_structure}
EXTRA = {"large": section_large}


def main(argv):
    if len(argv) > 1 and argv[1] == "--make-transformer":
        make_transformer(Path(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]), argv[6])
        return
    if len(argv) > 1 and argv[1] == "--make-structure":
        make_structure(Path(argv[2]), argv[3], int(argv[4]))
        return
    names = argv[1:] or list(SECTIONS)
    known = {**SECTIONS, **EXTRA}
    for n in names:
        if n not in known:
            raise SystemExit(f"unknown section {n}; known: {', '.join(known)}")
    print(f"nmprune bench: {NMPRUNE}, {os.cpu_count()} cores")
    for n in names:
        known[n]()


if __name__ == "__main__":
    main(sys.argv)
