/* API keys of `balsa serve` (auth.h). */
#include "auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"

/* Adds a key of n characters unless it is there already; -1 when the set is full. */
static int add_key(auth_keys *out, const char *v, size_t n)
{
    for (int i = 0; i < out->n; i++)
        if (strlen(out->key[i]) == n && memcmp(out->key[i], v, n) == 0)
            return 0;
    if (out->n == AUTH_MAX_KEYS)
        return -1;
    memcpy(out->key[out->n], v, n);
    out->key[out->n][n] = 0;
    out->n++;
    return 0;
}

int auth_keys_read(const char *key, const char *file, auth_keys *out, char *err,
                   size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (key[0])
        add_key(out, key, strlen(key)); /* config.c checked it */
    if (!file[0])
        return 0;
    FILE *f = fopen(file, "r");
    if (!f) {
        snprintf(err, errlen, "api_key_file: cannot open %s: %s", file, strerror(errno));
        return -1;
    }
    char line[1024];
    int rc = 0;
    for (int no = 1; rc == 0 && fgets(line, sizeof line, f); no++) {
        size_t n = strlen(line);
        if (n == sizeof line - 1 && line[n - 1] != '\n' && !feof(f)) {
            snprintf(err, errlen, "api_key_file: %s:%d: longer than 128 characters", file, no);
            rc = -1;
            break;
        }
        const char *v = line;
        while (*v == ' ' || *v == '\t')
            v++;
        n = strlen(v);
        while (n && (v[n - 1] == '\n' || v[n - 1] == '\r' || v[n - 1] == ' ' || v[n - 1] == '\t'))
            n--;
        if (n == 0 || v[0] == '#')
            continue;
        if (!config_api_key_ok(v, n)) {
            snprintf(err, errlen,
                     "api_key_file: %s:%d: a key must be 16 to 128 visible ASCII characters "
                     "(no spaces inside)",
                     file, no);
            rc = -1;
        } else if (add_key(out, v, n)) {
            snprintf(err, errlen, "api_key_file: %s:%d: more than %d keys", file, no,
                     AUTH_MAX_KEYS);
            rc = -1;
        }
    }
    if (rc == 0 && ferror(f)) {
        snprintf(err, errlen, "api_key_file: cannot read %s", file);
        rc = -1;
    }
    fclose(f);
    if (rc)
        memset(out, 0, sizeof *out);
    return rc;
}

/* 0 when got (m characters) equals want, in time that depends on want's length only. */
static unsigned key_diff(const char *want, const char *got, size_t m)
{
    size_t n = strlen(want);
    unsigned diff = n != m;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned)((unsigned char)want[i] ^ (unsigned char)(i < m ? got[i] : 0));
    return diff;
}

int auth_keys_accept(const auth_keys *k, const char *authorization)
{
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return 0;
    const char *got = authorization + 7;
    while (*got == ' ')
        got++;
    size_t m = strnlen(got, 129);
    int ok = 0;
    for (int i = 0; i < k->n; i++)
        ok |= key_diff(k->key[i], got, m) == 0;
    return ok;
}

int auth_keys_same(const auth_keys *a, const auth_keys *b)
{
    if (a->n != b->n)
        return 0;
    for (int i = 0; i < a->n; i++) {
        int found = 0;
        for (int j = 0; j < b->n; j++)
            found |= strcmp(a->key[i], b->key[j]) == 0;
        if (!found)
            return 0;
    }
    return 1;
}

void auth_keys_free(auth_keys *k)
{
    while (k) {
        auth_keys *older = k->older;
        free(k);
        k = older;
    }
}
