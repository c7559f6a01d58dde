/* AVX2 + FMA kernels of the CPU backend (this file is compiled with -mavx2 -mfma and its
 * functions run only after the dispatcher has seen the CPU support them):
 *  - balanced-sparse products over the packed layout with groups of 8 rows (cpu.h).
 *    Batch 1, banks up to 16 columns: the bank's slice of x sits in one or two registers
 *    and vpermps picks x[offset] for the 8 rows (lanes) at once (a blend on offset bit 3
 *    joins two registers). Banks of 32 and more: each lane's x[offset] is loaded into its
 *    place, the slot's 8 offsets coming in one 64-bit load (measured 2x faster than four vpermps and
 *    three blends per slot on AMD Zen, where vpermps costs 3 micro-ops).
 *    Batch 2 and more: the "transposed" kernel: X is transposed once per product into
 *    [column][batch] so that every weight, loaded once, multiplies 4, 8 or 16 batch
 *    columns with one broadcast and one or two FMAs; a wide input is swept in blocks
 *    of banks whose slice of X fits the L1 cache.
 *  - the LSTM cell with vectorised sigmoid and tanh;
 *  - the softmax head with the same vectorised exponential. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "cpu.h"

/* From this batch size on, the transposed kernel is used: measured on AMD EPYC (Zen) it
 * matched two batch-1 passes at batch 2 and beat one pass per column from batch 4 on. */
#define XT_MIN_BATCH 2

/* ---- Vector math ------------------------------------------------------------------------ */

/* e^x for each of x[0..n) in place, n <= 8, for x in [-87, 88] (clamped outside),
 * relative error at most 1.2e-7 (2 ulp; every float in that range checked against double
 * precision): x = k ln2 + r with |r| <= ln2/2, e^r = 1 + r + r^2 q(r), 2^k added into the
 * exponent bits. q is of degree 4, fitted for the least largest relative error over r's
 * range (3e-9, well below float rounding; kernels/cpu/fit_poly.py); Cephes' q of degree 5,
 * one FMA more, gave the same largest error and a 5% slower LSTM cell. The n inputs go
 * step by step together (every step for all of them, then the next): one e^x is a chain
 * of about a dozen dependent operations, and the LSTM cell, which then took five per unit,
 * ran latency-bound with them one after the other (9.6 -> 7.9 ns per unit-step, the same
 * results bit for bit). k is rounded by adding 1.5 * 2^23, which leaves it in the low
 * mantissa bits. */
static inline __attribute__((always_inline)) void exp_n_avx2(__m256 *x, int n)
{
    const __m256 shifter = _mm256_set1_ps(12582912.0f);
    __m256 kf[8], kb[8], r[8], p[8];
    /* Every loop is unrolled (n is a constant at each call), so that the arrays live in
     * registers: as loops GCC kept them in memory, and the cell ran 30% slower. */
#pragma GCC unroll 8
    for (int i = 0; i < n; i++) {
        x[i] = _mm256_min_ps(_mm256_max_ps(x[i], _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
        kb[i] = _mm256_fmadd_ps(x[i], _mm256_set1_ps(1.44269504088896341f), shifter);
        kf[i] = _mm256_sub_ps(kb[i], shifter);
    }
    /* ln2 split in two so that k * ln2_hi is exact. */
#pragma GCC unroll 8
    for (int i = 0; i < n; i++)
        r[i] = _mm256_fnmadd_ps(kf[i], _mm256_set1_ps(0.693359375f), x[i]);
#pragma GCC unroll 8
    for (int i = 0; i < n; i++)
        r[i] = _mm256_fnmadd_ps(kf[i], _mm256_set1_ps(-2.12194440e-4f), r[i]);
#pragma GCC unroll 8
    for (int i = 0; i < n; i++)
        p[i] = _mm256_fmadd_ps(_mm256_set1_ps(1.3814540041e-3f), r[i],
                               _mm256_set1_ps(8.3687451297e-3f));
#pragma GCC unroll 8
    for (int i = 0; i < n; i++)
        p[i] = _mm256_fmadd_ps(p[i], r[i], _mm256_set1_ps(4.1668390788e-2f));
#pragma GCC unroll 8
    for (int i = 0; i < n; i++)
        p[i] = _mm256_fmadd_ps(p[i], r[i], _mm256_set1_ps(1.6666520399e-1f));
#pragma GCC unroll 8
    for (int i = 0; i < n; i++)
        p[i] = _mm256_fmadd_ps(p[i], r[i], _mm256_set1_ps(4.9999993432e-1f));
#pragma GCC unroll 8
    for (int i = 0; i < n; i++)
        p[i] = _mm256_fmadd_ps(p[i], _mm256_mul_ps(r[i], r[i]),
                               _mm256_add_ps(r[i], _mm256_set1_ps(1.0f)));
#pragma GCC unroll 8
    for (int i = 0; i < n; i++)
        x[i] = _mm256_castsi256_ps(_mm256_add_epi32(
            _mm256_castps_si256(p[i]), _mm256_slli_epi32(_mm256_castps_si256(kb[i]), 23)));
}

static inline __m256 exp_avx2(__m256 x)
{
    exp_n_avx2(&x, 1);
    return x;
}

static inline __m256 sigmoid_avx2(__m256 x)
{
    __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

/* tanh(x) = x P(x^2) / Q(x^2) with x clamped to [-9, 9] (past 9, tanh rounds to 1 within
 * 1 ulp), P and Q of degree 4 with P(0) = Q(0) = 1, fitted for the least largest relative
 * error over [0, 9] (2.1e-8; kernels/cpu/fit_poly.py tanh). In float the roundings of the
 * two Horner chains, the product and the division give at most 3.3e-7 over every float
 * in (0, 12] against double precision (2.4e-7 below |x| = 2; the function is odd bit for
 * bit). It replaced tanh from e^(2|x|) (1 - 2 / (e + 1) above |x| = 0.625, an odd
 * polynomial below; at most 1.9e-7 in the LSTM cell, 1.5e-7 in FC layers): no e^x, no
 * blend of two branches, half the operations. The LSTM cell, two tanh and three sigmoids
 * per unit, went from 6.35 to 5.06 ns per unit at 57 x 128 and from 6.49 to 5.18 at
 * 64 x 650 (min of 300 runs, in turn). */
static inline __m256 tanh_avx2(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-9.0f)), _mm256_set1_ps(9.0f));
    const __m256 z = _mm256_mul_ps(x, x), one = _mm256_set1_ps(1.0f);
    __m256 p = _mm256_set1_ps(1.3419810902e-8f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.0661253650e-5f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(3.4989954962e-3f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.3383979771e-1f));
    p = _mm256_fmadd_ps(p, z, one);
    __m256 q = _mm256_set1_ps(7.8047245754e-7f);
    q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(3.2910374499e-4f));
    q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(2.5890204129e-2f));
    q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(4.6717301252e-1f));
    q = _mm256_fmadd_ps(q, z, one);
    return _mm256_div_ps(_mm256_mul_ps(x, p), q);
}

