/*
 * cuda_common.cuh — what the CUDA backend's files share: the CUDA_CHECK
 * macro, the device view of one tensor, the device statistics, and each
 * pattern family's launcher.
 *
 * Each family has three layers (as in ggml): a `static __global__` kernel,
 * a launcher that takes a stream, and the entry in context.cu that checks
 * the case and stages the data.  The rules the kernels obey (keys, tie rule,
 * tile tables, scoring order) are mask_rules.h, which the CPU backend
 * compiles too.  GPU memory never outlives the call that allocated it.
 */
#ifndef NMP_CUDA_COMMON_CUH
#define NMP_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "dtype.h"
#include "mask.h"
}
#include "mask_rules.h"

/* Every CUDA call: on failure, record CUDA's reason with the call and return NMP_ERR_DEVICE. */
#define CUDA_CHECK(err, call)                                                                          \
	do {                                                                                           \
		cudaError_t cu_e_ = (call);                                                            \
		if (cu_e_ != cudaSuccess)                                                              \
			return nmp_error_set((err), NMP_ERR_DEVICE, "CUDA: %s (%s, %s:%d)",            \
					     cudaGetErrorString(cu_e_), #call, __FILE__, __LINE__); \
	} while (0)

#define NMP_CU_THREADS 256

/* Statistics the kernels accumulate on the device (atomics; combined on the host). */
typedef struct nmp_cu_stats {
	double l1_dense, l1_kept, l1_above;  /* l1_above: magnitudes above the reference cut */
	unsigned long long kept, groups, violations, deficits;
	unsigned long long nan_at;           /* first NaN + 1, 0 none (atomicMin over index + 1, ~0 none) */
	unsigned long long cut_count;        /* keys at or above the reference cut key */
} nmp_cu_stats;

/* One tensor (or a slice of whole outer indices of it) as the kernels see it, in device memory. */
typedef struct nmp_cu_view {
	int32_t dtype;
	nmp_key_kind kk;
	uint64_t numel, L, inner, outer, rows;
	uint64_t base;            /* flat index of element 0 of this view in the whole tensor */
	const uint8_t *in;        /* the weight as stored */
	uint8_t *out;             /* written when applying (NULL otherwise): every element */
	uint8_t *mask;            /* 1 = kept, flat order (always present on the device) */
	const uint32_t *qkey;     /* quantized: fp32 magnitude keys */
	uint64_t *key;            /* general families: a key per element */
	const uint64_t *row_off;  /* general families: flat offset of each row of the 2-D view */
	const uint8_t *zero_point;/* quantized: zero points (NULL: 0) */
	nmp_quant_geom qg;
	unsigned n, m, ur, uc;    /* pattern: N:M, unit rows and columns */
	bool greedy, tile;        /* transposable: greedy method; the pattern's unit is a tile */
	double sparsity;
	nmp_cu_stats *st;
} nmp_cu_view;

/* The key of element i as the engine ranks it. */
static __device__ __forceinline__ uint64_t nmp_cu_key(const nmp_cu_view &v, uint64_t i)
{
	if (v.qkey)
		return v.qkey[i];
	return nmp_float_key(v.dtype, v.in, i);
}

static __device__ __forceinline__ int nmp_cu_zero_point(const nmp_cu_view &v, uint64_t i)
{
	if (!v.zero_point)
		return 0;
	return nmp_quant_value(v.dtype, v.zero_point, nmp_quant_index(&v.qg, v.base + i));
}

/* Writes element i to `out`: itself when kept, else zero (the zero point when quantized). */
static __device__ __forceinline__ void nmp_cu_store(const nmp_cu_view &v, uint64_t i, bool keep)
{
	switch (v.dtype) {
	case NMP_DT_FLOAT: {
		uint32_t x;
		memcpy(&x, v.in + 4 * i, 4);
		x = keep ? x : 0u;
		memcpy(v.out + 4 * i, &x, 4);
		break;
	}
	case NMP_DT_FLOAT16:
	case NMP_DT_BFLOAT16: {
		uint16_t x;
		memcpy(&x, v.in + 2 * i, 2);
		x = keep ? x : (uint16_t)0;
		memcpy(v.out + 2 * i, &x, 2);
		break;
	}
	case NMP_DT_DOUBLE: {
		uint64_t x;
		memcpy(&x, v.in + 8 * i, 8);
		x = keep ? x : 0ull;
		memcpy(v.out + 8 * i, &x, 8);
		break;
	}
	default:
		v.out[i] = keep ? v.in[i] : (uint8_t)nmp_cu_zero_point(v, i);
		break;
	}
}

/* Is element i stored as nonzero (quantized: different from its zero point)? */
static __device__ __forceinline__ bool nmp_cu_nonzero(const nmp_cu_view &v, uint64_t i)
{
	if (v.qkey)
		return nmp_quant_value(v.dtype, v.in, i) != nmp_cu_zero_point(v, i);
	return nmp_float_key(v.dtype, v.in, i) != 0;
}

/* Block-wide sum (double or unsigned long long), added once per block to *dst. */
template <typename T>
static __device__ __forceinline__ void nmp_cu_block_sum(T x, T *dst)
{
	__shared__ T part[32];
	for (int o = 16; o > 0; o >>= 1)
		x += __shfl_down_sync(0xffffffffu, x, o);
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	if (lane == 0)
		part[warp] = x;
	__syncthreads();
	if (warp == 0) {
		x = lane < (int)(blockDim.x >> 5) ? part[lane] : T(0);
		for (int o = 16; o > 0; o >>= 1)
			x += __shfl_down_sync(0xffffffffu, x, o);
		if (lane == 0 && x != T(0))
			atomicAdd(dst, x);
	}
	__syncthreads();
}

static inline unsigned nmp_cu_blocks(uint64_t items)
{
	uint64_t b = (items + NMP_CU_THREADS - 1) / NMP_CU_THREADS;
	if (b > 1u << 20)
		b = 1u << 20; /* kernels stride over the rest */
	return b ? (unsigned)b : 1u;
}

/* keys.cu: quantized keys; the scan (NaN, dense L1, keys for the general families, the reference histogram). */
cudaError_t nmp_cu_quant_keys(const nmp_cu_view &v, uint32_t *qkey, const uint8_t *scale, int32_t scale_dtype,
			      cudaStream_t s);
cudaError_t nmp_cu_scan(const nmp_cu_view &v, unsigned long long *hist, int hist_shift, cudaStream_t s);

/*
 * nm.cu: element-wise N:M.  The fast path (32-bit keys, M <= 32) writes mask
 * and output and sums the kept magnitude and the magnitude above the
 * reference cut bin (top 16 key bits > cut_bin when cut_shift is 16, the
 * key itself when 0), counting the keys inside the bin by their low bits
 * into cut_hist.  The general path ranks v.key, any M.
 */
cudaError_t nmp_cu_nm_fast(const nmp_cu_view &v, uint32_t cut_bin, int cut_shift, unsigned long long *cut_hist,
			   cudaStream_t s);
cudaError_t nmp_cu_nm(const nmp_cu_view &v, cudaStream_t s);

/* units.cu: vector- and block-wise N:M. */
cudaError_t nmp_cu_units(const nmp_cu_view &v, cudaStream_t s);

/* tiles.cu: transposable tiles (exact M <= 4 by the tables, exact flow and greedy to NMP_CU_TILE_MAX_M). */
#define NMP_CU_TILE_MAX_M 8
cudaError_t nmp_cu_tiles(const nmp_cu_view &v, cudaStream_t s);

/* unstructured.cu: P% masks by radix select, and the reference statistic's cut. */
cudaError_t nmp_cu_unstructured(const nmp_cu_view &v, unsigned long long *scratch_hist, uint64_t *scores,
				cudaStream_t s, uint64_t *n_prune_out);
/*
 * The k-th largest key (1-based) among n keys (key array, or the tensor's
 * own keys when keys == NULL), by 16-bit radix passes from the top; *above
 * receives how many keys are strictly larger.
 */
cudaError_t nmp_cu_kth_largest(const nmp_cu_view &v, const uint64_t *keys, uint64_t n, uint64_t k, int bits,
			       unsigned long long *hist, uint64_t *key_out, uint64_t *above, cudaStream_t s);
/* Adds to st->l1_above the magnitudes of keys above `cut`. */
cudaError_t nmp_cu_sum_above(const nmp_cu_view &v, uint64_t cut, cudaStream_t s);

/* check.cu */
cudaError_t nmp_cu_check(const nmp_cu_view &v, unsigned long long *zero_units, cudaStream_t s);

/* mark: after a mask is chosen, kept count and magnitude, and the output. */
cudaError_t nmp_cu_finish(const nmp_cu_view &v, cudaStream_t s);

#endif
