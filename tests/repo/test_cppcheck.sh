#!/usr/bin/env bash
# cppcheck over the library and tools: any warning fails.
set -u
root=${1:?usage: test_cppcheck.sh REPO_DIR}
command -v cppcheck >/dev/null || { echo "SKIP: cppcheck not installed"; exit 77; }
cd "$root" || exit 1
cppcheck --error-exitcode=1 --enable=warning,style,performance,portability \
  --inline-suppr --quiet --std=c11 -D__GNUC__ -D_GNU_SOURCE \
  --suppress=missingIncludeSystem -I include -I src src tools || exit 1
echo "cppcheck: clean"
