/*
 * fused.c — element-wise N:M with M <= 32 on 32-bit keys (fp32, fp16, bf16,
 * quantized), in one pass that chooses, zeroes and gathers the statistics.
 *
 * Groups are processed in lane tiles of NMP_LANES groups side by side: each
 * element's rank is counted against the others of its group (or, for M
 * above 8, compared with the group's N-th largest key) with comparisons the
 * compiler vectorizes across lanes.  Floats take AVX2 paths chosen at run
 * time: eight adjacent groups at once where groups are strided, and where
 * they are contiguous, vectors rotated within groups of 2 or 4 or groups
 * transposed eight at a time (M a multiple of 8).  A first scan
 * finds NaNs, the dense L1 and a histogram of keys, which places the
 * unstructured reference's cut in one of the reference bins (reference.c);
 * the choosing pass sums what lies above that bin and keeps the few keys
 * inside it, which are selected exactly at the end.
 */
#include <stdlib.h>

#include "cpu.h"
#include "dtype.h"

#define NMP_LANES 16
#define FUSED_MAX_M NMP_CPU_FUSED_MAX_M

/*
 * The hot loops are written once and specialized per stored type by
 * always-inline helpers called with a constant kind; each specialization is
 * also cloned for AVX2, chosen at load time.
 */
#define HOT __attribute__((target_clones("avx2", "default")))
#define INLINE NMP_CPU_INLINE

/*
 * Groups of more than SORT_ABOVE elements are decided by a threshold rather
 * than by counting every pair: the group's keys, padded with -1 (below every
 * key) to a power of two, go through Batcher's odd-even merge sorting
 * network, largest first; the N-th largest key T is the threshold.  Keys
 * above T are kept, and of the keys equal to T the lowest-indexed ones until
 * the group has N, so the mask is the pair count's (ties to the lower
 * index).  32 elements take 191 comparators where the pairs are 496.
 */
#define SORT_ABOVE 8
#define SORT_MAX_PAIRS 191 /* the network for 32 */

typedef struct sort_net {
	int width, count;
	uint8_t a[SORT_MAX_PAIRS], b[SORT_MAX_PAIRS]; /* comparator c orders a[c] before b[c] */
} sort_net;

/* The odd-even merge sorting network for the smallest power of two >= m (m <= 32). */
static void sort_net_build(int m, sort_net *net)
{
	int width = 1;
	while (width < m)
		width *= 2;
	net->width = width;
	net->count = 0;
	for (int p = 1; p < width; p *= 2)         /* merge sorted runs of p into runs of 2p */
		for (int d = p; d >= 1; d /= 2)    /* compare at distance d */
			for (int lo = d % p; lo + d < width; lo += 2 * d)
				for (int i = lo; i < lo + d && i + d < width; i++)
					if (i / (2 * p) == (i + d) / (2 * p)) {
						net->a[net->count] = (uint8_t)i;
						net->b[net->count++] = (uint8_t)(i + d);
					}
}

typedef struct nm_acc {
	double kept_lane[NMP_LANES];  /* kept magnitude, per lane */
	double above_lane[NMP_LANES]; /* magnitude above the reference bin, per lane */
	nmp_cpu_cut cut;              /* keys in the reference bin */
} nm_acc;

/* keep[e][w]: 1 when fewer than N of lane w's keys outrank k[e][w], by counting the pairs. */
INLINE void keep_by_rank(int32_t k[][NMP_LANES], int m, int n, int32_t keep[][NMP_LANES])
{
	int32_t rank[FUSED_MAX_M][NMP_LANES];
	for (int e = 0; e < m; e++)
		for (int w = 0; w < NMP_LANES; w++)
			rank[e][w] = 0;
	for (int a = 0; a < m; a++)
		for (int b = a + 1; b < m; b++)
			for (int w = 0; w < NMP_LANES; w++) {
				int32_t ge = k[a][w] >= k[b][w];
				rank[b][w] += ge;
				rank[a][w] += 1 - ge;
			}
	for (int e = 0; e < m; e++)
		for (int w = 0; w < NMP_LANES; w++)
			keep[e][w] = rank[e][w] < n;
}

