/* Step-level execution for the batching scheduler (model_stream in engine.h).
 *
 * Unidirectional LSTM models run one time step per model_stream_step for every running
 * sequence, all layers, time-major. The running sequences are rows 0..nrows-1 of the
 * per-layer state (c and h, max_slots x H each, backend memory); a sequence added between
 * steps becomes a new row at the next step, with its initial state (the slot's copy of
 * h0/c0, zeros where none was given), and a finished one hands its rows' state to hn/cn
 * where asked and leaves by moving the last row into its place (through the host: the
 * backend interface has no row copy), so every matmul runs over contiguous rows.
 *
 * The first layer's input projection W_ih x + b of a sequence is computed ahead, one
 * matmul over up to STREAM_CHUNK of its steps at a time (when it is added, then whenever
 * those are used up), kept on the host and copied into the step's gate rows; deeper
 * layers project per step. The arithmetic per row is the same as model_run's, in the same
 * order, so the numbers agree with it. A folded token model (model.h) has that projection
 * ready for every token: each row's gate row is copied from the table at its step, and
 * nothing is projected ahead.
 *
 * A generating sequence (model_stream_add_gen) grows by one token at each of its steps
 * from its last input on: the token is picked from that step's output (step_outputs) and
 * appended to the slot's input copy, which was sized for it when the sequence was added,
 * so the sequence simply runs on. Its first-layer projection is then made one step at a
 * time, as each token becomes known.
 *
 * Bidirectional models (whose reverse direction needs the whole sequence first) and
 * models without an LSTM cannot go step by step: model_stream_step runs every active
 * sequence whole through model_run and completes them all in that call. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exec.h"

#define STREAM_CHUNK 64

typedef struct {
    int used;
    void *tag;
    float *out;
    int all_steps;
    int len, pos;         /* pos: next step to run */
    int32_t *tokens;      /* the caller's input, copied */
    float *features;
    size_t in_cap;        /* capacity of tokens or features, in elements */
    float *proj;          /* host, STREAM_CHUNK rows at stride ldg: projection of steps
                           * proj_from.. */
    int proj_from, proj_n;
    int gen_max;          /* tokens to generate; 0: not a generating sequence */
    int gen_count;
    float temperature;
    uint64_t rng;         /* sampler state (xorshift64*) */
    int32_t *gen_out;
    int *gen_n;
    const char *const *stop; /* model_gen_opts' stop strings (the caller's) */
    int nstop;
    const _Atomic int *cancel; /* model_gen_opts' (the caller's), or NULL */
    float *state0;        /* h0 then c0, each num_layers x directions x H, copied */
    size_t state_cap;     /* capacity of state0, in floats */
    int has_h0, has_c0;
    float *hn, *cn;       /* the caller's, for the final state; or NULL */
} stream_slot;

struct model_stream {
    balsa_model *m;
    int max_slots;
    int whole; /* run sequences whole (bidirectional or no LSTM) */
    stream_slot *slots;
    int *row_slot; /* running row -> slot */
    int nrows;
    int *pending;  /* slots added since the last step, in order */
    int npending;
    /* Each layer's c rows (n x H); the h rows of all layers side by side, row r of layer
     * l at h[l] + r * ldh (exec.h, h_off and h_ld: a joined product reads a row's
     * [h below | gap | h] as one input row, in place; the gaps stay zero). */
    float *c[MODEL_MAX_LAYERS], *h[MODEL_MAX_LAYERS];
    int ldh;
    int ldg; /* row stride of every buffer of gate rows: g, hg, proj, hproj, slot proj */
    dev_buf g, xin, proj, fcin, fa, fb;
    host_buf hx, hg, hrow, hout, hproj;
    int *projrows; /* rows projected together this step (project_rows) */
    double *weights; /* pick_token's sampling weights, output_size (generating models) */
    int *outrows;
};

static engine_seq slot_seq(const model_stream *s, const stream_slot *sl)
{
    size_t n = model_state_floats(&s->m->spec);
    return (engine_seq){.tokens = sl->tokens,
                        .features = sl->features,
                        .len = sl->len,
                        .h0 = sl->has_h0 ? sl->state0 : NULL,
                        .c0 = sl->has_c0 ? sl->state0 + n : NULL,
                        .hn = sl->hn,
                        .cn = sl->cn};
}

