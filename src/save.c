/*
 * save.c — writing a model: atomically, faithfully, and copying bulk bytes once.
 *
 * Two paths produce the output:
 *  - the copy path: the bytes between payloads are copied in the kernel
 *    (copy_file_range), each payload to mask is written once by the visitor
 *    (from the input mapping into a staging buffer, then pwrite), and the
 *    metadata entries are appended to the end of the file (a repeated field
 *    may be appended to a protobuf message);
 *  - the general path, when the bytes must move (external data, a changed
 *    encoding, metadata to replace): protobuf-c packs the model into a
 *    streaming sink, with each payload pointing at its bytes in the input
 *    mapping, so those bytes go from the input to the output file once; the
 *    payloads to mask are then masked in place through windows on the output.
 * Either way every file is written under a temporary name beside its target,
 * fsync'd, and renamed: a failure leaves no partial output and never touches
 * the input.
 */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "pending.h"
#include "wire.h"

#define EXT_ALIGN_SMALL 64
#define EXT_ALIGN_LARGE 4096
#define SINK_BUF (1u << 20)
#define META_MARGIN (16u << 20)

typedef struct out_file {
	char path[PATH_MAX];   /* final name */
	char tmp[PATH_MAX];    /* temporary name beside it */
	int fd;
	uint64_t size;
	uint64_t kicked;       /* bytes whose writeback has been started */
	int cleanup;           /* slot in the signal cleanup table, -1 none */
} out_file;

/* ---- files ------------------------------------------------------------- */

static nmp_status out_open(out_file *f, const char *path, mode_t mode, nmp_error *err)
{
	f->size = 0;
	f->kicked = 0;
	f->cleanup = -1;
	f->tmp[0] = '\0';
	if (snprintf(f->path, sizeof f->path, "%s", path) >= (int)sizeof f->path)
		return nmp_error_set(err, NMP_ERR_IO, "%s: path too long", path);
	f->fd = nmp_temp_create(path, mode, f->tmp, sizeof f->tmp, &f->cleanup);
	if (f->fd < 0) {
		f->tmp[0] = '\0';
		return nmp_error_errno(err, errno, "cannot create output", path);
	}
	return NMP_OK;
}

/* Removes an uncommitted temporary file. */
static void out_discard(out_file *f)
{
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	if (f->tmp[0])
		unlink(f->tmp);
	f->tmp[0] = '\0';
	nmp_cleanup_forget(f->cleanup);
	f->cleanup = -1;
}

static nmp_status write_all(out_file *f, const void *buf, size_t len, nmp_error *err)
{
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = pwrite(f->fd, p, len, (off_t)f->size);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return nmp_error_errno(err, errno, "cannot write", f->path);
		}
		if (n == 0)
			return nmp_error_set(err, NMP_ERR_IO, "%s: cannot write: no progress", f->path);
		p += n;
		len -= (size_t)n;
		f->size += (uint64_t)n;
	}
	return NMP_OK;
}

/*
 * Starts writeback of what was written since the last call, without waiting,
 * so the final fsync finds little left to do.  Called only for bytes that
 * will not change again, so each byte reaches the disk once.
 */
static void kick_writeback(out_file *f, uint64_t min_bytes)
{
	if (f->size - f->kicked < min_bytes)
		return;
	sync_file_range(f->fd, (off64_t)f->kicked, (off64_t)(f->size - f->kicked), SYNC_FILE_RANGE_WRITE);
	f->kicked = f->size;
}

/* Appends `len` bytes of `in_fd` from `off`, in the kernel when it can. */
static nmp_status copy_range(out_file *f, int in_fd, uint64_t off, uint64_t len, const char *in_path,
			     nmp_error *err)
{
	while (len > 0) {
		loff_t io = (loff_t)off, oo = (loff_t)f->size;
		size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
		ssize_t n = copy_file_range(in_fd, &io, f->fd, &oo, chunk, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP))
			break; /* fall back to read and write below */
		if (n < 0)
			return nmp_error_errno(err, errno, "cannot write", f->path);
		if (n == 0)
			return nmp_error_set(err, NMP_ERR_IO, "%s: unexpected end of file", in_path);
		off += (uint64_t)n;
		len -= (uint64_t)n;
		f->size += (uint64_t)n;
	}
	if (len == 0)
		return NMP_OK;

	size_t cap = 1u << 20;
	uint8_t *buf = malloc(cap);
	if (!buf)
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", f->path);
	nmp_status s = NMP_OK;
	while (len > 0 && s == NMP_OK) {
		size_t want = len > cap ? cap : (size_t)len;
		ssize_t n = pread(in_fd, buf, want, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			s = n < 0 ? nmp_error_errno(err, errno, "cannot read", in_path)
				  : nmp_error_set(err, NMP_ERR_IO, "%s: unexpected end of file", in_path);
			break;
		}
		s = write_all(f, buf, (size_t)n, err);
		off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	free(buf);
	return s;
}

static nmp_status fsync_dir_of(const char *path, nmp_error *err)
{
	char buf[PATH_MAX];
	snprintf(buf, sizeof buf, "%s", path);
	int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return NMP_OK; /* the rename is done; a directory we cannot open cannot be synced */
	int r = fsync(fd);
	int e = errno;
	close(fd);
	if (r != 0 && e != EINVAL && e != EROFS)
		return nmp_error_errno(err, e, "cannot sync directory of", path);
	return NMP_OK;
}

/* ---- payload windows ---------------------------------------------------- */

/* Hands the visitor a window on bytes already in the output, to change in place. */
static nmp_status visit_window(const nmp_save_opts *o, size_t tensor, out_file *f, uint64_t off,
			       uint64_t len, nmp_error *err)
{
	if (len == 0)
		return o->on_payload(o->ctx, tensor, NULL, NULL, 0, err);
	uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE);
	uint64_t base = off & ~(pg - 1);
	size_t span = (size_t)(len + (off - base));
	void *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_SHARED, f->fd, (off_t)base);
	if (p == MAP_FAILED)
		return nmp_error_errno(err, errno, "cannot map output", f->path);
	nmp_status s = o->on_payload(o->ctx, tensor, (uint8_t *)p + (off - base), NULL, len, err);
	munmap(p, span);
	return s;
}

