#!/usr/bin/env bash
# One device round for the native kernels (run on the GPU machine from the
# repository root): build, resource report, SASS summary, all checks (of every
# decode implementation and of the exported kernel), bench of those that pass.
# Logs land in $OUT (the device tool brings them back); a short table last.
set -uo pipefail
OUT=${OUT:-$PWD/results/raw}  # ignored by git; $PWD is the repository root here
mkdir -p "$OUT"
cd "$(dirname "$0")/../native"
# usage: [MLA_DECODE_EXPORT=N] [PROFILE=1] [CHECK_TIMEOUT=60] bash scripts/device-native.sh
# Quicker rounds: CHECK_KERNELS="a b" checks only those (the exported kernel is
# always checked last); BENCH_ARGS="--shapes 0,1,2,3,4 --rounds 3 --reps 20"
# passes bench options (default: the whole grid, 3 interleaved rounds of 20);
# NCU_KERNELS="a b" profiles those kernels under PROFILE=1 (default: the
# exported one).
# Every decode implementation kept (v2 mma.sync, v5, v14, v15) is built beside
# the exported one under its own kernel name, checked on its own and benched in
# the same run. MLA_DECODE_EXPORT overrides mla_config.h's choice of the exported
# kernel for this build (passed through build.sh).
{
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw --format=csv
    nvcc --version | tail -2
} 2>&1 | tee "$OUT/build.log"
t0=$(date +%s)
bash build.sh >> "$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/build.log"
if [ "$build_rc" -ne 0 ]; then tail -60 "$OUT/build.log"; exit 1; fi

# Per-kernel instruction counts: are the tensor-core, ldmatrix and cp.async
# instructions there, and is anything in local memory?
cuobjdump -sass build/flashmla.fatbin > build/sass.txt 2>&1
awk '/Function :/ {f=$3} f!="" {for (k in pat) if ($0 ~ pat[k]) n[f" "k]++}
     BEGIN {split("HGMMA HMMA LDSM LDGSTS LDL STL BAR MUFU.EX2 SHFL WARPGROUP", a, " "); for (i in a) pat[a[i]]=a[i]"[. ]"}
     END {for (x in n) print x, n[x]}' build/sass.txt | sort > "$OUT/sass_summary.txt"

# Checks: every implementation under its own name, then the exported kernel
# (its driver-API cases go through the fatbin by the ABI name) unless the
# implementation it wraps already failed. One log, check.log.
export_impl=$(grep -oE "^#define MLA_DECODE_EXPORT [0-9]+" include/mla_config.h | awk '{print $3}')
export_impl=${MLA_DECODE_EXPORT:-$export_impl}
check_rc=0
passed=""
: > "$OUT/check.log"
for k in ${CHECK_KERNELS:-flashmla_decode_v2_mma flashmla_decode_v5_wgmma_roles flashmla_decode_v14_tma \
         flashmla_decode_v15_tma_block_gates} \
         flashmla_decode_splitkv; do
    if [ "$k" = flashmla_decode_splitkv ] && ! echo "$passed" | grep -q "_v${export_impl}_"; then
        echo "check $k (= v$export_impl) skipped: v$export_impl failed" | tee -a "$OUT/check_summary.txt"
        check_rc=1
        continue
    fi
    echo "######## $k" >> "$OUT/check.log"
    timeout "${CHECK_TIMEOUT:-40}" ./build/flashmla_check --fatbin build/flashmla.fatbin --kernel "$k" >> "$OUT/check.log" 2>&1
    rc=$?
    echo "check $k rc=$rc" >> "$OUT/check_summary.txt"
    if [ "$rc" -eq 0 ]; then passed="$passed,$k"; else check_rc=1; fi
done
cat "$OUT/check_summary.txt" >> "$OUT/check.log"
rm -f "$OUT/check_summary.txt"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '_')
res="$OUT/bench_$(date -u +%Y%m%d-%H%M)_${gpu}.md"
bench_rc=skipped
if [ -n "$passed" ]; then  # bench the kernels that passed their checks
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-200}" ./build/flashmla_check --bench --kernels "${passed#,}" --results "$res" \
        ${BENCH_ARGS:---rounds 3 --reps 20} > "$OUT/bench.log" 2>&1
    bench_rc=$?
fi

# Optional profile (PROFILE=1): Nsight Compute on one memory-bound and one
# compute-bound shape, the 7th decode launch of each.
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
echo "==================== resources (ptxas)"
grep -E "Compiling entry|Used|spill|stack|wgmma|Performance|arning" build/ptxas.txt | sed 's/ptxas info    : //'
echo "==================== sass"
cat "$OUT/sass_summary.txt"
echo "==================== checks"
grep -E "^########|^FAIL|^     |error|SUMMARY|^check " "$OUT/check.log" | head -60
echo "==================== bench (rc=$bench_rc; full table in $(basename "$res"))"
grep -E "^bench " "$OUT/bench.log" | head -60
tail -9 "$OUT/bench.log"
if [ -f "$OUT/ncu.txt" ]; then
    echo "==================== ncu (full report in ncu.txt)"
    grep -E "######## shape|^  [A-Za-z].*: [0-9.]+ us|Duration|DRAM Throughput|Compute \(SM\) Throughput|L1/TEX Hit|Executed Ipc A|Issue Slots Busy|Shared Memory|Bank Conflicts|Stall" "$OUT/ncu.txt" | head -40
fi
[ "$check_rc" -eq 0 ] && [ "$bench_rc" = 0 ]
