/* The CPU backend: host memory; balanced-sparse products over the packed layout with the
 * kernel for the ISA chosen at creation (AVX-512, AVX2 + FMA or portable C), split across
 * a persistent thread pool; the LSTM cell vectorised (and split by rows across the pool
 * when large), and so is the softmax head; dense products through OpenBLAS
 * (sgemv at batch 1, where sgemm is 2-4x slower). */
#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu.h"
#include "threadpool.h"

/* A product runs on the caller alone when it would take less than PARALLEL_MIN_NS there
 * (PARALLEL_MIN_NS_BATCHED from batch 2 on): a split saves at most half of it, and costs a
 * worker's wake-up and moving the input and output between the cores' caches. The time
 * is estimated from the multiply-adds (non-zeros x batch) at the AVX2 kernels' rates on
 * the development machine (AMD EPYC, Zen 1): about 0.5 ns each at batch 1 and 0.13 ns from
 * batch 2 on, where each weight serves several batch columns. A batched product's output
 * is the gate rows that the caller's LSTM cell reads next, so a split also sends half of
 * them across; and under `balsa serve` the other core runs the HTTP threads as well. The
 * demo model's 512 x 128 products at batch 57 (about 50 us) were split at 50 us, and its
 * batching server answered 9800-10000 requests/s against 10600-11200 with them on the
 * caller (three runs each, in turn); the hidden-650 model's products (1.3 ms) split either
 * way. Batch 1 keeps 50 us: hidden 650's 160k multiply-adds (80 us) split there. */
#define PARALLEL_MIN_NS 50000.0
#define PARALLEL_MIN_NS_BATCHED 100000.0
#define NS_PER_MAC_BATCH1 0.5
#define NS_PER_MAC_BATCHED 0.13

typedef struct {
    balsa_backend base; /* first, so that a balsa_backend * converts back */
    cpu_isa isa;
    threadpool *pool;
    pthread_mutex_t scratch_lock; /* guards xt across concurrent products */
    float *xt;                    /* transposed-input scratch, 64-byte aligned */
    size_t xt_cap;                /* floats */
} cpu_backend;

struct balsa_mat {
    int sparse;
    int rows, cols;
    cpu_packed sp; /* sparse: the packed layout for the backend's ISA */
    float *dense;  /* dense: rows x cols */
};

static void *cpu_alloc(balsa_backend *be, size_t bytes)
{
    (void)be;
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (p)
        memset(p, 0, rounded ? rounded : 64);
    return p;
}

static void cpu_free(balsa_backend *be, void *p)
{
    (void)be;
    free(p);
}

static balsa_status cpu_copy(balsa_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    memmove(dst, src, bytes);
    return BALSA_OK;
}

static balsa_status cpu_upload_sparse(balsa_backend *be, const bsmat *w, balsa_mat **out)
{
    cpu_backend *cb = (cpu_backend *)be;
    char err[160];
    if (bsmat_validate(w, err, sizeof err) != BALSA_OK)
        return BALSA_ERR_INVALID;
    balsa_mat *m = calloc(1, sizeof *m);
    if (!m)
        return BALSA_ERR_OOM;
    balsa_status st = cpu_pack(w, cpu_isa_group(cb->isa), &m->sp);
    if (st != BALSA_OK) {
        free(m);
        return st;
    }
    m->sparse = 1;
    m->rows = w->rows;
    m->cols = w->cols;
    *out = m;
    return BALSA_OK;
}

static balsa_status cpu_upload_dense(balsa_backend *be, const float *w, int rows, int cols,
                                     balsa_mat **out)
{
    (void)be;
    if (rows < 1 || cols < 1)
        return BALSA_ERR_INVALID;
    balsa_mat *m = calloc(1, sizeof *m);
    if (!m)
        return BALSA_ERR_OOM;
    m->dense = malloc((size_t)rows * cols * sizeof(float));
    if (!m->dense) {
        free(m);
        return BALSA_ERR_OOM;
    }
    memcpy(m->dense, w, (size_t)rows * cols * sizeof(float));
    m->rows = rows;
    m->cols = cols;
    *out = m;
    return BALSA_OK;
}

