#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (build-fuzz, or $FUZZ_BUILD) and
# runs each for a bounded time: FUZZ_SECONDS (default 20). Fails on any
# crash, leak or sanitizer report. CI: tests/fuzz/run.sh
set -eo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${FUZZ_BUILD:-$root/build-fuzz}
seconds=${FUZZ_SECONDS:-20}
command -v clang >/dev/null || { echo "fuzz: clang not installed" >&2; exit 1; }
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DVMEP_FUZZ=ON \
  -DFUZZ_SECONDS="$seconds" -DVMEP_GPU_TESTS=OFF >/dev/null
cmake --build "$build" --target fuzz_store_frame fuzz_plan -j "$(nproc)"
(cd "$build" && ctest --output-on-failure -L fuzz)
