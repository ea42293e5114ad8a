/*
 * ort.c — ONNX Runtime's C API through dlopen (see ort.h).
 *
 * The API is a table of function pointers (struct OrtApi) returned by
 * OrtApiBase.GetApi(version).  Its entries never move: a release only
 * appends.  The positions below are those of the documented ABI; every
 * entry used lies in the part frozen since version 1, and GetApi refuses a
 * version the library does not offer; AddSessionConfigEntry (130) has been
 * there since API version 2.  Each function returns an OrtStatus
 * pointer, NULL on success; a failure's message is copied into nmp_error
 * and the status released.
 */
#include <dlfcn.h>
#include <glob.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dtype.h"
#include "mask_rules.h"
#include "ort.h"

typedef void OrtStatus;
typedef void (*ort_fn)(void); /* matches every entry for the casts below */

typedef struct ort_api_base {
	const void *(*get_api)(uint32_t version);
	const char *(*get_version_string)(void);
} ort_api_base;

/* Positions in struct OrtApi (documented ABI, frozen since API version 1). */
enum ort_entry {
	ORT_GET_ERROR_MESSAGE = 2,
	ORT_CREATE_ENV = 3,
	ORT_CREATE_SESSION_FROM_ARRAY = 8,
	ORT_RUN = 9,
	ORT_CREATE_SESSION_OPTIONS = 10,
	ORT_SET_SESSION_GRAPH_OPTIMIZATION_LEVEL = 23,
	ORT_SET_INTRA_OP_NUM_THREADS = 24,
	ORT_SET_INTER_OP_NUM_THREADS = 25,
	ORT_ADD_SESSION_CONFIG_ENTRY = 130,
	ORT_CREATE_TENSOR_WITH_DATA_AS_ORT_VALUE = 49,
	ORT_GET_TENSOR_MUTABLE_DATA = 51,
	ORT_GET_TENSOR_ELEMENT_TYPE = 60,
	ORT_GET_DIMENSIONS_COUNT = 61,
	ORT_GET_DIMENSIONS = 62,
	ORT_GET_TENSOR_SHAPE_ELEMENT_COUNT = 64,
	ORT_GET_TENSOR_TYPE_AND_SHAPE = 65,
	ORT_CREATE_CPU_MEMORY_INFO = 69,
	ORT_RELEASE_ENV = 92,
	ORT_RELEASE_STATUS = 93,
	ORT_RELEASE_MEMORY_INFO = 94,
	ORT_RELEASE_SESSION = 95,
	ORT_RELEASE_VALUE = 96,
	ORT_RELEASE_TENSOR_TYPE_AND_SHAPE_INFO = 99,
	ORT_RELEASE_SESSION_OPTIONS = 100,
};

enum { ORT_LOGGING_LEVEL_FATAL = 4, ORT_ENABLE_ALL = 99, ORT_ARENA_ALLOCATOR = 1, ORT_MEM_TYPE_DEFAULT = 0 };

struct nmp_ort {
	void *lib;
	const ort_fn *api;
	void *env;
	void *meminfo;
	char path[PATH_MAX];
	char version[64];
};

struct nmp_ort_session {
	nmp_ort *ort;
	void *session;
	char label[256];
};

#define ORT_CALL(o, entry, type, ...) (((type)(o)->api[entry])(__VA_ARGS__))

static bool source_file(const char *s, size_t n)
{
	static const char *const ext[] = { ".cc", ".cpp", ".h", ".hpp", ".cu" };
	for (size_t k = 0; k < sizeof ext / sizeof *ext; k++) {
		size_t e = strlen(ext[k]);
		if (n > e && memcmp(s + n - e, ext[k], e) == 0)
			return true;
	}
	return false;
}

