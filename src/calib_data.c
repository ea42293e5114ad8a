/*
 * calib_data.c — calibration samples from ONNX test-data directories or a
 * safetensors or .npz file (see calib_data.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calib_data.h"
#include "dtype.h"
#include "npz.h"

typedef enum { DATA_DIRS, DATA_ARRAYS } data_kind;

/* One array of a safetensors or .npz file, bound to a model input. */
typedef struct st_entry {
	bool present;
	int32_t dtype;
	int rank;
	int64_t dims[NMP_ORT_MAX_RANK + 1];
	const uint8_t *data;          /* its first element: in the mapping, or an inflated .npz member */
	bool batched;                 /* rank == input rank >= 1: samples are rows of axis 0 */
	uint64_t samples;             /* how many it holds (a scalar input's rank-0 tensor: 1) */
	bool shared;                  /* holds one sample, which every sample takes */
} st_entry;

struct nmp_calib_data {
	char *path;
	data_kind kind;
	const nmp_model_input *inputs;
	size_t n_inputs;
	size_t count;
	/* directories: one path per sample */
	char **sets;
	size_t n_sets;
	/* safetensors and .npz */
	int fd;
	const uint8_t *map;
	uint64_t map_size, data_start;
	st_entry *entries;            /* per input; not present when the data leaves it out */
	nmp_npz npz;
	/* the current sample */
	const char **names;
	nmp_host_tensor *t;
	size_t n;
	void **owned;                 /* per bound input, freed at the next sample */
};

nmp_status nmp_model_inputs(const nmp_model *m, nmp_model_input **out, size_t *n, nmp_error *err)
{
	const Onnx__GraphProto *g = m->proto->graph;
	*out = NULL;
	*n = 0;
	if (!g)
		return NMP_OK;
	nmp_model_input *in = calloc(g->n_input ? g->n_input : 1, sizeof *in);
	if (!in)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	size_t k = 0;
	for (size_t i = 0; i < g->n_input; i++) {
		const Onnx__ValueInfoProto *v = g->input[i];
		nmp_model_input *x = &in[k++];
		x->name = v->name ? v->name : "";
		x->rank = -1;
		for (size_t j = 0, n_init = nmp_model_n_initializers(m, g); j < n_init; j++)
			if (strcmp(nmp_model_initializer(m, g, j)->name, x->name) == 0)
				x->optional = true;
		const Onnx__TypeProto *tp = v->type;
		if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type) {
			free(in);
			return nmp_error_set(err, NMP_ERR_MODEL, "%s: input '%s' is not a tensor", m->path, x->name);
		}
		x->dtype = tp->tensor_type->elem_type;
		const Onnx__TensorShapeProto *sh = tp->tensor_type->shape;
		if (sh) {
			if (sh->n_dim > NMP_ORT_MAX_RANK) {
				free(in);
				return nmp_error_set(err, NMP_ERR_MODEL, "%s: input '%s' has rank %zu (at most %d)", m->path,
						     x->name, sh->n_dim, NMP_ORT_MAX_RANK);
			}
			x->rank = (int)sh->n_dim;
			for (size_t d = 0; d < sh->n_dim; d++)
				x->dims[d] = sh->dim[d]->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
						     sh->dim[d]->dim_value > 0 ?
						     sh->dim[d]->dim_value :
						     -1;
		}
	}
	*out = in;
	*n = k;
	return NMP_OK;
}

/* ---- checks shared by every layout ------------------------------------------------------------ */

static const nmp_model_input *input_named(const nmp_calib_data *d, const char *name, size_t *at)
{
	for (size_t i = 0; i < d->n_inputs; i++)
		if (strcmp(d->inputs[i].name, name) == 0) {
			*at = i;
			return &d->inputs[i];
		}
	return NULL;
}

