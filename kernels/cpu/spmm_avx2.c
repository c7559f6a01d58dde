/* AVX2 + FMA kernels of the CPU backend (this file is compiled with -mavx2 -mfma and its
 * functions run only after the dispatcher has seen the CPU support them):
 *  - balanced-sparse products over the packed layout with groups of 8 rows (cpu.h).
 *    Small batches use the "permute" kernel: the bank's slice of x sits in registers and
 *    vpermps picks x[offset] for the 8 rows (lanes) at once, blends on offset bits 3 and 4
 *    joining the four registers of a 32-wide bank; banks over 32 use an in-L1 gather.
 *    Larger batches use the "transposed" kernel: X is transposed once per product into
 *    [column][batch] so that every weight, loaded once, multiplies 8 or 16 batch columns
 *    with one broadcast and one or two FMAs.
 *  - the LSTM cell with vectorised sigmoid and tanh. */
#include <immintrin.h>
#include <string.h>

#include "cpu.h"

/* From this batch size on, the transposed kernel wins over one permute pass per column
 * (measured with `balsa bench kernels` on AMD EPYC (Zen) with AVX2: already at batch 2 the
 * transposed kernel was faster, since vpermps is slow there and each weight is reused). */
#define XT_MIN_BATCH 2

/* ---- Vector math ------------------------------------------------------------------------ */

/* e^x for x in [-87, 88] (clamped outside), relative error about 2e-7: x = n ln2 + r with
 * |r| <= ln2/2, e^r by a degree-6 polynomial, 2^n built in the exponent bits. */
static inline __m256 exp_avx2(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* ln2 split in two so that n * ln2_hi is exact. */
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline __m256 sigmoid_avx2(__m256 x)
{
    __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

/* tanh: an odd polynomial below |x| = 0.625 (where 1 - 2/(e^2x + 1) would lose relative
 * accuracy to cancellation), 1 - 2 / (e^2|x| + 1) with the sign restored above. */
static inline __m256 tanh_avx2(__m256 x)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 ax = _mm256_andnot_ps(sign, x);
    __m256 z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    __m256 e = exp_avx2(_mm256_add_ps(ax, ax));
    __m256 big = _mm256_sub_ps(_mm256_set1_ps(1.0f),
                               _mm256_div_ps(_mm256_set1_ps(2.0f),
                                             _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
    big = _mm256_or_ps(big, _mm256_and_ps(sign, x));
    return _mm256_blendv_ps(small, big,
                            _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_GE_OQ));
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

/* Sum over all banks of one group for one input vector. nq is the number of 8-float x
 * registers a bank needs (1 for B <= 8, 2 for 16, 4 for 32; 0 means gather from a
 * bank-sized copy in L1). always_inline so that each nq gets its own loop. */
static inline __attribute__((always_inline)) __m256
group_dot_avx2(const cpu_packed *w, int g, const float *x, int nq)
{
    const int B = w->bank, k = w->k, cols = w->cols;
    const float *val = w->values + (size_t)g * w->nbanks * k * 8;
    const uint8_t *off = w->offsets + (size_t)g * w->nbanks * k * 8;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    /* The bank's x is read whole (or 8 floats for B < 8); where that passes cols, read
     * a zero-padded copy instead so that nothing past x is touched. */
    float pad[BSMAT_MAX_BANK + 8] __attribute__((aligned(32)));
    const int span = B < 8 ? 8 : B;
    for (int b = 0; b < w->nbanks; b++, val += k * 8, off += k * 8) {
        const float *xb = x + (size_t)b * B;
        if (b * B + span > cols) {
            int real = cols - b * B;
            memset(pad, 0, sizeof(float) * (size_t)span);
            memcpy(pad, xb, sizeof(float) * (size_t)real);
            xb = pad;
        }
        __m256 x0 = _mm256_loadu_ps(xb), x1 = x0, x2 = x0, x3 = x0;
        if (nq >= 2)
            x1 = _mm256_loadu_ps(xb + 8);
        if (nq == 4) {
            x2 = _mm256_loadu_ps(xb + 16);
            x3 = _mm256_loadu_ps(xb + 24);
        }
        for (int j = 0; j < k; j++) {
            __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(off + j * 8)));
            __m256 v = _mm256_load_ps(val + j * 8), xv;
            if (nq == 0) {
                xv = _mm256_i32gather_ps(xb, idx, 4);
            } else {
                xv = _mm256_permutevar8x32_ps(x0, idx);
                if (nq >= 2) {
                    /* blendv takes the sign bit: shift offset bit 3 (and 4) there. */
                    __m256 m3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
                    __m256 p1 = _mm256_permutevar8x32_ps(x1, idx);
                    if (nq == 4) {
                        __m256 m4 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27));
                        __m256 p2 = _mm256_permutevar8x32_ps(x2, idx);
                        __m256 p3 = _mm256_permutevar8x32_ps(x3, idx);
                        xv = _mm256_blendv_ps(_mm256_blendv_ps(xv, p1, m3),
                                              _mm256_blendv_ps(p2, p3, m3), m4);
                    } else {
                        xv = _mm256_blendv_ps(xv, p1, m3);
                    }
                }
            }
            if (j & 1)
                acc1 = _mm256_fmadd_ps(v, xv, acc1);
            else
                acc0 = _mm256_fmadd_ps(v, xv, acc0);
        }
    }
    return _mm256_add_ps(acc0, acc1);
}

