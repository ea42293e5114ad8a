#include "wire.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "hash.h"
#include "onnx.pb-c.h"

size_t nmp_varint_size(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

size_t nmp_varint_put(uint8_t *p, uint64_t v)
{
	size_t n = 0;
	while (v >= 0x80) {
		p[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}

size_t nmp_varint_get(const uint8_t *p, const uint8_t *end, uint64_t *v)
{
	uint64_t r = 0;
	for (size_t i = 0; i < 10 && p + i < end; i++) {
		if (i == 9 && p[i] > 1)
			return 0; /* the tenth byte holds bit 63 only: more would be dropped */
		r |= (uint64_t)(p[i] & 0x7f) << (7 * i);
		if (!(p[i] & 0x80)) {
			*v = r;
			return i + 1;
		}
	}
	return 0;
}

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };

typedef struct name_entry {
	const uint8_t *p;
	uint32_t len;
	uint32_t hash;
} name_entry;

/*
 * Both passes run the same walk.  The measuring pass validates, records the
 * spans and the skeleton size of every sub-message in pre-order; the writing
 * pass replays the walk and consumes those sizes in the same order, so each
 * length prefix is known before its message is written.
 */
typedef struct skel_ctx {
	const uint8_t *base;
	const ProtobufCMessageDescriptor *bulk;
	const char *what;
	nmp_error *err;
	int writing;

	uint64_t *sizes;
	size_t n_sizes, cap_sizes, cursor;

	nmp_span *spans;
	size_t n_spans, cap_spans, span_cursor;

	uint8_t *out;
	size_t out_len;

	int keep_unread;           /* NMP_WIRE_KEEP_UNREAD, and nothing ruled it out */
	int keep_compact;          /* NMP_WIRE_KEEP_COMPACT too */
	name_entry *names;         /* open addressing, power-of-two capacity */
	size_t n_names, cap_names;
	size_t n_kept;
	uint64_t *compact;         /* the compact read records kept, at their tags */
	size_t n_compact, cap_compact;

	/* For a file mapping: pages behind the cursor are dropped as it passes. */
	int drop_pages;
	uintptr_t dropped;
	uintptr_t page;
} skel_ctx;

/*
 * Reading a tag faults in the page-cache folio around it, which can be
 * megabytes; over a model's tensors that adds up to a large share of the
 * file.  The walk never returns behind its cursor within a pass, so whatever
 * lies behind it can be unmapped.
 */
static void drop_behind(skel_ctx *c, const uint8_t *cursor)
{
	uintptr_t upto = (uintptr_t)cursor & ~(c->page - 1);
	if (!c->drop_pages || upto < c->dropped + (2u << 20))
		return;
	madvise((void *)c->dropped, upto - c->dropped, MADV_DONTNEED);
	c->dropped = upto;
}

static nmp_status skel_fail(skel_ctx *c, const uint8_t *at, const char *why)
{
	return nmp_error_set(c->err, NMP_ERR_MODEL,
			     "%s: not a valid ONNX model: %s at byte offset %zu", c->what,
			     why, (size_t)(at - c->base));
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 1;
	size_t n = *cap ? *cap * 2 : 64;
	while (n < need)
		n *= 2;
	void *q = realloc(*p, n * elem);
	if (!q)
		return 0;
	*p = q;
	*cap = n;
	return 1;
}

static void emit(skel_ctx *c, const void *src, size_t n)
{
	memcpy(c->out + c->out_len, src, n);
	c->out_len += n;
}

static void emit_varint(skel_ctx *c, uint64_t v)
{
	c->out_len += nmp_varint_put(c->out + c->out_len, v);
}

static int is_bulk_field(const skel_ctx *c, const ProtobufCMessageDescriptor *d, uint64_t field)
{
	return d == c->bulk && (field == 9 || field == 4 || field == 10);
}

/* One field as found on the wire. */
typedef struct wire_field {
	const uint8_t *start;     /* its tag */
	const uint8_t *payload;   /* a LEN field's bytes; the value's otherwise */
	const uint8_t *next;      /* just past it */
	const uint8_t *bad;       /* where it went wrong, when it did */
	uint64_t plen;            /* a LEN field's length */
	uint64_t number;
	size_t tag_len;
	unsigned wt;
} wire_field;

/* Reads the field at p: NULL, or what is wrong with it (at w->bad). */
static const char *read_field(const uint8_t *p, const uint8_t *end, wire_field *w)
{
	uint64_t tag;
	size_t n = nmp_varint_get(p, end, &tag);
	w->start = w->bad = p;
	if (n == 0)
		return "truncated field tag";
	w->tag_len = n;
	w->number = tag >> 3;
	w->wt = (unsigned)(tag & 7);
	w->plen = 0;
	p += n;
	w->payload = p;
	if (w->number == 0 || w->number > NMP_WIRE_MARKER_FIELD)
		return "invalid field number";
	w->bad = p;
	switch (w->wt) {
	case WT_VARINT: {
		uint64_t v;
		n = nmp_varint_get(p, end, &v);
		if (n == 0)
			return "truncated varint";
		p += n;
		break;
	}
	case WT_I64:
		if ((size_t)(end - p) < 8)
			return "truncated fixed64";
		p += 8;
		break;
	case WT_I32:
		if ((size_t)(end - p) < 4)
			return "truncated fixed32";
		p += 4;
		break;
	case WT_LEN:
		n = nmp_varint_get(p, end, &w->plen);
		if (n == 0)
			return "truncated length";
		p += n;
		if (w->plen > (uint64_t)(end - p)) {
			w->bad = w->start;
			return "field length past the end of its message";
		}
		w->payload = p;
		p += w->plen;
		break;
	default:
		w->bad = w->start;
		return "unsupported wire type";
	}
	w->next = p;
	return NULL;
}

static nmp_status next_field(skel_ctx *c, const uint8_t *p, const uint8_t *end, wire_field *w)
{
	const char *why = read_field(p, end, w);
	return why ? skel_fail(c, w->bad, why) : NMP_OK;
}

/* ---- names that something reads -------------------------------------- */

/*
 * The names read anywhere in the model: node inputs (in every graph and
 * function) and graph inputs and outputs.  An initializer whose name is not
 * among them is read by nothing, so its record may stay as bytes.  The set
 * points into the buffer; it over-approximates, which only keeps more.
 */
static size_t names_find(const skel_ctx *c, const uint8_t *p, uint64_t len, uint32_t h)
{
	size_t i = h & (c->cap_names - 1);
	for (; c->names[i].p; i = (i + 1) & (c->cap_names - 1))
		if (c->names[i].hash == h && c->names[i].len == len && memcmp(c->names[i].p, p, len) == 0)
			break;
	return i;
}

static int names_add(skel_ctx *c, const uint8_t *p, uint64_t len)
{
	if (len == 0)
		return 1; /* "" is an absent optional input: it reads nothing */
	if (len > UINT32_MAX)
		return 0;
	if (4 * (c->n_names + 1) > 3 * c->cap_names) {
		size_t old_cap = c->cap_names;
		name_entry *old = c->names;
		c->cap_names = old_cap ? 2 * old_cap : 1024;
		c->names = calloc(c->cap_names, sizeof *c->names);
		if (!c->names) {
			c->names = old;
			c->cap_names = old_cap;
			return 0;
		}
		for (size_t i = 0; i < old_cap; i++)
			if (old[i].p)
				c->names[names_find(c, old[i].p, old[i].len, old[i].hash)] = old[i];
		free(old);
	}
	uint32_t h = (uint32_t)nmp_hash_bytes(p, len);
	size_t i = names_find(c, p, len, h);
	if (!c->names[i].p) {
		c->names[i] = (name_entry){ .p = p, .len = (uint32_t)len, .hash = h };
		c->n_names++;
	}
	return 1;
}

static int names_has(const skel_ctx *c, const uint8_t *p, uint64_t len)
{
	return c->cap_names && c->names[names_find(c, p, len, (uint32_t)nmp_hash_bytes(p, len))].p != NULL;
}

/*
 * Collects the read names below one message.  `take_name`: the message is a
 * graph input or output, whose field 1 is its name.  Returns 0 when the model
 * cannot be read this way (malformed, training_info's bindings, out of
 * memory): then nothing is kept as bytes, and the skeleton passes report any
 * error.
 */
static int collect_reads(skel_ctx *c, const ProtobufCMessageDescriptor *d, const uint8_t *p,
			 const uint8_t *end, unsigned depth, int take_name)
{
	if (depth > NMP_WIRE_MAX_DEPTH)
		return 0;
	while (p < end) {
		wire_field w;
		if (read_field(p, end, &w))
			return 0;
		drop_behind(c, w.start); /* not w.next: the walk may yet descend into this field */
		p = w.next;
		if (w.wt != WT_LEN)
			continue;
		if (take_name) {
			if (w.number == 1 && !names_add(c, w.payload, w.plen))
				return 0;
			continue;
		}
		if (d == &onnx__node_proto__descriptor && w.number == 1) {
			if (!names_add(c, w.payload, w.plen))
				return 0;
			continue;
		}
		if (d == &onnx__model_proto__descriptor && w.number == 20)
			return 0; /* training_info binds initializers by name: keep every record */
		const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, (unsigned)w.number);
		if (!f || f->type != PROTOBUF_C_TYPE_MESSAGE || f->descriptor == c->bulk)
			continue;
		int io = d == &onnx__graph_proto__descriptor && (w.number == 11 || w.number == 12);
		if (!collect_reads(c, f->descriptor, w.payload, w.payload + w.plen, depth + 1, io))
			return 0;
	}
	return 1;
}

/* ---- initializers kept as bytes --------------------------------------- */

/* Does a known field's wire type agree with the schema, as protobuf-c's parser requires? */
static int wire_type_fits(const ProtobufCFieldDescriptor *f, const wire_field *w)
{
	unsigned want;
	size_t fixed = 0;
	switch (f->type) {
	case PROTOBUF_C_TYPE_MESSAGE:
	case PROTOBUF_C_TYPE_STRING:
	case PROTOBUF_C_TYPE_BYTES:
		return w->wt == WT_LEN;
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_FLOAT:
		want = WT_I32;
		fixed = 4;
		break;
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_FIXED64:
	case PROTOBUF_C_TYPE_DOUBLE:
		want = WT_I64;
		fixed = 8;
		break;
	default:
		want = WT_VARINT;
		break;
	}
	if (w->wt == want)
		return 1;
	if (w->wt != WT_LEN || f->label != PROTOBUF_C_LABEL_REPEATED)
		return 0;
	/* Packed: whole elements only. */
	if (fixed)
		return w->plen % fixed == 0;
	for (const uint8_t *q = w->payload, *e = w->payload + w->plen; q < e;) {
		uint64_t v;
		size_t n = nmp_varint_get(q, e, &v);
		if (n == 0)
			return 0;
		q += n;
	}
	return 1;
}

/*
 * The checks protobuf-c's parser would make on a message that it will not
 * see: every field well formed, known fields of the wire type the schema
 * gives, sub-messages likewise.
 */
static nmp_status check_message(skel_ctx *c, const ProtobufCMessageDescriptor *d, const uint8_t *p,
				const uint8_t *end, unsigned depth)
{
	if (depth > NMP_WIRE_MAX_DEPTH)
		return skel_fail(c, p, "messages nested too deeply");
	while (p < end) {
		wire_field w;
		NMP_TRY(next_field(c, p, end, &w));
		p = w.next;
		if (w.number == NMP_WIRE_MARKER_FIELD)
			return skel_fail(c, w.start, "reserved field number");
		const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, (unsigned)w.number);
		if (!f)
			continue;
		if (!wire_type_fits(f, &w))
			return skel_fail(c, w.start, "wrong wire type for its field");
		if (f->type == PROTOBUF_C_TYPE_MESSAGE)
			NMP_TRY(check_message(c, f->descriptor, w.payload, w.payload + w.plen, depth + 1));
	}
	return NMP_OK;
}

