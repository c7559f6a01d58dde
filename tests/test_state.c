/* Tests of LSTM state (engine_seq's h0/c0 in, hn/cn out): a sequence started from a given
 * state gives the same numbers alone and in any batch, through model_run, model_stream,
 * the scheduler and the fused lstm_step path; running a sequence in two halves, the
 * second started from the first's final state, equals running it whole; bad state is
 * refused. The API's "initial_state" and "return_state" (server/api.c): parsed into the
 * sequences, every mistake refused naming the field, and a response's "states" fed back
 * as the next request's "initial_state" continues the sequence exactly, in process and
 * through `balsa serve` (its scheduler batching the two). (Agreement with
 * PyTorch's h_0/c_0 and h_n/c_n is in tests/test_parity.c.) */
#include <cJSON.h>
#include <stdarg.h>

#include "engine/sched.h"
#include "engine_ref.h"
#include "sched_util.h"
#include "server/api.h"
#include "server_util.h"

#define FORTUNES "models/fortunes/fortunes-b90.safetensors"

static balsa_backend *be;

/* The test networks: uni- and bidirectional, 1 and 2 layers, dense and sparse, tokens
 * and vectors. Case 1 can generate (token input, unidirectional, output = vocabulary). */
typedef struct {
    int tokens, H, layers, bidir, k, fc_out;
} state_case;

static const state_case cases[] = {
    {0, 12, 1, 0, 0, 5},  /* vectors, 1 layer, dense, softmax */
    {1, 16, 2, 0, 3, 20}, /* tokens, 2 layers, sparse, output = vocabulary */
    {0, 16, 2, 1, 3, 4},  /* vectors, 2 layers, bidirectional, sparse */
    {1, 10, 1, 1, 0, 0},  /* tokens, 1 layer, bidirectional, dense, no FC */
};
#define NCASES ((int)(sizeof cases / sizeof *cases))

static model_spec spec_of(const state_case *c)
{
    model_spec s;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "state");
    s.input_kind = c->tokens ? MODEL_INPUT_TOKENS : MODEL_INPUT_VECTORS;
    s.vocab_size = c->tokens ? 20 : 0;
    s.input_size = c->tokens ? 8 : 7;
    s.hidden_size = c->H;
    s.num_layers = c->layers;
    s.bidirectional = c->bidir;
    s.lstm_bias = 1;
    if (c->fc_out) {
        s.n_fc = 1;
        s.fc[0] = (model_fc_spec){c->fc_out, BALSA_ACT_NONE, 1};
        s.head = MODEL_HEAD_LOG_SOFTMAX;
    }
    return s;
}

static balsa_model *build(const state_case *c, balsa_backend *b, model_spec *s, model_host *h,
                          unsigned long long seed)
{
    *s = spec_of(c);
    ref_random_host(s, h, 8, c->k, 0.5f, seed);
    balsa_model *m = NULL;
    char err[256];
    BALSA_ASSERT(model_build(s, h, b, &m, err, sizeof err) == BALSA_OK);
    return m;
}

/* One test sequence with its own state buffers: h0/c0 random (in [-1, 1)) where given. */
typedef struct {
    ref_seq in;
    float *h0, *c0, *hn, *cn, *out;
} state_seq;

/* pattern: bit 0 gives h0, bit 1 gives c0. */
static void make_state_seq(const model_spec *s, state_seq *q, int len, int pattern,
                           unsigned long long *rng)
{
    size_t n = model_state_floats(s);
    ref_make_seq(s, &q->in, len, rng);
    q->h0 = malloc(sizeof(float) * n);
    q->c0 = malloc(sizeof(float) * n);
    q->hn = calloc(n, sizeof(float));
    q->cn = calloc(n, sizeof(float));
    q->out = calloc((size_t)len * model_spec_output_size(s), sizeof(float));
    for (size_t i = 0; i < n; i++) {
        q->h0[i] = h_rand_f(rng);
        q->c0[i] = 2 * h_rand_f(rng);
    }
    q->in.seq.h0 = pattern & 1 ? q->h0 : NULL;
    q->in.seq.c0 = pattern & 2 ? q->c0 : NULL;
    q->in.seq.hn = q->hn;
    q->in.seq.cn = q->cn;
}

static void free_state_seq(state_seq *q)
{
    ref_free_seq(&q->in);
    free(q->h0);
    free(q->c0);
    free(q->hn);
    free(q->cn);
    free(q->out);
}

/* Largest relative difference (absolute below 1) of a and b, both n floats. */
static double diff(const float *a, const float *b, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / fmax(1.0, fabs((double)b[i]));
        worst = d > worst || isnan(d) ? d : worst;
    }
    return worst;
}

/* Runs q alone with model_run into fresh buffers: out, hn, cn (each caller-freed). */
static void run_alone(balsa_model *m, const model_spec *s, const engine_seq *q, int all,
                      float **out, float **hn, float **cn)
{
    size_t n = model_state_floats(s);
    *out = calloc((size_t)q->len * model_spec_output_size(s), sizeof(float));
    *hn = calloc(n, sizeof(float));
    *cn = calloc(n, sizeof(float));
    engine_seq one = *q;
    one.hn = *hn;
    one.cn = *cn;
    BALSA_ASSERT(model_run(m, &one, 1, all, out) == BALSA_OK);
}

/* model_run: every sequence (states given or not, hn/cn asked) gets from a mixed batch
 * what it gets alone, and the state changes the answer. equal: all lengths alike (the
 * bidirectional aligned path). */
