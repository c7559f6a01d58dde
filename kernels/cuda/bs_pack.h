/* The CUDA backend's packed layout of a balanced-sparse matrix, and the host code that
 * makes it from the canonical layout (kernels/bsmat.h) and turns it back (for tests).
 * Plain C, so the CPU tests check the round trip on machines without a GPU.
 *
 * Layout: one thread of a warp owns one row, and a warp owns 32 consecutive rows. The k
 * slots of every bank are cut into groups of `vec` slots (vec = 4, 2 or 1: the largest
 * that divides k, so nothing is padded). For group q = b * groups + g (bank b, group g)
 * and row r, the vec values of slots g*vec .. g*vec+vec-1 are stored together, and rows
 * follow each other:
 *     index(r, b, j) = ((b * groups + j / vec) * rows_pad + r) * vec + j % vec
 * so the 32 threads of a warp read 32 * vec consecutive values (one 16-byte load each
 * when vec = 4 and values are float32) and 32 * vec consecutive uint8 offsets. Offsets
 * use the same index. Rows are padded to a multiple of 32 with value 0, offset 0. */
#ifndef BALSA_BS_PACK_H
#define BALSA_BS_PACK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../bsmat.h"

typedef struct {
    int rows, cols, bank, k, nbanks; /* as in the canonical matrix */
    int vec;                         /* slots per group: 4, 2 or 1, dividing k */
    int groups;                      /* k / vec */
    int rows_pad;                    /* rows rounded up to a multiple of 32 */
} bs_pack_shape;

/* The packed shape of canonical matrix w. */
static inline bs_pack_shape bs_pack_shape_of(const bsmat *w)
{
    bs_pack_shape s;
    s.rows = w->rows;
    s.cols = w->cols;
    s.bank = w->bank;
    s.k = w->k;
    s.nbanks = w->nbanks;
    s.vec = w->k % 4 == 0 ? 4 : w->k % 2 == 0 ? 2 : 1;
    s.groups = w->k / s.vec;
    s.rows_pad = (w->rows + 31) / 32 * 32;
    return s;
}

/* Elements in the packed values (and in the packed offsets). */
static inline size_t bs_pack_count(const bs_pack_shape *s)
{
    return (size_t)s->nbanks * s->k * s->rows_pad;
}

/* Where slot j of bank b of row r lives in the packed arrays. */
static inline size_t bs_pack_index(const bs_pack_shape *s, int r, int b, int j)
{
    return (((size_t)b * s->groups + j / s->vec) * s->rows_pad + r) * s->vec + j % s->vec;
}

/* Writes w into values and offsets (bs_pack_count(s) elements each, s from
 * bs_pack_shape_of(w)), padding rows with zeros. Cannot fail. */
static inline void bs_pack(const bsmat *w, const bs_pack_shape *s, float *values,
                           uint8_t *offsets)
{
    size_t n = bs_pack_count(s);
    memset(values, 0, n * sizeof *values);
    memset(offsets, 0, n);
    for (int r = 0; r < w->rows; r++)
        for (int b = 0; b < w->nbanks; b++) {
            size_t src = ((size_t)r * w->nbanks + b) * w->k;
            for (int j = 0; j < w->k; j++) {
                size_t dst = bs_pack_index(s, r, b, j);
                values[dst] = w->values[src + j];
                offsets[dst] = w->offsets[src + j];
            }
        }
}

/* The inverse of bs_pack: fills w (already made by bsmat_init with the shape's rows,
 * cols, bank and k) from packed arrays. Cannot fail. */
static inline void bs_unpack(const bs_pack_shape *s, const float *values,
                             const uint8_t *offsets, bsmat *w)
{
    for (int r = 0; r < s->rows; r++)
        for (int b = 0; b < s->nbanks; b++) {
            size_t dst = ((size_t)r * s->nbanks + b) * s->k;
            for (int j = 0; j < s->k; j++) {
                size_t src = bs_pack_index(s, r, b, j);
                w->values[dst + j] = values[src];
                w->offsets[dst + j] = offsets[src];
            }
        }
}

#endif
