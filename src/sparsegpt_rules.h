/*
 * sparsegpt_rules.h — the choices of the sparsegpt sweep that must agree
 * between the CPU (sparsegpt.c) and the GPU (kernels/sparsegpt.cu), written
 * once: static inline here, __host__ __device__ under nvcc.
 */
#ifndef NMP_SPARSEGPT_RULES_H
#define NMP_SPARSEGPT_RULES_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define NMP_SGPT_RULE static __host__ __device__ __forceinline__
#else
#define NMP_SGPT_RULE static inline
#endif

#define NMP_SGPT_MAX_M 256

/* The sweep's score of a weight w whose column has diagonal d of U: w^2 / d^2. */
NMP_SGPT_RULE double nmp_sgpt_score(double w, double d)
{
	return w * w / (d * d);
}

/*
 * N:M at one group of one row: keep[j] for the N highest scores of w[j]
 * (column diagonals dd[j]), ties to the lower column.
 */
NMP_SGPT_RULE void nmp_sgpt_choose_nm(const double *w, const double *dd, unsigned n, unsigned m, uint8_t *keep)
{
	for (unsigned j = 0; j < m; j++)
		keep[j] = 0;
	for (unsigned k = 0; k < n; k++) {
		int best = -1;
		double bs = 0;
		for (unsigned j = 0; j < m; j++) {
			if (keep[j])
				continue;
			double s = nmp_sgpt_score(w[j], dd[j]);
			if (best < 0 || s > bs) {
				best = (int)j;
				bs = s;
			}
		}
		keep[best] = 1;
	}
}

/*
 * A weight on its integer grid: (clamp(round(w / scale) + zero, qmin, qmax) -
 * zero) x scale, rounding half to even as QuantizeLinear does (a scale of 0:
 * 0).
 */
NMP_SGPT_RULE double nmp_sgpt_on_grid(double w, double scale, double zero, double qmin, double qmax)
{
	if (scale == 0) /* every value of the grid is 0 */
		return 0;
	double q = nearbyint(w / scale) + zero;
	q = q < qmin ? qmin : q > qmax ? qmax : q;
	return (q - zero) * scale;
}

#endif
