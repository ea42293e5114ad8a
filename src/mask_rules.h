/*
 * mask_rules.h — what every mask engine backend must compute bit for bit,
 * written once.  The C compiler builds it into the CPU backend and nvcc into
 * the CUDA kernels (every function is `static inline`, and __host__
 * __device__ under nvcc), so the CPU unit tests exercise the very code the
 * kernels run:
 *
 *  - the magnitude key of every stored type: the value's bits with the sign
 *    cleared, which orders IEEE magnitudes exactly (+-Inf largest, NaN above
 *    Inf and rejected); a quantized weight's key is the fp32 bits of
 *    |q - zero_point| * |scale|;
 *  - the magnitude a key stands for, as summed into the statistics;
 *  - where a quantized element finds its scale and zero point;
 *  - the tie rule: a larger key outranks, and of equal keys the lower index;
 *  - the transposable tile tables for M <= 4 and their scoring order.
 *
 * Nothing here allocates, prints or touches a model.
 */
#ifndef NMP_MASK_RULES_H
#define NMP_MASK_RULES_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define NMP_RULE static __host__ __device__ __forceinline__
#else
#include <stdbool.h>
#define NMP_RULE static inline __attribute__((always_inline))
#endif

/* ONNX TensorProto.DataType values the engine reads (mirrors dtype.h). */
enum {
	NMP_RT_FLOAT = 1, NMP_RT_UINT8 = 2, NMP_RT_INT8 = 3, NMP_RT_FLOAT16 = 10,
	NMP_RT_DOUBLE = 11, NMP_RT_BFLOAT16 = 16,
};

/* How the keys of a type compare and what they weigh. */
typedef enum nmp_key_kind { NMP_KK_F32, NMP_KK_F16, NMP_KK_BF16, NMP_KK_F64 } nmp_key_kind;

NMP_RULE float nmp_f32_of_bits(uint32_t bits)
{
	float f;
	memcpy(&f, &bits, 4);
	return f;
}

NMP_RULE uint32_t nmp_bits_of_f32(float f)
{
	uint32_t b;
	memcpy(&b, &f, 4);
	return b;
}

NMP_RULE double nmp_f64_of_bits(uint64_t bits)
{
	double d;
	memcpy(&d, &bits, 8);
	return d;
}

/* The magnitude of an fp16 key (sign already clear), exactly, without branches on the data. */
NMP_RULE float nmp_f16_key_mag(uint32_t key)
{
	float normal = nmp_f32_of_bits((key + 0x1c000u) << 13); /* rebias the exponent: 127 - 15 */
	float sub = (float)key * 0x1p-24f;                      /* subnormals: exact in fp32 */
	float v = key >= 0x400u ? normal : sub;
	return key >= 0x7c00u ? nmp_f32_of_bits(0x7f800000u) : v;
}

/* fp16 or bf16 bits to fp32, sign kept (scales may be negative). */
NMP_RULE float nmp_half_to_float(uint16_t h, int is_bf16)
{
	if (is_bf16)
		return nmp_f32_of_bits((uint32_t)h << 16);
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16, key = h & 0x7fffu;
	if (key > 0x7c00u) /* NaN: keep its payload, as a widening conversion does */
		return nmp_f32_of_bits(sign | 0x7f800000u | (key & 0x3ffu) << 13);
	return nmp_f32_of_bits(sign | nmp_bits_of_f32(nmp_f16_key_mag(key)));
}

/* The type's key kind; quantized types rank by fp32 keys.  Returns 0 on an unsupported type. */
NMP_RULE int nmp_key_kind_of(int32_t dtype, nmp_key_kind *kk)
{
	switch (dtype) {
	case NMP_RT_FLOAT: *kk = NMP_KK_F32; return 1;
	case NMP_RT_FLOAT16: *kk = NMP_KK_F16; return 1;
	case NMP_RT_BFLOAT16: *kk = NMP_KK_BF16; return 1;
	case NMP_RT_DOUBLE: *kk = NMP_KK_F64; return 1;
	case NMP_RT_INT8:
	case NMP_RT_UINT8: *kk = NMP_KK_F32; return 1;
	default: return 0;
	}
}

