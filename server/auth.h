/* The API keys `balsa serve` accepts (api_key and the lines of api_key_file): read and
 * checked at start-up, re-read on SIGHUP so that keys can be rotated without a restart
 * (the new key added, clients moved to it, the old one removed), and checked for every
 * request but the probes and /metrics. */
#ifndef BALSA_AUTH_H
#define BALSA_AUTH_H

#include <stddef.h>

#define AUTH_MAX_KEYS 16

typedef struct auth_keys {
    int n;                             /* 0: no key required */
    char key[AUTH_MAX_KEYS][129];      /* NUL-terminated, 16 to 128 visible characters */
    struct auth_keys *older;           /* the sets this one replaced (auth_keys_free) */
} auth_keys;

/* Reads the keys into *out: key (empty: none) and, when file is not empty, each line of
 * the file that is neither empty nor starts with '#' (spaces and a CR around it dropped).
 * Every key must be 16 to 128 visible ASCII characters; a repeated key counts once; at
 * most AUTH_MAX_KEYS. On error returns -1 with "api_key_file: FILE:LINE: reason" (or the
 * file's own problem) in err; a key is never written into err. */
int auth_keys_read(const char *key, const char *file, auth_keys *out, char *err,
                   size_t errlen);

/* 1 when authorization (an Authorization header value, or NULL) is "Bearer K" (the
 * scheme in any case, spaces after it) with K one of the keys. Every key is compared in
 * full, in time that does not depend on how much of a guess was right. */
int auth_keys_accept(const auth_keys *k, const char *authorization);

/* 1 when a and b hold the same keys (in any order). */
int auth_keys_same(const auth_keys *a, const auth_keys *b);

/* Frees k and every set in its older chain (all heap-allocated); NULL is ignored. */
void auth_keys_free(auth_keys *k);

#endif
