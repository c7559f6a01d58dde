/* The state `balsa serve` shares between its parts: the configuration, one entry per
 * served model (backend, model, scheduler), the metrics, the HTTP daemon and the
 * readiness/draining flags. serve.c owns the life cycle; http.c answers requests. */
#ifndef BALSA_SERVER_H
#define BALSA_SERVER_H

#include <stdatomic.h>

#include "config.h"
#include "engine/engine.h"
#include "engine/sched.h"
#include "metrics.h"

typedef struct {
    const config_model *cfg;     /* name, path and effective batching settings */
    balsa_backend *be;
    balsa_model *model;
    const model_info *info;      /* valid once ready is 1 */
    sched *sched;
    atomic_int ready;            /* loaded, warmed up and scheduled */
} server_model;

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
    int listen_fd;               /* after http_quiesce, until http_stop */
    int port;                    /* the bound port */
    atomic_int stage;
    atomic_long suspended;       /* connections suspended for the scheduler, not yet done */
    atomic_int cut_generation;   /* set at the drain timeout: running generations end at
                                  * their next step (finish_reason "cancelled") */
} server;

/* Starts the libmicrohttpd daemon on cfg.host:cfg.port; 0, or -1 with err. */
int http_start(server *s, char *err, size_t errlen);
/* Stops accepting connections (MHD_quiesce_daemon); open connections are still served. */
void http_quiesce(server *s);
/* Stops the daemon; no connection may be suspended (s->suspended == 0). */
void http_stop(server *s);

#endif
