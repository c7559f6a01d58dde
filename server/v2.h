/* The KServe v2 HTTP/REST protocol beside balsa's native API, and GET /openapi.json:
 * routing of every /v2 path and the answers that need no inference (server and model
 * metadata, health, readiness, Triton's model configuration and statistics extensions).
 * Inference (POST /v2/models/{m}[/versions/1]/infer) is recognised here and run by http.c
 * through the same queue and scheduler as POST /infer, with v2_tensor.h's codec; so is
 * text generation (.../generate, Triton's generate extension, with api.h's parser).
 *
 * Versions: balsa serves one version of each model, "1"; the /versions/{v} forms accept
 * "1" and answer 404 for any other version. As in Triton, GET /v2/models/stats is every
 * model's statistics, so a model named "stats" has no metadata route of its own. */
#ifndef BALSA_V2_H
#define BALSA_V2_H

#include <stddef.h>

#include "server.h"

/* One answer: code, body (malloc'd, NULL when out of memory), content type, and the Allow
 * header for a 405. */
typedef struct {
    int code;
    char *body;
    size_t len;
    const char *ctype;
    const char *allow;
} v2_reply;

enum { V2_ANSWERED = 0, V2_INFER, V2_GENERATE, V2_GENERATE_STREAM, V2_LOAD };

/* 1 when url belongs to this module (/v2, /v2/..., /openapi.json). */
int v2_owns_path(const char *url);

/* Routes a request for a path v2_owns_path accepted. Returns V2_INFER with *model set for
 * a POST to the infer path of a served model (the caller then parses the body with
 * v2_parse_infer), V2_GENERATE for a POST to its generate path (Triton's generate
 * extension: api_parse_generate), V2_GENERATE_STREAM for its generate_stream path (the
 * same body, answered as server-sent events), V2_LOAD for a POST to
 * /v2/repository/models/{m}/load that model_control allows (the caller has the model
 * reloaded: server_post_job); otherwise V2_ANSWERED with rep filled (404 for an unknown
 * path, model or version; 405 for a wrong method; 403 for a load with model_control off;
 * 503 for a model still loading or a draining server where readiness is asked). body
 * (len bytes) is the request's body, which the repository index reads. */
int v2_route(server *s, const char *method, const char *url, const char *body, size_t len,
             v2_reply *rep, int *model);

/* Checks the body of a load request: empty, or {"parameters": {}} (Triton's clients send
 * that). Returns 0, or 400 with a message in err: malformed JSON, an unknown field, or a
 * load parameter (a config or file given with the request), which balsa does not take. */
int v2_parse_load(const char *body, size_t len, char *err, size_t errlen);

/* The OpenAPI 3 document of the whole HTTP API (server/openapi.json, embedded at build
 * time): n bytes, not NUL-terminated. */
const char *v2_openapi(size_t *n);

#endif
