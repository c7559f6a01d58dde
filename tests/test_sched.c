/* Tests of the batching scheduler (engine/sched.c) driven directly, without HTTP: a
 * request runs and matches model_run, an idle scheduler does not hold a request past its
 * deadline while it waits for company (max_queue_delay_us), and only an idle one waits:
 * a request that comes within the delay after the last one finished starts at once. */

#include <unistd.h>

#include "engine/queue.h"
#include "engine/sched.h"
#include "engine_ref.h"
#include "sched_util.h"

static balsa_backend *be;

static balsa_model *small_model(model_spec *s, model_host *h)
{
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "t");
    s->input_kind = MODEL_INPUT_TOKENS;
    s->vocab_size = 20;
    s->input_size = 8;
    s->hidden_size = 16;
    s->num_layers = 1;
    s->lstm_bias = 1;
    s->n_fc = 1;
    s->fc[0] = (model_fc_spec){20, BALSA_ACT_NONE, 1};
    s->head = MODEL_HEAD_SOFTMAX;
    ref_random_host(s, h, 8, 2, 0.5f, 5);
    balsa_model *m = NULL;
    char err[256];
    BALSA_ASSERT(model_build(s, h, be, &m, err, sizeof err) == BALSA_OK);
    return m;
}

/* A scheduler (max_batch_size 4, the given batching delay) over small_model, and one
 * random token sequence of len steps for its requests. */
typedef struct {
    model_spec s;
    model_host h;
    balsa_model *m;
    ref_seq q;
    sched *sc;
} fixture;

static balsa_status fixture_init(fixture *f, int len, unsigned long long seed, int delay_us)
{
    f->m = small_model(&f->s, &f->h);
    ref_make_seq(&f->s, &f->q, len, &seed);
    sched_config cfg = {.max_batch_size = 4, .max_queue_delay_us = delay_us, .queue_capacity = 8};
    return sched_create(f->m, &cfg, NULL, NULL, &f->sc);
}

static void fixture_free(fixture *f)
{
    sched_free(f->sc);
    model_free(f->m);
    model_host_free(&f->h);
    ref_free_seq(&f->q);
}

/* A request for the fixture's sequence, its output into *op. */
static sched_request fixture_request(fixture *f, float **op)
{
    sched_request r;
    memset(&r, 0, sizeof r);
    r.seqs = &f->q.seq;
    r.nseqs = 1;
    r.outputs = op;
    return r;
}

/* A batching delay of 2 s and a request due in 0.3 s: the idle scheduler must start it
 * at once (status OK, well before the delay), not wait out the delay and answer 504. */
TEST(deadline_cuts_the_batching_delay)
{
    fixture f;
    REQUIRE(fixture_init(&f, 5, 9, 2000000) == BALSA_OK);
    float out[20], want[20];
    float *wp[1] = {want}, *op[1] = {out};
    REQUIRE(model_run(f.m, &f.q.seq, 1, 0, wp) == BALSA_OK);
    sched_request r = fixture_request(&f, op);
    uint64_t t0 = queue_now_ns();
    r.deadline_ns = t0 + 300000000u;
    REQUIRE(su_sched_run(f.sc, &r) == BALSA_OK);
    double waited_s = (double)(queue_now_ns() - t0) / 1e9;
    CHECK_MSG(r.status == BALSA_OK, "status %s", balsa_status_str(r.status));
    CHECK_MSG(waited_s < 1.5, "answered after %.3f s: it waited out the 2 s delay", waited_s);
    double err = 0;
    for (int i = 0; i < 20; i++)
        err = fabs(out[i] - want[i]) > err ? fabs(out[i] - want[i]) : err;
    CHECK_MSG(r.status != BALSA_OK || err < 1e-6, "differs from model_run by %g", err);
    fixture_free(&f);
}

/* Seconds request r spent queued (from sched_submit to its start). */
static double queued_s(const sched_request *r)
{
    return (double)(r->started_ns - r->enqueued_ns) / 1e9;
}

/* A batching delay of 0.4 s: a request to a scheduler that has run nothing waits it out
 * for company (max_batch_size 4, alone); the next one, sent as the first finishes, finds
 * the model busy and starts at once; after a pause longer than the delay the model is
 * idle again and the third waits. */
TEST(only_an_idle_scheduler_waits_for_company)
{
    fixture f;
    REQUIRE(fixture_init(&f, 4, 10, 400000) == BALSA_OK);
    float out[20];
    float *op[1] = {out};
    sched_request r[3];
    for (int i = 0; i < 3; i++) {
        r[i] = fixture_request(&f, op);
        if (i == 2)
            usleep(600000);
        REQUIRE(su_sched_run(f.sc, &r[i]) == BALSA_OK);
        CHECK_MSG(r[i].status == BALSA_OK, "request %d: %s", i, balsa_status_str(r[i].status));
    }
    CHECK_MSG(queued_s(&r[0]) >= 0.36, "first request queued %.3f s, not the 0.4 s delay",
              queued_s(&r[0]));
    CHECK_MSG(queued_s(&r[1]) < 0.2, "second request queued %.3f s: the busy model waited",
              queued_s(&r[1]));
    CHECK_MSG(queued_s(&r[2]) >= 0.36, "third request queued %.3f s after the model went idle",
              queued_s(&r[2]));
    fixture_free(&f);
}

int main(void)
{
    if (balsa_backend_cpu_create(1, &be) != BALSA_OK)
        return 1;
    RUN(deadline_cuts_the_batching_delay);
    RUN(only_an_idle_scheduler_waits_for_company);
    be->ops->destroy(be);
    HARNESS_END();
}
