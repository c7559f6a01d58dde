/* The safetensors reader and writer (see safetensors.h). Every check happens in st_open,
 * in the order a reader meets the bytes, so the first problem is the one reported. */
#include "safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json_text.h"

static const char *dtype_names[ST_NDTYPES] = {"F32", "F16", "BF16", "U8"};
static const size_t dtype_sizes[ST_NDTYPES] = {4, 2, 2, 1};

const char *st_dtype_str(st_dtype d) { return (unsigned)d < ST_NDTYPES ? dtype_names[d] : "?"; }
size_t st_dtype_size(st_dtype d) { return (unsigned)d < ST_NDTYPES ? dtype_sizes[d] : 0; }

size_t st_numel(const st_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

void st_close(st_file *f)
{
    if (f->map)
        munmap(f->map, f->size);
    for (int i = 0; i < f->ntensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->nmeta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->meta);
    memset(f, 0, sizeof *f);
}

/* An integer-valued JSON number in [0, max]; -1 otherwise. */
static int64_t json_uint(const cJSON *v, double max)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= max) || d != floor(d))
        return -1;
    return (int64_t)d;
}

static balsa_status parse_metadata(st_file *f, const cJSON *meta, char *err, size_t errlen)
{
    if (!cJSON_IsObject(meta)) {
        snprintf(err, errlen, "header: __metadata__ is not an object");
        return BALSA_ERR_FORMAT;
    }
    int n = cJSON_GetArraySize(meta);
    f->meta = calloc(n ? n : 1, sizeof *f->meta);
    if (!f->meta)
        return BALSA_ERR_OOM;
    const cJSON *e;
    cJSON_ArrayForEach(e, meta)
    {
        if (!cJSON_IsString(e)) {
            snprintf(err, errlen, "header: __metadata__ value \"%s\" is not a string",
                     e->string);
            return BALSA_ERR_FORMAT;
        }
        st_meta_entry *m = &f->meta[f->nmeta++];
        m->key = strdup(e->string);
        m->value = strdup(e->valuestring);
        if (!m->key || !m->value)
            return BALSA_ERR_OOM;
    }
    return BALSA_OK;
}

