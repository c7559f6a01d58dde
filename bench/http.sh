#!/usr/bin/env bash
# End-to-end HTTP benchmark of `balsa serve` with wrk on loopback, everything in one run
# so the ratios compare like with like on this (shared, noisy) machine:
#   1. POST /infer on the demo model at concurrency 1, 16, 64, 256: req/s, p50, p99;
#   2. batching on (max_batch_size 32) vs off (max_batch_size 1) at concurrency 64;
#   3. GET /healthz of balsa vs a bare libmicrohttpd server (bench/bare_mhd.c) answering
#      the same fixed JSON, and vs nginx returning the same bytes (context only);
#   4. resident memory after 10,000 and after 100,000 requests.
# Usage: bench/http.sh   (env: DUR seconds per point, default 5; BUILD, default
# build/cuda or build/cpu; PORT_BASE, default 18180; BODY, the /infer body)
# Needs wrk (tools/deps.sh); nginx is optional (apt-get install nginx-light).
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${DUR:-5}
PORT_BASE=${PORT_BASE:-18180}
if [ -z "${BUILD:-}" ]; then
    BUILD=$( [ -x build/cuda/balsa ] && echo build/cuda || echo build/cpu )
fi
BALSA=$BUILD/balsa
BARE=$BUILD/bench/bare_mhd
MODEL=models/demo/demo.safetensors
BODY=${BODY:-'{"model": "demo", "inputs": [[12, 7, 99, 5, 310, 42, 8, 77, 501, 3, 64, 19, 230, 11, 900, 1]], "top_k": 5}'}
# The memory phase sends many small requests: it looks for leaks per request.
MEMBODY=${MEMBODY:-'{"model": "demo", "inputs": [[12, 7]], "top_k": 5}'}
command -v wrk >/dev/null || { echo "wrk is not installed (bash tools/deps.sh)"; exit 1; }
[ -x "$BALSA" ] && [ -x "$BARE" ] || { echo "build first: make -j2 ($BALSA, $BARE)"; exit 1; }

TMP=$(mktemp -d /tmp/balsa_http_bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

cat > "$TMP/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
LUA
# The memory-phase body, stopping each wrk thread after WRK_N responses.
cat > "$TMP/count.lua" <<LUA
wrk.method = "POST"
wrk.body = '$MEMBODY'
wrk.headers["Content-Type"] = "application/json"
local n = 0
local limit = tonumber(os.getenv("WRK_N"))
function response(status, headers, body)
  n = n + 1
  if n >= limit then wrk.thread:stop() end
end
LUA

wait_http() { # url
    for _ in $(seq 200); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.05
    done
    echo "no answer from $1"; exit 1
}

start_balsa() { # port, extra args...
    local port=$1; shift
    "$BALSA" serve --host 127.0.0.1 --port "$port" --model "demo=$MODEL" --access-log false \
        --drain-delay-ms 0 "$@" 2>"$TMP/balsa_$port.log" &
    PIDS+=($!)
    LAST_PID=$!
    wait_http "http://127.0.0.1:$port/readyz"
}

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

to_ms() { # "1.23ms" / "456.00us" / "1.02s" -> milliseconds
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0;
                    else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

# run_wrk URL CONC [SCRIPT] -> prints "req/s p50_ms p99_ms errors"
run_wrk() {
    local url=$1 c=$2 script=${3:-} t=2
    [ "$c" -lt 2 ] && t=1
    local out
    out=$(wrk -t"$t" -c"$c" -d"${DUR}s" --latency ${script:+-s "$script"} "$url")
    local rps p50 p99 errs
    rps=$(echo "$out" | awk '/^Requests\/sec:/ { print $2 }')
    p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" { print $2 }')")
    p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" { print $2 }')")
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ { sub(/^ +/, ""); printf "%s; ", $0 }')
    echo "$rps $p50 $p99 ${errs:-none}"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

echo "# balsa HTTP benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
echo "build: $BALSA; $("$BALSA" version | tail -n 1)"
echo "body: $BODY"
echo "wrk: ${DUR}s per point, -t2 (-t1 at concurrency 1), keep-alive"
echo

P1=$((PORT_BASE + 1)) P2=$((PORT_BASE + 2)) P4=$((PORT_BASE + 4)) P5=$((PORT_BASE + 5))
ROUNDS=${ROUNDS:-3}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Every server runs from the start (idle ones cost nothing); comparisons alternate
# between them round by round and report medians, because this machine is shared.
start_balsa "$P1" --max-batch-size 32
BALSA_ON=$LAST_PID
start_balsa "$P2" --max-batch-size 1
BALSA_OFF=$LAST_PID
"$BARE" "$P4" 2 2>"$TMP/bare.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$P4/"
HAVE_NGINX=0
if command -v nginx >/dev/null; then
    mkdir -p "$TMP/nginx"
    cat > "$TMP/nginx/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    server {
        listen 127.0.0.1:$P5;
        location / { default_type application/json; return 200 '{"status":"ok"}\n'; }
    }
}
NGX
    nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$P5/"
    HAVE_NGINX=1
fi

