/* Unit tests of model I/O: loading, validation, payload views and saving. */
#include "testutil.h"

#include <sys/stat.h>

#include "model.h"
#include "ort.h"

typedef struct fixture {
	char *dir;
	char *in;
	char *out;
} fixture;

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof *f);
	f->dir = tu_mkdtemp();
	f->in = tu_path(f->dir, "in.onnx");
	f->out = tu_path(f->dir, "out.onnx");
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;
	tu_rmdir(f->dir);
	free(f->in);
	free(f->out);
	free(f);
	return 0;
}

static void write_one(const char *path, tu_tensor *tt)
{
	Onnx__TensorProto *inits[1] = { &tt->t };
	tu_write_model(path, inits, 1);
}

/* Loads `path`, expecting failure with `status` and `needle` in the message. */
static void expect_load_error(const char *path, nmp_status status, const char *needle)
{
	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(path, &m, &err), status);
	assert_null(m);
	if (!strstr(err.message, needle))
		fail_msg("message '%s' lacks '%s'", err.message, needle);
}

static void test_raw_tensor_is_file_resident(void **state)
{
	fixture *f = *state;
	tu_tensor tt;
	tu_float_tensor(&tt, "W", 8, 16);
	write_one(f->in, &tt);

	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	assert_int_equal(m->n_tensors, 1);
	const nmp_tensor *t = &m->tensors[0];
	assert_string_equal(t->name, "W");
	assert_int_equal(t->dtype, NMP_DT_FLOAT);
	assert_int_equal(t->numel, 128);
	assert_int_equal(t->nbytes, 512);
	assert_int_equal(t->storage, NMP_STORE_FILE);
	assert_int_equal(t->field, NMP_FIELD_RAW_DATA);
	/* 512 bytes that a node reads: a compact record, described from its bytes (wire.h). */
	assert_null(t->proto);
	assert_int_equal(t->kept_run, 1);
	assert_int_equal(m->n_compact, 1);
	assert_int_equal(t->n_dims, 2);
	assert_int_equal(t->dims[0], 8);
	assert_int_equal(t->dims[1], 16);
	assert_int_equal(m->proto->graph->n_initializer, 0);
	assert_int_equal(nmp_model_n_initializers(m, m->proto->graph), 1);
	assert_ptr_equal(nmp_model_initializer(m, m->proto->graph, 0), t);

	nmp_view v;
	assert_int_equal(nmp_model_view(m, t, &v, &err), NMP_OK);
	assert_int_equal(v.length, 512);
	assert_memory_equal(v.data, tt.values, 512);
	nmp_view_release(&v);
	nmp_model_free(&m);
	assert_null(m);
	nmp_model_free(&m); /* free(NULL) is a no-op */
	free(tt.values);
}

static void test_typed_fields(void **state)
{
	fixture *f = *state;
	/* float_data (packed, file-resident) and fp16 in int32_data (heap). */
	tu_tensor a, b;
	tu_float_tensor(&a, "A", 2, 3);
	a.t.has_raw_data = 0;
	a.t.n_float_data = 6;
	a.t.float_data = a.values;
	tu_float_tensor(&b, "H", 2, 2);
	b.t.has_raw_data = 0;
	b.t.data_type = NMP_DT_FLOAT16;
	int32_t halves[4] = { 0x3c00, 0xbc00, 0x0001, 0x7c00 }; /* 1, -1, subnormal, inf */
	b.t.n_int32_data = 4;
	b.t.int32_data = halves;
	Onnx__TensorProto *inits[2] = { &a.t, &b.t };
	tu_write_model(f->in, inits, 2);

	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	/* H's varints are parsed; A, packed float_data, is a compact record, listed after it. */
	assert_string_equal(m->tensors[1].name, "A");
	assert_int_equal(m->tensors[1].kept_run, 1);
	assert_int_equal(m->tensors[1].storage, NMP_STORE_FILE);
	assert_int_equal(m->tensors[1].field, NMP_FIELD_FLOAT_DATA);
	assert_int_equal(m->tensors[1].length, 24);
	assert_string_equal(m->tensors[0].name, "H");
	assert_non_null(m->tensors[0].proto);
	assert_int_equal(m->tensors[0].storage, NMP_STORE_HEAP);
	assert_int_equal(m->tensors[0].nbytes, 8);
	nmp_view v;
	assert_int_equal(nmp_model_view(m, &m->tensors[0], &v, &err), NMP_OK);
	const uint16_t want[4] = { 0x3c00, 0xbc00, 0x0001, 0x7c00 };
	assert_memory_equal(v.data, want, 8);
	nmp_view_release(&v);
	nmp_model_free(&m);
	free(a.values);
	free(b.values);
}

static void test_payload_length_checks(void **state)
{
	fixture *f = *state;
	tu_tensor tt;
	tu_float_tensor(&tt, "W", 4, 4);
	tt.t.raw_data.len -= 4;
	write_one(f->in, &tt);
	expect_load_error(f->in, NMP_ERR_MODEL, "tensor 'W': raw_data has 60 bytes, dims and type say 64");
	tt.t.raw_data.len += 8;
	write_one(f->in, &tt);
	expect_load_error(f->in, NMP_ERR_MODEL, "raw_data has 68 bytes");
	free(tt.values);
}

