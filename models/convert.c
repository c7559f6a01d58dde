/* The converter from dense PyTorch-named weights to a balsa model (convert.h). */
#include "convert.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

static int keep_dense(const convert_opts *o, const char *name)
{
    for (int i = 0; i < o->nkeep_dense; i++)
        if (strcmp(o->keep_dense[i], name) == 0)
            return 1;
    return 0;
}

/* Reads tensor name from f as float32 with the expected shape (cols 0: a vector). */
static balsa_status read_dense(const st_file *f, const model_tensor_ref *r, float **out,
                               char *err, size_t errlen)
{
    const st_tensor *t = st_find(f, r->name);
    if (!t) {
        snprintf(err, errlen, "tensor %s: missing from the input", r->name);
        return BALSA_ERR_FORMAT;
    }
    if (t->dtype == ST_U8) {
        snprintf(err, errlen, "tensor %s: dtype U8, expected F32, F16 or BF16", r->name);
        return BALSA_ERR_FORMAT;
    }
    int want_nd = r->cols > 0 ? 2 : 1;
    if (t->ndim != want_nd || t->shape[0] != r->rows || (want_nd == 2 && t->shape[1] != r->cols)) {
        if (want_nd == 2)
            snprintf(err, errlen, "tensor %s: shape does not match the description, which needs "
                     "[%d, %d]", r->name, r->rows, r->cols);
        else
            snprintf(err, errlen, "tensor %s: shape does not match the description, which needs "
                     "[%d]", r->name, r->rows);
        return BALSA_ERR_FORMAT;
    }
    size_t n = st_numel(t);
    float *v = malloc(n * sizeof(float));
    if (!v) {
        snprintf(err, errlen, "tensor %s: out of memory", r->name);
        return BALSA_ERR_OOM;
    }
    st_read_f32(f, t, v);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) {
            free(v);
            snprintf(err, errlen, "tensor %s: value not finite at element %zu", r->name, i);
            return BALSA_ERR_FORMAT;
        }
    *out = v;
    return BALSA_OK;
}

balsa_status model_convert(const char *in_path, const char *desc_json, const convert_opts *o,
                           const char *out_path, convert_entry *report, int *nreport,
                           char *err, size_t errlen)
{
    if (nreport)
        *nreport = 0;
    if (!(o->sparsity >= 0 && o->sparsity < 1) || o->bank < BSMAT_MIN_BANK ||
        o->bank > BSMAT_MAX_BANK) {
        snprintf(err, errlen, "sparsity must be in [0, 1) and bank in %d..%d", BSMAT_MIN_BANK,
                 BSMAT_MAX_BANK);
        return BALSA_ERR_INVALID;
    }
    st_file f;
    balsa_status st = st_open(in_path, &f, err, errlen);
    if (st != BALSA_OK)
        return st;
    model_spec s;
    model_host h;
    memset(&h, 0, sizeof h);
    if (!desc_json)
        desc_json = st_meta_get(&f, MODEL_META_KEY);
    if (!desc_json) {
        snprintf(err, errlen, "no network description: give --desc FILE (the input has no "
                 "\"%s\" metadata)", MODEL_META_KEY);
        st_close(&f);
        return BALSA_ERR_INVALID;
    }
    st = model_desc_parse(desc_json, strlen(desc_json), 0, &s, NULL, &h.vocab, err, errlen);
    if (st == BALSA_OK && o->name)
        snprintf(s.name, sizeof s.name, "%s", o->name);
    if (st == BALSA_OK && o->head) {
        int hd = model_head_parse(o->head);
        if (hd < 0) {
            snprintf(err, errlen, "--head %s: expected none, softmax or log_softmax", o->head);
            st = BALSA_ERR_INVALID;
        }
        s.head = (model_head)hd;
    }
    if (st != BALSA_OK) {
        model_host_free(&h);
        st_close(&f);
        return st;
    }
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int n = model_tensor_list(&s, refs);
    for (int i = 0; i < o->nkeep_dense; i++) {
        int found = 0;
        for (int j = 0; j < n; j++)
            found |= strcmp(refs[j].name, o->keep_dense[i]) == 0 && refs[j].cols > 0 &&
                     refs[j].kind != MODEL_T_EMBEDDING;
        if (!found) {
            snprintf(err, errlen, "--dense %s: not a weight matrix of this network",
                     o->keep_dense[i]);
            model_host_free(&h);
            st_close(&f);
            return BALSA_ERR_INVALID;
        }
    }
    int k = bsmat_k_for_sparsity(o->bank, o->sparsity);
    for (int i = 0; i < n && st == BALSA_OK; i++) {
        const model_tensor_ref *r = &refs[i];
        float *v = NULL;
        st = read_dense(&f, r, &v, err, errlen);
        if (st != BALSA_OK)
            break;
        model_host_mat *hm = model_host_mat_slot(&h, r);
        convert_entry e = {.rows = r->rows, .cols = r->cols};
        memcpy(e.name, r->name, sizeof e.name);
        int prune = hm && o->sparsity > 0 && !keep_dense(o, r->name);
        if (prune && o->progress)
            fprintf(o->progress, "convert: pruning %s [%d x %d] to %d of %d per bank (%d/%d)\n",
                    r->name, r->rows, r->cols, k, o->bank, i + 1, n);
        st = model_host_put(&h, r, v, o->bank, prune ? k : 0);
        if (st != BALSA_OK) {
            snprintf(err, errlen, "tensor %s: pruning failed: %s", r->name,
                     balsa_status_str(st));
            break;
        }
        if (prune) {
            e.sparse = 1;
            e.bank = o->bank;
            e.k = k;
            e.bytes = bsmat_bytes(&hm->sp);
        } else {
            e.bytes = (size_t)r->rows * (r->cols ? r->cols : 1) * sizeof(float);
        }
        if (report)
            report[i] = e;
        if (nreport)
            *nreport = i + 1;
    }
    for (int i = 0; i < f.ntensors && st == BALSA_OK && o->progress; i++) {
        int known = 0;
        for (int j = 0; j < n; j++)
            known |= strcmp(f.tensors[i].name, refs[j].name) == 0;
        if (!known)
            fprintf(o->progress, "convert: skipping tensor %s (not part of the described "
                    "network)\n", f.tensors[i].name);
    }
    st_close(&f);
    if (st == BALSA_OK)
        st = model_file_write(out_path, &s, &h, err, errlen);
    model_host_free(&h);
    return st;
}
