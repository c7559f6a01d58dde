/* Tests of the canonical balanced-sparse matrix: pruning keeps the k largest magnitudes
 * per bank with the documented tie rule, the dense round trip, and validation refusing
 * every kind of broken matrix. */
#include "harness.h"
#include "kernels/bsmat.h"

static float *rand_dense(int rows, int cols, unsigned long long seed)
{
    float *d = malloc(sizeof(float) * rows * cols);
    for (int i = 0; i < rows * cols; i++)
        d[i] = h_rand_f(&seed);
    return d;
}

/* Every bank keeps exactly k values, each at least as large as every dropped one. */
TEST(prune_keeps_largest_per_bank)
{
    int shapes[][2] = {{1, 1}, {7, 33}, {33, 7}, {129, 129}, {5, 1000}};
    int banks[] = {4, 8, 16, 32, 64, 256};
    for (size_t s = 0; s < 5; s++) {
        for (size_t bi = 0; bi < 6; bi++) {
            int rows = shapes[s][0], cols = shapes[s][1], B = banks[bi];
            for (int k = 1; k <= B; k += (B / 4 > 0 ? B / 4 : 1)) {
                float *d = rand_dense(rows, cols, 1234 + s * 7 + bi);
                bsmat m;
                REQUIRE(bsmat_prune(d, rows, cols, cols, B, k, &m) == BALSA_OK);
                char err[200];
                CHECK_MSG(bsmat_validate(&m, err, sizeof err) == BALSA_OK, "%s", err);
                float *back = malloc(sizeof(float) * rows * cols);
                bsmat_to_dense(&m, back, cols);
                for (int r = 0; r < rows; r++) {
                    for (int b = 0; b < m.nbanks; b++) {
                        float min_kept = INFINITY, max_dropped = 0;
                        int kept_real = 0;
                        for (int c = b * B; c < (b + 1) * B && c < cols; c++) {
                            float v = d[r * cols + c];
                            if (back[r * cols + c] == v && v != 0) {
                                kept_real++;
                                if (fabsf(v) < min_kept)
                                    min_kept = fabsf(v);
                            } else {
                                CHECK(back[r * cols + c] == 0);
                                if (fabsf(v) > max_dropped)
                                    max_dropped = fabsf(v);
                            }
                        }
                        int real_cols = cols - b * B < B ? cols - b * B : B;
                        CHECK(kept_real == (k < real_cols ? k : real_cols));
                        CHECK(kept_real == 0 || min_kept >= max_dropped);
                    }
                }
                free(back);
                free(d);
                bsmat_free(&m);
            }
        }
    }
}

/* Equal magnitudes go to the lower column, and real columns beat padding. */
TEST(prune_tie_rule)
{
    float d[] = {1, -1, 1, -1, 2, 0};
    bsmat m;
    REQUIRE(bsmat_prune(d, 1, 6, 6, 4, 2, &m) == BALSA_OK);
    /* bank 0: |1| four times, keep columns 0 and 1 */
    CHECK(m.offsets[0] == 0 && m.offsets[1] == 1);
    CHECK(m.values[0] == 1 && m.values[1] == -1);
    /* bank 1: columns 4 (2) and 5 (0) are real, 6 and 7 are padding */
    CHECK(m.offsets[2] == 0 && m.offsets[3] == 1);
    CHECK(m.values[2] == 2 && m.values[3] == 0);
    bsmat_free(&m);
}

/* [a | b] in dense form is a's dense rows, zeros up to a's bank boundary, then b's dense
 * rows, and it is a valid matrix; the pairs it cannot join are refused. */
static int hcat_matches(const bsmat *a, const bsmat *b)
{
    bsmat c;
    if (bsmat_hcat(a, b, &c) != BALSA_OK)
        return 0;
    const int wa = a->nbanks * a->bank, w = wa + b->cols;
    char err[160];
    int ok = c.rows == a->rows && c.cols == w && c.nbanks == a->nbanks + b->nbanks &&
             bsmat_validate(&c, err, sizeof err) == BALSA_OK;
    float *pa = malloc(sizeof(float) * a->rows * a->cols);
    float *pb = malloc(sizeof(float) * b->rows * b->cols);
    float *back = malloc(sizeof(float) * c.rows * w);
    bsmat_to_dense(a, pa, a->cols);
    bsmat_to_dense(b, pb, b->cols);
    bsmat_to_dense(&c, back, w);
    for (int r = 0; ok && r < a->rows; r++) {
        ok &= memcmp(back + r * w, pa + r * a->cols, sizeof(float) * a->cols) == 0 &&
              memcmp(back + r * w + wa, pb + r * b->cols, sizeof(float) * b->cols) == 0;
        for (int j = a->cols; j < wa; j++)
            ok &= back[r * w + j] == 0.0f;
    }
    free(pa);
    free(pb);
    free(back);
    bsmat_free(&c);
    return ok;
}

