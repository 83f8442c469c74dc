# The step runner of .ci/run: each step is one command, whose counts add up to the last line of .ci/run.
# A step that ends its output with "N passed, N failed[, N skipped]" adds those counts; any other step counts
# as one test, passed or failed by its exit status. A failing step fails CI.

passed=0 failed=0 skipped=0 status=0

# step NAME COMMAND...
step() {
  local name=$1 out rc counts p f s
  shift
  out=$(mktemp)
  echo "== $name"
  # The command runs in this shell (a step may set variables for later ones) with its output in a file, shown
  # when it ends: a tee behind a process substitution could still be writing when the counts were read (a step
  # of 170 tests once counted as 1).
  "$@" > "$out" 2>&1
  rc=$?
  cat "$out"
  counts=$(tail -n 1 "$out" | sed -nE 's/^([0-9]+) passed, ([0-9]+) failed(, ([0-9]+) skipped)?$/\1 \2 \4/p')
  rm -f "$out"
  if [ -n "$counts" ]; then
    read -r p f s <<< "$counts"
  elif [ "$rc" -eq 0 ]; then
    p=1 f=0 s=0
  else
    p=0 f=1 s=0
  fi
  if [ "$rc" -ne 0 ]; then
    status=1
    [ "$f" -eq 0 ] && f=1  # a step that fails without a failed test (a build error) still counts as one
  fi
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + ${s:-0}))
}

# The solution's tests, their per-assembly summaries ("Passed!  - Failed: 0, Passed: 36, Skipped: 0, ...")
# summed into one counts line.
dotnet_tests() {
  local log rc
  log=$(mktemp)
  dotnet test "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  grep -E '^(Passed|Failed)!' "$log" |
    sed -E 's/.*Failed: *([0-9]+), Passed: *([0-9]+), Skipped: *([0-9]+).*/\2 \1 \3/' |
    awk '{p+=$1; f+=$2; s+=$3} END {printf "%d passed, %d failed, %d skipped\n", p, f, s}'
  rm -f "$log"
  return "$rc"
}
