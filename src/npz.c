/*
 * npz.c — numpy's .npz archives (see npz.h).  The zip layout is read from the
 * end of central directory record back: central directory entries (with
 * their zip64 extra field where a size or offset does not fit 32 bits), then
 * each member's local header for where its bytes begin.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "dtype.h"
#include "npz.h"

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_END 0x06054b50u
#define SIG_END64 0x06064b50u
#define SIG_LOCATOR64 0x07064b50u

static uint64_t le(const uint8_t *p, int bytes)
{
	uint64_t v = 0;
	for (int b = bytes - 1; b >= 0; b--)
		v = v << 8 | p[b];
	return v;
}

/* Does [at, at + len) lie inside a file of size bytes? */
static bool inside(uint64_t at, uint64_t len, uint64_t size)
{
	return at <= size && len <= size - at;
}

typedef struct zip_dir {
	uint64_t entries, offset;
} zip_dir;

static nmp_status find_directory(const uint8_t *map, uint64_t size, const char *path, zip_dir *dir, nmp_error *err)
{
	if (size < 22)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: not a .npz archive (too short)", path);
	uint64_t end = 0;
	bool found = false;
	for (uint64_t at = size - 22, stop = size - 22 > 65535 ? size - 22 - 65535 : 0; !found; at--) {
		if (le(map + at, 4) == SIG_END) {
			end = at;
			found = true;
		}
		if (at == stop)
			break;
	}
	if (!found)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: not a .npz archive (no zip directory)", path);
	dir->entries = le(map + end + 10, 2);
	dir->offset = le(map + end + 16, 4);
	if (dir->entries == 0xffff || dir->offset == 0xffffffffu || le(map + end + 12, 4) == 0xffffffffu) {
		if (end < 20 || le(map + end - 20, 4) != SIG_LOCATOR64)
			return nmp_error_set(err, NMP_ERR_USAGE, "%s: zip64 directory without its locator", path);
		uint64_t at = le(map + end - 20 + 8, 8);
		if (!inside(at, 56, size) || le(map + at, 4) != SIG_END64)
			return nmp_error_set(err, NMP_ERR_USAGE, "%s: zip64 end record out of place", path);
		dir->entries = le(map + at + 32, 8);
		dir->offset = le(map + at + 48, 8);
	}
	if (dir->offset > size)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: zip directory past the end of the file", path);
	return NMP_OK;
}

/* ---- .npy headers ----------------------------------------------------------------------------- */

/* The value after 'key': in a header dict, or NULL. */
static const char *dict_value(const char *h, size_t len, const char *key)
{
	char q1[40], q2[40];
	snprintf(q1, sizeof q1, "'%s'", key);
	snprintf(q2, sizeof q2, "\"%s\"", key);
	for (size_t i = 0; i + strlen(q1) <= len; i++)
		if (memcmp(h + i, q1, strlen(q1)) == 0 || memcmp(h + i, q2, strlen(q2)) == 0) {
			size_t j = i + strlen(q1);
			while (j < len && (h[j] == ' ' || h[j] == ':'))
				j++;
			return j < len ? h + j : NULL;
		}
	return NULL;
}

static int32_t npy_dtype(const char *d, size_t len, bool *big)
{
	static const struct { const char *code; int32_t dt; } map[] = {
		{ "f4", NMP_DT_FLOAT }, { "f2", NMP_DT_FLOAT16 }, { "f8", NMP_DT_DOUBLE }, { "i1", NMP_DT_INT8 },
		{ "i2", NMP_DT_INT16 }, { "i4", NMP_DT_INT32 }, { "i8", NMP_DT_INT64 }, { "u1", NMP_DT_UINT8 },
		{ "u2", NMP_DT_UINT16 }, { "u4", NMP_DT_UINT32 }, { "u8", NMP_DT_UINT64 }, { "b1", NMP_DT_BOOL },
	};
	*big = false;
	if (len != 3 || (d[0] != '<' && d[0] != '|' && d[0] != '=' && d[0] != '>'))
		return NMP_DT_UNDEFINED;
	for (size_t i = 0; i < sizeof map / sizeof *map; i++)
		if (memcmp(d + 1, map[i].code, 2) == 0) {
			*big = d[0] == '>' && d[2] != '1';
			return map[i].dt;
		}
	return NMP_DT_UNDEFINED;
}

