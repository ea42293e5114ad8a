"""Calibrated pruning (wanda, sparsegpt) and `compare`, against an independent
numpy reference written here from the methods' definitions: statistics as
sums over tokens, Conv patches by an explicit im2col, the OBS sweep in plain
numpy linear algebra."""
import json
import re
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file

from conftest import NMPRUNE, nmprune, save, weights
import reference


def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def mlp(rng):
    """x [b, s, 64] -> MatMul W1 [64, 32] -> Relu -> Gemm(transA=0, transB=1) W2 [16, 32]."""
    W1 = rng.standard_normal((64, 32)).astype(np.float32)
    W2 = rng.standard_normal((16, 32)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Reshape", ["hr", "shape"], ["h2"]),
        helper.make_node("Gemm", ["h2", "W2"], ["y"], name="gemm", transB=1),
    ]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 5, 64])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
               {"W1": W1, "W2": W2, "shape": np.array([-1, 32], np.int64)})
    return m, {"W1": W1, "W2": W2}


def mlp_data(rng, samples=12):
    scale = np.exp(rng.standard_normal(64)).astype(np.float32)  # channels of very different size
    return (rng.standard_normal((samples, 2, 5, 64)) * scale).astype(np.float32)


def conv_model(rng):
    """Grouped, strided, padded, dilated Conv, then a 1x1 Conv with auto_pad SAME_UPPER and stride 2."""
    W1 = rng.standard_normal((16, 4, 3, 3)).astype(np.float32)
    W2 = rng.standard_normal((8, 16, 1, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", group=2, strides=[2, 1], pads=[1, 0, 2, 1],
                         dilations=[2, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2"], ["y"], name="conv2", auto_pad="SAME_UPPER", strides=[1, 2]),
    ]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 9, 7])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"W1": W1, "W2": W2})
    return m, {"W1": W1, "W2": W2}


def activations(model, feeds, names):
    """The named intermediate values, by running the model with them as outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(helper.make_empty_tensor_value_info(n))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, s.run(names, feeds)))


def mlp_inputs(model, X):
    """What the mlp's weights read over every sample, in float64: x as [tokens, 64] (W1) and h2 (W2)."""
    x1 = X.reshape(-1, 64).astype(np.float64)
    return x1, np.concatenate([activations(model, {"x": X[i]}, ["h2"])["h2"] for i in range(len(X))]).astype(np.float64)