static balsa_status parse_tensor(st_file *f, const cJSON *e, char *err, size_t errlen)
{
    st_tensor *t = &f->tensors[f->ntensors];
    t->name = strdup(e->string);
    if (!t->name)
        return BALSA_ERR_OOM;
    f->ntensors++;
    const char *nm = e->string;
    if (!cJSON_IsObject(e)) {
        snprintf(err, errlen, "tensor %s: header entry is not an object", nm);
        return BALSA_ERR_FORMAT;
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off)) {
        snprintf(err, errlen, "tensor %s: needs dtype (string), shape and data_offsets (arrays)",
                 nm);
        return BALSA_ERR_FORMAT;
    }
    t->dtype = ST_NDTYPES;
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strcmp(dt->valuestring, dtype_names[i]) == 0)
            t->dtype = (st_dtype)i;
    if (t->dtype == ST_NDTYPES) {
        snprintf(err, errlen, "tensor %s: unsupported dtype \"%.16s\" (F32, F16, BF16 or U8)",
                 nm, dt->valuestring);
        return BALSA_ERR_FORMAT;
    }
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS) {
        snprintf(err, errlen, "tensor %s: shape has %d dimensions, at most %d", nm, nd,
                 ST_MAX_DIMS);
        return BALSA_ERR_FORMAT;
    }
    /* The element count is bounded by the file size, so check the product as it grows. */
    double numel = 1;
    const cJSON *d;
    cJSON_ArrayForEach(d, sh)
    {
        int64_t v = json_uint(d, 2147483647.0);
        if (v < 0) {
            snprintf(err, errlen, "tensor %s: shape holds a value that is not a size", nm);
            return BALSA_ERR_FORMAT;
        }
        t->shape[t->ndim++] = v;
        numel *= (double)v;
    }
    int64_t b = -1, en = -1;
    if (cJSON_GetArraySize(off) == 2) {
        b = json_uint(cJSON_GetArrayItem(off, 0), 9.0e15);
        en = json_uint(cJSON_GetArrayItem(off, 1), 9.0e15);
    }
    if (b < 0 || en < 0 || en < b) {
        snprintf(err, errlen, "tensor %s: data_offsets must be [begin, end] with begin <= end",
                 nm);
        return BALSA_ERR_FORMAT;
    }
    if ((uint64_t)en > f->data_len) {
        snprintf(err, errlen,
                 "tensor %s: data_offsets [%lld, %lld) past the end of the data (%zu bytes; "
                 "file truncated?)",
                 nm, (long long)b, (long long)en, f->data_len);
        return BALSA_ERR_FORMAT;
    }
    t->begin = (size_t)b;
    t->end = (size_t)en;
    if (numel * st_dtype_size(t->dtype) != (double)(t->end - t->begin)) {
        snprintf(err, errlen,
                 "tensor %s: shape needs %.0f bytes of %s but data_offsets hold %zu", nm,
                 numel * st_dtype_size(t->dtype), dtype_names[t->dtype], t->end - t->begin);
        return BALSA_ERR_FORMAT;
    }
    return BALSA_OK;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int by_begin(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* No name twice, and the data section covered exactly: sorted by offset, each tensor
 * starts where the previous ended, the last ends at the end of the file. Names are
 * compared after sorting them: comparing every pair took minutes for a header of 100k
 * empty tensors (6 MB, far below the header limit). */
static balsa_status check_layout(st_file *f, char *err, size_t errlen)
{
    qsort(f->tensors, f->ntensors, sizeof *f->tensors, by_name);
    for (int i = 1; i < f->ntensors; i++)
        if (strcmp(f->tensors[i].name, f->tensors[i - 1].name) == 0) {
            snprintf(err, errlen, "tensor %s: named twice in the header", f->tensors[i].name);
            return BALSA_ERR_FORMAT;
        }
    qsort(f->tensors, f->ntensors, sizeof *f->tensors, by_begin);
    size_t at = 0;
    for (int i = 0; i < f->ntensors; i++) {
        const st_tensor *t = &f->tensors[i];
        if (t->begin < at) {
            snprintf(err, errlen, "tensor %s: data_offsets [%zu, %zu) overlap tensor %s",
                     t->name, t->begin, t->end, f->tensors[i - 1].name);
            return BALSA_ERR_FORMAT;
        }
        if (t->begin > at) {
            snprintf(err, errlen, "tensor %s: data_offsets leave a gap of %zu bytes before it",
                     t->name, t->begin - at);
            return BALSA_ERR_FORMAT;
        }
        at = t->end;
    }
    if (at != f->data_len) {
        snprintf(err, errlen, "%zu bytes after the last tensor's data_offsets (not a "
                 "safetensors layout)", f->data_len - at);
        return BALSA_ERR_FORMAT;
    }
    return BALSA_OK;
}

static balsa_status parse_header(st_file *f, const char *hdr, size_t n, char *err,
                                 size_t errlen)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, n, &end, 0);
    if (!root) {
        snprintf(err, errlen, "header is not valid JSON");
        return BALSA_ERR_FORMAT;
    }
    /* The format pads the header with spaces after the JSON object. */
    for (const char *p = end; p < hdr + n; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            snprintf(err, errlen, "header: unexpected bytes after the JSON object");
            return BALSA_ERR_FORMAT;
        }
    if (json_text_refuse(hdr, (size_t)(end - hdr), "header",
                         "a tensor name or text would end there", err, errlen)) {
        cJSON_Delete(root);
        return BALSA_ERR_FORMAT;
    }
    balsa_status st = BALSA_OK;
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "header is not a JSON object");
        st = BALSA_ERR_FORMAT;
    }
    int count = cJSON_GetArraySize(root);
    if (st == BALSA_OK) {
        f->tensors = calloc(count ? count : 1, sizeof *f->tensors);
        if (!f->tensors)
            st = BALSA_ERR_OOM;
    }
    const cJSON *e;
    if (st == BALSA_OK)
        cJSON_ArrayForEach(e, root)
        {
            if (strcmp(e->string, "__metadata__") == 0)
                st = f->meta ? BALSA_ERR_FORMAT : parse_metadata(f, e, err, errlen);
            else
                st = parse_tensor(f, e, err, errlen);
            if (st != BALSA_OK)
                break;
        }
    cJSON_Delete(root);
    if (st == BALSA_ERR_OOM)
        snprintf(err, errlen, "out of memory reading the header");
    else if (st == BALSA_ERR_FORMAT && !err[0])
        snprintf(err, errlen, "header: __metadata__ given twice");
    if (st == BALSA_OK)
        st = check_layout(f, err, errlen);
    return st;
}

