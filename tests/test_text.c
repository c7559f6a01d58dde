/* Tests of text in and text out: the vocabulary a token model may carry (engine/vocab.c,
 * its place in the model file), text generation in the engine (greedy against a loop of
 * model_run calls, sampling against the model's own probabilities, generating sequences
 * sharing a model_stream with others), the "text" / "generate" fields of the inference API,
 * and `balsa serve` answering {"text": ..., "generate": N} (and Triton's generate extension)
 * with the trained demo model. */
#include <cJSON.h>

#include "engine_ref.h"
#include "models/convert.h"
#include "models/model_file.h"
#include "server/api.h"
#include "server_util.h"
#include "text_util.h"

#define FORTUNES "models/fortunes/fortunes-b90.safetensors"

static balsa_backend *be;

/* Largest |a - b| / max(|b|, 1e-3) over n floats. */
static double rel_diff(const float *a, const float *b, int n)
{
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / fmax(fabs((double)b[i]), 1e-3);
        worst = d > worst ? d : worst;
    }
    return worst;
}

static int argmax(const float *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

TEST(vocabulary_checks)
{
    model_vocab v;
    char err[256];
    const char *empty[] = {"a", ""};
    CHECK(model_vocab_set(&v, empty, 2, err, sizeof err) == BALSA_ERR_FORMAT);
    CHECK_MSG(strstr(err, "vocabulary[1]: empty") != NULL, "%s", err);
    const char *dup[] = {"a", "bc", "d", "bc"};
    CHECK(model_vocab_set(&v, dup, 4, err, sizeof err) == BALSA_ERR_FORMAT);
    CHECK_MSG(strstr(err, "vocabulary[3]: the same text as vocabulary[1]") != NULL, "%s", err);
    const char *bad[] = {"a", "x\xc3("};
    CHECK(model_vocab_set(&v, bad, 2, err, sizeof err) == BALSA_ERR_FORMAT);
    CHECK_MSG(strstr(err, "vocabulary[1]: not valid UTF-8 at byte 1") != NULL, "%s", err);
    const char *surrogate[] = {"\xed\xa0\x80"};
    CHECK(model_vocab_set(&v, surrogate, 1, err, sizeof err) == BALSA_ERR_FORMAT);
    char longtok[MODEL_MAX_TOKEN_BYTES + 2];
    memset(longtok, 'x', sizeof longtok - 1);
    longtok[sizeof longtok - 1] = 0;
    const char *toolong[] = {longtok};
    CHECK(model_vocab_set(&v, toolong, 1, err, sizeof err) == BALSA_ERR_FORMAT);
    CHECK_MSG(strstr(err, "more than the limit") != NULL, "%s", err);
    CHECK(v.n == 0);

    REQUIRE(model_vocab_set(&v, VOCAB, NV, err, sizeof err) == BALSA_OK);
    CHECK(v.n == NV && v.max_len == 3);
    const char *text = "the ab\xc3\xa9\nthz";
    int32_t ids[32];
    int n = 0;
    REQUIRE(model_vocab_encode(&v, text, strlen(text), ids, &n, err, sizeof err) == BALSA_OK);
    /* longest first: "the", " ", "ab" (not "a" "b"), "é", "\n", then "t" "h" (no "thz") */
    int want[] = {9, 8, 2, 3, 4, 5, 6, 11};
    REQUIRE(n == 8);
    for (int i = 0; i < n; i++)
        CHECK_MSG(ids[i] == want[i], "token %d: %d, expected %d", i, ids[i], want[i]);
    CHECK(model_vocab_encode(&v, "thx", 3, ids, &n, err, sizeof err) == BALSA_ERR_INVALID);
    CHECK_MSG(strstr(err, "'x' at byte 2 is not in the model's vocabulary") != NULL, "%s", err);
    CHECK(model_vocab_encode(&v, "a\xc3\xa8", 3, ids, &n, err, sizeof err) == BALSA_ERR_INVALID);
    CHECK_MSG(strstr(err, "(U+00E8) at byte 1") != NULL, "%s", err);
    CHECK(model_vocab_encode(&v, "a\xff", 2, ids, &n, err, sizeof err) == BALSA_ERR_INVALID);
    CHECK_MSG(strstr(err, "byte 0xFF (not valid UTF-8) at byte 1") != NULL, "%s", err);
    CHECK(model_vocab_encode(&v, "", 0, ids, &n, err, sizeof err) == BALSA_ERR_INVALID);
    CHECK_MSG(strstr(err, "empty") != NULL, "%s", err);

    model_vocab c;
    REQUIRE(model_vocab_copy(&c, &v) == BALSA_OK);
    CHECK(c.n == NV && c.max_len == 3 && c.byte_tok['q'] == 10);
    for (int i = 0; i < NV; i++)
        CHECK(strcmp(c.tok[i], VOCAB[i]) == 0 && c.len[i] == (int)strlen(VOCAB[i]));
    model_vocab_free(&c);
    model_vocab none;
    memset(&none, 0, sizeof none);
    CHECK(model_vocab_encode(&none, "a", 1, ids, &n, err, sizeof err) == BALSA_ERR_INVALID);
    CHECK_MSG(strstr(err, "no vocabulary") != NULL, "%s", err);
    model_vocab_free(&v);
}

/* model_desc_parse on a description with the given vocabulary JSON; the message. */
static balsa_status parse_with_vocab(const char *input, const char *vocab_json, char *err,
                                     size_t errlen)
{
    char desc[1024];
    snprintf(desc, sizeof desc,
             "{\"input\": \"%s\", \"vocab_size\": %d, \"input_size\": 4, \"hidden_size\": 4, "
             "\"num_layers\": 1, \"lstm_bias\": true, \"fc\": [{\"out\": 3}], "
             "\"vocabulary\": %s}",
             input, strcmp(input, "tokens") ? 0 : 3, vocab_json);
    model_spec s;
    model_vocab v;
    memset(&v, 0, sizeof v);
    balsa_status st = model_desc_parse(desc, strlen(desc), 0, &s, NULL, &v, err, errlen);
    if (st == BALSA_OK && v.n != 3)
        st = BALSA_ERR_INVALID;
    model_vocab_free(&v);
    return st;
}

TEST(vocabulary_in_the_model_file)
{
    char err[256];
    CHECK(parse_with_vocab("tokens", "[\"x\", \"y\", \"zz\"]", err, sizeof err) == BALSA_OK);
    CHECK(parse_with_vocab("tokens", "[\"x\", \"y\"]", err, sizeof err) == BALSA_ERR_FORMAT);
    CHECK_MSG(strstr(err, "vocabulary must be an array of vocab_size (3) strings") != NULL, "%s",
              err);
    CHECK(parse_with_vocab("tokens", "\"xyz\"", err, sizeof err) == BALSA_ERR_FORMAT);
    CHECK(parse_with_vocab("tokens", "[\"x\", 7, \"z\"]", err, sizeof err) == BALSA_ERR_FORMAT);
    CHECK_MSG(strstr(err, "vocabulary[1] must be a string") != NULL, "%s", err);
    CHECK(parse_with_vocab("tokens", "[\"x\", \"y\", \"x\"]", err, sizeof err) ==
          BALSA_ERR_FORMAT);
    CHECK_MSG(strstr(err, "vocabulary[2]: the same text as vocabulary[0]") != NULL, "%s", err);
    CHECK(parse_with_vocab("vectors", "[\"x\", \"y\", \"z\"]", err, sizeof err) ==
          BALSA_ERR_FORMAT);
    CHECK_MSG(strstr(err, "token-input models only") != NULL, "%s", err);

    /* written and read back: the same texts, and the loaded model knows them */
    model_spec s = gen_spec(MODEL_HEAD_LOG_SOFTMAX, 1);
    model_host h;
    ref_random_host(&s, &h, 4, 2, 1.0f, 3);
    REQUIRE(model_vocab_set(&h.vocab, VOCAB, NV, err, sizeof err) == BALSA_OK);
    char path[] = "/tmp/balsa_text_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    REQUIRE(model_file_write(path, &s, &h, err, sizeof err) == BALSA_OK);
    model_spec s2;
    model_host h2;
    REQUIRE(model_file_read(path, &s2, &h2, NULL, err, sizeof err) == BALSA_OK);
    CHECK(h2.vocab.n == NV);
    for (int i = 0; i < NV && i < h2.vocab.n; i++)
        CHECK(strcmp(h2.vocab.tok[i], VOCAB[i]) == 0);
    model_host_free(&h2);
    balsa_model *m = NULL;
    REQUIRE(model_load(path, be, &m, err, sizeof err) == BALSA_OK);
    const model_info *info = model_get_info(m);
    CHECK(info->has_vocabulary && info->can_generate);
    CHECK(strcmp(model_token_str(m, 3), "\xc3\xa9") == 0 && model_token_str(m, NV) == NULL &&
          model_token_str(m, -1) == NULL);
    int32_t ids[8];
    int n = 0;
    CHECK(model_encode_text(m, "the", 3, ids, &n, err, sizeof err) == BALSA_OK && n == 1 &&
          ids[0] == 9);
    model_free(m);

    /* balsa convert keeps it: a dense file with a vocabulary in, balanced-sparse out */
    model_host dense;
    ref_random_host(&s, &dense, 4, 0, 1.0f, 4);
    REQUIRE(model_vocab_set(&dense.vocab, VOCAB, NV, err, sizeof err) == BALSA_OK);
    REQUIRE(model_file_write(path, &s, &dense, err, sizeof err) == BALSA_OK);
    model_host_free(&dense);
    char conv[] = "/tmp/balsa_text_conv_XXXXXX";
    fd = mkstemp(conv);
    REQUIRE(fd >= 0);
    close(fd);
    convert_opts co = {.sparsity = 0.5, .bank = 4};
    REQUIRE(model_convert(path, NULL, &co, conv, NULL, NULL, err, sizeof err) == BALSA_OK);
    model_layout lay[MODEL_MAX_TENSORS];
    REQUIRE(model_file_read(conv, &s2, &h2, lay, err, sizeof err) == BALSA_OK);
    CHECK(h2.vocab.n == NV && h2.w_hh[0][0].sparse);
    for (int i = 0; i < NV && i < h2.vocab.n; i++)
        CHECK(strcmp(h2.vocab.tok[i], VOCAB[i]) == 0);
    model_host_free(&h2);
    unlink(conv);
    unlink(path);

    /* a vocabulary of the wrong size is refused by model_build */
    model_vocab_free(&h.vocab);
    REQUIRE(model_vocab_set(&h.vocab, VOCAB, NV - 1, err, sizeof err) == BALSA_OK);
    CHECK(model_build(&s, &h, be, &m, err, sizeof err) == BALSA_ERR_FORMAT && !m);
    CHECK_MSG(strstr(err, "vocabulary: 11 entries, expected 12") != NULL, "%s", err);
    model_host_free(&h);
}

/* The greedy continuation by the definition: run prompt + generated so far through
 * model_run, take the highest output, max_new times. */
static void greedy_by_model_run(balsa_model *m, const int32_t *prompt, int plen, int max_new,
                                int32_t *out)
{
    int O = model_get_info(m)->output_size;
    int32_t *seq = malloc(sizeof *seq * (size_t)(plen + max_new));
    float *v = malloc(sizeof *v * (size_t)O);
    memcpy(seq, prompt, sizeof *seq * (size_t)plen);
    for (int j = 0; j < max_new; j++) {
        engine_seq q = {.tokens = seq, .len = plen + j};
        float *outs[1] = {v};
        BALSA_ASSERT(model_run(m, &q, 1, 0, outs) == BALSA_OK);
        out[j] = seq[plen + j] = argmax(v, O);
    }
    free(seq);
    free(v);
}

TEST(greedy_generation_is_argmax_of_model_run)
{
    model_head heads[] = {MODEL_HEAD_LOG_SOFTMAX, MODEL_HEAD_SOFTMAX, MODEL_HEAD_NONE};
    for (int hi = 0; hi < 3; hi++) {
        balsa_model *m = gen_model(be, heads[hi], 2, 0, 20 + hi);
        REQUIRE(m);
        int32_t prompt[] = {3, 1, 4, 1, 5};
        int32_t got[24], want[24];
        int n = -1;
        model_gen_opts g = {.max_new = 24, .temperature = 0.0f, .seed = 0};
        REQUIRE(model_generate(m, &(engine_seq){.tokens = prompt, .len = 5}, &g, got, &n) ==
                BALSA_OK);
        greedy_by_model_run(m, prompt, 5, 24, want);
        CHECK(n == 24);
        int distinct = 0;
        for (int j = 0; j < 24; j++) {
            CHECK_MSG(got[j] == want[j], "head %d, token %d: %d, model_run says %d", hi, j,
                      got[j], want[j]);
            distinct |= 1 << got[j];
        }
        /* a model stuck on one token would make this test weak */
        CHECK(__builtin_popcount((unsigned)distinct) >= 2);
        model_free(m);
    }
}

TEST(generating_sequences_share_a_stream)
{
    balsa_model *m = gen_model(be, MODEL_HEAD_LOG_SOFTMAX, 2, 0, 31);
    REQUIRE(m);
    int O = model_get_info(m)->output_size;
    model_stream *s;
    REQUIRE(model_stream_create(m, 4, &s) == BALSA_OK);
    int32_t pa[] = {1, 2}, pb[] = {0, 5, 7, 2, 9, 11, 3}, pc[] = {4, 4, 8, 6}, pd[] = {10};
    model_gen_opts ga = {.max_new = 9, .temperature = 0.0f, .seed = 0};
    model_gen_opts gc = {.max_new = 5, .temperature = 0.9f, .seed = 77};
    model_gen_opts gd = {.max_new = 6, .temperature = 1.3f, .seed = 5};
    int32_t ta[9], tc[5], td[6];
    int na = 0, nc = 0, nd = 0;
    float *ob = malloc(sizeof(float) * 7 * (size_t)O), *oa = malloc(sizeof(float) * (size_t)O);
    REQUIRE(model_stream_add_gen(s, &(engine_seq){.tokens = pa, .len = 2}, &ga, ta, &na, oa, &ga) ==
            BALSA_OK);
    REQUIRE(model_stream_add(s, &(engine_seq){.tokens = pb, .len = 7}, 1, ob, &pb) == BALSA_OK);
    REQUIRE(model_stream_add_gen(s, &(engine_seq){.tokens = pc, .len = 4}, &gc, tc, &nc, NULL,
                                 &gc) == BALSA_OK);
    void *done[4];
    int ndone, finished = 0, steps = 0;
    while (model_stream_active(s) > 0 && steps < 100) {
        if (steps == 2) /* D joins while the others run */
            REQUIRE(model_stream_add_gen(s, &(engine_seq){.tokens = pd, .len = 1}, &gd, td, &nd,
                                         NULL, &gd) == BALSA_OK);
        REQUIRE(model_stream_step(s, done, &ndone) == BALSA_OK);
        finished += ndone;
        steps++;
    }
    CHECK(finished == 4 && na == 9 && nc == 5 && nd == 6);
    /* each the same as alone */
    int32_t alone[9];
    int n;
    REQUIRE(model_generate(m, &(engine_seq){.tokens = pa, .len = 2}, &ga, alone, &n) == BALSA_OK);
    CHECK(n == 9 && memcmp(alone, ta, sizeof ta) == 0);
    REQUIRE(model_generate(m, &(engine_seq){.tokens = pc, .len = 4}, &gc, alone, &n) == BALSA_OK);
    CHECK(n == 5 && memcmp(alone, tc, sizeof tc) == 0);
    REQUIRE(model_generate(m, &(engine_seq){.tokens = pd, .len = 1}, &gd, alone, &n) == BALSA_OK);
    CHECK(n == 6 && memcmp(alone, td, sizeof td) == 0);
    /* the plain sequence's outputs are model_run's */
    float *ref = malloc(sizeof(float) * 7 * (size_t)O);
    float *refs[1] = {ref};
    REQUIRE(model_run(m, &(engine_seq){.tokens = pb, .len = 7}, 1, 1, refs) == BALSA_OK);
    CHECK(rel_diff(ob, ref, 7 * O) < 1e-5);
    /* A's out: the scores its last token was drawn from (prompt + the first 8 tokens) */
    int32_t full[10] = {1, 2};
    memcpy(full + 2, ta, 8 * sizeof *ta);
    REQUIRE(model_run(m, &(engine_seq){.tokens = full, .len = 10}, 1, 0, refs) == BALSA_OK);
    CHECK(rel_diff(oa, ref, O) < 1e-5 && argmax(oa, O) == ta[8]);
    free(ref);
    free(ob);
    free(oa);
    model_stream_free(s);
    model_free(m);
}

/* Draws the first generated token n times (seeds 0..n-1) at temperature t and checks
 * every token's count against the probability softmax(log p / t) from model_run, within
 * 5 standard deviations. */
static void check_sampling(balsa_model *m, const int32_t *prompt, int plen, float t, int n)
{
    int O = model_get_info(m)->output_size;
    float *v = malloc(sizeof *v * (size_t)O);
    float *outs[1] = {v};
    BALSA_ASSERT(model_run(m, &(engine_seq){.tokens = prompt, .len = plen}, 1, 0, outs) ==
                 BALSA_OK);
    double *p = malloc(sizeof *p * (size_t)O), sum = 0;
    for (int i = 0; i < O; i++)
        sum += p[i] = exp(v[i] / t); /* v is log-softmax: log p */
    int *count = calloc((size_t)O, sizeof *count);
    for (int k = 0; k < n; k++) {
        model_gen_opts g = {.max_new = 1, .temperature = t, .seed = (uint64_t)k};
        int32_t tok;
        int got = 0;
        BALSA_ASSERT(model_generate(m, &(engine_seq){.tokens = prompt, .len = plen}, &g, &tok,
                                    &got) == BALSA_OK);
        count[tok]++;
    }
    int nonzero = 0;
    for (int i = 0; i < O; i++) {
        double q = p[i] / sum, mean = n * q, sd = sqrt(n * q * (1 - q));
        CHECK_MSG(fabs(count[i] - mean) <= 5 * sd + 1, "t %g, token %d: %d draws, expected %.1f",
                  t, i, count[i], mean);
        nonzero += count[i] > 0;
    }
    CHECK(nonzero >= 3);
    free(count);
    free(p);
    free(v);
}

TEST(sampling_follows_the_model)
{
    balsa_model *m = gen_model(be, MODEL_HEAD_LOG_SOFTMAX, 1, 0, 41);
    REQUIRE(m);
    int32_t prompt[] = {2, 7, 1};
    check_sampling(m, prompt, 3, 1.0f, 3000);
    check_sampling(m, prompt, 3, 0.5f, 3000);
    /* the same seed, the same tokens; another seed, others; a tiny temperature is greedy */
    int32_t a[30], b[30], c[30], greedy[30];
    int n;
    model_gen_opts g = {.max_new = 30, .temperature = 1.0f, .seed = 123};
    REQUIRE(model_generate(m, &(engine_seq){.tokens = prompt, .len = 3}, &g, a, &n) == BALSA_OK);
    REQUIRE(model_generate(m, &(engine_seq){.tokens = prompt, .len = 3}, &g, b, &n) == BALSA_OK);
    CHECK(memcmp(a, b, sizeof a) == 0);
    g.seed = 124;
    REQUIRE(model_generate(m, &(engine_seq){.tokens = prompt, .len = 3}, &g, c, &n) == BALSA_OK);
    CHECK(memcmp(a, c, sizeof a) != 0);
    g.temperature = 1e-4f;
    REQUIRE(model_generate(m, &(engine_seq){.tokens = prompt, .len = 3}, &g, c, &n) == BALSA_OK);
    greedy_by_model_run(m, prompt, 3, 30, greedy);
    CHECK(memcmp(c, greedy, sizeof c) == 0);
    model_free(m);
}

TEST(generation_refusals)
{
    balsa_model *m = gen_model(be, MODEL_HEAD_LOG_SOFTMAX, 1, 0, 51);
    REQUIRE(m);
    int32_t prompt[] = {1}, out[4];
    int n;
    engine_seq q = {.tokens = prompt, .len = 1};
    model_gen_opts zero = {.max_new = 0}, nan_t = {.max_new = 2, .temperature = NAN},
                   neg = {.max_new = 2, .temperature = -1};
    CHECK(model_generate(m, &q, &zero, out, &n) == BALSA_ERR_INVALID);
    CHECK(model_generate(m, &q, &nan_t, out, &n) == BALSA_ERR_INVALID);
    CHECK(model_generate(m, &q, &neg, out, &n) == BALSA_ERR_INVALID);
    int32_t bad[] = {NV};
    model_gen_opts ok = {.max_new = 2, .temperature = 0, .seed = 0};
    CHECK(model_generate(m, &(engine_seq){.tokens = bad, .len = 1}, &ok, out, &n) ==
          BALSA_ERR_INVALID);
    model_free(m);
    /* models that cannot generate: bidirectional, and output size != vocabulary */
    char err[256];
    model_spec s = gen_spec(MODEL_HEAD_LOG_SOFTMAX, 1);
    s.bidirectional = 1;
    model_host h;
    ref_random_host(&s, &h, 4, 2, 1.0f, 52);
    REQUIRE(model_build(&s, &h, be, &m, err, sizeof err) == BALSA_OK);
    CHECK(!model_get_info(m)->can_generate);
    CHECK(model_generate(m, &q, &ok, out, &n) == BALSA_ERR_INVALID);
    model_free(m);
    model_host_free(&h);
    s = gen_spec(MODEL_HEAD_LOG_SOFTMAX, 1);
    s.fc[0].out = NV - 2;
    ref_random_host(&s, &h, 4, 2, 1.0f, 53);
    REQUIRE(model_build(&s, &h, be, &m, err, sizeof err) == BALSA_OK);
    CHECK(!model_get_info(m)->can_generate);
    CHECK(model_generate(m, &q, &ok, out, &n) == BALSA_ERR_INVALID);
    model_free(m);
    model_host_free(&h);
}

/* The number of leading tokens of ids[0..n) after which their text (m's vocabulary) first
 * contains stop; n + 1 when it never does. */
static int tokens_until(const balsa_model *m, const int32_t *ids, int n, const char *stop)
{
    char text[4096] = "";
    for (int j = 0; j < n; j++) {
        strcat(text, model_token_str(m, ids[j]));
        if (strstr(text, stop))
            return j + 1;
    }
    return n + 1;
}

TEST(stop_strings_end_generation)
{
    balsa_model *m = gen_model(be, MODEL_HEAD_LOG_SOFTMAX, 1, 1, 71);
    REQUIRE(m);
    int32_t prompt[] = {9, 8}, all[40], got[40];
    int n = 0, k = 0;
    engine_seq q = {.tokens = prompt, .len = 2};
    model_gen_opts g = {.max_new = 40, .temperature = 0.7f, .seed = 5};
    REQUIRE(model_generate(m, &q, &g, all, &n) == BALSA_OK && n == 40);
    /* a stop made of the text of tokens 6 and 7 (tokens of one to three bytes) */
    char stop[2 * MODEL_MAX_TOKEN_BYTES + 1];
    snprintf(stop, sizeof stop, "%s%s", model_token_str(m, all[6]), model_token_str(m, all[7]));
    const char *stops[] = {"\x01never", stop};
    g.stop = stops;
    g.nstop = 2;
    int want = tokens_until(m, all, 40, stop);
    REQUIRE(want <= 8);
    REQUIRE(model_generate(m, &q, &g, got, &k) == BALSA_OK);
    CHECK_MSG(k == want, "stopped after %d tokens, expected %d (stop \"%s\")", k, want, stop);
    CHECK(memcmp(got, all, sizeof *got * (size_t)k) == 0);
    /* in a shared stream, beside one without stops, each as alone */
    model_stream *st;
    REQUIRE(model_stream_create(m, 2, &st) == BALSA_OK);
    model_gen_opts plain = {.max_new = 40, .temperature = 0.7f, .seed = 5};
    int32_t a[40], b[40];
    int na = 0, nb = 0;
    REQUIRE(model_stream_add_gen(st, &q, &g, a, &na, NULL, a) == BALSA_OK);
    REQUIRE(model_stream_add_gen(st, &q, &plain, b, &nb, NULL, b) == BALSA_OK);
    void *done[2];
    int nd, finished = 0;
    for (int steps = 0; model_stream_active(st) > 0 && steps < 100; steps++) {
        REQUIRE(model_stream_step(st, done, &nd) == BALSA_OK);
        finished += nd;
    }
    CHECK(finished == 2 && na == want && nb == 40);
    CHECK(memcmp(a, all, sizeof *a * (size_t)na) == 0 && memcmp(b, all, sizeof b) == 0);
    model_stream_free(st);
    /* a stop that never appears changes nothing */
    g.nstop = 1;
    REQUIRE(model_generate(m, &q, &g, got, &k) == BALSA_OK);
    CHECK(k == 40 && memcmp(got, all, sizeof all) == 0);
    /* refusals: too many, empty, too long, and a model without a vocabulary */
    const char *five[] = {"a", "b", "q", "z", "t"}, *empty[] = {""};
    char longstop[MODEL_GEN_MAX_STOP_BYTES + 2];
    memset(longstop, 'a', sizeof longstop - 1);
    longstop[sizeof longstop - 1] = 0;
    const char *toolong[] = {longstop};
    model_gen_opts bad = {.max_new = 3, .stop = five, .nstop = 5};
    CHECK(model_generate(m, &q, &bad, got, &k) == BALSA_ERR_INVALID);
    bad.stop = empty;
    bad.nstop = 1;
    CHECK(model_generate(m, &q, &bad, got, &k) == BALSA_ERR_INVALID);
    bad.stop = toolong;
    CHECK(model_generate(m, &q, &bad, got, &k) == BALSA_ERR_INVALID);
    model_free(m);
    balsa_model *plain_m = gen_model(be, MODEL_HEAD_LOG_SOFTMAX, 1, 0, 72);
    REQUIRE(plain_m);
    bad.stop = five;
    CHECK(model_generate(plain_m, &q, &bad, got, &k) == BALSA_ERR_INVALID);
    model_free(plain_m);
}

/* ---------------------------------------------------------------- the API */

static api_model api_models[2];
static const api_limits api_lim = {200, 100000};

static int api_parse(const char *body, api_request *r, char *err, size_t errlen)
{
    return api_parse_request(body, strlen(body), api_models, 2, &api_lim, r, err, errlen);
}

/* The status and message for body, which must be refused. */
static void expect_refusal(const char *body, int code, const char *words)
{
    api_request r;
    char err[512] = "";
    int got = api_parse(body, &r, err, sizeof err);
    CHECK_MSG(got == code && strstr(err, words) != NULL, "%s -> %d %s (expected %d, \"%s\")",
              body, got, err, code, words);
    if (got == 0)
        api_request_free(&r);
}

/* Runs a parsed request r on m as the server would (generating, or model_run) and
 * returns its rendered response, parsed (cJSON_Delete it); NULL on any failure. */
static cJSON *run_and_render(balsa_model *m, api_request *r)
{
    if (api_alloc_outputs(r, model_get_info(m)))
        return NULL;
    balsa_status st = BALSA_OK;
    for (int i = 0; r->generate && i < r->nseqs && st == BALSA_OK; i++) {
        model_gen_opts g = r->gen;
        g.seed += (uint64_t)i;
        st = model_generate(m, &r->seqs[i], &g, r->gen_tokens[i], &r->gen_counts[i]);
    }
    if (!r->generate)
        st = model_run(m, r->seqs, r->nseqs, r->all_steps, r->outputs);
    size_t len;
    char *resp = st == BALSA_OK ? api_render_response(r, "voc", model_get_info(m), &len) : NULL;
    cJSON *o = resp ? cJSON_Parse(resp) : NULL;
    free(resp);
    return o;
}

TEST(api_text_and_generate)
{
    balsa_model *voc = gen_model(be, MODEL_HEAD_LOG_SOFTMAX, 1, 1, 61);
    balsa_model *plain = gen_model(be, MODEL_HEAD_LOG_SOFTMAX, 1, 0, 62);
    REQUIRE(voc && plain);
    api_models[0] = (api_model){"voc", model_get_info(voc), voc};
    api_models[1] = (api_model){"plain", model_get_info(plain), plain};
    api_request r;
    char err[512];
    REQUIRE(api_parse("{\"model\": \"voc\", \"text\": \"the ab\"}", &r, err, sizeof err) == 0);
    CHECK(r.nseqs == 1 && r.seqs[0].len == 3 && r.seqs[0].tokens[0] == 9 &&
          r.seqs[0].tokens[1] == 8 && r.seqs[0].tokens[2] == 2);
    api_request_free(&r);
    REQUIRE(api_parse("{\"model\": \"voc\", \"inputs\": [\"ab\", [1, 2, 3], \"q\"]}", &r, err,
                      sizeof err) == 0);
    CHECK(r.nseqs == 3 && r.total_steps == 5 && r.seqs[0].len == 1 && r.seqs[1].len == 3 &&
          r.seqs[2].tokens[0] == 10);
    api_request_free(&r);

    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"inputs\": [[1]]}", 400,
                   "text: give either inputs or text, not both");
    expect_refusal("{\"model\": \"plain\", \"text\": \"a\"}", 400,
                   "text: model \"plain\" has no vocabulary");
    expect_refusal("{\"model\": \"plain\", \"inputs\": [\"a\"]}", 400,
                   "inputs[0]: must be a non-empty array of token ids (this model has no "
                   "vocabulary");
    expect_refusal("{\"model\": \"voc\", \"text\": 5}", 400,
                   "text: must be a string or an array of strings");
    expect_refusal("{\"model\": \"voc\", \"text\": [\"a\", 1]}", 400, "text[1]: must be a string");
    expect_refusal("{\"model\": \"voc\", \"text\": \"abx\"}", 400,
                   "text: 'x' at byte 2 is not in the model's vocabulary");
    expect_refusal("{\"model\": \"voc\", \"text\": [\"a\", \"\"]}", 400, "text[1]: empty");
    expect_refusal("{\"model\": \"voc\", \"text\": []}", 400, "text: must hold at least one");
    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"generate\": 0}", 400,
                   "generate: must be an integer in [1, 65536]");
    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"generate\": 3, \"top_k\": 2}", 400,
                   "top_k: not with generate");
    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"generate\": 3, \"output\": \"all\"}",
                   400, "output: \"all\" is not with generate");
    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"temperature\": 1}", 400,
                   "temperature: only with generate");
    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"seed\": 1}", 400,
                   "seed: only with generate");
    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"generate\": 3, \"temperature\": -1}",
                   400, "temperature: must be a number in [0, 100]");
    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"generate\": 3, \"seed\": 1.5}", 400,
                   "seed: must be an integer");
    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"stop\": \"b\"}", 400,
                   "stop: only with generate");
    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"generate\": 3, \"stop\": 7}", 400,
                   "stop: must be a string or an array of 1 to 4 strings");
    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"generate\": 3, "
                   "\"stop\": [\"a\", \"b\", \"q\", \"z\", \"t\"]}",
                   400, "stop: must be a string or an array of 1 to 4 strings");
    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"generate\": 3, \"stop\": [\"a\", 1]}",
                   400, "stop[1]: must be a string");
    expect_refusal("{\"model\": \"voc\", \"text\": \"a\", \"generate\": 3, \"stop\": \"\"}", 400,
                   "stop: each string must have 1 to 64 bytes, got 0");
    expect_refusal("{\"model\": \"plain\", \"inputs\": [[1]], \"generate\": 3, \"stop\": \"a\"}",
                   400, "stop: model \"plain\" has no vocabulary");
    /* 2 sequences of 1 step + 2 x 150 generated: over the 200-step limit */
    expect_refusal("{\"model\": \"voc\", \"text\": [\"a\", \"b\"], \"generate\": 150}", 400,
                   "with the generated tokens, more than the limit 200");

    /* greedy: the response's tokens are model_generate's, its text their texts */
    REQUIRE(api_parse("{\"model\": \"voc\", \"text\": [\"the\", \"ab q\"], \"generate\": 12}", &r,
                      err, sizeof err) == 0);
    cJSON *o = run_and_render(voc, &r);
    REQUIRE(o);
    CHECK(!cJSON_GetObjectItem(o, "seed")); /* greedy: nothing to reproduce */
    cJSON *outs = cJSON_GetObjectItem(o, "outputs");
    REQUIRE(cJSON_GetArraySize(outs) == 2);
    for (int i = 0; i < 2; i++) {
        cJSON *e = cJSON_GetArrayItem(outs, i);
        cJSON *toks = cJSON_GetObjectItem(e, "tokens"), *text = cJSON_GetObjectItem(e, "text");
        REQUIRE(cJSON_GetArraySize(toks) == 12 && cJSON_IsString(text));
        char want[256] = "";
        for (int j = 0; j < 12; j++) {
            CHECK(cJSON_GetArrayItem(toks, j)->valueint == r.gen_tokens[i][j]);
            strcat(want, model_token_str(voc, r.gen_tokens[i][j]));
        }
        CHECK_MSG(strcmp(text->valuestring, want) == 0, "%s != %s", text->valuestring, want);
        CHECK(!strcmp(cJSON_GetObjectItem(e, "finish_reason")->valuestring, "length"));
    }
    cJSON_Delete(o);
    api_request_free(&r);

    /* a stop string: the text is cut before it and finish_reason says so */
    REQUIRE(api_parse("{\"model\": \"voc\", \"text\": \"the\", \"generate\": 40, "
                      "\"temperature\": 0.7, \"seed\": 5, \"stop\": [\"\\u0001\", \"a\"]}",
                      &r, err, sizeof err) == 0);
    CHECK(r.gen.nstop == 2 && !strcmp(r.gen.stop[1], "a"));
    o = run_and_render(voc, &r);
    REQUIRE(o);
    {
        cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "outputs"), 0);
        const char *reason = cJSON_GetObjectItem(e, "finish_reason")->valuestring;
        const char *t = cJSON_GetObjectItem(e, "text")->valuestring;
        char full[512] = "";
        for (int j = 0; j < r.gen_counts[0]; j++)
            strcat(full, model_token_str(voc, r.gen_tokens[0][j]));
        char *at = strstr(full, "a");
        CHECK(!strchr(t, 'a'));
        if (r.gen_counts[0] < 40 || at) {
            CHECK(!strcmp(reason, "stop") && at && strlen(t) == (size_t)(at - full));
        } else {
            CHECK(!strcmp(reason, "length") && !strcmp(t, full));
        }
    }
    cJSON_Delete(o);
    api_request_free(&r);

    /* sampling without a seed: the response names the seed it used */
    REQUIRE(
        api_parse("{\"model\": \"voc\", \"text\": \"a\", \"generate\": 4, \"temperature\": 0.7}",
                  &r, err, sizeof err) == 0);
    CHECK(!r.seed_given && r.gen.temperature > 0.69f && r.gen.seed < (1ull << 53));
    o = run_and_render(voc, &r);
    REQUIRE(o);
    cJSON *seed = cJSON_GetObjectItem(o, "seed");
    CHECK(cJSON_IsNumber(seed) && (uint64_t)seed->valuedouble == r.gen.seed);
    cJSON_Delete(o);
    api_request_free(&r);

    /* top_k of a model with a vocabulary names its tokens */
    REQUIRE(api_parse("{\"model\": \"voc\", \"text\": \"the\", \"top_k\": 3}", &r, err,
                      sizeof err) == 0);
    o = run_and_render(voc, &r);
    REQUIRE(o);
    cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "outputs"), 0);
    cJSON *idx = cJSON_GetObjectItem(first, "indices"), *tt = cJSON_GetObjectItem(first, "tokens");
    REQUIRE(cJSON_GetArraySize(idx) == 3 && cJSON_GetArraySize(tt) == 3);
    for (int j = 0; j < 3; j++)
        CHECK(strcmp(cJSON_GetArrayItem(tt, j)->valuestring,
                     model_token_str(voc, cJSON_GetArrayItem(idx, j)->valueint)) == 0);
    cJSON_Delete(o);
    api_request_free(&r);
    model_free(voc);
    model_free(plain);
}

