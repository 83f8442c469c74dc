#!/usr/bin/env bash
# Where one connection's ceiling comes from (issue 5): the same b 128 steps over ONE connection with more
# streams on it, or more requests in flight per stream. If more streams raise the payload rate, the limit
# is per call (gRPC's message handling on one stream); if nothing moves it, it is the connection itself
# (one HTTP/2 frame loop per side). Runs ON the GPU machine from the repository root with the publish
# carried in .devcarry/ (scripts/pack-device.sh); builds the kernels if needed. Results in $OUT, table last.
# DP_BACKEND=cpu (a smoke run without a GPU), DP_CONTEXT (s_k, 4096), DP_SECONDS (3).
set -uo pipefail
OUT=${OUT:-$PWD/results/raw}  # ignored by git
mkdir -p "$OUT"
app=/tmp/flashmla-app/flashmla
fatbin=$PWD/native/build/flashmla.fatbin
port=${PORT:-50081}
# shellcheck source=lib/dataplane-server.sh
source "$(dirname "$0")/lib/dataplane-server.sh"
backend=${DP_BACKEND:-cuda}  # cpu: a smoke run anywhere (the transport with the CPU backend)
ensure_publish || exit 1
server_args=()
if [[ "$backend" == cuda ]]; then ensure_fatbin "$fatbin" || exit 1; server_args=(--FlashMla:FatbinPath="$fatbin"); fi
res="$OUT/dataplane-streams_$(date -u +%Y%m%d-%H%M).md"
echo "# One connection, more streams or more in flight ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))" > "$res"
start_server "$backend" "$port" "${server_args[@]}" || { tail -20 "$OUT/dataplane-server-$backend.log"; exit 1; }
status=0
for shape in "1 4" "1 8" "2 4" "4 2" "4 4"; do
  set -- $shape
  echo "### $1 stream(s) on the connection, $2 requests in flight per stream" >> "$res"
  timeout 60 "$app/flashmla" bench-matrix --address "http://127.0.0.1:$port" --context "${DP_CONTEXT:-4096}" --batch 128 --heads 16,128 --connections 1 \
    --streams-per-connection "$1" --inflight "$2" --seconds "${DP_SECONDS:-3}" --tcp-seconds 0 --out "$res" > /dev/null 2>&1 || status=1
done
timeout 30 "$app/flashmla" tcpbench --connections 1 --seconds 2 --out "$res" > /dev/null 2>&1 || status=1
stop_server
grep -E '^### |^\| (128|1) ' "$res" | cut -c1-110
exit $status
