#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz/fuzz_*.c) against the library sources with
# clang (-fsanitize=fuzzer,address,undefined) and runs each target for SECONDS (default 60),
# one process at a time. Exits non-zero when any target found a crash, hang, leak or
# sanitizer report; libFuzzer then names the input it saved under build/fuzz/artifacts/.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]     targets: model_load convert infer generate v2 config
#
# The corpora grow in build/fuzz/corpus/<target>/ across runs (seeded by tests/fuzz/seeds.c,
# which writes model files with the library's own writer and bodies like the README's).
# Apart from the normal build: `make` and `make test` use gcc and never build these.
# Environment: CLANG (default clang), FUZZ_FLAGS (extra libFuzzer flags, e.g. -runs=1000).
set -u
cd "$(dirname "$0")/../.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(model_load convert infer generate v2 config)
CLANG=${CLANG:-clang}
out=build/fuzz
mkdir -p "$out/obj" "$out/corpus" "$out/artifacts"

# Library objects: models/, engine/ and server/ carry the fuzzer's coverage; kernels/ only
# the sanitizers (their loops would dilute the coverage signal, and no parser lives there).
san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
common="-std=c11 -O1 -g -Wall -Wextra -D_GNU_SOURCE -pthread -I. -I/usr/include/cjson $san"
# Of server/, only the parsers and what they use: the HTTP daemon is not linked.
srcs=$(ls kernels/*.c kernels/cpu/*.c engine/*.c models/*.c server/api.c server/jsonw.c \
          server/v2_tensor.c server/config.c)
lib=$out/libbalsa_fuzz.a
stale=0
[ -f "$lib" ] || stale=1
if [ $stale -eq 0 ] && [ -n "$(find kernels engine models server -newer "$lib" \
        \( -name '*.c' -o -name '*.h' -o -name '*.json' \) -print -quit)" ]; then
    stale=1
fi
if [ $stale -eq 1 ]; then
    echo "fuzz: building the library with $CLANG -fsanitize=fuzzer-no-link,address,undefined"
    rm -f "$lib"
    objs=()
    for s in $srcs; do
        o=$out/obj/${s%.c}.o
        mkdir -p "$(dirname "$o")"
        flags="$common"
        case $s in
            kernels/*) ;;
            *) flags="$flags -fsanitize=fuzzer-no-link" ;;
        esac
        case $s in
            *_avx2.c) flags="$flags -mavx2 -mfma" ;;
            *_avx512.c) flags="$flags -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mavx2" ;;
        esac
        echo "$CLANG $flags -c $s -o $o"
        objs+=("$o")
    done > "$out/compile.txt"
    if ! xargs -P 2 -d '\n' -I{} sh -c '{}' < "$out/compile.txt"; then
        echo "fuzz: library build failed" >&2
        exit 2
    fi
    ar rcs "$lib" "${objs[@]}" || exit 2
fi
libs="-lmicrohttpd -lcjson -lopenblas -lm -lpthread"
build() { # $1: output, rest: sources and flags
    local o=$1
    shift
    "$CLANG" $common "$@" -o "$o" "$lib" $libs
}
for t in "${targets[@]}"; do
    if [ ! -f "tests/fuzz/fuzz_$t.c" ]; then
        echo "fuzz: no target $t (tests/fuzz/fuzz_$t.c)" >&2
        exit 2
    fi
    build "$out/fuzz_$t" -fsanitize=fuzzer "tests/fuzz/fuzz_$t.c" || exit 2
done
build "$out/seeds" tests/fuzz/seeds.c || exit 2
"$out/seeds" "$out/seed-corpus" || exit 2

failed=0
for t in "${targets[@]}"; do
    case $t in
        model_load) maxlen=65536 ;;
        *) maxlen=16384 ;;
    esac
    corpus=$out/corpus/$t
    mkdir -p "$corpus"
    dict=()
    [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
    echo "== fuzz_$t: ${secs}s, max_len $maxlen"
    "$out/fuzz_$t" "$corpus" "$out/seed-corpus/$t" "${dict[@]}" -max_total_time="$secs" \
        -max_len="$maxlen" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$out/artifacts/$t-" ${FUZZ_FLAGS:-} 2>&1 | tee "$out/$t.log" |
        grep --line-buffered -E '^(#[0-9]+.*(INITED|DONE|pulse)|stat::|==[0-9]+==|SUMMARY|FUZZ FINDING|artifact_prefix|Test unit written)'
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "!! fuzz_$t exited $rc: see $out/$t.log and $out/artifacts/"
        failed=1
    fi
done
[ $failed -eq 0 ] && echo "fuzz: no crash, hang, leak or sanitizer report in ${targets[*]}"
exit $failed
