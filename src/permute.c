#include "permute.h"

#include "parallel.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define MAX_M 256

/* Sum of the n largest of w[0..m), reordering w: quickselect (Hoare) puts them first. */
static double select_top(float *w, size_t m, size_t n)
{
	ptrdiff_t lo = 0, hi = (ptrdiff_t)m - 1, k = (ptrdiff_t)n - 1;
	while (lo < hi) {
		float pivot = w[lo + (hi - lo) / 2];
		ptrdiff_t i = lo, j = hi;
		do {
			while (w[i] > pivot)
				i++;
			while (w[j] < pivot)
				j--;
			if (i <= j) {
				float t = w[i];
				w[i++] = w[j];
				w[j--] = t;
			}
		} while (i <= j);
		/* w[lo..j] >= pivot >= w[i..hi]; between them, values equal to the pivot */
		if (k <= j)
			hi = j;
		else if (k >= i)
			lo = i;
		else
			break;
	}
	double s = 0;
	for (size_t q = 0; q < n; q++)
		s += w[q];
	return s;
}

/* Sum of the n largest of m values. */
static double top_sum(const float *v, unsigned m, unsigned n)
{
	if (m == 4 && n == 2) {
		float a = v[0], b = v[1], c = v[2], d = v[3];
		float hi1 = a > b ? a : b, lo1 = a > b ? b : a, hi2 = c > d ? c : d, lo2 = c > d ? d : c;
		float top = hi1 > hi2 ? hi1 : hi2, mid1 = hi1 > hi2 ? hi2 : hi1, mid2 = lo1 > lo2 ? lo1 : lo2;
		return (double)top + (double)(mid1 > mid2 ? mid1 : mid2);
	}
	float w[MAX_M];
	memcpy(w, v, m * sizeof *w);
	if (n > 4)
		return select_top(w, m, n);
	double s = 0;
	for (unsigned k = 0; k < n; k++) { /* n passes of selection */
		unsigned best = k;
		for (unsigned i = k + 1; i < m; i++)
			if (w[i] > w[best])
				best = i;
		float t = w[k];
		w[k] = w[best];
		w[best] = t;
		s += w[k];
	}
	return s;
}

typedef struct search {
	const float *colmag; /* cols x rows: column c's magnitudes, contiguous */
	size_t rows, cols;
	unsigned n, m, block;
	uint32_t *perm;
	double *group;       /* kept magnitude of each group, over all rows */
	float *scratch;      /* m values of one row */
	uint64_t evals, budget, rng;
	/*
	 * The summary a swap is scored from.  With position i of group g
	 * emptied, a row with the newcomer v keeps x + max(v, y): y is the N-th
	 * largest of the other M - 1 values (0 when N = M) and x the sum of
	 * their N largest less y.  y holds y per group, position and row (rows
	 * contiguous), x the sum of x over the rows, per group and position, so
	 * a swap costs two passes over the rows whatever N and M.
	 */
	float *y;
	double *x;
	uint32_t *parted_order;  /* set where the descent is parted: one entry per group */
	float *parted_scratch;   /* M floats per part */
	int threads;
} search;

/*
 * One row of the summary in general.  With s_0 >= ... >= s_{M-1} the row and
 * S the sum of its N largest, emptying a position that holds v leaves
 * x = S - v and y = s_N when v >= s_{N-1} (v was kept), else x = S - s_{N-1}
 * and y = s_{N-1}.  Ties give the same values whichever equal element is
 * taken to be the one removed.
 */
static void summarize_nm(search *s, size_t g)
{
	const size_t rows = s->rows;
	const unsigned n = s->n, m = s->m;
	float *y = s->y + g * m * rows;
	double *x = s->x + g * m;
	for (unsigned i = 0; i < m; i++)
		x[i] = 0;
	for (size_t r = 0; r < rows; r++) {
		float v[MAX_M];
		for (unsigned i = 0; i < m; i++)
			v[i] = s->scratch[i] = s->colmag[(size_t)s->perm[g * m + i] * rows + r];
		float top = (float)select_top(s->scratch, m, n); /* the N largest first */
		float nth = s->scratch[0], next = 0;
		for (unsigned i = 1; i < n; i++)
			nth = s->scratch[i] < nth ? s->scratch[i] : nth;
		for (unsigned i = n; i < m; i++)
			next = s->scratch[i] > next ? s->scratch[i] : next;
		for (unsigned i = 0; i < m; i++) {
			bool kept = v[i] >= nth;
			x[i] += (double)(kept ? top - v[i] : top - nth);
			y[(size_t)i * rows + r] = kept ? next : nth;
		}
	}
}

