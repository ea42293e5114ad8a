/*
 * context.cu — the CUDA backend: the device, its streams and staging, and
 * the entry that checks a case, stages the tensor and runs its family.
 *
 * Two ways through:
 *  - the fast path, element-wise N:M with M <= 32 on 32-bit keys (fp32,
 *    fp16, bf16, quantized), in slices of whole groups so that a tensor of
 *    any size runs in bounded device memory: a scan pass (NaN, dense L1,
 *    the reference histogram) and a choosing pass, each slice staged through
 *    pinned buffers on one of two streams, so that the host's copy of one
 *    slice overlaps the other stream's transfers and kernels;
 *  - the resident path, every other case: the whole tensor on the device,
 *    a key per element, the family's kernel, then the kept statistics and
 *    the output; when that does not fit the budget, supports() says so and
 *    the engine runs the tensor on the CPU backend.
 * Masks and counts are bit-identical to the CPU backend's; the floating sums
 * are the same sums in another order.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"

extern "C" {
#include "mask_cuda.h"
}

/* Pinned staging per stream.  The CUDA emulator's build sets it small, so that test tensors cross many pieces. */
#ifndef NMP_CU_STAGE_BYTES
#define NMP_CU_STAGE_BYTES ((size_t)32 << 20)
#endif
#define STAGE_BYTES ((size_t)(NMP_CU_STAGE_BYTES))

typedef struct cu_ctx {
	int device;
	cudaStream_t stream[2];
	size_t budget;             /* 0: what the device has free, less a margin */
	uint8_t *pin[2];           /* pinned staging, STAGE_BYTES each */
	nmp_cu_stats *d_st;
	unsigned long long *d_hist, *d_hist2;
} cu_ctx;

static size_t elem_bytes(int32_t dtype)
{
	return nmp_dtype_bits(dtype) / 8;
}

static size_t device_budget(const cu_ctx *c)
{
	if (c->budget)
		return c->budget;
	size_t free_b = 0, total_b = 0;
	if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess)
		return 0;
	return free_b / 10 * 8;
}

static bool fast_path(const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode)
{
	return mode != NMP_MASK_CHECK && p->structured && p->unit == NMP_UNIT_ELEMENT && p->m <= 32 &&
	       t->dtype != NMP_DT_DOUBLE;
}

static uint64_t numel_of(const nmp_mask_tensor *t)
{
	uint64_t n = 1;
	for (int a = 0; a < t->rank; a++)
		n *= (uint64_t)t->dims[a];
	return n;
}

/* Device bytes of the resident path. */
static uint64_t resident_bytes(const nmp_mask_tensor *t, const nmp_pattern *p, uint64_t numel)
{
	uint64_t rows = numel / (uint64_t)t->dims[t->axis];
	uint64_t b = numel * (2 * elem_bytes(t->dtype) + 1 + 8) + rows * 8;
	if (t->quant)
		b += numel * 4 + 2 * t->quant->n_scale * 4;
	if (!p->structured)
		b += numel * 8 + (numel / 256 + 1) * 16;
	return b;
}

static const char *cu_supports(void *ctx, const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode)
{
	cu_ctx *c = (cu_ctx *)ctx;
	nmp_key_kind kk;
	if (!nmp_key_kind_of(t->dtype, &kk))
		return "unsupported dtype";
	if (t->rank < 1 || t->rank > 64 || t->axis < 0 || t->axis >= t->rank || t->dims[t->axis] <= 0)
		return "no group axis";
	uint64_t numel = numel_of(t);
	if (numel == 0)
		return "empty tensor";
	const unsigned gc = nmp_pattern_group_cols(p), ur = nmp_pattern_unit_rows(p);
	if (gc == 0 || ur == 0 || (uint64_t)t->dims[t->axis] % gc || (numel / (uint64_t)t->dims[t->axis]) % ur)
		return "the shape does not fit the pattern";
	if (p->structured && p->unit == NMP_UNIT_TILE && p->m > NMP_CU_TILE_MAX_M)
		return "transposable tiles larger than 8x8 run on the CPU";
	if (fast_path(t, p, mode)) {
		uint64_t inner = 1;
		for (int a = t->axis + 1; a < t->rank; a++)
			inner *= (uint64_t)t->dims[a];
		uint64_t per = inner * p->m * (2 * elem_bytes(t->dtype) + 1 + (t->quant ? 4 : 0));
		if (2 * per > device_budget(c))
			return "one group's slice exceeds the device memory budget";
		return NULL;
	}
	if (resident_bytes(t, p, numel) > device_budget(c))
		return "the tensor exceeds the device memory budget";
	return NULL;
}

