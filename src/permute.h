/*
 * permute.h — channel permutation search for N:M pruning.
 *
 * N:M pruning keeps the N largest of every M consecutive columns (input
 * channels) of each row.  Reordering the columns changes which share a
 * group; the search finds an order that keeps more magnitude.  The matrix is
 * given as magnitudes, rows x cols in row-major order (a weight's 2-D view:
 * columns along the group axis; several weights that read the same channels
 * are stacked as more rows).
 *
 * The search: first-improvement swaps of two columns in different groups,
 * each scored exactly on the rows of the two groups involved; when no swap
 * improves, a deterministic perturbation (a few random swaps) and another
 * descent, keeping the best order seen.  The work is bounded by a number of
 * column-pair evaluations, not by time, so results do not depend on the
 * machine; the default grows with the matrix.  Columns may be confined to
 * blocks (grouped convolutions: a channel must stay in its group).
 *
 * On large matrices (far more column pairs than the budget) the descent
 * tries random swaps instead, in rounds: each round deals the groups of M
 * into a fixed number of parts, by a seeded shuffle, and each part swaps
 * only among its own groups with its own seeded stream.  The parts touch
 * disjoint groups, so they run on `threads` workers and the result is the
 * same for any number of them.
 */
#ifndef NMP_PERMUTE_H
#define NMP_PERMUTE_H

#include <stddef.h>
#include <stdint.h>

typedef struct nmp_perm_opts {
	unsigned n, m;            /* the N:M pattern */
	uint64_t budget;          /* column-pair evaluations; 0: a default scaled to rows x cols */
	unsigned effort;          /* the default budget times this (0 or 1: as is) */
	unsigned block;           /* columns move only within blocks of this size; 0: anywhere */
	uint64_t seed;
	int threads;              /* workers for one large search (0 or 1: the calling thread); the
				   * result does not depend on it */
} nmp_perm_opts;

typedef struct nmp_perm_result {
	double kept_identity;     /* kept magnitude without permutation */
	double kept;              /* kept magnitude with the permutation found */
	double kept_unstructured; /* kept by unstructured pruning at the same density, per row */
	uint64_t evaluations;
} nmp_perm_result;

/*
 * Finds perm (perm[new column] = old column) for a rows x cols magnitude
 * matrix.  cols must be a multiple of m (and of block).  Returns 0, or -1 when
 * out of memory.
 */
int nmp_perm_search(const float *mag, size_t rows, size_t cols, const nmp_perm_opts *o, uint32_t *perm,
		    nmp_perm_result *res);

/* Kept magnitude of a rows x cols matrix under N:M with columns taken in perm's order. */
double nmp_perm_kept(const float *mag, size_t rows, size_t cols, unsigned n, unsigned m, const uint32_t *perm);

/* (kept - kept_identity) / (kept_unstructured - kept_identity); 0 when nothing can be gained. */
double nmp_perm_efficacy(const nmp_perm_result *r);

#endif
