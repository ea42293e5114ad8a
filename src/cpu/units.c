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

/* The same for a few scores, counted without a branch (random scores mispredict half of the branches). */
static inline __attribute__((always_inline)) void top_n_counted(const double *s, int m, int n, uint8_t *keep)
{
	for (int a = 0; a < m; a++) {
		int rank = 0;
		for (int b = 0; b < m; b++)
			rank += (s[b] > s[a]) | ((s[b] == s[a]) & (b < a));
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
	uint64_t rb = rows_fast ? b % rblocks : b / groups, g = rows_fast ? b / rblocks : b % groups; /* stepped */
	for (uint64_t w = b; w < e; w++) {
		const uint64_t r0 = rb * ur, c0 = g * gcols;
		if (rows_fast ? ++rb == rblocks : ++g == groups)
			rows_fast ? (rb = 0, g++) : (g = 0, rb++);
		for (int x = 0; x < m; x++)
			score[x] = 0;
		for (unsigned t = 0; t < ur; t++) {
			const uint64_t row = j->row_off[r0 + t] + c0 * inner;
			for (unsigned c = 0; c < uc; c++)
				for (int x = 0; x < m; x++)
					score[x] += nmp_key_mag(kk, nmp_cpu_key_kk(j, row + (uint64_t)x * unit_step + c * inner, kk));
		}
		if (m <= 8)
			top_n_counted(score, m, n, keep);
		else
			top_n_double(score, m, n, keep);
		for (int x = 0; x < m; x++) {
			kept += nmp_cpu_kept_mag(score[x], keep[x]);
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

/* M of 2, in a function of its own: inlined beside the general M, it slowed that copy by a sixth. */
static __attribute__((noinline)) void units_pairs(nmp_cpu_job *j, uint64_t b, uint64_t e, nmp_cpu_acc *acc)
{
	switch (j->kk) {
	case NMP_KK_F32: units_run(j, b, e, acc, NMP_KK_F32, 2); break;
	case NMP_KK_F16: units_run(j, b, e, acc, NMP_KK_F16, 2); break;
	case NMP_KK_BF16: units_run(j, b, e, acc, NMP_KK_BF16, 2); break;
	default: units_run(j, b, e, acc, NMP_KK_F64, 2); break;
	}
}

static inline __attribute__((always_inline)) void units_kind(nmp_cpu_job *j, uint64_t b, uint64_t e,
							     nmp_cpu_acc *acc, nmp_key_kind kk)
{
	switch (j->p->m) {
	case 2: units_pairs(j, b, e, acc); break;
	case 4: units_run(j, b, e, acc, kk, 4); break;
	case 8: units_run(j, b, e, acc, kk, 8); break;
	default: units_run(j, b, e, acc, kk, (int)j->p->m); break;
	}
}

/* ---- M of 4 or 8 over 32-bit keys, with AVX2 ------------------------------------------------ */

#if defined(__x86_64__)
/* The keys at element i and three more, s apart. */
NMP_CPU_SIMD_INLINE __m128i units_key4(const uint8_t *in, const uint32_t *q, uint64_t i, uint64_t s, int kind)
{
	if (s == 1)
		return kind == NMP_CK_Q ? _mm_loadu_si128((const __m128i *)(const void *)(q + i)) : nmp_cpu_key4(in, i, kind);
	return _mm_setr_epi32((int)nmp_cpu_key32_at(in, q, i, kind), (int)nmp_cpu_key32_at(in, q, i + s, kind),
			      (int)nmp_cpu_key32_at(in, q, i + 2 * s, kind), (int)nmp_cpu_key32_at(in, q, i + 3 * s, kind));
}

/* The magnitudes of four keys, after the reference bin's work on them (nmp_cpu_ref4). */
NMP_CPU_SIMD_INLINE __m128 units_mag4(__m128i k, int kind, __m128i cut, __m256d *above, nmp_cpu_cut *in_bin)
{
	const int mk = kind == NMP_CK_Q ? NMP_CK_F32 : kind;
	const __m128 mg = _mm256_castps256_ps128(nmp_cpu_mag8(_mm256_zextsi128_si256(k), mk));
	nmp_cpu_ref4(k, mg, cut, nmp_cpu_ref_shift(kind), above, in_bin);
	return mg;
}

/*
 * top_n_double for M of 4 or 8, without a branch: unit a's rank is the
 * number of scores above its own, and of equal ones at a lower index, each
 * counted from a comparison of all M at once.
 */
NMP_CPU_SIMD_INLINE void top_n_double8(const double *s, int m, int n, uint8_t *keep)
{
	const __m256d lo = _mm256_loadu_pd(s), hi = m == 8 ? _mm256_loadu_pd(s + 4) : lo;
	for (int a = 0; a < m; a++) {
		const __m256d v = _mm256_set1_pd(s[a]);
		unsigned above = (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(lo, v, _CMP_GT_OQ));
		unsigned equal = (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(lo, v, _CMP_EQ_OQ));
		if (m == 8) {
			above |= (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(hi, v, _CMP_GT_OQ)) << 4;
			equal |= (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(hi, v, _CMP_EQ_OQ)) << 4;
		}
		keep[a] = __builtin_popcount(above | (equal & ((1u << a) - 1))) < n;
	}
}

/* kept plus the kept scores, in index order. */
NMP_CPU_SIMD_INLINE double kept_sum8(double kept, const double *score, const uint8_t *keep, int m)
{
	for (int x = 0; x < m; x++)
		kept += nmp_cpu_kept_mag(score[x], keep[x]);
	return kept;
}

/* Are the unit's rows side by side in fours (a MatMul's B: rows are the contiguous axis)? */
static inline bool units_rows_in_fours(const uint64_t *ro, unsigned ur)
{
	if (ur % 4)
		return false;
	for (unsigned t = 0; t < ur; t += 4)
		if (ro[t + 1] != ro[t] + 1 || ro[t + 2] != ro[t] + 2 || ro[t + 3] != ro[t] + 3)
			return false;
	return true;
}

/*
 * The units of one (row block, group) at eight adjacent kernel positions of
 * a Conv (nmp_cpu_positions): lane l of a vector holds the cell of the unit
 * at position l, so each unit's sum, in double, keeps the rule's order
 * while eight run side by side; each lane keeps its own N of the M.  The
 * reference bin's work and the zeroing as in units4_run.  Returns the kept
 * magnitude; *count receives the kept units.
 */
NMP_CPU_SIMD_INLINE double units8_positions(
	const nmp_cpu_job *j, const uint64_t *ro, uint64_t c0, int m, int kind, __m256d above[2], nmp_cpu_cut *in_bin,
	uint64_t *count)
{
	const int n = (int)j->p->n;
	const unsigned ur = nmp_pattern_unit_rows(j->p), uc = nmp_pattern_unit_cols(j->p);
	const uint64_t inner = j->inner;
	const __m256i cut = _mm256_set1_epi32((int)j->ref_bin);
	__m256d s[8][2]; /* unit x of the group: positions 0-3, 4-7 */
	for (int x = 0; x < m; x++)
		s[x][0] = s[x][1] = _mm256_setzero_pd();
	for (unsigned t = 0; t < ur; t++)
		for (unsigned c = 0; c < uc; c++)
			for (int x = 0; x < m; x++) {
				const __m256i k = nmp_cpu_key8(j->in, ro[t] + c0 + ((uint64_t)x * uc + c) * inner, kind);
				const __m256 mg = nmp_cpu_mag8(k, kind);
				nmp_cpu_ref8(k, mg, cut, nmp_cpu_ref_shift(kind), above, in_bin);
				s[x][0] = _mm256_add_pd(s[x][0], _mm256_cvtps_pd(_mm256_castps256_ps128(mg)));
				s[x][1] = _mm256_add_pd(s[x][1], _mm256_cvtps_pd(_mm256_extractf128_ps(mg, 1)));
			}
	double sums[8][8], kept = 0; /* [x][position] */
	unsigned on[8] = { 0 };          /* bit l: unit x keeps at position l */
	for (int x = 0; x < m; x++) {
		_mm256_storeu_pd(sums[x], s[x][0]);
		_mm256_storeu_pd(sums[x] + 4, s[x][1]);
	}
	for (int l = 0; l < 8; l++) {
		double score[8];
		uint8_t keep[8];
		for (int x = 0; x < m; x++)
			score[x] = sums[x][l];
		top_n_double8(score, m, n, keep);
		kept = kept_sum8(kept, score, keep, m);
		for (int x = 0; x < m; x++) {
			*count += keep[x];
			on[x] |= (unsigned)keep[x] << l;
		}
	}
	const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
	__m256i keep[8];
	for (int x = 0; x < m; x++)
		keep[x] = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)on[x]), lane_bit), lane_bit);
	for (unsigned t = 0; t < ur; t++)
		for (unsigned c = 0; c < uc; c++)
			for (int x = 0; x < m; x++)
				nmp_cpu_keep8(j->mask, j->zero, j->zero, ro[t] + c0 + ((uint64_t)x * uc + c) * inner, keep[x],
					      kind);
	return kept;
}

