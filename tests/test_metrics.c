/* Tests for the Prometheus exposition (server/metrics.c) and the JSON writer
 * (server/jsonw.c): every histogram has a +Inf bucket equal to its count, no family is
 * split or declared twice, no series repeats, and promtool (when installed) accepts it. */
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "server/jsonw.h"
#include "server/metrics.h"

/* Checks the exposition's structure; returns 1 when well-formed, printing the problem. */
static int exposition_ok(const char *text)
{
    char families[128][96];
    int nfam = 0;
    static char series[2048][192];
    int nser = 0;
    char cur[96] = "";
    const char *p = text;
    int ok = 1;
    while (*p) {
        const char *nl = strchr(p, '\n');
        if (!nl) {
            printf("  no newline at the end\n");
            return 0;
        }
        char line[512];
        size_t n = (size_t)(nl - p) < sizeof line - 1 ? (size_t)(nl - p) : sizeof line - 1;
        memcpy(line, p, n);
        line[n] = 0;
        p = nl + 1;
        char name[96], type[32];
        if (sscanf(line, "# TYPE %95s %31s", name, type) == 2) {
            for (int i = 0; i < nfam; i++)
                if (!strcmp(families[i], name)) {
                    printf("  family %s declared twice (split)\n", name);
                    ok = 0;
                }
            snprintf(families[nfam++], sizeof families[0], "%s", name);
            snprintf(cur, sizeof cur, "%s", name);
            continue;
        }
        if (line[0] == '#')
            continue;
        /* A sample must belong to the family declared last. */
        if (strncmp(line, cur, strlen(cur)) != 0) {
            printf("  sample outside its family: %s\n", line);
            ok = 0;
        }
        char key[192];
        const char *sp = strrchr(line, ' ');
        snprintf(key, sizeof key, "%.*s", (int)(sp - line), line);
        for (int i = 0; i < nser; i++)
            if (!strcmp(series[i], key)) {
                printf("  duplicate series %s\n", key);
                ok = 0;
            }
        if (nser < 2048)
            snprintf(series[nser++], sizeof series[0], "%s", key);
    }
    return ok;
}

TEST(exposition_structure)
{
    const char *names[] = {"demo", "other"};
    metrics *m = metrics_create(2, names, "0.1.0", "cpu");
    REQUIRE(m);
    metrics_http(m, METRICS_H_INFER, 200);
    metrics_http(m, METRICS_H_INFER, 413);
    metrics_http(m, METRICS_H_OTHER, 404);
    metrics_http(m, METRICS_H_INFER, 401);
    metrics_http(m, METRICS_H_V2, 403);
    metrics_infer(m, 1, 409, 0.001);
    metrics_infer(m, 0, 200, 0.003);
    metrics_infer(m, 0, 200, 20.0); /* beyond the last bucket: only +Inf */
    metrics_infer(m, 1, 504, 0.2);
    metrics_queue_compute(m, 0, 0.0001, 0.002);
    metrics_batch(m, 0, 1);
    metrics_batch(m, 0, 17);
    metrics_batch(m, 0, 17);
    metrics_generation(m, 0, 64, 0.004, 0.0003);
    metrics_generation(m, 0, 1, 0.002, -1); /* one token: no time per token */
    metrics_reject(m, METRICS_R_QUEUE_FULL);
    metrics_model_loaded(m, 0, 0.25);
    metrics_set_ready(m, 0, 1);
    metrics_inflight_add(m, 3);
    metrics_inflight_add(m, -1);
    metrics_reject(m, METRICS_R_SEQUENCE_SLOTS);
    metrics_model_now now[2] = {{5, 0}, {0, 7}};
    jsonw w;
    jsonw_init(&w);
    metrics_render(m, now, &w);
    REQUIRE(!w.oom && w.data);
    const char *t = w.data;
    CHECK(exposition_ok(t));
    CHECK(strstr(t, "balsa_build_info{version=\"0.1.0\",backend=\"cpu\"} 1\n"));
    CHECK(strstr(t, "balsa_http_requests_total{handler=\"/infer\",code=\"413\"} 1\n"));
    CHECK(strstr(t, "balsa_inference_requests_total{model=\"demo\",code=\"200\"} 2\n"));
    CHECK(strstr(t, "balsa_inference_requests_total{model=\"other\",code=\"504\"} 1\n"));
    CHECK(strstr(t, "balsa_request_duration_seconds_bucket{model=\"demo\",le=\"10\"} 1\n"));
    CHECK(strstr(t, "balsa_request_duration_seconds_bucket{model=\"demo\",le=\"+Inf\"} 2\n"));
    CHECK(strstr(t, "balsa_request_duration_seconds_count{model=\"demo\"} 2\n"));
    CHECK(strstr(t, "balsa_request_duration_seconds_sum{model=\"demo\"} 20.003\n"));
    CHECK(strstr(t, "balsa_batch_size_bucket{model=\"demo\",le=\"16\"} 1\n"));
    CHECK(strstr(t, "balsa_batch_size_bucket{model=\"demo\",le=\"32\"} 3\n"));
    CHECK(strstr(t, "balsa_batch_size_sum{model=\"demo\"} 35\n"));
    CHECK(strstr(t, "balsa_queue_depth{model=\"demo\"} 5\n"));
    CHECK(strstr(t, "balsa_sequences_open{model=\"demo\"} 0\n"));
    CHECK(strstr(t, "balsa_sequences_open{model=\"other\"} 7\n"));
    /* 401, 403 and 409 are counted as themselves, not as 500 */
    CHECK(strstr(t, "balsa_http_requests_total{handler=\"/infer\",code=\"401\"} 1\n"));
    CHECK(strstr(t, "balsa_http_requests_total{handler=\"/v2\",code=\"403\"} 1\n"));
    CHECK(strstr(t, "balsa_inference_requests_total{model=\"other\",code=\"409\"} 1\n"));
    CHECK(!strstr(t, "code=\"500\""));
    CHECK(strstr(t, "balsa_rejected_requests_total{reason=\"sequence_slots\"} 1\n"));
    CHECK(strstr(t, "balsa_generated_tokens_total{model=\"demo\"} 65\n"));
    CHECK(strstr(t, "balsa_generated_tokens_total{model=\"other\"} 0\n"));
    CHECK(strstr(t, "balsa_time_to_first_token_seconds_bucket{model=\"demo\",le=\"0.0025\"} 1\n"));
    CHECK(strstr(t, "balsa_time_to_first_token_seconds_count{model=\"demo\"} 2\n"));
    CHECK(strstr(t, "balsa_time_to_first_token_seconds_sum{model=\"demo\"} 0.006\n"));
    CHECK(strstr(t, "balsa_time_per_output_token_seconds_bucket{model=\"demo\",le=\"0.00025\"} 0\n"));
    CHECK(strstr(t, "balsa_time_per_output_token_seconds_bucket{model=\"demo\",le=\"0.0005\"} 1\n"));
    CHECK(strstr(t, "balsa_time_per_output_token_seconds_count{model=\"demo\"} 1\n"));
    CHECK(strstr(t, "balsa_requests_in_flight 2\n"));
    CHECK(strstr(t, "balsa_rejected_requests_total{reason=\"queue_full\"} 1\n"));
    CHECK(strstr(t, "balsa_model_load_duration_seconds{model=\"demo\"} 0.25\n"));
    CHECK(strstr(t, "balsa_model_ready{model=\"other\"} 0\n"));
    CHECK(strstr(t, "process_resident_memory_bytes "));
    CHECK(strstr(t, "process_open_fds "));
    /* every histogram family has +Inf buckets, as many as models */
    const char *hists[] = {"balsa_request_duration_seconds", "balsa_queue_duration_seconds",
                           "balsa_compute_duration_seconds", "balsa_batch_size",
                           "balsa_time_to_first_token_seconds",
                           "balsa_time_per_output_token_seconds"};
    for (int i = 0; i < 6; i++) {
        char want[128];
        int n = 0;
        snprintf(want, sizeof want, "%s_bucket{model=", hists[i]);
        for (const char *q = t; (q = strstr(q, want)); q++)
            if (strstr(q, "le=\"+Inf\"") && strstr(q, "le=\"+Inf\"") < strchr(q, '\n'))
                n++;
        CHECK_MSG(n == 2, "%s: %d +Inf buckets", hists[i], n);
    }
    jsonw_free(&w);
    metrics_free(m);
}

