/*
 * libFuzzer harness: the model loader, the graph walker, selection, the
 * channel permutation pass (every other input), a dry run of the prune pass
 * and the in-memory writer on arbitrary bytes.  Any outcome but a crash, a
 * hang, a leak, a sanitizer report or a broken invariant of the writer is
 * fine: bad input must come back as a status.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "channels.h"
#include "model.h"
#include "permute.h"
#include "plan.h"
#include "prune.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * The copy for ONNX Runtime parses, and handing it each raw payload's own
 * bytes as new values (compact records' included, wherever they lie) gives
 * the same bytes.
 */
static void check_writer(nmp_model *m)
{
	nmp_error err = { 0 };
	uint8_t *a = NULL, *b = NULL;
	size_t la = 0, lb = 0;
	if (nmp_model_serialize(m, NULL, NULL, 0, &a, &la, &err) != NMP_OK)
		return;
	Onnx__ModelProto *back = onnx__model_proto__unpack(NULL, la, a);
	if (!back)
		abort();
	onnx__model_proto__free_unpacked(back, NULL);
	const void **same = calloc(m->n_tensors + 1, sizeof *same);
	for (size_t i = 0; same && i < m->n_tensors; i++) {
		const nmp_tensor *t = &m->tensors[i];
		if (t->storage == NMP_STORE_FILE && t->length == t->nbytes &&
		    (t->kept_run || t->field == NMP_FIELD_RAW_DATA))
			same[i] = m->files[0].map + t->offset;
	}
	if (same && nmp_model_serialize(m, same, NULL, 0, &b, &lb, &err) == NMP_OK &&
	    (la != lb || memcmp(a, b, la) != 0))
		abort();
	free(same);
	free(a);
	free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char path[64];
	static int fd = -1;
	if (fd < 0) {
		fd = memfd_create("model.onnx", 0);
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	}
	if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
		return 0;

	static const char *const none[1];
	nmp_select_opts so = { .pattern = size % 3 ? "2:4" : "1:4@v4", .align = size % 2 ? "none" : "asp",
			       .ops = "Conv,Gemm,MatMul,ConvTranspose", .include = none, .exclude = none };
	nmp_plan plan;
	nmp_error err = { 0 };
	if (nmp_plan_build(path, &so, &plan, &err) != NMP_OK)
		return 0;
	nmp_engine *engine = NULL;
	nmp_channels *channels = NULL;
	if (size % 2 == 0 && nmp_channels_plan(&plan, NMP_PERMUTE_SEED, 1, 1, &channels, &err) != NMP_OK)
		channels = NULL;
	if (nmp_engine_create(NMP_DEVICE_CPU, 1, &engine, NULL, 0, &err) == NMP_OK) {
		nmp_pass_result r;
		nmp_prune_opts po = { .dry_run = true, .engine = engine, .channels = channels };
		nmp_prune(&plan, &po, &r, &err);
		nmp_pass_result_free(&r);
		nmp_check(&plan, engine, &r, &err);
		nmp_pass_result_free(&r);
	}
	check_writer(plan.model);
	nmp_engine_free(&engine);
	nmp_channels_free(&channels);
	nmp_plan_free(&plan);
	return 0;
}
