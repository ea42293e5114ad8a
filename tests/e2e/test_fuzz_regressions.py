"""Replays the inputs the fuzzers found (tests/fuzz-regressions) through the command
line: each must end in a status, never a signal, in bounded time and memory.

parsers-*: the first byte's low bit picks the pattern grammar (1) or a rules file (0);
model-*: a model file; npz-*: a calibration archive; calib-*: an input of the calibration-data
harness (fuzz/fuzz_calib.c), replayed by that harness."""
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import NMPRUNE, ROOT

CASES = sorted((ROOT / "tests" / "fuzz-regressions").glob("*"))
CLI_CASES = [c for c in CASES if not c.name.startswith("calib-")]
DEMO = ROOT / "models" / "demo.onnx"


def _run(args):
    p = subprocess.run(["/usr/bin/time", "-f", "%M", NMPRUNE, *map(str, args)], capture_output=True, timeout=60)
    rss_kib = int(p.stderr.decode(errors="replace").strip().splitlines()[-1])
    return p.returncode, rss_kib


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
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
    elif case.name.startswith("npz-"):
        data_file = tmp_path / "samples.npz"
        data_file.write_bytes(data)
        code, rss = _run(["prune", DEMO, "--dry-run", "-q", "--method", "wanda", "--calibration", data_file])
        assert code == 2, code
    else:
        model = tmp_path / "model.onnx"
        model.write_bytes(data)
        code, rss = _run(["prune", model, "--dry-run", "-q"])
        assert code in (0, 3, 4), code
    assert rss < 256 * 1024, rss


def _replay(harness, files, env=None):
    """The libFuzzer harness built as a plain program (fuzz/replay.c), over files; returns its stderr."""
    exe = Path(NMPRUNE).parent / "tests" / f"replay_{harness}"
    p = subprocess.run([exe, *map(str, files)], capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, **(env or {})})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == f"{len(files)} inputs replayed", p.stdout
    return p.stderr


def test_parsers_harness_replays_its_regressions():
    _replay("fuzz_parsers", [c for c in CASES if c.name.startswith("parsers-")] or [DEMO])


def test_model_harness_runs_every_generated_model_with_and_without_permutation(tmp_path):
    """The model harness permutes on inputs of even size: each model is replayed as it is and with an unknown
    field of three bytes appended (field 1000, varint 0), so both halves run on every graph the tests build,
    subgraph bodies included."""
    import sys
    from test_permute import blockers, bodies, captured, conv_zoo, mlp_zoo
    from conftest import save
    subprocess.run([sys.executable, str(ROOT / "models" / "make_models.py"), "all", str(tmp_path)], check=True)
    for make in (blockers, bodies, captured, conv_zoo, mlp_zoo):
        save(make(), tmp_path / f"{make.__name__}.onnx")
    files = []
    for model in sorted(tmp_path.glob("*.onnx")) + [DEMO] + [c for c in CASES if c.name.startswith("model-")]:
        padded = tmp_path / f"{model.name}.odd"
        padded.write_bytes(model.read_bytes() + b"\xc0\x3e\x00")
        files += [model, padded]
    assert len(files) >= 24
    _replay("fuzz_model", files)


def test_npz_harness_survives_truncated_and_flipped_archives(tmp_path):
    """The .npz reader on numpy's own archives (stored, deflated, zip64), each cut at every 7th byte and with
    300 seeded single-byte flips: every input ends in an array set or an error, never a crash (the harness
    checks that arrays lie inside the input and hold their shapes' bytes)."""
    import sys
    subprocess.run([sys.executable, str(ROOT / "fuzz" / "npz_seeds.py"), str(tmp_path / "seeds")], check=True)
    seeds = sorted((tmp_path / "seeds").glob("*.npz")) + [c for c in CASES if c.name.startswith("npz-")]
    files = seeds + _cut_and_flip(seeds, tmp_path, np.random.default_rng(11), 300)
    assert len(files) > 900
    _replay("fuzz_npz", files)


def _cut_and_flip(seeds, out, rng, flips):
    """Each seed, cut at every 7th byte, and with seeded single-byte flips."""
    files = []
    for seed in seeds:
        raw = seed.read_bytes()
        for n, cut in enumerate(range(0, len(raw), 7)):
            files.append(out / f"{seed.name}-cut{n}")
            files[-1].write_bytes(raw[:cut])
        for n in range(flips):
            b = bytearray(raw)
            b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
            files.append(out / f"{seed.name}-flip{n}")
            files[-1].write_bytes(bytes(b))
    return files


def test_calibration_data_harness_reads_its_seeds_and_survives_damaged_ones(tmp_path):
    """The calibration-data reader, in each layout (safetensors, .npz, test-data .pb files), bound to a fixed set
    of model inputs: every seed opens with the samples it holds, and each cut or flipped copy ends in samples
    that fit the inputs (the harness checks types, ranks, dimensions and reads every byte) or an error."""
    import sys
    seeds_dir = tmp_path / "seeds"
    subprocess.run([sys.executable, str(ROOT / "fuzz" / "calib_seeds.py"), str(seeds_dir)], check=True)
    seeds = sorted(seeds_dir.iterdir())
    assert len(seeds) == 16
    trace = _replay("fuzz_calib", seeds, env={"NMP_FUZZ_TRACE": "1"}).splitlines()
    want = {"st-stacked": 4, "st-rows": 2, "st-any-rank": 3, "npz-shared-state": 4, "pb-named": 1}
    opened = dict(zip((s.name for s in seeds), trace))
    assert all(line.startswith("opened ") for line in trace) and len(trace) == len(seeds), trace
    assert {k: int(opened[k].split()[1]) for k in want} == want
    regressions = [c for c in CASES if c.name.startswith("calib-")]
    files = _cut_and_flip(seeds, tmp_path, np.random.default_rng(12), 60) + regressions
    assert len(files) > 1500
    _replay("fuzz_calib", files)
