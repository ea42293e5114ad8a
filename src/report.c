#include "report.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "version.h"

void nmp_report_consumers(const nmp_candidate *c, char *buf, size_t cap)
{
	size_t used = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < c->n_uses && used + 1 < cap; i++) {
		const nmp_use *u = &c->uses[i];
		char dn[NMP_DISPLAY_MAX];
		int n = snprintf(buf + used, cap - used, "%s%s (%s)", i ? ", " : "",
				 u->node_name[0] ? nmp_display_name(u->node_name, dn, sizeof dn) : "(unnamed)", u->op);
		if (n < 0)
			break;
		used += (size_t)n;
	}
	if (used >= cap && cap > 4)
		memcpy(buf + cap - 4, "...", 4);
}

void nmp_report_shape(const nmp_tensor *t, char *buf, size_t cap)
{
	size_t used = 0;
	if (!t) {
		snprintf(buf, cap, "-");
		return;
	}
	used += (size_t)snprintf(buf, cap, "[");
	for (size_t i = 0; i < t->n_dims && used < cap; i++)
		used += (size_t)snprintf(buf + used, cap - used, "%s%lld", i ? "," : "",
					 (long long)t->dims[i]);
	if (used < cap)
		snprintf(buf + used, cap - used, "]");
}

static const char *note(const nmp_choice *ch)
{
	if (!ch->eligible)
		return ch->reason;
	if (ch->cand->graph_input)
		return "note: also a graph input, a caller may override it";
	return "";
}

json_t *nmp_report_inspect_json(const nmp_plan *p)
{
	json_t *arr = json_array();
	for (size_t i = 0; i < p->sel->n; i++) {
		const nmp_choice *ch = &p->sel->choices[i];
		const nmp_candidate *c = ch->cand;
		json_t *uses = json_array();
		char dn[NMP_DISPLAY_MAX];
		for (size_t k = 0; k < c->n_uses; k++)
			json_array_append_new(uses, json_pack("{s:s,s:s,s:i}", "node",
							      nmp_display_name(c->uses[k].node_name, dn, sizeof dn),
							      "op", c->uses[k].op, "input", c->uses[k].input));
		json_t *o = json_pack("{s:s,s:o,s:b,s:s,s:b,s:b}", "name", nmp_display_name(c->name, dn, sizeof dn), "consumers", uses,
				      "eligible", ch->eligible, "pattern", ch->pattern.text,
				      "graph_input", c->graph_input, "constant", c->from_constant);
		if (c->tensor) {
			json_t *shape = json_array();
			for (size_t k = 0; k < c->tensor->n_dims; k++)
				json_array_append_new(shape, json_integer(c->tensor->dims[k]));
			json_object_set_new(o, "dtype", json_string(nmp_dtype_name(c->tensor->dtype)));
			json_object_set_new(o, "shape", shape);
		} else {
			json_object_set_new(o, "dtype", json_null());
			json_object_set_new(o, "shape", json_null());
		}
		json_object_set_new(o, "axis", c->axis >= 0 ? json_integer(c->axis) : json_null());
		json_object_set_new(o, "axis_length", c->axis >= 0 && c->tensor
				    ? json_integer(c->tensor->dims[c->axis]) : json_null());
		json_object_set_new(o, "reason", ch->eligible ? json_null() : json_string(ch->reason));
		if (c->quant.present)
			json_object_set_new(o, "quantization", json_pack("{s:i,s:I}", "axis", c->quant.axis,
									 "block_size", (json_int_t)c->quant.block));
		json_array_append_new(arr, o);
	}
	return arr;
}

