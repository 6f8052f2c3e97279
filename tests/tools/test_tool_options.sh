#!/usr/bin/env bash
# Every tool's command line, as the README promises: --help on stdout with
# exit 0, --version printing "NAME VERSION", and every bad option or value
# refused up front with exit 2 and exactly one line on stderr that names
# the option (no usage dump); vmep-bench's valid mode combinations get past
# the command line (to its GPU probe, with no GPU visible). Then the
# environment: an invalid VMEP_*
# value makes vmep-info (and --config) exit 1 naming the variable, the
# value and what is allowed, once; vmep-info's line on how nodes are
# decided (VMEP_NODES).
# usage: test_tool_options.sh VERSION VMEP_INFO VMEP_RUN VMEP_BENCH [NCCL_A2A]
set -u
version=${1:?usage: test_tool_options.sh VERSION VMEP_INFO VMEP_RUN VMEP_BENCH [NCCL_A2A]}
info=${2:?}; run=${3:?}; bench=${4:?}; nccl=${5:-}
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# good BIN NAME: --help and --version.
good() {
  local bin=$1 name=$2
  "$bin" --help >"$tmp/out" 2>"$tmp/err"; rc=$?
  { [ "$rc" = 0 ] && [ ! -s "$tmp/err" ] && grep -q "usage: $name" "$tmp/out"; } ||
    { echo "FAIL: $name --help: exit $rc, stderr: $(cat "$tmp/err")"; fail=1; }
  out=$("$bin" --version 2>&1); rc=$?
  [ "$rc" = 0 ] && [ "$out" = "$name $version" ] ||
    { echo "FAIL: $name --version: exit $rc: $out"; fail=1; }
}

# bad BIN NAME WORD ARGS...: exit 2, one stderr line "NAME: ..." with WORD.
bad() {
  local bin=$1 name=$2 word=$3
  shift 3
  "$bin" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null; rc=$?
  lines=$(wc -l <"$tmp/err")
  if [ "$rc" != 2 ] || [ "$lines" != 1 ] || ! grep -q "^$name: " "$tmp/err" ||
     ! grep -qF -- "$word" "$tmp/err" || [ -s "$tmp/out" ]; then
    echo "FAIL: $name $*: exit $rc, $lines stderr lines (want 2, 1 naming $word):"
    cat "$tmp/err" "$tmp/out"; fail=1
  fi
}

good "$info" vmep-info
bad "$info" vmep-info --bogus --bogus
bad "$info" vmep-info -x -x
bad "$info" vmep-info stray --config stray

good "$run" vmep-run
bad "$run" vmep-run --bogus --bogus -n 1 -- true
bad "$run" vmep-run -n -n abc -- true
bad "$run" vmep-run -n -n 0 -- true
bad "$run" vmep-run --mps --mps maybe -n 1 -- true
bad "$run" vmep-run --gpus --gpus 0,,1 -n 1 -- true
bad "$run" vmep-run --timeout --timeout -1 -n 1 -- true
bad "$run" vmep-run PROGRAM -n 1

