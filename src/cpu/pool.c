/*
 * pool.c — the CPU backend's parallel for.  Work is cut into at most four
 * parts per thread; threads take parts in turn, and each part owns its
 * accumulator, so the caller combines the results in part order and gets
 * the same sums however the parts were scheduled.
 */
#include <pthread.h>
#include <stdlib.h>

#include "cpu.h"

#define NMP_CPU_MAX_THREADS 256

typedef struct pool_for {
	nmp_cpu_part_fn fn;
	nmp_cpu_job *j;
	uint64_t n;
	int parts;
	void *accs;
	size_t acc_size;
	int next;
	pthread_mutex_t lock;
} pool_for;

static void *pool_worker(void *arg)
{
	pool_for *f = arg;
	for (;;) {
		pthread_mutex_lock(&f->lock);
		int part = f->next++;
		pthread_mutex_unlock(&f->lock);
		if (part >= f->parts)
			return NULL;
		uint64_t b = f->n * (uint64_t)part / (uint64_t)f->parts;
		uint64_t e = f->n * (uint64_t)(part + 1) / (uint64_t)f->parts;
		f->fn(f->j, b, e, (char *)f->accs + (size_t)part * f->acc_size);
	}
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
	pthread_mutex_init(&f.lock, NULL);
	int nt = threads < (int)parts ? threads : (int)parts;
	pthread_t tid[NMP_CPU_MAX_THREADS];
	int started = 0;
	for (int i = 1; i < nt && i < NMP_CPU_MAX_THREADS; i++)
		if (pthread_create(&tid[started], NULL, pool_worker, &f) == 0)
			started++;
	pool_worker(&f);
	for (int i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	pthread_mutex_destroy(&f.lock);
	*parts_out = (int)parts;
	return f.accs;
}