/* Empties a slot for the next sequence but keeps its buffers: the scheduler thread then
 * allocates nothing per sequence once every slot has been used. A fresh 128 KiB
 * projection buffer per sequence cost page faults (and at first an mmap and munmap) on
 * every request, most of all with max_batch_size 1. */
static void slot_clear(stream_slot *sl)
{
    stream_slot keep = {0};
    keep.tokens = sl->tokens;
    keep.features = sl->features;
    keep.in_cap = sl->in_cap;
    keep.proj = sl->proj;
    keep.state0 = sl->state0;
    keep.state_cap = sl->state_cap;
    *sl = keep;
}

static void slot_release(stream_slot *sl)
{
    free(sl->tokens);
    free(sl->features);
    free(sl->proj);
    free(sl->state0);
    memset(sl, 0, sizeof *sl);
}

/* Returns buf grown to hold at least n elements of elem bytes (*cap, in elements, is its
 * capacity and is updated): buf itself when large enough, NULL when out of memory (buf
 * then still belongs to the caller). */
static void *input_reserve(void *buf, size_t *cap, size_t n, size_t elem)
{
    if (buf && *cap >= n)
        return buf;
    void *p = realloc(buf, n * elem);
    if (p)
        *cap = n;
    return p;
}

void model_stream_free(model_stream *s)
{
    if (!s)
        return;
    balsa_backend *be = s->m->be;
    for (int i = 0; s->slots && i < s->max_slots; i++)
        slot_release(&s->slots[i]);
    for (int l = 0; l < MODEL_MAX_LAYERS; l++) {
        if (s->c[l])
            be->ops->free(be, s->c[l]);
    }
    if (s->h[0])
        be->ops->free(be, s->h[0]);
    dev_buf *devs[] = {&s->g, &s->xin, &s->proj, &s->fcin, &s->fa, &s->fb};
    for (size_t i = 0; i < sizeof devs / sizeof *devs; i++)
        dev_buf_release(be, devs[i]);
    host_buf *hosts[] = {&s->hx, &s->hg, &s->hrow, &s->hout, &s->hproj};
    for (size_t i = 0; i < sizeof hosts / sizeof *hosts; i++)
        host_buf_release(hosts[i]);
    free(s->slots);
    free(s->row_slot);
    free(s->pending);
    free(s->outrows);
    free(s->projrows);
    free(s->weights);
    free(s);
}

balsa_status model_stream_create(balsa_model *m, int max_slots, model_stream **out)
{
    *out = NULL;
    if (max_slots < 1 || max_slots > 65536)
        return BALSA_ERR_INVALID;
    model_stream *s = calloc(1, sizeof *s);
    if (!s)
        return BALSA_ERR_OOM;
    s->m = m;
    s->max_slots = max_slots;
    s->whole = m->spec.hidden_size == 0 || m->spec.bidirectional;
    s->slots = calloc(max_slots, sizeof *s->slots);
    s->row_slot = calloc(max_slots, sizeof(int));
    s->pending = calloc(max_slots, sizeof(int));
    s->outrows = calloc(max_slots, sizeof(int));
    s->projrows = calloc(max_slots, sizeof(int));
    if (m->info.can_generate)
        s->weights = malloc(sizeof *s->weights * (size_t)m->info.output_size);
    balsa_status st = s->slots && s->row_slot && s->pending && s->outrows && s->projrows &&
                              (s->weights || !m->info.can_generate)
                          ? BALSA_OK
                          : BALSA_ERR_OOM;
    balsa_backend *be = m->be;
    int H = m->spec.hidden_size, I = m->spec.input_size, O = m->info.output_size;
    size_t n = (size_t)max_slots;
    s->ldg = s->whole ? 0 : padded_stride(4 * H);
    const size_t G = (size_t)s->ldg;
    s->ldh = s->whole ? 0 : m->h_ld;
    if (!s->whole && st == BALSA_OK) {
        s->h[0] = be->ops->alloc(be, n * s->ldh * sizeof(float));
        if (!s->h[0] || dev_zero(be, s->h[0], n * s->ldh) != BALSA_OK)
            st = BALSA_ERR_OOM;
    }
    for (int l = 0; !s->whole && l < m->spec.num_layers && st == BALSA_OK; l++) {
        s->c[l] = be->ops->alloc(be, n * H * sizeof(float));
        s->h[l] = s->h[0] + m->h_off[l];
        if (!s->c[l])
            st = BALSA_ERR_OOM;
    }
    if (!s->whole && st == BALSA_OK) {
        int fcw = m->max_fc_out > 0 ? m->max_fc_out : 1;
        if (dev_buf_reserve(be, &s->g, n * G) || dev_buf_reserve(be, &s->fcin, n * H) ||
            dev_buf_reserve(be, &s->fa, n * fcw) || dev_buf_reserve(be, &s->fb, n * fcw) ||
            host_buf_reserve(&s->hg, n * G) || host_buf_reserve(&s->hrow, n * H) ||
            host_buf_reserve(&s->hout, n * O))
            st = BALSA_ERR_OOM;
    }
    if (!s->whole && !m->fold[0] && st == BALSA_OK) {
        /* The projection's buffers (a folded model copies table rows instead): xin and
         * proj (backend copies of hx and of the result, which a backend with the host's
         * memory does without) hold a chunk of one sequence's steps, or one step of every
         * row. */
        size_t chunk = STREAM_CHUNK > n ? STREAM_CHUNK : n;
        if ((!be->host_memory && (dev_buf_reserve(be, &s->xin, chunk * I) ||
                                  dev_buf_reserve(be, &s->proj, chunk * G))) ||
            host_buf_reserve(&s->hproj, n * G) || host_buf_reserve(&s->hx, chunk * I))
            st = BALSA_ERR_OOM;
    }
    if (st != BALSA_OK) {
        model_stream_free(s);
        return st;
    }
    *out = s;
    return BALSA_OK;
}

