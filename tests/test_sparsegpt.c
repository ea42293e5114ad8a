/*
 * Tests of the sparsegpt sweep (sparsegpt.c) and of the rule it shares with
 * the GPU sweep (sparsegpt_rules.h):
 *  - the N:M choice keeps the N highest scores w^2 / d^2, ties to the lower
 *    column, on random and tied groups;
 *  - with H = I the sweep is magnitude pruning: U is diagonal, no error
 *    moves to other columns, kept weights keep their values exactly;
 *  - on a correlated Hessian, every group of M keeps exactly N, pruned
 *    weights are exactly zero, and the layer's output error tr(D H D^T) is
 *    below the magnitude mask's (the point of the reconstruction);
 *  - P% prunes round(P x rows x width) per block;
 *  - a Hessian that is not positive definite even damped is refused;
 *  - a weight goes onto its integer grid rounding half to even, clamped to
 *    the type's range, and a quantized sweep leaves every kept weight on
 *    its row's grid with the same H = I masks as without one.
 */
#include "testutil.h"

#include <math.h>

#include "blas.h"
#include "pattern.h"
#include "sparsegpt.h"
#include "sparsegpt_rules.h"

static uint64_t rng = 88172645463325252ull;

static double uniform(void)
{
	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	return (double)(rng >> 11) / 9007199254740992.0;
}

static int setup(void **state)
{
	(void)state;
	nmp_error err = { 0 };
	return nmp_blas_load(1, &err) == NMP_OK ? 0 : -1;
}

static void test_choose_nm_keeps_highest_scores_ties_low(void **state)
{
	(void)state;
	uint8_t keep[8];
	const double w[4] = { 1, -3, 2, 0.5 }, dd[4] = { 1, 1, 1, 1 };
	nmp_sgpt_choose_nm(w, dd, 2, 4, keep);
	assert_int_equal(keep[0] + keep[1] * 2 + keep[2] * 4 + keep[3] * 8, 2 + 4);
	const double d2[4] = { 0.1, 10, 1, 1 }; /* scores 100, 0.09, 4, 0.25 */
	nmp_sgpt_choose_nm(w, d2, 2, 4, keep);
	assert_int_equal(keep[0] + keep[1] * 2 + keep[2] * 4 + keep[3] * 8, 1 + 4);
	const double tie[4] = { 1, -1, 1, -1 };
	nmp_sgpt_choose_nm(tie, dd, 2, 4, keep);
	assert_int_equal(keep[0] + keep[1] * 2 + keep[2] * 4 + keep[3] * 8, 1 + 2);
	for (int trial = 0; trial < 1000; trial++) { /* kept scores >= pruned ones, exactly N kept */
		double v[8], d[8];
		for (int j = 0; j < 8; j++)
			v[j] = uniform() - 0.5, d[j] = 0.1 + uniform();
		nmp_sgpt_choose_nm(v, d, 3, 8, keep);
		int n = 0;
		for (int j = 0; j < 8; j++) {
			n += keep[j];
			for (int k = 0; k < 8; k++)
				if (keep[j] && !keep[k])
					assert_true(nmp_sgpt_score(v[j], d[j]) >= nmp_sgpt_score(v[k], d[k]));
		}
		assert_int_equal(n, 3);
	}
}

/*
 * With H = I the sweep spreads no error: its N:M mask is magnitude's, group
 * by group, and the kept weights are untouched.  The patterns include M that
 * do not divide the block (3, 5, 6: blocks of 126 or 125 columns) and M above
 * it (256), where a block of 128 would split groups: every group of M along K
 * must still be chosen whole.
 */
