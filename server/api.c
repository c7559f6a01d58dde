/* Request parsing and response rendering for the inference API (see api.h). Parsing is
 * cJSON (with the length-bounded entry point and an end-pointer check, because HTTP
 * bodies are not NUL-terminated); rendering is by hand (jsonw) for speed and short
 * floats. Never uses cJSON_GetErrorPtr, which reads a global shared by all threads. */
#include "api.h"

#include <math.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>

#include "jsonw.h"
#include "models/json_text.h"

/* The most tokens one request may ask to generate per sequence (the step limit of the
 * server's config bounds the whole request too). */
#define API_MAX_GENERATE 65536

int api_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return code;
}

void api_request_free(api_request *r)
{
    free(r->seqs);
    free(r->tokens);
    free(r->features);
    free(r->outputs);
    free(r->out_storage);
    free(r->gen_tokens);
    free(r->gen_counts);
    free(r->gen_storage);
    free(r->state_in);
    free(r->state_out);
    memset(r, 0, sizeof *r);
}

/* Names the served models into buf for messages. */
static void model_list(const api_model *models, int n, char *buf, size_t len)
{
    buf[0] = 0;
    size_t used = 0;
    for (int i = 0; i < n && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", models[i].name);
}

/* Resolves the "model" field (NULL when absent) to an index, or returns an HTTP code. */
static int find_model(const cJSON *name, const api_model *models, int n, int *idx, char *err,
                      size_t errlen)
{
    char names[512];
    model_list(models, n, names, sizeof names);
    if (!name) {
        if (n == 1) {
            *idx = 0;
            return 0;
        }
        return api_fail(err, errlen, 400, "model: required when several models are served (%s)",
                        names);
    }
    if (!cJSON_IsString(name))
        return api_fail(err, errlen, 400, "model: must be a string naming a model (%s)", names);
    for (int i = 0; i < n; i++)
        if (strcmp(models[i].name, name->valuestring) == 0) {
            *idx = i;
            return 0;
        }
    return api_fail(err, errlen, 404, "model: no model named \"%.64s\" (served: %s)",
                    name->valuestring, names);
}

/* Reads an integer field in [lo, hi] into *out. */
static int int_field(const cJSON *v, const char *name, int lo, int hi, int *out, char *err,
                     size_t errlen)
{
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < lo || v->valuedouble > hi)
        return api_fail(err, errlen, 400, "%s: must be an integer in [%d, %d]", name, lo, hi);
    *out = (int)v->valuedouble;
    return 0;
}

/* Where the sequences came from, for messages: "inputs[i]", "text[i]", or "text" when
 * the request's "text" was one string. */
typedef struct {
    const char *field;
    int single;
} seq_src;

static const char *seq_name(const seq_src *src, int i, char *buf, size_t len)
{
    if (src->single)
        snprintf(buf, len, "%s", src->field);
    else
        snprintf(buf, len, "%s[%d]", src->field, i);
    return buf;
}

/* Encodes a text sequence into ids (room for strlen(text)); 400 with the field named. */
static int encode_text(const api_model *am, const seq_src *src, int i, const char *text,
                       int32_t *ids, int *n, char *err, size_t errlen)
{
    char why[200], name[32];
    if (model_encode_text(am->model, text, strlen(text), ids, n, why, sizeof why) != BALSA_OK)
        return api_fail(err, errlen, 400, "%s: %s", seq_name(src, i, name, sizeof name), why);
    return 0;
}

/* First pass over the sequences: shapes and sizes, so storage is allocated once. *steps
 * gets the time steps, counting a text's bytes (at least as many as its tokens: the
 * exact count is known once fill_tokens has encoded it); *given the steps of the sequences
 * given as arrays, exact. */
static int measure_inputs(const cJSON *inputs, const seq_src *src, const api_model *am,
                          int *nseqs, long *steps, long *given, char *err, size_t errlen)
{
    const model_info *info = am->info;
    if (!cJSON_IsArray(inputs))
        return api_fail(err, errlen, 400, "inputs: must be an array of sequences");
    int n = 0;
    long total = 0, text = 0;
    const cJSON *seq;
    char name[32];
    cJSON_ArrayForEach(seq, inputs)
    {
        if (cJSON_IsString(seq) && info->has_vocabulary) {
            text += (long)strlen(seq->valuestring);
            n++;
            continue;
        }
        if (!cJSON_IsArray(seq) || !seq->child)
            return api_fail(
                err, errlen, 400, "%s: must be %s", seq_name(src, n, name, sizeof name),
                info->input_kind == MODEL_INPUT_VECTORS ? "a non-empty array of feature vectors"
                : info->has_vocabulary ? "a non-empty array of token ids or a string"
                                       : "a non-empty array of token ids (this model has "
                                         "no vocabulary, so no text)");
        const cJSON *e;
        cJSON_ArrayForEach(e, seq) total++;
        n++;
    }
    if (n == 0)
        return api_fail(err, errlen, 400, "%s: must hold at least one sequence", src->field);
    *nseqs = n;
    *steps = total + text;
    *given = total;
    return 0;
}

static int fill_tokens(const cJSON *inputs, const seq_src *src, const api_model *am,
                       api_request *r, char *err, size_t errlen)
{
    const model_info *info = am->info;
    r->tokens = malloc((size_t)(r->total_steps ? r->total_steps : 1) * sizeof *r->tokens);
    if (!r->tokens)
        return api_fail(err, errlen, 500, "out of memory");
    long pos = 0;
    int i = 0;
    const cJSON *seq;
    cJSON_ArrayForEach(seq, inputs)
    {
        r->seqs[i].tokens = r->tokens + pos;
        if (cJSON_IsString(seq)) {
            int got = 0, code = encode_text(am, src, i, seq->valuestring, r->tokens + pos, &got,
                                            err, errlen);
            if (code)
                return code;
            pos += got;
            r->seqs[i++].len = got;
            continue;
        }
        int t = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, seq)
        {
            if (!cJSON_IsNumber(e))
                return api_fail(err, errlen, 400, "inputs[%d][%d]: must be a token id (an integer)",
                                i, t);
            double v = e->valuedouble;
            if (v != floor(v))
                return api_fail(err, errlen, 400,
                                "inputs[%d][%d]: token id must be an integer, got %.9g", i, t, v);
            if (v < 0 || v >= info->vocab_size)
                return api_fail(err, errlen, 400,
                                "inputs[%d][%d]: token id %.0f out of range [0, %d)", i, t, v,
                                info->vocab_size);
            r->tokens[pos++] = (int32_t)v;
            t++;
        }
        r->seqs[i].len = t;
        i++;
    }
    r->total_steps = pos;
    return 0;
}

