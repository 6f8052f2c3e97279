"""
CUDA events as DeepEP / NIXL EP hand them out: EventHandle (an event
recorded on a stream) and EventOverlap (an optional event plus the tensors
that must stay alive until it completes; a context manager whose exit
makes the current stream wait).
"""
import torch


class EventHandle:
    """A CUDA event recorded on `stream` (default: the current stream)."""

    def __init__(self, stream=None):
        self.event = torch.cuda.Event()
        self.event.record(stream if stream is not None else
                          torch.cuda.current_stream())

    def current_stream_wait(self):
        torch.cuda.current_stream().wait_event(self.event)


class EventOverlap:
    """`event` (an EventHandle or None) and `extra_tensors`, kept referenced
    so that their memory is not reused before the event completes."""

    def __init__(self, event=None, extra_tensors=None):
        self.event = event
        self.extra_tensors = extra_tensors

    def current_stream_wait(self):
        """Makes the current stream wait for the event (which must exist:
        the call was made with async_finish=True)."""
        assert self.event is not None, "no event: the call was not async"
        self.event.current_stream_wait()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.event is not None:
            self.event.current_stream_wait()
