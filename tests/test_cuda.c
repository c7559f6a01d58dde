/* Tests of the CUDA backend. On any machine: the arithmetic shared with the CPU
 * (kernels/bs_math.h), the packed GPU layout (kernels/cuda/bs_pack.h: shape, coalescing
 * property, exact round trip) and the backend choice ("auto" falls back to the CPU with a
 * reason naming CUDA when no device answers). With a GPU: every CUDA op held to the CPU
 * reference (spmm_ref, lstm_cell_ref) and to float64 products on awkward shapes (sizes
 * 1, 7, 33, 129; K not a multiple of the bank; batch 1, 3, 8, 64; banks 4..256; split
 * rows), for both kernels and fp32/fp16/bf16 values, with sentinels around every output
 * to catch stray writes. Without a GPU those tests are counted as skipped.
 * BALSA_TEST_QUICK=1 runs a smaller set (for compute-sanitizer). Built also without the
 * CPU backend (BALSA_GPU_ONLY, `make gpu-check-bins`), where the choice test is left out. */
#include "harness.h"
#include "kernels/backend.h"
#include "kernels/bs_math.h"
#include "kernels/bsmat.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cuda/bs_pack.h"
#ifdef BALSA_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

#define SENTINEL 1234.5f
#define GUARD 16 /* sentinels before an output */

static float *rand_buf(size_t n, float scale, unsigned long long *seed)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        p[i] = scale * h_rand_f(seed);
    return p;
}

/* bs_math.h against the formulas in float64. */
TEST(bs_math_matches_formulas)
{
    CHECK(bs_sigmoidf(0.0f) == 0.5f);
    CHECK(bs_sigmoidf(100.0f) == 1.0f);
    CHECK(bs_sigmoidf(-100.0f) == 0.0f);
    CHECK(bs_tanhf(0.0f) == 0.0f);
    double worst = 0;
    for (int i = -400; i <= 400; i++) {
        float v = i * 0.05f;
        double sg = 1.0 / (1.0 + exp(-(double)v)), th = tanh((double)v);
        double e1 = fabs(bs_sigmoidf(v) - sg), e2 = fabs(bs_tanhf(v) - th);
        worst = fmax(worst, fmax(e1, e2));
        CHECK(bs_act(BALSA_ACT_NONE, v) == v);
        CHECK(bs_act(BALSA_ACT_RELU, v) == (v > 0 ? v : 0.0f));
        CHECK(bs_act(BALSA_ACT_SIGMOID, v) == bs_sigmoidf(v));
        CHECK(bs_act(BALSA_ACT_TANH, v) == bs_tanhf(v));
    }
    CHECK_MSG(worst < 1e-6, "activation error %g", worst);
    unsigned long long seed = 77;
    for (int t = 0; t < 1000; t++) {
        float gi = 4 * h_rand_f(&seed), gf = 4 * h_rand_f(&seed), gg = 4 * h_rand_f(&seed),
              go = 4 * h_rand_f(&seed), c = 2 * h_rand_f(&seed);
        double cd = 1 / (1 + exp(-(double)gf)) * c + 1 / (1 + exp(-(double)gi)) * tanh(gg);
        double hd = 1 / (1 + exp(-(double)go)) * tanh(cd);
        float cn = bs_lstm_c(gi, gf, gg, c);
        CHECK(fabs(cn - cd) < 1e-5);
        CHECK(fabs(bs_lstm_h(go, cn) - hd) < 1e-5);
    }
    CHECK(bs_col(0, 32, 5) == 5);
    CHECK(bs_col(3, 32, 31) == 127);
    CHECK(bs_col(2, 256, 255) == 767);
}

/* Packing then unpacking gives back the canonical matrix bit for bit; the layout keeps
 * its promises (vec divides k and is the largest of 4, 2, 1 that does; consecutive rows
 * at consecutive vectors; every slot in its own place; padding rows zero). */
