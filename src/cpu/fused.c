/*
 * fused.c — element-wise N:M with M <= 32 on 32-bit keys (fp32, fp16, bf16,
 * quantized), in one pass that chooses, zeroes and gathers the statistics.
 *
 * Groups are processed in lane tiles of NMP_LANES groups side by side: each
 * element's rank is counted against the others of its group with
 * comparisons the compiler vectorizes across lanes (and, for contiguous
 * lanes of floats, with AVX2 intrinsics chosen at run time).  A first scan
 * finds NaNs, the dense L1 and a histogram of keys, which places the
 * unstructured reference's cut in one of REF_BINS bins; the choosing pass
 * sums what lies above that bin and keeps the few keys inside it, which are
 * selected exactly at the end.
 */
#include <math.h>
#include <stdlib.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu.h"
#include "dtype.h"

#define NMP_LANES 16
#define FUSED_MAX_M NMP_CPU_FUSED_MAX_M

/*
 * The hot loops are written once and specialized per stored type by
 * always-inline helpers called with a constant kind; each specialization is
 * also cloned for AVX2, chosen at load time.
 */
enum { FK_F32, FK_F16, FK_BF16, FK_Q };

#define REF_BINS 4096
#define HOT __attribute__((target_clones("avx2", "default")))
#define INLINE static inline __attribute__((always_inline))

INLINE uint32_t fkey(const nmp_cpu_job *j, uint64_t i, int kind)
{
	const uint8_t *d = j->in;
	if (kind == FK_F32) {
		uint32_t b;
		memcpy(&b, d + 4 * i, 4);
		return b & 0x7fffffffu;
	}
	if (kind == FK_F16 || kind == FK_BF16) {
		uint16_t b;
		memcpy(&b, d + 2 * i, 2);
		return b & 0x7fffu;
	}
	return j->qkey[i];
}

INLINE float fmag(uint32_t key, int kind)
{
	if (kind == FK_F16)
		return nmp_f16_key_mag(key);
	return nmp_f32_of_bits(kind == FK_BF16 ? key << 16 : key);
}

/* Keys of 31 bits (fp32, quantized) or 15 bits (fp16, bf16) fall into REF_BINS bins. */
INLINE int ref_shift(int kind)
{
	return kind == FK_F16 || kind == FK_BF16 ? 3 : 19;
}

static int fused_kind(const nmp_cpu_job *j)
{
	switch (j->t->dtype) {
	case NMP_DT_FLOAT: return FK_F32;
	case NMP_DT_FLOAT16: return FK_F16;
	case NMP_DT_BFLOAT16: return FK_BF16;
	default: return FK_Q;
	}
}

/* The NaN scan of the fused path also counts keys per reference bin. */
typedef struct fscan_acc {
	double l1;
	uint64_t nan_at;
	uint32_t bins[2][REF_BINS]; /* alternating, so repeated bins do not stall on each other */
} fscan_acc;

INLINE void fscan(nmp_cpu_job *j, uint64_t b, uint64_t e, fscan_acc *acc, int kind)
{
	const uint32_t nan_above = kind == FK_F16 ? 0x7c00u : kind == FK_BF16 ? 0x7f80u : 0x7f800000u;
	const int sh = ref_shift(kind);
	double l1 = 0;
	for (uint64_t i = b; i < e; i++) {
		uint32_t k = fkey(j, i, kind);
		if (k > nan_above) {
			if (!acc->nan_at)
				acc->nan_at = i + 1;
			continue;
		}
		acc->bins[i & 1][k >> sh]++;
		l1 += fmag(k, kind);
	}
	acc->l1 = l1;
}

