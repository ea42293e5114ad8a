/*
 * tiles.c — transposable N:M: every M x M tile keeps exactly N per row and
 * per column.  Exact for M <= 4 by trying every valid tile of the shared
 * table (mask_rules.h, the same the CUDA kernels read); exact for larger M
 * as a maximum-weight b-matching of rows to columns; greedy (sort and
 * accept, which may keep fewer) on request.
 */
#include <math.h>
#include <stdlib.h>

#include "cpu.h"

static const uint16_t tile_patterns[] = NMP_TILE_PATTERNS_INIT;

/* Exact for any M: the shared flow, with scratch from the heap. */
static void tile_exact_flow(int m, int n, const double *w, uint8_t *keep)
{
	void *scratch = malloc(NMP_TILE_FLOW_SCRATCH(m));
	if (!scratch) {
		memset(keep, 0, (size_t)(m * m)); /* out of memory: nothing kept, the caller counts deficits */
		return;
	}
	nmp_tile_exact_flow(m, n, w, keep, scratch);
	free(scratch);
}

typedef struct greedy_cell {
	double w;
	int i;
} greedy_cell;

static int greedy_cmp(const void *a, const void *b)
{
	const greedy_cell *x = a, *y = b;
	if (nmp_tile_greedy_before(x->w, x->i, y->w, y->i))
		return -1;
	return nmp_tile_greedy_before(y->w, y->i, x->w, x->i) ? 1 : 0;
}

/* Greedy: largest first (ties: lower row-major index), while its row and column have room. */
static int tile_greedy(int m, int n, const double *w, uint8_t *keep)
{
	int cells = m * m;
	greedy_cell *order = malloc((size_t)cells * sizeof *order);
	int rows[NMP_PATTERN_MAX_M] = { 0 }, cols[NMP_PATTERN_MAX_M] = { 0 };
	memset(keep, 0, (size_t)cells);
	if (!order)
		return 2 * m;
	for (int i = 0; i < cells; i++)
		order[i] = (greedy_cell){ w[i], i };
	qsort(order, (size_t)cells, sizeof *order, greedy_cmp); /* a total order: any sort gives the same */
	for (int i = 0; i < cells; i++) {
		int r = order[i].i / m, c = order[i].i % m;
		if (rows[r] < n && cols[c] < n) {
			keep[order[i].i] = 1;
			rows[r]++;
			cols[c]++;
		}
	}
	free(order);
	int deficits = 0;
	for (int i = 0; i < m; i++)
		deficits += (rows[i] < n) + (cols[i] < n);
	return deficits;
}

/* ---- exact 4 x 4 tiles of 32-bit keys, filtered with AVX2 ------------------------------------ */

/*
 * The 90 tiles of 2:4 in classes, for the eight-tile chooser.  A tile is
 * its rows 0 and 1 (a top: one of the 36 pairs of row choices) over its
 * rows 2 and 3 (a bottom), and it keeps two per column exactly when each
 * column's count in the bottom is two minus its count in the top.  Tops of
 * equal column counts form a class, and each goes with every bottom of the
 * complementary counts: 6 classes of one top and one bottom (both rows
 * alike), 12 of two and two (rows sharing one cell) and one of six and six
 * (rows that are complements).  A class's tile sums are its tops' sums plus
 * its bottoms', and fp32 addition is monotonic, so its largest sum is the
 * largest top plus the largest bottom, and its second largest the larger
 * of largest top plus second bottom and second top plus largest bottom.
 * A half is one top or bottom, 6 q0 + q1 for its two rows' choices.
 */
typedef struct tile4_classes {
	uint8_t one[6][2];    /* top, bottom */
	uint8_t two[12][4];   /* tops, then bottoms */
	uint8_t six[2][6];    /* tops; bottoms */
	int32_t half[36];     /* a half's two nibbles, as rows 0 and 1 of a pattern */
} tile4_classes;

/*
 * The exact method scores every tile of the table in double, in its set
 * bits' order, and keeps the first best.  The filter gets the same answer
 * with far fewer exact scores: every tile's sum is first approximated in
 * fp32, eight tiles per vector, as the sum over rows of the row's chosen
 * cells (each row of a tile is one of the C(4, N) choices of N cells).  The
 * approximation is within 5 fp32 roundings of the true sum and the exact
 * score within 7 fp64 ones, so every tile whose exact score can be the
 * largest lies within 2^-19 of the largest approximation (2^-20.6 would
 * do); only those are scored exactly, in table order.  Approximations
 * that could overflow or lose relative accuracy (largest below 2^-100 or
 * above 2^100) send the tile to the full exact method.
 */