/* The key of element i of a float tensor in raw layout. */
NMP_RULE uint64_t nmp_float_key(int32_t dtype, const uint8_t *d, uint64_t i)
{
	switch (dtype) {
	case NMP_RT_FLOAT: {
		uint32_t b;
		memcpy(&b, d + 4 * i, 4);
		return b & 0x7fffffffu;
	}
	case NMP_RT_FLOAT16:
	case NMP_RT_BFLOAT16: {
		uint16_t b;
		memcpy(&b, d + 2 * i, 2);
		return b & 0x7fffu;
	}
	default: {
		uint64_t b;
		memcpy(&b, d + 8 * i, 8);
		return b & 0x7fffffffffffffffull;
	}
	}
}

NMP_RULE bool nmp_key_is_nan(nmp_key_kind k, uint64_t key)
{
	switch (k) {
	case NMP_KK_F32: return key > 0x7f800000u;
	case NMP_KK_F16: return key > 0x7c00u;
	case NMP_KK_BF16: return key > 0x7f80u;
	default: return key > 0x7ff0000000000000ull;
	}
}

/* What a key weighs in the statistics (fp32 kinds exactly, fp64 as itself). */
NMP_RULE double nmp_key_mag(nmp_key_kind k, uint64_t key)
{
	switch (k) {
	case NMP_KK_F32: return nmp_f32_of_bits((uint32_t)key);
	case NMP_KK_F16: return nmp_f16_key_mag((uint32_t)key);
	case NMP_KK_BF16: return nmp_f32_of_bits((uint32_t)key << 16);
	default: return nmp_f64_of_bits(key);
	}
}

/* The tie rule: a outranks b when its key is larger, or equal at a lower index. */
NMP_RULE bool nmp_outranks(uint64_t ka, uint64_t ia, uint64_t kb, uint64_t ib)
{
	return ka > kb || (ka == kb && ia < ib);
}

/*
 * The 2-D view's rows: every axis but the group axis, the output-channel
 * axis (out_axis, -1 none) fastest; off[r] receives the flat offset of row
 * r's first element.  (Host code: backends compute it once per tensor.)
 */
NMP_RULE void nmp_row_offsets(int rank, const int64_t *dims, int axis, int out_axis, uint64_t rows, uint64_t *off)
{
	int axes[64], n = 0;
	uint64_t stride[64], coord[64], st = 1, at = 0;
	for (int a = rank - 1; a >= 0; a--) {
		stride[a] = st;
		st *= (uint64_t)dims[a];
	}
	for (int a = 0; a < rank; a++)
		if (a != axis && a != out_axis)
			axes[n++] = a;
	if (out_axis >= 0)
		axes[n++] = out_axis;
	for (int k = 0; k < n; k++)
		coord[k] = 0;
	for (uint64_t r = 0; r < rows; r++) {
		off[r] = at;
		for (int k = n - 1; k >= 0; k--) { /* an odometer, the fastest axis last */
			int a = axes[k];
			coord[k]++;
			at += stride[a];
			if (coord[k] < (uint64_t)dims[a])
				break;
			at -= coord[k] * stride[a];
			coord[k] = 0;
		}
	}
}

/* ---- quantized weights ----------------------------------------------------------------------- */

/*
 * Where element i (flat) finds its scale and zero point: per tensor, per
 * channel of `axis`, or per block of `block` along it.  stride is the
 * product of the dims after axis, len the axis's length.
 */
typedef struct nmp_quant_geom {
	uint64_t n_scale, stride, len, block;
} nmp_quant_geom;

