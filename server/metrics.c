/* Prometheus metrics (see metrics.h): atomic counters and fixed-bucket histograms, and
 * the text format writer, including the process_* metrics read from /proc. */
#include "metrics.h"

#include <dirent.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Status codes the server answers with; any other code is counted as 500. */
/* 499: the client went away before an answer was queued (nginx's code for it). */
static const int codes[] = {200, 204, 400, 401, 403, 404, 405, 409, 413, 415, 499, 500, 503, 504};
#define NCODES (int)(sizeof codes / sizeof *codes)

static const char *handler_names[METRICS_NHANDLERS] = {"/infer",  "/models", "/metrics",
                                                       "/healthz", "/readyz", "/v2",
                                                       "other"};
static const char *reason_names[METRICS_NREASONS] = {"queue_full", "draining",
                                                     "deadline_exceeded", "body_too_large",
                                                     "not_ready", "unauthorized",
                                                     "sequence_slots"};

static const double dur_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                    0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define NDUR (int)(sizeof dur_bounds / sizeof *dur_bounds)
static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
#define NBATCH (int)(sizeof batch_bounds / sizeof *batch_bounds)
/* Time per generated token: one step of a small model takes tens of microseconds. */
static const double tok_bounds[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                    0.01,    0.025,  0.05,    0.1,    0.25,   0.5,    1};
#define NTOK (int)(sizeof tok_bounds / sizeof *tok_bounds)
#define MAXB(a, b) ((a) > (b) ? (a) : (b))

/* Bucket counts are per bucket (not cumulative) so one observation is one increment;
 * the sum is kept in integer units (nanoseconds, or sequences) to stay atomic. */
typedef struct {
    _Atomic uint64_t bucket[MAXB(MAXB(NDUR, NBATCH), NTOK) + 1];
    _Atomic uint64_t sum;
} hist;

typedef struct {
    char name[64];
    _Atomic uint64_t requests[NCODES];
    hist request_dur, queue_dur, compute_dur, batch, first_token, per_token;
    _Atomic uint64_t generated;
    _Atomic uint64_t load_ns;
    _Atomic uint64_t loaded_at_ms; /* wall clock of the last successful load */
    _Atomic uint64_t reloads[2]; /* failed, succeeded */
    _Atomic int ready;
} model_metrics;

struct metrics {
    int nmodels;
    model_metrics *models;
    _Atomic uint64_t http[METRICS_NHANDLERS][NCODES];
    _Atomic uint64_t rejected[METRICS_NREASONS];
    _Atomic long inflight;
    char version[32];
    char backend[32];
    double start_time; /* seconds since the epoch, from /proc */
    _Atomic long long tls_not_after; /* the served certificate's expiry (Unix time); 0: no
                                      * TLS. A SIGHUP may renew it while /metrics renders. */
};

static int code_index(int code)
{
    for (int i = 0; i < NCODES; i++)
        if (codes[i] == code)
            return i;
    return code_index(500);
}

/* Boot time (seconds since the epoch) and this process's start, from /proc. */
static double proc_start_time(void)
{
    double btime = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "btime %lf", &btime) == 1)
                break;
        fclose(f);
    }
    unsigned long long start_ticks = 0;
    f = fopen("/proc/self/stat", "r");
    if (f) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        /* Fields after the command name, which may hold spaces: start after the last ')'. */
        char *p = strrchr(buf, ')');
        if (p)
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d "
                          "%*d %*d %llu",
                   &start_ticks);
    }
    return btime + (double)start_ticks / (double)sysconf(_SC_CLK_TCK);
}

metrics *metrics_create(int nmodels, const char *const *model_names, const char *version,
                        const char *backend)
{
    metrics *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->models = calloc((size_t)(nmodels > 0 ? nmodels : 1), sizeof *m->models);
    if (!m->models) {
        free(m);
        return NULL;
    }
    m->nmodels = nmodels;
    for (int i = 0; i < nmodels; i++)
        snprintf(m->models[i].name, sizeof m->models[i].name, "%s", model_names[i]);
    snprintf(m->version, sizeof m->version, "%s", version);
    snprintf(m->backend, sizeof m->backend, "%s", backend);
    m->start_time = proc_start_time();
    return m;
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    free(m->models);
    free(m);
}

