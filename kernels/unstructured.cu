/*
 * unstructured.cu — P% masks and the reference statistic, by radix select
 * (16-bit digits from the top, histograms on the device, the digit chosen
 * on the host), never by sorting.  Ties at the threshold zero the higher
 * unit index first: each tied unit learns how many tied units follow it from
 * per-block counts and a scan of them.
 */
#include <math.h>

#include <cub/cub.cuh>

#include "cuda_common.cuh"

static __global__ void hist_kernel(nmp_cu_view v, const uint64_t *keys, uint64_t n, int shift, uint64_t prefix,
				   uint64_t pmask, unsigned long long *hist)
{
	for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
		const uint64_t k = keys ? keys[i] : nmp_cu_key(v, i);
		if ((k & pmask) == prefix)
			atomicAdd(&hist[(k >> shift) & 0xffffu], 1ull);
	}
}

cudaError_t nmp_cu_kth_largest(const nmp_cu_view &v, const uint64_t *keys, uint64_t n, uint64_t k, int bits,
			       unsigned long long *hist, uint64_t *key_out, uint64_t *above, cudaStream_t s)
{
	static unsigned long long h[65536];
	uint64_t prefix = 0, pmask = 0, larger = 0;
	for (int shift = bits - 16; shift >= 0; shift -= 16) {
		cudaError_t e = cudaMemsetAsync(hist, 0, 65536 * sizeof *hist, s);
		if (e != cudaSuccess)
			return e;
		hist_kernel<<<nmp_cu_blocks(n), NMP_CU_THREADS, 0, s>>>(v, keys, n, shift, prefix, pmask, hist);
		if ((e = cudaGetLastError()) != cudaSuccess)
			return e;
		if ((e = cudaMemcpyAsync(h, hist, sizeof h, cudaMemcpyDeviceToHost, s)) != cudaSuccess)
			return e;
		if ((e = cudaStreamSynchronize(s)) != cudaSuccess)
			return e;
		int d = 65535;
		while (d > 0 && larger + h[d] < k)
			larger += h[d--];
		prefix |= (uint64_t)d << shift;
		pmask |= (uint64_t)0xffff << shift;
	}
	*key_out = prefix;
	*above = larger;
	return cudaSuccess;
}

static __global__ void sum_above_kernel(nmp_cu_view v, uint64_t cut)
{
	double s = 0;
	for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < v.numel; i += (uint64_t)gridDim.x * blockDim.x) {
		const uint64_t k = v.key[i];
		s += k > cut ? nmp_key_mag(v.kk, k) : 0.0;
	}
	nmp_cu_block_sum(s, &v.st->l1_above);
}

cudaError_t nmp_cu_sum_above(const nmp_cu_view &v, uint64_t cut, cudaStream_t s)
{
	sum_above_kernel<<<nmp_cu_blocks(v.numel), NMP_CU_THREADS, 0, s>>>(v, cut);
	return cudaGetLastError();
}

/* Unit scores of vectors and blocks: sums in double, rows then columns, as bits (they order like the values). */
static __global__ void unit_scores_kernel(nmp_cu_view v, uint64_t *scores)
{
	const uint64_t cb = v.L / v.uc, units = (v.rows / v.ur) * cb;
	for (uint64_t u = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; u < units; u += (uint64_t)gridDim.x * blockDim.x) {
		const uint64_t r0 = (u / cb) * v.ur, c0 = (u % cb) * v.uc;
		double s = 0;
		for (unsigned t = 0; t < v.ur; t++)
			for (unsigned c = 0; c < v.uc; c++)
				s += nmp_key_mag(v.kk, v.key[v.row_off[r0 + t] + (c0 + c) * v.inner]);
		uint64_t b;
		memcpy(&b, &s, 8);
		scores[u] = b;
	}
}

/* Ties at the threshold, counted per block of NMP_CU_THREADS units (stored in reverse block order). */
static __global__ void tie_count_kernel(const uint64_t *scores, uint64_t units, uint64_t thr, unsigned long long *rev_counts,
					uint64_t nblocks)
{
	const uint64_t u = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x;
	unsigned long long c = u < units && scores[u] == thr;
	typedef cub::BlockReduce<unsigned long long, NMP_CU_THREADS> reduce;
	__shared__ typename reduce::TempStorage tmp;
	unsigned long long total = reduce(tmp).Sum(c);
	if (threadIdx.x == 0)
		rev_counts[nblocks - 1 - blockIdx.x] = total;
}

/*
 * Marks every element of unit u: kept above the threshold, pruned below it;
 * of the tied units, the tie_prune with the highest indices are pruned.
 * rev_scan is the inclusive scan of the reversed per-block tie counts, so
 * the ties in blocks after b number rev_scan[nblocks - 1 - b] - (ties in b).
 */
