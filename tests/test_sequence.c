/* Tests of sequences the server keeps (Triton's sequence extension: sequence_id,
 * sequence_start, sequence_end). The store (server/seqstore.c): start, continue, end, a
 * failed request that leaves the state as it was, one request at a time (409), the slot
 * limit (503) and idle sequences dropped, on a clock the test drives. Through
 * `balsa serve`: a sequence sent in pieces (POST /infer, v2 infer) answers what the whole
 * sequence does at once; a generation continues from where the last one stopped; eight
 * clients run their sequences side by side; a vector model's sequence in binary v2 tensors; every refusal names the sequence and the rule;
 * /metrics counts open sequences and refusals; a reload closes the open sequences; and
 * max_sequences 0 keeps none. (The request fields' parsing is in tests/test_state.c.) */
#include <pthread.h>
#include <sys/stat.h>
#include <utime.h>

#include <cJSON.h>

#include "engine_ref.h"
#include "server/seqstore.h"
#include "server_util.h"

#define VOCAB 40
#define LEN 12
#define MS 1000000ull /* nanoseconds */
#define SLOTS 8       /* the test server's max_sequences */

static balsa_backend *be;
static char path[256], model_arg[300];
static balsa_model *model; /* the served file, run here for the expected answers */

/* A token model that can generate (output = vocabulary), written to path and loaded. */
static int write_model(void)
{
    snprintf(path, sizeof path, "/tmp/balsa_test_seq_%d.safetensors", (int)getpid());
    snprintf(model_arg, sizeof model_arg, "m=%s", path);
    model_spec s = ref_token_spec("m", VOCAB, 16, 32, 2, VOCAB);
    char err[256];
    if (ref_write_random_model(path, &s, 8, 2, 0.5f, 99, err, sizeof err) != BALSA_OK ||
        model_load(path, be, &model, err, sizeof err) != BALSA_OK) {
        printf("  model %s: %s\n", path, err);
        return -1;
    }
    return 0;
}

static const float s1[4] = {1, 2, 3, 4}, s2[4] = {5, 6, 7, 8};

TEST(store_start_continue_end)
{
    seqstore *st = seqstore_new(4, 100, 4);
    REQUIRE(st);
    seq_entry *e;
    int fresh = -1;
    float got[4];
    char err[512];
    CHECK(seqstore_begin(st, "n1", "1", 0, 0, &e, &fresh, got, err, sizeof err) == 400);
    CHECK_MSG(strstr(err, "sequence_id 1: no such sequence is open"), "%s", err);
    REQUIRE(seqstore_begin(st, "n1", "1", 1, 0, &e, &fresh, got, err, sizeof err) == 0);
    CHECK(fresh == 1);
    /* one request at a time, also for a start */
    seq_entry *e2;
    CHECK(seqstore_begin(st, "n1", "1", 0, 0, &e2, &fresh, got, err, sizeof err) == 409);
    CHECK_MSG(strstr(err, "sequence_id 1: the sequence's previous request"), "%s", err);
    CHECK(seqstore_begin(st, "n1", "1", 1, 0, &e2, &fresh, got, err, sizeof err) == 409);
    seqstore_end(st, e, s1, 0, 0);
    REQUIRE(seqstore_begin(st, "n1", "1", 0, MS, &e, &fresh, got, err, sizeof err) == 0);
    CHECK(fresh == 0 && memcmp(got, s1, sizeof s1) == 0);
    /* a request that failed leaves the state as it was */
    seqstore_end(st, e, NULL, 1, MS);
    memset(got, 0, sizeof got);
    REQUIRE(seqstore_begin(st, "n1", "1", 0, MS, &e, &fresh, got, err, sizeof err) == 0);
    CHECK(memcmp(got, s1, sizeof s1) == 0);
    CHECK(seqstore_open(st, MS) == 1);
    /* the last request (sequence_end) that ran closes it */
    seqstore_end(st, e, s2, 1, MS);
    CHECK(seqstore_begin(st, "n1", "1", 0, MS, &e, &fresh, got, err, sizeof err) == 400);
    CHECK(seqstore_open(st, MS) == 0);
    /* ids of the two kinds do not meet: "n7" and "s7" are different sequences */
    REQUIRE(seqstore_begin(st, "n7", "7", 1, MS, &e, &fresh, got, err, sizeof err) == 0);
    seqstore_end(st, e, s1, 0, MS);
    CHECK(seqstore_begin(st, "s7", "\"7\"", 0, MS, &e2, &fresh, got, err, sizeof err) == 400);
    /* a start replaces an open sequence; if that start fails, the sequence is gone */
    REQUIRE(seqstore_begin(st, "n7", "7", 1, MS, &e, &fresh, got, err, sizeof err) == 0);
    CHECK(fresh == 1);
    seqstore_end(st, e, NULL, 0, MS);
    CHECK(seqstore_begin(st, "n7", "7", 0, MS, &e, &fresh, got, err, sizeof err) == 400);
    seqstore_free(st);
}

