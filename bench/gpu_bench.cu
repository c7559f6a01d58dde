/* The GPU benchmark: balsa's balanced-sparse kernels against cuBLAS (dense) and cuSPARSE
 * (CSR, unstructured) in the same run, on the paper's shapes (PAPER.md):
 *   1. copy bandwidth: cudaMemcpy device to device and a read-only kernel, the ceiling;
 *   2. the 16384 x 8192 matrix at 50..95% sparsity, batch 1 and 8;
 *   3. the LSTM gate matrices of hidden 650 (2600 x 650) and 1500 (6000 x 1500);
 *   4. a 2-layer hidden-1500 LSTM over 35 steps (input projection of all steps as one
 *      product, then per step the recurrent product and the fused cell), captured once as
 *      a CUDA graph and replayed, through the backend (sparse: balsa kernels; dense:
 *      cuBLAS), at 80% and 90%.
 * Every result is checked against float64 on the CPU before it is timed. Times are CUDA
 * event medians; "cold" flushes L2 before each repeat by writing a 256 MB buffer. Ends with
 * the goals table. Usage: gpu_bench [--quick] [--pdl]   (--quick: fewer repeats, fewer
 * shapes; --pdl: only the LSTM, its fused steps launched with programmatic dependent
 * launch, a separate run so that a failure there cannot cost the other results). */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusparse.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <vector>

extern "C" {
#include "kernels/backend.h"
#include "kernels/bsmat.h"
}
#include "kernels/cuda/bs_pack.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_kernels.h"

#define CK(stmt)                                                                           \
    do {                                                                                   \
        cudaError_t e_ = (stmt);                                                           \
        if (e_ != cudaSuccess) {                                                           \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #stmt,                  \
                    cudaGetErrorString(e_));                                               \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)
#define CKB(stmt)                                                                          \
    do {                                                                                   \
        cublasStatus_t s_ = (stmt);                                                        \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #stmt,                  \
                    cublasGetStatusName(s_));                                              \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)
#define CKS(stmt)                                                                          \
    do {                                                                                   \
        cusparseStatus_t s_ = (stmt);                                                      \
        if (s_ != CUSPARSE_STATUS_SUCCESS) {                                               \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #stmt,                  \
                    cusparseGetErrorString(s_));                                           \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)
#define CKST(stmt)                                                                         \
    do {                                                                                   \
        balsa_status s_ = (stmt);                                                          \
        if (s_ != BALSA_OK) {                                                              \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #stmt,                  \
                    balsa_status_str(s_));                                                 \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

static int g_quick, g_pdl;
static cudaStream_t g_st;
static int g_sms;
static void *g_flush; /* 256 MB written before each cold repeat */
static const size_t FLUSH_BYTES = 256u << 20;
static double g_copy_gbs, g_read_gbs;

/* ---------- helpers ---------- */

static uint64_t g_seed = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    g_seed ^= g_seed << 13;
    g_seed ^= g_seed >> 7;
    g_seed ^= g_seed << 17;
    return g_seed;
}
static float rndf(void) { return (float)((rnd() >> 40) * (2.0 / 16777216.0) - 1.0); }

/* A random balanced-sparse matrix made directly (k distinct sorted offsets per bank,
 * values uniform in [-scale, scale), zero in the padding past cols): pruning a dense
 * 16384 x 8192 matrix would take the CPU longer than the whole GPU run. */
static void random_bsmat(bsmat *m, int rows, int cols, int bank, int k, float scale)
{
    CKST(bsmat_init(m, rows, cols, bank, k));
    int perm[BSMAT_MAX_BANK];
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < m->nbanks; b++) {
            for (int j = 0; j < bank; j++)
                perm[j] = j;
            for (int j = 0; j < k; j++) {
                int p = j + (int)(rnd() % (uint64_t)(bank - j));
                std::swap(perm[j], perm[p]);
            }
            std::sort(perm, perm + k);
            size_t base = ((size_t)r * m->nbanks + b) * k;
            for (int j = 0; j < k; j++) {
                m->offsets[base + j] = (uint8_t)perm[j];
                m->values[base + j] = b * bank + perm[j] < cols ? scale * rndf() : 0.0f;
            }
        }
}

static size_t nnz_of(const bsmat *m) { return (size_t)m->rows * m->nbanks * m->k; }

