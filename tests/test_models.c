/* Tests of the model file loader against broken files: a good model is written from C,
 * then every kind of damage we could think of (truncation at many points, header length,
 * JSON, dtypes, shapes, data_offsets, missing and unknown tensors, bad sparse offsets,
 * NaN, inconsistent description) must be refused with a message naming the problem and
 * the tensor, without crashing or reading out of bounds (run under ASan in CI). Also
 * `balsa convert` / `balsa inspect` through the library and the binary. */
#include <cJSON.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_ref.h"
#include "models/convert.h"
#include "models/safetensors.h"

static balsa_backend *be;
static char dir[] = "/tmp/balsa_models_XXXXXX";
static char good[256];
static unsigned char *good_bytes;
static size_t good_size;

static model_spec test_spec(void)
{
    model_spec s;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "tiny");
    s.input_kind = MODEL_INPUT_TOKENS;
    s.vocab_size = 11;
    s.input_size = 6;
    s.hidden_size = 5;
    s.num_layers = 2;
    s.bidirectional = 1;
    s.lstm_bias = 1;
    s.n_fc = 1;
    s.fc[0] = (model_fc_spec){4, BALSA_ACT_TANH, 1};
    s.head = MODEL_HEAD_LOG_SOFTMAX;
    return s;
}

static char *path_of(const char *name)
{
    static char p[4][256];
    static int i;
    i = (i + 1) % 4;
    snprintf(p[i], sizeof p[i], "%s/%s", dir, name);
    return p[i];
}

static void write_bytes(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    BALSA_ASSERT(f);
    BALSA_ASSERT(n == 0 || fwrite(b, 1, n, f) == n);
    fclose(f);
}

/* Loads path; 1 when refused with a message holding every word in words (NULL-ended). */
static int refused_with(const char *path, const char *const *words)
{
    balsa_model *m = NULL;
    char err[512] = "";
    balsa_status st = model_load(path, be, &m, err, sizeof err);
    if (st == BALSA_OK) {
        printf("  %s: loaded, expected a refusal\n", path);
        model_free(m);
        return 0;
    }
    if (m || !err[0]) {
        printf("  %s: refused without a message or with a model\n", path);
        return 0;
    }
    for (; words && *words; words++)
        if (!strstr(err, *words)) {
            printf("  %s: message \"%s\" lacks \"%s\"\n", path, err, *words);
            return 0;
        }
    return 1;
}
#define REFUSED(path, ...) refused_with(path, (const char *const[]){__VA_ARGS__, NULL})

TEST(good_model_loads)
{
    balsa_model *m;
    char err[256];
    balsa_status st = model_load(good, be, &m, err, sizeof err);
    CHECK_MSG(st == BALSA_OK, "%s", err);
    if (st == BALSA_OK) {
        CHECK(strcmp(model_get_info(m)->name, "tiny") == 0);
        model_free(m);
    }
}

TEST(missing_and_tiny_files)
{
    CHECK(REFUSED(path_of("does-not-exist"), "cannot open"));
    CHECK(REFUSED(dir, "not a regular file"));
    write_bytes(path_of("empty"), "", 0);
    CHECK(REFUSED(path_of("empty"), "too small"));
    write_bytes(path_of("seven"), "\x02\0\0\0\0\0\0", 7);
    CHECK(REFUSED(path_of("seven"), "too small"));
}

/* Every prefix of the good file is refused (header, data, every boundary). */
TEST(truncated_everywhere)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | good_bytes[i];
    size_t hdr = 8 + (size_t)n;
    int tried = 0;
    for (size_t len = 0; len < good_size; len += len < hdr + 64 ? 1 : 37) {
        write_bytes(path_of("trunc"), good_bytes, len);
        int ok = len < 8     ? REFUSED(path_of("trunc"), "too small")
                 : len < hdr ? REFUSED(path_of("trunc"), "header length")
                             : REFUSED(path_of("trunc"), "past the end");
        CHECK_MSG(ok, "truncated to %zu of %zu bytes", len, good_size);
        tried++;
    }
    write_bytes(path_of("trunc"), good_bytes, good_size - 1);
    CHECK(REFUSED(path_of("trunc"), "past the end", "file truncated"));
    CHECK(tried > 100);
}

