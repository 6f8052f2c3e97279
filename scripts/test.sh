#!/usr/bin/env bash
# The test command: builds vmep and runs every test. On a machine without a
# GPU the GPU tests report "skipped" (never passed). Then the Python
# package's CPU tests, the CPU tests again under AddressSanitizer + UBSan,
# and the fuzz targets for a bounded time. The terminal gets one line per
# step and CTest's closing lines; everything else goes to
# build-test/test.log, whose last 80 lines are printed when a step fails.
set -eo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. scripts/setup.sh
# shellcheck source=scripts/log-steps.sh
. scripts/log-steps.sh
log_start "$root/build-test/test.log"
echo "full log: build-test/test.log"

log_step "configure build-test" \
  cmake -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo
log_step "build build-test" cmake --build build-test -j "$VMEP_JOBS"
# Debian's python3-torch (CPU), python3-pytest, python3-venv (a test
# installs the package into a fresh venv) and python3-matplotlib (the
# plot_bench CTest), installed when missing, before the CTest run that
# uses matplotlib; /usr/bin/python3 so that a pyenv or venv shim does not
# hide them.
py=/usr/bin/python3
if ! "$py" -c "import torch, pytest, ensurepip, matplotlib" >/dev/null 2>&1; then
  echo "setup: installing python3-torch python3-pytest python3-venv python3-matplotlib"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo -n"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    $sudo_cmd apt-get install -y -qq --no-install-recommends \
    python3-torch python3-pytest python3-venv python3-matplotlib >/dev/null || {
      echo "setup: could not install python3-torch python3-pytest python3-venv python3-matplotlib" >&2
      exit 1
    }
fi
log_ctest "tests (build-test)" build-test --output-on-failure -j "$VMEP_JOBS"

log_step "Python package CPU tests (tests/python)" \
  env VMEP_BUILD_DIR=build-test "$py" -m pytest -q -p no:cacheprovider tests/python
grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$VMEP_LOG_FILE" | tail -n 1

log_step "configure build-asan (ASan + UBSan)" \
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DVMEP_SANITIZE=ON \
  -DVMEP_GPU_TESTS=OFF
log_step "build build-asan" cmake --build build-asan -j "$VMEP_JOBS"
log_ctest "CPU tests under ASan + UBSan (build-asan)" build-asan \
  --output-on-failure -j "$VMEP_JOBS" -L cpu -LE "repo|install"

if [ -x scripts/fuzz.sh ]; then
  log_step "fuzz targets (bounded)" scripts/fuzz.sh
  grep -E 'tests passed, ' "$VMEP_LOG_FILE" | tail -n 1
fi
echo "all steps passed (full log: build-test/test.log)"
