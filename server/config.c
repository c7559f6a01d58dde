/* Configuration layers (see config.h): one table of keys drives the JSON file, the
 * BALSA_* environment variables, the flags and the help text. */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "models/json_text.h"

typedef enum { K_INT, K_LONG, K_STR, K_BOOL } key_type;

typedef struct {
    const char *name;   /* JSON key; flag is --name with '-' for '_', env BALSA_NAME */
    key_type type;
    size_t off;         /* offset in config (or in config_batching when batching) */
    int batching;       /* 1: a batching key, also allowed in a model entry */
    long min, max;      /* range for numbers; size of the buffer for strings */
    const char *help;
} key_def;

#define CFG(f) offsetof(config, f)
#define BAT(f) offsetof(config_batching, f)

static const key_def keys[] = {
    {"host", K_STR, CFG(host), 0, 0, 64, "address to listen on (IPv4 or IPv6 literal)"},
    {"port", K_INT, CFG(port), 0, 0, 65535, "TCP port (0: any free port)"},
    {"backend", K_STR, CFG(backend), 0, 0, 16, "auto, cpu or cuda"},
    {"threads", K_INT, CFG(threads), 0, 0, 1024, "backend worker threads per model (0: one per core)"},
    {"http_threads", K_INT, CFG(http_threads), 0, 1, 64, "HTTP thread pool size"},
    {"connection_limit", K_INT, CFG(connection_limit), 0, 1, 100000, "open connections at most"},
    {"connection_timeout_s", K_INT, CFG(connection_timeout_s), 0, 1, 86400,
     "idle connections are closed after this many seconds"},
    {"body_limit", K_LONG, CFG(body_limit), 0, 64, 1L << 30, "request body bytes at most (else 413)"},
    {"access_log", K_BOOL, CFG(access_log), 0, 0, 1, "one stderr line per request"},
    {"access_log_format", K_STR, CFG(access_log_format), 0, 0, 8,
     "text (key=value) or json (one JSON object per line, with the time)"},
    {"model_control", K_BOOL, CFG(model_control), 0, 0, 1,
     "allow POST /v2/repository/models/NAME/load to reload a model from its file"},
    {"model_poll_ms", K_INT, CFG(model_poll_ms), 0, 0, 86400000,
     "look at the model files this often and reload one that changed (0: never)"},
    {"api_key", K_STR, CFG(api_key), 0, 0, 129,
     "when set, requests need Authorization: Bearer KEY (health and /metrics excepted)"},
    {"api_key_file", K_STR, CFG(api_key_file), 0, 0, CONFIG_PATH_MAX,
     "a file of API keys, one a line (# comments), each accepted as api_key is"},
    {"cors_origins", K_STR, CFG(cors_origins), 0, 0, 1024,
     "web origins whose pages may call balsa (CORS): * or https://a.example,http://b:8000"},
    {"tls_cert", K_STR, CFG(tls_cert), 0, 0, CONFIG_PATH_MAX,
     "PEM certificate (chain) file: serve HTTPS instead of HTTP (with tls_key)"},
    {"tls_key", K_STR, CFG(tls_key), 0, 0, CONFIG_PATH_MAX,
     "PEM private key file of tls_cert (unencrypted)"},
    {"max_request_steps", K_INT, CFG(max_request_steps), 0, 1, 1 << 30,
     "time steps summed over one request's sequences at most (else 400)"},
    {"max_output_values", K_LONG, CFG(max_output_values), 0, 1, 1L << 34,
     "output floats one response may carry at most (else 400)"},
    {"drain_delay_ms", K_INT, CFG(drain_delay_ms), 0, 0, 3600000,
     "after SIGTERM, keep serving this long with /readyz answering 503"},
    {"drain_timeout_ms", K_INT, CFG(drain_timeout_ms), 0, 0, 3600000,
     "then finish admitted requests within this long, and exit"},
    {"max_batch_size", K_INT, BAT(max_batch_size), 1, 1, CONFIG_MAX_BATCH,
     "sequences that run together"},
    {"max_queue_delay_us", K_INT, BAT(max_queue_delay_us), 1, 0, 10000000,
     "an idle model waits at most this long after the oldest request to fill a batch"},
    {"queue_capacity", K_INT, BAT(queue_capacity), 1, 1, 1000000,
     "requests waiting per model at most (else 503)"},
    {"request_timeout_ms", K_INT, BAT(request_timeout_ms), 1, 1, 3600000,
     "a request not started within this long gets 504"},
    {"max_sequences", K_INT, BAT(max_sequences), 1, 0, 1000000,
     "sequences (sequence_id) whose LSTM state is kept between requests at most (0: none)"},
    {"sequence_idle_ms", K_INT, BAT(sequence_idle_ms), 1, 1, 86400000,
     "an open sequence without a request for this long is dropped"},
};
#define NKEYS (sizeof keys / sizeof *keys)
_Static_assert(NKEYS <= sizeof ((config *)0)->src, "config.src needs a byte per key");

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void config_defaults(config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    c->port = 8080;
    snprintf(c->backend, sizeof c->backend, "auto");
    c->threads = 0;
    c->http_threads = 2;
    c->connection_limit = 1000;
    c->connection_timeout_s = 30;
    c->body_limit = 1L << 20;
    c->access_log = 1;
    snprintf(c->access_log_format, sizeof c->access_log_format, "text");
    c->max_request_steps = 65536;
    c->max_output_values = 1L << 22;
    c->drain_delay_ms = 1000;
    c->drain_timeout_ms = 30000;
    c->batching.max_batch_size = 64;
    c->batching.max_queue_delay_us = 1000;
    c->batching.queue_capacity = 1024;
    c->batching.request_timeout_ms = 30000;
    c->batching.max_sequences = 1024;
    c->batching.sequence_idle_ms = 60000;
}

