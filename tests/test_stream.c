/* Tests of streamed generation: the server-sent events that api_stream_event writes
 * add up to the answer the same request gets without "stream" (tokens, text cut before a
 * stop string, finish_reason), text that may begin a stop string is held back until
 * later tokens settle it, the refusals, and `balsa serve` end to end: POST /infer with
 * "stream": true and v2 generate_stream against their non-streamed answers, a client
 * that leaves in the middle, streaming or waiting for a generation answered at once (499,
 * the engine stops generating for it, the server keeps serving), SIGTERM while a stream runs (it is delivered whole), a deadline that passes
 * after the 200 (an error event), and the generation metrics. */
#include <cJSON.h>
#include <pthread.h>

#include "server/api.h"
#include "server_util.h"
#include "text_util.h"

#include "harness.h"

#define FORTUNES "models/fortunes/fortunes-b90.safetensors"

static balsa_backend *be;
static balsa_model *voc;
static api_model models[1];
static const api_limits lim = {400, 100000};

static int parse(const char *body, api_request *r, char *err, size_t errlen)
{
    return api_parse_request(body, strlen(body), models, 1, &lim, r, err, errlen);
}

/* What a stream's events carried, joined. */
typedef struct {
    int events;
    int tokens[512]; /* the first 512 */
    int ntokens;
    char text[4096];
    char finish[16];
    char model[32];
    int finals;       /* events with finish_reason */
    int held;         /* a non-final event carried text that a stop string begins */
    char error[256];
} joined;

/* Parses the events in buf[0..len) ("data: {...}" + blank line each) into j; returns -1
 * when something is not such an event. v2: the text field is "text_output". */
static int join_events(const char *buf, size_t len, int v2, joined *j)
{
    memset(j, 0, sizeof *j);
    size_t at = 0;
    while (at < len) {
        const char *end = strstr(buf + at, "\n\n");
        if (strncmp(buf + at, "data: ", 6) != 0 || !end)
            return -1;
        cJSON *o = cJSON_ParseWithLength(buf + at + 6, (size_t)(end - buf - at - 6));
        if (!o)
            return -1;
        j->events++;
        cJSON *e = cJSON_GetObjectItem(o, "error");
        if (cJSON_IsString(e))
            snprintf(j->error, sizeof j->error, "%s", e->valuestring);
        cJSON *t, *ts = cJSON_GetObjectItem(o, "tokens");
        cJSON_ArrayForEach(t, ts)
        {
            if (j->ntokens < 512)
                j->tokens[j->ntokens] = t->valueint;
            j->ntokens++;
        }
        cJSON *tx = cJSON_GetObjectItem(o, v2 ? "text_output" : "text");
        if (cJSON_IsString(tx))
            strncat(j->text, tx->valuestring, sizeof j->text - strlen(j->text) - 1);
        cJSON *f = cJSON_GetObjectItem(o, "finish_reason");
        if (cJSON_IsString(f)) {
            j->finals++;
            snprintf(j->finish, sizeof j->finish, "%s", f->valuestring);
        }
        cJSON *mn = cJSON_GetObjectItem(o, v2 ? "model_name" : "model");
        if (cJSON_IsString(mn))
            snprintf(j->model, sizeof j->model, "%s", mn->valuestring);
        cJSON_Delete(o);
        at = (size_t)(end - buf) + 2;
    }
    return 0;
}

/* Generates for the parsed request r, then renders its stream as the scheduler would:
 * one event per token, the last one final. Returns the events. */
static char *stream_of(api_request *r, size_t *len)
{
    if (api_alloc_outputs(r, model_get_info(voc)))
        return NULL;
    if (model_generate(voc, &r->seqs[0], &r->gen, r->gen_tokens[0], &r->gen_counts[0]) !=
        BALSA_OK)
        return NULL;
    return api_render_stream(r, "voc", len);
}