typedef struct tile4_tables {
	int32_t take[3][8];        /* row choice q: the position of its k-th cell (k < N) */
	int32_t choice[12][4][8];  /* vector v, row r, lane l: tile 8v + l's choice in row r */
	tile4_classes cls;         /* N = 2 only */
} tile4_tables;

static void tile4_build_classes(const int *nib_of, tile4_classes *cl)
{
	int key[36], n_one = 0, n_two = 0;
	for (int x = 0; x < 36; x++) { /* column counts of a half, in base 3 */
		key[x] = 0;
		for (int c = 0, p3 = 1; c < 4; c++, p3 *= 3)
			key[x] += ((nib_of[x / 6] >> c & 1) + (nib_of[x % 6] >> c & 1)) * p3;
		cl->half[x] = nib_of[x / 6] | nib_of[x % 6] << 4;
	}
	bool seen[81] = { false };
	for (int x = 0; x < 36; x++) {
		if (seen[key[x]])
			continue;
		seen[key[x]] = true;
		uint8_t tops[6], bots[6];
		int nt = 0, nb = 0;
		for (int y = 0; y < 36; y++) {
			if (key[y] == key[x])
				tops[nt++] = (uint8_t)y;
			if (key[y] == 80 - key[x]) /* 80: counts of two in every column */
				bots[nb++] = (uint8_t)y;
		}
		if (nt == 1) {
			cl->one[n_one][0] = tops[0];
			cl->one[n_one++][1] = bots[0];
		} else if (nt == 2) {
			memcpy(cl->two[n_two], tops, 2);
			memcpy(cl->two[n_two++] + 2, bots, 2);
		} else {
			memcpy(cl->six[0], tops, 6);
			memcpy(cl->six[1], bots, 6);
		}
	}
}

static void tile4_build(int n, const uint16_t *pats, int n_pat, tile4_tables *tb)
{
	int nib_of[8], n_choice = 0;
	memset(tb, 0, sizeof *tb);
	for (int nib = 0; nib < 16; nib++) {
		if (__builtin_popcount((unsigned)nib) != n)
			continue;
		int k = 0;
		for (int c = 0; c < 4; c++)
			if (nib >> c & 1)
				tb->take[k++][n_choice] = c;
		nib_of[n_choice++] = nib;
	}
	for (int p = 0; p < (n_pat + 7) / 8 * 8; p++) {
		uint16_t pat = pats[p < n_pat ? p : 0]; /* padding lanes repeat tile 0; never candidates */
		for (int r = 0; r < 4; r++)
			for (int q = 0; q < n_choice; q++)
				if (nib_of[q] == (pat >> (4 * r) & 15))
					tb->choice[p / 8][r][p % 8] = q;
	}
	if (n == 2)
		tile4_build_classes(nib_of, &tb->cls);
}

#if defined(__x86_64__)
/* The index of the first tile with the largest exact score; *score receives that score. */
NMP_CPU_SIMD_INLINE int tile4_best_avx2(const tile4_tables *tb, const uint16_t *pats, int n_pat, int n,
					const __m128 *rows, const double *wd, double *score)
{
	const int n_vec = n == 2 ? 12 : 3; /* the tables of 90 and 24 tiles; a constant where N is */
	__m256 R[4], A[12], mx = _mm256_set1_ps(-1.0f);
	for (int r = 0; r < 4; r++) {
		__m256 row = _mm256_castps128_ps256(rows[r]);
		R[r] = _mm256_permutevar8x32_ps(row, _mm256_loadu_si256((const __m256i *)(const void *)tb->take[0]));
		for (int k = 1; k < n; k++)
			R[r] = _mm256_add_ps(R[r], _mm256_permutevar8x32_ps(
							   row, _mm256_loadu_si256((const __m256i *)(const void *)tb->take[k])));
	}
	for (int v = 0; v < n_vec; v++) {
		__m256 a = _mm256_permutevar8x32_ps(R[0], _mm256_loadu_si256((const __m256i *)(const void *)tb->choice[v][0]));
		for (int r = 1; r < 4; r++)
			a = _mm256_add_ps(a, _mm256_permutevar8x32_ps(
						     R[r], _mm256_loadu_si256((const __m256i *)(const void *)tb->choice[v][r])));
		A[v] = a;
		mx = _mm256_max_ps(mx, a);
	}
	__m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
	h = _mm_max_ps(h, _mm_movehl_ps(h, h));
	h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
	const float amax = _mm_cvtss_f32(h);
	if (amax == 0.0f) { /* every cell is zero: every tile scores 0, the first wins */
		*score = 0;
		return 0;
	}
	if (!(amax >= 0x1p-100f && amax < 0x1p100f)) {
		int best = nmp_tile_best(pats, n_pat, 4, wd);
		*score = nmp_tile_score(pats[best], 4, wd);
		return best;
	}
	const __m256 thr = _mm256_set1_ps(amax - amax * 0x1p-19f);
	uint64_t cand[2] = { 0, 0 }; /* tile p is bit p % 64 of cand[p / 64] */
	for (int v = 0; v < n_vec; v++)
		cand[v >> 3] |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_cmp_ps(A[v], thr, _CMP_GE_OQ)) << (8 * (v & 7));
	if (n_pat < 64)
		cand[0] &= (1ull << n_pat) - 1;
	else
		cand[1] &= (1ull << (n_pat - 64)) - 1;
	int best = 0;
	double best_s = -1;
	for (int h = 0; h < 2; h++)
		for (uint64_t bits = cand[h]; bits; bits &= bits - 1) {
			const int p = 64 * h + __builtin_ctzll(bits);
			const double s = nmp_tile_score(pats[p], 4, wd);
			if (s > best_s) {
				best_s = s;
				best = p;
			}
		}
	*score = best_s;
	return best;
}