int nmp_wire_tensor_read(const uint8_t *p, size_t len, int64_t *dims, nmp_wire_tensor *t)
{
	const uint8_t *end = p + len;
	*t = (nmp_wire_tensor){ .name = p };
	while (p < end) {
		wire_field w;
		if (read_field(p, end, &w))
			return 0;
		p = w.next;
		switch (w.number) {
		case 1: /* dims: varints, packed or one by one */
			if (w.wt == WT_VARINT) {
				uint64_t v;
				nmp_varint_get(w.payload, w.next, &v);
				if (dims)
					dims[t->n_dims] = (int64_t)v;
				t->n_dims++;
				break;
			}
			for (const uint8_t *q = w.payload, *e = w.payload + w.plen; q < e;) {
				uint64_t v;
				size_t n = nmp_varint_get(q, e, &v);
				if (n == 0)
					return 0;
				if (dims)
					dims[t->n_dims] = (int64_t)v;
				t->n_dims++;
				q += n;
			}
			break;
		case 2: { /* an int32: the varint's low 32 bits, as protobuf-c reads it */
			uint64_t v;
			if (w.wt != WT_VARINT)
				return 0;
			nmp_varint_get(w.payload, w.next, &v);
			t->data_type = (int32_t)(uint32_t)v;
			t->has_data_type = 1;
			break;
		}
		case 8:
			if (w.wt != WT_LEN)
				return 0;
			t->name = w.payload;
			t->name_len = w.plen;
			break;
		case 4:
		case 9:
		case 10:
			if (w.wt != WT_LEN || t->field)
				return 0;
			t->field = (uint32_t)w.number;
			t->payload = w.payload;
			t->payload_len = w.plen;
			break;
		case 12: /* doc_string */
			break;
		default:
			if (w.number <= 16)
				return 0; /* segment, typed data, strings, external data, metadata */
			break;
		}
	}
	return 1;
}

