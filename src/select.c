#include "select.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct rule {
	regex_t re;
	bool dense;
	nmp_pattern pattern;
} rule;

typedef struct regex_list {
	regex_t *re;
	size_t n;
} regex_list;

bool nmp_align_parse(const char *s, nmp_align *a)
{
	if (strcmp(s, "asp") == 0)
		*a = NMP_ALIGN_ASP;
	else if (strcmp(s, "cusparselt") == 0)
		*a = NMP_ALIGN_CUSPARSELT;
	else if (strcmp(s, "none") == 0)
		*a = NMP_ALIGN_NONE;
	else
		return false;
	return true;
}

/*
 * The C library's regex compiler copies a subexpression once per repetition
 * applied to it, so nested repetitions ("((a{255}){255}){255}", "(a)+"
 * nested twenty deep) make its memory grow as their product.  Names are
 * short: a pattern whose compiled size, estimated as that product over the
 * nesting, passes REGEX_MAX_SIZE is refused before it reaches the compiler.
 * Stacked operators ("a++") are refused too: POSIX leaves them undefined.
 */
#define REGEX_MAX_SIZE 65536.0
#define REGEX_MAX_DEPTH 64

static const char *regex_problem(const char *src)
{
	size_t len = strlen(src);
	if (len > 1024)
		return "longer than 1024 characters";
	/* Per nesting level: the size so far, and the size of its last atom (what a quantifier copies). */
	double total[REGEX_MAX_DEPTH + 1] = { 0 }, last[REGEX_MAX_DEPTH + 1] = { 0 };
	int d = 0;
	bool after_quantifier = false;
	for (size_t i = 0; i < len; i++) {
		char c = src[i];
		double atom = 1;
		bool quantifier = c == '*' || c == '+' || c == '?' || c == '{';
		if (quantifier && after_quantifier)
			return "a repetition operator applied to another";
		after_quantifier = quantifier;
		if (c == '\\' && i + 1 < len) {
			i++;
		} else if (c == '[') { /* a bracket expression: one atom, its characters literal */
			size_t j = i + 1;
			if (j < len && src[j] == '^')
				j++;
			if (j < len && src[j] == ']')
				j++;
			while (j < len && src[j] != ']')
				j++;
			i = j;
		} else if (c == '(') {
			if (d == REGEX_MAX_DEPTH)
				return "groups nested more than 64 deep";
			d++;
			total[d] = last[d] = 0;
			continue;
		} else if (c == ')' && d > 0) {
			atom = total[d] > 1 ? total[d] : 1;
			d--;
		} else if (c == '|') {
			last[d] = 0;
			continue;
		} else if (quantifier) {
			double times = 2;
			if (c == '{') {
				char *end;
				long lo = strtol(src + i + 1, &end, 10), hi = lo;
				if (lo > 255) /* before lo + 1: strtol gives LONG_MAX for a count past its range */
					return "a repetition count above 255";
				if (*end == ',')
					hi = end[1] == '}' ? lo + 1 : strtol(end + 1, &end, 10);
				if (hi > 255)
					return "a repetition count above 255";
				times = (double)(hi > lo ? hi : lo) + 1;
				while (i < len && src[i] != '}')
					i++;
			}
			total[d] += last[d] * (times - 1);
			last[d] *= times;
			if (total[d] > REGEX_MAX_SIZE)
				return "nested repetitions would make the compiled pattern too large";
			continue;
		}
		total[d] += atom;
		last[d] = atom;
		if (total[d] > REGEX_MAX_SIZE)
			return "nested repetitions would make the compiled pattern too large";
	}
	return NULL;
}

static nmp_status compile(regex_t *re, const char *src, const char *what, nmp_error *err)
{
	const char *problem = regex_problem(src);
	if (problem)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: regex '%.80s%s' not accepted: %s", what, src,
				     strlen(src) > 80 ? "..." : "", problem);
	int rc = regcomp(re, src, REG_EXTENDED | REG_NOSUB);
	if (rc != 0) {
		char msg[128];
		regerror(rc, re, msg, sizeof msg);
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: bad regex '%s': %s", what, src, msg);
	}
	return NMP_OK;
}

