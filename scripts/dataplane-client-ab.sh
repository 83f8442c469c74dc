#!/usr/bin/env bash
# Client-side settings against the data-plane port (issue 5): the same b 128 steps at 1 and 4 connections,
# decode on the data-plane listener, with the client's receive window per stream (16 MiB, the library's
# default, vs 64), requests in flight per stream (4 vs 8) and streams per connection (1 vs 2), interleaved
# with the defaults twice so run-to-run drift shows. DP_CLIENT_VARIANTS replaces the variants (e.g. the
# direct decode client against --grpc-client). Raw TCP at 1 and 4 connections in the same run.
# Runs ON the GPU machine from the repository root with the publish carried in .devcarry/; builds the
# kernels if needed. Results in $OUT, table last. DP_BACKEND=cpu (a smoke run without a GPU), DP_SECONDS (3).
set -uo pipefail
OUT=${OUT:-$PWD/results/raw}  # ignored by git
mkdir -p "$OUT"
app=/tmp/flashmla-app/flashmla
fatbin=$PWD/native/build/flashmla.fatbin
port=${PORT:-50091}
# shellcheck source=lib/dataplane-server.sh
source "$(dirname "$0")/lib/dataplane-server.sh"
backend=${DP_BACKEND:-cuda}
ensure_publish || exit 1
server_args=()
if [[ "$backend" == cuda ]]; then ensure_fatbin "$fatbin" || exit 1; server_args=(--FlashMla:FatbinPath="$fatbin"); fi
res="$OUT/dataplane-client-ab_$(date -u +%Y%m%d-%H%M).md"
echo "# Client settings against the data-plane port ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))" > "$res"
timeout 60 "$app/flashmla" tcpbench --connections 1,4 --seconds 2 --out "$res" > /dev/null 2>&1
start_server "$backend" "$port" "${server_args[@]}" || { tail -20 "$OUT/dataplane-server-$backend.log"; exit 1; }
status=0
# DP_CLIENT_VARIANTS="name|args;name|args" replaces the list.
variants=("defaults|" "window-64MiB|--client-stream-window-mib 64" "inflight-8|--inflight 8"
  "2-streams-x-2|--streams-per-connection 2 --inflight 2" "defaults-again|")
if [[ -n "${DP_CLIENT_VARIANTS:-}" ]]; then IFS=';' read -r -a variants <<< "$DP_CLIENT_VARIANTS"; fi
for variant in "${variants[@]}"; do
  name=${variant%%|*}; args=${variant#*|}
  echo "### $name ($args)" >> "$res"
  # shellcheck disable=SC2086
  timeout 90 "$app/flashmla" bench-matrix --address "http://127.0.0.1:$port" --decode-address "http://127.0.0.1:$data_plane_port" \
    --context "${DP_CONTEXT:-4096}" --batch 128 --heads 16,128 --connections 1,4 --seconds "${DP_SECONDS:-3}" --tcp-seconds 0 \
    $args --out "$res" > /dev/null 2>&1 || status=1
done
stop_server
grep -E '^### |^\| (1|4) \||^\| 128 ' "$res" | awk -F'|' '/^###/ {print; next} NF > 10 {printf "%s|%s|%s|%s|%s|%s|%s\n", $2, $3, $4, $9, $10, $11, $12} NF <= 10 {print}'
exit $status