/*
 * One row of the 2:4 summary.  With s0 >= s1 >= s2 the three largest of the
 * row, emptying a position that holds v leaves x = (v >= s0 ? s1 : s0) and
 * y = (v >= s1 ? s2 : s1); with ties the values agree whichever equal
 * element is taken to be the one removed.
 */
static inline void row_24(float v0, float v1, float v2, float v3, float x[4], float y[4])
{
	float h01 = v0 > v1 ? v0 : v1, l01 = v0 > v1 ? v1 : v0;
	float h23 = v2 > v3 ? v2 : v3, l23 = v2 > v3 ? v3 : v2;
	/* The smaller pair top and the larger pair bottom are the second and third (the other bottom is last). */
	float s0 = h01 > h23 ? h01 : h23, m1 = h01 > h23 ? h23 : h01;
	float m2 = l01 > l23 ? l01 : l23;
	float s1 = m1 > m2 ? m1 : m2, s2 = m1 > m2 ? m2 : m1;
	const float v[4] = { v0, v1, v2, v3 };
	for (int i = 0; i < 4; i++) {
		x[i] = v[i] >= s0 ? s1 : s0;
		y[i] = v[i] >= s1 ? s2 : s1;
	}
}

/* Refreshes the 2:4 summary of group g: sums in eight float lanes per position, as sum_max does. */
__attribute__((target_clones("avx2", "default"))) static void summarize_24(search *s, size_t g)
{
	const size_t rows = s->rows;
	const float *c0 = s->colmag + (size_t)s->perm[g * 4] * rows, *c1 = s->colmag + (size_t)s->perm[g * 4 + 1] * rows;
	const float *c2 = s->colmag + (size_t)s->perm[g * 4 + 2] * rows, *c3 = s->colmag + (size_t)s->perm[g * 4 + 3] * rows;
	float *y = s->y + g * 4 * rows;
	float lane[4][8] = { { 0 } };
	size_t r = 0;
	for (; r + 8 <= rows; r += 8)
		for (int k = 0; k < 8; k++) {
			size_t q = r + (size_t)k;
			float x[4], yy[4];
			row_24(c0[q], c1[q], c2[q], c3[q], x, yy);
			for (int i = 0; i < 4; i++) {
				lane[i][k] += x[i];
				y[(size_t)i * rows + q] = yy[i];
			}
		}
	double xs[4] = { 0, 0, 0, 0 };
	for (; r < rows; r++) {
		float x[4], yy[4];
		row_24(c0[r], c1[r], c2[r], c3[r], x, yy);
		for (int i = 0; i < 4; i++) {
			xs[i] += (double)x[i];
			y[(size_t)i * rows + r] = yy[i];
		}
	}
	for (int i = 0; i < 4; i++) {
		for (int k = 0; k < 8; k++)
			xs[i] += lane[i][k];
		s->x[g * 4 + i] = xs[i];
	}
}

/*
 * The sum over rows of max(in, y): eight float lanes, each taking every
 * eighth row in order, added in double at the end.  The order is fixed, so
 * every build and instruction set gives the same sum.
 */
__attribute__((target_clones("avx2", "default"))) static double sum_max(const float *in, const float *y, size_t rows)
{
	float lane[8] = { 0 };
	size_t r = 0;
	for (; r + 8 <= rows; r += 8)
		for (int k = 0; k < 8; k++)
			lane[k] += in[r + (size_t)k] > y[r + (size_t)k] ? in[r + (size_t)k] : y[r + (size_t)k];
	double total = 0;
	for (; r < rows; r++)
		total += (double)(in[r] > y[r] ? in[r] : y[r]);
	for (int k = 0; k < 8; k++)
		total += lane[k];
	return total;
}

/* Kept magnitude of group g with position `pos` holding column `col`. */
static double group_kept(const search *s, size_t g, unsigned pos, uint32_t col)
{
	const size_t slot = g * s->m + pos;
	return s->x[slot] + sum_max(s->colmag + (size_t)col * s->rows, s->y + slot * s->rows, s->rows);
}

static double total_kept(const search *s)
{
	double t = 0;
	for (size_t g = 0; g < s->cols / s->m; g++)
		t += s->group[g];
	return t;
}

