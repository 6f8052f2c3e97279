#!/usr/bin/env bash
# Debian's UCX runtime for a machine that has none (the GPU machine's image):
# downloads libucx0 and the libraries it needs that a bare Ubuntu-24.04-like
# host may lack (verbs, rdmacm, numa, netlink; glibc 2.34 is enough) into
# .carry/ucx/debs, unpacks them with dpkg -x into .carry/ucx/root, and
# prints the LD_LIBRARY_PATH to use there. UCX finds its transport modules
# (libuct_*.so) in the ucx/ folder next to libucs, so nothing else is
# needed. Hardware verbs providers (ibverbs-providers) are left out: a
# cluster node brings its own; TCP and shared memory need none.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/.carry/ucx
pkgs=(libucx0 libibverbs1 librdmacm1 libnuma1 libnl-3-200 libnl-route-3-200)
rm -rf "$dest"
mkdir -p "$dest/debs" "$dest/root"
cd "$dest/debs"
if ! apt-get download "${pkgs[@]}" >/dev/null 2>&1; then
  # A fresh container has no package lists yet.
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo -n"
  $sudo_cmd apt-get update -qq
  apt-get download "${pkgs[@]}" >/dev/null
fi
for deb in ./*.deb; do
  dpkg -x "$deb" "$dest/root"
done
[ -n "$(find "$dest/root" -name 'libucp.so.0')" ] ||
  { echo "ucx-carry: libucp.so.0 not in the packages" >&2; exit 1; }
# Every folder that holds a library (libnl lands in /lib, the rest in
# /usr/lib), except UCX's module folder and rsocket's preload library.
dirs=$(cd "$dest/root" && find . -name 'lib*.so.*' -not -path '*/ucx/*' \
  -not -path '*/rsocket/*' -exec dirname {} \; | sort -u |
  sed "s|^\.|$dest/root|" | paste -sd: -)
echo "ucx-carry: unpacked $(ls "$dest/debs" | tr '\n' ' ')" >&2
echo "LD_LIBRARY_PATH=$dirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
