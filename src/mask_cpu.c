/*
 * mask_cpu.c — the CPU mask engine, and the definition of the right answer.
 *
 * Two paths share the rules of mask.h:
 *  - the fused path, for element-wise N:M with M <= 32 on 32-bit keys
 *    (fp32, fp16, bf16, quantized): groups are processed in lane tiles of
 *    NMP_LANES groups side by side, each element's rank counted against the
 *    others of its group with comparisons the compiler vectorizes across
 *    lanes, and the pruned weights are zeroed in the same pass;
 *  - the general path, for everything else: a 64-bit key per element, then
 *    the pattern's algorithm over the row/column view.
 * Both parallelize over independent groups with pthreads.
 */
#include "mask.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "dtype.h"

#define NMP_LANES 16
#define FUSED_MAX_M 32

/* ---- element magnitudes ------------------------------------------------------------ */

static float f32_of(uint32_t bits)
{
	float f;
	memcpy(&f, &bits, 4);
	return f;
}

static double f64_of(uint64_t bits)
{
	double d;
	memcpy(&d, &bits, 8);
	return d;
}

static float half_to_float(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
	uint32_t bits;
	if (exp == 0) {
		if (man == 0) {
			bits = sign;
		} else { /* subnormal: renormalize */
			exp = 127 - 15 + 1;
			while (!(man & 0x400)) {
				man <<= 1;
				exp--;
			}
			bits = sign | exp << 23 | (man & 0x3ff) << 13;
		}
	} else if (exp == 31) {
		bits = sign | 0x7f800000u | man << 13;
	} else {
		bits = sign | (exp + 127 - 15) << 23 | man << 13;
	}
	return f32_of(bits);
}

typedef enum key_kind { KK_F32, KK_F16, KK_BF16, KK_F64 } key_kind;

/* Magnitude of a key (the value's bits with the sign cleared). */
static double key_mag(key_kind k, uint64_t key)
{
	switch (k) {
	case KK_F32: return f32_of((uint32_t)key);
	case KK_F16: return half_to_float((uint16_t)key);
	case KK_BF16: return f32_of((uint32_t)key << 16);
	case KK_F64: return f64_of(key);
	}
	return 0;
}

/* ---- the job ------------------------------------------------------------------------------ */

typedef struct job {
	const nmp_mask_tensor *t;
	const nmp_pattern *p;
	nmp_mask_mode mode;
	int threads;
	uint8_t *mask;
	nmp_error *err;

	key_kind kk;
	uint64_t numel, L, inner, outer;  /* (outer, L, inner) with the group axis in the middle */
	uint64_t rows;                    /* numel / L */
	uint64_t *row_off;                /* flat offset of row r, output channel fastest */

	uint32_t *qkey;                   /* quantized: magnitude bits per element */
	uint64_t *key;                    /* general path: key per element */
	const struct ref_ctx *ref;        /* the radix pass under way, for the reference */
	uint32_t ref_bin;                 /* fused path: the bin where the unstructured cut falls */
	const uint8_t *in;                /* where the weight is read: t->src, or t->data */
} job;

static uint64_t prod(const int64_t *d, int from, int to)
{
	uint64_t n = 1;
	for (int i = from; i < to; i++)
		n *= (uint64_t)d[i];
	return n;
}

/* Rows enumerate every non-group axis, the output-channel axis fastest. */
static nmp_status build_rows(job *j)
{
	const nmp_mask_tensor *t = j->t;
	int axes[64], n = 0;
	uint64_t stride[64];
	uint64_t st = 1;
	for (int a = t->rank - 1; a >= 0; a--) {
		stride[a] = st;
		st *= (uint64_t)t->dims[a];
	}
	for (int a = 0; a < t->rank; a++)
		if (a != t->axis && a != t->out_axis)
			axes[n++] = a;
	if (t->out_axis >= 0)
		axes[n++] = t->out_axis;
	j->row_off = malloc((j->rows ? j->rows : 1) * sizeof *j->row_off);
	if (!j->row_off)
		return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
	uint64_t coord[64] = { 0 };
	uint64_t off = 0;
	for (uint64_t r = 0; r < j->rows; r++) {
		j->row_off[r] = off;
		for (int k = n - 1; k >= 0; k--) { /* odometer, fastest axis last */
			int a = axes[k];
			coord[k]++;
			off += stride[a];
			if (coord[k] < (uint64_t)t->dims[a])
				break;
			off -= coord[k] * stride[a];
			coord[k] = 0;
		}
	}
	return NMP_OK;
}

/* ---- parallel for ---------------------------------------------------------------------- */

typedef struct pfor {
	void (*fn)(job *j, uint64_t begin, uint64_t end, void *acc);
	job *j;
	uint64_t n;
	int parts;
	void *accs;
	size_t acc_size;
	int next;
	pthread_mutex_t lock;
} pfor;

static void *pfor_worker(void *arg)
{
	pfor *f = arg;
	for (;;) {
		pthread_mutex_lock(&f->lock);
		int part = f->next++;
		pthread_mutex_unlock(&f->lock);
		if (part >= f->parts)
			return NULL;
		uint64_t b = f->n * (uint64_t)part / (uint64_t)f->parts;
		uint64_t e = f->n * (uint64_t)(part + 1) / (uint64_t)f->parts;
		f->fn(f->j, b, e, (char *)f->accs + (size_t)part * f->acc_size);
	}
}

