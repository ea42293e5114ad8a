/*
 * mask_cuda.h — the CUDA backend's entry (kernels/context.cu).
 *
 * A build without nvcc gets the stub in src/mask_cuda_stub.c, which says so.
 * A CUDA build runs on a machine with no GPU and no driver: opening then
 * fails with CUDA's reason and the engine falls back (auto) or exits 5
 * (--device cuda).
 */
#ifndef NMP_MASK_CUDA_H
#define NMP_MASK_CUDA_H

#include <stddef.h>

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Opens the first device.  On success *be is the CUDA backend's table and
 * *ctx its context (closed through be->close); `why` receives the device's
 * name.  On failure `why` receives CUDA's reason.
 */
nmp_status nmp_cuda_backend_open(const nmp_backend **be, void **ctx, char *why, size_t why_cap);

/*
 * For tests and benchmarks: cap the device memory a tensor may use (bytes;
 * 0 restores the default of what the device has free), so that slicing is
 * exercised on small tensors.
 */
void nmp_cuda_set_memory_budget(void *ctx, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif
