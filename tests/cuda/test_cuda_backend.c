/*
 * The CUDA backend against the CPU backend, case by case (make test-cuda).
 *
 * Invariant: for every pattern family, dtype, layout, mode and source
 * arrangement, on random and adversarial tensors (ties, zeros, -0, +-Inf,
 * fp16 subnormals, quantized per tensor, per axis and in blocks, shapes that
 * are not multiples of a block of threads), the two backends return the same
 * status and message, the same mask, the same output bytes and the same
 * counts, and floating sums equal to 1e-12 relative.  A device memory
 * budget below the tensor's size makes element-wise N:M run in slices and
 * every other family decline (the engine then runs the CPU backend).
 * Without a device every test is skipped, saying why.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dtype.h"
#include "mask.h"
#include "mask_cuda.h"
#include "blas.h"
#include "sparsegpt.h"
#include "sparsegpt_rules.h"

static const nmp_backend *cuda_be;
static void *cuda_ctx;
static char cuda_why[256];

static uint64_t rng = 0x243F6A8885A308D3ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static uint16_t to_half(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	uint32_t s = (x >> 16) & 0x8000u, m = (x >> 13) & 0x3ffu;
	int e = (int)((x >> 23) & 0xff) - 127 + 15;
	if (e <= 0)
		return (uint16_t)(s | (e > -10 ? ((m | 0x400u) >> (1 - e)) : 0));
	if (e >= 31)
		return (uint16_t)(s | 0x7c00u);
	return (uint16_t)(s | (uint32_t)e << 10 | m);
}

/* adv 0: random values; 1: ties, zeros, -0, +-Inf, subnormals; 2: one NaN; 3: seven in ten +-Inf. */
static void fill(int32_t dt, uint8_t *d, uint64_t n, int adv, bool allow_inf)
{
	for (uint64_t i = 0; i < n; i++) {
		float v = (float)((double)(rnd() % 2000001) / 1000000.0 - 1.0);
		if (adv == 1) {
			uint64_t r = rnd() % 10;
			v = r < 3 ? 0.25f : r == 3 ? -0.0f : r == 4 ? 0.0f : r == 5 ? (allow_inf ? ((rnd() & 1) ? INFINITY : -INFINITY) : 3.0f)
			  : r == 6 ? 1e-41f : v;
		}
		if (adv == 3 && rnd() % 10 < 7)
			v = (rnd() & 1) ? INFINITY : -INFINITY;
		switch (dt) {
		case NMP_DT_FLOAT: memcpy(d + 4 * i, &v, 4); break;
		case NMP_DT_DOUBLE: { double x = v; memcpy(d + 8 * i, &x, 8); break; }
		case NMP_DT_FLOAT16: { uint16_t h = adv == 1 && v == 1e-41f ? (uint16_t)(rnd() % 0x3ff) : to_half(v); memcpy(d + 2 * i, &h, 2); break; }
		case NMP_DT_BFLOAT16: { uint32_t x; memcpy(&x, &v, 4); uint16_t h = (uint16_t)(x >> 16); memcpy(d + 2 * i, &h, 2); break; }
		default: d[i] = adv == 1 ? (uint8_t)(rnd() % 5) : (uint8_t)rnd(); break;
		}
	}
	if (adv == 2 && dt != NMP_DT_INT8 && dt != NMP_DT_UINT8) {
		uint64_t at = n / 3;
		if (dt == NMP_DT_FLOAT) { uint32_t q = 0x7fc00001u; memcpy(d + 4 * at, &q, 4); }
		else if (dt == NMP_DT_DOUBLE) { uint64_t q = 0x7ff8000000000001ull; memcpy(d + 8 * at, &q, 8); }
		else { uint16_t q = dt == NMP_DT_FLOAT16 ? 0x7e01u : 0x7fc1u; memcpy(d + 2 * at, &q, 2); }
	}
}