nmp_status nmp_report_inspect(FILE *f, const nmp_plan *p, bool json, nmp_error *err)
{
	char dn[NMP_DISPLAY_MAX];
	(void)err;
	if (json) {
		json_t *arr = nmp_report_inspect_json(p);
		json_dumpf(arr, f, JSON_INDENT(2));
		fputc('\n', f);
		json_decref(arr);
		return NMP_OK;
	}
	int wn = 6, wc = 9, ws = 5;
	char cons[256], shape[96];
	for (size_t i = 0; i < p->sel->n; i++) {
		const nmp_candidate *c = p->sel->choices[i].cand;
		nmp_report_consumers(c, cons, sizeof cons);
		nmp_report_shape(c->tensor, shape, sizeof shape);
		int n = (int)strlen(nmp_display_name(c->name, dn, sizeof dn));
		wn = n > wn ? (n > 48 ? 48 : n) : wn;
		n = (int)strlen(cons);
		wc = n > wc ? (n > 48 ? 48 : n) : wc;
		n = (int)strlen(shape);
		ws = n > ws ? n : ws;
	}
	fprintf(f, "%-*s  %-*s  %-9s  %-*s  %4s  %6s  %-10s  %-8s  REASON\n", wn, "WEIGHT", wc, "CONSUMERS",
		"DTYPE", ws, "SHAPE", "AXIS", "LENGTH", "PATTERN", "ELIGIBLE");
	for (size_t i = 0; i < p->sel->n; i++) {
		const nmp_choice *ch = &p->sel->choices[i];
		const nmp_candidate *c = ch->cand;
		char axis[16] = "-", len[24] = "-";
		nmp_report_consumers(c, cons, sizeof cons);
		nmp_report_shape(c->tensor, shape, sizeof shape);
		if (c->axis >= 0 && c->tensor) {
			snprintf(axis, sizeof axis, "%d", c->axis);
			snprintf(len, sizeof len, "%lld", (long long)c->tensor->dims[c->axis]);
		}
		char line[1024];
		snprintf(line, sizeof line, "%-*s  %-*s  %-9s  %-*s  %4s  %6s  %-10s  %-8s  %s", wn, nmp_display_name(c->name, dn, sizeof dn),
			 wc, cons, c->tensor ? nmp_dtype_name(c->tensor->dtype) : "-", ws, shape, axis, len,
			 ch->pattern.text, ch->eligible ? "yes" : "no", note(ch));
		size_t n = strlen(line);
		while (n > 0 && line[n - 1] == ' ')
			line[--n] = '\0';
		fprintf(f, "%s\n", line);
	}
	fprintf(f, "%zu candidate weights, %zu eligible\n", p->sel->n, p->sel->n_eligible);
	return NMP_OK;
}

/* ---- prune and check ----------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1-4), or 0 if it is not one. */
static int utf8_len(const unsigned char *s)
{
	if (s[0] < 0x80)
		return 1;
	int n = s[0] >= 0xf5 ? 0 : s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
	if (n == 0)
		return 0;
	for (int i = 1; i < n; i++) /* a NUL stops here too: it is no continuation byte */
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	uint32_t cp = n == 2 ? (s[0] & 0x1fu) << 6 | (s[1] & 0x3fu)
		    : n == 3 ? (s[0] & 0x0fu) << 12 | (s[1] & 0x3fu) << 6 | (s[2] & 0x3fu)
			     : (s[0] & 0x07u) << 18 | (s[1] & 0x3fu) << 12 | (s[2] & 0x3fu) << 6 | (s[3] & 0x3fu);
	if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return n;
}

const char *nmp_display_name(const char *raw, char *buf, size_t cap)
{
	size_t o = 0;
	const unsigned char *s = (const unsigned char *)(raw ? raw : "");
	while (*s && o + 8 < cap) {
		int n = utf8_len(s);
		if (n == 0) {               /* an invalid byte */
			memcpy(buf + o, "\xef\xbf\xbd", 3);
			o += 3;
			s++;
		} else if (n == 1 && (*s < 0x20 || *s == 0x7f)) {
			o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", *s);
			s++;
		} else if (n == 2 && s[0] == 0xc2 && s[1] < 0xa0) { /* C1 controls, U+0080-U+009F */
			o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", s[1]);
			s += 2;
		} else {
			memcpy(buf + o, s, (size_t)n);
			o += (size_t)n;
			s += n;
		}
	}
	buf[o] = '\0';
	return buf;
}

double nmp_report_ratio(double part, double whole)
{
	if (!isfinite(part) || !isfinite(whole))
		return NAN;
	return whole > 0 ? part / whole : 1.0;
}

