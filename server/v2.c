/* KServe v2 routing and the metadata, health, configuration and statistics answers (see
 * v2.h). Everything is rendered with jsonw; names from the URL appear in messages as
 * printable ASCII only, so an error body is always valid JSON. */
#include "v2.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "api.h"
#include "jsonw.h"
#include "v2_stats.h"

#ifndef BALSA_VERSION
#define BALSA_VERSION "0.1.0"
#endif

/* The embedded document (server/openapi.c). */
extern const char balsa_openapi_json[];
extern const char balsa_openapi_json_end[];

const char *v2_openapi(size_t *n)
{
    *n = (size_t)(balsa_openapi_json_end - balsa_openapi_json);
    return balsa_openapi_json;
}

int v2_owns_path(const char *url)
{
    return !strcmp(url, "/openapi.json") || !strcmp(url, "/v2") || !strncmp(url, "/v2/", 4);
}

static void reply_json(v2_reply *rep, int code, jsonw *w)
{
    rep->code = code;
    rep->ctype = "application/json";
    rep->body = jsonw_take(w, &rep->len);
}

static void reply_error(v2_reply *rep, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void reply_error(v2_reply *rep, int code, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    rep->code = code;
    rep->ctype = "application/json";
    rep->body = jsonw_error(msg, &rep->len);
}

static void printable(const char *s, size_t n, char *out, size_t outlen)
{
    size_t i = 0;
    for (; i < n && s[i] && i + 1 < outlen; i++)
        out[i] = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\' ? s[i] : '?';
    out[i] = 0;
}

static int server_ready(server *s)
{
    if (atomic_load(&s->stage) != SERVER_SERVING)
        return 0;
    for (int i = 0; i < s->nmodels; i++)
        if (!atomic_load(&s->models[i].ready))
            return 0;
    return 1;
}

static void server_metadata(v2_reply *rep)
{
    jsonw w;
    jsonw_init(&w);
    jsonw_str(&w, "{\"name\":\"balsa\",\"version\":\"" BALSA_VERSION "\",\"extensions\":["
                  "\"binary_tensor_data\",\"statistics\",\"model_configuration\","
                  "\"model_repository\",\"sequence\",\"sequence(string_id)\"]}\n");
    reply_json(rep, 200, &w);
}

static void model_metadata(const server_model *sm, const model_info *in, v2_reply *rep)
{
    jsonw w;
    jsonw_init(&w);
    jsonw_str(&w, "{\"name\":");
    jsonw_quoted(&w, sm->cfg->name);
    jsonw_str(&w, ",\"versions\":[\"1\"],\"platform\":\"balsa\",\"inputs\":[");
    if (in->input_kind == MODEL_INPUT_TOKENS)
        jsonw_str(&w, "{\"name\":\"tokens\",\"datatype\":\"INT32\",\"shape\":[-1,-1]}");
    if (in->input_kind == MODEL_INPUT_TOKENS && in->has_vocabulary)
        jsonw_str(&w, ",{\"name\":\"text\",\"datatype\":\"BYTES\",\"shape\":[-1]}");
    if (in->input_kind != MODEL_INPUT_TOKENS)
        jsonw_printf(&w, "{\"name\":\"features\",\"datatype\":\"FP32\",\"shape\":[-1,-1,%d]}",
                     in->input_size);
    jsonw_printf(&w,
                 ",{\"name\":\"lengths\",\"datatype\":\"INT32\",\"shape\":[-1,1]}],\"outputs\":["
                 "{\"name\":\"output\",\"datatype\":\"FP32\",\"shape\":[-1,%d]},"
                 "{\"name\":\"top_k_indices\",\"datatype\":\"INT32\",\"shape\":[-1,-1]},"
                 "{\"name\":\"top_k_values\",\"datatype\":\"FP32\",\"shape\":[-1,-1]}]}\n",
                 in->output_size);
    reply_json(rep, 200, &w);
}

/* Triton's model configuration: dims exclude the batch dimension (max_batch_size > 0);
 * sequence_batching for a model that keeps sequences. */
static void model_config(const server_model *sm, const server_loaded *l, v2_reply *rep)
{
    const model_info *in = l->info;
    int keeps_sequences = l->seqs != NULL;
    const config_batching *b = &l->batching;
    jsonw w;
    jsonw_init(&w);
    jsonw_str(&w, "{\"name\":");
    jsonw_quoted(&w, sm->cfg->name);
    jsonw_printf(&w, ",\"platform\":\"balsa\",\"backend\":\"balsa\",\"version_policy\":"
                     "{\"specific\":{\"versions\":[1]}},\"max_batch_size\":%d,\"input\":[",
                 b->max_batch_size);
    if (in->input_kind == MODEL_INPUT_TOKENS)
        jsonw_printf(&w, "{\"name\":\"tokens\",\"data_type\":\"TYPE_INT32\",\"dims\":[-1]%s}",
                     in->has_vocabulary ? ",\"optional\":true" : "");
    if (in->input_kind == MODEL_INPUT_TOKENS && in->has_vocabulary)
        jsonw_str(&w, ",{\"name\":\"text\",\"data_type\":\"TYPE_STRING\",\"dims\":[1],"
                      "\"optional\":true}");
    if (in->input_kind != MODEL_INPUT_TOKENS)
        jsonw_printf(&w, "{\"name\":\"features\",\"data_type\":\"TYPE_FP32\",\"dims\":[-1,%d]}",
                     in->input_size);
    jsonw_printf(&w,
                 ",{\"name\":\"lengths\",\"data_type\":\"TYPE_INT32\",\"dims\":[1],"
                 "\"optional\":true}],\"output\":["
                 "{\"name\":\"output\",\"data_type\":\"TYPE_FP32\",\"dims\":[%d]},"
                 "{\"name\":\"top_k_indices\",\"data_type\":\"TYPE_INT32\",\"dims\":[-1]},"
                 "{\"name\":\"top_k_values\",\"data_type\":\"TYPE_FP32\",\"dims\":[-1]}],"
                 "\"dynamic_batching\":{\"preferred_batch_size\":[%d],"
                 "\"max_queue_delay_microseconds\":%d},",
                 in->output_size, b->max_batch_size, b->max_queue_delay_us);
    if (keeps_sequences)
        jsonw_printf(&w,
                     "\"sequence_batching\":{\"max_sequence_idle_microseconds\":%lld},",
                     (long long)b->sequence_idle_ms * 1000);
    jsonw_printf(&w,
                 "\"parameters\":{\"queue_capacity\":{\"string_value\":\"%d\"},"
                 "\"request_timeout_ms\":{\"string_value\":\"%d\"},"
                 "\"max_sequences\":{\"string_value\":\"%d\"}}}\n",
                 b->queue_capacity, b->request_timeout_ms, keeps_sequences ? b->max_sequences : 0);
    reply_json(rep, 200, &w);
}

static void model_stats(server *s, int model, v2_reply *rep)
{
    jsonw w;
    jsonw_init(&w);
    jsonw_str(&w, "{\"model_stats\":[");
    for (int i = 0; i < s->nmodels; i++) {
        if (model >= 0 && i != model)
            continue;
        if (model < 0 && i)
            jsonw_str(&w, ",");
        v2_stats_render(s->v2stats, i, s->models[i].cfg->name, &w);
    }
    jsonw_str(&w, "]}\n");
    reply_json(rep, 200, &w);
}

static int method_ok(const char *method, int post, v2_reply *rep, const char *url)
{
    int is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (post ? !strcmp(method, "POST") : is_get)
        return 1;
    char pu[128], pm[16];
    printable(url, strlen(url), pu, sizeof pu);
    printable(method, strlen(method), pm, sizeof pm);
    rep->allow = post ? "POST" : "GET, HEAD";
    reply_error(rep, 405, "method %s not allowed on %s (allowed: %s)", pm, pu, rep->allow);
    return 0;
}

/* The index of the model named by name[0..nlen), with its printable form in pn; or -1
 * with a 404 in rep that lists the served models. */
static int find_model(server *s, const char *name, size_t nlen, char *pn, size_t pnlen,
                      v2_reply *rep)
{
    printable(name, nlen, pn, pnlen);
    for (int i = 0; i < s->nmodels; i++)
        if (strlen(s->models[i].cfg->name) == nlen &&
            !strncmp(s->models[i].cfg->name, name, nlen))
            return i;
    char names[512];
    size_t used = 0;
    names[0] = 0;
    for (int i = 0; i < s->nmodels && used < sizeof names; i++)
        used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                                 s->models[i].cfg->name);
    reply_error(rep, 404, "model: no model named \"%s\" (served: %s)", pn, names);
    return -1;
}

