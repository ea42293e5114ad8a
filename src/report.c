#include "report.h"

#include <string.h>

void nmp_report_consumers(const nmp_candidate *c, char *buf, size_t cap)
{
	size_t used = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < c->n_uses && used + 1 < cap; i++) {
		const nmp_use *u = &c->uses[i];
		int n = snprintf(buf + used, cap - used, "%s%s (%s)", i ? ", " : "",
				 u->node_name[0] ? u->node_name : "(unnamed)", u->op);
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
	for (size_t i = 0; i < t->proto->n_dims && used < cap; i++)
		used += (size_t)snprintf(buf + used, cap - used, "%s%lld", i ? "," : "",
					 (long long)t->proto->dims[i]);
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
		for (size_t k = 0; k < c->n_uses; k++)
			json_array_append_new(uses, json_pack("{s:s,s:s,s:i}", "node", c->uses[k].node_name,
							      "op", c->uses[k].op, "input", c->uses[k].input));
		json_t *o = json_pack("{s:s,s:o,s:b,s:s,s:b,s:b}", "name", c->name, "consumers", uses,
				      "eligible", ch->eligible, "pattern", ch->pattern.text,
				      "graph_input", c->graph_input, "constant", c->from_constant);
		if (c->tensor) {
			json_t *shape = json_array();
			for (size_t k = 0; k < c->tensor->proto->n_dims; k++)
				json_array_append_new(shape, json_integer(c->tensor->proto->dims[k]));
			json_object_set_new(o, "dtype", json_string(nmp_dtype_name(c->tensor->dtype)));
			json_object_set_new(o, "shape", shape);
		} else {
			json_object_set_new(o, "dtype", json_null());
			json_object_set_new(o, "shape", json_null());
		}
		json_object_set_new(o, "axis", c->axis >= 0 ? json_integer(c->axis) : json_null());
		json_object_set_new(o, "axis_length", c->axis >= 0 && c->tensor
				    ? json_integer(c->tensor->proto->dims[c->axis]) : json_null());
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
		int n = (int)strlen(c->name);
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
			snprintf(len, sizeof len, "%lld", (long long)c->tensor->proto->dims[c->axis]);
		}
		char line[1024];
		snprintf(line, sizeof line, "%-*s  %-*s  %-9s  %-*s  %4s  %6s  %-10s  %-8s  %s", wn, c->name,
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
