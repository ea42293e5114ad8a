#include "graph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- scopes: name -> what produces it ------------------------------------ */

enum { K_INIT = 1, K_INPUT, K_NODE };

typedef struct entry {
	const char *name;
	union {
		const nmp_tensor *init;        /* K_INIT */
		const Onnx__NodeProto *node;   /* K_NODE */
	};
	/*
	 * For the output of an Identity or Cast: the first name past the run of
	 * them it starts, and that name's scope, once a trace has crossed it
	 * (NULL before).  A chain read at every link is then walked once.
	 */
	const char *skip_name;
	const struct scope *skip_scope;
	int32_t out_index;
	uint8_t kind;
	bool is_const;
	bool graph_input;
} entry;

/*
 * The names a graph defines, in a dense array, found through an open-addressed
 * table of 32-bit indices (entry + 1; 0 is empty) at most 3/4 full: a graph of
 * millions of initializers costs about 45 bytes a name.
 */
typedef struct scope {
	const struct scope *parent;
	const Onnx__NodeProto *owner;  /* the node whose attribute holds this graph; NULL for the main graph */
	const Onnx__GraphProto *graph;
	entry *entries;
	size_t n_entries;
	uint32_t *table;
	size_t cap;                  /* power of two */
	uint64_t *may_hold_weight;   /* a bit per table cell: some name hashed there may lead to a weight */
} scope;

/* The table cell that holds `name`, or the empty cell where it would go. */
static uint32_t *cell(const scope *sc, const char *name)
{
	size_t h = (size_t)nmp_str_hash(name) & (sc->cap - 1);
	while (sc->table[h] && strcmp(sc->entries[sc->table[h] - 1].name, name) != 0)
		h = (h + 1) & (sc->cap - 1);
	return &sc->table[h];
}

/*
 * Could `name` lead to a weight in `sc`?  False only when no scope from `sc`
 * out defines an initializer, a constant, a graph input or a Loop or Scan
 * output whose name hashes where it does: most activations are passed over
 * without a probe of the table.
 */
static bool may_hold_weight(const scope *sc, const char *name)
{
	uint64_t h = nmp_str_hash(name);
	for (; sc; sc = sc->parent) {
		size_t b = (size_t)h & (sc->cap - 1);
		if (sc->may_hold_weight[b / 64] >> (b % 64) & 1)
			return true;
	}
	return false;
}

static void mark_may_hold_weight(scope *sc, const char *name)
{
	size_t b = (size_t)nmp_str_hash(name) & (sc->cap - 1);
	sc->may_hold_weight[b / 64] |= (uint64_t)1 << (b % 64);
}

static entry *find(const scope *sc, const char *name)
{
	uint32_t i = *cell(sc, name);
	return i ? &sc->entries[i - 1] : NULL;
}

static const entry *lookup(const scope *sc, const char *name, const scope **where)
{
	for (; sc; sc = sc->parent) {
		const entry *e = find(sc, name);
		if (e) {
			if (where)
				*where = sc;
			return e;
		}
	}
	return NULL;
}

bool nmp_node_default_domain(const Onnx__NodeProto *n)
{
	return !n->domain || !n->domain[0] || strcmp(n->domain, "ai.onnx") == 0;
}

static const char *op_of(const Onnx__NodeProto *n)
{
	return n->op_type ? n->op_type : "";
}

static const char *graph_name(const Onnx__GraphProto *g)
{
	return g->name && g->name[0] ? g->name : "(unnamed graph)";
}

const Onnx__AttributeProto *nmp_node_attr(const Onnx__NodeProto *n, const char *name)
{
	for (size_t i = 0; i < n->n_attribute; i++)
		if (n->attribute[i]->name && strcmp(n->attribute[i]->name, name) == 0)
			return n->attribute[i];
	return NULL;
}

int64_t nmp_node_attr_int(const Onnx__NodeProto *n, const char *name, int64_t dflt)
{
	const Onnx__AttributeProto *a = nmp_node_attr(n, name);
	return a && a->has_i ? a->i : dflt;
}

const Onnx__GraphProto *nmp_node_subgraph(const Onnx__NodeProto *n, int32_t k, const char **attr)
{
	for (size_t a = 0; a < n->n_attribute; a++) {
		const Onnx__AttributeProto *at = n->attribute[a];
		if (attr)
			*attr = at->name;
		if (at->g && k-- == 0)
			return at->g;
		if ((size_t)k < at->n_graphs)
			return at->graphs[k];
		k -= (int32_t)at->n_graphs;
	}
	return NULL;
}

/* ---- walk state -------------------------------------------------------------- */

typedef struct walk {
	const nmp_model *m;
	nmp_graph *g;
	nmp_error *err;
	size_t step_limit;
	entry **crossed;             /* Identity and Cast outputs crossed by the trace under way */
	size_t n_crossed, cap_crossed;
	const Onnx__NodeProto **reader; /* per model tensor: the first node that reads it but is no consumer; lazy */
} walk;