/* Heap payloads are visited in a raw-layout copy and written back. */
static nmp_status visit_heap(const nmp_model *m, const nmp_save_opts *o, size_t ti, nmp_error *err)
{
	const nmp_tensor *t = &m->tensors[ti];
	void *buf = malloc(t->nbytes ? t->nbytes : 1);
	if (!buf)
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: tensor '%s': out of memory", m->path, t->name);
	if (!nmp_heap_to_raw(t, buf)) {
		free(buf);
		return nmp_error_set(err, NMP_ERR_MODEL, "%s: tensor '%s': data type %s cannot be rewritten",
				     m->path, t->name, nmp_dtype_name(t->dtype));
	}
	nmp_status s = o->on_payload(o->ctx, ti, buf, NULL, t->nbytes, err);
	if (s == NMP_OK)
		nmp_raw_to_heap(t, buf);
	free(buf);
	return s;
}

/* ---- metadata ------------------------------------------------------------ */

static uint64_t proto_limit(const nmp_save_opts *o)
{
	return o->proto_limit ? o->proto_limit : NMP_PROTO_LIMIT;
}

static nmp_status append_metadata(out_file *f, const nmp_kv *kv, size_t n, uint64_t limit,
				  nmp_error *err)
{
	for (size_t i = 0; i < n; i++) {
		Onnx__StringStringEntryProto e = ONNX__STRING_STRING_ENTRY_PROTO__INIT;
		e.key = (char *)kv[i].key;
		e.value = (char *)kv[i].value;
		size_t len = onnx__string_string_entry_proto__get_packed_size(&e);
		uint8_t *buf = malloc(len + 16);
		if (!buf)
			return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", f->path);
		size_t h = nmp_varint_put(buf, 14u << 3 | 2); /* ModelProto.metadata_props */
		h += nmp_varint_put(buf + h, len);
		onnx__string_string_entry_proto__pack(&e, buf + h);
		nmp_status s = NMP_OK;
		if (f->size + h + len > limit)
			s = nmp_error_set(err, NMP_ERR_IO, "%s: output would pass the 2 GiB protobuf limit", f->path);
		else
			s = write_all(f, buf, h + len, err);
		free(buf);
		NMP_TRY(s);
	}
	return NMP_OK;
}

static nmp_status finish_metadata(out_file *onnx, const nmp_save_opts *o, nmp_error *err)
{
	const nmp_kv *kv = NULL;
	size_t n = 0;
	if (!o->on_metadata || o->n_visit == 0)
		return NMP_OK;
	NMP_TRY(o->on_metadata(o->ctx, &kv, &n, err));
	return append_metadata(onnx, kv, n, proto_limit(o), err);
}

/* ---- the general path ------------------------------------------------------ */

/*
 * Where chosen input bytes landed in the output: a table from a pointer into
 * the input mapping (a payload's first byte, or the first of a run of kept
 * initializer records) to the output offset where the writer appended it.
 */
typedef struct landing {
	const void **keys;
	uint64_t *offsets;
	size_t cap;            /* power of two, at most half full */
} landing;

static bool landing_init(landing *l, size_t n)
{
	l->cap = 16;
	while (l->cap < 2 * (n + 1))
		l->cap *= 2;
	l->keys = calloc(l->cap, sizeof *l->keys);
	l->offsets = calloc(l->cap, sizeof *l->offsets);
	return l->keys && l->offsets;
}

static void landing_free(landing *l)
{
	free(l->keys);
	free(l->offsets);
}

static size_t landing_slot(const landing *l, const void *p)
{
	uint64_t x = (uint64_t)(uintptr_t)p * 0x9e3779b97f4a7c15ull;
	size_t h = (size_t)(x >> 17) & (l->cap - 1);
	while (l->keys[h] && l->keys[h] != p)
		h = (h + 1) & (l->cap - 1);
	return h;
}

static void landing_want(landing *l, const void *p)
{
	l->keys[landing_slot(l, p)] = p;
}

/* Called with each append: notes where a wanted pointer lands. */
static void landing_note(landing *l, const void *p, uint64_t at)
{
	size_t h = landing_slot(l, p);
	if (l->keys[h] == p)
		l->offsets[h] = at;
}

static uint64_t landing_at(const landing *l, const void *p)
{
	size_t h = landing_slot(l, p);
	NMP_ASSERT(l->keys[h] == p);
	return l->offsets[h];
}

/* ---- kept initializer records, back in place ----------------------------- */

/*
 * A message type without fields.  A record kept as bytes is packed as one of
 * these among its graph's initializers, with one unknown field: the record's
 * first field's tag, then the rest of its bytes from the mapping.  protobuf-c
 * writes the element's tag and length, so the record comes out as it was
 * (wire.h keeps only records whose encodings are the ones it writes), where
 * it was.
 */
static const ProtobufCMessageDescriptor kept_record_descriptor = {
	.magic = PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
	.name = "nmprune.KeptRecord",
	.short_name = "KeptRecord",
	.c_name = "NmpKeptRecord",
	.package_name = "nmprune",
	.sizeof_message = sizeof(ProtobufCMessage),
};

typedef struct kept_record {
	ProtobufCMessage base;
	ProtobufCMessageUnknownField field;
} kept_record;

/* A graph's fields as they were, while its records stand among its initializers. */
typedef struct graph_fields {
	Onnx__GraphProto *g;
	size_t n_initializer;
	Onnx__TensorProto **initializer;
	unsigned n_unknown_fields;
	ProtobufCMessageUnknownField *unknown_fields;
} graph_fields;

typedef struct kept_swap {
	graph_fields *saved;
	size_t n_saved;
	kept_record *records;
	Onnx__TensorProto **arrays;            /* the graphs' new initializer arrays, back to back */
	ProtobufCMessageUnknownField *unknowns; /* the graphs' other unknown fields, back to back */
} kept_swap;

/* The record at p (its tag): the unknown field that stands for it, and where the next begins. */
static const uint8_t *kept_record_at(const uint8_t *p, const uint8_t *end, ProtobufCMessageUnknownField *f,
				     unsigned *n_fields)
{
	uint64_t len, tag;
	p += 1; /* the tag of GraphProto.initializer, one byte */
	p += nmp_varint_get(p, end, &len);
	*n_fields = 0;
	if (len > 0) {
		size_t n = nmp_varint_get(p, p + len, &tag);
		NMP_ASSERT(n > 0);
		*f = (ProtobufCMessageUnknownField){ .tag = (uint32_t)(tag >> 3),
						     .wire_type = (ProtobufCWireType)(tag & 7),
						     .len = (size_t)len - n, .data = (uint8_t *)p + n };
		*n_fields = 1;
	}
	return p + len;
}

/*
 * The pointer the writer appends first when it packs a compact record's run
 * (the run itself in the main graph, else the data of its first non-empty
 * record), and the distance from there to the tensor's payload: the run's
 * records come out back to back, as they were.
 */
