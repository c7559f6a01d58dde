/* The TLS certificate and key of `balsa serve` (tls.h): read, parsed and matched with
 * GnuTLS, the library libmicrohttpd itself serves HTTPS with. */
#include "tls.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

/* Certificates in a chain at most (the server's and its intermediates). */
#define TLS_CHAIN_MAX 16

/* Reads a whole file of at most TLS_FILE_MAX bytes, NUL-terminated; what names the
 * setting in messages. */
static char *read_pem(const char *what, const char *path, size_t *len, char *err,
                      size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open %s: %s", what, path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: %s is not a regular file", what, path);
        fclose(f);
        return NULL;
    }
    if ((size_t)st.st_size > TLS_FILE_MAX || st.st_size == 0) {
        snprintf(err, errlen, "%s: %s is %s (%lld bytes)", what, path,
                 st.st_size ? "larger than 1 MiB" : "empty", (long long)st.st_size);
        fclose(f);
        return NULL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t got = buf ? fread(buf, 1, (size_t)st.st_size, f) : 0;
    fclose(f);
    if (!buf || got != (size_t)st.st_size) {
        snprintf(err, errlen, "%s: cannot read %s", what, path);
        free(buf);
        return NULL;
    }
    buf[got] = 0;
    *len = got;
    return buf;
}

/* Parses the certificate list: the count, the first one's subject and validity. */
static int check_cert(tls_files *t, const char *path, char *err, size_t errlen)
{
    gnutls_datum_t d = {(unsigned char *)t->cert, (unsigned)t->cert_len};
    gnutls_x509_crt_t *crts = NULL;
    unsigned n = 0;
    int rc = gnutls_x509_crt_list_import2(&crts, &n, &d, GNUTLS_X509_FMT_PEM, 0);
    if (rc < 0 || n == 0) {
        snprintf(err, errlen, "tls_cert: %s holds no PEM certificate (%s)", path,
                 rc < 0 ? gnutls_strerror(rc) : "none found");
        return -1;
    }
    t->chain = (int)n;
    gnutls_datum_t dn = {NULL, 0};
    if (gnutls_x509_crt_get_dn3(crts[0], &dn, 0) == 0) {
        snprintf(t->subject, sizeof t->subject, "%.*s", (int)dn.size, (const char *)dn.data);
        gnutls_free(dn.data);
    }
    t->not_before = gnutls_x509_crt_get_activation_time(crts[0]);
    t->not_after = gnutls_x509_crt_get_expiration_time(crts[0]);
    for (unsigned i = 0; i < n; i++)
        gnutls_x509_crt_deinit(crts[i]);
    gnutls_free(crts);
    return 0;
}

static int check_key(const tls_files *t, const char *path, char *err, size_t errlen)
{
    gnutls_x509_privkey_t key;
    if (gnutls_x509_privkey_init(&key) < 0) {
        snprintf(err, errlen, "tls_key: out of memory");
        return -1;
    }
    gnutls_datum_t d = {(unsigned char *)t->key, (unsigned)t->key_len};
    int rc = gnutls_x509_privkey_import2(key, &d, GNUTLS_X509_FMT_PEM, NULL, 0);
    gnutls_x509_privkey_deinit(key);
    if (rc < 0) {
        int encrypted = strstr(t->key, "ENCRYPTED") != NULL;
        snprintf(err, errlen, "tls_key: %s holds no %sPEM private key (%s)%s", path,
                 encrypted ? "unencrypted " : "", gnutls_strerror(rc),
                 encrypted ? "; decrypt it first: openssl pkey -in KEY -out PLAIN" : "");
        return -1;
    }
    return 0;
}

int tls_load(const char *cert_path, const char *key_path, tls_files *t, char *err,
             size_t errlen)
{
    memset(t, 0, sizeof *t);
    t->cert = read_pem("tls_cert", cert_path, &t->cert_len, err, errlen);
    if (t->cert)
        t->key = read_pem("tls_key", key_path, &t->key_len, err, errlen);
    if (!t->key || check_cert(t, cert_path, err, errlen) || check_key(t, key_path, err, errlen)) {
        tls_free(t);
        return -1;
    }
    /* Both parse: now whether the key is the certificate's, as the server will pair them. */
    gnutls_certificate_credentials_t cred;
    if (gnutls_certificate_allocate_credentials(&cred) < 0) {
        snprintf(err, errlen, "tls: out of memory");
        tls_free(t);
        return -1;
    }
    gnutls_datum_t c = {(unsigned char *)t->cert, (unsigned)t->cert_len};
    gnutls_datum_t k = {(unsigned char *)t->key, (unsigned)t->key_len};
    int rc = gnutls_certificate_set_x509_key_mem2(cred, &c, &k, GNUTLS_X509_FMT_PEM, NULL, 0);
    gnutls_certificate_free_credentials(cred);
    if (rc == GNUTLS_E_CERTIFICATE_KEY_MISMATCH) {
        snprintf(err, errlen, "tls_key: %s is not the private key of the certificate in %s",
                 key_path, cert_path);
    } else if (rc < 0) {
        snprintf(err, errlen, "tls_cert, tls_key: %s and %s cannot be used together (%s)",
                 cert_path, key_path, gnutls_strerror(rc));
    }
    if (rc < 0) {
        tls_free(t);
        return -1;
    }
    return 0;
}

