#include "prune.h"
#include "pending.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "report.h"
#include "version.h"

/*
 * Masks as safetensors: an 8-byte little-endian header length, a JSON header
 * naming each tensor's dtype (BOOL), shape and byte range, then the data.
 * Every eligible weight's shape is known before pruning, so the header is
 * written first and each mask lands at its offset as the engine produces it.
 */
typedef struct masks_file {
	char path[PATH_MAX];
	int fd;                      /* borrowed from the pending set, which commits or removes the file */
	uint64_t data_start;
	uint64_t *offset;            /* per choice */
} masks_file;

typedef struct prune_ctx {
	const nmp_plan *plan;
	const nmp_prune_opts *o;
	nmp_engine *engine;
	nmp_pass_result *r;
	nmp_mask_mode mode;
	size_t *choice_of;          /* tensor index -> choice index */
	size_t total;
	uint64_t bytes_done, bytes_total;
	char *weights_json;
	char *calib_json;
	nmp_kv kv[4];
	masks_file *masks;
	nmp_pending *pending;       /* the caller's, or our own */
	double t0;
} prune_ctx;

static nmp_status masks_begin(prune_ctx *c, const char *path, nmp_error *err)
{
	const nmp_selection *sel = c->plan->sel;
	masks_file *mf = calloc(1, sizeof *mf);
	if (!mf || !(mf->offset = calloc(sel->n + 1, sizeof *mf->offset))) {
		free(mf);
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	}
	mf->fd = -1;
	c->masks = mf;
	snprintf(mf->path, sizeof mf->path, "%s", path);
	json_t *hdr = json_object();
	json_object_set_new(hdr, "__metadata__", json_pack("{s:s,s:s}", "format", "nmprune masks, 1 = kept",
							  "pattern", sel->default_pattern));
	uint64_t at = 0;
	for (size_t i = 0; i < sel->n; i++) {
		const nmp_choice *ch = &sel->choices[i];
		if (!ch->eligible)
			continue;
		const nmp_tensor *t = ch->cand->tensor;
		json_t *shape = json_array();
		for (size_t d = 0; d < t->n_dims; d++)
			json_array_append_new(shape, json_integer(t->dims[d]));
		char key[NMP_DISPLAY_MAX + 16], dn[NMP_DISPLAY_MAX];
		nmp_display_name(ch->cand->name, dn, sizeof dn); /* JSON keys must be valid UTF-8 */
		snprintf(key, sizeof key, "%s", dn);
		for (int k = 2; json_object_get(hdr, key); k++) /* names may repeat across subgraphs */
			snprintf(key, sizeof key, "%s#%d", dn, k);
		json_object_set_new(hdr, key, json_pack("{s:s,s:o,s:[I,I]}", "dtype", "BOOL", "shape", shape,
							"data_offsets", (json_int_t)at, (json_int_t)(at + t->numel)));
		mf->offset[i] = at;
		at += t->numel;
	}
	char *text = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(hdr);
	if (!text)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	size_t len = strlen(text), padded = (len + 7) / 8 * 8;
	mf->data_start = 8 + padded;
	FILE *f;
	nmp_status s = nmp_pending_open(c->pending, path, "masks file", &f, err);
	if (s == NMP_OK) {
		mf->fd = fileno(f);
		uint8_t head[8];
		for (int b = 0; b < 8; b++)
			head[b] = (uint8_t)((uint64_t)padded >> (8 * b));
		char *block = malloc(padded);
		if (!block) {
			s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		} else {
			memset(block, ' ', padded);
			memcpy(block, text, len);
			if (pwrite(mf->fd, head, 8, 0) != 8 || pwrite(mf->fd, block, padded, 8) != (ssize_t)padded ||
			    ftruncate(mf->fd, (off_t)(mf->data_start + at)) != 0)
				s = nmp_error_errno(err, errno, "cannot write masks file", path);
			free(block);
		}
	}
	free(text);
	return s;
}

static nmp_status masks_put(prune_ctx *c, size_t ci, const uint8_t *mask, uint64_t n, nmp_error *err)
{
	masks_file *mf = c->masks;
	uint64_t off = mf->data_start + mf->offset[ci], done = 0;
	while (done < n) {
		ssize_t w = pwrite(mf->fd, mask + done, (size_t)(n - done), (off_t)(off + done));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return nmp_error_errno(err, w < 0 ? errno : EIO, "cannot write masks file", mf->path);
		done += (uint64_t)w;
	}
	return NMP_OK;
}

