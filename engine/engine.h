/* The engine's public face: a model loaded onto a backend, run on a batch of
 * variable-length sequences (layer-major, model_run) or step by step with sequences
 * joining and leaving at time-step boundaries (model_stream, for the batching
 * scheduler). Both give the same numbers for a sequence, whatever else is in the batch. */
#ifndef BALSA_ENGINE_H
#define BALSA_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/backend.h"

typedef enum { MODEL_INPUT_TOKENS = 0, MODEL_INPUT_VECTORS } model_input_kind;
typedef enum { MODEL_HEAD_NONE = 0, MODEL_HEAD_SOFTMAX, MODEL_HEAD_LOG_SOFTMAX } model_head;

/* What a model is, for banners, `balsa inspect`, GET /models and request validation. */
typedef struct {
    char name[64];               /* from the file's metadata, else the file's base name */
    model_input_kind input_kind;
    int vocab_size;              /* token-input models: ids must be in [0, vocab_size) */
    int input_size;              /* features per step (vector models) or embedding size */
    int output_size;             /* floats in one output vector */
    int hidden_size;             /* LSTM hidden size (0 when the model has no LSTM) */
    int num_layers;              /* LSTM layers */
    int bidirectional;
    int bank;                    /* bank width of the sparse matrices (0 when all dense) */
    double sparsity;             /* over the sparse matrices' weights */
    model_head head;
    long long params_dense;      /* weights the dense model would hold */
    long long params_stored;     /* weights actually stored (non-zeros of sparse ones) */
    size_t weight_bytes;         /* bytes of weights in the canonical layouts */
    int has_vocabulary;          /* token models: 1 when the file names every token's text */
    int can_generate;            /* 1: model_stream_add_gen accepts it (see there) */
} model_info;

typedef struct balsa_model balsa_model;

/* One input sequence: len token ids, or len x input_size floats (row-major).
 *
 * LSTM state, optional (NULL: none), as PyTorch's nn.LSTM: each is num_layers x
 * num_directions x hidden_size floats, layer-major and then direction (entry l * D + d,
 * forward d = 0, reverse d = 1), the layout of h_0[:, b, :] for sequence b. h0/c0 are the
 * initial hidden and cell state (NULL: zeros) and are only read while the call that takes
 * the sequence runs. hn/cn, when given, receive the final state (PyTorch's h_n/c_n: the
 * forward direction after the last step, the reverse one after reading position 0) when
 * the sequence completes, and must stay valid until then. A model without an LSTM takes
 * none of them. Initialise with designated initializers ({.tokens = t, .len = n}): a
 * positional {t, NULL, n} trips -Wmissing-field-initializers now that the state follows. */
typedef struct {
    const int32_t *tokens;
    const float *features;
    int len;
    const float *h0, *c0;
    float *hn, *cn;
} engine_seq;

/* Loads and validates a model file (models/FORMAT.md) and uploads its weights to be.
 * On failure returns a status and writes a message naming the tensor and the problem to
 * err; nothing is leaked. The backend must outlive the model. */
balsa_status model_load(const char *path, balsa_backend *be, balsa_model **out, char *err,
                        size_t errlen);
void model_free(balsa_model *m);
const model_info *model_get_info(const balsa_model *m);

/* Checks one sequence against the model (length >= 1, ids in range, no NaN/inf in the
 * features or the initial state, no state for a model without an LSTM); returns
 * BALSA_ERR_INVALID with a message in err otherwise. */
balsa_status model_check_seq(const balsa_model *m, const engine_seq *s, char *err,
                             size_t errlen);

/* The text of token id (NUL-terminated, owned by the model), or NULL when the model has no
 * vocabulary or id is out of range. */
const char *model_token_str(const balsa_model *m, int id);

/* Splits text[0..len) into token ids by the model's vocabulary, longest token first at
 * each position. ids needs room for len entries (a token is at least one byte); *n gets
 * the count. Returns BALSA_ERR_INVALID with a message (the byte offset and the character
 * that no token matches; "empty" for len 0; "no vocabulary" for a model without one). */
balsa_status model_encode_text(const balsa_model *m, const char *text, size_t len,
                               int32_t *ids, int *n, char *err, size_t errlen);

