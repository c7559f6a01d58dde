/* Tests of the folded embedding (engine/model.h, MODEL_FOLD_MAX_BYTES): which models fold
 * (token input feeding an LSTM, table within the cap, the cap's edge itself), and that a
 * folded model gives what the same weights give unfolded (model_unfold) and what the
 * double-precision reference gives: model_run on mixed and equal lengths with state in
 * and out, uni- and bidirectional, model_stream with sequences joining and leaving,
 * generation (the same tokens, greedy and sampled, on random weights and on the trained
 * fortunes model). A counting backend shows the folded path runs no first-layer input
 * product at all. All on the CPU backend. */
#include <unistd.h>

#include "engine_ref.h"

#define FORTUNES "models/fortunes/fortunes-b90.safetensors"

static balsa_backend *be;

/* The CPU backend's own ops, and a copy whose matmul counts the products that read rows
 * of input_width floats: with an input width unlike every hidden width, those are the
 * first layer's input projections (W_ih_l0), what folding removes. The counting table is
 * swapped into the same backend struct, whose private state the ops need. */
static const balsa_backend_ops *cpu_ops;
static balsa_backend_ops counting_ops;
static int input_width;
static long input_products;

static balsa_status counting_matmul(balsa_backend *b, const balsa_mat *w, const float *x, int ldx,
                                    int n, const float *bias, int acc, balsa_act act, float *y,
                                    int ldy)
{
    if (ldx == input_width)
        input_products++;
    return cpu_ops->matmul(b, w, x, ldx, n, bias, acc, act, y, ldy);
}

/* A token model with an LSTM (sparse with bank 8 and k when k > 0, else dense), one FC
 * layer to out outputs and a log_softmax head. */
static model_spec token_spec(int vocab, int I, int H, int layers, int bidir, int out)
{
    model_spec s = ref_token_spec("fold", vocab, I, H, layers, out);
    s.bidirectional = bidir;
    s.head = MODEL_HEAD_LOG_SOFTMAX;
    return s;
}

/* Builds the same random weights twice: *folded as model_build leaves it, *plain after
 * model_unfold. Returns 0 (after a failed check) when either build fails. */
static int build_pair(const model_spec *s, model_host *h, int k, unsigned long long seed,
                      balsa_model **folded, balsa_model **plain)
{
    ref_random_host(s, h, 8, k, 0.5f, seed);
    char err[256] = "";
    *folded = *plain = NULL;
    balsa_status a = model_build(s, h, be, folded, err, sizeof err);
    CHECK_MSG(a == BALSA_OK, "%s", err);
    balsa_status b = model_build(s, h, be, plain, err, sizeof err);
    CHECK_MSG(b == BALSA_OK, "%s", err);
    if (a != BALSA_OK || b != BALSA_OK) {
        model_free(*folded);
        model_free(*plain);
        return 0;
    }
    model_unfold(*plain);
    return 1;
}

static double worse(double a, double b) { return a > b ? a : b; }

TEST(which_models_fold)
{
    model_spec s = token_spec(96, 64, 256, 1, 0, 96); /* the fortunes model's shape */
    CHECK(model_fold_table_bytes(&s) == (size_t)96 * 1024 * 4);
    s.bidirectional = 1;
    CHECK(model_fold_table_bytes(&s) == (size_t)2 * 96 * 1024 * 4);
    s = token_spec(10000, 650, 650, 2, 0, 10000); /* a word-level model: 104 MB, over */
    CHECK(model_fold_table_bytes(&s) == (size_t)104000000);
    CHECK(model_fold_table_bytes(&s) > MODEL_FOLD_MAX_BYTES);
    s = token_spec(50, 8, 0, 0, 0, 5); /* no LSTM: the embedding feeds the FC layers */
    s.lstm_bias = 0;
    CHECK(model_fold_table_bytes(&s) == 0);
    s = token_spec(50, 8, 16, 1, 0, 5);
    s.input_kind = MODEL_INPUT_VECTORS;
    s.vocab_size = 0;
    CHECK(model_fold_table_bytes(&s) == 0);

    /* Built models: folded as the table says; unfolding drops the table, twice is no harm. */
    model_host h;
    balsa_model *m, *u;
    s = token_spec(30, 9, 16, 2, 1, 7);
    REQUIRE(build_pair(&s, &h, 2, 1, &m, &u));
    CHECK(model_folded_bytes(m) == (size_t)2 * 30 * 64 * 4);
    CHECK(model_folded_bytes(u) == 0);
    model_unfold(u);
    CHECK(model_folded_bytes(u) == 0);
    model_free(m);
    model_free(u);
    model_host_free(&h);

    s = token_spec(50, 8, 0, 0, 0, 5);
    s.lstm_bias = 0;
    ref_random_host(&s, &h, 8, 0, 0.5f, 2);
    char err[256];
    REQUIRE(model_build(&s, &h, be, &m, err, sizeof err) == BALSA_OK);
    CHECK(model_folded_bytes(m) == 0);
    model_free(m);
    model_host_free(&h);
}

