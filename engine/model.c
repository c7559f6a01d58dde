/* A model in backend memory and layer-major execution of a batch (model_run).
 *
 * A batch of sequences of different lengths is sorted by length (longest first) and
 * packed time-major like PyTorch's PackedSequence: batch_sizes[t] sequences are still
 * running at step t and their rows are contiguous, at rows offs[t] .. offs[t] +
 * batch_sizes[t] - 1, sequence i (in sorted order) at row offs[t] + i. Per LSTM layer
 * and direction the input projection of all steps is one matmul over all packed rows
 * (both biases folded in); then per step one recurrent matmul accumulates into that
 * step's rows for the sequences still running, and lstm_cell writes h straight into the
 * layer's output (stride H, or 2H with the reverse direction at offset H). A folded token
 * model (model.h, MODEL_FOLD_MAX_BYTES) has that projection of the first layer computed at
 * build time for every token: its gate rows are copied from the table, token by token,
 * into the direction's packing on the host and sent as one transfer (fold_gates).
 *
 * The reverse direction runs over a reverse packing (at reverse step s sequence i reads
 * its position len_i - 1 - s; the running ones are again the first batch_sizes[s]). Its
 * rows do not line up with the forward packing when lengths differ, so the layer input is
 * reordered on the host before and the reverse h after (one download and upload per
 * bidirectional layer); the backend interface has no row gather. When all lengths are
 * equal (a single sequence, for one) reverse step s is forward step T-1-s for every
 * sequence, and the reverse pass works in place on the forward packing instead.
 *
 * Output "last" of a bidirectional model is [forward h at position len-1, reverse h at
 * position 0]: both directions after reading the whole sequence, what PyTorch returns as
 * h_n (torch.cat((h_n[-2], h_n[-1]), 1)). Output "all" is PyTorch's output[t] at every t.
 *
 * State: before each layer and direction its c rows are loaded with the sequences' c0
 * (zeros where none is given) and, when any sequence gives h0, the first step's recurrent
 * term reads h0 rows (zeros for the others: W_hh 0 adds exactly nothing, so a sequence's
 * numbers do not depend on the rest of the batch). After the direction ran, row i of c
 * holds sequence i's final c (rows stop being updated when their sequence ends), and its
 * final h is at its last position (forward) or position 0 (reverse). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exec.h"

balsa_status dev_buf_reserve(balsa_backend *be, dev_buf *b, size_t n)
{
    if (n <= b->cap)
        return BALSA_OK;
    be->ops->free(be, b->p);
    b->p = be->ops->alloc(be, n * sizeof(float));
    b->cap = b->p ? n : 0;
    return b->p ? BALSA_OK : BALSA_ERR_OOM;
}

void dev_buf_release(balsa_backend *be, dev_buf *b)
{
    if (b->p)
        be->ops->free(be, b->p);
    b->p = NULL;
    b->cap = 0;
}

balsa_status host_buf_reserve(host_buf *b, size_t n)
{
    if (n <= b->cap)
        return BALSA_OK;
    free(b->p);
    b->p = malloc((n ? n : 1) * sizeof(float));
    b->cap = b->p ? n : 0;
    return b->p ? BALSA_OK : BALSA_ERR_OOM;
}

void host_buf_release(host_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

balsa_status dev_zero(balsa_backend *be, float *p, size_t n)
{
    static const float zeros[1024];
    while (n > 0) {
        size_t chunk = n < 1024 ? n : 1024;
        balsa_status st = be->ops->to_device(be, p, zeros, chunk * sizeof(float));
        if (st != BALSA_OK)
            return st;
        p += chunk;
        n -= chunk;
    }
    return BALSA_OK;
}

size_t model_state_floats(const model_spec *s)
{
    return (size_t)s->num_layers * (s->bidirectional ? 2 : 1) * (size_t)s->hidden_size;
}

void model_input_row(const balsa_model *m, const engine_seq *s, int pos, float *dst)
{
    int I = m->spec.input_size;
    const float *src = m->spec.input_kind == MODEL_INPUT_TOKENS
                           ? m->embedding + (size_t)s->tokens[pos] * I
                           : s->features + (size_t)pos * I;
    memcpy(dst, src, sizeof(float) * I);
}

/* ---------------------------------------------------------------- build and free */

static void free_weights(balsa_model *m)
{
    balsa_backend *be = m->be;
    for (int l = 0; l < MODEL_MAX_LAYERS; l++)
        for (int d = 0; d < 2; d++) {
            lstm_dir_w *w = &m->lstm[l][d];
            if (w->w_ih)
                be->ops->mat_free(be, w->w_ih);
            if (w->w_hh)
                be->ops->mat_free(be, w->w_hh);
            if (w->w_cat)
                be->ops->mat_free(be, w->w_cat);
            if (w->bias)
                be->ops->free(be, w->bias);
        }
    for (int i = 0; i < MODEL_MAX_FC; i++) {
        if (m->fc_w[i])
            be->ops->mat_free(be, m->fc_w[i]);
        if (m->fc_b[i])
            be->ops->free(be, m->fc_b[i]);
    }
}

void model_free(balsa_model *m)
{
    if (!m)
        return;
    free_weights(m);
    dev_buf *devs[] = {&m->x, &m->xr, &m->g, &m->ya, &m->yb, &m->hr, &m->c, &m->lastv,
                       &m->fa, &m->fb, &m->h0};
    for (size_t i = 0; i < sizeof devs / sizeof *devs; i++)
        dev_buf_release(m->be, devs[i]);
    host_buf *hosts[] = {&m->hx,   &m->hxr,  &m->hy,  &m->hhr,
                         &m->hlast, &m->hout, &m->hst, &m->hg};
    for (size_t i = 0; i < sizeof hosts / sizeof *hosts; i++)
        host_buf_release(hosts[i]);
    model_unfold(m);
    free(m->embedding);
    model_vocab_free(&m->vocab);
    free(m);
}

