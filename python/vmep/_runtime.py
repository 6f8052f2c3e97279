"""
The C side of a vmep.Buffer (a mixin, as membership.py's): the process
group it runs over and the EP buffer (vmep_ep) on it, from creation to
destroy; every ctypes call of dispatch and combine; and the bookkeeping of
the handles a dispatch returns. buffer.py, the DeepEP / NIXL EP facade,
checks the arguments, allocates the outputs and calls these.

The EP buffer needs the call's shapes (T, H, E, top-k), which DeepEP gives
only per call: it is created, collectively, at the first dispatch (or at
construction / update_memory_buffers when the shape keywords are given),
after the ranks compare their shapes, so that a mismatch raises on every
rank instead of hanging. A high-throughput dispatch has no T: the EP buffer
it creates gets the largest T whose size fits num_nvl_bytes (_ht_ep).
"""
import ctypes
import struct
import sys

import torch

from . import _lib
from ._group import (CommCallbacks, Group, StoreCallbacks, TorchCallbacks,
                     raise_with_callback_error)
from .errors import Error

# Handles a plain tuple can stand for: more than the two in flight, fewer
# than would keep much memory alive.
RECENT_HANDLES = 8
# vmep_ep_config.max_tokens_per_rank's range is 1..MAX_TOKENS_PER_RANK.
MAX_TOKENS_PER_RANK = 65535


class Handle(tuple):
    """What a dispatch returns for its combine: the tuple DeepEP returns,
    (src_info, layout_range, num_max_dispatch_tokens_per_rank, hidden,
    num_experts), which unpacks the same, plus vmep's C handle and the
    topk_weights tensor the dispatch was given, or None. Given weights, the
    combine is reduced at the expert side and takes that tensor or None
    (kept here for the identity check)."""

    def __new__(cls, items, c_handle, buffer, num_tokens, num_topk,
                topk_weights=None):
        self = super().__new__(cls, items)
        self.c_handle = c_handle
        self.buffer_id = id(buffer)
        self.num_tokens = num_tokens
        self.num_topk = num_topk
        self.topk_weights = topk_weights
        return self


