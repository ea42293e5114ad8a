#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char usage_main[] =
	"usage: nmprune <command> IN.onnx [options]\n"
	"\n"
	"Prune the weights of an ONNX model to N:M structured sparsity.\n"
	"\n"
	"commands:\n"
	"  prune   IN.onnx -o OUT.onnx [options]   write the pruned model\n"
	"  check   IN.onnx [--pattern P] [options] does the model comply? exit 0 yes, 1 no\n"
	"  inspect IN.onnx [options]               list candidate weights, axis, eligibility\n"
	"  compare DENSE.onnx PRUNED.onnx --calibration DATA\n"
	"                                          how far the pruned model's outputs moved\n"
	"\n"
	"  nmprune <command> --help   options of one command\n"
	"  nmprune --version\n"
	"\n"
	"exit codes: 0 ok, 1 check found violations, 2 usage error, 3 bad or unsupported\n"
	"model, 4 I/O error, 5 device error under --device cuda, 6 ONNX Runtime missing\n"
	"or failed (calibrated methods, compare)\n";

#define SHARED_OPTIONS                                                                         \
	"  --pattern P          N:M, N:M@vV, N:M@bRxC, N:M@t, P%, P%@vV, P%@bRxC (default 2:4)\n" \
	"  --align A            asp | cusparselt | none (default asp)\n"                          \
	"  --ops LIST           consumer ops: Conv,Gemm,MatMul[,ConvTranspose]\n"                \
	"  --include REGEX      only weights whose initializer or node name matches (repeatable)\n" \
	"  --exclude REGEX      never weights whose name matches (repeatable, wins)\n"            \
	"  --dense-first F      keep the first fraction F of eligible layers dense\n"             \
	"  --rules FILE.json    ordered per-layer rules: name regex -> pattern or dense\n"        \
	"  --device D           auto | cpu | cuda (default auto)\n"                               \
	"  --threads N          CPU threads (default: all cores)\n"                               \
	"  --report FILE.json   write the report as JSON\n"                                       \
	"  --json               machine-readable stdout\n"                                        \
	"  -q, --quiet          only errors\n"                                                     \
	"  -v, --verbose        more detail\n"                                                     \
	"  -h, --help           this help\n"

static const char usage_prune[] =
	"usage: nmprune prune IN.onnx -o OUT.onnx [options]\n"
	"\n"
	"Write IN.onnx with its eligible weights pruned to the pattern.\n"
	"\n"
	"  -o, --output FILE    output model (written atomically)\n"
	"  --in-place           replace IN.onnx atomically instead of -o\n"
	"  --dry-run            compute and report, write nothing\n"
	"  --external-data FILE move tensors of 1 KiB and more into FILE beside the output\n"
	"  --method M[,M]       how masks are chosen: magnitude (default) | wanda | sparsegpt,\n"
	"                       and exact (default) | greedy for transposable patterns\n"
	"  --calibration DATA   samples for wanda and sparsegpt: a directory of\n"
	"                       test_data_set_*/input_*.pb, or a .safetensors or .npz file\n"
	"  --calibration-samples N  use the first N samples (default: all)\n"
	"  --calibration-stages N  calibrate the weights in N groups in graph order, each on\n"
	"                       the model pruned so far (default 8; 1: all on the dense model)\n"
	"  --damp F             sparsegpt damping, fraction of the mean diagonal (default 0.01)\n"
	"  --ort-library PATH   libonnxruntime.so to run the model (default: search)\n"
	"  --permute            permute channels first, so that N:M keeps more magnitude\n"
	"                       (the model computes the same function before masking)\n"
	"  --permute-only       permute channels as --permute does, but do not mask\n"
	"  --permute-effort K   search each group K times longer (default 1; large layers gain most)\n"
	"  --report-html FILE   write a self-contained HTML report\n"
	"  --save-masks FILE    write the masks as safetensors\n" SHARED_OPTIONS;

static const char usage_check[] =
	"usage: nmprune check IN.onnx [--pattern P] [options]\n"
	"\n"
	"Check that every eligible weight complies with the pattern: exit 0 if all do,\n"
	"1 if any does not.\n"
	"\n" SHARED_OPTIONS;