const model_info *model_get_info(const balsa_model *m) { return &m->info; }
const model_spec *model_get_spec(const balsa_model *m) { return &m->spec; }

size_t model_folded_bytes(const balsa_model *m)
{
    return m->fold[0] ? model_fold_table_bytes(&m->spec) : 0;
}

void model_unfold(balsa_model *m)
{
    for (int d = 0; d < 2; d++) {
        free(m->fold[d]);
        m->fold[d] = NULL;
    }
}

static int all_finite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

/* Checks one host matrix against its expected shape, uploads it, counts its weights. */
static balsa_status upload_mat(balsa_model *m, const model_tensor_ref *ref,
                               const model_host_mat *hm, balsa_mat **out,
                               long long *sparse_dense, long long *sparse_kept, char *err,
                               size_t errlen)
{
    balsa_backend *be = m->be;
    char why[160];
    if (hm->rows != ref->rows || hm->cols != ref->cols) {
        snprintf(err, errlen, "%s: shape [%d, %d], expected [%d, %d]", ref->name, hm->rows,
                 hm->cols, ref->rows, ref->cols);
        return BALSA_ERR_FORMAT;
    }
    long long dense_n = (long long)ref->rows * ref->cols;
    m->info.params_dense += dense_n;
    if (hm->sparse) {
        if (hm->sp.rows != ref->rows || hm->sp.cols != ref->cols) {
            snprintf(err, errlen, "%s: sparse matrix is [%d, %d], expected [%d, %d]",
                     ref->name, hm->sp.rows, hm->sp.cols, ref->rows, ref->cols);
            return BALSA_ERR_FORMAT;
        }
        if (bsmat_validate(&hm->sp, why, sizeof why) != BALSA_OK) {
            snprintf(err, errlen, "%s: %s", ref->name, why);
            return BALSA_ERR_FORMAT;
        }
        long long kept = (long long)hm->sp.rows * hm->sp.nbanks * hm->sp.k;
        m->info.params_stored += kept;
        m->info.weight_bytes += bsmat_bytes(&hm->sp);
        *sparse_dense += (long long)hm->sp.rows * hm->sp.nbanks * hm->sp.bank;
        *sparse_kept += kept;
        if (m->info.bank == 0)
            m->info.bank = hm->sp.bank;
        balsa_status st = be->ops->upload_sparse(be, &hm->sp, out);
        if (st != BALSA_OK)
            snprintf(err, errlen, "%s: upload to the %s backend failed: %s", ref->name,
                     be->ops->name, balsa_status_str(st));
        return st;
    }
    if (!hm->dense) {
        snprintf(err, errlen, "%s: missing", ref->name);
        return BALSA_ERR_FORMAT;
    }
    if (!all_finite(hm->dense, (size_t)dense_n)) {
        snprintf(err, errlen, "%s: value not finite", ref->name);
        return BALSA_ERR_FORMAT;
    }
    m->info.params_stored += dense_n;
    m->info.weight_bytes += (size_t)dense_n * sizeof(float);
    balsa_status st = be->ops->upload_dense(be, hm->dense, hm->rows, hm->cols, out);
    if (st != BALSA_OK)
        snprintf(err, errlen, "%s: upload to the %s backend failed: %s", ref->name,
                 be->ops->name, balsa_status_str(st));
    return st;
}

/* Uploads a bias (sum of two host vectors, either may be NULL) of n floats. */
static balsa_status upload_bias(balsa_model *m, const float *a, const float *b, int n,
                                float **out)
{
    float *tmp = malloc(sizeof(float) * n);
    if (!tmp)
        return BALSA_ERR_OOM;
    for (int i = 0; i < n; i++)
        tmp[i] = (a ? a[i] : 0.0f) + (b ? b[i] : 0.0f);
    balsa_status st = BALSA_ERR_OOM;
    *out = m->be->ops->alloc(m->be, sizeof(float) * n);
    if (*out)
        st = m->be->ops->to_device(m->be, *out, tmp, sizeof(float) * n);
    free(tmp);
    return st;
}

int model_layer_joins(const model_spec *s, const model_host *h, int l)
{
    if (s->bidirectional || l < 1 || l >= s->num_layers || s->hidden_size <= 0)
        return 0;
    const model_host_mat *a = &h->w_ih[l][0], *b = &h->w_hh[l][0];
    return a->sparse && b->sparse && a->sp.bank == b->sp.bank && a->sp.k == b->sp.k &&
           a->sp.rows == b->sp.rows;
}

/* The joined [W_ih | W_hh] of the layers model_layer_joins names, on a host-memory
 * backend, and where the stream keeps each layer's h (h_off, h_ld). A step of the demo
 * model's second layer (two 512 x 128 products) then runs one 512 x 256 product: 77 -> 64
 * us at batch 53, 6.2-7.4 -> 5.2 us at batch 1 (`balsa bench kernels --shape
 * 512x128,512x256 --sparsity 0.90625 --batch 1,53 --threads 1 --accumulate --out-pad 16`,
 * AMD EPYC Zen 1); the hidden-650 model's (2600 x 650, banks of 32, a gap of 22 columns)
 * 2 x 76.8 -> 131.3 us at batch 1 and 2 x 882 = 1764 against 1798 us at batch 53
 * (`--shape 2600x650,2600x1322`). */
