#!/usr/bin/env bash
# Python interop (issue 12): grpcio, a gRPC client nobody in this project wrote, against the real server on
# the CPU backend (both ports, every RPC: tests/interop), and the flashmla_client package (clients/python).
# Installs Debian's packages for it quietly and only when missing (CI is root on a fresh Debian machine).
# The last line is "N passed, N failed, N skipped", as .ci/run's steps count.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
packages=(python3-grpcio python3-protobuf python3-numpy python3-grpc-tools python3-pytest)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2> /dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log=$(mktemp)
  if [ "$(id -u)" -ne 0 ]; then
    echo "python interop: ${missing[*]} missing and not root to install them"
  elif ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -qq --no-install-recommends "${missing[@]}"; } > "$log" 2>&1; then
    cat "$log"
    echo "python interop: apt-get install ${missing[*]} failed"
  fi
  rm -f "$log"
  for package in "${missing[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2> /dev/null | grep -q "ok installed" || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
  done
fi

# Debian's interpreter, which sees Debian's packages (a pyenv python3 may come first on PATH). The server is
# built (a no-op after dotnet test) and started by tests/interop/conftest.py.
python=/usr/bin/python3
report=$(mktemp)
PYTHONDONTWRITEBYTECODE=1 "$python" -m pytest -q -p no:cacheprovider --junitxml="$report" tests/interop clients/python/tests
rc=$?
if [ "$rc" -eq 5 ]; then rc=0; fi  # pytest's "no tests collected": nothing ran, nothing failed
counts=$("$python" - "$report" << 'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (ET.ParseError, FileNotFoundError):
    print("0 0 0"); raise SystemExit
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
total = lambda key: sum(int(s.get(key, 0)) for s in suites)
failed = total("failures") + total("errors")
print(total("tests") - failed - total("skipped"), failed, total("skipped"))
PY
)
rm -f "$report"
read -r passed failed skipped <<< "$counts"
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi  # a crash before any test counts as one failure
echo "python interop: $((SECONDS - started)) s"
echo "$passed passed, $failed failed, $skipped skipped"
exit "$rc"
