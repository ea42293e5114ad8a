/*
 * reference.c — two passes over 32-bit keys (every stored type but fp64)
 * that the families share.  The scan finds NaNs, sums the dense L1 and
 * counts keys per reference bin.  The bin pass, given one bin, sums the
 * magnitudes above it and gathers the keys inside it.  With the counts, one
 * bin pass places any cut exactly: the reference statistic (what
 * unstructured pruning would keep at a family's kept count) and the
 * unstructured threshold are found by a selection over the few keys of one
 * bin, never by a sort.
 */
#include <pthread.h>
#include <stdlib.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "cpu.h"

static bool avx2_declined; /* nmp_cpu_use_avx2(false) */

#if defined(__x86_64__)
uint64_t nmp_cpu_left8[256];

static pthread_once_t simd_once = PTHREAD_ONCE_INIT;
static bool simd_have;

static void simd_detect(void)
{
	unsigned a, b, c = 0, d;
	const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
	simd_have = __builtin_cpu_supports("avx2") && f16c;
	for (unsigned m = 0; m < 256; m++) {
		uint64_t v = 0;
		for (unsigned l = 0, x = 0; l < 8; l++)
			if (m >> l & 1)
				v |= (uint64_t)l << (8 * x++);
		nmp_cpu_left8[m] = v;
	}
}
#endif

bool nmp_cpu_have_avx2(void)
{
#if defined(__x86_64__)
	pthread_once(&simd_once, simd_detect);
	return simd_have && !avx2_declined;
#else
	return false;
#endif
}

void nmp_cpu_use_avx2(bool on)
{
	avx2_declined = !on;
}

void nmp_cpu_cut_push(nmp_cpu_cut *c, uint32_t key)
{
	if (c->n == c->cap) {
		size_t cap = c->cap ? 2 * c->cap : 1024;
		uint32_t *k = realloc(c->key, cap * sizeof *k);
		if (!k) {
			c->oom = true;
			return;
		}
		c->key = k;
		c->cap = cap;
	}
	c->key[c->n++] = key;
}

/* ---- the scan ------------------------------------------------------------------------------- */

typedef struct scan_acc {
	double l1;
	uint64_t nan_at;                       /* first NaN + 1, 0 none */
	uint32_t bins[2][NMP_CPU_REF_BINS];    /* alternating, so repeated bins do not stall on each other */
} scan_acc;

NMP_CPU_INLINE void scan_run(nmp_cpu_job *j, uint64_t b, uint64_t e, scan_acc *acc, int kind)
{
	const uint32_t nan_above = nmp_cpu_nan_above(kind);
	const int sh = nmp_cpu_ref_shift(kind);
	double l1 = 0;
	for (uint64_t i = b; i < e; i++) {
		uint32_t k = nmp_cpu_key32(j, i, kind);
		if (k > nan_above) {
			if (!acc->nan_at)
				acc->nan_at = i + 1;
			continue;
		}
		acc->bins[i & 1][k >> sh]++;
		l1 += nmp_cpu_mag32(k, kind);
	}
	acc->l1 += l1;
}

#if defined(__x86_64__)
#define SCAN_BLOCK 256

/*
 * The scan for fp32, fp16 and bf16 with AVX2: vector NaN test and sums, and
 * scalar counts.  The bins of a block of keys are packed to 16 bits and
 * counted after the block, in a loop of their own: counting each vector's
 * eight as they are unpacked from it took a fifth of every family's time.
 * The counting loop reads no keys, so the hardware stops fetching ahead
 * while it runs: each block asks for the keys NMP_CPU_AHEAD on.
 */
NMP_CPU_SIMD static void scan_avx2(nmp_cpu_job *j, uint64_t b, uint64_t e, scan_acc *acc, int kind)
{
	const int sh = nmp_cpu_ref_shift(kind);
	const __m256i nan_above = _mm256_set1_epi32((int)nmp_cpu_nan_above(kind));
	__m256d l1a = _mm256_setzero_pd(), l1b = _mm256_setzero_pd();
	uint64_t i = b;
	uint32_t (*hist)[NMP_CPU_REF_BINS] = acc->bins;
	for (; i + SCAN_BLOCK <= e; i += SCAN_BLOCK) {
		uint16_t bins[SCAN_BLOCK];
		nmp_cpu_fetch_ahead_run(j->in, i, SCAN_BLOCK, e, kind);
		for (int x = 0; x < SCAN_BLOCK; x += 8) {
			__m256i k = nmp_cpu_key8(j->in, i + (uint64_t)x, kind);
			if (_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(k, nan_above)))) {
				scan_run(j, i + (uint64_t)x, i + (uint64_t)x + 8, acc, kind); /* records the first NaN */
				if (acc->nan_at)
					return;
			}
			__m256 mg = nmp_cpu_mag8(k, kind);
			l1a = _mm256_add_pd(l1a, _mm256_cvtps_pd(_mm256_castps256_ps128(mg)));
			l1b = _mm256_add_pd(l1b, _mm256_cvtps_pd(_mm256_extractf128_ps(mg, 1)));
			const __m256i bv = _mm256_srai_epi32(k, sh);
			_mm_storeu_si128((__m128i *)(void *)(bins + x),
					 _mm_packus_epi32(_mm256_castsi256_si128(bv), _mm256_extracti128_si256(bv, 1)));
		}
		for (int x = 0; x < SCAN_BLOCK; x += 2) {
			hist[0][bins[x]]++;
			hist[1][bins[x + 1]]++;
		}
	}
	double lanes[8];
	_mm256_storeu_pd(lanes, l1a);
	_mm256_storeu_pd(lanes + 4, l1b);
	if (i < e)
		scan_run(j, i, e, acc, kind);
	for (int w = 0; w < 8; w++)
		acc->l1 += lanes[w];
}
#endif