static balsa_status build_joined(balsa_model *m, const model_host *h, char *err,
                                 size_t errlen)
{
    const int H = m->spec.hidden_size;
    m->h_off[0] = 0;
    for (int l = 1; l < m->spec.num_layers; l++) {
        int joins = m->be->host_memory && model_layer_joins(&m->spec, h, l);
        const bsmat *a = &h->w_ih[l][0].sp;
        m->h_off[l] = m->h_off[l - 1] + (joins ? a->nbanks * a->bank : H);
        if (!joins)
            continue;
        bsmat cat;
        balsa_status st = bsmat_hcat(a, &h->w_hh[l][0].sp, &cat);
        if (st == BALSA_OK)
            st = m->be->ops->upload_sparse(m->be, &cat, &m->lstm[l][0].w_cat);
        bsmat_free(&cat);
        if (st != BALSA_OK) {
            snprintf(err, errlen, "lstm layer %d: joining W_ih and W_hh: %s", l,
                     balsa_status_str(st));
            return st;
        }
    }
    m->h_ld = m->spec.num_layers > 0 ? m->h_off[m->spec.num_layers - 1] + H : 0;
    return BALSA_OK;
}

static balsa_status build_weights(balsa_model *m, const model_host *h, char *err,
                                  size_t errlen)
{
    const model_spec *s = &m->spec;
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int nref = model_tensor_list(s, refs);
    long long sp_dense = 0, sp_kept = 0;
    balsa_status st = BALSA_OK;
    model_host *hh = (model_host *)h; /* the slot accessors only read through it here */
    for (int i = 0; i < nref && st == BALSA_OK; i++) {
        const model_tensor_ref *r = &refs[i];
        if (r->cols > 0 && r->kind != MODEL_T_EMBEDDING) {
            balsa_mat **dst = r->kind == MODEL_T_W_IH   ? &m->lstm[r->layer][r->dir].w_ih
                              : r->kind == MODEL_T_W_HH ? &m->lstm[r->layer][r->dir].w_hh
                                                        : &m->fc_w[r->layer];
            st = upload_mat(m, r, model_host_mat_slot(hh, r), dst, &sp_dense, &sp_kept, err,
                            errlen);
            continue;
        }
        const float *v = *model_host_array_slot(hh, r);
        size_t n = (size_t)r->rows * (r->cols > 0 ? r->cols : 1);
        if (!v) {
            snprintf(err, errlen, "%s: missing", r->name);
            return BALSA_ERR_FORMAT;
        }
        if (!all_finite(v, n)) {
            snprintf(err, errlen, "%s: value not finite", r->name);
            return BALSA_ERR_FORMAT;
        }
        m->info.params_dense += (long long)n;
        m->info.params_stored += (long long)n;
        m->info.weight_bytes += n * sizeof(float);
        if (r->kind == MODEL_T_EMBEDDING) {
            m->embedding = malloc(n * sizeof(float));
            if (!m->embedding)
                return BALSA_ERR_OOM;
            memcpy(m->embedding, v, n * sizeof(float));
        } else if (r->kind == MODEL_T_FC_B) {
            st = upload_bias(m, v, NULL, r->rows, &m->fc_b[r->layer]);
        }
        /* LSTM biases are summed and uploaded below, once both are checked. */
    }
    if (st != BALSA_OK) {
        if (st == BALSA_ERR_OOM && !err[0])
            snprintf(err, errlen, "out of memory while uploading the weights");
        return st;
    }
    int ndir = s->bidirectional ? 2 : 1;
    for (int l = 0; l < s->num_layers; l++)
        for (int d = 0; d < ndir; d++) {
            st = upload_bias(m, h->b_ih[l][d], h->b_hh[l][d], 4 * s->hidden_size,
                             &m->lstm[l][d].bias);
            if (st != BALSA_OK) {
                snprintf(err, errlen, "out of memory while uploading the LSTM biases");
                return st;
            }
        }
    m->info.sparsity = sp_dense > 0 ? 1.0 - (double)sp_kept / (double)sp_dense : 0.0;
    return build_joined(m, h, err, errlen);
}

/* Tokens per product while folding: the output scratch stays within 4 MiB (at least 4
 * tokens at a time, since 4H <= 4 * MODEL_MAX_WIDTH = 2^18 floats). */
#define FOLD_SCRATCH_FLOATS ((size_t)1 << 20)

/* Folds the embedding into the first LSTM layer when the table fits MODEL_FOLD_MAX_BYTES
 * (model.h): for each direction, every token's embedding row goes through the layer's own
 * input product, W_ih_l0 E + bias on the backend, as many tokens per matmul as the
 * scratch holds, and the gate rows come back to the host table. The same op with the same
 * bias as the unfolded path, so a table row is what that path would compute for the token
 * (up to the rounding of a different batch shape). */
static balsa_status fold_build(balsa_model *m, char *err, size_t errlen)
{
    const model_spec *s = &m->spec;
    size_t bytes = model_fold_table_bytes(s);
    if (bytes == 0 || bytes > MODEL_FOLD_MAX_BYTES)
        return BALSA_OK;
    balsa_backend *be = m->be;
    int V = s->vocab_size, I = s->input_size, G = 4 * s->hidden_size;
    int ndir = s->bidirectional ? 2 : 1;
    size_t per = FOLD_SCRATCH_FLOATS / (size_t)G;
    int chunk = per < (size_t)V ? (int)per : V;
    dev_buf x = {0}, y = {0};
    balsa_status st = dev_buf_reserve(be, &x, (size_t)chunk * I);
    if (st == BALSA_OK)
        st = dev_buf_reserve(be, &y, (size_t)chunk * G);
    for (int d = 0; d < ndir && st == BALSA_OK; d++) {
        const lstm_dir_w *w = &m->lstm[0][d];
        m->fold[d] = malloc((size_t)V * G * sizeof(float));
        if (!m->fold[d])
            st = BALSA_ERR_OOM;
        for (int v0 = 0; v0 < V && st == BALSA_OK; v0 += chunk) {
            int n = V - v0 < chunk ? V - v0 : chunk;
            st = be->ops->to_device(be, x.p, m->embedding + (size_t)v0 * I,
                                    (size_t)n * I * sizeof(float));
            if (st == BALSA_OK)
                st = be->ops->matmul(be, w->w_ih, x.p, I, n, w->bias, 0, BALSA_ACT_NONE, y.p, G);
            if (st == BALSA_OK)
                st = be->ops->to_host(be, m->fold[d] + (size_t)v0 * G, y.p,
                                      (size_t)n * G * sizeof(float));
        }
    }
    if (st == BALSA_OK)
        st = be->ops->synchronize(be);
    dev_buf_release(be, &x);
    dev_buf_release(be, &y);
    if (st != BALSA_OK) {
        model_unfold(m);
        snprintf(err, errlen, "folding the embedding into lstm layer 0 (%zu bytes): %s", bytes,
                 balsa_status_str(st));
    }
    return st;
}

