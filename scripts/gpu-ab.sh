#!/usr/bin/env bash
# Times two builds against each other in one device call: each of A and B
# is a folder holding a vmep-bench and the vmep-run next to it (copied from
# two build folders: small enough to carry both). Every run of the list
# goes A, B, A, B, so drift in the machine shows as a difference between
# the two runs of one build. Runs are vmep-bench argument lists, one per
# line on stdin (--json is added); a run not started by GPU_AB_BUDGET
# seconds (default 420) is skipped. Logs under $OUT (or ./gpu-logs)/ab.
#   scripts/gpu-ab.sh ab/main ab/new <<< "--mode ht --tokens 4096 --check"
set -uo pipefail
[ $# = 2 ] || { echo "usage: $0 A B < runs" >&2; exit 2; }
a=$1 b=$2
out=${OUT:-gpu-logs}/ab
mkdir -p "$out"
status=0 n=0
while read -r line; do
  [ -n "$line" ] || continue
  n=$((n + 1))
  for pass in 1 2; do
    for side in A B; do
      dir=$a && [ $side = B ] && dir=$b
      name="run$n-$side$pass"
      if [ "$SECONDS" -ge "${GPU_AB_BUDGET:-420}" ]; then
        echo "== $name skipped (budget)"; continue
      fi
      # shellcheck disable=SC2086 # the run's arguments are words
      timeout 120 "$dir/vmep-bench" $line --json "$out/$name.json" \
        > "$out/$name.log" 2>&1
      rc=$?
      [ $rc = 0 ] || status=1
      echo "== $name ($side: $dir) $line: rc $rc"
      grep -A6 " tokens |" "$out/$name.log" | grep -v '^\[rank [1-9]' |
        sed 's/^\[rank 0\] //' | grep -E '^ +[0-9]+ \|'
    done
  done
done
exit "$status"
