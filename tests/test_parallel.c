/* The shared parallel loop: every item once, whatever the thread count; the first failure stops it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "parallel.h"

typedef struct counts {
	unsigned char *runs;  /* how many times each item ran; each item writes only its own */
	size_t fail_at;       /* SIZE_MAX: none fails */
} counts;

static nmp_status count_item(void *ctx, size_t i, nmp_error *err)
{
	counts *c = ctx;
	c->runs[i]++;
	if (i == c->fail_at)
		return nmp_error_set(err, NMP_ERR_MODEL, "item %zu failed", i);
	return NMP_OK;
}

static void test_every_item_runs_once(void **state)
{
	(void)state;
	static unsigned char runs[1000];
	/* 2000 threads is more than any size here: the loop starts one per item at most. valgrind allows 500
	 * threads alive at once, so the largest size that meets 2000 threads stays below that. */
	const int threads[] = { -3, 0, 1, 2, 3, 8, 2000 };
	const size_t sizes[] = { 0, 1, 2, 7, 300, 1000 };
	for (size_t t = 0; t < sizeof threads / sizeof *threads; t++) {
		for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
			if (threads[t] > 8 && sizes[k] > 300)
				continue;
			memset(runs, 0, sizeof runs);
			counts c = { runs, SIZE_MAX };
			nmp_error err = { 0 };
			assert_int_equal(nmp_parallel(threads[t], sizes[k], count_item, &c, &err), NMP_OK);
			for (size_t i = 0; i < sizeof runs; i++)
				assert_int_equal(runs[i], i < sizes[k] ? 1 : 0);
			assert_string_equal(err.message, "");
		}
	}
}

static void test_a_failure_stops_the_loop(void **state)
{
	(void)state;
	static unsigned char runs[1000];
	/* One thread: items run in order, so nothing after the failing one starts. */
	counts c = { runs, 17 };
	nmp_error err = { 0 };
	assert_int_equal(nmp_parallel(1, 1000, count_item, &c, &err), NMP_ERR_MODEL);
	assert_string_equal(err.message, "item 17 failed");
	for (size_t i = 0; i < 1000; i++)
		assert_int_equal(runs[i], i <= 17 ? 1 : 0);

	/* Several: the failure is reported and no item runs twice (how many start after it depends on timing). */
	for (int threads = 2; threads <= 8; threads *= 2) {
		memset(runs, 0, sizeof runs);
		c = (counts){ runs, 5 };
		err = (nmp_error){ 0 };
		assert_int_equal(nmp_parallel(threads, 1000, count_item, &c, &err), NMP_ERR_MODEL);
		assert_string_equal(err.message, "item 5 failed");
		for (size_t i = 0; i < 1000; i++)
			assert_true(runs[i] <= 1);
		assert_int_equal(runs[5], 1);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_item_runs_once),
		cmocka_unit_test(test_a_failure_stops_the_loop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