static inline __m256 act_avx2(balsa_act act, __m256 v)
{
    switch (act) {
    case BALSA_ACT_RELU: return _mm256_max_ps(v, _mm256_setzero_ps());
    case BALSA_ACT_SIGMOID: return sigmoid_avx2(v);
    case BALSA_ACT_TANH: return tanh_avx2(v);
    default: return v;
    }
}

/* y[r0..r0+8) = act(acc + bias + (accumulate ? y : 0)) for the rows that exist. */
static inline void epilogue_avx2(const cpu_spmm_args *a, __m256 acc, int r0, float *y)
{
    const int rows = a->w->rows;
    if (r0 + 8 <= rows) {
        if (a->bias)
            acc = _mm256_add_ps(acc, _mm256_loadu_ps(a->bias + r0));
        if (a->accumulate)
            acc = _mm256_add_ps(acc, _mm256_loadu_ps(y + r0));
        _mm256_storeu_ps(y + r0, act_avx2(a->act, acc));
        return;
    }
    float t[8];
    _mm256_storeu_ps(t, acc);
    for (int l = 0; r0 + l < rows; l++) {
        float v = t[l] + (a->bias ? a->bias[r0 + l] : 0.0f);
        if (a->accumulate)
            v += y[r0 + l];
        y[r0 + l] = cpu_act(a->act, v);
    }
}

/* ---- The permute kernel (one batch column at a time) -------------------------------- */

/* x[offset] for the 8 lanes of one slot from a bank held in x0 (and x1 for 16 columns). */
static inline __attribute__((always_inline)) __m256
permute_x_avx2(__m256 x0, __m256 x1, const uint8_t *off, int nq)
{
    __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)off));
    __m256 xv = _mm256_permutevar8x32_ps(x0, idx);
    if (nq == 2) /* blendv takes the sign bit: shift offset bit 3 there */
        xv = _mm256_blendv_ps(xv, _mm256_permutevar8x32_ps(x1, idx),
                              _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
    return xv;
}

/* Sum over all banks of one group for one input vector, for banks of up to 16 columns:
 * nq 8-float x registers per bank (1 for B <= 8, 2 for B = 16). One function per nq
 * below, each not inlined into its caller, where GCC kept the accumulators on the stack. */
static inline __attribute__((always_inline)) __m256
group_permute_avx2(const cpu_packed *w, int g, const float *x, int nq)
{
    const int B = w->bank, k = w->k, cols = w->cols;
    const float *val = w->values + (size_t)g * w->nbanks * k * 8;
    const uint8_t *off = w->offsets + (size_t)g * w->nbanks * k * 8;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    /* The bank's x is read as 8 or 16 floats; where that passes cols, read a zero-padded
     * copy instead so that nothing past x is touched. */
    float pad[16] __attribute__((aligned(32)));
    const int span = nq * 8;
    for (int b = 0; b < w->nbanks; b++, val += k * 8, off += k * 8) {
        const float *xb = x + (size_t)b * B;
        if (b * B + span > cols) {
            memset(pad, 0, sizeof pad);
            memcpy(pad, xb, sizeof(float) * (size_t)(cols - b * B));
            xb = pad;
        }
        __m256 x0 = _mm256_loadu_ps(xb), x1 = nq == 2 ? _mm256_loadu_ps(xb + 8) : x0;
        /* Prefetch as in group_lanes_avx2 (2 KiB ahead; never faults). */
        _mm_prefetch((const char *)(off + 512), _MM_HINT_T0);
        int j = 0;
        for (; j + 2 <= k; j += 2) {
            _mm_prefetch((const char *)(val + j * 8 + 512), _MM_HINT_T0);
            acc0 = _mm256_fmadd_ps(_mm256_load_ps(val + j * 8),
                                   permute_x_avx2(x0, x1, off + j * 8, nq), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_load_ps(val + j * 8 + 8),
                                   permute_x_avx2(x0, x1, off + j * 8 + 8, nq), acc1);
        }
        if (j < k)
            acc0 = _mm256_fmadd_ps(_mm256_load_ps(val + j * 8),
                                   permute_x_avx2(x0, x1, off + j * 8, nq), acc0);
    }
    return _mm256_add_ps(acc0, acc1);
}

__attribute__((noinline)) static __m256 group_permute1_avx2(const cpu_packed *w, int g,
                                                            const float *x)
{
    return group_permute_avx2(w, g, x, 1);
}

__attribute__((noinline)) static __m256 group_permute2_avx2(const cpu_packed *w, int g,
                                                            const float *x)
{
    return group_permute_avx2(w, g, x, 2);
}