const char *nmp_ort_reason(const char *msg)
{
	size_t file = strcspn(msg, " :");
	const char *p = msg + file;
	if (*p != ':' || !source_file(msg, file) || !(p[1] >= '0' && p[1] <= '9'))
		return msg;
	for (p++; *p >= '0' && *p <= '9'; p++)
		;
	if (*p != ' ')
		return msg;
	const char *open = strchr(++p, '(');
	const char *scope = strstr(p, "::"); /* a qualified function, before its arguments */
	if (!open || !scope || scope > open)
		return msg;
	for (;;) { /* each parenthesized group of the signature: f(args), f()::<lambda(args)>(args) */
		int depth = 0;
		for (p = open; *p; p++)
			if (*p == '(')
				depth++;
			else if (*p == ')' && --depth == 0)
				break;
		if (!*p)
			return msg;
		for (p++; *p == '>'; p++)
			;
		if (*p == '(')
			open = p;
		else if (p[0] == ':' && p[1] == ':' && (open = strchr(p, '(')))
			continue;
		else
			break;
	}
	if (strncmp(p, " const", 6) == 0)
		p += 6;
	while (*p == ' ')
		p++;
	return *p ? p : msg;
}

/* Copies a failed status's message, past its source location, into err and releases it. */
static nmp_status status_fail(const nmp_ort *o, OrtStatus *st, nmp_error *err, const char *what, const char *label)
{
	const char *msg = ORT_CALL(o, ORT_GET_ERROR_MESSAGE, const char *(*)(const OrtStatus *), st);
	char line[512];
	snprintf(line, sizeof line, "%s", msg ? nmp_ort_reason(msg) : "unknown error");
	for (char *p = line; *p; p++) /* one line */
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	for (size_t n = strlen(line); n > 0 && line[n - 1] == ' '; n--)
		line[n - 1] = '\0';
	ORT_CALL(o, ORT_RELEASE_STATUS, void (*)(OrtStatus *), st);
	return nmp_error_set(err, NMP_ERR_RUNTIME, "%s%s%s: %s", label ? label : "", label ? ": " : "", what, line);
}

#define ORT_CHECK(o, call, what, label)                                  \
	do {                                                             \
		OrtStatus *st_ = (call);                                 \
		if (st_)                                                 \
			return status_fail((o), st_, err, (what), (label)); \
	} while (0)

/* ---- finding the library --------------------------------------------------------------------- */

static bool try_open(nmp_ort *o, const char *path, char *why, size_t cap)
{
	void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		const char *e = dlerror();
		if (why && !*why)
			snprintf(why, cap, "%s", e ? e : path);
		return false;
	}
	const ort_api_base *(*get_base)(void) = NULL;
	*(void **)&get_base = dlsym(lib, "OrtGetApiBase");
	if (!get_base) {
		if (why)
			snprintf(why, cap, "%s has no OrtGetApiBase", path);
		dlclose(lib);
		return false;
	}
	const ort_api_base *base = get_base();
	const char *ver = base && base->get_version_string ? base->get_version_string() : "?";
	const void *api = base && base->get_api ? base->get_api(NMP_ORT_API_VERSION) : NULL;
	if (!api) {
		if (why)
			snprintf(why, cap, "%s is ONNX Runtime %s, which does not offer API version %d (1.%d or later needed)",
				 path, ver, NMP_ORT_API_VERSION, NMP_ORT_API_VERSION);
		dlclose(lib);
		return false;
	}
	o->lib = lib;
	o->api = api;
	snprintf(o->version, sizeof o->version, "%s", ver);
	/* where dlopen found it, for the report */
	Dl_info info;
	if (dladdr((void *)get_base, &info) && info.dli_fname)
		snprintf(o->path, sizeof o->path, "%s", info.dli_fname);
	else
		snprintf(o->path, sizeof o->path, "%s", path);
	return true;
}

static bool try_glob(nmp_ort *o, const char *pattern)
{
	glob_t g;
	bool ok = false;
	if (glob(pattern, 0, NULL, &g) == 0) {
		for (size_t i = g.gl_pathc; i-- > 0 && !ok;) /* the newest Python first */
			ok = try_open(o, g.gl_pathv[i], NULL, 0);
		globfree(&g);
	}
	return ok;
}

