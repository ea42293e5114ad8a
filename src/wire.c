#include "wire.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

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

static nmp_status skel_message(skel_ctx *c, const ProtobufCMessageDescriptor *d,
			       const uint8_t *p, const uint8_t *end, unsigned depth,
			       uint64_t *size_out)
{
	uint64_t size = 0;

	if (depth > NMP_WIRE_MAX_DEPTH)
		return skel_fail(c, p, "messages nested too deeply");

	while (p < end) {
		const uint8_t *field_start = p;
		uint64_t tag;
		size_t n = nmp_varint_get(p, end, &tag);
		if (n == 0)
			return skel_fail(c, p, "truncated field tag");
		p += n;
		const size_t tag_len = n;
		uint64_t number = tag >> 3;
		unsigned wt = (unsigned)(tag & 7);
		if (number == 0 || number > NMP_WIRE_MARKER_FIELD)
			return skel_fail(c, field_start, "invalid field number");
		if (number == NMP_WIRE_MARKER_FIELD && d == c->bulk)
			return skel_fail(c, field_start, "reserved field number");

		const uint8_t *payload = p;
		uint64_t plen = 0;
		switch (wt) {
		case WT_VARINT: {
			uint64_t v;
			n = nmp_varint_get(p, end, &v);
			if (n == 0)
				return skel_fail(c, p, "truncated varint");
			p += n;
			break;
		}
		case WT_I64:
			if ((size_t)(end - p) < 8)
				return skel_fail(c, p, "truncated fixed64");
			p += 8;
			break;
		case WT_I32:
			if ((size_t)(end - p) < 4)
				return skel_fail(c, p, "truncated fixed32");
			p += 4;
			break;
		case WT_LEN:
			n = nmp_varint_get(p, end, &plen);
			if (n == 0)
				return skel_fail(c, p, "truncated length");
			p += n;
			if (plen > (uint64_t)(end - p))
				return skel_fail(c, field_start, "field length past the end of its message");
			payload = p;
			p += plen;
			break;
		default:
			return skel_fail(c, field_start, "unsupported wire type");
		}

		if (wt == WT_LEN && is_bulk_field(c, d, number)) {
			/* Payload bytes stay in the file; the skeleton keeps a marker. */
			size_t idx;
			if (!c->writing) {
				if (!grow((void **)&c->spans, &c->cap_spans, c->n_spans + 1, sizeof *c->spans))
					return nmp_error_set(c->err, NMP_ERR_NOMEM, "%s: out of memory", c->what);
				idx = c->n_spans++;
				c->spans[idx] = (nmp_span){
					.offset = (uint64_t)(payload - c->base),
					.length = plen,
					.field = (uint32_t)number,
				};
			} else {
				idx = c->span_cursor++;
				emit_varint(c, (uint64_t)NMP_WIRE_MARKER_FIELD << 3 | WT_VARINT);
				emit_varint(c, idx);
			}
			size += nmp_varint_size((uint64_t)NMP_WIRE_MARKER_FIELD << 3) + nmp_varint_size(idx);
			drop_behind(c, p);
			continue;
		}

		const ProtobufCFieldDescriptor *f =
			protobuf_c_message_descriptor_get_field(d, (unsigned)number);
		if (wt == WT_LEN && f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
			size_t slot;
			uint64_t child = 0;
			/* Tag bytes are copied as found, so a non-minimal tag survives. */
			if (!c->writing) {
				if (!grow((void **)&c->sizes, &c->cap_sizes, c->n_sizes + 1, sizeof *c->sizes))
					return nmp_error_set(c->err, NMP_ERR_NOMEM, "%s: out of memory", c->what);
				slot = c->n_sizes++;
				NMP_TRY(skel_message(c, f->descriptor, payload, payload + plen, depth + 1, &child));
				c->sizes[slot] = child;
			} else {
				slot = c->cursor++;
				child = c->sizes[slot];
				emit(c, field_start, tag_len);
				emit_varint(c, child);
				NMP_TRY(skel_message(c, f->descriptor, payload, payload + plen, depth + 1, &child));
			}
			size += tag_len + nmp_varint_size(child) + child;
			continue;
		}

		/* Anything else, known or unknown to the schema, is kept verbatim. */
		if (c->writing)
			emit(c, field_start, (size_t)(p - field_start));
		size += (uint64_t)(p - field_start);
	}
	*size_out = size;
	return NMP_OK;
}

nmp_status nmp_wire_skeleton(const uint8_t *buf, size_t len,
			     const ProtobufCMessageDescriptor *root,
			     const ProtobufCMessageDescriptor *bulk, int file_mapping,
			     const char *what, nmp_skeleton *out, nmp_error *err)
{
	skel_ctx c = { .base = buf, .bulk = bulk, .what = what, .err = err };
	if (file_mapping) {
		c.drop_pages = 1;
		c.page = (uintptr_t)sysconf(_SC_PAGESIZE);
		c.dropped = (uintptr_t)buf;
	}
	uint64_t total = 0;
	nmp_status s;

	memset(out, 0, sizeof *out);
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
	out->data = c.out;
	out->len = c.out_len;
	out->spans = c.spans;
	out->n_spans = c.n_spans;
	return NMP_OK;
fail:
	free(c.sizes);
	free(c.spans);
	free(c.out);
	return s;
}

void nmp_skeleton_free(nmp_skeleton *s)
{
	free(s->data);
	free(s->spans);
	memset(s, 0, sizeof *s);
}