TEST(store_slots_and_idle_sequences)
{
    seqstore *st = seqstore_new(2, 100, 4);
    REQUIRE(st);
    seq_entry *a, *b, *c;
    int fresh;
    float got[4];
    char err[512];
    REQUIRE(seqstore_begin(st, "sa", "\"a\"", 1, 0, &a, &fresh, got, err, sizeof err) == 0);
    seqstore_end(st, a, s1, 0, 0);
    REQUIRE(seqstore_begin(st, "sb", "\"b\"", 1, 50 * MS, &b, &fresh, got, err, sizeof err) == 0);
    seqstore_end(st, b, s2, 0, 50 * MS);
    CHECK(seqstore_begin(st, "sc", "\"c\"", 1, 60 * MS, &c, &fresh, got, err, sizeof err) == 503);
    CHECK_MSG(strstr(err, "sequence_id \"c\": all 2 sequence slots are in use"), "%s", err);
    CHECK(seqstore_open(st, 60 * MS) == 2);
    /* 120 ms: a has been idle for longer than 100 ms, b has not */
    CHECK(seqstore_open(st, 120 * MS) == 1);
    CHECK(seqstore_begin(st, "sa", "\"a\"", 0, 120 * MS, &a, &fresh, got, err, sizeof err) ==
          400);
    CHECK_MSG(strstr(err, "sequence_id \"a\": the sequence ended after 0.1 s idle "
                          "(sequence_idle_ms 100)"),
              "%s", err);
    REQUIRE(seqstore_begin(st, "sc", "\"c\"", 1, 120 * MS, &c, &fresh, got, err, sizeof err) ==
            0);
    REQUIRE(seqstore_begin(st, "sb", "\"b\"", 0, 130 * MS, &b, &fresh, got, err, sizeof err) ==
            0);
    CHECK(memcmp(got, s2, sizeof s2) == 0);
    /* a sequence with a request running is never idle, however long the request takes */
    CHECK(seqstore_open(st, 10000 * MS) == 2);
    CHECK(seqstore_begin(st, "sc", "\"c\"", 0, 10000 * MS, &a, &fresh, got, err, sizeof err) ==
          409);
    seqstore_end(st, b, s1, 0, 10000 * MS);
    seqstore_end(st, c, s1, 0, 10000 * MS);
    seqstore_free(st);
}

/* The outputs (output "all") of model for the first n tokens, into out (n x VOCAB). */
static void expected_all(const int32_t *tok, int n, float *out)
{
    engine_seq q = {.tokens = tok, .len = n};
    float *o[1] = {out};
    BALSA_ASSERT(model_run(model, &q, 1, 1, o) == BALSA_OK);
}