static void test_dims_checks(void **state)
{
	fixture *f = *state;
	tu_tensor tt;
	tu_float_tensor(&tt, "W", 4, 4);
	tt.dims[0] = -4;
	write_one(f->in, &tt);
	expect_load_error(f->in, NMP_ERR_MODEL, "tensor 'W': dimension 0 is negative (-4)");
	tt.dims[0] = INT64_C(1) << 40;
	tt.dims[1] = INT64_C(1) << 40;
	write_one(f->in, &tt);
	expect_load_error(f->in, NMP_ERR_MODEL, "product of its dims overflows");
	free(tt.values);
}

/* ONNX Runtime's messages lose the source location of the check that raised them, and nothing else. */
static void test_ort_reason(void **state)
{
	(void)state;
	const char *ir = "/onnxruntime_src/onnxruntime/core/graph/model.cc:256 onnxruntime::Model::Model(onnx::ModelProto&&, "
			 "const onnxruntime::PathString&, const onnxruntime::logging::Logger&) Unsupported model IR version: "
			 "14, max supported IR version: 13";
	assert_string_equal(nmp_ort_reason(ir), "Unsupported model IR version: 14, max supported IR version: 13");
	const char *enforce = "/src/core/providers/cpu/math/gemm.cc:88 virtual onnxruntime::common::Status "
			      "onnxruntime::Gemm<T>::Compute(onnxruntime::OpKernelContext*) const [with T = float] "
			      "Gemm: shapes do not match";
	assert_string_equal(nmp_ort_reason(enforce), "[with T = float] Gemm: shapes do not match");
	const char *lambda = "x.h:7 onnxruntime::f()::<lambda(int (*)(int))>(int) const  bad axis (3)";
	assert_string_equal(nmp_ort_reason(lambda), "bad axis (3)");
	const char *kept[] = {
		"Invalid output name: sigmoid_0.tmp_0",                 /* no location */
		"Node (If_0) Op (If) [TypeInferenceError] Type Error",   /* parentheses, no location */
		"model.onnx:12 onnxruntime::f(x) reason",               /* not a source file */
		"/src/a.cc:x onnxruntime::f(x) reason",                 /* no line number */
		"/src/a.cc:12onnxruntime::f(x) reason",                 /* no space after it */
		"/src/a.cc:12 Load failed (file missing)",              /* no qualified function */
		"/src/a.cc:12 onnxruntime::f(x reason",                 /* unbalanced */
		"/src/a.cc:12 onnxruntime::f(x) const ",                /* nothing after it */
		"a.cc:", ".cc:1 ", "",
	};
	for (size_t i = 0; i < sizeof kept / sizeof *kept; i++)
		assert_ptr_equal(nmp_ort_reason(kept[i]), kept[i]);
}

static void test_not_a_model(void **state)
{
	fixture *f = *state;
	tu_write(f->in, "", 0);
	expect_load_error(f->in, NMP_ERR_MODEL, "empty file");
	expect_load_error(f->dir, NMP_ERR_IO, "is a directory");
	char *missing = tu_path(f->dir, "missing.onnx");
	expect_load_error(missing, NMP_ERR_IO, "cannot open");
	free(missing);
	uint8_t junk[4096];
	srand(7);
	for (size_t i = 0; i < sizeof junk; i++)
		junk[i] = (uint8_t)rand();
	tu_write(f->in, junk, sizeof junk);
	expect_load_error(f->in, NMP_ERR_MODEL, "in.onnx: not");
	const uint8_t no_graph[] = { 0x08, 0x08 }; /* ir_version only */
	tu_write(f->in, no_graph, sizeof no_graph);
	expect_load_error(f->in, NMP_ERR_MODEL, "not an ONNX model (no graph)");
}

/* External data next to the model, holding 64 bytes of float 1..16. */
static void write_external(fixture *f, tu_tensor *tt, const char *location, const char *offset,
			   const char *length)
{
	tu_float_tensor(tt, "E", 4, 4);
	char *data = tu_path(f->dir, "w.bin");
	tu_write(data, tt->values, 64);
	free(data);
	tu_make_external(tt, location, offset, length);
	write_one(f->in, tt);
}

static void test_external_data(void **state)
{
	fixture *f = *state;
	tu_tensor tt;
	write_external(f, &tt, "w.bin", "0", "64");
	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	assert_int_equal(m->tensors[0].storage, NMP_STORE_EXTERNAL);
	assert_int_equal(m->n_files, 2);
	nmp_view v;
	assert_int_equal(nmp_model_view(m, &m->tensors[0], &v, &err), NMP_OK);
	assert_memory_equal(v.data, tt.values, 64);
	nmp_view_release(&v);
	nmp_model_free(&m);
	free(tt.values);
}