template <typename T> static T *dev_upload(const T *h, size_t n)
{
    T *d = NULL;
    CK(cudaMalloc(&d, n * sizeof(T) + 16));
    CK(cudaMemcpy(d, h, n * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

/* Median time in ms of f() over reps, after warm-up; cold: L2 flushed before each. */
static double time_ms(const std::function<void()> &f, int reps, bool cold)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++)
        f();
    CK(cudaStreamSynchronize(g_st));
    std::vector<float> ts;
    for (int i = 0; i < reps; i++) {
        if (cold)
            CK(cudaMemsetAsync(g_flush, i & 0xff, FLUSH_BYTES, g_st));
        CK(cudaEventRecord(a, g_st));
        f();
        CK(cudaEventRecord(b, g_st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        ts.push_back(ms);
    }
    CK(cudaGetLastError());
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
}

/* ---------- 1. copy bandwidth ---------- */

__global__ void read_kernel(const float4 *p, size_t n4, float *out)
{
    float s = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4;
         i += (size_t)gridDim.x * blockDim.x) {
        float4 v = __ldg(p + i);
        s += v.x + v.y + v.z + v.w;
    }
    if (s == 123.456f) /* never true for the data used; keeps the loads */
        out[blockIdx.x] = s;
}

static void bench_bandwidth(void)
{
    const size_t bytes = (size_t)(g_quick ? 256 : 1024) << 20;
    void *a, *b;
    float *out;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMalloc(&out, 4096 * sizeof(float)));
    CK(cudaMemset(a, 0, bytes));
    double t = time_ms([&] { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, g_st)); },
                       20, false);
    g_copy_gbs = 2.0 * bytes / (t * 1e6);
    double tr = time_ms(
        [&] {
            read_kernel<<<g_sms * 8, 512, 0, g_st>>>((const float4 *)a, bytes / 16, out);
        },
        20, false);
    CK(cudaGetLastError());
    g_read_gbs = bytes / (tr * 1e6);
    printf("== copy bandwidth (%zu MiB)\n", bytes >> 20);
    printf("  cudaMemcpy D2D      %8.3f ms  %7.0f GB/s (read + write)\n", t, g_copy_gbs);
    printf("  read-only kernel    %8.3f ms  %7.0f GB/s\n", tr, g_read_gbs);
    CK(cudaFree(a));
    CK(cudaFree(b));
    CK(cudaFree(out));
}

/* ---------- 2, 3. products ---------- */

struct result {
    char name[48];
    double hot, cold, err;
    double bytes; /* bytes the version must read at least */
};

/* Max |got - ref| / max(1e-3, sum |terms|) over rows r % step == 0. */
static double check_rows(const bsmat *m, const float *x, int n, const float *got, int step)
{
    double worst = 0;
    for (int i = 0; i < n; i++)
        for (int r = 0; r < m->rows; r += step) {
            double s = 0, mag = 0;
            for (int b = 0; b < m->nbanks; b++) {
                size_t base = ((size_t)r * m->nbanks + b) * m->k;
                for (int j = 0; j < m->k; j++) {
                    int c = b * m->bank + m->offsets[base + j];
                    if (c < m->cols) {
                        double p = (double)m->values[base + j] * x[(size_t)i * m->cols + c];
                        s += p;
                        mag += fabs(p);
                    }
                }
            }
            double e = fabs(got[(size_t)i * m->rows + r] - s) / std::max(1e-3, mag);
            if (std::isnan(got[(size_t)i * m->rows + r]))
                e = INFINITY;
            worst = std::max(worst, e);
        }
    return worst;
}

struct gpu_sparse { gpu_bsmat g; void *v; uint8_t *o; };

static gpu_sparse upload_packed(const bsmat *m, gpu_dtype dt)
{
    gpu_sparse s;
    bs_pack_shape sh = bs_pack_shape_of(m);
    size_t n = bs_pack_count(&sh);
    std::vector<float> v(n);
    std::vector<uint8_t> o(n);
    bs_pack(m, &sh, v.data(), o.data());
    if (dt == GPU_F16) {
        std::vector<__half> hv(n);
        for (size_t i = 0; i < n; i++)
            hv[i] = __float2half(v[i]);
        s.v = dev_upload(hv.data(), n);
    } else {
        s.v = dev_upload(v.data(), n);
    }
    s.o = dev_upload(o.data(), n);
    s.g.shape = sh;
    s.g.dtype = dt;
    s.g.values = s.v;
    s.g.offsets = s.o;
    return s;
}

