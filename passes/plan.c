#include "plan.h"

#include <string.h>

nmp_status nmp_plan_build(const char *path, const nmp_select_opts *o, nmp_plan *p, nmp_error *err)
{
	memset(p, 0, sizeof *p);
	nmp_status s = nmp_model_load(path, &p->model, err);
	if (s == NMP_OK)
		s = nmp_graph_walk(p->model, &p->graph, err);
	if (s == NMP_OK)
		s = nmp_select(p->model, p->graph, o, &p->sel, err);
	if (s != NMP_OK)
		nmp_plan_free(p);
	return s;
}

void nmp_plan_free(nmp_plan *p)
{
	nmp_selection_free(&p->sel);
	nmp_graph_free(&p->graph);
	nmp_model_free(&p->model);
}
