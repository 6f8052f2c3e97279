"""GPU test: an engine's prefill call sequence on DeepEP's high-throughput
("normal") API, over a torch.distributed (gloo) group, with Buffer(group,
num_nvl_bytes) sized by the Configs' NVL hints as engines do:
get_dispatch_layout -> dispatch -> expert computation (each rank scales its
rows) -> combine (in place in odd rounds: the experts write into
get_high_throughput_combine_buffer), then a cached dispatch of new
activations and its combine. In bf16 and fp8, with topk_weights,
expert_alignment, one or two biases, n = 0 on some ranks, and expert ids
that are invalid or repeated; then num_worst_tokens (rows past N, and an
overflow), async_finish with previous_event and allocate_on_comm_stream, a
masked rank, a handle combined after later dispatches, and more tokens than
T. Each rank rebuilds every rank's inputs and checks every element of its
outputs against a torch reference of the rules of the high-throughput mode
(rows, ids, weights, sources and counts exactly; combine bit for bit: fp32
sums in the tokens' expert order, then the biases, rounded once to bf16)."""
import os
import tempfile
import zlib

import torch
import torch.distributed as dist

import gpu_common as G
import vmep
from ht_reference import layout_by_loops

H = 2048
L = 4  # experts per rank
K = 6


def make_inputs(seed, round_, sizes, E, messy):
    """Every rank's inputs of a round (gpu_common.Inputs); with `messy`,
    about 2% of the ids >= E, 2% below -1 and 3% a repeat of the id
    before. `bad`: how many ids are invalid."""
    ins = G.all_inputs(seed, round_, sizes, H, E, K)
    for r, inp in enumerate(ins):
        inp.topk = inp.topk.contiguous()
        inp.bad = 0
        if not messy:
            continue
        g = torch.Generator().manual_seed(
            zlib.crc32(f"{seed}/{round_}/{r}/messy".encode()))
        n = inp.n
        u = torch.rand(n, K, generator=g)
        big = torch.randint(E, 3 * E, (n, K), generator=g)
        low = -torch.randint(2, 9, (n, K), generator=g)
        topk = torch.where(u < 0.02, big, inp.topk)
        topk = torch.where((u >= 0.02) & (u < 0.04), low, topk)
        repeat = (u >= 0.04) & (u < 0.07)
        repeat[:, 0] = False
        before = torch.cat([topk[:, :1], topk[:, :-1]], dim=1)
        inp.topk = torch.where(repeat, before, topk).contiguous()
        inp.bad = int(((inp.topk >= E) | (inp.topk < -1)).sum())
    return ins


def factor(r):
    """Rank r's experts multiply their rows by this."""
    return 1.0 + (r % 7) / 8.0


def payload(inp, fp8):
    """What rank's x is as dispatched: bf16, or (fp8 codes, scales)."""
    if not fp8:
        return inp.x
    return G.quantize(inp.x, False)


def values(inp, fp8):
    """The fp32 rows an expert sees (dequantized in fp8)."""
    if not fp8:
        return inp.x.float()
    q, scale = payload(inp, fp8)
    return G.dequant_rows(q, scale)


def expected_rows(ins, d, E, fp8):
    """What rank d receives, in order (by source rank, then token): the
    rows as sent, local ids (-1 elsewhere), weights (0 elsewhere), the
    source record (t << 16) | (s << 5) | j."""
    parts = {"x": [], "scales": [], "idx": [], "w": [], "src": []}
    for s, inp in enumerate(ins):
        ids = inp.topk
        mine = (ids >= 0) & (ids < E) & (torch.div(
            ids, L, rounding_mode="floor") == d)
        tok = mine.any(dim=1).nonzero()[:, 0]
        j = mine.int().argmax(dim=1)  # the first k on d
        sent = payload(inp, fp8)
        if fp8:
            parts["x"].append(sent[0][tok])
            parts["scales"].append(sent[1][tok])
        else:
            parts["x"].append(sent[tok])
        parts["idx"].append(torch.where(mine, ids - d * L,
                                        torch.full_like(ids, -1))[tok])
        parts["w"].append(torch.where(mine, inp.weights,
                                      torch.zeros_like(inp.weights))[tok])
        parts["src"].append(((tok << 16) | (s << 5) | j[tok]).int())
    return {k: torch.cat(v) if v else None for k, v in parts.items()}


