/*
 * calib.c — calibration statistics through ONNX Runtime, and the wanda and
 * sparsegpt choices (see calib.h).
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blas.h"
#include "calib.h"
#include "calib_data.h"
#include "clock.h"
#include "dtype.h"
#include "mask_rules.h"
#include "ort.h"
#include "prune.h"
#include "report.h"
#include "sparsegpt.h"
#include "taps.h"

#define MAX_SPATIAL 8
#define GRAM_BUFFER (16u << 20)   /* bytes of input vectors gathered per rank-k update of H */

/*
 * How a consumer reads its weight.  LINEAR: each input vector (a token, a row)
 * meets the weight along the group axis.  DECONV (ConvTranspose): the same,
 * each input pixel's channels being the vector; the products are then summed
 * into overlapping output patches, which the statistics leave out.  CONV: the
 * vectors are the unfolded input patches.
 */
typedef enum layer_kind { LAYER_NONE, LAYER_LINEAR, LAYER_DECONV, LAYER_CONV } layer_kind;

/* One consumer's data input. */
typedef struct use_site {
	const char *act;                /* the activation's name */
	int scope;                      /* the consumer's scope (taps.h): 0 is the main graph */
	bool outer;                     /* the activation is defined in an enclosing scope */
	int stacked;                    /* loops it leaves: leading axes of iterations on what a run returns */
	int32_t dtype;                  /* its element type */
	const char *fetch;              /* its name in the main graph during a pass */
	int chan_axis;                  /* negative: from the end */
	const Onnx__NodeProto *node;
} use_site;

typedef struct target {
	layer_kind kind;
	nmp_method method;              /* what chooses the mask */
	char note[160];
	use_site *uses;
	size_t n_uses;
	uint64_t C;                     /* activation channels */
	uint64_t G;                     /* groups */
	uint64_t cin_g, cout_g;         /* per group: input channels, outputs */
	uint64_t S;                     /* kernel positions (1 for linear) */
	int n_k;
	int64_t kdims[MAX_SPATIAL];
	uint64_t K;                     /* inputs per group: cin_g * S */
	double *sq;                     /* C */
	double *H;                      /* G x K x K */
	float *rows;                    /* input vectors not yet added to H */
	float *gram;                    /* K x K: their products, before H (double) takes them */
	uint64_t n_rows, cap_rows;
	uint64_t tokens;
	bool active;                    /* collected in the current pass */
	/* the decision, made once its statistics are in */
	bool decided;
	uint8_t *mask;                  /* numel, 1 = kept */
	void *payload;                  /* the pruned (and rebuilt) values, raw layout */
	nmp_mask_stats st;
	nmp_calib_weight_result cr;
} target;

struct nmp_calib {
	const nmp_plan *plan;
	nmp_calib_opts o;
	target *t;                      /* per selection choice */
	size_t n;
	size_t samples;
	uint64_t tokens;
	double seconds;
	size_t passes;                  /* runs over the data */
	char runtime[96];
	nmp_scopes scopes;
};

const char *nmp_method_name(nmp_method m)
{
	switch (m) {
	case NMP_METHOD_WANDA: return "wanda";
	case NMP_METHOD_SPARSEGPT: return "sparsegpt";
	default: return "magnitude";
	}
}

bool nmp_method_parse(const char *name, nmp_method *m)
{
	for (int k = NMP_METHOD_MAGNITUDE; k <= NMP_METHOD_SPARSEGPT; k++)
		if (strcmp(name, nmp_method_name((nmp_method)k)) == 0) {
			*m = (nmp_method)k;
			return true;
		}
	return false;
}

nmp_status nmp_calib_check(const nmp_plan *plan, nmp_method method, nmp_error *err)
{
	if (method != NMP_METHOD_SPARSEGPT)
		return NMP_OK;
	for (size_t i = 0; i < plan->sel->n; i++) {
		const nmp_choice *ch = &plan->sel->choices[i];
		if (ch->eligible && !nmp_sparsegpt_supports(&ch->pattern))
			return nmp_error_set(err, NMP_ERR_USAGE,
					     "--method sparsegpt serves element-wise N:M and P%% patterns, not %s (tensor '%s')",
					     ch->pattern.text, ch->cand->name);
	}
	return NMP_OK;
}

/* ---- the graph side: which activation feeds each weight ---------------------------------------- */

/* Does `name` (seen from scope) carry the weight `weight` without moving its axes (Identity, Cast, DequantizeLinear)? */
static bool carries_directly(const nmp_model *m, const nmp_scopes *sc, int scope, const char *name, const char *weight)
{
	for (int hops = 0; hops < 64; hops++) {
		if (strcmp(name, weight) == 0)
			return true;
		const Onnx__NodeProto *p = nmp_scopes_producer(m, sc, scope, name);
		if (!p || p->n_input == 0 ||
		    (strcmp(p->op_type, "Identity") != 0 && strcmp(p->op_type, "Cast") != 0 &&
		     strcmp(p->op_type, "DequantizeLinear") != 0))
			return false;
		name = p->input[0];
	}
	return false;
}

/*
 * The element type a consumer computes in, from its weight-side input `name`
 * (its data input has the same): the first Cast or DequantizeLinear on the
 * walker's path back to the weight decides, else the weight's own type.
 */
static int32_t compute_type(const nmp_model *m, const nmp_scopes *sc, int scope, const nmp_candidate *c, const char *name)
{
	for (int hops = 0; hops < 64; hops++) {
		const Onnx__NodeProto *p = nmp_scopes_producer(m, sc, scope, name);
		if (!p || strcmp(p->op_type, "Constant") == 0)
			break;
		if (strcmp(p->op_type, "Cast") == 0)
			return (int32_t)nmp_node_attr_int(p, "to", 0);
		if (strcmp(p->op_type, "DequantizeLinear") == 0) {
			int64_t to = nmp_node_attr_int(p, "output_dtype", 0);
			return to ? (int32_t)to : c->quant.scale ? c->quant.scale->dtype : NMP_DT_FLOAT;
		}
		if (p->n_input == 0)
			break;
		name = p->input[0];
	}
	return c->tensor->dtype;
}

#define FALL_BACK(t, ...) (snprintf((t)->note, sizeof (t)->note, __VA_ARGS__), (t)->kind = LAYER_NONE, (t)->method = NMP_METHOD_MAGNITUDE)

