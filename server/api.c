/* Request parsing and response rendering for the inference API (see api.h). Parsing is
 * cJSON (with the length-bounded entry point and an end-pointer check, because HTTP
 * bodies are not NUL-terminated); rendering is by hand (jsonw) for speed and short
 * floats. Never uses cJSON_GetErrorPtr, which reads a global shared by all threads. */
#include "api.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "jsonw.h"

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
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
        return fail(err, errlen, 400, "model: required when several models are served (%s)",
                    names);
    }
    if (!cJSON_IsString(name))
        return fail(err, errlen, 400, "model: must be a string naming a model (%s)", names);
    for (int i = 0; i < n; i++)
        if (strcmp(models[i].name, name->valuestring) == 0) {
            *idx = i;
            return 0;
        }
    return fail(err, errlen, 404, "model: no model named \"%.64s\" (served: %s)",
                name->valuestring, names);
}

/* Reads an integer field in [lo, hi] into *out. */
static int int_field(const cJSON *v, const char *name, int lo, int hi, int *out, char *err,
                     size_t errlen)
{
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < lo || v->valuedouble > hi)
        return fail(err, errlen, 400, "%s: must be an integer in [%d, %d]", name, lo, hi);
    *out = (int)v->valuedouble;
    return 0;
}

/* First pass over "inputs": shapes and sizes, so storage is allocated once. */
static int measure_inputs(const cJSON *inputs, const model_info *info, int *nseqs,
                          long *steps, char *err, size_t errlen)
{
    if (!cJSON_IsArray(inputs))
        return fail(err, errlen, 400, "inputs: must be an array of sequences");
    int n = 0;
    long total = 0;
    const cJSON *seq;
    cJSON_ArrayForEach(seq, inputs)
    {
        if (!cJSON_IsArray(seq) || !seq->child)
            return fail(err, errlen, 400, "inputs[%d]: must be a non-empty array of %s", n,
                        info->input_kind == MODEL_INPUT_TOKENS
                            ? "token ids"
                            : "feature vectors");
        const cJSON *e;
        cJSON_ArrayForEach(e, seq) total++;
        n++;
    }
    if (n == 0)
        return fail(err, errlen, 400, "inputs: must hold at least one sequence");
    *nseqs = n;
    *steps = total;
    return 0;
}

static int fill_tokens(const cJSON *inputs, const model_info *info, api_request *r,
                       char *err, size_t errlen)
{
    r->tokens = malloc((size_t)r->total_steps * sizeof *r->tokens);
    if (!r->tokens)
        return fail(err, errlen, 500, "out of memory");
    long pos = 0;
    int i = 0;
    const cJSON *seq;
    cJSON_ArrayForEach(seq, inputs)
    {
        r->seqs[i].tokens = r->tokens + pos;
        int t = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, seq)
        {
            if (!cJSON_IsNumber(e))
                return fail(err, errlen, 400, "inputs[%d][%d]: must be a token id (an integer)",
                            i, t);
            double v = e->valuedouble;
            if (v != floor(v))
                return fail(err, errlen, 400, "inputs[%d][%d]: token id must be an integer, got %.9g",
                            i, t, v);
            if (v < 0 || v >= info->vocab_size)
                return fail(err, errlen, 400,
                            "inputs[%d][%d]: token id %.0f out of range [0, %d)", i, t, v,
                            info->vocab_size);
            r->tokens[pos++] = (int32_t)v;
            t++;
        }
        r->seqs[i].len = t;
        i++;
    }
    return 0;
}

