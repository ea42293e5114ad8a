#include "channels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "mask.h"
#include "parallel.h"
#include "prune.h"
#include "sorted.h"

#define MAX_RANK 32
#define MAX_MEMBERS 64
#define MAX_RELS 40
#define MAX_SYMS MAX_RANK /* entries of a computed shape followed */

/* ---- the main graph's names -------------------------------------------------------- */

typedef struct ref {
	uint32_t node;
	int32_t input;              /* -1 - k: read inside the node's k-th subgraph (attribute order) */
} ref;

/*
 * One entry of a small integer vector the graph computes, typically a shape:
 * a constant, or the size of axis `axis` of the tensor named `name` (as
 * Shape reads it), or unknown (neither).
 */
typedef struct dim_sym {
	int64_t value;
	int32_t name;               /* name index for a size, -1 otherwise */
	int16_t axis;               /* axis of that name, counted from 0 */
	bool known;                 /* a constant */
} dim_sym;

typedef struct name_info {
	const char *name;
	long producer;              /* node index, -1 none */
	ref *refs;
	size_t n_refs, cap_refs;
	int rank;                   /* -1 unknown */
	uint32_t unit;              /* axes of size 1 in a tensor the graph computes (bit -neg - 1, below
				     * MAX_RANK), where known */
	const nmp_tensor *tensor;   /* the value of a constant (initializer, Constant node) */
	bool is_const;              /* also a Constant with a list or scalar attribute */
	int const_rank;             /* -1: no shape known */
	int64_t list_len;           /* a Constant's list attribute: its length, its one dim */
	dim_sym *syms;              /* a computed shape's entries (one for a scalar), when followed; else NULL */
	int n_syms;
	bool graph_input, graph_output;
	/* a constant read only inside one subgraph (the deleg_sub-th of node deleg_node): that subgraph's
	 * analysis owns it; -1 otherwise */
	int32_t deleg_sub;
	uint32_t deleg_node;
} name_info;

typedef struct slot {
	uint32_t name;
	int neg;                    /* axis counted from the end: -1 is the last */
	bool is_short;              /* holds one tile of the group's channels */
	size_t group;               /* while growing: the component; then the group of this run */
	uint64_t off;               /* once divided: where the group's channels begin on this axis */
} slot;

/* What a seg is (seg_kind): none; a Concat or Split; a Slice; a Reshape that keeps the last axis. */
enum { SEG_NONE, SEG_PARTS, SEG_SLICE, SEG_KEEP };

/*
 * A Concat, Split or Slice along a channel axis: the whole tensor's channels
 * (the Concat's output, the Split's or Slice's input) are the parts' one
 * after another; a Slice's one part begins `pre` channels in, and the
 * channels around it are read by nothing there.  A Reshape that keeps the
 * last axis is a Slice of all of it, when it has the channels it says.
 */
typedef struct seg {
	uint32_t node;
	int neg;                    /* the axis divided, counted from the end */
	size_t whole;               /* the whole's slot */
	size_t *part;               /* each part's slot; SIZE_MAX: a constant of one channel, or none */
	uint64_t *len;              /* each part's channels, 0 while unknown */
	size_t n_parts;
	int kind;                   /* SEG_PARTS, or one part: SEG_SLICE, SEG_KEEP (the part is the whole,
				     * both of `end` channels) */
	int64_t start, end;         /* a Slice's bounds, as given */
	uint64_t pre;               /* the channels before the first part: a Slice's start, once clamped */
	bool ok;                    /* every count known, adding up to the whole's */
	bool tiles;                 /* a Reshape whose one side's last axis is runs of the other's (divide_groups) */
} seg;

typedef struct ctx {
	const nmp_plan *plan;
	unsigned effort;            /* search budget factor */
	const nmp_model *model;
	const Onnx__GraphProto *g;  /* the graph analysed: the main graph or a subgraph */
	const struct ctx *parent;   /* the graph enclosing g; NULL for the main graph */
	uint32_t owner;             /* g is the sub-th subgraph of the parent's node `owner` */
	int32_t sub;
	char where[200];            /* how messages name g: "the main graph", "the then_branch of 'If_0'" */
	size_t first_group;         /* the groups found in g are first_group and after */
	name_info *names;
	size_t n_names, cap_names;
	uint32_t *name_map;         /* open addressing over names, at most 3/4 full, UINT32_MAX empty */
	size_t name_cap;
	slot *slots;                /* in the order found: each group's are expanded breadth first */
	size_t n_slots, cap_slots, expanded;
	uint64_t *slot_keys;        /* open addressing over slot keys (slot_hash) */
	size_t *slot_vals;
	size_t slot_cap;
	seg *segs;                  /* the Concats, Splits and Slices the groups reached along their axis */
	size_t n_segs, cap_segs;
	uint8_t *seg_seen;          /* per node: recorded in segs */
	nmp_channels *out;          /* shared by every graph's analysis, as are what follows */
	size_t *cap_groups, *cap_edits, *cap_parts;
	const uint32_t *choice_at;  /* per model tensor: its selection choice + 1 (grouped), 0 none */
	nmp_error *err;
	bool nomem;
} ctx;

static void *grow(void *p, size_t *cap, size_t need, size_t elem, bool *nomem)
{
	if (need <= *cap)
		return p;
	size_t c = *cap ? *cap * 2 : 16;
	while (c < need)
		c *= 2;
	void *q = realloc(p, c * elem);
	if (!q) {
		*nomem = true;
		return NULL;
	}
	*cap = c;
	return q;
}

static size_t find_name(const ctx *c, const char *name)
{
	if (!name || !name[0])
		return SIZE_MAX;
	size_t h = (size_t)nmp_str_hash(name) & (c->name_cap - 1);
	while (c->name_map[h] != UINT32_MAX) {
		if (strcmp(c->names[c->name_map[h]].name, name) == 0)
			return c->name_map[h];
		h = (h + 1) & (c->name_cap - 1);
	}
	return SIZE_MAX;
}

static size_t intern(ctx *c, const char *name)
{
	size_t i = find_name(c, name);
	if (i != SIZE_MAX || !name || !name[0])
		return i;
	name_info *n = grow(c->names, &c->cap_names, c->n_names + 1, sizeof *n, &c->nomem);
	if (!n)
		return SIZE_MAX;
	c->names = n;
	i = c->n_names++;
	c->names[i] = (name_info){ .name = name, .producer = -1, .rank = -1, .deleg_sub = -1 };
	size_t h = (size_t)nmp_str_hash(name) & (c->name_cap - 1);
	while (c->name_map[h] != UINT32_MAX)
		h = (h + 1) & (c->name_cap - 1);
	c->name_map[h] = (uint32_t)i;
	return i;
}

static void add_ref(ctx *c, const char *name, uint32_t node, int32_t input)
{
	size_t i = intern(c, name);
	if (i == SIZE_MAX)
		return;
	name_info *n = &c->names[i];
	if (n->n_refs == n->cap_refs) { /* most names have one or two readers: start small */
		size_t cap = n->cap_refs ? 2 * n->cap_refs : 2;
		ref *r = realloc(n->refs, cap * sizeof *r);
		if (!r) {
			c->nomem = true;
			return;
		}
		n->refs = r;
		n->cap_refs = cap;
	}
	n->refs[n->n_refs++] = (ref){ node, input };
}

/* How messages name a node: its name, else its first output. */
static const char *node_label(const Onnx__NodeProto *n)
{
	if (n->name && n->name[0])
		return n->name;
	return n->n_output && n->output[0] ? n->output[0] : "?";
}

static const char *node_op(const Onnx__NodeProto *n)
{
	return n->op_type ? n->op_type : "?";
}

static bool op_is(const Onnx__NodeProto *n, const char *op)
{
	return n->op_type && strcmp(n->op_type, op) == 0;
}

static void set_const(name_info *n, const nmp_tensor *t)
{
	n->is_const = true;
	n->tensor = t;
	n->const_rank = t && t->n_dims <= MAX_RANK ? (int)t->n_dims : -1;
	n->rank = n->const_rank;
}

/* Size d of a constant (d < const_rank): the tensor's dims, or a Constant list's length. */
static int64_t const_dim(const name_info *n, int d)
{
	return n->tensor ? n->tensor->dims[d] : n->list_len;
}

static void subgraph_refs(ctx *c, const Onnx__GraphProto *g, uint32_t owner, int32_t sub);

/*
 * Every outer name the subgraphs of node n read, recorded as read by node
 * `owner` inside its subgraph `sub`; sub < 0: n is the owner, and each of
 * its subgraphs by its number in nmp_node_subgraph, as analyse_subgraphs numbers them.
 */
static void node_subgraph_refs(ctx *c, const Onnx__NodeProto *n, uint32_t owner, int32_t sub)
{
	const Onnx__GraphProto *s;
	for (int32_t k = 0; (s = nmp_node_subgraph(n, k, NULL)) != NULL; k++)
		subgraph_refs(c, s, owner, sub >= 0 ? sub : k);
}

/* The entry of the enclosing graph's constant that c's graph alone reads (and so owns), or NULL. */
static const name_info *owned_outer(const ctx *c, const char *name)
{
	size_t i = c->parent && name ? find_name(c->parent, name) : SIZE_MAX;
	const name_info *p = i != SIZE_MAX ? &c->parent->names[i] : NULL;
	return p && p->deleg_sub == c->sub && p->deleg_node == c->owner ? p : NULL;
}

static void subgraph_refs(ctx *c, const Onnx__GraphProto *g, uint32_t owner, int32_t sub)
{
	for (size_t i = 0; i < g->n_node; i++) {
		const Onnx__NodeProto *n = g->node[i];
		for (size_t k = 0; k < n->n_input; k++) /* an owned constant passes on to the subgraph that reads it */
			if (find_name(c, n->input[k]) != SIZE_MAX || owned_outer(c, n->input[k]))
				add_ref(c, n->input[k], owner, -1 - sub);
		node_subgraph_refs(c, n, owner, sub);
	}
}

/* What the graphs around c's graph know of a name it reads from them, or NULL. */
static const name_info *outer_name(const ctx *c, const char *name)
{
	for (const ctx *p = c->parent; p; p = p->parent) {
		size_t i = find_name(p, name);
		if (i != SIZE_MAX)
			return &p->names[i];
	}
	return NULL;
}

static int shape_rank(const Onnx__ValueInfoProto *v)
{
	if (!v->type || v->type->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !v->type->tensor_type ||
	    !v->type->tensor_type->shape)
		return -1;
	return (int)v->type->tensor_type->shape->n_dim;
}

/* The inputs of every node in the subgraphs of g's nodes, at any depth. */
static size_t nested_inputs(const Onnx__GraphProto *g)
{
	size_t total = 0;
	const Onnx__GraphProto *s;
	for (size_t i = 0; i < g->n_node; i++)
		for (int32_t k = 0; (s = nmp_node_subgraph(g->node[i], k, NULL)) != NULL; k++) {
			for (size_t j = 0; j < s->n_node; j++)
				total += s->node[j]->n_input;
			total += nested_inputs(s);
		}
	return total;
}

static nmp_status build_index(ctx *c)
{
	const Onnx__GraphProto *g = c->g;
	size_t n_init = nmp_model_n_initializers(c->model, g);
	size_t total = n_init + g->n_input + g->n_output + 1;
	for (size_t i = 0; i < g->n_node; i++)
		total += g->node[i]->n_input + g->node[i]->n_output;
	if (c->parent) /* a subgraph also indexes the owned constants that its own subgraphs read */
		total += nested_inputs(g);
	if (total >= UINT32_MAX / 2)
		return nmp_error_set(c->err, NMP_ERR_MODEL, "graph '%s': %zu names, more than nmprune indexes",
				     g->name ? g->name : "", total);
	c->name_cap = 64;
	while (c->name_cap < total + total / 3 + 1)
		c->name_cap *= 2;
	c->name_map = malloc(c->name_cap * sizeof *c->name_map);
	if (!c->name_map)
		return nmp_error_set(c->err, NMP_ERR_NOMEM, "out of memory");
	memset(c->name_map, 0xff, c->name_cap * sizeof *c->name_map);

	for (size_t i = 0; i < n_init; i++) {
		const nmp_tensor *t = nmp_model_initializer(c->model, g, i);
		size_t k = intern(c, t->name);
		if (k != SIZE_MAX)
			set_const(&c->names[k], t);
	}
	for (size_t i = 0; i < g->n_input; i++) {
		size_t k = intern(c, g->input[i]->name);
		if (k == SIZE_MAX)
			continue;
		c->names[k].graph_input = true;
		if (c->names[k].rank < 0)
			c->names[k].rank = shape_rank(g->input[i]);
	}
	for (size_t i = 0; i < g->n_output; i++) {
		size_t k = intern(c, g->output[i]->name);
		if (k != SIZE_MAX)
			c->names[k].graph_output = true;
	}
	for (size_t i = 0; i < g->n_node; i++) {
		const Onnx__NodeProto *n = g->node[i];
		for (size_t k = 0; k < n->n_output; k++) {
			size_t o = intern(c, n->output[k]);
			if (o == SIZE_MAX)
				continue;
			c->names[o].producer = (long)i;
			if (op_is(n, "Constant")) {
				const Onnx__AttributeProto *v = nmp_node_attr(n, "value");
				if (v && v->t) {
					set_const(&c->names[o], nmp_model_tensor_of(c->model, v->t));
				} else if (n->n_attribute == 1) { /* value_float(s), value_int(s), ... */
					const Onnx__AttributeProto *a = n->attribute[0];
					c->names[o].is_const = true;
					bool list = a->n_floats || a->n_ints || a->n_strings;
					c->names[o].const_rank = list ? 1 : 0;
					c->names[o].list_len = (int64_t)(a->n_floats + a->n_ints + a->n_strings);
					c->names[o].rank = c->names[o].const_rank;
				}
			}
		}
		for (size_t k = 0; k < n->n_input; k++)
			if (n->input[k] && n->input[k][0])
				add_ref(c, n->input[k], (uint32_t)i, (int32_t)k);
	}
	for (size_t i = 0; i < g->n_value_info; i++) {
		size_t k = find_name(c, g->value_info[i]->name);
		if (k != SIZE_MAX && c->names[k].rank < 0)
			c->names[k].rank = shape_rank(g->value_info[i]);
	}
	for (size_t i = 0; i < g->n_node; i++)
		node_subgraph_refs(c, g->node[i], (uint32_t)i, -1);
	/*
	 * A name this subgraph reads from the graphs around it lends its rank,
	 * and nothing else, unless it is a constant of the enclosing graph that
	 * only this subgraph reads: then it is this subgraph's to move.
	 */
	for (size_t i = 0; c->parent && i < c->n_names; i++) {
		name_info *ni = &c->names[i];
		if (ni->producer >= 0 || ni->is_const || ni->graph_input)
			continue;
		const name_info *p = owned_outer(c, ni->name);
		if (p) {
			set_const(ni, p->tensor);
			continue;
		}
		const name_info *o = outer_name(c, ni->name);
		if (o && ni->rank < 0)
			ni->rank = o->rank;
	}
	/* the constants read only inside one subgraph, which that subgraph's analysis owns */
	for (size_t i = 0; i < c->n_names; i++) {
		name_info *ni = &c->names[i];
		bool one = ni->tensor && ni->n_refs && !ni->graph_input && !ni->graph_output;
		for (size_t r = 0; one && r < ni->n_refs; r++)
			one = ni->refs[r].input < 0 && ni->refs[r].node == ni->refs[0].node &&
			      ni->refs[r].input == ni->refs[0].input;
		if (one) {
			ni->deleg_node = ni->refs[0].node;
			ni->deleg_sub = -1 - ni->refs[0].input;
		}
	}
	if (c->nomem)
		return nmp_error_set(c->err, NMP_ERR_NOMEM, "out of memory");
	return NMP_OK;
}

static int rank_of(const ctx *c, const char *name)
{
	size_t i = find_name(c, name);
	return i == SIZE_MAX ? -1 : c->names[i].rank;
}

static const char *in_name(const Onnx__NodeProto *n, size_t k)
{
	return k < n->n_input && n->input[k] && n->input[k][0] ? n->input[k] : NULL;
}

/* ---- ranks: a small inference over the ops whose output rank is evident ----------------- */

static bool op_in(const Onnx__NodeProto *n, const char *const *list)
{
	for (; *list; list++)
		if (op_is(n, *list))
			return true;
	return false;
}