/* The same keep, by the N-th largest key of each lane (the sorting network above). */
INLINE void keep_by_threshold(int32_t k[][NMP_LANES], int m, int n, const sort_net *net, int32_t keep[][NMP_LANES])
{
	int32_t s[FUSED_MAX_M][NMP_LANES], t[NMP_LANES], need[NMP_LANES], seen[NMP_LANES];
	for (int e = 0; e < net->width; e++)
		for (int w = 0; w < NMP_LANES; w++)
			s[e][w] = e < m ? k[e][w] : -1;
	for (int c = 0; c < net->count; c++) {
		int32_t *x = s[net->a[c]], *y = s[net->b[c]];
		for (int w = 0; w < NMP_LANES; w++) {
			int32_t hi = x[w] > y[w] ? x[w] : y[w], lo = x[w] > y[w] ? y[w] : x[w];
			x[w] = hi;
			y[w] = lo;
		}
	}
	for (int w = 0; w < NMP_LANES; w++) {
		t[w] = s[n - 1][w];
		need[w] = n;
		seen[w] = 0;
	}
	for (int e = 0; e < m; e++)
		for (int w = 0; w < NMP_LANES; w++)
			need[w] -= k[e][w] > t[w];
	for (int e = 0; e < m; e++)
		for (int w = 0; w < NMP_LANES; w++) {
			int32_t eq = k[e][w] == t[w];
			keep[e][w] = (k[e][w] > t[w]) | (eq & (seen[w] < need[w]));
			seen[w] += eq;
		}
}

/*
 * One tile: NMP_LANES groups side by side, element e of lane w at
 * base + w * lane_step + e * elem_step.  Element e is kept when fewer than
 * N elements of its group outrank it (are larger, or equal at a lower
 * index): counted pair by pair for small M, by the threshold above for
 * larger.  Every array is 32-bit per lane and every inner loop runs over the
 * lanes, so the compiler turns each into a few vector instructions (keys are
 * below 2^31, so signed compares order them).
 */
INLINE void nm_tile(const nmp_cpu_job *j, const sort_net *net, uint64_t base, uint64_t lane_step,
		    uint64_t elem_step, int lanes, nm_acc *acc, int kind, bool full)
{
	const int m = (int)j->p->m, n = (int)j->p->n;
	const int32_t cut_bin = (int32_t)j->ref_bin;
	const int sh = nmp_cpu_ref_shift(kind);
	int32_t k[FUSED_MAX_M][NMP_LANES], keep[FUSED_MAX_M][NMP_LANES];
	double kept[NMP_LANES] = { 0 }, above[NMP_LANES] = { 0 };

	for (int e = 0; e < m; e++)
		for (int w = 0; w < NMP_LANES; w++)
			k[e][w] = (full || w < lanes)
				? (int32_t)nmp_cpu_key32(j, base + (uint64_t)w * lane_step + (uint64_t)e * elem_step, kind) : 0;
	if (m > SORT_ABOVE)
		keep_by_threshold(k, m, n, net, keep);
	else
		keep_by_rank(k, m, n, keep);
	for (int e = 0; e < m; e++) {
		int32_t in_cut = 0;
		for (int w = 0; w < NMP_LANES; w++) {
			float mg = nmp_cpu_mag32((uint32_t)k[e][w], kind);
			kept[w] += keep[e][w] ? (double)mg : 0.0;
			above[w] += (k[e][w] >> sh) > cut_bin ? (double)mg : 0.0;
			in_cut |= (k[e][w] >> sh) == cut_bin;
		}
		if (in_cut) /* rare: the keys in the bin where the unstructured cut falls */
			for (int w = 0; w < lanes; w++)
				if ((k[e][w] >> sh) == cut_bin)
					nmp_cpu_cut_push(&acc->cut, (uint32_t)k[e][w]);
	}
	for (int w = 0; w < NMP_LANES; w++) {
		acc->kept_lane[w] += kept[w];
		acc->above_lane[w] += above[w];
	}
	if (j->mask)
		for (int e = 0; e < m; e++)
			for (int w = 0; w < lanes; w++)
				j->mask[base + (uint64_t)w * lane_step + (uint64_t)e * elem_step] = (uint8_t)keep[e][w];
	if (j->mode != NMP_MASK_APPLY)
		return;
	const uint8_t *in = j->in;
	uint8_t *d = j->t->data;
	for (int e = 0; e < m; e++) {
		uint64_t row = base + (uint64_t)e * elem_step;
		if (kind == NMP_CK_F32) {
			for (int w = 0; w < (full ? NMP_LANES : lanes); w++) {
				uint32_t v;
				memcpy(&v, in + 4 * (row + (uint64_t)w * lane_step), 4);
				v = keep[e][w] ? v : 0;
				memcpy(d + 4 * (row + (uint64_t)w * lane_step), &v, 4);
			}
		} else if (kind == NMP_CK_F16 || kind == NMP_CK_BF16) {
			for (int w = 0; w < (full ? NMP_LANES : lanes); w++) {
				uint16_t v;
				memcpy(&v, in + 2 * (row + (uint64_t)w * lane_step), 2);
				v = keep[e][w] ? v : 0;
				memcpy(d + 2 * (row + (uint64_t)w * lane_step), &v, 2);
			}
		} else {
			for (int w = 0; w < lanes; w++)
				if (!keep[e][w])
					nmp_cpu_prune_elem(j, row + (uint64_t)w * lane_step);
		}
	}
}

