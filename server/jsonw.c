/* The growable JSON/text writer (see jsonw.h). */
#include "jsonw.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void jsonw_init(jsonw *w)
{
    memset(w, 0, sizeof *w);
}

void jsonw_free(jsonw *w)
{
    free(w->data);
    jsonw_init(w);
}

char *jsonw_take(jsonw *w, size_t *len)
{
    char *d = w->oom ? NULL : w->data;
    if (!d && !w->oom)
        d = calloc(1, 1);
    if (len)
        *len = d ? w->len : 0;
    if (w->oom)
        free(w->data);
    jsonw_init(w);
    return d;
}

/* Makes room for n more bytes plus the NUL; returns 0 (and sets oom) on failure. */
static int reserve(jsonw *w, size_t n)
{
    if (w->oom)
        return 0;
    if (w->len + n + 1 <= w->cap)
        return 1;
    size_t cap = w->cap ? w->cap : 256;
    while (cap < w->len + n + 1)
        cap *= 2;
    char *d = realloc(w->data, cap);
    if (!d) {
        w->oom = 1;
        return 0;
    }
    w->data = d;
    w->cap = cap;
    return 1;
}

void jsonw_raw(jsonw *w, const char *s, size_t n)
{
    if (!reserve(w, n))
        return;
    memcpy(w->data + w->len, s, n);
    w->len += n;
    w->data[w->len] = 0;
}

void jsonw_str(jsonw *w, const char *s)
{
    jsonw_raw(w, s, strlen(s));
}

void jsonw_printf(jsonw *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        jsonw_raw(w, small, (size_t)n);
        return;
    }
    if (!reserve(w, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(w->data + w->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    w->len += (size_t)n;
}

void jsonw_quoted(jsonw *w, const char *s)
{
    jsonw_raw(w, "\"", 1);
    const char *run = s;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        const char *esc = NULL;
        char ubuf[8];
        if (*p == '"')
            esc = "\\\"";
        else if (*p == '\\')
            esc = "\\\\";
        else if (*p == '\n')
            esc = "\\n";
        else if (*p == '\t')
            esc = "\\t";
        else if (*p == '\r')
            esc = "\\r";
        else if (*p < 0x20) {
            snprintf(ubuf, sizeof ubuf, "\\u%04x", *p);
            esc = ubuf;
        }
        if (!esc)
            continue;
        jsonw_raw(w, run, (size_t)((const char *)p - run));
        jsonw_str(w, esc);
        run = (const char *)p + 1;
    }
    jsonw_str(w, run);
    jsonw_raw(w, "\"", 1);
}

void jsonw_float(jsonw *w, float v)
{
    if (!isfinite(v)) {
        jsonw_raw(w, "null", 4);
        return;
    }
    if (!reserve(w, 24))
        return;
    int n = snprintf(w->data + w->len, 24, "%.9g", (double)v);
    w->len += (size_t)n;
}

void jsonw_float_array(jsonw *w, const float *v, int n)
{
    /* One reservation for the whole array: each "%.9g" float is at most 15 chars + ','. */
    if (!reserve(w, (size_t)n * 16 + 2))
        return;
    jsonw_raw(w, "[", 1);
    for (int i = 0; i < n; i++) {
        if (i)
            jsonw_raw(w, ",", 1);
        jsonw_float(w, v[i]);
    }
    jsonw_raw(w, "]", 1);
}

char *jsonw_error(const char *msg, size_t *len)
{
    jsonw w;
    jsonw_init(&w);
    jsonw_str(&w, "{\"error\": ");
    jsonw_quoted(&w, msg);
    jsonw_str(&w, "}\n");
    return jsonw_take(&w, len);
}