/* Element-wise over all inputs and outputs: any axis passes through unchanged. */
static const char *const k_elementwise[] = {
	"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "Gelu", "Erf", "Elu", "Selu", "Celu",
	"Softplus", "Softsign", "HardSwish", "Mish", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal",
	"Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Cast", "Add", "Sub", "Mul", "Div",
	"Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Clip", "ThresholdedRelu", "Shrink",
	"Softmax", "LogSoftmax", "Dropout", "Not", "And", "Or", "Xor", "Equal", "Less", "Greater",
	"LessOrEqual", "GreaterOrEqual", "IsNaN", "IsInf", NULL,
};

static const char *const k_pools[] = {
	"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", NULL,
};
static const char *const *const k_global_pools = k_pools + 3; /* the last three */

/* Ops whose first output has the rank of their first input. */
static const char *const k_same_rank[] = {
	"Conv", "ConvTranspose", "ConvInteger", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
	"GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
	"GroupNormalization", "RMSNormalization", "MeanVarianceNormalization", "LpNormalization", "LRN",
	"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "Concat", "Split", "Resize", "Upsample",
	"Pad", "Slice", "Tile", "DepthToSpace", "SpaceToDepth", "CumSum", "Trilu", "Hardmax", "TopK",
	"ReverseSequence", "GatherElements", "ScatterElements", "ScatterND", "RoiAlign", NULL,
};

/* The number of entries of a constant 1-D input (axes, shape), or -1. */
static int const_length(const ctx *c, const char *name)
{
	size_t i = name ? find_name(c, name) : SIZE_MAX;
	if (i == SIZE_MAX || !c->names[i].is_const)
		return -1;
	if (c->names[i].const_rank == 0)
		return 1;
	return c->names[i].const_rank == 1 ? (int)const_dim(&c->names[i], 0) : -1;
}

/* axes as an attribute (older opsets) or as input `index`: how many, or -1. */
static int axes_count(const ctx *c, const Onnx__NodeProto *n, size_t index)
{
	const Onnx__AttributeProto *a = nmp_node_attr(n, "axes");
	if (a)
		return (int)a->n_ints;
	return n->n_input > index ? const_length(c, in_name(n, index)) : 0;
}

/* A 1-D tensor's length: a constant's, or a computed shape's that was followed; else -1. */
static int vlen_of(const ctx *c, const char *name)
{
	size_t i = name ? find_name(c, name) : SIZE_MAX;
	if (i == SIZE_MAX || c->names[i].rank != 1)
		return -1;
	const name_info *v = &c->names[i];
	if (v->syms)
		return v->n_syms;
	return v->is_const && v->const_rank == 1 && const_dim(v, 0) <= INT32_MAX ? (int)const_dim(v, 0) : -1;
}

/*
 * The values of a constant integer input with at most `cap` entries (an
 * int64 or int32 initializer or Constant, or a Constant's value_ints), or -1.
 */
static int const_ints(const ctx *c, const char *name, int64_t *out, int cap)
{
	size_t i = name ? find_name(c, name) : SIZE_MAX;
	if (i == SIZE_MAX || !c->names[i].is_const)
		return -1;
	const nmp_tensor *t = c->names[i].tensor;
	if (!t) {
		const Onnx__AttributeProto *a = c->names[i].producer >= 0 && c->g->node[c->names[i].producer]->n_attribute
			? c->g->node[c->names[i].producer]->attribute[0] : NULL;
		if (!a || !a->name || (strcmp(a->name, "value_ints") != 0 && strcmp(a->name, "value_int") != 0))
			return -1;
		int n = strcmp(a->name, "value_int") == 0 ? 1 : (int)a->n_ints;
		if (n > cap)
			return -1;
		for (int k = 0; k < n; k++)
			out[k] = n == 1 && !a->n_ints ? a->i : a->ints[k];
		return n;
	}
	if ((t->dtype != NMP_DT_INT64 && t->dtype != NMP_DT_INT32) || t->numel > (uint64_t)cap)
		return -1;
	nmp_view v = { 0 };
	nmp_error ignored = { 0 };
	if (nmp_model_view(c->model, t, &v, &ignored) != NMP_OK)
		return -1;
	for (uint64_t k = 0; k < t->numel; k++) {
		if (t->dtype == NMP_DT_INT64) {
			memcpy(&out[k], (const uint8_t *)v.data + 8 * k, 8);
		} else {
			int32_t x;
			memcpy(&x, (const uint8_t *)v.data + 4 * k, 4);
			out[k] = x;
		}
	}
	nmp_view_release(&v);
	return (int)t->numel;
}

/* Where a slice over `len` entries starts once ONNX has clamped it. */
static int64_t slice_first(int64_t len, int64_t start, int64_t step)
{
	start = start < 0 ? (start < -len ? -1 : start + len) : start;
	if (step > 0)
		return start < 0 ? 0 : start > len ? len : start;
	return start < 0 ? 0 : start > len - 1 ? len - 1 : start;
}

/* ONNX's clamping of a slice over `len` entries: how many it takes, or -1 for a step of 0. */
static int64_t slice_count(int64_t len, int64_t start, int64_t end, int64_t step)
{
	if (step == 0 || step == INT64_MIN)
		return -1;
	if (len == 0)
		return 0;
	start = slice_first(len, start, step);
	end = end < 0 ? (end < -len ? -1 : end + len) : end;
	if (step > 0) {
		end = end < 0 ? 0 : end > len ? len : end;
		return end > start ? 1 + (end - start - 1) / step : 0;
	}
	end = end > len - 1 ? len - 1 : end;
	return start > end ? 1 + (start - end - 1) / -step : 0;
}

/*
 * The entries of a small integer vector or scalar: those followed, a
 * constant's values, or unknown entries where only its length is known;
 * the count, or -1.
 */
static int syms_of(const ctx *c, const char *name, dim_sym *out)
{
	size_t i = name ? find_name(c, name) : SIZE_MAX;
	if (i == SIZE_MAX)
		return -1;
	if (c->names[i].syms) {
		memcpy(out, c->names[i].syms, (size_t)c->names[i].n_syms * sizeof *out);
		return c->names[i].n_syms;
	}
	int64_t v[MAX_SYMS];
	int n = c->names[i].const_rank <= 1 ? const_ints(c, name, v, MAX_SYMS) : -1;
	if (n >= 0) {
		for (int k = 0; k < n; k++)
			out[k] = (dim_sym){ .value = v[k], .name = -1, .known = true };
		return n;
	}
	n = vlen_of(c, name);
	if (n > MAX_SYMS)
		return -1;
	for (int k = 0; k < n; k++)
		out[k] = (dim_sym){ .name = -1 };
	return n;
}

/*
 * A Slice's starts, ends, axes and steps (attributes before opset 10), at
 * most MAX_RANK of each, axes as given (absent: 0, 1, ...; absent steps: 1);
 * the count, or -1 when they are not constants or do not agree.
 */
static int slice_spec(const ctx *c, const Onnx__NodeProto *n, int64_t *st, int64_t *en, int64_t *ax, int64_t *sp)
{
	int k;
	if (n->n_input < 2) {
		const Onnx__AttributeProto *as = nmp_node_attr(n, "starts"), *ae = nmp_node_attr(n, "ends");
		const Onnx__AttributeProto *aa = nmp_node_attr(n, "axes");
		if (!as || !ae || as->n_ints != ae->n_ints || as->n_ints > MAX_RANK || (aa && aa->n_ints != as->n_ints))
			return -1;
		k = (int)as->n_ints;
		for (int i = 0; i < k; i++)
			st[i] = as->ints[i], en[i] = ae->ints[i], ax[i] = aa ? aa->ints[i] : i, sp[i] = 1;
		return k;
	}
	k = const_ints(c, in_name(n, 1), st, MAX_RANK);
	if (k < 0 || const_ints(c, in_name(n, 2), en, MAX_RANK) != k ||
	    (in_name(n, 3) && const_ints(c, in_name(n, 3), ax, MAX_RANK) != k) ||
	    (in_name(n, 4) && const_ints(c, in_name(n, 4), sp, MAX_RANK) != k))
		return -1;
	for (int i = 0; i < k; i++) {
		if (!in_name(n, 3))
			ax[i] = i;
		if (!in_name(n, 4))
			sp[i] = 1;
	}
	return k;
}

/* A Slice's start, end, axis and step when it takes one of each. */
static bool slice_params(const ctx *c, const Onnx__NodeProto *n, int64_t *st, int64_t *en, int64_t *ax, int64_t *sp)
{
	int64_t s[MAX_RANK], e[MAX_RANK], a[MAX_RANK], p[MAX_RANK];
	if (slice_spec(c, n, s, e, a, p) != 1)
		return false;
	*st = s[0], *en = e[0], *ax = a[0], *sp = p[0];
	return true;
}

/*
 * The axes, as bits counted from the last, that a Slice over `r` axes cuts
 * (bit -neg - 1 for axis neg), and each one's start, end and step indexed by
 * -neg - 1, the step 0 where the graph computes them; false when the axes
 * are not known or name an axis twice.
 */
static bool slice_axes(const ctx *c, const Onnx__NodeProto *n, int r, uint64_t *bits, int64_t *st, int64_t *en,
		       int64_t *sp)
{
	int64_t s[MAX_RANK], e[MAX_RANK], a[MAX_RANK], p[MAX_RANK];
	int k = r > 0 && r <= MAX_RANK ? slice_spec(c, n, s, e, a, p) : -1;
	if (k < 0 && r > 0 && r <= MAX_RANK && n->n_input >= 2) { /* bounds computed: which axes they cut */
		k = in_name(n, 3) ? const_ints(c, in_name(n, 3), a, MAX_RANK) : vlen_of(c, in_name(n, 1));
		for (int i = 0; i < k && k <= MAX_RANK; i++) {
			if (!in_name(n, 3))
				a[i] = i;
			s[i] = e[i] = p[i] = 0;
		}
		k = k <= MAX_RANK ? k : -1;
	}
	*bits = 0;
	for (int i = 0; i < k; i++) {
		if (a[i] < -r || a[i] >= r)
			return false;
		int at = (int)(a[i] < 0 ? -a[i] - 1 : r - 1 - a[i]);
		if (*bits >> at & 1)
			return false;
		*bits |= 1ull << at;
		st[at] = s[i], en[at] = e[i], sp[at] = p[i];
	}
	return k >= 0;
}

/*
 * The entries of node n's first output where the graph builds a shape at
 * run time (Shape, Slice, Gather, Unsqueeze, Concat, Cast, and element-wise
 * arithmetic over them, whose entries are unknown but whose length is not),
 * so that Reshape, Expand and ConstantOfShape know their output rank and
 * Reshape which axes it keeps.  The count, or -1 when it is not evident.
 */
static int infer_syms(const ctx *c, const Onnx__NodeProto *n, dim_sym *out)
{
	dim_sym in[MAX_SYMS];
	int64_t idx[MAX_SYMS];
	if (op_is(n, "Shape")) {
		size_t x = find_name(c, in_name(n, 0));
		int r = rank_of(c, in_name(n, 0));
		if (x == SIZE_MAX || r < 0)
			return -1;
		int64_t start = slice_first(r, nmp_node_attr_int(n, "start", 0), 1);
		int64_t k = slice_count(r, nmp_node_attr_int(n, "start", 0), nmp_node_attr_int(n, "end", r), 1);
		if (k > MAX_SYMS)
			return -1;
		for (int64_t j = 0; j < k; j++)
			out[j] = (dim_sym){ .name = (int32_t)x, .axis = (int16_t)(start + j) };
		return (int)k;
	}
	if (op_is(n, "Identity") || op_is(n, "Cast") ||
	    (op_is(n, "Unsqueeze") && rank_of(c, in_name(n, 0)) == 0 && axes_count(c, n, 1) == 1))
		return syms_of(c, in_name(n, 0), out);
	if (op_is(n, "Concat")) {
		int64_t axis = nmp_node_attr_int(n, "axis", 0);
		int total = 0;
		if (axis != 0 && axis != -1)
			return -1;
		for (size_t k = 0; k < n->n_input; k++) {
			int m = rank_of(c, in_name(n, k)) == 1 ? syms_of(c, in_name(n, k), in) : -1;
			if (m < 0 || total + m > MAX_SYMS)
				return -1;
			memcpy(out + total, in, (size_t)m * sizeof *in);
			total += m;
		}
		return total;
	}
	if (op_is(n, "Gather")) {
		int m = syms_of(c, in_name(n, 0), in), ri = rank_of(c, in_name(n, 1));
		int k = const_ints(c, in_name(n, 1), idx, MAX_SYMS);
		if (rank_of(c, in_name(n, 0)) != 1 || ri > 1 || ri < 0 || nmp_node_attr_int(n, "axis", 0) != 0)
			return -1;
		if (k < 0) { /* indices known by their length only */
			k = ri == 0 ? 1 : vlen_of(c, in_name(n, 1));
			for (int j = 0; j < k && k <= MAX_SYMS; j++)
				out[j] = (dim_sym){ .name = -1 };
			return k <= MAX_SYMS ? k : -1;
		}
		for (int j = 0; j < k; j++) {
			int64_t at = idx[j] < 0 ? idx[j] + m : idx[j];
			if (m < 0 || at < 0 || at >= m)
				return -1;
			out[j] = in[at];
		}
		return k;
	}
	if (op_is(n, "Slice")) {
		int m = syms_of(c, in_name(n, 0), in);
		int64_t st, en, ax, sp;
		if (m < 0 || !slice_params(c, n, &st, &en, &ax, &sp) || (ax != 0 && ax != -1))
			return -1;
		int64_t k = slice_count(m, st, en, sp), first = slice_first(m, st, sp);
		for (int64_t j = 0; j < k; j++)
			out[j] = in[first + j * sp];
		return (int)k;
	}
	if (op_in(n, k_elementwise)) {
		/* Broadcasting vectors and scalars: the longer length, the others 1; the values are not followed. */
		int len = -1;
		for (size_t k = 0; k < n->n_input; k++) {
			if (!in_name(n, k))
				continue;
			int rk = rank_of(c, in_name(n, k)), l = rk == 0 ? 1 : rk == 1 ? vlen_of(c, in_name(n, k)) : -1;
			if (l < 0 || l > MAX_SYMS || (len > 1 && l > 1 && l != len))
				return -1;
			len = l > len ? l : len;
		}
		for (int j = 0; j < len; j++)
			out[j] = (dim_sym){ .name = -1 };
		return len;
	}
	return -1;
}

static void infer_ranks(ctx *c)
{
	const Onnx__GraphProto *g = c->g;
	for (size_t i = 0; i < g->n_node; i++) {
		const Onnx__NodeProto *n = g->node[i];
		if (n->n_output == 0)
			continue;
		size_t o = find_name(c, n->output[0]);
		if (o == SIZE_MAX)
			continue;
		dim_sym syms[MAX_SYMS];
		int ns = c->names[o].syms || c->names[o].is_const ? -1 : infer_syms(c, n, syms);
		if (ns >= 0 && (c->names[o].syms = malloc((size_t)(ns ? ns : 1) * sizeof *syms)) != NULL) {
			memcpy(c->names[o].syms, syms, (size_t)ns * sizeof *syms);
			c->names[o].n_syms = ns;
		}
		if (c->names[o].rank >= 0)
			continue;
		int r = -1;
		if (op_in(n, k_elementwise)) {
			for (size_t k = 0; k < n->n_input; k++) {
				if (!in_name(n, k))
					continue;
				int rk = rank_of(c, n->input[k]);
				if (rk < 0) {
					r = -1;
					break;
				}
				r = rk > r ? rk : r;
			}
		} else if (op_in(n, k_same_rank)) {
			r = rank_of(c, in_name(n, 0));
			if (r < 0 && (op_is(n, "Conv") || op_is(n, "ConvTranspose") || op_is(n, "ConvInteger")))
				r = rank_of(c, in_name(n, 1)); /* the weight's rank: [N, C, spatial...] */
		} else if (op_is(n, "Gemm") || op_is(n, "Flatten")) {
			r = 2;
		} else if (op_is(n, "Shape")) {
			r = 1;
		} else if (op_is(n, "Size")) {
			r = 0;
		} else if (op_is(n, "Unsqueeze") || op_is(n, "Squeeze")) {
			int ri = rank_of(c, in_name(n, 0)), na = axes_count(c, n, 1);
			if (ri >= 0 && na >= 0 && (na > 0 || op_is(n, "Unsqueeze")))
				r = op_is(n, "Unsqueeze") ? ri + na : ri - na;
		} else if (op_is(n, "Gather")) {
			int rd = rank_of(c, in_name(n, 0)), ri = rank_of(c, in_name(n, 1));
			if (rd >= 1 && ri >= 0)
				r = rd - 1 + ri;
		} else if (op_is(n, "Expand")) {
			int ri = rank_of(c, in_name(n, 0)), ns = vlen_of(c, in_name(n, 1));
			if (ri >= 0 && ns >= 0)
				r = ri > ns ? ri : ns;
		} else if (op_is(n, "ConstantOfShape")) {
			r = vlen_of(c, in_name(n, 0));
		} else if (strncmp(node_op(n), "Reduce", 6) == 0 || op_is(n, "ArgMax") || op_is(n, "ArgMin")) {
			int ri = rank_of(c, in_name(n, 0));
			bool keep = nmp_node_attr_int(n, "keepdims", 1) != 0;
			int na = op_is(n, "ArgMax") || op_is(n, "ArgMin") ? 1 : axes_count(c, n, 1);
			if (ri >= 0 && (keep || na > 0))
				r = keep ? ri : ri - na;
		} else if (op_is(n, "MatMul") || op_is(n, "MatMulInteger")) {
			int ra = rank_of(c, in_name(n, 0)), rb = rank_of(c, in_name(n, 1));
			if (ra > 0 && rb > 0)
				r = ra == 1 && rb == 1 ? 0 : ra == 1 ? rb - 1 : rb == 1 ? ra - 1 : (ra > rb ? ra : rb);
		} else if (op_is(n, "Reshape")) {
			r = vlen_of(c, in_name(n, 1)); /* a constant shape, or one the graph computes */
		} else if (op_is(n, "Transpose")) {
			const Onnx__AttributeProto *p = nmp_node_attr(n, "perm");
			r = p && p->n_ints ? (int)p->n_ints : rank_of(c, in_name(n, 0));
		}
		bool dynamic = op_is(n, "DynamicQuantizeLinear"); /* its scale and zero point are scalars */
		for (size_t k = 0; k < n->n_output; k++) {
			size_t ok = find_name(c, n->output[k]);
			if (ok != SIZE_MAX && c->names[ok].rank < 0 && (k == 0 || op_in(n, k_elementwise) ||
									 op_is(n, "Split") || dynamic))
				c->names[ok].rank = k && dynamic ? 0 : r;
		}
	}
}