#if defined(__x86_64__)
/*
 * The AVX2 paths for fp32, fp16 and bf16, eight groups or eight elements
 * to a vector.  Each decides a vector of eight adjacent elements (keys k,
 * keep mask keep) and hands it to emit8, which sums, marks and zeroes.
 */

/* A pass's per-lane sums, kept in registers across its vectors. */
typedef struct sums8 {
	__m256d kept[2], above[2];
} sums8;

NMP_CPU_SIMD_INLINE sums8 sums8_load(const nm_acc *acc)
{
	return (sums8){ { _mm256_loadu_pd(acc->kept_lane), _mm256_loadu_pd(acc->kept_lane + 4) },
			{ _mm256_loadu_pd(acc->above_lane), _mm256_loadu_pd(acc->above_lane + 4) } };
}

NMP_CPU_SIMD_INLINE void sums8_store(const sums8 *s, nm_acc *acc)
{
	_mm256_storeu_pd(acc->kept_lane, s->kept[0]);
	_mm256_storeu_pd(acc->kept_lane + 4, s->kept[1]);
	_mm256_storeu_pd(acc->above_lane, s->above[0]);
	_mm256_storeu_pd(acc->above_lane + 4, s->above[1]);
}

/* What emit8 needs of the job, read once per call of a pass (its stores could alias the job). */
typedef struct out8 {
	const uint8_t *in;
	uint8_t *data, *mask;
	bool apply;
	__m256i vcut;
} out8;

NMP_CPU_SIMD_INLINE out8 out8_of(const nmp_cpu_job *j)
{
	return (out8){ j->in, j->t->data, j->mask, j->mode == NMP_MASK_APPLY, _mm256_set1_epi32((int)j->ref_bin) };
}

/* Eight elements with keys k and keep mask keep: the kept magnitude, and the reference bin's work. */
NMP_CPU_SIMD_INLINE void sum8(const out8 *o, __m256i k, __m256i keep, sums8 *s, nm_acc *acc, int kind)
{
	const __m256 mg = nmp_cpu_mag8(k, kind);
	const __m256 kept_mg = _mm256_and_ps(mg, _mm256_castsi256_ps(keep));
	s->kept[0] = _mm256_add_pd(s->kept[0], _mm256_cvtps_pd(_mm256_castps256_ps128(kept_mg)));
	s->kept[1] = _mm256_add_pd(s->kept[1], _mm256_cvtps_pd(_mm256_extractf128_ps(kept_mg, 1)));
	nmp_cpu_ref8(k, mg, o->vcut, nmp_cpu_ref_shift(kind), s->above, &acc->cut);
}

