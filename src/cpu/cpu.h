/*
 * cpu.h — the CPU backend's internals, shared by its files and by nothing
 * else (the engine's contract is mask.h, the bit-exact rules mask_rules.h).
 *
 * One tensor is one job: the weight seen as (outer, L, inner) with the group
 * axis L in the middle, and as rows x L for the patterns that need rows
 * (rows enumerate every other axis, the output-channel axis fastest).  Each
 * pattern family lives in its own file and runs over independent work items
 * through the thread pool (pool.c), whose per-part accumulators are combined
 * in part order so that no result depends on timing or thread count.
 */
#ifndef NMP_CPU_H
#define NMP_CPU_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "mask.h"
#include "mask_rules.h"

struct nmp_cpu_ref;

typedef struct nmp_cpu_job {
	const nmp_mask_tensor *t;
	const nmp_pattern *p;
	nmp_mask_mode mode;
	int threads;
	uint8_t *mask;
	nmp_error *err;

	nmp_key_kind kk;
	uint64_t numel, L, inner, outer;  /* (outer, L, inner) with the group axis in the middle */
	uint64_t rows;                    /* numel / L */
	uint64_t *row_off;                /* flat offset of row r, output channel fastest */
	nmp_quant_geom qg;                /* quantized: where each element's scale is */

	uint32_t *qkey;                   /* quantized: magnitude bits per element */
	uint64_t *key;                    /* unstructured: key per element (structured families read the weight) */
	const struct nmp_cpu_ref *ref;    /* the radix pass under way, for the reference */
	uint32_t ref_bin;                 /* the reference bin of the pass under way (reference.c) */
	const void *part_ctx;             /* what a family's parallel parts read beyond the job */
	const uint8_t *in;                /* where the weight is read: t->src, or t->data */
	uint8_t *zero;                    /* float weight that the family zeroes in its own pass, or NULL */
} nmp_cpu_job;

/* ---- 32-bit keys: every stored type but fp64 ------------------------------------------------ */

/* The kinds of 32-bit key, for loops specialized by a constant kind. */
enum { NMP_CK_F32, NMP_CK_F16, NMP_CK_BF16, NMP_CK_Q };

static inline int nmp_cpu_kind32(const nmp_cpu_job *j)
{
	switch (j->t->dtype) {
	case NMP_RT_FLOAT: return NMP_CK_F32;
	case NMP_RT_FLOAT16: return NMP_CK_F16;
	case NMP_RT_BFLOAT16: return NMP_CK_BF16;
	default: return NMP_CK_Q;
	}
}

#define NMP_CPU_INLINE static inline __attribute__((always_inline))

/* The x86-64 paths: AVX2, with F16C for fp16 magnitudes (nmp_cpu_have_avx2 checks both). */
#define NMP_CPU_SIMD __attribute__((target("avx2,f16c")))
#define NMP_CPU_SIMD_INLINE static inline __attribute__((target("avx2,f16c"), always_inline))

/* The key kind of mask_rules.h that a 32-bit kind follows (quantized keys are fp32 bits). */
NMP_CPU_INLINE nmp_key_kind nmp_cpu_kk32(int kind)
{
	return kind == NMP_CK_F16 ? NMP_KK_F16 : kind == NMP_CK_BF16 ? NMP_KK_BF16 : NMP_KK_F32;
}

/* The key of element i, reading the weight at d (or the quantized keys q). */
NMP_CPU_INLINE uint32_t nmp_cpu_key32_at(const uint8_t *d, const uint32_t *q, uint64_t i, int kind)
{
	if (kind == NMP_CK_Q)
		return q[i];
	return (uint32_t)nmp_float_key(kind == NMP_CK_F32 ? NMP_RT_FLOAT : NMP_RT_FLOAT16, d, i); /* bf16: 16 bits too */
}

NMP_CPU_INLINE uint32_t nmp_cpu_key32(const nmp_cpu_job *j, uint64_t i, int kind)
{
	return nmp_cpu_key32_at(j->in, j->qkey, i, kind);
}

