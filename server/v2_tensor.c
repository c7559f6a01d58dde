/* The KServe v2 tensor codec (see v2_tensor.h). Parsing is cJSON over the JSON part only
 * (length-bounded, end checked); tensor bytes of the binary extension are copied straight
 * from the body. Rendering writes JSON by hand (jsonw) and appends binary outputs raw, so a
 * large output costs a memcpy instead of number printing. The host is little-endian (x86),
 * the byte order the extension specifies, so tensors are copied as they are. */
#include "v2_tensor.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "jsonw.h"

enum { DT_INT32 = 0, DT_INT64, DT_FP32 };
static const char *const dt_names[] = {"INT32", "INT64", "FP32"};
static const size_t dt_size[] = {4, 8, 4};
static const char *const out_names[V2_NOUTS] = {"output", "top_k_indices", "top_k_values"};

/* A tensor's elements beyond this are refused before anything is allocated (the body
 * limit bounds real requests far below it). */
#define V2_MAX_ELEMS (1LL << 28)

/* One input tensor as decoded: integers widened to int64, floats as float, BYTES
 * elements as pointers into the request (the JSON tree or the binary data) with lengths. */
typedef struct {
    int present;
    int dtype;
    int rank;
    long long shape[3];
    long long count;
    int64_t *ints;
    float *floats;
    const char **strs;
    size_t *slens;
} v2_in;

/* The inputs a request may hold: the model's tensor, lengths, and text (models with a
 * vocabulary, in place of both). */
enum { IN_MAIN = 0, IN_LENGTHS, IN_TEXT, IN_COUNT };

/* Copies s into out for messages, printable ASCII only (a client's name may hold bytes
 * that would break the JSON of the error). */
static void printable(const char *s, char *out, size_t outlen)
{
    size_t i = 0;
    for (; s[i] && i + 1 < outlen; i++)
        out[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    out[i] = 0;
}

static int read_bool(const cJSON *v, const char *name, int *out, char *err, size_t errlen)
{
    if (!cJSON_IsBool(v))
        return api_fail(err, errlen, 400, "%s: must be true or false", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

static int read_int(const cJSON *v, const char *name, long long lo, long long hi, long long *out,
                    char *err, size_t errlen)
{
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < (double)lo || v->valuedouble > (double)hi)
        return api_fail(err, errlen, 400, "%s: must be an integer in [%lld, %lld]", name, lo, hi);
    *out = (long long)v->valuedouble;
    return 0;
}

/* Writes the numbers of a flat or nested JSON array into t (count elements expected);
 * returns 0, or 400 with a message. */
static int flatten(const cJSON *a, v2_in *t, long long *n, const char *name, char *err,
                   size_t errlen)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, a)
    {
        if (cJSON_IsArray(e)) {
            int code = flatten(e, t, n, name, err, errlen);
            if (code)
                return code;
            continue;
        }
        if (!cJSON_IsNumber(e))
            return api_fail(err, errlen, 400, "inputs.%s.data[%lld]: must be a number", name, *n);
        if (*n >= t->count)
            return api_fail(err, errlen, 400,
                            "inputs.%s.data: more than the %lld elements its shape holds", name,
                            t->count);
        double v = e->valuedouble;
        if (t->dtype == DT_FP32) {
            float f = (float)v;
            if (!isfinite(f))
                return api_fail(err, errlen, 400, "inputs.%s.data[%lld]: %.9g does not fit FP32",
                                name, *n, v);
            t->floats[*n] = f;
        } else {
            double lim = t->dtype == DT_INT32 ? 2147483648.0 : 9223372036854775808.0;
            if (v != floor(v) || v < -lim || v >= lim)
                return api_fail(err, errlen, 400, "inputs.%s.data[%lld]: %.9g is not an %s", name,
                                *n, v, dt_names[t->dtype]);
            t->ints[*n] = (int64_t)v;
        }
        (*n)++;
    }
    return 0;
}

/* Collects the strings of a flat or nested JSON array into t (count expected); returns 0,
 * or 400 with a message. */
static int flatten_strings(const cJSON *a, v2_in *t, long long *n, char *err, size_t errlen)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, a)
    {
        if (cJSON_IsArray(e)) {
            int code = flatten_strings(e, t, n, err, errlen);
            if (code)
                return code;
            continue;
        }
        if (!cJSON_IsString(e))
            return api_fail(err, errlen, 400, "inputs.text.data[%lld]: must be a string", *n);
        if (*n >= t->count)
            return api_fail(err, errlen, 400,
                            "inputs.text.data: more than the %lld elements its shape holds",
                            t->count);
        t->strs[*n] = e->valuestring;
        t->slens[*n] = strlen(e->valuestring);
        (*n)++;
    }
    return 0;
}

/* The BYTES elements of t from raw data src[0..bytes): each a 4-byte little-endian length
 * and that many bytes (Triton's layout); returns 0, or 400 with a message. */
