#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sorted.h"
#include "wire.h"

/* ---- TensorProto -> tensor index ------------------------------------- */

typedef struct tensor_index {
	const Onnx__TensorProto **keys;
	uint32_t *vals;
	size_t cap; /* power of two, at most 3/4 full */
} tensor_index;

static size_t ptr_hash(const void *p, size_t cap)
{
	uint64_t x = (uint64_t)(uintptr_t)p;
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return (size_t)x & (cap - 1);
}

static int index_build(nmp_model *m)
{
	tensor_index *ix = calloc(1, sizeof *ix);
	if (!ix)
		return 0;
	size_t n = m->n_tensors - m->n_compact; /* the compact ones have no proto */
	ix->cap = 16;
	while (ix->cap < n + n / 3 + 1)
		ix->cap *= 2;
	ix->keys = calloc(ix->cap, sizeof *ix->keys);
	ix->vals = malloc(ix->cap * sizeof *ix->vals);
	m->index = ix;
	if (!ix->keys || !ix->vals)
		return 0;
	for (size_t i = 0; i < n; i++) {
		size_t h = ptr_hash(m->tensors[i].proto, ix->cap);
		while (ix->keys[h])
			h = (h + 1) & (ix->cap - 1);
		ix->keys[h] = m->tensors[i].proto;
		ix->vals[h] = (uint32_t)i;
	}
	return 1;
}

static void index_free(void *p)
{
	tensor_index *ix = p;
	if (!ix)
		return;
	free(ix->keys);
	free(ix->vals);
	free(ix);
}

const nmp_tensor *nmp_model_tensor_of(const nmp_model *m, const Onnx__TensorProto *t)
{
	const tensor_index *ix = m->index;
	if (!ix || !t)
		return NULL;
	for (size_t h = ptr_hash(t, ix->cap); ix->keys[h]; h = (h + 1) & (ix->cap - 1))
		if (ix->keys[h] == t)
			return &m->tensors[ix->vals[h]];
	return NULL;
}

/* ---- graph -> its compact tensors ------------------------------------- */

typedef struct graph_kept {
	const Onnx__GraphProto *graph;
	size_t first, n;           /* in nmp_model.tensors */
} graph_kept;

typedef struct graph_table {
	graph_kept *at;            /* sorted by graph */
	size_t n, cap;
} graph_table;

static const graph_kept *graph_find(const nmp_model *m, const Onnx__GraphProto *g)
{
	const graph_table *gt = m->graphs;
	size_t lo = 0, hi = gt ? gt->n : 0;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if ((uintptr_t)gt->at[mid].graph < (uintptr_t)g)
			lo = mid + 1;
		else
			hi = mid;
	}
	return gt && lo < gt->n && gt->at[lo].graph == g ? &gt->at[lo] : NULL;
}

size_t nmp_model_n_initializers(const nmp_model *m, const Onnx__GraphProto *g)
{
	const graph_kept *k = graph_find(m, g);
	return g->n_initializer + (k ? k->n : 0);
}

const nmp_tensor *nmp_model_initializer(const nmp_model *m, const Onnx__GraphProto *g, size_t i)
{
	if (i < g->n_initializer)
		return nmp_model_tensor_of(m, g->initializer[i]);
	const graph_kept *k = graph_find(m, g);
	NMP_ASSERT(k && i - g->n_initializer < k->n);
	return &m->tensors[k->first + (i - g->n_initializer)];
}

static int by_graph(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)((const graph_kept *)a)->graph, y = (uintptr_t)((const graph_kept *)b)->graph;
	return x < y ? -1 : x > y;
}

/* ---- protobuf-c's allocations --------------------------------------- */

/*
 * A model's structure is millions of small pieces
 * (names, dims, node and tensor messages) that live exactly as long as the
 * model, so those up to ARENA_SMALL bytes are carved from large chunks, 8-byte
 * aligned, with no per-allocation header or rounding; larger ones (repeated
 * fields' arrays, protobuf-c's scratch space) come from malloc.  Freeing a
 * piece of a chunk does nothing: the chunks go with the model.  A failure is
 * noted, so that out of memory is not reported as a bad model.
 */
#define ARENA_SMALL 2048
#define ARENA_CHUNK (1u << 20)

typedef struct proto_arena {
	uint8_t **chunks;          /* sorted by address, each ARENA_CHUNK bytes */
	size_t n_chunks, cap_chunks;
	uint8_t *cur;              /* free space in the newest chunk */
	size_t left;
	bool oom;
	const uint8_t *map;        /* the model file: kept initializer records point into it */
	size_t map_size;
} proto_arena;

static bool arena_owns(const proto_arena *a, const void *p)
{
	size_t lo = 0, hi = a->n_chunks; /* the last chunk starting at or before p */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if ((uintptr_t)a->chunks[mid] <= (uintptr_t)p)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo > 0 && (uintptr_t)p - (uintptr_t)a->chunks[lo - 1] < ARENA_CHUNK;
}

