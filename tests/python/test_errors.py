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
    b = error_from_status(-8, "vmep_group_destroy: 1 holder(s) still use it")
    assert type(b) is vmep.Error and b.status_name == "VMEP_ERR_BUSY"


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
    # A later group over the same store has keys of its own.
    later = _group.StoreCallbacks(store, 0, 1)
    assert later.allgather_bytes(b"x") == [b"x"]
    assert len(store.kv) == 3
    assert len({k.rsplit("/", 2)[0] for k in store.kv}) == 2


def test_every_entry_point_is_bound(lib):
    for name, (restype, argtypes) in _lib._PROTOTYPES.items():
        fn = getattr(lib, name)
        assert fn.restype == restype and list(fn.argtypes) == argtypes, name


class OldCDLL:
    """A libvmep built before elastic membership: every entry point but
    the elastic ones (as lambdas, which take restype / argtypes)."""

    def __init__(self):
        for name in _lib._PROTOTYPES:
            if name not in _lib._ELASTIC_PROTOTYPES:
                setattr(self, name, lambda *a: 0)


def test_old_library_is_refused_with_the_missing_names(tmp_path, monkeypatch):
    with pytest.raises(AttributeError) as info:
        _lib.Library("/old/libvmep.so", cdll=OldCDLL())
    text = str(info.value)
    for name in _lib._ELASTIC_PROTOTYPES:
        assert name in text
    assert "elastic membership" in text and "rebuild" in text
    # load() moves on, and names why in what it raises
    monkeypatch.setattr(_lib, "library_candidates", lambda: ["libold.so"])
    monkeypatch.setattr(_lib.ctypes, "CDLL", lambda path: OldCDLL())
    _lib.reset_for_tests()
    try:
        with pytest.raises(vmep.LibraryNotFoundError,
                           match="libold.so.*vmep_ep_connect_ranks"):
            _lib.load()
    finally:
        _lib.reset_for_tests()


def test_elastic_c_errors_reach_python(lib):
    # Checks the C library makes before it needs a GPU or a store.
    with pytest.raises(vmep.Error, match="ep is NULL") as info:
        lib.call("vmep_ep_set_mask", None, 1, 1)
    assert info.value.status == _lib.ERR_INVALID_ARG
    assert info.value.status_name == "VMEP_ERR_INVALID_ARG"
    assert info.value.call == "vmep_ep_set_mask"
    for name, args in [("vmep_ep_clear_mask", ()),
                       ("vmep_ep_query_mask", (None,)),
                       ("vmep_ep_barrier", ()),
                       ("vmep_ep_connect_ranks", (None, 0, 1)),
                       ("vmep_ep_disconnect_ranks", (None, 0)),
                       ("vmep_ep_disconnect_dead", (None,))]:
        with pytest.raises(vmep.Error, match="ep is NULL"):
            lib.call(name, None, *args)
    assert lib.vmep_ep_max_ranks(None) == 0


def test_group_join_refusals(lib, monkeypatch):
    monkeypatch.delenv("VMEP_STORE_ADDR", raising=False)
    with pytest.raises(vmep.Error, match="rank 5 is not in 0..3") as info:
        _group.Group.join(lib, 5, 4, "127.0.0.1:1")
    assert info.value.status == _lib.ERR_INVALID_ARG
    with pytest.raises(vmep.Error, match="max_ranks 2000"):
        _group.Group.join(lib, 0, 2000, "127.0.0.1:1")
    with pytest.raises(vmep.Error, match="VMEP_STORE_ADDR"):
        _group.Group.join(lib, 0, 4)  # no address, none in the environment


class OtherVersionCDLL:
    """A libvmep with every entry point, of another version."""

    def __init__(self, version):
        for name in _lib._PROTOTYPES:
            setattr(self, name, lambda *a: 0)
        self.vmep_version = lambda: version


@pytest.mark.parametrize("version",
                         [b"0.1.0", b"0.3.0", b"0.4.7", b"1.3.0", b"x"])
def test_other_version_is_refused(version):
    """An older library (its structs may lack fields the mirrors have, or
    struct_size), or another major number: refused at load."""
    with pytest.raises(AttributeError, match=f"is libvmep {version.decode()}"
                       f", this package mirrors {_lib.VERSION}.*needs "
                       "libvmep 0.x with x >= 5"):
        _lib.Library("/old/libvmep.so", cdll=OtherVersionCDLL(version))


@pytest.mark.parametrize("version", [b"0.5.0", b"0.5.7", b"0.6.0", b"0.12.1"])
def test_newer_minor_is_served(version):
    """A newer minor version reads the mirrors' struct_size and gives the
    fields they lack their defaults: it loads."""
    lib = _lib.Library("/new/libvmep.so", cdll=OtherVersionCDLL(version))
    assert lib.path == "/new/libvmep.so"