#if defined(__x86_64__)
/* The scan for fp32, fp16 and bf16 with AVX2: vector NaN test and sums, scalar counts. */
__attribute__((target("avx2"))) static void fscan_avx2(nmp_cpu_job *j, uint64_t b, uint64_t e, fscan_acc *acc, int kind)
{
	const uint8_t *d = j->in;
	const int sh = ref_shift(kind);
	const __m256i nan_above = _mm256_set1_epi32(kind == FK_F16 ? 0x7c00 : kind == FK_BF16 ? 0x7f80 : 0x7f800000);
	__m256d l1a = _mm256_setzero_pd(), l1b = _mm256_setzero_pd();
	uint64_t i = b;
	for (; i + 8 <= e; i += 8) {
		__m256i k;
		if (kind == FK_F32)
			k = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(d + 4 * i)),
					     _mm256_set1_epi32(0x7fffffff));
		else
			k = _mm256_and_si256(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(d + 2 * i))),
					     _mm256_set1_epi32(0x7fff));
		if (_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(k, nan_above)))) {
			fscan(j, i, i + 8, acc, kind); /* the scalar loop records the first NaN */
			if (acc->nan_at)
				return;
		}
		__m256 mg;
		if (kind == FK_F32) {
			mg = _mm256_castsi256_ps(k);
		} else if (kind == FK_BF16) {
			mg = _mm256_castsi256_ps(_mm256_slli_epi32(k, 16));
		} else {
			__m256 normal = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(0x1c000)), 13));
			__m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(k), _mm256_set1_ps(0x1p-24f));
			mg = _mm256_blendv_ps(sub, normal, _mm256_castsi256_ps(_mm256_cmpgt_epi32(k, _mm256_set1_epi32(0x3ff))));
			mg = _mm256_blendv_ps(mg, _mm256_set1_ps(INFINITY),
					      _mm256_castsi256_ps(_mm256_cmpgt_epi32(k, _mm256_set1_epi32(0x7bff))));
		}
		l1a = _mm256_add_pd(l1a, _mm256_cvtps_pd(_mm256_castps256_ps128(mg)));
		l1b = _mm256_add_pd(l1b, _mm256_cvtps_pd(_mm256_extractf128_ps(mg, 1)));
		int32_t bins[8];
		_mm256_storeu_si256((__m256i *)(void *)bins, _mm256_srai_epi32(k, sh));
		for (int w = 0; w < 8; w++)
			acc->bins[w & 1][bins[w]]++;
	}
	double lanes[8];
	_mm256_storeu_pd(lanes, l1a);
	_mm256_storeu_pd(lanes + 4, l1b);
	double tail_l1 = 0;
	if (i < e) {
		fscan(j, i, e, acc, kind);
		tail_l1 = acc->l1;
	}
	acc->l1 = tail_l1;
	for (int w = 0; w < 8; w++)
		acc->l1 += lanes[w];
}
#endif

static bool have_avx2(void);

static void fscan_any(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a, int kind)
{
#if defined(__x86_64__)
	if (kind != FK_Q && have_avx2()) {
		fscan_avx2(j, b, e, a, kind);
		return;
	}
#endif
	fscan(j, b, e, a, kind);
}

static void fscan_f32(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a) { fscan_any(j, b, e, a, FK_F32); }
static void fscan_f16(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a) { fscan_any(j, b, e, a, FK_F16); }
static void fscan_bf16(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a) { fscan_any(j, b, e, a, FK_BF16); }
static void fscan_q(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a) { fscan_any(j, b, e, a, FK_Q); }

typedef struct nm_acc {
	double kept_lane[NMP_LANES];  /* kept magnitude, per lane */
	double above_lane[NMP_LANES]; /* magnitude above the reference bin, per lane */
	uint32_t *cut;                /* keys in the reference bin */
	size_t n_cut, cap_cut;
	bool oom;
} nm_acc;

static void cut_push(nm_acc *acc, uint32_t k)
{
	if (acc->n_cut == acc->cap_cut) {
		size_t cap = acc->cap_cut ? 2 * acc->cap_cut : 1024;
		uint32_t *c = realloc(acc->cut, cap * sizeof *c);
		if (!c) {
			acc->oom = true;
			return;
		}
		acc->cut = c;
		acc->cap_cut = cap;
	}
	acc->cut[acc->n_cut++] = k;
}