static nmp_status compile_list(regex_list *l, const char *const *src, size_t n, const char *what,
			       nmp_error *err)
{
	l->n = 0;
	l->re = calloc(n ? n : 1, sizeof *l->re);
	if (!l->re)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		NMP_TRY(compile(&l->re[i], src[i], what, err));
		l->n++;
	}
	return NMP_OK;
}

static void free_list(regex_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		regfree(&l->re[i]);
	free(l->re);
}

/* Does `re` match the weight's name or any consumer node's name? */
static bool matches(const regex_t *re, const nmp_candidate *c)
{
	if (regexec(re, c->name, 0, NULL, 0) == 0)
		return true;
	for (size_t i = 0; i < c->n_uses; i++)
		if (regexec(re, c->uses[i].node_name, 0, NULL, 0) == 0)
			return true;
	return false;
}

static bool any_match(const regex_list *l, const nmp_candidate *c)
{
	for (size_t i = 0; i < l->n; i++)
		if (matches(&l->re[i], c))
			return true;
	return false;
}

/* ---- rules file ------------------------------------------------------------------ */

static nmp_status rule_error(nmp_error *err, const char *path, size_t i, const char *why)
{
	return nmp_error_set(err, NMP_ERR_USAGE, "%s: rule %zu: %s", path, i, why);
}

/*
 * The exact transposable method solves a min-cost flow per tile whose cost
 * grows about as M^4: above M = 32 one 256 x 256 weight takes seconds to
 * minutes, so larger tiles must ask for the greedy method.
 */
#define EXACT_TILE_MAX_M 32

static nmp_status check_tile_method(const nmp_pattern *p, nmp_error *err)
{
	if (p->structured && p->unit == NMP_UNIT_TILE && !p->greedy && p->m > EXACT_TILE_MAX_M)
		return nmp_error_set(err, NMP_ERR_USAGE,
				     "pattern '%s': the exact transposable method takes M up to %d; use --method greedy",
				     p->text, EXACT_TILE_MAX_M);
	return NMP_OK;
}

