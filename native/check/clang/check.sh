#!/usr/bin/env bash
# Compiles the kernels with clang's NVPTX back end (no CUDA toolkit: CI has none) so that a change to native/
# that does not parse, does not instantiate or binds an inline-PTX operand wrongly fails CI before it costs a
# device session. It does not assemble the PTX (ptxas is the toolkit's; the sm_90a instructions pass through as
# text) and proves nothing about behaviour: the device checks do that (native/README.md). Prints one line per
# translation unit and the counts.
set -uo pipefail
cd "$(dirname "$0")/../.."
CLANG=${CLANG:-clang++-14}
if ! command -v "$CLANG" > /dev/null; then
    echo "clang-14 not found: installing Debian's clang-14"
    (apt-get install -y -qq clang-14 > /dev/null 2>&1 || sudo -n apt-get install -y -qq clang-14 > /dev/null 2>&1) || true
fi
if ! command -v "$CLANG" > /dev/null; then echo "FAIL: $CLANG is needed (Debian package clang-14)"; echo "0 passed, 1 failed"; exit 1; fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
passed=0 failed=0
# The module three times: as shipped, and with the candidates exported (build.sh EXPORT_NARROW=1, EXPORT_CLUSTER=1).
for tu in kernels/flashmla_module.cu kernels/flashmla_module.cu:-DMLA_EXPORT_NARROW \
    "kernels/flashmla_module.cu:-DMLA_EXPORT_NARROW -DMLA_EXPORT_CLUSTER" kernels/decode_narrow_candidates.cu kernels/decode_cluster_candidates.cu \
    check/clang/unit_kernels.cu; do
    def=""
    if [[ "$tu" == *:* ]]; then def=${tu#*:}; tu=${tu%%:*}; fi
    if "$CLANG" $def -x cuda --cuda-device-only -nocudainc -nocudalib --cuda-gpu-arch=sm_80 \
        -Xclang -target-feature -Xclang +ptx70 -std=c++17 -O2 -Werror=return-type \
        -include check/clang/stubs/cuda_stub_core.h -Icheck/clang/stubs -Iinclude \
        -S -o "$out/$(basename "$tu").ptx" "$tu" > "$out/log" 2>&1; then
        echo "PASS $tu $def ($(grep -c '^\.visible \.entry\|^\.entry\|^\.weak \.entry' "$out/$(basename "$tu").ptx") kernels)"
        passed=$((passed + 1))
    else
        echo "FAIL $tu $def"
        grep -E "error|note" "$out/log" | head -20
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
