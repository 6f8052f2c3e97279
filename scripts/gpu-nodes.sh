#!/usr/bin/env bash
# The inter-node path on one GPU (docs/INTERNODE.md): the CTests of label
# `nodes` (each multi-rank EP test with its ranks split into pretend nodes,
# every byte between nodes through UCX over TCP on loopback and the
# proxies), vmep-bench across 2 pretend nodes in both modes, then the
# elastic plans on 2 and on 4 pretend nodes.
# Logs under $OUT (or ./gpu-logs)/nodes.
# GPU_NODES_TIMEOUT bounds each run and each test (seconds, default 300;
# the tests together, four times it); GPU_NODES_TESTS is a CTest -R
# pattern that picks among the `nodes` tests (default: all);
# GPU_NODES_PLANS the elastic plans (comma-separated names, default: all of
# tests/elastic/plans; empty: none), GPU_NODES_PLAN_NODES the node counts
# they run with (default "2 4"); GPU_NODES_BENCH=0 skips vmep-bench.
set -uo pipefail
GPU_ENV_SUBDIR=nodes source "$(dirname "$0")/gpu-env.sh"
limit=${GPU_NODES_TIMEOUT:-300}
export UCX_TLS=${UCX_TLS:-tcp} UCX_NET_DEVICES=${UCX_NET_DEVICES:-lo}
export UCX_WARN_UNUSED_ENV_VARS=n
status=0
"$build/tools/vmep-info" > "$out/vmep-info.log" 2>&1
grep -A3 "inter-node engine" "$out/vmep-info.log"
run() { # name, then the command; run_limit bounds it (default limit + 30 s)
  local name=$1; shift
  local t0=$SECONDS
  timeout "${run_limit:-$((limit + 30))}" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name: rc $rc, $((SECONDS - t0)) s"
  [ $rc = 0 ] || { status=1; tail -15 "$out/$name.log"; }
}
# Each test within the limit, the twelve of them within four times it.
run_limit=$((limit * 4)) run ctest-nodes ctest --test-dir "$build" -L nodes \
  -R "${GPU_NODES_TESTS:-.}" --output-on-failure --timeout "$limit"
grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest-nodes.log" | tail -14
# The benchmark across 2 pretend nodes: intra / inter bytes, the proxy's
# count, the engine's own ceiling; then the high-throughput calls the same
# way (T = 1024, checked first).
if [ "${GPU_NODES_BENCH:-1}" != 0 ]; then
  run bench-nodes2 "$build/tools/vmep-bench" --nodes 2 --check \
    --json "$out/bench-nodes2.json"
  grep -A16 "across 2 nodes" "$out/bench-nodes2.log" | sed 's/^\[rank 0\] //'
  run bench-ht-nodes2 "$build/tools/vmep-bench" --mode ht --nodes 2 --check \
    --tokens 1024 --iters 10 --json "$out/bench-ht-nodes2.json"
  grep -A16 "across 2 nodes" "$out/bench-ht-nodes2.log" | sed 's/^\[rank 0\] //'
fi
# Elastic plans on pretend nodes: ranks that join, leave, die and come
# back across nodes (connect / disconnect through the proxies); on 4 nodes
# of the plans' 4 ranks, every peer is remote.
# Unset: every plan of tests/elastic/plans; set but empty: none.
every=$(cd tests/elastic/plans && ls -- *.json | sed 's/\.json$//' | paste -sd,)
IFS=, read -ra plans <<< "${GPU_NODES_PLANS-$every}"
for nodes in ${GPU_NODES_PLAN_NODES:-2 4}; do
  for name in "${plans[@]}"; do
    VMEP_NODES=$nodes run "elastic-nodes$nodes-$name" \
      "$build/tests/elastic/vmep-elastic" "tests/elastic/plans/$name.json" \
      --json "$out/elastic-nodes$nodes-$name.json"
    tail -1 "$out/elastic-nodes$nodes-$name.log"
  done
done
exit "$status"
