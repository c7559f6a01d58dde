/* Tests of the trained demo model, models/fortunes/fortunes-b90.safetensors (a character
 * LSTM language model from models/train, 90% balanced sparsity): it loads and describes
 * itself as committed (96-character vocabulary listed in its description), and balsa's
 * log-probabilities on the start of the test split equal PyTorch's for the same weights
 * (models/train/balsa_check.py reference; skipped when /usr/bin/python3 has no torch).
 *
 * Also a tool for models/train/balsa_check.py bpc:
 *     test_fortunes --bpc MODEL IDS.i32 PIECES
 * cuts the int32 token ids into PIECES contiguous pieces (as study.py evaluates), runs
 * them from a zero state through balsa and prints "bpc X" and "chars N". */
#include <cJSON.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/engine.h"
#include "harness.h"
#include "models/safetensors.h"

#define MODEL "models/fortunes/fortunes-b90.safetensors"
#define PYTHON "/usr/bin/python3"
#define REF_CHARS 400

static balsa_backend *be;

/* Reads a whole file; *n receives its size. NULL when it cannot be read. */
static void *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct stat st;
    void *buf = NULL;
    if (fstat(fileno(f), &st) == 0 && (buf = malloc((size_t)st.st_size + 1)) != NULL &&
        fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf)
        *n = (size_t)st.st_size;
    return buf;
}

TEST(model_loads_as_committed)
{
    balsa_model *m = NULL;
    char err[512] = "";
    balsa_status st = model_load(MODEL, be, &m, err, sizeof err);
    CHECK_MSG(st == BALSA_OK, "%s", err);
    if (st != BALSA_OK)
        return;
    const model_info *in = model_get_info(m);
    CHECK(in->input_kind == MODEL_INPUT_TOKENS && in->vocab_size == 96 && in->output_size == 96);
    CHECK(in->head == MODEL_HEAD_LOG_SOFTMAX && in->bank == 32);
    CHECK_MSG(fabs(in->sparsity - (1.0 - 3.0 / 32)) < 1e-9, "sparsity %g", in->sparsity);
    CHECK(in->hidden_size > 0 && in->num_layers >= 1 && !in->bidirectional);
    model_free(m);

    /* The vocabulary: 96 one-character strings, all different, newline and printable ASCII. */
    st_file f;
    REQUIRE(st_open(MODEL, &f, err, sizeof err) == BALSA_OK);
    const char *desc = st_meta_get(&f, "balsa");
    cJSON *d = desc ? cJSON_Parse(desc) : NULL;
    const cJSON *voc = cJSON_GetObjectItemCaseSensitive(d, "vocabulary");
    CHECK(cJSON_IsArray(voc) && cJSON_GetArraySize(voc) == 96);
    int seen[256] = {0}, good = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, voc)
    {
        if (cJSON_IsString(c) && strlen(c->valuestring) == 1) {
            unsigned char ch = (unsigned char)c->valuestring[0];
            good += !seen[ch] && (ch == '\n' || (ch >= 32 && ch < 127));
            seen[ch] = 1;
        }
    }
    CHECK_MSG(good == 96, "%d good vocabulary entries", good);
    cJSON_Delete(d);
    st_close(&f);
}

/* balsa's output against PyTorch's (float64 reference, same weights) on the first
 * REF_CHARS characters of the test split: max relative error below 1e-4, the error taken
 * relative to max(|log p|, 1) since log-probabilities near 0 carry only absolute error. */
