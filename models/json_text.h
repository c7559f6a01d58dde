/* Checks on JSON text that cJSON does not make. cJSON keeps strings NUL-terminated, so a
 * NUL inside a JSON string (raw, or escaped as \u0000) would silently cut the string short:
 * "tok\u0000x" would be read as "tok". And cJSON skips every byte up to 0x20 between
 * tokens as white space and keeps control characters inside strings, where RFC 8259 allows
 * only tab, line feed and carriage return between tokens and no unescaped control
 * character inside strings: {"inputs": [[1]]<NUL>} would be read as a whole request. Every
 * parser of JSON from outside (model files and their descriptions, request bodies, the
 * configuration) refuses such text with this. */
#ifndef BALSA_JSON_TEXT_H
#define BALSA_JSON_TEXT_H

#include <stddef.h>

/* What every refusal of a control character adds, after naming it. */
#define JSON_CONTROL_RULE                                                                     \
    "JSON allows only tab, line feed and carriage return between tokens, and no "            \
    "unescaped control character inside a string"

/* The offset of the first flaw in text[0..len), or len when there is none: a NUL inside a
 * string, raw or escaped as \u0000 (*nul set to 1), or a control character (a byte below
 * 0x20, text[offset]) that JSON does not allow there (*nul set to 0). text must be valid
 * JSON up to that point (scan the part that cJSON accepted). */
size_t json_text_flaw(const char *text, size_t len, int *nul);

/* json_text_flaw over text[0..len): 0 when there is no flaw, else 1 with err set to
 * "<where>: a string holds a NUL character at byte N (<nul_note>)" or "<where>: control
 * character 0xXX at byte N (JSON_CONTROL_RULE)". */
int json_text_refuse(const char *text, size_t len, const char *where, const char *nul_note,
                     char *err, size_t errlen);

#endif