/* Where weight ch's statistics come from; on a problem, a note and magnitude. */
static nmp_status resolve(const nmp_model *m, const nmp_scopes *sc, const nmp_choice *ch, nmp_method method, target *t,
			  nmp_error *err)
{
	const nmp_candidate *c = ch->cand;
	const nmp_tensor *w = c->tensor;
	const int64_t *dims = w->dims;
	const int rank = (int)w->n_dims;
	t->method = method;
	t->G = 1;
	t->S = 1;
	t->uses = calloc(c->n_uses ? c->n_uses : 1, sizeof *t->uses);
	if (!t->uses)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	layer_kind kind = LAYER_NONE;
	const char *kind_op = NULL;
	for (size_t u = 0; u < c->n_uses; u++) {
		const nmp_use *use = &c->uses[u];
		const Onnx__NodeProto *n = use->node;
		use_site *s = &t->uses[t->n_uses++];
		/* the integer ops of dynamic quantization compute what Conv and MatMul do, on a quantized input */
		const bool integer = strcmp(use->op, "ConvInteger") == 0 || strcmp(use->op, "MatMulInteger") == 0;
		const bool matmul = strcmp(use->op, "MatMul") == 0 || strcmp(use->op, "MatMulInteger") == 0;
		layer_kind k = LAYER_NONE;
		if (strcmp(use->op, "Conv") == 0 || strcmp(use->op, "ConvInteger") == 0)
			k = LAYER_CONV;
		else if (strcmp(use->op, "ConvTranspose") == 0)
			k = LAYER_DECONV;
		else if (matmul || strcmp(use->op, "Gemm") == 0)
			k = LAYER_LINEAR;
		if (k == LAYER_NONE) {
			FALL_BACK(t, "read by %s: pruned by magnitude", use->op);
			return NMP_OK;
		}
		if (kind != LAYER_NONE && k != kind) {
			FALL_BACK(t, "read by both %s and %s, which compute differently: pruned by magnitude", kind_op,
				  use->op);
			return NMP_OK;
		}
		kind = k;
		kind_op = use->op;
		s->node = n;
		int other = use->input == 0 ? 1 : 0;
		if (k == LAYER_CONV || k == LAYER_DECONV) { /* X [N, C, spatial...] */
			other = 0;
			s->chan_axis = 1;
		} else if (matmul) {
			s->chan_axis = use->input == 1 ? -1 : -2;
		} else {
			bool ta = nmp_node_attr_int(n, "transA", 0) != 0, tb = nmp_node_attr_int(n, "transB", 0) != 0;
			s->chan_axis = use->input == 1 ? (ta ? 0 : 1) : (tb ? 1 : 0);
		}
		if ((size_t)other >= n->n_input || !n->input[other][0]) {
			FALL_BACK(t, "its consumer has no data input: pruned by magnitude");
			return NMP_OK;
		}
		s->act = n->input[other];
		const int at = nmp_scopes_of(sc, n);
		if (integer) { /* the statistics are those of the float input that DynamicQuantizeLinear quantized */
			const Onnx__NodeProto *q = at < 0 ? NULL : nmp_scopes_producer(m, sc, at, s->act);
			if (!q || strcmp(q->op_type, "DynamicQuantizeLinear") != 0 || q->n_input < 1 ||
			    strcmp(q->output[0], s->act) != 0) {
				FALL_BACK(t, "its %s input does not come from DynamicQuantizeLinear: pruned by magnitude",
					  use->op);
				return NMP_OK;
			}
			s->act = q->input[0];
		}
		bool constant;
		const int def = at < 0 ? -1 : nmp_scopes_defining(m, sc, at, s->act, &constant);
		s->scope = at;
		s->outer = def != at;
		if (def < 0) {
			FALL_BACK(t, "its consumer's data input '%.80s' is defined nowhere: pruned by magnitude", s->act);
			return NMP_OK;
		}
		if (constant) {
			FALL_BACK(t, "its consumer's other input is a constant: pruned by magnitude");
			return NMP_OK;
		}
		char why[96];
		if (!nmp_scopes_tappable(sc, at, &s->stacked, why, sizeof why)) {
			FALL_BACK(t, "read inside %s: pruned by magnitude", why);
			return NMP_OK;
		}
		s->dtype = integer ? NMP_DT_FLOAT : compute_type(m, sc, at, c, n->input[use->input]);
		if (k == LAYER_CONV && method == NMP_METHOD_SPARSEGPT &&
		    !(c->axis == 1 && c->out_axis == 0 && carries_directly(m, sc, at, n->input[1], c->name))) {
			t->method = NMP_METHOD_WANDA;
			snprintf(t->note, sizeof t->note, "reaches its Conv through a Transpose: wanda, not sparsegpt");
		}
	}
	t->kind = kind;
	if (kind == LAYER_DECONV)
		for (size_t u = 0; u < t->n_uses; u++)
			if (nmp_node_attr_int(t->uses[u].node, "group", 1) != 1) {
				FALL_BACK(t, "read by a grouped ConvTranspose: pruned by magnitude");
				return NMP_OK;
			}
	if (kind == LAYER_LINEAR || kind == LAYER_DECONV) {
		t->C = t->cin_g = t->K = (uint64_t)dims[c->axis];
		t->cout_g = w->numel / t->K;
		/* a batched MatMul's slices read different inputs: one Hessian cannot serve them */
		if (kind == LAYER_LINEAR && method == NMP_METHOD_SPARSEGPT && (rank != 2 || c->out_axis < 0)) {
			t->method = NMP_METHOD_WANDA;
			snprintf(t->note, sizeof t->note, "a weight of rank %d: wanda, not sparsegpt", rank);
		}
	} else {
		int64_t groups = nmp_node_attr_int(t->uses[0].node, "group", 1);
		for (size_t u = 1; u < t->n_uses; u++)
			if (nmp_node_attr_int(t->uses[u].node, "group", 1) != groups) {
				FALL_BACK(t, "read by Conv nodes of different groups: pruned by magnitude");
				return NMP_OK;
			}
		if (rank < 3 || rank - 2 > MAX_SPATIAL || groups < 1 || c->out_axis < 0 ||
		    dims[c->out_axis] % groups != 0) {
			FALL_BACK(t, "a Conv weight of an unexpected shape: pruned by magnitude");
			return NMP_OK;
		}
		t->G = (uint64_t)groups;
		t->cin_g = (uint64_t)dims[c->axis];
		t->C = t->cin_g * t->G;
		t->cout_g = (uint64_t)dims[c->out_axis] / t->G;
		t->n_k = rank - 2;
		for (int d = 0; d < t->n_k; d++) {
			t->kdims[d] = dims[2 + d];
			t->S *= (uint64_t)dims[2 + d];
		}
		t->K = t->cin_g * t->S;
	}
	return NMP_OK;
}

/* ---- reducing activations ---------------------------------------------------------------------- */

/* The activation as fp32: its own buffer when it is fp32, else a converted copy in *owned. */
static const float *act_as_float(const nmp_host_tensor *x, float **owned)
{
	*owned = NULL;
	if (x->dtype == NMP_DT_FLOAT)
		return x->data;
	if (x->dtype != NMP_DT_DOUBLE && x->dtype != NMP_DT_FLOAT16 && x->dtype != NMP_DT_BFLOAT16)
		return NULL;
	float *out = malloc((x->numel ? x->numel : 1) * sizeof *out);
	if (!out)
		return NULL;
	for (uint64_t i = 0; i < x->numel; i++)
		out[i] = (float)nmp_host_value(x, i);
	*owned = out;
	return out;
}

/* (outer, C, inner) around the channel axis; false if it does not hold C channels. */
static bool split_axis(const nmp_host_tensor *x, int chan_axis, uint64_t C, uint64_t *outer, uint64_t *inner)
{
	int a = chan_axis < 0 ? x->rank + chan_axis : chan_axis;
	if (x->rank == 1 && chan_axis == -2)
		a = 0;
	if (a < 0 || a >= x->rank || (uint64_t)x->dims[a] != C)
		return false;
	*outer = *inner = 1;
	for (int k = 0; k < a; k++)
		*outer *= (uint64_t)x->dims[k];
	for (int k = a + 1; k < x->rank; k++)
		*inner *= (uint64_t)x->dims[k];
	return true;
}

static void add_sq(target *t, const float *x, uint64_t outer, uint64_t inner)
{
	for (uint64_t o = 0; o < outer; o++)
		for (uint64_t c = 0; c < t->C; c++) {
			const float *p = x + (o * t->C + c) * inner;
			double s = 0;
			for (uint64_t i = 0; i < inner; i++)
				s += (double)p[i] * p[i];
			t->sq[c] += s;
		}
}

/*
 * H += rows^T rows for n input vectors of length K: the products of a batch
 * in single precision (twice the speed; the activations are fp32 anyway),
 * their sum over batches in double.
 */
