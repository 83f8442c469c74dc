#!/usr/bin/env bash
# CI's run of the decode kernels on the CPU emulator (README: "CPU emulator"): builds emu_check, runs every
# kernel on every case under two scheduling seeds, then the mutations (bugs put into copies of the kernels)
# that emu_check must catch, then the exported kernels as an EXPORT_NARROW=1 EXPORT_CLUSTER=1 module has them. The last line
# is the sum of all three: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
if ! bash emu/build.sh build/emu_check; then echo "FAIL: emu_check did not build"; echo "0 passed, 1 failed"; exit 1; fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
./build/emu_check --seeds 2 | tee "$out"
rc1=${PIPESTATUS[0]}
python3 emu/mutations.py --jobs 2 | tee -a "$out"
rc2=${PIPESTATUS[0]}
# The module as EXPORT_NARROW=1 EXPORT_CLUSTER=1 builds it: the ABI's decode kernels dispatch to v18 / v19 and
# fp8 v3, and the bf16 one is launched in clusters of two where the row groups allow, as its exported width says.
rc3=1
if EXPORT_NARROW=1 EXPORT_CLUSTER=1 bash emu/build.sh build/emu_check_export; then
    ./build/emu_check_export --kernel flashmla_decode_splitkv --kernel flashmla_decode_splitkv_fp8 --seeds 1 --random 0 \
        --no-unit | sed 's/^\(PASS\|FAIL\) /\1 [EXPORT] /' | tee -a "$out"
    rc3=${PIPESTATUS[0]}
else
    echo "FAIL: emu_check with EXPORT_NARROW=1 EXPORT_CLUSTER=1 did not build"; echo "0 passed, 1 failed" | tee -a "$out"
fi
grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | awk '{p+=$1; f+=$3} END {printf "%d passed, %d failed\n", p, f}'
[ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ] && [ "$rc3" -eq 0 ]
