/*
 * backend.h — the table of operations a mask engine backend provides, in
 * the manner of ggml's backends.  The engine (engine.c) holds the CPU
 * backend always and, when the build has it and a device answers, the CUDA
 * backend; a tensor the preferred backend does not support goes to the CPU
 * backend, with a note.  Every backend obeys mask.h's contract bit for bit.
 */
#ifndef NMP_BACKEND_H
#define NMP_BACKEND_H

#include "mask.h"

typedef struct nmp_backend {
	const char *name;
	/* NULL when the backend serves this case; else why not (static text). */
	const char *(*supports)(void *ctx, const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode);
	nmp_status (*run)(void *ctx, const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode,
			  uint8_t *mask, nmp_mask_stats *st, nmp_error *err);
	nmp_status (*magnitudes)(void *ctx, const nmp_mask_tensor *t, float *out, nmp_error *err);
	void (*close)(void *ctx);
} nmp_backend;

/* The CPU backend; ctx is its thread count, owned by the caller. */
extern const nmp_backend nmp_cpu_backend;

#endif
