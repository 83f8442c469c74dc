#!/usr/bin/env bash
# CI's run of the decode kernels on the CPU emulator (README: "CPU emulator"): builds emu_check, runs every
# kernel on every case under two scheduling seeds, then the mutations (bugs put into copies of the kernels)
# that emu_check must catch. The last line is the sum of both: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
if ! bash emu/build.sh build/emu_check; then echo "FAIL: emu_check did not build"; echo "0 passed, 1 failed"; exit 1; fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
./build/emu_check --seeds 2 | tee "$out"
rc1=${PIPESTATUS[0]}
python3 emu/mutations.py --jobs 2 | tee -a "$out"
rc2=${PIPESTATUS[0]}
grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | awk '{p+=$1; f+=$3} END {printf "%d passed, %d failed\n", p, f}'
[ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ]