static void cpu_mat_free(balsa_backend *be, balsa_mat *m)
{
    (void)be;
    if (!m)
        return;
    cpu_packed_free(&m->sp);
    free(m->dense);
    free(m);
}

static void dense_matmul(const balsa_mat *w, const float *x, int ldx, int n,
                         const float *bias, int accumulate, balsa_act act, float *y, int ldy)
{
    float beta = accumulate ? 1.0f : 0.0f;
    if (n == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, w->rows, w->cols, 1.0f, w->dense, w->cols,
                    x, 1, beta, y, 1);
    else /* Y[n][rows] = X[n][cols] * W^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, w->rows, w->cols, 1.0f, x,
                    ldx, w->dense, w->cols, beta, y, ldy);
    if (!bias && act == BALSA_ACT_NONE)
        return;
    for (int i = 0; i < n; i++) {
        float *yi = y + (size_t)i * ldy;
        for (int r = 0; r < w->rows; r++)
            yi[r] = cpu_act(act, yi[r] + (bias ? bias[r] : 0.0f));
    }
}

/* Row groups are handed out in chunks from a shared counter rather than split evenly in
 * advance: on a shared machine one thread is often descheduled for a while, and the other
 * then takes more chunks instead of waiting for it. Every row is computed by the same code
 * whichever thread takes it, so results do not depend on the split. */
typedef struct {
    cpu_isa isa;
    const cpu_spmm_args *args;
    atomic_int next;
    int chunk;
} spmm_job;

static void spmm_task(void *varg, int task, int ntasks)
{
    (void)task;
    (void)ntasks;
    spmm_job *job = varg;
    const int ng = job->args->w->ngroups;
    for (;;) {
        int g0 = atomic_fetch_add_explicit(&job->next, job->chunk, memory_order_relaxed);
        if (g0 >= ng)
            return;
        cpu_spmm_run(job->isa, job->args, g0, g0 + job->chunk < ng ? g0 + job->chunk : ng);
    }
}

static balsa_status sparse_matmul(cpu_backend *cb, const balsa_mat *w, const float *x,
                                  int ldx, int n, const float *bias, int accumulate,
                                  balsa_act act, float *y, int ldy)
{
    cpu_spmm_args args = {&w->sp, x, ldx, n, bias, accumulate, act, y, ldy, NULL};
    size_t need = cpu_spmm_xt_floats(cb->isa, &w->sp, n);
    pthread_mutex_lock(&cb->scratch_lock);
    if (need > cb->xt_cap) {
        free(cb->xt);
        cb->xt_cap = 0;
        cb->xt = aligned_alloc(64, (need * sizeof(float) + 63) / 64 * 64);
        if (!cb->xt) {
            pthread_mutex_unlock(&cb->scratch_lock);
            return BALSA_ERR_OOM;
        }
        cb->xt_cap = need;
    }
    args.xt = need ? cb->xt : NULL;
    cpu_spmm_prepare(cb->isa, &args);
    double work = (double)w->sp.rows * w->sp.nbanks * w->sp.k * n;
    double est_ns = work * (n == 1 ? NS_PER_MAC_BATCH1 : NS_PER_MAC_BATCHED);
    int tasks = est_ns < (n == 1 ? PARALLEL_MIN_NS : PARALLEL_MIN_NS_BATCHED)
                    ? 1
                    : threadpool_threads(cb->pool);
    if (tasks > w->sp.ngroups)
        tasks = w->sp.ngroups;
    spmm_job job = {.isa = cb->isa, .args = &args};
    atomic_init(&job.next, 0);
    /* About 8 chunks per thread: enough to even out, few enough to keep the counter cold. */
    job.chunk = w->sp.ngroups / (tasks * 8);
    if (job.chunk < 1 || tasks == 1)
        job.chunk = tasks == 1 ? w->sp.ngroups : 1;
    threadpool_run(cb->pool, spmm_task, &job, tasks);
    pthread_mutex_unlock(&cb->scratch_lock);
    return BALSA_OK;
}

static balsa_status cpu_matmul(balsa_backend *be, const balsa_mat *w, const float *x, int ldx,
                               int n, const float *bias, int accumulate, balsa_act act,
                               float *y, int ldy)
{
    if (n < 0 || ldx < w->cols || ldy < w->rows)
        return BALSA_ERR_INVALID;
    if (n == 0)
        return BALSA_OK;
    if (w->sparse)
        return sparse_matmul((cpu_backend *)be, w, x, ldx, n, bias, accumulate, act, y, ldy);
    dense_matmul(w, x, ldx, n, bias, accumulate, act, y, ldy);
    return BALSA_OK;
}

/* Row-wise work (the LSTM cell, the softmax head) split across the pool: task t of ntasks
 * takes rows [n t / ntasks, n (t+1) / ntasks). Rows are independent and each is computed
 * by the same code whichever task has it, so the split changes nothing in the result. */
typedef void (*rows_fn)(const void *job, int r0, int r1);

typedef struct {
    rows_fn fn;
    const void *job;
    int n;
} rows_split;

static void rows_task(void *arg, int task, int ntasks)
{
    const rows_split *s = arg;
    s->fn(s->job, (int)((long long)s->n * task / ntasks),
          (int)((long long)s->n * (task + 1) / ntasks));
}

/* Runs fn over rows [0, n) on the caller when there are fewer than min_values values
 * (n x the row's width) or one row, else split across the pool. */
static void split_rows(cpu_backend *cb, int n, double values, double min_values, rows_fn fn,
                       const void *job)
{
    int tasks = threadpool_threads(cb->pool);
    if (tasks > n)
        tasks = n;
    if (tasks < 2 || values < min_values) {
        fn(job, 0, n);
        return;
    }
    rows_split s = {fn, job, n};
    threadpool_run(cb->pool, rows_task, &s, tasks);
}

/* From this many cells (rows x hidden) on, the LSTM cell is split by rows across the
 * pool. One cell costs about 5 ns with AVX2 on the development machine (four sigmoids or
 * tanhs and two divisions per 8 lanes), so 16k cells are about 80 us, several times a
 * wake-up; an LSTM at batch 16 and hidden 1500 has 24k per step, at batch 1 only 1500,
 * which stays on the caller. */
#define CELL_PARALLEL_MIN 16384

typedef struct {
    cpu_isa isa;
    const float *gates;
    int ldg;
    float *c, *h;
    int ldh, n, hidden;
} cell_job;

static void cell_rows(const void *job, int r0, int r1)
{
    const cell_job *j = job;
    const float *g = j->gates + (size_t)r0 * j->ldg;
    float *c = j->c + (size_t)r0 * j->hidden, *h = j->h + (size_t)r0 * j->ldh;
    if (j->isa == CPU_ISA_AVX512)
        lstm_cell_avx512(g, j->ldg, c, h, j->ldh, r1 - r0, j->hidden);
    else if (j->isa == CPU_ISA_AVX2)
        lstm_cell_avx2(g, j->ldg, c, h, j->ldh, r1 - r0, j->hidden);
    else
        lstm_cell_ref(g, j->ldg, c, h, j->ldh, r1 - r0, j->hidden);
}

static balsa_status cpu_lstm_cell(balsa_backend *be, const float *gates, int ldg, float *c,
                                  float *h, int ldh, int n, int hidden)
{
    cpu_backend *cb = (cpu_backend *)be;
    if (n < 0 || hidden < 1 || ldg < 4 * hidden || ldh < hidden)
        return BALSA_ERR_INVALID;
    cell_job job = {cb->isa, gates, ldg, c, h, ldh, n, hidden};
    split_rows(cb, n, (double)n * hidden, CELL_PARALLEL_MIN, cell_rows, &job);
    return BALSA_OK;
}

/* From this many values (rows x cols) on, the softmax head is split by rows across the
 * pool: about 0.4 ns a value with AVX2 on the development machine, so 64k values are
 * some 25 us, several times a wake-up. A language model's 10,000-word head at batch 4 has
 * 40k and stays on the caller; at batch 16, 160k. */
#define SOFTMAX_PARALLEL_MIN 65536

typedef struct {
    cpu_isa isa;
    const float *x;
    int ldx, n, cols, take_log;
    float *y;
    int ldy;
} softmax_job;

static void softmax_rows(const void *job, int r0, int r1)
{
    const softmax_job *j = job;
    const float *x = j->x + (size_t)r0 * j->ldx;
    float *y = j->y + (size_t)r0 * j->ldy;
    if (j->isa == CPU_ISA_SCALAR)
        softmax_ref(x, j->ldx, r1 - r0, j->cols, j->take_log, y, j->ldy);
    else /* AVX-512 CPUs have AVX2 */
        softmax_avx2(x, j->ldx, r1 - r0, j->cols, j->take_log, y, j->ldy);
}

static balsa_status cpu_softmax(balsa_backend *be, const float *x, int ldx, int n, int cols,
                                int take_log, float *y, int ldy)
{
    cpu_backend *cb = (cpu_backend *)be;
    if (n < 0 || cols < 1 || ldx < cols || ldy < cols || (x == y && ldx != ldy))
        return BALSA_ERR_INVALID;
    softmax_job job = {cb->isa, x, ldx, n, cols, take_log, y, ldy};
    split_rows(cb, n, (double)n * cols, SOFTMAX_PARALLEL_MIN, softmax_rows, &job);
    return BALSA_OK;
}

static balsa_status cpu_synchronize(balsa_backend *be)
{
    (void)be;
    return BALSA_OK;
}

static void cpu_destroy(balsa_backend *be)
{
    cpu_backend *cb = (cpu_backend *)be;
    threadpool_free(cb->pool);
    pthread_mutex_destroy(&cb->scratch_lock);
    free(cb->xt);
    free(cb);
}

static const balsa_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_device = cpu_copy,
    .to_host = cpu_copy,
    .upload_sparse = cpu_upload_sparse,
    .upload_dense = cpu_upload_dense,
    .mat_free = cpu_mat_free,
    .matmul = cpu_matmul,
    .lstm_cell = cpu_lstm_cell,
    .softmax = cpu_softmax,
    .synchronize = cpu_synchronize,
};

