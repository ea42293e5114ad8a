/*
 * pending.c — side outputs committed with the model (pending.h).
 */
#include "pending.h"

#include "cleanup.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct pending_file {
	char *path;
	char *tmp;          /* NULL: written directly (not a regular file), or committed */
	const char *what;
	FILE *f;
	bool committed;
	int cleanup;        /* slot in the signal cleanup table */
} pending_file;

struct nmp_pending {
	pending_file *v;
	size_t n, cap;
};

nmp_status nmp_pending_create(nmp_pending **out, nmp_error *err)
{
	*out = calloc(1, sizeof **out);
	return *out ? NMP_OK : nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
}


nmp_status nmp_pending_open(nmp_pending *p, const char *path, const char *what, FILE **out, nmp_error *err)
{
	*out = NULL;
	if (p->n == p->cap) {
		size_t cap = p->cap ? 2 * p->cap : 4;
		pending_file *v = realloc(p->v, cap * sizeof *v);
		if (!v)
			return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		p->v = v;
		p->cap = cap;
	}
	pending_file *pf = &p->v[p->n];
	memset(pf, 0, sizeof *pf);
	pf->what = what;
	pf->cleanup = -1;
	if (!(pf->path = strdup(path)))
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	struct stat st;
	int fd;
	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		if (S_ISDIR(st.st_mode)) {
			free(pf->path);
			return nmp_error_set(err, NMP_ERR_IO, "%s: cannot write %s: is a directory", path, what);
		}
		fd = open(path, O_WRONLY | O_CLOEXEC);
	} else {
		size_t cap = strlen(path) + 32;
		if (!(pf->tmp = malloc(cap))) {
			free(pf->path);
			return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		}
		fd = nmp_temp_create(path, 0, pf->tmp, cap, &pf->cleanup);
	}
	if (fd < 0 || !(pf->f = fdopen(fd, "w"))) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		if (pf->tmp) {
			if (fd >= 0)
				unlink(pf->tmp);
			free(pf->tmp);
		}
		nmp_cleanup_forget(pf->cleanup);
		free(pf->path);
		char msg[64];
		snprintf(msg, sizeof msg, "cannot write %s", what);
		return nmp_error_errno(err, e, msg, path);
	}
	p->n++;
	*out = pf->f;
	return NMP_OK;
}

static nmp_status sync_all(nmp_pending *p, nmp_error *err)
{
	for (size_t i = 0; i < p->n; i++) {
		pending_file *pf = &p->v[i];
		errno = 0;
		bool bad = fflush(pf->f) != 0 || ferror(pf->f);
		/* Regular files are synced; devices and pipes cannot be (EINVAL), and need not be. */
		if (!bad && pf->tmp && fsync(fileno(pf->f)) != 0)
			bad = true;
		if (bad) {
			char msg[64];
			snprintf(msg, sizeof msg, "cannot write %s", pf->what);
			return nmp_error_errno(err, errno ? errno : EIO, msg, pf->path);
		}
	}
	return NMP_OK;
}

nmp_status nmp_pending_commit(nmp_pending *p, nmp_error *err)
{
	NMP_TRY(sync_all(p, err));
	for (size_t i = 0; i < p->n; i++) {
		pending_file *pf = &p->v[i];
		if (!pf->tmp)
			continue;
		if (rename(pf->tmp, pf->path) != 0) {
			char msg[64];
			snprintf(msg, sizeof msg, "cannot rename %s into place", pf->what);
			return nmp_error_errno(err, errno, msg, pf->path);
		}
		free(pf->tmp);
		pf->tmp = NULL;
		pf->committed = true;
		nmp_cleanup_forget(pf->cleanup);
	}
	return NMP_OK;
}

void nmp_pending_unlink_committed(nmp_pending *p)
{
	for (size_t i = 0; p && i < p->n; i++)
		if (p->v[i].committed)
			unlink(p->v[i].path);
}

void nmp_pending_free(nmp_pending **pp)
{
	nmp_pending *p = *pp;
	if (!p)
		return;
	for (size_t i = 0; i < p->n; i++) {
		if (p->v[i].f)
			fclose(p->v[i].f);
		if (p->v[i].tmp) {
			unlink(p->v[i].tmp);
			free(p->v[i].tmp);
			nmp_cleanup_forget(p->v[i].cleanup);
		}
		free(p->v[i].path);
	}
	free(p->v);
	free(p);
	*pp = NULL;
}