static bool try_wheel_prefix(nmp_ort *o, const char *prefix)
{
	static const char *const sub[] = {
		"lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*",
		"lib/python3*/dist-packages/onnxruntime/capi/libonnxruntime.so*",
		"lib/python3/dist-packages/onnxruntime/capi/libonnxruntime.so*",
		"local/lib/python3*/dist-packages/onnxruntime/capi/libonnxruntime.so*",
	};
	if (!prefix || !*prefix)
		return false;
	char pat[PATH_MAX];
	for (size_t i = 0; i < sizeof sub / sizeof *sub; i++) {
		snprintf(pat, sizeof pat, "%s/%s", prefix, sub[i]);
		if (try_glob(o, pat))
			return true;
	}
	return false;
}

/* The wheel python3 imports: the last resort, since it starts an interpreter. */
static bool try_python(nmp_ort *o)
{
	FILE *p = popen("python3 -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))' 2>/dev/null",
			"r");
	if (!p)
		return false;
	char dir[PATH_MAX] = "";
	bool got = fgets(dir, sizeof dir, p) != NULL;
	pclose(p);
	if (!got)
		return false;
	dir[strcspn(dir, "\n")] = 0;
	char pat[PATH_MAX + 40];
	snprintf(pat, sizeof pat, "%s/capi/libonnxruntime.so*", dir);
	return try_glob(o, pat);
}

static bool find_library(nmp_ort *o, const char *hint, char *why, size_t cap)
{
	if (hint)
		return try_open(o, hint, why, cap);
	const char *env = getenv("NMPRUNE_ORT_LIBRARY");
	if (env && *env)
		return try_open(o, env, why, cap);
	if (try_open(o, "libonnxruntime.so.1", NULL, 0) || try_open(o, "libonnxruntime.so", NULL, 0))
		return true;
	const char *home = getenv("HOME");
	char buf[PATH_MAX];
	if (try_wheel_prefix(o, getenv("VIRTUAL_ENV")) || try_wheel_prefix(o, getenv("CONDA_PREFIX")))
		return true;
	if (home) {
		snprintf(buf, sizeof buf, "%s/.local", home);
		if (try_wheel_prefix(o, buf))
			return true;
		snprintf(buf, sizeof buf, "%s/.pyenv/versions/*", home);
		if (try_wheel_prefix(o, buf))
			return true;
	}
	if (try_wheel_prefix(o, "/usr/local") || try_wheel_prefix(o, "/usr") || try_python(o))
		return true;
	snprintf(why, cap, "not found (--ort-library PATH, $NMPRUNE_ORT_LIBRARY, the library path, or "
			   "`pip install onnxruntime`)");
	return false;
}

nmp_status nmp_ort_open(const char *hint, nmp_ort **out, nmp_error *err)
{
	*out = NULL;
	nmp_ort *o = calloc(1, sizeof *o);
	if (!o)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	char why[PATH_MAX + 160] = "";
	if (!find_library(o, hint, why, sizeof why)) {
		free(o);
		return nmp_error_set(err, NMP_ERR_RUNTIME, "ONNX Runtime: %s", why);
	}
	OrtStatus *st = ORT_CALL(o, ORT_CREATE_ENV, OrtStatus *(*)(int, const char *, void **),
				 ORT_LOGGING_LEVEL_FATAL, "nmprune", &o->env);
	if (!st)
		st = ORT_CALL(o, ORT_CREATE_CPU_MEMORY_INFO, OrtStatus *(*)(int, int, void **), ORT_ARENA_ALLOCATOR,
			      ORT_MEM_TYPE_DEFAULT, &o->meminfo);
	if (st) {
		nmp_status s = status_fail(o, st, err, "cannot start", "ONNX Runtime");
		nmp_ort_close(&o);
		return s;
	}
	*out = o;
	return NMP_OK;
}

