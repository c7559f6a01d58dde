/* The CPU backend: host memory, balanced-sparse products and the LSTM cell, dense
 * products through OpenBLAS (sgemv at batch 1, where sgemm is 2-4x slower). */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

struct balsa_mat {
    int sparse;
    int rows, cols;
    bsmat sp;     /* sparse: canonical copy */
    float *dense; /* dense: rows x cols */
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
    (void)be;
    balsa_mat *m = calloc(1, sizeof *m);
    if (!m)
        return BALSA_ERR_OOM;
    balsa_status st = bsmat_init(&m->sp, w->rows, w->cols, w->bank, w->k);
    if (st != BALSA_OK) {
        free(m);
        return st;
    }
    size_t n = (size_t)w->rows * w->nbanks * w->k;
    memcpy(m->sp.values, w->values, n * sizeof(float));
    memcpy(m->sp.offsets, w->offsets, n);
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
    bsmat_free(&m->sp);
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

static balsa_status cpu_matmul(balsa_backend *be, const balsa_mat *w, const float *x, int ldx,
                               int n, const float *bias, int accumulate, balsa_act act,
                               float *y, int ldy)
{
    (void)be;
    if (n < 0 || ldx < w->cols || ldy < w->rows)
        return BALSA_ERR_INVALID;
    if (n == 0)
        return BALSA_OK;
    if (w->sparse)
        spmm_ref(&w->sp, x, ldx, n, bias, accumulate, act, y, ldy);
    else
        dense_matmul(w, x, ldx, n, bias, accumulate, act, y, ldy);
    return BALSA_OK;
}

static balsa_status cpu_lstm_cell(balsa_backend *be, const float *gates, int ldg, float *c,
                                  float *h, int ldh, int n, int hidden)
{
    (void)be;
    if (ldg < 4 * hidden || ldh < hidden)
        return BALSA_ERR_INVALID;
    lstm_cell_ref(gates, ldg, c, h, ldh, n, hidden);
    return BALSA_OK;
}

static balsa_status cpu_synchronize(balsa_backend *be)
{
    (void)be;
    return BALSA_OK;
}

static void cpu_destroy(balsa_backend *be) { free(be); }

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
    .synchronize = cpu_synchronize,
};

balsa_status balsa_backend_cpu_create(int threads, balsa_backend **out)
{
    balsa_backend *be = calloc(1, sizeof *be);
    if (!be)
        return BALSA_ERR_OOM;
    be->ops = &cpu_ops;
    be->threads = threads > 0 ? threads : 1;
    snprintf(be->describe, sizeof be->describe, "cpu (reference kernels, %d thread%s)",
             be->threads, be->threads == 1 ? "" : "s");
    *out = be;
    return BALSA_OK;
}