/*
 * The mask bytes and zeroes of one (row block, group) whose group runs
 * along a row's adjacent elements (inner 1: a Gemm's transposed B, a 1x1
 * Conv): each row's m x uc cells are one run, written as a whole from one
 * pattern, four elements to a zeroing store.
 */
NMP_CPU_SIMD_INLINE void units_write_rows(uint8_t *mask, uint8_t *zero, const uint64_t *ro, unsigned ur, uint64_t c0,
					  const uint8_t *keep, int m, unsigned uc, int kind)
{
	const unsigned gcols = (unsigned)m * uc; /* a multiple of 4, at most 64 */
	uint8_t row[64];
	unsigned quad[16]; /* bit l: element 4 q + l is kept */
	for (int x = 0; x < m; x++)
		memset(row + (unsigned)x * uc, keep[x], uc);
	for (unsigned q = 0; q < gcols / 4; q++)
		quad[q] = row[4 * q] | row[4 * q + 1] << 1 | row[4 * q + 2] << 2 | (unsigned)row[4 * q + 3] << 3;
	for (unsigned t = 0; t < ur; t++) {
		const uint64_t at = ro[t] + c0;
		if (mask)
			memcpy(mask + at, row, gcols);
		for (unsigned q = 0; zero && q < gcols / 4; q++)
			nmp_cpu_zero4_unless(zero, at + 4 * q, quad[q], kind);
	}
}

