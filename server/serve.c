/* `balsa serve`: reads the configuration, starts the HTTP daemon, loads and warms up every
 * model on its own backend, starts one batching scheduler per model, and on SIGTERM or
 * SIGINT drains: /readyz turns 503 at once, requests are still served for drain_delay_ms,
 * then the daemon stops accepting, refuses new work, finishes every admitted request
 * (failing the queued ones with 503 if drain_timeout_ms runs out) and exits 0.
 *
 * Reloads: on SIGHUP every model whose file changed, and on a load request over HTTP
 * (server_post_job, SIGUSR1) the model asked for, is loaded into a new instance while the
 * current one serves, then swapped in; the old instance is retired and freed once the
 * requests holding it are done. Every load runs on this (the main) thread, one at a time,
 * so a reload never races the drain. */
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
#include "seqstore.h"
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

server_loaded *server_model_acquire(server_model *sm)
{
    pthread_mutex_lock(&sm->mu);
    server_loaded *l = sm->cur;
    if (l)
        atomic_fetch_add(&l->refs, 1);
    pthread_mutex_unlock(&sm->mu);
    return l;
}

void server_loaded_release(server_loaded *l)
{
    if (l)
        atomic_fetch_sub(&l->refs, 1);
}

/* Stops an instance's scheduler (after everything admitted to it finished) and frees it;
 * nothing may hold it. */
static void free_instance(server_loaded *l)
{
    sched_free(l->sched);
    seqstore_free(l->seqs);
    if (l->model)
        model_free(l->model);
    if (l->be)
        l->be->ops->destroy(l->be);
    free(l);
}

/* Runs one batch of max_batch_size one-step sequences, so that the first request does not
 * pay for first-touch allocations. */
static balsa_status warm_up(balsa_model *m, const model_info *in, int n)
{
    int d = in->input_kind == MODEL_INPUT_TOKENS ? 1 : in->input_size;
    int32_t *tok = calloc((size_t)n, sizeof *tok);
    float *feat = calloc((size_t)n * (size_t)d, sizeof *feat);
    float *out = calloc((size_t)n * (size_t)in->output_size, sizeof *out);
    engine_seq *seqs = calloc((size_t)n, sizeof *seqs);
    float **outs = calloc((size_t)n, sizeof *outs);
    balsa_status st = BALSA_ERR_OOM;
    if (tok && feat && out && seqs && outs) {
        for (int k = 0; k < n; k++) {
            seqs[k].len = 1;
            if (in->input_kind == MODEL_INPUT_TOKENS)
                seqs[k].tokens = tok + k;
            else
                seqs[k].features = feat + (size_t)k * (size_t)d;
            outs[k] = out + (size_t)k * (size_t)in->output_size;
        }
        st = model_run(m, seqs, n, 0, outs);
    }
    free(tok);
    free(feat);
    free(out);
    free(seqs);
    free(outs);
    return st;
}

/* Loads model i from cm's path (with cm's settings) into a new instance on a backend of
 * its own, warms it up and starts its scheduler; *file is the file as it was before the
 * load began. Returns the instance holding the one reference of the current instance, or
 * NULL with err (nothing left allocated). what: "ready" or "reloaded", for the log line. */
