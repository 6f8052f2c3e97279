#!/usr/bin/env bash
# clang-format (the repo's .clang-format) must leave every C/CUDA file as is.
set -u
root=${1:?usage: test_format.sh REPO_DIR}
command -v clang-format >/dev/null || { echo "SKIP: clang-format not installed"; exit 77; }
cd "$root" || exit 1
files=$(git ls-files '*.c' '*.h' '*.cu' '*.cuh' 2>/dev/null || find include src tools tests -name '*.[ch]' -o -name '*.cu')
[ -n "$files" ] || { echo "no files"; exit 1; }
# shellcheck disable=SC2086
if ! clang-format --dry-run --Werror $files; then
  echo "run: clang-format -i \$(git ls-files '*.c' '*.h' '*.cu' '*.cuh')"
  exit 1
fi
echo "clang-format: $(echo "$files" | wc -l) files clean"
