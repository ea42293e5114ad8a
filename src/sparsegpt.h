/*
 * sparsegpt.h — one-shot pruning with reconstruction (OBS), for one linear
 * layer: rows outputs, K inputs, and the inputs' Hessian H = sum of x x^T
 * over the calibration tokens.
 *
 * H is damped (damp x its mean diagonal added to the diagonal; a column no
 * token touched gets 1), inverted through its Cholesky factor, and the
 * upper Cholesky factor U of H^-1 drives the sweep: columns are taken in
 * order, in blocks (nmp_sparsegpt_block); each pruned weight's error,
 * divided by U[i][i], is spread over the columns still to come along row i
 * of U (inside a block by rank-1 updates, to the later columns once per
 * block by one matrix product).  The mask is chosen as the sweep reaches it,
 * from the weights as updated so far, by score w^2 / U[j][j]^2:
 *  - N:M: at the first column of every group of M, per row, the N highest
 *    scores are kept (ties keep the lower column);
 *  - P%: at the first column of every block, round(P x rows x width) of the
 *    block's lowest scores are pruned (ties prune the higher flat index).
 * A failed factorization retries with ten times the damping, up to 1e6 x.
 * Arithmetic in double through BLAS and LAPACK (blas.h, loaded by the caller).
 */
#ifndef NMP_SPARSEGPT_H
#define NMP_SPARSEGPT_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "pattern.h"

#define NMP_SPARSEGPT_BLOCK 128

/*
 * The sweep's block width for a pattern: NMP_SPARSEGPT_BLOCK columns, or
 * for N:M the largest multiple of M up to it (M itself above it), so that
 * no group straddles two blocks: a group's mask is chosen at its first
 * column, from weights that every earlier column of its block has updated.
 */
uint64_t nmp_sparsegpt_block(const nmp_pattern *p);

/*
 * The integer grid of a quantized layer, per weight (rows x K, row-major):
 * each kept weight is put on it as the sweep reaches its column, and the
 * rounding error is spread over the columns still to come like a pruned
 * weight's (pruning and quantizing in one sweep).
 */
typedef struct nmp_sgpt_grid {
	const double *scale, *zero;
	double qmin, qmax;
} nmp_sgpt_grid;

/* Can the sweep serve this pattern (element-wise N:M or P%)? */
bool nmp_sparsegpt_supports(const nmp_pattern *p);

/*
 * W: rows x K, row-major; on return the reconstructed weights, pruned ones
 * exactly 0, kept ones on the grid when there is one (NULL: none).  H: K x K,
 * overwritten.  mask: rows x K, 1 = kept.  *damp_used is the relative
 * damping that factorized.  before: how many elements of the same tensor
 * earlier sweeps took (its other groups), so that the P% counts of every
 * block of every group add up to the tensor's (nmp_sparsegpt_block_prune).
 */
nmp_status nmp_sparsegpt_solve(double *W, uint64_t rows, uint64_t K, double *H, double damp, const nmp_pattern *p,
			       uint64_t before, const nmp_sgpt_grid *grid, uint8_t *mask, double *damp_used,
			       const char *name, nmp_error *err);

/*
 * The factor the sweep runs on, in place of H: U upper triangular (row-major)
 * with H^-1 = U^T U, H damped first (a zero diagonal becomes 1), the damping
 * ten times larger after each failed factorization.  Both sweeps use it.
 */
nmp_status nmp_sparsegpt_factor(double *H, uint64_t K, double damp, double *damp_used, const char *name,
				nmp_error *err);

/*
 * How many of a P% block's elements to prune: the block holds the elements
 * [at, at + n) of its tensor, in sweep order, and each block takes its share
 * of the tensor's count, floor(sparsity x numel + 0.5) as check counts it,
 * rounded where the running total falls, so the shares add up to it exactly.
 */
uint64_t nmp_sparsegpt_block_prune(double sparsity, uint64_t at, uint64_t n);

/*
 * The P% mask of one block (rows x cnt, row-major) at its first column: the
 * `prune` lowest scores pruned, ties to the higher flat index; scratch holds
 * nmp_sparsegpt_block_scratch(rows) bytes.  Shared with the GPU sweep, which
 * brings the block to the host for it.
 */
void nmp_sparsegpt_block_mask(const double *W1, const double *dd, uint64_t rows, uint64_t cnt, uint64_t prune,
			      uint8_t *m1, void *scratch);
size_t nmp_sparsegpt_block_scratch(uint64_t rows);

/*
 * The same sweep on the GPU (kernels/sparsegpt.cu: cuBLAS, loaded at run
 * time; the factorization stays on the host so that the damping decision is
 * the CPU's), same contract, grid included; NMP_ERR_DEVICE when CUDA or
 * cuBLAS is unavailable.  Equal to the CPU's within rounding: the masks
 * match, the rebuilt weights to 1e-9 relative of the layer's scale (on a
 * grid, the same grid points but where a value lies within rounding of a
 * point's boundary).
 */
nmp_status nmp_cuda_sparsegpt_solve(double *W, uint64_t rows, uint64_t K, double *H, double damp, const nmp_pattern *p,
				    uint64_t before, const nmp_sgpt_grid *grid, uint8_t *mask, double *damp_used,
				    const char *name, nmp_error *err);

/* tr(D H D^T) for D rows x K (row-major): the squared output error of a weight change D. */
double nmp_sparsegpt_output_error(const double *D, uint64_t rows, uint64_t K, const double *H);


#endif