static void *key_ptr(config *c, config_batching *b, const key_def *k)
{
    return k->batching ? (char *)b + k->off : (char *)c + k->off;
}

int config_api_key_ok(const char *v, size_t n)
{
    int ok = n >= 16 && n <= 128;
    for (size_t i = 0; ok && i < n; i++)
        ok = v[i] > 0x20 && v[i] < 0x7f;
    return ok;
}

/* Checks and stores a string value for key k (the name is used in messages). */
static int set_str(void *p, const key_def *k, const char *v, const char *where, char *err,
                   size_t errlen)
{
    if (strlen(v) >= (size_t)k->max) {
        errf(err, errlen, "%s: longer than %ld characters", where, k->max - 1);
        return -1;
    }
    if (strcmp(k->name, "backend") == 0 && strcmp(v, "auto") != 0 && strcmp(v, "cpu") != 0 &&
        strcmp(v, "cuda") != 0) {
        errf(err, errlen, "%s: \"%s\" is not one of auto, cpu, cuda", where, v);
        return -1;
    }
    if (strcmp(k->name, "access_log_format") == 0 && strcmp(v, "text") != 0 &&
        strcmp(v, "json") != 0) {
        errf(err, errlen, "%s: \"%s\" is not one of text, json", where, v);
        return -1;
    }
    if (strcmp(k->name, "api_key") == 0 && *v) {
        if (!config_api_key_ok(v, strlen(v))) {
            errf(err, errlen, "%s: must be empty (no key) or 16 to 128 visible ASCII characters",
                 where);
            return -1;
        }
    }
    if (strcmp(k->name, "cors_origins") == 0 && *v && strcmp(v, "*") != 0) {
        /* Each item an origin as browsers send it: scheme://host[:port], no path. */
        for (const char *p = v; *p;) {
            size_t n = strcspn(p, ",");
            const char *host = !strncmp(p, "http://", 7) ? p + 7 : !strncmp(p, "https://", 8) ? p + 8 : NULL;
            int ok = host && host < p + n;
            for (const char *q = host; ok && q < p + n; q++)
                ok = *q > 0x20 && *q < 0x7f && *q != '/' && *q != '*';
            if (!ok) {
                errf(err, errlen,
                     "%s: \"%.*s\" is not an origin (scheme://host[:port], no path); the "
                     "value is \"*\" or origins separated by commas",
                     where, (int)n, p);
                return -1;
            }
            p += n + (p[n] == ',');
        }
    }
    if (strcmp(k->name, "host") == 0) {
        unsigned char addr[16];
        if (inet_pton(AF_INET, v, addr) != 1 && inet_pton(AF_INET6, v, addr) != 1) {
            errf(err, errlen, "%s: \"%s\" is not an IPv4 or IPv6 address", where, v);
            return -1;
        }
    }
    snprintf(p, (size_t)k->max, "%s", v);
    return 0;
}

