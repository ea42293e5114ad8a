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

/* ---- initializers kept as bytes --------------------------------------- */

static uint8_t *pack_model(Onnx__GraphProto *g, Onnx__TrainingInfoProto *training, size_t *len)
{
	Onnx__ModelProto model = ONNX__MODEL_PROTO__INIT;
	Onnx__TrainingInfoProto *trainings[1] = { training };
	model.has_ir_version = 1;
	model.ir_version = 8;
	model.graph = g;
	model.n_training_info = training ? 1 : 0;
	model.training_info = trainings;
	*len = onnx__model_proto__get_packed_size(&model);
	uint8_t *buf = malloc(*len);
	onnx__model_proto__pack(&model, buf);
	return buf;
}

/* An initializer's record as GraphProto holds it: tag of field 5, length, message. */
static uint8_t *pack_record(Onnx__TensorProto *t, size_t *len)
{
	size_t n = onnx__tensor_proto__get_packed_size(t);
	uint8_t *rec = malloc(n + 11);
	rec[0] = 5u << 3 | 2;
	size_t h = 1 + nmp_varint_put(rec + 1, n);
	onnx__tensor_proto__pack(t, rec + h);
	*len = h + n;
	return rec;
}

static size_t kept_spans(const nmp_skeleton *sk, const nmp_span **first)
{
	size_t n = 0;
	*first = NULL;
	for (size_t i = 0; i < sk->n_spans; i++) {
		if (sk->spans[i].field != NMP_SPAN_KEPT_INITIALIZERS)
			continue;
		if (!n++)
			*first = &sk->spans[i];
	}
	return n;
}

static void test_unread_initializers_kept_as_bytes(void **state)
{
	(void)state;
	/* A, B, C and an unnamed one: read by nothing (a node's "" input is an
	 * absent one); W by the MatMul; G is a graph input, O an output; D has
	 * external data, E is 1 KiB: those two are parsed although unread. */
	tu_tensor a, b, w, c, d, e, gi, o;
	Onnx__TensorProto u = ONNX__TENSOR_PROTO__INIT;
	tu_float_tensor(&a, "A", 2, 2);
	tu_float_tensor(&b, "B", 1, 3);
	tu_float_tensor(&w, "W", 4, 4);
	tu_float_tensor(&c, "C", 1, 1);
	tu_float_tensor(&d, "D", 2, 2);
	tu_make_external(&d, "d.bin", "0", "16");
	tu_float_tensor(&e, "E", 16, 16);
	tu_float_tensor(&gi, "G", 1, 2);
	tu_float_tensor(&o, "O", 1, 2);
	Onnx__TensorProto *inits[] = { &a.t, &b.t, &w.t, &c.t, &u, &d.t, &e.t, &gi.t, &o.t };

	char *ins[3] = { "X", "W", "" }, *outs[1] = { "Y" };
	Onnx__NodeProto node = tu_node("MatMul", ins, 3, outs, 1);
	Onnx__NodeProto *nodes[1] = { &node };
	Onnx__ValueInfoProto vx = ONNX__VALUE_INFO_PROTO__INIT, vg = ONNX__VALUE_INFO_PROTO__INIT,
			     vy = ONNX__VALUE_INFO_PROTO__INIT, vo = ONNX__VALUE_INFO_PROTO__INIT;
	vx.name = "X";
	vg.name = "G";
	vy.name = "Y";
	vo.name = "O";
	Onnx__ValueInfoProto *gin[2] = { &vx, &vg }, *gout[2] = { &vy, &vo };
	Onnx__GraphProto g = ONNX__GRAPH_PROTO__INIT;
	g.n_node = 1;
	g.node = nodes;
	g.n_initializer = sizeof inits / sizeof inits[0];
	g.initializer = inits;
	g.n_input = 2;
	g.input = gin;
	g.n_output = 2;
	g.output = gout;
	size_t len;
	uint8_t *buf = pack_model(&g, NULL, &len);

	nmp_skeleton sk;
	nmp_error err = { 0 };
	assert_int_equal(nmp_wire_skeleton(buf, len, &onnx__model_proto__descriptor, &onnx__tensor_proto__descriptor,
					   NMP_WIRE_KEEP_UNREAD, "k.onnx", &sk, &err), NMP_OK);
	assert_int_equal(sk.n_kept, 4);
	const nmp_span *run;
	assert_int_equal(kept_spans(&sk, &run), 2);
	/* The first run is A's and B's records, byte for byte; the second C's and the unnamed one's. */
	size_t la, lb, lc, lu;
	uint8_t *ra = pack_record(&a.t, &la), *rb = pack_record(&b.t, &lb), *rc = pack_record(&c.t, &lc);
	uint8_t *ru = pack_record(&u, &lu);
	assert_int_equal(run[0].length, la + lb);
	assert_memory_equal(buf + run[0].offset, ra, la);
	assert_memory_equal(buf + run[0].offset + la, rb, lb);
	const nmp_span *second = NULL;
	for (size_t i = run - sk.spans + 1; i < sk.n_spans && !second; i++)
		if (sk.spans[i].field == NMP_SPAN_KEPT_INITIALIZERS)
			second = &sk.spans[i];
	assert_non_null(second);
	assert_int_equal(second->length, lc + lu);
	assert_memory_equal(buf + second->offset, rc, lc);
	assert_memory_equal(buf + second->offset + lc, ru, lu);

	Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, sk.len, sk.data);
	assert_non_null(m);
	const char *want[] = { "W", "D", "E", "G", "O" };
	assert_int_equal(m->graph->n_initializer, 5);
	for (size_t i = 0; i < 5; i++)
		assert_string_equal(m->graph->initializer[i]->name, want[i]);
	assert_int_equal(m->graph->base.n_unknown_fields, 2);
	assert_int_equal(m->graph->base.unknown_fields[0].tag, NMP_WIRE_MARKER_FIELD);
	onnx__model_proto__free_unpacked(m, NULL);
	nmp_skeleton_free(&sk);

	/* Without the flag every record is parsed. */
	assert_int_equal(nmp_wire_skeleton(buf, len, &onnx__model_proto__descriptor, &onnx__tensor_proto__descriptor,
					   0, "k.onnx", &sk, &err), NMP_OK);
	assert_int_equal(sk.n_kept, 0);
	assert_int_equal(kept_spans(&sk, &run), 0);
	nmp_skeleton_free(&sk);

	free(ra);
	free(rb);
	free(rc);
	free(ru);
	free(buf);
	tu_tensor *all[] = { &a, &b, &w, &c, &d, &e, &gi, &o };
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
		free(all[i]->values);
}

