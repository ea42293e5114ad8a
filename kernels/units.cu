/*
 * units.cu — vector-wise (V rows x 1 column) and block-wise (R x C) N:M:
 * one thread per (row block, group of M units).  A unit's score is the sum
 * of its magnitudes in double, rows then columns in order, as on the CPU, so
 * the scores and therefore the masks are bit-identical; ties keep the lower
 * unit index.
 */
#include "cuda_common.cuh"

static __global__ void units_kernel(nmp_cu_view v)
{
	const unsigned m = v.m, n = v.n, ur = v.ur, uc = v.uc;
	const uint64_t gcols = (uint64_t)m * uc, groups = v.L / gcols, items = (v.rows / ur) * groups;
	double score[NMP_PATTERN_MAX_M];
	for (uint64_t w = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; w < items; w += (uint64_t)gridDim.x * blockDim.x) {
		const uint64_t r0 = (w / groups) * ur, c0 = (w % groups) * gcols;
		for (unsigned x = 0; x < m; x++) {
			double s = 0;
			for (unsigned t = 0; t < ur; t++)
				for (unsigned c = 0; c < uc; c++)
					s += nmp_key_mag(v.kk, v.key[v.row_off[r0 + t] + (c0 + (uint64_t)x * uc + c) * v.inner]);
			score[x] = s;
		}
		for (unsigned x = 0; x < m; x++) {
			unsigned rank = 0;
			for (unsigned y = 0; y < m; y++)
				rank += score[y] > score[x] || (score[y] == score[x] && y < x);
			const uint8_t keep = rank < n;
			for (unsigned t = 0; t < ur; t++)
				for (unsigned c = 0; c < uc; c++)
					v.mask[v.row_off[r0 + t] + (c0 + (uint64_t)x * uc + c) * v.inner] = keep;
		}
	}
}

cudaError_t nmp_cu_units(const nmp_cu_view &v, cudaStream_t s)
{
	const uint64_t items = (v.rows / v.ur) * (v.L / ((uint64_t)v.m * v.uc));
	units_kernel<<<nmp_cu_blocks(items), NMP_CU_THREADS, 0, s>>>(v);
	return cudaGetLastError();
}
