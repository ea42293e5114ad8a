/*
 * Tests of mask_rules.h, the rules the CPU backend and the CUDA kernels
 * both compile:
 *  - every fp16 key's magnitude equals an independent widening written here,
 *    for all 32 768 keys; bf16 likewise;
 *  - fp16/bf16 scales widen with their sign, NaN payloads kept;
 *  - NaN keys are exactly those above Inf, for every kind;
 *  - the tie rule orders by key, then by the lower index;
 *  - quantized keys are the fp32 bits of |q - zp| * |scale|, and the scale
 *    index walks per-tensor, per-axis and blocked layouts as the ONNX
 *    DequantizeLinear definition does;
 *  - the transposable tile tables hold exactly the valid tiles, in the
 *    row-by-row enumeration order, and the first best tile wins ties.
 */
#include "testutil.h"

#include <math.h>

#include "mask_rules.h"

/* Independent fp16 widening: value = man * 2^(exp - 25) (+ implicit bit), by ldexp. */
static double ref_half(uint32_t key)
{
	uint32_t e = key >> 10 & 0x1f, m = key & 0x3ff;
	if (e == 31)
		return m ? NAN : INFINITY;
	if (e == 0)
		return ldexp((double)m, -24);
	return ldexp((double)(m | 0x400), (int)e - 25);
}

static void test_f16_keys(void **state)
{
	(void)state;
	for (uint32_t k = 0; k < 0x8000u; k++) {
		if (nmp_key_is_nan(NMP_KK_F16, k)) {
			assert_true(k > 0x7c00u);
			continue;
		}
		double want = ref_half(k);
		assert_true(nmp_key_mag(NMP_KK_F16, k) == want);
		float neg = nmp_half_to_float((uint16_t)(k | 0x8000u), 0);
		assert_true((double)neg == -want);
	}
	assert_true(isinf(nmp_key_mag(NMP_KK_F16, 0x7c00u)));
	assert_false(nmp_key_is_nan(NMP_KK_F16, 0x7c00u));
	assert_true(nmp_key_is_nan(NMP_KK_F16, 0x7c01u));
	/* A NaN scale stays NaN with its payload. */
	assert_int_equal(nmp_bits_of_f32(nmp_half_to_float(0x7e01u, 0)), 0x7fc02000u);
}

static void test_bf16_and_f32_keys(void **state)
{
	(void)state;
	for (uint32_t k = 0; k < 0x8000u; k += 7) {
		if (nmp_key_is_nan(NMP_KK_BF16, k)) {
			assert_true(k > 0x7f80u);
			continue;
		}
		uint32_t bits = k << 16;
		float f;
		memcpy(&f, &bits, 4);
		assert_true(nmp_key_mag(NMP_KK_BF16, k) == (double)f);
	}
	assert_true(nmp_key_is_nan(NMP_KK_F32, 0x7f800001u));
	assert_false(nmp_key_is_nan(NMP_KK_F32, 0x7f800000u));
	assert_true(nmp_key_is_nan(NMP_KK_F64, 0x7ff0000000000001ull));
	/* Keys clear the sign: -0.5f and 0.5f have one key. */
	float v[2] = { -0.5f, 0.5f };
	assert_int_equal(nmp_float_key(NMP_RT_FLOAT, (const uint8_t *)v, 0), nmp_float_key(NMP_RT_FLOAT, (const uint8_t *)v, 1));
	assert_int_equal(nmp_float_key(NMP_RT_FLOAT, (const uint8_t *)v, 0), 0x3f000000u);
}

static void test_tie_rule(void **state)
{
	(void)state;
	assert_true(nmp_outranks(5, 9, 4, 0));
	assert_false(nmp_outranks(4, 0, 5, 9));
	assert_true(nmp_outranks(5, 1, 5, 2));
	assert_false(nmp_outranks(5, 2, 5, 1));
	assert_false(nmp_outranks(5, 2, 5, 2));
	assert_true(nmp_tile_greedy_before(1.0, 3, 1.0, 4));
	assert_true(nmp_tile_greedy_before(2.0, 9, 1.0, 0));
}