/* Random sequences for s, lengths 1..maxlen (all maxlen when equal); with_state gives
 * every other one h0/c0 (random) and every one hn/cn (zeroed). */
typedef struct {
    int n;
    ref_seq rs[16];
    engine_seq q[16];
    float *state[16]; /* h0, c0, hn, cn of sequence i, each ns floats */
} seq_set;

static void seq_set_make(seq_set *b, const model_spec *s, int n, int maxlen, int equal,
                         int with_state, unsigned long long seed)
{
    size_t ns = model_state_floats(s);
    memset(b, 0, sizeof *b);
    b->n = n;
    for (int i = 0; i < n; i++) {
        ref_make_seq(s, &b->rs[i], equal ? maxlen : 1 + (int)(h_rand_u64(&seed) % maxlen),
                     &seed);
        b->q[i] = b->rs[i].seq;
        if (!with_state)
            continue;
        b->state[i] = calloc(4 * ns, sizeof(float));
        BALSA_ASSERT(b->state[i]);
        for (size_t j = 0; j < 2 * ns; j++)
            b->state[i][j] = 0.5f * h_rand_f(&seed);
        if (i % 2 == 0) {
            b->q[i].h0 = b->state[i];
            b->q[i].c0 = b->state[i] + ns;
        }
        b->q[i].hn = b->state[i] + 2 * ns;
        b->q[i].cn = b->state[i] + 3 * ns;
    }
}

static void seq_set_free(seq_set *b)
{
    for (int i = 0; i < b->n; i++) {
        ref_free_seq(&b->rs[i]);
        free(b->state[i]);
    }
}

/* Runs b through model m (outputs in outs[i], final state copied to st[i] when b has
 * state); returns the engine's status. */
static balsa_status run_set(balsa_model *m, seq_set *b, int all, float **outs, float **st)
{
    size_t ns = model_state_floats(model_get_spec(m));
    balsa_status r = model_run(m, b->q, b->n, all, outs);
    for (int i = 0; i < b->n; i++)
        if (b->state[i])
            memcpy(st[i], b->state[i] + 2 * ns, sizeof(float) * 2 * ns);
    return r;
}

typedef struct {
    int I, H, layers, bidir, k;
} fold_case;

static const fold_case run_cases[] = {
    {9, 16, 1, 0, 2},  /* sparse, one layer */
    {12, 24, 2, 0, 0}, /* dense, two layers */
    {9, 16, 1, 1, 2},  /* bidirectional */
    {10, 20, 2, 1, 3}, /* bidirectional, two layers */
};

/* model_run: folded against unfolded (1e-5) and against the reference (1e-4), outputs of
 * the last step and of every step, batches of 1, 5 and 9 mixed lengths and 6 equal ones
 * (the bidirectional reverse pass takes a different path for each), with state in and out;
 * the folded model runs no first-layer input product. */
