/*
 * compare.c — dense against pruned, output by output (see compare.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "calib_data.h"
#include "clock.h"
#include "compare.h"
#include "dtype.h"
#include "model.h"
#include "ort.h"

typedef struct side {
	nmp_model *m;
	nmp_model_input *inputs;
	size_t n_inputs;
	nmp_ort_session *sess;
	nmp_calib_data *data; /* NULL where shared */
	bool shared;          /* runs on the other side's samples */
} side;

typedef struct acc {
	nmp_output_acc f;             /* floating outputs */
	uint64_t elems, equal;        /* integer outputs */
	uint64_t shape_changed;
} acc;

/* Values are read a chunk at a time, as doubles. */
enum { CHUNK = 512 };

/* A row's argmax as its values go by: the first index of the largest, a NaN never picked (all NaN: 0). */
typedef struct argmax {
	double best;
	uint64_t at;
} argmax;

static inline void argmax_see(argmax *m, double v, uint64_t col)
{
	if (!isnan(v) && (isnan(m->best) || v > m->best)) {
		m->best = v;
		m->at = col;
	}
}

/* A miss of the sample whose dense output's finite values have squared norm na (nmp_output_acc_miss). */
static void add_miss(nmp_output_acc *x, double na, uint64_t numel, uint64_t last)
{
	nmp_cosine_add(&x->cos, 0, na, na > 0 ? na : 1, numel); /* no direction in common */
	x->diff2 += na;
	x->ref2 += na;
	x->rows += last > 1 ? numel / last : 0;
}

/*
 * One pass over both outputs: the sums, and when rows have `last` > 1
 * values, each row's argmax in either (top-1 agreement).
 */
void nmp_output_acc_add(nmp_output_acc *x, const nmp_host_tensor *ref, const nmp_host_tensor *t, uint64_t last)
{
	double dot = 0, na = 0, nb = 0, diff = 0, va[CHUNK], vb[CHUNK];
	uint64_t nonfinite = 0, agree = 0, col = 0;
	argmax ma = { NAN, 0 }, mb = { NAN, 0 };
	for (uint64_t i0 = 0; i0 < t->numel; i0 += CHUNK) {
		const size_t m = t->numel - i0 < CHUNK ? (size_t)(t->numel - i0) : CHUNK;
		nmp_host_values(ref, i0, m, va);
		nmp_host_values(t, i0, m, vb);
		for (size_t i = 0; i < m; i++) {
			const double a = va[i], b = vb[i];
			if (last > 1) {
				argmax_see(&ma, a, col);
				argmax_see(&mb, b, col);
				if (++col == last) {
					agree += ma.at == mb.at;
					ma = mb = (argmax){ NAN, 0 };
					col = 0;
				}
			}
			if (!isfinite(a) || !isfinite(b)) { /* the same infinity, or NaN in both, agrees */
				nonfinite += a != b && !(isnan(a) && isnan(b));
				na += isfinite(a) ? a * a : 0;
				continue;
			}
			dot += a * b;
			na += a * a;
			nb += b * b;
			diff += (a - b) * (a - b);
		}
	}
	if (nonfinite) {
		x->nonfinite += nonfinite;
		x->nonfinite_samples++;
		add_miss(x, na, t->numel, last);
		return;
	}
	nmp_cosine_add(&x->cos, dot, na, nb, t->numel);
	x->diff2 += diff;
	x->ref2 += na;
	if (last > 1) {
		x->agree += agree;
		x->rows += t->numel / last;
	}
}

void nmp_output_acc_miss(nmp_output_acc *x, const nmp_host_tensor *ref, uint64_t last)
{
	double na = 0, v[CHUNK];
	for (uint64_t i0 = 0; i0 < ref->numel; i0 += CHUNK) {
		const size_t m = ref->numel - i0 < CHUNK ? (size_t)(ref->numel - i0) : CHUNK;
		nmp_host_values(ref, i0, m, v);
		for (size_t i = 0; i < m; i++)
			na += isfinite(v[i]) ? v[i] * v[i] : 0;
	}
	add_miss(x, na, ref->numel, last);
}