/*
 * The same rule as units_run, four units to a vector: at each cell of the
 * unit (rows, then columns) the cells of four side-by-side units are read
 * together and their magnitudes added to four double sums, in the rule's
 * order.  Where the unit's rows are side by side in fours, each column of
 * four rows is one load, and four units' columns, transposed, give each
 * row's cells of the four units; otherwise the cells are read one by one.
 * The pass also sums the magnitudes above the reference bin and gathers the
 * keys inside it (as exact tiles do), so that the reference statistic needs
 * no pass of its own, and zeroes a float weight's pruned units
 * (nmp_cpu_job.zero) once it has read them.  Mask bytes of four adjacent
 * rows are written together.
 */
NMP_CPU_SIMD_INLINE void units4_run(nmp_cpu_job *j, uint64_t b, uint64_t e, nmp_cpu_acc *acc, int kind, int m)
{
	/* Locals, not the job's fields: the mask's byte stores may alias anything. */
	const int n = (int)j->p->n;
	const unsigned ur = nmp_pattern_unit_rows(j->p), uc = nmp_pattern_unit_cols(j->p);
	const uint64_t gcols = (uint64_t)m * uc, groups = j->L / gcols, inner = j->inner;
	const uint64_t rblocks = j->rows / ur, unit_step = uc * inner;
	const uint64_t *row_off = j->row_off;
	const uint8_t *in = j->in;
	const uint32_t *qkey = j->qkey;
	uint8_t *mask = j->mask, *zero = j->zero;
	const bool rows_fast = nmp_cpu_rows_fast(j);
	const __m128i cut = _mm_set1_epi32((int)j->ref_bin);
	__m256d above = _mm256_setzero_pd();
	double kept = acc->l1_kept;
	uint64_t count = 0;
	/* A Conv's units, position fastest, eight at adjacent positions side by side. */
	uint64_t per;
	const uint64_t positions = kind != NMP_CK_Q ? nmp_cpu_positions(j, ur, &per) : 0;
	__m256d above8[2] = { _mm256_setzero_pd(), _mm256_setzero_pd() };
	/* Item w's row block and group, stepped from item b's rather than divided out each time. */
	uint64_t next_rb = rows_fast ? b % rblocks : b / groups, next_g = rows_fast ? b / rblocks : b % groups;
	for (uint64_t w = b; w < e; w++) {
		uint64_t rb = next_rb, g = next_g, p = 0;
		if (positions)
			p = nmp_cpu_item_at(w, positions, groups, per / ur, &rb, &g);
		else if (rows_fast ? ++next_rb == rblocks : ++next_g == groups)
			rows_fast ? (next_rb = 0, next_g++) : (next_g = 0, next_rb++);
		const uint64_t *ro = row_off + rb * ur, c0 = g * gcols * inner;
		if (positions && p + 8 <= positions && w + 8 <= e && nmp_cpu_side_by_side8(row_off, rb * ur, ur, per)) {
			kept += units8_positions(j, ro, c0, m, kind, above8, &acc->cut, &count);
			w += 7;
			continue;
		}
		const bool fours = units_rows_in_fours(ro, ur);
		__m256d s[2] = { _mm256_setzero_pd(), _mm256_setzero_pd() };
		if (fours && uc <= 4) {
			for (unsigned t0 = 0; t0 < ur; t0 += 4) {
				__m128 v[4][4][2]; /* [column][row][half]: lane x is unit 4 half + x */
				for (unsigned c = 0; c < uc; c++)
					for (int h = 0; h < m / 4; h++) {
						__m128 col[4]; /* lane r: row t0 + r */
						for (int x = 0; x < 4; x++) {
							const uint64_t at = ro[t0] + c0 + ((uint64_t)(4 * h + x) * uc + c) * inner;
							col[x] = units_mag4(units_key4(in, qkey, at, 1, kind), kind, cut, &above,
									    &acc->cut);
						}
						_MM_TRANSPOSE4_PS(col[0], col[1], col[2], col[3]);
						for (int r = 0; r < 4; r++)
							v[c][r][h] = col[r];
					}
				for (int r = 0; r < 4; r++)
					for (unsigned c = 0; c < uc; c++)
						for (int h = 0; h < m / 4; h++)
							s[h] = _mm256_add_pd(s[h], _mm256_cvtps_pd(v[c][r][h]));
			}
		} else {
			for (unsigned t = 0; t < ur; t++)
				for (unsigned c = 0; c < uc; c++)
					for (int h = 0; h < m / 4; h++) {
						const uint64_t at = ro[t] + c0 + (4 * (uint64_t)h * uc + c) * inner;
						const __m128 mg = units_mag4(units_key4(in, qkey, at, unit_step, kind), kind, cut,
									     &above, &acc->cut);
						s[h] = _mm256_add_pd(s[h], _mm256_cvtps_pd(mg));
					}
		}
		double score[8];
		uint8_t keep[8];
		_mm256_storeu_pd(score, s[0]);
		_mm256_storeu_pd(score + 4, s[1]);
		top_n_double8(score, m, n, keep);
		kept = kept_sum8(kept, score, keep, m);
		for (int x = 0; x < m; x++)
			count += keep[x];
		if (!fours && inner == 1 && gcols <= 64) {
			units_write_rows(mask, zero, ro, ur, c0, keep, m, uc, kind);
			continue;
		}
		for (unsigned t = 0; mask && t < ur; t += fours ? 4 : 1)
			for (int x = 0; x < m; x++) {
				const uint32_t bytes = 0x01010101u * keep[x];
				for (unsigned c = 0; c < uc; c++) {
					uint8_t *at = mask + ro[t] + c0 + ((uint64_t)x * uc + c) * inner;
					if (fours)
						memcpy(at, &bytes, 4);
					else
						*at = keep[x];
				}
			}
		for (unsigned t = 0; zero && t < ur; t += fours ? 4 : 1)
			for (int x = 0; x < m; x++)
				for (unsigned c = 0; c < uc; c++) {
					const uint64_t at = ro[t] + c0 + ((uint64_t)x * uc + c) * inner;
					if (fours)
						nmp_cpu_zero4_unless(zero, at, 15u * keep[x], kind);
					else
						nmp_cpu_zero_unless(zero, at, keep[x], kind);
				}
	}
	double lanes[12];
	_mm256_storeu_pd(lanes, above);
	_mm256_storeu_pd(lanes + 4, above8[0]);
	_mm256_storeu_pd(lanes + 8, above8[1]);
	for (int l = 0; l < 12; l++)
		acc->above += lanes[l];
	acc->l1_kept = kept;
	acc->kept += count * ur * uc;
}

