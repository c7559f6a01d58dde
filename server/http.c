/* The HTTP layer of `balsa serve`: a libmicrohttpd daemon (internal poll threads in a
 * pool: the epoll mode stalls with 128+ keep-alive clients, see FIELD-NOTES), routing,
 * the body limit, content types, and POST /infer handed to the model's scheduler with the
 * connection suspended until the scheduler completes it. Every answer, errors included, is
 * JSON except /metrics. One access-log line per request goes to stderr.
 *
 * A request's life: the first handler call allocates its http_req; body chunks are
 * appended (or discarded once over the limit); the final call routes it. /infer parses
 * the body, suspends the connection BEFORE submitting (a resume that overtakes the
 * suspend is lost), and returns; the scheduler's done() resumes it; MHD calls the handler
 * again and the response is queued. The request-completed callback records metrics,
 * writes the log line and frees everything.
 *
 * A streaming request ("stream": true, v2 generate_stream) is not suspended at submit: its
 * 200 and text/event-stream headers go out at once, and MHD reads the body from
 * stream_read, which suspends the connection when no event is waiting; the scheduler
 * thread renders the events (on_stream_progress, on_stream_done) and resumes it. The client
 * may leave while the scheduler still holds the request, so whichever of the two ends
 * (request-completed callback, scheduler's done) comes last frees it. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "encoding.h"
#include "jsonw.h"
#include "seqstore.h"
#include "server.h"
#include "v2.h"
#include "v2_stats.h"
#include "v2_tensor.h"

#ifndef BALSA_VERSION
#define BALSA_VERSION "0.1.0"
#endif

enum { PHASE_RECEIVING = 0, PHASE_WAITING, PHASE_DONE };

/* A streaming request's events between the scheduler thread and MHD's reader. */
typedef struct {
    pthread_mutex_t mu;  /* guards everything below except pos */
    api_stream pos;      /* what the events so far carried (scheduler thread only) */
    jsonw out;           /* rendered events; out.data[off..out.len) not yet read */
    size_t off;
    int waiting;         /* stream_read found nothing and suspended the connection */
    int ended;           /* the last event is in out */
    int sched_done;      /* the scheduler called done (or never had the request) */
    int http_done;       /* MHD completed the request */
} http_stream;

typedef struct {
    server *srv;
    struct MHD_Connection *conn;
    uint64_t t0;
    metrics_handler handler;
    char method[8];
    char path[96];
    char rid[72];      /* X-Request-Id: the client's, or one made here; in the answer and log */
    char *body;
    size_t len, cap;
    int too_big;
    int unauthorized;  /* api_key is set and the request did not carry it: answered 401 */
    int preflight;     /* a CORS preflight (OPTIONS with Origin and
                        * Access-Control-Request-Method): answered before the key check */
    char cors[200];    /* Access-Control-Allow-Origin of the answer: the request's Origin
                        * when cors_origins allows it, "*" for any; "" none */
    int coding;        /* the body's Content-Encoding (encoding.h); ENC_UNKNOWN: 415 */
    int gzip_ok;       /* Accept-Encoding takes gzip: answers of 1 KiB and more are gzipped */
    int phase;
    int suspended;     /* counted in srv->suspended */
    server_job *load;  /* a reload asked over the repository API (V2_LOAD): run by the main
                        * thread while the connection is suspended; not an inference */
    int code;          /* the status answered */
    int model;         /* index of the model, -1 when none */
    server_loaded *inst; /* the model's instance this request runs on, held until freed */
    seq_entry *seq;    /* its sequence in inst->seqs, held from admission until it has run */
    char err[256];     /* message for a 503 decided before the scheduler ran */
    api_request req;
    sched_request sreq;
    /* KServe v2 (v2.c): the full URL, the request's v2 part, the Allow header of a 405,
     * the JSON length of a binary-extension answer, and the times the statistics need. */
    char *url;
    int v2; /* 0: POST /infer; 1: v2 infer; 2: v2 generate; 3: v2 generate_stream */
    v2_request v2req;
    const char *allow;
    size_t infer_header_len;
    uint64_t t_submit, t_out0, t_out1;
    uint64_t t_first; /* generating requests: when the first token came (scheduler thread) */
    int polled;       /* generating requests: steps since the client's socket was looked at */
    int gone;         /* the client was seen gone while generating (scheduler thread) */
    _Atomic int cancel; /* the engine stops generating (model_gen_opts): the client left, or
                         * the drain timed out */
    http_stream *st;  /* streaming requests only */
} http_req;

static const struct {
    const char *path;
    metrics_handler handler;
    const char *allow;
} routes[] = {
    {"/infer", METRICS_H_INFER, "POST"},     {"/models", METRICS_H_MODELS, "GET, HEAD"},
    {"/metrics", METRICS_H_METRICS, "GET, HEAD"}, {"/healthz", METRICS_H_HEALTHZ, "GET, HEAD"},
    {"/readyz", METRICS_H_READYZ, "GET, HEAD"},
};
#define NROUTES (int)(sizeof routes / sizeof *routes)

/* Copies the NUL-terminated src into dst[0..n), truncating (a hot path: no printf). */
static void copy_str(char *dst, size_t n, const char *src)
{
    size_t len = strnlen(src, n - 1);
    memcpy(dst, src, len);
    dst[len] = 0;
}

static double secs(uint64_t a, uint64_t b)
{
    return b > a ? (double)(b - a) * 1e-9 : 0;
}

/* The request's id: the client's X-Request-Id when it is 1 to 64 visible ASCII
 * characters (so that it is safe in a header and a log line), else a new one: 16 hex
 * digits random per server start, then a counter. */
static void request_id(server *s, const char *given, char *out, size_t n)
{
    size_t len = given ? strnlen(given, 65) : 0;
    int ok = len >= 1 && len <= 64;
    for (size_t i = 0; ok && i < len; i++)
        ok = given[i] > 0x20 && given[i] < 0x7f;
    if (ok) {
        memcpy(out, given, len);
        out[len] = 0;
        return;
    }
    snprintf(out, n, "%016llx%08llx", (unsigned long long)s->rid_base,
             (unsigned long long)atomic_fetch_add(&s->rid_next, 1));
}