/* 1 when body[0..len) is empty or only whitespace. */
static int blank(const char *body, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (body[i] != ' ' && body[i] != '\n' && body[i] != '\r' && body[i] != '\t')
            return 0;
    return 1;
}

/* POST /v2/repository/index: every model and its state; with {"ready": true} only the
 * ready ones. */
static void repository_index(server *s, const char *body, size_t len, v2_reply *rep)
{
    int only_ready = 0;
    if (!blank(body, len)) {
        char err[256];
        cJSON *root;
        int code = api_parse_json(body, len, &root, NULL, err, sizeof err);
        if (!code && !cJSON_IsObject(root))
            code = api_fail(err, sizeof err, 400, "body: must be a JSON object {\"ready\"}");
        const cJSON *f, *fields = code ? NULL : root;
        cJSON_ArrayForEach(f, fields)
        {
            if (strcmp(f->string, "ready") != 0)
                code = api_fail(err, sizeof err, 400, "%.64s: unknown field (expected ready)",
                                f->string);
            else if (!cJSON_IsBool(f))
                code = api_fail(err, sizeof err, 400, "ready: must be true or false");
            else
                only_ready = cJSON_IsTrue(f);
            if (code)
                break;
        }
        cJSON_Delete(root);
        if (code) {
            reply_error(rep, code, "%s", err);
            return;
        }
    }
    jsonw w;
    jsonw_init(&w);
    jsonw_str(&w, "[");
    for (int i = 0, n = 0; i < s->nmodels; i++) {
        int ready = atomic_load(&s->models[i].ready);
        if (only_ready && !ready)
            continue;
        jsonw_str(&w, n++ ? ",{\"name\":" : "{\"name\":");
        jsonw_quoted(&w, s->models[i].cfg->name);
        jsonw_printf(&w, ",\"version\":\"1\",\"state\":\"%s\"}", ready ? "READY" : "LOADING");
    }
    jsonw_str(&w, "]\n");
    reply_json(rep, 200, &w);
}

