/*
 * error.h — status codes and the one error object every module fills.
 *
 * Contract: a function that can fail returns an nmp_status and, on failure,
 * records what happened in the caller's nmp_error (file, tensor, node, byte
 * offset: whatever the failing layer knows).  The first failure wins: later
 * calls to nmp_error_set on an error that already holds one are ignored, so
 * the innermost, most specific message is the one main prints.  Messages are
 * one line: control characters from names in the model are replaced.
 *
 * Programmer bugs (impossible states) go through NMP_ASSERT, which prints the
 * file and line and aborts; nothing else in the library exits or aborts.
 */
#ifndef NMP_ERROR_H
#define NMP_ERROR_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "nmprune.h" /* nmp_status, nmp_status_string */

#define NMP_ERROR_MAX 1024

typedef struct nmp_error {
	nmp_status status;
	char message[NMP_ERROR_MAX];
} nmp_error;

/* Records the first failure; returns s so callers can `return nmp_error_set(...)`. */
nmp_status nmp_error_set(nmp_error *err, nmp_status s, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
nmp_status nmp_error_setv(nmp_error *err, nmp_status s, const char *fmt, va_list ap);

/* Records an errno-based I/O failure: "<what> '<path>': <strerror>". */
nmp_status nmp_error_errno(nmp_error *err, int errnum, const char *what, const char *path);

void nmp_error_clear(nmp_error *err);

#define NMP_ASSERT(cond)                                                       \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "nmprune: internal error: %s:%d: %s\n", \
				__FILE__, __LINE__, #cond);                    \
			abort();                                               \
		}                                                              \
	} while (0)

/* Propagate a failed status. */
#define NMP_TRY(expr)                              \
	do {                                       \
		nmp_status nmp_try_s_ = (expr);    \
		if (nmp_try_s_ != NMP_OK)          \
			return nmp_try_s_;         \
	} while (0)

#endif
