/*
 * libFuzzer harness: the model loader, the graph walker, selection, the
 * channel permutation pass (every other input) and a dry run of the prune
 * pass on arbitrary bytes.  Any outcome but a crash, a hang,
 * a leak or a sanitizer report is fine: bad input must come back as a status.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "channels.h"
#include "permute.h"
#include "plan.h"
#include "prune.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
	nmp_engine_free(&engine);
	nmp_channels_free(&channels);
	nmp_plan_free(&plan);
	return 0;
}
