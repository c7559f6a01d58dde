#!/usr/bin/env bash
# Plots `balsa bench kernels --json` output: speedup over OpenBLAS against sparsity, one
# line per batch size, one panel per thread count, for one shape and bank (default
# 6000x3000, bank 32), like the paper's figure; with several runs concatenated, each point
# is the median speedup over the runs. Needs gnuplot (Debian: gnuplot-nox).
#   bench/plot_kernels.sh RESULTS.jsonl OUT.png [SHAPE] [BANK]
#   balsa bench kernels --shape 6000x3000 --json | bench/plot_kernels.sh - OUT.png
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 RESULTS.jsonl|- OUT.png [SHAPE] [BANK]" >&2
    exit 2
fi
in=$1 out=$2 shape=${3:-6000x3000} bank=${4:-32}
command -v gnuplot >/dev/null || { echo "$0: gnuplot not found (apt-get install gnuplot-nox)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One data file per (threads, batch): "sparsity speedup" lines, sorted by sparsity. Input
# may hold several runs (files concatenated): each point is the median over the runs.
cat "$in" | awk -v shape="$shape" -v bank="$bank" -v dir="$tmp" '
    function num(key,   m) {
        if (match($0, "\"" key "\": *[0-9.eE+-]+")) {
            m = substr($0, RSTART, RLENGTH); sub(/^[^:]*: */, "", m); return m + 0
        }
        return -1
    }
    /^\{/ && index($0, "\"shape\": \"" shape "\"") && num("bank") == bank {
        key = num("threads") SUBSEP num("batch") SUBSEP num("sparsity")
        n[key]++; v[key, n[key]] = num("speedup")
    }
    END {
        for (key in n) {
            split(key, part, SUBSEP)
            c = n[key]
            for (i = 1; i <= c; i++) s[i] = v[key, i]
            for (i = 2; i <= c; i++)          # insertion sort of the runs
                for (j = i; j > 1 && s[j - 1] > s[j]; j--) { t = s[j]; s[j] = s[j - 1]; s[j - 1] = t }
            med = c % 2 ? s[(c + 1) / 2] : (s[c / 2] + s[c / 2 + 1]) / 2
            print part[3], med >> (dir "/t" part[1] "_b" part[2])
        }
    }'
ls "$tmp"/t* >/dev/null 2>&1 || { echo "$0: no $shape bank $bank cases in $in" >&2; exit 1; }
for f in "$tmp"/t*; do sort -n -o "$f" "$f"; done

threads=$(ls "$tmp" | sed 's/^t\([0-9]*\)_b.*/\1/' | sort -n | uniq)
nthreads=$(echo "$threads" | wc -l)
{
    echo "set terminal pngcairo size $((560 * nthreads)),440 font 'sans,10'"
    echo "set output '$out'"
    echo "set multiplot layout 1,$nthreads title 'balsa balanced-sparse vs OpenBLAS dense, $shape, bank $bank'"
    echo "set xlabel 'sparsity'; set ylabel 'speedup over OpenBLAS (x)'"
    echo "set grid; set key top left; set logscale y 2; set yrange [0.25:*]"
    for t in $threads; do
        echo "set title '$t thread$([ "$t" = 1 ] || echo s)'"
        plot="plot 1 with lines dt 2 lc rgb 'gray' title 'OpenBLAS'"
        for b in $(ls "$tmp" | grep "^t${t}_b" | sed 's/.*_b//' | sort -n); do
            plot="$plot, '$tmp/t${t}_b$b' using 1:2 with linespoints lw 2 title 'batch $b'"
        done
        echo "$plot"
    done
    echo "unset multiplot"
} > "$tmp/plot.gp"
gnuplot "$tmp/plot.gp"
echo "wrote $out"
