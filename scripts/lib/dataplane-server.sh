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
# log in $OUT/dataplane-server-BACKEND.log; SERVER_ENV adds environment, e.g. "DOTNET_gcServer=0") with the
# gRPC port on PORT, the data-plane port on PORT+1 (in data_plane_port; a --FlashMla:DataPlanePort= among the
# server args wins, and -1 or 0 there is not waited for) and metrics on PORT+2, and returns 0 once the gRPC
# and data-plane ports accept connections, 1 if the server died or either port was not up within 30 s.
start_server() {
  local backend=$1 p=$2 arg port; shift 2
  data_plane_port=$((p + 1))
  for arg in "$@"; do [[ "$arg" == --FlashMla:DataPlanePort=* ]] && data_plane_port=${arg#*=}; done
  # The server args come after the defaults: the last value of a configuration key wins.
  # shellcheck disable=SC2086
  env ${SERVER_ENV:-} "$app/flashmla-server" --FlashMla:Backend="$backend" --FlashMla:GrpcPort="$p" \
    --FlashMla:DataPlanePort=$((p + 1)) --FlashMla:MetricsPort=$((p + 2)) \
    --FlashMla:ListenAddress=loopback --FlashMla:Layers=1 --FlashMla:MaxBatchSequences=1024 --FlashMla:BatchWindowMicroseconds=0 \
    "$@" >"$OUT/dataplane-server-$backend.log" 2>&1 &
  server_pid=$!
  for port in "$p" "$data_plane_port"; do
    (( port > 0 )) || continue
    for _ in $(seq 1 60); do
      kill -0 "$server_pid" 2>/dev/null || return 1
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue 2
      sleep 0.5
    done
    return 1
  done
  return 0
}

# Stops the server start_server started (SIGTERM: it drains and exits).
stop_server() { kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; }