/* Mask bytes of four adjacent cells: byte r is bit r of the index. */
static const uint32_t tile4_spread[16] = {
	0x00000000, 0x00000001, 0x00000100, 0x00000101, 0x00010000, 0x00010001, 0x00010100, 0x00010101,
	0x01000000, 0x01000001, 0x01000100, 0x01000101, 0x01010000, 0x01010001, 0x01010100, 0x01010101,
};

/* How a tile's cells lie: apart, or four adjacent elements to a column or to a row. */
typedef enum tile4_lie { TILE4_APART, TILE4_COLUMNS, TILE4_ROWS } tile4_lie;

/*
 * Marks tile `best` in the mask and zeroes a float weight's pruned cells
 * (either may be NULL); where a column's or a row's four cells are adjacent
 * elements, each is written at once.
 */
static inline __attribute__((always_inline)) void tile4_write(uint8_t *mask, uint8_t *zero, const uint64_t *ro,
							      uint64_t c0, uint64_t inner, unsigned best, tile4_lie lie,
							      int kind)
{
	if (lie == TILE4_ROWS) {
		for (int r = 0; r < 4; r++) {
			const unsigned nib = best >> (4 * r) & 15;
			if (mask)
				memcpy(mask + ro[r] + c0, &tile4_spread[nib], 4);
			if (zero)
				nmp_cpu_zero4_unless(zero, ro[r] + c0, nib, kind);
		}
		return;
	}
	if (lie == TILE4_COLUMNS) {
		for (int c = 0; c < 4; c++) {
			const unsigned nib = (best >> c & 1) | (best >> (c + 3) & 2) | (best >> (c + 6) & 4) |
					     (best >> (c + 9) & 8);
			const uint64_t at = ro[0] + c0 + (uint64_t)c * inner;
			if (mask)
				memcpy(mask + at, &tile4_spread[nib], 4);
			if (zero)
				nmp_cpu_zero4_unless(zero, at, nib, kind);
		}
		return;
	}
	for (int r = 0; r < 4; r++)
		for (int c = 0; c < 4; c++) {
			const uint64_t at = ro[r] + c0 + (uint64_t)c * inner;
			if (mask)
				mask[at] = best >> (4 * r + c) & 1;
			if (zero)
				nmp_cpu_zero_unless(zero, at, best >> (4 * r + c) & 1, kind);
		}
}

/* Are the 32 rows from ro on adjacent elements (eight tiles side by side)? */
static inline bool tile8_adjacent(const uint64_t *ro)
{
	for (int k = 0; k < 31; k++)
		if (ro[k + 1] != ro[k] + 1)
			return false;
	return true;
}

