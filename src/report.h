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

/* One candidate's consumers, "node (Op), node (Op)". */
void nmp_report_consumers(const nmp_candidate *c, char *buf, size_t cap);
/* "[a,b,c]" */
void nmp_report_shape(const nmp_tensor *t, char *buf, size_t cap);

/* The candidates of a plan as a JSON array (new reference). */
json_t *nmp_report_inspect_json(const nmp_plan *p);
nmp_status nmp_report_inspect(FILE *f, const nmp_plan *p, bool json, nmp_error *err);

#endif