TEST(pack_round_trip_and_layout)
{
    int rows_l[] = {1, 7, 33, 129}, cols_l[] = {1, 7, 33, 129, 1000};
    int banks[] = {4, 7, 8, 32, 64, 256}, ks[] = {1, 2, 3, 4, 6, 8, 12};
    unsigned long long seed = 99;
    for (int ri = 0; ri < 4; ri++)
        for (int ci = 0; ci < 5; ci++)
            for (int bi = 0; bi < 6; bi++)
                for (int ki = 0; ki < 8; ki++) {
                    int rows = rows_l[ri], cols = cols_l[ci], B = banks[bi];
                    int k = ki < 7 ? ks[ki] : B;
                    if (k > B)
                        continue;
                    float *d = rand_buf((size_t)rows * cols, 1.0f, &seed);
                    bsmat m, back;
                    REQUIRE(bsmat_prune(d, rows, cols, cols, B, k, &m) == BALSA_OK);
                    bs_pack_shape s = bs_pack_shape_of(&m);
                    int want_vec = k % 4 == 0 ? 4 : k % 2 == 0 ? 2 : 1;
                    CHECK(s.vec == want_vec && s.groups * s.vec == k);
                    CHECK(s.rows_pad % 32 == 0 && s.rows_pad >= rows && s.rows_pad - rows < 32);
                    size_t n = bs_pack_count(&s);
                    float *v = malloc(n * sizeof *v);
                    uint8_t *o = malloc(n);
                    unsigned char *seen = calloc(n, 1);
                    bs_pack(&m, &s, v, o);
                    int layout_ok = 1;
                    for (int r = 0; r < s.rows_pad; r++)
                        for (int b = 0; b < s.nbanks; b++)
                            for (int j = 0; j < k; j++) {
                                size_t idx = bs_pack_index(&s, r, b, j);
                                if (idx >= n || seen[idx]++)
                                    layout_ok = 0;
                                else if (r + 1 < s.rows_pad &&
                                         bs_pack_index(&s, r + 1, b, j) != idx + s.vec)
                                    layout_ok = 0;
                                else if (r >= rows && (v[idx] != 0.0f || o[idx] != 0))
                                    layout_ok = 0;
                            }
                    CHECK_MSG(layout_ok, "rows %d cols %d bank %d k %d", rows, cols, B, k);
                    REQUIRE(bsmat_init(&back, rows, cols, B, k) == BALSA_OK);
                    bs_unpack(&s, v, o, &back);
                    size_t cn = (size_t)rows * m.nbanks * k;
                    CHECK_MSG(memcmp(back.values, m.values, cn * sizeof(float)) == 0 &&
                                  memcmp(back.offsets, m.offsets, cn) == 0,
                              "round trip differs: rows %d cols %d bank %d k %d", rows, cols,
                              B, k);
                    bsmat_free(&back);
                    bsmat_free(&m);
                    free(v);
                    free(o);
                    free(seen);
                    free(d);
                }
}

static int quick(void)
{
    const char *q = getenv("BALSA_TEST_QUICK");
    return q && *q && strcmp(q, "0") != 0;
}

/* Backend buffer of n floats holding host data src (or zeros). */
static float *dev_copy(balsa_backend *be, const float *src, size_t n)
{
    float *d = be->ops->alloc(be, n * sizeof(float));
    if (d && src && be->ops->to_device(be, d, src, n * sizeof(float)) != BALSA_OK) {
        be->ops->free(be, d);
        return NULL;
    }
    return d;
}

typedef struct {
    int rows, cols, bank, k, n;
    int bias, accumulate, act, ldx_pad, ldy_pad;
} spmm_case;

/* Runs one product on the GPU and checks it against float64 (bound relative to the sum
 * of |terms|, so cancellation cannot hide an error; the 1e-4 floor covers fp16's
 * subnormal weights, whose rounding is absolute) and against spmm_ref, and checks every
 * sentinel. tol is the relative bound for the value precision. */