void nmp_ort_close(nmp_ort **po)
{
	nmp_ort *o = *po;
	if (!o)
		return;
	if (o->meminfo)
		ORT_CALL(o, ORT_RELEASE_MEMORY_INFO, void (*)(void *), o->meminfo);
	if (o->env)
		ORT_CALL(o, ORT_RELEASE_ENV, void (*)(void *), o->env);
	/* The library stays mapped: its thread pools may still be winding down. */
	free(o);
	*po = NULL;
}

const char *nmp_ort_path(const nmp_ort *o)
{
	return o->path;
}

const char *nmp_ort_version(const nmp_ort *o)
{
	return o->version;
}

/* ---- sessions -------------------------------------------------------------------------------- */

static nmp_status configure(nmp_ort *o, void *opts, int threads, const char *label, nmp_error *err)
{
	if (threads <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		threads = n > 0 ? (int)n : 1;
	}
	ORT_CHECK(o, ORT_CALL(o, ORT_SET_INTRA_OP_NUM_THREADS, OrtStatus *(*)(void *, int), opts, threads),
		  "cannot set threads", label);
	ORT_CHECK(o, ORT_CALL(o, ORT_SET_INTER_OP_NUM_THREADS, OrtStatus *(*)(void *, int), opts, 1),
		  "cannot set threads", label);
	ORT_CHECK(o, ORT_CALL(o, ORT_SET_SESSION_GRAPH_OPTIMIZATION_LEVEL, OrtStatus *(*)(void *, int), opts,
			      ORT_ENABLE_ALL),
		  "cannot set the optimization level", label);
	/* Between runs the statistics use the cores (BLAS): idle ONNX Runtime threads must not spin on them. */
	ORT_CHECK(o, ORT_CALL(o, ORT_ADD_SESSION_CONFIG_ENTRY, OrtStatus *(*)(void *, const char *, const char *), opts,
			      "session.intra_op.allow_spinning", "0"),
		  "cannot configure threads", label);
	return NMP_OK;
}

nmp_status nmp_ort_session_create(nmp_ort *o, const void *model, size_t len, const char *label, int threads,
				  nmp_ort_session **out, nmp_error *err)
{
	*out = NULL;
	nmp_ort_session *s = calloc(1, sizeof *s);
	if (!s)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	s->ort = o;
	snprintf(s->label, sizeof s->label, "%s", label);
	void *opts = NULL;
	OrtStatus *st = ORT_CALL(o, ORT_CREATE_SESSION_OPTIONS, OrtStatus *(*)(void **), &opts);
	nmp_status r = st ? status_fail(o, st, err, "cannot create session options", label) : NMP_OK;
	if (r == NMP_OK)
		r = configure(o, opts, threads, label, err);
	if (r == NMP_OK) {
		st = ORT_CALL(o, ORT_CREATE_SESSION_FROM_ARRAY,
			      OrtStatus *(*)(const void *, const void *, size_t, const void *, void **), o->env, model,
			      len, opts, &s->session);
		char what[80];
		snprintf(what, sizeof what, "ONNX Runtime %s cannot load the model", nmp_ort_version(o));
		if (st)
			r = status_fail(o, st, err, what, label);
	}
	if (opts)
		ORT_CALL(o, ORT_RELEASE_SESSION_OPTIONS, void (*)(void *), opts);
	if (r != NMP_OK) {
		nmp_ort_session_free(&s);
		return r;
	}
	*out = s;
	return NMP_OK;
}

void nmp_ort_session_free(nmp_ort_session **ps)
{
	nmp_ort_session *s = *ps;
	if (!s)
		return;
	if (s->session)
		ORT_CALL(s->ort, ORT_RELEASE_SESSION, void (*)(void *), s->session);
	free(s);
	*ps = NULL;
}