/*
 * The axes a reduction over `r` axes reduces, as bits counted from the last
 * (bit -neg - 1 for axis neg): its axes attribute or input, every axis when
 * it has none (none with noop_with_empty_axes); false when not known.
 */
static bool reduce_axes(const ctx *c, const Onnx__NodeProto *n, int r, uint64_t *bits)
{
	int64_t ax[MAX_RANK];
	int k = 0;
	const Onnx__AttributeProto *a = nmp_node_attr(n, "axes");
	if (r < 0 || r > MAX_RANK)
		return false;
	if (a) {
		if (a->n_ints > MAX_RANK)
			return false;
		k = (int)a->n_ints;
		for (int i = 0; i < k; i++)
			ax[i] = a->ints[i];
	} else if (in_name(n, 1) && (k = const_ints(c, in_name(n, 1), ax, MAX_RANK)) < 0) {
		return false;
	}
	*bits = 0;
	if (k == 0) {
		if (!nmp_node_attr_int(n, "noop_with_empty_axes", 0))
			*bits = (1ull << r) - 1;
		return true;
	}
	for (int i = 0; i < k; i++) {
		if (ax[i] < -r || ax[i] >= r)
			return false;
		*bits |= 1ull << (ax[i] < 0 ? -ax[i] - 1 : r - 1 - ax[i]);
	}
	return true;
}

static bool is_reduction(const Onnx__NodeProto *n)
{
	return nmp_node_default_domain(n) && strncmp(node_op(n), "Reduce", 6) == 0;
}

/*
 * Axes of size 1 in the tensors the graph computes: those a reduction keeps
 * (keepdims) or a Reshape or Expand is given as 1, and what element-wise ops
 * make of them (an axis of size 1 in every operand that has it).  An element-wise op broadcasts such a tensor
 * along the axis, so no order of the axis reaches it.  Nodes come in
 * topological order.
 */
static void infer_units(ctx *c)
{
	for (size_t i = 0; i < c->g->n_node; i++) {
		const Onnx__NodeProto *n = c->g->node[i];
		size_t o = n->n_output ? find_name(c, n->output[0]) : SIZE_MAX;
		int r = o == SIZE_MAX ? -1 : c->names[o].rank;
		if (r < 0 || r > MAX_RANK)
			continue;
		uint64_t unit = 0, reduced;
		dim_sym sh[MAX_SYMS];
		bool expand = op_is(n, "Expand");
		if (is_reduction(n) && nmp_node_attr_int(n, "keepdims", 1) && reduce_axes(c, n, r, &reduced)) {
			size_t x = find_name(c, in_name(n, 0));
			unit = reduced | (x == SIZE_MAX ? 0 : c->names[x].unit);
		} else if ((op_is(n, "Reshape") || expand) && syms_of(c, in_name(n, 1), sh) == r) {
			/* a shape entry known to be 1: Reshape's output has it; Expand's where its input is 1 too */
			size_t x = find_name(c, in_name(n, 0));
			int rx = x == SIZE_MAX ? -1 : c->names[x].rank;
			for (int a = 0; a < r; a++)
				if (sh[r - 1 - a].known && sh[r - 1 - a].value == 1 &&
				    (!expand || (rx >= 0 && (a >= rx || (c->names[x].unit >> a & 1)))))
					unit |= 1ull << a;
		} else if (op_in(n, k_elementwise)) {
			unit = (1ull << r) - 1;
			for (size_t k = 0; k < n->n_input && unit; k++) {
				size_t x = in_name(n, k) ? find_name(c, in_name(n, k)) : SIZE_MAX;
				if (x == SIZE_MAX)
					continue;
				const name_info *v = &c->names[x];
				uint64_t has = 0, one = 0;
				int rk = v->is_const ? v->const_rank : v->rank;
				if (rk < 0) {
					unit = 0;
					break;
				}
				for (int a = 0; a < rk && a < MAX_RANK; a++) {
					has |= 1ull << a;
					if (v->is_const ? const_dim(v, rk - 1 - a) == 1 : (v->unit >> a & 1))
						one |= 1ull << a;
				}
				unit &= ~has | one;
			}
		}
		c->names[o].unit = (uint32_t)unit; /* r <= MAX_RANK bits */
	}
}

/* ---- what each op ties together ---------------------------------------------------------- */

typedef struct member {
	int8_t out;                 /* 0: input, 1: output */
	int16_t index;
	int8_t neg;
	bool is_short;
} member;

typedef struct rel {
	member m[MAX_MEMBERS];
	int n;
	bool lost;                  /* a member did not fit (an axis beyond MAX_RANK, too many inputs) */
	bool any;                   /* every axis: members carry no axis, the slot's is used */
	unsigned tile, confine;
} rel;

typedef struct rels {
	rel r[MAX_RELS];
	int n;
	bool lost;                  /* a relation did not fit */
	char why[160];              /* why the op cannot carry a permutation, when it says */
} rels;

static rel *new_rel(rels *rs)
{
	if (rs->n == MAX_RELS) {
		rs->lost = true;
		return NULL;
	}
	rel *r = &rs->r[rs->n++];
	r->n = 0;
	r->lost = false;
	r->any = false;
	r->tile = r->confine = 0;
	return r;
}

static void mem(rel *r, int out, size_t index, int neg, bool is_short)
{
	if (!r)
		return;
	if (r->n < MAX_MEMBERS && neg < 0 && neg >= -MAX_RANK)
		r->m[r->n++] = (member){ (int8_t)out, (int16_t)index, (int8_t)neg, is_short };
	else
		r->lost = true; /* a tensor this relation moves would be left behind: the group must block */
}

static void all_io(rel *r, const Onnx__NodeProto *n, int neg)
{
	for (size_t k = 0; k < n->n_input; k++)
		mem(r, 0, k, neg, false);
	for (size_t k = 0; k < n->n_output; k++)
		mem(r, 1, k, neg, false);
}

/* Dims of a weight, looking back through Identity, Cast and DequantizeLinear to a constant. */
static const name_info *const_behind(const ctx *c, const char *name)
{
	for (int hops = 0; hops < 8; hops++) {
		size_t i = find_name(c, name);
		if (i == SIZE_MAX)
			return NULL;
		const name_info *ni = &c->names[i];
		if (ni->is_const)
			return ni->const_rank >= 0 ? ni : NULL;
		if (ni->producer < 0)
			return NULL;
		const Onnx__NodeProto *p = c->g->node[ni->producer];
		if (!op_is(p, "Identity") && !op_is(p, "Cast") && !op_is(p, "DequantizeLinear"))
			return NULL;
		name = in_name(p, 0);
	}
	return NULL;
}

/*
 * Conv, ConvTranspose and ConvInteger.  What else varies along the output
 * channels: the bias (input 2), or ConvInteger's weight zero point (input 3;
 * its input's zero point is one scalar).
 */
static void rels_conv(const ctx *c, const Onnx__NodeProto *n, rels *rs, bool transpose)
{
	size_t per_out = op_is(n, "ConvInteger") ? 3 : 2;
	size_t pi = find_name(c, in_name(n, per_out));
	int rp = pi == SIZE_MAX ? 0 : c->names[pi].is_const ? 1 : rank_of(c, in_name(n, per_out));
	if (rp > 1) {
		snprintf(rs->why, sizeof rs->why, "the %s of %s '%s' is not a constant or a vector", per_out == 3 ?
			 "weight zero point" : "bias", node_op(n), node_label(n));
		return;
	}
	if (rp == 0) /* none, or one scalar for every channel */
		per_out = SIZE_MAX;
	int r = rank_of(c, in_name(n, 0));
	if (r < 0)
		r = rank_of(c, in_name(n, 1));
	if (r < 3) {
		snprintf(rs->why, sizeof rs->why, "the rank of the input of %s '%s' is unknown", node_op(n), node_label(n));
		return;
	}
	int ch = 1 - r;
	int64_t groups = nmp_node_attr_int(n, "group", 1);
	rel *b = new_rel(rs);
	mem(b, 0, 0, -r, false);
	mem(b, 1, 0, -r, false);
	if (groups == 1) {
		rel *x = new_rel(rs), *y = new_rel(rs);
		mem(x, 0, 0, ch, false);
		mem(x, 0, 1, transpose ? -r : ch, false);
		mem(y, 1, 0, ch, false);
		mem(y, 0, 1, transpose ? ch : -r, false);
		if (per_out != SIZE_MAX)
			mem(y, 0, per_out, -1, false);
		return;
	}
	const name_info *w = const_behind(c, in_name(n, 1));
	if (transpose || !w || w->const_rank != r || groups <= 0) {
		snprintf(rs->why, sizeof rs->why, "%s '%s' has groups and %s", node_op(n), node_label(n),
			 transpose ? "is transposed" : "a weight of unknown shape");
		return;
	}
	int64_t cout = const_dim(w, 0), cin_g = const_dim(w, 1);
	if (cin_g == 1 && cout == groups) { /* depthwise: channel c in, channel c out */
		rel *d = new_rel(rs);
		mem(d, 0, 0, ch, false);
		mem(d, 1, 0, ch, false);
		mem(d, 0, 1, -r, false);
		if (per_out != SIZE_MAX)
			mem(d, 0, per_out, -1, false);
		return;
	}
	if (cin_g == 1 || cout % groups != 0) {
		snprintf(rs->why, sizeof rs->why, "%s '%s' multiplies channels", node_op(n), node_label(n));
		return;
	}
	rel *x = new_rel(rs), *y = new_rel(rs);
	mem(x, 0, 0, ch, false);
	mem(x, 0, 1, ch, true);
	x->tile = (unsigned)cin_g;
	mem(y, 1, 0, ch, false);
	mem(y, 0, 1, -r, false);
	if (per_out != SIZE_MAX)
		mem(y, 0, per_out, -1, false);
	y->confine = (unsigned)(cout / groups);
}

/* MatMul and MatMulInteger, whose zero points are scalars or vary along A's rows (input 2) or B's columns (3). */
static void rels_matmul(const ctx *c, const Onnx__NodeProto *n, rels *rs)
{
	int ra = rank_of(c, in_name(n, 0)), rb = rank_of(c, in_name(n, 1));
	if (ra < 1 || rb < 1) {
		snprintf(rs->why, sizeof rs->why, "the rank of an input of %s '%s' is unknown", node_op(n), node_label(n));
		return;
	}
	int rz[2] = { 0, 0 };
	for (int k = 0; k < 2 && op_is(n, "MatMulInteger"); k++) {
		const char *zp = in_name(n, 2 + (size_t)k);
		size_t zi = zp ? find_name(c, zp) : SIZE_MAX;
		rz[k] = zi == SIZE_MAX ? 0 : c->names[zi].is_const ? c->names[zi].const_rank : rank_of(c, zp);
		if (rz[k] < 0 || rz[k] > 1 || (rz[k] == 1 && (k ? rb : ra) < 2)) {
			snprintf(rs->why, sizeof rs->why, "the zero point of %s of MatMulInteger '%s' is not a scalar or "
				 "a vector along its %s", k ? "B" : "A", node_label(n), k ? "columns" : "rows");
			return;
		}
	}
	rel *k = new_rel(rs);
	mem(k, 0, 0, -1, false);
	mem(k, 0, 1, rb == 1 ? -1 : -2, false);
	if (ra >= 2) {
		rel *mrow = new_rel(rs);
		mem(mrow, 0, 0, -2, false);
		mem(mrow, 1, 0, rb == 1 ? -1 : -2, false);
		if (rz[0] == 1)
			mem(mrow, 0, 2, -1, false);
	}
	if (rb >= 2) {
		rel *ncol = new_rel(rs);
		mem(ncol, 0, 1, -1, false);
		mem(ncol, 1, 0, -1, false);
		if (rz[1] == 1)
			mem(ncol, 0, 3, -1, false);
	}
}

/*
 * Resize and Upsample move an axis's channels only where they scale it: an
 * axis with scale 1 (or outside Resize's `axes`) passes through.  The scales
 * must be a constant fp32 tensor; sizes alone leave the axes unknown.
 */
static void rels_resize(const ctx *c, const Onnx__NodeProto *n, rels *rs)
{
	int r = rank_of(c, in_name(n, 0));
	const char *sname = in_name(n, op_is(n, "Upsample") ? 1 : 2);
	size_t si = sname ? find_name(c, sname) : SIZE_MAX;
	const nmp_tensor *t = si != SIZE_MAX && c->names[si].is_const ? c->names[si].tensor : NULL;
	const Onnx__AttributeProto *axes = nmp_node_attr(n, "axes");
	uint64_t want = axes ? axes->n_ints : (uint64_t)(r > 0 ? r : 0);
	nmp_view v = { 0 };
	nmp_error ignored = { 0 };
	if (r < 0 || !t || t->dtype != NMP_DT_FLOAT || t->numel != want ||
	    nmp_model_view(c->model, t, &v, &ignored) != NMP_OK) {
		snprintf(rs->why, sizeof rs->why, "%s '%s' has no constant scales over known axes", node_op(n),
			 node_label(n));
		return;
	}
	for (int k = -r; k < 0; k++) {
		float scale = 1.0f;
		bool listed = !axes;
		for (uint64_t j = 0; axes && j < axes->n_ints; j++) {
			int64_t a = axes->ints[j] < 0 ? axes->ints[j] : axes->ints[j] - r;
			if (a == k) {
				listed = true;
				memcpy(&scale, (const uint8_t *)v.data + 4 * j, 4);
			}
		}
		if (listed && !axes)
			memcpy(&scale, (const uint8_t *)v.data + 4 * (uint64_t)(k + r), 4);
		if (scale != 1.0f)
			continue;
		rel *x = new_rel(rs);
		mem(x, 0, 0, k, false);
		mem(x, 1, 0, k, false);
	}
	nmp_view_release(&v);
}

static void rels_gemm(const Onnx__NodeProto *n, rels *rs)
{
	bool ta = nmp_node_attr_int(n, "transA", 0) != 0, tb = nmp_node_attr_int(n, "transB", 0) != 0;
	rel *k = new_rel(rs), *mrow = new_rel(rs), *ncol = new_rel(rs);
	mem(k, 0, 0, ta ? -2 : -1, false);
	mem(k, 0, 1, tb ? -1 : -2, false);
	mem(mrow, 0, 0, ta ? -1 : -2, false);
	mem(mrow, 1, 0, -2, false);
	mem(mrow, 0, 2, -2, false);
	mem(ncol, 0, 1, tb ? -2 : -1, false);
	mem(ncol, 1, 0, -1, false);
	mem(ncol, 0, 2, -1, false);
}

