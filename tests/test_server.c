/* Integration tests of `balsa serve` over HTTP (libcurl): the server binary (env
 * BALSA_BIN) runs as a child process on a free loopback port with a small model this test
 * writes. Checked: answers equal the engine's (model_run in this process), every error
 * status with its JSON body and headers, 64 concurrent clients each getting exactly their
 * own answers with batches larger than 1, /metrics accepted by promtool, a full queue
 * answering 503 at once, deadlines answered 504, 160 keep-alive connections at once, and
 * SIGTERM under load losing no admitted request and exiting 0. Every child is killed on
 * every path. */
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>

#include <cJSON.h>

#include "engine_ref.h"
#include "server_util.h"
#include "zlib_util.h"

#define VOCAB 50
#define OUT 50

static char model_path[256];
static char model_arg[300]; /* "--model" value: test=<model_path> */
static balsa_backend *be;
static balsa_model *ref_model; /* the same file, run directly for the expected answers */

/* 1 when the body is a JSON error whose "error" string starts with prefix; else prints
 * the body and returns 0. */
static int error_is(const su_resp *r, const char *prefix)
{
    cJSON *j = cJSON_Parse(r->body);
    const cJSON *e = cJSON_GetObjectItem(j, "error");
    int ok = cJSON_IsString(e) && strncmp(e->valuestring, prefix, strlen(prefix)) == 0;
    if (!ok)
        printf("  body: %s", r->body);
    cJSON_Delete(j);
    return ok;
}

/* ------------------------------------------------------------------ model and answers */

static int write_model(void)
{
    snprintf(model_path, sizeof model_path, "/tmp/balsa_test_server_%d.safetensors", (int)getpid());
    snprintf(model_arg, sizeof model_arg, "test=%s", model_path);
    model_spec s = ref_token_spec("test", VOCAB, 16, 32, 2, OUT);
    char err[256];
    if (ref_write_random_model(model_path, &s, 8, 2, 0.5f, 77, err, sizeof err) != BALSA_OK) {
        printf("write_model: %s\n", err);
        return -1;
    }
    if (balsa_backend_cpu_create(1, &be) != BALSA_OK ||
        model_load(model_path, be, &ref_model, err, sizeof err) != BALSA_OK) {
        printf("load model: %s\n", err);
        return -1;
    }
    return 0;
}

/* Request body for one sequence, and the engine's last-step output for it. */
static void make_seq(unsigned long long *rng, int len, int32_t *tok, char *body, size_t blen)
{
    size_t n = (size_t)snprintf(body, blen, "{\"model\": \"test\", \"inputs\": [[");
    for (int t = 0; t < len; t++) {
        tok[t] = (int32_t)(h_rand_u64(rng) % VOCAB);
        n += (size_t)snprintf(body + n, blen - n, t ? ",%d" : "%d", tok[t]);
    }
    snprintf(body + n, blen - n, "]]}");
}

/* model_run is not thread-safe per model, and client threads call this. */
static pthread_mutex_t ref_mu = PTHREAD_MUTEX_INITIALIZER;

static void expected_last(const int32_t *tok, int len, float *out)
{
    engine_seq q = {.tokens = tok, .len = len};
    float *o[1] = {out};
    pthread_mutex_lock(&ref_mu);
    BALSA_ASSERT(model_run(ref_model, &q, 1, 0, o) == BALSA_OK);
    pthread_mutex_unlock(&ref_mu);
}

/* Compares a /infer answer holding one last-step output with want; returns 1 when equal
 * within 1e-5 (batching may change the summation order of no number here, but a GPU
 * backend could round differently). */
static int outputs_match(const char *body, int seq, const float *want, int n)
{
    cJSON *j = cJSON_Parse(body);
    const cJSON *o = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "outputs"), seq);
    int ok = cJSON_GetArraySize(o) == n;
    for (int i = 0; ok && i < n; i++) {
        double v = cJSON_GetArrayItem(o, i)->valuedouble;
        ok = fabs(v - want[i]) <= 1e-5 * (fabs(want[i]) > 1 ? fabs(want[i]) : 1);
    }
    cJSON_Delete(j);
    return ok;
}

static su_server main_srv;

TEST(health_and_models)
{
    su_resp r;
    su_request_str(main_srv.port, "GET", "/healthz", NULL, NULL, &r);
    CHECK(r.code == 200 && strstr(r.body, "\"ok\""));
    CHECK(strcmp(r.ctype, "application/json") == 0);
    free(r.body);
    /* HEAD: the headers of GET, no body */
    su_request_str(main_srv.port, "HEAD", "/healthz", NULL, NULL, &r);
    CHECK_MSG(r.cc == CURLE_OK && r.code == 200 && r.len == 0 &&
                  strcmp(r.ctype, "application/json") == 0,
              "HEAD /healthz: curl %d, status %ld, %zu body bytes", r.cc, r.code, r.len);
    free(r.body);
    su_request_str(main_srv.port, "GET", "/readyz", NULL, NULL, &r);
    CHECK(r.code == 200 && strstr(r.body, "\"ready\""));
    free(r.body);
    /* 12 KB of headers (large cookies, tracing headers) fit the connection's memory pool,
     * which http.c sets to 16 KiB */
    static char big[12032];
    memcpy(big, "X-Big: ", 7);
    memset(big + 7, 'a', sizeof big - 8);
    CURL *h = curl_easy_init();
    const char *body = "{\"inputs\": [[1, 2]]}";
    su_request_on(h, main_srv.port, "POST", "/infer", body, strlen(body), "application/json",
                  big, &r);
    curl_easy_cleanup(h);
    CHECK_MSG(r.code == 200, "12 KB header: %ld %s", r.code, r.body);
    free(r.body);
    su_request_str(main_srv.port, "GET", "/models", NULL, NULL, &r);
    REQUIRE(r.code == 200);
    cJSON *j = cJSON_Parse(r.body);
    const cJSON *m = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "models"), 0);
    CHECK(m && strcmp(cJSON_GetObjectItem(m, "name")->valuestring, "test") == 0);
    CHECK(m && cJSON_GetObjectItem(m, "vocab_size")->valueint == VOCAB);
    CHECK(m && cJSON_GetObjectItem(m, "output_size")->valueint == OUT);
    CHECK(m && cJSON_GetObjectItem(m, "hidden_size")->valueint == 32);
    CHECK(m && cJSON_GetObjectItem(m, "num_layers")->valueint == 2);
    CHECK(m && cJSON_GetObjectItem(m, "bank")->valueint == 8);
    CHECK(m && fabs(cJSON_GetObjectItem(m, "sparsity")->valuedouble - 0.75) < 1e-6);
    CHECK(m && cJSON_GetObjectItem(cJSON_GetObjectItem(m, "batching"), "max_batch_size")->valueint == 16);
    cJSON_Delete(j);
    free(r.body);
}

