#!/usr/bin/env bash
# The LSTM benchmark in one go: balsa (balanced-sparse and its own dense path, through
# `balsa bench lstm`), PyTorch nn.LSTM and ONNX Runtime (bench/lstm_baselines.py), same
# shapes and thread count, alternating over R rounds (default 3) in this run; then a table
# of median times with their range, tokens/s and the ratio of balsa's sparse path to the
# faster baseline.
#
#   bench/lstm.sh [--threads N] [--hidden 1500,650] [--batch 1,16] [--min-time S]
#                 [--rounds R]
#
# OpenBLAS (used by balsa's dense path and by PyTorch) does not recognise every CPU; the
# run forces its Haswell (AVX2) kernels, or SkylakeX where the CPU has AVX-512, and asks
# OpenMP not to spin (OMP_WAIT_POLICY=passive), as ../shared/FIELD-NOTES.md advises.
# OpenBLAS's own spin timeout stays at its default: a short one (OPENBLAS_THREAD_TIMEOUT=17)
# made balsa's dense path 2.5x slower at hidden 64 (a wake-up per sgemv). balsa's dense
# path and PyTorch get as many OpenBLAS threads as balsa's pool (`balsa bench lstm` sets
# them; OPENBLAS_NUM_THREADS for PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=$(nproc) hidden=1500,650 batch=1,16 min_time=1.0 rounds=3
while [ $# -gt 0 ]; do
    case "$1" in
    --threads) threads=$2; shift 2 ;;
    --hidden) hidden=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --min-time) min_time=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "usage: bench/lstm.sh [--threads N] [--hidden LIST] [--batch LIST] [--min-time S] [--rounds R]" >&2; exit 2 ;;
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

# Rounds alternate the three programs (balsa, PyTorch, ONNX Runtime, then again), so that
# each sees the same mix of quiet and busy moments on a shared machine; the summary gives
# the median over rounds and the range.
for r in $(seq 1 "$rounds"); do
    echo "== round $r of $rounds: balsa ($bin)"
    "$bin" bench lstm --threads "$threads" "${common[@]}" | tee -a "$out/balsa.txt"
    echo "== round $r of $rounds: PyTorch (/usr/bin/python3)"
    if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
        onnx=() # the ONNX files are exported once, in the first round
        [ "$r" = 1 ] && onnx=(--onnx-dir "$out/onnx")
        OPENBLAS_NUM_THREADS=$threads /usr/bin/python3 bench/lstm_baselines.py torch \
            --threads "$threads" "${onnx[@]}" \
            "${common[@]}" 2>/dev/null | tee -a "$out/torch.txt"
    else
        echo "(skipped: no python3-torch; run tools/deps.sh)" | tee -a "$out/torch.txt"
    fi
    echo "== round $r of $rounds: ONNX Runtime (python3 on PATH)"
    if [ -d "$out/onnx" ]; then
        python3 -c 'import onnxruntime' 2>/dev/null || python3 -m pip install -q onnxruntime >&2
        python3 bench/lstm_baselines.py ort --threads "$threads" --onnx-dir "$out/onnx" \
            "${common[@]}" | tee -a "$out/ort.txt"
    else
        echo "(skipped: needs the ONNX files the PyTorch step exports)" | tee -a "$out/ort.txt"
    fi
done

echo
echo "== summary: 2-layer LSTM, 35 steps, $threads threads, $rounds rounds, OPENBLAS_CORETYPE=$core ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
cat "$out"/balsa.txt "$out"/torch.txt "$out"/ort.txt | grep '^result lstm' | python3 -c '
import statistics, sys
runs = {}  # (hidden, batch) -> name -> [ms, one per round, in order]
steps = {}
for line in sys.stdin:
    f = dict(kv.split("=", 1) for kv in line.split()[2:])
    key = (int(f["hidden"]), int(f["batch"]))
    steps[key] = int(f["steps"])
    for name, v in f.items():
        if name.endswith("_ms"):
            runs.setdefault(key, {}).setdefault(name[:-3], []).append(float(v))
def med(v):
    return statistics.median(v) if v else None
def cell(v):
    return "-" if not v else f"{med(v):.1f} ({min(v):.1f}-{max(v):.1f})"
print("%-6s %-5s %-22s %-22s %-22s %-22s %-9s %-17s %s" % ("hidden", "batch",
      "balsa sparse ms", "balsa dense ms", "pytorch ms", "onnxrt ms", "tok/s",
      "vs best (range)", "vs balsa dense"))
for key in sorted(runs, key=lambda k: (-k[0], k[1])):
    t = runs[key]
    sp, dn = t.get("balsa_sparse", []), t.get("balsa_dense", [])
    pt, ox = t.get("pytorch", []), t.get("onnxruntime", [])
    # Per round: the faster baseline of that round over balsa sparse of that round.
    ratios = [min(b for b in (p, o) if b is not None) / s
              for s, p, o in zip(sp, pt + [None] * len(sp), ox + [None] * len(sp))
              if p is not None or o is not None]
    vs = f"{med(ratios):.2f}x ({min(ratios):.1f}-{max(ratios):.1f})" if ratios else "-"
    tok = f"{key[1] * steps[key] * 1000 / med(sp):.0f}" if sp else "-"
    vd = f"{med(dn) / med(sp):.2f}x" if sp and dn else "-"
    print("%-6d %-5d %-22s %-22s %-22s %-22s %-9s %-17s %s" % (key[0], key[1], cell(sp),
          cell(dn), cell(pt), cell(ox), tok, vs, vd))
print("ms: median over rounds (min-max); vs best: per round, the faster of PyTorch and ONNX")
print("Runtime over balsa sparse; median (min-max) of the rounds. Goal: >= 10x at batch 1,")
print(">= 4x at batch 16.")
'
echo "rerun: bench/lstm.sh --threads $threads --hidden $hidden --batch $batch --min-time $min_time --rounds $rounds"