static int set_num(void *p, const key_def *k, double v, const char *where, char *err,
                   size_t errlen)
{
    if (k->type == K_BOOL) {
        *(int *)p = v != 0;
        return 0;
    }
    if (!(v == floor(v)) || v < (double)k->min || v > (double)k->max) {
        errf(err, errlen, "%s: must be an integer in [%ld, %ld], got %.17g", where, k->min,
             k->max, v);
        return -1;
    }
    if (k->type == K_INT)
        *(int *)p = (int)v;
    else
        *(long *)p = (long)v;
    return 0;
}

/* Parses a value given as text (env or flag) for key k. */
static int set_text(void *p, const key_def *k, const char *v, const char *where, char *err,
                    size_t errlen)
{
    if (k->type == K_STR)
        return set_str(p, k, v, where, err, errlen);
    if (k->type == K_BOOL) {
        if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on"))
            *(int *)p = 1;
        else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off"))
            *(int *)p = 0;
        else {
            errf(err, errlen, "%s: \"%s\" is not a boolean (true/false/1/0)", where, v);
            return -1;
        }
        return 0;
    }
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno) {
        errf(err, errlen, "%s: \"%s\" is not a number", where, v);
        return -1;
    }
    return set_num(p, k, d, where, err, errlen);
}

/* Stores a JSON value for key k; where names the key path for messages. */
static int set_json(void *p, const key_def *k, const cJSON *v, const char *where, char *err,
                    size_t errlen)
{
    if (k->type == K_STR) {
        if (!cJSON_IsString(v)) {
            errf(err, errlen, "%s: must be a string", where);
            return -1;
        }
        return set_str(p, k, v->valuestring, where, err, errlen);
    }
    if (k->type == K_BOOL) {
        if (!cJSON_IsBool(v)) {
            errf(err, errlen, "%s: must be true or false", where);
            return -1;
        }
        *(int *)p = cJSON_IsTrue(v);
        return 0;
    }
    if (!cJSON_IsNumber(v)) {
        errf(err, errlen, "%s: must be a number", where);
        return -1;
    }
    return set_num(p, k, v->valuedouble, where, err, errlen);
}

static int valid_model_name(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
            return 0;
    return 1;
}

static int set_model_name(config_model *m, const char *v, const char *where, char *err,
                          size_t errlen)
{
    if (strlen(v) >= sizeof m->name || !valid_model_name(v)) {
        errf(err, errlen,
             "%s: model name \"%s\" must be 1-%zu characters of letters, digits, '_', '-', '.'",
             where, v, sizeof m->name - 1);
        return -1;
    }
    snprintf(m->name, sizeof m->name, "%s", v);
    return 0;
}

static void model_init(config_model *m)
{
    memset(m, 0, sizeof *m);
    m->batching.max_batch_size = -1;
    m->batching.max_queue_delay_us = -1;
    m->batching.queue_capacity = -1;
    m->batching.request_timeout_ms = -1;
    m->batching.max_sequences = -1;
    m->batching.sequence_idle_ms = -1;
}

/* The name of a model given by its path alone: the file's base name without the
 * extension (cut to n - 1 bytes, which set_model_name then refuses as too long). */
static void name_from_path(const char *path, char *name, size_t n)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    snprintf(name, n, "%s", base);
    char *dot = strrchr(name, '.');
    if (dot && dot != name)
        *dot = 0;
}

int config_parse_model_arg(const char *arg, config_model *m, char *err, size_t errlen)
{
    model_init(m);
    const char *eq = strchr(arg, '=');
    const char *path = eq ? eq + 1 : arg;
    if (!*path) {
        errf(err, errlen, "--model \"%s\": empty path (expected NAME=PATH)", arg);
        return -1;
    }
    if (strlen(path) >= sizeof m->path) {
        errf(err, errlen, "--model: path longer than %zu characters", sizeof m->path - 1);
        return -1;
    }
    snprintf(m->path, sizeof m->path, "%s", path);
    char name[CONFIG_NAME_MAX + 1];
    if (eq)
        snprintf(name, sizeof name, "%.*s", (int)(eq - arg), arg);
    else
        name_from_path(path, name, sizeof name);
    return set_model_name(m, name, "--model", err, errlen);
}

