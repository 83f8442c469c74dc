#!/usr/bin/env bash
# Where a data-plane step's CPU time goes (issue 5): the server on the CUDA backend and the bench client,
# each writing an EventPipe CPU-sample trace (the runtime's own sampler: the device machine has no perf
# and no .NET SDK), while bench-matrix runs one row. Runs ON the GPU machine from the repository root with
# the publish carried in .devcarry/ (scripts/pack-device.sh); builds the kernels if needed. The traces come
# back compressed in $OUT; read them on the development machine with
#   dotnet-trace report server.nettrace topN -n 30      (dotnet tool install dotnet-trace)
#   bash scripts/dataplane-profile.sh [BATCH] [HEADS] [CONNECTIONS]     (default 128 128 4)
# DP_BACKEND=cpu (a smoke run without a GPU), DP_CONTEXT (s_k, 4096).
set -uo pipefail
OUT=${OUT:-$PWD/results/raw}  # ignored by git
mkdir -p "$OUT"
b=${1:-128}; h=${2:-128}; conns=${3:-4}
app=/tmp/flashmla-app/flashmla
fatbin=$PWD/native/build/flashmla.fatbin
port=${PORT:-50091}
# shellcheck source=lib/dataplane-server.sh
source "$(dirname "$0")/lib/dataplane-server.sh"
backend=${DP_BACKEND:-cuda}  # cpu: a smoke run anywhere (the transport with the CPU backend)
ensure_publish || exit 1
server_args=()
if [[ "$backend" == cuda ]]; then ensure_fatbin "$fatbin" || exit 1; server_args=(--FlashMla:FatbinPath="$fatbin"); fi
trace_env() { # output file
  echo "DOTNET_EnableEventPipe=1 DOTNET_EventPipeOutputPath=$1 DOTNET_EventPipeConfig=Microsoft-DotNETCore-SampleProfiler:0:5,Microsoft-Windows-DotNETRuntime:0x4c14fccbd:4"
}
SERVER_ENV=$(trace_env /tmp/server.nettrace) start_server "$backend" "$port" "${server_args[@]}" ||
  { tail -20 "$OUT/dataplane-server-$backend.log"; exit 1; }
# shellcheck disable=SC2046
env $(trace_env /tmp/client.nettrace) "$app/flashmla" bench-matrix --address "http://127.0.0.1:$port" --context "${DP_CONTEXT:-4096}" --batch "$b" --heads "$h" \
  --connections "$conns" --seconds 4 --warmup 1 --tcp-seconds 0 --out "$OUT/profile-bench.md" > "$OUT/profile-bench.log" 2>&1
stop_server
grep -E '^\| [0-9]' "$OUT/profile-bench.md" | cut -c1-120
ls -la /tmp/server.nettrace /tmp/client.nettrace
tar -C /tmp -cJf "$OUT/profile-traces.tar.xz" server.nettrace client.nettrace && ls -la "$OUT/profile-traces.tar.xz"
