#!/usr/bin/env bash
# Fetches NVIDIA's perf_analyzer, unmodified, from PyPI and prints the path of a wrapper
# that runs it. PyPI's `perf-analyzer` package is only a 0.1.0 placeholder on the index
# these machines reach, but tritonclient wheels up to 2.41 carry the real binary
# (tritonclient-*.data/data/bin/perf_analyzer). It needs libb64 (Debian's libb64-0d) and
# libcudart.so.12 (PyPI's nvidia-cuda-runtime-cu12; no GPU is used for HTTP runs).
# Usage: PA=$(bench/get_perf_analyzer.sh) && "$PA" --help       (files under build/tools)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build/tools/perf_analyzer
wrapper=$dir/perf_analyzer
if [ -x "$wrapper" ]; then
    echo "$wrapper"
    exit 0
fi
mkdir -p "$dir"
if ! dpkg-query -W -f='${Status}' libb64-0d 2>/dev/null | grep -q "install ok installed"; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "get_perf_analyzer: needs libb64-0d: sudo apt-get install -y libb64-0d" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps -d "$tmp" "tritonclient==2.41.1" >&2
python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "nvidia-cuda-runtime-cu12==12.9.79" >&2
(cd "$tmp" && unzip -q -o tritonclient-2.41.1-*.whl 'tritonclient-2.41.1.data/data/bin/perf_analyzer' &&
    unzip -q -o nvidia_cuda_runtime_cu12-*.whl 'nvidia/cuda_runtime/lib/libcudart.so.12')
install -m 755 "$tmp/tritonclient-2.41.1.data/data/bin/perf_analyzer" "$dir/perf_analyzer.bin"
install -m 644 "$tmp/nvidia/cuda_runtime/lib/libcudart.so.12" "$dir/libcudart.so.12"
cat > "$wrapper" <<'SH'
#!/bin/sh
# Runs the perf_analyzer binary from tritonclient 2.41.1 with its CUDA runtime beside it.
here=$(dirname "$0")
LD_LIBRARY_PATH="$here${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/perf_analyzer.bin" "$@"
SH
chmod 755 "$wrapper"
echo "$wrapper"