/* What Access-Control-Allow-Origin answers a request from origin (NULL: none) with,
 * written into out: "*" when cors_origins is "*", the origin itself when it is one of the
 * list, else "" (no CORS headers: the browser keeps the answer from the page). */
static void cors_allow(const char *list, const char *origin, char *out, size_t n)
{
    out[0] = 0;
    if (!list[0] || !origin)
        return;
    if (!strcmp(list, "*")) {
        snprintf(out, n, "*");
        return;
    }
    size_t len = strlen(origin);
    for (const char *p = list; *p;) {
        size_t k = strcspn(p, ",");
        if (k == len && !strncmp(p, origin, k) && len < n) {
            memcpy(out, origin, len + 1);
            return;
        }
        p += k + (p[k] == ',');
    }
}

/* The CORS headers of an answer to a page of an allowed origin: who may read it, and
 * which of its headers a script may see. */
static void cors_headers(const http_req *x, struct MHD_Response *r)
{
    if (!x->cors[0])
        return;
    MHD_add_response_header(r, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN, x->cors);
    if (strcmp(x->cors, "*") != 0)
        MHD_add_response_header(r, MHD_HTTP_HEADER_VARY, "Origin");
    MHD_add_response_header(r, "Access-Control-Expose-Headers",
                            "X-Request-Id, Retry-After, Inference-Header-Content-Length");
}

/* Paths open without the API key: liveness, readiness (probes) and /metrics (scrapes). */
static int open_path(const char *url)
{
    return !strcmp(url, "/healthz") || !strcmp(url, "/readyz") || !strcmp(url, "/metrics") ||
           !strcmp(url, "/v2/health/live") || !strcmp(url, "/v2/health/ready");
}

/* Queues body with status code: a malloc'd body whose ownership passes to MHD, or, with
 * is_static, a string constant that is not copied. */