static void add_gram(double *H, float *gram, uint64_t K, const float *rows, uint64_t n)
{
	if (!n)
		return;
	nmp_ssyrk_upper_at_a((int)K, (int)n, rows, (int)K, gram, (int)K);
	for (uint64_t i = 0; i < K; i++)
		for (uint64_t j = i; j < K; j++)
			H[i * K + j] += gram[i * K + j];
}

/* Adds the gathered vectors to H (of group grp): few large updates run far faster than many small ones. */
static void flush_rows(target *t, uint64_t grp)
{
	add_gram(t->H + grp * t->K * t->K, t->gram, t->K, t->rows, t->n_rows);
	t->n_rows = 0;
}

/* The next free vector of the buffer, flushing into group grp's H when it is full. */
static float *next_row(target *t, uint64_t grp)
{
	if (t->n_rows == t->cap_rows)
		flush_rows(t, grp);
	return t->rows + t->n_rows++ * t->K;
}

static void linear_gram(target *t, const float *x, uint64_t outer, uint64_t inner)
{
	const uint64_t K = t->K, tokens = outer * inner;
	for (uint64_t tok = 0; tok < tokens; tok++) {
		uint64_t o = tok / inner, i = tok % inner;
		float *row = next_row(t, 0);
		if (inner == 1)
			memcpy(row, x + o * K, K * sizeof *row);
		else
			for (uint64_t c = 0; c < K; c++)
				row[c] = x[(o * K + c) * inner + i];
	}
}

typedef struct conv_geom {
	int nd;
	int64_t in[MAX_SPATIAL], out[MAX_SPATIAL], k[MAX_SPATIAL];
	int64_t stride[MAX_SPATIAL], dil[MAX_SPATIAL], pad[MAX_SPATIAL]; /* pad: at the beginning */
	uint64_t positions;              /* output positions per image */
} conv_geom;

static void attr_ints(const Onnx__NodeProto *n, const char *name, int nd, int64_t *out, int64_t dflt, size_t want)
{
	const Onnx__AttributeProto *a = nmp_node_attr(n, name);
	for (int d = 0; d < (int)want; d++)
		out[d] = a && a->n_ints == want ? a->ints[d] : dflt;
	(void)nd;
}

static bool conv_geometry(const target *t, const Onnx__NodeProto *n, const nmp_host_tensor *x, conv_geom *g)
{
	g->nd = t->n_k;
	if (x->rank != 2 + g->nd)
		return false;
	int64_t pads[2 * MAX_SPATIAL];
	attr_ints(n, "strides", g->nd, g->stride, 1, (size_t)g->nd);
	attr_ints(n, "dilations", g->nd, g->dil, 1, (size_t)g->nd);
	attr_ints(n, "pads", g->nd, pads, 0, 2 * (size_t)g->nd);
	const Onnx__AttributeProto *ap = nmp_node_attr(n, "auto_pad");
	char mode[16] = "NOTSET";
	if (ap && ap->has_s)
		snprintf(mode, sizeof mode, "%.*s", (int)ap->s.len, (const char *)ap->s.data);
	g->positions = 1;
	for (int d = 0; d < g->nd; d++) {
		g->in[d] = x->dims[2 + d];
		g->k[d] = t->kdims[d];
		if (g->stride[d] < 1 || g->dil[d] < 1)
			return false;
		int64_t span = g->dil[d] * (g->k[d] - 1) + 1;
		if (strcmp(mode, "SAME_UPPER") == 0 || strcmp(mode, "SAME_LOWER") == 0) {
			g->out[d] = (g->in[d] + g->stride[d] - 1) / g->stride[d];
			int64_t total = (g->out[d] - 1) * g->stride[d] + span - g->in[d];
			if (total < 0)
				total = 0;
			g->pad[d] = strcmp(mode, "SAME_UPPER") == 0 ? total / 2 : total - total / 2;
		} else {
			int64_t b = strcmp(mode, "VALID") == 0 ? 0 : pads[d], e = strcmp(mode, "VALID") == 0 ? 0 : pads[g->nd + d];
			g->pad[d] = b;
			g->out[d] = (g->in[d] + b + e - span) / g->stride[d] + 1;
		}
		if (g->out[d] < 1)
			return false;
		g->positions *= (uint64_t)g->out[d];
	}
	return true;
}

/*
 * The unfolded patches of every image, per group: input k = kernel position *
 * cin_g + channel.  The activation is first laid out channels last, so that
 * each kernel position of a patch is one contiguous run of channels.
 */
static nmp_status conv_gram(target *t, const float *x, const nmp_host_tensor *xt, const conv_geom *g)
{
	const uint64_t N = (uint64_t)xt->dims[0], C = t->C, cin_g = t->cin_g;
	uint64_t plane = 1;
	for (int d = 0; d < g->nd; d++)
		plane *= (uint64_t)g->in[d];
	float *cl = malloc((N * plane * C + 1) * sizeof *cl);
	int64_t *kpos = malloc((t->S ? t->S : 1) * MAX_SPATIAL * sizeof *kpos);
	if (!cl || !kpos) {
		free(cl);
		free(kpos);
		return NMP_ERR_NOMEM;
	}
	for (uint64_t n = 0; n < N; n++)
		for (uint64_t c = 0; c < C; c++)
			for (uint64_t p = 0; p < plane; p++)
				cl[(n * plane + p) * C + c] = x[(n * C + c) * plane + p];
	for (uint64_t s = 0; s < t->S; s++) { /* each kernel position's offsets, dilated */
		uint64_t r = s;
		for (int d = g->nd - 1; d >= 0; d--) {
			kpos[s * MAX_SPATIAL + (uint64_t)d] = (int64_t)(r % (uint64_t)g->k[d]) * g->dil[d];
			r /= (uint64_t)g->k[d];
		}
	}
	for (uint64_t grp = 0; grp < t->G; grp++) {
		for (uint64_t n = 0; n < N; n++)
			for (uint64_t p = 0; p < g->positions; p++) {
				int64_t base[MAX_SPATIAL];
				uint64_t rem = p;
				for (int d = g->nd - 1; d >= 0; d--) {
					base[d] = (int64_t)(rem % (uint64_t)g->out[d]) * g->stride[d] - g->pad[d];
					rem /= (uint64_t)g->out[d];
				}
				float *row = next_row(t, grp);
				for (uint64_t s = 0; s < t->S; s++) {
					uint64_t off = 0, mul = 1;
					bool inside = true;
					for (int d = g->nd - 1; d >= 0 && inside; d--) {
						int64_t at = base[d] + kpos[s * MAX_SPATIAL + (uint64_t)d];
						inside = at >= 0 && at < g->in[d];
						off += (uint64_t)at * mul;
						mul *= (uint64_t)g->in[d];
					}
					if (inside)
						memcpy(row + s * cin_g, cl + (n * plane + off) * C + grp * cin_g, cin_g * sizeof *row);
					else
						memset(row + s * cin_g, 0, cin_g * sizeof *row);
				}
			}
		if (t->G > 1) /* the buffer holds one group's vectors at a time */
			flush_rows(t, grp);
	}
	free(cl);
	free(kpos);
	return NMP_OK;
}