/*
 * The geometry of n_scale scales along `axis` (in blocks of `block` when
 * block > 0) of a tensor of shape dims.  Returns how many scales that
 * layout needs; the caller refuses a tensor whose n_scale differs.
 */
NMP_RULE uint64_t nmp_quant_geometry(int rank, const int64_t *dims, int axis, int64_t block, uint64_t n_scale,
				     nmp_quant_geom *g)
{
	g->n_scale = 1;
	g->stride = g->len = g->block = 0;
	if (n_scale == 1)
		return 1;
	uint64_t numel = 1, stride = 1, len = (uint64_t)dims[axis];
	for (int a = 0; a < rank; a++)
		numel *= (uint64_t)dims[a];
	for (int a = axis + 1; a < rank; a++)
		stride *= (uint64_t)dims[a];
	g->n_scale = n_scale;
	g->stride = stride;
	g->len = len;
	g->block = block > 0 ? (uint64_t)block : 0;
	return block > 0 ? numel / len * ((len + (uint64_t)block - 1) / (uint64_t)block) : len;
}

NMP_RULE uint64_t nmp_quant_index(const nmp_quant_geom *g, uint64_t i)
{
	if (g->n_scale == 1)
		return 0;
	uint64_t c = (i / g->stride) % g->len;
	if (g->block == 0)
		return c;
	uint64_t nb = (g->len + g->block - 1) / g->block;
	return ((i / (g->stride * g->len)) * nb + c / g->block) * g->stride + i % g->stride;
}

NMP_RULE float nmp_quant_scale(const uint8_t *s, int32_t scale_dtype, uint64_t qi)
{
	if (scale_dtype == NMP_RT_FLOAT) {
		float f;
		memcpy(&f, s + 4 * qi, 4);
		return f;
	}
	uint16_t h;
	memcpy(&h, s + 2 * qi, 2);
	return nmp_half_to_float(h, scale_dtype == NMP_RT_BFLOAT16);
}

NMP_RULE int nmp_quant_value(int32_t dtype, const uint8_t *d, uint64_t i)
{
	return dtype == NMP_RT_INT8 ? (int)(int8_t)d[i] : (int)d[i];
}

/* The key of a quantized element: the fp32 bits of |q - zp| * |scale|. */
NMP_RULE uint32_t nmp_quant_key(int q, int zp, float scale)
{
	int diff = q - zp;
	float m = (float)(diff < 0 ? -diff : diff) * (scale < 0 ? -scale : scale);
	return nmp_bits_of_f32(m) & 0x7fffffffu;
}

/* ---- transposable tiles ---------------------------------------------------------------------- */

/*
 * Every M x M 0/1 tile with N ones per row and per column, for M <= 4: four
 * bits per row, row 0 lowest, in the order of a row-by-row enumeration
 * (each row's bit patterns ascending).  The exact method keeps the first
 * tile of this order whose kept sum is the largest.
 */