static void test_external_data_escapes(void **state)
{
	fixture *f = *state;
	tu_tensor tt;
	write_external(f, &tt, "../w.bin", NULL, NULL);
	expect_load_error(f->in, NMP_ERR_MODEL, "tensor 'E': external data location '../w.bin' leaves the model directory");
	free(tt.values);
	write_external(f, &tt, "sub/../../w.bin", NULL, NULL);
	expect_load_error(f->in, NMP_ERR_MODEL, "leaves the model directory");
	free(tt.values);
	write_external(f, &tt, "/etc/passwd", NULL, NULL);
	expect_load_error(f->in, NMP_ERR_MODEL, "'/etc/passwd' is an absolute path");
	free(tt.values);
	char *link = tu_path(f->dir, "link.bin");
	assert_int_equal(symlink("/etc/hostname", link), 0);
	write_external(f, &tt, "link.bin", NULL, NULL);
	expect_load_error(f->in, NMP_ERR_MODEL, "resolves outside the model directory");
	free(link);
	free(tt.values);
	write_external(f, &tt, "nothere.bin", NULL, NULL);
	expect_load_error(f->in, NMP_ERR_IO, "cannot open external data file 'nothere.bin'");
	free(tt.values);
	write_external(f, &tt, "w.bin", "4096", NULL);
	expect_load_error(f->in, NMP_ERR_MODEL, "offset 4096 is beyond the end");
	free(tt.values);
	write_external(f, &tt, "w.bin", "32", "64");
	expect_load_error(f->in, NMP_ERR_MODEL, "offset 32 + length 64 is beyond the end");
	free(tt.values);
	write_external(f, &tt, "w.bin", "18446744073709551615", "18446744073709551615");
	expect_load_error(f->in, NMP_ERR_MODEL, "is beyond the end");
	free(tt.values);
	write_external(f, &tt, "w.bin", "-1", NULL);
	expect_load_error(f->in, NMP_ERR_MODEL, "offset '-1' is not a non-negative integer");
	free(tt.values);
}

/* ---- save ---------------------------------------------------------------- */

typedef struct visit_log {
	int calls;
	size_t last_tensor;
	nmp_status fail_with;
	nmp_kv kv[2];
} visit_log;

/* Zeroes every other element (4-byte floats) and counts the calls. */
static nmp_status zero_even(void *ctx, size_t tensor, void *data, const void *src, uint64_t length,
			    nmp_error *err)
{
	visit_log *log = ctx;
	log->calls++;
	log->last_tensor = tensor;
	if (log->fail_with != NMP_OK)
		return nmp_error_set(err, log->fail_with, "injected failure");
	if (src)
		memcpy(data, src, length);
	for (uint64_t i = 0; i + 4 <= length; i += 8)
		memset((uint8_t *)data + i, 0, 4);
	return NMP_OK;
}

static nmp_status two_entries(void *ctx, const nmp_kv **kv, size_t *n, nmp_error *err)
{
	(void)err;
	visit_log *log = ctx;
	log->kv[0] = (nmp_kv){ "nmprune.version", "test" };
	log->kv[1] = (nmp_kv){ "nmprune.pattern", "1:2" };
	*kv = log->kv;
	*n = 2;
	return NMP_OK;
}

static void assert_zeroed_even(const char *path, size_t tensor, uint64_t numel)
{
	nmp_model *m = NULL;
	nmp_error err = { 0 };
	if (nmp_model_load(path, &m, &err) != NMP_OK)
		fail_msg("%s", err.message);
	nmp_view v;
	assert_int_equal(nmp_model_view(m, &m->tensors[tensor], &v, &err), NMP_OK);
	for (uint64_t i = 0; i < numel; i++) {
		float x; /* payloads are not aligned in the file */
		memcpy(&x, (const uint8_t *)v.data + 4 * i, 4);
		assert_true(x == (i % 2 == 0 ? 0.0f : (float)(i + 1)));
	}
	nmp_view_release(&v);
	assert_int_equal(m->proto->n_metadata_props, 2);
	assert_string_equal(m->proto->metadata_props[1]->value, "1:2");
	nmp_model_free(&m);
}

static void test_save_copy_and_general_agree(void **state)
{
	fixture *f = *state;
	tu_tensor tt;
	tu_float_tensor(&tt, "W", 32, 32);
	write_one(f->in, &tt);
	size_t in_len;
	uint8_t *before = tu_read(f->in, &in_len);

	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	size_t visit[1] = { 0 };
	visit_log log = { 0 };
	nmp_save_opts o = { .visit = visit, .n_visit = 1, .on_payload = zero_even,
			    .on_metadata = two_entries, .ctx = &log };
	nmp_save_result res;
	assert_non_null(m->tensors[0].proto); /* 4 KiB: parsed, not a compact record */
	assert_ptr_equal(nmp_model_tensor_of(m, m->proto->graph->initializer[0]), &m->tensors[0]);
	assert_int_equal(nmp_model_save(m, f->out, &o, &res, &err), NMP_OK);
	assert_false(res.general_path);
	assert_int_equal(log.calls, 1);
	assert_zeroed_even(f->out, 0, 1024);

	char *gen = tu_path(f->dir, "gen.onnx");
	o.force_general = true;
	assert_int_equal(nmp_model_save(m, gen, &o, &res, &err), NMP_OK);
	assert_true(res.general_path);
	size_t a_len, b_len;
	uint8_t *a = tu_read(f->out, &a_len), *b = tu_read(gen, &b_len);
	assert_int_equal(a_len, b_len);
	assert_memory_equal(a, b, a_len);
	free(a);
	free(b);
	free(gen);
	nmp_model_free(&m);

	/* The input is untouched. */
	size_t after_len;
	uint8_t *after = tu_read(f->in, &after_len);
	assert_int_equal(after_len, in_len);
	assert_memory_equal(after, before, in_len);
	free(after);
	free(before);
	free(tt.values);
}

