/* Tests of the KServe v2 protocol: the tensor codec in process (JSON and binary inputs,
 * lengths, text as BYTES, every refusal, rendering JSON and binary outputs that agree, padding and top_k),
 * then `balsa serve` over HTTP: metadata, config, readiness, statistics, v2 inference giving
 * the same numbers as POST /infer (JSON and binary), error codes; then NVIDIA's
 * tritonclient (tests/v2_clients.py) and schemathesis against the served OpenAPI document
 * (tests/schemathesis.sh), both installed from PyPI by tests/py_deps.sh. */
#include <cJSON.h>

#include "engine_ref.h"
#include "server/v2_tensor.h"
#include "server_util.h"

#define VOCAB 40
#define OUT 30
#define FEAT 6

#define FORTUNES "models/fortunes/fortunes-b90.safetensors"

static char tok_path[256], vec_path[256];
static balsa_backend *be;
static balsa_model *tok_model, *vec_model, *text_model; /* the last: with a vocabulary */
static su_server srv;

static int write_models(void)
{
    model_spec s = ref_token_spec("tok", VOCAB, 8, 16, 1, OUT);
    snprintf(tok_path, sizeof tok_path, "/tmp/balsa_test_v2_tok_%d.safetensors", (int)getpid());
    snprintf(vec_path, sizeof vec_path, "/tmp/balsa_test_v2_vec_%d.safetensors", (int)getpid());
    char err[256];
    balsa_status st = ref_write_random_model(tok_path, &s, 8, 2, 0.5f, 11, err, sizeof err);
    s.input_kind = MODEL_INPUT_VECTORS;
    s.vocab_size = 0;
    s.input_size = FEAT;
    s.head = MODEL_HEAD_NONE;
    snprintf(s.name, sizeof s.name, "vec");
    if (st == BALSA_OK)
        st = ref_write_random_model(vec_path, &s, 8, 2, 0.5f, 12, err, sizeof err);
    if (st != BALSA_OK || balsa_backend_cpu_create(1, &be) != BALSA_OK ||
        model_load(tok_path, be, &tok_model, err, sizeof err) != BALSA_OK ||
        model_load(vec_path, be, &vec_model, err, sizeof err) != BALSA_OK ||
        model_load(FORTUNES, be, &text_model, err, sizeof err) != BALSA_OK) {
        printf("write_models: %s\n", err);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ codec */

static api_model models[3];
static const api_limits lim = {1000, 100000};

static int parse(int model, const char *body, size_t len, long header_len, api_request *r,
                 v2_request *v, char *err)
{
    return v2_parse_infer(body, len, header_len, models, model, &lim, r, v, err, 256);
}

/* Runs a parsed request on its model directly. */
static void run(int model, api_request *r)
{
    const model_info *info = models[model].info;
    BALSA_ASSERT(api_alloc_outputs(r, info) == 0);
    balsa_model *m = model == 2 ? text_model : model ? vec_model : tok_model;
    BALSA_ASSERT(model_run(m, r->seqs, r->nseqs, r->all_steps, r->outputs) == BALSA_OK);
}

TEST(codec_json_tokens_with_lengths)
{
    const char *body = "{\"id\":\"a\",\"parameters\":{\"output\":\"all\",\"top_k\":3,\"extra\":1},"
                       "\"inputs\":[{\"name\":\"tokens\",\"shape\":[2,3],\"datatype\":\"INT32\","
                       "\"data\":[[1,2,3],[4,5,99]]},{\"name\":\"lengths\",\"shape\":[2],"
                       "\"datatype\":\"INT64\",\"data\":[3,2]}]}";
    api_request r;
    v2_request v;
    char err[256];
    int code = parse(0, body, strlen(body), -1, &r, &v, err);
    REQUIRE(code == 0);
    CHECK(r.nseqs == 2 && r.seqs[0].len == 3 && r.seqs[1].len == 2 && r.total_steps == 5);
    CHECK(r.seqs[1].tokens[0] == 4 && r.seqs[1].tokens[1] == 5);
    CHECK(r.all_steps == 1 && r.top_k == 3 && v.has_id && !strcmp(v.id, "a"));
    CHECK(v.nout == 3 && v.order[0] == V2_OUT_OUTPUT && v.order[2] == V2_OUT_TOPK_VALUES);
    CHECK(v.batch == 2 && v.steps == 3);
    api_request_free(&r);
    /* flat data, INT64, no lengths: both rows full length */
    body = "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[2,2],\"datatype\":\"INT64\","
           "\"data\":[1,2,3,4]}]}";
    REQUIRE(parse(0, body, strlen(body), -1, &r, &v, err) == 0);
    CHECK(r.seqs[0].len == 2 && r.seqs[1].len == 2 && r.seqs[1].tokens[1] == 4);
    CHECK(r.all_steps == 0 && r.top_k == 0 && v.nout == 1 && !v.has_id);
    CHECK(r.timeout_ms == -1);
    api_request_free(&r);
    /* Triton's timeout (microseconds, as tritonclient's infer(timeout=) sends it) becomes
     * the deadline in milliseconds, rounded up */
    body = "{\"parameters\":{\"timeout\":2500},\"inputs\":[{\"name\":\"tokens\","
           "\"shape\":[1,1],\"datatype\":\"INT32\",\"data\":[1]}]}";
    REQUIRE(parse(0, body, strlen(body), -1, &r, &v, err) == 0);
    CHECK(r.timeout_ms == 3);
    api_request_free(&r);
    body = "{\"parameters\":{\"timeout_ms\":7},\"inputs\":[{\"name\":\"tokens\","
           "\"shape\":[1,1],\"datatype\":\"INT32\",\"data\":[1]}]}";
    REQUIRE(parse(0, body, strlen(body), -1, &r, &v, err) == 0);
    CHECK(r.timeout_ms == 7);
    api_request_free(&r);
}

TEST(codec_binary_inputs)
{
    /* INT32 tokens [2,3] and INT32 lengths [2,1] as raw bytes after the JSON header */
    const char *hdr = "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[2,3],\"datatype\":\"INT32\","
                      "\"parameters\":{\"binary_data_size\":24}},{\"name\":\"lengths\",\"shape\":"
                      "[2,1],\"datatype\":\"INT32\",\"parameters\":{\"binary_data_size\":8}}],"
                      "\"parameters\":{\"binary_data_output\":true}}";
    int32_t tok[6] = {7, 8, 9, 10, 11, 12}, len[2] = {1, 3};
    size_t hl = strlen(hdr);
    char body[512];
    memcpy(body, hdr, hl);
    memcpy(body + hl, tok, 24);
    memcpy(body + hl + 24, len, 8);
    api_request r;
    v2_request v;
    char err[256];
    int code = parse(0, body, hl + 32, (long)hl, &r, &v, err);
    CHECK_MSG(code == 0, "%s", err);
    if (code == 0) {
        CHECK(r.seqs[0].len == 1 && r.seqs[1].len == 3 && r.seqs[1].tokens[2] == 12);
        CHECK(v.binary[V2_OUT_OUTPUT] == 1);
    }
    api_request_free(&r);
    /* the byte counts must add up */
    CHECK(parse(0, body, hl + 31, (long)hl, &r, &v, err) == 400 &&
          strstr(err, "runs past the end"));
    CHECK(parse(0, body, hl + 32, -1, &r, &v, err) == 400 &&
          strstr(err, "Inference-Header-Content-Length"));
    /* FP32 features for the vector model: [1, 2, FEAT] */
    float f[2 * FEAT];
    for (int i = 0; i < 2 * FEAT; i++)
        f[i] = 0.1f * (float)i - 0.3f;
    hl = (size_t)snprintf(body, sizeof body,
                          "{\"inputs\":[{\"name\":\"features\",\"shape\":[1,2,%d],\"datatype\":"
                          "\"FP32\",\"parameters\":{\"binary_data_size\":%zu}}]}",
                          FEAT, sizeof f);
    memcpy(body + hl, f, sizeof f);
    code = parse(1, body, hl + sizeof f, (long)hl, &r, &v, err);
    CHECK_MSG(code == 0, "%s", err);
    if (code == 0)
        CHECK(r.seqs[0].len == 2 && r.seqs[0].features[FEAT + 1] == f[FEAT + 1]);
    api_request_free(&r);
}

TEST(codec_refusals)
{
    static const struct {
        int model;
        const char *body;
        int code;
        const char *msg;
    } cases[] = {
        {0, "[1]", 400, "body: must be a JSON object"},
        {0, "{\"inputs\":[]} x", 400, "body: unexpected text after the JSON value at byte 14 "
                                      "(binary data needs Inference-Header-Content-Length)"},
        {0, "{\"inputs\":[],\"oops\":1}", 400, "oops: unknown field"},
        {0, "{\"inputs\":[]}", 400, "inputs: the tensor \"tokens\" is required"},
        {0, "{\"inputs\":[{\"name\":\"features\",\"shape\":[1,1],\"datatype\":\"INT32\",\"data\":[1]}]}",
         400, "inputs[0].name: \"features\" is not an input"},
        {0, "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[1,1],\"datatype\":\"FP32\",\"data\":[1]}]}",
         400, "inputs.tokens.datatype: \"FP32\" not accepted"},
        {0, "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[1],\"datatype\":\"INT32\",\"data\":[1]}]}",
         400, "inputs.tokens.shape: must have 2 dimensions"},
        {0, "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[1,0],\"datatype\":\"INT32\",\"data\":[]}]}",
         400, "inputs.tokens.shape[1]: must be an integer in [1,"},
        {0, "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[1,3],\"datatype\":\"INT32\",\"data\":[1,2]}]}",
         400, "inputs.tokens.data: 2 elements, but the shape holds 3"},
        {0, "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[1,2],\"datatype\":\"INT32\",\"data\":[1,2.5]}]}",
         400, "inputs.tokens.data[1]: 2.5 is not an INT32"},
        {0, "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[1,2],\"datatype\":\"INT32\",\"data\":[1,40]}]}",
         400, "inputs.tokens[0][1]: token id 40 out of range [0, 40)"},
        {0, "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[2,2],\"datatype\":\"INT32\",\"data\":[1,1,1,1]},"
            "{\"name\":\"lengths\",\"shape\":[2],\"datatype\":\"INT32\",\"data\":[2,3]}]}",
         400, "inputs.lengths[1]: 3 is not in [1, 2]"},
        {0, "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[2,2],\"datatype\":\"INT32\",\"data\":[1,1,1,1]},"
            "{\"name\":\"lengths\",\"shape\":[3],\"datatype\":\"INT32\",\"data\":[2,2,2]}]}",
         400, "inputs.lengths.shape[0]: must equal the batch size 2"},
        {0, "{\"parameters\":{\"top_k\":31},\"inputs\":[{\"name\":\"tokens\",\"shape\":[1,1],\"datatype\":\"INT32\",\"data\":[1]}]}",
         400, "parameters.top_k: must be an integer in [1, 30]"},
        {0, "{\"parameters\":{\"output\":\"first\"},\"inputs\":[]}", 400,
         "parameters.output: must be \"last\" or \"all\""},
        {0, "{\"parameters\":{\"timeout\":0},\"inputs\":[]}", 400,
         "parameters.timeout: must be an integer in [1, 3600000000]"},
        {0, "{\"parameters\":{\"timeout\":10,\"timeout_ms\":10},\"inputs\":[]}", 400,
         "parameters.timeout: give timeout (microseconds) or timeout_ms, not both"},
        {0, "{\"outputs\":[{\"name\":\"logits\"}],\"inputs\":[{\"name\":\"tokens\",\"shape\":[1,1],\"datatype\":\"INT32\",\"data\":[1]}]}",
         400, "outputs[0].name: \"logits\" is not an output"},
        {0, "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[1,1000],\"datatype\":\"INT32\",\"data\":[1]},"
            "{\"name\":\"lengths\",\"shape\":[1],\"datatype\":\"INT32\",\"data\":[1]}]}",
         400, "inputs.tokens.shape: holds 1000 elements, more than the request's data can"},
        {0, "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[2,3],\"datatype\":\"INT32\",\"data\":[1,2,3,4,5]}]}",
         400, "inputs.tokens.data: 5 elements, but the shape holds 6"},
        {0, "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[16384,16384],\"datatype\":\"INT64\",\"data\":[1]}]}",
         400, "inputs.tokens.shape: holds 268435456 elements, more than"},
        {1, "{\"inputs\":[{\"name\":\"features\",\"shape\":[1,1,5],\"datatype\":\"FP32\",\"data\":[1,2,3,4,5]}]}",
         400, "inputs.features.shape[2]: must be the input size 6"},
        {1, "{\"inputs\":[{\"name\":\"features\",\"shape\":[1,1,6],\"datatype\":\"FP32\",\"data\":[1,2,3,4,5,1e39]}]}",
         400, "inputs.features.data[5]: 1e+39 does not fit FP32"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        api_request r;
        v2_request v;
        char err[256] = "";
        int code = parse(cases[i].model, cases[i].body, strlen(cases[i].body), -1, &r, &v, err);
        CHECK_MSG(code == cases[i].code && strncmp(err, cases[i].msg, strlen(cases[i].msg)) == 0,
                  "case %zu: %d %s", i, code, err);
        CHECK(r.seqs == NULL && r.tokens == NULL && r.model == cases[i].model);
    }
    /* more output values than the limit */
    api_limits small = {1000, 50};
    const char *body = "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[2,1],\"datatype\":\"INT32\","
                       "\"data\":[1,2]}]}";
    api_request r;
    v2_request v;
    char err[256];
    CHECK(v2_parse_infer(body, strlen(body), -1, models, 0, &small, &r, &v, err, sizeof err) ==
              400 &&
          strstr(err, "60 values, more than the limit 50"));
}

/* Text as a BYTES tensor (models with a vocabulary): the same sequences, and so the same
 * numbers, as the token ids and lengths it encodes to, in JSON and in Triton's binary
 * layout (a 4-byte length before each element); and every way to get it wrong. */
TEST(codec_text_input)
{
    const char *texts[] = {"And the", "Lo", "Q: Why?"};
    int32_t ids[3][16];
    int lens[3];
    char err[256];
    for (int i = 0; i < 3; i++)
        REQUIRE(model_encode_text(text_model, texts[i], strlen(texts[i]), ids[i], &lens[i], err,
                                  sizeof err) == BALSA_OK);
    char tokens_body[1024];
    int at = snprintf(tokens_body, sizeof tokens_body,
                      "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[3,7],\"datatype\":"
                      "\"INT32\",\"data\":[");
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 7; k++)
            at += snprintf(tokens_body + at, sizeof tokens_body - (size_t)at, "%s%d",
                           i || k ? "," : "", k < lens[i] ? ids[i][k] : 0);
    snprintf(tokens_body + at, sizeof tokens_body - (size_t)at,
             "]},{\"name\":\"lengths\",\"shape\":[3],\"datatype\":\"INT32\",\"data\":[%d,%d,%d]}],"
             "\"parameters\":{\"top_k\":3}}",
             lens[0], lens[1], lens[2]);
    const char *json_body = "{\"inputs\":[{\"name\":\"text\",\"shape\":[3,1],\"datatype\":"
                            "\"BYTES\",\"data\":[[\"And the\"],[\"Lo\"],[\"Q: Why?\"]]}],"
                            "\"parameters\":{\"top_k\":3}}";
    /* the binary form: the JSON header, then each string after its 4-byte length */
    char bin_body[512];
    char raw[64];
    size_t rl = 0;
    for (int i = 0; i < 3; i++) {
        uint32_t l = (uint32_t)strlen(texts[i]);
        unsigned char le[4] = {(unsigned char)l, (unsigned char)(l >> 8), (unsigned char)(l >> 16),
                               (unsigned char)(l >> 24)};
        memcpy(raw + rl, le, 4);
        memcpy(raw + rl + 4, texts[i], l);
        rl += 4 + l;
    }
    int hl = snprintf(bin_body, sizeof bin_body,
                      "{\"inputs\":[{\"name\":\"text\",\"shape\":[3],\"datatype\":\"BYTES\","
                      "\"parameters\":{\"binary_data_size\":%zu}}],\"parameters\":{\"top_k\":3}}",
                      rl);
    memcpy(bin_body + hl, raw, rl);
    api_request rt, rj, rb;
    v2_request vt, vj, vb;
    REQUIRE(parse(2, tokens_body, strlen(tokens_body), -1, &rt, &vt, err) == 0);
    CHECK_MSG(parse(2, json_body, strlen(json_body), -1, &rj, &vj, err) == 0, "%s", err);
    CHECK_MSG(parse(2, bin_body, (size_t)hl + rl, hl, &rb, &vb, err) == 0, "%s", err);
    REQUIRE(rj.nseqs == 3 && rb.nseqs == 3 && vj.batch == 3 && vj.steps == 7);
    run(2, &rt);
    run(2, &rj);
    run(2, &rb);
    int O = models[2].info->output_size;
    for (int i = 0; i < 3; i++) {
        CHECK(rj.seqs[i].len == lens[i] && rb.seqs[i].len == lens[i]);
        CHECK(!memcmp(rj.outputs[i], rt.outputs[i], (size_t)O * sizeof(float)));
        CHECK(!memcmp(rb.outputs[i], rt.outputs[i], (size_t)O * sizeof(float)));
    }
    api_request_free(&rt);
    api_request_free(&rj);
    api_request_free(&rb);

    static const struct {
        int model;
        const char *body;
        const char *msg;
    } bad[] = {
        {0, "{\"inputs\":[{\"name\":\"text\",\"shape\":[1],\"datatype\":\"BYTES\",\"data\":[\"a\"]}]}",
         "inputs[0].name: \"text\" is not an input of this model (inputs: tokens, lengths)"},
        {2, "{\"inputs\":[{\"name\":\"text\",\"shape\":[1],\"datatype\":\"BYTES\",\"data\":[\"a\"]},"
            "{\"name\":\"tokens\",\"shape\":[1,1],\"datatype\":\"INT32\",\"data\":[1]}]}",
         "inputs.text: give either text or tokens (with lengths), not both"},
        {2, "{\"inputs\":[{\"name\":\"text\",\"shape\":[1],\"datatype\":\"INT32\",\"data\":[1]}]}",
         "inputs.text.datatype: \"INT32\" not accepted (use BYTES)"},
        {2, "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[1,1],\"datatype\":\"BYTES\",\"data\":[\"a\"]}]}",
         "inputs.tokens.datatype: \"BYTES\" not accepted (use INT32 or INT64)"},
        {2, "{\"inputs\":[{\"name\":\"text\",\"shape\":[2],\"datatype\":\"BYTES\",\"data\":[\"a\",1]}]}",
         "inputs.text.data[1]: must be a string"},
        {2, "{\"inputs\":[{\"name\":\"text\",\"shape\":[2],\"datatype\":\"BYTES\",\"data\":[\"a\"]}]}",
         "inputs.text.data: 1 elements, but the shape holds 2"},
        {2, "{\"inputs\":[{\"name\":\"text\",\"shape\":[1,2],\"datatype\":\"BYTES\",\"data\":[\"a\",\"b\"]}]}",
         "inputs.text.shape: must be [batch] or [batch, 1]"},
        {2, "{\"inputs\":[{\"name\":\"text\",\"shape\":[2],\"datatype\":\"BYTES\",\"data\":[\"a\",\"caf\u00e9\"]}]}",
         "inputs.text[1]: '\xc3\xa9' (U+00E9) at byte 3 is not in the model's vocabulary"},
        {2, "{\"inputs\":[{\"name\":\"text\",\"shape\":[1],\"datatype\":\"BYTES\",\"data\":[\"\"]}]}",
         "inputs.text[0]: empty"},
        {2, "{\"inputs\":[{\"name\":\"text\",\"shape\":[100000],\"datatype\":\"BYTES\",\"data\":[\"a\"]}]}",
         "inputs.text.shape: holds 100000 elements, more than the request's data can"},
        {2, "{\"inputs\":[]}", "inputs: the tensor \"tokens\" is required (or \"text\")"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        api_request r;
        v2_request v;
        char e[256] = "";
        int code = parse(bad[i].model, bad[i].body, strlen(bad[i].body), -1, &r, &v, e);
        CHECK_MSG(code == 400 && strncmp(e, bad[i].msg, strlen(bad[i].msg)) == 0, "case %zu: %d %s",
                  i, code, e);
        CHECK(r.seqs == NULL && r.tokens == NULL);
    }
    /* binary layouts that do not add up */
    struct {
        int count;
        const char *raw;
        size_t n;
        const char *msg;
    } braw[] = {
        {1, "\x05\x00\x00\x00" "abc", 7, "inputs.text: element 0's 5 bytes run past its binary data"},
        {2, "\x02\x00\x00\x00" "ab\x01\x00", 8,
         "inputs.text: binary data ends inside element 1's length"},
        {1, "\x01\x00\x00\x00" "ab", 6, "inputs.text: 1 bytes of binary data after its 1 elements"},
        {1, "\x01\x00", 2, "inputs.text.shape: holds 1 elements, more than the request's data can"},
    };
    for (size_t i = 0; i < sizeof braw / sizeof *braw; i++) {
        char body[256];
        int h = snprintf(body, sizeof body,
                         "{\"inputs\":[{\"name\":\"text\",\"shape\":[%d],\"datatype\":\"BYTES\","
                         "\"parameters\":{\"binary_data_size\":%zu}}]}",
                         braw[i].count, braw[i].n);
        memcpy(body + h, braw[i].raw, braw[i].n);
        api_request r;
        v2_request v;
        char e[256] = "";
        int code = parse(2, body, (size_t)h + braw[i].n, h, &r, &v, e);
        CHECK_MSG(code == 400 && strstr(e, braw[i].msg), "binary case %zu: %d %s", i, code, e);
    }
}

/* Renders r as JSON and as binary; checks both carry the same numbers and that they equal
 * the engine's outputs (with zero/-1 padding rows). */
TEST(codec_render_json_equals_binary)
{
    const char *body = "{\"id\":\"q\",\"parameters\":{\"output\":\"all\",\"top_k\":2},"
                       "\"inputs\":[{\"name\":\"tokens\",\"shape\":[2,4],\"datatype\":\"INT32\","
                       "\"data\":[1,2,3,4,5,6,0,0]},{\"name\":\"lengths\",\"shape\":[2],"
                       "\"datatype\":\"INT32\",\"data\":[4,2]}]}";
    api_request r;
    v2_request v;
    char err[256];
    REQUIRE(parse(0, body, strlen(body), -1, &r, &v, err) == 0);
    run(0, &r);
    size_t len, jlen;
    char *json = v2_render_infer(&r, &v, "tok", models[0].info, &len, &jlen);
    REQUIRE(json && len == jlen);
    for (int k = 0; k < V2_NOUTS; k++)
        v.binary[k] = 1;
    size_t blen, bjlen;
    char *bin = v2_render_infer(&r, &v, "tok", models[0].info, &blen, &bjlen);
    REQUIRE(bin);
    size_t want_bytes = (size_t)2 * 4 * (OUT + 2 + 2) * 4;
    CHECK_MSG(blen - bjlen == want_bytes, "%zu binary bytes", blen - bjlen);
    cJSON *j = cJSON_Parse(json);
    cJSON *bj = cJSON_ParseWithLength(bin, bjlen);
    REQUIRE(j && bj);
    CHECK(!strcmp(cJSON_GetObjectItem(j, "id")->valuestring, "q"));
    CHECK(!strcmp(cJSON_GetObjectItem(j, "model_version")->valuestring, "1"));
    const cJSON *outs = cJSON_GetObjectItem(j, "outputs"), *bouts = cJSON_GetObjectItem(bj, "outputs");
    REQUIRE(cJSON_GetArraySize(outs) == 3 && cJSON_GetArraySize(bouts) == 3);
    const char *p = bin + bjlen;
    for (int o = 0; o < 3; o++) {
        const cJSON *jo = cJSON_GetArrayItem(outs, o), *bo = cJSON_GetArrayItem(bouts, o);
        const cJSON *shape = cJSON_GetObjectItem(jo, "shape");
        int width = o == 0 ? OUT : 2;
        CHECK(cJSON_GetArraySize(shape) == 3 && cJSON_GetArrayItem(shape, 1)->valueint == 4 &&
              cJSON_GetArrayItem(shape, 2)->valueint == width);
        CHECK(!cJSON_GetObjectItem(bo, "data"));
        const cJSON *bsz = cJSON_GetObjectItem(cJSON_GetObjectItem(bo, "parameters"),
                                               "binary_data_size");
        CHECK(bsz && bsz->valueint == 2 * 4 * width * 4);
        const cJSON *data = cJSON_GetObjectItem(jo, "data");
        REQUIRE(cJSON_GetArraySize(data) == 2 * 4 * width);
        int i = 0, ok = 1;
        const cJSON *e;
        cJSON_ArrayForEach(e, data)
        {
            int b = i / (4 * width), t = (i / width) % 4, c = i % width;
            float fb;
            int32_t ib;
            memcpy(&fb, p + 4 * i, 4);
            memcpy(&ib, p + 4 * i, 4);
            int pad = t >= r.seqs[b].len;
            if (o == 0) {
                float want = pad ? 0 : r.outputs[b][t * OUT + c];
                ok = ok && (float)e->valuedouble == want && fb == want;
            } else if (o == 1) {
                ok = ok && e->valueint == ib && (pad ? ib == -1 : ib >= 0 && ib < OUT);
                if (!pad && c == 0) {
                    int idx[2];
                    float val[2];
                    engine_topk(r.outputs[b] + t * OUT, OUT, 2, idx, val);
                    ok = ok && ib == idx[0];
                }
            } else {
                ok = ok && (float)e->valuedouble == fb && (!pad || fb == 0);
            }
            i++;
        }
        CHECK_MSG(ok, "output %d: JSON, binary and engine differ", o);
        p += 2 * 4 * width * 4;
    }
    cJSON_Delete(j);
    cJSON_Delete(bj);
    free(json);
    free(bin);
    api_request_free(&r);
}

/* ------------------------------------------------------------------ over HTTP */

static cJSON *get_json(const char *path, long want_code)
{
    su_resp r;
    su_request(srv.port, "GET", path, NULL, 0, NULL, &r);
    cJSON *j = r.code == want_code ? cJSON_Parse(r.body) : NULL;
    if (!j)
        printf("  GET %s: %ld %s\n", path, r.code, r.body);
    free(r.body);
    return j;
}

TEST(http_metadata_config_ready)
{
    cJSON *j = get_json("/v2", 200);
    REQUIRE(j);
    CHECK(!strcmp(cJSON_GetObjectItem(j, "name")->valuestring, "balsa"));
    cJSON_Delete(j);
    j = get_json("/v2/health/live", 200);
    CHECK(j && cJSON_IsTrue(cJSON_GetObjectItem(j, "live")));
    cJSON_Delete(j);
    j = get_json("/v2/health/ready", 200);
    CHECK(j && cJSON_IsTrue(cJSON_GetObjectItem(j, "ready")));
    cJSON_Delete(j);
    j = get_json("/v2/models/tok/versions/1", 200);
    REQUIRE(j);
    const cJSON *in = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "inputs"), 0);
    CHECK(!strcmp(cJSON_GetObjectItem(in, "name")->valuestring, "tokens"));
    const cJSON *out = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "outputs"), 0);
    CHECK(cJSON_GetArrayItem(cJSON_GetObjectItem(out, "shape"), 1)->valueint == OUT);
    /* lengths is [batch, 1], as its config dims [1] say: perf_analyzer strips the batch
     * dimension from metadata shapes and refuses an input left with none. */
    const cJSON *len = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "inputs"), 1);
    const cJSON *lshape = cJSON_GetObjectItem(len, "shape");
    CHECK(!strcmp(cJSON_GetObjectItem(len, "name")->valuestring, "lengths") &&
          cJSON_GetArraySize(lshape) == 2 && cJSON_GetArrayItem(lshape, 0)->valueint == -1 &&
          cJSON_GetArrayItem(lshape, 1)->valueint == 1);
    cJSON_Delete(j);
    j = get_json("/v2/models/vec", 200);
    REQUIRE(j);
    in = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "inputs"), 0);
    CHECK(!strcmp(cJSON_GetObjectItem(in, "datatype")->valuestring, "FP32") &&
          cJSON_GetArrayItem(cJSON_GetObjectItem(in, "shape"), 2)->valueint == FEAT);
    cJSON_Delete(j);
    j = get_json("/v2/models/tok/config", 200);
    REQUIRE(j);
    CHECK(cJSON_GetObjectItem(j, "max_batch_size")->valueint == 8);
    CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "dynamic_batching"),
                              "max_queue_delay_microseconds")->valueint == 500);
    cJSON_Delete(j);
    j = get_json("/v2/models/tok/ready", 200);
    CHECK(j != NULL);
    cJSON_Delete(j);
    static const struct {
        const char *method, *path;
        long code;
        const char *allow;
    } errs[] = {
        {"GET", "/v2/models/nope", 404, ""},
        {"GET", "/v2/models/tok/versions/2/config", 404, ""},
        {"GET", "/v2/models/tok/bogus", 404, ""},
        {"GET", "/v2/other", 404, ""},
        {"GET", "/v2/models/tok/infer", 405, "POST"},
        {"POST", "/v2/models/tok/config", 405, "GET, HEAD"},
        {"DELETE", "/openapi.json", 405, "GET, HEAD"},
    };
    for (size_t i = 0; i < sizeof errs / sizeof *errs; i++) {
        su_resp r;
        su_request(srv.port, errs[i].method, errs[i].path, NULL, 0, NULL, &r);
        cJSON *e = cJSON_Parse(r.body);
        CHECK_MSG(r.code == errs[i].code && cJSON_IsString(cJSON_GetObjectItem(e, "error")) &&
                      !strcmp(r.allow, errs[i].allow),
                  "%s %s: %ld %s (Allow: %s)", errs[i].method, errs[i].path, r.code, r.body,
                  r.allow);
        cJSON_Delete(e);
        free(r.body);
    }
}