/*
 * Runs fn over [0, n) in parts, each with its own accumulator of acc_size
 * bytes (zeroed); returns the accumulators for the caller to combine in
 * part order, so results do not depend on the thread count's timing.
 */
static void *parallel_for(job *j, uint64_t n, uint64_t min_per_part, size_t acc_size, int *parts_out,
			  void (*fn)(job *, uint64_t, uint64_t, void *))
{
	int threads = j->threads > 0 ? j->threads : 1;
	uint64_t parts = n / (min_per_part ? min_per_part : 1);
	if (parts > (uint64_t)threads * 4)
		parts = (uint64_t)threads * 4;
	if (parts < 1)
		parts = 1;
	pfor f = { .fn = fn, .j = j, .n = n, .parts = (int)parts, .acc_size = acc_size };
	f.accs = calloc(parts, acc_size ? acc_size : 1);
	if (!f.accs)
		return NULL;
	pthread_mutex_init(&f.lock, NULL);
	int nt = threads < (int)parts ? threads : (int)parts;
	pthread_t tid[256];
	int started = 0;
	for (int i = 1; i < nt && i < 256; i++)
		if (pthread_create(&tid[started], NULL, pfor_worker, &f) == 0)
			started++;
	pfor_worker(&f);
	for (int i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	pthread_mutex_destroy(&f.lock);
	*parts_out = (int)parts;
	return f.accs;
}

/* ---- scanning: NaN, dense L1, keys ------------------------------------------------------------ */

typedef struct scan_acc {
	double l1;
	uint64_t nan_at;   /* first NaN + 1, 0 none */
} scan_acc;

static inline uint64_t elem_key(const job *j, uint64_t i)
{
	const uint8_t *d = j->in;
	switch (j->t->dtype) {
	case NMP_DT_FLOAT: {
		uint32_t b;
		memcpy(&b, d + 4 * i, 4);
		return b & 0x7fffffffu;
	}
	case NMP_DT_FLOAT16:
	case NMP_DT_BFLOAT16: {
		uint16_t b;
		memcpy(&b, d + 2 * i, 2);
		return b & 0x7fffu;
	}
	case NMP_DT_DOUBLE: {
		uint64_t b;
		memcpy(&b, d + 8 * i, 8);
		return b & 0x7fffffffffffffffull;
	}
	default:
		return j->qkey[i];
	}
}

static bool key_is_nan(key_kind k, uint64_t key)
{
	switch (k) {
	case KK_F32: return key > 0x7f800000u;
	case KK_F16: return key > 0x7c00u;
	case KK_BF16: return key > 0x7f80u;
	case KK_F64: return key > 0x7ff0000000000000ull;
	}
	return false;
}

static void scan_part(job *j, uint64_t b, uint64_t e, void *accp)
{
	scan_acc *acc = accp;
	double l1 = 0;
	for (uint64_t i = b; i < e; i++) {
		uint64_t k = elem_key(j, i);
		if (key_is_nan(j->kk, k)) {
			if (!acc->nan_at)
				acc->nan_at = i + 1;
			continue;
		}
		if (j->key)
			j->key[i] = k;
		l1 += key_mag(j->kk, k);
	}
	acc->l1 = l1;
}

/* ---- quantized weights ------------------------------------------------------------------------- */

static float scale_at(const nmp_quant_params *q, uint64_t i)
{
	const uint8_t *s = q->scale;
	if (q->scale_dtype == NMP_DT_FLOAT) {
		float f;
		memcpy(&f, s + 4 * i, 4);
		return f;
	}
	uint16_t h;
	memcpy(&h, s + 2 * i, 2);
	return q->scale_dtype == NMP_DT_FLOAT16 ? half_to_float(h) : f32_of((uint32_t)h << 16);
}

/* Index into scale/zero point of element i. */
static uint64_t quant_index(const job *j, uint64_t i)
{
	const nmp_quant_params *q = j->t->quant;
	if (q->n_scale == 1)
		return 0;
	const int64_t *d = j->t->dims;
	uint64_t stride = prod(d, q->axis + 1, j->t->rank), len = (uint64_t)d[q->axis];
	uint64_t c = (i / stride) % len;
	if (q->block <= 0)
		return c;
	uint64_t nb = (len + (uint64_t)q->block - 1) / (uint64_t)q->block;
	return ((i / (stride * len)) * nb + c / (uint64_t)q->block) * stride + i % stride;
}

static int zero_point_at(const job *j, uint64_t qi)
{
	const nmp_quant_params *q = j->t->quant;
	if (!q->zero_point)
		return 0;
	const uint8_t *z = q->zero_point;
	return j->t->dtype == NMP_DT_INT8 ? (int)(int8_t)z[qi] : (int)z[qi];
}

static int q_at(const job *j, uint64_t i)
{
	const uint8_t *d = j->in;
	return j->t->dtype == NMP_DT_INT8 ? (int)(int8_t)d[i] : (int)d[i];
}

static nmp_status quant_keys(job *j)
{
	const nmp_mask_tensor *t = j->t;
	const nmp_quant_params *q = t->quant;
	if (!q)
		return nmp_error_set(j->err, NMP_ERR_MODEL, "tensor '%s': quantized weight without parameters", t->name);
	uint64_t want = 1;
	if (q->n_scale != 1) {
		uint64_t len = (uint64_t)t->dims[q->axis];
		want = q->block > 0 ? j->numel / len * ((len + (uint64_t)q->block - 1) / (uint64_t)q->block) : len;
	}
	if (q->n_scale != want)
		return nmp_error_set(j->err, NMP_ERR_MODEL, "tensor '%s': DequantizeLinear scale has %llu values, expected %llu",
				     t->name, (unsigned long long)q->n_scale, (unsigned long long)want);
	j->qkey = malloc((j->numel ? j->numel : 1) * sizeof *j->qkey);
	if (!j->qkey)
		return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
	for (uint64_t i = 0; i < j->numel; i++) {
		uint64_t qi = quant_index(j, i);
		int diff = q_at(j, i) - zero_point_at(j, qi);
		float m = (float)(diff < 0 ? -diff : diff) * fabsf(scale_at(q, qi));
		uint32_t bits;
		memcpy(&bits, &m, 4);
		j->qkey[i] = bits & 0x7fffffffu;
	}
	return NMP_OK;
}

/* Sets element i to its pruned value: zero, or the zero point. */
static inline void prune_elem(const job *j, uint64_t i)
{
	uint8_t *d = j->t->data;
	switch (j->t->dtype) {
	case NMP_DT_FLOAT: memset(d + 4 * i, 0, 4); break;
	case NMP_DT_FLOAT16:
	case NMP_DT_BFLOAT16: memset(d + 2 * i, 0, 2); break;
	case NMP_DT_DOUBLE: memset(d + 8 * i, 0, 8); break;
	default: d[i] = (uint8_t)zero_point_at(j, quant_index(j, i)); break;
	}
}

/* Is element i nonzero as stored (for quantized: different from its zero point)? */
static inline bool nonzero(const job *j, uint64_t i)
{
	if (j->t->quant)
		return q_at(j, i) != zero_point_at(j, quant_index(j, i));
	return elem_key(j, i) != 0;
}

/* ---- the fused path: element-wise N:M, M <= 32, 32-bit keys ------------------------------------ */

/*
 * The hot loops are written once and specialized per stored type by
 * always-inline helpers called with a constant kind; each specialization is
 * also cloned for AVX2, chosen at load time.
 */
enum { FK_F32, FK_F16, FK_BF16, FK_Q };

#define REF_BINS 4096
#define HOT __attribute__((target_clones("avx2", "default")))
#define INLINE static inline __attribute__((always_inline))

INLINE uint32_t fkey(const job *j, uint64_t i, int kind)
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
	if (kind == FK_F16) {
		/* Branch-free: normals by rebiasing the exponent, subnormals by scaling. */
		float normal = f32_of((key + 0x1c000u) << 13), sub = (float)key * 0x1p-24f;
		float v = key >= 0x400u ? normal : sub;
		return key >= 0x7c00u ? INFINITY : v;
	}
	return f32_of(kind == FK_BF16 ? key << 16 : key);
}

