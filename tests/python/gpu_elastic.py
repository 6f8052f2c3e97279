"""GPU test 8: the elastic methods on a static vmep-run group (vmep's own
store backs it, so membership can change). All ranks exact (round A); masks
set, queried, cleaned and refused; the last rank dropped while alive: ranks
0..W-2 go on among themselves and the last rank alone, both exact against
the reference with the other side masked (round B, two calls: both buffer
parities); everybody connected again as themselves, exact (round C, two
calls); destroy. Every call's outputs start poisoned (NaN) and every
element is checked.

Syncs: Buffer.barrier() is over the connected set, so it is called only
while every rank's set is all W ranks (before the drop and after the
reconnect), never while the sides differ. No barrier is needed inside the
split: disconnect_ranks is local, and each rank disconnects before its own
round B. A barrier on one side of the split would also be unsafe: a side
could then publish two store syncs (that barrier, then the reconnect) ahead
of a rank of the other side that is still reading the first barrier's."""
import torch

import gpu_common as G
import vmep

T, H, K = 64, 1024, 4


def query(buf):
    got = buf.query_mask_buffer(torch.full((G.WORLD,), -7, dtype=torch.int32))
    return got.tolist()


def expect_mask(buf, expected, what):
    got = query(buf)
    assert got == expected, f"{what}: mask {got}, expected {expected}"
    # Any device: a CUDA tensor is filled alike.
    dev = buf.query_mask_buffer(
        torch.full((G.WORLD,), -7, dtype=torch.int32, device="cuda"))
    assert dev.cpu().tolist() == expected, f"{what}: CUDA mask {dev}"


def refused(fn, exc_type, words, what):
    try:
        fn()
    except exc_type as exc:
        assert words in str(exc), f"{what}: {exc}"
        return exc
    raise AssertionError(f"{what} was accepted")


def body(seed):
    W, me, last = G.WORLD, G.RANK, G.WORLD - 1
    assert W >= 2, "needs 2 or more ranks"
    E = 4 * W
    everyone = set(range(W))
    zeros = [0] * W
    # timeout_ms: a kernel waiting for a rank it should not wait for masks
    # it after about a minute (error bit 2, checked), not after
    # VMEP_TIMEOUT_MS (300 s), past the script's 240 s.
    buf = vmep.Buffer(explicitly_destroy=True, timeout_ms=60000,
                      num_max_dispatch_tokens_per_rank=T, hidden=H,
                      num_experts=E, num_topk=K)
    assert buf.rank == me and buf.group_size == W, (buf.rank, buf.group_size)
    assert buf.num_local_experts == E // W  # the EP buffer exists already
    expect_mask(buf, zeros, "at construction")
    full = [T] * W
    ragged = [T - 3 * r - 1 for r in range(W)]

    # 1. round A: everybody.
    G.one_round(buf, seed, 0, T, H, E, K, G.Mode(), full, hook=False,
                live=everyone, errors=(0, 0))
    print(f"rank {me} step A: exact", flush=True)

    # 2. masks: set, query, unset, clean; refusals.
    other = (me + 1) % W
    buf.update_mask_buffer(other, True)
    expect_mask(buf, [int(r == other) for r in range(W)], f"mask {other}")
    buf.update_mask_buffer(other, False)
    expect_mask(buf, zeros, f"unmask {other}")
    for r in range(W):
        if r != me:
            buf.low_latency_update_mask_buffer(r, True)  # DeepEP's name
    expect_mask(buf, [int(r != me) for r in range(W)], "all others masked")
    buf.clean_mask_buffer()
    expect_mask(buf, zeros, "after clean_mask_buffer")
    refused(lambda: buf.update_mask_buffer(me, True), ValueError,
            "is this rank", "masking this rank")
    for bad in (W, -1):
        refused(lambda: buf.update_mask_buffer(bad, True), ValueError,
                "out of range", f"masking rank {bad}")
    expect_mask(buf, zeros, "after the refusals")
    print(f"rank {me} step masks: exact", flush=True)

    # Nobody is in a call when the membership changes.
    buf.barrier()

    # 3. the last rank dropped, alive: two sides.
    if me != last:
        side, gone = everyone - {last}, [last]
    else:
        side, gone = {last}, sorted(everyone - {last})
    buf.disconnect_ranks(gone)
    outside = [int(r not in side) for r in range(W)]
    expect_mask(buf, outside, "after disconnect_ranks")
    buf.disconnect_ranks(gone)  # not connected any more: a no-op
    buf.clean_mask_buffer()  # unmasks connected ranks only
    expect_mask(buf, outside, "clean_mask_buffer after disconnect_ranks")
    exc = refused(lambda: buf.update_mask_buffer(gone[0], False), vmep.Error,
                  "not connected", f"unmasking disconnected rank {gone[0]}")
    assert exc.status_name == "VMEP_ERR_INVALID_ARG", exc
    expect_mask(buf, outside, "after the refused unmask")
    G.one_round(buf, seed, 1, T, H, E, K, G.Mode(), full, hook=True,
                live=side, errors=(0, 0))
    G.one_round(buf, seed, 2, T, H, E, K, G.Mode(), ragged, hook=False,
                live=side, errors=(0, 0))
    print(f"rank {me} step B (" + (f"rank {last} alone" if me == last else
                                   f"without rank {last}") + "): exact",
          flush=True)

    # 4. everybody connected again, as the same processes.
    buf.connect_ranks(gone, activate=True)
    expect_mask(buf, zeros, "after connect_ranks")
    G.one_round(buf, seed, 3, T, H, E, K, G.Mode(), ragged, hook=True,
                live=everyone, errors=(0, 0))
    G.one_round(buf, seed, 4, T, H, E, K, G.Mode(), full, hook=False,
                live=everyone, errors=(0, 0))
    print(f"rank {me} step C: exact", flush=True)
    buf.barrier()

    # 5. destroy on every rank (idempotent).
    buf.destroy()
    buf.destroy()
    print(f"rank {me} step destroy: exact", flush=True)


if __name__ == "__main__":
    G.run("gpu_elastic", body)
