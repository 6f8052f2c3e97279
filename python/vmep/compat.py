"""
Where DeepEP and NIXL EP differ in the names they share: `dispatch` and
`combine` are DeepEP's high-throughput ("normal") calls and NIXL EP's
names for the low-latency ones, told apart here by their arguments; and
DeepEP's Config, with the buffer size hints engines size num_nvl_bytes
from.
"""
import numbers

import torch

from ._runtime import Runtime

# Keywords only the low-latency dispatch / combine take. A call with one of
# them, or with a tensor second (topk_idx, where DeepEP's high-throughput
# calls take the handle), is a low-latency call.
LOW_LATENCY_DISPATCH_KEYWORDS = frozenset((
    "num_max_dispatch_tokens_per_rank", "num_experts",
    "cumulative_local_expert_recv_stats", "dispatch_wait_recv_cost_stats",
    "use_fp8", "round_scale", "use_ue8m0", "return_recv_hook"))
LOW_LATENCY_COMBINE_KEYWORDS = frozenset((
    "topk_idx", "use_logfmt", "zero_copy", "return_recv_hook", "out",
    "combine_wait_recv_cost_stats"))

# The tokens per rank (T) Config's NVL size hint sizes the EP buffer for,
# unless Config(num_max_tokens_per_rank=...) says otherwise.
HINT_TOKENS_PER_RANK = 4096
# The top-k the hint assumes (vmep_ep_config.max_topk's default).
HINT_TOPK = 8


def is_low_latency(args, kwargs, keywords):
    """True for a low-latency call: a tensor second, or one of
    `keywords`."""
    return (len(args) > 1 and isinstance(args[1], torch.Tensor)) or \
        not keywords.isdisjoint(kwargs)


def positive_int(value, name):
    """`value` as an int >= 1: TypeError for a non-integer (bool
    included), ValueError below 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value}, expected a positive int")
    return int(value)


class Config:
    """DeepEP's high-throughput tuning, positional as DeepEP's. vmep reads
    num_sms: the blocks of the EP buffer's kernels when the call given this
    config creates the buffer (later calls cannot change them). The chunk
    sizes tune DeepEP's ring buffers, which vmep does not have: they are
    checked (positive ints) and kept. num_max_tokens_per_rank (vmep,
    keyword-only) is the T that get_nvl_buffer_size_hint sizes the EP
    buffer for."""

    def __init__(self, num_sms=20, num_max_nvl_chunked_send_tokens=6,
                 num_max_nvl_chunked_recv_tokens=256,
                 num_max_rdma_chunked_send_tokens=6,
                 num_max_rdma_chunked_recv_tokens=256, *,
                 num_max_tokens_per_rank=HINT_TOKENS_PER_RANK):
        self.num_sms = positive_int(num_sms, "num_sms")
        self.num_max_nvl_chunked_send_tokens = positive_int(
            num_max_nvl_chunked_send_tokens,
            "num_max_nvl_chunked_send_tokens")
        self.num_max_nvl_chunked_recv_tokens = positive_int(
            num_max_nvl_chunked_recv_tokens,
            "num_max_nvl_chunked_recv_tokens")
        self.num_max_rdma_chunked_send_tokens = positive_int(
            num_max_rdma_chunked_send_tokens,
            "num_max_rdma_chunked_send_tokens")
        self.num_max_rdma_chunked_recv_tokens = positive_int(
            num_max_rdma_chunked_recv_tokens,
            "num_max_rdma_chunked_recv_tokens")
        self.num_max_tokens_per_rank = positive_int(
            num_max_tokens_per_rank, "num_max_tokens_per_rank")

    def get_nvl_buffer_size_hint(self, hidden_bytes, num_ranks):
        """The num_nvl_bytes that give a Buffer's EP buffer T =
        num_max_tokens_per_rank tokens per rank at hidden size
        hidden_bytes / 2 (DeepEP's hidden_bytes: hidden times 2 for bf16)
        and top-k up to 8: vmep_ep_buffer_bytes of that shape."""
        hidden_bytes = positive_int(hidden_bytes, "hidden_bytes")
        R = positive_int(num_ranks, "num_ranks")
        return Runtime._bytes("vmep_ep_buffer_bytes",
                              self.num_max_tokens_per_rank, hidden_bytes // 2,
                              R, R, HINT_TOPK)

    def get_rdma_buffer_size_hint(self, hidden_bytes, num_ranks):
        """0: vmep's high-throughput calls use no RDMA buffer."""
        positive_int(hidden_bytes, "hidden_bytes")
        positive_int(num_ranks, "num_ranks")
        return 0

    def __repr__(self):
        return (f"vmep.Config(num_sms={self.num_sms}, "
                f"nvl=({self.num_max_nvl_chunked_send_tokens}, "
                f"{self.num_max_nvl_chunked_recv_tokens}), "
                f"rdma=({self.num_max_rdma_chunked_send_tokens}, "
                f"{self.num_max_rdma_chunked_recv_tokens}), "
                f"num_max_tokens_per_rank={self.num_max_tokens_per_rank})")


def check_config(config):
    """A call's `config`: None or a Config."""
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be a vmep.Config, not "
                        f"{type(config).__name__}")
    return config
