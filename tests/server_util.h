/* Helpers for tests that run `balsa serve` (env BALSA_BIN) as a child process on a free
 * loopback port and talk to it with libcurl: start and wait for /readyz, stop with
 * SIGTERM, kill every child on every path (also on a crash of the test, and through
 * PR_SET_PDEATHSIG when the test is killed outright), requests, one-shot or on a
 * kept-alive handle, that capture the status, body and the headers tests look at, and
 * the value of a series in /metrics. */
#ifndef BALSA_TESTS_SERVER_UTIL_H
#define BALSA_TESTS_SERVER_UTIL_H

#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kernels/backend.h"

typedef struct {
    pid_t pid;
    int port;
    char log[256];
} su_server;

/* The servers running now (0: a free slot), killed if the test dies. */
#define SU_MAX_CHILDREN 8
static pid_t su_children[SU_MAX_CHILDREN];
static int su_nchildren;

/* NULL: requests go over plain HTTP. A PEM file: they go over HTTPS, trusting only the
 * certificate(s) in it (a test of a server started with tls_cert sets it). */
static const char *su_tls_ca;

static inline double su_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline void su_kill_children(void)
{
    for (int i = 0; i < su_nchildren; i++)
        if (su_children[i] > 0) {
            kill(su_children[i], SIGKILL);
            waitpid(su_children[i], NULL, 0);
            su_children[i] = 0;
        }
}

static inline void su_on_fatal_signal(int sig)
{
    su_kill_children();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Installs the handlers that kill the children when the test crashes. */
static inline void su_init(void)
{
    signal(SIGSEGV, su_on_fatal_signal);
    signal(SIGABRT, su_on_fatal_signal);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_ALL);
}

