#!/usr/bin/env bash
# Builds the native kernels (needs nvcc 13.0 and an sm_90a target):
#   build/flashmla.fatbin  the module the C# service loads (cuModuleLoadData)
#   build/flashmla_check   checks and bench, linking the same kernel sources
#   build/ptxas.txt        the -Xptxas -v resource report of the module
set -euo pipefail
cd "$(dirname "$0")"
NVCC=${NVCC:-nvcc}
FLAGS=(-O3 -std=c++17 "-gencode=arch=compute_90a,code=sm_90a" -I/usr/local/cuda/include/cccl -Iinclude)
# MLA_DECODE_EXPORT=N picks the exported decode implementation (default: mla_config.h)
if [ -n "${MLA_DECODE_EXPORT:-}" ]; then FLAGS+=("-DMLA_DECODE_EXPORT=$MLA_DECODE_EXPORT"); fi
mkdir -p build
"$NVCC" "${FLAGS[@]}" -Xptxas -v --fatbin -o build/flashmla.fatbin kernels/flashmla_module.cu > build/ptxas.txt 2>&1 &
fatbin_pid=$!
g++ -O2 -std=c++17 -o build/tile_scheduler_test check/tile_scheduler_test.cpp
"$NVCC" "${FLAGS[@]}" -lineinfo -o build/flashmla_check check/flashmla_check.cu kernels/flashmla_module.cu \
    -lcublas -lcuda
rc=0
wait "$fatbin_pid" || rc=$?
cat build/ptxas.txt
exit "$rc"