static void scan_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a)
{
	const int kind = nmp_cpu_kind32(j);
#if defined(__x86_64__)
	if (kind != NMP_CK_Q && nmp_cpu_have_avx2()) {
		scan_avx2(j, b, e, a, kind);
		return;
	}
#endif
	switch (kind) {
	case NMP_CK_F32: scan_run(j, b, e, a, NMP_CK_F32); break;
	case NMP_CK_F16: scan_run(j, b, e, a, NMP_CK_F16); break;
	case NMP_CK_BF16: scan_run(j, b, e, a, NMP_CK_BF16); break;
	default: scan_run(j, b, e, a, NMP_CK_Q); break;
	}
}

/* NaN (an error naming the first), the dense L1 into st, and the keys per bin into bins. */
nmp_status nmp_cpu_scan32(nmp_cpu_job *j, nmp_mask_stats *st, uint64_t *bins)
{
	int parts;
	nmp_status s = NMP_OK;
	scan_acc *sa = nmp_cpu_parallel_for(j, j->numel, 1u << 18, sizeof(scan_acc), &parts, scan_part);
	if (!sa)
		return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
	memset(bins, 0, NMP_CPU_REF_BINS * sizeof *bins);
	for (int i = 0; i < parts; i++) {
		st->l1_dense += sa[i].l1;
		if (sa[i].nan_at && s == NMP_OK)
			s = nmp_error_set(j->err, NMP_ERR_MODEL, "tensor '%s': NaN at flat index %llu", j->t->name,
					  (unsigned long long)(sa[i].nan_at - 1));
		for (int b = 0; b < NMP_CPU_REF_BINS; b++)
			bins[b] += (uint64_t)sa[i].bins[0][b] + sa[i].bins[1][b];
	}
	free(sa);
	return s;
}

/* The bin where the keep-th largest key falls; *above receives how many keys lie in higher bins. */
uint32_t nmp_cpu_bin_from_top(const uint64_t *bins, uint64_t keep, uint64_t *above)
{
	uint64_t a = 0;
	uint32_t cut = NMP_CPU_REF_BINS - 1;
	while (cut > 0 && a + bins[cut] < keep)
		a += bins[cut--];
	*above = a;
	return cut;
}

/* ---- the bin pass --------------------------------------------------------------------------- */

NMP_CPU_INLINE void bin_run(nmp_cpu_job *j, uint64_t b, uint64_t e, nmp_cpu_binpart *bp, int kind)
{
	const int sh = nmp_cpu_ref_shift(kind);
	const uint32_t cut = j->ref_bin;
	double above = 0;
	for (uint64_t i = b; i < e; i++) {
		uint32_t k = nmp_cpu_key32(j, i, kind);
		above += (k >> sh) > cut ? (double)nmp_cpu_mag32(k, kind) : 0.0;
		if ((k >> sh) == cut)
			nmp_cpu_cut_push(&bp->cut, k);
	}
	bp->above += above;
}

#if defined(__x86_64__)
NMP_CPU_SIMD static void bin_avx2(nmp_cpu_job *j, uint64_t b, uint64_t e, nmp_cpu_binpart *bp, int kind)
{
	const int sh = nmp_cpu_ref_shift(kind);
	const __m256i vcut = _mm256_set1_epi32((int)j->ref_bin);
	__m256d above[2] = { _mm256_setzero_pd(), _mm256_setzero_pd() };
	uint64_t i = b;
	for (; i + 8 <= e; i += 8) {
		nmp_cpu_fetch_ahead(j->in, i, e, kind);
		const __m256i k = nmp_cpu_key8(j->in, i, kind);
		nmp_cpu_ref8(k, nmp_cpu_mag8(k, kind), vcut, sh, above, &bp->cut);
	}
	double lanes[8];
	_mm256_storeu_pd(lanes, above[0]);
	_mm256_storeu_pd(lanes + 4, above[1]);
	if (i < e)
		bin_run(j, i, e, bp, kind);
	for (int w = 0; w < 8; w++)
		bp->above += lanes[w];
}
#endif

