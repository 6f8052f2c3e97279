#!/usr/bin/env bash
# The high-throughput calls on one GPU, in one short device call: test_ht at
# 2, 3, 4 and 8 ranks, test_ht_modes at 2, 3, 4 and 8 (CTest, ranks under
# vmep-run's MPS daemon), then vmep-bench --mode ht, each checked once
# against the host reference and timed at T = 1024 and 4096: bf16, fp8,
# cached and the zero-copy (in place) combine, as JSON.
# Logs under $OUT (or ./gpu-logs)/ht; a summary on stdout.
# GPU_HT_TESTS=0 skips the tests, GPU_HT_BENCH=0 the benchmarks;
# GPU_HT_ITERS (default 20) sets the timed pairs per T.
set -uo pipefail
GPU_ENV_SUBDIR=ht source "$(dirname "$0")/gpu-env.sh"
status=0
if [ "${GPU_HT_TESTS:-1}" != 0 ]; then
  (cd "$build" && ctest -R "^test_ht" --output-on-failure --timeout 120) \
    > "$out/ctest-ht.log" 2>&1 || status=1
  grep -E "Test +#|tests passed|tests failed" "$out/ctest-ht.log"
fi
if [ "${GPU_HT_BENCH:-1}" != 0 ]; then
  iters=${GPU_HT_ITERS:-20}
  for mode in bf16 fp8 cached zc; do
    case $mode in
      bf16) flags=() ;;
      fp8) flags=(--fp8) ;;
      cached) flags=(--cached) ;;
      zc) flags=(--zero-copy) ;;
    esac
    timeout 120 "$build/tools/vmep-bench" --mode ht --check "${flags[@]}" \
      --tokens 1024,4096 --iters "$iters" --warmup 5 \
      --json "$out/bench-ht-$mode.json" > "$out/bench-ht-$mode.log" 2>&1 ||
      { status=1; echo "bench-ht-$mode failed:"; tail -5 "$out/bench-ht-$mode.log"; }
    echo "== bench-ht-$mode"
    grep -A14 "summary" "$out/bench-ht-$mode.log" | sed 's/^\[rank 0\] //'
  done
fi
exit "$status"
