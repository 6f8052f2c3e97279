#!/usr/bin/env bash
# nccl-a2a's command line: each bad option or value exits 2 with one line
# naming it, --help exits 0; then a valid run exits 77 saying why when there is no
# GPU (so CTest skips this test on a GPU-less machine after the checks).
set -u
bin=${1:?usage: test_nccl_args.sh NCCL_A2A}
fail=0
bad() {
  out=$("$bin" "$@" 2>&1); rc=$?
  if [ "$rc" != 2 ] || [ "$(wc -l <<<"$out")" != 1 ] ||
     ! grep -q "^nccl-a2a: .*\(--\|argument\)" <<<"$out"; then
    echo "FAIL: nccl-a2a $* gave $rc: $out"; fail=1
  fi
}
bad --bogus
bad --tokens 0
bad --tokens 128,x
bad --hidden 100
bad --hidden 1000
bad --topk 17
bad --iters 0
bad --experts
bad --experts 4          # below top-k 8: each token needs K distinct experts
bad --topk 4 --experts 3
bad stray
"$bin" --help >/dev/null || { echo "FAIL: --help"; fail=1; }
[ "$fail" = 0 ] || exit 1
echo "usage errors: exit 2 with a message"
# No device visible, on any machine: the program must say so and exit 77.
out=$(CUDA_VISIBLE_DEVICES= "$bin" --tokens 8 --hidden 128 --iters 2 \
  --warmup 1 2>&1); rc=$?
echo "$out"
if [ "$rc" = 77 ]; then
  grep -q "no GPU" <<<"$out" || { echo "FAIL: 77 without a reason"; exit 1; }
  exit 77
fi
exit "$rc"
