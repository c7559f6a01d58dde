/* The balsa model file: description JSON <-> model_spec, file <-> model_host, and
 * model_load. See models/FORMAT.md for the format and model_file.h for the contracts. */
#include "model_file.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_text.h"
#include "safetensors.h"

#define BAD(...)                                                                          \
    do {                                                                                  \
        snprintf(err, errlen, __VA_ARGS__);                                               \
        return BALSA_ERR_FORMAT;                                                          \
    } while (0)

/* ---------------------------------------------------------------- description */

/* An integer field: *out = default when absent (and not required). */
static int get_int(const cJSON *o, const char *key, int required, int dflt, int lo, int hi,
                   int *out, char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) {
        if (required) {
            snprintf(err, errlen, "description: \"%s\" missing", key);
            return 0;
        }
        *out = dflt;
        return 1;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < lo || v->valuedouble > hi) {
        snprintf(err, errlen, "description: \"%s\" must be an integer in %d..%d", key, lo, hi);
        return 0;
    }
    *out = (int)v->valuedouble;
    return 1;
}

static int get_bool(const cJSON *o, const char *key, int dflt, int *out, char *err,
                    size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) {
        *out = dflt;
        return 1;
    }
    if (!cJSON_IsBool(v)) {
        snprintf(err, errlen, "description: \"%s\" must be true or false", key);
        return 0;
    }
    *out = cJSON_IsTrue(v);
    return 1;
}

static const char *get_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int key_known(const char *k, const char *const *known)
{
    for (; *known; known++)
        if (strcmp(k, *known) == 0)
            return 1;
    return 0;
}

static balsa_status parse_fc(const cJSON *fc, model_spec *s, char *err, size_t errlen)
{
    if (!fc)
        return BALSA_OK;
    if (!cJSON_IsArray(fc))
        BAD("description: \"fc\" must be an array of layers");
    const cJSON *e;
    cJSON_ArrayForEach(e, fc)
    {
        if (s->n_fc == MODEL_MAX_FC)
            BAD("description: more than %d fc layers", MODEL_MAX_FC);
        model_fc_spec *f = &s->fc[s->n_fc];
        if (!cJSON_IsObject(e))
            BAD("description: fc.%d is not an object", s->n_fc);
        if (!get_int(e, "out", 1, 0, 1, MODEL_MAX_WIDTH, &f->out, err, errlen) ||
            !get_bool(e, "bias", 1, &f->bias, err, errlen))
            return BALSA_ERR_FORMAT;
        const char *act = get_str(e, "activation");
        int a = act ? balsa_act_parse(act) : 0;
        if (a < 0)
            BAD("description: fc.%d activation \"%.32s\" unknown (none, relu, tanh, sigmoid)",
                s->n_fc, act);
        f->act = (balsa_act)a;
        s->n_fc++;
    }
    return BALSA_OK;
}

static balsa_status parse_layouts(const cJSON *mats, int need, const model_spec *s,
                                  model_layout *layouts, char *err, size_t errlen)
{
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int n = model_tensor_list(s, refs);
    if (layouts)
        memset(layouts, 0, sizeof(model_layout) * MODEL_MAX_TENSORS);
    if (!mats) {
        if (need)
            BAD("description: \"matrices\" missing");
        return BALSA_OK;
    }
    if (!cJSON_IsObject(mats))
        BAD("description: \"matrices\" must be an object");
    const cJSON *e;
    cJSON_ArrayForEach(e, mats)
    {
        int i = 0;
        while (i < n && (strcmp(refs[i].name, e->string) != 0 || refs[i].cols == 0 ||
                         refs[i].kind == MODEL_T_EMBEDDING))
            i++;
        if (i == n)
            BAD("description: matrices names \"%.40s\", not a weight matrix of this network",
                e->string);
        const char *lay = get_str(e, "layout");
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
        if (!lay || (strcmp(lay, "dense") != 0 && strcmp(lay, "balanced") != 0))
            BAD("description: matrices.%s: layout must be \"dense\" or \"balanced\"",
                refs[i].name);
        if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) != 2 ||
            cJSON_GetArrayItem(shape, 0)->valuedouble != refs[i].rows ||
            cJSON_GetArrayItem(shape, 1)->valuedouble != refs[i].cols)
            BAD("description: matrices.%s: shape must be [%d, %d] for this network",
                refs[i].name, refs[i].rows, refs[i].cols);
        model_layout L = {0, 0, 0};
        if (strcmp(lay, "balanced") == 0) {
            L.sparse = 1;
            if (!get_int(e, "bank", 1, 0, BSMAT_MIN_BANK, BSMAT_MAX_BANK, &L.bank, err,
                         errlen) ||
                !get_int(e, "k", 1, 0, 1, L.bank, &L.k, err, errlen)) {
                char why[200];
                snprintf(why, sizeof why, "%s", err);
                BAD("matrices.%s: %s", refs[i].name, why);
            }
        }
        if (layouts)
            layouts[i] = L;
    }
    for (int i = 0; need && i < n; i++)
        if (refs[i].cols > 0 && refs[i].kind != MODEL_T_EMBEDDING &&
            !cJSON_GetObjectItemCaseSensitive(mats, refs[i].name))
            BAD("description: matrices has no entry for tensor %s", refs[i].name);
    return BALSA_OK;
}