static void check_run_batch(int ci, int all, int equal)
{
    model_spec s;
    model_host h;
    balsa_model *m = build(&cases[ci], be, &s, &h, 40 + ci);
    enum { N = 9 };
    state_seq q[N];
    engine_seq seqs[N];
    float *outs[N];
    unsigned long long rng = 7 + ci;
    size_t ns = model_state_floats(&s);
    int O = model_spec_output_size(&s);
    for (int i = 0; i < N; i++) {
        make_state_seq(&s, &q[i], equal ? 6 : 1 + (int)(h_rand_u64(&rng) % 12), i % 4, &rng);
        seqs[i] = q[i].in.seq;
        outs[i] = q[i].out;
    }
    REQUIRE(model_run(m, seqs, N, all, outs) == BALSA_OK);
    double worst = 0, moved = 0;
    for (int i = 0; i < N; i++) {
        float *out, *hn, *cn;
        size_t cnt = (size_t)(all ? seqs[i].len : 1) * O;
        run_alone(m, &s, &seqs[i], all, &out, &hn, &cn);
        double e = fmax(diff(q[i].out, out, cnt), fmax(diff(q[i].hn, hn, ns), diff(q[i].cn, cn, ns)));
        worst = fmax(worst, e);
        engine_seq zero = seqs[i];
        zero.h0 = zero.c0 = NULL;
        float *zout, *zhn, *zcn;
        run_alone(m, &s, &zero, all, &zout, &zhn, &zcn);
        if (i % 4)
            moved = fmax(moved, diff(zhn, hn, ns));
        free(out), free(hn), free(cn), free(zout), free(zhn), free(zcn);
    }
    CHECK_MSG(worst <= 1e-5, "case %d all %d equal %d: batch vs alone %g", ci, all, equal, worst);
    CHECK_MSG(moved > 1e-3, "case %d: the initial state changed nothing (%g)", ci, moved);
    /* Without FC layers the "last" output is the top layer's final h, both directions. */
    if (!all && s.n_fc == 0)
        for (int i = 0; i < N; i++) {
            int D = s.bidirectional ? 2 : 1;
            size_t top = (size_t)(s.num_layers - 1) * D * s.hidden_size;
            CHECK(diff(q[i].out, q[i].hn + top, (size_t)D * s.hidden_size) == 0);
        }
    for (int i = 0; i < N; i++)
        free_state_seq(&q[i]);
    model_free(m);
    model_host_free(&h);
}

TEST(run_state_batch_independence)
{
    for (int ci = 0; ci < NCASES; ci++)
        for (int all = 0; all < 2; all++)
            for (int equal = 0; equal < 2; equal++)
                check_run_batch(ci, all, equal);
}

/* model_stream with 3 slots and sequences joining as slots free up: each matches
 * model_run alone, and the stream copied h0/c0 at add (the caller's copy is spoiled right
 * after). Bidirectional cases go through the stream's whole mode. */
TEST(stream_state_matches_run)
{
    for (int ci = 0; ci < NCASES; ci++) {
        model_spec s;
        model_host h;
        balsa_model *m = build(&cases[ci], be, &s, &h, 60 + ci);
        enum { N = 7 };
        state_seq q[N];
        unsigned long long rng = 31 + ci;
        size_t ns = model_state_floats(&s);
        int O = model_spec_output_size(&s);
        float *keep_h0[N], *keep_c0[N];
        for (int i = 0; i < N; i++) {
            make_state_seq(&s, &q[i], 1 + (int)(h_rand_u64(&rng) % 9), i % 4, &rng);
            keep_h0[i] = malloc(sizeof(float) * ns);
            keep_c0[i] = malloc(sizeof(float) * ns);
            memcpy(keep_h0[i], q[i].h0, sizeof(float) * ns);
            memcpy(keep_c0[i], q[i].c0, sizeof(float) * ns);
        }
        model_stream *st;
        REQUIRE(model_stream_create(m, 3, &st) == BALSA_OK);
        int next = 0, finished = 0, steps = 0;
        void *done[3];
        while (finished < N && steps++ < 200) {
            while (next < N && model_stream_free_slots(st) > 0) {
                CHECK(model_stream_add(st, &q[next].in.seq, next % 2, q[next].out, &q[next]) ==
                      BALSA_OK);
                for (size_t j = 0; j < ns; j++)
                    q[next].h0[j] = q[next].c0[j] = NAN;
                next++;
            }
            int nd = 0;
            REQUIRE(model_stream_step(st, done, &nd) == BALSA_OK);
            finished += nd;
        }
        CHECK(finished == N);
        double worst = 0;
        for (int i = 0; i < N; i++) {
            engine_seq orig = q[i].in.seq;
            orig.h0 = i % 4 & 1 ? keep_h0[i] : NULL;
            orig.c0 = i % 4 & 2 ? keep_c0[i] : NULL;
            float *out, *hn, *cn;
            run_alone(m, &s, &orig, i % 2, &out, &hn, &cn);
            size_t cnt = (size_t)(i % 2 ? orig.len : 1) * O;
            worst = fmax(worst, fmax(diff(q[i].out, out, cnt),
                                     fmax(diff(q[i].hn, hn, ns), diff(q[i].cn, cn, ns))));
            free(out), free(hn), free(cn);
            free(keep_h0[i]), free(keep_c0[i]);
            free_state_seq(&q[i]);
        }
        CHECK_MSG(worst <= 1e-5, "case %d: stream vs model_run %g", ci, worst);
        model_stream_free(st);
        model_free(m);
        model_host_free(&h);
    }
}

/* A unidirectional sequence run in two halves, the second from the first's final state,
 * gives the whole run's outputs for its steps and the same final state: through model_run
 * and through model_stream. */