static void inc(_Atomic uint64_t *c, uint64_t by)
{
    atomic_fetch_add_explicit(c, by, memory_order_relaxed);
}

static void hist_observe(hist *h, const double *bounds, int nb, double v, uint64_t units)
{
    int i = 0;
    while (i < nb && v > bounds[i])
        i++;
    inc(&h->bucket[i], 1);
    inc(&h->sum, units);
}

static uint64_t to_ns(double s)
{
    return s > 0 ? (uint64_t)(s * 1e9 + 0.5) : 0;
}

void metrics_http(metrics *m, metrics_handler h, int code)
{
    inc(&m->http[h][code_index(code)], 1);
}

void metrics_infer(metrics *m, int model, int code, double seconds)
{
    if (model < 0 || model >= m->nmodels)
        return;
    model_metrics *mm = &m->models[model];
    inc(&mm->requests[code_index(code)], 1);
    hist_observe(&mm->request_dur, dur_bounds, NDUR, seconds, to_ns(seconds));
}

void metrics_queue_compute(metrics *m, int model, double queue_s, double compute_s)
{
    model_metrics *mm = &m->models[model];
    hist_observe(&mm->queue_dur, dur_bounds, NDUR, queue_s, to_ns(queue_s));
    hist_observe(&mm->compute_dur, dur_bounds, NDUR, compute_s, to_ns(compute_s));
}

void metrics_generation(metrics *m, int model, long tokens, double first_token_s,
                        double per_token_s)
{
    model_metrics *mm = &m->models[model];
    inc(&mm->generated, tokens > 0 ? (uint64_t)tokens : 0);
    hist_observe(&mm->first_token, dur_bounds, NDUR, first_token_s, to_ns(first_token_s));
    if (per_token_s >= 0)
        hist_observe(&mm->per_token, tok_bounds, NTOK, per_token_s, to_ns(per_token_s));
}

void metrics_batch(metrics *m, int model, int size)
{
    hist_observe(&m->models[model].batch, batch_bounds, NBATCH, size, (uint64_t)size);
}

void metrics_reject(metrics *m, metrics_reason r)
{
    inc(&m->rejected[r], 1);
}

void metrics_model_loaded(metrics *m, int model, double load_seconds)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    atomic_store(&m->models[model].loaded_at_ms,
                 (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u);
    atomic_store(&m->models[model].load_ns, to_ns(load_seconds));
}

void metrics_model_reload(metrics *m, int model, int ok)
{
    inc(&m->models[model].reloads[ok ? 1 : 0], 1);
}

void metrics_set_ready(metrics *m, int model, int ready)
{
    atomic_store(&m->models[model].ready, ready);
}

void metrics_set_tls_expiry(metrics *m, long long not_after)
{
    atomic_store(&m->tls_not_after, not_after);
}

void metrics_inflight_add(metrics *m, int delta)
{
    atomic_fetch_add_explicit(&m->inflight, delta, memory_order_relaxed);
}