/*
 * Eight exact 2:4 tiles side by side: their 32 rows adjacent elements (a
 * MatMul's B, tiles along its rows; `start` holds where each of the four
 * columns starts), or their rows runs of four adjacent elements, the eight
 * tiles one after another along the rows (a Gemm's transposed B; `start` holds
 * where each of the four rows starts).  A vector holds one cell of the eight
 * tiles (lane l: tile tile8_lane[l]), so the 90 tile sums are additions,
 * not permutations: the two cells of each row choice, then rows 0 and 1
 * and rows 2 and 3, then the halves, within 3 fp32 roundings of the exact
 * sum, so tile4_best_avx2's bound holds.  The largest two of the 90 sums
 * come from the classes of tile4_classes, not from each sum.  A tile whose
 * largest sum is the only one above that bound's threshold keeps it (a
 * second near one sends the tile to tile4_best_avx2, as does a largest sum
 * out of range, so which of equal sums is taken never matters); its exact score is
 * the kept cells' magnitudes in double, summed in row-major order as
 * nmp_tile_score sums them.  Returns the eight tiles' patterns and scores in
 * tile order, and does the reference bin's work on their keys.
 */
static const int tile8_lane[8] = { 0, 2, 4, 6, 1, 3, 5, 7 };

static const int tile8_in_order[8] = { 0, 1, 2, 3, 4, 5, 6, 7 };

/*
 * The largest of k halves' sums X[idx[i]], *second the second largest, and
 * *bits the largest's nibbles shifted to its rows (either of equal ones).
 */
NMP_CPU_SIMD_INLINE __m256 tile4_largest(const __m256 *X, const uint8_t *idx, int k, const int32_t *half, int shift,
					 __m256 *second, __m256i *bits)
{
	__m256 v1 = X[idx[0]], v2 = _mm256_set1_ps(-INFINITY);
	__m256i b = _mm256_set1_epi32(half[idx[0]] << shift);
	for (int i = 1; i < k; i++) {
		const __m256 v = X[idx[i]];
		v2 = _mm256_max_ps(v2, _mm256_min_ps(v1, v));
		b = _mm256_blendv_epi8(b, _mm256_set1_epi32(half[idx[i]] << shift),
				       _mm256_castps_si256(_mm256_cmp_ps(v, v1, _CMP_GT_OQ)));
		v1 = _mm256_max_ps(v1, v);
	}
	*second = v2;
	*bits = b;
	return v1;
}

/* Folds a class's largest sum `first` (pattern `bits`) and its second into the tiles' largest two so far. */
NMP_CPU_SIMD_INLINE void tile4_fold(__m256 first, __m256 second, __m256i bits, __m256 *m1, __m256 *m2, __m256i *at)
{
	*m2 = _mm256_max_ps(*m2, _mm256_max_ps(second, _mm256_min_ps(*m1, first)));
	*at = _mm256_blendv_epi8(*at, bits, _mm256_castps_si256(_mm256_cmp_ps(first, *m1, _CMP_GT_OQ)));
	*m1 = _mm256_max_ps(*m1, first);
}

/* A class of k tops and k bottoms: its largest sum is the largest top's plus the largest bottom's. */
NMP_CPU_SIMD_INLINE void tile4_fold_class(
	const __m256 *T, const __m256 *U, const uint8_t *tops, const uint8_t *bots, int k, const int32_t *half,
	__m256 *m1, __m256 *m2, __m256i *at)
{
	__m256 t2, u2;
	__m256i tb, ub;
	const __m256 t1 = tile4_largest(T, tops, k, half, 0, &t2, &tb);
	const __m256 u1 = tile4_largest(U, bots, k, half, 8, &u2, &ub);
	tile4_fold(_mm256_add_ps(t1, u1), _mm256_max_ps(_mm256_add_ps(t1, u2), _mm256_add_ps(t2, u1)),
		   _mm256_or_si256(tb, ub), m1, m2, at);
}

/*
 * The choice of eight tiles from their cells' magnitudes: C[4r + c] holds
 * cell (r, c) of the eight tiles, lane l of tile lane_tile[l].
 */