static int fill_vectors(const cJSON *inputs, const model_info *info, api_request *r,
                        char *err, size_t errlen)
{
    int d = info->input_size;
    r->features = malloc((size_t)r->total_steps * (size_t)d * sizeof *r->features);
    if (!r->features)
        return api_fail(err, errlen, 500, "out of memory");
    float *p = r->features;
    int i = 0;
    const cJSON *seq;
    cJSON_ArrayForEach(seq, inputs)
    {
        r->seqs[i].features = p;
        int t = 0;
        const cJSON *vec;
        cJSON_ArrayForEach(vec, seq)
        {
            if (!cJSON_IsArray(vec))
                return api_fail(err, errlen, 400, "inputs[%d][%d]: must be an array of %d numbers",
                                i, t, d);
            int got = cJSON_GetArraySize(vec);
            if (got != d)
                return api_fail(err, errlen, 400,
                                "inputs[%d][%d]: must be an array of %d numbers, got %d", i, t, d,
                                got);
            int j = 0;
            const cJSON *e;
            cJSON_ArrayForEach(e, vec)
            {
                if (!cJSON_IsNumber(e))
                    return api_fail(err, errlen, 400, "inputs[%d][%d][%d]: must be a number", i, t,
                                    j);
                float f = (float)e->valuedouble;
                if (!isfinite(f))
                    return api_fail(err, errlen, 400,
                                    "inputs[%d][%d][%d]: %.9g does not fit a float", i, t, j,
                                    e->valuedouble);
                *p++ = f;
                j++;
            }
            t++;
        }
        r->seqs[i].len = t;
        i++;
    }
    return 0;
}

/* A request's fields (NULL when absent); inputs holds the sequences once "text" has
 * been turned into an array of strings. */
typedef struct {
    const cJSON *model, *inputs, *text, *output, *top_k, *timeout, *generate, *temperature,
        *seed, *stop, *init_state, *ret_state, *stream, *seq_id, *seq_start, *seq_end;
    const char *stop_name; /* "stop", or where the generate extension had it */
    const char *seq_prefix; /* "", or "parameters." for the generate extension's */
} req_fields;

/* "stop" (with generate): one string or an array of up to MODEL_GEN_MAX_STOP, each 1 to
 * MODEL_GEN_MAX_STOP_BYTES bytes, copied into r; name is the field's name for messages. */
static int parse_stop(const cJSON *stop, const char *name, const api_model *am, api_request *r,
                      char *err, size_t errlen)
{
    if (!am->info->has_vocabulary)
        return api_fail(err, errlen, 400, "%s: model \"%s\" has no vocabulary", name, am->name);
    const cJSON *one = cJSON_IsString(stop) ? stop : NULL, *e;
    int n = one ? 1 : cJSON_IsArray(stop) ? cJSON_GetArraySize(stop) : -1;
    if (n < 1 || n > MODEL_GEN_MAX_STOP)
        return api_fail(err, errlen, 400, "%s: must be a string or an array of 1 to %d strings",
                        name, MODEL_GEN_MAX_STOP);
    int i = 0;
    const cJSON *list = one ? NULL : stop;
    cJSON_ArrayForEach(e, list)
    {
        if (!cJSON_IsString(e))
            return api_fail(err, errlen, 400, "%s[%d]: must be a string", name, i);
        i++;
    }
    for (i = 0; i < n; i++) {
        const char *t = one ? one->valuestring : cJSON_GetArrayItem(stop, i)->valuestring;
        size_t l = strlen(t);
        if (l < 1 || l > MODEL_GEN_MAX_STOP_BYTES)
            return api_fail(err, errlen, 400, "%s: each string must have 1 to %d bytes, got %zu",
                            name, MODEL_GEN_MAX_STOP_BYTES, l);
        memcpy(r->stop_text[i], t, l + 1);
        r->stop_ptr[i] = r->stop_text[i];
    }
    r->gen.stop = (const char *const *)r->stop_ptr;
    r->gen.nstop = n;
    return 0;
}

