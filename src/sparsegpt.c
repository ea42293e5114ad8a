/*
 * sparsegpt.c — the OBS sweep of sparsegpt.h on BLAS and LAPACK.
 */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "sparsegpt.h"
#include "sparsegpt_rules.h"

bool nmp_sparsegpt_supports(const nmp_pattern *p)
{
	return p->unit == NMP_UNIT_ELEMENT;
}

uint64_t nmp_sparsegpt_block(const nmp_pattern *p)
{
	const uint64_t B = NMP_SPARSEGPT_BLOCK;
	if (!p->structured)
		return B;
	return p->m >= B ? p->m : B / p->m * p->m;
}

nmp_status nmp_sparsegpt_factor(double *H, uint64_t K, double damp, double *damp_used, const char *name,
				nmp_error *err)
{
	double *orig = malloc(K * K * sizeof *orig);
	if (!orig)
		return nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory for its Hessian", name);
	double mean = 0;
	for (uint64_t i = 0; i < K; i++) {
		if (H[i * K + i] == 0) /* an input no token touched: its weights cannot matter, keep H definite */
			H[i * K + i] = 1;
		mean += H[i * K + i];
	}
	mean /= (double)K;
	memcpy(orig, H, K * K * sizeof *orig);
	nmp_status s = NMP_ERR_MODEL;
	for (double d = damp; d <= damp * 1e6 + 1e-300; d *= 10) {
		if (d != damp)
			memcpy(H, orig, K * K * sizeof *orig);
		for (uint64_t i = 0; i < K; i++)
			H[i * K + i] += d * mean;
		int n = (int)K;
		if (nmp_dpotrf_upper(n, H) != 0 || nmp_dpotri_upper(n, H) != 0)
			continue;
		for (uint64_t i = 0; i < K; i++) /* the inverse's upper half, mirrored */
			for (uint64_t j = 0; j < i; j++)
				H[i * K + j] = H[j * K + i];
		if (nmp_dpotrf_upper(n, H) != 0)
			continue;
		for (uint64_t i = 0; i < K; i++)
			for (uint64_t j = 0; j < i; j++)
				H[i * K + j] = 0;
		*damp_used = d;
		s = NMP_OK;
		break;
	}
	free(orig);
	if (s != NMP_OK)
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': its Hessian is not positive definite even damped "
				     "by %g of its mean diagonal", name, damp * 1e6);
	return NMP_OK;
}

typedef struct scored {
	double s;
	uint64_t i;
} scored;

/* Ascending score; ties: the higher index first (pruned first). */
static int prune_order(const void *a, const void *b)
{
	const scored *x = a, *y = b;
	if (x->s != y->s)
		return x->s < y->s ? -1 : 1;
	return (x->i < y->i) - (x->i > y->i);
}

uint64_t nmp_sparsegpt_block_prune(double sparsity, uint64_t at, uint64_t n)
{
	return (uint64_t)floor(sparsity * (double)(at + n) + 0.5) - (uint64_t)floor(sparsity * (double)at + 0.5);
}

void nmp_sparsegpt_block_mask(const double *W1, const double *dd, uint64_t rows, uint64_t cnt, uint64_t prune,
			      uint8_t *m1, void *scratch)
{
	scored *sc = scratch;
	const uint64_t n = rows * cnt;
	for (uint64_t e = 0; e < n; e++)
		sc[e] = (scored){ nmp_sgpt_score(W1[e], dd[e % cnt]), e };
	qsort(sc, n, sizeof *sc, prune_order);
	memset(m1, 1, n);
	for (uint64_t e = 0; e < prune; e++)
		m1[sc[e].i] = 0;
}

size_t nmp_sparsegpt_block_scratch(uint64_t rows)
{
	return rows * NMP_SPARSEGPT_BLOCK * sizeof(scored);
}

