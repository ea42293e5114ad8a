"""Real exported models (unpacked from their PyPI wheels by `make deps` into
.cache/real-models/): what passes on generated models must pass on these.
Skipped, saying why, when the models are absent."""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import nmprune, weights

REAL = Path(__file__).resolve().parents[2] / ".cache" / "real-models"

# name: (candidates, eligible under --align asp, an input for the model)
MODELS = {
    "magika_standard_v3_3": (3, 1, lambda r: {"bytes": r.integers(0, 257, size=(2, 2048)).astype(np.int32)}),
    "ppocrv4_rec": (47, 17, lambda r: {"x": r.standard_normal((2, 3, 48, 320)).astype(np.float32)}),
    "ppocrv4_det": (64, 28, lambda r: {"x": r.standard_normal((1, 3, 160, 192)).astype(np.float32)}),
    "ppocr_cls": (54, 12, lambda r: {"x": r.standard_normal((2, 3, 48, 192)).astype(np.float32)}),
    "yolov8n_320": (64, 59, lambda r: {"images": r.random((1, 3, 320, 320)).astype(np.float32)}),
    "silero_vad": (20, 6, lambda r: _vad_feeds(r)),
    "silero_vad_16k_op15": (10, 3, lambda r: _vad_feeds(r)),
    "ddddocr_ocr_int8": (22, 15, lambda r: {"input1": r.random((1, 1, 64, 160)).astype(np.float32)}),
    "ddddocr_det": (83, 70, lambda r: {"images": r.random((1, 3, 416, 416)).astype(np.float32)}),
    "ppocrv6_det": (85, 47, lambda r: {"x": r.standard_normal((1, 3, 160, 192)).astype(np.float32)}),
    "ppocrv6_rec": (66, 42, lambda r: {"x": r.standard_normal((2, 3, 48, 320)).astype(np.float32)}),
    "smart_turn_v3_2": (31, 29, lambda r: {"input_features": r.standard_normal((2, 80, 800)).astype(np.float32)}),
    "slanet": (86, 59, lambda r: {"x": r.standard_normal((1, 3, 488, 488)).astype(np.float32)}),
}


def _vad_feeds(r):
    """Two 512-sample windows of 16 kHz audio and an LSTM state (the If model takes its 16 kHz branch)."""
    return {"input": (0.1 * r.standard_normal((2, 512))).astype(np.float32),
            "state": (0.1 * r.standard_normal((2, 2, 128))).astype(np.float32),
            "sr": np.array(16000, dtype=np.int64)}

pytestmark = pytest.mark.skipif(not all((REAL / f"{m}.onnx").exists() for m in MODELS),
                                reason="real models not unpacked: run make deps")


def run(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


@pytest.mark.parametrize("name", MODELS)
def test_inspect_finds_the_candidates(name):
    cands = json.loads(nmprune("inspect", REAL / f"{name}.onnx", "--json", check=0).out)
    n, eligible, _ = MODELS[name]
    assert len(cands) == n and sum(c["eligible"] for c in cands) == eligible


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "2:4@v4", "2:4@b4x4", "2:4@t", "50%"])
def test_pruned_model_complies_and_runs(tmp_path, name, pattern):
    src = REAL / f"{name}.onnx"
    before = src.read_bytes()
    out = tmp_path / "o.onnx"
    r = nmprune("prune", src, "-o", out, "--pattern", pattern, "--align", "none", "--json", check=0)
    rep = json.loads(r.out)
    assert rep["summary"]["done"] >= 1
    nmprune("check", out, "--pattern", pattern, "--align", "none", "-q", check=0)
    onnx.checker.check_model(str(out), full_check=True)
    feeds = MODELS[name][2](np.random.default_rng(0))
    dense, pruned = run(src, feeds), run(out, feeds)
    assert [a.shape for a in dense] == [b.shape for b in pruned]
    assert all(np.isfinite(b).all() for b in pruned if b.dtype.kind == "f")
    assert src.read_bytes() == before


