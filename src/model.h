/*
 * model.h — model I/O: load an ONNX model without copying its weights, read
 * tensor payloads, and save a model atomically, faithfully and fast.
 *
 * Load maps the file and hands protobuf-c a skeleton of it (see wire.h): the
 * model structure is unpacked normally, while every raw_data and packed
 * float/double payload stays in the mapping and is described by an
 * nmp_tensor (where its bytes are, how many, of which type).  External data
 * files are validated and mapped read-only.  Everything later passes trust is
 * checked here: dims, element counts, payload lengths, external locations.
 *
 * Model I/O knows nothing of sparsity.  It hands payloads to a caller's
 * function during save (nmp_save_opts.on_payload), so that masking happens in
 * place in the output, never in the input.
 *
 * Ownership: nmp_model_load allocates the model, nmp_model_free releases it
 * and everything reachable from it.  Pointers into the model (tensors,
 * names, protobuf messages) are borrowed and live as long as the model.
 */
#ifndef NMP_MODEL_H
#define NMP_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "dtype.h"
#include "error.h"
#include "onnx.pb-c.h"

typedef enum nmp_storage {
	NMP_STORE_NONE,     /* no payload: zero elements, or strings only */
	NMP_STORE_FILE,     /* one contiguous span of the model file */
	NMP_STORE_EXTERNAL, /* a span of an external data file */
	NMP_STORE_HEAP,     /* decoded into the message by protobuf-c (varint fields) */
} nmp_storage;

/*
 * A tensor of the model.  Most have their TensorProto; a small initializer
 * that nodes read may instead be kept as its bytes in the file (a compact
 * record, wire.h), which costs far less: then `proto` is NULL,
 * `kept_run` names the run of records it lies in, and the description here
 * is all there is.  Its payload is always in the model file, and what the
 * writers do with it is to copy it, or mask it where it lies.
 */
typedef struct nmp_tensor {
	Onnx__TensorProto *proto;  /* borrowed; NULL for a compact record */
	const char *name;          /* "" when unnamed */
	const int64_t *dims;
	uint32_t n_dims;
	uint32_t kept_run;         /* compact: its run in nmp_model.runs, plus 1; 0 otherwise */
	uint64_t numel;
	uint64_t nbytes;           /* raw-layout size; 0 when the type has none */
	uint64_t offset, length;   /* span in that file, for FILE and EXTERNAL */
	int32_t dtype;
	unsigned file;             /* 0: the model file, k > 0: external file k */
	enum nmp_field field;      /* field holding the payload (RAW_DATA for external) */
	nmp_storage storage;
} nmp_tensor;

typedef struct nmp_data_file {
	char *path;                /* as opened: model dir + location */
	int fd;
	const uint8_t *map;
	uint64_t size;
	dev_t dev;
	ino_t ino;
} nmp_data_file;

/*
 * A run of adjacent initializer records kept as bytes (wire.h), each record
 * with its tag: after the graph's `before` first parsed initializers.  The
 * graph holds it as an unknown field until a writer puts it back in place.
 */
typedef struct nmp_kept_run {
	const Onnx__GraphProto *graph;
	uint64_t offset, length;   /* in the model file */
	uint32_t before;
} nmp_kept_run;

typedef struct nmp_model {
	char *path;
	char *dir;                 /* directory holding the model, for external data */
	Onnx__ModelProto *proto;
	nmp_tensor *tensors;       /* every TensorProto in the model, in walk order */
	size_t n_tensors;
	nmp_data_file *files;      /* files[0] is the model file itself */
	size_t n_files;
	size_t n_kept;             /* initializer records nothing reads, kept as bytes (wire.h) */
	size_t n_compact;          /* tensors that are compact records, the last ones of `tensors` */
	nmp_kept_run *runs;        /* every run, graph by graph, each graph's in file order */
	size_t n_runs;
	void *graphs;              /* graph -> its compact tensors (private) */
	bool has_own_metadata;     /* metadata_props already holds nmprune.* keys */
	void *index;               /* TensorProto -> tensor lookup (private) */
	void *arena;               /* where protobuf-c's small allocations live (private) */
} nmp_model;

nmp_status nmp_model_load(const char *path, nmp_model **out, nmp_error *err);
void nmp_model_free(nmp_model **m);

/* The tensor record of a TensorProto of this model, or NULL. */
const nmp_tensor *nmp_model_tensor_of(const nmp_model *m, const Onnx__TensorProto *t);

