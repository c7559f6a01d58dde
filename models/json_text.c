/* See json_text.h. */
#include "json_text.h"

#include <stdio.h>
#include <string.h>

/* The length of the number-like run at t[0..len) (the bytes cJSON's number parser takes:
 * digits, sign, point and exponent letters), and in *ok whether it is a JSON number:
 * -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static size_t number_run(const char *t, size_t len, int *ok)
{
    size_t n = 0;
    while (n < len && t[n] && strchr("0123456789+-.eE", t[n])) /* strchr finds a NUL too */
        n++;
    size_t p = 0;
#define DIGIT(i) ((i) < n && t[i] >= '0' && t[i] <= '9')
    if (p < n && t[p] == '-')
        p++;
    if (p < n && t[p] == '0') {
        p++;
    } else if (DIGIT(p)) {
        while (DIGIT(p))
            p++;
    } else {
        *ok = 0;
        return n;
    }
    if (p < n && t[p] == '.') {
        p++;
        if (!DIGIT(p)) {
            *ok = 0;
            return n;
        }
        while (DIGIT(p))
            p++;
    }
    if (p < n && (t[p] == 'e' || t[p] == 'E')) {
        p++;
        if (p < n && (t[p] == '+' || t[p] == '-'))
            p++;
        if (!DIGIT(p)) {
            *ok = 0;
            return n;
        }
        while (DIGIT(p))
            p++;
    }
#undef DIGIT
    *ok = p == n;
    return n;
}

typedef enum {
    JSON_FLAW_NUL,     /* a NUL inside a string, raw or escaped as \u0000 */
    JSON_FLAW_CONTROL, /* a byte below 0x20 that JSON does not allow there */
    JSON_FLAW_NUMBER   /* a number that is not in JSON's grammar; *numlen its bytes */
} json_flaw;

/* The offset of the first flaw in text[0..len), or len when there is none, with its kind
 * in *kind and, for a number, its length in *numlen. */
static size_t json_text_flaw(const char *text, size_t len, json_flaw *kind, size_t *numlen)
{
    int in = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch < 0x20 && (in || (ch != '\t' && ch != '\n' && ch != '\r'))) {
            *kind = in && ch == 0 ? JSON_FLAW_NUL : JSON_FLAW_CONTROL;
            return i;
        }
        if (!in && (ch == '-' || (ch >= '0' && ch <= '9'))) {
            /* outside strings a '-' or a digit starts a number (true, false and null have
             * neither), and the run ends it: cJSON refused anything else after it */
            int ok;
            size_t n = number_run(text + i, len - i, &ok);
            if (!ok) {
                *kind = JSON_FLAW_NUMBER;
                *numlen = n;
                return i;
            }
            i += n - 1;
        } else if (!in) {
            in = ch == '"';
        } else if (ch == '"') {
            in = 0;
        } else if (ch == '\\') {
            if (len - i > 5 && memcmp(text + i + 1, "u0000", 5) == 0) {
                *kind = JSON_FLAW_NUL;
                return i;
            }
            i++; /* the escaped character cannot end the string */
        }
    }
    return len;
}

size_t json_text_check(const char *text, size_t len, const char *nul_note, int say_offset,
                       char *what, size_t whatlen)
{
    json_flaw kind;
    size_t numlen = 0;
    size_t bad = json_text_flaw(text, len, &kind, &numlen);
    if (bad == len)
        return len;
    char at[40] = "";
    if (say_offset)
        snprintf(at, sizeof at, " at byte %zu", bad);
    if (kind == JSON_FLAW_NUL)
        snprintf(what, whatlen, "a string holds a NUL character%s (%s)", at, nul_note);
    else if (kind == JSON_FLAW_CONTROL)
        snprintf(what, whatlen, "control character 0x%02x%s (%s)", (unsigned char)text[bad], at,
                 JSON_CONTROL_RULE);
    else
        snprintf(what, whatlen, "number \"%.*s\"%s is not JSON (%s)",
                 (int)(numlen < 24 ? numlen : 24), text + bad, at, JSON_NUMBER_RULE);
    return bad;
}

int json_text_refuse(const char *text, size_t len, const char *where, const char *nul_note,
                     char *err, size_t errlen)
{
    char what[256];
    if (json_text_check(text, len, nul_note, 1, what, sizeof what) == len)
        return 0;
    snprintf(err, errlen, "%s: %s", where, what);
    return 1;
}