static const uint8_t *landing_key(const nmp_model *m, const nmp_tensor *t, uint64_t *delta)
{
	const uint8_t *map = m->files[0].map;
	*delta = 0;
	if (!t->kept_run)
		return map + t->offset;
	const nmp_kept_run *r = &m->runs[t->kept_run - 1];
	NMP_ASSERT(t->offset >= r->offset && t->offset + t->length <= r->offset + r->length);
	if (r->graph == m->proto->graph) { /* the main graph's runs are appended whole (pack_model) */
		*delta = t->offset - r->offset;
		return map + r->offset;
	}
	const uint8_t *p = map + r->offset, *end = map + r->offset + r->length;
	for (;;) {
		ProtobufCMessageUnknownField f;
		unsigned n;
		p = kept_record_at(p, end, &f, &n);
		if (n) {
			*delta = t->offset - (uint64_t)(f.data - map);
			return f.data;
		}
		NMP_ASSERT(p < end);
	}
}

static void kept_restore(kept_swap *ks)
{
	for (size_t i = 0; i < ks->n_saved; i++) {
		graph_fields *sf = &ks->saved[i];
		sf->g->n_initializer = sf->n_initializer;
		sf->g->initializer = sf->initializer;
		sf->g->base.n_unknown_fields = sf->n_unknown_fields;
		sf->g->base.unknown_fields = sf->unknown_fields;
	}
	free(ks->saved);
	free(ks->records);
	free(ks->arrays);
	free(ks->unknowns);
	memset(ks, 0, sizeof *ks);
}

/* How many records a run holds. */
static size_t count_records(const nmp_model *m, const nmp_kept_run *r)
{
	size_t n = 0;
	for (const uint8_t *p = m->files[0].map + r->offset, *end = p + r->length; p < end; n++) {
		ProtobufCMessageUnknownField f;
		unsigned k;
		p = kept_record_at(p, end, &f, &k);
	}
	return n;
}

/*
 * Puts every run of kept records of the subgraphs back among its graph's
 * initializers, where it was in the file, for packing (the main graph's are
 * written whole by pack_model); kept_restore undoes it.  False when out of
 * memory (nothing changed).
 */
static bool kept_swap_in(nmp_model *m, kept_swap *ks)
{
	memset(ks, 0, sizeof *ks);
	const Onnx__GraphProto *main_graph = m->proto->graph;
	size_t n_graphs = 0, n_slots = 0, n_unknown = 0, n_records = 0;
	for (size_t i = 0; i < m->n_runs; i++) {
		if (m->runs[i].graph == main_graph)
			continue;
		n_records += count_records(m, &m->runs[i]);
		if (i == 0 || m->runs[i].graph != m->runs[i - 1].graph) {
			n_graphs++;
			n_slots += m->runs[i].graph->n_initializer;
			n_unknown += m->runs[i].graph->base.n_unknown_fields;
		}
	}
	if (n_graphs == 0)
		return true;
	ks->saved = calloc(n_graphs, sizeof *ks->saved);
	ks->records = calloc(n_records ? n_records : 1, sizeof *ks->records);
	ks->arrays = malloc((n_slots + n_records + 1) * sizeof *ks->arrays);
	ks->unknowns = malloc((n_unknown + 1) * sizeof *ks->unknowns);
	if (!ks->saved || !ks->records || !ks->arrays || !ks->unknowns) {
		kept_restore(ks);
		return false;
	}
	const uint8_t *map = m->files[0].map;
	size_t rec = 0, slot = 0, unk = 0;
	for (size_t i = 0; i < m->n_runs;) {
		Onnx__GraphProto *g = (Onnx__GraphProto *)m->runs[i].graph;
		if (g == main_graph) {
			i++;
			continue;
		}
		ks->saved[ks->n_saved++] = (graph_fields){ g, g->n_initializer, g->initializer,
							   g->base.n_unknown_fields, g->base.unknown_fields };
		Onnx__TensorProto **arr = ks->arrays + slot;
		size_t k = 0, parsed = 0;
		for (; i < m->n_runs && m->runs[i].graph == g; i++) {
			const nmp_kept_run *r = &m->runs[i];
			NMP_ASSERT(r->before >= parsed && r->before <= g->n_initializer);
			while (parsed < r->before)
				arr[k++] = g->initializer[parsed++];
			for (const uint8_t *p = map + r->offset, *end = p + r->length; p < end;) {
				NMP_ASSERT(rec < n_records);
				kept_record *kr = &ks->records[rec++];
				kr->base.descriptor = &kept_record_descriptor;
				p = kept_record_at(p, end, &kr->field, &kr->base.n_unknown_fields);
				kr->base.unknown_fields = kr->base.n_unknown_fields ? &kr->field : NULL;
				arr[k++] = (Onnx__TensorProto *)(void *)kr;
			}
		}
		while (parsed < g->n_initializer)
			arr[k++] = g->initializer[parsed++];
		slot += k;
		ProtobufCMessageUnknownField *others = ks->unknowns + unk;
		unsigned n_others = 0;
		for (unsigned u = 0; u < g->base.n_unknown_fields; u++)
			if (g->base.unknown_fields[u].tag != 5) /* the runs: GraphProto.initializer is no unknown field otherwise */
				others[n_others++] = g->base.unknown_fields[u];
		unk += n_others;
		g->n_initializer = k;
		g->initializer = arr;
		g->base.n_unknown_fields = n_others;
		g->base.unknown_fields = n_others ? others : NULL;
	}
	NMP_ASSERT(rec == n_records);
	return true;
}

/*
 * Packs a copy of `msg` that holds only its fields numbered in [lo, hi), and
 * its unknown fields when `unknown` is given (n of them).
 */
static void pack_fields(const ProtobufCMessage *msg, unsigned lo, unsigned hi,
			const ProtobufCMessageUnknownField *unknown, unsigned n_unknown, ProtobufCBuffer *out)
{
	union {
		Onnx__ModelProto model;
		Onnx__GraphProto graph;
	} copy;
	const ProtobufCMessageDescriptor *d = msg->descriptor;
	NMP_ASSERT(d->sizeof_message <= sizeof copy);
	memcpy(&copy, msg, d->sizeof_message);
	ProtobufCMessage *c = (ProtobufCMessage *)(void *)&copy;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		if (f->id >= lo && f->id < hi)
			continue;
		if (f->label == PROTOBUF_C_LABEL_REPEATED)
			*(size_t *)((char *)c + f->quantifier_offset) = 0;
		else if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE)
			*(void **)((char *)c + f->offset) = NULL;
		else if (f->quantifier_offset) /* proto2 optional: has_ */
			*(protobuf_c_boolean *)((char *)c + f->quantifier_offset) = 0;
		else
			NMP_ASSERT(!"a field that cannot be left out"); /* onnx.proto has none */
	}
	c->n_unknown_fields = unknown ? n_unknown : 0;
	c->unknown_fields = unknown ? (ProtobufCMessageUnknownField *)unknown : NULL;
	protobuf_c_message_pack_to_buffer(c, out);
}

