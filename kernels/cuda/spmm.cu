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
 *   spmm_lstm_kernel1   one recurrent LSTM step in one launch: kernel 2's inner loop on
 *                 the rows of the four gates of 8 units per block, then the cell.
 * cuBLAS (dense) and cuSPARSE (CSR) are the other versions, in the backend and bench. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <atomic>

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

/* Loads groups q .. q+U-1 (those below q1) of row r; zeros past q1, so a batch past the
 * end costs no memory access. */
template <typename T, int VEC, int U>
__device__ __forceinline__ void load_batch(const T *vals, const uint8_t *offs, int q, int q1,
                                           int rows_pad, int r, T (&v)[U][VEC],
                                           uint8_t (&o)[U][VEC])
{
#pragma unroll
    for (int u = 0; u < U; u++) {
        if (q + u < q1) {
            load_group<T, VEC>(vals, offs, ((size_t)(q + u) * rows_pad + r) * VEC, v[u], o[u]);
        } else {
#pragma unroll
            for (int e = 0; e < VEC; e++) {
                v[u][e] = T(0.0f);
                o[u][e] = 0;
            }
        }
    }
}

/* Adds groups q .. q+U-1 (those below q1) into acc; (qb, qg) is the bank and in-bank
 * group of group q and moves along. x of bank qb is xs[i * span + (qb - b0) * bank ..]. */