/* The header of the .npy bytes b (len): element type, shape, where the elements begin. */
static nmp_status npy_parse(const uint8_t *b, uint64_t len, const char *path, nmp_npy *a, nmp_error *err)
{
	const char *m = a->name;
	if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s' is not a .npy array", path, m);
	const uint64_t start = b[6] == 1 ? 10 : 12, hlen = b[6] == 1 ? le(b + 8, 2) : len >= 12 ? le(b + 8, 4) : len;
	if (b[6] < 1 || b[6] > 3 || !inside(start, hlen, len))
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s': bad .npy header", path, m);
	const char *h = (const char *)b + start;
	const char *descr = dict_value(h, (size_t)hlen, "descr"), *order = dict_value(h, (size_t)hlen, "fortran_order"),
		   *shape = dict_value(h, (size_t)hlen, "shape");
	const char *hend = h + hlen;
	if (!descr || !order || !shape)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s': .npy header lacks descr, fortran_order or shape",
				     path, m);
	if (*descr != '\'' && *descr != '"')
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s': structured arrays are not read", path, m);
	const char *dend = memchr(descr + 1, *descr, (size_t)(hend - descr - 1));
	bool big;
	a->dtype = dend ? npy_dtype(descr + 1, (size_t)(dend - descr - 1), &big) : NMP_DT_UNDEFINED;
	if (a->dtype == NMP_DT_UNDEFINED)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s': dtype %.*s is not read (numeric or bool)", path,
				     m, dend ? (int)(dend - descr - 1) : 8, descr + 1);
	if (big)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s' is big-endian: save x.astype(x.dtype.newbyteorder('<'))",
				     path, m);
	if (*shape != '(')
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s': bad shape in its .npy header", path, m);
	a->rank = 0;
	uint64_t numel = 1;
	for (const char *p = shape + 1; p < hend && *p != ')';) {
		while (p < hend && (*p == ' ' || *p == ','))
			p++;
		if (p < hend && *p == ')')
			break;
		char *e;
		long long v = strtoll(p, &e, 10);
		if (e == p || e > hend || v < 0 || a->rank == NMP_NPY_MAX_RANK ||
		    (v > 0 && numel > (UINT64_C(1) << 40) / (uint64_t)v))
			return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s': bad shape in its .npy header", path, m);
		a->dims[a->rank++] = v;
		numel *= (uint64_t)v;
		p = e;
	}
	if (strncmp(order, "True", 4) == 0 && a->rank > 1)
		return nmp_error_set(err, NMP_ERR_USAGE,
				     "%s: member '%s' is in Fortran order: save np.ascontiguousarray(x)", path, m);
	a->data = b + start + hlen;
	a->nbytes = len - start - hlen;
	if (a->nbytes != numel * (nmp_dtype_bits(a->dtype) / 8))
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s': %llu bytes of data for its shape's %llu", path, m,
				     (unsigned long long)a->nbytes,
				     (unsigned long long)(numel * (nmp_dtype_bits(a->dtype) / 8)));
	return NMP_OK;
}

/* ---- members ---------------------------------------------------------------------------------- */

static nmp_status inflate_member(const uint8_t *src, uint64_t clen, uint64_t ulen, const char *path, nmp_npy *a,
				 nmp_error *err)
{
	uint8_t *out = malloc(ulen ? ulen : 1);
	if (!out)
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: member '%s': out of memory for %llu bytes", path, a->name,
				     (unsigned long long)ulen);
	a->inflated = out;
	z_stream zs = { 0 };
	if (inflateInit2(&zs, -MAX_WBITS) != Z_OK)
		return nmp_error_set(err, NMP_ERR_NOMEM, "%s: zlib: %s", path, zs.msg ? zs.msg : "cannot start");
	uint64_t in_done = 0, out_done = 0; /* zlib counts in 32 bits: the data goes in and out in pieces */
	int z;
	for (;;) {
		if (zs.avail_in == 0 && in_done < clen) {
			uint64_t piece = clen - in_done < (1u << 30) ? clen - in_done : (1u << 30);
			zs.next_in = (Bytef *)(src + in_done);
			zs.avail_in = (uInt)piece;
			in_done += piece;
		}
		if (zs.avail_out == 0 && out_done < ulen) {
			uint64_t piece = ulen - out_done < (1u << 30) ? ulen - out_done : (1u << 30);
			zs.next_out = out + out_done;
			zs.avail_out = (uInt)piece;
			out_done += piece;
		}
		z = inflate(&zs, Z_NO_FLUSH);
		if (z == Z_BUF_ERROR && ((zs.avail_in == 0 && in_done == clen) || (zs.avail_out == 0 && out_done == ulen)))
			break; /* the input ran out, or the output would pass its size: corrupt either way */
		if (z != Z_OK && z != Z_BUF_ERROR)
			break;
	}
	uint64_t produced = out_done - zs.avail_out;
	inflateEnd(&zs);
	if (z != Z_STREAM_END || produced != ulen)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s': corrupt deflate data", path, a->name);
	return NMP_OK;
}

