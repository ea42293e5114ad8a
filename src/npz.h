/*
 * npz.h — numpy's .npz archives (np.savez, np.savez_compressed): a zip file
 * (zip64 fields included) of .npy members, stored or deflated.
 *
 * Each member's .npy header is read for its element type (little-endian or
 * one-byte numeric types and bool), its shape and its order (C order, or a
 * rank of at most 1).  A stored member's bytes are used where they lie in the
 * caller's mapping; a deflated one is inflated into a buffer of its own.
 * Every member's CRC-32 is checked.  Errors (NMP_ERR_USAGE: the archive is the
 * user's data) name the file and the member.
 *
 * Ownership: nmp_npz_read fills a nmp_npz that nmp_npz_free releases; data
 * pointers into the mapping live as long as the mapping.
 */
#ifndef NMP_NPZ_H
#define NMP_NPZ_H

#include <stdint.h>

#include "error.h"

#define NMP_NPY_MAX_RANK 16

typedef struct nmp_npy {
	char *name;                   /* the member's name without ".npy" */
	int32_t dtype;                /* ONNX element type */
	int rank;
	int64_t dims[NMP_NPY_MAX_RANK];
	const uint8_t *data;          /* the elements, C order, little-endian */
	uint64_t nbytes;
	void *inflated;               /* a deflated member's buffer (owned), else NULL */
} nmp_npy;

typedef struct nmp_npz {
	nmp_npy *arrays;
	size_t n;
} nmp_npz;

nmp_status nmp_npz_read(const uint8_t *map, uint64_t size, const char *path, nmp_npz *out, nmp_error *err);
void nmp_npz_free(nmp_npz *z);

#endif
