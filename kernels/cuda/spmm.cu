/* Balanced-sparse SpMV/SpMM on the GPU, on the packed layout of bs_pack.h:
 *   spmm_kernel1  one thread per output, X read from global memory: simple, the check
 *                 on kernel 2 and the floor it is measured against.
 *   spmm_kernel2  the paper's kernel: a block stages the slice of X that its banks cover
 *                 in shared memory (every lane of a warp reads inside one bank's slice,
 *                 so 32-wide banks never conflict), a warp owns 32 consecutive rows (one
 *                 per lane, so every lane does the same work) and reads their weights as
 *                 consecutive vectors, partial sums for up to 8 batch columns stay in
 *                 registers, banks are split over the warps of a block (and over blocks
 *                 for long rows) and the parts are added in a fixed order: no atomics,
 *                 the same bits on every run.
 *   spmm_reduce_kernel  adds the per-block parts of kernel 2 when rows were split.
 * cuBLAS (dense) and cuSPARSE (CSR) are the other versions, in the backend and bench. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <string.h>

#include "../bs_math.h"
#include "cuda_kernels.h"

enum {
    SPMM_WARPS = 8, /* warps per block of kernel 2 */
    SPMM_THREADS = 32 * SPMM_WARPS,
    SPMM_X_BYTES = 32768, /* shared memory for the staged slice of X, per block */
    SIMPLE_THREADS = 128
};

/* Everything a kernel needs, passed by value. */
struct spmm_args {
    const void *values;
    const uint8_t *offsets;
    int rows, cols, bank, nbanks, k, vec, groups, rows_pad;
    const float *x;
    int ldx, n;
    const float *bias;
    int accumulate, act;
    float *y;
    int ldy;
    float *partial; /* [splits][n][rows] when splits > 1 */
    int splits, banks_per_split, warps_rows;
};

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

/* An unsigned type of BYTES bytes, for one vector load. */
template <int BYTES> struct raw_t;
template <> struct raw_t<1> { typedef unsigned char type; };
template <> struct raw_t<2> { typedef unsigned short type; };
template <> struct raw_t<4> { typedef unsigned int type; };
template <> struct raw_t<8> { typedef uint2 type; };
template <> struct raw_t<16> { typedef uint4 type; };

/* Loads the VEC values and VEC offsets at packed index idx (a multiple of VEC, so both
 * loads are aligned) through the read-only path, one load each. */
template <typename T, int VEC>
__device__ __forceinline__ void load_group(const T *values, const uint8_t *offsets, size_t idx,
                                           T *v, uint8_t *o)
{
    typedef typename raw_t<VEC * sizeof(T)>::type vraw;
    typedef typename raw_t<VEC>::type oraw;
    vraw rv = __ldg(reinterpret_cast<const vraw *>(values + idx));
    oraw ro = __ldg(reinterpret_cast<const oraw *>(offsets + idx));
    memcpy(v, &rv, sizeof rv);
    memcpy(o, &ro, sizeof ro);
}

/* y[col][row] = act(sum + bias[row] + (accumulate ? y[col][row] : 0)), the order of
 * spmm_ref. */
__device__ __forceinline__ void epilogue_store(const spmm_args &a, int row, int col, float sum)
{
    float *yp = a.y + (size_t)col * a.ldy + row;
    if (a.bias)
        sum += a.bias[row];
    if (a.accumulate)
        sum += *yp;
    *yp = bs_act(a.act, sum);
}

template <typename T>
__global__ void __launch_bounds__(SIMPLE_THREADS) spmm_kernel1(spmm_args a)
{
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= a.rows)
        return;
    const T *vals = static_cast<const T *>(a.values);
    for (int i = blockIdx.y; i < a.n; i += gridDim.y) {
        const float *xi = a.x + (size_t)i * a.ldx;
        float acc = 0.0f;
        for (int b = 0; b < a.nbanks; b++)
            for (int j = 0; j < a.k; j++) {
                size_t idx = (((size_t)b * a.groups + j / a.vec) * a.rows_pad + r) * a.vec +
                             j % a.vec;
                int c = bs_col(b, a.bank, a.offsets[idx]);
                if (c < a.cols)
                    acc += to_f(vals[idx]) * xi[c];
            }
        epilogue_store(a, r, i, acc);
    }
}

/* Block (bx, s, z): rows bx*32*WR .. +32*WR, banks of split s, batch columns z*NB ..
 * +NB. Warp w works on rows of its row group w % WR and on the banks of its share
 * w / WR of the split; lane = row. Shared memory: xs[NB][span] (the split's columns of
 * X, zero past cols and past n), then red[WK][NB][32*WR] for the sum over warps. */
