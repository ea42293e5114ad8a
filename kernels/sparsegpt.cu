/*
 * sparsegpt.cu — the sparsegpt sweep on the GPU (see src/sparsegpt.h).
 *
 * The factor U of H^-1 comes from the host (nmp_sparsegpt_factor), so the
 * damping decision is the CPU's.  The sweep mirrors the CPU's step for step:
 * per block of columns, per column, a kernel chooses the N:M mask and puts
 * each kept weight on its grid (the rules of sparsegpt_rules.h, compiled for
 * both) and writes each row's error; a cuBLAS rank-1 update spreads it over
 * the block; after the block, one
 * cuBLAS product spreads the block's errors over the later columns.  A P%
 * block's mask is chosen on the host by the CPU's function.
 *
 * cuBLAS is loaded at run time (the CUDA toolkit's lib64, the library path,
 * or the nvidia-cublas Python wheel), so a CUDA build needs no cuBLAS to run
 * anything else.  cuBLAS is column-major: a row-major matrix is its
 * transpose, which the calls below account for.  Every CUDA and cuBLAS call
 * is checked; device memory is freed before returning.
 */
#include <cublas_v2.h>
#include <dlfcn.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
extern "C" {
#include "sparsegpt.h"
}
#include "sparsegpt_rules.h"

/* ---- cuBLAS, resolved once ------------------------------------------------------------------ */

static struct {
	bool tried;
	const char *missing;
	decltype(&cublasCreate_v2) create;
	decltype(&cublasDestroy_v2) destroy;
	decltype(&cublasDger_v2) dger;
	decltype(&cublasDgemm_v2) dgemm;
} CB;

static void *open_cublas(void)
{
	static const char *const names[] = { "libcublas.so.13", "/usr/local/cuda/lib64/libcublas.so.13", "libcublas.so" };
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
		if (h)
			return h;
	}
	/* the nvidia-cublas wheel, where Python environments keep it */
	glob_t g;
	void *h = NULL;
	if (glob("/usr/local/lib/python3*/*-packages/nvidia/cu*/lib/libcublas.so.*", 0, NULL, &g) == 0 ||
	    glob("/usr/lib/python3*/*-packages/nvidia/cu*/lib/libcublas.so.*", 0, NULL, &g) == 0) {
		for (size_t i = 0; i < g.gl_pathc && !h; i++)
			h = dlopen(g.gl_pathv[i], RTLD_NOW | RTLD_LOCAL);
		globfree(&g);
	}
	return h;
}

static bool load_cublas(void)
{
	if (CB.tried)
		return !CB.missing;
	CB.tried = true;
	void *h = open_cublas();
	if (!h) {
		CB.missing = "cuBLAS (libcublas.so.13) not found";
		return false;
	}
	*(void **)&CB.create = dlsym(h, "cublasCreate_v2");
	*(void **)&CB.destroy = dlsym(h, "cublasDestroy_v2");
	*(void **)&CB.dger = dlsym(h, "cublasDger_v2");
	*(void **)&CB.dgemm = dlsym(h, "cublasDgemm_v2");
	if (!CB.create || !CB.destroy || !CB.dger || !CB.dgemm)
		CB.missing = "cuBLAS lacks cublasCreate_v2, cublasDger_v2 or cublasDgemm_v2";
	return !CB.missing;
}

