/* The test harness: each tests/test_*.c is one binary built against libbalsa. It defines
 * tests with TEST(name), registers them in main with RUN(name), and ends with
 * HARNESS_END(), which prints "N passed, N failed, N skipped" and exits non-zero on any
 * failure. A check that fails prints its file, line and condition and fails the test;
 * SKIP(reason) counts the test as skipped (for example no GPU). */
#ifndef BALSA_HARNESS_H
#define BALSA_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int h_passed, h_failed, h_skipped;
static int h_cur_failed, h_cur_skipped;

#define TEST(name) static void name(void)

#define RUN(name)                                                        \
    do {                                                                 \
        h_cur_failed = 0;                                                \
        h_cur_skipped = 0;                                               \
        name();                                                          \
        if (h_cur_failed) {                                              \
            h_failed++;                                                  \
            printf("FAIL %s\n", #name);                                  \
        } else if (h_cur_skipped) {                                      \
            h_skipped++;                                                 \
        } else {                                                         \
            h_passed++;                                                  \
            printf("ok   %s\n", #name);                                  \
        }                                                                \
        fflush(stdout);                                                  \
    } while (0)

#define CHECK(cond)                                                               \
    do {                                                                          \
        if (!(cond)) {                                                            \
            printf("  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);    \
            h_cur_failed = 1;                                                     \
        }                                                                         \
    } while (0)

/* Like CHECK but leaves the test at once (use when later code depends on it). */
#define REQUIRE(cond)                                                             \
    do {                                                                          \
        if (!(cond)) {                                                            \
            printf("  %s:%d: required: %s\n", __FILE__, __LINE__, #cond);         \
            h_cur_failed = 1;                                                     \
            return;                                                               \
        }                                                                         \
    } while (0)

#define CHECK_MSG(cond, ...)                                                      \
    do {                                                                          \
        if (!(cond)) {                                                            \
            printf("  %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);     \
            printf(__VA_ARGS__);                                                  \
            printf("\n");                                                         \
            h_cur_failed = 1;                                                     \
        }                                                                         \
    } while (0)

#define SKIP(...)                                                                 \
    do {                                                                          \
        printf("skip %s: ", __func__);                                            \
        printf(__VA_ARGS__);                                                      \
        printf("\n");                                                             \
        h_cur_skipped = 1;                                                        \
        return;                                                                   \
    } while (0)

#define HARNESS_END()                                                             \
    do {                                                                          \
        printf("%d passed, %d failed, %d skipped\n", h_passed, h_failed,          \
               h_skipped);                                                        \
        return h_failed ? 1 : 0;                                                  \
    } while (0)

/* Largest |a - b| / max(|b|, floor) over n values: the relative error the tests bound. */
static inline double h_max_rel_err(const float *a, const double *b, size_t n, double floor_)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        double s = fabs(b[i]) > floor_ ? fabs(b[i]) : floor_;
        if (isnan(a[i]) || d / s > worst)
            worst = isnan(a[i]) ? INFINITY : d / s;
    }
    return worst;
}

/* h_max_rel_err (floor 1) of got against want, another float result of n values. */
static inline double h_max_rel_err_ff(const float *got, const float *want, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        double s = fabs((double)want[i]) > 1 ? fabs((double)want[i]) : 1;
        if (isnan(got[i]) || d / s > worst)
            worst = isnan(got[i]) ? INFINITY : d / s;
    }
    return worst;
}

/* Deterministic xorshift random numbers, so every failure reproduces. */
static inline unsigned long long h_rand_u64(unsigned long long *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
static inline float h_rand_f(unsigned long long *s) /* uniform in [-1, 1) */
{
    return (float)((h_rand_u64(s) >> 40) * (2.0 / 16777216.0) - 1.0);
}

#endif
