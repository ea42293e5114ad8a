/*
 * select.h — which candidates are pruned, with which pattern, and why not.
 *
 * Selection takes the walker's candidates in graph order and decides, for
 * each, the pattern that applies (a rules-file match, else --pattern) and
 * whether it is eligible.  The order of the checks, and the reason reported
 * for the first that fails:
 *
 *   walker problem       "unsupported path: OP", "conflicting axes", ...
 *   --ops                "op OP not in --ops"
 *   dtype                "unsupported dtype T", "quantized weight without DequantizeLinear"
 *   depthwise Conv       "depthwise convolution"
 *   empty tensor         "empty tensor"
 *   --include/--exclude  "not matched by --include", "excluded by --exclude"
 *   rules                "dense by rule I"
 *   shape and alignment  "group axis L is not a multiple of K", "output channels C are
 *                        not a multiple of K", "no output-channel axis for a P pattern"
 *   --dense-first        "dense-first"
 *
 * Regexes are POSIX extended, unanchored, matched against the initializer
 * name and every consumer node name.  Ownership: nmp_select allocates the
 * selection, nmp_selection_free releases it; it borrows the graph.
 */
#ifndef NMP_SELECT_H
#define NMP_SELECT_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "graph.h"
#include "pattern.h"

typedef enum nmp_align { NMP_ALIGN_ASP, NMP_ALIGN_CUSPARSELT, NMP_ALIGN_NONE } nmp_align;

typedef struct nmp_select_opts {
	const char *pattern;          /* default pattern text */
	const char *align;            /* asp | cusparselt | none */
	const char *ops;              /* comma-separated consumer ops */
	const char *const *include;
	size_t n_include;
	const char *const *exclude;
	size_t n_exclude;
	double dense_first;
	const char *rules_path;       /* NULL: no rules */
	bool greedy;                  /* --method greedy for transposable patterns */
} nmp_select_opts;

typedef struct nmp_choice {
	const nmp_candidate *cand;
	nmp_pattern pattern;          /* the pattern that applies */
	bool eligible;
	int rule;                     /* rules-file index that matched, -1 none */
	char reason[128];             /* why not eligible */
	/* the 2-D view: rows x cols, cols along the group axis */
	uint64_t cols, rows, out_channels;
} nmp_choice;

typedef struct nmp_selection {
	nmp_choice *choices;          /* one per candidate, in graph order */
	size_t n;
	size_t n_eligible;
	char default_pattern[48];     /* canonical --pattern */
} nmp_selection;

nmp_status nmp_select(const nmp_model *m, const nmp_graph *g, const nmp_select_opts *o,
		      nmp_selection **out, nmp_error *err);
void nmp_selection_free(nmp_selection **s);

/* Parses --align; false if unknown. */
bool nmp_align_parse(const char *s, nmp_align *a);

#endif
