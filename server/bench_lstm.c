/* `balsa bench lstm`: a stacked LSTM (default 2 layers, hidden 1500 and 650, 35 steps, as
 * in the PTB language models of the balanced-sparsity paper) run through the engine on
 * the chosen backend, balanced-sparse (default 90%, bank 32) against balsa's own dense
 * path (the same engine with dense matrices, OpenBLAS on the CPU), in one process, at
 * batch 1 and 16. Prints the median time of a whole batch (all steps, both layers), the
 * ratio and tokens/s, and the command to rerun. bench/lstm.sh adds the PyTorch and ONNX
 * Runtime baselines. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "engine/model.h"

typedef struct {
    int hidden[8], nhidden;
    int batch[8], nbatch;
    int steps, layers, bank, threads;
    int dense; /* 0: time the sparse model only (profiling) */
    double sparsity, min_time;
    const char *backend;
} bench_opts;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int parse_list(const char *s, int *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 100000)
            return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

static unsigned long long rng_state = 88172645463325252ull;
static float rnd(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (2.0 / 16777216.0) - 1.0);
}

/* A random LSTM-only model (vector input of width H), sparse when k > 0. PyTorch's
 * initialisation range, so the gates stay in their working range. */
static balsa_status make_model(const bench_opts *o, int H, int k, balsa_backend *be,
                               balsa_model **out, char *err, size_t errlen)
{
    model_spec s;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "bench%d", H);
    s.input_kind = MODEL_INPUT_VECTORS;
    s.input_size = H;
    s.hidden_size = H;
    s.num_layers = o->layers;
    s.lstm_bias = 1;
    model_host h;
    memset(&h, 0, sizeof h);
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int n = model_tensor_list(&s, refs);
    float scale = 1.0f / sqrtf((float)H);
    balsa_status st = BALSA_OK;
    rng_state = 88172645463325252ull; /* same weights for the sparse and dense model */
    for (int i = 0; i < n && st == BALSA_OK; i++) {
        const model_tensor_ref *r = &refs[i];
        size_t cnt = (size_t)r->rows * (r->cols ? r->cols : 1);
        float *v = malloc(cnt * sizeof(float));
        if (!v) {
            st = BALSA_ERR_OOM;
            break;
        }
        for (size_t j = 0; j < cnt; j++)
            v[j] = scale * rnd();
        st = model_host_put(&h, r, v, o->bank, k);
    }
    if (st == BALSA_OK)
        st = model_build(&s, &h, be, out, err, errlen);
    else
        snprintf(err, errlen, "out of memory making the model");
    model_host_free(&h);
    return st;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median seconds of model_run over the batch, repeated for at least min_time. */
static double time_run(balsa_model *m, const engine_seq *q, int n, float *const *outs,
                       double min_time)
{
    double times[4096];
    int runs = 0;
    model_run(m, q, n, 0, outs); /* warm-up: buffers, caches */
    double start = now_s();
    while (runs < (int)(sizeof times / sizeof *times) && (runs < 3 || now_s() - start < min_time)) {
        double t0 = now_s();
        if (model_run(m, q, n, 0, outs) != BALSA_OK)
            return -1;
        times[runs++] = now_s() - t0;
    }
    qsort(times, runs, sizeof *times, cmp_double);
    return times[runs / 2];
}

static void usage(FILE *f)
{
    fprintf(f, "usage: balsa bench lstm [--hidden 1500,650] [--batch 1,16] [--steps 35]\n"
               "         [--layers 2] [--sparsity 0.9] [--bank 32] [--threads N]\n"
               "         [--backend auto|cpu|cuda] [--min-time SECONDS] [--no-dense]\n"
               "  Times a stacked LSTM through the engine, balanced-sparse against the same\n"
               "  engine with dense weights (OpenBLAS on the CPU), in one run. --no-dense\n"
               "  times the sparse model alone (for profiling; no ratio).\n");
}

