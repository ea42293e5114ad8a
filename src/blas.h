/*
 * blas.h — the few BLAS and LAPACK routines calibrated pruning uses, loaded
 * at run time.
 *
 * OpenBLAS starts a thread pool and reserves buffers when it is loaded, so
 * nmprune does not link it: a prune by magnitude never pays for it, and runs
 * under tight memory limits.  nmp_blas_load opens libopenblas.so.0, else the
 * reference libblas.so.3 with liblapack.so.3 (Debian's alternatives point
 * these at whichever implementation is installed), and resolves the CBLAS
 * entries and LAPACK's Fortran ones by their documented signatures.
 * Matrices here are row-major; the Cholesky routines take care of the
 * transposition that LAPACK's column-major convention implies.
 */
#ifndef NMP_BLAS_H
#define NMP_BLAS_H

#include <stdint.h>

#include "error.h"

/* Loads the libraries once (thread-safe); NMP_ERR_RUNTIME names what is missing. */
nmp_status nmp_blas_load(int threads, nmp_error *err);

/* C <- alpha A B + beta C; A m x k, B k x n, row-major with leading dimensions. */
void nmp_dgemm(int m, int n, int k, double alpha, const double *A, int lda, const double *B, int ldb, double beta,
	       double *C, int ldc);
/* A <- A + alpha x y^T; A m x n row-major. */
void nmp_dger(int m, int n, double alpha, const double *x, const double *y, double *A, int lda);
/* C <- A^T A on C's upper triangle, in single precision; A k x n row-major, C n x n. */
void nmp_ssyrk_upper_at_a(int n, int k, const float *A, int lda, float *C, int ldc);
/* Row-major upper Cholesky factor in place: A = U^T U.  0 on success. */
int nmp_dpotrf_upper(int n, double *A);
/* From the factor U of A, A^-1 in place on the upper triangle.  0 on success. */
int nmp_dpotri_upper(int n, double *A);

#endif
