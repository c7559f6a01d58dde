/* Pointwise and per-row CUDA kernels: the fused LSTM cell (one thread per unit: four gate
 * activations, the cell update and the output in one pass), the bias + activation
 * epilogue of the dense cuBLAS path, and the softmax head (one block per row). The
 * arithmetic is kernels/bs_math.h's and the reference's, shared with the CPU. */
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

#define SOFTMAX_THREADS 256

/* One block per row. The threads stride over the row for its maximum, then for the sum of
 * e^(x - m) (each in double, as the CPU sums), both reduced through shared memory, then
 * write the row. Every read of x comes before the last reduction's barrier, and each
 * thread writes only the values it read, so y may be x. */
__global__ void __launch_bounds__(SOFTMAX_THREADS)
    softmax_kernel1(const float *x, int ldx, int cols, int take_log, float *y, int ldy)
{
    __shared__ float smax[SOFTMAX_THREADS];
    __shared__ double ssum[SOFTMAX_THREADS];
    const float *xr = x + (size_t)blockIdx.x * ldx;
    float *yr = y + (size_t)blockIdx.x * ldy;
    const int t = threadIdx.x;
    float m = -INFINITY;
    for (int i = t; i < cols; i += SOFTMAX_THREADS)
        m = fmaxf(m, xr[i]);
    smax[t] = m;
    __syncthreads();
    for (int w = SOFTMAX_THREADS / 2; w > 0; w /= 2) {
        if (t < w)
            smax[t] = fmaxf(smax[t], smax[t + w]);
        __syncthreads();
    }
    m = smax[0];
    double s = 0;
    for (int i = t; i < cols; i += SOFTMAX_THREADS)
        s += expf(xr[i] - m);
    ssum[t] = s;
    __syncthreads();
    for (int w = SOFTMAX_THREADS / 2; w > 0; w /= 2) {
        if (t < w)
            ssum[t] += ssum[t + w];
        __syncthreads();
    }
    s = ssum[0];
    if (take_log) {
        const double lse = m + log(s);
        for (int i = t; i < cols; i += SOFTMAX_THREADS)
            yr[i] = (float)(xr[i] - lse);
    } else {
        for (int i = t; i < cols; i += SOFTMAX_THREADS)
            yr[i] = (float)(expf(xr[i] - m) / s);
    }
}

cudaError_t softmax_cuda(const float *x, int ldx, int n, int cols, int take_log, float *y,
                         int ldy, cudaStream_t stream)
{
    if (n == 0)
        return cudaSuccess;
    softmax_kernel1<<<(unsigned)n, SOFTMAX_THREADS, 0, stream>>>(x, ldx, cols, take_log, y, ldy);
    return cudaGetLastError();
}