/* Runs every version on w (rows x cols) times n random vectors; returns them in out. */
static void bench_product(const bsmat *m, int n, std::vector<result> &out)
{
    const int rows = m->rows, cols = m->cols, reps = g_quick ? 20 : 100;
    const int step = rows > 4096 ? 5 : 1;
    std::vector<float> x((size_t)n * cols), y((size_t)n * rows);
    for (auto &v : x)
        v = rndf();
    float *dx = dev_upload(x.data(), x.size()), *dy;
    CK(cudaMalloc(&dy, y.size() * sizeof(float)));
    const double io = (double)(x.size() + y.size()) * 4;
    const size_t nnz = nnz_of(m);
    out.clear();
    auto record = [&](const char *name, const std::function<void()> &f, double bytes) {
        CK(cudaMemsetAsync(dy, 0xff, y.size() * sizeof(float), g_st)); /* NaN poison */
        f();
        CK(cudaMemcpyAsync(y.data(), dy, y.size() * sizeof(float), cudaMemcpyDeviceToHost,
                           g_st));
        CK(cudaStreamSynchronize(g_st));
        result r;
        snprintf(r.name, sizeof r.name, "%s", name);
        r.err = check_rows(m, x.data(), n, y.data(), step);
        r.hot = time_ms(f, reps, false);
        r.cold = time_ms(f, reps / 2, true);
        r.bytes = bytes + io;
        out.push_back(r);
    };

    /* balsa kernels */
    float *work = NULL;
    size_t work_floats = 0;
    for (int dt = 0; dt < 2; dt++) {
        gpu_sparse s = upload_packed(m, dt ? GPU_F16 : GPU_F32);
        spmm_plan p;
        spmm_plan_make(&s.g, n, g_sms, &p);
        if (p.work_floats > work_floats) {
            if (work)
                CK(cudaFree(work));
            CK(cudaMalloc(&work, p.work_floats * sizeof(float)));
            work_floats = p.work_floats;
        }
        for (int ver = 2; ver >= (dt ? 2 : 1); ver--) {
            char name[48];
            snprintf(name, sizeof name, "balsa kernel%d %s", ver, dt ? "fp16" : "fp32");
            record(name,
                   [&] {
                       CK(spmm_cuda(ver, &s.g, dx, cols, n, NULL, 0, 0, dy, rows, work,
                                    work_floats, g_sms, g_st));
                   },
                   (double)nnz * (dt ? 3 : 5));
        }
        if (dt == 0)
            printf("  (kernel2 plan: %d batch columns per block, %d warps along rows, %d "
                   "splits of %d banks, %zu B shared)\n",
                   p.nb, p.warps_rows, p.splits, p.banks_per_split, p.smem);
        CK(cudaFree(s.v));
        CK(cudaFree(s.o));
    }
    if (work)
        CK(cudaFree(work));

    /* cuBLAS on the dense form */
    {
        std::vector<float> d((size_t)rows * cols);
        bsmat_to_dense(m, d.data(), cols);
        float *dd = dev_upload(d.data(), d.size());
        cublasHandle_t h;
        CKB(cublasCreate(&h));
        CKB(cublasSetStream(h, g_st));
        const float one = 1.0f, zero = 0.0f;
        record(n == 1 ? "cuBLAS sgemv (dense)" : "cuBLAS sgemm (dense)",
               [&] {
                   if (n == 1)
                       CKB(cublasSgemv(h, CUBLAS_OP_T, cols, rows, &one, dd, cols, dx, 1, &zero,
                                       dy, 1));
                   else
                       CKB(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &one, dd,
                                       cols, dx, cols, &zero, dy, rows));
               },
               (double)rows * cols * 4);
        CKB(cublasDestroy(h));
        CK(cudaFree(dd));
    }

    /* cuSPARSE CSR, the fastest of its algorithms that runs */
    {
        std::vector<int> rp(rows + 1), ci;
        std::vector<float> cv;
        ci.reserve(nnz);
        cv.reserve(nnz);
        for (int r = 0; r < rows; r++) {
            rp[r] = (int)ci.size();
            for (int b = 0; b < m->nbanks; b++) {
                size_t base = ((size_t)r * m->nbanks + b) * m->k;
                for (int j = 0; j < m->k; j++) {
                    int c = b * m->bank + m->offsets[base + j];
                    if (c < cols) {
                        ci.push_back(c);
                        cv.push_back(m->values[base + j]);
                    }
                }
            }
        }
        rp[rows] = (int)ci.size();
        int *drp = dev_upload(rp.data(), rp.size()), *dci = dev_upload(ci.data(), ci.size());
        float *dcv = dev_upload(cv.data(), cv.size());
        cusparseHandle_t h;
        CKS(cusparseCreate(&h));
        CKS(cusparseSetStream(h, g_st));
        cusparseSpMatDescr_t A;
        CKS(cusparseCreateCsr(&A, rows, cols, (int64_t)ci.size(), drp, dci, dcv,
                              CUSPARSE_INDEX_32I, CUSPARSE_INDEX_32I, CUSPARSE_INDEX_BASE_ZERO,
                              CUDA_R_32F));
        const float one = 1.0f, zero = 0.0f;
        const double bytes = (double)ci.size() * 8 + (rows + 1) * 4.0;
        std::vector<result> tried;
        if (n == 1) {
            cusparseDnVecDescr_t vx, vy;
            CKS(cusparseCreateDnVec(&vx, cols, dx, CUDA_R_32F));
            CKS(cusparseCreateDnVec(&vy, rows, dy, CUDA_R_32F));
            cusparseSpMVAlg_t algs[] = {CUSPARSE_SPMV_ALG_DEFAULT, CUSPARSE_SPMV_CSR_ALG1,
                                        CUSPARSE_SPMV_CSR_ALG2};
            const char *names[] = {"cuSPARSE SpMV default", "cuSPARSE SpMV CSR_ALG1",
                                   "cuSPARSE SpMV CSR_ALG2"};
            for (int a = 0; a < 3; a++) {
                size_t bsz = 0;
                if (cusparseSpMV_bufferSize(h, CUSPARSE_OPERATION_NON_TRANSPOSE, &one, A, vx,
                                            &zero, vy, CUDA_R_32F, algs[a],
                                            &bsz) != CUSPARSE_STATUS_SUCCESS)
                    continue;
                void *buf = NULL;
                CK(cudaMalloc(&buf, bsz + 16));
                /* an algorithm that refuses this matrix is skipped, not fatal */
                if (cusparseSpMV(h, CUSPARSE_OPERATION_NON_TRANSPOSE, &one, A, vx, &zero, vy,
                                 CUDA_R_32F, algs[a], buf) == CUSPARSE_STATUS_SUCCESS) {
                    record(names[a], [&] {
                        CKS(cusparseSpMV(h, CUSPARSE_OPERATION_NON_TRANSPOSE, &one, A, vx, &zero,
                                         vy, CUDA_R_32F, algs[a], buf));
                    }, bytes);
                    tried.push_back(out.back());
                    out.pop_back();
                }
                CK(cudaStreamSynchronize(g_st));
                CK(cudaFree(buf));
            }
            CKS(cusparseDestroyDnVec(vx));
            CKS(cusparseDestroyDnVec(vy));
        } else {
            cusparseDnMatDescr_t X, Y;
            CKS(cusparseCreateDnMat(&X, cols, n, cols, dx, CUDA_R_32F, CUSPARSE_ORDER_COL));
            CKS(cusparseCreateDnMat(&Y, rows, n, rows, dy, CUDA_R_32F, CUSPARSE_ORDER_COL));
            cusparseSpMMAlg_t algs[] = {CUSPARSE_SPMM_ALG_DEFAULT, CUSPARSE_SPMM_CSR_ALG1,
                                        CUSPARSE_SPMM_CSR_ALG2};
            const char *names[] = {"cuSPARSE SpMM default", "cuSPARSE SpMM CSR_ALG1",
                                   "cuSPARSE SpMM CSR_ALG2"};
            for (int a = 0; a < 3; a++) {
                size_t bsz = 0;
                if (cusparseSpMM_bufferSize(h, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                            CUSPARSE_OPERATION_NON_TRANSPOSE, &one, A, X, &zero,
                                            Y, CUDA_R_32F, algs[a],
                                            &bsz) != CUSPARSE_STATUS_SUCCESS)
                    continue;
                void *buf = NULL;
                CK(cudaMalloc(&buf, bsz + 16));
                /* an algorithm that refuses this layout is skipped, not fatal */
                if (cusparseSpMM(h, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                 CUSPARSE_OPERATION_NON_TRANSPOSE, &one, A, X, &zero, Y,
                                 CUDA_R_32F, algs[a], buf) == CUSPARSE_STATUS_SUCCESS) {
                    record(names[a], [&] {
                        CKS(cusparseSpMM(h, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                         CUSPARSE_OPERATION_NON_TRANSPOSE, &one, A, X, &zero, Y,
                                         CUDA_R_32F, algs[a], buf));
                    }, bytes);
                    tried.push_back(out.back());
                    out.pop_back();
                }
                CK(cudaStreamSynchronize(g_st));
                CK(cudaFree(buf));
            }
            CKS(cusparseDestroyDnMat(X));
            CKS(cusparseDestroyDnMat(Y));
        }
        for (auto &r : tried)
            printf("  (%-24s hot %8.4f ms, cold %8.4f ms, err %.1e)\n", r.name, r.hot, r.cold,
                   r.err);
        if (!tried.empty()) {
            result best = tried[0];
            for (auto &r : tried)
                if (r.err < 1e-4 && r.cold < best.cold)
                    best = r;
            snprintf(best.name, sizeof best.name, "cuSPARSE CSR (best)");
            out.push_back(best);
        }
        CKS(cusparseDestroySpMat(A));
        CKS(cusparseDestroy(h));
        CK(cudaFree(drp));
        CK(cudaFree(dci));
        CK(cudaFree(dcv));
    }
    CK(cudaFree(dx));
    CK(cudaFree(dy));
}