/* What becomes of a GraphProto field. */
enum { PARSE, KEEP_UNREAD, KEEP_COMPACT };

/*
 * Is this GraphProto field an initializer record to keep as bytes: one with
 * no external data (whose location is checked on load), small enough never to
 * be moved to an external data file, that nothing reads (or, with
 * keep_compact, that is compact)?
 */
static int keep_as_bytes(const skel_ctx *c, const ProtobufCMessageDescriptor *d, const wire_field *w)
{
	if (!c->keep_unread || d != &onnx__graph_proto__descriptor || w->number != 5 || w->wt != WT_LEN ||
	    w->plen >= NMP_WIRE_KEEP_MAX)
		return PARSE;
	/* Written back as protobuf-c writes: the tag, the length and the first field's tag minimal. */
	if (w->tag_len != 1 || (size_t)(w->payload - w->start) != 1 + nmp_varint_size(w->plen))
		return PARSE;
	const uint8_t *name = w->payload, *p = w->payload, *end = w->payload + w->plen;
	uint64_t name_len = 0;
	while (p < end) {
		wire_field t;
		if (read_field(p, end, &t))
			return PARSE;
		if (p == w->payload && t.tag_len != nmp_varint_size(t.number << 3))
			return PARSE;
		p = t.next;
		if (t.number == 13 || t.number == 14 || t.number == NMP_WIRE_MARKER_FIELD)
			return PARSE;
		if (t.number == 8 && t.wt == WT_LEN) { /* the last one wins, as protobuf's parser has it */
			name = t.payload;
			name_len = t.plen;
		}
	}
	if (!names_has(c, name, name_len))
		return KEEP_UNREAD;
	nmp_wire_tensor t;
	return c->keep_compact && nmp_wire_tensor_read(w->payload, (size_t)w->plen, NULL, &t) ? KEEP_COMPACT : PARSE;
}

