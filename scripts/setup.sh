#!/usr/bin/env bash
# Installs what building and testing vmep needs, from Debian's packages, when
# it is missing, and finds the CUDA toolkit. Sourced by the other scripts:
# exports PATH with nvcc on it. UCX (headers to build the inter-node engine,
# libucp.so.0 for its tests) comes from Debian's libucx-dev and libucx0.
need=()
for tool in cmake make gcc clang clang-format cppcheck readelf nm; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
pkgs=()
for tool in "${need[@]}"; do
  case "$tool" in
    readelf|nm) pkgs+=(binutils) ;;
    clang) pkgs+=(clang libclang-rt-dev) ;;
    *) pkgs+=("$tool") ;;
  esac
done
if [ ! -f /usr/include/ucp/api/ucp.h ] ||
   ! compgen -G '/usr/lib/*/libucp.so.0' >/dev/null; then
  pkgs+=(libucx-dev libucx0)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${pkgs[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo -n"
  $sudo_cmd apt-get update -qq && \
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${pkgs[@]}" >/dev/null || {
      echo "setup: could not install ${pkgs[*]}" >&2; exit 1; }
fi
if ! command -v nvcc >/dev/null 2>&1; then
  for dir in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    [ -x "$dir/nvcc" ] && export PATH="$dir:$PATH" && break
  done
fi
command -v nvcc >/dev/null 2>&1 || {
  echo "setup: nvcc not found: install the CUDA toolkit (12.5 or newer)" >&2; exit 1; }
jobs=$(nproc 2>/dev/null || echo 2)
export VMEP_JOBS=$jobs
