/*
 * nmprune.h — prune the weights of an ONNX model to N:M sparsity, in process.
 *
 * The library does what the nmprune command does, for C and C++ deployment
 * pipelines that would rather not spawn it:
 *
 *     nmp_options opt;
 *     nmp_options_init(&opt);            // defaults: 2:4, --align asp, all cores
 *     opt.pattern = "2:4";
 *     nmp_session *s = NULL;
 *     char err[512];
 *     if (nmp_open("model.onnx", &opt, &s, err, sizeof err) != NMP_OK)   // load, walk, select
 *             fail(err);
 *     for (size_t i = 0; i < nmp_weight_count(s); i++) { ... nmp_weight_get(s, i, &w) ... }
 *     if (nmp_prune_save(s, "pruned.onnx") != NMP_OK)                    // prune, save atomically
 *             fail(nmp_last_error(s));
 *     nmp_close(&s);
 *
 * Contract.
 *  - Load maps the model; nothing is written until nmp_prune_save, which
 *    writes a temporary file beside the output, syncs and renames it.  The
 *    input model and its external data are never modified.  A failure leaves
 *    no output file.
 *  - Every function returns an nmp_status; nmp_status_string names it, and
 *    nmp_last_error gives the one-line message of a session's last failure
 *    (file, tensor, node and reason).  Exit codes of the command follow the
 *    statuses: USAGE 2, MODEL 3, IO and NOMEM 4, DEVICE 5, RUNTIME 6.
 *  - Ownership: the caller owns what it creates (a session, through
 *    nmp_close; a comparison, through nmp_comparison_free; both take a
 *    pointer to the handle and set it to NULL, and do nothing on a NULL
 *    handle).  Strings returned by the library (weight and output names,
 *    reasons, messages) are borrowed from the session or comparison and live
 *    until it is freed.  Strings passed in options are borrowed for the
 *    duration of nmp_open, which copies what it keeps for nmp_prune_save.
 *  - A session is used by one thread at a time; sessions are independent.
 *
 * Calibrated pruning (method "wanda" or "sparsegpt", with calibration
 * samples) runs the model in ONNX Runtime, loaded at run time as the command
 * loads it (ort_library, $NMPRUNE_ORT_LIBRARY, the library path, the
 * onnxruntime Python wheel); nmp_prune_save calibrates on its first call and
 * fails with NMP_ERR_RUNTIME when the runtime cannot be found.
 * nmp_compare_models runs the dense and the pruned model the same way.
 *
 * Link with: pkg-config --libs --static nmprune (libnmprune.a, protobuf-c,
 * jansson, zlib, pthreads, libdl, libm).
 */
#ifndef NMPRUNE_H
#define NMPRUNE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum nmp_status {
	NMP_OK = 0,
	NMP_ERR_USAGE,     /* bad options, pattern or rules file */
	NMP_ERR_MODEL,     /* malformed or unsupported model */
	NMP_ERR_IO,        /* open, read, write, fsync, rename failed */
	NMP_ERR_NOMEM,     /* allocation failed */
	NMP_ERR_DEVICE,    /* CUDA unavailable or failed */
	NMP_ERR_RUNTIME,   /* ONNX Runtime unavailable, or the model failed to run in it */
} nmp_status;

/* A short, stable name for a status ("bad model", "I/O error", ...). */
const char *nmp_status_string(nmp_status s);

/* "0.1.0" */
const char *nmp_version(void);

typedef struct nmp_options {
	const char *pattern;               /* N:M, N:M@vV, N:M@bRxC, N:M@t, P%, ... default "2:4" */
	const char *align;                 /* "asp" (default), "cusparselt", "none" */
	const char *ops;                   /* default "Conv,Gemm,MatMul" */
	const char *const *include;        /* POSIX extended regexes on weight and node names */
	size_t n_include;
	const char *const *exclude;
	size_t n_exclude;
	double dense_first;                /* keep this fraction of eligible weights dense */
	const char *rules_path;            /* JSON rules file, or NULL */
	const char *device;                /* "auto" (default), "cpu", "cuda" */
	int threads;                       /* 0: all cores */
	bool greedy;                       /* transposable patterns: greedy instead of exact */
	const char *external_data;         /* save: move tensors >= 1 KiB into this file */
	const char *masks_path;            /* save: also write the masks as safetensors */
	bool permute;                      /* save: permute channels first (prune --permute) */
	unsigned permute_effort;           /* the permutation search's budget times this; 0 or 1: default */
	const char *method;                /* save: "magnitude" (default, NULL), "wanda" or "sparsegpt" */
	const char *calibration;           /* the samples wanda and sparsegpt need: a directory of
					      test_data_set_*, or a .safetensors or .npz file */
	size_t calibration_samples;        /* use the first N; 0: all */
	size_t calibration_stages;         /* 0: 8 (prune --calibration-stages) */
	double damp;                       /* sparsegpt damping, fraction of the mean diagonal; 0: 0.01 */
	const char *ort_library;           /* libonnxruntime.so; NULL: search */
} nmp_options;

void nmp_options_init(nmp_options *o);

typedef struct nmp_session nmp_session;

/* Loads the model, walks the graph and selects the weights to prune. */
nmp_status nmp_open(const char *model_path, const nmp_options *o, nmp_session **out, char *err,
		    size_t err_cap);
void nmp_close(nmp_session **s);

/* The message of the session's last failure ("" if none). */
const char *nmp_last_error(const nmp_session *s);