class Runtime:
    """Buffer's group, EP buffer and C calls. The Buffer's constructor
    sets its options (rank, device, timeout_ms, zero_copy, max_num_ranks,
    tcp_store_group, the shape hint) and then calls _init_runtime and
    _open_group."""

    def _init_runtime(self):
        """The state before any C call: no group, no EP buffer."""
        self._ep = None
        self._group = None
        self._combine_buffers = {}
        self._disconnected = set()
        self._pending_masks = set()  # masked before the EP buffer exists
        self._recent = {}  # src_info pointer -> the last dispatches' Handles
        self._destroyed = False
        self._layout_experts = None  # E of the last get_dispatch_layout

    def _open_group(self, group, comm, rank, max_num_ranks, store_addr):
        """The group the constructor's arguments name (see Buffer), and the
        EP buffer when the shapes are known already."""
        if group is not None:
            self._group = Group.custom(self._lib, TorchCallbacks(group))
        elif comm is not None:
            self._group = Group.custom(self._lib, CommCallbacks(comm))
        elif self.tcp_store_group is not None:
            if rank is None:
                raise ValueError("tcp_store_group needs rank=")
            if max_num_ranks is not None:
                self._store_group(self.max_num_ranks)
        elif rank is not None and max_num_ranks is not None:
            if not 0 <= self.rank < self.max_num_ranks:
                raise ValueError(f"rank={self.rank}, expected 0.."
                                 f"{self.max_num_ranks - 1} (max_num_ranks="
                                 f"{self.max_num_ranks})")
            self._group = Group.join(self._lib, self.rank, self.max_num_ranks,
                                     store_addr)
        else:
            self._group = Group.from_env(self._lib)
        if self._group is not None:
            self._adopt_group(rank)
        if None not in self._shape_hint[:3] and self._group is not None:
            self._ensure_ep(*self._hinted_shape())

    def _store_group_pending(self):
        """A tcp_store_group's group is not made yet (and may still be)."""
        return self._group is None and self.tcp_store_group is not None \
            and not self._destroyed

    def _store_group(self, size):
        if not 0 <= self.rank < size:
            raise ValueError(f"rank={self.rank}, expected 0..{size - 1} "
                             f"(a tcp_store_group of {size} ranks)")
        cb = StoreCallbacks(self.tcp_store_group, self.rank, size)
        self._group = Group.custom(self._lib, cb)
        self._adopt_group(self.rank)

    def _adopt_group(self, rank=None):
        g = self._group
        if rank is not None and int(rank) != g.rank:
            raise ValueError(f"rank={rank}, but this process is rank {g.rank} "
                             f"of its group")
        if self.max_num_ranks is not None and self.max_num_ranks < g.size:
            raise ValueError(f"max_num_ranks={self.max_num_ranks} is below "
                             f"the group's {g.size} ranks")
        # Every shape uses the capacity R (the group's size unless
        # max_num_ranks is larger), as NIXL EP's group_size.
        self.rank, self.group_size = g.rank, max(g.size,
                                                 self.max_num_ranks or 0)

    def _hinted_shape(self):
        T, H, E, K = self._shape_hint
        return int(T), int(H), int(E), int(K or 8)

    def _config(self, T, H, E, K, num_sms=None):
        cfg = _lib.EpConfig()  # vmep_ep_config_init's defaults
        cfg.num_experts, cfg.hidden = int(E), int(H)
        cfg.max_tokens_per_rank, cfg.max_topk = int(T), int(K)
        cfg.device = self.device.index
        # a high-throughput call's Config, else Buffer.set_num_sms
        cfg.num_sms = int(num_sms or self.num_sms)
        cfg.timeout_ms = self.timeout_ms
        cfg.zero_copy = int(self.zero_copy)
        cfg.max_ranks = int(self.max_num_ranks or 0)
        return cfg

    def _ensure_ep(self, T, H, E, K, num_sms=None):
        """The EP buffer for shapes (T, H, E) and top-k <= its max_topk;
        created collectively on first use (with num_sms blocks per kernel
        when given, else Buffer.num_sms)."""
        if self._ep is not None:
            if self._shape[:3] != (T, H, E) or K > self._shape[3]:
                raise Error(
                    f"this buffer serves num_max_dispatch_tokens_per_rank="
                    f"{self._shape[0]}, hidden={self._shape[1]}, num_experts="
                    f"{self._shape[2]}, top-k <= {self._shape[3]}; the call "
                    f"asks for {T}, {H}, {E}, top-k {K}")
            return self._ep
        if self._store_group_pending() and self.max_num_ranks:
            self._store_group(self.max_num_ranks)  # no connect_ranks came
        if self._group is None:
            self._need_group("the first dispatch")
        if torch.cuda.is_current_stream_capturing():
            raise Error("the EP buffer is created by the first dispatch, "
                        "which cannot be inside CUDA graph capture: dispatch "
                        "once before capturing, or pass the shape keywords "
                        "to Buffer()")
        if not self._group.elastic:
            K = self._agree(T, H, E, K)
        cfg = self._config(T, H, E, K, num_sms)
        out = ctypes.c_void_p()
        status = self._lib.vmep_ep_create(self._group.handle,
                                          ctypes.addressof(cfg),
                                          ctypes.byref(out))
        raise_with_callback_error(self._lib, status, "vmep_ep_create",
                                  self._group.callbacks)
        self._ep = out
        self._shape = (T, H, E, K)
        self.group_size = self._lib.vmep_ep_max_ranks(out)
        self.num_local_experts = self._lib.vmep_ep_num_local_experts(out)
        # Masks asked for before the buffer existed, on the ranks that are
        # connected (the others are masked anyway).
        pending, self._pending_masks = self._pending_masks, set()
        masked = self._masks() if pending else []
        for r in sorted(pending):
            if not masked[r]:
                self._lib.call("vmep_ep_set_mask", out, r, 1)
        return out

    def _ht_tokens(self, H, E, K):
        """T for an EP buffer that a high-throughput call creates: the
        largest T (1..65535) whose vmep_ep_buffer_bytes for (T, H, E, K, R,
        zero_copy) fits num_nvl_bytes. Error when not even T = 1 fits."""
        budget = int(self.num_nvl_bytes or 0)

        def size(T):
            return self._bytes("vmep_ep_buffer_bytes", T, H, self.group_size,
                               E, K, self.zero_copy)

        if size(1) > budget:
            raise Error(
                f"num_nvl_bytes={budget} is below the EP buffer of one token "
                f"per rank ({size(1)} bytes at hidden {H}, top-k {K}, "
                f"{self.group_size} ranks): the high-throughput calls size "
                f"the EP buffer from num_nvl_bytes (Config."
                f"get_nvl_buffer_size_hint), or pass the shape keywords "
                f"num_max_dispatch_tokens_per_rank, hidden, num_experts to "
                f"Buffer()")
        lo, hi = 1, MAX_TOKENS_PER_RANK
        if size(hi) <= budget:
            return hi
        while hi - lo > 1:  # size(lo) fits, size(hi) does not
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if size(mid) <= budget else (lo, mid)
        return lo

    def _ht_ep(self, n, H, E, K, num_sms):
        """The EP buffer for a high-throughput dispatch of n tokens of
        hidden H, top-k K, E experts: the existing one (same H and E, top-k
        within its max_topk), else one created collectively with T from
        num_nvl_bytes (_ht_tokens). ValueError, before any collective,
        when n exceeds T."""
        if self._ep is not None:
            T, H0, E0, K0 = self._shape
            if (H0, E0) != (H, E) or K > K0:
                raise Error(f"this buffer serves hidden={H0}, num_experts="
                            f"{E0}, top-k <= {K0}; the call asks for hidden="
                            f"{H}, num_experts={E}, top-k {K}")
            where = ("the EP buffer's max_tokens_per_rank (made by an "
                     "earlier call or the shape keywords)")
        else:
            T = self._ht_tokens(H, E, K)
            where = (f"the largest max_tokens_per_rank whose EP buffer fits "
                     f"num_nvl_bytes={self.num_nvl_bytes} at hidden {H}, "
                     f"top-k {K}")
        if n > T:
            raise ValueError(
                f"{n} tokens, more than T={T}, {where}; a new Buffer given "
                f"num_nvl_bytes >= Buffer.get_low_latency_rdma_size_hint("
                f"{n}, {H}, {self.group_size}, {E}) (top-k <= 8) serves them")
        return self._ensure_ep(T, H, E, K, num_sms), T

    def _agree(self, T, H, E, K):
        """Every rank's (T, H, E, K, zero_copy, capacity): equal or an
        Error on every rank; the largest K serves all."""
        cap = int(self.group_size)  # max_num_ranks, else the group's size
        mine = struct.pack("<6q", T, H, E, K, int(self.zero_copy), cap)
        rows = [struct.unpack("<6q", b) for b in self._group.allgather(mine)]
        differ = [r for r, row in enumerate(rows) if row[:3] != rows[0][:3]
                  or row[4:] != rows[0][4:]]
        if differ:
            described = ", ".join(
                f"rank {r}: T={row[0]} H={row[1]} E={row[2]} zero_copy="
                f"{row[4]} max_num_ranks={row[5]}"
                for r, row in enumerate(rows))
            raise Error("ranks disagree on the buffer's shape "
                        f"(num_max_dispatch_tokens_per_rank, hidden, "
                        f"num_experts, zero_copy, max_num_ranks): "
                        f"{described}")
        return max(row[3] for row in rows)

    def destroy(self):
        """Releases the EP buffer and the group (collective: every rank
        calls it). Idempotent."""
        ep, self._ep = self._ep, None
        group, self._group = self._group, None
        self._destroyed = True  # no group is made again
        self._combine_buffers = {}
        self._recent = {}
        first = None
        if ep is not None:
            try:
                torch.cuda.synchronize(self.device)
            except Exception:
                pass
            try:
                raise_with_callback_error(self._lib,
                                          self._lib.vmep_ep_destroy(ep),
                                          "vmep_ep_destroy",
                                          group.callbacks if group else None)
            except Error as exc:
                first = exc
        if group is not None:
            group.destroy()
        if first is not None:
            raise first

    def __del__(self):
        # At interpreter exit the process's memory goes with it: nothing to
        # wait for. Otherwise release without collectives through Python
        # callbacks (a peer may be gone); vmep's own store groups bound the
        # release barrier by the group timeout and see dead peers in seconds.
        if sys is None or sys.is_finalizing():
            return
        group = getattr(self, "_group", None)
        if group is not None and group.callbacks is not None:
            group.callbacks.fail_fast = True
        try:
            self.destroy()
        except Exception:
            pass

    @staticmethod
    def _bytes(fn, T, H, R, E, K, zero_copy=False):
        lib = _lib.load()
        cfg = _lib.EpConfig()  # vmep_ep_config_init's defaults
        cfg.num_experts, cfg.hidden, cfg.max_tokens_per_rank = E, H, T
        cfg.max_topk, cfg.zero_copy = K, int(zero_copy)
        out = ctypes.c_size_t()
        lib.call(fn, ctypes.addressof(cfg), int(R), ctypes.byref(out))
        return out.value

    # ---- dispatch / combine: the C calls ---------------------------------

    def _launch_dispatch(self, ep, args, recv, stream_ptr):
        """vmep_ep_dispatch of `args` (a _lib.DispatchArgs) on stream_ptr,
        with the receive phase unless `recv` is false; the C handle."""
        c_handle = _lib.EpHandle()
        phases = _lib.EP_SEND_RECV if recv else _lib.EP_SEND
        self._lib.call("vmep_ep_dispatch", ep, ctypes.byref(args), phases,
                       stream_ptr, ctypes.byref(c_handle))
        return c_handle

    def _launch_combine(self, ep, args, c_handle, recv, stream_ptr):
        """vmep_ep_combine of `args` (a _lib.CombineArgs) for the dispatch
        `c_handle`, as _launch_dispatch."""
        phases = _lib.EP_SEND_RECV if recv else _lib.EP_SEND
        self._lib.call("vmep_ep_combine", ep, ctypes.byref(args),
                       ctypes.byref(c_handle), phases, stream_ptr)

    def _launch_recv(self, name, c_handle, stream_ptr):
        """The receive phase a send-only call left: `name` is
        vmep_ep_dispatch_recv or vmep_ep_combine_recv."""
        self._lib.call(name, self._live_ep(), ctypes.byref(c_handle),
                       stream_ptr)

    def _zero_copy_buffer(self, c_handle, shape):
        """vmep_ep_combine_buffer of the dispatch `c_handle`, as a bf16
        tensor of `shape` viewing the EP buffer's memory."""
        ptr = ctypes.c_void_p()
        self._lib.call("vmep_ep_combine_buffer", self._live_ep(),
                       ctypes.byref(c_handle), ctypes.byref(ptr))
        return _device_view(ptr.value, shape, self.device)

    # ---- high-throughput: the C calls -----------------------------------

    def _ht_combine_buffer(self, c_handle, shape):
        """vmep_ep_ht_combine_buffer of the dispatch `c_handle`, as a bf16
        tensor of `shape` viewing the EP buffer's memory."""
        ptr = ctypes.c_void_p()
        self._lib.call("vmep_ep_ht_combine_buffer", self._live_ep(),
                       ctypes.byref(c_handle), ctypes.byref(ptr), None)
        return _device_view(ptr.value, shape, self.device)

    def _ht_layout(self, ep, topk_idx, n, K, outputs, stream_ptr):
        """vmep_ep_ht_layout of topk_idx [n, K] into `outputs` (per rank,
        per expert, in_rank: device pointers) on stream_ptr."""
        self._lib.call("vmep_ep_ht_layout", ep, topk_idx, n, K, *outputs,
                       stream_ptr)

    def _ht_dispatch(self, ep, args, phases, stream_ptr):
        """vmep_ep_ht_dispatch of `args` (a _lib.HtDispatchArgs) with
        `phases`; the C handle."""
        c_handle = _lib.HtHandle()
        self._lib.call("vmep_ep_ht_dispatch", ep, ctypes.byref(args), phases,
                       stream_ptr, ctypes.byref(c_handle))
        return c_handle

    def _ht_dispatch_recv(self, ep, args, c_handle, stream_ptr):
        """The receive phase of a send-only _ht_dispatch, into the receive
        arrays of `args`."""
        self._lib.call("vmep_ep_ht_dispatch_recv", ep, ctypes.byref(args),
                       ctypes.byref(c_handle), stream_ptr)

    def _ht_combine(self, ep, args, c_handle, stream_ptr):
        """vmep_ep_ht_combine of `args` (a _lib.HtCombineArgs) for the
        dispatch `c_handle`."""
        self._lib.call("vmep_ep_ht_combine", ep, ctypes.byref(args),
                       ctypes.byref(c_handle), stream_ptr)

    def _poll_errors(self):
        bits, bad = ctypes.c_uint(), ctypes.c_uint64()
        self._lib.call("vmep_ep_poll_errors", self._live_ep(),
                       ctypes.byref(bits), ctypes.byref(bad))
        return bits.value, bad.value

    # ---- handle bookkeeping ----------------------------------------------

    def _live_ep(self):
        if self._ep is None:
            raise Error("the buffer was destroyed")
        return self._ep

    def _remember(self, handle):
        self._recent[handle[0].data_ptr()] = handle
        while len(self._recent) > RECENT_HANDLES:
            self._recent.pop(next(iter(self._recent)))

    def _check_handle(self, handle):
        """The Handle of one of this buffer's dispatches. A plain 5-tuple
        rebuilt from a recent Handle's parts (DeepEP's handle is a plain
        tuple) is found by its src_info."""
        if isinstance(handle, Handle) and handle.buffer_id == id(self):
            return handle
        if isinstance(handle, (tuple, list)) and len(handle) == 5 and \
                isinstance(handle[0], torch.Tensor):
            found = self._recent.get(handle[0].data_ptr())
            if found is not None and tuple(handle[2:]) == tuple(found[2:]):
                return found
        raise ValueError("handle must be what one of this buffer's last "
                         f"{RECENT_HANDLES} dispatches returned (or a tuple "
                         "of its parts)")


class _DeviceMemory:
    """__cuda_array_interface__ over memory the library owns."""

    def __init__(self, ptr, shape):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape), "typestr": "<i2", "data": (ptr, False),
            "version": 2, "strides": None}


def _device_view(ptr, shape, device):
    """A bf16 tensor viewing `ptr` (no copy, not owned)."""
    with torch.cuda.device(device):
        return torch.as_tensor(_DeviceMemory(ptr, shape),
                               device=device).view(torch.bfloat16)