static bool arena_add_chunk(proto_arena *a)
{
	if (a->n_chunks == a->cap_chunks) {
		size_t cap = a->cap_chunks ? 2 * a->cap_chunks : 64;
		uint8_t **c = realloc(a->chunks, cap * sizeof *c);
		if (!c)
			return false;
		a->chunks = c;
		a->cap_chunks = cap;
	}
	uint8_t *chunk = malloc(ARENA_CHUNK);
	if (!chunk)
		return false;
	size_t at = a->n_chunks;
	while (at > 0 && (uintptr_t)a->chunks[at - 1] > (uintptr_t)chunk)
		at--;
	memmove(&a->chunks[at + 1], &a->chunks[at], (a->n_chunks - at) * sizeof *a->chunks);
	a->chunks[at] = chunk;
	a->n_chunks++;
	a->cur = chunk;
	a->left = ARENA_CHUNK;
	return true;
}

static void *arena_alloc(void *data, size_t size)
{
	proto_arena *a = data;
	void *p = NULL;
	if (size > ARENA_SMALL) {
		p = malloc(size);
	} else {
		size = size ? (size + 7) & ~(size_t)7 : 8;
		if (size <= a->left || arena_add_chunk(a)) {
			p = a->cur;
			a->cur += size;
			a->left -= size;
		}
	}
	if (!p)
		a->oom = true;
	return p;
}

/* A piece that lives as long as the model, whatever its size up to a chunk. */
static void *arena_carve(proto_arena *a, size_t size)
{
	NMP_ASSERT(size <= ARENA_CHUNK);
	size = size ? (size + 7) & ~(size_t)7 : 8;
	if (size > a->left && !arena_add_chunk(a)) {
		a->oom = true;
		return NULL;
	}
	void *p = a->cur;
	a->cur += size;
	a->left -= size;
	return p;
}

static void arena_free(void *data, void *p)
{
	const proto_arena *a = data;
	if (p && !arena_owns(a, p) && !((const uint8_t *)p >= a->map && (const uint8_t *)p < a->map + a->map_size))
		free(p);
}

static void arena_destroy(proto_arena *a)
{
	if (!a)
		return;
	for (size_t i = 0; i < a->n_chunks; i++)
		free(a->chunks[i]);
	free(a->chunks);
	free(a);
}

/* ---- loading ---------------------------------------------------------- */

typedef struct load_ctx {
	nmp_model *m;
	nmp_skeleton skel;
	size_t cap_tensors;        /* counted before the array is allocated */
	size_t cap_runs;
	nmp_error *err;
} load_ctx;

static nmp_status nomem(load_ctx *c)
{
	return nmp_error_set(c->err, NMP_ERR_NOMEM, "%s: out of memory", c->m->path);
}

/*
 * Calls fn on every message of type `want` anywhere in msg, found through the
 * descriptors.  A TensorProto holds no tensor or graph, so the walk stops there.
 */
static nmp_status each_message(load_ctx *c, ProtobufCMessage *msg, const ProtobufCMessageDescriptor *want,
			       nmp_status (*fn)(load_ctx *, ProtobufCMessage *))
{
	const ProtobufCMessageDescriptor *d = msg->descriptor;

	if (d == want)
		NMP_TRY(fn(c, msg));
	if (d == &onnx__tensor_proto__descriptor)
		return NMP_OK;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		if (f->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		char *member = (char *)msg + f->offset;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(size_t *)((char *)msg + f->quantifier_offset);
			ProtobufCMessage **arr = *(ProtobufCMessage ***)member;
			for (size_t j = 0; j < n; j++)
				NMP_TRY(each_message(c, arr[j], want, fn));
		} else {
			ProtobufCMessage *sub = *(ProtobufCMessage **)member;
			if (sub)
				NMP_TRY(each_message(c, sub, want, fn));
		}
	}
	return NMP_OK;
}

static nmp_status count_tensor(load_ctx *c, ProtobufCMessage *t)
{
	(void)t;
	c->cap_tensors++;
	return NMP_OK;
}

static nmp_status add_tensor(load_ctx *c, ProtobufCMessage *t)
{
	c->m->tensors[c->m->n_tensors++] = (nmp_tensor){ .proto = (Onnx__TensorProto *)t };
	return NMP_OK;
}

static nmp_status restore_kept(load_ctx *c, ProtobufCMessage *g);

/*
 * Every TensorProto in walk order, then the compact records graph by graph,
 * in an array of exactly their number.
 */
static nmp_status collect_tensors(load_ctx *c)
{
	ProtobufCMessage *root = &c->m->proto->base;
	c->cap_tensors = 0;
	NMP_TRY(each_message(c, root, &onnx__tensor_proto__descriptor, count_tensor));
	c->cap_tensors += c->skel.n_compact;
	if (c->cap_tensors >= UINT32_MAX)
		return nmp_error_set(c->err, NMP_ERR_MODEL, "%s: %zu tensors, more than nmprune indexes",
				     c->m->path, c->cap_tensors);
	c->m->tensors = malloc((c->cap_tensors ? c->cap_tensors : 1) * sizeof *c->m->tensors);
	if (!c->m->tensors)
		return nomem(c);
	NMP_TRY(each_message(c, root, &onnx__tensor_proto__descriptor, add_tensor));
	if (c->skel.n_kept + c->skel.n_compact == 0)
		return NMP_OK;
	if (!(c->m->graphs = calloc(1, sizeof(graph_table))))
		return nomem(c);
	NMP_TRY(each_message(c, root, &onnx__graph_proto__descriptor, restore_kept));
	NMP_ASSERT(c->m->n_compact == c->skel.n_compact);
	graph_table *gt = c->m->graphs;
	qsort(gt->at, gt->n, sizeof *gt->at, by_graph);
	return NMP_OK;
}