NMP_CPU_SIMD_INLINE void tiles8_decide(
	const tile4_tables *tb, const uint16_t *pats, int n_pat, const __m256 C[16], const int lane_tile[8],
	unsigned best[8], double score[8])
{
	static const int ci[6] = { 0, 0, 1, 0, 1, 2 }, cj[6] = { 1, 2, 2, 3, 3, 3 }; /* row choice q: its cells */
	__m256 R[4][6], T[36], U[36];
	for (int r = 0; r < 4; r++)
		for (int q = 0; q < 6; q++)
			R[r][q] = _mm256_add_ps(C[4 * r + ci[q]], C[4 * r + cj[q]]);
	for (int x = 0; x < 6; x++)
		for (int y = 0; y < 6; y++) {
			T[6 * x + y] = _mm256_add_ps(R[0][x], R[1][y]);
			U[6 * x + y] = _mm256_add_ps(R[2][x], R[3][y]);
		}
	/* The classes' largest and second largest sums, folded into the tiles' (see tile4_classes). */
	const tile4_classes *cl = &tb->cls;
	const __m256 none = _mm256_set1_ps(-INFINITY);
	__m256 m1 = _mm256_set1_ps(-1.0f), m2 = m1;
	__m256i at = _mm256_setzero_si256(); /* the largest's pattern */
	for (int k = 0; k < 6; k++)
		tile4_fold(_mm256_add_ps(T[cl->one[k][0]], U[cl->one[k][1]]), none,
			   _mm256_set1_epi32(cl->half[cl->one[k][0]] | cl->half[cl->one[k][1]] << 8), &m1, &m2, &at);
	for (int k = 0; k < 12; k++)
		tile4_fold_class(T, U, cl->two[k], cl->two[k] + 2, 2, cl->half, &m1, &m2, &at);
	tile4_fold_class(T, U, cl->six[0], cl->six[1], 6, cl->half, &m1, &m2, &at);
	const __m256 thr = _mm256_sub_ps(m1, _mm256_mul_ps(m1, _mm256_set1_ps(0x1p-19f)));
	const __m256 alone = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(m1, _mm256_set1_ps(0x1p-100f), _CMP_GE_OQ),
							 _mm256_cmp_ps(m1, _mm256_set1_ps(0x1p100f), _CMP_LT_OQ)),
					   _mm256_cmp_ps(m2, thr, _CMP_LT_OQ));
	int32_t bits[8];
	_mm256_storeu_si256((__m256i *)(void *)bits, at); /* the fallback below rewrites some lanes */
	const __m256i pat = at;
	__m256d s_lo = _mm256_setzero_pd(), s_hi = _mm256_setzero_pd();
	for (int i = 0; i < 16; i++) {
		const __m256i bit = _mm256_set1_epi32(1 << i);
		const __m256 kc = _mm256_and_ps(C[i], _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(pat, bit), bit)));
		s_lo = _mm256_add_pd(s_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(kc)));
		s_hi = _mm256_add_pd(s_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(kc, 1)));
	}
	double sc[8];
	_mm256_storeu_pd(sc, s_lo);
	_mm256_storeu_pd(sc + 4, s_hi);
	unsigned rest = ~(unsigned)_mm256_movemask_ps(alone) & 0xff;
	float cell[16][8];
	if (rest)
		for (int i = 0; i < 16; i++)
			_mm256_storeu_ps(cell[i], C[i]);
	for (; rest; rest &= rest - 1) { /* ties and near ties, zeros, extremes: the filter of one tile */
		const int l = __builtin_ctz(rest);
		__m128 rows[4];
		double wd[16];
		for (int r = 0; r < 4; r++)
			rows[r] = _mm_setr_ps(cell[4 * r][l], cell[4 * r + 1][l], cell[4 * r + 2][l], cell[4 * r + 3][l]);
		for (int i = 0; i < 16; i++)
			wd[i] = cell[i][l];
		bits[l] = pats[tile4_best_avx2(tb, pats, n_pat, 2, rows, wd, &sc[l])];
	}
	for (int l = 0; l < 8; l++) {
		best[lane_tile[l]] = (unsigned)bits[l];
		score[lane_tile[l]] = sc[l];
	}
}

NMP_CPU_SIMD_INLINE void tiles8_choose(
	const tile4_tables *tb, const uint16_t *pats, int n_pat, const uint8_t *in, const uint64_t start[4], bool rows,
	int kind, __m256i cut, __m256d above[2], nmp_cpu_cut *in_bin, unsigned best[8], double score[8])
{
	const int sh = nmp_cpu_ref_shift(kind);
	__m256 C[16]; /* cell 4r + c of the eight tiles */
	for (int v = 0; v < 4; v++) { /* column v, or row v */
		__m256 l[4]; /* l[q]: the four cells of tile 2q, then of tile 2q + 1 */
		for (int q = 0; q < 4; q++) {
			const __m256i k = nmp_cpu_key8(in, start[v] + 8 * (uint64_t)q, kind);
			l[q] = nmp_cpu_mag8(k, kind);
			nmp_cpu_ref8(k, l[q], cut, sh, above, in_bin);
		}
		const __m256 a = _mm256_unpacklo_ps(l[0], l[1]), b = _mm256_unpackhi_ps(l[0], l[1]);
		const __m256 d = _mm256_unpacklo_ps(l[2], l[3]), f = _mm256_unpackhi_ps(l[2], l[3]);
		const __m256 x[4] = { _mm256_shuffle_ps(a, d, 0x44), _mm256_shuffle_ps(a, d, 0xee),
				      _mm256_shuffle_ps(b, f, 0x44), _mm256_shuffle_ps(b, f, 0xee) }; /* cell x of each */
		for (int i = 0; i < 4; i++)
			C[rows ? 4 * v + i : 4 * i + v] = x[i];
	}
	tiles8_decide(tb, pats, n_pat, C, tile8_lane, best, score);
}

