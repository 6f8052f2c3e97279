"""
Exceptions of the binding. A failed C call raises Error carrying the C
status and vmep_last_error()'s message; a peer that failed or left
(VMEP_ERR_PEER) raises PeerError and a wait past its timeout
(VMEP_ERR_TIMEOUT) raises TimeoutError, both with `rank` set when the
message names one.
"""
import builtins
import re

_RANK = re.compile(r"\brank (\d+)")


class Error(RuntimeError):
    """A vmep call failed. `status` is the C vmep_status (negative),
    `status_name` its name ("VMEP_ERR_CUDA"), `message` the C library's own
    text, `rank` the rank the message names (or None)."""

    def __init__(self, message, status=None, status_name=None, call=None):
        self.message = message
        self.status = status
        self.status_name = status_name
        self.call = call
        match = _RANK.search(message or "")
        self.rank = int(match.group(1)) if match else None
        prefix = f"{call}: " if call and not (message or "").startswith(
            call) else ""
        suffix = f" [{status_name}]" if status_name else ""
        super().__init__(f"{prefix}{message}{suffix}")


class PeerError(Error):
    """VMEP_ERR_PEER: a peer rank failed or left (`rank` names it)."""


class TimeoutError(Error, builtins.TimeoutError):
    """VMEP_ERR_TIMEOUT: a wait for a peer ran past its timeout."""


class LibraryNotFoundError(OSError):
    """libvmep.so could not be loaded (the message lists where it looked)."""


# The vmep_status values of include/vmep.h (VMEP_STATUS_MAP), never
# renumbered: the package's one copy of the list. The loaded library's own
# vmep_status_name names a failed call's status (so a code added to the
# library after this list still gets its name); this table gives the
# constants below and the names when no library answers.
# tests/python/test_structs.py compares it with the header and the library.
STATUSES = (
    ("OK", 0),
    ("ERR_INVALID_ARG", -1),
    ("ERR_CUDA", -2),
    ("ERR_UNSUPPORTED", -3),
    ("ERR_OUT_OF_MEMORY", -4),
    ("ERR_TIMEOUT", -5),
    ("ERR_PEER", -6),
    ("ERR_SYSTEM", -7),
    ("ERR_BUSY", -8),
)
STATUS_NAMES = {value: "VMEP_" + name for name, value in STATUSES}
_VALUES = dict(STATUSES)
OK = _VALUES["OK"]
ERR_INVALID_ARG = _VALUES["ERR_INVALID_ARG"]
ERR_CUDA = _VALUES["ERR_CUDA"]
ERR_UNSUPPORTED = _VALUES["ERR_UNSUPPORTED"]
ERR_OUT_OF_MEMORY = _VALUES["ERR_OUT_OF_MEMORY"]
ERR_TIMEOUT = _VALUES["ERR_TIMEOUT"]
ERR_PEER = _VALUES["ERR_PEER"]
ERR_SYSTEM = _VALUES["ERR_SYSTEM"]
ERR_BUSY = _VALUES["ERR_BUSY"]

# Bits of vmep_ep_poll_errors' error word (VMEP_EP_ERR_* in vmep.h), as
# Buffer.poll_errors returns them.
EP_ERR_BAD_EXPERT = 1  # an expert id >= E or < -1 was skipped
EP_ERR_TIMEOUT = 2  # a rank was masked after a timeout
# a high-throughput dispatch received more rows than its capacity
# (num_worst_tokens): the rows past it were dropped, never written
EP_ERR_OVERFLOW = 4


def error_from_status(status, message, call=None, status_name=None):
    """The exception for C status `status` (not VMEP_OK) with the C text.
    `status_name` (the library's vmep_status_name) wins over the table."""
    name = status_name or STATUS_NAMES.get(status, f"status {status}")
    if not message:
        message = f"failed with {name}"
    cls = PeerError if status == ERR_PEER else \
        TimeoutError if status == ERR_TIMEOUT else Error
    return cls(message, status, name, call)