balsa_status model_build(const model_spec *s, const model_host *h, balsa_backend *be,
                         balsa_model **out, char *err, size_t errlen)
{
    *out = NULL;
    if (errlen)
        err[0] = 0;
    balsa_status st = model_spec_check(s, err, errlen);
    if (st != BALSA_OK)
        return st;
    balsa_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return BALSA_ERR_OOM;
    }
    m->spec = *s;
    m->be = be;
    if (h->vocab.n && (s->input_kind != MODEL_INPUT_TOKENS || h->vocab.n != s->vocab_size)) {
        snprintf(err, errlen, "vocabulary: %d entries, expected %d (one per token id)",
                 h->vocab.n, s->input_kind == MODEL_INPUT_TOKENS ? s->vocab_size : 0);
        free(m);
        return BALSA_ERR_FORMAT;
    }
    st = model_vocab_copy(&m->vocab, &h->vocab);
    if (st != BALSA_OK)
        snprintf(err, errlen, "out of memory for the vocabulary");
    else
        st = build_weights(m, h, err, errlen);
    if (st == BALSA_OK)
        st = fold_build(m, err, errlen);
    if (st != BALSA_OK) {
        model_free(m);
        return st;
    }
    int in = s->hidden_size > 0 ? s->hidden_size * (s->bidirectional ? 2 : 1) : s->input_size;
    for (int i = 0; i < s->n_fc; i++) {
        m->fc_in[i] = in;
        in = s->fc[i].out;
        if (padded_stride(in) > m->max_fc_out)
            m->max_fc_out = padded_stride(in);
    }
    model_info *info = &m->info;
    snprintf(info->name, sizeof info->name, "%s", s->name);
    info->input_kind = s->input_kind;
    info->vocab_size = s->vocab_size;
    info->input_size = s->input_size;
    info->output_size = model_spec_output_size(s);
    info->hidden_size = s->hidden_size;
    info->num_layers = s->num_layers;
    info->bidirectional = s->bidirectional;
    info->head = s->head;
    info->has_vocabulary = m->vocab.n > 0;
    info->can_generate = s->input_kind == MODEL_INPUT_TOKENS && s->hidden_size > 0 &&
                         !s->bidirectional && info->output_size == s->vocab_size;
    *out = m;
    return BALSA_OK;
}

const char *model_token_str(const balsa_model *m, int id)
{
    return id >= 0 && id < m->vocab.n ? m->vocab.tok[id] : NULL;
}

balsa_status model_encode_text(const balsa_model *m, const char *text, size_t len,
                               int32_t *ids, int *n, char *err, size_t errlen)
{
    return model_vocab_encode(&m->vocab, text, len, ids, n, err, errlen);
}

/* Checks a sequence's state fields: none for a model without an LSTM, finite h0/c0. */
static balsa_status check_state(const model_spec *sp, const engine_seq *s, char *err,
                                size_t errlen)
{
    if (sp->hidden_size == 0) {
        if (!s->h0 && !s->c0 && !s->hn && !s->cn)
            return BALSA_OK;
        snprintf(err, errlen, "model \"%s\" has no LSTM, so no state", sp->name);
        return BALSA_ERR_INVALID;
    }
    const float *init[2] = {s->h0, s->c0};
    int D = sp->bidirectional ? 2 : 1, H = sp->hidden_size;
    size_t n = model_state_floats(sp);
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; init[k] && i < n; i++)
            if (!isfinite(init[k][i])) {
                int ld = (int)(i / H);
                snprintf(err, errlen, "%s: unit %d of layer %d, direction %d is not finite",
                         k ? "c0" : "h0", (int)(i % H), ld / D, ld % D);
                return BALSA_ERR_INVALID;
            }
    return BALSA_OK;
}

balsa_status model_check_seq(const balsa_model *m, const engine_seq *s, char *err,
                             size_t errlen)
{
    const model_spec *sp = &m->spec;
    if (check_state(sp, s, err, errlen) != BALSA_OK)
        return BALSA_ERR_INVALID;
    if (s->len < 1 || s->len > MODEL_MAX_SEQ_LEN) {
        snprintf(err, errlen, "sequence length %d out of range 1..%d", s->len,
                 MODEL_MAX_SEQ_LEN);
        return BALSA_ERR_INVALID;
    }
    if (sp->input_kind == MODEL_INPUT_TOKENS) {
        if (!s->tokens) {
            snprintf(err, errlen, "model \"%s\" takes token ids", sp->name);
            return BALSA_ERR_INVALID;
        }
        for (int t = 0; t < s->len; t++)
            if (s->tokens[t] < 0 || s->tokens[t] >= sp->vocab_size) {
                snprintf(err, errlen, "token %d at position %d out of range 0..%d",
                         (int)s->tokens[t], t, sp->vocab_size - 1);
                return BALSA_ERR_INVALID;
            }
        return BALSA_OK;
    }
    if (!s->features) {
        snprintf(err, errlen, "model \"%s\" takes vectors of %d features", sp->name,
                 sp->input_size);
        return BALSA_ERR_INVALID;
    }
    size_t n = (size_t)s->len * sp->input_size;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(s->features[i])) {
            snprintf(err, errlen, "feature %d of step %d is not finite",
                     (int)(i % sp->input_size), (int)(i / sp->input_size));
            return BALSA_ERR_INVALID;
        }
    return BALSA_OK;
}