TEST(matches_pytorch_on_test_text)
{
    if (system(PYTHON " -c 'import torch' >/dev/null 2>&1") != 0)
        SKIP("%s has no torch (apt-get install python3-torch)", PYTHON);
    char dir[] = "/tmp/balsa_fortunes_XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    char cmd[1024], path[512];
    snprintf(cmd, sizeof cmd,
             PYTHON " models/train/balsa_check.py reference --model " MODEL " --chars %d --out %s",
             REF_CHARS, dir);
    int rc = system(cmd);
    CHECK_MSG(rc == 0, "balsa_check.py reference exited with %d", rc);
    size_t nid = 0, nref = 0;
    snprintf(path, sizeof path, "%s/ids.i32", dir);
    int32_t *ids = rc == 0 ? read_file(path, &nid) : NULL;
    snprintf(path, sizeof path, "%s/logprobs.f64", dir);
    double *ref = rc == 0 ? read_file(path, &nref) : NULL;
    balsa_model *m = NULL;
    char err[512];
    if (ids && ref && nid == REF_CHARS * sizeof(int32_t) && nref == REF_CHARS * 96 * sizeof(double) &&
        model_load(MODEL, be, &m, err, sizeof err) == BALSA_OK) {
        float *out = malloc(sizeof(float) * REF_CHARS * 96);
        BALSA_ASSERT(out);
        engine_seq s = {.tokens = ids, .len = REF_CHARS};
        float *outs[1] = {out};
        CHECK(model_check_seq(m, &s, err, sizeof err) == BALSA_OK);
        CHECK(model_run(m, &s, 1, 1, outs) == BALSA_OK);
        double e = h_max_rel_err(out, ref, (size_t)REF_CHARS * 96, 1.0);
        CHECK_MSG(e < 1e-4, "max relative error %g", e);
        printf("  %d characters x 96 log-probabilities: max relative error %.2e\n", REF_CHARS, e);
        /* the model predicts: the mean log-probability of the true next character beats
         * the training split's character frequencies (-3.26 nats per character on the
         * test split) and a uniform guess (log 1/96 = -4.56) */
        double sum = 0;
        for (int t = 0; t + 1 < REF_CHARS; t++)
            sum += out[t * 96 + ids[t + 1]];
        CHECK_MSG(sum / (REF_CHARS - 1) > -2.5, "mean log p %g", sum / (REF_CHARS - 1));
        free(out);
        model_free(m);
    } else {
        CHECK_MSG(0, "reference files or model missing (%zu, %zu bytes)", nid, nref);
    }
    free(ids);
    free(ref);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

/* --bpc MODEL IDS PIECES: see the file comment. Returns the process exit status. */
static int bpc_main(const char *model, const char *ids_path, int pieces)
{
    size_t bytes = 0;
    int32_t *ids = read_file(ids_path, &bytes);
    balsa_model *m = NULL;
    char err[512];
    if (!ids || pieces < 1) {
        fprintf(stderr, "test_fortunes --bpc: cannot read %s (or bad piece count)\n", ids_path);
        free(ids);
        return 2;
    }
    if (model_load(model, be, &m, err, sizeof err) != BALSA_OK) {
        fprintf(stderr, "test_fortunes --bpc: %s\n", err);
        free(ids);
        return 2;
    }
    int vocab = model_get_info(m)->output_size;
    int n = (int)((bytes / sizeof(int32_t) - 1) / (size_t)pieces);
    engine_seq *seqs = calloc((size_t)pieces, sizeof *seqs);
    float **outs = calloc((size_t)pieces, sizeof *outs);
    BALSA_ASSERT(seqs && outs && n > 0);
    int rc = 0;
    for (int p = 0; p < pieces && rc == 0; p++) {
        seqs[p] = (engine_seq){.tokens = ids + (size_t)p * n, .len = n};
        outs[p] = malloc(sizeof(float) * (size_t)n * vocab);
        BALSA_ASSERT(outs[p]);
        if (model_check_seq(m, &seqs[p], err, sizeof err) != BALSA_OK) {
            fprintf(stderr, "test_fortunes --bpc: piece %d: %s\n", p, err);
            rc = 2;
        }
    }
    if (rc == 0 && model_run(m, seqs, pieces, 1, outs) != BALSA_OK) {
        fprintf(stderr, "test_fortunes --bpc: model_run failed\n");
        rc = 2;
    }
    if (rc == 0) {
        double nll = 0;
        for (int p = 0; p < pieces; p++)
            for (int t = 0; t < n; t++)
                nll -= outs[p][(size_t)t * vocab + ids[(size_t)p * n + t + 1]];
        printf("bpc %.9f\nchars %lld\n", nll / ((double)pieces * n * log(2.0)), (long long)pieces * n);
    }
    for (int p = 0; p < pieces; p++)
        free(outs[p]);
    free(outs);
    free(seqs);
    free(ids);
    model_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    char why[256];
    BALSA_ASSERT(balsa_backend_create("cpu", 1, &be, why, sizeof why) == BALSA_OK);
    if (argc == 5 && strcmp(argv[1], "--bpc") == 0) {
        int rc = bpc_main(argv[2], argv[3], atoi(argv[4]));
        be->ops->destroy(be);
        return rc;
    }
    RUN(model_loads_as_committed);
    RUN(matches_pytorch_on_test_text);
    be->ops->destroy(be);
    HARNESS_END();
}