/* A name read inside a subgraph counts; training_info's bindings turn keeping off. */
static void test_reads_in_subgraphs_and_training(void **state)
{
	(void)state;
	tu_tensor s, t;
	tu_float_tensor(&s, "S", 1, 2);
	tu_float_tensor(&t, "T", 1, 2);
	Onnx__TensorProto *inits[2] = { &s.t, &t.t };

	char *inner_in[1] = { "S" }, *inner_out[1] = { "s2" }, *outer_in[1] = { "cond" }, *outer_out[1] = { "y" };
	Onnx__NodeProto inner = tu_node("Identity", inner_in, 1, inner_out, 1);
	Onnx__NodeProto outer = tu_node("If", outer_in, 1, outer_out, 1);
	Onnx__NodeProto *inner_nodes[1] = { &inner };
	Onnx__GraphProto branch = ONNX__GRAPH_PROTO__INIT;
	branch.n_node = 1;
	branch.node = inner_nodes;
	Onnx__AttributeProto at = ONNX__ATTRIBUTE_PROTO__INIT;
	at.name = "then_branch";
	at.g = &branch;
	Onnx__AttributeProto *attrs[1] = { &at };
	outer.n_attribute = 1;
	outer.attribute = attrs;
	Onnx__NodeProto *nodes[1] = { &outer };
	Onnx__GraphProto g = ONNX__GRAPH_PROTO__INIT;
	g.n_node = 1;
	g.node = nodes;
	g.n_initializer = 2;
	g.initializer = inits;

	size_t len;
	uint8_t *buf = pack_model(&g, NULL, &len);
	nmp_skeleton sk;
	nmp_error err = { 0 };
	assert_int_equal(nmp_wire_skeleton(buf, len, &onnx__model_proto__descriptor, &onnx__tensor_proto__descriptor,
					   NMP_WIRE_KEEP_UNREAD, "sub", &sk, &err), NMP_OK);
	assert_int_equal(sk.n_kept, 1);
	Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, sk.len, sk.data);
	assert_int_equal(m->graph->n_initializer, 1);
	assert_string_equal(m->graph->initializer[0]->name, "S");
	onnx__model_proto__free_unpacked(m, NULL);
	nmp_skeleton_free(&sk);
	free(buf);

	Onnx__TrainingInfoProto training = ONNX__TRAINING_INFO_PROTO__INIT;
	buf = pack_model(&g, &training, &len);
	assert_int_equal(nmp_wire_skeleton(buf, len, &onnx__model_proto__descriptor, &onnx__tensor_proto__descriptor,
					   NMP_WIRE_KEEP_UNREAD, "train", &sk, &err), NMP_OK);
	assert_int_equal(sk.n_kept, 0);
	nmp_skeleton_free(&sk);
	free(buf);
	free(s.values);
	free(t.values);
}