/* ---------------------------------------------------------------- FC layers and head */

balsa_status model_fc_head(balsa_model *m, const float *in, int ld, int n, dev_buf *fa,
                           dev_buf *fb, float *out)
{
    balsa_backend *be = m->be;
    const model_spec *s = &m->spec;
    int O = m->info.output_size;
    if (n == 0)
        return BALSA_OK;
    const float *cur = in;
    int ldc = ld;
    balsa_status st = BALSA_OK;
    for (int i = 0; i < s->n_fc && st == BALSA_OK; i++) {
        dev_buf *dst = i % 2 ? fb : fa;
        /* The last layer's rows are the answer, copied out packed: padded only when the
         * head follows, which reads them and writes packed rows into the other buffer. */
        int out_ld = i < s->n_fc - 1 || s->head != MODEL_HEAD_NONE ? padded_stride(s->fc[i].out)
                                                                   : s->fc[i].out;
        st = dev_buf_reserve(be, dst, (size_t)n * m->max_fc_out);
        if (st == BALSA_OK)
            st = be->ops->matmul(be, m->fc_w[i], cur, ldc, n, m->fc_b[i], 0, s->fc[i].act,
                                 dst->p, out_ld);
        cur = dst->p;
        ldc = out_ld;
    }
    if (st != BALSA_OK)
        return st;
    /* With no FC layer the input is the LSTM output itself, whose stride is O; the head
     * then writes into fa, since the input is the caller's (the LSTM state). */
    BALSA_ASSERT(s->n_fc > 0 || ldc == O);
    if (s->head != MODEL_HEAD_NONE) {
        dev_buf *dst = s->n_fc % 2 ? fb : fa; /* the buffer cur is not in */
        st = dev_buf_reserve(be, dst, (size_t)n * O);
        if (st == BALSA_OK)
            st = be->ops->softmax(be, cur, ldc, n, O, s->head == MODEL_HEAD_LOG_SOFTMAX, dst->p,
                                  O);
        cur = dst->p;
    }
    if (st == BALSA_OK)
        st = be->ops->to_host(be, out, cur, (size_t)n * O * sizeof(float));
    return st == BALSA_OK ? be->ops->synchronize(be) : st;
}

/* ---------------------------------------------------------------- model_run */

typedef struct {
    int n, T;
    int *order;      /* sorted position -> caller's index */
    int *len;        /* by sorted position */
    int *bs;         /* batch_sizes[t], t < T, and bs[T] = 0 */
    size_t *offs;    /* first packed row of step t, t <= T (offs[T] = rows) */
} packing;

static void packing_free(packing *p)
{
    free(p->order);
    free(p->len);
    free(p->bs);
    free(p->offs);
}

static balsa_status packing_init(packing *p, const engine_seq *seqs, int n)
{
    memset(p, 0, sizeof *p);
    p->n = n;
    p->order = malloc(sizeof(int) * n);
    p->len = malloc(sizeof(int) * n);
    if (!p->order || !p->len)
        return BALSA_ERR_OOM;
    /* Insertion sort, longest first, ties in the caller's order: stable, and n is a
     * batch (tens), not a data set. */
    for (int i = 0; i < n; i++) {
        int j = i;
        while (j > 0 && seqs[p->order[j - 1]].len < seqs[i].len) {
            p->order[j] = p->order[j - 1];
            j--;
        }
        p->order[j] = i;
    }
    for (int i = 0; i < n; i++)
        p->len[i] = seqs[p->order[i]].len;
    p->T = p->len[0];
    p->bs = calloc((size_t)p->T + 1, sizeof(int));
    p->offs = calloc((size_t)p->T + 1, sizeof(size_t));
    if (!p->bs || !p->offs)
        return BALSA_ERR_OOM;
    for (int i = 0; i < n; i++)
        for (int t = 0; t < p->len[i]; t++)
            p->bs[t]++;
    for (int t = 0; t < p->T; t++)
        p->offs[t + 1] = p->offs[t] + p->bs[t];
    return BALSA_OK;
}

/* Packed row of sorted sequence i at forward position t. */
static size_t prow(const packing *p, int i, int t) { return p->offs[t] + i; }

/* One recurrent step for n rows: gates (stride padded_stride(4 * H)) += W_hh h_prev
 * (skipped when h_prev is NULL, a zero state before the first step), then the cell writes
 * c and h. A backend that fuses both into one op (lstm_step, optional) gets them as one
 * call; h_prev and h are always different rows here, as lstm_step requires. */
static balsa_status recurrent_step(balsa_backend *be, const balsa_mat *w_hh, const float *h_prev,
                                   int ldhp, float *gates, float *c, float *h, int ldh, int n,
                                   int H)
{
    const int ldg = padded_stride(4 * H);
    if (h_prev && be->ops->lstm_step)
        return be->ops->lstm_step(be, w_hh, h_prev, ldhp, gates, ldg, c, h, ldh, n, H);
    balsa_status st = BALSA_OK;
    if (h_prev)
        st = be->ops->matmul(be, w_hh, h_prev, ldhp, n, NULL, 1, BALSA_ACT_NONE, gates, ldg);
    if (st == BALSA_OK)
        st = be->ops->lstm_cell(be, gates, ldg, c, h, ldh, n, H);
    return st;
}

/* Loads row i of dst (backend, n x H) with sorted sequence i's initial h (which 0) or c
 * (which 1) for state entry `entry` (layer * D + direction), zeros where it gives none. */
static balsa_status upload_state(balsa_model *m, const packing *p, const engine_seq *seqs,
                                 int which, int entry, float *dst)
{
    int H = m->spec.hidden_size;
    for (int i = 0; i < p->n; i++) {
        const engine_seq *q = &seqs[p->order[i]];
        const float *src = which ? q->c0 : q->h0;
        float *row = m->hst.p + (size_t)i * H;
        if (src)
            memcpy(row, src + (size_t)entry * H, sizeof(float) * H);
        else
            memset(row, 0, sizeof(float) * H);
    }
    return m->be->ops->to_device(m->be, dst, m->hst.p, (size_t)p->n * H * sizeof(float));
}