@pytest.mark.parametrize("inferred", [False, True], ids=["as-exported", "onnx-shape-inference"])
@pytest.mark.parametrize("name,permuted", [("ppocrv4_rec", 16), ("ppocrv4_det", 22), ("ppocr_cls", 5),
                                           ("yolov8n_320", 56), ("silero_vad_16k_op15", 3), ("ddddocr_det", 59),
                                           ("ddddocr_ocr_int8", 9), ("ppocrv6_det", 27), ("ppocrv6_rec", 25),
                                           ("smart_turn_v3_2", 11), ("slanet", 49)])
def test_permutation_keeps_the_function_of_real_models(tmp_path, name, permuted, inferred):
    """--permute-only rewrites channels across real Conv stacks (the recogniser's through a Reshape to a shape
    the graph computes from Shape): outputs stay those of the input model.  The exports carry no value_info;
    ONNX's own shape inference adds it for every tensor and must change no group's outcome, since nmprune's
    rank rules already reach every group that ranks decide."""
    src = REAL / f"{name}.onnx"
    if inferred:
        m = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
        assert len(m.graph.value_info) > 100
        src = tmp_path / "inferred.onnx"
        onnx.save(m, str(src))
    out = tmp_path / "p.onnx"
    r = nmprune("prune", src, "--permute-only", "-o", out, "--json", check=0)
    groups = json.loads(r.out)["permutation"]["groups"]
    assert sum(1 for g in groups if g.get("permuted")) == permuted, [g.get("blocked") for g in groups]
    feeds = MODELS[name][2](np.random.default_rng(1))
    for a, b in zip(run(src, feeds), run(out, feeds)):  # 1e-6 at least: the v6 detector's maps stay near 0 here
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=max(1e-4 * np.abs(a).max(), 1e-6))
    assert out.read_bytes() != src.read_bytes()  # channels did move


def test_magika_group_passes_its_whole_slice_and_the_merge_of_its_tokens(tmp_path):
    """jax2tf writes a Slice of every axis, 0 to 10^9, before magika's Conv.  The Slice takes the whole of the
    Conv's input channels (their count follows from the Conv's weight, since the bounds reach past it), so the
    group passes it and the LayerNorm before it, and reaches where those channels are made: a Reshape that
    merges four tokens' embeddings of 64 into one row of 256.  The Conv's 256 input channels move in one order
    of 64 repeated four times, the embedding's 64 columns in that order, and the file types do not change."""
    src = REAL / "magika_standard_v3_3.onnx"
    out = tmp_path / "p.onnx"
    r = nmprune("prune", src, "--permute-only", "-o", out, "--json", check=0)
    (group,) = json.loads(r.out)["permutation"]["groups"]
    assert group["permuted"] and group["channels"] == 256 and group["tensors"] == 3, group
    before, after = weights(src), weights(out)
    emb, conv = "jax2tf_get_logits_/Const:0", "jax2tf_get_logits_/pjit_get_logits_/MagikaV2/Conv_0/transpose_3:0"
    cols = {tuple(before[emb][:, j]): j for j in range(64)}
    tile = np.array([cols[tuple(after[emb][:, j])] for j in range(64)])
    assert sorted(tile) == list(range(64)) and not np.array_equal(tile, np.arange(64))
    order = np.concatenate([tile + 64 * k for k in range(4)])
    np.testing.assert_array_equal(after[conv], before[conv][:, order])
    feeds = MODELS["magika_standard_v3_3"][2](np.random.default_rng(5))
    a, b = run(src, feeds)[0], run(out, feeds)[0]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert (a.argmax(-1) == b.argmax(-1)).all()


