#!/bin/sh
# Installs what balsa needs inside an image, shared by docker/Dockerfile (Ubuntu-based
# CUDA images) and docker/Dockerfile.cpu (Debian bookworm):
#   install-deps.sh build    the compiler and the -dev packages balsa builds against
#   install-deps.sh runtime  only the shared libraries the balsa binary loads
# Package names differ between the two distributions (Ubuntu 24.04 adds a t64 suffix),
# so each runtime library is the first name the package index knows.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq

pick() {
    for p in "$@"; do
        if apt-cache show "$p" >/dev/null 2>&1; then
            echo "$p"
            return 0
        fi
    done
    echo "install-deps: none of these packages exists here: $*" >&2
    exit 1
}

case "${1:-}" in
build)
    pkgs="make gcc libc6-dev libmicrohttpd-dev libgnutls28-dev libcjson-dev libopenblas-dev zlib1g-dev"
    ;;
runtime)
    pkgs="$(pick libmicrohttpd12t64 libmicrohttpd12) $(pick libgnutls30t64 libgnutls30) $(pick libcjson1)"
    pkgs="$pkgs $(pick libopenblas0-pthread libopenblas0) $(pick zlib1g)"
    ;;
*)
    echo "usage: install-deps.sh build|runtime" >&2
    exit 2
    ;;
esac
# shellcheck disable=SC2086 # the list is meant to split into words
apt-get install -y -qq --no-install-recommends $pkgs
apt-get clean
rm -rf /var/lib/apt/lists/*
