/* The balanced-sparse matrix in its canonical layout (../shared/DESIGN.md):
 * every row of a rows x cols matrix is split into nbanks = ceil(cols / bank) banks of
 * `bank` consecutive columns (the last bank zero-padded past `cols`); every bank keeps
 * exactly k values. values and offsets are both [rows][nbanks][k], row-major; an offset
 * is the column inside its bank (0..bank-1), strictly ascending within a bank.
 * An offset that points into the padding of the last bank must carry the value 0. */
#ifndef BALSA_BSMAT_H
#define BALSA_BSMAT_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define BSMAT_MIN_BANK 4
#define BSMAT_MAX_BANK 256
#define BSMAT_DEFAULT_BANK 32

typedef struct {
    int rows;         /* M: output size */
    int cols;         /* K: input size */
    int bank;         /* B: bank width, BSMAT_MIN_BANK..BSMAT_MAX_BANK */
    int k;            /* non-zeros kept per bank, 1..bank */
    int nbanks;       /* ceil(cols / bank) */
    float *values;    /* [rows][nbanks][k] */
    uint8_t *offsets; /* [rows][nbanks][k], ascending within a bank */
} bsmat;

/* Allocates a zeroed rows x cols matrix with the given bank width and k, offsets set to
 * 0..k-1 in every bank. Returns BALSA_ERR_INVALID (and leaves *m zeroed) when a size is
 * out of range, BALSA_ERR_OOM when memory runs out. */
balsa_status bsmat_init(bsmat *m, int rows, int cols, int bank, int k);

/* Frees what bsmat_init allocated and zeroes *m; safe on a zeroed matrix. */
void bsmat_free(bsmat *m);

/* k for a target sparsity in [0, 1): round(bank * (1 - sparsity)), at least 1. */
int bsmat_k_for_sparsity(int bank, double sparsity);

/* The fraction of stored weights dropped: 1 - k / bank. */
double bsmat_sparsity(const bsmat *m);

/* Prunes a dense row-major matrix (row stride ld >= cols) into *out: in every bank keep
 * the k largest |w|; ties go to the lower column, so real columns win over padding.
 * *out must be zeroed or freed; on error it is left zeroed. */
balsa_status bsmat_prune(const float *dense, int rows, int cols, int ld, int bank, int k,
                         bsmat *out);

/* Writes the dense form (rows x cols, row stride ld >= cols), zeros where pruned. */
void bsmat_to_dense(const bsmat *m, float *dense, int ld);

/* Checks a matrix that came from outside: sizes in range and consistent, offsets inside
 * the bank and strictly ascending, padding offsets holding 0, values finite. Returns
 * BALSA_OK, or BALSA_ERR_FORMAT with the first problem written to err (row, bank, slot). */
balsa_status bsmat_validate(const bsmat *m, char *err, size_t errlen);

/* Puts a and b side by side into *out: every row is a's banks, then b's, so that *out has
 * a.nbanks * bank + b.cols columns, a's padding (past a.cols in its last bank, zero
 * weights) becoming real columns between the two. Both must have the same rows, bank and
 * k: BALSA_ERR_INVALID otherwise, BALSA_ERR_OOM when memory runs out (*out is then
 * zeroed). */
balsa_status bsmat_hcat(const bsmat *a, const bsmat *b, bsmat *out);

/* Bytes the canonical layout occupies (values + offsets). */
size_t bsmat_bytes(const bsmat *m);

#endif