void tls_free(tls_files *t)
{
    free(t->cert);
    free(t->key);
    memset(t, 0, sizeof *t);
}

/* Whether path holds exactly len bytes equal to text. */
static int same_file(const char *path, const char *text, size_t len)
{
    char err[8];
    size_t got = 0;
    char *now = read_pem("", path, &got, err, sizeof err);
    int same = now && got == len && memcmp(now, text, len) == 0;
    free(now);
    return same;
}

int tls_files_changed(const tls_files *t, const char *cert_path, const char *key_path)
{
    return !same_file(cert_path, t->cert, t->cert_len) ||
           !same_file(key_path, t->key, t->key_len);
}

int tls_validity_warning(const tls_files *t, time_t now, char *out, size_t n)
{
    out[0] = 0;
    time_t when = now > t->not_after ? t->not_after : now < t->not_before ? t->not_before : 0;
    if (!when || when == (time_t)-1)
        return 0;
    struct tm tm;
    char date[32];
    gmtime_r(&when, &tm);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S UTC", &tm);
    snprintf(out, n, "the TLS certificate (%s) %s %s: clients will refuse it", t->subject,
             now > t->not_after ? "expired on" : "is not valid before", date);
    return 1;
}

/* One installed pair, as GnuTLS hands it to a handshake. */
typedef struct tls_creds {
    gnutls_pcert_st pcerts[TLS_CHAIN_MAX];
    unsigned n;
    gnutls_privkey_t key;
    struct tls_creds *older; /* the pairs installed before, kept until tls_serve_free */
} tls_creds;

/* The pair new handshakes get; written by tls_serve_set, read by the daemon's threads. */
static _Atomic(tls_creds *) serving;

static void creds_free(tls_creds *c)
{
    for (unsigned i = 0; i < c->n; i++)
        gnutls_pcert_deinit(&c->pcerts[i]);
    if (c->key)
        gnutls_privkey_deinit(c->key);
    free(c);
}

int tls_serve_set(const tls_files *t, char *err, size_t errlen)
{
    tls_creds *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "tls: out of memory");
        return -1;
    }
    gnutls_datum_t cd = {(unsigned char *)t->cert, (unsigned)t->cert_len};
    gnutls_datum_t kd = {(unsigned char *)t->key, (unsigned)t->key_len};
    unsigned n = TLS_CHAIN_MAX;
    int rc = gnutls_pcert_list_import_x509_raw(c->pcerts, &n, &cd, GNUTLS_X509_FMT_PEM, 0);
    if (rc >= 0)
        c->n = n;
    if (rc >= 0)
        rc = gnutls_privkey_init(&c->key);
    if (rc >= 0)
        rc = gnutls_privkey_import_x509_raw(c->key, &kd, GNUTLS_X509_FMT_PEM, NULL, 0);
    if (rc < 0) {
        snprintf(err, errlen, "tls: %s", rc == GNUTLS_E_SHORT_MEMORY_BUFFER
                                             ? "more than 16 certificates in tls_cert"
                                             : gnutls_strerror(rc));
        creds_free(c);
        return -1;
    }
    c->older = atomic_load(&serving);
    atomic_store(&serving, c);
    return 0;
}

void tls_serve_free(void)
{
    tls_creds *c = atomic_exchange(&serving, NULL);
    while (c) {
        tls_creds *next = c->older;
        creds_free(c);
        c = next;
    }
}

/* GnuTLS asks, in each handshake, for the certificate chain and key to present. */
static int serve_cert(gnutls_session_t session, const gnutls_datum_t *req_ca_dn, int nreqs,
                      const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
                      gnutls_pcert_st **pcert, unsigned int *pcert_length,
                      gnutls_privkey_t *pkey)
{
    (void)session;
    (void)req_ca_dn;
    (void)nreqs;
    (void)pk_algos;
    (void)pk_algos_length;
    tls_creds *c = atomic_load(&serving);
    if (!c)
        return -1;
    *pcert = c->pcerts;
    *pcert_length = c->n;
    *pkey = c->key;
    return 0;
}

void *tls_serve_callback(void)
{
    gnutls_certificate_retrieve_function2 *f = serve_cert;
    return (void *)f;
}
