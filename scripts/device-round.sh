#!/usr/bin/env bash
# The whole device round. Runs ON the GPU machine, from the repository root, with the publish
# archive carried in .devcarry/ (scripts/pack-device.sh makes it):
#   1. build the kernels (native/build.sh -> native/build/flashmla.fatbin)
#   2. run the native kernel checks
#   3. unpack the self-contained publish (server, CLI, device tests, device benchmark)
#   4. run the device tests (CudaBackend against the float64 reference, faults, the ABI against the header): the
#      xunit.v3 executable flashmla-devicecheck filtered on its traits (Category=Gpu, Category=Abi), then the
#      device benchmark flashmla-devicebench (timings, not a test)
#   5. start the server on the CUDA backend (gRPC port PORT, data-plane port PORT+1, metrics PORT+2), run
#      `flashmla verify` through each port and a short `flashmla bench`
#   6. the CPU backend, the data plane, the round trip per call (`flashmla latency`), the Python client
#   7. print a short table last
# Each step's log is written to a scratch folder and packed at the end into $OUT/round-logs.tgz
# (the device tool brings back at most 8 files); $OUT/round.log has the step tails and the table
# as they happen. A failed step is recorded and the round goes on where later steps do not depend on it.
#
# Env: SKIP_CLIENT_COMPARE=1, PORT (50051), BENCH_ARGS (extra args for `flashmla bench`), SKIP_NATIVE=1 (use an existing
# fatbin), SKIP_NATIVE_CHECKS=1, SKIP_NATIVE_BENCH=1, SKIP_BACKEND_CHECK=1, SKIP_DEVICE_BENCH=1, SKIP_SERVER=1, SKIP_CPU_BENCH=1,
# SKIP_DATAPLANE=1, TLS=1 (step 7 measures every data-plane row over TLS too: DP_TLS=1), SKIP_LATENCY=1, SKIP_INGEST=1, INGEST_ARGS,
# LATENCY_ARGS (extra args for `flashmla latency`), FP8_SERVER=1 (the device bench again on the fp8 kernels, and step 5b: the
# server again with KvDtype=fp8: verify against the CPU codec, bench, and its token capacity beside the bf16 server's),
# DEVICECHECK_ARGS (extra xunit runner options, e.g. -method '*Decode_matches*' or -seed);
# FLASHMLA_DEVICE_SEED (the device tests' random inputs); the data-plane step (scripts/dataplane-bench.sh) reads DP_* too.
set -uo pipefail

OUT=${OUT:-$PWD/results/raw}  # ignored by git
mkdir -p "$OUT"
logs=$(mktemp -d)
exec > >(tee -a "$OUT/round.log") 2>&1
root=$PWD
fatbin=$root/native/build/flashmla.fatbin
archive=$root/.devcarry/flashmla-publish.tar.xz
app=/tmp/flashmla-app/flashmla
port=${PORT:-50051}
endpoint=http://127.0.0.1:$port
data_plane_endpoint=http://127.0.0.1:$((port + 1))
bench_args=${BENCH_ARGS:-}

rows=()
record() { # step status seconds note
  rows+=("$(printf '%-14s %-5s %7s  %s' "$1" "$2" "$3" "$4")")
}
run_step() { # name logfile command...
  local name=$1 log=$2; shift 2
  local start=$SECONDS
  echo "== $name: $*"
  "$@" >"$logs/$log" 2>&1
  local rc=$?
  local took=$((SECONDS - start))
  tail -n 25 "$logs/$log" | sed "s/^/   [$name] /"
  if [[ $rc -eq 0 ]]; then record "$name" ok "${took}s" "log $log"; else record "$name" FAIL "${took}s" "rc $rc, log $log"; fi
  return $rc
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem --format=csv 2>&1
  nvcc --version 2>&1 | tail -n 2
} > "$logs/machine.txt"
cat "$logs/machine.txt"

# 1-2. Kernels.
native_ok=0
if [[ "${SKIP_NATIVE:-0}" != 1 ]]; then
  if run_step build-native build-native.log bash native/build.sh; then
    native_ok=1
    if [[ "${SKIP_NATIVE_CHECKS:-0}" == 1 ]]; then
      record native-check skip - "SKIP_NATIVE_CHECKS=1"
    else
      [[ -x native/build/tile_scheduler_test ]] && run_step scheduler-test scheduler-test.log native/build/tile_scheduler_test
      run_step native-check native-check.log native/build/flashmla_check --check --fatbin "$fatbin"
      if [[ "${SKIP_NATIVE_BENCH:-0}" != 1 ]]; then
        # The exported kernel over the whole issue-4 grid (scripts/device-native.sh compares the variants).
        run_step native-bench native-bench.log native/build/flashmla_check --bench --kernels flashmla_decode_splitkv --rounds 3 --reps 20 --results "$logs/native-bench.md"
        cp "$logs/native-bench.md" "$OUT/" 2>/dev/null
      fi
    fi
  fi