/* Elements i .. i + 7 with keys k: their sums, their mask bytes and, under APPLY, the output. */
NMP_CPU_SIMD_INLINE void emit8(const out8 *o, uint64_t i, __m256i k, __m256i keep, sums8 *s, nm_acc *acc, int kind)
{
	sum8(o, k, keep, s, acc, kind);
	nmp_cpu_keep8(o->mask, o->apply ? o->data : NULL, o->in, i, keep, kind);
}

/* keep[e] for eight groups side by side, k[e] lane w being element e of group w (the rule of nm_tile). */
NMP_CPU_SIMD_INLINE void keep8(const __m256i *k, int m, int n, const sort_net *net, __m256i *keep)
{
	const __m256i vn = _mm256_set1_epi32(n), ones = _mm256_set1_epi32(-1);
	if (m > SORT_ABOVE) {
		__m256i s[FUSED_MAX_M], need = vn, seen = _mm256_setzero_si256();
		for (int e = 0; e < net->width; e++)
			s[e] = e < m ? k[e] : ones;
		for (int c = 0; c < net->count; c++) {
			const __m256i x = s[net->a[c]], y = s[net->b[c]];
			s[net->a[c]] = _mm256_max_epi32(x, y);
			s[net->b[c]] = _mm256_min_epi32(x, y);
		}
		const __m256i t = s[n - 1];
		for (int e = 0; e < m; e++)
			need = _mm256_add_epi32(need, _mm256_cmpgt_epi32(k[e], t));
		for (int e = 0; e < m; e++) {
			const __m256i eq = _mm256_cmpeq_epi32(k[e], t);
			keep[e] = _mm256_or_si256(_mm256_cmpgt_epi32(k[e], t),
						  _mm256_and_si256(eq, _mm256_cmpgt_epi32(need, seen)));
			seen = _mm256_sub_epi32(seen, eq);
		}
		return;
	}
	__m256i r[FUSED_MAX_M];
	for (int e = 0; e < m; e++)
		r[e] = _mm256_setzero_si256();
	for (int a = 0; a < m; a++)
		for (int b = a + 1; b < m; b++) {
			const __m256i lt = _mm256_cmpgt_epi32(k[b], k[a]); /* b outranks a */
			r[a] = _mm256_sub_epi32(r[a], lt);
			r[b] = _mm256_sub_epi32(r[b], _mm256_xor_si256(lt, ones));
		}
	for (int e = 0; e < m; e++)
		keep[e] = _mm256_cmpgt_epi32(vn, r[e]);
}

/* Strided groups: eight adjacent groups, element e of group w at base + w + e * elem_step. */
NMP_CPU_SIMD static void nm_strided8(const nmp_cpu_job *j, const sort_net *net, uint64_t base, uint64_t elem_step,
				     nm_acc *acc, int kind)
{
	const int m = (int)j->p->m;
	const out8 o = out8_of(j);
	__m256i k[FUSED_MAX_M], keep[FUSED_MAX_M];
	for (int e = 0; e < m; e++) {
		nmp_cpu_fetch_ahead(o.in, base + (uint64_t)e * elem_step, j->numel, kind);
		k[e] = nmp_cpu_key8(o.in, base + (uint64_t)e * elem_step, kind);
	}
	keep8(k, m, (int)j->p->n, net, keep);
	sums8 s = sums8_load(acc);
	for (int e = 0; e < m; e++)
		emit8(&o, base + (uint64_t)e * elem_step, k[e], keep[e], &s, acc, kind);
	sums8_store(&s, acc);
}

/*
 * Eight groups that lie apart, element e of group w at base + w * lane_step +
 * e * elem_step: the positions of a Conv's kernel window that are left over
 * when its area is not a multiple of eight (3x3: one in nine), eight
 * (outer, group) pairs side by side.  Keys are gathered into a vector and
 * the results scattered back.
 */
