/*
 * api.c — the public library (include/nmprune.h) over the passes: a session
 * holds the plan, the engine and the last results.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "compare.h"
#include "nmprune.h"
#include "pending.h"
#include "plan.h"
#include "prune.h"
#include "report.h"
#include "sensitivity.h"
#include "version.h"

/* The option strings nmp_prune_save reads, copied by nmp_open. */
enum { KEEP_EXTERNAL_DATA, KEEP_MASKS, KEEP_CALIBRATION, KEEP_ORT_LIBRARY, KEEP_N };

struct nmp_session {
	nmp_plan plan;
	nmp_engine *engine;
	nmp_options opt;                   /* its save-time strings point into kept[] */
	char *kept[KEEP_N];
	nmp_method method;
	nmp_pass_result result;
	nmp_channels *channels;            /* planned on the first save with permute */
	nmp_calib *calib;                  /* calibrated on the first save with a calibrated method */
	nmp_sensitivity_result sens;       /* the last ranking */
	double sens_target;                /* its target fidelity; 0: none, or no ranking */
	nmp_error err;
};

/* The caller's buffer for the message of a failure before there is a handle to ask. */
static void copy_error(char *err, size_t err_cap, const char *message)
{
	if (err && err_cap)
		snprintf(err, err_cap, "%s", message);
}

const char *nmp_version(void)
{
	return NMP_VERSION;
}

void nmp_options_init(nmp_options *o)
{
	memset(o, 0, sizeof *o);
	o->pattern = "2:4";
	o->align = "asp";
	o->ops = "Conv,Gemm,MatMul";
	o->device = "auto";
}

nmp_status nmp_open(const char *model_path, const nmp_options *o, nmp_session **out, char *err, size_t err_cap)
{
	nmp_options dflt;
	*out = NULL;
	if (!o) {
		nmp_options_init(&dflt);
		o = &dflt;
	}
	nmp_session *s = calloc(1, sizeof *s);
	if (!s) {
		copy_error(err, err_cap, "out of memory");
		return NMP_ERR_NOMEM;
	}
	s->opt = *o;
	const char **keep[KEEP_N] = { &s->opt.external_data, &s->opt.masks_path, &s->opt.calibration,
				      &s->opt.ort_library };
	nmp_status st = NMP_OK;
	for (int k = 0; k < KEEP_N; k++)
		if (*keep[k] && !(*keep[k] = s->kept[k] = strdup(*keep[k])))
			st = nmp_error_set(&s->err, NMP_ERR_NOMEM, "out of memory");
	const char *method = o->method ? o->method : "magnitude";
	s->method = NMP_METHOD_MAGNITUDE;
	if (st == NMP_OK && !nmp_method_parse(method, &s->method))
		st = nmp_error_set(&s->err, NMP_ERR_USAGE, "method '%s': expected magnitude, wanda or sparsegpt",
				   method);
	else if (st == NMP_OK && s->method != NMP_METHOD_MAGNITUDE && !o->calibration)
		st = nmp_error_set(&s->err, NMP_ERR_USAGE, "method %s needs calibration samples", method);
	else if (st == NMP_OK && s->method == NMP_METHOD_MAGNITUDE && (o->calibration || o->calibration_stages))
		st = nmp_error_set(&s->err, NMP_ERR_USAGE, "%s", "calibration is for method wanda or sparsegpt");
	else if (st == NMP_OK && (o->damp < 0 || (o->damp > 0 && s->method != NMP_METHOD_SPARSEGPT)))
		st = nmp_error_set(&s->err, NMP_ERR_USAGE, "damp %g: a positive fraction, for method sparsegpt",
				   o->damp);
	nmp_select_opts so = {
		.pattern = o->pattern ? o->pattern : "2:4", .align = o->align ? o->align : "asp",
		.ops = o->ops ? o->ops : "Conv,Gemm,MatMul", .include = o->include, .n_include = o->n_include,
		.exclude = o->exclude, .n_exclude = o->n_exclude, .dense_first = o->dense_first,
		.rules_path = o->rules_path, .greedy = o->greedy,
	};
	if (st == NMP_OK && !(o->dense_first >= 0.0 && o->dense_first <= 1.0))
		st = nmp_error_set(&s->err, NMP_ERR_USAGE, "dense_first %g: expected a fraction between 0 and 1",
				   o->dense_first);
	if (st == NMP_OK)
		st = nmp_plan_build(model_path, &so, &s->plan, &s->err);
	if (st == NMP_OK && s->method != NMP_METHOD_MAGNITUDE) /* a pattern the method cannot serve */
		st = nmp_calib_check(&s->plan, s->method, &s->err);
	if (st == NMP_OK)
		st = nmp_engine_create(nmp_device_parse(o->device), o->threads, &s->engine, NULL, 0, &s->err);
	if (st != NMP_OK) {
		copy_error(err, err_cap, s->err.message);
		nmp_close(&s);
		return st;
	}
	*out = s;
	return NMP_OK;
}

