/*
 * parallel.h — the one way nmprune spreads independent items over threads.
 *
 * Items are handed out in index order to up to `threads` workers, the calling
 * thread among them.  What an item computes must depend on its index alone,
 * never on which thread ran it or when, so that results are the same for any
 * number of threads.
 */
#ifndef NMP_PARALLEL_H
#define NMP_PARALLEL_H

#include <stddef.h>

#include "error.h"

typedef nmp_status (*nmp_item_fn)(void *ctx, size_t item, nmp_error *err);

/*
 * Runs fn(ctx, i, err) for every i in [0, n).  Once an item fails no further
 * item starts; the first failure's status is returned and its error copied
 * into *err.  A thread that cannot be started leaves its share to the
 * others.  threads < 1 counts as 1.
 */
nmp_status nmp_parallel(int threads, size_t n, nmp_item_fn fn, void *ctx, nmp_error *err);

#endif