int model_stream_active(const model_stream *s) { return s->nrows + s->npending; }
int model_stream_free_slots(const model_stream *s) { return s->max_slots - model_stream_active(s); }

/* Projects the n input rows in s->hx through the first layer, W_ih x + (b_ih + b_hh), one
 * matmul, into dst (host, n rows of 4H at stride s->ldg). Where the backend's memory is
 * the host's the product reads hx and writes dst itself (the two copies were 1% of a
 * batching server's CPU at hidden 650). */
static balsa_status project_hx(model_stream *s, int n, float *dst)
{
    balsa_model *m = s->m;
    balsa_backend *be = m->be;
    int I = m->spec.input_size;
    const lstm_dir_w *w = &m->lstm[0][0];
    if (be->host_memory)
        return be->ops->matmul(be, w->w_ih, s->hx.p, I, n, w->bias, 0, BALSA_ACT_NONE, dst,
                               s->ldg);
    balsa_status st = be->ops->to_device(be, s->xin.p, s->hx.p, (size_t)n * I * sizeof(float));
    if (st == BALSA_OK)
        st = be->ops->matmul(be, w->w_ih, s->xin.p, I, n, w->bias, 0, BALSA_ACT_NONE, s->proj.p,
                             s->ldg);
    if (st == BALSA_OK)
        st = be->ops->to_host(be, dst, s->proj.p, (size_t)n * s->ldg * sizeof(float));
    if (st == BALSA_OK)
        st = be->ops->synchronize(be);
    return st;
}

/* Projects steps from..from+STREAM_CHUNK of a slot's sequence through the first layer:
 * proj = W_ih x + (b_ih + b_hh), one matmul, kept on the host. */
static balsa_status slot_project(model_stream *s, stream_slot *sl, int from)
{
    int I = s->m->spec.input_size;
    int n = sl->len - from < STREAM_CHUNK ? sl->len - from : STREAM_CHUNK;
    engine_seq q = slot_seq(s, sl);
    for (int t = 0; t < n; t++)
        model_input_row(s->m, &q, from + t, s->hx.p + (size_t)t * I);
    balsa_status st = project_hx(s, n, sl->proj);
    sl->proj_from = from;
    sl->proj_n = n;
    return st;
}

/* Takes a checked sequence into a free slot; gen is NULL or its generation options (the
 * input copy then gets room for the tokens it will be fed). */
