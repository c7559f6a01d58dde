/* Parity with PyTorch: tests/parity/gen_parity.py (run with Debian's /usr/bin/python3 and
 * python3-torch) makes random networks, exports them dense (pruned first on the PyTorch
 * side for the sparse cases), and writes PyTorch's outputs in float64. Here each is
 * converted with model_convert (the same pruning again, so already-pruned weights must
 * come out unchanged), loaded, and run as one mixed-length batch with model_run, for
 * output "last" and "all"; the largest relative error must stay below 1e-4. The "state"
 * cases start most sequences from a given h_0/c_0 (the rest with no state given, in the
 * same batch) and compare the final state h_n/c_n too. Without python3 or torch the test
 * is skipped. */
#include <cJSON.h>
#include <unistd.h>

#include "harness.h"
#include "models/convert.h"

#define PYTHON "/usr/bin/python3"
#define SCRIPT "tests/parity/gen_parity.py"

static balsa_backend *be;
static char dir[] = "/tmp/balsa_parity_XXXXXX";

static void *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *b = malloc(sz > 0 ? (size_t)sz + 1 : 1);
    *n = b && fread(b, 1, (size_t)sz, f) == (size_t)sz ? (size_t)sz : 0;
    ((char *)b)[*n] = 0;
    fclose(f);
    return b;
}

static char *path_of(const char *name, const char *suffix)
{
    static char p[2][512];
    static int i;
    i ^= 1;
    snprintf(p[i], sizeof p[i], "%s/%s%s", dir, name, suffix);
    return p[i];
}

/* Converts, loads and runs one case; returns the worst relative error over both modes. */
static double run_case(const cJSON *c)
{
    const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
    const cJSON *lens_j = cJSON_GetObjectItem(c, "lens");
    const cJSON *keep_j = cJSON_GetObjectItem(c, "keep_dense");
    const cJSON *mask_j = cJSON_GetObjectItem(c, "state_mask");
    int O = cJSON_GetObjectItem(c, "output_size")->valueint;
    const char *keep[8];
    int nkeep = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, keep_j)
    {
        if (nkeep < 8)
            keep[nkeep++] = e->valuestring;
    }
    convert_opts o = {cJSON_GetObjectItem(c, "sparsity")->valuedouble,
                      cJSON_GetObjectItem(c, "bank")->valueint, keep, nkeep, NULL, NULL, NULL};
    char err[512];
    char model_path[512];
    snprintf(model_path, sizeof model_path, "%s", path_of(name, ".balsa.safetensors"));
    if (model_convert(path_of(name, ".safetensors"), NULL, &o, model_path, NULL, NULL, err,
                      sizeof err) != BALSA_OK) {
        printf("  %s: convert: %s\n", name, err);
        return INFINITY;
    }
    balsa_model *m;
    if (model_load(model_path, be, &m, err, sizeof err) != BALSA_OK) {
        printf("  %s: load: %s\n", name, err);
        return INFINITY;
    }
    const model_info *info = model_get_info(m);
    int n = cJSON_GetArraySize(lens_j), total = 0;
    int with_state = cJSON_GetArraySize(mask_j) > 0;
    size_t ns = model_state_floats(model_get_spec(m));
    engine_seq *q = calloc(n, sizeof *q);
    float **outs = calloc(n, sizeof *outs);
    size_t in_n = 0, last_n = 0, all_n = 0;
    char *in = read_all(path_of(name, ".in.bin"), &in_n);
    double *want_last = read_all(path_of(name, ".last.bin"), &last_n);
    double *want_all = read_all(path_of(name, ".all.bin"), &all_n);
    size_t h0_n = 0, c0_n = 0, hn_n = 0, cn_n = 0;
    float *h0 = with_state ? read_all(path_of(name, ".h0.bin"), &h0_n) : NULL;
    float *c0 = with_state ? read_all(path_of(name, ".c0.bin"), &c0_n) : NULL;
    double *want_hn = with_state ? read_all(path_of(name, ".hn.bin"), &hn_n) : NULL;
    double *want_cn = with_state ? read_all(path_of(name, ".cn.bin"), &cn_n) : NULL;
    float *hn = calloc((size_t)n * ns + 1, sizeof(float));
    float *cn = calloc((size_t)n * ns + 1, sizeof(float));
    int i = 0;
    size_t at = 0;
    cJSON_ArrayForEach(e, lens_j)
    {
        q[i].len = e->valueint;
        if (info->input_kind == MODEL_INPUT_TOKENS)
            q[i].tokens = (const int32_t *)(in + at * 4);
        else
            q[i].features = (const float *)(in + at * 4);
        at += (size_t)q[i].len * (info->input_kind == MODEL_INPUT_TOKENS ? 1 : info->input_size);
        total += q[i].len;
        outs[i] = calloc((size_t)q[i].len * O, sizeof(float));
        if (with_state) {
            /* a sequence whose mask is 0 gives no state (zeros in the files) */
            if (h0 && h0_n == (size_t)n * ns * 4 && cJSON_GetArrayItem(mask_j, i)->valueint) {
                q[i].h0 = h0 + (size_t)i * ns;
                q[i].c0 = c0 && c0_n == h0_n ? c0 + (size_t)i * ns : NULL;
            }
            q[i].hn = hn + (size_t)i * ns;
            q[i].cn = cn + (size_t)i * ns;
        }
        i++;
    }
    double worst = INFINITY;
    if (O != info->output_size || at * 4 != in_n || last_n != (size_t)n * O * 8 ||
        all_n != (size_t)total * O * 8 ||
        (with_state && (h0_n != (size_t)n * ns * 4 || c0_n != h0_n ||
                        hn_n != (size_t)n * ns * 8 || cn_n != hn_n))) {
        printf("  %s: files do not match the model\n", name);
        goto out;
    }
    worst = 0;
    for (int all = 0; all < 2; all++) {
        if (model_run(m, q, n, all, outs) != BALSA_OK) {
            worst = INFINITY;
            break;
        }
        const double *want = all ? want_all : want_last;
        size_t off = 0;
        for (i = 0; i < n; i++) {
            size_t cnt = (size_t)(all ? q[i].len : 1) * O;
            double err_i = h_max_rel_err(outs[i], want + off, cnt, 1e-3);
            worst = err_i > worst ? err_i : worst;
            off += cnt;
        }
    }
    double state_err = 0;
    for (i = 0; with_state && i < n; i++) {
        double eh = h_max_rel_err(q[i].hn, want_hn + (size_t)i * ns, ns, 1e-3);
        double ec = h_max_rel_err(q[i].cn, want_cn + (size_t)i * ns, ns, 1e-3);
        state_err = fmax(state_err, fmax(eh, ec));
    }
    worst = fmax(worst, state_err);
    if (with_state)
        printf("  %-26s h_n/c_n max rel err %.2e\n", name, state_err);
    printf("  %-26s batch %2d, %5d steps, sparsity %.2f: max rel err %.2e\n", name, n, total,
           info->sparsity, worst);