static const char usage_compare[] =
	"usage: nmprune compare DENSE.onnx PRUNED.onnx --calibration DATA [options]\n"
	"\n"
	"Run both models on the samples and report, per output, the mean cosine\n"
	"similarity, the relative L2 error and the top-1 agreement (last axis).\n"
	"\n"
	"  --calibration DATA   a directory of test_data_set_*/input_*.pb, or a .safetensors\n"
	"                       or .npz file\n"
	"  --calibration-samples N  use the first N samples (default: all)\n"
	"  --ort-library PATH   libonnxruntime.so (default: search)\n"
	"  --threads N          ONNX Runtime threads (default: all cores)\n"
	"  --report FILE.json   write what --json prints into FILE\n"
	"  --json               machine-readable stdout\n"
	"  -q, --quiet          only errors\n"
	"  -h, --help           this help\n";

static const char usage_inspect[] =
	"usage: nmprune inspect IN.onnx [options]\n"
	"\n"
	"List every candidate weight: consumers, dtype, shape, group axis, pattern,\n"
	"eligibility and the reason when not eligible.\n"
	"\n"
	"  --sensitivity        rank the eligible weights by the output fidelity to the dense\n"
	"                       model when each alone is pruned (needs --calibration)\n"
	"  --fidelity F         cosine (default: mean cosine) | rel-l2 (1 - relative L2 error)\n"
	"                       | top1 (argmax agreement along the last axis)\n"
	"  --calibration DATA   samples: a directory of test_data_set_*/input_*.pb, .safetensors or .npz\n"
	"  --calibration-samples N  use the first N samples (default: all)\n"
	"  --method M[,M]       how each weight is pruned: magnitude (default) | wanda | sparsegpt,\n"
	"                       and exact (default) | greedy for transposable patterns\n"
	"  --damp F             sparsegpt damping, fraction of the mean diagonal (default 0.01)\n"
	"  --calibration-stages N  calibrate as prune does with N stages (default 8)\n"
	"  --permute            permute channels first, as prune --permute does\n"
	"  --permute-effort K   as prune's\n"
	"  --eval-data DATA     measure fidelity on these samples instead of the calibration ones\n"
	"  --target-fidelity F  find how many of the most sensitive weights to keep dense for F\n"
	"  --write-rules FILE   write the rules file (--rules) keeping them dense\n"
	"  --ort-library PATH   libonnxruntime.so (default: search)\n"
	"\n" SHARED_OPTIONS;

const char *nmp_cli_usage(nmp_command cmd)
{
	switch (cmd) {
	case NMP_CMD_PRUNE: return usage_prune;
	case NMP_CMD_CHECK: return usage_check;
	case NMP_CMD_INSPECT: return usage_inspect;
	case NMP_CMD_COMPARE: return usage_compare;
	default: return usage_main;
	}
}

enum {
	OPT_PATTERN = 256, OPT_ALIGN, OPT_OPS, OPT_INCLUDE, OPT_EXCLUDE, OPT_DENSE_FIRST,
	OPT_RULES, OPT_DEVICE, OPT_THREADS, OPT_REPORT, OPT_JSON, OPT_DRY_RUN, OPT_IN_PLACE,
	OPT_EXTERNAL_DATA, OPT_METHOD, OPT_PERMUTE, OPT_REPORT_HTML, OPT_SAVE_MASKS,
	OPT_GENERAL_PATH, OPT_PERMUTE_ONLY, OPT_CALIBRATION, OPT_CALIB_SAMPLES, OPT_DAMP, OPT_ORT_LIBRARY,
	OPT_CALIB_STATS, OPT_CALIB_STAGES, OPT_PERMUTE_EFFORT, OPT_SENSITIVITY, OPT_TARGET_FIDELITY, OPT_WRITE_RULES,
	OPT_EVAL_DATA, OPT_FIDELITY,
};