static int read_bytes_elems(v2_in *t, const char *src, size_t bytes, char *err, size_t errlen)
{
    size_t at = 0;
    for (long long i = 0; i < t->count; i++) {
        uint32_t l;
        if (bytes - at < 4)
            return api_fail(err, errlen, 400,
                            "inputs.text: binary data ends inside element %lld's length", i);
        l = (uint32_t)(unsigned char)src[at] | (uint32_t)(unsigned char)src[at + 1] << 8 |
            (uint32_t)(unsigned char)src[at + 2] << 16 | (uint32_t)(unsigned char)src[at + 3] << 24;
        at += 4;
        if (l > bytes - at)
            return api_fail(err, errlen, 400,
                            "inputs.text: element %lld's %u bytes run past its binary data", i,
                            (unsigned)l);
        t->strs[i] = src + at;
        t->slens[i] = l;
        at += l;
    }
    if (at != bytes)
        return api_fail(err, errlen, 400,
                        "inputs.text: %zu bytes of binary data after its %lld elements",
                        bytes - at, t->count);
    return 0;
}

/* Reads a text input (BYTES, [batch] or [batch, 1]) whose shape is read: its strings from
 * data or from bin_size bytes of the binary data. */
static int read_text(v2_in *t, const cJSON *data, long long bin_size, const char *bin,
                     size_t binlen, size_t *bin_used, int have_header, size_t json_len, char *err,
                     size_t errlen)
{
    /* Nothing is allocated for a shape the body cannot hold: a raw element takes at least
     * its 4-byte length, a JSON one at least two characters. */
    if (bin_size >= 0 ? t->count > bin_size / 4 : (size_t)t->count > json_len / 2 + 1)
        return api_fail(err, errlen, 400,
                        "inputs.text.shape: holds %lld elements, more than the request's data can",
                        t->count);
    t->strs = calloc((size_t)t->count, sizeof *t->strs);
    t->slens = calloc((size_t)t->count, sizeof *t->slens);
    if (!t->strs || !t->slens)
        return api_fail(err, errlen, 500, "out of memory");
    if (bin_size >= 0) {
        if (!have_header)
            return api_fail(err, errlen, 400,
                            "inputs.text.parameters.binary_data_size: binary data needs the "
                            "Inference-Header-Content-Length header");
        if (data)
            return api_fail(err, errlen, 400,
                            "inputs.text: give either data or binary_data_size");
        if ((size_t)bin_size > binlen - *bin_used)
            return api_fail(err, errlen, 400,
                            "inputs.text: binary data runs past the end of the body (%zu bytes "
                            "after the header)",
                            binlen);
        const char *src = bin + *bin_used;
        *bin_used += (size_t)bin_size;
        return read_bytes_elems(t, src, (size_t)bin_size, err, errlen);
    }
    if (!cJSON_IsArray(data))
        return api_fail(err, errlen, 400,
                        "inputs.text.data: required (an array of strings), or parameters."
                        "binary_data_size");
    long long n = 0;
    int code = flatten_strings(data, t, &n, err, errlen);
    if (code)
        return code;
    if (n != t->count)
        return api_fail(err, errlen, 400,
                        "inputs.text.data: %lld elements, but the shape holds %lld", n, t->count);
    return 0;
}

/* Reads one element of "inputs" into ins[IN_MAIN] (the model's input), ins[IN_LENGTHS]
 * or ins[IN_TEXT]. */