/* A model of one unread initializer whose message is `body`. */
static uint8_t *model_with_record(const uint8_t *body, size_t n, size_t *len)
{
	uint8_t graph[256];
	size_t h = 0;
	graph[h++] = 5u << 3 | 2;
	h += nmp_varint_put(graph + h, n);
	memcpy(graph + h, body, n);
	h += n;
	uint8_t *out = malloc(h + 16);
	size_t k = 0;
	out[k++] = 1u << 3;
	out[k++] = 8;
	out[k++] = 7u << 3 | 2;
	k += nmp_varint_put(out + k, h);
	memcpy(out + k, graph, h);
	*len = k + h;
	return out;
}

/*
 * Does nmprune's load of the structure accept what protobuf-c's parser
 * accepts?  The record must be one kept as bytes (no external data fields):
 * the others' payloads are checked later, as tensors.
 */
static void expect_agreement(const uint8_t *buf, size_t len, const char *what)
{
	Onnx__ModelProto *whole = onnx__model_proto__unpack(NULL, len, buf);
	nmp_skeleton sk;
	nmp_error err = { 0 };
	int ours = nmp_wire_skeleton(buf, len, &onnx__model_proto__descriptor, &onnx__tensor_proto__descriptor,
				     NMP_WIRE_KEEP_UNREAD, what, &sk, &err) == NMP_OK;
	if (ours) {
		Onnx__ModelProto *skel = onnx__model_proto__unpack(NULL, sk.len, sk.data);
		ours = skel != NULL;
		assert_int_equal(sk.n_kept, 1);
		if (skel)
			onnx__model_proto__free_unpacked(skel, NULL);
		nmp_skeleton_free(&sk);
	}
	if (ours != (whole != NULL))
		fail_msg("%s: protobuf-c %s it, nmprune %s it (%s)", what, whole ? "accepts" : "refuses",
			 ours ? "accepts" : "refuses", err.message);
	if (whole)
		onnx__model_proto__free_unpacked(whole, NULL);
}

