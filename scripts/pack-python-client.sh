#!/usr/bin/env bash
# Runs on the development machine (Debian 12). Packs a self-contained Python for the GPU machine, which has
# no grpcio and no network: Debian's python3.11 with grpcio, protobuf and numpy and every shared library
# they load except glibc, libgcc and libstdc++ (the device's newer ones serve), extracted from the .debs
# with dpkg -x; the flashmla_client package with its contract compiled here; bench.py and the examples.
# Leaves .devcarry/flashmla-python.tar.xz (ignored by git), which the device tool carries with
# `carry: [".devcarry"]`; scripts/python-client-bench.sh unpacks and runs it there.
#
#   scripts/pack-python-client.sh
#
# Env: DEVCARRY (destination folder, default <this checkout>/.devcarry).
set -euo pipefail

repo_root=$(git rev-parse --show-toplevel)
dest=${DEVCARRY:-$repo_root/.devcarry}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
debs="$stage/debs" root="$stage/flashmla-python"
mkdir -p "$debs" "$root"

# Loaded from the device's own system: glibc's libraries, the loader, and the GCC runtime (newer there).
host_provided='^(libc6|libgcc-s1|libstdc\+\+6)(:amd64)?$'

extract() {  # extract PACKAGE...: download each .deb once and unpack it into the tree
  local package
  for package in "$@"; do
    [[ -e "$debs/$package.done" ]] && continue
    (cd "$debs" && apt-get download -qq "$package" 2> /dev/null) || { echo "pack-python-client: apt-get download $package failed" >&2; exit 1; }
    dpkg -x "$debs/${package%%:*}"_*.deb "$root"
    touch "$debs/$package.done"
  done
}

# The interpreter, its standard library and the three packages the client needs.
extract python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3-grpcio python3-protobuf python3-numpy

owner() {  # owner LIBRARY: the package that installed it (dpkg records /lib paths, which usrmerge links to /usr/lib)
  local real
  real=$(readlink -f "$1")
  { dpkg -S "$real" || dpkg -S "${real#/usr}" || dpkg -S "$1"; } 2> /dev/null | head -n1 | cut -d: -f1
}

# Then the packages of every shared library their ELF files load, until nothing new turns up. ldd resolves
# against this machine's installed copies (the same Debian packages), and dpkg -S names their package.
while :; do
  libraries=$(find "$root" -type f \( -name '*.so*' -o -path '*/bin/python3.11' \) -exec ldd {} + 2> /dev/null |
    awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u)
  new=()
  for library in $libraries; do
    package=$(owner "$library")
    [[ -z "$package" || "$package" =~ $host_provided || -e "$debs/$package.done" ]] && continue
    new+=("$package")
  done
  [[ ${#new[@]} -eq 0 ]] && break
  mapfile -t new < <(printf '%s\n' "${new[@]}" | sort -u)
  extract "${new[@]}"
done

# What a benchmark never loads: documentation, tests, the GUI and packaging parts of the standard library.
rm -rf "$root"/usr/share "$root"/usr/lib/python3/dist-packages/numpy/*/tests \
  "$root"/usr/lib/python3/dist-packages/numpy/tests "$root"/usr/lib/python3/dist-packages/numpy/f2py \
  "$root"/usr/lib/python3.11/{test,idlelib,tkinter,turtledemo,ensurepip,lib2to3,pydoc_data}

# The client, with the contract compiled here (the device has no protoc), the benchmark and the examples.
mkdir -p "$root/app"
cp -r "$repo_root/clients/python/flashmla_client" "$root/app/"
rm -rf "$root/app/flashmla_client/_generated" "$root/app/flashmla_client/__pycache__"
/usr/bin/python3 "$repo_root/clients/python/flashmla_client/_contract_build.py" \
  "$root/app/flashmla_client/_generated/flashmla_v1.binpb" "$repo_root/proto"
cp "$repo_root/clients/python/bench.py" "$root/app/"
cp -r "$repo_root/clients/python/examples" "$root/app/"

# bin/python3: the tree's interpreter with the tree's libraries and packages, wherever it is unpacked.
mkdir -p "$root/bin"
cat > "$root/bin/python3" << 'EOF'
#!/bin/sh
# Debian's python3.11 of this tree, with its libraries (glibc and libstdc++ are the host's).
here=$(cd "$(dirname "$0")/.." && pwd)
lib="$here/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$lib:$here/lib/x86_64-linux-gnu:$lib/blas:$lib/lapack:$here/usr/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONHOME="$here/usr" PYTHONPATH="$here/app" PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1
exec "$here/usr/bin/python3.11" "$@"
EOF
chmod +x "$root/bin/python3"

{
  echo "commit: $(git -C "$repo_root" rev-parse --short HEAD)$(git -C "$repo_root" diff --quiet -- clients/python proto || echo '+dirty')"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname), $(. /etc/os-release && echo "$PRETTY_NAME"), glibc $(ldd --version | head -n1 | awk '{print $NF}')"
  echo "packages:"
  (cd "$debs" && ls *.deb | sed 's/^/  /')
} > "$root/PACKED.txt"

# Every library the tree loads must resolve inside it or be one the host provides.
outside=$(find "$root" -type f \( -name '*.so*' -o -path '*/bin/python3.11' \) -exec env \
  LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu/blas:$root/usr/lib/x86_64-linux-gnu/lapack:$root/usr/lib" \
  ldd {} + 2> /dev/null | awk '$2 == "=>" {print $1, $3}' | grep -v " $root/" |
  grep -vE '^(libc|libm|libdl|libpthread|librt|libutil|libresolv|libanl|libnsl|libcrypt|libgcc_s|libstdc\+\+)\.so' | sort -u || true)
if [[ -n "$outside" ]]; then
  echo "pack-python-client: libraries that resolve outside the tree:" >&2
  echo "$outside" >&2
  exit 1
fi

mkdir -p "$dest"
archive="$dest/flashmla-python.tar.xz"
tar -C "$stage" -cf - flashmla-python | xz -T2 -9 > "$archive.tmp"
mv "$archive.tmp" "$archive"
echo "pack-python-client: $archive: $(( $(stat -c %s "$archive") / 1024 )) KiB ($(du -sh "$root" | cut -f1) unpacked," \
  "$(ls "$debs"/*.deb | wc -l) packages)"