echo "## POST /infer, demo model, batching on (max_batch_size 32, max_queue_delay_us 1000)"
echo "| concurrency | req/s | p50 ms | p99 ms | errors |"
echo "|---|---|---|---|---|"
for c in 1 16 64 256; do
    read -r rps p50 p99 errs <<<"$(run_wrk "http://127.0.0.1:$P1/infer" "$c" "$TMP/post.lua")"
    echo "| $c | $rps | $p50 | $p99 | $errs |"
done
batches=$(curl -s "http://127.0.0.1:$P1/metrics" | awk '/^balsa_batch_size_(sum|count)\{model="demo"\}/ { v[$1 ~ /_sum/ ? "s" : "c"] = $2 } END { if (v["c"] > 0) printf "%.1f", v["s"] / v["c"] }')
echo
echo "mean sequences per executed step over these runs: $batches"

echo
echo "## batching on (max_batch_size 32) vs off (max_batch_size 1), concurrency 64, $ROUNDS rounds"
echo "| round | on req/s | on p50 / p99 ms | off req/s | off p50 / p99 ms |"
echo "|---|---|---|---|---|"
ON=() OFF=()
for r in $(seq "$ROUNDS"); do
    read -r a50 a_p50 a_p99 _ <<<"$(run_wrk "http://127.0.0.1:$P1/infer" 64 "$TMP/post.lua")"
    read -r b50 b_p50 b_p99 _ <<<"$(run_wrk "http://127.0.0.1:$P2/infer" 64 "$TMP/post.lua")"
    ON+=("$a50") OFF+=("$b50")
    echo "| $r | $a50 | $a_p50 / $a_p99 | $b50 | $b_p50 / $b_p99 |"
done
on=$(median "${ON[@]}") off=$(median "${OFF[@]}")
echo
echo "batching on / off at concurrency 64 (medians): $on / $off = $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.2fx", a / b }') (goal >= 3x)"

echo
echo "## GET /healthz, concurrency 64, $ROUNDS rounds: balsa vs bare libmicrohttpd (same threads, same body) vs nginx"
echo "| round | balsa req/s (p50 / p99 ms) | bare libmicrohttpd | nginx, 1 worker |"
echo "|---|---|---|---|"
BH=() MH=() NH=()
for r in $(seq "$ROUNDS"); do
    read -r x x50 x99 _ <<<"$(run_wrk "http://127.0.0.1:$P1/healthz" 64)"
    read -r y y50 y99 _ <<<"$(run_wrk "http://127.0.0.1:$P4/healthz" 64)"
    BH+=("$x") MH+=("$y")
    nrow="skipped: nginx not installed"
    if [ "$HAVE_NGINX" = 1 ]; then
        read -r z z50 z99 _ <<<"$(run_wrk "http://127.0.0.1:$P5/healthz" 64)"
        NH+=("$z")
        nrow="$z ($z50 / $z99)"
    fi
    echo "| $r | $x ($x50 / $x99) | $y ($y50 / $y99) | $nrow |"
done
bh=$(median "${BH[@]}") mh=$(median "${MH[@]}")
echo
echo "balsa /healthz / bare libmicrohttpd (medians): $bh / $mh = $(awk -v a="$bh" -v b="$mh" 'BEGIN { printf "%.0f%%", 100 * a / b }') (goal >= 90%)"
[ "$HAVE_NGINX" = 1 ] && echo "nginx median: $(median "${NH[@]}") req/s (context only)"
stop_pid "$BALSA_ON"
stop_pid "$BALSA_OFF"
echo
echo "## resident memory under load (POST /infer $MEMBODY, concurrency 64)"
P3=$((PORT_BASE + 3))
start_balsa "$P3"
MEM_PID=$LAST_PID
rss0=$(rss_kb "$MEM_PID")
# wrk -t2: each thread stops after WRK_N responses (a few extra may be in flight).
WRK_N=5000 wrk -t2 -c64 -d300s -s "$TMP/count.lua" "http://127.0.0.1:$P3/infer" >/dev/null
n1=$(curl -s "http://127.0.0.1:$P3/metrics" | awk '/^balsa_inference_requests_total\{model="demo",code="200"\}/ { print $2 }')
rss1=$(rss_kb "$MEM_PID")
WRK_N=45000 wrk -t2 -c64 -d600s -s "$TMP/count.lua" "http://127.0.0.1:$P3/infer" >/dev/null
n2=$(curl -s "http://127.0.0.1:$P3/metrics" | awk '/^balsa_inference_requests_total\{model="demo",code="200"\}/ { print $2 }')
rss2=$(rss_kb "$MEM_PID")
stop_pid "$MEM_PID"
echo "| after | requests answered | VmRSS KiB |"
echo "|---|---|---|"
echo "| start | 0 | $rss0 |"
echo "| ~10,000 | $n1 | $rss1 |"
echo "| ~100,000 | $n2 | $rss2 |"
echo
echo "RSS growth from 10k to 100k requests: $(awk -v a="$rss1" -v b="$rss2" 'BEGIN { printf "%+.1f%%", 100 * (b - a) / a }') (goal within 10%)"
echo
echo "rerun: bash bench/http.sh   (DUR=$DUR)"
