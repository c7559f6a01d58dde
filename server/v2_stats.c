/* Triton-style inference statistics (see v2_stats.h): relaxed atomic counters, read
 * without a lock when rendered (each counter is exact; a snapshot may mix requests that
 * finished while it was taken). */
#include "v2_stats.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

typedef struct {
    _Atomic uint64_t count, ns;
} duration;

typedef struct {
    duration success, fail, queue, input, infer, output;
    _Atomic uint64_t inference_count, execution_count, last_ms;
    int max_batch;
    duration *batch; /* [max_batch + 1]: steps of each size, index = size */
} model_stats;

struct v2_stats {
    int nmodels;
    model_stats *m;
};

v2_stats *v2_stats_create(int nmodels, const int *max_batch)
{
    v2_stats *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->nmodels = nmodels;
    s->m = calloc((size_t)(nmodels > 0 ? nmodels : 1), sizeof *s->m);
    if (!s->m) {
        free(s);
        return NULL;
    }
    for (int i = 0; i < nmodels; i++) {
        s->m[i].max_batch = max_batch[i];
        s->m[i].batch = calloc((size_t)max_batch[i] + 1, sizeof *s->m[i].batch);
        if (!s->m[i].batch) {
            v2_stats_free(s);
            return NULL;
        }
    }
    return s;
}

void v2_stats_free(v2_stats *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->nmodels; i++)
        free(s->m[i].batch);
    free(s->m);
    free(s);
}

static void add(duration *d, uint64_t ns)
{
    atomic_fetch_add_explicit(&d->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&d->ns, ns, memory_order_relaxed);
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void v2_stats_success(v2_stats *s, int model, int nseqs, const v2_stats_times *t)
{
    if (!s || model < 0 || model >= s->nmodels)
        return;
    model_stats *m = &s->m[model];
    add(&m->success, t->total);
    add(&m->input, t->input);
    add(&m->queue, t->queue);
    add(&m->infer, t->infer);
    add(&m->output, t->output);
    atomic_fetch_add_explicit(&m->inference_count, (uint64_t)nseqs, memory_order_relaxed);
    atomic_store_explicit(&m->last_ms, wall_ms(), memory_order_relaxed);
}

void v2_stats_fail(v2_stats *s, int model, uint64_t total_ns)
{
    if (!s || model < 0 || model >= s->nmodels)
        return;
    add(&s->m[model].fail, total_ns);
}

void v2_stats_execution(v2_stats *s, int model, int batch, uint64_t ns)
{
    if (!s || model < 0 || model >= s->nmodels)
        return;
    model_stats *m = &s->m[model];
    atomic_fetch_add_explicit(&m->execution_count, 1, memory_order_relaxed);
    if (batch >= 1 && batch <= m->max_batch)
        add(&m->batch[batch], ns);
}

static void render_duration(jsonw *w, const char *name, const duration *d)
{
    jsonw_printf(w, "\"%s\":{\"count\":%llu,\"ns\":%llu}", name,
                 (unsigned long long)atomic_load_explicit(&d->count, memory_order_relaxed),
                 (unsigned long long)atomic_load_explicit(&d->ns, memory_order_relaxed));
}

void v2_stats_render(v2_stats *s, int model, const char *name, jsonw *w)
{
    model_stats *m = &s->m[model];
    jsonw_str(w, "{\"name\":");
    jsonw_quoted(w, name);
    jsonw_printf(w, ",\"version\":\"1\",\"last_inference\":%llu,\"inference_count\":%llu,"
                    "\"execution_count\":%llu,\"inference_stats\":{",
                 (unsigned long long)atomic_load(&m->last_ms),
                 (unsigned long long)atomic_load(&m->inference_count),
                 (unsigned long long)atomic_load(&m->execution_count));
    render_duration(w, "success", &m->success);
    jsonw_str(w, ",");
    render_duration(w, "fail", &m->fail);
    jsonw_str(w, ",");
    render_duration(w, "queue", &m->queue);
    jsonw_str(w, ",");
    render_duration(w, "compute_input", &m->input);
    jsonw_str(w, ",");
    render_duration(w, "compute_infer", &m->infer);
    jsonw_str(w, ",");
    render_duration(w, "compute_output", &m->output);
    /* balsa has no cache: the cache entries Triton's clients read are always zero. */
    jsonw_str(w, ",\"cache_hit\":{\"count\":0,\"ns\":0},\"cache_miss\":{\"count\":0,\"ns\":0}},"
                 "\"batch_stats\":[");
    int first = 1;
    for (int b = 1; b <= m->max_batch; b++) {
        const duration *d = &m->batch[b];
        unsigned long long c = atomic_load_explicit(&d->count, memory_order_relaxed);
        if (!c)
            continue;
        /* A step's time is all engine work (inputs are already in host memory and
         * outputs are written in place), so compute_input/output carry the count only. */
        jsonw_printf(w,
                     "%s{\"batch_size\":%d,\"compute_input\":{\"count\":%llu,\"ns\":0},"
                     "\"compute_infer\":{\"count\":%llu,\"ns\":%llu},"
                     "\"compute_output\":{\"count\":%llu,\"ns\":0}}",
                     first ? "" : ",", b, c, c,
                     (unsigned long long)atomic_load_explicit(&d->ns, memory_order_relaxed), c);
        first = 0;
    }
    jsonw_str(w, "]}");
}
