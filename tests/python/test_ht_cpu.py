"""DeepEP's high-throughput calls of vmep.Buffer without a GPU: the fake
libvmep of test_elastic_cpu.py, given high-throughput entry points that
record their arguments and write counts, and a Buffer whose tensors live on
the CPU (the C calls see host addresses; streams and the one host read are
replaced). What is checked: which calls dispatch / combine route where,
every argument check, what reaches C (phases, capacities, pointers, the
cached handle), the shapes, dtypes and order of what comes back, the
layout computed in torch before the EP buffer exists, the EP buffer's T
from num_nvl_bytes, and the refusals (too many tokens, capture without
num_worst_tokens, a library without the calls). No kernel runs here:
gpu_ht_prefill checks the data on a GPU.
"""
import ctypes

import pytest
import torch

import vmep
from vmep import _lib
from vmep._runtime import Runtime
from vmep.buffer import Buffer
from vmep.ht import COUNTS_AT, HighThroughput, HtHandle

from ht_reference import layout_by_loops
from test_elastic_cpu import FakeC

H, K, E, R = 256, 4, 8, 2
L = E // R
BASE, PER_TOKEN = 1 << 16, K * H * 4  # the fake's EP buffer size


def ints(ptr, n, ctype=ctypes.c_int32):
    return (ctype * n).from_address(ptr)


class FakeHt(FakeC):
    """FakeC with the high-throughput entry points: vmep_ep_buffer_bytes
    is BASE + T * K * H * 4; a send phase writes N = `received` and the
    per-expert counts 10, 11, ...; every call's arguments are kept."""

    def __init__(self):
        super().__init__()
        self.received = 5
        self.args = []  # (name, {field: value}) of the HT calls
        self.call = 0

    def c_ep_buffer_bytes(self, addr, num_ranks, out):
        cfg = _lib.EpConfig.from_address(addr)
        out._obj.value = BASE + cfg.max_tokens_per_rank * cfg.max_topk * \
            cfg.hidden * 4
        return 0

    def _keep(self, name, args):
        obj = args._obj
        self.args.append((name, {f: getattr(obj, f) for f, _ in
                                 obj._fields_}))
        return obj

    def c_ep_ht_layout(self, ep, topk, n, k, per_rank, per_expert, in_rank,
                       stream):
        ints(per_rank, R)[:] = [7] * R
        ints(per_expert, E)[:] = list(range(E))
        return 0

    def c_ep_ht_dispatch(self, ep, args, phases, stream, handle_out):
        a = self._keep("dispatch", args)
        if a.cached is None and phases & _lib.EP_SEND:
            ints(a.num_recv, 1)[0] = self.received
            ints(a.recv_expert_count, L)[:] = [10 + l for l in range(L)]
        self.call += 1
        h = handle_out._obj
        h.call, h.num_tokens, h.num_topk = self.call, a.num_tokens, a.num_topk
        if a.cached is not None:
            old = _lib.HtHandle.from_address(a.cached)
            h.num_recv, h.recv_src, h.capacity = old.num_recv, \
                old.recv_src, old.capacity
        else:
            h.num_recv, h.recv_src, h.capacity = a.num_recv, a.recv_src, \
                a.capacity
        return 0

    def c_ep_ht_dispatch_recv(self, ep, args, handle, stream):
        a = self._keep("dispatch_recv", args)
        handle._obj.recv_src, handle._obj.capacity = a.recv_src, a.capacity
        return 0

    def c_ep_ht_combine(self, ep, args, handle, stream):
        self._keep("combine", args)
        self.combined_call = handle._obj.call
        return 0

    def c_ep_ht_combine_buffer(self, ep, handle, buf_out, rows_out):
        """The zero-copy buffer: `in_place`'s memory, for handle call
        `in_place_call`."""
        self.in_place_call = handle._obj.call
        buf_out._obj.value = self.in_place.data_ptr()
        return 0


