/* The network description: checking it, naming its parts, listing the tensors it needs
 * (PyTorch's names), and the host-side weights that loaders fill before model_build. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static const char *input_names[] = {"tokens", "vectors"};
static const char *head_names[] = {"none", "softmax", "log_softmax"};

const char *model_input_kind_str(model_input_kind k)
{
    return (unsigned)k < 2 ? input_names[k] : "unknown";
}

int model_input_kind_parse(const char *s)
{
    for (int i = 0; i < 2; i++)
        if (strcmp(s, input_names[i]) == 0)
            return i;
    return -1;
}

const char *model_head_str(model_head h) { return (unsigned)h < 3 ? head_names[h] : "unknown"; }

int model_head_parse(const char *s)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(s, head_names[i]) == 0)
            return i;
    return -1;
}

int model_spec_output_size(const model_spec *s)
{
    if (s->n_fc > 0)
        return s->fc[s->n_fc - 1].out;
    if (s->hidden_size > 0)
        return s->hidden_size * (s->bidirectional ? 2 : 1);
    return s->input_size;
}

size_t model_fold_table_bytes(const model_spec *s)
{
    if (s->input_kind != MODEL_INPUT_TOKENS || s->hidden_size <= 0)
        return 0;
    return (size_t)s->vocab_size * 4 * (size_t)s->hidden_size * (s->bidirectional ? 2 : 1) *
           sizeof(float);
}

static int in_range(int v, int lo, int hi) { return v >= lo && v <= hi; }

balsa_status model_spec_check(const model_spec *s, char *err, size_t errlen)
{
#define BAD(...)                                                                          \
    do {                                                                                  \
        snprintf(err, errlen, __VA_ARGS__);                                               \
        return BALSA_ERR_FORMAT;                                                          \
    } while (0)
    if (s->input_kind != MODEL_INPUT_TOKENS && s->input_kind != MODEL_INPUT_VECTORS)
        BAD("description: input kind must be tokens or vectors");
    if (s->input_kind == MODEL_INPUT_TOKENS && !in_range(s->vocab_size, 1, MODEL_MAX_VOCAB))
        BAD("description: vocab_size %d out of range 1..%d", s->vocab_size, MODEL_MAX_VOCAB);
    if (s->input_kind == MODEL_INPUT_VECTORS && s->vocab_size != 0)
        BAD("description: vocab_size must be 0 for vector input");
    if (!in_range(s->input_size, 1, MODEL_MAX_WIDTH))
        BAD("description: input_size %d out of range 1..%d", s->input_size, MODEL_MAX_WIDTH);
    if (s->hidden_size == 0) {
        if (s->num_layers != 0 || s->bidirectional)
            BAD("description: num_layers/bidirectional given without an LSTM (hidden_size 0)");
    } else {
        if (!in_range(s->hidden_size, 1, MODEL_MAX_WIDTH / 4))
            BAD("description: hidden_size %d out of range 1..%d", s->hidden_size,
                MODEL_MAX_WIDTH / 4);
        if (!in_range(s->num_layers, 1, MODEL_MAX_LAYERS))
            BAD("description: num_layers %d out of range 1..%d", s->num_layers,
                MODEL_MAX_LAYERS);
        if (s->bidirectional != 0 && s->bidirectional != 1)
            BAD("description: bidirectional must be true or false");
    }
    if (!in_range(s->n_fc, 0, MODEL_MAX_FC))
        BAD("description: %d fc layers, at most %d", s->n_fc, MODEL_MAX_FC);
    if (s->hidden_size == 0 && s->n_fc == 0)
        BAD("description: the network has neither an LSTM nor an fc layer");
    for (int i = 0; i < s->n_fc; i++) {
        if (!in_range(s->fc[i].out, 1, MODEL_MAX_WIDTH))
            BAD("description: fc.%d out %d out of range 1..%d", i, s->fc[i].out,
                MODEL_MAX_WIDTH);
        if (s->fc[i].act < BALSA_ACT_NONE || s->fc[i].act > BALSA_ACT_TANH)
            BAD("description: fc.%d has an unknown activation", i);
    }
    if (s->head < MODEL_HEAD_NONE || s->head > MODEL_HEAD_LOG_SOFTMAX)
        BAD("description: unknown head");
    return BALSA_OK;
#undef BAD
}

static void add_ref(model_tensor_ref *out, int *n, model_tensor_kind kind, int layer, int dir,
                    int rows, int cols, const char *fmt_name)
{
    model_tensor_ref *r = &out[(*n)++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", fmt_name);
    r->kind = kind;
    r->layer = layer;
    r->dir = dir;
    r->rows = rows;
    r->cols = cols;
}

int model_tensor_list(const model_spec *s, model_tensor_ref *out)
{
    int n = 0;
    char name[48];
    if (s->input_kind == MODEL_INPUT_TOKENS)
        add_ref(out, &n, MODEL_T_EMBEDDING, 0, 0, s->vocab_size, s->input_size,
                "embedding.weight");
    int H = s->hidden_size, ndir = s->bidirectional ? 2 : 1;
    for (int l = 0; l < s->num_layers; l++) {
        int in = l == 0 ? s->input_size : H * ndir;
        for (int d = 0; d < ndir; d++) {
            const char *sfx = d ? "_reverse" : "";
            snprintf(name, sizeof name, "lstm.weight_ih_l%d%s", l, sfx);
            add_ref(out, &n, MODEL_T_W_IH, l, d, 4 * H, in, name);
            snprintf(name, sizeof name, "lstm.weight_hh_l%d%s", l, sfx);
            add_ref(out, &n, MODEL_T_W_HH, l, d, 4 * H, H, name);
            if (s->lstm_bias) {
                snprintf(name, sizeof name, "lstm.bias_ih_l%d%s", l, sfx);
                add_ref(out, &n, MODEL_T_B_IH, l, d, 4 * H, 0, name);
                snprintf(name, sizeof name, "lstm.bias_hh_l%d%s", l, sfx);
                add_ref(out, &n, MODEL_T_B_HH, l, d, 4 * H, 0, name);
            }
        }
    }
    int in = s->hidden_size > 0 ? H * ndir : s->input_size;
    for (int i = 0; i < s->n_fc; i++) {
        snprintf(name, sizeof name, "fc.%d.weight", i);
        add_ref(out, &n, MODEL_T_FC_W, i, 0, s->fc[i].out, in, name);
        if (s->fc[i].bias) {
            snprintf(name, sizeof name, "fc.%d.bias", i);
            add_ref(out, &n, MODEL_T_FC_B, i, 0, s->fc[i].out, 0, name);
        }
        in = s->fc[i].out;
    }
    return n;
}

static void host_mat_free(model_host_mat *m)
{
    bsmat_free(&m->sp);
    free(m->dense);
    memset(m, 0, sizeof *m);
}

void model_host_free(model_host *h)
{
    free(h->embedding);
    for (int l = 0; l < MODEL_MAX_LAYERS; l++)
        for (int d = 0; d < 2; d++) {
            host_mat_free(&h->w_ih[l][d]);
            host_mat_free(&h->w_hh[l][d]);
            free(h->b_ih[l][d]);
            free(h->b_hh[l][d]);
        }
    for (int i = 0; i < MODEL_MAX_FC; i++) {
        host_mat_free(&h->fc_w[i]);
        free(h->fc_b[i]);
    }
    model_vocab_free(&h->vocab);
    memset(h, 0, sizeof *h);
}

model_host_mat *model_host_mat_slot(model_host *h, const model_tensor_ref *ref)
{
    switch (ref->kind) {
    case MODEL_T_W_IH: return &h->w_ih[ref->layer][ref->dir];
    case MODEL_T_W_HH: return &h->w_hh[ref->layer][ref->dir];
    case MODEL_T_FC_W: return &h->fc_w[ref->layer];
    default: return NULL;
    }
}

float **model_host_array_slot(model_host *h, const model_tensor_ref *ref)
{
    switch (ref->kind) {
    case MODEL_T_EMBEDDING: return &h->embedding;
    case MODEL_T_B_IH: return &h->b_ih[ref->layer][ref->dir];
    case MODEL_T_B_HH: return &h->b_hh[ref->layer][ref->dir];
    case MODEL_T_FC_B: return &h->fc_b[ref->layer];
    default: return NULL;
    }
}

balsa_status model_host_put(model_host *h, const model_tensor_ref *ref, float *v, int bank,
                            int k)
{
    model_host_mat *hm = model_host_mat_slot(h, ref);
    if (!hm) {
        *model_host_array_slot(h, ref) = v;
        return BALSA_OK;
    }
    hm->rows = ref->rows;
    hm->cols = ref->cols;
    if (k <= 0) {
        hm->dense = v;
        return BALSA_OK;
    }
    hm->sparse = 1;
    balsa_status st = bsmat_prune(v, ref->rows, ref->cols, ref->cols, bank, k, &hm->sp);
    free(v);
    return st;
}