TEST(stream_events_add_up_to_the_answer)
{
    const char *bodies[] = {
        "{\"inputs\": [[1, 2, 3]], \"generate\": 30, \"stream\": true}",
        "{\"text\": \"the \", \"generate\": 40, \"stream\": true, \"stop\": [\"e\\u00e9\", "
        "\"hethe\"]}",
        "{\"text\": \"ab\", \"generate\": 40, \"stream\": true, \"stop\": \"bq\"}",
        "{\"text\": \"q\", \"generate\": 50, \"stream\": true, \"temperature\": 1.5, \"seed\": 7, "
        "\"stop\": [\"ta\", \"hh\", \"zq\"]}",
        "{\"text\": \"z\", \"generate\": 60, \"stream\": true, \"temperature\": 3, \"seed\": 11, "
        "\"stop\": \"\\nt\"}",
    };
    int stopped = 0;
    for (int b = 0; b < (int)(sizeof bodies / sizeof *bodies); b++) {
        api_request r, plain;
        char err[256];
        REQUIRE(parse(bodies[b], &r, err, sizeof err) == 0);
        REQUIRE(r.stream == 1);
        size_t len = 0;
        char *events = stream_of(&r, &len);
        REQUIRE(events);
        joined j;
        CHECK_MSG(join_events(events, len, 0, &j) == 0, "%s", events);
        /* the same request without streaming */
        REQUIRE(parse(bodies[b], &plain, err, sizeof err) == 0);
        plain.stream = 0;
        REQUIRE(api_alloc_outputs(&plain, model_get_info(voc)) == 0);
        REQUIRE(model_generate(voc, &plain.seqs[0], &plain.gen, plain.gen_tokens[0],
                               &plain.gen_counts[0]) == BALSA_OK);
        char *resp = api_render_response(&plain, "voc", model_get_info(voc), &len);
        cJSON *o = resp ? cJSON_Parse(resp) : NULL;
        cJSON *out = o ? cJSON_GetArrayItem(cJSON_GetObjectItem(o, "outputs"), 0) : NULL;
        REQUIRE(out);
        cJSON *toks = cJSON_GetObjectItem(out, "tokens");
        int same = cJSON_GetArraySize(toks) == j.ntokens && j.ntokens <= 512;
        for (int i = 0; same && i < j.ntokens; i++)
            same = cJSON_GetArrayItem(toks, i)->valueint == j.tokens[i];
        CHECK_MSG(same, "body %d: %d streamed tokens, %d in the answer", b, j.ntokens,
                  cJSON_GetArraySize(toks));
        const char *want = cJSON_GetObjectItem(out, "text")->valuestring;
        const char *reason = cJSON_GetObjectItem(out, "finish_reason")->valuestring;
        CHECK_MSG(!strcmp(j.text, want), "body %d: streamed \"%s\", answer \"%s\"", b, j.text,
                  want);
        CHECK_MSG(!strcmp(j.finish, reason) && j.finals == 1, "body %d: %s x%d vs %s", b,
                  j.finish, j.finals, reason);
        CHECK(!strcmp(j.model, "voc"));
        CHECK_MSG(j.events == j.ntokens, "body %d: %d events for %d tokens", b, j.events,
                  j.ntokens);
        stopped += !strcmp(reason, "stop");
        cJSON_Delete(o);
        free(resp);
        free(events);
        api_request_free(&r);
        api_request_free(&plain);
    }
    CHECK_MSG(stopped >= 3, "only %d of the requests met a stop string", stopped);
}

