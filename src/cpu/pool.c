/*
 * pool.c — the CPU backend's parallel for.  Work is cut into at most four
 * parts per thread; threads take parts in turn, and each part owns its
 * accumulator, so the caller combines the results in part order and gets
 * the same sums however the parts were scheduled.
 */
#include <stdlib.h>
#include <string.h>

#include "parallel.h"
#include "cpu.h"

/* A part's accumulator has cache lines of its own while its part runs: parts next to each other run at
 * the same time, and sharing a line made every store to one a wait for the other's core. */
#define POOL_LINE 64

typedef struct pool_for {
	nmp_cpu_part_fn fn;
	nmp_cpu_job *j;
	uint64_t n;
	int parts;
	void *slots; /* a slot per part, POOL_LINE-aligned */
	size_t slot_size;
} pool_for;

static nmp_status run_part(void *ctx, size_t part, nmp_error *err)
{
	(void)err;
	pool_for *f = ctx;
	uint64_t b = f->n * (uint64_t)part / (uint64_t)f->parts;
	uint64_t e = f->n * (uint64_t)(part + 1) / (uint64_t)f->parts;
	f->fn(f->j, b, e, (char *)f->slots + part * f->slot_size);
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
	if (acc_size == 0)
		acc_size = 1;
	const size_t slot_size = (acc_size + POOL_LINE - 1) / POOL_LINE * POOL_LINE;
	pool_for f = { .fn = fn, .j = j, .n = n, .parts = (int)parts, .slot_size = slot_size,
		       .slots = aligned_alloc(POOL_LINE, parts * slot_size) };
	char *accs = calloc(parts, acc_size);
	if (!f.slots || !accs) {
		free(f.slots);
		free(accs);
		return NULL;
	}
	memset(f.slots, 0, parts * slot_size);
	nmp_parallel(threads, (size_t)parts, run_part, &f, NULL);
	for (uint64_t p = 0; p < parts; p++)
		memcpy(accs + p * acc_size, (char *)f.slots + p * slot_size, acc_size);
	free(f.slots);
	*parts_out = (int)parts;
	return accs;
}
