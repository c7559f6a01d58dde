/* HTTPS for `balsa serve`: the certificate (chain) and private key that the tls_cert and
 * tls_key settings name, read and checked with GnuTLS before the HTTP daemon starts, so
 * that a wrong file is refused with a message naming the file and the problem instead of
 * the HTTP library's bare failure to start. */
#ifndef BALSA_TLS_H
#define BALSA_TLS_H

#include <stddef.h>
#include <time.h>

/* Largest certificate or key file read (a chain of a few certificates is a few KiB). */
#define TLS_FILE_MAX ((size_t)1 << 20)

typedef struct {
    char *cert;         /* the certificate file's PEM text, NUL-terminated; NULL: no TLS */
    char *key;          /* the key file's PEM text, NUL-terminated */
    size_t cert_len, key_len;
    int chain;          /* certificates in the cert file (the server's first) */
    char subject[256];  /* the server certificate's subject DN, for the banner */
    time_t not_before, not_after;
} tls_files;

/* Reads cert_path and key_path into *t and checks them: each readable, at most
 * TLS_FILE_MAX bytes, the first one or more PEM certificates, the second one unencrypted
 * PEM private key, and that key the first certificate's. On failure returns -1, leaves
 * *t zeroed and writes into err what is wrong, naming the setting and the file (e.g.
 * "tls_key: /k.pem is not the private key of the certificate in /c.pem"). *t must be
 * zeroed or freed. */
int tls_load(const char *cert_path, const char *key_path, tls_files *t, char *err,
             size_t errlen);

/* Frees what tls_load kept and zeroes *t; safe on a zeroed one. */
void tls_free(tls_files *t);

/* 1 when the files at cert_path and key_path no longer hold what t was loaded from
 * (renewed on disk), or cannot be read; else 0. */
int tls_files_changed(const tls_files *t, const char *cert_path, const char *key_path);

/* The certificate and key every TLS handshake gets, through libmicrohttpd's certificate
 * callback (tls_serve_callback), so that a renewed pair can replace them while the server
 * runs. One set per process. tls_serve_set installs the pair in t (checked by tls_load)
 * as the one new handshakes get; -1 with err when GnuTLS cannot take it. Replaced pairs
 * stay allocated until tls_serve_free (at exit): sessions may still refer to them, and
 * renewals are rare. Call tls_serve_set and tls_serve_free from one thread. */
int tls_serve_set(const tls_files *t, char *err, size_t errlen);
void tls_serve_free(void);

/* The function MHD_OPTION_HTTPS_CERT_CALLBACK takes (a gnutls_certificate_retrieve_function2),
 * as a plain pointer so that this header needs no GnuTLS header. */
void *tls_serve_callback(void);

/* Writes into out a warning when now is outside the certificate's validity ("expired
 * on ...", "not valid before ..."); returns 1 then, else 0 with out empty. */
int tls_validity_warning(const tls_files *t, time_t now, char *out, size_t n);

#endif