static nmp_status dup_name(walk *w, const Onnx__GraphProto *gr, const char *name)
{
	return nmp_error_set(w->err, NMP_ERR_MODEL, "%s: graph '%s': name '%s' is defined twice",
			     w->m->path, graph_name(gr), name);
}

static bool node_outputs_const(const scope *sc, const Onnx__NodeProto *n)
{
	for (size_t i = 0; i < n->n_attribute; i++)
		if (n->attribute[i]->g || n->attribute[i]->n_graphs)
			return false;
	for (size_t i = 0; i < n->n_input; i++) {
		if (!n->input[i] || !n->input[i][0])
			continue;
		const entry *e = lookup(sc, n->input[i], NULL);
		if (!e || e->kind == K_INPUT || (e->kind == K_NODE && !e->is_const))
			return false;
	}
	return true;
}

/* Defines `name` in `sc` unless it is there already: NULL then, and *old says where. */
static entry *define(scope *sc, const char *name, entry **old)
{
	uint32_t *c = cell(sc, name);
	if (*c) {
		*old = &sc->entries[*c - 1];
		return NULL;
	}
	entry *e = &sc->entries[sc->n_entries++];
	*c = (uint32_t)sc->n_entries;
	*e = (entry){ .name = name };
	return e;
}

static nmp_status scope_build(walk *w, scope *sc, const Onnx__GraphProto *gr, const scope *parent,
			      const Onnx__NodeProto *owner)
{
	size_t n_init = nmp_model_n_initializers(w->m, gr);
	size_t n = n_init + gr->n_input;
	for (size_t i = 0; i < gr->n_node; i++)
		n += gr->node[i]->n_output;
	*sc = (scope){ .parent = parent, .owner = owner, .graph = gr, .cap = 16 };
	if (n >= UINT32_MAX / 2)
		return nmp_error_set(w->err, NMP_ERR_MODEL, "%s: graph '%s': %zu names, more than nmprune indexes",
				     w->m->path, graph_name(gr), n);
	while (sc->cap < n + n / 3 + 1)
		sc->cap *= 2;
	sc->entries = malloc((n ? n : 1) * sizeof *sc->entries);
	sc->table = calloc(sc->cap, sizeof *sc->table);
	sc->may_hold_weight = calloc((sc->cap + 63) / 64, sizeof *sc->may_hold_weight);
	if (!sc->entries || !sc->table || !sc->may_hold_weight)
		return nmp_error_set(w->err, NMP_ERR_NOMEM, "%s: out of memory", w->m->path);

	entry *e, *old;
	for (size_t i = 0; i < n_init; i++) {
		const nmp_tensor *t = nmp_model_initializer(w->m, gr, i);
		if (!(e = define(sc, t->name, &old)))
			return dup_name(w, gr, t->name);
		e->kind = K_INIT;
		e->init = t;
		e->is_const = true;
		mark_may_hold_weight(sc, t->name);
	}
	for (size_t i = 0; i < gr->n_input; i++) {
		const char *name = gr->input[i]->name ? gr->input[i]->name : "";
		if (!(e = define(sc, name, &old))) {
			if (old->kind != K_INIT)
				return dup_name(w, gr, name);
			old->graph_input = true; /* an overridable initializer */
			continue;
		}
		e->kind = K_INPUT;
		if (owner) /* a body input may carry a weight in */
			mark_may_hold_weight(sc, name);
	}
	for (size_t i = 0; i < gr->n_node; i++) {
		const Onnx__NodeProto *nd = gr->node[i];
		bool c = node_outputs_const(sc, nd);
		bool looping = strcmp(op_of(nd), "Loop") == 0 || strcmp(op_of(nd), "Scan") == 0;
		for (size_t o = 0; o < nd->n_output; o++) {
			const char *name = nd->output[o];
			if (!name || !name[0])
				continue;
			if (!(e = define(sc, name, &old)))
				return dup_name(w, gr, name);
			e->kind = K_NODE;
			e->node = nd;
			e->out_index = (int32_t)o;
			e->is_const = c;
			if (c || looping)
				mark_may_hold_weight(sc, name);
		}
	}
	return NMP_OK;
}

static void scope_free(scope *sc)
{
	free(sc->entries);
	free(sc->table);
	free(sc->may_hold_weight);
}

/* ---- tracing a consumer input back to its weight ------------------------------- */

typedef struct link {
	const Onnx__NodeProto *node; /* Transpose, DequantizeLinear or a scaling Mul (Cast, Identity are not kept) */
	const scope *sc;
	int scale_input;             /* Mul: which input is the scale */
} link;

typedef struct trace {
	link *chain;
	size_t n_chain, cap_chain;
	const nmp_tensor *tensor;
	const char *name;
	bool graph_input;
	bool from_constant;
	bool is_weight;              /* a constant was reached (or would be) */
	char blocked[80];
} trace;