elif [[ -f "$fatbin" ]]; then
  native_ok=1
fi

# 3. Publish.
app_ok=0
if [[ -f "$archive" ]]; then
  rm -rf /tmp/flashmla-app && mkdir -p /tmp/flashmla-app
  if run_step unpack unpack.log tar -C /tmp/flashmla-app -xJf "$archive"; then
    app_ok=1
    cat "$app/PACKED.txt" 2>/dev/null
  fi
else
  record unpack FAIL - "no $archive (run scripts/pack-device.sh here first)"
fi

# 4. Device tests (C# CudaBackend vs the float64 reference, faults, ABI vs header), then the device benchmark.
if [[ "${SKIP_BACKEND_CHECK:-0}" != 1 && $app_ok == 1 && $native_ok == 1 && -x "$app/flashmla-devicecheck" ]]; then
  # shellcheck disable=SC2086
  run_step backend-check backend-check.log env FLASHMLA_FATBIN="$fatbin" FLASHMLA_ABI_HEADER="$root/native/include/mla_params.h" \
    "$app/flashmla-devicecheck" -trait Category=Gpu -trait Category=Abi -showLiveOutput -failSkips -noColor ${DEVICECHECK_ARGS:-}
elif [[ $app_ok == 1 ]]; then
  record backend-check skip - "needs the fatbin and flashmla-devicecheck"
fi
if [[ "${SKIP_DEVICE_BENCH:-0}" != 1 && $app_ok == 1 && $native_ok == 1 && -x "$app/flashmla-devicebench" ]]; then
  run_step device-bench device-bench.log "$app/flashmla-devicebench" --fatbin "$fatbin"
  # With FP8_SERVER=1 the same shapes on the fp8 kernels, beside the bf16 figures (Gtok/s: KV tokens attended per second).
  [[ "${FP8_SERVER:-0}" == 1 ]] && run_step device-bench-fp8 device-bench-fp8.log "$app/flashmla-devicebench" --fatbin "$fatbin" --kv-dtype fp8
fi

# 5. Server + CLI.
if [[ "${SKIP_SERVER:-0}" != 1 && $app_ok == 1 && $native_ok == 1 && -x "$app/flashmla-server" ]]; then
  echo "== server: starting on $endpoint (CUDA backend)"
  "$app/flashmla-server" --FlashMla:Backend=cuda --FlashMla:FatbinPath="$fatbin" --FlashMla:GrpcPort="$port" \
    --FlashMla:DataPlanePort=$((port + 1)) --FlashMla:MetricsPort=$((port + 2)) --FlashMla:ListenAddress=loopback --FlashMla:Layers="${LAYERS:-4}" \
    --FlashMla:MaxBatchSequences=1024 >"$logs/server.log" 2>&1 &
  server_pid=$!
  up=0
  for _ in $(seq 1 60); do
    if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
    sleep 0.5
  done
  if [[ $up == 1 ]]; then
    record server ok - "listening on $endpoint"
    run_step verify verify.log "$app/flashmla" verify --address "$endpoint" --cases "${VERIFY_CASES:-24}" --long 33000
    # The same checks with decode on the data-plane listener (its own HTTP/2 stack; cache calls stay on the gRPC port).
    for _ in $(seq 1 20); do (exec 3<>"/dev/tcp/127.0.0.1/$((port + 1))") 2>/dev/null && break; sleep 0.5; done
    run_step verify-dataplane verify-dataplane.log "$app/flashmla" verify --address "$endpoint" --decode-address "$data_plane_endpoint" \
      --cases "${VERIFY_CASES:-24}" --long 33000
    # shellcheck disable=SC2086
    run_step bench bench.log "$app/flashmla" bench --address "$endpoint" --out "$logs/service-bench.md" $bench_args
    cp "$logs/service-bench.md" "$OUT/" 2>/dev/null
  else
    record server FAIL - "did not listen within 30 s; see server.log"
    tail -n 40 "$logs/server.log"
  fi
  kill "$server_pid" 2>/dev/null
  wait "$server_pid" 2>/dev/null
elif [[ "${SKIP_SERVER:-0}" != 1 ]]; then
  record server skip - "needs the fatbin and flashmla-server"
fi