static nmp_status resolve_fields(load_ctx *c, nmp_tensor *t, const nmp_span *raw, const nmp_span *packed,
				 size_t n_float, size_t n_double);

/*
 * The compact record whose tag is at `at`, in run `run` (wire.h): described
 * from its bytes and checked as a parsed one would be, through a TensorProto
 * on the stack that holds what the record says.
 */
static nmp_status add_compact(load_ctx *c, uint64_t at, uint32_t run)
{
	nmp_model *m = c->m;
	proto_arena *a = m->arena;
	const uint8_t *map = m->files[0].map, *p = map + at, *end = map + m->files[0].size;
	uint64_t tag, len;
	size_t n = nmp_varint_get(p, end, &tag);
	p += n;
	p += nmp_varint_get(p, end, &len);
	nmp_wire_tensor w;
	int compact = nmp_wire_tensor_read(p, (size_t)len, NULL, &w);
	NMP_ASSERT(compact && len < NMP_WIRE_KEEP_MAX); /* so its dims and name fit a chunk */
	int64_t *dims = w.n_dims ? arena_carve(a, w.n_dims * sizeof *dims) : NULL;
	char *name = arena_carve(a, w.name_len + 1);
	if ((w.n_dims && !dims) || !name)
		return nomem(c);
	nmp_wire_tensor_read(p, (size_t)len, dims, &w);
	memcpy(name, w.name, w.name_len);
	name[w.name_len] = '\0';

	Onnx__TensorProto tp = ONNX__TENSOR_PROTO__INIT;
	tp.name = name;
	tp.n_dims = w.n_dims;
	tp.dims = dims;
	tp.has_data_type = w.has_data_type;
	tp.data_type = w.data_type;
	nmp_span payload = { .offset = (uint64_t)(w.payload - map), .length = w.payload_len, .field = w.field };
	nmp_tensor *t = &m->tensors[m->n_tensors++];
	*t = (nmp_tensor){ .proto = &tp, .kept_run = run };
	m->n_compact++;
	nmp_status s = resolve_fields(c, t, w.field == 9 ? &payload : NULL, w.field == 4 || w.field == 10 ? &payload : NULL,
				      w.field == 4, w.field == 10);
	t->proto = NULL;
	return s;
}

/* Grows the array *p (of *cap elements of `elem` bytes) to hold `need`, doubling. */
static bool room_for(void *p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return true;
	size_t n = *cap ? 2 * *cap : 16;
	while (n < need)
		n *= 2;
	void *q = realloc(*(void **)p, n * elem);
	if (!q)
		return false;
	*(void **)p = q;
	*cap = n;
	return true;
}

/* The first of the compact records at or after file offset `at`. */
static size_t compact_from(const nmp_skeleton *sk, uint64_t at)
{
	return nmp_lower_bound_u64(sk->compact, sk->n_compact, at);
}

/*
 * A graph's markers of initializer records kept as bytes (wire.h) become one
 * unknown field each, which protobuf-c packs as its tag then its data: field
 * 5's tag, then the records' bytes after their first tag, straight from the
 * mapping.  Packed so, they would follow the graph's other fields; the
 * writers put them back where they were instead (nmp_model.runs, save.c).
 * The compact records among them become the graph's last tensors.
 */
static nmp_status restore_kept(load_ctx *c, ProtobufCMessage *g)
{
	nmp_model *m = c->m;
	size_t first = m->n_tensors;
	for (unsigned i = 0; i < g->n_unknown_fields; i++) {
		ProtobufCMessageUnknownField *u = &g->unknown_fields[i];
		if (u->tag != NMP_WIRE_MARKER_FIELD)
			continue;
		uint64_t idx, tag;
		const nmp_span *s;
		if (nmp_varint_get(u->data, u->data + u->len, &idx) == 0 || idx >= c->skel.n_spans ||
		    (s = &c->skel.spans[idx])->field != NMP_SPAN_KEPT_INITIALIZERS)
			return nmp_error_set(c->err, NMP_ERR_MODEL, "%s: corrupt initializer marker", m->path);
		const uint8_t *at = m->files[0].map + s->offset;
		size_t n = nmp_varint_get(at, at + s->length, &tag);
		NMP_ASSERT(n > 0 && tag == (5u << 3 | PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED));
		arena_free(m->arena, u->data);
		u->tag = 5;
		u->wire_type = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
		u->len = s->length - n;
		u->data = (uint8_t *)at + n;

		if (!room_for(&m->runs, &c->cap_runs, m->n_runs + 1, sizeof *m->runs))
			return nomem(c);
		m->runs[m->n_runs++] = (nmp_kept_run){ .graph = (const Onnx__GraphProto *)g, .offset = s->offset,
						       .length = s->length, .before = s->before };
		for (size_t k = compact_from(&c->skel, s->offset);
		     k < c->skel.n_compact && c->skel.compact[k] < s->offset + s->length; k++)
			NMP_TRY(add_compact(c, c->skel.compact[k], (uint32_t)m->n_runs));
	}
	if (m->n_tensors > first) {
		graph_table *gt = m->graphs;
		if (!room_for(&gt->at, &gt->cap, gt->n + 1, sizeof *gt->at))
			return nomem(c);
		gt->at[gt->n++] = (graph_kept){ .graph = (const Onnx__GraphProto *)g, .first = first,
						.n = m->n_tensors - first };
	}
	return NMP_OK;
}

