/* The engine's internal model types, shared by engine/ and models/: the network
 * description (model_spec), the list of tensors a description needs (names as PyTorch
 * writes them), the host-side weights a loader or converter fills (model_host) and
 * model_build, which checks them against the description and uploads them to a backend.
 * Nothing here reads files: models/ turns a file into a model_spec + model_host. */
#ifndef BALSA_ENGINE_MODEL_H
#define BALSA_ENGINE_MODEL_H

#include "engine.h"

#define MODEL_MAX_LAYERS 8
#define MODEL_MAX_FC 16
#define MODEL_MAX_TENSORS (4 * MODEL_MAX_LAYERS * 2 + 2 * MODEL_MAX_FC + 1)
/* Size limits that keep every product of sizes well inside size_t and int. */
#define MODEL_MAX_VOCAB (1 << 24)
#define MODEL_MAX_WIDTH (1 << 16)
#define MODEL_MAX_SEQ_LEN (1 << 20)

typedef struct {
    int out;        /* output features of this layer */
    balsa_act act;  /* applied after the bias */
    int bias;       /* 1: fc.<i>.bias is stored; 0: no bias */
} model_fc_spec;

/* The network: [embedding | vectors] -> LSTM stack (optional) -> FC layers -> head. */
typedef struct {
    char name[64];
    model_input_kind input_kind;
    int vocab_size;   /* tokens: rows of embedding.weight; vectors: 0 */
    int input_size;   /* embedding width or features per step */
    int hidden_size;  /* 0: no LSTM */
    int num_layers;   /* 0 when hidden_size is 0 */
    int bidirectional;
    int lstm_bias;    /* 1: bias_ih/bias_hh are stored */
    int n_fc;
    model_fc_spec fc[MODEL_MAX_FC];
    model_head head;
} model_spec;

/* Checks a description's sizes and counts; returns BALSA_ERR_FORMAT with a message
 * naming the field otherwise. */
balsa_status model_spec_check(const model_spec *s, char *err, size_t errlen);

/* Folding the embedding into the first LSTM layer. For a token model the first layer's
 * input projection of token v, W_ih_l0 E[v] + b_ih_l0 + b_hh_l0, depends on v alone, so
 * model_build computes it for every token once (one table of vocab_size x 4 * hidden_size
 * floats per direction, on the host) and the engine copies a table row where it would
 * otherwise look up the embedding and multiply it by W_ih_l0 (engine/model.c).
 *
 * The cap bounds the memory the table adds to a loaded model. The table is 4 * hidden /
 * input_size times the embedding it stands in for, per direction: small for a character
 * model (fortunes: 96 tokens x 1024 gates, 384 KiB), but for a word-level one (10,000
 * tokens, embedding and hidden 650: 104 MB) it would be four times the embedding and dwarf the sparse
 * weights, in every server process that loads it. Such models keep the product. */
#define MODEL_FOLD_MAX_BYTES ((size_t)64 << 20)

/* Bytes of the folded table of the network described by s: vocab_size x 4 * hidden_size
 * floats per direction, or 0 when s has no embedding feeding an LSTM (vector input, or no
 * LSTM). model_build folds exactly when this is between 1 and MODEL_FOLD_MAX_BYTES. */
size_t model_fold_table_bytes(const model_spec *s);

/* Features of one output vector of the network described by s. */
int model_spec_output_size(const model_spec *s);

/* Floats in one of a sequence's h0/c0/hn/cn (engine_seq): num_layers x directions x
 * hidden_size (0 without an LSTM). */
size_t model_state_floats(const model_spec *s);

/* Names: "tokens"/"vectors", "none"/"softmax"/"log_softmax"; parse returns -1 when
 * the name is unknown. */
const char *model_input_kind_str(model_input_kind k);
int model_input_kind_parse(const char *s);
const char *model_head_str(model_head h);
int model_head_parse(const char *s);

typedef enum {
    MODEL_T_EMBEDDING = 0, /* embedding.weight [vocab, input_size], always dense */
    MODEL_T_W_IH,          /* lstm.weight_ih_l<k>[_reverse] [4H, in] */
    MODEL_T_W_HH,          /* lstm.weight_hh_l<k>[_reverse] [4H, H] */
    MODEL_T_B_IH,          /* lstm.bias_ih_l<k>[_reverse] [4H] */
    MODEL_T_B_HH,          /* lstm.bias_hh_l<k>[_reverse] [4H] */
    MODEL_T_FC_W,          /* fc.<i>.weight [out, in] */
    MODEL_T_FC_B           /* fc.<i>.bias [out] */
} model_tensor_kind;

/* One tensor a description needs. Matrices (embedding, W_ih, W_hh, fc weights) have
 * rows x cols; biases have rows and cols == 0. */
typedef struct {
    char name[48];
    model_tensor_kind kind;
    int layer; /* LSTM layer, or FC index */
    int dir;   /* 0 forward, 1 reverse */
    int rows, cols;
} model_tensor_ref;

/* Fills out (room for MODEL_MAX_TENSORS) with the tensors s needs, in a fixed order
 * (embedding, LSTM layer by layer and direction, FC layers); returns their count. */
