#!/usr/bin/env bash
# The data-plane benchmark (issue 5), run ON the GPU machine with the unpacked publish: raw loopback TCP
# (flashmla tcpbench), then `flashmla bench-matrix` (b 32/128 x h_q 16/128 x 1/4 connections, s_q 1,
# 4 requests in flight per stream, raw TCP at the same connection count in the same run) against the server
# on the CUDA backend (s_k 4096) and on the CPU backend (s_k 1: the transport with next to no compute). Every
# row is measured twice, interleaved: decode on the Kestrel gRPC port (PORT) and on the server's data-plane
# port (FlashMla:DataPlanePort, PORT+1; metrics on PORT+2). The client uses the library's default transport
# (LargeFrameHttp2Handler, 1 MiB DATA frames). Results files land in $OUT; a short table is printed last
# (per row: backend, b, h_q, conns, decode port, payload GB/s each way, raw TCP, up/raw, p50, p99, compute).
# About 2.5 minutes with the defaults (6 at most), plus 1 per A/B variant turned on.
#
#   bash scripts/dataplane-bench.sh [APP_DIR] [FATBIN]
#     APP_DIR: the unpacked publish (default /tmp/flashmla-app/flashmla), FATBIN (default native/build/flashmla.fatbin)
# Env: OUT, PORT (50061; the CPU server uses PORT+10), DP_SECONDS (3), DP_CONNECTIONS (1,4), DP_BATCH (32,128),
#      DP_HEADS (16,128), DP_CONTEXT (4096), DP_SKIP_CPU=1, DP_SKIP_CUDA=1, DP_SKIP_DATA_PLANE_PORT=1 (gRPC port
#      only, data-plane listener off), DP_TRANSPORT_AB=1, DP_RUNTIME_AB=1, DP_TLS=1.
# TLS (DP_TLS=1): after each backend's cleartext matrix, the same rows against a second server of that backend with
# TLS on both ports (a development certificate from `flashmla dev-cert`, ECDSA P-256; the client trusts its CA),
# into the same results file; the table's decode port column says "tls" for those rows. Before them, `flashmla tlsbench`
# (TLS without HTTP/2: SslStream per record vs over the batching stream the data plane uses, AES-128 vs AES-256).
# The A/B sections are off by default (settled in the 18:21 round; results/2026-11-25-h100-dataplane.md) and measure the gRPC port:
# Transport A/B (DP_TRANSPORT_AB=1; CUDA server, b 128, h_q 16 and 128, 1 and 4 connections): large-frames vs sockets.
# Server A/B (DP_RUNTIME_AB=1; same rows) against the transport A/B's large-frames rows (as shipped): Kestrel's
# default transport, no inline scheduling, 256 KiB blocks, FLASHMLA_STAGE_TENSOR_BUFFERS=1. DP_AB_ARGS: extra
# bench-matrix arguments; DP_AB_VARIANTS replaces the variants, DP_AB_CONNECTIONS (1,4) their connection counts.
set -uo pipefail
OUT=${OUT:-$PWD/results/raw}  # ignored by git
mkdir -p "$OUT"
app=${1:-/tmp/flashmla-app/flashmla}
fatbin=${2:-$PWD/native/build/flashmla.fatbin}
port=${PORT:-50061}
seconds=${DP_SECONDS:-3}
conns=${DP_CONNECTIONS:-1,4}
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

