/* UTF-8 decoding shared by the vocabulary (engine/vocab.c), which refuses invalid text, and
 * the JSON writer (server/jsonw.c), which must never write invalid text into an answer. */
#ifndef BALSA_UTF8_H
#define BALSA_UTF8_H

#include <stddef.h>

/* Length of the UTF-8 sequence starting at s[0..len) (1..4), or 0 when it is not valid
 * (bad lead byte, missing or bad continuation, overlong form, surrogate, > U+10FFFF);
 * *cp receives the code point. */
static inline int utf8_seq(const unsigned char *s, size_t len, unsigned *cp)
{
    unsigned c = s[0];
    int n;
    unsigned min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if ((c & 0xE0) == 0xC0) {
        n = 2;
        min = 0x80;
        c &= 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3;
        min = 0x800;
        c &= 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        n = 4;
        min = 0x10000;
        c &= 0x07;
    } else {
        return 0;
    }
    if ((size_t)n > len)
        return 0;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return n;
}

#endif