TEST(header_length_out_of_range)
{
    unsigned char *b = malloc(good_size);
    memcpy(b, good_bytes, good_size);
    uint64_t lens[] = {~0ull, 1ull << 40, good_size, good_size - 7, 0, 1};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
        for (int j = 0; j < 8; j++)
            b[j] = (unsigned char)(lens[i] >> (8 * j));
        write_bytes(path_of("hlen"), b, good_size);
        CHECK_MSG(REFUSED(path_of("hlen"), "header length"), "length %llu",
                  (unsigned long long)lens[i]);
    }
    free(b);
}

/* The good file's header and data, for rewriting. */
static cJSON *good_header(const unsigned char **data, size_t *dlen)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | good_bytes[i];
    *data = good_bytes + 8 + n;
    *dlen = good_size - 8 - n;
    return cJSON_ParseWithLength((const char *)good_bytes + 8, n);
}

/* Writes a file with header text hdr (as is) and the given data. */
static void write_raw(const char *path, const char *hdr, const unsigned char *data, size_t dlen)
{
    size_t n = strlen(hdr);
    unsigned char *b = malloc(8 + n + dlen);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(b + 8, hdr, n);
    memcpy(b + 8 + n, data, dlen);
    write_bytes(path, b, 8 + n + dlen);
    free(b);
}

static void write_json(const char *path, cJSON *h, const unsigned char *data, size_t dlen)
{
    char *txt = cJSON_PrintUnformatted(h);
    write_raw(path, txt, data, dlen);
    free(txt);
}

TEST(bad_header_json)
{
    const unsigned char *data;
    size_t dlen;
    cJSON_Delete(good_header(&data, &dlen));
    write_raw(path_of("j"), "{\"a\": [1, 2", data, dlen);
    CHECK(REFUSED(path_of("j"), "not valid JSON"));
    write_raw(path_of("j"), "[1, 2]  ", data, dlen);
    CHECK(REFUSED(path_of("j"), "not a JSON object"));
    write_raw(path_of("j"), "{} x", data, dlen);
    CHECK(REFUSED(path_of("j"), "unexpected bytes"));
    write_raw(path_of("j"), "{\"__metadata__\": {\"balsa\": 3}}", data, 0);
    CHECK(REFUSED(path_of("j"), "__metadata__", "not a string"));
    write_raw(path_of("j"), "{\"w\": {\"dtype\": \"F32\", \"shape\": [2]}}", data, 8);
    CHECK(REFUSED(path_of("j"), "tensor w", "data_offsets"));
    write_raw(path_of("j"), "{}", data, 0);
    CHECK(REFUSED(path_of("j"), "metadata", "balsa"));
    /* a NUL inside a string would cut a tensor name short: "w\u0000x" read as "w" */
    write_raw(path_of("j"), "{\"w\\u0000x\": {\"dtype\": \"F32\", \"shape\": [0], "
                            "\"data_offsets\": [0, 0]}}", data, 0);
    CHECK(REFUSED(path_of("j"), "header: a string holds a NUL character at byte 3"));
    /* and inside the description (the "balsa" metadata string, JSON in JSON) */
    write_raw(path_of("j"), "{\"__metadata__\": {\"balsa\": \"{\\\"name\\\": \\\"m\\\\u0000\\\"}\"}}",
              data, 0);
    CHECK(REFUSED(path_of("j"), "description: a string holds a NUL character at byte 11"));
    /* a control character, raw in a name or between tokens (cJSON would take both) */
    write_raw(path_of("j"), "{\"w\x01x\": {\"dtype\": \"F32\", \"shape\": [0], "
                            "\"data_offsets\": [0, 0]}}", data, 0);
    CHECK(REFUSED(path_of("j"), "header: control character 0x01 at byte 3 (JSON allows"));
    write_raw(path_of("j"), "{\"__metadata__\":\f{\"balsa\": \"{}\"}}", data, 0);
    CHECK(REFUSED(path_of("j"), "header: control character 0x0c at byte 16"));
    /* in the description, escaped in the header's string: {"name":<VT>"m"} */
    write_raw(path_of("j"), "{\"__metadata__\": {\"balsa\": \"{\\\"name\\\":\\u000b\\\"m\\\"}\"}}",
              data, 0);
    CHECK(REFUSED(path_of("j"), "description: control character 0x0b at byte 8"));
    /* a number JSON does not have, which strtod would read: data_offsets [0, 00] */
    write_raw(path_of("j"), "{\"w\": {\"dtype\": \"F32\", \"shape\": [0], "
                            "\"data_offsets\": [0, 00]}}", data, 0);
    CHECK(REFUSED(path_of("j"), "header: number \"00\" at byte 57 is not JSON (JSON numbers"));
}

