/* Engine-internal: the loaded model's layout in backend memory and the helpers that
 * model_run (engine/model.c) and model_stream (engine/stream.c) share. Not for use
 * outside engine/. */
#ifndef BALSA_ENGINE_EXEC_H
#define BALSA_ENGINE_EXEC_H

#include "model.h"

/* A backend buffer of floats that grows on demand (contents not kept on growth). */
typedef struct {
    float *p;
    size_t cap;
} dev_buf;

/* A host buffer of floats that grows on demand (contents not kept on growth). */
typedef struct {
    float *p;
    size_t cap;
} host_buf;

typedef struct {
    balsa_mat *w_ih, *w_hh;
    /* [W_ih | W_hh] (4H x 2H) where model_layer_joins says so and the backend's memory is
     * the host's, else NULL. model_stream's step runs it over a row's [h below | h] in one
     * product: one pass over the gate rows instead of two (stream.c, step_lstm). */
    balsa_mat *w_cat;
    float *bias; /* backend memory, 4H: bias_ih + bias_hh, summed once at load */
} lstm_dir_w;

struct balsa_model {
    model_spec spec;
    model_info info;
    balsa_backend *be;
    float *embedding; /* host, vocab x input_size (token models) */
    /* Folded first layer (model.h, MODEL_FOLD_MAX_BYTES): host, vocab x 4H per direction,
     * row v = W_ih_l0 E[v] + bias, what the projection would put in the gate buffer for
     * token v; NULL when the model is not folded. */
    float *fold[2];
    lstm_dir_w lstm[MODEL_MAX_LAYERS][2];
    balsa_mat *fc_w[MODEL_MAX_FC];
    float *fc_b[MODEL_MAX_FC]; /* backend memory, or NULL */
    int fc_in[MODEL_MAX_FC];
    int max_fc_out; /* the widest FC layer's row stride, padded_stride() of its width */
    /* model_stream keeps every layer's h of a sequence in one row: layer l's at h_off[l]
     * floats from the row's start, rows h_ld floats apart. Layer l + 1 starts where its
     * joined matrix's W_hh part does (w_cat: past W_ih's bank padding, a gap of zeros), so
     * that a joined product reads [h below | gap | h] as one input row; without joins,
     * l x H. */
    int h_off[MODEL_MAX_LAYERS], h_ld;
    model_vocab vocab; /* empty when the file names no tokens */
    /* model_run's scratch, kept between calls */
    dev_buf x, xr, g, ya, yb, hr, c, lastv, fa, fb;
    dev_buf h0;  /* a direction's initial h rows, when a sequence gives one */
    host_buf hx, hxr, hy, hhr, hlast, hout;
    host_buf hst; /* a direction's state rows (n x H) on their way in or out */
    host_buf hg;  /* folded models: the first layer's gate rows (R x 4H) on their way in */
};

/* Make b hold at least n floats (BALSA_ERR_OOM when there is no memory; b is then
 * empty); release frees b and leaves it empty. */
balsa_status dev_buf_reserve(balsa_backend *be, dev_buf *b, size_t n);
void dev_buf_release(balsa_backend *be, dev_buf *b);
balsa_status host_buf_reserve(host_buf *b, size_t n);
void host_buf_release(host_buf *b);

/* The row stride, in floats, of a buffer of rows of n floats that batched products write
 * or add into (gate rows, FC outputs): n, or n + 16 when rows n floats apart would be a
 * multiple of 512 bytes apart. On x86 a load whose address matches an earlier store's in
 * bits 0-11 waits for that store to complete (4K aliasing), and the CPU kernel's epilogue
 * reads and writes Y a column of batch rows at a time: with rows 2 KiB apart every other
 * one aliased, with 4 KiB or more every one. Measured on AMD Zen 1 (a throwaway driver,
 * unpadded against padded rows): at batch 57, 512 x 128 40 -> 37.7 us (hidden 128's gate
 * rows), 1024 x 256 169 -> 124 us, 4096 x 1024 2.28 -> 1.95 ms; at batch 16 a 4096-word
 * output layer 146 -> 77 us. Rerunnable since: `balsa bench kernels --shape
 * 512x128,1024x256 --sparsity 0.90625 --batch 57 --threads 1 --accumulate --out-pad 16`
 * against `--out-pad 0` gave 44 -> 42 us and 190-198 -> 133-138 us (twice each, in
 * turn). 16 floats keep 64-byte rows 64-byte aligned. */
static inline int padded_stride(int n) { return n % 128 == 0 ? n + 16 : n; }

/* Sets n floats of backend memory to zero. */
balsa_status dev_zero(balsa_backend *be, float *p, size_t n);

/* The folded first-layer gate row (4H floats, host) of token tok for direction d; only
 * for a folded model (m->fold[0] != NULL). */
static inline const float *model_fold_row(const balsa_model *m, int d, int32_t tok)
{
    return m->fold[d] + (size_t)tok * 4 * m->spec.hidden_size;
}

/* Writes the input_size floats of step pos of s (embedding row or feature row). */
void model_input_row(const balsa_model *m, const engine_seq *s, int pos, float *dst);

/* Runs the FC layers and the head over n rows of backend memory (row stride ld), writing
 * n x output_size floats to out (host). fa/fb are the caller's scratch. */
balsa_status model_fc_head(balsa_model *m, const float *in, int ld, int n, dev_buf *fa,
                           dev_buf *fb, float *out);

#endif
