"""GPU test 3: two micro-batches interleaved (dispatch A send, dispatch B
send, A recv, B recv, combine A send, combine B send, A recv, B recv); a
third dispatch while two wait is refused on every rank, and a combine of a
handle whose buffer a later dispatch reused is refused, never run. Uses a
zero_copy buffer for B's combine."""

import gpu_common as G
import vmep


def body(seed):
    T, H, K = 64, 4096, 6
    E = 3 * G.WORLD
    buf = vmep.Buffer(explicitly_destroy=True, zero_copy=True)
    bf16 = G.Mode()
    for round_ in range(4):
        ia = G.all_inputs(seed, 10 * round_, [T] * G.WORLD, H, E, K)
        ib = G.all_inputs(seed, 10 * round_ + 1, [T // 2] * G.WORLD, H, E, K)
        xa, ta, wa = G.to_cuda(ia[G.RANK])
        xb, tb, wb = G.to_cuda(ib[G.RANK])
        ra, ca, ha, _, hka = buf.low_latency_dispatch(
            xa, ta, T, E, use_fp8=False, return_recv_hook=True)
        rb, cb, hb, _, hkb = buf.low_latency_dispatch(
            xb, tb, T, E, use_fp8=False, return_recv_hook=True)
        if round_ == 0:
            try:
                buf.low_latency_dispatch(xa, ta, T, E, use_fp8=False,
                                         return_recv_hook=True)
                raise AssertionError("a third dispatch in flight was accepted")
            except vmep.Error as exc:
                assert "two dispatches" in str(exc), exc
        hka()
        hkb()
        G.check_dispatch(ia, T, E, ra, ca, ha, bf16)
        G.check_dispatch(ib, T, E, rb, cb, hb, bf16)
        ea = G.expert_compute(ra, E, bf16)
        buf.get_next_low_latency_combine_buffer(hb).copy_(
            G.expert_compute(rb, E, bf16))
        oa, _, hca = buf.low_latency_combine(ea, ta, wa, ha,
                                             return_recv_hook=True)
        ob, _, hcb = buf.low_latency_combine(rb, tb, wb, hb, zero_copy=True,
                                             return_recv_hook=True)
        hca()
        hcb()
        G.check_combine(ia, oa, E, bf16)
        G.check_combine(ib, ob, E, bf16)
        print(f"rank {G.RANK} round {round_}: A and B interleaved, exact",
              flush=True)
    # A, B, C dispatched: C reused A's buffer, so A's combine is refused.
    ins = [G.all_inputs(seed, 100 + i, [T] * G.WORLD, H, E, K)
           for i in range(3)]
    outs = []
    for i in range(3):
        x, t, w = G.to_cuda(ins[i][G.RANK])
        outs.append((buf.low_latency_dispatch(x, t, T, E, use_fp8=False),
                     t, w))
    (ra, _, ha, _, _), ta, wa = outs[0]
    try:
        buf.low_latency_combine(G.expert_compute(ra, E, bf16), ta, wa, ha)
        raise AssertionError("a stale handle was combined")
    except vmep.Error as exc:
        assert "stale" in str(exc), exc
    for i in (1, 2):
        (r, c, h, _, _), t, w = outs[i]
        G.check_dispatch(ins[i], T, E, r, c, h, bf16)
        o, _, _ = buf.low_latency_combine(G.expert_compute(r, E, bf16), t, w,
                                          h)
        G.check_combine(ins[i], o, E, bf16)
    buf.destroy()


if __name__ == "__main__":
    G.run("gpu_interleave", body)
