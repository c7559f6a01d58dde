#!/usr/bin/env bash
# Sequences benchmark: a long input streamed to `balsa serve` in chunks, with the LSTM
# state kept by the server (sequence_id), carried by the client (initial_state /
# return_state) and not kept at all (each chunk re-sends the whole input so far), in one
# run (bench/sequences.py alternates the three, round after round). Model: the 2-layer
# hidden-650 language model of bench/http.sh (vocabulary 10,000, 90.6% balanced, bank 32),
# built here with bench/make_lm_model.py and `balsa convert` (needs numpy).
# Usage: bench/sequences.sh [bench/sequences.py flags: --clients 1,8 --chunks 40
# --tokens 5 --rounds 3]   (env: BUILD, default build/cuda or build/cpu; PORT, default
# 18190; MODEL, a token model file to use instead, with VOCAB its vocabulary size)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18190}
if [ -z "${BUILD:-}" ]; then
    BUILD=$( [ -x build/cuda/balsa ] && echo build/cuda || echo build/cpu )
fi
BALSA=$BUILD/balsa
[ -x "$BALSA" ] || { echo "build first: make -j2 ($BALSA)"; exit 1; }
TMP=$(mktemp -d /tmp/balsa_seq_bench.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
if [ -z "${MODEL:-}" ]; then
    python3 bench/make_lm_model.py "$TMP/lm650_dense.safetensors" --embed 650 --hidden 650 \
        --layers 2 --name lm650
    "$BALSA" convert "$TMP/lm650_dense.safetensors" -o "$TMP/lm650.safetensors" --quiet >/dev/null
    MODEL=$TMP/lm650.safetensors VOCAB=10000
fi
echo "machine: $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
echo "build: $BALSA; $("$BALSA" version | tail -n 1)"
echo "model: $MODEL; command: bench/sequences.sh $*"
"$BALSA" serve --host 127.0.0.1 --port "$PORT" --model "lm=$MODEL" --access-log false \
    --drain-delay-ms 0 2>"$TMP/balsa.log" &
PID=$!
for _ in $(seq 200); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break
    sleep 0.05
done
python3 bench/sequences.py "$PORT" "${VOCAB:?set VOCAB to the vocabulary size of MODEL}" "$@"
