/*
 * ort.h — ONNX Runtime, loaded at run time, to run a model on calibration
 * data.
 *
 * nmprune does not link ONNX Runtime: the calibrated methods and `compare`
 * open it with dlopen and reach its C API through OrtGetApiBase, whose table
 * of functions is append-only across releases.  ort.c declares the few
 * entries it calls, by their documented positions in that table, and asks
 * for API version NMP_ORT_API_VERSION (ONNX Runtime 1.14 or later).
 *
 * Where the library is found, first hit wins: the path given (--ort-library),
 * $NMPRUNE_ORT_LIBRARY, the system's library path (libonnxruntime.so.1), then
 * the `onnxruntime` Python wheel (onnxruntime/capi/libonnxruntime.so*) under
 * the usual prefixes, and last the wheel that `python3` imports.  Without
 * it, nmp_ort_open fails with NMP_ERR_RUNTIME saying where it looked.
 *
 * A session runs one model, held in memory, on the CPU with a bounded number
 * of threads.  Inputs are borrowed host arrays; outputs are views of ONNX
 * Runtime's buffers, valid until nmp_ort_outputs_release.
 *
 * Ownership: nmp_ort_open allocates the runtime, nmp_ort_close releases it
 * (after every session made from it); likewise sessions.
 */
#ifndef NMP_ORT_H
#define NMP_ORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define NMP_ORT_API_VERSION 14
#define NMP_ORT_MAX_RANK 16

typedef struct nmp_ort nmp_ort;
typedef struct nmp_ort_session nmp_ort_session;

/* A dense tensor in host memory, raw little-endian layout. */
typedef struct nmp_host_tensor {
	int32_t dtype;                   /* ONNX TensorProto.DataType */
	int rank;
	int64_t dims[NMP_ORT_MAX_RANK];
	void *data;
	uint64_t numel;
} nmp_host_tensor;

/* The outputs of one run: views into ONNX Runtime's values. */
typedef struct nmp_ort_outputs {
	nmp_host_tensor *t;
	void **values;                   /* OrtValue *, released together */
	size_t n;
} nmp_ort_outputs;

/* Is this element type one the statistics and fidelities read (FLOAT, DOUBLE, FLOAT16, BFLOAT16)? */
bool nmp_host_is_floating(int32_t dtype);
/* Element i of a host tensor as a double (floating and integer types; NAN for others). */
double nmp_host_value(const nmp_host_tensor *t, uint64_t i);
/* Elements first .. first+n-1 as doubles into out, as nmp_host_value gives them. */
void nmp_host_values(const nmp_host_tensor *t, uint64_t first, size_t n, double *out);
/* Do a and b have the same rank and dimensions? */
bool nmp_host_same_shape(const nmp_host_tensor *a, const nmp_host_tensor *b);
/* The length of the last axis (1 for a scalar): the rows a top-1 agreement runs along. */
uint64_t nmp_host_last(const nmp_host_tensor *t);

/* hint: --ort-library, or NULL. */
/*
 * The reason in one of ONNX Runtime's messages: those its own checks raise
 * begin with where in its sources they were raised ("/src/graph/model.cc:256
 * onnxruntime::Model::Model(args) "), which tells a user nothing.  Returns
 * msg past that prefix, or msg itself when it has none.
 */
const char *nmp_ort_reason(const char *msg);

nmp_status nmp_ort_open(const char *hint, nmp_ort **out, nmp_error *err);
void nmp_ort_close(nmp_ort **o);
const char *nmp_ort_path(const nmp_ort *o);
const char *nmp_ort_version(const nmp_ort *o);

/* label names the model in messages (its path). threads 0: all cores. */
nmp_status nmp_ort_session_create(nmp_ort *o, const void *model, size_t len, const char *label, int threads,
				  nmp_ort_session **out, nmp_error *err);
void nmp_ort_session_free(nmp_ort_session **s);

nmp_status nmp_ort_run(nmp_ort_session *s, size_t n_in, const char *const *in_names, const nmp_host_tensor *in,
		       size_t n_out, const char *const *out_names, nmp_ort_outputs *out, nmp_error *err);
void nmp_ort_outputs_release(nmp_ort_session *s, nmp_ort_outputs *out);

#endif
