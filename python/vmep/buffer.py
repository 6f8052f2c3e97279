"""
vmep.Buffer: the Buffer of DeepEP (low-latency and high-throughput calls)
and NIXL EP, answered by libvmep. Same names, positional order, return
order, shapes and dtypes; vmep-only options are keyword-only. Defaults
differ where vmep needs no setting (group may be None,
low_latency_mode=True, num_qps_per_rank=1).

This file is the facade of the low-latency calls: it takes DeepEP's and
NIXL EP's arguments, checks tensors, allocates outputs from torch's
allocator and hands device pointers and the current CUDA stream on. The
data movement is libvmep's; the group, the EP buffer's lifecycle (created
at the first dispatch, after the ranks compare their shapes), the C calls
and the handles are _runtime.py's, the high-throughput calls ht.py's and
the membership methods membership.py's.
"""
import numbers

import torch

from . import _lib, compat
from ._runtime import RECENT_HANDLES, Handle, Runtime  # noqa: F401
from .errors import Error
from .event import EventHandle, EventOverlap
from .ht import FP8_GROUP, HighThroughput, HtHandle, fp8_dtype  # noqa: F401
from .membership import Membership, capacity


class Buffer(Runtime, Membership, HighThroughput):
    """
    The EP buffer of one rank. Collective over `group` (a
    torch.distributed ProcessGroup), `comm` (an mpi4py communicator), the
    `tcp_store_group` (a torch Store, with `rank`: a group of max_num_ranks
    ranks, or, after update_memory_buffers, of the ranks the first
    connect_ranks names), or, with none of them, vmep's
    own launch environment (vmep-run, torchrun, Open MPI, Slurm). With
    `rank` and `max_num_ranks` and none of them, a new process joins a
    running job (vmep_group_join, not collective) through vmep's store at
    `store_addr` (default VMEP_STORE_ADDR); its EP buffer starts with only
    itself connected, and connect_ranks adds the others. Membership changes
    (connect_ranks, disconnect_ranks, disconnect_dead_ranks) need vmep's
    store: the launch environment or a join; the other groups are fixed.

    num_nvl_bytes bounds the EP buffer that a high-throughput dispatch
    creates: its T (tokens per rank) is the largest whose size fits
    (ht.py). num_rdma_bytes, low_latency_mode, num_qps_per_rank,
    allow_nvlink_for_low_latency_mode, enable_shrink, nvlink_backend and
    disable_ll_nvlink are accepted and ignored (vmep sizes its buffer from
    the shapes, reaches peers through shared memory only and always keeps a
    mask). allow_mnnvl is accepted: ranks of other nodes are mapped through
    fabric handles where both nodes can, else reached through vmep's
    inter-node engine (docs/INTERNODE.md).

    Keyword-only (vmep): timeout_ms (0/None: VMEP_TIMEOUT_MS), after which
    a silent peer is masked; max_num_ranks (elastic capacity R: every shape
    uses R, ranks not connected are masked; config.max_ranks); store_addr
    (a join's "host:port", default VMEP_STORE_ADDR);
    num_max_dispatch_tokens_per_rank, hidden, num_experts, num_topk to
    create the EP buffer now instead of at the first dispatch; zero_copy
    to give the EP buffer its combine buffers (get_next_low_latency_
    combine_buffer then hands out memory that combine reads in place);
    device (default: the current CUDA device).
    """

    num_sms = 24

    def __init__(self, group=None, num_nvl_bytes=0, num_rdma_bytes=0,
                 low_latency_mode=True, num_qps_per_rank=1,
                 allow_nvlink_for_low_latency_mode=True, allow_mnnvl=False,
                 explicitly_destroy=False, enable_shrink=False, comm=None, *,
                 rank=None, tcp_store_group=None, timeout_ms=None,
                 max_num_ranks=None, num_max_dispatch_tokens_per_rank=None,
                 hidden=None, num_experts=None, num_topk=None,
                 zero_copy=False, device=None, nvlink_backend=None,
                 disable_ll_nvlink=False, store_addr=None):
        self._comm_stream = None
        self._init_runtime()
        if not torch.cuda.is_available():
            raise Error("vmep.Buffer needs a CUDA device (torch.cuda is not "
                        "available)")
        if torch.cuda.is_current_stream_capturing():
            raise Error("vmep.Buffer cannot be created while the current "
                        "stream is capturing a CUDA graph: create it before "
                        "capture (creation is collective and allocates)")
        if group is not None and comm is not None:
            raise ValueError("pass group or comm, not both")
        self._lib = _lib.load()
        self.num_nvl_bytes = num_nvl_bytes
        self.num_rdma_bytes = num_rdma_bytes
        self.low_latency_mode = low_latency_mode
        self.explicitly_destroy = explicitly_destroy
        self.enable_shrink = enable_shrink
        self.allow_mnnvl = allow_mnnvl
        self.group = group if group is not None else comm
        self.tcp_store_group = tcp_store_group
        self.timeout_ms = int(timeout_ms or 0)
        self.max_num_ranks = None if max_num_ranks is None else \
            capacity(max_num_ranks)
        self.store_addr = store_addr
        self.zero_copy = bool(zero_copy)
        self.device = torch.device(
            "cuda", torch.cuda.current_device() if device is None else
            torch.device("cuda", device).index)
        if rank is not None and (isinstance(rank, bool) or
                                 not isinstance(rank, numbers.Integral)):
            raise TypeError(f"rank must be an int, not {type(rank).__name__}")
        self.rank = int(rank) if rank is not None else 0
        self.group_size = 0
        self._shape = None
        # (T, H, E, top-k) known before the first dispatch, from the shape
        # keywords and update_memory_buffers: the EP buffer is made from it.
        self._shape_hint = (num_max_dispatch_tokens_per_rank, hidden,
                            num_experts, num_topk)
        self._open_group(group, comm, rank, max_num_ranks, store_addr)

    # ---- DeepEP's static helpers -------------------------------------------

    @staticmethod
    def set_num_sms(new_num_sms):
        """Blocks each vmep kernel uses, for buffers created after this
        (capped to the SMs a rank's share of its GPU has)."""
        if int(new_num_sms) < 1:
            raise ValueError("num_sms must be positive")
        Buffer.num_sms = int(new_num_sms)

    @staticmethod
    def capture():
        """An EventOverlap of an event recorded on the current stream."""
        return EventOverlap(EventHandle())

    @staticmethod
    def get_low_latency_rdma_size_hint(num_max_dispatch_tokens_per_rank,
                                       hidden, num_ranks, num_experts):
        """Bytes of vmep's symmetric buffer per rank for this shape, top-k
        up to 8 (vmep_ep_buffer_bytes). Informational: vmep sizes its
        buffer from the shapes and ignores num_rdma_bytes."""
        return Buffer._bytes("vmep_ep_buffer_bytes",
                             int(num_max_dispatch_tokens_per_rank),
                             int(hidden), num_ranks, int(num_experts), 8)

    get_rdma_size_hint = get_low_latency_rdma_size_hint

    @staticmethod
    def get_deepep_rdma_size_hint(num_max_dispatch_tokens_per_rank, hidden,
                                  num_ranks, num_experts):
        """What DeepEP's low-latency layout takes for the shape
        (vmep_ep_deepep_bytes), for comparison."""
        return Buffer._bytes("vmep_ep_deepep_bytes",
                             int(num_max_dispatch_tokens_per_rank),
                             int(hidden), num_ranks, int(num_experts), 8)

    @staticmethod
    def get_dispatch_config(num_ranks):
        """The Config a high-throughput dispatch uses by default:
        Buffer.num_sms and DeepEP's default chunk sizes (which vmep does
        not read), for any number of ranks."""
        compat.positive_int(num_ranks, "num_ranks")
        return compat.Config(Buffer.num_sms)

    @staticmethod
    def get_combine_config(num_ranks):
        """The Config a high-throughput combine uses by default, as
        get_dispatch_config."""
        compat.positive_int(num_ranks, "num_ranks")
        return compat.Config(Buffer.num_sms)

    @property
    def runtime(self):
        """NIXL EP's handle on the live runtime: the group while the buffer
        lives, None after destroy()."""
        return self._group

    def set_tcp_store_group(self, tcp_store_group):
        """NIXL EP: the store later groups are made over (None to drop
        it). A group made already keeps its store."""
        self.tcp_store_group = tcp_store_group

    def get_local_buffer_tensor(self, dtype, size=None, offset=0,
                                use_rdma_buffer=False):
        """DeepEP's raw buffer, which engines zero to clean it after a
        fault. vmep's flags are epochs that need no cleaning (and zeroing
        them would break them), so this is fresh memory that vmep never
        reads: `size` elements of `dtype`, or the num_rdma_bytes
        (use_rdma_buffer) / num_nvl_bytes the Buffer was given, less
        `offset` (vmep's own size hint is small: it is the window's)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        if size is None:
            total = self.num_rdma_bytes if use_rdma_buffer else \
                self.num_nvl_bytes
            size = (max(0, int(total) - int(offset)) // itemsize,)
        return torch.empty(size, dtype=dtype, device=self.device)

    def get_comm_stream(self):
        """The stream async_finish=True calls run on."""
        if self._comm_stream is None:
            self._comm_stream = torch.cuda.Stream(device=self.device)
        return self._comm_stream

    def clean_low_latency_buffer(self, num_max_dispatch_tokens_per_rank=None,
                                 hidden=None, num_experts=None):
        """A no-op: vmep's flags are epochs that never need cleaning."""

    clean_buffer = clean_low_latency_buffer

    # ---- argument checks -------------------------------------------------

    def _tensor(self, t, name, dtype, dims):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, not "
                            f"{type(t).__name__}")
        if t.dim() != dims:
            raise ValueError(f"{name} must have {dims} dimensions, has shape "
                             f"{tuple(t.shape)}")
        if dtype is not None and t.dtype != dtype:
            raise TypeError(f"{name} must be {dtype}, is {t.dtype}")
        if t.device != self.device:
            raise ValueError(f"{name} is on {t.device}, the buffer on "
                             f"{self.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
        return t

    def _wait_stats(self, t, name):
        """A wait-cost tensor: int64 on the buffer's device, contiguous,
        with at least R elements (its first R are added to); or None."""
        if t is None:
            return None
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, not "
                            f"{type(t).__name__}")
        if t.dtype != torch.int64:
            raise TypeError(f"{name} must be torch.int64, is {t.dtype}")
        if t.device != self.device or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous on {self.device}")
        if t.numel() < self.group_size:
            raise ValueError(f"{name} has {t.numel()} elements, fewer than "
                             f"the buffer's {self.group_size} ranks")
        return t

    def _topk(self, topk_idx, n):
        if not isinstance(topk_idx, torch.Tensor):
            raise TypeError("topk_idx must be a torch.Tensor")
        if topk_idx.dtype == torch.int32:
            topk_idx = topk_idx.to(torch.int64)
        self._tensor(topk_idx, "topk_idx", torch.int64, 2)
        if topk_idx.shape[0] != n:
            raise ValueError(f"topk_idx has {topk_idx.shape[0]} rows, x {n}")
        if not 1 <= topk_idx.shape[1] <= 16:
            raise ValueError(f"top-k is {topk_idx.shape[1]}, expected 1..16")
        return topk_idx

    def _weights(self, topk_weights, n, K):
        self._tensor(topk_weights, "topk_weights", torch.float32, 2)
        if tuple(topk_weights.shape) != (n, K):
            raise ValueError(f"topk_weights has shape "
                             f"{tuple(topk_weights.shape)}, expected {(n, K)}")
        return topk_weights

    def _launch_stream(self, async_finish):
        """(stream to launch on, its pointer); an async call's comm stream
        first waits for the current stream."""
        current = torch.cuda.current_stream(self.device)
        if not async_finish:
            return current, current.cuda_stream
        comm = self.get_comm_stream()
        comm.wait_stream(current)
        return comm, comm.cuda_stream

    @staticmethod
    def _finish(stream, async_finish, tensors):
        if not async_finish:
            return EventOverlap(None, None)
        for t in tensors:
            if isinstance(t, torch.Tensor):
                t.record_stream(stream)
        return EventOverlap(EventHandle(stream), tensors)

    # ---- dispatch / combine ---------------------------------------------

    def low_latency_dispatch(self, x, topk_idx,
                             num_max_dispatch_tokens_per_rank, num_experts,
                             cumulative_local_expert_recv_stats=None,
                             dispatch_wait_recv_cost_stats=None,
                             use_fp8=True, round_scale=False, use_ue8m0=False,
                             async_finish=False, return_recv_hook=False, *,
                             topk_weights=None):
        """Sends each token to the ranks of its top-k experts. Returns
        (recv_x, recv_count, handle, event, hook): recv_x bf16
        [L, T*R, H], or with use_fp8 (fp8 e4m3 [L, T*R, H], scales) with
        fp32 scales [L, T*R, H/128] column-major in the last two dims
        (int32 [L, T*R, H/512] of packed UE8M0 exponents with round_scale
        and use_ue8m0); recv_count int32 [L]; hook None unless
        return_recv_hook (then only the send phase ran, and hook() launches
        the receive phase on the then current stream).
        dispatch_wait_recv_cost_stats (int64, R elements or more, e.g.
        DeepEP's [R, R]): element s gains the nanoseconds this rank waited
        for rank s's tokens (DeepEP counts cycles). topk_weights (vmep;
        fp32 [n, top-k]): the combine of this rank's tokens is reduced at
        the expert side with these weights (one bf16 row per token and
        expert rank crosses the links; each partial sum is rounded to bf16
        once more) and takes topk_weights None or this same tensor; each
        rank chooses for its own tokens."""
        T, E = int(num_max_dispatch_tokens_per_rank), int(num_experts)
        self._tensor(x, "x", torch.bfloat16, 2)
        n, H = x.shape
        topk_idx = self._topk(topk_idx, n)
        K = topk_idx.shape[1]
        if topk_weights is not None:
            self._weights(topk_weights, n, K)
        if use_ue8m0 and not (use_fp8 and round_scale):
            raise ValueError("use_ue8m0 needs use_fp8 and round_scale")
        if use_ue8m0 and H % 512 != 0:
            raise ValueError(f"use_ue8m0 needs hidden a multiple of 512, "
                             f"is {H}")
        if async_finish and return_recv_hook:
            raise ValueError("async_finish and return_recv_hook exclude "
                             "each other")
        if n > T:
            raise ValueError(f"{n} tokens, more than "
                             f"num_max_dispatch_tokens_per_rank={T}")
        if self.group_size and E % self.group_size != 0:
            raise ValueError(f"num_experts={E} is not a multiple of the "
                             f"{self.group_size} ranks")
        if cumulative_local_expert_recv_stats is not None:
            self._tensor(cumulative_local_expert_recv_stats,
                         "cumulative_local_expert_recv_stats", torch.int32, 1)
        # Every argument is checked before the first call's collective.
        waits = self._wait_stats(dispatch_wait_recv_cost_stats,
                                 "dispatch_wait_recv_cost_stats")
        ep = self._ensure_ep(T, H, E, K)
        R = self.group_size
        L = E // R
        stream, stream_ptr = self._launch_stream(async_finish)
        dev = self.device
        recv_x = torch.empty((L, R * T, H), device=dev,
                             dtype=fp8_dtype() if use_fp8 else torch.bfloat16)
        scales = None
        layout = _lib.SCALES_ROW_MAJOR
        if use_fp8 and use_ue8m0:
            storage = torch.empty((L, H // 512, R * T), dtype=torch.int32,
                                  device=dev)
            scales, layout = storage.transpose(1, 2), _lib.SCALES_UE8M0
        elif use_fp8:
            storage = torch.empty((L, H // FP8_GROUP, R * T),
                                  dtype=torch.float32, device=dev)
            scales, layout = storage.transpose(1, 2), _lib.SCALES_COL_MAJOR
        recv_count = torch.empty((L,), dtype=torch.int32, device=dev)
        src_info = torch.empty((L, R * T), dtype=torch.int32, device=dev)
        layout_range = torch.empty((L, R), dtype=torch.int64, device=dev)
        args = _lib.DispatchArgs(
            x=x.data_ptr() if n else None,
            topk_idx=topk_idx.data_ptr() if n else None,
            num_tokens=n, num_topk=K, use_fp8=int(bool(use_fp8)),
            round_scale=int(bool(round_scale)), recv_x=recv_x.data_ptr(),
            recv_scales=scales.data_ptr() if use_fp8 else None,
            recv_count=recv_count.data_ptr(), src_info=src_info.data_ptr(),
            layout_range=layout_range.data_ptr(), scale_layout=layout,
            recv_wait_ns=waits.data_ptr() if waits is not None else None,
            topk_weights=topk_weights.data_ptr()
            if topk_weights is not None and n else None)
        c_handle = self._launch_dispatch(ep, args, not return_recv_hook,
                                         stream_ptr)
        stats = cumulative_local_expert_recv_stats

        def add_stats():
            if stats is not None:
                stats.add_(recv_count)

        hook = None
        if return_recv_hook:
            def hook(_keep=waits):  # the receive phase adds to it
                self._launch_recv("vmep_ep_dispatch_recv", c_handle,
                                  torch.cuda.current_stream(dev).cuda_stream)
                add_stats()
        else:
            with torch.cuda.stream(stream):
                add_stats()
        handle = Handle((src_info, layout_range, T, H, E), c_handle, self, n,
                        K, topk_weights)
        self._remember(handle)
        event = self._finish(stream, async_finish,
                             (x, topk_idx, topk_weights, recv_x, scales,
                              recv_count, src_info, layout_range, stats,
                              waits))
        out_x = (recv_x, scales) if use_fp8 else recv_x
        return out_x, recv_count, handle, event, hook

    def dispatch(self, *args, **kwargs):
        """DeepEP's high-throughput dispatch(x, handle=None, ...)
        (high_throughput_dispatch), or NIXL EP's name for
        low_latency_dispatch(x, topk_idx, T, E, ...): the low-latency call
        when topk_idx comes second or a keyword only it takes is given."""
        if compat.is_low_latency(args, kwargs,
                                 compat.LOW_LATENCY_DISPATCH_KEYWORDS):
            return self.low_latency_dispatch(*args, **kwargs)
        return self.high_throughput_dispatch(*args, **kwargs)

    def get_next_low_latency_combine_buffer(self, handle):
        """The bf16 [L, T*R, H] tensor for the combine of `handle`'s
        dispatch with zero_copy=True: experts write their outputs into it.
        With Buffer(zero_copy=True) it is the EP buffer's own memory (valid
        while the buffer lives; combine reads it in place), else a tensor
        per buffer parity that the combine reads like any input."""
        handle = self._check_handle(handle)
        _, _, T, H, E = handle
        L, R = E // self.group_size, self.group_size
        if self.zero_copy:
            return self._zero_copy_buffer(handle.c_handle, (L, R * T, H))
        parity = handle.c_handle.parity
        buf = self._combine_buffers.get(parity)
        if buf is None or buf.shape != (L, R * T, H):
            buf = torch.empty((L, R * T, H), dtype=torch.bfloat16,
                              device=self.device)
            self._combine_buffers[parity] = buf
        return buf

    get_next_combine_buffer = get_next_low_latency_combine_buffer

    def low_latency_combine(self, x, topk_idx, topk_weights, handle,
                            use_logfmt=False, zero_copy=False,
                            async_finish=False, return_recv_hook=False,
                            out=None, combine_wait_recv_cost_stats=None):
        """out[t] = sum_k topk_weights[t, k] * x(expert topk_idx[t, k], t),
        in fp32, as bf16 [n, H]. Returns (combined_x, event, hook).
        use_logfmt: the rows travel as LogFMT-10 (41 H / 32 bytes instead of
        2 H; docs/EP.md); not with zero_copy on a Buffer(zero_copy=True),
        whose rows sources pull as bf16. combine_wait_recv_cost_stats: as
        dispatch's, for the waits for each rank's expert outputs. When the
        dispatch was given topk_weights, its weights apply (summed per
        expert rank at the expert side): topk_weights must be None or that
        same tensor."""
        if use_logfmt not in (False, True):
            raise TypeError(f"use_logfmt must be a bool, got {use_logfmt!r}")
        if use_logfmt and zero_copy and self.zero_copy:
            raise ValueError("use_logfmt with zero_copy on a "
                             "Buffer(zero_copy=True): sources pull its rows "
                             "as bf16; combine from x instead")
        handle = self._check_handle(handle)
        reduced = handle.topk_weights is not None
        if reduced and topk_weights is not None and \
                topk_weights is not handle.topk_weights:
            raise ValueError("topk_weights: the dispatch was given "
                             "topk_weights, which apply (the combine is "
                             "reduced at the expert side); pass that same "
                             "tensor or None")
        if async_finish and return_recv_hook:
            raise ValueError("async_finish and return_recv_hook exclude "
                             "each other")
        _, _, T, H, E = handle
        R = self.group_size
        L = E // R
        n, K = handle.num_tokens, handle.num_topk
        self._tensor(x, "x", torch.bfloat16, 3)
        if tuple(x.shape) != (L, R * T, H):
            raise ValueError(f"x has shape {tuple(x.shape)}, expected "
                             f"{(L, R * T, H)}")
        topk_idx = self._topk(topk_idx, n)
        if topk_idx.shape[1] != K:
            raise ValueError(f"topk_idx has top-k {topk_idx.shape[1]}, the "
                             f"dispatch had {K}")
        if not reduced:  # else C takes NULL: the dispatch kept its weights
            self._weights(topk_weights, n, K)
        if out is None:
            out = torch.empty((n, H), dtype=torch.bfloat16, device=self.device)
        else:
            self._tensor(out, "out", torch.bfloat16, 2)
            if tuple(out.shape) != (n, H):
                raise ValueError(f"out has shape {tuple(out.shape)}, "
                                 f"expected {(n, H)}")
        expert_out = x
        if zero_copy:
            expert_out = self.get_next_low_latency_combine_buffer(handle)
        waits = self._wait_stats(combine_wait_recv_cost_stats,
                                 "combine_wait_recv_cost_stats")
        ep = self._live_ep()
        stream, stream_ptr = self._launch_stream(async_finish)
        args = _lib.CombineArgs(
            expert_out=expert_out.data_ptr(),
            topk_idx=topk_idx.data_ptr() if n else None,
            topk_weights=topk_weights.data_ptr() if n and not reduced
            else None,
            out=out.data_ptr() if n else None,
            recv_wait_ns=waits.data_ptr() if waits is not None else None,
            use_logfmt=int(use_logfmt))
        c_handle = handle.c_handle
        self._launch_combine(ep, args, c_handle, not return_recv_hook,
                             stream_ptr)
        hook = None
        if return_recv_hook:
            keep = (topk_idx, topk_weights, out, expert_out, waits)

            def hook(_keep=keep):  # the receive phase reads these
                self._launch_recv("vmep_ep_combine_recv", c_handle,
                                  torch.cuda.current_stream(
                                      self.device).cuda_stream)
        event = self._finish(stream, async_finish,
                             (x, topk_idx, topk_weights, handle[0], handle[1],
                              out, waits))
        return out, event, hook

    def combine(self, *args, **kwargs):
        """DeepEP's high-throughput combine(x, handle, ...)
        (high_throughput_combine), or NIXL EP's name for
        low_latency_combine(x, topk_idx, topk_weights, handle, ...): the
        low-latency call when topk_idx comes second or a keyword only it
        takes is given."""
        if compat.is_low_latency(args, kwargs,
                                 compat.LOW_LATENCY_COMBINE_KEYWORDS):
            return self.low_latency_combine(*args, **kwargs)
        return self.high_throughput_combine(*args, **kwargs)

    def poll_errors(self):
        """(error bits, skipped selections) since the last poll (synchronous):
        bit vmep.errors.EP_ERR_BAD_EXPERT (1): an invalid expert id was
        skipped; EP_ERR_TIMEOUT (2): a rank was masked after a timeout;
        EP_ERR_OVERFLOW (4): a high-throughput dispatch received more rows
        than num_worst_tokens (the rest were dropped)."""
        return self._poll_errors()


def library_path():
    """The libvmep.so this process loaded (loading it if needed)."""
    return _lib.load().path