def aligned_counts(idx, alignment):
    counts = [int((idx == l).sum()) for l in range(L)]
    return [(c + alignment - 1) // alignment * alignment for c in counts]


def same_bits(got, want, what):
    got = got.cpu()
    view = {torch.bfloat16: torch.int16, torch.float32: torch.int32,
            torch.int64: torch.int64, torch.int32: torch.int32}
    if got.dtype not in view:  # fp8 codes
        got, want = got.view(torch.uint8), want.view(torch.uint8)
    else:
        got, want = got.view(view[got.dtype]), want.view(view[want.dtype])
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, " \
        f"expected {tuple(want.shape)}"
    bad = got != want
    assert not bad.any(), f"{what}: {int(bad.sum())} of {got.numel()} " \
        f"differ, first at {tuple(bad.nonzero()[0].tolist())}"


def check_dispatch(ins, E, fp8, recv_x, recv_idx, recv_w, handle, rows=None):
    """recv_* and the handle's sources against expected_rows; `rows`: only
    the first rows (a capacity below N)."""
    want = expected_rows(ins, G.RANK, E, fp8)
    N = want["idx"].shape[0]
    n = N if rows is None else min(rows, N)
    if fp8:
        same_bits(recv_x[0][:n], want["x"][:n], "recv_x (fp8 codes)")
        same_bits(recv_x[1][:n], want["scales"][:n], "recv_x scales")
    else:
        same_bits(recv_x[:n], want["x"][:n], "recv_x")
    if recv_idx is not None:
        same_bits(recv_idx[:n], want["idx"][:n], "recv_topk_idx")
    if recv_w is not None:
        same_bits(recv_w[:n], want["w"][:n], "recv_topk_weights")
    same_bits(handle.recv_src[:n], want["src"][:n], "recv_src")
    return want, N


def expert(recv_x, fp8):
    """This rank's experts: every received row times factor(RANK), bf16."""
    if fp8:
        q, s = recv_x
        N = q.shape[0]
        v = (q.float().view(N, H // 128, 128) * s.view(N, -1, 1)).view(N, H)
    else:
        v = recv_x.float()
    return (v * factor(G.RANK)).to(torch.bfloat16)


def expected_combine(inp, E, R, fp8, bias, with_weights):
    """This rank's combine: per token, acc = 0, + each receiving rank's
    row in the order the ranks first appear in its ids, + bias0, + bias1,
    rounded once to bf16; weights: 0 + each receiving rank's weights row
    in the same order."""
    n = inp.n
    ids = inp.topk
    valid = (ids >= 0) & (ids < E)
    rank = torch.where(valid, torch.div(ids, L, rounding_mode="floor"),
                       torch.full_like(ids, -1))
    v = values(inp, fp8)
    f = torch.tensor([factor(r) for r in range(R)])
    acc = torch.zeros(n, H)
    acc_w = torch.zeros(n, K)
    for k in range(K):
        r = rank[:, k]
        first = valid[:, k] & ~(rank[:, :k] == r[:, None]).any(dim=1)
        row = (v * f[r.clamp_min(0)][:, None]).to(torch.bfloat16).float()
        acc = torch.where(first[:, None], acc + row, acc)
        sent_w = torch.where(valid & (rank == r[:, None]), inp.weights,
                             torch.zeros_like(inp.weights))
        acc_w = torch.where(first[:, None], acc_w + sent_w, acc_w)
    for b in bias:
        if b is not None:
            acc = acc + b.float()
    return acc.to(torch.bfloat16), (acc_w if with_weights else None)


def check_combine(inp, E, R, fp8, bias, out, out_w, with_weights):
    want, want_w = expected_combine(inp, E, R, fp8, bias, with_weights)
    same_bits(out, want, "combined_x")
    if with_weights:
        same_bits(out_w, want_w, "combined_topk_weights")
    else:
        assert out_w is None


def biases(seed, round_, n, kind):
    """None, one bf16 [n, H] tensor, or a tuple of two (CPU, CUDA)."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{round_}/"
                                                 f"{G.RANK}/bias".encode()))
    made = [(torch.randn(n, H, generator=g) * 0.5).to(torch.bfloat16)
            for _ in range(kind)]
    if kind == 0:
        return (None, None), None
    if kind == 1:
        return (made[0], None), made[0].cuda()
    return tuple(made), tuple(b.cuda() for b in made)


def to_device(inp, fp8):
    sent = payload(inp, fp8)
    x = tuple(t.cuda() for t in sent) if fp8 else sent.cuda()
    return x, inp.topk.cuda(), inp.weights.cuda()


def prefill_round(buf, seed, round_, E, R, fp8, sizes, alignment, bias_kind,
                  messy):
    """layout -> dispatch -> experts -> combine, then a cached dispatch of
    new activations -> experts -> combine; every output checked."""
    ins = make_inputs(seed, round_, sizes, E, messy)
    me = ins[G.RANK]
    x, topk, w = to_device(me, fp8)
    fresh = buf._ep is None
    per_rank, rdma, per_expert, in_rank, _ = buf.get_dispatch_layout(topk, E)
    want = layout_by_loops(me.topk, E, R)
    assert rdma is None
    assert per_rank.cpu().tolist() == want[0], "num_tokens_per_rank"
    assert per_expert.cpu().tolist() == want[1], "num_tokens_per_expert"
    assert in_rank.dtype == torch.bool and \
        in_rank.cpu().tolist() == want[2], "is_token_in_rank"
    G.poison_cache()
    recv_x, recv_idx, recv_w, counts, handle, event = buf.dispatch(
        x, topk_idx=topk, topk_weights=w, num_tokens_per_rank=per_rank,
        num_tokens_per_rdma_rank=rdma, is_token_in_rank=in_rank,
        num_tokens_per_expert=per_expert, expert_alignment=alignment,
        config=buf.get_dispatch_config(R))
    assert event.event is None
    rows, N = check_dispatch(ins, E, fp8, recv_x, recv_idx, recv_w, handle)
    assert handle.rows == N and recv_idx.shape[0] == N
    assert counts == aligned_counts(rows["idx"], alignment), \
        f"num_recv_tokens_per_expert_list {counts}"
    assert all(type(c) is int for c in counts)
    # Invalid ids are counted where they are read: here at least (the
    # layout and the send phase), maybe by their receivers too.
    bits, bad = buf.poll_errors()
    flagged = bool(bits & vmep.errors.EP_ERR_BAD_EXPERT)
    expected = True if me.bad else (None if any(i.bad for i in ins) else
                                    False)
    assert expected in (None, flagged), \
        f"error bits {bits}, {me.bad} invalid ids here"
    assert bad >= me.bad and not bits & vmep.errors.EP_ERR_OVERFLOW
    y = expert(recv_x, fp8)
    in_place = round_ % 2 == 1
    if in_place:  # the experts write where the sources read
        zc = buf.get_high_throughput_combine_buffer(handle)
        assert tuple(zc.shape) == tuple(y.shape), (zc.shape, y.shape)
        y = zc.copy_(y)
    bias, bias_dev = biases(seed, round_, me.n, bias_kind)
    G.poison_cache()
    out, out_w, _ = buf.combine(y, handle, recv_w, bias_dev,
                                buf.get_combine_config(R))
    check_combine(me, E, R, fp8, bias, out, out_w, True)
    # a cached dispatch: new activations, the same routing
    again = make_inputs(seed, round_ + 1000, sizes, E, False)
    for inp, old in zip(again, ins):
        inp.topk, inp.weights = old.topk, old.weights
    x2, _, _ = to_device(again[G.RANK], fp8)
    G.poison_cache()
    recv2, none1, none2, none3, same, _ = buf.dispatch(x2, handle)
    assert (none1, none2, none3) == (None, None, None) and same is handle
    check_dispatch(again, E, fp8, recv2, None, None, handle)
    y2 = expert(recv2, fp8)
    out2, out2_w, _ = buf.combine(y2, handle)
    check_combine(again[G.RANK], E, R, fp8, (None, None), out2, out2_w,
                  False)
    print(f"rank {G.RANK} round {round_} {'fp8' if fp8 else 'bf16'} "
          f"n={me.n} N={N} alignment {alignment} biases {bias_kind} "
          f"layout {'torch' if fresh else 'C'}"
          f"{', combined in place' if in_place else ''}: exact", flush=True)


def worst_rounds(buf, seed, E, R, rnd):
    """num_worst_tokens: enough rows (no host read; rows past N: no
    expert), then too few on every rank (the overflow bit)."""
    sizes = [rnd.randint(0, 200) for _ in range(G.WORLD)]
    ins = make_inputs(seed, 300, sizes, E, False)
    me = ins[G.RANK]
    x, topk, w = to_device(me, False)
    worst = sum(sizes) + 3
    G.poison_cache()
    recv_x, recv_idx, recv_w, counts, handle, _ = buf.dispatch(
        x, topk_idx=topk, topk_weights=w, num_worst_tokens=worst,
        num_tokens_per_expert=torch.zeros(E, dtype=torch.int32,
                                          device="cuda"))
    assert counts == [] and handle.rows == worst
    assert recv_x.shape[0] == worst
    _, N = check_dispatch(ins, E, False, recv_x, recv_idx, recv_w, handle)
    assert (recv_idx[N:] == -1).all() and (recv_w[N:] == 0).all()
    assert int(handle.counts[0]) == N
    assert buf.poll_errors()[0] & vmep.errors.EP_ERR_OVERFLOW == 0
    out, out_w, _ = buf.combine(expert(recv_x, False), handle, recv_w)
    check_combine(me, E, R, False, (None, None), out, out_w, True)
    cap = max(1, N // 2)
    recv_x, recv_idx, recv_w, _, handle, _ = buf.dispatch(
        x, topk_idx=topk, topk_weights=w, num_worst_tokens=cap)
    torch.cuda.synchronize()
    check_dispatch(ins, E, False, recv_x, recv_idx, recv_w, handle, rows=cap)
    bits = buf.poll_errors()[0]
    assert bool(bits & vmep.errors.EP_ERR_OVERFLOW) == (N > cap), \
        f"error bits {bits} with {N} rows for {cap}"
    print(f"rank {G.RANK} num_worst_tokens {worst} and {cap} (N={N}): exact",
          flush=True)


def async_round(buf, seed, E, R):
    """previous_event, async_finish and allocate_on_comm_stream on every
    call, as an overlapping engine makes them."""
    sizes = [150] * G.WORLD
    ins = make_inputs(seed, 400, sizes, E, False)
    me = ins[G.RANK]
    x, topk, w = to_device(me, True)
    G.poison_cache()
    kw = dict(async_finish=True, allocate_on_comm_stream=True)
    per_rank, _, per_expert, in_rank, ev = buf.get_dispatch_layout(
        topk, E, previous_event=buf.capture(), **kw)
    assert ev.event is not None
    recv_x, recv_idx, recv_w, counts, handle, ev = buf.dispatch(
        x, None, per_rank, None, in_rank, per_expert, topk, w,
        previous_event=ev, **kw)
    ev.current_stream_wait()
    check_dispatch(ins, E, True, recv_x, recv_idx, recv_w, handle)
    y = expert(recv_x, True)
    out, out_w, ev = buf.combine(y, handle, recv_w,
                                 previous_event=buf.capture(), **kw)
    with ev:
        pass
    check_combine(me, E, R, True, (None, None), out, out_w, True)
    print(f"rank {G.RANK} async: exact", flush=True)


def masked_round(buf, seed, E, R, group):
    """The last rank masked by the others and masking them: it sends and
    receives nothing from them, and each side is exact over itself."""
    last = G.WORLD - 1
    live = {last} if G.RANK == last else set(range(last))
    dist.barrier(group)
    for r in range(G.WORLD):
        if r != G.RANK and r not in live:
            buf.update_mask_buffer(r, True)
    sizes = [100] * G.WORLD
    full = make_inputs(seed, 500, sizes, E, False)
    ins = G.restrict(full, live, E, R)
    x, topk, w = to_device(full[G.RANK], False)
    recv_x, recv_idx, recv_w, _, handle, _ = buf.dispatch(
        x, topk_idx=topk, topk_weights=w)
    check_dispatch(ins, E, False, recv_x, recv_idx, recv_w, handle)
    out, out_w, _ = buf.combine(expert(recv_x, False), handle, recv_w)
    check_combine(ins[G.RANK], E, R, False, (None, None), out, out_w, True)
    torch.cuda.synchronize()
    dist.barrier(group)
    buf.clean_mask_buffer()
    dist.barrier(group)
    print(f"rank {G.RANK} masked (live {sorted(live)}): exact", flush=True)


def old_handle(buf, seed, E, R):
    """Handles do not expire: a dispatch's handle combines exactly after
    two later dispatches (on both buffer parities) and serves a cached
    dispatch."""
    ins = make_inputs(seed, 600, [120] * G.WORLD, E, False)
    x, topk, w = to_device(ins[G.RANK], False)
    recv_x, _, recv_w, _, handle, _ = buf.dispatch(x, topk_idx=topk,
                                                   topk_weights=w)
    y = expert(recv_x, False)
    later = make_inputs(seed, 601, [80] * G.WORLD, E, False)[G.RANK]
    for _ in range(2):
        buf.dispatch(later.x.cuda(), topk_idx=later.topk.cuda())
    out, out_w, _ = buf.combine(y, handle, recv_w)
    check_combine(ins[G.RANK], E, R, False, (None, None), out, out_w, True)
    recv2, *_ = buf.dispatch(x, handle)
    check_dispatch(ins, E, False, recv2, None, None, handle)
    print(f"rank {G.RANK} an old handle: exact", flush=True)


def too_many_tokens(buf):
    """More tokens than T: ValueError on every rank, before any
    collective."""
    T = buf._shape[0]
    many = torch.zeros(T + 1, H, dtype=torch.bfloat16, device="cuda")
    idx = torch.zeros(T + 1, K, dtype=torch.int64, device="cuda")
    try:
        buf.dispatch(many, topk_idx=idx)
        raise AssertionError(f"{T + 1} tokens accepted")
    except ValueError as exc:
        assert f"more than T={T}" in str(exc), exc


def body(seed):
    store = os.path.join(tempfile.gettempdir(), "vmep-py-" + os.environ.get(
        "VMEP_JOB_ID", "job").replace("/", "_") + "-ht")
    dist.init_process_group("gloo", init_method=f"file://{store}",
                            rank=G.RANK, world_size=G.WORLD)
    group = dist.new_group(list(range(G.WORLD)))
    R = G.WORLD
    E = L * R
    # as an engine sizes its normal-mode buffer
    num_nvl_bytes = 0
    for config in (vmep.Buffer.get_dispatch_config(R),
                   vmep.Buffer.get_combine_config(R)):
        num_nvl_bytes = max(config.get_nvl_buffer_size_hint(H * 2, R),
                            num_nvl_bytes)
        assert config.get_rdma_buffer_size_hint(H * 2, R) == 0
    buf = vmep.Buffer(group, num_nvl_bytes, 0, low_latency_mode=False,
                      num_qps_per_rank=1, explicitly_destroy=True)
    rnd = G.shared_random(seed, "ht")
    plan = [(False, 1, 0, True), (True, 4, 1, False), (False, 8, 2, True),
            (True, 1, 2, True), (False, 3, 1, False)]
    for round_, (fp8, alignment, bias_kind, messy) in enumerate(plan):
        sizes = [rnd.randint(0, 300) for _ in range(G.WORLD)]
        sizes[round_ % G.WORLD] = 0 if round_ % 2 else sizes[round_ % G.WORLD]
        prefill_round(buf, seed, round_, E, R, fp8, sizes, alignment,
                      bias_kind, messy)
        if round_ == 0:
            T = buf._shape[0]
            assert T >= vmep.Config().num_max_tokens_per_rank, T
            print(f"rank {G.RANK}: num_nvl_bytes {num_nvl_bytes} gave "
                  f"T={T}", flush=True)
    worst_rounds(buf, seed, E, R, rnd)
    async_round(buf, seed, E, R)
    if G.WORLD > 1:
        masked_round(buf, seed, E, R, group)
    old_handle(buf, seed, E, R)
    too_many_tokens(buf)
    buf.destroy()
    dist.destroy_process_group()


if __name__ == "__main__":
    G.run("gpu_ht_prefill", body)