/* The same sequences through /infer and /v2/models/tok/infer (JSON, then binary). */
TEST(http_infer_same_as_native)
{
    su_resp n, j, b;
    const char *native = "{\"model\":\"tok\",\"inputs\":[[3,1,4,1,5],[9,2,6]]}";
    su_request(srv.port, "POST", "/infer", native, strlen(native), NULL, &n);
    const char *v2 = "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[2,5],\"datatype\":\"INT32\","
                     "\"data\":[3,1,4,1,5,9,2,6,0,0]},{\"name\":\"lengths\",\"shape\":[2],"
                     "\"datatype\":\"INT32\",\"data\":[5,3]}]}";
    su_request(srv.port, "POST", "/v2/models/tok/infer", v2, strlen(v2), NULL, &j);
    char hdr[512];
    int32_t tok[10] = {3, 1, 4, 1, 5, 9, 2, 6, 0, 0}, len[2] = {5, 3};
    size_t hl = (size_t)snprintf(hdr, sizeof hdr,
                                 "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[2,5],\"datatype\":"
                                 "\"INT32\",\"parameters\":{\"binary_data_size\":40}},{\"name\":"
                                 "\"lengths\",\"shape\":[2],\"datatype\":\"INT32\",\"parameters\":"
                                 "{\"binary_data_size\":8}}],\"outputs\":[{\"name\":\"output\","
                                 "\"parameters\":{\"binary_data\":true}}]}");
    char body[600], line[64];
    memcpy(body, hdr, hl);
    memcpy(body + hl, tok, 40);
    memcpy(body + hl + 40, len, 8);
    snprintf(line, sizeof line, "Inference-Header-Content-Length: %zu", hl);
    su_request(srv.port, "POST", "/v2/models/tok/versions/1/infer", body, hl + 48, line, &b);
    REQUIRE(n.code == 200 && j.code == 200 && b.code == 200);
    size_t bjl = strtoul(b.header_len, NULL, 10);
    CHECK_MSG(bjl > 0 && b.len == bjl + 2 * OUT * 4, "header %s, body %zu", b.header_len, b.len);
    CHECK(!strcmp(b.ctype, "application/octet-stream") && !strcmp(j.ctype, "application/json"));
    cJSON *nj = cJSON_Parse(n.body), *vj = cJSON_Parse(j.body);
    const cJSON *nouts = cJSON_GetObjectItem(nj, "outputs");
    const cJSON *vdata = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(vj, "outputs"), 0),
                                             "data");
    REQUIRE(cJSON_GetArraySize(vdata) == 2 * OUT && b.len >= bjl + 2 * OUT * 4);
    int ok = 1;
    for (int s = 0; s < 2; s++)
        for (int c = 0; c < OUT; c++) {
            float a = (float)cJSON_GetArrayItem(cJSON_GetArrayItem(nouts, s), c)->valuedouble;
            float v = (float)cJSON_GetArrayItem(vdata, s * OUT + c)->valuedouble, bv;
            memcpy(&bv, b.body + bjl + 4 * (s * OUT + c), 4);
            ok = ok && a == v && a == bv;
        }
    CHECK_MSG(ok, "/infer, v2 JSON and v2 binary differ");
    cJSON_Delete(nj);
    cJSON_Delete(vj);
    free(n.body);
    free(j.body);
    free(b.body);

    /* a refused v2 request: 400 with the codec's message, and the statistics count it */
    su_resp r;
    const char *bad = "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[1,1],\"datatype\":\"INT32\","
                      "\"data\":[40]}]}";
    su_request(srv.port, "POST", "/v2/models/tok/infer", bad, strlen(bad), NULL, &r);
    CHECK(r.code == 400 && strstr(r.body, "token id 40 out of range"));
    free(r.body);
    su_request(srv.port, "POST", "/v2/models/tok/infer", "{", 1, "Inference-Header-Content-Length: 9", &r);
    CHECK(r.code == 400 && strstr(r.body, "more than the body"));
    free(r.body);
    /* a body over body_limit (1 MiB by default): 413, like POST /infer */
    size_t big = (1u << 20) + 16;
    char *huge = malloc(big);
    REQUIRE(huge);
    memset(huge, ' ', big);
    su_request(srv.port, "POST", "/v2/models/tok/infer", huge, big, NULL, &r);
    free(huge);
    CHECK_MSG(r.code == 413 && strstr(r.body, "larger than the limit"), "%ld %s", r.code, r.body);
    free(r.body);
    /* v2 requests are in the Prometheus metrics, by handler and per model */
    su_request(srv.port, "GET", "/metrics", NULL, 0, NULL, &r);
    CHECK(strstr(r.body, "balsa_http_requests_total{handler=\"/v2\",code=\"200\"}") != NULL);
    CHECK(strstr(r.body, "balsa_http_requests_total{handler=\"/v2\",code=\"400\"}") != NULL);
    CHECK(strstr(r.body, "balsa_inference_requests_total{model=\"tok\",code=\"400\"}") != NULL);
    free(r.body);
    cJSON *st = get_json("/v2/models/tok/stats", 200);
    REQUIRE(st);
    const cJSON *ms = cJSON_GetArrayItem(cJSON_GetObjectItem(st, "model_stats"), 0);
    const cJSON *is = cJSON_GetObjectItem(ms, "inference_stats");
    CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(is, "success"), "count")->valueint >= 3);
    CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(is, "fail"), "count")->valueint >= 2);
    CHECK(cJSON_GetObjectItem(ms, "inference_count")->valueint >= 6);
    /* 5 steps with 2 then 1 sequence in each of 3 requests (batching may merge them) */
    CHECK(cJSON_GetObjectItem(ms, "execution_count")->valueint >= 5);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(ms, "batch_stats")) >= 1);
    cJSON_Delete(st);
}

