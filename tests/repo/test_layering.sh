#!/usr/bin/env bash
# Fails on any #include that reaches up the layer stack (README.md, "Layout"):
# core <- driver <- mem <- sym <- ep, core <- store <- boot <- sym, kernels
# below ep, core <- net (the RDMA engine, core only) <- sym, ep. boot moves
# bytes and fds and never includes mem or driver; sym (symmetric memory) is
# the one place where mem and boot meet. The store's header (wire format,
# tables, server) is private to store and boot: upper layers reach the store
# only through boot/boot.h, which must not include it.
set -u
src=${1:?usage: test_layering.sh SRC_DIR}
declare -A forbidden=(
  [core]="driver mem store boot sym ep kernels net"
  [driver]="mem store boot sym ep kernels net"
  [mem]="store boot sym ep kernels net"
  [store]="driver mem boot sym ep kernels net"
  [boot]="driver mem sym ep kernels net"
  [net]="driver mem store boot sym ep kernels"
  [sym]="store ep kernels"
  [kernels]="driver mem store boot sym ep net"
  [ep]="store"
)
bad=0
for layer in "${!forbidden[@]}"; do
  [ -d "$src/$layer" ] || continue
  for above in ${forbidden[$layer]}; do
    hits=$(grep -rnE "#include +\"$above/" "$src/$layer" 2>/dev/null)
    if [ -n "$hits" ]; then
      echo "layering violation: $layer includes $above:"
      echo "$hits"
      bad=1
    fi
  done
done
# boot.h is what upper layers include: the store's internals stay out of it.
if grep -nE '#include +"store/' "$src/boot/boot.h"; then
  echo "boot/boot.h includes the store's private header"
  bad=1
fi
# The group's and membership's insides (boot/group.h, boot/member.h) stay
# inside boot.
if grep -rnE '#include +"boot/(group|member).h"' "$src" --include='*.[ch]' --include='*.cu*' | grep -v "^$src/boot/"; then
  echo "a boot-private header is included outside src/boot"
  bad=1
fi
# Public header: nothing private may leak into it.
if grep -nE '#include +"(core|driver|mem|store|boot|sym|ep|kernels|net)/' "$src/../include/vmep.h"; then
  echo "include/vmep.h includes a private header"
  bad=1
fi
[ $bad -eq 0 ] && echo "layering: ok"
exit $bad