/* Reads "vocabulary" (absent: none) into v: an array of vocab_size strings. */
static balsa_status parse_vocab(const cJSON *a, const model_spec *s, model_vocab *v, char *err,
                                size_t errlen)
{
    if (!a)
        return BALSA_OK;
    if (s->input_kind != MODEL_INPUT_TOKENS)
        BAD("description: vocabulary is for token-input models only");
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != s->vocab_size)
        BAD("description: vocabulary must be an array of vocab_size (%d) strings, one per "
            "token id", s->vocab_size);
    const char **toks = malloc(sizeof *toks * (size_t)s->vocab_size);
    if (!toks)
        BAD("description: out of memory for the vocabulary");
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a)
    {
        if (!cJSON_IsString(e)) {
            free(toks);
            BAD("description: vocabulary[%d] must be a string", i);
        }
        toks[i++] = e->valuestring;
    }
    char why[200];
    balsa_status st = model_vocab_set(v, toks, i, why, sizeof why);
    free(toks);
    if (st == BALSA_ERR_OOM)
        BAD("description: out of memory for the vocabulary");
    if (st != BALSA_OK)
        BAD("description: %s", why);
    return BALSA_OK;
}

balsa_status model_desc_parse(const char *json, size_t len, int need_layouts, model_spec *s,
                              model_layout *layouts, model_vocab *vocab, char *err,
                              size_t errlen)
{
    static const char *const known[] = {
        "format_version", "name", "input", "vocab_size", "input_size", "hidden_size",
        "num_layers", "bidirectional", "lstm_bias", "fc", "head", "bank", "matrices",
        "vocabulary", "comment", NULL};
    memset(s, 0, sizeof *s);
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!o)
        BAD("description is not valid JSON");
    balsa_status st = BALSA_ERR_FORMAT;
    int v = 0;
    const char *str;
    for (const char *p = end; p < json + len; p++)
        if (*p != ' ' && *p != '\n' && *p != '\t' && *p != '\r' && *p != 0) {
            snprintf(err, errlen, "description: unexpected bytes after the JSON object");
            goto out;
        }
    if (json_text_refuse(json, (size_t)(end - json), "description",
                         "a name or text would end there", err, errlen))
        goto out;
    if (!cJSON_IsObject(o)) {
        snprintf(err, errlen, "description is not a JSON object");
        goto out;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, o)
    {
        if (!key_known(e->string, known)) {
            snprintf(err, errlen, "description: unknown key \"%.40s\"", e->string);
            goto out;
        }
    }
    if (!get_int(o, "format_version", need_layouts, MODEL_FORMAT_VERSION, 1, 1000, &v, err,
                 errlen))
        goto out;
    if (v != MODEL_FORMAT_VERSION) {
        snprintf(err, errlen, "description: format_version %d, this balsa reads version %d",
                 v, MODEL_FORMAT_VERSION);
        goto out;
    }
    str = get_str(o, "name");
    snprintf(s->name, sizeof s->name, "%s", str ? str : "");
    str = get_str(o, "input");
    if (!str || model_input_kind_parse(str) < 0) {
        snprintf(err, errlen, "description: \"input\" must be \"tokens\" or \"vectors\"");
        goto out;
    }
    s->input_kind = (model_input_kind)model_input_kind_parse(str);
    if (!get_int(o, "vocab_size", s->input_kind == MODEL_INPUT_TOKENS, 0, 0, MODEL_MAX_VOCAB,
                 &s->vocab_size, err, errlen) ||
        !get_int(o, "input_size", 1, 0, 1, MODEL_MAX_WIDTH, &s->input_size, err, errlen) ||
        !get_int(o, "hidden_size", 0, 0, 0, MODEL_MAX_WIDTH / 4, &s->hidden_size, err,
                 errlen) ||
        !get_int(o, "num_layers", 0, s->hidden_size > 0 ? 1 : 0, 0, MODEL_MAX_LAYERS,
                 &s->num_layers, err, errlen) ||
        !get_bool(o, "bidirectional", 0, &s->bidirectional, err, errlen) ||
        !get_bool(o, "lstm_bias", s->hidden_size > 0, &s->lstm_bias, err, errlen) ||
        !get_int(o, "bank", 0, 0, 0, BSMAT_MAX_BANK, &v, err, errlen))
        goto out;
    str = get_str(o, "head");
    if (cJSON_GetObjectItemCaseSensitive(o, "head") && (!str || model_head_parse(str) < 0)) {
        snprintf(err, errlen, "description: \"head\" must be none, softmax or log_softmax");
        goto out;
    }
    s->head = str ? (model_head)model_head_parse(str) : MODEL_HEAD_NONE;
    if (parse_fc(cJSON_GetObjectItemCaseSensitive(o, "fc"), s, err, errlen) != BALSA_OK ||
        model_spec_check(s, err, errlen) != BALSA_OK ||
        parse_layouts(cJSON_GetObjectItemCaseSensitive(o, "matrices"), need_layouts, s,
                      layouts, err, errlen) != BALSA_OK ||
        (vocab && parse_vocab(cJSON_GetObjectItemCaseSensitive(o, "vocabulary"), s, vocab, err,
                              errlen) != BALSA_OK))
        goto out;
    st = BALSA_OK;
