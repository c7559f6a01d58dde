/* Reading and writing safetensors files (https://github.com/huggingface/safetensors):
 * an 8-byte little-endian header length N, N bytes of JSON naming every tensor's dtype,
 * shape and data_offsets (relative to byte 8 + N), then the data. The reader maps the
 * file and checks everything a hostile file could get wrong before anyone reads a byte
 * of tensor data: sizes, JSON, dtypes, shapes against byte counts, offsets inside the
 * file, contiguous and non-overlapping, no duplicate names. */
#ifndef BALSA_MODELS_SAFETENSORS_H
#define BALSA_MODELS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/status.h"

typedef enum { ST_F32 = 0, ST_F16, ST_BF16, ST_U8, ST_NDTYPES } st_dtype;

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (64u << 20) /* a header past this is refused, not parsed */

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t begin, end; /* byte range inside the data section */
} st_tensor;

typedef struct st_meta_entry {
    char *key, *value;
} st_meta_entry;

typedef struct {
    void *map;          /* the whole file, read-only */
    size_t size;        /* file bytes */
    const uint8_t *data;
    size_t data_len;
    st_tensor *tensors; /* in file order of data_offsets */
    int ntensors;
    st_meta_entry *meta; /* __metadata__ (string values only) */
    int nmeta;
} st_file;

/* Opens and checks path. On failure returns BALSA_ERR_IO (cannot open/read) or
 * BALSA_ERR_FORMAT with the problem (and the tensor's name, when one is at fault) in
 * err, and leaves *f zeroed. st_close releases everything. */
balsa_status st_open(const char *path, st_file *f, char *err, size_t errlen);
void st_close(st_file *f);

/* The tensor called name, or NULL. */
const st_tensor *st_find(const st_file *f, const char *name);
/* The metadata value for key, or NULL. */
const char *st_meta_get(const st_file *f, const char *key);

const char *st_dtype_str(st_dtype d);
size_t st_dtype_size(st_dtype d);
/* Elements in a tensor (product of its shape). */
size_t st_numel(const st_tensor *t);

/* Copies a F32, F16 or BF16 tensor into dst as float32 (st_numel floats). Returns
 * BALSA_ERR_FORMAT for other dtypes. */
balsa_status st_read_f32(const st_file *f, const st_tensor *t, float *dst);
/* The tensor's bytes inside the map (not aligned). */
const void *st_data(const st_file *f, const st_tensor *t);

/* One tensor to write: data points at st_numel * dtype-size bytes. */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_out;

/* Writes a safetensors file: tensors in the given order, metadata as key/value string
 * pairs, header padded with spaces to a multiple of 8. Writes path.tmp and renames it,
 * so a failed write leaves no half file at path. Returns BALSA_ERR_IO with a message. */
balsa_status st_write(const char *path, const st_out *t, int n, const char *const *meta_kv,
                      int nmeta, char *err, size_t errlen);

#endif
