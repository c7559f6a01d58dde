/* Content codings with zlib (see encoding.h). */
#include "encoding.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

/* s[0..n) without the spaces and tabs around it: *len gets the trimmed length. */
static const char *trim(const char *s, size_t n, size_t *len)
{
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    *len = n;
    return s;
}

static int token_is(const char *t, size_t n, const char *name)
{
    return strlen(name) == n && strncasecmp(t, name, n) == 0;
}

int enc_content_coding(const char *value)
{
    if (!value)
        return ENC_IDENTITY;
    size_t n;
    const char *t = trim(value, strlen(value), &n);
    if (token_is(t, n, "identity"))
        return ENC_IDENTITY;
    if (token_is(t, n, "gzip") || token_is(t, n, "x-gzip"))
        return ENC_GZIP;
    if (token_is(t, n, "deflate"))
        return ENC_DEFLATE;
    return ENC_UNKNOWN;
}

int enc_accepts_gzip(const char *value)
{
    int named = -1, star = 0; /* named: gzip's own entry (-1: none), else its acceptance */
    for (const char *p = value; p && *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *semi = memchr(p, ';', n);
        size_t tl;
        const char *tok = trim(p, semi ? (size_t)(semi - p) : n, &tl);
        int ok = 1; /* q=0 (0, 0.0, 0.000) refuses the coding */
        for (const char *q = semi; q && q < p + n; q = memchr(q + 1, ';', (size_t)(p + n - q - 1))) {
            size_t ql;
            const char *param = trim(q + 1, (size_t)(p + n - q - 1), &ql);
            if (ql >= 2 && (param[0] == 'q' || param[0] == 'Q') && param[1] == '=')
                ok = strtod(param + 2, NULL) > 0;
        }
        if (token_is(tok, tl, "gzip") || token_is(tok, tl, "x-gzip"))
            named = ok;
        else if (token_is(tok, tl, "*"))
            star = ok;
        p = end ? end + 1 : NULL;
    }
    return named >= 0 ? named : star;
}

int enc_inflate(const char *in, size_t n, int coding, size_t limit, char **out, size_t *outlen,
                char *err, size_t errlen)
{
    const char *name = coding == ENC_GZIP ? "gzip" : "deflate";
    *out = NULL;
    *outlen = 0;
    z_stream z;
    memset(&z, 0, sizeof z);
    /* 15 + 16: a gzip wrapper; 15: a zlib wrapper, which is what HTTP's "deflate" is. */
    if (inflateInit2(&z, coding == ENC_GZIP ? 15 + 16 : 15) != Z_OK) {
        snprintf(err, errlen, "out of memory inflating the body");
        return 500;
    }
    size_t cap = n < limit / 4 ? 4 * n + 64 : limit + 1, used = 0;
    char *buf = malloc(cap + 1);
    int code = buf ? 0 : 500, rc = Z_OK;
    z.next_in = (Bytef *)in;
    while (!code && rc != Z_STREAM_END) {
        if (used == cap) {
            if (cap > limit) {
                code = 413;
                break;
            }
            size_t more = cap * 2 < limit + 1 ? cap * 2 : limit + 1;
            char *b = realloc(buf, more + 1);
            if (!b) {
                code = 500;
                break;
            }
            buf = b;
            cap = more;
        }
        /* zlib counts in uInt: feed and take at most 1 GiB per call */
        size_t in_left = n - (size_t)((const char *)z.next_in - in);
        z.avail_in = (uInt)(in_left < (1u << 30) ? in_left : (1u << 30));
        z.next_out = (Bytef *)buf + used;
        z.avail_out = (uInt)(cap - used < (1u << 30) ? cap - used : (1u << 30));
        uInt before = z.avail_out;
        rc = inflate(&z, Z_NO_FLUSH);
        used += before - z.avail_out;
        if (rc == Z_STREAM_END)
            break;
        if (rc == Z_MEM_ERROR)
            code = 500;
        else if (rc != Z_OK && rc != Z_BUF_ERROR)
            code = 400;
        else if (rc == Z_BUF_ERROR && z.avail_in == 0 && used < cap)
            code = 400; /* the input ended before the stream did */
    }
    size_t consumed = (size_t)((const char *)z.next_in - in);
    inflateEnd(&z);
    if (!code && used > limit)
        code = 413;
    if (!code && consumed != n)
        code = 400; /* bytes after the end of the compressed stream */
    if (code) {
        free(buf);
        if (code == 413)
            snprintf(err, errlen, "body: larger than the limit of %zu bytes once inflated "
                     "(Content-Encoding: %s)", limit, name);
        else if (code == 400)
            snprintf(err, errlen, "body: not a whole %s stream (Content-Encoding: %s)", name,
                     name);
        else
            snprintf(err, errlen, "out of memory inflating the body");
        return code;
    }
    buf[used] = 0;
    *out = buf;
    *outlen = used;
    return 0;
}

char *enc_gzip(const char *in, size_t n, size_t *outlen)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    /* Level 1: answers are compressed on the request's path, where speed matters more
     * than the last few percent of size. */
    if (deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return NULL;
    size_t cap = deflateBound(&z, (uLong)n);
    char *out = malloc(cap);
    if (!out || n > (1u << 30) || cap > (1u << 30)) {
        deflateEnd(&z);
        free(out);
        return NULL;
    }
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH);
    *outlen = cap - z.avail_out;
    deflateEnd(&z);
    if (rc != Z_STREAM_END) {
        free(out);
        return NULL;
    }
    return out;
}
