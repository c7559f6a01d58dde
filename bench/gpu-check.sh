#!/usr/bin/env bash
# The one script for a machine with an NVIDIA GPU (written for an H200): builds the CUDA
# backend, runs the GPU tests, then bench/gpu_bench.cu (copy bandwidth, balsa's kernels
# against cuBLAS and cuSPARSE on the paper's shapes, the 2-layer LSTM as CUDA graphs, the
# goals table), then the GPU tests' quick set under compute-sanitizer memcheck and
# racecheck in the time left.
# Run from the repository root: bash bench/gpu-check.sh [--quick]
# Needs the CUDA toolkit and driver only: when the server's libraries (microhttpd, cJSON,
# OpenBLAS) are missing it builds `make gpu-check-bins` (kernels + CUDA only). Every step
# has a time limit, so the whole run stays under 8 minutes. The full log goes to
# $OUT/gpu-check.log when OUT is set (else build/gpu-check.log); a summary table ends it.
set -u
cd "$(dirname "$0")/.." || exit 1
quick=""
[ "${1:-}" = "--quick" ] && quick="--quick"
mkdir -p build
log="${OUT:+$OUT/gpu-check.log}"
log="${log:-build/gpu-check.log}"
exec > >(tee "$log") 2>&1
start=$(date +%s)
declare -a summary

# step NAME LIMIT_SECONDS COMMAND...: runs one step with a time limit, records its result.
step() {
    local name=$1 limit=$2 t0 rc
    shift 2
    echo
    echo "######## $name (limit ${limit}s): $*"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    local verdict=ok
    [ $rc -ne 0 ] && verdict="FAILED (exit $rc)"
    [ $rc -eq 124 ] && verdict="TIMED OUT"
    summary+=("$(printf '%-44s %-18s %4ss' "$name" "$verdict" "$(( $(date +%s) - t0 ))")")
    return $rc
}

echo "gpu-check: $(date -u +%FT%TZ) on $(hostname 2>/dev/null || cat /etc/hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem \
    --format=csv 2>&1 || echo "nvidia-smi failed"
export PATH=/usr/local/cuda/bin:$PATH
nvcc --version | tail -n 2

jobs=$(nproc 2>/dev/null || echo 4)
B=build/cuda
# Without make, the same GPU-only binaries by hand (the commands of the Makefile's rules).
build_by_hand() {
    local nv="nvcc -O3 -std=c++17 -I. -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90"
    local cf="-std=c11 -O2 -g -Wall -Wextra -D_GNU_SOURCE -pthread -I. -DBALSA_CUDA -I/usr/local/cuda/include"
    local libs="-L/usr/local/cuda/lib64 -Wl,-rpath,/usr/local/cuda/lib64 -lcudart -lcublas -lcusparse -lstdc++ -lm -lpthread"
    local objs=() f o
    mkdir -p "$B/kernels/cuda" "$B/kernels/cpu" "$B/bench" "$B/gpu-only" || return 1
    for f in kernels/bsmat.c kernels/status.c kernels/cpu/ref.c; do
        o="$B/${f%.c}.o"; cc $cf -c "$f" -o "$o" || return 1; objs+=("$o")
    done
    for f in kernels/cuda/*.cu bench/gpu_bench.cu; do
        o="$B/${f%.cu}.o"; $nv -c "$f" -o "$o" || return 1
        [ "$f" = bench/gpu_bench.cu ] || objs+=("$o")
    done
    cc -o "$B/bench/gpu_bench" "$B/bench/gpu_bench.o" "${objs[@]}" $libs || return 1
    cc $cf -DBALSA_GPU_ONLY -o "$B/gpu-only/test_cuda" tests/test_cuda.c "${objs[@]}" $libs
}
# By hand also when make fails: its -Werror may meet a warning that only that machine's
# compiler gives, and the numbers matter more than the warning (the log keeps it).
export -f build_by_hand
export B
if ! command -v make >/dev/null ||
    ! step "build gpu-only binaries (make gpu-check-bins)" 240 make -j"$jobs" CUDA=1 gpu-check-bins; then
    step "build gpu-only binaries (by hand, no -Werror)" 300 bash -c build_by_hand
fi
full=0
if command -v make >/dev/null && [ -e /usr/include/microhttpd.h ] && [ -e /usr/include/cjson/cJSON.h ] &&
    { [ -e /usr/include/cblas.h ] || [ -e /usr/include/x86_64-linux-gnu/cblas.h ]; }; then
    step "build everything (make CUDA=1 all)" 240 make -j"$jobs" CUDA=1 all && full=1
else
    echo "(server libraries missing: the full build and the backend-choice test are skipped)"
fi

if [ $full -eq 1 ]; then
    step "tests/test_cuda (full build, with backend choice)" 180 "$B/tests/test_cuda"
fi
step "tests/test_cuda (GPU-only build)" 180 "$B/gpu-only/test_cuda"
# The benchmark first (the numbers matter most), then the sanitizers in the time left.
step "bench/gpu_bench $quick" 300 "$B/bench/gpu_bench" $quick
left=$(( 470 - ($(date +%s) - start) ))
if [ $left -gt 40 ]; then
    [ $left -gt 120 ] && left=120
    step "bench/gpu_bench --pdl $quick (LSTM, PDL)" "$left" "$B/bench/gpu_bench" --pdl $quick
else
    summary+=("bench/gpu_bench --pdl: no time left, skipped")
fi
if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
        left=$(( 470 - ($(date +%s) - start) ))
        if [ $left -lt 30 ]; then
            summary+=("compute-sanitizer $tool: no time left, skipped")
            continue
        fi
        [ $left -gt 120 ] && left=120
        step "compute-sanitizer $tool (quick set)" "$left" env BALSA_TEST_QUICK=1 \
            compute-sanitizer --tool $tool --error-exitcode 3 "$B/gpu-only/test_cuda"
    done
else
    summary+=("compute-sanitizer: not installed, skipped")
fi

echo
echo "######## summary ($(( $(date +%s) - start ))s in all; log: $log)"
printf '%s\n' "${summary[@]}"
sleep 1 # let tee write the last lines before they are read back
goals=$(sed -n '/^== goals/,$p' "$log" | grep -E 'MET|MISSED|goals met')
wrong=$(grep -E 'WRONG|^FAIL ' "$log" | head -n 20)
[ -n "$goals" ] && printf '%s\n' "$goals"
[ -n "$wrong" ] && printf 'wrong results:\n%s\n' "$wrong"
exit 0
