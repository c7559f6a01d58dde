/* The growable JSON/text writer (see jsonw.h). */
#include "jsonw.h"
#include "engine/utf8.h"

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
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
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
        } else if (*p >= 0x80) {
            /* Text from clients (echoed in messages, cut to a length) or anywhere else
             * may not be valid UTF-8; JSON must be, so a bad byte becomes U+FFFD. */
            unsigned cp;
            int n = utf8_seq(p, strnlen((const char *)p, 4), &cp);
            if (n) {
                p += n;
                continue;
            }
            esc = "\\ufffd";
        }
        if (!esc) {
            p++;
            continue;
        }
        jsonw_raw(w, run, (size_t)((const char *)p - run));
        jsonw_str(w, esc);
        run = (const char *)++p;
    }
    jsonw_str(w, run);
    jsonw_raw(w, "\"", 1);
}

/* 10^k for k = 0..22: exact in a double, so one multiplication or division by one of them
 * rounds once. */
static const double pow10_exact[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* d * 10^k for the k a float needs (-30 <= k <= 53), within 3 units in the last place of a
 * double: one or two exact powers, each applied with one rounding. */
static double scale10(double d, int k)
{
    while (k > 22) {
        d *= pow10_exact[22];
        k -= 22;
    }
    while (k < -22) {
        d /= pow10_exact[22];
        k += 22;
    }
    return k >= 0 ? d * pow10_exact[k] : d / pow10_exact[-k];
}

/* Writes "e", the sign and at least two digits of the exponent x to p; returns how many
 * bytes (no NUL). */
static int put_exponent(char *p, int x)
{
    int n = 0;
    p[n++] = 'e';
    p[n++] = x < 0 ? '-' : '+';
    if (x < 0)
        x = -x;
    if (x >= 100)
        p[n++] = (char)('0' + x / 100);
    p[n++] = (char)('0' + x / 10 % 10);
    p[n++] = (char)('0' + x % 10);
    return n;
}

int jsonw_format_float(char *buf, float v)
{
    /* A float has at most 9 significant digits worth printing and its scaled value is
     * known to about 3e-7, so the 9-digit rounding is decided here except when the value
     * sits within 1e-5 of a rounding tie; those (about 1 in 50,000, and exact ties, where
     * printf rounds half to even) go to snprintf, as do zero and subnormals. */
    double d = fabs((double)v);
    if (d < 1.17549435e-38) /* FLT_MIN: zero and subnormals */
        return snprintf(buf, JSONW_FLOAT_MAX, "%.9g", (double)v);
    int e2;
    frexp(d, &e2); /* d in [2^(e2-1), 2^e2) */
    int x = (int)floor((e2 - 1) * 0.30102999566398120); /* decimal exponent, or one less */
    double s = scale10(d, 8 - x);
    if (s < 1e8) {
        x--;
        s = scale10(d, 8 - x);
    } else if (s >= 1e9) {
        x++;
        s = scale10(d, 8 - x);
    }
    double fl = floor(s), frac = s - fl;
    if (fabs(frac - 0.5) < 1e-5 || s < 1e8 || s >= 1e9)
        return snprintf(buf, JSONW_FLOAT_MAX, "%.9g", (double)v);
    unsigned long m = (unsigned long)fl + (frac > 0.5);
    if (m == 1000000000UL) { /* rounded up to the next power of ten */
        m = 100000000UL;
        x++;
    }
    char dig[9];
    for (int i = 8; i >= 0; i--, m /= 10)
        dig[i] = (char)('0' + m % 10);
    int nd = 9; /* %g drops trailing zeros */
    while (nd > 1 && dig[nd - 1] == '0')
        nd--;
    char *p = buf;
    if (v < 0)
        *p++ = '-';
    if (x < -4 || x >= 9) { /* d.ddde+XX */
        *p++ = dig[0];
        if (nd > 1) {
            *p++ = '.';
            memcpy(p, dig + 1, (size_t)nd - 1);
            p += nd - 1;
        }
        p += put_exponent(p, x);
    } else if (x >= 0) { /* x + 1 integer digits, then the rest */
        int ni = x + 1;
        memcpy(p, dig, (size_t)ni);
        p += ni;
        if (nd > ni) {
            *p++ = '.';
            memcpy(p, dig + ni, (size_t)(nd - ni));
            p += nd - ni;
        }
    } else { /* 0.000ddd */
        *p++ = '0';
        *p++ = '.';
        for (int i = 0; i < -x - 1; i++)
            *p++ = '0';
        memcpy(p, dig, (size_t)nd);
        p += nd;
    }
    *p = '\0';
    return (int)(p - buf);
}

void jsonw_float(jsonw *w, float v)
{
    if (!isfinite(v)) {
        jsonw_raw(w, "null", 4);
        return;
    }
    if (!reserve(w, JSONW_FLOAT_MAX))
        return;
    w->len += (size_t)jsonw_format_float(w->data + w->len, v);
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