out:
    cJSON_Delete(o);
    return st;
}

char *model_desc_print(const model_spec *s, const model_layout *layouts,
                       const model_vocab *vocab)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "format_version", MODEL_FORMAT_VERSION);
    cJSON_AddStringToObject(o, "name", s->name);
    cJSON_AddStringToObject(o, "input", model_input_kind_str(s->input_kind));
    if (s->input_kind == MODEL_INPUT_TOKENS)
        cJSON_AddNumberToObject(o, "vocab_size", s->vocab_size);
    cJSON_AddNumberToObject(o, "input_size", s->input_size);
    if (s->hidden_size > 0) {
        cJSON_AddNumberToObject(o, "hidden_size", s->hidden_size);
        cJSON_AddNumberToObject(o, "num_layers", s->num_layers);
        cJSON_AddBoolToObject(o, "bidirectional", s->bidirectional);
        cJSON_AddBoolToObject(o, "lstm_bias", s->lstm_bias);
    }
    cJSON *fc = cJSON_AddArrayToObject(o, "fc");
    for (int i = 0; fc && i < s->n_fc; i++) {
        cJSON *f = cJSON_CreateObject();
        cJSON_AddNumberToObject(f, "out", s->fc[i].out);
        cJSON_AddStringToObject(f, "activation", balsa_act_str(s->fc[i].act));
        cJSON_AddBoolToObject(f, "bias", s->fc[i].bias);
        cJSON_AddItemToArray(fc, f);
    }
    cJSON_AddStringToObject(o, "head", model_head_str(s->head));
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int n = model_tensor_list(s, refs);
    int bank = 0;
    for (int i = 0; layouts && i < n; i++)
        if (layouts[i].sparse && !bank)
            bank = layouts[i].bank;
    if (bank)
        cJSON_AddNumberToObject(o, "bank", bank);
    cJSON *mats = layouts ? cJSON_AddObjectToObject(o, "matrices") : NULL;
    for (int i = 0; mats && i < n; i++) {
        if (refs[i].cols == 0 || refs[i].kind == MODEL_T_EMBEDDING)
            continue;
        cJSON *m = cJSON_AddObjectToObject(mats, refs[i].name);
        if (!m)
            break;
        cJSON_AddStringToObject(m, "layout", layouts[i].sparse ? "balanced" : "dense");
        cJSON *sh = cJSON_AddArrayToObject(m, "shape");
        cJSON_AddItemToArray(sh, cJSON_CreateNumber(refs[i].rows));
        cJSON_AddItemToArray(sh, cJSON_CreateNumber(refs[i].cols));
        if (layouts[i].sparse) {
            cJSON_AddNumberToObject(m, "bank", layouts[i].bank);
            cJSON_AddNumberToObject(m, "k", layouts[i].k);
            cJSON_AddNumberToObject(m, "sparsity",
                                    1.0 - (double)layouts[i].k / layouts[i].bank);
        }
    }
    if (vocab && vocab->n) {
        cJSON *voc = cJSON_AddArrayToObject(o, "vocabulary");
        for (int i = 0; voc && i < vocab->n; i++)
            cJSON_AddItemToArray(voc, cJSON_CreateString(vocab->tok[i]));
    }
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return txt;
}

