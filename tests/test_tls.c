/* Tests of HTTPS (tls_cert, tls_key; server/tls.c): the files are checked before the
 * server starts and every kind of wrong file is refused with a message naming it; a
 * server with them answers every endpoint over TLS with the answers the same server
 * gives over plain HTTP, presents the certificate it was given (a client trusting only
 * that certificate connects, one trusting the system's authorities does not), keeps
 * serving after plain-HTTP and garbage connections to its port; `balsa health` speaks
 * TLS with --tls or BALSA_TLS_CERT; a SIGHUP after the certificate was renewed on disk
 * serves the new one to new connections (open ones go on), and a broken renewal leaves
 * the previous one serving. The certificates are made with the openssl command
 * (the tests are skipped without it). */
#include <stdarg.h>
#include <sys/socket.h>

#include "harness.h"
#include "server_util.h"
#include "server/tls.h"

#define MODEL "demo=models/demo/demo.safetensors"
#define BODY "{\"inputs\": [[1, 2, 3, 4], [5, 6]], \"top_k\": 3}"

static char dir[128], cert[192], key[192], other_key[192], enc_key[192], cert2[192], key2[192];
static int have_openssl;

/* Runs a shell command (printf-style) with its output discarded; 1 when it exited 0. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char quiet[1100];
    snprintf(quiet, sizeof quiet, "(%s) >/dev/null 2>&1", cmd);
    return system(quiet) == 0;
}

/* A self-signed P-256 certificate for 127.0.0.1 and localhost, valid for days, with its
 * key. */
static int make_cert(const char *crt, const char *k, int days)
{
    return sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
              "-days %d -subj /CN=balsa-tls-test -addext "
              "subjectAltName=IP:127.0.0.1,DNS:localhost -keyout %s -out %s",
              days, k, crt);
}

static void copy_file(const char *from, const char *to)
{
    sh("cp %s %s", from, to);
}

/* tls_load on a pair; returns its result with the message in err. */
static int load(const char *c, const char *k, char *err, size_t n)
{
    tls_files t = {0};
    int rc = tls_load(c, k, &t, err, n);
    tls_free(&t);
    return rc;
}