static void put_header(ProtobufCBuffer *out, unsigned field, uint64_t len)
{
	uint8_t h[16];
	size_t n = nmp_varint_put(h, (uint64_t)field << 3 | PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED);
	n += nmp_varint_put(h + n, len);
	out->append(out, n, h);
}

/*
 * Packs the model as protobuf-c would, except that the main graph's runs of
 * kept records are appended straight from the mapping among its
 * initializers, where they were in the file: the model's fields before
 * `graph`, the graph's before `initializer`, the initializers and runs, the
 * graph's later fields, the model's later fields.  The subgraphs' runs must
 * be swapped in (kept_swap_in).  `others` has room for the graph's unknown
 * fields.
 */
static void pack_model(const nmp_model *m, ProtobufCBuffer *out, ProtobufCMessageUnknownField *others)
{
	const Onnx__ModelProto *mp = m->proto;
	const Onnx__GraphProto *g = mp->graph;
	bool runs = false;
	for (size_t i = 0; i < m->n_runs && !runs; i++)
		runs = m->runs[i].graph == g;
	if (!runs) {
		protobuf_c_message_pack_to_buffer(&mp->base, out);
		return;
	}
	pack_fields(&mp->base, 0, 7, NULL, 0, out);
	put_header(out, 7, protobuf_c_message_get_packed_size(&g->base));
	pack_fields(&g->base, 0, 5, NULL, 0, out);
	size_t parsed = 0;
	for (size_t i = 0; i < m->n_runs; i++) {
		const nmp_kept_run *r = &m->runs[i];
		if (r->graph != g)
			continue;
		for (; parsed < r->before; parsed++) {
			put_header(out, 5, protobuf_c_message_get_packed_size(&g->initializer[parsed]->base));
			protobuf_c_message_pack_to_buffer(&g->initializer[parsed]->base, out);
		}
		out->append(out, (size_t)r->length, m->files[0].map + r->offset);
	}
	for (; parsed < g->n_initializer; parsed++) {
		put_header(out, 5, protobuf_c_message_get_packed_size(&g->initializer[parsed]->base));
		protobuf_c_message_pack_to_buffer(&g->initializer[parsed]->base, out);
	}
	unsigned n_others = 0;
	for (unsigned u = 0; u < g->base.n_unknown_fields; u++)
		if (g->base.unknown_fields[u].tag != 5) /* the runs, written above */
			others[n_others++] = g->base.unknown_fields[u];
	pack_fields(&g->base, 6, UINT_MAX, others, n_others, out);
	pack_fields(&mp->base, 8, UINT_MAX, mp->base.unknown_fields, mp->base.n_unknown_fields, out);
}

typedef struct pack_sink {
	ProtobufCBuffer base;
	out_file *f;
	const nmp_model *m;
	uint8_t *buf;
	size_t used;
	nmp_status status;
	nmp_error *err;
	landing at;            /* for the visits after packing */
} pack_sink;

static void sink_flush(pack_sink *k)
{
	if (k->status == NMP_OK && k->used > 0)
		k->status = write_all(k->f, k->buf, k->used, k->err);
	k->used = 0;
	kick_writeback(k->f, 64u << 20);
}

static void sink_append(ProtobufCBuffer *b, size_t len, const uint8_t *data)
{
	pack_sink *k = (pack_sink *)b;
	if (k->status != NMP_OK || len == 0)
		return;
	landing_note(&k->at, data, k->f->size + k->used);

	const nmp_data_file *in = &k->m->files[0];
	if (len >= (64u << 10) && data >= in->map && data + len <= in->map + in->size) {
		sink_flush(k);
		if (k->status == NMP_OK)
			k->status = copy_range(k->f, in->fd, (uint64_t)(data - in->map), len, in->path, k->err);
		kick_writeback(k->f, 64u << 20);
		return;
	}
	if (k->used + len > SINK_BUF) {
		sink_flush(k);
		if (len >= SINK_BUF) {
			if (k->status == NMP_OK)
				k->status = write_all(k->f, data, len, k->err);
			return;
		}
	}
	memcpy(k->buf + k->used, data, len);
	k->used += len;
}

/* Where each tensor goes in the output. */
typedef struct plan_entry {
	uint64_t out_offset;   /* in the data file, or in the .onnx after packing */
	uint32_t ext;          /* external: its entry in plan.ext + 1; 0 inline */
} plan_entry;

/* The external_data entries of a tensor moved to the data file. */
typedef struct ext_entry {
	Onnx__StringStringEntryProto kv[3];
	Onnx__StringStringEntryProto *ptrs[3];
	char offset[24], length[24];
} ext_entry;

/*
 * The tensors whose protos are changed for packing, with their fields as they
 * were: only tensors with a payload, so a model of millions of empty
 * initializers costs 16 bytes each here.
 */
typedef struct save_plan {
	plan_entry *at;        /* one per tensor */
	ext_entry *ext;
	size_t n_ext;
	size_t *swapped;       /* tensor indices */
	Onnx__TensorProto *saved;
	size_t n_swapped, cap_swapped;
} save_plan;

static bool plan_alloc(save_plan *p, size_t n_tensors)
{
	*p = (save_plan){ .at = calloc(n_tensors ? n_tensors : 1, sizeof *p->at) };
	return p->at != NULL;
}

static void plan_free(save_plan *p)
{
	free(p->at);
	free(p->ext);
	free(p->swapped);
	free(p->saved);
}

/* Room for `n` saved protos; called before any is saved. */
static bool plan_reserve(save_plan *p, size_t n)
{
	NMP_ASSERT(p->n_swapped == 0);
	if (n <= p->cap_swapped)
		return true;
	free(p->swapped);
	free(p->saved);
	p->swapped = malloc(n * sizeof *p->swapped);
	p->saved = malloc(n * sizeof *p->saved);
	p->cap_swapped = p->swapped && p->saved ? n : 0;
	return p->cap_swapped != 0;
}

