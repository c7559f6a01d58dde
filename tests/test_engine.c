/* Tests of the engine: small cases checked by hand, model_run against an independent
 * double-precision reference (tests/engine_ref.h) on many network shapes, results that do
 * not depend on the rest of the batch, the model file round trip, sequence checks and
 * top-k. All on the CPU backend. */
#include <unistd.h>

#include "engine/exec.h"
#include "engine_ref.h"
#include "models/model_file.h"

static balsa_backend *be;

static model_spec spec_lstm(model_input_kind kind, int I, int H, int layers, int bidir)
{
    model_spec s;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "t");
    s.input_kind = kind;
    s.vocab_size = kind == MODEL_INPUT_TOKENS ? 23 : 0;
    s.input_size = I;
    s.hidden_size = H;
    s.num_layers = layers;
    s.bidirectional = bidir;
    s.lstm_bias = 1;
    return s;
}

/* One LSTM cell with hidden size 1, written out: the engine must give these numbers. */
TEST(hand_checked_lstm_cell)
{
    model_spec s = spec_lstm(MODEL_INPUT_VECTORS, 1, 1, 1, 0);
    float wih[4] = {0.5f, -0.25f, 1.0f, 0.75f}, whh[4] = {-0.5f, 0.25f, 0.5f, 1.0f};
    float bih[4] = {0.1f, 0.2f, -0.3f, 0.0f}, bhh[4] = {0.0f, 0.1f, 0.1f, -0.2f};
    model_host h;
    memset(&h, 0, sizeof h);
    h.w_ih[0][0] = (model_host_mat){0, {0}, wih, 4, 1};
    h.w_hh[0][0] = (model_host_mat){0, {0}, whh, 4, 1};
    h.b_ih[0][0] = bih;
    h.b_hh[0][0] = bhh;
    balsa_model *m;
    char err[256];
    REQUIRE(model_build(&s, &h, be, &m, err, sizeof err) == BALSA_OK);
    float x[3] = {1.0f, -2.0f, 0.5f};
    engine_seq q = {.features = x, .len = 3};
    float out[3];
    float *outs[1] = {out};
    REQUIRE(model_run(m, &q, 1, 1, outs) == BALSA_OK);
    double hp = 0, c = 0;
    for (int t = 0; t < 3; t++) {
        double i = 1 / (1 + exp(-(0.5 * x[t] + 0.1 - 0.5 * hp + 0.0)));
        double f = 1 / (1 + exp(-(-0.25 * x[t] + 0.2 + 0.25 * hp + 0.1)));
        double g = tanh(1.0 * x[t] - 0.3 + 0.5 * hp + 0.1);
        double o = 1 / (1 + exp(-(0.75 * x[t] + 0.0 + 1.0 * hp - 0.2)));
        c = f * c + i * g;
        hp = o * tanh(c);
        CHECK_MSG(fabs(out[t] - hp) < 1e-6, "step %d: %.9f vs %.9f", t, out[t], hp);
    }
    float last[1];
    float *lasts[1] = {last};
    REQUIRE(model_run(m, &q, 1, 0, lasts) == BALSA_OK);
    CHECK(last[0] == out[2]);
    model_free(m);
}

/* An FC layer and softmax with numbers small enough to work out on paper. */
TEST(hand_checked_fc_softmax)
{
    model_spec s;
    memset(&s, 0, sizeof s);
    s.input_kind = MODEL_INPUT_VECTORS;
    s.input_size = 2;
    s.n_fc = 1;
    s.fc[0] = (model_fc_spec){3, BALSA_ACT_NONE, 1};
    s.head = MODEL_HEAD_SOFTMAX;
    float w[6] = {1, 0, 0, 1, 1, 1}, b[3] = {0, 0, -1};
    model_host h;
    memset(&h, 0, sizeof h);
    h.fc_w[0] = (model_host_mat){0, {0}, w, 3, 2};
    h.fc_b[0] = b;
    balsa_model *m;
    char err[256];
    REQUIRE(model_build(&s, &h, be, &m, err, sizeof err) == BALSA_OK);
    float x[2] = {1, 2};
    engine_seq q = {.features = x, .len = 1};
    float out[3];
    float *outs[1] = {out};
    REQUIRE(model_run(m, &q, 1, 0, outs) == BALSA_OK);
    /* logits 1, 2, 2 */
    double z = exp(1) + 2 * exp(2);
    CHECK(fabs(out[0] - exp(1) / z) < 1e-6);
    CHECK(fabs(out[1] - exp(2) / z) < 1e-6);
    CHECK(fabs(out[2] - exp(2) / z) < 1e-6);
    CHECK(model_get_info(m)->output_size == 3 && model_get_info(m)->hidden_size == 0);
    model_free(m);
}