static void spmm_permute_avx2(const cpu_spmm_args *a, int g0, int g1, int nq)
{
    for (int i = 0; i < a->n; i++) {
        const float *x = a->x + (size_t)i * a->ldx;
        float *y = a->y + (size_t)i * a->ldy;
        for (int g = g0; g < g1; g++) {
            __m256 acc;
            switch (nq) {
            case 1: acc = group_dot_avx2(a->w, g, x, 1); break;
            case 2: acc = group_dot_avx2(a->w, g, x, 2); break;
            case 4: acc = group_dot_avx2(a->w, g, x, 4); break;
            default: acc = group_dot_avx2(a->w, g, x, 0); break;
            }
            epilogue_avx2(a, acc, g * 8, y);
        }
    }
}

/* ---- The transposed kernel ----------------------------------------------------------- */

/* Batch columns per chunk of the transposed input: 8 (one register) up to batch 8, else
 * 16 (two registers). */
static int xt_width(int n) { return n <= 8 ? 8 : 16; }

/* Rows of xt per chunk: every column of every bank, the last bank's padding included, so
 * that padding offsets read zeros and the kernel needs no bounds test. */
static size_t xt_rows(const cpu_packed *w) { return (size_t)w->nbanks * w->bank; }

size_t spmm_avx2_xt_floats(const cpu_packed *w, int n)
{
    if (n < XT_MIN_BATCH)
        return 0;
    int nc = xt_width(n);
    return (size_t)((n + nc - 1) / nc) * xt_rows(w) * nc;
}

void spmm_avx2_prepare(const cpu_spmm_args *a)
{
    if (a->n < XT_MIN_BATCH)
        return;
    const int nc = xt_width(a->n), cols = a->w->cols;
    const size_t rows = xt_rows(a->w);
    for (int ch = 0; ch * nc < a->n; ch++) {
        float *t = a->xt + (size_t)ch * rows * nc;
        memset(t, 0, sizeof(float) * rows * nc);
        for (int i = ch * nc; i < a->n && i < (ch + 1) * nc; i++) {
            const float *x = a->x + (size_t)i * a->ldx;
            for (int c = 0; c < cols; c++)
                t[(size_t)c * nc + (i - ch * nc)] = x[c];
        }
    }
}

/* One group, one chunk of nv*8 batch columns: out[lane][col] for the group's 8 rows. Four
 * rows at a time keep 4*nv independent FMA chains in flight. */