/* Reduces one activation of one use into its target's statistics; errors name the model and the node. */
static nmp_status reduce(const nmp_plan *plan, target *t, const use_site *u, const nmp_host_tensor *xt, bool first_use,
			 nmp_error *err)
{
	const char *path = plan->model->path, *node = u->node->name ? u->node->name : "";
	if (xt->numel == 0) /* an empty activation, or an If branch this run did not take */
		return NMP_OK;
	float *owned;
	const float *x = act_as_float(xt, &owned);
	if (!x && nmp_host_is_floating(xt->dtype))
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: activation '%s': out of memory", path, u->act);
	if (!x)
		return nmp_error_set(err, NMP_ERR_RUNTIME, "%s: activation '%s' is %s: statistics need a floating type",
				     path, u->act, nmp_dtype_name(xt->dtype));
	/* a loop's iterations stack on leading axes: a Conv's join its batch, a Gemm's channel axis moves past them */
	nmp_host_tensor merged;
	int chan_axis = t->kind == LAYER_CONV ? 1 : u->chan_axis;
	if (u->stacked && t->kind == LAYER_CONV && xt->rank > u->stacked) {
		merged = *xt;
		merged.rank = xt->rank - u->stacked;
		for (int d = 1; d <= u->stacked; d++)
			merged.dims[0] *= xt->dims[d];
		memmove(merged.dims + 1, xt->dims + 1 + u->stacked, sizeof *merged.dims * (size_t)(merged.rank - 1));
		xt = &merged;
	} else if (chan_axis >= 0 && t->kind != LAYER_CONV) {
		chan_axis += u->stacked;
	}
	uint64_t outer, inner, tokens = 0;
	nmp_status s = NMP_OK;
	if (!split_axis(xt, chan_axis, t->C, &outer, &inner)) {
		s = nmp_error_set(err, NMP_ERR_RUNTIME,
				  "%s: node '%s': activation '%s' of rank %d does not hold the %llu channels its weight reads",
				  path, node, u->act, xt->rank, (unsigned long long)t->C);
	} else {
		if (t->sq)
			add_sq(t, x, outer, inner);
		tokens = outer * inner;
		if (t->H) {
			conv_geom g;
			if (t->kind != LAYER_CONV)
				linear_gram(t, x, outer, inner);
			else if (!conv_geometry(t, u->node, xt, &g))
				s = nmp_error_set(err, NMP_ERR_RUNTIME, "%s: node '%s': Conv geometry does not fit activation '%s'",
						  path, node, u->act);
			else if (conv_gram(t, x, xt, &g) != NMP_OK)
				s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: activation '%s': out of memory", path, u->act);
			else
				tokens = (uint64_t)xt->dims[0] * g.positions;
		}
	}
	if (first_use)
		t->tokens += tokens;
	free(owned);
	return s;
}

/* ---- running the samples ----------------------------------------------------------------------- */

static uint64_t stats_bytes(const target *t)
{
	return t->method == NMP_METHOD_SPARSEGPT ?
		       t->G * t->K * t->K * sizeof(double) + t->K * t->K * sizeof(float) + t->C * sizeof(double) + GRAM_BUFFER :
						  t->C * sizeof(double);
}

static nmp_status alloc_stats(target *t, nmp_error *err)
{
	t->sq = calloc(t->C ? t->C : 1, sizeof *t->sq);
	if (t->method == NMP_METHOD_SPARSEGPT) {
		t->H = calloc(t->G * t->K * t->K, sizeof *t->H);
		t->cap_rows = GRAM_BUFFER / (t->K * sizeof(float));
		t->cap_rows = t->cap_rows < 64 ? 64 : t->cap_rows;
		t->rows = malloc(t->cap_rows * t->K * sizeof *t->rows);
		t->gram = malloc(t->K * t->K * sizeof *t->gram);
	}
	if (!t->sq || (t->method == NMP_METHOD_SPARSEGPT && (!t->H || !t->rows || !t->gram)))
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory for calibration statistics (%llu bytes)",
				     (unsigned long long)stats_bytes(t));
	return NMP_OK;
}

static bool is_graph_input(const nmp_model_input *in, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(in[i].name, name) == 0)
			return true;
	return false;
}

/* One pass over the data for the active targets. */
static nmp_status run_pass(nmp_calib *c, nmp_ort *ort, const nmp_model_input *inputs, size_t n_inputs,
			   nmp_error *err)
{
	nmp_model *m = c->plan->model;
	const char **outs = NULL, **extra = NULL;
	size_t n_outs = 0, n_extra = 0, cap = 0;
	for (size_t i = 0; i < c->n; i++)
		cap += c->t[i].active ? c->t[i].n_uses : 0;
	outs = calloc(cap + 1, sizeof *outs);
	extra = calloc(cap + 1, sizeof *extra);
	nmp_taps *taps = NULL; /* the model stays tapped while the pass runs: nothing reads its graph meanwhile */
	nmp_status s = outs && extra ? nmp_taps_open(m, &c->scopes, &taps, err) :
				       nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	const Onnx__GraphProto *g = m->proto->graph;
	for (size_t i = 0; s == NMP_OK && i < c->n; i++)
		for (size_t u = 0; s == NMP_OK && c->t[i].active && u < c->t[i].n_uses; u++) {
			use_site *us = &c->t[i].uses[u];
			s = nmp_taps_add(taps, us->scope, us->act, us->outer, us->dtype, &us->fetch, err);
			const char *a = us->fetch;
			if (s != NMP_OK || (us->scope == 0 && is_graph_input(inputs, n_inputs, a)))
				continue;
			bool seen = false;
			for (size_t k = 0; k < n_outs && !seen; k++)
				seen = strcmp(outs[k], a) == 0;
			if (seen)
				continue;
			outs[n_outs++] = a;
			bool declared = false;
			for (size_t k = 0; k < g->n_output && !declared; k++)
				declared = strcmp(g->output[k]->name, a) == 0;
			if (!declared)
				extra[n_extra++] = a;
		}
	uint8_t *bytes = NULL;
	size_t len = 0;
	nmp_ort_session *sess = NULL;
	nmp_calib_data *data = NULL;
	/* weights decided in earlier stages run as they will be written, and so do the tensors permuted */
	const void **payloads = calloc(m->n_tensors + 1, sizeof *payloads);
	nmp_view *permuted = calloc(m->n_tensors + 1, sizeof *permuted);
	if (s == NMP_OK && (!payloads || !permuted))
		s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	for (size_t i = 0; s == NMP_OK && i < c->n; i++)
		if (c->t[i].decided)
			payloads[c->plan->sel->choices[i].cand->tensor - m->tensors] = c->t[i].payload;
	for (size_t i = 0; s == NMP_OK && n_outs && c->o.channels && i < m->n_tensors; i++) {
		if (payloads[i] || !nmp_channels_touches(c->o.channels, i))
			continue;
		s = nmp_model_view(m, &m->tensors[i], &permuted[i], err);
		if (s == NMP_OK)
			s = nmp_channels_view(c->o.channels, m, &m->tensors[i], &permuted[i], err);
		payloads[i] = permuted[i].data;
	}
	/* activations that are all graph inputs need no run of the model */
	if (s == NMP_OK && n_outs)
		s = nmp_model_serialize(m, payloads, extra, n_extra, &bytes, &len, err);
	for (size_t i = 0; permuted && i < m->n_tensors; i++)
		nmp_view_release(&permuted[i]);
	free(permuted);
	if (s == NMP_OK && n_outs)
		s = nmp_ort_session_create(ort, bytes, len, m->path, c->o.threads, &sess, err);
	free(bytes);
	free(payloads);
	if (s == NMP_OK)
		s = nmp_calib_data_open(c->o.data, inputs, n_inputs, c->o.max_samples, &data, err);
	/*
	 * Samples run in batches where the data and the model allow it (the
	 * statistics reduce over the batch axis like any other); a model that
	 * fails on a batch (a Reshape that fixes the batch, say) goes on one
	 * sample at a time.
	 */
	size_t batch = s == NMP_OK ? nmp_calib_data_batch_limit(data, 256u << 10) : 1;
	const size_t total = s == NMP_OK ? nmp_calib_data_count(data) : 0;
	for (size_t k = 0; s == NMP_OK && k < total;) {
		const char *const *names;
		const nmp_host_tensor *in;
		size_t n_in, count = total - k < batch ? total - k : batch;
		nmp_ort_outputs res = { 0 };
		s = nmp_calib_data_batch(data, k, count, &names, &in, &n_in, err);
		if (s == NMP_OK && sess) {
			nmp_error batch_err = { 0 };
			s = nmp_ort_run(sess, n_in, names, in, n_outs, outs, &res, count > 1 ? &batch_err : err);
			if (s != NMP_OK && count > 1) {
				batch = 1;
				s = NMP_OK;
				continue;
			}
		}
		for (size_t i = 0; s == NMP_OK && i < c->n; i++)
			for (size_t u = 0; s == NMP_OK && c->t[i].active && u < c->t[i].n_uses; u++) {
				const char *a = c->t[i].uses[u].fetch;
				const nmp_host_tensor *x = NULL;
				for (size_t q = 0; q < n_outs && !x; q++)
					if (strcmp(outs[q], a) == 0)
						x = &res.t[q];
				for (size_t q = 0; q < n_in && !x; q++)
					if (strcmp(names[q], a) == 0)
						x = &in[q];
				if (!x)
					s = nmp_error_set(err, NMP_ERR_USAGE, "%s: sample %zu does not feed input '%s'", c->o.data, k, a);
				else
					s = reduce(c->plan, &c->t[i], &c->t[i].uses[u], x, u == 0, err);
			}
		if (sess && res.values)
			nmp_ort_outputs_release(sess, &res);
		k += count;
	}
	if (s == NMP_OK)
		c->samples = nmp_calib_data_count(data);
	nmp_calib_data_free(&data);
	nmp_ort_session_free(&sess);
	nmp_taps_close(&taps);
	free(outs);
	free(extra);
	return s;
}