nmp_status nmp_sparsegpt_solve(double *W, uint64_t rows, uint64_t K, double *H, double damp, const nmp_pattern *p,
			       uint64_t before, const nmp_sgpt_grid *grid, uint8_t *mask, double *damp_used,
			       const char *name, nmp_error *err)
{
	NMP_ASSERT(nmp_sparsegpt_supports(p));
	if (p->structured && K % p->m != 0)
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': %llu inputs are not a multiple of %u", name,
				     (unsigned long long)K, p->m);
	NMP_TRY(nmp_sparsegpt_factor(H, K, damp, damp_used, name, err));
	const double *U = H;
	const uint64_t B = nmp_sparsegpt_block(p);
	double *W1 = malloc(rows * B * sizeof *W1), *E1 = malloc(rows * B * sizeof *E1), *err_col = malloc(rows * sizeof *err_col);
	double *q_col = malloc(rows * sizeof *q_col);
	double *dd = malloc(B * sizeof *dd);
	uint8_t *m1 = malloc(rows * B);
	void *sc = p->structured ? NULL : malloc(nmp_sparsegpt_block_scratch(rows));
	nmp_status s = NMP_OK;
	if (!W1 || !E1 || !err_col || !q_col || !dd || !m1 || (!p->structured && !sc)) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory", name);
		goto out;
	}
	for (uint64_t i1 = 0; i1 < K; i1 += B) {
		const uint64_t cnt = K - i1 < B ? K - i1 : B;
		for (uint64_t r = 0; r < rows; r++)
			memcpy(W1 + r * cnt, W + r * K + i1, cnt * sizeof *W1);
		for (uint64_t j = 0; j < cnt; j++)
			dd[j] = U[(i1 + j) * K + i1 + j];
		if (!p->structured)
			nmp_sparsegpt_block_mask(W1, dd, rows, cnt,
						 nmp_sparsegpt_block_prune(p->sparsity, before + rows * i1, rows * cnt), m1,
						 sc);
		for (uint64_t i = 0; i < cnt; i++) {
			if (p->structured && i % p->m == 0)
				for (uint64_t r = 0; r < rows; r++)
					nmp_sgpt_choose_nm(W1 + r * cnt + i, dd + i, p->n, p->m, m1 + r * cnt + i);
			const double d = dd[i];
			for (uint64_t r = 0; r < rows; r++) {
				const uint64_t g = r * K + i1 + i;
				double w = W1[r * cnt + i], q = !m1[r * cnt + i] ? 0 : !grid ? w :
					nmp_sgpt_on_grid(w, grid->scale[g], grid->zero[g], grid->qmin, grid->qmax);
				err_col[r] = (w - q) / d;
				E1[r * cnt + i] = err_col[r];
				q_col[r] = q;
			}
			/* W1[:, i:] -= err (x) U[i1+i, i1+i : i1+cnt] */
			nmp_dger((int)rows, (int)(cnt - i), -1.0, err_col, U + (i1 + i) * K + i1 + i, W1 + i, (int)cnt);
			for (uint64_t r = 0; r < rows; r++)
				W1[r * cnt + i] = q_col[r]; /* exactly zero, or exactly on the grid, whatever the rounding */
		}
		for (uint64_t r = 0; r < rows; r++) {
			memcpy(W + r * K + i1, W1 + r * cnt, cnt * sizeof *W);
			memcpy(mask + r * K + i1, m1 + r * cnt, cnt);
		}
		if (i1 + cnt < K) /* W[:, i2:] -= E1 U[i1:i2, i2:] */
			nmp_dgemm((int)rows, (int)(K - i1 - cnt), (int)cnt, -1.0, E1, (int)cnt, U + i1 * K + i1 + cnt, (int)K, 1.0,
				  W + i1 + cnt, (int)K);
	}
out:
	free(W1);
	free(E1);
	free(err_col);
	free(q_col);
	free(dd);
	free(m1);
	free(sc);
	return s;
}

double nmp_sparsegpt_output_error(const double *D, uint64_t rows, uint64_t K, const double *H)
{
	double *DH = malloc(rows * K * sizeof *DH);
	if (!DH)
		return NAN;
	nmp_dgemm((int)rows, (int)K, (int)K, 1.0, D, (int)K, H, (int)K, 0.0, DH, (int)K);
	double e = 0;
	for (uint64_t i = 0; i < rows * K; i++)
		e += DH[i] * D[i];
	free(DH);
	return e;
}