/*
 * Graph g's initializers, parsed and compact alike: the i-th of
 * nmp_model_n_initializers(m, g), the parsed ones first in their order.
 */
size_t nmp_model_n_initializers(const nmp_model *m, const Onnx__GraphProto *g);
const nmp_tensor *nmp_model_initializer(const nmp_model *m, const Onnx__GraphProto *g, size_t i);

/*
 * A read-only view of a tensor's payload in its raw layout (little-endian,
 * ceil(numel * bits / 8) bytes).  For file and external storage the view
 * points into the mapping; for heap storage it is converted into a buffer
 * the view owns.  nmp_view_release drops the pages and frees the buffer.
 */
typedef struct nmp_view {
	const void *data;
	uint64_t length;
	void *owned;
} nmp_view;

nmp_status nmp_model_view(const nmp_model *m, const nmp_tensor *t, nmp_view *v, nmp_error *err);
void nmp_view_release(nmp_view *v);

/* Unmaps the whole pages inside [data, data + len) of a read-only file mapping. */
void nmp_drop_pages(const void *data, uint64_t len);

/* Raw-layout conversion of typed fields (shared with the writer). */
bool nmp_heap_to_raw(const nmp_tensor *t, void *dst);
/* Writes back the elements of `src` that differ from the typed field. */
void nmp_raw_to_heap(const nmp_tensor *t, const void *src);

/* ---- save ------------------------------------------------------------- */

typedef struct nmp_kv {
	const char *key;
	const char *value;
} nmp_kv;

/*
 * Called once for each tensor in nmp_save_opts.visit, with its payload in
 * raw layout in the writable output: what the function leaves in `data` is
 * what the output holds.  When `src` is not NULL, `data` is not yet filled:
 * the original bytes are at `src` (read-only, the input's), and the function
 * must write every byte of `data`, which saves copying them twice.  When
 * `src` is NULL, `data` holds the original bytes.  The input is never written.
 */
typedef nmp_status (*nmp_payload_fn)(void *ctx, size_t tensor, void *data, const void *src,
				     uint64_t length, nmp_error *err);
/* Called once after every visit: the metadata entries to record (owned by ctx). */
typedef nmp_status (*nmp_metadata_fn)(void *ctx, const nmp_kv **kv, size_t *n, nmp_error *err);

typedef struct nmp_save_opts {
	const char *external_data;   /* move tensors >= threshold into this file */
	uint64_t external_threshold; /* bytes; 0 means 1024 */
	bool in_place;               /* the output replaces the input */
	bool force_general;          /* re-serialize even where a copy would do */
	uint64_t proto_limit;        /* 0: NMP_PROTO_LIMIT (tests lower it) */

	const size_t *visit;         /* tensor indices handed to on_payload */
	size_t n_visit;
	nmp_payload_fn on_payload;
	nmp_metadata_fn on_metadata;
	void *ctx;

	/*
	 * Called with ctx once the output is written and synced, before anything
	 * is renamed; a failure there leaves nothing.  Then `pending` (side
	 * outputs, may be NULL) is synced and renamed, and the model last.
	 */
	nmp_status (*before_commit)(void *ctx, nmp_error *err);
	struct nmp_pending *pending;
} nmp_save_opts;

typedef struct nmp_save_result {
	bool general_path;           /* re-serialized rather than copied */
	bool auto_external;          /* moved to external data to stay under 2 GiB */
	char data_path[4096];        /* external data file written, "" if none */
	uint64_t model_bytes;        /* size of the .onnx written */
} nmp_save_result;

/* Largest serialized model protobuf accepts (2 GiB - 1). */
#define NMP_PROTO_LIMIT 2147483647ull

nmp_status nmp_model_save(nmp_model *m, const char *out_path, const nmp_save_opts *o,
			  nmp_save_result *res, nmp_error *err);

/*
 * The model as one protobuf in memory (*buf, malloc'd, *len bytes) with
 * every payload inline and n_extra extra graph outputs named as given: what
 * ONNX Runtime loads to run the model.  payloads (may be NULL) replaces the
 * values of tensor i by payloads[i] (raw layout, nbytes) where not NULL.
 * NMP_ERR_MODEL past 2 GiB.  The model is left as it was.
 */
nmp_status nmp_model_serialize(nmp_model *m, const void *const *payloads, const char *const *extra_outputs,
			       size_t n_extra, uint8_t **buf, size_t *len, nmp_error *err);

#endif
