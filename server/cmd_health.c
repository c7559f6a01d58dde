/* `balsa health`: a tiny HTTP client for container health checks, so that images need
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

#include "cli.h"

static int usage(void)
{
    fprintf(stderr, "usage: balsa health [--host HOST] [--port PORT] [--path PATH]\n"
                    "  asks GET PATH (default /healthz) of the server on HOST (default\n"
                    "  127.0.0.1) and PORT (default $BALSA_PORT, else 8080); exits 0 on 200\n");
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

int health_main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *path = "/healthz";
    const char *port = getenv("BALSA_PORT") ? getenv("BALSA_PORT") : "8080";
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--host") == 0)
            host = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--port") == 0)
            port = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--path") == 0)
            path = argv[++i];
        else
            return usage();
    }
    int fd = dial(host, port);
    if (fd < 0)
        return 1;
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
    if (n <= 0 || (size_t)n >= sizeof req || write(fd, req, (size_t)n) != n) {
        fprintf(stderr, "balsa health: cannot send the request\n");
        close(fd);
        return 1;
    }
    char resp[256];
    ssize_t got = 0, r;
    while (got < (ssize_t)sizeof resp - 1 &&
           (r = read(fd, resp + got, sizeof resp - 1 - (size_t)got)) > 0)
        got += r;
    close(fd);
    resp[got] = '\0';
    int status = 0;
    if (sscanf(resp, "HTTP/%*d.%*d %d", &status) != 1) {
        fprintf(stderr, "balsa health: no HTTP answer from %s:%s\n", host, port);
        return 1;
    }
    printf("%s %d\n", path, status);
    return status == 200 ? 0 : 1;
}