typedef struct {
    model_input_kind kind;
    int I, H, layers, bidir, k, nfc;
    balsa_act act0;
    model_head head;
    int fc0_out; /* the first FC layer's width */
} net_case;

static model_spec spec_of(const net_case *c)
{
    model_spec s = spec_lstm(c->kind, c->I, c->H, c->layers, c->bidir);
    if (c->H == 0)
        s.lstm_bias = 0;
    s.n_fc = c->nfc;
    if (c->nfc > 0)
        s.fc[0] = (model_fc_spec){c->fc0_out, c->act0, 1};
    if (c->nfc > 1)
        s.fc[1] = (model_fc_spec){7, BALSA_ACT_NONE, 0};
    s.head = c->head;
    return s;
}

/* Fills h with ref_random_host's weights for s (bank 8, k, scale 0.5, seed) and builds
 * them on backend b: the model (the caller frees it and h), or NULL after printing why. */
static balsa_model *random_model(const model_spec *s, model_host *h, int k,
                                 unsigned long long seed, balsa_backend *b)
{
    ref_random_host(s, h, 8, k, 0.5f, seed);
    balsa_model *m;
    char err[256];
    if (model_build(s, h, b, &m, err, sizeof err) != BALSA_OK) {
        printf("  model_build: %s\n", err);
        return NULL;
    }
    return m;
}

static const net_case cases[] = {
    {MODEL_INPUT_VECTORS, 19, 37, 1, 0, 0, 0, BALSA_ACT_NONE, MODEL_HEAD_NONE, 13},
    {MODEL_INPUT_VECTORS, 19, 37, 2, 0, 3, 1, BALSA_ACT_RELU, MODEL_HEAD_SOFTMAX, 13},
    {MODEL_INPUT_TOKENS, 8, 16, 1, 1, 0, 1, BALSA_ACT_TANH, MODEL_HEAD_LOG_SOFTMAX, 13},
    {MODEL_INPUT_TOKENS, 9, 21, 2, 1, 2, 2, BALSA_ACT_SIGMOID, MODEL_HEAD_NONE, 13},
    /* an FC output of 128 wide with no head: the answer's rows, not padded */
    {MODEL_INPUT_VECTORS, 5, 33, 3, 1, 1, 1, BALSA_ACT_NONE, MODEL_HEAD_NONE, 128},
    {MODEL_INPUT_TOKENS, 12, 0, 0, 0, 2, 2, BALSA_ACT_RELU, MODEL_HEAD_SOFTMAX, 13},
    /* hidden 32: gate rows of 4H = 128 floats, which the engine pads (padded_stride), as
     * it does FC outputs of 128 and 256 that another layer or the head reads */
    {MODEL_INPUT_VECTORS, 11, 32, 2, 0, 2, 2, BALSA_ACT_RELU, MODEL_HEAD_SOFTMAX, 128},
    {MODEL_INPUT_TOKENS, 6, 32, 1, 1, 3, 1, BALSA_ACT_NONE, MODEL_HEAD_LOG_SOFTMAX, 256},
};

/* Runs a random batch through the engine and the reference; returns the worst error. */
static double run_vs_ref(balsa_model *m, const model_spec *s, const model_host *h, int n,
                         int maxlen, int equal, int all, unsigned long long seed)
{
    ref_seq rs[16];
    engine_seq q[16];
    float *outs[16];
    int O = model_spec_output_size(s);
    for (int i = 0; i < n; i++) {
        ref_make_seq(s, &rs[i], equal ? maxlen : 1 + (int)(h_rand_u64(&seed) % maxlen), &seed);
        q[i] = rs[i].seq;
        outs[i] = malloc(sizeof(float) * q[i].len * O);
    }
    double worst = 0;
    if (model_run(m, q, n, all, outs) != BALSA_OK)
        worst = INFINITY;
    for (int i = 0; i < n && worst < INFINITY; i++) {
        int rows = all ? q[i].len : 1;
        double *want = malloc(sizeof(double) * rows * O);
        ref_forward(s, h, &q[i], all, want);
        double e = h_max_rel_err(outs[i], want, (size_t)rows * O, 1e-3);
        worst = e > worst ? e : worst;
        free(want);
    }
    for (int i = 0; i < n; i++) {
        ref_free_seq(&rs[i]);
        free(outs[i]);
    }
    return worst;
}

