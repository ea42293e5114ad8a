/*
 * keys.cu — from stored values to keys on the device: quantized keys by the
 * shared rules, and the scan that finds NaNs, sums the dense L1, stores the
 * general families' keys and counts the reference histogram.
 */
#include "cuda_common.cuh"

static __global__ void quant_keys_kernel(nmp_cu_view v, uint32_t *qkey, const uint8_t *scale, int32_t scale_dtype)
{
	for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < v.numel; i += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t qi = nmp_quant_index(&v.qg, v.base + i);
		int zp = v.zero_point ? nmp_quant_value(v.dtype, v.zero_point, qi) : 0;
		qkey[i] = nmp_quant_key(nmp_quant_value(v.dtype, v.in, i), zp, nmp_quant_scale(scale, scale_dtype, qi));
	}
}

cudaError_t nmp_cu_quant_keys(const nmp_cu_view &v, uint32_t *qkey, const uint8_t *scale, int32_t scale_dtype,
			      cudaStream_t s)
{
	quant_keys_kernel<<<nmp_cu_blocks(v.numel), NMP_CU_THREADS, 0, s>>>(v, qkey, scale, scale_dtype);
	return cudaGetLastError();
}

/*
 * NaN (first flat index), dense L1, keys into v.key when present, and when
 * hist is given a count of keys by (key >> hist_shift) & 0xffff.
 */
static __global__ void scan_kernel(nmp_cu_view v, unsigned long long *hist, int hist_shift)
{
	double l1 = 0;
	for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < v.numel; i += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t k = nmp_cu_key(v, i);
		if (nmp_key_is_nan(v.kk, k)) {
			atomicMin(&v.st->nan_at, (unsigned long long)(v.base + i + 1));
			continue;
		}
		if (v.key)
			v.key[i] = k;
		if (hist)
			atomicAdd(&hist[(k >> hist_shift) & 0xffffu], 1ull);
		l1 += nmp_key_mag(v.kk, k);
	}
	nmp_cu_block_sum(l1, &v.st->l1_dense);
}

cudaError_t nmp_cu_scan(const nmp_cu_view &v, unsigned long long *hist, int hist_shift, cudaStream_t s)
{
	scan_kernel<<<nmp_cu_blocks(v.numel), NMP_CU_THREADS, 0, s>>>(v, hist, hist_shift);
	return cudaGetLastError();
}

/* After a general family chose its mask: kept count and magnitude, and the output when applying. */
static __global__ void finish_kernel(nmp_cu_view v)
{
	double kept = 0;
	unsigned long long n = 0;
	for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < v.numel; i += (uint64_t)gridDim.x * blockDim.x) {
		const bool keep = v.mask[i];
		if (keep) {
			n++;
			kept += nmp_key_mag(v.kk, v.key[i]);
		}
		if (v.out)
			nmp_cu_store(v, i, keep);
	}
	nmp_cu_block_sum(kept, &v.st->l1_kept);
	nmp_cu_block_sum(n, &v.st->kept);
}

cudaError_t nmp_cu_finish(const nmp_cu_view &v, cudaStream_t s)
{
	finish_kernel<<<nmp_cu_blocks(v.numel), NMP_CU_THREADS, 0, s>>>(v);
	return cudaGetLastError();
}