def im2col(x, kshape, strides, pads_begin, pads_end, dil, group, cin_g):
    """Rows of patches per group, input order kernel position major, channel minor."""
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + pads_begin[0] + pads_end[0], w + pads_begin[1] + pads_end[1]))
    xp[:, :, pads_begin[0]:pads_begin[0] + h, pads_begin[1]:pads_begin[1] + w] = x
    kh, kw = kshape
    oh = (xp.shape[2] - dil[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (xp.shape[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1
    rows = {g: [] for g in range(group)}
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for g in range(group):
                    row = []
                    for a in range(kh):
                        for e in range(kw):
                            for ch in range(cin_g):
                                row.append(xp[b, g * cin_g + ch, i * strides[0] + a * dil[0], j * strides[1] + e * dil[1]])
                    rows[g].append(row)
    return {g: np.array(r) for g, r in rows.items()}


def assert_gram(got, want):
    """Products of a batch of vectors are taken in single precision (fp32 activations), summed in double."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def sparsegpt_ref(W, H, n, m, damp=0.01, sparsity=None, grid=None):
    """The OBS sweep: W rows x K, H K x K. Returns (reconstructed W, keep mask).  grid: (scale, zero, qmin,
    qmax), each of the first two one value per row: every kept weight is put on that integer grid as its
    column is reached, and the rounding error spread like a pruned weight's.  Blocks of 128 columns; for
    N:M the largest multiple of M up to 128 (M above it), so that every group lies in one block."""
    block = 128 if sparsity is not None else max(m, 128 // m * m)
    W = W.astype(np.float64).copy()
    H = H.astype(np.float64).copy()
    K = W.shape[1]
    d = np.diag(H).copy()
    d[d == 0] = 1
    H[np.diag_indices(K)] = d
    H[np.diag_indices(K)] += damp * np.mean(np.diag(H))
    Hinv = np.linalg.inv(H)
    U = np.linalg.cholesky(Hinv).T  # Hinv = U^T U, U upper
    keep = np.ones_like(W, bool)
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1 = W[:, i1:i2].copy()
        E = np.zeros_like(W1)
        dd = np.diag(U)[i1:i2]
        k1 = np.ones_like(W1, bool)
        if sparsity is not None:  # the block's share of the tensor's count, rounded where the running total falls
            score = (W1 ** 2 / dd ** 2).ravel()
            order = sorted(range(score.size), key=lambda e: (score[e], -e))
            share = int(np.floor(sparsity * W.shape[0] * i2 + 0.5) - np.floor(sparsity * W.shape[0] * i1 + 0.5))
            k1.ravel()[order[:share]] = False
        for i in range(i2 - i1):
            if sparsity is None and i % m == 0:
                score = W1[:, i:i + m] ** 2 / dd[i:i + m] ** 2
                k1[:, i:i + m] = reference._top_n(score, n)
            q = W1[:, i]
            if grid is not None:
                scale, zero, lo, hi = grid
                q = (np.clip(np.round(q / scale) + zero, lo, hi) - zero) * scale  # np.round: half to even
            q = np.where(k1[:, i], q, 0.0)
            err = (W1[:, i] - q) / dd[i]
            W1[:, i:] -= np.outer(err, U[i1 + i, i1:i2][i:])
            W1[:, i] = q
            E[:, i] = err
        W[:, i1:i2] = W1
        keep[:, i1:i2] = k1
        W[:, i2:] -= E @ U[i1:i2, i2:]
    return W, keep


@pytest.fixture
def mlp_case(tmp_path, rng):
    model, w = mlp(rng)
    X = mlp_data(rng)
    save_file({"x": X}, str(tmp_path / "data.safetensors"))
    return save(model, tmp_path / "mlp.onnx"), model, w, X


def test_statistics_of_matmul_and_gemm_match_sums_over_tokens(tmp_path, mlp_case):
    path, model, w, X = mlp_case
    nmprune("prune", path, "--dry-run", "--method", "sparsegpt", "--calibration", tmp_path / "data.safetensors",
            "--align", "none", "--calibration-stats", tmp_path / "st.safetensors", "--calibration-stages", "1", "-q",
            check=0)
    st = load_file(str(tmp_path / "st.safetensors"))
    x1, h2 = mlp_inputs(model, X)
    np.testing.assert_allclose(st["W1.sq"], (x1 ** 2).sum(0), rtol=1e-12)
    assert_gram(st["W1.H"][0], x1.T @ x1)
    assert_gram(st["W2.H"][0], h2.T @ h2)


def test_conv_statistics_match_explicit_im2col(tmp_path, rng):
    model, w = conv_model(rng)
    X = rng.standard_normal((3, 2, 8, 9, 7)).astype(np.float32)
    save_file({"x": X}, str(tmp_path / "data.safetensors"))
    path = save(model, tmp_path / "conv.onnx")
    nmprune("prune", path, "--dry-run", "--method", "sparsegpt", "--calibration", tmp_path / "data.safetensors",
            "--align", "none", "--calibration-stats", tmp_path / "st.safetensors", "--calibration-stages", "1", check=0)
    st = load_file(str(tmp_path / "st.safetensors"))
    H1 = np.zeros((2, 36, 36))
    H2 = np.zeros((1, 32, 32))
    sq1 = np.zeros(8)
    for s in range(len(X)):
        x = X[s].astype(np.float64)
        sq1 += (x ** 2).sum(axis=(0, 2, 3))
        for g, rows in im2col(x, (3, 3), (2, 1), (1, 0), (2, 1), (2, 1), 2, 4).items():
            H1[g] += rows.T @ rows
        r1 = activations(model, {"x": X[s]}, ["r1"])["r1"].astype(np.float64)
        # SAME_UPPER, kernel (1, 2), strides (1, 2): width pad total max(0, (ceil(w/2)-1)*2 + 2 - w)
        wdt = r1.shape[3]
        total = max(0, (-(-wdt // 2) - 1) * 2 + 2 - wdt)
        rows = im2col(r1, (1, 2), (1, 2), (0, total // 2), (0, total - total // 2), (1, 1), 1, 16)[0]
        H2[0] += rows.T @ rows
    np.testing.assert_allclose(st["W1.sq"], sq1, rtol=1e-12)
    assert_gram(st["W1.H"], H1)
    assert_gram(st["W2.H"], H2)


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "2:4@v4", "2:4@b2x2", "2:4@t", "50%"])
def test_wanda_masks_match_reference_for_every_family(tmp_path, mlp_case, pattern):
    path, model, w, X = mlp_case
    out = tmp_path / "out.onnx"
    nmprune("prune", path, "-o", out, "--method", "wanda", "--calibration", tmp_path / "data.safetensors",
            "--align", "none", "--pattern", pattern, "--save-masks", tmp_path / "m.safetensors", "-q",
            "--calibration-stages", "1", check=0)
    masks = load_file(str(tmp_path / "m.safetensors"))
    x1, h2 = mlp_inputs(model, X)
    norm1 = np.sqrt((x1 ** 2).sum(0))
    norm2 = np.sqrt((h2 ** 2).sum(0))
    cases = {"W1": (w["W1"], norm1[:, None], 0, 1), "W2": (w["W2"], norm2[None, :], 1, 0)}
    pruned = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for name, (W, norm, axis, out_axis) in cases.items():
        score = (np.abs(W).astype(np.float64) * norm).astype(np.float32).astype(np.float64)
        keep = reference.mask(W, pattern, axis, out_axis, magnitude=score)
        assert np.array_equal(masks[name].astype(bool), keep), (name, pattern)
        assert np.array_equal(pruned[name], np.where(keep, W, 0)), name


def test_wanda_differs_from_magnitude_where_activations_differ(tmp_path, rng):
    """Two channels in one group: the smaller weight on the far larger activation is kept."""
    W = np.ones((8, 8), np.float32)
    W[0, :], W[1, :] = 1.0, 0.5  # magnitude keeps rows 0 (and 2/3) of each group of 4 along K
    X = np.zeros((4, 4, 8), np.float32)
    X[..., 1] = 100.0
    X[..., 0] = 0.01
    X[..., 2:] = 1.0
    model = _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], {"W": W})
    path = save(model, tmp_path / "m.onnx")
    save_file({"x": X}, str(tmp_path / "d.safetensors"))
    nmprune("prune", path, "-o", tmp_path / "o.onnx", "--method", "wanda", "--calibration", tmp_path / "d.safetensors",
            "--align", "none", "--save-masks", tmp_path / "mk.safetensors", "-q", check=0)
    keep = load_file(str(tmp_path / "mk.safetensors"))["W"].astype(bool)
    assert keep[1].all() and not keep[0].any()  # channel 1 (weight 0.5, activation 100) beats channel 0


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "30%"])
def test_sparsegpt_matches_reference_sweep(tmp_path, mlp_case, pattern):
    path, model, w, X = mlp_case
    out = tmp_path / "out.onnx"
    r = nmprune("prune", path, "-o", out, "--method", "sparsegpt", "--calibration", tmp_path / "data.safetensors",
                "--align", "none", "--pattern", pattern, "--save-masks", tmp_path / "m.safetensors", "--json",
                "--calibration-stages", "1", check=0)
    masks = load_file(str(tmp_path / "m.safetensors"))
    pruned = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    x1, h2 = mlp_inputs(model, X)
    sparsity = float(pattern[:-1]) / 100 if pattern.endswith("%") else None
    n, m = (2, 4) if sparsity else map(int, pattern.split(":"))
    # W1 [K=64, N=32] -> rows are outputs: W1.T; W2 [16, 32] (transB) is already outputs x inputs
    for name, Wrows, H, back in [("W1", w["W1"].T, x1.T @ x1, lambda a: a.T), ("W2", w["W2"], h2.T @ h2, lambda a: a)]:
        ref_w, ref_keep = sparsegpt_ref(Wrows, H, n, m, sparsity=sparsity)
        assert np.array_equal(masks[name].astype(bool), back(ref_keep)), (name, pattern)
        np.testing.assert_allclose(pruned[name], back(ref_w).astype(np.float32), rtol=2e-4, atol=2e-5)
        assert (pruned[name][~back(ref_keep)] == 0).all()
    rep = json.loads(r.out)
    cal = {x["name"]: x["calibration"] for x in rep["weights"]}
    assert all(c["method"] == "sparsegpt" and c["reconstructed"] for c in cal.values())
    assert all(c["output_error"] < c["output_error_magnitude"] for c in cal.values())
    assert rep["calibration"]["samples"] == 12 and rep["calibration"]["tokens"] == 120


@pytest.mark.parametrize("pattern,K", [("1:3", 387), ("5:6", 390), ("3:5", 255), ("64:256", 512)])
def test_sparsegpt_groups_that_do_not_tile_128_columns_stay_whole(tmp_path, rng, pattern, K):
    """M that does not divide the sweep's 128-column block, or exceeds it: the sweep takes blocks of whole
    groups (126, 125 or 256 columns here), so each group's mask is chosen once from weights every earlier
    column has updated.  Masks and weights equal the reference sweep's and check passes (with blocks of 128,
    groups that straddle two blocks were chosen from stale weights and misaligned, and read past the block)."""
    n, m = map(int, pattern.split(":"))
    W = rng.standard_normal((K, 16)).astype(np.float32)
    X = (rng.standard_normal((2 * K, K)) + rng.standard_normal((2 * K, 1))).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 16])], {"W": W})
    path, out = save(model, tmp_path / "m.onnx"), tmp_path / "o.onnx"
    save_file({"x": X}, str(tmp_path / "d.safetensors"))
    nmprune("prune", path, "-o", out, "--method", "sparsegpt", "--calibration", tmp_path / "d.safetensors",
            "--align", "none", "--pattern", pattern, "--save-masks", tmp_path / "mk.safetensors", "-q", check=0)
    keep = load_file(str(tmp_path / "mk.safetensors"))["W"].astype(bool)
    pruned = numpy_helper.to_array(onnx.load(str(out)).graph.initializer[0])
    x = X.astype(np.float64)
    ref_w, ref_keep = sparsegpt_ref(W.T, x.T @ x, n, m)
    assert np.array_equal(keep, ref_keep.T)
    np.testing.assert_allclose(pruned, ref_w.T.astype(np.float32), rtol=2e-4, atol=2e-5)
    assert (keep.T.reshape(16, -1, m).sum(axis=2) == n).all()
    assert nmprune("check", out, "--pattern", pattern, "--align", "none", "-q", check=0).code == 0


def test_sparsegpt_p_percent_prunes_the_tensors_count_and_passes_check(tmp_path, rng):
    """P%: the blocks of 128 columns (and a grouped Conv's groups) each prune a share of the tensor's count, so
    that the total is floor(P x numel + 0.5), as check counts it: rounding each block alone falls short on a
    128 x 387 MatMul at 30% (14860 of 14861) and a Conv of two groups of 195 inputs at 37% (432 of 433)."""
    W = rng.standard_normal((387, 128)).astype(np.float32)
    Wc = rng.standard_normal((6, 65, 3)).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "W"], ["y"]),
                    helper.make_node("Conv", ["s", "Wc"], ["z"], group=2, pads=[1, 1])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 387]),
                    helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n", 130, 9])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], {"W": W, "Wc": Wc})
    path = save(model, tmp_path / "m.onnx")
    save_file({"x": rng.standard_normal((4, 120, 387)).astype(np.float32),
               "s": rng.standard_normal((4, 2, 130, 9)).astype(np.float32)}, str(tmp_path / "d.safetensors"))
    for pattern, name, want in (("30%", "W", 14861), ("37%", "Wc", 433)):
        out = tmp_path / f"{name}.onnx"
        nmprune("prune", path, "-o", out, "--method", "sparsegpt", "--calibration", tmp_path / "d.safetensors",
                "--align", "none", "--pattern", pattern, "--save-masks", tmp_path / "k.safetensors", "-q", check=0)
        assert int((~load_file(str(tmp_path / "k.safetensors"))[name].astype(bool)).sum()) == want
        assert (weights(out)[name] == 0).sum() >= want
        nmprune("check", out, "--align", "none", "--pattern", pattern, "-q", check=0)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_stages_calibrate_later_layers_on_the_pruned_model(tmp_path, mlp_case, method):
    """Two stages: W2's statistics come from the model whose W1 is already as written."""
    path, model, w, X = mlp_case
    out = tmp_path / "o.onnx"
    r = nmprune("prune", path, "-o", out, "--method", method, "--calibration", tmp_path / "data.safetensors",
                "--align", "none", "--calibration-stats", tmp_path / "st.safetensors", "--calibration-stages", "2",
                "--json", check=0)
    st = load_file(str(tmp_path / "st.safetensors"))
    pruned = onnx.load(str(out))
    _, h2 = mlp_inputs(pruned, X)
    np.testing.assert_allclose(st["W2.sq"], (h2 ** 2).sum(0), rtol=1e-9)
    x1, dense_h2 = mlp_inputs(model, X)  # the first stage still sees the dense inputs
    assert not np.allclose(st["W2.sq"], (dense_h2 ** 2).sum(0), rtol=1e-3)
    if method == "sparsegpt":
        assert_gram(st["W2.H"][0], h2.T @ h2)
    np.testing.assert_allclose(st["W1.sq"], (x1 ** 2).sum(0), rtol=1e-12)
    assert json.loads(r.out)["calibration"]["passes"] == 2


def test_sparsegpt_output_is_closer_to_dense_than_magnitude(tmp_path, mlp_case):
    path, model, w, X = mlp_case
    data = tmp_path / "data.safetensors"
    for method in ("magnitude", "wanda", "sparsegpt"):
        extra = [] if method == "magnitude" else ["--method", method, "--calibration", data]
        nmprune("prune", path, "-o", tmp_path / f"{method}.onnx", "--align", "none", "-q", *extra, check=0)
        nmprune("check", tmp_path / f"{method}.onnx", "--align", "none", "-q", check=0)
    fid = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        r = nmprune("compare", path, tmp_path / f"{method}.onnx", "--calibration", data, "--json", check=0)
        fid[method] = json.loads(r.out)["outputs"][0]
    assert fid["sparsegpt"]["rel_l2"] < fid["magnitude"]["rel_l2"]
    assert fid["sparsegpt"]["cosine"] > fid["magnitude"]["cosine"]
    # compare's numbers against numpy on the same runs
    dense = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pr = ort.InferenceSession(str(tmp_path / "sparsegpt.onnx"), providers=["CPUExecutionProvider"])
    a = [dense.run(None, {"x": X[i]})[0].astype(np.float64) for i in range(len(X))]
    b = [pr.run(None, {"x": X[i]})[0].astype(np.float64) for i in range(len(X))]
    cos = np.mean([(u * v).sum() / np.linalg.norm(u) / np.linalg.norm(v) for u, v in zip(a, b)])
    rel = np.sqrt(sum(((u - v) ** 2).sum() for u, v in zip(a, b)) / sum((u ** 2).sum() for u in a))
    top1 = np.mean(np.concatenate([u.argmax(-1) == v.argmax(-1) for u, v in zip(a, b)]))
    assert fid["sparsegpt"]["cosine"] == pytest.approx(cos, rel=1e-6)
    assert fid["sparsegpt"]["rel_l2"] == pytest.approx(rel, rel=1e-6)
    assert fid["sparsegpt"]["top1"] == pytest.approx(top1)


def test_compare_of_a_model_with_itself_is_exact(tmp_path, mlp_case):
    path, _, _, _ = mlp_case
    r = nmprune("compare", path, path, "--calibration", tmp_path / "data.safetensors", "--json", check=0)
    o = json.loads(r.out)
    assert o["samples"] == 12
    assert o["outputs"][0]["cosine"] == 1.0 and o["outputs"][0]["rel_l2"] == 0.0 and o["outputs"][0]["top1"] == 1.0


def test_compare_gives_the_same_figures_whether_the_pruned_model_shares_the_dense_models_samples_or_not(tmp_path, mlp_case):
    """A pruned model takes the dense model's inputs, and one read of a sample serves both runs; a model whose
    inputs are declared otherwise (here: the batch axis fixed at the samples' 2) reads its own, and the figures
    are the same."""
    path, model, _, X = mlp_case
    data = tmp_path / "data.safetensors"
    out = tmp_path / "p.onnx"
    nmprune("prune", path, "-o", out, "--align", "none", "-q", check=0)
    fixed = onnx.load(str(out))
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "b"
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = X.shape[1]
    save(fixed, tmp_path / "fixed.onnx")
    shared = json.loads(nmprune("compare", path, out, "--calibration", data, "--json", check=0).out)
    own = json.loads(nmprune("compare", path, tmp_path / "fixed.onnx", "--calibration", data, "--json", check=0).out)
    assert shared["samples"] == own["samples"] == 12
    assert shared["outputs"] == own["outputs"]
    assert shared["outputs"][0]["cosine"] < 1.0
    # the pruned side's data are checked against its own inputs
    bad = onnx.load(str(out))
    bad.graph.input[0].type.tensor_type.shape.dim[-1].dim_value = 65
    save(bad, tmp_path / "bad.onnx")
    r = nmprune("compare", path, tmp_path / "bad.onnx", "--calibration", data, check=2)
    assert r.err.count("\n") == 1 and "data.safetensors" in r.err and "'x'" in r.err
    assert r.err.rstrip().endswith(f"the model takes 65 ({tmp_path / 'bad.onnx'})")


def test_one_element_outputs_take_the_cosine_over_the_samples(tmp_path, rng):
    """A score per sample: its own cosine is only its sign, so compare and sensitivity pool the samples."""
    W = rng.standard_normal((64, 32)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["score"], keepdims=0),
             helper.make_node("MatMul", ["x", "W"], ["wide"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 64])],
                   [helper.make_tensor_value_info("score", TensorProto.FLOAT, []),
                    helper.make_tensor_value_info("wide", TensorProto.FLOAT, [2, 5, 32])], {"W": W})
    path = save(model, tmp_path / "m.onnx")
    X = mlp_data(rng)
    save_file({"x": X}, str(tmp_path / "d.safetensors"))
    Wp = np.where(reference.mask(W, "2:4", 0, 1), W, 0)
    out = tmp_path / "o.onnx"
    nmprune("prune", path, "-o", out, "--align", "none", "-q", check=0)
    run = lambda m: [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}) for x in X]
    pruned_model = onnx.load(str(out))
    dense, pruned = run(model), run(pruned_model)
    a = np.array([d[0] for d in dense], np.float64)
    b = np.array([p[0] for p in pruned], np.float64)
    pooled = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert 0.5 < pooled < 0.9999  # the scores moved; per sample, every cosine would be 1
    cos_wide = [np.dot(d[1].ravel(), p[1].ravel()) / np.linalg.norm(d[1]) / np.linalg.norm(p[1])
                for d, p in zip(dense, pruned)]
    r = json.loads(nmprune("compare", path, out, "--calibration", tmp_path / "d.safetensors", "--json",
                           check=0).out)
    score, wide = r["outputs"]
    assert score["cosine"] == pytest.approx(pooled, rel=1e-6) and score["cosine_min"] is None
    assert wide["cosine"] == pytest.approx(np.mean(cos_wide), rel=1e-6)
    assert wide["cosine_min"] == pytest.approx(min(cos_wide), rel=1e-6)
    r = json.loads(nmprune("inspect", path, "--sensitivity", "--calibration", tmp_path / "d.safetensors",
                           "--align", "none", "--json", check=0).out)
    assert r["weights"][0]["fidelity_pruned_alone"] == pytest.approx((pooled + np.mean(cos_wide)) / 2, rel=1e-6)


def test_metadata_records_method_and_calibration(tmp_path, mlp_case):
    path, _, _, _ = mlp_case
    out = tmp_path / "o.onnx"
    nmprune("prune", path, "-o", out, "--method", "sparsegpt", "--calibration", tmp_path / "data.safetensors",
            "--calibration-samples", "5", "--align", "none", "-q", check=0)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    cal = json.loads(meta["nmprune.calibration"])
    assert cal["method"] == "sparsegpt" and cal["samples"] == 5 and cal["tokens"] == 50
    weights = json.loads(meta["nmprune.weights"])
    assert weights["W1"]["method"] == "sparsegpt" and weights["W1"]["reconstructed"] is True