balsa_status st_open(const char *path, st_file *f, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    if (errlen)
        err[0] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return BALSA_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s is not a regular file", path);
        close(fd);
        return BALSA_ERR_IO;
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        snprintf(err, errlen, "file too small (%zu bytes): a safetensors file starts with an "
                 "8-byte header length", size);
        close(fd);
        return BALSA_ERR_FORMAT;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "cannot map %s: %s", path, strerror(errno));
        return BALSA_ERR_IO;
    }
    f->map = map;
    f->size = size;
    const uint8_t *b = map;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | b[i];
    if (n > size - 8 || n > ST_MAX_HEADER || n < 2) {
        snprintf(err, errlen, "header length %llu does not fit the file (%zu bytes%s)",
                 (unsigned long long)n, size, n > ST_MAX_HEADER ? ", limit 64 MiB" : "");
        st_close(f);
        return BALSA_ERR_FORMAT;
    }
    f->data = b + 8 + n;
    f->data_len = size - 8 - (size_t)n;
    balsa_status st = parse_header(f, (const char *)b + 8, (size_t)n, err, errlen);
    if (st != BALSA_OK)
        st_close(f);
    return st;
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    for (int i = 0; i < f->ntensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

const char *st_meta_get(const st_file *f, const char *key)
{
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta[i].key, key) == 0)
            return f->meta[i].value;
    return NULL;
}

const void *st_data(const st_file *f, const st_tensor *t) { return f->data + t->begin; }

static float half_to_float(uint16_t h)
{
    int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 0)
        v = ldexpf((float)m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexpf((float)(m | 1024), e - 25);
    return sign ? -v : v;
}

balsa_status st_read_f32(const st_file *f, const st_tensor *t, float *dst)
{
    size_t n = st_numel(t);
    const uint8_t *src = st_data(f, t);
    switch (t->dtype) {
    case ST_F32: memcpy(dst, src, n * 4); return BALSA_OK;
    case ST_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = half_to_float((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
        return BALSA_OK;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)(src[2 * i] | src[2 * i + 1] << 8) << 16;
            memcpy(&dst[i], &bits, 4);
        }
        return BALSA_OK;
    default: return BALSA_ERR_FORMAT;
    }
}

balsa_status st_write(const char *path, const st_out *t, int n, const char *const *meta_kv,
                      int nmeta, char *err, size_t errlen)
{
    cJSON *root = cJSON_CreateObject();
    balsa_status st = root ? BALSA_OK : BALSA_ERR_OOM;
    if (st == BALSA_OK && nmeta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; meta && i < nmeta; i++)
            if (!cJSON_AddStringToObject(meta, meta_kv[2 * i], meta_kv[2 * i + 1]))
                meta = NULL;
        if (!meta)
            st = BALSA_ERR_OOM;
    }
    size_t off = 0;
    for (int i = 0; i < n && st == BALSA_OK; i++) {
        size_t bytes = st_dtype_size(t[i].dtype);
        cJSON *e = cJSON_AddObjectToObject(root, t[i].name);
        cJSON *sh = e ? cJSON_AddArrayToObject(e, "shape") : NULL;
        if (!e || !sh || !cJSON_AddStringToObject(e, "dtype", st_dtype_str(t[i].dtype))) {
            st = BALSA_ERR_OOM;
            break;
        }
        for (int d = 0; d < t[i].ndim; d++) {
            bytes *= (size_t)t[i].shape[d];
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t[i].shape[d]));
        }
        cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
        if (!o) {
            st = BALSA_ERR_OOM;
            break;
        }
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + bytes)));
        off += bytes;
    }
    char *hdr = st == BALSA_OK ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!hdr) {
        snprintf(err, errlen, "out of memory writing %s", path);
        return BALSA_ERR_OOM;
    }
    size_t hlen = strlen(hdr), padded = (hlen + 7) / 8 * 8;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        free(hdr);
        return BALSA_ERR_IO;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = fwrite(len8, 1, 8, fp) == 8 && fwrite(hdr, 1, hlen, fp) == hlen;
    for (size_t i = hlen; ok && i < padded; i++)
        ok = fputc(' ', fp) != EOF;
    free(hdr);
    for (int i = 0; ok && i < n; i++) {
        size_t bytes = st_dtype_size(t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++)
            bytes *= (size_t)t[i].shape[d];
        ok = bytes == 0 || fwrite(t[i].data, 1, bytes, fp) == bytes;
    }
    if (fclose(fp) != 0)
        ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return BALSA_ERR_IO;
    }
    return BALSA_OK;
}
