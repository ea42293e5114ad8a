/*
 * units.c — vector-wise (V rows x 1 column) and block-wise (R x C) N:M: a
 * unit's score is the sum of its magnitudes in double, rows then columns in
 * order; in each run of M units along the group axis the N best are kept,
 * ties to the lower unit index.
 */
#include "cpu.h"

/* Keeps the n largest of m scores; ties keep the lower index. */
static void top_n_double(const double *s, int m, int n, uint8_t *keep)
{
	for (int a = 0; a < m; a++) {
		int rank = 0;
		for (int b = 0; b < m; b++)
			if (s[b] > s[a] || (s[b] == s[a] && b < a))
				rank++;
		keep[a] = rank < n;
	}
}

/* Vector-wise and block-wise N:M: one work item per (row block, group). */
void nmp_cpu_units_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	nmp_cpu_acc *acc = accp;
	const int m = (int)j->p->m, n = (int)j->p->n;
	const unsigned ur = nmp_pattern_unit_rows(j->p), uc = nmp_pattern_unit_cols(j->p);
	const uint64_t gcols = (uint64_t)m * uc, groups = j->L / gcols;
	double score[NMP_PATTERN_MAX_M];
	uint8_t keep[NMP_PATTERN_MAX_M];
	for (uint64_t w = b; w < e; w++) {
		uint64_t r0 = (w / groups) * ur, c0 = (w % groups) * gcols;
		for (int x = 0; x < m; x++) {
			double s = 0;
			for (unsigned t = 0; t < ur; t++)
				for (unsigned c = 0; c < uc; c++)
					s += nmp_key_mag(j->kk, j->key[nmp_cpu_at(j, r0 + t, c0 + (uint64_t)x * uc + c)]);
			score[x] = s;
		}
		top_n_double(score, m, n, keep);
		for (unsigned t = 0; t < ur; t++)
			for (int x = 0; x < m; x++)
				for (unsigned c = 0; c < uc; c++)
					nmp_cpu_mark(j, nmp_cpu_at(j, r0 + t, c0 + (uint64_t)x * uc + c), keep[x], acc);
	}
}
