/* The one place where a backend is chosen, and the activation names. */
#include "backend.h"

#include <string.h>

#ifdef BALSA_CUDA
#include "cuda/cuda_backend.h"
#endif

static const char *act_names[] = {"none", "relu", "sigmoid", "tanh"};

const char *balsa_act_str(balsa_act a)
{
    return (unsigned)a < sizeof act_names / sizeof *act_names ? act_names[a] : "unknown";
}

int balsa_act_parse(const char *name)
{
    for (size_t i = 0; i < sizeof act_names / sizeof *act_names; i++)
        if (strcmp(name, act_names[i]) == 0)
            return (int)i;
    return -1;
}

balsa_status balsa_backend_create(const char *kind, int threads, balsa_backend **out,
                                  char *why, size_t whylen)
{
    char tmp[8];
    if (!why) {
        why = tmp;
        whylen = sizeof tmp;
    }
#ifdef BALSA_CUDA
    /* "auto" takes CUDA when a device answers (a driver, at least one device, cuBLAS
     * starts) and falls back to the CPU for any failure, keeping the reason for why. */
    char reason[160] = "";
    if (strcmp(kind, "cuda") == 0 || strcmp(kind, "auto") == 0) {
        balsa_status cst = balsa_backend_cuda_create(NULL, out, reason, sizeof reason);
        if (cst == BALSA_OK) {
            snprintf(why, whylen, "backend %s%s", (*out)->describe,
                     strcmp(kind, "auto") == 0 ? " (auto: CUDA device found)" : "");
            return BALSA_OK;
        }
        if (strcmp(kind, "cuda") == 0) {
            snprintf(why, whylen, "backend cuda: CUDA unavailable: %s", reason);
            return cst == BALSA_ERR_OOM ? cst : BALSA_ERR_UNSUPPORTED;
        }
    }
#else
    if (strcmp(kind, "cuda") == 0) {
        snprintf(why, whylen, "backend cuda: this build has no CUDA backend");
        return BALSA_ERR_UNSUPPORTED;
    }
#endif
    if (strcmp(kind, "cpu") != 0 && strcmp(kind, "auto") != 0) {
        snprintf(why, whylen, "unknown backend \"%s\" (expected auto, cpu or cuda)", kind);
        return BALSA_ERR_INVALID;
    }
    balsa_status st = balsa_backend_cpu_create(threads, out);
#ifdef BALSA_CUDA
    if (st == BALSA_OK)
        snprintf(why, whylen, "backend %s%s%s%s", (*out)->describe,
                 strcmp(kind, "auto") == 0 ? " (auto: CUDA unavailable: " : "",
                 strcmp(kind, "auto") == 0 ? reason : "",
                 strcmp(kind, "auto") == 0 ? ")" : "");
#else
    if (st == BALSA_OK)
        snprintf(why, whylen, "backend %s%s", (*out)->describe,
                 strcmp(kind, "auto") == 0 ? " (auto: no CUDA backend in this build)" : "");
#endif
    return st;
}
