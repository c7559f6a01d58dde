/* libFuzzer target: the network description JSON, as `balsa convert --desc` reads it
 * (model_desc_parse, then model_convert against a fixed dense weights file of the "tok"
 * network of fuzz_common.h, pruning to banks of 4 at 50%), and as a model file carries it
 * (model_desc_parse with the "matrices" layouts required). A refusal must carry a
 * message; a conversion that succeeds must write a model file that model_load accepts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "models/convert.h"

static char fz_in[64], fz_out[64];

/* libFuzzer ends with exit(): the files of this process go with it. */
static void fz_remove_files(void)
{
    unlink(fz_in);
    unlink(fz_out);
}

/* Writes the dense weights file of "tok" (with its own description in the metadata,
 * which --desc replaces) once. */
static void fz_setup_input(void)
{
    if (fz_in[0])
        return;
    if (balsa_backend_cpu_create(1, &fz_be) != BALSA_OK)
        abort();
    snprintf(fz_in, sizeof fz_in, "/dev/shm/balsa_fuzz_convert_in_%d.safetensors", (int)getpid());
    snprintf(fz_out, sizeof fz_out, "/dev/shm/balsa_fuzz_convert_out_%d.safetensors",
             (int)getpid());
    model_spec s = fz_spec(MODEL_INPUT_TOKENS);
    model_host h;
    memset(&h, 0, sizeof h);
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int n = model_tensor_list(&s, refs);
    for (int i = 0; i < n; i++) {
        size_t cnt = (size_t)refs[i].rows * (refs[i].cols > 0 ? refs[i].cols : 1);
        float *v = malloc(sizeof(float) * cnt);
        for (size_t j = 0; j < cnt; j++)
            v[j] = (float)((j * 7919 + (size_t)i * 104729) % 1000) / 1000.0f - 0.5f;
        if (model_host_put(&h, &refs[i], v, 4, 0) != BALSA_OK)
            abort();
    }
    char err[512];
    if (model_file_write(fz_in, &s, &h, err, sizeof err) != BALSA_OK) {
        fprintf(stderr, "fuzz set-up: %s\n", err);
        abort();
    }
    model_host_free(&h);
    atexit(fz_remove_files);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_setup_input();
    char *desc = malloc(size + 1);
    if (!desc)
        abort();
    memcpy(desc, data, size);
    desc[size] = 0;
    char err[512] = "";

    model_spec s;
    model_layout lay[MODEL_MAX_TENSORS];
    model_vocab voc;
    memset(&voc, 0, sizeof voc);
    balsa_status st = model_desc_parse(desc, size, 1, &s, lay, &voc, err, sizeof err);
    if (st != BALSA_OK && !err[0])
        fz_fail("model_desc_parse refused without a message", balsa_status_str(st));
    model_vocab_free(&voc);

    err[0] = 0;
    convert_opts o = {.sparsity = 0.5, .bank = 4};
    convert_entry rep[MODEL_MAX_TENSORS];
    int nrep = 0;
    st = model_convert(fz_in, desc, &o, fz_out, rep, &nrep, err, sizeof err);
    free(desc);
    if (st != BALSA_OK) {
        if (!err[0])
            fz_fail("model_convert refused without a message", balsa_status_str(st));
        return 0;
    }
    balsa_model *m = NULL;
    st = model_load(fz_out, fz_be, &m, err, sizeof err);
    if (st != BALSA_OK)
        fz_fail("model_convert wrote a file model_load refuses", err);
    model_free(m);
    unlink(fz_out);
    return 0;
}
