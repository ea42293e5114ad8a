/*
 * wire.h — protobuf wire-format helpers for model I/O.
 *
 * The skeleton: a copy of a serialized message in which every bulk tensor
 * payload (TensorProto.raw_data, and the packed float_data and double_data)
 * is replaced by a marker, an unknown varint field whose value indexes a span
 * table.  Enclosing length prefixes are recomputed, so the skeleton is a valid
 * message that protobuf-c unpacks in time and memory proportional to the
 * model's structure, not its weights.  The span table gives each payload's
 * byte range in the original buffer, in wire order.
 *
 * The builder walks the wire data with the generated descriptors: it knows
 * sub-messages from the schema, never from guessing.  It is also the first
 * line of defence against hostile files: truncated fields, bad wire types,
 * lengths past the end and nesting deeper than NMP_WIRE_MAX_DEPTH are
 * rejected with the byte offset, before protobuf-c recurses into anything.
 */
#ifndef NMP_WIRE_H
#define NMP_WIRE_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Highest field number protobuf allows; reserved here for the span marker. */
#define NMP_WIRE_MARKER_FIELD 536870911u
/* Message nesting limit (a subgraph costs three levels: graph, node, attribute). */
#define NMP_WIRE_MAX_DEPTH 192

/*
 * Initializers kept as bytes (NMP_WIRE_KEEP_UNREAD): a GraphProto.initializer
 * record that no node input, graph input or graph output names anywhere in
 * the model, with no external data, of fewer than NMP_WIRE_KEEP_MAX bytes, is
 * read by nothing nmprune does.  Each run of such records in a graph becomes
 * one marker and one span (field NMP_SPAN_KEPT_INITIALIZERS, offset at the
 * first record's tag), so a model of millions of them costs what its graph
 * structure costs.  They are checked as protobuf-c would check them (wire
 * well formed, wire types as the schema says), not as tensors.  Only records
 * that protobuf-c would write back byte for byte are kept (minimal tags and
 * length), so that a writer may put each back where it was.
 */
#define NMP_SPAN_KEPT_INITIALIZERS 0u
#define NMP_WIRE_KEEP_MAX 1024u

/*
 * Read initializers kept as bytes too (NMP_WIRE_KEEP_COMPACT): a record under
 * NMP_WIRE_KEEP_MAX bytes that something does read joins the runs when it is
 * compact (nmp_wire_tensor_read), and its offset is listed in the skeleton,
 * so that the loader describes it from its bytes (name, type, dims, payload
 * span) without protobuf-c's message for it.
 */
enum {
	NMP_WIRE_FILE_MAPPING = 1, /* buf is a page-aligned read-only file mapping: pages may be dropped once read */
	NMP_WIRE_KEEP_UNREAD = 2,  /* keep unread initializer records as bytes (see above) */
	NMP_WIRE_KEEP_COMPACT = 4, /* with KEEP_UNREAD: keep compact read ones too, listed */
};

typedef struct nmp_span {
	uint64_t offset;  /* payload bytes, relative to the start of the buffer */
	uint64_t length;
	uint32_t field;   /* TensorProto field number the bytes belong to, or NMP_SPAN_KEPT_INITIALIZERS */
	uint32_t before;  /* kept: how many of the graph's initializers that are parsed come before it */
} nmp_span;

typedef struct nmp_skeleton {
	uint8_t *data;
	size_t len;
	nmp_span *spans;
	size_t n_spans;
	size_t n_kept;    /* unread initializer records kept as bytes */
	uint64_t *compact; /* offsets (at the record's tag) of the read ones kept, ascending */
	size_t n_compact;
} nmp_skeleton;

/*
 * Builds the skeleton of `buf` (a serialized `root` message).  `bulk` is the
 * TensorProto descriptor.  `flags` are NMP_WIRE_* (never FILE_MAPPING for
 * heap memory; KEEP_UNREAD only for an ONNX ModelProto).  `what` names the
 * buffer in error messages.
 */
nmp_status nmp_wire_skeleton(const uint8_t *buf, size_t len,
			     const ProtobufCMessageDescriptor *root,
			     const ProtobufCMessageDescriptor *bulk, unsigned flags,
			     const char *what, nmp_skeleton *out, nmp_error *err);
void nmp_skeleton_free(nmp_skeleton *s);

/*
 * A compact TensorProto: name, data_type, dims, doc_string and unknown fields,
 * and at most one payload field, once: raw_data, or packed float_data or
 * double_data.  Anything else (typed varint data, strings, segments, external
 * data) is not compact.
 */
typedef struct nmp_wire_tensor {
	const uint8_t *name;      /* not terminated; the last name field wins */
	uint64_t name_len;
	int32_t data_type;
	int has_data_type;
	size_t n_dims;
	uint32_t field;           /* 9, 4 or 10; 0 without a payload */
	const uint8_t *payload;
	uint64_t payload_len;
} nmp_wire_tensor;

/*
 * Reads a TensorProto's bytes (already checked as protobuf-c would check
 * them) into *t; `dims`, when not NULL, receives the n_dims dims (counted by
 * a first call with NULL).  Returns 0 when the tensor is not compact.
 */
int nmp_wire_tensor_read(const uint8_t *p, size_t len, int64_t *dims, nmp_wire_tensor *t);

/* Varint helpers shared with the writer. */
size_t nmp_varint_size(uint64_t v);
size_t nmp_varint_put(uint8_t *p, uint64_t v);
/* Returns bytes consumed, 0 on truncation or overlong encoding. */
size_t nmp_varint_get(const uint8_t *p, const uint8_t *end, uint64_t *v);

#endif
