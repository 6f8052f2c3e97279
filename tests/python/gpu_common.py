"""
Shared parts of the GPU tests of the Python package (tests/python/gpu_*.py,
run under `vmep-run -n N` by scripts/gpu-python.sh, without pytest): the
rank's setup, seeded inputs that every rank can rebuild for every rank
(so each rank computes the reference of what it must receive and of its
combine from all ranks' inputs), a torch reference of dispatch (fp8
quantization bit for bit) and combine, and a PASS / FAIL summary.
"""
import copy
import os
import random
import sys
import traceback
import zlib

import torch


RANK = int(os.environ.get("VMEP_RANK", "0"))
WORLD = int(os.environ.get("VMEP_WORLD_SIZE", "1"))


def setup(name):
    """Pins the rank's device; returns the run's seed (VMEP_TEST_SEED, else
    derived from the job id, the same on every rank, new every run)."""
    torch.cuda.set_device(int(os.environ.get("VMEP_DEVICE", "0")))
    seed = os.environ.get("VMEP_TEST_SEED")
    seed = int(seed) if seed else zlib.crc32(
        os.environ.get("VMEP_JOB_ID", str(os.getppid())).encode())
    print(f"{name}: rank {RANK} of {WORLD}, seed {seed} (replay with "
          f"VMEP_TEST_SEED={seed})", flush=True)
    return seed


def run(name, body):
    """Runs body(seed); prints PASS or FAIL with the traceback; exits 0/1."""
    try:
        seed = setup(name)
        body(seed)
        torch.cuda.synchronize()
    except BaseException:
        traceback.print_exc()
        print(f"FAIL {name} rank {RANK}", flush=True)
        sys.stdout.flush()
        os._exit(1)
    print(f"PASS {name} rank {RANK}", flush=True)


class Inputs:
    """Rank r's tokens for one round: x bf16 [n, H], topk_idx int64 [n, K]
    (distinct experts, about 10% -1), topk_weights fp32 [n, K]."""

    def __init__(self, seed, round_, r, n, H, E, K):
        g = torch.Generator().manual_seed(
            zlib.crc32(f"{seed}/{round_}/{r}".encode()))
        mag = torch.rand(n, 1, generator=g) * 4 + 0.05
        self.x = (torch.randn(n, H, generator=g) * mag).to(torch.bfloat16)
        idx = torch.rand(n, E, generator=g).argsort(dim=1)[:, :K]
        drop = torch.rand(n, K, generator=g) < 0.1
        self.topk = torch.where(drop, torch.full_like(idx, -1), idx)
        self.weights = torch.rand(n, K, generator=g)
        self.n = n


def all_inputs(seed, round_, sizes, H, E, K):
    return [Inputs(seed, round_, r, sizes[r], H, E, K) for r in range(WORLD)]


def factors(E):
    """Expert e multiplies its rows by this (exact in bf16)."""
    return torch.tensor([1.0 + (e % 7) / 8.0 for e in range(E)])