/* The file itself belongs to the pending set. */
static void masks_free(prune_ctx *c)
{
	if (!c->masks)
		return;
	free(c->masks->offset);
	free(c->masks);
	c->masks = NULL;
}

nmp_status nmp_quant_view(const nmp_model *m, const nmp_candidate *c, nmp_quant_params *qp, nmp_view *sv,
			  nmp_view *zv, nmp_error *err)
{
	const nmp_quant *q = &c->quant;
	const nmp_tensor *s = q->scale, *z = q->zero_point;
	if (q->unit_scale) { /* MatMulInteger, ConvInteger: scale 1 per zero point */
		uint64_t n = z ? z->numel : 1;
		if (z && z->dtype != c->tensor->dtype)
			return nmp_error_set(err, NMP_ERR_MODEL, "%s: tensor '%s': zero point of type %s for a %s weight",
					     m->path, c->name, nmp_dtype_name(z->dtype), nmp_dtype_name(c->tensor->dtype));
		float *ones = malloc(n * sizeof *ones);
		if (!ones)
			return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		for (uint64_t i = 0; i < n; i++)
			ones[i] = 1.0f;
		*sv = (nmp_view){ .data = ones, .length = n * sizeof *ones, .owned = ones };
		if (z)
			NMP_TRY(nmp_model_view(m, z, zv, err));
		*qp = (nmp_quant_params){ .scale = ones, .scale_dtype = NMP_DT_FLOAT, .zero_point = z ? zv->data : NULL,
					  .axis = q->axis, .block = 0, .n_scale = n };
		return NMP_OK;
	}
	if (s->dtype != NMP_DT_FLOAT && s->dtype != NMP_DT_FLOAT16 && s->dtype != NMP_DT_BFLOAT16)
		return nmp_error_set(err, NMP_ERR_MODEL, "%s: tensor '%s': DequantizeLinear scale of type %s",
				     m->path, c->name, nmp_dtype_name(s->dtype));
	if (z && (z->dtype != c->tensor->dtype || z->numel != s->numel))
		return nmp_error_set(err, NMP_ERR_MODEL,
				     "%s: tensor '%s': zero point does not match the weight's type or the scale's shape",
				     m->path, c->name);
	NMP_TRY(nmp_model_view(m, s, sv, err));
	if (z)
		NMP_TRY(nmp_model_view(m, z, zv, err));
	*qp = (nmp_quant_params){ .scale = sv->data, .scale_dtype = s->dtype, .zero_point = z ? zv->data : NULL,
				  .axis = q->axis, .block = q->block, .n_scale = s->numel };
	return NMP_OK;
}

/* Replaces a view of a tensor the channel plan permutes by a permuted copy. */
static nmp_status permute_view(const prune_ctx *c, const nmp_tensor *t, nmp_view *v, nmp_error *err)
{
	return nmp_channels_view(c->o ? c->o->channels : NULL, c->plan->model, t, v, err);
}

static nmp_status run_one(prune_ctx *c, size_t ci, void *data, const void *src, uint64_t length,
			  nmp_error *err)
{
	const nmp_model *m = c->plan->model;
	const nmp_choice *ch = &c->plan->sel->choices[ci];
	const nmp_candidate *cand = ch->cand;
	const nmp_tensor *t = cand->tensor;
	nmp_weight_result *w = &c->r->weights[ci];
	nmp_view sv = { 0 }, zv = { 0 };
	nmp_quant_params qp;
	nmp_status s = NMP_OK;

	if (length != t->nbytes)
		return nmp_error_set(err, NMP_ERR_MODEL, "%s: tensor '%s': payload of %llu bytes, expected %llu",
				     m->path, cand->name, (unsigned long long)length, (unsigned long long)t->nbytes);
	if (cand->quant.present) {
		/* scale and zero point as the output holds them: permuted with the weight */
		s = nmp_quant_view(m, cand, &qp, &sv, &zv, err);
		if (s == NMP_OK)
			s = permute_view(c, cand->quant.scale, &sv, err);
		if (s == NMP_OK && cand->quant.zero_point)
			s = permute_view(c, cand->quant.zero_point, &zv, err);
		qp.scale = sv.data;
		qp.zero_point = cand->quant.zero_point ? zv.data : NULL;
	}
	uint8_t *mask = NULL;
	if (s == NMP_OK && c->masks && !(mask = malloc(t->numel ? t->numel : 1)))
		s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: tensor '%s': out of memory", m->path, cand->name);
	if (s == NMP_OK) {
		nmp_mask_tensor mt = {
			.name = cand->name, .data = data, .src = src, .dtype = t->dtype, .rank = (int)t->n_dims,
			.dims = t->dims, .axis = cand->axis, .out_axis = cand->out_axis,
			.quant = cand->quant.present ? &qp : NULL,
		};
		if (c->o && c->o->calib) {
			s = nmp_calib_prune(c->o->calib, ci, &mt, c->mode, mask, &w->stats, &w->cal, err);
			w->calibrated = true;
		} else {
			s = nmp_engine_run(c->engine, &mt, &ch->pattern, c->mode, mask, &w->stats, err);
		}
	}
	if (s == NMP_OK && mask)
		s = masks_put(c, ci, mask, t->numel, err);
	free(mask);
	nmp_view_release(&sv);
	nmp_view_release(&zv);
	if (s != NMP_OK)
		return s;
	w->done = true;
	c->r->n_done++;
	c->bytes_done += t->nbytes;
	if (c->o && c->o->progress)
		c->o->progress(c->o->progress_ctx, c->r->n_done, c->total, c->bytes_done, c->bytes_total);
	return NMP_OK;
}