/* Does a sample tensor of this type and shape fit the input? */
static nmp_status check_fit(const nmp_calib_data *d, const char *where, const nmp_model_input *in, int32_t dtype,
			    int rank, const int64_t *dims, nmp_error *err)
{
	if (dtype != in->dtype)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: %s: input '%s' is %s, the model takes %s", d->path, where,
				     in->name, nmp_dtype_name(dtype), nmp_dtype_name(in->dtype));
	if (in->rank >= 0 && rank != in->rank)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: %s: input '%s' has rank %d, the model takes rank %d",
				     d->path, where, in->name, rank, in->rank);
	for (int k = 0; in->rank >= 0 && k < rank; k++)
		if (in->dims[k] > 0 && dims[k] != in->dims[k])
			return nmp_error_set(err, NMP_ERR_USAGE,
					     "%s: %s: input '%s' has dimension %d of %lld, the model takes %lld", d->path,
					     where, in->name, k, (long long)dims[k], (long long)in->dims[k]);
	return NMP_OK;
}

static nmp_status check_complete(const nmp_calib_data *d, const char *where, const bool *bound, nmp_error *err)
{
	for (size_t i = 0; i < d->n_inputs; i++)
		if (!bound[i] && !d->inputs[i].optional)
			return nmp_error_set(err, NMP_ERR_USAGE, "%s: %s: no data for input '%s'", d->path, where,
					     d->inputs[i].name);
	return NMP_OK;
}

/* ---- test-data directories -------------------------------------------------------------------- */

/* Numeric suffix after prefix ("input_12.pb" -> 12), or -1. */
static long numbered(const char *name, const char *prefix, const char *suffix)
{
	size_t lp = strlen(prefix), ls = strlen(suffix), ln = strlen(name);
	if (ln <= lp + ls || strncmp(name, prefix, lp) != 0 || strcmp(name + ln - ls, suffix) != 0)
		return -1;
	long v = 0;
	for (size_t i = lp; i < ln - ls; i++) {
		if (name[i] < '0' || name[i] > '9' || v > 100000000)
			return -1;
		v = v * 10 + (name[i] - '0');
	}
	return v;
}

typedef struct numbered_path {
	long k;
	char *path;
} numbered_path;

static int by_number(const void *a, const void *b)
{
	long x = ((const numbered_path *)a)->k, y = ((const numbered_path *)b)->k;
	return (x > y) - (x < y);
}

/* The entries of dir named prefix<k>suffix, in numeric order. */
static nmp_status list_numbered(const char *dir, const char *prefix, const char *suffix, bool want_dir,
				numbered_path **out, size_t *n, nmp_error *err)
{
	*out = NULL;
	*n = 0;
	DIR *dh = opendir(dir);
	if (!dh)
		return nmp_error_errno(err, errno, "cannot read calibration data", dir);
	size_t cap = 0;
	nmp_status s = NMP_OK;
	struct dirent *e;
	while ((e = readdir(dh)) != NULL) {
		long k = numbered(e->d_name, prefix, suffix);
		if (k < 0)
			continue;
		size_t len = strlen(dir) + strlen(e->d_name) + 2;
		char *p = malloc(len);
		if (!p) {
			s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
			break;
		}
		snprintf(p, len, "%s/%s", dir, e->d_name);
		struct stat st;
		if (stat(p, &st) != 0 || (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode))) {
			free(p);
			continue;
		}
		if (*n == cap) {
			cap = cap ? 2 * cap : 16;
			numbered_path *g = realloc(*out, cap * sizeof *g);
			if (!g) {
				free(p);
				s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
				break;
			}
			*out = g;
		}
		(*out)[(*n)++] = (numbered_path){ k, p };
	}
	closedir(dh);
	if (*n)
		qsort(*out, *n, sizeof **out, by_number);
	return s;
}

static void free_numbered(numbered_path *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(p[i].path);
	free(p);
}

static nmp_status read_file(const char *path, uint8_t **buf, size_t *len, nmp_error *err)
{
	*buf = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return nmp_error_errno(err, errno, "cannot open calibration data", path);
	struct stat st;
	nmp_status s = NMP_OK;
	if (fstat(fd, &st) != 0) {
		s = nmp_error_errno(err, errno, "cannot read calibration data", path);
	} else if (!(*buf = malloc((size_t)st.st_size + 1))) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", path);
	} else {
		size_t done = 0;
		while (done < (size_t)st.st_size) {
			ssize_t r = read(fd, *buf + done, (size_t)st.st_size - done);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				s = nmp_error_errno(err, r < 0 ? errno : EIO, "cannot read calibration data", path);
				break;
			}
			done += (size_t)r;
		}
		*len = done;
	}
	close(fd);
	if (s != NMP_OK) {
		free(*buf);
		*buf = NULL;
	}
	return s;
}