/* ---- staging --------------------------------------------------------------------------------- */

/* Host to device through the pinned buffers, chunks alternating between the streams. */
static nmp_status upload(cu_ctx *c, void *dst, const void *src, size_t bytes, nmp_error *err)
{
	for (size_t off = 0, k = 0; off < bytes; off += STAGE_BYTES, k++) {
		const int b = (int)(k & 1);
		const size_t n = bytes - off < STAGE_BYTES ? bytes - off : STAGE_BYTES;
		CUDA_CHECK(err, cudaStreamSynchronize(c->stream[b]));
		memcpy(c->pin[b], (const uint8_t *)src + off, n);
		CUDA_CHECK(err, cudaMemcpyAsync((uint8_t *)dst + off, c->pin[b], n, cudaMemcpyHostToDevice, c->stream[b]));
	}
	CUDA_CHECK(err, cudaStreamSynchronize(c->stream[0]));
	CUDA_CHECK(err, cudaStreamSynchronize(c->stream[1]));
	return NMP_OK;
}

static nmp_status download(cu_ctx *c, void *dst, const void *src, size_t bytes, nmp_error *err)
{
	size_t pending[2] = { 0, 0 }, pending_off[2] = { 0, 0 };
	for (size_t off = 0, k = 0; off < bytes; off += STAGE_BYTES, k++) {
		const int b = (int)(k & 1);
		const size_t n = bytes - off < STAGE_BYTES ? bytes - off : STAGE_BYTES;
		CUDA_CHECK(err, cudaStreamSynchronize(c->stream[b]));
		if (pending[b])
			memcpy((uint8_t *)dst + pending_off[b], c->pin[b], pending[b]);
		CUDA_CHECK(err, cudaMemcpyAsync(c->pin[b], (const uint8_t *)src + off, n, cudaMemcpyDeviceToHost, c->stream[b]));
		pending[b] = n;
		pending_off[b] = off;
	}
	for (int b = 0; b < 2; b++) {
		CUDA_CHECK(err, cudaStreamSynchronize(c->stream[b]));
		if (pending[b])
			memcpy((uint8_t *)dst + pending_off[b], c->pin[b], pending[b]);
	}
	return NMP_OK;
}

/* ---- the view -------------------------------------------------------------------------------- */

typedef struct cu_tensor {
	nmp_cu_view v;
	uint64_t numel;
	size_t eb;
	const uint8_t *host_in;   /* t->src or t->data */
	uint8_t *d_scale, *d_zp;  /* quantization parameters on the device */
} cu_tensor;

static nmp_status describe(const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode, cu_tensor *x,
			   nmp_error *err)
{
	nmp_cu_view *v = &x->v;
	memset(x, 0, sizeof *x);
	if (!nmp_key_kind_of(t->dtype, &v->kk))
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': unsupported dtype %s", t->name, nmp_dtype_name(t->dtype));
	v->dtype = t->dtype;
	x->numel = v->numel = numel_of(t);
	v->L = (uint64_t)t->dims[t->axis];
	v->inner = 1;
	for (int a = t->axis + 1; a < t->rank; a++)
		v->inner *= (uint64_t)t->dims[a];
	v->outer = v->numel / (v->L * v->inner);
	v->rows = v->numel / v->L;
	v->n = p->n;
	v->m = p->m;
	v->ur = nmp_pattern_unit_rows(p);
	v->uc = nmp_pattern_unit_cols(p);
	v->greedy = p->greedy;
	v->tile = p->structured && p->unit == NMP_UNIT_TILE;
	v->sparsity = p->sparsity;
	x->eb = elem_bytes(t->dtype);
	x->host_in = (const uint8_t *)(t->src ? t->src : t->data);
	(void)mode;
	if (t->dtype == NMP_DT_INT8 || t->dtype == NMP_DT_UINT8) {
		const nmp_quant_params *q = t->quant;
		if (!q)
			return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': quantized weight without parameters", t->name);
		uint64_t want = nmp_quant_geometry(t->rank, t->dims, q->axis, q->block, q->n_scale, &v->qg);
		if (q->n_scale != want)
			return nmp_error_set(err, NMP_ERR_MODEL,
					     "tensor '%s': DequantizeLinear scale has %llu values, expected %llu", t->name,
					     (unsigned long long)q->n_scale, (unsigned long long)want);
	}
	return NMP_OK;
}

