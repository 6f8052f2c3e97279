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


_NAMES = {
    -1: "VMEP_ERR_INVALID_ARG", -2: "VMEP_ERR_CUDA",
    -3: "VMEP_ERR_UNSUPPORTED", -4: "VMEP_ERR_OUT_OF_MEMORY",
    -5: "VMEP_ERR_TIMEOUT", -6: "VMEP_ERR_PEER", -7: "VMEP_ERR_SYSTEM",
    -8: "VMEP_ERR_BUSY",
}


def error_from_status(status, message, call=None, status_name=None):
    """The exception for C status `status` (not VMEP_OK) with the C text."""
    name = status_name or _NAMES.get(status, f"status {status}")
    if not message:
        message = f"failed with {name}"
    cls = PeerError if status == -6 else TimeoutError if status == -5 else Error
    return cls(message, status, name, call)