NMP_CPU_SIMD static void nm_gathered8(const nmp_cpu_job *j, const sort_net *net, uint64_t base, uint64_t lane_step,
				      uint64_t elem_step, nm_acc *acc, int kind)
{
	const int m = (int)j->p->m;
	const size_t eb = kind == NMP_CK_F32 ? 4 : 2;
	const out8 o = out8_of(j);
	__m256i k[FUSED_MAX_M], keep[FUSED_MAX_M];
	for (int e = 0; e < m; e++) {
		uint8_t lanes[8 * 4];
		for (int w = 0; w < 8; w++)
			memcpy(lanes + eb * (size_t)w, o.in + eb * (base + (uint64_t)w * lane_step + (uint64_t)e * elem_step), eb);
		k[e] = nmp_cpu_key8(lanes, 0, kind);
	}
	keep8(k, m, (int)j->p->n, net, keep);
	sums8 s = sums8_load(acc);
	for (int e = 0; e < m; e++) {
		sum8(&o, k[e], keep[e], &s, acc, kind);
		const unsigned kept = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(keep[e]));
		for (int w = 0; w < 8; w++) {
			const uint64_t i = base + (uint64_t)w * lane_step + (uint64_t)e * elem_step;
			const bool on = kept >> w & 1;
			if (o.mask)
				o.mask[i] = on;
			if (o.apply) { /* the element as read, or zero */
				uint32_t v = 0;
				if (on)
					memcpy(&v, o.in + eb * i, eb);
				memcpy(o.data + eb * i, &v, eb);
			}
		}
	}
	sums8_store(&s, acc);
}

/*
 * Contiguous groups of M = 2 or 4: a vector of eight keys holds 8 / M
 * whole groups, and each key is ranked against its group by rotating the
 * vector within every group M - 1 times.  After rotating by r, position x
 * of a group faces position (x + r) mod M, which outranks it when larger, or
 * equal and at a lower index (x + r >= M).  Returns the first group left.
 */
NMP_CPU_SIMD static uint64_t nm_rotated8(const nmp_cpu_job *j, uint64_t g, uint64_t end, nm_acc *acc, int kind)
{
	const int m = (int)j->p->m, per = 8 / m;
	const __m256i vn = _mm256_set1_epi32((int)j->p->n);
	const out8 o = out8_of(j);
	__m256i rot[3], wraps[3];
	for (int r = 1; r < m; r++) {
		int32_t idx[8], w[8];
		for (int x = 0; x < 8; x++) {
			idx[x] = x / m * m + (x % m + r) % m;
			w[x] = x % m + r >= m ? -1 : 0;
		}
		rot[r - 1] = _mm256_loadu_si256((const __m256i *)(const void *)idx);
		wraps[r - 1] = _mm256_loadu_si256((const __m256i *)(const void *)w);
	}
	sums8 s = sums8_load(acc);
	for (; g + (uint64_t)per <= end; g += (uint64_t)per) {
		const uint64_t i = g * (uint64_t)m;
		nmp_cpu_fetch_ahead(o.in, i, j->numel, kind);
		const __m256i k = nmp_cpu_key8(o.in, i, kind);
		__m256i rank = _mm256_setzero_si256();
		for (int r = 0; r < m - 1; r++) {
			const __m256i facing = _mm256_permutevar8x32_epi32(k, rot[r]);
			const __m256i beats = _mm256_or_si256(_mm256_cmpgt_epi32(facing, k),
							      _mm256_and_si256(_mm256_cmpeq_epi32(facing, k), wraps[r]));
			rank = _mm256_sub_epi32(rank, beats);
		}
		emit8(&o, i, k, _mm256_cmpgt_epi32(vn, rank), &s, acc, kind);
	}
	sums8_store(&s, acc);
	return g;
}

/* Transposes the 8 x 8 matrix of 32-bit lanes whose row x is v[x]. */
NMP_CPU_SIMD_INLINE void transpose8(__m256i v[8])
{
	__m256i a[8], b[8];
	for (int x = 0; x < 8; x += 2) {
		a[x] = _mm256_unpacklo_epi32(v[x], v[x + 1]);
		a[x + 1] = _mm256_unpackhi_epi32(v[x], v[x + 1]);
	}
	for (int x = 0; x < 8; x += 4) {
		b[x] = _mm256_unpacklo_epi64(a[x], a[x + 2]);
		b[x + 1] = _mm256_unpackhi_epi64(a[x], a[x + 2]);
		b[x + 2] = _mm256_unpacklo_epi64(a[x + 1], a[x + 3]);
		b[x + 3] = _mm256_unpackhi_epi64(a[x + 1], a[x + 3]);
	}
	for (int x = 0; x < 4; x++) {
		v[x] = _mm256_permute2x128_si256(b[x], b[x + 4], 0x20);
		v[x + 4] = _mm256_permute2x128_si256(b[x], b[x + 4], 0x31);
	}
}

