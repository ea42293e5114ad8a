/*
 * compare's accumulation of one output against the dense model's: top-1
 * agreement (each row's first largest value, a NaN never picked, rows that
 * cross the chunks the values are read in), the sums behind cosine and
 * relative L2, and values that turn non-finite.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "compare.h"
#include "ort.h"

static nmp_host_tensor rows_of(float *v, int64_t rows, int64_t last)
{
	return (nmp_host_tensor){ .dtype = 1 /* FLOAT */, .rank = 2, .dims = { rows, last }, .data = v,
				  .numel = (uint64_t)(rows * last) };
}

/* The first index of the largest, NaN never picked (all NaN: 0): the rule compare states. */
static int64_t first_argmax(const float *v, int64_t n)
{
	int64_t at = 0;
	for (int64_t i = 0; i < n; i++)
		if (!isnan(v[i]) && (isnan(v[at]) || v[i] > v[at]))
			at = i;
	return at;
}

/*
 * Ties go to the first index in both models, so [1, 1, 0] against
 * [1, 0, 1] agree; a NaN is never the argmax, and NaN in both models at
 * one place is no difference; a row of NaN agrees at 0.  A value
 * non-finite in one model only makes the sample a miss: its rows count,
 * none agrees.
 */
static void test_top1_ties_and_nan(void **state)
{
	(void)state;
	float a[] = { 1, 1, 0, /**/ NAN, 2, 3, /**/ 5, 4, 5, /**/ NAN, NAN, NAN };
	float b[] = { 1, 0, 1, /**/ NAN, 3, 3, /**/ 4, 5, 5, /**/ NAN, NAN, NAN };
	nmp_host_tensor ta = rows_of(a, 4, 3), tb = rows_of(b, 4, 3);
	nmp_output_acc x;
	memset(&x, 0, sizeof x);
	nmp_output_acc_add(&x, &ta, &tb, 3);
	assert_int_equal(x.nonfinite, 0);
	assert_int_equal(x.rows, 4);
	/* argmax by row: 0 and 0; 2 and 1 (the first 3); 0 and 1; 0 and 0 */
	assert_int_equal(x.agree, 2);
	assert_true(nmp_output_top1(&x) == 0.5);

	b[1] = NAN; /* non-finite in the pruned model alone */
	memset(&x, 0, sizeof x);
	nmp_output_acc_add(&x, &ta, &tb, 3);
	assert_int_equal(x.nonfinite, 1);
	assert_int_equal(x.nonfinite_samples, 1);
	assert_int_equal(x.rows, 4);
	assert_int_equal(x.agree, 0);
}

/*
 * Rows longer than the chunks values are read in, rows that straddle
 * chunks, and short rows, some wholly negative, against the rule above.
 */
static void test_top1_rows_across_chunks(void **state)
{
	(void)state;
	const int64_t shapes[][2] = { { 3, 700 }, { 7, 300 }, { 5, 512 }, { 40, 13 }, { 64, 2 } };
	srand(7);
	for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
		const int64_t rows = shapes[s][0], last = shapes[s][1], n = rows * last;
		float *a = malloc((size_t)n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
		for (int64_t i = 0; i < n; i++) {
			a[i] = (float)(rand() % 50 - 30); /* many ties, and rows wholly negative */
			b[i] = rand() % 4 ? a[i] : (float)(rand() % 50 - 30);
		}
		uint64_t want = 0;
		double dot = 0, na = 0, nb = 0, diff = 0;
		for (int64_t r = 0; r < rows; r++)
			want += first_argmax(a + r * last, last) == first_argmax(b + r * last, last);
		for (int64_t i = 0; i < n; i++) {
			dot += (double)a[i] * b[i];
			na += (double)a[i] * a[i];
			nb += (double)b[i] * b[i];
			diff += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		}
		nmp_host_tensor ta = rows_of(a, rows, last), tb = rows_of(b, rows, last);
		nmp_output_acc x;
		memset(&x, 0, sizeof x);
		nmp_output_acc_add(&x, &ta, &tb, (uint64_t)last);
		assert_int_equal(x.rows, rows);
		assert_int_equal(x.agree, want);
		assert_true(fabs(nmp_output_rel_l2(&x) - sqrt(diff / na)) <= 1e-12);
		assert_true(fabs(nmp_cosine_of(&x.cos) - dot / sqrt(na * nb)) <= 1e-12);
		free(a);
		free(b);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_top1_ties_and_nan),
		cmocka_unit_test(test_top1_rows_across_chunks),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
