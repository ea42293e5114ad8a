/*
 * graph.h — the graph walker: a read-only index of every weight a sparse
 * kernel could use, with the axis its consumers reduce over.
 *
 * For each Conv, ConvTranspose, Gemm and MatMul, and the integer forms of
 * dynamic quantization, MatMulInteger and ConvInteger (a weight's zero point
 * is its own input there; a pruned element becomes it) (in the main graph and in
 * every If/Loop/Scan subgraph, where names resolve lexically and a
 * subgraph's own names shadow outer ones), each weight-side input is traced
 * back through Transpose (output axis a is input axis perm[a]),
 * DequantizeLinear, Cast and Identity, and from a Loop or Scan body input
 * the body passes on unchanged to the node's input, to an initializer or a
 * Constant node's tensor.  The group axis (the reduction axis) and the
 * output-channel axis are mapped into the weight's own coordinates.  A
 * constant reached through any other op is still listed, with the op that
 * blocked it; activations are not candidates at all.
 *
 * The weights of LSTM, GRU and RNN (W and R) are listed with their reason
 * (no N:M kernel serves a recurrence), never pruned.  So is a weight whose
 * values any other node reads (Shape and Size aside, and the look-through
 * nodes on the way to a consumer), or that a graph returns: pruning would
 * change what that reader computes too.
 *
 * The walker decides nothing about eligibility beyond what the graph says
 * (a path it cannot follow, uses that disagree on the axis); select.h does.
 *
 * Ownership: nmp_graph_walk allocates the index; nmp_graph_free releases it.
 * It borrows from the model, which must outlive it.
 */
#ifndef NMP_GRAPH_H
#define NMP_GRAPH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "hash.h"
#include "model.h"

typedef struct nmp_use {
	const Onnx__NodeProto *node;  /* the consumer */
	const char *node_name;        /* "" when unnamed */
	const char *op;               /* Conv, ConvTranspose, Gemm, MatMul */
	int input;                    /* which input of the consumer */
	int axis;                     /* group axis, weight coordinates; -1 unknown */
	int out_axis;                 /* output-channel axis, weight coordinates; -1 none */
	bool depthwise;               /* Conv with Cin/group == 1 */
} nmp_use;

typedef struct nmp_quant {
	bool present;                 /* the weight is behind a DequantizeLinear, or read by MatMulInteger/ConvInteger */
	const nmp_tensor *scale;      /* NULL with unit_scale */
	bool unit_scale;              /* MatMulInteger, ConvInteger: no scale, |q - zero point| is the magnitude */
	const nmp_tensor *zero_point; /* NULL: zero point 0 */
	int axis;                     /* quantization axis, weight coordinates */
	int64_t block;                /* block_size, 0 for per-tensor and per-axis */
} nmp_quant;

typedef struct nmp_candidate {
	const nmp_tensor *tensor;     /* NULL when the path is blocked */
	const char *name;             /* initializer or Constant output name */
	nmp_use *uses;
	size_t n_uses;
	int axis;                     /* agreed group axis, -1 if none */
	int out_axis;
	nmp_quant quant;
	bool graph_input;             /* an initializer that is also a graph input */
	bool from_constant;           /* the value of a Constant node */
	char problem[96];             /* why the walker cannot use it; "" if none */
	size_t cap_uses;
} nmp_candidate;

typedef struct nmp_graph {
	nmp_candidate *cands;         /* in the order of first use (topological) */
	size_t n_cands;
	size_t cap;
	void *priv;
} nmp_graph;

nmp_status nmp_graph_walk(const nmp_model *m, nmp_graph **out, nmp_error *err);
void nmp_graph_free(nmp_graph **g);

/* A node's attribute by name, or NULL; an INT attribute's value, or dflt. */
const Onnx__AttributeProto *nmp_node_attr(const Onnx__NodeProto *n, const char *name);
int64_t nmp_node_attr_int(const Onnx__NodeProto *n, const char *name, int64_t dflt);

/* Is the node an ONNX op (the default domain, "" or "ai.onnx"), not another domain's? */
bool nmp_node_default_domain(const Onnx__NodeProto *n);

/*
 * Node n's k-th subgraph, or NULL past the last: its attributes in order,
 * each one's graph, then its list of graphs.  *attr (when attr is not NULL)
 * receives the attribute's name.
 */
const Onnx__GraphProto *nmp_node_subgraph(const Onnx__NodeProto *n, int32_t k, const char **attr);

/* True for the op types the walker treats as consumers. */
bool nmp_graph_is_consumer(const char *op);

#endif