static enum MHD_Result send_response(http_req *x, int code, char *body, size_t len,
                                     const char *ctype, int is_static)
{
    server *s = x->srv;
    if (!body)
        return MHD_NO;
    /* Small answers are sent as they are: below 1 KiB gzip saves little and costs a
     * deflate state per answer. */
    int gzipped = 0;
    if (x->gzip_ok && !is_static && len >= 1024) {
        size_t zlen;
        char *z = enc_gzip(body, len, &zlen);
        if (z) {
            free(body);
            body = z;
            len = zlen;
            gzipped = 1;
        }
    }
    struct MHD_Response *r =
        is_static ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_PERSISTENT)
                  : MHD_create_response_from_buffer_with_free_callback(len, body, free);
    if (!r) {
        if (!is_static)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (gzipped)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_ENCODING, "gzip");
    if (x->gzip_ok)
        MHD_add_response_header(r, MHD_HTTP_HEADER_VARY, "Accept-Encoding");
    if (code == 503)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (code == 401)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"balsa\"");
    if (code == 405 && x->allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, x->allow);
    MHD_add_response_header(r, "X-Request-Id", x->rid);
    cors_headers(x, r);
    if (x->infer_header_len) {
        char hl[24];
        snprintf(hl, sizeof hl, "%zu", x->infer_header_len);
        MHD_add_response_header(r, "Inference-Header-Content-Length", hl);
    }
    if (code == 405 && !x->allow) {
        for (int i = 0; i < NROUTES; i++)
            if (routes[i].handler == x->handler)
                MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, routes[i].allow);
    }
    /* While draining, ask keep-alive clients to reconnect (to another instance). */
    if (atomic_load(&s->stage) != SERVER_SERVING)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    x->code = code;
    enum MHD_Result ret = MHD_queue_response(x->conn, (unsigned)code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_body(http_req *x, int code, char *body, size_t len,
                                 const char *ctype)
{
    return send_response(x, code, body, len, ctype, 0);
}

static enum MHD_Result send_json(http_req *x, int code, char *body, size_t len)
{
    return send_body(x, code, body, len, "application/json");
}

static enum MHD_Result send_static_json(http_req *x, int code, const char *body)
{
    return send_response(x, code, (char *)body, strlen(body), "application/json", 1);
}

static enum MHD_Result send_error(http_req *x, int code, const char *msg)
{
    size_t len;
    char *body = jsonw_error(msg, &len);
    return send_json(x, code, body, len);
}

static int server_ready(server *s, char *why, size_t whylen)
{
    if (atomic_load(&s->stage) != SERVER_SERVING) {
        snprintf(why, whylen, "not ready: draining (shutting down)");
        return 0;
    }
    for (int i = 0; i < s->nmodels; i++)
        if (!atomic_load(&s->models[i].ready)) {
            snprintf(why, whylen, "not ready: model \"%s\" is loading", s->models[i].cfg->name);
            return 0;
        }
    return 1;
}

/* The api's view of the models, each from its current instance, which is held in held[i]
 * (NULL while the model is loading: then info and model are NULL) until release_models. */
static void acquire_models(server *s, api_model *out, server_loaded **held)
{
    for (int i = 0; i < s->nmodels; i++) {
        held[i] = server_model_acquire(&s->models[i]);
        out[i].name = s->models[i].cfg->name;
        out[i].info = held[i] ? held[i]->info : NULL;
        out[i].model = held[i] ? held[i]->model : NULL;
    }
}

/* Releases what acquire_models took except model keep's instance (keep -1: all), which
 * is returned, still held. */
static server_loaded *release_models(server *s, server_loaded **held, int keep)
{
    for (int i = 0; i < s->nmodels; i++)
        if (i != keep)
            server_loaded_release(held[i]);
    return keep >= 0 ? held[keep] : NULL;
}

static enum MHD_Result handle_models(http_req *x)
{
    server *s = x->srv;
    api_model am[CONFIG_MAX_MODELS];
    server_loaded *held[CONFIG_MAX_MODELS];
    int batching[CONFIG_MAX_MODELS][6];
    acquire_models(s, am, held);
    for (int i = 0; i < s->nmodels; i++) {
        /* A model still loading (at start-up only) has no instance yet. */
        const config_batching *b =
            held[i] ? &held[i]->batching : &s->models[i].cfg->batching;
        batching[i][0] = b->max_batch_size;
        batching[i][1] = b->max_queue_delay_us;
        batching[i][2] = b->queue_capacity;
        batching[i][3] = b->request_timeout_ms;
        batching[i][4] = held[i] && held[i]->seqs ? b->max_sequences : 0;
        batching[i][5] = b->sequence_idle_ms;
    }
    size_t len;
    char *body = api_render_models(am, s->nmodels, (const int(*)[6])batching, &len);
    release_models(s, held, -1);
    return send_json(x, 200, body, len);
}

static enum MHD_Result handle_metrics(http_req *x)
{
    server *s = x->srv;
    metrics_model_now now[CONFIG_MAX_MODELS];
    uint64_t t = queue_now_ns();
    for (int i = 0; i < s->nmodels; i++) {
        server_loaded *l = server_model_acquire(&s->models[i]);
        now[i].queue_depth = l ? sched_queue_depth(l->sched) : 0;
        now[i].open_sequences = l && l->seqs ? seqstore_open(l->seqs, t) : 0;
        server_loaded_release(l);
    }
    jsonw w;
    jsonw_init(&w);
    metrics_render(s->metrics, now, &w);
    size_t len;
    char *body = jsonw_take(&w, &len);
    return send_body(x, 200, body, len, "text/plain; version=0.0.4; charset=utf-8");
}

/* Scheduler thread, generating requests: notes when the first token came. */
static void note_first_token(http_req *x)
{
    if (x->t_first)
        return;
    for (int i = 0; i < x->req.nseqs; i++)
        if (x->req.gen_counts[i] > 0) {
            x->t_first = queue_now_ns();
            return;
        }
}

/* Steps between looks at a generating request's socket. */
#define GONE_POLL_STEPS 16

/* Scheduler thread: 1 when the client of a suspended request has closed its end. MHD does
 * not watch suspended connections, so a client that gives up on a long generation would
 * otherwise be noticed only when the answer is sent. The descriptor stays open while the
 * connection is suspended, so looking at it from this thread is safe. */
static int client_gone(http_req *x)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(x->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return 0;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* Scheduler thread, after each step of a generating request: stops it once the drain has
 * timed out (the answer then says "cancelled"). */
static void cut_if_draining(http_req *x)
{
    if (atomic_load(&x->srv->cut_generation))
        x->cancel = 1;
}

/* Scheduler thread, after each step of a generating request answered at once: notes the
 * first token, and every GONE_POLL_STEPS steps stops the generation if the client left. */
static void on_gen_progress(sched_request *r)
{
    http_req *x = r->user;
    note_first_token(x);
    cut_if_draining(x);
    if (++x->polled >= GONE_POLL_STEPS) {
        x->polled = 0;
        if (client_gone(x)) {
            x->gone = 1;
            x->cancel = 1;
        }
    }
}

/* Scheduler thread, once a generating request has run: its tokens, time to the first
 * and time per token after it, for /metrics. */
static void record_generation(http_req *x)
{
    const sched_request *r = &x->sreq;
    if (!x->req.generate || r->status != BALSA_OK)
        return;
    note_first_token(x);
    long tokens = 0;
    int most = 0;
    for (int i = 0; i < x->req.nseqs; i++) {
        tokens += x->req.gen_counts[i];
        if (x->req.gen_counts[i] > most)
            most = x->req.gen_counts[i];
    }
    uint64_t first = x->t_first ? x->t_first : r->finished_ns;
    metrics_generation(x->srv->metrics, x->model, tokens, secs(x->t0, first),
                       most >= 2 ? secs(first, r->finished_ns) / (most - 1) : -1);
}

/* Ends x's hold on its sequence, if it has one: a request that ran to its end (ok) leaves
 * its final state for the sequence's next request. Called before the answer can go out,
 * so that a client which sends the next request on seeing this one's answer finds the
 * sequence free. */
static void seq_end(http_req *x, int ok)
{
    if (!x->seq)
        return;
    seqstore_end(x->inst->seqs, x->seq, ok ? x->req.state_out : NULL, x->req.seq_end,
                 queue_now_ns());
    x->seq = NULL;
}

/* The request ran to its end: not failed, and its generation (if any) not cut short. */
static int ran_whole(http_req *x)
{
    return x->sreq.status == BALSA_OK && !atomic_load(&x->cancel);
}

/* Called from the scheduler thread once the request has run (or failed): wake the
 * connection; MHD calls the handler again, which answers from the request's state. */
static void on_sched_done(sched_request *r)
{
    http_req *x = r->user;
    seq_end(x, ran_whole(x));
    record_generation(x);
    x->phase = PHASE_DONE;
    MHD_resume_connection(x->conn);
}

/* Frees a finished request and ends its count as in flight. */
static void free_req(http_req *x)
{
    server *s = x->srv;
    seq_end(x, 0);
    if (x->suspended) {
        if (!x->load)
            metrics_inflight_add(s->metrics, -1);
        atomic_fetch_sub(&s->suspended, 1);
    }
    free(x->load);
    if (x->st) {
        pthread_mutex_destroy(&x->st->mu);
        api_stream_free(&x->st->pos);
        jsonw_free(&x->st->out);
        free(x->st);
    }
    api_request_free(&x->req);
    server_loaded_release(x->inst);
    free(x->body);
    free(x->url);
    free(x);
}

static int failure(http_req *x, char *msg, size_t n);

/* Scheduler thread: renders what a streaming request generated since its last event (the
 * last event when final) into its buffer and wakes the reader. An event that cannot be
 * rendered or kept ends the stream early. */
static void stream_push(http_req *x, int final)
{
    http_stream *st = x->st;
    jsonw w;
    jsonw_init(&w);
    if (!final || x->sreq.status == BALSA_OK) {
        if (api_stream_event(&x->req, x->srv->models[x->model].cfg->name, x->v2 == 3, final,
                             &st->pos, &w)) {
            jsonw_free(&w);
            jsonw_init(&w);
            api_stream_error("out of memory rendering the stream", &w);
            final = 1;
        }
    } else {
        char msg[256];
        failure(x, msg, sizeof msg);
        api_stream_error(msg, &w);
    }
    pthread_mutex_lock(&st->mu);
    if (!st->ended && !st->http_done && w.len) {
        if (!w.oom)
            jsonw_raw(&st->out, w.data, w.len);
        if (w.oom || st->out.oom)
            final = 1; /* what was kept is still read; nothing more is added */
    }
    if (final)
        st->ended = 1;
    if (st->waiting && !st->http_done) {
        st->waiting = 0;
        MHD_resume_connection(x->conn);
    }
    pthread_mutex_unlock(&st->mu);
    jsonw_free(&w);
}

static void on_stream_progress(sched_request *r)
{
    http_req *x = r->user;
    note_first_token(x);
    cut_if_draining(x);
    if (!x->st->ended)
        stream_push(x, 0);
}

static void on_stream_done(sched_request *r)
{
    http_req *x = r->user;
    seq_end(x, ran_whole(x));
    if (r->status == BALSA_OK)
        metrics_queue_compute(x->srv->metrics, x->model, secs(r->enqueued_ns, r->started_ns),
                              secs(r->started_ns, r->finished_ns));
    x->t_out0 = x->t_out1 = r->finished_ns;
    record_generation(x);
    stream_push(x, 1);
    http_stream *st = x->st;
    pthread_mutex_lock(&st->mu);
    st->sched_done = 1;
    int last = st->http_done;
    pthread_mutex_unlock(&st->mu);
    if (last)
        free_req(x);
}

/* MHD's reader of a streaming response: the events waiting, the end once the last was
 * read, or nothing with the connection suspended until stream_push resumes it (returning
 * 0 without suspending would make MHD call again at once, a busy loop). */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    http_req *x = cls;
    http_stream *st = x->st;
    ssize_t n;
    pthread_mutex_lock(&st->mu);
    if (st->off < st->out.len) {
        size_t k = st->out.len - st->off < max ? st->out.len - st->off : max;
        memcpy(buf, st->out.data + st->off, k);
        st->off += k;
        if (st->off == st->out.len)
            st->off = st->out.len = 0; /* all read: the buffer starts over */
        n = (ssize_t)k;
    } else if (st->ended) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        st->waiting = 1;
        MHD_suspend_connection(x->conn);
        n = 0;
    }
    pthread_mutex_unlock(&st->mu);
    return n;
}