/* Tokens picked by hand: text that begins a stop string waits for the next token. */
TEST(stream_holds_back_the_start_of_a_stop_string)
{
    api_request r;
    char err[256];
    /* "a", " ", "t", "h", "q": "t" and "th" may begin the stop "the", and "h" the stop
     * "hq", which "q" completes: the final event releases "t" and ends before "hq" */
    REQUIRE(parse("{\"text\": \"a\", \"generate\": 8, \"stream\": true, \"stop\": [\"the\", "
                  "\"hq\"]}",
                  &r, err, sizeof err) == 0);
    REQUIRE(api_alloc_outputs(&r, model_get_info(voc)) == 0);
    const int ids[] = {0, 8, 5, 6, 10};
    const char *want[] = {"a", " ", "", "", "t"}; /* the last: final */
    api_stream st = {0};
    for (int c = 1; c <= 5; c++) {
        r.gen_tokens[0][c - 1] = ids[c - 1];
        r.gen_counts[0] = c;
        jsonw w;
        jsonw_init(&w);
        REQUIRE(api_stream_event(&r, "voc", 1, c == 5, &st, &w) == 0);
        joined j;
        REQUIRE(join_events(w.data, w.len, 1, &j) == 0);
        if (c < 5)
            CHECK_MSG(!strcmp(j.text, want[c - 1]) && j.ntokens == 1 && j.finals == 0,
                      "token %d: \"%s\" (%d tokens)", c, j.text, j.ntokens);
        else
            CHECK_MSG(!strcmp(j.text, want[4]) && !strcmp(j.finish, "stop") &&
                          !strcmp(j.model, "voc"),
                      "final: \"%s\" %s %s", j.text, j.finish, j.model);
        /* a second call with nothing new writes nothing */
        size_t before = w.len;
        if (c < 5)
            CHECK(api_stream_event(&r, "voc", 1, 0, &st, &w) == 0 && w.len == before);
        jsonw_free(&w);
    }
    CHECK_MSG(st.sent == 3, "sent %zu bytes (\"a t\" before \"hq\")", st.sent);
    api_stream_free(&st);
    api_request_free(&r);
}

TEST(stream_refusals)
{
    struct {
        const char *body, *words;
    } bad[] = {
        {"{\"text\": \"a\", \"stream\": true}", "stream: only with generate"},
        {"{\"text\": [\"a\", \"b\"], \"generate\": 3, \"stream\": true}",
         "stream: needs exactly one sequence, got 2"},
        {"{\"text\": \"a\", \"generate\": 3, \"stream\": 1}", "stream: must be true or false"},
        {"{\"text\": \"a\", \"generate\": 3, \"stream\": true, \"return_state\": true}",
         "stream: not with return_state"},
    };
    for (int i = 0; i < (int)(sizeof bad / sizeof *bad); i++) {
        api_request r;
        char err[256] = "";
        int code = parse(bad[i].body, &r, err, sizeof err);
        CHECK_MSG(code == 400 && strstr(err, bad[i].words), "%s -> %d %s", bad[i].body, code,
                  err);
        if (code == 0)
            api_request_free(&r);
    }
    api_request r;
    char err[256];
    REQUIRE(parse("{\"text\": \"a\", \"generate\": 3, \"stream\": false}", &r, err, sizeof err) ==
            0);
    CHECK(r.stream == 0);
    api_request_free(&r);
}

/* A streaming request through libcurl: the body as it came, its Content-Type, and how
 * many times curl handed data over. */
typedef struct {
    su_resp r;
    _Atomic int writes;
    size_t stop_after; /* > 0: abort the transfer once this many bytes came */
} streamed;

static size_t on_stream_body(char *p, size_t sz, size_t n, void *u)
{
    streamed *s = u;
    s->writes++;
    size_t got = su_on_body(p, sz, n, &s->r);
    if (s->stop_after && s->r.len >= s->stop_after)
        return 0;
    return got;
}

static void stream_request(int port, const char *path, const char *body, streamed *s)
{
    memset(&s->r, 0, sizeof s->r);
    s->writes = 0;
    CURL *h = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_stream_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, su_on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &s->r);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    s->r.cc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &s->r.code);
    curl_easy_cleanup(h);
    if (!s->r.body)
        s->r.body = calloc(1, 1);
}

typedef struct {
    int port;
    const char *body; /* NULL: a 3000-token sampled stream */
    streamed s;
} stream_job;

static void *stream_thread(void *p)
{
    stream_job *j = p;
    stream_request(j->port, "/infer",
                   j->body ? j->body
                           : "{\"text\": \"And the\", \"generate\": 3000, \"temperature\": 1, "
                             "\"seed\": 5, \"stream\": true}",
                   &j->s);
    return NULL;
}