/* Where block b (elements 8b .. 8b + 7) of group g + w starts, groups of m adjacent elements. */
static inline uint64_t block_at(uint64_t g, int w, int m, int b)
{
	return (g + (uint64_t)w) * (uint64_t)m + 8 * (uint64_t)b;
}

/*
 * Contiguous groups of M = 8, 16, 24 or 32: eight groups at a time, their keys
 * transposed by blocks of 8 x 8 so that a vector holds one element of each
 * group (the strided layout), decided there, and the keep masks transposed
 * back.  Returns the first group left.
 */
NMP_CPU_SIMD static uint64_t nm_transposed8(const nmp_cpu_job *j, const sort_net *net, uint64_t g, uint64_t end,
					    nm_acc *acc, int kind)
{
	const int m = (int)j->p->m, blocks = m / 8;
	const out8 o = out8_of(j);
	sums8 s = sums8_load(acc);
	for (; g + 8 <= end; g += 8) {
		__m256i mem[FUSED_MAX_M], k[FUSED_MAX_M], keep[FUSED_MAX_M]; /* mem[8b + w]: group w's block b */
		nmp_cpu_fetch_ahead_run(o.in, g * (uint64_t)m, 8 * (uint64_t)m, j->numel, kind);
		for (int b = 0; b < blocks; b++) {
			for (int w = 0; w < 8; w++)
				k[8 * b + w] = mem[8 * b + w] = nmp_cpu_key8(o.in, block_at(g, w, m, b), kind);
			transpose8(k + 8 * b);
		}
		keep8(k, m, (int)j->p->n, net, keep);
		for (int b = 0; b < blocks; b++) {
			transpose8(keep + 8 * b);
			for (int w = 0; w < 8; w++)
				emit8(&o, block_at(g, w, m, b), mem[8 * b + w], keep[8 * b + w], &s, acc, kind);
		}
	}
	sums8_store(&s, acc);
	return g;
}

#else
static void nm_strided8(const nmp_cpu_job *j, const sort_net *net, uint64_t base, uint64_t elem_step, nm_acc *acc,
			int kind)
{
	(void)j, (void)net, (void)base, (void)elem_step, (void)acc, (void)kind;
}

static void nm_gathered8(const nmp_cpu_job *j, const sort_net *net, uint64_t base, uint64_t lane_step,
			 uint64_t elem_step, nm_acc *acc, int kind)
{
	(void)j, (void)net, (void)base, (void)lane_step, (void)elem_step, (void)acc, (void)kind;
}

static uint64_t nm_rotated8(const nmp_cpu_job *j, uint64_t g, uint64_t end, nm_acc *acc, int kind)
{
	(void)j, (void)end, (void)acc, (void)kind;
	return g;
}

static uint64_t nm_transposed8(const nmp_cpu_job *j, const sort_net *net, uint64_t g, uint64_t end, nm_acc *acc,
			       int kind)
{
	(void)j, (void)net, (void)end, (void)acc, (void)kind;
	return g;
}
#endif

/*
 * Work item: one (outer, group) pair and all its inner positions; or, when
 * groups are contiguous (inner == 1), one group.  Item w's elements start at
 * w * M * inner.  Strided items take their inner positions a vector at a
 * time, and the positions left over (inner not a multiple of the vector)
 * are taken across items, a vector of items at a time.
 */
