/* zlib compression for tests that send or check compressed bodies (test_encoding.c,
 * test_server.c): the data compressed by zlib itself, independent of server/encoding.c. */
#ifndef BALSA_TESTS_ZLIB_UTIL_H
#define BALSA_TESTS_ZLIB_UTIL_H

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "kernels/status.h"

/* in[0..n) compressed at level 6, with a gzip wrapper when gzip is set, else a zlib one
 * (HTTP's "deflate"): a malloc'd buffer of *outlen bytes. */
static inline unsigned char *tz_compress(const void *in, size_t n, int gzip, size_t *outlen)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    BALSA_ASSERT(deflateInit2(&z, 6, Z_DEFLATED, gzip ? 31 : 15, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    size_t cap = deflateBound(&z, (uLong)n);
    unsigned char *out = malloc(cap);
    BALSA_ASSERT(out);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    BALSA_ASSERT(deflate(&z, Z_FINISH) == Z_STREAM_END);
    *outlen = cap - z.avail_out;
    deflateEnd(&z);
    return out;
}

#endif