static void mirror(double *H, uint64_t G, uint64_t K)
{
	for (uint64_t g = 0; g < G; g++)
		for (uint64_t i = 0; i < K; i++)
			for (uint64_t j = 0; j < i; j++)
				H[g * K * K + i * K + j] = H[g * K * K + j * K + i];
}

static nmp_status write_stats(const nmp_calib *c, const char *path, nmp_error *err);
static nmp_status decide(nmp_calib *c, size_t ci, nmp_error *err);

static bool reads_in_loop(const target *t)
{
	for (size_t u = 0; u < t->n_uses; u++)
		if (t->uses[u].stacked)
			return true;
	return false;
}

/*
 * After a pass that failed with loop values tapped (a loop whose values
 * change shape from one iteration to the next cannot stack them): the
 * active weights read inside a loop fall back to magnitude, saying why, and
 * the others' statistics start again.  How many stay active.
 */
static size_t unstack(nmp_calib *c, const char *why)
{
	size_t left = 0;
	for (size_t i = 0; i < c->n; i++) {
		target *t = &c->t[i];
		if (!t->active)
			continue;
		t->tokens = 0;
		t->n_rows = 0;
		if (reads_in_loop(t)) {
			free(t->sq), free(t->H), free(t->rows), free(t->gram);
			t->sq = t->H = NULL, t->rows = t->gram = NULL;
			t->active = false;
			FALL_BACK(t, "read inside a loop whose values ONNX Runtime could not stack (%.70s): pruned by magnitude",
				  why);
			continue;
		}
		memset(t->sq, 0, t->C * sizeof *t->sq);
		if (t->H)
			memset(t->H, 0, t->G * t->K * t->K * sizeof *t->H);
		left++;
	}
	return left;
}

nmp_status nmp_calibrate(const nmp_plan *plan, const nmp_calib_opts *o, nmp_calib **out, nmp_error *err)
{
	*out = NULL;
	double t0 = nmp_now();
	NMP_TRY(nmp_calib_check(plan, o->method, err));
	nmp_calib *c = calloc(1, sizeof *c);
	if (!c)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	c->plan = plan;
	c->o = *o;
	if (c->o.damp <= 0)
		c->o.damp = 0.01;
	if (!c->o.memory_budget)
		c->o.memory_budget = UINT64_C(4) << 30;
	c->n = plan->sel->n;
	c->t = calloc(c->n ? c->n : 1, sizeof *c->t);
	nmp_status s = c->t ? NMP_OK : nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	if (s == NMP_OK)
		s = nmp_scopes_build(plan->model, &c->scopes, err);
	for (size_t i = 0; s == NMP_OK && i < c->n; i++)
		if (plan->sel->choices[i].eligible)
			s = resolve(plan->model, &c->scopes, &plan->sel->choices[i], o->method, &c->t[i], err);

	nmp_model_input *inputs = NULL;
	size_t n_inputs = 0;
	nmp_ort *ort = NULL;
	if (s == NMP_OK)
		s = nmp_model_inputs(plan->model, &inputs, &n_inputs, err);
	if (s == NMP_OK) { /* the data is checked before the runtime is looked for */
		nmp_calib_data *probe = NULL;
		s = nmp_calib_data_open(o->data, inputs, n_inputs, o->max_samples, &probe, err);
		nmp_calib_data_free(&probe);
	}
	if (s == NMP_OK)
		s = nmp_ort_open(o->ort_library, &ort, err);
	if (s == NMP_OK)
		snprintf(c->runtime, sizeof c->runtime, "ONNX Runtime %s", nmp_ort_version(ort));
	if (s == NMP_OK && o->method == NMP_METHOD_SPARSEGPT)
		s = nmp_blas_load(o->threads, err);
	/*
	 * Stages, in graph order: each collects its weights' statistics on the
	 * model with every earlier stage's weights already pruned (and rebuilt),
	 * then decides them, so later layers are calibrated on the inputs they
	 * will see.  A stage also ends where its statistics would pass the budget.
	 */
	size_t n_elig = 0;
	for (size_t i = 0; i < c->n; i++)
		n_elig += plan->sel->choices[i].eligible;
	size_t stages = c->o.stages ? c->o.stages : NMP_CALIB_STAGES;
	size_t per_stage = n_elig ? (n_elig + stages - 1) / stages : 1;
	size_t next = 0;
	while (s == NMP_OK && next < c->n) {
		uint64_t used = 0;
		size_t first = next, taken = 0, active = 0;
		for (size_t i = 0; i < c->n; i++)
			c->t[i].active = false;
		for (; next < c->n && taken < per_stage; next++) {
			target *t = &c->t[next];
			if (!plan->sel->choices[next].eligible)
				continue;
			if (t->kind != LAYER_NONE) {
				if (active && used + stats_bytes(t) > c->o.memory_budget)
					break;
				if ((s = alloc_stats(t, err)) != NMP_OK)
					break;
				t->active = true;
				used += stats_bytes(t);
				active++;
			}
			taken++;
		}
		bool loops = false;
		for (size_t i = 0; i < c->n; i++)
			loops |= c->t[i].active && reads_in_loop(&c->t[i]);
		if (s == NMP_OK && active) {
			nmp_error failed = { 0 };
			s = run_pass(c, ort, inputs, n_inputs, &failed);
			if (s != NMP_OK && loops) {
				const char *why = strstr(failed.message, "Status Message: ");
				active = unstack(c, why ? why + strlen("Status Message: ") : failed.message);
				s = active ? run_pass(c, ort, inputs, n_inputs, err) : NMP_OK;
			} else if (s != NMP_OK) {
				*err = failed;
			}
		}
		if (s == NMP_OK && active)
			c->passes++;
		for (size_t i = first; s == NMP_OK && i < next; i++) {
			target *t = &c->t[i];
			if (!plan->sel->choices[i].eligible)
				continue;
			if (t->H) {
				flush_rows(t, 0);
				free(t->rows);
				free(t->gram);
				t->rows = NULL;
				t->gram = NULL;
				mirror(t->H, t->G, t->K);
			}
			s = decide(c, i, err);
			if (!o->stats_path) { /* what later stages need is the decision, not the statistics */
				free(t->H);
				t->H = NULL;
			}
		}
	}
	if (s == NMP_OK && o->stats_path)
		s = write_stats(c, o->stats_path, err);
	for (size_t i = 0; i < c->n; i++)
		if (c->t[i].kind != LAYER_NONE && c->t[i].tokens > c->tokens)
			c->tokens = c->t[i].tokens;
	free(inputs);
	nmp_ort_close(&ort);
	c->seconds = nmp_now() - t0;
	if (s != NMP_OK) {
		nmp_calib_free(&c);
		return s;
	}
	*out = c;
	return NMP_OK;
}