def test_test_data_layout_gives_the_same_result_as_safetensors(tmp_path, mlp_case):
    path, _, _, X = mlp_case
    d = tmp_path / "td"
    for i in range(len(X)):
        (d / f"test_data_set_{i}").mkdir(parents=True)
        (d / f"test_data_set_{i}" / "input_0.pb").write_bytes(numpy_helper.from_array(X[i], "x").SerializeToString())
    for name, data in (("a", tmp_path / "data.safetensors"), ("b", d)):
        nmprune("prune", path, "-o", tmp_path / f"{name}.onnx", "--method", "sparsegpt", "--calibration", data,
                "--align", "none", "-q", check=0)
    wa = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "a.onnx")).graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "b.onnx")).graph.initializer}
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def _test_data(root, samples):
    """ONNX's test-data layout: test_data_set_<i>/input_<k>.pb, one TensorProto per file."""
    for i, tensors in enumerate(samples):
        (root / f"test_data_set_{i}").mkdir(parents=True)
        for k, t in enumerate(tensors):
            (root / f"test_data_set_{i}" / f"input_{k}.pb").write_bytes(t.SerializeToString())
    return root


def test_test_data_layout_feeds_a_scalar_input(tmp_path, rng):
    """A scalar's TensorProto has no dims: it feeds a rank-0 input, as the same values in safetensors do."""
    path = save(_gain_bias_model(rng), tmp_path / "m.onnx")
    X = rng.standard_normal((3, 2, 8)).astype(np.float32)
    bias = rng.standard_normal((2, 8)).astype(np.float32)
    gains = [np.array(g, np.float32) for g in (0.5, 2.0, 3.0)]
    d = _test_data(tmp_path / "td", [[numpy_helper.from_array(X[i], "x"), numpy_helper.from_array(bias, "bias"),
                                      numpy_helper.from_array(gains[i], "gain")] for i in range(3)])
    r = nmprune("prune", path, "--dry-run", "--method", "wanda", "--calibration", d, "--align", "none",
                "--calibration-stats", tmp_path / "st.safetensors", "--json", check=0)
    assert json.loads(r.out)["calibration"]["samples"] == 3
    want = sum((((X[i] + bias) * gains[i]).astype(np.float64) ** 2).sum(axis=0) for i in range(3))
    np.testing.assert_allclose(load_file(str(tmp_path / "st.safetensors"))["W.sq"], want, rtol=1e-6)


def limit_address_space_to_1gib():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.skipif("ASAN_OPTIONS" in __import__("os").environ,
                    reason="AddressSanitizer reserves more address space than the limit this test sets")
@pytest.mark.parametrize("field", ["raw_data", "float_data"])
def test_a_sample_that_claims_more_than_it_holds_is_refused_before_allocating(tmp_path, rng, field):
    """A TensorProto of a few bytes whose dims claim 2 GiB is bad data (exit 2, naming the file), not an
    allocation of what it claims: under a 1 GiB address-space limit the answer is the same."""
    path = save(_gain_bias_model(rng, gain=False), tmp_path / "m.onnx")
    x = TensorProto(name="x", data_type=TensorProto.FLOAT, dims=[1 << 26, 8])
    if field == "raw_data":
        x.raw_data = np.zeros(8, np.float32).tobytes()
    else:
        x.float_data.extend([0.0] * 8)
    d = _test_data(tmp_path / "td", [[x, numpy_helper.from_array(np.zeros((1, 8), np.float32), "bias")]])
    p = subprocess.run([NMPRUNE, "prune", str(path), "--dry-run", "--method", "wanda", "--calibration", str(d),
                        "--align", "none"], capture_output=True, text=True, preexec_fn=limit_address_space_to_1gib)
    assert p.returncode == 2, p.stderr
    assert "input_0.pb: tensor payload does not match its 536870912 elements" in p.stderr, p.stderr


def test_batch_rows_are_samples_when_the_rank_matches(tmp_path, rng):
    W = rng.standard_normal((16, 8)).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8])], {"W": W})
    path = save(model, tmp_path / "m.onnx")
    X = rng.standard_normal((40, 16)).astype(np.float32)
    save_file({"x": X}, str(tmp_path / "d.safetensors"))
    r = nmprune("prune", path, "--dry-run", "--method", "wanda", "--calibration", tmp_path / "d.safetensors",
                "--align", "none", "--json", check=0)
    assert json.loads(r.out)["calibration"]["samples"] == 40


def _gain_bias_model(rng, gain=True):
    """y = ((x + bias) * gain) @ W: a scalar input and a per-batch one beside the data."""
    W = rng.standard_normal((8, 8)).astype(np.float32)
    nodes = [helper.make_node("Add", ["x", "bias"], ["xg" if not gain else "xb"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8]),
              helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["b", 8])]
    if gain:
        nodes.append(helper.make_node("Mul", ["xb", "gain"], ["xg"]))
        inputs.append(helper.make_tensor_value_info("gain", TensorProto.FLOAT, []))
    nodes.append(helper.make_node("MatMul", ["xg", "W"], ["y"]))
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8])], {"W": W})


def test_a_tensor_of_one_sample_goes_with_every_sample(tmp_path, rng):
    """A scalar input takes a rank-0 value, and a tensor holding one sample is shared by all: the statistics are
    those of feeding it beside each sample (in batches, where it is repeated along axis 0)."""
    path = save(_gain_bias_model(rng), tmp_path / "m.onnx")
    X = rng.standard_normal((6, 3, 8)).astype(np.float32)
    bias = rng.standard_normal((1, 3, 8)).astype(np.float32)
    gains = np.array([0.5, 2.0, 3.0, 1.0, 4.0, 0.25], np.float32)

    def sq(files):
        save_file(files, str(tmp_path / "d.safetensors"))
        r = nmprune("prune", path, "--dry-run", "--method", "wanda", "--calibration", tmp_path / "d.safetensors",
                    "--align", "none", "--calibration-stats", tmp_path / "st.safetensors", "--json", check=0)
        assert json.loads(r.out)["calibration"]["samples"] == 6
        return load_file(str(tmp_path / "st.safetensors"))["W.sq"]

    xb = (X + bias).astype(np.float32)
    want = ((xb * np.float32(3.0)).astype(np.float64) ** 2).sum(axis=(0, 1))
    np.testing.assert_allclose(sq({"x": X, "bias": bias, "gain": np.array(3.0, np.float32)}), want, rtol=1e-6)
    np.testing.assert_allclose(sq({"x": X, "bias": bias, "gain": np.full(1, 3.0, np.float32)}), want, rtol=1e-6)
    want = ((xb * gains[:, None, None]).astype(np.float64) ** 2).sum(axis=(0, 1))
    np.testing.assert_allclose(sq({"x": X, "bias": bias, "gain": gains}), want, rtol=1e-6)
    # rows of batch 1: the bias's one row goes with each of the 18 rows of x
    rows = X.reshape(18, 8)
    save_file({"x": rows, "bias": bias[0, :1], "gain": np.array(2.0, np.float32)}, str(tmp_path / "d.safetensors"))
    r = nmprune("prune", path, "--dry-run", "--method", "wanda", "--calibration", tmp_path / "d.safetensors",
                "--align", "none", "--calibration-stats", tmp_path / "st.safetensors", "--json", check=0)
    assert json.loads(r.out)["calibration"]["samples"] == 18
    want = (((rows + bias[0, :1]) * np.float32(2.0)).astype(np.float64) ** 2).sum(axis=0)
    np.testing.assert_allclose(load_file(str(tmp_path / "st.safetensors"))["W.sq"], want, rtol=1e-6)
    # without the scalar, samples run in batches: the shared bias is repeated beside each sample of a batch
    path = save(_gain_bias_model(rng, gain=False), tmp_path / "m2.onnx")
    save_file({"x": X, "bias": bias}, str(tmp_path / "d.safetensors"))
    r = nmprune("prune", path, "--dry-run", "--method", "wanda", "--calibration", tmp_path / "d.safetensors",
                "--align", "none", "--calibration-stats", tmp_path / "st.safetensors", "--json", check=0)
    assert json.loads(r.out)["calibration"]["samples"] == 6
    np.testing.assert_allclose(load_file(str(tmp_path / "st.safetensors"))["W.sq"],
                               (xb.astype(np.float64) ** 2).sum(axis=(0, 1)), rtol=1e-6)


def test_tensors_that_hold_different_numbers_of_samples_are_refused(tmp_path, rng):
    path = save(_gain_bias_model(rng), tmp_path / "m.onnx")
    X = rng.standard_normal((6, 3, 8)).astype(np.float32)
    save_file({"x": X, "bias": X[:4], "gain": np.array(1.0, np.float32)}, str(tmp_path / "d.safetensors"))
    r = nmprune("prune", path, "-o", tmp_path / "o.onnx", "--method", "wanda", "--calibration",
                tmp_path / "d.safetensors", "--align", "none", check=2)
    assert "tensor 'bias' holds 4 samples, tensor 'x' 6" in r.err
    save_file({"x": X, "bias": X, "gain": np.ones((1, 1), np.float32)}, str(tmp_path / "d.safetensors"))
    r = nmprune("prune", path, "-o", tmp_path / "o.onnx", "--method", "wanda", "--calibration",
                tmp_path / "d.safetensors", "--align", "none", check=2)
    assert "tensor 'gain' has rank 2; input 'gain' takes rank 0" in r.err
    assert not (tmp_path / "o.onnx").exists()


def _branches_model(rng, r="r"):
    """An If on c: its then branch holds an If on c2, whose branches read Wn (on relu(x) + 1, computed in the
    inner branch) and Wt (on relu(x), computed in the outer branch); its else branch computes in fp16 through
    Casts (We, fp32 in the file).  Wm reads the If's output in the main graph."""
    w = {k: rng.standard_normal(s).astype(np.float32) for k, s in
         {"Wn": (16, 8), "Wt": (16, 8), "We": (16, 8), "Wm": (8, 8)}.items()}
    out = lambda n: [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)]
    inner = helper.make_node(
        "If", ["c2"], ["yi"], name="inner",
        then_branch=helper.make_graph([helper.make_node("Add", [r, "one"], ["r1"]),
                                       helper.make_node("MatMul", ["r1", "Wn"], ["yn"], name="mm_n")],
                                      "inner_then", [], out("yn"), [numpy_helper.from_array(w["Wn"], "Wn")]),
        else_branch=helper.make_graph([helper.make_node("MatMul", [r, "Wt"], ["yt"], name="mm_t")],
                                      "inner_else", [], out("yt")))
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], [r]), inner], "then", [], out("yi"),
                               [numpy_helper.from_array(np.float32(1.0), "one")])
    else_g = helper.make_graph([helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
                                helper.make_node("Cast", ["We"], ["Wh"], to=TensorProto.FLOAT16),
                                helper.make_node("MatMul", ["xh", "Wh"], ["yh"], name="mm_e"),
                                helper.make_node("Cast", ["yh"], ["ye"], to=TensorProto.FLOAT)],
                               "else", [], out("ye"), [numpy_helper.from_array(w["We"], "We")])
    nodes = [helper.make_node("If", ["c"], ["y"], name="outer", then_branch=then_g, else_branch=else_g),
             helper.make_node("MatMul", ["y", "Wm"], ["z"], name="mm_m")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16]),
                           helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                           helper.make_tensor_value_info("c2", TensorProto.BOOL, [])],
                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 8])],
                   {"Wt": w["Wt"], "Wm": w["Wm"]})
    return model, w