/* Saves tensor i's proto fields and returns the proto, to be changed. */
static Onnx__TensorProto *plan_swap(save_plan *p, nmp_model *m, size_t i)
{
	NMP_ASSERT(p->n_swapped < p->cap_swapped);
	p->swapped[p->n_swapped] = i;
	p->saved[p->n_swapped++] = *m->tensors[i].proto;
	return m->tensors[i].proto;
}

static void restore_protos(nmp_model *m, save_plan *p)
{
	for (size_t k = 0; k < p->n_swapped; k++)
		*m->tensors[p->swapped[k]].proto = p->saved[k];
	p->n_swapped = 0;
}

static bool raw_convertible(const nmp_tensor *t)
{
	if (t->storage == NMP_STORE_FILE || t->storage == NMP_STORE_EXTERNAL)
		return true;
	if (t->storage != NMP_STORE_HEAP)
		return false;
	unsigned bits = nmp_dtype_bits(t->dtype);
	return bits == 8 || bits == 16 || bits == 32 || bits == 64;
}

/* Points a tensor's payload field at its bytes in the input, for packing. */
static void point_inline(const nmp_model *m, const nmp_tensor *t, Onnx__TensorProto *p)
{
	uint8_t *at = (uint8_t *)m->files[0].map + t->offset;
	switch (t->field) {
	case NMP_FIELD_RAW_DATA:
		p->has_raw_data = 1;
		p->raw_data.len = t->length;
		p->raw_data.data = at;
		break;
	case NMP_FIELD_FLOAT_DATA:
		p->n_float_data = t->length / 4;
		p->float_data = (float *)(void *)at;
		break;
	case NMP_FIELD_DOUBLE_DATA:
		p->n_double_data = t->length / 8;
		p->double_data = (double *)(void *)at;
		break;
	default:
		NMP_ASSERT(0);
	}
}

static void point_external(ext_entry *e, Onnx__TensorProto *p, const char *location)
{
	p->has_raw_data = 0;
	p->raw_data.len = 0;
	p->raw_data.data = NULL;
	p->n_float_data = p->n_int32_data = p->n_int64_data = p->n_double_data = p->n_uint64_data = 0;
	p->has_data_location = 1;
	p->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
	const char *keys[3] = { "location", "offset", "length" };
	const char *vals[3] = { location, e->offset, e->length };
	for (int i = 0; i < 3; i++) {
		Onnx__StringStringEntryProto init = ONNX__STRING_STRING_ENTRY_PROTO__INIT;
		e->kv[i] = init;
		e->kv[i].key = (char *)keys[i];
		e->kv[i].value = (char *)vals[i];
		e->ptrs[i] = &e->kv[i];
	}
	p->n_external_data = 3;
	p->external_data = e->ptrs;
}

