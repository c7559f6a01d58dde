/* `balsa bench kernels`: times balsa's balanced-sparse CPU kernel against OpenBLAS
 * (sgemv at batch 1, sgemm above) on the same matrix in dense form, in one run, and
 * reports the speedup and the read bandwidth balsa reached against the read bandwidth this
 * machine shows at start (a large buffer read with SIMD, 1 and 2 threads).
 *
 * OpenBLAS picks its kernels when the library loads, from OPENBLAS_CORETYPE or its own
 * CPU detection (which does not know every CPU and then falls back to old SSE3 kernels).
 * For a fair baseline this command sets OPENBLAS_CORETYPE to the best core for this CPU
 * when it is unset and re-executes itself, so that the library loads with it (and keeps
 * OpenBLAS's idle threads from spinning into the next measurement). */
#include <cblas.h>
#include <errno.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "kernels/cpu/cpu.h"

#define MAX_LIST 16

typedef struct {
    int rows[MAX_LIST], cols[MAX_LIST], nshapes;
    double sparsity[MAX_LIST];
    int nsparsity;
    int batch[MAX_LIST], nbatch;
    int threads[MAX_LIST], nthreads;
    int bank[MAX_LIST], nbank;
    int out_pad;    /* floats between output rows beyond the row's width */
    int accumulate; /* Y += W X instead of Y = W X */
    int json;
} bench_opts;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- Read bandwidth ------------------------------------------------------------------- */

typedef struct {
    const float *p;
    size_t n;
    float sum;
} read_job;

/* Sums a buffer as 4 interleaved streams (quarters of the buffer) into 8 independent AVX
 * accumulators (the compiler cannot reorder float sums itself), so that memory, not the
 * adds, limits the speed. Several streams matter: one stream reached about half of what
 * OpenBLAS's sgemv reads per second on the AMD EPYC development machine. */
__attribute__((target("avx2"))) static float read_sum_avx(const float *p, size_t n)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    const size_t q = n / 4 / 16 * 16;
    const float *p0 = p, *p1 = p + q, *p2 = p + 2 * q, *p3 = p + 3 * q;
    for (size_t i = 0; i < q; i += 16) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p0 + i));
        b0 = _mm256_add_ps(b0, _mm256_loadu_ps(p0 + i + 8));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p1 + i));
        b1 = _mm256_add_ps(b1, _mm256_loadu_ps(p1 + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p2 + i));
        b2 = _mm256_add_ps(b2, _mm256_loadu_ps(p2 + i + 8));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p3 + i));
        b3 = _mm256_add_ps(b3, _mm256_loadu_ps(p3 + i + 8));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3)));
    float t[8];
    _mm256_storeu_ps(t, s);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