/* Quantization parameters to the device (freed by release). */
static nmp_status stage_quant(cu_ctx *c, const nmp_mask_tensor *t, cu_tensor *x, nmp_error *err)
{
	const nmp_quant_params *q = t->quant;
	if (!q)
		return NMP_OK;
	const size_t sb = q->n_scale * (q->scale_dtype == NMP_DT_FLOAT ? 4 : 2);
	CUDA_CHECK(err, cudaMalloc((void **)&x->d_scale, sb));
	CUDA_CHECK(err, cudaMemcpyAsync(x->d_scale, q->scale, sb, cudaMemcpyHostToDevice, c->stream[0]));
	if (q->zero_point) {
		CUDA_CHECK(err, cudaMalloc((void **)&x->d_zp, q->n_scale));
		CUDA_CHECK(err, cudaMemcpyAsync(x->d_zp, q->zero_point, q->n_scale, cudaMemcpyHostToDevice, c->stream[0]));
	}
	x->v.zero_point = x->d_zp;
	CUDA_CHECK(err, cudaStreamSynchronize(c->stream[0]));
	return NMP_OK;
}

static void release_quant(cu_tensor *x)
{
	cudaFree(x->d_scale);
	cudaFree(x->d_zp);
	x->d_scale = x->d_zp = NULL;
}

static nmp_status fetch_stats(cu_ctx *c, nmp_cu_stats *h, nmp_error *err)
{
	CUDA_CHECK(err, cudaMemcpyAsync(h, c->d_st, sizeof *h, cudaMemcpyDeviceToHost, c->stream[0]));
	CUDA_CHECK(err, cudaStreamSynchronize(c->stream[0]));
	return NMP_OK;
}

static nmp_status reset_stats(cu_ctx *c, nmp_error *err)
{
	nmp_cu_stats z;
	memset(&z, 0, sizeof z);
	z.nan_at = ~0ull;
	CUDA_CHECK(err, cudaMemcpyAsync(c->d_st, &z, sizeof z, cudaMemcpyHostToDevice, c->stream[0]));
	CUDA_CHECK(err, cudaStreamSynchronize(c->stream[0]));
	return NMP_OK;
}

/*
 * Both histograms zeroed before either stream's kernels count into them.  The
 * streams do not wait for the legacy default stream, so a plain cudaMemset
 * could still be running when the scan starts: clear on a stream of ours and
 * wait for it.
 */
static nmp_status clear_histograms(cu_ctx *c, const nmp_mask_tensor *t, size_t bytes, nmp_error *err)
{
	cudaError_t e = cudaMemsetAsync(c->d_hist, 0, bytes, c->stream[0]);
	if (e == cudaSuccess)
		e = cudaMemsetAsync(c->d_hist2, 0, bytes, c->stream[0]);
	if (e == cudaSuccess)
		e = cudaStreamSynchronize(c->stream[0]);
	if (e != cudaSuccess)
		return nmp_error_set(err, NMP_ERR_DEVICE, "tensor '%s': CUDA: cannot clear a histogram: %s", t->name,
				     cudaGetErrorString(e));
	return NMP_OK;
}

static nmp_status nan_error(const nmp_mask_tensor *t, const nmp_cu_stats *h, nmp_error *err)
{
	if (h->nan_at == ~0ull)
		return NMP_OK;
	return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': NaN at flat index %llu", t->name, h->nan_at - 1);
}

