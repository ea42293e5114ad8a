/*
 * backend.c — the CPU backend's entry: one tensor, one job.  It validates
 * the view, reads quantized keys, and sends the job down the fused path
 * (element-wise N:M, M <= 32, 32-bit keys) or the general path (a 64-bit key
 * per element, then the pattern family's work items and the reference
 * statistic).  This backend is also the reference the others are tested
 * against.
 */
#include <stdlib.h>
#include <unistd.h>

#include "backend.h"
#include "cpu.h"
#include "dtype.h"

static void free_job(nmp_cpu_job *j)
{
	free(j->row_off);
	free(j->qkey);
	free(j->key);
}

/* Zeroes what the mask prunes, in parallel, without a branch on the data for float types. */
static void zero_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	(void)accp;
	uint8_t *d = j->t->data;
	const uint8_t *mask = j->mask;
	switch (j->t->dtype) {
	case NMP_DT_FLOAT:
		for (uint64_t i = b; i < e; i++)
			nmp_cpu_zero_unless(d, i, mask[i], NMP_CK_F32);
		break;
	case NMP_DT_FLOAT16:
	case NMP_DT_BFLOAT16:
		for (uint64_t i = b; i < e; i++)
			nmp_cpu_zero_unless(d, i, mask[i], NMP_CK_F16);
		break;
	default:
		for (uint64_t i = b; i < e; i++)
			if (!mask[i])
				nmp_cpu_prune_elem(j, i);
		break;
	}
}

/*
 * Does the family read every cell in its own pass, finding the reference
 * statistic there (and zeroing a float weight in APPLY)?  Exact 4 x 4
 * tiles, and vectors and blocks of M 4 or 8.
 */
static bool family_in_pass(const nmp_cpu_job *j)
{
	return nmp_cpu_tiles_inline(j) || nmp_cpu_units_inline(j);
}

/*
 * The general path: the pattern family, then the reference statistic and
 * the zeroing.  bins (32-bit keys) are the scan's counts per reference bin;
 * NULL for fp64, whose keys (j->key) P% selects among by radix passes.
 * Vector and block P% select among their units' scores the same way.
 */
static nmp_status run_general(nmp_cpu_job *j, const uint64_t *bins, nmp_mask_stats *st)
{
	const nmp_pattern *p = j->p;
	const unsigned gc = nmp_pattern_group_cols(p), ur = nmp_pattern_unit_rows(p);
	nmp_cpu_acc total = { 0 };
	nmp_status s = NMP_OK;
	const bool inline_ref = bins && family_in_pass(j);
	const bool elementwise = ur == 1 && gc == 1;
	if (!p->structured && elementwise && bins) {
		s = nmp_cpu_unstructured32(j, bins, st->l1_dense, &total);
	} else if (!p->structured) {
		s = nmp_cpu_unstructured(j, &total);
	} else {
		nmp_cpu_part_fn fn = p->unit == NMP_UNIT_ELEMENT ? nmp_cpu_nm_part :
				     p->unit == NMP_UNIT_TILE ? nmp_cpu_tiles_part : nmp_cpu_units_part;
		uint64_t work = (j->rows / ur) * (j->L / gc), above = 0;
		if (inline_ref) /* N of every M units, or N per tile row: as many as unstructured pruning at N/M */
			j->ref_bin = nmp_cpu_bin_from_top(bins, j->numel / p->m * p->n, &above);
		int parts;
		nmp_cpu_acc *acc = nmp_cpu_parallel_for(j, work, 256, sizeof(nmp_cpu_acc), &parts, fn);
		if (!acc)
			return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
		bool oom = false;
		for (int i = 0; i < parts; i++) {
			total.kept += acc[i].kept;
			total.l1_kept += acc[i].l1_kept;
			total.deficits += acc[i].deficits;
			st->l1_unstructured += acc[i].above;
			oom |= acc[i].cut.oom;
		}
		if (oom)
			s = nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
		else if (inline_ref)
			s = nmp_cpu_ref_finish(j, &acc[0].cut, sizeof *acc, parts, total.kept - above,
					       nmp_cpu_kind32(j), &st->l1_unstructured);
		for (int i = 0; i < parts; i++)
			free(acc[i].cut.key);
		free(acc);
		st->groups = work;
	}
	st->kept = total.kept;
	st->l1_kept = total.l1_kept;
	st->deficits = total.deficits;
	if (s != NMP_OK)
		return s;
	/* Nothing is zeroed yet: the keys, in j->key or in the weight, are the original magnitudes. */
	if (!p->structured && elementwise && bins)
		st->l1_unstructured = st->l1_kept; /* element-wise P% is unstructured pruning */
	else if (bins && !inline_ref)
		s = nmp_cpu_reference32(j, bins, st->kept, &st->l1_unstructured);
	else if (!bins)
		st->l1_unstructured = nmp_cpu_unstructured_reference(j, st->kept);
	if (s == NMP_OK && j->mode == NMP_MASK_APPLY && !j->zero) {
		int parts;
		void *none = nmp_cpu_parallel_for(j, j->numel, 1u << 18, 1, &parts, zero_part);
		if (!none)
			return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
		free(none);
	}
	return s;
}