static unsigned elem_bytes(int32_t dtype)
{
	switch (dtype) {
	case 1: case 6: case 12: return 4;        /* FLOAT, INT32, UINT32 */
	case 2: case 3: case 9: return 1;         /* UINT8, INT8, BOOL */
	case 4: case 5: case 10: case 16: return 2; /* UINT16, INT16, FLOAT16, BFLOAT16 */
	case 7: case 11: case 13: return 8;       /* INT64, DOUBLE, UINT64 */
	default: return 0;
	}
}

/* A view of an output value: type, shape and buffer. */
static nmp_status describe(nmp_ort_session *s, void *value, const char *name, nmp_host_tensor *t, nmp_error *err)
{
	nmp_ort *o = s->ort;
	void *info = NULL;
	size_t rank = 0, count = 0;
	int type = 0;
	ORT_CHECK(o, ORT_CALL(o, ORT_GET_TENSOR_TYPE_AND_SHAPE, OrtStatus *(*)(const void *, void **), value, &info),
		  "output is not a tensor", name);
	OrtStatus *st = ORT_CALL(o, ORT_GET_TENSOR_ELEMENT_TYPE, OrtStatus *(*)(const void *, int *), info, &type);
	if (!st)
		st = ORT_CALL(o, ORT_GET_DIMENSIONS_COUNT, OrtStatus *(*)(const void *, size_t *), info, &rank);
	if (!st && rank > NMP_ORT_MAX_RANK) {
		ORT_CALL(o, ORT_RELEASE_TENSOR_TYPE_AND_SHAPE_INFO, void (*)(void *), info);
		return nmp_error_set(err, NMP_ERR_RUNTIME, "%s: output '%s' has rank %zu (at most %d)", s->label, name,
				     rank, NMP_ORT_MAX_RANK);
	}
	if (!st)
		st = ORT_CALL(o, ORT_GET_DIMENSIONS, OrtStatus *(*)(const void *, int64_t *, size_t), info, t->dims, rank);
	if (!st)
		st = ORT_CALL(o, ORT_GET_TENSOR_SHAPE_ELEMENT_COUNT, OrtStatus *(*)(const void *, size_t *), info, &count);
	ORT_CALL(o, ORT_RELEASE_TENSOR_TYPE_AND_SHAPE_INFO, void (*)(void *), info);
	if (st)
		return status_fail(o, st, err, "cannot read an output's shape", name);
	t->dtype = type;
	t->rank = (int)rank;
	t->numel = count;
	t->data = NULL;
	if (count && elem_bytes(type))
		ORT_CHECK(o, ORT_CALL(o, ORT_GET_TENSOR_MUTABLE_DATA, OrtStatus *(*)(void *, void **), value, &t->data),
			  "cannot read an output", name);
	return NMP_OK;
}

nmp_status nmp_ort_run(nmp_ort_session *s, size_t n_in, const char *const *in_names, const nmp_host_tensor *in,
		       size_t n_out, const char *const *out_names, nmp_ort_outputs *out, nmp_error *err)
{
	nmp_ort *o = s->ort;
	memset(out, 0, sizeof *out);
	void **inv = calloc(n_in ? n_in : 1, sizeof *inv);
	out->values = calloc(n_out ? n_out : 1, sizeof *out->values);
	out->t = calloc(n_out ? n_out : 1, sizeof *out->t);
	out->n = n_out;
	nmp_status r = NMP_OK;
	if (!inv || !out->values || !out->t)
		r = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	for (size_t i = 0; r == NMP_OK && i < n_in; i++) {
		unsigned eb = elem_bytes(in[i].dtype);
		if (!eb) {
			r = nmp_error_set(err, NMP_ERR_USAGE, "%s: input '%s' of an unsupported element type %d", s->label,
					  in_names[i], in[i].dtype);
			break;
		}
		static uint8_t empty[8];
		OrtStatus *st = ORT_CALL(o, ORT_CREATE_TENSOR_WITH_DATA_AS_ORT_VALUE,
					 OrtStatus *(*)(const void *, void *, size_t, const int64_t *, size_t, int, void **),
					 o->meminfo, in[i].numel ? in[i].data : empty, in[i].numel * eb, in[i].dims,
					 (size_t)in[i].rank, in[i].dtype, &inv[i]);
		if (st)
			r = status_fail(o, st, err, "cannot wrap the input", in_names[i]);
	}
	if (r == NMP_OK) {
		OrtStatus *st = ORT_CALL(o, ORT_RUN,
					 OrtStatus *(*)(void *, const void *, const char *const *, const void *const *,
							size_t, const char *const *, size_t, void **),
					 s->session, NULL, in_names, (const void *const *)inv, n_in, out_names, n_out,
					 out->values);
		char what[80];
		snprintf(what, sizeof what, "ONNX Runtime %s failed to run the model", nmp_ort_version(o));
		if (st)
			r = status_fail(o, st, err, what, s->label);
	}
	for (size_t i = 0; r == NMP_OK && i < n_out; i++)
		r = describe(s, out->values[i], out_names[i], &out->t[i], err);
	for (size_t i = 0; inv && i < n_in; i++)
		if (inv[i])
			ORT_CALL(o, ORT_RELEASE_VALUE, void (*)(void *), inv[i]);
	free(inv);
	if (r != NMP_OK)
		nmp_ort_outputs_release(s, out);
	return r;
}