/*
 * Eight exact 2:4 tiles whose cells lie side by side element by element:
 * cell i of tile l at at[i] + l (a Conv's tiles at eight adjacent kernel
 * positions).  A vector holds one cell of the eight tiles as it is stored.
 */
NMP_CPU_SIMD_INLINE void tiles8_choose_cells(
	const tile4_tables *tb, const uint16_t *pats, int n_pat, const uint8_t *in, const uint64_t at[16], int kind,
	__m256i cut, __m256d above[2], nmp_cpu_cut *in_bin, unsigned best[8], double score[8])
{
	const int sh = nmp_cpu_ref_shift(kind);
	__m256 C[16];
	for (int i = 0; i < 16; i++) {
		const __m256i k = nmp_cpu_key8(in, at[i], kind);
		C[i] = nmp_cpu_mag8(k, kind);
		nmp_cpu_ref8(k, C[i], cut, sh, above, in_bin);
	}
	tiles8_decide(tb, pats, n_pat, C, tile8_in_order, best, score);
}

/* Marks the eight tiles of tiles8_choose_cells, and zeroes a float weight's pruned cells, a cell at a time. */
NMP_CPU_SIMD_INLINE void tiles8_write_cells(
	uint8_t *mask, uint8_t *zero, const uint64_t at[16], const unsigned best[8], int kind)
{
	const __m256i pat = _mm256_loadu_si256((const __m256i *)(const void *)best); /* lane l: tile l's pattern */
	for (int i = 0; i < 16; i++) {
		const __m256i bit = _mm256_set1_epi32(1 << i);
		nmp_cpu_keep8(mask, zero, zero, at[i], _mm256_cmpeq_epi32(_mm256_and_si256(pat, bit), bit), kind);
	}
}

/*
 * Exact 4 x 4 tiles of 32-bit keys, in one pass: choose, mark (or zero a
 * float weight's pruned cells once read), and sum the magnitude above the
 * reference bin, gathering the keys in it.
 */
