/*
 * cli.h — the command line: parsing DESIGN.md's contract into nmp_cli.
 *
 * Parsing never prints and never exits: it fills an nmp_error with a usage
 * message and main decides.  Strings in nmp_cli borrow from argv.
 */
#ifndef NMP_CLI_H
#define NMP_CLI_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

typedef enum nmp_command {
	NMP_CMD_NONE,
	NMP_CMD_PRUNE,
	NMP_CMD_CHECK,
	NMP_CMD_INSPECT,
	NMP_CMD_COMPARE,
	NMP_CMD_HELP,
	NMP_CMD_VERSION,
} nmp_command;

#define NMP_CLI_MAX_REGEX 64

typedef struct nmp_cli {
	nmp_command cmd;
	nmp_command help_for;      /* with NMP_CMD_HELP: which command, or NONE */
	const char *input;
	const char *input2;        /* compare: the pruned model */
	const char *output;
	const char *pattern;       /* default "2:4" */
	const char *align;         /* asp | cusparselt | none */
	const char *ops;           /* comma-separated op types */
	const char *include[NMP_CLI_MAX_REGEX];
	size_t n_include;
	const char *exclude[NMP_CLI_MAX_REGEX];
	size_t n_exclude;
	double dense_first;        /* fraction in [0, 1] */
	const char *rules;
	const char *device;        /* auto | cpu | cuda */
	int threads;               /* 0: all cores */
	const char *report;
	bool json;
	int verbosity;             /* -1 quiet, 0 normal, 1 verbose */
	/* prune only */
	bool dry_run;
	bool in_place;
	const char *external_data;
	const char *method;        /* exact | greedy */
	const char *calib_method;  /* magnitude | wanda | sparsegpt */
	double damp;               /* sparsegpt damping, 0: default */
	/* prune and compare */
	const char *calibration;   /* DATA */
	size_t calib_samples;      /* 0: all */
	size_t calib_stages;       /* 0: default */
	const char *eval_data;     /* inspect --sensitivity: measure fidelity on these samples */
	const char *fidelity;      /* inspect --sensitivity: cosine, rel-l2, top1; NULL: cosine */
	const char *ort_library;
	const char *calib_stats;   /* hidden: statistics as safetensors (tests) */
	/* inspect */
	bool sensitivity;
	double target_fidelity;    /* 0: none */
	const char *write_rules;
	bool permute;
	bool permute_only;         /* permute, do not mask */
	unsigned permute_effort;   /* search budget factor, 0: default */
	const char *report_html;
	const char *save_masks;
	bool general_path;         /* hidden: force re-serialization (tests, bench) */
} nmp_cli;

nmp_status nmp_cli_parse(int argc, char **argv, nmp_cli *cli, nmp_error *err);

/* Usage text for a command (NMP_CMD_NONE: the overview). */
const char *nmp_cli_usage(nmp_command cmd);

#endif
