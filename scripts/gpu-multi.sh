#!/usr/bin/env bash
# Issue 6 on a machine with one GPU per rank (2, 4 or 8 GPUs), in one call:
# the topology, vmep-info, the multi-rank GPU tests with the ranks spread
# over the GPUs, the NCCL baseline's own check, and the vmep-bench sweeps
# (T = 128 .. 4096; 32 and 4 experts per rank; bf16, fp8 and zero-copy)
# with --compare nccl, as JSON and logs under $OUT (or ./gpu-logs).
# Expects the build folder made elsewhere (default build-gpu) and carried.
set -uo pipefail
source "$(dirname "$0")/gpu-env.sh"
export NCCL_NVLS_ENABLE=0
status=0

gpus=$(nvidia-smi -L | wc -l)
{
  echo "== $(date -u +%FT%TZ) $(hostname), $gpus GPUs"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvidia-smi topo -m
  "$build/tools/vmep-info"
} > "$out/vmep-info.log" 2>&1
cat "$out/vmep-info.log"

(cd "$build" && ctest -R '^test_(ep|window)' --output-on-failure --timeout 300) \
  > "$out/ctest-multi.log" 2>&1 || status=1
grep -E "tests passed|tests failed|Failed|Passed" "$out/ctest-multi.log"

# The NCCL baseline's check, one rank per GPU, then one rank alone.
for n in "$gpus" 1; do
  NCCL_DEBUG=WARN NCCL_DEBUG_FILE="$out/nccl-check-$n.%h.%p.log" \
    timeout 120 stdbuf -o0 -e0 "$build/tools/vmep-run" -n "$n" -- \
    "$build/bench/nccl-a2a" --check --tokens 64 --hidden 1024 \
    > "$out/nccl-check-$n.log" 2>&1
  echo "nccl-a2a --check with $n ranks: exit $?"
  tail -5 "$out/nccl-check-$n.log"
done

bench="$build/tools/vmep-bench"
sweep=128,512,1024,2048,4096
timeout 300 "$bench" --ranks "$gpus" --check --compare nccl \
  > "$out/bench-default.log" 2>&1 || status=1
# 32 experts per rank in every mode; 4 per rank in bf16 (GPU_MULTI_FULL=1:
# every mode for both).
for per in 32 4; do
  e=$((per * gpus))
  modes="bf16 fp8 zc"
  [ "$per" = 4 ] && [ "${GPU_MULTI_FULL:-0}" != 1 ] && modes=bf16
  for mode in $modes; do
    case $mode in fp8) flag=--fp8 ;; zc) flag=--zero-copy ;; *) flag= ;; esac
    name=bench-e$per-$mode
    timeout 300 "$bench" --ranks "$gpus" --experts $e $flag --tokens $sweep \
      --iters 50 --compare nccl --json "$out/$name.json" \
      > "$out/$name.log" 2>&1 || status=1
    echo "== $name"; grep -A20 "summary" "$out/$name.log" | sed 's/^\[rank 0\] //'
  done
done
# The device returns few files: pack the logs into one archive.
tar -C "$out" -czf /tmp/gpu-multi-logs.tgz . && mv /tmp/gpu-multi-logs.tgz "$out/" \
  && find "$out" -type f ! -name gpu-multi-logs.tgz ! -name '*.json' -delete
exit "$status"