NMP_CPU_SIMD_INLINE void tiles4_run(nmp_cpu_job *j, uint64_t b, uint64_t e, nmp_cpu_acc *acc, const tile4_tables *tb,
				    const uint16_t *pats, int n_pat, int n, int kind)
{
	/* Locals, not the job's fields: the mask's byte stores may alias anything. */
	const uint64_t groups = j->L / 4, rblocks = j->rows / 4, inner = j->inner;
	const uint64_t *row_off = j->row_off;
	uint8_t *mask = j->mask, *zero = j->zero;
	const uint8_t *in = j->in;
	const uint32_t *qkey = j->qkey;
	const bool rows_fast = nmp_cpu_rows_fast(j);
	const int sh = nmp_cpu_ref_shift(kind), mk = kind == NMP_CK_Q ? NMP_CK_F32 : kind;
	const __m256i cut = _mm256_set1_epi32((int)j->ref_bin);
	__m256d above[2] = { _mm256_setzero_pd(), _mm256_setzero_pd() };
	double wd[16], kept = 0;
	/*
	 * A tile whose four rows are adjacent elements is read and marked a
	 * column at a time; one whose columns are (the group axis innermost),
	 * a row at a time, and its tiles follow one another along the rows.
	 */
	const bool runs = kind == NMP_CK_F32 || kind == NMP_CK_F16;
	const bool by_row = runs && inner == 1 && !rows_fast;
	/* A Conv's tiles, position fastest, eight at adjacent positions read and marked a cell at a time. */
	uint64_t per;
	const uint64_t positions = runs && n == 2 ? nmp_cpu_positions(j, 4, &per) : 0;
	for (uint64_t it = b; it < e; it++) {
		uint64_t rb = rows_fast ? it % rblocks : it / groups, g = rows_fast ? it / rblocks : it % groups, p = 0;
		if (positions)
			p = nmp_cpu_item_at(it, positions, groups, per / 4, &rb, &g);
		const uint64_t c0 = g * 4 * inner;
		const uint64_t *ro = row_off + rb * 4;
		if (positions && p + 8 <= positions && it + 8 <= e && nmp_cpu_side_by_side8(row_off, rb * 4, 4, per)) {
			unsigned best8[8];
			double score8[8];
			uint64_t at[16];
			for (int i = 0; i < 16; i++)
				at[i] = ro[i / 4] + c0 + (uint64_t)(i % 4) * inner;
			tiles8_choose_cells(tb, pats, n_pat, in, at, kind, cut, above, &acc->cut, best8, score8);
			tiles8_write_cells(mask, zero, at, best8, mk);
			for (int t = 0; t < 8; t++)
				kept += score8[t];
			it += 7;
			continue;
		}
		const bool eight_by_column = rows_fast && rb + 8 <= rblocks && tile8_adjacent(ro);
		const bool eight_by_row = by_row && g + 8 <= groups;
		if (n == 2 && runs && it + 8 <= e && (eight_by_column || eight_by_row)) {
			unsigned best8[8];
			double score8[8];
			uint64_t at[4];
			for (int v = 0; v < 4; v++)
				at[v] = eight_by_row ? ro[v] + c0 : ro[0] + c0 + (uint64_t)v * inner;
			tiles8_choose(tb, pats, n_pat, in, at, eight_by_row, kind, cut, above, &acc->cut, best8, score8);
			for (int t = 0; t < 8; t++) {
				if (eight_by_row)
					tile4_write(mask, zero, ro, c0 + 4 * (uint64_t)t, inner, best8[t], TILE4_ROWS, mk);
				else
					tile4_write(mask, zero, ro + 4 * t, c0, inner, best8[t], TILE4_COLUMNS, mk);
				kept += score8[t];
			}
			it += 7;
			continue;
		}
		const bool columns = runs && ro[3] - ro[0] == 3; /* offsets rise, so the rows are adjacent */
		__m256i k01, k23;
		if (by_row) {
			k01 = _mm256_set_m128i(nmp_cpu_key4(in, ro[1] + c0, kind), nmp_cpu_key4(in, ro[0] + c0, kind));
			k23 = _mm256_set_m128i(nmp_cpu_key4(in, ro[3] + c0, kind), nmp_cpu_key4(in, ro[2] + c0, kind));
		} else if (columns) {
			__m128 col[4]; /* lane r of col[c]: the key of cell (r, c) */
			for (int c = 0; c < 4; c++)
				col[c] = _mm_castsi128_ps(nmp_cpu_key4(in, ro[0] + c0 + (uint64_t)c * inner, kind));
			_MM_TRANSPOSE4_PS(col[0], col[1], col[2], col[3]);
			k01 = _mm256_castps_si256(_mm256_set_m128(col[1], col[0]));
			k23 = _mm256_castps_si256(_mm256_set_m128(col[3], col[2]));
		} else {
			uint32_t key[16];
			for (int r = 0; r < 4; r++) {
				const uint64_t row = ro[r] + c0;
				for (int c = 0; c < 4; c++)
					key[4 * r + c] = nmp_cpu_key32_at(in, qkey, row + (uint64_t)c * inner, kind);
			}
			k01 = _mm256_loadu_si256((const __m256i *)(const void *)key);
			k23 = _mm256_loadu_si256((const __m256i *)(const void *)(key + 8));
		}
		const __m256 m01 = nmp_cpu_mag8(k01, mk), m23 = nmp_cpu_mag8(k23, mk);
		const __m128 rows[4] = { _mm256_castps256_ps128(m01), _mm256_extractf128_ps(m01, 1),
					 _mm256_castps256_ps128(m23), _mm256_extractf128_ps(m23, 1) };
		for (int r = 0; r < 4; r++)
			_mm256_storeu_pd(wd + 4 * r, _mm256_cvtps_pd(rows[r]));
		double score;
		const unsigned best = pats[tile4_best_avx2(tb, pats, n_pat, n, rows, wd, &score)];
		tile4_write(mask, zero, ro, c0, inner, best, by_row ? TILE4_ROWS : columns ? TILE4_COLUMNS : TILE4_APART, mk);
		kept += score;

		/* The reference: magnitudes above the cut bin, and the rare keys inside it. */
		nmp_cpu_ref8(k01, m01, cut, sh, above, &acc->cut);
		nmp_cpu_ref8(k23, m23, cut, sh, above, &acc->cut);
	}
	double lanes[8];
	_mm256_storeu_pd(lanes, above[0]);
	_mm256_storeu_pd(lanes + 4, above[1]);
	for (int w = 0; w < 8; w++)
		acc->above += lanes[w];
	acc->kept += (e - b) * 4 * (uint64_t)n;
	acc->l1_kept += kept;
}

