"""GPU test 1: the call sequence an engine's DeepEP low-latency
prepare/finalize makes, on a torch.distributed (gloo) group: dispatch with
return_recv_hook=True, hook, expert computation, combine with out=, hook;
in bf16, fp8, fp8 with power-of-two scales and UE8M0; then async_finish,
the zero-copy combine buffer, the EPLB statistics, the wait-cost
statistics with late ranks, a LogFMT combine (use_logfmt=True) within its
bound, a handle rebuilt as a plain tuple, and combines reduced at the
expert side (dispatch given topk_weights) against their fmaf / bf16
reference."""
import os
import tempfile
import time

import torch
import torch.distributed as dist

import gpu_common as G
import vmep


def body(seed):
    store = os.path.join(tempfile.gettempdir(), "vmep-py-" + os.environ.get(
        "VMEP_JOB_ID", "job").replace("/", "_") + "-compat")
    dist.init_process_group("gloo", init_method=f"file://{store}",
                            rank=G.RANK, world_size=G.WORLD)
    group = dist.new_group(list(range(G.WORLD)))
    T, H, K = 64, 2048, 8
    E = 4 * G.WORLD
    L = E // G.WORLD
    hint = vmep.Buffer.get_low_latency_rdma_size_hint(T, H, G.WORLD, E)
    buf = vmep.Buffer(group, 0, hint, low_latency_mode=True,
                      num_qps_per_rank=L,
                      allow_nvlink_for_low_latency_mode=True,
                      explicitly_destroy=True)
    assert (buf.rank, buf.group_size) == (G.RANK, G.WORLD)
    stats = torch.zeros(L, dtype=torch.int32, device="cuda")
    expected = torch.zeros(L, dtype=torch.int32)
    modes = [G.Mode(), G.Mode(fp8=True), G.Mode(fp8=True, round_scale=True),
             G.Mode(fp8=True, round_scale=True, ue8m0=True)]
    rnd = G.shared_random(seed, "compat")
    for round_ in range(8):
        mode = modes[round_ % len(modes)]
        sizes = [rnd.randint(1, T) for _ in range(G.WORLD)]
        count = G.one_round(buf, seed, round_, T, H, E, K, mode, sizes,
                            stats=stats)
        expected += count.cpu()
        print(f"rank {G.RANK} round {round_} {mode}: exact", flush=True)
    assert torch.equal(stats.cpu(), expected), "EPLB statistics differ"
    # async_finish: the comm stream, an event, inputs kept alive
    ins = G.all_inputs(seed, 100, [T] * G.WORLD, H, E, K)
    x, topk, w = G.to_cuda(ins[G.RANK])
    recv, count, handle, event, hook = buf.low_latency_dispatch(
        x, topk, T, E, use_fp8=False, async_finish=True)
    assert hook is None and event.event is not None
    event.current_stream_wait()
    G.check_dispatch(ins, T, E, recv, count, handle, G.Mode())
    eo = G.expert_compute(recv, E, G.Mode())
    # a plain tuple of the handle's parts, as DeepEP's handle is
    out, event, hook = buf.low_latency_combine(eo, topk, w, tuple(handle),
                                               async_finish=True)
    with event:
        pass
    G.check_combine(ins, out, E, G.Mode())
    # wait-cost statistics ([R, R] as DeepEP documents them: its first R
    # elements gain the ns waited per rank): the odd ranks come late to
    # dispatch and to combine; every even rank's counters charge each odd
    # rank at least half of that, and each even rank less.
    R = G.WORLD
    waits = [torch.randint(0, 1 << 40, (R, R), dtype=torch.int64,
                           device="cuda") for _ in range(2)]
    bases = [t.clone() for t in waits]
    ins = G.all_inputs(seed, 200, [T] * G.WORLD, H, E, K)
    x, topk, w = G.to_cuda(ins[G.RANK])
    late_s = 0.5

    def line_up():
        torch.cuda.synchronize()
        dist.barrier(group)
        if G.RANK % 2:
            time.sleep(late_s)

    line_up()
    recv, count, handle, _, _ = buf.low_latency_dispatch(
        x, topk, T, E, dispatch_wait_recv_cost_stats=waits[0], use_fp8=False)
    torch.cuda.synchronize()
    G.check_dispatch(ins, T, E, recv, count, handle, G.Mode())
    eo = G.expert_compute(recv, E, G.Mode())
    line_up()
    out, _, _ = buf.low_latency_combine(eo, topk, w, handle,
                                        combine_wait_recv_cost_stats=waits[1])
    torch.cuda.synchronize()
    G.check_combine(ins, out, E, G.Mode())
    for name, got, base in zip(("dispatch", "combine"), waits, bases):
        grew = (got - base).cpu()
        assert (grew >= 0).all() and (grew[1:] == 0).all(), \
            f"{name} wait counters: {grew.tolist()}"
        if G.RANK % 2 == 0:
            late = (grew[0] >= late_s * 1e9 / 2).tolist()
            assert late == [bool(r % 2) for r in range(R)], \
                f"{name}: waited {grew[0].tolist()} ns"
        print(f"rank {G.RANK} {name} waits (ms): "
              f"{[round(v / 1e6, 1) for v in grew[0].tolist()]}", flush=True)
    # zero-copy: experts write into get_next_low_latency_combine_buffer
    G.one_round(buf, seed, 101, T, H, E, K, G.Mode(), zero_copy=True)
    # LogFMT: within its bound of the fp32 sum, with and without a hook
    G.one_round(buf, seed, 102, T, H, E, K, G.Mode(), logfmt=True)
    G.one_round(buf, seed, 103, T, H, E, K, G.Mode(), hook=False, logfmt=True)
    # Reduced at the expert side: the combine passed the dispatch's own
    # weights, or None (no hook, fp8, the last rank without tokens passes
    # no weights: a round of mixed ranks).
    G.one_round(buf, seed, 104, T, H, E, K, G.Mode(), reduced=True)
    G.one_round(buf, seed, 105, T, H, E, K, G.Mode(fp8=True),
                [T] * (G.WORLD - 1) + [0], hook=False, reduced=True,
                weights_again=False)
    buf.destroy()
    buf.destroy()
    dist.destroy_process_group()


if __name__ == "__main__":
    G.run("gpu_call_compat", body)