@pytest.fixture
def fake(monkeypatch):
    """FakeHt behind the real Library; torch.cuda saying a device exists;
    a Buffer's tensors on the CPU (the C config still names device 0), its
    launch stream None and its one host read a plain tolist()."""
    c = FakeHt()
    library = _lib.Library("fake-libvmep.so", cdll=c)
    monkeypatch.setattr(_lib, "load", lambda: library)
    for name, value in [("is_available", lambda: True),
                        ("is_current_stream_capturing", lambda: False),
                        ("current_device", lambda: 0),
                        ("synchronize", lambda *a: None)]:
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.delenv("VMEP_STORE_ADDR", raising=False)
    monkeypatch.setattr(HighThroughput, "_ht_stream",
                        lambda self, async_finish, event: (None, None))
    monkeypatch.setattr(HighThroughput, "_host_counts",
                        lambda self, counts, stream: counts.tolist())
    config = Runtime._config

    def on_device_0(self, *args):
        self.device = torch.device("cuda", 0)
        try:
            return config(self, *args)
        finally:
            self.device = torch.device("cpu")

    monkeypatch.setattr(Runtime, "_config", on_device_0)
    return c


def cpu_buffer(num_nvl_bytes=BASE + 64 * PER_TOKEN, **kwargs):
    b = Buffer(None, num_nvl_bytes, **kwargs)
    b.device = torch.device("cpu")
    return b


def inputs(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, H, generator=g).to(torch.bfloat16)
    idx = torch.rand(n, E, generator=g).argsort(dim=1)[:, :K].contiguous()
    w = torch.rand(n, K, generator=g)
    return x, idx, w


# ---- routing of the shared names ---------------------------------------

def test_dispatch_and_combine_route_by_their_arguments(fake, monkeypatch):
    """NIXL EP's low-latency forms (topk_idx second, or a keyword only
    they take) and DeepEP's high-throughput forms reach their own calls."""
    seen = []
    for name in ("low_latency_dispatch", "high_throughput_dispatch",
                 "low_latency_combine", "high_throughput_combine"):
        monkeypatch.setattr(Buffer, name,
                            lambda self, *a, _n=name, **k: seen.append(_n))
    b = cpu_buffer()
    x, idx, w = inputs()
    for call, expected in [
            (lambda: b.dispatch(x, idx, 8, E), "low_latency_dispatch"),
            (lambda: b.dispatch(x, topk_idx=idx,
                                num_max_dispatch_tokens_per_rank=8,
                                num_experts=E), "low_latency_dispatch"),
            (lambda: b.dispatch(x, topk_idx=idx, use_fp8=False),
             "low_latency_dispatch"),
            (lambda: b.dispatch(x, topk_idx=idx, topk_weights=w),
             "high_throughput_dispatch"),
            (lambda: b.dispatch(x, None, None, None, None, None, idx),
             "high_throughput_dispatch"),
            (lambda: b.dispatch(x, handle=object()),
             "high_throughput_dispatch"),
            (lambda: b.combine(x, idx, w, None), "low_latency_combine"),
            (lambda: b.combine(x, topk_idx=idx, topk_weights=w, handle=None),
             "low_latency_combine"),
            (lambda: b.combine(x, None, out=x), "low_latency_combine"),
            (lambda: b.combine(x, object()), "high_throughput_combine"),
            (lambda: b.combine(x, handle=object(), topk_weights=w,
                               bias=x), "high_throughput_combine")]:
        call()
        assert seen.pop() == expected


def test_the_old_refusal_is_gone(fake):
    b = cpu_buffer()
    x, idx, w = inputs()
    for call in (lambda: b.get_dispatch_layout(idx, E),
                 lambda: b.dispatch(x, topk_idx=idx, topk_weights=w,
                                    num_tokens_per_expert=torch.zeros(
                                        E, dtype=torch.int32))):
        call()  # no NotImplementedError


# ---- get_dispatch_layout ---------------------------------------------------