nmp_status nmp_cpu_run(const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode, int threads,
		       uint8_t *mask, nmp_mask_stats *st, nmp_error *err)
{
	nmp_cpu_job j = { .t = t, .p = p, .mode = mode, .threads = threads, .mask = mask, .err = err };
	nmp_status s = NMP_OK;
	uint8_t *own_mask = NULL;
	uint64_t *bins = NULL;  /* 32-bit keys: the scan's counts per reference bin */
	memset(st, 0, sizeof *st);

	if (j.threads <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		j.threads = n > 0 ? (int)n : 1;
	}
	if (!nmp_key_kind_of(t->dtype, &j.kk))
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': unsupported dtype %s", t->name,
				     nmp_dtype_name(t->dtype));
	if (t->axis < 0 || t->axis >= t->rank)
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': no group axis", t->name);
	j.numel = nmp_cpu_prod(t->dims, 0, t->rank);
	j.L = (uint64_t)t->dims[t->axis];
	j.inner = nmp_cpu_prod(t->dims, t->axis + 1, t->rank);
	j.outer = nmp_cpu_prod(t->dims, 0, t->axis);
	j.rows = j.L ? j.numel / j.L : 0;
	st->numel = j.numel;
	if (j.numel == 0)
		return NMP_OK;

	const unsigned gc = nmp_pattern_group_cols(p), ur = nmp_pattern_unit_rows(p);
	if (gc == 0 || ur == 0 || j.L % gc != 0 || j.rows % ur != 0)
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': shape does not fit pattern %s", t->name, p->text);

	bool fused = mode != NMP_MASK_CHECK && p->structured && p->unit == NMP_UNIT_ELEMENT &&
		     p->m <= NMP_CPU_FUSED_MAX_M && j.kk != NMP_KK_F64;
	bool quantized = t->dtype == NMP_DT_INT8 || t->dtype == NMP_DT_UINT8;
	j.in = t->src ? t->src : t->data;
	if (t->src && t->src != t->data && mode == NMP_MASK_APPLY && (!fused || quantized)) {
		/* Only the fused float tiles write every element; the others prune in place. */
		memcpy(t->data, t->src, j.numel * (nmp_dtype_bits(t->dtype) / 8));
		j.in = t->data;
	}
	if (quantized && (s = nmp_cpu_quant_keys(&j)) != NMP_OK)
		goto out;
	if (fused) {
		s = nmp_cpu_fused(&j, st);
		goto out;
	}
	bool elementwise_unstructured = !p->structured && ur == 1 && gc == 1;
	/* 32-bit keys are read from the weight and counted in reference bins; the rest go through j->key. */
	bool keys32 = mode != NMP_MASK_CHECK && j.kk != NMP_KK_F64;
	if (mode != NMP_MASK_CHECK && !p->structured && !keys32) {
		j.key = malloc(j.numel * sizeof *j.key);
		if (!j.key) {
			s = nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
			goto out;
		}
	}
	if (keys32 && !(bins = malloc(NMP_CPU_REF_BINS * sizeof *bins))) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
		goto out;
	}
	if ((s = keys32 ? nmp_cpu_scan32(&j, st, bins) : nmp_cpu_scan(&j, st)) != NMP_OK)
		goto out;
	if ((mode == NMP_MASK_CHECK || !elementwise_unstructured) && (s = nmp_cpu_build_rows(&j)) != NMP_OK)
		goto out;
	if (mode == NMP_MASK_CHECK) {
		nmp_cpu_check(&j, st);
		goto out;
	}
	/*
	 * A family that reads every cell in its own pass zeroes a float weight
	 * there: no mask is needed unless the caller asks for it, and no pass
	 * zeroes.  In APPLY, j.in is the weight itself.
	 */
	if (mode == NMP_MASK_APPLY && keys32 && p->structured && nmp_cpu_kind32(&j) != NMP_CK_Q && family_in_pass(&j))
		j.zero = t->data;
	if (!j.mask && !j.zero) {
		own_mask = malloc(j.numel);
		if (!own_mask) {
			s = nmp_error_set(err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
			goto out;
		}
		j.mask = own_mask;
	}
	s = run_general(&j, bins, st);
out:
	free(bins);
	free(own_mask);
	free_job(&j);
	return s;
}