static int norm_axis(int64_t axis, int r)
{
	return axis < 0 ? (int)axis : (int)axis - r;
}

static void rels_quant(const ctx *c, const Onnx__NodeProto *n, rels *rs)
{
	int r = rank_of(c, in_name(n, 0));
	const char *sn = in_name(n, 1);
	size_t si = find_name(c, sn);
	const name_info *s = si == SIZE_MAX ? NULL : &c->names[si];
	if (!s || !s->is_const || s->const_rank < 0 || r < 0) {
		snprintf(rs->why, sizeof rs->why, "%s '%s' has a scale or input of unknown shape", node_op(n), node_label(n));
		return;
	}
	uint64_t ns = 1;
	for (int d = 0; d < s->const_rank; d++)
		ns *= (uint64_t)const_dim(s, d);
	int qa = norm_axis(nmp_node_attr_int(n, "axis", 1), r);
	int64_t block = nmp_node_attr_int(n, "block_size", 0);
	for (int k = -r; k < 0; k++) {
		bool varies = ns != 1 && (k == qa || s->const_rank >= r); /* does the scale vary along k? */
		if (varies && k == qa && block > 1)
			continue; /* blocks of the quantization axis mix channels */
		rel *x = new_rel(rs);
		mem(x, 0, 0, k, false);
		mem(x, 1, 0, k, false);
		if (varies) {
			mem(x, 0, 1, s->const_rank < r ? -1 : k, false);
			mem(x, 0, 2, s->const_rank < r ? -1 : k, false);
		}
	}
}

/*
 * A vector the graph computes reshaped to a constant shape of one entry
 * besides 1s, as dynamic quantization shapes a bias it quantized [C] to
 * [1, C, 1, 1]: that entry is the vector's axis.  False when it is not so.
 */
static bool rels_reshape_vector(const ctx *c, const Onnx__NodeProto *n, rels *rs)
{
	int64_t sh[MAX_SYMS];
	int k = rank_of(c, in_name(n, 0)) == 1 ? const_ints(c, in_name(n, 1), sh, MAX_SYMS) : -1, at = -1;
	for (int j = 0; j < k; j++) {
		if (sh[j] == 1)
			continue;
		if (at >= 0 || sh[j] < -1 || (sh[j] == 0 && (j > 0 || nmp_node_attr_int(n, "allowzero", 0))))
			return false;
		at = j;
	}
	if (at < 0)
		return false;
	rel *e = new_rel(rs);
	mem(e, 0, 0, -1, false);
	mem(e, 1, 0, at - k, false);
	return true;
}

/*
 * A constant reshaped to a constant shape that only adds or drops axes of
 * size 1, as exporters shape a bias [C] to [1, C, 1, 1]: its other axes keep
 * their order.  False when that is not the case, or not known.
 */
static bool rels_reshape_units(const ctx *c, const Onnx__NodeProto *n, rels *rs)
{
	size_t x = find_name(c, in_name(n, 0));
	const nmp_tensor *t = x == SIZE_MAX ? NULL : c->names[x].tensor;
	if (!t && x != SIZE_MAX && !c->names[x].is_const)
		return rels_reshape_vector(c, n, rs);
	int64_t sh[MAX_SYMS];
	int k = t ? const_ints(c, in_name(n, 1), sh, MAX_SYMS) : -1;
	int r = t ? c->names[x].const_rank : -1;
	if (k < 0 || r < 0)
		return false;
	bool allowzero = nmp_node_attr_int(n, "allowzero", 0) != 0;
	int minus = -1;
	uint64_t known = 1;
	for (int j = 0; j < k; j++) {
		if (sh[j] == 0 && !allowzero) {
			if (j >= r)
				return false;
			sh[j] = t->dims[j];
		}
		if (sh[j] == -1 && minus < 0) {
			minus = j;
			continue;
		}
		if (sh[j] < 0 || (uint64_t)sh[j] > t->numel)
			return false;
		known *= (uint64_t)sh[j];
		if (known > t->numel)
			return false;
	}
	if (minus >= 0) {
		if (!known || t->numel % known)
			return false;
		sh[minus] = (int64_t)(t->numel / known);
	}
	int a = 0, b = 0, n_rel = rs->n;
	for (;;) {
		while (a < r && t->dims[a] == 1)
			a++;
		while (b < k && sh[b] == 1)
			b++;
		if (a == r || b == k)
			break;
		if (t->dims[a] != sh[b])
			break;
		rel *e = new_rel(rs);
		mem(e, 0, 0, a - r, false);
		mem(e, 1, 0, b - k, false);
		a++;
		b++;
	}
	if (a == r && b == k)
		return true;
	rs->n = n_rel; /* the axes regroup: nothing carries */
	return false;
}

/* The axes an Unsqueeze inserts or a Squeeze drops, as bits of `r` axes; false when not known. */
static bool unit_axes(const ctx *c, const Onnx__NodeProto *n, int r, uint64_t *bits)
{
	int64_t v[MAX_RANK];
	int k = -1;
	const Onnx__AttributeProto *a = nmp_node_attr(n, "axes");
	if (a && a->n_ints <= MAX_RANK) {
		k = (int)a->n_ints;
		memcpy(v, a->ints, (size_t)k * sizeof *v);
	} else if (!a && n->n_input > 1) {
		k = const_ints(c, in_name(n, 1), v, MAX_RANK);
	}
	if (k < 0 || r > MAX_RANK)
		return false;
	*bits = 0;
	for (int i = 0; i < k; i++) {
		int64_t x = v[i] < 0 ? v[i] + r : v[i];
		if (x < 0 || x >= r || (*bits >> x & 1))
			return false;
		*bits |= 1ull << x;
	}
	return true;
}

/* Unsqueeze and Squeeze: every other axis, in order, with the same axis of the other side. */
static void rels_unsqueeze(const ctx *c, const Onnx__NodeProto *n, int r, rels *rs)
{
	bool un = op_is(n, "Unsqueeze");
	uint64_t bits;
	int na = axes_count(c, n, 1);
	int ro = un ? r + na : r - na; /* rank of the output */
	if (na < 0 || ro < 0 || !unit_axes(c, n, un ? ro : r, &bits))
		return;
	for (int i = 0, j = 0; i < r && j < ro; i++, j++) {
		if (un)
			while (j < ro && (bits >> j & 1))
				j++;
		else
			while (i < r && (bits >> i & 1))
				i++;
		if (i == r || j == ro)
			break;
		rel *e = new_rel(rs);
		mem(e, 0, 0, i - r, false);
		mem(e, 1, 0, j - ro, false);
	}
}

/*
 * Reshape keeps an axis where the new shape repeats the sizes of every axis
 * before it (or every axis after it): the elements along it stay in their
 * order, their index unchanged.  The new shape's entries are known as sizes
 * of the input (Shape of the same tensor, or 0 when allowzero is off) or
 * not at all; otherwise a shape computed from constants moves no channels,
 * unless it only adds or drops axes of size 1 of a constant
 * (rels_reshape_units).
 */
static void rels_reshape(const ctx *c, const Onnx__NodeProto *n, int r, rels *rs)
{
	if (rels_reshape_units(c, n, rs))
		return;
	dim_sym sh[MAX_SYMS];
	size_t x = find_name(c, in_name(n, 0));
	int k = syms_of(c, in_name(n, 1), sh);
	bool allowzero = nmp_node_attr_int(n, "allowzero", 0) != 0;
	if (r < 0 || k < 0 || x == SIZE_MAX)
		return;
	int front = 0, back = 0;
	for (int j = 0; j < k && j < r; j++) {
		bool same = (sh[j].name == (int32_t)x && sh[j].axis == j) || (sh[j].known && sh[j].value == 0 && !allowzero);
		if (!same)
			break;
		front++;
	}
	for (int j = 1; j <= k && j <= r; j++) {
		if (sh[k - j].name != (int32_t)x || sh[k - j].axis != r - j)
			break;
		back++;
	}
	for (int j = 0; j < k && j < r; j++) {
		if (j >= front && k - j > back)
			continue;
		/* axis j of the output: from the front, or the same distance from the end */
		int from = j < front ? j : r - (k - j);
		if (from < 0 || from >= r)
			continue;
		rel *e = new_rel(rs);
		mem(e, 0, 0, from - r, false);
		mem(e, 1, 0, j - k, false);
	}
}

static void build_rels(const ctx *c, const Onnx__NodeProto *n, rels *rs)
{
	rs->n = 0;
	rs->lost = false;
	rs->why[0] = '\0';
	int r = rank_of(c, in_name(n, 0));
	if (!nmp_node_default_domain(n))
		return;
	if (op_in(n, k_elementwise)) {
		rel *e = new_rel(rs);
		e->any = true;
		all_io(e, n, -1);
	} else if (op_is(n, "Conv") || op_is(n, "ConvInteger")) {
		rels_conv(c, n, rs, false);
	} else if (op_is(n, "ConvTranspose")) {
		rels_conv(c, n, rs, true);
	} else if (op_is(n, "MatMul") || op_is(n, "MatMulInteger")) {
		rels_matmul(c, n, rs);
	} else if (op_is(n, "DynamicQuantizeLinear") || op_is(n, "Expand")) {
		/* DynamicQuantizeLinear: its scale and zero point are the whole tensor's, the same in any order.
		 * Expand broadcasts its input as element-wise ops do (its shape is a shape, not an operand). */
		rel *e = new_rel(rs);
		e->any = true;
		mem(e, 0, 0, -1, false);
		mem(e, 1, 0, -1, false);
	} else if (op_is(n, "Gemm")) {
		rels_gemm(n, rs);
	} else if (op_is(n, "DequantizeLinear") || op_is(n, "QuantizeLinear")) {
		rels_quant(c, n, rs);
	} else if (op_is(n, "Resize") || op_is(n, "Upsample")) {
		rels_resize(c, n, rs);
	} else if (r < 0) {
		snprintf(rs->why, sizeof rs->why, "the rank of the input of %s '%s' is unknown", node_op(n), node_label(n));
	} else if (op_is(n, "BatchNormalization") || op_is(n, "InstanceNormalization")) {
		for (int k = -r; k < 0; k++) {
			bool channel = k == 1 - r;
			if (!channel && (op_is(n, "InstanceNormalization") || n->n_output > 1))
				continue; /* normalized over, or running statistics */
			rel *x = new_rel(rs);
			mem(x, 0, 0, k, false);
			mem(x, 1, 0, k, false);
			for (size_t i = 1; channel && i < n->n_input; i++)
				mem(x, 0, i, -1, false);
			for (size_t i = 1; channel && i < n->n_output; i++)
				mem(x, 1, i, -1, false);
		}
	} else if (op_is(n, "LayerNormalization") || op_is(n, "RMSNormalization")) {
		int na = norm_axis(nmp_node_attr_int(n, "axis", -1), r);
		for (int k = -r; k < 0; k++) {
			rel *x = new_rel(rs);
			mem(x, 0, 0, k, false);
			for (size_t i = 1; i < n->n_input; i++)
				mem(x, 0, i, k, false);
			mem(x, 1, 0, k, false);
			for (size_t i = 1; k < na && i < n->n_output; i++)
				mem(x, 1, i, k, false); /* mean and 1/std vary along unnormalized axes only */
		}
	} else if (op_in(n, k_pools)) {
		if (n->n_output > 1 && n->output[1] && n->output[1][0]) {
			snprintf(rs->why, sizeof rs->why, "%s '%s' returns indices", node_op(n), node_label(n));
			return;
		}
		for (int k = -r; k <= 1 - r; k++) {
			rel *x = new_rel(rs);
			mem(x, 0, 0, k, false);
			mem(x, 1, 0, k, false);
		}
	} else if (op_is(n, "Transpose")) {
		const Onnx__AttributeProto *p = nmp_node_attr(n, "perm");
		for (int a = 0; a < r; a++) {
			int from = p && p->n_ints == (size_t)r ? (int)p->ints[a] : r - 1 - a;
			rel *x = new_rel(rs);
			mem(x, 1, 0, a - r, false);
			mem(x, 0, 0, from - r, false);
		}
	} else if (op_is(n, "Concat") || op_is(n, "Split")) {
		int ax = norm_axis(nmp_node_attr_int(n, "axis", 0), r);
		for (int k = -r; k < 0; k++) {
			if (k == ax)
				continue;
			rel *x = new_rel(rs);
			if (op_is(n, "Concat"))
				all_io(x, n, k);
			else
				for (size_t i = 0; i < n->n_output; i++)
					mem(x, 1, i, k, false);
			mem(x, 0, 0, k, false);
		}
	} else if (is_reduction(n)) {
		/* The axes it keeps pass through; over an axis it reduces, every order gives the same result. */
		uint64_t red;
		if (!reduce_axes(c, n, r, &red)) {
			snprintf(rs->why, sizeof rs->why, "the axes that %s '%s' reduces are not known", node_op(n),
				 node_label(n));
			return;
		}
		bool keep = nmp_node_attr_int(n, "keepdims", 1) != 0;
		int ro = keep ? r : r - __builtin_popcountll(red), j = 0;
		for (int k = -r; k < 0; k++) {
			bool gone = red >> (-k - 1) & 1;
			rel *x = new_rel(rs);
			mem(x, 0, 0, k, false);
			if (!gone)
				mem(x, 1, 0, keep ? k : j - ro, false);
			j += !gone;
		}
	} else if (op_is(n, "Slice")) {
		/* The axes it leaves whole pass through; a run it takes of an axis it cuts is a part (seg_kind). */
		uint64_t cut;
		int64_t st[MAX_RANK], en[MAX_RANK], sp[MAX_RANK];
		if (!slice_axes(c, n, r, &cut, st, en, sp)) {
			snprintf(rs->why, sizeof rs->why, "the axes that Slice '%s' cuts are not known", node_label(n));
			return;
		}
		for (int k = -r; k < 0; k++) {
			if (cut >> (-k - 1) & 1)
				continue;
			rel *x = new_rel(rs);
			mem(x, 0, 0, k, false);
			mem(x, 1, 0, k, false);
		}
		snprintf(rs->why, sizeof rs->why, "Slice '%s' takes channels by a step other than 1 or by bounds it computes",
			 node_label(n));
	} else if (op_is(n, "Reshape")) {
		rels_reshape(c, n, r, rs);
	} else if ((op_is(n, "Unsqueeze") || op_is(n, "Squeeze")) && n->n_output == 1) {
		rels_unsqueeze(c, n, r, rs);
	} else if (op_is(n, "Shape") || op_is(n, "Size")) {
		/* They read sizes only: any axis may be reordered, and nothing they give moves. */
		rel *e = new_rel(rs);
		e->any = true;
		mem(e, 0, 0, -1, false);
	} else if (op_is(n, "Flatten")) {
		/* Flattening [N, C, 1, ...] at axis 1 keeps the channels: after global pooling. */
		size_t pi = find_name(c, in_name(n, 0));
		long p = pi == SIZE_MAX ? -1 : c->names[pi].producer;
		bool pooled = p >= 0 && op_in(c->g->node[p], k_global_pools);
		if (nmp_node_attr_int(n, "axis", 1) == 1) {
			rel *b = new_rel(rs);
			mem(b, 0, 0, -r, false);
			mem(b, 1, 0, -2, false);
			if (pooled) {
				rel *x = new_rel(rs);
				mem(x, 0, 0, 1 - r, false);
				mem(x, 1, 0, -1, false);
			}
		}
	}
}

/* ---- growing a group -------------------------------------------------------------------- */

/* Records why gr cannot be permuted, unless it has a reason already: the first one found stands. */
static void block_group(nmp_chan_group *gr, const char *fmt, const char *a, const char *b)
{
	if (!gr->blocked[0])
		snprintf(gr->blocked, sizeof gr->blocked, fmt, a, b ? b : "");
}

static void block(ctx *c, size_t g, const char *fmt, const char *a, const char *b)
{
	block_group(&c->out->groups[g], fmt, a, b);
}

/* The runs two confinements leave channels in: those of the gcd; 0 is none. */
static unsigned confine_join(unsigned a, unsigned b)
{
	if (!a || !b)
		return a + b;
	while (b) {
		unsigned t = a % b;
		a = b;
		b = t;
	}
	return a;
}

/* Slot keys: (name index << 8) | -axis; stored as key + 1 so that 0 marks an empty cell. */
static size_t slot_hash(uint64_t key, size_t cap)
{
	return (size_t)(key * 0x9e3779b97f4a7c15ull >> 20) & (cap - 1);
}