static void check_spmm_case(balsa_backend *be, const char *label, double tol,
                            const spmm_case *t, unsigned long long seed, int dense)
{
    int rows = t->rows, cols = t->cols, n = t->n;
    int ldx = cols + t->ldx_pad, ldy = rows + t->ldy_pad;
    float *d = rand_buf((size_t)rows * cols, 1.0f, &seed);
    bsmat m;
    REQUIRE(bsmat_prune(d, rows, cols, cols, t->bank, t->k, &m) == BALSA_OK);
    float *wd = malloc(sizeof(float) * rows * cols);
    bsmat_to_dense(&m, wd, cols);
    float *x = rand_buf((size_t)n * ldx, 1.0f, &seed);
    float *bias = t->bias ? rand_buf(rows, 0.5f, &seed) : NULL;
    /* y0buf: GUARD sentinels, then the n x ldy output (row padding set to sentinels),
     * then 64 more sentinels */
    size_t ylen = (size_t)n * ldy + 64;
    float *y0buf = rand_buf(GUARD + ylen, 1.0f, &seed), *y0 = y0buf + GUARD;
    for (int j = 0; j < GUARD; j++)
        y0buf[j] = SENTINEL;
    for (int i = 0; i < n; i++)
        for (int r = rows; r < ldy; r++)
            y0[(size_t)i * ldy + r] = SENTINEL;
    for (size_t j = (size_t)n * ldy; j < ylen; j++)
        y0[j] = SENTINEL;

    balsa_mat *w = NULL;
    balsa_status st = dense ? be->ops->upload_dense(be, wd, rows, cols, &w)
                            : be->ops->upload_sparse(be, &m, &w);
    float *dx = dev_copy(be, x, (size_t)n * ldx), *dyb = dev_copy(be, y0buf, GUARD + ylen);
    float *dy = dyb ? dyb + GUARD : NULL;
    float *db = bias ? dev_copy(be, bias, rows) : NULL;
    float *ybuf = malloc(sizeof(float) * (GUARD + ylen)), *y = ybuf + GUARD;
    CHECK_MSG(st == BALSA_OK && dx && dy && (!bias || db), "%s: upload failed", label);
    if (st == BALSA_OK && dx && dy && (!bias || db)) {
        st = be->ops->matmul(be, w, dx, ldx, n, db, t->accumulate, (balsa_act)t->act, dy, ldy);
        CHECK_MSG(st == BALSA_OK, "%s: matmul: %s", label, balsa_status_str(st));
        CHECK(be->ops->to_host(be, ybuf, dyb, (GUARD + ylen) * sizeof(float)) == BALSA_OK);
        float *yr = malloc(sizeof(float) * ylen);
        memcpy(yr, y0, sizeof(float) * ylen);
        spmm_ref(&m, x, ldx, n, bias, t->accumulate, (balsa_act)t->act, yr, ldy);
        double worst = 0;
        int guards_ok = 1;
        for (int i = 0; i < n; i++) {
            for (int r = 0; r < rows; r++) {
                double s = 0, mag = 0;
                for (int c = 0; c < cols; c++) {
                    double p = (double)wd[(size_t)r * cols + c] * x[(size_t)i * ldx + c];
                    s += p;
                    mag += fabs(p);
                }
                if (bias) {
                    s += bias[r];
                    mag += fabs(bias[r]);
                }
                if (t->accumulate) {
                    s += y0[(size_t)i * ldy + r];
                    mag += fabs(y0[(size_t)i * ldy + r]);
                }
                double want = t->act == BALSA_ACT_RELU      ? (s > 0 ? s : 0)
                              : t->act == BALSA_ACT_SIGMOID ? 1 / (1 + exp(-s))
                              : t->act == BALSA_ACT_TANH    ? tanh(s)
                                                            : s;
                float got = y[(size_t)i * ldy + r], ref = yr[(size_t)i * ldy + r];
                double e1 = fabs(got - want) / (mag + 1e-4);
                double e2 = fabs(got - ref) / (mag + 1e-4);
                if (isnan(got))
                    e1 = INFINITY;
                worst = fmax(worst, fmax(e1, e2));
            }
            for (int r = rows; r < ldy; r++)
                guards_ok &= y[(size_t)i * ldy + r] == SENTINEL;
        }
        for (size_t j = (size_t)n * ldy; j < ylen; j++)
            guards_ok &= y[j] == SENTINEL;
        for (int j = 0; j < GUARD; j++)
            guards_ok &= ybuf[j] == SENTINEL;
        CHECK_MSG(worst <= tol,
                  "%s: %dx%d bank %d k %d n %d bias %d acc %d act %d: error %.3g > %.3g",
                  label, rows, cols, t->bank, t->k, n, t->bias, t->accumulate, t->act, worst,
                  tol);
        CHECK_MSG(guards_ok, "%s: %dx%d bank %d k %d n %d: a sentinel was overwritten", label,
                  rows, cols, t->bank, t->k, n);
        free(yr);
    }
    be->ops->free(be, dx);
    be->ops->free(be, dyb);
    be->ops->free(be, db);
    be->ops->mat_free(be, w);
    CHECK(be->ops->synchronize(be) == BALSA_OK);
    free(ybuf);
    free(y0buf);
    free(bias);
    free(x);
    free(wd);
    free(d);
    bsmat_free(&m);
}

/* The awkward shapes, each with one batch from 1, 3, 8, 64 and its own bank, k,
 * epilogue and strides; then shapes long enough that rows are split over blocks. */
static int make_cases(spmm_case *out, int max)
{
    int sizes[] = {1, 7, 33, 129}, batches[] = {1, 3, 8, 64};
    int banks[] = {4, 7, 16, 32, 64, 256}, ks[] = {1, 2, 3, 4, 6, 8, 16};
    int nc = 0;
    for (int ri = 0; ri < 4; ri++)
        for (int ci = 0; ci < 4; ci++)
            for (int bi = 0; bi < 4; bi++) {
                if (quick() && (bi == 1 || bi == 3))
                    continue;
                int si = ri * 4 + ci;
                spmm_case c;
                c.rows = sizes[ri];
                c.cols = sizes[ci];
                c.n = batches[bi];
                c.bank = banks[(si + bi) % 6];
                c.k = ks[(si * 3 + bi) % 7];
                if (c.k > c.bank)
                    c.k = c.bank;
                c.bias = (si + bi) % 2;
                c.accumulate = (si / 2 + bi) % 2;
                c.act = (si + 2 * bi) % 4;
                c.ldx_pad = si % 3;
                c.ldy_pad = (bi % 2) * 5;
                if (nc < max)
                    out[nc++] = c;
            }
    spmm_case big[] = {
        {40, 20000, 32, 4, 8, 1, 0, 0, 0, 0},   /* batch 8, split over 20 blocks */
        {16, 40000, 32, 8, 1, 0, 1, 3, 3, 2},   /* batch 1, split over 5 blocks */
        {1000, 3000, 64, 6, 3, 1, 1, 1, 1, 1},  /* 64-wide banks, k = 6 (vec 2) */
        {2600, 650, 32, 6, 1, 1, 0, 2, 0, 0},   /* an LSTM gate matrix, hidden 650 */
        {129, 1000, 256, 100, 64, 0, 1, 0, 0, 3} /* 256-wide banks, vec 4, batch 64 */
    };
    for (size_t i = 0; i < sizeof big / sizeof *big; i++)
        if (nc < max && (!quick() || i < 2))
            out[nc++] = big[i];
    return nc;
}

/* The cell state gc (n x H) and output gh (n rows of ldh in an hlen buffer) a backend
 * gave, against the reference's c and h: the largest absolute error (infinite on a NaN
 * in gh). *guards_ok is 0 when a sentinel of gh (past H in a row, past the n rows) was
 * overwritten, else 1. */