static void test_identity_hessian_is_magnitude_pruning(void **state)
{
	(void)state;
	static const struct { const char *pat; uint64_t K, B; } cases[] = {
		{ "2:4", 264, 128 },   /* three blocks, the last partial */
		{ "1:3", 387, 126 },   /* four blocks, the last of 9 */
		{ "3:5", 255, 125 },
		{ "5:6", 390, 126 },
		{ "64:256", 512, 256 },
		{ "7:160", 480, 160 },
	};
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		const uint64_t R = 5, K = cases[c].K;
		double *W = malloc(R * K * sizeof *W), *W0 = malloc(R * K * sizeof *W), *H = calloc(K * K, sizeof *H);
		double *one = malloc(K * sizeof *one);
		uint8_t *mask = malloc(R * K), *want = malloc(K);
		for (uint64_t i = 0; i < R * K; i++)
			W0[i] = W[i] = uniform() - 0.5;
		for (uint64_t i = 0; i < K; i++) {
			H[i * K + i] = 1;
			one[i] = 1;
		}
		nmp_pattern p;
		nmp_error err = { 0 };
		double damp;
		assert_int_equal(nmp_pattern_parse(cases[c].pat, &p, &err), NMP_OK);
		assert_int_equal(nmp_sparsegpt_block(&p), cases[c].B);
		assert_int_equal(nmp_sparsegpt_solve(W, R, K, H, 0.01, &p, 0, NULL, mask, &damp, "w", &err), NMP_OK);
		assert_true(damp == 0.01);
		for (uint64_t r = 0; r < R; r++)
			for (uint64_t g = 0; g < K; g += p.m) {
				nmp_sgpt_choose_nm(W0 + r * K + g, one, p.n, p.m, want);
				for (uint64_t j = 0; j < p.m; j++) {
					assert_int_equal(mask[r * K + g + j], want[j]);
					assert_true(W[r * K + g + j] == (want[j] ? W0[r * K + g + j] : 0.0));
				}
			}
		free(W), free(W0), free(H), free(one), free(mask), free(want);
	}
	/* P% keeps the nominal block, whatever it prunes. */
	nmp_pattern p;
	nmp_error err = { 0 };
	assert_int_equal(nmp_pattern_parse("30%", &p, &err), NMP_OK);
	assert_int_equal(nmp_sparsegpt_block(&p), NMP_SPARSEGPT_BLOCK);
}

/* H = X^T X over T random tokens with correlated channels. */
static double *correlated_hessian(uint64_t K, uint64_t T)
{
	double *H = calloc(K * K, sizeof *H), *x = malloc(K * sizeof *x);
	for (uint64_t t = 0; t < T; t++) {
		double common = uniform() - 0.5;
		for (uint64_t i = 0; i < K; i++)
			x[i] = 0.8 * common + 0.6 * (uniform() - 0.5);
		for (uint64_t i = 0; i < K; i++)
			for (uint64_t j = 0; j < K; j++)
				H[i * K + j] += x[i] * x[j];
	}
	free(x);
	return H;
}

/*
 * On a correlated Hessian every group keeps exactly N, the pruned weights are
 * exactly 0, and the output error is under half magnitude's; 2:6 sweeps
 * blocks of 126 columns, whose groups the later blocks' updates must not
 * split.
 */
static void test_reconstruction_beats_the_magnitude_mask(void **state)
{
	(void)state;
	static const struct { const char *pat; uint64_t K; } cases[] = { { "4:8", 160 }, { "2:6", 390 } };
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		const uint64_t R = 16, K = cases[c].K;
		double *H = correlated_hessian(K, 4 * K), *Hc = malloc(K * K * sizeof *Hc);
		double *W = malloc(R * K * sizeof *W), *W0 = malloc(R * K * sizeof *W), *D = malloc(R * K * sizeof *D);
		double *one = malloc(K * sizeof *one);
		uint8_t *mask = malloc(R * K), *keep = malloc(K);
		for (uint64_t i = 0; i < R * K; i++)
			W0[i] = W[i] = uniform() - 0.5;
		for (uint64_t i = 0; i < K; i++)
			one[i] = 1;
		memcpy(Hc, H, K * K * sizeof *H);
		nmp_pattern p;
		nmp_error err = { 0 };
		double damp;
		assert_int_equal(nmp_pattern_parse(cases[c].pat, &p, &err), NMP_OK);
		assert_int_equal(nmp_sparsegpt_solve(W, R, K, Hc, 0.01, &p, 0, NULL, mask, &damp, "w", &err), NMP_OK);
		for (uint64_t r = 0; r < R; r++)
			for (uint64_t g = 0; g < K; g += p.m) {
				unsigned kept = 0;
				for (uint64_t j = 0; j < p.m; j++) {
					kept += mask[r * K + g + j];
					if (!mask[r * K + g + j])
						assert_true(W[r * K + g + j] == 0.0);
				}
				assert_int_equal(kept, p.n);
			}
		for (uint64_t i = 0; i < R * K; i++)
			D[i] = W0[i] - W[i];
		double e_sgpt = nmp_sparsegpt_output_error(D, R, K, H);
		for (uint64_t r = 0; r < R; r++) /* magnitude N:M without reconstruction */
			for (uint64_t g = 0; g < K; g += p.m) {
				nmp_sgpt_choose_nm(W0 + r * K + g, one, p.n, p.m, keep);
				for (uint64_t j = 0; j < p.m; j++)
					D[r * K + g + j] = keep[j] ? 0 : W0[r * K + g + j];
			}
		double e_mag = nmp_sparsegpt_output_error(D, R, K, H);
		printf("           %s output error: sparsegpt %.4g, magnitude %.4g\n", cases[c].pat, e_sgpt, e_mag);
		assert_true(e_sgpt < 0.5 * e_mag);
		free(H), free(Hc), free(W), free(W0), free(D), free(one), free(mask), free(keep);
	}
}

