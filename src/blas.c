/*
 * blas.c — BLAS and LAPACK through dlopen (see blas.h).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

#include "blas.h"

/* CBLAS enumerations (cblas.h) */
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112, UPPER = 121 };

typedef void (*dgemm_fn)(int, int, int, int, int, int, double, const double *, int, const double *, int, double,
			 double *, int);
typedef void (*dger_fn)(int, int, int, double, const double *, int, const double *, int, double *, int);
typedef void (*ssyrk_fn)(int, int, int, int, int, float, const float *, int, float, float *, int);
/* LAPACK, Fortran calling convention: every argument by reference, then the hidden length of the string */
typedef void (*dpotrf_fn)(const char *, const int *, double *, const int *, int *, size_t);
typedef void (*threads_fn)(int);

static struct {
	pthread_once_t once;
	const char *missing;
	dgemm_fn dgemm;
	dger_fn dger;
	ssyrk_fn ssyrk;
	dpotrf_fn dpotrf, dpotri;
	threads_fn set_threads;
} B = { .once = PTHREAD_ONCE_INIT };

static void *sym(void *a, void *b, const char *name)
{
	void *p = a ? dlsym(a, name) : NULL;
	return p ? p : b ? dlsym(b, name) : NULL;
}

static void load(void)
{
	void *blas = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL), *lapack = NULL;
	if (!blas) {
		blas = dlopen("libblas.so.3", RTLD_NOW | RTLD_LOCAL);
		lapack = dlopen("liblapack.so.3", RTLD_NOW | RTLD_LOCAL);
	}
	if (!blas) {
		B.missing = "BLAS (libopenblas.so.0 or libblas.so.3: apt-get install libopenblas0)";
		return;
	}
	*(void **)&B.dgemm = sym(blas, lapack, "cblas_dgemm");
	*(void **)&B.dger = sym(blas, lapack, "cblas_dger");
	*(void **)&B.ssyrk = sym(blas, lapack, "cblas_ssyrk");
	*(void **)&B.dpotrf = sym(blas, lapack, "dpotrf_");
	*(void **)&B.dpotri = sym(blas, lapack, "dpotri_");
	*(void **)&B.set_threads = sym(blas, NULL, "openblas_set_num_threads");
	if (!B.dgemm || !B.dger || !B.ssyrk)
		B.missing = "CBLAS (cblas_dgemm, cblas_dger, cblas_ssyrk)";
	else if (!B.dpotrf || !B.dpotri)
		B.missing = "LAPACK (dpotrf, dpotri: apt-get install libopenblas0 or liblapack3)";
}

nmp_status nmp_blas_load(int threads, nmp_error *err)
{
	pthread_once(&B.once, load);
	if (B.missing)
		return nmp_error_set(err, NMP_ERR_RUNTIME, "sparsegpt needs %s", B.missing);
	if (threads > 0 && B.set_threads)
		B.set_threads(threads);
	return NMP_OK;
}

void nmp_dgemm(int m, int n, int k, double alpha, const double *A, int lda, const double *Bm, int ldb, double beta,
	       double *C, int ldc)
{
	B.dgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, alpha, A, lda, Bm, ldb, beta, C, ldc);
}

void nmp_dger(int m, int n, double alpha, const double *x, const double *y, double *A, int lda)
{
	B.dger(ROW_MAJOR, m, n, alpha, x, 1, y, 1, A, lda);
}

void nmp_ssyrk_upper_at_a(int n, int k, const float *A, int lda, float *C, int ldc)
{
	B.ssyrk(ROW_MAJOR, UPPER, TRANS, n, k, 1.0f, A, lda, 0.0f, C, ldc);
}

/*
 * A row-major matrix is its column-major transpose: the row-major upper
 * triangle is LAPACK's lower one, and A = U^T U (row-major) is A = L L^T.
 */
int nmp_dpotrf_upper(int n, double *A)
{
	int info = 0;
	B.dpotrf("L", &n, A, &n, &info, 1);
	return info;
}

int nmp_dpotri_upper(int n, double *A)
{
	int info = 0;
	B.dpotri("L", &n, A, &n, &info, 1);
	return info;
}