void nmp_close(nmp_session **ps)
{
	nmp_session *s = *ps;
	if (!s)
		return;
	nmp_pass_result_free(&s->result);
	nmp_sensitivity_free(&s->sens);
	nmp_calib_free(&s->calib);
	nmp_channels_free(&s->channels);
	nmp_engine_free(&s->engine);
	nmp_plan_free(&s->plan);
	for (int k = 0; k < KEEP_N; k++)
		free(s->kept[k]);
	free(s);
	*ps = NULL;
}

const char *nmp_last_error(const nmp_session *s)
{
	return s ? s->err.message : "";
}

size_t nmp_weight_count(const nmp_session *s)
{
	return s->plan.sel->n;
}

nmp_status nmp_weight_get(const nmp_session *s, size_t i, nmp_weight *w)
{
	if (i >= s->plan.sel->n)
		return NMP_ERR_USAGE;
	const nmp_choice *ch = &s->plan.sel->choices[i];
	const nmp_candidate *c = ch->cand;
	memset(w, 0, sizeof *w);
	w->name = c->name;
	w->op = c->n_uses ? c->uses[0].op : "";
	w->pattern = ch->pattern.text;
	w->axis = c->axis;
	w->eligible = ch->eligible;
	w->reason = ch->eligible ? "" : ch->reason;
	w->elements = c->tensor ? c->tensor->numel : 0;
	if (s->result.weights && s->result.weights[i].done) {
		const nmp_mask_stats *st = &s->result.weights[i].stats;
		w->done = true;
		w->kept = st->kept;
		w->kept_l1_ratio = nmp_report_ratio(st->l1_kept, st->l1_dense);
		w->violations = st->violations;
	}
	w->method = w->note = "";
	w->output_error = NAN;
	if (s->result.weights && s->result.weights[i].done && s->result.weights[i].calibrated) {
		const nmp_calib_weight_result *cr = &s->result.weights[i].cal;
		w->method = nmp_method_name(cr->method);
		w->note = cr->note;
		w->output_error = cr->error;
	}
	w->fidelity_alone = s->sens.fidelity ? s->sens.fidelity[i] : NAN; /* NaN where not eligible */
	return NMP_OK;
}

nmp_status nmp_prune_save(nmp_session *s, const char *out_path)
{
	nmp_pass_result_free(&s->result);
	nmp_error_clear(&s->err);
	if (s->opt.permute && !s->channels) {
		nmp_status st = nmp_channels_plan(&s->plan, NMP_PERMUTE_SEED, s->opt.permute_effort, s->opt.threads, &s->channels,
					   &s->err);
		if (st != NMP_OK)
			return st;
	}
	if (s->method != NMP_METHOD_MAGNITUDE && !s->calib) {
		nmp_calib_opts co = { .method = s->method, .data = s->opt.calibration,
				      .max_samples = s->opt.calibration_samples, .damp = s->opt.damp,
				      .ort_library = s->opt.ort_library, .threads = s->opt.threads,
				      .stages = s->opt.calibration_stages, .engine = s->engine, .channels = s->channels };
		nmp_status st = nmp_calibrate(&s->plan, &co, &s->calib, &s->err);
		if (st != NMP_OK)
			return st;
	}
	nmp_prune_opts po = {
		.output = out_path, .external_data = s->opt.external_data, .engine = s->engine,
		.masks_path = s->opt.masks_path, .channels = s->channels, .calib = s->calib,
	};
	return nmp_prune(&s->plan, &po, &s->result, &s->err);
}

nmp_status nmp_check_weights(nmp_session *s, size_t *failing)
{
	nmp_pass_result_free(&s->result);
	nmp_error_clear(&s->err);
	nmp_status st = nmp_check(&s->plan, s->engine, &s->result, &s->err);
	if (failing)
		*failing = s->result.failing;
	return st;
}

