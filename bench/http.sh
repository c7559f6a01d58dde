#!/usr/bin/env bash
# End-to-end HTTP benchmark of `balsa serve` with wrk on loopback, everything in one run
# so the ratios compare like with like on this (shared, noisy) machine:
#   1. POST /infer at concurrency 1, 16, 64, 256: req/s, p50, p99;
#   2. batching on (max_batch_size ON_BATCH, default 64: the server's default) vs off
#      (max_batch_size 1) at concurrency 64;
#      parts 1 and 2 run for the demo model and for a 2-layer hidden-650 language model
#      (vocabulary 10,000, 90.6% balanced, bank 32: the paper's PTB shape), which this
#      script builds with bench/make_lm_model.py and `balsa convert` (needs numpy);
#   3. GET /healthz of balsa vs a bare libmicrohttpd server (bench/bare_mhd.c) answering
#      the same fixed JSON, and vs nginx returning the same bytes (context only);
#   4. resident memory after 10,000 and after 100,000 requests;
#   5. generation streamed as server-sent events ("stream": true) against the same
#      generation answered at once, with the trained model (models/fortunes), concurrency 64;
#   6. reloads under load: the first model's file replaced by a copy and SIGHUP sent every
#      0.5 s during a wrk run, against a run without reloads (req/s, p50, p99, errors).
# Usage: bench/http.sh   (env: DUR seconds per point, default 5; BUILD, default
# build/cuda or build/cpu; PORT_BASE, default 18180; MODEL, the first model file
# (default models/demo/demo.safetensors); MODEL2, the second one (default: the hidden-650
# model built here; "none" skips it); each model is served as `demo` by servers of its
# own, so one BODY fits both; BODY, the /infer body; PHASES, the parts to run, default
# "sweep batching healthz memory stream reload"; SERVE_ARGS, extra flags for every `balsa serve`, e.g.
# "--threads 1"); ON_BATCH, max_batch_size of the batching servers (default 64)
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
MODEL=${MODEL:-models/demo/demo.safetensors}
MODEL2=${MODEL2:-lm650}
ON_BATCH=${ON_BATCH:-64}
MODEL2_ARG=$MODEL2
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
cat > "$TMP/mem.lua" <<LUA
wrk.method = "POST"
wrk.body = '$MEMBODY'
wrk.headers["Content-Type"] = "application/json"
LUA

wait_http() { # url
    for _ in $(seq 200); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.05
    done
    echo "no answer from $1"; exit 1
}

start_balsa() { # port, model file, extra args...
    local port=$1 file=$2; shift 2
    "$BALSA" serve --host 127.0.0.1 --port "$port" --model "demo=$file" --access-log false \
        --drain-delay-ms 0 ${SERVE_ARGS:-} "$@" 2>"$TMP/balsa_$port.log" &
    PIDS+=($!)
    LAST_PID=$!
    wait_http "http://127.0.0.1:$port/readyz"
}

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

