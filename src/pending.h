/*
 * pending.h — side outputs (reports, masks) that land together with the
 * model or not at all.
 *
 * Each is written to a hidden temporary beside its target, then every one
 * is flushed and synced, and only then renamed into place, just before the
 * model's own rename, which comes last.  Until that point any failure
 * removes them all, so a run that fails leaves no output and an unchanged
 * input.  A target that exists and is not a regular file (/dev/stdout, a
 * terminal, a pipe) is written directly, and its errors are still seen
 * before the model is committed.
 *
 * Ownership: the set owns its FILEs; nmp_pending_free closes them and
 * removes every temporary not committed.
 */
#ifndef NMP_PENDING_H
#define NMP_PENDING_H

#include <stdio.h>

#include "error.h"

typedef struct nmp_pending nmp_pending;

nmp_status nmp_pending_create(nmp_pending **out, nmp_error *err);

/* Opens `path` for writing through the set; `what` names it in messages ("report"). */
nmp_status nmp_pending_open(nmp_pending *p, const char *path, const char *what, FILE **f, nmp_error *err);

/*
 * Flushes and syncs every file (the first failure names its file and
 * renames nothing), then renames every temporary into place, in the order
 * opened.
 */
nmp_status nmp_pending_commit(nmp_pending *p, nmp_error *err);

/* After a commit whose model then failed to land: removes what was renamed. */
void nmp_pending_unlink_committed(nmp_pending *p);

void nmp_pending_free(nmp_pending **p);

#endif
