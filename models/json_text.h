/* A check on JSON text that cJSON does not make. cJSON keeps strings NUL-terminated, so a
 * NUL inside a JSON string (raw, or escaped as \u0000) would silently cut the string short:
 * "tok\u0000x" would be read as "tok". Every parser of JSON from outside (model files and
 * their descriptions, request bodies, the configuration) refuses such text with this. */
#ifndef BALSA_JSON_TEXT_H
#define BALSA_JSON_TEXT_H

#include <stddef.h>

/* The offset of the first NUL inside a string of text[0..len), raw or escaped as \u0000,
 * or len when there is none. text must be valid JSON up to that point (scan the part that
 * cJSON accepted). */
size_t json_nul_in_string(const char *text, size_t len);

#endif