static nmp_status push_link(walk *w, trace *t, const Onnx__NodeProto *n, const scope *sc, int scale_input)
{
	if (t->n_chain == t->cap_chain) {
		size_t cap = t->cap_chain ? 2 * t->cap_chain : 8;
		link *c = realloc(t->chain, cap * sizeof *c);
		if (!c)
			return nmp_error_set(w->err, NMP_ERR_NOMEM, "%s: out of memory", w->m->path);
		t->chain = c;
		t->cap_chain = cap;
	}
	t->chain[t->n_chain++] = (link){ n, sc, scale_input };
	return NMP_OK;
}

/* How a trace passes a node's output: not at all, unseen (Cast, Identity), or recorded (Transpose, DequantizeLinear, Mul). */
enum { PASS_NONE, PASS_UNSEEN, PASS_RECORDED };

/*
 * Weight-only quantization as some exporters write it: Cast(int8 weight) x
 * scale.  The input that is a Cast's output leads to the weight, the other
 * (an initializer or Constant) is the scale; -1 for any other Mul.
 */
static int scaling_mul_weight_input(const Onnx__NodeProto *n, const scope *sc)
{
	if (n->n_input != 2)
		return -1;
	for (int i = 0; i < 2; i++) {
		const entry *a = lookup(sc, n->input[i], NULL), *b = lookup(sc, n->input[1 - i], NULL);
		bool a_cast = a && a->kind == K_NODE && strcmp(op_of(a->node), "Cast") == 0;
		bool b_const = b && (b->kind == K_INIT || (b->kind == K_NODE && strcmp(op_of(b->node), "Constant") == 0));
		if (a_cast && b_const)
			return i;
	}
	return -1;
}

static int passes_through(const entry *e, const scope *sc)
{
	if (!e || e->kind != K_NODE || !nmp_node_default_domain(e->node) || e->out_index != 0 || e->node->n_input < 1)
		return PASS_NONE;
	const char *op = op_of(e->node);
	if (strcmp(op, "Cast") == 0 || strcmp(op, "Identity") == 0)
		return PASS_UNSEEN;
	if (strcmp(op, "Transpose") == 0 || strcmp(op, "DequantizeLinear") == 0)
		return PASS_RECORDED;
	if (strcmp(op, "Mul") == 0 && scaling_mul_weight_input(e->node, sc) >= 0)
		return PASS_RECORDED;
	return PASS_NONE;
}

/* The Identity and Cast outputs crossed so far lead to `name` in `sc`: remember it for the next trace. */
static void settle_crossed(walk *w, const char *name, const scope *sc)
{
	for (size_t i = 0; i < w->n_crossed; i++) {
		w->crossed[i]->skip_name = name;
		w->crossed[i]->skip_scope = sc;
	}
	w->n_crossed = 0;
}

/* Scan's inputs lead with sequence_lens before opset 9: 1 then, else 0. */
static size_t scan_lead(const Onnx__NodeProto *o, const Onnx__GraphProto *body)
{
	return strcmp(op_of(o), "Scan") == 0 && o->n_input == body->n_input + 1 ? 1 : 0;
}

/*
 * Body input idx of Loop or Scan node `o` (body `g`) when every iteration
 * passes it on unchanged (the body returns it as the same loop-carried or
 * state value): the index of the node's input whose value it holds; -1 for
 * any other input, or another node.
 */
static int carried_index(const Onnx__NodeProto *o, const Onnx__GraphProto *g, size_t idx)
{
	if (!o || !nmp_node_default_domain(o) || idx >= g->n_input)
		return -1;
	size_t out, in;
	if (strcmp(op_of(o), "Loop") == 0 && idx >= 2) {
		/* inputs (iteration, condition, carried...), outputs (condition, carried..., scans...) */
		out = idx - 1;
		in = idx;
	} else if (strcmp(op_of(o), "Scan") == 0) {
		/* states first in the body */
		int64_t scans = nmp_node_attr_int(o, "num_scan_inputs", -1);
		if (scans < 0 || (size_t)scans > g->n_input || idx >= g->n_input - (size_t)scans)
			return -1;
		out = idx;
		in = idx + scan_lead(o, g);
	} else {
		return -1;
	}
	if (out >= g->n_output || strcmp(g->output[out]->name, g->input[idx]->name) != 0 || in >= o->n_input ||
	    !o->input[in][0])
		return -1;
	return (int)in;
}

/*
 * A body input that every iteration passes on unchanged holds what the node
 * was given, so a trace goes on from the node's input in the enclosing
 * scope.  Exporters pass a decoder's weights into its loop this way.  NULL
 * for any other graph input.
 */
static const char *carried_from(const scope *sc, const char *name)
{
	const Onnx__GraphProto *g = sc->graph;
	size_t idx = 0;
	while (idx < g->n_input && strcmp(g->input[idx]->name, name) != 0)
		idx++;
	int in = carried_index(sc->owner, g, idx);
	return in >= 0 ? sc->owner->input[in] : NULL;
}

