#!/usr/bin/env bash
# Runs on the GPU machine (or any x86-64 Linux with glibc >= 2.36). Unpacks the Python that
# scripts/pack-python-client.sh left in .devcarry/ (once per archive) and runs the Python client's
# benchmark, clients/python/bench.py as packed, against a server the caller started; it starts nothing.
#
#   scripts/python-client-bench.sh --address localhost:50051 --decode-port 50052 \
#       --batch 32,128 --heads 16,128 --context 4096 --connections 1,4 --seconds 3 --out results/raw/python-bench.md
#
# Arguments go to bench.py (--help lists them). Env: PYTHON_CARRY (the archive, default
# <checkout>/.devcarry/flashmla-python.tar.xz), PYTHON_UNPACK (where to unpack, default /tmp/flashmla-python).
set -euo pipefail

repo_root=$(cd "$(dirname "$0")/.." && pwd)
archive=${PYTHON_CARRY:-$repo_root/.devcarry/flashmla-python.tar.xz}
unpack=${PYTHON_UNPACK:-/tmp/flashmla-python}
if [[ ! -f "$archive" ]]; then
  echo "python-client-bench: $archive is missing (scripts/pack-python-client.sh makes it)" >&2
  exit 2
fi
if [[ ! -f "$unpack/PACKED.txt" || "$archive" -nt "$unpack/PACKED.txt" ]]; then
  rm -rf "$unpack"
  mkdir -p "$unpack"
  tar -xJf "$archive" -C "$unpack" --strip-components=1
  touch "$unpack/PACKED.txt"
fi
python="$unpack/bin/python3"
echo "python-client-bench: $(head -n1 "$unpack/PACKED.txt"); $("$python" -c 'import sys, grpc, numpy; print(f"Python {sys.version.split()[0]}, grpcio {grpc.__version__}, numpy {numpy.__version__}")')"
exec "$python" "$unpack/app/bench.py" "$@"
