/*
 * tiles.c — transposable N:M: every M x M tile keeps exactly N per row and
 * per column.  Exact for M <= 4 by trying every valid tile of the shared
 * table (mask_rules.h, the same the CUDA kernels read); exact for larger M
 * as a maximum-weight b-matching of rows to columns; greedy (sort and
 * accept, which may keep fewer) on request.
 */
#include <stdlib.h>

#include "cpu.h"

static const uint16_t tile_patterns[] = NMP_TILE_PATTERNS_INIT;

/* Exact for any M: the shared flow, with scratch from the heap. */
static void tile_exact_flow(int m, int n, const double *w, uint8_t *keep)
{
	void *scratch = malloc(NMP_TILE_FLOW_SCRATCH(m));
	if (!scratch) {
		memset(keep, 0, (size_t)(m * m)); /* out of memory: nothing kept, the caller counts deficits */
		return;
	}
	nmp_tile_exact_flow(m, n, w, keep, scratch);
	free(scratch);
}

typedef struct greedy_cell {
	double w;
	int i;
} greedy_cell;

static int greedy_cmp(const void *a, const void *b)
{
	const greedy_cell *x = a, *y = b;
	if (nmp_tile_greedy_before(x->w, x->i, y->w, y->i))
		return -1;
	return nmp_tile_greedy_before(y->w, y->i, x->w, x->i) ? 1 : 0;
}

/* Greedy: largest first (ties: lower row-major index), while its row and column have room. */
static int tile_greedy(int m, int n, const double *w, uint8_t *keep)
{
	int cells = m * m;
	greedy_cell *order = malloc((size_t)cells * sizeof *order);
	int rows[NMP_PATTERN_MAX_M] = { 0 }, cols[NMP_PATTERN_MAX_M] = { 0 };
	memset(keep, 0, (size_t)cells);
	if (!order)
		return 2 * m;
	for (int i = 0; i < cells; i++)
		order[i] = (greedy_cell){ w[i], i };
	qsort(order, (size_t)cells, sizeof *order, greedy_cmp); /* a total order: any sort gives the same */
	for (int i = 0; i < cells; i++) {
		int r = order[i].i / m, c = order[i].i % m;
		if (rows[r] < n && cols[c] < n) {
			keep[order[i].i] = 1;
			rows[r]++;
			cols[c]++;
		}
	}
	free(order);
	int deficits = 0;
	for (int i = 0; i < m; i++)
		deficits += (rows[i] < n) + (cols[i] < n);
	return deficits;
}

void nmp_cpu_tiles_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	nmp_cpu_acc *acc = accp;
	const int m = (int)j->p->m, n = (int)j->p->n;
	const uint64_t groups = j->L / (uint64_t)m;
	int n_pat;
	const uint16_t *pats = tile_patterns + nmp_tile_table((unsigned)m, (unsigned)n, &n_pat);
	double *w = malloc((size_t)(m * m) * sizeof *w);
	uint8_t *keep = malloc((size_t)(m * m));
	if (!w || !keep) {
		free(w);
		free(keep);
		acc->deficits += (e - b) * 2 * (uint64_t)m;
		return;
	}
	const uint64_t rblocks = j->rows / (uint64_t)m;
	const bool rows_fast = nmp_cpu_rows_fast(j);
	for (uint64_t it = b; it < e; it++) {
		const uint64_t rb = rows_fast ? it % rblocks : it / groups, g = rows_fast ? it / rblocks : it % groups;
		uint64_t r0 = rb * (uint64_t)m, c0 = g * (uint64_t)m;
		for (int r = 0; r < m; r++)
			for (int c = 0; c < m; c++)
				w[r * m + c] = nmp_key_mag(j->kk, nmp_cpu_elem_key(j, nmp_cpu_at(j, r0 + (uint64_t)r, c0 + (uint64_t)c)));
		if (j->p->greedy) {
			acc->deficits += (uint64_t)tile_greedy(m, n, w, keep);
		} else if (n_pat > 0) {
			uint16_t best = pats[nmp_tile_best(pats, n_pat, (unsigned)m, w)];
			for (int r = 0; r < m; r++)
				for (int c = 0; c < m; c++)
					keep[r * m + c] = best >> (4 * r + c) & 1;
		} else {
			tile_exact_flow(m, n, w, keep);
		}
		for (int r = 0; r < m; r++)
			for (int c = 0; c < m; c++)
				nmp_cpu_mark(j, nmp_cpu_at(j, r0 + (uint64_t)r, c0 + (uint64_t)c), keep[r * m + c], acc);
	}
	free(w);
	free(keep);
}
