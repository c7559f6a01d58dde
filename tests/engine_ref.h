/* Test helpers shared by the engine and model tests: random models on the host (dense or
 * balanced-sparse) and an independent double-precision forward pass, written per
 * sequence and per step in the plainest way, that the engine is checked against. */
#ifndef BALSA_TESTS_ENGINE_REF_H
#define BALSA_TESTS_ENGINE_REF_H

#include "engine/model.h"
#include "harness.h"
#include "models/model_file.h"

/* Fills h with random weights for s (values in [-scale, scale)). Matrices (W_ih, W_hh,
 * fc) are pruned to balanced sparsity with the given bank and k when k > 0, else dense. */
static inline void ref_random_host(const model_spec *s, model_host *h, int bank, int k, float scale,
                            unsigned long long seed)
{
    memset(h, 0, sizeof *h);
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int n = model_tensor_list(s, refs);
    for (int i = 0; i < n; i++) {
        const model_tensor_ref *r = &refs[i];
        size_t cnt = (size_t)r->rows * (r->cols > 0 ? r->cols : 1);
        float *v = malloc(sizeof(float) * cnt);
        for (size_t j = 0; j < cnt; j++)
            v[j] = scale * h_rand_f(&seed);
        BALSA_ASSERT(model_host_put(h, r, v, bank, k) == BALSA_OK);
    }
}

/* A token model: an embedding of input floats per token, an LSTM with biases, one linear
 * FC layer with bias to out outputs and a softmax head; every other field zero. */
static inline model_spec ref_token_spec(const char *name, int vocab, int input, int hidden,
                                        int layers, int out)
{
    model_spec s;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "%s", name);
    s.input_kind = MODEL_INPUT_TOKENS;
    s.vocab_size = vocab;
    s.input_size = input;
    s.hidden_size = hidden;
    s.num_layers = layers;
    s.lstm_bias = 1;
    s.n_fc = 1;
    s.fc[0] = (model_fc_spec){out, BALSA_ACT_NONE, 1};
    s.head = MODEL_HEAD_SOFTMAX;
    return s;
}

/* Writes a model file for s at path with ref_random_host's weights (same arguments).
 * BALSA_OK, or model_file_write's status with its message in err. */
static inline balsa_status ref_write_random_model(const char *path, const model_spec *s, int bank,
                                                  int k, float scale, unsigned long long seed,
                                                  char *err, size_t errlen)
{
    model_host h;
    ref_random_host(s, &h, bank, k, scale, seed);
    balsa_status st = model_file_write(path, s, &h, err, errlen);
    model_host_free(&h);
    return st;
}

/* The dense form of a host matrix (malloc'd). */
static inline float *ref_dense(const model_host_mat *m)
{
    float *d = malloc(sizeof(float) * m->rows * m->cols);
    if (m->sparse)
        bsmat_to_dense(&m->sp, d, m->cols);
    else
        memcpy(d, m->dense, sizeof(float) * m->rows * m->cols);
    return d;
}

static inline double ref_sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }

static inline double ref_act(balsa_act a, double v)
{
    switch (a) {
    case BALSA_ACT_RELU: return v > 0 ? v : 0;
    case BALSA_ACT_SIGMOID: return ref_sigmoid(v);
    case BALSA_ACT_TANH: return tanh(v);
    default: return v;
    }
}

/* y = W x (+ b) for a rows x cols dense matrix, in double. */
static inline void ref_matvec(const float *w, int rows, int cols, const double *x, const float *b,
                       double *y)
{
    for (int r = 0; r < rows; r++) {
        double acc = b ? b[r] : 0.0;
        for (int c = 0; c < cols; c++)
            acc += (double)w[(size_t)r * cols + c] * x[c];
        y[r] = acc;
    }
}