static double cell_error(const float *gc, const float *gh, const float *c, const float *h,
                         int n, int H, int ldh, size_t hlen, int *guards_ok)
{
    double worst = 0;
    *guards_ok = 1;
    for (int r = 0; r < n; r++) {
        for (int j = 0; j < H; j++) {
            worst = fmax(worst, fabs(gc[(size_t)r * H + j] - c[(size_t)r * H + j]));
            worst = fmax(worst, fabs(gh[(size_t)r * ldh + j] - h[(size_t)r * ldh + j]));
            if (isnan(gh[(size_t)r * ldh + j]))
                worst = INFINITY;
        }
        for (int j = H; j < ldh; j++)
            *guards_ok &= gh[(size_t)r * ldh + j] == SENTINEL;
    }
    for (size_t i = (size_t)n * ldh; i < hlen; i++)
        *guards_ok &= gh[i] == SENTINEL;
    return worst;
}

/* The fused cell against lstm_cell_ref for n rows of `hidden` units, with strides and
 * sentinels around h. */
static void check_lstm_cell(balsa_backend *be, int n, int H, unsigned long long seed)
{
    int ldg = 4 * H + 3, ldh = H + 2;
    float *g = rand_buf((size_t)n * ldg, 3.0f, &seed);
    float *c = rand_buf((size_t)n * H, 1.0f, &seed);
    size_t hlen = (size_t)n * ldh + 16;
    float *h = malloc(sizeof(float) * hlen);
    for (size_t i = 0; i < hlen; i++)
        h[i] = SENTINEL;
    float *dg = dev_copy(be, g, (size_t)n * ldg), *dc = dev_copy(be, c, (size_t)n * H);
    float *dh = dev_copy(be, h, hlen);
    float *gc = malloc(sizeof(float) * n * H), *gh = malloc(sizeof(float) * hlen);
    CHECK(dg && dc && dh);
    if (dg && dc && dh) {
        CHECK(be->ops->lstm_cell(be, dg, ldg, dc, dh, ldh, n, H) == BALSA_OK);
        CHECK(be->ops->to_host(be, gc, dc, sizeof(float) * n * H) == BALSA_OK);
        CHECK(be->ops->to_host(be, gh, dh, sizeof(float) * hlen) == BALSA_OK);
        lstm_cell_ref(g, ldg, c, h, ldh, n, H);
        int guards_ok;
        double worst = cell_error(gc, gh, c, h, n, H, ldh, hlen, &guards_ok);
        CHECK_MSG(worst < 2e-6, "n %d hidden %d: error %g", n, H, worst);
        CHECK_MSG(guards_ok, "n %d hidden %d: a sentinel was overwritten", n, H);
    }
    be->ops->free(be, dg);
    be->ops->free(be, dc);
    be->ops->free(be, dh);
    free(g);
    free(c);
    free(h);
    free(gc);
    free(gh);
}

/* check_lstm_cell over batches 1, 3, 8 and hidden sizes 1, 7, 650. */
static void check_lstm_cells(balsa_backend *be)
{
    int ns[] = {1, 3, 8}, hs[] = {1, 7, 650};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            check_lstm_cell(be, ns[a], hs[b], 31 + 3 * a + b);
}

/* The softmax head against softmax_ref for n rows of cols values with strides, both
 * heads, out of place (sentinels around y) and in place. The inputs span about 200, so
 * some values fall below e^-87, where the head may write 0. Softmax is held to 1e-6
 * relative plus 1e-37 absolute, log-softmax to 1e-6 of 1 + |value|. */
static void check_softmax(balsa_backend *be, int n, int cols, int take_log,
                          unsigned long long seed)
{
    int ldx = cols + 3, ldy = cols + 1;
    float *x = rand_buf((size_t)n * ldx, 100.0f, &seed);
    size_t ylen = (size_t)n * ldy + GUARD;
    float *y = malloc(sizeof(float) * ylen), *want = malloc(sizeof(float) * (size_t)n * ldx);
    size_t glen = ylen > (size_t)n * ldx ? ylen : (size_t)n * ldx;
    float *got = malloc(sizeof(float) * glen);
    for (size_t i = 0; i < ylen; i++)
        y[i] = SENTINEL;
    softmax_ref(x, ldx, n, cols, take_log, want, ldx);
    float *dx = dev_copy(be, x, (size_t)n * ldx), *dy = dev_copy(be, y, ylen);
    CHECK(dx && dy);
    for (int inplace = 0; dx && dy && inplace < 2; inplace++) {
        int ld = inplace ? ldx : ldy;
        CHECK(be->ops->softmax(be, dx, ldx, n, cols, take_log, inplace ? dx : dy, ld) ==
              BALSA_OK);
        CHECK(be->ops->to_host(be, got, inplace ? dx : dy,
                               sizeof(float) * (inplace ? (size_t)n * ldx : ylen)) == BALSA_OK);
        CHECK(be->ops->synchronize(be) == BALSA_OK);
        double worst = 0;
        int guards_ok = 1;
        for (int r = 0; r < n; r++)
            for (int i = 0; i < ld; i++) {
                float a = got[(size_t)r * ld + i], b = want[(size_t)r * ldx + i];
                if (i >= cols) {
                    guards_ok &= a == (inplace ? x[(size_t)r * ldx + i] : SENTINEL);
                    continue;
                }
                double e = take_log ? fabs(a - b) / (1.0 + fabs(b))
                                    : fmax(fabs(a - b) - 1e-37, 0.0) / fmax(fabs(b), 1e-30);
                worst = fmax(worst, isnan(a) ? INFINITY : e);
            }
        for (size_t i = (size_t)n * ldy; !inplace && i < ylen; i++)
            guards_ok &= got[i] == SENTINEL;
        CHECK_MSG(worst < 1e-6, "%s %d x %d%s: error %g", take_log ? "log-softmax" : "softmax",
                  n, cols, inplace ? " in place" : "", worst);
        CHECK_MSG(guards_ok, "%d x %d: a value past the row was written", n, cols);
    }
    be->ops->free(be, dx);
    be->ops->free(be, dy);
    free(x);
    free(y);
    free(want);
    free(got);
}

