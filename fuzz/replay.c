/*
 * Runs a libFuzzer harness over files, without libFuzzer: each file's bytes
 * are one input.  Built with the ordinary compiler for the tests, so that a
 * harness that no longer compiles, or an input that now crashes it, fails
 * `make test` rather than the next fuzzing session.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		return 1;
	}
	uint8_t *data = NULL;
	size_t size = 0, cap = 0, got;
	do {
		if (size == cap) {
			cap = cap ? 2 * cap : 1 << 16;
			uint8_t *d = realloc(data, cap);
			if (!d) {
				fprintf(stderr, "%s: out of memory\n", path);
				free(data);
				fclose(f);
				return 1;
			}
			data = d;
		}
		got = fread(data + size, 1, cap - size, f);
		size += got;
	} while (got);
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		fprintf(stderr, "%s: read error\n", path);
		free(data);
		return 1;
	}
	LLVMFuzzerTestOneInput(data, size);
	free(data);
	return 0;
}

int main(int argc, char **argv)
{
	int failed = 0;
	for (int i = 1; i < argc; i++)
		failed |= replay(argv[i]);
	printf("%d inputs replayed\n", argc - 1);
	return failed;
}