/* Keys of 31 bits (fp32, quantized) or 15 bits (fp16, bf16) fall into REF_BINS bins. */
INLINE int ref_shift(int kind)
{
	return kind == FK_F16 || kind == FK_BF16 ? 3 : 19;
}

static int fused_kind(const job *j)
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

INLINE void fscan(job *j, uint64_t b, uint64_t e, fscan_acc *acc, int kind)
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
__attribute__((target("avx2"))) static void fscan_avx2(job *j, uint64_t b, uint64_t e, fscan_acc *acc, int kind)
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

static void fscan_any(job *j, uint64_t b, uint64_t e, void *a, int kind)
{
#if defined(__x86_64__)
	if (kind != FK_Q && have_avx2()) {
		fscan_avx2(j, b, e, a, kind);
		return;
	}
#endif
	fscan(j, b, e, a, kind);
}

static void fscan_f32(job *j, uint64_t b, uint64_t e, void *a) { fscan_any(j, b, e, a, FK_F32); }
static void fscan_f16(job *j, uint64_t b, uint64_t e, void *a) { fscan_any(j, b, e, a, FK_F16); }
static void fscan_bf16(job *j, uint64_t b, uint64_t e, void *a) { fscan_any(j, b, e, a, FK_BF16); }
static void fscan_q(job *j, uint64_t b, uint64_t e, void *a) { fscan_any(j, b, e, a, FK_Q); }

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
INLINE void nm_tile(const job *j, uint64_t base, uint64_t lane_step, uint64_t elem_step, int lanes,
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
					prune_elem(j, row + (uint64_t)w * lane_step);
		}
	}
}

#if defined(__x86_64__)
/*
 * The same tile for eight contiguous lanes of fp32, fp16 or bf16, written
 * with AVX2 intrinsics: element e of lane w at base + w + e * elem_step.
 */