template <typename T, int VEC, int NB, int U>
__device__ __forceinline__ void compute_batch(const T (&v)[U][VEC], const uint8_t (&o)[U][VEC],
                                              int q, int q1, int G, int &qb, int &qg,
                                              const float *xs, int b0, int bank, int span,
                                              float (&acc)[NB])
{
#pragma unroll
    for (int u = 0; u < U; u++) {
        if (q + u < q1) {
            const float *xb = xs + (qb - b0) * bank;
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

/* Stages columns c0 .. c0+span-1 of batch rows i0 .. i0+NB-1 of X into xs[NB][span],
 * zero past cols and past n. With 16-byte aligned rows (x aligned, ldx, c0 and span
 * multiples of 4) it moves float4s: a quarter of the loads, so the block starts its
 * weights sooner. */
template <int NB>
__device__ __forceinline__ void stage_x(float *xs, const float *x, int ldx, int n, int i0,
                                        int c0, int cols, int span)
{
    const int valid = min(span, cols - c0);
    const bool vec_ok = (reinterpret_cast<uintptr_t>(x) & 15) == 0 && ldx % 4 == 0 &&
                        c0 % 4 == 0 && span % 4 == 0;
#pragma unroll
    for (int i = 0; i < NB; i++) {
        const bool col_ok = i0 + i < n;
        if (vec_ok) {
            float4 *dst = reinterpret_cast<float4 *>(xs + i * span);
#pragma unroll 4
            for (int t = threadIdx.x; t < span / 4; t += blockDim.x) {
                const int c = 4 * t;
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (col_ok) {
                    const float *src = x + (size_t)(i0 + i) * ldx + c0 + c;
                    if (c + 3 < valid) {
                        v = __ldg(reinterpret_cast<const float4 *>(src));
                    } else {
                        v.x = c < valid ? src[0] : 0.0f;
                        v.y = c + 1 < valid ? src[1] : 0.0f;
                        v.z = c + 2 < valid ? src[2] : 0.0f;
                    }
                }
                dst[t] = v;
            }
        } else {
#pragma unroll 4
            for (int c = threadIdx.x; c < span; c += blockDim.x)
                xs[i * span + c] =
                    col_ok && c < valid ? x[(size_t)(i0 + i) * ldx + c0 + c] : 0.0f;
        }
    }
}

/* Block (bx, s, z): rows bx*32*WR .. +32*WR, banks of split s, batch columns z*NB ..
 * +NB. Warp w works on rows of its row group w % WR and on the banks of its share
 * w / WR of the split; lane = row. Shared memory: xs[NB][span] (the split's columns of
 * X, zero past cols and past n), then red[WK][NB][32*WR] for the sum over warps.
 * Weight loads are software-pipelined: the first batch is issued before X is staged,
 * and each next batch before the current one is used, so loads stay in flight. */
template <typename T, int VEC, int NB>
__global__ void __launch_bounds__(SPMM_THREADS) spmm_kernel2(spmm_args a)
{
    extern __shared__ float smem[];
    constexpr int U = VEC == 4 ? 4 : VEC == 2 ? 4 : 8; /* groups per batch: 8-16 values */
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

    const T *vals = static_cast<const T *>(a.values);
    const int G = a.groups, nbs = b1 - b0;
    const int wb0 = b0 + nbs * wk / WK, wb1 = b0 + nbs * (wk + 1) / WK;
    const int r = row0 + wr * 32 + lane;
    /* rows_pad is a multiple of 32, so a warp is wholly inside or wholly past it */
    const int q1 = row0 + wr * 32 < a.rows_pad ? wb1 * G : wb0 * G;
    int q = wb0 * G;
    T v[U][VEC];
    uint8_t o[U][VEC];
    load_batch<T, VEC, U>(vals, a.offsets, q, q1, a.rows_pad, r, v, o);

    stage_x<NB>(xs, a.x, a.ldx, a.n, i0, c0, a.cols, span);
    __syncthreads();

    float acc[NB];
#pragma unroll
    for (int i = 0; i < NB; i++)
        acc[i] = 0.0f;
    int qb = wb0, qg = 0; /* bank and in-bank group of group q */
    for (; q < q1; q += U) {
        T nv[U][VEC];
        uint8_t no[U][VEC];
        load_batch<T, VEC, U>(vals, a.offsets, q + U, q1, a.rows_pad, r, nv, no);
        compute_batch<T, VEC, NB, U>(v, o, q, q1, G, qb, qg, xs, b0, a.bank, span, acc);
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int e = 0; e < VEC; e++) {
                v[u][e] = nv[u][e];
                o[u][e] = no[u][e];
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

template <typename T, int VEC> static const void *kernel2_nb(int nb)
{
    switch (nb) {
    case 1: return reinterpret_cast<const void *>(spmm_kernel2<T, VEC, 1>);
    case 2: return reinterpret_cast<const void *>(spmm_kernel2<T, VEC, 2>);
    case 4: return reinterpret_cast<const void *>(spmm_kernel2<T, VEC, 4>);
    default: return reinterpret_cast<const void *>(spmm_kernel2<T, VEC, 8>);
    }
}

template <typename T> static const void *kernel2_vec(int vec, int nb)
{
    switch (vec) {
    case 4: return kernel2_nb<T, 4>(nb);
    case 2: return kernel2_nb<T, 2>(nb);
    default: return kernel2_nb<T, 1>(nb);
    }
}

/* The instance of kernel 2 for a value type, group width and batch columns per block. */
static const void *kernel2_ptr(gpu_dtype dt, int vec, int nb)
{
    switch (dt) {
    case GPU_F16: return kernel2_vec<__half>(vec, nb);
    case GPU_BF16: return kernel2_vec<__nv_bfloat16>(vec, nb);
    default: return kernel2_vec<float>(vec, nb);
    }
}

/* Blocks of kernel 2 that fit on one multiprocessor at once (registers and shared
 * memory), asked of the runtime once per instance and kept; 2 if the runtime cannot say. */
static int kernel2_blocks_per_sm(gpu_dtype dt, int vec, int nb)
{
    static std::atomic<int> cache[3][3][4];
    const int di = dt == GPU_F16 ? 1 : dt == GPU_BF16 ? 2 : 0;
    const int vi = vec == 4 ? 2 : vec == 2 ? 1 : 0, ni = nb == 8 ? 3 : nb == 4 ? 2 : nb - 1;
    int v = cache[di][vi][ni].load(std::memory_order_relaxed);
    if (v > 0)
        return v;
    int blocks = 0;
    /* the largest shared memory the plan gives a block, so the answer is a lower bound */
    const size_t smem = SPMM_X_BYTES + (size_t)nb * SPMM_THREADS * sizeof(float);
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel2_ptr(dt, vec, nb),
                                                      SPMM_THREADS, smem) != cudaSuccess ||
        blocks < 1) {
        cudaGetLastError(); /* a failed query is not a device error */
        blocks = 2;
    }
    cache[di][vi][ni].store(blocks, std::memory_order_relaxed);
    return blocks;
}

void spmm_plan_make(const gpu_bsmat *w, int n, int sms, spmm_plan *p)
{
    const bs_pack_shape &s = w->shape;
    int nb = 1;
    while (nb < n && nb < 8)
        nb *= 2;
    const long zb = (n + nb - 1) / nb;
    int bps_max = SPMM_X_BYTES / (s.bank * nb * (int)sizeof(float));
    if (bps_max < 1)
        bps_max = 1;
    const int s_min = (s.nbanks + bps_max - 1) / bps_max;
    const double slots =
        (double)kernel2_blocks_per_sm(w->dtype, s.vec, nb) * (sms > 0 ? sms : 1);
    const double esize = w->dtype == GPU_F32 ? 4 : 2;
    const double weight_bytes = (double)s.rows * s.nbanks * s.k * (esize + 1);
    /* Only a product that streams many bytes gains from more splits than shared memory
     * asks for; on a small one the second (reduce) launch costs more than it saves. */
    const int s_max = weight_bytes > 16e6 ? std::min(2 * s_min, s.nbanks) : s_min;
    /* Score each shape of the grid: the fraction of the machine its last wave keeps busy,
     * against the bytes it adds to the weights: partial sums written and read back, X
     * staged once per block (from L2: a quarter the cost), and the reduce launch (about
     * 1 us, as 4 MB). Ties keep more rows per block and fewer splits. */
    double best = -1;
    for (int wr = SPMM_WARPS; wr >= 1; wr /= 2) {
        const long rb = (s.rows_pad + 32 * wr - 1) / (32 * wr);
        for (int sp = s_min; sp <= s_max; sp++) {
            const int bps = (s.nbanks + sp - 1) / sp, spr = (s.nbanks + bps - 1) / bps;
            const double blocks = (double)rb * zb * spr;
            const double waves = ceil(blocks / slots);
            const double eff = blocks / (waves * slots);
            const double extra = (spr > 1 ? 8.0 * spr * n * s.rows + 4e6 : 0.0) +
                                 0.25 * blocks * bps * s.bank * nb * sizeof(float);
            const double score = eff / (1.0 + extra / weight_bytes);
            if (score > best * (1.0 + 1e-9)) {
                best = score;
                p->warps_rows = wr;
                p->splits = spr;
                p->banks_per_split = bps;
            }
        }
    }
    p->nb = nb;
    p->smem = ((size_t)nb * p->banks_per_split * s.bank + (size_t)nb * SPMM_THREADS) *
              sizeof(float);
    p->work_floats = p->splits > 1 ? (size_t)p->splits * n * s.rows : 0;
    p->grid = dim3((unsigned)((s.rows_pad + 32 * p->warps_rows - 1) / (32 * p->warps_rows)),
                   (unsigned)p->splits, (unsigned)zb);
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
    void *args[] = {&a};
    cudaError_t e = cudaLaunchKernel(kernel2_ptr(w->dtype, s.vec, p.nb), p.grid, dim3(SPMM_THREADS),
                                     args, p.smem, stream);
    if (e != cudaSuccess)
        return e;
    e = cudaGetLastError();
    if (e != cudaSuccess || p.splits == 1)
        return e;
    const size_t total = (size_t)n * s.rows;
    spmm_reduce_kernel<<<(unsigned)((total + 255) / 256), 256, 0, stream>>>(a);
    return cudaGetLastError();
}

/* h_prev staged plus red and gsum at 8 batch columns stay within the 48 KB a block gets
 * without opting in */
enum { LSTM_UNITS = 8, LSTM_X_BYTES = 49152 - (SPMM_WARPS + 1) * 8 * 32 * 4 };

/* Arguments of the fused step. */
struct lstm_step_args {
    const void *values;
    const uint8_t *offsets;
    int hidden, bank, nbanks, groups, rows_pad;
    const float *h_prev;
    int ldhp, n;
    const float *gates;
    int ldg;
    float *c, *h;
    int ldh;
};

/* Block (bx, z): units bx*8 .. +8, batch columns z*NB .. +NB. Lane l of every warp owns
 * gate l / 8 of unit l % 8, i.e. W_hh row (l / 8) * hidden + unit; warp w adds banks
 * [w * nbanks / 8, (w + 1) * nbanks / 8) of that row. Shared memory: xs[NB][nbanks*bank]
 * (h_prev, zero past hidden and n), red[8][NB][32] (per-warp sums), gsum[NB][32]. */
template <typename T, int VEC, int NB>
__global__ void __launch_bounds__(SPMM_THREADS) spmm_lstm_kernel1(lstm_step_args a)
{
    extern __shared__ float smem[];
    constexpr int U = VEC == 4 ? 4 : VEC == 2 ? 4 : 8;
    const int H = a.hidden, span = a.nbanks * a.bank;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int gate = lane / LSTM_UNITS, unit = blockIdx.x * LSTM_UNITS + lane % LSTM_UNITS;
    const int i0 = blockIdx.y * NB;
    float *xs = smem;
    float *red = xs + (size_t)NB * span;
    float *gsum = red + SPMM_WARPS * NB * 32;

    const T *vals = static_cast<const T *>(a.values);
    const int G = a.groups;
    const int wb0 = a.nbanks * warp / SPMM_WARPS, wb1 = a.nbanks * (warp + 1) / SPMM_WARPS;
    const int r = gate * H + (unit < H ? unit : 0);
    const int q1 = unit < H ? wb1 * G : wb0 * G; /* lanes past the last unit load nothing */
    int q = wb0 * G;
    T v[U][VEC];
    uint8_t o[U][VEC];
    load_batch<T, VEC, U>(vals, a.offsets, q, q1, a.rows_pad, r, v, o);
    /* Under programmatic dependent launch this kernel may start before the one it follows
     * (the previous step) has finished: only weights, which no kernel writes, are read
     * above; wait here for it to complete before reading h_prev, gates and c. Then let
     * the next step start its own weight loads. Without PDL both return at once. */
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);

    stage_x<NB>(xs, a.h_prev, a.ldhp, a.n, i0, 0, H, span);
    __syncthreads();

    float acc[NB];
#pragma unroll
    for (int i = 0; i < NB; i++)
        acc[i] = 0.0f;
    int qb = wb0, qg = 0;
    for (; q < q1; q += U) {
        T nv[U][VEC];
        uint8_t no[U][VEC];
        load_batch<T, VEC, U>(vals, a.offsets, q + U, q1, a.rows_pad, r, nv, no);
        compute_batch<T, VEC, NB, U>(v, o, q, q1, G, qb, qg, xs, 0, a.bank, span, acc);
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int e = 0; e < VEC; e++) {
                v[u][e] = nv[u][e];
                o[u][e] = no[u][e];
            }
    }
#pragma unroll
    for (int i = 0; i < NB; i++)
        red[(warp * NB + i) * 32 + lane] = acc[i];
    __syncthreads();
    for (int t = threadIdx.x; t < NB * 32; t += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < SPMM_WARPS; w++)
            sum += red[w * NB * 32 + t];
        gsum[t] = sum;
    }
    __syncthreads();
    for (int t = threadIdx.x; t < NB * LSTM_UNITS; t += blockDim.x) {
        const int i = t / LSTM_UNITS, u = t % LSTM_UNITS;
        const int j = blockIdx.x * LSTM_UNITS + u, col = i0 + i;
        if (j >= H || col >= a.n)
            continue;
        const float *g = a.gates + (size_t)col * a.ldg;
        const float *s = gsum + i * 32;
        float *cp = a.c + (size_t)col * H + j;
        const float cn = bs_lstm_c(s[0 * LSTM_UNITS + u] + g[j], s[1 * LSTM_UNITS + u] + g[H + j],
                                   s[2 * LSTM_UNITS + u] + g[2 * H + j], *cp);
        *cp = cn;
        a.h[(size_t)col * a.ldh + j] = bs_lstm_h(s[3 * LSTM_UNITS + u] + g[3 * H + j], cn);
    }
}