static void test_save_nothing_is_identical(void **state)
{
	fixture *f = *state;
	tu_tensor tt;
	tu_float_tensor(&tt, "W", 8, 8);
	write_one(f->in, &tt);
	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	nmp_save_opts o = { 0 };
	for (int general = 0; general < 2; general++) {
		o.force_general = general;
		assert_int_equal(nmp_model_save(m, f->out, &o, NULL, &err), NMP_OK);
		size_t a_len, b_len;
		uint8_t *a = tu_read(f->in, &a_len), *b = tu_read(f->out, &b_len);
		assert_int_equal(a_len, b_len);
		assert_memory_equal(a, b, a_len);
		free(a);
		free(b);
	}
	nmp_model_free(&m);
	free(tt.values);
}

static void test_save_heap_tensor(void **state)
{
	fixture *f = *state;
	tu_tensor tt;
	tu_float_tensor(&tt, "W", 2, 4);
	tt.t.has_raw_data = 0;
	tt.t.data_type = NMP_DT_FLOAT16;
	int32_t h[8] = { 0x3c00, 0x4000, 0x4200, 0x4400, 0x4500, 0x4600, 0x4700, 0x4800 };
	tt.t.n_int32_data = 8;
	tt.t.int32_data = h;
	write_one(f->in, &tt);
	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	size_t visit[1] = { 0 };
	visit_log log = { 0 };
	nmp_save_opts o = { .visit = visit, .n_visit = 1, .on_payload = zero_even,
			    .on_metadata = two_entries, .ctx = &log };
	nmp_save_result res;
	assert_int_equal(nmp_model_save(m, f->out, &o, &res, &err), NMP_OK);
	assert_true(res.general_path);
	nmp_model_free(&m);
	assert_int_equal(nmp_model_load(f->out, &m, &err), NMP_OK);
	const Onnx__TensorProto *p = m->tensors[0].proto;
	assert_int_equal(p->n_int32_data, 8);
	/* zero_even clears bytes 0-3 of every 8: fp16 elements 0, 1, 4 and 5. */
	const int32_t want[8] = { 0, 0, 0x4200, 0x4400, 0, 0, 0x4700, 0x4800 };
	assert_memory_equal(p->int32_data, want, sizeof want);
	nmp_model_free(&m);
	free(tt.values);
}

static void test_save_external_gets_own_copy(void **state)
{
	fixture *f = *state;
	tu_tensor tt;
	write_external(f, &tt, "w.bin", NULL, NULL);
	char *data = tu_path(f->dir, "w.bin");
	size_t d0_len;
	uint8_t *d0 = tu_read(data, &d0_len);

	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	size_t visit[1] = { 0 };
	visit_log log = { 0 };
	nmp_save_opts o = { .visit = visit, .n_visit = 1, .on_payload = zero_even,
			    .on_metadata = two_entries, .ctx = &log };
	nmp_save_result res;
	assert_int_equal(nmp_model_save(m, f->out, &o, &res, &err), NMP_OK);
	nmp_model_free(&m);
	char *want = tu_path(f->dir, "out.onnx.data");
	assert_string_equal(res.data_path, want);
	free(want);
	assert_zeroed_even(f->out, 0, 16);
	/* The input's data file is not shared and not modified. */
	size_t d1_len;
	uint8_t *d1 = tu_read(data, &d1_len);
	assert_int_equal(d1_len, d0_len);
	assert_memory_equal(d0, d1, d0_len);
	free(d0);
	free(d1);
	free(data);
	free(tt.values);
}

static void test_save_external_data_option_and_auto(void **state)
{
	fixture *f = *state;
	tu_tensor a, b;
	tu_float_tensor(&a, "big", 32, 32);   /* 4 KiB: moves */
	tu_float_tensor(&b, "small", 4, 4);   /* 64 B: stays */
	Onnx__TensorProto *inits[2] = { &a.t, &b.t };
	tu_write_model(f->in, inits, 2);

	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	nmp_save_opts o = { .external_data = "weights.bin" };
	nmp_save_result res;
	assert_int_equal(nmp_model_save(m, f->out, &o, &res, &err), NMP_OK);
	assert_false(res.auto_external);
	nmp_model *m2 = NULL;
	assert_int_equal(nmp_model_load(f->out, &m2, &err), NMP_OK);
	assert_int_equal(m2->tensors[0].storage, NMP_STORE_EXTERNAL);
	assert_int_equal(m2->tensors[0].offset % 4096, 0);
	assert_int_equal(m2->tensors[1].storage, NMP_STORE_FILE);
	nmp_view v;
	assert_int_equal(nmp_model_view(m2, &m2->tensors[0], &v, &err), NMP_OK);
	assert_memory_equal(v.data, a.values, 4096);
	nmp_view_release(&v);
	nmp_model_free(&m2);

	/* A model that would pass the protobuf limit moves to external data by itself. */
	char *out2 = tu_path(f->dir, "auto.onnx");
	nmp_save_opts small = { .proto_limit = 2048 };
	assert_int_equal(nmp_model_save(m, out2, &small, &res, &err), NMP_OK);
	assert_true(res.auto_external);
	assert_true(tu_exists(res.data_path));
	assert_int_equal(nmp_model_load(out2, &m2, &err), NMP_OK);
	assert_int_equal(m2->tensors[0].storage, NMP_STORE_EXTERNAL);
	nmp_model_free(&m2);
	free(out2);
	nmp_model_free(&m);
	free(a.values);
	free(b.values);
}