/* Runs n checked sequences together. outputs[i] receives (all_steps ? len : 1) vectors of
 * output_size floats (host memory, caller-owned); each sequence starts from its h0/c0
 * and gives its hn/cn where asked. Not thread-safe per model. */
balsa_status model_run(balsa_model *m, const engine_seq *seqs, int n, int all_steps,
                       float *const *outputs);

/* Step-level execution for the batching scheduler: up to max_slots sequences are in
 * flight; a sequence added between steps joins at the next step, one that ends frees its
 * slot. Used from one thread at a time. */
typedef struct model_stream model_stream;
balsa_status model_stream_create(balsa_model *m, int max_slots, model_stream **out);
void model_stream_free(model_stream *s);
int model_stream_free_slots(const model_stream *s);
int model_stream_active(const model_stream *s);
/* Takes a checked sequence into a free slot (BALSA_ERR_FULL when none). out is as in
 * model_run and must stay valid until the sequence completes, as must seq's hn/cn; seq's
 * input arrays and h0/c0 are copied and may be released once this returns. tag comes back
 * from model_stream_step when it is done. */
balsa_status model_stream_add(model_stream *s, const engine_seq *seq, int all_steps,
                              float *out, void *tag);
/* Text generation: after its own steps a sequence goes on with max_new tokens, each chosen
 * from the output of the step before it (the model's next-token scores: logits, softmax
 * or log_softmax, output_size == vocab_size) and fed back as the next input. */
typedef struct {
    int max_new;       /* tokens to generate, >= 1 */
    float temperature; /* 0: greedy (highest score, lower id on ties); > 0: sample from
                        * softmax(log-probabilities / temperature) */
    uint64_t seed;     /* the sampler's seed (the same seed gives the same tokens) */
    /* Stop strings (models with a vocabulary): generation ends after the token with which
     * the generated text first contains one of them. nstop 0..MODEL_GEN_MAX_STOP, each 1 to
     * MODEL_GEN_MAX_STOP_BYTES bytes; the strings must stay valid until the sequence ends. */
    const char *const *stop;
    int nstop;
    /* NULL, or a flag another thread may set to end the generation early (a client that
     * left): the sequence then ends after its next token. It must stay valid until the
     * sequence ends. */
    const _Atomic int *cancel;
} model_gen_opts;

#define MODEL_GEN_MAX_STOP 4
#define MODEL_GEN_MAX_STOP_BYTES 64

/* As model_stream_add, for a sequence that generates (model_info.can_generate: a token
 * model with a unidirectional LSTM whose output size is its vocabulary size; otherwise
 * BALSA_ERR_INVALID, as for opts out of range, or stop strings without a vocabulary).
 * gen_out (room for opts->max_new) receives the generated ids and *gen_n their count
 * (max_new once the tag comes back done, unless a stop string ended it sooner); out
 * may be NULL, or receives the output vector of the last step run (the scores the last
 * generated token was drawn from). seq's hn/cn receive the state after that last step,
 * which has read the input and every generated token but the last: a continuation starts
 * from that state with the last generated token as its first input. */
balsa_status model_stream_add_gen(model_stream *s, const engine_seq *seq,
                                  const model_gen_opts *opts, int32_t *gen_out, int *gen_n,
                                  float *out, void *tag);

/* Generates for one checked sequence without a scheduler (a one-slot model_stream): the
 * same tokens as model_stream_add_gen gives it in any batch. Returns the engine's status
 * (BALSA_ERR_INVALID as there). */
balsa_status model_generate(balsa_model *m, const engine_seq *seq, const model_gen_opts *opts,
                            int32_t *gen_out, int *gen_n);

/* Advances every active sequence by one step (or more, where the model cannot go step by
 * step); writes the tags of the sequences that completed to done (room for max_slots)
 * and their count to *ndone. On error every active sequence is dropped and its tag
 * reported in done, so the caller can fail it. */
balsa_status model_stream_step(model_stream *s, void **done, int *ndone);

/* The k largest of v[0..n) in descending order (ties: lower index first). */
void engine_topk(const float *v, int n, int k, int *idx, float *val);

#endif