def test_transformer_heads_move_in_the_quantized_speech_encoder(tmp_path):
    """The end-of-turn detector's encoder splits each projection into 6 heads of 64 by a Reshape and merges
    them back before the output projection.  Each layer's V projection columns, V bias and output projection
    rows move in one order of 64 repeated in every head (the output projections' groups blocked at the merge
    before), through the activations' QuantizeLinear and DequantizeLinear.  Only the Conv on the graph input
    stays as it is; the logits are bit for bit the same."""
    src = REAL / "smart_turn_v3_2.onnx"
    out = tmp_path / "p.onnx"
    rep = json.loads(nmprune("prune", src, "--permute-only", "-o", out, "--json", check=0).out)
    groups = {g["from"]: g for g in rep["permutation"]["groups"]}
    assert [g["blocked"] for g in groups.values() if "blocked" in g] == ["'input_features' is a graph input"]
    before, after = weights(src), weights(out)
    for layer, o_proj in enumerate(("val_75_quantized", "val_148_quantized", "val_221_quantized",
                                    "val_294_quantized")):
        assert groups[o_proj]["permuted"] and groups[o_proj]["channels"] == 384
        bias = f"inner.encoder.layers.{layer}.self_attn.v_proj.bias"
        # its columns move too, in the residual stream's order: match rows by their sorted values
        rows = {tuple(np.sort(before[o_proj][j])): j for j in range(384)}
        assert len(rows) == 384
        order = np.array([rows[tuple(np.sort(after[o_proj][j]))] for j in range(384)])
        tile = order[:64]
        assert sorted(tile) == list(range(64)) and not np.array_equal(tile, np.arange(64))
        np.testing.assert_array_equal(order, np.concatenate([tile + 64 * h for h in range(6)]))
        np.testing.assert_array_equal(after[bias], before[bias][order])
    feeds = MODELS["smart_turn_v3_2"][2](np.random.default_rng(6))
    for a, b in zip(run(src, feeds), run(out, feeds)):
        np.testing.assert_array_equal(b, a)


def test_magika_head_group_moves_through_its_jax2tf_layernorm(tmp_path):
    """With --align none the classifier head (512 x 214) is eligible too, and its input channels form a group:
    the Conv's output channels, pooled, then a LayerNorm as jax2tf writes it (ReduceSum without keepdims, the
    mean reshaped to [N, 1] by a shape computed from the input's and expanded back).  The group moves, and
    the file type the model gives does not change."""
    src = REAL / "magika_standard_v3_3.onnx"
    out = tmp_path / "p.onnx"
    r = nmprune("prune", src, "--permute-only", "--align", "none", "-o", out, "--json", check=0)
    groups = {g["from"]: g for g in json.loads(r.out)["permutation"]["groups"]}
    head = groups["jax2tf_get_logits_/Const_24:0"]
    assert head["permuted"] and head["channels"] == 512 and head["tensors"] == 5
    feeds = MODELS["magika_standard_v3_3"][2](np.random.default_rng(4))
    a, b = run(src, feeds)[0], run(out, feeds)[0]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert (a.argmax(-1) == b.argmax(-1)).all()


def test_dynamically_quantized_groups_move_exactly(tmp_path):
    """The int8 OCR model quantizes each activation in the graph (DynamicQuantizeLinear: one scale and zero point
    for the whole tensor), multiplies in integers (ConvInteger, MatMulInteger with per-tensor zero points), and
    quantizes each bias by those scales (Div, Floor, Cast, a Reshape to [1, C, 1, 1]).  Its groups move as the
    float model's do (9 of 10; the tenth reaches the Reshape into the LSTM), and since every sum is an integer
    sum, the permuted model's outputs are bit for bit the original's."""
    src = REAL / "ddddocr_ocr_int8.onnx"
    out = tmp_path / "p.onnx"
    rep = json.loads(nmprune("prune", src, "--permute-only", "-o", out, "--json", check=0).out)
    groups = rep["permutation"]["groups"]
    assert len(groups) == 10 and sum(1 for g in groups if g.get("permuted")) == 9
    assert [g["blocked"] for g in groups if "blocked" in g] == ["Reshape 'Reshape_69' mixes or reorders the channels of '209'"]
    assert not any(g.get("crosses_activation_quantization") for g in groups)
    before, after = weights(src), weights(out)
    moved = [k for k in before if not np.array_equal(before[k], after[k])]
    assert {k for k in moved if k.endswith("_quantized")} and {k for k in moved if not k.endswith("_quantized")}
    feeds = MODELS["ddddocr_ocr_int8"][2](np.random.default_rng(3))
    for a, b in zip(run(src, feeds), run(out, feeds)):
        np.testing.assert_array_equal(b, a)
    pruned, plain = tmp_path / "pp.onnx", tmp_path / "plain.onnx"
    perm = json.loads(nmprune("prune", src, "--permute", "-o", pruned, "--json", check=0).out)
    base = {w["name"]: w for w in json.loads(nmprune("prune", src, "-o", plain, "--json", check=0).out)["weights"]}
    assert nmprune("check", pruned, "-q").code == 0
    gained = [w for w in perm["weights"] if w.get("kept_l1_ratio_unpermuted")]
    assert len(gained) == 12
    for w in gained:
        assert w["kept_l1_ratio_unpermuted"] == pytest.approx(base[w["name"]]["kept_l1_ratio"], rel=1e-6)
        assert w["kept_l1_ratio"] > w["kept_l1_ratio_unpermuted"]