/* Gain of swapping the columns at positions p and q (different groups). */
static double swap_gain(search *s, size_t p, size_t q, double *ga, double *gb)
{
	size_t a = p / s->m, b = q / s->m;
	*ga = group_kept(s, a, (unsigned)(p % s->m), s->perm[q]);
	*gb = group_kept(s, b, (unsigned)(q % s->m), s->perm[p]);
	s->evals++;
	return *ga + *gb - s->group[a] - s->group[b];
}

static void summarize(search *s, size_t g)
{
	if (s->n == 2 && s->m == 4)
		summarize_24(s, g);
	else
		summarize_nm(s, g);
}

/* Sets group g's summary and kept magnitude from the current order. */
static void refresh(search *s, size_t g)
{
	summarize(s, g);
	/* In the evaluator's own sums, so that a swap that changes nothing gains exactly 0. */
	s->group[g] = group_kept(s, g, 0, s->perm[g * s->m]);
}

static void do_swap(search *s, size_t p, size_t q, double ga, double gb)
{
	uint32_t t = s->perm[p];
	s->perm[p] = s->perm[q];
	s->perm[q] = t;
	s->group[p / s->m] = ga;
	s->group[q / s->m] = gb;
	summarize(s, p / s->m);
	summarize(s, q / s->m);
}

/*
 * Scores the swap of positions p and q (different groups) and makes it when
 * it gains more than float rounding of the sums, so that a swap never undoes
 * itself.  True when it was made.
 */
static bool try_swap(search *s, size_t p, size_t q)
{
	double ga, gb;
	double gain = swap_gain(s, p, q, &ga, &gb);
	bool gains = gain > 1e-6 * (s->group[p / s->m] + s->group[q / s->m] + 1e-30);
	if (gains)
		do_swap(s, p, q, ga, gb);
	return gains;
}

static uint64_t next_rand(search *s)
{
	s->rng ^= s->rng << 13;
	s->rng ^= s->rng >> 7;
	s->rng ^= s->rng << 17;
	return s->rng;
}

/*
 * Descent by random swaps for large matrices (more pairs than four budgets), where one sweep over every pair
 * costs far more than the budget: improvements spread over all the columns
 * instead of piling up on the first ones.
 */
static void descend_random(search *s)
{
	const size_t block = s->block ? s->block : s->cols;
	while (s->evals < s->budget) {
		size_t p = next_rand(s) % s->cols;
		size_t base = p / block * block;
		size_t q = base + next_rand(s) % block;
		if (p / s->m != q / s->m)
			try_swap(s, p, q);
	}
}

/*
 * The parted random descent (permute.h): PARTS parts of at least
 * PART_GROUPS groups each, rounds of a 32nd of the budget.
 */
#define PARTS 8
#define PART_GROUPS 16

typedef struct parted {
	search *s;
	const uint32_t *order;     /* the round's shuffled groups: part k holds its k-th share */
	size_t n_parts;
	uint64_t seeds[PARTS];
	uint64_t budget;           /* evaluations per part this round */
	uint64_t evals[PARTS];
	float *scratch;            /* M floats per part */
} parted;

/* Random swaps among part k's groups, with the part's own stream and scratch. */
static nmp_status descend_part(void *arg, size_t k, nmp_error *err)
{
	(void)err;
	parted *pt = arg;
	const size_t n_groups = pt->s->cols / pt->s->m;
	const uint32_t *mine = pt->order + k * n_groups / pt->n_parts;
	const size_t n = (k + 1) * n_groups / pt->n_parts - k * n_groups / pt->n_parts;
	search s = *pt->s; /* shares the order, the summaries and the kept sums: part k writes its groups' only */
	s.scratch = pt->scratch + k * s.m;
	s.rng = pt->seeds[k];
	s.evals = 0;
	while (s.evals < pt->budget) {
		size_t a = next_rand(&s) % n, b = (a + 1 + next_rand(&s) % (n - 1)) % n;
		size_t p = mine[a] * s.m + next_rand(&s) % s.m, q = mine[b] * s.m + next_rand(&s) % s.m;
		try_swap(&s, p, q);
	}
	pt->evals[k] = s.evals;
	return NMP_OK;
}