TEST(halves_equal_whole)
{
    for (int ci = 0; ci < 2; ci++) {
        model_spec s;
        model_host h;
        balsa_model *m = build(&cases[ci], be, &s, &h, 80 + ci);
        size_t ns = model_state_floats(&s);
        int O = model_spec_output_size(&s), len = 13, cut = 5;
        unsigned long long rng = 90 + ci;
        state_seq whole;
        make_state_seq(&s, &whole, len, 3, &rng); /* from a given state, too */
        float *wout, *whn, *wcn;
        run_alone(m, &s, &whole.in.seq, 1, &wout, &whn, &wcn);
        for (int via_stream = 0; via_stream < 2; via_stream++) {
            engine_seq first = whole.in.seq, second = whole.in.seq;
            first.len = cut;
            second.len = len - cut;
            if (s.input_kind == MODEL_INPUT_TOKENS)
                second.tokens += cut;
            else
                second.features += (size_t)cut * s.input_size;
            float *mid_h = calloc(ns, sizeof(float)), *mid_c = calloc(ns, sizeof(float));
            float *end_h = calloc(ns, sizeof(float)), *end_c = calloc(ns, sizeof(float));
            float *o1 = calloc((size_t)len * O, sizeof(float)), *o2 = o1 + (size_t)cut * O;
            first.hn = mid_h, first.cn = mid_c;
            second.h0 = mid_h, second.c0 = mid_c, second.hn = end_h, second.cn = end_c;
            engine_seq parts[2] = {first, second};
            float *po[2] = {o1, o2};
            for (int k = 0; k < 2; k++) {
                if (!via_stream) {
                    REQUIRE(model_run(m, &parts[k], 1, 1, &po[k]) == BALSA_OK);
                    continue;
                }
                model_stream *st;
                REQUIRE(model_stream_create(m, 2, &st) == BALSA_OK);
                REQUIRE(model_stream_add(st, &parts[k], 1, po[k], NULL) == BALSA_OK);
                void *done[2];
                int nd = 0, guard = 0;
                while (model_stream_active(st) > 0 && guard++ < 100)
                    REQUIRE(model_stream_step(st, done, &nd) == BALSA_OK);
                model_stream_free(st);
            }
            double e = fmax(diff(o1, wout, (size_t)len * O),
                            fmax(diff(end_h, whn, ns), diff(end_c, wcn, ns)));
            CHECK_MSG(e <= 1e-5, "case %d stream %d: halves vs whole %g", ci, via_stream, e);
            free(mid_h), free(mid_c), free(end_h), free(end_c), free(o1);
        }
        free(wout), free(whn), free(wcn);
        free_state_seq(&whole);
        model_free(m);
        model_host_free(&h);
    }
}

/* Generation goes on from a given state: the prompt's second half, started from the first
 * half's state, generates what the whole prompt does; and the state generation returns,
 * with the last token as the next input, continues it. */
TEST(generate_from_state)
{
    model_spec s;
    model_host h;
    balsa_model *m = build(&cases[1], be, &s, &h, 120);
    REQUIRE(model_get_info(m)->can_generate);
    size_t ns = model_state_floats(&s);
    int32_t prompt[6] = {3, 1, 4, 1, 5, 9};
    model_gen_opts g = {.max_new = 9, .temperature = 0, .seed = 1};
    int32_t want[9], got[9];
    int n = 0;
    REQUIRE(model_generate(m, &(engine_seq){.tokens = prompt, .len = 6}, &g, want, &n) ==
            BALSA_OK);
    float *mid_h = calloc(ns, sizeof(float)), *mid_c = calloc(ns, sizeof(float));
    float *o = calloc(model_spec_output_size(&s), sizeof(float));
    engine_seq first = {.tokens = prompt, .len = 2, .hn = mid_h, .cn = mid_c};
    REQUIRE(model_run(m, &first, 1, 0, &o) == BALSA_OK);
    float *gen_h = calloc(ns, sizeof(float)), *gen_c = calloc(ns, sizeof(float));
    engine_seq second = {.tokens = prompt + 2, .len = 4, .h0 = mid_h, .c0 = mid_c,
                         .hn = gen_h, .cn = gen_c};
    g.max_new = 4;
    REQUIRE(model_generate(m, &second, &g, got, &n) == BALSA_OK && n == 4);
    CHECK(memcmp(got, want, sizeof(int32_t) * 4) == 0);
    engine_seq rest = {.tokens = &got[3], .len = 1, .h0 = gen_h, .c0 = gen_c};
    g.max_new = 5;
    REQUIRE(model_generate(m, &rest, &g, got + 4, &n) == BALSA_OK && n == 5);
    CHECK(memcmp(got, want, sizeof want) == 0);
    free(mid_h), free(mid_c), free(gen_h), free(gen_c), free(o);
    model_free(m);
    model_host_free(&h);
}

/* Non-finite initial state and state for a model without an LSTM are refused, naming the
 * field, by model_check_seq, model_run and model_stream_add. */
TEST(bad_state_refused)
{
    model_spec s;
    model_host h;
    balsa_model *m = build(&cases[2], be, &s, &h, 130);
    size_t ns = model_state_floats(&s);
    CHECK(ns == 2 * 2 * 16);
    float *st0 = calloc(ns, sizeof(float));
    float *out = calloc(8, sizeof(float)); /* room for both models' outputs (4 and 5) */
    unsigned long long rng = 1;
    ref_seq r;
    ref_make_seq(&s, &r, 3, &rng);
    engine_seq q = r.seq;
    char err[200];
    st0[2 * 16 + 1 * 16 + 3] = NAN; /* layer 1, direction 1, unit 3 */
    q.h0 = st0;
    CHECK(model_check_seq(m, &q, err, sizeof err) == BALSA_ERR_INVALID);
    CHECK_MSG(strstr(err, "h0: unit 3 of layer 1, direction 1 is not finite"), "%s", err);
    CHECK(model_run(m, &q, 1, 0, &out) == BALSA_ERR_INVALID);
    q.h0 = NULL;
    q.c0 = st0;
    st0[2 * 16 + 1 * 16 + 3] = INFINITY;
    CHECK(model_check_seq(m, &q, err, sizeof err) == BALSA_ERR_INVALID && strstr(err, "c0:"));
    model_stream *stm;
    REQUIRE(model_stream_create(m, 1, &stm) == BALSA_OK);
    CHECK(model_stream_add(stm, &q, 0, out, NULL) == BALSA_ERR_INVALID);
    CHECK(model_stream_active(stm) == 0);
    model_stream_free(stm);
    model_free(m);
    model_host_free(&h);

    state_case fc_only = {0, 0, 0, 0, 0, 5};
    s = spec_of(&fc_only);
    ref_random_host(&s, &h, 8, 0, 0.5f, 3);
    REQUIRE(model_build(&s, &h, be, &m, err, sizeof err) == BALSA_OK);
    q = r.seq;
    q.hn = st0;
    CHECK(model_check_seq(m, &q, err, sizeof err) == BALSA_ERR_INVALID);
    CHECK_MSG(strstr(err, "has no LSTM, so no state"), "%s", err);
    CHECK(model_run(m, &q, 1, 0, &out) == BALSA_ERR_INVALID);
    q.hn = NULL;
    CHECK(model_run(m, &q, 1, 0, &out) == BALSA_OK);
    model_free(m);
    model_host_free(&h);
    ref_free_seq(&r);
    free(st0);
    free(out);
}

