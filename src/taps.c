/*
 * taps.c — scopes of a model's nodes, and If-branch values made graph outputs
 * (see taps.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "taps.h"

/* ---- scopes ----------------------------------------------------------------------------------- */

static int by_node(const void *a, const void *b)
{
	const void *x = ((const nmp_scope_node *)a)->node, *y = ((const nmp_scope_node *)b)->node;
	return (x > y) - (x < y);
}

static bool scopes_grow(nmp_scopes *s, size_t *cap)
{
	if (s->n < *cap)
		return true;
	size_t nc = *cap ? 2 * *cap : 8;
	nmp_scope *ns = realloc(s->s, nc * sizeof *ns);
	if (!ns)
		return false;
	s->s = ns;
	*cap = nc;
	return true;
}

/*
 * Adds graph g (held by owner's attribute attr) as a scope, then every node
 * of it and of its subgraphs.  The loader bounds the nesting
 * (NMP_WIRE_MAX_DEPTH, wire.h), and so the recursion.
 */
static bool add_scope(nmp_scopes *s, size_t *cap, size_t *cap_nodes, Onnx__GraphProto *g, int parent,
		      Onnx__NodeProto *owner, const char *attr)
{
	if (!scopes_grow(s, cap))
		return false;
	const int me = (int)s->n++;
	s->s[me] = (nmp_scope){ .graph = g, .parent = parent, .owner = owner, .attr = attr };
	for (size_t i = 0; i < g->n_node; i++) {
		Onnx__NodeProto *n = g->node[i];
		if (s->n_nodes == *cap_nodes) {
			size_t nc = *cap_nodes ? 2 * *cap_nodes : 64;
			nmp_scope_node *nn = realloc(s->nodes, nc * sizeof *nn);
			if (!nn)
				return false;
			s->nodes = nn;
			*cap_nodes = nc;
		}
		s->nodes[s->n_nodes++] = (nmp_scope_node){ .node = n, .scope = me };
		for (size_t a = 0; a < n->n_attribute; a++) {
			Onnx__AttributeProto *at = n->attribute[a];
			if (at->g && !add_scope(s, cap, cap_nodes, at->g, me, n, at->name))
				return false;
			for (size_t k = 0; k < at->n_graphs; k++)
				if (!add_scope(s, cap, cap_nodes, at->graphs[k], me, n, at->name))
					return false;
		}
	}
	return true;
}

nmp_status nmp_scopes_build(const nmp_model *m, nmp_scopes *out, nmp_error *err)
{
	*out = (nmp_scopes){ 0 };
	if (!m->proto->graph)
		return NMP_OK;
	size_t cap = 0, cap_nodes = 0;
	if (!add_scope(out, &cap, &cap_nodes, m->proto->graph, -1, NULL, NULL)) {
		nmp_scopes_free(out);
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory for the graph's scopes", m->path);
	}
	if (out->n_nodes)
		qsort(out->nodes, out->n_nodes, sizeof *out->nodes, by_node);
	return NMP_OK;
}

void nmp_scopes_free(nmp_scopes *s)
{
	free(s->s);
	free(s->nodes);
	*s = (nmp_scopes){ 0 };
}

int nmp_scopes_of(const nmp_scopes *s, const Onnx__NodeProto *n)
{
	nmp_scope_node key = { .node = n };
	const nmp_scope_node *hit = s->n_nodes ? bsearch(&key, s->nodes, s->n_nodes, sizeof key, by_node) : NULL;
	return hit ? hit->scope : -1;
}

static const Onnx__NodeProto *output_of(const Onnx__GraphProto *g, const char *name)
{
	for (size_t i = 0; i < g->n_node; i++)
		for (size_t k = 0; k < g->node[i]->n_output; k++)
			if (strcmp(g->node[i]->output[k], name) == 0)
				return g->node[i];
	return NULL;
}

static bool initializer_of(const nmp_model *m, const Onnx__GraphProto *g, const char *name)
{
	for (size_t i = 0, n = nmp_model_n_initializers(m, g); i < n; i++)
		if (strcmp(nmp_model_initializer(m, g, i)->name, name) == 0)
			return true;
	return false;
}

/* Where `name`, seen from scope, is defined: the scope, and its node (NULL for an input or an initializer). */
static int definition(const nmp_model *m, const nmp_scopes *s, int scope, const char *name, bool *init,
		      const Onnx__NodeProto **node)
{
	*init = false;
	*node = NULL;
	for (; scope >= 0; scope = s->s[scope].parent) {
		const Onnx__GraphProto *g = s->s[scope].graph;
		if ((*node = output_of(g, name)) != NULL)
			return scope;
		for (size_t i = 0; i < g->n_input; i++)
			if (strcmp(g->input[i]->name, name) == 0) {
				*init = initializer_of(m, g, name);
				return scope;
			}
		if (initializer_of(m, g, name)) {
			*init = true;
			return scope;
		}
	}
	return -1;
}

