#!/usr/bin/env bash
# Fails on any #include that reaches up the layer stack (DESIGN.md section 1):
# core <- driver <- mem <- sym <- ep, core <- boot <- sym, kernels below ep.
# boot moves bytes and fds and never includes mem or driver; sym (symmetric
# memory) is the one place where mem and boot meet.
set -u
src=${1:?usage: test_layering.sh SRC_DIR}
declare -A forbidden=(
  [core]="driver mem boot sym ep kernels"
  [driver]="mem boot sym ep kernels"
  [mem]="boot sym ep kernels"
  [boot]="driver mem sym ep kernels"
  [sym]="ep kernels"
  [kernels]="driver mem boot sym ep"
  [ep]=""
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
# Public header: nothing private may leak into it.
if grep -nE '#include +"(core|driver|mem|boot|sym|ep|kernels)/' "$src/../include/vmep.h"; then
  echo "include/vmep.h includes a private header"
  bad=1
fi
[ $bad -eq 0 ] && echo "layering: ok"
exit $bad
