"""
The C library through ctypes: where libvmep.so is found, the C structs
mirrored field by field (tests/python/test_structs.py compiles a C program
against include/vmep.h and compares every size and offset), the function
prototypes, and C status codes turned into Python exceptions.

Nothing here imports torch, so the layout and error tests run without it.
"""
import ctypes
import glob
import os
import threading
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_int, c_int32,
                    c_size_t, c_uint, c_uint64, c_void_p)

from .errors import (  # noqa: F401 (the status values, re-exported)
    EP_ERR_BAD_EXPERT, EP_ERR_OVERFLOW, EP_ERR_TIMEOUT, ERR_CUDA,
    ERR_INVALID_ARG, ERR_BUSY, ERR_OUT_OF_MEMORY, ERR_PEER, ERR_SYSTEM,
    ERR_TIMEOUT, ERR_UNSUPPORTED, OK, Error, LibraryNotFoundError,
    error_from_status)

EP_SEND = 1
EP_RECV = 2
EP_SEND_RECV = 3

SCALES_ROW_MAJOR = 0
SCALES_COL_MAJOR = 1
SCALES_UE8M0 = 2

LIBRARY_ENV = "VMEP_LIBRARY"
LIBRARY_NAMES = ("libvmep.so", "libvmep.so.0")


class _Sized(Structure):
    """A C struct that grows (vmep.h, "Structs that grow"): struct_size,
    its first field, is set to this mirror's size, so that a newer library
    gives the fields this package does not know their defaults. The other
    defaults are the C _init function's (`_defaults_`), set here rather
    than by calling it, which would write a newer library's larger struct
    into this mirror. Keyword arguments set fields as Structure's do."""
    _defaults_ = {}

    def __init__(self, **fields):
        super().__init__()
        self.struct_size = ctypes.sizeof(self)
        for name, value in {**self._defaults_, **fields}.items():
            setattr(self, name, value)


class EpConfig(_Sized):
    """vmep_ep_config. max_ranks (appended last) is the capacity R of an
    elastic buffer; 0 means the group's size."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("num_experts", c_int),
        ("hidden", c_int),
        ("max_tokens_per_rank", c_int),
        ("max_topk", c_int),
        ("device", c_int),
        ("num_sms", c_int),
        ("timeout_ms", c_int),
        ("zero_copy", c_int),
        ("max_ranks", c_int),
    ]
    _defaults_ = {"max_topk": 8, "device": -1}  # vmep_ep_config_init's


class EpHandle(Structure):
    """vmep_ep_handle: one dispatch, for its combine."""
    _fields_ = [
        ("parity", c_int),
        ("num_tokens", c_int),
        ("num_topk", c_int),
        ("call", c_uint64),
    ]


class DispatchArgs(_Sized):
    """vmep_ep_dispatch_args (pointers are device addresses)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("x", c_void_p),
        ("topk_idx", c_void_p),
        ("num_tokens", c_int),
        ("num_topk", c_int),
        ("use_fp8", c_int),
        ("round_scale", c_int),
        ("recv_x", c_void_p),
        ("recv_scales", c_void_p),
        ("recv_count", c_void_p),
        ("src_info", c_void_p),
        ("layout_range", c_void_p),
        ("scale_layout", c_int),
        ("recv_wait_ns", c_void_p),
        ("topk_weights", c_void_p),
    ]