/* Found while fuzzing (the duplicate-name check compared every pair of tensors: 108 s for
 * this header of 100k empty tensors, hours near the 64 MiB header limit): a large header
 * is checked quickly and a duplicate anywhere in it is still named. */
TEST(many_tensors_and_a_duplicate)
{
    enum { N = 100000 };
    size_t cap = (size_t)N * 64 + 64, at = 0;
    char *h = malloc(cap);
    REQUIRE(h);
    h[at++] = '{';
    for (int i = 0; i < N; i++)
        at += (size_t)snprintf(h + at, cap - at,
                               "%s\"t%06d\":{\"dtype\":\"U8\",\"shape\":[0],"
                               "\"data_offsets\":[0,0]}",
                               i ? "," : "", i == N - 1 ? 4711 : i);
    snprintf(h + at, cap - at, "}");
    write_raw(path_of("many"), h, (const unsigned char *)"", 0);
    CHECK(REFUSED(path_of("many"), "tensor t004711: named twice in the header"));
    free(h);
}

/* Edits one tensor's header entry of the good file and checks the refusal. */
typedef void (*header_edit)(cJSON *entry, cJSON *root);

static int edited_refused(const char *tensor, header_edit edit, size_t extra_data,
                          const char *w1, const char *w2)
{
    const unsigned char *data;
    size_t dlen;
    cJSON *h = good_header(&data, &dlen);
    edit(cJSON_GetObjectItemCaseSensitive(h, tensor), h);
    unsigned char *d = calloc(dlen + extra_data + 1, 1);
    memcpy(d, data, dlen);
    write_json(path_of("edit"), h, d, dlen + extra_data);
    cJSON_Delete(h);
    free(d);
    return REFUSED(path_of("edit"), w1, w2);
}

static void set_offsets(cJSON *e, double b, double en)
{
    cJSON *o = cJSON_CreateArray();
    cJSON_AddItemToArray(o, cJSON_CreateNumber(b));
    cJSON_AddItemToArray(o, cJSON_CreateNumber(en));
    cJSON_ReplaceItemInObjectCaseSensitive(e, "data_offsets", o);
}
static double off_at(cJSON *e, int i)
{
    return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(e, "data_offsets"), i)->valuedouble;
}
static void ed_past_end(cJSON *e, cJSON *r)
{
    (void)r;
    set_offsets(e, off_at(e, 0) + 1e6, off_at(e, 1) + 1e6);
}
static void ed_overlap(cJSON *e, cJSON *r)
{
    (void)r;
    set_offsets(e, off_at(e, 0) - 8, off_at(e, 1) - 8);
}
static void ed_reversed(cJSON *e, cJSON *r)
{
    (void)r;
    set_offsets(e, off_at(e, 1), off_at(e, 0));
}
static void ed_dtype_f64(cJSON *e, cJSON *r)
{
    (void)r;
    cJSON_ReplaceItemInObjectCaseSensitive(e, "dtype", cJSON_CreateString("F64"));
}
static void ed_dtype_f16(cJSON *e, cJSON *r)
{
    (void)r;
    cJSON_ReplaceItemInObjectCaseSensitive(e, "dtype", cJSON_CreateString("F16"));
}
static void ed_shape_neg(cJSON *e, cJSON *r)
{
    (void)r;
    cJSON_ReplaceItemInArray(cJSON_GetObjectItemCaseSensitive(e, "shape"), 0,
                             cJSON_CreateNumber(-4));
}
static void ed_shape_frac(cJSON *e, cJSON *r)
{
    (void)r;
    cJSON_ReplaceItemInArray(cJSON_GetObjectItemCaseSensitive(e, "shape"), 0,
                             cJSON_CreateNumber(2.5));
}
static void ed_shape_bytes(cJSON *e, cJSON *r)
{
    (void)r;
    cJSON_ReplaceItemInArray(cJSON_GetObjectItemCaseSensitive(e, "shape"), 0,
                             cJSON_CreateNumber(3));
}
static void ed_duplicate(cJSON *e, cJSON *r)
{
    cJSON_AddItemToObject(r, "fc.0.bias", cJSON_Duplicate(e, 1));
}
static void ed_nothing(cJSON *e, cJSON *r)
{
    (void)e;
    (void)r;
}