static inline int su_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || getsockname(fd, (struct sockaddr *)&a, &len)) {
        close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

typedef struct {
    CURLcode cc;
    long code;
    char *body; /* NUL-terminated (binary bodies too: use len) */
    size_t len;
    char ctype[96], allow[64], retry_after[16], header_len[24], request_id[80];
    char www_authenticate[64];
    char headers[2048]; /* every header line as received (the first 2 KiB), for the rest */
} su_resp;

static inline size_t su_on_body(char *p, size_t sz, size_t n, void *u)
{
    su_resp *r = u;
    char *b = realloc(r->body, r->len + sz * n + 1);
    if (!b)
        return 0;
    memcpy(b + r->len, p, sz * n);
    r->body = b;
    r->len += sz * n;
    r->body[r->len] = 0;
    return sz * n;
}

static inline void su_header_value(const char *line, size_t n, const char *name, char *out,
                                   size_t outlen)
{
    size_t k = strlen(name);
    if (n <= k + 1 || strncasecmp(line, name, k) != 0 || line[k] != ':')
        return;
    const char *v = line + k + 1;
    while (*v == ' ')
        v++;
    size_t m = (size_t)(line + n - v);
    while (m && (v[m - 1] == '\r' || v[m - 1] == '\n'))
        m--;
    snprintf(out, outlen, "%.*s", (int)m, v);
}

static inline size_t su_on_header(char *p, size_t sz, size_t n, void *u)
{
    su_resp *r = u;
    size_t used = strlen(r->headers);
    snprintf(r->headers + used, sizeof r->headers - used, "%.*s", (int)(sz * n), p);
    su_header_value(p, sz * n, "Content-Type", r->ctype, sizeof r->ctype);
    su_header_value(p, sz * n, "Allow", r->allow, sizeof r->allow);
    su_header_value(p, sz * n, "Retry-After", r->retry_after, sizeof r->retry_after);
    su_header_value(p, sz * n, "Inference-Header-Content-Length", r->header_len,
                    sizeof r->header_len);
    su_header_value(p, sz * n, "X-Request-Id", r->request_id, sizeof r->request_id);
    su_header_value(p, sz * n, "WWW-Authenticate", r->www_authenticate,
                    sizeof r->www_authenticate);
    return sz * n;
}

/* One request on handle h, which the caller owns and may reuse for the next request (a
 * kept-alive connection). body (blen bytes, may hold NUL bytes) or NULL: none. ctype: the
 * Content-Type sent, or NULL: none (curl's default for a body is removed). extra: more
 * "Name: value" lines, NULL-ended, or NULL. HEAD asks for no body. The caller frees
 * r->body, which is never NULL. */
static inline void su_request_hdrs(CURL *h, int port, const char *method, const char *path,
                                   const char *body, size_t blen, const char *ctype,
                                   const char *const *extra, su_resp *r)
{
    memset(r, 0, sizeof *r);
    char url[256];
    snprintf(url, sizeof url, "%s://127.0.0.1:%d%s", su_tls_ca ? "https" : "http", port, path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    if (su_tls_ca)
        curl_easy_setopt(h, CURLOPT_CAINFO, su_tls_ca);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, su_on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, su_on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    struct curl_slist *hdrs = curl_slist_append(NULL, "Expect:");
    if (ctype) {
        char line[128];
        snprintf(line, sizeof line, "Content-Type: %s", ctype);
        hdrs = curl_slist_append(hdrs, line);
    } else if (body) {
        hdrs = curl_slist_append(hdrs, "Content-Type:");
    }
    for (int i = 0; extra && extra[i]; i++)
        hdrs = curl_slist_append(hdrs, extra[i]);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    } else {
        /* a reused handle would otherwise keep the previous request's POST body */
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    }
    /* after HTTPGET, which clears NOBODY */
    curl_easy_setopt(h, CURLOPT_NOBODY, strcmp(method, "HEAD") == 0 ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    r->cc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->code);
    /* the list is freed here, and h may be used again */
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(hdrs);
    if (!r->body)
        r->body = calloc(1, 1);
}

/* su_request_hdrs with one extra header line, extra_header, or NULL: none. */
static inline void su_request_on(CURL *h, int port, const char *method, const char *path,
                                 const char *body, size_t blen, const char *ctype,
                                 const char *extra_header, su_resp *r)
{
    const char *one[] = {extra_header, NULL};
    su_request_hdrs(h, port, method, path, body, blen, ctype, one, r);
}

/* One request on a fresh connection (closed afterwards) with Content-Type:
 * application/json; otherwise as su_request_on. */
static inline void su_request(int port, const char *method, const char *path, const char *body,
                              size_t blen, const char *extra_header, su_resp *r)
{
    CURL *h = curl_easy_init();
    su_request_on(h, port, method, path, body, blen, "application/json", extra_header, r);
    curl_easy_cleanup(h);
}

/* One request on a fresh connection with a NUL-terminated body (or NULL: none) and the
 * given Content-Type (NULL: none); otherwise as su_request_on. */
static inline void su_request_str(int port, const char *method, const char *path,
                                  const char *body, const char *ctype, su_resp *r)
{
    CURL *h = curl_easy_init();
    su_request_on(h, port, method, path, body, body ? strlen(body) : 0, ctype, NULL, r);
    curl_easy_cleanup(h);
}

/* The value of a sample line "name{labels} value" in a metrics text, -1 when absent. */
static inline double su_metric_value(const char *text, const char *series)
{
    const char *p = text;
    size_t k = strlen(series);
    while ((p = strstr(p, series))) {
        if ((p == text || p[-1] == '\n') && p[k] == ' ')
            return atof(p + k + 1);
        p += k;
    }
    return -1;
}

/* The value of series (name and labels) in the server's /metrics now, -1 when absent. */
static inline double su_metric(int port, const char *series)
{
    su_resp r;
    su_request_str(port, "GET", "/metrics", NULL, NULL, &r);
    double v = r.code == 200 ? su_metric_value(r.body, series) : -1;
    free(r.body);
    return v;
}

/* Writes text over path through a new file renamed over the old (as a secret or config
 * mount updates), so that a server reading it never sees half of it; 1 when written. */
static inline int su_write_file(const char *path, const char *text)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return 0;
    int ok = fputs(text, f) >= 0;
    ok = (fclose(f) == 0) && ok;
    return ok && rename(tmp, path) == 0;
}

/* 1 when the server's log (its stderr and stdout, first 64 KiB) holds text, looking again
 * for up to wait_s seconds (the log is written as things happen; 0: look once). */
