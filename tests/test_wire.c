/* Unit tests of wire.c: varints and the skeleton builder. */
#include "testutil.h"

#include "wire.h"

static void test_varint_round_trip(void **state)
{
	(void)state;
	const uint64_t vals[] = { 0, 1, 127, 128, 300, 16383, 16384, (1ull << 32) - 1,
				  1ull << 63, UINT64_MAX };
	for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
		uint8_t buf[16];
		size_t n = nmp_varint_put(buf, vals[i]);
		assert_int_equal(n, nmp_varint_size(vals[i]));
		uint64_t back = 0;
		assert_int_equal(nmp_varint_get(buf, buf + n, &back), n);
		assert_true(back == vals[i]);
		/* One byte short is a truncation, never a wrong value. */
		assert_int_equal(nmp_varint_get(buf, buf + n - 1, &back), 0);
	}
	assert_int_equal(nmp_varint_size(UINT64_MAX), 10);
	uint8_t overlong[11];
	memset(overlong, 0x80, sizeof overlong);
	uint64_t v;
	assert_int_equal(nmp_varint_get(overlong, overlong + sizeof overlong, &v), 0);
	/* Ten bytes whose last carries more than bit 63: bits would be dropped, so it is invalid. */
	uint8_t wide[10];
	memset(wide, 0xff, 9);
	wide[9] = 0x02;
	assert_int_equal(nmp_varint_get(wide, wide + 10, &v), 0);
	wide[9] = 0x01;
	assert_int_equal(nmp_varint_get(wide, wide + 10, &v), 10);
	assert_true(v == UINT64_MAX);
}

static uint8_t *pack_one_tensor_model(size_t *len, tu_tensor *tt)
{
	Onnx__TensorProto *inits[1] = { &tt->t };
	char *d = tu_mkdtemp();
	char *p = tu_path(d, "m.onnx");
	tu_write_model(p, inits, 1);
	uint8_t *buf = tu_read(p, len);
	free(p);
	tu_rmdir(d);
	return buf;
}

static void test_skeleton_replaces_payload_by_marker(void **state)
{
	(void)state;
	tu_tensor tt;
	tu_float_tensor(&tt, "W", 16, 32);
	size_t len;
	uint8_t *buf = pack_one_tensor_model(&len, &tt);

	nmp_skeleton sk;
	nmp_error err = { 0 };
	assert_int_equal(nmp_wire_skeleton(buf, len, &onnx__model_proto__descriptor,
					   &onnx__tensor_proto__descriptor, 0, "m.onnx", &sk, &err),
			 NMP_OK);
	assert_int_equal(sk.n_spans, 1);
	assert_int_equal(sk.spans[0].field, 9);
	assert_int_equal(sk.spans[0].length, 16 * 32 * 4);
	assert_memory_equal(buf + sk.spans[0].offset, tt.values, 16 * 32 * 4);
	/* The skeleton is the structure only: the 2 KiB payload is gone. */
	assert_true(sk.len < len - 2000);

	Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, sk.len, sk.data);
	assert_non_null(m);
	Onnx__TensorProto *t = m->graph->initializer[0];
	assert_string_equal(t->name, "W");
	assert_false(t->has_raw_data);
	assert_int_equal(t->base.n_unknown_fields, 1);
	assert_int_equal(t->base.unknown_fields[0].tag, NMP_WIRE_MARKER_FIELD);
	onnx__model_proto__free_unpacked(m, NULL);
	nmp_skeleton_free(&sk);
	free(buf);
	free(tt.values);
}

static void test_truncated_input_names_offset(void **state)
{
	(void)state;
	tu_tensor tt;
	tu_float_tensor(&tt, "W", 4, 4);
	size_t len;
	uint8_t *buf = pack_one_tensor_model(&len, &tt);
	nmp_skeleton sk;
	nmp_error err = { 0 };
	assert_int_equal(nmp_wire_skeleton(buf, len - 3, &onnx__model_proto__descriptor,
					   &onnx__tensor_proto__descriptor, 0, "cut.onnx", &sk, &err),
			 NMP_ERR_MODEL);
	assert_non_null(strstr(err.message, "cut.onnx: not a valid ONNX model"));
	assert_non_null(strstr(err.message, "byte offset"));
	free(buf);
	free(tt.values);
}

