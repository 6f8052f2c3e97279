"""
vmep: expert-parallel dispatch / combine for Mixture-of-Experts models over
CUDA VMM memory, with the low-latency Buffer of DeepEP and NIXL EP:

    import vmep as deep_ep            # the calls an engine makes stay the same
    buffer = deep_ep.Buffer(group, 0, num_rdma_bytes, low_latency_mode=True)
    recv_x, recv_count, handle, event, hook = buffer.low_latency_dispatch(
        x, topk_idx, num_max_dispatch_tokens_per_rank, num_experts)

A pure-Python package over libvmep.so (ctypes); see docs/PYTHON.md.
"""
import torch

from ._lib import VERSION, library_candidates
from .buffer import Buffer, Handle, library_path
from .compat import Config
from .errors import Error, LibraryNotFoundError, PeerError, TimeoutError
from .event import EventHandle, EventOverlap

__version__ = VERSION

# The dtype of topk_idx (int32 is accepted and widened).
topk_idx_t = torch.int64

__all__ = [
    "Buffer", "Config", "Error", "EventHandle", "EventOverlap", "Handle",
    "LibraryNotFoundError", "PeerError", "TimeoutError", "is_available",
    "library_candidates", "library_path", "library_version", "topk_idx_t",
    "__version__",
]


def library_version():
    """The loaded libvmep's version string (the package's: see _lib)."""
    from . import _lib
    return _lib.load().cdll.vmep_version().decode()


def is_available():
    """True when libvmep loads, torch sees a CUDA device and so does the
    CUDA driver that libvmep loads. Never raises."""
    try:
        import ctypes
        from . import _lib
        if not torch.cuda.is_available():
            return False
        lib = _lib.load()
        count = ctypes.c_int(0)
        return lib.vmep_device_count(ctypes.byref(count)) == 0 and \
            count.value > 0
    except Exception:
        return False
