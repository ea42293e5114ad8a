/*
 * engine.c — the mask engine: a preferred backend and the CPU backend
 * behind it.  CUDA is preferred when this build has it and a device answers
 * (or when asked for); --device cpu never touches CUDA.  A tensor the
 * preferred backend does not support runs on the CPU backend, and the
 * engine says so through its note callback (main prints it under -v).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "mask.h"
#include "mask_cuda.h"

struct nmp_engine {
	int threads;                 /* the CPU backend's context */
	const nmp_backend *preferred;
	void *preferred_ctx;
	void (*note)(void *user, const char *line);
	void *note_user;
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
	e->preferred = &nmp_cpu_backend;
	e->preferred_ctx = &e->threads;
	if (device != NMP_DEVICE_CPU) {
		const nmp_backend *be;
		void *ctx;
		if (nmp_cuda_backend_open(&be, &ctx, why, sizeof why) == NMP_OK) {
			e->preferred = be;
			e->preferred_ctx = ctx;
		} else if (device == NMP_DEVICE_CUDA) {
			free(e);
			return nmp_error_set(err, NMP_ERR_DEVICE, "--device cuda: %s", why);
		}
	}
	if (note) {
		if (e->preferred != &nmp_cpu_backend)
			snprintf(note, note_cap, "mask engine: CUDA (%s)", why);
		else if (device == NMP_DEVICE_CPU)
			snprintf(note, note_cap, "mask engine: CPU, %d threads", e->threads);
		else
			snprintf(note, note_cap, "mask engine: CPU, %d threads (CUDA: %s)", e->threads, why);
	}
	*out = e;
	return NMP_OK;
}

void nmp_engine_set_notes(nmp_engine *e, void (*fn)(void *user, const char *line), void *user)
{
	e->note = fn;
	e->note_user = user;
}

void nmp_engine_free(nmp_engine **pe)
{
	nmp_engine *e = *pe;
	if (!e)
		return;
	if (e->preferred != &nmp_cpu_backend)
		e->preferred->close(e->preferred_ctx);
	free(e);
	*pe = NULL;
}

const char *nmp_engine_name(const nmp_engine *e)
{
	return e->preferred->name;
}

nmp_status nmp_engine_run(nmp_engine *e, const nmp_mask_tensor *t, const nmp_pattern *p,
			  nmp_mask_mode mode, uint8_t *mask, nmp_mask_stats *st, nmp_error *err)
{
	const nmp_backend *be = e->preferred;
	void *ctx = e->preferred_ctx;
	const char *why = be->supports(ctx, t, p, mode);
	if (why) {
		if (e->note) {
			char line[512];
			snprintf(line, sizeof line, "tensor '%s': %s backend: %s; the CPU backend runs it", t->name,
				 be->name, why);
			e->note(e->note_user, line);
		}
		be = &nmp_cpu_backend;
		ctx = &e->threads;
	}
	return be->run(ctx, t, p, mode, mask, st, err);
}

nmp_status nmp_engine_magnitudes(nmp_engine *e, const nmp_mask_tensor *t, float *out, nmp_error *err)
{
	(void)e; /* magnitudes feed the CPU permutation search: computed where they are used */
	return nmp_cpu_magnitudes(t, out, err);
}
