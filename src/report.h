/*
 * report.h — what nmprune tells the user: the inspect listing, and the prune
 * and check reports, as text tables or JSON.  The functions write to the
 * stream main gives them and never decide exit codes.
 */
#ifndef NMP_REPORT_H
#define NMP_REPORT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "error.h"
#include "plan.h"
#include "prune.h"

/* One candidate's consumers, "node (Op), node (Op)". */
void nmp_report_consumers(const nmp_candidate *c, char *buf, size_t cap);
/* "[a,b,c]" */
void nmp_report_shape(const nmp_tensor *t, char *buf, size_t cap);

/* The candidates of a plan as a JSON array (new reference). */
json_t *nmp_report_inspect_json(const nmp_plan *p);
nmp_status nmp_report_inspect(FILE *f, const nmp_plan *p, bool json, nmp_error *err);

/* The prune or check report as JSON (new reference). */
json_t *nmp_report_pass_json(const nmp_plan *p, const nmp_pass_result *r, const char *command,
			     const char *engine, const char *output, bool dry_run);
/* The per-weight table and summary of prune. */
void nmp_report_prune_text(FILE *f, const nmp_plan *p, const nmp_pass_result *r, bool dry_run);
/* The per-weight compliance table and summary of check. */
void nmp_report_check_text(FILE *f, const nmp_plan *p, const nmp_pass_result *r);
/*
 * part / whole for the statistics: 1 when whole is 0 (nothing to keep), NaN
 * when a term is not finite (a weight holding +-Inf has an infinite L1; its
 * ratios are reported as null in JSON and "-" in tables, the entry kept).
 */
double nmp_report_ratio(double part, double whole);
/* A ratio as JSON: a real, or null when it is not finite. */
json_t *nmp_report_ratio_json(double ratio);

/*
 * A name as it may be shown: invalid UTF-8 becomes U+FFFD and control
 * characters (escape sequences included) become \xNN, so that a hostile
 * name can neither break JSON nor drive a terminal.  Returns buf.
 */
const char *nmp_display_name(const char *raw, char *buf, size_t cap);
#define NMP_DISPLAY_MAX 1024

/* JSON, indented, to f (the caller checks f for errors). */
void nmp_report_print(FILE *f, json_t *j);
/* The prune report as one self-contained HTML page with an inline SVG chart (the caller checks f). */
void nmp_report_html(FILE *f, const nmp_plan *p, const nmp_pass_result *r, bool dry_run);

#endif