TEST(promtool_accepts)
{
    if (system("command -v promtool >/dev/null 2>&1") != 0)
        SKIP("promtool not installed (tools/deps.sh installs prometheus)");
    const char *names[] = {"demo"};
    metrics *m = metrics_create(1, names, "0.1.0", "cpu");
    REQUIRE(m);
    metrics_http(m, METRICS_H_HEALTHZ, 200);
    metrics_infer(m, 0, 200, 0.01);
    metrics_batch(m, 0, 4);
    metrics_generation(m, 0, 40, 0.003, 0.0001);
    jsonw w;
    jsonw_init(&w);
    metrics_render(m, NULL, &w);
    char path[] = "/tmp/balsa_metrics_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fwrite(w.data, 1, w.len, f);
    fclose(f);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s", path);
    int rc = system(cmd);
    CHECK_MSG(rc == 0, "promtool exit status %d", rc);
    remove(path);
    jsonw_free(&w);
    metrics_free(m);
}

TEST(jsonw_writes)
{
    jsonw w;
    jsonw_init(&w);
    jsonw_quoted(&w, "a\"b\\c\n\x01");
    jsonw_str(&w, " ");
    float v[4] = {0.1f, -2.5f, 1e-30f, 3.0f};
    jsonw_float_array(&w, v, 4);
    jsonw_str(&w, " ");
    jsonw_float(&w, NAN);
    size_t len;
    char *s = jsonw_take(&w, &len);
    REQUIRE(s);
    CHECK_MSG(strcmp(s, "\"a\\\"b\\\\c\\n\\u0001\" [0.100000001,-2.5,1e-30,3] null") == 0,
              "%s", s);
    CHECK(len == strlen(s));
    free(s);
    char *e = jsonw_error("x \"y\"", &len);
    REQUIRE(e);
    CHECK(strcmp(e, "{\"error\": \"x \\\"y\\\"\"}\n") == 0);
    free(e);
    /* a long buffer grows */
    jsonw_init(&w);
    for (int i = 0; i < 10000; i++)
        jsonw_printf(&w, "%d,", i);
    CHECK(w.len > 40000 && !w.oom);
    jsonw_free(&w);
}

int main(void)
{
    RUN(exposition_structure);
    RUN(promtool_accepts);
    RUN(jsonw_writes);
    HARNESS_END();
}