/*
 * A TensorProto's elements in raw layout (a new buffer).  The payload must
 * hold its numel elements before anything is allocated: a few bytes of
 * header must not claim gigabytes.
 */
static nmp_status tensor_to_raw(const Onnx__TensorProto *tp, const char *path, uint64_t numel, void **out,
				nmp_error *err)
{
	unsigned bits = nmp_dtype_bits(tp->data_type);
	if (bits == 0 || bits % 8 != 0)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: tensor of type %s cannot be fed", path,
				     nmp_dtype_name(tp->data_type));
	uint64_t bytes = numel * (bits / 8);
	bool ok = false;
	enum nmp_field f = NMP_FIELD_RAW_DATA;
	if (tp->has_data_location && tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
		/* external data is not read for samples */
	} else if (tp->has_raw_data) {
		ok = tp->raw_data.len == bytes;
	} else {
		/* a typed field, read as model I/O reads heap payloads */
		f = tp->n_float_data ? NMP_FIELD_FLOAT_DATA : tp->n_int64_data ? NMP_FIELD_INT64_DATA :
		    tp->n_double_data ? NMP_FIELD_DOUBLE_DATA :
		    tp->n_uint64_data ? NMP_FIELD_UINT64_DATA : NMP_FIELD_INT32_DATA;
		size_t have = f == NMP_FIELD_FLOAT_DATA ? tp->n_float_data : f == NMP_FIELD_INT64_DATA ? tp->n_int64_data :
			      f == NMP_FIELD_DOUBLE_DATA ? tp->n_double_data :
			      f == NMP_FIELD_UINT64_DATA ? tp->n_uint64_data : tp->n_int32_data;
		uint64_t want;
		ok = numel == 0 || (nmp_dtype_field_count(tp->data_type, f, numel, &want) && want == have);
	}
	uint8_t *buf = NULL;
	if (ok) {
		if (!(buf = malloc(bytes ? bytes : 1)))
			return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", path);
		if (f == NMP_FIELD_RAW_DATA) {
			if (bytes) /* empty bytes may have no data pointer */
				memcpy(buf, tp->raw_data.data, bytes);
		} else if (numel) {
			nmp_tensor t = { .proto = (Onnx__TensorProto *)tp, .dtype = tp->data_type, .numel = numel,
					 .field = f };
			ok = nmp_heap_to_raw(&t, buf);
		}
	}
	if (!ok) {
		free(buf);
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: tensor payload does not match its %llu elements", path,
				     (unsigned long long)numel);
	}
	*out = buf;
	return NMP_OK;
}

static nmp_status open_dirs(nmp_calib_data *d, nmp_error *err)
{
	numbered_path *sets;
	size_t n;
	NMP_TRY(list_numbered(d->path, "test_data_set_", "", true, &sets, &n, err));
	if (n == 0) {
		/* a directory holding input_*.pb is one sample */
		numbered_path *files;
		size_t nf;
		NMP_TRY(list_numbered(d->path, "input_", ".pb", false, &files, &nf, err));
		free_numbered(files, nf);
		if (nf == 0)
			return nmp_error_set(err, NMP_ERR_USAGE,
					     "%s: no test_data_set_* directories and no input_*.pb files", d->path);
		d->sets = malloc(sizeof *d->sets);
		if (!d->sets || !(d->sets[0] = strdup(d->path)))
			return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
		d->count = d->n_sets = 1;
		return NMP_OK;
	}
	d->sets = calloc(n, sizeof *d->sets);
	if (!d->sets) {
		free_numbered(sets, n);
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	}
	for (size_t i = 0; i < n; i++) {
		d->sets[i] = sets[i].path;
		sets[i].path = NULL;
	}
	d->count = d->n_sets = n;
	free_numbered(sets, n);
	return NMP_OK;
}