static void test_failed_save_leaves_nothing(void **state)
{
	fixture *f = *state;
	tu_tensor tt;
	tu_float_tensor(&tt, "W", 8, 8);
	write_one(f->in, &tt);
	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	size_t visit[1] = { 0 };
	visit_log log = { .fail_with = NMP_ERR_MODEL };
	nmp_save_opts o = { .visit = visit, .n_visit = 1, .on_payload = zero_even, .ctx = &log };
	for (int general = 0; general < 2; general++) {
		o.force_general = general;
		nmp_error_clear(&err);
		assert_int_equal(nmp_model_save(m, f->out, &o, NULL, &err), NMP_ERR_MODEL);
		assert_string_equal(err.message, "injected failure");
		assert_false(tu_exists(f->out));
		assert_int_equal(tu_count_files(f->dir), 1); /* in.onnx only: no temporary left */
	}
	nmp_model_free(&m);
	free(tt.values);
}

static void test_in_place_keeps_mode(void **state)
{
	fixture *f = *state;
	tu_tensor tt;
	tu_float_tensor(&tt, "W", 8, 8);
	write_one(f->in, &tt);
	assert_int_equal(chmod(f->in, 0640), 0);
	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	size_t visit[1] = { 0 };
	visit_log log = { 0 };
	nmp_save_opts o = { .visit = visit, .n_visit = 1, .on_payload = zero_even,
			    .on_metadata = two_entries, .ctx = &log, .in_place = true };
	assert_int_equal(nmp_model_save(m, f->in, &o, NULL, &err), NMP_OK);
	nmp_model_free(&m);
	assert_zeroed_even(f->in, 0, 64);
	struct stat st;
	assert_int_equal(stat(f->in, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0640);
	assert_int_equal(tu_count_files(f->dir), 1);
	free(tt.values);
}

/* The initializer named `name` in g, or NULL. */
static Onnx__TensorProto *init_named(const Onnx__GraphProto *g, const char *name)
{
	for (size_t i = 0; i < g->n_initializer; i++)
		if (strcmp(g->initializer[i]->name ? g->initializer[i]->name : "", name) == 0)
			return g->initializer[i];
	return NULL;
}

/* Every initializer of `want` is in `got`, encoded to the same bytes, and no other. */
static void expect_same_initializers(const Onnx__GraphProto *want, const uint8_t *buf, size_t len)
{
	Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, len, buf);
	assert_non_null(m);
	const Onnx__GraphProto *got = m->graph;
	assert_int_equal(got->n_initializer, want->n_initializer);
	for (size_t i = 0; i < want->n_initializer; i++) {
		const Onnx__TensorProto *w = want->initializer[i];
		const Onnx__TensorProto *g = init_named(got, w->name ? w->name : "");
		assert_non_null(g);
		size_t lw = onnx__tensor_proto__get_packed_size(w), lg = onnx__tensor_proto__get_packed_size(g);
		assert_int_equal(lw, lg);
		uint8_t *bw = malloc(lw + 1), *bg = malloc(lg + 1);
		onnx__tensor_proto__pack(w, bw);
		onnx__tensor_proto__pack(g, bg);
		assert_memory_equal(bw, bg, lw);
		free(bw);
		free(bg);
	}
	assert_int_equal(got->n_node, 1);
	assert_string_equal(got->node[0]->op_type, "MatMul");
	onnx__model_proto__free_unpacked(m, NULL);
}

/* A model of graph g (IR version 8), packed into *len bytes. */
static uint8_t *pack_graph(Onnx__GraphProto *g, size_t *len)
{
	Onnx__ModelProto model = ONNX__MODEL_PROTO__INIT;
	model.has_ir_version = 1;
	model.ir_version = 8;
	model.producer_name = "nmprune-tests";
	model.graph = g;
	*len = onnx__model_proto__get_packed_size(&model);
	uint8_t *buf = malloc(*len);
	onnx__model_proto__pack(&model, buf);
	return buf;
}

/*
 * Initializers that nothing reads are kept as bytes, not parsed: they are no
 * tensors of the model, and every way of writing it gives them back as they
 * were, where they were.
 */