void nmp_calib_free(nmp_calib **pc)
{
	nmp_calib *c = *pc;
	if (!c)
		return;
	for (size_t i = 0; c->t && i < c->n; i++) {
		free(c->t[i].uses);
		free(c->t[i].sq);
		free(c->t[i].H);
		free(c->t[i].rows);
		free(c->t[i].gram);
		free(c->t[i].mask);
		free(c->t[i].payload);
	}
	free(c->t);
	nmp_scopes_free(&c->scopes);
	free(c);
	*pc = NULL;
}

nmp_method nmp_calib_method(const nmp_calib *c)
{
	return c->o.method;
}

size_t nmp_calib_samples(const nmp_calib *c)
{
	return c->samples;
}

uint64_t nmp_calib_tokens(const nmp_calib *c)
{
	return c->tokens;
}

double nmp_calib_seconds(const nmp_calib *c)
{
	return c->seconds;
}

size_t nmp_calib_passes(const nmp_calib *c)
{
	return c->passes;
}

const nmp_calib_weight_result *nmp_calib_weight(const nmp_calib *c, size_t ci)
{
	return ci < c->n && c->t[ci].decided ? &c->t[ci].cr : NULL;
}

const char *nmp_calib_runtime(const nmp_calib *c)
{
	return c->runtime;
}

/* ---- the statistics as safetensors (tests compare them with an independent reference) ----------- */

static nmp_status write_stats(const nmp_calib *c, const char *path, nmp_error *err)
{
	json_t *hdr = json_object();
	uint64_t at = 0;
	json_t *meta = json_object();
	for (size_t i = 0; i < c->n; i++) {
		const target *t = &c->t[i];
		if (t->kind == LAYER_NONE || !t->sq)
			continue;
		const char *name = c->plan->sel->choices[i].cand->name;
		char key[1100];
		snprintf(key, sizeof key, "%s.sq", name);
		json_object_set_new(hdr, key, json_pack("{s:s,s:[I],s:[I,I]}", "dtype", "F64", "shape", (json_int_t)t->C,
							 "data_offsets", (json_int_t)at, (json_int_t)(at + t->C * 8)));
		at += t->C * 8;
		if (t->H) {
			snprintf(key, sizeof key, "%s.H", name);
			uint64_t nb = t->G * t->K * t->K * 8;
			json_object_set_new(hdr, key, json_pack("{s:s,s:[I,I,I],s:[I,I]}", "dtype", "F64", "shape",
								 (json_int_t)t->G, (json_int_t)t->K, (json_int_t)t->K,
								 "data_offsets", (json_int_t)at, (json_int_t)(at + nb)));
			at += nb;
		}
		char tok[32];
		snprintf(tok, sizeof tok, "%llu", (unsigned long long)t->tokens);
		snprintf(key, sizeof key, "%s.tokens", name);
		json_object_set_new(meta, key, json_string(tok));
	}
	json_object_set_new(hdr, "__metadata__", meta);
	char *text = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(hdr);
	FILE *f = text ? fopen(path, "wb") : NULL;
	if (!f) {
		free(text);
		return nmp_error_errno(err, errno, "cannot write", path);
	}
	size_t len = strlen(text), padded = (len + 7) / 8 * 8;
	uint8_t head[8];
	for (int b = 0; b < 8; b++)
		head[b] = (uint8_t)((uint64_t)padded >> (8 * b));
	fwrite(head, 1, 8, f);
	fwrite(text, 1, len, f);
	for (size_t k = len; k < padded; k++)
		fputc(' ', f);
	free(text);
	/* the same order as the header's offsets */
	for (size_t i = 0; i < c->n; i++) {
		const target *t = &c->t[i];
		if (t->kind == LAYER_NONE || !t->sq)
			continue;
		fwrite(t->sq, 8, t->C, f);
		if (t->H)
			fwrite(t->H, 8, t->G * t->K * t->K, f);
	}
	if (fclose(f) != 0)
		return nmp_error_errno(err, errno, "cannot write", path);
	return NMP_OK;
}

/* ---- choosing and applying the masks ------------------------------------------------------------ */

static uint16_t f32_to_half(float f, bool bf16)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	if (bf16) /* round to nearest even on the upper half (no NaN reaches here) */
		return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
	uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
	if (ax >= 0x477ff000u) /* 65520 and above round to infinity */
		return (uint16_t)(sign | 0x7c00u);
	if (ax < 0x38800000u) { /* below 2^-14: a subnormal half, exact scaling then round to nearest even */
		float v;
		memcpy(&v, &ax, 4);
		return (uint16_t)(sign | (uint32_t)lrintf(v * 16777216.0f));
	}
	uint32_t h = ((((ax >> 23) - 127 + 15)) << 10) | ((ax & 0x7fffffu) >> 13), rem = ax & 0x1fffu;
	if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
		h++;
	return (uint16_t)(sign | h);
}

/* Element i of a quantized weight: its zero point, and its scale. */
static int quant_zero(const nmp_mask_tensor *t, const nmp_quant_geom *qg, uint64_t i)
{
	return t->quant->zero_point ? nmp_quant_value(t->dtype, t->quant->zero_point, nmp_quant_index(qg, i)) : 0;
}

static double quant_scale(const nmp_mask_tensor *t, const nmp_quant_geom *qg, uint64_t i)
{
	return nmp_quant_scale(t->quant->scale, t->quant->scale_dtype, nmp_quant_index(qg, i));
}

static double elem_value(const nmp_mask_tensor *t, const uint8_t *in, uint64_t i, const nmp_quant_geom *qg)
{
	if (!t->quant)
		return nmp_host_value(&(nmp_host_tensor){ .dtype = t->dtype, .data = (void *)in }, i);
	return (double)(nmp_quant_value(t->dtype, in, i) - quant_zero(t, qg, i)) * quant_scale(t, qg, i);
}

/* Stores v, a value of t's type or, quantized, one on its grid: round(v / scale) + zero point. */
static void store_value(const nmp_mask_tensor *t, uint64_t i, double v, const nmp_quant_geom *qg)
{
	uint8_t *d = t->data;
	if (t->quant) {
		double zp = quant_zero(t, qg, i), scale = quant_scale(t, qg, i);
		double q = scale != 0 ? nearbyint(v / scale) + zp : zp;
		d[i] = (uint8_t)(t->dtype == NMP_DT_INT8 ? (int8_t)q : (uint8_t)q); /* the grid's range: no clamp */
		return;
	}
	switch (t->dtype) {
	case NMP_DT_FLOAT: { float f = (float)v; memcpy(d + 4 * i, &f, 4); break; }
	case NMP_DT_DOUBLE: memcpy(d + 8 * i, &v, 8); break;
	case NMP_DT_FLOAT16:
	case NMP_DT_BFLOAT16: {
		uint16_t h = f32_to_half((float)v, t->dtype == NMP_DT_BFLOAT16);
		memcpy(d + 2 * i, &h, 2);
		break;
	}
	default: NMP_ASSERT(0);
	}
}