#define NMP_TILE_PATTERNS_INIT { \
	0x0021, 0x0012, 0x0421, 0x0241, 0x0412, 0x0142, 0x0214, 0x0124, 0x0653, 0x0563, \
	0x0635, 0x0365, 0x0536, 0x0356, 0x8421, 0x4821, 0x8241, 0x2841, 0x4281, 0x2481, \
	0x8412, 0x4812, 0x8142, 0x1842, 0x4182, 0x1482, 0x8214, 0x2814, 0x8124, 0x1824, \
	0x2184, 0x1284, 0x4218, 0x2418, 0x4128, 0x1428, 0x2148, 0x1248, 0xcc33, 0xca53, \
	0xac53, 0xc963, 0x9c63, 0xc693, 0x6c93, 0xc5a3, 0x5ca3, 0xc3c3, 0xa5c3, 0x96c3, \
	0x69c3, 0x5ac3, 0x3cc3, 0xca35, 0xac35, 0xaa55, 0xa965, 0x9a65, 0xa695, 0x6a95, \
	0xc3a5, 0xa5a5, 0x96a5, 0x69a5, 0x5aa5, 0x3ca5, 0xa3c5, 0x3ac5, 0xc936, 0x9c36, \
	0xa956, 0x9a56, 0x9966, 0xc396, 0xa596, 0x9696, 0x6996, 0x5a96, 0x3c96, 0x95a6, \
	0x59a6, 0x93c6, 0x39c6, 0xc639, 0x6c39, 0xa659, 0x6a59, 0xc369, 0xa569, 0x9669, \
	0x6969, 0x5a69, 0x3c69, 0x6699, 0x65a9, 0x56a9, 0x63c9, 0x36c9, 0xc53a, 0x5c3a, \
	0xc35a, 0xa55a, 0x965a, 0x695a, 0x5a5a, 0x3c5a, 0x956a, 0x596a, 0x659a, 0x569a, \
	0x55aa, 0x53ca, 0x35ca, 0xc33c, 0xa53c, 0x963c, 0x693c, 0x5a3c, 0x3c3c, 0xa35c, \
	0x3a5c, 0x936c, 0x396c, 0x639c, 0x369c, 0x53ac, 0x35ac, 0x33cc, 0xedb7, 0xdeb7, \
	0xebd7, 0xbed7, 0xdbe7, 0xbde7, 0xed7b, 0xde7b, 0xe7db, 0x7edb, 0xd7eb, 0x7deb, \
	0xeb7d, 0xbe7d, 0xe7bd, 0x7ebd, 0xb7ed, 0x7bed, 0xdb7e, 0xbd7e, 0xd7be, 0x7dbe, \
	0xb7de, 0x7bde \
}

NMP_RULE int nmp_tile_table(unsigned m, unsigned n, int *count)
{
	switch (m * 8 + n) {
	case 2 * 8 + 1: *count = 2; return 0;
	case 3 * 8 + 1: *count = 6; return 2;
	case 3 * 8 + 2: *count = 6; return 8;
	case 4 * 8 + 1: *count = 24; return 14;
	case 4 * 8 + 2: *count = 90; return 38;
	case 4 * 8 + 3: *count = 24; return 128;
	default: *count = 0; return 0;
	}
}

/* The lowest set bit of a nonzero pattern. */
NMP_RULE unsigned nmp_lowest_bit(uint32_t v)
{
#ifdef __CUDA_ARCH__
	return (unsigned)(__ffs((int)v) - 1);
#else
	return (unsigned)__builtin_ctz(v);
#endif
}

/*
 * A tile's kept sum: w is the tile's magnitudes, row-major; summed in
 * row-major order (the pattern's set bits, lowest first: bit 4r + c is
 * cell (r, c)), one addition per kept cell.
 */
NMP_RULE double nmp_tile_score(uint16_t pat, unsigned m, const double *w)
{
	double s = 0;
	for (uint32_t v = pat; v; v &= v - 1) {
		unsigned b = nmp_lowest_bit(v);
		s += w[(b >> 2) * m + (b & 3)];
	}
	return s;
}

/* The index (into pats) of the first tile with the largest kept sum. */
NMP_RULE int nmp_tile_best(const uint16_t *pats, int count, unsigned m, const double *w)
{
	int best = 0;
	double best_s = -1;
	for (int p = 0; p < count; p++) {
		double s = nmp_tile_score(pats[p], m, w);
		if (s > best_s) {
			best_s = s;
			best = p;
		}
	}
	return best;
}

/* Greedy's order: larger magnitude first, and of equal ones the lower row-major index. */
NMP_RULE bool nmp_tile_greedy_before(double wa, int ia, double wb, int ib)
{
	return wa > wb || (wa == wb && ia < ib);
}

