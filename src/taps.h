/*
 * taps.h — where each node of a model lives (its scope: the main graph or a
 * subgraph, and the node that holds it), and values computed inside If
 * branches made main-graph outputs for a run.
 *
 * ONNX Runtime returns only main-graph values.  A value computed in an If
 * branch reaches the main graph as a new output of its branch and of its If
 * node; the other branch returns an empty tensor of the same element type in
 * its place, so a run that takes that branch returns an empty tensor.  A
 * value computed in a Loop or Scan body leaves it as a new scan output: the
 * values of every iteration, stacked along a new leading axis.  Nested
 * subgraphs repeat this at every level; an If inside a loop body is not
 * tapped (its empty tensor would break the stack), nor is opset 8's Scan,
 * which scans a batch axis too, nor a loop whose node leaves out outputs.
 *
 * The edits live in the model's protobuf structures only between
 * nmp_taps_open and nmp_taps_close, which puts every field back as it was:
 * what nmp_model_serialize packs in between is the tapped model.
 *
 * Ownership: nmp_scopes_build fills a nmp_scopes that nmp_scopes_free
 * releases; it borrows the model.  nmp_taps_open allocates, nmp_taps_close
 * restores the model and releases everything.
 */
#ifndef NMP_TAPS_H
#define NMP_TAPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model.h"

typedef struct nmp_scope {
	const Onnx__GraphProto *graph;
	int parent;                   /* the enclosing scope; -1 for the main graph (scope 0) */
	Onnx__NodeProto *owner;       /* the node holding this graph; NULL for the main graph */
	const char *attr;             /* the owner's attribute that holds it: then_branch, body, ... */
} nmp_scope;

typedef struct nmp_scope_node {
	const Onnx__NodeProto *node;
	int scope;
} nmp_scope_node;

typedef struct nmp_scopes {
	nmp_scope *s;
	size_t n;
	nmp_scope_node *nodes;        /* every node, sorted by address */
	size_t n_nodes;
} nmp_scopes;

nmp_status nmp_scopes_build(const nmp_model *m, nmp_scopes *out, nmp_error *err);
void nmp_scopes_free(nmp_scopes *s);

/* The scope node n lives in; -1 for a node not in the model. */
int nmp_scopes_of(const nmp_scopes *s, const Onnx__NodeProto *n);

/*
 * The scope that defines `name` as seen from `scope` (names resolve from the
 * innermost graph out): a node's output, a graph input or an initializer
 * there.  -1 when none does.  *init tells whether it is an initializer.
 */
int nmp_scopes_defining(const nmp_model *m, const nmp_scopes *s, int scope, const char *name, bool *init);

/* The node that outputs `name` as seen from `scope`, or NULL (an initializer, a graph input, nothing). */
const Onnx__NodeProto *nmp_scopes_producer(const nmp_model *m, const nmp_scopes *s, int scope, const char *name);

/*
 * Can a value of `scope` be tapped?  true, with *stacked the number of Loop
 * and Scan levels it leaves (each adds a leading axis); false, with why
 * saying what stands in the way ("a Foo body", "an If inside a Loop body").
 */
bool nmp_scopes_tappable(const nmp_scopes *s, int scope, int *stacked, char *why, size_t why_len);

typedef struct nmp_taps nmp_taps;

nmp_status nmp_taps_open(const nmp_model *m, const nmp_scopes *s, nmp_taps **out, nmp_error *err);

/*
 * Makes value `name`, as the nodes of `scope` see it (a scope that
 * nmp_scopes_tappable accepts), a main-graph value; *fetch receives its name
 * there (`name` itself for scope 0), valid until nmp_taps_close.  A value
 * defined in an enclosing graph (outer) is first copied into scope's graph
 * by an Identity, so that a run returns it once for each time scope runs:
 * not at all when its branch is not taken, once per iteration of a loop.
 * dtype is its element type, which the other branches' empty tensors take.
 * Tapping one value of one scope twice gives one name.
 */
nmp_status nmp_taps_add(nmp_taps *t, int scope, const char *name, bool outer, int32_t dtype, const char **fetch,
			nmp_error *err);

/* Restores the model as it was before nmp_taps_open, and frees the taps. */
void nmp_taps_close(nmp_taps **t);

#endif