/* check_softmax over 1, 3 and 17 rows of 1, 9, 1000 and 10,000 values, both heads. */
static void check_softmaxes(balsa_backend *be)
{
    int ns[] = {1, 3, 17}, cs[] = {1, 9, 1000, 10000};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 4; b++)
            for (int lg = 0; lg < 2; lg++)
                check_softmax(be, ns[a], cs[b], lg, 71 + 8 * a + 2 * b + lg);
}

#ifndef BALSA_GPU_ONLY
/* The checks the GPU tests make, run on the CPU backend: they must pass there, so a
 * failure on a GPU is the GPU's, not a slip in the checks (reference, tolerance,
 * sentinels). lstm_step is optional and the CPU backend has none. */
TEST(checks_pass_on_cpu_backend)
{
    balsa_backend *be = NULL;
    REQUIRE(balsa_backend_cpu_create(1, &be) == BALSA_OK);
    spmm_case cases[80];
    int nc = make_cases(cases, 80);
    for (int i = 0; i < nc; i++) {
        check_spmm_case(be, "cpu sparse", 3e-5, &cases[i], 1000 + i, 0);
        check_spmm_case(be, "cpu dense", 3e-5, &cases[i], 2000 + i, 1);
    }
    check_lstm_cells(be);
    check_softmaxes(be);
    be->ops->destroy(be);
}
#endif

#ifndef BALSA_GPU_ONLY
/* "auto" always gives a backend; without a GPU it is the CPU, and why says why, naming
 * CUDA. "cuda" either works or fails clearly; an unknown name is refused. */
TEST(backend_choice_falls_back)
{
    char why[256] = "";
    balsa_backend *be = NULL;
    REQUIRE(balsa_backend_create("auto", 1, &be, why, sizeof why) == BALSA_OK);
    printf("  auto: %s\n", why);
    if (strcmp(be->ops->name, "cpu") == 0)
        CHECK_MSG(strstr(why, "CUDA") != NULL, "why does not name CUDA: %s", why);
    else
        CHECK(strcmp(be->ops->name, "cuda") == 0 && strstr(why, "cuda") != NULL);
    int auto_is_cuda = strcmp(be->ops->name, "cuda") == 0;
    be->ops->destroy(be);

    be = NULL;
    why[0] = 0;
    balsa_status st = balsa_backend_create("cuda", 1, &be, why, sizeof why);
    printf("  cuda: %s\n", why);
    if (st == BALSA_OK) {
        CHECK(auto_is_cuda && strcmp(be->ops->name, "cuda") == 0);
        be->ops->destroy(be);
    } else {
        CHECK(st == BALSA_ERR_UNSUPPORTED && !auto_is_cuda);
        CHECK_MSG(strstr(why, "CUDA") != NULL, "why does not name CUDA: %s", why);
    }
    CHECK(balsa_backend_create("cpu", 1, &be, why, sizeof why) == BALSA_OK &&
          strcmp(be->ops->name, "cpu") == 0);
    be->ops->destroy(be);
    CHECK(balsa_backend_create("tpu", 1, &be, why, sizeof why) == BALSA_ERR_INVALID);
}
#endif

#ifdef BALSA_CUDA
/* Bad options are refused before any device is touched, so this runs anywhere. */
TEST(cuda_options_checked)
{
    char why[200] = "";
    balsa_backend *be = NULL;
    /* 3: past the last storage type but inside the enum's value range, so that reading
     * it is defined behaviour in the C++ side too */
    balsa_cuda_options bad = {0, (balsa_cuda_values)3, 0, 0};
    CHECK(balsa_backend_cuda_create(&bad, &be, why, sizeof why) == BALSA_ERR_INVALID);
    balsa_cuda_options bad2 = {0, BALSA_CUDA_F32, 3, 0};
    CHECK(balsa_backend_cuda_create(&bad2, &be, why, sizeof why) == BALSA_ERR_INVALID);
    balsa_status st = balsa_backend_cuda_create(NULL, &be, why, sizeof why);
    if (st == BALSA_OK)
        be->ops->destroy(be);
    else
        CHECK_MSG(st == BALSA_ERR_UNSUPPORTED && why[0], "status %d, why \"%s\"", st, why);
}

