"""GPU test 10: NIXL EP's setup over a torch Store (tcp_store_group): the
W processes make Buffer(rank=r, tcp_store_group=store), then
update_memory_buffers(R, L) with a capacity R = W + 2 above the processes
there, then connect_ranks(range(W)). Masks set before that are kept; the
ranks W..R-1 stay masked, so every selection of their experts counts as
zero. Rounds in bf16 and fp8, ragged and with n = 0, exact against the
reference over the W ranks; connecting a rank past W raises (growing needs
vmep's store); destroy, after which no group is made again."""
import os
import tempfile

import torch
import torch.distributed as dist

import gpu_common as G
import vmep

T, H, K, L = 32, 1024, 4, 2


def expect(buf, mask, when):
    got = buf.query_mask_buffer(
        torch.zeros(len(mask), dtype=torch.int32)).tolist()
    assert got == mask, f"{when}: mask {got}, expected {mask}"


def body(seed):
    W, me = G.WORLD, G.RANK
    R = W + 2
    E = R * L
    path = os.path.join(tempfile.gettempdir(), "vmep-py-" + os.environ.get(
        "VMEP_JOB_ID", "job").replace("/", "_") + "-tcp-store")
    store = dist.FileStore(path, W)
    buf = vmep.Buffer(rank=me, tcp_store_group=store, explicitly_destroy=True,
                      num_max_dispatch_tokens_per_rank=T, hidden=H)
    buf.update_memory_buffers(R, L, 0)
    assert buf.group_size == R and buf._group is None, "a group too soon"
    other, unused = (me + 1) % W, W  # unused: in the capacity, never here
    expect(buf, [int(r != me) for r in range(R)], "before connect_ranks")
    buf.update_mask_buffer(unused, True)  # kept, then dropped
    buf.clean_mask_buffer()
    buf.update_mask_buffer(other, True)  # kept until the EP buffer exists
    expect(buf, [int(r != me) for r in range(R)], "with a kept mask")
    buf.connect_ranks(range(W))
    after = [int(r >= W) for r in range(R)]
    expect(buf, [int(m or r == other) for r, m in enumerate(after)],
           "after connect_ranks, the kept mask set")
    buf.update_mask_buffer(other, False)
    expect(buf, after, "after connect_ranks and unmasking")
    assert buf.num_local_experts == L
    live = set(range(W))
    rnd = G.shared_random(seed, "tcp_store")
    for round_, mode in enumerate([G.Mode(), G.Mode(fp8=True), G.Mode()]):
        sizes = [rnd.randint(0, T) for _ in range(W)]
        G.one_round(buf, seed, round_, T, H, E, K, mode, sizes, live=live,
                    errors=(0, 0))
        print(f"rank {me} round {round_} {mode} sizes {sizes}: exact",
              flush=True)
    try:
        buf.connect_ranks([W])
        raise AssertionError("a rank past the tcp_store_group's was connected")
    except vmep.Error as exc:
        assert "not in this buffer's group" in str(exc), exc
    buf.barrier()
    buf.destroy()
    buf.destroy()
    try:
        buf.connect_ranks(range(W))
        raise AssertionError("a destroyed buffer made a group again")
    except vmep.Error as exc:
        assert "destroyed" in str(exc), exc


if __name__ == "__main__":
    G.run("gpu_tcp_store", body)