to_ms() { # "1.23ms" / "456.00us" / "1.02s" -> milliseconds
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0;
                    else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

# CPU seconds (user + system) used so far by a process and its child processes.
cpu_s() {
    local t=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$((t + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }'
}

# run_wrk URL CONC [SCRIPT] [SERVER_PID] -> "req/s p50_ms p99_ms cpu_us_per_request errors"
# (cpu: the server's CPU time per request, less sensitive to other tenants than req/s)
run_wrk() {
    local url=$1 c=$2 script=${3:-} pid=${4:-} t=2
    [ "$c" -lt 2 ] && t=1
    local out c0=0 c1=0
    [ -n "$pid" ] && c0=$(cpu_s "$pid")
    out=$(wrk -t"$t" -c"$c" -d"${DUR}s" --latency ${script:+-s "$script"} "$url")
    [ -n "$pid" ] && c1=$(cpu_s "$pid")
    local rps p50 p99 errs n cpu
    rps=$(echo "$out" | awk '/^Requests\/sec:/ { print $2 }')
    n=$(echo "$out" | awk '/ requests in / { print $1 }')
    p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" { print $2 }')")
    p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" { print $2 }')")
    cpu=$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN { printf "%.1f", (n > 0 ? (b - a) * 1e6 / n : 0) }')
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ { sub(/^ +/, ""); printf "%s; ", $0 }' | tr ' ' '_')
    echo "$rps $p50 $p99 $cpu ${errs:-none}"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

echo "# balsa HTTP benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
echo "build: $BALSA; $("$BALSA" version | tail -n 1)"
echo "body: $BODY"
echo "wrk: ${DUR}s per point, -t2 (-t1 at concurrency 1), keep-alive"
echo

P4=$((PORT_BASE + 4)) P5=$((PORT_BASE + 5))
ROUNDS=${ROUNDS:-3}
PHASES=${PHASES:-sweep batching healthz memory stream reload}
phase() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# The second model, for parts 1 and 2 only: built once per run (a few seconds) unless
# MODEL2 names a file.
if ! phase sweep && ! phase batching; then
    MODEL2=none
elif [ "$MODEL2" = lm650 ]; then
    python3 bench/make_lm_model.py "$TMP/lm650_dense.safetensors" --embed 650 --hidden 650 \
        --layers 2 --name lm650
    "$BALSA" convert "$TMP/lm650_dense.safetensors" -o "$TMP/lm650.safetensors" --quiet >/dev/null
    rm -f "$TMP/lm650_dense.safetensors"
    MODEL2=$TMP/lm650.safetensors
fi
LABELS=("$(basename "$MODEL" .safetensors)") FILES=("$MODEL")
if [ "$MODEL2" != none ]; then LABELS+=("$(basename "$MODEL2" .safetensors)") FILES+=("$MODEL2"); fi

# Every server runs from the start (idle ones cost nothing); comparisons alternate
# between them round by round and report medians, because this machine is shared.
# Model i is served with batching on at port PORT_BASE + 10 + 2i, off at the next port.
ON_PIDS=() OFF_PIDS=()
for i in "${!FILES[@]}"; do
    start_balsa $((PORT_BASE + 10 + 2 * i)) "${FILES[$i]}" --max-batch-size "$ON_BATCH"
    ON_PIDS+=("$LAST_PID")
    start_balsa $((PORT_BASE + 11 + 2 * i)) "${FILES[$i]}" --max-batch-size 1
    OFF_PIDS+=("$LAST_PID")
done
BALSA_ON=${ON_PIDS[0]}
P1=$((PORT_BASE + 10))
"$BARE" "$P4" 2 2>"$TMP/bare.log" &
PIDS+=($!)
BARE_PID=$!
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
    NGX_PID=$!
    wait_http "http://127.0.0.1:$P5/"
    HAVE_NGINX=1
fi

for i in "${!FILES[@]}"; do
pon=$((PORT_BASE + 10 + 2 * i)) poff=$((PORT_BASE + 11 + 2 * i))
label=${LABELS[$i]}
if phase sweep; then
echo "## POST /infer, model $label (${FILES[$i]}), batching on (max_batch_size $ON_BATCH, max_queue_delay_us 1000)"
echo "| concurrency | req/s | p50 ms | p99 ms | server CPU us/request | errors |"
echo "|---|---|---|---|---|---|"
for c in 1 16 64 256; do
    read -r rps p50 p99 cpu errs <<<"$(run_wrk "http://127.0.0.1:$pon/infer" "$c" "$TMP/post.lua" "${ON_PIDS[$i]}")"
    echo "| $c | $rps | $p50 | $p99 | $cpu | $errs |"
done
batches=$(curl -s "http://127.0.0.1:$pon/metrics" | awk '/^balsa_batch_size_(sum|count)\{model="demo"\}/ { v[$1 ~ /_sum/ ? "s" : "c"] = $2 } END { if (v["c"] > 0) printf "%.1f", v["s"] / v["c"] }')
echo
echo "mean sequences per executed step over these runs: $batches"
echo
fi

if phase batching; then
echo "## model $label: batching on (max_batch_size $ON_BATCH) vs off (max_batch_size 1), concurrency 64, $ROUNDS rounds"
echo "| round | on: req/s (p50 / p99 ms, CPU us/req) | off: req/s (p50 / p99 ms, CPU us/req) |"
echo "|---|---|---|"
ON=() OFF=() ONC=() OFFC=()
for r in $(seq "$ROUNDS"); do
    read -r a a50 a99 ac _ <<<"$(run_wrk "http://127.0.0.1:$pon/infer" 64 "$TMP/post.lua" "${ON_PIDS[$i]}")"
    read -r b b50 b99 bc _ <<<"$(run_wrk "http://127.0.0.1:$poff/infer" 64 "$TMP/post.lua" "${OFF_PIDS[$i]}")"
    ON+=("$a") OFF+=("$b") ONC+=("$ac") OFFC+=("$bc")
    echo "| $r | $a ($a50 / $a99, $ac) | $b ($b50 / $b99, $bc) |"
done
on=$(median "${ON[@]}") off=$(median "${OFF[@]}")
onc=$(median "${ONC[@]}") offc=$(median "${OFFC[@]}")
echo
echo "model $label, batching on / off at concurrency 64, medians: req/s $on / $off = $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.2fx", a / b }') (goal >= 3x); server CPU per request $offc / $onc us = $(awk -v a="$offc" -v b="$onc" 'BEGIN { printf "%.2fx", a / b }') less with batching"
echo
fi
done

