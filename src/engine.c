/*
 * engine.c — picks the mask engine.  CUDA when this build has it and a device
 * answers (or when asked for), else the CPU; --device cpu never touches CUDA.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <string.h>

#include "mask.h"
#include "mask_cuda.h"

struct nmp_engine {
	bool cuda;
	int threads;
	void *cuda_ctx;
};

nmp_device nmp_device_parse(const char *s)
{
	if (s && strcmp(s, "cpu") == 0)
		return NMP_DEVICE_CPU;
	if (s && strcmp(s, "cuda") == 0)
		return NMP_DEVICE_CUDA;
	return NMP_DEVICE_AUTO;
}

static int all_cores(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}

nmp_status nmp_engine_create(nmp_device device, int threads, nmp_engine **out, char *note,
			     size_t note_cap, nmp_error *err)
{
	nmp_engine *e = calloc(1, sizeof *e);
	char why[256] = "";
	*out = NULL;
	if (!e)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	e->threads = threads > 0 ? threads : all_cores();
	if (device != NMP_DEVICE_CPU) {
		nmp_status s = nmp_cuda_open(&e->cuda_ctx, why, sizeof why);
		if (s == NMP_OK) {
			e->cuda = true;
		} else if (device == NMP_DEVICE_CUDA) {
			free(e);
			return nmp_error_set(err, NMP_ERR_DEVICE, "--device cuda: %s", why);
		}
	}
	if (note) {
		if (e->cuda)
			snprintf(note, note_cap, "mask engine: CUDA (%s)", why);
		else if (device == NMP_DEVICE_CPU)
			snprintf(note, note_cap, "mask engine: CPU, %d threads", e->threads);
		else
			snprintf(note, note_cap, "mask engine: CPU, %d threads (CUDA: %s)", e->threads, why);
	}
	*out = e;
	return NMP_OK;
}

void nmp_engine_free(nmp_engine **pe)
{
	nmp_engine *e = *pe;
	if (!e)
		return;
	if (e->cuda)
		nmp_cuda_close(e->cuda_ctx);
	free(e);
	*pe = NULL;
}

const char *nmp_engine_name(const nmp_engine *e)
{
	return e->cuda ? "cuda" : "cpu";
}

nmp_status nmp_engine_run(nmp_engine *e, const nmp_mask_tensor *t, const nmp_pattern *p,
			  nmp_mask_mode mode, uint8_t *mask, nmp_mask_stats *st, nmp_error *err)
{
	if (e->cuda)
		return nmp_cuda_run(e->cuda_ctx, t, p, mode, e->threads, mask, st, err);
	return nmp_cpu_run(t, p, mode, e->threads, mask, st, err);
}