static void test_unread_initializers_round_trip(void **state)
{
	fixture *f = *state;
	tu_tensor a, w;
	tu_float_tensor(&a, "A", 2, 2);
	tu_float_tensor(&w, "W", 4, 4);
	Onnx__TensorProto b = ONNX__TENSOR_PROTO__INIT, c = ONNX__TENSOR_PROTO__INIT;
	int64_t b_dims[1] = { 3 }, b_vals[3] = { -1, 0, 1 << 20 }, c_dims[1] = { 0 };
	b.name = "B";
	b.has_data_type = 1;
	b.data_type = NMP_DT_INT64;
	b.n_dims = 1;
	b.dims = b_dims;
	b.n_int64_data = 3;
	b.int64_data = b_vals;
	c.n_dims = 1;                         /* unnamed and empty */
	c.dims = c_dims;
	Onnx__TensorProto *inits[4] = { &a.t, &w.t, &b, &c };

	char *ins[2] = { "X", "W" }, *outs[1] = { "Y" };
	Onnx__NodeProto node = tu_node("MatMul", ins, 2, outs, 1);
	Onnx__NodeProto *nodes[1] = { &node };
	Onnx__GraphProto g = ONNX__GRAPH_PROTO__INIT;
	g.name = "g";
	g.n_node = 1;
	g.node = nodes;
	g.n_initializer = 4;
	g.initializer = inits;
	size_t len;
	uint8_t *in = pack_graph(&g, &len);
	tu_write(f->in, in, len);

	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	assert_int_equal(m->n_kept, 3);
	assert_int_equal(m->n_tensors, 1);
	assert_string_equal(m->tensors[0].name, "W");
	assert_int_equal(m->tensors[0].kept_run, 1); /* read, and compact */
	assert_int_equal(m->proto->graph->n_initializer, 0);

	/* The copy path: the same bytes. */
	nmp_save_opts o = { 0 };
	assert_int_equal(nmp_model_save(m, f->out, &o, NULL, &err), NMP_OK);
	size_t out_len;
	uint8_t *out = tu_read(f->out, &out_len);
	assert_int_equal(out_len, len);
	assert_memory_equal(out, in, len);
	free(out);

	/* The general path: the records back in place, so the same bytes. */
	o.force_general = true;
	assert_int_equal(nmp_model_save(m, f->out, &o, NULL, &err), NMP_OK);
	out = tu_read(f->out, &out_len);
	assert_int_equal(out_len, len);
	assert_memory_equal(out, in, len);
	expect_same_initializers(&g, out, out_len);
	free(out);

	/* The copy handed to ONNX Runtime. */
	uint8_t *ser;
	size_t ser_len;
	assert_int_equal(nmp_model_serialize(m, NULL, NULL, 0, &ser, &ser_len, &err), NMP_OK);
	assert_int_equal(ser_len, len);
	assert_memory_equal(ser, in, len);
	free(ser);

	nmp_model_free(&m);
	free(in);
	free(a.values);
	free(w.values);
}

/* The tensor named `name` of the model at `path`, as floats (n of them). */
static void expect_floats(const char *path, const char *name, const float *want, size_t n)
{
	nmp_model *m = NULL;
	nmp_error err = { 0 };
	if (nmp_model_load(path, &m, &err) != NMP_OK)
		fail_msg("%s", err.message);
	const nmp_tensor *t = NULL;
	for (size_t i = 0; i < m->n_tensors; i++)
		if (strcmp(m->tensors[i].name, name) == 0)
			t = &m->tensors[i];
	assert_non_null(t);
	assert_int_equal(t->numel, n);
	nmp_view v;
	assert_int_equal(nmp_model_view(m, t, &v, &err), NMP_OK);
	assert_memory_equal(v.data, want, n * sizeof *want);
	nmp_view_release(&v);
	nmp_model_free(&m);
}

/*
 * Compact records (small initializers that nodes read, kept as their bytes)
 * are masked where they lie on every path: the copy path, the general path
 * (which packs their run as one piece), external data (they stay inline), and
 * the in-memory copy for ONNX Runtime with new values; a parsed tensor beside
 * them is written as before.
 */
static void test_compact_records_on_every_path(void **state)
{
	fixture *f = *state;
	tu_tensor a, w, big;
	tu_float_tensor(&a, "A", 2, 3);
	tu_float_tensor(&w, "W", 4, 4);
	tu_float_tensor(&big, "L", 32, 32);
	w.t.has_raw_data = 0; /* packed float_data */
	w.t.n_float_data = 16;
	w.t.float_data = w.values;
	Onnx__TensorProto *inits[3] = { &a.t, &big.t, &w.t };
	tu_write_model(f->in, inits, 3);

	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	assert_int_equal(m->n_tensors, 3);
	assert_int_equal(m->n_compact, 2);
	assert_string_equal(m->tensors[0].name, "L");
	assert_string_equal(m->tensors[1].name, "A");
	assert_string_equal(m->tensors[2].name, "W");
	assert_int_equal(m->n_runs, 2); /* L parts them */
	assert_int_equal(m->tensors[1].kept_run, 1);
	assert_int_equal(m->tensors[2].kept_run, 2);

	float w_want[16], a_want[6], l_want[1024];
	for (int i = 0; i < 16; i++)
		w_want[i] = i % 2 ? (float)(i + 1) : 0.0f;
	for (int i = 0; i < 6; i++)
		a_want[i] = (float)(i + 1);
	for (int i = 0; i < 1024; i++)
		l_want[i] = i % 2 ? (float)(i + 1) : 0.0f;

	size_t visit[2] = { 2, 0 };
	visit_log log = { 0 };
	nmp_save_opts o = { .visit = visit, .n_visit = 2, .on_payload = zero_even, .ctx = &log };
	nmp_save_result res;
	const char *data_name = "out.data";
	uint8_t *copied = NULL;
	size_t copied_len = 0;
	for (int path = 0; path < 3; path++) {
		o.force_general = path == 1;
		o.external_data = path == 2 ? data_name : NULL;
		o.external_threshold = path == 2 ? 16 : 0; /* W and A stay inline all the same */
		assert_int_equal(nmp_model_save(m, f->out, &o, &res, &err), NMP_OK);
		assert_int_equal(res.general_path, path > 0);
		expect_floats(f->out, "W", w_want, 16);
		expect_floats(f->out, "A", a_want, 6);
		expect_floats(f->out, "L", l_want, 1024);
		size_t len;
		uint8_t *bytes = tu_read(f->out, &len);
		if (path == 0) { /* the copy */
			copied = bytes;
			copied_len = len;
			continue;
		}
		if (path == 1) { /* re-serialized: the records back where they were, so the same bytes */
			assert_int_equal(len, copied_len);
			assert_memory_equal(bytes, copied, len);
		}
		free(bytes);
	}
	free(copied);
	assert_int_equal(log.calls, 6);

	/* New values for W and L in the copy handed to ONNX Runtime. */
	float w_new[16], l_new[1024];
	for (int i = 0; i < 16; i++)
		w_new[i] = -(float)i;
	for (int i = 0; i < 1024; i++)
		l_new[i] = 0.5f * (float)i;
	const void *payloads[3] = { l_new, NULL, w_new };
	uint8_t *ser;
	size_t ser_len;
	assert_int_equal(nmp_model_serialize(m, payloads, NULL, 0, &ser, &ser_len, &err), NMP_OK);
	tu_write(f->out, ser, ser_len);
	free(ser);
	expect_floats(f->out, "W", w_new, 16);
	expect_floats(f->out, "A", a_want, 6);
	expect_floats(f->out, "L", l_new, 1024);

	/* And the input is as it was. */
	expect_floats(f->in, "W", w.values, 16);
	nmp_model_free(&m);
	free(a.values);
	free(w.values);
	free(big.values);
}