def test_groups_inside_if_branches_are_permuted(tmp_path):
    """The full VAD model runs inside an If's two branches (8 kHz and 16 kHz): each branch is analysed as a graph
    of its own, its three conv groups move like those of the export without the If, and both branches still
    compute what they did.  --permute then prunes the permuted Constant weights of both branches."""
    src = REAL / "silero_vad.onnx"
    out = tmp_path / "p.onnx"
    r = nmprune("prune", src, "--permute-only", "-o", out, "--json", check=0)
    groups = json.loads(r.out)["permutation"]["groups"]
    assert sorted(g["from"].split("__")[-1] for g in groups if g.get("permuted")) == sorted(
        f"encoder.{k}.reparam_conv.weight" for k in (1, 2, 3) for _ in range(2)), groups
    assert len(groups) == 6 and all(g["tensors"] == 3 and g["kept"] > g["kept_unpermuted"] for g in groups)
    assert {g["from"].split("__")[0] for g in groups} == {"If_0_then_branch", "If_0_else_branch"}
    for rate, window in ((16000, 512), (8000, 256)):  # the If's condition: one run through each branch
        feeds = MODELS["silero_vad"][2](np.random.default_rng(2))
        feeds["sr"] = np.array(rate, dtype=np.int64)
        feeds["input"] = feeds["input"][:, :window].copy()
        for a, b in zip(run(src, feeds), run(out, feeds)):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(a).max()))
    assert out.read_bytes() != src.read_bytes()
    pruned = tmp_path / "pp.onnx"
    nmprune("prune", src, "--permute", "-o", pruned, "-q", check=0)
    assert nmprune("check", pruned, "-q").code == 0


def _matches_the_reference(src, out, pattern):
    """Asserts that every eligible weight of src is pruned in out to the independent numpy reference's mask,
    and that the rest are untouched; returns how many weights were pruned."""
    import reference
    cands = json.loads(nmprune("inspect", src, "--pattern", pattern, "--align", "none", "--json", check=0).out)
    dense, pruned = weights(src), weights(out)
    checked = 0
    for c in cands:
        if not c["eligible"]:
            assert np.array_equal(pruned[c["name"]], dense[c["name"]])
            continue
        use = c["consumers"][0]
        w = dense[c["name"]]
        out_axis = 0 if use["op"] == "Conv" else (w.ndim - 1 if use["input"] == 1 else w.ndim - 2)
        keep = reference.mask(w, pattern, c["axis"], out_axis)
        assert pruned[c["name"]].dtype == w.dtype
        assert np.array_equal(pruned[c["name"]], np.where(keep, w, 0)), c["name"]
        checked += 1
    return checked


@pytest.mark.parametrize("name", ["ppocrv4_rec", "ppocrv4_det"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "2:4@v4", "2:4@b4x4", "50%"])
def test_real_weights_match_the_reference_masks(tmp_path, name, pattern):
    """Every pruned weight of a real model equals the independent numpy reference's mask applied to it."""
    src = REAL / f"{name}.onnx"
    out = tmp_path / "o.onnx"
    nmprune("prune", src, "-o", out, "--pattern", pattern, "--align", "none", "-q", check=0)
    assert _matches_the_reference(src, out, pattern) >= 20


