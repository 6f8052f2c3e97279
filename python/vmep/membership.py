"""
The membership and mask methods of vmep.Buffer, with NIXL EP's names, over
the C calls of vmep.h's "Masks and membership" (a mixin: Buffer keeps the
group, the EP buffer and the shapes they read).
"""
import ctypes
import numbers

import torch

from . import _lib
from ._group import raise_with_callback_error
from .errors import STATUS_NAMES, Error

MAX_RANKS = 1024  # VMEP_LL_MAX_RANKS: the most ranks a buffer has room for


def capacity(value, name="max_num_ranks"):
    """An elastic capacity (ranks): an int in 1..MAX_RANKS."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= int(value) <= MAX_RANKS:
        raise ValueError(f"{name}={value}, expected 1..{MAX_RANKS}")
    return int(value)


class Membership:
    """Buffer's elastic methods and masks."""

    # At a membership change every rank of the resulting set calls
    # connect_ranks with the same `activate`: the ranks already there name
    # the newcomers, a newcomer names the ranks already there (an empty
    # list is allowed: it still resyncs). Survivors disconnect ranks that
    # died or left (not collective). Masks are per rank and synchronous.

    def update_memory_buffers(self, num_ranks, num_experts_per_rank,
                              num_rdma_bytes=0, num_nvl_bytes=0):
        """NIXL EP's allocation step: the capacity `num_ranks` (R) and
        E = R * num_experts_per_rank. Makes the EP buffer when there is a
        group and T and H are known (the shape keywords of Buffer()); over a
        tcp_store_group the group waits for the first connect_ranks.
        num_rdma_bytes / num_nvl_bytes are recorded, not used: vmep sizes
        its window from the shapes."""
        if self._destroyed:
            raise Error("update_memory_buffers: the buffer was destroyed")
        R = capacity(num_ranks, "num_ranks")
        per_rank = capacity(num_experts_per_rank, "num_experts_per_rank")
        E = R * per_rank
        self.num_rdma_bytes, self.num_nvl_bytes = num_rdma_bytes, num_nvl_bytes
        if self._ep is not None:
            if R != self.group_size or E != self._shape[2]:
                raise Error(f"update_memory_buffers: the EP buffer serves "
                            f"{self.group_size} ranks and {self._shape[2]} "
                            f"experts; vmep does not reallocate it for {R} "
                            f"ranks and {E} experts (destroy() and make a new "
                            f"Buffer)")
            return
        T, H, hinted_E, K = self._shape_hint
        if hinted_E is not None and int(hinted_E) != E:
            raise ValueError(f"update_memory_buffers: {R} ranks x "
                             f"{per_rank} experts = {E}, but Buffer() was "
                             f"given num_experts={hinted_E}")
        if self._group is None:
            if self.tcp_store_group is None:
                raise Error("update_memory_buffers: no group and no "
                            "tcp_store_group to make one")
            if not 0 <= self.rank < R:
                raise ValueError(f"update_memory_buffers: rank={self.rank}, "
                                 f"expected 0..{R - 1} (num_ranks={R})")
        elif self._group.elastic and R != self._group.size:
            raise ValueError(f"update_memory_buffers: num_ranks={R}, but "
                             f"this rank joined a job of at most "
                             f"{self._group.size} ranks (max_num_ranks)")
        elif R < self._group.size:
            raise ValueError(f"update_memory_buffers: num_ranks={R} is below "
                             f"the group's {self._group.size} ranks")
        self.max_num_ranks = R
        self.group_size = R
        self._shape_hint = (T, H, E, K)
        if self._group is not None and T is not None and H is not None:
            self._ensure_ep(*self._hinted_shape())

    def _need_group(self, what):
        if self._group is None and self._destroyed:
            raise Error(f"{what}: the buffer was destroyed")
        if self._group is None:
            raise Error(f"{what}: no group yet (a tcp_store_group: call "
                        "update_memory_buffers(num_ranks, ...) and then "
                        "connect_ranks(ranks) first)")
        return self._group

    def _needcapacity(self, what):
        """Calls that need R only (the masks) work once R is known."""
        if not self.group_size:
            self._need_group(what)

    def _rank_list(self, ranks, what, allow_self):
        """Validated distinct ints in 0..R-1 (R the capacity); this rank
        is dropped (allow_self, as NIXL EP's connect_ranks does) or
        refused."""
        if isinstance(ranks, torch.Tensor):
            ranks = ranks.flatten().tolist()
        elif isinstance(ranks, (numbers.Integral, str, bytes)):
            raise TypeError(f"{what}: remote_ranks must be a list of ranks, "
                            f"not {type(ranks).__name__}")
        out = []
        for r in ranks:
            out.append(self._rank_arg(r, what, allow_self))
        return [r for i, r in enumerate(out) if r is not None and
                r not in out[:i]]

    def _rank_arg(self, r, what, allow_self=False):
        if isinstance(r, bool) or not isinstance(r, numbers.Integral):
            raise TypeError(f"{what}: a rank must be an int, not "
                            f"{type(r).__name__} ({r!r})")
        r, R = int(r), self.group_size
        if not 0 <= r < R:
            raise ValueError(f"{what}: rank {r} is out of range 0..{R - 1} "
                             f"(the buffer's {R} ranks)")
        if r == self.rank:
            if allow_self:
                return None
            raise ValueError(f"{what}: rank {r} is this rank")
        return r

    def _no_store(self, what, ranks):
        return Error(f"{what}: rank(s) {ranks} are not in this buffer's "
                     "group. A Buffer over a torch.distributed group, an "
                     "mpi4py comm or a tcp_store_group has fixed "
                     "membership; membership changes need vmep's store: "
                     "create the Buffer from vmep's launch environment "
                     "with max_num_ranks=R, and new processes with rank= "
                     "and max_num_ranks=R (a join through VMEP_STORE_ADDR)",
                     _lib.ERR_UNSUPPORTED,
                     STATUS_NAMES[_lib.ERR_UNSUPPORTED], what)

    def _no_ep(self, what):
        return Error(f"{what}: the EP buffer does not exist yet; vmep makes "
                     "it from the shapes: pass num_max_dispatch_tokens_per_"
                     "rank=, hidden= and num_experts= to Buffer() "
                     "(num_experts also comes from update_memory_buffers), "
                     "or dispatch once first")

    def connect_ranks(self, remote_ranks, activate=True):
        """Adds `remote_ranks` to this buffer's connected set
        (vmep_ep_connect_ranks; collective over the resulting set, see
        above). This rank, duplicates and ranks already connected are
        skipped. activate=False leaves the new ranks masked until
        update_mask_buffer(r, False). Raises PeerError naming a rank that
        died, TimeoutError for one that never came."""
        if self._store_group_pending() and self.group_size:
            self._first_connect(remote_ranks)
        g = self._need_group("connect_ranks")
        ranks = self._rank_list(remote_ranks, "connect_ranks", True)
        if not g.has_store:
            members = set(range(g.size)) - self._disconnected
            outside = [r for r in ranks if r not in members]
            if outside:
                raise self._no_store("connect_ranks", outside)
            return  # a fixed group's members are connected
        if self._ep is None and not g.elastic and \
                all(r < g.size for r in ranks):
            return  # the group's ranks start connected when it is made
        if self._ep is None:
            if None in self._shape_hint[:3]:
                raise self._no_ep("connect_ranks")
            self._ensure_ep(*self._hinted_shape())
        arr = (ctypes.c_int * max(1, len(ranks)))(*ranks)
        self._lib.call("vmep_ep_connect_ranks", self._ep, arr, len(ranks),
                       int(bool(activate)))

    def _first_connect(self, remote_ranks):
        """NIXL EP's first connect_ranks over a tcp_store_group: the ranks
        named and this one make a fixed group through the store. They must
        be 0..W-1 (W <= R), each naming the same set; ranks W..R-1 stay
        masked, and connecting them later needs vmep's store."""
        ranks = self._rank_list(remote_ranks, "connect_ranks", True)
        members = sorted(set(ranks) | {self.rank})
        if members != list(range(len(members))):
            raise ValueError(
                f"connect_ranks: over a tcp_store_group the first call makes "
                f"a fixed group, so with this rank it must name ranks "
                f"0..W-1; got {members}")
        self._store_group(len(members))
        if None not in self._shape_hint[:3]:
            self._ensure_ep(*self._hinted_shape())

    def disconnect_ranks(self, remote_ranks):
        """Masks `remote_ranks`, unmaps their windows and forgets them here
        (vmep_ep_disconnect_ranks; not collective: the survivors call it
        for ranks that died or left). Ranks not connected are skipped."""
        g = self._need_group("disconnect_ranks")
        ranks = self._rank_list(remote_ranks, "disconnect_ranks", False)
        if self._ep is None:
            members = [] if g.elastic else [r for r in ranks if r < g.size]
            if not members:
                return  # nothing is connected yet
            raise Error("disconnect_ranks: the EP buffer does not exist yet, "
                        f"and ranks {members} will be connected when it is "
                        "made; create it first (dispatch once, or the shape "
                        "keywords of Buffer())")
        arr = (ctypes.c_int * max(1, len(ranks)))(*ranks)
        try:
            self._lib.call("vmep_ep_disconnect_ranks", self._ep, arr,
                           len(ranks))
        finally:
            if not g.has_store:
                self._disconnected.update(ranks)

    def disconnect_dead_ranks(self):
        """Disconnects every connected rank whose process vmep's store
        reports dead (vmep_ep_disconnect_dead); returns how many. vmep's
        own, not in NIXL EP."""
        g = self._need_group("disconnect_dead_ranks")
        if self._ep is None:
            return 0
        if not g.has_store:
            raise self._no_store("disconnect_dead_ranks", "(dead)")
        count = ctypes.c_int(0)
        self._lib.call("vmep_ep_disconnect_dead", self._ep,
                       ctypes.byref(count))
        return count.value

    def update_mask_buffer(self, rank_to_mask, mask=False):
        """Masks (mask=True: no tokens to or from it) or unmasks a connected
        rank, here only (vmep_ep_set_mask, synchronous). Before the EP
        buffer exists, the mask is kept and set when it is made."""
        self._needcapacity("update_mask_buffer")
        r = self._rank_arg(rank_to_mask, "update_mask_buffer")
        if self._ep is not None:
            self._lib.call("vmep_ep_set_mask", self._ep, r, int(bool(mask)))
        elif mask:
            self._pending_masks.add(r)
        else:
            self._pending_masks.discard(r)

    def query_mask_buffer(self, mask_status):
        """Fills `mask_status`, an int32 tensor [R] (R the capacity, on any
        device), with 1 for each rank masked here and 0 for the others
        (vmep_ep_query_mask, synchronous; ranks not connected are masked).
        Returns it."""
        self._needcapacity("query_mask_buffer")
        if not isinstance(mask_status, torch.Tensor):
            raise TypeError("mask_status must be a torch.Tensor, not "
                            f"{type(mask_status).__name__}")
        if mask_status.dtype != torch.int32:
            raise TypeError(f"mask_status must be torch.int32, is "
                            f"{mask_status.dtype}")
        R = self.group_size
        if tuple(mask_status.shape) != (R,):
            raise ValueError(f"mask_status has shape "
                             f"{tuple(mask_status.shape)}, expected ({R},) "
                             "(the buffer's ranks)")
        mask_status.copy_(torch.tensor(self._masks(), dtype=torch.int32))
        return mask_status

    def _masks(self):
        """1 for each rank masked here, 0 for the others, as a list of R."""
        R = self.group_size
        if self._ep is None:  # what the EP buffer will start with
            g = self._group
            connected = range(g.size) if g and not g.elastic else [self.rank]
            return [int(r not in connected or r in self._pending_masks)
                    for r in range(R)]
        count = self._lib.vmep_ep_max_ranks(self._ep)
        if count != R:
            raise Error(f"query_mask_buffer: the EP buffer has {count} "
                        f"ranks, the Buffer {R}")
        values = (ctypes.c_int32 * R)()
        self._lib.call("vmep_ep_query_mask", self._ep, values)
        return list(values)

    def clean_mask_buffer(self):
        """Unmasks every connected rank here (vmep_ep_clear_mask)."""
        self._needcapacity("clean_mask_buffer")
        self._pending_masks.clear()
        if self._ep is not None:
            self._lib.call("vmep_ep_clear_mask", self._ep)

    low_latency_update_mask_buffer = update_mask_buffer
    low_latency_query_mask_buffer = query_mask_buffer
    low_latency_clean_mask_buffer = clean_mask_buffer

    def barrier(self):
        """Waits for every connected rank (vmep_ep_barrier, over vmep's
        store); over a fixed group, or before the EP buffer exists, the
        group's barrier."""
        g = self._need_group("barrier")
        if self._ep is not None and g.has_store:
            self._lib.call("vmep_ep_barrier", self._ep)
            return
        if g.elastic:
            raise self._no_ep("barrier")
        status = self._lib.vmep_group_barrier(g.handle)
        raise_with_callback_error(self._lib, status, "vmep_group_barrier",
                                  g.callbacks)
