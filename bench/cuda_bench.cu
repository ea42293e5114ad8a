/*
 * cuda_bench — the CUDA backend's kernels beside a device-to-device copy of
 * the same bytes, in the same run, on the same device (make bench-cuda).
 *
 * For each family and dtype, on a SIDE x SIDE MatMul-B weight (axis 0;
 * SIDE is the first argument, 8192 unless given):
 *  - copy:   cudaMemcpy device to device of the weight, (read + written) / time;
 *  - kernel: the family's kernels on resident data, the weight read and the
 *            output and mask written, over the time (keys already made for
 *            the families that need them);
 *  - engine: the whole backend from host memory and back, weight bytes / time.
 * Prints each ratio to the copy and the issue's targets.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_common.cuh"

extern "C" {
#include "mask_cuda.h"
}

#define CK(call)                                                                              \
	do {                                                                                  \
		cudaError_t e_ = (call);                                                      \
		if (e_ != cudaSuccess) {                                                      \
			fprintf(stderr, "cuda_bench: %s: %s\n", #call, cudaGetErrorString(e_)); \
			exit(1);                                                              \
		}                                                                             \
	} while (0)

static float time_ms(cudaEvent_t a, cudaEvent_t b)
{
	float ms;
	CK(cudaEventSynchronize(b));
	CK(cudaEventElapsedTime(&ms, a, b));
	return ms;
}

/* fp16 bits of the fp32 bits x, |x| < 1, truncated; below fp16's normal range, a signed zero. */
static uint16_t half_of(uint32_t x)
{
	const uint32_t sign = (x >> 16) & 0x8000u;
	const int e = (int)((x >> 23) & 0xff) - 127 + 15;
	return e <= 0 ? (uint16_t)sign : (uint16_t)(sign | (uint32_t)e << 10 | ((x >> 13) & 0x3ffu));
}

