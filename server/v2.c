/* KServe v2 routing and the metadata, health, configuration and statistics answers (see
 * v2.h). Everything is rendered with jsonw; names from the URL appear in messages as
 * printable ASCII only, so an error body is always valid JSON. */
#include "v2.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
                  "\"binary_tensor_data\",\"statistics\",\"model_configuration\"]}\n");
    reply_json(rep, 200, &w);
}

static void model_metadata(server_model *sm, v2_reply *rep)
{
    const model_info *in = sm->info;
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

/* Triton's model configuration: dims exclude the batch dimension (max_batch_size > 0). */
static void model_config(server_model *sm, v2_reply *rep)
{
    const model_info *in = sm->info;
    const config_batching *b = &sm->cfg->batching;
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
                 "\"max_queue_delay_microseconds\":%d},"
                 "\"parameters\":{\"queue_capacity\":{\"string_value\":\"%d\"},"
                 "\"request_timeout_ms\":{\"string_value\":\"%d\"}}}\n",
                 in->output_size, b->max_batch_size, b->max_queue_delay_us, b->queue_capacity,
                 b->request_timeout_ms);
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

int v2_route(server *s, const char *method, const char *url, v2_reply *rep, int *model)
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
    char pu[128];
    printable(url, strlen(url), pu, sizeof pu);
    if (strncmp(url, "/v2/models/", 11) != 0) {
        reply_error(rep, 404,
                    "no such path: %s (v2 paths: /v2, /v2/health/live, /v2/health/ready, "
                    "/v2/models/{model}[/versions/1][/ready|/config|/stats|/infer])",
                    pu);
        return V2_ANSWERED;
    }
    /* /v2/models/{m}[/versions/{v}][/{action}] */
    const char *name = url + 11;
    size_t nlen = strcspn(name, "/");
    const char *rest = name + nlen;
    int idx = -1;
    for (int i = 0; i < s->nmodels; i++)
        if (strlen(s->models[i].cfg->name) == nlen &&
            !strncmp(s->models[i].cfg->name, name, nlen))
            idx = i;
    char pn[80];
    printable(name, nlen, pn, sizeof pn);
    if (idx < 0) {
        char names[512];
        size_t used = 0;
        names[0] = 0;
        for (int i = 0; i < s->nmodels && used < sizeof names; i++)
            used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                                     s->models[i].cfg->name);
        reply_error(rep, 404, "model: no model named \"%s\" (served: %s)", pn, names);
        return V2_ANSWERED;
    }
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
    if (!atomic_load(&sm->ready)) {
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
        model_config(sm, rep);
    } else {
        model_metadata(sm, rep);
    }
    return V2_ANSWERED;
}
