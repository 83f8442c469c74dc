#!/usr/bin/env bash
# One device round for the native kernels (run on the GPU machine from the
# repository root, or from a copy that holds native/ and scripts/): build,
# resource report, SASS summary, the scheduler test, all checks (of the
# exported decode and of any harness-only candidate), then the steady-state
# bench of those that passed. Logs land in $OUT (the device tool brings them
# back); a short table last.
#
# usage: [CHECK_KERNELS="a b"] [BENCH_ARGS="..."] [BENCH_KERNELS=a,b] [PROFILE=1] bash scripts/device-native.sh
#   CHECK_KERNELS  decode kernels to check (default: every one the harness has)
#   BENCH_ARGS     bench options (default: the whole 44-shape grid, steady state);
#                  e.g. "--shapes 0,2,3,4 --rounds 2" or "--quick"
#   BENCH_KERNELS  kernels to bench among those that passed (default: all that passed)
#   PROFILE=1      + Nsight Compute on NCU_SHAPES (default "0 3") of NCU_KERNELS (default the exported one)
# Timeouts inside (CHECK_TIMEOUT per kernel, BENCH_TIMEOUT) keep the round
# inside one device call.
set -uo pipefail
OUT=${OUT:-$PWD/results/raw}  # ignored by git; $PWD is the repository root here
mkdir -p "$OUT"
cd "$(dirname "$0")/../native"
{
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,power.limit \
        --format=csv
    nvcc --version | tail -2
} 2>&1 | tee "$OUT/build.log"
t0=$(date +%s)
bash build.sh >> "$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/build.log"
if [ "$build_rc" -ne 0 ]; then tail -60 "$OUT/build.log"; exit 1; fi

# Per-kernel instruction counts: tensor-core, TMA, barrier instructions, and
# anything in local memory, for the module and the harness (any candidate).
for bin in build/flashmla.fatbin build/flashmla_check; do cuobjdump -sass "$bin"; done > build/sass.txt 2>&1
awk '/Function :/ {f=$3} f ~ /decode|combine/ {for (k in pat) if ($0 ~ pat[k]) n[f" "k]++}
     BEGIN {split("HGMMA UTMALDG UTMAPF LDL STL BAR MUFU.EX2 SHFL WARPGROUP SYNCS", a, " "); for (i in a) pat[a[i]]=a[i]"[. ]"}
     END {for (x in n) print x, n[x]}' build/sass.txt | sort -u > "$OUT/sass_summary.txt"
