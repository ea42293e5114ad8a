/* Without nvcc the CUDA engine is absent; these stubs say so. */
#ifndef NMP_WITH_CUDA
#include <stdio.h>

#include "mask_cuda.h"

nmp_status nmp_cuda_open(void **ctx, char *why, size_t why_cap)
{
	*ctx = NULL;
	snprintf(why, why_cap, "this nmprune was built without CUDA (build with nvcc present, CUDA=1)");
	return NMP_ERR_DEVICE;
}

void nmp_cuda_close(void *ctx)
{
	(void)ctx;
}

nmp_status nmp_cuda_run(void *ctx, const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode,
			int threads, uint8_t *mask, nmp_mask_stats *st, nmp_error *err)
{
	(void)ctx, (void)p, (void)mode, (void)threads, (void)mask, (void)st;
	return nmp_error_set(err, NMP_ERR_DEVICE, "tensor '%s': no CUDA engine in this build", t->name);
}
#else
typedef int nmp_mask_cuda_stub_unused;
#endif
