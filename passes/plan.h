/*
 * plan.h — the front half every command shares: load the model, walk the
 * graph, select the weights.  `inspect` is this pass alone; `prune` and
 * `check` continue from its result.
 *
 * Ownership: nmp_plan_build fills a caller-owned nmp_plan; nmp_plan_free
 * releases what it holds (and is safe on a zeroed or half-built plan).
 */
#ifndef NMP_PLAN_H
#define NMP_PLAN_H

#include "graph.h"
#include "model.h"
#include "select.h"

typedef struct nmp_plan {
	nmp_model *model;
	nmp_graph *graph;
	nmp_selection *sel;
} nmp_plan;

nmp_status nmp_plan_build(const char *path, const nmp_select_opts *o, nmp_plan *p, nmp_error *err);
void nmp_plan_free(nmp_plan *p);

#endif
