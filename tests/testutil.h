/*
 * testutil.h — helpers shared by the CMocka tests: a scratch directory per
 * test and small ONNX models built with protobuf-c.
 */
#ifndef NMP_TESTUTIL_H
#define NMP_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "onnx.pb-c.h"

/* A fresh directory under /tmp, removed (with its files) by tu_rmdir. */
static inline char *tu_mkdtemp(void)
{
	char *d = strdup("/tmp/nmprune-test-XXXXXX");
	assert_non_null(mkdtemp(d));
	return d;
}

static inline void tu_rmdir(char *d)
{
	char cmd[512];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
	assert_int_equal(system(cmd), 0);
	free(d);
}

static inline char *tu_path(const char *dir, const char *name)
{
	char *p = malloc(strlen(dir) + strlen(name) + 2);
	sprintf(p, "%s/%s", dir, name);
	return p;
}

static inline void tu_write(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	if (len)
		assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static inline uint8_t *tu_read(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *buf = malloc((size_t)n + 1);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static inline int tu_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/* Number of directory entries other than . and .. */
static inline int tu_count_files(const char *dir)
{
	char cmd[512];
	snprintf(cmd, sizeof cmd, "ls -A '%s' | wc -l", dir);
	FILE *p = popen(cmd, "r");
	int n = -1;
	assert_int_equal(fscanf(p, "%d", &n), 1);
	pclose(p);
	return n;
}

/* A node of `op` over the given names (borrowed). */
static inline Onnx__NodeProto tu_node(const char *op, char **ins, size_t n_in, char **outs, size_t n_out)
{
	Onnx__NodeProto n = ONNX__NODE_PROTO__INIT;
	n.op_type = (char *)op;
	n.n_input = n_in;
	n.input = ins;
	n.n_output = n_out;
	n.output = outs;
	return n;
}

/*
 * A model Y = MatMul(X, W) with W the first initializer; a Sum node reads the
 * others, so that none is an initializer that nothing reads (those the loader
 * keeps as bytes, unparsed).  The tensors are borrowed; the caller owns them.
 */
static inline void tu_write_model(const char *path, Onnx__TensorProto **inits, size_t n_inits)
{
	Onnx__ModelProto model = ONNX__MODEL_PROTO__INIT;
	Onnx__GraphProto graph = ONNX__GRAPH_PROTO__INIT;
	Onnx__NodeProto node, rest;
	Onnx__OperatorSetIdProto opset = ONNX__OPERATOR_SET_ID_PROTO__INIT;
	Onnx__OperatorSetIdProto *opsets[1] = { &opset };
	Onnx__NodeProto *nodes[2] = { &node, &rest };
	char *ins[2] = { "X", inits[0]->name };
	char *outs[1] = { "Y" }, *rest_outs[1] = { "Z" };
	char **rest_ins = calloc(n_inits, sizeof *rest_ins);

	for (size_t i = 1; i < n_inits; i++)
		rest_ins[i - 1] = inits[i]->name;
	rest = tu_node("Sum", rest_ins, n_inits - 1, rest_outs, 1);

	opset.domain = "";
	opset.has_version = 1;
	opset.version = 17;
	node = tu_node("MatMul", ins, 2, outs, 1);
	node.name = "mm";
	graph.name = "g";
	graph.n_node = n_inits > 1 ? 2 : 1;
	graph.node = nodes;
	graph.n_initializer = n_inits;
	graph.initializer = inits;
	model.has_ir_version = 1;
	model.ir_version = 8;
	model.producer_name = "nmprune-tests";
	model.n_opset_import = 1;
	model.opset_import = opsets;
	model.graph = &graph;

	size_t len = onnx__model_proto__get_packed_size(&model);
	uint8_t *buf = malloc(len);
	onnx__model_proto__pack(&model, buf);
	tu_write(path, buf, len);
	free(buf);
	free(rest_ins);
}

/* A float tensor [rows, cols] with raw_data, values i + 1. */
typedef struct tu_tensor {
	Onnx__TensorProto t;
	int64_t dims[4];
	float *values;
	Onnx__StringStringEntryProto ext[3];
	Onnx__StringStringEntryProto *ext_ptrs[3];
} tu_tensor;

static inline void tu_float_tensor(tu_tensor *tt, const char *name, int64_t rows, int64_t cols)
{
	Onnx__TensorProto init = ONNX__TENSOR_PROTO__INIT;
	tt->t = init;
	tt->dims[0] = rows;
	tt->dims[1] = cols;
	tt->values = calloc((size_t)(rows * cols) + 16, sizeof(float)); /* slack for "too long" cases */
	for (int64_t i = 0; i < rows * cols; i++)
		tt->values[i] = (float)(i + 1);
	tt->t.name = (char *)name;
	tt->t.n_dims = 2;
	tt->t.dims = tt->dims;
	tt->t.has_data_type = 1;
	tt->t.data_type = 1;
	tt->t.has_raw_data = 1;
	tt->t.raw_data.len = (size_t)(rows * cols) * sizeof(float);
	tt->t.raw_data.data = (uint8_t *)tt->values;
}

/* Turns the tensor into an external one: location, offset, length. */
static inline void tu_make_external(tu_tensor *tt, const char *location, const char *offset,
				    const char *length)
{
	const char *keys[3] = { "location", "offset", "length" };
	const char *vals[3] = { location, offset, length };
	size_t n = 0;
	for (int i = 0; i < 3; i++) {
		if (!vals[i])
			continue;
		Onnx__StringStringEntryProto e = ONNX__STRING_STRING_ENTRY_PROTO__INIT;
		tt->ext[n] = e;
		tt->ext[n].key = (char *)keys[i];
		tt->ext[n].value = (char *)vals[i];
		tt->ext_ptrs[n] = &tt->ext[n];
		n++;
	}
	tt->t.has_raw_data = 0;
	tt->t.n_external_data = n;
	tt->t.external_data = tt->ext_ptrs;
	tt->t.has_data_location = 1;
	tt->t.data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
}

#endif