/* A backend with the optional fused lstm_step (as CUDA has): with an initial h the first
 * step is a recurrent one too, reading h0 rows apart from the output rows; the numbers
 * match the plain backend's. */
static balsa_backend *fused_be;
static balsa_backend_ops fused_ops;
static const balsa_backend_ops *cpu_ops;
static int fused_calls;

static balsa_status counting_lstm_step(balsa_backend *b, const balsa_mat *w_hh,
                                       const float *h_prev, int ldhp, float *gates, int ldg,
                                       float *c, float *h, int ldh, int n, int hidden)
{
    fused_calls++;
    CHECK(h_prev != h && ldhp >= hidden);
    balsa_status st = cpu_ops->matmul(b, w_hh, h_prev, ldhp, n, NULL, 1, BALSA_ACT_NONE, gates,
                                      ldg);
    return st == BALSA_OK ? cpu_ops->lstm_cell(b, gates, ldg, c, h, ldh, n, hidden) : st;
}

TEST(fused_step_reads_initial_state)
{
    REQUIRE(balsa_backend_cpu_create(1, &fused_be) == BALSA_OK);
    cpu_ops = fused_be->ops;
    fused_ops = *cpu_ops;
    fused_ops.lstm_step = counting_lstm_step;
    fused_be->ops = &fused_ops;
    for (int ci = 0; ci < NCASES; ci++) {
        model_spec s;
        model_host h;
        balsa_model *plain = build(&cases[ci], be, &s, &h, 140 + ci);
        balsa_model *fused;
        char err[256];
        REQUIRE(model_build(&s, &h, fused_be, &fused, err, sizeof err) == BALSA_OK);
        size_t ns = model_state_floats(&s);
        for (int equal = 0; equal < 2; equal++) {
            enum { N = 4 };
            state_seq q[N];
            engine_seq seqs[N];
            float *outs[N];
            unsigned long long rng = 150 + ci;
            for (int i = 0; i < N; i++) {
                make_state_seq(&s, &q[i], equal ? 5 : 2 + i * 3, i % 4, &rng);
                seqs[i] = q[i].in.seq;
                outs[i] = q[i].out;
            }
            fused_calls = 0;
            REQUIRE(model_run(fused, seqs, N, 1, outs) == BALSA_OK);
            int T = equal ? 5 : 2 + (N - 1) * 3;
            /* every step of every layer and direction, the first one included */
            CHECK_MSG(fused_calls == T * s.num_layers * (s.bidirectional ? 2 : 1),
                      "case %d: %d fused steps", ci, fused_calls);
            double worst = 0;
            for (int i = 0; i < N; i++) {
                float *out, *hn, *cn;
                run_alone(plain, &s, &seqs[i], 1, &out, &hn, &cn);
                size_t cnt = (size_t)seqs[i].len * model_spec_output_size(&s);
                worst = fmax(worst, fmax(diff(q[i].out, out, cnt),
                                         fmax(diff(q[i].hn, hn, ns), diff(q[i].cn, cn, ns))));
                free(out), free(hn), free(cn);
                free_state_seq(&q[i]);
            }
            CHECK_MSG(worst <= 1e-5, "case %d equal %d: fused vs plain %g", ci, equal, worst);
        }
        model_free(plain);
        model_free(fused);
        model_host_free(&h);
    }
    fused_be->ops = cpu_ops;
    fused_be->ops->destroy(fused_be);
}

/* The scheduler passes each sequence's state through (it rides in engine_seq): a request
 * of sequences with and without state, batched, matches model_run alone. */
TEST(scheduler_carries_state)
{
    for (int ci = 0; ci < NCASES; ci += 2) {
        model_spec s;
        model_host h;
        balsa_model *m = build(&cases[ci], be, &s, &h, 160 + ci);
        enum { N = 5 };
        state_seq q[N];
        engine_seq seqs[N];
        float *outs[N];
        unsigned long long rng = 170;
        size_t ns = model_state_floats(&s);
        for (int i = 0; i < N; i++) {
            make_state_seq(&s, &q[i], 2 + i, i % 4, &rng);
            seqs[i] = q[i].in.seq;
            outs[i] = q[i].out;
        }
        sched_config cfg = {.max_batch_size = 3, .max_queue_delay_us = 0, .queue_capacity = 4};
        sched *sc;
        REQUIRE(sched_create(m, &cfg, NULL, NULL, &sc) == BALSA_OK);
        sched_request r;
        memset(&r, 0, sizeof r);
        r.seqs = seqs;
        r.nseqs = N;
        r.outputs = outs;
        REQUIRE(su_sched_run(sc, &r) == BALSA_OK);
        CHECK(r.status == BALSA_OK);
        sched_free(sc);
        double worst = 0;
        for (int i = 0; i < N; i++) {
            float *out, *hn, *cn;
            run_alone(m, &s, &seqs[i], 0, &out, &hn, &cn);
            worst = fmax(worst, fmax(diff(q[i].out, out, model_spec_output_size(&s)),
                                     fmax(diff(q[i].hn, hn, ns), diff(q[i].cn, cn, ns))));
            free(out), free(hn), free(cn);
            free_state_seq(&q[i]);
        }
        CHECK_MSG(worst <= 1e-5, "case %d: scheduler vs model_run %g", ci, worst);
        model_free(m);
        model_host_free(&h);
    }
}


/* ---------------------------------------------------------------- the API */

static balsa_model *api_m[3];
static model_host api_h[3];
static api_model api_models[3];
static const api_limits api_lim = {1000, 100000};

/* "lm": case 1 (tokens, 2 layers of 16, can generate); "bi": case 3 (tokens, bidirectional,
 * 1 layer of 10); "fc": no LSTM. */
