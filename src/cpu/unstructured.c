/*
 * unstructured.c — P% masks (elements, vectors or blocks, smallest first,
 * ties zeroing the higher unit index first), and the reference statistic:
 * what unstructured pruning would keep at a given count, read from the
 * weight as it was.  Both select by radix passes over keys, never by sorting.
 */
#include <math.h>
#include <stdlib.h>

#include "cpu.h"

/* What the parallel parts of a P% pass read: the scores and the current radix digit or threshold. */
typedef struct unstr_ctx {
	const uint64_t *score;
	uint64_t units;
	int shift;                  /* histogram: the digit's shift */
	uint64_t prefix, pmask;     /* histogram: keys matching the digits chosen so far */
	uint64_t thr, tie_prune;    /* marking */
	bool prune_any;
	uint64_t *part_begin, *ties_after; /* marking: per part of the tie count, ties at higher indices */
	int parts;
	unsigned ur, uc;
	uint64_t cb;
	uint64_t tile;              /* units: column blocks to a tile (unit_walk_next) */
} unstr_ctx;

typedef struct digit_hist {
	uint64_t count[65536];
} digit_hist;

static void hist_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	const unstr_ctx *x = j->part_ctx;
	digit_hist *h = accp;
	for (uint64_t i = b; i < e; i++)
		if ((x->score[i] & x->pmask) == x->prefix)
			h->count[(x->score[i] >> x->shift) & 0xffff]++;
}

/*
 * The k-th smallest (0-based) of the scores, by 16-bit radix passes whose
 * histograms are counted in parallel; *below receives how many are smaller.
 * Once the digits chosen so far leave few candidates (an eighth or less),
 * they are gathered, and the later passes read only them.
 */
static nmp_status kth_smallest(nmp_cpu_job *j, unstr_ctx *x, uint64_t k, int bits, uint64_t *thr, uint64_t *below)
{
	const uint64_t *all = x->score, n_all = x->units;
	uint64_t *few = NULL;
	nmp_status s = NMP_OK;
	x->prefix = x->pmask = 0;
	*below = 0;
	for (int shift = bits - 16; shift >= 0; shift -= 16) {
		int parts;
		x->shift = shift;
		digit_hist *h = nmp_cpu_parallel_for(j, x->units, 1u << 20, sizeof(digit_hist), &parts, hist_part);
		if (!h) {
			s = nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
			break;
		}
		for (int p = 1; p < parts; p++)
			for (int d = 0; d < 65536; d++)
				h[0].count[d] += h[p].count[d];
		uint64_t d = 0;
		while (h[0].count[d] <= k) {
			k -= h[0].count[d];
			*below += h[0].count[d];
			d++;
		}
		const uint64_t candidates = h[0].count[d];
		free(h);
		x->prefix |= d << shift;
		x->pmask |= (uint64_t)0xffff << shift;
		if (!few && shift > 0 && candidates <= x->units / 8 && (few = malloc(candidates * sizeof *few))) {
			uint64_t m = 0;
			for (uint64_t i = 0; i < x->units; i++)
				if ((x->score[i] & x->pmask) == x->prefix)
					few[m++] = x->score[i];
			x->score = few;
			x->units = m;
		}
	}
	x->score = all;
	x->units = n_all;
	free(few);
	*thr = x->prefix;
	return s;
}

typedef struct tie_acc {
	uint64_t ties;
} tie_acc;

static void ties_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	const unstr_ctx *x = j->part_ctx;
	uint64_t t = 0;
	for (uint64_t u = b; u < e; u++)
		t += x->score[u] == x->thr;
	((tie_acc *)accp)->ties = t;
}

/*
 * Marks units [b, e): kept above the threshold, pruned below; a tie is
 * pruned while fewer than tie_prune ties lie at higher indices (the higher
 * indices are zeroed first), counting the ties of later parts.
 */
static inline __attribute__((always_inline)) void mark_elements(nmp_cpu_job *j, const unstr_ctx *x, uint64_t b,
								      uint64_t e, uint64_t later, nmp_cpu_acc *acc,
								      nmp_key_kind kk)
{
	/* Per element the score is the key: no branch on the data but the rare tie. */
	double kept_l1 = acc->l1_kept;
	uint64_t kept = acc->kept;
	for (uint64_t u = e; u-- > b;) {
		const uint64_t sc = x->score[u];
		bool keep = !x->prune_any || sc > x->thr;
		if (x->prune_any && sc == x->thr)
			keep = later++ >= x->tie_prune;
		j->mask[u] = keep;
		kept += keep;
		kept_l1 += nmp_cpu_kept_mag(nmp_key_mag(kk, sc), keep);
	}
	acc->l1_kept = kept_l1;
	acc->kept = kept;
}

