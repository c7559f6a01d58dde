/* `balsa serve`: reads the configuration, starts the HTTP daemon, loads and warms up every
 * model on its own backend, starts one batching scheduler per model, and on SIGTERM or
 * SIGINT drains: /readyz turns 503 at once, requests are still served for drain_delay_ms,
 * then the daemon stops accepting, refuses new work, finishes every admitted request
 * (failing the queued ones with 503 if drain_timeout_ms runs out) and exits 0. */
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "server.h"
#include "v2_stats.h"

#ifndef BALSA_VERSION
#define BALSA_VERSION "0.1.0"
#endif

static const char *env_get(const char *name)
{
    return getenv(name);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* Called by each scheduler before every step: the executed-batch-size histogram. */
typedef struct {
    metrics *m;
    v2_stats *st;
    int model;
} step_ctx;

static void on_step(void *ctx, int batch)
{
    step_ctx *c = ctx;
    metrics_batch(c->m, c->model, batch);
}

/* Called by each scheduler after every step: the statistics extension's batch_stats. */
static void on_executed(void *ctx, int batch, uint64_t step_ns)
{
    step_ctx *c = ctx;
    v2_stats_execution(c->st, c->model, batch, step_ns);
}

/* Loads model i, runs one warm-up batch with model_run and starts its scheduler. */
static int load_model(server *s, int i, step_ctx *ctx, char *err, size_t errlen)
{
    server_model *sm = &s->models[i];
    char why[256];
    balsa_status st = balsa_backend_create(s->cfg.backend, s->cfg.threads, &sm->be, why,
                                           sizeof why);
    if (st != BALSA_OK) {
        snprintf(err, errlen, "model %s: %s", sm->cfg->name, why);
        return -1;
    }
    uint64_t t0 = queue_now_ns();
    char msg[512];
    st = model_load(sm->cfg->path, sm->be, &sm->model, msg, sizeof msg);
    if (st != BALSA_OK) {
        snprintf(err, errlen, "model %s: %s: %s", sm->cfg->name, sm->cfg->path, msg);
        return -1;
    }
    double load_s = (double)(queue_now_ns() - t0) * 1e-9;
    metrics_model_loaded(s->metrics, i, load_s);
    sm->info = model_get_info(sm->model);

    /* Warm-up: one batch of max_batch_size one-step sequences, so the first request does
     * not pay for first-touch allocations. */
    int n = sm->cfg->batching.max_batch_size;
    int d = sm->info->input_kind == MODEL_INPUT_TOKENS ? 1 : sm->info->input_size;
    int32_t *tok = calloc((size_t)n, sizeof *tok);
    float *feat = calloc((size_t)n * (size_t)d, sizeof *feat);
    float *out = calloc((size_t)n * (size_t)sm->info->output_size, sizeof *out);
    engine_seq *seqs = calloc((size_t)n, sizeof *seqs);
    float **outs = calloc((size_t)n, sizeof *outs);
    st = BALSA_ERR_OOM;
    if (tok && feat && out && seqs && outs) {
        for (int k = 0; k < n; k++) {
            seqs[k].len = 1;
            if (sm->info->input_kind == MODEL_INPUT_TOKENS)
                seqs[k].tokens = tok + k;
            else
                seqs[k].features = feat + (size_t)k * (size_t)d;
            outs[k] = out + (size_t)k * (size_t)sm->info->output_size;
        }
        st = model_run(sm->model, seqs, n, 0, outs);
    }
    free(tok);
    free(feat);
    free(out);
    free(seqs);
    free(outs);
    if (st != BALSA_OK) {
        snprintf(err, errlen, "model %s: warm-up failed: %s", sm->cfg->name,
                 balsa_status_str(st));
        return -1;
    }
    ctx->m = s->metrics;
    ctx->st = s->v2stats;
    ctx->model = i;
    sched_config sc = {sm->cfg->batching.max_batch_size, sm->cfg->batching.max_queue_delay_us,
                       sm->cfg->batching.queue_capacity, on_executed};
    st = sched_create(sm->model, &sc, on_step, ctx, &sm->sched);
    if (st != BALSA_OK) {
        snprintf(err, errlen, "model %s: scheduler: %s", sm->cfg->name, balsa_status_str(st));
        return -1;
    }
    const model_info *in = sm->info;
    fprintf(stderr,
            "balsa: model %s ready in %.3f s: %s, %s %d -> %d, hidden %d x %d layers, bank %d, "
            "sparsity %.3f\n",
            sm->cfg->name, load_s, sm->cfg->path,
            in->input_kind == MODEL_INPUT_TOKENS ? "tokens" : "vectors",
            in->input_kind == MODEL_INPUT_TOKENS ? in->vocab_size : in->input_size,
            in->output_size, in->hidden_size, in->num_layers, in->bank, in->sparsity);
    atomic_store(&sm->ready, 1);
    metrics_set_ready(s->metrics, i, 1);
    return 0;
}

/* Waits up to ms for the admitted requests to finish; returns 1 when none is left. */
static int wait_idle(server *s, int ms)
{
    uint64_t until = queue_now_ns() + (uint64_t)ms * 1000000u;
    while (atomic_load(&s->suspended) > 0) {
        if (queue_now_ns() >= until)
            return 0;
        sleep_ms(2);
    }
    return 1;
}

/* The drain sequence after the first SIGTERM/SIGINT (a second one cuts the delay short). */
static int drain(server *s, const sigset_t *sigs)
{
    uint64_t t0 = queue_now_ns();
    atomic_store(&s->stage, SERVER_UNREADY);
    fprintf(stderr, "balsa: shutting down: /readyz now 503; serving for %d ms more\n",
            s->cfg.drain_delay_ms);
    struct timespec ts = {s->cfg.drain_delay_ms / 1000,
                          (long)(s->cfg.drain_delay_ms % 1000) * 1000000L};
    if (s->cfg.drain_delay_ms > 0 && sigtimedwait(sigs, NULL, &ts) > 0)
        fprintf(stderr, "balsa: second signal: skipping the rest of the drain delay\n");
    http_quiesce(s);
    atomic_store(&s->stage, SERVER_REFUSING);
    for (int i = 0; i < s->nmodels; i++)
        if (s->models[i].sched)
            sched_close(s->models[i].sched);
    long left = atomic_load(&s->suspended);
    fprintf(stderr, "balsa: stopped accepting; finishing %ld admitted request(s)\n", left);
    if (!wait_idle(s, s->cfg.drain_timeout_ms)) {
        fprintf(stderr,
                "balsa: drain timeout (%d ms): failing the queued requests with 503, ending "
                "running generations at their next token\n",
                s->cfg.drain_timeout_ms);
        atomic_store(&s->cut_generation, 1);
        for (int i = 0; i < s->nmodels; i++)
            if (s->models[i].sched)
                sched_abort(s->models[i].sched);
        if (!wait_idle(s, 5000)) {
            /* Stopping the daemon now would abort on the suspended connections. */
            fprintf(stderr, "balsa: %ld request(s) still running; exiting without them\n",
                    (long)atomic_load(&s->suspended));
            return 1;
        }
    }
    http_stop(s);
    fprintf(stderr, "balsa: drained in %.3f s\n", (double)(queue_now_ns() - t0) * 1e-9);
    return 0;
}

static void server_free(server *s)
{
    for (int i = 0; i < s->nmodels; i++) {
        server_model *sm = &s->models[i];
        sched_free(sm->sched);
        if (sm->model)
            model_free(sm->model);
        if (sm->be)
            sm->be->ops->destroy(sm->be);
    }
    metrics_free(s->metrics);
    v2_stats_free(s->v2stats);
}

int serve_main(int argc, char **argv)
{
    static server srv; /* large (config) and shared with the daemon threads */
    server *s = &srv;
    char err[2048];
    config *c = &s->cfg;
    config_defaults(c);
    const char *file = config_find_file(argc, argv, env_get);
    if (file && config_load_file(c, file, err, sizeof err)) {
        fprintf(stderr, "balsa serve: config error: %s\n", err);
        return 1;
    }
    if (config_apply_env(c, env_get, err, sizeof err)) {
        fprintf(stderr, "balsa serve: environment: %s\n", err);
        return 1;
    }
    int rc = config_apply_flags(c, argc, argv, err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc) {
        fprintf(stderr, "balsa serve: %s\n", err);
        return 2;
    }
    if (config_finish(c, err, sizeof err)) {
        fprintf(stderr, "balsa serve: config error: %s\n", err);
        return 1;
    }

#ifdef __GLIBC__
    /* One malloc arena for every thread. With glibc's default (an arena per thread, up to
     * 8 per core) the resident size kept creeping under steady load: +12% to +16% from
     * 10k to 100k identical requests, and not a leak (LeakSanitizer finds none); capped
     * at one arena it stays within 1% (bench/http.sh, memory phase; 2 arenas still crept),
     * so it is fragmentation spread over the arenas of the HTTP threads and the scheduler.
     * Throughput did not change measurably: the threads allocate little per request. */
    mallopt(M_ARENA_MAX, 1);
#endif
    /* Signals are taken by sigwait in this thread only: block them before any thread
     * starts, so every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    s->nmodels = c->nmodels;
    const char *names[CONFIG_MAX_MODELS];
    for (int i = 0; i < c->nmodels; i++) {
        s->models[i].cfg = &c->models[i];
        names[i] = c->models[i].name;
    }
    /* The banner names the backend the models will get, and why. */
    char why[256];
    balsa_backend *probe = NULL;
    if (balsa_backend_create(c->backend, c->threads, &probe, why, sizeof why) != BALSA_OK) {
        fprintf(stderr, "balsa serve: %s\n", why);
        return 1;
    }
    char backend_name[32];
    snprintf(backend_name, sizeof backend_name, "%s", probe->ops->name);
    probe->ops->destroy(probe);

    s->metrics = metrics_create(c->nmodels, names, BALSA_VERSION, backend_name);
    int max_batch[CONFIG_MAX_MODELS];
    for (int i = 0; i < c->nmodels; i++)
        max_batch[i] = c->models[i].batching.max_batch_size;
    s->v2stats = v2_stats_create(c->nmodels, max_batch);
    if (!s->metrics || !s->v2stats) {
        fprintf(stderr, "balsa serve: out of memory\n");
        return 1;
    }
    if (http_start(s, err, sizeof err)) {
        fprintf(stderr, "balsa serve: %s\n", err);
        server_free(s);
        return 1;
    }
    fprintf(stderr, "balsa %s serving on http://%s:%d (%d HTTP threads, body limit %ld bytes)\n"
                    "balsa: %s\n",
            BALSA_VERSION, c->host, s->port, c->http_threads, c->body_limit, why);
    for (int i = 0; i < c->nmodels; i++) {
        const config_batching *b = &c->models[i].batching;
        fprintf(stderr,
                "balsa: model %s <- %s; batching: max_batch_size %d, max_queue_delay_us %d, "
                "queue_capacity %d, request_timeout_ms %d\n",
                c->models[i].name, c->models[i].path, b->max_batch_size, b->max_queue_delay_us,
                b->queue_capacity, b->request_timeout_ms);
    }
    static step_ctx ctx[CONFIG_MAX_MODELS];
    for (int i = 0; i < c->nmodels; i++) {
        if (load_model(s, i, &ctx[i], err, sizeof err)) {
            fprintf(stderr, "balsa serve: %s\n", err);
            atomic_store(&s->stage, SERVER_REFUSING);
            http_quiesce(s);
            http_stop(s);
            server_free(s);
            return 1;
        }
    }
    fprintf(stderr, "balsa: ready\n");
    int sig = 0;
    while (sigwait(&sigs, &sig) != 0)
        ;
    fprintf(stderr, "balsa: got %s\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    rc = drain(s, &sigs);
    if (rc) {
        fflush(stderr);
        _Exit(rc);
    }
    server_free(s);
    return 0;
}