TEST(answers_equal_engine)
{
    unsigned long long rng = 5;
    int32_t tok[3][40];
    int lens[3] = {1, 17, 40};
    float want[3][OUT];
    char body[4096];
    for (int i = 0; i < 3; i++) {
        make_seq(&rng, lens[i], tok[i], body, sizeof body);
        expected_last(tok[i], lens[i], want[i]);
        su_resp r;
        su_request_str(main_srv.port, "POST", "/infer", body, "application/json", &r);
        CHECK_MSG(r.code == 200 && outputs_match(r.body, 0, want[i], OUT), "%ld %s", r.code, r.body);
        free(r.body);
    }
    /* several sequences in one request (spread over slots), curl's default content type,
     * model omitted (one model served), and every step */
    size_t n = (size_t)snprintf(body, sizeof body, "{\"output\": \"all\", \"inputs\": [");
    for (int i = 0; i < 3; i++) {
        n += (size_t)snprintf(body + n, sizeof body - n, i ? ",[" : "[");
        for (int t = 0; t < lens[i]; t++)
            n += (size_t)snprintf(body + n, sizeof body - n, t ? ",%d" : "%d", tok[i][t]);
        n += (size_t)snprintf(body + n, sizeof body - n, "]");
    }
    snprintf(body + n, sizeof body - n, "]}");
    su_resp r;
    su_request_str(main_srv.port, "POST", "/infer", body, "application/x-www-form-urlencoded", &r);
    REQUIRE(r.code == 200);
    cJSON *j = cJSON_Parse(r.body);
    const cJSON *outs = cJSON_GetObjectItem(j, "outputs");
    CHECK(cJSON_GetArraySize(outs) == 3);
    for (int i = 0; i < 3; i++) {
        const cJSON *steps = cJSON_GetArrayItem(outs, i);
        CHECK(cJSON_GetArraySize(steps) == lens[i]);
        const cJSON *last = cJSON_GetArrayItem(steps, lens[i] - 1);
        int ok = cJSON_GetArraySize(last) == OUT;
        for (int k = 0; ok && k < OUT; k++)
            ok = fabs(cJSON_GetArrayItem(last, k)->valuedouble - want[i][k]) <= 1e-5;
        CHECK_MSG(ok, "sequence %d, all steps: last step differs", i);
    }
    cJSON_Delete(j);
    free(r.body);
    /* top_k */
    make_seq(&rng, 9, tok[0], body, sizeof body);
    expected_last(tok[0], 9, want[0]);
    n = strlen(body);
    snprintf(body + n - 1, sizeof body - n + 1, ", \"top_k\": 5}");
    su_request_str(main_srv.port, "POST", "/infer", body, NULL, &r);
    REQUIRE(r.code == 200);
    j = cJSON_Parse(r.body);
    const cJSON *o = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "outputs"), 0);
    int idx[5];
    float val[5];
    engine_topk(want[0], OUT, 5, idx, val);
    const cJSON *ix = cJSON_GetObjectItem(o, "indices");
    REQUIRE(cJSON_GetArraySize(ix) == 5);
    for (int k = 0; k < 5; k++)
        CHECK(cJSON_GetArrayItem(ix, k)->valueint == idx[k]);
    cJSON_Delete(j);
    free(r.body);
}

TEST(error_statuses)
{
    su_resp r;
    su_request_str(main_srv.port, "POST", "/infer", "{\"inputs\": [[1, 2]", "application/json", &r);
    CHECK(r.code == 400 && error_is(&r, "body: malformed JSON"));
    free(r.body);
    su_request_str(main_srv.port, "POST", "/infer", "{\"inputs\": [[1, 2, 50]]}", NULL, &r);
    CHECK(r.code == 400 && error_is(&r, "inputs[0][2]: token id 50 out of range [0, 50)"));
    free(r.body);
    su_request_str(main_srv.port, "POST", "/infer", "{\"inputs\": [[1]], \"top_k\": 51}", NULL, &r);
    CHECK(r.code == 400 && error_is(&r, "top_k: must be an integer in [1, 50]"));
    free(r.body);
    su_request_str(main_srv.port, "POST", "/infer", "{\"model\": \"other\", \"inputs\": [[1]]}", NULL, &r);
    CHECK(r.code == 404 && error_is(&r, "model: no model named \"other\""));
    free(r.body);
    su_request_str(main_srv.port, "GET", "/nowhere", NULL, NULL, &r);
    CHECK(r.code == 404 && error_is(&r, "no such path: /nowhere"));
    free(r.body);
    su_request_str(main_srv.port, "GET", "/infer", NULL, NULL, &r);
    CHECK(r.code == 405 && strcmp(r.allow, "POST") == 0 && error_is(&r, "method GET not allowed"));
    free(r.body);
    su_request_str(main_srv.port, "DELETE", "/healthz", NULL, NULL, &r);
    CHECK(r.code == 405 && strcmp(r.allow, "GET, HEAD") == 0);
    free(r.body);
    su_request_str(main_srv.port, "POST", "/infer", "{\"inputs\": [[1]]}", "text/plain", &r);
    CHECK(r.code == 415 && error_is(&r, "Content-Type: \"text/plain\" is not JSON"));
    free(r.body);
    /* 413: the body limit is 300000 here; 400 kB is refused while it streams in */
    size_t big = 400000;
    char *body = malloc(big + 1);
    memset(body, ' ', big);
    body[big] = 0;
    body[0] = '{';
    body[big - 1] = '}';
    su_request_str(main_srv.port, "POST", "/infer", body, NULL, &r);
    CHECK(r.code == 413 && error_is(&r, "body: larger than the limit of 300000 bytes"));
    free(r.body);
    /* the same without a Content-Length (chunked): refused as it streams in */
    CURL *h = curl_easy_init();
    struct curl_slist *hd = curl_slist_append(NULL, "Transfer-Encoding: chunked");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    memset(&r, 0, sizeof r);
    char url[96];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/infer", main_srv.port);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, su_on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
    r.cc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.code);
    CHECK_MSG(r.cc == CURLE_OK && r.code == 413, "chunked: curl %d, status %ld", r.cc, r.code);
    free(r.body);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    free(body);
    /* garbage and odd bodies never crash it */
    const char *odd[] = {"", "null", "[]", "{\"inputs\": [[[[[[[[[[[[1]]]]]]]]]]]]}", "\x01\x02\xff",
                         "{\"inputs\": [[1e400]]}", "{\"inputs\": [[1]], \"timeout_ms\": 1e300}"};
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
        su_request_str(main_srv.port, "POST", "/infer", odd[i], NULL, &r);
        CHECK_MSG(r.code == 400, "odd body %zu: %ld", i, r.code);
        free(r.body);
    }
    su_request_str(main_srv.port, "GET", "/healthz", NULL, NULL, &r);
    CHECK(r.code == 200);
    free(r.body);
}

static int wait_metric(int port, const char *series, double want);

/* A client that leaves in the middle of its body is counted as 499 (client closed), not
 * as a server error, and the server goes on serving. */
