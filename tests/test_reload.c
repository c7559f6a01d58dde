/* Tests of reloading models while `balsa serve` runs: SIGHUP reloads a model whose file
 * changed (and leaves an unchanged one alone), a file that fails to load leaves the
 * previous model serving, polling (model_poll_ms) reloads a changed file once it settles
 * and does not retry one that failed, requests under load during reloads all succeed and
 * each is answered by one whole model (the old or the new, never a mix), a generation
 * admitted before a reload finishes on the model it started on and the drain after it
 * exits 0, and Triton's repository API (index, load, the refusals) with model_control off
 * and on. */
#include <pthread.h>
#include <stdatomic.h>

#include <cJSON.h>

#include "engine_ref.h"
#include "server_util.h"

#define VOCAB 50
#define OUT 50
#define LEN 12

static balsa_backend *be;
static char path_a[256], path_b[256], path_live[256], model_arg[300];
static balsa_model *model_a, *model_b; /* the two files, run here for the expected answers */

/* Writes a random token model (vocabulary VOCAB, output OUT) with the given seed to path
 * and loads it here. */
static balsa_model *write_model(const char *path, unsigned long long seed)
{
    model_spec s = ref_token_spec("m", VOCAB, 16, 32, 2, OUT);
    char err[256];
    balsa_model *m = NULL;
    if (ref_write_random_model(path, &s, 8, 2, 0.5f, seed, err, sizeof err) != BALSA_OK ||
        model_load(path, be, &m, err, sizeof err) != BALSA_OK) {
        printf("  model %s: %s\n", path, err);
        return NULL;
    }
    return m;
}

/* Puts a copy of src at path_live by renaming a complete new file over it (a new inode,
 * as an operator's `mv` would). */
static int install(const char *src)
{
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.new", path_live);
    FILE *in = fopen(src, "rb"), *out = fopen(tmp, "wb");
    int ok = in && out;
    char buf[65536];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    if (in)
        fclose(in);
    if (out && fclose(out))
        ok = 0;
    return ok && rename(tmp, path_live) == 0 ? 0 : -1;
}

/* model_run is not thread-safe per model, and client threads call expected(). */
static pthread_mutex_t ref_mu = PTHREAD_MUTEX_INITIALIZER;

/* The last-step output of m for the tokens. */
static void expected(balsa_model *m, const int32_t *tok, int len, float *out)
{
    engine_seq q = {.tokens = tok, .len = len};
    float *o[1] = {out};
    pthread_mutex_lock(&ref_mu);
    BALSA_ASSERT(model_run(m, &q, 1, 0, o) == BALSA_OK);
    pthread_mutex_unlock(&ref_mu);
}

static void body_for(const int32_t *tok, int len, char *body, size_t blen)
{
    size_t n = (size_t)snprintf(body, blen, "{\"inputs\": [[");
    for (int t = 0; t < len; t++)
        n += (size_t)snprintf(body + n, blen - n, t ? ",%d" : "%d", tok[t]);
    snprintf(body + n, blen - n, "]]}");
}

/* 1 when the /infer answer's one output equals want within 1e-5. */
static int output_is(const char *body, const float *want)
{
    cJSON *j = cJSON_Parse(body);
    const cJSON *o = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "outputs"), 0);
    int ok = cJSON_GetArraySize(o) == OUT;
    for (int i = 0; ok && i < OUT; i++) {
        double v = cJSON_GetArrayItem(o, i)->valuedouble;
        ok = fabs(v - want[i]) <= 1e-5 * (fabs(want[i]) > 1 ? fabs(want[i]) : 1);
    }
    cJSON_Delete(j);
    return ok;
}

