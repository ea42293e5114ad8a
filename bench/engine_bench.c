/*
 * engine_bench — mask engine throughput in GB/s of weight bytes, per pattern,
 * dtype, layout and thread count, beside memcpy of the same bytes in the same
 * run.  Layouts: a MatMul's B [K, N], whose groups run down the columns
 * (strided); a Gemm's transposed B [N, K] or a 1x1 Conv, whose groups are
 * runs of adjacent elements (contiguous); and a 3x3 Conv [Cout, Cin, 3, 3],
 * whose groups run along Cin nine elements apart (conv3x3).
 *
 *   engine_bench [MB] [patterns...]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "dtype.h"
#include "mask.h"

static uint16_t to_half(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	uint32_t sign = (x >> 16) & 0x8000, e = (x >> 23) & 0xff, man = x & 0x7fffff;
	int exp = (int)e - 127 + 15;
	if (exp <= 0)
		return (uint16_t)sign;
	if (exp >= 31)
		return (uint16_t)(sign | 0x7c00);
	return (uint16_t)(sign | (uint32_t)exp << 10 | man >> 13);
}

static double best_of(int reps, double (*fn)(void *), void *arg)
{
	double best = 1e30;
	for (int i = 0; i < reps; i++) {
		double t = fn(arg);
		if (t < best)
			best = t;
	}
	return best;
}

typedef struct run_arg {
	nmp_mask_tensor t;
	nmp_pattern p;
	int threads;
	void *pristine;
	size_t bytes;
} run_arg;

static double time_engine(void *a)
{
	run_arg *r = a;
	memcpy(r->t.data, r->pristine, r->bytes);
	nmp_mask_stats st;
	nmp_error err = { 0 };
	double t0 = nmp_now();
	if (nmp_cpu_run(&r->t, &r->p, NMP_MASK_APPLY, r->threads, NULL, &st, &err) != NMP_OK) {
		fprintf(stderr, "engine_bench: %s\n", err.message);
		exit(1);
	}
	return nmp_now() - t0;
}

static double time_memcpy(void *a)
{
	run_arg *r = a;
	double t0 = nmp_now();
	memcpy(r->t.data, r->pristine, r->bytes);
	return nmp_now() - t0;
}

int main(int argc, char **argv)
{
	size_t mb = argc > 1 ? (size_t)atol(argv[1]) : 64;
	const char *defaults[] = { "2:4", "16:32", "2:4@v32", "2:4@b4x4", "2:4@t" };
	const char **patterns = argc > 2 ? (const char **)argv + 2 : defaults;
	int n_patterns = argc > 2 ? argc - 2 : 5;
	int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
	static const char *layouts[3] = { "strided", "contiguous", "conv3x3" };
	printf("  %-10s %-8s %-11s %7s %10s %10s %8s\n", "pattern", "dtype", "layout", "threads", "GB/s", "memcpy",
	       "ratio");
	for (int dt = 0; dt < 2; dt++) {
		int32_t dtype = dt ? NMP_DT_FLOAT16 : NMP_DT_FLOAT;
		size_t esz = dt ? 2 : 4;
		int64_t cols = 4096, rows = (int64_t)(mb << 20) / (int64_t)esz / cols;
		rows -= rows % 32;
		size_t n = (size_t)(rows * cols), bytes = n * esz;
		int64_t *dims = malloc(4 * sizeof *dims);
		void *pristine = malloc(bytes), *work = malloc(bytes);
		srand(1);
		for (size_t i = 0; i < n; i++) {
			float f = (float)rand() / (float)RAND_MAX * 2.0f - 1.0f;
			if (dt)
				((uint16_t *)pristine)[i] = to_half(f);
			else
				((float *)pristine)[i] = f;
		}
		run_arg r = { .t = { .name = "bench", .data = work, .dtype = dtype, .rank = 2, .dims = dims },
			      .pristine = pristine, .bytes = bytes };
		double mc = (double)bytes / best_of(3, time_memcpy, &r) / 1e9;
		for (int k = 0; k < n_patterns; k++) {
			nmp_error err = { 0 };
			if (nmp_pattern_parse(patterns[k], &r.p, &err) != NMP_OK) {
				fprintf(stderr, "engine_bench: %s\n", err.message);
				return 2;
			}
			for (int lay = 0; lay < 3; lay++) {
				/* [K, N] with groups along axis 0, [N, K] with groups along axis 1, or
				   [Cout, Cin, 3, 3] along axis 1, Cout a multiple of 32 (about the same bytes) */
				r.t.rank = lay == 2 ? 4 : 2;
				r.t.axis = lay ? 1 : 0;
				r.t.out_axis = lay == 1 ? 0 : lay == 2 ? 0 : 1;
				dims[0] = lay == 0 ? cols : lay == 1 ? rows : (int64_t)(n / (512 * 9)) / 32 * 32;
				dims[1] = lay == 0 ? rows : lay == 1 ? cols : 512;
				dims[2] = dims[3] = 3;
				r.bytes = lay == 2 ? (size_t)dims[0] * 512 * 9 * esz : bytes;
				int threads[2] = { 1, cores };
				for (int ti = 0; ti < (cores > 1 ? 2 : 1); ti++) {
					r.threads = threads[ti];
					int reps = r.p.unit == NMP_UNIT_ELEMENT ? 3 : 1;
					double gbs = (double)r.bytes / best_of(reps, time_engine, &r) / 1e9;
					printf("  %-10s %-8s %-11s %7d %10.2f %10.2f %7.0f%%\n", patterns[k],
					       dt ? "fp16" : "fp32", layouts[lay], r.threads, gbs, mc, 100.0 * gbs / mc);
					fflush(stdout);
				}
			}
		}
		free(pristine);
		free(work);
		free(dims);
	}
	return 0;
}