static int fill_vectors(const cJSON *inputs, const model_info *info, api_request *r,
                        char *err, size_t errlen)
{
    int d = info->input_size;
    r->features = malloc((size_t)r->total_steps * (size_t)d * sizeof *r->features);
    if (!r->features)
        return fail(err, errlen, 500, "out of memory");
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
                return fail(err, errlen, 400, "inputs[%d][%d]: must be an array of %d numbers",
                            i, t, d);
            int got = cJSON_GetArraySize(vec);
            if (got != d)
                return fail(err, errlen, 400,
                            "inputs[%d][%d]: must be an array of %d numbers, got %d", i, t, d,
                            got);
            int j = 0;
            const cJSON *e;
            cJSON_ArrayForEach(e, vec)
            {
                if (!cJSON_IsNumber(e))
                    return fail(err, errlen, 400, "inputs[%d][%d][%d]: must be a number", i, t,
                                j);
                float f = (float)e->valuedouble;
                if (!isfinite(f))
                    return fail(err, errlen, 400, "inputs[%d][%d][%d]: %.9g does not fit a float",
                                i, t, j, e->valuedouble);
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

static int parse_root(const cJSON *root, const api_model *models, int nmodels,
                      const api_limits *lim, api_request *r, char *err, size_t errlen)
{
    if (!cJSON_IsObject(root))
        return fail(err, errlen, 400, "body: must be a JSON object {\"model\", \"inputs\", ...}");
    const cJSON *f, *model = NULL, *inputs = NULL, *output = NULL, *top_k = NULL,
                   *timeout = NULL;
    cJSON_ArrayForEach(f, root)
    {
        const cJSON **slot = !strcmp(f->string, "model")        ? &model
                             : !strcmp(f->string, "inputs")     ? &inputs
                             : !strcmp(f->string, "output")     ? &output
                             : !strcmp(f->string, "top_k")      ? &top_k
                             : !strcmp(f->string, "timeout_ms") ? &timeout
                                                                : NULL;
        if (!slot)
            return fail(err, errlen, 400,
                        "%.64s: unknown field (expected model, inputs, output, top_k, timeout_ms)",
                        f->string);
        if (*slot)
            return fail(err, errlen, 400, "%s: given twice", f->string);
        *slot = f;
    }
    int code = find_model(model, models, nmodels, &r->model, err, errlen);
    if (code)
        return code;
    const api_model *am = &models[r->model];
    if (!am->info)
        return fail(err, errlen, 503, "model: \"%s\" is still loading", am->name);
    const model_info *info = am->info;
    if (!inputs)
        return fail(err, errlen, 400, "inputs: required (an array of sequences)");
    if (output) {
        if (cJSON_IsString(output) && !strcmp(output->valuestring, "last"))
            r->all_steps = 0;
        else if (cJSON_IsString(output) && !strcmp(output->valuestring, "all"))
            r->all_steps = 1;
        else
            return fail(err, errlen, 400, "output: must be \"last\" or \"all\"");
    }
    r->top_k = 0;
    if (top_k && (code = int_field(top_k, "top_k", 1, info->output_size, &r->top_k, err, errlen)))
        return code;
    r->timeout_ms = -1;
    if (timeout && (code = int_field(timeout, "timeout_ms", 1, 3600000, &r->timeout_ms, err,
                                     errlen)))
        return code;
    if ((code = measure_inputs(inputs, info, &r->nseqs, &r->total_steps, err, errlen)))
        return code;
    if (r->total_steps > lim->max_request_steps)
        return fail(err, errlen, 400, "inputs: %ld time steps in all, more than the limit %d",
                    r->total_steps, lim->max_request_steps);
    long per_vec = r->top_k ? 2L * r->top_k : info->output_size;
    long vecs = r->all_steps ? r->total_steps : r->nseqs;
    if (vecs * per_vec > lim->max_output_values)
        return fail(err, errlen, 400,
                    "inputs: the response would carry %ld values, more than the limit %ld "
                    "(use fewer steps, \"output\": \"last\" or top_k)",
                    vecs * per_vec, lim->max_output_values);
    r->seqs = calloc((size_t)r->nseqs, sizeof *r->seqs);
    if (!r->seqs)
        return fail(err, errlen, 500, "out of memory");
    code = info->input_kind == MODEL_INPUT_TOKENS ? fill_tokens(inputs, info, r, err, errlen)
                                                  : fill_vectors(inputs, info, r, err, errlen);
    if (code)
        return code;
    /* The engine's own check is the last word (length, range, finiteness). */
    for (int i = 0; i < r->nseqs; i++) {
        char why[200];
        if (model_check_seq(am->model, &r->seqs[i], why, sizeof why) != BALSA_OK)
            return fail(err, errlen, 400, "inputs[%d]: %s", i, why);
    }
    return 0;
}

int api_parse_json(const char *body, size_t len, cJSON **root, size_t *after, char *err,
                   size_t errlen)
{
    *root = NULL;
    if (len == 0)
        return fail(err, errlen, 400, "body: empty (expected a JSON object)");
    const char *end = NULL;
    *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!*root) {
        size_t off = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
        return fail(err, errlen, 400, "body: malformed JSON at byte %zu", off);
    }
    size_t off = (size_t)(end - body);
    while (off < len && (body[off] == ' ' || body[off] == '\n' || body[off] == '\r' ||
                         body[off] == '\t'))
        off++;
    *after = off;
    return 0;
}

int api_parse_request(const char *body, size_t len, const api_model *models, int nmodels,
                      const api_limits *lim, api_request *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->model = -1;
    cJSON *root;
    size_t off;
    int code = api_parse_json(body, len, &root, &off, err, errlen);
    if (code)
        return code;
    if (off != len)
        code = fail(err, errlen, 400, "body: unexpected text after the JSON value at byte %zu",
                    off);
    else
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

static void render_vector(jsonw *w, const float *v, int n, int k, int *idx, float *val)
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
    jsonw_str(w, "}");
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
    jsonw_str(&w, ",\"outputs\":[");
    for (int i = 0; i < r->nseqs; i++) {
        if (i)
            jsonw_str(&w, ",");
        const float *o = r->outputs[i];
        if (!r->all_steps) {
            render_vector(&w, o, n, r->top_k, idx, val);
            continue;
        }
        jsonw_str(&w, "[");
        for (int t = 0; t < r->seqs[i].len; t++) {
            if (t)
                jsonw_str(&w, ",");
            render_vector(&w, o + (size_t)t * (size_t)n, n, r->top_k, idx, val);
        }
        jsonw_str(&w, "]");
    }
    jsonw_str(&w, "]}\n");
    free(idx);
    free(val);
    return jsonw_take(&w, len);
}

char *api_render_models(const api_model *models, int nmodels, const int (*batching)[4],
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
                         "\"params_dense\":%lld,\"params_stored\":%lld,\"weight_bytes\":%zu",
                         in->input_kind == MODEL_INPUT_TOKENS ? "tokens" : "vectors",
                         in->vocab_size, in->input_size, in->output_size, in->hidden_size,
                         in->num_layers, in->bidirectional ? "true" : "false", in->bank,
                         in->sparsity, (unsigned)in->head < 3 ? heads[in->head] : "none",
                         in->params_dense, in->params_stored, in->weight_bytes);
        }
        jsonw_printf(&w,
                     ",\"batching\":{\"max_batch_size\":%d,\"max_queue_delay_us\":%d,"
                     "\"queue_capacity\":%d,\"request_timeout_ms\":%d}}",
                     batching[i][0], batching[i][1], batching[i][2], batching[i][3]);
    }
    jsonw_str(&w, "]}\n");
    return jsonw_take(&w, len);
}
