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
import copy

import torch

import gpu_common as G
import vmep

T, H, K = 64, 1024, 4


def restrict(ins, live, E):
    """The inputs as the ranks in `live` see them: a rank outside `live`
    sends nothing (all its selections -1), and a selection of an expert
    whose rank is outside `live` counts as zero (-1). With these, the
    unchanged G.check_dispatch / G.check_combine check the masked rule."""
    L = E // G.WORLD
    alive = torch.zeros(G.WORLD, dtype=torch.bool)
    alive[sorted(live)] = True
    out = []
    for s, inp in enumerate(ins):
        c = copy.copy(inp)
        if s in live:
            owner = inp.topk.clamp_min(0) // L
            keep = (inp.topk >= 0) & alive[owner]
            c.topk = torch.where(keep, inp.topk, torch.full_like(inp.topk, -1))
        else:
            c.topk = torch.full_like(inp.topk, -1)
        out.append(c)
    return out


def masked_round(buf, seed, round_, E, live, sizes, hook):
    """dispatch -> expert -> combine(out=) of this rank's bf16 inputs (the
    unrestricted ones: the library must drop what the mask drops), checked
    against the reference over `live`; the error word stays clear."""
    mode = G.Mode()
    full = G.all_inputs(seed, round_, sizes, H, E, K)
    ins = restrict(full, live, E)
    x, topk, w = G.to_cuda(full[G.RANK])
    G.poison_cache()
    recv, count, handle, _, rhook = buf.low_latency_dispatch(
        x, topk, T, E, use_fp8=False, return_recv_hook=hook)
    assert (rhook is not None) == hook
    if hook:
        rhook()
    G.check_dispatch(ins, T, E, recv, count, handle, mode)
    eo = G.expert_compute(recv, E, mode)
    out = torch.full((sizes[G.RANK], H), float("nan"), dtype=torch.bfloat16,
                     device="cuda")
    combined, _, chook = buf.low_latency_combine(
        eo, topk, w, handle, return_recv_hook=hook, out=out)
    assert combined is out
    if hook:
        chook()
    G.check_combine(ins, combined, E, mode)
    errors = buf.poll_errors()
    assert errors == (0, 0), f"poll_errors {errors} after round {round_}"


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
    masked_round(buf, seed, 0, E, everyone, full, hook=False)
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
    masked_round(buf, seed, 1, E, side, full, hook=True)
    masked_round(buf, seed, 2, E, side, ragged, hook=False)
    print(f"rank {me} step B (" + (f"rank {last} alone" if me == last else
                                   f"without rank {last}") + "): exact",
          flush=True)

    # 4. everybody connected again, as the same processes.
    buf.connect_ranks(gone, activate=True)
    expect_mask(buf, zeros, "after connect_ranks")
    masked_round(buf, seed, 3, E, everyone, ragged, hook=True)
    masked_round(buf, seed, 4, E, everyone, full, hook=False)
    print(f"rank {me} step C: exact", flush=True)
    buf.barrier()

    # 5. destroy on every rank (idempotent).
    buf.destroy()
    buf.destroy()
    print(f"rank {me} step destroy: exact", flush=True)


if __name__ == "__main__":
    G.run("gpu_elastic", body)
