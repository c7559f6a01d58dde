/* Tests for the inference API module (server/api.c) shared by POST /infer and
 * `balsa run`: requests parsed into the right sequences, every client mistake answered
 * with the right status and a message naming the field, and responses that parse back to
 * exactly the engine's numbers (last step, all steps, top-k). */
#include <cJSON.h>

#include "engine_ref.h"
#include "models/json_text.h"
#include "server/api.h"

static balsa_backend *be;
static balsa_model *tok_model, *vec_model;
static model_host tok_host, vec_host;
static api_model models[2];
static const api_limits limits = {1000, 100000};

static model_spec make_spec(model_input_kind kind)
{
    model_spec s;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, kind == MODEL_INPUT_TOKENS ? "tok" : "vec");
    s.input_kind = kind;
    s.vocab_size = kind == MODEL_INPUT_TOKENS ? 23 : 0;
    s.input_size = kind == MODEL_INPUT_TOKENS ? 6 : 3;
    s.hidden_size = 8;
    s.num_layers = 1;
    s.lstm_bias = 1;
    s.n_fc = 1;
    s.fc[0] = (model_fc_spec){7, BALSA_ACT_NONE, 1};
    s.head = MODEL_HEAD_SOFTMAX;
    return s;
}

static int setup(void)
{
    char err[256];
    if (balsa_backend_cpu_create(1, &be) != BALSA_OK)
        return -1;
    model_spec st = make_spec(MODEL_INPUT_TOKENS), sv = make_spec(MODEL_INPUT_VECTORS);
    ref_random_host(&st, &tok_host, 4, 2, 0.5f, 11);
    ref_random_host(&sv, &vec_host, 4, 2, 0.5f, 12);
    if (model_build(&st, &tok_host, be, &tok_model, err, sizeof err) != BALSA_OK ||
        model_build(&sv, &vec_host, be, &vec_model, err, sizeof err) != BALSA_OK) {
        printf("setup: %s\n", err);
        return -1;
    }
    models[0] = (api_model){"tok", model_get_info(tok_model), tok_model};
    models[1] = (api_model){"vec", model_get_info(vec_model), vec_model};
    return 0;
}

static int parse(const char *body, int nmodels, api_request *r, char *err, size_t errlen)
{
    return api_parse_request(body, strlen(body), models, nmodels, &limits, r, err, errlen);
}

TEST(parses_tokens)
{
    api_request r;
    char err[512];
    const char *body = "{\"model\": \"tok\", \"inputs\": [[1, 2, 3], [22]], \"output\": \"all\", "
                       "\"top_k\": 3, \"timeout_ms\": 250}";
    REQUIRE(parse(body, 2, &r, err, sizeof err) == 0);
    CHECK(r.model == 0 && r.nseqs == 2 && r.total_steps == 4);
    CHECK(r.all_steps == 1 && r.top_k == 3 && r.timeout_ms == 250);
    CHECK(r.seqs[0].len == 3 && r.seqs[0].tokens[2] == 3);
    CHECK(r.seqs[1].len == 1 && r.seqs[1].tokens[0] == 22);
    api_request_free(&r);
    /* the model may be left out when one model is served */
    REQUIRE(parse("{\"inputs\": [[0]]}", 1, &r, err, sizeof err) == 0);
    CHECK(r.model == 0 && r.all_steps == 0 && r.top_k == 0 && r.timeout_ms == -1);
    api_request_free(&r);
    /* the body need not be NUL-terminated */
    const char *two = "{\"inputs\": [[5]]}{garbage";
    REQUIRE(api_parse_request(two, 17, models, 1, &limits, &r, err, sizeof err) == 0);
    CHECK(r.seqs[0].tokens[0] == 5);
    api_request_free(&r);
}