static nmp_status trace_back(walk *w, const scope *sc, const char *name, trace *t)
{
	w->n_crossed = 0;
	for (size_t steps = 0;; steps++) {
		if (steps > w->step_limit)
			return nmp_error_set(w->err, NMP_ERR_MODEL, "%s: graph '%s': cycle through '%s'",
					     w->m->path, graph_name(sc->graph), name);
		const scope *where;
		entry *e = (entry *)lookup(sc, name, &where); /* the scope's own slots, found read-only */
		if (e && e->skip_name) {
			name = e->skip_name;
			sc = e->skip_scope;
			continue;
		}
		const char *outer = e && e->kind == K_INPUT ? carried_from(where, name) : NULL;
		const int pass = outer ? PASS_UNSEEN : passes_through(e, where);
		if (pass == PASS_UNSEEN) {
			if (w->n_crossed == w->cap_crossed) {
				size_t cap = w->cap_crossed ? 2 * w->cap_crossed : 64;
				entry **c = realloc(w->crossed, cap * sizeof *c);
				if (!c)
					return nmp_error_set(w->err, NMP_ERR_NOMEM, "%s: out of memory", w->m->path);
				w->crossed = c;
				w->cap_crossed = cap;
			}
			w->crossed[w->n_crossed++] = e;
		} else {
			settle_crossed(w, name, sc);
		}
		if (outer) {
			name = outer;
			sc = where->parent;
			continue;
		}
		if (!e || e->kind == K_INPUT)
			return NMP_OK; /* an activation: not a weight */
		if (e->kind == K_INIT) {
			t->tensor = e->init;
			t->name = e->name;
			t->graph_input = e->graph_input;
			t->is_weight = true;
			return NMP_OK;
		}
		const Onnx__NodeProto *n = e->node;
		const char *op = op_of(n);
		if (nmp_node_default_domain(n) && strcmp(op, "Constant") == 0) {
			const Onnx__AttributeProto *v = nmp_node_attr(n, "value");
			t->is_weight = true;
			t->name = e->name;
			if (v && v->t) {
				t->tensor = nmp_model_tensor_of(w->m, v->t);
				t->from_constant = true;
			} else {
				snprintf(t->blocked, sizeof t->blocked, "unsupported path: Constant without a tensor value");
			}
			return NMP_OK;
		}
		if (pass == PASS_NONE) {
			if (e->is_const) {
				t->is_weight = true;
				t->name = name;
				snprintf(t->blocked, sizeof t->blocked, "unsupported path: %s", op);
			}
			return NMP_OK;
		}
		int follow = 0;
		if (pass == PASS_RECORDED && strcmp(op, "Mul") == 0)
			follow = scaling_mul_weight_input(n, where);
		if (pass == PASS_RECORDED)
			NMP_TRY(push_link(w, t, n, where, 1 - follow));
		name = n->input[follow];
		sc = where;
	}
}

/* ---- axes ------------------------------------------------------------------------- */

/* The op whose axes a consumer follows: MatMulInteger is a MatMul, ConvInteger a Conv. */
static const char *base_op(const char *op)
{
	if (strcmp(op, "MatMulInteger") == 0)
		return "MatMul";
	if (strcmp(op, "ConvInteger") == 0)
		return "Conv";
	return op;
}

static bool is_recurrent(const char *op)
{
	return strcmp(op, "LSTM") == 0 || strcmp(op, "GRU") == 0 || strcmp(op, "RNN") == 0;
}

/* Group and output-channel axes in the consumer's coordinates, for rank r. */
static bool consumer_axes(const Onnx__NodeProto *n, const char *op, int input, int r, int *axis,
			  int *out)
{
	*out = -1;
	op = base_op(op);
	if (strcmp(op, "Conv") == 0) {
		if (input != 1 || r < 3)
			return false;
		*axis = 1;
		*out = 0;
	} else if (strcmp(op, "ConvTranspose") == 0) {
		if (input != 1 || r < 3)
			return false;
		*axis = 0;
		*out = 1;
	} else if (strcmp(op, "Gemm") == 0) {
		if (r != 2 || input > 1)
			return false;
		bool trans = nmp_node_attr_int(n, input == 0 ? "transA" : "transB", 0) != 0;
		if (input == 0) {          /* A: [M,K] or [K,M] */
			*axis = trans ? 0 : 1;
			*out = trans ? 1 : 0;
		} else {                   /* B: [K,N] or [N,K] */
			*axis = trans ? 1 : 0;
			*out = trans ? 0 : 1;
		}
	} else if (strcmp(op, "MatMul") == 0) {
		if (input > 1 || r < 1)
			return false;
		if (r == 1) {
			*axis = 0;
		} else if (input == 1) {   /* B: [..., K, N] */
			*axis = r - 2;
			*out = r - 1;
		} else {                   /* A: [..., M, K] */
			*axis = r - 1;
			*out = r - 2;
		}
	} else {
		return false;
	}
	return true;
}

