/*
 * main.c — the nmprune command: the only place that prints to the user and
 * picks the exit code.  The passes run in one visible sequence per command.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "error.h"
#include "model.h"
#include "plan.h"
#include "prune.h"
#include "report.h"
#include "version.h"

typedef enum nmp_exit {
	EXIT_OK_ = 0,
	EXIT_VIOLATIONS = 1,
	EXIT_USAGE = 2,
	EXIT_MODEL = 3,
	EXIT_IO = 4,
	EXIT_DEVICE = 5,
} nmp_exit;

static nmp_exit exit_code(nmp_status s)
{
	switch (s) {
	case NMP_OK: return EXIT_OK_;
	case NMP_ERR_USAGE: return EXIT_USAGE;
	case NMP_ERR_MODEL: return EXIT_MODEL;
	case NMP_ERR_IO: case NMP_ERR_NOMEM: return EXIT_IO;
	case NMP_ERR_DEVICE: return EXIT_DEVICE;
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

static nmp_status run_inspect(const nmp_cli *cli, nmp_error *err)
{
	nmp_plan plan;
	nmp_select_opts so = select_opts(cli);
	nmp_status s = nmp_plan_build(cli->input, &so, &plan, err);
	if (s == NMP_OK)
		s = nmp_report_inspect(stdout, &plan, cli->json, err);
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

/* Reports of prune and check: JSON to a file and/or stdout, text otherwise. */
static nmp_status report(const nmp_cli *cli, const nmp_plan *plan, const nmp_pass_result *r, const char *cmd,
			 nmp_engine *engine, nmp_error *err)
{
	nmp_status s = NMP_OK;
	json_t *j = NULL;
	if (cli->report || cli->json)
		j = nmp_report_pass_json(plan, r, cmd, nmp_engine_name(engine),
					 strcmp(cmd, "prune") == 0 && !cli->dry_run ? cli->output : NULL, cli->dry_run);
	if (cli->report)
		s = nmp_report_write(cli->report, j, err);
	if (s == NMP_OK && cli->report_html && strcmp(cmd, "prune") == 0)
		s = nmp_report_html(cli->report_html, plan, r, cli->dry_run, err);
	if (cli->json)
		nmp_report_print(stdout, j);
	else if (strcmp(cmd, "check") == 0 && cli->verbosity >= 0)
		nmp_report_check_text(stdout, plan, r);
	else if (strcmp(cmd, "prune") == 0 && cli->verbosity >= 0)
		nmp_report_prune_text(stderr, plan, r, cli->dry_run);
	json_decref(j);
	return s;
}

/* The engine's notes (a tensor handed to the CPU backend, and why), under -v. */
static void print_note(void *user, const char *line)
{
	(void)user;
	fprintf(stderr, "nmprune: %s\n", line);
}

static nmp_status run_pass(const nmp_cli *cli, bool *violations, nmp_error *err)
{
	nmp_plan plan = { 0 };
	nmp_engine *engine = NULL;
	nmp_pass_result r = { 0 };
	nmp_channels *channels = NULL;
	nmp_select_opts so = select_opts(cli);
	char note[320];
	nmp_status s = nmp_plan_build(cli->input, &so, &plan, err);
	if (s == NMP_OK && cli->permute)
		s = nmp_channels_plan(&plan, NMP_PERMUTE_SEED, &channels, err);
	if (s == NMP_OK)
		s = nmp_engine_create(nmp_device_parse(cli->device), cli->threads, &engine, note, sizeof note, err);
	if (s != NMP_OK)
		goto out;
	if (cli->verbosity > 0) {
		fprintf(stderr, "nmprune: %s\n", note);
		nmp_engine_set_notes(engine, print_note, NULL);
	}
	if (cli->cmd == NMP_CMD_CHECK) {
		s = nmp_check(&plan, engine, &r, err);
		if (s == NMP_OK)
			s = report(cli, &plan, &r, "check", engine, err);
		*violations = r.failing > 0;
	} else {
		progress pr = { .tty = isatty(STDERR_FILENO) && cli->verbosity >= 0, .last_decile = 0 };
		nmp_prune_opts po = {
			.output = cli->output, .dry_run = cli->dry_run, .in_place = cli->in_place,
			.external_data = cli->external_data, .general_path = cli->general_path, .engine = engine,
			.masks_path = cli->save_masks, .channels = channels, .permute_only = cli->permute_only,
			.progress = cli->verbosity >= 0 ? on_progress : NULL, .progress_ctx = &pr,
		};
		s = nmp_prune(&plan, &po, &r, err);
		if (s == NMP_OK && r.save.auto_external && cli->verbosity >= 0)
			fprintf(stderr, "nmprune: %s would pass 2 GiB: tensors of 1 KiB and more moved to %s\n",
				cli->output, r.save.data_path);
		if (s == NMP_OK)
			s = report(cli, &plan, &r, "prune", engine, err);
	}
out:
	nmp_pass_result_free(&r);
	nmp_channels_free(&channels);
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
		fprintf(stderr, "nmprune: %s\n", err.message);
		fprintf(stderr, "usage: nmprune prune|check|inspect IN.onnx [options]; nmprune --help\n");
		code = EXIT_USAGE;
		goto out;
	}
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
	case NMP_CMD_NONE:
		break;
	}
	if (s != NMP_OK) {
		fprintf(stderr, "nmprune: error: %s\n", err.message);
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