TEST(client_gone_is_499_not_500)
{
    const char *c499 = "balsa_http_requests_total{handler=\"/infer\",code=\"499\"}";
    const char *c500 = "balsa_http_requests_total{handler=\"/infer\",code=\"500\"}";
    su_resp r;
    su_request_str(main_srv.port, "GET", "/metrics", NULL, NULL, &r);
    double before499 = su_metric_value(r.body, c499), before500 = su_metric_value(r.body, c500);
    free(r.body);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)main_srv.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    const char *part = "POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                       "Content-Length: 100\r\n\r\n{\"inputs\": [[1,";
    CHECK(write(fd, part, strlen(part)) == (ssize_t)strlen(part));
    usleep(50000); /* let the server read the headers and start the request */
    close(fd);
    CHECK(wait_metric(main_srv.port, c499, before499 + 1));
    su_request_str(main_srv.port, "GET", "/metrics", NULL, NULL, &r);
    CHECK(su_metric_value(r.body, c500) == before500);
    free(r.body);
    su_request_str(main_srv.port, "GET", "/healthz", NULL, NULL, &r);
    CHECK(r.code == 200);
    free(r.body);
}

/* ---- 64 concurrent clients */

#define NCLIENTS 64
#define PER_CLIENT 6

typedef struct {
    int id, port, ok, bad;
} client_arg;

static void *client_main(void *p)
{
    client_arg *a = p;
    unsigned long long rng = 1000 + (unsigned long long)a->id;
    CURL *h = curl_easy_init();
    for (int k = 0; k < PER_CLIENT; k++) {
        int len = 1 + (int)(h_rand_u64(&rng) % 24);
        int32_t tok[32];
        char body[512];
        float want[OUT];
        make_seq(&rng, len, tok, body, sizeof body);
        expected_last(tok, len, want);
        su_resp r;
        su_request_on(h, a->port, "POST", "/infer", body, strlen(body), "application/json", NULL,
                      &r);
        if (r.code == 200 && outputs_match(r.body, 0, want, OUT))
            a->ok++;
        else
            a->bad++;
        free(r.body);
    }
    curl_easy_cleanup(h);
    return NULL;
}

/* Runs fn on n threads, each given its own client_arg {i, port}; joins every thread that
 * started and sums their ok and bad counts. Returns how many started: n, or fewer when
 * pthread_create failed. */
static int run_clients(void *(*fn)(void *), int n, int port, int *ok, int *bad)
{
    pthread_t *th = malloc(sizeof *th * n);
    client_arg *args = malloc(sizeof *args * n);
    BALSA_ASSERT(th && args);
    int started = 0;
    while (started < n) {
        args[started] = (client_arg){started, port, 0, 0};
        if (pthread_create(&th[started], NULL, fn, &args[started]) != 0)
            break;
        started++;
    }
    *ok = *bad = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        *ok += args[i].ok;
        *bad += args[i].bad;
    }
    free(th);
    free(args);
    return started;
}

TEST(concurrent_clients_get_their_own_answers)
{
    int ok, bad;
    REQUIRE(run_clients(client_main, NCLIENTS, main_srv.port, &ok, &bad) == NCLIENTS);
    CHECK_MSG(bad == 0 && ok == NCLIENTS * PER_CLIENT, "%d right, %d wrong", ok, bad);
    su_resp r;
    su_request_str(main_srv.port, "GET", "/metrics", NULL, NULL, &r);
    REQUIRE(r.code == 200);
    double count = su_metric_value(r.body, "balsa_batch_size_count{model=\"test\"}");
    double one = su_metric_value(r.body, "balsa_batch_size_bucket{model=\"test\",le=\"1\"}");
    CHECK_MSG(count > 0 && count - one > 0, "batch size histogram: %g steps, %g of size 1", count,
              one);
    free(r.body);
}

TEST(metrics_exposition)
{
    su_resp r;
    su_request_str(main_srv.port, "GET", "/metrics", NULL, NULL, &r);
    REQUIRE(r.code == 200);
    CHECK(strcmp(r.ctype, "text/plain; version=0.0.4; charset=utf-8") == 0);
    CHECK(su_metric_value(r.body, "balsa_inference_requests_total{model=\"test\",code=\"200\"}") >= 64);
    CHECK(su_metric_value(r.body, "balsa_inference_requests_total{model=\"test\",code=\"400\"}") >= 1);
    CHECK(su_metric_value(r.body, "balsa_http_requests_total{handler=\"/infer\",code=\"413\"}") >= 1);
    CHECK(su_metric_value(r.body, "balsa_request_duration_seconds_bucket{model=\"test\",le=\"+Inf\"}") ==
          su_metric_value(r.body, "balsa_request_duration_seconds_count{model=\"test\"}"));
    CHECK(su_metric_value(r.body, "balsa_model_ready{model=\"test\"}") == 1);
    CHECK(su_metric_value(r.body, "process_resident_memory_bytes") > 0);
    CHECK(strstr(r.body, "balsa_build_info{version=") != NULL);
    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        free(r.body);
        SKIP("promtool not installed (tools/deps.sh installs prometheus)");
    }
    char path[] = "/tmp/balsa_test_metrics_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    CHECK(write(fd, r.body, r.len) == (ssize_t)r.len);
    close(fd);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s", path);
    CHECK_MSG(system(cmd) == 0, "promtool complained about /metrics");
    unlink(path);
    free(r.body);
}

/* ---- 160 keep-alive connections at once */

#define NKEEP 160

static void *keepalive_main(void *p)
{
    client_arg *a = p;
    CURL *h = curl_easy_init();
    for (int k = 0; k < 3; k++) {
        su_resp r;
        su_request_on(h, a->port, "POST", "/infer", "{\"inputs\": [[3, 1, 4, 1, 5]]}", 29, NULL,
                      NULL, &r);
        if (r.code == 200)
            a->ok++;
        else
            a->bad++;
        free(r.body);
        usleep(100000); /* stay connected, idle, while the others connect */
    }
    curl_easy_cleanup(h);
    return NULL;
}

TEST(many_keepalive_connections)
{
    int ok, bad;
    REQUIRE(run_clients(keepalive_main, NKEEP, main_srv.port, &ok, &bad) == NKEEP);
    CHECK_MSG(ok == NKEEP * 3 && bad == 0, "%d answered, %d failed", ok, bad);
}

/* ---- a long request does not hold up a short one (step-level batching) */

typedef struct {
    int port;
    int len;
    int timeout_ms;
    long code;
    atomic_int done;
} long_arg;

static void *long_main(void *p)
{
    long_arg *a = p;
    size_t cap = (size_t)a->len * 4 + 128;
    char *body = malloc(cap);
    size_t n = (size_t)snprintf(body, cap, "{\"inputs\": [[");
    for (int t = 0; t < a->len; t++)
        n += (size_t)snprintf(body + n, cap - n, t ? ",%d" : "%d", t % VOCAB);
    snprintf(body + n, cap - n, "]]}");
    su_resp r;
    CURL *h = curl_easy_init();
    su_request_on(h, a->port, "POST", "/infer", body, strlen(body), NULL, NULL, &r);
    a->code = r.code;
    atomic_store(&a->done, 1);
    curl_easy_cleanup(h);
    free(r.body);
    free(body);
    return NULL;
}

/* Waits until the named gauge in /metrics reaches want (at most 10 s). */
/* The steps the server's model has executed so far. */
static double steps_done(int port)
{
    su_resp r;
    su_request_str(port, "GET", "/metrics", NULL, NULL, &r);
    double v = su_metric_value(r.body, "balsa_batch_size_count{model=\"test\"}");
    free(r.body);
    return v;
}