/* Sets m->c to the initial c of layer l, direction d, for every sequence, and *h0 to their
 * initial h rows (m->h0, stride H) or NULL when no sequence gives one (all zero). */
static balsa_status load_state(balsa_model *m, const packing *p, const engine_seq *seqs, int l,
                               int d, const float **h0)
{
    int entry = l * (m->spec.bidirectional ? 2 : 1) + d, any_h = 0, any_c = 0;
    for (int i = 0; i < p->n; i++) {
        any_h |= seqs[i].h0 != NULL;
        any_c |= seqs[i].c0 != NULL;
    }
    balsa_status st = any_c ? upload_state(m, p, seqs, 1, entry, m->c.p)
                            : dev_zero(m->be, m->c.p, (size_t)p->n * m->spec.hidden_size);
    *h0 = NULL;
    if (st == BALSA_OK && any_h) {
        st = upload_state(m, p, seqs, 0, entry, m->h0.p);
        *h0 = m->h0.p;
    }
    return st;
}

/* After layer l, direction d ran: copies each sequence's final c (row i of m->c) and h
 * (in y, stride ldy: the forward direction's at the last position, columns 0..H; the
 * reverse one's at position 0, columns H..2H) to its hn/cn, where asked. */
static balsa_status save_state(balsa_model *m, const packing *p, const engine_seq *seqs, int l,
                               int d, const float *y, int ldy)
{
    balsa_backend *be = m->be;
    int H = m->spec.hidden_size, any_c = 0, any_h = 0;
    size_t off = (size_t)(l * (m->spec.bidirectional ? 2 : 1) + d) * H;
    for (int i = 0; i < p->n; i++) {
        any_h |= seqs[i].hn != NULL;
        any_c |= seqs[i].cn != NULL;
    }
    balsa_status st = BALSA_OK;
    if (any_c)
        st = be->ops->to_host(be, m->hst.p, m->c.p, (size_t)p->n * H * sizeof(float));
    for (int i = 0; i < p->n && st == BALSA_OK && (any_c || any_h); i++) {
        const engine_seq *q = &seqs[p->order[i]];
        if (q->cn)
            memcpy(q->cn + off, m->hst.p + (size_t)i * H, sizeof(float) * H);
        if (q->hn)
            st = be->ops->to_host(be, q->hn + off,
                                  y + prow(p, i, d ? 0 : p->len[i] - 1) * ldy + (size_t)d * H,
                                  sizeof(float) * H);
    }
    return st == BALSA_OK && (any_c || any_h) ? be->ops->synchronize(be) : st;
}

/* A folded model's first layer, direction d: fills m->g with the table rows of the
 * tokens, row prow(p, i, t) with the token sorted sequence i reads at step t of this
 * direction's packing: position t (forward packing, rev 0) or len - 1 - t (reverse
 * packing, rev 1). Gathered on the host and sent as one transfer. */
static balsa_status fold_gates(balsa_model *m, const packing *p, const engine_seq *seqs, int d,
                               int rev)
{
    size_t row = (size_t)4 * m->spec.hidden_size, G = (size_t)padded_stride((int)row);
    for (int i = 0; i < p->n; i++) {
        const int32_t *tok = seqs[p->order[i]].tokens;
        for (int t = 0; t < p->len[i]; t++)
            memcpy(m->hg.p + prow(p, i, t) * G,
                   model_fold_row(m, d, tok[rev ? p->len[i] - 1 - t : t]), sizeof(float) * row);
    }
    return m->be->ops->to_device(m->be, m->g.p, m->hg.p, p->offs[p->T] * G * sizeof(float));
}

/* Runs one direction of one layer: gates from the input projection (one matmul over all
 * rows; in NULL: m->g holds them already, from fold_gates), then the recurrence step by
 * step from m->c (loaded by the caller) and h0 (NULL: zeros; else n rows at stride H).
 * in/out are in this direction's packing. */
static balsa_status run_direction(balsa_model *m, const lstm_dir_w *w, const packing *p,
                                  const float *in, int ld_in, float *out, int ld_out,
                                  const float *h0)
{
    balsa_backend *be = m->be;
    int H = m->spec.hidden_size;
    size_t R = p->offs[p->T];
    const size_t G = (size_t)padded_stride(4 * H);
    balsa_status st = in ? be->ops->matmul(be, w->w_ih, in, ld_in, (int)R, w->bias, 0,
                                           BALSA_ACT_NONE, m->g.p, (int)G)
                         : BALSA_OK;
    for (int t = 0; t < p->T && st == BALSA_OK; t++) {
        float *gt = m->g.p + p->offs[t] * G;
        st = recurrent_step(be, w->w_hh, t > 0 ? out + p->offs[t - 1] * ld_out : h0,
                            t > 0 ? ld_out : H, gt, m->c.p, out + p->offs[t] * ld_out, ld_out,
                            p->bs[t], H);
    }
    return st;
}

/* The reverse direction of a bidirectional layer whose input hin (host, forward packing,
 * stride ld_in) is given, or NULL when m->g holds its gate rows in the reverse packing
 * already (fold_gates); writes reverse h into columns H..2H of y (backend, forward
 * packing, stride 2H), reordering on the host. State as in run_direction. */