/*
 * One tile: NMP_LANES groups side by side, element e of lane w at
 * base + w * lane_step + e * elem_step.  rank[e] counts the elements of its
 * group that outrank e (larger, or equal at a lower index); e is kept when
 * fewer than N do.  Every array is 32-bit per lane and every inner loop runs
 * over the lanes, so the compiler turns each into a few vector instructions
 * (keys are below 2^31, so signed compares order them).
 */
INLINE void nm_tile(const nmp_cpu_job *j, uint64_t base, uint64_t lane_step, uint64_t elem_step, int lanes,
		    nm_acc *acc, int kind, bool full)
{
	const int m = (int)j->p->m, n = (int)j->p->n;
	const int32_t cut_bin = (int32_t)j->ref_bin;
	const int sh = ref_shift(kind);
	int32_t k[FUSED_MAX_M][NMP_LANES], rank[FUSED_MAX_M][NMP_LANES];
	double kept[NMP_LANES] = { 0 }, above[NMP_LANES] = { 0 };

	for (int e = 0; e < m; e++)
		for (int w = 0; w < NMP_LANES; w++)
			k[e][w] = (full || w < lanes)
				? (int32_t)fkey(j, base + (uint64_t)w * lane_step + (uint64_t)e * elem_step, kind) : 0;
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
	for (int e = 0; e < m; e++) {
		int32_t in_cut = 0;
		for (int w = 0; w < NMP_LANES; w++) {
			float mg = fmag((uint32_t)k[e][w], kind);
			kept[w] += rank[e][w] < n ? (double)mg : 0.0;
			above[w] += (k[e][w] >> sh) > cut_bin ? (double)mg : 0.0;
			in_cut |= (k[e][w] >> sh) == cut_bin;
		}
		if (in_cut) /* rare: the keys in the bin where the unstructured cut falls */
			for (int w = 0; w < lanes; w++)
				if ((k[e][w] >> sh) == cut_bin)
					cut_push(acc, (uint32_t)k[e][w]);
	}
	for (int w = 0; w < NMP_LANES; w++) {
		acc->kept_lane[w] += kept[w];
		acc->above_lane[w] += above[w];
	}
	if (j->mask)
		for (int e = 0; e < m; e++)
			for (int w = 0; w < lanes; w++)
				j->mask[base + (uint64_t)w * lane_step + (uint64_t)e * elem_step] = rank[e][w] < n;
	if (j->mode != NMP_MASK_APPLY)
		return;
	const uint8_t *in = j->in;
	uint8_t *d = j->t->data;
	for (int e = 0; e < m; e++) {
		uint64_t row = base + (uint64_t)e * elem_step;
		if (kind == FK_F32) {
			for (int w = 0; w < (full ? NMP_LANES : lanes); w++) {
				uint32_t v;
				memcpy(&v, in + 4 * (row + (uint64_t)w * lane_step), 4);
				v = rank[e][w] < n ? v : 0;
				memcpy(d + 4 * (row + (uint64_t)w * lane_step), &v, 4);
			}
		} else if (kind == FK_F16 || kind == FK_BF16) {
			for (int w = 0; w < (full ? NMP_LANES : lanes); w++) {
				uint16_t v;
				memcpy(&v, in + 2 * (row + (uint64_t)w * lane_step), 2);
				v = rank[e][w] < n ? v : 0;
				memcpy(d + 2 * (row + (uint64_t)w * lane_step), &v, 2);
			}
		} else {
			for (int w = 0; w < lanes; w++)
				if (rank[e][w] >= n)
					nmp_cpu_prune_elem(j, row + (uint64_t)w * lane_step);
		}
	}
}

#if defined(__x86_64__)
/*
 * The same tile for eight contiguous lanes of fp32, fp16 or bf16, written
 * with AVX2 intrinsics: element e of lane w at base + w + e * elem_step.
 */
