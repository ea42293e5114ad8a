/*
 * sensitivity.c — per-weight sensitivity and the dense set for a target
 * fidelity (see sensitivity.h).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "calib_data.h"
#include "clock.h"
#include "compare.h"
#include "dtype.h"
#include "ort.h"
#include "prune.h"
#include "report.h"
#include "sensitivity.h"

/*
 * One way of pruning the model: a plan (the full selection, or one with some
 * weights kept dense), its channel plan and calibration when asked for, the
 * permuted payload of every tensor the channel plan touches, and each
 * eligible weight's payload pruned.
 */
typedef struct variant {
	nmp_plan plan;                /* borrows the model and graph; sel is `kept` when weights are kept dense */
	nmp_selection kept;           /* the selection with weights kept dense (owns its choices), or unused */
	nmp_channels *channels;
	nmp_calib *calib;
	nmp_view *base;               /* per model tensor: permuted, or empty */
	void **pruned;                /* per selection choice: its payload pruned, NULL if not eligible */
} variant;

typedef struct ctx {
	const nmp_plan *plan;
	const nmp_sensitivity_opts *o;
	nmp_ort *ort;
	nmp_model_input *inputs;
	size_t n_inputs;
	nmp_calib_data *data;         /* the samples every fidelity is measured on, open for every run */
	const char **outs;            /* the model's outputs */
	size_t n_out;
	nmp_host_tensor *dense;       /* [sample * n_out + j]: the dense model's output, a copy in its own type
					 (data NULL when not floating) */
	size_t samples;
	const void **payloads;        /* per model tensor: what the next run uses, NULL the original */
	size_t runs;                  /* of the model over the samples, calibration's included */
} ctx;

/* An output's fidelity by the chosen measure; NAN when it has none (no samples, no rows for top1). */
static double fidelity_of(const nmp_output_acc *x, nmp_fidelity_measure f)
{
	switch (f) {
	case NMP_FIDELITY_REL_L2: return 1 - nmp_output_rel_l2(x);
	case NMP_FIDELITY_TOP1: return nmp_output_top1(x);
	default: return nmp_cosine_of(&x->cos);
	}
}

const char *nmp_fidelity_measure_name(nmp_fidelity_measure f)
{
	return f == NMP_FIDELITY_REL_L2 ? "rel-l2" : f == NMP_FIDELITY_TOP1 ? "top1" : "cosine";
}

bool nmp_fidelity_measure_parse(const char *name, nmp_fidelity_measure *f)
{
	for (int k = NMP_FIDELITY_COSINE; k <= NMP_FIDELITY_TOP1; k++)
		if (strcmp(name, nmp_fidelity_measure_name((nmp_fidelity_measure)k)) == 0) {
			*f = (nmp_fidelity_measure)k;
			return true;
		}
	return false;
}

/* The samples every fidelity is measured on. */
static const char *samples_of(const nmp_sensitivity_opts *o)
{
	return o->eval_data ? o->eval_data : o->data;
}

/*
 * Runs the model with c->payloads on every sample.  Without dense outputs yet
 * it records them; otherwise *fidelity is how close it stays to them, by the
 * measure of the options.
 */