def test_layout_before_the_ep_buffer_is_computed_in_torch(fake):
    b = cpu_buffer()
    x, idx, _ = inputs(n=9)
    idx[0, 1], idx[2, 0], idx[3, 3] = -1, E + 3, -7  # none, and 2 invalid
    idx[4] = -1  # a token with no expert
    per_rank, rdma, per_expert, in_rank, event = b.get_dispatch_layout(
        idx.to(torch.int32), E)  # int32 is widened
    assert rdma is None and event.event is None
    assert per_rank.dtype == per_expert.dtype == torch.int32
    assert in_rank.dtype == torch.bool and in_rank.is_contiguous()
    assert tuple(in_rank.shape) == (9, R)
    want = layout_by_loops(idx, E, R)
    assert per_rank.tolist() == want[0]
    assert per_expert.tolist() == want[1]
    assert in_rank.tolist() == want[2]
    assert not fake.named("vmep_ep_ht_layout")
    assert b._ep is None and b._layout_experts == E
    empty = b.get_dispatch_layout(torch.zeros(0, K, dtype=torch.int64), E)
    assert empty[0].tolist() == [0] * R and tuple(empty[3].shape) == (0, R)


def test_layout_with_the_ep_buffer_is_vmep_ep_ht_layout(fake):
    b = cpu_buffer(num_experts=E, num_max_dispatch_tokens_per_rank=64,
                   hidden=H)
    x, idx, _ = inputs(n=3)
    per_rank, _, per_expert, in_rank, _ = b.get_dispatch_layout(idx, E)
    (args,) = fake.named("vmep_ep_ht_layout")
    assert args[1] == idx.data_ptr() and args[2:4] == (3, K)
    assert args[4:7] == (per_rank.data_ptr(), per_expert.data_ptr(),
                         in_rank.data_ptr())
    assert per_rank.tolist() == [7] * R  # what the fake wrote
    assert per_expert.tolist() == list(range(E))
    with pytest.raises(ValueError, match="the buffer serves 8"):
        b.get_dispatch_layout(idx, 2 * E)
    # More tokens than the buffer's T (64): no dispatch takes them, but the
    # layout is local, so torch computes it as before the buffer existed.
    _, many, _ = inputs(n=65, seed=2)
    per_rank, _, per_expert, in_rank, _ = b.get_dispatch_layout(many, E)
    assert len(fake.named("vmep_ep_ht_layout")) == 1
    want = layout_by_loops(many, E, R)
    assert per_rank.tolist() == want[0]
    assert per_expert.tolist() == want[1]
    assert in_rank.tolist() == want[2]


@pytest.mark.parametrize("kwargs,error,text", [
    (dict(num_experts=7), ValueError, "multiple of the 2 ranks"),
    (dict(num_experts=0), ValueError, "positive"),
    (dict(num_experts=8.0), TypeError, "int"),
    (dict(topk_idx=[[0, 1]]), TypeError, "torch.Tensor"),
    (dict(topk_idx=torch.zeros(3, 17, dtype=torch.int64)), ValueError,
     "1..16"),
    (dict(topk_idx=torch.zeros(3, 2)), TypeError, "int64"),
    (dict(allocate_on_comm_stream=True), ValueError, "previous_event"),
    (dict(previous_event=object()), TypeError, "EventOverlap"),
])
def test_layout_argument_checks(fake, kwargs, error, text):
    b = cpu_buffer()
    call = dict(topk_idx=torch.zeros(3, 2, dtype=torch.int64), num_experts=E)
    call.update(kwargs)
    with pytest.raises(error, match=text):
        b.get_dispatch_layout(**call)


# ---- dispatch ---------------------------------------------------------------

