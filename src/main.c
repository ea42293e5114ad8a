/*
 * main.c — the nmprune command: the only place that prints to the user and
 * picks the exit code.  The passes run in one visible sequence per command.
 */
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "cli.h"
#include "compare.h"
#include "error.h"
#include "model.h"
#include "pending.h"
#include "plan.h"
#include "prune.h"
#include "report.h"
#include "sensitivity.h"
#include "version.h"

typedef enum nmp_exit {
	EXIT_OK_ = 0,
	EXIT_VIOLATIONS = 1,
	EXIT_USAGE = 2,
	EXIT_MODEL = 3,
	EXIT_IO = 4,
	EXIT_DEVICE = 5,
	EXIT_RUNTIME = 6,
} nmp_exit;

static nmp_exit exit_code(nmp_status s)
{
	switch (s) {
	case NMP_OK: return EXIT_OK_;
	case NMP_ERR_USAGE: return EXIT_USAGE;
	case NMP_ERR_MODEL: return EXIT_MODEL;
	case NMP_ERR_IO: case NMP_ERR_NOMEM: return EXIT_IO;
	case NMP_ERR_DEVICE: return EXIT_DEVICE;
	case NMP_ERR_RUNTIME: return EXIT_RUNTIME;
	}
	return EXIT_IO;
}

static nmp_select_opts select_opts(const nmp_cli *cli)
{
	return (nmp_select_opts){
		.pattern = cli->pattern,
		.align = cli->align,
		.ops = cli->ops,
		.include = cli->include,
		.n_include = cli->n_include,
		.exclude = cli->exclude,
		.n_exclude = cli->n_exclude,
		.dense_first = cli->dense_first,
		.rules_path = cli->rules,
		.greedy = strcmp(cli->method, "greedy") == 0,
	};
}

static bool same_file(const char *a, const char *b);
static nmp_method calib_method(const nmp_cli *cli);
static nmp_status check_collisions(const nmp_cli *cli, const nmp_model *m, nmp_error *err);

static nmp_fidelity_measure fidelity_measure(const nmp_cli *cli)
{
	nmp_fidelity_measure f = NMP_FIDELITY_COSINE; /* the parser only lets the three names through */
	if (cli->fidelity)
		nmp_fidelity_measure_parse(cli->fidelity, &f);
	return f;
}

static json_t *sensitivity_json(const nmp_cli *cli, const nmp_plan *plan, const nmp_sensitivity_result *r)
{
	char dn[NMP_DISPLAY_MAX];
	json_t *ws = json_array();
	for (size_t i = 0; i < r->n_ranked; i++) {
		size_t ci = r->order[i];
		const nmp_choice *ch = &plan->sel->choices[ci];
		json_t *e = json_pack("{s:s,s:s,s:I}", "name", nmp_display_name(ch->cand->name, dn, sizeof dn), "pattern",
				      ch->pattern.text, "rank", (json_int_t)(i + 1));
		json_object_set_new(e, "fidelity_pruned_alone", nmp_report_ratio_json(r->fidelity[ci]));
		json_object_set_new(e, "keep_dense", json_boolean(cli->target_fidelity > 0 && i < r->keep_dense));
		json_object_set_new(e, "method",
				    json_string(nmp_method_name(r->cal ? r->cal[ci].method : NMP_METHOD_MAGNITUDE)));
		if (r->cal && r->cal[ci].note[0])
			json_object_set_new(e, "note", json_string(r->cal[ci].note));
		json_array_append_new(ws, e);
	}
	json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:b,s:s,s:I,s:I,s:f,s:o}", "tool", "nmprune", "command", "inspect",
			      "model", plan->model->path, "method", nmp_method_name(calib_method(cli)), "permute",
			      cli->permute, "fidelity", nmp_fidelity_measure_name(fidelity_measure(cli)), "samples",
			      (json_int_t)r->samples, "runs", (json_int_t)r->runs, "elapsed_s", r->seconds, "weights", ws);
	json_object_set_new(j, "fidelity_all_pruned", nmp_report_ratio_json(r->all_pruned));
	if (cli->target_fidelity > 0)
		json_object_set_new(j, "target", json_pack("{s:f,s:I,s:f,s:b}", "fidelity", cli->target_fidelity,
							   "keep_dense", (json_int_t)r->keep_dense, "reached", r->reached,
							   "met", r->target_met));
	return j;
}

