/* The `balsa` subcommands. Each takes the arguments after its own name (argv[0] is the
 * subcommand) and returns the process exit status: 0 success, 1 failure, 2 usage error. */
#ifndef BALSA_CLI_H
#define BALSA_CLI_H

int convert_main(int argc, char **argv); /* server/cmd_model.c */
int inspect_main(int argc, char **argv); /* server/cmd_model.c */
int bench_lstm_main(int argc, char **argv); /* server/bench_lstm.c */

#endif