/*
 * Where neighbouring rows are neighbouring elements (a MatMul's B), units in
 * index order step down a column, a page apart: the unit passes over such a
 * layout (unstr_ctx.tile) go by tiles of UNIT_TILE column blocks, row block
 * after row block, so that a tile's pages and lines are reused while they
 * are at hand; elsewhere the tile is every column block, index order.
 * unit_walk_next gives the next run: the column blocks [*lo, *hi) of row
 * block *rb that lie both in units [b, e) and in the tile under way.
 */
enum { UNIT_TILE = 64 };

typedef struct unit_walk {
	uint64_t t0, rb; /* the tile's first column block; the next row block */
} unit_walk;

static inline unit_walk unit_walk_start(const unstr_ctx *x, uint64_t b)
{
	return (unit_walk){ 0, b / x->cb };
}

static inline bool unit_walk_next(const unstr_ctx *x, uint64_t b, uint64_t e, unit_walk *w, uint64_t *rb,
				  uint64_t *lo, uint64_t *hi)
{
	if (b >= e)
		return false;
	const uint64_t rb_first = b / x->cb, rb_last = (e - 1) / x->cb;
	if (w->rb > rb_last) {
		w->t0 += x->tile;
		w->rb = rb_first;
	}
	if (w->t0 >= x->cb)
		return false;
	*rb = w->rb++;
	const uint64_t first = *rb == rb_first ? b % x->cb : 0, last = *rb == rb_last ? (e - 1) % x->cb + 1 : x->cb;
	*lo = first > w->t0 ? first : w->t0;
	*hi = w->t0 + x->tile < last ? w->t0 + x->tile : last;
	return true;
}

/*
 * Marks vectors or blocks [b, e): first each unit's choice, as
 * mark_elements makes it (from the end, ties by the count of later ties),
 * with the kept count and magnitude (a unit's magnitude is its score),
 * written over its score; then every unit's cells, tile by tile
 * (unit_walk_next).
 */
static void mark_units(nmp_cpu_job *j, const unstr_ctx *x, uint64_t b, uint64_t e, uint64_t later, nmp_cpu_acc *acc)
{
	uint64_t *keep_of = (uint64_t *)x->score; /* this part's scores, then its choices */
	const unsigned ur = x->ur, uc = x->uc;
	double kept_l1 = acc->l1_kept;
	uint64_t kept = 0;
	for (uint64_t u = e; u-- > b;) {
		const uint64_t sc = keep_of[u];
		bool keep = !x->prune_any || sc > x->thr;
		if (x->prune_any && sc == x->thr)
			keep = later++ >= x->tie_prune;
		double score;
		memcpy(&score, &sc, 8);
		kept_l1 += nmp_cpu_kept_mag(score, keep);
		kept += keep;
		keep_of[u] = keep;
	}
	acc->l1_kept = kept_l1;
	acc->kept += kept * ur * uc;
	const uint64_t inner = j->inner;
	unit_walk w = unit_walk_start(x, b);
	uint64_t rb, lo, hi;
	while (unit_walk_next(x, b, e, &w, &rb, &lo, &hi)) {
		const uint64_t *ro = j->row_off + rb * ur;
		for (uint64_t cu = lo; cu < hi; cu++) {
			const uint8_t keep = (uint8_t)keep_of[rb * x->cb + cu];
			const uint64_t c0 = cu * uc * inner;
			for (unsigned t = 0; t < ur; t++)
				for (unsigned c = 0; c < uc; c++)
					j->mask[ro[t] + c0 + c * inner] = keep;
		}
	}
}

static void mark_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	const unstr_ctx *x = j->part_ctx;
	nmp_cpu_acc *acc = accp;
	uint64_t later = 0;
	for (int p = 0; p < x->parts; p++)
		if (x->part_begin[p] == b)
			later = x->ties_after[p];
	const bool per_element = x->ur == 1 && x->uc == 1;
	if (per_element) {
		switch (j->kk) {
		case NMP_KK_F32: mark_elements(j, x, b, e, later, acc, NMP_KK_F32); return;
		case NMP_KK_F16: mark_elements(j, x, b, e, later, acc, NMP_KK_F16); return;
		case NMP_KK_BF16: mark_elements(j, x, b, e, later, acc, NMP_KK_BF16); return;
		default: mark_elements(j, x, b, e, later, acc, NMP_KK_F64); return;
		}
	}
	mark_units(j, x, b, e, later, acc);
}