static const char *tname(const nmp_tensor *t)
{
	return t->name[0] ? t->name : "(unnamed)";
}

static nmp_status bad_tensor(load_ctx *c, const nmp_tensor *t, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static nmp_status bad_tensor(load_ctx *c, const nmp_tensor *t, const char *fmt, ...)
{
	char why[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	return nmp_error_set(c->err, NMP_ERR_MODEL, "%s: tensor '%s': %s", c->m->path, tname(t), why);
}

static int parse_u64(const char *s, uint64_t *v)
{
	uint64_t r = 0;
	if (!*s)
		return 0;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return 0;
		if (__builtin_mul_overflow(r, 10, &r) || __builtin_add_overflow(r, (uint64_t)(*s - '0'), &r))
			return 0;
	}
	*v = r;
	return 1;
}

/* A location may only name a file below the model's directory. */
static nmp_status location_ok(load_ctx *c, const nmp_tensor *t, const char *loc)
{
	if (!loc[0])
		return bad_tensor(c, t, "external data location is empty");
	if (loc[0] == '/')
		return bad_tensor(c, t, "external data location '%s' is an absolute path", loc);
	for (const char *p = loc; *p;) {
		const char *q = strchr(p, '/');
		size_t n = q ? (size_t)(q - p) : strlen(p);
		if (n == 2 && p[0] == '.' && p[1] == '.')
			return bad_tensor(c, t, "external data location '%s' leaves the model directory", loc);
		p += n + (q != NULL);
	}
	return NMP_OK;
}

static nmp_status open_external(load_ctx *c, const nmp_tensor *t, const char *loc, unsigned *file)
{
	nmp_model *m = c->m;
	char joined[PATH_MAX], real[PATH_MAX], realdir[PATH_MAX];

	NMP_TRY(location_ok(c, t, loc));
	if ((size_t)snprintf(joined, sizeof joined, "%s/%s", m->dir, loc) >= sizeof joined)
		return bad_tensor(c, t, "external data location is too long");
	if (!realpath(m->dir, realdir))
		return nmp_error_errno(c->err, errno, "cannot resolve the model directory", m->dir);
	if (!realpath(joined, real))
		return nmp_error_set(c->err, NMP_ERR_IO,
				     "%s: tensor '%s': cannot open external data file '%s': %s",
				     m->path, tname(t), loc, strerror(errno));
	size_t dl = strlen(realdir);
	if (strncmp(real, realdir, dl) != 0 || (real[dl] != '/' && !(dl == 1 && realdir[0] == '/')))
		return bad_tensor(c, t, "external data location '%s' resolves outside the model directory", loc);

	int fd = open(real, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block: it is refused below */
	if (fd < 0)
		return nmp_error_set(c->err, NMP_ERR_IO, "%s: tensor '%s': cannot open external data file '%s': %s",
				     m->path, tname(t), loc, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return bad_tensor(c, t, "external data '%s' is not a regular file", loc);
	}
	for (size_t i = 1; i < m->n_files; i++) {
		if (m->files[i].dev == st.st_dev && m->files[i].ino == st.st_ino) {
			close(fd);
			*file = (unsigned)i;
			return NMP_OK;
		}
	}
	nmp_data_file *nf = realloc(m->files, (m->n_files + 1) * sizeof *nf);
	if (!nf) {
		close(fd);
		return nomem(c);
	}
	m->files = nf;
	nmp_data_file *df = &m->files[m->n_files];
	*df = (nmp_data_file){ .fd = fd, .size = (uint64_t)st.st_size, .dev = st.st_dev, .ino = st.st_ino };
	df->path = strdup(joined);
	if (!df->path) {
		close(fd);
		return nomem(c);
	}
	if (df->size > 0) {
		void *p = mmap(NULL, df->size, PROT_READ, MAP_SHARED, fd, 0);
		if (p == MAP_FAILED) {
			free(df->path);
			close(fd);
			return nmp_error_errno(c->err, errno, "cannot map external data", joined);
		}
		df->map = p;
	}
	*file = (unsigned)m->n_files++;
	return NMP_OK;
}

static nmp_status resolve_external(load_ctx *c, nmp_tensor *t)
{
	const Onnx__TensorProto *p = t->proto;
	const char *loc = NULL;
	uint64_t off = 0, len = 0;
	int has_len = 0;

	for (size_t i = 0; i < p->n_external_data; i++) {
		const Onnx__StringStringEntryProto *e = p->external_data[i];
		const char *k = e->key ? e->key : "", *v = e->value ? e->value : "";
		if (strcmp(k, "location") == 0) {
			loc = v;
		} else if (strcmp(k, "offset") == 0) {
			if (!parse_u64(v, &off))
				return bad_tensor(c, t, "external data offset '%s' is not a non-negative integer", v);
		} else if (strcmp(k, "length") == 0) {
			if (!parse_u64(v, &len))
				return bad_tensor(c, t, "external data length '%s' is not a non-negative integer", v);
			has_len = 1;
		}
	}
	if (!loc)
		return bad_tensor(c, t, "external data has no location");
	unsigned file;
	NMP_TRY(open_external(c, t, loc, &file));
	const nmp_data_file *df = &c->m->files[file];
	if (off > df->size)
		return bad_tensor(c, t, "external data offset %llu is beyond the end of '%s' (%llu bytes)",
				  (unsigned long long)off, loc, (unsigned long long)df->size);
	if (!has_len)
		len = df->size - off;
	if (len > df->size - off)
		return bad_tensor(c, t, "external data offset %llu + length %llu is beyond the end of '%s' (%llu bytes)",
				  (unsigned long long)off, (unsigned long long)len, loc,
				  (unsigned long long)df->size);
	if (t->nbytes && len != t->nbytes)
		return bad_tensor(c, t, "external data has %llu bytes, dims and type say %llu",
				  (unsigned long long)len, (unsigned long long)t->nbytes);
	t->storage = NMP_STORE_EXTERNAL;
	t->field = NMP_FIELD_RAW_DATA;
	t->file = file;
	t->offset = off;
	t->length = len;
	return NMP_OK;
}

/* Takes the span markers out of a tensor's unknown fields into `raw`/`fl`/`db` counts. */
static nmp_status take_markers(load_ctx *c, nmp_tensor *t, const nmp_span **raw,
			       const nmp_span **first_packed, size_t *n_float, size_t *n_double)
{
	ProtobufCMessage *msg = &t->proto->base;
	unsigned keep = 0;
	*raw = NULL;
	*first_packed = NULL;
	*n_float = *n_double = 0;
	for (unsigned i = 0; i < msg->n_unknown_fields; i++) {
		ProtobufCMessageUnknownField *u = &msg->unknown_fields[i];
		if (u->tag != NMP_WIRE_MARKER_FIELD) {
			msg->unknown_fields[keep++] = *u;
			continue;
		}
		uint64_t idx;
		if (nmp_varint_get(u->data, u->data + u->len, &idx) == 0 || idx >= c->skel.n_spans)
			return bad_tensor(c, t, "corrupt payload marker");
		const nmp_span *s = &c->skel.spans[idx];
		if (s->field == NMP_FIELD_RAW_DATA) {
			*raw = s; /* a repeated singular field: the last one wins */
		} else {
			if (!*first_packed)
				*first_packed = s;
			if (s->field == NMP_FIELD_FLOAT_DATA)
				(*n_float)++;
			else
				(*n_double)++;
		}
		arena_free(c->m->arena, u->data);
	}
	msg->n_unknown_fields = keep;
	if (keep == 0) {
		arena_free(c->m->arena, msg->unknown_fields);
		msg->unknown_fields = NULL;
	}
	return NMP_OK;
}

/*
 * A packed field may legally be split over several records.  Writers of ONNX
 * never do this for tensors; it is refused rather than joined on the heap.
 */
static nmp_status split_packed(load_ctx *c, nmp_tensor *t)
{
	return bad_tensor(c, t, "packed %s split over several fields is not supported",
			  t->field == NMP_FIELD_FLOAT_DATA ? "float_data" : "double_data");
}

static nmp_status resolve_tensor(load_ctx *c, nmp_tensor *t)
{
	const nmp_span *raw, *packed;
	size_t n_float, n_double;

	t->name = t->proto->name ? t->proto->name : "";
	NMP_TRY(take_markers(c, t, &raw, &packed, &n_float, &n_double));
	return resolve_fields(c, t, raw, packed, n_float, n_double);
}

/*
 * Describes a tensor from its proto's fields and its payload spans (raw, the
 * first packed one, and how many packed of each type), checking that they
 * agree with its dims and type.
 */
static nmp_status resolve_fields(load_ctx *c, nmp_tensor *t, const nmp_span *raw, const nmp_span *packed,
				 size_t n_float, size_t n_double)
{
	const Onnx__TensorProto *p = t->proto;
	t->name = p->name ? p->name : "";
	t->dtype = p->has_data_type ? p->data_type : NMP_DT_UNDEFINED;
	if (p->n_dims > UINT32_MAX)
		return bad_tensor(c, t, "%zu dims, more than nmprune handles", p->n_dims);
	t->dims = p->dims;
	t->n_dims = (uint32_t)p->n_dims;

	uint64_t numel = 1;
	for (size_t i = 0; i < p->n_dims; i++) {
		if (p->dims[i] < 0)
			return bad_tensor(c, t, "dimension %zu is negative (%lld)", i, (long long)p->dims[i]);
		if (__builtin_mul_overflow(numel, (uint64_t)p->dims[i], &numel) || numel > (UINT64_MAX >> 8))
			return bad_tensor(c, t, "the product of its dims overflows");
	}
	t->numel = numel;
	unsigned bits = nmp_dtype_bits(t->dtype);
	t->nbytes = (numel * bits + 7) / 8;

	if (p->has_data_location && p->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
		if (raw || packed || p->n_float_data || p->n_int32_data || p->n_int64_data ||
		    p->n_double_data || p->n_uint64_data || p->n_string_data)
			return bad_tensor(c, t, "external tensor also has inline data");
		return resolve_external(c, t);
	}

	/* Which field holds the payload: exactly one may. */
	struct {
		enum nmp_field field;
		uint64_t count;
		int present;
	} f[] = {
		{ NMP_FIELD_RAW_DATA, raw ? raw->length : 0, raw != NULL },
		{ NMP_FIELD_FLOAT_DATA, p->n_float_data, p->n_float_data || n_float },
		{ NMP_FIELD_DOUBLE_DATA, p->n_double_data, p->n_double_data || n_double },
		{ NMP_FIELD_INT32_DATA, p->n_int32_data, p->n_int32_data > 0 },
		{ NMP_FIELD_INT64_DATA, p->n_int64_data, p->n_int64_data > 0 },
		{ NMP_FIELD_UINT64_DATA, p->n_uint64_data, p->n_uint64_data > 0 },
		{ NMP_FIELD_STRING_DATA, p->n_string_data, p->n_string_data > 0 },
	};
	int which = -1;
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
		if (!f[i].present)
			continue;
		if (which >= 0 && f[i].count + f[which].count > 0)
			return bad_tensor(c, t, "payload stored in two fields (%d and %d)", f[which].field, f[i].field);
		if (which < 0 || f[i].count > 0)
			which = (int)i;
	}
	if (which < 0) {
		if (numel > 0 && t->dtype != NMP_DT_UNDEFINED)
			return bad_tensor(c, t, "has no data but dims say %llu elements", (unsigned long long)numel);
		t->storage = NMP_STORE_NONE;
		return NMP_OK;
	}
	t->field = f[which].field;

	if (t->field == NMP_FIELD_RAW_DATA) {
		if (bits == 0)
			return bad_tensor(c, t, "raw_data is not allowed for data type %s", nmp_dtype_name(t->dtype));
		if (raw->length != t->nbytes)
			return bad_tensor(c, t, "raw_data has %llu bytes, dims and type say %llu",
					  (unsigned long long)raw->length, (unsigned long long)t->nbytes);
		t->storage = NMP_STORE_FILE;
		t->offset = raw->offset;
		t->length = raw->length;
		return NMP_OK;
	}

	uint64_t want;
	if (!nmp_dtype_field_count(t->dtype, t->field, numel, &want))
		return bad_tensor(c, t, "field %d cannot hold data type %s", t->field, nmp_dtype_name(t->dtype));

	if (t->field == NMP_FIELD_FLOAT_DATA || t->field == NMP_FIELD_DOUBLE_DATA) {
		size_t n_spans = t->field == NMP_FIELD_FLOAT_DATA ? n_float : n_double;
		size_t esz = t->field == NMP_FIELD_FLOAT_DATA ? 4 : 8;
		size_t in_msg = t->field == NMP_FIELD_FLOAT_DATA ? p->n_float_data : p->n_double_data;
		if (n_spans > 1 || (n_spans == 1 && in_msg > 0))
			return split_packed(c, t);
		if (n_spans == 1) {
			if (packed->length % esz != 0)
				return bad_tensor(c, t, "packed data length %llu is not a multiple of %zu",
						  (unsigned long long)packed->length, esz);
			if (packed->length / esz != want)
				return bad_tensor(c, t, "has %llu values, dims say %llu",
						  (unsigned long long)(packed->length / esz), (unsigned long long)want);
			t->storage = NMP_STORE_FILE;
			t->offset = packed->offset;
			t->length = packed->length;
			return NMP_OK;
		}
	}
	if (f[which].count != want)
		return bad_tensor(c, t, "has %llu values, dims say %llu",
				  (unsigned long long)f[which].count, (unsigned long long)want);
	t->storage = t->field == NMP_FIELD_STRING_DATA ? NMP_STORE_NONE : NMP_STORE_HEAP;
	return NMP_OK;
}

static nmp_status check_model_header(load_ctx *c)
{
	const Onnx__ModelProto *p = c->m->proto;
	if (!p->has_ir_version || !p->graph)
		return nmp_error_set(c->err, NMP_ERR_MODEL, "%s: not an ONNX model (no %s)", c->m->path,
				     !p->has_ir_version ? "ir_version" : "graph");
	for (size_t i = 0; i < p->n_metadata_props; i++) {
		const char *k = p->metadata_props[i]->key;
		if (k && strncmp(k, "nmprune.", 8) == 0)
			c->m->has_own_metadata = true;
	}
	return NMP_OK;
}

/*
 * The names the IR requires and every pass looks things up by: each graph
 * input, output and value_info names its value, each node has an op type,
 * each attribute a name.  A model without one is bad, in any subgraph.
 */
static nmp_status check_required_names(load_ctx *c, const Onnx__GraphProto *g)
{
	const char *gname = g->name && g->name[0] ? g->name : "(unnamed graph)";
	static const char *const what[] = { "input", "output", "value_info" };
	Onnx__ValueInfoProto **lists[] = { g->input, g->output, g->value_info };
	size_t counts[] = { g->n_input, g->n_output, g->n_value_info };
	for (int l = 0; l < 3; l++)
		for (size_t i = 0; i < counts[l]; i++)
			if (!lists[l][i]->name || !lists[l][i]->name[0])
				return nmp_error_set(c->err, NMP_ERR_MODEL, "%s: graph '%s': %s %zu has no name",
						     c->m->path, gname, what[l], i);
	for (size_t i = 0; i < g->n_node; i++) {
		const Onnx__NodeProto *n = g->node[i];
		const char *nname = n->name && n->name[0] ? n->name : "(unnamed)";
		if (!n->op_type || !n->op_type[0])
			return nmp_error_set(c->err, NMP_ERR_MODEL, "%s: graph '%s': node %zu '%s' has no op_type",
					     c->m->path, gname, i, nname);
		for (size_t a = 0; a < n->n_attribute; a++) {
			const Onnx__AttributeProto *at = n->attribute[a];
			if (!at->name || !at->name[0])
				return nmp_error_set(c->err, NMP_ERR_MODEL,
						     "%s: graph '%s': node %zu '%s': attribute %zu has no name",
						     c->m->path, gname, i, nname, a);
			if (at->g)
				NMP_TRY(check_required_names(c, at->g));
			for (size_t k = 0; k < at->n_graphs; k++)
				NMP_TRY(check_required_names(c, at->graphs[k]));
		}
	}
	return NMP_OK;
}

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		return strdup(".");
	if (slash == path)
		return strdup("/");
	return strndup(path, (size_t)(slash - path));
}