/* An /infer body for tokens tok[from..to) with extra fields (", ..." or ""). */
static void body_for(const int32_t *tok, int from, int to, const char *extra, char *body,
                     size_t blen)
{
    size_t n = (size_t)snprintf(body, blen, "{\"inputs\": [[");
    for (int t = from; t < to; t++)
        n += (size_t)snprintf(body + n, blen - n, t > from ? ",%d" : "%d", tok[t]);
    snprintf(body + n, blen - n, "]]%s}", extra);
}

/* Largest difference, relative above 1, between the vectors of a JSON array of arrays
 * (an "all" output) and want (rows x VOCAB); 1e9 when the shape differs. */
static double diff_rows(const cJSON *rows, const float *want, int nrows)
{
    if (cJSON_GetArraySize(rows) != nrows)
        return 1e9;
    double worst = 0;
    for (int t = 0; t < nrows; t++) {
        const cJSON *v = cJSON_GetArrayItem(rows, t);
        if (cJSON_GetArraySize(v) != VOCAB)
            return 1e9;
        for (int i = 0; i < VOCAB; i++) {
            double w = want[(size_t)t * VOCAB + i];
            double d = fabs(cJSON_GetArrayItem(v, i)->valuedouble - w);
            worst = fmax(worst, d / fmax(1, fabs(w)));
        }
    }
    return worst;
}

/* POSTs body to /infer; returns the status, the answer parsed in *out when it is 200. */
static long post(int port, const char *p, const char *body, cJSON **out, char *msg, size_t n)
{
    su_resp r;
    su_request(port, "POST", p, body, strlen(body), NULL, &r);
    if (out)
        *out = r.code == 200 ? cJSON_Parse(r.body) : NULL;
    snprintf(msg, n, "%s", r.body);
    free(r.body);
    return r.code;
}

static const int32_t toks[LEN] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8};

/* A sequence in three pieces (4, 1 and 7 tokens), under the id given as JSON, each piece's
 * "all" outputs against the whole sequence's rows. */
static void check_pieces(int port, const char *id_json)
{
    float want[LEN * VOCAB];
    expected_all(toks, LEN, want);
    const int cut[4] = {0, 4, 5, LEN};
    char body[1024], extra[256], msg[4096];
    for (int k = 0; k < 3; k++) {
        snprintf(extra, sizeof extra, ", \"output\": \"all\", \"sequence_id\": %s%s%s", id_json,
                 k == 0 ? ", \"sequence_start\": true" : "",
                 k == 2 ? ", \"sequence_end\": true" : "");
        body_for(toks, cut[k], cut[k + 1], extra, body, sizeof body);
        cJSON *a;
        long code = post(port, "/infer", body, &a, msg, sizeof msg);
        CHECK_MSG(code == 200, "piece %d: %ld %s", k, code, msg);
        const cJSON *rows = cJSON_GetArrayItem(cJSON_GetObjectItem(a, "outputs"), 0);
        double d = diff_rows(rows, want + (size_t)cut[k] * VOCAB, cut[k + 1] - cut[k]);
        CHECK_MSG(d <= 1e-5, "piece %d of sequence %s against the whole: %g", k, id_json, d);
        cJSON_Delete(a);
    }
    /* ended: its id no longer continues anything */
    snprintf(extra, sizeof extra, ", \"sequence_id\": %s", id_json);
    body_for(toks, 0, 1, extra, body, sizeof body);
    long code = post(port, "/infer", body, NULL, msg, sizeof msg);
    CHECK_MSG(code == 400 && strstr(msg, "no such sequence is open"), "%ld %s", code, msg);
}

static su_server sv;