/* Queues a streaming request's 200: server-sent events, chunked, read from stream_read. */
static enum MHD_Result queue_stream(http_req *x)
{
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, x, NULL);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Request-Id", x->rid);
    cors_headers(x, r);
    if (atomic_load(&x->srv->stage) != SERVER_SERVING)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    x->code = 200;
    enum MHD_Result ret = MHD_queue_response(x->conn, 200, r);
    MHD_destroy_response(r);
    return ret;
}

/* Content types read as JSON: none, application/json (+ parameters), and curl's default
 * for -d, application/x-www-form-urlencoded. */
static int json_content_type(const char *ct)
{
    if (!ct)
        return 1;
    size_t n = strcspn(ct, "; \t");
    return (n == 16 && strncasecmp(ct, "application/json", 16) == 0) ||
           (n == 33 && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0);
}

static enum MHD_Result submit_infer(http_req *x);
static enum MHD_Result answer_infer(http_req *x);

static enum MHD_Result handle_infer(http_req *x)
{
    server *s = x->srv;
    const char *ct = MHD_lookup_connection_value(x->conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!json_content_type(ct)) {
        char msg[200];
        snprintf(msg, sizeof msg, "Content-Type: \"%.80s\" is not JSON (send application/json)",
                 ct);
        return send_error(x, 415, msg);
    }
    if (atomic_load(&s->stage) == SERVER_REFUSING) {
        metrics_reject(s->metrics, METRICS_R_DRAINING);
        return send_error(x, 503, "server is shutting down; retry on another instance");
    }
    api_model am[CONFIG_MAX_MODELS];
    server_loaded *held[CONFIG_MAX_MODELS];
    acquire_models(s, am, held);
    api_limits lim = {s->cfg.max_request_steps, s->cfg.max_output_values};
    char err[512];
    int code = api_parse_request(x->body ? x->body : "", x->len, am, s->nmodels, &lim, &x->req,
                                 err, sizeof err);
    x->model = x->req.model;
    x->inst = release_models(s, held, code ? -1 : x->model);
    if (code) {
        if (code == 503)
            metrics_reject(s->metrics, METRICS_R_NOT_READY);
        return send_error(x, code, err);
    }
    return submit_infer(x);
}

/* Admits x to the sequence it names (x->req.seq_key): it will start from the state the
 * sequence's last request left. Returns 0, or the HTTP status with the message in msg. */
static int seq_begin(http_req *x, char *msg, size_t n)
{
    api_request *q = &x->req;
    char shown[80];
    api_seq_shown(q, shown, sizeof shown);
    if (!x->inst->seqs)
        return api_fail(msg, n, 400,
                        "sequence_id %s: model \"%s\" keeps no sequences (its max_sequences "
                        "is 0)",
                        shown, x->srv->models[x->model].cfg->name);
    size_t S = q->state_size;
    if (!q->state_in && !(q->state_in = malloc(2 * S * sizeof(float))))
        return api_fail(msg, n, 500, "out of memory for the sequence's state");
    int fresh;
    int code = seqstore_begin(x->inst->seqs, q->seq_key, shown, q->seq_start, queue_now_ns(),
                              &x->seq, &fresh, q->state_in, msg, n);
    if (code)
        return code;
    if (!fresh) {
        q->seqs[0].h0 = q->state_in;
        q->seqs[0].c0 = q->state_in + S;
    }
    return 0;
}

/* Runs a parsed request (x->req, x->model) through the model's queue and scheduler: the
 * connection is suspended until on_sched_done; answer_infer answers it. Shared by
 * POST /infer and the v2 infer path. */
static enum MHD_Result submit_infer(http_req *x)
{
    server *s = x->srv;
    if (api_alloc_outputs(&x->req, x->inst->info))
        return send_error(x, 500, "out of memory for the outputs");
    free(x->body); /* the parsed request holds everything now */
    x->body = NULL;

    const config_batching *b = &x->inst->batching;
    int timeout_ms = x->req.timeout_ms > 0 ? x->req.timeout_ms : b->request_timeout_ms;
    sched_request *r = &x->sreq;
    r->seqs = x->req.seqs;
    r->nseqs = x->req.nseqs;
    r->all_steps = x->req.all_steps;
    r->outputs = x->req.outputs;
    r->gen = x->req.generate ? &x->req.gen : NULL;
    r->gen_tokens = x->req.gen_tokens;
    r->gen_counts = x->req.gen_counts;
    r->deadline_ns = x->t0 + (uint64_t)timeout_ms * 1000000u;
    r->done = on_sched_done;
    r->progress = x->req.generate ? on_gen_progress : NULL;
    r->user = x;
    x->req.gen.cancel = &x->cancel;

