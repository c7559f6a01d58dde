/* Writes the seed corpora of the fuzz targets (tests/fuzz/run.sh calls it): model files
 * written by the library's own writer (model_file_write) for several kinds of network,
 * and request bodies, config files and descriptions like those in the README and the
 * tests. Usage: seeds OUTDIR (it creates OUTDIR/<target>/ and writes files there). Seeds
 * are generated rather than kept in git, so they follow the formats as they change. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"

static const char *outdir;

static void put(const char *target, const char *name, const void *data, size_t len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", outdir, target);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        perror(path);
        exit(1);
    }
    snprintf(path, sizeof path, "%s/%s/%s", outdir, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

static void put_str(const char *target, const char *name, const char *s)
{
    put(target, name, s, strlen(s));
}

/* A body for the targets whose first bytes are a model selector (fuzz_generate) or a
 * selector and an Inference-Header-Content-Length (fuzz_v2; hl < 0: absent). */
static void put_sel(const char *target, const char *name, int model, long hl, const void *body,
                    size_t len)
{
    size_t pre = strcmp(target, "v2") == 0 ? 3 : 1;
    unsigned char *b = malloc(pre + len);
    b[0] = (unsigned char)model;
    if (pre == 3) {
        unsigned v = hl < 0 ? 0xffff : (unsigned)hl;
        b[1] = (unsigned char)v;
        b[2] = (unsigned char)(v >> 8);
    }
    memcpy(b + pre, body, len);
    put(target, name, b, pre + len);
    free(b);
}

/* A model file for s (random weights; matrices balanced with bank and k when k > 0),
 * with vocabulary tokens "a".."w"... when vocab is set. */