TEST(run_matches_unfolded)
{
    for (size_t c = 0; c < sizeof run_cases / sizeof *run_cases; c++) {
        const fold_case *fc = &run_cases[c];
        input_width = fc->I;
        model_spec s = token_spec(37, fc->I, fc->H, fc->layers, fc->bidir, 11);
        model_host h;
        balsa_model *m, *u;
        if (!build_pair(&s, &h, fc->k, 10 + c, &m, &u)) {
            model_host_free(&h);
            continue;
        }
        CHECK(model_folded_bytes(m) > 0);
        int O = model_spec_output_size(&s);
        size_t ns = model_state_floats(&s);
        double e_fold = 0, e_ref = 0, e_state = 0;
        long folded_products = 0, plain_products = 0;
        for (int all = 0; all < 2; all++)
            for (int trial = 0; trial < 4; trial++) {
                seq_set b;
                int n = trial < 3 ? 1 + 4 * trial : 6;
                seq_set_make(&b, &s, n, 12, trial == 3, trial != 1, 100 * c + 10 * all + trial);
                float *fo[16], *uo[16], *fs[16], *us[16];
                for (int i = 0; i < n; i++) {
                    size_t rows = all ? (size_t)b.q[i].len : 1;
                    fo[i] = calloc(rows * O, sizeof(float));
                    uo[i] = calloc(rows * O, sizeof(float));
                    fs[i] = calloc(2 * ns, sizeof(float));
                    us[i] = calloc(2 * ns, sizeof(float));
                }
                input_products = 0;
                CHECK(run_set(m, &b, all, fo, fs) == BALSA_OK);
                folded_products += input_products;
                input_products = 0;
                CHECK(run_set(u, &b, all, uo, us) == BALSA_OK);
                plain_products += input_products;
                for (int i = 0; i < n; i++) {
                    size_t rows = all ? (size_t)b.q[i].len : 1;
                    e_fold = worse(e_fold, h_max_rel_err_ff(fo[i], uo[i], rows * O));
                    if (b.state[i])
                        e_state = worse(e_state, h_max_rel_err_ff(fs[i], us[i], 2 * ns));
                    double *want = malloc(sizeof(double) * rows * O);
                    engine_seq q = b.q[i];
                    q.hn = q.cn = NULL;
                    ref_forward(&s, &h, &q, all, want);
                    /* the reference starts from zeros: compare the sequences without h0 */
                    if (!q.h0)
                        e_ref = worse(e_ref, h_max_rel_err(fo[i], want, rows * O, 1e-3));
                    free(want);
                    free(fo[i]);
                    free(uo[i]);
                    free(fs[i]);
                    free(us[i]);
                }
                seq_set_free(&b);
            }
        CHECK_MSG(e_fold <= 1e-5, "case %zu: folded vs unfolded %g", c, e_fold);
        CHECK_MSG(e_state <= 1e-5, "case %zu: hn/cn folded vs unfolded %g", c, e_state);
        CHECK_MSG(e_ref <= 1e-4, "case %zu: folded vs reference %g", c, e_ref);
        CHECK_MSG(folded_products == 0, "case %zu: %ld input products folded", c,
                  folded_products);
        CHECK_MSG(plain_products > 0, "case %zu: no input product unfolded", c);
        model_free(m);
        model_free(u);
        model_host_free(&h);
    }
}

/* Feeds n sequences through a stream of `slots` on model m, adding 0..3 between steps as
 * slots allow, in an order and at steps that depend only on seed (so two models see the
 * same schedule). out[i] gets sequence i's output. Returns 1 when every sequence came
 * back done exactly once. */
static int run_stream(balsa_model *m, int slots, ref_seq *rs, const int *all, int n, float **out,
                      unsigned long long seed)
{
    model_stream *st;
    if (model_stream_create(m, slots, &st) != BALSA_OK)
        return 0;
    void **done = calloc(slots, sizeof *done);
    int *finished = calloc(n, sizeof *finished);
    BALSA_ASSERT(done && finished);
    int next = 0, ndone = 0, steps = 0, ok = 1;
    while (ndone < n && steps++ < 10000 && ok) {
        int add = (int)(h_rand_u64(&seed) % 4);
        while (add-- > 0 && next < n && model_stream_free_slots(st) > 0) {
            ok &= model_stream_add(st, &rs[next].seq, all[next], out[next], &rs[next]) ==
                  BALSA_OK;
            next++;
        }
        int nd = 0;
        ok &= model_stream_step(st, done, &nd) == BALSA_OK;
        for (int d = 0; d < nd; d++) {
            int i = (int)((ref_seq *)done[d] - rs);
            ok &= i >= 0 && i < n && !finished[i];
            if (i >= 0 && i < n)
                finished[i] = 1;
        }
        ndone += nd;
    }
    ok &= ndone == n && model_stream_active(st) == 0;
    free(done);
    free(finished);
    model_stream_free(st);
    return ok;
}

