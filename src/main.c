/*
 * main.c — the nmprune command: the only place that prints to the user and
 * picks the exit code.  The passes run in one visible sequence per command.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "model.h"
#include "plan.h"
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

static nmp_status run_prune(const nmp_cli *cli, nmp_error *err)
{
	nmp_model *m = NULL;
	nmp_status s = nmp_model_load(cli->input, &m, err);
	if (s != NMP_OK)
		return s;
	if (!cli->dry_run) {
		nmp_save_opts o = {
			.external_data = cli->external_data,
			.in_place = cli->in_place,
			.force_general = cli->general_path,
		};
		nmp_save_result res;
		s = nmp_model_save(m, cli->output, &o, &res, err);
		if (s == NMP_OK && res.auto_external && cli->verbosity >= 0)
			fprintf(stderr, "nmprune: %s would pass 2 GiB: tensors of 1 KiB and more moved to %s\n",
				cli->output, res.data_path);
	}
	nmp_model_free(&m);
	return s;
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

static nmp_status run_load_only(const nmp_cli *cli, nmp_error *err)
{
	nmp_plan plan;
	nmp_select_opts so = select_opts(cli);
	nmp_status s = nmp_plan_build(cli->input, &so, &plan, err);
	nmp_plan_free(&plan);
	return s;
}

int main(int argc, char **argv)
{
	nmp_cli cli;
	nmp_error err = { 0 };
	nmp_status s = nmp_cli_parse(argc, argv, &cli, &err);
	nmp_exit code = EXIT_OK_;

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
		s = run_prune(&cli, &err);
		break;
	case NMP_CMD_CHECK:
		s = run_load_only(&cli, &err);
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
	}
out:
	if (fclose(stdout) != 0 && code == EXIT_OK_) {
		fprintf(stderr, "nmprune: error: cannot write standard output\n");
		code = EXIT_IO;
	}
	return (int)code;
}