TEST(bad_data_offsets_dtypes_shapes)
{
    CHECK(edited_refused("fc.0.bias", ed_past_end, 0, "fc.0.bias", "past the end"));
    CHECK(edited_refused("fc.0.bias", ed_overlap, 0, "fc.0.bias", "overlap"));
    CHECK(edited_refused("fc.0.bias", ed_reversed, 0, "fc.0.bias", "begin <= end"));
    CHECK(edited_refused("fc.0.bias", ed_dtype_f64, 0, "fc.0.bias", "unsupported dtype"));
    CHECK(edited_refused("fc.0.bias", ed_dtype_f16, 0, "fc.0.bias", "bytes"));
    CHECK(edited_refused("embedding.weight", ed_shape_neg, 0, "embedding.weight", "shape"));
    CHECK(edited_refused("embedding.weight", ed_shape_frac, 0, "embedding.weight", "shape"));
    CHECK(edited_refused("embedding.weight", ed_shape_bytes, 0, "embedding.weight", "bytes"));
    CHECK(edited_refused("fc.0.bias", ed_duplicate, 0, "fc.0.bias", "twice"));
    CHECK(edited_refused("fc.0.bias", ed_nothing, 16, "16 bytes after", "last tensor"));
}

/* Rewrites the good model through st_write with one tensor changed by fn. */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[3];
    void *data; /* replacement data, or NULL to keep */
    int drop;
} tensor_change;

static void rewrite(const char *path, const tensor_change *c, const char *desc, int add_extra)
{
    st_file f;
    char err[256];
    BALSA_ASSERT(st_open(good, &f, err, sizeof err) == BALSA_OK);
    st_out outs[128];
    int n = 0;
    for (int i = 0; i < f.ntensors; i++) {
        const st_tensor *t = &f.tensors[i];
        st_out o = {t->name, t->dtype, t->ndim, {0}, st_data(&f, t)};
        for (int d = 0; d < t->ndim; d++)
            o.shape[d] = t->shape[d];
        if (c && strcmp(c->name, t->name) == 0) {
            if (c->drop)
                continue;
            o.dtype = c->dtype;
            o.ndim = c->ndim;
            for (int d = 0; d < c->ndim; d++)
                o.shape[d] = c->shape[d];
            if (c->data)
                o.data = c->data;
        }
        outs[n++] = o;
    }
    static const float extra[2] = {1, 2};
    if (add_extra)
        outs[n++] = (st_out){"extra.weight", ST_F32, 1, {2}, extra};
    const char *meta[2] = {"balsa", desc ? desc : st_meta_get(&f, "balsa")};
    BALSA_ASSERT(st_write(path, outs, n, meta, 1, err, sizeof err) == BALSA_OK);
    st_close(&f);
}

static const st_tensor *good_tensor(st_file *f, const char *name)
{
    char err[256];
    BALSA_ASSERT(st_open(good, f, err, sizeof err) == BALSA_OK);
    const st_tensor *t = st_find(f, name);
    BALSA_ASSERT(t);
    return t;
}