static void sensitivity_text(const nmp_cli *cli, const nmp_plan *plan, const nmp_sensitivity_result *r)
{
	char dn[NMP_DISPLAY_MAX];
	printf("%4s  %-48s  %-10s  %s (%s)\n", "RANK", "WEIGHT", "PATTERN", "FIDELITY PRUNED ALONE",
	       nmp_fidelity_measure_name(fidelity_measure(cli)));
	for (size_t i = 0; i < r->n_ranked; i++) {
		size_t ci = r->order[i];
		const nmp_choice *ch = &plan->sel->choices[ci];
		printf("%4zu  %-48s  %-10s  %.6f%s", i + 1, nmp_display_name(ch->cand->name, dn, sizeof dn),
		       ch->pattern.text, r->fidelity[ci], cli->target_fidelity > 0 && i < r->keep_dense ? "  (kept dense)" : "");
		if (r->cal && r->cal[ci].method != calib_method(cli))
			printf("  (%s: %s)", nmp_method_name(r->cal[ci].method), r->cal[ci].note);
		putchar('\n');
	}
	printf("every eligible weight pruned by %s%s: fidelity %.6f; %zu samples, %zu runs, %.2f s\n",
	       nmp_method_name(calib_method(cli)), cli->permute ? " after permutation" : "", r->all_pruned, r->samples,
	       r->runs, r->seconds);
	if (cli->target_fidelity > 0)
		printf("target %.6f: %s keeping the %zu most sensitive dense (fidelity %.6f)\n", cli->target_fidelity,
		       r->target_met ? "met" : "not met", r->keep_dense, r->reached);
}

/*
 * The JSON of inspect and compare: into --report through `pending`, which
 * then commits, so that it lands with the other outputs (a rules file) or
 * not at all; then on stdout under --json.  j may be NULL without either.
 */
static nmp_status finish_json(const nmp_cli *cli, nmp_pending *pending, json_t *j, nmp_error *err)
{
	FILE *f;
	if (cli->report) {
		NMP_TRY(nmp_pending_open(pending, cli->report, "report", &f, err));
		nmp_report_print(f, j);
	}
	NMP_TRY(nmp_pending_commit(pending, err));
	if (cli->json)
		nmp_report_print(stdout, j);
	return NMP_OK;
}

static nmp_status run_inspect(const nmp_cli *cli, nmp_error *err)
{
	nmp_plan plan;
	nmp_select_opts so = select_opts(cli);
	nmp_engine *engine = NULL;
	nmp_pending *pending = NULL;
	nmp_sensitivity_result r = { 0 };
	json_t *j = NULL;
	nmp_status s = nmp_plan_build(cli->input, &so, &plan, err);
	if (s == NMP_OK)
		s = check_collisions(cli, plan.model, err);
	if (s == NMP_OK)
		s = nmp_pending_create(&pending, err);
	if (s == NMP_OK && cli->sensitivity) {
		s = nmp_engine_create(nmp_device_parse(cli->device), cli->threads, &engine, NULL, 0, err);
		nmp_sensitivity_opts o = { .data = cli->calibration, .max_samples = cli->calib_samples,
					   .ort_library = cli->ort_library, .threads = cli->threads, .engine = engine,
					   .method = calib_method(cli), .damp = cli->damp, .stages = cli->calib_stages,
					   .permute = cli->permute, .permute_effort = cli->permute_effort,
					   .eval_data = cli->eval_data, .fidelity = fidelity_measure(cli),
					   .target = cli->target_fidelity };
		if (s == NMP_OK)
			s = nmp_sensitivity(&plan, &o, &r, err);
	}
	if (s == NMP_OK && cli->write_rules) {
		FILE *f;
		s = nmp_pending_open(pending, cli->write_rules, "rules file", &f, err);
		if (s == NMP_OK)
			s = nmp_sensitivity_rules(&plan, &r, f, err);
	}
	if (s == NMP_OK && (cli->json || cli->report))
		j = cli->sensitivity ? sensitivity_json(cli, &plan, &r) : nmp_report_inspect_json(&plan);
	if (s == NMP_OK)
		s = finish_json(cli, pending, j, err);
	if (s == NMP_OK && !cli->json && cli->sensitivity)
		sensitivity_text(cli, &plan, &r);
	else if (s == NMP_OK && !cli->json)
		s = nmp_report_inspect(stdout, &plan, false, err);
	json_decref(j);
	nmp_pending_free(&pending);
	nmp_sensitivity_free(&r);
	nmp_engine_free(&engine);
	nmp_plan_free(&plan);
	return s;
}