__attribute__((target("avx2"))) static void nm_tile8_avx2(const nmp_cpu_job *j, uint64_t base, uint64_t elem_step,
							  nm_acc *acc, int kind)
{
	const int m = (int)j->p->m;
	const __m256i vn = _mm256_set1_epi32((int)j->p->n), ones = _mm256_set1_epi32(-1);
	const __m256i vcut = _mm256_set1_epi32((int)j->ref_bin);
	const int sh = ref_shift(kind);
	__m256i k[FUSED_MAX_M], r[FUSED_MAX_M];
	const uint8_t *in = j->in;
	uint8_t *d = j->t->data;

	for (int e = 0; e < m; e++) {
		uint64_t i = base + (uint64_t)e * elem_step;
		if (kind == FK_F32) {
			k[e] = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(in + 4 * i)),
						_mm256_set1_epi32(0x7fffffff));
		} else {
			__m128i h = _mm_loadu_si128((const __m128i *)(const void *)(in + 2 * i));
			k[e] = _mm256_and_si256(_mm256_cvtepu16_epi32(h), _mm256_set1_epi32(0x7fff));
		}
		r[e] = _mm256_setzero_si256();
	}
	for (int a = 0; a < m; a++)
		for (int b = a + 1; b < m; b++) {
			__m256i lt = _mm256_cmpgt_epi32(k[b], k[a]);      /* b outranks a */
			r[a] = _mm256_sub_epi32(r[a], lt);
			r[b] = _mm256_sub_epi32(r[b], _mm256_xor_si256(lt, ones));
		}
	__m256d kept0 = _mm256_loadu_pd(acc->kept_lane), kept1 = _mm256_loadu_pd(acc->kept_lane + 4);
	__m256d abv0 = _mm256_loadu_pd(acc->above_lane), abv1 = _mm256_loadu_pd(acc->above_lane + 4);
	for (int e = 0; e < m; e++) {
		__m256i keep = _mm256_cmpgt_epi32(vn, r[e]);
		__m256 mg;
		if (kind == FK_F32) {
			mg = _mm256_castsi256_ps(k[e]);
		} else if (kind == FK_BF16) {
			mg = _mm256_castsi256_ps(_mm256_slli_epi32(k[e], 16));
		} else {
			__m256 normal = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k[e], _mm256_set1_epi32(0x1c000)), 13));
			__m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(k[e]), _mm256_set1_ps(0x1p-24f));
			__m256i is_normal = _mm256_cmpgt_epi32(k[e], _mm256_set1_epi32(0x3ff));
			mg = _mm256_blendv_ps(sub, normal, _mm256_castsi256_ps(is_normal));
			__m256i is_inf = _mm256_cmpgt_epi32(k[e], _mm256_set1_epi32(0x7bff));
			mg = _mm256_blendv_ps(mg, _mm256_set1_ps(INFINITY), _mm256_castsi256_ps(is_inf));
		}
		__m256i bin = _mm256_srai_epi32(k[e], sh);
		__m256 kept_mg = _mm256_and_ps(mg, _mm256_castsi256_ps(keep));
		__m256 above_mg = _mm256_and_ps(mg, _mm256_castsi256_ps(_mm256_cmpgt_epi32(bin, vcut)));
		kept0 = _mm256_add_pd(kept0, _mm256_cvtps_pd(_mm256_castps256_ps128(kept_mg)));
		kept1 = _mm256_add_pd(kept1, _mm256_cvtps_pd(_mm256_extractf128_ps(kept_mg, 1)));
		abv0 = _mm256_add_pd(abv0, _mm256_cvtps_pd(_mm256_castps256_ps128(above_mg)));
		abv1 = _mm256_add_pd(abv1, _mm256_cvtps_pd(_mm256_extractf128_ps(above_mg, 1)));
		int in_cut = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(bin, vcut)));
		if (in_cut) {
			int32_t lanes[8];
			_mm256_storeu_si256((__m256i *)(void *)lanes, k[e]);
			for (int w = 0; w < 8; w++)
				if (in_cut >> w & 1)
					cut_push(acc, (uint32_t)lanes[w]);
		}
		uint64_t i = base + (uint64_t)e * elem_step;
		if (j->mask) {
			int km = _mm256_movemask_ps(_mm256_castsi256_ps(keep));
			for (int w = 0; w < 8; w++)
				j->mask[i + (uint64_t)w] = km >> w & 1;
		}
		if (j->mode != NMP_MASK_APPLY)
			continue;
		if (kind == FK_F32) {
			__m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(in + 4 * i));
			_mm256_storeu_si256((__m256i *)(void *)(d + 4 * i), _mm256_and_si256(v, keep));
		} else {
			__m128i keep16 = _mm_packs_epi32(_mm256_castsi256_si128(keep), _mm256_extracti128_si256(keep, 1));
			__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(in + 2 * i));
			_mm_storeu_si128((__m128i *)(void *)(d + 2 * i), _mm_and_si128(v, keep16));
		}
	}
	_mm256_storeu_pd(acc->kept_lane, kept0);
	_mm256_storeu_pd(acc->kept_lane + 4, kept1);
	_mm256_storeu_pd(acc->above_lane, abv0);
	_mm256_storeu_pd(acc->above_lane + 4, abv1);
}