class CombineArgs(_Sized):
    """vmep_ep_combine_args."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("expert_out", c_void_p),
        ("topk_idx", c_void_p),
        ("topk_weights", c_void_p),
        ("out", c_void_p),
        ("recv_wait_ns", c_void_p),
        ("use_logfmt", c_int),
    ]


class HtHandle(Structure):
    """vmep_ep_ht_handle: one high-throughput dispatch, for its combine and
    for cached dispatches (num_recv and recv_src point into the caller's
    tensors, which the Python handle keeps alive)."""
    _fields_ = [
        ("parity", c_int),
        ("num_tokens", c_int),
        ("num_topk", c_int),
        ("use_fp8", c_int),
        ("call", c_uint64),
        ("num_recv", c_void_p),
        ("recv_src", c_void_p),
        ("capacity", c_int),
    ]


class HtDispatchArgs(_Sized):
    """vmep_ep_ht_dispatch_args (pointers are device addresses; `cached`
    the address of an HtHandle, or None)."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("x", c_void_p),
        ("x_scales", c_void_p),
        ("topk_idx", c_void_p),
        ("topk_weights", c_void_p),
        ("num_tokens", c_int),
        ("num_topk", c_int),
        ("use_fp8", c_int),
        ("expert_alignment", c_int),
        ("num_recv", c_void_p),
        ("recv_expert_count", c_void_p),
        ("capacity", c_int),
        ("recv_x", c_void_p),
        ("recv_scales", c_void_p),
        ("recv_topk_idx", c_void_p),
        ("recv_topk_weights", c_void_p),
        ("recv_src", c_void_p),
        ("cached", c_void_p),
    ]


class HtCombineArgs(_Sized):
    """vmep_ep_ht_combine_args."""
    _fields_ = [
        ("struct_size", c_size_t),
        ("x", c_void_p),
        ("topk_weights", c_void_p),
        ("bias0", c_void_p),
        ("bias1", c_void_p),
        ("out", c_void_p),
        ("out_topk_weights", c_void_p),
    ]


# The C names of the mirrored structs, for the layout test.
STRUCTS = {
    "vmep_ep_config": EpConfig,
    "vmep_ep_handle": EpHandle,
    "vmep_ep_dispatch_args": DispatchArgs,
    "vmep_ep_combine_args": CombineArgs,
    "vmep_ep_ht_handle": HtHandle,
    "vmep_ep_ht_dispatch_args": HtDispatchArgs,
    "vmep_ep_ht_combine_args": HtCombineArgs,
}

# vmep_allgather_fn / vmep_barrier_fn.
ALLGATHER_FN = CFUNCTYPE(c_int, c_void_p, c_size_t, c_void_p, c_void_p)
BARRIER_FN = CFUNCTYPE(c_int, c_void_p)

_P = c_void_p  # opaque handles and device pointers
_PROTOTYPES = {
    "vmep_status_name": (c_char_p, [c_int]),
    "vmep_last_error": (c_char_p, []),
    "vmep_version": (c_char_p, []),
    "vmep_device_count": (c_int, [POINTER(c_int)]),
    "vmep_group_create_from_env": (c_int, [POINTER(_P)]),
    "vmep_group_create_custom":
        (c_int, [c_int, c_int, ALLGATHER_FN, BARRIER_FN, _P, POINTER(_P)]),
    "vmep_group_destroy": (c_int, [_P]),
    "vmep_group_rank": (c_int, [_P]),
    "vmep_group_size": (c_int, [_P]),
    "vmep_group_local_rank": (c_int, [_P]),
    "vmep_group_node": (c_int, [_P, c_int]),
    "vmep_group_allgather": (c_int, [_P, _P, c_size_t, _P]),
    "vmep_group_barrier": (c_int, [_P]),
    "vmep_ep_config_init": (None, [_P]),
    "vmep_ep_buffer_bytes": (c_int, [_P, c_int, POINTER(c_size_t)]),
    "vmep_ep_deepep_bytes": (c_int, [_P, c_int, POINTER(c_size_t)]),
    "vmep_ep_create": (c_int, [_P, _P, POINTER(_P)]),
    "vmep_ep_destroy": (c_int, [_P]),
    "vmep_ep_rank": (c_int, [_P]),
    "vmep_ep_num_ranks": (c_int, [_P]),
    "vmep_ep_num_local_experts": (c_int, [_P]),
    "vmep_ep_device": (c_int, [_P]),
    "vmep_ep_num_sms": (c_int, [_P]),
    "vmep_ep_dispatch":
        (c_int, [_P, POINTER(DispatchArgs), c_int, _P, POINTER(EpHandle)]),
    "vmep_ep_dispatch_recv": (c_int, [_P, POINTER(EpHandle), _P]),
    "vmep_ep_combine_buffer": (c_int, [_P, POINTER(EpHandle), POINTER(_P)]),
    "vmep_ep_combine":
        (c_int, [_P, POINTER(CombineArgs), POINTER(EpHandle), c_int, _P]),
    "vmep_ep_combine_recv": (c_int, [_P, POINTER(EpHandle), _P]),
    "vmep_ep_poll_errors": (c_int, [_P, POINTER(c_uint), POINTER(c_uint64)]),
}