for pair in "$bench vmep-bench" ${nccl:+"$nccl nccl-a2a"}; do
  bin=${pair% *}; name=${pair##* }
  good "$bin" "$name"
  bad "$bin" "$name" --bogus --bogus
  bad "$bin" "$name" --hidden --hidden 200        # not a multiple of 128
  bad "$bin" "$name" --hidden --hidden abc
  bad "$bin" "$name" --seed --seed abc
  bad "$bin" "$name" --seed --seed -1
  bad "$bin" "$name" --tokens --tokens 128,,512
  bad "$bin" "$name" --tokens --tokens 128,
  bad "$bin" "$name" --tokens --tokens 0
  bad "$bin" "$name" --topk --topk 17
  bad "$bin" "$name" --iters --iters 1x
  bad "$bin" "$name" --warmup --warmup
  bad "$bin" "$name" --experts --experts 4        # below top-k 8
done
bad "$bench" vmep-bench --ranks --ranks 0
bad "$bench" vmep-bench --num-sms --num-sms ''
bad "$bench" vmep-bench --compare --compare mpi
bad "$bench" vmep-bench --nodes --nodes 0
bad "$bench" vmep-bench --nodes --nodes two
"$bench" --help | grep -q -- "--nodes N" ||
  { echo "FAIL: vmep-bench --help does not list --nodes"; fail=1; }
# --mode: ll or ht; what one mode cannot do is refused with the other,
# whatever the order of the options.
bad "$bench" vmep-bench --mode --mode
bad "$bench" vmep-bench --mode --mode fast
bad "$bench" vmep-bench --mode --mode HT
bad "$bench" vmep-bench --compare --mode ht --compare nccl
bad "$bench" vmep-bench --cached --cached
bad "$bench" vmep-bench --cached --mode ll --cached
bad "$bench" vmep-bench --tokens --mode ht --tokens 0
for word in "--mode ll|ht" "--cached"; do
  "$bench" --help | grep -qF -- "$word" ||
    { echo "FAIL: vmep-bench --help does not list $word"; fail=1; }
done

# accepted ARGS...: the command line passes; with no GPU visible (and no
# launcher's variables) vmep-bench then stops at its GPU probe: exit 1 and
# one stderr line saying so, never a usage error (2).
accepted() {
  env -u VMEP_RANK -u RANK -u OMPI_COMM_WORLD_RANK -u SLURM_PROCID \
    CUDA_VISIBLE_DEVICES= "$bench" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
  rc=$?
  if [ "$rc" != 1 ] || ! grep -q "^vmep-bench: no GPU" "$tmp/err"; then
    echo "FAIL: vmep-bench $*: exit $rc, want 1 at the GPU probe:"
    cat "$tmp/err" "$tmp/out"; fail=1
  fi
}
accepted --mode ht
accepted --mode ht --fp8 --cached --check --tokens 64,128 --json "$tmp/ht.json"
accepted --fp8 --mode ht --round-scale --nodes 1 --experts 32
accepted --mode ht --nodes 2 --cached --zero-copy
accepted --mode ll --zero-copy
accepted --mode ht --mode ll --zero-copy
accepted --mode ht --zero-copy --check
accepted --zero-copy --mode ht --fp8 --cached
[ -z "$nccl" ] || bad "$nccl" nccl-a2a stray stray

# The environment: each invalid value named, with what is allowed, once.
env_bad() {
  local var=$1 value=$2 allowed=$3
  env "$var=$value" "$info" --config >"$tmp/out" 2>"$tmp/err"; rc=$?
  if [ "$rc" != 1 ] || ! grep -q "^$var .*INVALID: expected $allowed" "$tmp/out" ||
     [ "$(grep -c "$var=\"$value\": expected $allowed" "$tmp/err")" != 1 ]; then
    echo "FAIL: $var=$value vmep-info --config: exit $rc"; cat "$tmp/err"; fail=1
  fi
  env "$var=$value" "$info" >"$tmp/out" 2>"$tmp/err"; rc=$?
  if [ "$rc" != 1 ] || [ "$(grep -c "$var" "$tmp/err")" != 1 ]; then
    echo "FAIL: $var=$value vmep-info: exit $rc, want 1 and one line:"
    cat "$tmp/err"; fail=1
  fi
}
env_bad VMEP_LOG bogus "one of error|warn|info|debug"
env_bad VMEP_MEM_SHARE nonsense "one of auto|fabric|posix_fd|legacy"
env_bad VMEP_TIMEOUT_MS -1 "an integer in 1..2147483647"
env_bad VMEP_TIMEOUT_MS abc "an integer in 1..2147483647"
env_bad VMEP_DEVICE 0x1 "an integer in 0..2147483647"
env_bad VMEP_NODES -1 "an integer in 0..65536"
env_bad VMEP_NODES two "an integer in 0..65536"

# How nodes are decided: host identity, or pretend nodes (and under a
# launcher, this rank's).
env -u VMEP_NODES "$info" 2>/dev/null | grep -qx "nodes: from host identity" ||
  { echo "FAIL: vmep-info without VMEP_NODES"; fail=1; }
VMEP_NODES=2 VMEP_RANK=3 VMEP_WORLD_SIZE=4 "$info" 2>/dev/null |
  grep -qx "nodes: 2 pretend nodes (VMEP_NODES); rank 3 of 4 is in node 1" ||
  { echo "FAIL: vmep-info with VMEP_NODES=2"; fail=1; }
VMEP_LOG=debug VMEP_TIMEOUT_MS=5000 "$info" --config >/dev/null 2>&1 ||
  { echo "FAIL: valid values refused by vmep-info --config"; fail=1; }

[ "$fail" = 0 ] || exit 1
echo "tools: --help, --version, one-line usage errors; invalid environment reported"