TEST(serve_sequence_in_pieces)
{
    check_pieces(sv.port, "42");
    check_pieces(sv.port, "\"user-7/session:3\"");
    /* v2 infer: the same through parameters, tokens as an INT32 tensor */
    float want[LEN * VOCAB];
    expected_all(toks, LEN, want);
    const int cut[3] = {0, 7, LEN};
    for (int k = 0; k < 2; k++) {
        char body[1024], msg[4096], data[256] = "";
        for (int t = cut[k]; t < cut[k + 1]; t++)
            snprintf(data + strlen(data), sizeof data - strlen(data), t > cut[k] ? ",%d" : "%d",
                     toks[t]);
        snprintf(body, sizeof body,
                 "{\"parameters\": {\"sequence_id\": 9007199254740992, \"output\": \"all\"%s%s}, "
                 "\"inputs\": [{\"name\": \"tokens\", \"datatype\": \"INT32\", \"shape\": [1, %d], "
                 "\"data\": [%s]}]}",
                 k == 0 ? ", \"sequence_start\": true" : "", k == 1 ? ", \"sequence_end\": true" : "",
                 cut[k + 1] - cut[k], data);
        cJSON *a;
        long code = post(sv.port, "/v2/models/m/infer", body, &a, msg, sizeof msg);
        CHECK_MSG(code == 200, "v2 piece %d: %ld %s", k, code, msg);
        const cJSON *d = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(a, "outputs"), 0),
                                             "data");
        int n = cut[k + 1] - cut[k], ok = cJSON_GetArraySize(d) == n * VOCAB;
        for (int i = 0; ok && i < n * VOCAB; i++) {
            double w = want[(size_t)cut[k] * VOCAB + i];
            ok = fabs(cJSON_GetArrayItem(d, i)->valuedouble - w) <= 1e-5 * fmax(1, fabs(w));
        }
        CHECK_MSG(ok, "v2 piece %d against the whole sequence", k);
        cJSON_Delete(a);
    }
}

/* Greedy generation in two requests of one sequence: the second, whose input is the first's
 * last token (which the kept state has not read), generates what one request generating
 * both counts does. */
TEST(serve_sequence_generation_continues)
{
    char body[512], msg[4096];
    body_for(toks, 0, 5, ", \"generate\": 14", body, sizeof body);
    cJSON *whole;
    REQUIRE(post(sv.port, "/infer", body, &whole, msg, sizeof msg) == 200);
    const cJSON *wt = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(whole, "outputs"),
                                                             0), "tokens");
    REQUIRE(cJSON_GetArraySize(wt) == 14);
    body_for(toks, 0, 5, ", \"generate\": 6, \"sequence_id\": \"g\", \"sequence_start\": true",
             body, sizeof body);
    cJSON *a;
    REQUIRE(post(sv.port, "/infer", body, &a, msg, sizeof msg) == 200);
    const cJSON *at = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(a, "outputs"), 0),
                                          "tokens");
    REQUIRE(cJSON_GetArraySize(at) == 6);
    int32_t last = cJSON_GetArrayItem(at, 5)->valueint;
    int same = 1;
    for (int i = 0; i < 6; i++)
        same &= cJSON_GetArrayItem(at, i)->valueint == cJSON_GetArrayItem(wt, i)->valueint;
    snprintf(body, sizeof body,
             "{\"inputs\": [[%d]], \"generate\": 8, \"sequence_id\": \"g\", \"sequence_end\": true}",
             last);
    cJSON *b;
    long code = post(sv.port, "/infer", body, &b, msg, sizeof msg);
    CHECK_MSG(code == 200, "%ld %s", code, msg);
    const cJSON *bt = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(b, "outputs"), 0),
                                          "tokens");
    same &= cJSON_GetArraySize(bt) == 8;
    for (int i = 0; same && i < 8; i++)
        same &= cJSON_GetArrayItem(bt, i)->valueint == cJSON_GetArrayItem(wt, 6 + i)->valueint;
    CHECK_MSG(same, "6 + 8 tokens in a sequence of two requests == 14 in one");
    cJSON_Delete(whole);
    cJSON_Delete(a);
    cJSON_Delete(b);
}

typedef struct {
    int id, ok;
} client;

/* One client: its own sequence of LEN tokens (shifted by its id) in six requests of two
 * tokens, each answer's last output against the prefix run here. */