static void family(jsonw *w, const char *name, const char *type, const char *help)
{
    jsonw_printf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_hist(jsonw *w, const char *name, const char *model, const hist *h,
                        const double *bounds, int nb, double scale)
{
    uint64_t cum = 0;
    for (int i = 0; i <= nb; i++) {
        cum += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        if (i < nb)
            jsonw_printf(w, "%s_bucket{model=\"%s\",le=\"%g\"} %llu\n", name, model, bounds[i],
                         (unsigned long long)cum);
        else
            jsonw_printf(w, "%s_bucket{model=\"%s\",le=\"+Inf\"} %llu\n", name, model,
                         (unsigned long long)cum);
    }
    double sum = (double)atomic_load_explicit(&h->sum, memory_order_relaxed) * scale;
    jsonw_printf(w, "%s_sum{model=\"%s\"} %.9g\n%s_count{model=\"%s\"} %llu\n", name, model,
                 sum, name, model, (unsigned long long)cum);
}

/* The process_* metrics, read from /proc/self (skipped quietly where /proc is missing). */
static void render_process(metrics *m, jsonw *w)
{
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        unsigned long utime = 0, stime = 0, vsize = 0;
        long rss = 0;
        char *p = strrchr(buf, ')');
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d "
                               "%*d %*d %*d %*d %*u %lu %ld",
                        &utime, &stime, &vsize, &rss) == 4) {
            double tck = (double)sysconf(_SC_CLK_TCK);
            family(w, "process_cpu_seconds_total", "counter",
                   "Total user and system CPU time spent in seconds.");
            jsonw_printf(w, "process_cpu_seconds_total %.9g\n", (double)(utime + stime) / tck);
            family(w, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
            jsonw_printf(w, "process_resident_memory_bytes %ld\n", rss * sysconf(_SC_PAGESIZE));
            family(w, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
            jsonw_printf(w, "process_virtual_memory_bytes %lu\n", vsize);
        }
    }
    family(w, "process_start_time_seconds", "gauge",
           "Start time of the process since unix epoch in seconds.");
    jsonw_printf(w, "process_start_time_seconds %.3f\n", m->start_time);
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        long nfd = -1; /* the directory stream's own descriptor is not counted */
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                nfd++;
        closedir(d);
        family(w, "process_open_fds", "gauge", "Number of open file descriptors.");
        jsonw_printf(w, "process_open_fds %ld\n", nfd);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        family(w, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        jsonw_printf(w, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    }
}

void metrics_render(metrics *m, const metrics_model_now *now, jsonw *w)
{
    family(w, "balsa_build_info", "gauge", "Build information: version and compute backend.");
    jsonw_printf(w, "balsa_build_info{version=\"%s\",backend=\"%s\"} 1\n", m->version, m->backend);
    long long expiry = atomic_load(&m->tls_not_after);
    if (expiry > 0) {
        family(w, "balsa_tls_certificate_expiry_timestamp_seconds", "gauge",
               "When the TLS certificate served expires, in seconds since the epoch.");
        jsonw_printf(w, "balsa_tls_certificate_expiry_timestamp_seconds %lld\n", expiry);
    }

    family(w, "balsa_http_requests_total", "counter",
           "HTTP requests answered, by handler and status code.");
    for (int h = 0; h < METRICS_NHANDLERS; h++)
        for (int c = 0; c < NCODES; c++) {
            uint64_t v = atomic_load_explicit(&m->http[h][c], memory_order_relaxed);
            if (v)
                jsonw_printf(w, "balsa_http_requests_total{handler=\"%s\",code=\"%d\"} %llu\n",
                             handler_names[h], codes[c], (unsigned long long)v);
        }

    family(w, "balsa_inference_requests_total", "counter",
           "Inference requests answered, by model and status code.");
    for (int i = 0; i < m->nmodels; i++)
        for (int c = 0; c < NCODES; c++) {
            uint64_t v = atomic_load_explicit(&m->models[i].requests[c], memory_order_relaxed);
            /* The 200 series always exists so rate() works from the first scrape. */
            if (v || codes[c] == 200)
                jsonw_printf(w, "balsa_inference_requests_total{model=\"%s\",code=\"%d\"} %llu\n",
                             m->models[i].name, codes[c], (unsigned long long)v);
        }

    family(w, "balsa_rejected_requests_total", "counter",
           "Inference requests refused before running, by reason.");
    for (int r = 0; r < METRICS_NREASONS; r++)
        jsonw_printf(w, "balsa_rejected_requests_total{reason=\"%s\"} %llu\n", reason_names[r],
                     (unsigned long long)atomic_load(&m->rejected[r]));

    struct {
        const char *name, *help;
        size_t off;
        const double *bounds;
        int nb;
        double scale;
    } hs[] = {
        {"balsa_request_duration_seconds", "Inference request time from arrival to answer.",
         offsetof(model_metrics, request_dur), dur_bounds, NDUR, 1e-9},
        {"balsa_queue_duration_seconds", "Time an inference request waited in its model's queue.",
         offsetof(model_metrics, queue_dur), dur_bounds, NDUR, 1e-9},
        {"balsa_compute_duration_seconds",
         "Time from an inference request's first step to its last.",
         offsetof(model_metrics, compute_dur), dur_bounds, NDUR, 1e-9},
        {"balsa_batch_size", "Sequences in each executed step of a model.",
         offsetof(model_metrics, batch), batch_bounds, NBATCH, 1},
        {"balsa_time_to_first_token_seconds",
         "Time from a generating request's arrival to its first generated token.",
         offsetof(model_metrics, first_token), dur_bounds, NDUR, 1e-9},
        {"balsa_time_per_output_token_seconds",
         "Mean time between a generating request's tokens after the first.",
         offsetof(model_metrics, per_token), tok_bounds, NTOK, 1e-9},
    };
    for (size_t k = 0; k < sizeof hs / sizeof *hs; k++) {
        family(w, hs[k].name, "histogram", hs[k].help);
        for (int i = 0; i < m->nmodels; i++)
            render_hist(w, hs[k].name, m->models[i].name,
                        (const hist *)((const char *)&m->models[i] + hs[k].off), hs[k].bounds,
                        hs[k].nb, hs[k].scale);
    }

    family(w, "balsa_generated_tokens_total", "counter",
           "Tokens generated (\"generate\", v2 generate and generate_stream), by model.");
    for (int i = 0; i < m->nmodels; i++)
        jsonw_printf(w, "balsa_generated_tokens_total{model=\"%s\"} %llu\n", m->models[i].name,
                     (unsigned long long)atomic_load(&m->models[i].generated));
    family(w, "balsa_queue_depth", "gauge", "Requests waiting in a model's queue.");
    for (int i = 0; i < m->nmodels; i++)
        jsonw_printf(w, "balsa_queue_depth{model=\"%s\"} %d\n", m->models[i].name,
                     now ? now[i].queue_depth : 0);
    family(w, "balsa_sequences_open", "gauge",
           "Sequences (sequence_id) whose state the model keeps for their next request.");
    for (int i = 0; i < m->nmodels; i++)
        jsonw_printf(w, "balsa_sequences_open{model=\"%s\"} %d\n", m->models[i].name,
                     now ? now[i].open_sequences : 0);
    family(w, "balsa_requests_in_flight", "gauge",
           "Inference requests admitted to a queue and not yet answered.");
    jsonw_printf(w, "balsa_requests_in_flight %ld\n", atomic_load(&m->inflight));
    family(w, "balsa_model_load_duration_seconds", "gauge",
           "Time taken to load a model and upload its weights.");
    for (int i = 0; i < m->nmodels; i++)
        jsonw_printf(w, "balsa_model_load_duration_seconds{model=\"%s\"} %.9g\n",
                     m->models[i].name, (double)atomic_load(&m->models[i].load_ns) * 1e-9);
    family(w, "balsa_model_last_load_timestamp_seconds", "gauge",
           "When the model now serving was loaded (Unix time): at start-up or its last reload.");
    for (int i = 0; i < m->nmodels; i++)
        jsonw_printf(w, "balsa_model_last_load_timestamp_seconds{model=\"%s\"} %.3f\n",
                     m->models[i].name, (double)atomic_load(&m->models[i].loaded_at_ms) * 1e-3);
    family(w, "balsa_model_reloads_total", "counter",
           "Reloads of a model from its file (SIGHUP or the repository API), by result.");
    for (int i = 0; i < m->nmodels; i++)
        for (int ok = 1; ok >= 0; ok--)
            jsonw_printf(w, "balsa_model_reloads_total{model=\"%s\",result=\"%s\"} %llu\n",
                         m->models[i].name, ok ? "ok" : "error",
                         (unsigned long long)atomic_load(&m->models[i].reloads[ok]));
    family(w, "balsa_model_ready", "gauge",
           "1 once a model is loaded and warmed up, else 0.");
    for (int i = 0; i < m->nmodels; i++)
        jsonw_printf(w, "balsa_model_ready{model=\"%s\"} %d\n", m->models[i].name,
                     atomic_load(&m->models[i].ready));
    render_process(m, w);
}
