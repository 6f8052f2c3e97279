"""
Process groups for a Buffer: vmep's own (the launch environment: vmep-run,
torchrun, Open MPI, Slurm), an elastic join of a running job's store
(vmep_group_join), or a framework's through
vmep_group_create_custom with allgather / barrier callbacks written here
over torch.distributed, an mpi4py communicator or a torch TCPStore.

A callback never lets a Python exception cross into C: it records it and
returns a failed status, which the C call reports; the Buffer then raises
with the recorded exception chained. Callbacks can be switched to fail at
once (`fail_fast`), so that a destructor never blocks in a collective.
"""
import ctypes

from . import _lib


class _Callbacks:
    """Base of the framework collectives: C-callable allgather and barrier
    bound to one object, kept alive as long as the group."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size
        self.error = None
        self.fail_fast = False
        self.c_allgather = _lib.ALLGATHER_FN(self._allgather)
        self.c_barrier = _lib.BARRIER_FN(self._barrier)

    def _allgather(self, send, nbytes, recv, _user):
        if self.fail_fast:
            return _lib.ERR_PEER
        try:
            data = ctypes.string_at(send, nbytes) if nbytes else b""
            parts = self.allgather_bytes(data)
            if len(parts) != self.size or any(len(p) != nbytes for p in parts):
                raise RuntimeError(
                    f"allgather of {nbytes} bytes got sizes "
                    f"{[len(p) for p in parts]}")
            if nbytes:
                ctypes.memmove(recv, b"".join(parts), nbytes * self.size)
            return _lib.OK
        except BaseException as exc:  # never into C
            self.error = exc
            return _lib.ERR_PEER

    def _barrier(self, _user):
        if self.fail_fast:
            return _lib.ERR_PEER
        try:
            self.barrier()
            return _lib.OK
        except BaseException as exc:
            self.error = exc
            return _lib.ERR_PEER

    def allgather_bytes(self, data):
        raise NotImplementedError

    def barrier(self):
        self.allgather_bytes(b"\0")


class TorchCallbacks(_Callbacks):
    """Over a torch.distributed ProcessGroup: CPU tensors for gloo (and
    other CPU backends), CUDA tensors on the current device for nccl."""

    def __init__(self, group):
        import torch
        import torch.distributed as dist
        self.torch, self.dist, self.group = torch, dist, group
        backend = str(dist.get_backend(group)).lower()
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if "nccl" in backend else torch.device("cpu"))
        super().__init__(dist.get_rank(group), dist.get_world_size(group))

    def allgather_bytes(self, data):
        if not data:
            self.barrier()
            return [b""] * self.size
        torch = self.torch
        mine = torch.tensor(list(data), dtype=torch.uint8, device=self.device)
        parts = [torch.empty_like(mine) for _ in range(self.size)]
        self.dist.all_gather(parts, mine, group=self.group)
        return [bytes(p.cpu().tolist()) for p in parts]

    def barrier(self):
        self.dist.barrier(group=self.group)


class CommCallbacks(_Callbacks):
    """Over an mpi4py communicator."""

    def __init__(self, comm):
        self.comm = comm
        super().__init__(comm.Get_rank(), comm.Get_size())

    def allgather_bytes(self, data):
        return list(self.comm.allgather(data))

    def barrier(self):
        self.comm.Barrier()


class StoreCallbacks(_Callbacks):
    """Over a torch.distributed Store (TCPStore, FileStore): rank r sets
    vmep/g<k>/<n>/<r>, waits for every rank's key of round n and reads
    them. A rank deletes its key of round n - 2 once round n's keys are all
    there: every rank has read it by then (it set a later key after
    reading). k counts the groups this process made over the store, so a
    later group never reads an earlier one's keys (the ranks make their
    groups over a store in the same order)."""

    _groups = {}  # id(store) -> groups made over it

    def __init__(self, store, rank, size, prefix="vmep"):
        k = StoreCallbacks._groups.get(id(store), 0)
        StoreCallbacks._groups[id(store)] = k + 1
        self.store, self.prefix, self.round = store, f"{prefix}/g{k}", 0
        super().__init__(rank, size)

    def _key(self, n, r):
        return f"{self.prefix}/{n}/{r}"

    def allgather_bytes(self, data):
        n = self.round
        self.round += 1
        self.store.set(self._key(n, self.rank), data)
        keys = [self._key(n, r) for r in range(self.size)]
        self.store.wait(keys)
        parts = [bytes(self.store.get(k)) for k in keys]
        if n >= 2:
            try:
                self.store.delete_key(self._key(n - 2, self.rank))
            except Exception:  # stores without delete keep a few bytes
                pass
        return parts


class Group:
    """A vmep_group and what keeps it alive (the callbacks). `has_store`:
    vmep's own TCP store backs it (from the launch environment, or joined),
    which membership changes need; a group over a framework's collectives
    has fixed membership. `elastic`: joined (vmep_group_join): no
    group-wide collectives, its EP buffer starts with this rank alone."""

    def __init__(self, lib, handle, callbacks=None, elastic=False):
        self.lib, self.handle, self.callbacks = lib, handle, callbacks
        self.elastic = elastic
        self.has_store = callbacks is None
        self.rank = lib.vmep_group_rank(handle)
        self.size = lib.vmep_group_size(handle)

    @classmethod
    def from_env(cls, lib):
        out = ctypes.c_void_p()
        lib.call("vmep_group_create_from_env", ctypes.byref(out))
        return cls(lib, out)

    @classmethod
    def join(cls, lib, rank, max_ranks, store_addr=None, token=None):
        """Joins a running job's store as `rank` of at most `max_ranks`
        (not collective). store_addr None: VMEP_STORE_ADDR; token None:
        VMEP_JOB_TOKEN (both read by the C library)."""
        out = ctypes.c_void_p()
        lib.call("vmep_group_join", int(rank), int(max_ranks),
                 store_addr.encode() if store_addr else None,
                 token.encode() if token else None, ctypes.byref(out))
        return cls(lib, out, elastic=True)

    @classmethod
    def custom(cls, lib, callbacks):
        out = ctypes.c_void_p()
        status = lib.vmep_group_create_custom(
            callbacks.rank, callbacks.size, callbacks.c_allgather,
            callbacks.c_barrier, None, ctypes.byref(out))
        raise_with_callback_error(lib, status, "vmep_group_create_custom",
                                  callbacks)
        return cls(lib, out, callbacks)

    def allgather(self, data):
        """Every rank's `data` (bytes of one size), in rank order."""
        recv = ctypes.create_string_buffer(len(data) * self.size)
        status = self.lib.vmep_group_allgather(self.handle, data, len(data),
                                               recv)
        raise_with_callback_error(self.lib, status, "vmep_group_allgather",
                                  self.callbacks)
        raw = recv.raw
        return [raw[i * len(data):(i + 1) * len(data)]
                for i in range(self.size)]

    def destroy(self):
        if self.handle:
            handle, self.handle = self.handle, None
            self.lib.check(self.lib.vmep_group_destroy(handle),
                           "vmep_group_destroy")


def raise_with_callback_error(lib, status, what, callbacks):
    """lib.check, chaining the exception a callback recorded, if any."""
    if status == _lib.OK:
        return
    cause = callbacks.error if callbacks is not None else None
    if callbacks is not None:
        callbacks.error = None
    try:
        lib.check(status, what)
    except Exception as exc:
        if cause is not None:
            raise exc from cause
        raise
