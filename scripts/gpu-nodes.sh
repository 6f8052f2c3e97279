#!/usr/bin/env bash
# The inter-node path on one GPU (docs/INTERNODE.md): the EP test with the
# ranks split into pretend nodes (4 ranks on 2 and on 4 nodes, 3 ranks on
# 2), every byte between nodes through UCX over TCP on loopback and the
# proxies, then the high-throughput tests the same way (test_ht with 4 and
# 3 ranks on 2 nodes, test_ht_modes with 4 on 2), then the kernel test and
# the EP test without pretend nodes (the mapped path the same kernels
# serve), then elastic plans on 2 pretend nodes.
# Logs under $OUT (or ./gpu-logs)/nodes.
# GPU_NODES_TIMEOUT bounds each run (seconds, default 300); GPU_NODES_SPLITS
# picks the "ranks nodes" pairs of test_ep (default "4 2,4 4,3 2"),
# GPU_NODES_HT_SPLITS those of test_ht (default "4 2,3 2"; empty: none, nor
# test_ht_modes), GPU_NODES_PLANS the elastic plans (default: all of
# tests/elastic/plans; empty: none), GPU_NODES_BENCH=0 skips vmep-bench
# --nodes 2.
set -uo pipefail
GPU_ENV_SUBDIR=nodes source "$(dirname "$0")/gpu-env.sh"
limit=${GPU_NODES_TIMEOUT:-300}
export UCX_TLS=${UCX_TLS:-tcp} UCX_NET_DEVICES=${UCX_NET_DEVICES:-lo}
export UCX_WARN_UNUSED_ENV_VARS=n
status=0
"$build/tools/vmep-info" > "$out/vmep-info.log" 2>&1
grep -A3 "inter-node engine" "$out/vmep-info.log"
run() { # name, then the command
  local name=$1; shift
  local t0=$SECONDS
  timeout $((limit + 30)) "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name: rc $rc, $((SECONDS - t0)) s; $(grep -cE 'ok$|: ok' "$out/$name.log") ok lines"
  [ $rc = 0 ] || { status=1; tail -15 "$out/$name.log"; }
}
IFS=, read -ra splits <<< "${GPU_NODES_SPLITS:-4 2,4 4,3 2}"
split_run() { # ranks nodes [test, default test_ep]
  local test=${3:-test_ep}
  VMEP_LOG=${VMEP_LOG:-info} run "$test-$1ranks-$2nodes" \
    "$build/tools/vmep-run" -n "$1" --nodes "$2" --timeout "$limit" -- \
    "$build/tests/gpu/$test"
}
# shellcheck disable=SC2086 # "ranks nodes" are two words
split_run ${splits[0]}
# The high-throughput calls across pretend nodes: dispatch rows and weights,
# combine slots, marks and weights through the proxies; in place too.
IFS=, read -ra ht_splits <<< "${GPU_NODES_HT_SPLITS-4 2,3 2}"
for split in "${ht_splits[@]}"; do
  # shellcheck disable=SC2086
  split_run $split test_ht
done
[ ${#ht_splits[@]} = 0 ] || split_run 4 2 test_ht_modes
# The benchmark across 2 pretend nodes: intra / inter bytes, the proxy's
# count, the engine's own ceiling.
if [ "${GPU_NODES_BENCH:-1}" != 0 ]; then
  run bench-nodes2 "$build/tools/vmep-bench" --nodes 2 --check \
    --json "$out/bench-nodes2.json"
  grep -A16 "across 2 nodes" "$out/bench-nodes2.log" | sed 's/^\[rank 0\] //'
  # The high-throughput calls the same way (T = 1024, checked first).
  run bench-ht-nodes2 "$build/tools/vmep-bench" --mode ht --nodes 2 --check \
    --tokens 1024 --iters 10 --json "$out/bench-ht-nodes2.json"
  grep -A16 "across 2 nodes" "$out/bench-ht-nodes2.log" | sed 's/^\[rank 0\] //'
fi
# The same kernels on mapped peers only.
run test_ll_kernels "$build/tests/gpu/test_ll_kernels"
run test_ep-4ranks "$build/tools/vmep-run" -n 4 --timeout "$limit" -- \
  "$build/tests/gpu/test_ep"
for split in "${splits[@]:1}"; do
  # shellcheck disable=SC2086
  split_run $split
done
# Elastic plans on 2 pretend nodes: ranks that join, leave, die and come
# back across nodes (connect / disconnect through the proxies).
# Unset: every plan of tests/elastic/plans; set but empty: none.
every=$(cd tests/elastic/plans && ls -- *.json | sed 's/\.json$//' | paste -sd,)
IFS=, read -ra plans <<< "${GPU_NODES_PLANS-$every}"
for name in "${plans[@]}"; do
  VMEP_NODES=2 run "elastic-nodes2-$name" "$build/tests/elastic/vmep-elastic" \
    "tests/elastic/plans/$name.json" --json "$out/elastic-nodes2-$name.json"
  tail -1 "$out/elastic-nodes2-$name.log"
done
exit "$status"
