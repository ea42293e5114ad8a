/*
 * calib.h — calibrated pruning: run the model on the user's samples, keep
 * per-weight activation statistics, and choose each weight's mask from them.
 *
 * Statistics.  For every eligible weight whose consumers are MatMul, Gemm or
 * Conv nodes of the main graph, the consumer's data input (MatMul's other
 * operand, Gemm's A or B as transA/transB say, Conv's X) is added as an extra
 * output of an in-memory copy of the model, and each sample's activation is
 * reduced as it arrives, over every axis but the channel:
 *  - wanda: per input channel, the sum of squares (norm^2);
 *  - sparsegpt: H = sum x x^T over the layer's input vectors (products of a
 *    batch of vectors in single precision, summed in double; Conv: the
 *    unfolded patches, with strides, pads, auto_pad, dilations and groups;
 *    per group, inputs ordered kernel position major, channel minor, so that
 *    an N:M group of channels is M consecutive inputs).
 * Memory holds the statistics and one sample's activations; when the
 * statistics would pass the budget, the weights are split into passes over
 * the data.
 *
 * Choice.  wanda scores |w| x norm of the input channel it reads and runs the
 * engine on the scores, so every pattern family and the engine's tie and NaN
 * rules apply.  sparsegpt (sparsegpt.h) serves element-wise N:M and P% and
 * rewrites the kept weights (fp32 and fp64 in place, fp16 and bf16 rounded
 * to nearest even); a quantized weight takes the sparsegpt mask and keeps its
 * values (re-quantizing reconstructed weights would change its grid).
 * A weight the statistics cannot reach (a subgraph, ConvTranspose, a Conv
 * weight behind a Transpose for sparsegpt, a batched MatMul weight for
 * sparsegpt) is pruned by magnitude, and its note says why.
 *
 * Stages.  The eligible weights are taken in graph order in `stages` groups
 * (default 8): each group's statistics come from the model with every earlier
 * group already pruned and rebuilt, then its masks are decided, so a layer
 * is calibrated on the inputs it will see (1 stage: every statistic from the
 * dense model; as many stages as weights: layer by layer).  A stage also
 * ends where its statistics would pass the memory budget; a sparsegpt
 * Hessian lives only until its weight is decided.
 *
 * Permutation.  With a channel plan (--permute), the model runs, and each
 * weight is decided, with every tensor the plan touches permuted: the
 * statistics and decisions are those of the permuted model, which computes
 * what the original does.
 *
 * Ownership: nmp_calibrate allocates the result, nmp_calib_free releases it;
 * it borrows the plan.
 */
#ifndef NMP_CALIB_H
#define NMP_CALIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channels.h"
#include "mask.h"
#include "plan.h"

typedef enum nmp_method {
	NMP_METHOD_MAGNITUDE = 0,
	NMP_METHOD_WANDA,
	NMP_METHOD_SPARSEGPT,
} nmp_method;

/* "magnitude", "wanda", "sparsegpt" */
const char *nmp_method_name(nmp_method m);

/* The method of that name; false (and *m untouched) for any other name. */
bool nmp_method_parse(const char *name, nmp_method *m);

#define NMP_CALIB_STAGES 8       /* the stages when none are asked for */

typedef struct nmp_calib_opts {
	nmp_method method;
	const char *data;            /* --calibration */
	size_t max_samples;          /* 0: all */
	double damp;                 /* sparsegpt, relative to the mean diagonal; <= 0: 0.01 */
	const char *ort_library;     /* NULL: search */
	int threads;                 /* 0: all cores */
	uint64_t memory_budget;      /* statistics per pass, bytes; 0: 4 GiB */
	size_t stages;               /* passes in graph order, each on the model pruned so far; 0: 8 */
	nmp_engine *engine;          /* chooses the masks (wanda's scores, magnitude's comparison) */
	const char *stats_path;      /* write the statistics as safetensors (tests), or NULL */
	const nmp_channels *channels; /* --permute: calibrate the model, and decide its weights, as permuted */
} nmp_calib_opts;

/* What calibration says about one weight, for reports and metadata. */
typedef struct nmp_calib_weight_result {
	nmp_method method;           /* what chose its mask (magnitude when it fell back) */
	char note[160];              /* why it fell back, or what was done differently; "" */
	double score_kept;           /* wanda: score mass kept by its mask, NAN otherwise */
	double score_kept_magnitude; /* wanda: ... by the magnitude mask */
	double error;                /* sparsegpt: relative squared output error on the samples */
	double error_magnitude;      /* sparsegpt: ... of the magnitude mask without reconstruction */
	double damp;                 /* sparsegpt: damping that factorized */
	bool reconstructed;          /* kept weights rewritten */
} nmp_calib_weight_result;

typedef struct nmp_calib nmp_calib;

/* Checks the method against every eligible weight's pattern before anything runs (usage errors). */
nmp_status nmp_calib_check(const nmp_plan *plan, nmp_method method, nmp_error *err);

nmp_status nmp_calibrate(const nmp_plan *plan, const nmp_calib_opts *o, nmp_calib **out, nmp_error *err);
void nmp_calib_free(nmp_calib **c);

nmp_method nmp_calib_method(const nmp_calib *c);
size_t nmp_calib_samples(const nmp_calib *c);
uint64_t nmp_calib_tokens(const nmp_calib *c);   /* activation vectors seen, summed over weights' first uses */
double nmp_calib_seconds(const nmp_calib *c);
const char *nmp_calib_runtime(const nmp_calib *c); /* "ONNX Runtime 1.31.1" */

size_t nmp_calib_passes(const nmp_calib *c);      /* runs of the model over the data */

/* What calibration says of selection choice ci (as nmp_calib_prune fills it), or NULL if it decided none. */
const nmp_calib_weight_result *nmp_calib_weight(const nmp_calib *c, size_t ci);

/*
 * The decision for selection choice ci, made by nmp_calibrate: like
 * nmp_engine_run for APPLY (every byte of t->data written with the pruned
 * values) and DRY, filling `mask` (may be NULL), the statistics in st (in
 * magnitudes of the weight as it was) and what calibration adds in *cr.
 */
nmp_status nmp_calib_prune(const nmp_calib *c, size_t ci, const nmp_mask_tensor *t, nmp_mask_mode mode, uint8_t *mask,
			   nmp_mask_stats *st, nmp_calib_weight_result *cr, nmp_error *err);

#endif
