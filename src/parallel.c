#include "parallel.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

typedef struct run {
	nmp_item_fn fn;
	void *ctx;
	size_t n, next;
	pthread_mutex_t lock;
	nmp_status status;
	nmp_error err;
} run;

static void *worker(void *arg)
{
	run *r = arg;
	for (;;) {
		pthread_mutex_lock(&r->lock);
		size_t i = r->next++;
		bool stop = r->status != NMP_OK || i >= r->n;
		pthread_mutex_unlock(&r->lock);
		if (stop)
			return NULL;
		nmp_error e = { 0 };
		nmp_status s = r->fn(r->ctx, i, &e);
		if (s != NMP_OK) {
			pthread_mutex_lock(&r->lock);
			if (r->status == NMP_OK) {
				r->status = s;
				r->err = e;
			}
			pthread_mutex_unlock(&r->lock);
		}
	}
}

nmp_status nmp_parallel(int threads, size_t n, nmp_item_fn fn, void *ctx, nmp_error *err)
{
	if (threads < 1)
		threads = 1;
	if ((size_t)threads > n)
		threads = n ? (int)n : 1;
	run r = { .fn = fn, .ctx = ctx, .n = n, .status = NMP_OK };
	pthread_mutex_init(&r.lock, NULL);
	pthread_t *tid = threads > 1 ? malloc((size_t)(threads - 1) * sizeof *tid) : NULL;
	int started = 0;
	for (int i = 1; tid && i < threads; i++) {
		if (pthread_create(&tid[started], NULL, worker, &r) != 0)
			break;
		started++;
	}
	worker(&r);
	for (int i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	free(tid);
	pthread_mutex_destroy(&r.lock);
	if (r.status != NMP_OK && err)
		*err = r.err;
	return r.status;
}