/* graph { node { attribute { g { node { ... } } } } }, `levels` subgraphs deep. */
static uint8_t *nested_graphs(size_t levels, size_t *len)
{
	size_t cap = levels * 16 + 64, n = 0;
	uint8_t *msg = malloc(cap), *tmp = malloc(cap);
	static const uint8_t tags[] = { 6u << 3 | 2, 5u << 3 | 2, 1u << 3 | 2 }; /* g, attribute, node */
	for (size_t l = 0; l < levels; l++) {
		for (int k = 0; k < 3; k++) {
			size_t h = 0;
			tmp[h++] = tags[k];
			h += nmp_varint_put(tmp + h, n);
			memcpy(tmp + h, msg, n);
			n += h;
			uint8_t *sw = msg;
			msg = tmp;
			tmp = sw;
		}
	}
	/* ModelProto: ir_version = 8, graph = msg */
	uint8_t *out = malloc(n + 16);
	size_t h = 0;
	out[h++] = 1u << 3;
	out[h++] = 8;
	out[h++] = 7u << 3 | 2;
	h += nmp_varint_put(out + h, n);
	memcpy(out + h, msg, n);
	free(msg);
	free(tmp);
	*len = h + n;
	return out;
}

static void test_nesting_limit(void **state)
{
	(void)state;
	size_t len;
	nmp_skeleton sk;
	nmp_error err = { 0 };
	uint8_t *ok = nested_graphs(20, &len);
	assert_int_equal(nmp_wire_skeleton(ok, len, &onnx__model_proto__descriptor,
					   &onnx__tensor_proto__descriptor, 0, "ok", &sk, &err), NMP_OK);
	nmp_skeleton_free(&sk);
	free(ok);

	uint8_t *deep = nested_graphs(10000, &len);
	assert_int_equal(nmp_wire_skeleton(deep, len, &onnx__model_proto__descriptor,
					   &onnx__tensor_proto__descriptor, 0, "deep", &sk, &err),
			 NMP_ERR_MODEL);
	assert_non_null(strstr(err.message, "nested too deeply"));
	free(deep);
}

static void test_bad_wire_types(void **state)
{
	(void)state;
	nmp_skeleton sk;
	nmp_error err = { 0 };
	const uint8_t group[] = { 0x0b, 0x0c };             /* field 1, start group */
	assert_int_equal(nmp_wire_skeleton(group, sizeof group, &onnx__model_proto__descriptor,
					   &onnx__tensor_proto__descriptor, 0, "g", &sk, &err),
			 NMP_ERR_MODEL);
	assert_non_null(strstr(err.message, "unsupported wire type"));
	nmp_error_clear(&err);
	const uint8_t past_end[] = { 0x3a, 0x7f, 0x00 };    /* graph, length 127, 1 byte */
	assert_int_equal(nmp_wire_skeleton(past_end, sizeof past_end, &onnx__model_proto__descriptor,
					   &onnx__tensor_proto__descriptor, 0, "p", &sk, &err),
			 NMP_ERR_MODEL);
	assert_non_null(strstr(err.message, "past the end"));
	nmp_error_clear(&err);
	const uint8_t field_zero[] = { 0x00, 0x01 };
	assert_int_equal(nmp_wire_skeleton(field_zero, sizeof field_zero, &onnx__model_proto__descriptor,
					   &onnx__tensor_proto__descriptor, 0, "z", &sk, &err),
			 NMP_ERR_MODEL);
	assert_non_null(strstr(err.message, "invalid field number"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_varint_round_trip),
		cmocka_unit_test(test_skeleton_replaces_payload_by_marker),
		cmocka_unit_test(test_truncated_input_names_offset),
		cmocka_unit_test(test_nesting_limit),
		cmocka_unit_test(test_bad_wire_types),
	};
	return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