/* The magnitude of a key, as nmp_key_mag gives it (exact in fp32 for every 32-bit kind). */
NMP_CPU_INLINE float nmp_cpu_mag32(uint32_t key, int kind)
{
	return (float)nmp_key_mag(nmp_cpu_kk32(kind), key);
}

/*
 * Zeroes, of the four elements of a float weight d (32-bit kinds but
 * quantized) from i on, those whose bit of keep is 0; no branch on keep.
 */
NMP_CPU_INLINE void nmp_cpu_zero4_unless(uint8_t *d, uint64_t i, unsigned keep, int kind)
{
	uint64_t lo = 0, hi = 0; /* the bytes to keep */
	if (kind == NMP_CK_F32) {
		lo = (0xffffffffull & -(uint64_t)(keep & 1)) | (0xffffffff00000000ull & -(uint64_t)(keep >> 1 & 1));
		hi = (0xffffffffull & -(uint64_t)(keep >> 2 & 1)) | (0xffffffff00000000ull & -(uint64_t)(keep >> 3 & 1));
		uint64_t v[2];
		memcpy(v, d + 4 * i, 16);
		v[0] &= lo;
		v[1] &= hi;
		memcpy(d + 4 * i, v, 16);
	} else {
		for (int r = 0; r < 4; r++)
			lo |= (0xffffull & -(uint64_t)(keep >> r & 1)) << (16 * r);
		uint64_t v;
		memcpy(&v, d + 2 * i, 8);
		v &= lo;
		memcpy(d + 2 * i, &v, 8);
	}
}

/* Zeroes element i of a float weight d (as nmp_cpu_zero4_unless) unless keep is 1. */
NMP_CPU_INLINE void nmp_cpu_zero_unless(uint8_t *d, uint64_t i, unsigned keep, int kind)
{
	if (kind == NMP_CK_F32) {
		uint32_t v;
		memcpy(&v, d + 4 * i, 4);
		v &= -(uint32_t)keep;
		memcpy(d + 4 * i, &v, 4);
	} else {
		uint16_t v;
		memcpy(&v, d + 2 * i, 2);
		v &= (uint16_t)-(uint16_t)keep;
		memcpy(d + 2 * i, &v, 2);
	}
}

NMP_CPU_INLINE uint32_t nmp_cpu_nan_above(int kind)
{
	return kind == NMP_CK_F16 ? 0x7c00u : kind == NMP_CK_BF16 ? 0x7f80u : 0x7f800000u;
}

/*
 * The reference bins (reference.c): keys of 31 bits (fp32, quantized) or 15
 * bits (fp16, bf16) fall into NMP_CPU_REF_BINS bins by their top bits, so
 * that one bin holds a small share of any real weight's keys.
 */
#define NMP_CPU_REF_BINS 4096

NMP_CPU_INLINE int nmp_cpu_ref_shift(int kind)
{
	return kind == NMP_CK_F16 || kind == NMP_CK_BF16 ? 3 : 19;
}

/* Keys gathered from one bin, in index order within a part. */
typedef struct nmp_cpu_cut {
	uint32_t *key;
	size_t n, cap;
	bool oom;
} nmp_cpu_cut;

void nmp_cpu_cut_push(nmp_cpu_cut *c, uint32_t key);

/* One part of a bin pass: the magnitude above the bin, and the keys in it. */
typedef struct nmp_cpu_binpart {
	double above;
	nmp_cpu_cut cut;
} nmp_cpu_binpart;

/* Parts of a bin pass hold at least this many elements (a caller that partitions alike uses it too). */
#define NMP_CPU_BIN_PART (1u << 16)

bool nmp_cpu_have_avx2(void); /* AVX2 and F16C, and not declined */
/*
 * false: the portable paths, even where the CPU has AVX2 (so that tests on
 * such a CPU cover them too); call it while no engine runs.
 */