static nmp_status run_all(ctx *c, double *fidelity, nmp_error *err)
{
	nmp_model *m = c->plan->model;
	uint8_t *bytes = NULL;
	size_t len = 0;
	nmp_ort_session *sess = NULL;
	nmp_status s = nmp_model_serialize(m, c->payloads, NULL, 0, &bytes, &len, err);
	if (s == NMP_OK)
		s = nmp_ort_session_create(c->ort, bytes, len, m->path, c->o->threads, &sess, err);
	free(bytes);
	const bool record = c->dense == NULL;
	if (s == NMP_OK && record) {
		c->samples = nmp_calib_data_count(c->data);
		c->dense = calloc(c->samples * c->n_out + 1, sizeof *c->dense);
		if (!c->dense)
			s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	}
	nmp_output_acc *acc = calloc(c->n_out + 1, sizeof *acc);
	if (s == NMP_OK && !acc)
		s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	for (size_t k = 0; s == NMP_OK && k < c->samples; k++) {
		const char *const *names;
		const nmp_host_tensor *in;
		size_t n_in;
		nmp_ort_outputs res = { 0 };
		s = nmp_calib_data_sample(c->data, k, &names, &in, &n_in, err);
		if (s == NMP_OK)
			s = nmp_ort_run(sess, n_in, names, in, c->n_out, c->outs, &res, err);
		for (size_t j = 0; s == NMP_OK && j < c->n_out; j++) {
			const nmp_host_tensor *t = &res.t[j];
			const size_t at = k * c->n_out + j;
			nmp_host_tensor *dense = &c->dense[at];
			if (record) {
				*dense = *t;
				dense->data = NULL;
				if (!nmp_host_is_floating(t->dtype))
					continue;
				const size_t bytes = (size_t)t->numel * (nmp_dtype_bits(t->dtype) / 8);
				if (!(dense->data = malloc(bytes ? bytes : 1))) {
					s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory for the dense model's outputs");
					break;
				}
				if (bytes) /* an empty output may have no data */
					memcpy(dense->data, t->data, bytes);
				continue;
			}
			if (!dense->data || !nmp_host_is_floating(t->dtype))
				continue;
			if (!nmp_host_same_shape(t, dense)) /* a shape the pruning changed */
				nmp_output_acc_miss(&acc[j], dense, nmp_host_last(dense));
			else
				nmp_output_acc_add(&acc[j], dense, t, nmp_host_last(t));
		}
		if (res.values)
			nmp_ort_outputs_release(sess, &res);
	}
	if (s == NMP_OK && !record) { /* the mean over the floating outputs that have the measure */
		double sum = 0;
		size_t terms = 0;
		for (size_t j = 0; j < c->n_out; j++) {
			double f = fidelity_of(&acc[j], c->o->fidelity);
			if (!isnan(f)) {
				sum += f;
				terms++;
			}
		}
		*fidelity = terms ? sum / (double)terms : NAN;
	}
	free(acc);
	c->runs++;
	nmp_ort_session_free(&sess);
	return s;
}

static const nmp_sensitivity_result *sort_r; /* qsort has no context argument */

static int most_sensitive_first(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	double fx = sort_r->fidelity[x], fy = sort_r->fidelity[y];
	if (fx != fy)
		return fx < fy ? -1 : 1;
	return (x > y) - (x < y);
}

static void variant_free(const ctx *c, variant *v)
{
	for (size_t i = 0; v->base && i < c->plan->model->n_tensors; i++)
		nmp_view_release(&v->base[i]);
	for (size_t i = 0; v->pruned && i < c->plan->sel->n; i++)
		free(v->pruned[i]);
	free(v->base);
	free(v->pruned);
	free(v->kept.choices);
	nmp_calib_free(&v->calib);
	nmp_channels_free(&v->channels);
	memset(v, 0, sizeof *v);
}

/*
 * Builds the variant of plan c->plan that keeps the first `dense` weights of
 * `order` dense (0: the full selection), as prune would prune it with a
 * rules file keeping them dense: channels planned and weights calibrated
 * (with `stages`) on that selection.
 */
static nmp_status variant_build(ctx *c, const size_t *order, size_t dense, size_t stages, variant *v,
				nmp_error *err)
{
	const nmp_sensitivity_opts *o = c->o;
	const nmp_model *m = c->plan->model;
	const nmp_selection *sel = c->plan->sel;
	memset(v, 0, sizeof *v);
	v->plan = *c->plan;
	v->base = calloc(m->n_tensors + 1, sizeof *v->base);
	v->pruned = calloc(sel->n + 1, sizeof *v->pruned);
	nmp_status s = v->base && v->pruned ? NMP_OK : nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	if (s == NMP_OK && dense) {
		v->kept = *sel;
		if (!(v->kept.choices = malloc(sel->n * sizeof *v->kept.choices + 1)))
			s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	}
	if (s == NMP_OK && dense) {
		memcpy(v->kept.choices, sel->choices, sel->n * sizeof *v->kept.choices);
		for (size_t i = 0; i < dense; i++) {
			nmp_choice *ch = &v->kept.choices[order[i]];
			ch->eligible = false;
			snprintf(ch->reason, sizeof ch->reason, "kept dense");
		}
		v->kept.n_eligible -= dense;
		v->plan.sel = &v->kept;
	}
	if (s == NMP_OK && o->permute)
		s = nmp_channels_plan(&v->plan, NMP_PERMUTE_SEED, o->permute_effort, o->threads, &v->channels, err);
	if (s == NMP_OK && o->method != NMP_METHOD_MAGNITUDE) {
		nmp_calib_opts co = { .method = o->method, .data = o->data, .max_samples = o->max_samples,
				      .damp = o->damp, .ort_library = o->ort_library, .threads = o->threads,
				      .stages = stages, .engine = o->engine, .channels = v->channels };
		s = nmp_calibrate(&v->plan, &co, &v->calib, err);
		if (s == NMP_OK)
			c->runs += nmp_calib_passes(v->calib);
	}
	for (size_t i = 0; s == NMP_OK && v->channels && i < m->n_tensors; i++)
		if (nmp_channels_touches(v->channels, i) && (s = nmp_model_view(m, &m->tensors[i], &v->base[i], err)) == NMP_OK)
			s = nmp_channels_view(v->channels, m, &m->tensors[i], &v->base[i], err);
	for (size_t i = 0; s == NMP_OK && i < sel->n; i++)
		if (v->plan.sel->choices[i].eligible)
			s = nmp_prune_copy(&v->plan, i, o->engine, v->channels, v->calib, &v->pruned[i], err);
	if (s != NMP_OK)
		variant_free(c, v);
	return s;
}