nmp_status nmp_rank_sensitivity(nmp_session *s, const nmp_sensitivity_options *o, nmp_sensitivity_summary *out)
{
	static const nmp_sensitivity_options dflt = { 0 };
	nmp_sensitivity_free(&s->sens);
	s->sens_target = 0;
	nmp_error_clear(&s->err);
	if (!o)
		o = &dflt;
	const char *data = o->calibration ? o->calibration : s->opt.calibration;
	nmp_fidelity_measure measure = NMP_FIDELITY_COSINE;
	if (!data)
		return nmp_error_set(&s->err, NMP_ERR_USAGE, "%s", "sensitivity needs calibration samples to run the model on");
	if (o->measure && !nmp_fidelity_measure_parse(o->measure, &measure))
		return nmp_error_set(&s->err, NMP_ERR_USAGE, "measure '%s': expected cosine, rel-l2 or top1", o->measure);
	if (!(o->target_fidelity >= 0 && o->target_fidelity <= 1))
		return nmp_error_set(&s->err, NMP_ERR_USAGE, "target fidelity %g: expected 0 (none) or a value in (0, 1]",
				     o->target_fidelity);
	nmp_sensitivity_opts so = { .data = data, .max_samples = s->opt.calibration_samples,
				    .ort_library = s->opt.ort_library, .threads = s->opt.threads, .engine = s->engine,
				    .method = s->method, .damp = s->opt.damp, .stages = s->opt.calibration_stages,
				    .permute = s->opt.permute, .permute_effort = s->opt.permute_effort,
				    .eval_data = o->eval_data, .fidelity = measure, .target = o->target_fidelity };
	nmp_status st = nmp_sensitivity(&s->plan, &so, &s->sens, &s->err);
	if (st != NMP_OK) {
		nmp_sensitivity_free(&s->sens);
		return st;
	}
	s->sens_target = o->target_fidelity;
	if (out) {
		const bool searched = o->target_fidelity > 0;
		*out = (nmp_sensitivity_summary){ .ranked = s->sens.n_ranked, .samples = s->sens.samples,
						  .runs = s->sens.runs, .all_pruned = s->sens.all_pruned,
						  .keep_dense = searched ? s->sens.keep_dense : 0,
						  .reached = searched ? s->sens.reached : NAN,
						  .target_met = searched && s->sens.target_met };
	}
	return NMP_OK;
}

nmp_status nmp_sensitivity_ranked(const nmp_session *s, size_t rank, size_t *weight)
{
	if (rank >= s->sens.n_ranked)
		return NMP_ERR_USAGE;
	*weight = s->sens.order[rank];
	return NMP_OK;
}

nmp_status nmp_sensitivity_write_rules(nmp_session *s, const char *path)
{
	nmp_error_clear(&s->err);
	if (!(s->sens_target > 0))
		return nmp_error_set(&s->err, NMP_ERR_USAGE, "%s",
				     "rules need a ranking with a target fidelity: nmp_rank_sensitivity with target_fidelity");
	nmp_pending *pending = NULL;
	FILE *f;
	nmp_status st = nmp_pending_create(&pending, &s->err);
	if (st == NMP_OK)
		st = nmp_pending_open(pending, path, "rules file", &f, &s->err);
	if (st == NMP_OK)
		st = nmp_sensitivity_rules(&s->plan, &s->sens, f, &s->err);
	if (st == NMP_OK)
		st = nmp_pending_commit(pending, &s->err);
	nmp_pending_free(&pending);
	return st;
}

struct nmp_comparison {
	nmp_compare_result r;
};

nmp_status nmp_compare_models(const char *dense_path, const char *pruned_path, const nmp_options *o,
			      nmp_comparison **out, char *err, size_t err_cap)
{
	nmp_error e = { 0 };
	nmp_status st = NMP_OK;
	*out = NULL;
	nmp_comparison *c = NULL;
	if (!o || !o->calibration)
		st = nmp_error_set(&e, NMP_ERR_USAGE, "%s", "compare needs calibration samples to run the models on");
	else if (!(c = calloc(1, sizeof *c)))
		st = nmp_error_set(&e, NMP_ERR_NOMEM, "out of memory");
	if (st == NMP_OK) {
		nmp_compare_opts co = { .dense = dense_path, .pruned = pruned_path, .data = o->calibration,
					.max_samples = o->calibration_samples, .ort_library = o->ort_library,
					.threads = o->threads };
		st = nmp_compare(&co, &c->r, &e);
	}
	if (st != NMP_OK) {
		copy_error(err, err_cap, e.message);
		nmp_comparison_free(&c);
		return st;
	}
	*out = c;
	return NMP_OK;
}

void nmp_comparison_free(nmp_comparison **pc)
{
	nmp_comparison *c = *pc;
	if (!c)
		return;
	nmp_compare_free(&c->r);
	free(c);
	*pc = NULL;
}

size_t nmp_comparison_count(const nmp_comparison *c)
{
	return c->r.n;
}

size_t nmp_comparison_samples(const nmp_comparison *c)
{
	return c->r.samples;
}

nmp_status nmp_comparison_get(const nmp_comparison *c, size_t i, nmp_fidelity *f)
{
	if (i >= c->r.n)
		return NMP_ERR_USAGE;
	const nmp_output_fidelity *g = &c->r.outputs[i];
	*f = (nmp_fidelity){ .output = g->name, .floating = g->floating, .cosine = g->cosine,
			     .cosine_min = g->cosine_min, .rel_l2 = g->rel_l2, .top1 = g->top1,
			     .agreement = g->agreement, .shape_changed = g->shape_changed, .nonfinite = g->nonfinite,
			     .nonfinite_samples = g->nonfinite_samples };
	return NMP_OK;
}