/* perm of a Transpose of rank r (default: reversed); false if invalid. */
static bool transpose_perm(const Onnx__NodeProto *n, int r, int *perm)
{
	const Onnx__AttributeProto *a = nmp_node_attr(n, "perm");
	if (!a || a->n_ints == 0) {
		for (int i = 0; i < r; i++)
			perm[i] = r - 1 - i;
		return true;
	}
	if ((int)a->n_ints != r)
		return false;
	uint64_t seen[2] = { 0, 0 }; /* ranks up to 128: one bit per axis */
	if (r > 128)
		return false;
	for (int i = 0; i < r; i++) {
		int64_t p = a->ints[i];
		if (p < 0 || p >= r || (seen[p >> 6] >> (p & 63) & 1))
			return false;
		seen[p >> 6] |= 1ull << (p & 63);
		perm[i] = (int)p;
	}
	return true;
}

/* A scale or zero point: an initializer or Constant in the DequantizeLinear's scope. */
static const nmp_tensor *const_tensor(const walk *w, const scope *sc, const char *name)
{
	if (!name || !name[0])
		return NULL;
	const entry *e = lookup(sc, name, NULL);
	if (!e)
		return NULL;
	if (e->kind == K_INIT)
		return e->init;
	if (e->kind == K_NODE && strcmp(op_of(e->node), "Constant") == 0) {
		const Onnx__AttributeProto *v = nmp_node_attr(e->node, "value");
		return v && v->t ? nmp_model_tensor_of(w->m, v->t) : NULL;
	}
	return NULL;
}

/*
 * Maps the consumer's axes through the chain into the weight's coordinates,
 * recording a DequantizeLinear's parameters on the way.
 */
static const char *map_axes(const walk *w, const trace *t, int r, int *axis, int *out, nmp_quant *q)
{
	int perm[64];
	bool have_dq = false;
	if (r > 64)
		return "rank above 64";
	memset(q, 0, sizeof *q);
	for (size_t i = 0; i < t->n_chain; i++) {
		const Onnx__NodeProto *n = t->chain[i].node;
		if (strcmp(op_of(n), "Transpose") == 0) {
			if (!transpose_perm(n, r, perm))
				return "invalid Transpose perm";
			*axis = perm[*axis];
			if (*out >= 0)
				*out = perm[*out];
			if (have_dq)
				q->axis = perm[q->axis];
			continue;
		}
		if (have_dq)
			return "unsupported path: two DequantizeLinear";
		have_dq = true;
		q->present = true;
		if (strcmp(op_of(n), "Mul") == 0) { /* Cast(weight) x scale: zero point 0, the scale broadcast */
			const nmp_tensor *s = const_tensor(w, t->chain[i].sc, n->input[t->chain[i].scale_input]);
			if (!s)
				return "unsupported quantization: scale is not a constant";
			int sr = (int)s->n_dims, a = -1;
			if (sr > r)
				return "unsupported quantization: Mul scale of a higher rank";
			for (int k = 0; k < sr; k++) { /* right-aligned: scale axis k is weight axis r - sr + k */
				if (s->dims[k] == 1)
					continue;
				if (a >= 0)
					return "unsupported quantization: Mul scale over several axes";
				a = r - sr + k;
			}
			q->scale = s;
			q->zero_point = NULL;
			q->axis = a >= 0 ? a : 0;
			q->block = 0;
			continue;
		}
		int64_t a = nmp_node_attr_int(n, "axis", 1);
		if (a < 0)
			a += r;
		q->axis = (a >= 0 && a < r) ? (int)a : 0;
		q->block = nmp_node_attr_int(n, "block_size", 0);
		q->scale = const_tensor(w, t->chain[i].sc, n->n_input > 1 ? n->input[1] : NULL);
		q->zero_point = const_tensor(w, t->chain[i].sc, n->n_input > 2 ? n->input[2] : NULL);
		if (!q->scale)
			return "unsupported quantization: scale is not a constant";
		if (n->n_input > 2 && n->input[2] && n->input[2][0] && !q->zero_point)
			return "unsupported quantization: zero point is not a constant";
	}
	return NULL;
}

/*
 * A MatMulInteger or ConvInteger weight's own zero point (b_zero_point /
 * a_zero_point, w_zero_point): per tensor, or per output channel along `out`.
 * Its magnitude is |q - zero point|; there is no scale.
 */
static const char *integer_zero_point(const walk *w, const scope *sc, const Onnx__NodeProto *n, int input, int r,
				      int out, nmp_quant *q)
{
	if (q->present)
		return "unsupported path: DequantizeLinear into an integer op";
	int zi = strcmp(op_of(n), "ConvInteger") == 0 ? 3 : (input == 1 ? 3 : 2);
	const char *zname = (int)n->n_input > zi ? n->input[zi] : NULL;
	q->present = true;
	q->unit_scale = true;
	q->scale = NULL;
	q->zero_point = const_tensor(w, sc, zname);
	q->axis = out >= 0 ? out : 0;
	q->block = 0;
	if (zname && zname[0] && !q->zero_point)
		return "unsupported quantization: zero point is not a constant";
	if (q->zero_point && q->zero_point->numel > 1 && (out < 0 || out >= r))
		return "unsupported quantization: zero point per channel without an output axis";
	return NULL;
}

/* ---- candidates --------------------------------------------------------------------- */