static balsa_status stream_add(model_stream *s, const engine_seq *seq, int all_steps,
                               const model_gen_opts *gen, float *out, void *tag,
                               stream_slot **added)
{
    char err[128];
    if (model_check_seq(s->m, seq, err, sizeof err) != BALSA_OK)
        return BALSA_ERR_INVALID;
    if (model_stream_free_slots(s) == 0)
        return BALSA_ERR_FULL;
    int idx = 0;
    while (s->slots[idx].used)
        idx++;
    stream_slot *sl = &s->slots[idx];
    const model_spec *sp = &s->m->spec;
    sl->len = seq->len;
    int ok;
    if (sp->input_kind == MODEL_INPUT_TOKENS) {
        /* The last generated token is only reported, never fed back. */
        size_t room = (size_t)seq->len + (gen ? (size_t)gen->max_new - 1 : 0);
        int32_t *p = input_reserve(sl->tokens, &sl->in_cap, room, sizeof *p);
        ok = p != NULL;
        if (ok) {
            sl->tokens = p;
            memcpy(p, seq->tokens, sizeof(int32_t) * seq->len);
        }
    } else {
        size_t nf = (size_t)seq->len * sp->input_size;
        float *p = input_reserve(sl->features, &sl->in_cap, nf, sizeof *p);
        ok = p != NULL;
        if (ok) {
            sl->features = p;
            memcpy(p, seq->features, sizeof(float) * nf);
        }
    }
    size_t ns = model_state_floats(sp);
    if (ok && (seq->h0 || seq->c0)) {
        float *p = input_reserve(sl->state0, &sl->state_cap, 2 * ns, sizeof *p);
        ok = p != NULL;
        if (ok) {
            sl->state0 = p;
            if (seq->h0)
                memcpy(p, seq->h0, sizeof(float) * ns);
            if (seq->c0)
                memcpy(p + ns, seq->c0, sizeof(float) * ns);
        }
    }
    if (!ok) {
        slot_clear(sl);
        return BALSA_ERR_OOM;
    }
    sl->has_h0 = seq->h0 != NULL;
    sl->has_c0 = seq->c0 != NULL;
    sl->hn = seq->hn;
    sl->cn = seq->cn;
    if (!s->whole && !s->m->fold[0]) {
        if (!sl->proj)
            sl->proj = malloc(sizeof(float) * STREAM_CHUNK * s->ldg);
        balsa_status st = sl->proj ? slot_project(s, sl, 0) : BALSA_ERR_OOM;
        if (st != BALSA_OK) {
            slot_clear(sl);
            return st;
        }
    }
    sl->used = 1;
    sl->tag = tag;
    sl->out = out;
    sl->all_steps = all_steps;
    s->pending[s->npending++] = idx;
    *added = sl;
    return BALSA_OK;
}

balsa_status model_stream_add(model_stream *s, const engine_seq *seq, int all_steps,
                              float *out, void *tag)
{
    stream_slot *sl;
    return out ? stream_add(s, seq, all_steps, NULL, out, tag, &sl) : BALSA_ERR_INVALID;
}

/* splitmix64: spreads a seed (0, 1, 2... are typical) over the state's bits. */
static uint64_t seed_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x ? x : 1; /* xorshift's state must not be 0 */
}

balsa_status model_stream_add_gen(model_stream *s, const engine_seq *seq,
                                  const model_gen_opts *opts, int32_t *gen_out, int *gen_n,
                                  float *out, void *tag)
{
    const model_info *info = &s->m->info;
    if (!info->can_generate || !opts || !gen_out || !gen_n || opts->max_new < 1 ||
        opts->max_new > MODEL_MAX_SEQ_LEN || seq->len > MODEL_MAX_SEQ_LEN - opts->max_new ||
        !(opts->temperature >= 0) || !isfinite(opts->temperature) || opts->nstop < 0 ||
        opts->nstop > MODEL_GEN_MAX_STOP ||
        (opts->nstop && (!opts->stop || !info->has_vocabulary)))
        return BALSA_ERR_INVALID;
    for (int i = 0; i < opts->nstop; i++) {
        size_t l = opts->stop[i] ? strlen(opts->stop[i]) : 0;
        if (l == 0 || l > MODEL_GEN_MAX_STOP_BYTES)
            return BALSA_ERR_INVALID;
    }
    stream_slot *sl;
    balsa_status st = stream_add(s, seq, 0, opts, out, tag, &sl);
    if (st != BALSA_OK)
        return st;
    sl->gen_max = opts->max_new;
    sl->temperature = opts->temperature;
    sl->rng = seed_mix(opts->seed);
    sl->gen_out = gen_out;
    sl->gen_n = gen_n;
    sl->stop = opts->stop;
    sl->nstop = opts->nstop;
    sl->cancel = opts->cancel;
    *gen_n = 0;
    return BALSA_OK;
}

