#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, after scripts/device-round.sh has unpacked the publish and
# built the kernels: the Python client (clients/python/bench.py, on the interpreter scripts/pack-python-client.sh
# carried) and the C# client (`flashmla bench-matrix`) against one CUDA server, one after the other, with the
# same steps (b x h_q at s_k 4096, one connection, 4 requests in flight, decode on the data-plane port).
# Payload GB/s and p50 per call from each, in one run. Writes $OUT/client-compare.md.
#
# Env: OUT, PORT (50081), CC_BATCH (32,128), CC_HEADS (16,128), CC_SECONDS (3).
set -uo pipefail
OUT=${OUT:-$PWD/results/raw}
mkdir -p "$OUT"
app=${1:-/tmp/flashmla-app/flashmla}
fatbin=${2:-$PWD/native/build/flashmla.fatbin}
port=${PORT:-50081}
batch=${CC_BATCH:-32,128} heads=${CC_HEADS:-16,128} seconds=${CC_SECONDS:-3}
# shellcheck source=lib/dataplane-server.sh
source "$(dirname "$0")/lib/dataplane-server.sh"
ensure_publish || exit 1
ensure_fatbin "$fatbin" || exit 1

start_server cuda "$port" --FlashMla:FatbinPath="$fatbin" || { tail -30 "$OUT/dataplane-server-cuda.log"; exit 1; }
rc=0
echo "==================== C# client (flashmla bench-matrix, direct decode on the data-plane port)"
"$app/flashmla" bench-matrix --address "http://127.0.0.1:$port" --decode-address "http://127.0.0.1:$data_plane_port" \
  --batch "$batch" --heads "$heads" --connections 1 --context 4096 --seconds "$seconds" \
  --out "$OUT/client-compare-csharp.md" > "$OUT/client-compare-csharp.log" 2>&1 || rc=1
tail -n 12 "$OUT/client-compare-csharp.log"
echo "==================== Python client (flashmla_client over grpcio, decode on the data-plane port)"
bash scripts/python-client-bench.sh --address "127.0.0.1:$port" --decode-port "$data_plane_port" --decode dataplane \
  --batch "$batch" --heads "$heads" --context 4096 --connections 1 --inflight 4 --seconds "$seconds" \
  --out "$OUT/client-compare-python.md" > "$OUT/client-compare-python.log" 2>&1 || rc=1
tail -n 12 "$OUT/client-compare-python.log"
stop_server
{ echo "# Python vs C# client, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  echo; echo "## C#"; cat "$OUT/client-compare-csharp.md" 2>/dev/null
  echo; echo "## Python"; cat "$OUT/client-compare-python.md" 2>/dev/null; } > "$OUT/client-compare.md"
exit $rc
