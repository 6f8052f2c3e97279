"""The elastic methods of vmep.Buffer without a GPU: a fake libvmep (Python
functions behind the real ctypes prototypes, recording every call) and
torch.cuda patched to say a device exists. What is checked: which group a
constructor makes (a join through vmep's store for rank= + max_num_ranks=),
config.max_ranks, the argument checks of connect_ranks / disconnect_ranks /
update_mask_buffer / query_mask_buffer (ranks out of range, this rank,
types, the mask tensor's dtype and shape), the arrays and flags handed to
C, and C failures raised as vmep.Error / PeerError / TimeoutError. None of
this runs a kernel: the elastic methods have not run on a GPU from Python.
"""
import ctypes

import pytest
import torch

import vmep
from vmep import _lib
from vmep.buffer import Buffer

from vmep.errors import STATUS_NAMES


class FakeC:
    """libvmep's entry points as Python functions. `fail(name, status,
    message)` makes the next calls of `name` fail; `calls` lists (name,
    args) of the calls that matter here."""

    QUIET = {"vmep_last_error", "vmep_status_name", "vmep_group_rank",
             "vmep_group_size", "vmep_group_node", "vmep_ep_max_ranks",
             "vmep_ep_num_local_experts", "vmep_ep_config_init"}

    def __init__(self, rank=0, size=2):
        self.env_rank, self.env_size = rank, size
        self.groups = {}  # handle -> (rank, size)
        self.calls, self.failing, self.error = [], {}, b""
        self.configs, self.R = [], 0
        self.mask, self.dead = [], 0
        self.joined = set()  # groups from vmep_group_join

    def fail(self, name, status, message):
        self.failing[name] = status
        self.error = message.encode()

    def named(self, name):
        return [args for n, args in self.calls if n == name]

    def __getattr__(self, name):
        if not name.startswith("vmep_"):
            raise AttributeError(name)
        impl = getattr(type(self), "c_" + name[5:], None)

        def fn(*args):
            if name not in self.QUIET:
                self.calls.append((name, args))
            if name in self.failing:
                return self.failing[name]
            return impl(self, *args) if impl else 0
        setattr(self, name, fn)  # keeps the restype / argtypes set on it
        return fn

    # ---- the entry points with behaviour --------------------------------

    def c_last_error(self):
        return self.error

    def c_status_name(self, status):
        return STATUS_NAMES.get(status, "VMEP_UNKNOWN_STATUS").encode()

    def _new_group(self, out, rank, size):
        handle = 0x1000 + len(self.groups)
        self.groups[handle] = (rank, size)
        out._obj.value = handle
        return 0

    def c_group_create_from_env(self, out):
        return self._new_group(out, self.env_rank, self.env_size)

    def c_group_join(self, rank, max_ranks, addr, token, out):
        status = self._new_group(out, rank, max_ranks)
        self.joined.add(out._obj.value)
        return status

    def c_group_create_custom(self, rank, size, ag, bar, user, out):
        return self._new_group(out, rank, size)

    def c_group_rank(self, handle):
        return self.groups[handle.value][0]

    def c_group_size(self, handle):
        return self.groups[handle.value][1]

    def c_group_node(self, handle, rank):
        return 0

    def c_group_allgather(self, handle, send, nbytes, recv):
        size = self.groups[handle.value][1]
        ctypes.memmove(recv, bytes(send) * size, nbytes * size)  # all agree
        return 0

    def c_ep_config_init(self, addr):
        cfg = _lib.EpConfig.from_address(addr)
        ctypes.memset(addr, 0, ctypes.sizeof(cfg))
        cfg.max_topk, cfg.device = 8, -1

    def c_ep_create(self, group, addr, out):
        cfg = _lib.EpConfig.from_address(addr)
        self.configs.append({f: getattr(cfg, f) for f, _ in cfg._fields_})
        rank, size = self.groups[group.value]
        self.R = max(cfg.max_ranks, size)
        self.E = cfg.num_experts
        alone = group.value in self.joined  # a join starts alone
        self.mask = [int(r != rank if alone else r >= size)
                     for r in range(self.R)]
        out._obj.value = 0x9000
        return 0

    def c_ep_max_ranks(self, ep):
        return self.R

    def c_ep_num_local_experts(self, ep):
        return self.E // self.R

    def c_ep_query_mask(self, ep, values):
        for r, m in enumerate(self.mask):
            values[r] = m
        return 0

    def c_ep_disconnect_dead(self, ep, count):
        count._obj.value = self.dead
        return 0


