#!/usr/bin/env bash
# The main job: builds vmep (Release, everything `cmake --install` installs)
# and runs the benchmark with its defaults (4 ranks sharing one GPU under a
# private MPS daemon, or one rank per GPU; H 7168, K 8, T 128, 4 experts
# per rank), after a short vmep-info. Options are passed to vmep-bench
# (--help lists them). The build's output goes to build-release/build.log.
set -eo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
# shellcheck source=scripts/log-steps.sh
. scripts/log-steps.sh
log_start build-release/build.log
log_step "configure build-release (Release, no tests)" \
  cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DVMEP_TESTS=OFF \
  -DVMEP_GPU_TESTS=OFF
log_step "build (log: build-release/build.log)" \
  cmake --build build-release -j "$VMEP_JOBS"
./build-release/tools/vmep-info | sed -n '1,4p'
exec ./build-release/tools/vmep-bench "$@"