TEST(missing_unknown_wrong_tensors)
{
    tensor_change c = {.name = "lstm.bias_hh_l1_reverse", .drop = 1};
    rewrite(path_of("t"), &c, NULL, 0);
    CHECK(REFUSED(path_of("t"), "lstm.bias_hh_l1_reverse", "missing"));
    c = (tensor_change){.name = "lstm.weight_hh_l0.offsets", .drop = 1};
    rewrite(path_of("t"), &c, NULL, 0);
    CHECK(REFUSED(path_of("t"), "lstm.weight_hh_l0.offsets", "missing"));
    rewrite(path_of("t"), NULL, NULL, 1);
    CHECK(REFUSED(path_of("t"), "extra.weight", "unknown"));

    st_file f;
    const st_tensor *t = good_tensor(&f, "fc.0.bias");
    size_t nb = st_numel(t);
    c = (tensor_change){"fc.0.bias", ST_F32, 1, {(int64_t)nb - 1}, NULL, 0};
    rewrite(path_of("t"), &c, NULL, 0);
    CHECK(REFUSED(path_of("t"), "fc.0.bias", "shape [3], expected [4]"));
    c = (tensor_change){"fc.0.bias", ST_F32, 2, {1, (int64_t)nb}, NULL, 0};
    rewrite(path_of("t"), &c, NULL, 0);
    CHECK(REFUSED(path_of("t"), "fc.0.bias", "shape"));
    c = (tensor_change){"fc.0.bias", ST_U8, 1, {(int64_t)nb}, NULL, 0};
    rewrite(path_of("t"), &c, NULL, 0);
    CHECK(REFUSED(path_of("t"), "fc.0.bias", "dtype U8, expected F32"));
    st_close(&f);

    t = good_tensor(&f, "lstm.weight_ih_l0.values");
    c = (tensor_change){"lstm.weight_ih_l0.values", ST_F32, 3,
                        {t->shape[0], t->shape[1], t->shape[2] - 1}, NULL, 0};
    rewrite(path_of("t"), &c, NULL, 0);
    CHECK(REFUSED(path_of("t"), "lstm.weight_ih_l0.values", "shape"));
    st_close(&f);
}

/* Copies a good tensor's bytes, lets fn spoil them, rewrites the model with them. */
static int spoiled_refused(const char *name, void (*fn)(unsigned char *, size_t), const char *w1,
                           const char *w2)
{
    st_file f;
    const st_tensor *t = good_tensor(&f, name);
    size_t bytes = t->end - t->begin;
    unsigned char *d = malloc(bytes);
    memcpy(d, st_data(&f, t), bytes);
    fn(d, bytes);
    tensor_change c = {name, t->dtype, t->ndim, {t->shape[0], t->shape[1], t->shape[2]}, d, 0};
    rewrite(path_of("v"), &c, NULL, 0);
    st_close(&f);
    free(d);
    return REFUSED(path_of("v"), w1, w2);
}

static void sp_offset_big(unsigned char *d, size_t n)
{
    (void)n;
    d[1] = 200;
}
static void sp_offset_order(unsigned char *d, size_t n)
{
    (void)n;
    unsigned char t = d[0];
    d[0] = d[1];
    d[1] = t;
}
static void sp_nan(unsigned char *d, size_t n)
{
    float v = NAN;
    memcpy(d + (n / 8) * 4, &v, 4);
}
static void sp_inf(unsigned char *d, size_t n)
{
    float v = -INFINITY;
    memcpy(d + n - 4, &v, 4);
}

TEST(bad_values_and_offsets)
{
    CHECK(spoiled_refused("lstm.weight_hh_l1.offsets", sp_offset_big, "lstm.weight_hh_l1.offsets",
                          "outside the bank"));
    CHECK(spoiled_refused("fc.0.weight.offsets", sp_offset_order, "fc.0.weight.offsets",
                          "ascending"));
    CHECK(spoiled_refused("lstm.weight_ih_l0_reverse.values", sp_nan,
                          "lstm.weight_ih_l0_reverse.values", "not finite"));
    CHECK(spoiled_refused("embedding.weight", sp_inf, "embedding.weight", "not finite"));
    CHECK(spoiled_refused("lstm.bias_ih_l0", sp_nan, "lstm.bias_ih_l0", "not finite"));
    CHECK(spoiled_refused("lstm.weight_hh_l0_reverse", sp_nan, "lstm.weight_hh_l0_reverse",
                          "not finite"));
}

