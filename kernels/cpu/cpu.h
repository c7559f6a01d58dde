/* The CPU backend's kernels, exposed for tests and benchmarks: the plain C reference
 * (the definition of correct for every backend), the packed SIMD layout, the run-time
 * ISA choice and the persistent thread pool. engine/ never calls these directly: it goes
 * through balsa_backend_ops. */
#ifndef BALSA_CPU_H
#define BALSA_CPU_H

#include <stdint.h>

#include "../backend.h"

/* Applies an activation to one value (shared by every CPU path). */
float cpu_act(balsa_act act, float v);

/* Reference balanced-sparse product, same contract as balsa_backend_ops.matmul. */
void spmm_ref(const bsmat *w, const float *x, int ldx, int n, const float *bias,
              int accumulate, balsa_act act, float *y, int ldy);

/* Reference LSTM cell, same contract as balsa_backend_ops.lstm_cell. */
void lstm_cell_ref(const float *gates, int ldg, float *c, float *h, int ldh, int n,
                   int hidden);

/* Reference softmax head, same contract as balsa_backend_ops.softmax (libm expf, the sum
 * in double). */
void softmax_ref(const float *x, int ldx, int n, int cols, int take_log, float *y,
                 int ldy);

/* ---- Instruction sets ---------------------------------------------------------------- */

typedef enum {
    CPU_ISA_AUTO = -1, /* the best this CPU supports (or BALSA_CPU_ISA when set) */
    CPU_ISA_SCALAR = 0, /* portable C over the packed layout */
    CPU_ISA_AVX2,       /* AVX2 + FMA */
    CPU_ISA_AVX512      /* AVX-512 F/BW/VL/DQ */
} cpu_isa;

/* "scalar", "avx2+fma" or "avx512". */
const char *cpu_isa_str(cpu_isa isa);

/* Parses "scalar", "avx2" (or "avx2+fma") or "avx512"; returns CPU_ISA_AUTO for "auto"
 * and -2 for anything else. */
int cpu_isa_parse(const char *name);

/* Whether this CPU can run isa (scalar always can). */
int cpu_isa_supported(cpu_isa isa);

/* The best ISA this CPU supports. */
cpu_isa cpu_isa_best(void);

/* The ISA a backend created with CPU_ISA_AUTO uses: BALSA_CPU_ISA from the environment
 * when set to a valid name the CPU supports, else cpu_isa_best(). An invalid or
 * unsupported BALSA_CPU_ISA writes a one-line note into why (may be NULL) and falls back
 * to the best ISA. */
cpu_isa cpu_isa_from_env(char *why, size_t whylen);

/* ---- The packed layout ---------------------------------------------------------------- */

/* Rows in groups of `group` (8 for AVX2, 16 for AVX-512; the scalar path uses either),
 * interleaved so that SIMD lanes are rows: for group g, bank b and slot j, the group's
 * `group` values are contiguous (one vector load) and so are their uint8 offsets:
 *   values [ngroups][nbanks][k][group], offsets the same shape.
 * Rows past `rows` in the last group are padding: value 0, offset 0. */
typedef struct {
    int rows, cols, bank, k, nbanks;
    int group, ngroups;
    float *values;    /* 64-byte aligned */
    uint8_t *offsets; /* 64-byte aligned */
    /* For groups of 8 (the AVX2 transposed kernel): each slot's column index in the
     * whole row, bank * bank width + offset, same shape as offsets, followed by 8 unused
     * entries that the kernel's read-ahead may touch. NULL for groups of 16, and where
     * the padded width (nbanks * bank) passes 65536: such products then run one batch
     * column at a time. */
    uint16_t *xoffs;
} cpu_packed;

/* Packs a canonical matrix into groups of `group` rows (8 or 16). *out must be zeroed or
 * freed; returns BALSA_ERR_INVALID for another group size, BALSA_ERR_OOM when memory runs
 * out (leaving *out zeroed). */
balsa_status cpu_pack(const bsmat *w, int group, cpu_packed *out);

/* Frees what cpu_pack allocated and zeroes *p; safe on a zeroed struct. */
void cpu_packed_free(cpu_packed *p);

/* One product's arguments, as in balsa_backend_ops.matmul. xt is scratch the caller
 * provides for the transposed-input path (see cpu_spmm_xt_floats); NULL when unused. */
typedef struct {
    const cpu_packed *w;
    const float *x;
    int ldx, n;
    const float *bias;
    int accumulate;
    balsa_act act;
    float *y;
    int ldy;
    float *xt;
} cpu_spmm_args;

/* Floats of scratch the kernel for (isa, w, n) needs in args.xt; 0 when it needs none.
 * The scratch is filled by cpu_spmm_prepare, once per product, before any worker runs. */
size_t cpu_spmm_xt_floats(cpu_isa isa, const cpu_packed *w, int n);

/* Fills args->xt (when the kernel needs it) from args->x. Call once per product. */
void cpu_spmm_prepare(cpu_isa isa, const cpu_spmm_args *args);

/* Computes the rows of groups [g0, g1) of the product (all n batch columns) with the
 * kernel for isa; the caller has checked that isa is supported and w->group matches
 * cpu_isa_group(isa) (scalar accepts any group). Workers run disjoint group ranges. */
void cpu_spmm_run(cpu_isa isa, const cpu_spmm_args *args, int g0, int g1);

/* The group size an ISA packs for: 8 (scalar, AVX2) or 16 (AVX-512). */
int cpu_isa_group(cpu_isa isa);

/* Per-ISA kernels behind cpu_spmm_run; each exists in every build (the SIMD ones in
 * files compiled with their flags) and must only be called when the CPU supports it. */
void spmm_packed_scalar(const cpu_spmm_args *a, int g0, int g1);
void spmm_avx2(const cpu_spmm_args *a, int g0, int g1);
void spmm_avx512(const cpu_spmm_args *a, int g0, int g1);
size_t spmm_avx2_xt_floats(const cpu_packed *w, int n);
void spmm_avx2_prepare(const cpu_spmm_args *a);
size_t spmm_avx512_xt_floats(const cpu_packed *w, int n);
void spmm_avx512_prepare(const cpu_spmm_args *a);

/* Fast LSTM cells (vectorised sigmoid/tanh, within 1e-6 relative of the reference);
 * same contract as lstm_cell_ref. Call only when the CPU supports the ISA. */
void lstm_cell_avx2(const float *gates, int ldg, float *c, float *h, int ldh, int n,
                    int hidden);
void lstm_cell_avx512(const float *gates, int ldg, float *c, float *h, int ldh, int n,
                      int hidden);

/* The softmax head with AVX2 (the exponential of exp_n_avx2, relative error about 2e-7,
 * the sum in double); same contract as softmax_ref. Call only when the CPU has AVX2. */
void softmax_avx2(const float *x, int ldx, int n, int cols, int take_log, float *y,
                 int ldy);

/* ---- The backend with a chosen ISA ------------------------------------------------------ */

/* Like balsa_backend_cpu_create, with the ISA forced (CPU_ISA_AUTO: as the environment
 * and CPU say). Returns BALSA_ERR_UNSUPPORTED when this CPU cannot run isa. */
balsa_status cpu_backend_create_isa(int threads, cpu_isa isa, balsa_backend **out);

/* The ISA a CPU backend runs (tests and the benchmark report it). */
cpu_isa cpu_backend_isa(const balsa_backend *be);

#endif