/* xorshift64*: the next 53 random bits as a double in [0, 1). */
static double rng_unit(uint64_t *st)
{
    uint64_t x = *st;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *st = x;
    return (double)((x * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
}

/* The log-probability (up to a constant) that output value v stands for under head. */
static double score_log(float v, model_head head)
{
    return head == MODEL_HEAD_SOFTMAX ? log((double)v) : (double)v;
}

/* Picks the next token from one output vector v of n scores under the model's head:
 * greedy takes the highest (the lower id on ties); otherwise token i is drawn with
 * probability proportional to exp(log p_i / temperature), log p_i being the output
 * itself (log_softmax), its log (softmax) or the logits (none), shifted by the maximum so
 * that exp never overflows. w (room for n) holds the weights between the two passes. */
static int pick_token(const float *v, int n, model_head head, float temperature,
                      uint64_t *rng, double *w)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    if (temperature == 0)
        return best;
    double top = score_log(v[best], head), sum = 0;
    for (int i = 0; i < n; i++)
        sum += w[i] = exp((score_log(v[i], head) - top) / temperature);
    double u = rng_unit(rng) * sum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += w[i];
        if (u < acc)
            return i;
    }
    return best; /* u fell past the sum by rounding */
}

/* 1 when the generated text, whose newest token was just added, now contains one of the
 * slot's stop strings. Any match must take in the newest token (an older one would have
 * stopped the sequence already), so only the text of the last tokens is looked at: the
 * newest token and up to MODEL_GEN_MAX_STOP_BYTES - 1 bytes before it. */
static int gen_stopped(const stream_slot *sl, const balsa_model *m)
{
    char win[MODEL_GEN_MAX_STOP_BYTES - 1 + MODEL_MAX_TOKEN_BYTES];
    const char *newest = model_token_str(m, sl->gen_out[sl->gen_count - 1]);
    size_t nlen = strlen(newest), before = 0;
    int first = sl->gen_count - 1;
    while (first > 0 && before < MODEL_GEN_MAX_STOP_BYTES - 1)
        before += strlen(model_token_str(m, sl->gen_out[--first]));
    /* the window: the last (at most MODEL_GEN_MAX_STOP_BYTES - 1) bytes before the newest
     * token, then the newest token */
    size_t skip = before > MODEL_GEN_MAX_STOP_BYTES - 1 ? before - (MODEL_GEN_MAX_STOP_BYTES - 1)
                                                        : 0,
           w = 0;
    for (int i = first; i < sl->gen_count - 1; i++)
        for (const char *t = model_token_str(m, sl->gen_out[i]); *t; t++) {
            if (skip)
                skip--;
            else
                win[w++] = *t;
        }
    memcpy(win + w, newest, nlen);
    w += nlen;
    for (int i = 0; i < sl->nstop; i++)
        if (memmem(win, w, sl->stop[i], strlen(sl->stop[i])))
            return 1;
    return 0;
}

/* A generating row's step output: records the picked token and, while more are wanted
 * and no stop string has appeared, appends it to the input so that the row runs on. */
static void gen_advance(model_stream *s, stream_slot *sl, const float *v)
{
    const balsa_model *m = s->m;
    int t = pick_token(v, m->info.output_size, m->spec.head, sl->temperature, &sl->rng,
                       s->weights);
    sl->gen_out[sl->gen_count++] = t;
    *sl->gen_n = sl->gen_count;
    if ((sl->nstop && gen_stopped(sl, m)) || (sl->cancel && *sl->cancel))
        sl->gen_max = sl->gen_count; /* no more: the row ends at this step */
    if (sl->gen_count < sl->gen_max)
        sl->tokens[sl->len++] = t;
}