/* Triton's model repository extension: POST /v2/repository/index lists the models and
 * their state; POST /v2/repository/models/{m}/load reloads one from its file (V2_LOAD,
 * run by the main thread) when model_control allows it. Unloading is refused: balsa
 * serves every model of its configuration. */
static int route_repository(server *s, const char *method, const char *url, const char *body,
                            size_t len, v2_reply *rep, int *model)
{
    char pu[128];
    printable(url, strlen(url), pu, sizeof pu);
    if (!strcmp(url, "/v2/repository/index")) {
        if (method_ok(method, 1, rep, url))
            repository_index(s, body, len, rep);
        return V2_ANSWERED;
    }
    const char *name = url + strlen("/v2/repository/models/");
    size_t nlen = strcspn(name, "/");
    const char *action = name + nlen;
    if (strncmp(url, "/v2/repository/models/", strlen("/v2/repository/models/")) != 0 ||
        (strcmp(action, "/load") != 0 && strcmp(action, "/unload") != 0)) {
        reply_error(rep, 404,
                    "no such path: %s (repository paths: /v2/repository/index, "
                    "/v2/repository/models/{model}/load)",
                    pu);
        return V2_ANSWERED;
    }
    if (!method_ok(method, 1, rep, url))
        return V2_ANSWERED;
    char pn[80];
    int idx = find_model(s, name, nlen, pn, sizeof pn, rep);
    if (idx < 0)
        return V2_ANSWERED;
    if (!s->cfg.model_control) {
        reply_error(rep, 403,
                    "model control is off: set \"model_control\": true in the configuration "
                    "(or BALSA_MODEL_CONTROL=1) to allow loads over HTTP; SIGHUP reloads the "
                    "models whose files changed");
        return V2_ANSWERED;
    }
    if (!strcmp(action, "/unload")) {
        reply_error(rep, 400,
                    "unload: not supported: balsa serves every model of its configuration "
                    "(load reloads %s from its file)",
                    pn);
        return V2_ANSWERED;
    }
    if (!atomic_load(&s->models[idx].ready)) {
        reply_error(rep, 503, "model: \"%s\" is still loading", pn);
        return V2_ANSWERED;
    }
    *model = idx;
    return V2_LOAD;
}

