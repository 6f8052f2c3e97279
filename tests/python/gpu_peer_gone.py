"""GPU test 9: a peer that is gone. Every rank runs one exact round; then
the last rank leaves without destroying anything (os._exit, between
calls). The others go on: their next round masks it after the timeout
(error bit 2) and is exact over the ranks left, the round after that too,
with no error. Then rank 0 drops the buffer, so that __del__ releases it,
and the other ranks call destroy(): both must return (the launcher's time
limit fails a hang); destroy() may raise, naming the gone peer. Run without MPS
(scripts/gpu-python.sh): a process that leaves must not take the others'
contexts with it."""
import gc
import os
import time

import gpu_common as G
import vmep

T, H, K = 32, 1024, 4
TIMEOUT_MS = 2000


def body(seed):
    W, me, last = G.WORLD, G.RANK, G.WORLD - 1
    assert W >= 2, "needs 2 or more ranks"
    E = 4 * W
    mode = G.Mode()
    buf = vmep.Buffer(timeout_ms=TIMEOUT_MS)
    G.one_round(buf, seed, 0, T, H, E, K, mode, errors=(0, 0))
    buf.barrier()  # nobody is inside a call when the last rank goes
    if me == last:
        print(f"PASS gpu_peer_gone rank {me} (leaving without destroy)",
              flush=True)
        os._exit(0)
    live = set(range(last))
    G.one_round(buf, seed, 1, T, H, E, K, mode, live=live, errors=(2, 0))
    G.one_round(buf, seed, 2, T, H, E, K, mode, hook=False, live=live,
                errors=(0, 0))
    print(f"rank {me}: rank {last} gone, masked, two rounds exact",
          flush=True)
    start = time.monotonic()
    if me == 0:  # the buffer dropped: __del__ releases it
        del buf
        gc.collect()
        how = "__del__"
    else:
        how = "destroy()"
        try:
            buf.destroy()
        except vmep.Error as exc:  # the release may report the gone peer
            how += f" ({type(exc).__name__}: {exc})"
        buf.destroy()  # idempotent, also after a failed release
    print(f"rank {me}: {how} returned after "
          f"{time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    G.run("gpu_peer_gone", body)