static int parse_input(const cJSON *in, int idx, const model_info *info, v2_in *ins,
                       const char *bin, size_t binlen, size_t *bin_used, int have_header,
                       size_t json_len, char *err, size_t errlen)
{
    const char *main_name = info->input_kind == MODEL_INPUT_TOKENS ? "tokens" : "features";
    const int vocab = info->has_vocabulary && info->input_kind == MODEL_INPUT_TOKENS;
    if (!cJSON_IsObject(in))
        return api_fail(
            err, errlen, 400,
            "inputs[%d]: must be an object {\"name\", \"shape\", \"datatype\", \"data\"}", idx);
    const cJSON *f, *name = NULL, *shape = NULL, *dtype = NULL, *params = NULL, *data = NULL;
    cJSON_ArrayForEach(f, in)
    {
        const cJSON **slot = !strcmp(f->string, "name")         ? &name
                             : !strcmp(f->string, "shape")      ? &shape
                             : !strcmp(f->string, "datatype")   ? &dtype
                             : !strcmp(f->string, "parameters") ? &params
                             : !strcmp(f->string, "data")       ? &data
                                                                : NULL;
        char pf[64];
        printable(f->string, pf, sizeof pf);
        if (!slot)
            return api_fail(err, errlen, 400,
                            "inputs[%d].%s: unknown field (expected name, shape, datatype, "
                            "parameters, data)",
                            idx, pf);
        if (*slot)
            return api_fail(err, errlen, 400, "inputs[%d].%s: given twice", idx, pf);
        *slot = f;
    }
    const char *names = vocab ? "lengths, text" : "lengths";
    if (!cJSON_IsString(name))
        return api_fail(err, errlen, 400, "inputs[%d].name: required, a string (%s, %s)", idx,
                        main_name, names);
    int which = !strcmp(name->valuestring, main_name)           ? IN_MAIN
                : !strcmp(name->valuestring, "lengths")         ? IN_LENGTHS
                : vocab && !strcmp(name->valuestring, "text")   ? IN_TEXT
                                                                : -1;
    char pn[64];
    printable(name->valuestring, pn, sizeof pn);
    if (which < 0)
        return api_fail(err, errlen, 400,
                        "inputs[%d].name: \"%s\" is not an input of this model (inputs: %s, %s)",
                        idx, pn, main_name, names);
    v2_in *t = &ins[which];
    const char *nm = which == IN_LENGTHS ? "lengths" : which == IN_TEXT ? "text" : main_name;
    if (t->present)
        return api_fail(err, errlen, 400, "inputs.%s: given twice", nm);
    t->present = 1;

    if (!cJSON_IsString(dtype))
        return api_fail(err, errlen, 400, "inputs.%s.datatype: required, a string", nm);
    t->dtype = -1;
    for (int d = 0; d < 3; d++)
        if (!strcmp(dtype->valuestring, dt_names[d]))
            t->dtype = d;
    int want_float = which == IN_MAIN && info->input_kind == MODEL_INPUT_VECTORS;
    int ok_type = which == IN_TEXT ? !strcmp(dtype->valuestring, "BYTES")
                  : want_float     ? t->dtype == DT_FP32
                                   : t->dtype == DT_INT32 || t->dtype == DT_INT64;
    if (!ok_type) {
        char pd[32];
        printable(dtype->valuestring, pd, sizeof pd);
        return api_fail(err, errlen, 400, "inputs.%s.datatype: \"%s\" not accepted (use %s)", nm,
                        pd,
                        which == IN_TEXT ? "BYTES"
                        : want_float     ? "FP32"
                                         : "INT32 or INT64");
    }

    int one_dim = which != IN_MAIN; /* lengths and text: [batch] or [batch, 1] */
    int rank_lo = one_dim ? 1 : (want_float ? 3 : 2), rank_hi = one_dim ? 2 : rank_lo;
    if (!cJSON_IsArray(shape))
        return api_fail(err, errlen, 400, "inputs.%s.shape: required, an array of dimensions", nm);
    t->rank = 0;
    t->count = 1;
    const cJSON *d;
    cJSON_ArrayForEach(d, shape)
    {
        long long v;
        char field[64];
        snprintf(field, sizeof field, "inputs.%s.shape[%d]", nm, t->rank);
        if (t->rank >= rank_hi)
            return api_fail(err, errlen, 400, "inputs.%s.shape: must have %d dimensions%s", nm,
                            rank_lo, one_dim ? " ([batch] or [batch, 1])" : "");
        int code = read_int(d, field, 1, V2_MAX_ELEMS, &v, err, errlen);
        if (code)
            return code;
        t->shape[t->rank++] = v;
        t->count *= v;
        if (t->count > V2_MAX_ELEMS)
            return api_fail(err, errlen, 400, "inputs.%s.shape: more than %lld elements", nm,
                            V2_MAX_ELEMS);
    }
    if (t->rank < rank_lo)
        return api_fail(err, errlen, 400, "inputs.%s.shape: must have %d dimensions%s", nm, rank_lo,
                        one_dim ? " ([batch] or [batch, 1])"
                                : (want_float ? " [batch, steps, input_size]" : " [batch, steps]"));
    if (one_dim && t->rank == 2 && t->shape[1] != 1)
        return api_fail(err, errlen, 400, "inputs.%s.shape: must be [batch] or [batch, 1]", nm);
    if (want_float && t->shape[2] != info->input_size)
        return api_fail(err, errlen, 400,
                        "inputs.features.shape[2]: must be the input size %d, got %lld",
                        info->input_size, t->shape[2]);

    long long bin_size = -1;
    if (params) {
        if (!cJSON_IsObject(params))
            return api_fail(err, errlen, 400, "inputs.%s.parameters: must be an object", nm);
        const cJSON *p;
        cJSON_ArrayForEach(p, params)
        {
            if (strcmp(p->string, "binary_data_size") != 0)
                continue; /* v2 parameters are open-ended; others do not concern balsa */
            char field[64];
            snprintf(field, sizeof field, "inputs.%s.parameters.binary_data_size", nm);
            int code = read_int(p, field, 0, (long long)binlen, &bin_size, err, errlen);
            if (code)
                return code;
        }
    }
    if (which == IN_TEXT)
        return read_text(t, data, bin_size, bin, binlen, bin_used, have_header, json_len, err,
                         errlen);
    size_t bytes = (size_t)t->count * dt_size[t->dtype];
    /* Nothing is allocated for a shape the body cannot hold: raw data must be exactly
     * `bytes` long, and JSON needs at least two characters ("0,") per element. */
    if (bin_size >= 0 && (size_t)bin_size != bytes)
        return api_fail(err, errlen, 400,
                        "inputs.%s.parameters.binary_data_size: %lld bytes, but shape and "
                        "datatype make %zu",
                        nm, bin_size, bytes);
    if (bin_size < 0 && (size_t)t->count > json_len / 2 + 1)
        return api_fail(err, errlen, 400,
                        "inputs.%s.shape: holds %lld elements, more than the request's data can",
                        nm, t->count);
    if (t->dtype == DT_FP32)
        t->floats = malloc((size_t)t->count * sizeof *t->floats);
    else
        t->ints = malloc((size_t)t->count * sizeof *t->ints);
    if (!t->floats && !t->ints)
        return api_fail(err, errlen, 500, "out of memory");
    if (bin_size >= 0) {
        if (!have_header)
            return api_fail(err, errlen, 400,
                            "inputs.%s.parameters.binary_data_size: binary data needs the "
                            "Inference-Header-Content-Length header",
                            nm);
        if (data)
            return api_fail(err, errlen, 400, "inputs.%s: give either data or binary_data_size",
                            nm);
        if (*bin_used + bytes > binlen)
            return api_fail(err, errlen, 400,
                            "inputs.%s: binary data runs past the end of the body (%zu bytes after "
                            "the header)",
                            nm, binlen);
        const char *src = bin + *bin_used;
        *bin_used += bytes;
        if (t->dtype == DT_FP32) {
            memcpy(t->floats, src, bytes);
            for (long long i = 0; i < t->count; i++)
                if (!isfinite(t->floats[i]))
                    return api_fail(err, errlen, 400, "inputs.%s: element %lld is not finite", nm,
                                    i);
        } else if (t->dtype == DT_INT64) {
            memcpy(t->ints, src, bytes);
        } else {
            for (long long i = 0; i < t->count; i++) {
                int32_t v;
                memcpy(&v, src + 4 * i, 4);
                t->ints[i] = v;
            }
        }
        return 0;
    }
    if (!cJSON_IsArray(data))
        return api_fail(err, errlen, 400,
                        "inputs.%s.data: required (an array of numbers), or parameters."
                        "binary_data_size",
                        nm);
    long long n = 0;
    int code = flatten(data, t, &n, nm, err, errlen);
    if (code)
        return code;
    if (n != t->count)
        return api_fail(err, errlen, 400, "inputs.%s.data: %lld elements, but the shape holds %lld",
                        nm, n, t->count);
    return 0;
}