count() { local IFS=,; set -- $1; echo $#; }
# The main matrix on the server start_server last started: decode on the gRPC port and (unless
# DP_SKIP_DATA_PLANE_PORT=1) on its data-plane port, interleaved per row; the time limit follows the row count.
# matrix PORT CONTEXT SECONDS [SCHEME [client args...]]: SCHEME https (with --ca FILE among the client args) for a TLS server.
matrix() {
  local p=$1 context=$2 secs=$3 scheme=${4:-http} decode=grpc ports=1
  shift $(( $# < 4 ? $# : 4 ))
  if [[ "${DP_SKIP_DATA_PLANE_PORT:-0}" != 1 ]]; then decode="grpc,$scheme://127.0.0.1:$data_plane_port"; ports=2; fi
  local rows=$(( $(count "$batch") * $(count "$heads") * $(count "$conns") * ports )) whole=${secs%.*}
  timeout $(( 90 + rows * (${whole:-0} + 3) )) "$app/flashmla" bench-matrix --address "$scheme://127.0.0.1:$p" --decode-address "$decode" \
    --batch "$batch" --heads "$heads" --connections "$conns" --context "$context" --seconds "$secs" --tcp-seconds 1 --out "$res" "$@"
}
# tls_matrix BACKEND PORT CONTEXT SECONDS [server args...]: the same rows against a TLS server of BACKEND (DP_TLS=1).
tls_matrix() {
  local backend=$1 p=$2 context=$3 secs=$4 certs; shift 4
  certs=$(mktemp -d)
  "$app/flashmla" dev-cert --out "$certs" --dns localhost --ip 127.0.0.1 > /dev/null || { echo "dev-cert failed"; return 1; }
  echo "== bench-matrix over TLS, $backend backend, s_k $context, gRPC port $p, data-plane port $((p + 1))"
  echo "### TLS on both ports (development certificate, ECDSA P-256), $backend backend: the rows above again, over TLS" >> "$res"
  local rc=0
  if start_server "$backend" "$p" "$@" --FlashMla:Tls:CertificateFile="$certs/tls.crt" --FlashMla:Tls:KeyFile="$certs/tls.key"; then
    matrix "$p" "$context" "$secs" https --ca "$certs/ca.crt" || rc=1
  else
    echo "$backend TLS server did not start"; tail -n 20 "$OUT/dataplane-server-$backend.log"; rc=1
  fi
  stop_server
  rm -rf "$certs"
  return $rc
}
data_plane_args=()
[[ "${DP_SKIP_DATA_PLANE_PORT:-0}" == 1 ]] && data_plane_args=(--FlashMla:DataPlanePort=-1)

echo "== tcpbench (connections $conns)"
timeout 60 "$app/flashmla" tcpbench --connections "$conns" --seconds 2 --out "$res"
if [[ "${DP_TLS:-0}" == 1 ]]; then
  # TLS alone, one loopback connection: cleartext vs SslStream per record vs batched records (as the data plane sends), AES-128/256.
  echo "== tlsbench"
  timeout 120 "$app/flashmla" tlsbench --seconds 2 --rounds 3 --out "$res" || echo "tlsbench failed"
fi

status=0
if [[ "${DP_SKIP_CUDA:-0}" != 1 && -f "$fatbin" ]]; then
  echo "== bench-matrix, CUDA backend, s_k $context, gRPC port $port, data-plane port $((port + 1))"
  if start_server cuda "$port" --FlashMla:FatbinPath="$fatbin" "${data_plane_args[@]}"; then
    matrix "$port" "$context" "$seconds" || status=1
  else
    echo "CUDA server did not start"; tail -n 20 "$OUT/dataplane-server-cuda.log"; status=1
  fi
  stop_server
  if [[ "${DP_TLS:-0}" == 1 ]]; then
    tls_matrix cuda "$port" "$context" "$seconds" --FlashMla:FatbinPath="$fatbin" "${data_plane_args[@]}" || status=1
  fi
fi
if [[ "${DP_TRANSPORT_AB:-0}" == 1 && "${DP_SKIP_CUDA:-0}" != 1 && -f "$fatbin" ]]; then
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
if [[ "${DP_RUNTIME_AB:-0}" == 1 && "${DP_SKIP_CUDA:-0}" != 1 && -f "$fatbin" ]]; then
  # Server variants at b 128, 1 and 4 connections, each against the transport A/B's large-frames rows (as
  # shipped: 1 MiB socket blocks, inline scheduling, tensor buffers page-locked): Kestrel's own transport
  # (4 KiB blocks, no inline scheduling), no inline scheduling, 256 KiB blocks, tensors staged through the
  # backend's own pinned buffers.
  # (The GC / thread-pool A/B of the 16:16 round chose server GC.)
  # The transport and staging switches are environment variables (MeasurementSwitches), the rest options.
  variants=("kestrel-default-transport|FLASHMLA_SOCKET_BLOCK_KIB=4 FLASHMLA_INLINE_SOCKET_SCHEDULING=false|"
    "no-inline-scheduling|FLASHMLA_INLINE_SOCKET_SCHEDULING=false|" "256k-blocks|FLASHMLA_SOCKET_BLOCK_KIB=256|"
    "staged-buffers|FLASHMLA_STAGE_TENSOR_BUFFERS=1|")
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
  if start_server cpu $((port + 10)) --FlashMla:CpuMemoryMiB=512 "${data_plane_args[@]}"; then
    matrix $((port + 10)) 1 2 || status=1
  else
    echo "CPU server did not start"; tail -n 20 "$OUT/dataplane-server-cpu.log"; status=1
  fi
  stop_server
  if [[ "${DP_TLS:-0}" == 1 ]]; then
    tls_matrix cpu $((port + 10)) 1 2 --FlashMla:CpuMemoryMiB=512 "${data_plane_args[@]}" || status=1
  fi
fi

echo
if [[ "${DP_TLS:-0}" == 1 ]]; then
  echo "==================== tlsbench"
  awk '/^## tlsbench/ { on = 1; next } /^## / { on = 0 } on && /^\| / && !/^\| --- / { print }' "$res"
fi
echo "==================== data plane ($res)"
# The bench-matrix rows of the results file, short: columns found by their header names; raw TCP is the
# same-run figure at the same connection count (tcpbench's when the section measured none, as the A/B ones).
awk -F'|' '
  function trim(x) { gsub(/^ +| +$/, "", x); return x }
  /^## tcpbench/ { section = "tcp"; next }
  /^## bench-matrix/ { section = "matrix"; next }
  /^### / { lines[++n] = $0; next }
  /^Server: backend / { split($0, w, " "); backend = w[3]; next }
  /^\| --- / { next }
  /^\| / {
    if (section == "tcp") { if (trim($2) ~ /^[0-9]+$/) tcp[trim($2)] = trim($3); next }
    if (trim($2) == "b") { delete col; for (i = 2; i < NF; i++) col[trim($i)] = i; next }
    if (section != "matrix") next
    c = trim($(col["conns"])); raw = trim($(col["raw TCP GB/s"])) + 0
    if (raw == 0 && (c in tcp)) raw = tcp[c] + 0
    up = trim($(col["up GB/s"])) + 0
    port = ("decode port" in col) ? trim($(col["decode port"])) : "grpc"
    if (("transport" in col) && trim($(col["transport"])) != "large-frames") port = port " " trim($(col["transport"]))
    kernel = ("kernel ms/call" in col) ? trim($(col["kernel ms/call"])) : "n/a"
    lines[++n] = sprintf("%-8s %4s %4s %5s  %-22s %7.2f %9.2f %12.2f %8s %8s %8s %10s %10s", backend, trim($2), trim($3), c, port, up,
      trim($(col["down GB/s"])), raw, raw > 0 ? sprintf("%.0f %%", 100 * up / raw) : "n/a",
      trim($(col["p50 ms"])), trim($(col["p99 ms"])), trim($(col["compute ms/call"])), kernel)
  }
  END {
    printf "%-8s %4s %4s %5s  %-22s %7s %9s %12s %8s %8s %8s %10s %10s\n", "backend", "b", "h_q", "conns", "decode port", "up GB/s",
      "down GB/s", "raw TCP GB/s", "up/raw", "p50 ms", "p99 ms", "compute ms", "kernel ms"
    for (i = 1; i <= n; i++) print lines[i]
  }' "$res"
exit $status
