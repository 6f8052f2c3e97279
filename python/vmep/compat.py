"""
What DeepEP and NIXL EP have besides the low-latency path, answered so
that an engine fails with a clear message instead of an AttributeError or
TypeError: DeepEP's high-throughput ("normal") path, which vmep does not
implement, and its Config. Engines import Config with Buffer and ask for
the default configs while they set up, even in low-latency mode, so those
work; the high-throughput calls themselves raise NotImplementedError.
"""

HIGH_THROUGHPUT = ("vmep implements the low-latency path only "
                   "(low_latency_dispatch / low_latency_combine); DeepEP's "
                   "high-throughput path ({what}) is not implemented: run "
                   "the engine in low-latency mode (e.g. SGLang's "
                   "--deepep-mode low_latency)")

# Keywords only the high-throughput dispatch / combine take: a call to the
# dispatch / combine aliases with any of them is a high-throughput call.
HIGH_THROUGHPUT_KEYWORDS = frozenset((
    "num_tokens_per_rank", "num_tokens_per_rdma_rank", "is_token_in_rank",
    "num_tokens_per_expert", "expert_alignment", "num_worst_tokens",
    "config", "previous_event", "allocate_on_comm_stream", "bias"))
# dispatch also: the low-latency dispatch takes neither
DISPATCH_KEYWORDS = HIGH_THROUGHPUT_KEYWORDS | {"handle", "topk_weights"}


def high_throughput(what):
    return NotImplementedError(HIGH_THROUGHPUT.format(what=what))


def refuse_high_throughput(what, args, kwargs,
                           keywords=HIGH_THROUGHPUT_KEYWORDS):
    """Raises if the call is a high-throughput one: one of `keywords`, or a
    handle (a tuple) where the low-latency call takes topk_idx, its second
    argument."""
    found = sorted(keywords.intersection(kwargs))
    if found:
        raise high_throughput(f"{what} with {', '.join(found)}")
    if len(args) > 1 and isinstance(args[1], tuple):
        raise high_throughput(f"{what} with a handle as its second argument")


class Config:
    """DeepEP's high-throughput tuning (SMs and chunk sizes), kept as given.
    vmep's low-latency calls never read it."""

    def __init__(self, num_sms=20, num_max_nvl_chunked_send_tokens=6,
                 num_max_nvl_chunked_recv_tokens=256,
                 num_max_rdma_chunked_send_tokens=6,
                 num_max_rdma_chunked_recv_tokens=256):
        self.num_sms = int(num_sms)
        self.num_max_nvl_chunked_send_tokens = \
            int(num_max_nvl_chunked_send_tokens)
        self.num_max_nvl_chunked_recv_tokens = \
            int(num_max_nvl_chunked_recv_tokens)
        self.num_max_rdma_chunked_send_tokens = \
            int(num_max_rdma_chunked_send_tokens)
        self.num_max_rdma_chunked_recv_tokens = \
            int(num_max_rdma_chunked_recv_tokens)

    def get_nvl_buffer_size_hint(self, hidden_bytes, num_ranks):
        """0: vmep allocates no high-throughput buffer."""
        del hidden_bytes, num_ranks
        return 0

    def get_rdma_buffer_size_hint(self, hidden_bytes, num_ranks):
        """0: vmep allocates no high-throughput buffer."""
        del hidden_bytes, num_ranks
        return 0

    def __repr__(self):
        return (f"vmep.Config(num_sms={self.num_sms}, "
                f"nvl=({self.num_max_nvl_chunked_send_tokens}, "
                f"{self.num_max_nvl_chunked_recv_tokens}), "
                f"rdma=({self.num_max_rdma_chunked_send_tokens}, "
                f"{self.num_max_rdma_chunked_recv_tokens}))")
