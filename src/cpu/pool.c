/*
 * pool.c — the CPU backend's parallel for.  Work is cut into at most four
 * parts per thread; threads take parts in turn, and each part owns its
 * accumulator, so the caller combines the results in part order and gets
 * the same sums however the parts were scheduled.
 */
#include <stdlib.h>

#include "parallel.h"
#include "cpu.h"

typedef struct pool_for {
	nmp_cpu_part_fn fn;
	nmp_cpu_job *j;
	uint64_t n;
	int parts;
	void *accs;
	size_t acc_size;
} pool_for;

static nmp_status run_part(void *ctx, size_t part, nmp_error *err)
{
	(void)err;
	pool_for *f = ctx;
	uint64_t b = f->n * (uint64_t)part / (uint64_t)f->parts;
	uint64_t e = f->n * (uint64_t)(part + 1) / (uint64_t)f->parts;
	f->fn(f->j, b, e, (char *)f->accs + part * f->acc_size);
	return NMP_OK;
}

void *nmp_cpu_parallel_for(nmp_cpu_job *j, uint64_t n, uint64_t min_per_part, size_t acc_size, int *parts_out,
			   nmp_cpu_part_fn fn)
{
	int threads = j->threads > 0 ? j->threads : 1;
	uint64_t parts = n / (min_per_part ? min_per_part : 1);
	if (parts > (uint64_t)threads * 4)
		parts = (uint64_t)threads * 4;
	if (parts < 1)
		parts = 1;
	pool_for f = { .fn = fn, .j = j, .n = n, .parts = (int)parts, .acc_size = acc_size };
	f.accs = calloc(parts, acc_size ? acc_size : 1);
	if (!f.accs)
		return NULL;
	nmp_parallel(threads, (size_t)parts, run_part, &f, NULL);
	*parts_out = (int)parts;
	return f.accs;
}
