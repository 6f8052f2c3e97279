#!/usr/bin/env bash
# scripts/plot-bench.py on recorded vmep-bench JSON: the three PNGs (valid
# PNG files) for a D2D-ceiling run and a peer-ceiling run, no efficiency
# PNG for a file without a valid ceiling (the first 2-GPU bench), no phases
# PNG for a high-throughput file alone (--mode ht: no halves timed; a
# synthetic file, since none is recorded yet) but one beside a low-latency
# file, and a malformed file refused with exit 2 and one stderr line naming
# it.
# Skips (77) when no python3 on PATH or at /usr/bin has matplotlib.
# usage: test_plot_bench.sh REPO_DIR
set -u
root=${1:?usage: test_plot_bench.sh REPO_DIR}
py=""
for cand in python3 /usr/bin/python3; do
  if "$cand" -c 'import matplotlib' 2>/dev/null; then py=$cand; break; fi
done
[ -n "$py" ] || { echo "SKIP: matplotlib not installed (apt-get install python3-matplotlib)"; exit 77; }
script=$root/scripts/plot-bench.py
results=$root/docs/results
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# plot PREFIX WANT FILES...: exit 0 and exactly the PNGs in WANT, each a PNG.
plot() {
  local prefix=$1 want=$2
  shift 2
  if ! "$py" "$script" --out "$tmp/out" --prefix "$prefix" --label test "$@" \
      >"$tmp/log" 2>&1; then
    echo "FAIL: $prefix: exit $?:"; cat "$tmp/log"; fail=1; return
  fi
  got=$(cd "$tmp/out" && ls "$prefix"-*.png 2>/dev/null | sort | tr '\n' ' ')
  [ "$got" = "$want" ] || { echo "FAIL: $prefix: wrote '$got', want '$want'"; fail=1; }
  for png in $got; do
    magic=$(head -c 8 "$tmp/out/$png" | od -An -tx1 | tr -d ' \n')
    [ "$magic" = 89504e470d0a1a0a ] || { echo "FAIL: $png is not a PNG ($magic)"; fail=1; }
  done
}
plot h100 "h100-eff.png h100-gbps.png h100-phases.png " \
  "$results"/2026-11-23-h100/bench-{bf16,fp8,zc}.json
plot h200 "h200-eff.png h200-gbps.png h200-phases.png " \
  "$results"/2026-11-30-h200x2/run2/bench-e32-bf16.json \
  "$results"/2026-11-30-h200x2/run2/bench-e4-bf16.json
plot run1 "run1-gbps.png run1-phases.png " \
  "$results"/2026-11-30-h200x2/bench-e32-bf16.json

# The fields plot-bench.py reads, as vmep-bench --mode ht writes them (2
# ranks sharing a GPU, T 1024 and 4096); the numbers are made up.
ht_row() { # TOKENS RANK ROWS US
  printf '{"tokens": %s, "rank": %s, "dispatch_bytes": %s, "dispatch_us": %s, ' \
    "$1" "$2" $(($3 * 14336)) "$4"
  printf '"dispatch_copy_us": %s, "combine_bytes": %s, "combine_us": %s, ' \
    "$(($4 / 2))" $(($3 * 14336)) "$(($4 * 2))"
  printf '"combine_copy_us": %s, "phase_us": [0, 0, 0, 0], "num_recv": %s}' \
    "$(($4 / 2))" "$3"
}
{
  printf '{"mode": "ht", "cached": false, "ranks": 2, "hidden": 7168, '
  printf '"topk": 8, "experts": 8, "fp8": false, "zero_copy": false, '
  printf '"seed": 1, "iters": 20, "ceiling": "d2d", "ceiling_bytes": "deepep", '
  printf '"results": [%s, %s, %s, %s]}\n' "$(ht_row 1024 0 1900 150)" \
    "$(ht_row 1024 1 1910 152)" "$(ht_row 4096 0 7600 520)" \
    "$(ht_row 4096 1 7630 524)"
} >"$tmp/ht.json"
plot ht "ht-eff.png ht-gbps.png " "$tmp/ht.json"
plot mixed "mixed-eff.png mixed-gbps.png mixed-phases.png " \
  "$tmp/ht.json" "$results"/2026-11-23-h100/bench-bf16.json

# bad NAME CONTENT: exit 2, one stderr line "plot-bench.py: ..." naming the
# file, nothing written.
bad() {
  local name=$1
  printf '%s' "$2" >"$tmp/$name.json"
  "$py" "$script" --out "$tmp/bad" "$tmp/$name.json" >"$tmp/out.txt" 2>"$tmp/err"
  rc=$?
  lines=$(wc -l <"$tmp/err")
  if [ "$rc" != 2 ] || [ "$lines" != 1 ] || ! grep -q "^plot-bench.py: .*$name.json" "$tmp/err" ||
     [ -e "$tmp/bad" ]; then
    echo "FAIL: $name: exit $rc, $lines stderr lines (want 2, 1 naming the file):"
    cat "$tmp/err" "$tmp/out.txt"; fail=1
  fi
}
bad truncated '{"ranks": 2, "results": [{"tokens": 128'
bad not_bench '[1, 2, 3]'
bad no_times '{"ranks": 1, "results": [{"tokens": 128, "rank": 0}]}'
bad few_rows '{"ranks": 2, "results": [{"tokens": 128, "rank": 0}]}'
bad zero_time '{"ranks": 1, "results": [{"tokens": 128, "rank": 0, "dispatch_bytes": 5, "dispatch_us": 0}]}'
[ "$fail" = 0 ] && echo "plot-bench.py: PNGs and errors as expected ($py)"
exit "$fail"