static const struct option long_options[] = {
	{ "output", required_argument, NULL, 'o' },
	{ "pattern", required_argument, NULL, OPT_PATTERN },
	{ "align", required_argument, NULL, OPT_ALIGN },
	{ "ops", required_argument, NULL, OPT_OPS },
	{ "include", required_argument, NULL, OPT_INCLUDE },
	{ "exclude", required_argument, NULL, OPT_EXCLUDE },
	{ "dense-first", required_argument, NULL, OPT_DENSE_FIRST },
	{ "rules", required_argument, NULL, OPT_RULES },
	{ "device", required_argument, NULL, OPT_DEVICE },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "report", required_argument, NULL, OPT_REPORT },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "quiet", no_argument, NULL, 'q' },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{ "dry-run", no_argument, NULL, OPT_DRY_RUN },
	{ "in-place", no_argument, NULL, OPT_IN_PLACE },
	{ "external-data", required_argument, NULL, OPT_EXTERNAL_DATA },
	{ "method", required_argument, NULL, OPT_METHOD },
	{ "permute", no_argument, NULL, OPT_PERMUTE },
	{ "permute-only", no_argument, NULL, OPT_PERMUTE_ONLY },
	{ "permute-effort", required_argument, NULL, OPT_PERMUTE_EFFORT },
	{ "report-html", required_argument, NULL, OPT_REPORT_HTML },
	{ "save-masks", required_argument, NULL, OPT_SAVE_MASKS },
	{ "general-path", no_argument, NULL, OPT_GENERAL_PATH },
	{ "calibration", required_argument, NULL, OPT_CALIBRATION },
	{ "calibration-samples", required_argument, NULL, OPT_CALIB_SAMPLES },
	{ "damp", required_argument, NULL, OPT_DAMP },
	{ "ort-library", required_argument, NULL, OPT_ORT_LIBRARY },
	{ "calibration-stats", required_argument, NULL, OPT_CALIB_STATS },
	{ "calibration-stages", required_argument, NULL, OPT_CALIB_STAGES },
	{ "sensitivity", no_argument, NULL, OPT_SENSITIVITY },
	{ "eval-data", required_argument, NULL, OPT_EVAL_DATA },
	{ "fidelity", required_argument, NULL, OPT_FIDELITY },
	{ "target-fidelity", required_argument, NULL, OPT_TARGET_FIDELITY },
	{ "write-rules", required_argument, NULL, OPT_WRITE_RULES },
	{ NULL, 0, NULL, 0 },
};

static nmp_status usage(nmp_error *err, const char *fmt, const char *arg)
{
	return nmp_error_set(err, NMP_ERR_USAGE, fmt, arg);
}

static int one_of(const char *v, const char *const *set)
{
	for (; *set; set++)
		if (strcmp(v, *set) == 0)
			return 1;
	return 0;
}

/* The commands that take an option, as a mask of (1 << nmp_command). */
enum { P = 1u << NMP_CMD_PRUNE, K = 1u << NMP_CMD_CHECK, I = 1u << NMP_CMD_INSPECT, C = 1u << NMP_CMD_COMPARE };

static unsigned commands_of(int opt)
{
	switch (opt) {
	case 'o': case OPT_DRY_RUN: case OPT_IN_PLACE: case OPT_EXTERNAL_DATA: case OPT_PERMUTE_ONLY:
	case OPT_REPORT_HTML: case OPT_SAVE_MASKS: case OPT_GENERAL_PATH: case OPT_CALIB_STATS:
		return P;
	case OPT_METHOD: case OPT_DAMP: case OPT_CALIB_STAGES: case OPT_PERMUTE: case OPT_PERMUTE_EFFORT:
		return P | I;
	case OPT_CALIBRATION: case OPT_CALIB_SAMPLES: case OPT_ORT_LIBRARY:
		return P | C | I;
	case OPT_SENSITIVITY: case OPT_TARGET_FIDELITY: case OPT_WRITE_RULES: case OPT_EVAL_DATA: case OPT_FIDELITY:
		return I;
	case OPT_PATTERN: case OPT_ALIGN: case OPT_OPS: case OPT_INCLUDE: case OPT_EXCLUDE: case OPT_DENSE_FIRST:
	case OPT_RULES: case OPT_DEVICE:
		return P | K | I;
	default: /* --threads, --report, --json, -q, -v, -h */
		return P | K | I | C;
	}
}

static const char *commands_text(unsigned mask)
{
	switch (mask) {
	case P: return "prune only";
	case P | I: return "prune and inspect --sensitivity";
	case P | C | I: return "prune, compare and inspect --sensitivity";
	case I: return "inspect";
	default: return "prune, check and inspect";
	}
}