static const result *find(const std::vector<result> &rs, const char *prefix)
{
    for (auto &r : rs)
        if (strncmp(r.name, prefix, strlen(prefix)) == 0)
            return &r;
    return NULL;
}

/* The error a version may show: fp16 values round each weight by up to 2^-11. */
static double err_bound(const result &r) { return strstr(r.name, "fp16") ? 1e-3 : 1e-4; }

static void print_results(const std::vector<result> &rs)
{
    const result *dense = find(rs, "cuBLAS"), *csr = find(rs, "cuSPARSE");
    printf("  %-24s %9s %9s %8s %7s %7s %8s %8s %s\n", "version", "hot ms", "cold ms",
           "GB/s", "%copy", "%read", "vs dense", "vs CSR", "max err");
    for (auto &r : rs) {
        double gbs = r.bytes / (r.cold * 1e6);
        printf("  %-24s %9.4f %9.4f %8.0f %6.0f%% %6.0f%% %7.2fx %7.2fx %.1e%s\n", r.name, r.hot,
               r.cold, gbs, 100 * gbs / g_copy_gbs, 100 * gbs / g_read_gbs,
               dense ? dense->cold / r.cold : 0, csr ? csr->cold / r.cold : 0, r.err,
               r.err > err_bound(r) ? "  WRONG" : "");
    }
}