/* Zeroes (or sets to the zero point) what the mask prunes. */
static void apply_mask(const nmp_mask_tensor *t, uint64_t numel, const uint8_t *mask, const nmp_quant_geom *qg)
{
	uint8_t *d = t->data;
	const unsigned eb = nmp_dtype_bits(t->dtype) / 8;
	for (uint64_t i = 0; i < numel; i++) {
		if (mask[i])
			continue;
		if (t->quant)
			d[i] = (uint8_t)quant_zero(t, qg, i);
		else
			memset(d + (uint64_t)eb * i, 0, eb);
	}
}

/* Flat index of element (output o, input k) of a group's layer. */
static uint64_t layer_index(const target *t, const nmp_mask_tensor *w, uint64_t grp, uint64_t o, uint64_t k)
{
	if (t->kind == LAYER_CONV) { /* [Cout, cin_g, spatial...], k = s * cin_g + c */
		uint64_t s = k / t->cin_g, ch = k % t->cin_g, oo = grp * t->cout_g + o;
		return (oo * t->cin_g + ch) * t->S + s;
	}
	/* o enumerates the other axes in their order: (before the group axis, after it) */
	uint64_t after = 1;
	for (int d = w->rank - 1; d > w->axis; d--)
		after *= (uint64_t)w->dims[d];
	return ((o / after) * t->K + k) * after + o % after;
}

/* The input channel element i reads. */
static uint64_t channel_of(const target *t, const nmp_mask_tensor *w, uint64_t i)
{
	uint64_t stride_a = 1, stride_o = 1;
	for (int d = w->rank - 1; d > w->axis; d--)
		stride_a *= (uint64_t)w->dims[d];
	uint64_t a = (i / stride_a) % (uint64_t)w->dims[w->axis];
	if (t->G == 1 || w->out_axis < 0)
		return a;
	for (int d = w->rank - 1; d > w->out_axis; d--)
		stride_o *= (uint64_t)w->dims[d];
	uint64_t o = (i / stride_o) % (uint64_t)w->dims[w->out_axis];
	return (o / t->cout_g) * t->cin_g + a;
}

static nmp_status wanda_mask(target *t, nmp_engine *e, const nmp_mask_tensor *w, const nmp_pattern *p, const float *mag,
			     uint64_t numel, const uint8_t *mask_mag, uint8_t *mask, nmp_calib_weight_result *cr,
			     nmp_error *err)
{
	float *score = malloc(numel * sizeof *score);
	if (!score)
		return nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory", w->name);
	double total = 0, kept_mag = 0;
	for (uint64_t i = 0; i < numel; i++) {
		double norm = sqrt(t->sq[channel_of(t, w, i)]);
		score[i] = norm > 0 ? (float)((double)mag[i] * norm) : 0.0f; /* an input never active cannot matter */
		total += score[i];
		kept_mag += mask_mag[i] ? score[i] : 0;
	}
	nmp_mask_tensor st = { .name = w->name, .data = score, .dtype = NMP_DT_FLOAT, .rank = w->rank, .dims = w->dims,
			       .axis = w->axis, .out_axis = w->out_axis };
	nmp_mask_stats ss;
	nmp_status s = nmp_engine_run(e, &st, p, NMP_MASK_DRY, mask, &ss, err);
	if (s == NMP_OK) {
		cr->score_kept = nmp_report_ratio(ss.l1_kept, total);
		cr->score_kept_magnitude = nmp_report_ratio(kept_mag, total);
	}
	free(score);
	return s;
}

/*
 * One group's sweep: on the GPU when the engine is CUDA's, else (or when
 * CUDA or cuBLAS fails) on the CPU, which the note then says.
 */
static nmp_status solve(nmp_engine *e, double *W, uint64_t R, uint64_t K, double *H, const double *Hg, double damp,
			const nmp_pattern *p, uint64_t before, const nmp_sgpt_grid *grid, uint8_t *m,
			nmp_calib_weight_result *cr, const char *name, nmp_error *err)
{
	if (strcmp(nmp_engine_name(e), "cuda") == 0) {
		double *W0 = malloc(R * K * sizeof *W0);
		if (!W0)
			return nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory", name);
		memcpy(W0, W, R * K * sizeof *W0);
		nmp_error gpu_err = { 0 };
		nmp_status s = nmp_cuda_sparsegpt_solve(W, R, K, H, damp, p, before, grid, m, &cr->damp, name, &gpu_err);
		if (s != NMP_ERR_DEVICE) {
			free(W0);
			if (s != NMP_OK)
				*err = gpu_err;
			return s;
		}
		snprintf(cr->note, sizeof cr->note, "sparsegpt on the CPU: %.100s", gpu_err.message);
		memcpy(W, W0, R * K * sizeof *W0); /* the CPU starts again from the weights and the Hessian */
		memcpy(H, Hg, K * K * sizeof *H);
		free(W0);
	}
	return nmp_sparsegpt_solve(W, R, K, H, damp, p, before, grid, m, &cr->damp, name, err);
}

/*
 * recon receives the reconstructed weights in flat order: values of the
 * weight's type, or for a quantized weight the dequantized values on its
 * grid (its scales and zero points, the integer type's range).
 */
static nmp_status sparsegpt_mask(target *t, nmp_engine *e, const nmp_mask_tensor *w, const nmp_pattern *p,
				 const uint8_t *in,
				 const nmp_quant_geom *qg, const uint8_t *mask_mag, uint8_t *mask, double *recon,
				 double damp, nmp_calib_weight_result *cr, nmp_error *err)
{
	const uint64_t R = t->cout_g, K = t->K;
	const nmp_quant_params *qp = w->quant;
	double *W = malloc(R * K * sizeof *W), *D = malloc(R * K * sizeof *D), *H = malloc(K * K * sizeof *H);
	double *gs = qp ? malloc(R * K * sizeof *gs) : NULL, *gz = qp ? malloc(R * K * sizeof *gz) : NULL;
	uint8_t *m = malloc(R * K);
	nmp_status s = W && D && H && m && (!qp || (gs && gz)) ? NMP_OK :
				nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory", w->name);
	const bool int8 = w->dtype == NMP_DT_INT8;
	const nmp_sgpt_grid grid = { .scale = gs, .zero = gz, .qmin = int8 ? -128 : 0, .qmax = int8 ? 127 : 255 };
	double err_sq = 0, err_mag = 0, base = 0;
	for (uint64_t grp = 0; s == NMP_OK && grp < t->G; grp++) {
		const double *Hg = t->H + grp * K * K;
		for (uint64_t o = 0; o < R; o++)
			for (uint64_t k = 0; k < K; k++) {
				uint64_t fi = layer_index(t, w, grp, o, k);
				W[o * K + k] = elem_value(w, in, fi, qg);
				if (!qp)
					continue;
				gs[o * K + k] = quant_scale(w, qg, fi);
				gz[o * K + k] = quant_zero(w, qg, fi);
			}
		base += nmp_sparsegpt_output_error(W, R, K, Hg);
		for (uint64_t o = 0; o < R; o++) /* the magnitude mask without reconstruction */
			for (uint64_t k = 0; k < K; k++)
				D[o * K + k] = mask_mag[layer_index(t, w, grp, o, k)] ? 0 : W[o * K + k];
		err_mag += nmp_sparsegpt_output_error(D, R, K, Hg);
		memcpy(D, W, R * K * sizeof *D);
		memcpy(H, Hg, K * K * sizeof *H);
		s = solve(e, W, R, K, H, Hg, damp, p, grp * R * K, qp ? &grid : NULL, m, cr, w->name, err);
		if (s != NMP_OK)
			break;
		for (uint64_t i = 0; i < R * K; i++)
			D[i] -= W[i];
		err_sq += nmp_sparsegpt_output_error(D, R, K, Hg);
		for (uint64_t o = 0; o < R; o++)
			for (uint64_t k = 0; k < K; k++) {
				uint64_t fi = layer_index(t, w, grp, o, k);
				mask[fi] = m[o * K + k];
				recon[fi] = W[o * K + k];
			}
	}
	if (s == NMP_OK) {
		cr->error = nmp_report_ratio(err_sq, base);
		cr->error_magnitude = nmp_report_ratio(err_mag, base);
	}
	free(W);
	free(D);
	free(H);
	free(gs);
	free(gz);
	free(m);
	return s;
}