balsa_status model_generate(balsa_model *m, const engine_seq *seq, const model_gen_opts *opts,
                            int32_t *gen_out, int *gen_n)
{
    model_stream *s;
    balsa_status st = model_stream_create(m, 1, &s);
    if (st != BALSA_OK)
        return st;
    st = model_stream_add_gen(s, seq, opts, gen_out, gen_n, NULL, NULL);
    void *done[1];
    int ndone = 0;
    while (st == BALSA_OK && model_stream_active(s) > 0)
        st = model_stream_step(s, done, &ndone);
    model_stream_free(s);
    return st;
}


/* Drops every sequence, reporting each tag (after an error). */
static void drop_all(model_stream *s, void **done, int *ndone)
{
    for (int i = 0; i < s->max_slots; i++)
        if (s->slots[i].used) {
            done[(*ndone)++] = s->slots[i].tag;
            slot_clear(&s->slots[i]);
        }
    s->nrows = 0;
    s->npending = 0;
}

/* Runs every active sequence whole (bidirectional models, models without an LSTM). */
static balsa_status step_whole(model_stream *s, void **done, int *ndone)
{
    int n = s->npending;
    engine_seq *q = malloc(sizeof *q * (n ? n : 1));
    float **outs = malloc(sizeof *outs * (n ? n : 1));
    balsa_status st = q && outs ? BALSA_OK : BALSA_ERR_OOM;
    for (int all = 0; all < 2 && st == BALSA_OK; all++) {
        int k = 0;
        for (int i = 0; i < n; i++) {
            stream_slot *sl = &s->slots[s->pending[i]];
            if (sl->all_steps == all) {
                q[k] = slot_seq(s, sl);
                outs[k++] = sl->out;
            }
        }
        st = model_run(s->m, q, k, all, outs);
    }
    free(q);
    free(outs);
    if (st != BALSA_OK)
        return st;
    for (int i = 0; i < n; i++) {
        stream_slot *sl = &s->slots[s->pending[i]];
        done[(*ndone)++] = sl->tag;
        slot_clear(sl);
    }
    s->npending = 0;
    return BALSA_OK;
}

/* Copies state row `from` to row `to` in every layer (through the host). */
static balsa_status move_row(model_stream *s, int from, int to)
{
    balsa_backend *be = s->m->be;
    int H = s->m->spec.hidden_size;
    size_t bytes = (size_t)H * sizeof(float);
    balsa_status st = BALSA_OK;
    for (int l = 0; l < s->m->spec.num_layers && st == BALSA_OK; l++) {
        float *bufs[2] = {s->c[l], s->h[l]};
        const size_t ld[2] = {(size_t)H, (size_t)s->ldh};
        for (int b = 0; b < 2 && st == BALSA_OK; b++) {
            st = be->ops->to_host(be, s->hrow.p, bufs[b] + (size_t)from * ld[b], bytes);
            if (st == BALSA_OK)
                st = be->ops->synchronize(be);
            if (st == BALSA_OK)
                st = be->ops->to_device(be, bufs[b] + (size_t)to * ld[b], s->hrow.p, bytes);
        }
    }
    return st;
}

/* Sets row r of every layer's c and h to the initial state of the slot's sequence (a
 * stepped model is unidirectional, so state entry l is layer l). */
static balsa_status row_init_state(model_stream *s, const stream_slot *sl, int r)
{
    balsa_backend *be = s->m->be;
    int H = s->m->spec.hidden_size;
    size_t ns = model_state_floats(&s->m->spec), row = (size_t)r * H,
           hrow = (size_t)r * s->ldh;
    balsa_status st = BALSA_OK;
    for (int l = 0; l < s->m->spec.num_layers && st == BALSA_OK; l++) {
        size_t at = (size_t)l * H;
        st = sl->has_c0 ? be->ops->to_device(be, s->c[l] + row, sl->state0 + ns + at,
                                             H * sizeof(float))
                        : dev_zero(be, s->c[l] + row, H);
        if (st == BALSA_OK)
            st = sl->has_h0 ? be->ops->to_device(be, s->h[l] + hrow, sl->state0 + at,
                                                 H * sizeof(float))
                            : dev_zero(be, s->h[l] + hrow, H);
    }
    return st;
}