/* Progress for models with more than a few hundred MB of weights. */
typedef struct progress {
	bool tty;
	int last_decile;
} progress;

static void on_progress(void *ctx, size_t done, size_t total, uint64_t bytes_done, uint64_t bytes_total)
{
	progress *p = ctx;
	if (bytes_total < (256u << 20))
		return;
	int pct = (int)(100.0 * (double)bytes_done / (double)bytes_total);
	if (p->tty) {
		fprintf(stderr, "\rnmprune: %zu/%zu weights, %d%%%s", done, total, pct, done == total ? "\n" : "");
	} else if (pct / 10 > p->last_decile) {
		p->last_decile = pct / 10;
		fprintf(stderr, "nmprune: %zu/%zu weights, %d%%\n", done, total, pct);
	}
}

/*
 * The side outputs of prune and check (--report, --report-html, --json),
 * produced once the result is final and, for prune, before the model is
 * renamed into place: files go through the pending set, which commits them
 * with the model or removes them; stdout is flushed and checked here, so a
 * failure to write it also leaves the model uncommitted.
 */
typedef struct side_ctx {
	const nmp_cli *cli;
	const nmp_plan *plan;
	nmp_engine *engine;
	const char *cmd;
	nmp_pending *pending;
} side_ctx;

static nmp_status side_outputs(void *ctx, const nmp_pass_result *r, nmp_error *err)
{
	const side_ctx *sc = ctx;
	const nmp_cli *cli = sc->cli;
	const bool prune = strcmp(sc->cmd, "prune") == 0;
	nmp_status s = NMP_OK;
	json_t *j = NULL;
	FILE *f;
	if (cli->report || cli->json) {
		j = nmp_report_pass_json(sc->plan, r, sc->cmd, nmp_engine_name(sc->engine),
					 prune && !cli->dry_run ? cli->output : NULL, cli->dry_run);
		if (!j)
			return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	}
	if (cli->report && (s = nmp_pending_open(sc->pending, cli->report, "report", &f, err)) == NMP_OK)
		nmp_report_print(f, j);
	if (s == NMP_OK && cli->report_html && prune &&
	    (s = nmp_pending_open(sc->pending, cli->report_html, "HTML report", &f, err)) == NMP_OK)
		nmp_report_html(f, sc->plan, r, cli->dry_run);
	if (s == NMP_OK && cli->json) {
		nmp_report_print(stdout, j);
		errno = 0;
		if (fflush(stdout) != 0 || ferror(stdout))
			s = nmp_error_errno(err, errno ? errno : EIO, "cannot write", "standard output");
	}
	json_decref(j);
	return s;
}

static void text_report(const nmp_cli *cli, const nmp_plan *plan, const nmp_pass_result *r)
{
	if (cli->json || cli->verbosity < 0)
		return;
	if (cli->cmd == NMP_CMD_CHECK)
		nmp_report_check_text(stdout, plan, r);
	else
		nmp_report_prune_text(stderr, plan, r, cli->dry_run);
}

/*
 * Two names for one file (the same path, or one file through links):
 * compared by device and inode where the file exists, else by the absolute
 * path of its directory and its name.
 */
static bool same_file(const char *a, const char *b)
{
	struct stat sa, sb;
	if (stat(a, &sa) == 0 && stat(b, &sb) == 0)
		return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
	char da[PATH_MAX], db[PATH_MAX], ra[PATH_MAX], rb[PATH_MAX];
	snprintf(da, sizeof da, "%s", a);
	snprintf(db, sizeof db, "%s", b);
	const char *ba = strrchr(a, '/') ? strrchr(a, '/') + 1 : a, *bb = strrchr(b, '/') ? strrchr(b, '/') + 1 : b;
	if (strcmp(ba, bb) != 0)
		return false;
	if (!realpath(strchr(a, '/') ? dirname(da) : ".", ra) || !realpath(strchr(b, '/') ? dirname(db) : ".", rb))
		return strcmp(a, b) == 0;
	return strcmp(ra, rb) == 0;
}

/*
 * Outputs that would overwrite the input, its data files or each other are
 * refused before anything is written: a report over the model, or -o over
 * the input without --in-place, would destroy data and still exit 0.
 */