int v2_parse_load(const char *body, size_t len, char *err, size_t errlen)
{
    if (blank(body, len))
        return 0;
    cJSON *root;
    int code = api_parse_json(body, len, &root, NULL, err, errlen);
    if (code)
        return code;
    if (!cJSON_IsObject(root))
        code = api_fail(err, errlen, 400, "body: must be a JSON object {\"parameters\"}");
    const cJSON *fields = code ? NULL : root, *f;
    cJSON_ArrayForEach(f, fields)
    {
        if (strcmp(f->string, "parameters") != 0) {
            code = api_fail(err, errlen, 400, "%.64s: unknown field (expected parameters)",
                            f->string);
        } else if (!cJSON_IsObject(f)) {
            code = api_fail(err, errlen, 400, "parameters: must be an object");
        } else if (f->child) {
            code = api_fail(err, errlen, 400,
                            "parameters.%.64s: not supported: balsa reloads the model from the "
                            "path in its configuration and takes no load parameters",
                            f->child->string);
        }
        if (code)
            break;
    }
    cJSON_Delete(root);
    return code;
}

int v2_route(server *s, const char *method, const char *url, const char *body, size_t len,
             v2_reply *rep, int *model)
{
    memset(rep, 0, sizeof *rep);
    *model = -1;
    if (!strcmp(url, "/openapi.json")) {
        if (!method_ok(method, 0, rep, url))
            return V2_ANSWERED;
        size_t n;
        const char *doc = v2_openapi(&n);
        rep->code = 200;
        rep->ctype = "application/json";
        rep->body = malloc(n ? n : 1);
        if (rep->body)
            memcpy(rep->body, doc, n);
        rep->len = n;
        return V2_ANSWERED;
    }
    if (!strcmp(url, "/v2") || !strcmp(url, "/v2/")) {
        if (method_ok(method, 0, rep, url))
            server_metadata(rep);
        return V2_ANSWERED;
    }
    if (!strcmp(url, "/v2/health/live")) {
        if (method_ok(method, 0, rep, url)) {
            jsonw w;
            jsonw_init(&w);
            jsonw_str(&w, "{\"live\":true}\n");
            reply_json(rep, 200, &w);
        }
        return V2_ANSWERED;
    }
    if (!strcmp(url, "/v2/health/ready")) {
        if (!method_ok(method, 0, rep, url))
            return V2_ANSWERED;
        if (server_ready(s)) {
            jsonw w;
            jsonw_init(&w);
            jsonw_str(&w, "{\"ready\":true}\n");
            reply_json(rep, 200, &w);
        } else {
            reply_error(rep, 503, "not ready: a model is loading or the server is draining");
        }
        return V2_ANSWERED;
    }
    if (!strcmp(url, "/v2/models/stats")) {
        if (method_ok(method, 0, rep, url))
            model_stats(s, -1, rep);
        return V2_ANSWERED;
    }
    if (!strncmp(url, "/v2/repository/", 15))
        return route_repository(s, method, url, body, len, rep, model);
    char pu[128];
    printable(url, strlen(url), pu, sizeof pu);
    if (strncmp(url, "/v2/models/", 11) != 0) {
        reply_error(rep, 404,
                    "no such path: %s (v2 paths: /v2, /v2/health/live, /v2/health/ready, "
                    "/v2/models/{model}[/versions/1][/ready|/config|/stats|/infer], "
                    "/v2/repository/index, /v2/repository/models/{model}/load)",
                    pu);
        return V2_ANSWERED;
    }
    /* /v2/models/{m}[/versions/{v}][/{action}] */
    const char *name = url + 11;
    size_t nlen = strcspn(name, "/");
    const char *rest = name + nlen;
    char pn[80];
    int idx = find_model(s, name, nlen, pn, sizeof pn, rep);
    if (idx < 0)
        return V2_ANSWERED;
    if (!strncmp(rest, "/versions/", 10)) {
        const char *ver = rest + 10;
        size_t vlen = strcspn(ver, "/");
        if (vlen != 1 || ver[0] != '1') {
            char pv[40];
            printable(ver, vlen, pv, sizeof pv);
            reply_error(rep, 404, "model %s: no version \"%s\" (balsa serves version 1 only)",
                        pn, pv);
            return V2_ANSWERED;
        }
        rest = ver + vlen;
    }
    enum { A_META, A_READY, A_CONFIG, A_STATS, A_INFER, A_GENERATE, A_STREAM } action;
    if (!*rest)
        action = A_META;
    else if (!strcmp(rest, "/ready"))
        action = A_READY;
    else if (!strcmp(rest, "/config"))
        action = A_CONFIG;
    else if (!strcmp(rest, "/stats"))
        action = A_STATS;
    else if (!strcmp(rest, "/infer"))
        action = A_INFER;
    else if (!strcmp(rest, "/generate"))
        action = A_GENERATE;
    else if (!strcmp(rest, "/generate_stream"))
        action = A_STREAM;
    else {
        reply_error(rep, 404,
                    "no such path: %s (model paths end in /ready, /config, /stats, /infer, "
                    "/generate or /generate_stream)",
                    pu);
        return V2_ANSWERED;
    }
    if (!method_ok(method, action == A_INFER || action == A_GENERATE || action == A_STREAM, rep,
                   url))
        return V2_ANSWERED;
    server_model *sm = &s->models[idx];
    if (action == A_STATS) {
        model_stats(s, idx, rep);
        return V2_ANSWERED;
    }
    if (action == A_INFER || action == A_GENERATE || action == A_STREAM) {
        *model = idx;
        return action == A_INFER ? V2_INFER : action == A_GENERATE ? V2_GENERATE
                                                                   : V2_GENERATE_STREAM;
    }
    server_loaded *l = server_model_acquire(sm);
    if (!l) {
        reply_error(rep, 503, "model: \"%s\" is still loading", sm->cfg->name);
        return V2_ANSWERED;
    }
    if (action == A_READY) {
        jsonw w;
        jsonw_init(&w);
        jsonw_str(&w, "{\"name\":");
        jsonw_quoted(&w, sm->cfg->name);
        jsonw_str(&w, ",\"ready\":true}\n");
        reply_json(rep, 200, &w);
    } else if (action == A_CONFIG) {
        model_config(sm, l, rep);
    } else {
        model_metadata(sm, l->info, rep);
    }
    server_loaded_release(l);
    return V2_ANSWERED;
}