json_t *nmp_report_ratio_json(double ratio)
{
	return isfinite(ratio) ? json_real(ratio) : json_null();
}

static double pct(double a, double b)
{
	return 100.0 * nmp_report_ratio(a, b);
}

/* A percentage in a field of `width`, or "-" where it is not a number. */
static void put_pct(FILE *f, int width, double v)
{
	if (isfinite(v))
		fprintf(f, "  %*.2f%%", width, v);
	else
		fprintf(f, "  %*s", width + 1, "-");
}

static const char *first_op(const nmp_candidate *c)
{
	return c->n_uses ? c->uses[0].op : "-";
}

static json_t *permutation_json(const nmp_channels *cs)
{
	json_t *groups = json_array();
	for (size_t g = 0; g < cs->n_groups; g++) {
		const nmp_chan_group *gr = &cs->groups[g];
		json_t *o = json_pack("{s:s,s:I,s:I,s:b}", "from", gr->label, "channels", (json_int_t)gr->channels,
				      "weights", (json_int_t)gr->n_weights, "permuted", gr->perm != NULL);
		if (gr->blocked[0]) {
			json_object_set_new(o, "blocked", json_string(gr->blocked));
		} else if (gr->skipped[0]) {
			json_object_set_new(o, "skipped", json_string(gr->skipped));
		} else if (gr->m) {
			char pat[32];
			snprintf(pat, sizeof pat, "%u:%u", gr->n, gr->m);
			json_object_set_new(o, "pattern", json_string(pat));
			json_object_set_new(o, "tensors", json_integer((json_int_t)gr->n_tensors));
			json_object_set_new(o, "kept_unpermuted", json_real(gr->search.kept_identity));
			json_object_set_new(o, "kept", json_real(gr->perm ? gr->search.kept : gr->search.kept_identity));
			json_object_set_new(o, "kept_unstructured", json_real(gr->search.kept_unstructured));
			json_object_set_new(o, "efficacy", json_real(gr->perm ? nmp_perm_efficacy(&gr->search) : 0.0));
			json_object_set_new(o, "search_s", json_real(gr->seconds));
			if (gr->tile)
				json_object_set_new(o, "tile", json_integer(gr->tile));
			if (gr->confine)
				json_object_set_new(o, "confine", json_integer(gr->confine));
		}
		if (gr->crosses_quant)
			json_object_set_new(o, "crosses_activation_quantization", json_true());
		json_array_append_new(groups, o);
	}
	return json_pack("{s:o}", "groups", groups);
}

static void permutation_text(FILE *f, const nmp_channels *cs)
{
	size_t permuted = 0;
	for (size_t g = 0; g < cs->n_groups; g++)
		permuted += cs->groups[g].perm != NULL;
	fprintf(f, "channel permutation: %zu groups, %zu permuted\n", cs->n_groups, permuted);
	for (size_t g = 0; g < cs->n_groups; g++) {
		const nmp_chan_group *gr = &cs->groups[g];
		fprintf(f, "  group %zu from '%s': ", g, gr->label);
		if (gr->blocked[0])
			fprintf(f, "blocked: %s\n", gr->blocked);
		else if (gr->skipped[0])
			fprintf(f, "not searched: %s\n", gr->skipped);
		else if (!gr->m)
			fprintf(f, "no eligible weight reads it\n");
		else if (!gr->perm)
			fprintf(f, "%llu channels, %zu weights: no order keeps more than the present one\n",
				(unsigned long long)gr->channels, gr->n_weights);
		else
			fprintf(f, "%llu channels, %zu weights, %zu tensors rewritten; %u:%u kept magnitude +%.2f%% "
				"(efficacy %.1f%%), %.3f s%s\n", (unsigned long long)gr->channels, gr->n_weights,
				gr->n_tensors, gr->n, gr->m, pct(gr->search.kept, gr->search.kept_identity) - 100.0,
				100.0 * nmp_perm_efficacy(&gr->search), gr->seconds,
				gr->crosses_quant ? "; crosses activation quantization (int8 kernels may round "
						    "differently after reordering)" : "");
	}
}

