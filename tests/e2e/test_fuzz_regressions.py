"""Replays the inputs the fuzzers found (tests/fuzz-regressions) through the command
line: each must end in a status, never a signal, in bounded time and memory.

parsers-*: the first byte's low bit picks the pattern grammar (1) or a rules file (0);
model-*: a model file."""
import subprocess
from pathlib import Path

import pytest

from conftest import NMPRUNE, ROOT

CASES = sorted((ROOT / "tests" / "fuzz-regressions").glob("*"))
DEMO = ROOT / "models" / "demo.onnx"


def _run(args):
    p = subprocess.run(["/usr/bin/time", "-f", "%M", NMPRUNE, *map(str, args)], capture_output=True, timeout=60)
    rss_kib = int(p.stderr.decode(errors="replace").strip().splitlines()[-1])
    return p.returncode, rss_kib


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fuzz_regression(tmp_path, case):
    data = case.read_bytes()
    if case.name.startswith("parsers-"):
        if data[0] & 1:
            code, rss = _run(["inspect", DEMO, "--pattern", data[1:].split(b"\0")[0].decode("latin-1")])
        else:
            rules = tmp_path / "rules.json"
            rules.write_bytes(data[1:])
            code, rss = _run(["inspect", DEMO, "--rules", rules])
        assert code in (0, 2), code
    else:
        model = tmp_path / "model.onnx"
        model.write_bytes(data)
        code, rss = _run(["prune", model, "--dry-run", "-q"])
        assert code in (0, 3, 4), code
    assert rss < 256 * 1024, rss