/* ---------------------------------------------------------------- reading */

/* Finds tensor name with the given dtype and shape (ndim dims), marks it used. */
static balsa_status need_tensor(const st_file *f, char *used, const char *name, st_dtype dt,
                                int ndim, const int64_t *shape, const st_tensor **out,
                                char *err, size_t errlen)
{
    const st_tensor *t = st_find(f, name);
    if (!t)
        BAD("tensor %s: missing", name);
    used[t - f->tensors] = 1;
    if (t->dtype != dt)
        BAD("tensor %s: dtype %s, expected %s", name, st_dtype_str(t->dtype), st_dtype_str(dt));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char got[96] = "", want[96] = "";
        for (int i = 0; i < t->ndim; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "",
                     (long long)t->shape[i]);
        for (int i = 0; i < ndim; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? ", " : "",
                     (long long)shape[i]);
        BAD("tensor %s: shape [%s], expected [%s]", name, got, want);
    }
    *out = t;
    return BALSA_OK;
}

/* Reads a F32 tensor of n floats into a new array, refusing non-finite values. */
static balsa_status read_floats(const st_file *f, const st_tensor *t, float **out, char *err,
                                size_t errlen)
{
    size_t n = st_numel(t);
    float *v = malloc((n ? n : 1) * sizeof(float));
    if (!v)
        BAD("tensor %s: out of memory", t->name);
    st_read_f32(f, t, v);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) {
            free(v);
            BAD("tensor %s: value not finite at element %zu", t->name, i);
        }
    *out = v;
    return BALSA_OK;
}

static balsa_status read_matrix(const st_file *f, char *used, const model_tensor_ref *r,
                                const model_layout *L, model_host_mat *hm, char *err,
                                size_t errlen)
{
    const st_tensor *t;
    balsa_status st;
    hm->rows = r->rows;
    hm->cols = r->cols;
    if (!L->sparse) {
        int64_t shape[2] = {r->rows, r->cols};
        st = need_tensor(f, used, r->name, ST_F32, 2, shape, &t, err, errlen);
        return st == BALSA_OK ? read_floats(f, t, &hm->dense, err, errlen) : st;
    }
    char vname[64], oname[64];
    snprintf(vname, sizeof vname, "%.47s.values", r->name);
    snprintf(oname, sizeof oname, "%.47s.offsets", r->name);
    int nb = (r->cols + L->bank - 1) / L->bank;
    int64_t shape[3] = {r->rows, nb, L->k};
    const st_tensor *tv, *to;
    st = need_tensor(f, used, vname, ST_F32, 3, shape, &tv, err, errlen);
    if (st == BALSA_OK)
        st = need_tensor(f, used, oname, ST_U8, 3, shape, &to, err, errlen);
    if (st != BALSA_OK)
        return st;
    if (bsmat_init(&hm->sp, r->rows, r->cols, L->bank, L->k) != BALSA_OK)
        BAD("tensor %s: out of memory", r->name);
    hm->sparse = 1;
    st_read_f32(f, tv, hm->sp.values);
    memcpy(hm->sp.offsets, st_data(f, to), st_numel(to));
    char why[160];
    if (bsmat_validate(&hm->sp, why, sizeof why) != BALSA_OK)
        BAD("tensor %s: %s", strncmp(why, "offset", 6) == 0 ? oname : vname, why);
    return BALSA_OK;
}

static balsa_status read_tensors(const st_file *f, const model_spec *s,
                                 const model_layout *layouts, model_host *h, char *err,
                                 size_t errlen)
{
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int n = model_tensor_list(s, refs);
    char *used = calloc(f->ntensors ? f->ntensors : 1, 1);
    if (!used)
        BAD("out of memory");
    balsa_status st = BALSA_OK;
    for (int i = 0; i < n && st == BALSA_OK; i++) {
        const model_tensor_ref *r = &refs[i];
        model_host_mat *hm = model_host_mat_slot(h, r);
        if (hm) {
            st = read_matrix(f, used, r, &layouts[i], hm, err, errlen);
            continue;
        }
        const st_tensor *t;
        int64_t shape[2] = {r->rows, r->cols};
        st = need_tensor(f, used, r->name, ST_F32, r->cols > 0 ? 2 : 1, shape, &t, err,
                         errlen);
        if (st == BALSA_OK)
            st = read_floats(f, t, model_host_array_slot(h, r), err, errlen);
    }
    for (int i = 0; i < f->ntensors && st == BALSA_OK; i++)
        if (!used[i]) {
            snprintf(err, errlen, "tensor %s: unknown (not part of the described network)",
                     f->tensors[i].name);
            st = BALSA_ERR_FORMAT;
        }
    free(used);
    return st;
}