@pytest.mark.parametrize("r", ["r", "nmprune.tap.1"])
def test_weights_inside_if_branches_take_the_statistics_of_the_samples_that_ran_them(tmp_path, rng, r):
    """Each branch weight's statistics sum over the samples that took its branch, nested Ifs included, and
    whatever type the branch computes in; the main graph's weight sees every sample.  The names the taps add
    never meet the model's own."""
    model, w = _branches_model(rng, r)
    path = save(model, tmp_path / "m.onnx")
    X = rng.standard_normal((12, 3, 16)).astype(np.float32)
    c = np.array([1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 1, 1], bool)
    c2 = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1], bool)
    save_file({"x": X, "c": c, "c2": c2}, str(tmp_path / "d.safetensors"))
    r = nmprune("prune", path, "--dry-run", "--method", "sparsegpt", "--calibration", tmp_path / "d.safetensors",
                "--align", "none", "--calibration-stats", tmp_path / "st.safetensors", "--calibration-stages", "1",
                "--json", check=0)
    report = {x["name"]: x for x in json.loads(r.out)["weights"]}
    assert {k: report[k]["calibration"]["method"] for k in w} == {k: "sparsegpt" for k in w}
    st = load_file(str(tmp_path / "st.safetensors"))
    relu = np.maximum(X, 0).astype(np.float64)
    acts = {"Wn": (relu + 1)[c & c2], "Wt": relu[c & ~c2],
            "We": X.astype(np.float16).astype(np.float64)[~c]}
    acts["Wm"] = np.stack([activations(model, {"x": X[i], "c": np.array(c[i]), "c2": np.array(c2[i])}, ["y"])["y"]
                           for i in range(12)]).astype(np.float64)
    for k, a in acts.items():
        rows = a.reshape(-1, a.shape[-1])
        np.testing.assert_allclose(st[k + ".sq"], (rows ** 2).sum(0), rtol=1e-6, err_msg=k)
        assert_gram(st[k + ".H"][0], rows.T @ rows)
    # the output runs, and takes both branches as the dense model does
    out = tmp_path / "o.onnx"
    nmprune("prune", path, "-o", out, "--method", "sparsegpt", "--calibration", tmp_path / "d.safetensors",
            "--align", "none", "-q", check=0)
    # the taps lived only in the copy that ran: the output's graphs are the input's
    def structure(g):
        return [o.name for o in g.output] + [(n.op_type, list(n.input), list(n.output),
                                              [structure(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH])
                                             for n in g.node]
    assert structure(onnx.load(str(out)).graph) == structure(model.graph)
    pruned = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for i in (0, 5):
        assert pruned.run(None, {"x": X[i], "c": np.array(c[i]), "c2": np.array(c2[i])})[0].shape == (3, 8)


def test_a_branch_no_sample_took_is_pruned_by_magnitude(tmp_path, rng):
    model, w = _branches_model(rng)
    path = save(model, tmp_path / "m.onnx")
    X = rng.standard_normal((4, 3, 16)).astype(np.float32)
    save_file({"x": X, "c": np.ones(1, bool), "c2": np.ones(1, bool)}, str(tmp_path / "d.safetensors"))
    r = nmprune("prune", path, "-o", tmp_path / "o.onnx", "--method", "wanda", "--calibration",
                tmp_path / "d.safetensors", "--align", "none", "--json", check=0)
    report = {x["name"]: x["calibration"] for x in json.loads(r.out)["weights"]}
    for k in ("Wt", "We"):
        assert report[k] == {"method": "magnitude",
                             "note": "no calibration sample took the If branch that reads it: pruned by magnitude"}
    assert report["Wn"]["method"] == report["Wm"]["method"] == "wanda"
    got = weights(tmp_path / "o.onnx")
    for k in ("Wt", "We"):
        keep = reference.mask(w[k], "2:4", 0, 1)
        assert np.array_equal(got[k], np.where(keep, w[k], 0)), k


def _loop(body_nodes, extra_inputs=(), carried_out="h_out"):
    """Loop n=3 times over h (carried), the body given; condition passed through."""
    f = lambda n, t=TensorProto.FLOAT: helper.make_tensor_value_info(n, t, None)
    return helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"])] + body_nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), f("h_in")],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), f(carried_out)])


def test_weights_inside_loop_and_scan_bodies_take_the_statistics_of_every_iteration(tmp_path, rng):
    """A Loop's body runs three times per sample: its weight's statistics sum the activations of every
    iteration (tapped as a new scan output, stacked on a leading axis).  A Scan's body runs once per step of
    its scan input: the same, through its scan_output_axes list, which the tap extends."""
    W = (rng.standard_normal((16, 16)) / 4).astype(np.float32)
    Ws = rng.standard_normal((16, 8)).astype(np.float32)
    scan_body = helper.make_graph(
        [helper.make_node("Relu", ["x_t"], ["r_t"]), helper.make_node("MatMul", ["r_t", "Ws"], ["y_t"], name="mm_s")],
        "scan_body", [helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [16])],
        [helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [8])])
    model = _model([helper.make_node("Loop", ["n", "", "x"], ["h"], body=_loop(
                        [helper.make_node("MatMul", ["h_in", "Wl"], ["h_out"], name="mm_l")])),
                    helper.make_node("Scan", ["h"], ["ys"], body=scan_body, num_scan_inputs=1,
                                     scan_output_axes=[0])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 16])],
                   [helper.make_tensor_value_info("ys", TensorProto.FLOAT, [3, 8])],
                   {"Wl": W, "Ws": Ws, "n": np.array(3, np.int64)})
    path = save(model, tmp_path / "m.onnx")
    X = rng.standard_normal((5, 3, 16)).astype(np.float32)
    save_file({"x": X}, str(tmp_path / "d.safetensors"))
    r = nmprune("prune", path, "-o", tmp_path / "o.onnx", "--method", "sparsegpt", "--calibration",
                tmp_path / "d.safetensors", "--align", "none", "--calibration-stats", tmp_path / "st.safetensors",
                "--calibration-stages", "1", "--json", check=0)
    assert {w["name"]: w["calibration"]["method"] for w in json.loads(r.out)["weights"]} == {"Wl": "sparsegpt",
                                                                                             "Ws": "sparsegpt"}
    st = load_file(str(tmp_path / "st.safetensors"))
    hs, relus = [], []
    for x in X.astype(np.float64):
        h = x
        for _ in range(3):
            hs.append(h)
            h = (h.astype(np.float32) @ W).astype(np.float64)
        relus.append(np.maximum(h, 0))
    for name, rows in (("Wl", np.concatenate(hs)), ("Ws", np.concatenate(relus))):
        np.testing.assert_allclose(st[name + ".sq"], (rows ** 2).sum(0), rtol=1e-5, err_msg=name)
        assert_gram(st[name + ".H"][0], rows.T @ rows)
    out = ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": X[0]})
    assert out[0].shape == (3, 8)


def test_a_loop_that_never_runs_leaves_its_weight_to_magnitude_saying_so(tmp_path, rng):
    W = rng.standard_normal((16, 16)).astype(np.float32)
    model = _model([helper.make_node("Loop", ["n", "", "x"], ["h"], body=_loop(
                        [helper.make_node("MatMul", ["h_in", "Wl"], ["h_out"], name="mm_l")]))],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 16]),
                    helper.make_tensor_value_info("n", TensorProto.INT64, [])],
                   [helper.make_tensor_value_info("h", TensorProto.FLOAT, [3, 16])], {"Wl": W})
    path = save(model, tmp_path / "m.onnx")
    save_file({"x": rng.standard_normal((4, 3, 16)).astype(np.float32), "n": np.array(0, np.int64)},
              str(tmp_path / "d.safetensors"))
    r = nmprune("prune", path, "-o", tmp_path / "o.onnx", "--method", "wanda", "--calibration",
                tmp_path / "d.safetensors", "--align", "none", "--json", check=0)
    assert json.loads(r.out)["weights"][0]["calibration"] == {
        "method": "magnitude", "note": "no calibration sample ran the loop that reads it: pruned by magnitude"}
    assert np.array_equal(weights(tmp_path / "o.onnx")["Wl"], np.where(reference.mask(W, "2:4", 0, 1), W, 0))


def test_loops_the_taps_cannot_stack_fall_back_to_magnitude_saying_why(tmp_path, rng):
    """An If inside a loop body (its other branch's empty tensor would break the stack), and a loop whose values
    change shape between iterations (ONNX Runtime refuses the stack: those weights fall back, the rest run again)."""
    W = rng.standard_normal((16, 16)).astype(np.float32)
    Wm = rng.standard_normal((16, 16)).astype(np.float32)
    f = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
    branchy = _loop([helper.make_node(
        "If", ["flag"], ["h_out"],
        then_branch=helper.make_graph([helper.make_node("MatMul", ["h_in", "Wi"], ["t"], name="mm_i")], "t", [],
                                      [f("t")]),
        else_branch=helper.make_graph([helper.make_node("Identity", ["h_in"], ["e"])], "e", [], [f("e")]))])
    growing = _loop([helper.make_node("MatMul", ["h_in", "Wg"], ["g"], name="mm_g"),
                     helper.make_node("Concat", ["g", "h_in"], ["h_out"], axis=0)])
    model = _model([helper.make_node("MatMul", ["x", "Wm"], ["xm"], name="mm_main"),
                    helper.make_node("Loop", ["n", "", "xm"], ["a"], body=branchy),
                    helper.make_node("Loop", ["n", "", "a"], ["b"], body=growing)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16]),
                    helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                   [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
                   {"Wi": W, "Wg": W.copy(), "Wm": Wm, "n": np.array(3, np.int64)})
    path = save(model, tmp_path / "m.onnx")
    X = rng.standard_normal((4, 2, 16)).astype(np.float32)
    save_file({"x": X, "flag": np.array(True)}, str(tmp_path / "d.safetensors"))
    r = nmprune("prune", path, "-o", tmp_path / "o.onnx", "--method", "wanda", "--calibration",
                tmp_path / "d.safetensors", "--align", "none", "--calibration-stages", "1",
                "--calibration-stats", tmp_path / "st.safetensors", "--json", check=0)
    report = {w["name"]: w["calibration"] for w in json.loads(r.out)["weights"]}
    assert report["Wi"] == {"method": "magnitude", "note": "read inside an If inside a Loop body: pruned by magnitude"}
    assert report["Wg"]["method"] == "magnitude"
    assert report["Wg"]["note"].startswith("read inside a loop whose values ONNX Runtime could not stack (")
    assert report["Wm"]["method"] == "wanda"  # its statistics, run again without the loop's, are whole
    np.testing.assert_allclose(load_file(str(tmp_path / "st.safetensors"))["Wm.sq"],
                               (X.astype(np.float64) ** 2).sum(axis=(0, 1)), rtol=1e-12)
    got = weights(tmp_path / "o.onnx")
    for name in ("Wi", "Wg"):
        assert np.array_equal(got[name], np.where(reference.mask(W, "2:4", 0, 1), W, 0)), name
    only = _model([helper.make_node("Loop", ["n", "", "x"], ["b"], body=growing)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                  [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)], {"Wg": W, "n": np.array(3, np.int64)})
    save_file({"x": X}, str(tmp_path / "d2.safetensors"))
    r = nmprune("prune", save(only, tmp_path / "only.onnx"), "--dry-run", "--method", "wanda", "--calibration",
                tmp_path / "d2.safetensors", "--align", "none", check=0)
    assert ("calibration: wanda ran no sample: no selected weight can take its statistics (the notes say why)"
            in r.out + r.err)


def _npz_zip64(path, **arrays):
    """np.savez's archive with every size and offset in zip64 records, as a file past 4 GiB has them."""
    import zipfile
    limits = zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT
    zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = 64, 1
    try:
        np.savez(path, **arrays)
    finally:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = limits
    raw = open(path, "rb").read()
    assert b"PK\x06\x06" in raw and b"PK\x06\x07" in raw  # the zip64 end record and its locator


@pytest.mark.parametrize("form", ["savez", "savez_compressed", "zip64"])
def test_npz_data_gives_what_safetensors_gives(tmp_path, mlp_case, rng, form):
    """The same arrays as a .npz (stored, deflated, or with zip64 records) calibrate to the very same statistics
    and output; a 0-d array is a scalar input's value, and one sample is shared, as in safetensors."""
    path, model, w, X = mlp_case
    save = {"savez": np.savez, "savez_compressed": np.savez_compressed, "zip64": _npz_zip64}[form]
    save(str(tmp_path / "data.npz"), x=X)
    outs = {}
    for data in ("data.safetensors", "data.npz"):
        nmprune("prune", path, "-o", tmp_path / f"{data}.onnx", "--method", "sparsegpt", "--calibration",
                tmp_path / data, "--align", "none", "--calibration-stats", tmp_path / f"{data}.st", "-q", check=0)
        outs[data] = (tmp_path / f"{data}.onnx").read_bytes(), (tmp_path / f"{data}.st").read_bytes()
    assert outs["data.npz"] == outs["data.safetensors"]
    gpath = tmp_path / "g.onnx"
    gpath.write_bytes(_gain_bias_model(rng).SerializeToString())
    Xg = rng.standard_normal((6, 3, 8)).astype(np.float32)
    bias = rng.standard_normal((1, 3, 8)).astype(np.float32)
    save(str(tmp_path / "g.npz"), x=Xg, bias=bias, gain=np.array(3.0, np.float32))
    r = nmprune("prune", gpath, "--dry-run", "--method", "wanda", "--calibration", tmp_path / "g.npz", "--align", "none",
                "--calibration-stats", tmp_path / "g.st", "--json", check=0)
    assert json.loads(r.out)["calibration"]["samples"] == 6
    want = (((Xg + bias) * np.float32(3.0)).astype(np.float64) ** 2).sum(axis=(0, 1))
    np.testing.assert_allclose(load_file(str(tmp_path / "g.st"))["W.sq"], want, rtol=1e-6)


