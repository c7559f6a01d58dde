/* The state `balsa serve` shares between its parts: the configuration, one entry per
 * served model (backend, model, scheduler), the metrics, the HTTP daemon and the
 * readiness/draining flags. serve.c owns the life cycle; http.c answers requests. */
#ifndef BALSA_SERVER_H
#define BALSA_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/stat.h>

#include "auth.h"
#include "config.h"
#include "engine/engine.h"
#include "engine/sched.h"
#include "metrics.h"
#include "tls.h"

/* One loaded instance of a served model: its backend, the model, the model's scheduler
 * and its open sequences. A reload (serve.c) builds a new instance beside the one
 * serving, switches the model over to it, and frees the old one once the last request
 * that took it is done. */
typedef struct server_loaded {
    balsa_backend *be;
    balsa_model *model;
    const model_info *info;
    sched *sched;
    config_batching batching;    /* the model's settings when this instance was loaded (a
                                  * SIGHUP may change the configuration's; requests read
                                  * these) */
    struct seqstore *seqs;       /* its open sequences (seqstore.h); NULL for a model that
                                  * keeps none (no unidirectional LSTM, or max_sequences 0) */
    atomic_long refs;            /* one while it is the model's current instance, plus one
                                  * per request or reader holding it */
    struct server_loaded *next;  /* the server's list of retired instances (serve.c) */
} server_loaded;

typedef struct {
    const config_model *cfg;     /* name, path and effective batching settings (the path and
                                  * settings are the main thread's: a SIGHUP may change them;
                                  * requests read their instance's) */
    pthread_mutex_t mu;          /* guards cur against a reload while a ref is taken */
    server_loaded *cur;          /* the instance new requests get; NULL until loaded */
    atomic_int ready;            /* loaded, warmed up and scheduled once */
    struct stat file;            /* the model file as last loaded (a reload of an unchanged
                                  * file is skipped) */
    struct stat seen;            /* model_poll_ms: the changed file as the last look found it */
    int poll_state;              /* 0 nothing pending, 1 seen changed (waiting for it to
                                  * settle), 2 seen's file failed to load (not tried again) */
} server_model;

/* The model's current instance with a reference taken, or NULL while it is loading.
 * Everything a request reads of its model (info, model, sched) comes from one instance
 * held from parsing to the response, so a reload in between cannot mix two. */
server_loaded *server_model_acquire(server_model *sm);
/* Drops a reference from server_model_acquire; NULL is ignored. Never frees: the reload
 * side frees retired instances once nothing holds them. */
void server_loaded_release(server_loaded *l);

/* A reload asked over HTTP (POST /v2/repository/models/{m}/load): the main thread, which
 * runs every load, takes it from the server's queue and calls done with the outcome. */
typedef struct server_job {
    int model;
    int code;                    /* set before done: 200, or the HTTP status of the failure */
    char msg[1280];              /* set before done: what happened, for the answer */
    void (*done)(struct server_job *j);
    void *user;
    struct server_job *next;
} server_job;

/* Draining stages, in order. */
enum {
    SERVER_SERVING = 0,
    SERVER_UNREADY,   /* SIGTERM seen: /readyz says 503, requests still served */
    SERVER_REFUSING   /* no longer admitting requests (503); admitted ones finish */
};

typedef struct server {
    config cfg;
    int nmodels;
    server_model models[CONFIG_MAX_MODELS];
    metrics *metrics;
    struct v2_stats *v2stats;    /* Triton-style statistics (v2_stats.h) */
    struct MHD_Daemon *daemon;
    _Atomic(auth_keys *) auth;   /* the API keys requests must carry (n 0: none); a SIGHUP
                                  * swaps in a new set, the old kept until exit (auth.h) */
    tls_files tls;               /* cert and key when cfg.tls_cert is set (serve.c loads
                                  * them before http_start), else zeroed: plain HTTP */
    int listen_fd;               /* after http_quiesce, until http_stop */
    int port;                    /* the bound port */
    atomic_int stage;
    atomic_long suspended;       /* connections suspended for the scheduler, not yet done */
    atomic_int cut_generation;   /* set at the drain timeout: running generations end at
                                  * their next step (finish_reason "cancelled") */
    server_loaded *retired;      /* instances a reload replaced, not yet freed (main thread) */
    pthread_t main_thread;       /* takes the signals and runs every load */
    pthread_mutex_t jobs_mu;     /* guards jobs and the check of stage that admits one */
    server_job *jobs;            /* reloads asked over HTTP, oldest first */
    uint64_t rid_base;           /* request ids made here: rid_base (random at start) and */
    atomic_ullong rid_next;      /* a counter (http.c) */
} server;

/* Queues j for the main thread and wakes it; j->done will be called from there. Returns
 * 0, or -1 when the server is no longer admitting requests (j is not queued). */
int server_post_job(server *s, server_job *j);

/* Starts the libmicrohttpd daemon on cfg.host:cfg.port; 0, or -1 with err. */
int http_start(server *s, char *err, size_t errlen);
/* Stops accepting connections (MHD_quiesce_daemon); open connections are still served. */
void http_quiesce(server *s);
/* Stops the daemon; no connection may be suspended (s->suspended == 0). */
void http_stop(server *s);

#endif