def test_dispatch_reads_n_once_and_receives_exactly_n_rows(fake):
    b = cpu_buffer()
    x, idx, w = inputs()
    per_rank, _, per_expert, in_rank, _ = b.get_dispatch_layout(idx, E)
    result = b.dispatch(x, None, per_rank, None, in_rank, per_expert, idx, w,
                        expert_alignment=4, config=vmep.Config(6))
    recv_x, recv_idx, recv_w, counts, handle, event = result
    N = fake.received
    assert tuple(recv_x.shape) == (N, H) and recv_x.dtype == torch.bfloat16
    assert tuple(recv_idx.shape) == (N, K) and recv_idx.dtype == torch.int64
    assert tuple(recv_w.shape) == (N, K) and recv_w.dtype == torch.float32
    assert counts == [10, 11, 12, 13]
    assert all(type(c) is int for c in counts)
    assert isinstance(handle, HtHandle) and event.event is None
    assert (handle.rows, handle.num_tokens, handle.num_topk, handle.hidden) \
        == (N, 6, K, H)
    assert handle.num_recv_tokens_per_expert.tolist() == counts
    # the EP buffer: made by this call, T from num_nvl_bytes (64 tokens)
    cfg = fake.configs[-1]
    assert (cfg["max_tokens_per_rank"], cfg["hidden"], cfg["num_experts"],
            cfg["max_topk"], cfg["num_sms"]) == (64, H, E, K, 6)
    # C saw the send phase alone, then the receive phase into N rows
    (_, send), (_, recv) = fake.args
    assert (send["num_tokens"], send["num_topk"], send["use_fp8"],
            send["expert_alignment"]) == (6, K, 0, 4)
    assert (send["x"], send["topk_idx"], send["topk_weights"]) == (
        x.data_ptr(), idx.data_ptr(), w.data_ptr())
    assert send["capacity"] == 0 and send["recv_x"] is None
    assert send["recv_expert_count"] == send["num_recv"] + 4 * COUNTS_AT
    assert recv["capacity"] == N and recv["cached"] is None
    assert (recv["recv_x"], recv["recv_topk_idx"], recv["recv_topk_weights"],
            recv["recv_src"]) == (
        recv_x.data_ptr(), recv_idx.data_ptr(), recv_w.data_ptr(),
        handle.recv_src.data_ptr())
    sends = [a for n, a in fake.calls if n == "vmep_ep_ht_dispatch"]
    assert sends[0][2] == _lib.EP_SEND
    assert handle.c_handle.recv_src == handle.recv_src.data_ptr()


def test_dispatch_of_nothing_received(fake):
    b = cpu_buffer()
    fake.received = 0
    x, idx, _ = inputs(n=0)
    recv_x, recv_idx, recv_w, counts, handle, _ = b.dispatch(
        x, topk_idx=idx, num_tokens_per_expert=torch.zeros(
            E, dtype=torch.int32))
    assert tuple(recv_x.shape) == (0, H) and recv_w is None
    recv = fake.args[-1][1]
    assert recv["capacity"] == 0 and recv["recv_x"] is not None  # never NULL
    assert recv["topk_weights"] is None and recv["recv_topk_weights"] is None
    assert fake.args[0][1]["x"] is None  # n = 0: NULL, as low-latency


def test_num_worst_tokens_needs_no_host_read(fake, monkeypatch):
    def no_read(*args):
        raise AssertionError("read N on the host")

    monkeypatch.setattr(HighThroughput, "_host_counts", no_read)
    b = cpu_buffer()
    x, idx, w = inputs()
    recv_x, recv_idx, recv_w, counts, handle, _ = b.dispatch(
        x, topk_idx=idx, topk_weights=w, num_worst_tokens=11,
        num_tokens_per_expert=torch.zeros(E, dtype=torch.int32))
    assert counts == []  # as DeepEP with num_worst_tokens
    assert tuple(recv_x.shape) == (11, H) and handle.rows == 11
    assert recv_idx.eq(-1).all() and recv_w.eq(0).all()  # not written here
    (name, args), = fake.args
    assert args["capacity"] == 11
    sends = [a for n, a in fake.calls if n == "vmep_ep_ht_dispatch"]
    assert sends[0][2] == _lib.EP_SEND_RECV
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing",
                        lambda: True)
    b.dispatch(x, topk_idx=idx, num_worst_tokens=11)  # capturable
    with pytest.raises(vmep.Error, match="pass num_worst_tokens"):
        b.dispatch(x, topk_idx=idx)