/*
 * A marker in place of the bytes `s` describes: the measuring pass records the
 * span, the writing pass writes the marker with the same index.  *idx is that
 * index; the marker's size is added to *size.
 */
static nmp_status put_marker(skel_ctx *c, nmp_span s, size_t *idx, uint64_t *size)
{
	if (!c->writing) {
		if (!grow((void **)&c->spans, &c->cap_spans, c->n_spans + 1, sizeof *c->spans))
			return nmp_error_set(c->err, NMP_ERR_NOMEM, "%s: out of memory", c->what);
		*idx = c->n_spans++;
		c->spans[*idx] = s;
	} else {
		*idx = c->span_cursor++;
		emit_varint(c, (uint64_t)NMP_WIRE_MARKER_FIELD << 3 | WT_VARINT);
		emit_varint(c, *idx);
	}
	*size += nmp_varint_size((uint64_t)NMP_WIRE_MARKER_FIELD << 3) + nmp_varint_size(*idx);
	return NMP_OK;
}

static nmp_status skel_message(skel_ctx *c, const ProtobufCMessageDescriptor *d,
			       const uint8_t *p, const uint8_t *end, unsigned depth,
			       uint64_t *size_out)
{
	uint64_t size = 0;
	const uint8_t *run_end = NULL; /* end of the run of kept records this message is in */
	size_t run = 0;
	uint64_t parsed = 0;           /* a graph's initializer records parsed so far */

	if (depth > NMP_WIRE_MAX_DEPTH)
		return skel_fail(c, p, "messages nested too deeply");

	while (p < end) {
		wire_field w;
		NMP_TRY(next_field(c, p, end, &w));
		p = w.next;
		if (w.number == NMP_WIRE_MARKER_FIELD && (d == c->bulk || d == &onnx__graph_proto__descriptor))
			return skel_fail(c, w.start, "reserved field number");

		int keep = parsed < UINT32_MAX ? keep_as_bytes(c, d, &w) : PARSE;
		if (keep == PARSE && d == &onnx__graph_proto__descriptor && w.number == 5)
			parsed++;
		if (keep != PARSE) {
			/* Consecutive records share one marker and one span. */
			if (w.start != run_end)
				NMP_TRY(put_marker(c, (nmp_span){ .offset = (uint64_t)(w.start - c->base),
								  .field = NMP_SPAN_KEPT_INITIALIZERS,
								  .before = (uint32_t)parsed },
						   &run, &size));
			if (!c->writing) {
				NMP_TRY(check_message(c, c->bulk, w.payload, w.payload + w.plen, depth + 1));
				c->spans[run].length += (uint64_t)(w.next - w.start);
				if (keep == KEEP_UNREAD) {
					c->n_kept++;
				} else {
					if (!grow((void **)&c->compact, &c->cap_compact, c->n_compact + 1, sizeof *c->compact))
						return nmp_error_set(c->err, NMP_ERR_NOMEM, "%s: out of memory", c->what);
					c->compact[c->n_compact++] = (uint64_t)(w.start - c->base);
				}
			}
			run_end = w.next;
			drop_behind(c, p);
			continue;
		}

		if (w.wt == WT_LEN && is_bulk_field(c, d, w.number)) {
			/* Payload bytes stay in the file; the skeleton keeps a marker. */
			size_t idx;
			NMP_TRY(put_marker(c, (nmp_span){ .offset = (uint64_t)(w.payload - c->base), .length = w.plen,
							  .field = (uint32_t)w.number },
					   &idx, &size));
			drop_behind(c, p);
			continue;
		}

		const ProtobufCFieldDescriptor *f =
			protobuf_c_message_descriptor_get_field(d, (unsigned)w.number);
		if (w.wt == WT_LEN && f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
			size_t slot;
			uint64_t child = 0;
			const uint8_t *sub = w.payload, *sub_end = w.payload + w.plen;
			/* Tag bytes are copied as found, so a non-minimal tag survives. */
			if (!c->writing) {
				if (!grow((void **)&c->sizes, &c->cap_sizes, c->n_sizes + 1, sizeof *c->sizes))
					return nmp_error_set(c->err, NMP_ERR_NOMEM, "%s: out of memory", c->what);
				slot = c->n_sizes++;
				NMP_TRY(skel_message(c, f->descriptor, sub, sub_end, depth + 1, &child));
				c->sizes[slot] = child;
			} else {
				slot = c->cursor++;
				child = c->sizes[slot];
				emit(c, w.start, w.tag_len);
				emit_varint(c, child);
				NMP_TRY(skel_message(c, f->descriptor, sub, sub_end, depth + 1, &child));
			}
			size += w.tag_len + nmp_varint_size(child) + child;
			continue;
		}

		/* Anything else, known or unknown to the schema, is kept verbatim. */
		if (c->writing)
			emit(c, w.start, (size_t)(p - w.start));
		size += (uint64_t)(p - w.start);
	}
	*size_out = size;
	return NMP_OK;
}

