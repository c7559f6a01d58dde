/* `balsa health`: a tiny HTTP(S) client for container health checks, so that images need
 * no curl. It asks GET /healthz (or --path) on 127.0.0.1 and exits 0 on a 200 answer. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

#include "cli.h"

static int usage(void)
{
    fprintf(stderr, "usage: balsa health [--host HOST] [--port PORT] [--path PATH] [--tls]\n"
                    "  asks GET PATH (default /healthz) of the server on HOST (default\n"
                    "  127.0.0.1) and PORT (default $BALSA_PORT, else 8080); exits 0 on 200.\n"
                    "  --tls (the default when $BALSA_TLS_CERT is set, as for a server that\n"
                    "  serves HTTPS from it) asks over TLS, without checking the certificate\n");
    return 2;
}

/* Connects to host:port with a 3 s send/receive timeout; returns the socket or -1. */
static int dial(const char *host, const char *port)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "balsa health: %s:%s: %s\n", host, port, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0)
            continue;
        struct timeval tv = {.tv_sec = 3};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        fprintf(stderr, "balsa health: cannot connect to %s:%s: %s\n", host, port,
                strerror(errno));
    return fd;
}

/* Sends req over fd and reads the answer into resp (at most cap - 1 bytes, then a NUL);
 * returns the bytes read, or -1 (said on stderr). */
static ssize_t exchange_plain(int fd, const char *req, size_t n, char *resp, size_t cap)
{
    if (write(fd, req, n) != (ssize_t)n) {
        fprintf(stderr, "balsa health: cannot send the request\n");
        return -1;
    }
    ssize_t got = 0, r;
    while (got < (ssize_t)cap - 1 && (r = read(fd, resp + got, cap - 1 - (size_t)got)) > 0)
        got += r;
    return got;
}

/* The same over TLS. The server's certificate is not verified: the check asks the server
 * on its own loopback whether it answers, not who it is, and a certificate made for the
 * service's public name would not match 127.0.0.1 anyway. */
static ssize_t exchange_tls(int fd, const char *req, size_t n, char *resp, size_t cap)
{
    gnutls_certificate_credentials_t cred;
    gnutls_session_t ss;
    if (gnutls_certificate_allocate_credentials(&cred) < 0)
        return -1;
    if (gnutls_init(&ss, GNUTLS_CLIENT) < 0) {
        gnutls_certificate_free_credentials(cred);
        return -1;
    }
    ssize_t got = -1;
    int rc = gnutls_set_default_priority(ss);
    if (rc >= 0)
        rc = gnutls_credentials_set(ss, GNUTLS_CRD_CERTIFICATE, cred);
    if (rc >= 0) {
        gnutls_transport_set_int(ss, fd);
        gnutls_handshake_set_timeout(ss, 3000);
        /* Only an interruption is retried: with the socket's 3 s timeouts a silent
         * server shows as GNUTLS_E_AGAIN, which ends the check. */
        do
            rc = gnutls_handshake(ss);
        while (rc == GNUTLS_E_INTERRUPTED);
    }
    if (rc < 0) {
        fprintf(stderr, "balsa health: TLS handshake failed: %s\n", gnutls_strerror(rc));
    } else if (gnutls_record_send(ss, req, n) != (ssize_t)n) {
        fprintf(stderr, "balsa health: cannot send the request over TLS\n");
    } else {
        got = 0;
        ssize_t r;
        /* The server closes after an HTTP/1.0 answer, with or without close_notify. */
        while (got < (ssize_t)cap - 1 &&
               ((r = gnutls_record_recv(ss, resp + got, cap - 1 - (size_t)got)) > 0 ||
                r == GNUTLS_E_INTERRUPTED))
            got += r > 0 ? r : 0;
    }
    gnutls_deinit(ss);
    gnutls_certificate_free_credentials(cred);
    return got;
}

int health_main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *path = "/healthz";
    const char *port = getenv("BALSA_PORT") ? getenv("BALSA_PORT") : "8080";
    const char *cert = getenv("BALSA_TLS_CERT");
    int tls = cert && *cert;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--host") == 0)
            host = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--port") == 0)
            port = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--path") == 0)
            path = argv[++i];
        else if (strcmp(argv[i], "--tls") == 0)
            tls = 1;
        else
            return usage();
    }
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
    if (n <= 0 || (size_t)n >= sizeof req) {
        fprintf(stderr, "balsa health: the path is too long\n");
        return 1;
    }
    int fd = dial(host, port);
    if (fd < 0)
        return 1;
    char resp[256];
    ssize_t got = tls ? exchange_tls(fd, req, (size_t)n, resp, sizeof resp)
                      : exchange_plain(fd, req, (size_t)n, resp, sizeof resp);
    close(fd);
    if (got < 0)
        return 1;
    resp[got] = '\0';
    int status = 0;
    if (sscanf(resp, "HTTP/%*d.%*d %d", &status) != 1) {
        fprintf(stderr, "balsa health: no HTTP%s answer from %s:%s\n", tls ? "S" : "", host,
                port);
        return 1;
    }
    printf("%s %d\n", path, status);
    return status == 200 ? 0 : 1;
}