    /* Count the suspension before looking at the stage: the drain waits for zero, so
     * either it sees this request or this request sees SERVER_REFUSING. */
    atomic_fetch_add(&s->suspended, 1);
    if (atomic_load(&s->stage) == SERVER_REFUSING) {
        atomic_fetch_sub(&s->suspended, 1);
        metrics_reject(s->metrics, METRICS_R_DRAINING);
        return send_error(x, 503, "server is shutting down; retry on another instance");
    }
    if (x->req.seq_key[0]) {
        char msg[512];
        int code = seq_begin(x, msg, sizeof msg);
        if (code) {
            atomic_fetch_sub(&s->suspended, 1);
            if (code == 503)
                metrics_reject(s->metrics, METRICS_R_SEQUENCE_SLOTS);
            return send_error(x, code, msg);
        }
    }
    /* The stream is made once the request is admitted: with one, the request is freed by
     * whichever of MHD and the scheduler finishes last, so one refused before the scheduler
     * had it was never freed. */
    if (x->req.stream) {
        x->st = calloc(1, sizeof *x->st);
        if (!x->st) {
            atomic_fetch_sub(&s->suspended, 1);
            seq_end(x, 0);
            return send_error(x, 500, "out of memory for the stream");
        }
        pthread_mutex_init(&x->st->mu, NULL);
        r->done = on_stream_done;
        r->progress = on_stream_progress;
    }
    x->suspended = 1;
    metrics_inflight_add(s->metrics, 1);
    x->phase = PHASE_WAITING;
    x->t_submit = queue_now_ns();
    if (!x->st)
        MHD_suspend_connection(x->conn);
    balsa_status st = sched_submit(x->inst->sched, r);
    if (st != BALSA_OK) {
        r->status = st;
        snprintf(x->err, sizeof x->err, "%s",
                 st == BALSA_ERR_FULL ? "model queue is full; retry later"
                                      : "server is shutting down; retry on another instance");
        metrics_reject(s->metrics, st == BALSA_ERR_FULL ? METRICS_R_QUEUE_FULL
                                                        : METRICS_R_DRAINING);
        seq_end(x, 0);
        x->phase = PHASE_DONE;
        if (x->st) {
            x->st->sched_done = 1; /* the scheduler never had it */
            return answer_infer(x);
        }
        MHD_resume_connection(x->conn);
    }
    return x->st ? queue_stream(x) : MHD_YES;
}

/* A request the scheduler failed: writes the message, counts the rejection and returns
 * the status: 504 for a deadline that passed in the queue, 503 for a shutdown, 500 for
 * an engine error. */
static int failure(http_req *x, char *msg, size_t n)
{
    server *s = x->srv;
    const sched_request *r = &x->sreq;
    if (r->status == BALSA_ERR_TIMEOUT) {
        metrics_reject(s->metrics, METRICS_R_DEADLINE);
        snprintf(msg, n,
                 "timeout_ms: the deadline passed after %.1f ms in the queue, before the "
                 "request ran",
                 secs(x->t0, r->finished_ns) * 1e3);
        return 504;
    }
    if (r->status == BALSA_ERR_SHUTDOWN) {
        metrics_reject(s->metrics, METRICS_R_DRAINING);
        snprintf(msg, n, "server is shutting down; the request did not run");
        return 503;
    }
    snprintf(msg, n, "engine: %s", balsa_status_str(r->status));
    return 500;
}

/* The second handler call of an /infer request, after the scheduler finished. */
static enum MHD_Result answer_infer(http_req *x)
{
    server *s = x->srv;
    sched_request *r = &x->sreq;
    const server_model *sm = &s->models[x->model];
    if (x->err[0])
        return send_error(x, 503, x->err);
    if (x->gone) {
        /* The client closed its end while generating (on_gen_progress): close too; a write
         * to the socket could still appear to succeed. */
        x->code = 499;
        return MHD_NO;
    }
    if (r->status == BALSA_OK) {
        metrics_queue_compute(s->metrics, x->model, secs(r->enqueued_ns, r->started_ns),
                              secs(r->started_ns, r->finished_ns));
        size_t len;
        x->t_out0 = queue_now_ns();
        char *body = x->v2 == 2 ? api_render_generate(&x->req, sm->cfg->name, &len)
                     : x->v2  ? v2_render_infer(&x->req, &x->v2req, sm->cfg->name,
                                                x->inst->info, &len, &x->infer_header_len)
                              : api_render_response(&x->req, sm->cfg->name, x->inst->info, &len);
        x->t_out1 = queue_now_ns();
        if (!body)
            return send_error(x, 500, "out of memory rendering the response");
        if (x->infer_header_len == len)
            x->infer_header_len = 0; /* all JSON: no Inference-Header-Content-Length */
        if (x->infer_header_len)
            return send_body(x, 200, body, len, "application/octet-stream");
        return send_json(x, 200, body, len);
    }
    char msg[256];
    int code = failure(x, msg, sizeof msg);
    return send_error(x, code, msg);
}

/* Main thread: a reload asked over HTTP is done (or refused); wake its connection. */
static void on_load_done(server_job *j)
{
    http_req *x = j->user;
    x->phase = PHASE_DONE;
    MHD_resume_connection(x->conn);
}

/* POST /v2/repository/models/{m}/load: the main thread reloads the model (server_post_job)
 * while the connection is suspended; answer_load answers it. Counted in srv->suspended so
 * that a drain waits for it (it is answered 503 if the drain comes first). */
static enum MHD_Result submit_load(http_req *x, int model)
{
    server *s = x->srv;
    char err[256];
    int code = v2_parse_load(x->body ? x->body : "", x->len, err, sizeof err);
    if (code)
        return send_error(x, code, err);
    x->load = calloc(1, sizeof *x->load);
    if (!x->load)
        return send_error(x, 500, "out of memory for the load request");
    x->load->model = model;
    x->load->done = on_load_done;
    x->load->user = x;
    atomic_fetch_add(&s->suspended, 1);
    x->suspended = 1;
    x->phase = PHASE_WAITING;
    MHD_suspend_connection(x->conn);
    if (server_post_job(s, x->load)) {
        x->load->code = 503;
        snprintf(x->load->msg, sizeof x->load->msg,
                 "server is shutting down; the model was not reloaded");
        on_load_done(x->load);
    }
    return MHD_YES;
}