static float read_sum_c(const float *p, size_t n)
{
    float a[8] = {0};
    for (size_t i = 0; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            a[j] += p[i + j];
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

static void *read_thread(void *arg)
{
    read_job *j = arg;
    j->sum = cpu_isa_supported(CPU_ISA_AVX2) ? read_sum_avx(j->p, j->n) : read_sum_c(j->p, j->n);
    return NULL;
}

/* Best of 5 passes over a 512 MiB buffer split across `threads` threads, in GB/s (the
 * bytes summed are counted, so a split that drops a few tail floats is still exact). */
static double read_bandwidth(const float *buf, size_t n, int threads)
{
    double best = 0;
    volatile float sink = 0;
    for (int rep = 0; rep < 5; rep++) {
        pthread_t tid[MAX_LIST];
        read_job jobs[MAX_LIST];
        double t0 = now_s();
        for (int t = 0; t < threads; t++) {
            jobs[t] = (read_job){buf + n / threads * t, n / threads, 0};
            if (t > 0)
                pthread_create(&tid[t], NULL, read_thread, &jobs[t]);
        }
        read_thread(&jobs[0]);
        for (int t = 1; t < threads; t++)
            pthread_join(tid[t], NULL);
        double dt = now_s() - t0;
        for (int t = 0; t < threads; t++)
            sink += jobs[t].sum;
        double gbps = (double)(n / threads / 64 * 64) * threads * sizeof(float) / dt / 1e9;
        if (gbps > best)
            best = gbps;
    }
    (void)sink;
    return best;
}

/* ---- Options ----------------------------------------------------------------------------- */

static int parse_ints(const char *s, int *out, int *count, const char *flag)
{
    *count = 0;
    char *end;
    for (;;) {
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 1000000 || *count == MAX_LIST) {
            fprintf(stderr, "balsa bench kernels: %s wants up to %d positive integers "
                            "separated by commas, got \"%s\"\n", flag, MAX_LIST, s);
            return 0;
        }
        out[(*count)++] = (int)v;
        if (*end != ',')
            break;
        s = end + 1;
    }
    if (*end) {
        fprintf(stderr, "balsa bench kernels: %s: unexpected \"%s\"\n", flag, end);
        return 0;
    }
    return 1;
}

static int parse_opts(int argc, char **argv, bench_opts *o)
{
    static const int def_rows[] = {2600, 6000, 4096, 16384}, def_cols[] = {1300, 3000, 4096, 8192};
    static const double def_sp[] = {0.5, 0.75, 0.875, 0.9, 0.95};
    static const int def_batch[] = {1, 4, 16, 64};
    memset(o, 0, sizeof *o);
    o->nshapes = 4;
    memcpy(o->rows, def_rows, sizeof def_rows);
    memcpy(o->cols, def_cols, sizeof def_cols);
    o->nsparsity = 5;
    memcpy(o->sparsity, def_sp, sizeof def_sp);
    o->nbatch = 4;
    memcpy(o->batch, def_batch, sizeof def_batch);
    o->nthreads = 2;
    o->threads[0] = 1;
    o->threads[1] = 2;
    o->nbank = 1;
    o->bank[0] = 32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--json") == 0) {
            o->json = 1;
            continue;
        }
        if (strcmp(a, "--accumulate") == 0) {
            o->accumulate = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            printf("usage: balsa bench kernels [--shape MxK,...] [--sparsity S,...] "
                   "[--batch N,...]\n"
                   "                          [--threads T,...] [--bank B,...] [--out-pad P] "
                   "[--accumulate] [--json]\n"
                   "Times the balanced-sparse kernel against OpenBLAS on the same matrix in\n"
                   "dense form. Defaults: shapes 2600x1300,6000x3000,4096x4096,16384x8192;\n"
                   "sparsity 0.5,0.75,0.875,0.9,0.95; batch 1,4,16,64; threads 1,2; bank 32.\n"
                   "--out-pad P writes each batch row's output P floats past the last (both\n"
                   "balsa and OpenBLAS), as the engine does where rows are a multiple of 128\n"
                   "floats (16; engine/exec.h padded_stride); default 0. --accumulate adds\n"
                   "the product to Y (OpenBLAS: beta 1), as an LSTM step's second product does.\n"
                   "BALSA_CPU_ISA=scalar|avx2|avx512 forces balsa's kernel; OPENBLAS_CORETYPE,\n"
                   "when set, is kept.\n");
            return 0;
        }
        if (!v) {
            fprintf(stderr, "balsa bench kernels: unknown option or missing value: %s\n", a);
            return -1;
        }
        i++;
        if (strcmp(a, "--batch") == 0) {
            if (!parse_ints(v, o->batch, &o->nbatch, a))
                return -1;
        } else if (strcmp(a, "--out-pad") == 0) {
            char *end;
            long p = strtol(v, &end, 10);
            if (end == v || *end || p < 0 || p > 4096) {
                fprintf(stderr, "balsa bench kernels: --out-pad wants a number of floats in "
                                "0..4096, got \"%s\"\n", v);
                return -1;
            }
            o->out_pad = (int)p;
        } else if (strcmp(a, "--threads") == 0) {
            if (!parse_ints(v, o->threads, &o->nthreads, a))
                return -1;
        } else if (strcmp(a, "--bank") == 0) {
            if (!parse_ints(v, o->bank, &o->nbank, a))
                return -1;
            for (int b = 0; b < o->nbank; b++)
                if (o->bank[b] < BSMAT_MIN_BANK || o->bank[b] > BSMAT_MAX_BANK) {
                    fprintf(stderr, "balsa bench kernels: --bank %d is outside %d..%d\n",
                            o->bank[b], BSMAT_MIN_BANK, BSMAT_MAX_BANK);
                    return -1;
                }
        } else if (strcmp(a, "--sparsity") == 0) {
            o->nsparsity = 0;
            const char *s = v;
            for (;;) {
                char *end;
                double d = strtod(s, &end);
                if (end == s || !(d >= 0 && d < 1) || o->nsparsity == MAX_LIST) {
                    fprintf(stderr, "balsa bench kernels: --sparsity wants numbers in "
                                    "[0, 1) separated by commas, got \"%s\"\n", v);
                    return -1;
                }
                o->sparsity[o->nsparsity++] = d;
                if (*end != ',') {
                    if (*end) {
                        fprintf(stderr, "balsa bench kernels: --sparsity: unexpected \"%s\"\n", end);
                        return -1;
                    }
                    break;
                }
                s = end + 1;
            }
        } else if (strcmp(a, "--shape") == 0) {
            o->nshapes = 0;
            const char *s = v;
            for (;;) {
                int r, c, used = 0;
                if (sscanf(s, "%dx%d%n", &r, &c, &used) != 2 || r < 1 || c < 1 ||
                    o->nshapes == MAX_LIST) {
                    fprintf(stderr, "balsa bench kernels: --shape wants ROWSxCOLS[,...], "
                                    "got \"%s\"\n", v);
                    return -1;
                }
                o->rows[o->nshapes] = r;
                o->cols[o->nshapes++] = c;
                s += used;
                if (*s != ',') {
                    if (*s) {
                        fprintf(stderr, "balsa bench kernels: --shape: unexpected \"%s\"\n", s);
                        return -1;
                    }
                    break;
                }
                s++;
            }
        } else {
            fprintf(stderr, "balsa bench kernels: unknown option %s\n", a);
            return -1;
        }
    }
    for (int t = 0; t < o->nthreads; t++)
        if (o->threads[t] > MAX_LIST) {
            fprintf(stderr, "balsa bench kernels: --threads %d: at most %d\n", o->threads[t],
                    MAX_LIST);
            return -1;
        }
    return 1;
}