TEST(matches_reference)
{
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        model_spec s = spec_of(&cases[c]);
        model_host h;
        balsa_model *m = random_model(&s, &h, cases[c].k, 100 + c, be);
        CHECK_MSG(m, "case %zu", c);
        if (!m) {
            model_host_free(&h);
            continue;
        }
        for (int all = 0; all < 2; all++)
            for (int trial = 0; trial < 4; trial++) {
                /* batches of 1, 5 and 9 mixed lengths, and 6 of one length */
                int n = trial < 3 ? 1 + trial * 4 : 6;
                double e = run_vs_ref(m, &s, &h, n, 12, trial == 3, all, 7 * c + trial + 31 * all);
                CHECK_MSG(e < 1e-4, "case %zu all %d batch %d: rel err %g", c, all, n, e);
            }
        model_free(m);
        model_host_free(&h);
    }
}

/* A sequence's output must not depend on what else is in the batch: to 1e-5, relative
 * above 1 and absolute below (the dense path may use sgemv alone and sgemm in a batch,
 * which round differently). */
static void check_batch_independence(const net_case *c, int all)
{
    model_spec s = spec_of(c);
    model_host h;
    balsa_model *m = random_model(&s, &h, c->k, 77, be);
    REQUIRE(m);
    enum { N = 64 };
    ref_seq rs[N];
    engine_seq q[N];
    float *together[N], *alone[N];
    unsigned long long rng = 5;
    int O = model_spec_output_size(&s);
    for (int i = 0; i < N; i++) {
        ref_make_seq(&s, &rs[i], 1 + (int)(h_rand_u64(&rng) % 20), &rng);
        q[i] = rs[i].seq;
        together[i] = malloc(sizeof(float) * q[i].len * O);
        alone[i] = malloc(sizeof(float) * q[i].len * O);
    }
    REQUIRE(model_run(m, q, N, all, together) == BALSA_OK);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        CHECK(model_run(m, &q[i], 1, all, &alone[i]) == BALSA_OK);
        double e = h_max_rel_err_ff(together[i], alone[i], (size_t)(all ? q[i].len : 1) * O);
        worst = e > worst ? e : worst;
    }
    CHECK_MSG(worst <= 1e-5, "bidir %d sparse %d all %d: batch of 64 vs alone: %g", c->bidir,
              c->k > 0, all, worst);
    for (int i = 0; i < N; i++) {
        ref_free_seq(&rs[i]);
        free(together[i]);
        free(alone[i]);
    }
    model_free(m);
    model_host_free(&h);
}

TEST(batch_independence)
{
    for (int all = 0; all < 2; all++) {
        check_batch_independence(&cases[1], all); /* sparse, 2 layers */
        check_batch_independence(&cases[0], all); /* dense: sgemv alone vs sgemm in batch */
        check_batch_independence(&cases[3], all); /* bidirectional */
    }
}

