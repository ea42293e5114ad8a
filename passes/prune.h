/*
 * prune.h — the prune and check passes.
 *
 * prune: every eligible weight of a plan goes through the mask engine while
 * model I/O writes the output, so each payload is masked on its way into the
 * output and never in the input (after its channels are permuted, when a
 * channel plan is given: every tensor the plan touches is rewritten then); the metadata (nmprune.version,
 * nmprune.pattern, nmprune.weights) is recorded with it.  A dry run computes
 * the same masks and statistics from read-only views and writes nothing.
 *
 * check: every eligible weight is tested against its pattern as it is.
 *
 * Passes never print; progress goes through a callback.  Ownership: the
 * result arrays are allocated by the pass and released by
 * nmp_pass_result_free; they borrow the plan.
 */
#ifndef NMP_PRUNE_H
#define NMP_PRUNE_H

#include "calib.h"
#include "channels.h"
#include "mask.h"
#include "model.h"
#include "plan.h"

typedef void (*nmp_progress_fn)(void *ctx, size_t done, size_t total, uint64_t bytes_done,
				uint64_t bytes_total);

struct nmp_pass_result;
struct nmp_pending;

typedef struct nmp_prune_opts {
	const char *output;          /* NULL with dry_run */
	bool dry_run;
	bool in_place;
	const char *external_data;
	bool general_path;           /* force re-serialization (tests, bench) */
	nmp_engine *engine;
	const char *masks_path;      /* write every mask here as safetensors (BOOL), or NULL */
	const nmp_channels *channels; /* permute channels before masking, or NULL */
	bool permute_only;           /* with channels: write the permuted model unmasked */
	nmp_calib *calib;            /* masks by a calibrated method (calib.h), or NULL: magnitude */
	nmp_progress_fn progress;
	void *progress_ctx;

	/*
	 * Side outputs that land with the model or not at all (may be NULL):
	 * the masks file is added to it, and before_commit (may be NULL) is
	 * called with commit_ctx and the finished result once the output is
	 * written and synced, before anything is renamed, so that reports
	 * written there into `pending` commit with the model.  In a dry run it
	 * is called when the masks are computed.
	 */
	struct nmp_pending *pending;
	nmp_status (*before_commit)(void *ctx, const struct nmp_pass_result *r, nmp_error *err);
	void *commit_ctx;
} nmp_prune_opts;

typedef struct nmp_weight_result {
	const nmp_choice *choice;
	bool done;                   /* pruned (or checked) */
	nmp_mask_stats stats;
	bool calibrated;             /* cal holds what calibration says */
	nmp_calib_weight_result cal;
} nmp_weight_result;

typedef struct nmp_pass_result {
	nmp_weight_result *weights;  /* one per candidate, in graph order */
	size_t n;
	size_t n_done;
	uint64_t params_total;       /* elements of every candidate weight */
	uint64_t params_zeroed;      /* pruned away (check: zero now) */
	uint64_t violations;         /* check: groups that do not comply */
	size_t failing;              /* check: weights that do not comply */
	nmp_save_result save;
	double seconds;
	const nmp_channels *channels; /* the permutation applied, or NULL (borrowed) */
	bool permute_only;           /* permuted, not masked */
	const nmp_calib *calib;      /* the calibration used, or NULL (borrowed) */
} nmp_pass_result;

nmp_status nmp_prune(const nmp_plan *plan, const nmp_prune_opts *o, nmp_pass_result *r, nmp_error *err);
nmp_status nmp_check(const nmp_plan *plan, nmp_engine *engine, nmp_pass_result *r, nmp_error *err);
void nmp_pass_result_free(nmp_pass_result *r);

/*
 * Scale and zero point of a quantized candidate, as the raw views the engine
 * reads; the caller releases both views.
 */
nmp_status nmp_quant_view(const nmp_model *m, const nmp_candidate *c, nmp_quant_params *qp, nmp_view *scale,
			  nmp_view *zero_point, nmp_error *err);

/*
 * Selection choice ci's payload pruned with its pattern, in a new buffer (raw
 * layout, *out), as prune writes it: permuted first when a channel plan is
 * given (may be NULL), then as calib decided it (reconstructed, for
 * sparsegpt), or by magnitude when calib is NULL.
 */
nmp_status nmp_prune_copy(const nmp_plan *plan, size_t ci, nmp_engine *engine, const nmp_channels *channels,
			  const nmp_calib *calib, void **out, nmp_error *err);

/* The pattern text recorded as nmprune.pattern (the default unless rules decide). */
#define NMP_META_VERSION "nmprune.version"
#define NMP_META_PATTERN "nmprune.pattern"
#define NMP_META_WEIGHTS "nmprune.weights"
#define NMP_META_CALIBRATION "nmprune.calibration"

#endif