/* Line and column (1-based) of byte offset off in text. */
static void line_col(const char *text, size_t off, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

static int load_models(config *c, const cJSON *arr, const char *name, char *err, size_t errlen)
{
    if (!cJSON_IsArray(arr)) {
        errf(err, errlen, "%s: models: must be an array of {\"name\", \"path\", ...}", name);
        return -1;
    }
    c->nmodels = 0;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
    {
        char where[160];
        if (c->nmodels == CONFIG_MAX_MODELS) {
            errf(err, errlen, "%s: models: more than %d models", name, CONFIG_MAX_MODELS);
            return -1;
        }
        if (!cJSON_IsObject(e)) {
            errf(err, errlen, "%s: models[%d]: must be an object", name, i);
            return -1;
        }
        config_model *m = &c->models[c->nmodels];
        model_init(m);
        int has_name = 0, has_path = 0;
        const cJSON *f;
        cJSON_ArrayForEach(f, e)
        {
            snprintf(where, sizeof where, "%s: models[%d].%s", name, i, f->string);
            if (strcmp(f->string, "name") == 0 || strcmp(f->string, "path") == 0) {
                if (!cJSON_IsString(f)) {
                    errf(err, errlen, "%s: must be a string", where);
                    return -1;
                }
                if (f->string[0] == 'n') {
                    if (set_model_name(m, f->valuestring, where, err, errlen))
                        return -1;
                    has_name = 1;
                } else {
                    if (!f->valuestring[0] || strlen(f->valuestring) >= sizeof m->path) {
                        errf(err, errlen, "%s: must be a non-empty path shorter than %zu",
                             where, sizeof m->path);
                        return -1;
                    }
                    snprintf(m->path, sizeof m->path, "%s", f->valuestring);
                    has_path = 1;
                }
                continue;
            }
            const key_def *k = NULL;
            for (size_t j = 0; j < NKEYS; j++)
                if (keys[j].batching && strcmp(keys[j].name, f->string) == 0)
                    k = &keys[j];
            if (!k) {
                errf(err, errlen,
                     "%s: unknown key (a model takes name, path, max_batch_size, "
                     "max_queue_delay_us, queue_capacity, request_timeout_ms, max_sequences, "
                     "sequence_idle_ms)",
                     where);
                return -1;
            }
            if (set_json((char *)&m->batching + k->off, k, f, where, err, errlen))
                return -1;
        }
        if (!has_path) {
            errf(err, errlen, "%s: models[%d]: \"path\" is missing", name, i);
            return -1;
        }
        if (!has_name) {
            /* Named after its file, as a bare --model PATH is; a '=' in the path is part
             * of the file name here, not NAME=PATH. */
            char nm[CONFIG_NAME_MAX + 1];
            name_from_path(m->path, nm, sizeof nm);
            snprintf(where, sizeof where, "%s: models[%d] (no \"name\", so named after its path)",
                     name, i);
            if (set_model_name(m, nm, where, err, errlen))
                return -1;
        }
        c->nmodels++;
        i++;
    }
    c->models_src = 1;
    return 0;
}

int config_load_text(config *c, const char *text, size_t len, const char *name, char *err,
                     size_t errlen)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    /* cJSON has no line numbers: compute them from where the parse stopped. */
    size_t off = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
    if (root)
        while (off < len && isspace((unsigned char)text[off]))
            off++;
    if (!root || off != len) {
        int line, col;
        line_col(text, off, &line, &col);
        int show = off < len ? (int)(len - off < 20 ? len - off : 20) : 11;
        errf(err, errlen, "%s:%d:%d: %s near \"%.*s\"", name, line, col,
             root ? "text after the JSON value" : "JSON syntax error", show,
             off < len ? text + off : "end of file");
        cJSON_Delete(root);
        return -1;
    }
    int rc = -1;
    char what[256];
    size_t bad = json_text_check(text, len, "not accepted: it would end the string there", 0,
                                 what, sizeof what);
    if (bad < len) {
        int line, col;
        line_col(text, bad, &line, &col);
        errf(err, errlen, "%s:%d:%d: %s", name, line, col, what);
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        errf(err, errlen, "%s: the top level must be a JSON object", name);
        goto out;
    }
    const cJSON *f;
    cJSON_ArrayForEach(f, root)
    {
        char where[160];
        snprintf(where, sizeof where, "%s: %s", name, f->string);
        if (strcmp(f->string, "models") == 0) {
            if (load_models(c, f, name, err, errlen))
                goto out;
            continue;
        }
        const key_def *k = NULL;
        for (size_t j = 0; j < NKEYS; j++)
            if (strcmp(keys[j].name, f->string) == 0)
                k = &keys[j];
        if (!k) {
            errf(err, errlen, "%s: unknown key (see config/README.md for the keys)", where);
            goto out;
        }
        if (set_json(key_ptr(c, &c->batching, k), k, f, where, err, errlen))
            goto out;
        c->src[k - keys] = 1;
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

int config_load_file(config *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        errf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            if (cap > (16u << 20)) {
                errf(err, errlen, "%s: larger than 16 MiB", path);
                break;
            }
            char *nb = realloc(buf, cap);
            if (!nb) {
                errf(err, errlen, "%s: out of memory", path);
                break;
            }
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    int bad = ferror(f) || cap > (16u << 20) || !buf;
    if (ferror(f))
        errf(err, errlen, "%s: read error", path);
    fclose(f);
    int rc = bad ? -1 : config_load_text(c, buf, len, path, err, errlen);
    free(buf);
    return rc;
}

static void env_name(const key_def *k, char *out, size_t n)
{
    snprintf(out, n, "BALSA_%s", k->name);
    for (char *p = out; *p; p++)
        *p = (char)toupper((unsigned char)*p);
}

/* Splits a comma-separated list of NAME=PATH into the model list. */
static int set_models_list(config *c, const char *v, const char *where, char *err,
                           size_t errlen)
{
    c->nmodels = 0;
    while (*v) {
        const char *comma = strchr(v, ',');
        size_t n = comma ? (size_t)(comma - v) : strlen(v);
        char item[CONFIG_NAME_MAX + CONFIG_PATH_MAX + 2];
        if (n >= sizeof item) {
            errf(err, errlen, "%s: entry too long", where);
            return -1;
        }
        memcpy(item, v, n);
        item[n] = 0;
        if (c->nmodels == CONFIG_MAX_MODELS) {
            errf(err, errlen, "%s: more than %d models", where, CONFIG_MAX_MODELS);
            return -1;
        }
        if (n && config_parse_model_arg(item, &c->models[c->nmodels++], err, errlen))
            return -1;
        v += n + (comma ? 1 : 0);
    }
    return 0;
}

int config_apply_env(config *c, const char *(*getenv_fn)(const char *), char *err,
                     size_t errlen)
{
    char name[64];
    for (size_t i = 0; i < NKEYS; i++) {
        env_name(&keys[i], name, sizeof name);
        const char *v = getenv_fn(name);
        if (!v)
            continue;
        if (set_text(key_ptr(c, &c->batching, &keys[i]), &keys[i], v, name, err, errlen))
            return -1;
        c->src[i] = 2;
    }
    const char *v = getenv_fn("BALSA_MODELS");
    if (v) {
        if (set_models_list(c, v, "BALSA_MODELS", err, errlen))
            return -1;
        c->models_src = 2;
    }
    return 0;
}

const char *config_find_file(int argc, char **argv, const char *(*getenv_fn)(const char *))
{
    const char *file = getenv_fn("BALSA_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            file = argv[++i];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            file = argv[i] + 9;
    }
    return file && *file ? file : NULL;
}

int config_apply_flags(config *c, int argc, char **argv, char *err, size_t errlen)
{
    int models_from_flags = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            config_print_help(stdout);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            errf(err, errlen, "unexpected argument \"%s\" (options start with --)", a);
            return -1;
        }
        char flag[64];
        const char *eq = strchr(a, '=');
        size_t n = eq ? (size_t)(eq - a) : strlen(a);
        if (n >= sizeof flag) {
            errf(err, errlen, "unknown option \"%s\"", a);
            return -1;
        }
        memcpy(flag, a, n);
        flag[n] = 0;
        const char *val = eq ? eq + 1 : NULL;
        if (!val) {
            if (i + 1 >= argc) {
                errf(err, errlen, "%s: needs a value", flag);
                return -1;
            }
            val = argv[++i];
        }
        if (strcmp(flag, "--config") == 0)
            continue;
        if (strcmp(flag, "--model") == 0) {
            if (!models_from_flags)
                c->nmodels = 0;
            models_from_flags = 1;
            if (c->nmodels == CONFIG_MAX_MODELS) {
                errf(err, errlen, "--model: more than %d models", CONFIG_MAX_MODELS);
                return -1;
            }
            if (config_parse_model_arg(val, &c->models[c->nmodels++], err, errlen))
                return -1;
            c->models_src = 3;
            continue;
        }
        size_t k;
        for (k = 0; k < NKEYS; k++) {
            char want[64];
            snprintf(want, sizeof want, "--%s", keys[k].name);
            for (char *p = want; *p; p++)
                if (*p == '_')
                    *p = '-';
            if (strcmp(want, flag) == 0)
                break;
        }
        if (k == NKEYS) {
            errf(err, errlen, "unknown option \"%s\" (balsa serve --help lists them)", flag);
            return -1;
        }
        if (set_text(key_ptr(c, &c->batching, &keys[k]), &keys[k], val, flag, err, errlen))
            return -1;
        c->src[k] = 3;
    }
    return 0;
}