static void test_kept_records_checked_as_protobuf_c_would(void **state)
{
	(void)state;
	static const struct {
		const char *what;
		uint8_t body[16];
		size_t n;
	} cases[] = {
		{ "dims as varints", { 0x08, 0x02, 0x08, 0x03 }, 4 },
		{ "dims packed", { 0x0a, 0x02, 0x02, 0x03 }, 4 },
		{ "dims packed, cut varint", { 0x0a, 0x02, 0x02, 0x83 }, 4 },
		{ "dims as fixed32", { 0x0d, 1, 0, 0, 0 }, 5 },
		{ "data_type as bytes", { 0x12, 0x01, 0x01 }, 3 },
		{ "name as a varint", { 0x40, 0x01 }, 2 },
		{ "name", { 0x42, 0x01, 'x' }, 3 },
		{ "float_data packed", { 0x22, 0x04, 0, 0, 0x80, 0x3f }, 6 },
		{ "float_data packed, 6 bytes", { 0x22, 0x06, 0, 0, 0x80, 0x3f, 0, 0 }, 8 },
		{ "float_data as fixed32", { 0x25, 0, 0, 0x80, 0x3f }, 5 },
		{ "double_data as fixed32", { 0x55, 0, 0, 0x80, 0x3f }, 5 },
		{ "segment with a bad begin", { 0x1a, 0x02, 0x0d, 0x00 }, 4 },
		{ "unknown field 99", { 0x98, 0x06, 0x05 }, 3 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		size_t len;
		uint8_t *buf = model_with_record(cases[i].body, cases[i].n, &len);
		expect_agreement(buf, len, cases[i].what);
		free(buf);
	}

	/* Random records: fields of random numbers and wire types, valid framing, no external data. */
	uint64_t seed = 0x9e3779b97f4a7c15ull;
	for (int trial = 0; trial < 20000; trial++) {
		uint8_t body[64];
		size_t n = 0;
		int fields = 1 + (int)((seed >> 40) % 4);
		for (int k = 0; k < fields; k++) {
			seed = seed * 6364136223846793005ull + 1442695040888963407ull;
			unsigned number = 1 + (unsigned)((seed >> 33) % 17), wt = (unsigned)((seed >> 50) % 6);
			if (number == 13 || number == 14)
				number += 4;
			if (wt == 3 || wt == 4)
				wt = 2;
			n += nmp_varint_put(body + n, number << 3 | wt);
			unsigned payload = (unsigned)((seed >> 20) % 6);
			if (wt == 0) {
				body[n++] = (uint8_t)(seed >> 8) & 0x7f;
			} else if (wt == 1 || wt == 5) {
				memset(body + n, (int)(seed >> 12) & 0xff, wt == 1 ? 8 : 4);
				n += wt == 1 ? 8 : 4;
			} else {
				body[n++] = (uint8_t)payload;
				for (unsigned q = 0; q < payload; q++)
					body[n++] = (uint8_t)(seed >> (q * 7));
			}
		}
		size_t len;
		uint8_t *buf = model_with_record(body, n, &len);
		char what[32];
		snprintf(what, sizeof what, "random record %d", trial);
		expect_agreement(buf, len, what);
		free(buf);
	}
}

/*
 * With KEEP_COMPACT, small records that something reads are kept too when
 * they are compact, and listed; each run says how many parsed initializers
 * of its graph come before it.  Records that protobuf-c would write back
 * differently (a tag or length not in its shortest form) are parsed.
 */
static void test_compact_read_records(void **state)
{
	(void)state;
	tu_tensor a, w, u;
	tu_float_tensor(&a, "A", 2, 2);
	tu_float_tensor(&w, "W", 2, 3);
	tu_float_tensor(&u, "U", 1, 1);
	w.t.has_raw_data = 0;
	w.t.n_float_data = 6;
	w.t.float_data = w.values;
	Onnx__TensorProto i = ONNX__TENSOR_PROTO__INIT;
	int64_t i_dims[1] = { 2 }, i_vals[2] = { 7, -7 };
	i.name = "I";
	i.has_data_type = 1;
	i.data_type = 7; /* int64 */
	i.n_dims = 1;
	i.dims = i_dims;
	i.n_int64_data = 2;
	i.int64_data = i_vals;
	Onnx__TensorProto *inits[] = { &a.t, &i, &w.t, &u.t };
	char *ins[3] = { "A", "I", "W" }, *outs[1] = { "Y" };
	Onnx__NodeProto node = tu_node("Sum", ins, 3, outs, 1);
	Onnx__NodeProto *nodes[1] = { &node };
	Onnx__GraphProto g = ONNX__GRAPH_PROTO__INIT;
	g.n_node = 1;
	g.node = nodes;
	g.n_initializer = 4;
	g.initializer = inits;
	size_t len, la, li, lw;
	uint8_t *buf = pack_model(&g, NULL, &len);
	uint8_t *ra = pack_record(&a.t, &la), *ri = pack_record(&i, &li), *rw = pack_record(&w.t, &lw);

	nmp_skeleton sk;
	nmp_error err = { 0 };
	assert_int_equal(nmp_wire_skeleton(buf, len, &onnx__model_proto__descriptor, &onnx__tensor_proto__descriptor,
					   NMP_WIRE_KEEP_UNREAD | NMP_WIRE_KEEP_COMPACT, "c.onnx", &sk, &err), NMP_OK);
	assert_int_equal(sk.n_kept, 1);
	assert_int_equal(sk.n_compact, 2);
	const nmp_span *run;
	assert_int_equal(kept_spans(&sk, &run), 2);
	assert_memory_equal(buf + sk.compact[0], ra, la);
	assert_memory_equal(buf + sk.compact[1], rw, lw);
	assert_int_equal(sk.compact[1], sk.compact[0] + la + li);
	assert_int_equal(run[0].offset, sk.compact[0]);
	assert_int_equal(run[0].before, 0);
	const nmp_span *second = NULL;
	for (size_t k = run - sk.spans + 1; k < sk.n_spans && !second; k++)
		if (sk.spans[k].field == NMP_SPAN_KEPT_INITIALIZERS)
			second = &sk.spans[k];
	assert_int_equal(second->offset, sk.compact[1]);
	assert_int_equal(second->before, 1); /* after I, parsed */
	Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, sk.len, sk.data);
	assert_int_equal(m->graph->n_initializer, 1);
	assert_string_equal(m->graph->initializer[0]->name, "I");
	onnx__model_proto__free_unpacked(m, NULL);
	nmp_skeleton_free(&sk);

	/* Without KEEP_COMPACT, only U. */
	assert_int_equal(nmp_wire_skeleton(buf, len, &onnx__model_proto__descriptor, &onnx__tensor_proto__descriptor,
					   NMP_WIRE_KEEP_UNREAD, "c.onnx", &sk, &err), NMP_OK);
	assert_int_equal(sk.n_kept, 1);
	assert_int_equal(sk.n_compact, 0);
	nmp_skeleton_free(&sk);

	/* A's record with its length in two bytes, then with its tag in two: parsed, not kept. */
	size_t glen = onnx__graph_proto__get_packed_size(&g);
	uint8_t *graph = malloc(glen);
	onnx__graph_proto__pack(&g, graph);
	const uint8_t *hit = memmem(graph, glen, ra, la);
	assert_non_null(hit);
	size_t at = (size_t)(hit - graph);
	for (int variant = 0; variant < 2; variant++) {
		uint8_t *odd = malloc(glen + 32);
		size_t k = 0;
		odd[k++] = 1u << 3; /* ir_version 8 */
		odd[k++] = 8;
		odd[k++] = 7u << 3 | 2;
		k += nmp_varint_put(odd + k, glen + 1);
		memcpy(odd + k, graph, at);
		k += at;
		if (variant == 0) {
			odd[k++] = 5u << 3 | 2;
			odd[k++] = (uint8_t)((la - 2) | 0x80);
			odd[k++] = 0;
		} else {
			odd[k++] = (5u << 3 | 2) | 0x80;
			odd[k++] = 0;
			odd[k++] = (uint8_t)(la - 2);
		}
		memcpy(odd + k, graph + at + 2, glen - at - 2);
		k += glen - at - 2;
		Onnx__ModelProto *check = onnx__model_proto__unpack(NULL, k, odd);
		assert_non_null(check); /* protobuf-c reads it */
		assert_int_equal(check->graph->n_initializer, 4);
		onnx__model_proto__free_unpacked(check, NULL);
		assert_int_equal(nmp_wire_skeleton(odd, k, &onnx__model_proto__descriptor, &onnx__tensor_proto__descriptor,
						   NMP_WIRE_KEEP_UNREAD | NMP_WIRE_KEEP_COMPACT, "c.onnx", &sk, &err), NMP_OK);
		assert_int_equal(sk.n_compact, 1); /* W only */
		assert_int_equal(sk.n_kept, 1);
		nmp_skeleton_free(&sk);
		free(odd);
	}
	free(graph);
	free(ra);
	free(ri);
	free(rw);
	free(buf);
	free(a.values);
	free(w.values);
	free(u.values);
}

