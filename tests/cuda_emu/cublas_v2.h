/*
 * cublas_v2.h of the CUDA emulator: the cuBLAS types and the four functions
 * kernels/sparsegpt.cu resolves at run time, with their documented
 * signatures.  cublas.cc builds them into an emulated libcublas.so.13.
 */
#ifndef NMP_EMU_CUBLAS_V2_H
#define NMP_EMU_CUBLAS_V2_H

typedef enum {
	CUBLAS_STATUS_SUCCESS = 0,
	CUBLAS_STATUS_NOT_INITIALIZED = 1,
	CUBLAS_STATUS_ALLOC_FAILED = 3,
	CUBLAS_STATUS_INVALID_VALUE = 7,
	CUBLAS_STATUS_EXECUTION_FAILED = 13,
} cublasStatus_t;

typedef enum {
	CUBLAS_OP_N = 0,
	CUBLAS_OP_T = 1,
	CUBLAS_OP_C = 2,
} cublasOperation_t;

typedef struct cublasContext *cublasHandle_t;

extern "C" {
cublasStatus_t cublasCreate_v2(cublasHandle_t *handle);
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle);
cublasStatus_t cublasDger_v2(cublasHandle_t handle, int m, int n, const double *alpha, const double *x, int incx,
			     const double *y, int incy, double *A, int lda);
cublasStatus_t cublasDgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
			      int k, const double *alpha, const double *A, int lda, const double *B, int ldb,
			      const double *beta, double *C, int ldc);
}

#endif