static nmp_status on_payload(void *ctx, size_t tensor, void *data, const void *src, uint64_t length,
			     nmp_error *err)
{
	prune_ctx *c = ctx;
	const nmp_channels *ch = c->o ? c->o->channels : NULL;
	if (ch && nmp_channels_touches(ch, tensor)) {
		NMP_TRY(nmp_channels_apply(ch, c->plan->model, tensor, data, src, length, err));
		src = NULL;
	}
	if (c->choice_of[tensor] == SIZE_MAX)
		return NMP_OK; /* permuted only */
	return run_one(c, c->choice_of[tensor], data, src, length, err);
}

static nmp_status on_metadata(void *ctx, const nmp_kv **kv, size_t *n, nmp_error *err)
{
	prune_ctx *c = ctx;
	json_t *all = json_object();
	for (size_t i = 0; i < c->r->n; i++) {
		const nmp_weight_result *w = &c->r->weights[i];
		if (!w->done)
			continue;
		const nmp_mask_stats *st = &w->stats;
		double sparsity = st->numel ? 1.0 - (double)st->kept / (double)st->numel : 0;
		json_t *e = json_pack("{s:s,s:i,s:f}", "pattern", w->choice->pattern.text, "axis",
				      w->choice->cand->axis, "sparsity", sparsity);
		if (e)
			json_object_set_new(e, "kept", nmp_report_ratio_json(nmp_report_ratio(st->l1_kept, st->l1_dense)));
		if (e && w->choice->cand->graph_input) /* a caller may feed its own value: say it was pruned anyway */
			json_object_set_new(e, "graph_input", json_true());
		if (e && w->calibrated) {
			json_object_set_new(e, "method", json_string(nmp_method_name(w->cal.method)));
			if (w->cal.reconstructed) /* the kept values differ from the input's */
				json_object_set_new(e, "reconstructed", json_true());
		}
		/* one entry per weight: a name that repeats across subgraphs gets #2, #3 (as in the masks file) */
		char dn[NMP_DISPLAY_MAX], key[NMP_DISPLAY_MAX + 16];
		nmp_display_name(w->choice->cand->name, dn, sizeof dn);
		snprintf(key, sizeof key, "%s", dn);
		for (int k = 2; json_object_get(all, key); k++)
			snprintf(key, sizeof key, "%s#%d", dn, k);
		json_object_set_new(all, key, e);
	}
	c->weights_json = json_dumps(all, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(6));
	json_decref(all);
	if (!c->weights_json)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	c->kv[0] = (nmp_kv){ NMP_META_VERSION, NMP_VERSION };
	c->kv[1] = (nmp_kv){ NMP_META_PATTERN, c->plan->sel->default_pattern };
	c->kv[2] = (nmp_kv){ NMP_META_WEIGHTS, c->weights_json };
	*kv = c->kv;
	*n = 3;
	if (c->o && c->o->calib) {
		const nmp_calib *cal = c->o->calib;
		json_t *j = json_pack("{s:s,s:I,s:I,s:s}", "method", nmp_method_name(nmp_calib_method(cal)), "samples",
				      (json_int_t)nmp_calib_samples(cal), "tokens", (json_int_t)nmp_calib_tokens(cal),
				      "runtime", nmp_calib_runtime(cal));
		c->calib_json = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
		json_decref(j);
		if (!c->calib_json)
			return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		c->kv[3] = (nmp_kv){ NMP_META_CALIBRATION, c->calib_json };
		*n = 4;
	}
	return NMP_OK;
}