/* Writing a model and loading it back gives the same network, bit for bit. */
TEST(file_round_trip)
{
    char dir[] = "/tmp/balsa_engine_XXXXXX";
    REQUIRE(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    model_spec s = spec_of(&cases[3]);
    model_host h;
    ref_random_host(&s, &h, 8, 2, 0.5f, 3);
    h.w_hh[1][1].dense = ref_dense(&h.w_hh[1][1]); /* one matrix dense, the rest sparse */
    h.w_hh[1][1].sparse = 0;
    bsmat_free(&h.w_hh[1][1].sp);
    char err[256];
    REQUIRE(model_file_write(path, &s, &h, err, sizeof err) == BALSA_OK);
    balsa_model *a, *b;
    REQUIRE(model_build(&s, &h, be, &a, err, sizeof err) == BALSA_OK);
    balsa_status st = model_load(path, be, &b, err, sizeof err);
    CHECK_MSG(st == BALSA_OK, "%s", err);
    if (st == BALSA_OK) {
        const model_info *ia = model_get_info(a), *ib = model_get_info(b);
        CHECK(ia->params_dense == ib->params_dense && ia->params_stored == ib->params_stored);
        CHECK(ia->weight_bytes == ib->weight_bytes && ia->bank == 8);
        CHECK(strcmp(ib->name, "t") == 0 && ib->bidirectional == 1 && ib->num_layers == 2);
        CHECK(ib->output_size == 7 && ib->vocab_size == 23);
        unsigned long long rng = 9;
        ref_seq r;
        ref_make_seq(&s, &r, 11, &rng);
        float oa[7 * 11], ob[7 * 11];
        float *pa[1] = {oa}, *pb[1] = {ob};
        CHECK(model_run(a, &r.seq, 1, 1, pa) == BALSA_OK);
        CHECK(model_run(b, &r.seq, 1, 1, pb) == BALSA_OK);
        CHECK(memcmp(oa, ob, sizeof oa) == 0);
        ref_free_seq(&r);
        model_free(b);
    }
    model_free(a);
    model_host_free(&h);
    unlink(path);
    rmdir(dir);
}

TEST(info_counts_weights)
{
    model_spec s = spec_lstm(MODEL_INPUT_VECTORS, 10, 8, 1, 0);
    s.n_fc = 1;
    s.fc[0] = (model_fc_spec){5, BALSA_ACT_NONE, 1};
    model_host h;
    balsa_model *m = random_model(&s, &h, 2, 1, be);
    REQUIRE(m);
    const model_info *in = model_get_info(m);
    /* W_ih 32x10 (2 banks of 8), W_hh 32x8, fc 5x8; biases 32+32+5 */
    CHECK(in->params_dense == 320 + 256 + 40 + 69);
    CHECK(in->params_stored == 32 * 2 * 2 + 32 * 1 * 2 + 5 * 1 * 2 + 69);
    CHECK(fabs(in->sparsity - 0.75) < 1e-9);
    CHECK(in->bank == 8 && in->output_size == 5 && in->input_size == 10);
    model_free(m);
    model_host_free(&h);
}

TEST(check_seq_refuses_bad_input)
{
    model_spec s = spec_lstm(MODEL_INPUT_TOKENS, 4, 4, 1, 0);
    model_host h;
    balsa_model *m = random_model(&s, &h, 0, 1, be);
    REQUIRE(m);
    char err[256];
    int32_t ok[3] = {0, 22, 5}, neg[2] = {1, -1}, big[2] = {23, 1};
    engine_seq q = {.tokens = ok, .len = 3};
    CHECK(model_check_seq(m, &q, err, sizeof err) == BALSA_OK);
    q.len = 0;
    CHECK(model_check_seq(m, &q, err, sizeof err) == BALSA_ERR_INVALID && strstr(err, "length"));
    q = (engine_seq){.tokens = neg, .len = 2};
    CHECK(model_check_seq(m, &q, err, sizeof err) == BALSA_ERR_INVALID && strstr(err, "-1"));
    q = (engine_seq){.tokens = big, .len = 2};
    CHECK(model_check_seq(m, &q, err, sizeof err) == BALSA_ERR_INVALID && strstr(err, "23"));
    float f[4] = {0};
    q = (engine_seq){.features = f, .len = 1};
    CHECK(model_check_seq(m, &q, err, sizeof err) == BALSA_ERR_INVALID && strstr(err, "token"));
    float out[4];
    float *outs[1] = {out};
    q = (engine_seq){.tokens = big, .len = 2};
    CHECK(model_run(m, &q, 1, 0, outs) == BALSA_ERR_INVALID);
    model_free(m);
    model_host_free(&h);

    s = spec_lstm(MODEL_INPUT_VECTORS, 2, 4, 1, 0);
    m = random_model(&s, &h, 0, 1, be);
    REQUIRE(m);
    float x[4] = {1, 2, NAN, 4};
    q = (engine_seq){.features = x, .len = 2};
    CHECK(model_check_seq(m, &q, err, sizeof err) == BALSA_ERR_INVALID &&
          strstr(err, "not finite"));
    x[2] = 3;
    CHECK(model_check_seq(m, &q, err, sizeof err) == BALSA_OK);
    model_free(m);
    model_host_free(&h);
}

TEST(build_refuses_mismatched_weights)
{
    model_spec s = spec_lstm(MODEL_INPUT_VECTORS, 3, 4, 1, 0);
    model_host h;
    ref_random_host(&s, &h, 8, 0, 0.5f, 1);
    h.w_hh[0][0].cols = 5;
    balsa_model *m;
    char err[256];
    CHECK(model_build(&s, &h, be, &m, err, sizeof err) == BALSA_ERR_FORMAT && !m);
    CHECK(strstr(err, "lstm.weight_hh_l0") != NULL);
    h.w_hh[0][0].cols = 4;
    h.b_ih[0][0][3] = INFINITY;
    CHECK(model_build(&s, &h, be, &m, err, sizeof err) == BALSA_ERR_FORMAT);
    CHECK(strstr(err, "lstm.bias_ih_l0") && strstr(err, "finite"));
    model_host_free(&h);
}

TEST(topk)
{
    float v[7] = {0.1f, 0.5f, -1.0f, 0.5f, 2.0f, 0.0f, 0.5f};
    int idx[7];
    float val[7];
    engine_topk(v, 7, 3, idx, val);
    CHECK(idx[0] == 4 && idx[1] == 1 && idx[2] == 3);
    CHECK(val[0] == 2.0f && val[1] == 0.5f && val[2] == 0.5f);
    engine_topk(v, 7, 10, idx, val); /* k > n: all of them, sorted */
    int want[7] = {4, 1, 3, 6, 0, 5, 2};
    for (int i = 0; i < 7; i++)
        CHECK(idx[i] == want[i]);
    engine_topk(v, 7, 1, idx, val);
    CHECK(idx[0] == 4);
    idx[0] = -7;
    engine_topk(v, 7, 0, idx, val);
    CHECK(idx[0] == -7);
    float w[4] = {NAN, 1.0f, NAN, -3.0f}; /* NaN ranks last, whatever the order */
    engine_topk(w, 4, 3, idx, val);
    CHECK(idx[0] == 1 && idx[1] == 3 && idx[2] == 0);
}

/* Feeds n random sequences through a stream of max_slots, adding a random number of them
 * between steps (so sequences join mid-flight), and compares every output with model_run
 * on the sequence alone. */
static void check_stream(const net_case *c, int max_slots, int n, unsigned long long seed)
{
    model_spec s = spec_of(c);
    model_host h;
    balsa_model *m = random_model(&s, &h, c->k, seed, be);
    REQUIRE(m);
    model_stream *st;
    REQUIRE(model_stream_create(m, max_slots, &st) == BALSA_OK);
    CHECK(model_stream_free_slots(st) == max_slots && model_stream_active(st) == 0);
    int O = model_spec_output_size(&s);
    ref_seq *rs = calloc(n, sizeof *rs);
    float **got = calloc(n, sizeof *got), **want = calloc(n, sizeof *want);
    int *all = calloc(n, sizeof *all), *finished = calloc(n, sizeof *finished);
    void **done = calloc(max_slots, sizeof *done);
    unsigned long long rng = seed;
    for (int i = 0; i < n; i++) {
        ref_make_seq(&s, &rs[i], 1 + (int)(h_rand_u64(&rng) % 25), &rng);
        all[i] = (int)(h_rand_u64(&rng) % 2);
        got[i] = calloc((size_t)rs[i].seq.len * O, sizeof(float));
        want[i] = calloc((size_t)rs[i].seq.len * O, sizeof(float));
        CHECK(model_run(m, &rs[i].seq, 1, all[i], &want[i]) == BALSA_OK);
    }
    int next = 0, ndone_total = 0, steps = 0;
    while (ndone_total < n && steps < 10000) {
        int add = (int)(h_rand_u64(&rng) % 4);
        while (add-- > 0 && next < n && model_stream_free_slots(st) > 0) {
            /* the stream must keep its own copy: add a scratch copy, then spoil it */
            ref_seq copy;
            ref_make_seq(&s, &copy, rs[next].seq.len, &rng);
            if (copy.tok)
                memcpy(copy.tok, rs[next].tok, sizeof(int32_t) * copy.seq.len);
            else
                memcpy(copy.feat, rs[next].feat, sizeof(float) * copy.seq.len * s.input_size);
            CHECK(model_stream_add(st, &copy.seq, all[next], got[next], &rs[next]) == BALSA_OK);
            if (copy.tok)
                memset(copy.tok, 0, sizeof(int32_t) * copy.seq.len);
            else
                memset(copy.feat, 0, sizeof(float) * copy.seq.len * s.input_size);
            ref_free_seq(&copy);
            next++;
        }
        if (next < n && model_stream_free_slots(st) == 0)
            CHECK(model_stream_add(st, &rs[next].seq, 0, got[next], NULL) == BALSA_ERR_FULL);
        int nd = -1;
        CHECK(model_stream_step(st, done, &nd) == BALSA_OK);
        steps++;
        for (int d = 0; d < nd; d++) {
            int i = (int)((ref_seq *)done[d] - rs);
            CHECK(i >= 0 && i < n && !finished[i]);
            if (i >= 0 && i < n)
                finished[i] = 1;
        }
        ndone_total += nd > 0 ? nd : 0;
        if (nd < 0)
            break;
    }
    CHECK(ndone_total == n && model_stream_active(st) == 0);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double e = h_max_rel_err_ff(got[i], want[i], (size_t)(all[i] ? rs[i].seq.len : 1) * O);
        worst = e > worst ? e : worst;
    }
    CHECK_MSG(worst <= 1e-5, "stream vs model_run (bidir %d, %d slots): %g", c->bidir,
              max_slots, worst);
    for (int i = 0; i < n; i++) {
        ref_free_seq(&rs[i]);
        free(got[i]);
        free(want[i]);
    }
    free(rs);
    free(got);
    free(want);
    free(all);
    free(finished);
    free(done);
    model_stream_free(st);
    model_free(m);
    model_host_free(&h);
}

