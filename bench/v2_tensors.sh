#!/usr/bin/env bash
# Benchmark: KServe v2 JSON against binary tensors for a large output (a 10,000-word
# softmax at each of 35 steps). Builds the model (bench/make_lm_model.py, then balsa
# convert to 90% balanced sparsity), serves it on a free loopback port, runs
# bench/v2_tensors.py (both modes in one run) and stops the server.
# Usage: bench/v2_tensors.sh [SECONDS_PER_MODE]    (after make)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BALSA_BIN:-build/$(ls build | grep -v -- - | head -n 1)/balsa}
work=$(mktemp -d /tmp/balsa_v2bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
python3 bench/make_lm_model.py "$work/dense.safetensors"
"$bin" convert "$work/dense.safetensors" -o "$work/lm10k.safetensors" --quiet > /dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" serve --port "$port" --model "lm10k=$work/lm10k.safetensors" --access-log false \
    --drain-delay-ms 0 2> "$work/serve.log" &
pid=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/v2/health/ready" > /dev/null && break
    sleep 0.1
done
echo "$(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "command: bench/v2_tensors.sh ${1:-10}"
python3 bench/v2_tensors.py "$port" lm10k "${1:-10}"