/* Waits until a long request is running: the step count grows past what it was before
 * (the in-flight gauge alone can still count a finished request whose completion has
 * not been recorded yet). */
static int wait_running(int port, double steps_before)
{
    return wait_metric(port, "balsa_batch_size_count{model=\"test\"}", steps_before + 200);
}

static int wait_metric(int port, const char *series, double want)
{
    double t0 = su_now();
    while (su_now() - t0 < 10) {
        su_resp r;
        su_request_str(port, "GET", "/metrics", NULL, NULL, &r);
        double v = su_metric_value(r.body, series);
        free(r.body);
        if (v >= want)
            return 1;
        usleep(2000);
    }
    return 0;
}

TEST(short_request_overtakes_long_one)
{
    long_arg la = {main_srv.port, 60000, 0, 0, 0};
    pthread_t th;
    double before = steps_done(main_srv.port);
    REQUIRE(pthread_create(&th, NULL, long_main, &la) == 0);
    CHECK(wait_running(main_srv.port, before));
    su_resp r;
    su_request_str(main_srv.port, "POST", "/infer", "{\"inputs\": [[7, 8]]}", NULL, &r);
    CHECK(r.code == 200);
    CHECK_MSG(!atomic_load(&la.done), "the short request waited for the long one");
    free(r.body);
    pthread_join(th, NULL);
    CHECK(la.code == 200);
}

/* ---- a tiny queue: 503 when full, 504 past the deadline */

TEST(full_queue_and_deadline)
{
    su_server sp;
    const char *extra[] = {"--model", model_arg, "--max-batch-size", "1", "--queue-capacity", "2",
                           "--access-log", "false", "--max-request-steps", "4000000",
                           "--body-limit", "16000000", NULL};
    REQUIRE(su_start(&sp, extra) == 0);
    /* "Long" must mean long on this machine and build (sanitizers, SIMD or not): time one
     * request and size the long ones to take about 1.5 s. */
    long_arg probe = {sp.port, 20000, 0, 0, 0};
    double t0 = su_now();
    long_main(&probe);
    double t = su_now() - t0;
    CHECK(probe.code == 200);
    int len = t >= 1.5 ? 20000 : (int)(20000 * 1.5 / (t > 0.01 ? t : 0.01));
    if (len > 2000000)
        len = 2000000;
    long_arg la[3];
    pthread_t th[3];
    /* one long request runs, then two wait in the queue */
    for (int i = 0; i < 3; i++) {
        la[i] = (long_arg){sp.port, len, 0, 0, 0};
        double before = steps_done(sp.port);
        REQUIRE(pthread_create(&th[i], NULL, long_main, &la[i]) == 0);
        if (i == 0)
            CHECK(wait_running(sp.port, before));
    }
    CHECK(wait_metric(sp.port, "balsa_queue_depth{model=\"test\"}", 2));
    t0 = su_now();
    su_resp r;
    su_request_str(sp.port, "POST", "/infer", "{\"inputs\": [[1]]}", NULL, &r);
    double took = su_now() - t0;
    CHECK(r.code == 503 && strcmp(r.retry_after, "1") == 0 && error_is(&r, "model queue is full"));
    CHECK_MSG(!atomic_load(&la[0].done), "the 503 came only after %.3f s", took);
    free(r.body);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CHECK(la[i].code == 200);
    }
    /* a request that cannot start within its timeout gets 504 without running */
    la[0] = (long_arg){sp.port, len, 0, 0, 0};
    double before = steps_done(sp.port);
    REQUIRE(pthread_create(&th[0], NULL, long_main, &la[0]) == 0);
    CHECK(wait_running(sp.port, before));
    su_request_str(sp.port, "POST", "/infer", "{\"inputs\": [[1]], \"timeout_ms\": 5}", NULL, &r);
    CHECK(r.code == 504 && error_is(&r, "timeout_ms: the deadline passed"));
    free(r.body);
    pthread_join(th[0], NULL);
    su_request_str(sp.port, "GET", "/metrics", NULL, NULL, &r);
    CHECK(su_metric_value(r.body, "balsa_rejected_requests_total{reason=\"queue_full\"}") == 1);
    CHECK(su_metric_value(r.body, "balsa_rejected_requests_total{reason=\"deadline_exceeded\"}") == 1);
    free(r.body);
    CHECK(su_stop(&sp, 20) == 0);
}

/* ---- SIGTERM under load */

typedef struct {
    int port, id;
    atomic_int *stop;
    int n200, n503, refused, other;
} drain_arg;

static void *drain_client(void *p)
{
    drain_arg *a = p;
    CURL *h = curl_easy_init();
    unsigned long long rng = 7 + (unsigned long long)a->id;
    while (!atomic_load(a->stop)) {
        int32_t tok[300];
        char body[2048];
        make_seq(&rng, 100 + (int)(h_rand_u64(&rng) % 150), tok, body, sizeof body);
        su_resp r;
        su_request_on(h, a->port, "POST", "/infer", body, strlen(body), NULL, NULL, &r);
        free(r.body);
        if (r.cc != CURLE_OK) {
            /* Refused, or reset in the listen backlog when the listener closed: not
             * admitted, which the server's log confirms (below). Anything else is lost. */
            if (r.cc == CURLE_COULDNT_CONNECT || r.cc == CURLE_SEND_ERROR ||
                r.cc == CURLE_RECV_ERROR || r.cc == CURLE_GOT_NOTHING)
                a->refused++;
            else {
                a->other++;
                printf("  client %d: curl error %d (%s)\n", a->id, r.cc, curl_easy_strerror(r.cc));
            }
            break;
        }
        if (r.code == 200)
            a->n200++;
        else if (r.code == 503) {
            a->n503++;
            break; /* told to go elsewhere */
        } else {
            a->other++;
            printf("  client %d: status %ld\n", a->id, r.code);
            break;
        }
    }
    curl_easy_cleanup(h);
    return NULL;
}

/* A thread of the server that does not block SIGTERM, other than the main one (a thread
 * a library started before serve_main blocked the signals: OpenBLAS's pool); 0 when there
 * is none. */
static pid_t unblocked_thread(pid_t pid)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    DIR *d = opendir(dir);
    pid_t found = 0;
    struct dirent *e;
    while (d && !found && (e = readdir(d))) {
        pid_t tid = (pid_t)atoi(e->d_name);
        if (tid <= 0 || tid == pid)
            continue;
        char path[128], line[256];
        snprintf(path, sizeof path, "%s/%d/status", dir, (int)tid);
        FILE *f = fopen(path, "r");
        while (f && fgets(line, sizeof line, f)) {
            unsigned long long blocked;
            if (sscanf(line, "SigBlk: %llx", &blocked) == 1 &&
                !(blocked & (1ull << (SIGTERM - 1))))
                found = tid;
        }
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
    return found;
}

/* SIGTERM delivered to a thread that does not block it (the kernel may pick one whenever
 * the main thread is not waiting for signals, as during a reload) still drains and exits
 * 0: before, the default action ended the process at once, mid-request. */