static uint32_t crc_of(const uint8_t *p, uint64_t len)
{
	uLong c = crc32(0L, Z_NULL, 0);
	for (uint64_t at = 0; at < len;) {
		uint64_t piece = len - at < (1u << 30) ? len - at : (1u << 30);
		c = crc32(c, p + at, (uInt)piece);
		at += piece;
	}
	return (uint32_t)c;
}

/* Central directory entry at p (inside the file): one member, read into a. *next: the entry after it. */
static nmp_status read_member(const uint8_t *map, uint64_t size, uint64_t p, const char *path, nmp_npy *a,
			      uint64_t *next, nmp_error *err)
{
	if (!inside(p, 46, size) || le(map + p, 4) != SIG_CENTRAL)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: corrupt zip directory", path);
	const uint64_t flags = le(map + p + 8, 2), method = le(map + p + 10, 2), crc = le(map + p + 16, 4);
	uint64_t clen = le(map + p + 20, 4), ulen = le(map + p + 24, 4), local = le(map + p + 42, 4);
	const uint64_t nlen = le(map + p + 28, 2), xlen = le(map + p + 30, 2), mlen = le(map + p + 32, 2);
	if (!inside(p + 46, nlen + xlen + mlen, size))
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: corrupt zip directory", path);
	*next = p + 46 + nlen + xlen + mlen;
	const char *name = (const char *)map + p + 46;
	if (nlen < 5 || memcmp(name + nlen - 4, ".npy", 4) != 0)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%.*s' is not a .npy array", path, (int)nlen, name);
	if (!(a->name = malloc(nlen - 3)))
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	memcpy(a->name, name, nlen - 4);
	a->name[nlen - 4] = 0;
	for (uint64_t x = p + 46 + nlen; x + 4 <= p + 46 + nlen + xlen;) { /* zip64: the fields that did not fit */
		uint64_t id = le(map + x, 2), len = le(map + x + 2, 2), at = x + 4;
		if (at + len > p + 46 + nlen + xlen)
			break;
		if (id == 1) {
			uint64_t *wide[] = { &ulen, &clen, &local };
			for (int f = 0; f < 3; f++)
				if (*wide[f] == 0xffffffffu && at + 8 <= x + 4 + len) {
					*wide[f] = le(map + at, 8);
					at += 8;
				}
		}
		x += 4 + len;
	}
	if (flags & 1)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s' is encrypted", path, a->name);
	if (method != 0 && method != 8)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s': compression method %llu (stored and deflate are read)",
				     path, a->name, (unsigned long long)method);
	if (!inside(local, 30, size) || le(map + local, 4) != SIG_LOCAL)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s': its local header is out of place", path, a->name);
	const uint64_t data = local + 30 + le(map + local + 26, 2) + le(map + local + 28, 2);
	if (!inside(data, clen, size) || (method == 0 && clen != ulen))
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s' runs past the end of the file", path, a->name);
	const uint8_t *bytes = map + data;
	if (method == 8 && ulen / 1032 > clen + 1) /* deflate expands 1032 times at most */
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s' claims %llu bytes from %llu deflated", path,
				     a->name, (unsigned long long)ulen, (unsigned long long)clen);
	if (method == 8) {
		NMP_TRY(inflate_member(bytes, clen, ulen, path, a, err));
		bytes = a->inflated;
	}
	if (crc_of(bytes, ulen) != crc)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: member '%s' fails its CRC-32 check", path, a->name);
	return npy_parse(bytes, ulen, path, a, err);
}

nmp_status nmp_npz_read(const uint8_t *map, uint64_t size, const char *path, nmp_npz *out, nmp_error *err)
{
	*out = (nmp_npz){ 0 };
	zip_dir dir = { 0 };
	NMP_TRY(find_directory(map, size, path, &dir, err));
	if (dir.entries > size / 46)
		return nmp_error_set(err, NMP_ERR_USAGE, "%s: corrupt zip directory (%llu entries)", path,
				     (unsigned long long)dir.entries);
	out->arrays = calloc(dir.entries ? dir.entries : 1, sizeof *out->arrays);
	if (!out->arrays)
		return nmp_error_set(err, NMP_ERR_NOMEM, "out of memory");
	nmp_status s = NMP_OK;
	for (uint64_t i = 0, p = dir.offset; s == NMP_OK && i < dir.entries; i++) {
		s = read_member(map, size, p, path, &out->arrays[i], &p, err);
		out->n++;
	}
	if (s != NMP_OK)
		nmp_npz_free(out);
	return s;
}

void nmp_npz_free(nmp_npz *z)
{
	for (size_t i = 0; i < z->n; i++) {
		free(z->arrays[i].name);
		free(z->arrays[i].inflated);
	}
	free(z->arrays);
	*z = (nmp_npz){ 0 };
}