static int parse_outputs(const cJSON *outputs, int binary_default, v2_request *v, char *err,
                         size_t errlen)
{
    if (!cJSON_IsArray(outputs))
        return api_fail(err, errlen, 400,
                        "outputs: must be an array of {\"name\", \"parameters\"}");
    int i = 0;
    const cJSON *o;
    cJSON_ArrayForEach(o, outputs)
    {
        if (!cJSON_IsObject(o))
            return api_fail(err, errlen, 400, "outputs[%d]: must be an object {\"name\"}", i);
        const cJSON *f, *name = NULL, *params = NULL;
        cJSON_ArrayForEach(f, o)
        {
            if (!strcmp(f->string, "name"))
                name = f;
            else if (!strcmp(f->string, "parameters"))
                params = f;
            else {
                char pf[64];
                printable(f->string, pf, sizeof pf);
                return api_fail(err, errlen, 400,
                                "outputs[%d].%s: unknown field (expected name, parameters)", i, pf);
            }
        }
        if (!cJSON_IsString(name))
            return api_fail(err, errlen, 400, "outputs[%d].name: required, a string", i);
        int which = -1;
        for (int k = 0; k < V2_NOUTS; k++)
            if (!strcmp(name->valuestring, out_names[k]))
                which = k;
        char pn[64];
        printable(name->valuestring, pn, sizeof pn);
        if (which < 0)
            return api_fail(err, errlen, 400,
                            "outputs[%d].name: \"%s\" is not an output (output, top_k_indices, "
                            "top_k_values)",
                            i, pn);
        for (int k = 0; k < v->nout; k++)
            if (v->order[k] == which)
                return api_fail(err, errlen, 400, "outputs: \"%s\" asked for twice", pn);
        v->binary[which] = binary_default;
        if (params) {
            if (!cJSON_IsObject(params))
                return api_fail(err, errlen, 400, "outputs[%d].parameters: must be an object", i);
            const cJSON *p;
            cJSON_ArrayForEach(p, params)
            {
                if (!strcmp(p->string, "binary_data")) {
                    int code = read_bool(p, "outputs.parameters.binary_data", &v->binary[which],
                                         err, errlen);
                    if (code)
                        return code;
                } else if (!strcmp(p->string, "classification")) {
                    return api_fail(err, errlen, 400,
                                    "outputs[%d].parameters.classification: not supported (use the "
                                    "top_k parameter)",
                                    i);
                }
            }
        }
        v->order[v->nout++] = which;
        i++;
    }
    if (v->nout == 0)
        return api_fail(err, errlen, 400, "outputs: must name at least one output when given");
    return 0;
}