static void api_setup(void)
{
    static const char *names[3] = {"lm", "bi", "fc"};
    state_case fc_only = {1, 0, 0, 0, 0, 5};
    const state_case *cs[3] = {&cases[1], &cases[3], &fc_only};
    for (int i = 0; i < 3; i++) {
        model_spec s;
        api_m[i] = build(cs[i], be, &s, &api_h[i], 200 + i);
        api_models[i] = (api_model){names[i], model_get_info(api_m[i]), api_m[i]};
    }
}

static void api_teardown(void)
{
    for (int i = 0; i < 3; i++) {
        model_free(api_m[i]);
        model_host_free(&api_h[i]);
    }
}

/* n JSON numbers v, v + 0.01, v + 0.02, ... separated by commas (no brackets), in one of
 * eight static buffers (so that a body can hold several). */
static const char *nums(int n, double v)
{
    static char buf[8][4096];
    static int k;
    char *b = buf[k++ % 8];
    size_t used = 0;
    b[0] = 0;
    for (int i = 0; i < n; i++)
        used += (size_t)snprintf(b + used, sizeof buf[0] - used, i ? ",%.3g" : "%.3g",
                                 v + 0.01 * i);
    return b;
}

/* A JSON matrix of rows x cols numbers, value v + 0.01 * (its index), in one of eight
 * static buffers. */
static const char *mat(int rows, int cols, double v)
{
    static char buf[8][8192];
    static int k;
    char *b = buf[k++ % 8];
    size_t used = (size_t)snprintf(b, sizeof buf[0], "[");
    for (int r = 0; r < rows; r++)
        used += (size_t)snprintf(b + used, sizeof buf[0] - used, "%s[%s]", r ? "," : "",
                                 nums(cols, v + 0.01 * r * cols));
    snprintf(b + used, sizeof buf[0] - used, "]");
    return b;
}

/* A request body (malloc'd; the caller frees it). */
static char *body_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *body_of(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *b = NULL;
    if (vasprintf(&b, fmt, ap) < 0)
        b = NULL;
    va_end(ap);
    BALSA_ASSERT(b);
    return b;
}

static int api_parse(const char *body, const api_limits *lim, api_request *r, char *err,
                     size_t errlen)
{
    return api_parse_request(body, strlen(body), api_models, 3, lim, r, err, errlen);
}

/* Parses, runs with model_run (as `balsa run` does) and renders; returns the response
 * parsed back (cJSON_Delete it), NULL on any failure. */
static cJSON *api_run(const char *body)
{
    api_request r;
    char err[512];
    int code = api_parse(body, &api_lim, &r, err, sizeof err);
    if (code) {
        printf("  %d %s\n", code, err);
        return NULL;
    }
    const model_info *info = api_models[r.model].info;
    cJSON *root = NULL;
    if (api_alloc_outputs(&r, info) == 0 &&
        model_run(api_m[r.model], r.seqs, r.nseqs, r.all_steps, r.outputs) == BALSA_OK) {
        size_t len;
        char *text = api_render_response(&r, info->name, info, &len);
        root = text ? cJSON_ParseWithLength(text, len) : NULL;
        free(text);
    }
    api_request_free(&r);
    return root;
}

TEST(api_parses_state)
{
    api_request r;
    char err[512];
    char *body = body_of("{\"model\": \"lm\", \"inputs\": [[1, 2, 3], [4, 5]], "
                               "\"initial_state\": [{\"h\": %s, \"c\": %s}, null], "
                               "\"return_state\": true}",
                               mat(2, 16, 0.5), mat(2, 16, -1));
    REQUIRE(api_parse(body, &api_lim, &r, err, sizeof err) == 0);
    CHECK(r.state_size == 32 && r.return_state == 1);
    REQUIRE(r.seqs[0].h0 && r.seqs[0].c0);
    CHECK(r.seqs[0].h0[0] == 0.5f && r.seqs[0].h0[17] == (float)(0.5 + 0.17));
    CHECK(r.seqs[0].c0[31] == (float)(-1 + 0.31));
    CHECK(!r.seqs[1].h0 && !r.seqs[1].c0 && !r.seqs[0].hn);
    REQUIRE(api_alloc_outputs(&r, api_models[0].info) == 0);
    CHECK(r.seqs[0].hn && r.seqs[0].cn && r.seqs[1].hn && r.seqs[1].cn);
    REQUIRE(model_run(api_m[0], r.seqs, r.nseqs, 0, r.outputs) == BALSA_OK);
    size_t len;
    char *text = api_render_response(&r, "lm", api_models[0].info, &len);
    cJSON *root = cJSON_ParseWithLength(text, len);
    REQUIRE(root);
    const cJSON *states = cJSON_GetObjectItem(root, "states");
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(root, "outputs")) == 2);
    REQUIRE(cJSON_GetArraySize(states) == 2);
    for (int i = 0; i < 2; i++) {
        const cJSON *st = cJSON_GetArrayItem(states, i);
        for (int k = 0; k < 2; k++) {
            const cJSON *m = cJSON_GetObjectItem(st, k ? "c" : "h");
            const float *want = k ? r.seqs[i].cn : r.seqs[i].hn;
            REQUIRE(cJSON_GetArraySize(m) == 2);
            int bad = 0;
            for (int j = 0; j < 2; j++) {
                const cJSON *row = cJSON_GetArrayItem(m, j);
                bad |= cJSON_GetArraySize(row) != 16;
                for (int u = 0; u < 16 && !bad; u++) /* "%.9g" gives floats back exactly */
                    bad |= (float)cJSON_GetArrayItem(row, u)->valuedouble != want[j * 16 + u];
            }
            CHECK_MSG(!bad, "states[%d].%s differs from the engine's", i, k ? "c" : "h");
        }
    }
    cJSON_Delete(root);
    free(text);
    free(body);
    api_request_free(&r);
    /* without return_state the response has no "states" */
    root = api_run("{\"model\": \"lm\", \"inputs\": [[1]]}");
    REQUIRE(root);
    CHECK(!cJSON_GetObjectItem(root, "states"));
    cJSON_Delete(root);
    /* a bidirectional model's state: 2 vectors a layer; with generate too */
    body = body_of("{\"model\": \"bi\", \"inputs\": [[1]], \"initial_state\": "
                   "[{\"c\": %s, \"h\": %s}]}", mat(2, 10, 0), mat(2, 10, 1));
    REQUIRE(api_parse(body, &api_lim, &r, err, sizeof err) == 0);
    CHECK(r.state_size == 20 && r.seqs[0].h0[10] == (float)(1 + 0.1) && r.seqs[0].c0[0] == 0);
    api_request_free(&r);
    free(body);
    body = body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"generate\": 3, \"return_state\": "
                   "true, \"initial_state\": [{\"c\": %s, \"h\": %s}]}",
                   mat(2, 16, 0), mat(2, 16, 1));
    REQUIRE(api_parse(body, &api_lim, &r, err, sizeof err) == 0);
    CHECK(r.generate == 3 && r.seqs[0].h0 && r.return_state);
    api_request_free(&r);
    free(body);
}