/* ---------------------------------------------------------------- balsa serve */

TEST(serve_generates_text_with_the_demo_model)
{
    balsa_model *m = NULL;
    char err[256];
    REQUIRE(model_load(FORTUNES, be, &m, err, sizeof err) == BALSA_OK);
    REQUIRE(model_get_info(m)->has_vocabulary && model_get_info(m)->can_generate);
    int32_t prompt[16], want[40];
    int plen = 0, n = 0;
    REQUIRE(model_encode_text(m, "And the", 7, prompt, &plen, err, sizeof err) == BALSA_OK);
    model_gen_opts g = {.max_new = 40, .temperature = 0.0f, .seed = 0};
    REQUIRE(model_generate(m, &(engine_seq){.tokens = prompt, .len = plen}, &g, want, &n) ==
            BALSA_OK);
    char want_text[512] = "";
    for (int j = 0; j < 40; j++)
        strcat(want_text, model_token_str(m, want[j]));

    const char *args[] = {"--model", "fortunes=" FORTUNES, NULL};
    su_server sv;
    REQUIRE(su_start(&sv, args) == 0);
    /* the curl line: no content type beyond curl's form default */
    su_resp r;
    const char *body = "{\"text\": \"And the\", \"generate\": 40}";
    su_request(sv.port, "POST", "/infer", body, strlen(body),
               "Content-Type: application/x-www-form-urlencoded", &r);
    CHECK_MSG(r.code == 200, "%ld %s", r.code, r.body);
    cJSON *o = cJSON_Parse(r.body);
    cJSON *text = o ? cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "outputs"), 0),
                                          "text")
                    : NULL;
    CHECK(cJSON_IsString(text) && strcmp(text->valuestring, want_text) == 0);
    cJSON_Delete(o);
    free(r.body);
    /* sampling with a seed is reproducible across requests (and batched with others) */
    body = "{\"text\": [\"Q: \", \"Love is\"], \"generate\": 30, \"temperature\": 0.8, "
           "\"seed\": 99}";
    char *first = NULL;
    for (int k = 0; k < 2; k++) {
        su_request(sv.port, "POST", "/infer", body, strlen(body), NULL, &r);
        CHECK_MSG(r.code == 200, "%ld %s", r.code, r.body);
        if (k == 0)
            first = r.body;
        else {
            CHECK(first && strcmp(first, r.body) == 0);
            free(r.body);
        }
    }
    free(first);
    body = "{\"text\": \"caf\\u00e9\", \"generate\": 5}";
    su_request(sv.port, "POST", "/infer", body, strlen(body), NULL, &r);
    CHECK_MSG(r.code == 400 && strstr(r.body, "text: '\xc3\xa9' (U+00E9) at byte 3"), "%ld %s",
              r.code, r.body);
    free(r.body);
    /* a stop string cuts the continuation where it first appears */
    {
        char stop[8] = "";
        const char *at = strstr(want_text, "e");
        REQUIRE(at);
        body = "{\"text\": \"And the\", \"generate\": 40, \"stop\": \"e\"}";
        su_request(sv.port, "POST", "/infer", body, strlen(body), NULL, &r);
        o = cJSON_Parse(r.body);
        cJSON *e = o ? cJSON_GetArrayItem(cJSON_GetObjectItem(o, "outputs"), 0) : NULL;
        snprintf(stop, sizeof stop, "%s",
                 e ? cJSON_GetObjectItem(e, "finish_reason")->valuestring : "");
        CHECK(e && !strncmp(cJSON_GetObjectItem(e, "text")->valuestring, want_text,
                            (size_t)(at - want_text)) &&
              strlen(cJSON_GetObjectItem(e, "text")->valuestring) == (size_t)(at - want_text) &&
              !strcmp(stop, "stop"));
        cJSON_Delete(o);
        free(r.body);
    }
    /* Triton's generate extension gives the same continuation */
    body = "{\"text_input\": \"And the\", \"parameters\": {\"max_tokens\": 40}}";
    su_request(sv.port, "POST", "/v2/models/fortunes/generate", body, strlen(body), NULL, &r);
    CHECK_MSG(r.code == 200, "%ld %s", r.code, r.body);
    o = cJSON_Parse(r.body);
    text = o ? cJSON_GetObjectItem(o, "text_output") : NULL;
    CHECK(cJSON_IsString(text) && strcmp(text->valuestring, want_text) == 0);
    CHECK(o && cJSON_GetArraySize(cJSON_GetObjectItem(o, "tokens")) == 40 &&
          !strcmp(cJSON_GetObjectItem(o, "model_name")->valuestring, "fortunes"));
    cJSON_Delete(o);
    free(r.body);
    /* the v2 metadata lists the text input, and a BYTES tensor gives /infer's numbers */
    su_request(sv.port, "GET", "/v2/models/fortunes", NULL, 0, NULL, &r);
    CHECK_MSG(r.code == 200 && strstr(r.body, "{\"name\":\"text\",\"datatype\":\"BYTES\""), "%s",
              r.body);
    free(r.body);
    body = "{\"text\": \"Love is\", \"top_k\": 3}";
    su_request(sv.port, "POST", "/infer", body, strlen(body), NULL, &r);
    o = cJSON_Parse(r.body);
    free(r.body);
    body = "{\"inputs\": [{\"name\": \"text\", \"datatype\": \"BYTES\", \"shape\": [1], "
           "\"data\": [\"Love is\"]}], \"parameters\": {\"top_k\": 3}}";
    su_request(sv.port, "POST", "/v2/models/fortunes/infer", body, strlen(body), NULL, &r);
    cJSON *v2o = cJSON_Parse(r.body);
    cJSON *native = o ? cJSON_GetObjectItem(
                            cJSON_GetArrayItem(cJSON_GetObjectItem(o, "outputs"), 0), "indices")
                      : NULL;
    cJSON *got = NULL, *t, *v2outs = v2o ? cJSON_GetObjectItem(v2o, "outputs") : NULL;
    cJSON_ArrayForEach(t, v2outs)
    {
        if (!strcmp(cJSON_GetObjectItem(t, "name")->valuestring, "top_k_indices"))
            got = cJSON_GetObjectItem(t, "data");
    }
    CHECK_MSG(native && got && cJSON_Compare(native, got, 1), "%ld %s", r.code, r.body);
    cJSON_Delete(o);
    cJSON_Delete(v2o);
    free(r.body);
    struct {
        const char *path, *body;
        long code;
        const char *words;
    } bad[] = {
        {"/v2/models/fortunes/generate", "{\"parameters\": {}}", 400, "text_input: required"},
        {"/v2/models/fortunes/generate", "{\"text_input\": \"a\", \"parameters\": {\"top_p\": 1}}",
         400, "parameters.top_p: unknown"},
        {"/v2/models/fortunes/versions/1/generate",
         "{\"text_input\": \"a\", \"parameters\": {\"max_tokens\": 0}}", 400,
         "parameters.max_tokens: must be an integer in [1, 65536]"},
        {"/v2/models/fortunes/generate", "{\"text_input\": \"a\", \"extra\": 1}", 400,
         "extra: unknown field"},
        {"/v2/models/fortunes/generate", "{\"text_input\": \"\\u00ff\"}", 400,
         "text_input: '\xc3\xbf' (U+00FF) at byte 0"},
        {"/v2/models/nope/generate", "{\"text_input\": \"a\"}", 404, "no model named"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        su_request(sv.port, "POST", bad[i].path, bad[i].body, strlen(bad[i].body), NULL, &r);
        CHECK_MSG(r.code == bad[i].code && strstr(r.body, bad[i].words), "%s: %ld %s",
                  bad[i].body, r.code, r.body);
        free(r.body);
    }
    su_request(sv.port, "GET", "/v2/models/fortunes/generate", NULL, 0, NULL, &r);
    CHECK(r.code == 405);
    free(r.body);
    su_request(sv.port, "GET", "/models", NULL, 0, NULL, &r);
    CHECK_MSG(strstr(r.body, "\"text\":true") && strstr(r.body, "\"generate\":true"), "%s",
              r.body);
    free(r.body);
    CHECK(su_stop(&sv, 20) == 0);
    model_free(m);
}

int main(void)
{
    if (su_main_init(&be))
        return 1;
    RUN(vocabulary_checks);
    RUN(vocabulary_in_the_model_file);
    RUN(greedy_generation_is_argmax_of_model_run);
    RUN(generating_sequences_share_a_stream);
    RUN(sampling_follows_the_model);
    RUN(generation_refusals);
    RUN(stop_strings_end_generation);
    RUN(api_text_and_generate);
    RUN(serve_generates_text_with_the_demo_model);
    be->ops->destroy(be);
    curl_global_cleanup();
    HARNESS_END();
}