static void *client_main(void *p)
{
    client *c = p;
    int32_t tok[LEN];
    for (int t = 0; t < LEN; t++)
        tok[t] = (toks[t] + c->id * 7) % VOCAB;
    float *want = malloc(sizeof(float) * LEN * VOCAB);
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* model_run is not reentrant */
    pthread_mutex_lock(&mu);
    expected_all(tok, LEN, want);
    pthread_mutex_unlock(&mu);
    CURL *h = curl_easy_init();
    c->ok = 1;
    for (int k = 0; k < LEN / 2 && c->ok; k++) {
        char extra[128], body[512];
        snprintf(extra, sizeof extra, ", \"sequence_id\": \"client-%d\"%s%s", c->id,
                 k == 0 ? ", \"sequence_start\": true" : "",
                 k == LEN / 2 - 1 ? ", \"sequence_end\": true" : "");
        body_for(tok, 2 * k, 2 * k + 2, extra, body, sizeof body);
        su_resp r;
        su_request_on(h, sv.port, "POST", "/infer", body, strlen(body), "application/json", NULL,
                      &r);
        cJSON *a = r.code == 200 ? cJSON_Parse(r.body) : NULL;
        const cJSON *o = cJSON_GetObjectItem(a, "outputs");
        cJSON *rows = cJSON_CreateArray();
        cJSON_AddItemReferenceToArray(rows, cJSON_GetArrayItem(o, 0));
        c->ok = a && diff_rows(rows, want + (size_t)(2 * k + 1) * VOCAB, 1) <= 1e-5;
        if (!c->ok)
            printf("  client %d, request %d: %ld %.200s\n", c->id, k, r.code, r.body);
        cJSON_Delete(rows);
        cJSON_Delete(a);
        free(r.body);
    }
    curl_easy_cleanup(h);
    free(want);
    return NULL;
}

TEST(serve_sequences_side_by_side)
{
    enum { N = 8 };
    pthread_t th[N];
    client cl[N];
    for (int i = 0; i < N; i++) {
        cl[i] = (client){i, 0};
        REQUIRE(pthread_create(&th[i], NULL, client_main, &cl[i]) == 0);
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += cl[i].ok;
    }
    CHECK_MSG(ok == N, "%d of %d clients got their own sequence's answers", ok, N);
    CHECK(su_metric(sv.port, "balsa_sequences_open{model=\"m\"}") == 0);
}

typedef struct {
    long code;
} long_job;

/* A long generation in sequence "busy" (started already): 20000 steps of a small model,
 * long enough to be seen running from another client. */
static void *long_main(void *p)
{
    long_job *j = p;
    char msg[256];
    j->code = post(sv.port, "/infer",
                   "{\"inputs\": [[1]], \"generate\": 20000, \"sequence_id\": \"busy\"}", NULL,
                   msg, sizeof msg);
    return NULL;
}

/* Every refusal names the sequence and the rule; the slot limit (SLOTS here) is a 503 with
 * Retry-After counted in /metrics; an idle sequence (400 ms here) is dropped and its slot
 * reused; a second request while one of the sequence's runs is a 409. */
