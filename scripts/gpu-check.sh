#!/usr/bin/env bash
# Everything that needs a GPU, in one call on the device machine: vmep-info,
# then every GPU test, with logs under $OUT (or ./gpu-logs). Expects a build
# folder made elsewhere (default build-gpu, carried to the device) so that
# device time goes to running, not compiling; builds one if it is missing.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${1:-build-gpu}
out=${OUT:-$root/gpu-logs}
mkdir -p "$out"

if [ ! -f "$build/CMakeCache.txt" ]; then
  export PATH=/usr/local/cuda/bin:$PATH
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && \
    cmake --build "$build" -j "$(nproc)" >"$out/build.log" 2>&1 || {
      tail -30 "$out/build.log"; exit 1; }
fi
# CTest files and RPATHs name the folder the build was made in; where the
# checkout lies elsewhere on this machine, make that path point here.
made_in=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
if [ -n "$made_in" ] && [ "$made_in" != "$root" ] && [ ! -e "$made_in" ]; then
  mkdir -p "$(dirname "$made_in")" && ln -s "$root" "$made_in"
fi

{
  echo "== $(date -u +%FT%TZ) $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$build/tools/vmep-info"
} 2>&1 | tee "$out/vmep-info.log"

(cd "$build" && ctest -L gpu --output-on-failure --timeout 600) 2>&1 | tee "$out/ctest-gpu.log"
status=${PIPESTATUS[0]}
grep -E "tests passed|tests failed|Skipped|Failed" "$out/ctest-gpu.log" | tail -12
exit "$status"
