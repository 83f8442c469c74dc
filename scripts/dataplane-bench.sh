#!/usr/bin/env bash
# The data-plane benchmark (issue 5), run ON the GPU machine with the unpacked publish: raw loopback TCP
# (flashmla tcpbench), then `flashmla bench-matrix` (b 32/128 x h_q 16/128 x 1/2/4/8 connections, s_q 1,
# 4 requests in flight per stream, raw TCP at the same connection count in the same run) against the server
# on the CUDA backend (s_k 4096) and on the CPU backend (s_k 1: the transport with next to no compute).
# The client uses the library's default transport (LargeFrameHttp2Handler, 1 MiB DATA frames).
# Results files land in $OUT; a short table is printed last. About 4 minutes.
#
#   bash scripts/dataplane-bench.sh [APP_DIR] [FATBIN]
#     APP_DIR: the unpacked publish (default /tmp/flashmla-app/flashmla), FATBIN (default native/build/flashmla.fatbin)
# Env: OUT, PORT (50061), DP_SECONDS (3), DP_CONNECTIONS (1,2,4,8), DP_BATCH (32,128), DP_HEADS (16,128),
#      DP_CONTEXT (4096), DP_SKIP_CPU=1, DP_SKIP_CUDA=1, DP_SKIP_TRANSPORT_AB=1, DP_SKIP_RUNTIME_AB=1.
# Transport A/B (CUDA server, b 128, h_q 16 and 128, 1 and 4 connections): large-frames vs sockets.
# Server A/B (same rows) against the transport A/B's large-frames rows (as shipped): Kestrel's default
# transport, no inline scheduling, 256 KiB blocks, PinnedTensorBuffers=false. DP_AB_ARGS: extra
# bench-matrix arguments; DP_AB_VARIANTS replaces the variants, DP_AB_CONNECTIONS (1,4) their connection counts.
set -uo pipefail
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
app=${1:-/tmp/flashmla-app/flashmla}
fatbin=${2:-$PWD/native/build/flashmla.fatbin}
port=${PORT:-50061}
seconds=${DP_SECONDS:-3}
conns=${DP_CONNECTIONS:-1,2,4,8}
batch=${DP_BATCH:-32,128}
heads=${DP_HEADS:-16,128}
context=${DP_CONTEXT:-4096}
stamp=$(date -u +%Y%m%d-%H%M)
machine="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9\n' '_')"
res="$OUT/dataplane_${stamp}_${machine:-nogpu}.md"
{
  echo "# Data plane, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(hostname), $(nproc) cores, ${machine:-no GPU}"
  echo
  grep -E '^(commit|date):' "$app/PACKED.txt" 2>/dev/null | sed 's/^/publish /'
  echo
} > "$res"

# shellcheck source=lib/dataplane-server.sh
source "$(dirname "$0")/lib/dataplane-server.sh"

echo "== tcpbench (connections $conns)"
timeout 60 "$app/flashmla" tcpbench --connections "$conns" --seconds 2 --out "$res"

status=0
if [[ "${DP_SKIP_CUDA:-0}" != 1 && -f "$fatbin" ]]; then
  echo "== bench-matrix, CUDA backend, s_k $context"
  if start_server cuda "$port" --FlashMla:FatbinPath="$fatbin"; then
    timeout 240 "$app/flashmla" bench-matrix --address "http://127.0.0.1:$port" --batch "$batch" --heads "$heads" \
      --connections "$conns" --context "$context" --seconds "$seconds" --tcp-seconds 1 --out "$res" || status=1
  else
    echo "CUDA server did not start"; tail -n 20 "$OUT/dataplane-server-cuda.log"; status=1
  fi
  stop_server
