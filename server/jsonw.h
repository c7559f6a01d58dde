/* A growable text buffer for writing JSON (and the Prometheus text format) by hand:
 * cJSON prints floats slowly and with too many digits, so every response is written
 * here with "%.9g" floats (enough to round-trip a float32). */
#ifndef BALSA_JSONW_H
#define BALSA_JSONW_H

#include <stddef.h>

typedef struct {
    char *data; /* NUL-terminated while oom == 0 */
    size_t len;
    size_t cap;
    int oom;    /* set once an allocation failed; later appends do nothing */
} jsonw;

/* Starts an empty buffer (no allocation until the first append). */
void jsonw_init(jsonw *w);
/* Frees the buffer and leaves it empty. */
void jsonw_free(jsonw *w);
/* Hands the buffer's text to the caller (who frees it with free()) and leaves w empty;
 * returns NULL when an allocation failed at any point. *len receives the length. */
char *jsonw_take(jsonw *w, size_t *len);

void jsonw_raw(jsonw *w, const char *s, size_t n);
void jsonw_str(jsonw *w, const char *s); /* appends s as is */
void jsonw_printf(jsonw *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a quoted JSON string, escaping quotes, backslashes and control bytes; a
 * byte that is not part of valid UTF-8 becomes \ufffd, so the output is always valid. */
void jsonw_quoted(jsonw *w, const char *s);
/* Appends a float as "%.9g"; NaN and infinities (not valid JSON) become null. */
void jsonw_float(jsonw *w, float v);
/* Writes a finite float into buf (at least JSONW_FLOAT_MAX bytes) exactly as
 * snprintf("%.9g", (double)v) would, NUL-terminated, and returns its length. About five
 * times faster than snprintf; exposed for the tests that hold it to snprintf. */
#define JSONW_FLOAT_MAX 24
int jsonw_format_float(char *buf, float v);
/* Appends n floats as a JSON array. */
void jsonw_float_array(jsonw *w, const float *v, int n);

/* Writes {"error": msg} into a freshly allocated string; NULL when out of memory. */
char *jsonw_error(const char *msg, size_t *len);

#endif
