/*
 * sensitivity.h — which weights the model's outputs depend on most, measured
 * on calibration samples, and how many of them to keep dense for a fidelity.
 *
 * For every eligible weight, the model with that weight alone pruned (by
 * magnitude, with its pattern) runs on the samples; its fidelity is the mean
 * cosine similarity of its outputs to the dense model's (floating outputs,
 * averaged over samples and outputs).  Weights are ranked from the lowest
 * fidelity (the most sensitive) up.
 *
 * With a target fidelity, the smallest k is searched (bisection over the
 * ranking, assuming fidelity grows as more of the most sensitive weights stay
 * dense) such that the model with every eligible weight pruned except the k
 * most sensitive reaches the target; nmp_sensitivity_rules then writes the
 * rules file (`--rules`) that keeps those k dense.
 *
 * Ownership: nmp_sensitivity fills a caller-owned result; nmp_sensitivity_free
 * releases it.  It borrows the plan.
 */
#ifndef NMP_SENSITIVITY_H
#define NMP_SENSITIVITY_H

#include <stdio.h>

#include "mask.h"
#include "plan.h"

typedef struct nmp_sensitivity_opts {
	const char *data;
	size_t max_samples;
	const char *ort_library;
	int threads;
	nmp_engine *engine;
	double target;             /* > 0: search the weights to keep dense */
} nmp_sensitivity_opts;

typedef struct nmp_sensitivity_result {
	size_t *order;             /* selection indices, most sensitive first */
	double *fidelity;          /* per selection choice: pruned alone; NAN if not eligible */
	size_t n_ranked;
	double all_pruned;         /* fidelity with every eligible weight pruned */
	size_t keep_dense;         /* with a target: how many of the most sensitive stay dense */
	double reached;            /* ... and the fidelity that gives */
	bool target_met;
	size_t samples, runs;
	double seconds;
} nmp_sensitivity_result;

nmp_status nmp_sensitivity(const nmp_plan *plan, const nmp_sensitivity_opts *o, nmp_sensitivity_result *r,
			   nmp_error *err);
void nmp_sensitivity_free(nmp_sensitivity_result *r);

/* The rules file keeping the first keep_dense weights of the ranking dense (JSON array). */
nmp_status nmp_sensitivity_rules(const nmp_plan *plan, const nmp_sensitivity_result *r, FILE *f, nmp_error *err);

#endif