NMP_CPU_SIMD static void units4_avx2(nmp_cpu_job *j, uint64_t b, uint64_t e, nmp_cpu_acc *acc)
{
	const int kind = nmp_cpu_kind32(j);
	/* Specialized for a constant kind and M, as the tiles are. */
	switch (kind * 2 + (j->p->m == 8)) {
	case NMP_CK_F32 * 2: units4_run(j, b, e, acc, NMP_CK_F32, 4); break;
	case NMP_CK_F32 * 2 + 1: units4_run(j, b, e, acc, NMP_CK_F32, 8); break;
	case NMP_CK_F16 * 2: units4_run(j, b, e, acc, NMP_CK_F16, 4); break;
	case NMP_CK_F16 * 2 + 1: units4_run(j, b, e, acc, NMP_CK_F16, 8); break;
	case NMP_CK_BF16 * 2: units4_run(j, b, e, acc, NMP_CK_BF16, 4); break;
	case NMP_CK_BF16 * 2 + 1: units4_run(j, b, e, acc, NMP_CK_BF16, 8); break;
	case NMP_CK_Q * 2: units4_run(j, b, e, acc, NMP_CK_Q, 4); break;
	default: units4_run(j, b, e, acc, NMP_CK_Q, 8); break;
	}
}
#endif

bool nmp_cpu_units_inline(const nmp_cpu_job *j)
{
#if defined(__x86_64__)
	return (j->p->unit == NMP_UNIT_VECTOR || j->p->unit == NMP_UNIT_BLOCK) && (j->p->m == 4 || j->p->m == 8) &&
	       j->kk != NMP_KK_F64 && nmp_cpu_have_avx2();
#else
	(void)j;
	return false;
#endif
}

void nmp_cpu_units_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
#if defined(__x86_64__)
	if (nmp_cpu_units_inline(j)) {
		units4_avx2(j, b, e, accp);
		return;
	}
#endif
	switch (j->kk) {
	case NMP_KK_F32: units_kind(j, b, e, accp, NMP_KK_F32); break;
	case NMP_KK_F16: units_kind(j, b, e, accp, NMP_KK_F16); break;
	case NMP_KK_BF16: units_kind(j, b, e, accp, NMP_KK_BF16); break;
	default: units_kind(j, b, e, accp, NMP_KK_F64); break;
	}
}