/* "generate", "temperature", "seed" and "stop" (the last three only with generate). */
static int parse_gen(const req_fields *q, const api_model *am, api_request *r, char *err,
                     size_t errlen)
{
    const cJSON *generate = q->generate, *temperature = q->temperature, *seed = q->seed,
                *output = q->output, *top_k = q->top_k;
    if (!generate) {
        if (temperature || seed || q->stop)
            return api_fail(err, errlen, 400, "%s: only with generate",
                            temperature ? "temperature"
                            : seed      ? "seed"
                                        : "stop");
        return 0;
    }
    int code = int_field(generate, "generate", 1, API_MAX_GENERATE, &r->generate, err, errlen);
    if (code)
        return code;
    if (!am->info->can_generate)
        return api_fail(err, errlen, 400,
                        "generate: model \"%s\" cannot generate (that needs token input, a "
                        "unidirectional LSTM and one output per vocabulary token)",
                        am->name);
    if (top_k)
        return api_fail(err, errlen, 400, "top_k: not with generate (the answer is the tokens)");
    if (output && r->all_steps)
        return api_fail(err, errlen, 400, "output: \"all\" is not with generate");
    r->gen.max_new = r->generate;
    r->gen.temperature = 0;
    if (temperature) {
        if (!cJSON_IsNumber(temperature) || !(temperature->valuedouble >= 0) ||
            temperature->valuedouble > 100)
            return api_fail(err, errlen, 400,
                            "temperature: must be a number in [0, 100] (0: greedy)");
        r->gen.temperature = (float)temperature->valuedouble;
    }
    if (seed) {
        if (!cJSON_IsNumber(seed) || seed->valuedouble != floor(seed->valuedouble) ||
            seed->valuedouble < 0 || seed->valuedouble > 9007199254740991.0)
            return api_fail(err, errlen, 400, "seed: must be an integer in [0, 2^53)");
        r->gen.seed = (uint64_t)seed->valuedouble;
        r->seed_given = 1;
    } else {
        /* No seed asked for: a fresh one per request, given back in the response so that
         * the answer can be reproduced. 2^53 keeps it exact in JSON numbers. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        static _Atomic uint64_t counter;
        uint64_t x = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
                     (atomic_fetch_add(&counter, 1) * 0x9E3779B97F4A7C15ull);
        r->gen.seed = x & ((1ull << 53) - 1);
    }
    if (q->stop)
        return parse_stop(q->stop, q->stop_name ? q->stop_name : "stop", am, r, err, errlen);
    return 0;
}

/* The layout of one h or c of the model, for messages. */
static void state_layout(const model_info *info, char *buf, size_t len)
{
    int D = info->bidirectional ? 2 : 1;
    snprintf(buf, len, "num_layers %d x directions %d, layer-major%s", info->num_layers, D,
             D == 2 ? ", forward then reverse" : "");
}

/* One h or c of initial_state[i] (v, named by which): layers x directions vectors of
 * hidden_size numbers, into dst. */
static int parse_state_matrix(const cJSON *v, int i, const char *which, const model_info *info,
                              float *dst, char *err, size_t errlen)
{
    int rows = info->num_layers * (info->bidirectional ? 2 : 1), H = info->hidden_size;
    char layout[96];
    state_layout(info, layout, sizeof layout);
    if (!cJSON_IsArray(v))
        return api_fail(err, errlen, 400,
                        "initial_state[%d].%s: must be an array of %d vectors of %d numbers (%s)",
                        i, which, rows, H, layout);
    if (cJSON_GetArraySize(v) != rows)
        return api_fail(err, errlen, 400,
                        "initial_state[%d].%s: must be an array of %d vectors of %d numbers (%s), "
                        "got %d vectors",
                        i, which, rows, H, layout, cJSON_GetArraySize(v));
    int j = 0;
    const cJSON *row;
    cJSON_ArrayForEach(row, v)
    {
        if (!cJSON_IsArray(row) || cJSON_GetArraySize(row) != H)
            return api_fail(
                err, errlen, 400,
                "initial_state[%d].%s[%d]: must be an array of %d numbers (hidden_size)%s", i,
                which, j, H, cJSON_IsArray(row) ? ", got a different count" : "");
        int k = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, row)
        {
            if (!cJSON_IsNumber(e))
                return api_fail(err, errlen, 400, "initial_state[%d].%s[%d][%d]: must be a number",
                                i, which, j, k);
            float f = (float)e->valuedouble;
            if (!isfinite(f))
                return api_fail(err, errlen, 400,
                                "initial_state[%d].%s[%d][%d]: %.9g does not fit a float", i, which,
                                j, k, e->valuedouble);
            dst[(size_t)j * H + k++] = f;
        }
        j++;
    }
    return 0;
}

/* "initial_state" (v): one entry per sequence, null (zero state) or {"h": ..., "c": ...};
 * points the sequences' h0/c0 into r->state_in. */
static int parse_initial_state(const cJSON *v, const api_model *am, api_request *r, char *err,
                               size_t errlen)
{
    if (am->info->hidden_size == 0)
        return api_fail(err, errlen, 400, "initial_state: model \"%s\" has no LSTM, so no state",
                        am->name);
    if (!cJSON_IsArray(v))
        return api_fail(err, errlen, 400,
                        "initial_state: must be an array with one entry per "
                        "sequence (null, or {\"h\": ..., \"c\": ...})");
    int n = cJSON_GetArraySize(v);
    if (n != r->nseqs)
        return api_fail(err, errlen, 400,
                        "initial_state: %d entries for %d sequences (one per sequence; null for a "
                        "zero state)",
                        n, r->nseqs);
    size_t S = r->state_size;
    r->state_in = malloc((size_t)n * 2 * S * sizeof(float));
    if (!r->state_in)
        return api_fail(err, errlen, 500, "out of memory");
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        if (cJSON_IsNull(e)) {
            i++;
            continue;
        }
        if (!cJSON_IsObject(e))
            return api_fail(err, errlen, 400,
                            "initial_state[%d]: must be null or an object "
                            "{\"h\": ..., \"c\": ...}",
                            i);
        const cJSON *hc[2] = {NULL, NULL}, *f;
        cJSON_ArrayForEach(f, e)
        {
            int k = !strcmp(f->string, "h") ? 0 : !strcmp(f->string, "c") ? 1 : -1;
            if (k < 0)
                return api_fail(err, errlen, 400,
                                "initial_state[%d].%.32s: unknown field (expected h, c)", i,
                                f->string);
            if (hc[k])
                return api_fail(err, errlen, 400, "initial_state[%d].%s: given twice", i,
                                f->string);
            hc[k] = f;
        }
        float *h0 = r->state_in + (size_t)i * 2 * S;
        for (int k = 0; k < 2; k++) {
            const char *which = k ? "c" : "h";
            if (!hc[k])
                return api_fail(err, errlen, 400,
                                "initial_state[%d].%s: required (give both h "
                                "and c, or null for a zero state)",
                                i, which);
            int code = parse_state_matrix(hc[k], i, which, am->info, h0 + k * S, err, errlen);
            if (code)
                return code;
        }
        r->seqs[i].h0 = h0;
        r->seqs[i].c0 = h0 + S;
        i++;
    }
    return 0;
}

/* "return_state" (v, may be NULL). */
static int parse_return_state(const cJSON *v, const api_model *am, api_request *r, char *err,
                              size_t errlen)
{
    if (!v)
        return 0;
    if (!cJSON_IsBool(v))
        return api_fail(err, errlen, 400, "return_state: must be true or false");
    r->return_state = cJSON_IsTrue(v);
    if (r->return_state && am->info->hidden_size == 0)
        return api_fail(err, errlen, 400, "return_state: model \"%s\" has no LSTM, so no state",
                        am->name);
    return 0;
}

/* A boolean sequence parameter (v may be NULL: false). */
static int seq_flag(const cJSON *v, const char *prefix, const char *name, int *out, char *err,
                    size_t errlen)
{
    if (v && !cJSON_IsBool(v))
        return api_fail(err, errlen, 400, "%s%s: must be true or false", prefix, name);
    *out = cJSON_IsTrue(v);
    return 0;
}

int api_parse_sequence(const cJSON *id, const cJSON *start, const cJSON *end,
                       const char *prefix, const api_model *am, api_request *r, char *err,
                       size_t errlen)
{
    int code;
    if ((code = seq_flag(start, prefix, "sequence_start", &r->seq_start, err, errlen)) ||
        (code = seq_flag(end, prefix, "sequence_end", &r->seq_end, err, errlen)))
        return code;
    r->seq_key[0] = 0;
    if (cJSON_IsString(id)) {
        if (strlen(id->valuestring) > API_SEQ_ID_MAX)
            return api_fail(err, errlen, 400, "%ssequence_id: a string of at most %d bytes",
                            prefix, API_SEQ_ID_MAX);
        if (id->valuestring[0])
            snprintf(r->seq_key, sizeof r->seq_key, "s%s", id->valuestring);
    } else if (cJSON_IsNumber(id)) {
        /* 2^53: the integers beyond it do not all survive a JSON number here (a double). */
        double d = id->valuedouble;
        if (d != floor(d) || d < 0 || d > 9007199254740992.0)
            return api_fail(err, errlen, 400,
                            "%ssequence_id: must be an integer in [0, 2^53] or a string", prefix);
        if (d > 0)
            snprintf(r->seq_key, sizeof r->seq_key, "n%.0f", d);
    } else if (id) {
        return api_fail(err, errlen, 400,
                        "%ssequence_id: must be an integer in [0, 2^53] or a string", prefix);
    }
    if (!r->seq_key[0]) {
        if (r->seq_start || r->seq_end)
            return api_fail(err, errlen, 400,
                            "%s%s: needs a sequence_id (not 0 or \"\")", prefix,
                            r->seq_start ? "sequence_start" : "sequence_end");
        return 0;
    }
    const model_info *in = am->info;
    if (in->hidden_size == 0)
        return api_fail(err, errlen, 400,
                        "%ssequence_id: model \"%s\" has no LSTM, so no state to keep between "
                        "requests",
                        prefix, am->name);
    if (in->bidirectional)
        return api_fail(err, errlen, 400,
                        "%ssequence_id: model \"%s\" is bidirectional: its reverse direction "
                        "reads each input from its end, so a sequence cannot continue in a "
                        "later request",
                        prefix, am->name);
    if (r->nseqs != 1)
        return api_fail(err, errlen, 400,
                        "%ssequence_id: a request of a sequence carries one sequence, got %d",
                        prefix, r->nseqs);
    if (r->state_in && !r->seq_start)
        return api_fail(err, errlen, 400,
                        "initial_state: with sequence_id only on the sequence's first request "
                        "(sequence_start: true); later ones continue from the kept state");
    r->state_size = (size_t)in->num_layers * (size_t)in->hidden_size;
    return 0;
}

