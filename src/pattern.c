#include "pattern.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static nmp_status bad(nmp_error *err, const char *s, const char *why)
{
	return nmp_error_set(err, NMP_ERR_USAGE, "pattern '%s': %s", s, why);
}

/* A decimal number of at most 9 digits; advances *p. */
static bool number(const char **p, unsigned *v)
{
	const char *s = *p;
	unsigned r = 0;
	int digits = 0;
	while (isdigit((unsigned char)*s) && digits < 9) {
		r = r * 10 + (unsigned)(*s - '0');
		s++;
		digits++;
	}
	if (digits == 0 || isdigit((unsigned char)*s))
		return false;
	*v = r;
	*p = s;
	return true;
}

static nmp_status check_nm(const char *s, unsigned n, unsigned m, nmp_error *err)
{
	if (n < 1)
		return bad(err, s, "N must be at least 1");
	if (m > NMP_PATTERN_MAX_M)
		return bad(err, s, "M must be at most 256");
	if (n >= m)
		return bad(err, s, "N must be less than M");
	return NMP_OK;
}

/* The part after '@': vV, bRxC or t. */
static nmp_status suffix(const char *s, const char *q, nmp_pattern *p, nmp_error *err)
{
	if (*q == 'v') {
		q++;
		if (!number(&q, &p->v) || *q)
			return bad(err, s, "expected @vV with V a number of rows");
		if (p->v < 1)
			return bad(err, s, "vector size V must be at least 1");
		p->unit = NMP_UNIT_VECTOR;
		return NMP_OK;
	}
	if (*q == 'b') {
		q++;
		if (!number(&q, &p->br) || *q != 'x')
			return bad(err, s, "expected @bRxC (block of R rows by C columns)");
		q++;
		if (!number(&q, &p->bc) || *q)
			return bad(err, s, "expected @bRxC (block of R rows by C columns)");
		if (p->br < 1 || p->bc < 1)
			return bad(err, s, "block sides must be at least 1");
		p->unit = NMP_UNIT_BLOCK;
		return NMP_OK;
	}
	if (*q == 't' && q[1] == '\0') {
		if (!p->structured)
			return bad(err, s, "@t needs an N:M pattern");
		p->unit = NMP_UNIT_TILE;
		return NMP_OK;
	}
	return bad(err, s, "unknown suffix (expected @vV, @bRxC or @t)");
}

/* m<M>n<N>[v<V>]_<1d|2d>[_best|_greedy] */
static nmp_status asp_alias(const char *s, nmp_pattern *p, nmp_error *err)
{
	const char *q = s + 1;
	unsigned m, n, v = 0;
	if (!number(&q, &m) || *q != 'n')
		return bad(err, s, "expected an Apex ASP name such as m4n2_1d");
	q++;
	if (!number(&q, &n))
		return bad(err, s, "expected an Apex ASP name such as m4n2_1d");
	if (*q == 'v') {
		q++;
		if (!number(&q, &v) || v < 1)
			return bad(err, s, "expected v<V> with V at least 1");
	}
	int dims;
	if (strncmp(q, "_1d", 3) == 0)
		dims = 1;
	else if (strncmp(q, "_2d", 3) == 0)
		dims = 2;
	else
		return bad(err, s, "expected _1d or _2d");
	q += 3;
	if (strcmp(q, "_best") == 0) {
		p->method_set = true;
	} else if (strcmp(q, "_greedy") == 0) {
		p->method_set = true;
		p->greedy = true;
	} else if (*q) {
		return bad(err, s, "expected _best or _greedy after _1d/_2d");
	}
	NMP_TRY(check_nm(s, n, m, err));
	p->structured = true;
	p->n = n;
	p->m = m;
	if (v) {
		p->unit = NMP_UNIT_VECTOR;
		p->v = v;
	} else {
		p->unit = dims == 2 ? NMP_UNIT_TILE : NMP_UNIT_ELEMENT;
	}
	return NMP_OK;
}