def test_npz_errors_name_the_file_and_the_member(tmp_path, mlp_case):
    import zipfile
    path, _, _, X = mlp_case
    out = tmp_path / "o.onnx"

    def fails(data, *want):
        r = nmprune("prune", path, "-o", out, "--method", "wanda", "--calibration", data, "--align", "none", check=2)
        assert r.err.count("\n") == 1 and str(data) in r.err, r.err
        for text in want:
            assert text in r.err, r.err
        assert not out.exists()

    np.savez(tmp_path / "f.npz", x=np.asfortranarray(X.reshape(12, 640)).reshape(12, 2, 5, 64, order="F"))
    fails(tmp_path / "f.npz", "member 'x' is in Fortran order", "np.ascontiguousarray")
    np.savez(tmp_path / "b.npz", x=X.astype(">f4"))
    fails(tmp_path / "b.npz", "member 'x' is big-endian")
    np.savez(tmp_path / "s.npz", x=np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]))
    fails(tmp_path / "s.npz", "member 'x': structured arrays are not read")
    np.savez(tmp_path / "c.npz", x=X.astype(np.complex64))
    fails(tmp_path / "c.npz", "member 'x': dtype <c8 is not read")
    np.savez(tmp_path / "n.npz", y=X)
    fails(tmp_path / "n.npz", "tensor 'y' names no input of the model")
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as z:
        z.writestr("notes.txt", "calibration samples")
    fails(tmp_path / "t.npz", "member 'notes.txt' is not a .npy array")
    np.savez(tmp_path / "k.npz", x=X)
    raw = bytearray((tmp_path / "k.npz").read_bytes())
    raw[200] ^= 0x40  # inside the stored array's data
    (tmp_path / "k.npz").write_bytes(bytes(raw))
    fails(tmp_path / "k.npz", "member 'x' fails its CRC-32 check")
    np.savez_compressed(tmp_path / "z.npz", x=X)
    raw = (tmp_path / "z.npz").read_bytes()
    start = raw.index(b"x.npy") + 5
    (tmp_path / "z.npz").write_bytes(raw[:start + 20] + bytes(64) + raw[start + 84:])
    fails(tmp_path / "z.npz", "member 'x'")
    (tmp_path / "short.npz").write_bytes(raw[: len(raw) // 2])
    fails(tmp_path / "short.npz", "not a .npz archive")
    (tmp_path / "data.npy").write_bytes(b"")
    fails(tmp_path / "data.npy", "a test-data directory, a .safetensors or a .npz file")


def test_conv_sparsegpt_reconstruction_matches_reference(tmp_path, rng):
    model, w = conv_model(rng)
    X = rng.standard_normal((4, 2, 8, 9, 7)).astype(np.float32)
    save_file({"x": X}, str(tmp_path / "data.safetensors"))
    path = save(model, tmp_path / "conv.onnx")
    out = tmp_path / "o.onnx"
    nmprune("prune", path, "-o", out, "--method", "sparsegpt", "--calibration", tmp_path / "data.safetensors",
            "--align", "none", "--save-masks", tmp_path / "m.safetensors", "-q", check=0)
    pruned = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    masks = load_file(str(tmp_path / "m.safetensors"))
    W1 = w["W1"]  # [16, 4, 3, 3], 2 groups of 8 outputs; inputs k = (a*3+e)*4 + c
    for g in range(2):
        H = np.zeros((36, 36))
        for s in range(len(X)):
            rows = im2col(X[s].astype(np.float64), (3, 3), (2, 1), (1, 0), (2, 1), (2, 1), 2, 4)[g]
            H += rows.T @ rows
        Wg = W1[g * 8:(g + 1) * 8].transpose(0, 2, 3, 1).reshape(8, 36)
        ref_w, ref_keep = sparsegpt_ref(Wg, H, 2, 4)
        back = lambda a: a.reshape(8, 3, 3, 4).transpose(0, 3, 1, 2)
        assert np.array_equal(masks["W1"][g * 8:(g + 1) * 8].astype(bool), back(ref_keep))
        np.testing.assert_allclose(pruned["W1"][g * 8:(g + 1) * 8], back(ref_w).astype(np.float32), rtol=2e-4, atol=2e-5)


def deconv_model(rng):
    """x [n, 16, 5, 6] -> ConvTranspose W1 [16, 8, 3, 3] (stride 2, padded: its patches overlap) -> Relu ->
    ConvTranspose W2 [8, 8, 2, 2] (stride 2: 2x upsampling) -> a grouped ConvTranspose W3 [8, 2, 1, 1]."""
    W1 = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    W2 = rng.standard_normal((8, 8, 2, 2)).astype(np.float32)
    W3 = rng.standard_normal((8, 2, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "W1"], ["c1"], name="up1", strides=[2, 2], pads=[1, 1, 0, 0]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("ConvTranspose", ["r1", "W2"], ["c2"], name="up2", strides=[2, 2]),
        helper.make_node("ConvTranspose", ["c2", "W3"], ["y"], name="mix", group=2),
    ]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 5, 6])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"W1": W1, "W2": W2, "W3": W3})
    return m, {"W1": W1, "W2": W2, "W3": W3}


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_conv_transpose_takes_the_statistics_of_its_input_pixels(tmp_path, rng, method):
    """ConvTranspose multiplies each input pixel's channels by the weight before scattering the products into
    the output: its statistics are those of the input pixels (no unfolding), its group axis the input channels.
    Wanda's masks and sparsegpt's sweep match the references on them, with the rows of the weight's 2-D view
    (output channel, kernel position); a grouped ConvTranspose is left to magnitude, saying so."""
    model, w = deconv_model(rng)
    path = save(model, tmp_path / "deconv.onnx")
    X = (rng.standard_normal((6, 2, 16, 5, 6)) * np.exp(rng.standard_normal(16))[:, None, None]).astype(np.float32)
    save_file({"x": X}, str(tmp_path / "d.safetensors"))
    out = tmp_path / "o.onnx"
    rep = json.loads(nmprune("prune", path, "-o", out, "--ops", "ConvTranspose", "--align", "none", "--method",
                             method, "--calibration", tmp_path / "d.safetensors", "--calibration-stages", "1",
                             "--calibration-stats", tmp_path / "st.safetensors", "--save-masks",
                             tmp_path / "m.safetensors", "--json", check=0).out)
    cal = {x["name"]: x["calibration"] for x in rep["weights"]}
    assert cal["W3"] == {"method": "magnitude", "note": "read by a grouped ConvTranspose: pruned by magnitude"}
    assert cal["W1"]["method"] == cal["W2"]["method"] == method
    st = load_file(str(tmp_path / "st.safetensors"))
    masks = load_file(str(tmp_path / "m.safetensors"))
    pruned = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    r1 = np.concatenate([activations(model, {"x": X[i]}, ["r1"])["r1"] for i in range(len(X))])
    for name, x in (("W1", X.reshape(-1, 16, 5, 6)), ("W2", r1)):
        pixels = x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1]).astype(np.float64)
        np.testing.assert_allclose(st[f"{name}.sq"], (pixels ** 2).sum(0), rtol=1e-6)
        W = w[name]
        if method == "wanda":
            score = (np.abs(W).astype(np.float64) * np.sqrt((pixels ** 2).sum(0))[:, None, None, None])
            keep = reference.mask(W, "2:4", 0, 1, magnitude=score.astype(np.float32).astype(np.float64))
            assert np.array_equal(masks[name].astype(bool), keep), name
            assert np.array_equal(pruned[name], np.where(keep, W, 0)), name
            continue
        H = pixels.T @ pixels
        assert_gram(st[f"{name}.H"][0], H)
        ref_w, ref_keep = sparsegpt_ref(W.reshape(W.shape[0], -1).T, H, 2, 4)  # rows (out, kh, kw) x inputs
        back = lambda a: a.T.reshape(W.shape)
        assert np.array_equal(masks[name].astype(bool), back(ref_keep)), name
        np.testing.assert_allclose(pruned[name], back(ref_w).astype(np.float32), rtol=2e-4, atol=2e-5)
        assert cal[name]["output_error"] < cal[name]["output_error_magnitude"], name
    nmprune("check", out, "--ops", "ConvTranspose", "--align", "none", "-q", check=0)


def test_fp16_weights_are_rebuilt_in_fp16(tmp_path, rng):
    W = rng.standard_normal((32, 16)).astype(np.float16)
    model = _model([helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
                    helper.make_node("MatMul", ["xh", "W"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 32])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["b", 16])], {"W": W})
    path = save(model, tmp_path / "m.onnx")
    X = rng.standard_normal((64, 32)).astype(np.float32)
    save_file({"x": X}, str(tmp_path / "d.safetensors"))
    out = tmp_path / "o.onnx"
    nmprune("prune", path, "-o", out, "--method", "sparsegpt", "--calibration", tmp_path / "d.safetensors",
            "--align", "none", "-q", check=0)
    got = numpy_helper.to_array(onnx.load(str(out)).graph.initializer[0])
    assert got.dtype == np.float16
    xh = X.astype(np.float16).astype(np.float64)
    ref_w, keep = sparsegpt_ref(W.astype(np.float64).T, xh.T @ xh, 2, 4)
    np.testing.assert_array_equal(got, np.where(keep.T, ref_w.T, 0).astype(np.float16))
    nmprune("check", out, "--align", "none", "-q", check=0)


def test_errors(tmp_path, mlp_case):
    path, _, _, X = mlp_case
    data = tmp_path / "data.safetensors"
    out = tmp_path / "o.onnx"
    r = nmprune("prune", path, "-o", out, "--method", "wanda", check=2)
    assert "needs --calibration" in r.err
    r = nmprune("prune", path, "-o", out, "--calibration", data, check=2)
    assert "--method wanda or sparsegpt" in r.err
    r = nmprune("prune", path, "-o", out, "--method", "sparsegpt", "--calibration", data, "--pattern", "2:4@v4",
                "--align", "none", check=2)
    assert "2:4@v4" in r.err and "sparsegpt" in r.err
    r = nmprune("prune", path, "-o", out, "--method", "wanda", "--calibration", data, "--ort-library",
                tmp_path / "missing.so", check=6)
    assert "ONNX Runtime" in r.err and "missing.so" in r.err
    save_file({"y": X}, str(tmp_path / "bad.safetensors"))
    r = nmprune("prune", path, "-o", out, "--method", "wanda", "--calibration", tmp_path / "bad.safetensors", check=2)
    assert "'y' names no input" in r.err
    save_file({"x": X.astype(np.float64)}, str(tmp_path / "f64.safetensors"))
    r = nmprune("prune", path, "-o", out, "--method", "wanda", "--calibration", tmp_path / "f64.safetensors", check=2)
    assert "DOUBLE" in r.err and "FLOAT" in r.err
    save_file({"x": X[:, 0, 0]}, str(tmp_path / "rank.safetensors"))
    r = nmprune("prune", path, "-o", out, "--method", "wanda", "--calibration", tmp_path / "rank.safetensors", check=2)
    assert "rank" in r.err
    save_file({"x": X[:, :, :3]}, str(tmp_path / "dim.safetensors"))
    r = nmprune("prune", path, "-o", out, "--method", "wanda", "--calibration", tmp_path / "dim.safetensors", check=2)
    assert "dimension 1 of 3" in r.err and "5" in r.err
    (tmp_path / "empty").mkdir()
    r = nmprune("prune", path, "-o", out, "--method", "wanda", "--calibration", tmp_path / "empty", check=2)
    assert "test_data_set" in r.err
    r = nmprune("compare", path, path, check=2)
    assert "--calibration" in r.err
    assert not out.exists()


