#!/usr/bin/env bash
# Chaos test: `balsa serve` built with AddressSanitizer and UndefinedBehaviorSanitizer
# (build/<config>-address-undefined) serves the trained fortunes model on loopback under
# tests/chaos/load.py's mixed, misbehaving load (broken bodies, streams, sequences, clients
# that leave mid-answer) while its configuration is changed and reloaded by SIGHUP every
# few seconds (and its model file touched, which model_poll_ms picks up), and stopped by a
# SIGTERM sent while one more reload runs; then a second run
# is cut by SIGTERM under load; then a third serves HTTPS under the same load over TLS
# (plus plain HTTP and abandoned handshakes on its port) while SIGHUPs renew its
# certificate and rotate its API keys. Passes when every answer was one of 200, 204, 400,
# 401, 403, 404, 409, 413, 415 and 503, the server kept serving, drained and exited 0, and
# its log holds no sanitizer report (LeakSanitizer runs at exit). Ends with the harness line.
# Usage: tests/chaos/run.sh [SECONDS]   (default 20 per run; `make chaos`)
set -uo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-20}
# The build's first line names its object tree: "balsa build: ... -> build/DIR with ...".
DIR=$(make -s SANITIZE=address,undefined all 2>&1 | sed -n 's/^balsa build: .* -> \(build\/[^ ]*\).*/\1/p') &&
    [ -x "$DIR/balsa" ] || { echo "the sanitizer build failed"; echo "0 passed, 1 failed, 0 skipped"; exit 1; }
