/*
 * calib_data.h — calibration samples for running a model: where they come
 * from and whether they fit the model's inputs.
 *
 * Two layouts, chosen by what DATA is:
 *  - a directory in ONNX's test-data layout: test_data_set_0/, test_data_set_1/,
 *    ... (numeric order), each holding input_0.pb, input_1.pb, ... (serialized
 *    TensorProto; a tensor's name binds it to an input, an unnamed one binds by
 *    position).  A directory holding input_*.pb itself is one sample.
 *  - a .safetensors file with one tensor per model input, named as the input:
 *    of the input's rank + 1, its first axis enumerates samples; of the
 *    input's rank, its first axis is the batch axis and each sample is one
 *    row of it (batch 1); a scalar input takes one value of rank 0.  Every
 *    tensor holds as many samples, or one, which every sample then shares
 *    (a sample rate, an initial state).
 *  - a .npz file (npz.h): its arrays, named as the inputs, in the layout of
 *    a .safetensors file.
 * Every sample binds every required input (an input with an initializer may
 * be left out); types must match exactly, ranks must match, and fixed
 * dimensions must agree.  Errors name DATA, the sample and the input.
 *
 * Samples are read one at a time: memory holds one sample, not the data.
 * Ownership: nmp_calib_data_open allocates, nmp_calib_data_free releases;
 * tensors returned by nmp_calib_data_sample are valid until the next call.
 */
#ifndef NMP_CALIB_DATA_H
#define NMP_CALIB_DATA_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "model.h"
#include "ort.h"

typedef struct nmp_model_input {
	const char *name;
	int32_t dtype;
	int rank;                       /* -1: unknown */
	int64_t dims[NMP_ORT_MAX_RANK]; /* -1: not fixed */
	bool optional;                  /* has an initializer */
} nmp_model_input;

/* The model's graph inputs (those without an initializer first marked required). */
nmp_status nmp_model_inputs(const nmp_model *m, nmp_model_input **out, size_t *n, nmp_error *err);

typedef struct nmp_calib_data nmp_calib_data;

/* max_samples 0: all. */
nmp_status nmp_calib_data_open(const char *path, const nmp_model_input *inputs, size_t n_inputs, size_t max_samples,
			       nmp_calib_data **out, nmp_error *err);
void nmp_calib_data_free(nmp_calib_data **d);
size_t nmp_calib_data_count(const nmp_calib_data *d);

/*
 * Sample i: *n tensors with their input names (*names), ready for
 * nmp_ort_run; valid until the next call.
 */
nmp_status nmp_calib_data_sample(nmp_calib_data *d, size_t i, const char *const **names,
				 const nmp_host_tensor **tensors, size_t *n, nmp_error *err);

/*
 * How many samples one run may take together, concatenated along axis 0
 * (safetensors data, inputs whose axis 0 the model leaves free; at most 64
 * and max_bytes of inputs); 1 otherwise.
 */
size_t nmp_calib_data_batch_limit(const nmp_calib_data *d, uint64_t max_bytes);

/* Samples i .. i+count-1 as one batch (count within the limit above). */
nmp_status nmp_calib_data_batch(nmp_calib_data *d, size_t i, size_t count, const char *const **names,
				const nmp_host_tensor **tensors, size_t *n, nmp_error *err);

#endif