def test_a_model_the_runtime_refuses_is_named_with_its_reason(tmp_path, mlp_case):
    """A model nmprune reads but ONNX Runtime does not (an IR version newer than it knows): exit 6, one line
    naming the file, the runtime's version and its reason, without the runtime's source location."""
    path, _, _, X = mlp_case
    data = tmp_path / "data.safetensors"
    save_file({"x": X}, str(data))
    m = onnx.load(str(path))
    m.ir_version = 99
    newer = tmp_path / "newer.onnx"
    onnx.save(m, str(newer))
    for args in (["prune", newer, "-o", tmp_path / "o.onnx", "--method", "wanda", "--calibration", data],
                 ["compare", newer, path, "--calibration", data]):
        r = nmprune(*args, check=6)
        head = f"nmprune: error: {newer}: ONNX Runtime {ort.__version__} cannot load the model: "
        assert re.fullmatch(re.escape(head) + r"Unsupported model IR version: 99, max supported IR version: \d+\n",
                            r.err), r.err
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("stages", ["1", "2"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_permute_calibrates_the_permuted_model(tmp_path, rng, method, stages):
    """--permute with a calibrated method: the channels are permuted first (searched on magnitudes), then the
    permuted model is run on the data and each weight decided as permuted.  So its weights are exactly those of
    calibrating the --permute-only output, and it computes what that pruned model computes.  In one stage the
    second Conv's statistics come from a run with the first Conv's weight permuted but not yet decided."""
    model, _ = conv_model(rng)
    src = save(model, tmp_path / "c.onnx")
    save_file({"x": rng.standard_normal((6, 1, 8, 9, 7)).astype(np.float32)}, str(tmp_path / "d.safetensors"))
    common = ["--align", "none", "--method", method, "--calibration", tmp_path / "d.safetensors", "-q",
              "--calibration-stages", stages]
    both, permuted, after = tmp_path / "both.onnx", tmp_path / "perm.onnx", tmp_path / "after.onnx"
    nmprune("prune", src, "-o", both, "--permute", *common)
    nmprune("prune", src, "-o", permuted, "--permute-only", "--align", "none", "-q")
    nmprune("prune", permuted, "-o", after, *common)
    plain = tmp_path / "plain.onnx"
    nmprune("prune", src, "-o", plain, *common)
    got, want, unpermuted = (weights_of(p) for p in (both, after, plain))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert not np.array_equal(got["W2"], unpermuted["W2"])  # the channels did move
    assert nmprune("check", both, "--align", "none", "-q").code == 0
    meta = {p.key: p.value for p in onnx.load(str(both)).metadata_props}
    assert json.loads(meta["nmprune.calibration"])["method"] == method
    x = rng.standard_normal((2, 8, 9, 7)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run(both), run(after), rtol=1e-5, atol=1e-6)
    r = nmprune("prune", src, "-o", tmp_path / "o.onnx", "--permute-only", *common, check=2)
    assert f"--method {method} chooses masks; --permute-only writes none" in r.err


def weights_of(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


REAL = __import__("pathlib").Path(__file__).resolve().parents[2] / ".cache" / "real-models"


@pytest.mark.skipif(not (REAL / "ppocrv4_rec.onnx").exists(), reason="real models not unpacked: make deps")
def test_real_ocr_recognizer_sparsegpt_keeps_more_than_magnitude(tmp_path):
    """PP-OCRv4's recognizer (Conv + a transformer block, from its PyPI wheel) on rendered text lines."""
    import sys
    sys.path.insert(0, str(REAL.parents[1] / "bench"))
    from bench_quality import ocr_rec_data
    data = ocr_rec_data(16)
    save_file({"x": data["x"][:16]}, str(tmp_path / "cal.safetensors"))
    save_file({"x": data["x"][16:]}, str(tmp_path / "eval.safetensors"))
    model = REAL / "ppocrv4_rec.onnx"
    fid = {}
    for method in ("magnitude", "sparsegpt"):
        out = tmp_path / f"{method}.onnx"
        extra = [] if method == "magnitude" else ["--method", method, "--calibration", tmp_path / "cal.safetensors"]
        r = nmprune("prune", model, "-o", out, "--align", "none", "--json", *extra, check=0)
        rep = json.loads(r.out)
        assert rep["summary"]["done"] >= 30
        nmprune("check", out, "--align", "none", "-q", check=0)
        r = nmprune("compare", model, out, "--calibration", tmp_path / "eval.safetensors", "--json", check=0)
        fid[method] = json.loads(r.out)["outputs"][0]
    assert fid["sparsegpt"]["rel_l2"] < 0.7 * fid["magnitude"]["rel_l2"]
    assert fid["sparsegpt"]["top1"] > fid["magnitude"]["top1"] + 0.2


def _fidelity(model, weights, X, base=None):
    """Mean cosine of the model (or of base, the same function: a permuted copy) with these initializers
    replaced, against the dense model."""
    m = onnx.ModelProto()
    m.CopyFrom(base or model)
    for t in m.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(weights[t.name], t.name))
    dense = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pr = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    cos = []
    for i in range(len(X)):
        a = dense.run(None, {"x": X[i]})[0].astype(np.float64).ravel()
        b = pr.run(None, {"x": X[i]})[0].astype(np.float64).ravel()
        cos.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    return float(np.mean(cos))


def test_sensitivity_ranks_weights_and_finds_the_dense_set(tmp_path, mlp_case):
    path, model, w, X = mlp_case
    pruned = {"W1": np.where(reference.mask(w["W1"], "2:4", 0, 1), w["W1"], 0),
              "W2": np.where(reference.mask(w["W2"], "2:4", 1, 0), w["W2"], 0)}
    alone = {k: _fidelity(model, {k: v}, X) for k, v in pruned.items()}
    both = _fidelity(model, pruned, X)
    target = (both + min(alone.values())) / 2  # needs the most sensitive weight dense, not both
    rules = tmp_path / "rules.json"
    r = nmprune("inspect", path, "--sensitivity", "--calibration", tmp_path / "data.safetensors", "--align", "none",
                "--target-fidelity", f"{target:.6f}", "--write-rules", rules, "--json", check=0)
    rep = json.loads(r.out)
    got = {e["name"]: e["fidelity_pruned_alone"] for e in rep["weights"]}
    assert got == pytest.approx(alone, rel=1e-6)
    order = sorted(alone, key=alone.get)
    assert [e["name"] for e in rep["weights"]] == order
    assert rep["fidelity_all_pruned"] == pytest.approx(both, rel=1e-6)
    assert rep["target"]["keep_dense"] == 1 and rep["target"]["met"]
    assert json.loads(rules.read_text()) == [{"match": f"^{order[0]}$", "dense": True}]
    out = tmp_path / "o.onnx"
    nmprune("prune", path, "-o", out, "--align", "none", "--rules", rules, "-q", check=0)
    r = nmprune("compare", path, out, "--calibration", tmp_path / "data.safetensors", "--json", check=0)
    assert json.loads(r.out)["outputs"][0]["cosine"] >= target


def _calibrated(model, w, X, method):
    """W1 and W2 pruned at 2:4 by method, calibrated on X with the dense model's statistics (numpy)."""
    x1, h2 = mlp_inputs(model, X)
    if method == "sparsegpt":
        return {"W1": sparsegpt_ref(w["W1"].T, x1.T @ x1, 2, 4)[0].T.astype(np.float32),
                "W2": sparsegpt_ref(w["W2"], h2.T @ h2, 2, 4)[0].astype(np.float32)}
    cases = {"W1": (np.sqrt((x1 ** 2).sum(0))[:, None], 0, 1), "W2": (np.sqrt((h2 ** 2).sum(0))[None, :], 1, 0)}
    out = {}
    for name, (norm, axis, out_axis) in cases.items():
        score = (np.abs(w[name]).astype(np.float64) * norm).astype(np.float32).astype(np.float64)
        out[name] = np.where(reference.mask(w[name], "2:4", axis, out_axis, magnitude=score), w[name], 0)
    return out


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_sensitivity_prunes_each_weight_by_the_calibrated_method(tmp_path, mlp_case, method):
    """Each weight alone is pruned as the method decides it on the dense model; one stage combines them."""
    path, model, w, X = mlp_case
    pruned = _calibrated(model, w, X, method)
    alone = {k: _fidelity(model, {k: v}, X) for k, v in pruned.items()}
    magnitude = {"W1": np.where(reference.mask(w["W1"], "2:4", 0, 1), w["W1"], 0),
                 "W2": np.where(reference.mask(w["W2"], "2:4", 1, 0), w["W2"], 0)}
    assert all(abs(alone[k] - _fidelity(model, {k: magnitude[k]}, X)) > 1e-3 for k in alone)  # the method matters
    r = nmprune("inspect", path, "--sensitivity", "--calibration", tmp_path / "data.safetensors", "--align", "none",
                "--method", method, "--calibration-stages", "1", "--json", check=0)
    rep = json.loads(r.out)
    assert rep["method"] == method
    got = {e["name"]: e["fidelity_pruned_alone"] for e in rep["weights"]}
    assert got == pytest.approx(alone, rel=1e-5)
    assert [e["name"] for e in rep["weights"]] == sorted(alone, key=alone.get)
    assert all(e["method"] == method and "note" not in e for e in rep["weights"])
    assert rep["fidelity_all_pruned"] == pytest.approx(_fidelity(model, pruned, X), rel=1e-5)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_sensitivity_target_is_what_prune_gives_with_its_rules_and_stages(tmp_path, mlp_case, method):
    """With prune's default stages, each model the search measures is the one prune --rules writes."""
    path, model, w, X = mlp_case
    data = tmp_path / "data.safetensors"
    common = ["--calibration", data, "--align", "none", "--method", method]
    r = nmprune("inspect", path, "--sensitivity", *common, "--json", check=0)
    first = json.loads(r.out)
    # a target between "all pruned" and "the most sensitive kept dense" keeps exactly one dense
    one_dense = first["weights"][1]["fidelity_pruned_alone"]
    target = (first["fidelity_all_pruned"] + one_dense) / 2
    rules = tmp_path / "rules.json"
    r = nmprune("inspect", path, "--sensitivity", *common, "--target-fidelity", f"{target:.6f}", "--write-rules",
                rules, "--json", check=0)
    rep = json.loads(r.out)
    assert rep["target"]["keep_dense"] == 1 and rep["target"]["met"]
    out = tmp_path / "o.onnx"
    for keep, want in [(rules, rep["target"]["reached"]), (None, rep["fidelity_all_pruned"])]:
        extra = ["--rules", keep] if keep else []
        nmprune("prune", path, "-o", out, *common, *extra, "-q", check=0)
        r = nmprune("compare", path, out, "--calibration", data, "--json", check=0)
        assert json.loads(r.out)["outputs"][0]["cosine"] == pytest.approx(want, rel=1e-6)
    # staged and one-stage calibration differ here, so the search did not combine one-stage decisions
    one_stage = _fidelity(model, _calibrated(model, w, X, method), X)
    assert abs(rep["fidelity_all_pruned"] - one_stage) > 1e-4


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt"])
def test_sensitivity_with_permute_measures_what_prune_permute_gives(tmp_path, mlp_case, method):
    """--permute: W2's input channels (W1's outputs) are permuted first.  A weight alone is pruned in the model
    permuted for the whole selection; every weight, and the dense set found, are what prune --permute writes
    with the matching selection."""
    path, model, w, X = mlp_case
    data = tmp_path / "data.safetensors"
    common = ["--align", "none"] + ([] if method == "magnitude" else ["--method", method])
    cal = [] if method == "magnitude" else ["--calibration", data]
    out = tmp_path / "o.onnx"

    def cosine(*prune_args):
        nmprune("prune", path, "-o", out, *common, *cal, "--permute", "-q", *prune_args, check=0)
        return json.loads(nmprune("compare", path, out, "--calibration", data, "--json", check=0).out)["outputs"][0][
            "cosine"]

    plain = json.loads(nmprune("inspect", path, "--sensitivity", "--calibration", data, *common, "--json",
                               check=0).out)
    rep = json.loads(nmprune("inspect", path, "--sensitivity", "--calibration", data, *common, "--permute", "--json",
                             check=0).out)
    alone = {e["name"]: e["fidelity_pruned_alone"] for e in rep["weights"]}
    before = {e["name"]: e["fidelity_pruned_alone"] for e in plain["weights"]}
    assert abs(alone["W2"] - before["W2"]) > 1e-4  # the permutation moved W2's groups
    nmprune("prune", path, "-o", tmp_path / "perm.onnx", "--align", "none", "--permute-only", "-q", check=0)
    cosine(*([] if method == "magnitude" else ["--calibration-stages", "1"]))
    one_stage = weights_of(out)
    for name in ("W1", "W2"):
        got = _fidelity(model, {name: one_stage[name]}, X, base=onnx.load(str(tmp_path / "perm.onnx")))
        assert got == pytest.approx(alone[name], rel=1e-6), name
    assert cosine() == pytest.approx(rep["fidelity_all_pruned"], rel=1e-6)
    target = (rep["fidelity_all_pruned"] + max(alone.values())) / 2
    rules = tmp_path / "rules.json"
    rep = json.loads(nmprune("inspect", path, "--sensitivity", "--calibration", data, *common, "--permute",
                             "--target-fidelity", f"{target:.6f}", "--write-rules", rules, "--json", check=0).out)
    assert rep["target"]["keep_dense"] == 1
    assert cosine("--rules", rules) == pytest.approx(rep["target"]["reached"], rel=1e-6)


@pytest.mark.parametrize("measure", ["rel-l2", "top1"])
def test_sensitivity_measures_by_relative_error_or_top1(tmp_path, mlp_case, measure):
    """--fidelity rel-l2: 1 - ||pruned - dense|| / ||dense|| over every sample; top1: the rows whose argmax
    along the last axis stays (numpy, on the model with each weight alone pruned by magnitude)."""
    path, model, w, X = mlp_case
    pruned = {"W1": np.where(reference.mask(w["W1"], "2:4", 0, 1), w["W1"], 0),
              "W2": np.where(reference.mask(w["W2"], "2:4", 1, 0), w["W2"], 0)}

    def measure_of(weights):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for t in m.graph.initializer:
            if t.name in weights:
                t.CopyFrom(numpy_helper.from_array(weights[t.name], t.name))
        run = lambda mm: np.concatenate([ort.InferenceSession(mm.SerializeToString(), providers=[
            "CPUExecutionProvider"]).run(None, {"x": x})[0] for x in X]).astype(np.float64)
        a, b = run(model), run(m)
        if measure == "rel-l2":
            return 1 - np.linalg.norm(a - b) / np.linalg.norm(a)
        return float(np.mean(a.argmax(-1) == b.argmax(-1)))

    r = json.loads(nmprune("inspect", path, "--sensitivity", "--calibration", tmp_path / "data.safetensors",
                           "--align", "none", "--fidelity", measure, "--json", check=0).out)
    assert r["fidelity"] == measure
    got = {e["name"]: e["fidelity_pruned_alone"] for e in r["weights"]}
    assert got == pytest.approx({k: measure_of({k: v}) for k, v in pruned.items()}, rel=1e-6)
    assert r["fidelity_all_pruned"] == pytest.approx(measure_of(pruned), rel=1e-6)
    assert got != pytest.approx({k: _fidelity(model, {k: v}, X) for k, v in pruned.items()}, rel=1e-3)


def test_an_output_whose_shape_the_pruning_changed_counts_as_a_miss(tmp_path, rng):
    """Compress keeps the rows whose sum is positive: the dense model's output length varies by sample, and the
    pruned weight changes it on some.  In sensitivity and compare every sample counts; one whose shape changed
    scores 0 (numpy)."""
    W = rng.standard_normal((64, 32)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("ReduceSum", ["h", "axes"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["keep"]),
             helper.make_node("Compress", ["h", "keep"], ["y"], axis=0)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [10, 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["k", 32])],
                   {"W": W, "axes": np.array([1], np.int64), "zero": np.array(0, np.float32)})
    path = save(model, tmp_path / "m.onnx")
    X = rng.standard_normal((24, 10, 64)).astype(np.float32)
    save_file({"x": X}, str(tmp_path / "d.safetensors"))
    Wp = np.where(reference.mask(W, "2:4", 0, 1), W, 0)
    pm = onnx.ModelProto()
    pm.CopyFrom(model)
    pm.graph.initializer[0].CopyFrom(numpy_helper.from_array(Wp, "W"))
    run = lambda m: [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0].astype(np.float64) for x in X]
    dense, pruned = run(model), run(pm)
    assert len({d.shape for d in dense}) > 1  # the dense output's length varies by sample
    same = [d.shape == p.shape for d, p in zip(dense, pruned)]
    assert 0 < sum(same) < len(same)  # and the pruning changes it on some samples
    cos = [d.ravel() @ p.ravel() / np.linalg.norm(d) / np.linalg.norm(p) if ok else 0.0
           for d, p, ok in zip(dense, pruned, same)]
    rel = 1 - np.sqrt(sum(((d - p) ** 2).sum() if ok else (d ** 2).sum() for d, p, ok in zip(dense, pruned, same))
                      / sum((d ** 2).sum() for d in dense))
    for measure, want in (("cosine", np.mean(cos)), ("rel-l2", rel)):
        r = json.loads(nmprune("inspect", path, "--sensitivity", "--calibration", tmp_path / "d.safetensors",
                               "--align", "none", "--fidelity", measure, "--json", check=0).out)
        assert r["weights"][0]["fidelity_pruned_alone"] == pytest.approx(want, rel=1e-6), measure
    # compare counts the same misses, and says how many samples changed shape
    out = tmp_path / "o.onnx"
    onnx.save(pm, str(out))
    r = json.loads(nmprune("compare", path, out, "--calibration", tmp_path / "d.safetensors", "--json",
                           check=0).out)["outputs"][0]
    assert r["shape_changed"] == len(same) - sum(same)
    assert r["cosine"] == pytest.approx(np.mean(cos), rel=1e-6) and r["rel_l2"] == pytest.approx(1 - rel, rel=1e-6)
    text = nmprune("compare", path, out, "--calibration", tmp_path / "d.safetensors", check=0).out
    assert f"output 'y': {len(same) - sum(same)} of 24 samples changed shape, counted as misses" in text
    # another rank is another model, not a changed shape
    other = onnx.ModelProto()
    other.CopyFrom(model)
    other.graph.node[-1].output[0] = "y2"
    other.graph.node.append(helper.make_node("Unsqueeze", ["y2", "axes"], ["y"]))
    onnx.save(other, str(tmp_path / "other.onnx"))
    r = nmprune("compare", path, tmp_path / "other.onnx", "--calibration", tmp_path / "d.safetensors", check=3)
    assert "output 'y' differs in type or rank from the dense model's" in r.err


def test_sensitivity_measures_fidelity_on_held_out_samples(tmp_path, mlp_case, rng):
    """--eval-data: calibrated on the calibration samples, measured on the others."""
    path, model, w, X = mlp_case
    Y = mlp_data(rng, samples=5)
    save_file({"x": Y}, str(tmp_path / "eval.safetensors"))
    pruned = _calibrated(model, w, X, "sparsegpt")
    alone = {k: _fidelity(model, {k: v}, Y) for k, v in pruned.items()}
    r = nmprune("inspect", path, "--sensitivity", "--calibration", tmp_path / "data.safetensors", "--align", "none",
                "--method", "sparsegpt", "--calibration-stages", "1", "--eval-data", tmp_path / "eval.safetensors",
                "--json", check=0)
    rep = json.loads(r.out)
    assert rep["samples"] == 5
    assert {e["name"]: e["fidelity_pruned_alone"] for e in rep["weights"]} == pytest.approx(alone, rel=1e-5)
    assert rep["fidelity_all_pruned"] == pytest.approx(_fidelity(model, pruned, Y), rel=1e-5)
    save_file({"y": Y}, str(tmp_path / "bad.safetensors"))
    r = nmprune("inspect", path, "--sensitivity", "--calibration", tmp_path / "data.safetensors",
                "--eval-data", tmp_path / "bad.safetensors", check=2)
    assert "bad.safetensors: tensor 'y' names no input" in r.err and len(r.err.strip().splitlines()) == 1


def test_outputs_that_turn_nan_or_infinite_are_misses_in_compare_and_sensitivity(tmp_path, rng):
    """y2 = Log(|x| W2): W2's groups hold three weights of +0.6 and one of -1, so the dense sums are positive but
    magnitude 2:4 keeps the -1 with one +0.6, and the pruned sums go negative: y2 turns NaN.  compare counts
    those values and treats their samples as misses (cosine 0, the dense output as error, no top-1), where
    it used to print no cosine at all; values NaN in both models agree, and top-1 never picks a NaN.
    Sensitivity ranks W2, which breaks y2, as the most sensitive weight, not as harmless because y1 is."""
    W1 = rng.standard_normal((16, 8)).astype(np.float32)
    W2 = np.tile(np.array([0.6, 0.6, 0.6, -1.0], np.float32), 4)[:, None] * np.ones((1, 8), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["y1"]), helper.make_node("Abs", ["x"], ["ax"]),
             helper.make_node("MatMul", ["ax", "W2"], ["s"]), helper.make_node("Log", ["s"], ["y2"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
                   [helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["b", 8]),
                    helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["b", 8])], {"W1": W1, "W2": W2})
    path, out = save(model, tmp_path / "m.onnx"), tmp_path / "o.onnx"
    X = (1 + 0.1 * rng.standard_normal((6, 4, 16))).astype(np.float32)  # |x| near 1: dense sums near +0.8
    save_file({"x": X}, str(tmp_path / "d.safetensors"))
    nmprune("prune", path, "-o", out, "--align", "none", "-q", check=0)
    sess = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    dense = [sess(path).run(None, {"x": x}) for x in X]
    pruned = [sess(out).run(None, {"x": x}) for x in X]
    assert all(np.isfinite(d[1]).all() for d in dense) and all(np.isnan(p[1]).all() for p in pruned)
    r = {o["name"]: o for o in json.loads(nmprune("compare", path, out, "--calibration", tmp_path / "d.safetensors",
                                                  "--json", check=0).out)["outputs"]}
    assert r["y2"]["nonfinite"] == 6 * 4 * 8 and r["y2"]["nonfinite_samples"] == 6
    assert r["y2"]["cosine"] == 0 and r["y2"]["rel_l2"] == pytest.approx(1) and r["y2"]["top1"] == 0
    assert r["y1"]["nonfinite"] == 0 and r["y1"]["cosine"] == pytest.approx(np.mean(
        [d[0].ravel() @ p[0].ravel() / np.linalg.norm(d[0]) / np.linalg.norm(p[0]) for d, p in zip(dense, pruned)]))
    text = nmprune("compare", path, out, "--calibration", tmp_path / "d.safetensors", check=0).out
    assert "output 'y2': 192 values NaN or infinite in one model and not the other, in 6 of 6 samples" in text
    # the same NaN in both models agrees: the pruned model against itself is exact (y2 is NaN throughout in both)
    same = json.loads(nmprune("compare", out, out, "--calibration", tmp_path / "d.safetensors", "--json",
                              check=0).out)["outputs"]
    assert [(o["cosine"], o["rel_l2"], o["top1"], o["nonfinite"]) for o in same] == [(1, 0, 1, 0), (1, 0, 1, 0)]
    rank = json.loads(nmprune("inspect", path, "--sensitivity", "--calibration", tmp_path / "d.safetensors",
                              "--align", "none", "--json", check=0).out)["weights"]
    # W2 alone: y1 untouched (1), y2 a miss (0)
    assert [(w["name"], w["fidelity_pruned_alone"]) for w in rank][0] == ("W2", pytest.approx(0.5))
    assert rank[1]["name"] == "W1" and rank[1]["fidelity_pruned_alone"] > 0.5