INLINE void nm_run(nmp_cpu_job *j, uint64_t b, uint64_t e, nm_acc *acc, int kind)
{
	const uint64_t m = j->p->m;
	sort_net net;
	if (m > SORT_ABOVE)
		sort_net_build((int)m, &net);
	const bool avx2 = kind != NMP_CK_Q && nmp_cpu_have_avx2();
	if (j->inner == 1) {
		uint64_t g = b;
		if (avx2 && m < 8 && 8 % m == 0)
			g = nm_rotated8(j, g, e, acc, kind);
		else if (avx2 && m % 8 == 0)
			g = nm_transposed8(j, &net, g, e, acc, kind);
		for (; g + NMP_LANES <= e; g += NMP_LANES)
			nm_tile(j, &net, g * m, m, 1, NMP_LANES, acc, kind, true);
		if (g < e)
			nm_tile(j, &net, g * m, m, 1, (int)(e - g), acc, kind, false);
		return;
	}
	const uint64_t inner = j->inner, item = m * inner, step = avx2 ? 8 : NMP_LANES, body = inner / step * step;
	for (uint64_t w = b; w < e; w++)
		for (uint64_t i = 0; i < body; i += step)
			if (avx2)
				nm_strided8(j, &net, w * item + i, inner, acc, kind);
			else
				nm_tile(j, &net, w * item + i, 1, inner, NMP_LANES, acc, kind, true);
	if (body == inner)
		return;
	uint64_t w = b;
	if (avx2)
		for (; w + 8 <= e; w += 8)
			for (uint64_t i = body; i < inner; i++)
				nm_gathered8(j, &net, w * item + i, item, inner, acc, kind);
	for (; w < e; w += NMP_LANES) {
		const int lanes = e - w < NMP_LANES ? (int)(e - w) : NMP_LANES;
		for (uint64_t i = body; i < inner; i++)
			nm_tile(j, &net, w * item + i, item, inner, lanes, acc, kind, lanes == NMP_LANES);
	}
}

HOT static void nm_f32(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a) { nm_run(j, b, e, a, NMP_CK_F32); }
HOT static void nm_f16(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a) { nm_run(j, b, e, a, NMP_CK_F16); }
HOT static void nm_bf16(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a) { nm_run(j, b, e, a, NMP_CK_BF16); }
HOT static void nm_q(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a) { nm_run(j, b, e, a, NMP_CK_Q); }

/*
 * The fused path: a scan (NaN, dense L1, keys per reference bin), then one
 * pass that chooses, zeroes, and sums the kept magnitude and the magnitude
 * above the bin where the unstructured cut falls; the keys in that bin are
 * few and selected exactly at the end.
 */
nmp_status nmp_cpu_fused(nmp_cpu_job *j, nmp_mask_stats *st)
{
	static void (*const passes[])(nmp_cpu_job *, uint64_t, uint64_t, void *) = { nm_f32, nm_f16, nm_bf16, nm_q };
	const int kind = nmp_cpu_kind32(j);
	const uint64_t m = j->p->m, n = j->p->n;
	uint64_t bins[NMP_CPU_REF_BINS], above;
	int parts;
	nmp_status s = nmp_cpu_scan32(j, st, bins);
	if (s != NMP_OK)
		return s;

	/* Every group keeps exactly N, so unstructured pruning would keep as many. */
	const uint64_t keep = j->numel / m * n;
	j->ref_bin = nmp_cpu_bin_from_top(bins, keep, &above);

	uint64_t work = j->inner == 1 ? j->numel / m : j->outer * (j->L / m);
	uint64_t per_item = j->inner == 1 ? m : m * j->inner;
	nm_acc *acc = nmp_cpu_parallel_for(j, work, (1u << 16) / per_item + 1, sizeof(nm_acc), &parts, passes[kind]);
	if (!acc)
		return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
	double ref = 0;
	bool oom = false;
	for (int i = 0; i < parts; i++) {
		for (int w = 0; w < NMP_LANES; w++) {
			st->l1_kept += acc[i].kept_lane[w];
			ref += acc[i].above_lane[w];
		}
		oom |= acc[i].cut.oom;
	}
	s = oom ? nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name)
		: nmp_cpu_ref_finish(j, &acc[0].cut, sizeof *acc, parts, keep - above, kind, &ref);
	for (int i = 0; i < parts; i++)
		free(acc[i].cut.key);
	free(acc);
	st->l1_unstructured = ref;
	st->kept = keep;
	st->groups = j->numel / m;
	return s;
}
