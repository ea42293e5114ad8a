/*
 * pattern.h — the sparsity pattern grammar, one parser for --pattern and for
 * rules files.
 *
 *   N:M        element-wise: keep the N largest of every M along the group axis
 *   N:M@vV     vector-wise: V consecutive rows share one N:M choice
 *   N:M@bRxC   block-wise: keep the N largest of every M blocks of R x C
 *   N:M@t      transposable: every M x M tile keeps N per row and per column
 *   P%, P%@vV, P%@bRxC   unstructured at sparsity P (fraction of units zeroed)
 *
 * Apex ASP names are read as aliases by their parts: m<M>n<N>[v<V>]_<1d|2d>
 * [_best|_greedy].  In them M is the group size and N the kept count.
 */
#ifndef NMP_PATTERN_H
#define NMP_PATTERN_H

#include <stdbool.h>

#include "error.h"

#define NMP_PATTERN_MAX_M 256
#define NMP_PATTERN_MAX_SPAN 2147483647ull /* rows, columns or elements one group or unit may span */

typedef enum nmp_unit {
	NMP_UNIT_ELEMENT,
	NMP_UNIT_VECTOR,  /* v rows x 1 column */
	NMP_UNIT_BLOCK,   /* br rows x bc columns */
	NMP_UNIT_TILE,    /* transposable M x M tiles */
} nmp_unit;

typedef struct nmp_pattern {
	bool structured;     /* N:M (true) or unstructured P% (false) */
	nmp_unit unit;
	unsigned n, m;       /* N:M */
	double sparsity;     /* P% / 100, for unstructured */
	unsigned v;          /* vector rows */
	unsigned br, bc;     /* block rows and columns */
	bool greedy;         /* transposable: sort-and-accept instead of exact */
	bool method_set;     /* greedy was fixed by an ASP alias (_best/_greedy) */
	char text[48];       /* canonical form, e.g. "2:4@v4" */
} nmp_pattern;

/* Parses `s`; on failure a usage error naming the pattern and the problem. */
nmp_status nmp_pattern_parse(const char *s, nmp_pattern *p, nmp_error *err);

/* Rows one unit spans (1, V, R or M) and columns (1, C or 1). */
unsigned nmp_pattern_unit_rows(const nmp_pattern *p);
unsigned nmp_pattern_unit_cols(const nmp_pattern *p);

/* Columns one N:M group spans along the group axis (M, M*C); 1 if unstructured. */
unsigned nmp_pattern_group_cols(const nmp_pattern *p);

#endif