/* The same for banks of 32 columns and more, with scalar loads: the 8 offsets of a slot
 * come in one 64-bit load, each lane's x[offset] is loaded into its place (vinsertps from
 * memory), and one vector FMA takes the slot. On AMD Zen (vpermps costs 3 micro-ops there)
 * this was 2x faster than four vpermps and three blends per slot for 32-wide banks, and
 * faster than vgatherdps (see bench/RESULTS.md). */
/* x[offset] for the 8 lanes of one slot. Written in assembly because the loop is bound by
 * instructions issued, not by memory: GCC extracted each offset byte with a mov, a shift
 * and a movzx (20 integer instructions per slot) and loaded each x before inserting it;
 * here two offsets come out per shift (the low and high byte registers) and each x is
 * loaded by the vinsertps that places it, 21 instructions per slot against 36. */
static inline __m256 lanes_x_avx2(const float *xb, const uint8_t *off)
{
    uint64_t o, t;
    memcpy(&o, off, sizeof o);
    __m128 lo, hi;
    __asm__("movzbl %b[o], %k[t]\n\t"
            "vmovss (%[xb],%[t],4), %[lo]\n\t"
            "movzbl %h[o], %k[t]\n\t"
            "vinsertps $0x10, (%[xb],%[t],4), %[lo], %[lo]\n\t"
            "shrq $16, %[o]\n\t"
            "movzbl %b[o], %k[t]\n\t"
            "vinsertps $0x20, (%[xb],%[t],4), %[lo], %[lo]\n\t"
            "movzbl %h[o], %k[t]\n\t"
            "vinsertps $0x30, (%[xb],%[t],4), %[lo], %[lo]\n\t"
            "shrq $16, %[o]\n\t"
            "movzbl %b[o], %k[t]\n\t"
            "vmovss (%[xb],%[t],4), %[hi]\n\t"
            "movzbl %h[o], %k[t]\n\t"
            "vinsertps $0x10, (%[xb],%[t],4), %[hi], %[hi]\n\t"
            "shrq $16, %[o]\n\t"
            "movzbl %b[o], %k[t]\n\t"
            "vinsertps $0x20, (%[xb],%[t],4), %[hi], %[hi]\n\t"
            "movzbl %h[o], %k[t]\n\t"
            "vinsertps $0x30, (%[xb],%[t],4), %[hi], %[hi]"
            : [lo] "=&x"(lo), [hi] "=&x"(hi), [t] "=&Q"(t), [o] "+Q"(o)
            : [xb] "r"(xb), "m"(*(const float(*)[BSMAT_MAX_BANK])xb));
    return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

/* One group's product over all banks, for a bank's k slots known at compile time (k a
 * constant: the slot loop unrolls, and the per-bank work is one pointer add and the
 * prefetches) or not (the same loop, run). Two accumulators, alternating by slot. */
static inline __attribute__((always_inline)) __m256
lanes_banks_avx2(const cpu_packed *w, int g, const float *x, const int k)
{
    const int B = w->bank, cols = w->cols, full = cols / B;
    const float *val = w->values + (size_t)g * w->nbanks * k * 8;
    const uint8_t *off = w->offsets + (size_t)g * w->nbanks * k * 8;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    for (int b = 0; b < full; b++, val += 8 * k, off += 8 * k) {
        const float *xb = x + (size_t)b * B;
        /* Software prefetch 2 KiB ahead in both streams, a line at a time: the hardware
         * prefetcher alone left about 25% on the table (measured, 6000x3000 at 90%). A
         * prefetch past the end of the arrays is harmless: it never faults. */
#pragma GCC unroll 16
        for (int j = 0; j < k; j += 2) {
            _mm_prefetch((const char *)(val + 8 * j + 512), _MM_HINT_T0);
            if (j % 8 == 0)
                _mm_prefetch((const char *)(off + 8 * j + 512), _MM_HINT_T0);
            acc0 = _mm256_fmadd_ps(_mm256_load_ps(val + 8 * j), lanes_x_avx2(xb, off + 8 * j),
                                   acc0);
            if (j + 1 < k)
                acc1 = _mm256_fmadd_ps(_mm256_load_ps(val + 8 * j + 8),
                                       lanes_x_avx2(xb, off + 8 * j + 8), acc1);
        }
    }
    if (full < w->nbanks) { /* the last bank: offsets into its padding read zeros */
        float pad[BSMAT_MAX_BANK];
        memset(pad, 0, sizeof(float) * (size_t)B);
        memcpy(pad, x + (size_t)full * B, sizeof(float) * (size_t)(cols - full * B));
        for (int j = 0; j < k; j++)
            acc0 = _mm256_fmadd_ps(_mm256_load_ps(val + 8 * j), lanes_x_avx2(pad, off + 8 * j),
                                   acc0);
    }
    return _mm256_add_ps(acc0, acc1);
}

/* Not inlined: inside the caller GCC spilled the accumulators to the stack, turning each
 * FMA into a load-FMA-store chain (30% slower). The common k (bank 32 at 95, 93.75,
 * 90.6, 87.5, 81.25 and 75%) have a copy each: with k unknown, the per-bank loop control
 * cost a fifth of the time at k = 3. */
#define LANES_K(K)                                                                            \
    __attribute__((noinline)) static __m256 group_lanes##K##_avx2(const cpu_packed *w, int g, \
                                                                  const float *x)             \
    {                                                                                         \
        return lanes_banks_avx2(w, g, x, K);                                                  \
    }
LANES_K(1)
LANES_K(2)
LANES_K(3)
LANES_K(4)
LANES_K(6)
LANES_K(8)
#undef LANES_K

__attribute__((noinline)) static __m256 group_lanes_avx2(const cpu_packed *w, int g,
                                                         const float *x)
{
    switch (w->k) {
    case 1: return group_lanes1_avx2(w, g, x);
    case 2: return group_lanes2_avx2(w, g, x);
    case 3: return group_lanes3_avx2(w, g, x);
    case 4: return group_lanes4_avx2(w, g, x);
    case 6: return group_lanes6_avx2(w, g, x);
    case 8: return group_lanes8_avx2(w, g, x);
    default: return lanes_banks_avx2(w, g, x, w->k);
    }
}

