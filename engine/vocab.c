/* A token model's vocabulary (model_vocab in model.h): checking and holding the text of
 * every token id, and turning text into ids by longest match. A character-level model's
 * tokens are single characters; a vocabulary of longer pieces (words, sub-words) works the
 * same way, the longest token that matches at each position winning. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "utf8.h"

/* Orders two texts as bytes, the shorter first on a common prefix. */
static int text_cmp(const char *a, int alen, const char *b, int blen)
{
    int c = memcmp(a, b, (size_t)(alen < blen ? alen : blen));
    return c ? c : (alen > blen) - (alen < blen);
}

/* qsort has no context argument in C11: the vocabulary being sorted. */
static _Thread_local const model_vocab *sort_vocab;

static int sorted_cmp(const void *pa, const void *pb)
{
    int a = *(const int *)pa, b = *(const int *)pb;
    return text_cmp(sort_vocab->tok[a], sort_vocab->len[a], sort_vocab->tok[b],
                    sort_vocab->len[b]);
}

void model_vocab_free(model_vocab *v)
{
    free(v->tok);
    free(v->len);
    free(v->sorted);
    free(v->blob);
    memset(v, 0, sizeof *v);
}

/* Fills v (n, len and blob already set, tokens copied into blob) with the pointers and
 * the index; BALSA_ERR_OOM. */
static balsa_status index_vocab(model_vocab *v)
{
    v->tok = malloc(sizeof *v->tok * (size_t)v->n);
    v->sorted = malloc(sizeof *v->sorted * (size_t)v->n);
    if (!v->tok || !v->sorted)
        return BALSA_ERR_OOM;
    char *p = v->blob;
    v->max_len = 0;
    for (int b = 0; b < 256; b++)
        v->byte_tok[b] = -1;
    for (int i = 0; i < v->n; i++) {
        v->tok[i] = p;
        p += v->len[i] + 1;
        v->sorted[i] = i;
        if (v->len[i] > v->max_len)
            v->max_len = v->len[i];
        if (v->len[i] == 1)
            v->byte_tok[(unsigned char)v->tok[i][0]] = i;
    }
    sort_vocab = v;
    qsort(v->sorted, (size_t)v->n, sizeof *v->sorted, sorted_cmp);
    sort_vocab = NULL;
    return BALSA_OK;
}

balsa_status model_vocab_set(model_vocab *v, const char *const *tokens, int n, char *err,
                             size_t errlen)
{
    memset(v, 0, sizeof *v);
    if (n <= 0)
        return BALSA_OK;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        const char *t = tokens[i];
        size_t len = t ? strlen(t) : 0;
        if (len == 0) {
            snprintf(err, errlen, "vocabulary[%d]: empty (every token needs its text)", i);
            return BALSA_ERR_FORMAT;
        }
        if (len > MODEL_MAX_TOKEN_BYTES) {
            snprintf(err, errlen, "vocabulary[%d]: %zu bytes, more than the limit %d", i, len,
                     MODEL_MAX_TOKEN_BYTES);
            return BALSA_ERR_FORMAT;
        }
        unsigned cp;
        for (size_t o = 0; o < len;) {
            int k = utf8_seq((const unsigned char *)t + o, len - o, &cp);
            if (!k) {
                snprintf(err, errlen, "vocabulary[%d]: not valid UTF-8 at byte %zu", i, o);
                return BALSA_ERR_FORMAT;
            }
            o += (size_t)k;
        }
        total += len + 1;
    }
    v->n = n;
    v->len = malloc(sizeof *v->len * (size_t)n);
    v->blob = malloc(total);
    if (!v->len || !v->blob) {
        model_vocab_free(v);
        return BALSA_ERR_OOM;
    }
    char *p = v->blob;
    for (int i = 0; i < n; i++) {
        v->len[i] = (int)strlen(tokens[i]);
        memcpy(p, tokens[i], (size_t)v->len[i] + 1);
        p += v->len[i] + 1;
    }
    if (index_vocab(v) != BALSA_OK) {
        model_vocab_free(v);
        return BALSA_ERR_OOM;
    }
    for (int i = 1; i < n; i++) {
        int a = v->sorted[i - 1], b = v->sorted[i];
        if (text_cmp(v->tok[a], v->len[a], v->tok[b], v->len[b]) == 0) {
            snprintf(err, errlen, "vocabulary[%d]: the same text as vocabulary[%d]",
                     a > b ? a : b, a < b ? a : b);
            model_vocab_free(v);
            return BALSA_ERR_FORMAT;
        }
    }
    return BALSA_OK;
}

