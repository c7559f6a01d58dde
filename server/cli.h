/* The `balsa` subcommands. Each takes the arguments after its own name (argv[0] is the
 * subcommand) and returns the process exit status: 0 success, 1 failure, 2 usage error. */
#ifndef BALSA_CLI_H
#define BALSA_CLI_H

/* balsa bench kernels: the balanced-sparse CPU kernel against OpenBLAS (bench_kernels.c). */
int bench_kernels_main(int argc, char **argv);

#endif