fi
if [[ "${DP_SKIP_TRANSPORT_AB:-0}" != 1 && "${DP_SKIP_CUDA:-0}" != 1 && -f "$fatbin" ]]; then
  # Client transport A/B on the CUDA server: our large-frame HTTP/2 handler (1 MiB DATA frames both ways,
  # the client library's default) against .NET's SocketsHttpHandler (16 KiB frames), same rows, interleaved.
  echo "== transport A/B: large-frames vs sockets (b 128, 1 and 4 connections)"
  echo "### transport A/B: LargeFrameHttp2Handler vs SocketsHttpHandler (CUDA server as shipped)" >> "$res"
  if start_server cuda "$port" --FlashMla:FatbinPath="$fatbin"; then
    timeout 150 "$app/flashmla" bench-matrix --address "http://127.0.0.1:$port" --batch 128 --heads 16,128 \
      --connections 1,4 --context "$context" --seconds "$seconds" --tcp-seconds 0 --transport large-frames,sockets --out "$res" || status=1
  else
    echo "CUDA server did not start"; status=1
  fi
  stop_server
fi
if [[ "${DP_SKIP_RUNTIME_AB:-0}" != 1 && "${DP_SKIP_CUDA:-0}" != 1 && -f "$fatbin" ]]; then
  # Server variants at b 128, 1 and 4 connections, each against the transport A/B's large-frames rows (as
  # shipped: 1 MiB socket blocks, inline scheduling, tensor buffers page-locked): Kestrel's own transport
  # (4 KiB blocks, no inline scheduling), no inline scheduling, 256 KiB blocks, tensors staged through the
  # backend's own pinned buffers.
  # (The GC / thread-pool A/B of the 16:16 round chose server GC.)
  variants=("kestrel-default-transport||--FlashMla:SocketBlockKiB=4 --FlashMla:InlineSocketScheduling=false"
    "no-inline-scheduling||--FlashMla:InlineSocketScheduling=false" "256k-blocks||--FlashMla:SocketBlockKiB=256"
    "staged-buffers||--FlashMla:PinnedTensorBuffers=false")
  # DP_AB_VARIANTS="name||server args;name||server args" replaces the list.
  if [[ -n "${DP_AB_VARIANTS:-}" ]]; then IFS=';' read -r -a variants <<< "$DP_AB_VARIANTS"; fi
  for variant in "${variants[@]}"; do
    name=${variant%%|*}; rest=${variant#*|}; SERVER_ENV=${rest%%|*}; server_args=${rest#*|}
    echo "== server A/B: $name (${SERVER_ENV:-default env} ${server_args})"
    echo "### server A/B: $name (${server_args:-as shipped: tensor buffers page-locked}${SERVER_ENV:+, $SERVER_ENV})" >> "$res"
    # shellcheck disable=SC2086
    if SERVER_ENV=$SERVER_ENV start_server cuda "$port" --FlashMla:FatbinPath="$fatbin" $server_args; then
      timeout 120 "$app/flashmla" bench-matrix --address "http://127.0.0.1:$port" --batch 128 --heads 16,128 \
        --connections "${DP_AB_CONNECTIONS:-1,4}" --context "$context" --seconds "$seconds" --tcp-seconds 0 --out "$res" ${DP_AB_ARGS:-} || status=1
    else
      echo "server ($name) did not start"; status=1
    fi
    stop_server
  done
  SERVER_ENV=
fi
if [[ "${DP_SKIP_CPU:-0}" != 1 ]]; then
  echo "== bench-matrix, CPU backend, s_k 1 (transport with next to no compute)"
  if start_server cpu $((port + 10)) --FlashMla:CpuMemoryMiB=512; then
    timeout 200 "$app/flashmla" bench-matrix --address "http://127.0.0.1:$((port + 10))" --batch "$batch" --heads "$heads" \
      --connections "$conns" --context 1 --seconds 2 --tcp-seconds 1 --out "$res" || status=1
  else
    echo "CPU server did not start"; tail -n 20 "$OUT/dataplane-server-cpu.log"; status=1
  fi
  stop_server
fi

echo
echo "==================== data plane ($res)"
grep -E '^## |^### |^\| ' "$res" | grep -v -- '--- |' | cut -c1-200
exit $status
