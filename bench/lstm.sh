#!/usr/bin/env bash
# The LSTM benchmark in one go: balsa (balanced-sparse and its own dense path, through
# `balsa bench lstm`), PyTorch nn.LSTM and ONNX Runtime (bench/lstm_baselines.py), same
# shapes and thread count, one after another in this run; then a table of times, tokens/s
# and the ratio of balsa's sparse path to the faster baseline.
#
#   bench/lstm.sh [--threads N] [--hidden 1500,650] [--batch 1,16] [--min-time S]
#
# OpenBLAS (used by balsa's dense path and by PyTorch) does not recognise every CPU; the
# run forces its Haswell (AVX2) kernels, or SkylakeX where the CPU has AVX-512, and asks
# OpenMP not to spin (OMP_WAIT_POLICY=passive), as ../shared/FIELD-NOTES.md advises.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=$(nproc) hidden=1500,650 batch=1,16 min_time=1.0
while [ $# -gt 0 ]; do
    case "$1" in
    --threads) threads=$2; shift 2 ;;
    --hidden) hidden=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --min-time) min_time=$2; shift 2 ;;
    *) echo "usage: bench/lstm.sh [--threads N] [--hidden LIST] [--batch LIST] [--min-time S]" >&2; exit 2 ;;
    esac
done
core=Haswell
grep -q avx512f /proc/cpuinfo && core=SkylakeX
export OPENBLAS_CORETYPE=$core OMP_WAIT_POLICY=passive
bin=build/cpu/balsa # or the CUDA build's, whichever was built last
[ -x build/cuda/balsa ] && { [ ! -x "$bin" ] || [ build/cuda/balsa -nt "$bin" ]; } && bin=build/cuda/balsa
[ -x "$bin" ] || { echo "lstm.sh: build balsa first (make)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common=(--hidden "$hidden" --batch "$batch" --min-time "$min_time")

echo "== balsa ($bin)"
"$bin" bench lstm --threads "$threads" "${common[@]}" | tee "$out/balsa.txt"
echo "== PyTorch (/usr/bin/python3)"
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    /usr/bin/python3 bench/lstm_baselines.py torch --threads "$threads" --onnx-dir "$out/onnx" \
        "${common[@]}" 2>/dev/null | tee "$out/torch.txt"
else
    echo "(skipped: no python3-torch; run tools/deps.sh)" | tee "$out/torch.txt"
fi
echo "== ONNX Runtime (python3 on PATH)"
if [ -d "$out/onnx" ]; then
    python3 -c 'import onnxruntime' 2>/dev/null || python3 -m pip install -q onnxruntime >&2
    python3 bench/lstm_baselines.py ort --threads "$threads" --onnx-dir "$out/onnx" \
        "${common[@]}" | tee "$out/ort.txt"
else
    echo "(skipped: needs the ONNX files the PyTorch step exports)" | tee "$out/ort.txt"
fi

echo
echo "== summary: 2-layer LSTM, 35 steps, $threads threads, OPENBLAS_CORETYPE=$core ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
cat "$out"/*.txt | grep '^result lstm' | awk '
{
    for (i = 3; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    key = f["hidden"] " " f["batch"]
    if (!(key in seen)) { seen[key] = 1; keys[n++] = key; steps[key] = f["steps"] }
    for (name in f) if (name ~ /_ms$/) t[key, name] = f[name]
    delete f
}
END {
    printf "%-7s %-6s %11s %11s %11s %11s %13s %10s\n", "hidden", "batch", "balsa sp ms",
           "balsa dn ms", "pytorch ms", "onnxrt ms", "balsa tok/s", "vs best"
    for (i = 0; i < n; i++) {
        k = keys[i]; split(k, hb, " ")
        sp = t[k, "balsa_sparse_ms"]; dn = t[k, "balsa_dense_ms"]
        pt = t[k, "pytorch_ms"]; ox = t[k, "onnxruntime_ms"]
        best = ""
        if (pt != "") best = pt
        if (ox != "" && (best == "" || ox + 0 < best + 0)) best = ox
        ratio = (best != "" && sp > 0) ? sprintf("%.2fx", best / sp) : "-"
        tok = sp > 0 ? sprintf("%.0f", hb[2] * steps[k] * 1000 / sp) : "-"
        printf "%-7s %-6s %11s %11s %11s %11s %13s %10s\n", hb[1], hb[2], sp, dn,
               pt == "" ? "-" : pt, ox == "" ? "-" : ox, tok, ratio
    }
    print "vs best = time of the faster of PyTorch and ONNX Runtime / balsa sparse time (goal: >= 10x at batch 1, >= 4x at batch 16)"
}'
echo "rerun: bench/lstm.sh --threads $threads --hidden $hidden --batch $batch --min-time $min_time"
