#!/usr/bin/env bash
# Runs every test binary given, shows its output, and sums the closing
# "N passed, N failed, N skipped" lines into one. Exits non-zero when any test failed
# or any binary crashed or printed no closing line.
set -u
total_p=0 total_f=0 total_s=0 broken=0
for bin in "$@"; do
    echo "== $(basename "$bin")"
    out=$("$bin" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    last=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' | tail -n 1)
    if [ -z "$last" ]; then
        echo "!! $(basename "$bin") exited $rc without a closing line: counted as 1 failure"
        total_f=$((total_f + 1))
        broken=1
        continue
    fi
    read -r p _ f _ s _ <<<"$(echo "$last" | tr -d ',')"
    total_p=$((total_p + p)) total_f=$((total_f + f)) total_s=$((total_s + s))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "!! $(basename "$bin") exited $rc with no failed test: counted as 1 failure"
        total_f=$((total_f + 1))
        broken=1
    fi
done
echo "$total_p passed, $total_f failed, $total_s skipped"
[ "$total_f" -eq 0 ] && [ "$broken" -eq 0 ]