/* Which model answered the fixed probe request: 'a', 'b', or 0 (neither, or no 200). */
static const int32_t probe_tok[LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
static float probe_a[OUT], probe_b[OUT];

static int probe(int port)
{
    char body[256];
    body_for(probe_tok, LEN, body, sizeof body);
    su_resp r;
    su_request_str(port, "POST", "/infer", body, "application/json", &r);
    int who = r.code != 200 ? 0 : output_is(r.body, probe_a) ? 'a' : output_is(r.body, probe_b) ? 'b' : 0;
    free(r.body);
    return who;
}

/* Waits up to 10 s for the probe to be answered by model want. */
static int wait_for(int port, int want)
{
    double t0 = su_now();
    while (su_now() - t0 < 10) {
        if (probe(port) == want)
            return 1;
        usleep(10000);
    }
    return 0;
}

/* Starts a server on model A with model_control set as given and, when poll_ms is not
 * NULL, model_poll_ms. */
static int start_polling(su_server *sv, const char *model_control, const char *poll_ms)
{
    if (install(path_a))
        return -1;
    const char *extra[] = {"--model", model_arg, "--model-control", model_control,
                           poll_ms ? "--model-poll-ms" : NULL, poll_ms, NULL};
    return su_start(sv, extra);
}

static int start(su_server *sv, const char *model_control)
{
    return start_polling(sv, model_control, NULL);
}

TEST(sighup_reloads_a_changed_file_only)
{
    su_server sv;
    REQUIRE(start(&sv, "false") == 0);
    CHECK(probe(sv.port) == 'a');
    double t_start = su_metric(sv.port, "balsa_model_last_load_timestamp_seconds{model=\"m\"}");
    CHECK(t_start > 1.7e9); /* a Unix time, in seconds */
    usleep(20000);
    REQUIRE(install(path_b) == 0);
    kill(sv.pid, SIGHUP);
    CHECK(wait_for(sv.port, 'b'));
    CHECK(su_log_has(&sv, "balsa: model m reloaded in", 5));
    CHECK(su_metric(sv.port, "balsa_model_last_load_timestamp_seconds{model=\"m\"}") > t_start);
    CHECK(su_metric(sv.port, "balsa_model_reloads_total{model=\"m\",result=\"ok\"}") == 1);
    /* the same file again: left alone */
    kill(sv.pid, SIGHUP);
    CHECK(su_log_has(&sv, "unchanged, not reloaded", 5));
    CHECK(su_metric(sv.port, "balsa_model_reloads_total{model=\"m\",result=\"ok\"}") == 1);
    CHECK(probe(sv.port) == 'b');
    CHECK(su_stop(&sv, 10) == 0);
}

/* Writes a config file serving path as model m with the given max_batch_size and
 * body_limit, and one more model when extra is set. */
static void write_config(const char *file, const char *path, int max_batch, int body_limit,
                         int extra)
{
    FILE *f = fopen(file, "w");
    BALSA_ASSERT(f);
    fprintf(f,
            "{\"body_limit\": %d, \"port\": 1, \"models\": [{\"name\": \"m\", \"path\": \"%s\", "
            "\"max_batch_size\": %d, \"max_sequences\": %d}%s]}\n",
            body_limit, path, max_batch, max_batch * 2,
            extra ? ", {\"name\": \"other\", \"path\": \"models/demo/demo.safetensors\"}" : "");
    fclose(f);
}

/* The batching of model m as GET /models gives it: max_batch_size, max_sequences. */
static void models_batching(int port, int *max_batch, int *max_seq)
{
    su_resp r;
    su_request_str(port, "GET", "/models", NULL, NULL, &r);
    cJSON *j = cJSON_Parse(r.body);
    const cJSON *b = cJSON_GetObjectItem(
        cJSON_GetArrayItem(cJSON_GetObjectItem(j, "models"), 0), "batching");
    *max_batch = b ? cJSON_GetObjectItem(b, "max_batch_size")->valueint : -1;
    *max_seq = b ? cJSON_GetObjectItem(b, "max_sequences")->valueint : -1;
    cJSON_Delete(j);
    free(r.body);
}

/* SIGHUP re-reads the configuration: a model whose settings or path changed is reloaded
 * with them (its file unchanged); a key a flag sets (port) stays the flag's; a changed
 * global key and a new model are logged as waiting for a restart; a file that does not
 * read leaves everything as it was. */
TEST(sighup_rereads_the_configuration)
{
    REQUIRE(install(path_a) == 0);
    char file[300];
    snprintf(file, sizeof file, "%s.json", path_live);
    write_config(file, path_live, 4, 1 << 20, 0);
    const char *extra[] = {"--config", file, NULL};
    su_server sv;
    REQUIRE(su_start(&sv, extra) == 0);
    int mb, ms;
    models_batching(sv.port, &mb, &ms);
    CHECK(mb == 4 && ms == 8);
    write_config(file, path_live, 16, 1 << 21, 1);
    kill(sv.pid, SIGHUP);
    CHECK(su_log_has(&sv, "balsa: SIGHUP: model m: new settings", 5));
    CHECK(su_log_has(&sv, "balsa: SIGHUP: body_limit changed: a restart applies that", 5));
    CHECK(su_log_has(&sv, "balsa: SIGHUP: model other is new in the configuration", 5));
    double t0 = su_now();
    do
        models_batching(sv.port, &mb, &ms);
    while (mb != 16 && su_now() - t0 < 10 && usleep(20000) == 0);
    CHECK_MSG(mb == 16 && ms == 32, "max_batch_size %d, max_sequences %d", mb, ms);
    CHECK(su_metric(sv.port, "balsa_model_reloads_total{model=\"m\",result=\"ok\"}") == 1);
    CHECK(probe(sv.port) == 'a');
    /* a new path: the model comes from it */
    write_config(file, path_b, 16, 1 << 21, 1);
    kill(sv.pid, SIGHUP);
    CHECK(wait_for(sv.port, 'b'));
    /* new settings whose file fails to load: the model keeps serving, with its settings */
    char missing[300];
    snprintf(missing, sizeof missing, "%s.missing", path_live);
    write_config(file, missing, 32, 1 << 21, 1);
    kill(sv.pid, SIGHUP);
    CHECK(su_log_has(&sv, "reload failed, still serving the previous m", 5));
    models_batching(sv.port, &mb, &ms);
    CHECK_MSG(mb == 16 && ms == 32, "max_batch_size %d, max_sequences %d", mb, ms);
    CHECK(probe(sv.port) == 'b');
    /* a file that does not read: nothing changes */
    REQUIRE(su_write_file(file, "{\"models\": ["));
    kill(sv.pid, SIGHUP);
    CHECK(su_log_has(&sv, "the configuration was not re-read (config error:", 5));
    CHECK(probe(sv.port) == 'b');
    models_batching(sv.port, &mb, &ms);
    CHECK(mb == 16);
    CHECK(su_stop(&sv, 10) == 0);
    unlink(file);
}

TEST(a_bad_file_leaves_the_old_model_serving)
{
    su_server sv;
    REQUIRE(start(&sv, "false") == 0);
    /* a truncated copy of the model, renamed over it */
    char cut[300];
    snprintf(cut, sizeof cut, "%s.cut", path_live);
    FILE *in = fopen(path_b, "rb"), *out = fopen(cut, "wb");
    REQUIRE(in && out);
    char buf[1000];
    size_t n = fread(buf, 1, sizeof buf, in);
    CHECK(fwrite(buf, 1, n, out) == n);
    fclose(in);
    fclose(out);
    REQUIRE(rename(cut, path_live) == 0);
    kill(sv.pid, SIGHUP);
    CHECK(su_log_has(&sv, "reload failed, still serving the previous m", 5));
    CHECK(su_metric(sv.port, "balsa_model_reloads_total{model=\"m\",result=\"error\"}") == 1);
    CHECK(probe(sv.port) == 'a');
    /* a missing file: the same */
    REQUIRE(unlink(path_live) == 0);
    kill(sv.pid, SIGHUP);
    double t0 = su_now();
    while (su_metric(sv.port, "balsa_model_reloads_total{model=\"m\",result=\"error\"}") < 2 &&
           su_now() - t0 < 5)
        usleep(10000);
    CHECK(su_metric(sv.port, "balsa_model_reloads_total{model=\"m\",result=\"error\"}") == 2);
    CHECK(probe(sv.port) == 'a');
    su_resp r;
    su_request_str(sv.port, "GET", "/readyz", NULL, NULL, &r);
    CHECK(r.code == 200);
    free(r.body);
    CHECK(su_stop(&sv, 10) == 0);
}

/* Writes the first n bytes of src over path_live in place (the same inode), as a copy
 * still in progress looks. */
static int write_partial(const char *src, size_t n)
{
    FILE *in = fopen(src, "rb"), *out = fopen(path_live, "r+b");
    int ok = in && out;
    char buf[65536];
    size_t got = ok ? fread(buf, 1, n < sizeof buf ? n : sizeof buf, in) : 0;
    ok = ok && fwrite(buf, 1, got, out) == got && ftruncate(fileno(out), (off_t)got) == 0;
    if (in)
        fclose(in);
    if (out && fclose(out))
        ok = 0;
    return ok ? 0 : -1;
}

TEST(polling_reloads_a_changed_file)
{
    su_server sv;
    REQUIRE(start_polling(&sv, "false", "100") == 0);
    REQUIRE(install(path_b) == 0);
    CHECK(wait_for(sv.port, 'b'));
    CHECK(su_log_has(&sv, "changed on disk: reloading", 5));
    /* a file cut short: one failed attempt, the old model serving, no retry while it stays */
    REQUIRE(write_partial(path_a, 1000) == 0);
    double t0 = su_now();
    while (su_metric(sv.port, "balsa_model_reloads_total{model=\"m\",result=\"error\"}") < 1 &&
           su_now() - t0 < 10)
        usleep(20000);
    usleep(600000); /* six more looks */
    CHECK(su_metric(sv.port, "balsa_model_reloads_total{model=\"m\",result=\"error\"}") == 1);
    CHECK(su_log_has(&sv, "not tried again until the file changes", 5));
    CHECK(probe(sv.port) == 'b');
    /* the whole file at last */
    REQUIRE(install(path_a) == 0);
    CHECK(wait_for(sv.port, 'a'));
    CHECK(su_metric(sv.port, "balsa_model_reloads_total{model=\"m\",result=\"ok\"}") == 2);
    CHECK(su_stop(&sv, 10) == 0);
}

/* Clients sending random sequences until told to stop; each answer must be 200 and come
 * from one model whole. */
typedef struct {
    int port, id;
    atomic_int *stop;
    int sent, bad, from_a, from_b;
} client;

static void *client_main(void *p)
{
    client *c = p;
    unsigned long long rng = 1000 + (unsigned long long)c->id;
    CURL *h = curl_easy_init();
    while (!atomic_load(c->stop)) {
        int32_t tok[LEN];
        int len = 1 + (int)(h_rand_u64(&rng) % LEN);
        for (int t = 0; t < len; t++)
            tok[t] = (int32_t)(h_rand_u64(&rng) % VOCAB);
        char body[256];
        body_for(tok, len, body, sizeof body);
        su_resp r;
        su_request_on(h, c->port, "POST", "/infer", body, strlen(body), "application/json",
                      NULL, &r);
        float wa[OUT], wb[OUT];
        expected(model_a, tok, len, wa);
        expected(model_b, tok, len, wb);
        c->sent++;
        if (r.code == 200 && output_is(r.body, wa))
            c->from_a++;
        else if (r.code == 200 && output_is(r.body, wb))
            c->from_b++;
        else if (c->bad++ == 0)
            printf("  client %d: %ld %s\n", c->id, r.code, r.body);
        free(r.body);
    }
    curl_easy_cleanup(h);
    return NULL;
}

TEST(no_request_fails_or_mixes_models_during_reloads)
{
    su_server sv;
    REQUIRE(start(&sv, "false") == 0);
    atomic_int stop = 0;
    client cl[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        cl[i] = (client){sv.port, i, &stop, 0, 0, 0, 0};
        REQUIRE(pthread_create(&th[i], NULL, client_main, &cl[i]) == 0);
    }
    for (int k = 0; k < 6; k++) {
        usleep(150000);
        REQUIRE(install(k % 2 ? path_a : path_b) == 0);
        kill(sv.pid, SIGHUP);
        CHECK(wait_for(sv.port, k % 2 ? 'a' : 'b'));
    }
    usleep(100000);
    atomic_store(&stop, 1);
    int sent = 0, bad = 0, a = 0, b = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        sent += cl[i].sent;
        bad += cl[i].bad;
        a += cl[i].from_a;
        b += cl[i].from_b;
    }
    printf("  %d requests during 6 reloads: %d from the first model, %d from the second, %d "
           "bad\n",
           sent, a, b, bad);
    CHECK(bad == 0);
    CHECK(a > 0 && b > 0);
    CHECK(su_metric(sv.port, "balsa_model_reloads_total{model=\"m\",result=\"ok\"}") == 6);
    CHECK(su_stop(&sv, 10) == 0);
}