class Comm:
    """An mpi4py-like communicator (a fixed group through callbacks)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


@pytest.fixture
def fake(monkeypatch):
    """FakeC behind the real Library, torch.cuda saying a device exists."""
    c = FakeC()
    library = _lib.Library("fake-libvmep.so", cdll=c)
    monkeypatch.setattr(_lib, "load", lambda: library)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing",
                        lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.delenv("VMEP_STORE_ADDR", raising=False)
    return c


SHAPE = dict(num_max_dispatch_tokens_per_rank=8, hidden=256)


def ranks_of(args):
    """The rank list a connect / disconnect call handed to C."""
    arr, n = args[1], args[2]
    return list(arr)[:n]


# ---- which group, and config.max_ranks --------------------------------------

def test_join_makes_an_elastic_group_and_a_buffer_alone(fake):
    b = Buffer(rank=2, max_num_ranks=4, num_experts=8, **SHAPE)
    (join,) = fake.named("vmep_group_join")
    assert join[:4] == (2, 4, None, None)  # NULL: VMEP_STORE_ADDR
    assert fake.configs[-1]["max_ranks"] == 4
    assert fake.configs[-1]["num_experts"] == 8
    assert not fake.named("vmep_group_allgather")  # not collective
    assert (b.rank, b.group_size, b.num_local_experts) == (2, 4, 2)
    b2 = Buffer(rank=1, max_num_ranks=4, store_addr="10.0.0.1:2900")
    assert fake.named("vmep_group_join")[-1][:3] == (1, 4, b"10.0.0.1:2900")
    assert b2._ep is None  # no shapes yet: made at the first dispatch


@pytest.mark.parametrize("kwargs,error,text", [
    (dict(rank=4, max_num_ranks=4), ValueError, "expected 0..3"),
    (dict(rank=-1, max_num_ranks=4), ValueError, "expected 0..3"),
    (dict(rank=0, max_num_ranks=0), ValueError, "1..1024"),
    (dict(rank=0, max_num_ranks=1025), ValueError, "1..1024"),
    (dict(rank=0, max_num_ranks="4"), TypeError, "int"),
    (dict(rank=1.0, max_num_ranks=4), TypeError, "int"),
])
def test_join_arguments_checked_before_c(fake, kwargs, error, text):
    with pytest.raises(error, match=text):
        Buffer(**kwargs)
    assert not fake.named("vmep_group_join")


def test_launch_environment_with_a_capacity(fake):
    b = Buffer(max_num_ranks=4, num_experts=8, **SHAPE)
    assert fake.named("vmep_group_create_from_env")
    assert len(fake.named("vmep_group_allgather")) == 1  # shapes compared
    assert fake.configs[-1]["max_ranks"] == 4
    assert (b.rank, b.group_size) == (0, 4)
    plain = Buffer(num_experts=8, **SHAPE)
    assert fake.configs[-1]["max_ranks"] == 0 and plain.group_size == 2
    with pytest.raises(ValueError, match="below the group's 2 ranks"):
        Buffer(max_num_ranks=1)
    with pytest.raises(ValueError, match="rank=1, but this process is rank 0"):
        Buffer(rank=1)


def test_update_memory_buffers_over_a_tcp_store(fake):
    """NIXL EP's order: update_memory_buffers(R, ...) sets the capacity; the
    first connect_ranks makes the fixed group of the ranks named, W <= R
    (the others stay masked); then the EP buffer."""
    b = Buffer(rank=1, tcp_store_group=object(), **SHAPE)
    assert b._group is None and b._ep is None
    b.update_memory_buffers(4, 2, 1 << 20)
    assert not fake.named("vmep_group_create_custom")  # waits for connect
    assert b.group_size == 4 and b.num_rdma_bytes == 1 << 20
    status = b.query_mask_buffer(torch.zeros(4, dtype=torch.int32))
    assert status.tolist() == [1, 0, 1, 1]  # only this rank, before
    b.update_mask_buffer(0, True)  # kept until the EP buffer exists
    with pytest.raises(ValueError, match=r"0..W-1; got \[1, 3\]"):
        b.connect_ranks([3])
    b.connect_ranks(range(3))  # W = 3, this rank included
    (custom,) = fake.named("vmep_group_create_custom")
    assert custom[:2] == (1, 3)
    assert fake.configs[-1]["num_experts"] == 8
    assert fake.configs[-1]["max_ranks"] == 4
    assert [a[1:] for a in fake.named("vmep_ep_set_mask")] == [(0, 1)]
    assert b.group_size == 4 and b.runtime is b._group
    with pytest.raises(vmep.Error, match="not in this buffer's group"):
        b.connect_ranks([3])  # later ranks need vmep's store
    b.update_memory_buffers(4, 2, 0)  # the same again: nothing to do
    with pytest.raises(vmep.Error, match="does not reallocate"):
        b.update_memory_buffers(8, 2, 0)
    with pytest.raises(ValueError, match="num_experts=16"):
        Buffer(rank=0, tcp_store_group=object(), num_experts=16,
               **SHAPE).update_memory_buffers(4, 2, 0)
    with pytest.raises(ValueError, match="expected 0..1"):
        Buffer(rank=3, tcp_store_group=object()).update_memory_buffers(2, 2)
    # Without connect_ranks, the first dispatch's EP buffer makes a group of
    # all R ranks.
    c = Buffer(rank=0, tcp_store_group=object(), nvlink_backend="nvshmem",
               disable_ll_nvlink=True, **SHAPE)
    c.update_memory_buffers(2, 4)
    c._ensure_ep(8, 256, 8, 4)
    assert fake.named("vmep_group_create_custom")[-1][:2] == (0, 2)
    c.destroy()
    assert c.runtime is None
    groups = len(fake.named("vmep_group_create_custom"))
    for call in (lambda: c._ensure_ep(8, 256, 8, 4),
                 lambda: c.connect_ranks([1]),
                 lambda: c.update_memory_buffers(2, 4)):
        with pytest.raises(vmep.Error, match="destroyed"):
            call()  # never a new group over the store
    assert len(fake.named("vmep_group_create_custom")) == groups
    c.set_tcp_store_group(None)  # NIXL EP drops it at destroy
    assert c.tcp_store_group is None
    joined = Buffer(rank=0, max_num_ranks=4)
    with pytest.raises(ValueError, match="at most 4 ranks"):
        joined.update_memory_buffers(8, 2)


# ---- connect / disconnect ---------------------------------------------------

def test_connect_ranks_hands_c_the_other_ranks(fake):
    b = Buffer(rank=1, max_num_ranks=4, num_experts=8, **SHAPE)
    b.connect_ranks([0, 1, 3, 3])  # NIXL EP: this rank is filtered out
    args = fake.named("vmep_ep_connect_ranks")[-1]
    assert ranks_of(args) == [0, 3] and args[3] == 1
    b.connect_ranks(torch.tensor([2]), activate=False)
    args = fake.named("vmep_ep_connect_ranks")[-1]
    assert ranks_of(args) == [2] and args[3] == 0
    b.connect_ranks([])  # still called: the set resyncs
    assert fake.named("vmep_ep_connect_ranks")[-1][2] == 0


@pytest.mark.parametrize("ranks,error,text", [
    ([4], ValueError, "out of range 0..3"),
    ([-1], ValueError, "out of range"),
    ([0, 2.0], TypeError, "must be an int"),
    ([True], TypeError, "must be an int"),
    (3, TypeError, "list of ranks"),
])
def test_connect_and_disconnect_check_ranks(fake, ranks, error, text):
    b = Buffer(rank=1, max_num_ranks=4, num_experts=8, **SHAPE)
    with pytest.raises(error, match=text):
        b.connect_ranks(ranks)
    with pytest.raises(error, match=text):
        b.disconnect_ranks(ranks)
    assert not fake.named("vmep_ep_connect_ranks")
    assert not fake.named("vmep_ep_disconnect_ranks")


def test_disconnect_ranks(fake):
    b = Buffer(rank=1, max_num_ranks=4, num_experts=8, **SHAPE)
    with pytest.raises(ValueError, match="rank 1 is this rank"):
        b.disconnect_ranks([0, 1])
    b.disconnect_ranks([3, 0, 3])
    assert ranks_of(fake.named("vmep_ep_disconnect_ranks")[-1]) == [3, 0]
    alone = Buffer(rank=2, max_num_ranks=4)  # joined, no EP buffer yet
    alone.disconnect_ranks([0])  # nothing connected: nothing to do
    early = Buffer(max_num_ranks=4)  # 2 ranks from the environment
    early.disconnect_ranks([2, 3])  # never connected: nothing to do
    with pytest.raises(vmep.Error, match=r"ranks \[1\] will be connected"):
        early.disconnect_ranks([1, 3])
    assert len(fake.named("vmep_ep_disconnect_ranks")) == 1
    fake.fail("vmep_ep_disconnect_ranks", -2, "cuMemUnmap: CUDA_ERROR_X")
    with pytest.raises(vmep.Error, match="CUDA_ERROR_X"):
        b.disconnect_ranks([2])


@pytest.mark.parametrize("status,cls,message,rank", [
    (_lib.ERR_PEER, vmep.PeerError, "vmep_ep_connect_ranks: rank 3 died", 3),
    (_lib.ERR_TIMEOUT, vmep.TimeoutError,
     "waited 30000 ms for rank 2 to publish", 2),
    (_lib.ERR_INVALID_ARG, vmep.Error, "rank 0 is not connected", 0),
])
def test_connect_ranks_c_failures(fake, status, cls, message, rank):
    b = Buffer(rank=1, max_num_ranks=4, num_experts=8, **SHAPE)
    fake.fail("vmep_ep_connect_ranks", status, message)
    with pytest.raises(cls) as info:
        b.connect_ranks([2, 3])
    assert type(info.value) is cls
    assert info.value.status == status and info.value.rank == rank
    assert info.value.status_name == STATUS_NAMES[status]
    assert message in str(info.value)


def test_connect_before_the_ep_buffer(fake):
    b = Buffer(max_num_ranks=4)  # launch environment, 2 ranks, no shapes
    b.connect_ranks([1])  # a group member: connected once the buffer is made
    assert not fake.named("vmep_ep_connect_ranks") and b._ep is None
    with pytest.raises(vmep.Error, match="hidden="):
        b.connect_ranks([3])  # a newcomer: needs the buffer, so the shapes
    b.update_memory_buffers(4, 2)
    with pytest.raises(vmep.Error, match="hidden="):
        b.connect_ranks([3])
    shaped = Buffer(max_num_ranks=4, **SHAPE)
    shaped.update_memory_buffers(4, 2)  # T, H and now E: the buffer is made
    shaped.connect_ranks([2, 3])
    assert ranks_of(fake.named("vmep_ep_connect_ranks")[-1]) == [2, 3]


def test_fixed_groups_refuse_membership_changes(fake):
    b = Buffer(comm=Comm(0, 2), max_num_ranks=4, num_experts=8, **SHAPE)
    b.connect_ranks([0, 1])  # its members: connected already
    with pytest.raises(vmep.Error, match="fixed membership") as info:
        b.connect_ranks([3])
    assert info.value.status == _lib.ERR_UNSUPPORTED
    b.disconnect_ranks([1])  # not collective: allowed without a store
    assert ranks_of(fake.named("vmep_ep_disconnect_ranks")[-1]) == [1]
    with pytest.raises(vmep.Error, match=r"rank\(s\) \[1\]"):
        b.connect_ranks([1])  # coming back needs vmep's store
    with pytest.raises(vmep.Error, match="fixed membership"):
        b.disconnect_dead_ranks()
    assert not fake.named("vmep_ep_connect_ranks")


def test_disconnect_dead_ranks(fake):
    b = Buffer(rank=0, max_num_ranks=4, num_experts=8, **SHAPE)
    fake.dead = 2
    assert b.disconnect_dead_ranks() == 2
    assert Buffer(rank=1, max_num_ranks=4).disconnect_dead_ranks() == 0


# ---- masks ------------------------------------------------------------------

def test_update_mask_buffer(fake):
    b = Buffer(rank=1, max_num_ranks=4, num_experts=8, **SHAPE)
    b.update_mask_buffer(3, True)
    b.update_mask_buffer(3)  # mask=False: unmask
    assert [a[1:] for a in fake.named("vmep_ep_set_mask")] == [(3, 1), (3, 0)]
    with pytest.raises(ValueError, match="this rank"):
        b.update_mask_buffer(1, True)
    with pytest.raises(ValueError, match="out of range 0..3"):
        b.update_mask_buffer(4, True)
    with pytest.raises(TypeError, match="must be an int"):
        b.update_mask_buffer("2", True)
    assert len(fake.named("vmep_ep_set_mask")) == 2
    fake.fail("vmep_ep_set_mask", -1,
              "vmep_ep_set_mask: rank 2 is not connected "
              "(vmep_ep_connect_ranks)")
    with pytest.raises(vmep.Error, match="not connected") as info:
        b.update_mask_buffer(2, True)
    assert info.value.status == _lib.ERR_INVALID_ARG and info.value.rank == 2
    # Before the EP buffer exists a mask is kept, and set on the ranks
    # that are connected when the buffer is made (a join: this rank only).
    early = Buffer(rank=1, max_num_ranks=4)
    early.update_mask_buffer(2, True)
    early.update_mask_buffer(3, True)
    early.update_mask_buffer(3, False)
    status = early.query_mask_buffer(torch.zeros(4, dtype=torch.int32))
    assert status.tolist() == [1, 0, 1, 1]
    fake.failing.clear()
    before = len(fake.named("vmep_ep_set_mask"))
    early._ensure_ep(8, 256, 8, 4)
    assert len(fake.named("vmep_ep_set_mask")) == before  # 2: not connected
    fixed = Buffer(comm=Comm(0, 4))
    fixed.update_mask_buffer(2, True)
    fixed.clean_mask_buffer()
    fixed.update_mask_buffer(3, True)
    fixed._ensure_ep(8, 256, 8, 4)
    assert fake.named("vmep_ep_set_mask")[-1][1:] == (3, 1)
    assert b.low_latency_update_mask_buffer == b.update_mask_buffer


def test_query_mask_buffer(fake):
    b = Buffer(rank=1, max_num_ranks=4, num_experts=8, **SHAPE)
    fake.mask = [1, 0, 0, 1]
    status = torch.full((4,), 7, dtype=torch.int32)
    assert b.query_mask_buffer(status) is status
    assert status.tolist() == [1, 0, 0, 1]
    for bad, error, text in [
            (torch.zeros(4, dtype=torch.int64), TypeError, "int32"),
            (torch.zeros(4, dtype=torch.bool), TypeError, "int32"),
            (torch.zeros(3, dtype=torch.int32), ValueError,
             r"expected \(4,\)"),
            (torch.zeros(2, 2, dtype=torch.int32), ValueError, "shape"),
            ([0, 0, 0, 0], TypeError, "torch.Tensor")]:
        with pytest.raises(error, match=text):
            b.query_mask_buffer(bad)
    assert len(fake.named("vmep_ep_query_mask")) == 1
    fake.fail("vmep_ep_query_mask", -2, "cudaMemcpy: an illegal memory access")
    with pytest.raises(vmep.Error, match="illegal memory access"):
        b.query_mask_buffer(status)
    assert b.low_latency_query_mask_buffer == b.query_mask_buffer


def test_query_mask_before_the_ep_buffer(fake):
    # what the EP buffer starts with: the group's ranks connected, or a
    # joined rank alone; every other rank masked
    status = torch.zeros(4, dtype=torch.int32)
    Buffer(max_num_ranks=4).query_mask_buffer(status)
    assert status.tolist() == [0, 0, 1, 1]
    Buffer(rank=2, max_num_ranks=4).query_mask_buffer(status)
    assert status.tolist() == [1, 1, 0, 1]
    assert not fake.named("vmep_ep_query_mask")


def test_clean_mask_buffer(fake):
    b = Buffer(rank=1, max_num_ranks=4, num_experts=8, **SHAPE)
    b.clean_mask_buffer()
    assert len(fake.named("vmep_ep_clear_mask")) == 1
    Buffer(rank=1, max_num_ranks=4).clean_mask_buffer()  # nothing masked yet
    assert len(fake.named("vmep_ep_clear_mask")) == 1
    assert b.low_latency_clean_mask_buffer == b.clean_mask_buffer


# ---- barrier ----------------------------------------------------------------

def test_barrier(fake):
    b = Buffer(rank=1, max_num_ranks=4, num_experts=8, **SHAPE)
    b.barrier()
    assert len(fake.named("vmep_ep_barrier")) == 1
    fake.fail("vmep_ep_barrier", _lib.ERR_PEER, "vmep_ep_barrier: rank 3 died")
    with pytest.raises(vmep.PeerError) as info:
        b.barrier()
    assert info.value.rank == 3
    with pytest.raises(vmep.Error, match="does not exist yet"):
        Buffer(rank=1, max_num_ranks=4).barrier()  # joined: whose barrier?
    Buffer(max_num_ranks=4).barrier()  # before the EP buffer: the group's
    Buffer(comm=Comm(0, 2), num_experts=8, **SHAPE).barrier()  # fixed group
    assert len(fake.named("vmep_group_barrier")) == 2
    assert len(fake.named("vmep_ep_barrier")) == 2


def test_no_group_yet(fake):
    b = Buffer(rank=0, tcp_store_group=object())
    for call in (lambda: b.connect_ranks([1]), lambda: b.disconnect_ranks([1]),
                 lambda: b.update_mask_buffer(1, True), b.barrier,
                 lambda: b.query_mask_buffer(
                     torch.zeros(2, dtype=torch.int32)),
                 b.clean_mask_buffer):
        with pytest.raises(vmep.Error, match="update_memory_buffers"):
            call()

