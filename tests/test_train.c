/* Smoke test of the pruning study (models/train/study.py): runs it with --smoke (tiny model,
 * a few steps) into a temporary folder and checks its results: every run's JSON holds every
 * level with finite, positive bits per character; the reported structure of every pruned
 * matrix is exact (balanced: k non-zeros in every bank; unstructured: the target count;
 * blocks: the target count of tiles); and, independently of what Python reports, the
 * exported 90% weights read back through balsa's safetensors reader have that structure.
 * Skipped when Debian's /usr/bin/python3 has no torch. */
#include <cJSON.h>
#include <math.h>
#include <unistd.h>

#include "harness.h"
#include "models/safetensors.h"

#define PYTHON "/usr/bin/python3"
#define BANK 32

static const double levels[] = {0.5, 0.75, 0.8, 0.875, 0.9, 0.95};
#define NLEVELS ((int)(sizeof levels / sizeof levels[0]))
static const char *const patterns[] = {"balanced", "unstructured", "block4", "block16"};
#define NPATTERNS 4
static const char *const pruned[] = {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc.0.weight"};
#define NPRUNED 3

static char dir[] = "/tmp/balsa_train_XXXXXX";
static int study_ran; /* 1 ran fine, 0 not run (skipped), -1 failed */

/* balsa's k for a nominal sparsity: round(bank x (1 - s)), at least 1 (models/FORMAT.md). */
static int bank_k(double sparsity)
{
    int k = (int)lround(BANK * (1.0 - sparsity));
    return k < 1 ? 1 : k > BANK ? BANK : k;
}

static cJSON *load_json(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s.json", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return cJSON_Parse(buf);
}

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* Checks one evaluation {"bpc", "ppl", "chars"}: finite, positive, ppl = 2^bpc. */
static void check_eval(const cJSON *level, const char *split, const char *run)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(level, split);
    double bpc = num(e, "bpc"), ppl = num(e, "ppl");
    CHECK_MSG(isfinite(bpc) && bpc > 0 && bpc < 20, "%s %s bpc %g", run, split, bpc);
    CHECK_MSG(isfinite(ppl) && fabs(ppl - pow(2.0, bpc)) < 1e-9 * ppl, "%s %s ppl %g", run, split, ppl);
    CHECK_MSG(num(e, "chars") > 1000, "%s %s chars %g", run, split, num(e, "chars"));
}

TEST(study_smoke_runs)
{
    if (system(PYTHON " -c 'import torch' >/dev/null 2>&1") != 0)
        SKIP("%s has no torch (apt-get install python3-torch)", PYTHON);
    REQUIRE(access("models/train/study.py", R_OK) == 0);
    REQUIRE(mkdtemp(dir) != NULL);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, PYTHON " models/train/study.py --smoke --out %s > %s/log 2>&1", dir, dir);
    int rc = system(cmd);
    if (rc != 0) {
        snprintf(cmd, sizeof cmd, "tail -n 20 %s/log", dir);
        CHECK_MSG(system(cmd) >= 0, "could not show the log");
    }
    study_ran = rc == 0 ? 1 : -1;
    CHECK_MSG(rc == 0, "study.py --smoke exited with status %d", rc);
    snprintf(cmd, sizeof cmd, "%s/RESULTS.md", dir);
    CHECK(access(cmd, R_OK) == 0);
}

TEST(dense_results_finite)
{
    if (study_ran == 0)
        SKIP("study not run");
    REQUIRE(study_ran == 1);
    const char *runs[] = {"dense", "dense-ft"};
    for (int r = 0; r < 2; r++) {
        cJSON *j = load_json(runs[r]);
        REQUIRE(j != NULL);
        const cJSON *lv = cJSON_GetObjectItemCaseSensitive(j, "levels");
        CHECK(cJSON_GetArraySize(lv) == 1);
        if (cJSON_GetArraySize(lv) == 1) {
            check_eval(cJSON_GetArrayItem(lv, 0), "valid", runs[r]);
            check_eval(cJSON_GetArrayItem(lv, 0), "test", runs[r]);
        }
        cJSON_Delete(j);
    }
}

/* Every level of every pattern: finite results, target sparsity 1 - k/32, and the reported
 * structure of each pruned matrix exact. */