/* A generation of many tokens, answered at once. */
typedef struct {
    int port;
    su_resp r;
} gen_call;

static void *gen_main(void *p)
{
    gen_call *g = p;
    su_request_str(g->port, "POST", "/infer",
                   "{\"inputs\": [[1, 2, 3]], \"generate\": 30000}", "application/json", &g->r);
    return NULL;
}

TEST(a_running_generation_finishes_on_its_model)
{
    su_server sv;
    REQUIRE(start(&sv, "false") == 0);
    gen_call g = {sv.port, {0}};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, gen_main, &g) == 0);
    /* wait until it runs, then reload under it */
    double t0 = su_now();
    while (su_metric(sv.port, "balsa_requests_in_flight") < 1 && su_now() - t0 < 5)
        usleep(2000);
    REQUIRE(install(path_b) == 0);
    kill(sv.pid, SIGHUP);
    CHECK(wait_for(sv.port, 'b'));
    int still_running = su_metric(sv.port, "balsa_requests_in_flight") >= 1;
    pthread_join(th, NULL);
    CHECK(g.r.code == 200);
    /* its tokens are model A's greedy continuation, not B's */
    int32_t in[3] = {1, 2, 3}, want_a[64], want_b[64];
    int na = 0, nb = 0;
    engine_seq q = {.tokens = in, .len = 3};
    model_gen_opts o = {.max_new = 64};
    REQUIRE(model_generate(model_a, &q, &o, want_a, &na) == BALSA_OK);
    REQUIRE(model_generate(model_b, &q, &o, want_b, &nb) == BALSA_OK);
    cJSON *j = cJSON_Parse(g.r.body);
    const cJSON *toks = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "outputs"), 0),
                                            "tokens");
    int same_a = cJSON_GetArraySize(toks) == 30000, same_b = same_a;
    for (int i = 0; i < 64 && same_a | same_b; i++) {
        int t = cJSON_GetArrayItem(toks, i)->valueint;
        same_a &= i < na && t == want_a[i];
        same_b &= i < nb && t == want_b[i];
    }
    cJSON_Delete(j);
    CHECK_MSG(same_a && !same_b, "generation: %.200s", g.r.body);
    if (!still_running)
        printf("  (the generation ended before the reload finished; the overlap was not "
               "exercised this time)\n");
    free(g.r.body);
    CHECK(su_stop(&sv, 10) == 0);
}