static int run_script(const char *cmd)
{
    fflush(stdout);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(tritonclient_against_balsa)
{
    int deps = run_script("bash tests/py_deps.sh");
    CHECK_MSG(deps == 0, "tests/py_deps.sh failed: tritonclient and schemathesis come from PyPI");
    if (deps)
        return;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "python3 tests/v2_clients.py %d tok %d %d", srv.port, VOCAB, OUT);
    CHECK_MSG(run_script(cmd) == 0, "tests/v2_clients.py failed (log %s)", srv.log);
}

/* GET /openapi.json serves server/openapi.json byte for byte, and it is OpenAPI 3. */
TEST(openapi_document_served)
{
    FILE *f = fopen("server/openapi.json", "rb");
    REQUIRE(f);
    static char doc[1 << 17];
    size_t n = fread(doc, 1, sizeof doc, f);
    fclose(f);
    su_resp r;
    su_request(srv.port, "GET", "/openapi.json", NULL, 0, NULL, &r);
    CHECK(r.code == 200 && !strcmp(r.ctype, "application/json"));
    CHECK_MSG(r.len == n && memcmp(r.body, doc, n) == 0, "served %zu bytes, file %zu", r.len, n);
    cJSON *j = cJSON_Parse(r.body);
    const cJSON *paths = cJSON_GetObjectItem(j, "paths");
    CHECK(j && !strncmp(cJSON_GetObjectItem(j, "openapi")->valuestring, "3.", 2));
    static const char *const want[] = {"/infer", "/models", "/metrics", "/healthz", "/readyz",
                                       "/openapi.json", "/v2", "/v2/health/ready",
                                       "/v2/models/{model}/infer",
                                       "/v2/models/{model}/versions/{version}/stats"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK_MSG(cJSON_GetObjectItem(paths, want[i]) != NULL, "path %s not documented", want[i]);
    cJSON_Delete(j);
    free(r.body);
}

TEST(schemathesis_against_openapi)
{
    if (run_script("bash tests/py_deps.sh") != 0) {
        CHECK_MSG(0, "tests/py_deps.sh failed: schemathesis comes from PyPI");
        return;
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "bash tests/schemathesis.sh %d > /tmp/balsa_test_schemathesis.log 2>&1",
             srv.port);
    int rc = run_script(cmd);
    run_script("tail -n 12 /tmp/balsa_test_schemathesis.log");
    CHECK_MSG(rc == 0, "schemathesis found problems (exit %d): /tmp/balsa_test_schemathesis.log", rc);
}

int main(void)
{
    su_init();
    if (write_models()) {
        printf("0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    models[0] = (api_model){"tok", model_get_info(tok_model), tok_model};
    models[1] = (api_model){"vec", model_get_info(vec_model), vec_model};
    models[2] = (api_model){"fortunes", model_get_info(text_model), text_model};
    RUN(codec_json_tokens_with_lengths);
    RUN(codec_binary_inputs);
    RUN(codec_refusals);
    RUN(codec_render_json_equals_binary);
    RUN(codec_text_input);

    char m1[300], m2[300];
    snprintf(m1, sizeof m1, "tok=%s", tok_path);
    snprintf(m2, sizeof m2, "vec=%s", vec_path);
    const char *extra[] = {"--model", m1, "--model", m2, "--max-batch-size", "8",
                           "--max-queue-delay-us", "500", "--drain-delay-ms", "0",
                           "--model-control", "true", NULL};
    if (su_start(&srv, extra) == 0) {
        RUN(http_metadata_config_ready);
        RUN(http_infer_same_as_native);
        RUN(openapi_document_served);
        RUN(tritonclient_against_balsa);
        RUN(schemathesis_against_openapi);
        h_failed += su_stop_failed(&srv, 20);
    } else {
        h_failed++;
    }
    su_kill_children();
    unlink(tok_path);
    unlink(vec_path);
    model_free(tok_model);
    model_free(vec_model);
    model_free(text_model);
    be->ops->destroy(be);
    curl_global_cleanup();
    HARNESS_END();
}
