/*
 * Property tests of the CPU mask engine.
 *
 * Invariants checked on random and adversarial inputs (ties, zeros, +-Inf,
 * fp16 subnormals, negative zero):
 *  - every group of M along the group axis keeps exactly N, and they are the
 *    largest: their sum equals the best over all C(M,N) choices;
 *  - ties keep the lower index, and element-wise N:M keeps exactly the N
 *    that outrank the rest on every path the engine takes (layouts, group
 *    sizes, tails, dtypes);
 *  - vector and block patterns agree with a naive scorer written here;
 *  - transposable tiles keep N per row and column, with the best sum found by
 *    exhaustive search on 4x4 and 8x8 tiles;
 *  - unstructured P% zeroes round(P x n) of the smallest;
 *  - a pruned quantized weight becomes its zero point;
 *  - a pruned tensor passes check, a dense one does not;
 *  - the thread count never changes the mask.
 */
#include "testutil.h"

#include <math.h>

#include "dtype.h"
#include "mask.h"
#include "mask_rules.h"
#include "cpu/cpu.h"

static uint64_t rng_state = 88172645463325252ull;

static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static float rnd_normal(void)
{
	double u = ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0;
	double v = ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0;
	return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

static nmp_pattern pat(const char *s)
{
	nmp_pattern p;
	nmp_error err = { 0 };
	if (nmp_pattern_parse(s, &p, &err) != NMP_OK)
		fail_msg("%s", err.message);
	return p;
}

typedef struct tensor {
	int rank;
	int64_t dims[4];
	int axis, out_axis;
	int32_t dtype;
	void *data;
	uint64_t numel;
} tensor;

static nmp_mask_tensor view_of(tensor *t)
{
	return (nmp_mask_tensor){ .name = "w", .data = t->data, .dtype = t->dtype, .rank = t->rank,
				  .dims = t->dims, .axis = t->axis, .out_axis = t->out_axis };
}

static uint8_t *run(tensor *t, const char *pattern, nmp_mask_mode mode, int threads, nmp_mask_stats *st)
{
	nmp_pattern p = pat(pattern);
	nmp_mask_tensor v = view_of(t);
	uint8_t *mask = malloc(t->numel);
	nmp_mask_stats local;
	nmp_error err = { 0 };
	if (nmp_cpu_run(&v, &p, mode, threads, mask, st ? st : &local, &err) != NMP_OK)
		fail_msg("%s: %s", pattern, err.message);
	return mask;
}

static tensor make_f32(int rank, const int64_t *dims, int axis, int out_axis)
{
	tensor t = { .rank = rank, .axis = axis, .out_axis = out_axis, .dtype = NMP_DT_FLOAT, .numel = 1 };
	for (int i = 0; i < rank; i++) {
		t.dims[i] = dims[i];
		t.numel *= (uint64_t)dims[i];
	}
	float *x = malloc(t.numel * sizeof *x);
	for (uint64_t i = 0; i < t.numel; i++)
		x[i] = rnd_normal();
	t.data = x;
	return t;
}

/* ---- an independent view: row r, column c -> flat index (out axis fastest) ------------------ */

static uint64_t flat_of(const tensor *t, uint64_t r, uint64_t c)
{
	uint64_t coord[4] = { 0 }, stride[4];
	uint64_t s = 1;
	for (int a = t->rank - 1; a >= 0; a--) {
		stride[a] = s;
		s *= (uint64_t)t->dims[a];
	}
	coord[t->axis] = c;
	if (t->out_axis >= 0) {
		coord[t->out_axis] = r % (uint64_t)t->dims[t->out_axis];
		r /= (uint64_t)t->dims[t->out_axis];
	}
	for (int a = t->rank - 1; a >= 0; a--) {
		if (a == t->axis || a == t->out_axis)
			continue;
		coord[a] = r % (uint64_t)t->dims[a];
		r /= (uint64_t)t->dims[a];
	}
	uint64_t f = 0;
	for (int a = 0; a < t->rank; a++)
		f += coord[a] * stride[a];
	return f;
}

static double mag(const tensor *t, uint64_t i)
{
	if (t->dtype == NMP_DT_FLOAT)
		return fabs((double)((float *)t->data)[i]);
	uint16_t h = ((uint16_t *)t->data)[i] & 0x7fff;
	return t->dtype == NMP_DT_FLOAT16 ? (double)nmp_f16_key_mag(h) : (double)nmp_key_mag(NMP_KK_BF16, h);
}

/* Best sum of n of the m values over all subsets. */
static double best_subset(const double *v, int m, int n)
{
	double best = -1;
	for (unsigned s = 0; s < (1u << m); s++) {
		if (__builtin_popcount(s) != n)
			continue;
		double sum = 0;
		for (int i = 0; i < m; i++)
			if (s >> i & 1)
				sum += v[i];
		if (sum > best)
			best = sum;
	}
	return best;
}

static void assert_nm(const tensor *t, const uint8_t *mask, int n, int m, bool brute)
{
	uint64_t L = (uint64_t)t->dims[t->axis], rows = t->numel / L;
	for (uint64_t r = 0; r < rows; r++)
		for (uint64_t c0 = 0; c0 < L; c0 += (uint64_t)m) {
			double v[256], kept = 0, min_kept = INFINITY, max_pruned = -1;
			int count = 0;
			for (int x = 0; x < m; x++) {
				uint64_t i = flat_of(t, r, c0 + (uint64_t)x);
				v[x] = mag(t, i);
				if (mask[i]) {
					count++;
					kept += v[x];
					min_kept = fmin(min_kept, v[x]);
				} else {
					max_pruned = fmax(max_pruned, v[x]);
				}
			}
			assert_int_equal(count, n);
			assert_true(min_kept >= max_pruned);
			if (brute)
				assert_true(kept == best_subset(v, m, n));
		}
}

static void test_nm_random_all_layouts(void **state)
{
	(void)state;
	static const struct {
		int rank;
		int64_t dims[4];
		int axis, out;
	} shapes[] = {
		{ 2, { 64, 48 }, 0, 1 },        /* MatMul B [K,N]: strided groups */
		{ 2, { 48, 64 }, 1, 0 },        /* Gemm transB [N,K]: contiguous groups */
		{ 4, { 16, 32, 3, 3 }, 1, 0 },  /* Conv: middle axis */
		{ 3, { 3, 64, 24 }, 1, 2 },     /* batched MatMul B */
	};
	static const int nm[][2] = { { 2, 4 }, { 1, 4 }, { 3, 4 }, { 2, 8 }, { 4, 16 }, { 16, 32 }, { 3, 32 } };
	for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
		for (size_t k = 0; k < sizeof nm / sizeof nm[0]; k++) {
			if (shapes[s].dims[shapes[s].axis] % nm[k][1])
				continue;
			tensor t = make_f32(shapes[s].rank, shapes[s].dims, shapes[s].axis, shapes[s].out);
			char p[16];
			snprintf(p, sizeof p, "%d:%d", nm[k][0], nm[k][1]);
			nmp_mask_stats st;
			uint8_t *mask = run(&t, p, NMP_MASK_DRY, 2, &st);
			assert_nm(&t, mask, nm[k][0], nm[k][1], nm[k][1] <= 16);
			assert_int_equal(st.kept, t.numel / (uint64_t)nm[k][1] * (uint64_t)nm[k][0]);
			assert_true(st.l1_kept <= st.l1_unstructured * (1 + 1e-12));
			assert_true(st.l1_unstructured <= st.l1_dense * (1 + 1e-12));
			free(mask);
			free(t.data);
		}
}

static void test_nm_large_m_generic_path(void **state)
{
	(void)state;
	int64_t dims[2] = { 512, 8 };
	tensor t = make_f32(2, dims, 0, 1);
	uint8_t *mask = run(&t, "100:256", NMP_MASK_DRY, 2, NULL);
	assert_nm(&t, mask, 100, 256, false);
	free(mask);
	mask = run(&t, "5:64", NMP_MASK_DRY, 1, NULL);
	assert_nm(&t, mask, 5, 64, false);
	free(mask);
	free(t.data);
}

/* The sum of the K largest magnitudes, by sorting: the reference statistic's definition. */
static int cmp_desc(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

static void test_unstructured_reference_statistic(void **state)
{
	(void)state;
	int64_t dims[2] = { 64, 40 };
	tensor t = make_f32(2, dims, 0, 1);
	nmp_mask_stats st;
	uint8_t *mask = run(&t, "2:4", NMP_MASK_DRY, 2, &st);
	double *v = malloc(t.numel * sizeof *v), sum = 0;
	for (uint64_t i = 0; i < t.numel; i++)
		v[i] = fabs((double)((float *)t.data)[i]);
	qsort(v, t.numel, sizeof *v, cmp_desc);
	for (uint64_t i = 0; i < t.numel / 2; i++)
		sum += v[i];
	assert_true(fabs(st.l1_unstructured - sum) <= 1e-9 * sum);
	free(v);
	free(mask);
	free(t.data);
}

/* Every family's reference statistic, over several parts of the pool: the sum of the kept-count largest. */
static void test_reference_statistic_every_family(void **state)
{
	(void)state;
	static const char *patterns[] = { "2:4", "2:4@v4", "2:4@b4x4", "2:4@t", "1:4@t", "64:128", "30%", "30%@v4",
					  "25%@b2x4", "1:2@v4", "8:16@b2x2" };
	int64_t dims[2] = { 512, 320 };
	tensor t = make_f32(2, dims, 0, 1);
	double *v = malloc(t.numel * sizeof *v);
	for (uint64_t i = 0; i < t.numel; i++)
		v[i] = mag(&t, i);
	qsort(v, t.numel, sizeof *v, cmp_desc);
	for (size_t k = 0; k < sizeof patterns / sizeof patterns[0]; k++) {
		nmp_mask_stats st;
		free(run(&t, patterns[k], NMP_MASK_DRY, 3, &st));
		double sum = 0;
		for (uint64_t i = 0; i < st.kept; i++)
			sum += v[i];
		if (!(fabs(st.l1_unstructured - sum) <= 1e-12 * sum))
			fail_msg("%s: reference %.17g, sorted sum %.17g", patterns[k], st.l1_unstructured, sum);
	}
	free(v);
	free(t.data);
}

typedef struct ranked {
	double mag;
	uint64_t i;
} ranked;

/* Smallest first; of equal magnitudes the higher index first (it is zeroed first). */
static int cmp_prune_order(const void *a, const void *b)
{
	const ranked *x = a, *y = b;
	if (x->mag != y->mag)
		return x->mag < y->mag ? -1 : 1;
	return x->i > y->i ? -1 : x->i < y->i;
}

/*
 * Element-wise P% on a tensor of many parts, its values drawn from a few
 * magnitudes so that the threshold's ties cross the parts: the mask is the
 * first round(P x n) of the prune order, for any thread count, in fp32 and
 * fp16, and the kept magnitude is the reference statistic.
 */
static void test_unstructured_ties_across_parts(void **state)
{
	(void)state;
	static const double levels[] = { 0.0, 0.25, 0.5, 0.5, 1.0, 2.0, INFINITY };
	static const double sparsity[] = { 0.0, 0.1, 0.5, 0.7313, 0.999, 0.99999 };
	int64_t dims[2] = { 700, 500 };
	const uint64_t numel = 350000;
	for (int fp16 = 0; fp16 < 2; fp16++) {
		tensor t = { .rank = 2, .dims = { 700, 500 }, .axis = 0, .out_axis = 1, .numel = numel,
			     .dtype = fp16 ? NMP_DT_FLOAT16 : NMP_DT_FLOAT };
		(void)dims;
		t.data = malloc(numel * 4);
		ranked *order = malloc(numel * sizeof *order);
		for (uint64_t i = 0; i < numel; i++) {
			double x = levels[rnd() % 7];
			if (rnd() % 5 == 0 && x != 0 && x != INFINITY)
				x += x * 0x1p-9 * (double)(rnd() % 3); /* neighbours of a level: same bin, other keys */
			const bool neg = rnd() & 1;
			if (fp16) {
				uint16_t h = x == INFINITY ? 0x7c00 : x == 0 ? 0 : (uint16_t)((15 + ilogb(x)) << 10 |
								(uint16_t)((ldexp(x, -ilogb(x)) - 1) * 1024));
				((uint16_t *)t.data)[i] = (uint16_t)(h | (neg ? 0x8000 : 0));
				order[i] = (ranked){ (double)h, i };
			} else {
				((float *)t.data)[i] = (float)(neg ? -x : x);
				order[i] = (ranked){ x, i };
			}
		}
		qsort(order, numel, sizeof *order, cmp_prune_order);
		for (size_t k = 0; k < sizeof sparsity / sizeof sparsity[0]; k++) {
			char p[32];
			snprintf(p, sizeof p, "%.4f%%", sparsity[k] * 100);
			const uint64_t n_prune = (uint64_t)floor(sparsity[k] * (double)numel + 0.5);
			uint8_t *want = malloc(numel);
			memset(want, 1, numel);
			for (uint64_t i = 0; i < n_prune; i++)
				want[order[i].i] = 0;
			for (int threads = 1; threads <= 8; threads += 7) {
				nmp_mask_stats st;
				uint8_t *mask = run(&t, p, NMP_MASK_DRY, threads, &st);
				for (uint64_t i = 0; i < numel; i++)
					if (mask[i] != want[i])
						fail_msg("%s %s, %d threads: element %llu is %d, want %d", fp16 ? "fp16" : "fp32", p,
							 threads, (unsigned long long)i, mask[i], want[i]);
				assert_int_equal(st.kept, numel - n_prune);
				assert_true(st.l1_unstructured == st.l1_kept);
				free(mask);
			}
			free(want);
		}
		free(order);
		free(t.data);
	}
}

/* ---- adversarial values ----------------------------------------------------------------------------- */

static void fill_group_and_check(const float *vals, int m, int n, const uint8_t *want)
{
	int64_t dims[2] = { 1, m };
	tensor t = { .rank = 2, .dims = { 1, m }, .axis = 1, .out_axis = 0, .dtype = NMP_DT_FLOAT,
		     .numel = (uint64_t)m };
	(void)dims;
	t.data = malloc((size_t)m * sizeof(float));
	memcpy(t.data, vals, (size_t)m * sizeof(float));
	char p[16];
	snprintf(p, sizeof p, "%d:%d", n, m);
	uint8_t *mask = run(&t, p, NMP_MASK_APPLY, 1, NULL);
	assert_memory_equal(mask, want, (size_t)m);
	for (int i = 0; i < m; i++)
		if (!want[i])
			assert_true(((float *)t.data)[i] == 0.0f && !signbit(((float *)t.data)[i]));
	free(mask);
	free(t.data);
}

static void test_ties_and_special_values(void **state)
{
	(void)state;
	const float inf = INFINITY;
	{ /* all equal: the lower indices win */
		float v[4] = { 3, 3, 3, 3 };
		uint8_t want[4] = { 1, 1, 0, 0 };
		fill_group_and_check(v, 4, 2, want);
	}
	{ /* all zero, and negative zero equals zero */
		float v[4] = { 0.0f, -0.0f, 0.0f, -0.0f };
		uint8_t want[4] = { 1, 1, 0, 0 };
		fill_group_and_check(v, 4, 2, want);
	}
	{ /* -Inf is the largest magnitude; ties between infinities go to the lower index */
		float v[4] = { 1, -inf, 5, inf };
		uint8_t want[4] = { 0, 1, 0, 1 };
		fill_group_and_check(v, 4, 2, want);
		float w[4] = { inf, inf, -inf, 7 };
		uint8_t want1[4] = { 1, 0, 0, 0 };
		fill_group_and_check(w, 4, 1, want1);
	}
	{ /* signs do not matter, magnitudes do; a tie at the cut keeps the lower index */
		float v[8] = { -9, 1, 2, -2, 8, -8, 0.5f, 7 };
		uint8_t want[8] = { 1, 0, 0, 0, 1, 1, 0, 1 };
		fill_group_and_check(v, 8, 4, want);
		float w[8] = { 1, -2, 2, -2, 0, 0, 0, 0 };
		uint8_t want2[8] = { 0, 1, 1, 0, 0, 0, 0, 0 };
		fill_group_and_check(w, 8, 2, want2);
	}
}

static void test_fp16_subnormals_and_bf16(void **state)
{
	(void)state;
	/* fp16: 1 and 2 are the smallest subnormals, 0x0400 the smallest normal, 0x7c00 inf */
	uint16_t h[8] = { 0x0001, 0x8002, 0x0400, 0x03ff, 0xfc00, 0x0000, 0x8000, 0x3c00 };
	for (int dt = 0; dt < 2; dt++) {
		tensor t = { .rank = 2, .dims = { 1, 8 }, .axis = 1, .out_axis = 0,
			     .dtype = dt ? NMP_DT_BFLOAT16 : NMP_DT_FLOAT16, .numel = 8 };
		t.data = malloc(sizeof h);
		memcpy(t.data, h, sizeof h);
		nmp_mask_stats st;
		uint8_t *mask = run(&t, "4:8", NMP_MASK_APPLY, 1, &st);
		/* by magnitude bits: 0x7c00 > 0x3c00 > 0x0400 > 0x03ff > 0x0002 > 0x0001 > 0 = 0 */
		const uint8_t want[8] = { 0, 0, 1, 1, 1, 0, 0, 1 };
		assert_memory_equal(mask, want, 8);
		const uint16_t after[8] = { 0, 0, 0x0400, 0x03ff, 0xfc00, 0, 0, 0x3c00 };
		assert_memory_equal(t.data, after, sizeof after);
		assert_int_equal(st.kept, 4);
		free(mask);
		free(t.data);
	}
}

static void test_nan_is_an_error(void **state)
{
	(void)state;
	int64_t dims[2] = { 16, 8 };
	tensor t = make_f32(2, dims, 0, 1);
	((float *)t.data)[37] = NAN;
	nmp_pattern p = pat("2:4");
	nmp_mask_tensor v = view_of(&t);
	v.name = "layer.weight";
	nmp_mask_stats st;
	nmp_error err = { 0 };
	assert_int_equal(nmp_cpu_run(&v, &p, NMP_MASK_APPLY, 2, NULL, &st, &err), NMP_ERR_MODEL);
	assert_string_equal(err.message, "tensor 'layer.weight': NaN at flat index 37");
	/* nothing was written */
	assert_true(isnan(((float *)t.data)[37]) && ((float *)t.data)[0] != 0.0f);
	free(t.data);
}

/* ---- vectors and blocks against a naive scorer ---------------------------------------------------- */

/* The mask into want; returns the kept units' scores summed (the l1_kept statistic). */
static double naive_units(const tensor *t, int n, int m, int ur, int uc, uint8_t *want)
{
	double l1_kept = 0;
	uint64_t L = (uint64_t)t->dims[t->axis], rows = t->numel / L;
	for (uint64_t r0 = 0; r0 < rows; r0 += (uint64_t)ur)
		for (uint64_t c0 = 0; c0 < L; c0 += (uint64_t)(m * uc)) {
			double score[64];
			for (int x = 0; x < m; x++) {
				double s = 0;
				for (int a = 0; a < ur; a++)
					for (int b = 0; b < uc; b++)
						s += mag(t, flat_of(t, r0 + (uint64_t)a, c0 + (uint64_t)(x * uc + b)));
				score[x] = s;
			}
			for (int x = 0; x < m; x++) {
				int rank = 0;
				for (int y = 0; y < m; y++)
					rank += score[y] > score[x] || (score[y] == score[x] && y < x);
				l1_kept += rank < n ? score[x] : 0;
				for (int a = 0; a < ur; a++)
					for (int b = 0; b < uc; b++)
						want[flat_of(t, r0 + (uint64_t)a, c0 + (uint64_t)(x * uc + b))] = rank < n;
			}
		}
	return l1_kept;
}

/* Sums in another order: equal, or within 1e-12 relative. */
static void assert_sum_near(double got, double want)
{
	if (!(got == want || fabs(got - want) <= 1e-12 * fabs(want)))
		fail_msg("sum %.17g, expected %.17g", got, want);
}

static void test_vector_and_block(void **state)
{
	(void)state;
	static const struct {
		const char *p;
		int n, m, ur, uc;
	} cases[] = {
		{ "2:4@v4", 2, 4, 4, 1 }, { "2:4@v32", 2, 4, 32, 1 }, { "1:4@v8", 1, 4, 8, 1 },
		{ "2:4@b4x4", 2, 4, 4, 4 }, { "3:8@b2x2", 3, 8, 2, 2 }, { "2:4@b8x1", 2, 4, 8, 1 },
		{ "1:2@v4", 1, 2, 4, 1 }, { "5:16@b2x2", 5, 16, 2, 2 }, /* M other than 4 and 8: the general path */
	};
	int64_t conv[4] = { 32, 64, 3, 3 }, mm[2] = { 64, 32 };
	for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
		for (int shape = 0; shape < 2; shape++) {
			tensor t = shape ? make_f32(4, conv, 1, 0) : make_f32(2, mm, 0, 1);
			nmp_mask_stats st;
			uint8_t *mask = run(&t, cases[k].p, NMP_MASK_DRY, 2, &st);
			uint8_t *want = malloc(t.numel);
			const double l1 = naive_units(&t, cases[k].n, cases[k].m, cases[k].ur, cases[k].uc, want);
			if (memcmp(mask, want, t.numel) != 0)
				fail_msg("%s on shape %d differs from the naive scorer", cases[k].p, shape);
			assert_int_equal(st.kept, t.numel * (uint64_t)cases[k].n / (uint64_t)cases[k].m);
			assert_sum_near(st.l1_kept, l1);
			free(want);
			free(mask);
			free(t.data);
		}
}

/* ---- transposable tiles ---------------------------------------------------------------------------- */

/* Best sum of an m x m 0/1 matrix with n per row and column, by exhaustive search over rows. */
static double best_tile(const double *w, int m, int n, int row, int *colsum)
{
	if (row == m) {
		for (int c = 0; c < m; c++)
			if (colsum[c] != n)
				return -INFINITY;
		return 0;
	}
	double best = -INFINITY;
	for (unsigned bits = 0; bits < (1u << m); bits++) {
		if (__builtin_popcount(bits) != n)
			continue;
		bool ok = true;
		double s = 0;
		for (int c = 0; c < m; c++)
			if (bits >> c & 1) {
				if (colsum[c] >= n)
					ok = false;
				s += w[row * m + c];
			}
		if (!ok)
			continue;
		for (int c = 0; c < m; c++)
			colsum[c] += bits >> c & 1;
		double rest = best_tile(w, m, n, row + 1, colsum);
		for (int c = 0; c < m; c++)
			colsum[c] -= bits >> c & 1;
		if (s + rest > best)
			best = s + rest;
	}
	return best;
}

static void check_tiles(const char *pattern, int n, int m, bool exact, int rounds)
{
	for (int round = 0; round < rounds; round++) {
		int64_t dims[2] = { 2 * m, 2 * m };
		tensor t = make_f32(2, dims, 1, 0); /* [out, in]: rows are output channels */
		if (round == 0)
			for (uint64_t i = 0; i < t.numel; i++)
				((float *)t.data)[i] = (float)(i % 3); /* many ties */
		nmp_mask_stats st;
		uint8_t *mask = run(&t, pattern, NMP_MASK_DRY, 1, &st);
		for (int tr = 0; tr < 2; tr++)
			for (int tc = 0; tc < 2; tc++) {
				double w[64], kept = 0;
				int rows[8] = { 0 }, cols[8] = { 0 };
				for (int r = 0; r < m; r++)
					for (int c = 0; c < m; c++) {
						uint64_t i = flat_of(&t, (uint64_t)(tr * m + r), (uint64_t)(tc * m + c));
						w[r * m + c] = mag(&t, i);
						if (mask[i]) {
							rows[r]++;
							cols[c]++;
							kept += w[r * m + c];
						}
					}
				for (int k = 0; k < m; k++) {
					assert_true(rows[k] <= n && cols[k] <= n);
					if (exact)
						assert_true(rows[k] == n && cols[k] == n);
				}
				if (exact) {
					int colsum[8] = { 0 };
					double best = best_tile(w, m, n, 0, colsum);
					assert_true(fabs(kept - best) <= 1e-9 * best);
				}
			}
		if (exact)
			assert_int_equal(st.deficits, 0);
		free(mask);
		free(t.data);
	}
}

static void test_transposable(void **state)
{
	(void)state;
	check_tiles("2:4@t", 2, 4, true, 20);      /* the 90 patterns */
	check_tiles("1:4@t", 1, 4, true, 5);
	check_tiles("3:4@t", 3, 4, true, 5);
	check_tiles("1:8@t", 1, 8, true, 1);       /* min-cost flow vs all 8! permutations */
	check_tiles("7:8@t", 7, 8, true, 1);
	check_tiles("2:8@t", 2, 8, false, 3);      /* rows and columns within N (search too large) */
	check_tiles("2:4@t", 2, 4, false, 0);
	nmp_pattern g = pat("2:4@t");
	assert_false(g.greedy);
	nmp_pattern gg = pat("m4n2_2d_greedy");
	assert_true(gg.greedy);
	check_tiles("m4n2_2d_greedy", 2, 4, false, 10);
	check_tiles("m8n4_2d_greedy", 4, 8, false, 5);
}

/* One 4 x 4 tile's values, of a kind that strains a shortcut to the exact method. */
static void adversarial_tile(float *v, int kind)
{
	const float levels[3] = { 0.25f, 0.5f, 1.0f };
	for (int i = 0; i < 16; i++) {
		float x = rnd_normal();
		switch (kind) {
		case 0: break;                                                   /* ordinary */
		case 1: x = levels[rnd() % 3]; break;                            /* exact ties */
		case 2: x = nextafterf(1.0f, 2.0f) * (float)(1 + rnd() % 2); break; /* near ties: an ulp apart */
		case 3: x = 1.0f + (float)(rnd() % 4) * 0x1p-23f; break;
		case 4: x = ldexpf(x, 110); break;                               /* beyond the filter's range */
		case 5: x = rnd() % 5 ? x : INFINITY; break;
		case 6: x = ldexpf(x, -120); break;                              /* subnormal and tiny */
		case 7: x = rnd() % 4 ? 0.0f : x; break;                         /* mostly zero */
		case 8: x = 0.0f; break;
		default: x = rnd() & 1 ? ldexpf(x, 60) : ldexpf(x, -60); break; /* huge beside tiny */
		}
		v[i] = rnd() & 1 ? -x : x;
	}
}

/* fp16 bits of an adversarial kind: ordinary, exact ties, zeros, subnormals, infinities. */
static uint16_t adversarial_half(int kind)
{
	static const uint16_t levels[3] = { 0x3400, 0x3800, 0x3c00 };
	uint16_t sign = (uint16_t)(rnd() % 2 ? 0x8000 : 0);
	switch (kind % 5) {
	case 0: return sign | (uint16_t)(rnd() % 0x7c00);
	case 1: return sign | levels[rnd() % 3];
	case 2: return rnd() % 3 ? sign | levels[rnd() % 3] : sign;
	case 3: return sign | (uint16_t)(rnd() % 0x400);
	default: return sign | (uint16_t)(rnd() % 4 ? rnd() % 0x7c00 : 0x7c00);
	}
}

/*
 * Exact transposable tiles of M = 4 choose the first tile of the shared
 * table with the largest exact score (nmp_tile_best, mask_rules.h), however
 * the backend gets there: on every adversarial kind, fp32 and fp16, in a
 * MatMul's layouts (rows contiguous or not) and a Conv's (tiles at adjacent
 * kernel positions side by side: 3x3 and 5x5 windows, so eight positions at
 * a time and the rest), 1:4, 2:4 and 3:4; the kept magnitude is the sum of
 * the chosen scores, and APPLY zeroes exactly the pruned cells.
 */
static void test_transposable_matches_the_rule(void **state)
{
	(void)state;
	static const uint16_t table[] = NMP_TILE_PATTERNS_INIT;
	for (int fp16 = 0; fp16 < 2; fp16++)
	for (int n = 1; n <= 3; n++)
		for (int layout = 0; layout < 6; layout++) {
			/*
			 * layout 0: [rows, L] with the group axis last; layout 1: [L, rows], rows
			 * contiguous; layouts 2 and 3: a Conv's [Cout, Cin, k, k], 3x3 and 5x5;
			 * layout 4: [2, Cout, Cin, 5], whose ten positions are adjacent five at a time;
			 * layout 5: a 3x3 Conv of 675 tiles, which two threads split inside a run
			 */
			static const struct {
				int rank, axis, out;
				int64_t dims[4];
			} shapes[6] = { { 2, 1, 0, { 64, 40 } },      { 2, 0, 1, { 64, 40 } }, { 4, 1, 0, { 8, 40, 3, 3 } },
					{ 4, 1, 0, { 4, 8, 5, 5 } }, { 4, 2, 1, { 2, 4, 8, 5 } }, { 4, 1, 0, { 20, 60, 3, 3 } } };
			tensor t = { .rank = shapes[layout].rank, .dtype = fp16 ? NMP_DT_FLOAT16 : NMP_DT_FLOAT, .numel = 1,
				     .axis = shapes[layout].axis, .out_axis = shapes[layout].out };
			for (int a = 0; a < t.rank; a++)
				t.numel *= (uint64_t)(t.dims[a] = shapes[layout].dims[a]);
			const int L = (int)t.dims[t.axis], rows = (int)(t.numel / (uint64_t)L);
			float *x = malloc(t.numel * sizeof *x);
			uint16_t *h = malloc(t.numel * sizeof *h);
			t.data = fp16 ? (void *)h : (void *)x;
			int tile = 0;
			for (int r0 = 0; r0 < rows; r0 += 4)
				for (int c0 = 0; c0 < L; c0 += 4, tile++) {
					float v[16];
					adversarial_tile(v, tile % 10);
					for (int i = 0; i < 16; i++) {
						uint64_t at = flat_of(&t, (uint64_t)(r0 + i / 4), (uint64_t)(c0 + i % 4));
						x[at] = v[i];
						h[at] = adversarial_half(tile);
					}
				}
			char p[16];
			snprintf(p, sizeof p, "%d:4@t", n);
			nmp_mask_stats st;
			uint8_t *mask = run(&t, p, NMP_MASK_DRY, 2, &st);
			int n_pat;
			const uint16_t *pats = table + nmp_tile_table(4, (unsigned)n, &n_pat);
			double kept = 0;
			for (int r0 = 0; r0 < rows; r0 += 4)
				for (int c0 = 0; c0 < L; c0 += 4) {
					double w[16];
					for (int i = 0; i < 16; i++) {
						uint64_t at = flat_of(&t, (uint64_t)(r0 + i / 4), (uint64_t)(c0 + i % 4));
						w[i] = fp16 ? (double)nmp_f16_key_mag(h[at] & 0x7fffu) : fabs((double)x[at]);
					}
					const int best = nmp_tile_best(pats, n_pat, 4, w);
					kept += nmp_tile_score(pats[best], 4, w);
					for (int i = 0; i < 16; i++) {
						uint64_t at = flat_of(&t, (uint64_t)(r0 + i / 4), (uint64_t)(c0 + i % 4));
						if (mask[at] != (pats[best] >> i & 1))
							fail_msg("%s %s layout %d, tile at (%d, %d): cell %d is %d", p,
								 fp16 ? "fp16" : "fp32", layout, r0, c0, i, mask[at]);
					}
				}
			assert_int_equal(st.kept, t.numel * (uint64_t)n / 4);
			assert_true(st.l1_kept == kept || fabs(st.l1_kept - kept) <= 1e-12 * kept);
			const size_t es = fp16 ? 2 : 4;
			uint8_t *before = malloc(t.numel * es);
			memcpy(before, t.data, t.numel * es);
			free(run(&t, p, NMP_MASK_APPLY, 2, NULL));
			for (uint64_t i = 0; i < t.numel; i++) {
				const uint8_t zero[4] = { 0 };
				if (memcmp((uint8_t *)t.data + i * es, mask[i] ? before + i * es : zero, es))
					fail_msg("%s %s layout %d: APPLY left element %llu wrong", p, fp16 ? "fp16" : "fp32",
						 layout, (unsigned long long)i);
			}
			free(before);
			free(mask);
			free(x);
			free(h);
		}
}

/*
 * A tile whose fp32 tile sums put a different tile strictly first than the
 * exact sums do: an approximation may only rule tiles out, never choose.
 * The largest fp32 sum is tile 23 of the table's 90, alone; the largest
 * exact sum is tile 41's.  Eight such tiles side by side (a MatMul's B with
 * 32 rows), and the same tile in the other layout, keep tile 41.
 */
static void test_transposable_rounding_trap(void **state)
{
	(void)state;
	const float e = 0x1p-23f, h = 0x1p-24f, t3 = 0x3p-25f;
	const float w[16] = {
		1.0f,        e, 1.0f,        e,
		t3,          h, t3,          e,
		1.5f,        h, 1.0f + e,    t3,
		1.0f + e,    e, e,           0.75f + h,
	};
	static const uint16_t table[] = NMP_TILE_PATTERNS_INIT;
	int n_pat;
	const uint16_t *pats = table + nmp_tile_table(4, 2, &n_pat);
	double wd[16];
	for (int i = 0; i < 16; i++)
		wd[i] = w[i];
	assert_int_equal(nmp_tile_best(pats, n_pat, 4, wd), 41);
	for (int layout = 0; layout < 2; layout++) {
		/* layout 0: [4, 32], rows adjacent; layout 1: [32, 4], the group axis last */
		tensor t = { .rank = 2, .dtype = NMP_DT_FLOAT, .numel = 128, .axis = layout, .out_axis = !layout };
		t.dims[0] = layout ? 32 : 4, t.dims[1] = layout ? 4 : 32;
		float *x = malloc(128 * sizeof *x);
		t.data = x;
		for (uint64_t r = 0; r < 32; r++)
			for (uint64_t c = 0; c < 4; c++)
				x[flat_of(&t, r, c)] = w[4 * (r % 4) + c];
		uint8_t *mask = run(&t, "2:4@t", NMP_MASK_DRY, 1, NULL);
		for (uint64_t r = 0; r < 32; r++)
			for (uint64_t c = 0; c < 4; c++)
				if (mask[flat_of(&t, r, c)] != (pats[41] >> (4 * (r % 4) + c) & 1))
					fail_msg("layout %d: cell (%llu, %llu) is %d", layout, (unsigned long long)r,
						 (unsigned long long)c, mask[flat_of(&t, r, c)]);
		free(mask);
		free(x);
	}
}

/*
 * Tiles whose best exact score has exactly one rival within 2^-18 of it (a
 * tie, or a sum an ulp or two away): whatever pair of the 90 tiles the two
 * are, in the same class of tops and bottoms or not, the first of the exact
 * best is kept.  The tiles are drawn from few levels until 512 such are
 * found, in both layouts of eight tiles side by side.
 */
static void test_transposable_one_rival(void **state)
{
	(void)state;
	static const uint16_t table[] = NMP_TILE_PATTERNS_INIT;
	int n_pat;
	const uint16_t *pats = table + nmp_tile_table(4, 2, &n_pat);
	enum { TILES = 512 };
	static const float levels[6] = { 1.0f, 2.0f, 3.0f, 1.0f + 0x1p-23f, 2.0f + 0x1p-22f, 0.0f };
	float (*w)[16] = malloc(TILES * sizeof *w);
	int want[TILES], same_half = 0;
	for (int k = 0; k < TILES;) {
		double wd[16], sc[90], top = 0;
		for (int i = 0; i < 16; i++)
			wd[i] = w[k][i] = levels[rnd() % (rnd() % 4 ? 3 : 6)];
		for (int p = 0; p < n_pat; p++)
			top = fmax(top, sc[p] = nmp_tile_score(pats[p], 4, wd));
		int near = 0, first = -1, other = -1;
		for (int p = 0; p < n_pat; p++)
			if (sc[p] >= top * (1 - 0x1p-18)) {
				near++;
				if (sc[p] == top && first < 0)
					first = p;
				else
					other = p;
			}
		if (near != 2)
			continue;
		same_half += (pats[first] & 0xff) == (pats[other] & 0xff) || (pats[first] >> 8) == (pats[other] >> 8);
		want[k++] = first;
	}
	assert_true(same_half > TILES / 8); /* the rival shares a top or a bottom often enough to matter */
	for (int layout = 0; layout < 2; layout++) {
		/* layout 0: [4, 4 * TILES], rows adjacent; layout 1: [4 * TILES, 4], the group axis last */
		tensor t = { .rank = 2, .dtype = NMP_DT_FLOAT, .numel = 16 * TILES, .axis = layout, .out_axis = !layout };
		t.dims[0] = layout ? 4 * TILES : 4, t.dims[1] = layout ? 4 : 4 * TILES;
		float *x = malloc(t.numel * sizeof *x);
		t.data = x;
		for (uint64_t r = 0; r < 4 * TILES; r++)
			for (uint64_t c = 0; c < 4; c++)
				x[flat_of(&t, r, c)] = w[r / 4][4 * (r % 4) + c];
		uint8_t *mask = run(&t, "2:4@t", NMP_MASK_DRY, 1, NULL);
		for (uint64_t r = 0; r < 4 * TILES; r++)
			for (uint64_t c = 0; c < 4; c++)
				if (mask[flat_of(&t, r, c)] != (pats[want[r / 4]] >> (4 * (r % 4) + c) & 1))
					fail_msg("layout %d, tile %llu: cell (%llu, %llu) is %d, want tile %d", layout,
						 (unsigned long long)(r / 4), (unsigned long long)(r % 4),
						 (unsigned long long)c, mask[flat_of(&t, r, c)], want[r / 4]);
		free(mask);
		free(x);
	}
	free(w);
}

static void test_greedy_reports_deficits(void **state)
{
	(void)state;
	/*
	 * Sort-and-accept takes the six 9s (rows and columns 0-2 fill up), then
	 * the 5; every other cell of row 3 and column 3 meets a full line, so both
	 * are left with one.  The exact solver keeps two everywhere.
	 */
	float w[16] = {
		0, 9, 9, 0,
		9, 0, 9, 0,
		9, 9, 0, 0,
		0, 0, 0, 5,
	};
	tensor t = { .rank = 2, .dims = { 4, 4 }, .axis = 1, .out_axis = 0, .dtype = NMP_DT_FLOAT, .numel = 16 };
	t.data = w;
	nmp_mask_stats st;
	uint8_t *mask = run(&t, "m4n2_2d_greedy", NMP_MASK_DRY, 1, &st);
	assert_int_equal(st.kept, 7);
	assert_int_equal(st.deficits, 2);
	const uint8_t want[16] = { 0, 1, 1, 0, 1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1 };
	assert_memory_equal(mask, want, 16);
	free(mask);
	mask = run(&t, "2:4@t", NMP_MASK_DRY, 1, &st);
	assert_int_equal(st.kept, 8);
	assert_int_equal(st.deficits, 0);
	free(mask);
}

/*
 * The exact solver for M > 4 on ties, subnormals beside normals, zeros and
 * Inf: rounding in the flow's distances once made negative cycles and an
 * endless walk.  It must end, keep exactly N per row and column of every
 * tile, and keep every Inf a tile can hold.
 */
static void test_transposable_exact_adversarial(void **state)
{
	(void)state;
	const float vals[] = { 0.25f, 0.25f, 0.25f, 1e-41f, 0.0f, -0.0f, 0.3f, 1e-3f, 0.25f, 7.0f };
	int64_t dims[2] = { 32, 64 };
	for (int with_inf = 0; with_inf < 2; with_inf++) {
		tensor t = make_f32(2, dims, 1, 0);
		float *x = t.data;
		for (uint64_t i = 0; i < t.numel; i++)
			x[i] = vals[rnd() % 10];
		if (with_inf) /* one Inf per row of the first tile column */
			for (int r = 0; r < 32; r++)
				x[r * 64 + (r % 8)] = (r & 1) ? INFINITY : -INFINITY;
		nmp_mask_stats st;
		uint8_t *mask = run(&t, "4:8@t", NMP_MASK_DRY, 2, &st);
		assert_int_equal(st.kept, t.numel / 2);
		assert_int_equal(st.deficits, 0);
		for (int tr = 0; tr < 4; tr++)
			for (int tc = 0; tc < 8; tc++)
				for (int a = 0; a < 8; a++) {
					int rk = 0, ck = 0;
					for (int b = 0; b < 8; b++) {
						rk += mask[(tr * 8 + a) * 64 + tc * 8 + b];
						ck += mask[(tr * 8 + b) * 64 + tc * 8 + a];
					}
					assert_int_equal(rk, 4);
					assert_int_equal(ck, 4);
				}
		if (with_inf)
			for (int r = 0; r < 32; r++)
				assert_int_equal(mask[r * 64 + (r % 8)], 1);
		free(mask);
		free(t.data);
	}
}

/* ---- adversarial tensors of every float type --------------------------------------------------------- */

/* A tensor of dtype whose elements run through the adversarial kinds sixteen at a time. */
static tensor make_adversarial(int32_t dtype, int rank, const int64_t *dims, int axis, int out_axis)
{
	tensor t = { .rank = rank, .axis = axis, .out_axis = out_axis, .dtype = dtype, .numel = 1 };
	for (int i = 0; i < rank; i++) {
		t.dims[i] = dims[i];
		t.numel *= (uint64_t)dims[i];
	}
	t.data = malloc(t.numel * (dtype == NMP_DT_FLOAT ? 4 : 2));
	for (uint64_t i = 0; i < t.numel; i += 16) {
		float v[16];
		adversarial_tile(v, (int)(i / 16 % 10));
		for (uint64_t k = 0; k < 16 && i + k < t.numel; k++) {
			uint32_t bits;
			memcpy(&bits, &v[k], 4);
			if (dtype == NMP_DT_FLOAT)
				((float *)t.data)[i + k] = v[k];
			else if (dtype == NMP_DT_BFLOAT16)
				((uint16_t *)t.data)[i + k] = (uint16_t)(bits >> 16);
			else
				((uint16_t *)t.data)[i + k] = adversarial_half((int)(i / 16));
		}
	}
	return t;
}

static const int32_t float_types[3] = { NMP_DT_FLOAT, NMP_DT_FLOAT16, NMP_DT_BFLOAT16 };

/*
 * Vectors and blocks score units by double sums in a fixed order, so values
 * far apart in size (where the order of a sum changes it), ties, zeros and
 * infinities give the naive scorer's mask in every float type and layout:
 * rows side by side (a MatMul's B), rows apart (a Gemm's transposed B) and a
 * Conv's kernel rows.
 */
static void test_units_adversarial(void **state)
{
	(void)state;
	static const struct {
		const char *p;
		int n, m, ur, uc;
	} cases[] = {
		{ "2:4@v4", 2, 4, 4, 1 }, { "2:4@v32", 2, 4, 32, 1 }, { "1:4@v8", 1, 4, 8, 1 }, { "2:4@b4x4", 2, 4, 4, 4 },
		{ "3:8@b2x2", 3, 8, 2, 2 }, { "5:8@b4x2", 5, 8, 4, 2 }, { "2:4@b8x1", 2, 4, 8, 1 }, { "1:2@v4", 1, 2, 4, 1 },
	};
	const int64_t conv[4] = { 32, 64, 3, 3 }, mm[2] = { 64, 64 };
	for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
		for (int dt = 0; dt < 3; dt++)
			for (int shape = 0; shape < 3; shape++) {
				tensor t = shape == 2 ? make_adversarial(float_types[dt], 4, conv, 1, 0) :
					   make_adversarial(float_types[dt], 2, mm, shape == 0 ? 0 : 1, shape == 0 ? 1 : 0);
				nmp_mask_stats st;
				uint8_t *mask = run(&t, cases[k].p, NMP_MASK_DRY, 2, &st);
				uint8_t *want = malloc(t.numel);
				const double l1 = naive_units(&t, cases[k].n, cases[k].m, cases[k].ur, cases[k].uc, want);
				uint64_t kept = 0;
				for (uint64_t i = 0; i < t.numel; i++) {
					kept += want[i];
					if (mask[i] != want[i])
						fail_msg("%s, dtype %d, shape %d: element %llu is %d", cases[k].p, float_types[dt],
							 shape, (unsigned long long)i, mask[i]);
				}
				assert_int_equal(st.kept, kept);
				assert_sum_near(st.l1_kept, l1);
				free(want);
				free(mask);
				free(t.data);
			}
}

/*
 * A unit's score is summed rows first, then columns, and the order shows:
 * with big = 2^30 (a double's ulp there is 2^-22) and cells of s = 2^-23,
 * unit A (big at row 0, column 3, s elsewhere) sums to big + 2 ulps in the
 * rule's order (three s, then big: big + 1.5 ulps, rounded to even; each
 * later s is half an ulp and rounds away), but to big + 6 ulps columns
 * first.  Unit B (big and 2^-20) is big + 4 ulps in any order, C is 4 big,
 * D is zero: 2:4@b4x4 keeps C and B, in both layouts and on any thread count.
 */
static void test_units_sum_order(void **state)
{
	(void)state;
	const float big = 0x1p30f, s = 0x1p-23f;
	for (int layout = 0; layout < 2; layout++)
		for (int threads = 1; threads <= 2; threads++) {
			/* layout 0: [16, 4], the group axis first (rows side by side); 1: [4, 16] */
			tensor t = { .rank = 2, .dtype = NMP_DT_FLOAT, .numel = 64, .axis = layout, .out_axis = !layout };
			t.dims[0] = layout ? 4 : 16, t.dims[1] = layout ? 16 : 4;
			float *x = calloc(64, sizeof *x);
			t.data = x;
			for (uint64_t r = 0; r < 4; r++)
				for (uint64_t c = 0; c < 4; c++) {
					x[flat_of(&t, r, c)] = r == 0 && c == 3 ? big : s;       /* A */
					x[flat_of(&t, r, 8 + c)] = 4 * big;                      /* C */
				}
			x[flat_of(&t, 0, 4)] = big;                                          /* B */
			x[flat_of(&t, 0, 5)] = 0x1p-20f;
			uint8_t *mask = run(&t, "2:4@b4x4", NMP_MASK_DRY, threads, NULL);
			for (uint64_t r = 0; r < 4; r++)
				for (uint64_t c = 0; c < 16; c++)
					if (mask[flat_of(&t, r, c)] != (c >= 4 && c < 12))
						fail_msg("layout %d, %d threads: cell (%llu, %llu) is %d", layout, threads,
							 (unsigned long long)r, (unsigned long long)c, mask[flat_of(&t, r, c)]);
			free(mask);
			free(x);
		}
}

/*
 * APPLY zeroes exactly the elements the DRY mask prunes and leaves the rest
 * bit for bit, with the same statistics, whether or not the caller asks for
 * the mask: every structured family that zeroes in its own pass, every
 * float type, every layout.
 */
static void test_apply_zeroes_what_the_mask_prunes(void **state)
{
	(void)state;
	static const char *patterns[] = { "2:4@v4", "1:8@v4", "2:4@b4x4", "3:8@b2x2", "2:4@b8x1", "2:4@v32",
					  "2:4@t",  "1:4@t",  "3:4@t",    "4:8@t",    "2:4",      "16:32" };
	const int64_t conv[4] = { 32, 64, 3, 3 }, mm[2] = { 64, 64 };
	for (size_t k = 0; k < sizeof patterns / sizeof patterns[0]; k++)
		for (int dt = 0; dt < 3; dt++)
			for (int shape = 0; shape < 3; shape++)
				for (int want_mask = 0; want_mask < 2; want_mask++) {
					tensor t = shape == 2 ? make_adversarial(float_types[dt], 4, conv, 1, 0) :
						   make_adversarial(float_types[dt], 2, mm, shape == 0 ? 0 : 1, shape == 0 ? 1 : 0);
					const size_t es = float_types[dt] == NMP_DT_FLOAT ? 4 : 2;
					uint8_t *before = malloc(t.numel * es);
					memcpy(before, t.data, t.numel * es);
					nmp_mask_stats dry, st;
					uint8_t *want = run(&t, patterns[k], NMP_MASK_DRY, 2, &dry);
					assert_memory_equal(t.data, before, t.numel * es);

					nmp_pattern p = pat(patterns[k]);
					nmp_mask_tensor v = view_of(&t);
					uint8_t *mask = want_mask ? calloc(t.numel, 1) : NULL;
					nmp_error err = { 0 };
					assert_int_equal(nmp_cpu_run(&v, &p, NMP_MASK_APPLY, 3, mask, &st, &err), NMP_OK);
					if (mask)
						assert_memory_equal(mask, want, t.numel);
					for (uint64_t i = 0; i < t.numel; i++) {
						const uint8_t zero[4] = { 0 };
						const uint8_t *expect = want[i] ? before + i * es : zero;
						if (memcmp((uint8_t *)t.data + i * es, expect, es) != 0)
							fail_msg("%s, dtype %d, shape %d, %s: element %llu %s", patterns[k],
								 float_types[dt], shape, mask ? "mask" : "no mask",
								 (unsigned long long)i, want[i] ? "changed" : "not zeroed");
					}
					assert_int_equal(st.kept, dry.kept);
					assert_true(st.l1_kept == dry.l1_kept);
					assert_true(st.l1_unstructured == dry.l1_unstructured);
					free(mask);
					free(want);
					free(before);
					free(t.data);
				}
}

/* ---- element-wise N:M: the rule, exactly, on every path --------------------------------------------- */

/* A stored value whose magnitude is often one of a few levels (so groups tie), else random; either sign. */
static uint32_t tie_heavy_bits(int32_t dtype)
{
	static const uint32_t f32[] = { 0, 1, 0x3f800000, 0x3f800001, 0x7f800000 };
	static const uint32_t f16[] = { 0, 1, 0x3c00, 0x3c01, 0x7c00 };
	static const uint32_t b16[] = { 0, 1, 0x3f80, 0x3f81, 0x7f80 };
	const bool wide = dtype == NMP_DT_FLOAT;
	const uint32_t *levels = wide ? f32 : dtype == NMP_DT_FLOAT16 ? f16 : b16;
	const uint32_t inf = levels[4], sign = wide ? 0x80000000u : 0x8000u;
	uint32_t mag = rnd() % 4 ? levels[rnd() % 5] : (uint32_t)(rnd() % inf);
	return mag | (rnd() & 1 ? sign : 0);
}

/* Element x of a group is kept when fewer than N of its group outrank it: larger, or equal and before it. */
static void nm_by_the_rule(const tensor *t, int n, int m, uint8_t *want)
{
	const uint64_t L = (uint64_t)t->dims[t->axis], rows = t->numel / L;
	for (uint64_t r = 0; r < rows; r++)
		for (uint64_t c0 = 0; c0 < L; c0 += (uint64_t)m)
			for (int x = 0; x < m; x++) {
				const double vx = mag(t, flat_of(t, r, c0 + (uint64_t)x));
				int above = 0;
				for (int y = 0; y < m; y++) {
					const double vy = mag(t, flat_of(t, r, c0 + (uint64_t)y));
					above += vy > vx || (vy == vx && y < x);
				}
				want[flat_of(t, r, c0 + (uint64_t)x)] = above < n;
			}
}

/*
 * Every M up to 32 takes one of several paths by layout and size (pair
 * counts, a sorting network's threshold, vectors rotated within groups,
 * groups transposed eight at a time, and the generic tiles that take the
 * rest and the tails); whichever it takes, with ties everywhere, the mask
 * is the rule's, APPLY zeroes exactly what it prunes, and the counts agree.
 * The portable paths too, which a CPU without AVX2 takes.
 */
static void nm_exact_on_every_path(void)
{
	static const int nm[][2] = { { 1, 2 },   { 2, 4 },   { 1, 4 },   { 3, 4 },  { 2, 8 },  { 5, 8 },
				     { 4, 16 },  { 15, 16 }, { 12, 24 }, { 1, 32 }, { 16, 32 }, { 31, 32 },
				     { 3, 6 },   { 5, 12 },  { 7, 20 } };
	for (size_t k = 0; k < sizeof nm / sizeof nm[0]; k++)
		for (int shape = 0; shape < 7; shape++)
			for (int dt = 0; dt < 3; dt++) {
				const int n = nm[k][0], m = nm[k][1];
				const int64_t L = m * 3;
				/*
				 * groups of 3 x 7 = 21 rows (8 + 8 + 5), or 8, 13 and 27 side by side, or a
				 * Conv's window of 9, 3 or 25 positions (the positions left over by the vectors
				 * taken across 9, 15 and 18 (outer, group) pairs: one batch of eight and a tail)
				 */
				const struct {
					int rank;
					int64_t dims[4];
					int axis, out;
				} shapes[] = { { 2, { 7, L }, 1, 0 },     { 2, { L, 8 }, 0, 1 },     { 2, { L, 13 }, 0, 1 },
					       { 3, { 2, L, 27 }, 1, 2 }, { 4, { 3, L, 3, 3 }, 1, 0 }, { 4, { 5, L, 1, 3 }, 1, 0 },
					       { 4, { 6, L, 5, 5 }, 1, 0 } };
				tensor t = { .rank = shapes[shape].rank, .axis = shapes[shape].axis,
					     .out_axis = shapes[shape].out, .dtype = float_types[dt], .numel = 1 };
				for (int a = 0; a < t.rank; a++) {
					t.dims[a] = shapes[shape].dims[a];
					t.numel *= (uint64_t)t.dims[a];
				}
				const size_t es = t.dtype == NMP_DT_FLOAT ? 4 : 2;
				t.data = malloc(t.numel * es);
				for (uint64_t i = 0; i < t.numel; i++) {
					uint32_t b = tie_heavy_bits(t.dtype);
					if (es == 4)
						memcpy((uint8_t *)t.data + 4 * i, &b, 4);
					else
						((uint16_t *)t.data)[i] = (uint16_t)b;
				}
				uint8_t *want = malloc(t.numel), *before = malloc(t.numel * es);
				nm_by_the_rule(&t, n, m, want);
				memcpy(before, t.data, t.numel * es);
				char p[16];
				snprintf(p, sizeof p, "%d:%d", n, m);
				for (int threads = 1; threads <= 3; threads += 2) {
					/* in place on one thread; on three, read from a source and write every element */
					const bool from_src = threads == 3;
					memset(t.data, 0xa5, t.numel * es);
					if (!from_src)
						memcpy(t.data, before, t.numel * es);
					nmp_pattern pt = pat(p);
					nmp_mask_tensor v = view_of(&t);
					v.src = from_src ? before : NULL;
					uint8_t *mask = malloc(t.numel);
					nmp_mask_stats st;
					nmp_error err = { 0 };
					if (nmp_cpu_run(&v, &pt, NMP_MASK_APPLY, threads, mask, &st, &err) != NMP_OK)
						fail_msg("%s: %s", p, err.message);
					for (uint64_t i = 0; i < t.numel; i++) {
						if (mask[i] != want[i])
							fail_msg("%s, dtype %d, shape %d, %d threads: element %llu is %d, want %d",
								 p, t.dtype, shape, threads, (unsigned long long)i, mask[i],
								 want[i]);
						const uint8_t zero[4] = { 0 };
						if (memcmp((uint8_t *)t.data + i * es, want[i] ? before + i * es : zero, es))
							fail_msg("%s, dtype %d, shape %d: element %llu %s", p, t.dtype, shape,
								 (unsigned long long)i, want[i] ? "changed" : "not zeroed");
					}
					assert_int_equal(st.kept, t.numel / (uint64_t)m * (uint64_t)n);
					assert_int_equal(st.groups, t.numel / (uint64_t)m);
					free(mask);
				}
				free(want);
				free(before);
				free(t.data);
			}
}

static void test_nm_exact_on_every_path(void **state)
{
	(void)state;
	nm_exact_on_every_path();
	nmp_cpu_use_avx2(false);
	nm_exact_on_every_path();
	nmp_cpu_use_avx2(true);
}

/* ---- unstructured -------------------------------------------------------------------------------------- */

static void test_unstructured(void **state)
{
	(void)state;
	int64_t dims[2] = { 40, 24 };
	tensor t = make_f32(2, dims, 0, 1);
	nmp_mask_stats st;
	uint8_t *mask = run(&t, "37.5%", NMP_MASK_DRY, 2, &st);
	uint64_t pruned = 0;
	double max_pruned = 0, min_kept = INFINITY;
	for (uint64_t i = 0; i < t.numel; i++) {
		if (mask[i])
			min_kept = fmin(min_kept, mag(&t, i));
		else {
			pruned++;
			max_pruned = fmax(max_pruned, mag(&t, i));
		}
	}
	assert_int_equal(pruned, 360); /* round(0.375 * 960) */
	assert_true(max_pruned <= min_kept);
	free(mask);

	/* Ties: equal values, the higher indices go first. */
	for (uint64_t i = 0; i < t.numel; i++)
		((float *)t.data)[i] = 1.0f;
	mask = run(&t, "50%", NMP_MASK_DRY, 1, &st);
	for (uint64_t i = 0; i < t.numel; i++)
		assert_int_equal(mask[i], i < t.numel / 2);
	free(mask);
	free(t.data);

	/* Vectors of 8 rows: whole vectors go. */
	tensor u = make_f32(2, dims, 0, 1);
	mask = run(&u, "50%@v8", NMP_MASK_DRY, 1, &st);
	for (uint64_t c = 0; c < 40; c++)
		for (uint64_t r0 = 0; r0 < 24; r0 += 8)
			for (uint64_t r = 1; r < 8; r++)
				assert_int_equal(mask[flat_of(&u, r0 + r, c)], mask[flat_of(&u, r0, c)]);
	assert_int_equal(st.kept, u.numel / 2);
	free(mask);

	/*
	 * A P% that prunes every element, the largest of them infinite: nothing
	 * is kept, so the kept magnitude is 0 (not 0 x inf), and the reference
	 * statistic with it.  99.9% of 480 rounds to all 480.
	 */
	free(u.data);
	int64_t small[2] = { 20, 24 };
	tensor w = make_f32(2, small, 0, 1);
	float *x = w.data;
	x[5] = INFINITY;
	x[17] = -INFINITY;
	for (int threads = 1; threads <= 2; threads++) {
		mask = run(&w, "99.9%", NMP_MASK_DRY, threads, &st);
		assert_int_equal(st.kept, 0);
		assert_true(st.l1_kept == 0 && st.l1_unstructured == 0);
		assert_true(isinf(st.l1_dense));
		for (uint64_t i = 0; i < w.numel; i++)
			assert_int_equal(mask[i], 0);
		free(mask);
	}
	free(w.data);
}

/* ---- quantized ------------------------------------------------------------------------------------------ */

static void test_quantized_zero_point(void **state)
{
	(void)state;
	/* [K=4, N=2] int8, per-axis along the group axis: scale decides, not |q| alone. */
	int8_t q[8] = { 10, 3, 12, 3, 11, 3, 13, 5 };
	float scale[4] = { 1.0f, 1.0f, 0.1f, 1.0f };
	int8_t zp[4] = { 0, 2, 0, 3 };
	nmp_quant_params qp = { .scale = scale, .scale_dtype = NMP_DT_FLOAT, .zero_point = zp, .axis = 0,
				.n_scale = 4 };
	int64_t dims[2] = { 4, 2 };
	nmp_mask_tensor v = { .name = "q", .data = q, .dtype = NMP_DT_INT8, .rank = 2, .dims = dims,
			      .axis = 0, .out_axis = 1, .quant = &qp };
	nmp_pattern p = pat("2:4");
	uint8_t mask[8];
	nmp_mask_stats st;
	nmp_error err = { 0 };
	assert_int_equal(nmp_cpu_run(&v, &p, NMP_MASK_APPLY, 1, mask, &st, &err), NMP_OK);
	/* column 0 magnitudes: 10, 10, 1.2, 10 -> keep rows 0, 1 (ties: lower index);
	 * column 1: |3-0|=3, |3-2|*1=1, 0.3, |5-3|=2 -> keep rows 0 and 3 */
	const uint8_t want[8] = { 1, 1, 1, 0, 0, 0, 0, 1 };
	assert_memory_equal(mask, want, 8);
	/* pruned weights become their row's zero point */
	const int8_t after[8] = { 10, 3, 12, 2, 0, 0, 3, 5 };
	assert_memory_equal(q, after, 8);
	/* and the result complies */
	assert_int_equal(nmp_cpu_run(&v, &p, NMP_MASK_CHECK, 1, NULL, &st, &err), NMP_OK);
	assert_int_equal(st.violations, 0);
}

/* ---- P% of vectors and blocks against a naive selection --------------------------------------------- */

static const double *naive_scores;

/* Pruned first: the smaller score, and of equal ones the higher unit index. */
static int prune_order(const void *a, const void *b)
{
	const uint64_t u = *(const uint64_t *)a, v = *(const uint64_t *)b;
	if (naive_scores[u] != naive_scores[v])
		return naive_scores[u] < naive_scores[v] ? -1 : 1;
	return u > v ? -1 : u < v;
}

/* P% of units of ur x uc: the mask into want, the kept count and magnitude into *kept, *l1. */
static void naive_unstructured_units(const tensor *t, double sparsity, unsigned ur, unsigned uc, uint8_t *want,
				     uint64_t *kept, double *l1)
{
	const uint64_t L = (uint64_t)t->dims[t->axis], rows = t->numel / L, cb = L / uc, units = rows / ur * cb;
	double *score = malloc(units * sizeof *score);
	uint64_t *order = malloc(units * sizeof *order);
	uint8_t *keep = malloc(units);
	for (uint64_t u = 0; u < units; u++) {
		double sum = 0; /* rows, then columns */
		for (unsigned a = 0; a < ur; a++)
			for (unsigned b = 0; b < uc; b++)
				sum += mag(t, flat_of(t, u / cb * ur + a, u % cb * uc + b));
		score[u] = sum;
		order[u] = u;
		keep[u] = 1;
	}
	naive_scores = score;
	qsort(order, units, sizeof *order, prune_order);
	const uint64_t n_prune = (uint64_t)floor(sparsity * (double)units + 0.5);
	for (uint64_t i = 0; i < n_prune; i++)
		keep[order[i]] = 0;
	*kept = 0;
	*l1 = 0;
	for (uint64_t u = 0; u < units; u++)
		for (unsigned a = 0; a < ur; a++)
			for (unsigned b = 0; b < uc; b++) {
				const uint64_t i = flat_of(t, u / cb * ur + a, u % cb * uc + b);
				want[i] = keep[u];
				*kept += keep[u];
				*l1 += keep[u] ? mag(t, i) : 0;
			}
	free(keep);
	free(order);
	free(score);
}

/*
 * P% of vectors and blocks: the mask, the kept count and the kept magnitude
 * of the naive selection, on random values, on values of five levels (unit
 * scores tie often, and ties prune the higher unit index first) and on the
 * adversarial tiles (infinities, zeros, subnormals), in the three layouts,
 * on one thread and three, and APPLY zeroes what the mask prunes.
 */
static void test_unstructured_units(void **state)
{
	(void)state;
	static const struct {
		const char *p;
		unsigned ur, uc;
	} cases[] = {
		{ "30%@v4", 4, 1 }, { "50%@v8", 8, 1 }, { "25%@b2x4", 2, 4 }, { "62.5%@b4x2", 4, 2 },
		{ "0%@b2x2", 2, 2 }, { "99.9%@v2", 2, 1 }, { "37.5%@b1x8", 1, 8 },
	};
	/* shape 3: a MatMul's B with more column blocks than a tile of the passes over it (unit_run) */
	const int64_t conv[4] = { 16, 32, 3, 3 }, mm[2] = { 64, 48 }, tall[2] = { 320, 24 };
	for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
		for (int data = 0; data < 3; data++)
			for (int shape = 0; shape < 4; shape++) {
				const int axis = shape == 0 || shape == 3 ? 0 : 1, out = 1 - axis;
				const int64_t *dims = shape == 2 ? conv : shape == 3 ? tall : mm;
				const int rank = shape == 2 ? 4 : 2;
				tensor t = data == 2 ? make_adversarial(NMP_DT_FLOAT, rank, dims, axis, out)
						     : make_f32(rank, dims, axis, out);
				if (data == 1)
					for (uint64_t i = 0; i < t.numel; i++)
						((float *)t.data)[i] = (float)(rand() % 5) - 2.0f;
				uint8_t *want = malloc(t.numel);
				uint64_t kept;
				double l1;
				naive_unstructured_units(&t, pat(cases[k].p).sparsity, cases[k].ur, cases[k].uc, want, &kept,
							 &l1);
				for (int threads = 1; threads <= 3; threads += 2) {
					nmp_mask_stats st;
					uint8_t *mask = run(&t, cases[k].p, NMP_MASK_DRY, threads, &st);
					for (uint64_t i = 0; i < t.numel; i++)
						if (mask[i] != want[i])
							fail_msg("%s, data %d, shape %d, %d threads: element %llu is %d", cases[k].p,
								 data, shape, threads, (unsigned long long)i, mask[i]);
					assert_int_equal(st.kept, kept);
					assert_sum_near(st.l1_kept, l1);
					free(mask);
				}
				float *before = malloc(t.numel * sizeof *before);
				memcpy(before, t.data, t.numel * sizeof *before);
				free(run(&t, cases[k].p, NMP_MASK_APPLY, 2, NULL));
				for (uint64_t i = 0; i < t.numel; i++) {
					const float v = ((float *)t.data)[i], w = want[i] ? before[i] : 0.0f;
					if (memcmp(&v, &w, 4) != 0)
						fail_msg("%s, data %d, shape %d: APPLY left element %llu at %g", cases[k].p, data,
							 shape, (unsigned long long)i, (double)v);
				}
				free(before);
				free(want);
				free(t.data);
			}
}

/*
 * The same on a MatMul's B large enough for the scoring and the marking to
 * split into parts, whose bounds fall inside a row block and a tile.
 */
static void test_unstructured_units_in_parts(void **state)
{
	(void)state;
	static const struct {
		const char *p;
		unsigned ur;
	} cases[] = { { "30%@v4", 4 }, { "40%@v2", 2 } };
	const int64_t dims[2] = { 999, 604 }; /* 151 row blocks of 4 by 999 columns: 150849 units */
	tensor t = make_f32(2, dims, 0, 1);
	uint8_t *want = malloc(t.numel);
	for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
		uint64_t kept;
		double l1;
		naive_unstructured_units(&t, pat(cases[k].p).sparsity, cases[k].ur, 1, want, &kept, &l1);
		for (int threads = 2; threads <= 3; threads++) {
			nmp_mask_stats st;
			uint8_t *mask = run(&t, cases[k].p, NMP_MASK_DRY, threads, &st);
			if (memcmp(mask, want, t.numel) != 0)
				fail_msg("%s on %d threads differs from the naive selection", cases[k].p, threads);
			assert_int_equal(st.kept, kept);
			assert_sum_near(st.l1_kept, l1);
			free(mask);
		}
	}
	free(want);
	free(t.data);
}

/* ---- check, threads ---------------------------------------------------------------------------------- */

static void test_check_and_threads(void **state)
{
	(void)state;
	static const char *patterns[] = { "2:4", "1:4", "16:32", "2:4@v4", "2:4@b4x4", "2:4@t", "50%",
					  "25%@b2x2", "100:256" };
	int64_t dims[4] = { 32, 256, 1, 1 };
	for (size_t k = 0; k < sizeof patterns / sizeof patterns[0]; k++) {
		tensor t = make_f32(4, dims, 1, 0);
		nmp_mask_stats st;
		free(run(&t, patterns[k], NMP_MASK_CHECK, 2, &st));
		assert_true(st.violations > 0);
		uint8_t *m1 = run(&t, patterns[k], NMP_MASK_DRY, 1, NULL);
		uint8_t *m4 = run(&t, patterns[k], NMP_MASK_DRY, 4, NULL);
		assert_memory_equal(m1, m4, t.numel);
		free(run(&t, patterns[k], NMP_MASK_APPLY, 3, NULL));
		free(run(&t, patterns[k], NMP_MASK_CHECK, 2, &st));
		if (st.violations != 0)
			fail_msg("%s: %llu violations after pruning", patterns[k], (unsigned long long)st.violations);
		free(m1);
		free(m4);
		free(t.data);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nm_random_all_layouts),
		cmocka_unit_test(test_nm_large_m_generic_path),
		cmocka_unit_test(test_unstructured_reference_statistic),
		cmocka_unit_test(test_reference_statistic_every_family),
		cmocka_unit_test(test_unstructured_ties_across_parts),
		cmocka_unit_test(test_ties_and_special_values),
		cmocka_unit_test(test_fp16_subnormals_and_bf16),
		cmocka_unit_test(test_nan_is_an_error),
		cmocka_unit_test(test_vector_and_block),
		cmocka_unit_test(test_transposable),
		cmocka_unit_test(test_transposable_matches_the_rule),
		cmocka_unit_test(test_transposable_rounding_trap),
		cmocka_unit_test(test_transposable_one_rival),
		cmocka_unit_test(test_greedy_reports_deficits),
		cmocka_unit_test(test_transposable_exact_adversarial),
		cmocka_unit_test(test_units_adversarial),
		cmocka_unit_test(test_units_sum_order),
		cmocka_unit_test(test_apply_zeroes_what_the_mask_prunes),
		cmocka_unit_test(test_nm_exact_on_every_path),
		cmocka_unit_test(test_unstructured),
		cmocka_unit_test(test_quantized_zero_point),
		cmocka_unit_test(test_unstructured_units),
		cmocka_unit_test(test_unstructured_units_in_parts),
		cmocka_unit_test(test_check_and_threads),
	};
	return cmocka_run_group_tests_name("mask_cpu", tests, NULL, NULL);
}