struct goal {
    char what[96];
    double got, want;
};
static std::vector<goal> g_goals;
static void add_goal(const char *what, double got, double want)
{
    goal g;
    snprintf(g.what, sizeof g.what, "%s", what);
    g.got = got;
    g.want = want;
    g_goals.push_back(g);
}

static void bench_big(void)
{
    const double sp[] = {0.5, 0.75, 0.875, 0.9, 0.95};
    for (int si = 0; si < 5; si++) {
        if (g_quick && sp[si] != 0.875)
            continue;
        int k = bsmat_k_for_sparsity(32, sp[si]);
        bsmat m;
        random_bsmat(&m, 16384, 8192, 32, k, 1.0f);
        for (int n : {1, 8}) {
            printf("== 16384 x 8192, bank 32, k %d (%.2f%% sparse), batch %d\n", k,
                   100 * bsmat_sparsity(&m), n);
            std::vector<result> rs;
            bench_product(&m, n, rs);
            print_results(rs);
            const result *b = find(rs, "balsa kernel2 fp32"), *d = find(rs, "cuBLAS"),
                         *c = find(rs, "cuSPARSE");
            if (sp[si] == 0.875 && b && d) {
                char w[96];
                snprintf(w, sizeof w, "87.5%% batch %d: balsa vs cuBLAS (cold)", n);
                add_goal(w, d->cold / b->cold, n == 1 ? 4.0 : 5.0);
                if (n == 1 && c)
                    add_goal("87.5% batch 1: balsa vs cuSPARSE (cold)", c->cold / b->cold, 1.5);
                if (n == 1)
                    add_goal("87.5% batch 1: fraction of copy bandwidth",
                             b->bytes / (b->cold * 1e6) / g_copy_gbs, 0.70);
            }
        }
        bsmat_free(&m);
    }
}

static void bench_gates(void)
{
    const int shapes[][2] = {{2600, 650}, {6000, 1500}};
    for (auto &s : shapes)
        for (double sp : {0.8, 0.9}) {
            if (g_quick && sp != 0.8)
                continue;
            int k = bsmat_k_for_sparsity(32, sp);
            bsmat m;
            random_bsmat(&m, s[0], s[1], 32, k, 1.0f);
            for (int n : {1, 8}) {
                printf("== LSTM gates %d x %d, bank 32, k %d (%.2f%% sparse), batch %d\n", s[0],
                       s[1], k, 100 * bsmat_sparsity(&m), n);
                std::vector<result> rs;
                bench_product(&m, n, rs);
                print_results(rs);
            }
            bsmat_free(&m);
        }
}

