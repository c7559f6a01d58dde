/* HTTP content codings (zlib): request bodies sent with Content-Encoding gzip or deflate
 * are inflated before they are parsed, within the body limit (so a small compressed body
 * cannot expand without bound), and answers are gzip-compressed for clients whose
 * Accept-Encoding takes gzip, as Triton does for its clients' compression options. */
#ifndef BALSA_ENCODING_H
#define BALSA_ENCODING_H

#include <stddef.h>

enum { ENC_IDENTITY = 0, ENC_GZIP, ENC_DEFLATE, ENC_UNKNOWN = -1 };

/* The coding a Content-Encoding header value names (NULL or "identity": ENC_IDENTITY;
 * case-insensitive; surrounding spaces ignored); ENC_UNKNOWN for any other value,
 * including a list of several codings. */
int enc_content_coding(const char *value);

/* 1 when an Accept-Encoding header value accepts gzip (named, or "*", without q=0). */
int enc_accepts_gzip(const char *value);

/* Inflates in[0..n), a gzip or zlib ("deflate") stream, into a malloc'd buffer *out of
 * *outlen bytes (NUL-terminated, not counted) that the caller frees. Returns 0; 400 when
 * the data is not a whole stream of that coding; 413 when it inflates to more than limit
 * bytes; 500 when out of memory: each with a message in err and *out NULL. */
int enc_inflate(const char *in, size_t n, int coding, size_t limit, char **out, size_t *outlen,
                char *err, size_t errlen);

/* gzip-compresses in[0..n) into a malloc'd buffer (*outlen bytes); NULL when out of
 * memory. */
char *enc_gzip(const char *in, size_t n, size_t *outlen);

#endif
