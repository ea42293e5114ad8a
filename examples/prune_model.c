/* Prune a model in process: the example in README.md, built by the tests. */
#include <stdio.h>

#include <nmprune.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s IN.onnx OUT.onnx\n", argv[0]);
		return 2;
	}
	nmp_options opt;
	nmp_options_init(&opt);
	opt.pattern = "2:4";

	char err[512];
	nmp_session *s = NULL;
	nmp_status st = nmp_open(argv[1], &opt, &s, err, sizeof err);
	if (st != NMP_OK) {
		fprintf(stderr, "%s: %s\n", nmp_status_string(st), err);
		return 1;
	}
	st = nmp_prune_save(s, argv[2]);
	if (st != NMP_OK) {
		fprintf(stderr, "%s: %s\n", nmp_status_string(st), nmp_last_error(s));
		nmp_close(&s);
		return 1;
	}
	for (size_t i = 0; i < nmp_weight_count(s); i++) {
		nmp_weight w;
		nmp_weight_get(s, i, &w);
		if (w.done)
			printf("%s %s %.1f%% sparse, kept %.1f%% of L1\n", w.name, w.pattern,
			       100.0 * (double)(w.elements - w.kept) / (double)w.elements, 100.0 * w.kept_l1_ratio);
		else
			printf("%s skipped: %s\n", w.name, w.reason);
	}
	nmp_close(&s);
	return 0;
}
