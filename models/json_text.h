/* Checks on JSON text that cJSON does not make. cJSON keeps strings NUL-terminated, so a
 * NUL inside a JSON string (raw, or escaped as \u0000) would silently cut the string short:
 * "tok\u0000x" would be read as "tok". And cJSON skips every byte up to 0x20 between
 * tokens as white space and keeps control characters inside strings, where RFC 8259 allows
 * only tab, line feed and carriage return between tokens and no unescaped control
 * character inside strings: {"inputs": [[1]]<NUL>} would be read as a whole request. cJSON
 * also reads numbers with strtod, which takes forms JSON does not have (01, 1., 1.e5, -.5)
 * as the number they look like. Every parser of JSON from outside (model files and
 * their descriptions, request bodies, the configuration) refuses such text with this. */
#ifndef BALSA_JSON_TEXT_H
#define BALSA_JSON_TEXT_H

#include <stddef.h>

/* What every refusal of a control character adds, after naming it. */
#define JSON_CONTROL_RULE                                                                     \
    "JSON allows only tab, line feed and carriage return between tokens, and no "            \
    "unescaped control character inside a string"

/* What every refusal of a number adds, after naming it. */
#define JSON_NUMBER_RULE                                                                      \
    "JSON numbers have no leading zeros, and digits after a decimal point and in an "         \
    "exponent"

/* Finds the first flaw in text[0..len), which must be what cJSON accepted (scan the part
 * it parsed): a NUL inside a string, raw or escaped as \u0000; a control character (a
 * byte below 0x20) that JSON does not allow there; or a number outside JSON's grammar.
 * Returns its offset, or len when there is none; for a flaw, what (whatlen bytes) says
 * what it is: "a string holds a NUL character<at> (<nul_note>)", "control character
 * 0xXX<at> (JSON_CONTROL_RULE)" or "number "01"<at> is not JSON (JSON_NUMBER_RULE)",
 * where <at> is " at byte N" when say_offset is 1 and nothing when it is 0 (for callers
 * that name the place themselves). */
size_t json_text_check(const char *text, size_t len, const char *nul_note, int say_offset,
                       char *what, size_t whatlen);

/* json_text_check over text[0..len) with the offset said: 0 when there is no flaw, else 1
 * with err set to "<where>: <what>". */
int json_text_refuse(const char *text, size_t len, const char *where, const char *nul_note,
                     char *err, size_t errlen);

#endif
