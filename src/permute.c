#include "permute.h"

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
	/* 2:4: per group and row, the three largest magnitudes and where the top two are */
	float *t1, *t2, *t3;
	uint8_t *p1, *p2;
} search;

/* Refreshes the 2:4 summary of group g (its three largest per row, top-two positions). */
static void summarize_24(search *s, size_t g)
{
	for (size_t r = 0; r < s->rows; r++) {
		float v[4];
		for (unsigned i = 0; i < 4; i++)
			v[i] = s->colmag[(size_t)s->perm[g * 4 + i] * s->rows + r];
		uint8_t a = 0;
		for (uint8_t i = 1; i < 4; i++)
			if (v[i] > v[a])
				a = i;
		uint8_t b = a == 0 ? 1 : 0;
		for (uint8_t i = 0; i < 4; i++)
			if (i != a && v[i] > v[b])
				b = i;
		float third = -1;
		for (uint8_t i = 0; i < 4; i++)
			if (i != a && i != b && v[i] > third)
				third = v[i];
		size_t k = g * s->rows + r;
		s->t1[k] = v[a];
		s->t2[k] = v[b];
		s->t3[k] = third;
		s->p1[k] = a;
		s->p2[k] = b;
	}
}

/* 2:4 kept magnitude of group g with position `pos` holding column `col`: O(1) a row. */
static double group_kept_24(const search *s, size_t g, unsigned pos, uint32_t col)
{
	const float *t1 = s->t1 + g * s->rows, *t2 = s->t2 + g * s->rows, *t3 = s->t3 + g * s->rows;
	const uint8_t *p1 = s->p1 + g * s->rows, *p2 = s->p2 + g * s->rows;
	const float *in = s->colmag + (size_t)col * s->rows;
	/* Eight float lanes, summed in double at the end: the loop vectorizes. */
	float lane[8] = { 0 };
	size_t r = 0;
	for (; r + 8 <= s->rows; r += 8)
		for (int k = 0; k < 8; k++) {
			size_t i = r + (size_t)k;
			/* The two largest that remain, x >= y; with b added the top two are x + max(y, b). */
			float x = pos == p1[i] ? t2[i] : t1[i];
			float y = (pos == p1[i] || pos == p2[i]) ? t3[i] : t2[i];
			lane[k] += x + (in[i] > y ? in[i] : y);
		}
	double total = 0;
	for (; r < s->rows; r++) {
		float x = pos == p1[r] ? t2[r] : t1[r];
		float y = (pos == p1[r] || pos == p2[r]) ? t3[r] : t2[r];
		total += (double)x + (double)(in[r] > y ? in[r] : y);
	}
	for (int k = 0; k < 8; k++)
		total += lane[k];
	return total;
}

static double group_kept(search *s, size_t g, size_t swap_out, uint32_t swap_in)
{
	double total = 0;
	for (size_t r = 0; r < s->rows; r++) {
		for (unsigned i = 0; i < s->m; i++) {
			size_t pos = g * s->m + i;
			uint32_t c = pos == swap_out ? swap_in : s->perm[pos];
			s->scratch[i] = s->colmag[(size_t)c * s->rows + r];
		}
		total += top_sum(s->scratch, s->m, s->n);
	}
	return total;
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
	if (s->t1) {
		*ga = group_kept_24(s, a, (unsigned)(p % 4), s->perm[q]);
		*gb = group_kept_24(s, b, (unsigned)(q % 4), s->perm[p]);
	} else {
		*ga = group_kept(s, a, p, s->perm[q]);
		*gb = group_kept(s, b, q, s->perm[p]);
	}
	s->evals++;
	return *ga + *gb - s->group[a] - s->group[b];
}

/* Sets group g's kept magnitude (and 2:4 summary) from the current order. */
static void refresh(search *s, size_t g)
{
	if (s->t1)
		summarize_24(s, g);
	s->group[g] = group_kept(s, g, (size_t)-1, 0);
}

static void do_swap(search *s, size_t p, size_t q, double ga, double gb)
{
	uint32_t t = s->perm[p];
	s->perm[p] = s->perm[q];
	s->perm[q] = t;
	s->group[p / s->m] = ga;
	s->group[q / s->m] = gb;
	if (s->t1) {
		summarize_24(s, p / s->m);
		summarize_24(s, q / s->m);
	}
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
		if (p / s->m == q / s->m)
			continue;
		double ga, gb;
		double gain = swap_gain(s, p, q, &ga, &gb);
		if (gain > 1e-6 * (s->group[p / s->m] + s->group[q / s->m] + 1e-30))
			do_swap(s, p, q, ga, gb);
	}
}

/* Local descent by first-improvement swaps; returns when none improves or the budget ends. */
static void descend(search *s)
{
	if ((uint64_t)s->cols * s->cols / 2 > 4 * s->budget) {
		descend_random(s);
		return;
	}
	const size_t block = s->block ? s->block : s->cols;
	bool improved = true;
	while (improved && s->evals < s->budget) {
		improved = false;
		for (size_t p = 0; p < s->cols && s->evals < s->budget; p++) {
			size_t end = (p / block + 1) * block;
			for (size_t q = (p / s->m + 1) * s->m; q < end && s->evals < s->budget; q++) {
				double ga, gb;
				double gain = swap_gain(s, p, q, &ga, &gb);
				/* Above float rounding of the sums, so a swap never undoes itself. */
				if (gain > 1e-6 * (s->group[p / s->m] + s->group[q / s->m] + 1e-30)) {
					do_swap(s, p, q, ga, gb);
					improved = true;
				}
			}
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
	 * group of M, nothing can move: the identity is the answer.
	 */
	const size_t blk = o->block ? o->block : cols;
	bool movable = false;
	for (size_t b0 = 0; b0 < cols && !movable; b0 += blk)
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
	size_t cells = rows * (cols / o->m);
	if (o->n == 2 && o->m == 4) {
		s.t1 = malloc(cells * sizeof *s.t1);
		s.t2 = malloc(cells * sizeof *s.t2);
		s.t3 = malloc(cells * sizeof *s.t3);
		s.p1 = malloc(cells);
		s.p2 = malloc(cells);
	}
	bool fast_ok = !(o->n == 2 && o->m == 4) || (s.t1 && s.t2 && s.t3 && s.p1 && s.p2);
	if (!colmag || !s.group || !s.scratch || !best || !fast_ok) {
		free(colmag);
		free(s.group);
		free(s.scratch);
		free(best);
		free(s.t1), free(s.t2), free(s.t3), free(s.p1), free(s.p2);
		return -1;
	}
	for (size_t r = 0; r < rows; r++)
		for (size_t c = 0; c < cols; c++)
			colmag[c * rows + r] = mag[r * cols + c];
	s.colmag = colmag;
	for (size_t g = 0; g < cols / o->m; g++)
		refresh(&s, g);
	/*
	 * The default budget, in row evaluations so that time does not depend on
	 * the shape: 36M with the 2:4 evaluator (under 0.1 s on one core), 6M with
	 * the general one, whose evaluations cost several times more, and fewer
	 * where one costs more than 64 operations (about N x M: 16:32 gets 1/8).
	 */
	uint64_t general = 6000000;
	if ((uint64_t)o->n * o->m > 64)
		general = general * 64 / ((uint64_t)o->n * o->m);
	s.budget = o->budget ? o->budget : (s.t1 ? 36000000 : general) / rows * (o->effort > 1 ? o->effort : 1) + 1;

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
	free(s.t1), free(s.t2), free(s.t3), free(s.p1), free(s.p2);
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