int config_finish(config *c, char *err, size_t errlen)
{
    if (c->nmodels == 0) {
        model_init(&c->models[0]);
        snprintf(c->models[0].name, sizeof c->models[0].name, "fortunes");
        snprintf(c->models[0].path, sizeof c->models[0].path,
                 "models/fortunes/fortunes-b90.safetensors");
        c->nmodels = 1;
    }
    if (!c->tls_cert[0] != !c->tls_key[0]) {
        errf(err, errlen, "%s: not set, but %s is: HTTPS needs both (or neither)",
             c->tls_cert[0] ? "tls_key" : "tls_cert", c->tls_cert[0] ? "tls_cert" : "tls_key");
        return -1;
    }
    for (int i = 0; i < c->nmodels; i++) {
        config_model *m = &c->models[i];
        for (int j = 0; j < i; j++)
            if (strcmp(c->models[j].name, m->name) == 0) {
                errf(err, errlen, "models: the name \"%s\" is used twice", m->name);
                return -1;
            }
        for (size_t k = 0; k < NKEYS; k++) {
            if (!keys[k].batching)
                continue;
            int *mine = (int *)((char *)&m->batching + keys[k].off);
            const int *global = (const int *)((const char *)&c->batching + keys[k].off);
            /* A model's own value (from the file) holds unless env or a flag set the key. */
            if (*mine < 0 || c->src[k] >= 2)
                *mine = *global;
        }
    }
    return 0;
}

