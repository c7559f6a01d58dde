/* Tests for the server configuration (server/config.c): defaults, the JSON file with its
 * error messages (line numbers for syntax, key paths for values), the environment and
 * flag layers and their precedence, and per-model batching settings. */
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "models/json_text.h"
#include "server/auth.h"
#include "server/config.h"

static const char *env_names[8], *env_values[8];
static int env_n;

static const char *fake_env(const char *name)
{
    for (int i = 0; i < env_n; i++)
        if (strcmp(env_names[i], name) == 0)
            return env_values[i];
    return NULL;
}

static int load(config *c, const char *text, char *err, size_t errlen)
{
    return config_load_text(c, text, strlen(text), "test.json", err, errlen);
}

TEST(defaults_and_demo_model)
{
    config c;
    char err[512];
    config_defaults(&c);
    CHECK(c.port == 8080);
    CHECK(strcmp(c.host, "127.0.0.1") == 0);
    CHECK(strcmp(c.backend, "auto") == 0);
    REQUIRE(config_finish(&c, err, sizeof err) == 0);
    REQUIRE(c.nmodels == 1);
    CHECK(strcmp(c.models[0].name, "fortunes") == 0);
    CHECK(strcmp(c.models[0].path, "models/fortunes/fortunes-b90.safetensors") == 0);
    CHECK(c.models[0].batching.max_batch_size == c.batching.max_batch_size);
    CHECK(c.models[0].batching.request_timeout_ms == 30000);
}

