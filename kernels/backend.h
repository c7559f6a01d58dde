/* The backend interface: the one way engine/ runs arithmetic. A backend owns its memory
 * (host for CPU, device for CUDA), repacks weights into its own layout at upload, and
 * runs matrix products and the LSTM cell. The CPU backend is always available and is the
 * reference every other backend is tested against. Backends are chosen in one place,
 * balsa_backend_create(). All float buffers passed to ops are backend memory (from
 * ops->alloc), never host pointers, except where an op says otherwise. */
#ifndef BALSA_BACKEND_H
#define BALSA_BACKEND_H

#include <stddef.h>

#include "bsmat.h"
#include "status.h"

typedef enum {
    BALSA_ACT_NONE = 0,
    BALSA_ACT_RELU,
    BALSA_ACT_SIGMOID,
    BALSA_ACT_TANH
} balsa_act;

/* Returns "none", "relu", "sigmoid" or "tanh". */
const char *balsa_act_str(balsa_act a);
/* Parses a name given by balsa_act_str; returns -1 for an unknown name. */
int balsa_act_parse(const char *name);

typedef struct balsa_backend balsa_backend;
typedef struct balsa_mat balsa_mat; /* a weight matrix in a backend's own layout */

typedef struct {
    const char *name; /* "cpu" or "cuda" */

    /* Frees the backend; every balsa_mat and buffer from it must be freed first. */
    void (*destroy)(balsa_backend *be);

    /* Backend memory: zero-filled, aligned to 64 bytes; NULL when out of memory. */
    void *(*alloc)(balsa_backend *be, size_t bytes);
    void (*free)(balsa_backend *be, void *p);
    balsa_status (*to_device)(balsa_backend *be, void *dst, const void *host_src, size_t bytes);
    balsa_status (*to_host)(balsa_backend *be, void *host_dst, const void *src, size_t bytes);

    /* Weights: the canonical balanced-sparse matrix, or a dense row-major rows x cols
     * matrix (host memory). The backend copies what it needs; the caller keeps its input. */
    balsa_status (*upload_sparse)(balsa_backend *be, const bsmat *w, balsa_mat **out);
    balsa_status (*upload_dense)(balsa_backend *be, const float *w, int rows, int cols,
                                 balsa_mat **out);
    void (*mat_free)(balsa_backend *be, balsa_mat *m);

    /* For a rows x cols matrix W (sparse: balanced SpMV/SpMM; dense: sgemv/sgemm) and a
     * batch of n input vectors X[i][0..cols) at row stride ldx:
     *   Y[i][j] = act(sum_k W[j][k] * X[i][k] + bias[j] + (accumulate ? Y[i][j] : 0))
     * for i < n, j < rows, Y at row stride ldy. bias may be NULL. X and Y must not
     * overlap. n == 0 does nothing. */
    balsa_status (*matmul)(balsa_backend *be, const balsa_mat *w, const float *x, int ldx,
                           int n, const float *bias, int accumulate, balsa_act act, float *y,
                           int ldy);

    /* The LSTM cell for n rows, PyTorch gate order i, f, g, o. gates[r] (stride ldg >=
     * 4*hidden) holds the pre-activations W_ih x + b_ih + W_hh h + b_hh; c[r] (stride
     * hidden) is read and updated in place; h[r] (stride ldh) is written:
     *   c = sigmoid(f) * c + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c) */
    balsa_status (*lstm_cell)(balsa_backend *be, const float *gates, int ldg, float *c,
                              float *h, int ldh, int n, int hidden);

    /* The output head of n rows of cols values, x (stride ldx) in, y (stride ldy) out; y
     * may be x itself (then ldy must equal ldx). With m the row's largest value and s the
     * sum of e^(x - m) over the row: take_log 0 gives softmax, y = e^(x - m) / s; 1 gives
     * log-softmax, y = x - m - ln s. A value whose softmax is below the smallest normal
     * float may come out as 0. */
    balsa_status (*softmax)(balsa_backend *be, const float *x, int ldx, int n, int cols,
                            int take_log, float *y, int ldy);

    /* Waits for all queued work; returns the first device error since the last call. */
    balsa_status (*synchronize)(balsa_backend *be);

    /* Optional (NULL when a backend lacks it: then call matmul with accumulate, then
     * lstm_cell): one recurrent LSTM step, fused where the backend can. w_hh is the
     * 4*hidden x hidden recurrent matrix; for n rows, gates (stride ldg) holds the input
     * part W_ih x + b_ih + b_hh on entry and is unspecified afterwards; the step adds
     * w_hh h_prev (stride ldhp) and runs the cell of lstm_cell on c and h (stride ldh).
     * h_prev must not overlap h. */
    balsa_status (*lstm_step)(balsa_backend *be, const balsa_mat *w_hh, const float *h_prev,
                              int ldhp, float *gates, int ldg, float *c, float *h, int ldh,
                              int n, int hidden);
} balsa_backend_ops;

struct balsa_backend {
    const balsa_backend_ops *ops;
    int threads;       /* CPU worker threads (1 = the caller only) */
    int host_memory;   /* 1: the backend's memory is the host's (CPU): callers may write it
                        * directly instead of staging through to_device */
    char describe[128]; /* one line for banners: backend, ISA or device, threads */
};

/* The CPU backend with `threads` workers (0 = one per online core). */
balsa_status balsa_backend_cpu_create(int threads, balsa_backend **out);

/* Chooses a backend: kind "cpu", "cuda" or "auto" (CUDA when a device answers, else CPU).
 * why (may be NULL) receives one line saying what was chosen and, on fallback, why.
 * "cuda" fails with BALSA_ERR_UNSUPPORTED when no device or no CUDA build. */
balsa_status balsa_backend_create(const char *kind, int threads, balsa_backend **out,
                                  char *why, size_t whylen);

#endif