# 5b. With FP8_SERVER=1: the same server with an fp8 KV cache (KvDtype=fp8, issue 17). verify holds it to the CPU
#     codec (stored rows bit for bit, outputs over the dequantized rows), the bench runs the same load, and the start-up
#     log lines of both servers give the token capacity in the same memory.
if [[ "${FP8_SERVER:-0}" == 1 && "${SKIP_SERVER:-0}" != 1 && $app_ok == 1 && $native_ok == 1 && -x "$app/flashmla-server" ]]; then
  fp8_port=$((port + 50)) # port + 40 is the latency step's
  fp8_endpoint=http://127.0.0.1:$fp8_port
  echo "== fp8 server: starting on $fp8_endpoint (CUDA backend, KvDtype=fp8)"
  "$app/flashmla-server" --FlashMla:Backend=cuda --FlashMla:KvDtype=fp8 --FlashMla:FatbinPath="$fatbin" --FlashMla:GrpcPort="$fp8_port" \
    --FlashMla:DataPlanePort=$((fp8_port + 1)) --FlashMla:MetricsPort=$((fp8_port + 2)) --FlashMla:ListenAddress=loopback --FlashMla:Layers="${LAYERS:-4}" \
    --FlashMla:MaxBatchSequences=1024 >"$logs/server-fp8.log" 2>&1 &
  fp8_pid=$!
  fp8_up=0
  for _ in $(seq 1 60); do
    kill -0 "$fp8_pid" 2>/dev/null || break
    if (exec 3<>"/dev/tcp/127.0.0.1/$fp8_port") 2>/dev/null; then fp8_up=1; break; fi
    sleep 0.5
  done
  if [[ $fp8_up == 1 ]]; then
    record server-fp8 ok - "$(grep -o 'KV fp8 at [0-9]* bytes a token: [0-9]* tokens a layer' "$logs/server-fp8.log" | head -n 1)"
    grep -o 'KV bf16 at [0-9]* bytes a token: [0-9]* tokens a layer' "$logs/server.log" 2>/dev/null | head -n 1 | sed 's/^/   bf16 server: /'
    run_step verify-fp8 verify-fp8.log "$app/flashmla" verify --address "$fp8_endpoint" --cases "${VERIFY_CASES:-24}" --long 33000
    # shellcheck disable=SC2086
    run_step bench-fp8 bench-fp8.log "$app/flashmla" bench --address "$fp8_endpoint" --out "$logs/service-bench-fp8.md" $bench_args
    cp "$logs/service-bench-fp8.md" "$OUT/" 2>/dev/null
  else
    record server-fp8 FAIL - "did not listen within 30 s; see server-fp8.log"
    tail -n 40 "$logs/server-fp8.log"
  fi
  kill "$fp8_pid" 2>/dev/null
  wait "$fp8_pid" 2>/dev/null
fi

# 6. The service on the CPU backend of this 16-core machine (no GPU involved): the embedded default's figures.
if [[ "${SKIP_CPU_BENCH:-0}" != 1 && $app_ok == 1 && -x "$app/flashmla-server" ]]; then
  cpu_port=$((port + 10))
  "$app/flashmla-server" --FlashMla:Backend=cpu --FlashMla:GrpcPort="$cpu_port" --FlashMla:DataPlanePort=$((cpu_port + 1)) \
    --FlashMla:MetricsPort=$((cpu_port + 2)) \
    --FlashMla:ListenAddress=loopback --FlashMla:Layers=1 --FlashMla:CpuMemoryMiB=4096 >"$logs/cpu-server.log" 2>&1 &
  cpu_pid=$!
  for _ in $(seq 1 60); do (exec 3<>"/dev/tcp/127.0.0.1/$cpu_port") 2>/dev/null && break; sleep 0.5; done
  run_step cpu-bench cpu-bench.log "$app/flashmla" bench --address "http://127.0.0.1:$cpu_port" --streams 4 --inflight 2 \
    --batch 8 --context 1024 --heads 16 --seconds 8 --out "$logs/service-bench-cpu.md"
  cp "$logs/service-bench-cpu.md" "$OUT/" 2>/dev/null
  kill "$cpu_pid" 2>/dev/null
  wait "$cpu_pid" 2>/dev/null
fi

# 7. The data plane (issue 5): raw TCP, then b x h_q x connections through the service on both backends,
#    each row through the gRPC port and through the data-plane port (about 2.5 minutes; the A/B sections are off).
#    TLS=1: each backend's rows again against a server with TLS on both ports (a certificate from `flashmla dev-cert`),
#    in the same results file, so the figures with and without TLS come from one run (about 2.5 minutes more).
if [[ "${SKIP_DATAPLANE:-0}" != 1 && $app_ok == 1 && -x "$app/flashmla-server" ]]; then
  run_step dataplane dataplane.log env OUT="$OUT" PORT=$((port + 20)) DP_TLS="${TLS:-${DP_TLS:-0}}" bash scripts/dataplane-bench.sh "$app" "$fatbin"
