/*
 * nm.c — element-wise N:M for any M (the fused path takes M <= 32 on 32-bit
 * keys): per group, a selection of the N keys that outrank the rest under
 * the tie rule, in expected linear time.
 */
#include "cpu.h"

typedef struct kidx {
	uint64_t key;
	int idx;
} kidx;

static bool outranks(const kidx *a, const kidx *b)
{
	return nmp_outranks(a->key, (uint64_t)a->idx, b->key, (uint64_t)b->idx);
}

/* Partially orders v so that v[0..n) are the n elements that outrank the rest. */
static void select_top(kidx *v, int m, int n)
{
	int lo = 0, hi = m - 1;
	while (lo < hi) {
		kidx pivot = v[lo + (hi - lo) / 2];
		int i = lo, k = hi;
		while (i <= k) {
			while (outranks(&v[i], &pivot))
				i++;
			while (outranks(&pivot, &v[k]))
				k--;
			if (i <= k) {
				kidx tmp = v[i];
				v[i] = v[k];
				v[k] = tmp;
				i++;
				k--;
			}
		}
		if (n - 1 <= k)
			hi = k;
		else if (n - 1 >= i)
			lo = i;
		else
			break;
	}
}

/* Element-wise N:M for any M: one work item per (row, group). */
void nmp_cpu_nm_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	nmp_cpu_acc *acc = accp;
	const int m = (int)j->p->m, n = (int)j->p->n;
	const uint64_t groups = j->L / (uint64_t)m;
	kidx v[NMP_PATTERN_MAX_M];
	for (uint64_t w = b; w < e; w++) {
		uint64_t r = w / groups, c0 = (w % groups) * (uint64_t)m;
		for (int x = 0; x < m; x++)
			v[x] = (kidx){ nmp_cpu_elem_key(j, nmp_cpu_at(j, r, c0 + (uint64_t)x)), x };
		select_top(v, m, n);
		for (int x = 0; x < m; x++)
			nmp_cpu_mark(j, nmp_cpu_at(j, r, c0 + (uint64_t)v[x].idx), x < n, acc);
	}
}