TEST(stream_matches_run)
{
    check_stream(&cases[1], 8, 40, 11);  /* sparse, 2 layers, FC + softmax */
    check_stream(&cases[0], 5, 30, 12);  /* dense, no FC */
    check_stream(&cases[1], 1, 6, 13);   /* one slot at a time */
    check_stream(&cases[3], 4, 12, 14);  /* bidirectional: whole sequences */
    check_stream(&cases[5], 3, 9, 15);   /* no LSTM: whole sequences */
    check_stream(&cases[6], 6, 24, 16);  /* padded gate rows, projected a chunk ahead */
    /* hidden 33 with banks of 8 and k 3: W_ih's last bank has one real column, so two of
     * its weights (zeros) point into the gap the stream's h rows leave before layer 1 */
    net_case gap = cases[1];
    gap.H = 33;
    check_stream(&gap, 6, 20, 17);
}

/* The stream's joined [W_ih | W_hh] products (exec.h, lstm_dir_w.w_cat) exist for the
 * sparse layers above the first: hidden 32 with banks of 8 (cases[6]) and hidden 37, whose
 * W_ih leaves a gap of 3 columns in its last bank (cases[1]; stream_matches_run runs both
 * through them); not for dense layers, not for the first layer, not for the same network
 * made bidirectional (the stream runs those whole). Where they are, the stream's h rows
 * leave the gap: layer 1 starts at W_ih's padded width. */
