/* The CUDA backend's C interface: creation with options, for balsa_backend_create() and
 * for tests and benchmarks that pin an option (value precision, kernel version). Plain
 * C: no CUDA header, so C code can include it. Compiled only in CUDA builds (BALSA_CUDA). */
#ifndef BALSA_CUDA_BACKEND_H
#define BALSA_CUDA_BACKEND_H

#include <stddef.h>

#include "../backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How the backend stores the values of balanced-sparse matrices; sums are always fp32. */
typedef enum {
    BALSA_CUDA_F32 = 0, /* exact: the default */
    BALSA_CUDA_F16,     /* half the bytes, about 3 decimal digits per weight */
    BALSA_CUDA_BF16     /* half the bytes, fp32's range, about 2 decimal digits */
} balsa_cuda_values;

typedef struct {
    int device;               /* CUDA device ordinal */
    balsa_cuda_values values; /* storage of sparse values */
    int spmm_version;         /* 0 = the fast kernel (2); 1 = the simple kernel */
    int pdl;                  /* 1: lstm_step's fused kernel uses programmatic dependent
                               * launch (Hopper and later): it loads its weights while the
                               * kernel before it finishes; 0: plain launches */
} balsa_cuda_options;

/* Creates the CUDA backend on opt's device (opt NULL: device 0, fp32, fast kernel, no
 * programmatic dependent launch).
 * On success *out is the backend and why (may be NULL) names the device. When there is
 * no usable device (no driver, no device, cuBLAS fails to start) it returns
 * BALSA_ERR_UNSUPPORTED and why says which call failed and its error, for example
 * "cudaGetDeviceCount: CUDA driver version is insufficient for CUDA runtime version (35)";
 * BALSA_ERR_OOM when host memory runs out; BALSA_ERR_INVALID for a bad option. */
balsa_status balsa_backend_cuda_create(const balsa_cuda_options *opt, balsa_backend **out,
                                       char *why, size_t whylen);

/* The backend's CUDA stream as a cudaStream_t (void * here to keep CUDA headers out of
 * C code): every op of the backend is queued on it, in order, so a caller may capture a
 * sequence of ops into a CUDA graph. Capture only after one uncaptured run of the same
 * sequence, which sizes the scratch buffers the ops need (no allocation happens then). */
void *balsa_cuda_stream(balsa_backend *be);

#ifdef __cplusplus
}
#endif

#endif