/*
 * Exact transposable tiles for any M: a maximum-weight b-matching of rows to
 * columns (N each), as min-cost flow by successive shortest paths
 * (Bellman-Ford in a fixed edge order, so the result is deterministic).
 * +-Inf magnitudes count as a finite value above every finite tile sum, so a
 * tile keeps as many of them as it can.  Rounding must not create negative
 * cycles in the residual graph (their predecessor chains never reach the
 * source): a distance improves only by more than the rounding a path can
 * gather, and every walk is bounded by the number of vertices.
 *
 * Scratch: the caller's, NMP_TILE_FLOW_SCRATCH(m) bytes, 8-aligned.
 */
#define NMP_TILE_FLOW_EDGES(m) (2 * ((m) * (m) + 2 * (m)))
#define NMP_TILE_FLOW_SCRATCH(m) \
	((size_t)NMP_TILE_FLOW_EDGES(m) * (8 + 3 * 4) + (size_t)(2 * (m) + 2) * (8 + 4) + (size_t)(m) * (m) * 8)

NMP_RULE void nmp_tile_exact_flow(int m, int n, const double *w_in, uint8_t *keep, void *scratch)
{
	const int V = 2 * m + 2, S = 0, T = 2 * m + 1, E = NMP_TILE_FLOW_EDGES(m);
	double *cost = (double *)scratch, *dist = cost + E, *w = dist + V;
	int *to = (int *)(w + m * m), *cap = to + E, *from = cap + E, *prev = from + E;
	int ne = 0;
	for (int i = 0; i < m * m; i++)
		keep[i] = 0;

	double finite_max = 0, total = 0;
	for (int i = 0; i < m * m; i++)
		if (w_in[i] <= 1.7976931348623157e308 && w_in[i] > finite_max)
			finite_max = w_in[i];
	const double big = (finite_max > 0 ? finite_max : 1) * 2.0 * (double)(m * m);
	for (int i = 0; i < m * m; i++) {
		w[i] = w_in[i] > 1.7976931348623157e308 ? big : w_in[i];
		total += w[i];
	}
	const double tol = total * (double)V * 4 * 2.220446049250313e-16;

	/* Edges in order: source to rows, rows to columns (row-major), columns to sink; each with its reverse. */
	for (int k = 0; k < 3; k++) {
		for (int x = 0; x < (k == 1 ? m * m : m); x++) {
			int a = k == 0 ? S : k == 1 ? 1 + x / m : 1 + m + x;
			int b = k == 0 ? 1 + x : k == 1 ? 1 + m + x % m : T;
			double c = k == 1 ? -w[x] : 0.0;
			from[ne] = a, to[ne] = b, cap[ne] = k == 1 ? 1 : n, cost[ne] = c;
			ne++;
			from[ne] = b, to[ne] = a, cap[ne] = 0, cost[ne] = -c;
			ne++;
		}
	}
	for (int unit = 0; unit < m * n; unit++) {
		for (int v = 0; v < V; v++) {
			dist[v] = 1.0 / 0.0;
			prev[v] = -1;
		}
		dist[S] = 0;
		for (int it = 0; it < V; it++) {
			bool changed = false;
			for (int k = 0; k < ne; k++) {
				if (cap[k] > 0 && dist[from[k]] < 1.0 / 0.0 && dist[from[k]] + cost[k] < dist[to[k]] - tol) {
					dist[to[k]] = dist[from[k]] + cost[k];
					prev[to[k]] = k;
					changed = true;
				}
			}
			if (!changed)
				break;
		}
		if (prev[T] < 0)
			break;
		int steps = 0;
		for (int v = T; v != S && steps <= V; v = prev[v] < 0 ? S : from[prev[v]], steps++)
			if (prev[v] < 0)
				steps = V + 1;
		if (steps > V)
			break; /* no path back to the source: stop rather than loop */
		for (int v = T; v != S; v = from[prev[v]]) {
			cap[prev[v]]--;
			cap[prev[v] ^ 1]++;
		}
	}
	for (int i = 0; i < m * m; i++)
		keep[i] = cap[2 * (m + i)] == 0;
}

#endif
