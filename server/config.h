/* The server's configuration: built-in defaults, then a JSON file (--config or
 * BALSA_CONFIG), then BALSA_* environment variables, then command-line flags, each layer
 * overriding the one before. Every key has one entry in a table (config.c) that gives its
 * JSON name, its flag (--key-name), its variable (BALSA_KEY_NAME), its range and its help
 * line, so the three layers cannot drift apart. config/README.md documents every key. */
#ifndef BALSA_CONFIG_H
#define BALSA_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#define CONFIG_MAX_MODELS 16
#define CONFIG_NAME_MAX 64
#define CONFIG_PATH_MAX 512
#define CONFIG_MAX_BATCH 4096 /* the largest max_batch_size */

/* Batching settings; in a model entry, -1 means "inherit the global value". */
typedef struct {
    int max_batch_size;     /* sequences that step together (model_stream slots) */
    int max_queue_delay_us; /* how long an idle scheduler waits to fill a batch */
    int queue_capacity;     /* requests admitted and waiting; more get 503 */
    int request_timeout_ms; /* a request not started this long after arrival gets 504 (its own timeout_ms replaces it) */
    int max_sequences;      /* sequences (sequence_id) kept open at once; 0: none */
    int sequence_idle_ms;   /* an open sequence without a request this long is dropped */
} config_batching;

typedef struct {
    char name[CONFIG_NAME_MAX];
    char path[CONFIG_PATH_MAX];
    config_batching batching; /* the effective values once config_finish has run */
} config_model;

typedef struct {
    char host[64];
    int port;
    char backend[16];          /* auto, cpu or cuda */
    int threads;               /* backend worker threads per model, 0 = one per core */
    int http_threads;          /* libmicrohttpd thread pool size */
    int connection_limit;
    int connection_timeout_s;  /* idle keep-alive connections are closed after this */
    long body_limit;           /* bytes; larger request bodies get 413 */
    int access_log;            /* 1: one stderr line per request */
    char access_log_format[8]; /* "text" or "json" */
    int model_control;         /* 1: the repository API may reload models (else 403) */
    int model_poll_ms;         /* > 0: model files are looked at this often and a changed
                                * one reloaded once it stays the same for one period */
    char api_key[129];         /* "" or the bearer token every request but health and
                                * /metrics must carry (else 401) */
    char api_key_file[CONFIG_PATH_MAX]; /* "" or a file of more such keys, one a line */
    char cors_origins[1024];   /* "" (no CORS), "*", or origins separated by commas */
    char tls_cert[CONFIG_PATH_MAX]; /* "" (plain HTTP) or the PEM certificate file: HTTPS */
    char tls_key[CONFIG_PATH_MAX];  /* its private key (PEM); both or neither are set */
    int max_request_steps;     /* time steps summed over one request's sequences */
    long max_output_values;    /* floats one response may carry */
    int drain_delay_ms;        /* after SIGTERM: keep serving (readyz 503) this long */
    int drain_timeout_ms;      /* then finish admitted requests within this, then exit */
    config_batching batching;  /* global batching settings */
    int nmodels;
    config_model models[CONFIG_MAX_MODELS];

    /* Private: which layer last set each key (0 default, 1 file, 2 env, 3 flag). */
    unsigned char src[32];
    int models_src;
} config;

/* 1 when v[0..n) may be an API key: 16 to 128 visible ASCII characters (no space). */
int config_api_key_ok(const char *v, size_t n);

/* Fills c with the built-in defaults (no models yet: config_finish adds the demo model
 * when none was given). */
void config_defaults(config *c);

/* Reads a JSON config file over c. On error returns -1 with "FILE:LINE: reason" (syntax)
 * or "FILE: key.path: reason" (a bad value or an unknown key) in err; c may then be
 * partly updated. */
int config_load_file(config *c, const char *path, char *err, size_t errlen);

/* Same for a JSON text in memory (name is used in messages). */
int config_load_text(config *c, const char *text, size_t len, const char *name, char *err,
                     size_t errlen);

/* Applies BALSA_* variables, read with getenv_fn (getenv in the server, a table in tests). */
int config_apply_env(config *c, const char *(*getenv_fn)(const char *), char *err,
                     size_t errlen);

/* Applies command-line flags (argv[1..argc) after the subcommand); --config is accepted
 * and ignored here (config_find_file reads it). Returns 0, 1 when --help was asked
 * (help printed to stdout), or -1 with the reason in err. */
int config_apply_flags(config *c, int argc, char **argv, char *err, size_t errlen);

/* The config file named by --config FILE (flags win) or BALSA_CONFIG; NULL when none. */
const char *config_find_file(int argc, char **argv, const char *(*getenv_fn)(const char *));

/* Adds the demo model when none was configured and computes every model's effective
 * batching settings (a model's own value from the file, unless an environment variable or
 * a flag set the key, which then holds for every model). Returns -1 with err on a clash
 * (two models with one name). */
int config_finish(config *c, char *err, size_t errlen);

/* Parses "NAME=PATH" (or a bare PATH, named after its file without the extension) into
 * m; returns -1 with err when malformed. */
int config_parse_model_arg(const char *arg, config_model *m, char *err, size_t errlen);

/* Writes into out the names of the keys outside the models' batching settings whose values
 * differ between a and b, comma-separated ("" when none); returns how many differ. */
int config_diff_globals(const config *a, const config *b, char *out, size_t n);

/* Prints the flags with their variables, defaults and help lines. */
void config_print_help(FILE *f);

#endif
