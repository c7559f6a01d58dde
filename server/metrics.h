/* Prometheus metrics for the server, written in the text exposition format 0.0.4 (there
 * is no C client library in Debian). Counters and histograms are lock-free atomics, so
 * the HTTP threads and the schedulers record without contention; GET /metrics renders a
 * consistent-enough snapshot (each histogram's count is the sum of its buckets as read). */
#ifndef BALSA_METRICS_H
#define BALSA_METRICS_H

#include "jsonw.h"

/* The handlers (paths) requests are counted under; anything else is METRICS_H_OTHER. */
typedef enum {
    METRICS_H_INFER = 0,
    METRICS_H_MODELS,
    METRICS_H_METRICS,
    METRICS_H_HEALTHZ,
    METRICS_H_READYZ,
    METRICS_H_V2, /* every /v2 path and /openapi.json */
    METRICS_H_OTHER,
    METRICS_NHANDLERS
} metrics_handler;

/* Why a request was refused before it ran. */
typedef enum {
    METRICS_R_QUEUE_FULL = 0,
    METRICS_R_DRAINING,
    METRICS_R_DEADLINE,
    METRICS_R_BODY_TOO_LARGE,
    METRICS_R_NOT_READY,
    METRICS_R_UNAUTHORIZED,
    METRICS_R_SEQUENCE_SLOTS, /* every slot for an open sequence (max_sequences) taken */
    METRICS_NREASONS
} metrics_reason;

typedef struct metrics metrics;

/* Creates the registry for nmodels models (names copied). backend is the label of
 * balsa_build_info. Returns NULL when out of memory. */
metrics *metrics_create(int nmodels, const char *const *model_names, const char *version,
                        const char *backend);
void metrics_free(metrics *m);

/* One finished HTTP request, counted by handler and status code. */
void metrics_http(metrics *m, metrics_handler h, int code);
/* One finished /infer request for a known model: status code and end-to-end seconds. */
void metrics_infer(metrics *m, int model, int code, double seconds);
/* Time a request waited in its model's queue and then ran, for a request that ran. */
void metrics_queue_compute(metrics *m, int model, double queue_s, double compute_s);
/* A generating request that ran: the tokens it generated (all its sequences), the
 * seconds from its arrival to its first generated token, and the mean seconds per token
 * after the first (per_token_s < 0 when it generated fewer than two). */
void metrics_generation(metrics *m, int model, long tokens, double first_token_s,
                        double per_token_s);
/* One executed step (or batch) of `size` sequences. */
void metrics_batch(metrics *m, int model, int size);
void metrics_reject(metrics *m, metrics_reason r);
/* A load (at start-up or a reload) that succeeded, and how long it took. */
void metrics_model_loaded(metrics *m, int model, double load_seconds);
/* A reload of a model from its file, and whether it succeeded. */
void metrics_model_reload(metrics *m, int model, int ok);
void metrics_set_ready(metrics *m, int model, int ready);
/* Requests admitted to a queue and not yet answered. */
/* The served TLS certificate's expiry (seconds since the epoch), exported as a gauge so
 * that an alert can warn before it lapses; set at start-up and when a SIGHUP renews it. */
void metrics_set_tls_expiry(metrics *m, long long not_after);
void metrics_inflight_add(metrics *m, int delta);

/* A model's gauges read at scrape time. */
typedef struct {
    int queue_depth;    /* requests waiting in its queue */
    int open_sequences; /* sequences (sequence_id) open */
} metrics_model_now;

/* Appends the whole exposition to w; now[i] (NULL: all zero) is model i's gauges. */
void metrics_render(metrics *m, const metrics_model_now *now, jsonw *w);

#endif