const char *api_seq_shown(const api_request *r, char *buf, size_t n)
{
    const char *id = r->seq_key + 1;
    if (r->seq_key[0] == 'n') {
        snprintf(buf, n, "%s", id);
        return buf;
    }
    /* At most 64 bytes of a string id, cut between UTF-8 characters. */
    size_t len = strlen(id);
    if (len > 64) {
        len = 64;
        while (len > 0 && ((unsigned char)id[len] & 0xC0) == 0x80)
            len--;
    }
    snprintf(buf, n, "\"%.*s%s\"", (int)len, id, id[len] ? "..." : "");
    return buf;
}

/* "stream" (v, may be NULL), once generate, return_state and the sequences are known. */
static int parse_stream(const cJSON *v, api_request *r, char *err, size_t errlen)
{
    if (!v)
        return 0;
    if (!cJSON_IsBool(v))
        return api_fail(err, errlen, 400, "stream: must be true or false");
    r->stream = cJSON_IsTrue(v);
    if (!r->stream)
        return 0;
    if (!r->generate)
        return api_fail(err, errlen, 400,
                        "stream: only with generate (it sends the generated tokens as they come)");
    if (r->nseqs != 1)
        return api_fail(err, errlen, 400, "stream: needs exactly one sequence, got %d",
                        r->nseqs);
    if (r->return_state)
        return api_fail(err, errlen, 400, "stream: not with return_state");
    return 0;
}

/* The step limit for `steps` input steps plus the tokens r generates. */
static int check_steps(long steps, const api_request *r, const seq_src *src,
                       const api_limits *lim, char *err, size_t errlen)
{
    steps += (long)r->nseqs * (r->generate > 0 ? r->generate - 1 : 0);
    if (steps > lim->max_request_steps)
        return api_fail(err, errlen, 400, "%s: %ld time steps in all%s, more than the limit %d",
                        src->field, steps, r->generate ? " with the generated tokens" : "",
                        lim->max_request_steps);
    return 0;
}

/* The rest of parse_root, once the model and the sequences' source (inputs) are known. */
static int parse_body(const req_fields *q, const seq_src *src, const api_model *am,
                      const api_limits *lim, api_request *r, char *err, size_t errlen)
{
    const model_info *info = am->info;
    const cJSON *inputs = q->inputs, *output = q->output, *top_k = q->top_k;
    int code;
    r->state_size = (size_t)info->num_layers * (info->bidirectional ? 2 : 1) *
                    (size_t)info->hidden_size;
    if ((code = parse_return_state(q->ret_state, am, r, err, errlen)))
        return code;
    if (output) {
        if (cJSON_IsString(output) && !strcmp(output->valuestring, "last"))
            r->all_steps = 0;
        else if (cJSON_IsString(output) && !strcmp(output->valuestring, "all"))
            r->all_steps = 1;
        else
            return api_fail(err, errlen, 400, "output: must be \"last\" or \"all\"");
    }
    r->top_k = 0;
    if (top_k && (code = int_field(top_k, "top_k", 1, info->output_size, &r->top_k, err, errlen)))
        return code;
    r->timeout_ms = -1;
    if (q->timeout && (code = int_field(q->timeout, "timeout_ms", 1, 3600000, &r->timeout_ms,
                                        err, errlen)))
        return code;
    if ((code = parse_gen(q, am, r, err, errlen)))
        return code;
    long given = 0;
    if ((code = measure_inputs(inputs, src, am, &r->nseqs, &r->total_steps, &given, err,
                               errlen)))
        return code;
    /* Checked before anything is allocated for them; the whole request once texts are
     * encoded (their bytes are bounded by the body limit). */
    if ((code = check_steps(given, r, src, lim, err, errlen)))
        return code;
    if ((code = parse_stream(q->stream, r, err, errlen)))
        return code;
    r->seqs = calloc((size_t)r->nseqs, sizeof *r->seqs);
    if (!r->seqs)
        return api_fail(err, errlen, 500, "out of memory");
    code = info->input_kind == MODEL_INPUT_TOKENS ? fill_tokens(inputs, src, am, r, err, errlen)
                                                  : fill_vectors(inputs, info, r, err, errlen);
    if (code)
        return code;
    if ((code = check_steps(r->total_steps, r, src, lim, err, errlen)))
        return code;
    long per_vec = r->generate ? r->generate : r->top_k ? 2L * r->top_k : info->output_size;
    long vecs = r->all_steps ? r->total_steps : r->nseqs;
    long values = vecs * per_vec + (r->return_state ? 2L * r->nseqs * (long)r->state_size : 0);
    if (values > lim->max_output_values)
        return api_fail(err, errlen, 400,
                        "inputs: the response would carry %ld values, more than the limit %ld "
                        "(use fewer steps, \"output\": \"last\" or top_k%s)",
                        values, lim->max_output_values,
                        r->return_state ? ", or no return_state" : "");
    if (q->init_state && (code = parse_initial_state(q->init_state, am, r, err, errlen)))
        return code;
    if ((code = api_parse_sequence(q->seq_id, q->seq_start, q->seq_end, q->seq_prefix, am, r,
                                   err, errlen)))
        return code;
    /* The engine's own check is the last word (length, range, finiteness). */
    for (int i = 0; i < r->nseqs; i++) {
        char why[200], name[32];
        if (model_check_seq(am->model, &r->seqs[i], why, sizeof why) != BALSA_OK)
            return api_fail(err, errlen, 400, "%s: %s", seq_name(src, i, name, sizeof name), why);
    }
    return 0;
}