/* One sequence through the network: out gets (all ? len : 1) output vectors. */
static inline void ref_forward(const model_spec *s, const model_host *h, const engine_seq *q,
                               int all, double *out)
{
    int T = q->len, I = s->input_size, H = s->hidden_size, nd = s->bidirectional ? 2 : 1;
    int width = I;
    double *x = malloc(sizeof(double) * T * (I > 2 * H ? I : 2 * H + 1));
    for (int t = 0; t < T; t++)
        for (int j = 0; j < I; j++)
            x[(size_t)t * I + j] = s->input_kind == MODEL_INPUT_TOKENS
                                       ? h->embedding[(size_t)q->tokens[t] * I + j]
                                       : q->features[(size_t)t * I + j];
    double *g = malloc(sizeof(double) * 4 * (H + 1)), *g2 = malloc(sizeof(double) * 4 * (H + 1));
    double *hs = malloc(sizeof(double) * (H + 1)), *cs = malloc(sizeof(double) * (H + 1));
    for (int l = 0; l < s->num_layers; l++) {
        double *y = malloc(sizeof(double) * T * nd * H);
        for (int d = 0; d < nd; d++) {
            float *wih = ref_dense(&h->w_ih[l][d]), *whh = ref_dense(&h->w_hh[l][d]);
            for (int j = 0; j < H; j++)
                hs[j] = cs[j] = 0;
            for (int step = 0; step < T; step++) {
                int t = d ? T - 1 - step : step;
                ref_matvec(wih, 4 * H, width, x + (size_t)t * width, h->b_ih[l][d], g);
                ref_matvec(whh, 4 * H, H, hs, h->b_hh[l][d], g2);
                for (int j = 0; j < H; j++) {
                    double gi = ref_sigmoid(g[j] + g2[j]);
                    double gf = ref_sigmoid(g[H + j] + g2[H + j]);
                    double gg = tanh(g[2 * H + j] + g2[2 * H + j]);
                    double go = ref_sigmoid(g[3 * H + j] + g2[3 * H + j]);
                    cs[j] = gf * cs[j] + gi * gg;
                    hs[j] = go * tanh(cs[j]);
                    y[((size_t)t * nd + d) * H + j] = hs[j];
                }
            }
            free(wih);
            free(whh);
        }
        width = nd * H;
        memcpy(x, y, sizeof(double) * T * width);
        free(y);
    }
    /* Rows to push through the FC layers: every step, or the last vector. */
    int nrows = all ? T : 1;
    double *rows = malloc(sizeof(double) * nrows * width);
    if (all)
        memcpy(rows, x, sizeof(double) * T * width);
    else if (nd == 2) {
        memcpy(rows, x + (size_t)(T - 1) * width, sizeof(double) * H);
        memcpy(rows + H, x + H, sizeof(double) * H);
    } else
        memcpy(rows, x + (size_t)(T - 1) * width, sizeof(double) * width);
    int O = model_spec_output_size(s);
    for (int r = 0; r < nrows; r++) {
        double *cur = malloc(sizeof(double) * width);
        memcpy(cur, rows + (size_t)r * width, sizeof(double) * width);
        int cw = width;
        for (int i = 0; i < s->n_fc; i++) {
            float *w = ref_dense(&h->fc_w[i]);
            double *nx = malloc(sizeof(double) * s->fc[i].out);
            ref_matvec(w, s->fc[i].out, cw, cur, h->fc_b[i], nx);
            for (int j = 0; j < s->fc[i].out; j++)
                nx[j] = ref_act(s->fc[i].act, nx[j]);
            free(w);
            free(cur);
            cur = nx;
            cw = s->fc[i].out;
        }
        double *o = out + (size_t)r * O;
        memcpy(o, cur, sizeof(double) * O);
        free(cur);
        if (s->head != MODEL_HEAD_NONE) {
            double mx = o[0], sum = 0;
            for (int j = 1; j < O; j++)
                mx = o[j] > mx ? o[j] : mx;
            for (int j = 0; j < O; j++)
                sum += exp(o[j] - mx);
            for (int j = 0; j < O; j++)
                o[j] = s->head == MODEL_HEAD_SOFTMAX ? exp(o[j] - mx) / sum
                                                     : o[j] - mx - log(sum);
        }
    }
    free(rows);
    free(x);
    free(g);
    free(g2);
    free(hs);
    free(cs);
}

/* Random sequences for s: lengths in [1, maxlen], tokens or features. */
typedef struct {
    engine_seq seq;
    int32_t *tok;
    float *feat;
} ref_seq;

static inline void ref_make_seq(const model_spec *s, ref_seq *r, int len, unsigned long long *rng)
{
    memset(r, 0, sizeof *r);
    r->seq.len = len;
    if (s->input_kind == MODEL_INPUT_TOKENS) {
        r->tok = malloc(sizeof(int32_t) * len);
        for (int t = 0; t < len; t++)
            r->tok[t] = (int32_t)(h_rand_u64(rng) % (unsigned)s->vocab_size);
        r->seq.tokens = r->tok;
    } else {
        r->feat = malloc(sizeof(float) * len * s->input_size);
        for (int i = 0; i < len * s->input_size; i++)
            r->feat[i] = h_rand_f(rng);
        r->seq.features = r->feat;
    }
}

static inline void ref_free_seq(ref_seq *r)
{
    free(r->tok);
    free(r->feat);
}

#endif
