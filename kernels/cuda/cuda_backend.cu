/* The CUDA backend: device memory, one stream per backend, balanced-sparse products by
 * the kernels of spmm.cu on the packed layout of bs_pack.h (fp32, fp16 or bf16 values,
 * fp32 sums), dense products by cuBLAS (sgemv at batch 1, sgemm above) with the bias
 * and activation in a second kernel, the fused LSTM cell, and the optional lstm_step op
 * (one launch per recurrent step for a sparse W_hh). Every CUDA and cuBLAS call
 * is checked (CUDA_TRY / CUBLAS_TRY name the statement, file and line), and so is every
 * launch; a device error returns BALSA_ERR_DEVICE, is printed once to stderr, and marks
 * the backend unhealthy: from then on every op fails with BALSA_ERR_DEVICE at once.
 * The device is made current once, at creation: with a device other than 0, call the
 * ops from the creating thread (or make that device current in the calling thread). */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The project's C headers, with C linkage (they carry no extern "C" of their own). */
extern "C" {
#include "../backend.h"
#include "../bsmat.h"
}
#include "cuda_backend.h"
#include "cuda_kernels.h"

struct cuda_backend {
    balsa_backend base; /* first, so a balsa_backend * is a cuda_backend * */
    balsa_cuda_options opt;
    cudaStream_t stream;
    cublasHandle_t cublas;
    int sms;
    int healthy;
    float *work; /* split-K partial sums of kernel 2, grown on demand */
    size_t work_floats;
};

struct balsa_mat {
    int sparse;
    int rows, cols;
    gpu_bsmat sp;  /* sparse: packed device arrays */
    float *dense;  /* dense: rows x cols row-major on the device */
};

static cuda_backend *cb(balsa_backend *be) { return reinterpret_cast<cuda_backend *>(be); }

/* Reports a failed CUDA call and marks the backend unhealthy. Errors that leave the
 * device usable are not device failures and leave the backend healthy: running out of
 * memory (BALSA_ERR_OOM), and a size the kernels or the launch limits cannot take
 * (BALSA_ERR_UNSUPPORTED). */
static balsa_status cuda_fail(cuda_backend *be, const char *what, const char *file, int line,
                              cudaError_t e)
{
    if (e == cudaErrorMemoryAllocation || e == cudaErrorInvalidValue ||
        e == cudaErrorInvalidConfiguration || e == cudaErrorNotSupported) {
        cudaGetLastError(); /* not sticky: clear it so the next check does not see it */
        fprintf(stderr, "balsa cuda: %s at %s:%d: %s\n", what, file, line, cudaGetErrorString(e));
        return e == cudaErrorMemoryAllocation ? BALSA_ERR_OOM : BALSA_ERR_UNSUPPORTED;
    }
    if (be->healthy)
        fprintf(stderr, "balsa cuda: %s failed at %s:%d: %s (%d); backend marked unhealthy\n",
                what, file, line, cudaGetErrorString(e), (int)e);
    be->healthy = 0;
    return BALSA_ERR_DEVICE;
}

static balsa_status cublas_fail(cuda_backend *be, const char *what, const char *file, int line,
                                cublasStatus_t s)
{
    if (be->healthy)
        fprintf(stderr, "balsa cuda: %s failed at %s:%d: %s (%d); backend marked unhealthy\n",
                what, file, line, cublasGetStatusName(s), (int)s);
    be->healthy = 0;
    return BALSA_ERR_DEVICE;
}