int main(int argc, char **argv)
{
	const int64_t side = argc > 1 ? atoll(argv[1]) : 8192;
	if (side < 32 || side % 32) {
		fprintf(stderr, "cuda_bench: SIDE must be a positive multiple of 32\n");
		return 2;
	}
	const nmp_backend *be;
	void *ctx;
	char why[256];
	if (nmp_cuda_backend_open(&be, &ctx, why, sizeof why) != NMP_OK) {
		printf("cuda_bench: no usable CUDA device (%s): nothing measured\n", why);
		return 0;
	}
	printf("device: %s\n", why);
	const int64_t dims[2] = { side, side };
	const uint64_t n = (uint64_t)side * (uint64_t)side, rows = (uint64_t)side;
	struct { const char *pattern; int32_t dtype; const char *target; double want; } cases[] = {
		{ "2:4", NMP_DT_FLOAT, "elementwise", 0.7 }, { "2:4", NMP_DT_FLOAT16, "elementwise", 0.7 },
		{ "16:32", NMP_DT_FLOAT, "elementwise", 0.7 }, { "16:32", NMP_DT_FLOAT16, "elementwise", 0.7 },
		{ "2:4", NMP_DT_BFLOAT16, "", 0 }, { "5:64", NMP_DT_FLOAT, "", 0 },
		{ "2:4@v4", NMP_DT_FLOAT, "", 0 }, { "2:4@b4x4", NMP_DT_FLOAT, "", 0 },
		{ "2:4@t", NMP_DT_FLOAT, "transposable", 0.3 }, { "2:4@t", NMP_DT_FLOAT16, "transposable", 0.3 },
		{ "50%", NMP_DT_FLOAT, "unstructured", 0.2 }, { "50%", NMP_DT_FLOAT16, "unstructured", 0.2 },
	};
	cudaEvent_t e0, e1;
	CK(cudaEventCreate(&e0));
	CK(cudaEventCreate(&e1));
	cudaStream_t s;
	CK(cudaStreamCreate(&s));
	printf("%-10s %-9s %10s %10s %8s %12s  %s\n", "pattern", "dtype", "copy TB/s", "kernel TB/s", "ratio", "engine GB/s", "target");
	for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
		nmp_pattern p;
		nmp_error err;
		memset(&err, 0, sizeof err);
		if (nmp_pattern_parse(cases[ci].pattern, &p, &err) != NMP_OK)
			return 1;
		const size_t eb = nmp_dtype_bits(cases[ci].dtype) / 8, bytes = n * eb;
		uint8_t *host = (uint8_t *)malloc(bytes), *mask = (uint8_t *)malloc(n);
		uint64_t st = 88172645463325252ull;
		for (uint64_t i = 0; i < n; i++) {
			st ^= st << 13, st ^= st >> 7, st ^= st << 17;
			float f = (float)((double)(st >> 11) / 9007199254740992.0 - 0.5);
			if (eb == 4)
				memcpy(host + 4 * i, &f, 4);
			else {
				uint32_t x;
				memcpy(&x, &f, 4);
				uint16_t h = cases[ci].dtype == NMP_DT_BFLOAT16 ? (uint16_t)(x >> 16) : half_of(x);
				memcpy(host + 2 * i, &h, 2);
			}
		}
		uint8_t *d_in, *d_out, *d_mask;
		uint64_t *d_key, *d_rows, *h_rows = (uint64_t *)malloc(rows * 8);
		CK(cudaMalloc(&d_in, bytes));
		CK(cudaMalloc(&d_out, bytes));
		CK(cudaMalloc(&d_mask, n));
		CK(cudaMalloc(&d_key, n * 8));
		CK(cudaMalloc(&d_rows, rows * 8));
		for (uint64_t r = 0; r < rows; r++)
			h_rows[r] = r; /* [K, N] with axis 0: row r is column r of N, the output channel */
		CK(cudaMemcpy(d_rows, h_rows, rows * 8, cudaMemcpyHostToDevice));
		CK(cudaMemcpy(d_in, host, bytes, cudaMemcpyHostToDevice));
		nmp_cu_stats *d_st;
		unsigned long long *d_hist;
		uint64_t *d_scores;
		CK(cudaMalloc(&d_st, sizeof *d_st));
		CK(cudaMemset(d_st, 0, sizeof *d_st));
		CK(cudaMalloc(&d_hist, 2 * 65536 * 8));
		CK(cudaMalloc(&d_scores, n * 8));

		/* The copy. */
		float best_copy = 1e30f, best_kernel = 1e30f;
		for (int rep = 0; rep < 5; rep++) {
			CK(cudaEventRecord(e0, s));
			CK(cudaMemcpyAsync(d_out, d_in, bytes, cudaMemcpyDeviceToDevice, s));
			CK(cudaEventRecord(e1, s));
			float ms = time_ms(e0, e1);
			best_copy = ms < best_copy ? ms : best_copy;
		}
		nmp_cu_view v;
		memset(&v, 0, sizeof v);
		v.dtype = cases[ci].dtype;
		nmp_key_kind_of(v.dtype, &v.kk);
		v.numel = n, v.L = rows, v.inner = rows, v.outer = 1, v.rows = rows;
		v.in = d_in, v.out = d_out, v.mask = d_mask, v.key = d_key, v.row_off = d_rows, v.st = d_st;
		v.n = p.n, v.m = p.m, v.ur = nmp_pattern_unit_rows(&p), v.uc = nmp_pattern_unit_cols(&p);
		v.tile = p.structured && p.unit == NMP_UNIT_TILE;
		v.sparsity = p.sparsity;
		const bool fast = p.structured && p.unit == NMP_UNIT_ELEMENT && p.m <= 32;
		if (!fast)
			CK(nmp_cu_scan(v, NULL, 0, s));
		for (int rep = 0; rep < 3; rep++) {
			CK(cudaEventRecord(e0, s));
			if (fast) {
				CK(nmp_cu_nm_fast(v, 0x3000, eb == 2 ? 0 : 16, eb == 2 ? NULL : d_hist + 65536, s));
			} else {
				if (!p.structured) {
					uint64_t np;
					CK(nmp_cu_unstructured(v, d_hist, d_scores, s, &np));
				} else if (p.unit == NMP_UNIT_ELEMENT) {
					CK(nmp_cu_nm(v, s));
				} else if (p.unit == NMP_UNIT_TILE) {
					CK(nmp_cu_tiles(v, s));
				} else {
					CK(nmp_cu_units(v, s));
				}
				CK(nmp_cu_finish(v, s));
			}
			CK(cudaEventRecord(e1, s));
			float ms = time_ms(e0, e1);
			best_kernel = ms < best_kernel ? ms : best_kernel;
		}
		/* The whole backend, from host memory and back. */
		uint8_t *out = (uint8_t *)malloc(bytes);
		nmp_mask_tensor t = { "w", out, host, cases[ci].dtype, 2, dims, 0, 1, NULL };
		nmp_mask_stats mst;
		struct timespec a, b;
		double best_engine = 1e30;
		for (int rep = 0; rep < 3; rep++) {
			clock_gettime(CLOCK_MONOTONIC, &a);
			if (be->run(ctx, &t, &p, NMP_MASK_APPLY, mask, &mst, &err) != NMP_OK) {
				fprintf(stderr, "cuda_bench: %s\n", err.message);
				return 1;
			}
			clock_gettime(CLOCK_MONOTONIC, &b);
			double sec = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
			best_engine = sec < best_engine ? sec : best_engine;
		}
		const double copy_tbs = 2.0 * (double)bytes / (best_copy * 1e-3) / 1e12;
		const double kernel_tbs = (2.0 * (double)bytes + (double)n) / (best_kernel * 1e-3) / 1e12;
		const double ratio = kernel_tbs / copy_tbs;
		char target[64] = "";
		if (cases[ci].want > 0)
			snprintf(target, sizeof target, "%s >= %.1f: %s", cases[ci].target, cases[ci].want,
				 ratio >= cases[ci].want ? "met" : "NOT met");
		printf("%-10s %-9s %10.3f %10.3f %8.2f %12.2f  %s\n", cases[ci].pattern, nmp_dtype_name(cases[ci].dtype), copy_tbs,
		       kernel_tbs, ratio, (double)bytes / best_engine / 1e9, target);
		cudaFree(d_in), cudaFree(d_out), cudaFree(d_mask), cudaFree(d_key), cudaFree(d_rows);
		cudaFree(d_st), cudaFree(d_hist), cudaFree(d_scores);
		free(host), free(mask), free(out), free(h_rows);
	}
	CK(cudaEventDestroy(e0));
	CK(cudaEventDestroy(e1));
	CK(cudaStreamDestroy(s));
	be->close(ctx);
	return 0;
}