def test_cached_dispatch_reuses_the_handle(fake):
    b = cpu_buffer()
    x, idx, w = inputs()
    *_, handle, _ = b.dispatch(x, topk_idx=idx, topk_weights=w,
                               num_tokens_per_expert=torch.zeros(
                                   E, dtype=torch.int32))
    first = ctypes.addressof(handle.c_handle)
    old_call = handle.c_handle.call
    x2 = torch.randn(6, H).to(torch.bfloat16)
    recv_x, a, b_, c, same, event = b.dispatch(x2, handle)
    assert (a, b_, c) == (None, None, None) and same is handle
    assert tuple(recv_x.shape) == (fake.received, H)
    args = fake.args[-1][1]
    assert args["cached"] == first and args["capacity"] == handle.rows
    assert args["x"] == x2.data_ptr() and args["num_topk"] == K
    assert args["topk_idx"] is None and args["recv_topk_idx"] is None
    assert handle.c_handle.call == old_call  # handles do not expire
    assert handle.c_handle.recv_src == handle.recv_src.data_ptr()
    for kwargs, text in [(dict(topk_idx=idx), "takes no topk_idx"),
                         (dict(topk_weights=w), "takes no topk_idx")]:
        with pytest.raises(ValueError, match=text):
            b.dispatch(x2, handle, **kwargs)
    with pytest.raises(ValueError, match="the handle's dispatch had"):
        b.dispatch(x2[:5].contiguous(), handle)
    with pytest.raises(ValueError, match="high-throughput dispatches"):
        b.dispatch(x2, handle=object())
    with pytest.raises(ValueError, match="high-throughput dispatches"):
        cpu_buffer().dispatch(x2, handle=handle)  # another buffer's


@pytest.mark.parametrize("kwargs,error,text", [
    (dict(x=torch.zeros(6, H)), TypeError, "bfloat16"),
    (dict(x=torch.zeros(6, 2, H, dtype=torch.bfloat16)), ValueError,
     "2 dimensions"),
    (dict(x=(torch.zeros(6, H, dtype=torch.bfloat16),)), ValueError,
     "has 1 items"),
    (dict(topk_idx=None), ValueError, "needs topk_idx"),
    (dict(topk_idx=torch.zeros(5, K, dtype=torch.int64)), ValueError,
     "5 rows"),
    (dict(topk_weights=torch.zeros(6, K, dtype=torch.float64)), TypeError,
     "float32"),
    (dict(topk_weights=torch.zeros(6, K + 1)), ValueError, "expected"),
    (dict(expert_alignment=0), ValueError, "positive"),
    (dict(expert_alignment=True), TypeError, "int"),
    (dict(num_worst_tokens=-1), ValueError, "0 or more"),
    (dict(config=object()), TypeError, "vmep.Config"),
    (dict(allocate_on_comm_stream=True, async_finish=True), ValueError,
     "previous_event"),
    (dict(num_tokens_per_expert=torch.zeros(E, dtype=torch.int64)),
     TypeError, "int32"),
    (dict(num_tokens_per_expert=torch.zeros(E - 1, dtype=torch.int32)),
     ValueError, "multiple of the 2 ranks"),
    (dict(num_tokens_per_rank=torch.zeros(R + 1, dtype=torch.int32)),
     ValueError, "expected 2"),
    (dict(is_token_in_rank=torch.zeros(6, R, dtype=torch.int32)), TypeError,
     "bool"),
    (dict(is_token_in_rank=torch.zeros(5, R, dtype=torch.bool)), ValueError,
     "expected"),
    (dict(num_tokens_per_rdma_rank=[1, 2]), TypeError, "rdma"),
])
def test_dispatch_argument_checks(fake, kwargs, error, text):
    b = cpu_buffer()
    x, idx, w = inputs()
    call = dict(x=x, topk_idx=idx, topk_weights=w,
                num_tokens_per_expert=torch.zeros(E, dtype=torch.int32))
    call.update(kwargs)
    with pytest.raises(error, match=text):
        b.high_throughput_dispatch(**call)
    assert not fake.named("vmep_ep_create")  # before any collective
    assert not fake.args