int nmp_scopes_defining(const nmp_model *m, const nmp_scopes *s, int scope, const char *name, bool *init)
{
	const Onnx__NodeProto *node;
	return definition(m, s, scope, name, init, &node);
}

const Onnx__NodeProto *nmp_scopes_producer(const nmp_model *m, const nmp_scopes *s, int scope, const char *name)
{
	bool init;
	const Onnx__NodeProto *node;
	definition(m, s, scope, name, &init, &node);
	return node;
}

/*
 * Is scope a body of a Loop, or of a Scan of opset 9 or later (no
 * sequence_lens before its states), whose node names an output for every
 * value the body returns (so a new one lines up with a new body output)?
 */
static bool loop_body(const nmp_scope *sc)
{
	const Onnx__NodeProto *o = sc->owner;
	const Onnx__GraphProto *g = sc->graph;
	if (!nmp_node_default_domain(o))
		return false;
	if (strcmp(o->op_type, "Loop") == 0)
		return g->n_output >= 1 && o->n_output == g->n_output - 1;
	return strcmp(o->op_type, "Scan") == 0 && o->n_input == g->n_input && o->n_output == g->n_output;
}

bool nmp_scopes_tappable(const nmp_scopes *s, int scope, int *stacked, char *why, size_t why_len)
{
	const char *branch = NULL; /* an If met inside, before any loop */
	*stacked = 0;
	for (; scope > 0; scope = s->s[scope].parent) {
		const nmp_scope *sc = &s->s[scope];
		const char *op = sc->owner->op_type;
		if (nmp_node_default_domain(sc->owner) && strcmp(op, "If") == 0) {
			if (!*stacked)
				branch = op;
			continue;
		}
		if (!loop_body(sc)) {
			const bool loop = strcmp(op, "Loop") == 0 || strcmp(op, "Scan") == 0;
			snprintf(why, why_len, loop ? "a %.40s body whose node does not list every output (or opset 8's Scan)" :
						      "a %.40s body", op);
			return false;
		}
		if (branch) {
			snprintf(why, why_len, "an If inside a %.40s body", op);
			return false;
		}
		++*stacked;
	}
	return true;
}

/* ---- taps ------------------------------------------------------------------------------------- */

/* A repeated field grown for the taps: its array as it was, and the one that replaces it. */
typedef struct grown {
	void *field;                  /* the address of the message's array pointer */
	size_t *count;
	void *orig;
	size_t orig_n;
	uint8_t *items;               /* elements of esize bytes */
	size_t esize, cap;
} grown;

typedef struct tapped {
	int scope;
	const char *name;
	const char *fetch;
} tapped;

struct nmp_taps {
	const nmp_scopes *s;
	const char *path;             /* the model's, for messages */
	grown *fields;
	size_t n_fields, cap_fields;
	void **owned;                 /* everything allocated for the edits */
	size_t n_owned, cap_owned;
	tapped *done;
	size_t n_done, cap_done;
	unsigned long next_name;
};

#define TAP_PREFIX "nmprune.tap."

static bool grow_array(void **arr, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return true;
	size_t nc = *cap ? 2 * *cap : 8;
	while (nc < need)
		nc *= 2;
	void *na = realloc(*arr, nc * elem);
	if (!na)
		return false;
	*arr = na;
	*cap = nc;
	return true;
}

static void *own(nmp_taps *t, void *p)
{
	if (!p)
		return NULL;
	if (!grow_array((void **)&t->owned, &t->cap_owned, t->n_owned + 1, sizeof *t->owned)) {
		free(p);
		return NULL;
	}
	t->owned[t->n_owned++] = p;
	return p;
}

/* Appends the element at `item` (esize bytes) to the repeated field (*field, *count), remembering it as it was. */
static bool append_elem(nmp_taps *t, void *field, size_t *count, const void *item, size_t esize)
{
	grown *g = NULL;
	for (size_t i = 0; i < t->n_fields && !g; i++)
		if (t->fields[i].field == field)
			g = &t->fields[i];
	if (!g) {
		if (!grow_array((void **)&t->fields, &t->cap_fields, t->n_fields + 1, sizeof *t->fields))
			return false;
		g = &t->fields[t->n_fields];
		*g = (grown){ .field = field, .count = count, .orig = *(void **)field, .orig_n = *count, .esize = esize };
		if (!grow_array((void **)&g->items, &g->cap, *count + 1, esize))
			return false;
		t->n_fields++;
		if (*count)
			memcpy(g->items, g->orig, *count * esize);
	}
	if (!grow_array((void **)&g->items, &g->cap, *count + 1, esize))
		return false;
	memcpy(g->items + (*count)++ * esize, item, esize);
	*(void **)field = g->items;
	return true;
}

