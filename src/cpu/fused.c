/*
 * fused.c — element-wise N:M with M <= 32 on 32-bit keys (fp32, fp16, bf16,
 * quantized), in one pass that chooses, zeroes and gathers the statistics.
 *
 * Groups are processed in lane tiles of NMP_LANES groups side by side: each
 * element's rank is counted against the others of its group with
 * comparisons the compiler vectorizes across lanes (and, for contiguous
 * lanes of floats, with AVX2 intrinsics chosen at run time).  A first scan
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

typedef struct nm_acc {
	double kept_lane[NMP_LANES];  /* kept magnitude, per lane */
	double above_lane[NMP_LANES]; /* magnitude above the reference bin, per lane */
	nmp_cpu_cut cut;              /* keys in the reference bin */
} nm_acc;

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
	const int sh = nmp_cpu_ref_shift(kind);
	int32_t k[FUSED_MAX_M][NMP_LANES], rank[FUSED_MAX_M][NMP_LANES];
	double kept[NMP_LANES] = { 0 }, above[NMP_LANES] = { 0 };

	for (int e = 0; e < m; e++)
		for (int w = 0; w < NMP_LANES; w++)
			k[e][w] = (full || w < lanes)
				? (int32_t)nmp_cpu_key32(j, base + (uint64_t)w * lane_step + (uint64_t)e * elem_step, kind) : 0;
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
			float mg = nmp_cpu_mag32((uint32_t)k[e][w], kind);
			kept[w] += rank[e][w] < n ? (double)mg : 0.0;
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
				j->mask[base + (uint64_t)w * lane_step + (uint64_t)e * elem_step] = rank[e][w] < n;
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
				v = rank[e][w] < n ? v : 0;
				memcpy(d + 4 * (row + (uint64_t)w * lane_step), &v, 4);
			}
		} else if (kind == NMP_CK_F16 || kind == NMP_CK_BF16) {
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
	const int sh = nmp_cpu_ref_shift(kind);
	__m256i k[FUSED_MAX_M], r[FUSED_MAX_M];
	const uint8_t *in = j->in;
	uint8_t *d = j->t->data;

	for (int e = 0; e < m; e++) {
		k[e] = nmp_cpu_key8(in, base + (uint64_t)e * elem_step, kind);
		r[e] = _mm256_setzero_si256();
	}
	for (int a = 0; a < m; a++)
		for (int b = a + 1; b < m; b++) {
			__m256i lt = _mm256_cmpgt_epi32(k[b], k[a]);      /* b outranks a */
			r[a] = _mm256_sub_epi32(r[a], lt);
			r[b] = _mm256_sub_epi32(r[b], _mm256_xor_si256(lt, ones));
		}
	__m256d kept0 = _mm256_loadu_pd(acc->kept_lane), kept1 = _mm256_loadu_pd(acc->kept_lane + 4);
	__m256d above[2] = { _mm256_loadu_pd(acc->above_lane), _mm256_loadu_pd(acc->above_lane + 4) };
	for (int e = 0; e < m; e++) {
		__m256i keep = _mm256_cmpgt_epi32(vn, r[e]);
		__m256 mg = nmp_cpu_mag8(k[e], kind);
		__m256 kept_mg = _mm256_and_ps(mg, _mm256_castsi256_ps(keep));
		kept0 = _mm256_add_pd(kept0, _mm256_cvtps_pd(_mm256_castps256_ps128(kept_mg)));
		kept1 = _mm256_add_pd(kept1, _mm256_cvtps_pd(_mm256_extractf128_ps(kept_mg, 1)));
		nmp_cpu_ref8(k[e], mg, vcut, sh, above, &acc->cut);
		uint64_t i = base + (uint64_t)e * elem_step;
		if (j->mask) {
			int km = _mm256_movemask_ps(_mm256_castsi256_ps(keep));
			for (int w = 0; w < 8; w++)
				j->mask[i + (uint64_t)w] = km >> w & 1;
		}
		if (j->mode != NMP_MASK_APPLY)
			continue;
		if (kind == NMP_CK_F32) {
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
	_mm256_storeu_pd(acc->above_lane, above[0]);
	_mm256_storeu_pd(acc->above_lane + 4, above[1]);
}

#else
static void nm_tile8_avx2(const nmp_cpu_job *j, uint64_t base, uint64_t elem_step, nm_acc *acc, int kind)
{
	(void)j, (void)base, (void)elem_step, (void)acc, (void)kind;
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
	const bool avx2 = kind != NMP_CK_Q && nmp_cpu_have_avx2();
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