/* model_stream with sequences joining and leaving, some longer than the stream's 64-step
 * projection chunk: folded against unfolded on the same schedule, and against the folded
 * model_run of each sequence alone (1e-5); the folded stream runs no first-layer input
 * product. The bidirectional case runs whole sequences through model_run. */
TEST(stream_matches_unfolded)
{
    const int slot_counts[] = {6, 1, 3};
    for (size_t c = 0; c < 3; c++) {
        const fold_case *fc = &run_cases[c];
        input_width = fc->I;
        model_spec s = token_spec(41, fc->I, fc->H, fc->layers, fc->bidir, 13);
        model_host h;
        balsa_model *m, *u;
        if (!build_pair(&s, &h, fc->k, 50 + c, &m, &u)) {
            model_host_free(&h);
            continue;
        }
        enum { N = 20 };
        int O = model_spec_output_size(&s);
        ref_seq rs[N];
        int all[N];
        float *fo[N], *uo[N], *alone[N];
        unsigned long long rng = 7 + c;
        for (int i = 0; i < N; i++) {
            ref_make_seq(&s, &rs[i], 1 + (int)(h_rand_u64(&rng) % 90), &rng);
            all[i] = (int)(h_rand_u64(&rng) % 2);
            size_t rows = all[i] ? (size_t)rs[i].seq.len : 1;
            fo[i] = calloc(rows * O, sizeof(float));
            uo[i] = calloc(rows * O, sizeof(float));
            alone[i] = calloc(rows * O, sizeof(float));
            CHECK(model_run(m, &rs[i].seq, 1, all[i], &alone[i]) == BALSA_OK);
        }
        input_products = 0;
        CHECK(run_stream(m, slot_counts[c], rs, all, N, fo, 99 + c));
        long folded_products = input_products;
        CHECK(run_stream(u, slot_counts[c], rs, all, N, uo, 99 + c));
        double e_fold = 0, e_alone = 0;
        for (int i = 0; i < N; i++) {
            size_t rows = all[i] ? (size_t)rs[i].seq.len : 1;
            e_fold = worse(e_fold, h_max_rel_err_ff(fo[i], uo[i], rows * O));
            e_alone = worse(e_alone, h_max_rel_err_ff(fo[i], alone[i], rows * O));
            ref_free_seq(&rs[i]);
            free(fo[i]);
            free(uo[i]);
            free(alone[i]);
        }
        CHECK_MSG(e_fold <= 1e-5, "case %zu: stream folded vs unfolded %g", c, e_fold);
        CHECK_MSG(e_alone <= 1e-5, "case %zu: stream vs model_run %g", c, e_alone);
        CHECK_MSG(folded_products == 0, "case %zu: %ld input products folded", c,
                  folded_products);
        model_free(m);
        model_free(u);
        model_host_free(&h);
    }
}

/* Generation on random weights: greedy and sampled, folded and unfolded give the same
 * tokens; in a folded stream, three generating sequences joining at different steps give
 * the tokens each gives alone. */