/*
 * nmp_wire_tensor_read against protobuf-c's parser, on random records: when
 * it calls a record compact, protobuf-c finds nothing else in it, and both
 * read the same name, type, dims and payload.
 */
static void test_wire_tensor_read_agrees_with_protobuf_c(void **state)
{
	(void)state;
	uint64_t seed = 0x2545f4914f6cdd1dull;
	size_t compact = 0, refused = 0;
	for (int trial = 0; trial < 40000; trial++) {
		uint8_t body[96];
		size_t n = 0;
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		int fields = (int)((seed >> 40) % 5);
		for (int k = 0; k < fields; k++) {
			seed = seed * 6364136223846793005ull + 1442695040888963407ull;
			static const unsigned numbers[] = { 1, 1, 2, 8, 8, 9, 4, 10, 12, 5, 7, 13, 99 };
			unsigned number = numbers[(seed >> 33) % (sizeof numbers / sizeof numbers[0])];
			unsigned wt = number == 2 || (number == 1 && (seed >> 60) % 2) ? 0 : 2;
			if ((seed >> 58) % 16 == 0)
				wt = (unsigned)((seed >> 20) % 6) == 1 ? 1 : 5; /* a wire type the schema may not allow */
			n += nmp_varint_put(body + n, number << 3 | wt);
			if (wt == 0) {
				n += nmp_varint_put(body + n, (seed >> 3) % 2 ? (seed >> 7) & 0xfff : ~(uint64_t)0 - (seed & 0xff));
			} else if (wt == 1 || wt == 5) {
				memset(body + n, (int)(seed >> 12) & 0xff, wt == 1 ? 8 : 4);
				n += wt == 1 ? 8 : 4;
			} else {
				unsigned payload = number == 10 ? 8 * (unsigned)((seed >> 20) % 3) :
						   number == 4 ? 4 * (unsigned)((seed >> 20) % 4) : (unsigned)((seed >> 20) % 9);
				body[n++] = (uint8_t)payload;
				for (unsigned q = 0; q < payload; q++)
					body[n++] = number == 1 ? (uint8_t)((seed >> (q * 5 % 64)) & 0x7f) : (uint8_t)(seed >> (q * 7 % 64));
			}
		}
		Onnx__TensorProto *t = onnx__tensor_proto__unpack(NULL, n, body);
		nmp_wire_tensor w;
		int ours = nmp_wire_tensor_read(body, n, NULL, &w);
		if (!t) /* malformed: the skeleton refuses it before it is read (see above) */
			continue;
		if (!ours) {
			refused++;
			onnx__tensor_proto__free_unpacked(t, NULL);
			continue;
		}
		compact++;
		assert_int_equal(t->n_int32_data + t->n_int64_data + t->n_string_data + t->n_uint64_data +
				 t->n_external_data, 0);
		assert_null(t->segment);
		assert_false(t->has_data_location);
		int64_t dims[96];
		assert_int_equal(nmp_wire_tensor_read(body, n, dims, &w), 1);
		assert_int_equal(w.n_dims, t->n_dims);
		for (size_t k = 0; k < w.n_dims; k++)
			assert_int_equal(dims[k], t->dims[k]);
		assert_int_equal(w.has_data_type, t->has_data_type);
		if (w.has_data_type)
			assert_int_equal(w.data_type, t->data_type);
		if (t->name) { /* protobuf-c's copy ends at a NUL the bytes may hold */
			assert_true(strlen(t->name) <= w.name_len);
			assert_memory_equal(w.name, t->name, strlen(t->name));
		} else {
			assert_int_equal(w.name_len, 0);
		}
		switch (w.field) {
		case 9:
			assert_true(t->has_raw_data);
			assert_int_equal(w.payload_len, t->raw_data.len);
			assert_memory_equal(w.payload, t->raw_data.data, w.payload_len);
			break;
		case 4:
			assert_int_equal(w.payload_len, 4 * t->n_float_data);
			assert_memory_equal(w.payload, t->float_data, w.payload_len);
			break;
		case 10:
			assert_int_equal(w.payload_len, 8 * t->n_double_data);
			assert_memory_equal(w.payload, t->double_data, w.payload_len);
			break;
		default:
			assert_int_equal(w.field, 0);
			assert_false(t->has_raw_data);
			assert_int_equal(t->n_float_data + t->n_double_data, 0);
		}
		onnx__tensor_proto__free_unpacked(t, NULL);
	}
	/* Both kinds met often enough to mean something. */
	print_message("%zu compact, %zu not\n", compact, refused);
	assert_true(compact > 2000);
	assert_true(refused > 2000);
}

