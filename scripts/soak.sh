#!/usr/bin/env bash
# The soak (issue 13): a server on the CPU backend on loopback under mixed load for a configurable time (`flashmla soak`:
# decode streams and unary decodes on the gRPC port, decodes and AppendKv on the data-plane port, cache commands,
# connection churn, abusive clients, two tenants and a quota tenant), a line every 10 s with the server's RSS, live GC
# heap, tensor-pool bytes, call counts and connections, then a summary (min/max/last, RSS slope over the last 20 min).
# Not part of CI. How to read it: deploy/README.md, "Soak".
#
#   bash scripts/soak.sh [flashmla soak args...]     e.g. bash scripts/soak.sh --minutes 30
# Env: OUT (results/raw), PORT (50071: gRPC; PORT+1 data plane, PORT+2 metrics), SOAK_TENANTS (2; 0: no token file),
#      SOAK_ADDRESS (http://host:port of a server already running: no server is started; pass --metrics-address and
#      tokens yourself), SERVER_ENV (environment for the server, e.g. "DOTNET_GCgen0size=0x4000000"),
#      SERVER_ARGS (extra server options), SOAK_NO_BUILD=1 (use the Release builds already there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/results/raw}  # ignored by git
mkdir -p "$OUT"
port=${PORT:-50071}
stamp=$(date -u +%Y%m%d-%H%M)
if [[ "${SOAK_NO_BUILD:-0}" != 1 ]]; then
  for project in src/FlashMla.Server/FlashMla.Server.csproj src/FlashMla.Cli/FlashMla.Cli.csproj; do
    dotnet build -c Release "$project" > "$OUT/soak-build.log" 2>&1 || { tail -n 20 "$OUT/soak-build.log"; exit 1; }
  done
fi
cli=src/FlashMla.Cli/bin/Release/net10.0/flashmla
server_bin=src/FlashMla.Server/bin/Release/net10.0/flashmla-server

if [[ -n "${SOAK_ADDRESS:-}" ]]; then
  "$cli" soak --address "$SOAK_ADDRESS" --out "$OUT/soak-$stamp.md" "$@" | tee "$OUT/soak-$stamp.log"
  exit "${PIPESTATUS[0]}"
fi

token_args=()
server_token=()
tenants=${SOAK_TENANTS:-2}
if (( tenants > 0 )); then
  tokens=$(mktemp)
  trap 'rm -f "$tokens"' EXIT
  a=$(head -c 24 /dev/urandom | base64 | tr -d '/+='); b=$(head -c 24 /dev/urandom | base64 | tr -d '/+='); q=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  # The quota tenant may hold 4 sequences: the abusive client fills that and is refused.
  printf '{ "tenants": [ { "name": "soak-a", "tokens": ["%s"] }, { "name": "soak-b", "tokens": ["%s"] },\n  { "name": "soak-quota", "tokens": ["%s"], "maxSequences": 4 } ] }\n' "$a" "$b" "$q" > "$tokens"
  server_token=(--FlashMla:TokenFile="$tokens")
  token_args=(--token "$a" --quota-token "$q")
  (( tenants > 1 )) && token_args+=(--second-token "$b")
fi

log="$OUT/soak-server-$stamp.log"
# shellcheck disable=SC2086
env ${SERVER_ENV:-} "$server_bin" --FlashMla:Backend=cpu --FlashMla:GrpcPort="$port" --FlashMla:DataPlanePort=$((port + 1)) \
  --FlashMla:MetricsPort=$((port + 2)) --FlashMla:ListenAddress=loopback --FlashMla:Layers=1 --FlashMla:CpuMemoryMiB=256 \
  "${server_token[@]}" ${SERVER_ARGS:-} > "$log" 2>&1 &
server_pid=$!
for _ in $(seq 1 60); do
  kill -0 "$server_pid" 2>/dev/null || { echo "the server died:"; tail -n 20 "$log"; exit 1; }
  (exec 3<>"/dev/tcp/127.0.0.1/$((port + 1))") 2>/dev/null && break
  sleep 0.5
done
echo "server pid $server_pid on 127.0.0.1:$port (log $log); env: ${SERVER_ENV:-none}; args: ${SERVER_ARGS:-none}"
"$cli" soak --address "http://127.0.0.1:$port" --decode-address "http://127.0.0.1:$((port + 1))" \
  --metrics-address "http://127.0.0.1:$((port + 2))" "${token_args[@]}" --out "$OUT/soak-$stamp.md" "$@" | tee "$OUT/soak-$stamp.log"
status=${PIPESTATUS[0]}
kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null
echo "server exited $?; results in $OUT/soak-$stamp.md"
exit "$status"