/* Points every payload at its bytes for packing: inline in the input, or in the data file. */
static bool swap_in(nmp_model *m, save_plan *plan, const char *location)
{
	size_t n = 0;
	for (size_t i = 0; i < m->n_tensors; i++)
		n += plan->at[i].ext || (m->tensors[i].storage == NMP_STORE_FILE && !m->tensors[i].kept_run);
	if (!plan_reserve(plan, n))
		return false;
	for (size_t i = 0; i < m->n_tensors; i++) {
		nmp_tensor *t = &m->tensors[i];
		uint32_t ext = plan->at[i].ext;
		if (!ext && (t->storage != NMP_STORE_FILE || t->kept_run))
			continue; /* a compact record goes as its bytes are */
		Onnx__TensorProto *p = plan_swap(plan, m, i);
		if (ext)
			point_external(&plan->ext[ext - 1], p, location);
		else
			point_inline(m, t, p);
	}
	return true;
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

static nmp_status write_external(nmp_model *m, save_plan *plan, out_file *data, nmp_error *err)
{
	static const uint8_t zeros[EXT_ALIGN_LARGE];
	for (size_t i = 0; i < m->n_tensors; i++) {
		const nmp_tensor *t = &m->tensors[i];
		if (!plan->at[i].ext)
			continue;
		ext_entry *e = &plan->ext[plan->at[i].ext - 1];
		uint64_t align = t->nbytes >= EXT_ALIGN_LARGE ? EXT_ALIGN_LARGE : EXT_ALIGN_SMALL;
		uint64_t at = align_up(data->size, align);
		NMP_TRY(write_all(data, zeros, (size_t)(at - data->size), err));
		plan->at[i].out_offset = at;
		snprintf(e->offset, sizeof e->offset, "%llu", (unsigned long long)at);
		snprintf(e->length, sizeof e->length, "%llu", (unsigned long long)t->nbytes);
		if (t->storage == NMP_STORE_HEAP) {
			void *buf = malloc(t->nbytes ? t->nbytes : 1);
			if (!buf)
				return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", data->path);
			NMP_ASSERT(nmp_heap_to_raw(t, buf));
			nmp_status s = write_all(data, buf, (size_t)t->nbytes, err);
			free(buf);
			NMP_TRY(s);
		} else {
			const nmp_data_file *src = &m->files[t->file];
			NMP_TRY(copy_range(data, src->fd, t->offset, t->length, src->path, err));
		}
	}
	return NMP_OK;
}

/* Drops the model's nmprune.* entries while packing, so new ones replace them. */
typedef struct meta_swap {
	size_t n;
	Onnx__StringStringEntryProto **arr;
	Onnx__StringStringEntryProto **filtered;
} meta_swap;

static bool meta_filter(Onnx__ModelProto *p, meta_swap *ms)
{
	ms->n = p->n_metadata_props;
	ms->arr = p->metadata_props;
	ms->filtered = malloc((ms->n + 1) * sizeof *ms->filtered);
	if (!ms->filtered)
		return false;
	size_t k = 0;
	for (size_t i = 0; i < ms->n; i++) {
		const char *key = ms->arr[i]->key;
		if (!(key && strncmp(key, "nmprune.", 8) == 0))
			ms->filtered[k++] = ms->arr[i];
	}
	p->n_metadata_props = k;
	p->metadata_props = ms->filtered;
	return true;
}

static void meta_restore(Onnx__ModelProto *p, meta_swap *ms)
{
	if (!ms->filtered)
		return;
	p->n_metadata_props = ms->n;
	p->metadata_props = ms->arr;
	free(ms->filtered);
	ms->filtered = NULL;
}

/* The data file's name: given, or "<model>.data", never one of the input's. */
static nmp_status data_file_name(const nmp_model *m, const char *out_path, const char *requested,
				 char *path, size_t cap, const char **location, nmp_error *err)
{
	char dirbuf[PATH_MAX], basebuf[PATH_MAX], name[PATH_MAX];
	snprintf(dirbuf, sizeof dirbuf, "%s", out_path);
	snprintf(basebuf, sizeof basebuf, "%s", out_path);
	const char *dir = dirname(dirbuf);
	if (requested) {
		char rb[PATH_MAX], rd[PATH_MAX], a[PATH_MAX], b[PATH_MAX];
		snprintf(rb, sizeof rb, "%s", requested);
		snprintf(rd, sizeof rd, "%s", requested);
		const char *rdir = dirname(rd);
		if (strchr(requested, '/') &&
		    (!realpath(rdir, a) || !realpath(dir, b) || strcmp(a, b) != 0))
			return nmp_error_set(err, NMP_ERR_USAGE,
					     "--external-data %s: the data file must be in the output model's directory",
					     requested);
		snprintf(name, sizeof name, "%s", basename(rb));
	} else {
		snprintf(name, sizeof name, "%s.data", basename(basebuf));
	}
	size_t stem = strlen(name);
	for (int n = 1;; n++) {
		if ((size_t)snprintf(path, cap, "%s/%s", dir, name) >= cap)
			return nmp_error_set(err, NMP_ERR_IO, "%s: path too long", out_path);
		struct stat st;
		bool taken = false;
		if (stat(path, &st) == 0)
			for (size_t i = 0; i < m->n_files; i++)
				if (m->files[i].dev == st.st_dev && m->files[i].ino == st.st_ino)
					taken = true;
		if (!taken)
			break;
		if (stem + 12 >= sizeof name)
			return nmp_error_set(err, NMP_ERR_IO, "%s: path too long", out_path);
		snprintf(name + stem, sizeof name - stem, ".%d", n);
	}
	*location = strrchr(path, '/') + 1;
	return NMP_OK;
}

/*
 * Everything is written and synced before anything is renamed: the side
 * outputs (produced by the before_commit hook) land first, the data file
 * next, the model last; a failed rename takes back what already landed.
 */
static nmp_status commit(out_file *onnx, out_file *data, const nmp_save_opts *o, nmp_error *err)
{
	if (data && data->fd >= 0 && fsync(data->fd) != 0)
		return nmp_error_errno(err, errno, "cannot sync", data->path);
	if (fsync(onnx->fd) != 0)
		return nmp_error_errno(err, errno, "cannot sync", onnx->path);
	if (o->before_commit)
		NMP_TRY(o->before_commit(o->ctx, err));
	if (o->pending) {
		NMP_TRY(nmp_pending_commit(o->pending, err));
	}
	if (data && data->fd >= 0) {
		if (rename(data->tmp, data->path) != 0) {
			int e = errno;
			nmp_pending_unlink_committed(o->pending);
			return nmp_error_errno(err, e, "cannot rename into place", data->path);
		}
		data->tmp[0] = '\0';
		nmp_cleanup_forget(data->cleanup);
		data->cleanup = -1;
	}
	if (rename(onnx->tmp, onnx->path) != 0) {
		int e = errno;
		if (data && data->fd >= 0)
			unlink(data->path); /* the model that would use it did not land */
		nmp_pending_unlink_committed(o->pending);
		return nmp_error_errno(err, e, "cannot rename into place", onnx->path);
	}
	onnx->tmp[0] = '\0';
	nmp_cleanup_forget(onnx->cleanup);
	onnx->cleanup = -1;
	return fsync_dir_of(onnx->path, err);
}

static mode_t output_mode(const nmp_model *m, const nmp_save_opts *o)
{
	if (o->in_place) {
		struct stat st;
		if (fstat(m->files[0].fd, &st) == 0)
			return st.st_mode & 07777;
	}
	mode_t um = umask(0);
	umask(um);
	return 0666 & ~um;
}

static bool visited_all_file_resident(const nmp_model *m, const nmp_save_opts *o)
{
	for (size_t i = 0; i < o->n_visit; i++)
		if (m->tensors[o->visit[i]].storage != NMP_STORE_FILE &&
		    m->tensors[o->visit[i]].storage != NMP_STORE_NONE)
			return false;
	return true;
}

static bool has_external(const nmp_model *m)
{
	for (size_t i = 0; i < m->n_tensors; i++)
		if (m->tensors[i].storage == NMP_STORE_EXTERNAL)
			return true;
	return false;
}

static int by_offset(const void *a, const void *b, void *arg)
{
	const nmp_model *m = arg;
	uint64_t x = m->tensors[*(const size_t *)a].offset, y = m->tensors[*(const size_t *)b].offset;
	return x < y ? -1 : x > y;
}

/*
 * The copy path streams in file order: the bytes up to the next payload to
 * mask are copied in the kernel; the payload itself is not copied but written
 * by the visitor, from the input mapping into a staging buffer (the size of
 * the largest payload) that is then written in place of it; its writeback
 * starts at once, and so on to the end.  Writing the buffer costs no more
 * than faulting in fresh pages of a mapping would, and a full disk is an
 * ordinary write error.
 */
static nmp_status save_copy(nmp_model *m, const nmp_save_opts *o, out_file *onnx, nmp_error *err)
{
	const nmp_data_file *in = &m->files[0];
	size_t *order = malloc((o->n_visit + 1) * sizeof *order);
	uint64_t largest = 0;
	if (!order)
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", m->path);
	if (o->n_visit) {
		memcpy(order, o->visit, o->n_visit * sizeof *order);
		qsort_r(order, o->n_visit, sizeof *order, by_offset, m);
	}
	for (size_t i = 0; i < o->n_visit; i++)
		if (m->tensors[order[i]].length > largest)
			largest = m->tensors[order[i]].length;
	uint8_t *stage = largest ? malloc(largest) : NULL;
	if (largest && !stage) {
		free(order);
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory for a %llu-byte payload", m->path,
				     (unsigned long long)largest);
	}

	nmp_status s = NMP_OK;
	for (size_t i = 0; i < o->n_visit && s == NMP_OK; i++) {
		const nmp_tensor *t = &m->tensors[order[i]];
		if (t->offset > onnx->size)
			s = copy_range(onnx, in->fd, onnx->size, t->offset - onnx->size, in->path, err);
		if (s != NMP_OK)
			break;
		s = o->on_payload(o->ctx, order[i], t->length ? stage : NULL, t->length ? in->map + t->offset : NULL,
				  t->length, err);
		if (s == NMP_OK)
			s = write_all(onnx, stage, (size_t)t->length, err);
		nmp_drop_pages(in->map + t->offset, t->length); /* memory tracks one tensor at a time */
		kick_writeback(onnx, 8u << 20);
	}
	free(order);
	free(stage);
	NMP_TRY(s);
	while (onnx->size < in->size) {
		uint64_t chunk = in->size - onnx->size;
		if (chunk > (64u << 20))
			chunk = 64u << 20;
		NMP_TRY(copy_range(onnx, in->fd, onnx->size, chunk, in->path, err));
		kick_writeback(onnx, 0);
	}
	return finish_metadata(onnx, o, err);
}