static void expect_close(double cpu, double gpu, const char *what, const char *ctx)
{
	double tol = 1e-12 * fmax(fabs(cpu), 1e-300);
	if (!(fabs(cpu - gpu) <= tol) && !(isinf(cpu) && cpu == gpu))
		fail_msg("%s: %s cpu %.17g cuda %.17g", ctx, what, cpu, gpu);
}

typedef struct shape {
	int rank;
	int64_t dims[4];
	int axis, out;
} shape;

static const shape shapes[] = {
	{ 2, { 64, 64 }, 0, 1 }, { 2, { 64, 64 }, 1, 0 }, { 2, { 48, 256 }, 1, 0 }, { 4, { 16, 64, 3, 3 }, 1, 0 },
	{ 3, { 2, 64, 24 }, 1, 2 }, { 2, { 256, 24 }, 0, -1 }, { 4, { 8, 32, 1, 1 }, 1, 0 }, { 2, { 1040, 16 }, 0, 1 },
	{ 2, { 96, 333 }, 0, 1 },
};

static const int32_t dtypes[] = { NMP_DT_FLOAT, NMP_DT_FLOAT16, NMP_DT_BFLOAT16, NMP_DT_DOUBLE, NMP_DT_INT8, NMP_DT_UINT8 };

/* Runs one case on both backends and compares; returns 1 if the case ran, 0 if the shape does not fit. */
static int compare_case(const char *ptext, bool greedy, int32_t dt, const shape *sh, int adv, nmp_mask_mode mode, bool use_src)
{
	nmp_pattern p;
	nmp_error perr = { 0 };
	assert_int_equal(nmp_pattern_parse(ptext, &p, &perr), NMP_OK);
	p.greedy = greedy;
	uint64_t n = 1;
	for (int a = 0; a < sh->rank; a++)
		n *= (uint64_t)sh->dims[a];
	const size_t eb = nmp_dtype_bits(dt) / 8;
	uint8_t *orig = malloc(n * eb), *d_cpu = malloc(n * eb), *d_gpu = malloc(n * eb);
	uint8_t *m_cpu = malloc(n), *m_gpu = malloc(n);
	fill(dt, orig, n, adv, !(p.unit == NMP_UNIT_TILE && p.m > 4 && !greedy));
	float scales[2048];
	uint8_t zps[2048];
	nmp_quant_params q = { .scale = scales, .scale_dtype = NMP_DT_FLOAT, .zero_point = zps, .n_scale = 1 };
	for (int i = 0; i < 2048; i++) {
		scales[i] = adv ? 0.5f : (float)(rnd() % 1000 + 1) / 1000.0f;
		zps[i] = (uint8_t)(adv ? 2 : rnd() % 4);
	}
	int qmode = (int)(rnd() % 3);
	if (qmode == 1 && (uint64_t)sh->dims[0] <= 2048)
		q.axis = 0, q.n_scale = (uint64_t)sh->dims[0];
	if (qmode == 2 && sh->dims[1] % 4 == 0 && n / 4 <= 2048)
		q.axis = 1, q.block = 4, q.n_scale = n / 4;
	const bool quant = dt == NMP_DT_INT8 || dt == NMP_DT_UINT8;
	char ctx[160];
	snprintf(ctx, sizeof ctx, "%s%s dtype %d shape [%lld..] axis %d adv %d mode %d src %d q %d", ptext, greedy ? " greedy" : "",
		 dt, (long long)sh->dims[0], sh->axis, adv, mode, use_src, quant ? qmode : -1);

	nmp_mask_tensor t = { .name = "w", .dtype = dt, .rank = sh->rank, .dims = sh->dims, .axis = sh->axis,
			      .out_axis = sh->out, .quant = quant ? &q : NULL };
	nmp_mask_stats sc, sg;
	nmp_error ec = { 0 }, eg = { 0 };
	memcpy(d_cpu, orig, n * eb);
	memcpy(d_gpu, orig, n * eb);
	if (use_src) { /* the weight is read from src and every element of data written */
		memset(d_cpu, 0x5a, n * eb);
		memset(d_gpu, 0x5a, n * eb);
	}
	memset(m_cpu, 7, n);
	memset(m_gpu, 7, n);
	t.src = use_src ? orig : NULL;
	t.data = d_cpu;
	nmp_status rc = nmp_cpu_run(&t, &p, mode, 2, mode == NMP_MASK_CHECK ? NULL : m_cpu, &sc, &ec);
	t.data = d_gpu;
	const char *why = cuda_be->supports(cuda_ctx, &t, &p, mode);
	int ran = 0;
	if (rc == NMP_OK && why)
		fail_msg("%s: the CUDA backend declines a case the CPU serves: %s", ctx, why);
	if (!why) {
		nmp_status rg = cuda_be->run(cuda_ctx, &t, &p, mode, mode == NMP_MASK_CHECK ? NULL : m_gpu, &sg, &eg);
		if (rc != rg)
			fail_msg("%s: status cpu %d (%s) cuda %d (%s)", ctx, rc, ec.message, rg, eg.message);
		if (rc != NMP_OK) {
			if (strcmp(ec.message, eg.message) != 0)
				fail_msg("%s: message cpu '%s' cuda '%s'", ctx, ec.message, eg.message);
		} else {
			if (mode != NMP_MASK_CHECK && memcmp(m_cpu, m_gpu, n) != 0)
				fail_msg("%s: masks differ", ctx);
			if (mode == NMP_MASK_APPLY && memcmp(d_cpu, d_gpu, n * eb) != 0)
				fail_msg("%s: outputs differ", ctx);
			if (sc.kept != sg.kept || sc.groups != sg.groups || sc.violations != sg.violations ||
			    sc.deficits != sg.deficits || sc.numel != sg.numel)
				fail_msg("%s: counts cpu kept %llu groups %llu viol %llu def %llu; cuda %llu %llu %llu %llu", ctx,
					 (unsigned long long)sc.kept, (unsigned long long)sc.groups, (unsigned long long)sc.violations,
					 (unsigned long long)sc.deficits, (unsigned long long)sg.kept, (unsigned long long)sg.groups,
					 (unsigned long long)sg.violations, (unsigned long long)sg.deficits);
			if (mode != NMP_MASK_CHECK) {
				expect_close(sc.l1_dense, sg.l1_dense, "l1_dense", ctx);
				expect_close(sc.l1_kept, sg.l1_kept, "l1_kept", ctx);
				expect_close(sc.l1_unstructured, sg.l1_unstructured, "l1_unstructured", ctx);
			}
		}
		ran = 1;
	}
	free(orig);
	free(d_cpu);
	free(d_gpu);
	free(m_cpu);
	free(m_gpu);
	return ran;
}

