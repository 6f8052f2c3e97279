#!/usr/bin/env bash
# The test command: builds vmep and runs every test. On a machine without a
# GPU the GPU tests report "skipped" (never passed). Then the CPU tests again
# under AddressSanitizer + UBSan, and the fuzz targets for a bounded time.
set -eo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh

echo "== build and test (build-test) =="
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-test -j "$VMEP_JOBS"
(cd build-test && ctest --output-on-failure -j "$VMEP_JOBS")

echo "== Python package CPU tests (tests/python, Debian's python3) =="
# Debian's python3-torch (CPU) and python3-pytest, installed when missing;
# /usr/bin/python3 so that a pyenv or venv shim does not hide them.
py=/usr/bin/python3
if ! "$py" -c "import torch, pytest" >/dev/null 2>&1; then
  echo "setup: installing python3-torch python3-pytest"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo -n"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    $sudo_cmd apt-get install -y -qq --no-install-recommends \
    python3-torch python3-pytest >/dev/null || {
      echo "setup: could not install python3-torch python3-pytest" >&2
      exit 1
    }
fi
VMEP_BUILD_DIR=build-test "$py" -m pytest -q -p no:cacheprovider tests/python

echo "== CPU tests under ASan + UBSan (build-asan) =="
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DVMEP_SANITIZE=ON \
  -DVMEP_GPU_TESTS=OFF >/dev/null
cmake --build build-asan -j "$VMEP_JOBS"
(cd build-asan && ctest --output-on-failure -j "$VMEP_JOBS" -L cpu -LE repo)

if [ -x scripts/fuzz.sh ]; then
  echo "== fuzz targets (bounded) =="
  scripts/fuzz.sh
fi
