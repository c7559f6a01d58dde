/* The CPU backend's kernels, exposed for tests and benchmarks: the plain C reference
 * (the definition of correct for every backend), the packed SIMD layout, the run-time
 * ISA choice and the persistent thread pool. engine/ never calls these directly: it goes
 * through balsa_backend_ops. */
#ifndef BALSA_CPU_H
#define BALSA_CPU_H

#include "../backend.h"

/* Applies an activation to one value (shared by every CPU path). */
float cpu_act(balsa_act act, float v);

/* Reference balanced-sparse product, same contract as balsa_backend_ops.matmul. */
void spmm_ref(const bsmat *w, const float *x, int ldx, int n, const float *bias,
              int accumulate, balsa_act act, float *y, int ldy);

/* Reference LSTM cell, same contract as balsa_backend_ops.lstm_cell. */
void lstm_cell_ref(const float *gates, int ldg, float *c, float *h, int ldh, int n,
                   int hidden);

#endif
