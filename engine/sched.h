/* The batching scheduler: one thread per model that takes requests from the model's
 * bounded queue and runs them with step-level batching on a model_stream. An idle
 * scheduler (no step in the last 20 ms, or max_queue_delay_us if longer) waits at most
 * max_queue_delay_us after the oldest request arrived for enough sequences to fill
 * max_batch_size slots; a busy one starts at once, lets new sequences join between steps
 * and frees a finished sequence's slot at the next step, so a short request does not wait
 * for a long one. A request of several sequences is spread over slots and completed when
 * its last sequence ends. Requests whose deadline passed before they started are
 * completed with BALSA_ERR_TIMEOUT without running. */
#ifndef BALSA_SCHED_H
#define BALSA_SCHED_H

#include <stdint.h>

#include "engine.h"
#include "queue.h"

typedef struct sched_request sched_request;

struct sched_request {
    /* Set by the submitter; they must stay valid until done() is called. */
    const engine_seq *seqs;    /* checked sequences (model_check_seq); their LSTM state
                                * rides along: h0/c0 are read when a sequence starts, hn/cn
                                * written when it ends */
    int nseqs;                 /* >= 1 */
    int all_steps;             /* as in model_run */
    float *const *outputs;     /* one buffer per sequence, sized as in model_run (may be
                                * NULL with gen) */
    /* Generation (model_stream_add_gen): NULL, or the options for every sequence, whose
     * seed the scheduler offsets by the sequence's index; then gen_tokens[i] (room for
     * max_new) and gen_counts[i] receive sequence i's tokens. */
    const model_gen_opts *gen;
    int32_t *const *gen_tokens;
    int *gen_counts;
    uint64_t deadline_ns;      /* queue_now_ns() clock; 0: none */
    /* Called once, from the scheduler thread, after a successful sched_submit; the
     * scheduler does not touch the request after it returns. */
    void (*done)(sched_request *r);
    /* Optional (NULL: none): called from the scheduler thread after each step that
     * advanced the request without completing it (gen_counts then tell the tokens so
     * far), never after done(). For streaming the generated tokens. */
    void (*progress)(sched_request *r);
    void *user;

    /* Set by the scheduler before done(). status: BALSA_OK, BALSA_ERR_TIMEOUT (deadline
     * passed before it started), BALSA_ERR_SHUTDOWN (sched_abort), or the engine's error. */
    balsa_status status;
    uint64_t enqueued_ns, started_ns, finished_ns;
    int batch_max;             /* the most sequences in one step this request took part in */

    /* Private to the scheduler. */
    int next_seq, pending;
    uint64_t progress_step;
};

typedef struct {
    int max_batch_size;     /* slots of the model_stream */
    int max_queue_delay_us;
    int queue_capacity;     /* requests */
    /* Optional (NULL: none): called from the scheduler thread after every step with the
     * number of sequences it ran and its duration, with sched_create's ctx. */
    void (*on_executed)(void *ctx, int batch, uint64_t step_ns);
} sched_config;

typedef struct sched sched;

/* Starts the scheduler thread for m, which it then owns for running until sched_free
 * (the caller must not run m meanwhile). on_step (may be NULL) is called from the
 * scheduler thread with the number of sequences before every step. On failure returns a
 * status (BALSA_ERR_OOM, or the engine's from model_stream_create) and creates nothing. */
balsa_status sched_create(balsa_model *m, const sched_config *cfg,
                          void (*on_step)(void *ctx, int batch), void *ctx, sched **out);

/* Admits r to the queue. BALSA_ERR_FULL when the queue is full, BALSA_ERR_SHUTDOWN after
 * sched_close/sched_abort: then done() is never called and the caller keeps r. */
balsa_status sched_submit(sched *s, sched_request *r);

/* Requests waiting in the queue now (not counting those running). */
int sched_queue_depth(sched *s);

/* Refuses new requests; everything admitted still runs to completion. */
void sched_close(sched *s);
/* Refuses new requests and completes every queued (not started) one with
 * BALSA_ERR_SHUTDOWN; sequences already running finish normally. */
void sched_abort(sched *s);
/* Closes, waits until every admitted request is completed, stops the thread and frees
 * the scheduler (not the model). NULL is ignored. */
void sched_free(sched *s);

#endif