#define CUDA_TRY(be, stmt)                                                 \
    do {                                                                   \
        cudaError_t e_ = (stmt);                                           \
        if (e_ != cudaSuccess)                                             \
            return cuda_fail((be), #stmt, __FILE__, __LINE__, e_);         \
    } while (0)

#define CUBLAS_TRY(be, stmt)                                               \
    do {                                                                   \
        cublasStatus_t s_ = (stmt);                                        \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                   \
            return cublas_fail((be), #stmt, __FILE__, __LINE__, s_);       \
    } while (0)

#define HEALTHY_OR_FAIL(be)                                                \
    do {                                                                   \
        if (!(be)->healthy)                                                \
            return BALSA_ERR_DEVICE;                                       \
    } while (0)

static void *cuda_alloc(balsa_backend *b, size_t bytes)
{
    cuda_backend *be = cb(b);
    if (!be->healthy)
        return NULL;
    size_t rounded = bytes ? (bytes + 63) / 64 * 64 : 64;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, rounded);
    if (e != cudaSuccess) {
        cuda_fail(be, "cudaMalloc(&p, rounded)", __FILE__, __LINE__, e);
        return NULL;
    }
    e = cudaMemsetAsync(p, 0, rounded, be->stream);
    if (e != cudaSuccess) {
        cuda_fail(be, "cudaMemsetAsync(p, 0, rounded, be->stream)", __FILE__, __LINE__, e);
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_free(balsa_backend *b, void *p)
{
    cuda_backend *be = cb(b);
    if (!p)
        return;
    cudaError_t e = cudaFree(p);
    if (e != cudaSuccess)
        cuda_fail(be, "cudaFree(p)", __FILE__, __LINE__, e);
}

/* Copies are queued on the backend's stream, after the work already queued, and waited
 * for, so the caller may reuse its host buffer (and read what it got) at once. */
static balsa_status cuda_to_device(balsa_backend *b, void *dst, const void *src, size_t bytes)
{
    cuda_backend *be = cb(b);
    HEALTHY_OR_FAIL(be);
    CUDA_TRY(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, be->stream));
    CUDA_TRY(be, cudaStreamSynchronize(be->stream));
    return BALSA_OK;
}

static balsa_status cuda_to_host(balsa_backend *b, void *dst, const void *src, size_t bytes)
{
    cuda_backend *be = cb(b);
    HEALTHY_OR_FAIL(be);
    CUDA_TRY(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, be->stream));
    CUDA_TRY(be, cudaStreamSynchronize(be->stream));
    return BALSA_OK;
}

static void cuda_mat_free(balsa_backend *b, balsa_mat *m)
{
    if (!m)
        return;
    cuda_free(b, const_cast<void *>(m->sp.values));
    cuda_free(b, const_cast<uint8_t *>(m->sp.offsets));
    cuda_free(b, m->dense);
    free(m);
}

/* Copies n bytes from host to a new device buffer *dst. */
static balsa_status upload_bytes(cuda_backend *be, const void *src, size_t n, void **dst)
{
    *dst = NULL;
    CUDA_TRY(be, cudaMalloc(dst, n ? n : 1));
    CUDA_TRY(be, cudaMemcpyAsync(*dst, src, n, cudaMemcpyHostToDevice, be->stream));
    CUDA_TRY(be, cudaStreamSynchronize(be->stream));
    return BALSA_OK;
}

/* Packs w (bs_pack.h), converts the values to the backend's storage type and uploads. */
static balsa_status cuda_upload_sparse(balsa_backend *b, const bsmat *w, balsa_mat **out)
{
    cuda_backend *be = cb(b);
    HEALTHY_OR_FAIL(be);
    char err[160];
    if (bsmat_validate(w, err, sizeof err) != BALSA_OK) {
        fprintf(stderr, "balsa cuda: upload_sparse: %s\n", err);
        return BALSA_ERR_INVALID;
    }
    bs_pack_shape s = bs_pack_shape_of(w);
    size_t count = bs_pack_count(&s);
    size_t esize = be->opt.values == BALSA_CUDA_F32 ? sizeof(float) : 2;
    balsa_mat *m = static_cast<balsa_mat *>(calloc(1, sizeof *m));
    float *hv = static_cast<float *>(malloc(count * sizeof(float)));
    uint8_t *ho = static_cast<uint8_t *>(malloc(count));
    void *conv = esize == 2 ? malloc(count * 2) : NULL;
    balsa_status st = BALSA_ERR_OOM;
    void *dv = NULL, *dofs = NULL;
    if (m && hv && ho && (esize != 2 || conv)) {
        bs_pack(w, &s, hv, ho);
        const void *src = hv;
        if (be->opt.values == BALSA_CUDA_F16) {
            __half *hp = static_cast<__half *>(conv);
            for (size_t i = 0; i < count; i++)
                hp[i] = __float2half(hv[i]);
            src = conv;
        } else if (be->opt.values == BALSA_CUDA_BF16) {
            __nv_bfloat16 *bp = static_cast<__nv_bfloat16 *>(conv);
            for (size_t i = 0; i < count; i++)
                bp[i] = __float2bfloat16(hv[i]);
            src = conv;
        }
        st = upload_bytes(be, src, count * esize, &dv);
        if (st == BALSA_OK)
            st = upload_bytes(be, ho, count, &dofs);
    }
    free(hv);
    free(ho);
    free(conv);
    if (st != BALSA_OK) {
        cuda_free(b, dv);
        cuda_free(b, dofs);
        free(m);
        return st;
    }
    m->sparse = 1;
    m->rows = w->rows;
    m->cols = w->cols;
    m->sp.shape = s;
    m->sp.dtype = static_cast<gpu_dtype>(be->opt.values);
    m->sp.values = dv;
    m->sp.offsets = static_cast<const uint8_t *>(dofs);
    *out = m;
    return BALSA_OK;
}

static balsa_status cuda_upload_dense(balsa_backend *b, const float *w, int rows, int cols,
                                      balsa_mat **out)
{
    cuda_backend *be = cb(b);
    HEALTHY_OR_FAIL(be);
    if (rows < 1 || cols < 1)
        return BALSA_ERR_INVALID;
    balsa_mat *m = static_cast<balsa_mat *>(calloc(1, sizeof *m));
    if (!m)
        return BALSA_ERR_OOM;
    void *d = NULL;
    balsa_status st = upload_bytes(be, w, (size_t)rows * cols * sizeof(float), &d);
    if (st != BALSA_OK) {
        cuda_free(b, d);
        free(m);
        return st;
    }
    m->rows = rows;
    m->cols = cols;
    m->dense = static_cast<float *>(d);
    *out = m;
    return BALSA_OK;
}

/* Grows the split-K workspace to at least `floats`. Waits for queued work first, since
 * it may still use the old buffer. */
static balsa_status ensure_work(cuda_backend *be, size_t floats)
{
    if (floats <= be->work_floats)
        return BALSA_OK;
    CUDA_TRY(be, cudaStreamSynchronize(be->stream));
    if (be->work) {
        CUDA_TRY(be, cudaFree(be->work));
        be->work = NULL;
        be->work_floats = 0;
    }
    CUDA_TRY(be, cudaMalloc(&be->work, floats * sizeof(float)));
    be->work_floats = floats;
    return BALSA_OK;
}

static balsa_status cuda_matmul(balsa_backend *b, const balsa_mat *w, const float *x, int ldx,
                                int n, const float *bias, int accumulate, balsa_act act,
                                float *y, int ldy)
{
    cuda_backend *be = cb(b);
    if (!w || n < 0 || ldx < w->cols || ldy < w->rows || (n > 0 && (!x || !y)))
        return BALSA_ERR_INVALID;
    HEALTHY_OR_FAIL(be);
    if (n == 0)
        return BALSA_OK;
    if (w->sparse) {
        int version = be->opt.spmm_version ? be->opt.spmm_version : 2;
        if (version == 2) {
            spmm_plan p;
            spmm_plan_make(&w->sp, n, be->sms, &p);
            balsa_status st = ensure_work(be, p.work_floats);
            if (st != BALSA_OK)
                return st;
        }
        CUDA_TRY(be, spmm_cuda(version, &w->sp, x, ldx, n, bias, accumulate, (int)act, y, ldy,
                               be->work, be->work_floats, be->sms, be->stream));
        return BALSA_OK;
    }
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    /* cuBLAS is column-major: the row-major rows x cols W is the column-major cols x rows
     * matrix W^T, so op T gives W; X and Y are column-major cols x n and rows x n. */
    if (n == 1)
        CUBLAS_TRY(be, cublasSgemv(be->cublas, CUBLAS_OP_T, w->cols, w->rows, &alpha, w->dense,
                                   w->cols, x, 1, &beta, y, 1));
    else
        CUBLAS_TRY(be, cublasSgemm(be->cublas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, n, w->cols,
                                   &alpha, w->dense, w->cols, x, ldx, &beta, y, ldy));
    if (bias || act != BALSA_ACT_NONE)
        CUDA_TRY(be, bias_act_cuda(y, ldy, n, w->rows, bias, (int)act, be->stream));
    return BALSA_OK;
}

static balsa_status cuda_lstm_cell(balsa_backend *b, const float *gates, int ldg, float *c,
                                   float *h, int ldh, int n, int hidden)
{
    cuda_backend *be = cb(b);
    if (n < 0 || hidden < 1 || ldg < 4 * hidden || ldh < hidden)
        return BALSA_ERR_INVALID;
    HEALTHY_OR_FAIL(be);
    CUDA_TRY(be, lstm_cell_cuda(gates, ldg, c, h, ldh, n, hidden, be->stream));
    return BALSA_OK;
}

static balsa_status cuda_softmax(balsa_backend *b, const float *x, int ldx, int n, int cols,
                                 int take_log, float *y, int ldy)
{
    cuda_backend *be = cb(b);
    if (n < 0 || cols < 1 || ldx < cols || ldy < cols || (x == y && ldx != ldy))
        return BALSA_ERR_INVALID;
    HEALTHY_OR_FAIL(be);
    CUDA_TRY(be, softmax_cuda(x, ldx, n, cols, take_log, y, ldy, be->stream));
    return BALSA_OK;
}

/* Sparse w_hh with the fast kernel: one fused launch; otherwise (dense, kernel 1, or a
 * hidden size too large for the fused kernel's shared memory) the product then the cell. */
static balsa_status cuda_lstm_step(balsa_backend *b, const balsa_mat *w, const float *h_prev,
                                   int ldhp, float *gates, int ldg, float *c, float *h, int ldh,
                                   int n, int hidden)
{
    cuda_backend *be = cb(b);
    if (!w || n < 0 || hidden < 1 || w->rows != 4 * hidden || w->cols != hidden ||
        ldhp < hidden || ldg < 4 * hidden || ldh < hidden)
        return BALSA_ERR_INVALID;
    HEALTHY_OR_FAIL(be);
    if (n == 0)
        return BALSA_OK;
    if (w->sparse && be->opt.spmm_version != 1) {
        cudaError_t e = spmm_lstm_cuda(&w->sp, h_prev, ldhp, gates, ldg, c, h, ldh, n, hidden,
                                       be->opt.pdl, be->stream);
        if (e != cudaErrorNotSupported) {
            CUDA_TRY(be, e);
            return BALSA_OK;
        }
    }
    balsa_status st = cuda_matmul(b, w, h_prev, ldhp, n, NULL, 1, BALSA_ACT_NONE, gates, ldg);
    return st != BALSA_OK ? st : cuda_lstm_cell(b, gates, ldg, c, h, ldh, n, hidden);
}

static balsa_status cuda_synchronize(balsa_backend *b)
{
    cuda_backend *be = cb(b);
    HEALTHY_OR_FAIL(be);
    CUDA_TRY(be, cudaStreamSynchronize(be->stream));
    return BALSA_OK;
}

static void cuda_destroy(balsa_backend *b)
{
    cuda_backend *be = cb(b);
    if (be->work)
        cudaFree(be->work);
    if (be->cublas)
        cublasDestroy(be->cublas);
    if (be->stream)
        cudaStreamDestroy(be->stream);
    free(be);
}

static const balsa_backend_ops cuda_ops = {
    "cuda",
    cuda_destroy,
    cuda_alloc,
    cuda_free,
    cuda_to_device,
    cuda_to_host,
    cuda_upload_sparse,
    cuda_upload_dense,
    cuda_mat_free,
    cuda_matmul,
    cuda_lstm_cell,
    cuda_softmax,
    cuda_synchronize,
    cuda_lstm_step,
};

static const char *values_name(balsa_cuda_values v)
{
    return v == BALSA_CUDA_F16 ? "fp16" : v == BALSA_CUDA_BF16 ? "bf16" : "fp32";
}

balsa_status balsa_backend_cuda_create(const balsa_cuda_options *opt, balsa_backend **out,
                                       char *why, size_t whylen)
{
    char tmp[8];
    if (!why) {
        why = tmp;
        whylen = sizeof tmp;
    }
    balsa_cuda_options o = {0, BALSA_CUDA_F32, 0, 0};
    if (opt)
        o = *opt;
    if ((unsigned)o.values > BALSA_CUDA_BF16 || o.spmm_version < 0 || o.spmm_version > 2 ||
        o.device < 0 || o.pdl < 0 || o.pdl > 1) {
        snprintf(why, whylen, "invalid CUDA backend options (device %d, values %d, kernel %d)",
                 o.device, (int)o.values, o.spmm_version);
        return BALSA_ERR_INVALID;
    }
    int count = 0; /* without a driver the call fails and leaves count untouched */
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(why, whylen, "cudaGetDeviceCount: %s (%d)", cudaGetErrorString(e), (int)e);
        cudaGetLastError();
        return BALSA_ERR_UNSUPPORTED;
    }
    if (count < 1) {
        snprintf(why, whylen, "no CUDA device (cudaGetDeviceCount found 0)");
        return BALSA_ERR_UNSUPPORTED;
    }
    if (o.device >= count) {
        snprintf(why, whylen, "CUDA device %d asked for, %d found", o.device, count);
        return BALSA_ERR_UNSUPPORTED;
    }
    cudaDeviceProp prop;
    e = cudaSetDevice(o.device);
    if (e == cudaSuccess)
        e = cudaGetDeviceProperties(&prop, o.device);
    if (e != cudaSuccess) {
        snprintf(why, whylen, "device %d: %s (%d)", o.device, cudaGetErrorString(e), (int)e);
        cudaGetLastError();
        return BALSA_ERR_UNSUPPORTED;
    }
    cuda_backend *be = static_cast<cuda_backend *>(calloc(1, sizeof *be));
    if (!be) {
        snprintf(why, whylen, "out of host memory");
        return BALSA_ERR_OOM;
    }
    be->opt = o;
    be->sms = prop.multiProcessorCount;
    be->healthy = 1;
    e = cudaStreamCreateWithFlags(&be->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        snprintf(why, whylen, "cudaStreamCreateWithFlags: %s (%d)", cudaGetErrorString(e),
                 (int)e);
        be->stream = NULL;
        cuda_destroy(&be->base);
        return BALSA_ERR_UNSUPPORTED;
    }
    cublasStatus_t s = cublasCreate(&be->cublas);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasSetStream(be->cublas, be->stream);
    else
        be->cublas = NULL;
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(why, whylen, "cublasCreate: %s (%d)", cublasGetStatusName(s), (int)s);
        cuda_destroy(&be->base);
        return BALSA_ERR_UNSUPPORTED;
    }
    be->base.ops = &cuda_ops;
    be->base.threads = 1;
    be->base.host_memory = 0; /* device memory: the engine stages through to_device */
    snprintf(be->base.describe, sizeof be->base.describe,
             "cuda (%.40s, sm_%d%d, %d SMs, %.0f GiB, %s values, spmm kernel %d%s)", prop.name,
             prop.major, prop.minor, prop.multiProcessorCount,
             prop.totalGlobalMem / 1073741824.0, values_name(o.values),
             o.spmm_version ? o.spmm_version : 2, o.pdl ? ", PDL" : "");
    snprintf(why, whylen, "%s", be->base.describe);
    *out = &be->base;
    return BALSA_OK;
}

void *balsa_cuda_stream(balsa_backend *b) { return cb(b)->stream; }