TEST(tls_load_checks_the_files)
{
    if (!have_openssl)
        SKIP("no openssl command to make certificates");
    char err[512];
    tls_files t = {0};
    REQUIRE(tls_load(cert, key, &t, err, sizeof err) == 0);
    CHECK(t.chain == 1);
    CHECK_MSG(strstr(t.subject, "CN=balsa-tls-test") != NULL, "subject %s", t.subject);
    CHECK(t.cert && t.key && strstr(t.cert, "BEGIN CERTIFICATE"));
    CHECK(t.not_before > 0 && t.not_after > t.not_before);

    /* Validity: inside is quiet; after and before are said, with the subject. */
    char warn[512];
    CHECK(tls_validity_warning(&t, t.not_before + 60, warn, sizeof warn) == 0 && !warn[0]);
    CHECK(tls_validity_warning(&t, t.not_after + 1, warn, sizeof warn) == 1 &&
          strstr(warn, "expired on") && strstr(warn, "balsa-tls-test"));
    CHECK(tls_validity_warning(&t, t.not_before - 1, warn, sizeof warn) == 1 &&
          strstr(warn, "not valid before"));

    /* The same bytes are unchanged; a renewed pair on disk is a change. */
    char live_c[256], live_k[256];
    snprintf(live_c, sizeof live_c, "%s/live.crt", dir);
    snprintf(live_k, sizeof live_k, "%s/live.key", dir);
    copy_file(cert, live_c);
    copy_file(key, live_k);
    CHECK(tls_files_changed(&t, live_c, live_k) == 0);
    copy_file(cert2, live_c);
    CHECK(tls_files_changed(&t, live_c, live_k) == 1);
    CHECK(tls_files_changed(&t, live_c, "/nonexistent/key.pem") == 1);
    tls_free(&t);
    CHECK(t.cert == NULL && t.key == NULL);

    struct {
        const char *c, *k, *want;
    } bad[] = {
        {"/nonexistent/c.pem", key, "tls_cert: cannot open /nonexistent/c.pem"},
        {cert, "/nonexistent/k.pem", "tls_key: cannot open /nonexistent/k.pem"},
        {key, key, "holds no PEM certificate"},
        {cert, cert, "holds no PEM private key"},
        {cert, other_key, "is not the private key of the certificate in"},
        {cert2, key, "is not the private key of the certificate in"},
        {cert, enc_key, "decrypt it first"},
        {dir, key, "is not a regular file"},
        {"/dev/null", key, "is not a regular file"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        CHECK_MSG(load(bad[i].c, bad[i].k, err, sizeof err) == -1 && strstr(err, bad[i].want),
                  "%s + %s: \"%s\", wanted \"%s\"", bad[i].c, bad[i].k, err, bad[i].want);
    }
    char empty[256];
    snprintf(empty, sizeof empty, "%s/empty.pem", dir);
    REQUIRE(su_write_file(empty, ""));
    CHECK(load(empty, key, err, sizeof err) == -1 && strstr(err, "is empty"));
}

/* Starts a server that must fail during start-up; 1 when it did, with want in its log. */
static int start_fails(const char *const *extra, const char *want)
{
    su_server sv;
    if (su_start(&sv, extra) == 0) {
        su_stop(&sv, 10);
        printf("  started with settings it should refuse\n");
        return 0;
    }
    int ok = su_log_has(&sv, want, 0);
    if (!ok)
        printf("  log %s lacks \"%s\"\n", sv.log, want);
    return ok;
}

TEST(bad_tls_settings_stop_the_start)
{
    if (!have_openssl)
        SKIP("no openssl command to make certificates");
    const char *only_cert[] = {"--model", MODEL, "--tls-cert", cert, NULL};
    CHECK(start_fails(only_cert, "tls_key: not set, but tls_cert is: HTTPS needs both"));
    const char *mismatch[] = {"--model", MODEL, "--tls-cert", cert, "--tls-key", other_key, NULL};
    CHECK(start_fails(mismatch, "is not the private key of the certificate in"));
    const char *missing[] = {"--model", MODEL, "--tls-cert", "/nonexistent.pem", "--tls-key",
                             key, NULL};
    CHECK(start_fails(missing, "tls_cert: cannot open /nonexistent.pem"));
}

/* One request on a fresh connection over HTTPS trusting ca (NULL: the system's
 * authorities); returns curl's result, the status in *code and the body in *body. */
static CURLcode https_get(int port, const char *ca, const char *path, long *code)
{
    char url[128];
    snprintf(url, sizeof url, "https://127.0.0.1:%d%s", port, path);
    CURL *h = curl_easy_init();
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, su_on_body);
    su_resp r = {0};
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 20L);
    if (ca)
        curl_easy_setopt(h, CURLOPT_CAINFO, ca);
    CURLcode cc = curl_easy_perform(h);
    *code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, code);
    curl_easy_cleanup(h);
    free(r.body);
    return cc;
}