/* The description, edited as text. */
static int desc_refused(const char *from, const char *to, const char *w1, const char *w2)
{
    st_file f;
    char err[256];
    BALSA_ASSERT(st_open(good, &f, err, sizeof err) == BALSA_OK);
    const char *d = st_meta_get(&f, "balsa");
    const char *at = strstr(d, from);
    BALSA_ASSERT(at);
    char *nd = malloc(strlen(d) + strlen(to) + 1);
    memcpy(nd, d, (size_t)(at - d));
    strcpy(nd + (at - d), to);
    strcat(nd, at + strlen(from));
    st_close(&f);
    rewrite(path_of("d"), NULL, nd, 0);
    free(nd);
    return REFUSED(path_of("d"), w1, w2);
}

TEST(inconsistent_description)
{
    CHECK(desc_refused("\"hidden_size\":5", "\"hidden_size\":6", "matrices", "shape"));
    CHECK(desc_refused("\"vocab_size\":11", "\"vocab_size\":12", "embedding.weight", "shape"));
    CHECK(desc_refused("\"out\":4", "\"out\":5", "matrices.fc.0.weight", "shape"));
    CHECK(desc_refused("\"num_layers\":2", "\"num_layers\":1", "matrices", "not a weight matrix"));
    CHECK(desc_refused("\"num_layers\":2", "\"num_layers\":3", "matrices", "lstm.weight_ih_l2"));
    CHECK(desc_refused("\"bidirectional\":true", "\"bidirectional\":false", "matrices", ""));
    CHECK(desc_refused("\"format_version\":1", "\"format_version\":2", "format_version", ""));
    CHECK(desc_refused("\"format_version\":1", "\"fromat_version\":1", "unknown key", ""));
    CHECK(desc_refused("\"head\":\"log_softmax\"", "\"head\":\"argmax\"", "head", ""));
    CHECK(desc_refused("\"activation\":\"tanh\"", "\"activation\":\"gelu\"", "activation", ""));
    CHECK(desc_refused("\"input\":\"tokens\"", "\"input\":\"pixels\"", "input", ""));
    CHECK(desc_refused("\"k\":2", "\"k\":3", "lstm.weight_ih_l0.values", "shape"));
    CHECK(desc_refused("\"k\":2", "\"k\":99", "k", "1..8"));
    CHECK(desc_refused("\"layout\":\"dense\"", "\"layout\":\"csr\"", "layout", ""));
    CHECK(desc_refused("\"lstm_bias\":true", "\"lstm_bias\":false", "unknown", "lstm.bias"));
    CHECK(desc_refused("{", "[", "description", "JSON"));
    CHECK(desc_refused("\"hidden_size\":5", "\"hidden_size\":-5", "hidden_size", ""));
}

/* Random damage to the header must never crash or read out of bounds (ASan). */
TEST(random_header_damage)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | good_bytes[i];
    unsigned char *b = malloc(good_size);
    unsigned long long rng = 99;
    int refused = 0;
    for (int iter = 0; iter < 300; iter++) {
        memcpy(b, good_bytes, good_size);
        int flips = 1 + (int)(h_rand_u64(&rng) % 4);
        for (int k = 0; k < flips; k++)
            b[8 + h_rand_u64(&rng) % n] = (unsigned char)h_rand_u64(&rng);
        write_bytes(path_of("fuzz"), b, good_size);
        balsa_model *m = NULL;
        char err[512];
        if (model_load(path_of("fuzz"), be, &m, err, sizeof err) == BALSA_OK)
            model_free(m);
        else
            refused++;
    }
    CHECK(refused > 150);
    free(b);
}

