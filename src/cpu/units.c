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

/*
 * Vector-wise and block-wise N:M: one work item per (row block, group).
 * Written once and specialized per key kind and, for the common M, per M
 * (constants at each call), so that the magnitude of a key costs a
 * conversion, not a switch, and the M scores of a group are summed side by
 * side: each unit's sum keeps its order (unit rows, then columns), and the
 * M sums are independent chains.  A kept unit's magnitude is its score.
 */
static inline __attribute__((always_inline)) void units_run(nmp_cpu_job *j, uint64_t b, uint64_t e,
							    nmp_cpu_acc *acc, nmp_key_kind kk, int m)
{
	const int n = (int)j->p->n;
	const unsigned ur = nmp_pattern_unit_rows(j->p), uc = nmp_pattern_unit_cols(j->p);
	const uint64_t gcols = (uint64_t)m * uc, groups = j->L / gcols, inner = j->inner;
	const uint64_t rblocks = j->rows / ur, unit_step = uc * inner;
	const bool rows_fast = nmp_cpu_rows_fast(j);
	double score[NMP_PATTERN_MAX_M];
	uint8_t keep[NMP_PATTERN_MAX_M];
	double kept = acc->l1_kept;
	uint64_t count = 0;
	for (uint64_t w = b; w < e; w++) {
		const uint64_t rb = rows_fast ? w % rblocks : w / groups, g = rows_fast ? w / rblocks : w % groups;
		const uint64_t r0 = rb * ur, c0 = g * gcols;
		for (int x = 0; x < m; x++)
			score[x] = 0;
		for (unsigned t = 0; t < ur; t++) {
			const uint64_t row = j->row_off[r0 + t] + c0 * inner;
			for (unsigned c = 0; c < uc; c++)
				for (int x = 0; x < m; x++)
					score[x] += nmp_key_mag(kk, nmp_cpu_key_kk(j, row + (uint64_t)x * unit_step + c * inner, kk));
		}
		top_n_double(score, m, n, keep);
		for (int x = 0; x < m; x++) {
			kept += keep[x] ? score[x] : 0.0;
			count += keep[x];
		}
		for (unsigned t = 0; t < ur; t++) {
			const uint64_t row = j->row_off[r0 + t] + c0 * inner;
			for (int x = 0; x < m; x++)
				for (unsigned c = 0; c < uc; c++)
					j->mask[row + (uint64_t)x * unit_step + c * inner] = keep[x];
		}
	}
	acc->l1_kept = kept;
	acc->kept += count * ur * uc;
}

static inline __attribute__((always_inline)) void units_kind(nmp_cpu_job *j, uint64_t b, uint64_t e,
							     nmp_cpu_acc *acc, nmp_key_kind kk)
{
	switch (j->p->m) {
	case 4: units_run(j, b, e, acc, kk, 4); break;
	case 8: units_run(j, b, e, acc, kk, 8); break;
	default: units_run(j, b, e, acc, kk, (int)j->p->m); break;
	}
}

void nmp_cpu_units_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	switch (j->kk) {
	case NMP_KK_F32: units_kind(j, b, e, accp, NMP_KK_F32); break;
	case NMP_KK_F16: units_kind(j, b, e, accp, NMP_KK_F16); break;
	case NMP_KK_BF16: units_kind(j, b, e, accp, NMP_KK_BF16); break;
	default: units_kind(j, b, e, accp, NMP_KK_F64); break;
	}
}