TEST(pruned_results_exact)
{
    if (study_ran == 0)
        SKIP("study not run");
    REQUIRE(study_ran == 1);
    for (int p = 0; p < NPATTERNS; p++) {
        cJSON *j = load_json(patterns[p]);
        REQUIRE(j != NULL);
        const cJSON *lvs = cJSON_GetObjectItemCaseSensitive(j, "levels");
        CHECK_MSG(cJSON_GetArraySize(lvs) == NLEVELS, "%s: %d levels", patterns[p], cJSON_GetArraySize(lvs));
        int i = 0;
        const cJSON *lv;
        cJSON_ArrayForEach(lv, lvs)
        {
            if (i >= NLEVELS)
                break;
            int k = bank_k(levels[i]);
            double target = 1.0 - (double)k / BANK;
            CHECK(fabs(num(lv, "sparsity") - levels[i]) < 1e-12);
            CHECK(fabs(num(lv, "target_sparsity") - target) < 1e-12);
            check_eval(lv, "valid", patterns[p]);
            check_eval(lv, "test", patterns[p]);
            const cJSON *mats = cJSON_GetObjectItemCaseSensitive(lv, "matrices");
            CHECK(cJSON_GetArraySize(mats) == NPRUNED);
            const cJSON *m;
            cJSON_ArrayForEach(m, mats)
            {
                const cJSON *shape = cJSON_GetObjectItemCaseSensitive(m, "shape");
                double numel = cJSON_GetArrayItem(shape, 0)->valuedouble *
                               cJSON_GetArrayItem(shape, 1)->valuedouble;
                double nz = num(m, "nonzeros");
                if (p == 0) {
                    CHECK_MSG(num(m, "bank_nonzeros_min") == k && num(m, "bank_nonzeros_max") == k,
                              "balanced %g %s: banks hold %g..%g non-zeros, want %d", levels[i],
                              m->string, num(m, "bank_nonzeros_min"), num(m, "bank_nonzeros_max"), k);
                    CHECK_MSG(nz == numel * k / BANK, "balanced %g %s: %g non-zeros", levels[i], m->string, nz);
                } else if (p == 1) {
                    CHECK_MSG(nz == round(numel * k / BANK), "unstructured %g %s: %g non-zeros of %g",
                              levels[i], m->string, nz, numel);
                } else {
                    CHECK_MSG(num(m, "tiles_nonzero") == num(m, "tiles_target") &&
                                  num(m, "tiles_target") == round(num(m, "tiles") * k / BANK),
                              "%s %g %s: %g tiles kept, want %g", patterns[p], levels[i], m->string,
                              num(m, "tiles_nonzero"), num(m, "tiles_target"));
                }
                CHECK(fabs(num(m, "sparsity") - (1.0 - nz / numel)) < 1e-12);
            }
            i++;
        }
        cJSON_Delete(j);
    }
}

/* Reads a pruned weight of an exported model as floats; NULL (and a failed check) if absent. */
static float *read_weight(const st_file *f, const char *name, int64_t *rows, int64_t *cols)
{
    const st_tensor *t = st_find(f, name);
    CHECK_MSG(t != NULL && t->ndim == 2, "%s missing or not 2-D", name);
    if (!t || t->ndim != 2)
        return NULL;
    *rows = t->shape[0];
    *cols = t->shape[1];
    float *w = malloc(st_numel(t) * sizeof *w);
    BALSA_ASSERT(w);
    CHECK(st_read_f32(f, t, w) == BALSA_OK);
    return w;
}

/* The 90% exports, read by balsa's own reader: balanced has exactly k = 3 non-zeros in
 * every bank of 32; unstructured round(numel x 3/32) non-zeros; 4x4 blocks whole tiles
 * only, round(tiles x 3/32) of them; the embedding is dense. */
TEST(exported_weights_have_the_structure)
{
    if (study_ran == 0)
        SKIP("study not run");
    REQUIRE(study_ran == 1);
    const int k = bank_k(0.9);
    const char *files[] = {"balanced_0.9", "unstructured_0.9", "block4_0.9"};
    for (int p = 0; p < 3; p++) {
        char path[512], err[256];
        snprintf(path, sizeof path, "%s/export/%s.safetensors", dir, files[p]);
        st_file f;
        REQUIRE(st_open(path, &f, err, sizeof err) == BALSA_OK);
        for (int m = 0; m < NPRUNED; m++) {
            int64_t rows = 0, cols = 0;
            float *w = read_weight(&f, pruned[m], &rows, &cols);
            if (!w)
                continue;
            if (p == 0) {
                int bad = 0;
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t b = 0; b < cols; b += BANK) {
                        int nz = 0;
                        for (int64_t c = b; c < b + BANK && c < cols; c++)
                            nz += w[r * cols + c] != 0.0f;
                        bad += nz != k;
                    }
                CHECK_MSG(bad == 0, "%s %s: %d banks without exactly %d non-zeros", files[p], pruned[m], bad, k);
            } else if (p == 1) {
                int64_t nz = 0;
                for (int64_t i = 0; i < rows * cols; i++)
                    nz += w[i] != 0.0f;
                CHECK_MSG(nz == llround((double)(rows * cols) * k / BANK), "%s %s: %lld non-zeros",
                          files[p], pruned[m], (long long)nz);
            } else {
                int64_t tiles = 0, kept = 0, mixed = 0;
                for (int64_t r = 0; r < rows; r += 4)
                    for (int64_t c = 0; c < cols; c += 4) {
                        int nz = 0, n = 0;
                        for (int64_t i = r; i < r + 4 && i < rows; i++)
                            for (int64_t j = c; j < c + 4 && j < cols; j++, n++)
                                nz += w[i * cols + j] != 0.0f;
                        tiles++;
                        kept += nz > 0;
                        mixed += nz > 0 && nz < n;
                    }
                CHECK_MSG(mixed == 0, "%s %s: %lld partly pruned tiles", files[p], pruned[m], (long long)mixed);
                CHECK_MSG(kept == llround((double)tiles * k / BANK), "%s %s: %lld of %lld tiles kept",
                          files[p], pruned[m], (long long)kept, (long long)tiles);
            }
            free(w);
        }
        int64_t rows = 0, cols = 0;
        float *e = read_weight(&f, "embedding.weight", &rows, &cols);
        if (e) {
            int64_t zeros = 0;
            for (int64_t i = 0; i < rows * cols; i++)
                zeros += e[i] == 0.0f;
            CHECK_MSG(zeros == 0, "%s: embedding has %lld zeros", files[p], (long long)zeros);
            free(e);
        }
        st_close(&f);
    }
}

int main(void)
{
    RUN(study_smoke_runs);
    RUN(dense_results_finite);
    RUN(pruned_results_exact);
    RUN(exported_weights_have_the_structure);
    if (study_ran != 0) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            printf("note: could not remove %s\n", dir);
    }
    HARNESS_END();
}