/* ---------- 4. the 2-layer LSTM ---------- */

struct lstm_net {
    int H, T, B;
    balsa_mat *wih[2], *whh[2];
    float *bias[2], *x, *g[2], *hs[2], *c[2], *h0;
};

/* Queues one forward pass of both layers on the backend; per step the fused lstm_step
 * op, or (fused = false) matmul with accumulate then lstm_cell. */
static void lstm_forward(balsa_backend *be, const lstm_net &net, bool fused)
{
    const int H = net.H, B = net.B, T = net.T;
    cudaStream_t st = (cudaStream_t)balsa_cuda_stream(be);
    for (int l = 0; l < 2; l++) {
        const float *in = l == 0 ? net.x : net.hs[0];
        CKST(be->ops->matmul(be, net.wih[l], in, H, T * B, net.bias[l], 0, BALSA_ACT_NONE,
                             net.g[l], 4 * H));
        CK(cudaMemsetAsync(net.c[l], 0, sizeof(float) * B * H, st));
        for (int t = 0; t < T; t++) {
            const float *hp = t == 0 ? net.h0 : net.hs[l] + (size_t)(t - 1) * B * H;
            float *gt = net.g[l] + (size_t)t * B * 4 * H;
            float *ht = net.hs[l] + (size_t)t * B * H;
            if (fused && be->ops->lstm_step) {
                CKST(be->ops->lstm_step(be, net.whh[l], hp, H, gt, 4 * H, net.c[l], ht, H, B, H));
            } else {
                CKST(be->ops->matmul(be, net.whh[l], hp, H, B, NULL, 1, BALSA_ACT_NONE, gt,
                                     4 * H));
                CKST(be->ops->lstm_cell(be, gt, 4 * H, net.c[l], ht, H, B, H));
            }
        }
    }
}

/* Median ms of one forward pass: replaying a graph captured once (graph = true) or
 * launching every op (graph = false). */
static double time_lstm(balsa_backend *be, const lstm_net &net, bool graph, bool fused,
                        int reps)
{
    cudaStream_t st = (cudaStream_t)balsa_cuda_stream(be);
    lstm_forward(be, net, fused); /* sizes scratch buffers and warms cuBLAS before capture */
    CKST(be->ops->synchronize(be));
    cudaGraphExec_t exec = NULL;
    if (graph) {
        cudaGraph_t gr;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        lstm_forward(be, net, fused);
        CK(cudaStreamEndCapture(st, &gr));
        CK(cudaGraphInstantiate(&exec, gr, 0));
        CK(cudaGraphDestroy(gr));
    }
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    std::vector<float> ts;
    for (int i = 0; i < reps + 3; i++) {
        CK(cudaEventRecord(a, st));
        if (graph)
            CK(cudaGraphLaunch(exec, st));
        else
            lstm_forward(be, net, fused);
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (i >= 3)
            ts.push_back(ms);
    }
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    if (exec)
        CK(cudaGraphExecDestroy(exec));
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
}

/* float64 forward on the CPU from the canonical matrices; returns the last layer's h of
 * every step, [T][B][H]. */
static std::vector<double> lstm_cpu(const bsmat *wih, const bsmat *whh,
                                    const std::vector<float> *bias, const std::vector<float> &x,
                                    int H, int T, int B)
{
    std::vector<double> in(x.begin(), x.end()), out((size_t)T * B * H);
    auto mv = [](const bsmat *m, const double *v, double *y) {
        for (int r = 0; r < m->rows; r++) {
            double s = 0;
            for (int b = 0; b < m->nbanks; b++) {
                size_t base = ((size_t)r * m->nbanks + b) * m->k;
                for (int j = 0; j < m->k; j++) {
                    int c = b * m->bank + m->offsets[base + j];
                    if (c < m->cols)
                        s += m->values[base + j] * v[c];
                }
            }
            y[r] += s;
        }
    };
    auto sg = [](double v) { return 1 / (1 + exp(-v)); };
    for (int l = 0; l < 2; l++) {
        std::vector<double> c((size_t)B * H, 0.0), g(4 * H);
        for (int t = 0; t < T; t++)
            for (int bi = 0; bi < B; bi++) {
                for (int r = 0; r < 4 * H; r++)
                    g[r] = bias[l][r];
                mv(&wih[l], &in[((size_t)t * B + bi) * H], g.data());
                if (t > 0)
                    mv(&whh[l], &out[((size_t)(t - 1) * B + bi) * H], g.data());
                for (int j = 0; j < H; j++) {
                    double &cc = c[(size_t)bi * H + j];
                    cc = sg(g[H + j]) * cc + sg(g[j]) * tanh(g[2 * H + j]);
                    out[((size_t)t * B + bi) * H + j] = sg(g[3 * H + j]) * tanh(cc);
                }
            }
        if (l == 0)
            in = out;
    }
    return out;
}