/* ---- the fast path --------------------------------------------------------------------------- */

/* Device buffers of one stream's slice. */
typedef struct slot {
	uint8_t *in, *out, *mask;
	uint32_t *qkey;
} slot;

/*
 * Runs `pass` over the tensor in slices of `pairs` (outer, group) pairs,
 * each a contiguous run of memory: pass 0 scans, pass 1 chooses and writes.
 * Slice k runs on stream k % 2, so while one stream's slice is in its
 * kernels the host stages the next into the other stream's pinned buffer.
 * A tensor that fits is one resident slice, uploaded once for both passes
 * and brought back, through both pinned buffers in turn (upload, download).
 */
static nmp_status fast_pass(cu_ctx *c, const nmp_mask_tensor *t, cu_tensor *x, slot *sl, uint64_t pairs, int pass,
			    bool resident, uint32_t cut_bin, int cut_shift, uint8_t *mask, nmp_mask_mode mode, nmp_error *err)
{
	const uint64_t group_elems = (uint64_t)x->v.m * x->v.inner, total_pairs = x->numel / group_elems;
	const bool apply = mode == NMP_MASK_APPLY;
	for (uint64_t p0 = 0, k = 0; p0 < total_pairs; p0 += pairs, k++) {
		const int b = resident ? 0 : (int)(k & 1);
		const uint64_t np = total_pairs - p0 < pairs ? total_pairs - p0 : pairs;
		const uint64_t base = p0 * group_elems, n = np * group_elems;
		cudaStream_t s = c->stream[b];
		CUDA_CHECK(err, cudaStreamSynchronize(s)); /* this stream's previous slice is done */
		if (resident && pass == 0) {
			/* One slice: both pinned buffers in turn, the host's copy of a piece beside the last one's transfer. */
			nmp_status st = upload(c, sl[b].in, x->host_in + base * x->eb, n * x->eb, err);
			if (st != NMP_OK)
				return st;
		} else if (!resident) {
			/* Stage through pinned memory in STAGE_BYTES pieces on this stream. */
			for (uint64_t off = 0; off < n * x->eb; off += STAGE_BYTES) {
				size_t m = n * x->eb - off < STAGE_BYTES ? n * x->eb - off : STAGE_BYTES;
				CUDA_CHECK(err, cudaStreamSynchronize(s));
				memcpy(c->pin[b], x->host_in + base * x->eb + off, m);
				CUDA_CHECK(err, cudaMemcpyAsync(sl[b].in + off, c->pin[b], m, cudaMemcpyHostToDevice, s));
			}
		}
		nmp_cu_view v = x->v;
		v.numel = n;
		v.base = base;
		v.in = sl[b].in;
		v.st = c->d_st;
		if (t->quant) {
			v.qkey = NULL;
			if (!(resident && pass == 1)) {
				CUDA_CHECK(err, nmp_cu_quant_keys(v, sl[b].qkey, x->d_scale, t->quant->scale_dtype, s));
			}
			v.qkey = sl[b].qkey;
		}
		if (pass == 0) {
			CUDA_CHECK(err, nmp_cu_scan(v, c->d_hist, x->eb == 2 ? 0 : 16, s));
			continue;
		}
		v.mask = sl[b].mask;
		v.out = apply ? sl[b].out : NULL;
		CUDA_CHECK(err, nmp_cu_nm_fast(v, cut_bin, cut_shift, cut_shift ? c->d_hist2 : NULL, s));
		if (resident) { /* results back through both pinned buffers in turn (download waits for the kernel first) */
			nmp_status st = apply ? download(c, (uint8_t *)t->data + base * x->eb, sl[b].out, n * x->eb, err) : NMP_OK;
			if (st == NMP_OK && mask)
				st = download(c, mask + base, sl[b].mask, n, err);
			if (st != NMP_OK)
				return st;
			continue;
		}
		/* Results back: output and mask, through the pinned buffer, synchronously per piece. */
		if (apply) {
			CUDA_CHECK(err, cudaStreamSynchronize(s));
			for (uint64_t off = 0; off < n * x->eb; off += STAGE_BYTES) {
				size_t m = n * x->eb - off < STAGE_BYTES ? n * x->eb - off : STAGE_BYTES;
				CUDA_CHECK(err, cudaMemcpyAsync(c->pin[b], sl[b].out + off, m, cudaMemcpyDeviceToHost, s));
				CUDA_CHECK(err, cudaStreamSynchronize(s));
				memcpy((uint8_t *)t->data + base * x->eb + off, c->pin[b], m);
			}
		}
		if (mask) {
			CUDA_CHECK(err, cudaStreamSynchronize(s));
			for (uint64_t off = 0; off < n; off += STAGE_BYTES) {
				size_t m = n - off < STAGE_BYTES ? n - off : STAGE_BYTES;
				CUDA_CHECK(err, cudaMemcpyAsync(c->pin[b], sl[b].mask + off, m, cudaMemcpyDeviceToHost, s));
				CUDA_CHECK(err, cudaStreamSynchronize(s));
				memcpy(mask + base + off, c->pin[b], m);
			}
		}
	}
	CUDA_CHECK(err, cudaStreamSynchronize(c->stream[0]));
	CUDA_CHECK(err, cudaStreamSynchronize(c->stream[1]));
	return NMP_OK;
}