/* Candidates are found by tensor (or, for blocked paths, by name) through a hash index. */
typedef struct cand_index {
	size_t *slots; /* candidate index + 1; 0 is empty */
	size_t cap;
} cand_index;

static uint64_t cand_key(const nmp_tensor *t, const char *name)
{
	if (t) {
		uint64_t x = (uint64_t)(uintptr_t)t * 0x9e3779b97f4a7c15ull;
		return x ^ (x >> 29);
	}
	return nmp_str_hash(name);
}

static bool cand_is(const nmp_candidate *c, const nmp_tensor *t, const char *name)
{
	return t ? c->tensor == t : (!c->tensor && strcmp(c->name, name) == 0);
}

static bool index_grow(nmp_graph *g)
{
	cand_index *ix = g->priv;
	size_t cap = ix->cap ? 2 * ix->cap : 64;
	size_t *slots = calloc(cap, sizeof *slots);
	if (!slots)
		return false;
	for (size_t i = 0; i < g->n_cands; i++) {
		size_t h = (size_t)cand_key(g->cands[i].tensor, g->cands[i].name) & (cap - 1);
		while (slots[h])
			h = (h + 1) & (cap - 1);
		slots[h] = i + 1;
	}
	free(ix->slots);
	ix->slots = slots;
	ix->cap = cap;
	return true;
}

static nmp_candidate *find_or_add(walk *w, const nmp_tensor *t, const char *name)
{
	nmp_graph *g = w->g;
	cand_index *ix = g->priv;
	if (2 * (g->n_cands + 1) > ix->cap && !index_grow(g))
		return NULL;
	size_t h = (size_t)cand_key(t, name) & (ix->cap - 1);
	for (; ix->slots[h]; h = (h + 1) & (ix->cap - 1))
		if (cand_is(&g->cands[ix->slots[h] - 1], t, name))
			return &g->cands[ix->slots[h] - 1];
	if (g->n_cands == g->cap) {
		size_t cap = g->cap ? 2 * g->cap : 16;
		nmp_candidate *c = realloc(g->cands, cap * sizeof *c);
		if (!c)
			return NULL;
		g->cands = c;
		g->cap = cap;
	}
	ix->slots[h] = g->n_cands + 1;
	nmp_candidate *c = &g->cands[g->n_cands++];
	memset(c, 0, sizeof *c);
	c->tensor = t;
	c->name = name;
	c->axis = c->out_axis = -1;
	return c;
}

static nmp_status add_use(walk *w, const scope *sc, const Onnx__NodeProto *n, int input)
{
	trace t = { 0 };
	nmp_status s = trace_back(w, sc, n->input[input], &t);
	if (s != NMP_OK || !t.is_weight) {
		free(t.chain);
		return s;
	}
	const nmp_tensor *tensor = t.tensor;
	nmp_candidate *c = find_or_add(w, tensor, t.name ? t.name : n->input[input]);
	if (!c) {
		free(t.chain);
		return nmp_error_set(w->err, NMP_ERR_NOMEM, "%s: out of memory", w->m->path);
	}
	if (c->n_uses == c->cap_uses) {
		size_t cap = c->cap_uses ? 2 * c->cap_uses : 2;
		nmp_use *u = realloc(c->uses, cap * sizeof *u);
		if (!u) {
			free(t.chain);
			return nmp_error_set(w->err, NMP_ERR_NOMEM, "%s: out of memory", w->m->path);
		}
		c->uses = u;
		c->cap_uses = cap;
	}
	nmp_use *u = &c->uses[c->n_uses++];
	*u = (nmp_use){ .node = n, .node_name = n->name ? n->name : "", .op = op_of(n),
			.input = input, .axis = -1, .out_axis = -1 };
	c->graph_input |= t.graph_input;
	c->from_constant |= t.from_constant;

	/* A recurrent consumer decides, whatever path leads to it: the weight is listed, never pruned. */
	if (is_recurrent(u->op)) {
		if (!c->problem[0])
			snprintf(c->problem, sizeof c->problem, "read by %s: recurrent weights are not pruned", u->op);
		free(t.chain);
		return NMP_OK;
	}
	if (t.blocked[0]) {
		if (!c->problem[0])
			snprintf(c->problem, sizeof c->problem, "%s", t.blocked);
		free(t.chain);
		return NMP_OK;
	}
	int r = (int)tensor->n_dims;
	int axis, out;
	nmp_quant q;
	const char *why = NULL;
	if (!consumer_axes(n, u->op, input, r, &axis, &out))
		why = "unsupported weight rank for its consumer";
	else
		why = map_axes(w, &t, r, &axis, &out, &q);
	free(t.chain);
	if (!why && (strcmp(u->op, "MatMulInteger") == 0 || strcmp(u->op, "ConvInteger") == 0))
		why = integer_zero_point(w, sc, n, input, r, out, &q);
	if (why) {
		if (!c->problem[0])
			snprintf(c->problem, sizeof c->problem, "%s", why);
		return NMP_OK;
	}
	u->axis = axis;
	u->out_axis = out;
	/* Depthwise: several groups of one input channel each (a group=1 Conv with one input channel is not). */
	if (strcmp(base_op(u->op), "Conv") == 0)
		u->depthwise = tensor->dims[axis] == 1 && nmp_node_attr_int(u->node, "group", 1) > 1;
	if (c->n_uses == 1) {
		c->axis = axis;
		c->out_axis = out;
		c->quant = q;
	} else if (c->axis != axis && !c->problem[0]) {
		snprintf(c->problem, sizeof c->problem, "conflicting axes");
	}
	return NMP_OK;
}