NMP_CPU_SIMD static void tiles4_avx2(nmp_cpu_job *j, uint64_t b, uint64_t e, nmp_cpu_acc *acc, const uint16_t *pats,
				     int n_pat)
{
	tile4_tables tb;
	tile4_build((int)j->p->n, pats, n_pat, &tb);
	const int kind = nmp_cpu_kind32(j);
	/* Specialized for the common cases (constant kind and N); the rest run the same code generically. */
	if (kind == NMP_CK_F32 && j->p->n == 2)
		tiles4_run(j, b, e, acc, &tb, pats, n_pat, 2, NMP_CK_F32);
	else if (kind == NMP_CK_F16 && j->p->n == 2)
		tiles4_run(j, b, e, acc, &tb, pats, n_pat, 2, NMP_CK_F16);
	else if (kind == NMP_CK_F32)
		tiles4_run(j, b, e, acc, &tb, pats, n_pat, (int)j->p->n, NMP_CK_F32);
	else if (kind == NMP_CK_F16)
		tiles4_run(j, b, e, acc, &tb, pats, n_pat, (int)j->p->n, NMP_CK_F16);
	else if (kind == NMP_CK_BF16)
		tiles4_run(j, b, e, acc, &tb, pats, n_pat, (int)j->p->n, NMP_CK_BF16);
	else
		tiles4_run(j, b, e, acc, &tb, pats, n_pat, (int)j->p->n, NMP_CK_Q);
}
#endif

bool nmp_cpu_tiles_inline(const nmp_cpu_job *j)
{
#if defined(__x86_64__)
	return j->p->unit == NMP_UNIT_TILE && j->p->m == 4 && !j->p->greedy && j->kk != NMP_KK_F64 &&
	       nmp_cpu_have_avx2();
#else
	(void)j;
	return false;
#endif
}

void nmp_cpu_tiles_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	nmp_cpu_acc *acc = accp;
	const int m = (int)j->p->m, n = (int)j->p->n;
	const uint64_t groups = j->L / (uint64_t)m;
	int n_pat;
	const uint16_t *pats = tile_patterns + nmp_tile_table((unsigned)m, (unsigned)n, &n_pat);
#if defined(__x86_64__)
	if (nmp_cpu_tiles_inline(j)) {
		tiles4_avx2(j, b, e, acc, pats, n_pat);
		return;
	}
#endif
	double *w = malloc((size_t)(m * m) * sizeof *w);
	uint8_t *keep = malloc((size_t)(m * m));
	if (!w || !keep) {
		free(w);
		free(keep);
		acc->deficits += (e - b) * 2 * (uint64_t)m;
		return;
	}
	const uint64_t rblocks = j->rows / (uint64_t)m;
	const bool rows_fast = nmp_cpu_rows_fast(j);
	for (uint64_t it = b; it < e; it++) {
		const uint64_t rb = rows_fast ? it % rblocks : it / groups, g = rows_fast ? it / rblocks : it % groups;
		uint64_t r0 = rb * (uint64_t)m, c0 = g * (uint64_t)m;
		for (int r = 0; r < m; r++)
			for (int c = 0; c < m; c++)
				w[r * m + c] = nmp_key_mag(j->kk, nmp_cpu_elem_key(j, nmp_cpu_at(j, r0 + (uint64_t)r, c0 + (uint64_t)c)));
		if (j->p->greedy) {
			acc->deficits += (uint64_t)tile_greedy(m, n, w, keep);
		} else if (n_pat > 0) {
			uint16_t best = pats[nmp_tile_best(pats, n_pat, (unsigned)m, w)];
			for (int r = 0; r < m; r++)
				for (int c = 0; c < m; c++)
					keep[r * m + c] = best >> (4 * r + c) & 1;
		} else {
			tile_exact_flow(m, n, w, keep);
		}
		for (int r = 0; r < m; r++)
			for (int c = 0; c < m; c++)
				nmp_cpu_mark(j, nmp_cpu_at(j, r0 + (uint64_t)r, c0 + (uint64_t)c), keep[r * m + c], acc);
	}
	free(w);
	free(keep);
}