/* Encodes the strings of a text input by the model's vocabulary into the tokens and
 * lengths inputs the client could have sent instead (rows padded with token 0). Returns
 * 0, or 400 naming the string and the character no token matches. */
static int text_to_tokens(const api_model *am, const v2_in *text, v2_in *tok, v2_in *len,
                          const api_limits *lim, char *err, size_t errlen)
{
    long long batch = text->count, steps = 0, total = 0;
    size_t bytes = 0;
    for (long long i = 0; i < batch; i++)
        bytes += text->slens[i];
    int32_t *ids = malloc((bytes ? bytes : 1) * sizeof *ids);
    len->ints = malloc((size_t)batch * sizeof *len->ints);
    if (!ids || !len->ints) {
        free(ids);
        return api_fail(err, errlen, 500, "out of memory");
    }
    size_t at = 0;
    for (long long i = 0; i < batch; i++) {
        char why[200];
        int n = 0;
        if (model_encode_text(am->model, text->strs[i], text->slens[i], ids + at, &n, why,
                              sizeof why) != BALSA_OK) {
            free(ids);
            return api_fail(err, errlen, 400, "inputs.text[%lld]: %s", i, why);
        }
        len->ints[i] = n;
        at += (size_t)n;
        total += n;
        if (n > steps)
            steps = n;
    }
    /* The padded [batch, steps] rows are built before the step limit is checked on the
     * lengths: bound them first (one long string among many short ones). */
    if (total > lim->max_request_steps || batch * steps > 16LL * lim->max_request_steps) {
        free(ids);
        return api_fail(err, errlen, 400,
                        "inputs.text: %lld tokens in %lld strings (the longest %lld), more than "
                        "the limit of %d steps%s",
                        total, batch, steps, lim->max_request_steps,
                        total > lim->max_request_steps ? "" : " once padded to the longest");
    }
    tok->ints = calloc((size_t)(batch * steps), sizeof *tok->ints);
    if (!tok->ints) {
        free(ids);
        return api_fail(err, errlen, 500, "out of memory");
    }
    at = 0;
    for (long long i = 0; i < batch; i++)
        for (long long k = 0; k < len->ints[i]; k++)
            tok->ints[i * steps + k] = ids[at++];
    free(ids);
    tok->present = len->present = 1;
    tok->dtype = len->dtype = DT_INT64;
    tok->rank = 2;
    tok->shape[0] = len->shape[0] = batch;
    tok->shape[1] = steps;
    tok->count = batch * steps;
    len->rank = 1;
    len->count = batch;
    return 0;
}

