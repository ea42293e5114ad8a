/*
 * api.c — the public library (include/nmprune.h) over the passes: a session
 * holds the plan, the engine and the last results.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nmprune.h"
#include "plan.h"
#include "prune.h"
#include "report.h"
#include "version.h"

struct nmp_session {
	nmp_plan plan;
	nmp_engine *engine;
	nmp_options opt;
	nmp_pass_result result;
	nmp_channels *channels;            /* planned on the first save with permute */
	nmp_error err;
};

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
		if (err && err_cap)
			snprintf(err, err_cap, "out of memory");
		return NMP_ERR_NOMEM;
	}
	s->opt = *o;
	nmp_select_opts so = {
		.pattern = o->pattern ? o->pattern : "2:4", .align = o->align ? o->align : "asp",
		.ops = o->ops ? o->ops : "Conv,Gemm,MatMul", .include = o->include, .n_include = o->n_include,
		.exclude = o->exclude, .n_exclude = o->n_exclude, .dense_first = o->dense_first,
		.rules_path = o->rules_path, .greedy = o->greedy,
	};
	nmp_status st = NMP_OK;
	if (!(o->dense_first >= 0.0 && o->dense_first <= 1.0))
		st = nmp_error_set(&s->err, NMP_ERR_USAGE, "dense_first %g: expected a fraction between 0 and 1",
				   o->dense_first);
	if (st == NMP_OK)
		st = nmp_plan_build(model_path, &so, &s->plan, &s->err);
	if (st == NMP_OK)
		st = nmp_engine_create(nmp_device_parse(o->device), o->threads, &s->engine, NULL, 0, &s->err);
	if (st != NMP_OK) {
		if (err && err_cap)
			snprintf(err, err_cap, "%s", s->err.message);
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
	nmp_channels_free(&s->channels);
	nmp_engine_free(&s->engine);
	nmp_plan_free(&s->plan);
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
	nmp_prune_opts po = {
		.output = out_path, .external_data = s->opt.external_data, .engine = s->engine,
		.masks_path = s->opt.masks_path, .channels = s->channels,
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
