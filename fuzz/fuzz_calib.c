/*
 * libFuzzer harness: calibration data (calib_data.h) over arbitrary bytes,
 * bound to a fixed set of model inputs.  The first byte, modulo 3, picks
 * the layout:
 *   0: the rest is a .safetensors file;
 *   1: the rest is a .npz file;
 *   2: a test-data directory of one sample: the second byte gives how many
 *      input_K.pb files (1 to 3); each but the last is a 16-bit
 *      little-endian length and that many bytes, the last is the rest.
 * On success every sample and every batch must bind only the model's inputs,
 * with their types, ranks and fixed dimensions, and as many elements as their
 * dimensions hold (each byte is read, so a tensor reaching past its buffer
 * trips the sanitizers); any failure must come with a message.  With
 * NMP_FUZZ_TRACE set, each input's outcome goes to stderr ("opened N" or
 * the error, then any sample's error), so a test can tell that its seeds
 * are read.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calib_data.h"
#include "dtype.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * Required: x (float, 3 columns) and ids (int64 tokens).  Optional: sr (an
 * int64 scalar), state (fp16 [2, 1, 4]) and any (uint8 of unknown rank).
 */
static const nmp_model_input inputs[] = {
	{ .name = "x", .dtype = NMP_DT_FLOAT, .rank = 2, .dims = { -1, 3 } },
	{ .name = "ids", .dtype = NMP_DT_INT64, .rank = 1, .dims = { -1 } },
	{ .name = "sr", .dtype = NMP_DT_INT64, .rank = 0, .optional = true },
	{ .name = "state", .dtype = NMP_DT_FLOAT16, .rank = 3, .dims = { 2, 1, 4 }, .optional = true },
	{ .name = "any", .dtype = NMP_DT_UINT8, .rank = -1, .optional = true },
};
enum { N_INPUTS = sizeof inputs / sizeof *inputs, MAX_FILES = 3 };

static char dir[64];

/* Leaves nothing behind in /tmp. */
static void remove_scratch(void)
{
	static const char *const names[] = { "set/input_0.pb", "set/input_1.pb", "set/input_2.pb", "d.safetensors",
					     "d.npz" };
	char path[96];
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		snprintf(path, sizeof path, "%s/%s", dir, names[i]);
		unlink(path);
	}
	snprintf(path, sizeof path, "%s/set", dir);
	rmdir(path);
	rmdir(dir);
}

static void write_file(const char *path, const uint8_t *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0)
		abort(); /* the harness's own scratch space: not the code under test */
}

static void place(const uint8_t *data, size_t size, char *path, size_t cap)
{
	if (!dir[0]) {
		snprintf(dir, sizeof dir, "/tmp/nmp-fuzz-calib-XXXXXX");
		if (!mkdtemp(dir))
			abort();
		snprintf(path, cap, "%s/set", dir);
		if (mkdir(path, 0700) != 0)
			abort();
		atexit(remove_scratch);
	}
	switch (data[0] % 3) {
	case 0:
		snprintf(path, cap, "%s/d.safetensors", dir);
		write_file(path, data + 1, size - 1);
		return;
	case 1:
		snprintf(path, cap, "%s/d.npz", dir);
		write_file(path, data + 1, size - 1);
		return;
	default: {
		/* files, then each file but the last as a 16-bit little-endian length and its bytes; the last takes the rest */
		const size_t files = size > 1 ? 1 + data[1] % MAX_FILES : 1;
		size_t at = size > 1 ? 2 : 1;
		char file[96];
		for (size_t k = 0; k < MAX_FILES; k++) {
			snprintf(file, sizeof file, "%s/set/input_%zu.pb", dir, k);
			if (k >= files) {
				unlink(file);
				continue;
			}
			size_t len = size - at;
			if (k + 1 < files) {
				const size_t want = at + 2 <= size ? (size_t)(data[at] | data[at + 1] << 8) : 0;
				at = at + 2 <= size ? at + 2 : size;
				len = want < size - at ? want : size - at;
			}
			write_file(file, data + at, len);
			at += len;
		}
		snprintf(path, cap, "%s/set", dir);
		return;
	}
	}
}

/* A bound sample: its tensors fit the inputs they name, and each byte can be read. */
static void check_sample(const char *const *names, const nmp_host_tensor *t, size_t n, size_t batch)
{
	volatile uint8_t sink = 0;
	if (n > N_INPUTS)
		abort();
	for (size_t i = 0; i < n; i++) {
		const nmp_model_input *in = NULL;
		for (size_t k = 0; k < N_INPUTS; k++)
			if (strcmp(names[i], inputs[k].name) == 0)
				in = &inputs[k];
		if (!in || t[i].dtype != in->dtype || (in->rank >= 0 && t[i].rank != in->rank) || t[i].rank < 0 ||
		    t[i].rank > NMP_ORT_MAX_RANK)
			abort();
		uint64_t numel = 1;
		for (int a = 0; a < t[i].rank; a++) {
			if (t[i].dims[a] < 0 || (in->rank >= 0 && in->dims[a] > 0 && t[i].dims[a] != in->dims[a]))
				abort();
			numel *= (uint64_t)t[i].dims[a];
		}
		if (t[i].numel != numel || (batch > 1 && t[i].rank > 0 && t[i].dims[0] % (int64_t)batch != 0))
			abort();
		const uint64_t bytes = numel * (nmp_dtype_bits(t[i].dtype) / 8);
		const uint8_t *p = t[i].data;
		if (bytes && !p)
			abort();
		for (uint64_t b = 0; b < bytes; b++)
			sink ^= p[b];
	}
	(void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	char path[96];
	place(data, size, path, sizeof path);
	nmp_calib_data *d = NULL;
	nmp_error err = { 0 };
	const bool trace = getenv("NMP_FUZZ_TRACE") != NULL;
	if (nmp_calib_data_open(path, inputs, N_INPUTS, 8, &d, &err) != NMP_OK) {
		if (!err.message[0] || d)
			abort();
		if (trace)
			fprintf(stderr, "error: %s\n", err.message);
		return 0;
	}
	const size_t count = nmp_calib_data_count(d);
	if (count < 1 || count > 8)
		abort();
	if (trace)
		fprintf(stderr, "opened %zu\n", count);
	const char *const *names;
	const nmp_host_tensor *t;
	size_t n;
	for (size_t i = 0; i < count; i++) {
		err = (nmp_error){ 0 }; /* the first failure wins: a fresh record per call */
		if (nmp_calib_data_sample(d, i, &names, &t, &n, &err) != NMP_OK) {
			if (!err.message[0])
				abort();
			if (trace)
				fprintf(stderr, "sample %zu: error: %s\n", i, err.message);
			continue;
		}
		check_sample(names, t, n, 1);
	}
	const size_t limit = nmp_calib_data_batch_limit(d, 1 << 16);
	if (limit < 1 || limit > 64)
		abort();
	for (size_t i = 0; i < count; i += limit) {
		const size_t b = count - i < limit ? count - i : limit;
		err = (nmp_error){ 0 }; /* the first failure wins: a fresh record per call */
		if (nmp_calib_data_batch(d, i, b, &names, &t, &n, &err) != NMP_OK) {
			if (!err.message[0])
				abort();
			continue;
		}
		check_sample(names, t, n, b);
	}
	nmp_calib_data_free(&d);
	return 0;
}