TEST(sigterm_on_any_thread_drains)
{
    const char *args[] = {"--model", model_arg, "--drain-delay-ms", "0", NULL};
    su_server sv;
    REQUIRE(su_start(&sv, args) == 0);
    pid_t tid = unblocked_thread(sv.pid);
    if (!tid) {
        su_stop(&sv, 20);
        SKIP("every thread of the server blocks SIGTERM here: nothing to deliver it to");
    }
    REQUIRE(syscall(SYS_tgkill, sv.pid, tid, SIGTERM) == 0);
    int rc = su_wait(&sv, 20);
    CHECK_MSG(rc == 0, "exit status %d after SIGTERM to thread %d (log %s)", rc, (int)tid,
              sv.log);
    FILE *f = fopen(sv.log, "r");
    char buf[8192] = "";
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    buf[n] = 0;
    if (f)
        fclose(f);
    CHECK_MSG(strstr(buf, "balsa: drained in"), "%s", buf);
}

TEST(sigterm_drains_without_losing_requests)
{
    su_server sp;
    const char *extra[] = {"--model", model_arg, "--drain-delay-ms", "300", "--drain-timeout-ms",
                           "10000", NULL};
    REQUIRE(su_start(&sp, extra) == 0);
    atomic_int stop = 0;
    enum { N = 16 };
    drain_arg a[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        a[i] = (drain_arg){sp.port, i, &stop, 0, 0, 0, 0};
        REQUIRE(pthread_create(&th[i], NULL, drain_client, &a[i]) == 0);
    }
    usleep(300000);
    kill(sp.pid, SIGTERM);
    /* readiness turns 503 at once while requests are still served */
    usleep(50000);
    su_resp r;
    su_request_str(sp.port, "GET", "/readyz", NULL, NULL, &r);
    CHECK_MSG(r.code == 503, "readyz during drain: %ld", r.code);
    free(r.body);
    int rc = su_wait(&sp, 20);
    atomic_store(&stop, 1);
    int n200 = 0, n503 = 0, refused = 0, other = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        n200 += a[i].n200;
        n503 += a[i].n503;
        refused += a[i].refused;
        other += a[i].other;
    }
    CHECK_MSG(rc == 0, "exit status %d (log %s)", rc, sp.log);
    CHECK_MSG(other == 0, "%d requests lost (200: %d, 503: %d, refused: %d)", other, n200, n503,
              refused);
    CHECK(n200 > 0);
    /* Every request the server answered reached its client: the access log's /infer lines
     * match the clients' counts and none says "not delivered". */
    FILE *f = fopen(sp.log, "r");
    REQUIRE(f);
    char line[512];
    int s200 = 0, s503 = 0, undelivered = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "(not delivered)"))
            undelivered++;
        else if (!strncmp(line, "POST /infer 200 ", 16))
            s200++;
        else if (!strncmp(line, "POST /infer 503 ", 16))
            s503++;
    }
    fclose(f);
    CHECK_MSG(undelivered == 0 && s200 == n200 && s503 == n503,
              "server answered 200 x %d, 503 x %d, %d not delivered; clients got 200 x %d, 503 x %d",
              s200, s503, undelivered, n200, n503);
}