static balsa_status run_reverse(balsa_model *m, const lstm_dir_w *w, const packing *p,
                                const float *hin, int ld_in, float *y, const float *h0)
{
    balsa_backend *be = m->be;
    int H = m->spec.hidden_size;
    size_t R = p->offs[p->T];
    balsa_status st = BALSA_OK;
    if (hin) {
        for (int i = 0; i < p->n; i++)
            for (int s = 0; s < p->len[i]; s++)
                memcpy(m->hxr.p + prow(p, i, s) * ld_in,
                       hin + prow(p, i, p->len[i] - 1 - s) * ld_in, sizeof(float) * ld_in);
        st = be->ops->to_device(be, m->xr.p, m->hxr.p, R * ld_in * sizeof(float));
    }
    if (st == BALSA_OK)
        st = run_direction(m, w, p, hin ? m->xr.p : NULL, ld_in, m->hr.p, H, h0);
    if (st == BALSA_OK)
        st = be->ops->to_host(be, m->hhr.p, m->hr.p, R * H * sizeof(float));
    if (st == BALSA_OK)
        st = be->ops->to_host(be, m->hy.p, y, R * 2 * H * sizeof(float));
    if (st == BALSA_OK)
        st = be->ops->synchronize(be);
    if (st != BALSA_OK)
        return st;
    for (int i = 0; i < p->n; i++)
        for (int s = 0; s < p->len[i]; s++)
            memcpy(m->hy.p + prow(p, i, p->len[i] - 1 - s) * 2 * H + H,
                   m->hhr.p + prow(p, i, s) * H, sizeof(float) * H);
    return be->ops->to_device(be, y, m->hy.p, R * 2 * H * sizeof(float));
}

/* The reverse direction when every sequence has the same length: reverse step s is then
 * forward step T-1-s for all of them, so it reads the forward packing's projection rows
 * (in NULL: m->g holds them already, from fold_gates) and writes h straight into columns
 * H..2H of y, with no reordering. State as in run_direction. */
static balsa_status run_reverse_aligned(balsa_model *m, const lstm_dir_w *w, const packing *p,
                                        const float *in, int ld_in, float *y, const float *h0)
{
    balsa_backend *be = m->be;
    int H = m->spec.hidden_size, ldy = 2 * H;
    size_t R = p->offs[p->T];
    const size_t G = (size_t)padded_stride(4 * H);
    balsa_status st = in ? be->ops->matmul(be, w->w_ih, in, ld_in, (int)R, w->bias, 0,
                                           BALSA_ACT_NONE, m->g.p, (int)G)
                         : BALSA_OK;
    for (int t = p->T - 1; t >= 0 && st == BALSA_OK; t--) {
        float *gt = m->g.p + p->offs[t] * G;
        int first = t == p->T - 1;
        st = recurrent_step(be, w->w_hh, first ? h0 : y + p->offs[t + 1] * ldy + H,
                            first ? H : ldy, gt, m->c.p, y + p->offs[t] * ldy + H, ldy, p->n, H);
    }
    return st;
}

static balsa_status reserve_run(balsa_model *m, const packing *p)
{
    const model_spec *s = &m->spec;
    balsa_backend *be = m->be;
    size_t R = p->offs[p->T], n = p->n;
    int H = s->hidden_size, ndir = s->bidirectional ? 2 : 1, I = s->input_size;
    int wide = I > H * ndir ? I : H * ndir;
    int O = m->info.output_size;
    int aligned = p->len[0] == p->len[p->n - 1];
    /* A folded model's first layer reads the table (through hg), not the embedding rows. */
    const size_t G = H > 0 ? (size_t)padded_stride(4 * H) : 0;
    balsa_status st = m->fold[0] ? host_buf_reserve(&m->hg, R * G)
                                 : host_buf_reserve(&m->hx, R * I);
    if (st == BALSA_OK)
        st = host_buf_reserve(&m->hout, R * O);
    if (st == BALSA_OK)
        st = host_buf_reserve(&m->hlast, n * (H * ndir > I ? H * ndir : I));
    if (st == BALSA_OK && !m->fold[0])
        st = dev_buf_reserve(be, &m->x, R * I);
    if (st == BALSA_OK)
        st = dev_buf_reserve(be, &m->lastv, n * (H * ndir > I ? H * ndir : I));
    if (H > 0) {
        if (st == BALSA_OK)
            st = dev_buf_reserve(be, &m->g, R * G);
        if (st == BALSA_OK)
            st = dev_buf_reserve(be, &m->c, n * H);
        if (st == BALSA_OK)
            st = dev_buf_reserve(be, &m->h0, n * H);
        if (st == BALSA_OK)
            st = host_buf_reserve(&m->hst, n * H);
        if (st == BALSA_OK)
            st = dev_buf_reserve(be, &m->ya, R * H * ndir);
        if (st == BALSA_OK && s->num_layers > 1)
            st = dev_buf_reserve(be, &m->yb, R * H * ndir);
    }
    if (ndir == 2 && !aligned) {
        if (st == BALSA_OK)
            st = host_buf_reserve(&m->hxr, R * wide);
        if (st == BALSA_OK)
            st = host_buf_reserve(&m->hy, R * wide);
        if (st == BALSA_OK)
            st = host_buf_reserve(&m->hhr, R * H);
        if (st == BALSA_OK)
            st = dev_buf_reserve(be, &m->xr, R * wide);
        if (st == BALSA_OK)
            st = dev_buf_reserve(be, &m->hr, R * H);
    }
    return st;
}

/* The LSTM stack over the packed input in m->x (a folded model: over the sequences' tokens,
 * the first layer's gates from the table), from and to the sequences' states; returns the
 * top layer's output (backend, forward packing, stride *ld). */
