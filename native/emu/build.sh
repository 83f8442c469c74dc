#!/usr/bin/env bash
# Builds the CPU emulator's check (emu_check.cpp) with the host compiler: the kernels as host code over
# cuda_emu.h / ptx_emu.h (no CUDA toolkit). Usage: [EXPORT_NARROW=1] [EXPORT_CLUSTER=1] emu/build.sh [OUTPUT]
# (default build/emu_check); EXPORT_NARROW=1 and EXPORT_CLUSTER=1 as in build.sh: the exported kernels are the
# candidates.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/emu_check}
mkdir -p "$(dirname "$out")"
CXX=${CXX:-g++}
defines=()
if [ "${EXPORT_NARROW:-0}" = 1 ]; then defines+=(-DMLA_EXPORT_NARROW); fi
if [ "${EXPORT_CLUSTER:-0}" = 1 ]; then defines+=(-DMLA_EXPORT_CLUSTER); fi
exec "$CXX" -std=c++17 -O1 -g -Wall -Wno-unknown-pragmas -Wno-unused-variable -Wno-unused-but-set-variable \
    "${defines[@]}" -include emu/cuda_emu.h -Iinclude -Iemu/stubs emu/emu_check.cpp -o "$out"