/* Vector and block scores: sums of magnitudes in double, rows then columns. */
static inline __attribute__((always_inline)) void scores_run(nmp_cpu_job *j, const unstr_ctx *x, uint64_t b,
							     uint64_t e, nmp_key_kind kk)
{
	uint64_t *score = (uint64_t *)x->score;
	const unsigned ur = x->ur, uc = x->uc;
	const uint64_t inner = j->inner;
	unit_walk w = unit_walk_start(x, b);
	uint64_t rb, lo, hi;
	while (unit_walk_next(x, b, e, &w, &rb, &lo, &hi)) {
		const uint64_t *ro = j->row_off + rb * ur;
		for (uint64_t cu = lo; cu < hi; cu++) {
			const uint64_t c0 = cu * uc * inner;
			double sum = 0;
			for (unsigned t = 0; t < ur; t++)
				for (unsigned c = 0; c < uc; c++)
					sum += nmp_key_mag(kk, nmp_cpu_key_kk(j, ro[t] + c0 + c * inner, kk));
			memcpy(&score[rb * x->cb + cu], &sum, 8); /* a non-negative double's bits order like it */
		}
	}
}

static void scores_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	const unstr_ctx *x = j->part_ctx;
	(void)accp;
	switch (j->kk) {
	case NMP_KK_F32: scores_run(j, x, b, e, NMP_KK_F32); break;
	case NMP_KK_F16: scores_run(j, x, b, e, NMP_KK_F16); break;
	case NMP_KK_BF16: scores_run(j, x, b, e, NMP_KK_BF16); break;
	default: scores_run(j, x, b, e, NMP_KK_F64); break;
	}
}

nmp_status nmp_cpu_unstructured(nmp_cpu_job *j, nmp_cpu_acc *total)
{
	const unsigned ur = nmp_pattern_unit_rows(j->p), uc = nmp_pattern_unit_cols(j->p);
	const uint64_t rb = j->rows / ur, cb = j->L / uc, units = rb * cb;
	const bool per_element = ur == 1 && uc == 1;
	unstr_ctx x = { .score = j->key, .units = units, .ur = ur, .uc = uc, .cb = cb };
	x.tile = !per_element && nmp_cpu_rows_fast(j) ? UNIT_TILE : cb;
	nmp_status s = NMP_OK;
	int parts;
	void *none;
	uint64_t *own = NULL;
	tie_acc *ties = NULL;
	nmp_cpu_acc *acc = NULL;
	j->part_ctx = &x;
	if (!per_element) {
		if (!(own = malloc((units ? units : 1) * sizeof *own))) {
			s = nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
			goto out;
		}
		x.score = own;
		if (!(none = nmp_cpu_parallel_for(j, units, 4096, 1, &parts, scores_part))) {
			s = nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
			goto out;
		}
		free(none);
	}
	const uint64_t n_prune = (uint64_t)floor(j->p->sparsity * (double)units + 0.5);
	uint64_t below = 0;
	x.prune_any = n_prune > 0;
	if (n_prune > 0 && (s = kth_smallest(j, &x, n_prune - 1, per_element && j->kk != NMP_KK_F64 ? 32 : 64,
					     &x.thr, &below)) != NMP_OK)
		goto out;
	x.tie_prune = n_prune - below;
	/* The same partition for counting ties and for marking: each part learns the ties after it. */
	const uint64_t min_part = 1u << 16;
	if (!(ties = nmp_cpu_parallel_for(j, units, min_part, sizeof *ties, &parts, ties_part))) {
		s = nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
		goto out;
	}
	x.parts = parts;
	x.part_begin = malloc((size_t)parts * 2 * sizeof *x.part_begin);
	if (!x.part_begin) {
		s = nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
		goto out;
	}
	x.ties_after = x.part_begin + parts;
	uint64_t after = 0;
	for (int p = parts; p-- > 0;) {
		x.part_begin[p] = units * (uint64_t)p / (uint64_t)parts;
		x.ties_after[p] = after;
		after += ties[p].ties;
	}
	int mparts;
	if (!(acc = nmp_cpu_parallel_for(j, units, min_part, sizeof *acc, &mparts, mark_part)) || mparts != parts) {
		s = nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
		goto out;
	}
	for (int p = parts; p-- > 0;) { /* higher indices first, as the marking runs */
		total->kept += acc[p].kept;
		total->l1_kept += acc[p].l1_kept;
	}
out:
	j->part_ctx = NULL;
	free(acc);
	free(ties);
	free(x.part_begin);
	free(own);
	return s;
}

/* ---- element-wise P% on 32-bit keys ------------------------------------------------------- */