/* The option as the user wrote it: "--name" (longindex >= 0) or "-c". */
static const char *option_text(int opt, int longindex, char *buf, size_t cap)
{
	if (longindex >= 0)
		snprintf(buf, cap, "--%s", long_options[longindex].name);
	else
		snprintf(buf, cap, "-%c", opt);
	return buf;
}

nmp_status nmp_cli_parse(int argc, char **argv, nmp_cli *cli, nmp_error *err)
{
	static const char *const aligns[] = { "asp", "cusparselt", "none", NULL };
	static const char *const devices[] = { "auto", "cpu", "cuda", NULL };
	static const char *const tile_methods[] = { "exact", "greedy", NULL };
	static const char *const calib_methods[] = { "magnitude", "wanda", "sparsegpt", NULL };
	static const char *const fidelities[] = { "cosine", "rel-l2", "top1", NULL };

	memset(cli, 0, sizeof *cli);
	cli->pattern = "2:4";
	cli->align = "asp";
	cli->ops = "Conv,Gemm,MatMul";
	cli->device = "auto";
	cli->method = "exact";
	cli->calib_method = "magnitude";

	if (argc < 2)
		return usage(err, "%s", "no command given (prune, check or inspect)");
	const char *c = argv[1];
	if (strcmp(c, "--help") == 0 || strcmp(c, "-h") == 0 || strcmp(c, "help") == 0) {
		cli->cmd = NMP_CMD_HELP;
		return NMP_OK;
	}
	if (strcmp(c, "--version") == 0 || strcmp(c, "-V") == 0) {
		cli->cmd = NMP_CMD_VERSION;
		return NMP_OK;
	}
	if (strcmp(c, "prune") == 0)
		cli->cmd = NMP_CMD_PRUNE;
	else if (strcmp(c, "check") == 0)
		cli->cmd = NMP_CMD_CHECK;
	else if (strcmp(c, "inspect") == 0)
		cli->cmd = NMP_CMD_INSPECT;
	else if (strcmp(c, "compare") == 0)
		cli->cmd = NMP_CMD_COMPARE;
	else
		return usage(err, "unknown command '%s' (prune, check, inspect or compare)", c);

	optind = 1;
	opterr = 0;
	int opt;
	char **av = argv + 1;
	int ac = argc - 1;
	int li = -1;
	while ((opt = getopt_long(ac, av, ":o:qvh", long_options, &li)) != -1) {
		char name[48];
		const int longindex = li;
		li = -1;
		unsigned takes = commands_of(opt);
		if (opt != '?' && opt != ':' && !(takes & (1u << cli->cmd)))
			return nmp_error_set(err, NMP_ERR_USAGE, "%s is an option of %s",
					     option_text(opt, longindex, name, sizeof name), commands_text(takes));
		char *end;
		switch (opt) {
		case 'o': cli->output = optarg; break;
		case 'q': cli->verbosity = -1; break;
		case 'v': cli->verbosity = 1; break;
		case 'h':
			cli->help_for = cli->cmd;
			cli->cmd = NMP_CMD_HELP;
			return NMP_OK;
		case OPT_PATTERN: cli->pattern = optarg; break;
		case OPT_ALIGN:
			if (!one_of(optarg, aligns))
				return usage(err, "--align '%s': expected asp, cusparselt or none", optarg);
			cli->align = optarg;
			break;
		case OPT_OPS: cli->ops = optarg; break;
		case OPT_INCLUDE:
			if (cli->n_include == NMP_CLI_MAX_REGEX)
				return usage(err, "%s", "too many --include options");
			cli->include[cli->n_include++] = optarg;
			break;
		case OPT_EXCLUDE:
			if (cli->n_exclude == NMP_CLI_MAX_REGEX)
				return usage(err, "%s", "too many --exclude options");
			cli->exclude[cli->n_exclude++] = optarg;
			break;
		case OPT_DENSE_FIRST:
			cli->dense_first = strtod(optarg, &end);
			if (end == optarg || *end || !(cli->dense_first >= 0.0 && cli->dense_first <= 1.0))
				return usage(err, "--dense-first '%s': expected a fraction between 0 and 1", optarg);
			break;
		case OPT_RULES: cli->rules = optarg; break;
		case OPT_DEVICE:
			if (!one_of(optarg, devices))
				return usage(err, "--device '%s': expected auto, cpu or cuda", optarg);
			cli->device = optarg;
			break;
		case OPT_THREADS: {
			long n = strtol(optarg, &end, 10);
			if (end == optarg || *end || n < 1 || n > 1024)
				return usage(err, "--threads '%s': expected a number from 1 to 1024", optarg);
			cli->threads = (int)n;
			break;
		}
		case OPT_REPORT: cli->report = optarg; break;
		case OPT_JSON: cli->json = true; break;
		case OPT_DRY_RUN: cli->dry_run = true; break;
		case OPT_IN_PLACE: cli->in_place = true; break;
		case OPT_EXTERNAL_DATA:
			if (!optarg[0])
				return usage(err, "%s", "--external-data needs a file name");
			cli->external_data = optarg;
			break;
		case OPT_METHOD: {
			/* one value of each kind, comma-separated: "sparsegpt", "wanda,greedy" */
			char one[32];
			for (const char *p = optarg; *p;) {
				size_t len = strcspn(p, ",");
				snprintf(one, sizeof one, "%.*s", (int)(len < sizeof one ? len : sizeof one - 1), p);
				if (one_of(one, tile_methods))
					cli->method = strcmp(one, "greedy") == 0 ? "greedy" : "exact";
				else if (one_of(one, calib_methods))
					cli->calib_method = strcmp(one, "wanda") == 0 ? "wanda" :
							    strcmp(one, "sparsegpt") == 0 ? "sparsegpt" : "magnitude";
				else
					return usage(err, "--method '%s': expected magnitude, wanda or sparsegpt, "
							  "and exact or greedy", optarg);
				p += len + (p[len] == ',');
			}
			break;
		}
		case OPT_CALIBRATION: cli->calibration = optarg; break;
		case OPT_CALIB_SAMPLES: {
			long long n = strtoll(optarg, &end, 10);
			if (end == optarg || *end || n < 1)
				return usage(err, "--calibration-samples '%s': expected a positive number", optarg);
			cli->calib_samples = (size_t)n;
			break;
		}
		case OPT_DAMP:
			cli->damp = strtod(optarg, &end);
			if (end == optarg || *end || !(cli->damp > 0 && cli->damp <= 1e6))
				return usage(err, "--damp '%s': expected a positive number", optarg);
			break;
		case OPT_ORT_LIBRARY: cli->ort_library = optarg; break;
		case OPT_EVAL_DATA: cli->eval_data = optarg; break;
		case OPT_FIDELITY:
			if (!one_of(optarg, fidelities))
				return usage(err, "--fidelity '%s': expected cosine, rel-l2 or top1", optarg);
			cli->fidelity = optarg;
			break;
		case OPT_SENSITIVITY: cli->sensitivity = true; break;
		case OPT_TARGET_FIDELITY:
			cli->target_fidelity = strtod(optarg, &end);
			if (end == optarg || *end || !(cli->target_fidelity > 0 && cli->target_fidelity <= 1))
				return usage(err, "--target-fidelity '%s': expected a cosine in (0, 1]", optarg);
			break;
		case OPT_WRITE_RULES: cli->write_rules = optarg; break;
		case OPT_CALIB_STAGES: {
			long long n = strtoll(optarg, &end, 10);
			if (end == optarg || *end || n < 1 || n > 1000000)
				return usage(err, "--calibration-stages '%s': expected a positive number", optarg);
			cli->calib_stages = (size_t)n;
			break;
		}
		case OPT_CALIB_STATS: cli->calib_stats = optarg; break;
		case OPT_PERMUTE: cli->permute = true; break;
		case OPT_PERMUTE_ONLY: cli->permute = cli->permute_only = true; break;
		case OPT_PERMUTE_EFFORT: {
			long n = strtol(optarg, &end, 10);
			if (end == optarg || *end || n < 1 || n > 1000)
				return usage(err, "--permute-effort '%s': expected a factor from 1 to 1000", optarg);
			cli->permute_effort = (unsigned)n;
			break;
		}
		case OPT_REPORT_HTML: cli->report_html = optarg; break;
		case OPT_SAVE_MASKS: cli->save_masks = optarg; break;
		case OPT_GENERAL_PATH: cli->general_path = true; break;
		case ':':
			return usage(err, "option '%s' needs a value", av[optind - 1]);
		default:
			return usage(err, "unknown option '%s'", av[optind - 1]);
		}
	}
	for (int i = optind; i < ac; i++) {
		if (cli->cmd == NMP_CMD_COMPARE && cli->input && !cli->input2) {
			cli->input2 = av[i];
			continue;
		}
		if (cli->input)
			return nmp_error_set(err, NMP_ERR_USAGE, "unexpected argument '%s' (%s)", av[i],
					     cli->cmd == NMP_CMD_COMPARE ? "two models" : "one input model");
		cli->input = av[i];
	}
	if (!cli->input)
		return usage(err, "%s", "no input model given");
	if (cli->cmd == NMP_CMD_INSPECT) {
		if ((cli->calibration || cli->target_fidelity > 0 || cli->write_rules) && !cli->sensitivity)
			return usage(err, "%s", "--calibration, --target-fidelity and --write-rules go with --sensitivity");
		if (cli->sensitivity && !cli->calibration)
			return usage(err, "%s", "--sensitivity needs --calibration DATA");
		if (cli->write_rules && !(cli->target_fidelity > 0))
			return usage(err, "%s", "--write-rules needs --target-fidelity F");
		bool calibrated = strcmp(cli->calib_method, "magnitude") != 0;
		if ((calibrated || cli->damp > 0 || cli->calib_stages || cli->eval_data || cli->permute || cli->fidelity ||
		     strcmp(cli->method, "exact") != 0) && !cli->sensitivity)
			return usage(err, "%s", "--method, --damp, --calibration-stages, --permute, --eval-data and "
						"--fidelity go with --sensitivity");
		if (cli->permute_effort && !cli->permute)
			return usage(err, "%s", "--permute-effort goes with --permute");
		if (cli->damp > 0 && strcmp(cli->calib_method, "sparsegpt") != 0)
			return usage(err, "%s", "--damp is for --method sparsegpt");
		if (cli->calib_stages && !calibrated)
			return usage(err, "%s", "--calibration-stages is for --method wanda or sparsegpt");
	}
	if (cli->cmd == NMP_CMD_COMPARE) {
		if (!cli->input2)
			return usage(err, "%s", "compare needs DENSE.onnx and PRUNED.onnx");
		if (!cli->calibration)
			return usage(err, "%s", "compare needs --calibration DATA");
	}
	if (cli->cmd == NMP_CMD_PRUNE) {
		if (cli->in_place && cli->output)
			return usage(err, "%s", "--in-place and -o are exclusive");
		if (cli->in_place)
			cli->output = cli->input;
		if (!cli->output && !cli->dry_run)
			return usage(err, "%s", "prune needs -o OUT.onnx, --in-place or --dry-run");
		if (cli->permute_effort && !cli->permute)
			return usage(err, "%s", "--permute-effort goes with --permute or --permute-only");
		if (cli->permute_only && cli->save_masks)
			return usage(err, "%s", "--permute-only writes no masks: drop --save-masks");
		bool calibrated = strcmp(cli->calib_method, "magnitude") != 0;
		if (calibrated && !cli->calibration)
			return usage(err, "--method %s needs --calibration DATA", cli->calib_method);
		if (!calibrated && cli->calib_stages)
			return usage(err, "%s", "--calibration-stages is for --method wanda or sparsegpt");
		if (!calibrated && (cli->calibration || cli->damp > 0))
			return usage(err, "%s", cli->calibration ? "--calibration is for --method wanda or sparsegpt" :
								   "--damp is for --method sparsegpt");
		if (cli->damp > 0 && strcmp(cli->calib_method, "sparsegpt") != 0)
			return usage(err, "%s", "--damp is for --method sparsegpt");
		if (calibrated && cli->permute_only)
			return usage(err, "--method %s chooses masks; --permute-only writes none", cli->calib_method);
	}
	return NMP_OK;
}