static int parse_root(const cJSON *root, const api_model *models, int nmodels,
                      const api_limits *lim, api_request *r, char *err, size_t errlen)
{
    if (!cJSON_IsObject(root))
        return api_fail(err, errlen, 400,
                        "body: must be a JSON object {\"model\", \"inputs\", ...}");
    req_fields q = {.seq_prefix = ""};
    const cJSON *f;
    cJSON_ArrayForEach(f, root)
    {
        const cJSON **slot = !strcmp(f->string, "model")           ? &q.model
                             : !strcmp(f->string, "inputs")        ? &q.inputs
                             : !strcmp(f->string, "text")          ? &q.text
                             : !strcmp(f->string, "output")        ? &q.output
                             : !strcmp(f->string, "top_k")         ? &q.top_k
                             : !strcmp(f->string, "timeout_ms")    ? &q.timeout
                             : !strcmp(f->string, "generate")      ? &q.generate
                             : !strcmp(f->string, "temperature")   ? &q.temperature
                             : !strcmp(f->string, "seed")          ? &q.seed
                             : !strcmp(f->string, "stop")          ? &q.stop
                             : !strcmp(f->string, "initial_state") ? &q.init_state
                             : !strcmp(f->string, "return_state")  ? &q.ret_state
                             : !strcmp(f->string, "stream")        ? &q.stream
                             : !strcmp(f->string, "sequence_id")    ? &q.seq_id
                             : !strcmp(f->string, "sequence_start") ? &q.seq_start
                             : !strcmp(f->string, "sequence_end")   ? &q.seq_end
                                                                   : NULL;
        if (!slot)
            return api_fail(err, errlen, 400,
                            "%.64s: unknown field (expected model, inputs, text, output, top_k, "
                            "timeout_ms, generate, temperature, seed, stop, stream, "
                            "initial_state, return_state, sequence_id, sequence_start, "
                            "sequence_end)",
                            f->string);
        if (*slot)
            return api_fail(err, errlen, 400, "%s: given twice", f->string);
        *slot = f;
    }
    int code = find_model(q.model, models, nmodels, &r->model, err, errlen);
    if (code)
        return code;
    const api_model *am = &models[r->model];
    if (!am->info)
        return api_fail(err, errlen, 503, "model: \"%s\" is still loading", am->name);
    const model_info *info = am->info;
    r->engine_model = am->model;
    const cJSON *text = q.text;
    if (q.inputs && text)
        return api_fail(err, errlen, 400, "text: give either inputs or text, not both");
    if (!q.inputs && !text)
        return api_fail(err, errlen, 400, "inputs: required (an array of sequences)");
    seq_src src = {q.inputs ? "inputs" : "text", 0};
    cJSON *one = NULL; /* "text": "..." stands for "text": ["..."] */
    if (text) {
        if (!info->has_vocabulary)
            return api_fail(err, errlen, 400,
                            "text: model \"%s\" has no vocabulary (send token ids "
                            "in inputs)",
                            am->name);
        if (cJSON_IsString(text)) {
            one = cJSON_CreateArray();
            if (!one ||
                !cJSON_AddItemToArray(one, cJSON_CreateStringReference(text->valuestring))) {
                cJSON_Delete(one);
                return api_fail(err, errlen, 500, "out of memory");
            }
            src.single = 1;
            q.inputs = one;
        } else if (cJSON_IsArray(text)) {
            const cJSON *e;
            int i = 0;
            cJSON_ArrayForEach(e, text)
            {
                if (!cJSON_IsString(e))
                    return api_fail(err, errlen, 400, "text[%d]: must be a string", i);
                i++;
            }
            q.inputs = text;
        } else {
            return api_fail(err, errlen, 400, "text: must be a string or an array of strings");
        }
    }
    code = parse_body(&q, &src, am, lim, r, err, errlen);
    cJSON_Delete(one);
    return code;
}

int api_parse_json(const char *body, size_t len, cJSON **root, const char *trailing_hint,
                   char *err, size_t errlen)
{
    *root = NULL;
    if (len == 0)
        return api_fail(err, errlen, 400, "body: empty (expected a JSON object)");
    const char *end = NULL;
    *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!*root) {
        size_t off = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
        return api_fail(err, errlen, 400, "body: malformed JSON at byte %zu", off);
    }
    size_t off = (size_t)(end - body);
    if (json_text_refuse(body, off, "body", "not accepted: it would end the string there", err,
                         errlen)) {
        cJSON_Delete(*root);
        *root = NULL;
        return 400;
    }
    while (off < len &&
           (body[off] == ' ' || body[off] == '\n' || body[off] == '\r' || body[off] == '\t'))
        off++;
    if (off != len) {
        cJSON_Delete(*root);
        *root = NULL;
        return api_fail(err, errlen, 400,
                        "body: unexpected text after the JSON value at byte %zu%s", off,
                        trailing_hint ? trailing_hint : "");
    }
    return 0;
}

int api_parse_request(const char *body, size_t len, const api_model *models, int nmodels,
                      const api_limits *lim, api_request *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->model = -1;
    cJSON *root;
    int code = api_parse_json(body, len, &root, NULL, err, errlen);
    if (code)
        return code;
    code = parse_root(root, models, nmodels, lim, r, err, errlen);
    cJSON_Delete(root);
    if (code) {
        int model = r->model;
        api_request_free(r);
        r->model = model;
    }
    return code;
}

int api_alloc_outputs(api_request *r, const model_info *info)
{
    if (r->return_state || r->seq_key[0]) {
        size_t S = r->state_size;
        r->state_out = malloc((size_t)r->nseqs * 2 * S * sizeof(float));
        if (!r->state_out)
            return -1;
        for (int i = 0; i < r->nseqs; i++) {
            r->seqs[i].hn = r->state_out + (size_t)i * 2 * S;
            r->seqs[i].cn = r->seqs[i].hn + S;
        }
    }
    if (r->generate) {
        size_t n = (size_t)r->nseqs;
        r->gen_tokens = calloc(n, sizeof *r->gen_tokens);
        r->gen_counts = calloc(n, sizeof *r->gen_counts);
        r->gen_storage = malloc(n * (size_t)r->generate * sizeof *r->gen_storage);
        if (!r->gen_tokens || !r->gen_counts || !r->gen_storage)
            return -1;
        for (size_t i = 0; i < n; i++)
            r->gen_tokens[i] = r->gen_storage + i * (size_t)r->generate;
        return 0;
    }
    long vecs = r->all_steps ? r->total_steps : r->nseqs;
    r->outputs = calloc((size_t)r->nseqs, sizeof *r->outputs);
    r->out_storage = malloc((size_t)vecs * (size_t)info->output_size * sizeof(float));
    if (!r->outputs || !r->out_storage)
        return -1;
    float *p = r->out_storage;
    for (int i = 0; i < r->nseqs; i++) {
        r->outputs[i] = p;
        p += (size_t)(r->all_steps ? r->seqs[i].len : 1) * (size_t)info->output_size;
    }
    return 0;
}