static nmp_status save_general(nmp_model *m, const nmp_save_opts *o, const char *out_path,
			       mode_t mode, out_file *onnx, out_file *data, nmp_save_result *res,
			       nmp_error *err)
{
	nmp_status s = NMP_OK;
	save_plan plan;
	bool planned = plan_alloc(&plan, m->n_tensors);
	pack_sink sink = { .base = { .append = sink_append }, .m = m, .err = err };
	kept_swap ks = { 0 };
	ProtobufCMessageUnknownField *others = NULL;
	meta_swap ms = { 0 };
	char data_path[PATH_MAX];
	const char *location = NULL;
	uint64_t threshold = o->external_threshold ? o->external_threshold : 1024;

	if (!planned) {
		plan_free(&plan);
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", m->path);
	}

	/* Heap payloads are re-encoded by packing, so they are visited first. */
	for (size_t i = 0; i < o->n_visit && s == NMP_OK; i++)
		if (m->tensors[o->visit[i]].storage == NMP_STORE_HEAP)
			s = visit_heap(m, o, o->visit[i], err);
	if (s != NMP_OK)
		goto out;

	bool externalize = o->external_data != NULL;
	if (!externalize) {
		/* Would the model pass 2 GiB inline?  Then move the large tensors out. */
		if (!swap_in(m, &plan, "")) {
			s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", m->path);
			goto out;
		}
		uint64_t size = protobuf_c_message_get_packed_size(&m->proto->base);
		restore_protos(m, &plan);
		if (size + META_MARGIN > proto_limit(o)) {
			externalize = true;
			res->auto_external = true;
		}
	}
	for (size_t i = 0; i < m->n_tensors; i++) {
		const nmp_tensor *t = &m->tensors[i];
		if (t->storage == NMP_STORE_EXTERNAL ||
		    (externalize && t->nbytes >= threshold && raw_convertible(t) && !t->kept_run))
			plan.at[i].ext = (uint32_t)++plan.n_ext; /* fewer than 2^32 tensors: see model.c */
	}
	if (plan.n_ext > 0) {
		if (!(plan.ext = calloc(plan.n_ext, sizeof *plan.ext))) {
			s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", m->path);
			goto out;
		}
		s = data_file_name(m, out_path, o->external_data, data_path, sizeof data_path, &location, err);
		if (s == NMP_OK)
			s = out_open(data, data_path, mode, err);
		if (s == NMP_OK)
			s = write_external(m, &plan, data, err);
		if (s != NMP_OK)
			goto out;
		snprintf(res->data_path, sizeof res->data_path, "%s", data_path);
	}

	sink.f = onnx;
	sink.buf = malloc(SINK_BUF);
	if (!sink.buf || !landing_init(&sink.at, o->n_visit)) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", m->path);
		goto out;
	}
	for (size_t i = 0; i < o->n_visit; i++) {
		const nmp_tensor *t = &m->tensors[o->visit[i]];
		uint64_t delta;
		if (t->storage == NMP_STORE_FILE && !plan.at[o->visit[i]].ext && t->length > 0)
			landing_want(&sink.at, landing_key(m, t, &delta));
	}

	if (m->has_own_metadata && o->n_visit > 0 && !meta_filter(m->proto, &ms)) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", m->path);
		goto out;
	}
	others = malloc((m->proto->graph->base.n_unknown_fields + 1) * sizeof *others);
	if (!others || !swap_in(m, &plan, location) || !kept_swap_in(m, &ks)) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", m->path);
		goto out;
	}
	pack_model(m, &sink.base, others);
	sink_flush(&sink);
	kept_restore(&ks);
	restore_protos(m, &plan);
	meta_restore(m->proto, &ms);
	s = sink.status;
	if (s == NMP_OK && onnx->size > proto_limit(o))
		s = nmp_error_set(err, NMP_ERR_MODEL, "%s: model structure alone passes the 2 GiB protobuf limit",
				  out_path);
	if (s != NMP_OK)
		goto out;

	for (size_t i = 0; i < o->n_visit && s == NMP_OK; i++) {
		size_t ti = o->visit[i];
		const nmp_tensor *t = &m->tensors[ti];
		if (t->storage == NMP_STORE_HEAP || t->storage == NMP_STORE_NONE)
			continue;
		if (plan.at[ti].ext) {
			s = visit_window(o, ti, data, plan.at[ti].out_offset, t->length, err);
		} else if (t->length == 0) {
			s = o->on_payload(o->ctx, ti, NULL, NULL, 0, err);
		} else {
			uint64_t delta;
			const uint8_t *key = landing_key(m, t, &delta);
			s = visit_window(o, ti, onnx, landing_at(&sink.at, key) + delta, t->length, err);
		}
	}
	if (s == NMP_OK)
		s = finish_metadata(onnx, o, err);
out:
	kept_restore(&ks);
	free(others);
	restore_protos(m, &plan);
	meta_restore(m->proto, &ms);
	free(sink.buf);
	landing_free(&sink.at);
	plan_free(&plan);
	return s;
}

/* Packing into memory, noting where the wanted runs of kept records land. */
typedef struct mem_sink {
	ProtobufCBuffer base;
	uint8_t *buf;
	size_t used, cap;
	landing at;
} mem_sink;

static void mem_append(ProtobufCBuffer *b, size_t len, const uint8_t *data)
{
	mem_sink *k = (mem_sink *)b;
	NMP_ASSERT(len <= k->cap - k->used);
	landing_note(&k->at, data, k->used);
	memcpy(k->buf + k->used, data, len);
	k->used += len;
}

/* Packs the model into buf (exactly size bytes), then writes the new values of compact records in it. */
static size_t pack_in_memory(const nmp_model *m, mem_sink *sink, const void *const *payloads, uint8_t *buf,
			     size_t size, ProtobufCMessageUnknownField *others)
{
	sink->buf = buf;
	sink->cap = size;
	pack_model(m, &sink->base, others);
	NMP_ASSERT(sink->used == size);
	for (size_t i = 0; payloads && i < m->n_tensors; i++) {
		const nmp_tensor *t = &m->tensors[i];
		if (!t->kept_run || !payloads[i] || t->length == 0)
			continue;
		NMP_ASSERT(t->length == t->nbytes);
		uint64_t delta;
		const uint8_t *key = landing_key(m, t, &delta);
		memcpy(buf + landing_at(&sink->at, key) + delta, payloads[i], t->length);
	}
	return sink->used;
}