nmp_status nmp_model_load(const char *path, nmp_model **out, nmp_error *err)
{
	load_ctx c = { .err = err };
	nmp_status s = NMP_OK;
	nmp_model *m = calloc(1, sizeof *m);

	*out = NULL;
	if (!m)
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", path);
	c.m = m;
	m->path = strdup(path);
	m->dir = dir_of(path);
	m->files = calloc(1, sizeof *m->files);
	if (!m->path || !m->dir || !m->files) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", path);
		goto fail;
	}
	m->n_files = 1;
	m->files[0].fd = -1;
	m->files[0].path = strdup(path);

	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block: it is refused below */
	if (fd < 0) {
		s = nmp_error_errno(err, errno, "cannot open", path);
		goto fail;
	}
	m->files[0].fd = fd;
	struct stat st;
	if (fstat(fd, &st) != 0) {
		s = nmp_error_errno(err, errno, "cannot stat", path);
		goto fail;
	}
	if (S_ISDIR(st.st_mode)) {
		s = nmp_error_set(err, NMP_ERR_IO, "%s: is a directory, not a model file", path);
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		s = nmp_error_set(err, NMP_ERR_IO, "%s: not a regular file", path);
		goto fail;
	}
	if (st.st_size == 0) {
		s = nmp_error_set(err, NMP_ERR_MODEL, "%s: empty file, not an ONNX model", path);
		goto fail;
	}
	m->files[0].size = (uint64_t)st.st_size;
	m->files[0].dev = st.st_dev;
	m->files[0].ino = st.st_ino;
	void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		s = nmp_error_errno(err, errno, "cannot map", path);
		goto fail;
	}
	m->files[0].map = map;

	s = nmp_wire_skeleton(map, (size_t)st.st_size, &onnx__model_proto__descriptor,
			      &onnx__tensor_proto__descriptor,
			      NMP_WIRE_FILE_MAPPING | NMP_WIRE_KEEP_UNREAD | NMP_WIRE_KEEP_COMPACT,
			      path, &c.skel, err);
	if (s != NMP_OK)
		goto fail;
	if (!(m->arena = calloc(1, sizeof(proto_arena)))) {
		s = nomem(&c);
		goto fail;
	}
	((proto_arena *)m->arena)->map = map;
	((proto_arena *)m->arena)->map_size = (size_t)st.st_size;
	m->n_kept = c.skel.n_kept;
	ProtobufCAllocator alloc = { .alloc = arena_alloc, .free = arena_free, .allocator_data = m->arena };
	m->proto = onnx__model_proto__unpack(&alloc, c.skel.len, c.skel.data);
	free(c.skel.data);
	c.skel.data = NULL;
	if (!m->proto) {
		/* protobuf-c says NULL for both: which it was decides between exit 4 and exit 3. */
		s = ((proto_arena *)m->arena)->oom ? nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory while parsing the model", path)
			: nmp_error_set(err, NMP_ERR_MODEL, "%s: not a valid ONNX model (protobuf parse failed)", path);
		goto fail;
	}
	s = check_model_header(&c);
	if (s == NMP_OK)
		s = check_required_names(&c, m->proto->graph);
	if (s == NMP_OK)
		s = collect_tensors(&c);
	if (s != NMP_OK)
		goto fail;
	for (size_t i = 0; i < m->n_tensors - m->n_compact && s == NMP_OK; i++)
		s = resolve_tensor(&c, &m->tensors[i]);
	if (s != NMP_OK)
		goto fail;
	if (!index_build(m)) {
		s = nomem(&c);
		goto fail;
	}
	nmp_skeleton_free(&c.skel);
	*out = m;
	return NMP_OK;