def test_inspect_and_compare_write_their_json_to_report(tmp_path, mlp_case):
    """--report FILE holds what --json prints (elapsed times aside); a report over an input is refused."""
    path, _, _, _ = mlp_case
    data = tmp_path / "data.safetensors"
    timeless = lambda j: {k: v for k, v in j.items() if k != "elapsed_s"} if isinstance(j, dict) else j
    for args in (["inspect", path, "--align", "none"],
                 ["inspect", path, "--align", "none", "--sensitivity", "--calibration", data, "--method", "wanda"],
                 ["compare", path, path, "--calibration", data]):
        rep = tmp_path / "rep.json"
        printed = json.loads(nmprune(*args, "--json", check=0).out)
        r = nmprune(*args, "--report", rep, check=0)
        assert not r.out.lstrip().startswith(("{", "["))  # stdout stays the table
        assert timeless(json.loads(rep.read_text())) == timeless(printed)
        rep.unlink()
    before = path.read_bytes()
    assert "--report names the input model" in nmprune("inspect", path, "--report", path, check=2).err
    r = nmprune("compare", path, tmp_path / "other.onnx", "--calibration", data, "--report", path, check=2)
    assert "--report names the dense model" in r.err
    r = nmprune("inspect", path, "--sensitivity", "--calibration", data, "--target-fidelity", "0.9",
                "--write-rules", tmp_path / "same.json", "--report", tmp_path / "same.json", check=2)
    assert "--report and --write-rules name the same file" in r.err
    assert path.read_bytes() == before and not (tmp_path / "same.json").exists()


