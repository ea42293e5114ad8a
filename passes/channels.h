/*
 * channels.h — channel permutation on the graph: which tensors must share a
 * permutation, the search for each, and the rewrite that applies it.
 *
 * Reordering the input channels of a weight changes which weights share an
 * N:M group.  The model computes the same function when every tensor that
 * carries those channels is reordered the same way: the producers' weights
 * along their output-channel axis and their biases, BatchNormalization and
 * LayerNormalization parameters, per-channel constants of element-wise ops,
 * and every consumer's weight along its reduction axis.
 *
 * A channel group is a set of (tensor, axis) slots closed under the ops that
 * carry a permutation through: each op states which of its inputs' and
 * outputs' axes move together (Conv: X's channels with W's axis 1; Y's with
 * W's axis 0 and the bias; Relu: X's axis k with Y's axis k; Transpose maps
 * axes by its perm; a reduction ends the axes it reduces, since any order
 * gives the same result; ...).  Starting from each eligible weight's input
 * channels, the group grows over every producer and every reader of every
 * slot; an operand an element-wise op broadcasts along the axis (of lower
 * rank, or of size 1 there) is not reached.  An op that mixes channels (a
 * Reshape that regroups axes, ArgMax, an unknown op), a graph input or
 * output, or a rank that cannot be inferred blocks the group, with the
 * reason.  Grouped convolutions tie the permutation to their groups:
 * as consumers the same order repeats in every group (the weight holds one
 * group's channels), as producers channels stay inside their group.
 *
 * A Concat or Split along the channels divides them: the whole tensor's
 * channels are its parts' channels one after another.  A Slice that takes a
 * run of the channels (a step of 1, constant bounds) is a Split whose one
 * part is that run, and a Reshape that keeps the last axis (its shape ends
 * in the K channels the input's last axis has) a Slice of all of it.  Each
 * such axis is cut where any part begins or ends, on both sides, until the
 * cuts agree, and every run between two cuts is a group of its own, joined
 * with the runs the node equates it to.  A Reshape whose last axis has K
 * channels where its input's has a multiple of K, or the reverse (attention
 * heads split and merged), joins the shorter side to the group as one tile:
 * the same order of K repeats in every run of K.  So a weight's group axis
 * may hold several groups, each in its own run of channels (nmp_chan_part),
 * and a group may hold several runs of one tensor (a C2f block concatenates
 * a branch and the residual sum of that branch).  Each group's order stays
 * inside its run.
 *
 * The search (permute.h) runs once per group on the magnitudes of the
 * group's eligible weights stacked as rows, with their common element-wise
 * N:M pattern.  The rewrite then happens as the model is saved: each touched
 * tensor's payload is gathered along its permuted axes (nmp_channels_apply).
 * Each If branch and Loop or Scan body is analysed as a graph of its own:
 * its inputs, its outputs and the names it reads from the graphs around it
 * block there, and a name a subgraph reads blocks in the graph that defines
 * it, so no tensor is reordered for one graph and read unordered in another.
 * The exception is a constant that one subgraph alone reads: it is handed to
 * that subgraph's analysis, as if defined there.
 *
 * Memory: a group's eligible weights as fp32 magnitudes, during its search.
 * Ownership: nmp_channels_plan allocates; nmp_channels_free releases.  The
 * result borrows the plan, which must outlive it.
 */
#ifndef NMP_CHANNELS_H
#define NMP_CHANNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "permute.h"
#include "plan.h"

typedef struct nmp_chan_group {
	char label[160];           /* the tensor the group was found from */
	uint64_t channels;         /* C, 0 if unknown */
	unsigned tile;             /* >0: the same order repeats in every run of `tile` channels */
	unsigned confine;          /* >0: channels stay inside runs of this size */
	char blocked[256];         /* why it cannot be permuted; "" if it can */
	char skipped[160];         /* why no search ran though it could be permuted; "" otherwise */
	bool crosses_quant;        /* it passes an activation's QuantizeLinear or DequantizeLinear: the
				    * reordering is exact, but int8 kernels may round differently after it */
	size_t n_weights;          /* eligible weights read along it */
	size_t n_tensors;          /* tensors the rewrite touches */
	unsigned n, m;             /* the N:M searched */
	uint32_t *perm;            /* channels entries, perm[new] = old; NULL: left as it is */
	uint32_t *short_perm;      /* tile entries, for tensors holding one tile of channels */
	nmp_perm_result search;
	double seconds;
} nmp_chan_group;

typedef struct nmp_chan_edit {
	size_t tensor;             /* model tensor index */
	int axis;                  /* axis of that tensor */
	size_t group;
	bool short_axis;           /* the axis holds one tile of the group's channels */
	uint64_t offset;           /* the group's channels are [offset, offset + its count) of the axis */
} nmp_chan_edit;

/* The run of an eligible weight's group axis that one group holds. */
typedef struct nmp_chan_part {
	size_t choice;             /* selection choice */
	size_t group;
	uint64_t offset, length;   /* channels [offset, offset + length) of the weight's group axis */
	double kept_identity, kept_permuted; /* the run's kept magnitude; -1 until its group's search */
} nmp_chan_part;

typedef struct nmp_channels {
	nmp_chan_group *groups;
	size_t n_groups;
	nmp_chan_edit *edits;      /* sorted by tensor, axis and offset; only groups with a permutation */
	size_t n_edits;
	nmp_chan_part *parts;      /* every graph's, sorted by choice, then offset */
	size_t n_parts;
	/* per selection choice: the group of its first channels (-1 none), and its kept magnitude
	 * without and with the permutation (equal when none; -1 when none of its groups was searched) */
	long *group_of;
	double *kept_identity, *kept_permuted;
} nmp_channels;

/* The seed of the command and the library: the same model and options give the same output. */
#define NMP_PERMUTE_SEED 20211206u

/*
 * effort: each group's search budget times this (0 or 1: the default).
 * threads: groups searched at once (0: all cores); the result does not
 * depend on it.
 */
nmp_status nmp_channels_plan(const nmp_plan *plan, uint64_t seed, unsigned effort, int threads, nmp_channels **out,
			     nmp_error *err);
void nmp_channels_free(nmp_channels **c);

/* The parts of selection choice `choice`: *n of them, from the returned one; NULL and 0 for none. */
const nmp_chan_part *nmp_channels_parts(const nmp_channels *c, size_t choice, size_t *n);

/* Does the rewrite touch this model tensor? */
bool nmp_channels_touches(const nmp_channels *c, size_t tensor);

/*
 * Writes the permuted payload of a model tensor into `data` (raw layout,
 * `length` bytes).  The original bytes are at `src`, or in `data` when src is
 * NULL.
 */
nmp_status nmp_channels_apply(const nmp_channels *c, const nmp_model *m, size_t tensor, void *data,
			      const void *src, uint64_t length, nmp_error *err);

/*
 * Replaces a view of model tensor t (NULL: nothing) by a permuted copy that
 * the view owns, when the rewrite touches it; c may be NULL.
 */
nmp_status nmp_channels_view(const nmp_channels *c, const nmp_model *m, const nmp_tensor *t, nmp_view *v,
			     nmp_error *err);

#endif
