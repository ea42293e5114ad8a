/*
 * cleanup.h — temporaries a signal must not leave behind.
 *
 * Model I/O registers each temporary it creates and unregisters it once
 * renamed or removed.  nmp_signals_install (called by main only) makes
 * SIGINT, SIGTERM and SIGHUP remove the registered files and then end the
 * process by that signal; SIGBUS (the input shrank under its mapping)
 * removes them and exits 4 with one line naming the input; SIGXFSZ is
 * ignored so that an over-limit write fails with EFBIG and is reported as
 * the I/O error it is.  The handlers only unlink and write: both are
 * async-signal-safe.
 */
#ifndef NMP_CLEANUP_H
#define NMP_CLEANUP_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Creates the hidden temporary every output is first written to, beside its
 * target: "DIR/.NAME.nmprune-XXXXXX", NAME cut to 200 bytes so that targets
 * of up to 255 still fit.  It is opened for reading and writing, close on
 * exec, with `mode` (0: 0666 less the umask), and registered for removal
 * on signals (*slot, for nmp_cleanup_forget).  Returns the descriptor and
 * its name in tmp, or -1 with errno set (ENAMETOOLONG when tmp is short).
 */
int nmp_temp_create(const char *path, mode_t mode, char *tmp, size_t cap, int *slot);

/* Registers a temporary; returns a slot (>= 0) for nmp_cleanup_forget, or -1 when the table is full. */
int nmp_cleanup_add(const char *path);
void nmp_cleanup_forget(int slot);

/* Installs the handlers; `input` names the model in the SIGBUS message. */
void nmp_signals_install(const char *input);

#endif