/*
 * P%: each block of each group prunes its share of the tensor's count, and
 * the shares add up to floor(sparsity x numel + 0.5), what check demands,
 * where rounding each block alone would fall short (128 x 387 at 30%: three
 * blocks of 4915.2 and one of 115.2 round to 14860 of 14860.8).
 */
static void test_unstructured_counts_add_up_to_the_tensors(void **state)
{
	(void)state;
	static const struct { uint64_t R, K, groups; const char *pat; } cases[] = {
		{ 7, 200, 1, "30%" }, { 128, 387, 1, "30%" }, { 5, 130, 3, "37%" }, { 3, 129, 2, "50%" },
	};
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		const uint64_t R = cases[c].R, K = cases[c].K;
		nmp_pattern p;
		nmp_error err = { 0 };
		double damp;
		assert_int_equal(nmp_pattern_parse(cases[c].pat, &p, &err), NMP_OK);
		uint64_t total = 0;
		for (uint64_t g = 0; g < cases[c].groups; g++) {
			double *H = correlated_hessian(K, 2 * K), *W = malloc(R * K * sizeof *W);
			uint8_t *mask = malloc(R * K);
			for (uint64_t i = 0; i < R * K; i++)
				W[i] = uniform() - 0.5;
			assert_int_equal(nmp_sparsegpt_solve(W, R, K, H, 0.01, &p, g * R * K, NULL, mask, &damp, "w", &err),
					 NMP_OK);
			for (uint64_t i1 = 0; i1 < K; i1 += NMP_SPARSEGPT_BLOCK) {
				const uint64_t cnt = K - i1 < NMP_SPARSEGPT_BLOCK ? K - i1 : NMP_SPARSEGPT_BLOCK;
				uint64_t pruned = 0;
				for (uint64_t r = 0; r < R; r++)
					for (uint64_t k = i1; k < i1 + cnt; k++)
						pruned += !mask[r * K + k];
				assert_int_equal(pruned, nmp_sparsegpt_block_prune(p.sparsity, g * R * K + R * i1, R * cnt));
				total += pruned;
			}
			free(H), free(W), free(mask);
		}
		assert_int_equal(total, (uint64_t)floor(p.sparsity * (double)(cases[c].groups * R * K) + 0.5));
	}
	/*
	 * The share rule itself, on random sparsities and block sizes: each share
	 * is the floor or the ceiling of its exact one, and they add up to the
	 * whole's count.
	 */
	for (int trial = 0; trial < 2000; trial++) {
		const double sp = trial < 4 ? (double[]){ 0, 1, 0.5, 0.125 }[trial] : uniform();
		uint64_t at = 0, sum = 0;
		for (int b = 0; b < 1 + trial % 9; b++) {
			const uint64_t n = 1 + (uint64_t)(uniform() * 5000);
			const uint64_t share = nmp_sparsegpt_block_prune(sp, at, n);
			assert_true(share >= (uint64_t)floor(sp * (double)n) && share <= (uint64_t)ceil(sp * (double)n));
			sum += share;
			at += n;
		}
		assert_int_equal(sum, (uint64_t)floor(sp * (double)at + 0.5));
	}
}