TEST(stream_joins_products_where_banks_allow)
{
    net_case dense = cases[0], bidir = cases[6];
    dense.layers = 2;
    bidir.bidir = 1;
    const net_case *want[] = {&cases[1], &cases[6], &dense, &bidir};
    const int joined[] = {1, 1, 0, 0}, h1[] = {40, 32, 37, 32};
    for (int i = 0; i < 4; i++) {
        model_spec s = spec_of(want[i]);
        model_host h;
        balsa_model *m = random_model(&s, &h, want[i]->k, 70 + i, be);
        REQUIRE(m);
        CHECK(m->lstm[0][0].w_cat == NULL && m->lstm[0][1].w_cat == NULL);
        CHECK_MSG((m->lstm[1][0].w_cat != NULL) == joined[i], "case %d: w_cat %p", i,
                  (void *)m->lstm[1][0].w_cat);
        CHECK_MSG(m->h_off[0] == 0 && m->h_off[1] == h1[i] && m->h_ld == h1[i] + want[i]->H,
                  "case %d: h_off %d, %d, h_ld %d", i, m->h_off[0], m->h_off[1], m->h_ld);
        model_free(m);
        model_host_free(&h);
    }
}

/* A sequence longer than the projection chunk (64 steps) in the stream. */
TEST(stream_long_sequence)
{
    model_spec s = spec_of(&cases[1]);
    model_host h;
    balsa_model *m = random_model(&s, &h, 3, 21, be);
    REQUIRE(m);
    model_stream *st;
    REQUIRE(model_stream_create(m, 2, &st) == BALSA_OK);
    unsigned long long rng = 4;
    ref_seq a, b;
    ref_make_seq(&s, &a, 150, &rng);
    ref_make_seq(&s, &b, 70, &rng);
    int O = model_spec_output_size(&s);
    float *ga = malloc(sizeof(float) * 150 * O), *wa = malloc(sizeof(float) * 150 * O);
    float gb[16], wb[16];
    CHECK(model_run(m, &a.seq, 1, 1, &wa) == BALSA_OK);
    float *pb = wb;
    CHECK(model_run(m, &b.seq, 1, 0, &pb) == BALSA_OK);
    CHECK(model_stream_add(st, &a.seq, 1, ga, &a) == BALSA_OK);
    void *done[2];
    int nd, got_a = 0, got_b = 0;
    for (int step = 0; step < 150; step++) {
        if (step == 40)
            CHECK(model_stream_add(st, &b.seq, 0, gb, &b) == BALSA_OK);
        CHECK(model_stream_step(st, done, &nd) == BALSA_OK);
        for (int d = 0; d < nd; d++) {
            got_a += done[d] == &a && step == 149;
            got_b += done[d] == &b && step == 40 + 69;
        }
    }
    CHECK(got_a == 1 && got_b == 1);
    CHECK(h_max_rel_err_ff(ga, wa, (size_t)150 * O) <= 1e-5);
    CHECK(h_max_rel_err_ff(gb, wb, O) <= 1e-5);
    free(ga);
    free(wa);
    ref_free_seq(&a);
    ref_free_seq(&b);
    model_stream_free(st);
    model_free(m);
    model_host_free(&h);
}

/* One slot reused by sequences of 3, 100 (past the 64-step projection chunk, so the
 * slot's kept input copy must grow) and 2 steps: the stream keeps a slot's buffers
 * between sequences, and each answer must still match model_run's. */