static int setup(void **state)
{
	(void)state;
	if (nmp_cuda_backend_open(&cuda_be, &cuda_ctx, cuda_why, sizeof cuda_why) != NMP_OK)
		cuda_be = NULL;
	else
		printf("[ DEVICE   ] %s\n", cuda_why);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (cuda_be)
		cuda_be->close(cuda_ctx);
	return 0;
}

#define NEED_DEVICE()                                                                 \
	do {                                                                          \
		if (!cuda_be) {                                                       \
			printf("[ SKIPPED  ] no usable CUDA device: %s\n", cuda_why); \
			skip();                                                       \
		}                                                                     \
	} while (0)

static void run_family(const char *const *pats, size_t np)
{
	int ran = 0;
	for (size_t pi = 0; pi < np; pi++) {
		char text[32];
		snprintf(text, sizeof text, "%s", pats[pi]);
		size_t len = strlen(text);
		bool greedy = len > 2 && text[len - 1] == 'g';
		if (greedy)
			text[len - 1] = 0;
		for (size_t di = 0; di < sizeof dtypes / sizeof *dtypes; di++)
			for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
				for (int adv = 0; adv < 3; adv++)
					for (int mode = 0; mode < 3; mode++)
						for (int src = 0; src < 2; src++)
							ran += compare_case(text, greedy, dtypes[di], &shapes[si], adv, (nmp_mask_mode)mode, src);
	}
	printf("[ CASES    ] %d compared\n", ran);
	assert_true(ran > 0);
}