/*
 * The whole model as one protobuf in memory, every payload inline (external
 * data read from its mapping), with extra graph outputs: what ONNX Runtime
 * loads to run the model on calibration data.  The model is left as it was.
 */
nmp_status nmp_model_serialize(nmp_model *m, const void *const *payloads, const char *const *extra_outputs,
			       size_t n_extra, uint8_t **buf, size_t *len, nmp_error *err)
{
	*buf = NULL;
	*len = 0;
	Onnx__GraphProto *g = m->proto->graph;
	if (!g)
		return nmp_error_set(err, NMP_ERR_MODEL, "%s: no graph", m->path);
	size_t n_swaps = 0, n_kept = 0;
	for (size_t i = 0; i < m->n_tensors; i++) {
		const nmp_tensor *t = &m->tensors[i];
		if (t->kept_run)
			n_kept += payloads && payloads[i] && t->length > 0;
		else
			n_swaps += (payloads && payloads[i]) || t->storage == NMP_STORE_FILE ||
				   t->storage == NMP_STORE_EXTERNAL;
	}
	save_plan plan;
	mem_sink sink = { .base = { .append = mem_append } };
	bool planned = plan_alloc(&plan, 0) && plan_reserve(&plan, n_swaps) && landing_init(&sink.at, n_kept);
	Onnx__ValueInfoProto *extra = calloc(n_extra ? n_extra : 1, sizeof *extra);
	Onnx__ValueInfoProto **outs = calloc(g->n_output + n_extra + 1, sizeof *outs);
	if (!planned || !extra || !outs) {
		plan_free(&plan);
		landing_free(&sink.at);
		free(extra);
		free(outs);
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", m->path);
	}
	for (size_t i = 0; i < m->n_tensors; i++) {
		nmp_tensor *t = &m->tensors[i];
		if (t->kept_run) { /* packed as its bytes are; new values go in once they are packed */
			uint64_t delta;
			if (payloads && payloads[i] && t->length > 0)
				landing_want(&sink.at, landing_key(m, t, &delta));
			continue;
		}
		if (payloads && payloads[i]) { /* new values in raw layout, whatever field held the old */
			Onnx__TensorProto *p = plan_swap(&plan, m, i);
			p->has_data_location = 0;
			p->n_external_data = 0;
			p->n_float_data = p->n_int32_data = p->n_int64_data = p->n_double_data = p->n_uint64_data = 0;
			p->has_raw_data = 1;
			p->raw_data.len = t->nbytes;
			p->raw_data.data = (uint8_t *)payloads[i];
			continue;
		}
		if (t->storage != NMP_STORE_FILE && t->storage != NMP_STORE_EXTERNAL)
			continue;
		Onnx__TensorProto *p = plan_swap(&plan, m, i);
		if (t->storage == NMP_STORE_FILE) {
			point_inline(m, t, p);
		} else {
			p->has_data_location = 0;
			p->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__DEFAULT;
			p->n_external_data = 0;
			p->external_data = NULL;
			p->has_raw_data = 1;
			p->raw_data.len = t->length;
			p->raw_data.data = (uint8_t *)m->files[t->file].map + t->offset;
		}
	}
	Onnx__ValueInfoProto **saved_outs = g->output;
	size_t saved_n = g->n_output;
	for (size_t i = 0; i < g->n_output; i++)
		outs[i] = g->output[i];
	for (size_t i = 0; i < n_extra; i++) {
		Onnx__ValueInfoProto init = ONNX__VALUE_INFO_PROTO__INIT;
		extra[i] = init;
		extra[i].name = (char *)extra_outputs[i];
		outs[g->n_output + i] = &extra[i];
	}
	g->output = outs;
	g->n_output += n_extra;
	nmp_status s = NMP_OK;
	kept_swap ks = { 0 };
	size_t size = protobuf_c_message_get_packed_size(&m->proto->base);
	ProtobufCMessageUnknownField *others = malloc((g->base.n_unknown_fields + 1) * sizeof *others);
	if (!others || !kept_swap_in(m, &ks))
		s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory", m->path);
	else if (size > NMP_PROTO_LIMIT)
		s = nmp_error_set(err, NMP_ERR_MODEL, "%s: %zu bytes with its data inline: ONNX Runtime loads at most 2 GiB "
				  "from memory", m->path, size);
	else if (!(*buf = malloc(size ? size : 1)))
		s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory for a copy of %zu bytes", m->path, size);
	else
		*len = pack_in_memory(m, &sink, payloads, *buf, size, others);
	kept_restore(&ks);
	free(others);
	g->output = saved_outs;
	g->n_output = saved_n;
	restore_protos(m, &plan);
	plan_free(&plan);
	landing_free(&sink.at);
	free(extra);
	free(outs);
	return s;
}

nmp_status nmp_model_save(nmp_model *m, const char *out_path, const nmp_save_opts *o,
			  nmp_save_result *res, nmp_error *err)
{
	out_file onnx = { .fd = -1 }, data = { .fd = -1 };
	nmp_save_result dummy;
	if (!res)
		res = &dummy;
	memset(res, 0, sizeof *res);

	struct stat st;
	if (stat(out_path, &st) == 0 && S_ISDIR(st.st_mode))
		return nmp_error_set(err, NMP_ERR_IO, "%s: is a directory", out_path);
	if (lstat(out_path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode))
		/* The output is renamed over its path: a device or FIFO there would be replaced, not written. */
		return nmp_error_set(err, NMP_ERR_IO, "%s: not a regular file; the output must be one", out_path);

	bool copy = !o->force_general && !o->external_data && !has_external(m) &&
		    visited_all_file_resident(m, o) && !(m->has_own_metadata && o->n_visit > 0) &&
		    m->files[0].size + (o->n_visit ? META_MARGIN : 0) <= proto_limit(o);
	mode_t mode = output_mode(m, o);
	nmp_status s = out_open(&onnx, out_path, mode, err);
	if (s == NMP_OK) {
		res->general_path = !copy;
		s = copy ? save_copy(m, o, &onnx, err)
			 : save_general(m, o, out_path, mode, &onnx, &data, res, err);
	}
	if (s == NMP_OK)
		s = commit(&onnx, &data, o, err);
	res->model_bytes = onnx.size;
	out_discard(&data);
	out_discard(&onnx);
	if (s != NMP_OK)
		res->data_path[0] = '\0';
	return s;
}
