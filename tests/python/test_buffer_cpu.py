"""The Buffer without a GPU: availability, construction refused clearly,
and every argument check that runs before the C library is called."""
import os
import subprocess
import sys

import pytest
import torch

import vmep
from vmep import _lib
from vmep.buffer import Buffer, Handle


def test_is_available_false_without_gpu(lib):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert vmep.is_available() is False


def test_is_available_false_without_library(tmp_path, root):
    code = ("import vmep, sys; sys.exit(0 if vmep.is_available() is False "
            "else 1)")
    env = dict(os.environ, VMEP_LIBRARY=str(tmp_path / "missing.so"),
               PYTHONPATH=os.path.join(root, "python"))
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_library_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("VMEP_LIBRARY", str(tmp_path))
    found = _lib.library_candidates()
    assert found[0] == str(tmp_path / "libvmep.so")  # the env var first
    package = os.path.dirname(_lib.__file__)
    beside = os.path.join(os.path.dirname(os.path.dirname(package)),
                          "libvmep.so")
    assert found.index(beside) < found.index("libvmep.so")  # then installed
    assert found[-2:] == ["libvmep.so", "libvmep.so.0"]  # the loader last


def test_missing_library_names_the_places(tmp_path, monkeypatch):
    monkeypatch.setenv("VMEP_LIBRARY", str(tmp_path / "nowhere.so"))
    monkeypatch.setattr(_lib, "library_candidates",
                        lambda: [str(tmp_path / "nowhere.so")])
    _lib.reset_for_tests()
    try:
        with pytest.raises(vmep.LibraryNotFoundError, match="nowhere.so"):
            _lib.load()
    finally:
        _lib.reset_for_tests()


def test_buffer_refused_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(vmep.Error, match="CUDA"):
        vmep.Buffer()


def test_package_surface():
    assert vmep.topk_idx_t is torch.int64
    assert vmep.__version__ == "0.5.0"
    assert isinstance(vmep.Buffer.get_dispatch_config(8), vmep.Config)
    assert vmep.Buffer.get_combine_config(8).num_sms == vmep.Buffer.num_sms
    assert vmep.Config(24).get_rdma_buffer_size_hint(7168, 8) == 0
    assert vmep.HtHandle is vmep.buffer.HtHandle
    vmep.Buffer.set_num_sms(20)
    assert vmep.Buffer.num_sms == 20
    vmep.Buffer.set_num_sms(24)
    ev = vmep.EventOverlap()
    with ev:
        pass  # no event: nothing to wait for


def stub(R=2, T=8):
    """A Buffer as __init__ leaves it, on the CPU, with no C state: every
    check below fails before the library is reached."""
    b = object.__new__(Buffer)
    b._ep, b._group, b._comm_stream, b._combine_buffers = None, None, None, {}
    b._recent, b._destroyed = {}, False
    b.device = torch.device("cpu")
    b.group_size, b.rank, b.zero_copy = R, 0, False
    return b


def call_dispatch(b, x=None, topk=None, T=8, E=4, **kw):
    x = torch.zeros(4, 256, dtype=torch.bfloat16) if x is None else x
    topk = torch.zeros(x.shape[0], 2, dtype=torch.int64) if topk is None \
        else topk
    return b.low_latency_dispatch(x, topk, T, E, **kw)


@pytest.mark.parametrize("kwargs,error,text", [
    (dict(x=torch.zeros(4, 256)), TypeError, "bfloat16"),
    (dict(x=torch.zeros(4, 2, 128, dtype=torch.bfloat16)), ValueError,
     "2 dimensions"),
    (dict(x=torch.zeros(256, 4, dtype=torch.bfloat16).t()), ValueError,
     "contiguous"),
    (dict(topk=torch.zeros(3, 2, dtype=torch.int64)), ValueError, "3 rows"),
    (dict(topk=torch.zeros(4, 2, dtype=torch.float32)), TypeError, "int64"),
    (dict(topk=torch.zeros(4, 17, dtype=torch.int64)), ValueError, "1..16"),
    (dict(use_ue8m0=True, round_scale=False), ValueError, "round_scale"),
    (dict(use_ue8m0=True, round_scale=True), ValueError, "multiple of 512"),
    (dict(async_finish=True, return_recv_hook=True), ValueError, "exclude"),
    (dict(T=2), ValueError, "more than"),
    (dict(E=5), ValueError, "multiple"),
    (dict(cumulative_local_expert_recv_stats=torch.zeros(2)), TypeError,
     "int32"),
])
def test_dispatch_argument_checks(kwargs, error, text):
    with pytest.raises(error, match=text):
        call_dispatch(stub(), **kwargs)


