/*
 * cublas.cc — the CUDA emulator's libcublas.so.13: the four functions
 * kernels/sparsegpt.cu loads, on the CPU, column-major as cuBLAS is, with
 * cuBLAS's argument checks (dimensions, increments, leading dimensions).
 * Loaded by the emulated build, whose runtime it asks, by name, whether
 * each operand lies in device memory and to order the work after the
 * blocking streams (the handle's stream is the legacy stream).
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cublas_v2.h>

struct cublasContext {
	int (*on_device)(const void *, size_t);
	void (*legacy_sync)(void);
};

static bool operand(const cublasContext *h, const char *fn, const char *name, const void *p, uint64_t elems)
{
	if (!elems || h->on_device(p, elems * sizeof(double)))
		return true;
	fprintf(stderr, "nmp-emu: %s: %s (%llu doubles at %p) is not device memory\n", fn, name,
		(unsigned long long)elems, p);
	return false;
}

/* Elements spanned by a vector of n with increment inc, or a rows x cols column-major matrix with ld. */
static uint64_t vector_span(int n, int inc)
{
	return n ? (uint64_t)(n - 1) * (uint64_t)(inc < 0 ? -inc : inc) + 1 : 0;
}

static uint64_t matrix_span(int rows, int cols, int ld)
{
	return rows && cols ? (uint64_t)(cols - 1) * (uint64_t)ld + (uint64_t)rows : 0;
}

extern "C" cublasStatus_t cublasCreate_v2(cublasHandle_t *handle)
{
	cublasContext *h = new cublasContext;
	*(void **)&h->on_device = dlsym(RTLD_DEFAULT, "nmp_emu_on_device");
	*(void **)&h->legacy_sync = dlsym(RTLD_DEFAULT, "nmp_emu_legacy_sync");
	if (!h->on_device || !h->legacy_sync) {
		fprintf(stderr, "nmp-emu: the emulated cuBLAS runs only in the emulated build\n");
		delete h;
		return CUBLAS_STATUS_NOT_INITIALIZED;
	}
	*handle = h;
	return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasDestroy_v2(cublasHandle_t handle)
{
	if (!handle)
		return CUBLAS_STATUS_NOT_INITIALIZED;
	delete handle;
	return CUBLAS_STATUS_SUCCESS;
}

/* A += alpha x y^T, A m x n. */
extern "C" cublasStatus_t cublasDger_v2(cublasHandle_t h, int m, int n, const double *alpha, const double *x, int incx,
					const double *y, int incy, double *A, int lda)
{
	if (!h)
		return CUBLAS_STATUS_NOT_INITIALIZED;
	if (m < 0 || n < 0 || !incx || !incy || lda < (m > 1 ? m : 1))
		return CUBLAS_STATUS_INVALID_VALUE;
	if (!operand(h, "cublasDger", "x", x, vector_span(m, incx)) || !operand(h, "cublasDger", "y", y, vector_span(n, incy)) ||
	    !operand(h, "cublasDger", "A", A, matrix_span(m, n, lda)))
		return CUBLAS_STATUS_INVALID_VALUE;
	h->legacy_sync();
	const double a = *alpha;
	const int64_t x0 = incx < 0 ? (int64_t)(1 - m) * incx : 0, y0 = incy < 0 ? (int64_t)(1 - n) * incy : 0;
	for (int j = 0; j < n; j++) {
		const double yj = y[y0 + (int64_t)j * incy];
		for (int i = 0; i < m; i++)
			A[(int64_t)j * lda + i] += a * x[x0 + (int64_t)i * incx] * yj;
	}
	return CUBLAS_STATUS_SUCCESS;
}

/* C = alpha op(A) op(B) + beta C; op(A) m x k, op(B) k x n, C m x n. */
extern "C" cublasStatus_t cublasDgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
					 int k, const double *alpha, const double *A, int lda, const double *B, int ldb,
					 const double *beta, double *C, int ldc)
{
	if (!h)
		return CUBLAS_STATUS_NOT_INITIALIZED;
	const bool at = ta != CUBLAS_OP_N, bt = tb != CUBLAS_OP_N;
	const int a_rows = at ? k : m, b_rows = bt ? n : k;
	if (m < 0 || n < 0 || k < 0 || lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) ||
	    ldc < (m > 1 ? m : 1))
		return CUBLAS_STATUS_INVALID_VALUE;
	if (!operand(h, "cublasDgemm", "A", A, matrix_span(a_rows, at ? m : k, lda)) ||
	    !operand(h, "cublasDgemm", "B", B, matrix_span(b_rows, bt ? k : n, ldb)) ||
	    !operand(h, "cublasDgemm", "C", C, matrix_span(m, n, ldc)))
		return CUBLAS_STATUS_INVALID_VALUE;
	h->legacy_sync();
	const double a = *alpha, b = *beta;
	for (int j = 0; j < n; j++)
		for (int i = 0; i < m; i++) {
			double s = 0;
			for (int p = 0; p < k; p++) {
				const double av = at ? A[(int64_t)i * lda + p] : A[(int64_t)p * lda + i];
				const double bv = bt ? B[(int64_t)p * ldb + j] : B[(int64_t)j * ldb + p];
				s += av * bv;
			}
			double *c = &C[(int64_t)j * ldc + i];
			*c = a * s + (b == 0 ? 0 : b * *c); /* beta 0: C is not read, as in BLAS */
		}
	return CUBLAS_STATUS_SUCCESS;
}