static void test_quant(void **state)
{
	(void)state;
	/* |(-3) - 2| * |-0.25| = 1.25 */
	assert_int_equal(nmp_quant_key(-3, 2, -0.25f), 0x3fa00000u);
	assert_int_equal(nmp_quant_key(7, 7, 3.0f), 0u);
	int8_t q[2] = { -128, 127 };
	assert_int_equal(nmp_quant_value(NMP_RT_INT8, (const uint8_t *)q, 0), -128);
	assert_int_equal(nmp_quant_value(NMP_RT_UINT8, (const uint8_t *)q, 0), 128);
	/* A [4, 6] weight: per tensor, per axis 0, per axis 1, blocks of 4 along axis 1. */
	nmp_quant_geom tensor = { .n_scale = 1 };
	nmp_quant_geom ax0 = { .n_scale = 4, .stride = 6, .len = 4 };
	nmp_quant_geom ax1 = { .n_scale = 6, .stride = 1, .len = 6 };
	nmp_quant_geom blk = { .n_scale = 8, .stride = 1, .len = 6, .block = 4 };
	for (uint64_t i = 0; i < 24; i++) {
		uint64_t r = i / 6, c = i % 6;
		assert_int_equal(nmp_quant_index(&tensor, i), 0);
		assert_int_equal(nmp_quant_index(&ax0, i), r);
		assert_int_equal(nmp_quant_index(&ax1, i), c);
		assert_int_equal(nmp_quant_index(&blk, i), r * 2 + c / 4); /* scale shape [4, 2] */
	}
	uint16_t h = 0xb800; /* -0.5 in fp16 */
	assert_true(nmp_quant_scale((const uint8_t *)&h, NMP_RT_FLOAT16, 0) == -0.5f);
	uint16_t b = 0xbf00; /* -0.5 in bf16 */
	assert_true(nmp_quant_scale((const uint8_t *)&b, NMP_RT_BFLOAT16, 0) == -0.5f);
}

/* Enumerates valid tiles row by row, each row's bits ascending. */
static void enum_tiles(unsigned m, unsigned n, unsigned row, uint16_t acc, unsigned *colsum, uint16_t *out, int *count)
{
	if (row == m) {
		for (unsigned c = 0; c < m; c++)
			if (colsum[c] != n)
				return;
		out[(*count)++] = acc;
		return;
	}
	for (unsigned bits = 0; bits < (1u << m); bits++) {
		if ((unsigned)__builtin_popcount(bits) != n)
			continue;
		bool ok = true;
		for (unsigned c = 0; c < m; c++)
			ok = ok && !((bits >> c & 1) && colsum[c] + 1 > n);
		if (!ok)
			continue;
		for (unsigned c = 0; c < m; c++)
			colsum[c] += bits >> c & 1;
		enum_tiles(m, n, row + 1, (uint16_t)(acc | bits << (4 * row)), colsum, out, count);
		for (unsigned c = 0; c < m; c++)
			colsum[c] -= bits >> c & 1;
	}
}

static void test_tile_tables(void **state)
{
	(void)state;
	static const uint16_t table[] = NMP_TILE_PATTERNS_INIT;
	int total = 0;
	for (unsigned m = 2; m <= 4; m++)
		for (unsigned n = 1; n < m; n++) {
			uint16_t want[512];
			unsigned colsum[4] = { 0 };
			int want_n = 0, count;
			enum_tiles(m, n, 0, 0, colsum, want, &want_n);
			int first = nmp_tile_table(m, n, &count);
			assert_int_equal(count, want_n);
			assert_memory_equal(table + first, want, (size_t)count * sizeof *want);
			total += count;
		}
	assert_int_equal(total, (int)(sizeof table / sizeof *table));
	int count;
	nmp_tile_table(4, 2, &count);
	assert_int_equal(count, 90);
	nmp_tile_table(5, 2, &count);
	assert_int_equal(count, 0);
}

static void test_tile_best(void **state)
{
	(void)state;
	static const uint16_t table[] = NMP_TILE_PATTERNS_INIT;
	int count, first = nmp_tile_table(4, 2, &count);
	/* All equal: the first tile of the table wins. */
	double w[16];
	for (int i = 0; i < 16; i++)
		w[i] = 1.0;
	assert_int_equal(nmp_tile_best(table + first, count, 4, w), 0);
	/* A diagonal band of large values: the best tile keeps it. */
	for (int i = 0; i < 16; i++)
		w[i] = (i / 4 == i % 4 || (i / 4 + 1) % 4 == i % 4) ? 10.0 : 1.0;
	int best = nmp_tile_best(table + first, count, 4, w);
	assert_true(nmp_tile_score(table[first + best], 4, w) == 80.0);
	for (int p = 0; p < count; p++)
		assert_true(nmp_tile_score(table[first + p], 4, w) <= 80.0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_f16_keys),
		cmocka_unit_test(test_bf16_and_f32_keys),
		cmocka_unit_test(test_tie_rule),
		cmocka_unit_test(test_quant),
		cmocka_unit_test(test_tile_tables),
		cmocka_unit_test(test_tile_best),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