TEST(serve_sequence_refusals)
{
    char msg[4096];
    struct {
        const char *path, *body;
        long code;
        const char *says;
    } bad[] = {
        {"/infer", "{\"inputs\": [[1]], \"sequence_id\": 77}", 400,
         "sequence_id 77: no such sequence is open (its first request needs sequence_start"},
        {"/infer", "{\"inputs\": [[1], [2]], \"sequence_id\": 77, \"sequence_start\": true}",
         400,
         "sequence_id: a request of a sequence carries one sequence, got 2"},
        {"/infer", "{\"inputs\": [[1]], \"sequence_start\": true}", 400,
         "sequence_start: needs a sequence_id (not 0 or \\\"\\\")"},
        {"/infer", "{\"inputs\": [[1]], \"sequence_id\": -3}", 400,
         "sequence_id: must be an integer in [0, 2^53] or a string"},
        /* streamed: refused before the stream starts (a leak of the request once) */
        {"/infer", "{\"inputs\": [[1]], \"generate\": 3, \"stream\": true, \"sequence_id\": 78}",
         400, "sequence_id 78: no such sequence is open"},
        {"/v2/models/m/infer", "{\"parameters\": {\"sequence_id\": 5, \"sequence_end\": 1}, \"inputs\": [{\"name\": "
         "\"tokens\", \"datatype\": \"INT32\", \"shape\": [1, 1], \"data\": [1]}]}",
         400, "parameters.sequence_end: must be true or false"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        long code = post(sv.port, bad[i].path, bad[i].body, NULL, msg, sizeof msg);
        CHECK_MSG(code == bad[i].code && strstr(msg, bad[i].says), "%s: %ld %s", bad[i].body,
                  code, msg);
    }
    double slots0 = su_metric(sv.port, "balsa_rejected_requests_total{reason=\"sequence_slots\"}");
    for (int i = 0; i < SLOTS; i++) {
        char body[128];
        snprintf(body, sizeof body,
                 "{\"inputs\": [[1]], \"sequence_id\": %d, \"sequence_start\": true}", 100 + i);
        CHECK(post(sv.port, "/infer", body, NULL, msg, sizeof msg) == 200);
    }
    CHECK(su_metric(sv.port, "balsa_sequences_open{model=\"m\"}") == SLOTS);
    su_resp r;
    const char *extra = "{\"inputs\": [[1]], \"sequence_id\": 200, \"sequence_start\": true}";
    su_request(sv.port, "POST", "/infer", extra, strlen(extra), NULL, &r);
    CHECK_MSG(r.code == 503 && strstr(r.body, "sequence_id 200: all 8 sequence slots are in use") &&
                  strcmp(r.retry_after, "1") == 0,
              "%ld %s", r.code, r.body);
    free(r.body);
    CHECK(su_metric(sv.port, "balsa_rejected_requests_total{reason=\"sequence_slots\"}") ==
          slots0 + 1);
    /* idle for longer than sequence_idle_ms (400): dropped, named as such, slot reused */
    usleep(600000);
    long code = post(sv.port, "/infer", "{\"inputs\": [[1]], \"sequence_id\": 100}", NULL, msg,
                     sizeof msg);
    CHECK_MSG(code == 400 && strstr(msg, "sequence_id 100: the sequence ended after") &&
                  strstr(msg, "idle (sequence_idle_ms 400)"),
              "%ld %s", code, msg);
    CHECK(post(sv.port, "/infer", extra, NULL, msg, sizeof msg) == 200);
    CHECK(su_metric(sv.port, "balsa_sequences_open{model=\"m\"}") == 1);
    /* a continuing request with initial_state: the state is the kept one */
    code = post(sv.port, "/infer",
                "{\"inputs\": [[1]], \"sequence_id\": 200, \"initial_state\": [null]}", NULL, msg,
                sizeof msg);
    CHECK_MSG(code == 400 && strstr(msg, "initial_state: with sequence_id only on the sequence's "
                                         "first request"),
              "%ld %s", code, msg);
    /* one request at a time */
    CHECK(post(sv.port, "/infer",
               "{\"inputs\": [[1]], \"sequence_id\": \"busy\", \"sequence_start\": true}", NULL,
               msg, sizeof msg) == 200);
    long_job j = {0};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, long_main, &j) == 0);
    int saw409 = 0;
    double t0 = su_now();
    while (!saw409 && su_now() - t0 < 20) {
        usleep(20000);
        code = post(sv.port, "/infer", "{\"inputs\": [[1]], \"sequence_id\": \"busy\"}", NULL,
                    msg, sizeof msg);
        saw409 = code == 409 && strstr(msg, "sequence_id \\\"busy\\\": the sequence's previous "
                                            "request has not been answered yet");
    }
    pthread_join(th, NULL);
    CHECK_MSG(saw409, "a request while the sequence's 20000-token generation ran: %ld %s", code,
              msg);
    CHECK(j.code == 200);
    CHECK(post(sv.port, "/infer",
               "{\"inputs\": [[1]], \"sequence_id\": \"busy\", \"sequence_end\": true}", NULL, msg,
               sizeof msg) == 200);
    CHECK(su_metric(sv.port, "balsa_inference_requests_total{model=\"m\",code=\"409\"}") >= 1);
}

