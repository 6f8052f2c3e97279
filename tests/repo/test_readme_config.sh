#!/usr/bin/env bash
# Every environment variable vmep reads (vmep-info --config) has a row in
# README.md's table, and the table names no variable vmep does not read.
set -u
info=${1:?usage: test_readme_config.sh VMEP_INFO README}
readme=${2:?}
names=$("$info" --config | awk '/^VMEP_/ {print $1}' | sort)
[ -n "$names" ] || { echo "vmep-info --config printed no variables"; exit 1; }
documented=$(grep -oE '^\| *`VMEP_[A-Z_]+`' "$readme" | grep -oE 'VMEP_[A-Z_]+' | sort)
missing=$(comm -23 <(echo "$names") <(echo "$documented"))
extra=$(comm -13 <(echo "$names") <(echo "$documented"))
[ -z "$missing" ] || echo "README.md lacks rows for: $missing"
[ -z "$extra" ] || echo "README.md documents unknown variables: $extra"
[ -z "$missing$extra" ] || exit 1
echo "README config table matches vmep-info --config ($(echo "$names" | wc -l) variables)"