static void put_model(const char *name, model_spec s, int bank, int k, int vocab)
{
    model_host h;
    memset(&h, 0, sizeof h);
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int n = model_tensor_list(&s, refs);
    unsigned long long seed = 99;
    for (int i = 0; i < n; i++) {
        size_t cnt = (size_t)refs[i].rows * (refs[i].cols > 0 ? refs[i].cols : 1);
        float *v = malloc(sizeof(float) * cnt);
        for (size_t j = 0; j < cnt; j++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            v[j] = (float)(seed >> 40) / (float)(1 << 24) - 0.5f;
        }
        if (model_host_put(&h, &refs[i], v, bank, k) != BALSA_OK)
            exit(1);
    }
    char err[512];
    if (vocab) {
        const char *toks[64];
        char text[64][4];
        for (int i = 0; i < s.vocab_size; i++) {
            snprintf(text[i], sizeof text[i], "%c", i < 26 ? 'a' + i : 'A' + i - 26);
            toks[i] = text[i];
        }
        if (model_vocab_set(&h.vocab, toks, s.vocab_size, err, sizeof err) != BALSA_OK) {
            fprintf(stderr, "seeds: %s\n", err);
            exit(1);
        }
    }
    char path[512];
    snprintf(path, sizeof path, "%s/model_load", outdir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/model_load/%s.safetensors", outdir, name);
    if (model_file_write(path, &s, &h, err, sizeof err) != BALSA_OK) {
        fprintf(stderr, "seeds: %s\n", err);
        exit(1);
    }
    model_host_free(&h);
}

static void model_seeds(void)
{
    model_spec t = fz_spec(MODEL_INPUT_TOKENS), v = fz_spec(MODEL_INPUT_VECTORS);
    put_model("tok_dense", t, 4, 0, 0);
    put_model("tok_balanced", t, 4, 2, 0);
    put_model("tok_vocab", t, 8, 3, 1);
    v.num_layers = 2;
    v.bidirectional = 1;
    put_model("vec_bidi", v, 4, 1, 0);
    model_spec fc = fz_spec(MODEL_INPUT_VECTORS);
    fc.hidden_size = 0;
    fc.num_layers = 0;
    fc.lstm_bias = 0;
    fc.n_fc = 2;
    fc.fc[0] = (model_fc_spec){5, BALSA_ACT_RELU, 1};
    fc.fc[1] = (model_fc_spec){4, BALSA_ACT_TANH, 0};
    fc.head = MODEL_HEAD_LOG_SOFTMAX;
    put_model("fc_only", fc, 4, 2, 0);
}

static void infer_seeds(void)
{
    static const char *const b[] = {
        "{\"model\": \"tok\", \"inputs\": [[1, 2, 3], [22]], \"output\": \"all\", \"top_k\": 3, "
        "\"timeout_ms\": 250}",
        "{\"model\": \"vec\", \"inputs\": [[[1, 2, 3], [0.5, -1e-3, 4]]], \"return_state\": true}",
        "{\"model\": \"fortunes\", \"text\": \"And the\", \"generate\": 5, \"temperature\": 0.8, "
        "\"seed\": 7, \"stop\": [\"\\n\", \"the\"]}",
        "{\"model\": \"fortunes\", \"text\": [\"The \", \"Q: Why\"], \"top_k\": 3}",
        "{\"model\": \"fortunes\", \"text\": \"And the\", \"generate\": 3, \"stream\": true}",
        "{\"model\": \"tok\", \"inputs\": [[1, 2]], \"initial_state\": [{\"h\": [[0, 0.5, 0, 0, 0, "
        "0, 0, 1]], \"c\": [[1, 0, 0, 0, 0, 0, 0, -1]]}], \"return_state\": true}",
        "{\"model\": \"tok\", \"inputs\": [[1], [2, 3]], \"generate\": 4, \"seed\": 1}",
        "{\"model\": \"fortunes\", \"inputs\": [\"abc\", [1, 2]], \"output\": \"last\", "
        "\"initial_state\": [null, null]}",
        "{\"model\": \"tok\", \"inputs\": [[1, 2]], \"sequence_id\": 42, \"sequence_start\": "
        "true, \"sequence_end\": false, \"initial_state\": [null]}",
        "{\"model\": \"fortunes\", \"text\": \"And\", \"generate\": 2, \"sequence_id\": \"s-1\"}",
    };
    for (size_t i = 0; i < sizeof b / sizeof *b; i++) {
        char name[32];
        snprintf(name, sizeof name, "body%zu.json", i);
        put_str("infer", name, b[i]);
    }
}

static void generate_seeds(void)
{
    static const char *const b[] = {
        "{\"text_input\": \"And the\", \"parameters\": {\"max_tokens\": 5, \"temperature\": 0.5, "
        "\"seed\": 3, \"stop\": \"\\n\"}}",
        "{\"text_input\": \"Love is\", \"parameters\": {\"stop\": [\"s\", \"e\"], \"stream\": "
        "false}}",
        "{\"text_input\": \"Q\"}",
        "{\"text_input\": \"And\", \"parameters\": {\"sequence_id\": 7, \"sequence_start\": "
        "true, \"sequence_end\": true}}",
    };
    for (size_t i = 0; i < sizeof b / sizeof *b; i++) {
        char name[32];
        snprintf(name, sizeof name, "body%zu", i);
        put_sel("generate", name, 2, -1, b[i], strlen(b[i]));
    }
    put_sel("generate", "tok", 0, -1, b[2], strlen(b[2]));
}

/* A binary v2 body: the JSON header, then raw bytes. */
static void put_v2_bin(const char *name, int model, const char *hdr, const void *raw, size_t rl)
{
    size_t hl = strlen(hdr);
    char *body = malloc(hl + rl);
    memcpy(body, hdr, hl);
    memcpy(body + hl, raw, rl);
    put_sel("v2", name, model, (long)hl, body, hl + rl);
    free(body);
}

static void v2_seeds(void)
{
    static const char *const j[] = {
        "{\"id\":\"a\",\"parameters\":{\"output\":\"all\",\"top_k\":3,\"extra\":1},\"inputs\":"
        "[{\"name\":\"tokens\",\"shape\":[2,3],\"datatype\":\"INT32\",\"data\":[[1,2,3],[4,5,9]]},"
        "{\"name\":\"lengths\",\"shape\":[2],\"datatype\":\"INT64\",\"data\":[3,2]}],"
        "\"outputs\":[{\"name\":\"output\"},{\"name\":\"top_k_indices\",\"parameters\":"
        "{\"binary_data\":true}},{\"name\":\"top_k_values\"}]}",
        "{\"inputs\":[{\"name\":\"features\",\"shape\":[1,2,3],\"datatype\":\"FP32\",\"data\":"
        "[[1,2,3],[4,5,6]]}],\"parameters\":{\"timeout_ms\":100}}",
        "{\"inputs\":[{\"name\":\"text\",\"shape\":[3,1],\"datatype\":\"BYTES\",\"data\":"
        "[[\"And the\"],[\"Lo\"],[\"Q: Why?\"]]}],\"parameters\":{\"top_k\":3}}",
        "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[1,2],\"datatype\":\"INT32\",\"data\":"
        "[1,2]}],\"parameters\":{\"sequence_id\":\"s\",\"sequence_start\":true,\"timeout\":"
        "2500}}",
    };
    put_sel("v2", "json_tok", 0, -1, j[0], strlen(j[0]));
    put_sel("v2", "json_vec", 1, -1, j[1], strlen(j[1]));
    put_sel("v2", "json_text", 2, -1, j[2], strlen(j[2]));
    put_sel("v2", "json_seq", 0, -1, j[3], strlen(j[3]));

    int32_t tok[6] = {7, 8, 9, 10, 11, 12}, len[2] = {1, 3};
    unsigned char raw[64];
    memcpy(raw, tok, 24);
    memcpy(raw + 24, len, 8);
    put_v2_bin("bin_tok", 0,
               "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[2,3],\"datatype\":\"INT32\","
               "\"parameters\":{\"binary_data_size\":24}},{\"name\":\"lengths\",\"shape\":"
               "[2,1],\"datatype\":\"INT32\",\"parameters\":{\"binary_data_size\":8}}],"
               "\"parameters\":{\"binary_data_output\":true}}",
               raw, 32);
    int64_t tok64[2] = {3, 4};
    put_v2_bin("bin_tok64", 0,
               "{\"inputs\":[{\"name\":\"tokens\",\"shape\":[1,2],\"datatype\":\"INT64\","
               "\"parameters\":{\"binary_data_size\":16}}],\"outputs\":[{\"name\":"
               "\"top_k_values\",\"parameters\":{\"binary_data\":true}}]}",
               tok64, sizeof tok64);
    float f[6] = {0.1f, -0.2f, 0.3f, 1.5f, -2.0f, 0.0f};
    put_v2_bin("bin_vec", 1,
               "{\"inputs\":[{\"name\":\"features\",\"shape\":[1,2,3],\"datatype\":\"FP32\","
               "\"parameters\":{\"binary_data_size\":24}}],\"parameters\":{\"output\":\"all\"}}",
               f, sizeof f);
    const char *texts[] = {"And the", "Lo"};
    size_t rl = 0;
    for (int i = 0; i < 2; i++) {
        uint32_t l = (uint32_t)strlen(texts[i]);
        memcpy(raw + rl, &l, 4);
        memcpy(raw + rl + 4, texts[i], l);
        rl += 4 + l;
    }
    char hdr[256];
    snprintf(hdr, sizeof hdr,
             "{\"inputs\":[{\"name\":\"text\",\"shape\":[2],\"datatype\":\"BYTES\","
             "\"parameters\":{\"binary_data_size\":%zu}}],\"parameters\":{\"top_k\":2}}",
             rl);
    put_v2_bin("bin_text", 2, hdr, raw, rl);
}

static void config_seeds(void)
{
    put_str("config", "full.json",
            "{\n  \"host\": \"127.0.0.1\",\n  \"port\": 8080,\n  \"backend\": \"auto\",\n"
            "  \"threads\": 0,\n  \"http_threads\": 2,\n  \"connection_limit\": 512,\n"
            "  \"connection_timeout_s\": 30,\n  \"body_limit\": 16777216,\n"
            "  \"access_log\": false,\n  \"max_request_steps\": 100000,\n"
            "  \"max_output_values\": 50000000,\n  \"drain_delay_ms\": 0,\n"
            "  \"drain_timeout_ms\": 10000,\n  \"max_batch_size\": 16,\n"
            "  \"max_queue_delay_us\": 500,\n  \"queue_capacity\": 256,\n"
            "  \"request_timeout_ms\": 10000,\n  \"models\": [\n"
            "    {\"name\": \"demo\", \"path\": \"models/demo/demo.safetensors\", "
            "\"max_batch_size\": 8},\n"
            "    {\"name\": \"fortunes\", \"path\": \"models/fortunes/fortunes-b90.safetensors\"}\n"
            "  ]\n}\n");
    put_str("config", "small.json", "{\"port\": 9000, \"models\": [{\"path\": \"x.safetensors\"}]}");
}

static void convert_seeds(void)
{
    model_spec t = fz_spec(MODEL_INPUT_TOKENS);
    model_layout lay[MODEL_MAX_TENSORS];
    memset(lay, 0, sizeof lay);
    char *desc = model_desc_print(&t, NULL, NULL);
    put_str("convert", "tok_plain.json", desc);
    free(desc);
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int n = model_tensor_list(&t, refs);
    for (int i = 0; i < n; i++)
        if (refs[i].cols > 0 && refs[i].kind != MODEL_T_EMBEDDING)
            lay[i] = (model_layout){1, 4, 2};
    desc = model_desc_print(&t, lay, NULL);
    put_str("convert", "tok_matrices.json", desc);
    free(desc);
    put_str("convert", "tok_vocab.json",
            "{\"format_version\": 1, \"name\": \"t\", \"input\": \"tokens\", \"vocab_size\": 23, "
            "\"input_size\": 6, \"hidden_size\": 8, \"num_layers\": 1, \"lstm_bias\": true, "
            "\"fc\": [{\"out\": 23, \"activation\": \"none\", \"bias\": true}], \"head\": "
            "\"softmax\", \"comment\": \"x\", \"vocabulary\": [\"a\",\"b\",\"c\",\"d\",\"e\",\"f\","
            "\"g\",\"h\",\"i\",\"j\",\"k\",\"l\",\"m\",\"n\",\"o\",\"p\",\"q\",\"r\",\"s\",\"t\","
            "\"u\",\"v\",\"w\"]}");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: seeds OUTDIR\n");
        return 2;
    }
    outdir = argv[1];
    mkdir(outdir, 0755);
    model_seeds();
    infer_seeds();
    generate_seeds();
    v2_seeds();
    config_seeds();
    convert_seeds();
    return 0;
}