/* The payloads of variant v, with every weight it prunes pruned when `all`, else none. */
static void variant_use(ctx *c, const variant *v, bool all)
{
	const nmp_model *m = c->plan->model;
	for (size_t i = 0; i < m->n_tensors; i++)
		c->payloads[i] = v->base[i].data;
	for (size_t i = 0; all && i < c->plan->sel->n; i++)
		if (v->pruned[i])
			c->payloads[c->plan->sel->choices[i].cand->tensor - m->tensors] = v->pruned[i];
}

/*
 * The fidelity of the model with every eligible weight pruned except the
 * first k of the ranking.  Magnitude and one-stage calibration decide each
 * weight alone, so without a channel plan the full variant's payloads
 * combine; staged calibration depends on what is pruned before each stage,
 * and the channel plan on which weights are pruned, so otherwise the variant
 * keeping those k dense is built, as prune --rules would build it.
 */
static nmp_status all_but(ctx *c, const variant *full, const nmp_sensitivity_result *r, size_t k, double *fidelity,
			  nmp_error *err)
{
	size_t stages = c->o->stages ? c->o->stages : NMP_CALIB_STAGES;
	if (!c->o->permute && (c->o->method == NMP_METHOD_MAGNITUDE || stages == 1)) {
		variant_use(c, full, true);
		for (size_t i = 0; i < k; i++)
			c->payloads[c->plan->sel->choices[r->order[i]].cand->tensor - c->plan->model->tensors] = NULL;
		return run_all(c, fidelity, err);
	}
	variant v;
	nmp_status s = variant_build(c, r->order, k, stages, &v, err);
	if (s == NMP_OK) {
		variant_use(c, &v, true);
		s = run_all(c, fidelity, err);
		variant_free(c, &v);
	}
	return s;
}