TEST(parses_vectors)
{
    api_request r;
    char err[512];
    REQUIRE(parse("{\"model\": \"vec\", \"inputs\": [[[1, 2, 3], [0.5, -1e-3, 4]]]}", 2, &r, err,
                  sizeof err) == 0);
    CHECK(r.model == 1 && r.nseqs == 1 && r.seqs[0].len == 2);
    CHECK(r.seqs[0].features[3] == 0.5f && r.seqs[0].features[4] == -1e-3f);
    api_request_free(&r);
}

TEST(errors_name_field_and_rule)
{
    struct {
        const char *body;
        int nmodels, code;
        const char *msg;
    } cases[] = {
        {"{\"inputs\": [[1, 2}", 2, 400, "body: malformed JSON at byte 17"},
        {"{\"inputs\": [[1]]} x", 1, 400, "body: unexpected text after the JSON value at byte 18"},
        {"", 1, 400, "body: empty"},
        {"[1]", 1, 400, "body: must be a JSON object"},
        {"{\"inputs\": [[1]], \"bogus\": 1}", 1, 400, "bogus: unknown field"},
        {"{\"inputs\": [[1]], \"inputs\": [[2]]}", 1, 400, "inputs: given twice"},
        {"{\"inputs\": [[1]]}", 2, 400, "model: required when several models are served (tok, vec)"},
        {"{\"model\": \"nope\", \"inputs\": [[1]]}", 2, 404, "model: no model named \"nope\" (served: tok, vec)"},
        {"{\"model\": 3, \"inputs\": [[1]]}", 2, 400, "model: must be a string"},
        {"{\"model\": \"tok\"}", 2, 400, "inputs: required"},
        {"{\"inputs\": {}}", 1, 400, "inputs: must be an array of sequences"},
        {"{\"inputs\": []}", 1, 400, "inputs: must hold at least one sequence"},
        {"{\"inputs\": [[1], []]}", 1, 400, "inputs[1]: must be a non-empty array of token ids"},
        {"{\"inputs\": [[1], 7]}", 1, 400, "inputs[1]: must be a non-empty array of token ids"},
        {"{\"inputs\": [[1, 2], [4, 5, 23]]}", 1, 400, "inputs[1][2]: token id 23 out of range [0, 23)"},
        {"{\"inputs\": [[-1]]}", 1, 400, "inputs[0][0]: token id -1 out of range [0, 23)"},
        {"{\"inputs\": [[1.5]]}", 1, 400, "inputs[0][0]: token id must be an integer, got 1.5"},
        {"{\"inputs\": [[\"a\"]]}", 1, 400, "inputs[0][0]: must be a token id"},
        {"{\"inputs\": [[1]], \"output\": \"first\"}", 1, 400, "output: must be \"last\" or \"all\""},
        {"{\"inputs\": [[1]], \"top_k\": 0}", 1, 400, "top_k: must be an integer in [1, 7]"},
        {"{\"inputs\": [[1]], \"top_k\": 8}", 1, 400, "top_k: must be an integer in [1, 7]"},
        {"{\"inputs\": [[1]], \"timeout_ms\": -5}", 1, 400, "timeout_ms: must be an integer in [1, 3600000]"},
        {"{\"model\": \"vec\", \"inputs\": [[[1, 2]]]}", 2, 400, "inputs[0][0]: must be an array of 3 numbers, got 2"},
        {"{\"model\": \"vec\", \"inputs\": [[[1, 2, 3], 4]]}", 2, 400, "inputs[0][1]: must be an array of 3 numbers"},
        {"{\"model\": \"vec\", \"inputs\": [[[1, null, 3]]]}", 2, 400, "inputs[0][0][1]: must be a number"},
        {"{\"model\": \"vec\", \"inputs\": [[[1, 1e39, 3]]]}", 2, 400, "inputs[0][0][1]: 1e+39 does not fit a float"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        api_request r;
        char err[512] = "";
        int code = parse(cases[i].body, cases[i].nmodels, &r, err, sizeof err);
        CHECK_MSG(code == cases[i].code && strstr(err, cases[i].msg) == err,
                  "case %zu: %d \"%s\", want %d \"%s\"", i, code, err, cases[i].code, cases[i].msg);
        CHECK(r.seqs == NULL && r.tokens == NULL);
    }
}

TEST(limits_and_loading)
{
    api_request r;
    char err[512];
    api_limits small = {5, 20};
    const char *b = "{\"inputs\": [[1, 2, 3], [4, 5, 6]]}";
    CHECK(api_parse_request(b, strlen(b), models, 1, &small, &r, err, sizeof err) == 400);
    CHECK_MSG(strstr(err, "inputs: 6 time steps in all, more than the limit 5"), "%s", err);
    const char *c = "{\"inputs\": [[1, 2], [4, 5]], \"output\": \"all\"}";
    CHECK(api_parse_request(c, strlen(c), models, 1, &small, &r, err, sizeof err) == 400);
    CHECK_MSG(strstr(err, "the response would carry 28 values, more than the limit 20"), "%s", err);
    const char *d = "{\"inputs\": [[1, 2], [4, 5]], \"output\": \"all\", \"top_k\": 2}";
    CHECK(api_parse_request(d, strlen(d), models, 1, &small, &r, err, sizeof err) == 0);
    api_request_free(&r);
    api_model loading = {"tok", NULL, NULL};
    CHECK(api_parse_request(b, strlen(b), &loading, 1, &limits, &r, err, sizeof err) == 503);
    CHECK_MSG(strstr(err, "model: \"tok\" is still loading"), "%s", err);
    /* deep nesting is refused by the parser, not by a crash */
    static char deep[5000];
    memset(deep, '[', 4000);
    CHECK(parse(deep, 1, &r, err, sizeof err) == 400);
}

/* Renders the response for body and compares every number with model_run's. */
static void check_response(const char *body, int all, int top_k)
{
    api_request r;
    char err[512];
    REQUIRE(parse(body, 1, &r, err, sizeof err) == 0);
    const model_info *info = models[0].info;
    REQUIRE(api_alloc_outputs(&r, info) == 0);
    REQUIRE(model_run(tok_model, r.seqs, r.nseqs, r.all_steps, r.outputs) == BALSA_OK);
    size_t len;
    char *text = api_render_response(&r, "tok", info, &len);
    REQUIRE(text && len == strlen(text));
    cJSON *root = cJSON_Parse(text);
    REQUIRE(root);
    CHECK(strcmp(cJSON_GetObjectItem(root, "model")->valuestring, "tok") == 0);
    cJSON *outs = cJSON_GetObjectItem(root, "outputs");
    REQUIRE(cJSON_GetArraySize(outs) == r.nseqs);
    int n = info->output_size, bad = 0;
    for (int i = 0; i < r.nseqs; i++) {
        cJSON *o = cJSON_GetArrayItem(outs, i);
        int steps = all ? r.seqs[i].len : 1;
        if (all)
            REQUIRE(cJSON_GetArraySize(o) == steps);
        for (int t = 0; t < steps; t++) {
            cJSON *vec = all ? cJSON_GetArrayItem(o, t) : o;
            const float *want = r.outputs[i] + (size_t)t * n;
            if (!top_k) {
                REQUIRE(cJSON_GetArraySize(vec) == n);
                for (int j = 0; j < n; j++)
                    bad += (float)cJSON_GetArrayItem(vec, j)->valuedouble != want[j];
                continue;
            }
            int idx[7];
            float val[7];
            engine_topk(want, n, top_k, idx, val);
            cJSON *ix = cJSON_GetObjectItem(vec, "indices"), *vx = cJSON_GetObjectItem(vec, "values");
            REQUIRE(cJSON_GetArraySize(ix) == top_k && cJSON_GetArraySize(vx) == top_k);
            for (int j = 0; j < top_k; j++) {
                bad += cJSON_GetArrayItem(ix, j)->valueint != idx[j];
                bad += (float)cJSON_GetArrayItem(vx, j)->valuedouble != val[j];
                bad += want[idx[j]] != val[j];
            }
        }
    }
    CHECK_MSG(bad == 0, "%d numbers differ in %s", bad, body);
    cJSON_Delete(root);
    free(text);
    api_request_free(&r);
}

TEST(responses_round_trip_exactly)
{
    check_response("{\"inputs\": [[1, 2, 3], [22, 0], [7]]}", 0, 0);
    check_response("{\"inputs\": [[1, 2, 3], [22, 0], [7]], \"output\": \"all\"}", 1, 0);
    check_response("{\"inputs\": [[4, 4, 4, 4]], \"top_k\": 3}", 0, 3);
    check_response("{\"inputs\": [[4, 5], [9]], \"top_k\": 7, \"output\": \"all\"}", 1, 7);
}

TEST(models_listing)
{
    int batching[2][6] = {{8, 100, 16, 1000, 64, 500}, {1, 0, 2, 5, 0, 60000}};
    size_t len;
    char *text = api_render_models(models, 2, (const int(*)[6])batching, &len);
    REQUIRE(text);
    cJSON *root = cJSON_Parse(text);
    REQUIRE(root);
    cJSON *arr = cJSON_GetObjectItem(root, "models");
    REQUIRE(cJSON_GetArraySize(arr) == 2);
    cJSON *m0 = cJSON_GetArrayItem(arr, 0), *m1 = cJSON_GetArrayItem(arr, 1);
    CHECK(strcmp(cJSON_GetObjectItem(m0, "input")->valuestring, "tokens") == 0);
    CHECK(cJSON_GetObjectItem(m0, "vocab_size")->valueint == 23);
    CHECK(cJSON_GetObjectItem(m0, "output_size")->valueint == 7);
    CHECK(cJSON_GetObjectItem(m0, "hidden_size")->valueint == 8);
    CHECK(cJSON_GetObjectItem(m0, "bank")->valueint == 4);
    CHECK(fabs(cJSON_GetObjectItem(m0, "sparsity")->valuedouble - 0.5) < 1e-6);
    CHECK(strcmp(cJSON_GetObjectItem(m1, "input")->valuestring, "vectors") == 0);
    CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(m1, "batching"), "queue_capacity")->valueint == 2);
    CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(m0, "batching"), "max_sequences")->valueint == 64);
    CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(m0, "batching"), "sequence_idle_ms")->valueint ==
          500);
    CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(m1, "batching"), "max_sequences")->valueint == 0);
    cJSON_Delete(root);
    free(text);
}