# Masks and membership (include/vmep.h, "Masks and membership").
_ELASTIC_PROTOTYPES = {
    "vmep_ep_max_ranks": (c_int, [_P]),
    "vmep_ep_query_mask": (c_int, [_P, POINTER(c_int32)]),
    "vmep_ep_set_mask": (c_int, [_P, c_int, c_int]),
    "vmep_ep_clear_mask": (c_int, [_P]),
    "vmep_ep_connect_ranks": (c_int, [_P, POINTER(c_int), c_int, c_int]),
    "vmep_ep_disconnect_ranks": (c_int, [_P, POINTER(c_int), c_int]),
    "vmep_ep_disconnect_dead": (c_int, [_P, POINTER(c_int)]),
    "vmep_ep_barrier": (c_int, [_P]),
    "vmep_group_join":
        (c_int, [c_int, c_int, c_char_p, c_char_p, POINTER(_P)]),
}
_PROTOTYPES.update(_ELASTIC_PROTOTYPES)

# High-throughput dispatch / combine (include/vmep.h, "High-throughput"),
# since 0.4.0: required like the rest (a library older than MIRRORED is
# refused anyway).
_HT_PROTOTYPES = {
    "vmep_ep_ht_layout":
        (c_int, [_P, _P, c_int, c_int, _P, _P, _P, _P]),
    "vmep_ep_ht_dispatch_args_init": (None, [_P]),
    "vmep_ep_ht_dispatch":
        (c_int, [_P, POINTER(HtDispatchArgs), c_int, _P, POINTER(HtHandle)]),
    "vmep_ep_ht_dispatch_recv":
        (c_int, [_P, POINTER(HtDispatchArgs), POINTER(HtHandle), _P]),
    "vmep_ep_ht_combine_args_init": (None, [_P]),
    "vmep_ep_ht_combine":
        (c_int, [_P, POINTER(HtCombineArgs), POINTER(HtHandle), _P]),
    "vmep_ep_ht_combine_buffer":
        (c_int, [_P, POINTER(HtHandle), POINTER(_P), POINTER(c_int)]),
}
_PROTOTYPES.update(_HT_PROTOTYPES)


def library_candidates():
    """Where libvmep.so is looked for, in order: $VMEP_LIBRARY (a file, or a
    folder holding it); next to the package (the installed layout puts the
    package in <libdir>/python/vmep beside <libdir>/libvmep.so); the build
    trees of this checkout (<repo>/build*/src, newest first); then the
    system loader's search path (LD_LIBRARY_PATH, ldconfig)."""
    found = []
    env = os.environ.get(LIBRARY_ENV)
    if env:
        if os.path.isdir(env):
            found += [os.path.join(env, n) for n in LIBRARY_NAMES]
        else:
            found.append(env)
    package = os.path.dirname(os.path.abspath(__file__))
    for up in (package, os.path.dirname(package),
               os.path.dirname(os.path.dirname(package))):
        found += [os.path.join(up, n) for n in LIBRARY_NAMES]
    repo = os.path.dirname(os.path.dirname(package))
    builds = glob.glob(os.path.join(repo, "build*", "src", "libvmep.so"))
    found += sorted(builds, key=os.path.getmtime, reverse=True)
    found += list(LIBRARY_NAMES)  # bare names: the system loader
    return found