static server_loaded *load_instance(server *s, int i, const config_model *cm, step_ctx *ctx,
                                    struct stat *file, const char *what, char *err,
                                    size_t errlen)
{
    server_loaded *l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(err, errlen, "model %s: out of memory", cm->name);
        return NULL;
    }
    char why[256];
    if (stat(cm->path, file)) {
        snprintf(err, errlen, "model %s: %s: %s", cm->name, cm->path, strerror(errno));
        free(l);
        return NULL;
    }
    balsa_status st = balsa_backend_create(s->cfg.backend, s->cfg.threads, &l->be, why,
                                           sizeof why);
    if (st != BALSA_OK) {
        snprintf(err, errlen, "model %s: %s", cm->name, why);
        free_instance(l);
        return NULL;
    }
    uint64_t t0 = queue_now_ns();
    char msg[512];
    st = model_load(cm->path, l->be, &l->model, msg, sizeof msg);
    if (st != BALSA_OK) {
        snprintf(err, errlen, "model %s: %s: %s", cm->name, cm->path, msg);
        free_instance(l);
        return NULL;
    }
    double load_s = (double)(queue_now_ns() - t0) * 1e-9;
    l->info = model_get_info(l->model);
    st = warm_up(l->model, l->info, cm->batching.max_batch_size);
    if (st != BALSA_OK) {
        snprintf(err, errlen, "model %s: warm-up failed: %s", cm->name, balsa_status_str(st));
        free_instance(l);
        return NULL;
    }
    l->batching = cm->batching;
    sched_config sc = {cm->batching.max_batch_size, cm->batching.max_queue_delay_us,
                       cm->batching.queue_capacity, on_executed};
    st = sched_create(l->model, &sc, on_step, ctx, &l->sched);
    if (st != BALSA_OK) {
        snprintf(err, errlen, "model %s: scheduler: %s", cm->name, balsa_status_str(st));
        free_instance(l);
        return NULL;
    }
    const config_batching *b = &cm->batching;
    if (l->info->hidden_size > 0 && !l->info->bidirectional && b->max_sequences > 0) {
        l->seqs = seqstore_new(b->max_sequences, b->sequence_idle_ms,
                               2 * (size_t)l->info->num_layers * (size_t)l->info->hidden_size);
        if (!l->seqs) {
            snprintf(err, errlen, "model %s: out of memory for its sequences", cm->name);
            free_instance(l);
            return NULL;
        }
    }
    metrics_model_loaded(s->metrics, i, load_s);
    atomic_store(&l->refs, 1);
    const model_info *in = l->info;
    fprintf(stderr,
            "balsa: model %s %s in %.3f s: %s, %s %d -> %d, hidden %d x %d layers, bank %d, "
            "sparsity %.3f\n",
            cm->name, what, load_s, cm->path,
            in->input_kind == MODEL_INPUT_TOKENS ? "tokens" : "vectors",
            in->input_kind == MODEL_INPUT_TOKENS ? in->vocab_size : in->input_size,
            in->output_size, in->hidden_size, in->num_layers, in->bank, in->sparsity);
    return l;
}

/* The first load of model i. */
static int load_model(server *s, int i, step_ctx *ctx, char *err, size_t errlen)
{
    server_model *sm = &s->models[i];
    server_loaded *l = load_instance(s, i, sm->cfg, ctx, &sm->file, "ready", err, errlen);
    if (!l)
        return -1;
    pthread_mutex_lock(&sm->mu);
    sm->cur = l;
    pthread_mutex_unlock(&sm->mu);
    atomic_store(&sm->ready, 1);
    metrics_set_ready(s->metrics, i, 1);
    return 0;
}

/* Frees the retired instances that nothing holds any more. */
static void reap_retired(server *s)
{
    server_loaded **p = &s->retired;
    while (*p) {
        server_loaded *l = *p;
        if (atomic_load(&l->refs) == 0) {
            *p = l->next;
            free_instance(l);
        } else {
            p = &l->next;
        }
    }
}

