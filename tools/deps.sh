#!/usr/bin/env bash
# Installs the Debian packages balsa builds and tests with, when any is missing.
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -euo pipefail
pkgs=(build-essential pkg-config libmicrohttpd-dev libgnutls28-dev openssl libcjson-dev libcurl4-openssl-dev zlib1g-dev
      libopenblas-dev python3-torch python3-numpy prometheus wrk fortunes gnuplot-nox)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    $cmd
else
    echo "deps: missing Debian packages; run as root:" >&2
    echo "  sudo apt-get update && sudo $cmd" >&2
    exit 1
fi