/* Copies row r of every layer's h and c to the slot's hn/cn (where given). */
static balsa_status row_save_state(model_stream *s, const stream_slot *sl, int r)
{
    balsa_backend *be = s->m->be;
    int H = s->m->spec.hidden_size;
    size_t row = (size_t)r * H, hrow = (size_t)r * s->ldh;
    balsa_status st = BALSA_OK;
    for (int l = 0; l < s->m->spec.num_layers && st == BALSA_OK; l++) {
        size_t at = (size_t)l * H;
        if (sl->hn)
            st = be->ops->to_host(be, sl->hn + at, s->h[l] + hrow, H * sizeof(float));
        if (st == BALSA_OK && sl->cn)
            st = be->ops->to_host(be, sl->cn + at, s->c[l] + row, H * sizeof(float));
    }
    return st == BALSA_OK ? be->ops->synchronize(be) : st;
}

/* Output of this step for the rows that need one: every row with all_steps, and rows
 * whose sequence ends here. */
static balsa_status step_outputs(model_stream *s)
{
    balsa_model *m = s->m;
    balsa_backend *be = m->be;
    int H = m->spec.hidden_size, O = m->info.output_size, top = m->spec.num_layers - 1;
    int n = 0;
    for (int r = 0; r < s->nrows; r++) {
        const stream_slot *sl = &s->slots[s->row_slot[r]];
        if (sl->all_steps || sl->pos == sl->len - 1)
            s->outrows[n++] = r;
    }
    if (n == 0)
        return BALSA_OK;
    const float *in = s->h[top];
    int ld = s->ldh;
    balsa_status st = BALSA_OK;
    if (n < s->nrows) { /* gather the rows that need output, through the host */
        for (int i = 0; i < n && st == BALSA_OK; i++)
            st = be->ops->to_host(be, s->hrow.p + (size_t)i * H,
                                  s->h[top] + (size_t)s->outrows[i] * s->ldh,
                                  H * sizeof(float));
        if (st == BALSA_OK)
            st = be->ops->synchronize(be);
        if (st == BALSA_OK)
            st = be->ops->to_device(be, s->fcin.p, s->hrow.p, (size_t)n * H * sizeof(float));
        in = s->fcin.p;
        ld = H;
    }
    if (st == BALSA_OK)
        st = model_fc_head(m, in, ld, n, &s->fa, &s->fb, s->hout.p);
    for (int i = 0; i < n && st == BALSA_OK; i++) {
        stream_slot *sl = &s->slots[s->row_slot[s->outrows[i]]];
        const float *v = s->hout.p + (size_t)i * O;
        if (sl->out)
            memcpy(sl->out + (sl->all_steps ? (size_t)sl->pos * O : 0), v, sizeof(float) * O);
        if (sl->gen_max)
            gen_advance(s, sl, v);
    }
    return st;
}

/* Fills the first layer's gate rows (gates: the host staging hg, or the gate buffer itself
 * where the backend's memory is the host's) for this step from each row's projection. A row
 * whose step is not projected yet and has more steps ahead projects a chunk of them
 * (slot_project); the rows for which this step is the last one known (a generating
 * sequence's fed-back token above all, every step) are projected together, one matmul
 * over all of them, instead of one small product each. A folded model copies each row's
 * gate row from the table instead. */
static balsa_status project_rows(model_stream *s, float *gates)
{
    balsa_model *m = s->m;
    int I = m->spec.input_size, k = 0;
    const size_t row = (size_t)4 * m->spec.hidden_size, ld = (size_t)s->ldg;
    balsa_status st = BALSA_OK;
    if (m->fold[0]) {
        for (int r = 0; r < s->nrows; r++) {
            const stream_slot *sl = &s->slots[s->row_slot[r]];
            memcpy(gates + (size_t)r * ld, model_fold_row(m, 0, sl->tokens[sl->pos]),
                   sizeof(float) * row);
        }
        return BALSA_OK;
    }
    for (int r = 0; r < s->nrows && st == BALSA_OK; r++) {
        stream_slot *sl = &s->slots[s->row_slot[r]];
        if (sl->pos >= sl->proj_from + sl->proj_n && sl->len - sl->pos == 1) {
            engine_seq q = slot_seq(s, sl);
            model_input_row(m, &q, sl->pos, s->hx.p + (size_t)k * I);
            s->projrows[k++] = r;
            continue;
        }
        if (sl->pos >= sl->proj_from + sl->proj_n)
            st = slot_project(s, sl, sl->pos);
        if (st == BALSA_OK)
            memcpy(gates + (size_t)r * ld, sl->proj + (size_t)(sl->pos - sl->proj_from) * ld,
                   sizeof(float) * row);
    }
    if (k == 0 || st != BALSA_OK)
        return st;
    st = project_hx(s, k, s->hproj.p);
    for (int i = 0; i < k && st == BALSA_OK; i++)
        memcpy(gates + (size_t)s->projrows[i] * ld, s->hproj.p + (size_t)i * ld,
               sizeof(float) * row);
    return st;
}