def test_int32_topk_is_accepted():
    b = stub()
    idx = b._topk(torch.zeros(4, 2, dtype=torch.int32), 4)
    assert idx.dtype == torch.int64


def test_combine_argument_checks():
    b = stub()
    x = torch.zeros(2, 16, 256, dtype=torch.bfloat16)
    topk = torch.zeros(4, 2, dtype=torch.int64)
    w = torch.zeros(4, 2, dtype=torch.float32)
    with pytest.raises(TypeError, match="use_logfmt must be a bool"):
        b.low_latency_combine(x, topk, w, None, use_logfmt=2)
    b.zero_copy = True  # the EP buffer's own memory: pulled as bf16
    with pytest.raises(ValueError, match="use_logfmt with zero_copy"):
        b.low_latency_combine(x, topk, w, None, use_logfmt=True,
                              zero_copy=True)
    b.zero_copy = False
    with pytest.raises(ValueError, match="handle"):
        b.low_latency_combine(x, topk, w, (None, None, 8, 256, 4))
    h = Handle((None, None, 8, 256, 4), _lib.EpHandle(), b, 4, 2)
    src_info, layout_range, T, H, E = h  # unpacks as DeepEP's tuple
    assert (T, H, E) == (8, 256, 4)
    with pytest.raises(ValueError, match="expected"):
        b.low_latency_combine(x[:, :8].contiguous(), topk, w, h)
    with pytest.raises(ValueError, match="top-k"):
        b.low_latency_combine(x, topk[:, :1].contiguous(), w, h)
    with pytest.raises(TypeError, match="float32"):
        b.low_latency_combine(x, topk, w.double(), h)
    with pytest.raises(ValueError, match="out has shape"):
        b.low_latency_combine(x, topk, w, h,
                              out=torch.zeros(4, 128, dtype=torch.bfloat16))
    with pytest.raises(vmep.Error, match="destroyed"):
        b.low_latency_combine(x, topk, w, h)
    with pytest.raises(vmep.Error, match="destroyed"):  # LogFMT passes too
        b.low_latency_combine(x, topk, w, h, use_logfmt=True)
    other = stub()
    with pytest.raises(ValueError, match="handle"):
        other.low_latency_combine(x, topk, w, h)


def test_destroy_is_idempotent():
    b = stub()
    b.destroy()
    b.destroy()


def test_nixl_ep_names_are_the_low_latency_calls():
    """NIXL EP's dispatch / combine (topk_idx second) forward to the
    low-latency calls; DeepEP's high-throughput forms of the same names go
    to the high-throughput calls (test_ht_cpu.py)."""
    b = stub()
    with pytest.raises(ValueError, match="more than"):
        b.dispatch(torch.zeros(9, 256, dtype=torch.bfloat16),
                   torch.zeros(9, 2, dtype=torch.int64), 8, 4)
    with pytest.raises(ValueError, match="handle"):
        b.combine(torch.zeros(1, 16, 256, dtype=torch.bfloat16),
                  torch.zeros(4, 2, dtype=torch.int64),
                  torch.zeros(4, 2), None)
    x = torch.zeros(4, 256, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="high-throughput dispatches"):
        b.dispatch(x, (1, 2))
    with pytest.raises(ValueError, match="high-throughput dispatches"):
        b.combine(x, (1, 2, 3, 4, 5), topk_weights=None)


def test_local_buffer_tensor_is_scratch():
    """get_local_buffer_tensor hands out fresh memory, never vmep's."""
    b = stub()
    b.num_rdma_bytes, b.num_nvl_bytes = 1000, 0
    t = b.get_local_buffer_tensor(torch.int8, use_rdma_buffer=True)
    assert t.shape == (1000,) and t.dtype == torch.int8
    t.zero_()
    assert b.get_local_buffer_tensor(torch.int32, offset=8,
                                     use_rdma_buffer=True).shape == (248,)
    assert b.get_local_buffer_tensor(torch.float32).numel() == 0
    assert b.get_local_buffer_tensor(torch.bfloat16, (3, 4)).shape == (3, 4)


