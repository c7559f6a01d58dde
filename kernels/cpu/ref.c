/* The plain C reference kernels: the definition of correct that every fast path and
 * every other backend is tested against. Written for clarity, not speed. */
#include "cpu.h"

#include <math.h>

float cpu_act(balsa_act act, float v)
{
    switch (act) {
    case BALSA_ACT_NONE: return v;
    case BALSA_ACT_RELU: return v > 0.0f ? v : 0.0f;
    case BALSA_ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
    case BALSA_ACT_TANH: return tanhf(v);
    }
    return v;
}

void spmm_ref(const bsmat *w, const float *x, int ldx, int n, const float *bias,
              int accumulate, balsa_act act, float *y, int ldy)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * ldx;
        for (int r = 0; r < w->rows; r++) {
            float acc = 0.0f;
            for (int b = 0; b < w->nbanks; b++) {
                size_t base = ((size_t)r * w->nbanks + b) * w->k;
                for (int j = 0; j < w->k; j++) {
                    int c = b * w->bank + w->offsets[base + j];
                    if (c < w->cols)
                        acc += w->values[base + j] * xi[c];
                }
            }
            if (bias)
                acc += bias[r];
            float *yr = y + (size_t)i * ldy + r;
            if (accumulate)
                acc += *yr;
            *yr = cpu_act(act, acc);
        }
    }
}

static float sigmoidf(float v) { return 1.0f / (1.0f + expf(-v)); }

void lstm_cell_ref(const float *gates, int ldg, float *c, float *h, int ldh, int n,
                   int hidden)
{
    for (int r = 0; r < n; r++) {
        const float *g = gates + (size_t)r * ldg;
        float *cr = c + (size_t)r * hidden;
        float *hr = h + (size_t)r * ldh;
        for (int j = 0; j < hidden; j++) {
            float ig = sigmoidf(g[j]);
            float fg = sigmoidf(g[hidden + j]);
            float gg = tanhf(g[2 * hidden + j]);
            float og = sigmoidf(g[3 * hidden + j]);
            cr[j] = fg * cr[j] + ig * gg;
            hr[j] = og * tanhf(cr[j]);
        }
    }
}

void softmax_ref(const float *x, int ldx, int n, int cols, int take_log, float *y, int ldy)
{
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *yr = y + (size_t)r * ldy;
        float m = xr[0];
        for (int i = 1; i < cols; i++)
            if (xr[i] > m)
                m = xr[i];
        double s = 0;
        for (int i = 0; i < cols; i++)
            s += expf(xr[i] - m);
        if (take_log) {
            double lse = m + log(s);
            for (int i = 0; i < cols; i++)
                yr[i] = (float)(xr[i] - lse);
        } else {
            for (int i = 0; i < cols; i++)
                yr[i] = (float)(expf(xr[i] - m) / s);
        }
    }
}