static nmp_status load_rules(const char *path, bool greedy, rule **out, size_t *n_out, nmp_error *err)
{
	*out = NULL;
	*n_out = 0;
	/* Refused unless a regular file: a FIFO would block, a device never end. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return nmp_error_errno(err, errno, "cannot open rules file", path);
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return nmp_error_set(err, NMP_ERR_IO, "%s: rules file is not a regular file", path);
	}
	FILE *f = fdopen(fd, "r");
	if (!f) {
		close(fd);
		return nmp_error_errno(err, errno, "cannot open rules file", path);
	}
	json_error_t je;
	json_t *root = json_loadf(f, 0, &je);
	fclose(f);
	if (!root)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: line %d: %s", path, je.line, je.text);
	nmp_status s = NMP_OK;
	if (!json_is_array(root)) {
		s = nmp_error_set(err, NMP_ERR_USAGE, "%s: expected a JSON array of rules", path);
		goto out;
	}
	size_t n = json_array_size(root);
	rule *rules = calloc(n ? n : 1, sizeof *rules);
	if (!rules) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		goto out;
	}
	*out = rules;
	for (size_t i = 0; i < n && s == NMP_OK; i++) {
		json_t *r = json_array_get(root, i);
		if (!json_is_object(r)) {
			s = rule_error(err, path, i, "expected an object");
			break;
		}
		const char *key;
		json_t *v;
		json_object_foreach(r, key, v) {
			if (strcmp(key, "match") != 0 && strcmp(key, "pattern") != 0 && strcmp(key, "dense") != 0) {
				char why[160];
				snprintf(why, sizeof why, "unknown key '%s' (expected match, pattern or dense)", key);
				s = rule_error(err, path, i, why);
				break;
			}
		}
		if (s != NMP_OK)
			break;
		json_t *match = json_object_get(r, "match");
		json_t *pattern = json_object_get(r, "pattern");
		json_t *dense = json_object_get(r, "dense");
		if (!json_is_string(match)) {
			s = rule_error(err, path, i, "needs \"match\": a regex string");
			break;
		}
		if ((pattern != NULL) == (dense != NULL)) {
			s = rule_error(err, path, i, "needs exactly one of \"pattern\" or \"dense\"");
			break;
		}
		char what[512];
		snprintf(what, sizeof what, "%s: rule %zu", path, i);
		regex_t re;
		if ((s = compile(&re, json_string_value(match), what, err)) != NMP_OK)
			break;
		rules[i].re = re;
		(*n_out)++;
		if (dense) {
			if (!json_is_true(dense)) {
				s = rule_error(err, path, i, "\"dense\" must be true");
				break;
			}
			rules[i].dense = true;
			continue;
		}
		if (!json_is_string(pattern)) {
			s = rule_error(err, path, i, "\"pattern\" must be a string");
			break;
		}
		nmp_error perr = { 0 };
		if (nmp_pattern_parse(json_string_value(pattern), &rules[i].pattern, &perr) != NMP_OK) {
			s = rule_error(err, path, i, perr.message);
			break;
		}
		if (!rules[i].pattern.method_set)
			rules[i].pattern.greedy = greedy;
		if (check_tile_method(&rules[i].pattern, &perr) != NMP_OK) {
			s = rule_error(err, path, i, perr.message);
			break;
		}
	}
out:
	json_decref(root);
	return s;
}

static void free_rules(rule *r, size_t n)
{
	for (size_t i = 0; i < n; i++)
		regfree(&r[i].re);
	free(r);
}

/* ---- eligibility ------------------------------------------------------------------ */

/* --ops names the float ops; MatMulInteger goes with MatMul, ConvInteger with Conv. */
static bool op_selected(const char *ops, const char *op)
{
	if (strcmp(op, "MatMulInteger") == 0)
		op = "MatMul";
	else if (strcmp(op, "ConvInteger") == 0)
		op = "Conv";
	size_t n = strlen(op);
	for (const char *p = ops; *p;) {
		const char *q = strchr(p, ',');
		size_t len = q ? (size_t)(q - p) : strlen(p);
		if (len == n && strncmp(p, op, n) == 0)
			return true;
		p += len + (q != NULL);
	}
	return false;
}

static nmp_status check_ops(const char *ops, nmp_error *err)
{
	for (const char *p = ops; *p;) {
		const char *q = strchr(p, ',');
		size_t len = q ? (size_t)(q - p) : strlen(p);
		char op[32];
		snprintf(op, sizeof op, "%.*s", (int)(len < 31 ? len : 31), p);
		if (!nmp_graph_is_consumer(op))
			return nmp_error_set(err, NMP_ERR_USAGE,
					     "--ops: unknown op '%s' (expected Conv, Gemm, MatMul, ConvTranspose)", op);
		p += len + (q != NULL);
	}
	return NMP_OK;
}

static const char *dtype_problem(const nmp_candidate *c)
{
	static _Thread_local char buf[64];
	int32_t dt = c->tensor->dtype;
	if (c->quant.present) {
		if (dt == NMP_DT_INT8 || dt == NMP_DT_UINT8)
			return NULL;
		snprintf(buf, sizeof buf, "unsupported dtype %s behind DequantizeLinear", nmp_dtype_name(dt));
		return buf;
	}
	if (dt == NMP_DT_FLOAT || dt == NMP_DT_FLOAT16 || dt == NMP_DT_BFLOAT16 || dt == NMP_DT_DOUBLE)
		return NULL;
	if (dt == NMP_DT_INT8 || dt == NMP_DT_UINT8)
		return "quantized weight without DequantizeLinear";
	snprintf(buf, sizeof buf, "unsupported dtype %s", nmp_dtype_name(dt));
	return buf;
}

static unsigned cusparselt_multiple(int32_t dt)
{
	if (dt == NMP_DT_FLOAT16 || dt == NMP_DT_BFLOAT16)
		return 16;
	if (dt == NMP_DT_INT8 || dt == NMP_DT_UINT8)
		return 32;
	return 8;
}

/* Shape and alignment; writes the reason and returns false when not eligible. */
static bool shape_ok(nmp_choice *ch, nmp_align align, int32_t dt)
{
	const nmp_pattern *p = &ch->pattern;
	unsigned ur = nmp_pattern_unit_rows(p), gc = nmp_pattern_group_cols(p);
	bool has_out = ch->cand->out_axis >= 0;

	if (ur > 1 && !has_out) {
		snprintf(ch->reason, sizeof ch->reason, "no output-channel axis for a %s pattern", p->text);
		return false;
	}
	if (ur > 1 && ch->out_channels % ur != 0) {
		snprintf(ch->reason, sizeof ch->reason, "output channels %llu are not a multiple of %u (%s)",
			 (unsigned long long)ch->out_channels, ur, p->text);
		return false;
	}
	if (ch->cols % gc != 0) {
		snprintf(ch->reason, sizeof ch->reason, "group axis %llu is not a multiple of %u (%s)",
			 (unsigned long long)ch->cols, gc, p->text);
		return false;
	}
	if (!p->structured || align == NMP_ALIGN_NONE)
		return true;
	unsigned kc, ko;
	const char *rule;
	if (align == NMP_ALIGN_ASP) {
		kc = gc > 16 ? gc : 16;
		ko = 8;
		rule = "asp";
	} else {
		kc = ko = cusparselt_multiple(dt);
		rule = "cusparselt";
	}
	if (ch->cols % kc != 0) {
		snprintf(ch->reason, sizeof ch->reason, "group axis %llu is not a multiple of %u (--align %s)",
			 (unsigned long long)ch->cols, kc, rule);
		return false;
	}
	if (ch->out_channels % ko != 0) {
		snprintf(ch->reason, sizeof ch->reason, "output channels %llu are not a multiple of %u (--align %s)",
			 (unsigned long long)ch->out_channels, ko, rule);
		return false;
	}
	return true;
}

static void decide(nmp_choice *ch, const nmp_select_opts *o, nmp_align align, const nmp_pattern *dflt,
		   const regex_list *inc, const regex_list *exc, const rule *rules, size_t n_rules)
{
	const nmp_candidate *c = ch->cand;
	ch->pattern = *dflt;
	ch->rule = -1;
	if (c->problem[0]) {
		snprintf(ch->reason, sizeof ch->reason, "%s", c->problem);
		return;
	}
	for (size_t i = 0; i < c->n_uses; i++) {
		if (!op_selected(o->ops, c->uses[i].op)) {
			snprintf(ch->reason, sizeof ch->reason, "op %s not in --ops", c->uses[i].op);
			return;
		}
	}
	const nmp_tensor *t = c->tensor;
	ch->cols = (uint64_t)t->dims[c->axis];
	ch->rows = ch->cols ? t->numel / ch->cols : 0;
	ch->out_channels = c->out_axis >= 0 ? (uint64_t)t->dims[c->out_axis] : 1;
	const char *why = dtype_problem(c);
	if (why) {
		snprintf(ch->reason, sizeof ch->reason, "%s", why);
		return;
	}
	for (size_t i = 0; i < c->n_uses; i++) {
		if (c->uses[i].depthwise) {
			snprintf(ch->reason, sizeof ch->reason, "depthwise convolution");
			return;
		}
	}
	if (t->numel == 0 || t->storage == NMP_STORE_NONE) {
		snprintf(ch->reason, sizeof ch->reason, "empty tensor");
		return;
	}
	if (inc->n && !any_match(inc, c)) {
		snprintf(ch->reason, sizeof ch->reason, "not matched by --include");
		return;
	}
	if (any_match(exc, c)) {
		snprintf(ch->reason, sizeof ch->reason, "excluded by --exclude");
		return;
	}
	for (size_t i = 0; i < n_rules; i++) {
		if (!matches(&rules[i].re, c))
			continue;
		ch->rule = (int)i;
		if (rules[i].dense) {
			snprintf(ch->reason, sizeof ch->reason, "dense by rule %zu", i);
			return;
		}
		ch->pattern = rules[i].pattern;
		break;
	}
	if (!shape_ok(ch, align, t->dtype))
		return;
	ch->eligible = true;
}

nmp_status nmp_select(const nmp_model *m, const nmp_graph *g, const nmp_select_opts *o,
		      nmp_selection **out, nmp_error *err)
{
	(void)m;
	nmp_pattern dflt;
	nmp_align align;
	regex_list inc = { 0 }, exc = { 0 };
	rule *rules = NULL;
	size_t n_rules = 0;
	nmp_selection *sel = NULL;
	nmp_status s;

	*out = NULL;
	if ((s = nmp_pattern_parse(o->pattern, &dflt, err)) != NMP_OK)
		return s;
	if (!dflt.method_set)
		dflt.greedy = o->greedy;
	if ((s = check_tile_method(&dflt, err)) != NMP_OK)
		return s;
	if (o->greedy && !o->rules_path && dflt.unit != NMP_UNIT_TILE)
		return nmp_error_set(err, NMP_ERR_USAGE, "--method greedy: pattern '%s' is not transposable (N:M@t)",
				     dflt.text);
	if (!nmp_align_parse(o->align, &align))
		return nmp_error_set(err, NMP_ERR_USAGE, "--align '%s': expected asp, cusparselt or none", o->align);
	if ((s = check_ops(o->ops, err)) != NMP_OK)
		return s;
	if ((s = compile_list(&inc, o->include, o->n_include, "--include", err)) != NMP_OK)
		goto out;
	if ((s = compile_list(&exc, o->exclude, o->n_exclude, "--exclude", err)) != NMP_OK)
		goto out;
	if (o->rules_path && (s = load_rules(o->rules_path, o->greedy, &rules, &n_rules, err)) != NMP_OK)
		goto out;

	sel = calloc(1, sizeof *sel);
	if (sel)
		sel->choices = calloc(g->n_cands ? g->n_cands : 1, sizeof *sel->choices);
	if (!sel || !sel->choices) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		goto out;
	}
	sel->n = g->n_cands;
	snprintf(sel->default_pattern, sizeof sel->default_pattern, "%s", dflt.text);
	for (size_t i = 0; i < g->n_cands; i++) {
		sel->choices[i].cand = &g->cands[i];
		decide(&sel->choices[i], o, align, &dflt, &inc, &exc, rules, n_rules);
		sel->n_eligible += sel->choices[i].eligible;
	}
	/* The first floor(F x eligible) eligible weights, in graph order, stay dense. */
	/* floor(F x n), robust to the rounding of F x n (0.3 x 10 is 2.9999999999999996) but not beyond it. */
	double fn = o->dense_first * (double)sel->n_eligible;
	size_t keep = (size_t)floor(fn + fn * 4 * DBL_EPSILON);
	for (size_t i = 0; i < sel->n && keep > 0; i++) {
		if (!sel->choices[i].eligible)
			continue;
		sel->choices[i].eligible = false;
		snprintf(sel->choices[i].reason, sizeof sel->choices[i].reason, "dense-first");
		sel->n_eligible--;
		keep--;
	}
	*out = sel;
	sel = NULL;
out:
	free_list(&inc);
	free_list(&exc);
	free_rules(rules, n_rules);
	nmp_selection_free(&sel);
	return s;
}

void nmp_selection_free(nmp_selection **ps)
{
	nmp_selection *s = *ps;
	if (!s)
		return;
	free(s->choices);
	free(s);
	*ps = NULL;
}