static void spmm_permute_avx2(const cpu_spmm_args *a, int g0, int g1)
{
    const int B = a->w->bank;
    for (int i = 0; i < a->n; i++) {
        const float *x = a->x + (size_t)i * a->ldx;
        float *y = a->y + (size_t)i * a->ldy;
        for (int g = g0; g < g1; g++) {
            __m256 acc = B <= 8    ? group_permute1_avx2(a->w, g, x)
                         : B <= 16 ? group_permute2_avx2(a->w, g, x)
                                   : group_lanes_avx2(a->w, g, x);
            epilogue_avx2(a, acc, g * 8, y);
        }
    }
}

/* ---- The transposed kernel ----------------------------------------------------------- */

/* Batch columns per chunk of the transposed input: 4 (one xmm register) up to batch 4,
 * 8 (one ymm) up to batch 8, else 16 (two ymm). A 128-bit FMA is one micro-op on Zen
 * where a 256-bit one is two, so small batches do not pay for empty lanes. */
static int xt_width(int n) { return n <= 4 ? 4 : n <= 8 ? 8 : 16; }

/* The width of the chunk that starts at batch column i0: 16 while at least 16 columns
 * are left, then the narrowest width that holds the rest. The LSTM input projection of
 * 35 steps at batch 1 is 16 + 16 + 3 columns: a last chunk of 4 rather than 16 saves a
 * quarter of its work. Every chunk before the last is 16 wide, so chunk i0 starts at
 * float i0 * xt_rows in the scratch. */
static int xt_chunk_width(int n, int i0) { return xt_width(n - i0); }

/* Rows of xt per chunk: every column of every bank, the last bank's padding included, so
 * that padding offsets read zeros and the kernel needs no bounds test. */
static size_t xt_rows(const cpu_packed *w) { return (size_t)w->nbanks * w->bank; }

/* Whether a product runs on the transposed kernel: from XT_MIN_BATCH columns on, for a
 * matrix packed with column indices (cpu.h: not where the padded width passes 65536). */
static int use_xt(const cpu_packed *w, int n) { return n >= XT_MIN_BATCH && w->xoffs; }

size_t spmm_avx2_xt_floats(const cpu_packed *w, int n)
{
    if (!use_xt(w, n))
        return 0;
    int full = (n - 1) / 16 * 16; /* columns in chunks before the last */
    return ((size_t)full + (size_t)xt_chunk_width(n, full)) * xt_rows(w);
}

/* Rows 0..7 of x (row stride ldx), columns 0..7, written transposed: column j's 8 rows
 * to tr + j * nc. */