static nmp_status check_collisions(const nmp_cli *cli, const nmp_model *m, nmp_error *err)
{
	typedef struct named { const char *opt, *path; } named;
	named outs[6];
	size_t n = 0;
	char out_data[PATH_MAX + 8] = "";
	if (cli->cmd == NMP_CMD_PRUNE && !cli->dry_run && cli->output) {
		if (!cli->in_place && same_file(cli->output, cli->input))
			return nmp_error_set(err, NMP_ERR_USAGE, "%s: -o names the input model; use --in-place to replace it",
					     cli->output);
		snprintf(out_data, sizeof out_data, "%s.data", cli->output);
		if (cli->external_data)
			outs[n++] = (named){ "--external-data", cli->external_data };
	}
	if (cli->report)
		outs[n++] = (named){ "--report", cli->report };
	if (cli->write_rules)
		outs[n++] = (named){ "--write-rules", cli->write_rules };
	if (cli->report_html)
		outs[n++] = (named){ "--report-html", cli->report_html };
	if (cli->save_masks)
		outs[n++] = (named){ "--save-masks", cli->save_masks };
	for (size_t i = 0; i < n; i++) {
		for (size_t f = 0; f < m->n_files; f++)
			if (same_file(outs[i].path, m->files[f].path))
				return nmp_error_set(err, NMP_ERR_USAGE, "%s: %s names %s", outs[i].path, outs[i].opt,
						     f == 0 ? "the input model" : "a data file of the input model");
		if (cli->cmd == NMP_CMD_PRUNE && !cli->dry_run && cli->output) {
			if (same_file(outs[i].path, cli->output))
				return nmp_error_set(err, NMP_ERR_USAGE, "%s: %s names the output model", outs[i].path,
						     outs[i].opt);
			if (strcmp(outs[i].opt, "--external-data") != 0 && same_file(outs[i].path, out_data))
				return nmp_error_set(err, NMP_ERR_USAGE, "%s: %s names the output's data file", outs[i].path,
						     outs[i].opt);
		}
		for (size_t k = 0; k < i; k++)
			if (same_file(outs[i].path, outs[k].path))
				return nmp_error_set(err, NMP_ERR_USAGE, "%s: %s and %s name the same file", outs[i].path,
						     outs[k].opt, outs[i].opt);
	}
	return NMP_OK;
}

/* The engine's notes (a tensor handed to the CPU backend, and why), under -v. */
static void print_note(void *user, const char *line)
{
	(void)user;
	fprintf(stderr, "nmprune: %s\n", line);
}

static nmp_method calib_method(const nmp_cli *cli)
{
	nmp_method m = NMP_METHOD_MAGNITUDE; /* the parser only lets the three names through */
	nmp_method_parse(cli->calib_method, &m);
	return m;
}

static int print_ratio(FILE *f, double v)
{
	return isnan(v) ? fprintf(f, "  %9s", "-") : fprintf(f, "  %9.6f", v);
}