static nmp_status sample_dirs(nmp_calib_data *d, size_t i, nmp_error *err)
{
	numbered_path *files;
	size_t nf;
	NMP_TRY(list_numbered(d->sets[i], "input_", ".pb", false, &files, &nf, err));
	nmp_status s = NMP_OK;
	bool *bound = calloc(d->n_inputs + 1, sizeof *bound);
	if (!bound)
		s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	if (s == NMP_OK && nf > d->n_inputs)
		s = nmp_error_set(err, NMP_ERR_USAGE, "%s: %zu input files, the model has %zu inputs", d->sets[i], nf,
				  d->n_inputs);
	for (size_t f = 0; s == NMP_OK && f < nf; f++) {
		uint8_t *buf;
		size_t len = 0;
		if ((s = read_file(files[f].path, &buf, &len, err)) != NMP_OK)
			break;
		Onnx__TensorProto *tp = onnx__tensor_proto__unpack(NULL, len, buf);
		free(buf);
		if (!tp) {
			s = nmp_error_set(err, NMP_ERR_USAGE, "%s: not a serialized TensorProto", files[f].path);
			break;
		}
		size_t at = f;
		const nmp_model_input *in = NULL;
		if (tp->name && *tp->name) {
			in = input_named(d, tp->name, &at);
			if (!in)
				s = nmp_error_set(err, NMP_ERR_USAGE, "%s: the model has no input '%s'", files[f].path,
						  tp->name);
		} else {
			in = &d->inputs[f];
		}
		uint64_t numel = 1;
		if (s == NMP_OK && tp->n_dims > NMP_ORT_MAX_RANK)
			s = nmp_error_set(err, NMP_ERR_USAGE, "%s: rank %zu (at most %d)", files[f].path, tp->n_dims,
					  NMP_ORT_MAX_RANK);
		for (size_t k = 0; s == NMP_OK && k < tp->n_dims; k++) {
			if (tp->dims[k] < 0 || (tp->dims[k] > 0 && numel > (UINT64_C(1) << 40) / (uint64_t)tp->dims[k]))
				s = nmp_error_set(err, NMP_ERR_USAGE, "%s: bad dimension %lld", files[f].path,
						  (long long)tp->dims[k]);
			else
				numel *= (uint64_t)tp->dims[k];
		}
		if (s == NMP_OK && bound[at])
			s = nmp_error_set(err, NMP_ERR_USAGE, "%s: input '%s' given twice", files[f].path, in->name);
		if (s == NMP_OK)
			s = check_fit(d, files[f].path, in, tp->data_type, (int)tp->n_dims, tp->dims, err);
		void *raw = NULL;
		if (s == NMP_OK)
			s = tensor_to_raw(tp, files[f].path, numel, &raw, err);
		if (s == NMP_OK) {
			bound[at] = true;
			nmp_host_tensor *t = &d->t[d->n];
			*t = (nmp_host_tensor){ .dtype = tp->data_type, .rank = (int)tp->n_dims, .data = raw, .numel = numel };
			if (tp->n_dims) /* a scalar's dims may be NULL */
				memcpy(t->dims, tp->dims, tp->n_dims * sizeof *tp->dims);
			d->names[d->n] = in->name;
			d->owned[d->n++] = raw;
		}
		onnx__tensor_proto__free_unpacked(tp, NULL);
	}
	if (s == NMP_OK)
		s = check_complete(d, d->sets[i], bound, err);
	free(bound);
	free_numbered(files, nf);
	return s;
}

/* ---- arrays: safetensors and .npz ------------------------------------------------------------- */

static int32_t st_dtype(const char *s)
{
	static const struct { const char *name; int32_t dt; } map[] = {
		{ "F32", NMP_DT_FLOAT }, { "F16", NMP_DT_FLOAT16 }, { "BF16", NMP_DT_BFLOAT16 }, { "F64", NMP_DT_DOUBLE },
		{ "I64", NMP_DT_INT64 }, { "I32", NMP_DT_INT32 }, { "I16", NMP_DT_INT16 }, { "I8", NMP_DT_INT8 },
		{ "U8", NMP_DT_UINT8 }, { "U16", NMP_DT_UINT16 }, { "U32", NMP_DT_UINT32 }, { "U64", NMP_DT_UINT64 },
		{ "BOOL", NMP_DT_BOOL },
	};
	for (size_t i = 0; i < sizeof map / sizeof *map; i++)
		if (strcmp(s, map[i].name) == 0)
			return map[i].dt;
	return NMP_DT_UNDEFINED;
}