/* One output vector, whole or as its top k (with the tokens' texts when m has them). */
static void render_vector(jsonw *w, const balsa_model *m, const float *v, int n, int k,
                          int *idx, float *val)
{
    if (!k) {
        jsonw_float_array(w, v, n);
        return;
    }
    engine_topk(v, n, k, idx, val);
    jsonw_str(w, "{\"indices\":[");
    for (int i = 0; i < k; i++)
        jsonw_printf(w, i ? ",%d" : "%d", idx[i]);
    jsonw_str(w, "],\"values\":");
    jsonw_float_array(w, val, k);
    if (m && model_token_str(m, idx[0])) {
        jsonw_str(w, ",\"tokens\":[");
        for (int i = 0; i < k; i++) {
            if (i)
                jsonw_str(w, ",");
            jsonw_quoted(w, model_token_str(m, idx[i]));
        }
        jsonw_str(w, "]");
    }
    jsonw_str(w, "}");
}

/* The texts of tokens ids[0..n) of m (which has a vocabulary), joined: a malloc'd
 * string, NULL when out of memory. */
static char *tokens_text(const balsa_model *m, const int32_t *ids, int n)
{
    size_t bytes = 1;
    for (int i = 0; i < n; i++)
        bytes += strlen(model_token_str(m, ids[i]));
    char *text = malloc(bytes), *p = text;
    for (int i = 0; text && i < n; i++) {
        const char *t = model_token_str(m, ids[i]);
        size_t l = strlen(t);
        memcpy(p, t, l);
        p += l;
    }
    if (text)
        *p = 0;
    return text;
}

/* The first place in text where one of r's stop strings begins; NULL when none does. */
static const char *first_stop(const api_request *r, const char *text)
{
    const char *first = NULL;
    for (int i = 0; i < r->gen.nstop; i++) {
        const char *at = strstr(text, r->gen.stop[i]);
        if (at && (!first || at < first))
            first = at;
    }
    return first;
}

/* Cuts text before the first of r's stop strings it contains; 1 when it held one. */
static int cut_at_stop(const api_request *r, char *text)
{
    char *first = (char *)first_stop(r, text);
    if (first)
        *first = 0;
    return first != NULL;
}

/* Why a sequence's generation ended: "stop" (a stop string), "length" (all the tokens
 * asked for), or "cancelled" (fewer without a stop string: the server cut it short while
 * shutting down). */
static const char *finish_reason(const api_request *r, int count, int stopped)
{
    return stopped ? "stop" : count < r->generate ? "cancelled" : "length";
}

/* Sequence i's generated tokens: {"tokens": [ids], "text": "...", "finish_reason"} (text
 * when the model has a vocabulary, cut before a stop string; finish_reason "stop" when a
 * stop string ended it, "cancelled" when the server cut it short, else "length"); -1 when
 * out of memory. */
static int render_generated(jsonw *w, const api_request *r, int i)
{
    const balsa_model *m = r->engine_model;
    const int32_t *ids = r->gen_tokens[i];
    int n = r->gen_counts[i], stopped = 0;
    jsonw_str(w, "{\"tokens\":[");
    for (int j = 0; j < n; j++)
        jsonw_printf(w, j ? ",%d" : "%d", (int)ids[j]);
    jsonw_str(w, "]");
    if (m && model_get_info(m)->has_vocabulary) {
        char *text = tokens_text(m, ids, n);
        if (!text)
            return -1;
        stopped = cut_at_stop(r, text);
        jsonw_str(w, ",\"text\":");
        jsonw_quoted(w, text);
        free(text);
    }
    jsonw_printf(w, ",\"finish_reason\":\"%s\"}", finish_reason(r, n, stopped));
    return 0;
}

/* One sequence's final state: {"h": [[H floats] x rows], "c": [...]}. */
static void render_state(jsonw *w, const float *hn, const float *cn, int rows, int H)
{
    for (int k = 0; k < 2; k++) {
        jsonw_str(w, k ? "],\"c\":[" : "{\"h\":[");
        for (int j = 0; j < rows; j++) {
            if (j)
                jsonw_str(w, ",");
            jsonw_float_array(w, (k ? cn : hn) + (size_t)j * H, H);
        }
    }
    jsonw_str(w, "]}");
}

char *api_render_response(const api_request *r, const char *model_name,
                          const model_info *info, size_t *len)
{
    int n = info->output_size;
    int *idx = NULL;
    float *val = NULL;
    if (r->top_k) {
        idx = malloc((size_t)r->top_k * sizeof *idx);
        val = malloc((size_t)r->top_k * sizeof *val);
        if (!idx || !val) {
            free(idx);
            free(val);
            return NULL;
        }
    }
    jsonw w;
    jsonw_init(&w);
    jsonw_str(&w, "{\"model\":");
    jsonw_quoted(&w, model_name);
    if (r->generate && r->gen.temperature > 0)
        jsonw_printf(&w, ",\"seed\":%llu", (unsigned long long)r->gen.seed);
    jsonw_str(&w, ",\"outputs\":[");
    int oom = 0;
    for (int i = 0; i < r->nseqs && !oom; i++) {
        if (i)
            jsonw_str(&w, ",");
        if (r->generate) {
            oom = render_generated(&w, r, i);
            continue;
        }
        const float *o = r->outputs[i];
        if (!r->all_steps) {
            render_vector(&w, r->engine_model, o, n, r->top_k, idx, val);
            continue;
        }
        jsonw_str(&w, "[");
        for (int t = 0; t < r->seqs[i].len; t++) {
            if (t)
                jsonw_str(&w, ",");
            render_vector(&w, r->engine_model, o + (size_t)t * (size_t)n, n, r->top_k, idx,
                          val);
        }
        jsonw_str(&w, "]");
    }
    jsonw_str(&w, "]");
    for (int i = 0; r->return_state && i < r->nseqs; i++) {
        jsonw_str(&w, i ? "," : ",\"states\":[");
        render_state(&w, r->seqs[i].hn, r->seqs[i].cn,
                     info->num_layers * (info->bidirectional ? 2 : 1), info->hidden_size);
    }
    jsonw_str(&w, r->return_state ? "]}\n" : "}\n");
    free(idx);
    free(val);
    if (oom) {
        jsonw_free(&w);
        return NULL;
    }
    return jsonw_take(&w, len);
}

