/* Without nvcc the CUDA backend is absent; this stub says so. */
#ifndef NMP_WITH_CUDA
#include <stdio.h>

#include "mask_cuda.h"
#include "sparsegpt.h"

nmp_status nmp_cuda_backend_open(const nmp_backend **be, void **ctx, char *why, size_t why_cap)
{
	*be = NULL;
	*ctx = NULL;
	snprintf(why, why_cap, "this nmprune was built without CUDA (build with nvcc present, CUDA=1)");
	return NMP_ERR_DEVICE;
}

void nmp_cuda_set_memory_budget(void *ctx, size_t bytes)
{
	(void)ctx, (void)bytes;
}

nmp_status nmp_cuda_sparsegpt_solve(double *W, uint64_t rows, uint64_t K, double *H, double damp, const nmp_pattern *p,
				    uint64_t before, const nmp_sgpt_grid *grid, uint8_t *mask, double *damp_used,
				    const char *name, nmp_error *err)
{
	(void)W, (void)rows, (void)K, (void)H, (void)damp, (void)p, (void)before, (void)grid, (void)mask, (void)damp_used;
	return nmp_error_set(err, NMP_ERR_DEVICE, "tensor '%s': this nmprune was built without CUDA", name);
}
#else
typedef int nmp_mask_cuda_stub_unused;
#endif