/* `balsa convert` in the library: dense PyTorch-named tensors in, pruned model out. */
TEST(convert_prunes_and_keeps_dense)
{
    model_spec s = test_spec();
    model_host h;
    ref_random_host(&s, &h, 8, 0, 0.5f, 5);
    char err[256];
    /* a dense "PyTorch" file: the model written all dense, tensors named like PyTorch's */
    REQUIRE(model_file_write(path_of("dense.safetensors"), &s, &h, err, sizeof err) == BALSA_OK);
    const char *keep[1] = {"lstm.weight_hh_l1"};
    convert_opts o = {0.75, 8, keep, 1, NULL, NULL, NULL};
    convert_entry rep[MODEL_MAX_TENSORS];
    int nrep = 0;
    balsa_status st = model_convert(path_of("dense.safetensors"), NULL, &o,
                                    path_of("out.safetensors"),
                                    rep, &nrep, err, sizeof err);
    CHECK_MSG(st == BALSA_OK, "%s", err);
    model_spec s2;
    model_host h2;
    st = model_file_read(path_of("out.safetensors"), &s2, &h2, NULL, err, sizeof err);
    CHECK_MSG(st == BALSA_OK, "%s", err);
    if (st == BALSA_OK) {
        CHECK(h2.w_ih[0][0].sparse && h2.w_ih[0][0].sp.k == 2 && h2.w_ih[0][0].sp.bank == 8);
        CHECK(!h2.w_hh[1][0].sparse && h2.w_hh[1][1].sparse && h2.fc_w[0].sparse);
        CHECK(memcmp(h2.embedding, h.embedding, sizeof(float) * 11 * 6) == 0);
        /* pruning agrees with bsmat_prune on the same dense matrix */
        bsmat want;
        REQUIRE(bsmat_prune(h.fc_w[0].dense, 4, 10, 10, 8, 2, &want) == BALSA_OK);
        CHECK(memcmp(want.values, h2.fc_w[0].sp.values, sizeof(float) * 4 * 2 * 2) == 0);
        CHECK(memcmp(want.offsets, h2.fc_w[0].sp.offsets, 4 * 2 * 2) == 0);
        bsmat_free(&want);
        model_host_free(&h2);
    }
    CHECK(nrep > 10 && strcmp(rep[0].name, "embedding.weight") == 0 && !rep[0].sparse);
    /* a --dense name that is not a matrix of the network is refused */
    const char *bad[1] = {"fc.7.weight"};
    o.keep_dense = bad;
    CHECK(model_convert(path_of("dense.safetensors"), NULL, &o, path_of("x.safetensors"), NULL,
                        NULL, err, sizeof err) == BALSA_ERR_INVALID && strstr(err, "fc.7.weight"));
    /* a missing tensor in the input is named */
    o.nkeep_dense = 0;
    const char *desc = "{\"input\":\"vectors\",\"input_size\":3,\"fc\":[{\"out\":2}]}";
    CHECK(model_convert(path_of("dense.safetensors"), desc, &o, path_of("x.safetensors"), NULL,
                        NULL, err, sizeof err) == BALSA_ERR_FORMAT && strstr(err, "fc.0.weight"));
    model_host_free(&h);
}

