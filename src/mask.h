/*
 * mask.h — the mask engine: arrays and patterns in, masks and statistics out.
 * It never sees protobuf.  Every backend (the CPU backend in src/cpu/, the
 * CUDA backend in kernels/, behind the table of backend.h) implements the
 * same contract, bit for bit; the rules both compile are mask_rules.h:
 *
 * The view.  A weight of shape dims is seen as a matrix whose columns run
 * along the group axis; its rows enumerate every other axis, the
 * output-channel axis varying fastest (a conv weight [Cout,Cin,kh,kw] is
 * (kh*kw*Cout) x Cin).  Vectors, blocks and tiles are runs of consecutive
 * rows in that order.
 *
 * Magnitude.  |w| in the stored type: IEEE floats compare by their bits with
 * the sign cleared, which orders magnitudes exactly (+-Inf is the largest);
 * a NaN is an error naming the tensor and its flat index.  A quantized
 * weight's magnitude is the fp32 product |q - zero_point| * |scale|, and a
 * pruned quantized weight becomes its zero point.
 *
 * Choice.  Top-N per group by magnitude; ties keep the lower index along the
 * group axis (for vectors and blocks, the lower unit index).  Vector and
 * block scores are sums of magnitudes in double, rows then columns in
 * order.  Transposable tiles keep exactly N per row and column with the
 * largest sum (exact), or by sort-and-accept (greedy, which may keep fewer).
 * Unstructured P% zeroes round(P x units) units, smallest first, ties
 * zeroing the higher index first.
 */
#ifndef NMP_MASK_H
#define NMP_MASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "pattern.h"

/* Per-element quantization parameters, in the weight's coordinates. */
typedef struct nmp_quant_params {
	const void *scale;             /* raw layout */
	int32_t scale_dtype;           /* FLOAT, FLOAT16 or BFLOAT16 */
	const void *zero_point;        /* raw layout, same shape as scale; NULL: 0 */
	int axis;                      /* quantization axis */
	int64_t block;                 /* block_size along axis, 0: none */
	uint64_t n_scale;              /* 1: per-tensor */
} nmp_quant_params;

typedef struct nmp_mask_tensor {
	const char *name;              /* for messages */
	void *data;                    /* raw layout; written only when applying */
	const void *src;               /* NULL: data holds the weight; else read it here and,
					* when applying, write every element of data */
	int32_t dtype;                 /* FLOAT, FLOAT16, BFLOAT16, DOUBLE, INT8, UINT8 */
	int rank;
	const int64_t *dims;
	int axis;                      /* group axis */
	int out_axis;                  /* output-channel axis, -1 none */
	const nmp_quant_params *quant; /* required for INT8/UINT8 */
} nmp_mask_tensor;

typedef struct nmp_mask_stats {
	uint64_t numel;
	uint64_t kept;                 /* elements kept (nonzero after pruning, or before for check) */
	double l1_dense;               /* sum of magnitudes */
	double l1_kept;                /* sum of kept magnitudes */
	double l1_unstructured;        /* kept by unstructured pruning at the same density */
	uint64_t groups;               /* groups (N:M) or units (P%) examined */
	uint64_t violations;           /* check: groups that do not comply */
	uint64_t deficits;             /* greedy @t: rows and columns left with fewer than N */
} nmp_mask_stats;

typedef enum nmp_mask_mode {
	NMP_MASK_APPLY,   /* compute the mask and zero the pruned weights */
	NMP_MASK_DRY,     /* compute the mask and statistics, write nothing */
	NMP_MASK_CHECK,   /* does the tensor already comply with the pattern? */
} nmp_mask_mode;

typedef struct nmp_engine nmp_engine;

typedef enum nmp_device { NMP_DEVICE_AUTO, NMP_DEVICE_CPU, NMP_DEVICE_CUDA } nmp_device;

/* "cpu", "cuda", anything else (or NULL) is auto. */
nmp_device nmp_device_parse(const char *s);

/*
 * Creates an engine.  AUTO takes CUDA when this build has it and a device
 * answers, else the CPU; CUDA without a usable device is NMP_ERR_DEVICE.
 * `note` (may be NULL) receives a line saying which engine runs and why.
 * threads 0 means all cores.
 */
nmp_status nmp_engine_create(nmp_device device, int threads, nmp_engine **out, char *note,
			     size_t note_cap, nmp_error *err);
void nmp_engine_free(nmp_engine **e);

/* Where the engine's notes go (a tensor handed to the CPU backend, and why); none by default. */
void nmp_engine_set_notes(nmp_engine *e, void (*fn)(void *user, const char *line), void *user);
const char *nmp_engine_name(const nmp_engine *e);

/*
 * Runs one tensor.  `mask` (numel bytes, flat order, 1 = kept) is filled
 * when non-NULL.  For CHECK, kept/violations describe the tensor as it is.
 */
nmp_status nmp_engine_run(nmp_engine *e, const nmp_mask_tensor *t, const nmp_pattern *p,
			  nmp_mask_mode mode, uint8_t *mask, nmp_mask_stats *st, nmp_error *err);

/* The CPU backend, also the reference the other backends are tested against. */
nmp_status nmp_cpu_run(const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode, int threads,
		       uint8_t *mask, nmp_mask_stats *st, nmp_error *err);

/*
 * The magnitude of every element as fp32, in flat order, exactly as the
 * engine ranks them (a double is rounded to float); a NaN is an error.
 * For the permutation search, which needs magnitudes, not masks.
 */
nmp_status nmp_cpu_magnitudes(const nmp_mask_tensor *t, float *out, nmp_error *err);

#endif