/* ---- Timing ------------------------------------------------------------------------------- */

/* Repeats for a case whose warm-up (balsa + OpenBLAS) took `once` seconds: about 0.2 s in
 * all, 3..51, which keeps the default run under 5 minutes on the 2-core machine. */
static int reps_for(double once)
{
    int r = (int)(0.2 / (once > 1e-7 ? once : 1e-7));
    return r < 3 ? 3 : r > 51 ? 51 : r;
}

typedef struct {
    balsa_backend *be;
    balsa_mat *m;
    const float *x;
    int n, cols, rows;
    float *y;
    int ldy; /* rows, or more with --out-pad */
    int accumulate;
} balsa_call;

static void run_balsa(const balsa_call *c)
{
    balsa_status st = c->be->ops->matmul(c->be, c->m, c->x, c->cols, c->n, NULL,
                                         c->accumulate, BALSA_ACT_NONE, c->y, c->ldy);
    BALSA_ASSERT(st == BALSA_OK);
}

static void run_blas(const float *dense, int rows, int cols, const float *x, int n, float *y,
                     int ldy, int accumulate)
{
    const float beta = accumulate ? 1.0f : 0.0f;
    if (n == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, cols, 1.0f, dense, cols, x, 1, beta,
                    y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, rows, cols, 1.0f, x, cols,
                    dense, cols, beta, y, ldy);
}

/* Median seconds of one balsa call and one OpenBLAS call on the same product: one
 * warm-up of each, then repeats sized from the warm-up, alternating balsa and OpenBLAS so
 * that both see the same machine when other tenants come and go. */
