#!/usr/bin/env bash
# The main job: builds vmep (Release) and runs it with its defaults. Until
# the benchmark exists this is vmep-info: what the machine supports and
# which sharing strategy vmep picks there, and why.
set -eo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DVMEP_GPU_TESTS=OFF >/dev/null
cmake --build build-release -j "$VMEP_JOBS" --target vmep-info
./build-release/tools/vmep-info "$@"
