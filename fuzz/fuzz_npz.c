/*
 * libFuzzer harness: the .npz reader (npz.h) over arbitrary bytes.  On
 * success every array's bytes must lie inside the input or inside its own
 * inflated buffer, and hold exactly its shape's elements; any failure must
 * come with a message.
 */
#include <stdint.h>
#include <stdlib.h>

#include "dtype.h"
#include "npz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	nmp_npz z;
	nmp_error err = { 0 };
	if (nmp_npz_read(data, size, "fuzz.npz", &z, &err) != NMP_OK) {
		if (!err.message[0])
			abort();
		return 0;
	}
	for (size_t i = 0; i < z.n; i++) {
		const nmp_npy *a = &z.arrays[i];
		uint64_t numel = 1;
		for (int d = 0; d < a->rank; d++)
			numel *= (uint64_t)a->dims[d];
		if (a->nbytes != numel * (nmp_dtype_bits(a->dtype) / 8))
			abort();
		if (!a->inflated && (a->data < data || a->data + a->nbytes > data + size))
			abort();
		volatile uint8_t sum = 0; /* every byte readable (the sanitizer checks) */
		for (uint64_t k = 0; k < a->nbytes; k++)
			sum = (uint8_t)(sum + a->data[k]);
	}
	nmp_npz_free(&z);
	return 0;
}