TEST(https_serves_what_http_serves)
{
    if (!have_openssl)
        SKIP("no openssl command to make certificates");
    const char *plain_args[] = {"--model", MODEL, NULL};
    const char *tls_args[] = {"--model", MODEL, "--tls-cert", cert, "--tls-key", key, NULL};
    su_server plain, tls;
    su_tls_ca = NULL;
    REQUIRE(su_start(&plain, plain_args) == 0);
    su_tls_ca = cert;
    if (su_start(&tls, tls_args) != 0) {
        su_tls_ca = NULL;
        su_stop(&plain, 10);
        REQUIRE(!"the TLS server started");
    }
    CHECK(su_log_has(&tls, "serving on https://127.0.0.1:", 0));
    CHECK(su_log_has(&tls, "TLS 1.2/1.3 with CN=balsa-tls-test (1 certificate in", 0));

    /* The same answers, byte for byte, on every kind of endpoint. */
    const struct {
        const char *method, *path, *body;
    } reqs[] = {
        {"POST", "/infer", BODY},
        {"GET", "/models", NULL},
        {"GET", "/v2/models/demo", NULL},
        {"POST", "/v2/models/demo/infer",
         "{\"inputs\": [{\"name\": \"tokens\", \"shape\": [1, 3], \"datatype\": \"INT32\", "
         "\"data\": [1, 2, 3]}]}"},
        {"POST", "/infer", "{\"inputs\": [[1, 2, 3]], \"bad\": 1}"},
        {"GET", "/nowhere", NULL},
    };
    for (size_t i = 0; i < sizeof reqs / sizeof *reqs; i++) {
        su_resp a, b;
        su_tls_ca = NULL;
        su_request_str(plain.port, reqs[i].method, reqs[i].path, reqs[i].body,
                       reqs[i].body ? "application/json" : NULL, &a);
        su_tls_ca = cert;
        su_request_str(tls.port, reqs[i].method, reqs[i].path, reqs[i].body,
                       reqs[i].body ? "application/json" : NULL, &b);
        CHECK_MSG(b.cc == CURLE_OK && a.code == b.code && strcmp(a.body, b.body) == 0,
                  "%s %s: http %ld \"%.80s\", https %ld (curl %d) \"%.80s\"", reqs[i].method,
                  reqs[i].path, a.code, a.body, b.code, (int)b.cc, b.body);
        free(a.body);
        free(b.body);
    }
    CHECK(su_metric(tls.port, "balsa_http_requests_total{handler=\"/infer\",code=\"200\"}") == 1);
    /* The certificate's expiry is a gauge (for alerts), the one the files say; none
     * without TLS. */
    tls_files t = {0};
    char err[256];
    REQUIRE(tls_load(cert, key, &t, err, sizeof err) == 0);
    CHECK(su_metric(tls.port, "balsa_tls_certificate_expiry_timestamp_seconds") ==
          (double)t.not_after);
    tls_free(&t);
    su_tls_ca = NULL;
    CHECK(su_metric(plain.port, "balsa_tls_certificate_expiry_timestamp_seconds") == -1);
    su_tls_ca = cert;

    /* The certificate presented is the one given: trusting it verifies; trusting only the
     * system's authorities does not. */
    long code;
    CHECK(https_get(tls.port, cert, "/healthz", &code) == CURLE_OK && code == 200);
    CURLcode cc = https_get(tls.port, NULL, "/healthz", &code);
    CHECK_MSG(cc == CURLE_PEER_FAILED_VERIFICATION, "curl %d", (int)cc);

    /* Plain HTTP and garbage on the TLS port get nothing, and serving goes on. */
    su_resp r;
    su_tls_ca = NULL;
    su_request_str(tls.port, "GET", "/healthz", NULL, NULL, &r);
    CHECK_MSG(r.cc != CURLE_OK || r.code != 200, "plain HTTP answered %ld", r.code);
    free(r.body);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)tls.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        static const char junk[] = "\x16\x03\x01\xff\xff garbage that is not a ClientHello";
        CHECK(write(fd, junk, sizeof junk) == (ssize_t)sizeof junk);
    }
    if (fd >= 0)
        close(fd);
    su_tls_ca = cert;
    su_request_str(tls.port, "POST", "/infer", BODY, "application/json", &r);
    CHECK_MSG(r.cc == CURLE_OK && r.code == 200, "after the junk: curl %d, %ld", (int)r.cc,
              r.code);
    free(r.body);

    CHECK(su_stop(&tls, 20) == 0);
    su_tls_ca = NULL;
    CHECK(su_stop(&plain, 20) == 0);
}

/* Runs `balsa health --port P` plus arg (or NULL) with BALSA_TLS_CERT set to env (or
 * unset); returns its exit status. */
static int health(int port, const char *arg, const char *env)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s%s %s health --port %d %s >/dev/null 2>&1",
             env ? "BALSA_TLS_CERT=" : "env -u BALSA_TLS_CERT", env ? env : "",
             getenv("BALSA_BIN"), port, arg ? arg : "");
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(balsa_health_speaks_tls)
{
    if (!have_openssl)
        SKIP("no openssl command to make certificates");
    const char *tls_args[] = {"--model", MODEL, "--tls-cert", cert, "--tls-key", key, NULL};
    su_server sv;
    su_tls_ca = cert;
    REQUIRE(su_start(&sv, tls_args) == 0);
    CHECK(health(sv.port, "--tls", NULL) == 0);
    CHECK(health(sv.port, "--tls --path /readyz", NULL) == 0);
    CHECK(health(sv.port, NULL, cert) == 0);
    CHECK(health(sv.port, NULL, NULL) == 1);
    CHECK(health(sv.port, "--tls --path /nowhere", NULL) == 1);
    CHECK(su_stop(&sv, 20) == 0);
    su_tls_ca = NULL;
    /* And a plain server is not asked over TLS. */
    const char *plain_args[] = {"--model", MODEL, NULL};
    REQUIRE(su_start(&sv, plain_args) == 0);
    CHECK(health(sv.port, NULL, NULL) == 0);
    CHECK(health(sv.port, "--tls", NULL) == 1);
    CHECK(su_stop(&sv, 20) == 0);
}

/* CURLE_OK when a request on h (kept alive across calls) to /healthz succeeds. */
static CURLcode kept_alive_get(CURL *h, int port)
{
    su_resp r;
    su_request_on(h, port, "GET", "/healthz", NULL, 0, NULL, NULL, &r);
    free(r.body);
    return r.cc == CURLE_OK && r.code == 200 ? CURLE_OK : (r.cc ? r.cc : CURLE_HTTP_RETURNED_ERROR);
}