/* A reload starts the model with no sequences: one open before it is unknown after. */
TEST(serve_reload_closes_sequences)
{
    char msg[4096];
    CHECK(post(sv.port, "/infer",
               "{\"inputs\": [[1, 2]], \"sequence_id\": 500, \"sequence_start\": true}", NULL, msg,
               sizeof msg) == 200);
    struct stat st;
    REQUIRE(stat(path, &st) == 0);
    struct utimbuf t = {st.st_atime, st.st_mtime + 10};
    REQUIRE(utime(path, &t) == 0);
    kill(sv.pid, SIGHUP);
    double t0 = su_now();
    while (su_metric(sv.port, "balsa_model_reloads_total{model=\"m\",result=\"ok\"}") < 1 &&
           su_now() - t0 < 10)
        usleep(20000);
    long code = post(sv.port, "/infer", "{\"inputs\": [[3]], \"sequence_id\": 500}", NULL, msg,
                     sizeof msg);
    CHECK_MSG(code == 400 && strstr(msg, "sequence_id 500: no such sequence is open") &&
                  strstr(msg, "closed by a model reload"),
              "%ld %s", code, msg);
}

/* A vector-input model (features in, as a streaming audio model takes them): a sequence
 * of 9 frames sent as three v2 requests with binary FP32 tensors answers, piece by piece,
 * what the whole sequence does at once ("all" outputs). */
TEST(serve_vector_sequence)
{
    enum { F = 5, T = 9, OUTV = 6 };
    char vpath[256], varg[300];
    snprintf(vpath, sizeof vpath, "/tmp/balsa_test_seq_vec_%d.safetensors", (int)getpid());
    snprintf(varg, sizeof varg, "v=%s", vpath);
    model_spec spec = ref_token_spec("v", 0, F, 24, 2, OUTV);
    spec.input_kind = MODEL_INPUT_VECTORS;
    spec.head = MODEL_HEAD_NONE;
    char err[256];
    balsa_model *vm = NULL;
    REQUIRE(ref_write_random_model(vpath, &spec, 8, 2, 0.5f, 7, err, sizeof err) == BALSA_OK);
    REQUIRE(model_load(vpath, be, &vm, err, sizeof err) == BALSA_OK);
    float frames[T * F], want[T * OUTV];
    for (int i = 0; i < T * F; i++)
        frames[i] = (float)((i * 37) % 23) / 11.0f - 1.0f;
    engine_seq whole = {.features = frames, .len = T};
    float *o[1] = {want};
    REQUIRE(model_run(vm, &whole, 1, 1, o) == BALSA_OK);
    const char *args[] = {"--model", varg, NULL};
    su_server vs;
    REQUIRE(su_start(&vs, args) == 0);
    const int cut[4] = {0, 4, 5, T};
    for (int k = 0; k < 3; k++) {
        int n = cut[k + 1] - cut[k];
        char hdr[512];
        int hl = snprintf(hdr, sizeof hdr,
                          "{\"parameters\": {\"sequence_id\": \"mic-1\", \"output\": \"all\"%s%s, "
                          "\"binary_data_output\": true}, \"inputs\": [{\"name\": \"features\", "
                          "\"datatype\": \"FP32\", \"shape\": [1, %d, %d], \"parameters\": "
                          "{\"binary_data_size\": %zu}}]}",
                          k == 0 ? ", \"sequence_start\": true" : "",
                          k == 2 ? ", \"sequence_end\": true" : "", n, F,
                          sizeof(float) * (size_t)n * F);
        char body[1024];
        memcpy(body, hdr, (size_t)hl);
        memcpy(body + hl, frames + cut[k] * F, sizeof(float) * (size_t)n * F);
        size_t blen = (size_t)hl + sizeof(float) * (size_t)n * F;
        char hlh[64];
        snprintf(hlh, sizeof hlh, "Inference-Header-Content-Length: %d", hl);
        su_resp r;
        su_request(vs.port, "POST", "/v2/models/v/infer", body, blen, hlh, &r);
        CHECK_MSG(r.code == 200, "piece %d: %ld %.300s", k, r.code, r.body);
        /* the output's raw floats follow the JSON header */
        size_t jl = (size_t)atol(r.header_len);
        int ok = r.code == 200 && jl > 0 && r.len == jl + sizeof(float) * (size_t)n * OUTV;
        for (int i = 0; ok && i < n * OUTV; i++) {
            float got;
            memcpy(&got, r.body + jl + sizeof(float) * (size_t)i, sizeof got);
            float w = want[cut[k] * OUTV + i];
            ok = fabsf(got - w) <= 1e-5f * fmaxf(1.0f, fabsf(w));
        }
        CHECK_MSG(ok, "piece %d of the vector sequence against the whole (%zu bytes, header %zu)",
                  k, r.len, jl);
        free(r.body);
    }
    CHECK(su_stop(&vs, 20) == 0);
    model_free(vm);
    unlink(vpath);
}

