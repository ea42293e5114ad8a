/*
 * Unit tests of the permutation search.  Invariants: the result is a
 * permutation; with blocks, every column stays in its block; the reported
 * kept magnitude is what the permutation keeps, never less than without it
 * and never more than unstructured pruning at the same density; a matrix
 * whose groups are already ideal is left alone; a planted bad order is undone;
 * the kept magnitude of a group is the sum of its N largest, ties included;
 * on three groups of four the search reaches the best of all 5775 orders
 * for every N.
 */
#include "testutil.h"

#include <math.h>

#include "permute.h"

static uint64_t rng = 7;

static float rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((double)(rng >> 11) / 9007199254740992.0);
}

static void assert_permutation(const uint32_t *perm, size_t n, size_t block)
{
	uint8_t *seen = calloc(n, 1);
	for (size_t i = 0; i < n; i++) {
		assert_true(perm[i] < n);
		assert_false(seen[perm[i]]);
		seen[perm[i]] = 1;
		if (block)
			assert_int_equal(perm[i] / block, i / block);
	}
	free(seen);
}

static void test_invariants(void **state)
{
	(void)state;
	static const unsigned nm[][2] = { { 2, 4 }, { 1, 4 }, { 2, 8 }, { 3, 8 } };
	for (size_t k = 0; k < 4; k++)
		for (unsigned block = 0; block <= 16; block += 16) {
			size_t rows = 24, cols = 64;
			float *mag = malloc(rows * cols * sizeof *mag);
			for (size_t i = 0; i < rows * cols; i++)
				mag[i] = rnd();
			uint32_t perm[64];
			nmp_perm_opts o = { .n = nm[k][0], .m = nm[k][1], .block = block, .budget = 20000, .seed = 3 };
			nmp_perm_result r;
			assert_int_equal(nmp_perm_search(mag, rows, cols, &o, perm, &r), 0);
			assert_permutation(perm, cols, block);
			uint32_t id[64];
			for (uint32_t i = 0; i < 64; i++)
				id[i] = i;
			assert_true(fabs(r.kept_identity - nmp_perm_kept(mag, rows, cols, o.n, o.m, id)) < 1e-6);
			assert_true(fabs(r.kept - nmp_perm_kept(mag, rows, cols, o.n, o.m, perm)) < 1e-6);
			assert_true(r.kept > r.kept_identity);
			assert_true(r.kept <= r.kept_unstructured + 1e-6);
			double e = nmp_perm_efficacy(&r);
			assert_true(e > 0.1 && e <= 1.0);
			free(mag);
		}
}

static void test_ideal_order_is_kept_and_planted_order_undone(void **state)
{
	(void)state;
	/* Columns 0..7: within each group of four, two large and two tiny: already ideal for 2:4. */
	size_t rows = 8, cols = 8;
	float mag[64];
	for (size_t r = 0; r < rows; r++)
		for (size_t c = 0; c < cols; c++)
			mag[r * cols + c] = (c % 4 < 2) ? 10.0f + (float)r : 0.001f * (float)(c + 1);
	uint32_t perm[8];
	nmp_perm_opts o = { .n = 2, .m = 4, .budget = 1000, .seed = 1 };
	nmp_perm_result r;
	assert_int_equal(nmp_perm_search(mag, rows, cols, &o, perm, &r), 0);
	assert_true(r.kept == r.kept_identity);
	/* Now put all the large columns in the first group: the search must spread them out. */
	for (size_t rr = 0; rr < rows; rr++)
		for (size_t c = 0; c < cols; c++)
			mag[rr * cols + c] = c < 4 ? 10.0f : 0.001f;
	assert_int_equal(nmp_perm_search(mag, rows, cols, &o, perm, &r), 0);
	assert_true(fabs(r.kept - r.kept_unstructured) < 1e-6); /* every row keeps all four large values */
	assert_true(fabs(nmp_perm_efficacy(&r) - 1.0) < 1e-9);
}