char *api_render_models(const api_model *models, int nmodels, const int (*batching)[6],
                        size_t *len)
{
    static const char *heads[] = {"none", "softmax", "log_softmax"};
    jsonw w;
    jsonw_init(&w);
    jsonw_str(&w, "{\"models\":[");
    for (int i = 0; i < nmodels; i++) {
        const model_info *in = models[i].info;
        jsonw_str(&w, i ? ",{\"name\":" : "{\"name\":");
        jsonw_quoted(&w, models[i].name);
        jsonw_printf(&w, ",\"ready\":%s", in ? "true" : "false");
        if (in) {
            jsonw_printf(&w,
                         ",\"input\":\"%s\",\"vocab_size\":%d,\"input_size\":%d,"
                         "\"output_size\":%d,\"hidden_size\":%d,\"num_layers\":%d,"
                         "\"bidirectional\":%s,\"bank\":%d,\"sparsity\":%.6g,\"head\":\"%s\","
                         "\"params_dense\":%lld,\"params_stored\":%lld,\"weight_bytes\":%zu,"
                         "\"text\":%s,\"generate\":%s",
                         in->input_kind == MODEL_INPUT_TOKENS ? "tokens" : "vectors",
                         in->vocab_size, in->input_size, in->output_size, in->hidden_size,
                         in->num_layers, in->bidirectional ? "true" : "false", in->bank,
                         in->sparsity, (unsigned)in->head < 3 ? heads[in->head] : "none",
                         in->params_dense, in->params_stored, in->weight_bytes,
                         in->has_vocabulary ? "true" : "false",
                         in->can_generate ? "true" : "false");
        }
        jsonw_printf(&w,
                     ",\"batching\":{\"max_batch_size\":%d,\"max_queue_delay_us\":%d,"
                     "\"queue_capacity\":%d,\"request_timeout_ms\":%d,\"max_sequences\":%d,"
                     "\"sequence_idle_ms\":%d}}",
                     batching[i][0], batching[i][1], batching[i][2], batching[i][3],
                     batching[i][4], batching[i][5]);
    }
    jsonw_str(&w, "]}\n");
    return jsonw_take(&w, len);
}

/* The tokens a generate request asks for when its parameters name no max_tokens. */
#define API_DEFAULT_MAX_TOKENS 16

/* Checks the generate extension's "parameters" and turns them into the native fields
 * (*generate, and *temperature / *seed when given: cJSON numbers the caller deletes; stop
 * and the sequence parameters seq[3] are pointed to as they are). */
static int generate_params(const cJSON *params, cJSON **generate, cJSON **temperature,
                           cJSON **seed, const cJSON **stop, const cJSON **seq, char *err,
                           size_t errlen)
{
    double max_tokens = API_DEFAULT_MAX_TOKENS;
    const cJSON *p;
    if (params && !cJSON_IsObject(params))
        return api_fail(err, errlen, 400, "parameters: must be an object");
    cJSON_ArrayForEach(p, params)
    {
        /* Every parameter before p is a known one (an unknown one ends the loop), so this
         * looks at most at the eight names. */
        for (const cJSON *q = params->child; q != p; q = q->next)
            if (!strcmp(q->string, p->string))
                return api_fail(err, errlen, 400, "parameters.%s: given twice", p->string);
        if (!strcmp(p->string, "max_tokens")) {
            if (!cJSON_IsNumber(p) || p->valuedouble != floor(p->valuedouble) ||
                p->valuedouble < 1 || p->valuedouble > API_MAX_GENERATE)
                return api_fail(err, errlen, 400,
                                "parameters.max_tokens: must be an integer in [1, %d]",
                                API_MAX_GENERATE);
            max_tokens = p->valuedouble;
        } else if (!strcmp(p->string, "temperature")) {
            if (!cJSON_IsNumber(p) || !(p->valuedouble >= 0) || p->valuedouble > 100)
                return api_fail(err, errlen, 400,
                                "parameters.temperature: must be a number in [0, 100] (0: greedy)");
            *temperature = cJSON_CreateNumber(p->valuedouble);
        } else if (!strcmp(p->string, "seed")) {
            if (!cJSON_IsNumber(p) || p->valuedouble != floor(p->valuedouble) ||
                p->valuedouble < 0 || p->valuedouble > 9007199254740991.0)
                return api_fail(err, errlen, 400,
                                "parameters.seed: must be an integer in [0, 2^53)");
            *seed = cJSON_CreateNumber(p->valuedouble);
        } else if (!strcmp(p->string, "stop")) {
            *stop = p;
        } else if (!strcmp(p->string, "sequence_id")) {
            seq[0] = p;
        } else if (!strcmp(p->string, "sequence_start")) {
            seq[1] = p;
        } else if (!strcmp(p->string, "sequence_end")) {
            seq[2] = p;
        } else if (!strcmp(p->string, "stream")) {
            if (!cJSON_IsFalse(p))
                return api_fail(err, errlen, 400,
                                "parameters.stream: balsa answers in one response (false only)");
        } else {
            return api_fail(
                err, errlen, 400,
                "parameters.%.64s: unknown (expected max_tokens, temperature, seed, stop, "
                "sequence_id, sequence_start, sequence_end)",
                p->string);
        }
    }
    *generate = cJSON_CreateNumber(max_tokens);
    return 0;
}

int api_parse_generate(const char *body, size_t len, const api_model *models, int model,
                       const api_limits *lim, api_request *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->model = model;
    cJSON *root, *inputs = NULL, *generate = NULL, *temperature = NULL, *seed = NULL;
    int code = api_parse_json(body, len, &root, NULL, err, errlen);
    if (code)
        return code;
    const cJSON *text = NULL, *params = NULL, *stop = NULL, *seq[3] = {NULL, NULL, NULL}, *f;
    const api_model *am = &models[model];
    if (!cJSON_IsObject(root))
        code = api_fail(err, errlen, 400,
                        "body: must be a JSON object {\"text_input\", \"parameters\"}");
    const cJSON *fields = code ? NULL : root;
    cJSON_ArrayForEach(f, fields)
    {
        const cJSON **slot = !strcmp(f->string, "text_input")   ? &text
                             : !strcmp(f->string, "parameters") ? &params
                                                                : NULL;
        if (!slot || *slot) {
            code = api_fail(err, errlen, 400,
                            slot ? "%.64s: given twice"
                                 : "%.64s: unknown field (expected text_input, parameters)",
                            f->string);
            break;
        }
        *slot = f;
    }
    if (!code && !am->info)
        code = api_fail(err, errlen, 503, "model: \"%s\" is still loading", am->name);
    if (!code && !cJSON_IsString(text))
        code = api_fail(err, errlen, 400, "text_input: required, a string");
    if (!code && !am->info->has_vocabulary)
        code = api_fail(err, errlen, 400, "text_input: model \"%s\" has no vocabulary", am->name);
    if (!code)
        code = generate_params(params, &generate, &temperature, &seed, &stop, seq, err,
                               errlen);
    if (!code) {
        inputs = cJSON_CreateArray();
        if (!generate || !inputs ||
            !cJSON_AddItemToArray(inputs, cJSON_CreateStringReference(text->valuestring)))
            code = api_fail(err, errlen, 500, "out of memory");
    }
    if (!code) {
        seq_src src = {"text_input", 1};
        req_fields q = {.inputs = inputs, .generate = generate, .temperature = temperature,
                        .seed = seed, .stop = stop, .stop_name = "parameters.stop",
                        .seq_id = seq[0], .seq_start = seq[1], .seq_end = seq[2],
                        .seq_prefix = "parameters."};
        r->engine_model = am->model;
        code = parse_body(&q, &src, am, lim, r, err, errlen);
    }
    cJSON_Delete(inputs);
    cJSON_Delete(generate);
    cJSON_Delete(temperature);
    cJSON_Delete(seed);
    cJSON_Delete(root);
    if (code) {
        api_request_free(r);
        r->model = model;
    }
    return code;
}

