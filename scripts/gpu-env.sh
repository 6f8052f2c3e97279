# Sourced by the GPU scripts: root (the checkout, made current), build (the
# build folder, $1 or build-gpu, absolute), out ($OUT or gpu-logs, plus the
# caller's $GPU_ENV_SUBDIR), and a build made elsewhere made usable here.
# A missing build is made (the targets in $GPU_ENV_TARGETS, default all).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
build=${1:-build-gpu}
case "$build" in /*) ;; *) build="$root/$build" ;; esac
out=${OUT:-$root/gpu-logs}${GPU_ENV_SUBDIR:+/$GPU_ENV_SUBDIR}
mkdir -p "$out"

if [ ! -f "$build/CMakeCache.txt" ]; then
  export PATH=/usr/local/cuda/bin:$PATH
  # shellcheck disable=SC2086 # the targets are words
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
    cmake --build "$build" -j "$(nproc)" ${GPU_ENV_TARGETS:+--target $GPU_ENV_TARGETS} \
      >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
fi
# CTest files and RPATHs name the folder the build was made in; where the
# checkout lies elsewhere on this machine, make that path point here.
made_in=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
if [ -n "$made_in" ] && [ "$made_in" != "$root" ] && [ ! -e "$made_in" ]; then
  mkdir -p "$(dirname "$made_in")" && ln -s "$root" "$made_in"
fi