/* The marker's field number in a graph would be taken for a marker: refused. */
static void test_marker_field_in_graph_refused(void **state)
{
	(void)state;
	const uint8_t model[] = { 0x08, 0x08, 0x3a, 0x06, 0xf8, 0xff, 0xff, 0xff, 0x0f, 0x00 };
	nmp_skeleton sk;
	nmp_error err = { 0 };
	assert_int_equal(nmp_wire_skeleton(model, sizeof model, &onnx__model_proto__descriptor,
					   &onnx__tensor_proto__descriptor, NMP_WIRE_KEEP_UNREAD, "r", &sk, &err),
			 NMP_ERR_MODEL);
	assert_non_null(strstr(err.message, "reserved field number"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_varint_round_trip),
		cmocka_unit_test(test_skeleton_replaces_payload_by_marker),
		cmocka_unit_test(test_truncated_input_names_offset),
		cmocka_unit_test(test_nesting_limit),
		cmocka_unit_test(test_bad_wire_types),
		cmocka_unit_test(test_unread_initializers_kept_as_bytes),
		cmocka_unit_test(test_reads_in_subgraphs_and_training),
		cmocka_unit_test(test_kept_records_checked_as_protobuf_c_would),
		cmocka_unit_test(test_marker_field_in_graph_refused),
		cmocka_unit_test(test_compact_read_records),
		cmocka_unit_test(test_wire_tensor_read_agrees_with_protobuf_c),
	};
	return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