/*
 * Binds array `key` (dtype, rank, dims) to the model input of that name:
 * which layout it is in (stacked samples, rows of batch 1, a scalar), and
 * whether one sample fits the input.
 */
static nmp_status bind_array(nmp_calib_data *d, const char *key, int32_t dtype, int rank, const int64_t *dims,
			     st_entry **out, nmp_error *err)
{
	size_t at;
	const nmp_model_input *in = input_named(d, key, &at);
	if (!in)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: tensor '%s' names no input of the model", d->path, key);
	st_entry *e = *out = &d->entries[at];
	if (e->present)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: tensor '%s' given twice", d->path, key);
	if ((rank == 0 && in->rank != 0) || rank > NMP_ORT_MAX_RANK + 1)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: tensor '%s': rank %d cannot hold samples", d->path, key, rank);
	e->present = true;
	e->dtype = dtype;
	e->rank = rank;
	memcpy(e->dims, dims, sizeof(int64_t) * (size_t)rank);
	if (rank == 0) { /* a scalar input's one value */
		e->batched = false;
		e->samples = 1;
		return check_fit(d, "every sample", in, e->dtype, 0, e->dims, err);
	}
	if (in->rank >= 0 && e->rank == in->rank + 1) {
		e->batched = false;
	} else if (in->rank < 0 || e->rank == in->rank) {
		e->batched = true;
		if (in->rank >= 0 && in->dims[0] > 1)
			return nmp_error_set(err, NMP_ERR_USAGE,
					     "%s: tensor '%s' has the input's rank, so its rows are samples of batch 1, "
					     "but the model fixes the batch at %lld: add a leading sample axis",
					     d->path, key, (long long)in->dims[0]);
	} else {
		return nmp_error_set(err, NMP_ERR_USAGE,
				     "%s: tensor '%s' has rank %d; input '%s' takes rank %d (or %d with a leading sample axis)",
				     d->path, key, e->rank, in->name, in->rank, in->rank + 1);
	}
	/* the shape of one sample, checked against the input */
	int64_t one[NMP_ORT_MAX_RANK + 1];
	int srank = e->batched ? e->rank : e->rank - 1;
	if (e->batched) {
		memcpy(one, e->dims, sizeof(int64_t) * (size_t)e->rank);
		one[0] = 1;
	} else {
		memcpy(one, e->dims + 1, sizeof(int64_t) * (size_t)srank);
	}
	e->samples = (uint64_t)e->dims[0];
	return check_fit(d, "every sample", in, e->dtype, srank, one, err);
}

/* One entry of a safetensors header. */
static nmp_status st_entry_parse(nmp_calib_data *d, const char *key, json_t *v, nmp_error *err)
{
	json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
	       *offs = json_object_get(v, "data_offsets");
	if (!json_is_string(dt) || !json_is_array(shape) || !json_is_array(offs) || json_array_size(offs) != 2)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: tensor '%s': malformed header entry", d->path, key);
	int32_t dtype = st_dtype(json_string_value(dt));
	if (dtype == NMP_DT_UNDEFINED)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: tensor '%s': unsupported dtype %s", d->path, key,
				     json_string_value(dt));
	size_t rank = json_array_size(shape);
	if (rank > NMP_ORT_MAX_RANK + 1)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: tensor '%s': rank %zu cannot hold samples", d->path, key,
				     rank);
	int64_t dims[NMP_ORT_MAX_RANK + 1];
	uint64_t numel = 1;
	for (size_t k = 0; k < rank; k++) {
		json_t *x = json_array_get(shape, k);
		json_int_t dim = json_is_integer(x) ? json_integer_value(x) : -1;
		if (dim < 0 || (dim > 0 && numel > (UINT64_C(1) << 40) / (uint64_t)dim))
			return nmp_error_set(err, NMP_ERR_USAGE, "%s: tensor '%s': bad shape", d->path, key);
		dims[k] = dim;
		numel *= (uint64_t)dim;
	}
	json_t *o0 = json_array_get(offs, 0), *o1 = json_array_get(offs, 1);
	json_int_t b = json_is_integer(o0) ? json_integer_value(o0) : -1;
	json_int_t en = json_is_integer(o1) ? json_integer_value(o1) : -1;
	uint64_t bytes = numel * (nmp_dtype_bits(dtype) / 8);
	if (b < 0 || en < b || (uint64_t)(en - b) != bytes || d->data_start + (uint64_t)en > d->map_size)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: tensor '%s': data_offsets do not match its shape and the file",
				     d->path, key);
	st_entry *e;
	NMP_TRY(bind_array(d, key, dtype, (int)rank, dims, &e, err));
	e->data = d->map + d->data_start + (uint64_t)b;
	return NMP_OK;
}

