/*
 * view.cc — the CUDA emulator's check of a tensor view passed to a kernel
 * (kernels/cuda_common.cuh): each of its pointers is NULL or spans, in
 * device memory, what the view says the kernel may touch.
 */
#include "cuda_common.cuh"

static void span(const char *kernel, const char *field, const void *p, uint64_t bytes)
{
	if (p && !nmp_emu::on_device(p, bytes ? bytes : 1))
		nmp_emu::fatal("kernel %s: view.%s (%p) does not hold its %llu bytes in device memory", kernel, field, p,
			       (unsigned long long)bytes);
}

void nmp_emu::check_view(const char *kernel, const nmp_cu_view &v)
{
	const uint64_t eb = nmp_dtype_bits(v.dtype) / 8;
	span(kernel, "in", v.in, v.numel * eb);
	span(kernel, "out", v.out, v.numel * eb);
	span(kernel, "mask", v.mask, v.numel);
	span(kernel, "qkey", v.qkey, v.numel * 4);
	span(kernel, "key", v.key, v.numel * 8);
	span(kernel, "row_off", v.row_off, v.rows * 8);
	span(kernel, "zero_point", v.zero_point, 1);
	span(kernel, "st", v.st, sizeof *v.st);
}