/* What calibration says of one weight: its method, and the score or error beside magnitude's. */
static json_t *calib_weight_json(const nmp_calib_weight_result *c)
{
	json_t *o = json_pack("{s:s}", "method", nmp_method_name(c->method));
	if (c->note[0])
		json_object_set_new(o, "note", json_string(c->note));
	if (c->method == NMP_METHOD_WANDA) {
		json_object_set_new(o, "score_kept", nmp_report_ratio_json(c->score_kept));
		json_object_set_new(o, "score_kept_by_magnitude_mask", nmp_report_ratio_json(c->score_kept_magnitude));
	} else if (c->method == NMP_METHOD_SPARSEGPT) {
		json_object_set_new(o, "output_error", nmp_report_ratio_json(c->error));
		json_object_set_new(o, "output_error_magnitude", nmp_report_ratio_json(c->error_magnitude));
		json_object_set_new(o, "damp", nmp_report_ratio_json(c->damp));
		json_object_set_new(o, "reconstructed", json_boolean(c->reconstructed));
	}
	return o;
}

json_t *nmp_report_pass_json(const nmp_plan *p, const nmp_pass_result *r, const char *command,
			     const char *engine, const char *output, bool dry_run)
{
	json_t *weights = json_array();
	for (size_t i = 0; i < r->n; i++) {
		const nmp_weight_result *w = &r->weights[i];
		const nmp_choice *ch = w->choice;
		const nmp_candidate *c = ch->cand;
		char shape[96];
		nmp_report_shape(c->tensor, shape, sizeof shape);
		char dn[NMP_DISPLAY_MAX];
		json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:b,s:b}", "name", nmp_display_name(c->name, dn, sizeof dn), "op",
				      first_op(c), "shape", shape, "pattern", ch->pattern.text, "eligible", ch->eligible,
				      "graph_input", c->graph_input);
		json_object_set_new(o, "axis", c->axis >= 0 ? json_integer(c->axis) : json_null());
		if (!ch->eligible) {
			json_object_set_new(o, "reason", json_string(ch->reason));
		} else if (w->done) {
			const nmp_mask_stats *st = &w->stats;
			json_object_set_new(o, "elements", json_integer((json_int_t)st->numel));
			json_object_set_new(o, "kept", json_integer((json_int_t)st->kept));
			json_object_set_new(o, "sparsity", json_real(st->numel ? 1.0 - (double)st->kept / (double)st->numel : 0));
			if (strcmp(command, "check") == 0) {
				json_object_set_new(o, "groups", json_integer((json_int_t)st->groups));
				json_object_set_new(o, "violations", json_integer((json_int_t)st->violations));
				json_object_set_new(o, "complies", json_boolean(st->violations == 0));
			} else {
				json_object_set_new(o, "kept_l1_ratio",
						    nmp_report_ratio_json(nmp_report_ratio(st->l1_kept, st->l1_dense)));
				json_object_set_new(o, "kept_vs_unstructured",
						    nmp_report_ratio_json(nmp_report_ratio(st->l1_kept, st->l1_unstructured)));
				if (ch->pattern.unit == NMP_UNIT_TILE && ch->pattern.greedy)
					json_object_set_new(o, "deficits", json_integer((json_int_t)st->deficits));
				if (w->calibrated)
					json_object_set_new(o, "calibration", calib_weight_json(&w->cal));
			}
		}
		const nmp_channels *cs = r->channels;
		if (cs && cs->group_of[i] >= 0) {
			json_object_set_new(o, "permutation_group", json_integer(cs->group_of[i]));
			size_t n_runs;
			const nmp_chan_part *run = nmp_channels_parts(cs, i, &n_runs);
			if (n_runs > 1) { /* a Concat or Split divides its channels among groups */
				json_t *runs = json_array();
				for (size_t k = 0; k < n_runs; k++)
					json_array_append_new(runs, json_pack("{s:I,s:I,s:I}", "group", (json_int_t)run[k].group,
									      "offset", (json_int_t)run[k].offset,
									      "channels", (json_int_t)run[k].length));
				json_object_set_new(o, "permutation_runs", runs);
			}
			if (w->done && cs->kept_identity[i] >= 0 && w->stats.l1_dense > 0)
				json_object_set_new(o, "kept_l1_ratio_unpermuted",
						    nmp_report_ratio_json(nmp_report_ratio(cs->kept_identity[i], w->stats.l1_dense)));
		}
		json_array_append_new(weights, o);
	}
	json_t *summary = json_pack("{s:I,s:I,s:I,s:I,s:f}", "weights", (json_int_t)r->n, "done",
				    (json_int_t)r->n_done, "params_total", (json_int_t)r->params_total,
				    "params_zeroed", (json_int_t)r->params_zeroed, "sparsity",
				    r->params_total ? (double)r->params_zeroed / (double)r->params_total : 0.0);
	if (strcmp(command, "check") == 0) {
		json_object_set_new(summary, "failing", json_integer((json_int_t)r->failing));
		json_object_set_new(summary, "violations", json_integer((json_int_t)r->violations));
	}
	json_t *root = json_pack("{s:s,s:s,s:s,s:s,s:s,s:b,s:f,s:o,s:o}", "tool", "nmprune", "version", NMP_VERSION,
				 "command", command, "model", p->model->path, "engine", engine, "dry_run", dry_run,
				 "elapsed_s", r->seconds, "summary", summary, "weights", weights);
	json_object_set_new(root, "pattern", json_string(p->sel->default_pattern));
	json_object_set_new(root, "output", output ? json_string(output) : json_null());
	if (r->save.data_path[0])
		json_object_set_new(root, "external_data", json_string(r->save.data_path));
	if (r->channels)
		json_object_set_new(root, "permutation", permutation_json(r->channels));
	if (r->calib)
		json_object_set_new(root, "calibration",
				    json_pack("{s:s,s:I,s:I,s:I,s:f,s:s}", "method", nmp_method_name(nmp_calib_method(r->calib)),
					      "samples", (json_int_t)nmp_calib_samples(r->calib), "tokens",
					      (json_int_t)nmp_calib_tokens(r->calib), "passes", (json_int_t)nmp_calib_passes(r->calib),
					      "seconds", nmp_calib_seconds(r->calib), "runtime", nmp_calib_runtime(r->calib)));
	return root;
}