/* The second handler call of a load request, after the main thread ran it. */
static enum MHD_Result answer_load(http_req *x)
{
    const server_job *j = x->load;
    if (j->code != 200)
        return send_error(x, j->code, j->msg);
    jsonw w;
    jsonw_init(&w);
    jsonw_str(&w, "{\"name\":");
    jsonw_quoted(&w, x->srv->models[j->model].cfg->name);
    jsonw_str(&w, ",\"state\":\"READY\",\"message\":");
    jsonw_quoted(&w, j->msg);
    jsonw_str(&w, "}\n");
    size_t len;
    char *body = jsonw_take(&w, &len);
    return send_json(x, 200, body, len);
}

/* KServe v2 paths and /openapi.json (v2.c); v2 inference runs like POST /infer. */
static enum MHD_Result route_v2(http_req *x, const char *method)
{
    server *s = x->srv;
    v2_reply rep;
    int model;
    int kind = v2_route(s, method, x->url, x->body ? x->body : "", x->len, &rep, &model);
    if (kind == V2_ANSWERED) {
        x->allow = rep.allow;
        return send_body(x, rep.code, rep.body, rep.len, rep.ctype);
    }
    if (atomic_load(&s->stage) == SERVER_REFUSING) {
        metrics_reject(s->metrics, METRICS_R_DRAINING);
        return send_error(x, 503, "server is shutting down; retry on another instance");
    }
    if (kind == V2_LOAD)
        return submit_load(x, model);
    const char *hl = MHD_lookup_connection_value(x->conn, MHD_HEADER_KIND,
                                                 "Inference-Header-Content-Length");
    long header_len = -1;
    if (hl) {
        char *end;
        header_len = strtol(hl, &end, 10);
        if (end == hl || *end || header_len < 0)
            return send_error(x, 400, "Inference-Header-Content-Length: must be a byte count");
    }
    api_model am[CONFIG_MAX_MODELS];
    server_loaded *held[CONFIG_MAX_MODELS];
    acquire_models(s, am, held);
    api_limits lim = {s->cfg.max_request_steps, s->cfg.max_output_values};
    char err[512];
    x->model = model;
    x->v2 = kind == V2_GENERATE ? 2 : kind == V2_GENERATE_STREAM ? 3 : 1;
    int code = kind == V2_GENERATE || kind == V2_GENERATE_STREAM
                   ? api_parse_generate(x->body ? x->body : "", x->len, am, model, &lim, &x->req,
                                        err, sizeof err)
                   : v2_parse_infer(x->body ? x->body : "", x->len, header_len, am, model, &lim,
                                    &x->req, &x->v2req, err, sizeof err);
    x->inst = release_models(s, held, code ? -1 : model);
    if (code) {
        if (code == 503)
            metrics_reject(s->metrics, METRICS_R_NOT_READY);
        return send_error(x, code, err);
    }
    free(x->body);
    x->body = NULL;
    x->req.stream = kind == V2_GENERATE_STREAM;
    return submit_infer(x);
}

/* A CORS preflight: before a page's cross-origin POST (or a request with Authorization),
 * the browser asks, without credentials, whether it may send it. An allowed origin gets
 * 204 with what it may send, cached for 10 minutes; another gets 403 naming it. */