typedef struct nmp_weight {
	const char *name;                  /* initializer or Constant output name */
	const char *op;                    /* first consumer's op type */
	const char *pattern;               /* the pattern that applies */
	int axis;                          /* group axis in the weight's own coordinates, -1 none */
	bool eligible;
	const char *reason;                /* why not eligible, "" if eligible */
	uint64_t elements;
	/* after nmp_prune_save or nmp_check_weights: */
	bool done;
	uint64_t kept;                     /* elements kept (check: nonzero) */
	double kept_l1_ratio;              /* kept magnitude / dense magnitude; NaN when the weight holds +-Inf */
	uint64_t violations;               /* check: groups that do not comply */
	/* after nmp_prune_save with a calibrated method: */
	const char *method;                /* what chose the mask ("magnitude" where the method fell back), or "" */
	const char *note;                  /* why it fell back, or ""  */
	double output_error;               /* sparsegpt: the layer's relative squared output error; NaN otherwise */
	/* after nmp_rank_sensitivity: */
	double fidelity_alone;             /* the model's fidelity with this weight alone pruned; NaN if not ranked */
} nmp_weight;

/* Candidate weights, in graph order. */
size_t nmp_weight_count(const nmp_session *s);
nmp_status nmp_weight_get(const nmp_session *s, size_t i, nmp_weight *w);

/* Prunes every eligible weight and writes the model to out_path. */
nmp_status nmp_prune_save(nmp_session *s, const char *out_path);

/* Checks every eligible weight against its pattern; *failing counts those that do not comply. */
nmp_status nmp_check_weights(nmp_session *s, size_t *failing);

/*
 * Which weights the outputs depend on most (nmprune inspect --sensitivity):
 * each eligible weight is pruned alone as nmp_prune_save would prune it (the
 * session's pattern, method, damp, permute and stages) and the model runs on
 * the samples; the weights are ranked by the fidelity to the dense model's
 * outputs that leaves, the most sensitive (lowest) first.  With a target,
 * also how many of the most sensitive must stay dense for the model with all
 * the others pruned to reach it, and the rules file that keeps them dense
 * (for nmp_options.rules_path).  A zeroed nmp_sensitivity_options takes the
 * defaults.
 */
typedef struct nmp_sensitivity_options {
	const char *calibration;           /* the samples; NULL: the session's options.calibration */
	const char *eval_data;             /* measure fidelity on these samples; NULL: on the calibration ones */
	const char *measure;               /* "cosine" (default, NULL), "rel-l2" or "top1" (inspect --fidelity) */
	double target_fidelity;            /* in (0, 1]: search the weights to keep dense; 0: rank only */
} nmp_sensitivity_options;

typedef struct nmp_sensitivity_summary {
	size_t ranked;                     /* eligible weights ranked */
	size_t samples;                    /* samples each model ran on */
	size_t runs;                       /* runs of the model over them, calibration's included */
	double all_pruned;                 /* the fidelity with every eligible weight pruned */
	size_t keep_dense;                 /* with a target: how many of the most sensitive stay dense */
	double reached;                    /* ... and the fidelity that gives; NaN without a target */
	bool target_met;                   /* false: not reached even with every weight dense */
} nmp_sensitivity_summary;

nmp_status nmp_rank_sensitivity(nmp_session *s, const nmp_sensitivity_options *o, nmp_sensitivity_summary *out);

/* The weight (an index for nmp_weight_get) at `rank` of the last ranking, the most sensitive at 0. */
nmp_status nmp_sensitivity_ranked(const nmp_session *s, size_t rank, size_t *weight);

/* The rules file keeping the last ranking's keep_dense weights dense (a JSON array), written atomically. */
nmp_status nmp_sensitivity_write_rules(nmp_session *s, const char *path);

/*
 * How far a pruned model's outputs moved from the dense model's (nmprune
 * compare): both run in ONNX Runtime on the samples, output by output.
 */
typedef struct nmp_fidelity {
	const char *output;                /* the dense model's output name */
	bool floating;                     /* false: an integer or boolean output, measured by agreement */
	double cosine;                     /* mean over samples (one-element outputs: over all their values) */
	double cosine_min;                 /* the worst sample's; NaN for one-element outputs */
	double rel_l2;                     /* sqrt(sum |pruned - dense|^2 / sum |dense|^2) over the samples */
	double top1;                       /* rows whose argmax along the last axis agrees; NaN without rows */
	double agreement;                  /* integer outputs: the share of equal elements; NaN otherwise */
	uint64_t shape_changed;            /* samples whose pruned output has other dimensions: complete misses */
	uint64_t nonfinite;                /* values NaN or infinite in one model's output, not the same in the other's */
	uint64_t nonfinite_samples;        /* the samples holding them: complete misses too */
} nmp_fidelity;

typedef struct nmp_comparison nmp_comparison;

/*
 * Runs both models on o->calibration's samples (the first
 * o->calibration_samples; o->threads and o->ort_library as for calibrated
 * pruning); no other option is read.  The pruned model must take the same
 * inputs and give the dense model's outputs in the same types and ranks
 * (NMP_ERR_MODEL otherwise).
 */
nmp_status nmp_compare_models(const char *dense_path, const char *pruned_path, const nmp_options *o,
			      nmp_comparison **out, char *err, size_t err_cap);
void nmp_comparison_free(nmp_comparison **c);

/* The dense model's outputs, in graph order, and the samples both models ran. */
size_t nmp_comparison_count(const nmp_comparison *c);
size_t nmp_comparison_samples(const nmp_comparison *c);
nmp_status nmp_comparison_get(const nmp_comparison *c, size_t i, nmp_fidelity *f);

#ifdef __cplusplus
}
#endif

#endif