static balsa_backend *gpu_backend_pdl(balsa_cuda_values values, int version, int pdl,
                                      char *why, size_t whylen)
{
    balsa_cuda_options o = {0, values, version, pdl};
    balsa_backend *be = NULL;
    return balsa_backend_cuda_create(&o, &be, why, whylen) == BALSA_OK ? be : NULL;
}

static balsa_backend *gpu_backend(balsa_cuda_values values, int version, char *why,
                                  size_t whylen)
{
    return gpu_backend_pdl(values, version, 0, why, whylen);
}

static void spmm_all_cases(balsa_cuda_values values, int version, double tol, int dense)
{
    char why[256];
    balsa_backend *be = gpu_backend(values, version, why, sizeof why);
    if (!be)
        SKIP("no CUDA device: %s", why);
    spmm_case cases[80];
    int nc = make_cases(cases, 80);
    char label[160];
    snprintf(label, sizeof label, "%.128s%s", be->describe, dense ? " dense" : "");
    for (int i = 0; i < nc; i++)
        check_spmm_case(be, label, tol, &cases[i], 1000 + i, dense);
    be->ops->destroy(be);
}

TEST(spmm_kernel2_fp32) { spmm_all_cases(BALSA_CUDA_F32, 2, 3e-5, 0); }
TEST(spmm_kernel1_fp32)
{
    if (quick())
        SKIP("quick mode");
    spmm_all_cases(BALSA_CUDA_F32, 1, 3e-5, 0);
}
TEST(spmm_kernel2_fp16)
{
    if (quick())
        SKIP("quick mode");
    spmm_all_cases(BALSA_CUDA_F16, 2, 6e-4, 0);
}
TEST(spmm_kernel2_bf16)
{
    if (quick())
        SKIP("quick mode");
    spmm_all_cases(BALSA_CUDA_BF16, 2, 4.5e-3, 0);
}
TEST(dense_cublas_fp32) { spmm_all_cases(BALSA_CUDA_F32, 2, 3e-5, 1); }

/* The same product twice gives the same bits (no atomics), split rows included. */
TEST(spmm_deterministic)
{
    char why[256];
    balsa_backend *be = gpu_backend(BALSA_CUDA_F32, 2, why, sizeof why);
    if (!be)
        SKIP("no CUDA device: %s", why);
    unsigned long long seed = 5;
    int rows = 500, cols = 30000, n = 8;
    float *d = rand_buf((size_t)rows * cols, 1.0f, &seed);
    float *x = rand_buf((size_t)n * cols, 1.0f, &seed);
    bsmat m;
    REQUIRE(bsmat_prune(d, rows, cols, cols, 32, 4, &m) == BALSA_OK);
    balsa_mat *w = NULL;
    REQUIRE(be->ops->upload_sparse(be, &m, &w) == BALSA_OK);
    float *dx = dev_copy(be, x, (size_t)n * cols), *dy = dev_copy(be, NULL, (size_t)n * rows);
    float *a = malloc(sizeof(float) * n * rows), *b = malloc(sizeof(float) * n * rows);
    CHECK(be->ops->matmul(be, w, dx, cols, n, NULL, 0, BALSA_ACT_NONE, dy, rows) == BALSA_OK);
    CHECK(be->ops->to_host(be, a, dy, sizeof(float) * n * rows) == BALSA_OK);
    CHECK(be->ops->matmul(be, w, dx, cols, n, NULL, 0, BALSA_ACT_NONE, dy, rows) == BALSA_OK);
    CHECK(be->ops->to_host(be, b, dy, sizeof(float) * n * rows) == BALSA_OK);
    CHECK(memcmp(a, b, sizeof(float) * n * rows) == 0);
    be->ops->free(be, dx);
    be->ops->free(be, dy);
    be->ops->mat_free(be, w);
    be->ops->destroy(be);
    bsmat_free(&m);
    free(a);
    free(b);
    free(d);
    free(x);
}

/* The row-wise ops: the LSTM cell and the softmax head. */
TEST(cell_and_softmax_match_reference)
{
    char why[256];
    balsa_backend *be = gpu_backend(BALSA_CUDA_F32, 2, why, sizeof why);
    if (!be)
        SKIP("no CUDA device: %s", why);
    check_lstm_cells(be);
    check_softmaxes(be);
    be->ops->destroy(be);
}

/* One recurrent step (lstm_step): gates_in + W_hh h_prev, then the cell; against
 * spmm_ref + lstm_cell_ref, with strides and sentinels around h. Covers the fused kernel,
 * kernel 1 and dense matrices (product then cell), and a hidden size too large for the
 * fused kernel's shared memory (its fallback). */
