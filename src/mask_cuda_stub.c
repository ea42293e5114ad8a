/* Without nvcc the CUDA backend is absent; this stub says so. */
#ifndef NMP_WITH_CUDA
#include <stdio.h>

#include "mask_cuda.h"

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
#else
typedef int nmp_mask_cuda_stub_unused;
#endif