TEST(stream_reuses_slot_buffers)
{
    model_spec s = spec_of(&cases[1]);
    model_host h;
    balsa_model *m = random_model(&s, &h, 3, 31, be);
    REQUIRE(m);
    model_stream *st;
    REQUIRE(model_stream_create(m, 1, &st) == BALSA_OK);
    int O = model_spec_output_size(&s);
    const int lens[3] = {3, 100, 2};
    unsigned long long rng = 9;
    for (int i = 0; i < 3; i++) {
        ref_seq q;
        ref_make_seq(&s, &q, lens[i], &rng);
        float *got = calloc((size_t)O, sizeof(float)), *want = calloc((size_t)O, sizeof(float));
        REQUIRE(got && want);
        CHECK(model_run(m, &q.seq, 1, 0, &want) == BALSA_OK);
        CHECK(model_stream_add(st, &q.seq, 0, got, &q) == BALSA_OK);
        void *done[1];
        int nd = 0, steps = 0, finished = 0;
        while (model_stream_active(st) > 0 && steps < 200) {
            CHECK(model_stream_step(st, done, &nd) == BALSA_OK);
            steps++;
            finished += nd == 1 && done[0] == &q;
        }
        CHECK(finished == 1 && steps == lens[i]);
        CHECK_MSG(h_max_rel_err_ff(got, want, O) <= 1e-5, "sequence %d (%d steps)", i, lens[i]);
        free(got);
        free(want);
        ref_free_seq(&q);
    }
    model_stream_free(st);
    model_free(m);
    model_host_free(&h);
}

/* Test backends that wrap the CPU one: every op forwards to `be` (a backend keeps private
 * state behind its public struct, so the wrapper passes `be`, never itself), and a test
 * replaces the ops it wants to watch or break. */
static void *fwd_alloc(balsa_backend *b, size_t n)
{
    (void)b;
    return be->ops->alloc(be, n);
}
static void fwd_free(balsa_backend *b, void *p)
{
    (void)b;
    be->ops->free(be, p);
}
static balsa_status fwd_to_device(balsa_backend *b, void *d, const void *s, size_t n)
{
    (void)b;
    return be->ops->to_device(be, d, s, n);
}
static balsa_status fwd_to_host(balsa_backend *b, void *d, const void *s, size_t n)
{
    (void)b;
    return be->ops->to_host(be, d, s, n);
}
static balsa_status fwd_upload_sparse(balsa_backend *b, const bsmat *w, balsa_mat **out)
{
    (void)b;
    return be->ops->upload_sparse(be, w, out);
}
static balsa_status fwd_upload_dense(balsa_backend *b, const float *w, int r, int c,
                                     balsa_mat **out)
{
    (void)b;
    return be->ops->upload_dense(be, w, r, c, out);
}
static void fwd_mat_free(balsa_backend *b, balsa_mat *m)
{
    (void)b;
    be->ops->mat_free(be, m);
}
static balsa_status fwd_matmul(balsa_backend *b, const balsa_mat *w, const float *x, int ldx,
                               int n, const float *bias, int acc, balsa_act act, float *y,
                               int ldy)
{
    (void)b;
    return be->ops->matmul(be, w, x, ldx, n, bias, acc, act, y, ldy);
}
static balsa_status fwd_lstm_cell(balsa_backend *b, const float *g, int ldg, float *c, float *h,
                                  int ldh, int n, int hidden)
{
    (void)b;
    return be->ops->lstm_cell(be, g, ldg, c, h, ldh, n, hidden);
}
static balsa_status fwd_softmax(balsa_backend *b, const float *x, int ldx, int n, int cols,
                                int take_log, float *y, int ldy)
{
    (void)b;
    return be->ops->softmax(be, x, ldx, n, cols, take_log, y, ldy);
}
static balsa_status fwd_synchronize(balsa_backend *b)
{
    (void)b;
    return be->ops->synchronize(be);
}

static const balsa_backend_ops fwd_ops = {
    .name = "forwarding",
    .alloc = fwd_alloc,
    .free = fwd_free,
    .to_device = fwd_to_device,
    .to_host = fwd_to_host,
    .upload_sparse = fwd_upload_sparse,
    .upload_dense = fwd_upload_dense,
    .mat_free = fwd_mat_free,
    .matmul = fwd_matmul,
    .lstm_cell = fwd_lstm_cell,
    .softmax = fwd_softmax,
    .synchronize = fwd_synchronize,
};

/* A backend whose matmul fails on demand: errors must come back as statuses, and a
 * failed stream step must hand back every active tag and leave the stream usable. */
static balsa_backend_ops failing_ops;
static int fail_countdown = -1;

static balsa_status failing_matmul(balsa_backend *b, const balsa_mat *w, const float *x, int ldx,
                                   int n, const float *bias, int acc, balsa_act act, float *y,
                                   int ldy)
{
    if (fail_countdown >= 0 && fail_countdown-- == 0)
        return BALSA_ERR_DEVICE;
    return fwd_matmul(b, w, x, ldx, n, bias, acc, act, y, ldy);
}