int config_diff_globals(const config *a, const config *b, char *out, size_t n)
{
    int count = 0;
    size_t used = 0;
    out[0] = 0;
    for (size_t k = 0; k < NKEYS; k++) {
        if (keys[k].batching)
            continue;
        const char *pa = (const char *)a + keys[k].off, *pb = (const char *)b + keys[k].off;
        int same = keys[k].type == K_STR    ? strcmp(pa, pb) == 0
                   : keys[k].type == K_LONG ? *(const long *)pa == *(const long *)pb
                                            : *(const int *)pa == *(const int *)pb;
        if (same)
            continue;
        int w = snprintf(out + used, n - used, "%s%s", count ? ", " : "", keys[k].name);
        if (w > 0 && (size_t)w < n - used)
            used += (size_t)w;
        count++;
    }
    return count;
}

void config_print_help(FILE *f)
{
    config d;
    config_defaults(&d);
    fprintf(f, "usage: balsa serve [--config FILE] [--model NAME=PATH]... [options]\n\n"
               "Precedence: flags > BALSA_* environment > config file > defaults.\n\n"
               "  --config FILE              JSON config file (env BALSA_CONFIG)\n"
               "  --model NAME=PATH          serve a model; repeatable; replaces the file's\n"
               "                             models (env BALSA_MODELS=NAME=PATH,...)\n");
    for (size_t k = 0; k < NKEYS; k++) {
        char flag[64], env[64], def[80];
        snprintf(flag, sizeof flag, "--%s", keys[k].name);
        for (char *p = flag; *p; p++)
            if (*p == '_')
                *p = '-';
        env_name(&keys[k], env, sizeof env);
        const void *p = key_ptr(&d, &d.batching, &keys[k]);
        if (keys[k].type == K_STR)
            snprintf(def, sizeof def, "%s", (const char *)p);
        else if (keys[k].type == K_LONG)
            snprintf(def, sizeof def, "%ld", *(const long *)p);
        else if (keys[k].type == K_BOOL)
            snprintf(def, sizeof def, "%s", *(const int *)p ? "true" : "false");
        else
            snprintf(def, sizeof def, "%d", *(const int *)p);
        fprintf(f, "  %-26s %s\n  %-26s (env %s, default %s)\n", flag, keys[k].help, "", env,
                def);
    }
}
