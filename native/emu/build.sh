#!/usr/bin/env bash
# Builds the CPU emulator's check (emu_check.cpp) with the host compiler: the kernels as host code over
# cuda_emu.h / ptx_emu.h (no CUDA toolkit). Usage: emu/build.sh [OUTPUT] (default build/emu_check).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/emu_check}
mkdir -p "$(dirname "$out")"
CXX=${CXX:-g++}
exec "$CXX" -std=c++17 -O1 -g -Wall -Wno-unknown-pragmas -Wno-unused-variable -Wno-unused-but-set-variable \
    -include emu/cuda_emu.h -Iinclude -Iemu/stubs emu/emu_check.cpp -o "$out"