nmp_status nmp_cpu_magnitudes(const nmp_mask_tensor *t, float *out, nmp_error *err)
{
	nmp_cpu_job j = { .t = t, .err = err, .in = t->src ? t->src : t->data };
	if (!nmp_key_kind_of(t->dtype, &j.kk))
		return nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': unsupported dtype %s", t->name,
				     nmp_dtype_name(t->dtype));
	j.numel = nmp_cpu_prod(t->dims, 0, t->rank);
	nmp_status s = NMP_OK;
	if (t->dtype == NMP_DT_INT8 || t->dtype == NMP_DT_UINT8)
		s = nmp_cpu_quant_keys(&j);
	for (uint64_t i = 0; s == NMP_OK && i < j.numel; i++) {
		uint64_t k = nmp_cpu_elem_key(&j, i);
		if (nmp_key_is_nan(j.kk, k))
			s = nmp_error_set(err, NMP_ERR_MODEL, "tensor '%s': NaN at flat index %llu", t->name,
					  (unsigned long long)i);
		out[i] = (float)nmp_key_mag(j.kk, k);
	}
	free_job(&j);
	return s;
}

/* ---- the backend table ---------------------------------------------------------------------- */

static const char *cpu_supports(void *ctx, const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode)
{
	(void)ctx, (void)t, (void)p, (void)mode;
	return NULL; /* every case: the CPU backend is the fallback */
}

static nmp_status cpu_run(void *ctx, const nmp_mask_tensor *t, const nmp_pattern *p, nmp_mask_mode mode,
			  uint8_t *mask, nmp_mask_stats *st, nmp_error *err)
{
	return nmp_cpu_run(t, p, mode, *(const int *)ctx, mask, st, err);
}

static nmp_status cpu_magnitudes(void *ctx, const nmp_mask_tensor *t, float *out, nmp_error *err)
{
	(void)ctx;
	return nmp_cpu_magnitudes(t, out, err);
}

static void cpu_close(void *ctx)
{
	(void)ctx;
}

const nmp_backend nmp_cpu_backend = {
	.name = "cpu",
	.supports = cpu_supports,
	.run = cpu_run,
	.magnitudes = cpu_magnitudes,
	.close = cpu_close,
};
