#!/usr/bin/env bash
# Builds the native kernels (needs nvcc 13.0 and an sm_90a target):
#   build/flashmla.fatbin        the module the C# service loads (cuModuleLoadData): only its kernels
#   build/flashmla_check         checks and bench, linking the same kernel sources
#   build/ptxas.txt              the -Xptxas -v resource report of the module
#   build/ptxas_harness.txt      the same for the harness
set -euo pipefail
cd "$(dirname "$0")"
NVCC=${NVCC:-nvcc}
FLAGS=(-O3 -std=c++17 "-gencode=arch=compute_90a,code=sm_90a" -I/usr/local/cuda/include/cccl -Iinclude)
# EXPORT_NARROW=1: the module's decode kernels are the narrow candidates (v18, fp8 v3) under the ABI names, so a
# device round can run the service's checks and bench on them (kernels/decode_export.cu, decode_fp8_export.cu).
if [ "${EXPORT_NARROW:-0}" = 1 ]; then FLAGS+=(-DMLA_EXPORT_NARROW); echo "build: EXPORT_NARROW=1: the module exports v18 and fp8 v3"; fi
mkdir -p build
"$NVCC" "${FLAGS[@]}" -Xptxas -v --fatbin -o build/flashmla.fatbin kernels/flashmla_module.cu > build/ptxas.txt 2>&1 &
fatbin_pid=$!
g++ -O2 -std=c++17 -o build/tile_scheduler_test check/tile_scheduler_test.cpp
rc=0
# The harness links the module's sources and the candidates (harness-only decode kernels, listed in
# flashmla_check.cu's kDecodeKernels under MLA_NARROW_CANDIDATES). A candidate that does not compile must not cost
# the device round its checks: the harness is then built again without it, and the log says so.
harness() {
    "$NVCC" "${FLAGS[@]}" -Xptxas -v -lineinfo -o build/flashmla_check "$@" check/flashmla_check.cu \
        kernels/flashmla_module.cu -lcublas -lcuda
}
if harness -DMLA_NARROW_CANDIDATES kernels/decode_narrow_candidates.cu > build/ptxas_harness.txt 2>&1; then
    echo "build: harness with the narrow candidates (v18, fp8 v3)"
else
    echo "build: the narrow candidates did not compile; their errors (build/ptxas_candidate.txt):"
    cp build/ptxas_harness.txt build/ptxas_candidate.txt
    grep -v "^ptxas info\|^    [0-9]* bytes\|^ptxas info    : Used" build/ptxas_candidate.txt | head -60
    harness > build/ptxas_harness.txt 2>&1 || rc=$?
fi
wait "$fatbin_pid" || rc=$?
cat build/ptxas.txt
if [ "$rc" -ne 0 ]; then grep -v "^ptxas info\|^    [0-9]* bytes\|^ptxas info    : Used" build/ptxas_harness.txt | head -80; fi
exit "$rc"