TEST(hcat_joins_rows)
{
    const int rows = 5, ca = 16, cb = 13, B = 8, k = 3;
    float da[rows * ca], db[rows * cb];
    unsigned long long s = 5;
    for (int i = 0; i < rows * ca; i++)
        da[i] = h_rand_f(&s);
    for (int i = 0; i < rows * cb; i++)
        db[i] = h_rand_f(&s);
    bsmat a, b, c;
    REQUIRE(bsmat_prune(da, rows, ca, ca, B, k, &a) == BALSA_OK);
    REQUIRE(bsmat_prune(db, rows, cb, cb, B, k, &b) == BALSA_OK);
    CHECK(hcat_matches(&a, &b));
    CHECK(hcat_matches(&b, &a)); /* b's 13 columns leave 3 of its last bank as a gap */
    CHECK(hcat_matches(&b, &b));
    bsmat d;
    REQUIRE(bsmat_prune(db, rows, cb, cb, B, k + 1, &d) == BALSA_OK);
    CHECK(bsmat_hcat(&a, &d, &c) == BALSA_ERR_INVALID && c.values == NULL); /* another k */
    bsmat_free(&a);
    bsmat_free(&b);
    bsmat_free(&d);
}

TEST(k_for_sparsity)
{
    CHECK(bsmat_k_for_sparsity(32, 0.9) == 3);
    CHECK(bsmat_k_for_sparsity(32, 0.875) == 4);
    CHECK(bsmat_k_for_sparsity(32, 0.5) == 16);
    CHECK(bsmat_k_for_sparsity(32, 0.999) == 1);
    CHECK(bsmat_k_for_sparsity(32, 0.0) == 32);
}

TEST(init_refuses_bad_sizes)
{
    bsmat m;
    CHECK(bsmat_init(&m, 0, 10, 32, 4) == BALSA_ERR_INVALID);
    CHECK(bsmat_init(&m, 10, 0, 32, 4) == BALSA_ERR_INVALID);
    CHECK(bsmat_init(&m, 10, 10, 3, 1) == BALSA_ERR_INVALID);
    CHECK(bsmat_init(&m, 10, 10, 257, 1) == BALSA_ERR_INVALID);
    CHECK(bsmat_init(&m, 10, 10, 32, 0) == BALSA_ERR_INVALID);
    CHECK(bsmat_init(&m, 10, 10, 32, 33) == BALSA_ERR_INVALID);
    CHECK(m.values == NULL && m.offsets == NULL);
    float d[4] = {0};
    CHECK(bsmat_prune(d, 2, 2, 1, 4, 1, &m) == BALSA_ERR_INVALID);
}

static int validate_says(const bsmat *m, const char *word)
{
    char err[256] = "";
    return bsmat_validate(m, err, sizeof err) == BALSA_ERR_FORMAT && strstr(err, word);
}

TEST(validate_refuses_broken_matrices)
{
    bsmat m;
    REQUIRE(bsmat_init(&m, 3, 40, 32, 4) == BALSA_OK); /* last bank: 8 real columns */
    char err[256];
    CHECK(bsmat_validate(&m, err, sizeof err) == BALSA_OK);

    m.offsets[5] = 32;
    CHECK(validate_says(&m, "outside the bank"));
    m.offsets[5] = 1;

    m.offsets[6] = 1; /* slot 2 of bank 1, row 0, after offset 1 */
    CHECK(validate_says(&m, "ascending"));
    m.offsets[6] = 2;

    m.values[9] = NAN;
    CHECK(validate_says(&m, "not finite"));
    m.values[9] = INFINITY;
    CHECK(validate_says(&m, "not finite"));
    m.values[9] = 0;

    m.offsets[7] = 20; /* row 0, bank 1, column 52 >= 40: padding */
    m.values[7] = 1.5f;
    CHECK(validate_says(&m, "padding"));
    m.values[7] = 0;
    CHECK(bsmat_validate(&m, err, sizeof err) == BALSA_OK);

    m.nbanks = 1;
    CHECK(validate_says(&m, "nbanks"));
    m.nbanks = 2;
    m.k = 40;
    CHECK(validate_says(&m, "out of range"));
    m.k = 4;
    bsmat_free(&m);
}

TEST(round_trip_exact)
{
    /* A matrix that already has k non-zeros per bank comes back unchanged. */
    int rows = 17, cols = 70, B = 16, k = 3;
    unsigned long long seed = 99;
    float *d = calloc(rows * cols, sizeof(float));
    for (int r = 0; r < rows; r++)
        for (int b = 0; b * B < cols; b++)
            for (int j = 0; j < k; j++) {
                int c = b * B + (int)(h_rand_u64(&seed) % B);
                if (c < cols)
                    d[r * cols + c] = h_rand_f(&seed) + 2.0f;
            }
    bsmat m;
    REQUIRE(bsmat_prune(d, rows, cols, cols, B, k, &m) == BALSA_OK);
    float *back = malloc(sizeof(float) * rows * cols);
    bsmat_to_dense(&m, back, cols);
    CHECK(memcmp(d, back, sizeof(float) * rows * cols) == 0);
    CHECK(bsmat_bytes(&m) == (size_t)rows * 5 * k * 5);
    free(d);
    free(back);
    bsmat_free(&m);
}

int main(void)
{
    RUN(prune_keeps_largest_per_bank);
    RUN(prune_tie_rule);
    RUN(hcat_joins_rows);
    RUN(k_for_sparsity);
    RUN(init_refuses_bad_sizes);
    RUN(validate_refuses_broken_matrices);
    RUN(round_trip_exact);
    HARNESS_END();
}
