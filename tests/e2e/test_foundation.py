"""The foundation: command line, faithful load/save, bad input, conformance."""
import glob
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import matmul_model, nmprune, save

BACKEND = sorted(glob.glob("/usr/share/libonnx-testdata/data/**/model.onnx", recursive=True))


# ---- command line ------------------------------------------------------------

def test_version_and_help():
    r = nmprune("--version", check=0)
    assert r.out.startswith("nmprune 0.1.0 (ONNX schema 1.23.2)")
    assert "commands:" in nmprune("--help", check=0).out
    for cmd in ("prune", "check", "inspect"):
        r = nmprune(cmd, "--help", check=0)
        assert r.out.startswith(f"usage: nmprune {cmd} IN.onnx")
        assert "N:M@t, P%, P%@vV, P%@bRxC (default 2:4)" in r.out  # printed as written, no format
    assert all("%%" not in nmprune(cmd, "--help", check=0).out for cmd in ("prune", "check", "inspect", "compare"))


@pytest.mark.parametrize("args, message", [
    ([], "no command given"),
    (["squash", "m.onnx"], "unknown command 'squash'"),
    (["prune", "m.onnx"], "prune needs -o OUT.onnx, --in-place or --dry-run"),
    (["prune", "m.onnx", "-o", "o.onnx", "--in-place"], "--in-place and -o are exclusive"),
    (["check", "m.onnx", "--dry-run"], "--dry-run is an option of prune only"),
    (["inspect"], "no input model given"),
    (["inspect", "a.onnx", "b.onnx"], "unexpected argument 'b.onnx'"),
    (["inspect", "m.onnx", "--align", "tight"], "--align 'tight': expected asp, cusparselt or none"),
    (["inspect", "m.onnx", "--device", "tpu"], "--device 'tpu': expected auto, cpu or cuda"),
    (["inspect", "m.onnx", "--dense-first", "1.5"], "--dense-first '1.5'"),
    (["inspect", "m.onnx", "--threads", "0"], "--threads '0'"),
    (["inspect", "m.onnx", "--frobnicate"], "unknown option '--frobnicate'"),
    (["inspect", "m.onnx", "--pattern"], "option '--pattern' needs a value"),
    # an option a command does not take is refused by its name, never by its value
    (["check", "m.onnx", "--calibration", "d.npz"], "--calibration is an option of prune, compare and inspect"),
    (["prune", "m.onnx", "--dry-run", "--target-fidelity", "0.9"], "--target-fidelity is an option of inspect"),
    (["compare", "a.onnx", "b.onnx", "--calibration", "d.npz", "--pattern", "2:4"],
     "--pattern is an option of prune, check and inspect"),
    (["compare", "a.onnx", "b.onnx", "--calibration", "d.npz", "--rules", "r.json"],
     "--rules is an option of prune, check and inspect"),
    (["compare", "a.onnx", "b.onnx", "--calibration", "d.npz", "--device", "cuda"],
     "--device is an option of prune, check and inspect"),
    (["inspect", "m.onnx", "--output", "o.onnx"], "--output is an option of prune only"),
])
def test_usage_errors_exit_2(args, message):
    r = nmprune(*args, check=2)
    assert message in r.err, r
    assert "usage: nmprune" in r.err


# ---- bad input: exit code, one-line message, no output -------------------------

def _bad_models(tmp):
    """(name, writer, exit code, message) for each kind of bad input."""
    w = np.arange(64, dtype=np.float32).reshape(8, 8)

    def raw_len(delta):
        def make(p):
            m = matmul_model(w)
            t = m.graph.initializer[0]
            t.raw_data = t.raw_data[: len(t.raw_data) + delta] if delta < 0 else t.raw_data + b"\0" * delta
            save(m, p)
        return make

    def dims(values):
        def make(p):
            m = matmul_model(w)
            del m.graph.initializer[0].dims[:]
            m.graph.initializer[0].dims.extend(values)
            save(m, p)
        return make

    def external(location, offset=None, make_file=True, link=None):
        def make(p):
            m = matmul_model(w)
            t = m.graph.initializer[0]
            data = t.raw_data
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            entries = [("location", location)]
            if offset is not None:
                entries.append(("offset", str(offset)))
            for k, v in entries:
                e = t.external_data.add()
                e.key, e.value = k, v
            if make_file:
                (p.parent / "w.bin").write_bytes(data)
            if link:
                os.symlink(link, p.parent / location)
            save(m, p)
        return make

    def truncated(p):
        save(matmul_model(w), p)
        b = p.read_bytes()
        p.write_bytes(b[: len(b) - 40])

    def random_bytes(p):
        p.write_bytes(np.random.default_rng(5).integers(0, 256, 10000, dtype=np.uint8).tobytes())

    outside = tmp / "outside.bin"
    outside.write_bytes(w.tobytes())
    return [
        ("empty", lambda p: p.write_bytes(b""), 3, "empty file"),
        ("directory", lambda p: p.mkdir(), 4, "is a directory"),
        ("random", random_bytes, 3, "not a valid ONNX model"),
        ("truncated", truncated, 3, "not a valid ONNX model"),
        ("raw-short", raw_len(-4), 3, "tensor 'W': raw_data has 252 bytes, dims and type say 256"),
        ("raw-long", raw_len(+8), 3, "tensor 'W': raw_data has 264 bytes, dims and type say 256"),
        ("dims-overflow", dims([1 << 40, 1 << 40]), 3, "tensor 'W': the product of its dims overflows"),
        ("dims-negative", dims([-8, 8]), 3, "tensor 'W': dimension 0 is negative (-8)"),
        ("ext-dotdot", external("../outside.bin", make_file=False), 3, "leaves the model directory"),
        ("ext-absolute", external(str(outside), make_file=False), 3, "is an absolute path"),
        ("ext-symlink", external("link.bin", link=str(outside)), 3, "resolves outside the model directory"),
        ("ext-missing", external("nothere.bin", make_file=False), 4, "cannot open external data file 'nothere.bin'"),
        ("ext-offset", external("w.bin", offset=1 << 20), 3, "offset 1048576 is beyond the end"),
    ]