/* The drain times out while two long generations run, one streamed and one answered at
 * once: both are cut at their next step and answered with finish_reason "cancelled",
 * and the server exits 0 (nothing admitted is lost). */
TEST(serve_drain_timeout_cuts_generations)
{
    const char *args[] = {"--model",          "fortunes=" FORTUNES, "--drain-delay-ms", "0",
                          "--drain-timeout-ms", "200", NULL};
    su_server sv;
    REQUIRE(su_start(&sv, args) == 0);
    stream_job a = {.port = sv.port,
                    .body = "{\"text\": \"And the\", \"generate\": 60000, \"stream\": true}"};
    stream_job b = {.port = sv.port, .body = "{\"text\": \"Love is\", \"generate\": 60000}"};
    pthread_t ta, tb;
    REQUIRE(pthread_create(&ta, NULL, stream_thread, &a) == 0);
    REQUIRE(pthread_create(&tb, NULL, stream_thread, &b) == 0);
    double t0 = su_now();
    while ((a.s.writes == 0 || su_metric(sv.port, "balsa_requests_in_flight") < 2) &&
           su_now() - t0 < 30)
        usleep(2000);
    int rc = su_stop(&sv, 60);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK_MSG(rc == 0, "exit %d (log %s)", rc, sv.log);
    joined j;
    CHECK_MSG(a.s.r.code == 200 && join_events(a.s.r.body, a.s.r.len, 0, &j) == 0 &&
                  j.finals == 1 && !strcmp(j.finish, "cancelled") && j.ntokens > 0 &&
                  j.ntokens < 60000,
              "stream: %ld, %d tokens, finish %s", a.s.r.code, j.ntokens, j.finish);
    cJSON *o = cJSON_Parse(b.s.r.body);
    cJSON *out = o ? cJSON_GetArrayItem(cJSON_GetObjectItem(o, "outputs"), 0) : NULL;
    cJSON *fr = out ? cJSON_GetObjectItem(out, "finish_reason") : NULL;
    int n = out ? cJSON_GetArraySize(cJSON_GetObjectItem(out, "tokens")) : 0;
    CHECK_MSG(b.s.r.code == 200 && cJSON_IsString(fr) && !strcmp(fr->valuestring, "cancelled") &&
                  n > 0 && n < 60000,
              "answered at once: %ld, %d tokens, %.80s", b.s.r.code, n, b.s.r.body);
    cJSON_Delete(o);
    free(a.s.r.body);
    free(b.s.r.body);
}

/* A stream whose deadline passes in the queue: its 200 is out already, so the failure is
 * a last event naming the deadline. One slot, taken by a long generation. */
TEST(serve_stream_deadline_is_an_error_event)
{
    const char *args[] = {"--model", "fortunes=" FORTUNES, "--max-batch-size", "1",
                          "--drain-delay-ms", "0", NULL};
    su_server sv;
    REQUIRE(su_start(&sv, args) == 0);
    stream_job job = {.port = sv.port};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, stream_thread, &job) == 0);
    double t0 = su_now();
    while (job.s.writes == 0 && su_now() - t0 < 30) /* the slot is taken */
        usleep(1000);
    streamed s = {0};
    stream_request(sv.port, "/infer",
                   "{\"text\": \"And the\", \"generate\": 5, \"stream\": true, "
                   "\"timeout_ms\": 1}",
                   &s);
    joined j;
    CHECK_MSG(s.r.code == 200 && join_events(s.r.body, s.r.len, 0, &j) == 0 && j.events == 1 &&
                  strstr(j.error, "timeout_ms: the deadline passed") && j.ntokens == 0,
              "%ld: %s", s.r.code, s.r.body);
    free(s.r.body);
    pthread_join(t, NULL);
    CHECK(job.s.r.code == 200);
    free(job.s.r.body);
    CHECK(su_stop(&sv, 30) == 0);
}