TEST(generation_gives_the_same_tokens)
{
    model_spec s = token_spec(29, 7, 32, 2, 0, 29);
    input_width = 7;
    model_host h;
    balsa_model *m, *u;
    REQUIRE(build_pair(&s, &h, 3, 77, &m, &u));
    REQUIRE(model_get_info(m)->can_generate);
    enum { NEW = 40 };
    int32_t prompt[3][6] = {{1, 2, 3, 4, 5, 6}, {7, 7, 0}, {28}};
    int plen[3] = {6, 3, 1};
    int32_t want[3][NEW];
    int nwant[3];
    for (int i = 0; i < 3; i++) {
        engine_seq q = {.tokens = prompt[i], .len = plen[i]};
        for (int t = 0; t < 2; t++) {
            model_gen_opts o = {.max_new = NEW, .temperature = t ? 0.7f : 0, .seed = 5 + i};
            int32_t fg[NEW], ug[NEW];
            int fn = 0, un = 0;
            input_products = 0;
            CHECK(model_generate(m, &q, &o, fg, &fn) == BALSA_OK);
            CHECK_MSG(input_products == 0, "%ld input products folded", input_products);
            CHECK(model_generate(u, &q, &o, ug, &un) == BALSA_OK);
            CHECK(fn == NEW && un == NEW);
            CHECK_MSG(memcmp(fg, ug, sizeof fg) == 0, "prompt %d temperature %d: tokens differ",
                      i, t);
            if (t == 0) {
                memcpy(want[i], fg, sizeof fg);
                nwant[i] = fn;
            }
        }
    }
    model_stream *st;
    REQUIRE(model_stream_create(m, 3, &st) == BALSA_OK);
    int32_t got[3][NEW];
    int ngot[3] = {0};
    void *done[3];
    int nd, finished = 0;
    for (int step = 0; step < 200 && (step < 9 || model_stream_active(st) > 0); step++) {
        if (step % 4 == 0 && step / 4 < 3) {
            int i = step / 4;
            engine_seq q = {.tokens = prompt[i], .len = plen[i]};
            model_gen_opts o = {.max_new = NEW};
            CHECK(model_stream_add_gen(st, &q, &o, got[i], &ngot[i], NULL, &ngot[i]) == BALSA_OK);
        }
        CHECK(model_stream_step(st, done, &nd) == BALSA_OK);
        finished += nd;
    }
    CHECK(finished == 3);
    for (int i = 0; i < 3; i++)
        CHECK_MSG(ngot[i] == nwant[i] && memcmp(got[i], want[i], sizeof got[i]) == 0,
                  "sequence %d in the stream", i);
    model_stream_free(st);
    model_free(m);
    model_free(u);
    model_host_free(&h);
}

/* The trained fortunes model folds (96 tokens x 1024 gates) and generates the same text
 * folded and unfolded, greedy and sampled. */
TEST(fortunes_generates_the_same_text)
{
    balsa_model *m = NULL, *u = NULL;
    char err[512] = "";
    REQUIRE(model_load(FORTUNES, be, &m, err, sizeof err) == BALSA_OK);
    CHECK_MSG(model_load(FORTUNES, be, &u, err, sizeof err) == BALSA_OK, "%s", err);
    if (!u) {
        model_free(m);
        return;
    }
    CHECK(model_folded_bytes(m) == (size_t)96 * 4 * model_get_info(m)->hidden_size * 4);
    model_unfold(u);
    int32_t ids[16];
    int n = 0;
    REQUIRE(model_encode_text(m, "And the", 7, ids, &n, err, sizeof err) == BALSA_OK);
    engine_seq q = {.tokens = ids, .len = n};
    for (int t = 0; t < 2; t++) {
        model_gen_opts o = {.max_new = 64, .temperature = t ? 0.8f : 0, .seed = 3};
        int32_t fg[64], ug[64];
        int fn = 0, un = 0;
        CHECK(model_generate(m, &q, &o, fg, &fn) == BALSA_OK);
        CHECK(model_generate(u, &q, &o, ug, &un) == BALSA_OK);
        CHECK(fn == 64 && un == 64);
        CHECK_MSG(memcmp(fg, ug, sizeof fg) == 0, "temperature %d: tokens differ", t);
    }
    model_free(m);
    model_free(u);
}

/* The cap's edge: a table of exactly MODEL_FOLD_MAX_BYTES folds, one token more does not;
 * both give the reference's numbers, and the folded one the unfolded one's. */