/*
 * Decides weight ci: its mask, statistics and new values, from a private copy
 * of its payload, by the method its statistics allow.
 */
static nmp_status decide(nmp_calib *c, size_t ci, nmp_error *err)
{
	const nmp_model *m = c->plan->model;
	const nmp_choice *ch = &c->plan->sel->choices[ci];
	const nmp_candidate *cand = ch->cand;
	const nmp_pattern *p = &ch->pattern;
	nmp_engine *e = c->o.engine;
	target *t = &c->t[ci];
	nmp_calib_weight_result *cr = &t->cr;
	*cr = (nmp_calib_weight_result){ .method = t->method, .score_kept = NAN, .score_kept_magnitude = NAN,
					 .error = NAN, .error_magnitude = NAN, .damp = NAN };
	snprintf(cr->note, sizeof cr->note, "%s", t->note);
	const uint64_t numel = cand->tensor->numel, nbytes = cand->tensor->nbytes;
	nmp_view v = { 0 }, sv = { 0 }, zv = { 0 };
	nmp_quant_params qp;
	nmp_status s = nmp_model_view(m, cand->tensor, &v, err);
	if (s == NMP_OK)
		s = nmp_channels_view(c->o.channels, m, cand->tensor, &v, err);
	if (s == NMP_OK && cand->quant.present) { /* as the output holds them: permuted with the weight */
		s = nmp_quant_view(m, cand, &qp, &sv, &zv, err);
		if (s == NMP_OK)
			s = nmp_channels_view(c->o.channels, m, cand->quant.scale, &sv, err);
		if (s == NMP_OK && cand->quant.zero_point)
			s = nmp_channels_view(c->o.channels, m, cand->quant.zero_point, &zv, err);
		qp.scale = sv.data;
		qp.zero_point = cand->quant.zero_point ? zv.data : NULL;
	}
	t->payload = malloc(nbytes ? nbytes : 1);
	t->mask = malloc(numel ? numel : 1);
	float *mag = malloc((numel ? numel : 1) * sizeof *mag);
	uint8_t *mask_mag = malloc(numel ? numel : 1);
	bool calibrated = t->kind != LAYER_NONE && t->method != NMP_METHOD_MAGNITUDE;
	if (calibrated && t->tokens == 0) { /* no statistics to choose by */
		const bool loop = reads_in_loop(t);
		bool branch = false;
		for (size_t u = 0; u < t->n_uses; u++)
			branch |= t->uses[u].scope > 0;
		snprintf(cr->note, sizeof cr->note, "%s: pruned by magnitude",
			 loop ? "no calibration sample ran the loop that reads it" :
			 branch ? "no calibration sample took the If branch that reads it" :
				  "no calibration sample reached it");
		calibrated = false;
	}
	double *recon = calibrated && t->method == NMP_METHOD_SPARSEGPT ? malloc((numel ? numel : 1) * sizeof *recon) :
									    NULL;
	if (s == NMP_OK && (!t->payload || !t->mask || !mag || !mask_mag ||
			    (calibrated && t->method == NMP_METHOD_SPARSEGPT && !recon)))
		s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: tensor '%s': out of memory", m->path, cand->name);
	nmp_mask_tensor w = { .name = cand->name, .data = t->payload, .dtype = cand->tensor->dtype,
			      .rank = (int)cand->tensor->n_dims, .dims = cand->tensor->dims,
			      .axis = cand->axis, .out_axis = cand->out_axis, .quant = cand->quant.present ? &qp : NULL };
	nmp_quant_geom qg = { 0 };
	if (s == NMP_OK) {
		memcpy(t->payload, v.data, nbytes);
		if (w.quant)
			nmp_quant_geometry(w.rank, w.dims, qp.axis, qp.block, qp.n_scale, &qg);
	}
	if (s == NMP_OK && !calibrated) {
		cr->method = NMP_METHOD_MAGNITUDE;
		s = nmp_engine_run(e, &w, p, NMP_MASK_APPLY, t->mask, &t->st, err);
		goto out;
	}
	if (s == NMP_OK)
		s = nmp_cpu_magnitudes(&w, mag, err);
	if (s == NMP_OK) /* the magnitude mask and statistics, for comparison */
		s = nmp_engine_run(e, &w, p, NMP_MASK_DRY, mask_mag, &t->st, err);
	if (s == NMP_OK && t->method == NMP_METHOD_WANDA)
		s = wanda_mask(t, e, &w, p, mag, numel, mask_mag, t->mask, cr, err);
	else if (s == NMP_OK)
		s = sparsegpt_mask(t, e, &w, p, t->payload, &qg, mask_mag, t->mask, recon, c->o.damp, cr, err);
	if (s == NMP_OK) {
		/* the statistics of the mask chosen, in magnitudes of the weight as it was */
		uint64_t kept = 0;
		double l1_kept = 0;
		for (uint64_t i = 0; i < numel; i++)
			if (t->mask[i]) {
				kept++;
				l1_kept += mag[i];
			}
		t->st.kept = kept;
		t->st.l1_kept = l1_kept;
		if (recon) {
			for (uint64_t i = 0; i < numel; i++)
				if (t->mask[i])
					store_value(&w, i, recon[i], &qg);
			cr->reconstructed = true;
		}
		apply_mask(&w, numel, t->mask, &qg);
		if (t->method == NMP_METHOD_SPARSEGPT && t->tokens < t->K && !cr->note[0])
			/* a rank-deficient Hessian: the rebuilt weights fit the samples, maybe not other inputs */
			snprintf(cr->note, sizeof cr->note,
				 "%llu activation vectors for %llu inputs: more samples or a larger --damp generalize better",
				 (unsigned long long)t->tokens, (unsigned long long)t->K);
	}
out:
	t->decided = s == NMP_OK;
	nmp_view_release(&v);
	nmp_view_release(&sv);
	nmp_view_release(&zv);
	free(mag);
	free(mask_mag);
	free(recon);
	return s;
}

nmp_status nmp_calib_prune(const nmp_calib *c, size_t ci, const nmp_mask_tensor *w, nmp_mask_mode mode, uint8_t *mask,
			   nmp_mask_stats *st, nmp_calib_weight_result *cr, nmp_error *err)
{
	const target *t = &c->t[ci];
	if (!t->decided)
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': not calibrated", w->name);
	NMP_ASSERT(mode == NMP_MASK_APPLY || mode == NMP_MASK_DRY);
	const nmp_tensor *tensor = c->plan->sel->choices[ci].cand->tensor;
	*st = t->st;
	*cr = t->cr;
	if (mask)
		memcpy(mask, t->mask, tensor->numel);
	if (mode == NMP_MASK_APPLY)
		memcpy(w->data, t->payload, tensor->nbytes);
	return NMP_OK;
}