bool nmp_graph_is_consumer(const char *op)
{
	return strcmp(op, "Conv") == 0 || strcmp(op, "ConvTranspose") == 0 || strcmp(op, "Gemm") == 0 ||
	       strcmp(op, "MatMul") == 0 || strcmp(op, "MatMulInteger") == 0 || strcmp(op, "ConvInteger") == 0 ||
	       is_recurrent(op);
}

/* ---- other readers of a weight's values ------------------------------------------ */

/* Stands for a graph's outputs among the readers: a weight returned as it is. */
static const Onnx__NodeProto graph_output_reader = { .op_type = (char *)"graph output" };

/* A Loop or Scan input that its body passes on unchanged: the body's readers of it are the ones that count. */
static bool carried_input(const Onnx__NodeProto *n, size_t in)
{
	const Onnx__GraphProto *body = nmp_node_subgraph(n, 0, NULL);
	if (!body || nmp_node_subgraph(n, 1, NULL))
		return false;
	size_t lead = scan_lead(n, body);
	return in >= lead && carried_index(n, body, in - lead) == (int)in;
}

/*
 * The input of Loop or Scan node `o` whose value its output `out` returns
 * unchanged (a carried value or state the body passes on), or -1.
 */
static int carried_output(const Onnx__NodeProto *o, int32_t out)
{
	const Onnx__GraphProto *body = nmp_node_subgraph(o, 0, NULL);
	if (!body || !nmp_node_default_domain(o) || out < 0)
		return -1;
	size_t in = (size_t)out;
	if (strcmp(op_of(o), "Loop") == 0)
		in += 2; /* outputs (carried..., scans...), inputs (count, condition, carried...) */
	else if (strcmp(op_of(o), "Scan") == 0)
		in += scan_lead(o, body); /* outputs (states..., scans...), inputs ([sequence_lens,] states..., scans...) */
	else
		return -1;
	return in < o->n_input && carried_input(o, in) ? (int)in : -1;
}

/*
 * `name`, read by `n` in `sc`, holds a weight's values: remember `n` as that
 * weight's first reader that is not a consumer.  A Loop's or Scan's final
 * value of a weight its body carries unchanged is the weight; an activation
 * is passed over at its first lookup.
 */
static nmp_status note_reader(walk *w, const scope *sc, const char *name, const Onnx__NodeProto *n)
{
	if (!may_hold_weight(sc, name))
		return NMP_OK;
	const scope *where;
	const entry *e;
	int in;
	for (size_t steps = 0; (e = lookup(sc, name, &where)) != NULL && e->kind == K_NODE &&
			       (in = carried_output(e->node, e->out_index)) >= 0 && steps <= w->step_limit; steps++) {
		name = e->node->input[in];
		sc = where;
	}
	if (!e || (e->kind == K_NODE && !e->is_const))
		return NMP_OK;
	trace t = { 0 };
	nmp_status s = trace_back(w, sc, name, &t);
	free(t.chain);
	if (s != NMP_OK || !t.tensor)
		return s;
	if (!w->reader && !(w->reader = calloc(w->m->n_tensors, sizeof *w->reader)))
		return nmp_error_set(w->err, NMP_ERR_NOMEM, "%s: out of memory", w->m->path);
	size_t k = (size_t)(t.tensor - w->m->tensors);
	if (!w->reader[k])
		w->reader[k] = n;
	return NMP_OK;
}

/*
 * The inputs of `n` (in `sc`) through which it reads a weight's values
 * other than as a consumer's weight, whose bytes pruning changes: all but a
 * consumer's weight-side inputs [first, last], the input a look-through
 * node (Transpose, DequantizeLinear, Cast, Identity, a scaling Mul) passes
 * on, the shape-only inputs of Shape and Size, and what a Loop or Scan body
 * passes on unchanged.
 */
static nmp_status note_readers(walk *w, const scope *sc, const Onnx__NodeProto *n, int first, int last)
{
	const char *op = op_of(n);
	int through = -1;
	if (nmp_node_default_domain(n)) {
		if (strcmp(op, "Shape") == 0 || strcmp(op, "Size") == 0)
			return NMP_OK;
		if (strcmp(op, "Transpose") == 0 || strcmp(op, "DequantizeLinear") == 0 || strcmp(op, "Cast") == 0 ||
		    strcmp(op, "Identity") == 0)
			through = 0;
		else if (strcmp(op, "Mul") == 0)
			through = scaling_mul_weight_input(n, sc);
	}
	bool looping = nmp_node_default_domain(n) && (strcmp(op, "Loop") == 0 || strcmp(op, "Scan") == 0);
	for (size_t i = 0; i < n->n_input; i++) {
		if (!n->input[i] || !n->input[i][0] || ((int)i >= first && (int)i <= last) || (int)i == through ||
		    (looping && carried_input(n, i)))
			continue;
		NMP_TRY(note_reader(w, sc, n->input[i], n));
	}
	return NMP_OK;
}