/* Same inode, size and modification time: the file a model was loaded from is unchanged. */
static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Reloads model i from its file: a new instance is loaded and warmed up while the current
 * one serves, then new requests get the new one and the old one is retired (freed once
 * its last request is answered). want: new path and settings from a re-read configuration
 * (always loaded; they become the model's once the load succeeded), or NULL for the
 * current ones, where without force an unchanged file is left alone (*skipped set). 0, or
 * -1 with err: the current instance keeps serving, with its settings. */
static int reload_model(server *s, int i, step_ctx *ctx, const config_model *want, int force,
                        int *skipped, char *err, size_t errlen)
{
    server_model *sm = &s->models[i];
    struct stat now;
    *skipped = !want && !force && stat(sm->cfg->path, &now) == 0 &&
               same_file(&now, &sm->file);
    if (*skipped)
        return 0;
    server_loaded *l = load_instance(s, i, want ? want : sm->cfg, ctx, &now, "reloaded", err,
                                     errlen);
    metrics_model_reload(s->metrics, i, l != NULL);
    if (!l)
        return -1;
    if (want) {
        config_model *m = &s->cfg.models[i];
        snprintf(m->path, sizeof m->path, "%s", want->path);
        m->batching = want->batching;
    }
    pthread_mutex_lock(&sm->mu);
    server_loaded *old = sm->cur;
    sm->cur = l;
    sm->file = now;
    pthread_mutex_unlock(&sm->mu);
    old->next = s->retired;
    s->retired = old;
    server_loaded_release(old); /* the reference of the current instance */
    reap_retired(s);
    return 0;
}

/* The configuration the layers give now: defaults, the file (--config or BALSA_CONFIG),
 * BALSA_* variables, then the flags. Returns 0; 1 when --help was asked (printed); 2 for
 * bad flags and -1 for any other error, with the reason in err. */
static int read_config(int argc, char **argv, config *c, char *err, size_t errlen)
{
    char why[1800];
    config_defaults(c);
    const char *file = config_find_file(argc, argv, env_get);
    if (file && config_load_file(c, file, why, sizeof why)) {
        snprintf(err, errlen, "config error: %s", why);
        return -1;
    }
    if (config_apply_env(c, env_get, why, sizeof why)) {
        snprintf(err, errlen, "environment: %s", why);
        return -1;
    }
    int rc = config_apply_flags(c, argc, argv, why, sizeof why);
    if (rc) {
        snprintf(err, errlen, "%s", why);
        return rc == 1 ? 1 : 2;
    }
    if (config_finish(c, why, sizeof why)) {
        snprintf(err, errlen, "config error: %s", why);
        return -1;
    }
    return 0;
}

/* SIGHUP's look at the configuration (read as at start-up): for a served model whose path
 * or batching and sequence settings changed, want[i] receives the new ones and changed[i]
 * is set, so that it is reloaded with them (which become the model's only if that load
 * succeeds). Models added or removed, and the other keys, wait for a restart: the log says
 * which. A configuration that does not read leaves everything as it is. Main thread only:
 * the requests read a model's settings from its instance, never from s->cfg, and only this
 * thread reads the paths. */
/* Says which certificate is served, warns when it is outside its dates, and gives its
 * expiry to /metrics. */
static void announce_tls(server *s, const char *what)
{
    char warn[512];
    metrics_set_tls_expiry(s->metrics, (long long)s->tls.not_after);
    fprintf(stderr, "balsa: %s%s (%d certificate%s in %s)\n", what, s->tls.subject, s->tls.chain,
            s->tls.chain == 1 ? "" : "s", s->cfg.tls_cert);
    if (tls_validity_warning(&s->tls, time(NULL), warn, sizeof warn))
        fprintf(stderr, "balsa: warning: %s\n", warn);
}

/* SIGHUP with renewed TLS files: new handshakes get the new pair, connections already open
 * keep theirs; files that do not check leave the previous pair serving. */
static void reload_tls(server *s, const config *nc)
{
    tls_files t = {0};
    char err[1024];
    if (tls_load(nc->tls_cert, nc->tls_key, &t, err, sizeof err) ||
        tls_serve_set(&t, err, sizeof err)) {
        tls_free(&t);
        fprintf(stderr, "balsa: SIGHUP: the TLS certificate was not reloaded (%s): still "
                        "serving the previous one\n",
                err);
        return;
    }
    tls_free(&s->tls);
    s->tls = t;
    snprintf(s->cfg.tls_cert, sizeof s->cfg.tls_cert, "%s", nc->tls_cert);
    snprintf(s->cfg.tls_key, sizeof s->cfg.tls_key, "%s", nc->tls_key);
    announce_tls(s, "SIGHUP: TLS certificate reloaded: ");
}

/* SIGHUP: the API keys again (api_key and the lines of api_key_file), so that a key can
 * be rotated without a restart; a set that does not read leaves the previous one in force.
 * Requests checked after the swap see the new set. */
static void reload_keys(server *s, const config *nc)
{
    char err[1024];
    auth_keys *keys = calloc(1, sizeof *keys);
    if (!keys || auth_keys_read(nc->api_key, nc->api_key_file, keys, err, sizeof err)) {
        fprintf(stderr, "balsa: SIGHUP: the API keys were not re-read (%s): the previous ones "
                        "stay in force\n",
                keys ? err : "out of memory");
        free(keys);
        return;
    }
    snprintf(s->cfg.api_key, sizeof s->cfg.api_key, "%s", nc->api_key);
    snprintf(s->cfg.api_key_file, sizeof s->cfg.api_key_file, "%s", nc->api_key_file);
    auth_keys *cur = atomic_load(&s->auth);
    if (auth_keys_same(cur, keys)) {
        free(keys);
        return;
    }
    keys->older = cur;
    atomic_store(&s->auth, keys);
    fprintf(stderr, "balsa: SIGHUP: API keys reloaded: %d accepted%s\n", keys->n,
            keys->n ? "" : " (none: requests need no key now)");
}

static void reread_config(server *s, int argc, char **argv, config_model *want, int *changed)
{
    static config nc; /* large */
    char err[2048];
    if (read_config(argc, argv, &nc, err, sizeof err)) {
        fprintf(stderr, "balsa: SIGHUP: the configuration was not re-read (%s): keeping the "
                        "running one\n",
                err);
        return;
    }
    /* Keys and renewed TLS files (new contents, or other paths) first, so that what is
     * taken is not listed below as waiting for a restart. Turning TLS on or off does wait. */
    reload_keys(s, &nc);
    if (s->tls.cert && nc.tls_cert[0] &&
        (strcmp(s->cfg.tls_cert, nc.tls_cert) != 0 || strcmp(s->cfg.tls_key, nc.tls_key) != 0 ||
         tls_files_changed(&s->tls, nc.tls_cert, nc.tls_key)))
        reload_tls(s, &nc);
    char keys[1024];
    if (config_diff_globals(&s->cfg, &nc, keys, sizeof keys))
        fprintf(stderr, "balsa: SIGHUP: %s changed: a restart applies that\n", keys);
    for (int j = 0; j < nc.nmodels; j++) {
        int found = 0;
        for (int i = 0; i < s->nmodels; i++)
            found |= strcmp(s->cfg.models[i].name, nc.models[j].name) == 0;
        if (!found)
            fprintf(stderr, "balsa: SIGHUP: model %s is new in the configuration: a restart "
                            "serves it\n",
                    nc.models[j].name);
    }
    for (int i = 0; i < s->nmodels; i++) {
        config_model *m = &s->cfg.models[i];
        const config_model *n = NULL;
        for (int j = 0; j < nc.nmodels; j++)
            if (strcmp(m->name, nc.models[j].name) == 0)
                n = &nc.models[j];
        if (!n) {
            fprintf(stderr, "balsa: SIGHUP: model %s is no longer in the configuration: still "
                            "served until a restart\n",
                    m->name);
            continue;
        }
        if (strcmp(m->path, n->path) == 0 &&
            memcmp(&m->batching, &n->batching, sizeof m->batching) == 0)
            continue;
        const config_batching *b = &n->batching;
        fprintf(stderr,
                "balsa: SIGHUP: model %s: new settings: %s; max_batch_size %d, "
                "max_queue_delay_us %d, queue_capacity %d, request_timeout_ms %d, "
                "max_sequences %d, sequence_idle_ms %d\n",
                m->name, n->path, b->max_batch_size, b->max_queue_delay_us, b->queue_capacity,
                b->request_timeout_ms, b->max_sequences, b->sequence_idle_ms);
        want[i] = *n;
        changed[i] = 1;
    }
}

/* SIGHUP: every model whose file changed, or whose settings did (changed[i]: reloaded with
 * want[i]), is reloaded; a failure leaves that model on what it served before. */
static void reload_changed(server *s, step_ctx *ctx, const config_model *want,
                           const int *changed)
{
    for (int i = 0; i < s->nmodels; i++) {
        char err[1024];
        int skipped;
        if (reload_model(s, i, &ctx[i], changed[i] ? &want[i] : NULL, 0, &skipped, err,
                         sizeof err))
            fprintf(stderr, "balsa: SIGHUP: reload failed, still serving the previous %s: %s\n",
                    s->models[i].cfg->name, err);
        else if (skipped)
            fprintf(stderr, "balsa: SIGHUP: model %s: %s unchanged, not reloaded\n",
                    s->models[i].cfg->name, s->models[i].cfg->path);
    }
}

/* model_poll_ms: one look at every model file. A file that differs from the one loaded is
 * reloaded once it is the same at two looks in a row (so a file still being written is not
 * read half-way); one that then fails to load is not tried again until it changes. */
static void poll_files(server *s, step_ctx *ctx)
{
    for (int i = 0; i < s->nmodels; i++) {
        server_model *sm = &s->models[i];
        struct stat now;
        if (stat(sm->cfg->path, &now) || same_file(&now, &sm->file)) {
            sm->poll_state = 0;
            continue;
        }
        if (sm->poll_state == 0 || !same_file(&now, &sm->seen)) {
            sm->seen = now;
            sm->poll_state = 1;
            continue;
        }
        if (sm->poll_state == 2)
            continue;
        fprintf(stderr, "balsa: model %s: %s changed on disk: reloading\n", sm->cfg->name,
                sm->cfg->path);
        /* Forced: this look has just found the file changed, so reload_model need not stat
         * and compare it again. */
        char err[1024];
        int skipped;
        if (reload_model(s, i, &ctx[i], NULL, 1, &skipped, err, sizeof err)) {
            fprintf(stderr, "balsa: reload failed, still serving the previous %s: %s (not tried "
                            "again until the file changes)\n",
                    sm->cfg->name, err);
            sm->poll_state = 2;
        } else {
            sm->poll_state = 0;
        }
    }
}

int server_post_job(server *s, server_job *j)
{
    pthread_mutex_lock(&s->jobs_mu);
    if (atomic_load(&s->stage) != SERVER_SERVING) {
        pthread_mutex_unlock(&s->jobs_mu);
        return -1;
    }
    server_job **p = &s->jobs;
    while (*p)
        p = &(*p)->next;
    j->next = NULL;
    *p = j;
    pthread_mutex_unlock(&s->jobs_mu);
    pthread_kill(s->main_thread, SIGUSR1);
    return 0;
}

/* Takes every queued job off the server's queue. */
static server_job *take_jobs(server *s)
{
    pthread_mutex_lock(&s->jobs_mu);
    server_job *j = s->jobs;
    s->jobs = NULL;
    pthread_mutex_unlock(&s->jobs_mu);
    return j;
}

/* SIGUSR1: the reloads asked over HTTP, each forced (the client asked for this one). */
static void run_jobs(server *s, step_ctx *ctx)
{
    server_job *j = take_jobs(s);
    while (j) {
        server_job *next = j->next; /* done() may free j */
        const char *name = s->models[j->model].cfg->name;
        char err[1024];
        int skipped;
        if (reload_model(s, j->model, &ctx[j->model], NULL, 1, &skipped, err, sizeof err)) {
            fprintf(stderr, "balsa: load request: reload failed, still serving the previous "
                            "%s: %s\n", name, err);
            j->code = 500;
            snprintf(j->msg, sizeof j->msg, "reload failed, still serving the previous "
                     "instance: %s", err);
        } else {
            j->code = 200;
            snprintf(j->msg, sizeof j->msg, "model %s reloaded from %s", name,
                     s->models[j->model].cfg->path);
        }
        j->done(j);
        j = next;
    }
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

/* Moves the server to stage (past SERVER_SERVING) and answers the queued jobs 503. Under
 * jobs_mu, so that a reload asked over HTTP is either refused by server_post_job or taken
 * here. */
static void stop_jobs(server *s, int stage)
{
    pthread_mutex_lock(&s->jobs_mu);
    atomic_store(&s->stage, stage);
    pthread_mutex_unlock(&s->jobs_mu);
    for (server_job *j = take_jobs(s), *next; j; j = next) {
        next = j->next;
        j->code = 503;
        snprintf(j->msg, sizeof j->msg, "server is shutting down; the model was not reloaded");
        j->done(j);
    }
}

/* Calls fn on the scheduler of every instance: the current ones and the retired ones,
 * which may still run requests admitted before a reload. */
static void each_sched(server *s, void (*fn)(sched *))
{
    for (int i = 0; i < s->nmodels; i++)
        if (s->models[i].cur)
            fn(s->models[i].cur->sched);
    for (server_loaded *l = s->retired; l; l = l->next)
        fn(l->sched);
}

/* The drain sequence after the first SIGTERM/SIGINT (a second one cuts the delay short). */
static int drain(server *s, const sigset_t *sigs)
{
    uint64_t t0 = queue_now_ns();
    /* Under jobs_mu, so that a reload asked over HTTP is either refused by
     * server_post_job or taken here and answered 503. */
    stop_jobs(s, SERVER_UNREADY);
    fprintf(stderr, "balsa: shutting down: /readyz now 503; serving for %d ms more\n",
            s->cfg.drain_delay_ms);
    struct timespec ts = {s->cfg.drain_delay_ms / 1000,
                          (long)(s->cfg.drain_delay_ms % 1000) * 1000000L};
    if (s->cfg.drain_delay_ms > 0 && sigtimedwait(sigs, NULL, &ts) > 0)
        fprintf(stderr, "balsa: second signal: skipping the rest of the drain delay\n");
    http_quiesce(s);
    atomic_store(&s->stage, SERVER_REFUSING);
    each_sched(s, sched_close);
    long left = atomic_load(&s->suspended);
    fprintf(stderr, "balsa: stopped accepting; finishing %ld admitted request(s)\n", left);
    if (!wait_idle(s, s->cfg.drain_timeout_ms)) {
        fprintf(stderr,
                "balsa: drain timeout (%d ms): failing the queued requests with 503, ending "
                "running generations at their next token\n",
                s->cfg.drain_timeout_ms);
        atomic_store(&s->cut_generation, 1);
        each_sched(s, sched_abort);
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
    for (int i = 0; i < s->nmodels; i++)
        if (s->models[i].cur)
            free_instance(s->models[i].cur);
    while (s->retired) {
        server_loaded *l = s->retired;
        s->retired = l->next;
        free_instance(l);
    }
    metrics_free(s->metrics);
    v2_stats_free(s->v2stats);
    tls_free(&s->tls);
    tls_serve_free();
    auth_keys_free(atomic_exchange(&s->auth, NULL));
}

/* The thread that takes the signals (serve_main's), for forward_signal. */
static pthread_t main_thread_id;

/* Runs on a thread that does not block the server's signals (one a library started
 * before serve_main blocked them): hands the signal to the main thread, whose sigwait
 * takes it. pthread_kill is async-signal-safe in glibc. */
static void forward_signal(int sig)
{
    int saved = errno;
    pthread_kill(main_thread_id, sig);
    errno = saved;
}

int serve_main(int argc, char **argv)
{
    static server srv; /* large (config) and shared with the daemon threads */
    server *s = &srv;
    char err[2048];
    config *c = &s->cfg;
    int rc = read_config(argc, argv, c, err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc) {
        fprintf(stderr, "balsa serve: %s\n", err);
        return rc == 2 ? 2 : 1;
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
     * starts, so every thread inherits the mask. SIGTERM and SIGINT drain, SIGHUP reloads
     * the models whose files changed, SIGUSR1 (from server_post_job) runs the reloads asked
     * over HTTP. Threads that libraries started before this point (OpenBLAS starts its
     * pool when it is loaded) do not block them, and the kernel may hand a signal to one of
     * them whenever this thread is not waiting (during a reload, say): with the default
     * action that ended the process at once, so a handler passes the signal on to here. */
    main_thread_id = pthread_self();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigset_t sigs, all;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    all = sigs;
    sigaddset(&all, SIGHUP);
    sigaddset(&all, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (int sig = 1; sig < NSIG; sig++)
        if (sigismember(&all, sig) == 1)
            sigaction(sig, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    s->main_thread = pthread_self();
    pthread_mutex_init(&s->jobs_mu, NULL);

    s->nmodels = c->nmodels;
    const char *names[CONFIG_MAX_MODELS];
    for (int i = 0; i < c->nmodels; i++) {
        s->models[i].cfg = &c->models[i];
        pthread_mutex_init(&s->models[i].mu, NULL);
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
    /* Room for any batch size: a SIGHUP may raise a model's max_batch_size. */
    int max_batch[CONFIG_MAX_MODELS];
    for (int i = 0; i < c->nmodels; i++)
        max_batch[i] = CONFIG_MAX_BATCH;
    s->v2stats = v2_stats_create(c->nmodels, max_batch);
    if (!s->metrics || !s->v2stats) {
        fprintf(stderr, "balsa serve: out of memory\n");
        return 1;
    }
    auth_keys *keys = calloc(1, sizeof *keys);
    if (!keys || auth_keys_read(c->api_key, c->api_key_file, keys, err, sizeof err)) {
        fprintf(stderr, "balsa serve: %s\n", keys ? err : "out of memory");
        free(keys);
        server_free(s);
        return 1;
    }
    atomic_store(&s->auth, keys);
    if (c->tls_cert[0] && (tls_load(c->tls_cert, c->tls_key, &s->tls, err, sizeof err) ||
                           tls_serve_set(&s->tls, err, sizeof err))) {
        fprintf(stderr, "balsa serve: %s\n", err);
        server_free(s);
        return 1;
    }
    if (http_start(s, err, sizeof err)) {
        fprintf(stderr, "balsa serve: %s\n", err);
        server_free(s);
        return 1;
    }
    fprintf(stderr, "balsa %s serving on %s://%s:%d (%d HTTP threads, body limit %ld bytes%s)\n"
                    "balsa: %s\n",
            BALSA_VERSION, s->tls.cert ? "https" : "http", c->host, s->port, c->http_threads,
            c->body_limit, keys->n ? ", API key required" : "", why);
    if (s->tls.cert)
        announce_tls(s, "TLS 1.2/1.3 with ");
    for (int i = 0; i < c->nmodels; i++) {
        const config_batching *b = &c->models[i].batching;
        fprintf(stderr,
                "balsa: model %s <- %s; batching: max_batch_size %d, max_queue_delay_us %d, "
                "queue_capacity %d, request_timeout_ms %d\n",
                c->models[i].name, c->models[i].path, b->max_batch_size, b->max_queue_delay_us,
                b->queue_capacity, b->request_timeout_ms);
    }
    /* Set once: the schedulers of every instance of model i read ctx[i], also while a
     * reload starts the next one. */
    static step_ctx ctx[CONFIG_MAX_MODELS];
    for (int i = 0; i < c->nmodels; i++)
        ctx[i] = (step_ctx){s->metrics, s->v2stats, i};
    for (int i = 0; i < c->nmodels; i++) {
        if (load_model(s, i, &ctx[i], err, sizeof err)) {
            fprintf(stderr, "balsa serve: %s\n", err);
            stop_jobs(s, SERVER_REFUSING);
            http_quiesce(s);
            http_stop(s);
            server_free(s);
            return 1;
        }
    }
    fprintf(stderr, "balsa: ready\n");
    const uint64_t poll_ns = (uint64_t)c->model_poll_ms * 1000000u;
    uint64_t next_poll = poll_ns ? queue_now_ns() + poll_ns : 0;
    int sig = 0;
    for (;;) {
        /* Wake up for the next look at the model files, and every 100 ms while retired
         * instances wait to be freed. */
        uint64_t now = queue_now_ns(), wait_ns = UINT64_MAX;
        if (s->retired)
            wait_ns = 100000000u;
        uint64_t until = next_poll > now ? next_poll - now : 0;
        if (next_poll && until < wait_ns)
            wait_ns = until;
        if (wait_ns != UINT64_MAX) {
            struct timespec ts = {(time_t)(wait_ns / 1000000000u), (long)(wait_ns % 1000000000u)};
            sig = sigtimedwait(&all, NULL, &ts);
        } else if (sigwait(&all, &sig) != 0) {
            sig = -1;
        }
        if (sig == SIGTERM || sig == SIGINT)
            break;
        if (sig == SIGHUP) {
            fprintf(stderr, "balsa: got SIGHUP: re-reading the configuration, reloading the "
                            "models whose files or settings changed\n");
            static config_model want[CONFIG_MAX_MODELS];
            int changed[CONFIG_MAX_MODELS] = {0};
            reread_config(s, argc, argv, want, changed);
            reload_changed(s, ctx, want, changed);
        } else if (sig == SIGUSR1) {
            run_jobs(s, ctx);
        }
        if (next_poll && queue_now_ns() >= next_poll) {
            poll_files(s, ctx);
            next_poll = queue_now_ns() + poll_ns;
        }
        reap_retired(s);
    }
    fprintf(stderr, "balsa: got %s\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    rc = drain(s, &sigs);
    if (rc) {
        fflush(stderr);
        _Exit(rc);
    }
    server_free(s);
    return 0;
}