/* max_sequences 0: sequence requests are refused, and the model says so. */
TEST(serve_without_sequences)
{
    const char *args[] = {"--model", model_arg, "--max-sequences", "0", NULL};
    su_server s0;
    REQUIRE(su_start(&s0, args) == 0);
    char msg[4096];
    long code = post(s0.port, "/infer",
                     "{\"inputs\": [[1]], \"sequence_id\": 1, \"sequence_start\": true}", NULL,
                     msg, sizeof msg);
    CHECK_MSG(code == 400 && strstr(msg, "sequence_id 1: model \\\"m\\\" keeps no sequences "
                                         "(its max_sequences is 0)"),
              "%ld %s", code, msg);
    cJSON *models;
    su_resp r;
    su_request_str(s0.port, "GET", "/models", NULL, NULL, &r);
    models = cJSON_Parse(r.body);
    free(r.body);
    const cJSON *b = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(models, "models"),
                                                            0), "batching");
    CHECK(cJSON_GetObjectItem(b, "max_sequences") &&
          cJSON_GetObjectItem(b, "max_sequences")->valueint == 0);
    cJSON_Delete(models);
    su_request_str(s0.port, "GET", "/v2/models/m/config", NULL, NULL, &r);
    CHECK(r.code == 200 && !strstr(r.body, "sequence_batching"));
    free(r.body);
    CHECK(su_stop(&s0, 20) == 0);
}

int main(void)
{
    if (su_main_init(&be))
        return 1;
    RUN(store_start_continue_end);
    RUN(store_slots_and_idle_sequences);
    if (write_model() == 0) {
        const char *args[] = {"--model", model_arg, "--max-sequences", "8",
                              "--sequence-idle-ms", "400", NULL};
        if (su_start(&sv, args) == 0) {
            RUN(serve_sequence_in_pieces);
            RUN(serve_sequence_generation_continues);
            RUN(serve_sequences_side_by_side);
            RUN(serve_sequence_refusals);
            RUN(serve_reload_closes_sequences);
            RUN(serve_without_sequences);
            RUN(serve_vector_sequence);
            h_failed += su_stop_failed(&sv, 20);
        } else {
            h_failed++;
        }
        model_free(model);
        unlink(path);
    } else {
        h_failed++;
    }
    be->ops->destroy(be);
    curl_global_cleanup();
    HARNESS_END();
}