static bool have_avx2(void)
{
	static int cached = -1;
	if (cached < 0)
		cached = __builtin_cpu_supports("avx2") ? 1 : 0;
	return cached == 1;
}
#else
static void nm_tile8_avx2(const nmp_cpu_job *j, uint64_t base, uint64_t elem_step, nm_acc *acc, int kind)
{
	(void)j, (void)base, (void)elem_step, (void)acc, (void)kind;
}

static bool have_avx2(void)
{
	return false;
}
#endif

/* Work item: one (outer, group) pair and all its inner positions; or, when
 * groups are contiguous (inner == 1), one group. */
INLINE void nm_run(nmp_cpu_job *j, uint64_t b, uint64_t e, nm_acc *acc, int kind)
{
	const uint64_t m = j->p->m, groups = j->L / m;
	if (j->inner == 1) {
		uint64_t g = b;
		for (; g + NMP_LANES <= e; g += NMP_LANES)
			nm_tile(j, g * m, m, 1, NMP_LANES, acc, kind, true);
		if (g < e)
			nm_tile(j, g * m, m, 1, (int)(e - g), acc, kind, false);
		return;
	}
	const bool avx2 = kind != FK_Q && have_avx2();
	for (uint64_t w = b; w < e; w++) {
		uint64_t o = w / groups, g = w % groups;
		uint64_t base = (o * j->L + g * m) * j->inner, i = 0;
		if (avx2)
			for (; i + 8 <= j->inner; i += 8)
				nm_tile8_avx2(j, base + i, j->inner, acc, kind);
		for (; i + NMP_LANES <= j->inner; i += NMP_LANES)
			nm_tile(j, base + i, 1, j->inner, NMP_LANES, acc, kind, true);
		if (i < j->inner)
			nm_tile(j, base + i, 1, j->inner, (int)(j->inner - i), acc, kind, false);
	}
}

HOT static void nm_f32(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a) { nm_run(j, b, e, a, FK_F32); }
HOT static void nm_f16(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a) { nm_run(j, b, e, a, FK_F16); }
HOT static void nm_bf16(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a) { nm_run(j, b, e, a, FK_BF16); }
HOT static void nm_q(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a) { nm_run(j, b, e, a, FK_Q); }

/* Partially orders v so that v[0..n) are its n largest (expected linear time). */
static void select_largest_u32(uint32_t *v, size_t len, size_t n)
{
	size_t lo = 0, hi = len;
	while (n > lo && n < hi && hi - lo > 1) {
		uint32_t pivot = v[lo + (hi - lo) / 2];
		size_t lt = lo, i = lo, gt = hi; /* [lo,lt) > pivot, [lt,i) == pivot, [gt,hi) < pivot */
		while (i < gt) {
			if (v[i] > pivot) {
				uint32_t t = v[i];
				v[i++] = v[lt];
				v[lt++] = t;
			} else if (v[i] < pivot) {
				uint32_t t = v[i];
				v[i] = v[--gt];
				v[gt] = t;
			} else {
				i++;
			}
		}
		if (n <= lt)
			hi = lt;
		else if (n >= gt)
			lo = gt;
		else
			return;
	}
}