static void test_elementwise(void **state)
{
	(void)state;
	NEED_DEVICE();
	static const char *const pats[] = { "2:4", "1:4", "3:8", "16:32", "1:2", "5:7", "5:64", "7:256" };
	run_family(pats, sizeof pats / sizeof *pats);
}

static void test_vectors_blocks(void **state)
{
	(void)state;
	NEED_DEVICE();
	static const char *const pats[] = { "2:4@v4", "2:4@v8", "2:4@b4x4", "2:8@b2x2", "1:4@b1x2" };
	run_family(pats, sizeof pats / sizeof *pats);
}

static void test_transposable(void **state)
{
	(void)state;
	NEED_DEVICE();
	static const char *const pats[] = { "2:4@t", "1:2@t", "1:3@t", "3:4@t", "4:8@t", "2:4@tg", "4:8@tg" };
	run_family(pats, sizeof pats / sizeof *pats);
}

static void test_unstructured(void **state)
{
	(void)state;
	NEED_DEVICE();
	static const char *const pats[] = { "50%", "30%@v4", "25%@b2x4", "0%", "99.9%", "12.5%" };
	run_family(pats, sizeof pats / sizeof *pats);
}

/*
 * A budget below the tensor: element-wise N:M runs in slices and agrees;
 * other families decline.  320 KiB is a sixth of the fp32 tensor and holds
 * two slices of one 16:32 group (512 x 32 elements, 9 bytes each on the
 * device); 64 KiB does not, and element-wise 16:32 declines too.
 */
static void test_memory_budget(void **state)
{
	(void)state;
	NEED_DEVICE();
	static const shape big = { 2, { 1024, 512 }, 0, 1 };
	nmp_cuda_set_memory_budget(cuda_ctx, 320 << 10);
	int ran = 0;
	for (size_t di = 0; di < sizeof dtypes / sizeof *dtypes; di++) {
		if (dtypes[di] == NMP_DT_DOUBLE)
			continue;
		for (int mode = 0; mode < 2; mode++) {
			ran += compare_case("2:4", false, dtypes[di], &big, 0, (nmp_mask_mode)mode, false);
			ran += compare_case("16:32", false, dtypes[di], &big, 1, (nmp_mask_mode)mode, true);
		}
	}
	assert_int_equal(ran, 20);
	nmp_pattern v4, nm16, nm2;
	nmp_error e = { 0 };
	assert_int_equal(nmp_pattern_parse("2:4@v4", &v4, &e), NMP_OK);
	assert_int_equal(nmp_pattern_parse("16:32", &nm16, &e), NMP_OK);
	assert_int_equal(nmp_pattern_parse("2:4", &nm2, &e), NMP_OK);
	float *w = calloc(1024 * 512, sizeof *w);
	nmp_mask_tensor t = { .name = "w", .data = w, .dtype = NMP_DT_FLOAT, .rank = 2, .dims = big.dims, .axis = 0, .out_axis = 1 };
	assert_non_null(cuda_be->supports(cuda_ctx, &t, &v4, NMP_MASK_APPLY));
	assert_null(cuda_be->supports(cuda_ctx, &t, &nm16, NMP_MASK_APPLY));
	nmp_cuda_set_memory_budget(cuda_ctx, 64 << 10);
	assert_non_null(cuda_be->supports(cuda_ctx, &t, &nm16, NMP_MASK_APPLY));
	assert_null(cuda_be->supports(cuda_ctx, &t, &nm2, NMP_MASK_APPLY));
	nmp_cuda_set_memory_budget(cuda_ctx, 0);
	assert_null(cuda_be->supports(cuda_ctx, &t, &v4, NMP_MASK_APPLY));
	free(w);
}