@pytest.fixture(scope="module")
def fp16_exports(tmp_path_factory):
    """The OCR models as users make them fp16 for deployment: onnxconverter-common's float16 pass, inputs and
    outputs kept fp32 (Casts at the edges), every weight (these exports hold them in Constant nodes) FLOAT16."""
    import warnings
    from onnxconverter_common import float16
    d = tmp_path_factory.mktemp("fp16")
    paths = {}
    for name in ("ppocrv4_rec", "ppocrv4_det"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns of every weight below fp16's smallest normal
            m = float16.convert_float_to_float16(onnx.load(str(REAL / f"{name}.onnx")), keep_io_types=True)
        paths[name] = d / f"{name}.fp16.onnx"
        onnx.save(m, str(paths[name]))
    return paths


def _ties_at_the_cut(w, n, m):
    """Groups of a Conv weight whose n-th and (n+1)-th largest magnitudes are equal and nonzero: where the tie
    rule decides which weights survive (between zeros it changes no weight)."""
    g = np.sort(np.abs(np.moveaxis(w, 1, -1).astype(np.float64)).reshape(-1, m), axis=1)
    return int(np.sum((g[:, m - n] == g[:, m - n - 1]) & (g[:, m - n] > 0)))


@pytest.mark.parametrize("name,ties", [("ppocrv4_rec", 7000), ("ppocrv4_det", 600)])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "2:4@v4", "2:4@b4x4", "2:4@t", "50%"])
def test_fp16_exports_match_the_reference_masks(tmp_path, fp16_exports, name, ties, pattern):
    """The same on the fp16 conversions of the real models: eleven bits of mantissa put exact ties between
    nonzero magnitudes at the 2:4 cut in thousands of real groups (7 603 and 678; the fp32 weights tie only
    at zero, in dead channels), so the tie rule decides which weights survive there, on real data."""
    src = fp16_exports[name]
    if pattern == "2:4":
        assert sum(_ties_at_the_cut(w, 2, 4) for w in weights(src).values()
                   if w.dtype == np.float16 and w.ndim == 4 and w.shape[1] % 4 == 0) >= ties
    out = tmp_path / "o.onnx"
    nmprune("prune", src, "-o", out, "--pattern", pattern, "--align", "none", "-q", check=0)
    assert _matches_the_reference(src, out, pattern) >= 20
    assert nmprune("check", out, "--pattern", pattern, "--align", "none", "-q", check=0).code == 0


def _bench_data(tmp_path, make, n):
    """bench-quality's samples for a real model (bench/bench_quality.py): its first n calibrate, the rest are
    held out; a tensor of one sample goes with both."""
    import sys
    sys.path.insert(0, str(REAL.parents[1] / "bench"))
    import bench_quality
    data = getattr(bench_quality, make)(n)
    total = max(len(v) for v in data.values() if v.ndim)
    paths = tmp_path / "cal.safetensors", tmp_path / "held.safetensors"
    for path, part in zip(paths, (slice(0, n), slice(n, None))):
        bench_quality.save_file({k: v[part] if v.ndim and len(v) == total else v for k, v in data.items()},
                                str(path))
    return paths


