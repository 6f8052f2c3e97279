#!/usr/bin/env bash
# Installs a build tree into a fresh prefix and uses it as a stranger
# would: a C program linked three ways (CMake find_package with vmep::vmep
# and vmep::vmep_static, pkg-config shared, pkg-config static) must link
# and run; the installed tools must start from the prefix with no
# LD_LIBRARY_PATH (relative RUNPATH); the installed Python package must
# find the installed library.
set -u
build=${1:?usage: test_install.sh BUILD_DIR SOURCE_DIR}
src=${2:?}
here="$src/tests/install"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"
fail=0
say() { echo "$*"; }
bad() { echo "FAIL: $*"; fail=1; }

cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 || {
  cat "$tmp/install.log"; bad "cmake --install"; exit 1; }
libdir=$(dirname "$(find "$prefix" -name 'libvmep.so' | head -1)")
[ -f "$libdir/libvmep.a" ] || bad "no libvmep.a next to libvmep.so"
say "installed into $prefix (libdir ${libdir#"$prefix"/})"
unset LD_LIBRARY_PATH

# 1. The installed tools run from the prefix.
for tool in vmep-info vmep-run vmep-bench; do
  out=$("$prefix/bin/$tool" --version 2>&1) || bad "$tool --version: $out"
  case "$out" in "$tool "[0-9]*) ;; *) bad "$tool --version printed: $out" ;; esac
done
readelf -d "$prefix/bin/vmep-info" | grep -q 'RUNPATH.*\$ORIGIN' ||
  bad "vmep-info has no \$ORIGIN RUNPATH"
"$prefix/bin/vmep-run" -n 2 -- true || bad "installed vmep-run -n 2 -- true"

# 2. CMake: find_package(vmep CONFIG), shared and static.
if cmake -S "$here/consumer" -B "$tmp/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
     >"$tmp/cmake.log" 2>&1 && cmake --build "$tmp/cmake" >>"$tmp/cmake.log" 2>&1; then
  "$tmp/cmake/consumer_shared" || bad "find_package: consumer_shared"
  "$tmp/cmake/consumer_static" || bad "find_package: consumer_static"
  readelf -d "$tmp/cmake/consumer_static" | grep -q 'NEEDED.*libvmep' &&
    bad "consumer_static needs libvmep.so"
  readelf -d "$tmp/cmake/consumer_shared" | grep -q 'NEEDED.*libvmep\.so\.0' ||
    bad "consumer_shared does not need libvmep.so.0"
  [ "$fail" = 0 ] &&
    say "find_package(vmep CONFIG): vmep::vmep and vmep::vmep_static link and run"
else
  tail -30 "$tmp/cmake.log"; bad "find_package consumer did not build"
fi

# 3. pkg-config: shared, and static (vmep-static, and vmep --static).
export PKG_CONFIG_PATH="$libdir/pkgconfig"
cc=${CC:-cc}
# shellcheck disable=SC2046 # pkg-config's output is a list of flags
if $cc "$here/consumer/consumer.c" -o "$tmp/pc_shared" \
     $(pkg-config --cflags --libs vmep) 2>"$tmp/pc.log"; then
  LD_LIBRARY_PATH="$libdir" "$tmp/pc_shared" || bad "pkg-config vmep: run"
else
  cat "$tmp/pc.log"; bad "pkg-config vmep: link"
fi
# shellcheck disable=SC2046
if $cc "$here/consumer/consumer.c" -o "$tmp/pc_static" \
     $(pkg-config --cflags --libs vmep-static) 2>"$tmp/pc.log"; then
  "$tmp/pc_static" || bad "pkg-config vmep-static: run"
  readelf -d "$tmp/pc_static" | grep -q 'NEEDED.*libvmep' &&
    bad "pkg-config vmep-static: needs libvmep.so"
else
  cat "$tmp/pc.log"; bad "pkg-config vmep-static: link"
fi
# --static on vmep.pc lists what libvmep.a needs.
static_libs=$(pkg-config --static --libs vmep)
case "$static_libs" in *-lcudart_static*-lstdc++*) ;;
  *) bad "pkg-config --static --libs vmep lacks the CUDA runtime: $static_libs" ;;
esac
[ "$(pkg-config --modversion vmep)" = "$(pkg-config --modversion vmep-static)" ] ||
  bad "vmep.pc and vmep-static.pc disagree on the version"
[ "$fail" = 0 ] && say "pkg-config: vmep (shared) and vmep-static link and run"

# 4. The installed Python package loads the installed library.
py=/usr/bin/python3
if [ -x "$py" ]; then
  pydir=$(dirname "$(find "$prefix" -path '*/python/vmep/__init__.py' | head -1)")
  out=$(cd "$tmp" && env -u VMEP_LIBRARY PYTHONPATH="$(dirname "$pydir")" "$py" -c \
    "import vmep, sys; print(vmep.library_path()); sys.exit(0 if vmep.library_available() else 1)" 2>&1) ||
    bad "installed Python package: $out"
  case "$out" in "$prefix"/*) say "Python: vmep loads $out" ;;
    *) bad "installed Python package loaded another library: $out" ;; esac
fi

[ "$fail" = 0 ] || exit 1
say "install tree: tools, find_package, pkg-config and Python work"
