/* See json_text.h. */
#include "json_text.h"

#include <stdio.h>
#include <string.h>

size_t json_text_flaw(const char *text, size_t len, int *nul)
{
    int in = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch < 0x20 && (in || (ch != '\t' && ch != '\n' && ch != '\r'))) {
            *nul = in && ch == 0;
            return i;
        }
        if (!in) {
            in = ch == '"';
        } else if (ch == '"') {
            in = 0;
        } else if (ch == '\\') {
            if (len - i > 5 && memcmp(text + i + 1, "u0000", 5) == 0) {
                *nul = 1;
                return i;
            }
            i++; /* the escaped character cannot end the string */
        }
    }
    *nul = 0;
    return len;
}

int json_text_refuse(const char *text, size_t len, const char *where, const char *nul_note,
                     char *err, size_t errlen)
{
    int nul;
    size_t bad = json_text_flaw(text, len, &nul);
    if (bad == len)
        return 0;
    if (nul)
        snprintf(err, errlen, "%s: a string holds a NUL character at byte %zu (%s)", where, bad,
                 nul_note);
    else
        snprintf(err, errlen, "%s: control character 0x%02x at byte %zu (%s)", where,
                 (unsigned char)text[bad], bad, JSON_CONTROL_RULE);
    return 1;
}