static void canonical(nmp_pattern *p)
{
	char head[24];
	if (p->structured)
		snprintf(head, sizeof head, "%u:%u", p->n, p->m);
	else
		snprintf(head, sizeof head, "%g%%", p->sparsity * 100.0);
	switch (p->unit) {
	case NMP_UNIT_ELEMENT: snprintf(p->text, sizeof p->text, "%s", head); break;
	case NMP_UNIT_VECTOR: snprintf(p->text, sizeof p->text, "%s@v%u", head, p->v); break;
	case NMP_UNIT_BLOCK: snprintf(p->text, sizeof p->text, "%s@b%ux%u", head, p->br, p->bc); break;
	case NMP_UNIT_TILE: snprintf(p->text, sizeof p->text, "%s@t", head); break;
	}
}

nmp_status nmp_pattern_parse(const char *s, nmp_pattern *p, nmp_error *err)
{
	memset(p, 0, sizeof *p);
	if (!s || !*s)
		return bad(err, s ? s : "", "empty pattern");
	if (strlen(s) > 40)
		return bad(err, "...", "pattern too long");

	if (s[0] == 'm' && isdigit((unsigned char)s[1])) {
		NMP_TRY(asp_alias(s, p, err));
		canonical(p);
		return NMP_OK;
	}

	const char *at = strchr(s, '@');
	size_t head = at ? (size_t)(at - s) : strlen(s);
	const char *colon = memchr(s, ':', head);
	if (colon) {
		const char *q = s;
		unsigned n, m;
		if (!number(&q, &n) || q != colon)
			return bad(err, s, "expected N:M with N and M whole numbers");
		q++;
		if (!number(&q, &m) || q != s + head)
			return bad(err, s, "expected N:M with N and M whole numbers");
		NMP_TRY(check_nm(s, n, m, err));
		p->structured = true;
		p->n = n;
		p->m = m;
	} else if (head > 0 && s[head - 1] == '%') {
		char num[32];
		if (head - 1 == 0 || head - 1 >= sizeof num)
			return bad(err, s, "expected P% with P a number");
		memcpy(num, s, head - 1);
		num[head - 1] = '\0';
		for (const char *c = num; *c; c++)
			if (!isdigit((unsigned char)*c) && *c != '.')
				return bad(err, s, "expected P% with P a number");
		char *end;
		double pct = strtod(num, &end);
		if (*end)
			return bad(err, s, "expected P% with P a number");
		if (!(pct >= 0.0 && pct < 100.0))
			return bad(err, s, "sparsity must be at least 0% and below 100%");
		p->structured = false;
		p->sparsity = pct / 100.0;
	} else {
		return bad(err, s, "expected N:M, P% or an Apex ASP name");
	}
	p->unit = NMP_UNIT_ELEMENT;
	if (at)
		NMP_TRY(suffix(s, at + 1, p, err));
	/* Group and unit sizes are 32-bit in the engine: one that wraps would divide by zero or misplace groups. */
	uint64_t gcols = (uint64_t)(p->structured ? p->m : 1) * (p->unit == NMP_UNIT_BLOCK ? p->bc : 1);
	uint64_t urows = p->unit == NMP_UNIT_VECTOR ? p->v : p->unit == NMP_UNIT_BLOCK ? p->br : 1;
	if (gcols > NMP_PATTERN_MAX_SPAN || urows > NMP_PATTERN_MAX_SPAN || gcols * urows > NMP_PATTERN_MAX_SPAN)
		return bad(err, s, "a group or unit spans more than 2^31 elements");
	canonical(p);
	return NMP_OK;
}

unsigned nmp_pattern_unit_rows(const nmp_pattern *p)
{
	switch (p->unit) {
	case NMP_UNIT_VECTOR: return p->v;
	case NMP_UNIT_BLOCK: return p->br;
	case NMP_UNIT_TILE: return p->m;
	default: return 1;
	}
}

unsigned nmp_pattern_unit_cols(const nmp_pattern *p)
{
	return p->unit == NMP_UNIT_BLOCK ? p->bc : 1;
}

unsigned nmp_pattern_group_cols(const nmp_pattern *p)
{
	return p->structured ? p->m * nmp_pattern_unit_cols(p) : nmp_pattern_unit_cols(p);
}