static balsa_status step_lstm(model_stream *s, void **done, int *ndone)
{
    balsa_model *m = s->m;
    balsa_backend *be = m->be;
    int H = m->spec.hidden_size;
    balsa_status st = BALSA_OK;
    /* Newcomers join with their initial state (zeros unless given). */
    for (int i = 0; i < s->npending && st == BALSA_OK; i++) {
        int r = s->nrows++;
        s->row_slot[r] = s->pending[i];
        st = row_init_state(s, &s->slots[s->pending[i]], r);
    }
    s->npending = 0;
    int n = s->nrows;
    if (n == 0 || st != BALSA_OK)
        return st;
    /* On a backend whose memory is the host's the rows go straight into the gate buffer
     * (the staging copy was 2% of a batched step of a folded model, and about as much of
     * the hidden-650 model's, whose rows come from each sequence's projection). */
    int direct = be->host_memory;
    st = project_rows(s, direct ? s->g.p : s->hg.p);
    if (st == BALSA_OK && !direct)
        st = be->ops->to_device(be, s->g.p, s->hg.p, (size_t)n * s->ldg * sizeof(float));
    for (int l = 0; l < m->spec.num_layers && st == BALSA_OK; l++) {
        const lstm_dir_w *w = &m->lstm[l][0];
        if (w->w_cat) {
            /* W_ih h_below + W_hh h in one product: the row's [h_below | h] (ldh). */
            st = be->ops->matmul(be, w->w_cat, s->h[l - 1], s->ldh, n, w->bias, 0,
                                 BALSA_ACT_NONE, s->g.p, s->ldg);
        } else {
            if (l > 0)
                st = be->ops->matmul(be, w->w_ih, s->h[l - 1], s->ldh, n, w->bias, 0,
                                     BALSA_ACT_NONE, s->g.p, s->ldg);
            /* A row that just joined adds W_hh h0 (exactly nothing when h0 is zero, as in
             * model_run, which skips the term then). */
            if (st == BALSA_OK)
                st = be->ops->matmul(be, w->w_hh, s->h[l], s->ldh, n, NULL, 1, BALSA_ACT_NONE,
                                     s->g.p, s->ldg);
        }
        if (st == BALSA_OK)
            st = be->ops->lstm_cell(be, s->g.p, s->ldg, s->c[l], s->h[l], s->ldh, n, H);
    }
    if (st == BALSA_OK)
        st = step_outputs(s);
    if (st != BALSA_OK)
        return st;
    /* Advance; finished rows leave, the last row moving into each hole (descending, so
     * the row moved in has already been looked at). */
    for (int r = 0; r < s->nrows; r++)
        s->slots[s->row_slot[r]].pos++;
    for (int r = s->nrows - 1; r >= 0 && st == BALSA_OK; r--) {
        stream_slot *sl = &s->slots[s->row_slot[r]];
        if (sl->pos < sl->len)
            continue;
        if ((sl->hn || sl->cn) && (st = row_save_state(s, sl, r)) != BALSA_OK)
            break; /* the slot is still used: drop_all reports it */
        done[(*ndone)++] = sl->tag;
        slot_clear(sl);
        int last = s->nrows - 1;
        if (r != last) {
            st = move_row(s, last, r);
            s->row_slot[r] = s->row_slot[last];
        }
        s->nrows--;
    }
    return st;
}

balsa_status model_stream_step(model_stream *s, void **done, int *ndone)
{
    *ndone = 0;
    balsa_status st = s->whole ? step_whole(s, done, ndone) : step_lstm(s, done, ndone);
    /* Sequences that completed before the error stay in done: the caller fails them
     * with the rest, since the step as a whole failed. */
    if (st != BALSA_OK)
        drop_all(s, done, ndone);
    return st;
}
