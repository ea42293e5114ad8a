/*
 * sensitivity.h — which weights the model's outputs depend on most, measured
 * on calibration samples, and how many of them to keep dense for a fidelity.
 *
 * For every eligible weight, the model with that weight alone pruned (with
 * its pattern, by the method prune would use) runs on the samples; its
 * fidelity is how close its outputs stay to the dense model's, by one
 * measure per floating output, averaged over the outputs that have it:
 *  - cosine (default): compare.h's cosine (the mean over samples, pooled
 *    for outputs of one element per sample);
 *  - rel-l2: 1 - the relative L2 error over all samples;
 *  - top1: the share of rows whose largest entry along the last axis stays
 *    at the dense model's index (outputs whose last axis has one entry do
 *    not count).
 * Outputs may change shape from sample to sample (a detector's boxes); a
 * sample whose output the pruning gave another shape than the dense model's
 * counts as a complete miss (compare.h's nmp_output_acc_miss).
 * Weights are ranked from the lowest fidelity (the most sensitive) up.
 *
 * A calibrated method (wanda, sparsegpt) first calibrates every weight on the
 * dense model in one stage (calib.h), which is exactly the model each weight
 * is pruned alone in; every run then uses those decisions, sparsegpt's
 * reconstructed weights included.  With permute, the channels are planned
 * for the whole selection first (channels.h), and each weight is pruned
 * alone in the model permuted so; the fidelity is still to the original
 * dense model's outputs.
 *
 * With a target fidelity, the smallest k is searched (bisection over the
 * ranking, assuming fidelity grows as more of the most sensitive weights stay
 * dense) such that the model with every eligible weight pruned except the k
 * most sensitive reaches the target; nmp_sensitivity_rules then writes the
 * rules file (`--rules`) that keeps those k dense.  Each of those models is
 * built as prune builds it with that rules file: channels planned and
 * weights calibrated, with the same stages, on the selection that keeps the
 * k dense, so the fidelity found is the one prune gives.
 *
 * Fidelity is measured on the calibration samples, or on separate ones
 * (eval_data): a calibrated method fits the samples it saw, so held-out
 * samples say better what to expect on others.
 *
 * Ownership: nmp_sensitivity fills a caller-owned result; nmp_sensitivity_free
 * releases it.  It borrows the plan.
 */
#ifndef NMP_SENSITIVITY_H
#define NMP_SENSITIVITY_H

#include <stdio.h>

#include "calib.h"
#include "channels.h"
#include "mask.h"
#include "plan.h"

typedef enum nmp_fidelity_measure {
	NMP_FIDELITY_COSINE = 0,
	NMP_FIDELITY_REL_L2,
	NMP_FIDELITY_TOP1,
} nmp_fidelity_measure;

/* "cosine", "rel-l2", "top1" */
const char *nmp_fidelity_measure_name(nmp_fidelity_measure f);

/* The measure of that name; false (and *f untouched) for any other name. */
bool nmp_fidelity_measure_parse(const char *name, nmp_fidelity_measure *f);

typedef struct nmp_sensitivity_opts {
	const char *data;
	size_t max_samples;
	const char *ort_library;
	int threads;
	nmp_engine *engine;
	nmp_method method;         /* how each weight is pruned; wanda and sparsegpt calibrate first */
	double damp;               /* sparsegpt, as calib.h; <= 0: its default */
	size_t stages;             /* calibration stages of the models that prune several; 0: prune's default */
	bool permute;              /* permute channels first, as prune --permute (channels.h) */
	unsigned permute_effort;   /* as nmp_channels_plan's effort */
	const char *eval_data;     /* measure fidelity on these samples; NULL: on data */
	nmp_fidelity_measure fidelity;
	double target;             /* > 0: search the weights to keep dense */
} nmp_sensitivity_opts;

typedef struct nmp_sensitivity_result {
	size_t *order;             /* selection indices, most sensitive first */
	double *fidelity;          /* per selection choice: pruned alone; NAN if not eligible */
	nmp_calib_weight_result *cal; /* per selection choice, with a calibrated method: what it did; else NULL */
	size_t n_ranked;
	double all_pruned;         /* fidelity with every eligible weight pruned */
	size_t keep_dense;         /* with a target: how many of the most sensitive stay dense */
	double reached;            /* ... and the fidelity that gives */
	bool target_met;
	size_t samples, runs;      /* runs: of the model over the samples, calibration's included */
	double seconds;
} nmp_sensitivity_result;

nmp_status nmp_sensitivity(const nmp_plan *plan, const nmp_sensitivity_opts *o, nmp_sensitivity_result *r,
			   nmp_error *err);
void nmp_sensitivity_free(nmp_sensitivity_result *r);

/* The rules file keeping the first keep_dense weights of the ranking dense (JSON array). */
nmp_status nmp_sensitivity_rules(const nmp_plan *plan, const nmp_sensitivity_result *r, FILE *f, nmp_error *err);

#endif