static int parse_root(const cJSON *root, size_t json_len, const char *bin, size_t binlen,
                      int have_header,
                      const api_model *am, const api_limits *lim, api_request *r,
                      v2_request *v, v2_in *ins, char *err, size_t errlen)
{
    if (!cJSON_IsObject(root))
        return api_fail(err, errlen, 400, "body: must be a JSON object {\"inputs\", ...}");
    const cJSON *f, *id = NULL, *params = NULL, *inputs = NULL, *outputs = NULL;
    cJSON_ArrayForEach(f, root)
    {
        const cJSON **slot = !strcmp(f->string, "id")           ? &id
                             : !strcmp(f->string, "parameters") ? &params
                             : !strcmp(f->string, "inputs")     ? &inputs
                             : !strcmp(f->string, "outputs")    ? &outputs
                                                                : NULL;
        char pf[64];
        printable(f->string, pf, sizeof pf);
        if (!slot)
            return api_fail(err, errlen, 400,
                            "%s: unknown field (expected id, parameters, inputs, outputs)", pf);
        if (*slot)
            return api_fail(err, errlen, 400, "%s: given twice", pf);
        *slot = f;
    }
    if (id) {
        if (!cJSON_IsString(id) || strlen(id->valuestring) >= sizeof v->id)
            return api_fail(err, errlen, 400, "id: must be a string of at most %zu bytes",
                            sizeof v->id - 1);
        snprintf(v->id, sizeof v->id, "%s", id->valuestring);
        v->has_id = 1;
    }
    if (!am->info)
        return api_fail(err, errlen, 503, "model: \"%s\" is still loading", am->name);
    const model_info *info = am->info;

    int binary_default = 0;
    long long top_k = 0, timeout = -1, timeout_us = -1;
    const cJSON *seq_id = NULL, *seq_start = NULL, *seq_end = NULL;
    if (params) {
        if (!cJSON_IsObject(params))
            return api_fail(err, errlen, 400, "parameters: must be an object");
        const cJSON *p;
        cJSON_ArrayForEach(p, params)
        {
            int code = 0;
            if (!strcmp(p->string, "output")) {
                if (cJSON_IsString(p) && !strcmp(p->valuestring, "last"))
                    r->all_steps = 0;
                else if (cJSON_IsString(p) && !strcmp(p->valuestring, "all"))
                    r->all_steps = 1;
                else
                    return api_fail(err, errlen, 400,
                                    "parameters.output: must be \"last\" or \"all\"");
            } else if (!strcmp(p->string, "top_k")) {
                code = read_int(p, "parameters.top_k", 1, info->output_size, &top_k, err, errlen);
            } else if (!strcmp(p->string, "timeout_ms")) {
                code = read_int(p, "parameters.timeout_ms", 1, 3600000, &timeout, err, errlen);
            } else if (!strcmp(p->string, "timeout")) {
                /* Triton's (tritonclient's infer(timeout=...)): microseconds. */
                code = read_int(p, "parameters.timeout", 1, 3600000000LL, &timeout_us, err,
                                errlen);
            } else if (!strcmp(p->string, "binary_data_output")) {
                code = read_bool(p, "parameters.binary_data_output", &binary_default, err,
                                 errlen);
            } else if (!strcmp(p->string, "sequence_id")) {
                seq_id = p;
            } else if (!strcmp(p->string, "sequence_start")) {
                seq_start = p;
            } else if (!strcmp(p->string, "sequence_end")) {
                seq_end = p;
            }
            if (code)
                return code;
        }
    }
    if (timeout_us > 0 && timeout > 0)
        return api_fail(err, errlen, 400,
                        "parameters.timeout: give timeout (microseconds) or timeout_ms, not both");
    if (timeout_us > 0)
        timeout = (timeout_us + 999) / 1000; /* a deadline never earlier than asked */
    r->timeout_ms = (int)timeout;

    if (!cJSON_IsArray(inputs))
        return api_fail(err, errlen, 400, "inputs: required, an array of tensors");
    size_t bin_used = 0;
    int i = 0;
    const cJSON *in;
    cJSON_ArrayForEach(in, inputs)
    {
        int code = parse_input(in, i++, info, ins, bin, binlen, &bin_used, have_header,
                               json_len, err, errlen);
        if (code)
            return code;
    }
    const char *main_name = info->input_kind == MODEL_INPUT_TOKENS ? "tokens" : "features";
    if (bin_used != binlen)
        return api_fail(err, errlen, 400,
                        "body: %zu bytes of binary data after the header, but the inputs' "
                        "binary_data_size add up to %zu",
                        binlen, bin_used);
    if (ins[IN_TEXT].present) {
        if (ins[IN_MAIN].present || ins[IN_LENGTHS].present)
            return api_fail(err, errlen, 400,
                            "inputs.text: give either text or tokens (with lengths), not both");
        int code = text_to_tokens(am, &ins[IN_TEXT], &ins[IN_MAIN], &ins[IN_LENGTHS], lim, err,
                                  errlen);
        if (code)
            return code;
    }
    if (!ins[IN_MAIN].present)
        return api_fail(err, errlen, 400, "inputs: the tensor \"%s\" is required%s", main_name,
                        info->has_vocabulary && info->input_kind == MODEL_INPUT_TOKENS
                            ? " (or \"text\")"
                            : "");
    v->batch = (int)ins[0].shape[0];
    v->steps = (int)ins[0].shape[1];
    if (ins[1].present && ins[1].shape[0] != v->batch)
        return api_fail(err, errlen, 400,
                        "inputs.lengths.shape[0]: must equal the batch size %d, got %lld", v->batch,
                        ins[1].shape[0]);

    if (outputs) {
        int code = parse_outputs(outputs, binary_default, v, err, errlen);
        if (code)
            return code;
    } else {
        v->order[v->nout++] = V2_OUT_OUTPUT;
        if (top_k) {
            v->order[v->nout++] = V2_OUT_TOPK_INDICES;
            v->order[v->nout++] = V2_OUT_TOPK_VALUES;
        }
        for (int k = 0; k < V2_NOUTS; k++)
            v->binary[k] = binary_default;
    }
    for (int k = 0; k < v->nout; k++)
        if (v->order[k] != V2_OUT_OUTPUT && !top_k)
            top_k = 1;
    r->top_k = (int)top_k;

    /* Sequences: row i of the input, lengths[i] steps long. */
    r->nseqs = v->batch;
    r->total_steps = 0;
    for (int b = 0; b < v->batch; b++) {
        long long l = ins[1].present ? ins[1].ints[b] : v->steps;
        if (l < 1 || l > v->steps)
            return api_fail(err, errlen, 400, "inputs.lengths[%d]: %lld is not in [1, %d] (steps)",
                            b, l, v->steps);
        r->total_steps += l;
    }
    if (r->total_steps > lim->max_request_steps)
        return api_fail(err, errlen, 400, "inputs: %ld time steps in all, more than the limit %d",
                        r->total_steps, lim->max_request_steps);
    int code = api_parse_sequence(seq_id, seq_start, seq_end, "parameters.", am, r, err,
                                  errlen);
    if (code)
        return code;
    long long vecs = r->all_steps ? (long long)v->batch * v->steps : v->batch;
    long long per_vec = 0;
    for (int k = 0; k < v->nout; k++)
        per_vec += v->order[k] == V2_OUT_OUTPUT ? info->output_size : top_k;
    if (vecs * per_vec > lim->max_output_values)
        return api_fail(err, errlen, 400,
                        "outputs: the response would carry %lld values, more than the limit %ld "
                        "(use fewer steps, \"output\": \"last\" or top_k outputs)",
                        vecs * per_vec, lim->max_output_values);
    r->seqs = calloc((size_t)v->batch, sizeof *r->seqs);
    if (!r->seqs)
        return api_fail(err, errlen, 500, "out of memory");
    size_t rows = (size_t)v->batch * (size_t)v->steps;
    if (info->input_kind == MODEL_INPUT_TOKENS) {
        r->tokens = malloc(rows * sizeof *r->tokens);
        if (!r->tokens)
            return api_fail(err, errlen, 500, "out of memory");
        for (size_t k = 0; k < rows; k++) {
            int64_t t = ins[0].ints[k];
            int b = (int)(k / (size_t)v->steps), s = (int)(k % (size_t)v->steps);
            /* Padding past a sequence's length is never read: any value is allowed there. */
            if (s < (ins[1].present ? ins[1].ints[b] : v->steps) &&
                (t < 0 || t >= info->vocab_size))
                return api_fail(err, errlen, 400,
                                "inputs.tokens[%d][%d]: token id %lld out of range [0, %d)", b, s,
                                (long long)t, info->vocab_size);
            r->tokens[k] = (int32_t)t;
        }
    } else {
        r->features = ins[0].floats;
        ins[0].floats = NULL;
    }
    size_t row_elems = info->input_kind == MODEL_INPUT_TOKENS ? 1 : (size_t)info->input_size;
    for (int b = 0; b < v->batch; b++) {
        engine_seq *q = &r->seqs[b];
        q->len = (int)(ins[1].present ? ins[1].ints[b] : v->steps);
        if (r->tokens)
            q->tokens = r->tokens + (size_t)b * (size_t)v->steps;
        else
            q->features = r->features + (size_t)b * (size_t)v->steps * row_elems;
        char why[200];
        if (model_check_seq(am->model, q, why, sizeof why) != BALSA_OK)
            return api_fail(err, errlen, 400, "inputs.%s[%d]: %s", main_name, b, why);
    }
    return 0;
}

