/* Tests of server/encoding.c: which Content-Encoding and Accept-Encoding values are taken,
 * gzip and deflate bodies inflated back to what was compressed (one call's worth and
 * streams that grow the buffer many times), and the refusals: a cut stream, bytes after
 * the stream, another coding's data, and a stream that inflates past the limit. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "server/encoding.h"
#include "zlib_util.h"

TEST(content_codings)
{
    CHECK(enc_content_coding(NULL) == ENC_IDENTITY);
    CHECK(enc_content_coding("identity") == ENC_IDENTITY);
    CHECK(enc_content_coding(" GZip ") == ENC_GZIP);
    CHECK(enc_content_coding("x-gzip") == ENC_GZIP);
    CHECK(enc_content_coding("deflate") == ENC_DEFLATE);
    CHECK(enc_content_coding("br") == ENC_UNKNOWN);
    CHECK(enc_content_coding("gzip, deflate") == ENC_UNKNOWN);
    CHECK(enc_content_coding("") == ENC_UNKNOWN);
}

TEST(accept_encoding)
{
    CHECK(enc_accepts_gzip(NULL) == 0);
    CHECK(enc_accepts_gzip("") == 0);
    CHECK(enc_accepts_gzip("gzip") == 1);
    CHECK(enc_accepts_gzip("deflate, gzip, br, zstd") == 1); /* curl --compressed */
    CHECK(enc_accepts_gzip("br;q=1.0, GZIP;q=0.5") == 1);
    CHECK(enc_accepts_gzip("gzip;q=0") == 0);
    CHECK(enc_accepts_gzip("gzip; q=0.000, deflate") == 0);
    CHECK(enc_accepts_gzip("*") == 1);
    CHECK(enc_accepts_gzip("*;q=0") == 0);
    CHECK(enc_accepts_gzip("gzip;q=0, *") == 0); /* gzip's own entry decides */
    CHECK(enc_accepts_gzip("identity") == 0);
    CHECK(enc_accepts_gzip("gzipx") == 0);
}

/* in compressed by zlib itself in the given coding (gzip or zlib wrapper). */
static unsigned char *compress_with(const char *in, size_t n, int coding, size_t *outlen)
{
    return tz_compress(in, n, coding == ENC_GZIP, outlen);
}

TEST(inflate_round_trips)
{
    /* a short JSON body, and 3 MB of text that compresses several times over (the output
     * buffer grows many times) */
    size_t big = 3u << 20;
    char *text = malloc(big + 1);
    unsigned long long rng = 5;
    for (size_t i = 0; i < big; i++)
        text[i] = "ab \"{}:,0123456789"[h_rand_u64(&rng) % 4 ? i % 7 : h_rand_u64(&rng) % 18];
    const struct {
        const char *data;
        size_t n;
    } cases[] = {{"{\"inputs\": [[1, 2, 3]]}", 23}, {text, big}};
    for (size_t c = 0; c < 2; c++)
        for (int coding = ENC_GZIP; coding <= ENC_DEFLATE; coding++) {
            size_t zn, n;
            unsigned char *z = compress_with(cases[c].data, cases[c].n, coding, &zn);
            char *out, err[200];
            CHECK(enc_inflate((const char *)z, zn, coding, big, &out, &n, err, sizeof err) == 0);
            CHECK_MSG(out && n == cases[c].n && !memcmp(out, cases[c].data, n) && !out[n],
                      "case %zu, coding %d: %zu bytes back", c, coding, n);
            free(out);
            /* the limit is checked on the inflated size */
            CHECK(enc_inflate((const char *)z, zn, coding, cases[c].n - 1, &out, &n, err,
                              sizeof err) == 413);
            CHECK(!out && strstr(err, "once inflated"));
            free(z);
        }
    /* and gzip as the server writes it */
    size_t gn, n;
    char *g = enc_gzip(text, big, &gn), *out, err[200];
    REQUIRE(g);
    CHECK(gn < big / 2); /* it did compress */
    CHECK(enc_inflate(g, gn, ENC_GZIP, big, &out, &n, err, sizeof err) == 0);
    CHECK(n == big && !memcmp(out, text, big));
    free(out);
    free(g);
    free(text);
}

TEST(inflate_refusals)
{
    const char *body = "{\"inputs\": [[1, 2, 3]], \"top_k\": 2}";
    size_t zn, n;
    unsigned char *z = compress_with(body, strlen(body), ENC_GZIP, &zn);
    char *out, err[200];
    /* cut short, at every length */
    for (size_t cut = 0; cut < zn; cut++) {
        int code = enc_inflate((const char *)z, cut, ENC_GZIP, 1000, &out, &n, err, sizeof err);
        CHECK_MSG(code == 400 && !out && strstr(err, "not a whole gzip stream"), "cut %zu: %d",
                  cut, code);
    }
    /* bytes after the stream */
    unsigned char *more = malloc(zn + 3);
    memcpy(more, z, zn);
    memcpy(more + zn, "xyz", 3);
    CHECK(enc_inflate((const char *)more, zn + 3, ENC_GZIP, 1000, &out, &n, err, sizeof err) ==
          400);
    /* gzip data called deflate, and plain text called gzip */
    CHECK(enc_inflate((const char *)z, zn, ENC_DEFLATE, 1000, &out, &n, err, sizeof err) == 400);
    CHECK(strstr(err, "not a whole deflate stream"));
    CHECK(enc_inflate(body, strlen(body), ENC_GZIP, 1000, &out, &n, err, sizeof err) == 400);
    free(more);
    free(z);
    /* a bomb: 64 MB of zeros in about 64 KB, against a 1 MB limit */
    size_t bomb = 64u << 20;
    char *zeros = calloc(bomb, 1);
    unsigned char *zb = compress_with(zeros, bomb, ENC_GZIP, &zn);
    CHECK(zn < (1u << 20));
    CHECK(enc_inflate((const char *)zb, zn, ENC_GZIP, 1u << 20, &out, &n, err, sizeof err) ==
          413);
    free(zb);
    free(zeros);
}

int main(void)
{
    RUN(content_codings);
    RUN(accept_encoding);
    RUN(inflate_round_trips);
    RUN(inflate_refusals);
    HARNESS_END();
}
