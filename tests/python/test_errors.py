"""C statuses become the right exceptions with the C message; a Python
exception in a group callback never crosses into C."""

import pytest

import vmep
from vmep import _group, _lib
from vmep.errors import error_from_status


def test_status_mapping():
    e = error_from_status(-6, "store: rank 3 died (its key vmep/dead/3)",
                          "vmep_group_barrier")
    assert isinstance(e, vmep.PeerError) and isinstance(e, vmep.Error)
    assert e.rank == 3 and e.status == -6
    assert e.status_name == "VMEP_ERR_PEER"
    assert "rank 3 died" in str(e) and "vmep_group_barrier" in str(e)
    t = error_from_status(-5, "barrier: waited 300000 ms for rank 1, rank 2")
    assert isinstance(t, vmep.TimeoutError) and isinstance(t, TimeoutError)
    assert t.rank == 1
    g = error_from_status(-2, "cuMemCreate(fabric, 2097152 B, device 0): "
                          "CUDA_ERROR_NOT_PERMITTED")
    assert type(g) is vmep.Error and g.rank is None
    assert "CUDA_ERROR_NOT_PERMITTED" in str(g)
    assert error_from_status(-1, "").message  # never an empty text


def test_c_message_reaches_python(lib):
    with pytest.raises(vmep.Error) as info:
        vmep.Buffer.get_low_latency_rdma_size_hint(128, 100, 8, 256)
    assert info.value.status == _lib.ERR_INVALID_ARG
    assert "hidden = 100" in info.value.message
    with pytest.raises(vmep.Error, match="num_experts = 12"):
        vmep.Buffer.get_low_latency_rdma_size_hint(128, 7168, 8, 12)


class Raising(_group._Callbacks):
    def __init__(self):
        super().__init__(0, 2)

    def allgather_bytes(self, data):
        raise KeyError("peer table gone")


def test_callback_exception_stays_in_python(lib):
    cb = Raising()
    with pytest.raises(vmep.Error) as info:
        _group.Group.custom(lib, cb)
    assert isinstance(info.value.__cause__, KeyError)
    assert "allgather" in str(info.value)
    assert cb.error is None  # handed over to the raised exception


def test_fail_fast_callbacks_do_not_call_out(lib):
    cb = Raising()
    cb.fail_fast = True
    assert cb._allgather(None, 0, None, None) == _lib.ERR_PEER
    assert cb._barrier(None) == _lib.ERR_PEER
    assert cb.error is None


def test_group_of_one_through_callbacks(lib):
    class One(_group._Callbacks):
        def __init__(self):
            super().__init__(0, 1)

        def allgather_bytes(self, data):
            return [data]

    g = _group.Group.custom(lib, One())
    assert (g.rank, g.size) == (0, 1)
    assert g.allgather(b"abcd") == [b"abcd"]
    g.destroy()
    g.destroy()  # idempotent


def test_store_callbacks_round_trip(lib):
    class Store:  # the part of torch's Store API the callbacks use
        def __init__(self):
            self.kv = {}

        def set(self, k, v):
            self.kv[k] = bytes(v)

        def wait(self, keys):
            assert all(k in self.kv for k in keys)

        def get(self, k):
            return self.kv[k]

        def delete_key(self, k):
            del self.kv[k]

    store = Store()
    cb = _group.StoreCallbacks(store, 0, 1)
    for i in range(4):
        assert cb.allgather_bytes(bytes([i])) == [bytes([i])]
    assert len(store.kv) == 2  # rounds 0 and 1 deleted


def test_optional_symbols_bound_or_not_implemented(lib):
    for name in _lib._OPTIONAL_PROTOTYPES:
        if hasattr(lib.cdll, name):
            assert lib.optional(name) is not None
        else:
            with pytest.raises(NotImplementedError, match=name):
                lib.optional(name)
