/* See json_text.h. */
#include "json_text.h"

#include <string.h>

size_t json_nul_in_string(const char *text, size_t len)
{
    int in = 0;
    for (size_t i = 0; i < len; i++) {
        if (!in) {
            in = text[i] == '"';
        } else if (text[i] == '"') {
            in = 0;
        } else if (text[i] == '\\') {
            if (len - i > 5 && memcmp(text + i + 1, "u0000", 5) == 0)
                return i;
            i++; /* the escaped character cannot end the string */
        } else if (text[i] == 0) {
            return i;
        }
    }
    return len;
}