static balsa_status run_lstm(balsa_model *m, const packing *p, const engine_seq *seqs,
                             float **top, int *ld)
{
    const model_spec *s = &m->spec;
    int H = s->hidden_size, ndir = s->bidirectional ? 2 : 1;
    const float *in = m->fold[0] ? NULL : m->x.p; /* NULL: the layer's gates come folded */
    int ld_in = s->input_size;
    balsa_status st = BALSA_OK;
    float *y = NULL;
    int aligned = p->len[0] == p->len[p->n - 1];
    const float *h0;
    for (int l = 0; l < s->num_layers && st == BALSA_OK; l++) {
        y = l % 2 ? m->yb.p : m->ya.p;
        st = load_state(m, p, seqs, l, 0, &h0);
        if (st == BALSA_OK && !in)
            st = fold_gates(m, p, seqs, 0, 0);
        if (st == BALSA_OK)
            st = run_direction(m, &m->lstm[l][0], p, in, ld_in, y, H * ndir, h0);
        if (st == BALSA_OK)
            st = save_state(m, p, seqs, l, 0, y, H * ndir);
        if (st == BALSA_OK && ndir == 2) {
            st = load_state(m, p, seqs, l, 1, &h0);
            if (st == BALSA_OK && !in)
                st = fold_gates(m, p, seqs, 1, !aligned);
            if (st == BALSA_OK && aligned)
                st = run_reverse_aligned(m, &m->lstm[l][1], p, in, ld_in, y, h0);
            else if (st == BALSA_OK) /* run_reverse reads its host input before it
                                      * overwrites m->hy, so a deeper layer can pass the
                                      * previous layer's output m->hy still holds */
                st = run_reverse(m, &m->lstm[l][1], p,
                                 !in ? NULL : l == 0 ? m->hx.p : m->hy.p, ld_in, y, h0);
            if (st == BALSA_OK)
                st = save_state(m, p, seqs, l, 1, y, H * ndir);
        }
        in = y;
        ld_in = H * ndir;
    }
    *top = y;
    *ld = H * ndir;
    return st;
}

balsa_status model_run(balsa_model *m, const engine_seq *seqs, int n, int all_steps,
                       float *const *outputs)
{
    if (n < 0)
        return BALSA_ERR_INVALID;
    if (n == 0)
        return BALSA_OK;
    char err[128];
    for (int i = 0; i < n; i++)
        if (model_check_seq(m, &seqs[i], err, sizeof err) != BALSA_OK || !outputs[i])
            return BALSA_ERR_INVALID;
    const model_spec *s = &m->spec;
    balsa_backend *be = m->be;
    packing p;
    balsa_status st = packing_init(&p, seqs, n);
    if (st == BALSA_OK)
        st = reserve_run(m, &p);
    if (st != BALSA_OK) {
        packing_free(&p);
        return st;
    }
    int I = s->input_size, O = m->info.output_size;
    size_t R = p.offs[p.T];
    /* A folded model (which has an LSTM) never needs the embedding rows: run_lstm takes
     * the first layer's gates from the table. */
    for (int i = 0; i < n && !m->fold[0]; i++)
        for (int t = 0; t < p.len[i]; t++)
            model_input_row(m, &seqs[p.order[i]], t, m->hx.p + prow(&p, i, t) * I);

    float *top = NULL;
    int ld = I;
    if (s->hidden_size > 0) {
        if (!m->fold[0])
            st = be->ops->to_device(be, m->x.p, m->hx.p, R * I * sizeof(float));
        if (st == BALSA_OK)
            st = run_lstm(m, &p, seqs, &top, &ld);
    }
    if (st == BALSA_OK && all_steps) {
        if (!top) {
            st = be->ops->to_device(be, m->x.p, m->hx.p, R * I * sizeof(float));
            top = m->x.p;
        }
        if (st == BALSA_OK)
            st = model_fc_head(m, top, ld, (int)R, &m->fa, &m->fb, m->hout.p);
        if (st == BALSA_OK)
            for (int i = 0; i < n; i++)
                for (int t = 0; t < p.len[i]; t++)
                    memcpy(outputs[p.order[i]] + (size_t)t * O,
                           m->hout.p + prow(&p, i, t) * O, sizeof(float) * O);
    } else if (st == BALSA_OK) {
        /* Gather each sequence's last vector on the host, in sorted order. */
        int H = s->hidden_size;
        for (int i = 0; i < n && st == BALSA_OK; i++) {
            float *dst = m->hlast.p + (size_t)i * ld;
            size_t last = prow(&p, i, p.len[i] - 1);
            if (!top) {
                memcpy(dst, m->hx.p + last * I, sizeof(float) * I);
                continue;
            }
            st = be->ops->to_host(be, dst, top + last * ld, sizeof(float) * H);
            if (st == BALSA_OK && s->bidirectional) /* reverse h after the whole sequence */
                st = be->ops->to_host(be, dst + H, top + prow(&p, i, 0) * ld + H,
                                      sizeof(float) * H);
        }
        if (st == BALSA_OK)
            st = be->ops->synchronize(be);
        if (st == BALSA_OK)
            st = be->ops->to_device(be, m->lastv.p, m->hlast.p, (size_t)n * ld * sizeof(float));
        if (st == BALSA_OK)
            st = model_fc_head(m, m->lastv.p, ld, n, &m->fa, &m->fb, m->hout.p);
        if (st == BALSA_OK)
            for (int i = 0; i < n; i++)
                memcpy(outputs[p.order[i]], m->hout.p + (size_t)i * O, sizeof(float) * O);
    }
    packing_free(&p);
    return st;
}

/* ---------------------------------------------------------------- top-k */

/* a ranks above b: larger, or a number where b is NaN (NaN ranks last). */
static int topk_beats(float a, float b) { return a > b || (isnan(b) && !isnan(a)); }

void engine_topk(const float *v, int n, int k, int *idx, float *val)
{
    if (k > n)
        k = n;
    if (k <= 0)
        return;
    int have = 0;
    for (int i = 0; i < n; i++) {
        /* v[i] enters when the list has room or it beats the smallest kept value; an
         * equal value never beats an earlier index, so ties keep the lower index. */
        if (have == k && !topk_beats(v[i], val[have - 1]))
            continue;
        int j = have < k ? have++ : k - 1;
        while (j > 0 && topk_beats(v[i], val[j - 1])) {
            val[j] = val[j - 1];
            idx[j] = idx[j - 1];
            j--;
        }
        val[j] = v[i];
        idx[j] = i;
    }
}