template <typename T, int VEC, int NB>
__global__ void __launch_bounds__(SPMM_THREADS) spmm_kernel2(spmm_args a)
{
    extern __shared__ float smem[];
    constexpr int U = 16 / VEC; /* groups in flight per thread: 16 values */
    const int WR = a.warps_rows, WK = SPMM_WARPS / WR, rpb = 32 * WR;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wr = warp % WR, wk = warp / WR;
    const int row0 = blockIdx.x * rpb;
    const int s = blockIdx.y;
    const int i0 = blockIdx.z * NB;
    const int b0 = s * a.banks_per_split;
    const int b1 = min(a.nbanks, b0 + a.banks_per_split);
    const int span = (b1 - b0) * a.bank;
    const int c0 = b0 * a.bank;
    float *xs = smem;
    float *red = smem + (size_t)NB * a.banks_per_split * a.bank;

    for (int t = threadIdx.x; t < NB * span; t += blockDim.x) {
        int i = t / span, c = t - i * span;
        float v = 0.0f;
        if (i0 + i < a.n && c0 + c < a.cols)
            v = a.x[(size_t)(i0 + i) * a.ldx + c0 + c];
        xs[t] = v;
    }
    __syncthreads();

    float acc[NB];
#pragma unroll
    for (int i = 0; i < NB; i++)
        acc[i] = 0.0f;
    const int r = row0 + wr * 32 + lane;
    /* rows_pad is a multiple of 32, so a warp is wholly inside or wholly past it */
    if (row0 + wr * 32 < a.rows_pad) {
        const T *vals = static_cast<const T *>(a.values);
        const int G = a.groups, nbs = b1 - b0;
        const int wb0 = b0 + nbs * wk / WK, wb1 = b0 + nbs * (wk + 1) / WK;
        const int q1 = wb1 * G;
        int qb = wb0, qg = 0; /* bank and group of the next group to compute */
        for (int q = wb0 * G; q < q1; q += U) {
            T v[U][VEC];
            uint8_t o[U][VEC];
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (q + u < q1) {
                    load_group<T, VEC>(vals, a.offsets, ((size_t)(q + u) * a.rows_pad + r) * VEC,
                                       v[u], o[u]);
                } else {
#pragma unroll
                    for (int e = 0; e < VEC; e++) {
                        v[u][e] = T(0.0f);
                        o[u][e] = 0;
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (q + u < q1) {
                    const float *xb = xs + (qb - b0) * a.bank;
#pragma unroll
                    for (int e = 0; e < VEC; e++) {
                        const float wv = to_f(v[u][e]);
                        const float *xc = xb + o[u][e];
#pragma unroll
                        for (int i = 0; i < NB; i++)
                            acc[i] = fmaf(wv, xc[i * span], acc[i]);
                    }
                    if (++qg == G) {
                        qg = 0;
                        qb++;
                    }
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < NB; i++)
        red[(wk * NB + i) * rpb + wr * 32 + lane] = acc[i];
    __syncthreads();
    for (int t = threadIdx.x; t < NB * rpb; t += blockDim.x) {
        const int i = t / rpb, rr = t - i * rpb;
        float sum = 0.0f;
        for (int w = 0; w < WK; w++)
            sum += red[(w * NB + i) * rpb + rr];
        const int row = row0 + rr, col = i0 + i;
        if (row < a.rows && col < a.n) {
            if (a.splits > 1)
                a.partial[((size_t)s * a.n + col) * a.rows + row] = sum;
            else
                epilogue_store(a, row, col, sum);
        }
    }
}

__global__ void spmm_reduce_kernel(spmm_args a)
{
    const size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (size_t)a.n * a.rows)
        return;
    const int col = (int)(t / a.rows), row = (int)(t % a.rows);
    float sum = 0.0f;
    for (int s = 0; s < a.splits; s++)
        sum += a.partial[((size_t)s * a.n + col) * a.rows + row];
    epilogue_store(a, row, col, sum);
}

void spmm_plan_make(const gpu_bsmat *w, int n, int sms, spmm_plan *p)
{
    const bs_pack_shape &s = w->shape;
    int nb = 1;
    while (nb < n && nb < 8)
        nb *= 2;
    const long zb = (n + nb - 1) / nb;
    int bps = SPMM_X_BYTES / (s.bank * nb * (int)sizeof(float));
    if (bps < 1)
        bps = 1;
    int splits = (s.nbanks + bps - 1) / bps;
    /* Aim for two blocks per multiprocessor: first with more warps per block along the
     * banks (fewer rows per block), then, for long rows only, with more splits. */
    const long target = 2L * (sms > 0 ? sms : 1);
    int wr = SPMM_WARPS;
    while (wr > 1 && (long)((s.rows_pad + 32 * wr - 1) / (32 * wr)) * zb * splits < target)
        wr /= 2;
    const long blocks = (long)((s.rows_pad + 32 * wr - 1) / (32 * wr)) * zb;
    while (blocks * splits < target && s.nbanks / (splits * 2) >= 8 * SPMM_WARPS)
        splits *= 2;
    bps = (s.nbanks + splits - 1) / splits;
    splits = (s.nbanks + bps - 1) / bps;
    p->nb = nb;
    p->warps_rows = wr;
    p->splits = splits;
    p->banks_per_split = bps;
    p->smem = ((size_t)nb * bps * s.bank + (size_t)nb * SPMM_THREADS) * sizeof(float);
    p->work_floats = splits > 1 ? (size_t)splits * n * s.rows : 0;
    p->grid = dim3((unsigned)((s.rows_pad + 32 * wr - 1) / (32 * wr)), (unsigned)splits,
                   (unsigned)zb);
}

template <typename T, int VEC, int NB>
static void launch2(const spmm_plan &p, const spmm_args &a, cudaStream_t st)
{
    spmm_kernel2<T, VEC, NB><<<p.grid, SPMM_THREADS, p.smem, st>>>(a);
}

template <typename T, int VEC>
static void launch2_nb(const spmm_plan &p, const spmm_args &a, cudaStream_t st)
{
    switch (p.nb) {
    case 1: launch2<T, VEC, 1>(p, a, st); break;
    case 2: launch2<T, VEC, 2>(p, a, st); break;
    case 4: launch2<T, VEC, 4>(p, a, st); break;
    default: launch2<T, VEC, 8>(p, a, st); break;
    }
}

template <typename T>
static void launch2_vec(const spmm_plan &p, const spmm_args &a, cudaStream_t st)
{
    switch (a.vec) {
    case 4: launch2_nb<T, 4>(p, a, st); break;
    case 2: launch2_nb<T, 2>(p, a, st); break;
    default: launch2_nb<T, 1>(p, a, st); break;
    }
}

template <typename T>
static void launch1(const spmm_args &a, cudaStream_t st)
{
    dim3 grid((unsigned)((a.rows + SIMPLE_THREADS - 1) / SIMPLE_THREADS),
              (unsigned)(a.n < 65535 ? a.n : 65535));
    spmm_kernel1<T><<<grid, SIMPLE_THREADS, 0, st>>>(a);
}

cudaError_t spmm_cuda(int version, const gpu_bsmat *w, const float *x, int ldx, int n,
                      const float *bias, int accumulate, int act, float *y, int ldy,
                      float *work, size_t work_floats, int sms, cudaStream_t stream)
{
    if (n == 0)
        return cudaSuccess;
    const bs_pack_shape &s = w->shape;
    spmm_args a;
    a.values = w->values;
    a.offsets = w->offsets;
    a.rows = s.rows;
    a.cols = s.cols;
    a.bank = s.bank;
    a.nbanks = s.nbanks;
    a.k = s.k;
    a.vec = s.vec;
    a.groups = s.groups;
    a.rows_pad = s.rows_pad;
    a.x = x;
    a.ldx = ldx;
    a.n = n;
    a.bias = bias;
    a.accumulate = accumulate;
    a.act = act;
    a.y = y;
    a.ldy = ldy;
    a.partial = work;
    a.splits = 1;
    a.banks_per_split = s.nbanks;
    a.warps_rows = 1;
    if (version == 1) {
        switch (w->dtype) {
        case GPU_F16: launch1<__half>(a, stream); break;
        case GPU_BF16: launch1<__nv_bfloat16>(a, stream); break;
        default: launch1<float>(a, stream); break;
        }
        return cudaGetLastError();
    }
    if (version != 2)
        return cudaErrorInvalidValue;
    spmm_plan p;
    spmm_plan_make(w, n, sms, &p);
    if (p.grid.y > 65535 || p.grid.z > 65535)
        return cudaErrorInvalidConfiguration;
    if (p.work_floats > work_floats || (p.work_floats && !work))
        return cudaErrorInvalidValue;
    a.splits = p.splits;
    a.banks_per_split = p.banks_per_split;
    a.warps_rows = p.warps_rows;
    switch (w->dtype) {
    case GPU_F16: launch2_vec<__half>(p, a, stream); break;
    case GPU_BF16: launch2_vec<__nv_bfloat16>(p, a, stream); break;
    default: launch2_vec<float>(p, a, stream); break;
    }
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess || p.splits == 1)
        return e;
    const size_t total = (size_t)n * s.rows;
    spmm_reduce_kernel<<<(unsigned)((total + 255) / 256), 256, 0, stream>>>(a);
    return cudaGetLastError();
}