void nmp_ort_outputs_release(nmp_ort_session *s, nmp_ort_outputs *out)
{
	for (size_t i = 0; out->values && i < out->n; i++)
		if (out->values[i])
			ORT_CALL(s->ort, ORT_RELEASE_VALUE, void (*)(void *), out->values[i]);
	free(out->values);
	free(out->t);
	memset(out, 0, sizeof *out);
}

bool nmp_host_is_floating(int32_t dt)
{
	return dt == NMP_DT_FLOAT || dt == NMP_DT_DOUBLE || dt == NMP_DT_FLOAT16 || dt == NMP_DT_BFLOAT16;
}

bool nmp_host_same_shape(const nmp_host_tensor *a, const nmp_host_tensor *b)
{
	if (a->rank != b->rank)
		return false;
	for (int d = 0; d < a->rank; d++)
		if (a->dims[d] != b->dims[d])
			return false;
	return true;
}

uint64_t nmp_host_last(const nmp_host_tensor *t)
{
	return t->rank ? (uint64_t)t->dims[t->rank - 1] : 1;
}

void nmp_host_values(const nmp_host_tensor *t, uint64_t first, size_t n, double *out)
{
	const uint8_t *d = t->data;
	switch (t->dtype) { /* the common type in its own loop; the others element by element */
	case NMP_DT_FLOAT:
		for (size_t i = 0; i < n; i++) {
			float f;
			memcpy(&f, d + 4 * (first + i), 4);
			out[i] = f;
		}
		return;
	default:
		for (size_t i = 0; i < n; i++)
			out[i] = nmp_host_value(t, first + i);
	}
}

double nmp_host_value(const nmp_host_tensor *t, uint64_t i)
{
	const uint8_t *d = t->data;
	switch (t->dtype) {
	case NMP_DT_FLOAT: { float f; memcpy(&f, d + 4 * i, 4); return f; }
	case NMP_DT_DOUBLE: { double v; memcpy(&v, d + 8 * i, 8); return v; }
	case NMP_DT_FLOAT16:
	case NMP_DT_BFLOAT16: {
		uint16_t h;
		memcpy(&h, d + 2 * i, 2);
		return nmp_half_to_float(h, t->dtype == NMP_DT_BFLOAT16);
	}
	case NMP_DT_INT64: { int64_t v; memcpy(&v, d + 8 * i, 8); return (double)v; }
	case NMP_DT_INT32: { int32_t v; memcpy(&v, d + 4 * i, 4); return v; }
	case NMP_DT_UINT8: case NMP_DT_BOOL: return d[i];
	case NMP_DT_INT8: return (int8_t)d[i];
	default: return NAN;
	}
}