int v2_parse_infer(const char *body, size_t len, long header_len, const api_model *models,
                   int model, const api_limits *lim, api_request *r, v2_request *v, char *err,
                   size_t errlen)
{
    memset(r, 0, sizeof *r);
    memset(v, 0, sizeof *v);
    r->model = model;
    r->timeout_ms = -1;
    if (header_len > (long)len)
        return api_fail(err, errlen, 400,
                        "Inference-Header-Content-Length: %ld is more than the body's %zu bytes",
                        header_len, len);
    size_t jlen = header_len >= 0 ? (size_t)header_len : len;
    cJSON *root;
    int code = api_parse_json(body, jlen, &root,
                              header_len < 0
                                  ? " (binary data needs Inference-Header-Content-Length)"
                                  : NULL,
                              err, errlen);
    if (code)
        return code;
    v2_in ins[IN_COUNT];
    memset(ins, 0, sizeof ins);
    code = parse_root(root, jlen, body + jlen, len - jlen, header_len >= 0, &models[model], lim, r,
                      v, ins, err, errlen);
    cJSON_Delete(root);
    for (int k = 0; k < IN_COUNT; k++) {
        free(ins[k].ints);
        free(ins[k].floats);
        free(ins[k].strs);
        free(ins[k].slens);
    }
    if (code) {
        api_request_free(r);
        r->model = model;
    }
    return code;
}

/* ------------------------------------------------------------------ rendering */

/* The rows of output vectors, as the response lays them out: each sequence's last vector,
 * or `steps` vectors per sequence with NULL for the padding past its length. */
static const float *row_vec(const api_request *r, const v2_request *v, int out_size, long row)
{
    if (!r->all_steps)
        return r->outputs[row];
    int b = (int)(row / v->steps), t = (int)(row % v->steps);
    return t < r->seqs[b].len ? r->outputs[b] + (size_t)t * (size_t)out_size : NULL;
}

