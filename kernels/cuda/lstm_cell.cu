/* Pointwise CUDA kernels: the fused LSTM cell (one thread per unit: four gate
 * activations, the cell update and the output in one pass) and the bias + activation
 * epilogue of the dense cuBLAS path. The arithmetic is kernels/bs_math.h's, shared with
 * the CPU reference. */
#include "../bs_math.h"
#include "cuda_kernels.h"

__global__ void lstm_cell_kernel1(const float *gates, int ldg, float *c, float *h, int ldh,
                                  int n, int hidden)
{
    const size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (size_t)n * hidden)
        return;
    const int r = (int)(t / hidden), j = (int)(t % hidden);
    const float *g = gates + (size_t)r * ldg;
    float *cp = c + (size_t)r * hidden + j;
    const float cn = bs_lstm_c(g[j], g[hidden + j], g[2 * hidden + j], *cp);
    *cp = cn;
    h[(size_t)r * ldh + j] = bs_lstm_h(g[3 * hidden + j], cn);
}

__global__ void bias_act_kernel1(float *y, int ldy, int n, int rows, const float *bias, int act)
{
    const size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (size_t)n * rows)
        return;
    const int i = (int)(t / rows), r = (int)(t % rows);
    float *yp = y + (size_t)i * ldy + r;
    *yp = bs_act(act, *yp + (bias ? bias[r] : 0.0f));
}

cudaError_t lstm_cell_cuda(const float *gates, int ldg, float *c, float *h, int ldh, int n,
                           int hidden, cudaStream_t stream)
{
    const size_t total = (size_t)n * hidden;
    if (total == 0)
        return cudaSuccess;
    lstm_cell_kernel1<<<(unsigned)((total + 255) / 256), 256, 0, stream>>>(gates, ldg, c, h,
                                                                           ldh, n, hidden);
    return cudaGetLastError();
}

cudaError_t bias_act_cuda(float *y, int ldy, int n, int rows, const float *bias, int act,
                          cudaStream_t stream)
{
    const size_t total = (size_t)n * rows;
    if (total == 0)
        return cudaSuccess;
    bias_act_kernel1<<<(unsigned)((total + 255) / 256), 256, 0, stream>>>(y, ldy, n, rows, bias,
                                                                          act);
    return cudaGetLastError();
}