template <typename T, int VEC> static const void *lstm_kernel_nb(int nb)
{
    switch (nb) {
    case 1: return reinterpret_cast<const void *>(spmm_lstm_kernel1<T, VEC, 1>);
    case 2: return reinterpret_cast<const void *>(spmm_lstm_kernel1<T, VEC, 2>);
    case 4: return reinterpret_cast<const void *>(spmm_lstm_kernel1<T, VEC, 4>);
    default: return reinterpret_cast<const void *>(spmm_lstm_kernel1<T, VEC, 8>);
    }
}

template <typename T> static const void *lstm_kernel_vec(int vec, int nb)
{
    switch (vec) {
    case 4: return lstm_kernel_nb<T, 4>(nb);
    case 2: return lstm_kernel_nb<T, 2>(nb);
    default: return lstm_kernel_nb<T, 1>(nb);
    }
}

cudaError_t spmm_lstm_cuda(const gpu_bsmat *w_hh, const float *h_prev, int ldhp, const float *gates,
                           int ldg, float *c, float *h, int ldh, int n, int hidden, int pdl,
                           cudaStream_t stream)
{
    const bs_pack_shape &s = w_hh->shape;
    if (s.rows != 4 * hidden || s.cols != hidden)
        return cudaErrorInvalidValue;
    if (n == 0)
        return cudaSuccess;
    const size_t row_bytes = (size_t)s.nbanks * s.bank * sizeof(float);
    int nb = 1;
    while (nb < n && nb < 8 && (size_t)(2 * nb) * row_bytes <= LSTM_X_BYTES)
        nb *= 2;
    if ((size_t)nb * row_bytes > LSTM_X_BYTES)
        return cudaErrorNotSupported;
    const unsigned zb = (unsigned)((n + nb - 1) / nb);
    if (zb > 65535)
        return cudaErrorInvalidConfiguration;
    lstm_step_args a;
    a.values = w_hh->values;
    a.offsets = w_hh->offsets;
    a.hidden = hidden;
    a.bank = s.bank;
    a.nbanks = s.nbanks;
    a.groups = s.groups;
    a.rows_pad = s.rows_pad;
    a.h_prev = h_prev;
    a.ldhp = ldhp;
    a.n = n;
    a.gates = gates;
    a.ldg = ldg;
    a.c = c;
    a.h = h;
    a.ldh = ldh;
    const void *k;
    switch (w_hh->dtype) {
    case GPU_F16: k = lstm_kernel_vec<__half>(s.vec, nb); break;
    case GPU_BF16: k = lstm_kernel_vec<__nv_bfloat16>(s.vec, nb); break;
    default: k = lstm_kernel_vec<float>(s.vec, nb); break;
    }
    const size_t smem = ((size_t)nb * s.nbanks * s.bank + (SPMM_WARPS + 1) * (size_t)nb * 32) *
                        sizeof(float);
    void *args[] = {&a};
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)((hidden + LSTM_UNITS - 1) / LSTM_UNITS), zb);
    cfg.blockDim = dim3(SPMM_THREADS);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    cudaError_t e = cudaLaunchKernelExC(&cfg, k, args);
    return e != cudaSuccess ? e : cudaGetLastError();
}
