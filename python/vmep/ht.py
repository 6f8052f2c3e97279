"""
DeepEP's high-throughput ("normal") calls of vmep.Buffer (a mixin, as
membership.py's): get_dispatch_layout, dispatch (fresh or cached) and
combine, with DeepEP's names, positional order and return order, over
vmep.h's vmep_ep_ht_* calls (the C calls themselves are _runtime.py's);
and the opaque handle a dispatch returns.

A fresh dispatch without num_worst_tokens synchronizes once: the send phase
counts the rows this rank receives (N), the host reads N, allocates exactly
N rows and launches the receive phase. With num_worst_tokens, or with a
handle (a cached dispatch), the row count is known and nothing waits.
"""
import contextlib
import ctypes
import numbers

import torch

from . import _lib, compat
from .errors import Error

FP8_GROUP = 128  # channels per fp8 scale
# The counts tensor of a dispatch: N at [0], the rows per local expert from
# COUNTS_AT on (16 bytes in, aligned as the C arrays are).
COUNTS_AT = 4


def fp8_dtype():
    dtype = getattr(torch, "float8_e4m3fn", None)
    if dtype is None:
        raise Error(f"fp8 needs torch.float8_e4m3fn (torch "
                    f"{torch.__version__} has none)")
    return dtype


class HtHandle:
    """What a high-throughput dispatch returns, for its combine and for
    cached dispatches; it does not expire (the C calls read only what it
    holds, not the dispatch's buffer parity). Opaque to engines; its
    parts, for inspection: c_handle (vmep_ep_ht_handle), recv_src (int32
    [rows]: vmep's record of each received row, (t << 16) | (s << 5) | j),
    counts (int32: N at [0], written by the send phase, and
    num_recv_tokens_per_expert), rows (the rows of recv_x: N, or
    num_worst_tokens), num_tokens, num_topk and hidden of the dispatch. It
    keeps recv_src and counts alive, since the C handle points into
    them."""

    def __init__(self, buffer, c_handle, counts, recv_src, rows, num_tokens,
                 num_topk, hidden):
        self.buffer_id = id(buffer)
        self.c_handle = c_handle
        self.counts = counts
        self.recv_src = recv_src
        self.rows = rows
        self.num_tokens = num_tokens
        self.num_topk = num_topk
        self.hidden = hidden

    @property
    def num_recv_tokens_per_expert(self):
        """int32 [L] on the device: rows per local expert, aligned to the
        dispatch's expert_alignment (what DeepEP's list says, without a
        synchronization)."""
        return self.counts[COUNTS_AT:]

    def __repr__(self):
        return (f"vmep.HtHandle(rows={self.rows}, num_tokens="
                f"{self.num_tokens}, num_topk={self.num_topk}, hidden="
                f"{self.hidden}, call={self.c_handle.call})")


def _ptr(t):
    """A tensor's device address for C: None (NULL) for None or no
    elements."""
    return None if t is None else t.data_ptr() or None


def _non_negative(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name}={value}, expected 0 or more")
    return int(value)


def _event_of(previous_event):
    """The torch.cuda.Event of `previous_event` (an EventOverlap or
    EventHandle, e.g. Buffer.capture()'s), or None."""
    if previous_event is None:
        return None
    inner = getattr(previous_event, "event", previous_event)
    if inner is None:  # an EventOverlap of a call that was not async
        return None
    event = getattr(inner, "event", None)
    if not isinstance(event, torch.cuda.Event):
        raise TypeError(f"previous_event must be an EventOverlap or "
                        f"EventHandle, not {type(previous_event).__name__}")
    return event


