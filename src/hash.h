/*
 * hash.h — FNV-1a, the hash of nmprune's name tables: the graph walk's scope,
 * the permutation's names and the loader's set of read names.
 */
#ifndef NMP_HASH_H
#define NMP_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t nmp_hash_bytes(const void *p, size_t n)
{
	const unsigned char *s = p;
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ s[i]) * 1099511628211ull;
	return h;
}

static inline uint64_t nmp_str_hash(const char *s)
{
	return nmp_hash_bytes(s, strlen(s));
}

#endif