static size_t slot_find(const ctx *c, uint64_t key)
{
	if (!c->slot_cap)
		return SIZE_MAX;
	size_t h = slot_hash(key, c->slot_cap);
	while (c->slot_keys[h]) {
		if (c->slot_keys[h] == key + 1)
			return c->slot_vals[h];
		h = (h + 1) & (c->slot_cap - 1);
	}
	return SIZE_MAX;
}

static bool slot_insert(ctx *c, uint64_t key, size_t val)
{
	if (2 * (c->n_slots + 1) > c->slot_cap) {
		size_t cap = c->slot_cap ? c->slot_cap * 2 : 1024;
		uint64_t *k = calloc(cap, sizeof *k);
		size_t *v = malloc(cap * sizeof *v);
		if (!k || !v) {
			free(k);
			free(v);
			c->nomem = true;
			return false;
		}
		for (size_t i = 0; i < c->slot_cap; i++) {
			if (!c->slot_keys[i])
				continue;
			size_t h = slot_hash(c->slot_keys[i] - 1, cap);
			while (k[h])
				h = (h + 1) & (cap - 1);
			k[h] = c->slot_keys[i];
			v[h] = c->slot_vals[i];
		}
		free(c->slot_keys);
		free(c->slot_vals);
		c->slot_keys = k;
		c->slot_vals = v;
		c->slot_cap = cap;
	}
	size_t h = slot_hash(key, c->slot_cap);
	while (c->slot_keys[h])
		h = (h + 1) & (c->slot_cap - 1);
	c->slot_keys[h] = key + 1;
	c->slot_vals[h] = val;
	return true;
}

/* Adds (name, neg) to group g; a constant's broadcast axis (absent or of size 1) is not a slot. */
static void link_slot(ctx *c, size_t g, size_t name, int neg, bool is_short)
{
	const name_info *ni = &c->names[name];
	if (ni->is_const) {
		int pos = ni->const_rank + neg;
		if (ni->const_rank < 0) {
			block(c, g, "constant '%s' has no shape%s", ni->name, NULL);
			return;
		}
		if (pos < 0 || const_dim(ni, pos) == 1)
			return;
	}
	uint64_t key = (uint64_t)name << 8 | (uint64_t)(-neg);
	size_t s = slot_find(c, key);
	if (s != SIZE_MAX) {
		if (c->slots[s].group != g)
			block(c, g, "'%s' is shared with another channel group%s", ni->name, NULL);
		else if (c->slots[s].is_short != is_short)
			block(c, g, "'%s' is read both as one group of a grouped Conv and whole%s", ni->name, NULL);
		return;
	}
	slot *sl = grow(c->slots, &c->cap_slots, c->n_slots + 1, sizeof *sl, &c->nomem);
	if (!sl)
		return;
	c->slots = sl;
	s = c->n_slots;
	if (!slot_insert(c, key, s))
		return;
	c->n_slots++;
	c->slots[s] = (slot){ .name = (uint32_t)name, .neg = neg, .is_short = is_short, .group = g };
}

static void constrain(ctx *c, size_t g, const rel *r, const char *node)
{
	nmp_chan_group *gr = &c->out->groups[g];
	if (r->tile) {
		if (gr->tile && gr->tile != r->tile)
			block(c, g, "grouped convolutions of different group sizes read it (at '%s')%s", node, NULL);
		gr->tile = r->tile;
	}
	gr->confine = confine_join(gr->confine, r->confine);
}

static size_t new_group(ctx *c, const char *label);
static void expand(ctx *c, size_t s);

/*
 * How node n divides channels along axis neg (counted from the end): a
 * Concat or Split along it (SEG_PARTS); a Slice that takes one run of it, a
 * step of 1 between constant bounds (SEG_SLICE, the bounds in *start and
 * *end); or a Reshape of a tensor the graph computes to a shape that ends in
 * a constant K, as [B, S, C] becomes [B * S, C], which keeps the last axis
 * when that has K channels too (SEG_KEEP, *end = K).
 */
static int seg_kind(const ctx *c, const Onnx__NodeProto *n, int neg, int64_t *start, int64_t *end)
{
	int r = rank_of(c, in_name(n, 0));
	if (!nmp_node_default_domain(n) || r <= 0 || neg < -r)
		return SEG_NONE;
	if (op_is(n, "Concat") || op_is(n, "Split"))
		return norm_axis(nmp_node_attr_int(n, "axis", 0), r) == neg ? SEG_PARTS : SEG_NONE;
	if (op_is(n, "Reshape")) {
		dim_sym sh[MAX_SYMS];
		size_t x = find_name(c, in_name(n, 0));
		int k = syms_of(c, in_name(n, 1), sh);
		if (neg != -1 || x == SIZE_MAX || c->names[x].is_const || k < 1 || !sh[k - 1].known ||
		    sh[k - 1].value <= 1)
			return SEG_NONE;
		*start = 0;
		*end = sh[k - 1].value;
		return SEG_KEEP;
	}
	uint64_t cut;
	int64_t st[MAX_RANK], en[MAX_RANK], sp[MAX_RANK];
	if (!op_is(n, "Slice") || !slice_axes(c, n, r, &cut, st, en, sp) || !(cut >> (-neg - 1) & 1) ||
	    sp[-neg - 1] != 1)
		return SEG_NONE;
	*start = st[-neg - 1];
	*end = en[-neg - 1];
	return SEG_SLICE;
}

/* Is `name` one of the tensors whose channels node n divides or joins (not Split's sizes, Slice's bounds, a shape)? */
static bool seg_side(const Onnx__NodeProto *n, const char *name)
{
	if (!op_is(n, "Concat") && in_name(n, 0) && strcmp(in_name(n, 0), name) == 0)
		return true; /* a Split's, Slice's or Reshape's whole */
	char **io = op_is(n, "Concat") ? n->input : n->output;
	size_t count = op_is(n, "Concat") ? n->n_input : n->n_output;
	for (size_t k = 0; k < count; k++)
		if (io[k] && strcmp(io[k], name) == 0)
			return true;
	return op_is(n, "Concat") && n->n_output && n->output[0] && strcmp(n->output[0], name) == 0;
}

/*
 * The slot of (name, neg), the first of a component of its own when it has
 * none yet; SIZE_MAX when it can have none (no name, or a constant of one
 * channel along neg, which no order moves).
 */
static size_t seg_slot(ctx *c, const char *name, int neg)
{
	size_t ni = find_name(c, name);
	if (ni == SIZE_MAX)
		return SIZE_MAX;
	uint64_t key = (uint64_t)ni << 8 | (uint64_t)(-neg);
	size_t s = slot_find(c, key);
	if (s != SIZE_MAX)
		return s;
	size_t g = new_group(c, name);
	if (g == SIZE_MAX)
		return SIZE_MAX;
	link_slot(c, g, ni, neg, false);
	s = slot_find(c, key);
	if (s == SIZE_MAX)
		c->out->n_groups--; /* nothing of it moves: no component */
	return s;
}

/*
 * Records a Concat, Split, Slice or Reshape that slot s reaches along the
 * axis it divides (seg_kind: kind, start, end); seed_segs gives its sides
 * slots.
 */
static void cross_seg(ctx *c, size_t s, uint32_t ni, int kind, int64_t start, int64_t end)
{
	const Onnx__NodeProto *n = c->g->node[ni];
	if (c->slots[s].is_short) {
		block(c, c->slots[s].group, "%s '%s' divides channels that a grouped Conv reads one group at a time",
		      node_op(n), node_label(n));
		return;
	}
	if (!c->seg_seen && !(c->seg_seen = calloc(c->g->n_node, 1))) {
		c->nomem = true;
		return;
	}
	if (c->seg_seen[ni])
		return;
	c->seg_seen[ni] = 1;
	seg *e = grow(c->segs, &c->cap_segs, c->n_segs + 1, sizeof *e, &c->nomem);
	if (!e)
		return;
	c->segs = e;
	size_t count = op_is(n, "Concat") ? n->n_input : kind != SEG_PARTS ? 1 : n->n_output;
	e = &c->segs[c->n_segs];
	*e = (seg){ .node = ni, .neg = c->slots[s].neg, .whole = SIZE_MAX, .n_parts = count, .kind = kind,
		    .start = start, .end = end,
		    .part = malloc((count ? count : 1) * sizeof *e->part), .len = calloc(count ? count : 1, sizeof *e->len) };
	if (!e->part || !e->len) {
		free(e->part);
		free(e->len);
		c->nomem = true;
		return;
	}
	c->n_segs++;
}

/*
 * Gives both sides of every Concat, Split and Slice recorded a slot: a side in no
 * component yet starts one, grown whole before the next side is looked at,
 * so that no component is started inside another's reach.
 */
static void seed_segs(ctx *c)
{
	for (size_t i = 0; i < c->n_segs && !c->nomem; i++) { /* seeding may record more */
		const Onnx__NodeProto *n = c->g->node[c->segs[i].node];
		bool concat = op_is(n, "Concat");
		for (size_t k = 0; k <= c->segs[i].n_parts && !c->nomem; k++) {
			seg *e = &c->segs[i];
			const char *name = k == e->n_parts ? (concat ? (n->n_output ? n->output[0] : NULL) : in_name(n, 0))
							 : (concat ? in_name(n, k) : n->output[k]);
			size_t sl = seg_slot(c, name, e->neg);
			while (c->expanded < c->n_slots && !c->nomem)
				expand(c, c->expanded++);
			e = &c->segs[i]; /* expanding may have moved the list */
			if (k == e->n_parts) {
				e->whole = sl;
				continue;
			}
			e->part[k] = sl;
			size_t pi = sl == SIZE_MAX ? find_name(c, name) : SIZE_MAX;
			if (pi != SIZE_MAX && c->names[pi].is_const && c->names[pi].const_rank + e->neg >= 0)
				e->len[k] = 1; /* a constant's one channel */
		}
	}
}

/* Relates slot s to what node `ni` ties it to. */
static void visit(ctx *c, size_t s, uint32_t ni)
{
	const slot sl = c->slots[s];
	const Onnx__NodeProto *n = c->g->node[ni];
	const char *name = c->names[sl.name].name;
	const char *label = node_label(n);
	int64_t start = 0, end = 0;
	int kind = seg_kind(c, n, sl.neg, &start, &end);
	if (kind != SEG_NONE && seg_side(n, name)) {
		cross_seg(c, s, ni, kind, start, end);
		return;
	}
	rels rs;
	build_rels(c, n, &rs);
	bool lost = rs.lost;
	for (int i = 0; i < rs.n; i++)
		lost |= rs.r[i].lost;
	if (lost) {
		/* Following this op would move some of its tensors and not others. */
		char what[200];
		snprintf(what, sizeof what, "%s '%s' has more than %d axes or more inputs than the permutation follows",
			 node_op(n), label, MAX_RANK);
		block(c, sl.group, "%s%s", what, NULL);
		return;
	}
	if (op_is(n, "QuantizeLinear") ||
	    (op_is(n, "DequantizeLinear") && !(find_name(c, in_name(n, 0)) != SIZE_MAX &&
					       c->names[find_name(c, in_name(n, 0))].is_const)))
		c->out->groups[sl.group].crosses_quant = true;
	for (int side = 0; side < 2; side++) {
		size_t count = side ? n->n_output : n->n_input;
		char **io = side ? n->output : n->input;
		for (size_t k = 0; k < count; k++) {
			if (!io[k] || strcmp(io[k], name) != 0)
				continue;
			const rel *hit = NULL;
			for (int i = 0; i < rs.n && !hit; i++)
				for (int j = 0; j < rs.r[i].n; j++) {
					const member *m = &rs.r[i].m[j];
					if (m->out == side && (size_t)m->index == k && (rs.r[i].any || m->neg == sl.neg) &&
					    (!rs.r[i].tile || m->is_short == sl.is_short)) {
						hit = &rs.r[i];
						break;
					}
				}
			if (!hit) {
				char what[200];
				if (rs.why[0])
					snprintf(what, sizeof what, "%s", rs.why);
				else
					snprintf(what, sizeof what, "%s '%s' mixes or reorders the channels of '%s'",
						 node_op(n), label, name);
				block(c, sl.group, "%s%s", what, NULL);
				continue;
			}
			constrain(c, sl.group, hit, label);
			for (int j = 0; j < hit->n; j++) {
				const member *m = &hit->m[j];
				const char *other = m->out ? (m->index < (int)n->n_output ? n->output[m->index] : NULL)
							    : in_name(n, (size_t)m->index);
				size_t oi = find_name(c, other);
				int on = hit->any ? sl.neg : m->neg;
				if (oi == SIZE_MAX || (hit->any && ((c->names[oi].rank >= 0 && c->names[oi].rank < -on) ||
								    (c->names[oi].unit >> (-on - 1) & 1))))
					continue; /* an operand of lower rank, or of size 1 there, is broadcast along the axis */
				/* a grouped Conv says which side holds one group; elsewhere it passes through */
				link_slot(c, sl.group, oi, on, hit->tile ? m->is_short : sl.is_short);
			}
		}
	}
}

static void expand(ctx *c, size_t s)
{
	const slot sl = c->slots[s];
	const name_info *ni = &c->names[sl.name];
	if (ni->graph_input)
		block(c, sl.group, c->parent ? "'%s' is an input of %s" : "'%s' is a graph input%s", ni->name,
		      c->parent ? c->where : NULL);
	if (ni->graph_output)
		block(c, sl.group, c->parent ? "'%s' is an output of %s" : "'%s' is a graph output%s", ni->name,
		      c->parent ? c->where : NULL);
	if (ni->is_const && !ni->tensor)
		block(c, sl.group, "Constant '%s' holds an attribute list, not a tensor%s", ni->name, NULL);
	if (!ni->is_const && ni->producer < 0 && !ni->graph_input)
		block(c, sl.group, outer_name(c, ni->name) ? "'%s' comes from outside %s" : "'%s' has no producer in %s",
		      ni->name, c->where);
	if (ni->tensor && (nmp_dtype_bits(ni->tensor->dtype) % 8 != 0 || ni->tensor->dtype == NMP_DT_STRING))
		block(c, sl.group, "tensor '%s' is of type %s, which is not permuted", ni->name,
		      nmp_dtype_name(ni->tensor->dtype));
	if (!ni->is_const && ni->producer >= 0)
		visit(c, s, (uint32_t)ni->producer);
	for (size_t r = 0; r < ni->n_refs; r++) {
		const Onnx__NodeProto *n = c->g->node[ni->refs[r].node];
		if (ni->refs[r].input < 0) {
			block(c, sl.group, "'%s' is read inside a subgraph of '%s'", ni->name,
			      node_label(n));
			continue;
		}
		/* a node reading the name at several inputs (listed together) relates them all in one visit */
		if (r == 0 || ni->refs[r - 1].node != ni->refs[r].node)
			visit(c, s, ni->refs[r].node);
	}
}

static size_t new_group(ctx *c, const char *label)
{
	nmp_channels *o = c->out;
	nmp_chan_group *g = grow(o->groups, c->cap_groups, o->n_groups + 1, sizeof *g, &c->nomem);
	if (!g)
		return SIZE_MAX;
	o->groups = g;
	size_t i = o->n_groups++;
	memset(&o->groups[i], 0, sizeof o->groups[i]);
	snprintf(o->groups[i].label, sizeof o->groups[i].label, "%s", label);
	return i;
}

/* ---- sizing, searching and recording a group --------------------------------------------- */

static uint64_t slot_len(const ctx *c, const slot *s)
{
	const name_info *ni = &c->names[s->name];
	if (!ni->is_const || ni->const_rank + s->neg < 0)
		return 0;
	return (uint64_t)const_dim(ni, ni->const_rank + s->neg);
}

/* Each group's channel count from its constants, in one pass over the slots. */
static void size_groups(ctx *c)
{
	for (size_t i = 0; i < c->n_slots; i++) {
		const slot *s = &c->slots[i];
		nmp_chan_group *gr = &c->out->groups[s->group];
		uint64_t len = slot_len(c, s);
		if (!len || gr->blocked[0])
			continue;
		uint64_t want = s->is_short ? gr->tile : gr->channels;
		if (!want && !s->is_short)
			want = gr->channels = len;
		if (want != len) {
			char a[32];
			snprintf(a, sizeof a, "%llu", (unsigned long long)want);
			block(c, s->group, "'%s' does not have the group's %s channels", c->names[s->name].name, a);
		}
	}
}

/* ---- channels a Concat, Split or Slice divides ----------------------------------------- */

typedef struct cutset {
	uint64_t *v;                /* sorted, each strictly inside (0, channels) */
	size_t n, cap;
} cutset;