TEST(example_file_loads)
{
    config c;
    char err[512] = "";
    config_defaults(&c);
    int rc = config_load_file(&c, "config/balsa.json", err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    CHECK(config_finish(&c, err, sizeof err) == 0);
    CHECK(c.nmodels == 1);
    CHECK(strcmp(c.models[0].name, "fortunes") == 0);
}

TEST(file_values)
{
    config c;
    char err[512] = "";
    config_defaults(&c);
    const char *t = "{\"port\": 9000, \"host\": \"::1\", \"backend\": \"cpu\", \"access_log\": false,\n"
                    " \"max_batch_size\": 8, \"body_limit\": 4096,\n"
                    " \"models\": [{\"name\": \"a\", \"path\": \"a.st\", \"max_batch_size\": 2},\n"
                    "            {\"path\": \"dir/b.safetensors\"}]}";
    REQUIRE(load(&c, t, err, sizeof err) == 0);
    REQUIRE(config_finish(&c, err, sizeof err) == 0);
    CHECK(c.port == 9000);
    CHECK(strcmp(c.host, "::1") == 0);
    CHECK(strcmp(c.backend, "cpu") == 0);
    CHECK(c.access_log == 0);
    CHECK(c.body_limit == 4096);
    REQUIRE(c.nmodels == 2);
    CHECK(strcmp(c.models[0].name, "a") == 0);
    CHECK(c.models[0].batching.max_batch_size == 2); /* its own value */
    CHECK(strcmp(c.models[1].name, "b") == 0);      /* named after the file */
    CHECK(c.models[1].batching.max_batch_size == 8); /* the global value */
}

TEST(syntax_error_names_line)
{
    config c;
    char err[512] = "";
    config_defaults(&c);
    REQUIRE(load(&c, "{\n  \"port\": 80,\n  \"host\": \"x\"\n  \"backend\": \"cpu\"\n}", err,
                 sizeof err) != 0);
    CHECK_MSG(strncmp(err, "test.json:4:", 12) == 0, "%s", err);
    CHECK_MSG(strstr(err, "syntax") != NULL, "%s", err);
    REQUIRE(load(&c, "{\"port\": 80}\n\n  x", err, sizeof err) != 0);
    CHECK_MSG(strncmp(err, "test.json:3:3:", 14) == 0, "%s", err);
    REQUIRE(load(&c, "", err, sizeof err) != 0);
    CHECK_MSG(strncmp(err, "test.json:1:", 12) == 0, "%s", err);
    /* a NUL in a string (cJSON would end the string there: this path would name "a") */
    REQUIRE(load(&c, "{\"models\": [\n {\"path\": \"a\\u0000b\"}]}", err, sizeof err) != 0);
    CHECK_MSG(strcmp(err, "test.json:2:13: a string holds a NUL character (not accepted: it would "
                          "end the string there)") == 0, "%s", err);
    const char raw[] = "{\"host\": \"::1\0\"}";
    REQUIRE(config_load_text(&c, raw, sizeof raw - 1, "test.json", err, sizeof err) != 0);
    CHECK_MSG(strncmp(err, "test.json:1:14: a string holds a NUL", 36) == 0, "%s", err);
    /* control characters, which cJSON takes for white space between tokens and keeps in
     * strings; JSON allows neither (after the object too, where isspace() would pass \v) */
    REQUIRE(load(&c, "{\"port\": 80,\f\"host\": \"x\"}", err, sizeof err) != 0);
    CHECK_MSG(strcmp(err, "test.json:1:13: control character 0x0c (" JSON_CONTROL_RULE ")") == 0,
              "%s", err);
    REQUIRE(load(&c, "{\"port\": 80}\n\v", err, sizeof err) != 0);
    CHECK_MSG(strncmp(err, "test.json:2:1: control character 0x0b", 37) == 0, "%s", err);
    REQUIRE(load(&c, "{\"host\": \"a\tb\"}", err, sizeof err) != 0);
    CHECK_MSG(strncmp(err, "test.json:1:12: control character 0x09", 38) == 0, "%s", err);
    /* numbers strtod reads but JSON does not have: a port of 08080 would be 8080 */
    REQUIRE(load(&c, "{\"host\": \"x\",\n \"port\": 08080}", err, sizeof err) != 0);
    CHECK_MSG(strcmp(err, "test.json:2:10: number \"08080\" is not JSON (" JSON_NUMBER_RULE ")") ==
                  0, "%s", err);
    REQUIRE(load(&c, "{\"port\": 8080.}", err, sizeof err) != 0);
    CHECK_MSG(strstr(err, "test.json:1:10: number \"8080.\" is not JSON") == err, "%s", err);
}

TEST(semantic_errors_name_key)
{
    config c;
    char err[512] = "";
    struct {
        const char *text, *want;
    } cases[] = {
        {"{\"prot\": 80}", "test.json: prot: unknown key"},
        {"{\"port\": 70000}", "test.json: port: must be an integer in [0, 65535], got 70000"},
        {"{\"port\": 80.5}", "test.json: port: must be an integer"},
        {"{\"port\": \"80\"}", "test.json: port: must be a number"},
        {"{\"backend\": \"tpu\"}", "test.json: backend: \"tpu\" is not one of auto, cpu, cuda"},
        {"{\"host\": \"localhost\"}", "test.json: host: \"localhost\" is not an IPv4"},
        {"{\"access_log\": 1}", "test.json: access_log: must be true or false"},
        {"{\"models\": {}}", "test.json: models: must be an array"},
        {"{\"models\": [{\"name\": \"a\"}]}", "test.json: models[0]: \"path\" is missing"},
        {"{\"models\": [{\"path\": \"p\"}, {\"path\": \"q\", \"max_batch_size\": 0}]}",
         "test.json: models[1].max_batch_size: must be an integer in [1, 4096], got 0"},
        {"{\"models\": [{\"path\": \"p\", \"port\": 1}]}", "test.json: models[0].port: unknown key"},
        {"{\"models\": [{\"name\": \"a b\", \"path\": \"p\"}]}", "models[0].name: model name \"a b\""},
        {"[1]", "test.json: the top level must be a JSON object"},
        {"{\"api_key\": \"too-short\"}", "test.json: api_key: must be empty (no key) or 16 to 128"},
        {"{\"cors_origins\": \"app.example\"}", "test.json: cors_origins: \"app.example\" is not an origin"},
        {"{\"cors_origins\": \"https://a.example,https://b.example/path\"}",
         "test.json: cors_origins: \"https://b.example/path\" is not an origin"},
        {"{\"cors_origins\": \"https://a.example,,https://b.example\"}",
         "test.json: cors_origins: \"\" is not an origin"},
        {"{\"api_key\": \"sixteen chars and spaces\"}", "test.json: api_key: must be empty"},
        /* found by tests/fuzz (fuzz_config): a nameless model whose file name is not a
         * model name was blamed on a --model flag the file never gave */
        {"{\"models\": [{\"path\": \" satx.faensors\"}]}",
         "test.json: models[0] (no \"name\", so named after its path): model name \" satx\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        config_defaults(&c);
        int rc = load(&c, cases[i].text, err, sizeof err);
        CHECK_MSG(rc != 0 && strstr(err, cases[i].want) != NULL, "case %zu: got \"%s\"", i,
                  rc ? err : "success");
    }
    config_defaults(&c);
    REQUIRE(load(&c, "{\"api_key\": \"0123456789abcdef\"}", err, sizeof err) == 0);
    CHECK(!strcmp(c.api_key, "0123456789abcdef"));
    config_defaults(&c);
    REQUIRE(load(&c, "{\"cors_origins\": \"https://a.example:8443,http://localhost:3000\"}", err,
                 sizeof err) == 0);
    CHECK(!strcmp(c.cors_origins, "https://a.example:8443,http://localhost:3000"));
    config_defaults(&c);
    REQUIRE(load(&c, "{\"cors_origins\": \"*\"}", err, sizeof err) == 0);
    /* Certificate and key: both or neither, whichever layers set them. */
    config_defaults(&c);
    REQUIRE(load(&c, "{\"tls_cert\": \"/c.pem\"}", err, sizeof err) == 0);
    CHECK(config_finish(&c, err, sizeof err) == -1 &&
          !strcmp(err, "tls_key: not set, but tls_cert is: HTTPS needs both (or neither)"));
    REQUIRE(load(&c, "{\"tls_key\": \"/k.pem\"}", err, sizeof err) == 0);
    CHECK(config_finish(&c, err, sizeof err) == 0);
    config_defaults(&c);
    REQUIRE(load(&c, "{\"models\": [{\"name\": \"a\", \"path\": \"p\"}, {\"name\": \"a\", \"path\": \"q\"}]}",
                 err, sizeof err) == 0);
    CHECK(config_finish(&c, err, sizeof err) != 0);
    CHECK_MSG(strstr(err, "\"a\" is used twice") != NULL, "%s", err);
    /* a '=' in a nameless model's path is part of its file name, not NAME=PATH */
    config_defaults(&c);
    REQUIRE(load(&c, "{\"models\": [{\"path\": \"m=1.safetensors\"}]}", err, sizeof err) != 0);
    CHECK_MSG(strstr(err, "model name \"m=1\"") != NULL, "%s", err);
    config_defaults(&c);
    REQUIRE(load(&c, "{\"models\": [{\"path\": \"dir/v=2/m-1.safetensors\"}]}", err, sizeof err) == 0);
    CHECK(strcmp(c.models[0].name, "m-1") == 0 && strcmp(c.models[0].path, "dir/v=2/m-1.safetensors") == 0);
    CHECK(config_load_file(&c, "/nonexistent/balsa.json", err, sizeof err) != 0);
    CHECK_MSG(strstr(err, "/nonexistent/balsa.json: cannot open") != NULL, "%s", err);
}

TEST(precedence_flags_env_file)
{
    config c;
    char err[512] = "";
    config_defaults(&c);
    REQUIRE(load(&c, "{\"port\": 1000, \"threads\": 3, \"max_batch_size\": 4, \"queue_capacity\": 7,"
                     " \"models\": [{\"name\": \"m\", \"path\": \"m.st\", \"max_batch_size\": 2,"
                     " \"queue_capacity\": 5}]}",
                 err, sizeof err) == 0);
    env_n = 0;
    env_names[env_n] = "BALSA_PORT", env_values[env_n++] = "2000";
    env_names[env_n] = "BALSA_THREADS", env_values[env_n++] = "5";
    env_names[env_n] = "BALSA_QUEUE_CAPACITY", env_values[env_n++] = "9";
    REQUIRE(config_apply_env(&c, fake_env, err, sizeof err) == 0);
    char *argv[] = {"serve", "--port", "3000", "--max-batch-size=1", "--config", "x.json"};
    REQUIRE(config_apply_flags(&c, 6, argv, err, sizeof err) == 0);
    REQUIRE(config_finish(&c, err, sizeof err) == 0);
    CHECK(c.port == 3000);   /* flag over env over file */
    CHECK(c.threads == 5);   /* env over file */
    REQUIRE(c.nmodels == 1);
    /* A key set by env or flag holds for every model, over the model's own value. */
    CHECK(c.models[0].batching.max_batch_size == 1);
    CHECK(c.models[0].batching.queue_capacity == 9);
    const char *file = config_find_file(6, argv, fake_env);
    CHECK(file && strcmp(file, "x.json") == 0);
    env_n = 0;
}

TEST(model_flags_and_env)
{
    config c;
    char err[512] = "";
    config_defaults(&c);
    REQUIRE(load(&c, "{\"models\": [{\"name\": \"f\", \"path\": \"f.st\"}]}", err, sizeof err) == 0);
    env_n = 0;
    env_names[env_n] = "BALSA_MODELS", env_values[env_n++] = "x=/m/x.st,/m/y.safetensors";
    REQUIRE(config_apply_env(&c, fake_env, err, sizeof err) == 0);
    REQUIRE(c.nmodels == 2);
    CHECK(strcmp(c.models[0].name, "x") == 0 && strcmp(c.models[0].path, "/m/x.st") == 0);
    CHECK(strcmp(c.models[1].name, "y") == 0);
    char *argv[] = {"serve", "--model", "a=1.st", "--model", "b=2.st"};
    REQUIRE(config_apply_flags(&c, 5, argv, err, sizeof err) == 0);
    REQUIRE(c.nmodels == 2);
    CHECK(strcmp(c.models[0].name, "a") == 0 && strcmp(c.models[1].path, "2.st") == 0);
    env_n = 0;
}

TEST(bad_flags_and_env)
{
    config c;
    char err[512] = "";
    config_defaults(&c);
    char *a1[] = {"serve", "--prot", "1"};
    CHECK(config_apply_flags(&c, 3, a1, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "unknown option \"--prot\"") != NULL, "%s", err);
    char *a2[] = {"serve", "--port"};
    CHECK(config_apply_flags(&c, 2, a2, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "--port: needs a value") != NULL, "%s", err);
    char *a3[] = {"serve", "--port", "eighty"};
    CHECK(config_apply_flags(&c, 3, a3, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "--port: \"eighty\" is not a number") != NULL, "%s", err);
    char *a4[] = {"serve", "--model", "bad name=x"};
    CHECK(config_apply_flags(&c, 3, a4, err, sizeof err) == -1);
    char *a5[] = {"serve", "--access-log", "maybe"};
    CHECK(config_apply_flags(&c, 3, a5, err, sizeof err) == -1);
    env_n = 0;
    env_names[env_n] = "BALSA_MAX_BATCH_SIZE", env_values[env_n++] = "0";
    CHECK(config_apply_env(&c, fake_env, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "BALSA_MAX_BATCH_SIZE: must be an integer in [1, 4096], got 0") != NULL,
              "%s", err);
    env_n = 0;
}

/* Writes text to a temporary file; returns its path (static). */
static const char *key_file(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/balsa_keys_%d.txt", (int)getpid());
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    return path;
}

/* api_key plus api_key_file: comments, blank lines, spaces and CRs skipped, repeats counted
 * once; each bad line named by its number, never by its content; the Bearer check takes
 * every key and nothing else. */
TEST(api_key_file_reads_and_checks)
{
    auth_keys k;
    char err[512];
    const char *f = key_file("# rotation: new key first\nnew-key-0123456789abcdef\n\n"
                             "  old-key-0123456789abcdef \r\nnew-key-0123456789abcdef\n");
    REQUIRE(auth_keys_read("cfg-key-0123456789abcdef", f, &k, err, sizeof err) == 0);
    CHECK(k.n == 3);
    CHECK(auth_keys_accept(&k, "Bearer new-key-0123456789abcdef"));
    CHECK(auth_keys_accept(&k, "bearer   old-key-0123456789abcdef"));
    CHECK(auth_keys_accept(&k, "Bearer cfg-key-0123456789abcdef"));
    CHECK(!auth_keys_accept(&k, "Bearer old-key-0123456789abcde"));
    CHECK(!auth_keys_accept(&k, "Bearer old-key-0123456789abcdefX"));
    CHECK(!auth_keys_accept(&k, "Basic old-key-0123456789abcdef"));
    CHECK(!auth_keys_accept(&k, NULL));
    auth_keys same;
    REQUIRE(auth_keys_read("", key_file("old-key-0123456789abcdef\ncfg-key-0123456789abcdef\n"
                                        "new-key-0123456789abcdef\n"),
                           &same, err, sizeof err) == 0);
    CHECK(auth_keys_same(&k, &same));
    same.n--;
    CHECK(!auth_keys_same(&k, &same));
    REQUIRE(auth_keys_read("", "", &k, err, sizeof err) == 0);
    CHECK(k.n == 0 && !auth_keys_accept(&k, "Bearer anything-at-all-here"));

    static char many[4096];
    many[0] = 0;
    for (int i = 0; i < AUTH_MAX_KEYS + 1; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "key-number-%02d-0123456789\n", i);
    struct {
        const char *text, *want;
    } bad[] = {
        {"good-key-0123456789abc\nshort\n", ":2: a key must be 16 to 128"},
        {"# c\n\nhas a space in it 0123456789\n", ":3: a key must be 16 to 128"},
        {many, ":17: more than 16 keys"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        f = key_file(bad[i].text);
        CHECK_MSG(auth_keys_read("", f, &k, err, sizeof err) == -1 && strstr(err, bad[i].want) &&
                      strstr(err, f) && !strstr(err, "short") && k.n == 0,
                  "case %zu: %s", i, err);
    }
    static char longline[2100];
    memset(longline, 'a', 2000);
    longline[2000] = '\n';
    CHECK(auth_keys_read("", key_file(longline), &k, err, sizeof err) == -1 &&
          strstr(err, ":1: "));
    unlink(f);
    CHECK(auth_keys_read("", "/nonexistent/keys", &k, err, sizeof err) == -1 &&
          strstr(err, "api_key_file: cannot open /nonexistent/keys"));
}

int main(void)
{
    RUN(defaults_and_demo_model);
    RUN(example_file_loads);
    RUN(file_values);
    RUN(syntax_error_names_line);
    RUN(semantic_errors_name_key);
    RUN(precedence_flags_env_file);
    RUN(model_flags_and_env);
    RUN(bad_flags_and_env);
    RUN(api_key_file_reads_and_checks);
    HARNESS_END();
}