TEST(sighup_serves_a_renewed_certificate)
{
    if (!have_openssl)
        SKIP("no openssl command to make certificates");
    char live_c[256], live_k[256];
    snprintf(live_c, sizeof live_c, "%s/hup.crt", dir);
    snprintf(live_k, sizeof live_k, "%s/hup.key", dir);
    copy_file(cert, live_c);
    copy_file(key, live_k);
    const char *args[] = {"--model", MODEL, "--tls-cert", live_c, "--tls-key", live_k, NULL};
    su_server sv;
    su_tls_ca = cert;
    REQUIRE(su_start(&sv, args) == 0);
    tls_files one = {0}, two = {0};
    char err[256];
    REQUIRE(tls_load(cert, key, &one, err, sizeof err) == 0);
    REQUIRE(tls_load(cert2, key2, &two, err, sizeof err) == 0);
    CHECK(one.not_after != two.not_after);
    CHECK(su_metric(sv.port, "balsa_tls_certificate_expiry_timestamp_seconds") ==
          (double)one.not_after);
    /* A connection made before the renewal, kept alive across it. */
    CURL *kept = curl_easy_init();
    CHECK(kept_alive_get(kept, sv.port) == CURLE_OK);

    /* Unchanged files: nothing reloaded. */
    kill(sv.pid, SIGHUP);
    CHECK(su_log_has(&sv, "got SIGHUP", 10));
    usleep(200000);
    CHECK(!su_log_has(&sv, "TLS certificate reloaded", 0));

    /* Renewed files: new handshakes get the new certificate; the open connection goes on. */
    copy_file(cert2, live_c);
    copy_file(key2, live_k);
    kill(sv.pid, SIGHUP);
    CHECK(su_log_has(&sv, "SIGHUP: TLS certificate reloaded: CN=balsa-tls-test", 10));
    long code;
    CURLcode cc = https_get(sv.port, cert2, "/readyz", &code);
    CHECK_MSG(cc == CURLE_OK && code == 200, "trusting the new certificate: curl %d", (int)cc);
    cc = https_get(sv.port, cert, "/readyz", &code);
    CHECK_MSG(cc == CURLE_PEER_FAILED_VERIFICATION, "trusting only the old one: curl %d", (int)cc);
    CHECK(kept_alive_get(kept, sv.port) == CURLE_OK);
    su_tls_ca = cert2;
    CHECK(su_metric(sv.port, "balsa_tls_certificate_expiry_timestamp_seconds") ==
          (double)two.not_after);

    /* A broken renewal leaves the last good pair serving, and says why. */
    REQUIRE(su_write_file(live_c, "not a certificate\n"));
    kill(sv.pid, SIGHUP);
    CHECK(su_log_has(&sv, "the TLS certificate was not reloaded (tls_cert: ", 10));
    cc = https_get(sv.port, cert2, "/readyz", &code);
    CHECK_MSG(cc == CURLE_OK && code == 200, "after a broken renewal: curl %d", (int)cc);
    curl_easy_cleanup(kept);
    tls_free(&one);
    tls_free(&two);
    CHECK(su_stop(&sv, 20) == 0);
    su_tls_ca = NULL;
}

int main(void)
{
    su_init();
    curl_global_init(CURL_GLOBAL_ALL);
    snprintf(dir, sizeof dir, "/tmp/balsa_tls_%d", (int)getpid());
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    snprintf(other_key, sizeof other_key, "%s/other.pem", dir);
    snprintf(enc_key, sizeof enc_key, "%s/enc.pem", dir);
    snprintf(cert2, sizeof cert2, "%s/cert2.pem", dir);
    snprintf(key2, sizeof key2, "%s/key2.pem", dir);
    have_openssl = sh("mkdir -p %s && command -v openssl", dir) && make_cert(cert, key, 2) &&
                   make_cert(cert2, key2, 3) &&
                   sh("openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:prime256v1 "
                      "-out %s",
                      other_key) &&
                   sh("openssl pkey -in %s -aes256 -passout pass:balsa-test-pw -out %s", key,
                      enc_key);
    RUN(tls_load_checks_the_files);
    RUN(bad_tls_settings_stop_the_start);
    RUN(https_serves_what_http_serves);
    RUN(balsa_health_speaks_tls);
    RUN(sighup_serves_a_renewed_certificate);
    su_kill_children();
    sh("rm -rf %s", dir);
    curl_global_cleanup();
    HARNESS_END();
}