static void time_pair(const balsa_call *c, const float *dense, int threads, double *balsa_s,
                      double *blas_s)
{
    openblas_set_num_threads(threads);
    double t0 = now_s();
    run_balsa(c);
    double t1 = now_s();
    run_blas(dense, c->rows, c->cols, c->x, c->n, c->y, c->ldy, c->accumulate);
    int reps = reps_for(now_s() - t0);
    double tb[64], to[64];
    for (int i = 0; i < reps; i++) {
        t0 = now_s();
        run_balsa(c);
        t1 = now_s();
        run_blas(dense, c->rows, c->cols, c->x, c->n, c->y, c->ldy, c->accumulate);
        tb[i] = t1 - t0;
        to[i] = now_s() - t1;
    }
    qsort(tb, (size_t)reps, sizeof *tb, cmp_double);
    qsort(to, (size_t)reps, sizeof *to, cmp_double);
    *balsa_s = tb[reps / 2];
    *blas_s = to[reps / 2];
}

/* A random balanced-sparse matrix (k distinct ascending offsets per bank, values in
 * [-1, 1)), built directly: pruning a dense 16384x8192 matrix would take minutes. */
static balsa_status random_bsmat(bsmat *m, int rows, int cols, int bank, int k,
                                 unsigned long long seed)
{
    balsa_status st = bsmat_init(m, rows, cols, bank, k);
    if (st != BALSA_OK)
        return st;
    unsigned long long s = seed | 1;
    int pick[BSMAT_MAX_BANK];
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < m->nbanks; b++) {
            for (int j = 0; j < bank; j++)
                pick[j] = j;
            for (int j = 0; j < k; j++) {
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                int t = j + (int)(s % (unsigned)(bank - j));
                int tmp = pick[j];
                pick[j] = pick[t];
                pick[t] = tmp;
            }
            /* Ascending: a counting pass over the bank's columns. */
            unsigned char keep[BSMAT_MAX_BANK] = {0};
            for (int j = 0; j < k; j++)
                keep[pick[j]] = 1;
            size_t base = ((size_t)r * m->nbanks + b) * k;
            int j = 0;
            for (int c = 0; c < bank; c++) {
                if (!keep[c])
                    continue;
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                m->offsets[base + j] = (uint8_t)c;
                m->values[base + j] =
                    b * bank + c < cols ? (float)((s >> 40) * (2.0 / 16777216.0) - 1.0) : 0.0f;
                j++;
            }
        }
    return BALSA_OK;
}

/* ---- The command ------------------------------------------------------------------------- */

/* Sets OPENBLAS_CORETYPE for this CPU and OPENBLAS_THREAD_TIMEOUT, when unset, and
 * re-executes this process so that OpenBLAS loads with them; returns when both are
 * already set (by the user or by the exec) or the exec failed.
 * OpenBLAS's idle workers spin for 2^28 cycles (about 0.1 s) after each call by default,
 * taking a core from the next measurement on a small machine; 2^17 cycles is about the
 * 50 us balsa's own pool spins. */
static void ensure_openblas_env(int argc, char **argv)
{
    int have_core = getenv("OPENBLAS_CORETYPE") != NULL;
    int have_timeout = getenv("OPENBLAS_THREAD_TIMEOUT") != NULL;
    if (have_core && have_timeout)
        return;
    /* Zen kernels were tried on the AMD EPYC development machine: the same speed as
     * Haswell's within noise (OpenBLAS 0.3.21 builds Zen from the Haswell kernels), so AVX2
     * machines get Haswell. */
    const char *core = cpu_isa_supported(CPU_ISA_AVX512) ? "SkylakeX"
                       : cpu_isa_supported(CPU_ISA_AVX2) ? "Haswell"
                                                         : NULL;
    if (!have_core && core)
        setenv("OPENBLAS_CORETYPE", core, 1);
    if (!have_timeout)
        setenv("OPENBLAS_THREAD_TIMEOUT", "17", 1);
    char **args = calloc((size_t)argc + 3, sizeof *args);
    if (!args)
        return;
    args[0] = "balsa";
    args[1] = "bench";
    for (int i = 0; i < argc; i++)
        args[2 + i] = argv[i];
    execv("/proc/self/exe", args);
    fprintf(stderr, "balsa bench kernels: re-exec with the OpenBLAS settings failed (%s); "
                    "going on with what OpenBLAS chose at load\n", strerror(errno));
    free(args);
}