def quantize(x, round_scale):
    """The C library's fp8 quantization of bf16 rows, in torch: per 128
    channels amax (at least 1e-4), scale = amax / 448 (a power of two,
    rounded up, with round_scale), q = fp8(x / scale) saturated."""
    m, H = x.shape
    xf = x.float().view(m, H // 128, 128)
    amax = xf.abs().amax(-1).clamp_min(1e-4)
    scale = amax / 448.0
    if round_scale:
        bits = scale.view(torch.int32).to(torch.int64)
        up = torch.where(bits & 0x7FFFFF != 0,
                         (bits & 0x7F800000) + 0x800000, bits)
        scale = up.to(torch.int32).view(torch.float32)
    q = (xf / scale[..., None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q.view(m, H), scale


def dequant_rows(q, scale):
    m, H = q.shape
    return (q.float().view(m, H // 128, 128) * scale[..., None]).view(m, H)


class Mode:
    def __init__(self, fp8=False, round_scale=False, ue8m0=False):
        self.fp8, self.round_scale, self.ue8m0 = fp8, round_scale, ue8m0

    def kwargs(self):
        return dict(use_fp8=self.fp8, round_scale=self.round_scale,
                    use_ue8m0=self.ue8m0)

    def __repr__(self):
        return ("fp8" + (" round_scale" if self.round_scale else "") +
                (" ue8m0" if self.ue8m0 else "")) if self.fp8 else "bf16"


def scales_of(scales, mode):
    """fp32 [L, RT, G] on the CPU from the dispatch's scales output."""
    s = scales.cpu()
    if not mode.ue8m0:
        return s.contiguous()
    L, RT, W = s.shape
    words = s.contiguous().to(torch.int64) & 0xFFFFFFFF
    parts = [(words >> (8 * j)) & 0xFF for j in range(4)]
    exps = torch.stack(parts, dim=-1).view(L, RT, 4 * W)
    return (exps << 23).to(torch.int32).view(torch.float32)


def check_dispatch(ins, T, E, recv, recv_count, handle, mode):
    """Every count, range, src_info, row (bit for bit) and scale of this
    rank's dispatch outputs against the inputs of all ranks."""
    R = handle[1].shape[1]  # the capacity: WORLD, or more (masked ranks)
    L, RT = E // R, R * T
    src_info, layout_range = handle[0].cpu(), handle[1].cpu()
    count = recv_count.cpu()
    if mode.fp8:
        rx = recv[0].cpu().view(torch.uint8)
        sc = scales_of(recv[1], mode)
        assert tuple(recv[1].shape) == (
            L, RT, recv[0].shape[2] // (512 if mode.ue8m0 else 128))
        assert recv[1].stride()[1] == 1, "scales not column-major"
    else:
        rx = recv.cpu()
    for l in range(L):
        e = RANK * L + l
        covered = torch.zeros(RT, dtype=torch.bool)
        total = 0
        for s in range(R):  # a rank past the inputs' sends nothing
            toks = (ins[s].topk == e).nonzero()[:, 0] if s < len(ins) else \
                torch.zeros(0, dtype=torch.int64)
            rng = int(layout_range[l, s])
            begin, n = rng >> 32, rng & 0xFFFFFFFF
            assert n == len(toks), f"expert {l} from rank {s}: {n} rows, " \
                f"expected {len(toks)}"
            total += n
            if n == 0:
                continue
            assert not covered[begin:begin + n].any(), "ranges overlap"
            covered[begin:begin + n] = True
            got = src_info[l, begin:begin + n].long()
            assert sorted(got.tolist()) == sorted(toks.tolist()), \
                f"expert {l} from rank {s}: src_info differs"
            rows = ins[s].x[got]
            if not mode.fp8:
                assert torch.equal(rx[l, begin:begin + n].view(torch.int16),
                                   rows.view(torch.int16)), \
                    f"expert {l} from rank {s}: bf16 rows differ"
                continue
            q, scale = quantize(rows, mode.round_scale)
            assert torch.equal(sc[l, begin:begin + n].view(torch.int32),
                               scale.view(torch.int32)), \
                f"expert {l} from rank {s}: scales differ"
            assert torch.equal(rx[l, begin:begin + n], q.view(torch.uint8)), \
                f"expert {l} from rank {s}: fp8 codes differ"
        assert int(count[l]) == total, f"recv_count[{l}] {int(count[l])}, " \
            f"expected {total}"
        assert covered[:total].all(), f"expert {l}: rows not contiguous"


_DEVICE_FACTORS = {}


def expert_compute(recv, E, mode):
    """Expert e's output: its rows (dequantized) times factors()[e], bf16."""
    L = (recv[0] if mode.fp8 else recv).shape[0]
    if (E, L) not in _DEVICE_FACTORS:  # no host copies inside graph capture
        _DEVICE_FACTORS[E, L] = factors(E)[RANK * L:(RANK + 1) * L].cuda()
    f = _DEVICE_FACTORS[E, L].view(L, 1, 1)
    if not mode.fp8:
        return (recv.float() * f).to(torch.bfloat16)
    q, s = recv
    Ls, RT, H = q.shape
    s = scales_of(s, mode).cuda()
    deq = (q.float().view(Ls, RT, H // 128, 128) * s[..., None]).view(
        Ls, RT, H)
    return (deq * f).to(torch.bfloat16)


# LogFMT's largest error per value, as a fraction of the value: rounding
# to the nearer of two levels at most 32/510 of a binade apart in the fp32
# bits, plus slack for the fp32 roundings of the step (docs/EP.md,
# "LogFMT").
LOGFMT_RHO = 32 / 1020 + 2 ** -14


def expert_rows(me, E, mode):
    """Per selection k, the fp32 values of the bf16 rows [n, H] that the
    experts return for these inputs' tokens (expert_compute), and whether
    the selection counts ([n] bool)."""
    v = me.x.float()
    if mode.fp8:
        q, scale = quantize(me.x, mode.round_scale)
        v = dequant_rows(q, scale)
    f = factors(E)
    n = me.x.shape[0]
    return [((v * f[e.clamp_min(0)].view(n, 1)).to(torch.bfloat16).float(),
             e >= 0) for e in me.topk.unbind(1)]


def check_shape(me, out):
    """This rank's combine output: bf16 [n, H]; False when n is 0."""
    n, H = me.x.shape
    assert tuple(out.shape) == (n, H) and out.dtype == torch.bfloat16
    return n > 0


def check_combine(ins, out, E, mode, logfmt=False):
    """This rank's combine output against the fp32 weighted sum of the
    expert outputs its tokens' rows became (any summation order passes);
    with logfmt, each term may also move by LOGFMT_RHO of itself."""
    me = ins[RANK]
    if not check_shape(me, out):
        return
    ref = torch.zeros(me.x.shape)
    mag = torch.zeros(me.x.shape)
    for k, (row, valid) in enumerate(expert_rows(me, E, mode)):
        term = row * (me.weights[:, k] * valid).view(-1, 1)
        ref += term
        mag += term.abs()
    got = out.cpu().float()
    bound = ref.abs() * 2.0 ** -7 + mag * 2.0 ** -19 + 1e-30
    if logfmt:
        bound += mag * LOGFMT_RHO * (1 + 2.0 ** -7)  # and bf16's rounding
    assert_within(got, ref, bound, "combine")


def assert_within(got, ref, bound, what):
    bad = ((got - ref).abs() > bound) | got.isnan()
    assert not bad.any(), f"{what}: {int(bad.sum())} of {got.numel()} " \
        f"values differ, first at {tuple(bad.nonzero()[0].tolist())}: got " \
        f"{got[bad][0]}, expected {ref[bad][0]}"


def fma32(a, b, c):
    """fmaf(a, b, c) of fp32 tensors, rounded once as the GPU does: a * b
    is exact in fp64, s = a * b + c is rounded there and e is what that
    rounding lost (two-sum). Rounding s to fp32 is then right unless s lies
    halfway between two floats and e is not 0: the exact sum is then on
    e's side of s."""
    p, c = a.double() * b.double(), c.double()
    s = p + c
    pb = s - p
    e = (p - (s - pb)) + (c - pb)
    r = s.float()
    other = 2 * s - r.double()  # r mirrored through s
    tie = (e != 0) & (other != r.double()) & (other.float().double() == other)
    toward_e = torch.sign(other - s) == torch.sign(e)
    return torch.where(tie & toward_e, other.float(), r)


def reduced_reference(me, E, R, mode):
    """What a combine reduced at the expert side returns for inputs `me`
    (R ranks, E experts): per expert rank, in the order of its first
    counted selection, the fmaf chain of that rank's selections, weight
    times expert row in k order, rounded to bf16; those partial sums added
    in fp32 in that order and rounded to bf16. Returns (the bf16 result as
    fp32 [n, H], the sum of |partials|)."""
    rows = expert_rows(me, E, mode)
    L, K = E // R, len(rows)
    owner = me.topk.clamp_min(0) // L
    # first[t, k]: the first counted selection of token t on k's rank
    first = torch.full_like(me.topk, -1)
    for k in range(K):
        for j in range(k, -1, -1):
            same = rows[j][1] & (owner[:, j] == owner[:, k]) & rows[k][1]
            first[:, k] = torch.where(same, j, first[:, k])
    partials = torch.zeros((K,) + tuple(me.x.shape))
    for k, (row, _) in enumerate(rows):  # k order: each chain's order
        for j in range(k + 1):
            on = (first[:, k] == j).view(-1, 1)
            w = me.weights[:, k].view(-1, 1).expand_as(row)
            partials[j] = torch.where(on, fma32(w, row, partials[j]),
                                      partials[j])
    total, mag = torch.zeros(me.x.shape), torch.zeros(me.x.shape)
    for j in range(K):
        part = partials[j].to(torch.bfloat16).float()
        head = (first[:, j] == j).view(-1, 1)
        total = torch.where(head, total + part, total)
        mag = torch.where(head, mag + part.abs(), mag)
    return total.to(torch.bfloat16).float(), mag


def check_reduced(ins, out, E, R, mode):
    """This rank's output of a combine reduced at the expert side against
    reduced_reference, within 2 bf16 ulps of the sum of |partials| (as the
    other combines here, a tolerance; how many values match bit for bit is
    printed)."""
    me = ins[RANK]
    if not check_shape(me, out):
        return
    ref, mag = reduced_reference(me, E, R, mode)
    got = out.cpu().float()
    _, exp = torch.frexp(mag)
    ulp = torch.where(mag > 0, torch.ldexp(torch.ones_like(mag), exp - 8),
                      torch.zeros_like(mag))
    assert_within(got, ref, 2 * ulp, "reduced combine")
    same = int((got.view(torch.int32) == ref.view(torch.int32)).sum())
    print(f"rank {RANK} reduced combine: {same} of {got.numel()} values bit "
          f"for bit", flush=True)


def poison_cache(mib=64):
    """Fills free memory of torch's cache with 0xff so that fresh outputs
    start poisoned, not zero."""
    t = torch.empty(mib << 20, dtype=torch.uint8, device="cuda")
    t.fill_(0xFF)
    del t


def to_cuda(inp):
    return inp.x.cuda(), inp.topk.cuda(), inp.weights.cuda()


def restrict(ins, live, E, R=WORLD):
    """The inputs as the ranks in `live` see them: a rank outside `live`
    sends nothing (all its selections -1), and a selection of an expert
    whose rank is outside `live` counts as zero (-1). With these, the
    unchanged check_dispatch / check_combine check the masked rule."""
    L = E // R
    alive = torch.zeros(R, dtype=torch.bool)
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


def one_round(buf, seed, round_, T, H, E, K, mode, sizes=None, hook=True,
              zero_copy=False, stats=None, live=None, errors=None,
              logfmt=False, reduced=False, weights_again=True):
    """dispatch -> (hook) -> expert -> combine(out=) -> (hook), checked.
    With `live`, this rank sends its full inputs but is checked against
    the reference over the ranks in `live` only (the others masked); with
    `errors`, poll_errors() must then return it. With `reduced`, dispatch
    is given the weights and the combine, reduced at the expert side, the
    same tensor (weights_again) or None."""
    sizes = sizes or [T] * WORLD
    full = all_inputs(seed, round_, sizes, H, E, K)
    ins = full if live is None else restrict(full, live, E, buf.group_size)
    x, topk, w = to_cuda(full[RANK])
    poison_cache()
    recv, count, handle, event, rhook = buf.low_latency_dispatch(
        x, topk, T, E, cumulative_local_expert_recv_stats=stats,
        return_recv_hook=hook, topk_weights=w if reduced else None,
        **mode.kwargs())
    assert (rhook is not None) == hook
    if hook:
        rhook()
    check_dispatch(ins, T, E, recv, count, handle, mode)
    eo = expert_compute(recv, E, mode)
    if zero_copy:
        buf.get_next_low_latency_combine_buffer(handle).copy_(eo)
    out = torch.full((sizes[RANK], H), float("nan"), dtype=torch.bfloat16,
                     device="cuda")
    combined, event, chook = buf.low_latency_combine(
        eo, topk, w if weights_again or not reduced else None, handle,
        zero_copy=zero_copy, return_recv_hook=hook, out=out,
        use_logfmt=logfmt)
    assert combined is out
    if hook:
        chook()
    if reduced:
        assert not logfmt, "no LogFMT reference for a reduced combine here"
        check_reduced(ins, combined, E, buf.group_size, mode)
    else:
        check_combine(ins, combined, E, mode, logfmt)
    if errors is not None:
        got = buf.poll_errors()
        assert got == errors, f"poll_errors {got} after round {round_}, " \
            f"expected {errors}"
    return count


def shared_random(seed, name):
    """A random.Random every rank seeds alike (same choices on all ranks)."""
    return random.Random(f"{seed}/{name}")