/*
 * The fused path: a scan (NaN, dense L1, keys per reference bin), then one
 * pass that chooses, zeroes, and sums the kept magnitude and the magnitude
 * above the bin where the unstructured cut falls; the keys in that bin are
 * few and selected exactly at the end.
 */
nmp_status nmp_cpu_fused(nmp_cpu_job *j, nmp_mask_stats *st)
{
	static void (*const scans[])(nmp_cpu_job *, uint64_t, uint64_t, void *) = { fscan_f32, fscan_f16, fscan_bf16, fscan_q };
	static void (*const passes[])(nmp_cpu_job *, uint64_t, uint64_t, void *) = { nm_f32, nm_f16, nm_bf16, nm_q };
	const int kind = fused_kind(j);
	const nmp_mask_tensor *t = j->t;
	const uint64_t m = j->p->m, n = j->p->n;
	int parts;
	nmp_status s = NMP_OK;

	fscan_acc *sa = nmp_cpu_parallel_for(j, j->numel, 1u << 18, sizeof(fscan_acc), &parts, scans[kind]);
	if (!sa)
		return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
	uint64_t bins[REF_BINS] = { 0 };
	for (int i = 0; i < parts; i++) {
		st->l1_dense += sa[i].l1;
		if (sa[i].nan_at && s == NMP_OK)
			s = nmp_error_set(j->err, NMP_ERR_MODEL, "tensor '%s': NaN at flat index %llu", t->name,
					  (unsigned long long)(sa[i].nan_at - 1));
		for (int b = 0; b < REF_BINS; b++)
			bins[b] += (uint64_t)sa[i].bins[0][b] + sa[i].bins[1][b];
	}
	free(sa);
	if (s != NMP_OK)
		return s;

	/* Every group keeps exactly N, so unstructured pruning would keep as many. */
	const uint64_t keep = j->numel / m * n;
	uint64_t above = 0;
	int cut = REF_BINS - 1;
	while (cut > 0 && above + bins[cut] < keep)
		above += bins[cut--];
	j->ref_bin = (uint32_t)cut;

	uint64_t work = j->inner == 1 ? j->numel / m : j->outer * (j->L / m);
	uint64_t per_item = j->inner == 1 ? m : m * j->inner;
	nm_acc *acc = nmp_cpu_parallel_for(j, work, (1u << 16) / per_item + 1, sizeof(nm_acc), &parts, passes[kind]);
	if (!acc)
		return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
	double l1_above = 0;
	size_t n_cut = 0;
	bool oom = false;
	for (int i = 0; i < parts; i++) {
		for (int w = 0; w < NMP_LANES; w++) {
			st->l1_kept += acc[i].kept_lane[w];
			l1_above += acc[i].above_lane[w];
		}
		n_cut += acc[i].n_cut;
		oom |= acc[i].oom;
	}
	uint32_t *cutk = malloc((n_cut ? n_cut : 1) * sizeof *cutk);
	size_t at_ = 0;
	for (int i = 0; i < parts; i++) {
		if (cutk)
			memcpy(cutk + at_, acc[i].cut, acc[i].n_cut * sizeof *cutk);
		at_ += acc[i].n_cut;
		free(acc[i].cut);
	}
	free(acc);
	if (!cutk || oom) {
		free(cutk);
		return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
	}
	select_largest_u32(cutk, n_cut, (size_t)(keep - above));
	double ref = l1_above;
	for (uint64_t i = 0; i < keep - above && i < n_cut; i++)
		ref += fmag(cutk[i], kind);
	free(cutk);
	st->l1_unstructured = ref;
	st->kept = keep;
	st->groups = j->numel / m;
	return NMP_OK;
}
