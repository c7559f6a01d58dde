/* The batching scheduler (see sched.h). One thread per model owns its model_stream; the
 * only shared state is the request queue (its own lock) and the abort flag. */
#include "sched.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* A model counts as busy, and starts new requests at once instead of waiting for company,
 * while its last step ended less than this (or max_queue_delay_us, if longer) ago: after a
 * batch finishes, its clients' next requests come back over a millisecond or two (on the
 * 2-core development machine the HTTP threads answered a batch of 64 and read the next
 * requests in over 1 ms), and waiting for them all lined the batch up again (sched_main). */
#define BUSY_NS 20000000u

/* What a stream slot's tag points to: the request and which of its sequences. */
typedef struct {
    sched_request *req;
    int used;
} slot_rec;

struct sched {
    balsa_model *model;
    model_stream *stream;
    request_queue q;
    sched_config cfg;
    void (*on_step)(void *ctx, int batch);
    void *ctx;
    slot_rec *slots;
    void **done;
    queue_item *expired;
    pthread_t thread;
    atomic_int abort;
    uint64_t steps; /* steps run, for calling each request's progress once per step */
    uint64_t idle_since_ns; /* when the last step left the stream empty; 0: none has run */
};

static void finish(sched_request *r, balsa_status st)
{
    if (r->status == BALSA_OK)
        r->status = st;
    r->finished_ns = queue_now_ns();
    r->done(r);
}

static void complete_expired(sched *s)
{
    int n;
    do {
        n = queue_take_expired(&s->q, queue_now_ns(), s->expired, 64);
        for (int i = 0; i < n; i++) {
            sched_request *r = s->expired[i].ptr;
            r->enqueued_ns = s->expired[i].enqueued_ns;
            r->started_ns = 0;
            finish(r, BALSA_ERR_TIMEOUT);
        }
    } while (n == 64);
}

static slot_rec *take_slot(sched *s)
{
    for (int i = 0; i < s->cfg.max_batch_size; i++)
        if (!s->slots[i].used) {
            s->slots[i].used = 1;
            return &s->slots[i];
        }
    return NULL;
}

/* Stops adding cur's remaining sequences (after a failure or an abort); completes it when
 * none of its sequences is still running. */
static void cut_short(sched_request *cur, balsa_status st)
{
    if (cur->status == BALSA_OK)
        cur->status = st;
    cur->pending -= cur->nseqs - cur->next_seq;
    cur->next_seq = cur->nseqs;
    if (cur->pending == 0)
        finish(cur, st);
}

/* Fills free slots from cur and then from the queue; returns the new cur. */
static sched_request *admit(sched *s, sched_request *cur)
{
    int free_slots = model_stream_free_slots(s->stream);
    while (free_slots > 0) {
        if (!cur) {
            queue_item it;
            if (!queue_pop(&s->q, &it))
                break;
            sched_request *r = it.ptr;
            uint64_t now = queue_now_ns();
            r->enqueued_ns = it.enqueued_ns;
            r->started_ns = now;
            r->next_seq = 0;
            r->pending = r->nseqs;
            r->batch_max = 0;
            if (it.deadline_ns && it.deadline_ns <= now) {
                r->started_ns = 0;
                finish(r, BALSA_ERR_TIMEOUT);
                continue;
            }
            if (atomic_load(&s->abort)) {
                r->started_ns = 0;
                finish(r, BALSA_ERR_SHUTDOWN);
                continue;
            }
            cur = r;
        }
        if (cur->status != BALSA_OK || atomic_load(&s->abort)) {
            cut_short(cur, BALSA_ERR_SHUTDOWN);
            cur = NULL;
            continue;
        }
        slot_rec *slot = take_slot(s);
        BALSA_ASSERT(slot);
        slot->req = cur;
        int i = cur->next_seq;
        balsa_status st;
        if (cur->gen) {
            model_gen_opts g = *cur->gen;
            g.seed += (uint64_t)i; /* the sequences of one request draw differently */
            st = model_stream_add_gen(s->stream, &cur->seqs[i], &g, cur->gen_tokens[i],
                                      &cur->gen_counts[i],
                                      cur->outputs ? cur->outputs[i] : NULL, slot);
        } else {
            st = model_stream_add(s->stream, &cur->seqs[i], cur->all_steps, cur->outputs[i],
                                  slot);
        }
        if (st != BALSA_OK) {
            slot->used = 0;
            cut_short(cur, st);
            cur = NULL;
            continue;
        }
        cur->next_seq++;
        free_slots--;
        if (cur->next_seq == cur->nseqs)
            cur = NULL;
    }
    return cur;
}

