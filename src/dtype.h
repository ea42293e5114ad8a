/*
 * dtype.h — facts about ONNX tensor element types (TensorProto.DataType).
 *
 * The raw layout of a tensor is ceil(numel * bits / 8) little-endian bytes;
 * sub-byte types pack LSB first.  Which typed field (float_data, int32_data,
 * ...) may hold a type, and how many entries it takes, is also here, so the
 * loader can check a payload against its dims before anything trusts it.
 */
#ifndef NMP_DTYPE_H
#define NMP_DTYPE_H

#include <stdbool.h>
#include <stdint.h>

enum {
	NMP_DT_UNDEFINED = 0, NMP_DT_FLOAT = 1, NMP_DT_UINT8 = 2, NMP_DT_INT8 = 3,
	NMP_DT_UINT16 = 4, NMP_DT_INT16 = 5, NMP_DT_INT32 = 6, NMP_DT_INT64 = 7,
	NMP_DT_STRING = 8, NMP_DT_BOOL = 9, NMP_DT_FLOAT16 = 10, NMP_DT_DOUBLE = 11,
	NMP_DT_UINT32 = 12, NMP_DT_UINT64 = 13, NMP_DT_COMPLEX64 = 14,
	NMP_DT_COMPLEX128 = 15, NMP_DT_BFLOAT16 = 16,
};

/* TensorProto field numbers that can carry a payload. */
enum nmp_field {
	NMP_FIELD_NONE = 0,
	NMP_FIELD_FLOAT_DATA = 4,
	NMP_FIELD_INT32_DATA = 5,
	NMP_FIELD_STRING_DATA = 6,
	NMP_FIELD_INT64_DATA = 7,
	NMP_FIELD_RAW_DATA = 9,
	NMP_FIELD_DOUBLE_DATA = 10,
	NMP_FIELD_UINT64_DATA = 11,
};

/* Bits per element in the raw layout; 0 for STRING and unknown types. */
unsigned nmp_dtype_bits(int32_t dtype);

/* "FLOAT", "FLOAT16", ... or "TYPE<n>" for unknown values (static storage). */
const char *nmp_dtype_name(int32_t dtype);

/*
 * How many entries of typed field `field` a tensor of `numel` elements of
 * `dtype` takes.  Returns false when that field may not hold that type.
 */
bool nmp_dtype_field_count(int32_t dtype, enum nmp_field field, uint64_t numel,
			   uint64_t *count);

#endif
