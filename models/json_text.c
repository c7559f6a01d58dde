/* See json_text.h. */
#include "json_text.h"

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