static inline __attribute__((always_inline)) void
group_xt_avx2(const cpu_packed *w, int g, const float *xt, int nv, float out[8][16])
{
    const int B = w->bank, k = w->k, nc = nv * 8;
    for (int l0 = 0; l0 < 8; l0 += 4) {
        __m256 acc[4][2];
        for (int l = 0; l < 4; l++)
            acc[l][0] = acc[l][1] = _mm256_setzero_ps();
        const float *val = w->values + (size_t)g * w->nbanks * k * 8 + l0;
        const uint8_t *off = w->offsets + (size_t)g * w->nbanks * k * 8 + l0;
        for (int b = 0; b < w->nbanks; b++) {
            const float *xb = xt + (size_t)b * B * nc;
            for (int j = 0; j < k; j++, val += 8, off += 8) {
                for (int l = 0; l < 4; l++) {
                    __m256 wv = _mm256_broadcast_ss(val + l);
                    const float *xr = xb + (size_t)off[l] * nc;
                    acc[l][0] = _mm256_fmadd_ps(wv, _mm256_load_ps(xr), acc[l][0]);
                    if (nv == 2)
                        acc[l][1] = _mm256_fmadd_ps(wv, _mm256_load_ps(xr + 8), acc[l][1]);
                }
            }
        }
        for (int l = 0; l < 4; l++) {
            _mm256_storeu_ps(out[l0 + l], acc[l][0]);
            if (nv == 2)
                _mm256_storeu_ps(out[l0 + l] + 8, acc[l][1]);
        }
    }
}

static void spmm_xt_avx2(const cpu_spmm_args *a, int g0, int g1)
{
    const int nc = xt_width(a->n);
    const size_t rows = xt_rows(a->w);
    float out[8][16];
    for (int ch = 0; ch * nc < a->n; ch++) {
        const float *xt = a->xt + (size_t)ch * rows * nc;
        const int i0 = ch * nc, i1 = a->n < i0 + nc ? a->n : i0 + nc;
        for (int g = g0; g < g1; g++) {
            if (nc == 16)
                group_xt_avx2(a->w, g, xt, 2, out);
            else
                group_xt_avx2(a->w, g, xt, 1, out);
            for (int i = i0; i < i1; i++) {
                int c = i - i0;
                __m256 acc = _mm256_setr_ps(out[0][c], out[1][c], out[2][c], out[3][c],
                                            out[4][c], out[5][c], out[6][c], out[7][c]);
                epilogue_avx2(a, acc, g * 8, a->y + (size_t)i * a->ldy);
            }
        }
    }
}

void spmm_avx2(const cpu_spmm_args *a, int g0, int g1)
{
    if (a->n >= XT_MIN_BATCH) {
        spmm_xt_avx2(a, g0, g1);
        return;
    }
    const int B = a->w->bank;
    spmm_permute_avx2(a, g0, g1, B <= 8 ? 1 : B <= 16 ? 2 : B <= 32 ? 4 : 0);
}

/* ---- LSTM cell ------------------------------------------------------------------------ */

void lstm_cell_avx2(const float *gates, int ldg, float *c, float *h, int ldh, int n,
                    int hidden)
{
    for (int r = 0; r < n; r++) {
        const float *g = gates + (size_t)r * ldg;
        float *cr = c + (size_t)r * hidden;
        float *hr = h + (size_t)r * ldh;
        for (int j = 0; j < hidden; j += 8) {
            /* The last chunk of a row is masked so that nothing past hidden is touched. */
            int left = hidden - j < 8 ? hidden - j : 8;
            __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(left),
                                           _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            __m256 ig = sigmoid_avx2(_mm256_maskload_ps(g + j, m));
            __m256 fg = sigmoid_avx2(_mm256_maskload_ps(g + hidden + j, m));
            __m256 gg = tanh_avx2(_mm256_maskload_ps(g + 2 * hidden + j, m));
            __m256 og = sigmoid_avx2(_mm256_maskload_ps(g + 3 * hidden + j, m));
            __m256 cv = _mm256_fmadd_ps(fg, _mm256_maskload_ps(cr + j, m), _mm256_mul_ps(ig, gg));
            _mm256_maskstore_ps(cr + j, m, cv);
            _mm256_maskstore_ps(hr + j, m, _mm256_mul_ps(og, tanh_avx2(cv)));
        }
    }
}