static __global__ void unstructured_mark_kernel(nmp_cu_view v, const uint64_t *scores, uint64_t units, uint64_t thr,
						uint64_t tie_prune, bool prune_any, const unsigned long long *rev_scan,
						const unsigned long long *rev_counts, uint64_t nblocks)
{
	const uint64_t u = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x;
	const bool tied = u < units && scores[u] == thr;
	/* Ties after u within the block: a reversed exclusive scan. */
	typedef cub::BlockScan<unsigned, NMP_CU_THREADS> scan;
	__shared__ typename scan::TempStorage tmp;
	__shared__ unsigned flags[NMP_CU_THREADS];
	flags[threadIdx.x] = tied;
	__syncthreads();
	unsigned rev_flag = flags[NMP_CU_THREADS - 1 - threadIdx.x], rev_excl;
	scan(tmp).ExclusiveSum(rev_flag, rev_excl);
	__syncthreads();
	flags[NMP_CU_THREADS - 1 - threadIdx.x] = rev_excl; /* ties at positions after this thread's mirror */
	__syncthreads();
	if (u >= units)
		return;
	const uint64_t rb = nblocks - 1 - blockIdx.x;
	const uint64_t after_blocks = rev_scan[rb] - rev_counts[rb];
	const uint64_t after = after_blocks + flags[threadIdx.x];
	bool keep;
	if (!prune_any || scores[u] > thr)
		keep = true;
	else if (scores[u] < thr)
		keep = false;
	else
		keep = after >= tie_prune; /* the last tie_prune tied units are pruned */
	if (v.ur == 1 && v.uc == 1) {
		v.mask[u] = keep;
		return;
	}
	const uint64_t cb = v.L / v.uc, r0 = (u / cb) * v.ur, c0 = (u % cb) * v.uc;
	for (unsigned t = 0; t < v.ur; t++)
		for (unsigned c = 0; c < v.uc; c++)
			v.mask[v.row_off[r0 + t] + (c0 + c) * v.inner] = keep;
}

cudaError_t nmp_cu_unstructured(const nmp_cu_view &v, unsigned long long *hist, uint64_t *scores, cudaStream_t s,
				uint64_t *n_prune_out)
{
	cudaError_t e;
	const bool per_element = v.ur == 1 && v.uc == 1;
	const uint64_t units = per_element ? v.numel : (v.rows / v.ur) * (v.L / v.uc);
	const uint64_t *sc = v.key;
	int bits = per_element && v.kk != NMP_KK_F64 ? 32 : 64;
	if (!per_element) {
		unit_scores_kernel<<<nmp_cu_blocks(units), NMP_CU_THREADS, 0, s>>>(v, scores);
		if ((e = cudaGetLastError()) != cudaSuccess)
			return e;
		sc = scores;
	}
	const uint64_t n_prune = (uint64_t)floor(v.sparsity * (double)units + 0.5);
	*n_prune_out = n_prune;
	uint64_t thr = 0, above = 0, tie_prune = 0;
	if (n_prune > 0) {
		/* The n_prune-th smallest is the (units - n_prune + 1)-th largest. */
		if ((e = nmp_cu_kth_largest(v, sc, units, units - n_prune + 1, bits, hist, &thr, &above, s)) != cudaSuccess)
			return e;
	}
	const uint64_t nblocks = (units + NMP_CU_THREADS - 1) / NMP_CU_THREADS;
	unsigned long long *counts = NULL, *scanned = NULL;
	void *tmp = NULL;
	size_t tmp_bytes = 0;
	if ((e = cudaMallocAsync((void **)&counts, 2 * nblocks * sizeof *counts, s)) != cudaSuccess)
		return e;
	scanned = counts + nblocks;
	tie_count_kernel<<<(unsigned)nblocks, NMP_CU_THREADS, 0, s>>>(sc, units, thr, counts, nblocks);
	if ((e = cudaGetLastError()) == cudaSuccess)
		e = cub::DeviceScan::InclusiveSum(NULL, tmp_bytes, counts, scanned, (int64_t)nblocks, s);
	if (e == cudaSuccess)
		e = cudaMallocAsync(&tmp, tmp_bytes ? tmp_bytes : 1, s);
	if (e == cudaSuccess)
		e = cub::DeviceScan::InclusiveSum(tmp, tmp_bytes, counts, scanned, (int64_t)nblocks, s);
	if (e == cudaSuccess && n_prune > 0) {
		/* Of the units, `above` outrank the threshold; those tied and below make up the rest. */
		unsigned long long tied_total = 0;
		e = cudaMemcpyAsync(&tied_total, scanned + nblocks - 1, sizeof tied_total, cudaMemcpyDeviceToHost, s);
		if (e == cudaSuccess)
			e = cudaStreamSynchronize(s);
		const uint64_t below = units - above - tied_total;
		tie_prune = n_prune - below;
	}
	if (e == cudaSuccess) {
		unstructured_mark_kernel<<<(unsigned)nblocks, NMP_CU_THREADS, 0, s>>>(v, sc, units, thr, tie_prune, n_prune > 0,
										      scanned, counts, nblocks);
		e = cudaGetLastError();
	}
	cudaError_t f1 = tmp ? cudaFreeAsync(tmp, s) : cudaSuccess, f2 = cudaFreeAsync(counts, s);
	return e != cudaSuccess ? e : f1 != cudaSuccess ? f1 : f2;
}