static void bin_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *a)
{
	const int kind = nmp_cpu_kind32(j);
#if defined(__x86_64__)
	if (kind != NMP_CK_Q && nmp_cpu_have_avx2()) {
		bin_avx2(j, b, e, a, kind);
		return;
	}
#endif
	switch (kind) {
	case NMP_CK_F32: bin_run(j, b, e, a, NMP_CK_F32); break;
	case NMP_CK_F16: bin_run(j, b, e, a, NMP_CK_F16); break;
	case NMP_CK_BF16: bin_run(j, b, e, a, NMP_CK_BF16); break;
	default: bin_run(j, b, e, a, NMP_CK_Q); break;
	}
}

/*
 * Every element, in parts of at least NMP_CPU_BIN_PART: the magnitude of
 * the keys above `bin` and the keys inside it (NULL when out of memory;
 * free with nmp_cpu_bin_free).
 */
nmp_cpu_binpart *nmp_cpu_bin_pass(nmp_cpu_job *j, uint32_t bin, int *parts)
{
	j->ref_bin = bin;
	nmp_cpu_binpart *bp = nmp_cpu_parallel_for(j, j->numel, NMP_CPU_BIN_PART, sizeof *bp, parts, bin_part);
	if (!bp)
		return NULL;
	for (int p = 0; p < *parts; p++)
		if (bp[p].cut.oom) {
			nmp_cpu_bin_free(bp, *parts);
			return NULL;
		}
	return bp;
}

void nmp_cpu_bin_free(nmp_cpu_binpart *bp, int parts)
{
	if (!bp)
		return;
	for (int p = 0; p < parts; p++)
		free(bp[p].cut.key);
	free(bp);
}

/* Partially orders v so that v[0..n) are its n largest (expected linear time). */
void nmp_cpu_select_largest(uint32_t *v, size_t len, size_t n)
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
 * The keys of the parts' cuts (parts of them, `stride` bytes apart) in one
 * array, in part order; *n receives their count.  NULL when out of memory.
 */
uint32_t *nmp_cpu_cut_gather(const nmp_cpu_cut *cuts, size_t stride, int parts, size_t *n)
{
	*n = 0;
	for (int p = 0; p < parts; p++)
		*n += ((const nmp_cpu_cut *)(const void *)((const char *)cuts + (size_t)p * stride))->n;
	uint32_t *all = malloc((*n ? *n : 1) * sizeof *all);
	if (!all)
		return NULL;
	size_t at = 0;
	for (int p = 0; p < parts; p++) {
		const nmp_cpu_cut *c = (const nmp_cpu_cut *)(const void *)((const char *)cuts + (size_t)p * stride);
		if (c->n)
			memcpy(all + at, c->key, c->n * sizeof *all);
		at += c->n;
	}
	return all;
}

/* The sum of the `need` largest keys gathered in cuts (as nmp_cpu_cut_gather takes them), added to *sum. */
nmp_status nmp_cpu_ref_finish(nmp_cpu_job *j, nmp_cpu_cut *cuts, size_t stride, int parts, uint64_t need,
			      int kind, double *sum)
{
	size_t n;
	uint32_t *all = nmp_cpu_cut_gather(cuts, stride, parts, &n);
	if (!all)
		return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
	if (need > n)
		need = n;
	nmp_cpu_select_largest(all, n, (size_t)need);
	double s = 0;
	for (uint64_t i = 0; i < need; i++)
		s += nmp_cpu_mag32(all[i], kind);
	*sum += s;
	free(all);
	return NMP_OK;
}

/* What unstructured pruning would keep at `keep` elements: the sum of the keep largest magnitudes. */
nmp_status nmp_cpu_reference32(nmp_cpu_job *j, const uint64_t *bins, uint64_t keep, double *out)
{
	const int kind = nmp_cpu_kind32(j);
	uint64_t above;
	int parts;
	*out = 0;
	if (keep == 0)
		return NMP_OK;
	nmp_cpu_binpart *bp = nmp_cpu_bin_pass(j, nmp_cpu_bin_from_top(bins, keep, &above), &parts);
	if (!bp)
		return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
	for (int p = 0; p < parts; p++)
		*out += bp[p].above;
	nmp_status s = nmp_cpu_ref_finish(j, &bp[0].cut, sizeof *bp, parts, keep - above, kind, out);
	nmp_cpu_bin_free(bp, parts);
	return s;
}