def test_a_tuple_of_a_handles_parts_stands_for_it():
    """DeepEP's handle is a plain tuple: one rebuilt from a recent Handle's
    parts finds it (by src_info); anything else is refused."""
    from vmep.buffer import RECENT_HANDLES, Handle
    b = stub()
    handles = []
    for i in range(RECENT_HANDLES + 1):
        src_info = torch.zeros(2, 16, dtype=torch.int32)
        h = Handle((src_info, torch.zeros(2, 2), 8, 256, 4), None, b, 3, 2)
        b._remember(h)  # as dispatch does
        handles.append(h)
    last = handles[-1]
    assert b._check_handle(last) is last
    assert b._check_handle(tuple(last)) is last
    assert b._check_handle(list(last)) is last
    for bad in [tuple(last[:4]) + (8,), tuple(handles[0]), (1, 2, 3, 4, 5),
                "handle", None]:
        with pytest.raises(ValueError, match="handle must be"):
            b._check_handle(bad)
    other = stub()
    with pytest.raises(ValueError, match="handle must be"):
        other._check_handle(last)  # another buffer's


def test_wait_cost_statistics_checked():
    """dispatch/combine_wait_recv_cost_stats: int64, contiguous, on the
    buffer's device, at least R elements ([R] or DeepEP's [R, R])."""
    b = stub(R=4)
    assert b._wait_stats(None, "w") is None
    for good in (torch.zeros(4, dtype=torch.int64),
                 torch.zeros(4, 4, dtype=torch.int64)):
        assert b._wait_stats(good, "w") is good
    for bad, error, text in [
            ([0, 0, 0, 0], TypeError, "torch.Tensor"),
            (torch.zeros(4, dtype=torch.int32), TypeError, "int64"),
            (torch.zeros(3, dtype=torch.int64), ValueError, "fewer than"),
            (torch.zeros(4, 2, dtype=torch.int64).t(), ValueError,
             "contiguous")]:
        with pytest.raises(error, match=text):
            b._wait_stats(bad, "dispatch_wait_recv_cost_stats")


class Launches:
    """The C calls of dispatch and combine replaced (on every Buffer; bound
    methods of this, so they see no Buffer): their args structs are kept,
    the EP buffer is a token and the launch stream None."""

    def __init__(self, monkeypatch):
        self.dispatches, self.combines = [], []
        for name, fn in [
                ("_ensure_ep", lambda b, *a, **k: "ep"),
                ("_live_ep", lambda b: "ep"),
                ("_launch_stream", lambda b, async_finish: (None, None)),
                ("_launch_dispatch", self._dispatch),
                ("_launch_combine", self._combine)]:
            monkeypatch.setattr(Buffer, name, fn)

    def _dispatch(self, ep, args, recv, stream_ptr):
        self.dispatches.append(args)
        return _lib.EpHandle(parity=len(self.dispatches) % 2,
                             num_tokens=args.num_tokens,
                             num_topk=args.num_topk,
                             call=len(self.dispatches))

    def _combine(self, ep, args, c_handle, recv, stream_ptr):
        self.combines.append(args)


@pytest.fixture
def launches(monkeypatch):
    return Launches(monkeypatch)


def weighted_dispatch(b, n=4, K=2):
    """A bf16 dispatch of n tokens given topk_weights: (handle, weights)."""
    x = torch.zeros(n, 256, dtype=torch.bfloat16)
    w = torch.rand(n, K)
    _, _, handle, _, _ = call_dispatch(b, x, torch.zeros(n, K,
                                                         dtype=torch.int64),
                                       use_fp8=False, topk_weights=w)
    return handle, w