static inline int su_log_has(const su_server *sv, const char *text, double wait_s)
{
    static char buf[65536];
    double t0 = su_now();
    for (;;) {
        FILE *f = fopen(sv->log, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = 0;
        if (strstr(buf, text))
            return 1;
        if (su_now() - t0 >= wait_s)
            return 0;
        usleep(20000);
    }
}

/* Stops tracking pid: it has been waited for. */
static inline void su_forget_child(pid_t pid)
{
    for (int i = 0; i < su_nchildren; i++)
        if (su_children[i] == pid)
            su_children[i] = 0;
}

/* Starts `balsa serve --host 127.0.0.1 --port P --threads 1` plus extra (NULL-ended) with
 * its output in /tmp, and waits up to 30 s for /readyz. 0, or -1 (child gone). */
static inline int su_start(su_server *sp, const char *const *extra)
{
    const char *bin = getenv("BALSA_BIN");
    if (!bin) {
        printf("  BALSA_BIN is not set\n");
        return -1;
    }
    sp->port = su_free_port();
    snprintf(sp->log, sizeof sp->log, "/tmp/balsa_test_%d.log", sp->port);
    char port[16];
    snprintf(port, sizeof port, "%d", sp->port);
    const char *argv[40] = {bin, "serve", "--host", "127.0.0.1", "--port", port, "--threads", "1"};
    int argc = 8;
    for (int i = 0; extra && extra[i] && argc < 38; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    /* A slot freed by a server that has exited, else a new one. */
    int slot = 0;
    while (slot < su_nchildren && su_children[slot] != 0)
        slot++;
    if (slot == SU_MAX_CHILDREN) {
        printf("  more than %d servers at once\n", SU_MAX_CHILDREN);
        return -1;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* The server dies with this test, even if the test is killed outright. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(sp->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    sp->pid = pid;
    su_children[slot] = pid;
    if (slot == su_nchildren)
        su_nchildren++;
    double t0 = su_now();
    while (su_now() - t0 < 30) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            printf("  server exited during startup (status %d); log %s\n", st, sp->log);
            su_forget_child(pid);
            return -1;
        }
        su_resp r;
        su_request_str(sp->port, "GET", "/readyz", NULL, NULL, &r);
        free(r.body);
        if (r.cc == CURLE_OK && r.code == 200)
            return 0;
        usleep(20000);
    }
    printf("  server not ready after 30 s; log %s\n", sp->log);
    return -1;
}

/* Waits up to timeout_s for the server to exit (SIGKILL after that); returns its exit
 * status, 128 + the signal when a signal ended it, or -1 when it did not exit in time. */
static inline int su_wait(su_server *sp, double timeout_s)
{
    if (sp->pid <= 0)
        return -1;
    double t0 = su_now();
    int st = 0, rc = -1;
    for (;;) {
        pid_t w = waitpid(sp->pid, &st, WNOHANG);
        if (w == sp->pid) {
            rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            break;
        }
        if (su_now() - t0 > timeout_s) {
            kill(sp->pid, SIGKILL);
            waitpid(sp->pid, NULL, 0);
            break;
        }
        usleep(5000);
    }
    su_forget_child(sp->pid);
    sp->pid = 0;
    return rc;
}

/* SIGTERM, then su_wait. */
static inline int su_stop(su_server *sp, double timeout_s)
{
    if (sp->pid <= 0)
        return -1;
    kill(sp->pid, SIGTERM);
    return su_wait(sp, timeout_s);
}

/* Stops a server that outlives the tests (stopped after the last one, so no CHECK would
 * count): 1, with its exit status and log said, when it did not exit 0 (a crash, or
 * LeakSanitizer's report at shutdown), for the caller to add to the failures; else 0. */
static inline int su_stop_failed(su_server *sp, double timeout_s)
{
    int rc = su_stop(sp, timeout_s);
    if (rc != 0)
        printf("  server exit status %d (log %s)\n", rc, sp->log);
    return rc != 0;
}

/* The start of a test binary that runs servers beside models of its own: the handlers
 * that kill the children on a crash, libcurl, and a one-thread CPU backend in *be.
 * Returns 0, or -1 (said on stdout) when there is no backend. */
static inline int su_main_init(balsa_backend **be)
{
    su_init();
    curl_global_init(CURL_GLOBAL_ALL);
    if (balsa_backend_cpu_create(1, be) != BALSA_OK) {
        printf("no CPU backend\n");
        return -1;
    }
    return 0;
}

#endif