char *api_render_generate(const api_request *r, const char *model_name, size_t *len)
{
    jsonw w;
    jsonw_init(&w);
    jsonw_str(&w, "{\"model_name\":");
    jsonw_quoted(&w, model_name);
    jsonw_str(&w, ",\"model_version\":\"1\"");
    if (r->gen.temperature > 0)
        jsonw_printf(&w, ",\"seed\":%llu", (unsigned long long)r->gen.seed);
    char *text = tokens_text(r->engine_model, r->gen_tokens[0], r->gen_counts[0]);
    if (!text) {
        jsonw_free(&w);
        return NULL;
    }
    int stopped = cut_at_stop(r, text);
    jsonw_str(&w, ",\"text_output\":");
    jsonw_quoted(&w, text);
    free(text);
    jsonw_printf(&w, ",\"finish_reason\":\"%s\"", finish_reason(r, r->gen_counts[0], stopped));
    jsonw_str(&w, ",\"tokens\":[");
    for (int i = 0; i < r->gen_counts[0]; i++)
        jsonw_printf(&w, i ? ",%d" : "%d", (int)r->gen_tokens[0][i]);
    jsonw_str(&w, "]}\n");
    return jsonw_take(&w, len);
}

/* The length of the longest suffix of text[0..len) that is a proper prefix of one of r's
 * stop strings: text that a later token may turn into a stop string. */
static size_t stop_prefix_tail(const api_request *r, const char *text, size_t len)
{
    size_t best = 0;
    for (int i = 0; i < r->gen.nstop; i++) {
        const char *stop = r->gen.stop[i];
        size_t sl = strlen(stop);
        for (size_t k = sl - 1 < len ? sl - 1 : len; k > best; k--)
            if (!memcmp(text + len - k, stop, k)) {
                best = k;
                break;
            }
    }
    return best;
}

int api_stream_event(const api_request *r, const char *model_name, int v2, int final,
                     api_stream *st, jsonw *w)
{
    const balsa_model *m = r->engine_model;
    const int32_t *ids = r->gen_tokens[0];
    int n = r->gen_counts[0];
    if (n == st->tokens && !final)
        return 0;
    int vocab = m && model_get_info(m)->has_vocabulary;
    size_t sendable = 0;
    int stopped = 0;
    if (vocab) {
        for (int j = st->tokens; j < n; j++) {
            const char *t = model_token_str(m, ids[j]);
            size_t l = strlen(t);
            if (st->len + l + 1 > st->cap) {
                size_t cap = st->cap ? st->cap : 256;
                while (cap < st->len + l + 1)
                    cap *= 2;
                char *p = realloc(st->text, cap);
                if (!p)
                    return -1;
                st->text = p;
                st->cap = cap;
            }
            memcpy(st->text + st->len, t, l + 1);
            st->len += l;
        }
        if (final) {
            /* A stop string lies after what was sent (that held none, nor the start of
             * one), so the search starts just before it. */
            size_t from = st->sent > MODEL_GEN_MAX_STOP_BYTES ? st->sent - MODEL_GEN_MAX_STOP_BYTES
                                                              : 0;
            const char *at = st->text ? first_stop(r, st->text + from) : NULL;
            stopped = at != NULL;
            sendable = at ? (size_t)(at - st->text) : st->len;
        } else {
            sendable = st->len - stop_prefix_tail(r, st->text, st->len);
        }
        if (sendable < st->sent)
            sendable = st->sent;
    }
    jsonw_str(w, "data: {");
    if (v2) {
        jsonw_str(w, "\"model_name\":");
        jsonw_quoted(w, model_name);
        jsonw_str(w, ",\"model_version\":\"1\",");
    } else if (final) {
        jsonw_str(w, "\"model\":");
        jsonw_quoted(w, model_name);
        jsonw_str(w, ",");
    }
    jsonw_str(w, "\"tokens\":[");
    for (int j = st->tokens; j < n; j++)
        jsonw_printf(w, j > st->tokens ? ",%d" : "%d", (int)ids[j]);
    jsonw_str(w, "]");
    if (vocab) {
        jsonw_str(w, v2 ? ",\"text_output\":" : ",\"text\":");
        char save = st->text ? st->text[sendable] : 0;
        if (st->text)
            st->text[sendable] = 0;
        jsonw_quoted(w, st->text ? st->text + st->sent : "");
        if (st->text)
            st->text[sendable] = save;
        st->sent = sendable;
    }
    if (final) {
        jsonw_printf(w, ",\"finish_reason\":\"%s\"", finish_reason(r, n, stopped));
        if (r->gen.temperature > 0)
            jsonw_printf(w, ",\"seed\":%llu", (unsigned long long)r->gen.seed);
    }
    jsonw_str(w, "}\n\n");
    st->tokens = n;
    return w->oom ? -1 : 0;
}

char *api_render_stream(const api_request *r, const char *model_name, size_t *len)
{
    api_request at = *r; /* r as it was after each token */
    int count = 0;
    at.gen_counts = &count;
    api_stream st = {0};
    jsonw w;
    jsonw_init(&w);
    int oom = 0;
    while (count < r->gen_counts[0] && !oom) {
        count++;
        oom = api_stream_event(&at, model_name, 0, count == r->gen_counts[0], &st, &w);
    }
    api_stream_free(&st);
    if (oom) {
        jsonw_free(&w);
        return NULL;
    }
    return jsonw_take(&w, len);
}

void api_stream_error(const char *msg, jsonw *w)
{
    jsonw_str(w, "data: {\"error\":");
    jsonw_quoted(w, msg);
    jsonw_str(w, "}\n\n");
}

void api_stream_free(api_stream *st)
{
    free(st->text);
    memset(st, 0, sizeof *st);
}