/*
 * Mostly infinite: the cut of the reference statistic and of P% falls on
 * +-Inf, where the sums must not meet 0 x inf or the NaN keys beside it.
 */
static void test_infinite_cut(void **state)
{
	(void)state;
	NEED_DEVICE();
	static const char *const pats[] = { "2:4", "16:32", "2:4@v4", "2:4@t", "50%", "99.9%" };
	static const int32_t dts[] = { NMP_DT_FLOAT, NMP_DT_FLOAT16, NMP_DT_BFLOAT16, NMP_DT_DOUBLE };
	static const shape sh = { 2, { 64, 32 }, 1, 0 };
	int ran = 0;
	for (size_t pi = 0; pi < sizeof pats / sizeof *pats; pi++)
		for (size_t di = 0; di < sizeof dts / sizeof *dts; di++)
			for (int mode = 0; mode < 2; mode++)
				ran += compare_case(pats[pi], false, dts[di], &sh, 3, (nmp_mask_mode)mode, false);
	assert_int_equal(ran, 48);
}

/* Through the engine: --device cuda runs CUDA and the CPU fallback answers what CUDA declines. */
static void test_engine_dispatch(void **state)
{
	(void)state;
	NEED_DEVICE();
	nmp_engine *e = NULL;
	nmp_error err = { 0 };
	char note[256];
	assert_int_equal(nmp_engine_create(NMP_DEVICE_CUDA, 1, &e, note, sizeof note, &err), NMP_OK);
	assert_string_equal(nmp_engine_name(e), "cuda");
	nmp_engine_free(&e);
	assert_int_equal(nmp_engine_create(NMP_DEVICE_CPU, 1, &e, note, sizeof note, &err), NMP_OK);
	assert_string_equal(nmp_engine_name(e), "cpu");
	nmp_engine_free(&e);
}

/*
 * The sparsegpt sweep on the GPU against the CPU's: random layers (rows and
 * inputs that are not multiples of a block of threads or of the 128-column
 * block), a Hessian from random activations with a dead input, N:M (M that
 * do not divide the 128-column block, and M above it) and P%,
 * float and on an integer grid (int8 with a scale per row and zero points
 * per element, uint8 with one scale and zero point, and a zero scale on one
 * row).  Masks identical; rebuilt weights within 1e-9 of the layer's
 * largest, and on a grid the very same grid points.
 */