out:
    for (i = 0; i < n; i++)
        free(outs[i]);
    free(outs);
    free(q);
    free(in);
    free(want_last);
    free(want_all);
    free(h0);
    free(c0);
    free(want_hn);
    free(want_cn);
    free(hn);
    free(cn);
    model_free(m);
    return worst;
}

TEST(pytorch_parity)
{
    if (access(PYTHON, X_OK) != 0)
        SKIP("%s not found", PYTHON);
    if (access(SCRIPT, R_OK) != 0)
        SKIP("run from the repository root (%s not found)", SCRIPT);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, PYTHON " " SCRIPT " %s", dir);
    int rc = system(cmd);
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77)
        SKIP("python3-torch is not installed (tools/deps.sh installs it)");
    REQUIRE(rc == 0);
    size_t n;
    char *man = read_all(path_of("manifest.json", ""), &n);
    REQUIRE(man);
    cJSON *root = cJSON_ParseWithLength(man, n);
    free(man);
    REQUIRE(root);
    const cJSON *c;
    int cases = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases"))
    {
        double e = run_case(c);
        CHECK_MSG(e < 1e-4, "%s: max relative error %g",
                  cJSON_GetObjectItem(c, "name")->valuestring, e);
        cases++;
    }
    CHECK(cases >= 14);
    cJSON_Delete(root);
}

int main(void)
{
    if (!mkdtemp(dir) || balsa_backend_cpu_create(1, &be) != BALSA_OK)
        return 1;
    RUN(pytorch_parity);
    be->ops->destroy(be);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        printf("could not remove %s\n", dir);
    HARNESS_END();
}