static void render_shape(jsonw *w, const api_request *r, const v2_request *v, int last)
{
    if (r->all_steps)
        jsonw_printf(w, "[%d,%d,%d]", v->batch, v->steps, last);
    else
        jsonw_printf(w, "[%d,%d]", v->batch, last);
}

char *v2_render_infer(const api_request *r, const v2_request *v, const char *model_name,
                      const model_info *info, size_t *len, size_t *json_len)
{
    int n = info->output_size, k = r->top_k;
    long rows = r->all_steps ? (long)v->batch * v->steps : v->batch;
    int32_t *idx = NULL;
    float *val = NULL;
    if (k) {
        idx = malloc((size_t)rows * (size_t)k * sizeof *idx);
        val = malloc((size_t)rows * (size_t)k * sizeof *val);
        if (!idx || !val) {
            free(idx);
            free(val);
            return NULL;
        }
        int *ti = malloc((size_t)k * sizeof *ti);
        if (!ti) {
            free(idx);
            free(val);
            return NULL;
        }
        for (long row = 0; row < rows; row++) {
            const float *o = row_vec(r, v, n, row);
            if (!o) {
                for (int j = 0; j < k; j++) {
                    idx[row * k + j] = -1;
                    val[row * k + j] = 0;
                }
                continue;
            }
            engine_topk(o, n, k, ti, val + row * k);
            for (int j = 0; j < k; j++)
                idx[row * k + j] = ti[j];
        }
        free(ti);
    }

    jsonw w;
    jsonw_init(&w);
    jsonw_str(&w, "{\"model_name\":");
    jsonw_quoted(&w, model_name);
    jsonw_str(&w, ",\"model_version\":\"1\"");
    if (v->has_id) {
        jsonw_str(&w, ",\"id\":");
        jsonw_quoted(&w, v->id);
    }
    jsonw_str(&w, ",\"outputs\":[");
    for (int o = 0; o < v->nout; o++) {
        int which = v->order[o];
        int width = which == V2_OUT_OUTPUT ? n : k;
        size_t bytes = (size_t)rows * (size_t)width * 4;
        jsonw_str(&w, o ? ",{\"name\":\"" : "{\"name\":\"");
        jsonw_str(&w, out_names[which]);
        jsonw_str(&w, which == V2_OUT_TOPK_INDICES ? "\",\"datatype\":\"INT32\",\"shape\":"
                                                   : "\",\"datatype\":\"FP32\",\"shape\":");
        render_shape(&w, r, v, width);
        if (v->binary[which]) {
            jsonw_printf(&w, ",\"parameters\":{\"binary_data_size\":%zu}}", bytes);
            continue;
        }
        jsonw_str(&w, ",\"data\":[");
        for (long row = 0; row < rows; row++) {
            if (row)
                jsonw_raw(&w, ",", 1);
            if (which == V2_OUT_TOPK_INDICES) {
                for (int j = 0; j < k; j++)
                    jsonw_printf(&w, j ? ",%d" : "%d", (int)idx[row * k + j]);
                continue;
            }
            const float *src = which == V2_OUT_TOPK_VALUES ? val + row * k : row_vec(r, v, n, row);
            for (int j = 0; j < width; j++) {
                if (j)
                    jsonw_raw(&w, ",", 1);
                if (src)
                    jsonw_float(&w, src[j]);
                else
                    jsonw_raw(&w, "0", 1);
            }
        }
        jsonw_str(&w, "]}");
    }
    jsonw_str(&w, "]}");
    *json_len = w.len;
    for (int o = 0; o < v->nout; o++) {
        int which = v->order[o];
        if (!v->binary[which])
            continue;
        if (which == V2_OUT_TOPK_INDICES) {
            jsonw_raw(&w, (const char *)idx, (size_t)rows * (size_t)k * 4);
        } else if (which == V2_OUT_TOPK_VALUES) {
            jsonw_raw(&w, (const char *)val, (size_t)rows * (size_t)k * 4);
        } else if (!r->all_steps) {
            for (long row = 0; row < rows; row++)
                jsonw_raw(&w, (const char *)r->outputs[row], (size_t)n * 4);
        } else {
            /* One sequence's steps are contiguous; the padding rows are zeros. */
            for (int b = 0; b < v->batch; b++) {
                size_t have = (size_t)r->seqs[b].len * (size_t)n * 4;
                size_t pad = (size_t)(v->steps - r->seqs[b].len) * (size_t)n * 4;
                jsonw_raw(&w, (const char *)r->outputs[b], have);
                if (pad) {
                    char *z = calloc(1, pad);
                    if (!z) {
                        w.oom = 1;
                        break;
                    }
                    jsonw_raw(&w, z, pad);
                    free(z);
                }
            }
        }
    }
    free(idx);
    free(val);
    return jsonw_take(&w, len);
}