/* Every mistake in the state fields: a 400 naming the field and the rule. */
TEST(api_refuses_bad_state)
{
    static const api_limits small = {1000, 100};
    struct {
        char *body;
        const char *want;
        const api_limits *lim;
    } bad[] = {
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"initial_state\": {}}"),
         "initial_state: must be an array with one entry per sequence", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1], [2]], \"initial_state\": [null]}"),
         "initial_state: 1 entries for 2 sequences", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"initial_state\": [7]}"),
         "initial_state[0]: must be null or an object", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"initial_state\": [{\"x\": 1}]}"),
         "initial_state[0].x: unknown field (expected h, c)", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1], [2]], \"initial_state\": [null, "
                 "{\"h\": %s}]}", mat(2, 16, 0)),
         "initial_state[1].c: required (give both h and c", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"initial_state\": [{\"h\": %s, "
                 "\"h\": %s}]}", mat(2, 16, 0), mat(2, 16, 0)),
         "initial_state[0].h: given twice", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"initial_state\": [{\"h\": 1, "
                 "\"c\": %s}]}", mat(2, 16, 0)),
         "initial_state[0].h: must be an array of 2 vectors of 16 numbers (num_layers 2 x "
         "directions 1, layer-major)", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"initial_state\": [{\"h\": %s, "
                 "\"c\": %s}]}", mat(2, 16, 0), mat(1, 16, 0)),
         "initial_state[0].c: must be an array of 2 vectors of 16 numbers (num_layers 2 x "
         "directions 1, layer-major), got 1 vectors", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"initial_state\": [{\"h\": [[%s], "
                 "[%s]], \"c\": %s}]}", nums(16, 0), nums(15, 0), mat(2, 16, 0)),
         "initial_state[0].h[1]: must be an array of 16 numbers (hidden_size)", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"initial_state\": [{\"h\": %s, "
                 "\"c\": [[0, 0, 0, \"1\"], []]}]}", mat(2, 16, 0)),
         "initial_state[0].c[0]: must be an array of 16 numbers", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"initial_state\": [{\"h\": %s, "
                 "\"c\": [[0, 0, 0, \"1\", %s], [%s]]}]}", mat(2, 16, 0), nums(12, 0),
                 nums(16, 0)),
         "initial_state[0].c[0][3]: must be a number", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"initial_state\": [{\"h\": [[1e39, "
                 "%s], [%s]], \"c\": %s}]}", nums(15, 0), nums(16, 0), mat(2, 16, 0)),
         "initial_state[0].h[0][0]: 1e+39 does not fit a float", NULL},
        {body_of("{\"model\": \"bi\", \"inputs\": [[1]], \"initial_state\": [{\"h\": %s, "
                 "\"c\": %s}]}", mat(1, 10, 0), mat(2, 10, 0)),
         "initial_state[0].h: must be an array of 2 vectors of 10 numbers (num_layers 1 x "
         "directions 2, layer-major, forward then reverse), got 1 vectors", NULL},
        {body_of("{\"model\": \"bi\", \"inputs\": [[1]], \"initial_state\": [{\"h\": %s, "
                 "\"c\": %s}]}", mat(2, 16, 0), mat(2, 10, 0)),
         "initial_state[0].h[0]: must be an array of 10 numbers (hidden_size)", NULL},
        {body_of("{\"model\": \"fc\", \"inputs\": [[1]], \"initial_state\": [null]}"),
         "initial_state: model \"fc\" has no LSTM, so no state", NULL},
        {body_of("{\"model\": \"fc\", \"inputs\": [[1]], \"return_state\": true}"),
         "return_state: model \"fc\" has no LSTM, so no state", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"return_state\": 1}"),
         "return_state: must be true or false", NULL},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1], [2]], \"return_state\": true}"),
         "inputs: the response would carry 168 values, more than the limit 100", &small},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        api_request r;
        char err[512] = "";
        int code = api_parse(bad[i].body, bad[i].lim ? bad[i].lim : &api_lim, &r, err,
                             sizeof err);
        CHECK_MSG(code == 400 && strstr(err, bad[i].want), "case %zu: %d %s", i, code, err);
        if (code == 0)
            api_request_free(&r);
        free(bad[i].body);
    }
    /* within the limit with return_state: 20 outputs + 2 x 32 state values */
    api_request r;
    char err[512];
    CHECK(api_parse("{\"model\": \"lm\", \"inputs\": [[1]], \"return_state\": true}", &small,
                    &r, err, sizeof err) == 0);
    api_request_free(&r);
}

/* Triton's sequence fields (api_parse_sequence): an id's two kinds (number, string) and
 * the flags land in the request; 0 and "" mean no sequence; a sequence request gets room
 * for its final state; every mistake is a 400 naming the field and the rule. */