/* Appends a pointer (a message, a name) to a repeated field of them. */
static bool append(nmp_taps *t, void *field, size_t *count, void *item)
{
	return append_elem(t, field, count, &item, sizeof item);
}

/* A Scan's per-output attribute list, when the node has it, takes 0 for the new scan output. */
static bool extend_scan_list(nmp_taps *t, Onnx__NodeProto *scan, const char *attr)
{
	for (size_t a = 0; a < scan->n_attribute; a++) {
		Onnx__AttributeProto *at = scan->attribute[a];
		if (strcmp(at->name, attr) == 0) {
			const int64_t zero = 0;
			return append_elem(t, &at->ints, &at->n_ints, &zero, sizeof zero);
		}
	}
	return true;
}

/* The larger of most and n, where name is TAP_PREFIX n. */
static unsigned long name_number(const char *name, unsigned long most)
{
	const size_t plen = strlen(TAP_PREFIX);
	char *end;
	if (strncmp(name, TAP_PREFIX, plen) != 0)
		return most;
	unsigned long v = strtoul(name + plen, &end, 10);
	return end != name + plen && v > most ? v : most;
}

nmp_status nmp_taps_open(const nmp_model *m, const nmp_scopes *s, nmp_taps **out, nmp_error *err)
{
	nmp_taps *t = calloc(1, sizeof *t);
	if (!t)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	t->s = s;
	t->path = m->path;
	/* new names continue past every TAP_PREFIX n the model already defines, in any graph */
	unsigned long most = 0;
	for (size_t k = 0; k < s->n; k++) {
		const Onnx__GraphProto *g = s->s[k].graph;
		for (size_t i = 0; i < g->n_node; i++)
			for (size_t o = 0; o < g->node[i]->n_output; o++)
				most = name_number(g->node[i]->output[o], most);
		for (size_t i = 0; i < g->n_input; i++)
			most = name_number(g->input[i]->name, most);
		for (size_t i = 0, n = nmp_model_n_initializers(m, g); i < n; i++)
			most = name_number(nmp_model_initializer(m, g, i)->name, most);
	}
	t->next_name = most + 1;
	*out = t;
	return NMP_OK;
}

static char *new_name(nmp_taps *t)
{
	char *name = own(t, malloc(sizeof TAP_PREFIX + 24));
	if (name)
		snprintf(name, sizeof TAP_PREFIX + 24, TAP_PREFIX "%lu", t->next_name++);
	return name;
}

static Onnx__ValueInfoProto *value_info(nmp_taps *t, char *name)
{
	Onnx__ValueInfoProto *v = own(t, malloc(sizeof *v));
	if (v) {
		*v = (Onnx__ValueInfoProto)ONNX__VALUE_INFO_PROTO__INIT;
		v->name = name;
	}
	return v;
}

/* A Constant node giving `name` an empty tensor (shape [0]) of type dtype. */
static Onnx__NodeProto *empty_constant(nmp_taps *t, char *name, int32_t dtype)
{
	Onnx__NodeProto *n = own(t, malloc(sizeof *n));
	Onnx__AttributeProto *a = own(t, malloc(sizeof *a));
	Onnx__TensorProto *v = own(t, malloc(sizeof *v));
	int64_t *dims = own(t, calloc(1, sizeof *dims));
	char **outs = own(t, malloc(sizeof *outs));
	Onnx__AttributeProto **attrs = own(t, malloc(sizeof *attrs));
	if (!n || !a || !v || !dims || !outs || !attrs)
		return NULL;
	*v = (Onnx__TensorProto)ONNX__TENSOR_PROTO__INIT;
	v->has_data_type = 1;
	v->data_type = dtype;
	v->n_dims = 1;
	v->dims = dims;
	*a = (Onnx__AttributeProto)ONNX__ATTRIBUTE_PROTO__INIT;
	a->name = "value";
	a->has_type = 1;
	a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR;
	a->t = v;
	attrs[0] = a;
	outs[0] = name;
	*n = (Onnx__NodeProto)ONNX__NODE_PROTO__INIT;
	n->op_type = "Constant";
	n->n_output = 1;
	n->output = outs;
	n->n_attribute = 1;
	n->attribute = attrs;
	return n;
}