/*
 * How many samples the data holds: every tensor holds as many, or one, which
 * then goes with every sample (a sample rate, an initial state).
 */
static nmp_status st_count(nmp_calib_data *d, size_t *count, nmp_error *err)
{
	size_t most = 0, at = 0;
	for (size_t k = 0; k < d->n_inputs; k++)
		if (d->entries[k].present && d->entries[k].samples > most) {
			most = (size_t)d->entries[k].samples;
			at = k;
		}
	for (size_t k = 0; k < d->n_inputs; k++) {
		st_entry *e = &d->entries[k];
		if (!e->present)
			continue;
		if (e->samples != most && e->samples != 1)
			return nmp_error_set(err, NMP_ERR_USAGE,
					     "%s: tensor '%s' holds %llu samples, tensor '%s' %zu: each holds as many, "
					     "or one that every sample shares",
					     d->path, d->inputs[k].name, (unsigned long long)e->samples, d->inputs[at].name,
					     most);
		e->shared = e->samples == 1 && most > 1;
	}
	*count = most;
	return NMP_OK;
}

/* Maps the data file read-only; `what` names its kind in errors. */
static nmp_status map_file(nmp_calib_data *d, const char *what, nmp_error *err)
{
	d->fd = open(d->path, O_RDONLY | O_CLOEXEC);
	if (d->fd < 0)
		return nmp_error_errno(err, errno, "cannot open calibration data", d->path);
	struct stat st;
	if (fstat(d->fd, &st) != 0)
		return nmp_error_errno(err, errno, "cannot read calibration data", d->path);
	d->map_size = (uint64_t)st.st_size;
	if (d->map_size < 8)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: not a %s file (too short)", d->path, what);
	void *map = mmap(NULL, d->map_size, PROT_READ, MAP_PRIVATE, d->fd, 0);
	if (map == MAP_FAILED)
		return nmp_error_errno(err, errno, "cannot map calibration data", d->path);
	d->map = map;
	d->entries = calloc(d->n_inputs + 1, sizeof *d->entries);
	return d->entries ? NMP_OK : nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
}

/* Once every array is bound: every required input has one, and how many samples they hold. */
static nmp_status arrays_complete(nmp_calib_data *d, size_t n_arrays, nmp_error *err)
{
	bool *bound = calloc(d->n_inputs + 1, sizeof *bound);
	if (!bound)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	for (size_t k = 0; k < d->n_inputs; k++)
		bound[k] = d->entries[k].present;
	nmp_status s = check_complete(d, d->npz.arrays ? ".npz" : "safetensors", bound, err);
	free(bound);
	if (s == NMP_OK && !n_arrays)
		s = nmp_error_set(err, NMP_ERR_USAGE, "%s: holds no tensors", d->path);
	return s == NMP_OK ? st_count(d, &d->count, err) : s;
}

