#include "error.h"

#include <errno.h>
#include <string.h>

const char *nmp_status_string(nmp_status s)
{
	switch (s) {
	case NMP_OK: return "ok";
	case NMP_ERR_USAGE: return "usage error";
	case NMP_ERR_MODEL: return "bad model";
	case NMP_ERR_IO: return "I/O error";
	case NMP_ERR_NOMEM: return "out of memory";
	case NMP_ERR_DEVICE: return "device error";
	case NMP_ERR_RUNTIME: return "ONNX Runtime error";
	}
	return "unknown status";
}

nmp_status nmp_error_setv(nmp_error *err, nmp_status s, const char *fmt, va_list ap)
{
	if (!err || err->status != NMP_OK)
		return s;
	err->status = s;
	vsnprintf(err->message, sizeof err->message, fmt, ap);
	/* Names come from untrusted models: keep the message on one line. */
	for (char *p = err->message; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	return s;
}

nmp_status nmp_error_set(nmp_error *err, nmp_status s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	nmp_error_setv(err, s, fmt, ap);
	va_end(ap);
	return s;
}

nmp_status nmp_error_errno(nmp_error *err, int errnum, const char *what, const char *path)
{
	nmp_status s = errnum == ENOMEM ? NMP_ERR_NOMEM : NMP_ERR_IO;
	return nmp_error_set(err, s, "%s: %s: %s", path, what, strerror(errnum));
}

void nmp_error_clear(nmp_error *err)
{
	err->status = NMP_OK;
	err->message[0] = '\0';
}