/* The other branch of If node n, whose attribute `attr` holds the branch tapped. */
static Onnx__GraphProto *other_branch(Onnx__NodeProto *n, const char *attr)
{
	const char *want = strcmp(attr, "then_branch") == 0 ? "else_branch" : "then_branch";
	for (size_t a = 0; a < n->n_attribute; a++)
		if (strcmp(n->attribute[a]->name, want) == 0)
			return n->attribute[a]->g;
	return NULL;
}

/* A node op(in) -> out with no attributes. */
static Onnx__NodeProto *unary(nmp_taps *t, const char *op, char *in, char *out)
{
	Onnx__NodeProto *n = own(t, malloc(sizeof *n));
	char **ins = own(t, malloc(sizeof *ins)), **outs = own(t, malloc(sizeof *outs));
	if (!n || !ins || !outs)
		return NULL;
	*n = (Onnx__NodeProto)ONNX__NODE_PROTO__INIT;
	n->op_type = (char *)op;
	ins[0] = in;
	outs[0] = out;
	n->n_input = n->n_output = 1;
	n->input = ins;
	n->output = outs;
	return n;
}

nmp_status nmp_taps_add(nmp_taps *t, int scope, const char *name, bool outer, int32_t dtype, const char **fetch,
			nmp_error *err)
{
	*fetch = name;
	for (size_t i = 0; i < t->n_done; i++)
		if (t->done[i].scope == scope && strcmp(t->done[i].name, name) == 0) {
			*fetch = t->done[i].fetch;
			return NMP_OK;
		}
	const nmp_scopes *s = t->s;
	char why[96];
	int stacked;
	if (!nmp_scopes_tappable(s, scope, &stacked, why, sizeof why))
		return nmp_error_set(err, NMP_ERR_MODEL, "%s: value '%s' lies inside %s, which nmprune cannot tap",
				     t->path, name, why);
	char *cur = (char *)name;
	if (scope > 0 && outer) { /* its copy in this branch, computed only when the branch runs */
		Onnx__GraphProto *g = (Onnx__GraphProto *)s->s[scope].graph;
		char *copy = new_name(t);
		Onnx__NodeProto *id = copy ? unary(t, "Identity", cur, copy) : NULL;
		if (!id || !append(t, &g->node, &g->n_node, id))
			return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		cur = copy;
	}
	for (int at = scope; at > 0; at = s->s[at].parent) {
		const nmp_scope *sc = &s->s[at];
		if (loop_body(sc)) { /* a new scan output: the body returns cur at every iteration */
			Onnx__GraphProto *body = (Onnx__GraphProto *)sc->graph;
			char *up = new_name(t);
			Onnx__ValueInfoProto *out = value_info(t, cur);
			if (!up || !out || !append(t, &body->output, &body->n_output, out) ||
			    !append(t, &sc->owner->output, &sc->owner->n_output, up) ||
			    !extend_scan_list(t, sc->owner, "scan_output_axes") ||
			    !extend_scan_list(t, sc->owner, "scan_output_directions"))
				return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
			cur = up;
			continue;
		}
		Onnx__GraphProto *branch = (Onnx__GraphProto *)sc->graph, *other = other_branch(sc->owner, sc->attr);
		char *empty = new_name(t), *up = new_name(t);
		Onnx__ValueInfoProto *out = value_info(t, cur), *out_other = value_info(t, empty);
		Onnx__NodeProto *constant = empty ? empty_constant(t, empty, dtype) : NULL;
		if (!other)
			return nmp_error_set(err, NMP_ERR_MODEL, "%s: If node '%s' has no %s",
					     t->path, sc->owner->name ? sc->owner->name : "",
					     strcmp(sc->attr, "then_branch") == 0 ? "else_branch" : "then_branch");
		if (!up || !out || !out_other || !constant ||
		    !append(t, &branch->output, &branch->n_output, out) ||
		    !append(t, &other->node, &other->n_node, constant) ||
		    !append(t, &other->output, &other->n_output, out_other) ||
		    !append(t, &sc->owner->output, &sc->owner->n_output, up))
			return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		cur = up;
	}
	if (!grow_array((void **)&t->done, &t->cap_done, t->n_done + 1, sizeof *t->done))
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	t->done[t->n_done++] = (tapped){ .scope = scope, .name = name, .fetch = cur };
	*fetch = cur;
	return NMP_OK;
}

void nmp_taps_close(nmp_taps **pt)
{
	nmp_taps *t = *pt;
	if (!t)
		return;
	for (size_t i = t->n_fields; i-- > 0;) {
		grown *g = &t->fields[i];
		*(void **)g->field = g->orig;
		*g->count = g->orig_n;
		free(g->items);
	}
	for (size_t i = 0; i < t->n_owned; i++)
		free(t->owned[i]);
	free(t->owned);
	free(t->fields);
	free(t->done);
	free(t);
	*pt = NULL;
}
