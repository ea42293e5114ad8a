#include "dtype.h"

#include <stdio.h>

unsigned nmp_dtype_bits(int32_t dtype)
{
	switch (dtype) {
	case NMP_DT_UINT8: case NMP_DT_INT8: case NMP_DT_BOOL:
	case 17: case 18: case 19: case 20: case 24:     /* FLOAT8 variants */
		return 8;
	case NMP_DT_UINT16: case NMP_DT_INT16: case NMP_DT_FLOAT16:
	case NMP_DT_BFLOAT16:
		return 16;
	case NMP_DT_FLOAT: case NMP_DT_INT32: case NMP_DT_UINT32:
		return 32;
	case NMP_DT_INT64: case NMP_DT_UINT64: case NMP_DT_DOUBLE:
	case NMP_DT_COMPLEX64:
		return 64;
	case NMP_DT_COMPLEX128:
		return 128;
	case 21: case 22: case 23:                        /* UINT4, INT4, FLOAT4E2M1 */
		return 4;
	case 25: case 26:                                 /* UINT2, INT2 */
		return 2;
	case 27: case 28:                                 /* FLOAT6 variants */
		return 6;
	default:
		return 0;
	}
}

const char *nmp_dtype_name(int32_t dtype)
{
	static const char *const names[] = {
		"UNDEFINED", "FLOAT", "UINT8", "INT8", "UINT16", "INT16",
		"INT32", "INT64", "STRING", "BOOL", "FLOAT16", "DOUBLE",
		"UINT32", "UINT64", "COMPLEX64", "COMPLEX128", "BFLOAT16",
		"FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
		"UINT4", "INT4", "FLOAT4E2M1", "FLOAT8E8M0", "UINT2", "INT2",
		"FLOAT6E2M3", "FLOAT6E3M2",
	};
	static _Thread_local char buf[24];
	if (dtype >= 0 && (unsigned)dtype < sizeof names / sizeof names[0])
		return names[dtype];
	snprintf(buf, sizeof buf, "TYPE%d", (int)dtype);
	return buf;
}

bool nmp_dtype_field_count(int32_t dtype, enum nmp_field field, uint64_t numel,
			   uint64_t *count)
{
	unsigned bits = nmp_dtype_bits(dtype);
	switch (field) {
	case NMP_FIELD_FLOAT_DATA:
		if (dtype != NMP_DT_FLOAT && dtype != NMP_DT_COMPLEX64)
			return false;
		*count = dtype == NMP_DT_COMPLEX64 ? 2 * numel : numel;
		return true;
	case NMP_FIELD_DOUBLE_DATA:
		if (dtype != NMP_DT_DOUBLE && dtype != NMP_DT_COMPLEX128)
			return false;
		*count = dtype == NMP_DT_COMPLEX128 ? 2 * numel : numel;
		return true;
	case NMP_FIELD_INT64_DATA:
		*count = numel;
		return dtype == NMP_DT_INT64;
	case NMP_FIELD_UINT64_DATA:
		*count = numel;
		return dtype == NMP_DT_UINT32 || dtype == NMP_DT_UINT64;
	case NMP_FIELD_STRING_DATA:
		*count = numel;
		return dtype == NMP_DT_STRING;
	case NMP_FIELD_INT32_DATA:
		if (bits == 0 || bits > 32 || dtype == NMP_DT_FLOAT || dtype == NMP_DT_UINT32)
			return false;
		if (bits == 4)
			*count = (numel + 1) / 2;
		else if (bits == 2)
			*count = (numel + 3) / 4;
		else
			*count = numel;
		return true;
	default:
		return false;
	}
}