static enum MHD_Result answer_preflight(http_req *x)
{
    if (!x->cors[0]) {
        char msg[320];
        snprintf(msg, sizeof msg, "origin: %.200s is not one of cors_origins",
                 MHD_lookup_connection_value(x->conn, MHD_HEADER_KIND, "Origin"));
        return send_error(x, 403, msg);
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    cors_headers(x, r);
    MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, HEAD");
    MHD_add_response_header(r, "Access-Control-Allow-Headers",
                            "Authorization, Content-Type, Content-Encoding, X-Request-Id, "
                            "Inference-Header-Content-Length");
    MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    MHD_add_response_header(r, "X-Request-Id", x->rid);
    x->code = 204;
    enum MHD_Result ret = MHD_queue_response(x->conn, 204, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result route(http_req *x, const char *method)
{
    server *s = x->srv;
    if (x->preflight)
        return answer_preflight(x);
    if (x->unauthorized) {
        metrics_reject(s->metrics, METRICS_R_UNAUTHORIZED);
        return send_error(x, 401,
                          "authorization: missing or wrong API key (send the header "
                          "\"Authorization: Bearer <api_key>\")");
    }
    if (x->too_big) {
        char msg[128];
        snprintf(msg, sizeof msg, "body: larger than the limit of %ld bytes", s->cfg.body_limit);
        metrics_reject(s->metrics, METRICS_R_BODY_TOO_LARGE);
        return send_error(x, 413, msg);
    }
    if (x->coding == ENC_UNKNOWN) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "Content-Encoding: \"%.60s\" is not supported (gzip, deflate or identity)",
                 MHD_lookup_connection_value(x->conn, MHD_HEADER_KIND,
                                             MHD_HTTP_HEADER_CONTENT_ENCODING));
        return send_error(x, 415, msg);
    }
    if (x->coding != ENC_IDENTITY && x->body) {
        char msg[200], *plain;
        size_t n;
        int code = enc_inflate(x->body, x->len, x->coding, (size_t)s->cfg.body_limit, &plain,
                               &n, msg, sizeof msg);
        if (code) {
            if (code == 413)
                metrics_reject(s->metrics, METRICS_R_BODY_TOO_LARGE);
            return send_error(x, code, msg);
        }
        free(x->body);
        x->body = plain;
        x->len = x->cap = n;
    }
    if (x->url)
        return route_v2(x, method);
    int i;
    for (i = 0; i < NROUTES; i++)
        if (routes[i].handler == x->handler)
            break;
    if (i == NROUTES) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "no such path: %s (paths: /infer, /models, /metrics, /healthz, /readyz, "
                 "/openapi.json, /v2...)",
                 x->path);
        return send_error(x, 404, msg);
    }
    int is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (x->handler == METRICS_H_INFER ? strcmp(method, "POST") != 0 : !is_get) {
        char msg[160];
        snprintf(msg, sizeof msg, "method %s not allowed on %s (allowed: %s)", method,
                 routes[i].path, routes[i].allow);
        return send_error(x, 405, msg);
    }
    char why[160];
    switch (x->handler) {
    case METRICS_H_INFER:
        return handle_infer(x);
    case METRICS_H_MODELS:
        return handle_models(x);
    case METRICS_H_METRICS:
        return handle_metrics(x);
    case METRICS_H_HEALTHZ:
        return send_static_json(x, 200, "{\"status\":\"ok\"}\n");
    case METRICS_H_READYZ:
        if (server_ready(s, why, sizeof why))
            return send_static_json(x, 200, "{\"status\":\"ready\"}\n");
        return send_error(x, 503, why);
    default:
        return send_error(x, 404, "no such path");
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    server *s = cls;
    http_req *x = *con_cls;
    if (!x) {
        x = calloc(1, sizeof *x);
        if (!x)
            return MHD_NO;
        x->srv = s;
        x->conn = conn;
        x->model = -1;
        copy_str(x->method, sizeof x->method, method);
        copy_str(x->path, sizeof x->path, url);
        request_id(s, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id"),
                   x->rid, sizeof x->rid);
        x->handler = METRICS_H_OTHER;
        for (int i = 0; i < NROUTES; i++)
            if (!strcmp(url, routes[i].path))
                x->handler = routes[i].handler;
        if (v2_owns_path(url)) {
            x->handler = METRICS_H_V2;
            x->url = strdup(url);
            if (!x->url) {
                free(x);
                return MHD_NO;
            }
        }
        /* Times are needed for /infer and v2 (deadline, metrics, statistics) and for the
         * access log only. */
        if (x->handler == METRICS_H_INFER || x->handler == METRICS_H_V2 || s->cfg.access_log)
            x->t0 = queue_now_ns();
        /* A declared length over the limit is refused without buffering anything. */
        const char *cl = x->handler == METRICS_H_INFER || x->handler == METRICS_H_V2
                             ? MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                           MHD_HTTP_HEADER_CONTENT_LENGTH)
                             : NULL;
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)s->cfg.body_limit)
            x->too_big = 1;
        /* Bodies are read by /infer and v2 only; others ignore their coding, as their body. */
        if (x->handler == METRICS_H_INFER || x->handler == METRICS_H_V2)
            x->coding = enc_content_coding(MHD_lookup_connection_value(
                conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_ENCODING));
        x->gzip_ok = enc_accepts_gzip(
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT_ENCODING));
        cors_allow(s->cfg.cors_origins, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin"),
                   x->cors, sizeof x->cors);
        x->preflight = s->cfg.cors_origins[0] && !strcmp(method, "OPTIONS") &&
                       MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin") &&
                       MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                   "Access-Control-Request-Method");
        const auth_keys *keys = atomic_load(&s->auth);
        if (keys->n && !open_path(url) && !x->preflight &&
            !auth_keys_accept(keys, MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                                MHD_HTTP_HEADER_AUTHORIZATION)))
            x->unauthorized = 1;
        *con_cls = x;
        return MHD_YES;
    }
    if (x->phase == PHASE_DONE)
        return x->load ? answer_load(x) : answer_infer(x);
    if (x->phase == PHASE_WAITING)
        return MHD_YES; /* not reached: a suspended connection is not called */
    if (*upload_size) {
        /* A response cannot be queued while the body streams in: discard the rest of an
         * oversized body and answer 413 on the final call. */
        size_t n = *upload_size;
        *upload_size = 0;
        if (x->too_big || x->unauthorized || x->coding == ENC_UNKNOWN ||
            (x->handler != METRICS_H_INFER && x->handler != METRICS_H_V2))
            return MHD_YES;
        if (x->len + n > (size_t)s->cfg.body_limit) {
            x->too_big = 1;
            free(x->body);
            x->body = NULL;
            x->len = x->cap = 0;
            return MHD_YES;
        }
        if (x->len + n > x->cap) {
            size_t cap = x->cap ? x->cap : 4096;
            while (cap < x->len + n)
                cap *= 2;
            char *b = realloc(x->body, cap);
            if (!b)
                return MHD_NO;
            x->body = b;
            x->cap = cap;
        }
        memcpy(x->body + x->len, upload, n);
        x->len += n;
        return MHD_YES;
    }
    return route(x, method);
}

/* Writes the access-log line of a finished request to stderr, as text (key=value) or as
 * one JSON object (access_log_format). code: the status counted; delivered: the answer
 * reached the client; sched_done: the scheduler is done with it, so its times may be read. */
