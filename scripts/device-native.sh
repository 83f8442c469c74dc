#!/usr/bin/env bash
# One device round for the native kernels (run on the GPU machine from the
# repository root): build, resource report, SASS summary, all checks (of the
# exported decode kernel and of flashmla_decode_splitkv_alt), bench of both.
# Logs land in $OUT (the device tool brings them back); a short table last.
set -uo pipefail
OUT=${OUT:-/tmp/native-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../native"
# usage: [BASELINE=versions/v1_decode_splitkv.cu] [PROFILE=1] bash scripts/device-native.sh
# (BASELINE is relative to native/)
{
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw --format=csv
    nvcc --version | tail -2
} 2>&1 | tee "$OUT/build.log"
# Optional baseline: an earlier decode kernel (native/versions/*.cu), built
# beside the current one and benched in the same run for a fair comparison.
BASELINE=${BASELINE:-}
if [ -n "$BASELINE" ] && [ -f "$BASELINE" ]; then
    rm -rf /tmp/baseline && mkdir -p /tmp/baseline
    cp -r include host kernels check build.sh /tmp/baseline/
    cp "$BASELINE" /tmp/baseline/kernels/decode_splitkv.cu
    (cd /tmp/baseline && bash build.sh > build.log 2>&1) &
    baseline_pid=$!
fi
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

timeout 120 ./build/flashmla_check --fatbin build/flashmla.fatbin > "$OUT/check.log" 2>&1
check_rc=$?
timeout 120 ./build/flashmla_check --fatbin build/flashmla.fatbin --alt > "$OUT/check_alt.log" 2>&1
check_alt_rc=$?
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '_')
res="$OUT/bench_$(date -u +%Y%m%d-%H%M)_${gpu}.md"
bench_rc=skipped
if [ "$check_rc" -eq 0 ] && [ "$check_alt_rc" -eq 0 ]; then
    timeout ${BENCH_TIMEOUT:-200} ./build/flashmla_check --bench --results "$res" > "$OUT/bench.log" 2>&1
    bench_rc=$?
fi

# Optional profile (PROFILE=1): Nsight Compute on one memory-bound and one
# compute-bound shape, the 7th decode launch of each.
if [ -n "${PROFILE:-}" ]; then
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    for shape in 0 3; do
        echo "######## shape $shape"
        timeout 150 "$NCU" --clock-control none --kernel-name flashmla_decode_splitkv --launch-skip 6 --launch-count 1 \
            --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
            --section WarpStateStats --section Occupancy ./build/flashmla_check --bench --shape "$shape"
    done > "$OUT/ncu.txt" 2>&1
fi
if [ -n "${baseline_pid:-}" ]; then
    wait "$baseline_pid" && timeout 120 /tmp/baseline/build/flashmla_check --bench > "$OUT/bench_baseline.log" 2>&1
fi

echo "==================== resources (ptxas)"
grep -E "Compiling entry|Used|spill|stack|wgmma|Performance|arning" build/ptxas.txt | sed 's/ptxas info    : //'
echo "==================== sass"
cat "$OUT/sass_summary.txt"
for log in check check_alt; do
    echo "==================== $log"
    grep -E "^FAIL|^WARN|^     |error|wgmma_unit|SUMMARY" "$OUT/$log.log" | head -30
    tail -2 "$OUT/$log.log"
done
echo "==================== bench (rc=$bench_rc; full table in $(basename "$res"))"
grep -E "^bench " "$OUT/bench.log" | head -60
tail -8 "$OUT/bench.log"
if [ -f "$OUT/bench_baseline.log" ]; then
    echo "==================== baseline $BASELINE, same run"
    grep -E "^\| s_k" "$OUT/bench_baseline.log"
fi
if [ -f "$OUT/ncu.txt" ]; then
    echo "==================== ncu (full report in ncu.txt)"
    grep -E "######## shape|^  [A-Za-z].*: [0-9.]+ us|Duration|DRAM Throughput|Compute \(SM\) Throughput|L1/TEX Hit|Executed Ipc A|Issue Slots Busy|Shared Memory|Bank Conflicts|Stall" "$OUT/ncu.txt" | head -40
fi
[ "$check_rc" -eq 0 ] && [ "$check_alt_rc" -eq 0 ] && [ "$bench_rc" = 0 ]