int model_tensor_list(const model_spec *s, model_tensor_ref *out);

/* The longest token text a vocabulary may hold, in bytes. */
#define MODEL_MAX_TOKEN_BYTES 256

/* A token model's vocabulary: the text of every token id, NUL-terminated UTF-8, with an
 * index sorted by text for encoding (engine/vocab.c). n == 0: none. */
typedef struct {
    int n;
    char **tok;    /* n strings, pointing into blob */
    int *len;      /* their lengths in bytes */
    int *sorted;   /* ids ordered by text (memcmp, shorter first on a common prefix) */
    int max_len;
    int byte_tok[256]; /* the id whose text is that one byte, or -1 */
    char *blob;
} model_vocab;

/* Makes v hold a copy of tokens[0..n) after checking them: every text non-empty, at most
 * MODEL_MAX_TOKEN_BYTES bytes, valid UTF-8 without NUL, and no two alike. Returns
 * BALSA_ERR_FORMAT naming the first bad entry ("vocabulary[i]: ...") and leaves v empty, or
 * BALSA_ERR_OOM. v must be empty (zeroed) on entry. */
balsa_status model_vocab_set(model_vocab *v, const char *const *tokens, int n, char *err,
                             size_t errlen);
/* Copies src into the empty dst (an empty src gives an empty dst); BALSA_ERR_OOM. */
balsa_status model_vocab_copy(model_vocab *dst, const model_vocab *src);
/* Frees v's memory and zeroes it; safe on a zeroed model_vocab. */
void model_vocab_free(model_vocab *v);
/* Encodes text[0..len) as in model_encode_text (engine.h). */
balsa_status model_vocab_encode(const model_vocab *v, const char *text, size_t len,
                                int32_t *ids, int *n, char *err, size_t errlen);

/* A weight matrix on the host: balanced-sparse (sp) or dense (rows x cols, row-major). */
typedef struct {
    int sparse;
    bsmat sp;
    float *dense;
    int rows, cols;
} model_host_mat;

/* Every weight of a model on the host, as loaders and converters fill it (heap memory
 * owned by this struct; model_host_free releases it). Absent biases are NULL. */
typedef struct {
    float *embedding;
    model_host_mat w_ih[MODEL_MAX_LAYERS][2], w_hh[MODEL_MAX_LAYERS][2];
    float *b_ih[MODEL_MAX_LAYERS][2], *b_hh[MODEL_MAX_LAYERS][2];
    model_host_mat fc_w[MODEL_MAX_FC];
    float *fc_b[MODEL_MAX_FC];
    model_vocab vocab; /* token models: empty, or vocab_size entries */
} model_host;

/* Frees every array and matrix h holds and zeroes it; safe on a zeroed model_host. */
void model_host_free(model_host *h);

/* Whether model_build joins layer l's W_ih and W_hh of h into one [W_ih | W_hh] matrix
 * (exec.h, lstm_dir_w.w_cat) on a backend whose memory is the host's: for a layer above
 * the first of a unidirectional network whose two matrices are sparse with the same bank
 * and k. The copy costs the layer's weight memory once more; model_stream's steps run it
 * as one product. */
int model_layer_joins(const model_spec *s, const model_host *h, int l);

/* Where the tensor ref names lives in h: matrices (W_ih, W_hh, fc weights) in a
 * model_host_mat, the embedding and biases in a plain float array. Each returns NULL
 * for a ref of the other sort. */
model_host_mat *model_host_mat_slot(model_host *h, const model_tensor_ref *ref);
float **model_host_array_slot(model_host *h, const model_tensor_ref *ref);

/* Puts the tensor ref names into h from v (dense, row-major, rows x cols of ref; malloc'd,
 * and taken over: h keeps it or it is freed): the embedding and biases as they are, a
 * weight matrix pruned to balanced sparsity (bank, k largest |w| per bank) when k > 0,
 * else dense. Returns bsmat_prune's status (BALSA_ERR_OOM, BALSA_ERR_INVALID for a bad
 * bank or k). */
balsa_status model_host_put(model_host *h, const model_tensor_ref *ref, float *v, int bank,
                            int k);

/* Checks h against s (every needed tensor present with the right shape; sparse
 * matrices valid; a vocabulary, if any, of vocab_size entries) and uploads it to be. The model copies what it keeps; h stays the
 * caller's. Returns BALSA_ERR_FORMAT naming the tensor when h does not fit s, or the
 * backend's status; nothing is leaked on failure. */
balsa_status model_build(const model_spec *s, const model_host *h, balsa_backend *be,
                         balsa_model **out, char *err, size_t errlen);

/* The description of a built model. */
const model_spec *model_get_spec(const balsa_model *m);

/* Bytes of a built model's folded table, or 0 when it projects token inputs through the
 * embedding and W_ih_l0 (not folded, or unfolded by model_unfold). */
size_t model_folded_bytes(const balsa_model *m);

/* Drops a built model's folded table, so that it projects token inputs through the
 * embedding and W_ih_l0 like a model over the cap: for tests and measurements that compare
 * the two paths with the same weights. Call it before the model runs anything or any
 * model_stream is created on it; nothing happens to a model that is not folded. */
void model_unfold(balsa_model *m);

#endif