static void access_log(const http_req *x, int code, int delivered, int sched_done, uint64_t t1)
{
    const server *s = x->srv;
    const sched_request *r = &x->sreq;
    int ran = x->model >= 0 && sched_done && r->started_ns;
    const char *model = x->model >= 0 ? s->models[x->model].cfg->name : NULL;
    double queue_ms = ran ? secs(r->enqueued_ns, r->started_ns) * 1e3 : 0;
    double compute_ms = ran ? secs(r->started_ns, r->finished_ns) * 1e3 : 0;
    double total_ms = secs(x->t0, t1) * 1e3;
    if (!strcmp(s->cfg.access_log_format, "json")) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        char when[40];
        size_t k = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(when + k, sizeof when - k, ".%03ldZ", now.tv_nsec / 1000000);
        jsonw w;
        jsonw_init(&w);
        jsonw_printf(&w, "{\"time\":\"%s\",\"method\":", when);
        jsonw_quoted(&w, x->method);
        jsonw_str(&w, ",\"path\":");
        jsonw_quoted(&w, x->path);
        jsonw_printf(&w, ",\"status\":%d,\"delivered\":%s,\"model\":", code,
                     delivered ? "true" : "false");
        if (model)
            jsonw_quoted(&w, model);
        else
            jsonw_str(&w, "null");
        jsonw_printf(&w, ",\"batch\":%d,\"queue_ms\":%.3f,\"compute_ms\":%.3f,"
                         "\"total_ms\":%.3f,\"request_id\":",
                     ran ? r->batch_max : 0, queue_ms, compute_ms, total_ms);
        jsonw_quoted(&w, x->rid);
        jsonw_str(&w, "}\n");
        size_t n;
        char *line = jsonw_take(&w, &n);
        if (line)
            fwrite(line, 1, n, stderr); /* one write per line: threads do not interleave */
        free(line);
        return;
    }
    /* The path as it was decoded from the URL: a control character in it (%0A) would let
     * a client forge log lines, so those are shown as '?'. */
    char path[sizeof x->path];
    size_t i = 0;
    for (; x->path[i]; i++)
        path[i] = (unsigned char)x->path[i] < 0x20 || x->path[i] == 0x7f ? '?' : x->path[i];
    path[i] = 0;
    char line[400];
    int n = snprintf(line, sizeof line,
                     "%s %s %d%s model=%s batch=%d queue_ms=%.3f compute_ms=%.3f total_ms=%.3f "
                     "id=%s\n",
                     x->method, path, code, delivered ? "" : " (not delivered)",
                     model ? model : "-", ran ? r->batch_max : 0, queue_ms, compute_ms, total_ms,
                     x->rid);
    /* One write per line, so lines from different threads do not interleave. */
    fwrite(line, 1, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1, stderr);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    server *s = cls;
    http_req *x = *con_cls;
    if (!x)
        return;
    *con_cls = NULL;
    uint64_t t1 = x->t0 ? queue_now_ns() : 0;
    /* No answer queued: the client closed the connection (or stopped sending) first, which
     * is counted apart from the server's own failures, as nginx's 499. x->gone: it was
     * seen gone while generating (MHD may then end the connection with any code). */
    int client_gone = toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT ||
                      toe == MHD_REQUEST_TERMINATED_READ_ERROR ||
                      toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED || x->gone;
    int code = x->code ? x->code : client_gone ? 499 : 500;
    /* A stream's scheduler part may still run (the client left): its times and batch are
     * only read once it is done. */
    int sched_done = 1;
    if (x->st) {
        pthread_mutex_lock(&x->st->mu);
        sched_done = x->st->sched_done;
        pthread_mutex_unlock(&x->st->mu);
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && code == 200)
            code = 499; /* the 200 went out, the events did not all arrive */
    }
    metrics_http(s->metrics, x->handler, code);
    if (x->model >= 0)
        metrics_infer(s->metrics, x->model, code, secs(x->t0, t1));
    if (x->model >= 0 && code == 200 && sched_done) {
        const sched_request *r = &x->sreq;
        v2_stats_times t = {t1 - x->t0, x->t_submit - x->t0, r->started_ns - r->enqueued_ns,
                            r->finished_ns - r->started_ns, x->t_out1 - x->t_out0};
        v2_stats_success(s->v2stats, x->model, x->req.nseqs, &t);
    } else if (x->model >= 0) {
        v2_stats_fail(s->v2stats, x->model, t1 - x->t0);
    }
    if (s->cfg.access_log)
        access_log(x, code, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK, sched_done, t1);
    if (x->st) {
        pthread_mutex_lock(&x->st->mu);
        x->st->http_done = 1;
        int last = x->st->sched_done;
        if (!last)
            x->cancel = 1; /* nobody reads the rest; set before on_stream_done may free */
        pthread_mutex_unlock(&x->st->mu);
        if (!last)
            return; /* on_stream_done frees it */
    }
    free_req(x);
}

int http_start(server *s, char *err, size_t errlen)
{
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    struct sockaddr *addr;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    if (inet_pton(AF_INET, s->cfg.host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)s->cfg.port);
        addr = (struct sockaddr *)&a4;
    } else if (inet_pton(AF_INET6, s->cfg.host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)s->cfg.port);
        addr = (struct sockaddr *)&a6;
        flags |= MHD_USE_IPv6;
    } else {
        snprintf(err, errlen, "host: \"%s\" is not an IP address", s->cfg.host);
        return -1;
    }
    /* Made ids differ between servers and restarts; a failed getrandom falls back to the
     * clock and pid, which only needs to differ, not to be secret. */
    if (getrandom(&s->rid_base, sizeof s->rid_base, 0) != (ssize_t)sizeof s->rid_base)
        s->rid_base = queue_now_ns() ^ ((uint64_t)getpid() << 40);
    s->listen_fd = -1;
    /* Each connection's memory pool (request headers, read and write buffers; bodies stream
     * through it) is cleared for every request: at the default 32 KiB that memset was 3.4%
     * of the server's CPU under wrk -c64 with a short /infer (perf), at 16 KiB 1.1%.
     * Headers over about 16 KiB get the library's own 431. */
    struct MHD_OptionItem opts[12] = {
        {MHD_OPTION_SOCK_ADDR, 0, addr},
        {MHD_OPTION_THREAD_POOL_SIZE, (intptr_t)s->cfg.http_threads, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)s->cfg.connection_timeout_s, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, (intptr_t)s->cfg.connection_limit, NULL},
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)16384, NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, s},
    };
    int nopt = 6;
    if (s->tls.cert) {
        /* The certificate comes from a callback rather than as text, so that a SIGHUP can
         * replace it while the daemon runs (tls.h). */
        flags |= MHD_USE_TLS;
        opts[nopt++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_CERT_CALLBACK, 0,
                                               tls_serve_callback()};
        /* TLS 1.2 and 1.3 only, GnuTLS's usual ciphers within them. */
        opts[nopt++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0,
                                               (void *)"NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"};
    }
    opts[nopt] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    s->daemon = MHD_start_daemon(flags, (uint16_t)s->cfg.port, NULL, NULL, on_request, s,
                                 MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
    if (!s->daemon) {
        snprintf(err, errlen, "cannot listen on %s:%d%s (address in use, or not this host's?)",
                 s->cfg.host, s->cfg.port, s->tls.cert ? " with TLS" : "");
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : s->cfg.port;
    return 0;
}

void http_quiesce(server *s)
{
    MHD_socket fd = MHD_quiesce_daemon(s->daemon);
    if (fd != MHD_INVALID_SOCKET) {
        /* Refuse queued and new connections now; the descriptor itself may only be closed
         * after MHD_stop_daemon (a pool thread may still look at it). */
        shutdown(fd, SHUT_RDWR);
        s->listen_fd = fd;
    }
}

void http_stop(server *s)
{
    BALSA_ASSERT(atomic_load(&s->suspended) == 0);
    MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    s->listen_fd = -1;
}
