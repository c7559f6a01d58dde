/* AVX-512 kernels of the CPU backend (this file is compiled with AVX-512 F/BW/VL/DQ flags
 * and its functions run only after the dispatcher has seen the CPU support them):
 *  - balanced-sparse products over the packed layout with groups of 16 rows (cpu.h).
 *    Small batches use the "permute" kernel: a bank of up to 32 columns sits in two zmm
 *    registers and one vpermt2ps picks x[offset] for the 16 rows (lanes) at once; a
 *    64-wide bank takes two and a masked blend on offset bit 5; wider banks gather from
 *    L1. Larger batches use the "transposed" kernel (as in spmm_avx2.c) with 16 batch
 *    columns per zmm register.
 *  - the LSTM cell with vectorised sigmoid and tanh.
 * The development machine has no AVX-512: these paths are tested wherever the CPU has it
 * (tests/test_kernels.c counts them as skipped otherwise). */
#include <immintrin.h>
#include <string.h>

#include "cpu.h"

/* From this batch size on the transposed kernel is used. With vpermt2ps at one per cycle
 * the permute kernel stays cheap per column, so the switch comes later than with AVX2;
 * the transposed kernel fills all 16 lanes from batch 8 on (its chunks are 16 wide). */
#define XT_MIN_BATCH 8

/* ---- Vector math (as in spmm_avx2.c, 16 lanes) ----------------------------------------- */

static inline __m512 exp_avx512(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

static inline __m512 sigmoid_avx512(__m512 x)
{
    __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

static inline __m512 tanh_avx512(__m512 x)
{
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 ax = _mm512_andnot_ps(sign, x);
    __m512 z = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036e-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422e-1f));
    __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
    __m512 e = exp_avx512(_mm512_add_ps(ax, ax));
    __m512 big = _mm512_sub_ps(_mm512_set1_ps(1.0f),
                               _mm512_div_ps(_mm512_set1_ps(2.0f),
                                             _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
    big = _mm512_or_ps(big, _mm512_and_ps(sign, x));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_GE_OQ),
                                small, big);
}

static inline __m512 act_avx512(balsa_act act, __m512 v)
{
    switch (act) {
    case BALSA_ACT_RELU: return _mm512_max_ps(v, _mm512_setzero_ps());
    case BALSA_ACT_SIGMOID: return sigmoid_avx512(v);
    case BALSA_ACT_TANH: return tanh_avx512(v);
    default: return v;
    }
}

/* y[r0..r0+16) = act(acc + bias + (accumulate ? y : 0)) for the rows that exist. */
static inline void epilogue_avx512(const cpu_spmm_args *a, __m512 acc, int r0, float *y)
{
    const int left = a->w->rows - r0;
    const __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
    if (a->bias)
        acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, a->bias + r0));
    if (a->accumulate)
        acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, y + r0));
    _mm512_mask_storeu_ps(y + r0, m, act_avx512(a->act, acc));
}

/* ---- The permute kernel ------------------------------------------------------------------ */

/* Sum over all banks of one group for one input vector. nq: 16-float x registers a bank
 * needs (1 for B <= 16, 2 for 32, 4 for 64; 0 means gather from a bank-sized copy). */
static inline __attribute__((always_inline)) __m512
group_dot_avx512(const cpu_packed *w, int g, const float *x, int nq)
{
    const int B = w->bank, k = w->k, cols = w->cols;
    const float *val = w->values + (size_t)g * w->nbanks * k * 16;
    const uint8_t *off = w->offsets + (size_t)g * w->nbanks * k * 16;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    float pad[BSMAT_MAX_BANK + 16] __attribute__((aligned(64)));
    const int span = B < 16 ? 16 : B;
    for (int b = 0; b < w->nbanks; b++, val += k * 16, off += k * 16) {
        const float *xb = x + (size_t)b * B;
        if (b * B + span > cols) {
            int real = cols - b * B;
            memset(pad, 0, sizeof(float) * (size_t)span);
            memcpy(pad, xb, sizeof(float) * (size_t)real);
            xb = pad;
        }
        __m512 x0 = _mm512_loadu_ps(xb), x1 = x0, x2 = x0, x3 = x0;
        if (nq >= 2)
            x1 = _mm512_loadu_ps(xb + 16);
        if (nq == 4) {
            x2 = _mm512_loadu_ps(xb + 32);
            x3 = _mm512_loadu_ps(xb + 48);
        }
        for (int j = 0; j < k; j++) {
            __m512i idx = _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(off + j * 16)));
            __m512 v = _mm512_load_ps(val + j * 16), xv;
            if (nq == 0)
                xv = _mm512_i32gather_ps(idx, xb, 4);
            else if (nq == 1)
                xv = _mm512_permutexvar_ps(idx, x0);
            else if (nq == 2)
                xv = _mm512_permutex2var_ps(x0, idx, x1);
            else
                xv = _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)),
                                          _mm512_permutex2var_ps(x0, idx, x1),
                                          _mm512_permutex2var_ps(x2, idx, x3));
            if (j & 1)
                acc1 = _mm512_fmadd_ps(v, xv, acc1);
            else
                acc0 = _mm512_fmadd_ps(v, xv, acc0);
        }
    }
    return _mm512_add_ps(acc0, acc1);
}

