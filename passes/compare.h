/*
 * compare.h — how far a pruned model's outputs moved from the dense model's,
 * on calibration samples, through ONNX Runtime.
 *
 * Both models run on every sample; per output of the dense model (the
 * pruned model must produce it too, of the same type and rank):
 *  - cosine: the cosine similarity of the two outputs, flattened, averaged
 *    over samples (1 when both are zero), and its minimum; an output of one
 *    element per sample (a score, a probability), whose cosine would say
 *    only its sign, takes the cosine of all samples' values together, and
 *    no minimum;
 *  - rel_l2: sqrt(sum |pruned - dense|^2 / sum |dense|^2) over all samples;
 *  - top1: the fraction of rows (every position but the last axis) whose
 *    largest entry along the last axis is at the same index; for outputs
 *    whose last axis has more than one entry.  Integer and boolean outputs
 *    report exact agreement of their elements instead, and no cosine.
 * An output may change shape from sample to sample (a detector's boxes).  A
 * sample where the pruned model's output has other dimensions than the
 * dense model's counts as a complete miss (nmp_output_acc_miss; integer
 * outputs: no element agrees), and shape_changed counts those samples; a
 * different type or rank is an error (not the same model).  A sample
 * whose floating output holds a NaN or an infinity where the other model's
 * does not hold the same (a pruned model that overflows) is a complete miss
 * too: nonfinite counts such values and nonfinite_samples their samples.
 * Values that are the same infinity, or NaN, in both agree and add nothing;
 * top-1 never picks a NaN.
 *
 * Ownership: nmp_compare fills a caller-owned result; nmp_compare_free
 * releases what it holds.
 */
#ifndef NMP_COMPARE_H
#define NMP_COMPARE_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct nmp_compare_opts {
	const char *dense, *pruned;
	const char *data;
	size_t max_samples;          /* 0: all */
	const char *ort_library;
	int threads;
} nmp_compare_opts;

typedef struct nmp_output_fidelity {
	char name[256];
	bool floating;
	double cosine, cosine_min;   /* NAN for integer outputs */
	double rel_l2;               /* NAN for integer outputs */
	double top1;                 /* NAN when not applicable */
	double agreement;            /* integer outputs: equal elements; NAN otherwise */
	uint64_t rows;               /* rows compared for top1 */
	uint64_t shape_changed;      /* samples where the pruned output has other dimensions */
	uint64_t nonfinite;          /* values NaN or infinite in one output and not the same in the other */
	uint64_t nonfinite_samples;  /* the samples that hold them: misses */
} nmp_output_fidelity;

typedef struct nmp_compare_result {
	nmp_output_fidelity *outputs;
	size_t n;
	size_t samples;
	double seconds;
	char runtime[96];
} nmp_compare_result;

/* The cosine of two vectors from their dot product and squared norms: 1 when both are zero, 0 when one is. */
static inline double nmp_cosine(double dot, double na, double nb)
{
	return na == 0 && nb == 0 ? 1 : na == 0 || nb == 0 ? 0 : dot / sqrt(na * nb);
}

/*
 * One output's cosine over the samples (as above): each sample adds its dot
 * product and squared norms and its element count.
 */
typedef struct nmp_cosine_acc {
	double sum, min;             /* of the samples' cosines */
	double dot, na, nb;          /* over every sample's values */
	uint64_t samples;
	bool wide;                   /* some sample held more than one element */
} nmp_cosine_acc;

static inline void nmp_cosine_add(nmp_cosine_acc *a, double dot, double na, double nb, uint64_t numel)
{
	double c = nmp_cosine(dot, na, nb);
	a->sum += c;
	a->min = a->samples == 0 || c < a->min ? c : a->min;
	a->dot += dot;
	a->na += na;
	a->nb += nb;
	a->samples++;
	a->wide |= numel > 1;
}

/* The output's cosine: the samples' mean, or the pooled cosine of one-element outputs; NAN without samples. */
static inline double nmp_cosine_of(const nmp_cosine_acc *a)
{
	return a->samples == 0 ? NAN : a->wide ? a->sum / (double)a->samples : nmp_cosine(a->dot, a->na, a->nb);
}

/* The smallest sample's cosine; NAN for one-element outputs, whose samples have none of their own. */
static inline double nmp_cosine_min_of(const nmp_cosine_acc *a)
{
	return a->samples && a->wide ? a->min : NAN;
}

/* One floating output's measures over the samples: cosine, relative L2 error, top-1 agreement. */
typedef struct nmp_output_acc {
	nmp_cosine_acc cos;
	double diff2, ref2;          /* sum |pruned - dense|^2, sum |dense|^2 */
	uint64_t rows, agree;        /* rows along the last axis, and those whose argmax agrees */
	uint64_t nonfinite, nonfinite_samples; /* as nmp_output_fidelity's */
} nmp_output_acc;

struct nmp_host_tensor;

/*
 * Adds one sample: the dense output ref and the pruned one t, of the same
 * type and shape; `last` is the length of the last axis (top-1 rows when > 1).
 * A sample where one holds a NaN or an infinity that the other does not is
 * added as a miss (nmp_output_acc_miss), and counted in nonfinite.
 */
void nmp_output_acc_add(nmp_output_acc *x, const struct nmp_host_tensor *ref, const struct nmp_host_tensor *t,
			uint64_t last);

/*
 * Adds a sample whose pruned output has another shape than the dense one
 * (ref, last axis `last`): nothing of it agrees: cosine 0, the whole dense
 * output as error, no row's argmax.
 */
void nmp_output_acc_miss(nmp_output_acc *x, const struct nmp_host_tensor *ref, uint64_t last);

/* The relative L2 error over the samples added; NAN without samples. */
double nmp_output_rel_l2(const nmp_output_acc *x);

/* The top-1 agreement; NAN without rows. */
double nmp_output_top1(const nmp_output_acc *x);

nmp_status nmp_compare(const nmp_compare_opts *o, nmp_compare_result *r, nmp_error *err);
void nmp_compare_free(nmp_compare_result *r);

#endif