static void calib_weight_text(FILE *f, const nmp_calib_weight_result *c)
{
	if (c->method == NMP_METHOD_WANDA)
		fprintf(f, "  wanda: score kept %.2f%% (magnitude mask %.2f%%)", 100 * c->score_kept,
			100 * c->score_kept_magnitude);
	else if (c->method == NMP_METHOD_SPARSEGPT)
		fprintf(f, "  sparsegpt: output error %.4f (magnitude %.4f)", c->error, c->error_magnitude);
	if (c->note[0])
		fprintf(f, "  (%s)", c->note);
}

void nmp_report_prune_text(FILE *f, const nmp_plan *p, const nmp_pass_result *r, bool dry_run)
{
	char dn[NMP_DISPLAY_MAX];
	(void)p;
	const nmp_channels *cs = r->channels;
	if (cs && r->permute_only) {
		permutation_text(f, cs);
		return;
	}
	int wn = 6;
	for (size_t i = 0; i < r->n; i++) {
		int n = (int)strlen(r->weights[i].choice->cand->name);
		wn = n > wn ? (n > 48 ? 48 : n) : wn;
	}
	fprintf(f, "%-*s  %-13s  %-16s  %-10s  %8s  %8s  %15s%s\n", wn, "WEIGHT", "OP", "SHAPE", "PATTERN", "SPARSITY",
		"KEPT L1", "VS UNSTRUCTURED", cs ? "  UNPERMUTED" : "");
	size_t skipped = 0;
	for (size_t i = 0; i < r->n; i++) {
		const nmp_weight_result *w = &r->weights[i];
		const nmp_candidate *c = w->choice->cand;
		char shape[96];
		nmp_report_shape(c->tensor, shape, sizeof shape);
		if (!w->done) {
			skipped++;
			fprintf(f, "%-*s  %-13s  %-16s  skipped: %s\n", wn, nmp_display_name(c->name, dn, sizeof dn), first_op(c), shape, w->choice->reason);
			continue;
		}
		const nmp_mask_stats *st = &w->stats;
		fprintf(f, "%-*s  %-13s  %-16s  %-10s  %7.2f%%", wn, nmp_display_name(c->name, dn, sizeof dn), first_op(c), shape,
			w->choice->pattern.text, st->numel ? 100.0 - pct((double)st->kept, (double)st->numel) : 0);
		put_pct(f, 7, pct(st->l1_kept, st->l1_dense));
		put_pct(f, 14, pct(st->l1_kept, st->l1_unstructured));
		if (cs && cs->group_of[i] >= 0 && cs->kept_identity[i] >= 0)
			put_pct(f, 10, pct(cs->kept_identity[i], st->l1_dense));
		else if (cs)
			fprintf(f, "  %11s", "-");
		if (w->choice->pattern.unit == NMP_UNIT_TILE && w->choice->pattern.greedy && st->deficits)
			fprintf(f, "  (greedy: %llu rows/columns below N)", (unsigned long long)st->deficits);
		if (c->graph_input)
			fputs("  (also a graph input: a caller may override it)", f);
		if (w->calibrated)
			calib_weight_text(f, &w->cal);
		fputc('\n', f);
	}
	/* params_total counts the candidate weights' elements, not every tensor of the model: say so. */
	fprintf(f, "%s %zu weights, skipped %zu; %llu of %llu parameters in candidate weights zeroed",
		dry_run ? "dry run: would prune" : "pruned", r->n_done, skipped, (unsigned long long)r->params_zeroed,
		(unsigned long long)r->params_total);
	if (r->params_total)
		fprintf(f, " (%.2f%%)", pct((double)r->params_zeroed, (double)r->params_total));
	fprintf(f, "; %.3f s\n", r->seconds);
	if (r->calib && nmp_calib_passes(r->calib) == 0)
		fprintf(f, "calibration: %s ran no sample: no selected weight can take its statistics (the notes say why)\n",
			nmp_method_name(nmp_calib_method(r->calib)));
	else if (r->calib)
		fprintf(f, "calibration: %s on %zu samples (%llu activation vectors), %zu passes, %.3f s, %s\n",
			nmp_method_name(nmp_calib_method(r->calib)), nmp_calib_samples(r->calib),
			(unsigned long long)nmp_calib_tokens(r->calib), nmp_calib_passes(r->calib),
			nmp_calib_seconds(r->calib), nmp_calib_runtime(r->calib));
	if (cs)
		permutation_text(f, cs);
}