static nmp_status result_init(const nmp_plan *plan, nmp_pass_result *r, nmp_error *err)
{
	memset(r, 0, sizeof *r);
	r->n = plan->sel->n;
	r->weights = calloc(r->n ? r->n : 1, sizeof *r->weights);
	if (!r->weights)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < r->n; i++) {
		r->weights[i].choice = &plan->sel->choices[i];
		if (plan->sel->choices[i].cand->tensor)
			r->params_total += plan->sel->choices[i].cand->tensor->numel;
	}
	return NMP_OK;
}

/* Runs every eligible weight from read-only views of the input (dry run, check). */
static nmp_status run_views(prune_ctx *c, nmp_error *err)
{
	const nmp_plan *plan = c->plan;
	for (size_t i = 0; i < plan->sel->n; i++) {
		if (!plan->sel->choices[i].eligible)
			continue;
		nmp_view v;
		NMP_TRY(nmp_model_view(plan->model, plan->sel->choices[i].cand->tensor, &v, err));
		/* a weight the channel plan permutes is masked as the output will hold it */
		nmp_status s = permute_view(c, plan->sel->choices[i].cand->tensor, &v, err);
		if (s == NMP_OK)
			s = run_one(c, i, (void *)v.data, NULL, v.length, err);
		nmp_view_release(&v);
		NMP_TRY(s);
	}
	return NMP_OK;
}

static void totals(prune_ctx *c)
{
	nmp_pass_result *r = c->r;
	r->params_zeroed = r->violations = 0;
	r->failing = 0;
	for (size_t i = 0; i < r->n; i++) {
		const nmp_weight_result *w = &r->weights[i];
		if (!w->done)
			continue;
		r->params_zeroed += w->stats.numel - w->stats.kept;
		r->violations += w->stats.violations;
		r->failing += w->stats.violations > 0;
	}
}

/* Output written and synced, nothing renamed yet: the result is final; the caller's side outputs go now. */
static nmp_status before_commit(void *ctx, nmp_error *err)
{
	prune_ctx *c = ctx;
	totals(c);
	c->r->seconds = nmp_now() - c->t0;
	if (c->o->before_commit)
		return c->o->before_commit(c->o->commit_ctx, c->r, err);
	return NMP_OK;
}

nmp_status nmp_prune(const nmp_plan *plan, const nmp_prune_opts *o, nmp_pass_result *r, nmp_error *err)
{
	NMP_TRY(result_init(plan, r, err));
	prune_ctx c = { .plan = plan, .o = o, .engine = o->engine, .r = r, .t0 = nmp_now(),
			.mode = o->dry_run ? NMP_MASK_DRY : NMP_MASK_APPLY, .pending = o->pending };
	nmp_pending *own = NULL;
	r->channels = o->channels;
	r->calib = o->calib;
	r->permute_only = o->channels && o->permute_only;
	const nmp_model *m = plan->model;
	const nmp_channels *chan = o->channels;
	size_t *visit = malloc((plan->sel->n + (chan ? chan->n_edits : 0) + 1) * sizeof *visit);
	c.choice_of = malloc((m->n_tensors + 1) * sizeof *c.choice_of);
	nmp_status s = NMP_OK;
	if (!visit || !c.choice_of) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (!c.pending && (s = nmp_pending_create(&own, err)) != NMP_OK)
		goto out;
	if (!c.pending)
		c.pending = own;
	for (size_t i = 0; i < m->n_tensors; i++)
		c.choice_of[i] = SIZE_MAX;
	size_t n_visit = 0;
	for (size_t i = 0; i < plan->sel->n; i++) {
		const nmp_choice *ch = &plan->sel->choices[i];
		if (!ch->eligible || (o->permute_only && chan))
			continue;
		size_t ti = (size_t)(ch->cand->tensor - m->tensors);
		visit[n_visit++] = ti;
		c.choice_of[ti] = i;
		c.bytes_total += ch->cand->tensor->nbytes;
	}
	c.total = n_visit;
	for (size_t e = 0; chan && e < chan->n_edits; e++) { /* tensors permuted but not masked */
		size_t ti = chan->edits[e].tensor;
		if (c.choice_of[ti] == SIZE_MAX && (e == 0 || chan->edits[e - 1].tensor != ti))
			visit[n_visit++] = ti;
	}
	if (o->masks_path && (s = masks_begin(&c, o->masks_path, err)) != NMP_OK)
		goto out;
	if (o->dry_run) {
		if (!o->permute_only)
			s = run_views(&c, err);
		if (s == NMP_OK)
			s = before_commit(&c, err);
		if (s == NMP_OK)
			s = nmp_pending_commit(c.pending, err);
	} else {
		nmp_save_opts so = {
			.external_data = o->external_data, .in_place = o->in_place, .force_general = o->general_path,
			.visit = visit, .n_visit = n_visit, .on_payload = on_payload,
			.on_metadata = o->permute_only ? NULL : on_metadata,
			.ctx = &c, .before_commit = before_commit, .pending = c.pending,
		};
		s = nmp_model_save(plan->model, o->output, &so, &r->save, err);
	}
	if (s != NMP_OK) /* the totals of what was done, for a caller that reports a failure */
		totals(&c);
out:
	masks_free(&c);
	nmp_pending_free(&own);
	free(visit);
	free(c.choice_of);
	free(c.weights_json);
	free(c.calib_json);
	r->seconds = nmp_now() - c.t0;
	return s;
}