/* The generate extension's body (api_parse_generate) against a model with a vocabulary. */
TEST(generate_parameters)
{
    balsa_model *text_model;
    char err[512] = "";
    REQUIRE(model_load("models/fortunes/fortunes-b90.safetensors", be, &text_model, err,
                       sizeof err) == BALSA_OK);
    api_model gm[1] = {{"fortunes", model_get_info(text_model), text_model}};
    api_request r;
    const char *ok = "{\"text_input\": \"And\", \"parameters\": {\"max_tokens\": 3, "
                     "\"temperature\": 0.5, \"seed\": 9, \"stop\": \"x\"}}";
    REQUIRE(api_parse_generate(ok, strlen(ok), gm, 0, &limits, &r, err, sizeof err) == 0);
    CHECK(r.generate == 3 && r.gen.temperature == 0.5f && r.gen.seed == 9 && r.gen.nstop == 1);
    api_request_free(&r);
    /* Triton's sequence parameters ride along, named as parameters */
    const char *seq = "{\"text_input\": \"And\", \"parameters\": {\"sequence_id\": \"s1\", "
                      "\"sequence_start\": true}}";
    REQUIRE(api_parse_generate(seq, strlen(seq), gm, 0, &limits, &r, err, sizeof err) == 0);
    CHECK(strcmp(r.seq_key, "ss1") == 0 && r.seq_start == 1 && r.seq_end == 0);
    api_request_free(&r);
    /* found by tests/fuzz (fuzz_generate): a parameter given twice leaked the first
     * temperature or seed and silently took the last value of any */
    const char *twice[][2] = {
        {"{\"text_input\": \"a\", \"parameters\": {\"temperature\": 1, \"temperature\": 2}}",
         "parameters.temperature: given twice"},
        {"{\"text_input\": \"a\", \"parameters\": {\"seed\": 1, \"max_tokens\": 2, \"seed\": 1}}",
         "parameters.seed: given twice"},
        {"{\"text_input\": \"a\", \"parameters\": {\"max_tokens\": 1, \"max_tokens\": 99}}",
         "parameters.max_tokens: given twice"},
        {"{\"text_input\": \"a\", \"parameters\": {\"stop\": \"a\", \"stop\": \"b\"}}",
         "parameters.stop: given twice"},
        {"{\"text_input\": \"a\", \"parameters\": {\"sequence_id\": 1, \"sequence_id\": 2}}",
         "parameters.sequence_id: given twice"},
        {"{\"text_input\": \"a\", \"parameters\": {\"sequence_end\": true}}",
         "parameters.sequence_end: needs a sequence_id (not 0 or \"\")"},
    };
    for (size_t i = 0; i < sizeof twice / sizeof *twice; i++) {
        int code = api_parse_generate(twice[i][0], strlen(twice[i][0]), gm, 0, &limits, &r, err,
                                      sizeof err);
        CHECK_MSG(code == 400 && strcmp(err, twice[i][1]) == 0, "case %zu: %d \"%s\"", i, code,
                  err);
        CHECK(r.seqs == NULL && r.tokens == NULL);
    }
    model_free(text_model);
}

