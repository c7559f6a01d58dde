/* The canonical balanced-sparse matrix: allocation, pruning from dense (k largest
 * magnitudes per bank), the dense round trip and validation of matrices from outside. */
#include "bsmat.h"

#include <math.h>
#include <string.h>

static int sizes_ok(int rows, int cols, int bank, int k)
{
    return rows >= 1 && cols >= 1 && bank >= BSMAT_MIN_BANK && bank <= BSMAT_MAX_BANK &&
           k >= 1 && k <= bank &&
           /* values and offsets are indexed with size_t; keep the count sane */
           (double)rows * ((cols + bank - 1) / bank) * k < 4e9;
}

balsa_status bsmat_init(bsmat *m, int rows, int cols, int bank, int k)
{
    memset(m, 0, sizeof *m);
    if (!sizes_ok(rows, cols, bank, k))
        return BALSA_ERR_INVALID;
    int nbanks = (cols + bank - 1) / bank;
    size_t n = (size_t)rows * nbanks * k;
    float *v = calloc(n, sizeof *v);
    uint8_t *o = malloc(n);
    if (!v || !o) {
        free(v);
        free(o);
        return BALSA_ERR_OOM;
    }
    for (size_t i = 0; i < n; i++)
        o[i] = (uint8_t)(i % k);
    *m = (bsmat){rows, cols, bank, k, nbanks, v, o};
    return BALSA_OK;
}

void bsmat_free(bsmat *m)
{
    free(m->values);
    free(m->offsets);
    memset(m, 0, sizeof *m);
}

balsa_status bsmat_hcat(const bsmat *a, const bsmat *b, bsmat *out)
{
    memset(out, 0, sizeof *out);
    if (a->rows != b->rows || a->bank != b->bank || a->k != b->k)
        return BALSA_ERR_INVALID;
    balsa_status st = bsmat_init(out, a->rows, a->nbanks * a->bank + b->cols, a->bank, a->k);
    if (st != BALSA_OK)
        return st;
    const size_t ra = (size_t)a->nbanks * a->k, rb = (size_t)b->nbanks * b->k;
    for (int r = 0; r < a->rows; r++) {
        float *v = out->values + (size_t)r * (ra + rb);
        uint8_t *o = out->offsets + (size_t)r * (ra + rb);
        memcpy(v, a->values + r * ra, ra * sizeof *v);
        memcpy(v + ra, b->values + r * rb, rb * sizeof *v);
        memcpy(o, a->offsets + r * ra, ra);
        memcpy(o + ra, b->offsets + r * rb, rb);
    }
    return BALSA_OK;
}

int bsmat_k_for_sparsity(int bank, double sparsity)
{
    int k = (int)lround(bank * (1.0 - sparsity));
    if (k < 1)
        k = 1;
    if (k > bank)
        k = bank;
    return k;
}

double bsmat_sparsity(const bsmat *m) { return 1.0 - (double)m->k / m->bank; }

size_t bsmat_bytes(const bsmat *m)
{
    return (size_t)m->rows * m->nbanks * m->k * (sizeof(float) + 1);
}

balsa_status bsmat_prune(const float *dense, int rows, int cols, int ld, int bank, int k,
                         bsmat *out)
{
    if (ld < cols)
        return BALSA_ERR_INVALID;
    balsa_status st = bsmat_init(out, rows, cols, bank, k);
    if (st != BALSA_OK)
        return st;
    /* Selection by rank: a column is kept when fewer than k columns of its bank beat it
     * (larger |w|, or equal |w| at a lower column). O(B^2) per bank, which is cheap next
     * to loading a model and gives a tie rule that does not depend on a sort's stability. */
    float mag[BSMAT_MAX_BANK];
    for (int r = 0; r < rows; r++) {
        for (int b = 0; b < out->nbanks; b++) {
            int c0 = b * bank;
            for (int j = 0; j < bank; j++)
                mag[j] = c0 + j < cols ? fabsf(dense[(size_t)r * ld + c0 + j]) : 0.0f;
            size_t base = ((size_t)r * out->nbanks + b) * k;
            int kept = 0;
            for (int j = 0; j < bank && kept < k; j++) {
                int beaten = 0;
                for (int i = 0; i < bank && beaten < k; i++)
                    if (mag[i] > mag[j] || (mag[i] == mag[j] && i < j))
                        beaten++;
                if (beaten < k) {
                    out->offsets[base + kept] = (uint8_t)j;
                    out->values[base + kept] =
                        c0 + j < cols ? dense[(size_t)r * ld + c0 + j] : 0.0f;
                    kept++;
                }
            }
            BALSA_ASSERT(kept == k);
        }
    }
    return BALSA_OK;
}

void bsmat_to_dense(const bsmat *m, float *dense, int ld)
{
    for (int r = 0; r < m->rows; r++) {
        memset(dense + (size_t)r * ld, 0, sizeof(float) * m->cols);
        for (int b = 0; b < m->nbanks; b++) {
            size_t base = ((size_t)r * m->nbanks + b) * m->k;
            for (int j = 0; j < m->k; j++) {
                int c = b * m->bank + m->offsets[base + j];
                if (c < m->cols)
                    dense[(size_t)r * ld + c] = m->values[base + j];
            }
        }
    }
}

balsa_status bsmat_validate(const bsmat *m, char *err, size_t errlen)
{
    if (!sizes_ok(m->rows, m->cols, m->bank, m->k)) {
        snprintf(err, errlen,
                 "sizes out of range: rows %d, cols %d, bank %d (allowed %d..%d), k %d "
                 "(allowed 1..bank)",
                 m->rows, m->cols, m->bank, BSMAT_MIN_BANK, BSMAT_MAX_BANK, m->k);
        return BALSA_ERR_FORMAT;
    }
    if (m->nbanks != (m->cols + m->bank - 1) / m->bank) {
        snprintf(err, errlen, "nbanks is %d, but %d columns in banks of %d need %d",
                 m->nbanks, m->cols, m->bank, (m->cols + m->bank - 1) / m->bank);
        return BALSA_ERR_FORMAT;
    }
    if (!m->values || !m->offsets) {
        snprintf(err, errlen, "values or offsets missing");
        return BALSA_ERR_FORMAT;
    }
    for (int r = 0; r < m->rows; r++) {
        for (int b = 0; b < m->nbanks; b++) {
            size_t base = ((size_t)r * m->nbanks + b) * m->k;
            for (int j = 0; j < m->k; j++) {
                int o = m->offsets[base + j];
                float v = m->values[base + j];
                const char *why = NULL;
                if (o >= m->bank)
                    why = "offset outside the bank";
                else if (j > 0 && o <= m->offsets[base + j - 1])
                    why = "offsets not strictly ascending";
                else if (!isfinite(v))
                    why = "value not finite";
                else if (b * m->bank + o >= m->cols && v != 0.0f)
                    why = "non-zero value in the padding past the last column";
                if (why) {
                    snprintf(err, errlen, "%s at row %d, bank %d, slot %d (offset %d)", why,
                             r, b, j, o);
                    return BALSA_ERR_FORMAT;
                }
            }
        }
    }
    return BALSA_OK;
}