static void *sched_main(void *arg)
{
    sched *s = arg;
    sched_request *cur = NULL;
    for (;;) {
        complete_expired(s);
        if (model_stream_active(s->stream) == 0 && !cur) {
            if (queue_wait(&s->q, 1, 0) == 0) {
                if (queue_is_closed(&s->q))
                    break;
                continue;
            }
            /* Idle: give the batch a moment to fill, counted from the oldest arrival, but
             * never past a queued request's deadline: waiting for company must not turn a
             * request that could run now into a 504. A model that ran a step lately
             * (BUSY_NS) is busy, not idle, and starts at once (the rest join between
             * steps): under steady load the sequences of one batch often finish together,
             * their clients send the next requests at once, and waiting for them all lined
             * them up again, so that the batch ran, finished and waited as one while the
             * HTTP threads answered it and read the next (the demo model's batching server
             * at concurrency 64: 10,000-12,000 instead of 14,000 requests/s in 2 runs of
             * 12, with 25-40% of the machine idle; with a busy window of the delay alone,
             * 1 run of 10; with this one, none of 12). */
            const uint64_t delay = (uint64_t)s->cfg.max_queue_delay_us * 1000u;
            const uint64_t busy_ns = delay > BUSY_NS ? delay : BUSY_NS;
            uint64_t oldest = queue_oldest_ns(&s->q);
            uint64_t until = oldest + delay;
            uint64_t deadline = queue_min_deadline_ns(&s->q);
            int busy = s->idle_since_ns && queue_now_ns() - s->idle_since_ns < busy_ns;
            if (delay > 0 && oldest && !busy && !atomic_load(&s->abort) &&
                (deadline == 0 || deadline > until))
                queue_wait(&s->q, model_stream_free_slots(s->stream), until);
        }
        cur = admit(s, cur);
        int active = model_stream_active(s->stream);
        if (active == 0)
            continue;
        if (s->on_step)
            s->on_step(s->ctx, active);
        for (int i = 0; i < s->cfg.max_batch_size; i++)
            if (s->slots[i].used && s->slots[i].req->batch_max < active)
                s->slots[i].req->batch_max = active;
        int ndone = 0;
        uint64_t t_step = queue_now_ns();
        balsa_status st = model_stream_step(s->stream, s->done, &ndone);
        if (s->cfg.on_executed)
            s->cfg.on_executed(s->ctx, active, queue_now_ns() - t_step);
        for (int i = 0; i < ndone; i++) {
            slot_rec *slot = s->done[i];
            sched_request *r = slot->req;
            slot->used = 0;
            if (st != BALSA_OK && r->status == BALSA_OK)
                r->status = st;
            if (--r->pending == 0 && r->next_seq == r->nseqs)
                finish(r, r->status);
        }
        s->steps++;
        if (model_stream_active(s->stream) == 0)
            s->idle_since_ns = queue_now_ns();
        for (int i = 0; i < s->cfg.max_batch_size; i++) {
            sched_request *r = s->slots[i].used ? s->slots[i].req : NULL;
            if (r && r->progress && r->progress_step != s->steps) {
                r->progress_step = s->steps;
                r->progress(r);
            }
        }
    }
    return NULL;
}

balsa_status sched_create(balsa_model *m, const sched_config *cfg,
                          void (*on_step)(void *ctx, int batch), void *ctx, sched **out)
{
    BALSA_ASSERT(cfg->max_batch_size >= 1 && cfg->queue_capacity >= 1);
    *out = NULL;
    sched *s = calloc(1, sizeof *s);
    if (!s)
        return BALSA_ERR_OOM;
    s->model = m;
    s->cfg = *cfg;
    s->on_step = on_step;
    s->ctx = ctx;
    s->slots = calloc((size_t)cfg->max_batch_size, sizeof *s->slots);
    s->done = calloc((size_t)cfg->max_batch_size, sizeof *s->done);
    s->expired = calloc(64, sizeof *s->expired);
    balsa_status st = BALSA_ERR_OOM;
    if (!s->slots || !s->done || !s->expired)
        goto fail;
    st = model_stream_create(m, cfg->max_batch_size, &s->stream);
    if (st != BALSA_OK)
        goto fail;
    st = queue_init(&s->q, cfg->queue_capacity);
    if (st != BALSA_OK)
        goto fail_stream;
    atomic_init(&s->abort, 0);
    if (pthread_create(&s->thread, NULL, sched_main, s) != 0) {
        st = BALSA_ERR_OOM;
        queue_free(&s->q);
        goto fail_stream;
    }
    *out = s;
    return BALSA_OK;
fail_stream:
    model_stream_free(s->stream);
fail:
    free(s->slots);
    free(s->done);
    free(s->expired);
    free(s);
    return st;
}

balsa_status sched_submit(sched *s, sched_request *r)
{
    r->status = BALSA_OK;
    r->enqueued_ns = r->started_ns = r->finished_ns = 0;
    r->batch_max = 0;
    return queue_push(&s->q, r, r->nseqs, r->deadline_ns);
}

int sched_queue_depth(sched *s)
{
    return queue_depth(&s->q);
}

void sched_close(sched *s)
{
    queue_close(&s->q);
}

void sched_abort(sched *s)
{
    atomic_store(&s->abort, 1);
    queue_close(&s->q);
}

void sched_free(sched *s)
{
    if (!s)
        return;
    queue_close(&s->q);
    pthread_join(s->thread, NULL);
    model_stream_free(s->stream);
    queue_free(&s->q);
    free(s->slots);
    free(s->done);
    free(s->expired);
    free(s);
}