/* Found by tests/fuzz (fuzz_generate): cJSON keeps strings NUL-terminated, so a NUL in a
 * string (raw, or \u0000) cut it short silently: "tok\u0000x" named model "tok", and a
 * text lost everything after the NUL. */
TEST(nul_in_strings_refused)
{
    api_request r;
    char err[512] = "";
    const char *esc = "{\"model\": \"tok\\u0000x\", \"inputs\": [[1]]}";
    CHECK(parse(esc, 2, &r, err, sizeof err) == 400);
    CHECK_MSG(strstr(err, "body: a string holds a NUL character at byte 14") == err, "%s", err);
    const char raw[] = "{\"inputs\": [[1]], \"model\": \"vec\0\"}";
    CHECK(api_parse_request(raw, sizeof raw - 1, models, 2, &limits, &r, err, sizeof err) == 400);
    CHECK_MSG(strstr(err, "body: a string holds a NUL character at byte 31") == err, "%s", err);
    const char key[] = "{\"inputs\\u0000\": [[1]]}";
    CHECK(parse(key, 1, &r, err, sizeof err) == 400 && strstr(err, "at byte 8"));
    /* a NUL between values is refused as a control character (control_characters_refused) */
    const char between[] = "{\"inputs\": [[1]],\0 \"model\": \"tok\"}";
    CHECK(api_parse_request(between, sizeof between - 1, models, 2, &limits, &r, err,
                            sizeof err) == 400);
    CHECK_MSG(strstr(err, "body: control character 0x00 at byte 17") == err, "%s", err);
    /* an escaped backslash before u0000 is no NUL */
    CHECK(parse("{\"inputs\": [[1]], \"model\": \"\\\\u0000\"}", 2, &r, err, sizeof err) == 404);
}