static nmp_status run_fast(cu_ctx *c, const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode,
			   cu_tensor *x, uint8_t *mask, nmp_mask_stats *st, nmp_error *err)
{
	const uint64_t group_elems = (uint64_t)p->m * x->v.inner, total_pairs = x->numel / group_elems;
	const size_t per_elem = 2 * x->eb + 1 + (t->quant ? 4 : 0);
	const size_t budget = device_budget(c);
	uint64_t pairs = budget / 2 / (group_elems * per_elem);
	if (pairs < 1)
		pairs = 1;
	const bool resident = pairs >= total_pairs;
	if (resident)
		pairs = total_pairs;
	const uint64_t slice_elems = pairs * group_elems;
	slot sl[2];
	memset(sl, 0, sizeof sl);
	nmp_status s = NMP_OK;
	nmp_cu_stats h;
	static unsigned long long hist[65536];
	const uint64_t keep = x->numel / p->m * p->n;
	uint32_t cut_bin = 0;
	uint64_t above_count = 0;
	const int shift = x->eb == 2 ? 0 : 16;

	for (int b = 0; b < (resident ? 1 : 2) && s == NMP_OK; b++) {
		cudaError_t e = cudaMalloc((void **)&sl[b].in, slice_elems * x->eb);
		if (e == cudaSuccess)
			e = cudaMalloc((void **)&sl[b].out, slice_elems * x->eb);
		if (e == cudaSuccess)
			e = cudaMalloc((void **)&sl[b].mask, slice_elems);
		if (e == cudaSuccess && t->quant)
			e = cudaMalloc((void **)&sl[b].qkey, slice_elems * 4);
		if (e != cudaSuccess)
			s = nmp_error_set(err, NMP_ERR_DEVICE, "tensor '%s': CUDA: %s", t->name, cudaGetErrorString(e));
	}
	if (s == NMP_OK)
		s = stage_quant(c, t, x, err);
	if (s == NMP_OK)
		s = reset_stats(c, err);
	if (s == NMP_OK)
		s = clear_histograms(c, t, sizeof hist, err);
	if (s == NMP_OK)
		s = fast_pass(c, t, x, sl, pairs, 0, resident, 0, 0, NULL, mode, err);
	if (s == NMP_OK)
		s = fetch_stats(c, &h, err);
	if (s == NMP_OK)
		s = nan_error(t, &h, err);
	if (s == NMP_OK && cudaMemcpy(hist, c->d_hist, sizeof hist, cudaMemcpyDeviceToHost) != cudaSuccess)
		s = nmp_error_set(err, NMP_ERR_DEVICE, "tensor '%s': CUDA: cannot read a histogram", t->name);
	if (s == NMP_OK) {
		/* The top-bits bin where the `keep`-th largest key falls. */
		int d = 65535;
		while (d > 0 && above_count + hist[d] < keep)
			above_count += hist[d--];
		cut_bin = (uint32_t)d;
		s = fast_pass(c, t, x, sl, pairs, 1, resident, cut_bin, shift, mask, mode, err);
	}
	if (s == NMP_OK)
		s = fetch_stats(c, &h, err);
	double ref = h.l1_above;
	if (s == NMP_OK) {
		uint64_t need = keep - above_count;
		if (shift == 0) {
			ref += (double)need * nmp_key_mag(x->v.kk, cut_bin);
		} else if (cudaMemcpy(hist, c->d_hist2, sizeof hist, cudaMemcpyDeviceToHost) != cudaSuccess) {
			s = nmp_error_set(err, NMP_ERR_DEVICE, "tensor '%s': CUDA: cannot read a histogram", t->name);
		} else {
			/* Empty bins add nothing: in the infinite bin their keys are NaNs, and 0 x NaN is NaN. */
			for (int d = 65535; d >= 0 && need > 0; d--) {
				uint64_t take = hist[d] < need ? hist[d] : need;
				if (!take)
					continue;
				ref += (double)take * nmp_key_mag(x->v.kk, (uint64_t)cut_bin << 16 | (uint64_t)d);
				need -= take;
			}
		}
	}
	if (s == NMP_OK) {
		st->l1_dense = h.l1_dense;
		st->l1_kept = h.l1_kept;
		st->l1_unstructured = ref;
		st->kept = keep;
		st->groups = x->numel / p->m;
	}
	for (int b = 0; b < 2; b++) {
		cudaFree(sl[b].in);
		cudaFree(sl[b].out);
		cudaFree(sl[b].mask);
		cudaFree(sl[b].qkey);
	}
	release_quant(x);
	return s;
}