static nmp_status open_safetensors(nmp_calib_data *d, nmp_error *err)
{
	NMP_TRY(map_file(d, "safetensors", err));
	uint64_t hlen = 0;
	for (int b = 0; b < 8; b++)
		hlen |= (uint64_t)d->map[b] << (8 * b);
	if (hlen > d->map_size - 8 || hlen > (100u << 20))
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: not a safetensors file (header length %llu)", d->path,
				     (unsigned long long)hlen);
	d->data_start = 8 + hlen;
	json_error_t je;
	json_t *hdr = json_loadb((const char *)d->map + 8, hlen, 0, &je);
	if (!json_is_object(hdr)) {
		json_decref(hdr);
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: safetensors header is not a JSON object: %s", d->path, je.text);
	}
	nmp_status s = NMP_OK;
	size_t n_arrays = 0;
	const char *key;
	json_t *v;
	json_object_foreach(hdr, key, v) {
		if (s != NMP_OK)
			break;
		if (strcmp(key, "__metadata__") == 0)
			continue;
		s = st_entry_parse(d, key, v, err);
		n_arrays++;
	}
	json_decref(hdr);
	return s == NMP_OK ? arrays_complete(d, n_arrays, err) : s;
}

static nmp_status open_npz(nmp_calib_data *d, nmp_error *err)
{
	NMP_TRY(map_file(d, ".npz", err));
	NMP_TRY(nmp_npz_read(d->map, d->map_size, d->path, &d->npz, err));
	for (size_t i = 0; i < d->npz.n; i++) {
		const nmp_npy *a = &d->npz.arrays[i];
		st_entry *e;
		NMP_TRY(bind_array(d, a->name, a->dtype, a->rank, a->dims, &e, err));
		e->data = a->data;
	}
	return arrays_complete(d, d->npz.n, err);
}

/*
 * Samples i .. i+count-1 as one batch along axis 0 (count 1: one sample as it
 * is).  A shared tensor's one sample is repeated count times.
 */
static nmp_status sample_arrays(nmp_calib_data *d, size_t i, size_t count, nmp_error *err)
{
	for (size_t k = 0; k < d->n_inputs; k++) {
		const st_entry *e = &d->entries[k];
		if (!e->present)
			continue;
		nmp_host_tensor *t = &d->t[d->n];
		*t = (nmp_host_tensor){ .dtype = e->dtype };
		uint64_t per = 1;
		for (int a = 1; a < e->rank; a++)
			per *= (uint64_t)e->dims[a];
		if (e->rank == 0) {
			t->rank = 0;
		} else if (e->batched) {
			t->rank = e->rank;
			memcpy(t->dims, e->dims, sizeof(int64_t) * (size_t)e->rank);
			t->dims[0] = (int64_t)count;
		} else {
			t->rank = e->rank - 1;
			memcpy(t->dims, e->dims + 1, sizeof(int64_t) * (size_t)t->rank);
			t->dims[0] *= (int64_t)count; /* consecutive samples are consecutive rows */
		}
		t->numel = per * count;
		const uint64_t esize = nmp_dtype_bits(e->dtype) / 8;
		const uint8_t *at = e->data + (e->shared ? 0 : (uint64_t)i * per * esize);
		/*
		 * ONNX Runtime reads inputs without writing them: the read-only mapping
		 * serves, unless a shared sample must repeat or the elements do not lie
		 * on their alignment (a .npz member starts wherever the zip put it).
		 */
		const size_t reps = e->shared ? count : 1;
		if (reps > 1 || (uintptr_t)at % esize != 0) {
			uint8_t *copy = malloc(per * count * esize);
			if (!copy)
				return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", d->path);
			for (size_t r = 0; r < reps; r++)
				memcpy(copy + r * per * (count / reps) * esize, at, per * (count / reps) * esize);
			d->owned[d->n] = copy;
			at = copy;
		}
		t->data = (void *)at;
		d->names[d->n++] = d->inputs[k].name;
	}
	return NMP_OK;
}

/* ---- the interface ---------------------------------------------------------------------------- */