static void check_lstm_step(balsa_backend *be, const bsmat *w, int dense, int n,
                            unsigned long long seed)
{
    int H = w->cols, ldhp = H + 1, ldg = 4 * H + 2, ldh = H + 3;
    float *hp = rand_buf((size_t)n * ldhp, 1.0f, &seed);
    float *g = rand_buf((size_t)n * ldg, 1.0f, &seed);
    float *c = rand_buf((size_t)n * H, 1.0f, &seed);
    size_t hlen = (size_t)n * ldh + 16;
    float *h = malloc(sizeof(float) * hlen), *gh = malloc(sizeof(float) * hlen);
    float *gc = malloc(sizeof(float) * n * H);
    for (size_t i = 0; i < hlen; i++)
        h[i] = SENTINEL;
    balsa_mat *m = NULL;
    balsa_status st;
    if (dense) {
        float *wd = malloc(sizeof(float) * 4 * H * H);
        bsmat_to_dense(w, wd, H);
        st = be->ops->upload_dense(be, wd, 4 * H, H, &m);
        free(wd);
    } else {
        st = be->ops->upload_sparse(be, w, &m);
    }
    float *dhp = dev_copy(be, hp, (size_t)n * ldhp), *dg = dev_copy(be, g, (size_t)n * ldg);
    float *dc = dev_copy(be, c, (size_t)n * H), *dh = dev_copy(be, h, hlen);
    CHECK(st == BALSA_OK && dhp && dg && dc && dh);
    if (st == BALSA_OK && dhp && dg && dc && dh) {
        CHECK(be->ops->lstm_step(be, m, dhp, ldhp, dg, ldg, dc, dh, ldh, n, H) == BALSA_OK);
        CHECK(be->ops->to_host(be, gh, dh, sizeof(float) * hlen) == BALSA_OK);
        CHECK(be->ops->to_host(be, gc, dc, sizeof(float) * n * H) == BALSA_OK);
        spmm_ref(w, hp, ldhp, n, NULL, 1, BALSA_ACT_NONE, g, ldg);
        lstm_cell_ref(g, ldg, c, h, ldh, n, H);
        int guards_ok;
        double worst = cell_error(gc, gh, c, h, n, H, ldh, hlen, &guards_ok);
        CHECK_MSG(worst < 1e-4, "%s: hidden %d bank %d k %d n %d dense %d: error %g",
                  be->describe, H, w->bank, w->k, n, dense, worst);
        CHECK_MSG(guards_ok, "hidden %d n %d: a sentinel was overwritten", H, n);
    }
    be->ops->free(be, dhp);
    be->ops->free(be, dg);
    be->ops->free(be, dc);
    be->ops->free(be, dh);
    be->ops->mat_free(be, m);
    free(hp);
    free(g);
    free(c);
    free(h);
    free(gh);
    free(gc);
}

TEST(lstm_step_matches_reference)
{
    char why[256];
    balsa_backend *be = gpu_backend(BALSA_CUDA_F32, 2, why, sizeof why);
    if (!be)
        SKIP("no CUDA device: %s", why);
    balsa_backend *be1 = gpu_backend(BALSA_CUDA_F32, 1, why, sizeof why);
    REQUIRE(be1 && be->ops->lstm_step);
    int hs[] = {1, 7, 33, 650}, ns[] = {1, 3, 8}, banks[] = {4, 32, 64}, ks[] = {1, 6, 8};
    unsigned long long seed = 404;
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 3; b++) {
            int H = hs[a], B = banks[(a + b) % 3], k = ks[(a + 2 * b) % 3];
            if (k > B)
                k = B;
            float *d = rand_buf((size_t)4 * H * H, 0.5f, &seed);
            bsmat w;
            REQUIRE(bsmat_prune(d, 4 * H, H, H, B, k, &w) == BALSA_OK);
            check_lstm_step(be, &w, 0, ns[b], seed + 1);
            if (!quick()) {
                check_lstm_step(be1, &w, 0, ns[b], seed + 2);
                check_lstm_step(be, &w, 1, ns[b], seed + 3);
            }
            bsmat_free(&w);
            free(d);
        }
    if (!quick()) { /* hidden 12000: h_prev does not fit the fused kernel */
        bsmat w;
        REQUIRE(bsmat_init(&w, 4 * 12000, 12000, 32, 1) == BALSA_OK);
        for (size_t i = 0; i < (size_t)w.rows * w.nbanks; i++)
            w.values[i] = 0.1f * h_rand_f(&seed);
        check_lstm_step(be, &w, 0, 2, seed);
        bsmat_free(&w);
    }
    be1->ops->destroy(be1);
    be->ops->destroy(be);
}

/* A chain of steps, each reading the h the previous one wrote, gives the same bits with
 * programmatic dependent launch as without: the fused kernel waits for its predecessor
 * before it reads h_prev, gates and c. */