/* Adds cut x; true if it is new. */
static bool cut_add(cutset *cs, uint64_t x, bool *nomem)
{
	size_t lo = nmp_lower_bound_u64(cs->v, cs->n, x);
	if (lo < cs->n && cs->v[lo] == x)
		return false;
	uint64_t *v = grow(cs->v, &cs->cap, cs->n + 1, sizeof *v, nomem);
	if (!v)
		return false;
	cs->v = v;
	memmove(v + lo + 1, v + lo, (cs->n - lo) * sizeof *v);
	v[lo] = x;
	cs->n++;
	return true;
}

/* Where run j of a component with cuts cs begins. */
static uint64_t run_start(const cutset *cs, size_t j)
{
	return j ? cs->v[j - 1] : 0;
}

static size_t comp_of(const ctx *c, size_t slot)
{
	return c->slots[slot].group;
}

/*
 * Fills in what one Concat, Split or Slice tells of channel counts: a
 * Split's sizes (its input or attribute, or equal parts), the whole as the
 * parts' sum, one unknown part as what the others leave, a Slice's part
 * from its bounds over the whole.  True if a component learnt its count.
 */
static bool seg_counts(ctx *c, seg *e)
{
	const Onnx__NodeProto *n = c->g->node[e->node];
	nmp_chan_group *gs = c->out->groups;
	uint64_t whole = e->whole == SIZE_MAX ? 0 : gs[comp_of(c, e->whole)].channels;
	for (size_t k = 0; k < e->n_parts; k++)
		if (e->part[k] != SIZE_MAX)
			e->len[k] = gs[comp_of(c, e->part[k])].channels;
	if (e->kind != SEG_PARTS) {
		nmp_chan_group *p = e->part[0] == SIZE_MAX ? NULL : &gs[comp_of(c, e->part[0])];
		uint64_t len = p ? p->channels : 0;
		if (e->kind == SEG_KEEP) { /* the part has the shape's count; the whole is not told (it must say so itself) */
			e->pre = 0;
			if (!p || len)
				return false;
			e->len[0] = p->channels = (uint64_t)e->end;
			return true;
		}
		if (!whole && len && e->start >= 0 && e->end > e->start && (uint64_t)(e->end - e->start) > len) {
			/* a part shorter than its bounds ends where the whole does: the whole is start + len */
			gs[comp_of(c, e->whole)].channels = (uint64_t)e->start + len;
			return true;
		}
		int64_t count = whole ? slice_count((int64_t)whole, e->start, e->end, 1) : 0;
		e->pre = whole ? (uint64_t)slice_first((int64_t)whole, e->start, 1) : 0;
		if (!p || len || count <= 0)
			return false;
		e->len[0] = p->channels = (uint64_t)count;
		return true;
	}
	if (op_is(n, "Split")) {
		int64_t size[MAX_MEMBERS];
		int ns = -1;
		const Onnx__AttributeProto *a = nmp_node_attr(n, "split");
		if (a && a->n_ints <= MAX_MEMBERS) {
			ns = (int)a->n_ints;
			for (int k = 0; k < ns; k++)
				size[k] = a->ints[k];
		} else if (!a && in_name(n, 1)) {
			ns = const_ints(c, in_name(n, 1), size, MAX_MEMBERS);
		} else if (!a && whole && e->n_parts <= MAX_MEMBERS) { /* equal parts, the last one smaller */
			uint64_t chunk = (whole + e->n_parts - 1) / e->n_parts;
			ns = (int)e->n_parts;
			for (int k = 0; k < ns; k++)
				size[k] = (uint64_t)k * chunk < whole ? (int64_t)(whole - (uint64_t)k * chunk < chunk
										? whole - (uint64_t)k * chunk : chunk) : 0;
		}
		for (int k = 0; ns == (int)e->n_parts && k < ns; k++)
			if (!e->len[k] && size[k] > 0)
				e->len[k] = (uint64_t)size[k];
	}
	uint64_t sum = 0;
	size_t unknown = 0, at = 0;
	for (size_t k = 0; k < e->n_parts; k++) {
		sum += e->len[k];
		if (!e->len[k]) {
			unknown++;
			at = k;
		}
	}
	if (!whole && !unknown)
		whole = sum;
	else if (whole && unknown == 1 && sum < whole)
		e->len[at] = whole - sum;
	bool learnt = false;
	for (size_t k = 0; k < e->n_parts; k++) {
		nmp_chan_group *p = e->part[k] == SIZE_MAX ? NULL : &gs[comp_of(c, e->part[k])];
		if (p && !p->channels && e->len[k]) {
			p->channels = e->len[k];
			learnt = true;
		}
	}
	if (e->whole != SIZE_MAX && !gs[comp_of(c, e->whole)].channels && whole) {
		gs[comp_of(c, e->whole)].channels = whole;
		learnt = true;
	}
	return learnt;
}

/*
 * Every count known, adding up, and no component on both sides; but a Slice
 * may take every channel of its own component (a part of the whole's
 * component has the whole's count, which its bounds must then give).
 */
static bool seg_sound(const ctx *c, const seg *e)
{
	if (e->whole == SIZE_MAX)
		return false;
	size_t w = comp_of(c, e->whole);
	uint64_t whole = c->out->groups[w].channels;
	if (e->kind == SEG_KEEP)
		return whole == (uint64_t)e->end && e->part[0] != SIZE_MAX && e->len[0] == whole;
	if (e->kind == SEG_SLICE)
		return whole && e->part[0] != SIZE_MAX && e->len[0] &&
		       (int64_t)e->len[0] == slice_count((int64_t)whole, e->start, e->end, 1);
	uint64_t sum = 0;
	for (size_t k = 0; k < e->n_parts; k++) {
		if (!e->len[k] || (e->part[k] != SIZE_MAX && comp_of(c, e->part[k]) == w))
			return false;
		sum += e->len[k];
	}
	return sum == c->out->groups[w].channels;
}

static size_t uf_find(size_t *parent, size_t a)
{
	while (parent[a] != a) {
		parent[a] = parent[parent[a]];
		a = parent[a];
	}
	return a;
}

static void uf_join(size_t *parent, size_t a, size_t b)
{
	a = uf_find(parent, a);
	b = uf_find(parent, b);
	if (a != b) /* the earlier component's run stands for the group: its label names it */
		parent[a > b ? a : b] = a < b ? a : b;
}

/*
 * Takes a run of `len` channels of component `from` into group `into`, whose
 * count is the longest run joined: a shorter run is one tile of it, the
 * last axis of a Reshape that splits the channels into runs or merges them
 * back, so that the same order repeats in every tile.
 */
static void join_tile(nmp_chan_group *into, const nmp_chan_group *from, uint64_t len)
{
	if (len == into->channels)
		return;
	char a[24], b[24];
	if (!len || into->channels % len) {
		snprintf(a, sizeof a, "%llu", (unsigned long long)into->channels);
		snprintf(b, sizeof b, "%llu", (unsigned long long)len);
		block_group(into, "a Concat, Split or Slice joins runs of %s and %s channels", a, b);
	} else if (from->tile) {
		block_group(into, "a Reshape splits the channels of '%s' that a grouped Conv reads one group at a time%s",
			    from->label, NULL);
	} else if (into->tile && into->tile != len) { /* the shorter run first */
		snprintf(a, sizeof a, "%llu", (unsigned long long)(into->tile < len ? into->tile : len));
		snprintf(b, sizeof b, "%llu", (unsigned long long)(into->tile < len ? len : into->tile));
		char what[256];
		snprintf(what, sizeof what, "Reshapes split the channels of '%.120s' into runs of %s and of %s", into->label,
			 a, b);
		block_group(into, "%s%s", what, NULL);
	} else {
		into->tile = (unsigned)len;
	}
}

/* Folds component group `from` (a run of `len` channels of it) into group `into`. */
static void merge_group(nmp_chan_group *into, const nmp_chan_group *from, uint64_t len)
{
	if (from->blocked[0])
		block_group(into, "%s%s", from->blocked, NULL);
	join_tile(into, from, len);
	if (from->tile && into->tile && from->tile != into->tile)
		block_group(into, "grouped convolutions of different group sizes read '%s'%s", into->label, NULL);
	into->tile = into->tile ? into->tile : from->tile;
	into->confine = confine_join(into->confine, from->confine);
	into->crosses_quant |= from->crosses_quant;
}

/*
 * Turns the components grown so far (c->out->groups from first_group on)
 * into groups: cuts every component where a Concat, Split or Slice it meets
 * along the channels has a part begin or end, until the cuts agree on both
 * sides; makes each run between cuts one unit; joins the units each node
 * equates; and gives each slot one entry per run, with its group and offset.
 */
static void divide_groups(ctx *c)
{
	nmp_channels *o = c->out;
	const size_t first = c->first_group, nc = o->n_groups - first;
	cutset *cuts = calloc(nc ? nc : 1, sizeof *cuts);
	size_t *base = malloc((nc + 1) * sizeof *base), *parent = NULL, *unit_group = NULL;
	uint64_t *ulen = NULL, *top = NULL; /* per unit: its count; at a set's root, the longest */
	nmp_chan_group *made = NULL;
	slot *runs = NULL;
	if (!cuts || !base)
		goto nomem;
	bool more = true;
	while (more) { /* counts: each pass learns at least one, or ends */
		more = false;
		for (size_t i = 0; i < c->n_segs; i++)
			more |= seg_counts(c, &c->segs[i]);
	}
	for (size_t i = 0; i < c->n_segs; i++) {
		seg *e = &c->segs[i];
		e->ok = seg_sound(c, e);
		const Onnx__NodeProto *n = c->g->node[e->node];
		/*
		 * A Reshape whose input's last axis has L channels and output's K: when one divides the other it
		 * splits the channels into runs ([B, S, H * D] to [B, S, H, D]) or merges runs, and the last axis
		 * of the shorter side holds one run of them (the channels modulo its count); otherwise it regroups.
		 */
		uint64_t whole = e->kind == SEG_KEEP && e->whole != SIZE_MAX ? o->groups[comp_of(c, e->whole)].channels : 0;
		bool regroups = whole != 0;
		e->tiles = !e->ok && whole && e->part[0] != SIZE_MAX && e->len[0] == (uint64_t)e->end &&
			   (whole % e->len[0] == 0 || e->len[0] % whole == 0);
		for (size_t k = 0; !e->ok && !e->tiles && k <= e->n_parts; k++) {
			size_t sl = k < e->n_parts ? e->part[k] : e->whole;
			if (sl != SIZE_MAX && regroups)
				block(c, comp_of(c, sl), "Reshape '%s' mixes or reorders the channels of '%s'",
				      node_label(n), n->output[0]);
			else if (sl != SIZE_MAX)
				block(c, comp_of(c, sl), "the channel counts of %s '%s' are unknown or do not add up",
				      node_op(n), node_label(n));
		}
	}
	more = true;
	while (more && !c->nomem) { /* cuts: each pass adds at least one, and each is below its count */
		more = false;
		for (size_t i = 0; i < c->n_segs; i++) {
			const seg *e = &c->segs[i];
			if (!e->ok)
				continue;
			cutset *w = &cuts[comp_of(c, e->whole) - first];
			uint64_t at = e->pre;
			for (size_t k = 0; k < e->n_parts; k++) {
				if (at)
					more |= cut_add(w, at, &c->nomem);
				if (e->part[k] != SIZE_MAX) {
					cutset *p = &cuts[comp_of(c, e->part[k]) - first];
					for (size_t j = 0; j < p->n; j++)
						more |= cut_add(w, at + p->v[j], &c->nomem);
					for (size_t j = 0; j < w->n; j++)
						if (w->v[j] > at && w->v[j] < at + e->len[k])
							more |= cut_add(p, w->v[j] - at, &c->nomem);
				}
				at += e->len[k];
			}
			if (at < o->groups[comp_of(c, e->whole)].channels) /* a Slice ends before the whole does */
				more |= cut_add(w, at, &c->nomem);
		}
	}
	if (c->nomem)
		goto nomem;
	for (size_t i = 0; i < c->n_segs; i++) {
		const seg *e = &c->segs[i];
		if (!e->tiles)
			continue;
		size_t w = comp_of(c, e->whole), p = comp_of(c, e->part[0]);
		if (cuts[w - first].n || cuts[p - first].n)
			for (int k = 0; k < 2; k++)
				block(c, k ? p : w, "Reshape '%s' splits or merges channels that a Concat, Split or Slice divides%s",
				      node_label(c->g->node[e->node]), NULL);
	}
	base[0] = 0;
	for (size_t w = 0; w < nc; w++) {
		nmp_chan_group *gr = &o->groups[first + w];
		for (size_t j = 0; j < cuts[w].n && !gr->blocked[0]; j++)
			if (gr->tile || (gr->confine && cuts[w].v[j] % gr->confine))
				block(c, first + w, "a Concat, Split or Slice divides the channels of '%s' inside a grouped Conv's group%s",
				      gr->label, NULL);
		base[w + 1] = base[w] + cuts[w].n + 1;
	}
	const size_t n_units = base[nc];
	parent = malloc((n_units ? n_units : 1) * sizeof *parent);
	unit_group = malloc((n_units ? n_units : 1) * sizeof *unit_group);
	made = calloc(n_units ? n_units : 1, sizeof *made);
	ulen = malloc((n_units ? n_units : 1) * sizeof *ulen);
	top = malloc((n_units ? n_units : 1) * sizeof *top);
	if (!parent || !unit_group || !made || !ulen || !top)
		goto nomem;
	for (size_t u = 0; u < n_units; u++)
		parent[u] = u;
	for (size_t i = 0; i < c->n_segs; i++) {
		const seg *e = &c->segs[i];
		if (!e->ok)
			continue;
		size_t w = comp_of(c, e->whole) - first, j = 0;
		uint64_t at = e->pre;
		for (size_t k = 0; k < e->n_parts; k++) {
			while (j < cuts[w].n && run_start(&cuts[w], j + 1) <= at)
				j++; /* the whole's run that begins where part k does */
			if (e->part[k] != SIZE_MAX) {
				size_t p = comp_of(c, e->part[k]) - first;
				for (size_t q = 0; q <= cuts[p].n && j + q <= cuts[w].n; q++)
					uf_join(parent, base[w] + j + q, base[p] + q);
			}
			at += e->len[k];
		}
	}
	for (size_t i = 0; i < c->n_segs; i++) { /* a split or merged axis joins its runs' group, one tile of it */
		const seg *e = &c->segs[i];
		if (!e->tiles)
			continue;
		size_t w = comp_of(c, e->whole) - first, p = comp_of(c, e->part[0]) - first;
		if (!cuts[w].n && !cuts[p].n)
			uf_join(parent, base[w], base[p]);
	}
	for (size_t w = 0; w < nc; w++) { /* each unit's count, and its set's longest at the root */
		const nmp_chan_group *comp = &o->groups[first + w];
		for (size_t j = 0; j <= cuts[w].n; j++) {
			uint64_t end = j < cuts[w].n ? cuts[w].v[j] : comp->channels;
			ulen[base[w] + j] = comp->channels ? end - run_start(&cuts[w], j) : 0;
		}
	}
	for (size_t u = 0; u < n_units; u++)
		top[u] = 0;
	for (size_t u = 0; u < n_units; u++) {
		size_t root = uf_find(parent, u);
		top[root] = ulen[u] > top[root] ? ulen[u] : top[root];
	}
	size_t n_made = 0;
	for (size_t u = 0; u < n_units; u++)
		unit_group[u] = SIZE_MAX;
	for (size_t w = 0; w < nc; w++) {
		const nmp_chan_group *comp = &o->groups[first + w];
		for (size_t j = 0; j <= cuts[w].n; j++) {
			uint64_t len = ulen[base[w] + j];
			size_t root = uf_find(parent, base[w] + j);
			if (unit_group[root] == SIZE_MAX) { /* roots come first: the least unit of each set */
				unit_group[root] = n_made;
				made[n_made] = *comp;
				made[n_made].channels = top[root];
				join_tile(&made[n_made], comp, len);
				if (cuts[w].n) /* the run it stands for: "name[start:end]" */
					snprintf(made[n_made].label, sizeof made[n_made].label, "%.120s[%llu:%llu]",
						 comp->label, (unsigned long long)run_start(&cuts[w], j),
						 (unsigned long long)(run_start(&cuts[w], j) + len));
				n_made++;
			} else {
				merge_group(&made[unit_group[root]], comp, len);
			}
			unit_group[base[w] + j] = unit_group[root];
		}
	}
	nmp_chan_group *gs = grow(o->groups, c->cap_groups, first + n_made, sizeof *gs, &c->nomem);
	size_t n_runs = 0;
	for (size_t i = 0; i < c->n_slots; i++)
		n_runs += cuts[comp_of(c, i) - first].n + 1;
	runs = malloc((n_runs ? n_runs : 1) * sizeof *runs);
	if ((!gs && first + n_made) || !runs)
		goto nomem;
	o->groups = gs;
	if (n_made)
		memcpy(gs + first, made, n_made * sizeof *made);
	n_runs = 0;
	for (size_t i = 0; i < c->n_slots; i++) {
		size_t w = comp_of(c, i) - first;
		for (size_t j = 0; j <= cuts[w].n; j++) {
			size_t u = base[w] + j;
			runs[n_runs] = c->slots[i];
			runs[n_runs].group = first + unit_group[u];
			runs[n_runs].is_short |= ulen[u] < top[uf_find(parent, u)];
			runs[n_runs++].off = run_start(&cuts[w], j);
		}
	}
	o->n_groups = first + n_made;
	free(c->slots);
	c->slots = runs;
	c->n_slots = c->cap_slots = n_runs;
	runs = NULL;
	free(c->slot_keys); /* the runs are listed, not looked up */
	free(c->slot_vals);
	c->slot_keys = NULL;
	c->slot_vals = NULL;
	c->slot_cap = 0;
	goto out;
nomem:
	c->nomem = true;
out:
	for (size_t w = 0; cuts && w < nc; w++)
		free(cuts[w].v);
	free(cuts);
	free(base);
	free(parent);
	free(unit_group);
	free(ulen);
	free(top);
	free(made);
	free(runs);
}