def test_fp16_recognizer_calibrates_and_is_rebuilt_in_fp16(tmp_path, fp16_exports):
    """sparsegpt on the fp16 conversion of PP-OCRv4's recognizer: onnxruntime runs the fp16 graph on 16
    calibration lines, every rebuilt weight is stored back as FLOAT16 in 2:4, and on 16 held-out lines the
    output keeps a cosine far above magnitude's (0.86 against 0.30 when written)."""
    src = fp16_exports["ppocrv4_rec"]
    cal, held = _bench_data(tmp_path, "ocr_rec_data", 16)
    cos = {}
    for method in ("magnitude", "sparsegpt"):
        out = tmp_path / f"{method}.onnx"
        extra = [] if method == "magnitude" else ["--method", method, "--calibration", cal]
        rep = json.loads(nmprune("prune", src, "-o", out, "--align", "none", "--json", *extra, check=0).out)
        assert rep["summary"]["done"] == 32
        assert nmprune("check", out, "--align", "none", "-q", check=0).code == 0
        c = json.loads(nmprune("compare", src, out, "--calibration", held, "--json", check=0).out)
        cos[method] = c["outputs"][0]["cosine"]
    assert rep["calibration"]["method"] == "sparsegpt" and rep["calibration"]["samples"] == 16
    dense, rebuilt = weights(src), weights(out)
    done = [w for w in rep["weights"] if w.get("calibration", {}).get("reconstructed")]
    assert len(done) == 32
    for w in done:
        d, r = dense[w["name"]], rebuilt[w["name"]]
        assert r.dtype == np.float16 and np.isfinite(r).all()
        nonzero = (np.moveaxis(r, w["axis"], -1).reshape(-1, 4) != 0).sum(axis=1)
        assert nonzero.max() <= 2 and (nonzero == 2).mean() > 0.97, w["name"]  # dead input channels stay 0
        kept = r != 0
        assert not np.array_equal(r[kept], d[kept]), w["name"]
    assert cos["sparsegpt"] > 0.8 and cos["sparsegpt"] > cos["magnitude"] + 0.4, cos


def test_recognizer_dense_set_by_sparsegpt_is_what_prune_gives_and_smaller_than_magnitudes(tmp_path):
    """PP-OCRv4's recognizer at 2:4, target 0.99 measured on held-out lines: sparsegpt's search keeps fewer of
    its 17 weights dense than magnitude's, and pruning with the rules it writes (prune's default stages) reaches
    exactly the fidelity the search reported."""
    src = REAL / "ppocrv4_rec.onnx"
    cal, held = _bench_data(tmp_path, "ocr_rec_data", 16)
    kept = {}
    for method in ("magnitude", "sparsegpt"):
        rules = tmp_path / f"{method}.json"
        extra = [] if method == "magnitude" else ["--method", method]
        rep = json.loads(nmprune("inspect", src, "--sensitivity", "--calibration", cal, "--eval-data", held,
                                 "--target-fidelity", "0.99", "--write-rules", rules, "--json", *extra, check=0).out)
        assert rep["method"] == method and len(rep["weights"]) == 17 and rep["target"]["met"]
        kept[method] = rep["target"]["keep_dense"]
        assert len(json.loads(rules.read_text())) == kept[method]
        out = tmp_path / f"{method}.onnx"
        extra += [] if method == "magnitude" else ["--calibration", cal]
        nmprune("prune", src, "-o", out, "--rules", rules, "-q", *extra, check=0)
        cmp = json.loads(nmprune("compare", src, out, "--calibration", held, "--json", check=0).out)
        assert cmp["outputs"][0]["cosine"] == pytest.approx(rep["target"]["reached"], abs=1e-6)
    assert kept["sparsegpt"] <= kept["magnitude"] - 4, kept


@pytest.mark.skipif(not (REAL / "speech_sample.wav").exists(), reason="speech recording not unpacked: run make deps")
def test_voice_detector_calibrates_the_branch_its_samples_take(tmp_path):
    """silero VAD holds every weight inside the If on its sample rate.  Calibrated on 16 kHz speech, the 16 kHz
    branch's weights are rebuilt by sparsegpt and the 8 kHz branch's, which no sample took, fall back to magnitude
    with the reason; on the other half of the recording the speech probability moves far less than magnitude's."""
    src = REAL / "silero_vad.onnx"
    cal, held = _bench_data(tmp_path, "vad_data", 117)  # every 4th window, streamed with its state
    rep = json.loads(nmprune("prune", src, "-o", tmp_path / "sg.onnx", "--method", "sparsegpt", "--calibration", cal,
                             "--json", check=0).out)
    assert rep["calibration"]["samples"] == 117
    methods = {w["name"]: w["calibration"] for w in rep["weights"] if w["eligible"]}
    assert len(methods) == 6
    for name, c in methods.items():
        if "then_branch" in name:
            assert c["method"] == "sparsegpt", name
        else:
            assert c == {"method": "magnitude",
                         "note": "no calibration sample took the If branch that reads it: pruned by magnitude"}, name
    nmprune("prune", src, "-o", tmp_path / "mag.onnx", check=0)
    err = {}
    for m in ("sg", "mag"):
        cmp = json.loads(nmprune("compare", src, tmp_path / f"{m}.onnx", "--calibration", held, "--json", check=0).out)
        err[m] = {o["name"]: o["rel_l2"] for o in cmp["outputs"]}
    assert err["sg"]["output"] < 0.1 * err["mag"]["output"], err
    assert err["sg"]["stateN"] < 0.5 * err["mag"]["stateN"], err


