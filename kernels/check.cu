/*
 * check.cu — does a tensor already comply?  A zero is a stored zero (the
 * zero point for quantized weights).  One thread per N:M group (of
 * elements, vectors or blocks) or per transposable tile counts the units
 * holding a nonzero; unstructured patterns count the units that are wholly
 * zero.  The same rules as the CPU's check.c.
 */
#include "cuda_common.cuh"

static __device__ __forceinline__ bool nz_at(const nmp_cu_view &v, uint64_t r, uint64_t c)
{
	return nmp_cu_nonzero(v, v.row_off[r] + c * v.inner);
}

static __global__ void count_nonzero_kernel(nmp_cu_view v)
{
	unsigned long long n = 0;
	for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < v.numel; i += (uint64_t)gridDim.x * blockDim.x)
		n += nmp_cu_nonzero(v, i);
	nmp_cu_block_sum(n, &v.st->kept);
}

static __global__ void check_groups_kernel(nmp_cu_view v, bool tile)
{
	const unsigned m = v.m, n = v.n, ur = v.ur, uc = v.uc;
	const uint64_t gcols = (uint64_t)m * uc, groups = v.L / gcols, items = (v.rows / ur) * groups;
	unsigned long long bad_n = 0;
	for (uint64_t w = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; w < items; w += (uint64_t)gridDim.x * blockDim.x) {
		const uint64_t r0 = (w / groups) * ur, c0 = (w % groups) * gcols;
		bool bad = false;
		if (tile) {
			for (unsigned r = 0; r < m && !bad; r++) {
				unsigned rc = 0, cc = 0;
				for (unsigned c = 0; c < m; c++) {
					rc += nz_at(v, r0 + r, c0 + c);
					cc += nz_at(v, r0 + c, c0 + r);
				}
				bad = rc > n || cc > n;
			}
		} else {
			unsigned used = 0;
			for (unsigned x = 0; x < m; x++) {
				bool any = false;
				for (unsigned t = 0; t < ur && !any; t++)
					for (unsigned c = 0; c < uc && !any; c++)
						any = nz_at(v, r0 + t, c0 + x * uc + c);
				used += any;
			}
			bad = used > n;
		}
		bad_n += bad;
	}
	nmp_cu_block_sum(bad_n, &v.st->violations);
}

static __global__ void zero_units_kernel(nmp_cu_view v, unsigned long long *zero_units)
{
	const uint64_t cb = v.L / v.uc, units = (v.rows / v.ur) * cb;
	unsigned long long z = 0;
	for (uint64_t u = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; u < units; u += (uint64_t)gridDim.x * blockDim.x) {
		bool any = false;
		for (unsigned t = 0; t < v.ur && !any; t++)
			for (unsigned c = 0; c < v.uc && !any; c++)
				any = nz_at(v, (u / cb) * v.ur + t, (u % cb) * v.uc + c);
		z += !any;
	}
	nmp_cu_block_sum(z, zero_units);
}

/* Structured: violations into st; unstructured: the count of zero units into *zero_units. */
cudaError_t nmp_cu_check(const nmp_cu_view &v, unsigned long long *zero_units, cudaStream_t s)
{
	count_nonzero_kernel<<<nmp_cu_blocks(v.numel), NMP_CU_THREADS, 0, s>>>(v);
	cudaError_t e = cudaGetLastError();
	if (e != cudaSuccess)
		return e;
	if (zero_units) {
		zero_units_kernel<<<nmp_cu_blocks((v.rows / v.ur) * (v.L / v.uc)), NMP_CU_THREADS, 0, s>>>(v, zero_units);
	} else {
		const uint64_t items = (v.rows / v.ur) * (v.L / ((uint64_t)v.m * v.uc));
		check_groups_kernel<<<nmp_cu_blocks(items), NMP_CU_THREADS, 0, s>>>(v, v.tile);
	}
	return cudaGetLastError();
}
