/* The packed (row-interleaved) layout of the CPU backend, the run-time choice of
 * instruction set, the portable C kernel over the packed layout, and the dispatch from an
 * ISA to its kernel. Layout in cpu.h; FIELD-NOTES.md "Why the interleaved layout wins". */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

const char *cpu_isa_str(cpu_isa isa)
{
    switch (isa) {
    case CPU_ISA_SCALAR: return "scalar";
    case CPU_ISA_AVX2: return "avx2+fma";
    case CPU_ISA_AVX512: return "avx512";
    case CPU_ISA_AUTO: return "auto";
    }
    return "unknown";
}

int cpu_isa_parse(const char *name)
{
    if (strcmp(name, "scalar") == 0)
        return CPU_ISA_SCALAR;
    if (strcmp(name, "avx2") == 0 || strcmp(name, "avx2+fma") == 0)
        return CPU_ISA_AVX2;
    if (strcmp(name, "avx512") == 0)
        return CPU_ISA_AVX512;
    if (strcmp(name, "auto") == 0)
        return CPU_ISA_AUTO;
    return -2;
}

int cpu_isa_supported(cpu_isa isa)
{
    __builtin_cpu_init();
    switch (isa) {
    case CPU_ISA_SCALAR: return 1;
    case CPU_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CPU_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx2");
    case CPU_ISA_AUTO: return 1;
    }
    return 0;
}

cpu_isa cpu_isa_best(void)
{
    if (cpu_isa_supported(CPU_ISA_AVX512))
        return CPU_ISA_AVX512;
    if (cpu_isa_supported(CPU_ISA_AVX2))
        return CPU_ISA_AVX2;
    return CPU_ISA_SCALAR;
}

cpu_isa cpu_isa_from_env(char *why, size_t whylen)
{
    const char *env = getenv("BALSA_CPU_ISA");
    if (why && whylen)
        why[0] = '\0';
    if (!env || !*env)
        return cpu_isa_best();
    int isa = cpu_isa_parse(env);
    if (isa == -2 || !cpu_isa_supported((cpu_isa)isa)) {
        if (why && whylen)
            snprintf(why, whylen, "BALSA_CPU_ISA=%s %s; using %s", env,
                     isa == -2 ? "is not scalar, avx2, avx512 or auto"
                               : "is not supported by this CPU",
                     cpu_isa_str(cpu_isa_best()));
        return cpu_isa_best();
    }
    return isa == CPU_ISA_AUTO ? cpu_isa_best() : (cpu_isa)isa;
}

int cpu_isa_group(cpu_isa isa) { return isa == CPU_ISA_AVX512 ? 16 : 8; }

balsa_status cpu_pack(const bsmat *w, int group, cpu_packed *out)
{
    memset(out, 0, sizeof *out);
    if (group != 8 && group != 16)
        return BALSA_ERR_INVALID;
    int ngroups = (w->rows + group - 1) / group;
    size_t n = (size_t)ngroups * w->nbanks * w->k * group;
    size_t vbytes = (n * sizeof(float) + 63) / 64 * 64, obytes = (n + 63) / 64 * 64;
    float *v = aligned_alloc(64, vbytes);
    uint8_t *o = aligned_alloc(64, obytes);
    if (!v || !o) {
        free(v);
        free(o);
        return BALSA_ERR_OOM;
    }
    memset(v, 0, vbytes);
    memset(o, 0, obytes);
    uint16_t *xo = NULL;
    if (group == 8 && (size_t)w->nbanks * w->bank <= 65536) {
        size_t xbytes = ((n + 8) * sizeof *xo + 63) / 64 * 64;
        xo = aligned_alloc(64, xbytes);
        if (!xo) {
            free(v);
            free(o);
            return BALSA_ERR_OOM;
        }
        memset(xo, 0, xbytes);
    }
    for (int r = 0; r < w->rows; r++) {
        int g = r / group, lane = r % group;
        for (int b = 0; b < w->nbanks; b++) {
            const float *sv = w->values + ((size_t)r * w->nbanks + b) * w->k;
            const uint8_t *so = w->offsets + ((size_t)r * w->nbanks + b) * w->k;
            size_t dst = (((size_t)g * w->nbanks + b) * w->k) * group + lane;
            for (int j = 0; j < w->k; j++) {
                v[dst + (size_t)j * group] = sv[j];
                o[dst + (size_t)j * group] = so[j];
                if (xo)
                    xo[dst + (size_t)j * group] = (uint16_t)(b * w->bank + so[j]);
            }
        }
    }
    *out = (cpu_packed){w->rows, w->cols, w->bank, w->k, w->nbanks, group, ngroups, v, o, xo};
    return BALSA_OK;
}

void cpu_packed_free(cpu_packed *p)
{
    free(p->values);
    free(p->offsets);
    free(p->xoffs);
    memset(p, 0, sizeof *p);
}

void spmm_packed_scalar(const cpu_spmm_args *a, int g0, int g1)
{
    const cpu_packed *w = a->w;
    const int G = w->group;
    float acc[16];
    for (int i = 0; i < a->n; i++) {
        const float *x = a->x + (size_t)i * a->ldx;
        float *y = a->y + (size_t)i * a->ldy;
        for (int g = g0; g < g1; g++) {
            for (int l = 0; l < G; l++)
                acc[l] = 0.0f;
            const size_t gbase = (size_t)g * w->nbanks * w->k * G;
            for (int b = 0; b < w->nbanks; b++) {
                const int c0 = b * w->bank;
                /* Only the last bank can reach past cols (its offsets into the padding
                 * carry value 0): test once per bank, not per value. */
                const int tail = c0 + w->bank > w->cols;
                for (int j = 0; j < w->k; j++) {
                    const size_t s = gbase + ((size_t)b * w->k + j) * G;
                    for (int l = 0; l < G; l++) {
                        int c = c0 + w->offsets[s + l];
                        if (!tail || c < w->cols)
                            acc[l] += w->values[s + l] * x[c];
                    }
                }
            }
            for (int l = 0; l < G; l++) {
                int r = g * G + l;
                if (r >= w->rows)
                    break;
                float v = acc[l] + (a->bias ? a->bias[r] : 0.0f);
                if (a->accumulate)
                    v += y[r];
                y[r] = cpu_act(a->act, v);
            }
        }
    }
}

size_t cpu_spmm_xt_floats(cpu_isa isa, const cpu_packed *w, int n)
{
    switch (isa) {
    case CPU_ISA_AVX2: return spmm_avx2_xt_floats(w, n);
    case CPU_ISA_AVX512: return spmm_avx512_xt_floats(w, n);
    default: return 0;
    }
}

void cpu_spmm_prepare(cpu_isa isa, const cpu_spmm_args *args)
{
    if (isa == CPU_ISA_AVX2)
        spmm_avx2_prepare(args);
    else if (isa == CPU_ISA_AVX512)
        spmm_avx512_prepare(args);
}

void cpu_spmm_run(cpu_isa isa, const cpu_spmm_args *args, int g0, int g1)
{
    switch (isa) {
    case CPU_ISA_AVX2: spmm_avx2(args, g0, g1); break;
    case CPU_ISA_AVX512: spmm_avx512(args, g0, g1); break;
    default: spmm_packed_scalar(args, g0, g1); break;
    }
}