TEST(api_parses_sequence)
{
    struct {
        const char *body, *key;
        int start, end;
    } good[] = {
        {"{\"model\": \"lm\", \"inputs\": [[1]], \"sequence_id\": 42, "
         "\"sequence_start\": true}", "n42", 1, 0},
        {"{\"model\": \"lm\", \"inputs\": [[1]], \"sequence_id\": 9007199254740992, "
         "\"sequence_end\": true}", "n9007199254740992", 0, 1},
        {"{\"model\": \"lm\", \"inputs\": [[1]], \"sequence_id\": \"a b/7\", "
         "\"sequence_start\": true, \"sequence_end\": true, \"initial_state\": [null]}",
         "sa b/7", 1, 1},
        {"{\"model\": \"lm\", \"inputs\": [[1], [2]], \"sequence_id\": 0, "
         "\"sequence_start\": false}", "", 0, 0},
        {"{\"model\": \"lm\", \"inputs\": [[1]], \"sequence_id\": \"\"}", "", 0, 0},
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        api_request r;
        char err[512] = "";
        int code = api_parse(good[i].body, &api_lim, &r, err, sizeof err);
        CHECK_MSG(code == 0, "good %zu: %d %s", i, code, err);
        if (code)
            continue;
        CHECK_MSG(strcmp(r.seq_key, good[i].key) == 0 && r.seq_start == good[i].start &&
                      r.seq_end == good[i].end,
                  "good %zu: key \"%s\" start %d end %d", i, r.seq_key, r.seq_start, r.seq_end);
        CHECK(api_alloc_outputs(&r, api_models[0].info) == 0);
        /* a sequence's final state has somewhere to go, for the server to keep */
        CHECK(!r.seq_key[0] || (r.state_size == 32 && r.seqs[0].hn && r.seqs[0].cn));
        api_request_free(&r);
    }
    /* a long string id is shown cut between characters: "a" and 49 two-byte characters */
    api_request shown_req = {.seq_key = "sa"};
    for (int i = 0; i < 49; i++)
        strcat(shown_req.seq_key, "\xc3\xa9");
    char shown[80];
    api_seq_shown(&shown_req, shown, sizeof shown);
    CHECK_MSG(strlen(shown) == 1 + 63 + 3 + 1 && strncmp(shown, "\"a\xc3\xa9", 4) == 0 &&
                  strcmp(shown + 62, "\xc3\xa9...\"") == 0,
              "%s", shown);
    char long_id[API_SEQ_ID_MAX + 2];
    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = 0;
    struct {
        char *body;
        const char *want;
    } bad[] = {
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"sequence_id\": 1.5}"),
         "sequence_id: must be an integer in [0, 2^53] or a string"},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"sequence_id\": 9007199254740994}"),
         "sequence_id: must be an integer in [0, 2^53] or a string"},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"sequence_id\": true}"),
         "sequence_id: must be an integer in [0, 2^53] or a string"},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"sequence_id\": \"%s\"}", long_id),
         "sequence_id: a string of at most 128 bytes"},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"sequence_id\": 3, "
                 "\"sequence_start\": \"yes\"}"),
         "sequence_start: must be true or false"},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"sequence_end\": true}"),
         "sequence_end: needs a sequence_id (not 0 or \"\")"},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"sequence_id\": 0, "
                 "\"sequence_start\": true}"),
         "sequence_start: needs a sequence_id"},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1], [2]], \"sequence_id\": 3}"),
         "sequence_id: a request of a sequence carries one sequence, got 2"},
        {body_of("{\"model\": \"bi\", \"inputs\": [[1]], \"sequence_id\": 3}"),
         "sequence_id: model \"bi\" is bidirectional"},
        {body_of("{\"model\": \"fc\", \"inputs\": [[1]], \"sequence_id\": 3}"),
         "sequence_id: model \"fc\" has no LSTM, so no state to keep"},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"sequence_id\": 3, "
                 "\"initial_state\": [null]}"),
         "initial_state: with sequence_id only on the sequence's first request"},
        {body_of("{\"model\": \"lm\", \"inputs\": [[1]], \"sequence\": 3}"),
         "sequence: unknown field (expected model, inputs,"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        api_request r;
        char err[512] = "";
        int code = api_parse(bad[i].body, &api_lim, &r, err, sizeof err);
        CHECK_MSG(code == 400 && strstr(err, bad[i].want), "bad %zu: %d %s", i, code, err);
        if (code == 0)
            api_request_free(&r);
        free(bad[i].body);
    }
}

/* A response's "states" entry, sent back as "initial_state" with the rest of the input,
 * continues the sequence: the outputs and the final state are those of the whole input
 * in one request (the state goes through JSON as "%.9g", which gives floats back exactly). */
TEST(api_continues_a_sequence)
{
    const char *toks = "3, 1, 4, 1, 5, 9, 2, 6, 5, 3";
    char *body = body_of("{\"model\": \"lm\", \"inputs\": [[%s]], \"output\": \"all\", "
                         "\"return_state\": true}", toks);
    cJSON *whole = api_run(body);
    free(body);
    REQUIRE(whole);
    body = body_of("{\"model\": \"lm\", \"inputs\": [[3, 1, 4, 1]], \"return_state\": true}");
    cJSON *first = api_run(body);
    free(body);
    REQUIRE(first);
    char *state = cJSON_PrintUnformatted(cJSON_GetArrayItem(cJSON_GetObjectItem(first, "states"), 0));
    REQUIRE(state);
    body = body_of("{\"model\": \"lm\", \"inputs\": [[5, 9, 2, 6, 5, 3]], \"output\": \"all\", "
                   "\"initial_state\": [%s], \"return_state\": true}", state);
    cJSON *second = api_run(body);
    free(body);
    free(state);
    REQUIRE(second);
    const cJSON *wo = cJSON_GetArrayItem(cJSON_GetObjectItem(whole, "outputs"), 0);
    const cJSON *so = cJSON_GetArrayItem(cJSON_GetObjectItem(second, "outputs"), 0);
    REQUIRE(cJSON_GetArraySize(wo) == 10 && cJSON_GetArraySize(so) == 6);
    double worst = 0;
    for (int t = 0; t < 6; t++) {
        const cJSON *a = cJSON_GetArrayItem(so, t), *b = cJSON_GetArrayItem(wo, 4 + t);
        for (int j = 0; j < cJSON_GetArraySize(b); j++)
            worst = fmax(worst, fabs(cJSON_GetArrayItem(a, j)->valuedouble -
                                     cJSON_GetArrayItem(b, j)->valuedouble));
    }
    const cJSON *ws = cJSON_GetArrayItem(cJSON_GetObjectItem(whole, "states"), 0);
    const cJSON *ss = cJSON_GetArrayItem(cJSON_GetObjectItem(second, "states"), 0);
    for (int k = 0; k < 2; k++)
        for (int l = 0; l < 2; l++)
            for (int u = 0; u < 16; u++) {
                const char *f = k ? "c" : "h";
                double a = cJSON_GetArrayItem(cJSON_GetArrayItem(cJSON_GetObjectItem(ss, f), l),
                                              u)->valuedouble;
                double b = cJSON_GetArrayItem(cJSON_GetArrayItem(cJSON_GetObjectItem(ws, f), l),
                                              u)->valuedouble;
                worst = fmax(worst, fabs(a - b));
            }
    CHECK_MSG(worst <= 1e-5, "two requests vs one: %g", worst);
    cJSON_Delete(whole);
    cJSON_Delete(first);
    cJSON_Delete(second);
}

