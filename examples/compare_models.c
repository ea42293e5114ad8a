/* Gate a pruned model on its fidelity: the example in README.md, built by the tests. */
#include <stdio.h>
#include <stdlib.h>

#include <nmprune.h>

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s DENSE.onnx PRUNED.onnx SAMPLES MIN_COSINE\n", argv[0]);
		return 2;
	}
	nmp_options opt;
	nmp_options_init(&opt);
	opt.calibration = argv[3];
	double min_cosine = atof(argv[4]);

	char err[512];
	nmp_comparison *c = NULL;
	nmp_status st = nmp_compare_models(argv[1], argv[2], &opt, &c, err, sizeof err);
	if (st != NMP_OK) {
		fprintf(stderr, "%s: %s\n", nmp_status_string(st), err);
		return 1;
	}
	int failed = 0;
	for (size_t i = 0; i < nmp_comparison_count(c); i++) {
		nmp_fidelity f;
		nmp_comparison_get(c, i, &f);
		if (!f.floating)
			continue;
		printf("%s cosine %.6f rel_l2 %.6f over %zu samples\n", f.output, f.cosine, f.rel_l2,
		       nmp_comparison_samples(c));
		failed |= !(f.cosine >= min_cosine);
	}
	nmp_comparison_free(&c);
	return failed ? 3 : 0;
}
