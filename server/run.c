/* `balsa run FILE`: one inference without the server. Reads the same JSON body as
 * POST /infer on stdin, loads the model, runs it with model_run (or model_generate) and
 * prints the same response JSON, or with "stream" the same server-sent events (written
 * once the generation is done); any error is {"error": "..."} on stdout with exit
 * status 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cli.h"
#include "jsonw.h"

static int print_error(const char *msg)
{
    size_t len;
    char *body = jsonw_error(msg, &len);
    if (body)
        fwrite(body, 1, len, stdout);
    free(body);
    return 1;
}

static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
        if (n == cap) {
            char *nb = cap < (1u << 30) ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
    }
    *len = n;
    return buf;
}

int run_main(int argc, char **argv)
{
    const char *path = NULL, *backend = "auto";
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: balsa run MODEL_FILE [--backend auto|cpu|cuda] [--threads N] "
                   "< request.json\n"
                   "Reads an /infer request body on stdin and prints the response.\n");
            return 0;
        } else if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            backend = argv[++i];
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (argv[i][0] != '-' && !path) {
            path = argv[i];
        } else {
            fprintf(stderr, "balsa run: unexpected argument \"%s\" (balsa run --help)\n",
                    argv[i]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "usage: balsa run MODEL_FILE < request.json\n");
        return 2;
    }
    char msg[1024];
    balsa_backend *be = NULL;
    if (balsa_backend_create(backend, threads, &be, msg, sizeof msg) != BALSA_OK)
        return print_error(msg);
    balsa_model *m = NULL;
    char lerr[512];
    if (model_load(path, be, &m, lerr, sizeof lerr) != BALSA_OK) {
        snprintf(msg, sizeof msg, "%s: %s", path, lerr);
        be->ops->destroy(be);
        return print_error(msg);
    }
    const model_info *info = model_get_info(m);
    size_t len = 0;
    char *body = read_all(stdin, &len);
    int rc = 1;
    api_request req;
    memset(&req, 0, sizeof req);
    if (!body) {
        print_error("stdin: cannot read the request");
        goto out;
    }
    api_model am = {info->name, info, m};
    api_limits lim = {1 << 30, 1L << 40};
    if (api_parse_request(body, len, &am, 1, &lim, &req, msg, sizeof msg)) {
        print_error(msg);
        goto out;
    }
    if (req.seq_key[0]) {
        print_error("sequence_id: balsa run keeps no sequences (it runs one request; carry the "
                    "state with initial_state and return_state instead)");
        goto out;
    }
    if (api_alloc_outputs(&req, info)) {
        print_error("out of memory for the outputs");
        goto out;
    }
    balsa_status st = BALSA_OK;
    if (!req.generate)
        st = model_run(m, req.seqs, req.nseqs, req.all_steps, req.outputs);
    for (int i = 0; req.generate && i < req.nseqs && st == BALSA_OK; i++) {
        /* The seed offset per sequence is the scheduler's (engine/sched.h), so that
         * `balsa run` and the server give the same tokens. */
        model_gen_opts g = req.gen;
        g.seed += (uint64_t)i;
        st = model_generate(m, &req.seqs[i], &g, req.gen_tokens[i], &req.gen_counts[i]);
    }
    if (st != BALSA_OK) {
        snprintf(msg, sizeof msg, "engine: %s", balsa_status_str(st));
        print_error(msg);
        goto out;
    }
    size_t olen;
    char *resp = req.stream ? api_render_stream(&req, info->name, &olen)
                            : api_render_response(&req, info->name, info, &olen);
    if (!resp) {
        print_error("out of memory rendering the response");
        goto out;
    }
    fwrite(resp, 1, olen, stdout);
    free(resp);
    rc = 0;
out:
    api_request_free(&req);
    free(body);
    model_free(m);
    be->ops->destroy(be);
    return rc;
}
