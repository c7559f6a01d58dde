/* The `balsa` command line: dispatches to the subcommands declared in cli.h. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "kernels/backend.h"

#ifndef BALSA_VERSION
#define BALSA_VERSION "0.1.0"
#endif

static int version_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char why[256];
    balsa_backend *be = NULL;
    balsa_status st = balsa_backend_create("auto", 0, &be, why, sizeof why);
    printf("balsa %s\n%s\n", BALSA_VERSION, why);
    if (st != BALSA_OK)
        return 1;
    be->ops->destroy(be);
    return 0;
}

typedef struct {
    const char *name;
    const char *sub; /* second word, or NULL */
    int (*fn)(int, char **);
    const char *help;
} command;

static const command commands[] = {
    {"version", NULL, version_main, "print the version and the backend this machine gets"},
    {"convert", NULL, convert_main, "prune dense PyTorch weights into a balsa model"},
    {"inspect", NULL, inspect_main, "check a model file and print its network and sparsity"},
    {"bench", "lstm", bench_lstm_main, "time a balanced-sparse LSTM against the dense path"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: balsa COMMAND [options]   (balsa COMMAND --help for its options)\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s%s%s", commands[i].name, commands[i].sub ? " " : "",
                 commands[i].sub ? commands[i].sub : "");
        fprintf(f, "  %-16s %s\n", name, commands[i].help);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        const command *c = &commands[i];
        if (strcmp(argv[1], c->name) != 0)
            continue;
        if (!c->sub)
            return c->fn(argc - 1, argv + 1);
        if (argc >= 3 && strcmp(argv[2], c->sub) == 0)
            return c->fn(argc - 2, argv + 2);
    }
    fprintf(stderr, "balsa: unknown command \"%s%s%s\"\n", argv[1], argc >= 3 ? " " : "",
            argc >= 3 ? argv[2] : "");
    usage(stderr);
    return 2;
}