TEST(serve_streams_generation)
{
    const char *args[] = {"--model", "fortunes=" FORTUNES, "--drain-delay-ms", "0", NULL};
    su_server sv;
    REQUIRE(su_start(&sv, args) == 0);
    const char *plain = "{\"text\": \"And the\", \"generate\": 40, \"temperature\": 0.7, "
                        "\"seed\": 3, \"stop\": \"the \"}";
    const char *body = "{\"text\": \"And the\", \"generate\": 40, \"temperature\": 0.7, "
                       "\"seed\": 3, \"stop\": \"the \", \"stream\": true}";
    const char *gen_total = "balsa_generated_tokens_total{model=\"fortunes\"}";
    const char *ttft = "balsa_time_to_first_token_seconds_count{model=\"fortunes\"}";
    double tokens0 = su_metric(sv.port, gen_total), ttft0 = su_metric(sv.port, ttft);
    su_resp a;
    su_request(sv.port, "POST", "/infer", plain, strlen(plain), NULL, &a);
    REQUIRE(a.code == 200);
    cJSON *o = cJSON_Parse(a.body);
    cJSON *out = o ? cJSON_GetArrayItem(cJSON_GetObjectItem(o, "outputs"), 0) : NULL;
    REQUIRE(out);
    streamed s = {0};
    stream_request(sv.port, "/infer", body, &s);
    joined j;
    CHECK_MSG(s.r.code == 200 && !strcmp(s.r.ctype, "text/event-stream") &&
                  join_events(s.r.body, s.r.len, 0, &j) == 0,
              "%ld %s: %s", s.r.code, s.r.ctype, s.r.body);
    CHECK_MSG(!strcmp(j.text, cJSON_GetObjectItem(out, "text")->valuestring) &&
                  !strcmp(j.finish, cJSON_GetObjectItem(out, "finish_reason")->valuestring) &&
                  j.ntokens == cJSON_GetArraySize(cJSON_GetObjectItem(out, "tokens")),
              "streamed \"%s\" (%s, %d tokens), answer %s", j.text, j.finish, j.ntokens, a.body);
    CHECK_MSG(j.events > 1 && !strcmp(j.model, "fortunes"), "%d events", j.events);
    /* both generations are in /metrics: their tokens, and a time to the first token each */
    double tokens1 = su_metric(sv.port, gen_total), ttft1 = su_metric(sv.port, ttft);
    CHECK_MSG(tokens0 == 0 && tokens1 == 2.0 * j.ntokens && ttft0 == 0 && ttft1 == 2,
              "generated tokens %g -> %g (2 x %d), first-token count %g -> %g", tokens0,
              tokens1, j.ntokens, ttft0, ttft1);
    cJSON_Delete(o);
    free(a.body);
    free(s.r.body);

    /* Triton's generate_stream against generate */
    const char *v2 = "{\"text_input\": \"Love is\", \"parameters\": {\"max_tokens\": 30}}";
    su_request(sv.port, "POST", "/v2/models/fortunes/generate", v2, strlen(v2), NULL, &a);
    o = cJSON_Parse(a.body);
    REQUIRE(o && a.code == 200);
    stream_request(sv.port, "/v2/models/fortunes/generate_stream", v2, &s);
    CHECK_MSG(s.r.code == 200 && join_events(s.r.body, s.r.len, 1, &j) == 0 &&
                  !strcmp(j.text, cJSON_GetObjectItem(o, "text_output")->valuestring) &&
                  j.ntokens == 30 && j.events == 30 && !strcmp(j.model, "fortunes"),
              "%ld: %s", s.r.code, s.r.body);
    cJSON_Delete(o);
    free(a.body);
    free(s.r.body);

    /* a refused stream is a plain JSON error */
    stream_request(sv.port, "/infer", "{\"text\": [\"a\", \"b\"], \"generate\": 3, \"stream\": true}",
                   &s);
    CHECK_MSG(s.r.code == 400 && strstr(s.r.body, "stream: needs exactly one sequence"), "%ld %s",
              s.r.code, s.r.body);
    free(s.r.body);

    /* a client that leaves in the middle: 499, the engine stops generating for it (far
     * fewer steps run than the 60,000 tokens asked for), and the server goes on */
    const char *c499 = "balsa_inference_requests_total{model=\"fortunes\",code=\"499\"}";
    const char *steps = "balsa_batch_size_count{model=\"fortunes\"}";
    double before = su_metric(sv.port, c499), steps0 = su_metric(sv.port, steps);
    s.stop_after = 200;
    stream_request(sv.port, "/infer",
                   "{\"text\": \"And the\", \"generate\": 60000, \"stream\": true}", &s);
    CHECK_MSG(s.r.cc == CURLE_WRITE_ERROR, "curl %d after %zu bytes", (int)s.r.cc, s.r.len);
    free(s.r.body);
    double t1 = su_now();
    while (su_metric(sv.port, "balsa_requests_in_flight") != 0 && su_now() - t1 < 120)
        usleep(20000);
    double after = su_metric(sv.port, c499), ran = su_metric(sv.port, steps) - steps0;
    CHECK_MSG(after == (before < 0 ? 0 : before) + 1, "499s: %g -> %g", before, after);
    CHECK_MSG(ran > 0 && ran < 30000, "%g steps ran for the request that was left", ran);
    /* the same for a generation answered at once: the client gives up after 300 ms, the
     * server sees the closed socket while generating and stops */
    before = su_metric(sv.port, c499);
    steps0 = su_metric(sv.port, steps);
    CURL *h = curl_easy_init();
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/infer", sv.port);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, "{\"text\": \"And the\", \"generate\": 60000}");
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 300L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    CURLcode cc = curl_easy_perform(h);
    curl_easy_cleanup(h);
    CHECK_MSG(cc == CURLE_OPERATION_TIMEDOUT, "curl %d", (int)cc);
    t1 = su_now();
    while (su_metric(sv.port, "balsa_requests_in_flight") != 0 && su_now() - t1 < 120)
        usleep(20000);
    after = su_metric(sv.port, c499);
    ran = su_metric(sv.port, steps) - steps0;
    CHECK_MSG(after == before + 1, "499s: %g -> %g", before, after);
    CHECK_MSG(ran > 0 && ran < 30000, "%g steps ran for the generation that was left", ran);
    s.stop_after = 0;
    stream_request(sv.port, "/v2/models/fortunes/generate_stream", v2, &s);
    CHECK(s.r.code == 200 && join_events(s.r.body, s.r.len, 1, &j) == 0 && j.ntokens == 30);
    free(s.r.body);

    /* SIGTERM while a long stream runs: it still arrives whole, and the server exits 0 */
    stream_job job = {.port = sv.port};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, stream_thread, &job) == 0);
    double t0 = su_now();
    while (job.s.writes == 0 && su_now() - t0 < 30) /* its first event came: it runs */
        usleep(1000);
    int rc = su_stop(&sv, 60);
    pthread_join(t, NULL);
    CHECK_MSG(rc == 0, "exit %d", rc);
    CHECK_MSG(job.s.r.code == 200 && join_events(job.s.r.body, job.s.r.len, 0, &j) == 0 &&
                  j.finals == 1 && j.ntokens == 3000 && !j.error[0],
              "%ld (curl %d), %d tokens, %d finals, error \"%s\"", job.s.r.code, (int)job.s.r.cc,
              j.ntokens, j.finals,
              j.error);
    free(job.s.r.body);
}

int main(void)
{
    if (su_main_init(&be))
        return 1;
    voc = gen_model(be, MODEL_HEAD_LOG_SOFTMAX, 1, 1, 71);
    BALSA_ASSERT(voc);
    models[0] = (api_model){"voc", model_get_info(voc), voc};
    RUN(stream_events_add_up_to_the_answer);
    RUN(stream_holds_back_the_start_of_a_stop_string);
    RUN(stream_refusals);
    RUN(serve_streams_generation);
    RUN(serve_stream_deadline_is_an_error_event);
    RUN(serve_drain_timeout_cuts_generations);
    model_free(voc);
    be->ops->destroy(be);
    curl_global_cleanup();
    HARNESS_END();
}
