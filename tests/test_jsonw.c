/* Tests for the JSON writer (server/jsonw.c): jsonw_format_float must write exactly what
 * snprintf("%.9g") writes, and so round-trip, for every float it is given: millions of
 * random bit patterns, every power of two and of ten, the neighbours of each, the ends of
 * the range and values on rounding ties; jsonw_quoted escapes what JSON needs and turns
 * bytes that are not valid UTF-8 into U+FFFD. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "server/jsonw.h"

/* Checks one float; returns 1 when it matches snprintf and parses back to itself. At most
 * a few mismatches are printed. */
static int check_float(float v, int *printed)
{
    char fast[JSONW_FLOAT_MAX + 8], ref[64];
    memset(fast, 'x', sizeof fast);
    int n = jsonw_format_float(fast, v);
    int rn = snprintf(ref, sizeof ref, "%.9g", (double)v);
    int ok = n == rn && n < JSONW_FLOAT_MAX && strcmp(fast, ref) == 0 &&
             (size_t)n == strlen(fast);
    float back = strtof(fast, NULL);
    ok = ok && memcmp(&back, &v, sizeof v) == 0;
    if (!ok && (*printed)++ < 5) {
        uint32_t bits;
        memcpy(&bits, &v, sizeof bits);
        printf("  0x%08x: wrote \"%s\" (%d), snprintf \"%s\" (%d)\n", (unsigned)bits, fast, n,
               ref, rn);
    }
    return ok;
}

static float from_bits(uint32_t b)
{
    float v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* Random finite floats, uniform over bit patterns (so over every exponent). */
TEST(random_bit_patterns_match_snprintf)
{
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    int bad = 0, printed = 0, n = 0;
    while (n < 2000000) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        float v = from_bits((uint32_t)(s >> 16));
        if (!isfinite(v))
            continue;
        bad += !check_float(v, &printed);
        n++;
    }
    CHECK_MSG(bad == 0, "%d of %d random floats differ from %%.9g", bad, n);
}

/* Values where the digits or the exponent change: powers of two and ten, their float
 * neighbours, the ends of the range, integers, and small probabilities like softmax's. */
TEST(edge_cases_match_snprintf)
{
    int bad = 0, printed = 0, n = 0;
    float fixed[] = {0.0f,     -0.0f,       1.0f,       -1.0f,       0.5f,      0.1f,
                     0.2f,     0.3f,        1e-4f,      1e-5f,       9.99999e-5f, 1e8f,
                     1e9f,     999999999.0f, 123456789.0f, 1e10f,    3.14159265f, FLT_MAX,
                     -FLT_MAX, FLT_MIN,     -FLT_MIN,   FLT_EPSILON, 1.5f,      2.5f,
                     1e-45f,   1e-40f,      16777216.0f, 16777217.0f, 0.999999f, 0.9999999f};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++, n++)
        bad += !check_float(fixed[i], &printed);
    for (int e = -149; e <= 127; e++) {
        float p = ldexpf(1.0f, e);
        float cand[] = {p, nextafterf(p, 0.0f), nextafterf(p, INFINITY), -p};
        for (int i = 0; i < 4; i++, n++)
            if (isfinite(cand[i]))
                bad += !check_float(cand[i], &printed);
    }
    for (int e = -45; e <= 38; e++) {
        float p = (float)pow(10.0, e);
        float cand[] = {p, nextafterf(p, 0.0f), nextafterf(p, INFINITY), -p};
        for (int i = 0; i < 4; i++, n++)
            if (isfinite(cand[i]) && cand[i] != 0.0f)
                bad += !check_float(cand[i], &printed);
    }
    /* Decimal-looking values k / 1000 (short digit strings with trailing zeros), and runs of
     * consecutive floats from 1 up and from 1e9 down (10-digit integers there, so the
     * ninth digit is rounded). */
    for (uint32_t k = 1; k < 1000000; k += 7, n++)
        bad += !check_float((float)k * 0.001f, &printed);
    float v = 1.0f;
    for (int i = 0; i < 100000; i++, n++, v = nextafterf(v, INFINITY))
        bad += !check_float(v, &printed);
    v = 1e9f;
    for (int i = 0; i < 100000; i++, n++, v = nextafterf(v, 0.0f))
        bad += !check_float(v, &printed);
    CHECK_MSG(bad == 0, "%d of %d edge-case floats differ from %%.9g", bad, n);
}

/* jsonw_float: nulls for non-finite values, the fast digits for the rest, in a buffer
 * that grows. */
TEST(jsonw_float_appends)
{
    jsonw w;
    jsonw_init(&w);
    for (int i = 0; i < 1000; i++)
        jsonw_float(&w, (float)i * 0.37f - 100.0f);
    jsonw_float(&w, NAN);
    jsonw_float(&w, -INFINITY);
    size_t len;
    char *text = jsonw_take(&w, &len);
    REQUIRE(text != NULL);
    char expect[32 * 1000 + 16] = "";
    size_t el = 0;
    for (int i = 0; i < 1000; i++)
        el += (size_t)snprintf(expect + el, sizeof expect - el, "%.9g",
                               (double)((float)i * 0.37f - 100.0f));
    el += (size_t)snprintf(expect + el, sizeof expect - el, "nullnull");
    CHECK(len == el);
    CHECK(strcmp(text, expect) == 0);
    free(text);
}

/* Valid UTF-8 passes as is, escapes are JSON's, and every byte of a broken sequence (a
 * stray continuation, a lead cut short, an overlong form, a surrogate, above U+10FFFF)
 * becomes \ufffd without eating the valid text after it. */
TEST(jsonw_quoted_escapes_and_repairs_utf8)
{
    struct {
        const char *in, *out;
    } cases[] = {
        {"plain", "\"plain\""},
        {"q\"b\\n\nt\tr\r\x01", "\"q\\\"b\\\\n\\nt\\tr\\r\\u0001\""},
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x90\x93", "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x90\x93\""},
        {"a\x80" "b", "\"a\\ufffdb\""},
        {"cut \xc3", "\"cut \\ufffd\""},
        {"\xe2\x82x", "\"\\ufffd\\ufffdx\""},
        {"\xc0\xaf", "\"\\ufffd\\ufffd\""},
        {"\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\""},
        {"\xf4\x90\x80\x80!", "\"\\ufffd\\ufffd\\ufffd\\ufffd!\""},
        {"\xff\"", "\"\\ufffd\\\"\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        jsonw w;
        jsonw_init(&w);
        jsonw_quoted(&w, cases[i].in);
        size_t len;
        char *text = jsonw_take(&w, &len);
        REQUIRE(text != NULL);
        CHECK_MSG(strcmp(text, cases[i].out) == 0, "case %zu: %s (expected %s)", i, text,
                  cases[i].out);
        free(text);
    }
}

int main(void)
{
    RUN(random_bit_patterns_match_snprintf);
    RUN(edge_cases_match_snprintf);
    RUN(jsonw_float_appends);
    RUN(jsonw_quoted_escapes_and_repairs_utf8);
    HARNESS_END();
}