BIN=$DIR/balsa
TMP=$(mktemp -d /tmp/balsa_chaos.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
readyz() { # the status of GET /readyz (000: no answer), asked from python: CI may lack curl
    python3 - "$PORT" <<'PY'
import os, ssl, sys, urllib.request, urllib.error
ca = os.environ.get("CHAOS_TLS_CA")
ctx = ssl.create_default_context(cafile=ca) if ca else None
try:
    print(urllib.request.urlopen(f"{'https' if ca else 'http'}://127.0.0.1:{sys.argv[1]}/readyz",
                                 timeout=5, context=ctx).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print("000")
PY
}
passed=0 failed=0
KEY=chaos-test-key-0123456789
result() { # result NAME OK
    if [ "$2" = 1 ]; then echo "ok   $1"; passed=$((passed + 1)); else echo "FAIL $1"; failed=$((failed + 1)); fi
}
cp models/fortunes/fortunes-b90.safetensors "$TMP/lm.safetensors"
config() { # config MAX_BATCH
    cat > "$TMP/balsa.json" <<JSON
{"host": "127.0.0.1", "port": $PORT, "access_log": false, "drain_delay_ms": 200,
 "model_control": true, "model_poll_ms": 300, "cors_origins": "https://app.example",${TLS_KEYS:-}
 "max_batch_size": $1, "queue_capacity": 64,
 "body_limit": 65536,
 "models": [{"name": "lm", "path": "$TMP/lm.safetensors",
             "max_sequences": 8, "sequence_idle_ms": 500},
            {"name": "demo", "path": "models/demo/demo.safetensors", "max_sequences": 2}]}
JSON
}
start() {
    BALSA_API_KEY=$KEY "$BIN" serve --config "$TMP/balsa.json" >"$TMP/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 300); do [ "$(readyz)" = 200 ] && return 0; sleep 0.1; done
    echo "  server not ready; log:"; tail -5 "$TMP/server.log"; return 1
}
stop() { # stop: SIGTERM, then the exit status (124: still running after 60 s)
    kill -TERM "$PID"
    for _ in $(seq 600); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$PID" 2>/dev/null; then kill -9 "$PID"; wait "$PID" 2>/dev/null; PID=; return 124; fi
    wait "$PID"; local rc=$?; PID=; return $rc
}
REPORT="ERROR: (Address|Leak)Sanitizer|runtime error:"
clean_log() { # 0 when the server's log holds no sanitizer report; else shows it (stderr), 1
    grep -qE "$REPORT" "$TMP/server.log" || return 0
    grep -A12 -E "$REPORT" "$TMP/server.log" | head -40 >&2
    return 1
}

# 1. load with reloads by SIGHUP (max_batch_size changed each time, so each one reloads)
config 16
if start; then
    python3 tests/chaos/load.py "$PORT" 16 "$SECS" "$KEY" >"$TMP/load.log" 2>&1 &
    LOAD=$!
    for i in $(seq 1 $((SECS / 4))); do
        sleep 2; touch "$TMP/lm.safetensors" # picked up by model_poll_ms
        sleep 2; config $((16 + i)); kill -HUP "$PID"
    done
    wait "$LOAD"; load_ok=$?
    cat "$TMP/load.log"
    reloads=$(grep -c "new settings" "$TMP/server.log")
    polled=$(grep -c "changed on disk" "$TMP/server.log")
    ready=$(readyz)
    # SIGTERM while a reload runs: the main thread is not waiting for signals then
    config 99; kill -HUP "$PID"; sleep 0.02
    stop; rc=$?
    echo "  reloads: $reloads by SIGHUP, $polled by polling; /readyz after the load: $ready; exit status $rc"
    result "chaos load with SIGHUP reloads: only expected answers" "$([ $load_ok = 0 ] && echo 1)"
    # (the load's own reloads over HTTP often reload a touched file before the poll's second
    # look does, so polling may count none)
    result "the server reloaded and still serves after it" \
        "$([ "$reloads" -ge 1 ] && [ "$ready" = 200 ] && echo 1)"
    result "then it drains and exits 0, with no sanitizer report" "$([ $rc = 0 ] && clean_log && echo 1)"
else
    result "server starts" 0
fi

# 2. SIGTERM in the middle of the load: admitted requests finish, exit 0, clean
config 16
if start; then
    python3 tests/chaos/load.py "$PORT" 16 $((SECS / 2)) "$KEY" >"$TMP/load2.log" 2>&1 &
    LOAD=$!
    sleep $((SECS / 4 + 1))
    stop; rc=$?
    wait "$LOAD"
    grep "outcomes" "$TMP/load2.log"
    echo "  $(grep -E 'finishing|drained' "$TMP/server.log" | tr '\n' ' ')"
    result "SIGTERM under chaos load: exit 0, no sanitizer report" "$([ $rc = 0 ] && clean_log && echo 1)"
else
    result "server starts" 0
fi
# 3. HTTPS: the load over TLS while SIGHUPs renew the certificate and rotate the API keys
# (the load's key stays; a second one comes and goes)
if command -v openssl >/dev/null; then
    for n in 1 2; do
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj /CN=balsa-chaos -addext subjectAltName=IP:127.0.0.1 \
            -keyout "$TMP/key$n.pem" -out "$TMP/cert$n.pem" >/dev/null 2>&1
    done
    cat "$TMP/cert1.pem" "$TMP/cert2.pem" >"$TMP/ca.pem"
    cp "$TMP/cert1.pem" "$TMP/tls.crt"; cp "$TMP/key1.pem" "$TMP/tls.key"
    echo "$KEY" >"$TMP/keys.txt"
    TLS_KEYS=" \"tls_cert\": \"$TMP/tls.crt\", \"tls_key\": \"$TMP/tls.key\",
 \"api_key_file\": \"$TMP/keys.txt\","
    config 16
    export CHAOS_TLS_CA=$TMP/ca.pem
    if start; then
        python3 tests/chaos/load.py "$PORT" 16 "$SECS" "$KEY" >"$TMP/load3.log" 2>&1 &
        LOAD=$!
        for i in $(seq 1 $((SECS / 2))); do
            sleep 1
            n=$((i % 2 + 1))
            cp "$TMP/cert$n.pem" "$TMP/tls.new"; mv "$TMP/tls.new" "$TMP/tls.crt"
            cp "$TMP/key$n.pem" "$TMP/tls.new"; mv "$TMP/tls.new" "$TMP/tls.key"
            if [ $n = 1 ]; then echo "$KEY" >"$TMP/keys.txt"; else printf '%s\nsecond-chaos-key-0123456789\n' "$KEY" >"$TMP/keys.txt"; fi
            kill -HUP "$PID"
        done
        wait "$LOAD"; load_ok=$?
        cat "$TMP/load3.log"
        renewed=$(grep -c "TLS certificate reloaded" "$TMP/server.log")
        rotated=$(grep -c "API keys reloaded" "$TMP/server.log")
        ready=$(readyz)
        stop; rc=$?
        echo "  certificate renewals: $renewed, key rotations: $rotated; /readyz after the load: $ready; exit status $rc"
        result "chaos load over HTTPS with certificate and key renewals: only expected answers" \
            "$([ $load_ok = 0 ] && [ "$renewed" -ge 1 ] && [ "$rotated" -ge 1 ] && [ "$ready" = 200 ] && echo 1)"
        result "then it drains and exits 0, with no sanitizer report" "$([ $rc = 0 ] && clean_log && echo 1)"
    else
        result "HTTPS server starts" 0
    fi
    unset CHAOS_TLS_CA
else
    echo "skip the HTTPS run: no openssl command"
fi
echo "$passed passed, $failed failed, 0 skipped"
[ "$failed" = 0 ]
