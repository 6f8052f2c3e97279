#!/usr/bin/env bash
# The GPU tests of the Python package (tests/python/gpu_*.py), each under
# `vmep-run -n 2` and `-n 4` (ranks share the GPU under vmep-run's private
# MPS daemon, except gpu_peer_gone: without MPS) and `timeout`, without
# pytest: every rank prints PASS or FAIL.
# Logs under $OUT/python (or gpu-logs/python). Exits nonzero on any failure.
#   scripts/gpu-python.sh [BUILD_DIR]     (default build-gpu)
# Needs python3 with torch (CUDA); PYTHON overrides the interpreter, and
# GPU_PYTHON_TESTS="gpu_graph gpu_elastic" runs only the tests named.
set -uo pipefail
GPU_ENV_SUBDIR=python GPU_ENV_TARGETS="vmep vmep-run" source "$(dirname "$0")/gpu-env.sh"
py=${PYTHON:-python3}

export VMEP_LIBRARY="$build/src/libvmep.so"
export PYTHONPATH="$root/python:$root/tests/python${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c 'import torch, vmep; print("torch", torch.__version__, "cuda",
torch.version.cuda, "vmep", vmep.library_version(), vmep.library_path(),
"available", vmep.is_available())' 2>&1 | tee "$out/env.log"

status=0
summary=()
for ranks in 2 4; do
  for test in tests/python/gpu_*.py; do
    name=$(basename "$test" .py)
    [ "$name" = gpu_common ] && continue
    case " ${GPU_PYTHON_TESTS:-$name} " in *" $name "*) ;; *) continue ;; esac
    log="$out/$name-n$ranks.log"
    env=()
    mps=auto
    case $name in
      gpu_expandable) env=(PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True) ;;
      # A rank leaves: under MPS that could take the others down with it.
      gpu_peer_gone) mps=off ;;
    esac
    start=$(date +%s)
    env "${env[@]}" timeout -k 10 240 "$build/tools/vmep-run" -n "$ranks" \
      --mps "$mps" --timeout 230 -- "$py" "$test" >"$log" 2>&1
    rc=$?
    passes=$(grep -c "PASS $name" "$log")
    if [ "$rc" -eq 0 ] && [ "$passes" -eq "$ranks" ]; then
      verdict=PASS
    else
      verdict="FAIL (exit $rc, $passes of $ranks ranks passed)"
      status=1
      tail -25 "$log"
    fi
    line="$name -n $ranks: $verdict in $(($(date +%s) - start)) s"
    echo "$line"
    summary+=("$line")
  done
done
printf '%s\n' "== summary" "${summary[@]}" | tee "$out/summary.log"
exit "$status"