static nmp_status run_compare(const nmp_cli *cli, nmp_error *err)
{
	nmp_compare_opts o = { .dense = cli->input, .pruned = cli->input2, .data = cli->calibration,
			       .max_samples = cli->calib_samples, .ort_library = cli->ort_library,
			       .threads = cli->threads };
	nmp_compare_result r;
	const char *models[2] = { "the dense model", "the pruned model" };
	for (int k = 0; cli->report && k < 2; k++)
		if (same_file(cli->report, k ? cli->input2 : cli->input))
			return nmp_error_set(err, NMP_ERR_USAGE, "%s: --report names %s", cli->report, models[k]);
	NMP_TRY(nmp_compare(&o, &r, err));
	nmp_status s = NMP_OK;
	if (cli->json || cli->report) {
		json_t *outs = json_array();
		for (size_t i = 0; i < r.n; i++) {
			const nmp_output_fidelity *f = &r.outputs[i];
			json_t *e = json_pack("{s:s}", "name", f->name);
			json_object_set_new(e, "cosine", nmp_report_ratio_json(f->cosine));
			json_object_set_new(e, "cosine_min", nmp_report_ratio_json(f->cosine_min));
			json_object_set_new(e, "rel_l2", nmp_report_ratio_json(f->rel_l2));
			json_object_set_new(e, "top1", nmp_report_ratio_json(f->top1));
			json_object_set_new(e, "agreement", nmp_report_ratio_json(f->agreement));
			json_object_set_new(e, "shape_changed", json_integer((json_int_t)f->shape_changed));
			json_object_set_new(e, "nonfinite", json_integer((json_int_t)f->nonfinite));
			json_object_set_new(e, "nonfinite_samples", json_integer((json_int_t)f->nonfinite_samples));
			json_array_append_new(outs, e);
		}
		json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:f,s:s,s:o}", "tool", "nmprune", "version", NMP_VERSION,
				      "command", "compare", "dense", cli->input, "pruned", cli->input2, "samples",
				      (json_int_t)r.samples, "elapsed_s", r.seconds, "runtime", r.runtime, "outputs", outs);
		nmp_pending *pending = NULL;
		s = nmp_pending_create(&pending, err);
		if (s == NMP_OK)
			s = finish_json(cli, pending, j, err);
		nmp_pending_free(&pending);
		json_decref(j);
	}
	if (s == NMP_OK && !cli->json && cli->verbosity >= 0) {
		printf("%-32s  %9s  %9s  %9s  %9s\n", "OUTPUT", "COSINE", "MIN", "REL L2", "TOP-1");
		for (size_t i = 0; i < r.n; i++) {
			const nmp_output_fidelity *f = &r.outputs[i];
			char dn[NMP_DISPLAY_MAX];
			printf("%-32s", nmp_display_name(f->name, dn, sizeof dn));
			print_ratio(stdout, f->cosine);
			print_ratio(stdout, f->cosine_min);
			print_ratio(stdout, f->rel_l2);
			print_ratio(stdout, f->floating ? f->top1 : f->agreement);
			putchar('\n');
		}
		for (size_t i = 0; i < r.n; i++)
			if (r.outputs[i].shape_changed)
				printf("output '%s': %llu of %zu samples changed shape, counted as misses\n",
				       r.outputs[i].name, (unsigned long long)r.outputs[i].shape_changed, r.samples);
		for (size_t i = 0; i < r.n; i++)
			if (r.outputs[i].nonfinite)
				printf("output '%s': %llu values NaN or infinite in one model and not the other, in %llu of "
				       "%zu samples, counted as misses\n", r.outputs[i].name,
				       (unsigned long long)r.outputs[i].nonfinite,
				       (unsigned long long)r.outputs[i].nonfinite_samples, r.samples);
		printf("%zu samples, %.3f s, %s\n", r.samples, r.seconds, r.runtime);
	}
	nmp_compare_free(&r);
	return s;
}