/*
 * A graph's outputs read what they name, except a body's carried values that
 * it passes on unchanged; a subgraph's are read by the node that holds it.
 */
static nmp_status note_outputs(walk *w, const scope *sc)
{
	const Onnx__NodeProto *reader = sc->owner ? sc->owner : &graph_output_reader;
	for (size_t i = 0; i < sc->graph->n_output; i++) {
		const char *name = sc->graph->output[i]->name;
		const entry *e = find(sc, name);
		if (e && e->kind == K_INPUT && carried_from(sc, name))
			continue;
		NMP_TRY(note_reader(w, sc, name, reader));
	}
	return NMP_OK;
}

/* ---- the walk ---------------------------------------------------------------------- */

static nmp_status walk_graph(walk *w, const Onnx__GraphProto *gr, const scope *parent, const Onnx__NodeProto *owner)
{
	scope sc;
	nmp_status s = scope_build(w, &sc, gr, parent, owner);
	for (size_t i = 0; i < gr->n_node && s == NMP_OK; i++) {
		const Onnx__NodeProto *n = gr->node[i];
		const char *op = op_of(n);
		int first = -1, last = -1;
		if (nmp_node_default_domain(n) && nmp_graph_is_consumer(op)) {
			const char *b = base_op(op);
			last = strcmp(b, "Conv") == 0 || strcmp(b, "ConvTranspose") == 0 ? 1 : 0;
			first = last;
			if (strcmp(b, "Gemm") == 0 || strcmp(b, "MatMul") == 0)
				last = 1;
			if (is_recurrent(op)) /* W and R */
				first = 1, last = 2;
			for (int in = first; in <= last && in < (int)n->n_input && s == NMP_OK; in++)
				if (n->input[in] && n->input[in][0])
					s = add_use(w, &sc, n, in);
		}
		if (s == NMP_OK)
			s = note_readers(w, &sc, n, first, last);
		/* Subgraphs are walked where their node stands, so order stays topological. */
		const Onnx__GraphProto *sub;
		for (int32_t k = 0; s == NMP_OK && (sub = nmp_node_subgraph(n, k, NULL)) != NULL; k++)
			s = walk_graph(w, sub, &sc, n);
	}
	if (s == NMP_OK)
		s = note_outputs(w, &sc);
	scope_free(&sc);
	return s;
}

static size_t count_nodes(const Onnx__GraphProto *gr)
{
	size_t n = gr->n_node;
	const Onnx__GraphProto *sub;
	for (size_t i = 0; i < gr->n_node; i++)
		for (int32_t k = 0; (sub = nmp_node_subgraph(gr->node[i], k, NULL)) != NULL; k++)
			n += count_nodes(sub);
	return n;
}

nmp_status nmp_graph_walk(const nmp_model *m, nmp_graph **out, nmp_error *err)
{
	nmp_graph *g = calloc(1, sizeof *g);
	*out = NULL;
	if (!g)
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", m->path);
	g->priv = calloc(1, sizeof(cand_index));
	if (!g->priv) {
		free(g);
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", m->path);
	}
	/* No chain of look-through nodes is longer than the model has nodes. */
	walk w = { .m = m, .g = g, .err = err, .step_limit = count_nodes(m->proto->graph) + 1 };
	nmp_status s = walk_graph(&w, m->proto->graph, NULL, NULL);
	for (size_t i = 0; s == NMP_OK && w.reader && i < g->n_cands; i++) {
		nmp_candidate *c = &g->cands[i];
		const Onnx__NodeProto *r = c->tensor ? w.reader[c->tensor - m->tensors] : NULL;
		if (!r || c->problem[0])
			continue;
		if (r == &graph_output_reader)
			snprintf(c->problem, sizeof c->problem, "also a graph output: pruning would change it");
		else
			snprintf(c->problem, sizeof c->problem, "also read by %s '%s': pruning would change it",
				 op_of(r), r->name && r->name[0] ? r->name : "(unnamed)");
	}
	free(w.reader);
	free(w.crossed);
	if (s != NMP_OK) {
		nmp_graph_free(&g);
		return s;
	}
	*out = g;
	return NMP_OK;
}

void nmp_graph_free(nmp_graph **pg)
{
	nmp_graph *g = *pg;
	if (!g)
		return;
	for (size_t i = 0; i < g->n_cands; i++)
		free(g->cands[i].uses);
	free(g->cands);
	if (g->priv)
		free(((cand_index *)g->priv)->slots);
	free(g->priv);
	free(g);
	*pg = NULL;
}
