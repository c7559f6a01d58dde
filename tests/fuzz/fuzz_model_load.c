/* libFuzzer target: a model file (model_load: the safetensors header, the "balsa"
 * description in its metadata, every tensor's dtype, shape, offsets and values, then
 * model_build). The input is written to a file of this process in /dev/shm (model_load
 * takes a path and maps it). A refusal must carry a message; a model that loads must run
 * one step (and generate two tokens when it can) without an engine error. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"

static char fz_path[64];

/* libFuzzer ends with exit(): the file of this process goes with it. */
static void fz_remove_file(void) { unlink(fz_path); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fz_be && balsa_backend_cpu_create(1, &fz_be) != BALSA_OK)
        abort();
    if (!fz_path[0]) {
        snprintf(fz_path, sizeof fz_path, "/dev/shm/balsa_fuzz_model_%d.safetensors",
                 (int)getpid());
        atexit(fz_remove_file);
    }
    FILE *f = fopen(fz_path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    balsa_model *m = NULL;
    char err[512] = "";
    balsa_status st = model_load(fz_path, fz_be, &m, err, sizeof err);
    if (st != BALSA_OK) {
        if (!err[0])
            fz_fail("model_load refused without a message", balsa_status_str(st));
        if (m)
            fz_fail("model_load refused but returned a model", err);
        return 0;
    }
    const model_info *info = model_get_info(m);
    int32_t tok = 0;
    float *feat = calloc((size_t)info->input_size, sizeof(float));
    float *out = calloc((size_t)info->output_size, sizeof(float));
    if (!feat || !out)
        abort();
    engine_seq q = {.tokens = &tok, .features = feat, .len = 1};
    if (info->input_kind == MODEL_INPUT_TOKENS)
        q.features = NULL;
    else
        q.tokens = NULL;
    st = model_run(m, &q, 1, 0, &out);
    if (st != BALSA_OK)
        fz_fail("a model that loaded does not run", balsa_status_str(st));
    if (info->can_generate) {
        int32_t gen[2];
        int n = 0;
        model_gen_opts g = {0};
        g.max_new = 2;
        st = model_generate(m, &q, &g, gen, &n);
        if (st != BALSA_OK || n != 2)
            fz_fail("a model that loaded does not generate", balsa_status_str(st));
        for (int i = 0; i < n; i++)
            if (gen[i] < 0 || gen[i] >= info->vocab_size)
                fz_fail("generated a token id out of range", info->name);
    }
    free(feat);
    free(out);
    model_free(m);
    return 0;
}
