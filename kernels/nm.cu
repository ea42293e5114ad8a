/*
 * nm.cu — element-wise N:M.
 *
 * M <= 32 on 32-bit keys: one thread per group, its M keys in registers,
 * each element's rank counted against the others of its group (no sort);
 * the kernel writes the mask and the output and sums the kept magnitude in
 * the same pass, and counts the keys of the reference statistic's cut bin.
 * Groups run along the axis with stride `inner`, so neighbouring threads
 * take neighbouring inner positions and their loads coalesce; when the
 * groups are contiguous (inner == 1) each thread reads its group at once.
 *
 * Any M, any key (the general path, keys in v.key): one thread per element,
 * its rank among its group's M keys.
 */
#include "cuda_common.cuh"

/*
 * Work item w: (outer o, group g, inner position p) with p fastest; its
 * elements are at ((o * groups + g) * M + e) * inner + p = (w / inner * M + e) * inner + w % inner.
 * MT is M when it is known at compile time (the loops unroll), 0 for any
 * M <= 32 read from the view.
 */
template <int MT>
static __global__ void nm_regs_kernel(nmp_cu_view v, uint32_t cut_bin, int cut_shift, unsigned long long *cut_hist)
{
	const int m = MT ? MT : (int)v.m, n = (int)v.n;
	const uint64_t items = v.numel / (uint64_t)m;
	double kept = 0, above = 0;
	for (uint64_t w = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; w < items; w += (uint64_t)gridDim.x * blockDim.x) {
		const uint64_t base = (w / v.inner * (uint64_t)m) * v.inner + w % v.inner;
		uint32_t k[MT ? MT : 32];
		int rank[MT ? MT : 32];
#pragma unroll
		for (int e = 0; e < m; e++) {
			k[e] = (uint32_t)nmp_cu_key(v, base + (uint64_t)e * v.inner);
			rank[e] = 0;
		}
#pragma unroll
		for (int a = 0; a < m; a++)
#pragma unroll
			for (int b = a + 1; b < m; b++) {
				int ge = k[a] >= k[b]; /* a is earlier: it wins ties */
				rank[b] += ge;
				rank[a] += 1 - ge;
			}
#pragma unroll
		for (int e = 0; e < m; e++) {
			const uint64_t i = base + (uint64_t)e * v.inner;
			const bool keep = rank[e] < n;
			const double mg = nmp_key_mag(v.kk, k[e]);
			kept += keep ? mg : 0.0;
			const uint32_t bin = k[e] >> cut_shift;
			above += bin > cut_bin ? mg : 0.0;
			if (cut_hist && bin == cut_bin)
				atomicAdd(&cut_hist[k[e] & ((1u << cut_shift) - 1u)], 1ull);
			v.mask[i] = keep;
			if (v.out)
				nmp_cu_store(v, i, keep);
		}
	}
	nmp_cu_block_sum(kept, &v.st->l1_kept);
	nmp_cu_block_sum(above, &v.st->l1_above);
}

/*
 * The fast path: cut_bin/cut_shift place the reference statistic's cut (the
 * bin of the top 16 key bits where it falls; for 16-bit keys shift 0 and no
 * second level).  The kernel sums the magnitudes above that bin and counts
 * the keys inside it by their low bits.
 */
cudaError_t nmp_cu_nm_fast(const nmp_cu_view &v, uint32_t cut_bin, int cut_shift, unsigned long long *cut_hist,
			   cudaStream_t s)
{
	const unsigned blocks = nmp_cu_blocks(v.numel / v.m);
	switch (v.m) {
	case 2: nm_regs_kernel<2><<<blocks, NMP_CU_THREADS, 0, s>>>(v, cut_bin, cut_shift, cut_hist); break;
	case 4: nm_regs_kernel<4><<<blocks, NMP_CU_THREADS, 0, s>>>(v, cut_bin, cut_shift, cut_hist); break;
	case 8: nm_regs_kernel<8><<<blocks, NMP_CU_THREADS, 0, s>>>(v, cut_bin, cut_shift, cut_hist); break;
	case 16: nm_regs_kernel<16><<<blocks, NMP_CU_THREADS, 0, s>>>(v, cut_bin, cut_shift, cut_hist); break;
	case 32: nm_regs_kernel<32><<<blocks, NMP_CU_THREADS, 0, s>>>(v, cut_bin, cut_shift, cut_hist); break;
	default: nm_regs_kernel<0><<<blocks, NMP_CU_THREADS, 0, s>>>(v, cut_bin, cut_shift, cut_hist); break;
	}
	return cudaGetLastError();
}

/* General path: element i's rank among the M keys of its group (v.key), by the tie rule. */
static __global__ void nm_rank_kernel(nmp_cu_view v)
{
	const uint64_t m = v.m;
	for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < v.numel; i += (uint64_t)gridDim.x * blockDim.x) {
		const uint64_t p = i % v.inner, rest = i / v.inner;  /* rest = o * L + c */
		const uint64_t c = rest % v.L, e = c % m;
		const uint64_t first = (rest - e) * v.inner + p;
		const uint64_t ki = v.key[i];
		unsigned rank = 0;
		for (uint64_t x = 0; x < m; x++)
			rank += x != e && nmp_outranks(v.key[first + x * v.inner], x, ki, e);
		v.mask[i] = rank < v.n;
	}
}

cudaError_t nmp_cu_nm(const nmp_cu_view &v, cudaStream_t s)
{
	nm_rank_kernel<<<nmp_cu_blocks(v.numel), NMP_CU_THREADS, 0, s>>>(v);
	return cudaGetLastError();
}