# This package's version, and the libvmep whose structs it mirrors. The
# structs carry their size (struct_size), so any library of the same major
# number and at least this minor one serves: a newer one gives the fields
# appended since their defaults. An older one, or another major, is
# refused at load.
VERSION = "0.5.0"
MIRRORED = tuple(int(n) for n in VERSION.split(".")[:2])


def serves(library_version):
    """True when a libvmep of `library_version` ("0.5.1") can be used by
    this package: the same major number, a minor number >= MIRRORED's."""
    try:
        major, minor = (int(n) for n in library_version.split(".")[:2])
    except ValueError:
        return False
    return major == MIRRORED[0] and minor >= MIRRORED[1]


class Library:
    """libvmep with its prototypes set; `call(name, *args)` raises the
    mapped exception for a failed status. A library that lacks an entry
    point (one built before elastic membership) is refused at load with
    the missing names, never half bound. `cdll` replaces ctypes.CDLL(path)
    (the CPU tests pass a fake)."""

    def __init__(self, path, cdll=None):
        self.path = path
        self.cdll = ctypes.CDLL(path) if cdll is None else cdll
        missing = [name for name in _PROTOTYPES
                   if getattr(self.cdll, name, None) is None]
        if missing:
            before = [what for what, names in (
                ("elastic membership: masks, connect / disconnect, "
                 "vmep_group_join", _ELASTIC_PROTOTYPES),
                ("the high-throughput calls", _HT_PROTOTYPES))
                if any(n in names for n in missing)]
            why = f" (built before {' and '.join(before)})" if before else ""
            raise AttributeError(
                f"{path} lacks {', '.join(missing)}{why}; rebuild libvmep "
                "from a checkout that matches this package")
        for name, (restype, argtypes) in _PROTOTYPES.items():
            fn = getattr(self.cdll, name)
            fn.restype, fn.argtypes = restype, argtypes
        version = self.cdll.vmep_version()  # bytes (a test fake: not)
        if isinstance(version, bytes) and not serves(version.decode()):
            major, minor = MIRRORED
            raise AttributeError(
                f"{path} is libvmep {version.decode()}, this package mirrors "
                f"{VERSION}'s structs and needs libvmep {major}.x with x >= "
                f"{minor}; rebuild libvmep from a checkout that matches this "
                "package")

    def __getattr__(self, name):
        if name.startswith("vmep_") and name in _PROTOTYPES:
            return getattr(self.cdll, name)
        raise AttributeError(name)

    def last_error(self):
        text = self.cdll.vmep_last_error()
        return text.decode(errors="replace") if text else ""

    def status_name(self, status):
        text = self.cdll.vmep_status_name(status)
        return text.decode() if text else f"status {status}"

    def check(self, status, what):
        """Raises the exception of a failed C status (with vmep_last_error's
        text, read on this thread right after the call)."""
        if status != OK:
            raise error_from_status(status, self.last_error(), what,
                                    self.status_name(status))

    def call(self, name, *args):
        self.check(getattr(self.cdll, name)(*args), name)


_lock = threading.Lock()
_library = None


def load():
    """The process's Library, loaded on first use. LibraryNotFoundError
    (an OSError) lists every place tried when none loads."""
    global _library
    with _lock:
        if _library is not None:
            return _library
        tried = []
        for candidate in library_candidates():
            if os.sep in candidate and not os.path.exists(candidate):
                tried.append(f"{candidate} (absent)")
                continue
            try:
                _library = Library(candidate)
                return _library
            except (OSError, AttributeError) as exc:
                tried.append(f"{candidate} ({exc})")
        raise LibraryNotFoundError(
            "no usable libvmep.so; set VMEP_LIBRARY to its path. Tried: " +
            "; ".join(tried))


def reset_for_tests():
    """Forgets the loaded library (tests that point VMEP_LIBRARY elsewhere)."""
    global _library
    with _lock:
        _library = None