TEST(bad_config_stops_startup)
{
    const char *bin = getenv("BALSA_BIN");
    char path[] = "/tmp/balsa_test_config_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    const char *text = "{\n  \"port\": 8080,\n  \"max_batch_size\": 0\n}\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s serve --config %s 2>&1", bin, path);
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    char out[1024] = "";
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int st = pclose(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    CHECK_MSG(strstr(out, path) && strstr(out, "max_batch_size: must be an integer in [1, 4096]"),
              "%s", out);
    unlink(path);
}

/* Runs `balsa run` with body on stdin; returns the exit status, stdout in out. */
static int run_cli(const char *body, char *out, size_t outlen)
{
    char in[] = "/tmp/balsa_test_run_XXXXXX";
    int fd = mkstemp(in);
    if (fd < 0)
        return -1;
    if (write(fd, body, strlen(body)) != (ssize_t)strlen(body)) {
        close(fd);
        return -1;
    }
    close(fd);
    char cmd[768];
    snprintf(cmd, sizeof cmd, "%s run %s --threads 1 < %s", getenv("BALSA_BIN"), model_path, in);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, outlen - 1, p) : 0;
    out[n] = 0;
    int st = p ? pclose(p) : -1;
    unlink(in);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* 1 when every character of s is a lower-case hex digit and it has n of them. */
static int is_hex(const char *s, size_t n)
{
    return strlen(s) == n && strspn(s, "0123456789abcdef") == n;
}

/* X-Request-Id: the client's echoed (also on a stream and an error), one made by the server
 * when there is none or it is unusable, and the id in the access log line. */
TEST(request_ids)
{
    int port = main_srv.port;
    CURL *h = curl_easy_init();
    su_resp r;
    const char *body = "{\"inputs\": [[1, 2]]}";
    su_request_on(h, port, "POST", "/infer", body, strlen(body), "application/json",
                  "X-Request-Id: trace-7f3a/42", &r);
    CHECK(r.code == 200 && !strcmp(r.request_id, "trace-7f3a/42"));
    free(r.body);
    su_request_on(h, port, "POST", "/infer", "{\"inputs\": 1}", 14, "application/json",
                  "X-Request-Id: err-1", &r);
    CHECK(r.code == 400 && !strcmp(r.request_id, "err-1"));
    free(r.body);
    const char *gen = "{\"inputs\": [[1, 2]], \"generate\": 3, \"stream\": true}";
    su_request_on(h, port, "POST", "/infer", gen, strlen(gen), "application/json",
                  "X-Request-Id: stream-1", &r);
    CHECK(r.code == 200 && !strcmp(r.request_id, "stream-1"));
    free(r.body);
    char first[80];
    su_request_on(h, port, "GET", "/healthz", NULL, 0, NULL, NULL, &r);
    CHECK_MSG(is_hex(r.request_id, 24), "made id: \"%s\"", r.request_id);
    snprintf(first, sizeof first, "%s", r.request_id);
    free(r.body);
    /* not usable: a space, or longer than 64 characters */
    su_request_on(h, port, "GET", "/healthz", NULL, 0, NULL, "X-Request-Id: two words", &r);
    CHECK(is_hex(r.request_id, 24) && strcmp(r.request_id, first) != 0);
    free(r.body);
    char longid[100];
    snprintf(longid, sizeof longid, "X-Request-Id: %070d", 7);
    su_request_on(h, port, "GET", "/healthz", NULL, 0, NULL, longid, &r);
    CHECK(is_hex(r.request_id, 24));
    free(r.body);
    curl_easy_cleanup(h);
    /* the access log names it */
    int found = 0;
    double t0 = su_now();
    while (!found && su_now() - t0 < 5) {
        FILE *f = fopen(main_srv.log, "r");
        REQUIRE(f);
        char line[512];
        while (fgets(line, sizeof line, f))
            found |= !strncmp(line, "POST /infer 200 ", 16) && strstr(line, " id=trace-7f3a/42\n");
        fclose(f);
        if (!found)
            usleep(20000);
    }
    CHECK(found);
}

/* Bodies with Content-Encoding gzip and deflate get the same answer as plain ones; an
 * answer of 1 KiB or more is gzipped when Accept-Encoding takes gzip (and inflates to the
 * plain answer); another coding is 415; a body that inflates past the limit is 413. */
TEST(compressed_bodies)
{
    int port = main_srv.port;
    const char *body = "{\"inputs\": [[1, 2, 3, 4, 5, 6, 7, 8]], \"output\": \"all\"}";
    su_resp plain;
    su_request_str(port, "POST", "/infer", body, "application/json", &plain);
    REQUIRE(plain.code == 200 && plain.len >= 1024);
    CURL *h = curl_easy_init();
    for (int coding = 0; coding < 2; coding++) {
        size_t zn;
        unsigned char *zb = tz_compress(body, strlen(body), !coding, &zn);
        su_resp r;
        su_request_on(h, port, "POST", "/infer", (const char *)zb, zn, "application/json",
                      coding ? "Content-Encoding: deflate" : "Content-Encoding: gzip", &r);
        CHECK_MSG(r.code == 200 && r.len == plain.len && !memcmp(r.body, plain.body, r.len),
                  "%s body: %ld %.200s", coding ? "deflate" : "gzip", r.code, r.body);
        free(r.body);
        free(zb);
    }
    /* a gzipped answer */
    su_resp r;
    su_request_on(h, port, "POST", "/infer", body, strlen(body), "application/json",
                  "Accept-Encoding: gzip", &r);
    CHECK(r.code == 200 && r.len < plain.len);
    z_stream z;
    memset(&z, 0, sizeof z);
    REQUIRE(inflateInit2(&z, 31) == Z_OK);
    char *back = malloc(plain.len + 1);
    z.next_in = (Bytef *)r.body;
    z.avail_in = (uInt)r.len;
    z.next_out = (Bytef *)back;
    z.avail_out = (uInt)plain.len + 1;
    int rc = inflate(&z, Z_FINISH);
    CHECK_MSG(rc == Z_STREAM_END && z.total_out == plain.len && !memcmp(back, plain.body, plain.len),
              "gzipped answer: inflate %d, %lu bytes", rc, (unsigned long)z.total_out);
    inflateEnd(&z);
    free(back);
    free(r.body);
    /* small answers stay as they are */
    su_request_on(h, port, "GET", "/healthz", NULL, 0, NULL, "Accept-Encoding: gzip", &r);
    CHECK(r.code == 200 && strstr(r.body, "\"ok\""));
    free(r.body);
    su_request_on(h, port, "POST", "/infer", body, strlen(body), "application/json",
                  "Content-Encoding: br", &r);
    CHECK(r.code == 415 && error_is(&r, "Content-Encoding: \"br\" is not supported"));
    free(r.body);
    su_request_on(h, port, "POST", "/infer", body, strlen(body), "application/json",
                  "Content-Encoding: gzip", &r);
    CHECK(r.code == 400 && error_is(&r, "body: not a whole gzip stream"));
    free(r.body);
    /* 4 MB of spaces in about 4 KB: over the 1 MiB default limit once inflated */
    size_t big = 4u << 20, zn;
    char *spaces = malloc(big);
    memset(spaces, ' ', big);
    unsigned char *zb = tz_compress(spaces, big, 1, &zn);
    su_request_on(h, port, "POST", "/infer", (const char *)zb, zn, "application/json",
                  "Content-Encoding: gzip", &r);
    CHECK(r.code == 413 && error_is(&r, "body: larger than the limit"));
    free(r.body);
    free(zb);
    free(spaces);
    curl_easy_cleanup(h);
    free(plain.body);
}

/* The access log as JSON lines (parsed back, every field checked) and, in the text format,
 * a path with a decoded newline (%0A) that must not start a line of its own. */
TEST(access_log_formats)
{
    su_server sp;
    const char *extra[] = {"--model", model_arg, "--access-log-format", "json", NULL};
    REQUIRE(su_start(&sp, extra) == 0);
    CURL *h = curl_easy_init();
    su_resp r;
    const char *body = "{\"inputs\": [[1, 2, 3]]}";
    su_request_on(h, sp.port, "POST", "/infer", body, strlen(body), "application/json",
                  "X-Request-Id: json-log-1", &r);
    CHECK(r.code == 200);
    free(r.body);
    su_request_on(h, sp.port, "GET", "/a%0Ab%22c", NULL, 0, NULL, NULL, &r);
    CHECK(r.code == 404);
    free(r.body);
    curl_easy_cleanup(h);
    CHECK(su_stop(&sp, 10) == 0);
    FILE *f = fopen(sp.log, "r");
    REQUIRE(f);
    char line[1024];
    int infer = 0, odd = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] != '{')
            continue;
        cJSON *j = cJSON_Parse(line);
        if (!j) {
            bad++;
            continue;
        }
        const char *path = cJSON_GetStringValue(cJSON_GetObjectItem(j, "path"));
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(j, "request_id"));
        const char *when = cJSON_GetStringValue(cJSON_GetObjectItem(j, "time"));
        const cJSON *st = cJSON_GetObjectItem(j, "status");
        int status = cJSON_IsNumber(st) ? st->valueint : 0;
        if (path && !strcmp(path, "/infer") && id && !strcmp(id, "json-log-1")) {
            infer = status == 200 && when && strlen(when) == 24 && when[10] == 'T' &&
                    when[23] == 'Z' &&
                    !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "model")), "test") &&
                    cJSON_GetObjectItem(j, "batch")->valueint >= 1 &&
                    cJSON_IsTrue(cJSON_GetObjectItem(j, "delivered")) &&
                    cJSON_GetObjectItem(j, "compute_ms")->valuedouble > 0;
        }
        if (path && !strcmp(path, "/a\nb\"c"))
            odd = status == 404 && cJSON_IsNull(cJSON_GetObjectItem(j, "model"));
        cJSON_Delete(j);
    }
    fclose(f);
    CHECK(infer && odd && bad == 0);
    /* text: the main server's log never starts a line with the forged part */
    su_request_str(main_srv.port, "GET", "/x%0AGET%20/forged%20200", NULL, NULL, &r);
    CHECK(r.code == 404);
    free(r.body);
    int forged = 0, found = 0;
    double t0 = su_now();
    while (!found && su_now() - t0 < 5) {
        f = fopen(main_srv.log, "r");
        REQUIRE(f);
        while (fgets(line, sizeof line, f)) {
            forged |= !strncmp(line, "GET /forged", 11);
            found |= !strncmp(line, "GET /x?GET /forged 200 404 ", 27);
        }
        fclose(f);
        if (!found)
            usleep(20000);
    }
    CHECK(found && !forged);
}

/* With api_key set: 401 with WWW-Authenticate for a missing, malformed or wrong key (also
 * before a body over the limit, and on v2 and unknown paths), 200 with the right one, and
 * the probes and /metrics open; the refusals counted. */