/* The binary: convert from F16 input with a --desc file, then inspect. */
TEST(convert_and_inspect_commands)
{
    const char *bin = getenv("BALSA_BIN");
    if (!bin || access(bin, X_OK) != 0)
        SKIP("BALSA_BIN not set (run through make test)");
    /* a vector-input network with F16 weights, as safetensors.torch.save_file writes them */
    uint16_t w16[3 * 4], b16[3];
    for (int i = 0; i < 12; i++)
        w16[i] = 0x3c00 | (uint16_t)(i << 4); /* 1.0 and a little more */
    for (int i = 0; i < 3; i++)
        b16[i] = 0xbc00; /* -1.0 */
    st_out outs[2] = {{"fc.0.weight", ST_F16, 2, {3, 4}, w16}, {"fc.0.bias", ST_F16, 1, {3}, b16}};
    char err[256];
    REQUIRE(st_write(path_of("f16.safetensors"), outs, 2, NULL, 0, err, sizeof err) == BALSA_OK);
    FILE *f = fopen(path_of("desc.json"), "w");
    fputs("{\"name\": \"replaced by --name\", \"input\": \"vectors\", \"input_size\": 4,\n"
          " \"fc\": [{\"out\": 3, \"activation\": \"relu\"}], \"head\": \"softmax\"}\n", f);
    fclose(f);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s convert %s -o %s --desc %s --sparsity 0.5 --bank 4 --name lin --head none "
             ">%s 2>&1",
             bin,
             path_of("f16.safetensors"), path_of("lin.safetensors"), path_of("desc.json"),
             path_of("convert.txt"));
    CHECK(system(cmd) == 0);
    balsa_model *m;
    REQUIRE(model_load(path_of("lin.safetensors"), be, &m, err, sizeof err) == BALSA_OK);
    CHECK(strcmp(model_get_info(m)->name, "lin") == 0);
    CHECK(model_get_info(m)->head == MODEL_HEAD_NONE);
    float x[4] = {1, 1, 1, 1}, out[3];
    float *outs_[1] = {out};
    engine_seq q = {.features = x, .len = 1};
    CHECK(model_run(m, &q, 1, 0, outs_) == BALSA_OK);
    /* each row keeps its 2 largest of 4: entries 2 and 3 of the row */
    for (int r = 0; r < 3; r++) {
        double w2 = 1.0 + ((r * 4 + 2) << 4) / 1024.0, w3 = 1.0 + ((r * 4 + 3) << 4) / 1024.0;
        CHECK(fabs(out[r] - (w2 + w3 - 1.0)) < 1e-6);
    }
    model_free(m);
    snprintf(cmd, sizeof cmd, "%s inspect %s >%s 2>&1", bin, path_of("lin.safetensors"),
             path_of("inspect.txt"));
    CHECK(system(cmd) == 0);
    char text[4096] = "";
    f = fopen(path_of("inspect.txt"), "r");
    size_t got = fread(text, 1, sizeof text - 1, f);
    text[got] = 0;
    fclose(f);
    CHECK(strstr(text, "lin") && strstr(text, "fc.0.weight") && strstr(text, "balanced 2/4"));
    snprintf(cmd, sizeof cmd, "%s inspect %s >/dev/null 2>&1", bin, path_of("f16.safetensors"));
    CHECK(system(cmd) != 0);
}

int main(void)
{
    if (!mkdtemp(dir) || balsa_backend_cpu_create(1, &be) != BALSA_OK)
        return 1;
    snprintf(good, sizeof good, "%s/good.safetensors", dir);
    model_spec s = test_spec();
    model_host h;
    ref_random_host(&s, &h, 8, 2, 0.5f, 1);
    /* one matrix dense, so both layouts are in the file */
    float *d = ref_dense(&h.w_hh[0][1]);
    bsmat_free(&h.w_hh[0][1].sp);
    h.w_hh[0][1].sparse = 0;
    h.w_hh[0][1].dense = d;
    char err[256];
    if (model_file_write(good, &s, &h, err, sizeof err) != BALSA_OK) {
        printf("cannot write the good model: %s\n", err);
        return 1;
    }
    model_host_free(&h);
    FILE *f = fopen(good, "rb");
    fseek(f, 0, SEEK_END);
    good_size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    good_bytes = malloc(good_size);
    BALSA_ASSERT(fread(good_bytes, 1, good_size, f) == good_size);
    fclose(f);

    RUN(good_model_loads);
    RUN(missing_and_tiny_files);
    RUN(truncated_everywhere);
    RUN(header_length_out_of_range);
    RUN(bad_header_json);
    RUN(many_tensors_and_a_duplicate);
    RUN(bad_data_offsets_dtypes_shapes);
    RUN(missing_unknown_wrong_tensors);
    RUN(bad_values_and_offsets);
    RUN(inconsistent_description);
    RUN(random_header_damage);
    RUN(convert_prunes_and_keeps_dense);
    RUN(convert_and_inspect_commands);

    free(good_bytes);
    be->ops->destroy(be);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        printf("could not remove %s\n", dir);
    HARNESS_END();
}