static void print_command(FILE *f, int argc, char **argv)
{
    const char *names[] = {"OPENBLAS_CORETYPE", "OPENBLAS_THREAD_TIMEOUT", "BALSA_CPU_ISA"};
    fprintf(f, "# rerun:");
    for (int i = 0; i < 3; i++)
        if (getenv(names[i]))
            fprintf(f, " %s=%s", names[i], getenv(names[i]));
    fprintf(f, " balsa bench");
    for (int i = 0; i < argc; i++)
        fprintf(f, " %s", argv[i]);
    fprintf(f, "\n");
}

int bench_kernels_main(int argc, char **argv)
{
    bench_opts o;
    int pr = parse_opts(argc, argv, &o);
    if (pr <= 0)
        return pr == 0 ? 0 : 2;
    ensure_openblas_env(argc, argv);
    FILE *info = o.json ? stderr : stdout;
    print_command(info, argc, argv);

    /* Read bandwidth with 1 and 2 threads (and any other count asked for). */
    size_t bw_n = (size_t)128 << 20; /* 512 MiB of floats */
    float *bw_buf = aligned_alloc(64, bw_n * sizeof(float));
    if (!bw_buf) {
        fprintf(stderr, "balsa bench kernels: out of memory for the bandwidth buffer\n");
        return 1;
    }
    for (size_t i = 0; i < bw_n; i++)
        bw_buf[i] = (float)(i & 7);
    double peak[MAX_LIST + 1] = {0};
    int bw_threads[MAX_LIST + 2] = {1, 2}, nbw = 2;
    for (int t = 0; t < o.nthreads; t++)
        if (o.threads[t] > 2)
            bw_threads[nbw++] = o.threads[t];
    for (int i = 0; i < nbw; i++) {
        peak[bw_threads[i]] = read_bandwidth(bw_buf, bw_n, bw_threads[i]);
        fprintf(info, "# read bandwidth, %d thread%s: %.1f GB/s (512 MiB buffer, best of 5)\n",
                bw_threads[i], bw_threads[i] == 1 ? "" : "s", peak[bw_threads[i]]);
    }
    free(bw_buf);

    balsa_backend *be[MAX_LIST] = {0};
    for (int t = 0; t < o.nthreads; t++)
        if (cpu_backend_create_isa(o.threads[t], CPU_ISA_AUTO, &be[t]) != BALSA_OK) {
            fprintf(stderr, "balsa bench kernels: cannot create the CPU backend\n");
            return 1;
        }
    fprintf(info, "# balsa: %s; OpenBLAS core: %s (OPENBLAS_CORETYPE=%s)\n", be[0]->describe,
            openblas_get_corename(), getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "");
    fprintf(info, "# output rows %d floats past their width (--out-pad); Y %s\n", o.out_pad,
            o.accumulate ? "+= W X (--accumulate)" : "= W X");
    if (!o.json)
        printf("%-11s %4s %6s %5s %3s %11s %13s %8s %7s %7s\n", "shape", "bank", "sparse",
               "batch", "thr", "balsa_us", "openblas_us", "speedup", "GB/s", "of_peak");

    int maxn = 1;
    for (int b = 0; b < o.nbatch; b++)
        maxn = o.batch[b] > maxn ? o.batch[b] : maxn;
    int status = 0;
    for (int s = 0; s < o.nshapes && !status; s++) {
        int rows = o.rows[s], cols = o.cols[s];
        float *dense = malloc(sizeof(float) * rows * cols);
        float *x = malloc(sizeof(float) * (size_t)maxn * cols);
        const int ldy = rows + o.out_pad;
        float *y = calloc((size_t)maxn * ldy, sizeof(float)); /* read by --accumulate */
        if (!dense || !x || !y) {
            fprintf(stderr, "balsa bench kernels: out of memory for %dx%d\n", rows, cols);
            free(dense), free(x), free(y);
            status = 1;
            break;
        }
        unsigned long long xs = 99;
        for (size_t i = 0; i < (size_t)maxn * cols; i++) {
            xs ^= xs << 13, xs ^= xs >> 7, xs ^= xs << 17;
            x[i] = (float)((xs >> 40) * (2.0 / 16777216.0) - 1.0);
        }
        for (int bk = 0; bk < o.nbank && !status; bk++) {
            for (int sp = 0; sp < o.nsparsity && !status; sp++) {
                int bank = o.bank[bk], k = bsmat_k_for_sparsity(bank, o.sparsity[sp]);
                bsmat w;
                if (random_bsmat(&w, rows, cols, bank, k, 7 + s * 31 + sp) != BALSA_OK) {
                    fprintf(stderr, "balsa bench kernels: cannot build a %dx%d matrix\n",
                            rows, cols);
                    status = 1;
                    break;
                }
                bsmat_to_dense(&w, dense, cols);
                balsa_mat *m[MAX_LIST] = {0};
                for (int t = 0; t < o.nthreads; t++)
                    if (be[t]->ops->upload_sparse(be[t], &w, &m[t]) != BALSA_OK)
                        status = 1;
                for (int b = 0; b < o.nbatch && !status; b++) {
                    for (int t = 0; t < o.nthreads; t++) {
                        int n = o.batch[b], thr = o.threads[t];
                        balsa_call c = {be[t], m[t], x, n, cols, rows, y, ldy, o.accumulate};
                        double bs, os;
                        time_pair(&c, dense, thr, &bs, &os);
                        double us = bs * 1e6, blas_us = os * 1e6;
                        /* per weight: its value and its 8-bit offset, or on the AVX2
                         * batched path its 16-bit column index (cpu.h, xoffs) */
                        int xoffs = cpu_backend_isa(be[t]) == CPU_ISA_AVX2 && n >= 2 &&
                                    (long)w.nbanks * w.bank <= 65536;
                        double per = xoffs ? 6.0 : 5.0;
                        double bytes = (double)w.rows * w.nbanks * w.k * per +
                                       (double)n * cols * sizeof(float);
                        double gbps = bytes / us / 1e3, pk = thr <= MAX_LIST ? peak[thr] : 0;
                        double speedup = blas_us / us;
                        char shape[32];
                        snprintf(shape, sizeof shape, "%dx%d", rows, cols);
                        double sparsity = bsmat_sparsity(&w);
                        if (o.json)
                            printf("{\"shape\": \"%s\", \"bank\": %d, \"sparsity\": %.4g, "
                                   "\"batch\": %d, \"threads\": %d, \"balsa_us\": %.1f, "
                                   "\"baseline_us\": %.1f, \"speedup\": %.3f, \"gbps\": %.2f, "
                                   "\"peak_gbps\": %.2f, \"isa\": \"%s\", "
                                   "\"baseline\": \"openblas %s %s\"}\n",
                                   shape, bank, sparsity, n, thr, us, blas_us, speedup,
                                   gbps, pk, cpu_isa_str(cpu_backend_isa(be[t])),
                                   n == 1 ? "sgemv" : "sgemm", openblas_get_corename());
                        else
                            printf("%-11s %4d %6.3f %5d %3d %11.1f %13.1f %7.2fx %7.1f %6.0f%%\n",
                                   shape, bank, sparsity, n, thr, us, blas_us, speedup,
                                   gbps, pk > 0 ? 100 * gbps / pk : 0);
                        fflush(stdout);
                    }
                }
                for (int t = 0; t < o.nthreads; t++)
                    if (m[t])
                        be[t]->ops->mat_free(be[t], m[t]);
                bsmat_free(&w);
            }
        }
        free(dense);
        free(x);
        free(y);
    }
    for (int t = 0; t < o.nthreads; t++)
        be[t]->ops->destroy(be[t]);
    return status;
}