TEST(api_key)
{
    su_server sp;
    const char *extra[] = {"--model", model_arg, "--api-key", "k3y-0123456789abcdef",
                           "--body-limit", "1000", NULL};
    REQUIRE(su_start(&sp, extra) == 0); /* su_start polls /readyz, open without the key */
    const char *body = "{\"inputs\": [[1, 2]]}";
    static char big[4000];
    memset(big, ' ', sizeof big - 1);
    static const struct {
        const char *method, *path, *auth, *body;
        long code;
    } cases[] = {
        {"POST", "/infer", NULL, NULL, 401},
        {"POST", "/infer", "Authorization: Bearer k3y-0123456789abcdeX", NULL, 401},
        {"POST", "/infer", "Authorization: Bearer k3y-0123456789abcdef0", NULL, 401},
        {"POST", "/infer", "Authorization: Basic k3y-0123456789abcdef", NULL, 401},
        {"POST", "/infer", "Authorization: Bearer k3y-0123456789abcdef", NULL, 200},
        {"POST", "/infer", "Authorization: bearer  k3y-0123456789abcdef", NULL, 200},
        {"POST", "/infer", NULL, big, 401},
        {"POST", "/v2/models/test/infer", NULL, NULL, 401},
        {"GET", "/models", NULL, NULL, 401},
        {"GET", "/no/such/path", NULL, NULL, 401},
        {"GET", "/models", "Authorization: Bearer k3y-0123456789abcdef", NULL, 200},
        {"GET", "/healthz", NULL, NULL, 200},
        {"GET", "/readyz", NULL, NULL, 200},
        {"GET", "/v2/health/ready", NULL, NULL, 200},
        {"GET", "/metrics", NULL, NULL, 200},
    };
    CURL *h = curl_easy_init();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        su_resp r;
        const char *b = !strcmp(cases[i].method, "POST") ? cases[i].body ? cases[i].body : body
                                                          : NULL;
        su_request_on(h, sp.port, cases[i].method, cases[i].path, b, b ? strlen(b) : 0,
                      b ? "application/json" : NULL, cases[i].auth, &r);
        CHECK_MSG(r.code == cases[i].code, "case %zu (%s %s): %ld %s", i, cases[i].method,
                  cases[i].path, r.code, r.body);
        if (cases[i].code == 401)
            CHECK_MSG(error_is(&r, "authorization: missing or wrong API key") &&
                          strcmp(r.www_authenticate, "Bearer realm=\"balsa\"") == 0,
                      "case %zu: WWW-Authenticate \"%s\"", i, r.www_authenticate);
        free(r.body);
    }
    curl_easy_cleanup(h);
    su_resp m;
    su_request_str(sp.port, "GET", "/metrics", NULL, NULL, &m);
    CHECK(su_metric_value(m.body, "balsa_rejected_requests_total{reason=\"unauthorized\"}") == 8);
    free(m.body);
    CHECK(su_stop(&sp, 10) == 0);
}

/* /models with key (or none): the status. */
static long with_key(int port, const char *key)
{
    char hdr[200];
    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", key);
    su_resp r;
    su_request(port, "GET", "/models", NULL, 0, key ? hdr : NULL, &r);
    free(r.body);
    return r.code;
}

/* Key rotation without a restart: api_key_file's keys are all accepted; after a SIGHUP the
 * file's new contents are (the new key added, then the old one removed); a file that does
 * not read leaves the keys in force and the log names the line but not the key. */
TEST(api_keys_rotate_on_sighup)
{
    char path[128];
    snprintf(path, sizeof path, "/tmp/balsa_test_keys_%d.txt", (int)getpid());
    const char *old_key = "old-key-0123456789abcdef", *new_key = "new-key-0123456789abcdef";
    REQUIRE(su_write_file(path, "# the clients' key\nold-key-0123456789abcdef\n"));
    su_server sp;
    const char *extra[] = {"--model", model_arg, "--api-key-file", path, NULL};
    REQUIRE(su_start(&sp, extra) == 0);
    CHECK(su_log_has(&sp, "API key required", 0));
    CHECK(with_key(sp.port, old_key) == 200);
    CHECK(with_key(sp.port, new_key) == 401);
    CHECK(with_key(sp.port, NULL) == 401);

    REQUIRE(su_write_file(path, "old-key-0123456789abcdef\nnew-key-0123456789abcdef\n"));
    kill(sp.pid, SIGHUP);
    CHECK(su_log_has(&sp, "SIGHUP: API keys reloaded: 2 accepted", 5));
    CHECK(with_key(sp.port, old_key) == 200);
    CHECK(with_key(sp.port, new_key) == 200);

    REQUIRE(su_write_file(path, "new-key-0123456789abcdef\n"));
    kill(sp.pid, SIGHUP);
    CHECK(su_log_has(&sp, "SIGHUP: API keys reloaded: 1 accepted", 5));
    CHECK(with_key(sp.port, old_key) == 401);
    CHECK(with_key(sp.port, new_key) == 200);

    REQUIRE(su_write_file(path, "new-key-0123456789abcdef\nshort-secret\n"));
    kill(sp.pid, SIGHUP);
    CHECK(su_log_has(&sp, ":2: a key must be 16 to 128 visible ASCII characters", 5));
    CHECK(su_log_has(&sp, "the previous ones stay in force", 0));
    CHECK(!su_log_has(&sp, "short-secret", 0) && !su_log_has(&sp, new_key, 0));
    CHECK(with_key(sp.port, new_key) == 200);
    CHECK(with_key(sp.port, old_key) == 401);
    CHECK(su_stop(&sp, 10) == 0);

    /* A file that does not read stops the start, naming the line. */
    const char *bad[] = {"--model", model_arg, "--api-key-file", path, NULL};
    CHECK(su_start(&sp, bad) == -1 &&
          su_log_has(&sp, "api_key_file: /tmp/balsa_test_keys_", 0) &&
          su_log_has(&sp, ":2: a key must be", 0));
    unlink(path);
}

/* One request on a fresh connection with the NULL-ended header lines hdrs (a body is sent
 * with no Content-Type unless hdrs has one). */
static void request_with(int port, const char *method, const char *path, const char *body,
                         const char *const *hdrs, su_resp *r)
{
    CURL *h = curl_easy_init();
    su_request_hdrs(h, port, method, path, body, body ? strlen(body) : 0, NULL, hdrs, r);
    curl_easy_cleanup(h);
}

/* Whether the answer's headers hold the line "name: value". */
static int has_header(const su_resp *r, const char *line)
{
    char want[300];
    snprintf(want, sizeof want, "%s\r\n", line);
    return strstr(r->headers, want) != NULL;
}

/* CORS (cors_origins): a preflight from an allowed origin gets 204 with what the page may
 * send, without the API key; another origin 403 naming it; answers to an allowed origin
 * (also errors and streams) say it may read them, to another origin they do not; "*"
 * allows any; with cors_origins unset nothing changes. */