TEST(lstm_step_pdl_chain)
{
    char why[256];
    balsa_backend *be[2] = {gpu_backend_pdl(BALSA_CUDA_F32, 2, 0, why, sizeof why),
                            gpu_backend_pdl(BALSA_CUDA_F32, 2, 1, why, sizeof why)};
    if (!be[0] || !be[1]) {
        for (int i = 0; i < 2; i++)
            if (be[i])
                be[i]->ops->destroy(be[i]);
        SKIP("no CUDA device: %s", why);
    }
    const int H = 650, T = 12;
    unsigned long long seed = 606;
    float *d = rand_buf((size_t)4 * H * H, 0.2f, &seed);
    bsmat w;
    REQUIRE(bsmat_prune(d, 4 * H, H, H, 32, 6, &w) == BALSA_OK);
    for (int n = 1; n <= 3; n += 2) {
        float *g = rand_buf((size_t)T * n * 4 * H, 1.0f, &seed);
        float *h0 = rand_buf((size_t)n * H, 1.0f, &seed);
        float *out[2];
        for (int k = 0; k < 2; k++) {
            balsa_backend *b = be[k];
            balsa_mat *m = NULL;
            REQUIRE(b->ops->upload_sparse(b, &w, &m) == BALSA_OK);
            float *dg = dev_copy(b, g, (size_t)T * n * 4 * H);
            float *dh = dev_copy(b, NULL, (size_t)(T + 1) * n * H);
            float *dc = dev_copy(b, NULL, (size_t)n * H);
            REQUIRE(dg && dh && dc);
            CHECK(b->ops->to_device(b, dh, h0, sizeof(float) * n * H) == BALSA_OK);
            for (int t = 0; t < T; t++)
                CHECK(b->ops->lstm_step(b, m, dh + (size_t)t * n * H, H,
                                        dg + (size_t)t * n * 4 * H, 4 * H, dc,
                                        dh + (size_t)(t + 1) * n * H, H, n, H) == BALSA_OK);
            out[k] = malloc(sizeof(float) * (T + 1) * n * H);
            CHECK(b->ops->to_host(b, out[k], dh, sizeof(float) * (T + 1) * n * H) == BALSA_OK);
            b->ops->free(b, dg);
            b->ops->free(b, dh);
            b->ops->free(b, dc);
            b->ops->mat_free(b, m);
        }
        CHECK_MSG(memcmp(out[0], out[1], sizeof(float) * (T + 1) * n * H) == 0,
                  "n %d: PDL changed the result", n);
        free(out[0]);
        free(out[1]);
        free(g);
        free(h0);
    }
    bsmat_free(&w);
    free(d);
    be[0]->ops->destroy(be[0]);
    be[1]->ops->destroy(be[1]);
}

/* Bad arguments are refused without touching the device, which stays usable. */
TEST(invalid_arguments_refused)
{
    char why[256];
    balsa_backend *be = gpu_backend(BALSA_CUDA_F32, 2, why, sizeof why);
    if (!be)
        SKIP("no CUDA device: %s", why);
    unsigned long long seed = 8;
    float *d = rand_buf(40 * 50, 1.0f, &seed);
    bsmat m;
    REQUIRE(bsmat_prune(d, 40, 50, 50, 16, 4, &m) == BALSA_OK);
    balsa_mat *w = NULL;
    REQUIRE(be->ops->upload_sparse(be, &m, &w) == BALSA_OK);
    float *dx = dev_copy(be, NULL, 200), *dy = dev_copy(be, NULL, 200);
    CHECK(be->ops->matmul(be, w, dx, 49, 1, NULL, 0, BALSA_ACT_NONE, dy, 40) ==
          BALSA_ERR_INVALID);
    CHECK(be->ops->matmul(be, w, dx, 50, 1, NULL, 0, BALSA_ACT_NONE, dy, 39) ==
          BALSA_ERR_INVALID);
    CHECK(be->ops->matmul(be, w, dx, 50, -1, NULL, 0, BALSA_ACT_NONE, dy, 40) ==
          BALSA_ERR_INVALID);
    CHECK(be->ops->lstm_cell(be, dx, 7, dy, dy + 100, 2, 1, 2) == BALSA_ERR_INVALID);
    /* 40 x 50 is not 4*hidden x hidden for any hidden */
    CHECK(be->ops->lstm_step(be, w, dx, 50, dy, 200, dy, dx, 50, 1, 10) == BALSA_ERR_INVALID);
    CHECK(be->ops->matmul(be, w, dx, 50, 0, NULL, 0, BALSA_ACT_NONE, dy, 40) == BALSA_OK);
    CHECK(be->ops->matmul(be, w, dx, 50, 1, NULL, 0, BALSA_ACT_NONE, dy, 40) == BALSA_OK);
    CHECK(be->ops->synchronize(be) == BALSA_OK);
    m.offsets[1] = m.offsets[0]; /* not ascending: refused at upload */
    balsa_mat *bad = NULL;
    CHECK(be->ops->upload_sparse(be, &m, &bad) == BALSA_ERR_INVALID);
    be->ops->free(be, dx);
    be->ops->free(be, dy);
    be->ops->mat_free(be, w);
    be->ops->destroy(be);
    bsmat_free(&m);
    free(d);
}
#else
TEST(cuda_ops_match_reference) { SKIP("this build has no CUDA backend (BALSA_CUDA unset)"); }
#endif

int main(void)
{
    RUN(bs_math_matches_formulas);
    RUN(pack_round_trip_and_layout);
#ifndef BALSA_GPU_ONLY
    RUN(checks_pass_on_cpu_backend);
    RUN(backend_choice_falls_back);
#endif
#ifdef BALSA_CUDA
    RUN(cuda_options_checked);
    RUN(spmm_kernel2_fp32);
    RUN(spmm_kernel1_fp32);
    RUN(spmm_kernel2_fp16);
    RUN(spmm_kernel2_bf16);
    RUN(dense_cublas_fp32);
    RUN(spmm_deterministic);
    RUN(cell_and_softmax_match_reference);
    RUN(lstm_step_matches_reference);
    RUN(lstm_step_pdl_chain);
    RUN(invalid_arguments_refused);
#else
    RUN(cuda_ops_match_reference);
#endif
    HARNESS_END();
}
