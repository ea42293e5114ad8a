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
 * Written once and specialized per key kind (a constant at each call), so
 * the magnitude of a key costs a conversion, not a switch; the sums keep
 * their order (unit rows, then columns; kept elements row by row).
 */
static inline __attribute__((always_inline)) void units_run(nmp_cpu_job *j, uint64_t b, uint64_t e,
							    nmp_cpu_acc *acc, nmp_key_kind kk)
{
	const int m = (int)j->p->m, n = (int)j->p->n;
	const unsigned ur = nmp_pattern_unit_rows(j->p), uc = nmp_pattern_unit_cols(j->p);
	const uint64_t gcols = (uint64_t)m * uc, groups = j->L / gcols, inner = j->inner;
	const uint64_t rblocks = j->rows / ur;
	const bool rows_fast = nmp_cpu_rows_fast(j);
	double score[NMP_PATTERN_MAX_M];
	uint8_t keep[NMP_PATTERN_MAX_M];
	for (uint64_t w = b; w < e; w++) {
		const uint64_t rb = rows_fast ? w % rblocks : w / groups, g = rows_fast ? w / rblocks : w % groups;
		const uint64_t r0 = rb * ur, c0 = g * gcols;
		for (int x = 0; x < m; x++) {
			double s = 0;
			for (unsigned t = 0; t < ur; t++) {
				const uint64_t base = j->row_off[r0 + t] + (c0 + (uint64_t)x * uc) * inner;
				for (unsigned c = 0; c < uc; c++)
					s += nmp_key_mag(kk, nmp_cpu_key_kk(j, base + c * inner, kk));
			}
			score[x] = s;
		}
		top_n_double(score, m, n, keep);
		double kept = acc->l1_kept;
		uint64_t count = 0;
		for (unsigned t = 0; t < ur; t++) {
			const uint64_t row = j->row_off[r0 + t] + c0 * inner;
			for (int x = 0; x < m; x++)
				for (unsigned c = 0; c < uc; c++) {
					const uint64_t i = row + ((uint64_t)x * uc + c) * inner;
					j->mask[i] = keep[x];
					if (keep[x]) {
						count++;
						kept += nmp_key_mag(kk, nmp_cpu_key_kk(j, i, kk));
					}
				}
		}
		acc->l1_kept = kept;
		acc->kept += count;
	}
}

void nmp_cpu_units_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	switch (j->kk) {
	case NMP_KK_F32: units_run(j, b, e, accp, NMP_KK_F32); break;
	case NMP_KK_F16: units_run(j, b, e, accp, NMP_KK_F16); break;
	case NMP_KK_BF16: units_run(j, b, e, accp, NMP_KK_BF16); break;
	default: units_run(j, b, e, accp, NMP_KK_F64); break;
	}
}