/* cJSON skips every byte up to 0x20 between tokens and keeps control characters inside
 * strings: {"inputs": [[1]]<NUL>} was answered as a whole request. JSON allows only tab,
 * line feed and carriage return between tokens, and none of them unescaped in a string. */
TEST(control_characters_refused)
{
    api_request r;
    char err[512] = "";
    static const struct {
        const char *body;
        size_t len; /* 0: strlen */
        const char *msg;
    } bad[] = {
        {"{\"inputs\": [[1]]\0}", 18, "body: control character 0x00 at byte 16 (JSON allows"},
        /* right after a number: a control character, not part of the number */
        {"{\"inputs\": [[1\0]]}", 18, "body: control character 0x00 at byte 14 (JSON allows"},
        {"{\"inputs\":\v[[1]]}", 0, "body: control character 0x0b at byte 10 (JSON allows"},
        {"{\"inputs\": [[1,\x01 2]]}", 0, "body: control character 0x01 at byte 15 (JSON"},
        {"{\"model\": \"vec\tx\", \"inputs\": [[1]]}", 0,
         "body: control character 0x09 at byte 14 (JSON allows"},
        {"{\"text\": \"a\nb\", \"model\": \"tok\"}", 0,
         "body: control character 0x0a at byte 11 (JSON allows"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t len = bad[i].len ? bad[i].len : strlen(bad[i].body);
        int code = api_parse_request(bad[i].body, len, models, 2, &limits, &r, err, sizeof err);
        CHECK_MSG(code == 400 && strstr(err, bad[i].msg) == err, "case %zu: %d \"%s\"", i, code,
                  err);
    }
    /* JSON's own white space between tokens, and the escapes, still parse */
    const char *ok = "{\t\"model\":\r\n\"tok\",\n\t\"inputs\": [[1]], \"output\": \"l\\u0061st\"}";
    CHECK_MSG(api_parse_request(ok, strlen(ok), models, 2, &limits, &r, err, sizeof err) == 0,
              "%s", err);
    api_request_free(&r);
}

/* cJSON reads numbers with strtod, which takes forms JSON does not have; each read as the
 * number it looks like (token 1 for 01) was answered. JSON's own forms still parse. */
TEST(numbers_outside_json_refused)
{
    api_request r;
    char err[512] = "";
    static const struct {
        const char *body, *msg;
    } bad[] = {
        {"{\"model\": \"tok\", \"inputs\": [[01]]}", "body: number \"01\" at byte 29 is not"},
        {"{\"model\": \"vec\", \"inputs\": [[1., 2]]}", "body: number \"1.\" at byte 29"},
        {"{\"model\": \"vec\", \"inputs\": [[1.e5, 2]]}", "body: number \"1.e5\" at byte 29"},
        {"{\"model\": \"vec\", \"inputs\": [[-.5, 2]]}", "body: number \"-.5\" at byte 29"},
        {"{\"model\": \"vec\", \"inputs\": [[-00.5, 2]]}", "body: number \"-00.5\" at byte 29"},
        {"{\"model\": \"tok\", \"inputs\": [[1]], \"top_k\": 03}", "body: number \"03\" at byte"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int code = api_parse_request(bad[i].body, strlen(bad[i].body), models, 2, &limits, &r, err,
                                     sizeof err);
        CHECK_MSG(code == 400 && strstr(err, bad[i].msg) == err &&
                      strstr(err, JSON_NUMBER_RULE) != NULL,
                  "case %zu: %d \"%s\"", i, code, err);
    }
    const char *ok[] = {"{\"model\": \"vec\", \"inputs\": [[[-0, 0.5, 1e5], [1E+05, -2.5e-3, 10]]]}",
                        "{\"model\": \"tok\", \"inputs\": [[0, 4, 1]], \"top_k\": 2}"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        int code = api_parse_request(ok[i], strlen(ok[i]), models, 2, &limits, &r, err, sizeof err);
        CHECK_MSG(code == 0, "ok case %zu: %d \"%s\"", i, code, err);
        if (code == 0)
            api_request_free(&r);
    }
}

int main(void)
{
    if (setup()) {
        printf("0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    RUN(parses_tokens);
    RUN(parses_vectors);
    RUN(errors_name_field_and_rule);
    RUN(limits_and_loading);
    RUN(responses_round_trip_exactly);
    RUN(models_listing);
    RUN(generate_parameters);
    RUN(nul_in_strings_refused);
    RUN(control_characters_refused);
    RUN(numbers_outside_json_refused);
    model_free(tok_model);
    model_free(vec_model);
    model_host_free(&tok_host);
    model_host_free(&vec_host);
    be->ops->destroy(be);
    HARNESS_END();
}