def test_dynamically_quantized_ocr_calibrates_its_integer_convolutions(tmp_path):
    """ddddocr's int8 recognizer runs every Conv as ConvInteger on DynamicQuantizeLinear's output.  Calibrated on
    rendered words, its 15 eligible weights take sparsegpt on the float inputs that were quantized, and on other
    words the per-step character choices stay far closer to the dense model's than magnitude's."""
    cal, held = _bench_data(tmp_path, "word_images", 64)
    src = REAL / "ddddocr_ocr_int8.onnx"
    rep = json.loads(nmprune("prune", src, "-o", tmp_path / "sg.onnx", "--method", "sparsegpt", "--calibration",
                             cal, "--json", check=0).out)
    methods = [w["calibration"]["method"] for w in rep["weights"] if w["eligible"]]
    assert methods == ["sparsegpt"] * 15
    nmprune("prune", src, "-o", tmp_path / "mag.onnx", check=0)
    fid = {}
    for m in ("sg", "mag"):
        cmp = json.loads(nmprune("compare", src, tmp_path / f"{m}.onnx", "--calibration", held, "--json",
                                 check=0).out)
        fid[m] = cmp["outputs"][0]
    assert fid["sg"]["top1"] > 0.93 and fid["sg"]["top1"] > fid["mag"]["top1"] + 0.1, fid
    assert fid["sg"]["rel_l2"] < 0.5 * fid["mag"]["rel_l2"], fid


def test_table_recognizer_prunes_the_decoder_weights_its_loop_carries(tmp_path):
    """SLANet's decoder runs in a Loop, and its weights enter the loop as carried values that every iteration
    passes on unchanged.  Those MatMul weights are found through the Loop (9 of them, 5 eligible), pruned where
    they are defined, and the decoder runs with them.  The calibrated methods take their statistics over every
    step the decoder runs; --permute leaves them, naming the Loop."""
    src = REAL / "slanet.onnx"
    cands = {c["name"]: c for c in json.loads(nmprune("inspect", src, "--json", check=0).out)}
    loop = {n: c for n, c in cands.items() if n.startswith(("linear_", "gru_cell_"))}
    assert len(loop) == 9 and sorted(n for n, c in loop.items() if c["eligible"]) == [
        "gru_cell_0.w_1", "linear_0.w_0", "linear_1.w_0", "linear_3.w_0", "linear_5.w_0"]
    assert all(c["constant"] and c["consumers"][0]["op"] == "MatMul" for c in loop.values())
    out = tmp_path / "o.onnx"
    rep = json.loads(nmprune("prune", src, "-o", out, "--permute", "--json", check=0).out)
    pruned = {w["name"] for w in rep["weights"] if w.get("sparsity")}
    assert {"gru_cell_0.w_1", "linear_0.w_0", "linear_5.w_0"} <= pruned
    blocked = {g["from"]: g.get("blocked", "") for g in rep["permutation"]["groups"]}
    assert blocked["linear_0.w_0"] == "Loop 'p2o.Loop.0' mixes or reorders the channels of 'linear_0.w_0'"
    after = weights(out)
    for name in ("linear_0.w_0", "gru_cell_0.w_1"):
        assert (after[name] == 0).mean() == 0.5
    feeds = MODELS["slanet"][2](np.random.default_rng(3))
    assert all(np.isfinite(o).all() for o in run(out, feeds))
    from safetensors.numpy import save_file
    save_file({"x": feeds["x"][None]}, str(tmp_path / "d.safetensors"))
    rep = json.loads(nmprune("prune", src, "--dry-run", "--method", "wanda", "--calibration",
                             tmp_path / "d.safetensors", "--calibration-stats", tmp_path / "st.safetensors", "--json",
                             check=0).out)
    decoder = {w["name"]: w["calibration"] for w in rep["weights"] if w["name"] in loop and w["eligible"]}
    assert [c["method"] for c in decoder.values()] == ["wanda"] * 5
    assert all(c["score_kept"] > c["score_kept_by_magnitude_mask"] for c in decoder.values())
    assert sum(w["calibration"]["method"] == "wanda" for w in rep["weights"] if w["eligible"]) == 59
    from safetensors import safe_open
    with safe_open(str(tmp_path / "st.safetensors"), "numpy") as f:
        tokens = {k[:-len(".tokens")]: int(v) for k, v in f.metadata().items()}
    steps = run(src, feeds)[0].shape[1]  # one structure token per decoder step
    assert tokens["linear_1.w_0"] == tokens["gru_cell_0.w_1"] == steps  # one sample, every step
    # the encoder's features, which every step attends over: all their positions, at every step
    assert tokens["linear_0.w_0"] % steps == 0 and tokens["linear_0.w_0"] // steps > 1