if phase healthz; then
echo "## GET /healthz, concurrency 64, $ROUNDS rounds: balsa vs bare libmicrohttpd (same threading, same body) vs nginx"
echo "| round | balsa: req/s (p50 / p99 ms, CPU us/req) | bare libmicrohttpd | nginx, 1 worker |"
echo "|---|---|---|---|"
BH=() MH=() NH=() BC=() MC=()
for r in $(seq "$ROUNDS"); do
    read -r x x50 x99 xc _ <<<"$(run_wrk "http://127.0.0.1:$P1/healthz" 64 "" "$BALSA_ON")"
    read -r y y50 y99 yc _ <<<"$(run_wrk "http://127.0.0.1:$P4/healthz" 64 "" "$BARE_PID")"
    BH+=("$x") MH+=("$y") BC+=("$xc") MC+=("$yc")
    nrow="skipped: nginx not installed"
    if [ "$HAVE_NGINX" = 1 ]; then
        read -r z z50 z99 zc _ <<<"$(run_wrk "http://127.0.0.1:$P5/healthz" 64 "" "$NGX_PID")"
        NH+=("$z")
        nrow="$z ($z50 / $z99, $zc)"
    fi
    echo "| $r | $x ($x50 / $x99, $xc) | $y ($y50 / $y99, $yc) | $nrow |"
done
bh=$(median "${BH[@]}") mh=$(median "${MH[@]}") bc=$(median "${BC[@]}") mc=$(median "${MC[@]}")
echo
echo "balsa /healthz vs bare libmicrohttpd, medians: req/s $bh / $mh = $(awk -v a="$bh" -v b="$mh" 'BEGIN { printf "%.0f%%", 100 * a / b }') (goal >= 90%); server CPU per request $bc vs $mc us ($(awk -v a="$bc" -v b="$mc" 'BEGIN { printf "%.0f%%", 100 * b / a }') of balsa's throughput per CPU-second)"
if [ "$HAVE_NGINX" = 1 ]; then echo "nginx median: $(median "${NH[@]}") req/s (context only)"; fi
fi
for p in "${ON_PIDS[@]}" "${OFF_PIDS[@]}"; do stop_pid "$p"; done
if phase memory; then
echo
echo "## resident memory under load (POST /infer $MEMBODY, concurrency 64)"
P3=$((PORT_BASE + 3))
start_balsa "$P3" "$MODEL"
MEM_PID=$LAST_PID
rss0=$(rss_kb "$MEM_PID")
answered() { curl -s "http://127.0.0.1:$P3/metrics" | awk '/^balsa_inference_requests_total\{model="demo",code="200"\}/ { print $2 }'; }
load_until() { # keep wrk going in 2 s pieces until the server has answered $1 requests
    while [ "$(answered)" -lt "$1" ]; do
        wrk -t2 -c64 -d2s -s "$TMP/mem.lua" "http://127.0.0.1:$P3/infer" >/dev/null
    done
}
load_until 10000
n1=$(answered)
rss1=$(rss_kb "$MEM_PID")
load_until 100000
n2=$(answered)
rss2=$(rss_kb "$MEM_PID")
stop_pid "$MEM_PID"
echo "| after | requests answered | VmRSS KiB |"
echo "|---|---|---|"
echo "| start | 0 | $rss0 |"
echo "| ~10,000 | $n1 | $rss1 |"
echo "| ~100,000 | $n2 | $rss2 |"
echo
echo "RSS growth from 10k to 100k requests: $(awk -v a="$rss1" -v b="$rss2" 'BEGIN { printf "%+.1f%%", 100 * (b - a) / a }') (goal within 10%)"
fi
if phase stream; then
echo
GEN='"model": "demo", "text": "And the", "generate": 64'
echo "## generating 64 tokens ({$GEN}) answered at once vs streamed (\"stream\": true), concurrency 64, $ROUNDS rounds"
for k in 1 2; do
    cat > "$TMP/gen$k.lua" <<LUA