void nmp_cpu_use_avx2(bool on);
nmp_status nmp_cpu_scan32(nmp_cpu_job *j, nmp_mask_stats *st, uint64_t *bins);
uint32_t nmp_cpu_bin_from_top(const uint64_t *bins, uint64_t keep, uint64_t *above);
nmp_cpu_binpart *nmp_cpu_bin_pass(nmp_cpu_job *j, uint32_t bin, int *parts);
void nmp_cpu_bin_free(nmp_cpu_binpart *bp, int parts);
void nmp_cpu_select_largest(uint32_t *v, size_t len, size_t n);
uint32_t *nmp_cpu_cut_gather(const nmp_cpu_cut *cuts, size_t stride, int parts, size_t *n);
nmp_status nmp_cpu_ref_finish(nmp_cpu_job *j, nmp_cpu_cut *cuts, size_t stride, int parts, uint64_t need,
			      int kind, double *sum);
nmp_status nmp_cpu_reference32(nmp_cpu_job *j, const uint64_t *bins, uint64_t keep, double *out);

#if defined(__x86_64__)
#include <immintrin.h>

/* Entry m: the lanes set in m, lowest first, a byte each (filled by nmp_cpu_have_avx2's first call). */
extern uint64_t nmp_cpu_left8[256];

/* Eight keys from element i on (fp32, fp16 or bf16). */
NMP_CPU_SIMD_INLINE __m256i nmp_cpu_key8(const uint8_t *in, uint64_t i, int kind)
{
	if (kind == NMP_CK_F32)
		return _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(in + 4 * i)),
					_mm256_set1_epi32(0x7fffffff));
	return _mm256_and_si256(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(in + 2 * i))),
				_mm256_set1_epi32(0x7fff));
}

/*
 * The engine's passes read too few bytes per cycle for the hardware to
 * keep fetching ahead of them on its own (a third of a pass was waiting on
 * its loads), so they ask for the line of element i + NMP_CPU_AHEAD
 * themselves, where it lies before element `end`.
 */
#define NMP_CPU_AHEAD 1024

static inline __attribute__((always_inline)) void nmp_cpu_fetch_ahead(const uint8_t *in, uint64_t i, uint64_t end,
								      int kind)
{
	if (i + NMP_CPU_AHEAD < end)
		_mm_prefetch((const char *)in + (i + NMP_CPU_AHEAD) * (kind == NMP_CK_F32 ? 4u : 2u), _MM_HINT_T0);
}

/* nmp_cpu_fetch_ahead for each line of the `count` elements from i on. */
static inline __attribute__((always_inline)) void nmp_cpu_fetch_ahead_run(const uint8_t *in, uint64_t i,
									  uint64_t count, uint64_t end, int kind)
{
	const uint64_t per_line = kind == NMP_CK_F32 ? 16 : 32;
	for (uint64_t x = 0; x < count; x += per_line)
		nmp_cpu_fetch_ahead(in, i + x, end, kind);
}

/* The same for a pass that walks down: the line of element i - NMP_CPU_AHEAD, where it lies at `begin` or after. */
static inline __attribute__((always_inline)) void nmp_cpu_fetch_behind(const uint8_t *in, uint64_t i, uint64_t begin,
								       int kind)
{
	if (i >= begin + NMP_CPU_AHEAD)
		_mm_prefetch((const char *)in + (i - NMP_CPU_AHEAD) * (kind == NMP_CK_F32 ? 4u : 2u), _MM_HINT_T0);
}

/* Four keys from element i on, as nmp_cpu_key8 (for runs of four that may end the tensor). */
NMP_CPU_SIMD_INLINE __m128i nmp_cpu_key4(const uint8_t *in, uint64_t i, int kind)
{
	if (kind == NMP_CK_F32)
		return _mm_and_si128(_mm_loadu_si128((const __m128i *)(const void *)(in + 4 * i)), _mm_set1_epi32(0x7fffffff));
	return _mm_and_si128(_mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(in + 2 * i))),
			     _mm_set1_epi32(0x7fff));
}