fail:
	nmp_skeleton_free(&c.skel);
	nmp_model_free(&m);
	return s;
}

void nmp_model_free(nmp_model **pm)
{
	nmp_model *m = *pm;
	if (!m)
		return;
	if (m->proto)
		onnx__model_proto__free_unpacked(m->proto, &(ProtobufCAllocator){ .alloc = arena_alloc,
										     .free = arena_free,
										     .allocator_data = m->arena });
	arena_destroy(m->arena);
	for (size_t i = 0; i < m->n_files; i++) {
		nmp_data_file *f = &m->files[i];
		if (f->map)
			munmap((void *)f->map, f->size);
		if (f->fd >= 0)
			close(f->fd);
		free(f->path);
	}
	free(m->files);
	free(m->tensors);
	free(m->runs);
	if (m->graphs)
		free(((graph_table *)m->graphs)->at);
	free(m->graphs);
	index_free(m->index);
	free(m->path);
	free(m->dir);
	free(m);
	*pm = NULL;
}

/* ---- payload views ---------------------------------------------------- */

static int int32_signed(int32_t dtype)
{
	return dtype == NMP_DT_INT8 || dtype == NMP_DT_INT16 || dtype == NMP_DT_INT32;
}

bool nmp_heap_to_raw(const nmp_tensor *t, void *dst)
{
	const Onnx__TensorProto *p = t->proto;
	unsigned bits = nmp_dtype_bits(t->dtype);
	switch (t->field) {
	case NMP_FIELD_FLOAT_DATA:
		memcpy(dst, p->float_data, p->n_float_data * sizeof(float));
		return true;
	case NMP_FIELD_DOUBLE_DATA:
		memcpy(dst, p->double_data, p->n_double_data * sizeof(double));
		return true;
	case NMP_FIELD_INT64_DATA:
		memcpy(dst, p->int64_data, p->n_int64_data * sizeof(int64_t));
		return true;
	case NMP_FIELD_UINT64_DATA:
		if (t->dtype == NMP_DT_UINT64) {
			memcpy(dst, p->uint64_data, p->n_uint64_data * sizeof(uint64_t));
		} else {
			for (size_t i = 0; i < p->n_uint64_data; i++) {
				uint32_t v = (uint32_t)p->uint64_data[i];
				memcpy((uint8_t *)dst + 4 * i, &v, 4);
			}
		}
		return true;
	case NMP_FIELD_INT32_DATA:
		for (size_t i = 0; i < p->n_int32_data; i++) {
			uint32_t v = (uint32_t)p->int32_data[i];
			if (bits == 32) {
				memcpy((uint8_t *)dst + 4 * i, &v, 4);
			} else if (bits == 16) {
				uint16_t h = (uint16_t)v;
				memcpy((uint8_t *)dst + 2 * i, &h, 2);
			} else if (bits == 8 || bits == 4 || bits == 2) {
				((uint8_t *)dst)[i] = (uint8_t)v;
			} else {
				return false;
			}
		}
		return true;
	default:
		return false;
	}
}