static nmp_status run_pass(const nmp_cli *cli, bool *violations, nmp_error *err)
{
	nmp_plan plan = { 0 };
	nmp_calib *calib = NULL;
	nmp_engine *engine = NULL;
	nmp_pass_result r = { 0 };
	nmp_channels *channels = NULL;
	nmp_pending *pending = NULL;
	nmp_select_opts so = select_opts(cli);
	char note[320];
	nmp_status s = nmp_plan_build(cli->input, &so, &plan, err);
	if (s == NMP_OK)
		s = check_collisions(cli, plan.model, err);
	if (s == NMP_OK && cli->permute)
		s = nmp_channels_plan(&plan, NMP_PERMUTE_SEED, cli->permute_effort, cli->threads, &channels, err);
	if (s == NMP_OK)
		s = nmp_engine_create(nmp_device_parse(cli->device), cli->threads, &engine, note, sizeof note, err);
	if (s != NMP_OK)
		goto out;
	if (cli->verbosity > 0) {
		fprintf(stderr, "nmprune: %s\n", note);
		nmp_engine_set_notes(engine, print_note, NULL);
		if (plan.model->n_kept)
			fprintf(stderr, "nmprune: %zu initializers that nothing reads are kept as they are, unparsed\n",
				plan.model->n_kept);
		if (plan.model->n_compact)
			fprintf(stderr, "nmprune: %zu small initializers are read from their bytes, without a parsed copy\n",
				plan.model->n_compact);
	}
	if (cli->cmd == NMP_CMD_PRUNE && calib_method(cli) != NMP_METHOD_MAGNITUDE) {
		nmp_calib_opts co = { .method = calib_method(cli), .data = cli->calibration,
				      .max_samples = cli->calib_samples, .damp = cli->damp, .stages = cli->calib_stages,
				      .ort_library = cli->ort_library, .threads = cli->threads,
				      .stats_path = cli->calib_stats, .engine = engine, .channels = channels };
		if ((s = nmp_calibrate(&plan, &co, &calib, err)) != NMP_OK)
			goto out;
	}
	if ((s = nmp_pending_create(&pending, err)) != NMP_OK)
		goto out;
	side_ctx sc = { .cli = cli, .plan = &plan, .engine = engine, .pending = pending,
			.cmd = cli->cmd == NMP_CMD_CHECK ? "check" : "prune" };
	if (cli->cmd == NMP_CMD_CHECK) {
		s = nmp_check(&plan, engine, &r, err);
		if (s == NMP_OK)
			s = side_outputs(&sc, &r, err);
		if (s == NMP_OK)
			s = nmp_pending_commit(pending, err);
		*violations = r.failing > 0;
	} else {
		progress pr = { .tty = isatty(STDERR_FILENO) && cli->verbosity >= 0, .last_decile = 0 };
		/* --in-place through a symbolic link prunes the file it points to, not the link. */
		char real[PATH_MAX];
		const char *output = cli->in_place && realpath(cli->input, real) ? real : cli->output;
		nmp_prune_opts po = {
			.output = output, .dry_run = cli->dry_run, .in_place = cli->in_place,
			.external_data = cli->external_data, .general_path = cli->general_path, .engine = engine,
			.masks_path = cli->save_masks, .channels = channels, .permute_only = cli->permute_only,
			.calib = calib,
			.progress = cli->verbosity >= 0 ? on_progress : NULL, .progress_ctx = &pr,
			.pending = pending, .before_commit = side_outputs, .commit_ctx = &sc,
		};
		s = nmp_prune(&plan, &po, &r, err);
		if (s == NMP_OK && r.save.auto_external && cli->verbosity >= 0)
			fprintf(stderr, "nmprune: %s would pass 2 GiB: tensors of 1 KiB and more moved to %s\n",
				cli->output, r.save.data_path);
	}
	if (s == NMP_OK)
		text_report(cli, &plan, &r);
out:
	nmp_pending_free(&pending);
	nmp_pass_result_free(&r);
	nmp_channels_free(&channels);
	nmp_calib_free(&calib);
	nmp_engine_free(&engine);
	nmp_plan_free(&plan);
	return s;
}

int main(int argc, char **argv)
{
	nmp_cli cli;
	nmp_error err = { 0 };
	nmp_status s = nmp_cli_parse(argc, argv, &cli, &err);
	nmp_exit code = EXIT_OK_;
	bool violations = false;

	if (s != NMP_OK) {
		char shown[NMP_DISPLAY_MAX];
		fprintf(stderr, "nmprune: error: %s\n", nmp_display_name(err.message, shown, sizeof shown));
		fprintf(stderr, "usage: nmprune prune|check|inspect IN.onnx [options]; nmprune compare DENSE PRUNED "
				"--calibration DATA; nmprune --help\n");
		code = EXIT_USAGE;
		goto out;
	}
	nmp_signals_install(cli.input);
	switch (cli.cmd) {
	case NMP_CMD_HELP:
		fputs(nmp_cli_usage(cli.help_for), stdout);
		goto out;
	case NMP_CMD_VERSION:
		printf("nmprune %s (ONNX schema %s)\n", NMP_VERSION, NMP_ONNX_SCHEMA);
		goto out;
	case NMP_CMD_PRUNE:
	case NMP_CMD_CHECK:
		s = run_pass(&cli, &violations, &err);
		break;
	case NMP_CMD_INSPECT:
		s = run_inspect(&cli, &err);
		break;
	case NMP_CMD_COMPARE:
		s = run_compare(&cli, &err);
		break;
	case NMP_CMD_NONE:
		break;
	}
	if (s != NMP_OK) {
		char shown[NMP_DISPLAY_MAX]; /* a name in the message must not drive the terminal */
		fprintf(stderr, "nmprune: error: %s\n", nmp_display_name(err.message, shown, sizeof shown));
		code = exit_code(s);
	} else if (violations) {
		code = EXIT_VIOLATIONS;
	}
out:
	if (fclose(stdout) != 0 && code == EXIT_OK_) {
		fprintf(stderr, "nmprune: error: cannot write standard output\n");
		code = EXIT_IO;
	}
	return (int)code;
}
