/* The CUDA kernels' launchers, shared by the backend (cuda_backend.cu) and the GPU
 * benchmark: balanced-sparse SpMV/SpMM on the packed layout of bs_pack.h, the dense
 * epilogue, the fused LSTM cell and the softmax head. C++ (CUDA) only. Every launcher queues work on the
 * given stream, checks the launch and returns its cudaError_t; none synchronizes. */
#ifndef BALSA_CUDA_KERNELS_H
#define BALSA_CUDA_KERNELS_H

#include <cuda_runtime.h>
#include <stdint.h>

#include "bs_pack.h"

/* Storage type of packed values (matches balsa_cuda_values). */
enum gpu_dtype { GPU_F32 = 0, GPU_F16 = 1, GPU_BF16 = 2 };

/* A balanced-sparse matrix in device memory, packed as bs_pack.h says. */
struct gpu_bsmat {
    bs_pack_shape shape;
    gpu_dtype dtype;
    const void *values;     /* bs_pack_count elements of dtype */
    const uint8_t *offsets; /* bs_pack_count in-bank offsets */
};

/* How kernel 2 cuts one product into blocks; made by spmm_plan_make. */
struct spmm_plan {
    int nb;          /* batch columns per block, kept in registers: 1, 2, 4 or 8 */
    int warps_rows;  /* warps of a block along rows (8, 4, 2 or 1); the rest split banks */
    int splits;      /* blocks along the banks; > 1 needs the partial-sum workspace */
    int banks_per_split;
    size_t smem;         /* dynamic shared memory per block, bytes */
    size_t work_floats;  /* workspace the product needs (splits * n * rows, or 0) */
    dim3 grid;
};

/* The plan for w times n input vectors on a device with `sms` multiprocessors. */
void spmm_plan_make(const gpu_bsmat *w, int n, int sms, spmm_plan *p);

/* Y = act(W X + bias (+ Y)) with the contract of balsa_backend_ops.matmul, by kernel
 * `version`: 1 = one thread per output, x read from global memory (simple, the check on
 * kernel 2); 2 = bank slices of X staged in shared memory, one warp per 32 rows, vector
 * loads, partial sums for up to 8 batch columns in registers, banks split over warps and,
 * for long rows, over blocks (then a second kernel adds the splits in a fixed order, into
 * work: at least plan.work_floats floats). Deterministic. Returns cudaErrorInvalidValue
 * for an unknown version or a too small workspace, cudaErrorInvalidConfiguration when
 * the grid would exceed CUDA's limits. */
cudaError_t spmm_cuda(int version, const gpu_bsmat *w, const float *x, int ldx, int n,
                      const float *bias, int accumulate, int act, float *y, int ldy,
                      float *work, size_t work_floats, int sms, cudaStream_t stream);

/* One recurrent LSTM step in one launch, for a balanced-sparse w_hh (4*hidden x hidden,
 * gate rows i, f, g, o): for each of n rows, gates = gates_in + w_hh h_prev (gates_in at
 * stride ldg is only read), then the cell of lstm_cell_cuda (c updated, h written at
 * stride ldh). h_prev (stride ldhp) must not overlap h. Returns cudaErrorNotSupported
 * when h_prev's bank-padded row does not fit in shared memory (hidden above ~10000): the
 * caller then runs spmm_cuda + lstm_cell_cuda; cudaErrorInvalidValue when w_hh's shape is
 * not 4*hidden x hidden. pdl = 1 launches it with programmatic dependent launch: it
 * reads only weights before it waits for the kernel before it (griddepcontrol.wait). */
cudaError_t spmm_lstm_cuda(const gpu_bsmat *w_hh, const float *h_prev, int ldhp,
                           const float *gates, int ldg, float *c, float *h, int ldh, int n,
                           int hidden, int pdl, cudaStream_t stream);

/* y[i][r] = act(y[i][r] + bias[r]) for i < n, r < rows (bias may be NULL): the epilogue
 * of the dense (cuBLAS) path. */
cudaError_t bias_act_cuda(float *y, int ldy, int n, int rows, const float *bias, int act,
                          cudaStream_t stream);

/* The LSTM cell with the contract of balsa_backend_ops.lstm_cell. */
cudaError_t lstm_cell_cuda(const float *gates, int ldg, float *c, float *h, int ldh, int n,
                           int hidden, cudaStream_t stream);

/* The softmax head with the contract of balsa_backend_ops.softmax, one block per row. */
cudaError_t softmax_cuda(const float *x, int ldx, int n, int cols, int take_log, float *y,
                         int ldy, cudaStream_t stream);

#endif