/* What the marking parts read: the threshold, and per part of the bin pass the ties after it. */
typedef struct elem_ctx {
	uint32_t thr;
	uint64_t tie_prune, numel;
	const uint64_t *ties_after;
	int parts;
} elem_ctx;

/* Marks [b, e) from the end: above the threshold kept, below pruned, a tie pruned while fewer
 * than tie_prune ties lie at higher indices. */
NMP_CPU_INLINE void mark32_run(nmp_cpu_job *j, uint64_t b, uint64_t e, uint64_t *later, int kind)
{
	const elem_ctx *x = j->part_ctx;
	for (uint64_t i = e; i-- > b;) {
		const uint32_t k = nmp_cpu_key32(j, i, kind);
		bool keep = k > x->thr;
		if (k == x->thr)
			keep = (*later)++ >= x->tie_prune;
		j->mask[i] = keep;
	}
}

#if defined(__x86_64__)
NMP_CPU_SIMD static void mark32_avx2(nmp_cpu_job *j, uint64_t b, uint64_t e, uint64_t *later, int kind)
{
	const elem_ctx *x = j->part_ctx;
	/* Keys are below 2^31, so signed compares order them. */
	const __m256i thr = _mm256_set1_epi32((int)x->thr);
	uint64_t i = e;
	for (; i >= b + 8; i -= 8) {
		nmp_cpu_fetch_behind(j->in, i - 8, b, kind);
		__m256i k = nmp_cpu_key8(j->in, i - 8, kind);
		if (_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(k, thr)))) {
			mark32_run(j, i - 8, i, later, kind);
			continue;
		}
		__m256i keep = _mm256_srli_epi32(_mm256_cmpgt_epi32(k, thr), 31);
		__m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(keep), _mm256_extracti128_si256(keep, 1));
		_mm_storel_epi64((__m128i *)(void *)(j->mask + i - 8), _mm_packs_epi16(w16, w16));
	}
	mark32_run(j, b, i, later, kind);
}
#endif

static void mark32_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	const elem_ctx *x = j->part_ctx;
	const int kind = nmp_cpu_kind32(j);
	(void)accp;
	uint64_t later = 0;
	for (int p = 0; p < x->parts; p++)
		if (x->numel * (uint64_t)p / (uint64_t)x->parts == b)
			later = x->ties_after[p];
#if defined(__x86_64__)
	if (kind != NMP_CK_Q && nmp_cpu_have_avx2()) {
		mark32_avx2(j, b, e, &later, kind);
		return;
	}
#endif
	switch (kind) {
	case NMP_CK_F32: mark32_run(j, b, e, &later, NMP_CK_F32); break;
	case NMP_CK_F16: mark32_run(j, b, e, &later, NMP_CK_F16); break;
	case NMP_CK_BF16: mark32_run(j, b, e, &later, NMP_CK_BF16); break;
	default: mark32_run(j, b, e, &later, NMP_CK_Q); break;
	}
}

/*
 * Element-wise P% on 32-bit keys, in three passes over the weight: the
 * scan's bins (the caller's) place the threshold in one bin; a bin pass
 * sums what lies above that bin and gathers the keys inside it, per part,
 * from which the threshold, the ties of every part and the kept magnitude
 * follow exactly; the marking pass then walks each part from its end.  The
 * kept count and magnitude are what unstructured pruning keeps, so they are
 * also the reference statistic.
 */
