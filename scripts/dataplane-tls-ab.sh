#!/usr/bin/env bash
# TLS cost on the data-plane port, two builds A/B (the development VM's method for results/2026-12-04-devvm-dataplane-tls.md):
# for each round and each build (an unpacked publish holding flashmla-server and flashmla), a CPU-backend server
# in cleartext, then one with TLS on both ports (a `flashmla dev-cert` certificate), each measured by
# `flashmla bench-matrix` with decode on the data-plane port (s_k 1: the transport with next to no compute).
# Rounds interleave the builds and the two modes, so a machine shared with other work loads them alike; the
# medians per row come last. Runs from the repository root; results in $OUT (default results/raw, ignored).
#
#   bash scripts/dataplane-tls-ab.sh NAME=APP_DIR [NAME=APP_DIR ...]
# AB_BENCH=ingest: AppendKv ingest instead (ingest-bench, AB_INGEST_TOKENS rows per call, 16384; upload only, no compute),
# with the CPU seconds of server and client per GB ingested (the figure to read on a shared machine).
# Env: ROUNDS (3), PORT (50161), AB_BATCH (32,128), AB_HEADS (16), AB_CONNECTIONS (1), AB_SECONDS (3),
#      AB_ARGS (more bench-matrix arguments), AB_SERVER_ARGS (more server arguments), AB_ENV (environment for client and
#      server, e.g. "DOTNET_TieredCompilation=0": on 2 cores, short runs otherwise measure the JIT as much as the wire).
set -uo pipefail
OUT=${OUT:-$PWD/results/raw}
mkdir -p "$OUT"
(( $# >= 1 )) || { echo "usage: $0 NAME=APP_DIR [NAME=APP_DIR ...]"; exit 2; }
port=${PORT:-50161}
rounds=${ROUNDS:-3}
stamp=$(date -u +%Y%m%d-%H%M)
rows="$OUT/dataplane-tls-ab_${stamp}.tsv"
certs=$(mktemp -d)
trap 'rm -rf "$certs"' EXIT
# shellcheck source=lib/dataplane-server.sh
source "$(dirname "$0")/lib/dataplane-server.sh"
first=${1#*=}
"$first/flashmla" dev-cert --out "$certs" --dns localhost --ip 127.0.0.1 > /dev/null || { echo "dev-cert failed"; exit 1; }
printf 'round\tbuild\tmode\tb\th_q\tconns\tup_GBps\tdown_GBps\tp50_ms\tserver_cpu_s_per_GB\tclient_cpu_s_per_GB\n' > "$rows"
status=0
for round in $(seq 1 "$rounds"); do
  for build in "$@"; do
    name=${build%%=*}; app=${build#*=}
    for mode in clear tls; do
      scheme=http; tls_server=(); tls_client=()
      if [[ $mode == tls ]]; then
        scheme=https; tls_server=(--FlashMla:Tls:CertificateFile="$certs/tls.crt" --FlashMla:Tls:KeyFile="$certs/tls.key"); tls_client=(--ca "$certs/ca.crt")
      fi
      # shellcheck disable=SC2086
      if ! SERVER_ENV=${AB_ENV:-} start_server cpu "$port" --FlashMla:CpuMemoryMiB=512 "${tls_server[@]}" ${AB_SERVER_ARGS:-}; then
        echo "server ($name, $mode) did not start"; tail -n 20 "$OUT/dataplane-server-cpu.log"; status=1; stop_server; continue
      fi
      md="$OUT/dataplane-tls-ab_${stamp}_r${round}_${name}_${mode}.md"
      if [[ "${AB_BENCH:-decode}" == ingest ]]; then
        # AppendKv into the cache through the data-plane port: upload only, no attention compute; a decode of one
        # token runs beside it (ingest-bench's second phase), and the ingest's GB/s is the figure.
        # shellcheck disable=SC2086
        timeout 300 /usr/bin/time -o "$md.cpu" -f "%U %S" env ${AB_ENV:-} "$app/flashmla" ingest-bench --address "$scheme://127.0.0.1:$port" --decode-address "$scheme://127.0.0.1:$data_plane_port" \
          --batch 1 --heads 1 --context 1 --ingest-tokens "${AB_INGEST_TOKENS:-16384}" --ingest-layers 1 --seconds "${AB_SECONDS:-3}" \
          "${tls_client[@]}" ${AB_ARGS:-} --out "$md" > "$md.log" 2>&1 || { echo "ingest-bench ($name, $mode) failed"; tail -5 "$md.log"; status=1; }
        # CPU seconds of server and client over the whole run (both decode phases too: a share alike for both builds)
        # per GB ingested: the figure that holds when other work shares the cores, where GB/s does not.
        server_cpu=$(awk '{ print ($14 + $15) / 100 }' "/proc/$server_pid/stat" 2>/dev/null || echo 0)
        stop_server
        client_cpu=$(awk '{ print $1 + $2 }' "$md.cpu" 2>/dev/null | tail -n 1)
        awk -F'|' -v r="$round" -v n="$name" -v m="$mode" -v sc="$server_cpu" -v cc="${client_cpu:-0}" -v tokens="${AB_INGEST_TOKENS:-16384}" '
          function trim(x) { gsub(/^ +| +$/, "", x); return x }
          trim($2) == "ingest (GB/s)" { gbps = trim($3) }
          trim($2) == "ingest calls (sequences)" { gb = trim($3) * tokens * 1152 / 1e9 }
          END { printf "%s\t%s\t%s\tingest\t-\t1\t%s\t0\t0\t%.3f\t%.3f\n", r, n, m, gbps, (gb > 0 ? sc / gb : 0), (gb > 0 ? cc / gb : 0) }' "$md" >> "$rows"
        continue
      fi
      # shellcheck disable=SC2086
      timeout 300 env ${AB_ENV:-} "$app/flashmla" bench-matrix --address "$scheme://127.0.0.1:$port" --decode-address "$scheme://127.0.0.1:$data_plane_port" \
        --batch "${AB_BATCH:-32,128}" --heads "${AB_HEADS:-16}" --connections "${AB_CONNECTIONS:-1}" --context 1 \
        --seconds "${AB_SECONDS:-3}" --tcp-seconds 0 "${tls_client[@]}" ${AB_ARGS:-} --out "$md" > "$md.log" 2>&1 || { echo "bench ($name, $mode) failed"; tail -5 "$md.log"; status=1; }
      stop_server
      # The matrix rows, columns found by their header names.
      awk -F'|' -v r="$round" -v n="$name" -v m="$mode" '
        function trim(x) { gsub(/^ +| +$/, "", x); return x }
        /^\| --- / { next }
        /^\| / {
          if (trim($2) == "b") { delete col; for (i = 2; i < NF; i++) col[trim($i)] = i; next }
          if (!("up GB/s" in col)) next
          printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r, n, m, trim($2), trim($3), trim($(col["conns"])),
            trim($(col["up GB/s"])), trim($(col["down GB/s"])), trim($(col["p50 ms"]))
        }' "$md" | sed 's/$/\t\t/' >> "$rows"
    done
  done
done
echo "==================== TLS A/B ($rows; $rounds rounds, medians)"
python3 - "$rows" <<'PY'
import csv, statistics, sys
from collections import defaultdict
cells = defaultdict(list)
with open(sys.argv[1]) as f:
    for r in csv.DictReader(f, delimiter='\t'):
        cells[(r['b'], r['h_q'], r['conns'], r['build'], r['mode'])].append(r)
print(f"{'b':>6} {'h_q':>4} {'conns':>5} {'build':<10} {'mode':<5} {'up GB/s':>8} {'down GB/s':>9} {'p50 ms':>7} {'srv CPU s/GB':>12} {'cli CPU s/GB':>12}  runs (up)")
for key in sorted(cells, key=lambda k: (k[0].zfill(8), k[1], int(k[2]), k[4], k[3])):
    rs = cells[key]
    med = lambda c: statistics.median(float(r[c] or 0) for r in rs)
    cpu = lambda c: f"{med(c):12.3f}" if any(r.get(c) for r in rs) else f"{'':>12}"
    print(f"{key[0]:>6} {key[1]:>4} {key[2]:>5} {key[3]:<10} {key[4]:<5} {med('up_GBps'):8.3f} {med('down_GBps'):9.3f} {med('p50_ms'):7.2f} "
          f"{cpu('server_cpu_s_per_GB')} {cpu('client_cpu_s_per_GB')}  " + " ".join(r['up_GBps'] for r in rs))
PY
exit $status