__attribute__((target("avx2"))) static void nm_tile8_avx2(const job *j, uint64_t base, uint64_t elem_step,
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
static void nm_tile8_avx2(const job *j, uint64_t base, uint64_t elem_step, nm_acc *acc, int kind)
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
INLINE void nm_run(job *j, uint64_t b, uint64_t e, nm_acc *acc, int kind)
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

HOT static void nm_f32(job *j, uint64_t b, uint64_t e, void *a) { nm_run(j, b, e, a, FK_F32); }
HOT static void nm_f16(job *j, uint64_t b, uint64_t e, void *a) { nm_run(j, b, e, a, FK_F16); }
HOT static void nm_bf16(job *j, uint64_t b, uint64_t e, void *a) { nm_run(j, b, e, a, FK_BF16); }
HOT static void nm_q(job *j, uint64_t b, uint64_t e, void *a) { nm_run(j, b, e, a, FK_Q); }

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
static nmp_status run_fused(job *j, nmp_mask_stats *st)
{
	static void (*const scans[])(job *, uint64_t, uint64_t, void *) = { fscan_f32, fscan_f16, fscan_bf16, fscan_q };
	static void (*const passes[])(job *, uint64_t, uint64_t, void *) = { nm_f32, nm_f16, nm_bf16, nm_q };
	const int kind = fused_kind(j);
	const nmp_mask_tensor *t = j->t;
	const uint64_t m = j->p->m, n = j->p->n;
	int parts;
	nmp_status s = NMP_OK;

	fscan_acc *sa = parallel_for(j, j->numel, 1u << 18, sizeof(fscan_acc), &parts, scans[kind]);
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
	nm_acc *acc = parallel_for(j, work, (1u << 16) / per_item + 1, sizeof(nm_acc), &parts, passes[kind]);
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

/* ---- the general path ------------------------------------------------------------------------------ */

typedef struct gen_acc {
	double l1_kept;
	uint64_t kept, deficits;
} gen_acc;

static inline uint64_t at(const job *j, uint64_t r, uint64_t c)
{
	return j->row_off[r] + c * j->inner;
}

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

/* Quickselect-free top-N of M keys for large M: O(M) expected via nth selection. */
typedef struct kidx {
	uint64_t key;
	int idx;
} kidx;

static bool outranks(const kidx *a, const kidx *b)
{
	return a->key > b->key || (a->key == b->key && a->idx < b->idx);
}

/* Partially orders v so that v[0..n) are the n elements that outrank the rest. */
static void select_top(kidx *v, int m, int n)
{
	int lo = 0, hi = m - 1;
	while (lo < hi) {
		kidx pivot = v[lo + (hi - lo) / 2];
		int i = lo, k = hi;
		while (i <= k) {
			while (outranks(&v[i], &pivot))
				i++;
			while (outranks(&pivot, &v[k]))
				k--;
			if (i <= k) {
				kidx tmp = v[i];
				v[i] = v[k];
				v[k] = tmp;
				i++;
				k--;
			}
		}
		if (n - 1 <= k)
			hi = k;
		else if (n - 1 >= i)
			lo = i;
		else
			break;
	}
}

static void mark(const job *j, uint64_t i, bool keep, gen_acc *acc)
{
	j->mask[i] = keep;
	if (keep) {
		acc->kept++;
		acc->l1_kept += key_mag(j->kk, j->key[i]);
	}
}

/* Element-wise N:M for any M: one work item per (row, group). */
static void gen_nm_part(job *j, uint64_t b, uint64_t e, void *accp)
{
	gen_acc *acc = accp;
	const int m = (int)j->p->m, n = (int)j->p->n;
	const uint64_t groups = j->L / (uint64_t)m;
	kidx v[NMP_PATTERN_MAX_M];
	for (uint64_t w = b; w < e; w++) {
		uint64_t r = w / groups, c0 = (w % groups) * (uint64_t)m;
		for (int x = 0; x < m; x++)
			v[x] = (kidx){ j->key[at(j, r, c0 + (uint64_t)x)], x };
		select_top(v, m, n);
		for (int x = 0; x < m; x++)
			mark(j, at(j, r, c0 + (uint64_t)v[x].idx), x < n, acc);
	}
}

/* Vector-wise and block-wise N:M: one work item per (row block, group). */
static void gen_units_part(job *j, uint64_t b, uint64_t e, void *accp)
{
	gen_acc *acc = accp;
	const int m = (int)j->p->m, n = (int)j->p->n;
	const unsigned ur = nmp_pattern_unit_rows(j->p), uc = nmp_pattern_unit_cols(j->p);
	const uint64_t gcols = (uint64_t)m * uc, groups = j->L / gcols;
	double score[NMP_PATTERN_MAX_M];
	uint8_t keep[NMP_PATTERN_MAX_M];
	for (uint64_t w = b; w < e; w++) {
		uint64_t r0 = (w / groups) * ur, c0 = (w % groups) * gcols;
		for (int x = 0; x < m; x++) {
			double s = 0;
			for (unsigned t = 0; t < ur; t++)
				for (unsigned c = 0; c < uc; c++)
					s += key_mag(j->kk, j->key[at(j, r0 + t, c0 + (uint64_t)x * uc + c)]);
			score[x] = s;
		}
		top_n_double(score, m, n, keep);
		for (unsigned t = 0; t < ur; t++)
			for (int x = 0; x < m; x++)
				for (unsigned c = 0; c < uc; c++)
					mark(j, at(j, r0 + t, c0 + (uint64_t)x * uc + c), keep[x], acc);
	}
}

/* ---- transposable tiles ------------------------------------------------------------------------------ */

/* All M x M 0/1 matrices with N per row and column, for M <= 4, in row-major bitmask order. */
typedef struct tile_set {
	uint16_t *pat;    /* 4 bits per row, row 0 lowest */
	int n_pat;
} tile_set;

static void tile_enum(int m, int n, int row, uint16_t acc, int *colsum, tile_set *ts)
{
	if (row == m) {
		for (int c = 0; c < m; c++)
			if (colsum[c] != n)
				return;
		ts->pat[ts->n_pat++] = acc;
		return;
	}
	for (unsigned bits = 0; bits < (1u << m); bits++) {
		if (__builtin_popcount(bits) != n)
			continue;
		bool ok = true;
		for (int c = 0; c < m; c++)
			if ((bits >> c & 1) && colsum[c] + 1 > n)
				ok = false;
		if (!ok)
			continue;
		for (int c = 0; c < m; c++)
			colsum[c] += bits >> c & 1;
		tile_enum(m, n, row + 1, (uint16_t)(acc | bits << (4 * row)), colsum, ts);
		for (int c = 0; c < m; c++)
			colsum[c] -= bits >> c & 1;
	}
}

/* Exact for M <= 4: the best of every valid pattern, the first found on ties. */
static void tile_exact_small(const tile_set *ts, int m, const double *w, uint8_t *keep)
{
	int best = 0;
	double best_s = -1;
	for (int p = 0; p < ts->n_pat; p++) {
		double s = 0;
		for (int r = 0; r < m; r++)
			for (int c = 0; c < m; c++)
				if (ts->pat[p] >> (4 * r + c) & 1)
					s += w[r * m + c];
		if (s > best_s) {
			best_s = s;
			best = p;
		}
	}
	for (int r = 0; r < m; r++)
		for (int c = 0; c < m; c++)
			keep[r * m + c] = ts->pat[best] >> (4 * r + c) & 1;
}

/*
 * Exact for any M: a maximum-weight b-matching of rows to columns (N each),
 * solved as min-cost flow by successive shortest paths (Bellman-Ford, fixed
 * edge order, so the result is deterministic).
 */
static void tile_exact_flow(int m, int n, const double *w, uint8_t *keep)
{
	const int V = 2 * m + 2, S = 0, T = 2 * m + 1;
	const int E = 2 * (m * m + 2 * m);
	int *to = malloc((size_t)E * sizeof *to), *cap = malloc((size_t)E * sizeof *cap);
	double *cost = malloc((size_t)E * sizeof *cost), *dist = malloc((size_t)V * sizeof *dist);
	int *prev = malloc((size_t)V * sizeof *prev), ne = 0;
	if (!to || !cap || !cost || !dist || !prev) {
		memset(keep, 0, (size_t)(m * m)); /* out of memory: caller reports a deficit */
		goto out;
	}
#define ADD_EDGE(a, b, c, k)                               \
	do {                                               \
		to[ne] = (b), cap[ne] = (c), cost[ne] = (k); \
		ne++;                                      \
		to[ne] = (a), cap[ne] = 0, cost[ne] = -(k);  \
		ne++;                                      \
	} while (0)
	/* edge 2k goes from from_of(2k); keep sources alongside */
	int *from = malloc((size_t)E * sizeof *from);
	if (!from) {
		memset(keep, 0, (size_t)(m * m));
		goto out;
	}
	for (int r = 0; r < m; r++) {
		from[ne] = S, from[ne + 1] = 1 + r;
		ADD_EDGE(S, 1 + r, n, 0.0);
	}
	for (int r = 0; r < m; r++)
		for (int c = 0; c < m; c++) {
			from[ne] = 1 + r, from[ne + 1] = 1 + m + c;
			ADD_EDGE(1 + r, 1 + m + c, 1, -w[r * m + c]);
		}
	for (int c = 0; c < m; c++) {
		from[ne] = 1 + m + c, from[ne + 1] = T;
		ADD_EDGE(1 + m + c, T, n, 0.0);
	}
#undef ADD_EDGE
	for (int unit = 0; unit < m * n; unit++) {
		for (int v = 0; v < V; v++) {
			dist[v] = INFINITY;
			prev[v] = -1;
		}
		dist[S] = 0;
		for (int it = 0; it < V; it++) {
			bool changed = false;
			for (int k = 0; k < ne; k++) {
				if (cap[k] > 0 && dist[from[k]] < INFINITY && dist[from[k]] + cost[k] < dist[to[k]]) {
					dist[to[k]] = dist[from[k]] + cost[k];
					prev[to[k]] = k;
					changed = true;
				}
			}
			if (!changed)
				break;
		}
		if (prev[T] < 0)
			break;
		for (int v = T; v != S; v = from[prev[v]]) {
			cap[prev[v]]--;
			cap[prev[v] ^ 1]++;
		}
	}
	for (int r = 0; r < m; r++)
		for (int c = 0; c < m; c++) {
			int k = 2 * (m + r * m + c);
			keep[r * m + c] = cap[k] == 0;
		}
	free(from);
out:
	free(to);
	free(cap);
	free(cost);
	free(dist);
	free(prev);
}

/* Greedy: largest first (ties: lower row-major index), while its row and column have room. */
static int tile_greedy(int m, int n, const double *w, uint8_t *keep)
{
	int cells = m * m, *order = malloc((size_t)cells * sizeof *order);
	int rows[NMP_PATTERN_MAX_M] = { 0 }, cols[NMP_PATTERN_MAX_M] = { 0 };
	memset(keep, 0, (size_t)cells);
	if (!order)
		return 2 * m;
	for (int i = 0; i < cells; i++)
		order[i] = i;
	/* insertion sort by (weight desc, index asc): stable and deterministic */
	for (int i = 1; i < cells; i++) {
		int x = order[i], k = i - 1;
		while (k >= 0 && w[order[k]] < w[x]) {
			order[k + 1] = order[k];
			k--;
		}
		order[k + 1] = x;
	}
	for (int i = 0; i < cells; i++) {
		int r = order[i] / m, c = order[i] % m;
		if (rows[r] < n && cols[c] < n) {
			keep[order[i]] = 1;
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

static tile_set g_tiles[5][5]; /* the valid tiles of each (m, n) for m <= 4, filled once */
static pthread_once_t g_tiles_once = PTHREAD_ONCE_INIT;

static void tiles_init(void)
{
	for (int m = 2; m <= 4; m++)
		for (int n = 1; n < m; n++) {
			int colsum[4] = { 0 };
			g_tiles[m][n].pat = malloc(512 * sizeof(uint16_t));
			if (g_tiles[m][n].pat)
				tile_enum(m, n, 0, 0, colsum, &g_tiles[m][n]);
		}
}

static void gen_tile_part(job *j, uint64_t b, uint64_t e, void *accp)
{
	gen_acc *acc = accp;
	const int m = (int)j->p->m, n = (int)j->p->n;
	const uint64_t groups = j->L / (uint64_t)m;
	double *w = malloc((size_t)(m * m) * sizeof *w);
	uint8_t *keep = malloc((size_t)(m * m));
	if (!w || !keep) {
		free(w);
		free(keep);
		acc->deficits += (e - b) * 2 * (uint64_t)m;
		return;
	}
	for (uint64_t it = b; it < e; it++) {
		uint64_t r0 = (it / groups) * (uint64_t)m, c0 = (it % groups) * (uint64_t)m;
		for (int r = 0; r < m; r++)
			for (int c = 0; c < m; c++)
				w[r * m + c] = key_mag(j->kk, j->key[at(j, r0 + (uint64_t)r, c0 + (uint64_t)c)]);
		if (j->p->greedy)
			acc->deficits += (uint64_t)tile_greedy(m, n, w, keep);
		else if (m <= 4 && g_tiles[m][n].pat)
			tile_exact_small(&g_tiles[m][n], m, w, keep);
		else
			tile_exact_flow(m, n, w, keep);
		for (int r = 0; r < m; r++)
			for (int c = 0; c < m; c++)
				mark(j, at(j, r0 + (uint64_t)r, c0 + (uint64_t)c), keep[r * m + c], acc);
	}
	free(w);
	free(keep);
}

/* ---- unstructured ------------------------------------------------------------------------------------ */

/* The k-th smallest (0-based) of n keys, by 16-bit radix passes. */
static uint64_t kth_smallest(const uint64_t *v, uint64_t n, uint64_t k, int bits)
{
	uint64_t prefix = 0, mask = 0;
	uint64_t *hist = malloc(65536 * sizeof *hist);
	if (!hist)
		return 0;
	for (int shift = bits - 16; shift >= 0; shift -= 16) {
		memset(hist, 0, 65536 * sizeof *hist);
		for (uint64_t i = 0; i < n; i++)
			if ((v[i] & mask) == prefix)
				hist[(v[i] >> shift) & 0xffff]++;
		uint64_t d = 0;
		while (hist[d] <= k) {
			k -= hist[d];
			d++;
		}
		prefix |= d << shift;
		mask |= (uint64_t)0xffff << shift;
	}
	free(hist);
	return prefix;
}

static nmp_status unstructured(job *j, gen_acc *acc)
{
	const unsigned ur = nmp_pattern_unit_rows(j->p), uc = nmp_pattern_unit_cols(j->p);
	const uint64_t rb = j->rows / ur, cb = j->L / uc, units = rb * cb;
	uint64_t *score = j->key;
	bool per_element = ur == 1 && uc == 1;
	if (!per_element) {
		score = malloc((units ? units : 1) * sizeof *score);
		if (!score)
			return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
		for (uint64_t u = 0; u < units; u++) {
			uint64_t r0 = (u / cb) * ur, c0 = (u % cb) * uc;
			double s = 0;
			for (unsigned t = 0; t < ur; t++)
				for (unsigned c = 0; c < uc; c++)
					s += key_mag(j->kk, j->key[at(j, r0 + t, c0 + c)]);
			memcpy(&score[u], &s, 8); /* a non-negative double's bits order like it */
		}
	}
	uint64_t n_prune = (uint64_t)floor(j->p->sparsity * (double)units + 0.5);
	uint64_t thr = 0, below = 0;
	if (n_prune > 0) {
		thr = kth_smallest(score, units, n_prune - 1, per_element && j->kk != KK_F64 ? 32 : 64);
		for (uint64_t u = 0; u < units; u++)
			below += score[u] < thr;
	}
	/* Ties at the threshold: the higher unit indices are zeroed first. */
	uint64_t tie_prune = n_prune - below;
	for (uint64_t u = units; u-- > 0;) {
		bool keep;
		if (n_prune == 0 || score[u] > thr) {
			keep = true;
		} else if (score[u] < thr) {
			keep = false;
		} else if (tie_prune > 0) {
			keep = false;
			tie_prune--;
		} else {
			keep = true;
		}
		uint64_t r0 = per_element ? 0 : (u / cb) * ur, c0 = per_element ? 0 : (u % cb) * uc;
		if (per_element)
			mark(j, u, keep, acc);
		else
			for (unsigned t = 0; t < ur; t++)
				for (unsigned c = 0; c < uc; c++)
					mark(j, at(j, r0 + t, c0 + c), keep, acc);
	}
	if (!per_element)
		free(score);
	return NMP_OK;
}

/* ---- check ------------------------------------------------------------------------------------------- */

static void check_tensor(job *j, nmp_mask_stats *st)
{
	const nmp_pattern *p = j->p;
	const unsigned ur = nmp_pattern_unit_rows(p), uc = nmp_pattern_unit_cols(p);
	uint64_t kept = 0;
	for (uint64_t i = 0; i < j->numel; i++)
		kept += nonzero(j, i);
	st->kept = kept;
	if (!p->structured) {
		const uint64_t rb = j->rows / ur, cb = j->L / uc, units = rb * cb;
		uint64_t zero_units = 0;
		for (uint64_t u = 0; u < units; u++) {
			bool any = false;
			for (unsigned t = 0; t < ur && !any; t++)
				for (unsigned c = 0; c < uc && !any; c++)
					any = nonzero(j, at(j, (u / cb) * ur + t, (u % cb) * uc + c));
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
						rc += nonzero(j, at(j, r0 + r, c0 + c));
						cc += nonzero(j, at(j, r0 + c, c0 + r));
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
							any = nonzero(j, at(j, r0 + t, c0 + x * uc + c));
					used += any;
				}
				bad = used > n;
			}
			st->groups++;
			st->violations += bad;
		}
	}
}

/* ---- the reference: what unstructured pruning keeps at the same density ------------------------------ */

typedef struct ref_acc {
	uint64_t count[65536];
	double sum[65536];
} ref_acc;

typedef struct ref_ctx {
	int shift;
	uint64_t prefix, pmask;
} ref_ctx;

static void ref_part(job *j, uint64_t b, uint64_t e, void *accp)
{
	ref_acc *acc = accp;
	const ref_ctx *rc = j->ref;
	for (uint64_t i = b; i < e; i++) {
		uint64_t k = j->key ? j->key[i] : elem_key(j, i);
		if ((k & rc->pmask) != rc->prefix)
			continue;
		uint64_t d = (k >> rc->shift) & 0xffff;
		acc->count[d]++;
		acc->sum[d] += key_mag(j->kk, k);
	}
}

/*
 * Sum of the `keep` largest magnitudes, read from the weight as it was:
 * radix passes of 16 bits from the top, each adding the buckets above the
 * one where the cut falls and narrowing to that bucket.
 */
static double unstructured_reference(job *j, uint64_t keep)
{
	int bits = j->kk == KK_F64 ? 64 : (j->kk == KK_F32 ? 32 : 16);
	ref_ctx rc = { 0 };
	double total = 0;
	uint64_t need = keep;
	j->ref = &rc;
	for (int shift = bits - 16; shift >= 0 && need > 0; shift -= 16) {
		int parts;
		rc.shift = shift;
		ref_acc *accs = parallel_for(j, j->numel, 1u << 20, sizeof(ref_acc), &parts, ref_part);
		if (!accs) {
			total = NAN;
			break;
		}
		ref_acc *a = &accs[0];
		for (int p = 1; p < parts; p++)
			for (int d = 0; d < 65536; d++) {
				a->count[d] += accs[p].count[d];
				a->sum[d] += accs[p].sum[d];
			}
		int d = 65535;
		while (d > 0 && a->count[d] < need) {
			need -= a->count[d];
			total += a->sum[d];
			d--;
		}
		if (a->count[d] == need || shift == 0) {
			/* The whole bucket; or, at the last digit, equal keys. */
			total += a->count[d] == need ? a->sum[d] : a->sum[d] / (double)a->count[d] * (double)need;
			need = 0;
		}
		rc.prefix |= (uint64_t)d << shift;
		rc.pmask |= (uint64_t)0xffff << shift;
		free(accs);
	}
	j->ref = NULL;
	return total;
}

/* ---- entry --------------------------------------------------------------------------------------------- */

/* How a type's magnitudes compare; quantized ones become fp32 keys. */
static bool key_kind_of(int32_t dtype, key_kind *kk)
{
	switch (dtype) {
	case NMP_DT_FLOAT: *kk = KK_F32; return true;
	case NMP_DT_FLOAT16: *kk = KK_F16; return true;
	case NMP_DT_BFLOAT16: *kk = KK_BF16; return true;
	case NMP_DT_DOUBLE: *kk = KK_F64; return true;
	case NMP_DT_INT8:
	case NMP_DT_UINT8: *kk = KK_F32; return true;
	default: return false;
	}
}

static void free_job(job *j)
{
	free(j->row_off);
	free(j->qkey);
	free(j->key);
}

nmp_status nmp_cpu_run(const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode, int threads,
		       uint8_t *mask, nmp_mask_stats *st, nmp_error *err)
{
	job j = { .t = t, .p = p, .mode = mode, .threads = threads, .mask = mask, .err = err };
	nmp_status s = NMP_OK;
	int parts;
	memset(st, 0, sizeof *st);

	if (j.threads <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		j.threads = n > 0 ? (int)n : 1;
	}
	if (!key_kind_of(t->dtype, &j.kk))
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': unsupported dtype %s", t->name,
				     nmp_dtype_name(t->dtype));
	if (t->axis < 0 || t->axis >= t->rank)
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': no group axis", t->name);
	j.numel = prod(t->dims, 0, t->rank);
	j.L = (uint64_t)t->dims[t->axis];
	j.inner = prod(t->dims, t->axis + 1, t->rank);
	j.outer = prod(t->dims, 0, t->axis);
	j.rows = j.L ? j.numel / j.L : 0;
	st->numel = j.numel;
	if (j.numel == 0)
		return NMP_OK;

	const unsigned gc = nmp_pattern_group_cols(p), ur = nmp_pattern_unit_rows(p);
	if (j.L % gc != 0 || j.rows % ur != 0)
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': shape does not fit pattern %s", t->name, p->text);

	pthread_once(&g_tiles_once, tiles_init);
	bool fused = mode != NMP_MASK_CHECK && p->structured && p->unit == NMP_UNIT_ELEMENT &&
		     p->m <= FUSED_MAX_M && j.kk != KK_F64;
	bool quantized = t->dtype == NMP_DT_INT8 || t->dtype == NMP_DT_UINT8;
	j.in = t->src ? t->src : t->data;
	if (t->src && t->src != t->data && mode == NMP_MASK_APPLY && (!fused || quantized)) {
		/* Only the fused float tiles write every element; the others prune in place. */
		memcpy(t->data, t->src, j.numel * (nmp_dtype_bits(t->dtype) / 8));
		j.in = t->data;
	}
	if (quantized)
		if ((s = quant_keys(&j)) != NMP_OK)
			goto out;

	bool need_rows = !fused && !(mode != NMP_MASK_CHECK && !p->structured && ur == 1 && gc == 1);
	if (fused) {
		s = run_fused(&j, st);
		goto out;
	}
	if (mode != NMP_MASK_CHECK) {
		j.key = malloc(j.numel * sizeof *j.key);
		if (!j.key) {
			s = nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
			goto out;
		}
	}
	scan_acc *sa = parallel_for(&j, j.numel, 1u << 18, sizeof(scan_acc), &parts, scan_part);
	if (!sa) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
		goto out;
	}
	for (int i = 0; i < parts; i++) {
		st->l1_dense += sa[i].l1;
		if (sa[i].nan_at && s == NMP_OK)
			s = nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': NaN at flat index %llu", t->name,
					  (unsigned long long)(sa[i].nan_at - 1));
	}
	free(sa);
	if (s != NMP_OK)
		goto out;
	if (need_rows || mode == NMP_MASK_CHECK)
		if ((s = build_rows(&j)) != NMP_OK)
			goto out;

	if (mode == NMP_MASK_CHECK) {
		check_tensor(&j, st);
		goto out;
	}

	uint8_t *own_mask = NULL;
	if (!j.mask) {
		own_mask = malloc(j.numel);
		if (!own_mask) {
			s = nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
			goto out;
		}
		j.mask = own_mask;
	}
	{
		gen_acc total = { 0 };
		if (!p->structured) {
			s = unstructured(&j, &total);
		} else {
			void (*fn)(job *, uint64_t, uint64_t, void *) =
				p->unit == NMP_UNIT_ELEMENT ? gen_nm_part :
				p->unit == NMP_UNIT_TILE ? gen_tile_part : gen_units_part;
			uint64_t work = (j.rows / ur) * (j.L / gc);
			gen_acc *acc = parallel_for(&j, work, 256, sizeof(gen_acc), &parts, fn);
			if (!acc) {
				s = nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
			} else {
				for (int i = 0; i < parts; i++) {
					total.kept += acc[i].kept;
					total.l1_kept += acc[i].l1_kept;
					total.deficits += acc[i].deficits;
				}
				free(acc);
			}
			st->groups = work;
		}
		st->kept = total.kept;
		st->l1_kept = total.l1_kept;
		st->deficits = total.deficits;
		if (s == NMP_OK) {
			/* The keys hold the original magnitudes, whatever happens to the data. */
			st->l1_unstructured = unstructured_reference(&j, st->kept);
			if (mode == NMP_MASK_APPLY)
				for (uint64_t i = 0; i < j.numel; i++)
					if (!j.mask[i])
						prune_elem(&j, i);
		}
	}
	free(own_mask);
out:
	free_job(&j);
	return s;
}

nmp_status nmp_cpu_magnitudes(const nmp_mask_tensor *t, float *out, nmp_error *err)
{
	job j = { .t = t, .err = err, .in = t->src ? t->src : t->data };
	if (!key_kind_of(t->dtype, &j.kk))
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': unsupported dtype %s", t->name,
				     nmp_dtype_name(t->dtype));
	j.numel = prod(t->dims, 0, t->rank);
	nmp_status s = NMP_OK;
	if (t->dtype == NMP_DT_INT8 || t->dtype == NMP_DT_UINT8)
		s = quant_keys(&j);
	for (uint64_t i = 0; s == NMP_OK && i < j.numel; i++) {
		uint64_t k = elem_key(&j, i);
		if (key_is_nan(j.kk, k))
			s = nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': NaN at flat index %llu", t->name,
					  (unsigned long long)i);
		out[i] = (float)key_mag(j.kk, k);
	}
	free_job(&j);
	return s;
}
