#!/usr/bin/env bash
# Everything that needs a GPU, in one call on the device machine: vmep-info,
# every GPU test (the elastic plans included, three of them again with
# VMEP_MEM_SHARE=legacy), the Python package's GPU
# tests, the default benchmark with --check, the bf16, fp8 and
# zero-copy sweeps (T = 128 .. 4096) as JSON, the combine reduced at the
# expert side and LogFMT (checked, then swept), and a short high-throughput
# run (--mode ht --check, T = 1024 and 4096, under a minute; again with
# --zero-copy) as JSON, with
# logs under $OUT (or ./gpu-logs).
# Expects a build folder made elsewhere (default build-gpu, carried to the
# device) so that device time goes to running, not compiling; builds one if
# it is missing. GPU_CHECK_BENCH=0 skips the benchmarks, GPU_CHECK_PYTHON=0
# the Python tests (to split the work over two device calls).
set -uo pipefail
source "$(dirname "$0")/gpu-env.sh"

{
  echo "== $(date -u +%FT%TZ) $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$build/tools/vmep-info"
} 2>&1 | tee "$out/vmep-info.log"

# Every GPU test, the elastic plans (label elastic: ranks share the GPU
# without MPS, since they kill ranks) included.
# (The pretend-node runs are scripts/gpu-nodes.sh's.)
(cd "$build" && ctest -L gpu -LE "elastic|nodes" --output-on-failure --timeout 600) \
  > "$out/ctest-gpu.log" 2>&1
status=$?
grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest-gpu.log" | tail -12
for plan in tests/elastic/plans/*.json; do
  name=$(basename "$plan" .json)
  timeout 600 "$build/tests/elastic/vmep-elastic" "$plan" \
    --json "$out/elastic-$name.json" > "$out/elastic-$name.log" 2>&1 || status=1
  tail -1 "$out/elastic-$name.log"
done
# The LEGACY (cuMemAlloc + IPC) window path with membership changes: peers
# land in the peer table instead of VA slots.
for name in expand_shrink fault_dispatch rejoin; do
  VMEP_MEM_SHARE=legacy timeout 600 "$build/tests/elastic/vmep-elastic" \
    "tests/elastic/plans/$name.json" --json "$out/elastic-legacy-$name.json" \
    > "$out/elastic-legacy-$name.log" 2>&1 || status=1
  tail -1 "$out/elastic-legacy-$name.log"
done
# The Python package's GPU tests (2 and 4 ranks under MPS).
if [ "${GPU_CHECK_PYTHON:-1}" != 0 ]; then
  bash scripts/gpu-python.sh "$build" > "$out/python.log" 2>&1 || status=1
  tail -16 "$out/python.log"
fi

if [ "${GPU_CHECK_BENCH:-1}" != 0 ]; then
  bench="$build/tools/vmep-bench"
  sweep=128,512,1024,2048,4096
  timeout 300 "$bench" --check > "$out/bench-default.log" 2>&1 || status=1
  timeout 300 "$bench" --tokens $sweep --iters 50 --json "$out/bench-bf16.json" \
    > "$out/bench-bf16.log" 2>&1 || status=1
  timeout 300 "$bench" --fp8 --tokens $sweep --iters 50 \
    --json "$out/bench-fp8.json" > "$out/bench-fp8.log" 2>&1 || status=1
  timeout 300 "$bench" --zero-copy --tokens $sweep --iters 50 \
    --json "$out/bench-zc.json" > "$out/bench-zc.log" 2>&1 || status=1
  # The combine variants: reduced at the expert side, LogFMT, both.
  for v in reduce logfmt reduce-logfmt; do
    case $v in
      reduce) flags=(--expert-reduce) ;;
      logfmt) flags=(--logfmt) ;;
      reduce-logfmt) flags=(--expert-reduce --logfmt) ;;
    esac
    timeout 300 "$bench" "${flags[@]}" --check --tokens 1,$sweep --iters 50 \
      --json "$out/bench-$v.json" > "$out/bench-$v.log" 2>&1 || status=1
  done
  # The high-throughput calls, checked once against the host, then timed;
  # again combined in place.
  timeout 60 "$bench" --mode ht --check --tokens 1024,4096 --iters 20 \
    --warmup 5 --json "$out/bench-ht.json" > "$out/bench-ht.log" 2>&1 || status=1
  timeout 60 "$bench" --mode ht --zero-copy --check --tokens 1024,4096 \
    --iters 20 --warmup 5 --json "$out/bench-ht-zc.json" \
    > "$out/bench-ht-zc.log" 2>&1 || status=1
  for f in bench-default bench-bf16 bench-fp8 bench-zc bench-reduce bench-logfmt \
    bench-reduce-logfmt bench-ht bench-ht-zc; do
    echo "== $f"; grep -A16 "summary" "$out/$f.log" | sed 's/^\[rank 0\] //'
  done
fi
# The device returns few files: pack the logs into one archive.
tar -C "$out" -czf /tmp/gpu-check-logs.tgz . && mv /tmp/gpu-check-logs.tgz "$out/" \
  && find "$out" -type f ! -name gpu-check-logs.tgz -delete
exit "$status"
