#!/usr/bin/env bash
# The main job: builds vmep (Release) and runs the benchmark with its
# defaults (4 ranks sharing one GPU under a private MPS daemon, or one rank
# per GPU; H 7168, K 8, T 128, 4 experts per rank), after a short vmep-info.
# Options are passed to vmep-bench (--help lists them).
set -eo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DVMEP_GPU_TESTS=OFF >/dev/null
cmake --build build-release -j "$VMEP_JOBS" --target vmep-info vmep-run vmep-bench
./build-release/tools/vmep-info | sed -n '1,4p'
exec ./build-release/tools/vmep-bench "$@"
