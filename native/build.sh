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
# EXPORT_CLUSTER=1: the module's bf16 decode is v19 for more than 32 query rows (2-CTA clusters; with EXPORT_NARROW
# too, v18 for 32 rows or fewer), and it exports flashmla_decode_splitkv_cluster_x = 2 so the host launches it in
# clusters of two (mla_params.h, MLA_DECODE_CLUSTER_WIDTH_SUFFIX).
if [ "${EXPORT_CLUSTER:-0}" = 1 ]; then FLAGS+=(-DMLA_EXPORT_CLUSTER); echo "build: EXPORT_CLUSTER=1: the module exports v19 (2-CTA clusters)"; fi
mkdir -p build
"$NVCC" "${FLAGS[@]}" -Xptxas -v --fatbin -o build/flashmla.fatbin kernels/flashmla_module.cu > build/ptxas.txt 2>&1 &
fatbin_pid=$!
g++ -O2 -std=c++17 -o build/tile_scheduler_test check/tile_scheduler_test.cpp
rc=0
# The harness links the module's sources and the candidates: harness-only decode kernels, one translation unit
# per family (kernels/decode_<family>_candidates.cu, listed in flashmla_check.cu's kDecodeKernels under
# MLA_<FAMILY>_CANDIDATES). Each family is compiled on its own first, in parallel: one that does not compile must
# not cost the device round the others' checks, so it is left out of the harness and the log says so. Their ptxas
# reports are appended to build/ptxas_harness.txt (and kept in build/ptxas_cand_<family>.txt).
families=(narrow cluster)
declare -A cand_pid
for f in "${families[@]}"; do
    "$NVCC" "${FLAGS[@]}" -Xptxas -v -lineinfo -c -o "build/cand_$f.o" "kernels/decode_${f}_candidates.cu" \
        > "build/ptxas_cand_$f.txt" 2>&1 &
    cand_pid[$f]=$!
done
cand_objs=() cand_defs=()
for f in "${families[@]}"; do
    if wait "${cand_pid[$f]}"; then
        cand_objs+=("build/cand_$f.o")
        cand_defs+=("-DMLA_${f^^}_CANDIDATES")
        echo "build: harness with the $f candidates"
    else
        echo "build: the $f candidates did not compile; their errors (build/ptxas_cand_$f.txt):"
        grep -v "^ptxas info\|^    [0-9]* bytes\|^ptxas info    : Used" "build/ptxas_cand_$f.txt" | head -60
        cp "build/ptxas_cand_$f.txt" build/ptxas_candidate.txt
    fi
done
"$NVCC" "${FLAGS[@]}" -Xptxas -v -lineinfo "${cand_defs[@]}" -o build/flashmla_check check/flashmla_check.cu \
    kernels/flashmla_module.cu "${cand_objs[@]}" -lcublas -lcuda > build/ptxas_harness.txt 2>&1 || rc=$?
for f in "${families[@]}"; do cat "build/ptxas_cand_$f.txt" >> build/ptxas_harness.txt; done
wait "$fatbin_pid" || rc=$?
cat build/ptxas.txt
if [ "$rc" -ne 0 ]; then grep -v "^ptxas info\|^    [0-9]* bytes\|^ptxas info    : Used" build/ptxas_harness.txt | head -80; fi
exit "$rc"