static int desc(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

/* Every N:M with M <= 64 on rows of few distinct values (ties everywhere), of
 * random values, and of one repeated value: the sum of the N largest by sorting. */
static void test_kept_is_the_sum_of_the_n_largest(void **state)
{
	(void)state;
	uint32_t id[64];
	for (uint32_t i = 0; i < 64; i++)
		id[i] = i;
	for (unsigned m = 1; m <= 64; m++)
		for (unsigned n = 1; n <= m; n++)
			for (int kind = 0; kind < 3; kind++) {
				float row[64], sorted[64];
				for (unsigned i = 0; i < m; i++)
					row[i] = kind == 0 ? (float)(int)(4 * rnd()) : kind == 1 ? rnd() : 0.5f;
				memcpy(sorted, row, sizeof row);
				qsort(sorted, m, sizeof *sorted, desc);
				double want = 0;
				for (unsigned i = 0; i < n; i++)
					want += sorted[i];
				assert_true(fabs(nmp_perm_kept(row, 1, m, n, m, id) - want) < 1e-9);
			}
}

/* Best N:4 kept magnitude over every split of 12 columns into three groups of four. */
static double best_of_all_splits(const float *mag, size_t rows, unsigned n)
{
	double best = 0;
	uint32_t order[12];
	order[0] = 0; /* the group holding column 0 first, then the one holding the smallest column left */
	for (uint32_t a = 1; a < 12; a++)
		for (uint32_t b = a + 1; b < 12; b++)
			for (uint32_t c = b + 1; c < 12; c++) {
				uint32_t rest[8], nr = 0;
				for (uint32_t k = 1; k < 12; k++)
					if (k != a && k != b && k != c)
						rest[nr++] = k;
				for (uint32_t mask = 0; mask < 256; mask++) {
					if (__builtin_popcount(mask) != 4 || !(mask & 1))
						continue;
					uint32_t i1 = 4, i2 = 8;
					for (uint32_t k = 0; k < 8; k++)
						order[(mask >> k & 1) ? i1++ : i2++] = rest[k];
					order[1] = a, order[2] = b, order[3] = c;
					double kept = nmp_perm_kept(mag, rows, 12, n, 4, order);
					if (kept > best)
						best = kept;
				}
			}
	return best;
}

/*
 * The search scores a swap from a per-row summary of each group (what the
 * other M - 1 keep when one position is emptied, and the N-th largest of
 * them); 2:4 has its own vector code.  On rows of few distinct values (ties
 * everywhere), zeros, one repeated value and random values, with budget
 * enough, it must find the best order there is.
 */
static void test_search_reaches_the_optimum(void **state)
{
	(void)state;
	for (unsigned n = 1; n <= 3; n++)
		for (int kind = 0; kind < 4; kind++)
			for (int trial = 0; trial < 6; trial++) {
				const size_t rows = 5 + (size_t)trial;
				float mag[12 * 12];
				for (size_t i = 0; i < rows * 12; i++)
					mag[i] = kind == 0 ? (float)(int)(3 * rnd())
					       : kind == 1 ? (rnd() < 0.6f ? 0.0f : rnd())
					       : kind == 2 ? 0.25f : rnd();
				uint32_t perm[12];
				nmp_perm_opts o = { .n = n, .m = 4, .budget = 4000, .seed = 1 + (uint64_t)trial };
				nmp_perm_result r;
				assert_int_equal(nmp_perm_search(mag, rows, 12, &o, perm, &r), 0);
				assert_permutation(perm, 12, 0);
				double best = best_of_all_splits(mag, rows, n);
				assert_true(fabs(r.kept - best) <= 1e-5 * best);
				assert_true(r.kept >= r.kept_identity);
			}
}

/*
 * A large search (far more pairs than its budget) runs in parted rounds:
 * the order found is the same for 1, 2, 3 and 8 workers, for 2:4 and 4:8,
 * it is a permutation, keeps more than the identity, and spends its budget
 * (to within one round's rounding per part).
 */
static void test_parted_search_is_the_same_on_any_number_of_threads(void **state)
{
	(void)state;
	static const unsigned nm[][2] = { { 2, 4 }, { 4, 8 } };
	const size_t rows = 16, cols = 1024;
	float *mag = malloc(rows * cols * sizeof *mag);
	uint32_t *first = malloc(cols * sizeof *first), *perm = malloc(cols * sizeof *perm);
	for (size_t i = 0; i < rows * cols; i++)
		mag[i] = rnd() * (1.0f + (float)(i % cols % 7)); /* columns of unequal scale: something to find */
	for (size_t k = 0; k < 2; k++) {
		static const int threads[] = { 1, 2, 3, 8 };
		for (size_t t = 0; t < 4; t++) {
			nmp_perm_opts o = { .n = nm[k][0], .m = nm[k][1], .budget = 50000, .seed = 5, .threads = threads[t] };
			nmp_perm_result r;
			assert_int_equal(nmp_perm_search(mag, rows, cols, &o, t ? perm : first, &r), 0);
			assert_permutation(t ? perm : first, cols, 0);
			assert_true(r.kept > r.kept_identity);
			assert_true(r.evaluations >= o.budget && r.evaluations <= o.budget + 8 + 1);
			if (t)
				assert_memory_equal(perm, first, cols * sizeof *perm);
		}
	}
	free(mag);
	free(first);
	free(perm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_invariants),
		cmocka_unit_test(test_ideal_order_is_kept_and_planted_order_undone),
		cmocka_unit_test(test_kept_is_the_sum_of_the_n_largest),
		cmocka_unit_test(test_search_reaches_the_optimum),
		cmocka_unit_test(test_parted_search_is_the_same_on_any_number_of_threads),
	};
	return cmocka_run_group_tests_name("permute", tests, NULL, NULL);
}
