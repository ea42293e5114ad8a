/*
 * check.c — does a tensor already comply with a pattern?  A zero is a
 * stored zero (for quantized weights, the zero point).  N:M groups comply
 * when at most N units hold a nonzero; transposable tiles when every row and
 * column has at most N; P% when at least round(P x units) units are zero.
 */
#include <math.h>

#include "cpu.h"

void nmp_cpu_check(nmp_cpu_job *j, nmp_mask_stats *st)
{
	const nmp_pattern *p = j->p;
	const unsigned ur = nmp_pattern_unit_rows(p), uc = nmp_pattern_unit_cols(p);
	uint64_t kept = 0;
	for (uint64_t i = 0; i < j->numel; i++)
		kept += nmp_cpu_nonzero(j, i);
	st->kept = kept;
	if (!p->structured) {
		const uint64_t rb = j->rows / ur, cb = j->L / uc, units = rb * cb;
		uint64_t zero_units = 0;
		for (uint64_t u = 0; u < units; u++) {
			bool any = false;
			for (unsigned t = 0; t < ur && !any; t++)
				for (unsigned c = 0; c < uc && !any; c++)
					any = nmp_cpu_nonzero(j, nmp_cpu_at(j, (u / cb) * ur + t, (u % cb) * uc + c));
			zero_units += !any;
		}
		uint64_t n_prune = (uint64_t)floor(p->sparsity * (double)units + 0.5);
		st->groups = units;
		st->violations = zero_units < n_prune ? n_prune - zero_units : 0;
		return;
	}
	const unsigned m = p->m, n = p->n;
	const uint64_t gcols = (uint64_t)m * uc, groups = j->L / gcols, rblocks = j->rows / ur;
	for (uint64_t rb = 0; rb < rblocks; rb++) {
		for (uint64_t g = 0; g < groups; g++) {
			uint64_t r0 = rb * ur, c0 = g * gcols;
			bool bad = false;
			if (p->unit == NMP_UNIT_TILE) {
				for (unsigned r = 0; r < m && !bad; r++) {
					unsigned rc = 0, cc = 0;
					for (unsigned c = 0; c < m; c++) {
						rc += nmp_cpu_nonzero(j, nmp_cpu_at(j, r0 + r, c0 + c));
						cc += nmp_cpu_nonzero(j, nmp_cpu_at(j, r0 + c, c0 + r));
					}
					bad = rc > n || cc > n;
				}
			} else {
				/* Units (columns of a vector, blocks) holding any nonzero. */
				unsigned used = 0;
				for (unsigned x = 0; x < m; x++) {
					bool any = false;
					for (unsigned t = 0; t < ur && !any; t++)
						for (unsigned c = 0; c < uc && !any; c++)
							any = nmp_cpu_nonzero(j, nmp_cpu_at(j, r0 + t, c0 + x * uc + c));
					used += any;
				}
				bad = used > n;
			}
			st->groups++;
			st->violations += bad;
		}
	}
}
