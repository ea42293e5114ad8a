/*
 * sorted.h — searching sorted arrays of 64-bit keys: the permutation's cuts
 * and the loader's compact records.
 */
#ifndef NMP_SORTED_H
#define NMP_SORTED_H

#include <stddef.h>
#include <stdint.h>

/* The first of v[0..n) not below x (n when none is); v ascends. */
static inline size_t nmp_lower_bound_u64(const uint64_t *v, size_t n, uint64_t x)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (v[mid] < x)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

#endif