def test_sensitivity_errors(tmp_path, mlp_case):
    path, _, _, _ = mlp_case
    data = tmp_path / "data.safetensors"
    assert "needs --calibration" in nmprune("inspect", path, "--sensitivity", check=2).err
    assert "--target-fidelity" in nmprune("inspect", path, "--sensitivity", "--calibration", data, "--write-rules",
                                          tmp_path / "r.json", check=2).err
    before = path.read_bytes()
    r = nmprune("inspect", path, "--sensitivity", "--calibration", data, "--target-fidelity", "0.9", "--write-rules",
                path, check=2)
    assert "names the input model" in r.err and path.read_bytes() == before
    assert "prune, compare and inspect" in nmprune("check", path, "--calibration", data, check=2).err
    for extra, why in [(["--method", "sparsegpt"], "go with --sensitivity"),
                       (["--eval-data", data], "go with --sensitivity"),
                       (["--permute"], "go with --sensitivity"),
                       (["--fidelity", "top1"], "go with --sensitivity"),
                       (["--sensitivity", "--calibration", data, "--fidelity", "psnr"],
                        "--fidelity 'psnr': expected cosine, rel-l2 or top1"),
                       (["--sensitivity", "--calibration", data, "--permute-effort", "2"],
                        "--permute-effort goes with --permute"),
                       (["--sensitivity", "--calibration", data, "--method", "wanda", "--damp", "0.1"],
                        "--damp is for --method sparsegpt"),
                       (["--sensitivity", "--calibration", data, "--calibration-stages", "2"],
                        "--calibration-stages is for --method wanda or sparsegpt"),
                       (["--sensitivity", "--calibration", data, "--method", "sparsegpt", "--pattern", "2:4@v4"],
                        "2:4@v4")]:
        assert why in nmprune("inspect", path, *extra, check=2).err, extra
    assert "option of prune and inspect --sensitivity" in nmprune("check", path, "--method", "wanda", check=2).err
    assert "option of inspect" in nmprune("prune", path, "--dry-run", "--eval-data", data, check=2).err


def test_external_data_model_calibrates_and_compares(tmp_path, mlp_case):
    path, model, w, X = mlp_case
    ext = tmp_path / "ext"
    ext.mkdir()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    onnx.save(m, str(ext / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    assert (ext / "m.data").exists()
    out = tmp_path / "o.onnx"
    nmprune("prune", ext / "m.onnx", "-o", out, "--method", "wanda", "--calibration", tmp_path / "data.safetensors",
            "--align", "none", "--calibration-stages", "1", "-q", check=0)
    nmprune("prune", path, "-o", tmp_path / "inline.onnx", "--method", "wanda", "--calibration",
            tmp_path / "data.safetensors", "--align", "none", "--calibration-stages", "1", "-q", check=0)
    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "inline.onnx")).graph.initializer}
    assert all(np.array_equal(a[k], b[k]) for k in ("W1", "W2"))
    r = nmprune("compare", ext / "m.onnx", out, "--calibration", tmp_path / "data.safetensors", "--json", check=0)
    assert 0.5 < json.loads(r.out)["outputs"][0]["cosine"] < 1


def test_quantized_weight_takes_the_calibrated_mask_and_its_zero_point(tmp_path, rng):
    """int8 weight behind DequantizeLinear (per output channel): wanda scores |q - zp| * scale * norm and keeps
    the values; sparsegpt prunes and quantizes in one sweep, each kept weight put on its channel's grid as the
    sweep reaches it (the numpy reference's masks and integers)."""
    q = rng.integers(-5, 6, size=(64, 32)).astype(np.int8)  # a coarse grid: rounding matters
    scale = (rng.random(32) * 0.1 + 0.01).astype(np.float32)
    zp = rng.integers(-3, 3, size=32).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["W"], axis=1),
             helper.make_node("MatMul", ["x", "W"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 32])], {"Wq": q, "s": scale, "z": zp})
    path = save(model, tmp_path / "q.onnx")
    X = (rng.standard_normal((200, 64)) * np.linspace(0.1, 4, 64)).astype(np.float32)
    save_file({"x": X}, str(tmp_path / "d.safetensors"))
    for method in ("wanda", "sparsegpt"):
        out = tmp_path / f"{method}.onnx"
        r = nmprune("prune", path, "-o", out, "--method", method, "--calibration", tmp_path / "d.safetensors",
                    "--align", "none", "--save-masks", tmp_path / f"{method}.safetensors", "--json", check=0)
        keep = load_file(str(tmp_path / f"{method}.safetensors"))["Wq"].astype(bool)
        got = numpy_helper.to_array({t.name: t for t in onnx.load(str(out)).graph.initializer}["Wq"])
        assert np.array_equal(got[~keep], np.broadcast_to(zp, q.shape)[~keep])  # pruned: the zero point
        mag = np.abs(q.astype(np.float64) - zp) * scale
        norm = np.sqrt((X.astype(np.float64) ** 2).sum(0))[:, None]
        if method == "wanda":
            score = (mag.astype(np.float32).astype(np.float64) * norm).astype(np.float32).astype(np.float64)
            assert np.array_equal(keep, reference.mask(q, "2:4", 0, 1, magnitude=score))
            assert np.array_equal(got[keep], q[keep])  # values kept
        else:
            cal = json.loads(r.out)["weights"][0]["calibration"]
            assert cal["method"] == "sparsegpt" and cal["reconstructed"] and cal["output_error"] < 1
            X64 = X.astype(np.float64)
            s64, z64 = scale.astype(np.float64)[:, None], zp.astype(np.float64)[:, None]
            W = (q.astype(np.float64) - zp) * scale  # [K, N]: the layer's rows are W's columns
            Wr, want = sparsegpt_ref(W.T, X64.T @ X64, 2, 4, grid=(s64[:, 0], z64[:, 0], -128, 127))
            assert np.array_equal(keep, want.T)
            ints = np.where(want, np.round(Wr / s64) + z64, z64).T
            assert np.abs(got - ints).max() <= 1 and (got == ints).mean() > 0.98  # equal but at rounding ties
            assert not np.array_equal(got[keep], q[keep])  # the kept weights moved, on their grid
        nmprune("check", out, "--align", "none", "-q", check=0)


def test_dynamically_quantized_layers_take_the_statistics_of_their_float_input(tmp_path, rng):
    """MatMulInteger and ConvInteger read DynamicQuantizeLinear's uint8 output; their statistics are those of the
    float input it quantized.  wanda scores |q - zp| * norm; sparsegpt sweeps the integers on their own grid
    (scale 1, the zero point, the type's range): the numpy reference's masks and integers."""
    q = rng.integers(-6, 7, size=(64, 32)).astype(np.int8)
    zp = np.array(1, np.int8)
    qc = rng.integers(0, 200, size=(8, 16, 3, 3)).astype(np.uint8)
    zc = np.array(100, np.uint8)
    f = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "Wq", "xz", "zp"], ["yi"], name="mmi"),
             helper.make_node("Cast", ["yi"], ["yf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["yf", "xs"], ["y"]),
             helper.make_node("DynamicQuantizeLinear", ["img"], ["iq", "is", "iz"]),
             helper.make_node("ConvInteger", ["iq", "Wc", "iz", "zc"], ["ci"], name="convi", pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["ci"], ["cf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["cf", "is"], ["c"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64]),
                           helper.make_tensor_value_info("img", TensorProto.FLOAT, ["n", 16, 6, 5])],
                   [f("y"), f("c")], {"Wq": q, "zp": zp, "Wc": qc, "zc": zc})
    path = save(model, tmp_path / "dq.onnx")
    X = (rng.standard_normal((200, 64)) * np.linspace(0.1, 4, 64)).astype(np.float32)
    IMG = (rng.standard_normal((200, 16, 6, 5)) * np.linspace(0.2, 3, 16)[:, None, None]).astype(np.float32)
    save_file({"x": X, "img": IMG}, str(tmp_path / "d.safetensors"))
    # wanda on the matrix product: the mask of |q - zp| x the float input's channel norms
    out = tmp_path / "w.onnx"
    r = nmprune("prune", path, "-o", out, "--method", "wanda", "--calibration", tmp_path / "d.safetensors",
                "--align", "none", "--save-masks", tmp_path / "w.safetensors", "--calibration-stats",
                tmp_path / "st.safetensors", "--calibration-stages", "1", "--json", check=0)
    assert {w["name"]: w["calibration"]["method"] for w in json.loads(r.out)["weights"]} == {"Wq": "wanda",
                                                                                             "Wc": "wanda"}
    st = load_file(str(tmp_path / "st.safetensors"))
    np.testing.assert_allclose(st["Wq.sq"], (X.astype(np.float64) ** 2).sum(0), rtol=1e-12)
    np.testing.assert_allclose(st["Wc.sq"], (IMG.astype(np.float64) ** 2).sum(axis=(0, 2, 3)), rtol=1e-12)
    keep = load_file(str(tmp_path / "w.safetensors"))["Wq"].astype(bool)
    score = (np.abs(q.astype(np.float64) - zp).astype(np.float32).astype(np.float64) *
             np.sqrt(st["Wq.sq"])[:, None]).astype(np.float32).astype(np.float64)
    assert np.array_equal(keep, reference.mask(q, "2:4", 0, 1, magnitude=score))
    # sparsegpt: the integers swept on their grid
    out = tmp_path / "s.onnx"
    nmprune("prune", path, "-o", out, "--method", "sparsegpt", "--calibration", tmp_path / "d.safetensors",
            "--align", "none", "--save-masks", tmp_path / "s.safetensors", "--calibration-stages", "1", "-q",
            check=0)
    keep = load_file(str(tmp_path / "s.safetensors"))["Wq"].astype(bool)
    got = weights(out)["Wq"]
    X64 = X.astype(np.float64)
    Wr, want = sparsegpt_ref((q.astype(np.float64) - zp).T, X64.T @ X64, 2, 4, grid=(1.0, float(zp), -128, 127))
    assert np.array_equal(keep, want.T)
    ints = np.where(want, Wr + float(zp), float(zp)).T
    assert np.abs(got - ints).max() <= 1 and (got == ints).mean() > 0.98  # equal but at rounding ties
    assert np.array_equal(got[~keep], np.full(q.shape, zp)[~keep]) and not np.array_equal(got[keep], q[keep])
    wc = weights(out)["Wc"]
    kc = load_file(str(tmp_path / "s.safetensors"))["Wc"].astype(bool)
    assert (wc[~kc] == zc).all() and kc.mean() == 0.5
    nmprune("check", out, "--align", "none", "-q", check=0)
    # an integer input that no DynamicQuantizeLinear made: magnitude, with the reason
    bare = _model([helper.make_node("MatMulInteger", ["xq", "Wq", "", "zp"], ["y"])],
                  [helper.make_tensor_value_info("xq", TensorProto.UINT8, ["b", 64])],
                  [helper.make_tensor_value_info("y", TensorProto.INT32, None)], {"Wq": q, "zp": zp})
    save_file({"xq": rng.integers(0, 255, size=(4, 64)).astype(np.uint8)}, str(tmp_path / "u.safetensors"))
    r = nmprune("prune", save(bare, tmp_path / "bare.onnx"), "--dry-run", "--method", "wanda", "--calibration",
                tmp_path / "u.safetensors", "--align", "none", "--json", check=0)
    assert json.loads(r.out)["weights"][0]["calibration"] == {
        "method": "magnitude", "note": "its MatMulInteger input does not come from DynamicQuantizeLinear: pruned by "
                                       "magnitude"}


def test_an_if_without_its_other_branch_is_refused_naming_it(tmp_path, rng):
    W = rng.standard_normal((16, 8)).astype(np.float32)
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y1"])], "then", [],
                               [helper.make_tensor_value_info("y1", TensorProto.FLOAT, None)])
    model = _model([helper.make_node("If", ["c"], ["y"], name="lonely", then_branch=then_g)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16]),
                    helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"W": W})
    path = save(model, tmp_path / "m.onnx")
    save_file({"x": rng.standard_normal((2, 3, 16)).astype(np.float32), "c": np.ones(2, bool)},
              str(tmp_path / "d.safetensors"))
    r = nmprune("prune", path, "-o", tmp_path / "o.onnx", "--method", "wanda", "--calibration",
                tmp_path / "d.safetensors", "--align", "none", check=3)
    assert f"{path}: If node 'lonely' has no else_branch" in r.err
    assert not (tmp_path / "o.onnx").exists()
