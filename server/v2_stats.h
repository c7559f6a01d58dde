/* Per-model inference statistics in the shape of Triton's statistics extension
 * (GET /v2/models/{m}/stats): request counts and nanoseconds split into queue,
 * compute_input (parsing and checking the request), compute_infer (from the request's
 * first engine step to its last) and compute_output (rendering the answer); and per
 * executed batch size (one engine step of that many sequences) the step count and time.
 * Lock-free atomics: HTTP threads and schedulers record without contention. */
#ifndef BALSA_V2_STATS_H
#define BALSA_V2_STATS_H

#include <stdint.h>

#include "jsonw.h"

typedef struct v2_stats v2_stats;

/* Creates the counters for nmodels models; model i records batch sizes 1..max_batch[i].
 * Returns NULL when out of memory. */
v2_stats *v2_stats_create(int nmodels, const int *max_batch);
void v2_stats_free(v2_stats *s);

/* Times of one request, in nanoseconds. */
typedef struct {
    uint64_t total, input, queue, infer, output;
} v2_stats_times;

/* One request for model answered 200 (nseqs sequences inferred). Ignored for model < 0. */
void v2_stats_success(v2_stats *s, int model, int nseqs, const v2_stats_times *t);
/* One request for model answered with an error, after total_ns. */
void v2_stats_fail(v2_stats *s, int model, uint64_t total_ns);
/* One engine step of batch sequences that took ns. */
void v2_stats_execution(v2_stats *s, int model, int batch, uint64_t ns);

/* Appends model's entry of "model_stats" (name, version "1", last_inference,
 * inference_count, execution_count, inference_stats, batch_stats) to w. */
void v2_stats_render(v2_stats *s, int model, const char *name, jsonw *w);

#endif
