/*
 * keys.c — from stored values to magnitude keys: the rows of the 2-D view,
 * quantized keys, the NaN scan with the dense L1, and writing a pruned
 * element back in its stored type.  The rules themselves are mask_rules.h.
 */
#include <stdlib.h>

#include "cpu.h"
#include "dtype.h"

/* Rows enumerate every non-group axis, the output-channel axis fastest (mask_rules.h). */
nmp_status nmp_cpu_build_rows(nmp_cpu_job *j)
{
	const nmp_mask_tensor *t = j->t;
	j->row_off = malloc((j->rows ? j->rows : 1) * sizeof *j->row_off);
	if (!j->row_off)
		return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
	nmp_row_offsets(t->rank, t->dims, t->axis, t->out_axis, j->rows, j->row_off);
	return NMP_OK;
}

static int zero_point_at(const nmp_cpu_job *j, uint64_t qi)
{
	const nmp_quant_params *q = j->t->quant;
	if (!q->zero_point)
		return 0;
	return nmp_quant_value(j->t->dtype, q->zero_point, qi);
}

nmp_status nmp_cpu_quant_keys(nmp_cpu_job *j)
{
	const nmp_mask_tensor *t = j->t;
	const nmp_quant_params *q = t->quant;
	if (!q)
		return nmp_error_set(j->err, NMP_ERR_MODEL, "tensor '%s': quantized weight without parameters", t->name);
	uint64_t want = nmp_quant_geometry(t->rank, t->dims, q->axis, q->block, q->n_scale, &j->qg);
	if (q->n_scale != want)
		return nmp_error_set(j->err, NMP_ERR_MODEL, "tensor '%s': DequantizeLinear scale has %llu values, expected %llu",
				     t->name, (unsigned long long)q->n_scale, (unsigned long long)want);
	j->qkey = malloc((j->numel ? j->numel : 1) * sizeof *j->qkey);
	if (!j->qkey)
		return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", t->name);
	for (uint64_t i = 0; i < j->numel; i++) {
		uint64_t qi = nmp_quant_index(&j->qg, i);
		j->qkey[i] = nmp_quant_key(nmp_quant_value(t->dtype, j->in, i), zero_point_at(j, qi),
					   nmp_quant_scale(q->scale, q->scale_dtype, qi));
	}
	return NMP_OK;
}

/* Sets element i to its pruned value: zero, or the zero point. */
void nmp_cpu_prune_elem(const nmp_cpu_job *j, uint64_t i)
{
	uint8_t *d = j->t->data;
	switch (j->t->dtype) {
	case NMP_DT_FLOAT: memset(d + 4 * i, 0, 4); break;
	case NMP_DT_FLOAT16:
	case NMP_DT_BFLOAT16: memset(d + 2 * i, 0, 2); break;
	case NMP_DT_DOUBLE: memset(d + 8 * i, 0, 8); break;
	default: d[i] = (uint8_t)zero_point_at(j, nmp_quant_index(&j->qg, i)); break;
	}
}

/* Is element i nonzero as stored (for quantized: different from its zero point)? */
bool nmp_cpu_nonzero(const nmp_cpu_job *j, uint64_t i)
{
	if (j->t->quant)
		return nmp_quant_value(j->t->dtype, j->in, i) != zero_point_at(j, nmp_quant_index(&j->qg, i));
	return nmp_cpu_elem_key(j, i) != 0;
}

typedef struct scan_acc {
	double l1;
	uint64_t nan_at;   /* first NaN + 1, 0 none */
} scan_acc;

static void scan_part(nmp_cpu_job *j, uint64_t b, uint64_t e, void *accp)
{
	scan_acc *acc = accp;
	double l1 = 0;
	for (uint64_t i = b; i < e; i++) {
		uint64_t k = nmp_cpu_elem_key(j, i);
		if (nmp_key_is_nan(j->kk, k)) {
			if (!acc->nan_at)
				acc->nan_at = i + 1;
			continue;
		}
		if (j->key)
			j->key[i] = k;
		l1 += nmp_key_mag(j->kk, k);
	}
	acc->l1 = l1;
}

nmp_status nmp_cpu_scan(nmp_cpu_job *j, nmp_mask_stats *st)
{
	int parts;
	nmp_status s = NMP_OK;
	scan_acc *sa = nmp_cpu_parallel_for(j, j->numel, 1u << 18, sizeof(scan_acc), &parts, scan_part);
	if (!sa)
		return nmp_error_set(j->err, NMP_ERR_NOMEM, "tensor '%s': out of memory", j->t->name);
	for (int i = 0; i < parts; i++) {
		st->l1_dense += sa[i].l1;
		if (sa[i].nan_at && s == NMP_OK)
			s = nmp_error_set(j->err, NMP_ERR_MODEL, "tensor '%s': NaN at flat index %llu", j->t->name,
					  (unsigned long long)(sa[i].nan_at - 1));
	}
	free(sa);
	return s;
}