/*
 * Elements i .. i + 7 decided by keep (32-bit lanes, all ones to keep): their
 * mask bytes when mask is given, and when out is given a float weight's
 * elements from src, zeroed where not kept (out may be src).
 */
NMP_CPU_SIMD_INLINE void nmp_cpu_keep8(uint8_t *mask, uint8_t *out, const uint8_t *src, uint64_t i, __m256i keep,
				       int kind)
{
	const __m128i keep16 = _mm_packs_epi32(_mm256_castsi256_si128(keep), _mm256_extracti128_si256(keep, 1));
	if (mask)
		_mm_storel_epi64((__m128i *)(void *)(mask + i), _mm_and_si128(_mm_packs_epi16(keep16, keep16), _mm_set1_epi8(1)));
	if (!out)
		return;
	if (kind == NMP_CK_F32) {
		const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(src + 4 * i));
		_mm256_storeu_si256((__m256i *)(void *)(out + 4 * i), _mm256_and_si256(v, keep));
	} else {
		const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i));
		_mm_storeu_si128((__m128i *)(void *)(out + 2 * i), _mm_and_si128(v, keep16));
	}
}

/* The magnitudes of eight keys, as nmp_cpu_mag32. */
NMP_CPU_SIMD_INLINE __m256 nmp_cpu_mag8(__m256i k, int kind)
{
	if (kind == NMP_CK_F32)
		return _mm256_castsi256_ps(k);
	if (kind == NMP_CK_BF16)
		return _mm256_castsi256_ps(_mm256_slli_epi32(k, 16));
	/* fp16: the key is the half without its sign (never a NaN, which the scan refuses), converted exactly */
	return _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(k), _mm256_extracti128_si256(k, 1)));
}

/*
 * Pushes the keys of the lanes set in `lanes` into the reference bin, lowest
 * lane first: packed down in order and stored at once where the buffer has
 * room for eight, else one at a time.
 */
NMP_CPU_SIMD_INLINE void nmp_cpu_cut_push8(nmp_cpu_cut *in_bin, __m256i k, unsigned lanes)
{
	if (in_bin->cap - in_bin->n >= 8) {
		const __m256i to = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)nmp_cpu_left8[lanes]));
		_mm256_storeu_si256((__m256i *)(void *)(in_bin->key + in_bin->n), _mm256_permutevar8x32_epi32(k, to));
		in_bin->n += (size_t)__builtin_popcount(lanes);
		return;
	}
	uint32_t key[8];
	_mm256_storeu_si256((__m256i *)(void *)key, k);
	for (; lanes; lanes &= lanes - 1)
		nmp_cpu_cut_push(in_bin, key[__builtin_ctz(lanes)]);
}

/*
 * The reference bin's work on four keys k with magnitudes mg: adds the
 * magnitudes above bin cut (keys shifted right by sh) to *above, and gathers
 * the keys inside it, lowest lane first.
 */
NMP_CPU_SIMD_INLINE void nmp_cpu_ref4(__m128i k, __m128 mg, __m128i cut, int sh, __m256d *above, nmp_cpu_cut *in_bin)
{
	const __m128i bin = _mm_srai_epi32(k, sh);
	*above = _mm256_add_pd(*above, _mm256_cvtps_pd(_mm_and_ps(mg, _mm_castsi128_ps(_mm_cmpgt_epi32(bin, cut)))));
	const unsigned inside = (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(bin, cut)));
	if (inside)
		nmp_cpu_cut_push8(in_bin, _mm256_zextsi128_si256(k), inside);
}

/*
 * The same on eight keys, lanes 0-3 into above[0] and lanes 4-7 into
 * above[1]: one 256-bit pass, not two of nmp_cpu_ref4 (which costs the tile
 * passes a few percent).
 */