/* Blocks each group whose channel count is unknown, or that its grouped convolutions do not divide. */
static void check_groups(ctx *c)
{
	for (size_t g = c->first_group; g < c->out->n_groups; g++) {
		const nmp_chan_group *gr = &c->out->groups[g];
		if (gr->blocked[0])
			continue;
		if (!gr->channels)
			block(c, g, "the number of channels of '%s' is unknown%s", gr->label, NULL);
		else if (gr->channels > UINT32_MAX || (gr->tile && gr->channels % gr->tile) ||
			 (gr->confine && gr->channels % gr->confine))
			block(c, g, "grouped convolutions do not divide the channels of '%s'%s", gr->label, NULL);
	}
}

/* Magnitudes of a candidate's group-axis channels [off, off + width) as rows x width. */
static nmp_status weight_matrix(const ctx *c, const nmp_choice *ch, uint64_t off, uint64_t width, float *out,
				nmp_error *err)
{
	const nmp_candidate *cand = ch->cand;
	const nmp_tensor *t = cand->tensor;
	nmp_view v = { 0 }, sv = { 0 }, zv = { 0 };
	nmp_quant_params qp;
	float *flat = malloc((t->numel ? t->numel : 1) * sizeof *flat);
	if (!flat)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	nmp_status s = nmp_model_view(c->model, t, &v, err);
	if (s == NMP_OK && cand->quant.present)
		s = nmp_quant_view(c->model, cand, &qp, &sv, &zv, err);
	if (s == NMP_OK) {
		nmp_mask_tensor mt = { .name = cand->name, .data = (void *)v.data, .dtype = t->dtype,
				       .rank = (int)t->n_dims, .dims = t->dims, .axis = cand->axis,
				       .out_axis = cand->out_axis, .quant = cand->quant.present ? &qp : NULL };
		s = nmp_cpu_magnitudes(&mt, flat, err);
	}
	if (s == NMP_OK) {
		uint64_t len = (uint64_t)t->dims[cand->axis], inner = 1;
		for (size_t d = (size_t)cand->axis + 1; d < t->n_dims; d++)
			inner *= (uint64_t)t->dims[d];
		uint64_t outer = len ? t->numel / len / inner : 0;
		for (uint64_t o = 0; o < outer; o++)
			for (uint64_t l = off; l < off + width; l++)
				for (uint64_t i = 0; i < inner; i++)
					out[(o * inner + i) * width + l - off] = flat[(o * len + l) * inner + i];
	}
	nmp_view_release(&v);
	nmp_view_release(&sv);
	nmp_view_release(&zv);
	free(flat);
	return s;
}

/* Does a choice's weight belong in a channel group: an eligible tensor with a group axis. */
static bool grouped(const nmp_choice *ch)
{
	return ch->eligible && ch->cand->tensor && ch->cand->axis >= 0;
}

/* The name of a choice's weight in c's graph, or SIZE_MAX (another graph's, or shadowed). */
static size_t choice_name(const ctx *c, const nmp_choice *ch)
{
	const nmp_candidate *cand = ch->cand;
	if (!grouped(ch))
		return SIZE_MAX;
	size_t ni = find_name(c, cand->name);
	return ni != SIZE_MAX && c->names[ni].tensor == cand->tensor ? ni : SIZE_MAX;
}

/* The group axis of a choice's weight, counted from the end. */
static int choice_neg(const nmp_choice *ch)
{
	return ch->cand->axis - (int)ch->cand->tensor->n_dims;
}

/* The slot of a choice's weight along its group axis, or SIZE_MAX. */
static size_t choice_slot(const ctx *c, const nmp_choice *ch)
{
	size_t ni = choice_name(c, ch);
	return ni == SIZE_MAX ? SIZE_MAX : slot_find(c, (uint64_t)ni << 8 | (uint64_t)(-choice_neg(ch)));
}

/*
 * The parts of the eligible weights of c's graph: each run of channels of a
 * weight's group axis that one group holds, in channel order.
 */
static void record_parts(ctx *c)
{
	nmp_channels *o = c->out;
	const nmp_selection *sel = c->plan->sel;
	for (size_t i = 0; i < c->n_slots && !c->nomem; i++) {
		const slot *s = &c->slots[i];
		const name_info *ni = &c->names[s->name];
		uint32_t at = ni->tensor && ni->deleg_sub < 0 ? c->choice_at[ni->tensor - c->model->tensors] : 0;
		if (!at || choice_name(c, &sel->choices[at - 1]) != s->name || s->neg != choice_neg(&sel->choices[at - 1]))
			continue;
		nmp_chan_part *pt = grow(o->parts, c->cap_parts, o->n_parts + 1, sizeof *pt, &c->nomem);
		if (!pt)
			return;
		o->parts = pt;
		const nmp_chan_group *gr = &o->groups[s->group];
		bool counted = false; /* a weight counts once in a group, however many of its runs it holds */
		for (size_t k = o->n_parts; k-- > 0 && o->parts[k].choice == at - 1 && !counted;)
			counted = o->parts[k].group == s->group;
		o->parts[o->n_parts++] = (nmp_chan_part){ .choice = at - 1, .group = s->group, .offset = s->off,
							  .length = s->is_short ? gr->tile : gr->channels,
							  .kept_identity = -1, .kept_permuted = -1 };
		if (o->group_of[at - 1] < 0)
			o->group_of[at - 1] = (long)s->group;
		if (!counted)
			o->groups[s->group].n_weights++;
	}
}

/* The rows a part adds to its group's matrix of `cols` columns (a whole-channel run folds into tiles). */
static uint64_t part_rows(const nmp_chan_part *pt, const nmp_choice *ch, unsigned cols)
{
	const nmp_tensor *t = ch->cand->tensor;
	return t->numel / (uint64_t)t->dims[ch->cand->axis] * (pt->length / cols);
}

/* One group's search; reads the model and writes only group g's entries and parts (groups run in parallel). */
static nmp_status search_group(const ctx *c, size_t g, uint64_t seed, int threads, nmp_error *err)
{
	nmp_chan_group *gr = &c->out->groups[g];
	const nmp_selection *sel = c->plan->sel;
	nmp_chan_part *parts = c->out->parts;
	const unsigned cols = gr->tile ? gr->tile : (unsigned)gr->channels;
	uint64_t rows = 0;
	for (size_t i = 0; i < c->out->n_parts; i++) {
		if (parts[i].group != g)
			continue;
		const nmp_choice *ch = &sel->choices[parts[i].choice];
		const nmp_pattern *p = &ch->pattern;
		if (!p->structured || p->unit != NMP_UNIT_ELEMENT) {
			snprintf(gr->skipped, sizeof gr->skipped, "weight '%s' has pattern %s; the search is for element-wise N:M",
				 ch->cand->name, p->text);
			return NMP_OK;
		}
		if (gr->m && (p->n != gr->n || p->m != gr->m)) {
			snprintf(gr->skipped, sizeof gr->skipped, "its weights have different patterns");
			return NMP_OK;
		}
		gr->n = p->n;
		gr->m = p->m;
		if (parts[i].offset % p->m) {
			snprintf(gr->skipped, sizeof gr->skipped, "channels %llu to %llu of '%s' do not begin a group of %u",
				 (unsigned long long)parts[i].offset,
				 (unsigned long long)(parts[i].offset + parts[i].length - 1), ch->cand->name, p->m);
			return NMP_OK;
		}
		rows += part_rows(&parts[i], ch, cols);
	}
	if (!gr->m)
		return NMP_OK;
	unsigned blk = gr->confine && gr->confine < cols ? gr->confine : 0;
	if (cols % gr->m || (blk && cols % blk)) {
		snprintf(gr->skipped, sizeof gr->skipped, "%u channels do not fall into groups of %u", cols, gr->m);
		return NMP_OK;
	}
	if (gr->tile && gr->confine && gr->confine % gr->tile && gr->tile % gr->confine) {
		snprintf(gr->skipped, sizeof gr->skipped, "grouped convolutions of sizes %u and %u overlap", gr->tile,
			 gr->confine);
		return NMP_OK;
	}
	float *mag = malloc((rows ? rows : 1) * cols * sizeof *mag);
	uint32_t *p = malloc(cols * sizeof *p);
	if (!mag || !p) {
		free(mag);
		free(p);
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	}
	uint64_t at = 0;
	nmp_status s = NMP_OK;
	for (size_t i = 0; i < c->out->n_parts && s == NMP_OK; i++) {
		if (parts[i].group != g)
			continue;
		/* a whole-channel weight folds into rows of one tile: its groups of M stay whole */
		s = weight_matrix(c, &sel->choices[parts[i].choice], parts[i].offset, parts[i].length, mag + at, err);
		at += part_rows(&parts[i], &sel->choices[parts[i].choice], cols) * cols;
	}
	if (s == NMP_OK) {
		double t0 = nmp_now();
		nmp_perm_opts po = { .n = gr->n, .m = gr->m, .block = blk, .seed = seed + g, .effort = c->effort,
				     .threads = threads };
		if (nmp_perm_search(mag, rows, cols, &po, p, &gr->search) != 0)
			s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		gr->seconds = nmp_now() - t0;
	}
	if (s == NMP_OK && gr->search.kept > gr->search.kept_identity) {
		gr->perm = malloc(gr->channels * sizeof *gr->perm);
		if (!gr->perm) {
			s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		} else {
			for (uint64_t k = 0; k < gr->channels; k++)
				gr->perm[k] = (uint32_t)(k / cols * cols + p[k % cols]);
			if (gr->tile) {
				gr->short_perm = p;
				p = NULL;
			}
		}
	}
	/* each part's kept magnitude, without and with the order found */
	const uint32_t *order = gr->perm ? (gr->tile ? gr->short_perm : gr->perm) : NULL;
	uint32_t *id = s == NMP_OK ? malloc(cols * sizeof *id) : NULL;
	if (s == NMP_OK && !id)
		s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	for (unsigned k = 0; id && k < cols; k++)
		id[k] = k;
	at = 0;
	for (size_t i = 0; i < c->out->n_parts && s == NMP_OK; i++) {
		if (parts[i].group != g)
			continue;
		uint64_t r = part_rows(&parts[i], &sel->choices[parts[i].choice], cols);
		parts[i].kept_identity = nmp_perm_kept(mag + at, r, cols, gr->n, gr->m, id);
		parts[i].kept_permuted = order ? nmp_perm_kept(mag + at, r, cols, gr->n, gr->m, order)
					       : parts[i].kept_identity;
		at += r * cols;
	}
	free(id);
	free(mag);
	free(p);
	return s;
}

/* order[offset + k] = offset + group g's order[k] over the run of `len` channels it moves, if it has one. */
static void compose_run(const nmp_chan_group *g, uint64_t len, uint64_t offset, uint32_t *order)
{
	const uint32_t *perm = len == g->channels ? g->perm : g->short_perm; /* else the run holds one tile */
	for (uint64_t k = 0; perm && k < len; k++)
		order[offset + k] = (uint32_t)(offset + perm[k]);
}

/*
 * Each weight's kept magnitude without and with the orders found: its one
 * part's, or, when groups share its channels, the whole weight's with every
 * run in its group's order.  A weight none of whose groups was searched keeps -1.
 */
static nmp_status weigh_choices(const ctx *c, nmp_error *err)
{
	nmp_channels *o = c->out;
	const nmp_chan_part *parts = o->parts;
	for (size_t i = 0, j; i < o->n_parts; i = j) {
		size_t ch = parts[i].choice;
		bool searched = false;
		for (j = i; j < o->n_parts && parts[j].choice == ch; j++)
			searched |= parts[j].kept_identity >= 0;
		if (!searched)
			continue;
		if (j - i == 1) {
			o->kept_identity[ch] = parts[i].kept_identity;
			o->kept_permuted[ch] = parts[i].kept_permuted;
			continue;
		}
		const nmp_choice *choice = &c->plan->sel->choices[ch];
		const nmp_tensor *t = choice->cand->tensor;
		uint64_t len = (uint64_t)t->dims[choice->cand->axis];
		float *mag = malloc((t->numel ? t->numel : 1) * sizeof *mag);
		uint32_t *id = malloc(len * sizeof *id), *order = malloc(len * sizeof *order);
		nmp_status s = mag && id && order ? NMP_OK : nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		for (uint64_t k = 0; s == NMP_OK && k < len; k++)
			id[k] = order[k] = (uint32_t)k;
		for (size_t q = i; s == NMP_OK && q < j; q++)
			compose_run(&o->groups[parts[q].group], parts[q].length, parts[q].offset, order);
		if (s == NMP_OK)
			s = weight_matrix(c, choice, 0, len, mag, err);
		if (s == NMP_OK) {
			unsigned n = choice->pattern.n, m = choice->pattern.m;
			o->kept_identity[ch] = nmp_perm_kept(mag, t->numel / len, len, n, m, id);
			o->kept_permuted[ch] = nmp_perm_kept(mag, t->numel / len, len, n, m, order);
		}
		free(mag);
		free(id);
		free(order);
		if (s != NMP_OK)
			return s;
	}
	return NMP_OK;
}

typedef struct search_run {
	const ctx *c;
	uint64_t seed;
	int inner;                  /* workers for each group's own search */
} search_run;

static nmp_status search_item(void *arg, size_t g, nmp_error *err)
{
	const search_run *r = arg;
	if (r->c->out->groups[g].blocked[0])
		return NMP_OK;
	return search_group(r->c, g, r->seed, r->inner, err);
}

/*
 * Every group's search, the groups spread over `threads` workers: a group's
 * result depends on its own seed only, so the output is the same for any
 * number of threads.
 */
static nmp_status search_groups(const ctx *c, uint64_t seed, int threads, nmp_error *err)
{
	if (threads <= 0) {
		long online = sysconf(_SC_NPROCESSORS_ONLN);
		threads = online > 0 ? (int)online : 1;
	}
	size_t open = 0;
	for (size_t g = 0; g < c->out->n_groups; g++)
		open += !c->out->groups[g].blocked[0];
	/* few groups: the rest of the workers go into each group's search */
	search_run r = { .c = c, .seed = seed, .inner = open && (size_t)threads > open ? threads / (int)open : 1 };
	return nmp_parallel(threads, c->out->n_groups, search_item, &r, err);
}

/*
 * Drops the groups that no eligible weight reads (a run of a Concat that
 * only ineligible weights read): there is nothing to search or report.
 */
static void drop_weightless(nmp_channels *o, size_t n_choices)
{
	size_t *to = malloc((o->n_groups ? o->n_groups : 1) * sizeof *to);
	if (!to)
		return; /* kept: they do no harm */
	size_t kept = 0;
	for (size_t g = 0; g < o->n_groups; g++) {
		to[g] = o->groups[g].n_weights ? kept : SIZE_MAX;
		if (o->groups[g].n_weights)
			o->groups[kept++] = o->groups[g];
	}
	o->n_groups = kept;
	for (size_t i = 0; i < o->n_parts; i++)
		o->parts[i].group = to[o->parts[i].group];
	size_t n = 0;
	for (size_t i = 0; i < o->n_edits; i++)
		if (to[o->edits[i].group] != SIZE_MAX) {
			o->edits[n] = o->edits[i];
			o->edits[n++].group = to[o->edits[i].group];
		}
	o->n_edits = n;
	for (size_t i = 0; i < n_choices; i++)
		if (o->group_of[i] >= 0)
			o->group_of[i] = (long)to[o->group_of[i]];
	free(to);
}

