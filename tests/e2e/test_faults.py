"""Faults while saving: a failing write, fsync or rename, a full disk, and
SIGKILL at random moments.  Each must give exit 4 and a clear message (or,
killed, leave nothing), never a partial output, and never touch the input."""
import hashlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import NMPRUNE, ROOT, nmprune

FAULT_SO = os.environ.get("FAULT_SO", str(ROOT / "build" / "tests" / "fault_inject.so"))


def _mlp(path, layers=4, d=256, external=False):
    rng = np.random.default_rng(4)
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((d, d)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        x = f"h{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, d])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    if external:
        onnx.save_model(m, path, save_as_external_data=True, location=path.name + ".bin", size_threshold=0)
    else:
        onnx.save_model(m, path)
    return path


def _digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def _faulty(args, **env):
    e = dict(os.environ, LD_PRELOAD=FAULT_SO, **env)
    p = subprocess.run([NMPRUNE, *map(str, args)], capture_output=True, text=True, env=e, timeout=120)
    return p


# (extra args, injected fault, message)
CASES = [
    ([], "copy_file_range:1", "cannot write"),
    ([], "pwrite:1", "cannot write"),            # the first pruned payload
    ([], "pwrite:5:ENOSPC", "No space left on device"),  # the metadata appended at the end
    ([], "fsync:1", "cannot sync"),
    ([], "rename:1", "cannot rename into place"),
    (["--general-path"], "pwrite:1", "cannot write"),
    (["--general-path"], "fsync:1", "cannot sync"),
    (["--external-data", "w.bin"], "pwrite:1", "cannot write"),
    (["--external-data", "w.bin"], "fsync:2", "cannot sync"),
    (["--external-data", "w.bin"], "rename:1", "cannot rename into place"),
    (["--external-data", "w.bin"], "rename:2", "cannot rename into place"),
    ([], "copy_file_range:1:ENOSPC", "No space left on device"),
]


@pytest.mark.parametrize("extra, fault, message", CASES, ids=[f"{' '.join(c[0])}{c[1]}" for c in CASES])
@pytest.mark.parametrize("in_place", [False, True])
def test_injected_fault(tmp_path, extra, fault, message, in_place):
    src = _mlp(tmp_path / "m.onnx")
    before = _digest(tmp_path)
    target = ["--in-place"] if in_place else ["-o", tmp_path / "out.onnx"]
    p = _faulty(["prune", src, *target, *extra], NMP_FAULT=fault)
    assert p.returncode == 4, (fault, p.stderr)
    assert message in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert _digest(tmp_path) == before          # no output, no temporary, input untouched


def test_injected_fault_with_external_input(tmp_path):
    src = _mlp(tmp_path / "m.onnx", external=True)
    before = _digest(tmp_path)
    for fault in ("copy_file_range:1", "pwrite:1", "fsync:1", "fsync:2", "rename:1", "rename:2"):
        p = _faulty(["prune", src, "-o", tmp_path / "out.onnx"], NMP_FAULT=fault)
        assert p.returncode == 4, (fault, p.stderr)
        assert _digest(tmp_path) == before, fault


def test_full_disk_simulated(tmp_path):
    src = _mlp(tmp_path / "m.onnx")
    before = _digest(tmp_path)
    for limit in (100, 300_000, src.stat().st_size - 10):
        for extra in ([], ["--general-path"]):
            p = _faulty(["prune", src, "-o", tmp_path / "out.onnx", *extra], NMP_FAULT_DISK=str(limit))
            assert p.returncode == 4 and "No space left on device" in p.stderr, (limit, extra, p.stderr)
            assert _digest(tmp_path) == before


def test_full_disk_tmpfs(tmp_path):
    src = _mlp(tmp_path / "m.onnx")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated full disk covers the path")
    try:
        before = _digest(tmp_path)
        for extra in ([], ["--general-path"], ["--external-data", "w.bin"]):
            r = nmprune("prune", src, "-o", mnt / "out.onnx", *extra)
            assert r.code == 4 and "No space left on device" in r.err, (extra, r)
            assert list(mnt.iterdir()) == []
        assert _digest(tmp_path) == before
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("in_place", [False, True])
def test_sigkill_leaves_nothing_or_a_complete_model(tmp_path, in_place):
    src = _mlp(tmp_path / "m.onnx", layers=8, d=1024)          # 32 MB
    reference = tmp_path / "ref" / "out.onnx"
    reference.parent.mkdir()
    nmprune("prune", src, "-o", reference, "-q", check=0)
    want = reference.read_bytes()
    original = src.read_bytes()
    t0 = time.perf_counter()
    nmprune("prune", src, "-o", tmp_path / "timing.onnx", "-q", check=0)
    duration = time.perf_counter() - t0
    (tmp_path / "timing.onnx").unlink()
    rng = random.Random(17)
    outcomes = {"nothing": 0, "complete": 0}
    for run in range(20):
        if in_place:
            src.write_bytes(original)
        out = src if in_place else tmp_path / "out.onnx"
        if not in_place and out.exists():
            out.unlink()
        p = subprocess.Popen([NMPRUNE, "prune", str(src), *(["--in-place"] if in_place else ["-o", str(out)]), "-q"])
        time.sleep(rng.uniform(0, duration * 1.2))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if in_place:
            now = src.read_bytes()
            assert now in (original, want), f"run {run}: the model is neither the input nor the output"
            outcomes["complete" if now == want else "nothing"] += 1
        else:
            assert hashlib.sha256(src.read_bytes()).digest() == hashlib.sha256(original).digest()
            if out.exists():
                assert out.read_bytes() == want, f"run {run}: a partial output"
                outcomes["complete"] += 1
            else:
                outcomes["nothing"] += 1
        for tmp in tmp_path.glob(".*.nmprune-*"):   # what a killed run leaves: its temporary only
            tmp.unlink()
    assert sum(outcomes.values()) == 20