#define CUBLAS_CHECK(err, call)                                                                         \
	do {                                                                                            \
		cublasStatus_t cb_s_ = (call);                                                          \
		if (cb_s_ != CUBLAS_STATUS_SUCCESS)                                                     \
			return nmp_error_set((err), NMP_ERR_DEVICE, "cuBLAS: status %d (%s, %s:%d)",     \
					     (int)cb_s_, #call, __FILE__, __LINE__);                   \
	} while (0)

/* ---- kernels -------------------------------------------------------------------------------- */

/* The grid on the device: scale and zero point per element (rows x K), or none (scale NULL). */
typedef struct dev_grid {
	const double *scale, *zero;
	double qmin, qmax;
} dev_grid;

/*
 * Column i of the block (rows x cnt, row-major W1, its first column i1 of
 * K): the N:M choice at the first column of a group, then each row's new
 * value q (0 when pruned, else the weight, on its grid when there is one)
 * in q_col, and its error (w - q) / d in E1 and err_col.
 */
static __global__ void column_kernel(const double *W1, uint8_t *m1, double *E1, double *err_col, double *q_col,
				     const double *dd, uint64_t rows, uint64_t cnt, uint64_t i, unsigned n, unsigned m,
				     int structured, dev_grid grid, uint64_t K, uint64_t i1)
{
	uint64_t r = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (r >= rows)
		return;
	const double *w = W1 + r * cnt;
	if (structured && i % m == 0)
		nmp_sgpt_choose_nm(w + i, dd + i, n, m, m1 + r * cnt + i);
	const uint64_t g = r * K + i1 + i;
	double v = w[i], q = !m1[r * cnt + i] ? 0.0 : !grid.scale ? v :
		nmp_sgpt_on_grid(v, grid.scale[g], grid.zero[g], grid.qmin, grid.qmax);
	double e = (v - q) / dd[i];
	E1[r * cnt + i] = e;
	err_col[r] = e;
	q_col[r] = q;
}

/* Column i takes its new values: exactly zero, or exactly on the grid, whatever the rounding of the update. */
static __global__ void set_column_kernel(double *W1, const double *q_col, uint64_t rows, uint64_t cnt, uint64_t i)
{
	uint64_t r = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (r < rows)
		W1[r * cnt + i] = q_col[r];
}

/* The diagonal of U over [i1, i1 + cnt). */
static __global__ void diag_kernel(const double *U, uint64_t K, uint64_t i1, uint64_t cnt, double *dd)
{
	uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (j < cnt)
		dd[j] = U[(i1 + j) * K + i1 + j];
}

/* ---- the sweep ------------------------------------------------------------------------------ */

typedef struct dev_buffers {
	double *W, *U, *W1, *E1, *err_col, *q_col, *dd, *scale, *zero;
	uint8_t *m1;
} dev_buffers;

static void free_buffers(dev_buffers *b)
{
	cudaFree(b->W);
	cudaFree(b->U);
	cudaFree(b->W1);
	cudaFree(b->E1);
	cudaFree(b->err_col);
	cudaFree(b->q_col);
	cudaFree(b->dd);
	cudaFree(b->scale);
	cudaFree(b->zero);
	cudaFree(b->m1);
}

static nmp_status sweep(cublasHandle_t h, dev_buffers *d, double *W, uint64_t rows, uint64_t K, const double *U,
			const nmp_pattern *p, uint64_t before, const nmp_sgpt_grid *qgrid, uint8_t *mask, nmp_error *err)
{
	const uint64_t B = nmp_sparsegpt_block(p);
	const unsigned grid = (unsigned)((rows + NMP_CU_THREADS - 1) / NMP_CU_THREADS);
	const double one = 1.0, minus_one = -1.0;
	CUDA_CHECK(err, cudaMalloc(&d->W, rows * K * sizeof(double)));
	CUDA_CHECK(err, cudaMalloc(&d->U, K * K * sizeof(double)));
	CUDA_CHECK(err, cudaMalloc(&d->W1, rows * B * sizeof(double)));
	CUDA_CHECK(err, cudaMalloc(&d->E1, rows * B * sizeof(double)));
	CUDA_CHECK(err, cudaMalloc(&d->err_col, rows * sizeof(double)));
	CUDA_CHECK(err, cudaMalloc(&d->q_col, rows * sizeof(double)));
	CUDA_CHECK(err, cudaMalloc(&d->dd, B * sizeof(double)));
	CUDA_CHECK(err, cudaMalloc(&d->m1, rows * B));
	CUDA_CHECK(err, cudaMemcpy(d->W, W, rows * K * sizeof(double), cudaMemcpyHostToDevice));
	CUDA_CHECK(err, cudaMemcpy(d->U, U, K * K * sizeof(double), cudaMemcpyHostToDevice));
	dev_grid dg = {};
	if (qgrid) {
		CUDA_CHECK(err, cudaMalloc(&d->scale, rows * K * sizeof(double)));
		CUDA_CHECK(err, cudaMalloc(&d->zero, rows * K * sizeof(double)));
		CUDA_CHECK(err, cudaMemcpy(d->scale, qgrid->scale, rows * K * sizeof(double), cudaMemcpyHostToDevice));
		CUDA_CHECK(err, cudaMemcpy(d->zero, qgrid->zero, rows * K * sizeof(double), cudaMemcpyHostToDevice));
		dg.scale = d->scale;
		dg.zero = d->zero;
		dg.qmin = qgrid->qmin;
		dg.qmax = qgrid->qmax;
	}
	double *hW1 = NULL, *hdd = NULL;
	uint8_t *hm1 = NULL;
	void *scratch = NULL;
	if (!p->structured) {
		hW1 = (double *)malloc(rows * B * sizeof(double));
		hdd = (double *)malloc(B * sizeof(double));
		hm1 = (uint8_t *)malloc(rows * B);
		scratch = malloc(nmp_sparsegpt_block_scratch(rows));
	}
	nmp_status s = NMP_OK;
	if (!p->structured && (!hW1 || !hdd || !hm1 || !scratch))
		s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	for (uint64_t i1 = 0; s == NMP_OK && i1 < K; i1 += B) {
		const uint64_t cnt = K - i1 < B ? K - i1 : B;
		/* W1 = W[:, i1:i1+cnt] (row-major, leading dimension cnt) */
		cudaError_t ce = cudaMemcpy2D(d->W1, cnt * sizeof(double), d->W + i1, K * sizeof(double), cnt * sizeof(double),
					      rows, cudaMemcpyDeviceToDevice);
		if (ce == cudaSuccess) {
			diag_kernel<<<(unsigned)((cnt + 63) / 64), 64>>>(d->U, K, i1, cnt, d->dd);
			ce = cudaGetLastError();
		}
		if (ce == cudaSuccess && !p->structured) { /* the block's P% mask, by the CPU's function */
			ce = cudaMemcpy(hW1, d->W1, rows * cnt * sizeof(double), cudaMemcpyDeviceToHost);
			if (ce == cudaSuccess)
				ce = cudaMemcpy(hdd, d->dd, cnt * sizeof(double), cudaMemcpyDeviceToHost);
			if (ce == cudaSuccess) {
				nmp_sparsegpt_block_mask(hW1, hdd, rows, cnt,
							 nmp_sparsegpt_block_prune(p->sparsity, before + rows * i1, rows * cnt),
							 hm1, scratch);
				ce = cudaMemcpy(d->m1, hm1, rows * cnt, cudaMemcpyHostToDevice);
			}
		}
		for (uint64_t i = 0; ce == cudaSuccess && i < cnt; i++) {
			column_kernel<<<grid, NMP_CU_THREADS>>>(d->W1, d->m1, d->E1, d->err_col, d->q_col, d->dd, rows, cnt, i,
								 p->n, p->m, p->structured, dg, K, i1);
			ce = cudaGetLastError();
			if (ce != cudaSuccess)
				break;
			/* row-major W1[:, i:] -= err (x) U[i1+i, i1+i:]: column-major, A^T -= u err^T */
			cublasStatus_t cs = CB.dger(h, (int)(cnt - i), (int)rows, &minus_one, d->U + (i1 + i) * K + i1 + i, 1,
						    d->err_col, 1, d->W1 + i, (int)cnt);
			if (cs != CUBLAS_STATUS_SUCCESS) {
				s = nmp_error_set(err, NMP_ERR_DEVICE, "cuBLAS: dger status %d", (int)cs);
				break;
			}
			set_column_kernel<<<grid, NMP_CU_THREADS>>>(d->W1, d->q_col, rows, cnt, i);
			ce = cudaGetLastError();
		}
		if (ce == cudaSuccess && s == NMP_OK)
			ce = cudaMemcpy2D(d->W + i1, K * sizeof(double), d->W1, cnt * sizeof(double), cnt * sizeof(double), rows,
					  cudaMemcpyDeviceToDevice);
		if (ce == cudaSuccess && s == NMP_OK) /* the block's mask, straight to the host's row-major mask */
			ce = cudaMemcpy2D(mask + i1, K, d->m1, cnt, cnt, rows, cudaMemcpyDeviceToHost);
		if (ce == cudaSuccess && s == NMP_OK && i1 + cnt < K) {
			/* row-major W[:, i2:] -= E1 U[i1:i2, i2:]: column-major C^T -= U^T-part E1^T */
			cublasStatus_t cs = CB.dgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)(K - i1 - cnt), (int)rows, (int)cnt,
						     &minus_one, d->U + i1 * K + i1 + cnt, (int)K, d->E1, (int)cnt, &one,
						     d->W + i1 + cnt, (int)K);
			if (cs != CUBLAS_STATUS_SUCCESS)
				s = nmp_error_set(err, NMP_ERR_DEVICE, "cuBLAS: dgemm status %d", (int)cs);
		}
		if (ce != cudaSuccess && s == NMP_OK)
			s = nmp_error_set(err, NMP_ERR_DEVICE, "CUDA: %s (sparsegpt sweep)", cudaGetErrorString(ce));
	}
	if (s == NMP_OK) {
		cudaError_t ce = cudaMemcpy(W, d->W, rows * K * sizeof(double), cudaMemcpyDeviceToHost);
		if (ce != cudaSuccess)
			s = nmp_error_set(err, NMP_ERR_DEVICE, "CUDA: %s (sparsegpt result)", cudaGetErrorString(ce));
	}
	free(hW1);
	free(hdd);
	free(hm1);
	free(scratch);
	return s;
}

extern "C" nmp_status nmp_cuda_sparsegpt_solve(double *W, uint64_t rows, uint64_t K, double *H, double damp,
					       const nmp_pattern *p, uint64_t before, const nmp_sgpt_grid *grid,
					       uint8_t *mask, double *damp_used, const char *name, nmp_error *err)
{
	NMP_ASSERT(nmp_sparsegpt_supports(p));
	if (p->structured && (K % p->m != 0 || p->m > NMP_SGPT_MAX_M))
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': %llu inputs do not fit %s", name,
				     (unsigned long long)K, p->text);
	if (!load_cublas())
		return nmp_error_set(err, NMP_ERR_DEVICE, "tensor '%s': %s", name, CB.missing);
	int devices = 0;
	CUDA_CHECK(err, cudaGetDeviceCount(&devices));
	NMP_TRY(nmp_sparsegpt_factor(H, K, damp, damp_used, name, err));
	cublasHandle_t h;
	CUBLAS_CHECK(err, CB.create(&h));
	dev_buffers d = {};
	nmp_status s = sweep(h, &d, W, rows, K, H, p, before, grid, mask, err);
	free_buffers(&d);
	CB.destroy(h);
	return s;
}