wrk.method = "POST"
wrk.body = '{$GEN$([ "$k" = 2 ] && echo ', "stream": true')}'
wrk.headers["Content-Type"] = "application/json"
LUA
done
P6=$((PORT_BASE + 6))
start_balsa "$P6" models/fortunes/fortunes-b90.safetensors
GEN_PID=$LAST_PID
# The server's mean time to the first generated token over one wrk run, from /metrics:
# what a streaming client waits before its first event (the other waits for p50/p99).
ttft_sum_count() {
    curl -s "http://127.0.0.1:$P6/metrics" |
        awk '/^balsa_time_to_first_token_seconds_(sum|count)\{/ { printf "%s ", $2 }'
}
mean_ttft_ms() { # sum0 count0 sum1 count1
    awk -v s0="$1" -v c0="$2" -v s1="$3" -v c1="$4" \
        'BEGIN { printf "%.2f", (c1 > c0 ? (s1 - s0) / (c1 - c0) * 1000 : 0) }'
}
echo "| round | at once: req/s (p50 / p99 ms, CPU us/req) | streamed: req/s (p50 / p99 ms, CPU us/req, mean ms to the first token) |"
echo "|---|---|---|"
G1=() G2=() C1=() C2=() T2=()
for r in $(seq "$ROUNDS"); do
    read -r a a50 a99 ac _ <<<"$(run_wrk "http://127.0.0.1:$P6/infer" 64 "$TMP/gen1.lua" "$GEN_PID")"
    read -r s0 n0 <<<"$(ttft_sum_count)"
    read -r b b50 b99 bc _ <<<"$(run_wrk "http://127.0.0.1:$P6/infer" 64 "$TMP/gen2.lua" "$GEN_PID")"
    read -r s1 n1 <<<"$(ttft_sum_count)"
    bt=$(mean_ttft_ms "$s0" "$n0" "$s1" "$n1")
    G1+=("$a") G2+=("$b") C1+=("$ac") C2+=("$bc") T2+=("$bt")
    echo "| $r | $a ($a50 / $a99, $ac) | $b ($b50 / $b99, $bc, $bt) |"
done
stop_pid "$GEN_PID"
g1=$(median "${G1[@]}") g2=$(median "${G2[@]}") c1=$(median "${C1[@]}") c2=$(median "${C2[@]}")
echo
echo "streamed / at once, medians: req/s $g2 / $g1 = $(awk -v a="$g2" -v b="$g1" 'BEGIN { printf "%.2fx", a / b }'); server CPU per request $c2 vs $c1 us (+$(awk -v a="$c2" -v b="$c1" 'BEGIN { printf "%.1f", (a - b) / 64 }') us per streamed token); a streaming client's first token after $(median "${T2[@]}") ms (mean, server side)"
fi
if phase reload; then
echo
echo "## reloads under load: the model file replaced by a copy and SIGHUP every 0.5 s during the run, vs no reload, concurrency 64, $ROUNDS rounds"
P7=$((PORT_BASE + 7))
cp "$MODEL" "$TMP/live.safetensors"
start_balsa "$P7" "$TMP/live.safetensors"
REL_PID=$LAST_PID
reloads_ok() {
    curl -s "http://127.0.0.1:$P7/metrics" |
        awk '/^balsa_model_reloads_total\{.*result="ok"/ { print $2 }'
}
echo "| round | no reload: req/s (p50 / p99 ms; errors) | reloading: req/s (p50 / p99 ms; errors; reloads) |"
echo "|---|---|---|"
R1=() R2=() Q1=() Q2=()
for r in $(seq "$ROUNDS"); do
    read -r a a50 a99 _ ae <<<"$(run_wrk "http://127.0.0.1:$P7/infer" 64 "$TMP/post.lua")"
    n0=$(reloads_ok)
    (
        end=$((SECONDS + DUR))
        while [ "$SECONDS" -lt "$end" ]; do
            cp "$MODEL" "$TMP/next.safetensors"
            mv "$TMP/next.safetensors" "$TMP/live.safetensors"
            kill -HUP "$REL_PID"
            sleep 0.5
        done
    ) &
    SWAPPER=$!
    read -r b b50 b99 _ be <<<"$(run_wrk "http://127.0.0.1:$P7/infer" 64 "$TMP/post.lua")"
    wait "$SWAPPER"
    n1=$(reloads_ok)
    R1+=("$a") R2+=("$b") Q1+=("$a99") Q2+=("$b99")
    echo "| $r | $a ($a50 / $a99; $ae) | $b ($b50 / $b99; $be; $((n1 - n0))) |"
done
stop_pid "$REL_PID"
echo
echo "reloading / no reload, medians: req/s $(median "${R2[@]}") / $(median "${R1[@]}"); p99 $(median "${Q2[@]}") / $(median "${Q1[@]}") ms (errors must be none)"
fi
echo
echo "rerun: DUR=$DUR ROUNDS=$ROUNDS PHASES=\"$PHASES\" ON_BATCH=$ON_BATCH SERVE_ARGS=\"${SERVE_ARGS:-}\" MODEL=$MODEL MODEL2=$MODEL2_ARG bash bench/http.sh"