nmp_status nmp_sensitivity(const nmp_plan *plan, const nmp_sensitivity_opts *o, nmp_sensitivity_result *r,
			   nmp_error *err)
{
	double t0 = nmp_now();
	memset(r, 0, sizeof *r);
	const nmp_model *m = plan->model;
	const nmp_selection *sel = plan->sel;
	ctx c = { .plan = plan, .o = o };
	variant full = { 0 };
	nmp_status s = nmp_model_inputs(m, &c.inputs, &c.n_inputs, err);
	/* the data is checked before the runtime is looked for; the samples measured on stay open */
	const char *sets[2] = { o->data, o->eval_data };
	for (size_t d = 0; s == NMP_OK && d < 2 && sets[d]; d++) {
		nmp_calib_data *opened = NULL;
		s = nmp_calib_data_open(sets[d], c.inputs, c.n_inputs, o->max_samples, &opened, err);
		if (sets[d] == samples_of(o) && !c.data)
			c.data = opened;
		else
			nmp_calib_data_free(&opened);
	}
	/* a weight pruned alone is calibrated on the dense model, whatever the stages */
	if (s == NMP_OK)
		s = variant_build(&c, NULL, 0, 1, &full, err);
	if (s == NMP_OK)
		s = nmp_ort_open(o->ort_library, &c.ort, err);
	const Onnx__GraphProto *g = m->proto->graph;
	c.n_out = g ? g->n_output : 0;
	c.outs = calloc(c.n_out + 1, sizeof *c.outs);
	c.payloads = calloc(m->n_tensors + 1, sizeof *c.payloads);
	r->order = calloc(sel->n + 1, sizeof *r->order);
	r->fidelity = calloc(sel->n + 1, sizeof *r->fidelity);
	if (full.calib)
		r->cal = calloc(sel->n + 1, sizeof *r->cal);
	if (s == NMP_OK && (!c.outs || !c.payloads || !r->order || !r->fidelity || (full.calib && !r->cal)))
		s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	for (size_t j = 0; s == NMP_OK && j < c.n_out; j++)
		c.outs[j] = g->output[j]->name;
	for (size_t i = 0; s == NMP_OK && i < sel->n; i++) {
		r->fidelity[i] = NAN;
		if (sel->choices[i].eligible) {
			if (full.calib)
				r->cal[i] = *nmp_calib_weight(full.calib, i);
			r->order[r->n_ranked++] = i;
		}
	}
	nmp_calib_free(&full.calib); /* its decisions are in full.pruned and r->cal */
	double dummy;
	if (s == NMP_OK)
		s = run_all(&c, &dummy, err); /* the dense outputs: the original model's, unpermuted */
	if (s == NMP_OK)
		variant_use(&c, &full, false);
	for (size_t i = 0; s == NMP_OK && i < r->n_ranked; i++) {
		size_t ci = r->order[i];
		size_t ti = (size_t)(sel->choices[ci].cand->tensor - m->tensors);
		const void *was = c.payloads[ti];
		c.payloads[ti] = full.pruned[ci];
		s = run_all(&c, &r->fidelity[ci], err);
		c.payloads[ti] = was;
	}
	if (s == NMP_OK) {
		sort_r = r;
		qsort(r->order, r->n_ranked, sizeof *r->order, most_sensitive_first);
		s = all_but(&c, &full, r, 0, &r->all_pruned, err);
	}
	if (s == NMP_OK && o->target > 0) {
		/* the smallest k whose fidelity reaches the target, by bisection over [0, n] */
		size_t lo = 0, hi = r->n_ranked;
		double at_hi = 1.0, at_lo = r->all_pruned;
		if (at_lo >= o->target)
			hi = 0, at_hi = at_lo;
		while (s == NMP_OK && lo + 1 < hi) {
			size_t mid = lo + (hi - lo) / 2;
			double f;
			s = all_but(&c, &full, r, mid, &f, err);
			if (f >= o->target)
				hi = mid, at_hi = f;
			else
				lo = mid, at_lo = f;
		}
		r->keep_dense = hi;
		r->reached = at_hi;
		r->target_met = at_hi >= o->target;
	}
	r->samples = c.samples;
	r->runs = c.runs;
	for (size_t i = 0; c.dense && i < c.samples * c.n_out; i++)
		free(c.dense[i].data);
	free(c.dense);
	variant_free(&c, &full);
	free(c.payloads);
	free(c.outs);
	nmp_calib_data_free(&c.data);
	free(c.inputs);
	nmp_ort_close(&c.ort);
	r->seconds = nmp_now() - t0;
	if (s != NMP_OK)
		nmp_sensitivity_free(r);
	return s;
}

void nmp_sensitivity_free(nmp_sensitivity_result *r)
{
	free(r->order);
	free(r->fidelity);
	free(r->cal);
	memset(r, 0, sizeof *r);
}

/* A POSIX extended regex matching exactly this name. */
static void exact_regex(const char *name, char *buf, size_t cap)
{
	size_t n = 0;
	buf[n++] = '^';
	for (const char *p = name; *p && n + 4 < cap; p++) {
		if (strchr(".[]()*+?{}|^$\\", *p))
			buf[n++] = '\\';
		buf[n++] = *p;
	}
	buf[n++] = '$';
	buf[n] = 0;
}

nmp_status nmp_sensitivity_rules(const nmp_plan *plan, const nmp_sensitivity_result *r, FILE *f, nmp_error *err)
{
	json_t *rules = json_array();
	for (size_t i = 0; i < r->keep_dense && i < r->n_ranked; i++) {
		const char *name = plan->sel->choices[r->order[i]].cand->name;
		char re[2100];
		exact_regex(name, re, sizeof re);
		json_array_append_new(rules, json_pack("{s:s,s:b}", "match", re, "dense", 1));
	}
	char *text = json_dumps(rules, JSON_INDENT(2));
	json_decref(rules);
	if (!text)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	fputs(text, f);
	fputc('\n', f);
	free(text);
	return NMP_OK;
}
