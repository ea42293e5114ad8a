/* Unit tests of pattern.c: the grammar, the ASP aliases and every malformed form. */
#include "testutil.h"

#include "pattern.h"

static void parse_ok(const char *s, const char *canon, bool structured, nmp_unit unit, unsigned n,
		     unsigned m)
{
	nmp_pattern p;
	nmp_error err = { 0 };
	if (nmp_pattern_parse(s, &p, &err) != NMP_OK)
		fail_msg("'%s' rejected: %s", s, err.message);
	assert_string_equal(p.text, canon);
	assert_int_equal(p.structured, structured);
	assert_int_equal(p.unit, unit);
	if (structured) {
		assert_int_equal(p.n, n);
		assert_int_equal(p.m, m);
	}
}

static void test_grammar(void **state)
{
	(void)state;
	parse_ok("2:4", "2:4", true, NMP_UNIT_ELEMENT, 2, 4);
	parse_ok("1:4", "1:4", true, NMP_UNIT_ELEMENT, 1, 4);
	parse_ok("16:32", "16:32", true, NMP_UNIT_ELEMENT, 16, 32);
	parse_ok("3:32", "3:32", true, NMP_UNIT_ELEMENT, 3, 32);
	parse_ok("255:256", "255:256", true, NMP_UNIT_ELEMENT, 255, 256);
	parse_ok("2:4@v4", "2:4@v4", true, NMP_UNIT_VECTOR, 2, 4);
	parse_ok("2:4@b4x8", "2:4@b4x8", true, NMP_UNIT_BLOCK, 2, 4);
	parse_ok("2:4@t", "2:4@t", true, NMP_UNIT_TILE, 2, 4);
	parse_ok("50%", "50%", false, NMP_UNIT_ELEMENT, 0, 0);
	parse_ok("87.5%@v8", "87.5%@v8", false, NMP_UNIT_VECTOR, 0, 0);
	parse_ok("0%@b2x2", "0%@b2x2", false, NMP_UNIT_BLOCK, 0, 0);

	nmp_pattern p;
	nmp_error err = { 0 };
	assert_int_equal(nmp_pattern_parse("2:4@b4x8", &p, &err), NMP_OK);
	assert_int_equal(nmp_pattern_unit_rows(&p), 4);
	assert_int_equal(nmp_pattern_unit_cols(&p), 8);
	assert_int_equal(nmp_pattern_group_cols(&p), 32);
	assert_int_equal(nmp_pattern_parse("87.5%", &p, &err), NMP_OK);
	assert_true(p.sparsity == 0.875);
}

static void test_asp_aliases(void **state)
{
	(void)state;
	parse_ok("m4n2_1d", "2:4", true, NMP_UNIT_ELEMENT, 2, 4);
	parse_ok("m4n2_2d_best", "2:4@t", true, NMP_UNIT_TILE, 2, 4);
	parse_ok("m32n3_1d", "3:32", true, NMP_UNIT_ELEMENT, 3, 32);
	parse_ok("m32n8v4_2d_greedy", "8:32@v4", true, NMP_UNIT_VECTOR, 8, 32);
	parse_ok("m8n4_2d_greedy", "4:8@t", true, NMP_UNIT_TILE, 4, 8);
	nmp_pattern p;
	nmp_error err = { 0 };
	assert_int_equal(nmp_pattern_parse("m4n2_2d_greedy", &p, &err), NMP_OK);
	assert_true(p.greedy && p.method_set);
	assert_int_equal(nmp_pattern_parse("m4n2_2d_best", &p, &err), NMP_OK);
	assert_true(!p.greedy && p.method_set);
	assert_int_equal(nmp_pattern_parse("m4n2_1d", &p, &err), NMP_OK);
	assert_false(p.method_set);
}

static void parse_bad(const char *s, const char *message)
{
	nmp_pattern p;
	nmp_error err = { 0 };
	assert_int_equal(nmp_pattern_parse(s, &p, &err), NMP_ERR_USAGE);
	if (!strstr(err.message, message))
		fail_msg("'%s': message '%s' lacks '%s'", s, err.message, message);
}

static void test_malformed(void **state)
{
	(void)state;
	parse_bad("3:2", "pattern '3:2': N must be less than M");
	parse_bad("0:4", "pattern '0:4': N must be at least 1");
	parse_bad("4:4", "pattern '4:4': N must be less than M");
	parse_bad("2:512", "M must be at most 256");
	parse_bad("2:4@v0", "pattern '2:4@v0': vector size V must be at least 1");
	parse_bad("2:4@b3", "pattern '2:4@b3': expected @bRxC");
	parse_bad("2:4@b0x4", "block sides must be at least 1");
	parse_bad("2:4@q", "unknown suffix");
	parse_bad("m4n5_1d", "pattern 'm4n5_1d': N must be less than M");
	parse_bad("m4n2_3d", "expected _1d or _2d");
	parse_bad("m4n2_1d_fast", "expected _best or _greedy");
	parse_bad("150%", "pattern '150%': sparsity must be at least 0% and below 100%");
	parse_bad("100%", "below 100%");
	parse_bad("-5%", "expected P% with P a number");
	parse_bad("50%@t", "@t needs an N:M pattern");
	parse_bad("2:4:8", "expected N:M");
	parse_bad("a:b", "expected N:M");
	parse_bad("", "empty pattern");
	parse_bad("dense", "expected N:M, P% or an Apex ASP name");
	parse_bad("99999999999:4", "expected N:M");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_grammar),
		cmocka_unit_test(test_asp_aliases),
		cmocka_unit_test(test_malformed),
	};
	return cmocka_run_group_tests_name("pattern", tests, NULL, NULL);
}