static void descend_parted(search *s, uint32_t *order, float *scratch, int threads)
{
	const size_t n_groups = s->cols / s->m;
	parted pt = { .s = s, .order = order, .scratch = scratch };
	pt.n_parts = n_groups / PART_GROUPS < PARTS ? n_groups / PART_GROUPS : PARTS;
	const uint64_t round = s->budget / 32 > 1024 * pt.n_parts ? s->budget / 32 : 1024 * pt.n_parts;
	for (size_t g = 0; g < n_groups; g++)
		order[g] = (uint32_t)g;
	while (s->evals < s->budget) {
		for (size_t g = n_groups - 1; g > 0; g--) { /* Fisher-Yates */
			size_t j = next_rand(s) % (g + 1);
			uint32_t t = order[g];
			order[g] = order[j];
			order[j] = t;
		}
		for (size_t k = 0; k < pt.n_parts; k++)
			pt.seeds[k] = next_rand(s) | 1;
		uint64_t left = s->budget - s->evals;
		pt.budget = ((left < round ? left : round) + pt.n_parts - 1) / pt.n_parts;
		nmp_parallel(threads, pt.n_parts, descend_part, &pt, NULL);
		for (size_t k = 0; k < pt.n_parts; k++)
			s->evals += pt.evals[k];
	}
}

/* Local descent by first-improvement swaps; returns when none improves or the budget ends. */
static void descend(search *s)
{
	if ((uint64_t)s->cols * s->cols / 2 > 4 * s->budget) {
		if (s->parted_order)
			descend_parted(s, s->parted_order, s->parted_scratch, s->threads);
		else
			descend_random(s);
		return;
	}
	const size_t block = s->block ? s->block : s->cols;
	bool improved = true;
	while (improved && s->evals < s->budget) {
		improved = false;
		for (size_t p = 0; p < s->cols && s->evals < s->budget; p++) {
			size_t end = (p / block + 1) * block;
			for (size_t q = (p / s->m + 1) * s->m; q < end && s->evals < s->budget; q++)
				improved |= try_swap(s, p, q);
		}
	}
}

/* Unstructured at the same density, per row: the `keep` largest of each row (0 when out of memory). */
static double kept_unstructured(const float *mag, size_t rows, size_t cols, size_t keep)
{
	double total = 0;
	float *row = malloc(cols * sizeof *row);
	if (!row)
		return 0;
	for (size_t r = 0; r < rows; r++) {
		memcpy(row, mag + r * cols, cols * sizeof *row);
		total += select_top(row, cols, keep);
	}
	free(row);
	return total;
}