static int part_cmp(const void *a, const void *b)
{
	const nmp_chan_part *x = a, *y = b;
	if (x->choice != y->choice)
		return x->choice < y->choice ? -1 : 1;
	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int edit_cmp(const void *a, const void *b)
{
	const nmp_chan_edit *x = a, *y = b;
	if (x->tensor != y->tensor)
		return x->tensor < y->tensor ? -1 : 1;
	if (x->axis != y->axis)
		return x->axis - y->axis;
	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* The edits of every slot of g that holds a tensor, in groups that may move; which do is known after the search. */
static void record_edits(ctx *c)
{
	nmp_channels *o = c->out;
	for (size_t i = 0; i < c->n_slots; i++) {
		const slot *s = &c->slots[i];
		const name_info *ni = &c->names[s->name];
		if (o->groups[s->group].blocked[0] || !ni->tensor)
			continue;
		nmp_chan_edit *e = grow(o->edits, c->cap_edits, o->n_edits + 1, sizeof *e, &c->nomem);
		if (!e)
			return;
		o->edits = e;
		o->edits[o->n_edits++] = (nmp_chan_edit){ .tensor = (size_t)(ni->tensor - c->model->tensors),
							  .axis = ni->const_rank + s->neg, .group = s->group,
							  .short_axis = s->is_short, .offset = s->off };
	}
}

/* Keeps the edits of the groups the search gave an order, sorted by tensor. */
static void keep_permuted_edits(nmp_channels *o)
{
	size_t kept = 0;
	for (size_t i = 0; i < o->n_edits; i++)
		if (o->groups[o->edits[i].group].perm)
			o->edits[kept++] = o->edits[i];
	o->n_edits = kept;
	if (kept)
		qsort(o->edits, kept, sizeof *o->edits, edit_cmp);
	for (size_t i = 0, t0 = 0; i < kept; i++) { /* a tensor counts once in each group that moves it */
		if (o->edits[i].tensor != o->edits[t0].tensor)
			t0 = i;
		bool seen = false;
		for (size_t k = t0; k < i && !seen; k++)
			seen = o->edits[k].group == o->edits[i].group;
		o->groups[o->edits[i].group].n_tensors += !seen;
	}
}

static void ctx_free(ctx *c)
{
	for (size_t i = 0; i < c->n_names; i++) {
		free(c->names[i].refs);
		free(c->names[i].syms);
	}
	free(c->names);
	free(c->name_map);
	free(c->slots);
	free(c->slot_keys);
	free(c->slot_vals);
	for (size_t i = 0; i < c->n_segs; i++) {
		free(c->segs[i].part);
		free(c->segs[i].len);
	}
	free(c->segs);
	free(c->seg_seen);
}

static nmp_status analyse_subgraphs(const ctx *c);

static int size_cmp(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	return x < y ? -1 : x > y;
}

/* The eligible choices whose weight is a constant of g, in selection order; NULL when out of memory. */
static size_t *graph_choices(const ctx *c, size_t *n)
{
	size_t *mine = malloc((c->n_names ? c->n_names : 1) * sizeof *mine);
	if (!mine)
		return NULL;
	*n = 0;
	for (size_t i = 0; i < c->n_names; i++) {
		const nmp_tensor *t = c->names[i].deleg_sub < 0 ? c->names[i].tensor : NULL; /* not a subgraph's */
		uint32_t at = t ? c->choice_at[t - c->model->tensors] : 0;
		if (at)
			mine[(*n)++] = at - 1;
	}
	qsort(mine, *n, sizeof *mine, size_cmp);
	return mine;
}

/*
 * One graph's channel groups: every eligible weight whose tensor the graph
 * defines starts one, unless it is in one already.  A subgraph (an If
 * branch, a Loop or Scan body) is analysed on its own, as a graph whose
 * inputs, outputs and the names it reads from the graphs around it all
 * block; the enclosing graph in turn blocks a group that a subgraph reads.
 */
static nmp_status analyse_graph(ctx *c)
{
	const nmp_selection *sel = c->plan->sel;
	nmp_channels *o = c->out;
	nmp_status s = build_index(c);
	if (s != NMP_OK)
		return s;
	infer_ranks(c);
	infer_units(c);
	c->first_group = o->n_groups;
	size_t n_mine = 0, *mine = graph_choices(c, &n_mine);
	if (!mine)
		return nmp_error_set(c->err, NMP_ERR_NOMEM, "out of memory");
	for (size_t k = 0; k < n_mine && !c->nomem; k++) {
		const nmp_choice *ch = &sel->choices[mine[k]];
		size_t ni = choice_name(c, ch);
		if (ni == SIZE_MAX || choice_slot(c, ch) != SIZE_MAX)
			continue; /* its name here is another tensor's, or it is in a group already */
		size_t g = new_group(c, ch->cand->name);
		if (g == SIZE_MAX)
			break;
		/* the weight of a grouped Conv holds one group of its input channels */
		bool is_short = false;
		for (size_t u = 0; u < ch->cand->n_uses; u++)
			is_short |= strcmp(ch->cand->uses[u].op, "Conv") == 0 &&
				    nmp_node_attr_int(ch->cand->uses[u].node, "group", 1) > 1;
		link_slot(c, g, ni, choice_neg(ch), is_short);
		while (c->expanded < c->n_slots && !c->nomem)
			expand(c, c->expanded++);
	}
	free(mine);
	seed_segs(c);
	size_groups(c);
	if (!c->nomem)
		divide_groups(c);
	check_groups(c);
	record_parts(c);
	record_edits(c);
	if (c->nomem)
		return nmp_error_set(c->err, NMP_ERR_NOMEM, "out of memory");
	return analyse_subgraphs(c);
}

static nmp_status analyse_subgraph(const ctx *c, const Onnx__GraphProto *g, const char *attr, uint32_t owner,
				   int32_t k)
{
	ctx sub = { .plan = c->plan, .effort = c->effort, .model = c->model, .g = g, .parent = c, .owner = owner,
		    .sub = k, .out = c->out, .cap_groups = c->cap_groups, .cap_edits = c->cap_edits, .cap_parts = c->cap_parts,
		    .choice_at = c->choice_at, .err = c->err };
	snprintf(sub.where, sizeof sub.where, "the %s of '%s'", attr ? attr : "subgraph",
		 node_label(c->g->node[owner]));
	nmp_status s = analyse_graph(&sub);
	ctx_free(&sub);
	return s;
}

static nmp_status analyse_subgraphs(const ctx *c)
{
	nmp_status s = NMP_OK;
	const Onnx__GraphProto *g;
	const char *attr;
	for (size_t i = 0; i < c->g->n_node && s == NMP_OK; i++)
		for (int32_t k = 0; s == NMP_OK && (g = nmp_node_subgraph(c->g->node[i], k, &attr)) != NULL; k++)
			s = analyse_subgraph(c, g, attr, (uint32_t)i, k);
	return s;
}

nmp_status nmp_channels_plan(const nmp_plan *plan, uint64_t seed, unsigned effort, int threads, nmp_channels **out,
			     nmp_error *err)
{
	*out = NULL;
	const nmp_selection *sel = plan->sel;
	nmp_channels *o = calloc(1, sizeof *o);
	size_t cap_groups = 0, cap_edits = 0, cap_parts = 0;
	uint32_t *choice_at = NULL; /* per model tensor: its grouped choice + 1, 0 none */
	ctx c = { .plan = plan, .effort = effort, .model = plan->model, .g = plan->model->proto->graph,
		  .where = "the main graph", .out = o, .cap_groups = &cap_groups, .cap_edits = &cap_edits,
		  .cap_parts = &cap_parts, .err = err };
	if (!o)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	o->group_of = malloc((sel->n + 1) * sizeof *o->group_of);
	o->kept_identity = calloc(sel->n + 1, sizeof *o->kept_identity);
	o->kept_permuted = calloc(sel->n + 1, sizeof *o->kept_permuted);
	nmp_status s = NMP_OK;
	if (!o->group_of || !o->kept_identity || !o->kept_permuted || !c.g) {
		s = c.g ? nmp_error_set(err, NMP_ERR_NOMEM, "out of memory") : NMP_OK;
		goto out;
	}
	choice_at = calloc(plan->model->n_tensors ? plan->model->n_tensors : 1, sizeof *choice_at);
	if (!choice_at) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < sel->n; i++) {
		o->group_of[i] = -1;
		o->kept_identity[i] = o->kept_permuted[i] = -1; /* until a search measures them */
		if (grouped(&sel->choices[i]))
			choice_at[sel->choices[i].cand->tensor - plan->model->tensors] = (uint32_t)(i + 1);
	}
	c.choice_at = choice_at;
	if ((s = analyse_graph(&c)) != NMP_OK)
		goto out;
	/* every eligible weight is in the report: one no graph's analysis reached says so */
	for (size_t i = 0; i < sel->n; i++) {
		if (!grouped(&sel->choices[i]) || o->group_of[i] >= 0)
			continue;
		size_t g = new_group(&c, sel->choices[i].cand->name);
		if (g == SIZE_MAX) {
			s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
			goto out;
		}
		block(&c, g, "'%s' is read where the permutation does not follow it%s", sel->choices[i].cand->name, NULL);
		o->group_of[i] = (long)g;
		o->groups[g].n_weights = 1;
	}
	drop_weightless(o, sel->n);
	if (o->n_parts)
		qsort(o->parts, o->n_parts, sizeof *o->parts, part_cmp);
	if ((s = search_groups(&c, seed, threads, err)) != NMP_OK || (s = weigh_choices(&c, err)) != NMP_OK)
		goto out;
	keep_permuted_edits(o);
out:
	free(choice_at);
	ctx_free(&c);
	if (s != NMP_OK)
		nmp_channels_free(&o);
	*out = o;
	return s;
}

void nmp_channels_free(nmp_channels **cp)
{
	nmp_channels *c = *cp;
	if (!c)
		return;
	for (size_t g = 0; g < c->n_groups; g++) {
		free(c->groups[g].perm);
		free(c->groups[g].short_perm);
	}
	free(c->groups);
	free(c->edits);
	free(c->parts);
	free(c->group_of);
	free(c->kept_identity);
	free(c->kept_permuted);
	free(c);
	*cp = NULL;
}

/* ---- the rewrite ------------------------------------------------------------------------ */

/* The first of n records (stride bytes apart) whose size_t field at `field` is not below key; they are sorted by it. */
static size_t lower_bound(const void *records, size_t n, size_t stride, size_t field, size_t key)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2, v;
		memcpy(&v, (const char *)records + mid * stride + field, sizeof v);
		if (v < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static size_t first_edit(const nmp_channels *c, size_t tensor)
{
	return lower_bound(c->edits, c->n_edits, sizeof *c->edits, offsetof(nmp_chan_edit, tensor), tensor);
}

const nmp_chan_part *nmp_channels_parts(const nmp_channels *c, size_t choice, size_t *n)
{
	size_t lo = lower_bound(c->parts, c->n_parts, sizeof *c->parts, offsetof(nmp_chan_part, choice), choice);
	for (*n = 0; lo + *n < c->n_parts && c->parts[lo + *n].choice == choice;)
		(*n)++;
	return *n ? &c->parts[lo] : NULL;
}

bool nmp_channels_touches(const nmp_channels *c, size_t tensor)
{
	size_t i = first_edit(c, tensor);
	return i < c->n_edits && c->edits[i].tensor == tensor;
}

/* dst = src gathered along one axis: dst[o, j, i] = src[o, perm[j], i]. */
static void gather(uint8_t *dst, const uint8_t *src, uint64_t outer, uint64_t len, uint64_t inner_bytes,
		   const uint32_t *perm)
{
	for (uint64_t o = 0; o < outer; o++) {
		const uint8_t *s = src + o * len * inner_bytes;
		uint8_t *d = dst + o * len * inner_bytes;
		switch (inner_bytes) { /* the last axis: one element at a time */
		case 1:
			for (uint64_t j = 0; j < len; j++)
				d[j] = s[perm[j]];
			break;
		case 2:
			for (uint64_t j = 0; j < len; j++)
				memcpy(d + 2 * j, s + 2 * (uint64_t)perm[j], 2);
			break;
		case 4:
			for (uint64_t j = 0; j < len; j++)
				memcpy(d + 4 * j, s + 4 * (uint64_t)perm[j], 4);
			break;
		default:
			for (uint64_t j = 0; j < len; j++)
				memcpy(d + j * inner_bytes, s + (uint64_t)perm[j] * inner_bytes, inner_bytes);
		}
	}
}

nmp_status nmp_channels_apply(const nmp_channels *c, const nmp_model *m, size_t tensor, void *data,
			      const void *src, uint64_t length, nmp_error *err)
{
	const nmp_tensor *t = &m->tensors[tensor];
	size_t first = first_edit(c, tensor), last = first;
	while (last < c->n_edits && c->edits[last].tensor == tensor)
		last++;
	if (first == last)
		return NMP_OK;
	unsigned esz = nmp_dtype_bits(t->dtype) / 8;
	if (length != t->numel * esz || esz == 0)
		return nmp_error_set(err, NMP_ERR_MODEL, "%s: tensor '%s': payload of %llu bytes, expected %llu",
				     m->path, t->name, (unsigned long long)length,
				     (unsigned long long)(t->numel * esz));
	if (length == 0)
		return NMP_OK; /* an empty tensor has nothing to reorder (and no payload to read) */
	bool several = c->edits[first].axis != c->edits[last - 1].axis;
	uint8_t *tmp = NULL;
	uint32_t *order = NULL;
	if (!src || several) {
		tmp = malloc(length ? length : 1);
		if (!tmp)
			return nmp_error_set(err, NMP_ERR_NOMEM, "%s: tensor '%s': out of memory", m->path, t->name);
	}
	if (!src) {
		memcpy(tmp, data, length);
		src = tmp;
	}
	for (size_t e = first, f; e < last; e = f) {
		const nmp_chan_edit *ed = &c->edits[e];
		const nmp_chan_group *g = &c->groups[ed->group];
		uint64_t len = (uint64_t)t->dims[ed->axis], inner = esz;
		for (size_t d = (size_t)ed->axis + 1; d < t->n_dims; d++)
			inner *= (uint64_t)t->dims[d];
		for (f = e; f < last && c->edits[f].axis == ed->axis;)
			f++;
		const uint32_t *perm = ed->short_axis ? g->short_perm : g->perm;
		if (f - e > 1 || ed->offset || (!ed->short_axis && g->channels != len)) {
			/* runs of the axis in several groups' orders, or one run of it: one order for the axis */
			uint32_t *o = realloc(order, len * sizeof *order);
			if (!o) {
				free(tmp);
				free(order);
				return nmp_error_set(err, NMP_ERR_NOMEM, "%s: tensor '%s': out of memory", m->path,
						     t->name);
			}
			order = o;
			for (uint64_t k = 0; k < len; k++)
				order[k] = (uint32_t)k;
			for (size_t r = e; r < f; r++) {
				const nmp_chan_group *rg = &c->groups[c->edits[r].group];
				uint64_t run = c->edits[r].short_axis ? rg->tile : rg->channels;
				if (c->edits[r].offset + run > len) {
					free(tmp);
					free(order);
					return nmp_error_set(err, NMP_ERR_MODEL, "%s: tensor '%s': a permuted run ends past axis %d",
							     m->path, t->name, ed->axis);
				}
				compose_run(rg, run, c->edits[r].offset, order);
			}
			perm = order;
		}
		if (e > first) {
			memcpy(tmp, data, length);
			src = tmp;
		}
		gather(data, src, len ? t->numel * esz / (len * inner) : 0, len, inner, perm);
	}
	free(tmp);
	free(order);
	return NMP_OK;
}

nmp_status nmp_channels_view(const nmp_channels *c, const nmp_model *m, const nmp_tensor *t, nmp_view *v,
			     nmp_error *err)
{
	if (!t || !c || !nmp_channels_touches(c, (size_t)(t - m->tensors)))
		return NMP_OK;
	void *buf = malloc(v->length ? v->length : 1);
	if (!buf)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	nmp_status s = nmp_channels_apply(c, m, (size_t)(t - m->tensors), buf, v->data, v->length, err);
	uint64_t length = v->length;
	nmp_view_release(v);
	*v = (nmp_view){ .data = buf, .length = length, .owned = buf };
	return s;
}
