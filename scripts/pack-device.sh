#!/usr/bin/env bash
# Runs on the development machine. Publishes the server, the CLI, the device tests (an xunit.v3 executable that
# runs itself, published without the VSTest adapter: -p:DevicePublish=true) and the device benchmark
# self-contained for linux-x64 into one folder (they share one runtime copy), compresses it, and
# leaves it in the main checkout's .devcarry/ (ignored by git), which the device tool carries with
# `carry: [".devcarry"]`. scripts/device-round.sh unpacks it on the GPU machine.
#
#   scripts/pack-device.sh [--only NAME]   (NAME: server, cli, devicecheck, devicebench)
#
# Env: DEVCARRY (destination folder, default <main checkout>/.devcarry), CONFIGURATION (Release).
set -euo pipefail

repo_root=$(git rev-parse --show-toplevel)
main_root=$(cd "$(git rev-parse --git-common-dir)/.." && pwd)
dest=${DEVCARRY:-$main_root/.devcarry}
configuration=${CONFIGURATION:-Release}
only=""
if [[ "${1:-}" == "--only" ]]; then only=${2:?"--only needs a name: server, cli, devicecheck or devicebench"}; fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
publish="$stage/flashmla"

declare -A projects=(
  [server]=src/FlashMla.Server/FlashMla.Server.csproj
  [cli]=src/FlashMla.Cli/FlashMla.Cli.csproj
  [devicecheck]=tests/FlashMla.Cuda.DeviceCheck/FlashMla.Cuda.DeviceCheck.csproj
  [devicebench]=bench/FlashMla.Cuda.DeviceBench/FlashMla.Cuda.DeviceBench.csproj
)

published=()
for name in server cli devicecheck devicebench; do
  [[ -n "$only" && "$only" != "$name" ]] && continue
  project="$repo_root/${projects[$name]}"
  if [[ ! -f "$project" ]]; then
    echo "pack-device: skipping $name: $project does not exist" >&2
    continue
  fi
  echo "pack-device: publishing $name"
  # -m:1 and no build servers: the development machine has two cores shared with others.
  dotnet publish "$project" -c "$configuration" -r linux-x64 --self-contained true \
    -p:PublishSingleFile=false -p:DebugType=none -p:GenerateDocumentationFile=false \
    -p:DevicePublish=true -m:1 -nologo -v:quiet -o "$publish"
  published+=("$name")
done
if [[ ${#published[@]} -eq 0 ]]; then echo "pack-device: nothing published" >&2; exit 1; fi

{
  echo "published: ${published[*]}"
  echo "commit: $(git -C "$repo_root" rev-parse --short HEAD)$(git -C "$repo_root" diff --quiet || echo '+dirty')"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)"
} > "$publish/PACKED.txt"

mkdir -p "$dest"
archive="$dest/flashmla-publish.tar.xz"
# xz is on the device image (Ubuntu 24.04); zstd may not be.
tar -C "$stage" -cf - flashmla | xz -T2 -6 > "$archive.tmp"
mv "$archive.tmp" "$archive"

size=$(stat -c %s "$archive")
echo "pack-device: $archive: $((size / 1024 / 1024)) MiB ($(du -sh "$publish" | cut -f1) unpacked)"
carry_total=$(du -sb "$dest" | cut -f1)
if (( carry_total > 60 * 1024 * 1024 )); then
  echo "pack-device: WARNING: $dest holds $((carry_total / 1024 / 1024)) MiB; the carried tree is limited to 64 MiB in all" >&2
fi
