/*
 * unstructured.c — P% masks (elements, vectors or blocks, smallest first,
 * ties zeroing the higher unit index first), and the reference statistic:
 * what unstructured pruning would keep at a given count, read from the
 * weight as it was.  Both select by radix passes over keys, never by sorting.
 */
#include <math.h>
#include <stdlib.h>

#include "cpu.h"

/* The k-th smallest (0-based) of n keys, by 16-bit radix passes. */
static uint64_t kth_smallest(const uint64_t *v, uint64_t n, uint64_t k, int bits)
{
	uint64_t prefix = 0, mask = 0;
	uint64_t *hist = malloc(65536 * sizeof *hist);
	if (!hist)
		return 0;
	for (int shift = bits - 16; shift >= 0; shift -= 16) {
		memset(hist, 0, 65536 * sizeof *hist);
		for (uint64_t i = 0; i < n; i++)
			if ((v[i] & mask) == prefix)
				hist[(v[i] >> shift) & 0xffff]++;
		uint64_t d = 0;
		while (hist[d] <= k) {
			k -= hist[d];
			d++;
		}
		prefix |= d << shift;
		mask |= (uint64_t)0xffff << shift;
	}
	free(hist);
	return prefix;
}

nmp_status nmp_cpu_unstructured(nmp_cpu_job *j, nmp_cpu_acc *acc)
{
	const unsigned ur = nmp_pattern_unit_rows(j->p), uc = nmp_pattern_unit_cols(j->p);
	const uint64_t rb = j->rows / ur, cb = j->L / uc, units = rb * cb;
	uint64_t *score = j->key;
	bool per_element = ur == 1 && uc == 1;
	if (!per_element) {
		score = malloc((units ? units : 1) * sizeof *score);
		if (!score)
			return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
		for (uint64_t u = 0; u < units; u++) {
			uint64_t r0 = (u / cb) * ur, c0 = (u % cb) * uc;
			double s = 0;
			for (unsigned t = 0; t < ur; t++)
				for (unsigned c = 0; c < uc; c++)
					s += nmp_key_mag(j->kk, j->key[nmp_cpu_at(j, r0 + t, c0 + c)]);
			memcpy(&score[u], &s, 8); /* a non-negative double's bits order like it */
		}
	}
	uint64_t n_prune = (uint64_t)floor(j->p->sparsity * (double)units + 0.5);
	uint64_t thr = 0, below = 0;
	if (n_prune > 0) {
		thr = kth_smallest(score, units, n_prune - 1, per_element && j->kk != NMP_KK_F64 ? 32 : 64);
		for (uint64_t u = 0; u < units; u++)
			below += score[u] < thr;
	}
	/* Ties at the threshold: the higher unit indices are zeroed first. */
	uint64_t tie_prune = n_prune - below;
	for (uint64_t u = units; u-- > 0;) {
		bool keep;
		if (n_prune == 0 || score[u] > thr) {
			keep = true;
		} else if (score[u] < thr) {
			keep = false;
		} else if (tie_prune > 0) {
			keep = false;
			tie_prune--;
		} else {
			keep = true;
		}
		uint64_t r0 = per_element ? 0 : (u / cb) * ur, c0 = per_element ? 0 : (u % cb) * uc;
		if (per_element)
			nmp_cpu_mark(j, u, keep, acc);
		else
			for (unsigned t = 0; t < ur; t++)
				for (unsigned c = 0; c < uc; c++)
					nmp_cpu_mark(j, nmp_cpu_at(j, r0 + t, c0 + c), keep, acc);
	}
	if (!per_element)
		free(score);
	return NMP_OK;
}

typedef struct ref_acc {
	uint64_t count[65536];
	double sum[65536];
} ref_acc;

typedef struct nmp_cpu_ref {
	int shift;
	uint64_t prefix, pmask;
} nmp_cpu_ref;

static void ref_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	ref_acc *acc = accp;
	const nmp_cpu_ref *rc = j->ref;
	for (uint64_t i = b; i < e; i++) {
		uint64_t k = j->key ? j->key[i] : nmp_cpu_elem_key(j, i);
		if ((k & rc->pmask) != rc->prefix)
			continue;
		uint64_t d = (k >> rc->shift) & 0xffff;
		acc->count[d]++;
		acc->sum[d] += nmp_key_mag(j->kk, k);
	}
}

/*
 * Sum of the `keep` largest magnitudes, read from the weight as it was:
 * radix passes of 16 bits from the top, each adding the buckets above the
 * one where the cut falls and narrowing to that bucket.
 */
double nmp_cpu_unstructured_reference(nmp_cpu_job *j, uint64_t keep)
{
	int bits = j->kk == NMP_KK_F64 ? 64 : (j->kk == NMP_KK_F32 ? 32 : 16);
	nmp_cpu_ref rc = { 0 };
	double total = 0;
	uint64_t need = keep;
	j->ref = &rc;
	for (int shift = bits - 16; shift >= 0 && need > 0; shift -= 16) {
		int parts;
		rc.shift = shift;
		ref_acc *accs = nmp_cpu_parallel_for(j, j->numel, 1u << 20, sizeof(ref_acc), &parts, ref_part);
		if (!accs) {
			total = NAN;
			break;
		}
		ref_acc *a = &accs[0];
		for (int p = 1; p < parts; p++)
			for (int d = 0; d < 65536; d++) {
				a->count[d] += accs[p].count[d];
				a->sum[d] += accs[p].sum[d];
			}
		int d = 65535;
		while (d > 0 && a->count[d] < need) {
			need -= a->count[d];
			total += a->sum[d];
			d--;
		}
		if (a->count[d] == need || shift == 0) {
			/* The whole bucket; or, at the last digit, equal keys. */
			total += a->count[d] == need ? a->sum[d] : a->sum[d] / (double)a->count[d] * (double)need;
			need = 0;
		}
		rc.prefix |= (uint64_t)d << shift;
		rc.pmask |= (uint64_t)0xffff << shift;
		free(accs);
	}
	j->ref = NULL;
	return total;
}