TEST(repository_api)
{
    su_server sv;
    REQUIRE(start(&sv, "false") == 0);
    su_resp r;
    su_request_str(sv.port, "POST", "/v2/repository/index", NULL, NULL, &r);
    CHECK(r.code == 200);
    CHECK_MSG(strstr(r.body, "{\"name\":\"m\",\"version\":\"1\",\"state\":\"READY\"}"), "%s",
              r.body);
    free(r.body);
    su_request_str(sv.port, "POST", "/v2/repository/index", "{\"ready\": true}",
                   "application/json", &r);
    CHECK(r.code == 200 && strstr(r.body, "\"state\":\"READY\""));
    free(r.body);
    su_request_str(sv.port, "POST", "/v2/repository/index", "{\"ready\": 1}", "application/json",
                   &r);
    CHECK(r.code == 400 && strstr(r.body, "ready: must be true or false"));
    free(r.body);
    su_request_str(sv.port, "POST", "/v2/repository/models/m/load", NULL, NULL, &r);
    CHECK(r.code == 403 && strstr(r.body, "model control is off"));
    free(r.body);
    CHECK(su_stop(&sv, 10) == 0);

    REQUIRE(start(&sv, "true") == 0);
    REQUIRE(install(path_b) == 0);
    su_request_str(sv.port, "POST", "/v2/repository/models/m/load", "{\"parameters\": {}}",
                   "application/json", &r);
    CHECK_MSG(r.code == 200 && strstr(r.body, "\"state\":\"READY\""), "%ld %s", r.code, r.body);
    free(r.body);
    CHECK(probe(sv.port) == 'b'); /* answered once the new model serves */
    /* forced: the same file reloads again */
    su_request_str(sv.port, "POST", "/v2/repository/models/m/load", NULL, NULL, &r);
    CHECK(r.code == 200);
    free(r.body);
    CHECK(su_metric(sv.port, "balsa_model_reloads_total{model=\"m\",result=\"ok\"}") == 2);
    static const struct {
        const char *method, *path, *body;
        long code;
        const char *says;
    } bad[] = {
        {"POST", "/v2/repository/models/m/load", "{\"parameters\": {\"config\": \"{}\"}}", 400,
         "parameters.config: not supported"},
        {"POST", "/v2/repository/models/m/load", "{\"model\": 1}", 400, "model: unknown field"},
        {"POST", "/v2/repository/models/m/load", "{\"parameters\"", 400, "body: malformed JSON"},
        {"POST", "/v2/repository/models/nope/load", NULL, 404, "model: no model named"},
        {"POST", "/v2/repository/models/m/unload", NULL, 400, "unload: not supported"},
        {"GET", "/v2/repository/models/m/load", NULL, 405, "method GET not allowed"},
        {"POST", "/v2/repository/models/m", NULL, 404, "no such path"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        su_request_str(sv.port, bad[i].method, bad[i].path, bad[i].body,
                       bad[i].body ? "application/json" : NULL, &r);
        CHECK_MSG(r.code == bad[i].code && strstr(r.body, bad[i].says), "%s %s: %ld %s",
                  bad[i].method, bad[i].path, r.code, r.body);
        free(r.body);
    }
    /* a file that does not load: 500 naming it, the model still serving */
    FILE *f = fopen(path_live, "wb");
    REQUIRE(f);
    fputs("not a model", f);
    fclose(f);
    su_request_str(sv.port, "POST", "/v2/repository/models/m/load", NULL, NULL, &r);
    CHECK_MSG(r.code == 500 && strstr(r.body, "reload failed, still serving the previous"),
              "%ld %s", r.code, r.body);
    free(r.body);
    CHECK(probe(sv.port) == 'b');
    su_request_str(sv.port, "GET", "/v2", NULL, NULL, &r);
    CHECK(strstr(r.body, "\"model_repository\""));
    free(r.body);
    CHECK(su_stop(&sv, 10) == 0);
}

int main(void)
{
    su_init();
    if (balsa_backend_cpu_create(1, &be) != BALSA_OK) {
        printf("no CPU backend\n");
        return 1;
    }
    int pid = (int)getpid();
    snprintf(path_a, sizeof path_a, "/tmp/balsa_reload_%d_a.safetensors", pid);
    snprintf(path_b, sizeof path_b, "/tmp/balsa_reload_%d_b.safetensors", pid);
    snprintf(path_live, sizeof path_live, "/tmp/balsa_reload_%d.safetensors", pid);
    snprintf(model_arg, sizeof model_arg, "m=%s", path_live);
    model_a = write_model(path_a, 101);
    model_b = write_model(path_b, 202);
    if (!model_a || !model_b)
        return 1;
    expected(model_a, probe_tok, LEN, probe_a);
    expected(model_b, probe_tok, LEN, probe_b);
    RUN(sighup_reloads_a_changed_file_only);
    RUN(sighup_rereads_the_configuration);
    RUN(a_bad_file_leaves_the_old_model_serving);
    RUN(polling_reloads_a_changed_file);
    RUN(no_request_fails_or_mixes_models_during_reloads);
    RUN(a_running_generation_finishes_on_its_model);
    RUN(repository_api);
    su_kill_children();
    model_free(model_a);
    model_free(model_b);
    be->ops->destroy(be);
    unlink(path_a);
    unlink(path_b);
    unlink(path_live);
    HARNESS_END();
}