/* ---- the resident path ----------------------------------------------------------------------- */

static nmp_status run_resident(cu_ctx *c, const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode,
			       cu_tensor *x, uint8_t *mask, nmp_mask_stats *st, nmp_error *err)
{
	nmp_cu_view v = x->v;
	const uint64_t n = x->numel;
	cudaStream_t s0 = c->stream[0];
	uint8_t *d_in = NULL, *d_out = NULL, *d_mask = NULL;
	uint64_t *d_key = NULL, *d_rows = NULL, *d_scores = NULL, *h_rows = NULL;
	uint32_t *d_qkey = NULL;
	unsigned long long *d_zero = NULL;
	nmp_cu_stats h;
	nmp_status s = NMP_OK;
	cudaError_t e = cudaSuccess;

#define TRY(call)                                                                                       \
	do {                                                                                            \
		if (s == NMP_OK && (e = (call)) != cudaSuccess)                                         \
			s = nmp_error_set(err, NMP_ERR_DEVICE, "tensor '%s': CUDA: %s (%s)", t->name,      \
					  cudaGetErrorString(e), #call);                                 \
	} while (0)

	TRY(cudaMalloc((void **)&d_in, n * x->eb));
	TRY(cudaMalloc((void **)&d_mask, n));
	TRY(cudaMalloc((void **)&d_key, n * 8));
	if (mode == NMP_MASK_APPLY)
		TRY(cudaMalloc((void **)&d_out, n * x->eb));
	if (t->quant)
		TRY(cudaMalloc((void **)&d_qkey, n * 4));
	if (!p->structured)
		TRY(cudaMalloc((void **)&d_scores, n * 8));
	/* Rows of the 2-D view, as the CPU builds them. */
	h_rows = (uint64_t *)malloc((v.rows ? v.rows : 1) * sizeof *h_rows);
	if (!h_rows && s == NMP_OK)
		s = nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
	if (s == NMP_OK)
		nmp_row_offsets(t->rank, t->dims, t->axis, t->out_axis, v.rows, h_rows);
	TRY(cudaMalloc((void **)&d_rows, (v.rows ? v.rows : 1) * 8));
	if (s == NMP_OK)
		s = upload(c, d_rows, h_rows, v.rows * 8, err);
	if (s == NMP_OK)
		s = upload(c, d_in, x->host_in, n * x->eb, err);
	if (s == NMP_OK)
		s = stage_quant(c, t, x, err);
	if (s == NMP_OK)
		s = reset_stats(c, err);
	v.in = d_in;
	v.mask = d_mask;
	v.key = d_key;
	v.row_off = d_rows;
	v.st = c->d_st;
	if (t->quant) {
		v.zero_point = x->d_zp;
		TRY(nmp_cu_quant_keys(v, d_qkey, x->d_scale, t->quant->scale_dtype, s0));
		v.qkey = d_qkey;
	}
	TRY(nmp_cu_scan(v, NULL, 0, s0));
	TRY(cudaStreamSynchronize(s0));
	if (s == NMP_OK)
		s = fetch_stats(c, &h, err);
	if (s == NMP_OK)
		s = nan_error(t, &h, err);

	if (s == NMP_OK && mode == NMP_MASK_CHECK) {
		if (!p->structured) {
			TRY(cudaMalloc((void **)&d_zero, sizeof *d_zero));
			TRY(cudaMemsetAsync(d_zero, 0, sizeof *d_zero, s0));
		}
		TRY(nmp_cu_check(v, d_zero, s0));
		if (s == NMP_OK)
			s = fetch_stats(c, &h, err);
		if (s == NMP_OK) {
			st->kept = h.kept;
			st->l1_dense = h.l1_dense;
			if (!p->structured) {
				unsigned long long zero_units = 0;
				TRY(cudaMemcpy(&zero_units, d_zero, sizeof zero_units, cudaMemcpyDeviceToHost));
				const uint64_t units = (v.rows / v.ur) * (v.L / v.uc);
				const uint64_t n_prune = (uint64_t)floor(p->sparsity * (double)units + 0.5);
				st->groups = units;
				st->violations = zero_units < n_prune ? n_prune - zero_units : 0;
			} else {
				st->groups = (v.rows / v.ur) * (v.L / ((uint64_t)v.m * v.uc));
				st->violations = h.violations;
			}
		}
		goto out;
	}

	if (p->structured) {
		if (p->unit == NMP_UNIT_ELEMENT)
			TRY(nmp_cu_nm(v, s0));
		else if (p->unit == NMP_UNIT_TILE)
			TRY(nmp_cu_tiles(v, s0));
		else
			TRY(nmp_cu_units(v, s0));
	} else {
		uint64_t n_prune;
		TRY(nmp_cu_unstructured(v, c->d_hist, d_scores, s0, &n_prune));
	}
	v.out = d_out;
	TRY(nmp_cu_finish(v, s0));
	TRY(cudaStreamSynchronize(s0));
	if (s == NMP_OK)
		s = fetch_stats(c, &h, err);
	if (s == NMP_OK) {
		st->kept = h.kept;
		st->l1_dense = h.l1_dense; /* the scan's, still in the statistics */
		st->l1_kept = h.l1_kept;
		st->deficits = h.deficits;
		if (p->structured)
			st->groups = (v.rows / v.ur) * (v.L / ((uint64_t)v.m * v.uc));
		/* The reference: the st->kept largest magnitudes of the weight as it was. */
		uint64_t cut = 0, above = 0;
		double ref = 0;
		if (st->kept > 0) {
			TRY(nmp_cu_kth_largest(v, d_key, n, st->kept, v.kk == NMP_KK_F64 ? 64 : v.kk == NMP_KK_F32 ? 32 : 16,
					       c->d_hist, &cut, &above, s0));
			TRY(nmp_cu_sum_above(v, cut, s0));
			TRY(cudaStreamSynchronize(s0));
			nmp_cu_stats h2;
			if (s == NMP_OK)
				s = fetch_stats(c, &h2, err);
			ref = h2.l1_above + (double)(st->kept - above) * nmp_key_mag(v.kk, cut);
		}
		st->l1_unstructured = ref;
	}
	if (s == NMP_OK && mode == NMP_MASK_APPLY)
		s = download(c, t->data, d_out, n * x->eb, err);
	if (s == NMP_OK && mask)
		s = download(c, mask, d_mask, n, err);
out:
#undef TRY
	cudaFree(d_in);
	cudaFree(d_out);
	cudaFree(d_mask);
	cudaFree(d_key);
	cudaFree(d_rows);
	cudaFree(d_scores);
	cudaFree(d_qkey);
	cudaFree(d_zero);
	free(h_rows);
	release_quant(x);
	return s;
}

/* ---- the backend table ------------------------------------------------------------------------ */

static nmp_status cu_run(void *ctx, const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode,
			 uint8_t *mask, nmp_mask_stats *st, nmp_error *err)
{
	cu_ctx *c = (cu_ctx *)ctx;
	cu_tensor x;
	memset(st, 0, sizeof *st);
	nmp_status s = describe(t, p, mode, &x, err);
	if (s != NMP_OK)
		return s;
	st->numel = x.numel;
	if (fast_path(t, p, mode))
		return run_fast(c, t, p, mode, &x, mask, st, err);
	return run_resident(c, t, p, mode, &x, mask, st, err);
}

static nmp_status cu_magnitudes(void *ctx, const nmp_mask_tensor *t, float *out, nmp_error *err)
{
	(void)ctx; /* the permutation search runs on the CPU, next to its magnitudes */
	return nmp_cpu_magnitudes(t, out, err);
}

static void cu_close(void *ctx)
{
	cu_ctx *c = (cu_ctx *)ctx;
	if (!c)
		return;
	for (int b = 0; b < 2; b++) {
		if (c->stream[b])
			cudaStreamDestroy(c->stream[b]);
		if (c->pin[b])
			cudaFreeHost(c->pin[b]);
	}
	cudaFree(c->d_st);
	cudaFree(c->d_hist);
	cudaFree(c->d_hist2);
	free(c);
}

static const nmp_backend cuda_backend = {
	"cuda", cu_supports, cu_run, cu_magnitudes, cu_close,
};

extern "C" nmp_status nmp_cuda_backend_open(const nmp_backend **be, void **ctx, char *why, size_t why_cap)
{
	*be = NULL;
	*ctx = NULL;
	int count = 0;
	cudaError_t e = cudaGetDeviceCount(&count);
	if (e != cudaSuccess || count == 0) {
		snprintf(why, why_cap, "%s", e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device");
		return NMP_ERR_DEVICE;
	}
	cu_ctx *c = (cu_ctx *)calloc(1, sizeof *c);
	if (!c) {
		snprintf(why, why_cap, "out of memory");
		return NMP_ERR_NOMEM;
	}
	cudaDeviceProp prop;
	e = cudaSetDevice(0);
	if (e == cudaSuccess)
		e = cudaGetDeviceProperties(&prop, 0);
	for (int b = 0; b < 2 && e == cudaSuccess; b++) {
		e = cudaStreamCreateWithFlags(&c->stream[b], cudaStreamNonBlocking);
		if (e == cudaSuccess)
			e = cudaMallocHost((void **)&c->pin[b], STAGE_BYTES);
	}
	if (e == cudaSuccess)
		e = cudaMalloc((void **)&c->d_st, sizeof(nmp_cu_stats));
	if (e == cudaSuccess)
		e = cudaMalloc((void **)&c->d_hist, 65536 * sizeof(unsigned long long));
	if (e == cudaSuccess)
		e = cudaMalloc((void **)&c->d_hist2, 65536 * sizeof(unsigned long long));
	if (e != cudaSuccess) {
		snprintf(why, why_cap, "%s", cudaGetErrorString(e));
		cu_close(c);
		return NMP_ERR_DEVICE;
	}
	snprintf(why, why_cap, "%s, %d SMs, %.1f GiB", prop.name, prop.multiProcessorCount,
		 (double)prop.totalGlobalMem / (1u << 30));
	*be = &cuda_backend;
	*ctx = c;
	return NMP_OK;
}

extern "C" void nmp_cuda_set_memory_budget(void *ctx, size_t bytes)
{
	if (ctx)
		((cu_ctx *)ctx)->budget = bytes;
}