cp build/ptxas.txt build/ptxas_harness.txt build/ptxas_candidate.txt "$OUT/" 2>/dev/null
# If ptxas serialised the wgmma of a decode kernel (C7514), say where: the
# source lines (the harness is built with -lineinfo) of the warpgroup
# arrive/wait instructions in the exported kernel's SASS.
if grep -q C7514 build/ptxas.txt; then
    mkdir -p build/cubin
    (cd build/cubin && cuobjdump -xelf all ../flashmla_check > /dev/null 2>&1)
    for c in build/cubin/*.cubin; do
        nvdisasm --print-line-info-inline "$c" 2> /dev/null || nvdisasm --print-line-info "$c" 2> /dev/null
    done > build/sass_lines.txt
    awk '/\.section[ \t]+\.text\./ {f = ($0 ~ /flashmla_decode_splitkv/)} f && /\/\/## File/ {loc = $0}
         f && /WARPGROUP\.(DEPBAR|ARRIVE)/ {n[loc]++} END {for (l in n) print n[l], l}' build/sass_lines.txt |
        sort -rn | head -30 > "$OUT/serialised_at.txt"
fi

./build/tile_scheduler_test > "$OUT/scheduler.log" 2>&1
sched_rc=$?

# Checks: every decode kernel the harness has, the exported one first (its
# driver-API cases go through the fatbin by the ABI name).
kernels=$(./build/flashmla_check --list-kernels 2>/dev/null)
check_rc=0
passed=""
: > "$OUT/check.log"
for k in ${CHECK_KERNELS:-$kernels}; do
    echo "######## $k" >> "$OUT/check.log"
    timeout "${CHECK_TIMEOUT:-60}" ./build/flashmla_check --fatbin build/flashmla.fatbin --kernel "$k" >> "$OUT/check.log" 2>&1
    rc=$?
    echo "check $k rc=$rc" >> "$OUT/check_summary.txt"
    if [ "$rc" -eq 0 ]; then passed="$passed,$k"; else check_rc=1; fi
done
cat "$OUT/check_summary.txt" >> "$OUT/check.log"
rm -f "$OUT/check_summary.txt"
bench_kernels=""
for k in $(echo "${BENCH_KERNELS:-${passed#,}}" | tr ',' ' '); do
    case ",$passed," in *",$k,"*) bench_kernels="$bench_kernels,$k" ;; esac
done
res="$OUT/bench_$(date -u +%Y%m%d-%H%M).md"
bench_rc=skipped
if [ -f "$OUT/serialised_at.txt" ] && [ -z "${BENCH_ANYWAY:-}" ]; then
    bench_kernels=""  # a serialised decode is not worth timing (BENCH_ANYWAY=1 times it anyway)
    echo "bench skipped: C7514" > "$OUT/bench.log"
fi
if [ -n "$bench_kernels" ]; then
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-420}" ./build/flashmla_check --bench --kernels "${bench_kernels#,}" --results "$res" \
        ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
    bench_rc=$?
fi

# Optional profile (PROFILE=1): Nsight Compute on one launch of each shape.
if [ -n "${PROFILE:-}" ]; then
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    for kn in ${NCU_KERNELS:-flashmla_decode_splitkv}; do
    for shape in ${NCU_SHAPES:-0 3}; do
        echo "######## shape $shape $kn"
        timeout 150 "$NCU" --clock-control none --kernel-name "$kn" --launch-skip 6 --launch-count 1 \
            --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
            --section WarpStateStats --section Occupancy ./build/flashmla_check --bench --shape "$shape" --kernel "$kn"
    done
    done > "$OUT/ncu.txt" 2>&1
fi
echo "==================== resources (ptxas: decode kernels)"
cat build/ptxas.txt build/ptxas_harness.txt | grep -A3 -E "Compiling entry function '.*decode_(splitkv|v1)" |
    grep -E "Compiling|Used|spill|stack" | sed 's/ptxas info    : //' | sort -u
grep -hE "C75[0-9][0-9]|Performance" build/ptxas.txt build/ptxas_harness.txt | sort -u | head -8
if [ -f "$OUT/serialised_at.txt" ]; then
    echo "==================== C7514: warpgroup arrive/wait instructions by source line"
    sed 's|/[^ ]*/native/||g' "$OUT/serialised_at.txt" | cut -c1-220
fi
echo "==================== sass"
cat "$OUT/sass_summary.txt"
echo "==================== scheduler test rc=$sched_rc: $(tail -1 "$OUT/scheduler.log")"
echo "==================== checks"
grep -E "^########|^FAIL|^     |error|SUMMARY|^check |^NOTE" "$OUT/check.log" | head -40
echo "==================== bench (rc=$bench_rc; full table in $(basename "$res"))"
grep -E "^ceilings" "$OUT/bench.log"
sed -n '/^SHORT/,$p' "$OUT/bench.log"
if [ "$bench_rc" != 0 ]; then tail -5 "$OUT/bench.log"; fi
if [ -f "$OUT/ncu.txt" ]; then
    echo "==================== ncu (full report in ncu.txt)"
    grep -E "######## shape|Duration|DRAM Throughput|Compute \(SM\) Throughput|Executed Ipc A|Issue Slots Busy|Stall" "$OUT/ncu.txt" | head -30
fi
[ "$check_rc" -eq 0 ] && [ "$sched_rc" -eq 0 ] && [ "$bench_rc" = 0 ]