TEST(errors_reach_the_caller)
{
    failing_ops = fwd_ops;
    failing_ops.matmul = failing_matmul;
    balsa_backend fb = {.ops = &failing_ops, .threads = 1};
    model_spec s = spec_of(&cases[1]);
    model_host h;
    balsa_model *m = random_model(&s, &h, 3, 8, &fb);
    REQUIRE(m);
    unsigned long long rng = 3;
    ref_seq r[3];
    float out[3][25 * 16];
    for (int i = 0; i < 3; i++)
        ref_make_seq(&s, &r[i], 5 + 5 * i, &rng);
    float *outs[1] = {out[0]};
    fail_countdown = 3;
    CHECK(model_run(m, &r[0].seq, 1, 1, outs) == BALSA_ERR_DEVICE);
    CHECK(model_run(m, &r[0].seq, 1, 1, outs) == BALSA_OK);

    model_stream *st;
    REQUIRE(model_stream_create(m, 4, &st) == BALSA_OK);
    void *done[4];
    int nd;
    for (int i = 0; i < 3; i++)
        CHECK(model_stream_add(st, &r[i].seq, i % 2, out[i], &r[i]) == BALSA_OK);
    CHECK(model_stream_step(st, done, &nd) == BALSA_OK && nd == 0);
    fail_countdown = 2;
    CHECK(model_stream_step(st, done, &nd) == BALSA_ERR_DEVICE);
    CHECK(nd == 3 && model_stream_active(st) == 0 && model_stream_free_slots(st) == 4);
    int seen = 0;
    for (int i = 0; i < nd; i++)
        for (int j = 0; j < 3; j++)
            seen |= (done[i] == &r[j]) << j;
    CHECK(seen == 7);
    CHECK(model_stream_add(st, &r[0].seq, 0, out[0], &r[0]) == BALSA_OK);
    int steps = 0;
    nd = 0;
    while (nd == 0 && steps++ < 10)
        CHECK(model_stream_step(st, done, &nd) == BALSA_OK);
    CHECK(nd == 1 && done[0] == &r[0] && steps == 5);
    model_stream_free(st);
    for (int i = 0; i < 3; i++)
        ref_free_seq(&r[i]);
    model_free(m);
    model_host_free(&h);
    fail_countdown = -1;
}

/* A backend that offers the optional fused lstm_step (as the CUDA backend does): the
 * engine must use it for every recurrent step of model_run, uni- and bidirectional, with
 * mixed and equal lengths, and still match the reference. Here the fused op is the
 * product and the cell in sequence, counted. */
static balsa_backend_ops fused_ops;
static int fused_calls;

static balsa_status counting_lstm_step(balsa_backend *b, const balsa_mat *w_hh,
                                       const float *h_prev, int ldhp, float *gates, int ldg,
                                       float *c, float *h, int ldh, int n, int hidden)
{
    fused_calls++;
    CHECK(h_prev != h);
    balsa_status st = fwd_matmul(b, w_hh, h_prev, ldhp, n, NULL, 1, BALSA_ACT_NONE, gates, ldg);
    return st == BALSA_OK ? fwd_lstm_cell(b, gates, ldg, c, h, ldh, n, hidden) : st;
}

TEST(fused_lstm_step_is_used)
{
    fused_ops = fwd_ops;
    fused_ops.lstm_step = counting_lstm_step;
    balsa_backend fb = {.ops = &fused_ops, .threads = 1};
    for (size_t c = 0; c < 4; c++) {
        model_spec s = spec_of(&cases[c]);
        model_host h;
        balsa_model *m = random_model(&s, &h, cases[c].k, 500 + c, &fb);
        REQUIRE(m);
        for (int equal = 0; equal < 2; equal++) {
            fused_calls = 0;
            double e = run_vs_ref(m, &s, &h, 5, 9, equal, 1, 40 + c + equal);
            CHECK_MSG(e < 1e-4, "case %zu, equal lengths %d: error %g", c, equal, e);
            CHECK_MSG(fused_calls > 0, "case %zu: lstm_step never called", c);
        }
        model_free(m);
        model_host_free(&h);
    }
}

int main(void)
{
    if (balsa_backend_cpu_create(1, &be) != BALSA_OK)
        return 1;
    RUN(hand_checked_lstm_cell);
    RUN(hand_checked_fc_softmax);
    RUN(matches_reference);
    RUN(batch_independence);
    RUN(file_round_trip);
    RUN(info_counts_weights);
    RUN(check_seq_refuses_bad_input);
    RUN(build_refuses_mismatched_weights);
    RUN(topk);
    RUN(stream_matches_run);
    RUN(stream_joins_products_where_banks_allow);
    RUN(stream_long_sequence);
    RUN(stream_reuses_slot_buffers);
    RUN(errors_reach_the_caller);
    RUN(fused_lstm_step_is_used);
    be->ops->destroy(be);
    HARNESS_END();
}