nmp_status nmp_check(const nmp_plan *plan, nmp_engine *engine, nmp_pass_result *r, nmp_error *err)
{
	double t0 = nmp_now();
	NMP_TRY(result_init(plan, r, err));
	prune_ctx c = { .plan = plan, .engine = engine, .r = r, .mode = NMP_MASK_CHECK };
	nmp_status s = run_views(&c, err);
	totals(&c);
	r->seconds = nmp_now() - t0;
	return s;
}

void nmp_pass_result_free(nmp_pass_result *r)
{
	free(r->weights);
	r->weights = NULL;
	r->n = 0;
}

nmp_status nmp_prune_copy(const nmp_plan *plan, size_t ci, nmp_engine *engine, const nmp_channels *channels,
			  const nmp_calib *calib, void **out, nmp_error *err)
{
	const nmp_model *m = plan->model;
	const nmp_choice *ch = &plan->sel->choices[ci];
	const nmp_candidate *cand = ch->cand;
	const nmp_tensor *t = cand->tensor;
	nmp_view v = { 0 }, sv = { 0 }, zv = { 0 };
	nmp_quant_params qp;
	nmp_mask_stats st;
	nmp_calib_weight_result cr;
	*out = NULL;
	uint8_t *buf = malloc(t->nbytes ? t->nbytes : 1);
	if (!buf)
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: tensor '%s': out of memory", m->path, cand->name);
	nmp_status s = nmp_model_view(m, t, &v, err);
	if (s == NMP_OK)
		s = nmp_channels_view(channels, m, t, &v, err);
	if (s == NMP_OK && cand->quant.present) { /* permuted with the weight, as in run_one */
		s = nmp_quant_view(m, cand, &qp, &sv, &zv, err);
		if (s == NMP_OK)
			s = nmp_channels_view(channels, m, cand->quant.scale, &sv, err);
		if (s == NMP_OK && cand->quant.zero_point)
			s = nmp_channels_view(channels, m, cand->quant.zero_point, &zv, err);
		qp.scale = sv.data;
		qp.zero_point = cand->quant.zero_point ? zv.data : NULL;
	}
	if (s == NMP_OK) {
		nmp_mask_tensor mt = { .name = cand->name, .data = buf, .src = v.data, .dtype = t->dtype,
				       .rank = (int)t->n_dims, .dims = t->dims, .axis = cand->axis,
				       .out_axis = cand->out_axis, .quant = cand->quant.present ? &qp : NULL };
		s = calib ? nmp_calib_prune(calib, ci, &mt, NMP_MASK_APPLY, NULL, &st, &cr, err) :
			    nmp_engine_run(engine, &mt, &ch->pattern, NMP_MASK_APPLY, NULL, &st, err);
	}
	nmp_view_release(&v);
	nmp_view_release(&sv);
	nmp_view_release(&zv);
	if (s != NMP_OK) {
		free(buf);
		return s;
	}
	*out = buf;
	return NMP_OK;
}
