/*
 * tiles.cu — transposable N:M, one thread per M x M tile: exact for M <= 4
 * by the shared tile table (in constant memory) and its scoring order;
 * exact for larger M by the shared flow solver; greedy by sort and accept
 * in the same total order as the CPU.  Tiles above NMP_CU_TILE_MAX_M run
 * on the CPU backend (the engine's fallback).
 */
#include "cuda_common.cuh"

static __constant__ uint16_t tile_patterns[] = NMP_TILE_PATTERNS_INIT;

#define TILE_CELLS (NMP_CU_TILE_MAX_M * NMP_CU_TILE_MAX_M)

static __global__ void tiles_kernel(nmp_cu_view v)
{
	const int m = (int)v.m, n = (int)v.n;
	const uint64_t groups = v.L / (uint64_t)m, items = (v.rows / (uint64_t)m) * groups;
	int n_pat;
	const int first = nmp_tile_table((unsigned)m, (unsigned)n, &n_pat);
	double w[TILE_CELLS];
	uint8_t keep[TILE_CELLS];
	int order[TILE_CELLS];
	double scratch[(NMP_TILE_FLOW_SCRATCH(NMP_CU_TILE_MAX_M) + 7) / 8];
	for (uint64_t it = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; it < items; it += (uint64_t)gridDim.x * blockDim.x) {
		const uint64_t r0 = (it / groups) * (uint64_t)m, c0 = (it % groups) * (uint64_t)m;
		for (int r = 0; r < m; r++)
			for (int c = 0; c < m; c++)
				w[r * m + c] = nmp_key_mag(v.kk, v.key[v.row_off[r0 + (uint64_t)r] + (c0 + (uint64_t)c) * v.inner]);
		if (v.greedy) {
			/* Insertion sort by the greedy order (a total order: the CPU's qsort agrees). */
			for (int i = 0; i < m * m; i++) {
				int x = i, k = i - 1;
				while (k >= 0 && nmp_tile_greedy_before(w[x], x, w[order[k]], order[k])) {
					order[k + 1] = order[k];
					k--;
				}
				order[k + 1] = x;
			}
			int rows[NMP_CU_TILE_MAX_M] = { 0 }, cols[NMP_CU_TILE_MAX_M] = { 0 };
			for (int i = 0; i < m * m; i++)
				keep[i] = 0;
			for (int i = 0; i < m * m; i++) {
				int r = order[i] / m, c = order[i] % m;
				if (rows[r] < n && cols[c] < n) {
					keep[order[i]] = 1;
					rows[r]++;
					cols[c]++;
				}
			}
			unsigned long long d = 0;
			for (int i = 0; i < m; i++)
				d += (rows[i] < n) + (cols[i] < n);
			if (d)
				atomicAdd(&v.st->deficits, d);
		} else if (n_pat > 0) {
			const uint16_t best = tile_patterns[first + nmp_tile_best(tile_patterns + first, n_pat, (unsigned)m, w)];
			for (int i = 0; i < m * m; i++)
				keep[i] = best >> (4 * (i / m) + i % m) & 1;
		} else {
			nmp_tile_exact_flow(m, n, w, keep, scratch);
		}
		for (int r = 0; r < m; r++)
			for (int c = 0; c < m; c++)
				v.mask[v.row_off[r0 + (uint64_t)r] + (c0 + (uint64_t)c) * v.inner] = keep[r * m + c];
	}
}

cudaError_t nmp_cu_tiles(const nmp_cu_view &v, cudaStream_t s)
{
	const uint64_t items = (v.rows / v.m) * (v.L / v.m);
	/* Each thread holds a tile, its order and the flow's scratch: small blocks. */
	tiles_kernel<<<(unsigned)((items + 63) / 64 ? (items + 63) / 64 : 1), 64, 0, s>>>(v);
	return cudaGetLastError();
}