static inline void transpose8_avx2(const float *x, size_t ldx, float *tr, int nc)
{
    __m256 r0 = _mm256_loadu_ps(x), r1 = _mm256_loadu_ps(x + ldx);
    __m256 r2 = _mm256_loadu_ps(x + 2 * ldx), r3 = _mm256_loadu_ps(x + 3 * ldx);
    __m256 r4 = _mm256_loadu_ps(x + 4 * ldx), r5 = _mm256_loadu_ps(x + 5 * ldx);
    __m256 r6 = _mm256_loadu_ps(x + 6 * ldx), r7 = _mm256_loadu_ps(x + 7 * ldx);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    /* s0: columns 0 | 4 of rows 0-3, s1: 1 | 5, s2: 2 | 6, s3: 3 | 7; s4-s7 rows 4-7. */
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(tr, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(tr + nc, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(tr + 2 * nc, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(tr + 3 * nc, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(tr + 4 * nc, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(tr + 5 * nc, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(tr + 6 * nc, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(tr + 7 * nc, _mm256_permute2f128_ps(s3, s7, 0x31));
}

/* xt row tr (column c of x): rows i0..cnt-1 of x, then zeros up to nc. */
static inline void transpose_rest(const float *x, int ldx, int c, int i0, int cnt, int nc,
                                  float *tr)
{
    int i = i0;
    for (; i < cnt; i++)
        tr[i] = x[(size_t)i * ldx + c];
    for (; i < nc; i++)
        tr[i] = 0.0f;
}

void spmm_avx2_prepare(const cpu_spmm_args *a)
{
    if (!use_xt(a->w, a->n))
        return;
    const int cols = a->w->cols;
    const size_t rows = xt_rows(a->w);
    for (int i0 = 0, nc; i0 < a->n; i0 += nc) {
        nc = xt_chunk_width(a->n, i0);
        float *t = a->xt + (size_t)i0 * rows;
        /* Each xt row is written whole; unused batch lanes and the padding rows hold
         * zeros. Whole blocks of 8 input rows go 8 x 8 at a time through registers (the
         * element loop alone was 6% of the batching server's CPU at hidden 650, perf);
         * the rows and columns left over go one by one. */
        const int cnt = a->n - i0 < nc ? a->n - i0 : nc;
        const int full8 = nc >= 8 ? cnt / 8 * 8 : 0;
        const float *x = a->x + (size_t)i0 * a->ldx;
        int c = 0;
        if (full8 > 0)
            for (; c + 8 <= cols; c += 8) {
                for (int i = 0; i < full8; i += 8)
                    transpose8_avx2(x + (size_t)i * a->ldx + c, (size_t)a->ldx,
                                    t + (size_t)c * nc + i, nc);
                for (int cc = c; cc < c + 8; cc++)
                    transpose_rest(x, a->ldx, cc, full8, cnt, nc, t + (size_t)cc * nc);
            }
        for (; c < cols; c++)
            transpose_rest(x, a->ldx, c, 0, cnt, nc, t + (size_t)c * nc);
        memset(t + (size_t)cols * nc, 0, sizeof(float) * (rows - (size_t)cols) * nc);
    }
}

/* Rows l0..l0+3 of 8 batch columns c0..c0+7, one register per row, stored transposed:
 * out[c][l0..l0+3] for each column (in-lane 4x4 transposes, then 128-bit stores), so that
 * the epilogue takes a column's 8 rows in one load. It gathered them with 8 scalar loads
 * from a row-major out before, about 12% of the kernel's time at K = 256 (perf). The
 * 64-column product of the fortunes model's 1024 x 256 matrix adding into Y, as the LSTM
 * step does, went from 197 to 187 us and 512 x 128 from 65 to 60 us (a throwaway driver,
 * min of 12 runs each, alternating); `balsa bench kernels` (no accumulation), min of 3
 * runs: 1024 x 256 206 -> 204 us at batch 64 and 51 -> 49 at 16, 512 x 128 68 -> 65 and
 * 17.4 -> 16.1. No change at K >= 650. */
static inline __attribute__((always_inline)) void
store_transposed(float out[16][8], int l0, int c0, __m256 r0, __m256 r1, __m256 r2, __m256 r3)
{
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 v0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 v1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 v2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 v3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    _mm_store_ps(&out[c0][l0], _mm256_castps256_ps128(v0));
    _mm_store_ps(&out[c0 + 1][l0], _mm256_castps256_ps128(v1));
    _mm_store_ps(&out[c0 + 2][l0], _mm256_castps256_ps128(v2));
    _mm_store_ps(&out[c0 + 3][l0], _mm256_castps256_ps128(v3));
    _mm_store_ps(&out[c0 + 4][l0], _mm256_extractf128_ps(v0, 1));
    _mm_store_ps(&out[c0 + 5][l0], _mm256_extractf128_ps(v1, 1));
    _mm_store_ps(&out[c0 + 6][l0], _mm256_extractf128_ps(v2, 1));
    _mm_store_ps(&out[c0 + 7][l0], _mm256_extractf128_ps(v3, 1));
}

/* One group, one chunk of nv*8 batch columns, banks [b0, b1): the group's 8 rows start
 * from part (row-major, part[row][col]) unless b0 is 0, and end in part unless b1 is the
 * last bank, when they go to out[col][lane] for the epilogue. Four rows at a time keep
 * 4*nv independent FMA chains in flight; the accumulators are named variables because
 * GCC keeps an indexed array of them in memory. The four weights of a slot come in one
 * 128-bit load spread by four in-register shuffles (vbroadcastss from memory takes a
 * load-port slot each, and the loads are what binds this loop on Zen: 2-3% faster).
 * The slots of all the banks run as one loop, each x row found by its column index in
 * w->xoffs (four in one 64-bit load), and the next slot's indices are loaded one slot
 * ahead: every x load waits on its index, and with the indices loaded in the same slot
 * (per-bank offsets, a loop per bank) the loop ran at 3.3 cycles per weight and 16
 * columns on Zen 1, against 2.7 now (an L1-resident loop alone, min of 2000 runs). */
static inline __attribute__((always_inline)) void
group_xt_avx2(const cpu_packed *w, int g, const float *xt, int nv, int b0, int b1,
              float part[8][16], float out[16][8])
{
    const int k = w->k;
    const size_t row_bytes = (size_t)nv * 8 * sizeof(float), nslots = (size_t)(b1 - b0) * k;
    const char *xb = (const char *)xt;
    for (int l0 = 0; l0 < 8; l0 += 4) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m256 b0v = a0, b1v = a0, b2v = a0, b3v = a0;
        if (b0 > 0) {
            a0 = _mm256_load_ps(part[l0]);
            a1 = _mm256_load_ps(part[l0 + 1]);
            a2 = _mm256_load_ps(part[l0 + 2]);
            a3 = _mm256_load_ps(part[l0 + 3]);
            if (nv == 2) {
                b0v = _mm256_load_ps(part[l0] + 8);
                b1v = _mm256_load_ps(part[l0 + 1] + 8);
                b2v = _mm256_load_ps(part[l0 + 2] + 8);
                b3v = _mm256_load_ps(part[l0 + 3] + 8);
            }
        }
        const size_t first = ((size_t)g * w->nbanks + (size_t)b0) * (size_t)k * 8 + (size_t)l0;
        const float *val = w->values + first;
        const uint16_t *xo = w->xoffs + first;
        uint64_t next; /* the next slot's four column indices */
        memcpy(&next, xo, sizeof next);
        /* two slots per pass: 3-8% faster at K = 650 and 1500, 2% at 128 (min of 40 runs,
         * in turn with the loop as written) */
#pragma GCC unroll 2
        for (size_t s = 0; s < nslots; s++, val += 8) {
            const uint64_t o = next;
            xo += 8;
            /* past the last slot this reads the next group's indices, or the 8 unused
             * entries at the end of xoffs */
            memcpy(&next, xo, sizeof next);
            const float *x0 = (const float *)(xb + (o & 0xffff) * row_bytes);
            const float *x1 = (const float *)(xb + ((o >> 16) & 0xffff) * row_bytes);
            const float *x2 = (const float *)(xb + ((o >> 32) & 0xffff) * row_bytes);
            const float *x3 = (const float *)(xb + (o >> 48) * row_bytes);
            __m256 v4 = _mm256_broadcast_ps((const __m128 *)val);
            __m256 w0 = _mm256_permute_ps(v4, 0x00), w1 = _mm256_permute_ps(v4, 0x55);
            __m256 w2 = _mm256_permute_ps(v4, 0xAA), w3 = _mm256_permute_ps(v4, 0xFF);
            a0 = _mm256_fmadd_ps(w0, _mm256_load_ps(x0), a0);
            a1 = _mm256_fmadd_ps(w1, _mm256_load_ps(x1), a1);
            a2 = _mm256_fmadd_ps(w2, _mm256_load_ps(x2), a2);
            a3 = _mm256_fmadd_ps(w3, _mm256_load_ps(x3), a3);
            if (nv == 2) {
                b0v = _mm256_fmadd_ps(w0, _mm256_load_ps(x0 + 8), b0v);
                b1v = _mm256_fmadd_ps(w1, _mm256_load_ps(x1 + 8), b1v);
                b2v = _mm256_fmadd_ps(w2, _mm256_load_ps(x2 + 8), b2v);
                b3v = _mm256_fmadd_ps(w3, _mm256_load_ps(x3 + 8), b3v);
            }
        }
        if (b1 < w->nbanks) {
            _mm256_store_ps(part[l0], a0);
            _mm256_store_ps(part[l0 + 1], a1);
            _mm256_store_ps(part[l0 + 2], a2);
            _mm256_store_ps(part[l0 + 3], a3);
            if (nv == 2) {
                _mm256_store_ps(part[l0] + 8, b0v);
                _mm256_store_ps(part[l0 + 1] + 8, b1v);
                _mm256_store_ps(part[l0 + 2] + 8, b2v);
                _mm256_store_ps(part[l0 + 3] + 8, b3v);
            }
            continue;
        }
        store_transposed(out, l0, 0, a0, a1, a2, a3);
        if (nv == 2)
            store_transposed(out, l0, 8, b0v, b1v, b2v, b3v);
    }
}

/* The same with 4 batch columns per xmm register, all 8 rows of the group at once (8
 * independent chains; one 64-bit load brings the slot's 8 offsets). out as above, through
 * two 4x4 transposes. */
static void group_xt4_avx2(const cpu_packed *w, int g, const float *xt, float out[16][8])
{
    const int B = w->bank, k = w->k;
    __m128 a0 = _mm_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    const float *val = w->values + (size_t)g * w->nbanks * k * 8;
    const uint8_t *off = w->offsets + (size_t)g * w->nbanks * k * 8;
    for (int bk = 0; bk < w->nbanks; bk++) {
        const float *xb = xt + (size_t)bk * B * 4;
        for (int j = 0; j < k; j++, val += 8, off += 8) {
            uint64_t o;
            memcpy(&o, off, sizeof o);
            a0 = _mm_fmadd_ps(_mm_broadcast_ss(val), _mm_load_ps(xb + (o & 255) * 4), a0);
            a1 = _mm_fmadd_ps(_mm_broadcast_ss(val + 1), _mm_load_ps(xb + ((o >> 8) & 255) * 4), a1);
            a2 = _mm_fmadd_ps(_mm_broadcast_ss(val + 2), _mm_load_ps(xb + ((o >> 16) & 255) * 4), a2);
            a3 = _mm_fmadd_ps(_mm_broadcast_ss(val + 3), _mm_load_ps(xb + ((o >> 24) & 255) * 4), a3);
            a4 = _mm_fmadd_ps(_mm_broadcast_ss(val + 4), _mm_load_ps(xb + ((o >> 32) & 255) * 4), a4);
            a5 = _mm_fmadd_ps(_mm_broadcast_ss(val + 5), _mm_load_ps(xb + ((o >> 40) & 255) * 4), a5);
            a6 = _mm_fmadd_ps(_mm_broadcast_ss(val + 6), _mm_load_ps(xb + ((o >> 48) & 255) * 4), a6);
            a7 = _mm_fmadd_ps(_mm_broadcast_ss(val + 7), _mm_load_ps(xb + (o >> 56) * 4), a7);
        }
    }
    _MM_TRANSPOSE4_PS(a0, a1, a2, a3);
    _MM_TRANSPOSE4_PS(a4, a5, a6, a7);
    _mm_store_ps(&out[0][0], a0);
    _mm_store_ps(&out[1][0], a1);
    _mm_store_ps(&out[2][0], a2);
    _mm_store_ps(&out[3][0], a3);
    _mm_store_ps(&out[0][4], a4);
    _mm_store_ps(&out[1][4], a5);
    _mm_store_ps(&out[2][4], a6);
    _mm_store_ps(&out[3][4], a7);
}

/* The epilogue of rows r0..r0+7 for batch columns i0..i1-1 from out[col][lane]. A full
 * group without an activation (every product of an LSTM step) takes a loop without the
 * per-column tests of epilogue_avx2, adding in the same order: 512 x 128 at batch 64
 * 50 -> 42 us, 2600 x 650 870 -> 820 us (min of 100 runs, in turn). */
static inline void epilogue_cols_avx2(const cpu_spmm_args *a, float out[16][8], int r0, int i0,
                                      int i1)
{
    if (r0 + 8 > a->w->rows || a->act != BALSA_ACT_NONE) {
        for (int i = i0; i < i1; i++)
            epilogue_avx2(a, _mm256_load_ps(out[i - i0]), r0, a->y + (size_t)i * a->ldy);
        return;
    }
    float *y = a->y + (size_t)i0 * a->ldy + r0;
    const size_t ldy = (size_t)a->ldy;
    if (a->bias) {
        const __m256 b = _mm256_loadu_ps(a->bias + r0);
        if (a->accumulate)
            for (int i = i0; i < i1; i++, y += ldy)
                _mm256_storeu_ps(y, _mm256_add_ps(_mm256_add_ps(_mm256_load_ps(out[i - i0]), b),
                                                  _mm256_loadu_ps(y)));
        else
            for (int i = i0; i < i1; i++, y += ldy)
                _mm256_storeu_ps(y, _mm256_add_ps(_mm256_load_ps(out[i - i0]), b));
    } else if (a->accumulate) {
        for (int i = i0; i < i1; i++, y += ldy)
            _mm256_storeu_ps(y, _mm256_add_ps(_mm256_load_ps(out[i - i0]), _mm256_loadu_ps(y)));
    } else {
        for (int i = i0; i < i1; i++, y += ldy)
            _mm256_storeu_ps(y, _mm256_load_ps(out[i - i0]));
    }
}

/* Groups per block of the blocked loop below, and the bytes of transposed input one
 * block of banks may span. */
#define XT_GROUP_BLOCK 16
#define XT_BLOCK_BYTES (24 * 1024)

/* The chunk's 8- or 16-wide product, blocked for the L1 cache: a chunk of xt spans
 * K x nc floats (41 KB at K = 650 and 16 columns, 96 KB at 1500), more than Zen's 32 KB
 * L1, and every group swept all of it, so nearly every x load came from L2. The banks are
 * cut into blocks of at most XT_BLOCK_BYTES of xt, of equal size, and each block runs for
 * XT_GROUP_BLOCK groups before the next, their partial sums kept in part (8 KB, in L1).
 * Measured (single thread, 16 columns, min of 30 runs, against the unblocked loop in the
 * same run): 2600 x 650 11% and 6000 x 1500 16% faster with the shuffled weights above;
 * blocks of 8, 16 and 24 KB, and group blocks of 4 and 8, were slower than these. A K that
 * fits one block runs exactly as before. */
static void spmm_xt_blocked_avx2(const cpu_spmm_args *a, int g0, int g1, const float *xt,
                                 int nv, int i0, int i1)
{
    const cpu_packed *w = a->w;
    const int nc = nv * 8;
    const size_t bank_bytes = (size_t)w->bank * (size_t)nc * sizeof(float);
    int per = (int)(XT_BLOCK_BYTES / bank_bytes);
    if (per < 1)
        per = 1;
    const int nblocks = (w->nbanks + per - 1) / per;
    per = (w->nbanks + nblocks - 1) / nblocks;
    float out[16][8] __attribute__((aligned(32)));
    float part[XT_GROUP_BLOCK][8][16] __attribute__((aligned(32)));
    for (int gb = g0; gb < g1; gb += XT_GROUP_BLOCK) {
        const int ge = g1 - gb < XT_GROUP_BLOCK ? g1 : gb + XT_GROUP_BLOCK;
        for (int b0 = 0; b0 < w->nbanks; b0 += per) {
            const int b1 = w->nbanks - b0 < per ? w->nbanks : b0 + per;
            for (int g = gb; g < ge; g++) {
                if (nv == 2)
                    group_xt_avx2(w, g, xt, 2, b0, b1, part[g - gb], out);
                else
                    group_xt_avx2(w, g, xt, 1, b0, b1, part[g - gb], out);
                if (b1 < w->nbanks)
                    continue;
                epilogue_cols_avx2(a, out, g * 8, i0, i1);
            }
        }
    }
}

static void spmm_xt_avx2(const cpu_spmm_args *a, int g0, int g1)
{
    const size_t rows = xt_rows(a->w);
    float out[16][8] __attribute__((aligned(32)));
    for (int i0 = 0, nc; i0 < a->n; i0 += nc) {
        nc = xt_chunk_width(a->n, i0);
        const float *xt = a->xt + (size_t)i0 * rows;
        const int i1 = a->n < i0 + nc ? a->n : i0 + nc;
        if (nc >= 8) {
            spmm_xt_blocked_avx2(a, g0, g1, xt, nc / 8, i0, i1);
            continue;
        }
        for (int g = g0; g < g1; g++) {
            group_xt4_avx2(a->w, g, xt, out);
            epilogue_cols_avx2(a, out, g * 8, i0, i1);
        }
    }
}

void spmm_avx2(const cpu_spmm_args *a, int g0, int g1)
{
    if (use_xt(a->w, a->n)) {
        spmm_xt_avx2(a, g0, g1);
        return;
    }
    spmm_permute_avx2(a, g0, g1);
}

/* ---- LSTM cell ------------------------------------------------------------------------ */

/* The LSTM cell of one row in two passes. Pass 1 (gates_block_avx2), a block of 8 units
 * from unit j: the three sigmoid gates' e^x go through exp_n_avx2 together, then
 * c = f c + i tanh(g) is stored and o is parked in h. Pass 2 (out_block_avx2): h = o tanh(c).
 * In one pass a block was a chain of dependent operations (then: the gates' e^x, the
 * divisions, c, then e^(2|c|) and tanh) whose end the next block's start could not overlap;
 * split, 7.5 -> 7.0 ns per unit-step at 64 x 650 and 7.4 -> 6.9 at 64 x 128 (min of 300
 * runs, in turn), the same results bit for bit. With the rational tanh, one pass measured
 * 28-37% slower still; pass 1 two blocks at a time, or software-pipelined, was no faster;
 * pass 2 four blocks at a time (as when it took e^x) and one at a time run alike.
 * mask: NULL, or the lanes of the one block that exist (the last, partial block: masked
 * loads and stores touch nothing past hidden; masked stores are slow on AMD Zen, so full
 * blocks use plain ones). */
#define CELL_LOAD(p) (mask ? _mm256_maskload_ps((p), *mask) : _mm256_loadu_ps(p))
#define CELL_STORE(p, v)                                                                      \
    do {                                                                                      \
        if (mask)                                                                             \
            _mm256_maskstore_ps((p), *mask, (v));                                             \
        else                                                                                  \
            _mm256_storeu_ps((p), (v));                                                       \
    } while (0)

static inline __attribute__((always_inline)) void
gates_block_avx2(const float *g, int hidden, float *cr, float *hr, int j, const __m256i *mask)
{
    const float *q = g + j;
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    __m256 e[3] = {_mm256_sub_ps(zero, CELL_LOAD(q)), _mm256_sub_ps(zero, CELL_LOAD(q + hidden)),
                   _mm256_sub_ps(zero, CELL_LOAD(q + 3 * hidden))};
    exp_n_avx2(e, 3);
    /* The sigmoids keep the division: with vrcpps and a Newton step the cell's error where
     * f c and i g nearly cancel rose to 1.5e-5, above the test's 1e-5. */
    __m256 i = _mm256_div_ps(one, _mm256_add_ps(one, e[0]));
    __m256 f = _mm256_div_ps(one, _mm256_add_ps(one, e[1]));
    __m256 o = _mm256_div_ps(one, _mm256_add_ps(one, e[2]));
    __m256 gt = tanh_avx2(CELL_LOAD(q + 2 * hidden));
    CELL_STORE(cr + j, _mm256_fmadd_ps(f, CELL_LOAD(cr + j), _mm256_mul_ps(i, gt)));
    CELL_STORE(hr + j, o);
}

static inline __attribute__((always_inline)) void
out_block_avx2(const float *cr, float *hr, int j, const __m256i *mask)
{
    CELL_STORE(hr + j, _mm256_mul_ps(CELL_LOAD(hr + j), tanh_avx2(CELL_LOAD(cr + j))));
}
#undef CELL_LOAD
#undef CELL_STORE

void lstm_cell_avx2(const float *gates, int ldg, float *c, float *h, int ldh, int n,
                    int hidden)
{
    const int full = hidden / 8 * 8;
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(hidden - full),
                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int r = 0; r < n; r++) {
        const float *g = gates + (size_t)r * ldg;
        float *cr = c + (size_t)r * hidden;
        float *hr = h + (size_t)r * ldh;
        int j = 0;
        for (; j < full; j += 8)
            gates_block_avx2(g, hidden, cr, hr, j, NULL);
        if (full < hidden)
            gates_block_avx2(g, hidden, cr, hr, full, &m);
        for (j = 0; j < full; j += 8)
            out_block_avx2(cr, hr, j, NULL);
        if (full < hidden)
            out_block_avx2(cr, hr, full, &m);
    }
}

/* ---- Softmax head ------------------------------------------------------------------- */

/* The largest of v[0..n). */
static float row_max_avx2(const float *v, int n)
{
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        m0 = _mm256_max_ps(m0, _mm256_loadu_ps(v + i));
        m1 = _mm256_max_ps(m1, _mm256_loadu_ps(v + i + 8));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_max_ps(m0, m1));
    float m = t[0];
    for (int l = 1; l < 8; l++)
        m = t[l] > m ? t[l] : m;
    for (; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

/* e^(x - m) for nb vectors of 8 (lanes off in mask, which only the last vector of a row
 * may have, come out 0), their sum added into sum (two double vectors). exp_n_avx2 clamps
 * at -87, where e^x is still a normal float; below that the true value is under 1.7e-38
 * and 0 is written instead. */
static inline __attribute__((always_inline)) void
exp_shifted_avx2(const float *x, __m256 m, int nb, const __m256i *mask, __m256 *e, __m256d sum[2])
{
    __m256 keep[4];
#pragma GCC unroll 4
    for (int b = 0; b < nb; b++) {
        __m256 v = mask ? _mm256_maskload_ps(x + 8 * b, *mask) : _mm256_loadu_ps(x + 8 * b);
        e[b] = _mm256_sub_ps(v, m);
        keep[b] = _mm256_cmp_ps(e[b], _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
        if (mask)
            keep[b] = _mm256_and_ps(keep[b], _mm256_castsi256_ps(*mask));
    }
    exp_n_avx2(e, nb);
#pragma GCC unroll 4
    for (int b = 0; b < nb; b++) {
        e[b] = _mm256_and_ps(e[b], keep[b]);
        sum[0] = _mm256_add_pd(sum[0], _mm256_cvtps_pd(_mm256_castps256_ps128(e[b])));
        sum[1] = _mm256_add_pd(sum[1], _mm256_cvtps_pd(_mm256_extractf128_ps(e[b], 1)));
    }
}

/* One row: the maximum, then e^(x - m) and its sum (written to y for softmax), then y
 * scaled by 1 / s, or (x - m) - ln s for log-softmax (take_log). */
static void softmax_row_avx2(const float *x, int cols, int take_log, float *y)
{
    const float mf = row_max_avx2(x, cols);
    const __m256 m = _mm256_set1_ps(mf);
    __m256d sum[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
    __m256 e[4];
    const int full = cols / 8 * 8;
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols - full),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    int i = 0;
    /* four vectors at a time: their exponentials overlap (exp_n_avx2) */
    for (; i + 32 <= full; i += 32) {
        exp_shifted_avx2(x + i, m, 4, NULL, e, sum);
        for (int b = 0; !take_log && b < 4; b++)
            _mm256_storeu_ps(y + i + 8 * b, e[b]);
    }
    for (; i < full; i += 8) {
        exp_shifted_avx2(x + i, m, 1, NULL, e, sum);
        if (!take_log)
            _mm256_storeu_ps(y + i, e[0]);
    }
    if (full < cols) {
        exp_shifted_avx2(x + full, m, 1, &tail, e, sum);
        if (!take_log)
            _mm256_maskstore_ps(y + full, tail, e[0]);
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(sum[0], sum[1]));
    const double s = (t[0] + t[1]) + (t[2] + t[3]);
    /* softmax: y *= 1 / s; log-softmax: y = (x - m) - ln s, which keeps the values near 0
     * (the likely ones) as exact as their distance from m: x - (m + ln s) in float lost
     * half an ulp of m + ln s to each (1.4e-6 with values spanning 200) */
    const __m256 k = _mm256_set1_ps(take_log ? (float)log(s) : (float)(1.0 / s));
    for (i = 0; i < full; i += 8)
        _mm256_storeu_ps(y + i, take_log ? _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m), k)
                                         : _mm256_mul_ps(_mm256_loadu_ps(y + i), k));
    if (full < cols)
        _mm256_maskstore_ps(
            y + full, tail,
            take_log ? _mm256_sub_ps(_mm256_sub_ps(_mm256_maskload_ps(x + full, tail), m), k)
                     : _mm256_mul_ps(_mm256_maskload_ps(y + full, tail), k));
}

void softmax_avx2(const float *x, int ldx, int n, int cols, int take_log, float *y, int ldy)
{
    for (int r = 0; r < n; r++)
        softmax_row_avx2(x + (size_t)r * ldx, cols, take_log, y + (size_t)r * ldy);
}
