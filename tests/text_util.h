/* Helpers shared by the text tests (test_text.c, test_stream.c): a small vocabulary with
 * tokens of several lengths and a two-byte character, and random token models that can
 * generate with it. */
#ifndef BALSA_TESTS_TEXT_UTIL_H
#define BALSA_TESTS_TEXT_UTIL_H

#include <stdio.h>

#include "engine_ref.h"

static const char *const VOCAB[] = {"a", "b", "ab", "\xc3\xa9", "\n", "t", "h",
                                    "e", " ", "the", "q", "z"};
#define NV ((int)(sizeof VOCAB / sizeof *VOCAB))

/* A token model that can generate: vocab NV, LSTM, fc to NV, the given head. */
static inline model_spec gen_spec(model_head head, int layers)
{
    model_spec s = ref_token_spec("gen", NV, 6, 16, layers, NV);
    s.head = head;
    return s;
}

/* Builds on be a random generating model (weights scaled up so that its outputs differ
 * from token to token), with the test vocabulary when vocab is set; NULL (with the reason
 * printed) when it cannot be built. */
static inline balsa_model *gen_model(balsa_backend *be, model_head head, int layers, int vocab,
                                     unsigned long long seed)
{
    model_spec s = gen_spec(head, layers);
    model_host h;
    ref_random_host(&s, &h, 4, 2, 3.0f, seed);
    char err[256];
    if (vocab)
        BALSA_ASSERT(model_vocab_set(&h.vocab, VOCAB, NV, err, sizeof err) == BALSA_OK);
    balsa_model *m = NULL;
    balsa_status st = model_build(&s, &h, be, &m, err, sizeof err);
    model_host_free(&h);
    if (st != BALSA_OK)
        printf("  model_build: %s\n", err);
    return m;
}

#endif