double nmp_output_rel_l2(const nmp_output_acc *x)
{
	return x->cos.samples == 0 ? NAN : x->ref2 > 0 ? sqrt(x->diff2 / x->ref2) : x->diff2 > 0 ? INFINITY : 0;
}

double nmp_output_top1(const nmp_output_acc *x)
{
	return x->rows ? (double)x->agree / (double)x->rows : NAN;
}

/* Do the two models take the same inputs (names, types, shapes, which are optional)? */
static bool same_inputs(const side *a, const side *b)
{
	if (a->n_inputs != b->n_inputs)
		return false;
	for (size_t i = 0; i < a->n_inputs; i++) {
		const nmp_model_input *x = &a->inputs[i], *y = &b->inputs[i];
		if (strcmp(x->name, y->name) != 0 || x->dtype != y->dtype || x->rank != y->rank ||
		    x->optional != y->optional)
			return false;
		for (int d = 0; d < x->rank; d++)
			if (x->dims[d] != y->dims[d])
				return false;
	}
	return true;
}

/* The pruned side reads the dense side's samples when the models take the same inputs (shared). */
static nmp_status open_side(side *s, const nmp_compare_opts *o, const char *path, nmp_ort *ort, const side *shared,
			    nmp_error *err)
{
	NMP_TRY(nmp_model_load(path, &s->m, err));
	NMP_TRY(nmp_model_inputs(s->m, &s->inputs, &s->n_inputs, err));
	if (shared && same_inputs(s, shared)) {
		s->shared = true;
	} else {
		nmp_error data_err = { 0 };
		nmp_status st = nmp_calib_data_open(o->data, s->inputs, s->n_inputs, o->max_samples, &s->data, &data_err);
		if (st != NMP_OK) /* the data's error speaks of "the model": say which of the two */
			return nmp_error_set(err, st, "%s (%s)", data_err.message, path);
	}
	uint8_t *bytes;
	size_t len;
	NMP_TRY(nmp_model_serialize(s->m, NULL, NULL, 0, &bytes, &len, err));
	nmp_status st = nmp_ort_session_create(ort, bytes, len, path, o->threads, &s->sess, err);
	free(bytes);
	return st;
}

static void close_side(side *s)
{
	nmp_ort_session_free(&s->sess);
	nmp_calib_data_free(&s->data);
	free(s->inputs);
	nmp_model_free(&s->m);
}

/* One sample's inputs, as nmp_calib_data_sample gives them. */
typedef struct sample {
	const char *const *names;
	const nmp_host_tensor *t;
	size_t n;
} sample;

/* Runs one side on sample k: its own read of it, or, where shared, the other side's in *in. */
static nmp_status run_side(side *s, size_t k, sample *in, size_t n_out, const char *const *names,
			   nmp_ort_outputs *res, nmp_error *err)
{
	if (!s->shared)
		NMP_TRY(nmp_calib_data_sample(s->data, k, &in->names, &in->t, &in->n, err));
	return nmp_ort_run(s->sess, in->n, in->names, in->t, n_out, names, res, err);
}

static nmp_status accumulate(const nmp_compare_opts *o, const char *name, const nmp_host_tensor *a,
			     const nmp_host_tensor *b, acc *x, nmp_error *err)
{
	if (a->dtype != b->dtype || a->rank != b->rank)
		return nmp_error_set(err, NMP_ERR_MODEL, "%s: output '%s' differs in type or rank from the dense model's",
				     o->pruned, name);
	const bool same = nmp_host_same_shape(a, b);
	x->shape_changed += !same;
	if (!nmp_host_is_floating(a->dtype)) {
		for (uint64_t i = 0; same && i < a->numel; i++)
			x->equal += nmp_host_value(a, i) == nmp_host_value(b, i);
		x->elems += a->numel;
		return NMP_OK;
	}
	if (same)
		nmp_output_acc_add(&x->f, a, b, nmp_host_last(a));
	else
		nmp_output_acc_miss(&x->f, a, nmp_host_last(a));
	return NMP_OK;
}