balsa_status model_vocab_copy(model_vocab *dst, const model_vocab *src)
{
    memset(dst, 0, sizeof *dst);
    if (src->n == 0)
        return BALSA_OK;
    size_t total = 0;
    for (int i = 0; i < src->n; i++)
        total += (size_t)src->len[i] + 1;
    dst->n = src->n;
    dst->len = malloc(sizeof *dst->len * (size_t)src->n);
    dst->blob = malloc(total);
    if (!dst->len || !dst->blob) {
        model_vocab_free(dst);
        return BALSA_ERR_OOM;
    }
    memcpy(dst->len, src->len, sizeof *dst->len * (size_t)src->n);
    memcpy(dst->blob, src->blob, total);
    if (index_vocab(dst) != BALSA_OK) {
        model_vocab_free(dst);
        return BALSA_ERR_OOM;
    }
    return BALSA_OK;
}

/* The id whose text is exactly s[0..len), or -1 (binary search of the index). */
static int find_text(const model_vocab *v, const char *s, int len)
{
    int lo = 0, hi = v->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, id = v->sorted[mid];
        int c = text_cmp(v->tok[id], v->len[id], s, len);
        if (c == 0)
            return id;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* Describes the character at text[0..len) for a message: 'a', 'é' (U+00E9), U+000A for a
 * control character, or byte 0xC3 when it is not valid UTF-8. */
static void describe_char(const char *text, size_t len, char *buf, size_t n)
{
    unsigned cp;
    int k = utf8_seq((const unsigned char *)text, len, &cp);
    if (k == 1 && cp >= 0x20 && cp < 0x7F)
        snprintf(buf, n, "'%c'", (char)cp);
    else if (k > 1)
        snprintf(buf, n, "'%.*s' (U+%04X)", k, text, cp);
    else if (k)
        snprintf(buf, n, "U+%04X", cp);
    else
        snprintf(buf, n, "byte 0x%02X (not valid UTF-8)", (unsigned char)text[0]);
}

balsa_status model_vocab_encode(const model_vocab *v, const char *text, size_t len,
                                int32_t *ids, int *n, char *err, size_t errlen)
{
    *n = 0;
    if (v->n == 0) {
        snprintf(err, errlen, "the model has no vocabulary (send token ids)");
        return BALSA_ERR_INVALID;
    }
    if (len == 0) {
        snprintf(err, errlen, "empty (at least one character)");
        return BALSA_ERR_INVALID;
    }
    int count = 0;
    for (size_t p = 0; p < len;) {
        int id = -1, took = 0;
        int most = len - p < (size_t)v->max_len ? (int)(len - p) : v->max_len;
        for (int l = most; l > 1 && id < 0; l--)
            if ((id = find_text(v, text + p, l)) >= 0)
                took = l;
        if (id < 0 && (id = v->byte_tok[(unsigned char)text[p]]) >= 0)
            took = 1;
        if (id < 0) {
            char what[48];
            describe_char(text + p, len - p, what, sizeof what);
            snprintf(err, errlen, "%s at byte %zu is not in the model's vocabulary", what, p);
            return BALSA_ERR_INVALID;
        }
        ids[count++] = id;
        p += (size_t)took;
    }
    *n = count;
    return BALSA_OK;
}
