"""The C library: make install, pkg-config, the README example, and --save-masks."""
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.numpy import load_file

from conftest import ROOT, nmprune

DEMO = ROOT / "models" / "demo.onnx"


def _install(prefix):
    # A make of its own: not the settings of a make this test may run under (a sanitized build).
    make_vars = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "BUILD", "OPT", "CC", "CUDA",
                 "CFLAGS", "CPPFLAGS", "LDFLAGS", "LDLIBS")
    env = {k: v for k, v in os.environ.items() if k not in make_vars}
    subprocess.run(["make", "-s", "-C", str(ROOT), "install", f"PREFIX={prefix}"], check=True,
                   capture_output=True, env=env)
    return prefix / "lib" / "pkgconfig"


def _build(tmp_path, source):
    """Installs the library under tmp_path and builds a C program against it with pkg-config's flags."""
    pc = _install(tmp_path / "prefix")
    env = dict(os.environ, PKG_CONFIG_PATH=str(pc))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "--static", "nmprune"], env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    exe = tmp_path / source.stem
    subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", str(source), *flags, "-o", str(exe)],
                   check=True)
    return exe


def test_install_and_readme_example(tmp_path):
    exe = _build(tmp_path, ROOT / "examples" / "prune_model.c")
    for f in ("bin/nmprune", "lib/libnmprune.a", "include/nmprune.h", "lib/pkgconfig/nmprune.pc"):
        assert (tmp_path / "prefix" / f).exists(), f
    # The README shows this very file.
    assert (ROOT / "examples" / "prune_model.c").read_text() in (ROOT / "README.md").read_text()

    out = tmp_path / "pruned.onnx"
    r = subprocess.run([str(exe), str(DEMO), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("stem.weight 2:4 50.0% sparse, kept ")
    assert lines[3] == "depthwise.weight skipped: depthwise convolution"
    assert len(lines) == 5
    assert nmprune("check", out, "-q").code == 0
    # The library and the command write the same model.
    cli = tmp_path / "cli.onnx"
    nmprune("prune", DEMO, "-o", cli, "-q", check=0)
    assert cli.read_bytes() == out.read_bytes()

    r = subprocess.run([str(exe), str(tmp_path / "missing.onnx"), str(out)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("I/O error: ") and "missing.onnx: cannot open" in r.stderr


def test_header_compiles_as_cpp(tmp_path):
    src = tmp_path / "use.cpp"
    src.write_text('#include <nmprune.h>\nint main() { nmp_options o; nmp_options_init(&o); return o.threads; }\n')
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-fsyntax-only", f"-I{ROOT / 'include'}", str(src)],
                   check=True)


def test_save_masks(tmp_path):
    out, masks = tmp_path / "out.onnx", tmp_path / "masks.safetensors"
    nmprune("prune", DEMO, "-o", out, "--save-masks", masks, "-q", check=0)
    loaded = load_file(str(masks))
    pruned = {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(DEMO).graph.initializer}
    assert sorted(loaded) == ["block.conv1.weight", "block.conv2.weight", "head.weight", "stem.weight"]
    for name, mask in loaded.items():
        assert mask.dtype == np.bool_ and mask.shape == pruned[name].shape
        np.testing.assert_array_equal(pruned[name], np.where(mask, original[name], 0))
        assert mask.mean() == 0.5
    # A dry run writes the masks and no model; a failed run leaves no masks file.
    dry = tmp_path / "dry.safetensors"
    nmprune("prune", DEMO, "--dry-run", "--save-masks", dry, "-q", check=0)
    for name, mask in load_file(str(dry)).items():
        np.testing.assert_array_equal(mask, loaded[name])
    bad = tmp_path / "bad.safetensors"
    r = nmprune("prune", DEMO, "-o", tmp_path / "nodir" / "x.onnx", "--save-masks", bad)
    assert r.code == 4 and not bad.exists() and not list(tmp_path.glob("bad.safetensors.*"))


PERMUTE_C = r"""
#include <stdio.h>
#include <nmprune.h>
int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	nmp_options o;
	nmp_options_init(&o);
	o.permute = true;
	char err[512];
	nmp_session *s;
	if (nmp_open(argv[1], &o, &s, err, sizeof err) != NMP_OK) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	int rc = nmp_prune_save(s, argv[2]) != NMP_OK;
	if (rc)
		fprintf(stderr, "%s\n", nmp_last_error(s));
	nmp_close(&s);
	return rc;
}
"""


def test_library_permutes_as_the_command_does(tmp_path):
    src = tmp_path / "permute.c"
    src.write_text(PERMUTE_C)
    exe = _build(tmp_path, src)
    out, cli = tmp_path / "lib.onnx", tmp_path / "cli.onnx"
    r = subprocess.run([str(exe), str(DEMO), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    nmprune("prune", DEMO, "-o", cli, "--permute", "-q", check=0)
    plain = tmp_path / "plain.onnx"
    nmprune("prune", DEMO, "-o", plain, "-q", check=0)
    assert out.read_bytes() == cli.read_bytes()
    assert out.read_bytes() != plain.read_bytes()  # the demo model has permutable groups


CALIBRATED_C = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <nmprune.h>

/* calibrated MODEL OUT METHOD DATA [ORT_LIBRARY]: prints each pruned weight's method and output error */
int main(int argc, char **argv)
{
	nmp_options o;
	nmp_options_init(&o);
	o.align = "none";
	o.method = argv[3];
	o.calibration = argv[4][0] ? argv[4] : NULL;
	o.ort_library = argc > 5 ? argv[5] : NULL;
	nmp_session *s = NULL;
	char err[512];
	nmp_status st = nmp_open(argv[1], &o, &s, err, sizeof err);
	if (st != NMP_OK) {
		fprintf(stderr, "%s: %s\n", nmp_status_string(st), err);
		return 10 + (int)st;
	}
	st = nmp_prune_save(s, argv[2]);
	if (st != NMP_OK) {
		fprintf(stderr, "%s: %s\n", nmp_status_string(st), nmp_last_error(s));
		nmp_close(&s);
		return 20 + (int)st;
	}
	for (size_t i = 0; i < nmp_weight_count(s); i++) {
		nmp_weight w;
		nmp_weight_get(s, i, &w);
		printf("%s %s %s\n", w.name, w.method, isnan(w.output_error) ? "-" : "error");
	}
	nmp_close(&s);
	return 0;
}
"""


def _mlp_with_samples(tmp_path, seed):
    """test_calibration's two-layer model and calibration samples for it, written under tmp_path."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from test_calibration import mlp, mlp_data
    from safetensors.numpy import save_file
    rng = np.random.default_rng(seed)
    model, _ = mlp(rng)
    path, data = tmp_path / "mlp.onnx", tmp_path / "d.safetensors"
    onnx.save(model, str(path))
    save_file({"x": mlp_data(rng)}, str(data))
    return path, data


def test_library_calibrates_as_the_command_does(tmp_path):
    """method and calibration in nmp_options: the library writes the command's model, and says what it did."""
    path, data = _mlp_with_samples(tmp_path, 7)
    src = tmp_path / "calibrated.c"
    src.write_text(CALIBRATED_C)
    exe = _build(tmp_path, src)
    for method in ("wanda", "sparsegpt"):
        out, cli = tmp_path / f"lib-{method}.onnx", tmp_path / f"cli-{method}.onnx"
        r = subprocess.run([str(exe), str(path), str(out), method, str(data)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        error = "error" if method == "sparsegpt" else "-"
        assert r.stdout.splitlines() == [f"W1 {method} {error}", f"W2 {method} {error}"]
        nmprune("prune", path, "-o", cli, "--align", "none", "--method", method, "--calibration", data, "-q",
                check=0)
        assert out.read_bytes() == cli.read_bytes()
    r = subprocess.run([str(exe), str(path), str(tmp_path / "x.onnx"), "sparsegpt", ""], capture_output=True,
                       text=True)
    assert r.returncode == 11 and "method sparsegpt needs calibration samples" in r.stderr  # USAGE at open
    r = subprocess.run([str(exe), str(path), str(tmp_path / "x.onnx"), "obs", str(data)], capture_output=True,
                       text=True)
    assert r.returncode == 11 and "method 'obs'" in r.stderr
    r = subprocess.run([str(exe), str(path), str(tmp_path / "x.onnx"), "wanda", str(data), "/nonexistent/libort.so"],
                       capture_output=True, text=True)
    assert r.returncode == 26 and "/nonexistent/libort.so" in r.stderr  # RUNTIME at save
    assert not (tmp_path / "x.onnx").exists()


def test_library_compares_as_the_command_does(tmp_path):
    """nmp_compare_models gives compare's measures; the README's gate passes sparsegpt's model and fails
    magnitude's at a bound between the two, and failures come back with the command's status and message."""
    import json
    dense, data = _mlp_with_samples(tmp_path, 11)
    exe = _build(tmp_path, ROOT / "examples" / "compare_models.c")
    assert (ROOT / "examples" / "compare_models.c").read_text() in (ROOT / "README.md").read_text()

    cosine = {}
    for method in ("magnitude", "sparsegpt"):
        out = tmp_path / f"{method}.onnx"
        extra = [] if method == "magnitude" else ["--method", method, "--calibration", data]
        nmprune("prune", dense, "-o", out, "--align", "none", "-q", *extra, check=0)
        cmp = json.loads(nmprune("compare", dense, out, "--calibration", data, "--json", check=0).out)
        (o,) = cmp["outputs"]
        cosine[method] = o["cosine"]
        r = subprocess.run([str(exe), str(dense), str(out), str(data), "0"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{o['name']} cosine {o['cosine']:.6f} rel_l2 {o['rel_l2']:.6f} over {cmp['samples']} samples\n"
    assert cosine["sparsegpt"] > cosine["magnitude"] + 0.01, cosine
    bound = str((cosine["sparsegpt"] + cosine["magnitude"]) / 2)
    verdict = {m: subprocess.run([str(exe), str(dense), str(tmp_path / f"{m}.onnx"), str(data), bound],
                                 capture_output=True, text=True).returncode for m in cosine}
    assert verdict == {"magnitude": 3, "sparsegpt": 0}

    r = subprocess.run([str(exe), str(dense), str(tmp_path / "missing.onnx"), str(data), "0"], capture_output=True,
                       text=True)
    assert r.returncode == 1 and r.stderr.startswith("I/O error: ") and "missing.onnx: cannot open" in r.stderr
    other = onnx.load(str(dense))  # the same inputs and output names, its output cast to another type
    y = other.graph.output[0]
    next(n for n in other.graph.node if y.name in n.output).output[0] = "y_float"
    other.graph.node.append(onnx.helper.make_node("Cast", ["y_float"], [y.name], to=onnx.TensorProto.INT32))
    y.type.tensor_type.elem_type = onnx.TensorProto.INT32
    onnx.save(other, str(tmp_path / "other.onnx"))
    r = subprocess.run([str(exe), str(dense), str(tmp_path / "other.onnx"), str(data), "0"], capture_output=True,
                       text=True)
    assert r.returncode == 1 and r.stderr.startswith("bad model: "), r.stderr
    r = subprocess.run([str(exe), str(dense), str(dense), str(data), "0"], capture_output=True, text=True,
                       env=dict(os.environ, NMPRUNE_ORT_LIBRARY="/nonexistent/libort.so"))
    assert r.returncode == 1 and r.stderr.startswith("ONNX Runtime error: ") and "/nonexistent/libort.so" in r.stderr


SENSITIVITY_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <nmprune.h>

/* sensitivity MODEL METHOD DATA TARGET RULES [MEASURE]: the ranking, the summary, and the rules file */
int main(int argc, char **argv)
{
	nmp_options o;
	nmp_options_init(&o);
	o.align = "none";
	o.method = argv[2];
	o.calibration = argv[2][0] == 'm' ? NULL : argv[3]; /* magnitude takes its samples from the ranking's options */
	nmp_session *s = NULL;
	char err[512];
	nmp_status st = nmp_open(argv[1], &o, &s, err, sizeof err);
	if (st != NMP_OK) {
		fprintf(stderr, "%s: %s\n", nmp_status_string(st), err);
		return 10 + (int)st;
	}
	nmp_sensitivity_options so = { .calibration = o.calibration || !argv[3][0] ? NULL : argv[3],
				       .target_fidelity = atof(argv[4]),
				       .measure = argc > 6 ? argv[6] : NULL };
	nmp_sensitivity_summary sum;
	if ((st = nmp_rank_sensitivity(s, &so, &sum)) != NMP_OK ||
	    (argv[5][0] && (st = nmp_sensitivity_write_rules(s, argv[5])) != NMP_OK)) {
		fprintf(stderr, "%s: %s\n", nmp_status_string(st), nmp_last_error(s));
		nmp_close(&s);
		return 20 + (int)st;
	}
	for (size_t r = 0; r < sum.ranked; r++) {
		size_t i;
		nmp_weight w;
		nmp_sensitivity_ranked(s, r, &i);
		nmp_weight_get(s, i, &w);
		printf("%zu %s %.12g\n", r + 1, w.name, w.fidelity_alone);
	}
	printf("samples %zu runs %zu all %.12g keep %zu reached %.12g met %d\n", sum.samples, sum.runs, sum.all_pruned,
	       sum.keep_dense, sum.reached, sum.target_met);
	size_t past;
	printf("past the end: %d\n", nmp_sensitivity_ranked(s, sum.ranked, &past) == NMP_ERR_USAGE);
	nmp_close(&s);
	return 0;
}
"""


def test_library_ranks_sensitivity_as_the_command_does(tmp_path):
    """nmp_rank_sensitivity is inspect --sensitivity in process: the same ranking, fidelities, search and rules
    file, for magnitude (samples in the ranking's options) and for a calibrated method (the session's)."""
    import json
    path, data = _mlp_with_samples(tmp_path, 11)
    src = tmp_path / "sensitivity.c"
    src.write_text(SENSITIVITY_C)
    exe = _build(tmp_path, src)
    for method, measure in (("magnitude", "cosine"), ("sparsegpt", "rel-l2")):
        rules, cli_rules = tmp_path / f"lib-{method}.json", tmp_path / f"cli-{method}.json"
        r = subprocess.run([str(exe), str(path), method, str(data), "0.9999", str(rules), measure],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        j = json.loads(nmprune("inspect", path, "--sensitivity", "--calibration", data, "--align", "none",
                               "--method", method, "--fidelity", measure, "--target-fidelity", "0.9999",
                               "--write-rules", cli_rules, "--json", check=0).out)
        lines = r.stdout.splitlines()
        got = [line.split() for line in lines[:-2]]
        assert [(int(g[0]), g[1]) for g in got] == [(w["rank"], w["name"]) for w in j["weights"]]
        assert [float(g[2]) for g in got] == pytest.approx([w["fidelity_pruned_alone"] for w in j["weights"]],
                                                          abs=1e-7)  # the report rounds what it prints
        t, summary = j["target"], lines[-2].split()
        assert summary[0::2] == ["samples", "runs", "all", "keep", "reached", "met"]
        assert [int(summary[1]), int(summary[3]), int(summary[7]), int(summary[11])] == \
            [j["samples"], j["runs"], t["keep_dense"], int(t["met"])]
        assert [float(summary[5]), float(summary[9])] == pytest.approx([j["fidelity_all_pruned"], t["reached"]],
                                                                       abs=1e-7)
        assert lines[-1] == "past the end: 1"
        assert len(j["weights"]) == 2 and j["samples"] == 12 and t["keep_dense"] >= 1
        assert rules.read_text() == cli_rules.read_text()
    # usage errors: a bad measure or target, rules without a target, no samples
    r = subprocess.run([str(exe), str(path), "magnitude", str(data), "0", str(rules)], capture_output=True, text=True)
    assert r.returncode == 21 and "rules need a ranking with a target fidelity" in r.stderr, r.stderr
    r = subprocess.run([str(exe), str(path), "magnitude", str(data), "0", "", "top5"], capture_output=True, text=True)
    assert r.returncode == 21 and "measure 'top5'" in r.stderr, r.stderr
    r = subprocess.run([str(exe), str(path), "magnitude", str(data), "1.5", ""], capture_output=True, text=True)
    assert r.returncode == 21 and "target fidelity 1.5" in r.stderr, r.stderr
    r = subprocess.run([str(exe), str(path), "magnitude", str(tmp_path / "none.safetensors"), "0", ""],
                       capture_output=True, text=True)
    assert r.returncode == 23 and "none.safetensors: cannot open calibration data" in r.stderr, r.stderr  # IO
    r = subprocess.run([str(exe), str(path), "magnitude", "", "0", ""], capture_output=True, text=True)
    assert r.returncode == 21 and "sensitivity needs calibration samples" in r.stderr, r.stderr
