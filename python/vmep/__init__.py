"""
vmep: expert-parallel dispatch / combine for Mixture-of-Experts models over
CUDA VMM memory, with the Buffer of DeepEP (low-latency and
high-throughput calls) and NIXL EP:

    import vmep as deep_ep            # the calls an engine makes stay the same
    buffer = deep_ep.Buffer(group, 0, num_rdma_bytes, low_latency_mode=True)
    recv_x, recv_count, handle, event, hook = buffer.low_latency_dispatch(
        x, topk_idx, num_max_dispatch_tokens_per_rank, num_experts)

A pure-Python package over libvmep.so (ctypes); see docs/PYTHON.md.
PyTorch is needed at run time (Buffer and its events), not to install or
import the package: without torch, `vmep.library_available()` still tells
whether libvmep.so loads.
"""
from . import _lib
from ._lib import VERSION, library_candidates
from .errors import Error, LibraryNotFoundError, PeerError, TimeoutError

try:
    import torch
except ImportError:  # installed without torch: the library can be checked
    torch = None

if torch is not None:
    from .buffer import Buffer, Handle, HtHandle
    from .compat import Config
    from .event import EventHandle, EventOverlap

    # The dtype of topk_idx (int32 is accepted and widened).
    topk_idx_t = torch.int64

__version__ = VERSION

__all__ = [
    "Buffer", "Config", "Error", "EventHandle", "EventOverlap", "Handle",
    "HtHandle", "LibraryNotFoundError", "PeerError", "TimeoutError",
    "is_available", "library_available", "library_candidates",
    "library_path", "library_version", "topk_idx_t", "__version__",
]


def __getattr__(name):
    """Without torch, the torch-based names say what is missing."""
    if name in __all__:
        raise AttributeError(f"vmep.{name} needs PyTorch, which is not "
                             "installed (vmep needs it at run time)")
    raise AttributeError(f"module 'vmep' has no attribute {name!r}")


def library_path():
    """The libvmep.so this process loaded (loading it if needed)."""
    return _lib.load().path


def library_version():
    """The loaded libvmep's version string (the package's: see _lib)."""
    return _lib.load().cdll.vmep_version().decode()


def library_available():
    """True when libvmep.so loads (found as library_candidates() lists) and
    is this package's version; no GPU or torch needed, so a CPU machine can
    confirm an install. Never raises."""
    try:
        _lib.load()
        return True
    except Exception:
        return False


def is_available():
    """True when libvmep loads, torch sees a CUDA device and so does the
    CUDA driver that libvmep loads: the package can run here. Never
    raises. library_available() answers for the library alone."""
    try:
        import ctypes
        lib = _lib.load()
        if torch is None or not torch.cuda.is_available():
            return False
        count = ctypes.c_int(0)
        return lib.vmep_device_count(ctypes.byref(count)) == 0 and \
            count.value > 0
    except Exception:
        return False