/* The largest difference between two JSON arrays of numbers, nested alike (a mismatch in
 * shape counts as infinite). */
static double json_diff(const cJSON *a, const cJSON *b)
{
    if (cJSON_IsNumber(a) && cJSON_IsNumber(b))
        return fabs(a->valuedouble - b->valuedouble);
    if (!cJSON_IsArray(a) || !cJSON_IsArray(b) || cJSON_GetArraySize(a) != cJSON_GetArraySize(b))
        return INFINITY;
    double worst = 0;
    for (int i = 0; i < cJSON_GetArraySize(a); i++)
        worst = fmax(worst, json_diff(cJSON_GetArrayItem(a, i), cJSON_GetArrayItem(b, i)));
    return worst;
}

/* Through `balsa serve` (scheduler, step-level batches): a sequence sent in two requests,
 * the second with the first's returned state, gets the outputs and final state of the
 * whole sequence sent at once (alongside the first half, so that they share batches);
 * a bad state is a 400 naming the field. */
TEST(serve_continues_a_sequence)
{
    balsa_model *m = NULL;
    char err[256];
    REQUIRE(model_load(FORTUNES, be, &m, err, sizeof err) == BALSA_OK);
    const model_info *info = model_get_info(m);
    char whole[512], head[256] = "", tail[256] = "";
    for (int i = 0; i < 12; i++) {
        char *dst = i < 5 ? head : tail;
        snprintf(dst + strlen(dst), 256 - strlen(dst), "%s%d", i == 0 || i == 5 ? "" : ", ",
                 (i * 7 + 3) % info->vocab_size);
    }
    snprintf(whole, sizeof whole, "%s, %s", head, tail);
    const char *args[] = {"--model", "fortunes=" FORTUNES, NULL};
    su_server sv;
    REQUIRE(su_start(&sv, args) == 0);
    su_resp r;
    char *body = body_of("{\"inputs\": [[%s], [%s]], \"output\": \"all\", \"return_state\": true}",
                         head, whole);
    su_request(sv.port, "POST", "/infer", body, strlen(body), NULL, &r);
    free(body);
    CHECK_MSG(r.code == 200, "%ld %s", r.code, r.body);
    cJSON *a = cJSON_Parse(r.body);
    free(r.body);
    REQUIRE(a);
    const cJSON *states = cJSON_GetObjectItem(a, "states");
    REQUIRE(cJSON_GetArraySize(states) == 2);
    char *state = cJSON_PrintUnformatted(cJSON_GetArrayItem(states, 0));
    body = body_of("{\"inputs\": [[%s]], \"output\": \"all\", \"initial_state\": [%s], "
                   "\"return_state\": true}", tail, state);
    su_request(sv.port, "POST", "/infer", body, strlen(body), NULL, &r);
    free(body);
    free(state);
    CHECK_MSG(r.code == 200, "%ld %.300s", r.code, r.body);
    cJSON *b = cJSON_Parse(r.body);
    free(r.body);
    REQUIRE(b);
    const cJSON *wo = cJSON_GetArrayItem(cJSON_GetObjectItem(a, "outputs"), 1);
    const cJSON *bo = cJSON_GetArrayItem(cJSON_GetObjectItem(b, "outputs"), 0);
    REQUIRE(cJSON_GetArraySize(wo) == 12 && cJSON_GetArraySize(bo) == 7);
    double worst = 0;
    for (int t = 0; t < 7; t++)
        worst = fmax(worst, json_diff(cJSON_GetArrayItem(bo, t), cJSON_GetArrayItem(wo, 5 + t)));
    const cJSON *ws = cJSON_GetArrayItem(states, 1);
    const cJSON *bs = cJSON_GetArrayItem(cJSON_GetObjectItem(b, "states"), 0);
    for (int k = 0; k < 2; k++)
        worst = fmax(worst, json_diff(cJSON_GetObjectItem(bs, k ? "c" : "h"),
                                      cJSON_GetObjectItem(ws, k ? "c" : "h")));
    CHECK_MSG(worst <= 1e-5, "two requests vs one through the server: %g", worst);
    cJSON_Delete(a);
    cJSON_Delete(b);
    body = body_of("{\"inputs\": [[1], [2]], \"initial_state\": [null]}");
    su_request(sv.port, "POST", "/infer", body, strlen(body), NULL, &r);
    free(body);
    CHECK_MSG(r.code == 400 && strstr(r.body, "initial_state: 1 entries for 2 sequences"),
              "%ld %s", r.code, r.body);
    free(r.body);
    CHECK(su_stop(&sv, 20) == 0);
    model_free(m);
}

int main(void)
{
    if (su_main_init(&be))
        return 1;
    RUN(run_state_batch_independence);
    RUN(stream_state_matches_run);
    RUN(halves_equal_whole);
    RUN(generate_from_state);
    RUN(bad_state_refused);
    RUN(fused_step_reads_initial_state);
    RUN(scheduler_carries_state);
    api_setup();
    RUN(api_parses_state);
    RUN(api_refuses_bad_state);
    RUN(api_continues_a_sequence);
    RUN(api_parses_sequence);
    api_teardown();
    RUN(serve_continues_a_sequence);
    be->ops->destroy(be);
    curl_global_cleanup();
    HARNESS_END();
}