int nmp_perm_search(const float *mag, size_t rows, size_t cols, const nmp_perm_opts *o, uint32_t *perm,
		    nmp_perm_result *res)
{
	search s = { .rows = rows, .cols = cols, .n = o->n, .m = o->m, .block = o->block, .perm = perm,
		     .rng = o->seed ? o->seed : 0x9e3779b97f4a7c15ull };
	memset(res, 0, sizeof *res);
	for (size_t c = 0; c < cols; c++)
		perm[c] = (uint32_t)c;
	if (cols == 0 || rows == 0 || o->m == 0 || cols % o->m || o->m > MAX_M)
		return 0;
	/*
	 * A swap must join two groups of M inside one block (a grouped conv's
	 * channels stay in their group).  Where every block lies within one
	 * group of M, nothing can move: the identity is the answer.  Nor is
	 * there anything to search when N is 0 or M: every order keeps the same.
	 */
	const size_t blk = o->block ? o->block : cols;
	bool movable = false;
	for (size_t b0 = 0; b0 < cols && !movable && o->n > 0 && o->n < o->m; b0 += blk)
		movable = (b0 / o->m + 1) * o->m < (b0 + blk < cols ? b0 + blk : cols);
	if (!movable) {
		res->kept_identity = res->kept = nmp_perm_kept(mag, rows, cols, o->n, o->m, perm);
		res->kept_unstructured = kept_unstructured(mag, rows, cols, cols / o->m * o->n);
		return 0;
	}
	float *colmag = malloc(rows * cols * sizeof *colmag);
	s.group = malloc((cols / o->m) * sizeof *s.group);
	s.scratch = malloc(o->m * sizeof *s.scratch);
	uint32_t *best = malloc(cols * sizeof *best);
	s.y = malloc(rows * cols * sizeof *s.y);
	s.x = malloc(cols * sizeof *s.x);
	if (!colmag || !s.group || !s.scratch || !best || !s.y || !s.x) {
		free(colmag);
		free(s.group);
		free(s.scratch);
		free(best);
		free(s.y), free(s.x);
		return -1;
	}
	for (size_t r = 0; r < rows; r++)
		for (size_t c = 0; c < cols; c++)
			colmag[c * rows + r] = mag[r * cols + c];
	s.colmag = colmag;
	for (size_t g = 0; g < cols / o->m; g++)
		refresh(&s, g);
	/*
	 * The default budget, scaled to the work: 128 row evaluations per weight
	 * (a layer twice the size gets twice the search) and at least 144M,
	 * about 0.05 s for a small matrix and 0.6 s for 1024 x 4096 on one core,
	 * but no more than 20000 evaluations per column, which a matrix of a few
	 * columns would spend on the same few pairs.  A swap's score costs the
	 * same for any N:M; the summary refreshed after a swap costs more for
	 * larger M, but swaps are few.
	 */
	const uint64_t work = (uint64_t)rows * cols;
	uint64_t evals = (128 * work > 144000000 ? 128 * work : 144000000) / rows;
	if (evals > 20000 * (uint64_t)cols && 128 * work <= 144000000)
		evals = 20000 * (uint64_t)cols;
	s.budget = o->budget ? o->budget : evals * (o->effort > 1 ? o->effort : 1) + 1;
	/* parted where the descent is random and columns move anywhere; the sizes alone decide, never threads */
	if ((uint64_t)cols * cols / 2 > 4 * s.budget && (!o->block || o->block >= cols) &&
	    cols / o->m >= 2 * PART_GROUPS) {
		s.parted_order = malloc((cols / o->m) * sizeof *s.parted_order);
		s.parted_scratch = malloc(PARTS * o->m * sizeof *s.parted_scratch);
		s.threads = o->threads;
		if (!s.parted_order || !s.parted_scratch) {
			free(s.parted_order), free(s.parted_scratch);
			free(colmag), free(s.group), free(s.scratch), free(best), free(s.y), free(s.x);
			return -1;
		}
	}

	double best_kept = total_kept(&s); /* in the search's own (float-lane) sums */
	memcpy(best, perm, cols * sizeof *best);
	const size_t block = o->block ? o->block : cols;
	while (s.evals < s.budget) {
		s.evals++; /* every round counts, so the loop ends even when no swap is evaluated */
		descend(&s);
		double now = total_kept(&s);
		if (now > best_kept) {
			best_kept = now;
			memcpy(best, perm, cols * sizeof *best);
		} else if (now < best_kept - 0.002 * best_kept) {
			memcpy(perm, best, cols * sizeof *best); /* strayed too far: back to the best */
			for (size_t g = 0; g < cols / o->m; g++)
				refresh(&s, g);
		}
		if (cols / o->m < 2)
			break;
		for (int k = 0; k < 2; k++) { /* a kick: two swaps across groups, within blocks */
			size_t p = next_rand(&s) % cols;
			size_t base = p / block * block;
			size_t q = base + next_rand(&s) % block;
			if (p / o->m == q / o->m)
				continue;
			uint32_t t = perm[p];
			perm[p] = perm[q];
			perm[q] = t;
			refresh(&s, p / o->m);
			refresh(&s, q / o->m);
		}
	}
	memcpy(perm, best, cols * sizeof *best);
	/* The search compares float-lane sums; the figures reported are exact. */
	for (size_t c = 0; c < cols; c++)
		best[c] = (uint32_t)c;
	res->kept_identity = nmp_perm_kept(mag, rows, cols, o->n, o->m, best);
	res->kept = nmp_perm_kept(mag, rows, cols, o->n, o->m, perm);
	res->evaluations = s.evals;
	res->kept_unstructured = kept_unstructured(mag, rows, cols, cols / o->m * o->n);
	free(colmag);
	free(s.group);
	free(s.scratch);
	free(best);
	free(s.y), free(s.x);
	free(s.parted_order), free(s.parted_scratch);
	return 0;
}

double nmp_perm_kept(const float *mag, size_t rows, size_t cols, unsigned n, unsigned m, const uint32_t *perm)
{
	float v[MAX_M];
	double total = 0;
	for (size_t r = 0; r < rows; r++)
		for (size_t g = 0; g < cols / m; g++) {
			for (unsigned i = 0; i < m; i++)
				v[i] = mag[r * cols + perm[g * m + i]];
			total += top_sum(v, m, n);
		}
	return total;
}

double nmp_perm_efficacy(const nmp_perm_result *r)
{
	double room = r->kept_unstructured - r->kept_identity;
	return room > 0 ? (r->kept - r->kept_identity) / room : 0.0;
}
