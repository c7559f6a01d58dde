/* The one place where a backend is chosen, and the activation names. */
#include "backend.h"

#include <string.h>

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
    if (strcmp(kind, "cuda") == 0) {
        snprintf(why, whylen, "backend cuda: this build has no CUDA backend");
        return BALSA_ERR_UNSUPPORTED;
    }
    if (strcmp(kind, "cpu") != 0 && strcmp(kind, "auto") != 0) {
        snprintf(why, whylen, "unknown backend \"%s\" (expected auto, cpu or cuda)", kind);
        return BALSA_ERR_INVALID;
    }
    balsa_status st = balsa_backend_cpu_create(threads, out);
    if (st == BALSA_OK)
        snprintf(why, whylen, "backend %s%s", (*out)->describe,
                 strcmp(kind, "auto") == 0 ? " (auto: no CUDA backend in this build)" : "");
    return st;
}
