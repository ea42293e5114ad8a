/*
 * cpu.h — the CPU backend's internals, shared by its files and by nothing
 * else (the engine's contract is mask.h, the bit-exact rules mask_rules.h).
 *
 * One tensor is one job: the weight seen as (outer, L, inner) with the group
 * axis L in the middle, and as rows x L for the patterns that need rows
 * (rows enumerate every other axis, the output-channel axis fastest).  Each
 * pattern family lives in its own file and runs over independent work items
 * through the thread pool (pool.c), whose per-part accumulators are combined
 * in part order so that no result depends on timing or thread count.
 */
#ifndef NMP_CPU_H
#define NMP_CPU_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "mask.h"
#include "mask_rules.h"

struct nmp_cpu_ref;

typedef struct nmp_cpu_job {
	const nmp_mask_tensor *t;
	const nmp_pattern *p;
	nmp_mask_mode mode;
	int threads;
	uint8_t *mask;
	nmp_error *err;

	nmp_key_kind kk;
	uint64_t numel, L, inner, outer;  /* (outer, L, inner) with the group axis in the middle */
	uint64_t rows;                    /* numel / L */
	uint64_t *row_off;                /* flat offset of row r, output channel fastest */
	nmp_quant_geom qg;                /* quantized: where each element's scale is */

	uint32_t *qkey;                   /* quantized: magnitude bits per element */
	uint64_t *key;                    /* unstructured: key per element (structured families read the weight) */
	const struct nmp_cpu_ref *ref;    /* the radix pass under way, for the reference */
	uint32_t ref_bin;                 /* fused path: the bin where the unstructured cut falls */
	const void *part_ctx;             /* what a family's parallel parts read beyond the job */
	const uint8_t *in;                /* where the weight is read: t->src, or t->data */
} nmp_cpu_job;

/* Accumulator of the general path's families. */
typedef struct nmp_cpu_acc {
	double l1_kept;
	uint64_t kept, deficits;
} nmp_cpu_acc;

typedef void (*nmp_cpu_part_fn)(nmp_cpu_job *j, uint64_t begin, uint64_t end, void *acc);

/*
 * pool.c: runs fn over [0, n) in parts of at least min_per_part items, each
 * with its own zeroed accumulator of acc_size bytes, and returns the
 * accumulators (to free) for the caller to combine in part order; NULL when
 * out of memory.
 */
void *nmp_cpu_parallel_for(nmp_cpu_job *j, uint64_t n, uint64_t min_per_part, size_t acc_size, int *parts,
			   nmp_cpu_part_fn fn);

/* keys.c */
nmp_status nmp_cpu_build_rows(nmp_cpu_job *j);
nmp_status nmp_cpu_quant_keys(nmp_cpu_job *j);
nmp_status nmp_cpu_scan(nmp_cpu_job *j, nmp_mask_stats *st);  /* NaN, dense L1, j->key if allocated */
void nmp_cpu_prune_elem(const nmp_cpu_job *j, uint64_t i);
bool nmp_cpu_nonzero(const nmp_cpu_job *j, uint64_t i);

/* fused.c: element-wise N:M, M <= NMP_CPU_FUSED_MAX_M, 32-bit keys, APPLY or DRY. */
#define NMP_CPU_FUSED_MAX_M 32
nmp_status nmp_cpu_fused(nmp_cpu_job *j, nmp_mask_stats *st);

/* nm.c, units.c, tiles.c: the general path's structured families (work items of the pool). */
void nmp_cpu_nm_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *acc);
void nmp_cpu_units_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *acc);
void nmp_cpu_tiles_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *acc);

/* unstructured.c: P% masks, and what unstructured pruning keeps at a given count. */
nmp_status nmp_cpu_unstructured(nmp_cpu_job *j, nmp_cpu_acc *acc);
double nmp_cpu_unstructured_reference(nmp_cpu_job *j, uint64_t keep);

/* check.c */
void nmp_cpu_check(nmp_cpu_job *j, nmp_mask_stats *st);

static inline uint64_t nmp_cpu_elem_key(const nmp_cpu_job *j, uint64_t i)
{
	if (j->qkey)
		return j->qkey[i];
	return nmp_float_key(j->t->dtype, j->in, i);
}

/* The key of element i, for a key kind known at the call (the dtype switch folds away). */
static inline __attribute__((always_inline)) uint64_t nmp_cpu_key_kk(const nmp_cpu_job *j, uint64_t i,
								     nmp_key_kind kk)
{
	if (j->qkey)
		return j->qkey[i];
	switch (kk) {
	case NMP_KK_F32: return nmp_float_key(NMP_RT_FLOAT, j->in, i);
	case NMP_KK_F16:
	case NMP_KK_BF16: return nmp_float_key(NMP_RT_FLOAT16, j->in, i); /* both: 16 bits, sign cleared */
	default: return nmp_float_key(NMP_RT_DOUBLE, j->in, i);
	}
}

/* Flat index of (row r, column c) of the 2-D view. */
static inline uint64_t nmp_cpu_at(const nmp_cpu_job *j, uint64_t r, uint64_t c)
{
	return j->row_off[r] + c * j->inner;
}

/* Records a general-path choice: the mask byte, and the kept count and magnitude. */
static inline void nmp_cpu_mark(const nmp_cpu_job *j, uint64_t i, bool keep, nmp_cpu_acc *acc)
{
	j->mask[i] = keep;
	if (keep) {
		acc->kept++;
		acc->l1_kept += nmp_key_mag(j->kk, nmp_cpu_elem_key(j, i));
	}
}

/*
 * Work items of the 2-D families are (row block, group) pairs.  They run
 * with row blocks fastest when neighbouring rows are closer in memory than
 * neighbouring columns (a MatMul weight [K, N] grouped along K), so that
 * consecutive items read consecutive memory; groups fastest otherwise.
 */
static inline bool nmp_cpu_rows_fast(const nmp_cpu_job *j)
{
	return j->rows > 1 && j->row_off[1] - j->row_off[0] < j->inner;
}

static inline uint64_t nmp_cpu_prod(const int64_t *d, int from, int to)
{
	uint64_t n = 1;
	for (int i = from; i < to; i++)
		n *= (uint64_t)d[i];
	return n;
}

#endif