balsa_status model_file_read(const char *path, model_spec *s, model_host *h,
                             model_layout *layouts, char *err, size_t errlen)
{
    memset(h, 0, sizeof *h);
    st_file f;
    balsa_status st = st_open(path, &f, err, errlen);
    if (st != BALSA_OK)
        return st;
    model_layout lay[MODEL_MAX_TENSORS];
    const char *meta = st_meta_get(&f, MODEL_META_KEY);
    if (!meta) {
        snprintf(err, errlen,
                 "metadata: no \"%s\" key in __metadata__, so no network description (a "
                 "PyTorch weights file? convert it with balsa convert)",
                 MODEL_META_KEY);
        st = BALSA_ERR_FORMAT;
    } else {
        st = model_desc_parse(meta, strlen(meta), 1, s, lay, &h->vocab, err, errlen);
    }
    if (st == BALSA_OK)
        st = read_tensors(&f, s, lay, h, err, errlen);
    st_close(&f);
    if (st != BALSA_OK)
        model_host_free(h);
    else if (layouts)
        memcpy(layouts, lay, sizeof lay);
    return st;
}

/* ---------------------------------------------------------------- writing */

balsa_status model_file_write(const char *path, const model_spec *s, const model_host *h,
                              char *err, size_t errlen)
{
    balsa_status st = model_spec_check(s, err, errlen);
    if (st != BALSA_OK)
        return st;
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int n = model_tensor_list(s, refs);
    model_layout lay[MODEL_MAX_TENSORS];
    memset(lay, 0, sizeof lay);
    st_out outs[2 * MODEL_MAX_TENSORS];
    char names[2 * MODEL_MAX_TENSORS][64];
    int no = 0;
    model_host *hh = (model_host *)h; /* the slot accessors do not write through it */
    for (int i = 0; i < n; i++) {
        const model_tensor_ref *r = &refs[i];
        model_host_mat *hm = model_host_mat_slot(hh, r);
        st_out *o = &outs[no];
        memset(o, 0, sizeof *o);
        if (!hm) {
            float *v = *model_host_array_slot(hh, r);
            if (!v)
                BAD("tensor %s: missing", r->name);
            *o = (st_out){r->name, ST_F32, r->cols > 0 ? 2 : 1, {r->rows, r->cols}, v};
            no++;
            continue;
        }
        if (hm->rows != r->rows || hm->cols != r->cols)
            BAD("tensor %s: shape [%d, %d], expected [%d, %d]", r->name, hm->rows, hm->cols,
                r->rows, r->cols);
        if (!hm->sparse) {
            if (!hm->dense)
                BAD("tensor %s: missing", r->name);
            *o = (st_out){r->name, ST_F32, 2, {r->rows, r->cols}, hm->dense};
            no++;
            continue;
        }
        lay[i] = (model_layout){1, hm->sp.bank, hm->sp.k};
        snprintf(names[no], sizeof names[no], "%.47s.values", r->name);
        outs[no] = (st_out){names[no], ST_F32, 3, {r->rows, hm->sp.nbanks, hm->sp.k},
                            hm->sp.values};
        no++;
        snprintf(names[no], sizeof names[no], "%.47s.offsets", r->name);
        outs[no] = (st_out){names[no], ST_U8, 3, {r->rows, hm->sp.nbanks, hm->sp.k},
                            hm->sp.offsets};
        no++;
    }
    char *desc = model_desc_print(s, lay, &h->vocab);
    if (!desc)
        BAD("out of memory");
    const char *meta[2] = {MODEL_META_KEY, desc};
    st = st_write(path, outs, no, meta, 1, err, errlen);
    free(desc);
    return st;
}

/* ---------------------------------------------------------------- model_load */

balsa_status model_load(const char *path, balsa_backend *be, balsa_model **out, char *err,
                        size_t errlen)
{
    *out = NULL;
    model_spec s;
    model_host h;
    balsa_status st = model_file_read(path, &s, &h, NULL, err, errlen);
    if (st != BALSA_OK)
        return st;
    if (!s.name[0]) { /* no name in the file: its base name without the extension */
        const char *b = strrchr(path, '/');
        b = b ? b + 1 : path;
        snprintf(s.name, sizeof s.name, "%s", b);
        char *dot = strrchr(s.name, '.');
        if (dot && dot != s.name)
            *dot = 0;
    }
    st = model_build(&s, &h, be, out, err, errlen);
    model_host_free(&h);
    return st;
}
