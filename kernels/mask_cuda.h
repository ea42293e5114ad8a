/*
 * mask_cuda.h — the CUDA mask engine's entry points (kernels/mask_cuda.cu).
 *
 * A build without nvcc gets the stubs in src/mask_cuda_stub.c, which say so.
 * A CUDA build runs on a machine with no GPU and no driver: nmp_cuda_open
 * then fails with the CUDA error string and the caller falls back or exits 5.
 */
#ifndef NMP_MASK_CUDA_H
#define NMP_MASK_CUDA_H

#include "mask.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Opens the first device; `why` receives the device name, or the reason it failed. */
nmp_status nmp_cuda_open(void **ctx, char *why, size_t why_cap);
void nmp_cuda_close(void *ctx);
nmp_status nmp_cuda_run(void *ctx, const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode,
			int threads, uint8_t *mask, nmp_mask_stats *st, nmp_error *err);

#ifdef __cplusplus
}
#endif

#endif
