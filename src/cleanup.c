/*
 * cleanup.c — removing temporaries on signals (cleanup.h).
 */
#include "cleanup.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SLOTS 32

static char paths[SLOTS][PATH_MAX];
static volatile sig_atomic_t used[SLOTS];
static char input_name[512];

int nmp_cleanup_add(const char *path)
{
	for (int i = 0; i < SLOTS; i++) {
		if (used[i])
			continue;
		size_t n = strlen(path);
		if (n >= PATH_MAX)
			return -1;
		memcpy(paths[i], path, n + 1);
		used[i] = 1;
		return i;
	}
	return -1;
}

int nmp_temp_create(const char *path, mode_t mode, char *tmp, size_t cap, int *slot)
{
	const char *slash = strrchr(path, '/');
	int dir = slash ? (int)(slash - path + 1) : 0;
	if (snprintf(tmp, cap, "%.*s.%.200s.nmprune-XXXXXX", dir, path, path + dir) >= (int)cap) {
		errno = ENAMETOOLONG;
		return -1;
	}
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (!mode) {
		mode_t um = umask(0);
		umask(um);
		mode = 0666 & ~um;
	}
	if (fchmod(fd, mode) != 0) {
		int e = errno;
		close(fd);
		unlink(tmp);
		errno = e;
		return -1;
	}
	*slot = nmp_cleanup_add(tmp);
	return fd;
}

void nmp_cleanup_forget(int slot)
{
	if (slot >= 0 && slot < SLOTS)
		used[slot] = 0;
}

static void remove_all(void)
{
	for (int i = 0; i < SLOTS; i++)
		if (used[i])
			unlink(paths[i]);
}

static void on_terminate(int sig)
{
	remove_all();
	signal(sig, SIG_DFL);
	raise(sig);
}

static void put(const char *s)
{
	ssize_t r = write(STDERR_FILENO, s, strlen(s));
	(void)r;
}

static void on_bus(int sig)
{
	(void)sig;
	remove_all();
	put("nmprune: error: ");
	put(input_name);
	put(": the file changed size while it was read (SIGBUS); nothing written\n");
	_exit(4);
}

void nmp_signals_install(const char *input)
{
	snprintf(input_name, sizeof input_name, "%s", input ? input : "the input");
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_terminate;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sa.sa_handler = on_bus;
	sigaction(SIGBUS, &sa, NULL);
	signal(SIGXFSZ, SIG_IGN);
}