balsa_status cpu_backend_create_isa(int threads, cpu_isa isa, balsa_backend **out)
{
    *out = NULL;
    char why[160] = "";
    if (isa == CPU_ISA_AUTO)
        isa = cpu_isa_from_env(why, sizeof why);
    else if (!cpu_isa_supported(isa))
        return BALSA_ERR_UNSUPPORTED;
    if (threads <= 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        threads = online > 0 ? (int)online : 1;
    }
    cpu_backend *cb = calloc(1, sizeof *cb);
    if (!cb)
        return BALSA_ERR_OOM;
    balsa_status st = threadpool_create(threads, &cb->pool);
    if (st != BALSA_OK) {
        free(cb);
        return st;
    }
    pthread_mutex_init(&cb->scratch_lock, NULL);
    cb->isa = isa;
    cb->base.ops = &cpu_ops;
    cb->base.threads = threads;
    cb->base.host_memory = 1;
    snprintf(cb->base.describe, sizeof cb->base.describe, "cpu (%s, %d thread%s)%s%s",
             cpu_isa_str(isa), threads, threads == 1 ? "" : "s", why[0] ? "; " : "", why);
    *out = &cb->base;
    return BALSA_OK;
}

balsa_status balsa_backend_cpu_create(int threads, balsa_backend **out)
{
    return cpu_backend_create_isa(threads, CPU_ISA_AUTO, out);
}

cpu_isa cpu_backend_isa(const balsa_backend *be) { return ((const cpu_backend *)be)->isa; }
