#!/usr/bin/env bash
# Where a data-plane step's CPU time goes (issue 5): the server on the CUDA backend and the bench client,
# both with .NET perf maps, under `perf record -a` while bench-matrix runs one row. Runs ON the GPU
# machine from the repository root with the publish carried in .devcarry/ (scripts/pack-device.sh);
# builds the kernels if needed. Prints the hottest symbols per process and per thread name.
#   bash scripts/dataplane-profile.sh [BATCH] [HEADS] [CONNECTIONS]     (default 128 128 4)
set -uo pipefail
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
b=${1:-128}; h=${2:-128}; conns=${3:-4}
app=/tmp/flashmla-app/flashmla
fatbin=$PWD/native/build/flashmla.fatbin
port=${PORT:-50091}
PERF=$(command -v perf || ls /usr/lib/linux-tools/*/perf 2>/dev/null | head -1)
if [[ -z "$PERF" ]]; then echo "no perf on this machine"; exit 2; fi
[[ -x "$app/flashmla-server" ]] || { mkdir -p /tmp/flashmla-app && tar -C /tmp/flashmla-app -xJf .devcarry/flashmla-publish.tar.xz; } || exit 1
[[ -f "$fatbin" ]] || bash native/build.sh > "$OUT/build-native.log" 2>&1 || { tail -20 "$OUT/build-native.log"; exit 1; }
export DOTNET_PerfMapEnabled=1
"$app/flashmla-server" --FlashMla:Backend=cuda --FlashMla:FatbinPath="$fatbin" --FlashMla:GrpcPort="$port" \
  --FlashMla:MetricsPort=$((port + 1)) --FlashMla:ListenAddress=loopback --FlashMla:Layers=1 --FlashMla:MaxBatchSequences=1024 \
  --FlashMla:BatchWindowMicroseconds=0 > "$OUT/profile-server.log" 2>&1 &
server=$!
for _ in $(seq 1 60); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.5; done
"$app/flashmla" bench-matrix --address "http://127.0.0.1:$port" --batch "$b" --heads "$h" --connections "$conns" \
  --seconds 8 --warmup 1 --tcp-seconds 0 --out "$OUT/profile-bench.md" > "$OUT/profile-bench.log" 2>&1 &
client=$!
sleep 3
"$PERF" record -F 499 -a -g -o "$OUT/perf.data" -- sleep 4 > "$OUT/perf-record.log" 2>&1
wait "$client"
kill "$server"; wait "$server" 2>/dev/null
grep -E '^\| [0-9]' "$OUT/profile-bench.md" | cut -c1-120
for who in "server:$server" "client:$client"; do
  name=${who%%:*}; pid=${who#*:}
  echo "==== $name (pid $pid): hottest symbols (self)"
  "$PERF" report -i "$OUT/perf.data" --pid "$pid" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -25
  echo "==== $name: by thread name"
  "$PERF" report -i "$OUT/perf.data" --pid "$pid" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12
done
echo "==== machine: by process"
"$PERF" report -i "$OUT/perf.data" --no-children --sort pid --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -10
