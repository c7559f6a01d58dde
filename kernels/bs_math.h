/* Arithmetic shared by the C reference kernels and the CUDA kernels, written once so that
 * both compute the same function: the activations, the LSTM cell update and the decoding
 * of an in-bank offset into a column. Every function is a small inline one, usable from
 * C (static inline) and from CUDA (__host__ __device__). */
#ifndef BALSA_BS_MATH_H
#define BALSA_BS_MATH_H

#include <math.h>

#include "backend.h"

#ifdef __CUDACC__
#define BS_HD static __host__ __device__ __forceinline__
#else
#define BS_HD static inline
#endif

BS_HD float bs_sigmoidf(float v) { return 1.0f / (1.0f + expf(-v)); }

BS_HD float bs_tanhf(float v) { return tanhf(v); }

/* The activation `act` (a balsa_act value) of v; an unknown code returns v unchanged. */
BS_HD float bs_act(int act, float v)
{
    switch (act) {
    case BALSA_ACT_RELU: return v > 0.0f ? v : 0.0f;
    case BALSA_ACT_SIGMOID: return bs_sigmoidf(v);
    case BALSA_ACT_TANH: return bs_tanhf(v);
    default: return v;
    }
}

/* The new cell state of one LSTM unit from its four gate pre-activations (PyTorch order
 * i, f, g, o) and the old state: sigmoid(f) * c + sigmoid(i) * tanh(g). */
BS_HD float bs_lstm_c(float gi, float gf, float gg, float c)
{
    return bs_sigmoidf(gf) * c + bs_sigmoidf(gi) * bs_tanhf(gg);
}

/* The output of one LSTM unit from its o gate pre-activation and its new cell state. */
BS_HD float bs_lstm_h(float go, float c_new) { return bs_sigmoidf(go) * bs_tanhf(c_new); }

/* The matrix column of in-bank offset `off` in bank `b` of width `bank`; it may lie past
 * the last real column when b is the zero-padded last bank. */
BS_HD int bs_col(int b, int bank, int off) { return b * bank + off; }

#endif