def test_dispatch_topk_weights_reach_c(launches):
    b = stub()
    handle, w = weighted_dispatch(b)
    assert launches.dispatches[-1].topk_weights == w.data_ptr()
    assert handle.topk_weights is w and len(handle) == 5
    _, _, plain, _, _ = call_dispatch(b, use_fp8=False)
    assert launches.dispatches[-1].topk_weights is None  # NULL
    assert plain.topk_weights is None
    # n = 0: nothing to weigh (each rank chooses for its own tokens)
    empty, _ = weighted_dispatch(b, n=0)
    args = launches.dispatches[-1]
    assert args.topk_weights is None and args.x is None
    assert empty.topk_weights is not None
    # NIXL EP's name, topk_idx second: the low-latency call
    b.dispatch(torch.zeros(4, 256, dtype=torch.bfloat16),
               torch.zeros(4, 2, dtype=torch.int64), 8, 4, use_fp8=False,
               topk_weights=w)
    assert launches.dispatches[-1].topk_weights == w.data_ptr()


@pytest.mark.parametrize("w,error,text", [
    ([[0.5, 0.5]] * 4, TypeError, "topk_weights must be a torch.Tensor"),
    (torch.zeros(4, 2, dtype=torch.float64), TypeError,
     "topk_weights must be torch.float32"),
    (torch.zeros(4, 2, dtype=torch.bfloat16), TypeError,
     "topk_weights must be torch.float32"),
    (torch.zeros(8), ValueError, "topk_weights must have 2 dimensions"),
    (torch.zeros(3, 2), ValueError, r"topk_weights has shape \(3, 2\)"),
    (torch.zeros(4, 3), ValueError, r"topk_weights has shape \(4, 3\)"),
    (torch.zeros(2, 4).t(), ValueError, "topk_weights must be contiguous"),
    (torch.zeros(4, 2, device="meta"), ValueError, "topk_weights is on meta"),
])
def test_dispatch_topk_weights_checked(launches, w, error, text):
    with pytest.raises(error, match=text):
        call_dispatch(stub(), topk_weights=w)
    assert not launches.dispatches


def test_combine_of_a_weighted_dispatch(launches):
    """Reduced at the expert side: C gets NULL weights; the caller passes
    None or the dispatch's own tensor; zero_copy works either way (the
    expert ranks reduce from the zero-copy buffer)."""
    b = stub()
    handle, w = weighted_dispatch(b)
    x = torch.zeros(2, 16, 256, dtype=torch.bfloat16)
    topk = torch.zeros(4, 2, dtype=torch.int64)
    for weights, h in [(None, handle), (w, handle), (w, tuple(handle))]:
        b.low_latency_combine(x, topk, weights, h)
        assert launches.combines[-1].topk_weights is None
        assert launches.combines[-1].expert_out == x.data_ptr()
    launched = len(launches.combines)
    for other in (w.clone(), w[:, :1], torch.zeros(4, 2, dtype=torch.int32)):
        with pytest.raises(ValueError, match="topk_weights: the dispatch was "
                           "given topk_weights.*same tensor or None"):
            b.low_latency_combine(x, topk, other, handle)
    assert len(launches.combines) == launched
    b.low_latency_combine(x, topk, None, handle, zero_copy=True)
    args = launches.combines[-1]
    assert args.topk_weights is None
    assert args.expert_out == \
        b.get_next_low_latency_combine_buffer(handle).data_ptr()
    # Buffer(zero_copy=True): the EP buffer's own area, reduced from there
    area = torch.zeros(2, 16, 256, dtype=torch.bfloat16)
    b.zero_copy = True
    b._zero_copy_buffer = lambda c_handle, shape: area
    b.low_latency_combine(x, topk, w, handle, zero_copy=True)
    args = launches.combines[-1]
    assert args.topk_weights is None and args.expert_out == area.data_ptr()


def test_combine_of_an_unweighted_dispatch_takes_weights(launches):
    b = stub()
    _, _, handle, _, _ = call_dispatch(b, use_fp8=False)
    x = torch.zeros(2, 16, 256, dtype=torch.bfloat16)
    topk = torch.zeros(4, 2, dtype=torch.int64)
    w = torch.rand(4, 2)
    b.low_latency_combine(x, topk, w, handle)
    assert launches.combines[-1].topk_weights == w.data_ptr()
    with pytest.raises(TypeError, match="topk_weights must be a torch"):
        b.low_latency_combine(x, topk, None, handle)