void nmp_report_check_text(FILE *f, const nmp_plan *p, const nmp_pass_result *r)
{
	char dn[NMP_DISPLAY_MAX];
	int wn = 6;
	for (size_t i = 0; i < r->n; i++) {
		int n = (int)strlen(r->weights[i].choice->cand->name);
		wn = n > wn ? (n > 48 ? 48 : n) : wn;
	}
	fprintf(f, "%-*s  %-10s  %10s  %10s  %s\n", wn, "WEIGHT", "PATTERN", "GROUPS", "VIOLATIONS", "COMPLIES");
	for (size_t i = 0; i < r->n; i++) {
		const nmp_weight_result *w = &r->weights[i];
		const nmp_candidate *c = w->choice->cand;
		if (!w->done) {
			fprintf(f, "%-*s  %-10s  %10s  %10s  skipped: %s\n", wn, nmp_display_name(c->name, dn, sizeof dn), w->choice->pattern.text, "-", "-",
				w->choice->reason);
			continue;
		}
		fprintf(f, "%-*s  %-10s  %10llu  %10llu  %s\n", wn, nmp_display_name(c->name, dn, sizeof dn), w->choice->pattern.text,
			(unsigned long long)w->stats.groups, (unsigned long long)w->stats.violations,
			w->stats.violations ? "no" : "yes");
	}
	fprintf(f, "%zu of %zu eligible weights comply with %s\n", r->n_done - r->failing, r->n_done,
		p->sel->default_pattern);
}

void nmp_report_print(FILE *f, json_t *j)
{
	json_dumpf(j, f, JSON_INDENT(2) | JSON_REAL_PRECISION(8));
	fputc('\n', f);
}