nmp_status nmp_wire_skeleton(const uint8_t *buf, size_t len,
			     const ProtobufCMessageDescriptor *root,
			     const ProtobufCMessageDescriptor *bulk, unsigned flags,
			     const char *what, nmp_skeleton *out, nmp_error *err)
{
	skel_ctx c = { .base = buf, .bulk = bulk, .what = what, .err = err };
	if (flags & NMP_WIRE_FILE_MAPPING) {
		c.drop_pages = 1;
		c.page = (uintptr_t)sysconf(_SC_PAGESIZE);
		c.dropped = (uintptr_t)buf;
	}
	uint64_t total = 0;
	nmp_status s;

	memset(out, 0, sizeof *out);
	if ((flags & NMP_WIRE_KEEP_UNREAD) && root == &onnx__model_proto__descriptor &&
	    bulk == &onnx__tensor_proto__descriptor) {
		c.keep_unread = collect_reads(&c, root, buf, buf + len, 0, 0);
		c.keep_compact = c.keep_unread && (flags & NMP_WIRE_KEEP_COMPACT);
		c.dropped = (uintptr_t)buf;
	}
	s = skel_message(&c, root, buf, buf + len, 0, &total);
	if (s != NMP_OK)
		goto fail;

	c.out = malloc(total ? total : 1);
	if (!c.out) {
		s = nmp_error_set(err, NMP_ERR_NOMEM, "%s: out of memory for the model structure", what);
		goto fail;
	}
	c.writing = 1;
	c.dropped = (uintptr_t)buf;
	uint64_t again = 0;
	s = skel_message(&c, root, buf, buf + len, 0, &again);
	NMP_ASSERT(s == NMP_OK && again == total && c.out_len == total);

	free(c.sizes);
	free(c.names);
	out->data = c.out;
	out->len = c.out_len;
	out->spans = c.spans;
	out->n_spans = c.n_spans;
	out->n_kept = c.n_kept;
	out->compact = c.compact;
	out->n_compact = c.n_compact;
	return NMP_OK;
fail:
	free(c.sizes);
	free(c.names);
	free(c.compact);
	free(c.spans);
	free(c.out);
	return s;
}

void nmp_skeleton_free(nmp_skeleton *s)
{
	free(s->data);
	free(s->spans);
	free(s->compact);
	memset(s, 0, sizeof *s);
}