static void test_sparsegpt_sweep(void **state)
{
	(void)state;
	NEED_DEVICE();
	nmp_error err = { 0 };
	assert_int_equal(nmp_blas_load(0, &err), NMP_OK);
	enum { FLOAT, INT8_ROWS, UINT8_ONE };
	static const struct { uint64_t rows, K; const char *pat; int grid; } cases[] = {
		{ 33, 200, "2:4", FLOAT }, { 257, 136, "4:8", FLOAT }, { 64, 384, "1:4", FLOAT }, { 19, 130, "30%", FLOAT },
		{ 300, 256, "50%", FLOAT }, { 65, 264, "2:4", INT8_ROWS }, { 40, 136, "40%", UINT8_ONE },
		{ 129, 128, "4:8", UINT8_ONE }, { 31, 387, "1:3", FLOAT }, { 17, 512, "64:256", FLOAT },
		{ 33, 390, "5:6", INT8_ROWS },
	};
	uint64_t seed = 7;
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		const uint64_t R = cases[c].rows, K = cases[c].K, T = 2 * K;
		nmp_pattern p;
		assert_int_equal(nmp_pattern_parse(cases[c].pat, &p, &err), NMP_OK);
		double *W = malloc(R * K * sizeof *W), *Wc = malloc(R * K * sizeof *W), *X = malloc(T * K * sizeof *X);
		double *H = calloc(K * K, sizeof *H), *Hc = malloc(K * K * sizeof *H);
		uint8_t *mg = malloc(R * K), *mc = malloc(R * K);
		for (uint64_t i = 0; i < R * K; i++)
			W[i] = (double)((seed = seed * 6364136223846793005ull + 1442695040888963407ull) >> 11) / 9007199254740992.0 - 0.5;
		for (uint64_t i = 0; i < T * K; i++)
			X[i] = (i % K == 3) ? 0 : (double)((seed = seed * 6364136223846793005ull + 1) >> 11) / 9007199254740992.0;
		for (uint64_t t = 0; t < T; t++)
			for (uint64_t i = 0; i < K; i++)
				for (uint64_t j = 0; j < K; j++)
					H[i * K + j] += X[t * K + i] * X[t * K + j];
		memcpy(Wc, W, R * K * sizeof *W);
		memcpy(Hc, H, K * K * sizeof *H);
		double *gs = malloc(R * K * sizeof *gs), *gz = malloc(R * K * sizeof *gz);
		const bool int8 = cases[c].grid == INT8_ROWS;
		nmp_sgpt_grid grid = { .scale = gs, .zero = gz, .qmin = int8 ? -128 : 0, .qmax = int8 ? 127 : 255 };
		for (uint64_t i = 0; i < R * K; i++) {
			const uint64_t r = i / K;
			gs[i] = int8 ? (r == 5 ? 0.0 : 0.004 + 0.0005 * (double)(r % 7)) : 0.0045;
			gz[i] = int8 ? (double)((int)(rnd() % 9) - 4) : 128;
		}
		const nmp_sgpt_grid *g = cases[c].grid == FLOAT ? NULL : &grid;
		double dg = 0, dc = 0, big = 0, worst = 0;
		assert_int_equal(nmp_cuda_sparsegpt_solve(W, R, K, H, 0.01, &p, 0, g, mg, &dg, "gpu", &err), NMP_OK);
		assert_int_equal(nmp_sparsegpt_solve(Wc, R, K, Hc, 0.01, &p, 0, g, mc, &dc, "cpu", &err), NMP_OK);
		assert_true(dg == dc);
		assert_memory_equal(mg, mc, R * K);
		for (uint64_t i = 0; i < R * K; i++) {
			big = fmax(big, fabs(Wc[i]));
			worst = fmax(worst, fabs(W[i] - Wc[i]));
			if (!mc[i])
				assert_true(W[i] == 0 && Wc[i] == 0);
			else if (g) /* the same grid point: (q - zero) x scale, q an integer of the type's range */
				assert_true(W[i] == Wc[i] &&
					    (gs[i] == 0 ? W[i] == 0 :
							  nmp_sgpt_on_grid(W[i], gs[i], gz[i], grid.qmin, grid.qmax) == W[i]));
		}
		printf("[ SWEEP    ] %s %llux%llu%s: masks equal, largest difference %.3g of %.3g\n", cases[c].pat,
		       (unsigned long long)R, (unsigned long long)K, g ? (int8 ? " int8" : " uint8") : "", worst, big);
		assert_true(worst <= 1e-9 * big);
		free(W), free(Wc), free(X), free(H), free(Hc), free(mg), free(mc), free(gs), free(gz);
	}
}

/* CUDA_TEST_FILTER: run only the tests whose names match (cmocka's wildcards), e.g. "test_infinite*". */
int main(void)
{
	if (getenv("CUDA_TEST_FILTER"))
		cmocka_set_test_filter(getenv("CUDA_TEST_FILTER"));
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_elementwise),
		cmocka_unit_test(test_vectors_blocks),
		cmocka_unit_test(test_transposable),
		cmocka_unit_test(test_unstructured),
		cmocka_unit_test(test_memory_budget),
		cmocka_unit_test(test_infinite_cut),
		cmocka_unit_test(test_engine_dispatch),
		cmocka_unit_test(test_sparsegpt_sweep),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