static void bench_lstm(void)
{
    const int H = 1500, T = 35;
    for (double sp : {0.8, 0.9})
        for (int B : {1, 8}) {
            if (g_quick && B != 1)
                continue;
            int k = bsmat_k_for_sparsity(32, sp);
            float scale = 2.0f / sqrtf(H * (1.0f - (float)sp)); /* keeps gates unsaturated */
            bsmat wih[2], whh[2];
            std::vector<float> bias[2], x((size_t)T * B * H);
            for (int l = 0; l < 2; l++) {
                random_bsmat(&wih[l], 4 * H, H, 32, k, scale);
                random_bsmat(&whh[l], 4 * H, H, 32, k, scale);
                bias[l].resize(4 * H);
                for (auto &v : bias[l])
                    v = 0.1f * rndf();
            }
            for (auto &v : x)
                v = rndf();
            printf("== 2-layer LSTM, hidden %d, %d steps, batch %d, bank 32, k %d (%.2f%% "
                   "sparse)\n",
                   H, T, B, k, 100 * bsmat_sparsity(&wih[0]));
            double tm[2][2], unfused[2] = {0, 0}, unfused_diff = 0;
            std::vector<float> last[2];
            for (int dense = 0; dense < 2; dense++) {
                balsa_backend *be;
                char why[256];
                balsa_cuda_options opt = {0, BALSA_CUDA_F32, 0, dense ? 0 : g_pdl};
                CKST(balsa_backend_cuda_create(&opt, &be, why, sizeof why));
                lstm_net net;
                net.H = H;
                net.T = T;
                net.B = B;
                for (int l = 0; l < 2; l++) {
                    if (dense) {
                        std::vector<float> d((size_t)4 * H * H);
                        bsmat_to_dense(&wih[l], d.data(), H);
                        CKST(be->ops->upload_dense(be, d.data(), 4 * H, H, &net.wih[l]));
                        bsmat_to_dense(&whh[l], d.data(), H);
                        CKST(be->ops->upload_dense(be, d.data(), 4 * H, H, &net.whh[l]));
                    } else {
                        CKST(be->ops->upload_sparse(be, &wih[l], &net.wih[l]));
                        CKST(be->ops->upload_sparse(be, &whh[l], &net.whh[l]));
                    }
                    net.bias[l] = (float *)be->ops->alloc(be, sizeof(float) * 4 * H);
                    CKST(be->ops->to_device(be, net.bias[l], bias[l].data(),
                                            sizeof(float) * 4 * H));
                    net.g[l] = (float *)be->ops->alloc(be, sizeof(float) * T * B * 4 * H);
                    net.hs[l] = (float *)be->ops->alloc(be, sizeof(float) * T * B * H);
                    net.c[l] = (float *)be->ops->alloc(be, sizeof(float) * B * H);
                }
                net.x = (float *)be->ops->alloc(be, sizeof(float) * T * B * H);
                net.h0 = (float *)be->ops->alloc(be, sizeof(float) * B * H);
                CKST(be->ops->to_device(be, net.x, x.data(), sizeof(float) * x.size()));
                int reps = g_quick ? 10 : 50;
                tm[dense][0] = time_lstm(be, net, true, true, reps);
                tm[dense][1] = time_lstm(be, net, false, true, reps / 2);
                last[dense].resize((size_t)T * B * H);
                CKST(be->ops->to_host(be, last[dense].data(), net.hs[1],
                                      sizeof(float) * last[dense].size()));
                if (!dense) {
                    unfused[0] = time_lstm(be, net, true, false, reps);
                    unfused[1] = time_lstm(be, net, false, false, reps / 2);
                    std::vector<float> u(last[0].size());
                    CKST(be->ops->to_host(be, u.data(), net.hs[1], sizeof(float) * u.size()));
                    for (size_t i = 0; i < u.size(); i++)
                        unfused_diff = std::max(unfused_diff, (double)fabsf(u[i] - last[0][i]));
                }
                for (int l = 0; l < 2; l++) {
                    be->ops->mat_free(be, net.wih[l]);
                    be->ops->mat_free(be, net.whh[l]);
                    be->ops->free(be, net.bias[l]);
                    be->ops->free(be, net.g[l]);
                    be->ops->free(be, net.hs[l]);
                    be->ops->free(be, net.c[l]);
                }
                be->ops->free(be, net.x);
                be->ops->free(be, net.h0);
                CKST(be->ops->synchronize(be));
                be->ops->destroy(be);
            }
            double diff = 0, err = 0;
            for (size_t i = 0; i < last[0].size(); i++)
                diff = std::max(diff, (double)fabsf(last[0][i] - last[1][i]));
            if (B == 1) {
                std::vector<double> ref = lstm_cpu(wih, whh, bias, x, H, T, B);
                for (size_t i = 0; i < ref.size(); i++)
                    err = std::max(err, fabs(last[0][i] - ref[i]));
            }
            printf("  %-34s %9s %9s\n", "version (ms per forward)", "graph", "no graph");
            printf("  %-34s %9.4f %9.4f\n", "balsa sparse (fused lstm_step)", tm[0][0], tm[0][1]);
            printf("  %-34s %9.4f %9.4f   (max |h - fused| %.1e%s)\n",
                   "balsa sparse (kernel2 + cell)", unfused[0], unfused[1], unfused_diff,
                   unfused_diff > 1e-4 ? " WRONG" : "");
            printf("  %-34s %9.4f %9.4f\n", "cuBLAS dense (sgemv/sgemm + cell)", tm[1][0],
                   tm[1][1]);
            printf("  speedup %.2fx (graph), %.2fx (no graph); max |h sparse - h dense| %.1e%s",
                   tm[1][0] / tm[0][0], tm[1][1] / tm[0][1], diff, diff > 1e-3 ? " WRONG" : "");
            if (B == 1)
                printf("; max |h - float64 CPU| %.1e%s", err, err > 1e-3 ? " WRONG" : "");
            printf("\n");
            if (B == 1 && sp == 0.8)
                add_goal(g_pdl ? "2-layer LSTM 80% batch 1: balsa (PDL) vs cuBLAS (graphs)"
                               : "2-layer LSTM 80% batch 1: balsa vs cuBLAS (graphs)",
                         tm[1][0] / tm[0][0], 3.0);
            for (int l = 0; l < 2; l++) {
                bsmat_free(&wih[l]);
                bsmat_free(&whh[l]);
            }
        }
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            g_quick = 1;
        else if (strcmp(argv[i], "--pdl") == 0)
            g_pdl = 1;
        else {
            fprintf(stderr, "usage: %s [--quick] [--pdl]\n", argv[0]);
            return 2;
        }
    }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count < 1) {
        printf("gpu_bench: no CUDA device (%s)\n", e ? cudaGetErrorString(e) : "0 devices");
        return 1;
    }
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    g_sms = p.multiProcessorCount;
    printf("gpu_bench: %s, sm_%d%d, %d SMs, L2 %d MB, %.0f GiB%s%s\n", p.name, p.major,
           p.minor, p.multiProcessorCount, p.l2CacheSize >> 20, p.totalGlobalMem / 1073741824.0,
           g_quick ? " (quick)" : "", g_pdl ? " (LSTM with PDL only)" : "");
    printf("rerun: bash bench/gpu-check.sh, or %s%s%s\n", argv[0], g_quick ? " --quick" : "",
           g_pdl ? " --pdl" : "");
    CK(cudaStreamCreateWithFlags(&g_st, cudaStreamNonBlocking));
    CK(cudaMalloc(&g_flush, FLUSH_BYTES));
    if (!g_pdl) {
        bench_bandwidth();
        bench_big();
        bench_gates();
    }
    bench_lstm();
    printf("== goals (cold = L2 flushed before each repeat)\n");
    int missed = 0;
    for (auto &g : g_goals) {
        printf("  %-52s %7.2f  (goal >= %.2f)  %s\n", g.what, g.got, g.want,
               g.got >= g.want ? "MET" : "MISSED");
        missed += g.got < g.want;
    }
    printf("%d of %zu goals met\n", (int)g_goals.size() - missed, g_goals.size());
    CK(cudaFree(g_flush));
    CK(cudaStreamDestroy(g_st));
    return 0;
}
