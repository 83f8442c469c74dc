#!/usr/bin/env bash
# Is the four-connection ceiling the server's or the client's (issue 5)? The same total of four connections
# from one client process, from two processes of two, and from four processes of one, against one server
# on the CUDA backend; the payload rates of concurrent processes add up. Runs ON the GPU machine from the
# repository root with the publish carried in .devcarry/ (scripts/pack-device.sh); builds the kernels if
# needed. DP_BACKEND=cpu (a smoke run without a GPU), DP_CONTEXT (s_k, 4096). Results in $OUT; a table last.
#   bash scripts/dataplane-clients.sh [BATCH] [HEADS]     (default 128 16)
set -uo pipefail
OUT=${OUT:-$PWD/results/raw}  # ignored by git
mkdir -p "$OUT"
b=${1:-128}; h=${2:-16}
app=/tmp/flashmla-app/flashmla
fatbin=$PWD/native/build/flashmla.fatbin
port=${PORT:-50101}
# shellcheck source=lib/dataplane-server.sh
source "$(dirname "$0")/lib/dataplane-server.sh"
backend=${DP_BACKEND:-cuda}  # cpu: a smoke run anywhere (the transport with the CPU backend)
ensure_publish || exit 1
server_args=()
if [[ "$backend" == cuda ]]; then ensure_fatbin "$fatbin" || exit 1; server_args=(--FlashMla:FatbinPath="$fatbin"); fi
start_server "$backend" "$port" "${server_args[@]}" || { tail -20 "$OUT/dataplane-server-$backend.log"; exit 1; }
res="$OUT/dataplane-clients_$(date -u +%Y%m%d-%H%M).md"
echo "# Four connections from 1, 2 or 4 client processes, b $b h_q $h ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores)" > "$res"
echo "| processes x connections | up GB/s (sum) | down GB/s (sum) | steps/s (sum) |" >> "$res"
echo "| --- | --- | --- | --- |" >> "$res"
for layout in "1 4" "2 2" "4 1"; do
  set -- $layout
  pids=()
  for p in $(seq 1 "$1"); do
    "$app/flashmla" bench-matrix --address "http://127.0.0.1:$port" --context "${DP_CONTEXT:-4096}" --batch "$b" --heads "$h" --connections "$2" \
      --seconds 4 --warmup 1 --tcp-seconds 0 --out "$OUT/clients-$1x$2-$p.md" > /dev/null 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  # row columns: b | h | conns | transport | decode port | steps/s | KV tok/s | up | down | ...
  cat "$OUT"/clients-"$1"x"$2"-*.md | grep -E "^\| $b \| $h \| $2 \|" | awk -F'|' -v l="$1 x $2" \
    '{s+=$7; u+=$9; d+=$10} END {printf "| %s | %.2f | %.2f | %.0f |\n", l, u, d, s}' >> "$res"
done
stop_server
cat "$res"