NMP_CPU_SIMD_INLINE void nmp_cpu_ref8(__m256i k, __m256 mg, __m256i cut, int sh, __m256d above[2], nmp_cpu_cut *in_bin)
{
	const __m256i bin = _mm256_srai_epi32(k, sh);
	const __m256 a = _mm256_and_ps(mg, _mm256_castsi256_ps(_mm256_cmpgt_epi32(bin, cut)));
	above[0] = _mm256_add_pd(above[0], _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
	above[1] = _mm256_add_pd(above[1], _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
	const unsigned inside = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(bin, cut)));
	if (inside)
		nmp_cpu_cut_push8(in_bin, k, inside);
}
#endif

/*
 * Accumulator of the general path's families.  A family that finds the
 * reference statistic in its own pass (nmp_cpu_tiles_inline,
 * nmp_cpu_units_inline) also sums the magnitude above the reference bin
 * j->ref_bin and gathers the keys in it.
 */
typedef struct nmp_cpu_acc {
	double l1_kept;
	uint64_t kept, deficits;
	double above;
	nmp_cpu_cut cut;
} nmp_cpu_acc;

typedef void (*nmp_cpu_part_fn)(nmp_cpu_job *j, uint64_t begin, uint64_t end, void *acc);

/*
 * pool.c: runs fn over [0, n) in parts of at least min_per_part items, each
 * with its own zeroed accumulator of acc_size bytes, and returns the
 * accumulators (to free) for the caller to combine in part order; NULL when
 * out of memory.
 */
void *nmp_cpu_parallel_for(nmp_cpu_job *j, uint64_t n, uint64_t min_per_part, size_t acc_size, int *parts,
			   nmp_cpu_part_fn fn);

/* keys.c */
nmp_status nmp_cpu_build_rows(nmp_cpu_job *j);
nmp_status nmp_cpu_quant_keys(nmp_cpu_job *j);
nmp_status nmp_cpu_scan(nmp_cpu_job *j, nmp_mask_stats *st);  /* NaN, dense L1, j->key if allocated */
void nmp_cpu_prune_elem(const nmp_cpu_job *j, uint64_t i);
bool nmp_cpu_nonzero(const nmp_cpu_job *j, uint64_t i);

/* fused.c: element-wise N:M, M <= NMP_CPU_FUSED_MAX_M, 32-bit keys, APPLY or DRY. */
#define NMP_CPU_FUSED_MAX_M 32
nmp_status nmp_cpu_fused(nmp_cpu_job *j, nmp_mask_stats *st);

/* nm.c, units.c, tiles.c: the general path's structured families (work items of the pool). */
void nmp_cpu_nm_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *acc);
void nmp_cpu_units_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *acc);
void nmp_cpu_tiles_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *acc);
/* Do the tile or unit parts of this job find the reference statistic in their own pass? */
bool nmp_cpu_tiles_inline(const nmp_cpu_job *j);
bool nmp_cpu_units_inline(const nmp_cpu_job *j);

/* unstructured.c: P% masks, and what unstructured pruning keeps at a given count. */
nmp_status nmp_cpu_unstructured(nmp_cpu_job *j, nmp_cpu_acc *acc);
nmp_status nmp_cpu_unstructured32(nmp_cpu_job *j, const uint64_t *bins, double l1_dense, nmp_cpu_acc *acc);
double nmp_cpu_unstructured_reference(nmp_cpu_job *j, uint64_t keep);

/* check.c */
void nmp_cpu_check(nmp_cpu_job *j, nmp_mask_stats *st);

static inline uint64_t nmp_cpu_elem_key(const nmp_cpu_job *j, uint64_t i)
{
	if (j->qkey)
		return j->qkey[i];
	return nmp_float_key(j->t->dtype, j->in, i);
}

/* The key of element i, for a key kind known at the call (the dtype switch folds away). */
static inline __attribute__((always_inline)) uint64_t nmp_cpu_key_kk(const nmp_cpu_job *j, uint64_t i,
								     nmp_key_kind kk)
{
	if (j->qkey)
		return j->qkey[i];
	switch (kk) {
	case NMP_KK_F32: return nmp_float_key(NMP_RT_FLOAT, j->in, i);
	case NMP_KK_F16:
	case NMP_KK_BF16: return nmp_float_key(NMP_RT_FLOAT16, j->in, i); /* both: 16 bits, sign cleared */
	default: return nmp_float_key(NMP_RT_DOUBLE, j->in, i);
	}
}

