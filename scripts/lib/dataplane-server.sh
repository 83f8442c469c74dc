# Sourced by the data-plane scripts (dataplane-bench.sh, -streams.sh, -clients.sh, -profile.sh): the
# unpacked publish, the kernels, and one server on loopback with the data-plane flags. The caller sets
# OUT (logs) and app (the unpacked publish folder) and runs from the repository root.

# Unpacks the carried publish (scripts/pack-device.sh) into /tmp/flashmla-app unless $app is already there.
ensure_publish() {
  [[ -x "$app/flashmla-server" ]] && return 0
  mkdir -p /tmp/flashmla-app && tar -C /tmp/flashmla-app -xJf .devcarry/flashmla-publish.tar.xz
}

# Builds the kernels into native/build unless the fatbin ($1) exists; the build log goes to $OUT.
ensure_fatbin() {
  [[ -f "$1" ]] && return 0
  bash native/build.sh > "$OUT/build-native.log" 2>&1 || { tail -20 "$OUT/build-native.log"; return 1; }
}

# start_server BACKEND PORT [server args...]: starts flashmla-server in the background (pid in server_pid,
# log in $OUT/dataplane-server-BACKEND.log; SERVER_ENV adds environment, e.g. "DOTNET_gcServer=0") and
# returns 0 once the port accepts connections, 1 if the server died or 30 s passed.
start_server() {
  local backend=$1 p=$2; shift 2
  # shellcheck disable=SC2086
  env ${SERVER_ENV:-} "$app/flashmla-server" --FlashMla:Backend="$backend" --FlashMla:GrpcPort="$p" --FlashMla:MetricsPort=$((p + 1)) \
    --FlashMla:ListenAddress=loopback --FlashMla:Layers=1 --FlashMla:MaxBatchSequences=1024 --FlashMla:BatchWindowMicroseconds=0 \
    "$@" >"$OUT/dataplane-server-$backend.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 60); do
    kill -0 "$server_pid" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}

# Stops the server start_server started (SIGTERM: it drains and exits).
stop_server() { kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; }