static void test_indefinite_hessian_is_refused(void **state)
{
	(void)state;
	const uint64_t K = 4;
	double H[16] = { 1, 0, 0, 0, 0, -5, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1 }, W[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	uint8_t mask[8];
	nmp_pattern p;
	nmp_error err = { 0 };
	double damp;
	assert_int_equal(nmp_pattern_parse("2:4", &p, &err), NMP_OK);
	assert_int_equal(nmp_sparsegpt_solve(W, 2, K, H, 0.01, &p, 0, NULL, mask, &damp, "bad", &err), NMP_ERR_MODEL);
	assert_non_null(strstr(err.message, "tensor 'bad'"));
	assert_non_null(strstr(err.message, "not positive definite"));
}

static void test_grid_rounds_half_to_even_and_clamps(void **state)
{
	(void)state;
	assert_true(nmp_sgpt_on_grid(1.25, 0.5, 0, -128, 127) == 1);     /* 2.5 steps: to 2 */
	assert_true(nmp_sgpt_on_grid(1.75, 0.5, 0, -128, 127) == 2);     /* 3.5 steps: to 4 */
	assert_true(nmp_sgpt_on_grid(-0.5, 1, 0, -128, 127) == 0);       /* -0.5: to -0, even */
	assert_true(nmp_sgpt_on_grid(1.5, 1, 0, -128, 127) == 2);
	assert_true(nmp_sgpt_on_grid(1e6, 1, 0, -128, 127) == 127);      /* the range, not the value */
	assert_true(nmp_sgpt_on_grid(-1e6, 1, 3, -128, 127) == -131);    /* q = -128, minus the zero point 3 */
	assert_true(nmp_sgpt_on_grid(-1, 0.5, 10, 0, 255) == -1);        /* uint8: q = 8 */
	assert_true(nmp_sgpt_on_grid(-100, 0.5, 10, 0, 255) == -5);      /* uint8 floor: q = 0 */
	assert_true(nmp_sgpt_on_grid(3.7, 0, 0, -128, 127) == 0);        /* a scale of 0: only 0 */
}

static void test_quantized_sweep_keeps_weights_on_their_grid(void **state)
{
	(void)state;
	enum { R = 4, K = 8 };
	double W[R * K], H[K * K] = { 0 }, scale[R * K], zero[R * K];
	for (uint64_t i = 0; i < R * K; i++) {
		scale[i] = 0.05 * (double)(1 + i / K); /* one step per row */
		zero[i] = (double)(i / K) - 1;
		W[i] = (uniform() - 0.5) * 4;
	}
	for (uint64_t k = 0; k < K; k++)
		H[k * K + k] = 1;
	nmp_pattern p;
	nmp_error err = { 0 };
	double damp;
	uint8_t mask[R * K];
	assert_int_equal(nmp_pattern_parse("2:4", &p, &err), NMP_OK);
	const nmp_sgpt_grid grid = { .scale = scale, .zero = zero, .qmin = -128, .qmax = 127 };
	double W0[R * K];
	memcpy(W0, W, sizeof W);
	assert_int_equal(nmp_sparsegpt_solve(W, R, K, H, 0.01, &p, 0, &grid, mask, &damp, "q", &err), NMP_OK);
	for (uint64_t i = 0; i < R * K; i++) {
		if (!mask[i]) {
			assert_true(W[i] == 0);
			continue;
		}
		/* H = I: no error moves to other columns, so each kept weight is its own value on the grid */
		assert_true(W[i] == nmp_sgpt_on_grid(W0[i], scale[i], zero[i], -128, 127));
		double q = W[i] / scale[i];
		assert_true(fabs(q - nearbyint(q)) < 1e-9);
	}
	for (uint64_t g = 0; g < R * K; g += 4) { /* 2:4 by magnitude, as without the grid */
		unsigned kept = 0;
		for (unsigned j = 0; j < 4; j++)
			kept += mask[g + j];
		assert_int_equal(kept, 2);
		for (unsigned j = 0; j < 4; j++)
			for (unsigned k = 0; k < 4; k++)
				if (mask[g + j] && !mask[g + k])
					assert_true(fabs(W0[g + j]) >= fabs(W0[g + k]));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_choose_nm_keeps_highest_scores_ties_low),
		cmocka_unit_test(test_identity_hessian_is_magnitude_pruning),
		cmocka_unit_test(test_reconstruction_beats_the_magnitude_mask),
		cmocka_unit_test(test_unstructured_counts_add_up_to_the_tensors),
		cmocka_unit_test(test_indefinite_hessian_is_refused),
		cmocka_unit_test(test_grid_rounds_half_to_even_and_clamps),
		cmocka_unit_test(test_quantized_sweep_keeps_weights_on_their_grid),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