def test_bad_inputs(tmp_path):
    for name, make, code, message in _bad_models(tmp_path):
        d = tmp_path / name
        d.mkdir()
        model = d / "model.onnx"
        make(model)
        before = sorted(os.listdir(d))
        for cmd in (["prune", model, "-o", d / "out.onnx"], ["inspect", model], ["check", model]):
            r = nmprune(*cmd)
            assert r.code == code, (name, r)
            assert message in r.err, (name, r)
            assert r.err.count("\n") == 1, (name, r)      # one line
            assert str(model) in r.err, (name, r)         # names the file
        assert sorted(os.listdir(d)) == before, name      # no output, no temporary


# ---- faithful save ---------------------------------------------------------------

def test_nothing_pruned_is_byte_identical(tmp_path, rng):
    m = matmul_model(rng.standard_normal((64, 32)).astype(np.float32))
    m.doc_string = "kept"
    m.metadata_props.add(key="owner", value="me")
    src = save(m, tmp_path / "m.onnx")
    for extra in ([], ["--general-path"]):
        out = tmp_path / "out.onnx"
        nmprune("prune", src, "-o", out, "--exclude", ".*", *extra, check=0)
        assert out.read_bytes() == src.read_bytes()


def test_in_place_replaces_atomically(tmp_path, rng):
    src = save(matmul_model(rng.standard_normal((32, 32)).astype(np.float32)), tmp_path / "m.onnx")
    before = src.read_bytes()
    nmprune("prune", src, "--in-place", "--exclude", ".*", check=0)
    assert src.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_external_data_round_trip(tmp_path, rng):
    w = rng.standard_normal((64, 64)).astype(np.float32)
    m = matmul_model(w)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    onnx.save_model(m, src_dir / "m.onnx", save_as_external_data=True, location="m.bin",
                    size_threshold=0)
    out = tmp_path / "out.onnx"
    nmprune("prune", src_dir / "m.onnx", "-o", out, "--exclude", ".*", check=0)
    assert (tmp_path / "out.onnx.data").exists()
    loaded = onnx.load(out)
    onnx.checker.check_model(str(out), full_check=True)
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), w)


def test_external_data_option(tmp_path, rng):
    w = rng.standard_normal((64, 64)).astype(np.float32)
    src = save(matmul_model(w), tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    nmprune("prune", src, "-o", out, "--external-data", "weights.bin", "--exclude", ".*", check=0)
    loaded = onnx.load(out, load_external_data=False)
    t = loaded.graph.initializer[0]
    assert t.data_location == onnx.TensorProto.EXTERNAL
    assert {e.key: e.value for e in t.external_data}["location"] == "weights.bin"
    onnx.checker.check_model(str(out), full_check=True)
    np.testing.assert_array_equal(numpy_helper.to_array(onnx.load(out).graph.initializer[0]), w)
    r = nmprune("prune", src, "-o", out, "--external-data", "/tmp/elsewhere/w.bin")
    assert r.code == 2 and "must be in the output model's directory" in r.err, r


# ---- conformance: ONNX's own backend test models -----------------------------------

@pytest.mark.skipif(not BACKEND, reason="libonnx-testdata is not installed")
def test_backend_models_round_trip(tmp_path):
    assert len(BACKEND) == 1072
    out, gen = tmp_path / "out.onnx", tmp_path / "gen.onnx"
    failures = []
    for path in BACKEND:
        data = Path(path).read_bytes()
        a = nmprune("prune", path, "-o", out, "--exclude", ".*")
        b = nmprune("prune", path, "-o", gen, "--exclude", ".*", "--general-path")
        if a.code or b.code or out.read_bytes() != data or gen.read_bytes() != data:
            failures.append((path, a.err, b.err))
    assert failures == []
