#!/usr/bin/env bash
# The fuzz targets, each for a bounded time (FUZZ_SECONDS, default 20), built
# with clang's libFuzzer under ASan + UBSan. Called by scripts/test.sh.
set -eo pipefail
exec "$(dirname "$0")/../tests/fuzz/run.sh"