/* Flat index of (row r, column c) of the 2-D view. */
static inline uint64_t nmp_cpu_at(const nmp_cpu_job *j, uint64_t r, uint64_t c)
{
	return j->row_off[r] + c * j->inner;
}

/*
 * mag where keep, else +0, without a branch (random masks mispredict half
 * of them): what a kept sum adds, the same value and order as
 * `if (keep) sum += mag`, since sum + 0 is sum for the non-negative sums.
 */
static inline double nmp_cpu_kept_mag(double mag, bool keep)
{
	uint64_t bits;
	memcpy(&bits, &mag, 8);
	bits &= -(uint64_t)keep;
	memcpy(&mag, &bits, 8);
	return mag;
}

/* Records a general-path choice: the mask byte, and the kept count and magnitude. */
static inline void nmp_cpu_mark(const nmp_cpu_job *j, uint64_t i, bool keep, nmp_cpu_acc *acc)
{
	j->mask[i] = keep;
	if (keep) {
		acc->kept++;
		acc->l1_kept += nmp_key_mag(j->kk, nmp_cpu_elem_key(j, i));
	}
}

/*
 * Work items of the 2-D families are (row block, group) pairs.  They run
 * with row blocks fastest when neighbouring rows are closer in memory than
 * neighbouring columns (a MatMul weight [K, N] grouped along K), so that
 * consecutive items read consecutive memory; groups fastest otherwise.
 */
static inline bool nmp_cpu_rows_fast(const nmp_cpu_job *j)
{
	return j->rows > 1 && j->row_off[1] - j->row_off[0] < j->inner;
}

/*
 * A Conv's rows are (kernel position, output channel), the channel fastest:
 * `per` rows to a position.  Where neighbouring positions are neighbouring
 * elements, the units of a row block at eight adjacent positions lie side
 * by side element by element, and a family reads one cell of eight units
 * to a vector.  Its items then run position fastest: nmp_cpu_positions
 * says how many positions there are (0: not this layout, fewer than
 * eight, or a row block of unit_rows that would straddle two), and
 * nmp_cpu_item_at places item w.
 */
static inline uint64_t nmp_cpu_positions(const nmp_cpu_job *j, unsigned unit_rows, uint64_t *per)
{
	const int oa = j->t->out_axis;
	*per = oa >= 0 && oa < j->t->rank ? (uint64_t)j->t->dims[oa] : 0;
	if (nmp_cpu_rows_fast(j) || j->inner == 1 || *per == 0 || *per % unit_rows || j->rows / *per < 8 ||
	    j->row_off[*per] != j->row_off[0] + 1)
		return 0;
	return j->rows / *per;
}

/* Item w of position-fastest items: its row block and group; returns its position. */
static inline uint64_t nmp_cpu_item_at(uint64_t w, uint64_t positions, uint64_t groups, uint64_t blocks_per_position,
				       uint64_t *rb, uint64_t *g)
{
	const uint64_t p = w % positions, rest = w / positions;
	*g = rest % groups;
	*rb = p * blocks_per_position + rest / groups;
	return p;
}

/*
 * Do the `rows` rows from r0 (at one position) lie side by side, element by
 * element, with theirs at the next seven positions, `per` rows on each?
 * (An axis before the group axis can break the run.)
 */
static inline bool nmp_cpu_side_by_side8(const uint64_t *row_off, uint64_t r0, unsigned rows, uint64_t per)
{
	for (uint64_t k = 1; k < 8; k++)
		for (unsigned r = 0; r < rows; r++)
			if (row_off[r0 + k * per + r] != row_off[r0 + r] + k)
				return false;
	return true;
}

static inline uint64_t nmp_cpu_prod(const int64_t *d, int from, int to)
{
	uint64_t n = 1;
	for (int i = from; i < to; i++)
		n *= (uint64_t)d[i];
	return n;
}

#endif