int bench_lstm_main(int argc, char **argv)
{
    bench_opts o = {{1500, 650}, 2, {1, 16}, 2, 35, 2, 32, 0, 1, 0.9, 1.0, "auto"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = v != NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (ok && strcmp(a, "--hidden") == 0) {
            ok = (o.nhidden = parse_list(v, o.hidden, 8)) > 0;
        } else if (ok && strcmp(a, "--batch") == 0) {
            ok = (o.nbatch = parse_list(v, o.batch, 8)) > 0;
        } else if (ok && strcmp(a, "--steps") == 0) {
            ok = (o.steps = atoi(v)) >= 1 && o.steps <= 100000;
        } else if (ok && strcmp(a, "--layers") == 0) {
            ok = (o.layers = atoi(v)) >= 1 && o.layers <= MODEL_MAX_LAYERS;
        } else if (ok && strcmp(a, "--sparsity") == 0) {
            o.sparsity = atof(v);
            ok = o.sparsity > 0 && o.sparsity < 1;
        } else if (ok && strcmp(a, "--bank") == 0) {
            ok = (o.bank = atoi(v)) >= BSMAT_MIN_BANK && o.bank <= BSMAT_MAX_BANK;
        } else if (ok && strcmp(a, "--threads") == 0) {
            ok = (o.threads = atoi(v)) >= 0;
        } else if (strcmp(a, "--no-dense") == 0) {
            o.dense = 0;
            ok = 1;
            i--; /* takes no value: undo the skip below */
        } else if (ok && strcmp(a, "--backend") == 0) {
            o.backend = v;
        } else if (ok && strcmp(a, "--min-time") == 0) {
            o.min_time = atof(v);
            ok = o.min_time >= 0 && o.min_time < 3600;
        } else {
            ok = 0;
        }
        if (!ok) {
            fprintf(stderr, "balsa bench lstm: bad or unknown option \"%s\"\n", a);
            usage(stderr);
            return 2;
        }
        i++;
    }
    char why[256];
    balsa_backend *be = NULL;
    if (balsa_backend_create(o.backend, o.threads, &be, why, sizeof why) != BALSA_OK) {
        fprintf(stderr, "balsa bench lstm: %s\n", why);
        return 1;
    }
    /* The dense path's OpenBLAS gets the same number of threads as the backend. */
    openblas_set_num_threads(be->threads);
    int k = bsmat_k_for_sparsity(o.bank, o.sparsity);
    printf("balsa bench lstm: %d-layer LSTM, %d steps, balanced %d/%d per bank (%.1f%% sparse)"
           " vs dense\n%s\nOpenBLAS core %s, %d thread%s\n",
           o.layers, o.steps, k, o.bank, 100.0 * (1.0 - (double)k / o.bank), why,
           openblas_get_corename(), be->threads, be->threads == 1 ? "" : "s");
    printf("%-7s %-6s %12s %12s %8s %14s %14s\n", "hidden", "batch", "sparse ms", "dense ms",
           "ratio", "sparse tok/s", "dense tok/s");
    int rc = 0;
    for (int hi = 0; hi < o.nhidden && rc == 0; hi++) {
        int H = o.hidden[hi];
        balsa_model *sp = NULL, *dn = NULL;
        char err[256];
        if (make_model(&o, H, k, be, &sp, err, sizeof err) != BALSA_OK ||
            (o.dense && make_model(&o, H, 0, be, &dn, err, sizeof err) != BALSA_OK)) {
            fprintf(stderr, "balsa bench lstm: hidden %d: %s\n", H, err);
            model_free(sp);
            rc = 1;
            break;
        }
        for (int bi = 0; bi < o.nbatch && rc == 0; bi++) {
            int B = o.batch[bi];
            engine_seq *q = calloc(B, sizeof *q);
            float **outs = calloc(B, sizeof *outs);
            float *x = malloc(sizeof(float) * (size_t)B * o.steps * H);
            if (!q || !outs || !x) {
                rc = 1;
            } else {
                for (size_t j = 0; j < (size_t)B * o.steps * H; j++)
                    x[j] = rnd();
                for (int b = 0; b < B && rc == 0; b++) {
                    q[b] = (engine_seq){.features = x + (size_t)b * o.steps * H, .len = o.steps};
                    if (!(outs[b] = malloc(sizeof(float) * H)))
                        rc = 1;
                }
            }
            double ts = rc ? -1 : time_run(sp, q, B, outs, o.min_time);
            double td = rc || !dn ? -1 : time_run(dn, q, B, outs, o.min_time);
            if (ts <= 0 || (dn && td <= 0)) {
                fprintf(stderr, "balsa bench lstm: hidden %d batch %d: run failed\n", H, B);
                rc = 1;
            } else if (!dn) {
                double tok = (double)B * o.steps;
                printf("%-7d %-6d %12.3f %12s %8s %14.0f %14s\n", H, B, ts * 1e3, "-", "-",
                       tok / ts, "-");
            } else {
                double tok = (double)B * o.steps;
                printf("%-7d %-6d %12.3f %12.3f %7.2fx %14.0f %14.0f\n", H, B, ts * 1e3,
                       td * 1e3, td / ts, tok / ts, tok / td);
                printf("result lstm hidden=%d batch=%d steps=%d balsa_sparse_ms=%.4f "
                       "balsa_dense_ms=%.4f\n",
                       H, B, o.steps, ts * 1e3, td * 1e3);
            }
            for (int b = 0; outs && b < B; b++)
                free(outs[b]);
            free(outs);
            free(q);
            free(x);
        }
        model_free(sp);
        model_free(dn);
    }
    printf("rerun: balsa bench lstm");
    for (int i = 1; i < argc; i++)
        printf(" %s", argv[i]);
    printf("  (set OPENBLAS_CORETYPE=Haswell on AVX2 machines: bench/lstm.sh does)\n");
    be->ops->destroy(be);
    return rc;
}