void nmp_raw_to_heap(const nmp_tensor *t, const void *src)
{
	Onnx__TensorProto *p = t->proto;
	unsigned bits = nmp_dtype_bits(t->dtype);
	int sign = int32_signed(t->dtype);
	switch (t->field) {
	case NMP_FIELD_FLOAT_DATA:
		memcpy(p->float_data, src, p->n_float_data * sizeof(float));
		return;
	case NMP_FIELD_DOUBLE_DATA:
		memcpy(p->double_data, src, p->n_double_data * sizeof(double));
		return;
	case NMP_FIELD_INT64_DATA:
		memcpy(p->int64_data, src, p->n_int64_data * sizeof(int64_t));
		return;
	case NMP_FIELD_INT32_DATA:
		/* Only changed entries are rewritten, so untouched ones keep their encoding. */
		for (size_t i = 0; i < p->n_int32_data; i++) {
			int32_t v;
			if (bits == 32) {
				memcpy(&v, (const uint8_t *)src + 4 * i, 4);
			} else if (bits == 16) {
				uint16_t h;
				memcpy(&h, (const uint8_t *)src + 2 * i, 2);
				if (h == (uint16_t)p->int32_data[i])
					continue;
				v = sign ? (int32_t)(int16_t)h : (int32_t)h;
			} else {
				uint8_t b = ((const uint8_t *)src)[i];
				if (b == (uint8_t)p->int32_data[i])
					continue;
				v = sign ? (int32_t)(int8_t)b : (int32_t)b;
			}
			p->int32_data[i] = v;
		}
		return;
	default:
		return;
	}
}