static void spmm_permute_avx512(const cpu_spmm_args *a, int g0, int g1, int nq)
{
    for (int i = 0; i < a->n; i++) {
        const float *x = a->x + (size_t)i * a->ldx;
        float *y = a->y + (size_t)i * a->ldy;
        for (int g = g0; g < g1; g++) {
            __m512 acc;
            switch (nq) {
            case 1: acc = group_dot_avx512(a->w, g, x, 1); break;
            case 2: acc = group_dot_avx512(a->w, g, x, 2); break;
            case 4: acc = group_dot_avx512(a->w, g, x, 4); break;
            default: acc = group_dot_avx512(a->w, g, x, 0); break;
            }
            epilogue_avx512(a, acc, g * 16, y);
        }
    }
}

/* ---- The transposed kernel: 16 batch columns per chunk ---------------------------------- */

static size_t xt_rows(const cpu_packed *w) { return (size_t)w->nbanks * w->bank; }

size_t spmm_avx512_xt_floats(const cpu_packed *w, int n)
{
    if (n < XT_MIN_BATCH)
        return 0;
    return (size_t)((n + 15) / 16) * xt_rows(w) * 16;
}

void spmm_avx512_prepare(const cpu_spmm_args *a)
{
    if (a->n < XT_MIN_BATCH)
        return;
    const int cols = a->w->cols;
    const size_t rows = xt_rows(a->w);
    for (int ch = 0; ch * 16 < a->n; ch++) {
        float *t = a->xt + (size_t)ch * rows * 16;
        memset(t, 0, sizeof(float) * rows * 16);
        for (int i = ch * 16; i < a->n && i < (ch + 1) * 16; i++) {
            const float *x = a->x + (size_t)i * a->ldx;
            for (int c = 0; c < cols; c++)
                t[(size_t)c * 16 + (i - ch * 16)] = x[c];
        }
    }
}

static void spmm_xt_avx512(const cpu_spmm_args *a, int g0, int g1)
{
    const int B = a->w->bank, k = a->w->k, nbanks = a->w->nbanks;
    const size_t rows = xt_rows(a->w);
    float out[16][16] __attribute__((aligned(64)));
    for (int ch = 0; ch * 16 < a->n; ch++) {
        const float *xt = a->xt + (size_t)ch * rows * 16;
        const int i0 = ch * 16, i1 = a->n < i0 + 16 ? a->n : i0 + 16;
        for (int g = g0; g < g1; g++) {
            /* Four rows at a time: four independent FMA chains per weight slot. */
            for (int l0 = 0; l0 < 16; l0 += 4) {
                __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(),
                                 _mm512_setzero_ps(), _mm512_setzero_ps()};
                const float *val = a->w->values + (size_t)g * nbanks * k * 16 + l0;
                const uint8_t *off = a->w->offsets + (size_t)g * nbanks * k * 16 + l0;
                for (int b = 0; b < nbanks; b++) {
                    const float *xb = xt + (size_t)b * B * 16;
                    for (int j = 0; j < k; j++, val += 16, off += 16)
                        for (int l = 0; l < 4; l++)
                            acc[l] = _mm512_fmadd_ps(_mm512_set1_ps(val[l]),
                                                     _mm512_load_ps(xb + (size_t)off[l] * 16),
                                                     acc[l]);
                }
                for (int l = 0; l < 4; l++)
                    _mm512_store_ps(out[l0 + l], acc[l]);
            }
            /* out is [row][column]; the epilogue wants one column's 16 rows. */
            const __m512i col = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144,
                                                  160, 176, 192, 208, 224, 240);
            for (int i = i0; i < i1; i++) {
                __m512 acc = _mm512_i32gather_ps(col, &out[0][i - i0], 4);
                epilogue_avx512(a, acc, g * 16, a->y + (size_t)i * a->ldy);
            }
        }
    }
}

void spmm_avx512(const cpu_spmm_args *a, int g0, int g1)
{
    if (a->n >= XT_MIN_BATCH) {
        spmm_xt_avx512(a, g0, g1);
        return;
    }
    const int B = a->w->bank;
    spmm_permute_avx512(a, g0, g1, B <= 16 ? 1 : B <= 32 ? 2 : B <= 64 ? 4 : 0);
}

/* ---- LSTM cell ------------------------------------------------------------------------ */

void lstm_cell_avx512(const float *gates, int ldg, float *c, float *h, int ldh, int n,
                      int hidden)
{
    for (int r = 0; r < n; r++) {
        const float *g = gates + (size_t)r * ldg;
        float *cr = c + (size_t)r * hidden;
        float *hr = h + (size_t)r * ldh;
        for (int j = 0; j < hidden; j += 16) {
            int left = hidden - j;
            __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            __m512 ig = sigmoid_avx512(_mm512_maskz_loadu_ps(m, g + j));
            __m512 fg = sigmoid_avx512(_mm512_maskz_loadu_ps(m, g + hidden + j));
            __m512 gg = tanh_avx512(_mm512_maskz_loadu_ps(m, g + 2 * hidden + j));
            __m512 og = sigmoid_avx512(_mm512_maskz_loadu_ps(m, g + 3 * hidden + j));
            __m512 cv = _mm512_fmadd_ps(fg, _mm512_maskz_loadu_ps(m, cr + j), _mm512_mul_ps(ig, gg));
            _mm512_mask_storeu_ps(cr + j, m, cv);
            _mm512_mask_storeu_ps(hr + j, m, _mm512_mul_ps(og, tanh_avx512(cv)));
        }
    }
}