nmp_status nmp_compare(const nmp_compare_opts *o, nmp_compare_result *r, nmp_error *err)
{
	double t0 = nmp_now();
	memset(r, 0, sizeof *r);
	side d = { 0 }, p = { 0 };
	nmp_ort *ort = NULL;
	const char **names = NULL;
	acc *a = NULL;
	nmp_status s = nmp_model_load(o->dense, &d.m, err);
	nmp_model_free(&d.m); /* first only the checks that need no runtime */
	if (s == NMP_OK)
		s = nmp_ort_open(o->ort_library, &ort, err);
	if (s == NMP_OK)
		s = open_side(&d, o, o->dense, ort, NULL, err);
	if (s == NMP_OK)
		s = open_side(&p, o, o->pruned, ort, &d, err);
	if (s == NMP_OK && !p.shared && nmp_calib_data_count(d.data) != nmp_calib_data_count(p.data))
		s = nmp_error_set(err, NMP_ERR_USAGE, "%s: the two models take different samples", o->data);
	const Onnx__GraphProto *g = s == NMP_OK ? d.m->proto->graph : NULL;
	size_t n = g ? g->n_output : 0;
	if (s == NMP_OK) {
		snprintf(r->runtime, sizeof r->runtime, "ONNX Runtime %s", nmp_ort_version(ort));
		names = calloc(n + 1, sizeof *names);
		a = calloc(n + 1, sizeof *a);
		r->outputs = calloc(n + 1, sizeof *r->outputs);
		if (!names || !a || !r->outputs)
			s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	}
	for (size_t i = 0; s == NMP_OK && i < n; i++)
		names[i] = g->output[i]->name;
	size_t samples = s == NMP_OK ? nmp_calib_data_count(d.data) : 0;
	for (size_t k = 0; s == NMP_OK && k < samples; k++) {
		nmp_ort_outputs ra = { 0 }, rb = { 0 };
		sample in = { 0 };
		s = run_side(&d, k, &in, n, names, &ra, err);
		if (s == NMP_OK)
			s = run_side(&p, k, &in, n, names, &rb, err);
		for (size_t i = 0; s == NMP_OK && i < n; i++)
			s = accumulate(o, names[i], &ra.t[i], &rb.t[i], &a[i], err);
		if (s == NMP_OK && k == 0)
			for (size_t i = 0; i < n; i++)
				r->outputs[i].floating = nmp_host_is_floating(ra.t[i].dtype);
		if (ra.values)
			nmp_ort_outputs_release(d.sess, &ra);
		if (rb.values)
			nmp_ort_outputs_release(p.sess, &rb);
	}
	if (s == NMP_OK) {
		r->n = n;
		r->samples = samples;
		for (size_t i = 0; i < n; i++) {
			nmp_output_fidelity *f = &r->outputs[i];
			snprintf(f->name, sizeof f->name, "%s", names[i]);
			f->cosine = f->floating ? nmp_cosine_of(&a[i].f.cos) : NAN;
			f->cosine_min = f->floating ? nmp_cosine_min_of(&a[i].f.cos) : NAN;
			f->rel_l2 = f->floating ? nmp_output_rel_l2(&a[i].f) : NAN;
			f->top1 = f->floating ? nmp_output_top1(&a[i].f) : NAN;
			f->agreement = !f->floating && a[i].elems ? (double)a[i].equal / (double)a[i].elems : NAN;
			f->rows = a[i].f.rows;
			f->shape_changed = a[i].shape_changed;
			f->nonfinite = a[i].f.nonfinite;
			f->nonfinite_samples = a[i].f.nonfinite_samples;
		}
	}
	free(names);
	free(a);
	close_side(&d);
	close_side(&p);
	nmp_ort_close(&ort);
	r->seconds = nmp_now() - t0;
	if (s != NMP_OK)
		nmp_compare_free(r);
	return s;
}

void nmp_compare_free(nmp_compare_result *r)
{
	free(r->outputs);
	memset(r, 0, sizeof *r);
}