nmp_status nmp_cpu_unstructured32(nmp_cpu_job *j, const uint64_t *bins, double l1_dense, nmp_cpu_acc *total)
{
	const int kind = nmp_cpu_kind32(j);
	const uint64_t numel = j->numel, n_prune = (uint64_t)floor(j->p->sparsity * (double)numel + 0.5);
	if (n_prune == 0) {
		memset(j->mask, 1, numel);
		total->kept = numel;
		total->l1_kept = l1_dense;
		return NMP_OK;
	}
	/* The threshold is the n_prune-th smallest key: the (numel - n_prune + 1)-th largest. */
	uint64_t above;
	int parts = 0;
	const uint32_t bin = nmp_cpu_bin_from_top(bins, numel - n_prune + 1, &above);
	const uint64_t below = numel - above - bins[bin];
	nmp_cpu_binpart *bp = nmp_cpu_bin_pass(j, bin, &parts);
	uint64_t *ties = calloc((size_t)parts, sizeof *ties);
	uint32_t *all = NULL;
	nmp_status s = NMP_OK;
	if (!bp || !ties) {
		s = nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
		goto out;
	}
	size_t n_cut;
	if (!(all = nmp_cpu_cut_gather(&bp[0].cut, sizeof *bp, parts, &n_cut))) {
		s = nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
		goto out;
	}
	/* The (n_prune - 1 - below)-th smallest of the bin is the smallest of its n_cut - that largest. */
	const uint64_t top = n_cut - (n_prune - 1 - below);
	nmp_cpu_select_largest(all, (size_t)n_cut, (size_t)top);
	uint32_t thr = all[0];
	for (uint64_t i = 1; i < top; i++)
		thr = all[i] < thr ? all[i] : thr;

	double kept_l1 = 0;
	uint64_t less = 0, n_ties = 0;
	for (int p = 0; p < parts; p++) {
		double above_l1 = bp[p].above;
		for (size_t i = 0; i < bp[p].cut.n; i++) {
			const uint32_t k = bp[p].cut.key[i];
			less += k < thr;
			ties[p] += k == thr;
			above_l1 += k > thr ? (double)nmp_cpu_mag32(k, kind) : 0.0;
		}
		kept_l1 += above_l1;
		n_ties += ties[p];
	}
	const uint64_t tie_prune = n_prune - below - less;
	uint64_t after = 0;
	for (int p = parts; p-- > 0;) { /* each part's count becomes the ties after it */
		const uint64_t here = ties[p];
		ties[p] = after;
		after += here;
	}
	total->kept = numel - n_prune;
	/* No tie kept, no term: the threshold may be infinite, and 0 x inf is NaN. */
	if (n_ties > tie_prune)
		kept_l1 += (double)(n_ties - tie_prune) * nmp_cpu_mag32(thr, kind);
	total->l1_kept = kept_l1;

	elem_ctx x = { .thr = thr, .tie_prune = tie_prune, .numel = numel, .ties_after = ties, .parts = parts };
	int mparts;
	j->part_ctx = &x;
	void *none = nmp_cpu_parallel_for(j, numel, NMP_CPU_BIN_PART, 1, &mparts, mark32_part);
	j->part_ctx = NULL;
	if (!none || mparts != parts)
		s = nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
	free(none);
out:
	free(all);
	free(ties);
	nmp_cpu_bin_free(bp, parts);
	return s;
}

typedef struct ref_acc {
	uint64_t count[65536];
	double sum[65536];
} ref_acc;

typedef struct nmp_cpu_ref {
	int shift;
	uint64_t prefix, pmask;
} nmp_cpu_ref;

static void ref_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	ref_acc *acc = accp;
	const nmp_cpu_ref *rc = j->ref;
	for (uint64_t i = b; i < e; i++) {
		uint64_t k = j->key ? j->key[i] : nmp_cpu_elem_key(j, i);
		if ((k & rc->pmask) != rc->prefix)
			continue;
		uint64_t d = (k >> rc->shift) & 0xffff;
		acc->count[d]++;
		acc->sum[d] += nmp_key_mag(j->kk, k);
	}
}

/*
 * Sum of the `keep` largest magnitudes, read from the weight as it was:
 * radix passes of 16 bits from the top, each adding the buckets above the
 * one where the cut falls and narrowing to that bucket.
 */
double nmp_cpu_unstructured_reference(nmp_cpu_job *j, uint64_t keep)
{
	int bits = j->kk == NMP_KK_F64 ? 64 : (j->kk == NMP_KK_F32 ? 32 : 16);
	nmp_cpu_ref rc = { 0 };
	double total = 0;
	uint64_t need = keep;
	j->ref = &rc;
	for (int shift = bits - 16; shift >= 0 && need > 0; shift -= 16) {
		int parts;
		rc.shift = shift;
		ref_acc *accs = nmp_cpu_parallel_for(j, j->numel, 1u << 20, sizeof(ref_acc), &parts, ref_part);
		if (!accs) {
			total = NAN;
			break;
		}
		ref_acc *a = &accs[0];
		for (int p = 1; p < parts; p++)
			for (int d = 0; d < 65536; d++) {
				a->count[d] += accs[p].count[d];
				a->sum[d] += accs[p].sum[d];
			}
		int d = 65535;
		while (d > 0 && a->count[d] < need) {
			need -= a->count[d];
			total += a->sum[d];
			d--;
		}
		if (a->count[d] == need || shift == 0) {
			/* The whole bucket; or, at the last digit, equal keys. */
			total += a->count[d] == need ? a->sum[d] : a->sum[d] / (double)a->count[d] * (double)need;
			need = 0;
		}
		rc.prefix |= (uint64_t)d << shift;
		rc.pmask |= (uint64_t)0xffff << shift;
		free(accs);
	}
	j->ref = NULL;
	return total;
}