nmp_status nmp_calib_data_open(const char *path, const nmp_model_input *inputs, size_t n_inputs, size_t max_samples,
			       nmp_calib_data **out, nmp_error *err)
{
	*out = NULL;
	nmp_calib_data *d = calloc(1, sizeof *d);
	if (!d || !(d->path = strdup(path))) {
		free(d);
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	}
	d->fd = -1;
	d->inputs = inputs;
	d->n_inputs = n_inputs;
	d->names = calloc(n_inputs + 1, sizeof *d->names);
	d->t = calloc(n_inputs + 1, sizeof *d->t);
	d->owned = calloc(n_inputs + 1, sizeof *d->owned);
	nmp_status s = NMP_OK;
	struct stat st;
	if (!d->names || !d->t || !d->owned)
		s = nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	else if (stat(path, &st) != 0)
		s = nmp_error_errno(err, errno, "cannot open calibration data", path);
	else if (S_ISDIR(st.st_mode))
		s = open_dirs(d, err);
	else if (strlen(path) > 12 && strcmp(path + strlen(path) - 12, ".safetensors") == 0)
		d->kind = DATA_ARRAYS, s = open_safetensors(d, err);
	else if (strlen(path) > 4 && strcmp(path + strlen(path) - 4, ".npz") == 0)
		d->kind = DATA_ARRAYS, s = open_npz(d, err);
	else
		s = nmp_error_set(err, NMP_ERR_USAGE,
				  "%s: calibration data must be a test-data directory, a .safetensors or a .npz file", path);
	if (s == NMP_OK && d->count == 0)
		s = nmp_error_set(err, NMP_ERR_USAGE, "%s: no samples", path);
	if (s != NMP_OK) {
		nmp_calib_data_free(&d);
		return s;
	}
	if (max_samples && d->count > max_samples)
		d->count = max_samples;
	*out = d;
	return NMP_OK;
}

static void drop_sample(nmp_calib_data *d)
{
	for (size_t i = 0; i < d->n; i++) {
		free(d->owned[i]);
		d->owned[i] = NULL;
	}
	d->n = 0;
}

void nmp_calib_data_free(nmp_calib_data **pd)
{
	nmp_calib_data *d = *pd;
	if (!d)
		return;
	if (d->owned)
		drop_sample(d);
	for (size_t i = 0; d->sets && i < d->n_sets; i++)
		free(d->sets[i]);
	free(d->sets);
	if (d->map)
		munmap((void *)d->map, d->map_size);
	if (d->fd >= 0)
		close(d->fd);
	free(d->entries);
	nmp_npz_free(&d->npz);
	free(d->names);
	free(d->t);
	free(d->owned);
	free(d->path);
	free(d);
	*pd = NULL;
}

size_t nmp_calib_data_count(const nmp_calib_data *d)
{
	return d->count;
}

nmp_status nmp_calib_data_sample(nmp_calib_data *d, size_t i, const char *const **names,
				 const nmp_host_tensor **tensors, size_t *n, nmp_error *err)
{
	NMP_ASSERT(i < d->count);
	drop_sample(d);
	nmp_status s = d->kind == DATA_ARRAYS ? sample_arrays(d, i, 1, err) : sample_dirs(d, i, err);
	*names = d->names;
	*tensors = d->t;
	*n = d->n;
	return s;
}

size_t nmp_calib_data_batch_limit(const nmp_calib_data *d, uint64_t max_bytes)
{
	if (d->kind != DATA_ARRAYS)
		return 1;
	uint64_t per_sample = 0;
	for (size_t k = 0; k < d->n_inputs; k++) {
		const st_entry *e = &d->entries[k];
		if (!e->present)
			continue;
		/* only an axis 0 the model leaves free can hold several samples */
		if (d->inputs[k].rank < 1 || d->inputs[k].dims[0] > 0 || (!e->batched && e->rank < 2))
			return 1;
		uint64_t per = nmp_dtype_bits(e->dtype) / 8;
		for (int a = 1; a < e->rank; a++)
			per *= (uint64_t)e->dims[a];
		per_sample += per;
	}
	uint64_t n = per_sample ? max_bytes / per_sample : 1;
	return n < 1 ? 1 : n > 64 ? 64 : (size_t)n;
}

nmp_status nmp_calib_data_batch(nmp_calib_data *d, size_t i, size_t count, const char *const **names,
				const nmp_host_tensor **tensors, size_t *n, nmp_error *err)
{
	NMP_ASSERT(count >= 1 && i + count <= d->count && (count == 1 || d->kind == DATA_ARRAYS));
	if (count == 1)
		return nmp_calib_data_sample(d, i, names, tensors, n, err);
	drop_sample(d);
	nmp_status s = sample_arrays(d, i, count, err);
	*names = d->names;
	*tensors = d->t;
	*n = d->n;
	return s;
}