def _layout_in_torch(topk_idx, E, R):
    """What vmep_ep_ht_layout computes, in torch ops on the current stream
    (no synchronization): (tokens per rank [R], tokens per expert [E], in
    rank [n, R] bool). Ids outside 0..E-1 count nowhere."""
    L = E // R
    valid = (topk_idx >= 0) & (topk_idx < E)
    # a spare column / bin past the last collects what counts nowhere
    expert = torch.where(valid, topk_idx, torch.full_like(topk_idx, E))
    rank = torch.where(valid, torch.div(topk_idx, L, rounding_mode="floor"),
                       torch.full_like(topk_idx, R))
    per_expert = torch.zeros(E + 1, dtype=torch.int32,
                             device=topk_idx.device)
    per_expert.scatter_add_(0, expert.flatten(), torch.ones(
        expert.numel(), dtype=torch.int32, device=topk_idx.device))
    in_rank = torch.zeros((topk_idx.shape[0], R + 1), dtype=torch.bool,
                          device=topk_idx.device)
    in_rank.scatter_(1, rank, True)
    in_rank = in_rank[:, :R]
    return in_rank.sum(0, dtype=torch.int32), per_expert[:E], in_rank


class HighThroughput:
    """Buffer's high-throughput calls (Buffer routes dispatch / combine
    here when their arguments are DeepEP's high-throughput ones)."""

    # ---- streams, events and allocation ---------------------------------

    @staticmethod
    def _check_overlap(previous_event, async_finish, allocate_on_comm_stream):
        """DeepEP's rule: allocate_on_comm_stream needs previous_event and
        async_finish. The previous_event's torch event, or None."""
        event = _event_of(previous_event)
        if allocate_on_comm_stream and not (async_finish and
                                            previous_event is not None):
            raise ValueError("allocate_on_comm_stream needs previous_event "
                             "and async_finish (as in DeepEP)")
        return event

    def _ht_stream(self, async_finish, event):
        """(stream to launch on, its pointer): the current stream, or with
        async_finish the comm stream. It first waits for `event` when
        given, else (the comm stream) for the current stream."""
        current = torch.cuda.current_stream(self.device)
        stream = self.get_comm_stream() if async_finish else current
        if event is not None:
            stream.wait_event(event)
        elif async_finish:
            stream.wait_stream(current)
        return stream, stream.cuda_stream

    @staticmethod
    def _allocating(stream, on_comm):
        """Where outputs are allocated: the comm stream's pool with
        allocate_on_comm_stream, else the current stream's."""
        return torch.cuda.stream(stream) if on_comm else \
            contextlib.nullcontext()

    def _ht_finish(self, stream, async_finish, on_comm, tensors):
        """The call's EventOverlap (an event only with async_finish); with
        allocate_on_comm_stream every tensor is also recorded on the
        current stream, which uses the outputs next."""
        event = self._finish(stream, async_finish, tensors)
        if on_comm:
            current = torch.cuda.current_stream(self.device)
            for t in tensors:
                if isinstance(t, torch.Tensor):
                    t.record_stream(current)
        return event

    def _host_counts(self, counts, stream):
        """The one synchronization of a fresh dispatch: `counts` read on the
        host once `stream` has written them, as a list of ints."""
        host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
        with torch.cuda.stream(stream):
            host.copy_(counts, non_blocking=True)
        stream.synchronize()
        return host.tolist()

    def _rows(self, rows, tail, dtype):
        """([rows, *tail] tensor, device pointer): its storage has at least
        one row, so the pointer is never NULL."""
        full = torch.empty((max(rows, 1),) + tuple(tail), dtype=dtype,
                           device=self.device)
        return full[:rows], full.data_ptr()

    # ---- argument checks -------------------------------------------------

    def _ht_x(self, x):
        """(x, scales or None) from a bf16 tensor or an (fp8 e4m3 tensor,
        fp32 scales [n, H/128]) tuple."""
        if isinstance(x, tuple):
            if len(x) != 2:
                raise ValueError(f"x as a tuple must be (fp8 tensor, scales),"
                                 f" has {len(x)} items")
            q, scales = x
            self._tensor(q, "x[0]", fp8_dtype(), 2)
            n, H = q.shape
            self._tensor(scales, "x[1] (the scales)", torch.float32, 2)
            if H % FP8_GROUP or tuple(scales.shape) != (n, H // FP8_GROUP):
                raise ValueError(f"x[1] (the scales) has shape "
                                 f"{tuple(scales.shape)}, expected "
                                 f"{(n, H // FP8_GROUP)} (hidden {H} a "
                                 f"multiple of {FP8_GROUP})")
            return q, scales
        self._tensor(x, "x", torch.bfloat16, 2)
        return x, None

    def _ht_experts(self, num_tokens_per_expert):
        """E for a fresh dispatch: num_tokens_per_expert's length, else the
        EP buffer's, the last get_dispatch_layout's or Buffer(num_experts=)."""
        R = self.group_size
        known = self._shape[2] if self._ep is not None else (
            self._layout_experts or self._shape_hint[2])
        if num_tokens_per_expert is not None:
            self._tensor(num_tokens_per_expert, "num_tokens_per_expert",
                         torch.int32, 1)
            E = num_tokens_per_expert.numel()
            if self._ep is not None and E != known:
                raise ValueError(f"num_tokens_per_expert has {E} elements, "
                                 f"the buffer serves {known} experts")
        elif known is None:
            raise ValueError("dispatch: the number of experts is unknown: "
                             "pass num_tokens_per_expert (as DeepEP "
                             "requires), call get_dispatch_layout first, or "
                             "give Buffer(num_experts=)")
        else:
            E = int(known)
        if E < R or E % R:
            raise ValueError(f"num_experts={E} is not a multiple of the "
                             f"{R} ranks")
        return E

    def _check_layout(self, n, per_rank, per_rdma_rank, in_rank):
        """The layout arguments DeepEP requires (num_tokens_per_expert is
        _ht_experts'): vmep routes by topk_idx, so they may be None; given,
        their shapes and dtypes are checked."""
        R = self.group_size
        if per_rank is not None:
            self._tensor(per_rank, "num_tokens_per_rank", torch.int32, 1)
            if per_rank.numel() != R:
                raise ValueError(f"num_tokens_per_rank has {per_rank.numel()}"
                                 f" elements, expected {R}")
        if per_rdma_rank is not None and not isinstance(per_rdma_rank,
                                                        torch.Tensor):
            raise TypeError("num_tokens_per_rdma_rank must be a "
                            "torch.Tensor or None")
        if in_rank is not None:
            self._tensor(in_rank, "is_token_in_rank", torch.bool, 2)
            if tuple(in_rank.shape) != (n, R):
                raise ValueError(f"is_token_in_rank has shape "
                                 f"{tuple(in_rank.shape)}, expected {(n, R)}")

    def _check_ht_handle(self, handle):
        if isinstance(handle, HtHandle) and handle.buffer_id == id(self):
            return handle
        raise ValueError("handle must be what one of this buffer's "
                         "high-throughput dispatches returned")

    def _bias(self, bias, n, H):
        """(bias0, bias1) from DeepEP's bias: None, a tensor, or a tuple of
        two (either may be None); each bf16 [n, H]."""
        if bias is None or isinstance(bias, torch.Tensor):
            pair = (bias, None)
        elif isinstance(bias, tuple) and len(bias) == 2:
            pair = bias
        else:
            raise TypeError("bias must be a tensor, a tuple of two, or None")
        for i, b in enumerate(pair):
            if b is None:
                continue
            self._tensor(b, f"bias[{i}]", torch.bfloat16, 2)
            if tuple(b.shape) != (n, H):
                raise ValueError(f"bias[{i}] has shape {tuple(b.shape)}, "
                                 f"expected {(n, H)}")
        return pair

    # ---- the calls -------------------------------------------------------

    def get_dispatch_layout(self, topk_idx, num_experts, previous_event=None,
                            async_finish=False, allocate_on_comm_stream=False):
        """Where each token goes, computed locally (no communication).
        Returns (num_tokens_per_rank int32 [R], num_tokens_per_rdma_rank
        always None (other nodes are reached through the same calls),
        num_tokens_per_expert int32 [E], is_token_in_rank bool [n, R],
        event). Ids outside 0..E-1 count nowhere. vmep_ep_ht_layout once
        the EP buffer exists and n is at most its T; otherwise (before the
        first dispatch makes it, or more tokens than a dispatch takes) the
        same in torch ops."""
        self._needcapacity("get_dispatch_layout")
        R = self.group_size
        E = compat.positive_int(num_experts, "num_experts")
        if E % R:
            raise ValueError(f"num_experts={E} is not a multiple of the {R} "
                             f"ranks")
        if not isinstance(topk_idx, torch.Tensor):
            raise TypeError("topk_idx must be a torch.Tensor")
        topk_idx = self._topk(topk_idx, topk_idx.shape[0])
        n, K = topk_idx.shape
        event_in = self._check_overlap(previous_event, async_finish,
                                       allocate_on_comm_stream)
        ep = self._ep
        if ep is not None and self._shape[2] != E:
            raise ValueError(f"num_experts={E}, the buffer serves "
                             f"{self._shape[2]}")
        stream, stream_ptr = self._ht_stream(async_finish, event_in)
        dev = self.device
        with self._allocating(stream, allocate_on_comm_stream):
            per_rank = torch.empty((R,), dtype=torch.int32, device=dev)
            per_expert = torch.empty((E,), dtype=torch.int32, device=dev)
            in_rank = torch.empty((n, R), dtype=torch.bool, device=dev)
        if ep is not None and n <= self._shape[0]:
            self._ht_layout(ep, _ptr(topk_idx), n, K,
                            (_ptr(per_rank), _ptr(per_expert), _ptr(in_rank)),
                            stream_ptr)
        else:
            with torch.cuda.stream(stream):
                for out, value in zip((per_rank, per_expert, in_rank),
                                      _layout_in_torch(topk_idx, E, R)):
                    out.copy_(value)
        self._layout_experts = E
        event = self._ht_finish(stream, async_finish, allocate_on_comm_stream,
                                (topk_idx, per_rank, per_expert, in_rank))
        return per_rank, None, per_expert, in_rank, event

    def high_throughput_dispatch(
            self, x, handle=None, num_tokens_per_rank=None,
            num_tokens_per_rdma_rank=None, is_token_in_rank=None,
            num_tokens_per_expert=None, topk_idx=None, topk_weights=None,
            expert_alignment=1, num_worst_tokens=0, config=None,
            previous_event=None, async_finish=False,
            allocate_on_comm_stream=False):
        """DeepEP's dispatch. Each token goes once to every rank holding
        one of its experts. Returns (recv_x, recv_topk_idx,
        recv_topk_weights, num_recv_tokens_per_expert_list, handle, event):
        recv_x [N, H] as x (bf16, or the (fp8, fp32 scales [N, H/128])
        tuple, scales passed through), rows by source rank then source
        token; recv_topk_idx int64 [N, K] (local expert ids, -1 where the
        expert is not this rank's); recv_topk_weights fp32 [N, K] (0 there;
        None without topk_weights); the list of rows per local expert
        (aligned to expert_alignment). Synchronizes once to read N, unless
        num_worst_tokens: then recv_* have num_worst_tokens rows (rows past
        N: recv_topk_idx -1, weights 0), the list is empty (as in DeepEP),
        and a larger N sets poll_errors' EP_ERR_OVERFLOW. With `handle` (a
        cached dispatch): x only, to the rows of the handle's dispatch;
        returns (recv_x, None, None, None, handle, event)."""
        self._needcapacity("dispatch")
        x, scales = self._ht_x(x)
        n, H = x.shape
        config = compat.check_config(config)
        event_in = self._check_overlap(previous_event, async_finish,
                                       allocate_on_comm_stream)
        expert_alignment = compat.positive_int(expert_alignment,
                                               "expert_alignment")
        worst = _non_negative(num_worst_tokens, "num_worst_tokens")
        if handle is not None:
            return self._cached_dispatch(x, scales, handle, topk_idx,
                                         topk_weights, event_in, async_finish,
                                         allocate_on_comm_stream)
        if topk_idx is None:
            raise ValueError("dispatch needs topk_idx: vmep routes by it "
                             "(the layout arguments are only checked)")
        topk_idx = self._topk(topk_idx, n)
        K = topk_idx.shape[1]
        if topk_weights is not None:
            self._tensor(topk_weights, "topk_weights", torch.float32, 2)
            if tuple(topk_weights.shape) != (n, K):
                raise ValueError(f"topk_weights has shape "
                                 f"{tuple(topk_weights.shape)}, expected "
                                 f"{(n, K)}")
        E = self._ht_experts(num_tokens_per_expert)
        self._check_layout(n, num_tokens_per_rank,
                           num_tokens_per_rdma_rank, is_token_in_rank)
        if not worst and torch.cuda.is_current_stream_capturing():
            raise Error("dispatch without num_worst_tokens reads the "
                        "received row count on the host, which CUDA graph "
                        "capture cannot: pass num_worst_tokens")
        # Every argument is checked before the first call's collective.
        ep, _ = self._ht_ep(n, H, E, K, config.num_sms if config else None)
        L = E // self.group_size
        stream, stream_ptr = self._ht_stream(async_finish, event_in)
        on_comm = allocate_on_comm_stream
        with self._allocating(stream, on_comm):
            counts = torch.empty((COUNTS_AT + L,), dtype=torch.int32,
                                 device=self.device)
        args = _lib.HtDispatchArgs(
            x=_ptr(x), x_scales=_ptr(scales), topk_idx=_ptr(topk_idx),
            topk_weights=_ptr(topk_weights), num_tokens=n, num_topk=K,
            use_fp8=int(scales is not None),
            expert_alignment=expert_alignment, num_recv=counts.data_ptr(),
            recv_expert_count=counts[COUNTS_AT:].data_ptr())
        if worst:
            rows, per_expert = worst, []
        else:
            c_handle = self._ht_dispatch(ep, args, _lib.EP_SEND, stream_ptr)
            host = self._host_counts(counts, stream)
            rows, per_expert = host[0], host[COUNTS_AT:]
        with self._allocating(stream, on_comm):
            recv_x, recv_scales = self._recv_rows(args, rows, H, scales)
            recv_src, args.recv_src = self._rows(rows, (), torch.int32)
            recv_idx, args.recv_topk_idx = self._rows(rows, (K,),
                                                      torch.int64)
            recv_w = None
            if topk_weights is not None:
                recv_w, args.recv_topk_weights = self._rows(
                    rows, (K,), torch.float32)
        if worst:  # rows past N stay as DeepEP leaves them: no expert
            with torch.cuda.stream(stream):
                recv_idx.fill_(-1)
                if recv_w is not None:
                    recv_w.zero_()
            c_handle = self._ht_dispatch(ep, args, _lib.EP_SEND_RECV,
                                         stream_ptr)
        else:
            self._ht_dispatch_recv(ep, args, c_handle, stream_ptr)
        handle = HtHandle(self, c_handle, counts, recv_src, rows, n, K, H)
        event = self._ht_finish(
            stream, async_finish, on_comm,
            (x, scales, topk_idx, topk_weights, counts, recv_x, recv_scales,
             recv_idx, recv_w, recv_src))
        out_x = (recv_x, recv_scales) if scales is not None else recv_x
        return out_x, recv_idx, recv_w, per_expert, handle, event

    def _recv_rows(self, args, rows, H, scales):
        """recv_x (and recv_scales with fp8) of `rows` rows, set in `args`
        with capacity = rows."""
        recv_x, args.recv_x = self._rows(
            rows, (H,), fp8_dtype() if scales is not None else torch.bfloat16)
        recv_scales = None
        if scales is not None:
            recv_scales, args.recv_scales = self._rows(
                rows, (H // FP8_GROUP,), torch.float32)
        args.capacity = rows
        return recv_x, recv_scales

    def _cached_dispatch(self, x, scales, handle, topk_idx, topk_weights,
                         event_in, async_finish, on_comm):
        """dispatch(x, handle=...): the rows go where the handle's
        dispatch put them; the handle comes back as it was."""
        handle = self._check_ht_handle(handle)
        if topk_idx is not None or topk_weights is not None:
            raise ValueError("a cached dispatch (handle given) takes no "
                             "topk_idx / topk_weights: it reuses the "
                             "handle's routing")
        n, H = x.shape
        if (n, H) != (handle.num_tokens, handle.hidden):
            raise ValueError(f"x has shape {(n, H)}, the handle's dispatch "
                             f"had {(handle.num_tokens, handle.hidden)}")
        ep = self._live_ep()
        stream, stream_ptr = self._ht_stream(async_finish, event_in)
        args = _lib.HtDispatchArgs(
            x=_ptr(x), x_scales=_ptr(scales), num_tokens=n,
            num_topk=handle.num_topk, use_fp8=int(scales is not None),
            cached=ctypes.addressof(handle.c_handle))
        with self._allocating(stream, on_comm):
            recv_x, recv_scales = self._recv_rows(args, handle.rows, H,
                                                  scales)
        self._ht_dispatch(ep, args, _lib.EP_SEND_RECV, stream_ptr)
        event = self._ht_finish(stream, async_finish, on_comm,
                                (x, scales, recv_x, recv_scales,
                                 handle.recv_src, handle.counts))
        out_x = (recv_x, recv_scales) if scales is not None else recv_x
        return out_x, None, None, None, handle, event

    def get_high_throughput_combine_buffer(self, handle):
        """The bf16 [rows, H] tensor (rows: the dispatch's) for combining
        `handle` in place (a vmep extension; DeepEP has none): expert
        outputs written there, row i for received row i, and passed to
        combine as x are read by their sources where they lie, with no
        push. It views the EP buffer (the combine slots of the handle's
        parity): it serves the last dispatch of that parity, and until
        that handle is combined, combines of other handles of the parity
        are refused. Every rank combines in place, or none."""
        handle = self._check_ht_handle(handle)
        return self._ht_combine_buffer(handle.c_handle,
                                       (handle.rows, handle.hidden))

    def high_throughput_combine(self, x, handle, topk_weights=None,
                                bias=None, config=None, previous_event=None,
                                async_finish=False,
                                allocate_on_comm_stream=False):
        """DeepEP's combine: the inverse of the dispatch `handle`. x bf16
        [rows, H] (the rows as dispatched, weights already applied); each
        token gets the sum of what the ranks that received it send back,
        in fp32, in the order of its experts, + bias (a tensor or a tuple
        of two, bf16 [n, H]), rounded once to bf16. x may be
        get_high_throughput_combine_buffer(handle): combined in place.
        Returns (combined_x
        bf16 [n, H], combined_topk_weights fp32 [n, K] (the sum of each
        rank's topk_weights rows; None without topk_weights), event)."""
        handle = self._check_ht_handle(handle)
        compat.check_config(config)
        rows, H, K = handle.rows, handle.hidden, handle.num_topk
        n = handle.num_tokens
        self._tensor(x, "x", torch.bfloat16, 2)
        if tuple(x.shape) != (rows, H):
            raise ValueError(f"x has shape {tuple(x.shape)}, expected "
                             f"{(rows, H)} (the dispatch's rows)")
        if topk_weights is not None:
            self._tensor(topk_weights, "topk_weights", torch.float32, 2)
            if tuple(topk_weights.shape) != (rows, K):
                raise ValueError(f"topk_weights has shape "
                                 f"{tuple(topk_weights.shape)}, expected "
                                 f"{(rows, K)}")
        bias0, bias1 = self._bias(bias, n, H)
        event_in = self._check_overlap(previous_event, async_finish,
                                       allocate_on_comm_stream)
        ep = self._live_ep()
        stream, stream_ptr = self._ht_stream(async_finish, event_in)
        with self._allocating(stream, allocate_on_comm_stream):
            out = torch.empty((n, H), dtype=torch.bfloat16, device=self.device)
            out_w = None if topk_weights is None else torch.empty(
                (n, K), dtype=torch.float32, device=self.device)
        args = _lib.HtCombineArgs(
            x=_ptr(x), topk_weights=_ptr(topk_weights), bias0=_ptr(bias0),
            bias1=_ptr(bias1), out=_ptr(out), out_topk_weights=_ptr(out_w))
        self._ht_combine(ep, args, handle.c_handle, stream_ptr)
        event = self._ht_finish(stream, async_finish, allocate_on_comm_stream,
                                (x, topk_weights, bias0, bias1, out, out_w,
                                 handle.recv_src, handle.counts))
        return out, out_w, event