@pytest.mark.skipif(not (REAL / "speech_sample.wav").exists(), reason="speech recording not unpacked: run make deps")
@pytest.mark.parametrize("make", ["ocr_det_data", "table_images", "speech_data", "ocr_rec_data"])
def test_bench_samples_come_back_as_made(tmp_path, make):
    """The samples bench-quality and these tests write read back as they were made, whatever the layout of the
    arrays (safetensors 0.8.0 writes a transposed array's memory as it lies)."""
    import sys
    from safetensors.numpy import load_file
    sys.path.insert(0, str(REAL.parents[1] / "bench"))
    import bench_quality
    data = getattr(bench_quality, make)(1)
    bench_quality.save_file(data, str(tmp_path / "d.safetensors"))
    back = load_file(str(tmp_path / "d.safetensors"))
    assert back.keys() == data.keys()
    for k, v in data.items():
        np.testing.assert_array_equal(back[k], v)


def test_detector_upsampling_takes_sparsegpt_through_conv_transpose(tmp_path):
    """PP-OCRv4's detector upsamples its probability map with two ConvTranspose layers (2x2 kernels, stride 2).
    Opted in with --ops, both take sparsegpt on the statistics of their input pixels, and on held-out pages the
    map moves far less than by magnitude."""
    src = REAL / "ppocrv4_det.onnx"
    cal, held = _bench_data(tmp_path, "ocr_det_data", 8)
    common = ["--ops", "ConvTranspose", "--align", "none"]
    rep = json.loads(nmprune("prune", src, "-o", tmp_path / "sg.onnx", *common, "--method", "sparsegpt",
                             "--calibration", cal, "--json", check=0).out)
    cal_of = {w["name"]: w["calibration"] for w in rep["weights"] if w["eligible"]}
    assert sorted(cal_of) == ["conv2d_transpose_0.w_0", "conv2d_transpose_1.w_0"]
    for c in cal_of.values():
        assert c["method"] == "sparsegpt" and c["output_error"] < 0.5 * c["output_error_magnitude"], c
    nmprune("prune", src, "-o", tmp_path / "mag.onnx", *common, "-q", check=0)
    fid = {m: json.loads(nmprune("compare", src, tmp_path / f"{m}.onnx", "--calibration", held, "--json",
                                 check=0).out)["outputs"][0] for m in ("sg", "mag")}
    assert fid["sg"]["cosine"] > fid["mag"]["cosine"] + 0.02, fid
    assert fid["sg"]["rel_l2"] < 0.8 * fid["mag"]["rel_l2"], fid