nmp_status nmp_model_view(const nmp_model *m, const nmp_tensor *t, nmp_view *v, nmp_error *err)
{
	memset(v, 0, sizeof *v);
	switch (t->storage) {
	case NMP_STORE_NONE:
		return NMP_OK;
	case NMP_STORE_FILE:
	case NMP_STORE_EXTERNAL:
		v->data = m->files[t->file].map + t->offset;
		v->length = t->length;
		return NMP_OK;
	case NMP_STORE_HEAP:
		v->owned = malloc(t->nbytes ? t->nbytes : 1);
		if (!v->owned)
			return nmp_error_set(err, NMP_ERR_NOMEM, "%s: tensor '%s': out of memory", m->path, t->name);
		if (!nmp_heap_to_raw(t, v->owned)) {
			free(v->owned);
			v->owned = NULL;
			return nmp_error_set(err, NMP_ERR_MODEL, "%s: tensor '%s': data type %s has no raw view",
					     m->path, t->name, nmp_dtype_name(t->dtype));
		}
		v->data = v->owned;
		v->length = t->nbytes;
		return NMP_OK;
	}
	return NMP_OK;
}

void nmp_drop_pages(const void *data, uint64_t len)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = ((uintptr_t)data + pg - 1) & ~(pg - 1), b = ((uintptr_t)data + len) & ~(pg - 1);
	if (b > a)
		madvise((void *)a, b - a, MADV_DONTNEED);
}

void nmp_view_release(nmp_view *v)
{
	if (v->owned)
		free(v->owned);
	else if (v->data && v->length >= (1u << 20))
		nmp_drop_pages(v->data, v->length); /* memory tracks one tensor at a time */
	memset(v, 0, sizeof *v);
}