TEST(cors)
{
    su_server sp;
    const char *extra[] = {"--model", model_arg, "--api-key", "k3y-0123456789abcdef",
                           "--cors-origins", "https://app.example,http://localhost:3000", NULL};
    REQUIRE(su_start(&sp, extra) == 0);
    su_resp r;
    const char *pre[] = {"Origin: http://localhost:3000", "Access-Control-Request-Method: POST",
                         "Access-Control-Request-Headers: authorization, content-type", NULL};
    request_with(sp.port, "OPTIONS", "/infer", NULL, pre, &r);
    CHECK_MSG(r.code == 204 && has_header(&r, "Access-Control-Allow-Origin: http://localhost:3000") &&
                  has_header(&r, "Vary: Origin") &&
                  strstr(r.headers, "Access-Control-Allow-Headers: Authorization, Content-Type") &&
                  has_header(&r, "Access-Control-Allow-Methods: GET, POST, HEAD") &&
                  has_header(&r, "Access-Control-Max-Age: 600") && r.len == 0,
              "%ld\n%s", r.code, r.headers);
    free(r.body);
    const char *pre_other[] = {"Origin: https://evil.example", "Access-Control-Request-Method: POST",
                               NULL};
    request_with(sp.port, "OPTIONS", "/v2/models/test/infer", NULL, pre_other, &r);
    CHECK_MSG(r.code == 403 && error_is(&r, "origin: https://evil.example is not one of cors_origins") &&
                  !strstr(r.headers, "Access-Control-Allow-Origin"),
              "%ld %s", r.code, r.body);
    free(r.body);

    const char *body = "{\"inputs\": [[1, 2, 3]]}";
    const char *ok[] = {"Origin: https://app.example", "Authorization: Bearer k3y-0123456789abcdef",
                        "Content-Type: application/json", NULL};
    request_with(sp.port, "POST", "/infer", body, ok, &r);
    CHECK_MSG(r.code == 200 && has_header(&r, "Access-Control-Allow-Origin: https://app.example") &&
                  has_header(&r, "Access-Control-Expose-Headers: X-Request-Id, Retry-After, "
                                 "Inference-Header-Content-Length"),
              "%ld\n%s", r.code, r.headers);
    free(r.body);
    const char *nokey[] = {"Origin: https://app.example", NULL};
    request_with(sp.port, "POST", "/infer", body, nokey, &r);
    CHECK(r.code == 401 && has_header(&r, "Access-Control-Allow-Origin: https://app.example"));
    free(r.body);
    const char *stream[] = {"Origin: https://app.example", "Authorization: Bearer k3y-0123456789abcdef",
                            NULL};
    request_with(sp.port, "POST", "/infer",
                 "{\"inputs\": [[1, 2]], \"generate\": 3, \"stream\": true}", stream, &r);
    CHECK_MSG(r.code == 200 && strstr(r.ctype, "text/event-stream") &&
                  has_header(&r, "Access-Control-Allow-Origin: https://app.example"),
              "%ld %s", r.code, r.body);
    free(r.body);
    const char *other[] = {"Origin: https://app.example.evil", "Authorization: Bearer k3y-0123456789abcdef",
                           NULL};
    request_with(sp.port, "POST", "/infer", body, other, &r);
    CHECK(r.code == 200 && !strstr(r.headers, "Access-Control-"));
    free(r.body);
    CHECK(su_metric(sp.port, "balsa_http_requests_total{handler=\"/infer\",code=\"204\"}") == 1);
    CHECK(su_stop(&sp, 10) == 0);

    const char *any[] = {"--model", model_arg, "--cors-origins", "*", NULL};
    REQUIRE(su_start(&sp, any) == 0);
    const char *from[] = {"Origin: https://anything.example", NULL};
    request_with(sp.port, "GET", "/models", NULL, from, &r);
    CHECK(r.code == 200 && has_header(&r, "Access-Control-Allow-Origin: *") &&
          !has_header(&r, "Vary: Origin"));
    free(r.body);
    CHECK(su_stop(&sp, 10) == 0);

    /* Off (the default, as on the main server): no preflight, no CORS headers. */
    request_with(main_srv.port, "OPTIONS", "/infer", NULL, pre, &r);
    CHECK(r.code == 405 && !strstr(r.headers, "Access-Control-"));
    free(r.body);
    request_with(main_srv.port, "GET", "/models", NULL, from, &r);
    CHECK(r.code == 200 && !strstr(r.headers, "Access-Control-"));
    free(r.body);
}

TEST(run_command_matches_infer)
{
    unsigned long long rng = 99;
    int32_t tok[12];
    char body[512];
    float want[OUT];
    make_seq(&rng, 12, tok, body, sizeof body);
    expected_last(tok, 12, want);
    static char out[65536];
    CHECK(run_cli(body, out, sizeof out) == 0);
    CHECK_MSG(outputs_match(out, 0, want, OUT), "%s", out);
    su_resp r;
    su_request_str(main_srv.port, "POST", "/infer", body, NULL, &r);
    CHECK(r.code == 200 && outputs_match(r.body, 0, want, OUT));
    free(r.body);
    CHECK(run_cli("{\"inputs\": [[99]]}", out, sizeof out) == 1);
    CHECK_MSG(strcmp(out, "{\"error\": \"inputs[0][0]: token id 99 out of range [0, 50)\"}\n") == 0,
              "%s", out);
    CHECK(run_cli("not json", out, sizeof out) == 1);
    CHECK_MSG(strncmp(out, "{\"error\": \"body: malformed JSON", 30) == 0, "%s", out);
    /* one request, no server: nothing keeps a sequence's state for the next */
    CHECK(run_cli("{\"inputs\": [[1]], \"sequence_id\": 3}", out, sizeof out) == 1);
    CHECK_MSG(strstr(out, "sequence_id: balsa run keeps no sequences"), "%s", out);
}

int main(void)
{
    if (!getenv("BALSA_BIN")) {
        printf("skip test_server: BALSA_BIN is not set\n0 passed, 0 failed, 1 skipped\n");
        return 0;
    }
    su_init();
    if (write_model()) {
        printf("0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    const char *extra[] = {"--model", model_arg, "--max-batch-size", "16",
                           "--max-queue-delay-us", "2000", "--body-limit", "300000", NULL};
    if (su_start(&main_srv, extra) != 0) {
        su_kill_children();
        printf("0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    RUN(health_and_models);
    RUN(answers_equal_engine);
    RUN(error_statuses);
    RUN(client_gone_is_499_not_500);
    RUN(concurrent_clients_get_their_own_answers);
    RUN(metrics_exposition);
    RUN(many_keepalive_connections);
    RUN(short_request_overtakes_long_one);
    RUN(full_queue_and_deadline);
    RUN(sigterm_drains_without_losing_requests);
    RUN(sigterm_on_any_thread_drains);
    RUN(bad_config_stops_startup);
    RUN(run_command_matches_infer);
    RUN(request_ids);
    RUN(api_key);
    RUN(api_keys_rotate_on_sighup);
    RUN(cors);
    RUN(access_log_formats);
    RUN(compressed_bodies);
    int stop_failed = su_stop_failed(&main_srv, 20);
    su_kill_children();
    unlink(model_path);
    model_free(ref_model);
    be->ops->destroy(be);
    curl_global_cleanup();
    h_failed += stop_failed;
    HARNESS_END();
}