TEST(cap_edge)
{
    int H = 256, vmax = (int)(MODEL_FOLD_MAX_BYTES / (4 * (size_t)H * sizeof(float)));
    for (int over = 0; over < 2; over++) {
        model_spec s = token_spec(vmax + over, 5, H, 1, 0, 6);
        CHECK(model_fold_table_bytes(&s) == MODEL_FOLD_MAX_BYTES + (over ? 4096 : 0));
        model_host h;
        balsa_model *m, *u;
        if (!build_pair(&s, &h, 0, 300 + over, &m, &u)) {
            model_host_free(&h);
            continue;
        }
        CHECK(model_folded_bytes(m) == (over ? 0 : MODEL_FOLD_MAX_BYTES));
        seq_set b;
        seq_set_make(&b, &s, 5, 6, 0, 0, 40 + over);
        /* the last token too: the table's last row */
        b.rs[0].tok[0] = s.vocab_size - 1;
        float *fo[5], *uo[5];
        double e_fold = 0, e_ref = 0;
        for (int i = 0; i < 5; i++) {
            fo[i] = calloc(6, sizeof(float));
            uo[i] = calloc(6, sizeof(float));
        }
        CHECK(model_run(m, b.q, 5, 0, fo) == BALSA_OK);
        CHECK(model_run(u, b.q, 5, 0, uo) == BALSA_OK);
        for (int i = 0; i < 5; i++) {
            double want[6];
            ref_forward(&s, &h, &b.q[i], 0, want);
            e_ref = worse(e_ref, h_max_rel_err(fo[i], want, 6, 1e-3));
            e_fold = worse(e_fold, h_max_rel_err_ff(fo[i], uo[i], 6));
            free(fo[i]);
            free(uo[i]);
        }
        CHECK_MSG(e_fold <= 1e-5, "vocab %d: folded vs unfolded %g", s.vocab_size, e_fold);
        CHECK_MSG(e_ref <= 1e-4, "vocab %d: vs reference %g", s.vocab_size, e_ref);
        seq_set_free(&b);
        model_free(m);
        model_free(u);
        model_host_free(&h);
    }
}

/* Runs `balsa inspect path` and returns its output (static buffer), or NULL when it failed. */
static const char *inspect_output(const char *bin, const char *path)
{
    static char text[8192];
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s inspect %s 2>&1", bin, path);
    FILE *f = popen(cmd, "r");
    if (!f)
        return NULL;
    size_t got = fread(text, 1, sizeof text - 1, f);
    text[got] = 0;
    return pclose(f) == 0 ? text : NULL;
}

/* `balsa inspect` says whether a model folds and how large its table is (or would be). */
TEST(inspect_says_whether_folded)
{
    const char *bin = getenv("BALSA_BIN");
    if (!bin || access(bin, X_OK) != 0)
        SKIP("BALSA_BIN not set (run through make test)");
    const char *t = inspect_output(bin, FORTUNES);
    CHECK(t && strstr(t, "embedding folded into lstm layer 0 at load: 393216-byte table"));
    char dir[] = "/tmp/balsa_fold_XXXXXX", path[256], err[256];
    REQUIRE(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/over.safetensors", dir);
    model_spec s = token_spec(16385, 5, 256, 1, 0, 6); /* one token over the cap */
    REQUIRE(ref_write_random_model(path, &s, 8, 2, 0.5f, 9, err, sizeof err) == BALSA_OK);
    t = inspect_output(bin, path);
    CHECK(t && strstr(t, "embedding not folded: its table would be 67112960 bytes, over the "
                         "67108864-byte cap"));
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    if (balsa_backend_cpu_create(1, &be) != BALSA_OK)
        return 1;
    cpu_ops = be->ops;
    counting_ops = *cpu_ops;
    counting_ops.matmul = counting_matmul;
    be->ops = &counting_ops;
    input_width = -1; /* counting starts with the tests that set it */
    RUN(which_models_fold);
    RUN(run_matches_unfolded);
    RUN(stream_matches_unfolded);
    RUN(generation_gives_the_same_tokens);
    RUN(fortunes_generates_the_same_text);
    RUN(cap_edge);
    RUN(inspect_says_whether_folded);
    be->ops = cpu_ops;
    be->ops->destroy(be);
    HARNESS_END();
}