static size_t index_of(const nmp_model *m, const char *name)
{
	for (size_t i = 0; i < m->n_tensors; i++)
		if (strcmp(m->tensors[i].name, name) == 0)
			return i;
	fail_msg("no tensor '%s'", name);
	return 0;
}

/*
 * Kept records in subgraphs as in the main graph: an If whose branches hold
 * small read initializers, an unread one and large parsed ones.  Every writer
 * gives the records back where they were (the general path's bytes are the
 * copy's), with the visited payloads masked wherever they lie.
 */
static void test_kept_records_in_subgraphs(void **state)
{
	fixture *f = *state;
	tu_tensor mm, l, s1, u1, t1, v1, s2, b2;
	tu_float_tensor(&mm, "M", 2, 2);
	tu_float_tensor(&l, "L", 32, 32);
	tu_float_tensor(&s1, "S1", 2, 4);
	tu_float_tensor(&u1, "U1", 1, 3);
	tu_float_tensor(&t1, "T1", 20, 20);
	tu_float_tensor(&v1, "V1", 3, 3);
	tu_float_tensor(&s2, "S2", 1, 8);
	tu_float_tensor(&b2, "B2", 24, 24);

	char *then_ins[3] = { "S1", "T1", "V1" }, *then_outs[1] = { "o1" };
	Onnx__NodeProto then_sum = tu_node("Sum", then_ins, 3, then_outs, 1), *then_nodes[1] = { &then_sum };
	Onnx__TensorProto *then_inits[4] = { &s1.t, &u1.t, &t1.t, &v1.t };
	Onnx__ValueInfoProto o1 = ONNX__VALUE_INFO_PROTO__INIT, o2 = ONNX__VALUE_INFO_PROTO__INIT;
	o1.name = "o1";
	o2.name = "o2";
	Onnx__ValueInfoProto *then_out[1] = { &o1 }, *else_out[1] = { &o2 };
	Onnx__GraphProto then_g = ONNX__GRAPH_PROTO__INIT, else_g = ONNX__GRAPH_PROTO__INIT;
	then_g.name = "then";
	then_g.n_node = 1;
	then_g.node = then_nodes;
	then_g.n_initializer = 4;
	then_g.initializer = then_inits;
	then_g.n_output = 1;
	then_g.output = then_out;
	char *else_ins[2] = { "S2", "B2" }, *else_outs[1] = { "o2" };
	Onnx__NodeProto else_sum = tu_node("Sum", else_ins, 2, else_outs, 1), *else_nodes[1] = { &else_sum };
	Onnx__TensorProto *else_inits[2] = { &s2.t, &b2.t };
	else_g.name = "else";
	else_g.n_node = 1;
	else_g.node = else_nodes;
	else_g.n_initializer = 2;
	else_g.initializer = else_inits;
	else_g.n_output = 1;
	else_g.output = else_out;

	Onnx__AttributeProto at = ONNX__ATTRIBUTE_PROTO__INIT, ae = ONNX__ATTRIBUTE_PROTO__INIT;
	at.name = "then_branch";
	at.has_type = 1;
	at.type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH;
	at.g = &then_g;
	ae = at;
	ae.name = "else_branch";
	ae.g = &else_g;
	Onnx__AttributeProto *attrs[2] = { &at, &ae };
	char *if_ins[1] = { "C" }, *if_outs[1] = { "Y" }, *sum_ins[2] = { "M", "L" }, *sum_outs[1] = { "Z" };
	Onnx__NodeProto if_node = tu_node("If", if_ins, 1, if_outs, 1), sum = tu_node("Sum", sum_ins, 2, sum_outs, 1);
	if_node.n_attribute = 2;
	if_node.attribute = attrs;
	Onnx__NodeProto *nodes[2] = { &sum, &if_node };
	Onnx__TensorProto *inits[2] = { &mm.t, &l.t };
	Onnx__ValueInfoProto c = ONNX__VALUE_INFO_PROTO__INIT, y = ONNX__VALUE_INFO_PROTO__INIT,
			     z = ONNX__VALUE_INFO_PROTO__INIT;
	c.name = "C";
	y.name = "Y";
	z.name = "Z";
	Onnx__ValueInfoProto *ins[1] = { &c }, *outs[2] = { &y, &z };
	Onnx__GraphProto g = ONNX__GRAPH_PROTO__INIT;
	g.name = "g";
	g.n_node = 2;
	g.node = nodes;
	g.n_initializer = 2;
	g.initializer = inits;
	g.n_input = 1;
	g.input = ins;
	g.n_output = 2;
	g.output = outs;
	size_t len;
	uint8_t *in = pack_graph(&g, &len);
	tu_write(f->in, in, len);

	nmp_model *m = NULL;
	nmp_error err = { 0 };
	assert_int_equal(nmp_model_load(f->in, &m, &err), NMP_OK);
	assert_int_equal(m->n_compact, 4);   /* M, S1, V1, S2 */
	assert_int_equal(m->n_kept, 1);      /* U1 */
	assert_int_equal(m->n_runs, 4);      /* [M], [S1 U1], [V1], [S2] */
	assert_int_equal(m->n_tensors, 7);
	assert_int_equal(nmp_model_n_initializers(m, m->proto->graph), 2);

	/* Nothing to change: every writer gives back the input's bytes. */
	nmp_save_opts o = { .force_general = true };
	assert_int_equal(nmp_model_save(m, f->out, &o, NULL, &err), NMP_OK);
	size_t out_len;
	uint8_t *out = tu_read(f->out, &out_len);
	assert_int_equal(out_len, len);
	assert_memory_equal(out, in, len);
	free(out);
	uint8_t *ser;
	size_t ser_len;
	assert_int_equal(nmp_model_serialize(m, NULL, NULL, 0, &ser, &ser_len, &err), NMP_OK);
	assert_int_equal(ser_len, len);
	assert_memory_equal(ser, in, len);
	free(ser);

	/* M, S1 (compact, main graph and subgraph) and T1 (parsed) masked: the copy and the general path agree. */
	size_t visit[3] = { index_of(m, "S1"), index_of(m, "M"), index_of(m, "T1") };
	visit_log log = { 0 };
	o = (nmp_save_opts){ .visit = visit, .n_visit = 3, .on_payload = zero_even, .ctx = &log };
	assert_int_equal(nmp_model_save(m, f->out, &o, NULL, &err), NMP_OK);
	char *gen = tu_path(f->dir, "gen.onnx");
	o.force_general = true;
	assert_int_equal(nmp_model_save(m, gen, &o, NULL, &err), NMP_OK);
	size_t a_len, b_len;
	uint8_t *a = tu_read(f->out, &a_len), *b = tu_read(gen, &b_len);
	assert_int_equal(a_len, b_len);
	assert_memory_equal(a, b, a_len);
	free(a);
	free(b);
	float s1_want[8], m_want[4];
	for (int i = 0; i < 8; i++)
		s1_want[i] = i % 2 ? (float)(i + 1) : 0.0f;
	for (int i = 0; i < 4; i++)
		m_want[i] = i % 2 ? (float)(i + 1) : 0.0f;
	expect_floats(gen, "S1", s1_want, 8);
	expect_floats(gen, "M", m_want, 4);
	expect_floats(gen, "V1", v1.values, 9);
	free(gen);

	/* New values for a subgraph's compact record in the copy for ONNX Runtime. */
	const void **payloads = calloc(m->n_tensors, sizeof *payloads);
	float s2_new[8] = { 8, 7, 6, 5, 4, 3, 2, 1 };
	payloads[index_of(m, "S2")] = s2_new;
	assert_int_equal(nmp_model_serialize(m, payloads, NULL, 0, &ser, &ser_len, &err), NMP_OK);
	tu_write(f->out, ser, ser_len);
	free(ser);
	free(payloads);
	expect_floats(f->out, "S2", s2_new, 8);
	expect_floats(f->out, "V1", v1.values, 9);

	nmp_model_free(&m);
	free(in);
	tu_tensor *all[] = { &mm, &l, &s1, &u1, &t1, &v1, &s2, &b2 };
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
		free(all[i]->values);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_raw_tensor_is_file_resident, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unread_initializers_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_compact_records_on_every_path, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kept_records_in_subgraphs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_typed_fields, setup, teardown),
		cmocka_unit_test_setup_teardown(test_payload_length_checks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dims_checks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_a_model, setup, teardown),
		cmocka_unit_test(test_ort_reason),
		cmocka_unit_test_setup_teardown(test_external_data, setup, teardown),
		cmocka_unit_test_setup_teardown(test_external_data_escapes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_save_copy_and_general_agree, setup, teardown),
		cmocka_unit_test_setup_teardown(test_save_nothing_is_identical, setup, teardown),
		cmocka_unit_test_setup_teardown(test_save_heap_tensor, setup, teardown),
		cmocka_unit_test_setup_teardown(test_save_external_gets_own_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_save_external_data_option_and_auto, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_save_leaves_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_in_place_keeps_mode, setup, teardown),
	};
	return cmocka_run_group_tests_name("model", tests, NULL, NULL);
}