fi

# 8. The round trip per call (issue 15): a CUDA server with default options (four layers, for the ingest), `flashmla latency` through its
#    data-plane port: 1..4 in flight on one stream, p50/p99, the server's breakdown, the floor (raw TCP ping-pong of the
#    same sizes + kernel) in the same run (about a minute; LATENCY_ARGS adds options, e.g. --shapes 32x16 --seconds 5).
if [[ "${SKIP_LATENCY:-0}" != 1 && $app_ok == 1 && $native_ok == 1 && -x "$app/flashmla-server" ]]; then
  lat_port=$((port + 40))
  "$app/flashmla-server" --FlashMla:Backend=cuda --FlashMla:FatbinPath="$fatbin" --FlashMla:GrpcPort="$lat_port" \
    --FlashMla:DataPlanePort=$((lat_port + 1)) --FlashMla:MetricsPort=$((lat_port + 2)) --FlashMla:ListenAddress=loopback \
    --FlashMla:Layers=4 >"$logs/latency-server.log" 2>&1 &
  lat_pid=$!
  for p in "$lat_port" $((lat_port + 1)); do
    for _ in $(seq 1 60); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.5; done
  done
  # shellcheck disable=SC2086
  run_step latency latency.log "$app/flashmla" latency --address "http://127.0.0.1:$lat_port" \
    --decode-address "http://127.0.0.1:$((lat_port + 1))" --commit "$(sed -n 's/^commit: //p' "$app/PACKED.txt" 2>/dev/null | head -n 1)" \
    --out "$logs/latency.md" ${LATENCY_ARGS:-}
  cp "$logs/latency.md" "$OUT/" 2>/dev/null
  # KV ingest under decode (issue 15): decode b 32 h_q 16 alone, then beside one client streaming AppendKv into
  # the data-plane port (32k tokens x 4 layers per sequence); SKIP_INGEST=1 skips it, INGEST_ARGS adds options.
  if [[ "${SKIP_INGEST:-0}" != 1 ]]; then
    # shellcheck disable=SC2086
    run_step ingest ingest.log "$app/flashmla" ingest-bench --address "http://127.0.0.1:$lat_port" \
      --decode-address "http://127.0.0.1:$((lat_port + 1))" --batch 32 --heads 16 --context 4096 --seconds 5 \
      --out "$logs/ingest.md" ${INGEST_ARGS:-}
  fi
  kill "$lat_pid" 2>/dev/null
  # A server that has not drained within 30 s is killed: the round goes on either way.
  for _ in $(seq 1 30); do kill -0 "$lat_pid" 2>/dev/null || break; sleep 1; done
  kill -9 "$lat_pid" 2>/dev/null
  wait "$lat_pid" 2>/dev/null
fi

# 9. The Python client beside the C# client (issue 12), when scripts/pack-python-client.sh carried its interpreter.
if [[ "${SKIP_CLIENT_COMPARE:-0}" != 1 && $app_ok == 1 && $native_ok == 1 && -f .devcarry/flashmla-python.tar.xz ]]; then
  run_step client-compare client-compare.log env OUT="$OUT" PORT=$((port + 30)) bash scripts/client-compare.sh "$app" "$fatbin"
fi

echo
tar -C "$logs" -czf "$OUT/round-logs.tgz" .
echo "device round on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo 'no GPU'); logs in round-logs.tgz"
printf '%-14s %-5s %7s  %s\n' step status time note
for row in "${rows[@]}"; do echo "$row"; done
[[ -f "$logs/bench.log" ]] && { echo; echo "flashmla bench (last lines):"; tail -n 12 "$logs/bench.log"; }
[[ -f "$logs/bench-fp8.log" ]] && { echo; echo "flashmla bench, KvDtype=fp8 (last lines):"; tail -n 12 "$logs/bench-fp8.log"; }
[[ -f "$logs/client-compare.log" ]] && { echo; grep -vE "^\\s*$" "$logs/client-compare.log" | tail -n 30; }
[[ -f "$logs/dataplane.log" ]] && { echo; sed -n '/==================== data plane/,$p' "$logs/dataplane.log"; }
[[ -f "$logs/ingest.log" ]] && { echo; echo "flashmla ingest-bench:"; tail -n 12 "$logs/ingest.log"; }
[[ -f "$logs/latency.log" ]] && { echo; echo "flashmla latency (round trip per call, us; the whole table in latency.md):"; sed -n '/^results appended to/,$p' "$logs/latency.log" | tail -n +2; }
printf '%s\n' "${rows[@]}" | grep -q ' FAIL ' && exit 1
exit 0
