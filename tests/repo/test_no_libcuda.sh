#!/usr/bin/env bash
# The library must load the CUDA driver at run time: no libcuda in its
# dependencies and no undefined driver (cu*) symbol, so it links and runs on
# machines without a GPU driver.
set -u
lib=${1:?usage: test_no_libcuda.sh LIBVMEP_SO}
bad=0
if readelf -d "$lib" | grep -E 'NEEDED.*libcuda'; then
  echo "$lib depends on libcuda"
  bad=1
fi
undefined=$(nm -D --undefined-only "$lib" | awk '{print $2}' | grep -E '^cu[A-Z]')
if [ -n "$undefined" ]; then
  echo "$lib has undefined driver symbols:"
  echo "$undefined"
  bad=1
fi
exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /[TDB]/ {print $3}' | grep -vE '^(vmep_|_init$|_fini$)')
if [ -n "$exported" ]; then
  echo "$lib exports symbols without the vmep_ prefix:"
  echo "$exported"
  bad=1
fi
[ $bad -eq 0 ] && echo "no libcuda dependency, no driver symbols, only vmep_ exports: ok"
exit $bad