def test_fp8_x(fake):
    b = cpu_buffer()
    q = torch.zeros(6, H, dtype=torch.uint8)
    scales = torch.zeros(6, H // 128)
    x, idx, _ = inputs()
    if getattr(torch, "float8_e4m3fn", None) is None:
        with pytest.raises(vmep.Error, match="float8_e4m3fn"):
            b.dispatch((q, scales), topk_idx=idx)
        return
    q = q.view(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="the scales"):
        b.dispatch((q, scales[:, :1].contiguous()), topk_idx=idx)
    (recv_q, recv_s), *_ = b.dispatch(
        (q, scales), topk_idx=idx,
        num_tokens_per_expert=torch.zeros(E, dtype=torch.int32))
    assert recv_q.dtype == torch.float8_e4m3fn
    assert tuple(recv_s.shape) == (fake.received, H // 128)
    send, recv = fake.args[0][1], fake.args[1][1]
    assert send["use_fp8"] == 1 and send["x_scales"] == scales.data_ptr()
    assert recv["recv_scales"] == recv_s.data_ptr()


def test_the_number_of_experts(fake):
    x, idx, _ = inputs()
    with pytest.raises(ValueError, match="number of experts is unknown"):
        cpu_buffer().dispatch(x, topk_idx=idx)
    b = cpu_buffer()
    b.get_dispatch_layout(idx, E)  # remembered
    b.dispatch(x, topk_idx=idx)
    assert fake.configs[-1]["num_experts"] == E
    cpu_buffer(num_experts=E).dispatch(x, topk_idx=idx)  # the keyword
    assert fake.configs[-1]["num_experts"] == E
    with pytest.raises(ValueError, match="the buffer serves 8 experts"):
        b.dispatch(x, topk_idx=idx, num_tokens_per_expert=torch.zeros(
            2 * E, dtype=torch.int32))


# ---- the EP buffer's T ------------------------------------------------------

def test_t_is_the_largest_that_fits_num_nvl_bytes(fake):
    x, idx, _ = inputs()
    per_expert = torch.zeros(E, dtype=torch.int32)
    for budget, T in [(BASE + 37 * PER_TOKEN, 37),
                      (BASE + 37 * PER_TOKEN - 1, 36),
                      (BASE + PER_TOKEN, 1),
                      (BASE + 70000 * PER_TOKEN, 65535)]:
        b = cpu_buffer(budget)
        if T < 6:
            with pytest.raises(ValueError, match=f"6 tokens, more than T={T}"
                               f", the largest"):
                b.dispatch(x, topk_idx=idx, num_tokens_per_expert=per_expert)
            continue
        b.dispatch(x, topk_idx=idx, num_tokens_per_expert=per_expert)
        assert fake.configs[-1]["max_tokens_per_rank"] == T
    creates = len(fake.named("vmep_ep_create"))
    with pytest.raises(vmep.Error, match="num_nvl_bytes=0 is below"):
        cpu_buffer(0).dispatch(x, topk_idx=idx,
                               num_tokens_per_expert=per_expert)
    assert len(fake.named("vmep_ep_create")) == creates  # no collective


def test_an_existing_ep_buffer_is_used_as_it_is(fake):
    """Made by the shape keywords (or a low-latency call): T is its own,
    num_nvl_bytes plays no part; hidden and experts must match."""
    b = cpu_buffer(0, num_max_dispatch_tokens_per_rank=5, hidden=H,
                   num_experts=E)
    creates = len(fake.named("vmep_ep_create"))
    x, idx, _ = inputs(n=5)
    b.dispatch(x, topk_idx=idx)
    assert len(fake.named("vmep_ep_create")) == creates
    with pytest.raises(ValueError, match="more than T=5, the EP buffer's"):
        b.dispatch(*inputs(n=6)[:1], topk_idx=inputs(n=6)[1])
    with pytest.raises(vmep.Error, match="serves hidden=256"):
        b.dispatch(torch.zeros(5, 2 * H, dtype=torch.bfloat16), topk_idx=idx)


# ---- combine ----------------------------------------------------------------

def dispatched(fake, b, n=6, worst=0):
    x, idx, w = inputs(n=n)
    recv_x, recv_idx, recv_w, _, handle, _ = b.dispatch(
        x, topk_idx=idx, topk_weights=w, num_worst_tokens=worst,
        num_tokens_per_expert=torch.zeros(E, dtype=torch.int32))
    return recv_x, recv_w, handle


def test_combine(fake):
    b = cpu_buffer()
    recv_x, recv_w, handle = dispatched(fake, b)
    bias = (torch.zeros(6, H, dtype=torch.bfloat16),
            torch.ones(6, H, dtype=torch.bfloat16))
    out, out_w, event = b.combine(recv_x, handle, recv_w, bias)
    assert tuple(out.shape) == (6, H) and out.dtype == torch.bfloat16
    assert tuple(out_w.shape) == (6, K) and out_w.dtype == torch.float32
    assert event.event is None
    args = fake.args[-1][1]
    assert (args["x"], args["topk_weights"], args["bias0"], args["bias1"],
            args["out"], args["out_topk_weights"]) == (
        recv_x.data_ptr(), recv_w.data_ptr(), bias[0].data_ptr(),
        bias[1].data_ptr(), out.data_ptr(), out_w.data_ptr())
    assert fake.combined_call == handle.c_handle.call
    out, out_w, _ = b.combine(recv_x, handle, bias=bias[1])
    args = fake.args[-1][1]
    assert out_w is None and args["out_topk_weights"] is None
    assert args["bias0"] == bias[1].data_ptr() and args["bias1"] is None
    b.combine(recv_x, handle, bias=(None, bias[0]), config=vmep.Config())
    assert fake.args[-1][1]["bias0"] is None
    worst_x, _, worst = dispatched(fake, b, worst=9)
    out, _, _ = b.combine(worst_x, worst)  # the num_worst_tokens rows
    assert tuple(out.shape) == (6, H)


def test_combine_in_place(fake, monkeypatch):
    """get_high_throughput_combine_buffer views what C hands out, [rows,
    H], for the handle's C dispatch; combine passes it on as x."""
    b = cpu_buffer()
    recv_x, _, handle = dispatched(fake, b)
    fake.in_place = torch.zeros(64 * K, H, dtype=torch.bfloat16)
    monkeypatch.setattr(
        "vmep._runtime._device_view", lambda ptr, shape, device:
        fake.in_place[:shape[0]] if ptr == fake.in_place.data_ptr() else None)
    zc = b.get_high_throughput_combine_buffer(handle)
    assert fake.in_place_call == handle.c_handle.call
    assert tuple(zc.shape) == tuple(recv_x.shape) == (handle.rows, H)
    zc.copy_(recv_x)
    b.combine(zc, handle)
    assert fake.args[-1][1]["x"] == fake.in_place.data_ptr()
    with pytest.raises(ValueError, match="high-throughput dispatches"):
        b.get_high_throughput_combine_buffer(object())


@pytest.mark.parametrize("kwargs,error,text", [
    (dict(x=torch.zeros(4, H, dtype=torch.bfloat16)), ValueError,
     "dispatch's rows"),
    (dict(x=torch.zeros(5, H)), TypeError, "bfloat16"),
    (dict(handle=object()), ValueError, "high-throughput dispatches"),
    (dict(topk_weights=torch.zeros(5, K + 1)), ValueError, "expected"),
    (dict(bias=torch.zeros(6, H)), TypeError, "bfloat16"),
    (dict(bias=torch.zeros(5, H, dtype=torch.bfloat16)), ValueError,
     r"bias\[0\] has shape"),
    (dict(bias=[None, None]), TypeError, "tuple of two"),
    (dict(bias=(None, None, None)), TypeError, "tuple of two"),
    (dict(config=vmep.Config), TypeError, "vmep.Config"),
    (dict(allocate_on_comm_stream=True), ValueError, "previous_event"),
])
def test_combine_argument_checks(fake, kwargs, error, text):
    b = cpu_buffer()
    recv_x, recv_w, handle = dispatched(fake, b)
    calls = len(fake.args)
    call = dict(x=recv_x, handle=handle)
    call.update(kwargs)
    with pytest.raises(error, match=text):
        b.high_throughput_combine(**call)
    assert len(fake.args) == calls


def test_destroyed_buffer(fake):
    b = cpu_buffer()
    recv_x, _, handle = dispatched(fake, b)
    b.destroy()
    with pytest.raises(vmep.Error, match="destroyed"):
        b.combine(recv_x, handle)
    with pytest.raises(vmep.Error, match="destroyed"):
        b.dispatch(torch.zeros(6, H, dtype=torch.bfloat16), handle)


def test_a_library_without_the_calls(fake):
    """A libvmep built before the high-throughput calls (0.3) is refused at
    load, naming every call it lacks and why, never bound in part."""

    class Old(FakeHt):
        def __getattr__(self, name):
            if name.startswith("vmep_ep_ht_"):
                raise AttributeError(name)
            return super().__getattr__(name)

    with pytest.raises(AttributeError) as info:
        _lib.Library("old-libvmep.so", cdll=Old())
    text = str(info.value)
    for name in _lib._HT_PROTOTYPES:
        assert name in text
    assert "built before the high-throughput calls" in text
    assert "elastic" not in text


# ---- Config -----------------------------------------------------------------

def test_config():
    c = vmep.Config(24, 6, 256, 6, 128)
    assert (c.num_sms, c.num_max_nvl_chunked_send_tokens,
            c.num_max_nvl_chunked_recv_tokens,
            c.num_max_rdma_chunked_send_tokens,
            c.num_max_rdma_chunked_recv_tokens) == (24, 6, 256, 6, 128)
    assert c.num_max_tokens_per_rank == 4096
    assert "num_sms=24" in repr(c)
    for args, kwargs, error, text in [
            ((0,), {}, ValueError, "num_sms=0"),
            ((-2,), {}, ValueError, "num_sms=-2"),
            ((2.0,), {}, TypeError, "num_sms must be an int"),
            ((True,), {}, TypeError, "num_sms must be an int"),
            ((20, 0), {}, ValueError, "num_max_nvl_chunked_send_tokens"),
            ((20, 6, 256, 6, None), {}, TypeError,
             "num_max_rdma_chunked_recv_tokens"),
            ((), dict(num_max_tokens_per_rank=0), ValueError,
             "num_max_tokens_per_rank")]:
        with pytest.raises(error, match=text):
            vmep.Config(*args, **kwargs)
    with pytest.raises(TypeError):
        vmep.Config(20, 6, 256, 6, 256, 4096)  # vmep's option: keyword-only
    assert c.get_rdma_buffer_size_hint(7168 * 2, 8) == 0
    with pytest.raises(ValueError, match="num_ranks"):
        c.get_rdma_buffer_size_hint(7168 * 2, 0)


def test_default_configs_carry_buffer_num_sms():
    for get in (Buffer.get_dispatch_config, Buffer.get_combine_config):
        assert get(8).num_sms == Buffer.num_sms
        with pytest.raises(ValueError, match="num_ranks"):
            get(0)
    Buffer.set_num_sms(30)
    try:
        assert Buffer.get_dispatch_config(4).num_sms == 30
    finally:
        Buffer.set_num_sms(24)
