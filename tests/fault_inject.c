/*
 * fault_inject.so — LD_PRELOAD shim that makes file-system calls fail, for
 * the fault tests of the command line.
 *
 *   NMP_FAULT=CALL:N[:ERRNO]   the Nth call (1-based) of CALL fails with ERRNO
 *                              (default EIO); CALL is write, pwrite,
 *                              copy_file_range, ftruncate, fsync or rename
 *   NMP_FAULT_DISK=BYTES       writes beyond BYTES in total fail with ENOSPC
 *                              (a full disk: the write that crosses is short)
 *   NMP_FAULT_PAUSE=1          the first fsync sleeps 30 s first, so a test can
 *                              signal a run whose temporaries are written
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static long long written;

static int injected(const char *call)
{
	static char name[32];
	static long target = -1, count;
	static int err = EIO, parsed;
	if (!parsed) {
		parsed = 1;
		const char *spec = getenv("NMP_FAULT");
		if (spec) {
			char e[32] = "";
			if (sscanf(spec, "%31[^:]:%ld:%31s", name, &target, e) >= 2) {
				if (strcmp(e, "ENOSPC") == 0)
					err = ENOSPC;
				else if (strcmp(e, "EDQUOT") == 0)
					err = EDQUOT;
			}
		}
	}
	if (target < 0 || strcmp(call, name) != 0)
		return 0;
	if (++count != target)
		return 0;
	errno = err;
	return 1;
}

/* How much of a write of n bytes the "disk" still takes; -1 when full. */
static ssize_t room(size_t n)
{
	const char *lim = getenv("NMP_FAULT_DISK");
	if (!lim)
		return (ssize_t)n;
	long long left = atoll(lim) - written;
	if (left <= 0) {
		errno = ENOSPC;
		return -1;
	}
	return (ssize_t)((long long)n < left ? (long long)n : left);
}

#define REAL(ret, fn, ...)                                                \
	static ret (*real_##fn)(__VA_ARGS__);                            \
	if (!real_##fn)                                                   \
		real_##fn = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #fn)

ssize_t write(int fd, const void *buf, size_t n)
{
	REAL(ssize_t, write, int, const void *, size_t);
	if (fd > 2) {
		if (injected("write"))
			return -1;
		ssize_t k = room(n);
		if (k < 0)
			return -1;
		n = (size_t)k;
	}
	ssize_t r = real_write(fd, buf, n);
	if (r > 0 && fd > 2)
		written += r;
	return r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	REAL(ssize_t, pwrite, int, const void *, size_t, off_t);
	if (injected("pwrite"))
		return -1;
	ssize_t k = room(n);
	if (k < 0)
		return -1;
	ssize_t r = real_pwrite(fd, buf, (size_t)k, off);
	if (r > 0)
		written += r;
	return r;
}

ssize_t copy_file_range(int in, off64_t *in_off, int out, off64_t *out_off, size_t n, unsigned flags)
{
	REAL(ssize_t, copy_file_range, int, off64_t *, int, off64_t *, size_t, unsigned);
	if (injected("copy_file_range"))
		return -1;
	ssize_t k = room(n);
	if (k < 0)
		return -1;
	ssize_t r = real_copy_file_range(in, in_off, out, out_off, (size_t)k, flags);
	if (r > 0)
		written += r;
	return r;
}

int ftruncate(int fd, off_t len)
{
	REAL(int, ftruncate, int, off_t);
	if (injected("ftruncate"))
		return -1;
	return real_ftruncate(fd, len);
}

int fsync(int fd)
{
	static int paused;
	if (!paused && getenv("NMP_FAULT_PAUSE")) {
		paused = 1;
		sleep(30);
	}
	REAL(int, fsync, int);
	if (injected("fsync"))
		return -1;
	return real_fsync(fd);
}

int rename(const char *a, const char *b)
{
	REAL(int, rename, const char *, const char *);
	if (injected("rename"))
		return -1;
	return real_rename(a, b);
}
