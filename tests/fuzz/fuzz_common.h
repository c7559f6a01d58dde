/* Shared set-up of the libFuzzer harnesses (tests/fuzz/fuzz_*.c): a CPU backend and the
 * three kinds of model the request parsers must handle, built once per fuzzing process
 * and never freed (libFuzzer has no teardown hook; they are reachable, so LeakSanitizer
 * does not count them):
 *   fz_api[0] "tok"       token ids, no vocabulary (vocab 23, LSTM 8, fc 23, softmax)
 *   fz_api[1] "vec"       feature vectors of 3, LSTM 8, fc 7, no head
 *   fz_api[2] "fortunes"  models/fortunes/fortunes-b90.safetensors: a vocabulary, can
 *                         generate (run from the repository root, as run.sh does)
 * With these the parsers reach their deep paths: token ids against a range, vectors
 * against a width, text against a vocabulary, generate options, LSTM states. */
#ifndef BALSA_FUZZ_COMMON_H
#define BALSA_FUZZ_COMMON_H

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/model.h"
#include "kernels/backend.h"
#include "models/model_file.h"
#include "server/api.h"

#define FZ_NMODELS 3
#define FZ_FORTUNES "models/fortunes/fortunes-b90.safetensors"

static balsa_backend *fz_be;
static balsa_model *fz_model[FZ_NMODELS];
static api_model fz_api[FZ_NMODELS];
/* Small enough that a request the parser accepts also runs quickly in the harness. */
static const api_limits fz_limits = {512, 20000};

/* Deterministic weights in [-0.5, 0.5) (a fixed xorshift), dense. */
static inline void fz_random_host(const model_spec *s, model_host *h, unsigned long long seed)
{
    memset(h, 0, sizeof *h);
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int n = model_tensor_list(s, refs);
    for (int i = 0; i < n; i++) {
        size_t cnt = (size_t)refs[i].rows * (refs[i].cols > 0 ? refs[i].cols : 1);
        float *v = malloc(sizeof(float) * cnt);
        for (size_t j = 0; j < cnt; j++) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            v[j] = (float)((seed >> 11) * (1.0 / 9007199254740992.0)) - 0.5f;
        }
        if (model_host_put(h, &refs[i], v, 4, 2) != BALSA_OK) {
            fprintf(stderr, "fuzz set-up: model_host_put %s failed\n", refs[i].name);
            abort();
        }
    }
}

/* The spec of test model "tok" (kind MODEL_INPUT_TOKENS) or "vec". */
static inline model_spec fz_spec(model_input_kind kind)
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
    s.fc[0] = (model_fc_spec){kind == MODEL_INPUT_TOKENS ? 23 : 7, BALSA_ACT_NONE, 1};
    s.head = kind == MODEL_INPUT_TOKENS ? MODEL_HEAD_SOFTMAX : MODEL_HEAD_NONE;
    return s;
}

/* Builds the three models once; aborts (a broken harness, not a finding) on failure. */
static inline void fz_setup_models(void)
{
    char err[512];
    if (fz_be)
        return;
    if (balsa_backend_cpu_create(1, &fz_be) != BALSA_OK) {
        fprintf(stderr, "fuzz set-up: no CPU backend\n");
        abort();
    }
    for (int i = 0; i < 2; i++) {
        model_spec s = fz_spec(i == 0 ? MODEL_INPUT_TOKENS : MODEL_INPUT_VECTORS);
        model_host h;
        fz_random_host(&s, &h, 11 + (unsigned long long)i);
        balsa_status st = model_build(&s, &h, fz_be, &fz_model[i], err, sizeof err);
        model_host_free(&h);
        if (st != BALSA_OK) {
            fprintf(stderr, "fuzz set-up: model_build: %s\n", err);
            abort();
        }
    }
    if (model_load(FZ_FORTUNES, fz_be, &fz_model[2], err, sizeof err) != BALSA_OK) {
        fprintf(stderr, "fuzz set-up: %s (run from the repository root)\n", err);
        abort();
    }
    for (int i = 0; i < FZ_NMODELS; i++) {
        const model_info *info = model_get_info(fz_model[i]);
        fz_api[i] = (api_model){info->name, info, fz_model[i]};
    }
}

/* Runs a request a parser accepted, as `balsa run` does (server/run.c), and renders the
 * response: what the server would do with it next. Returns the engine's status; a parser
 * that accepts what the engine then refuses is a finding, so the caller aborts on it. */
static inline balsa_status fz_execute(api_request *r)
{
    const api_model *am = &fz_api[r->model];
    if (api_alloc_outputs(r, am->info))
        return BALSA_ERR_OOM;
    balsa_status st = BALSA_OK;
    balsa_model *m = (balsa_model *)am->model;
    if (!r->generate)
        st = model_run(m, r->seqs, r->nseqs, r->all_steps, r->outputs);
    for (int i = 0; r->generate && i < r->nseqs && st == BALSA_OK; i++) {
        model_gen_opts g = r->gen;
        g.seed += (uint64_t)i;
        st = model_generate(m, &r->seqs[i], &g, r->gen_tokens[i], &r->gen_counts[i]);
    }
    return st;
}

/* Aborts with the input's problem named: libFuzzer then saves the input as a crash. */
static inline void fz_fail(const char *what, const char *detail)
{
    fprintf(stderr, "FUZZ FINDING: %s: %s\n", what, detail);
    abort();
}

/* A parser's refusal: it must carry a message, a status of 400, of 404 when not_found
 * may occur (a model named in the body), or 503, and leave no storage in r. */
static inline void fz_check_refusal(int code, const char *err, const api_request *r,
                                    int not_found)
{
    if (!err[0])
        fz_fail("refusal without a message", "");
    if (code != 400 && code != 503 && !(not_found && code == 404))
        fz_fail("unexpected status", err);
    if (r->seqs || r->tokens || r->features)
        fz_fail("refusal left storage behind", err);
}

/* A rendered response: it must exist and, unless it is a stream of events, be one JSON
 * value. Frees it. */
static inline void fz_check_json_response(char *resp, size_t len, int events)
{
    if (!resp)
        fz_fail("render", "out of memory");
    if (!events) {
        cJSON *j = cJSON_ParseWithLength(resp, len);
        if (!j)
            fz_fail("response is not valid JSON", resp);
        cJSON_Delete(j);
    }
    free(resp);
}

#endif
