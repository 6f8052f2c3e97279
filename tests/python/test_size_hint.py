"""The size hints against the C library's own computations."""
import ctypes

import pytest

import vmep
from vmep import _lib

SHAPES = [(128, 7168, 8, 256), (128, 7168, 16, 256), (256, 4096, 2, 4),
          (4096, 7168, 4, 16), (1, 128, 1, 1)]


def c_bytes(lib, fn, T, H, R, E, K=8):
    cfg = _lib.EpConfig()
    lib.vmep_ep_config_init(ctypes.addressof(cfg))
    cfg.max_tokens_per_rank, cfg.hidden, cfg.num_experts = T, H, E
    cfg.max_topk = K
    out = ctypes.c_size_t()
    assert getattr(lib.cdll, fn)(ctypes.addressof(cfg), R,
                                 ctypes.byref(out)) == 0
    return out.value


@pytest.mark.parametrize("T,H,R,E", SHAPES)
def test_hint_is_the_c_buffer_size(lib, T, H, R, E):
    hint = vmep.Buffer.get_low_latency_rdma_size_hint(T, H, R, E)
    assert hint == c_bytes(lib, "vmep_ep_buffer_bytes", T, H, R, E)
    assert vmep.Buffer.get_rdma_size_hint(T, H, R, E) == hint
    deepep = vmep.Buffer.get_deepep_rdma_size_hint(T, H, R, E)
    assert deepep == c_bytes(lib, "vmep_ep_deepep_bytes", T, H, R, E)
    assert hint > 0 and hint % 4096 == 0


def test_deepep_hint_by_its_formula(lib):
    # DeepEP's low-latency layout, as vmep_ep_deepep_bytes documents it.
    T, H, R, E = 128, 7168, 8, 256
    msg = 16 + max(2 * H, H + H // 128 * 4)
    comb = H // 128 * 4 + 2 * H
    total = 2 * (max(T * msg, E * T * comb) + E * T * max(msg, comb) + E * 4)
    assert vmep.Buffer.get_deepep_rdma_size_hint(T, H, R, E) == \
        (total + 127) // 128 * 128


def test_hint_refuses_bad_shapes(lib):
    with pytest.raises(vmep.Error, match="max_tokens_per_rank"):
        vmep.Buffer.get_low_latency_rdma_size_hint(0, 7168, 8, 256)
    with pytest.raises(vmep.Error, match="number of ranks"):
        vmep.Buffer.get_low_latency_rdma_size_hint(128, 7168, 0, 256)


@pytest.mark.parametrize("hidden,R", [(7168, 8), (4096, 2), (128, 1)])
def test_config_nvl_hint_is_the_ep_buffer_for_its_tokens(lib, hidden, R):
    """Config.get_nvl_buffer_size_hint(hidden_bytes, R): the EP buffer of
    num_max_tokens_per_rank tokens (4096 unless given), hidden
    hidden_bytes / 2, top-k 8."""
    hint = vmep.Config().get_nvl_buffer_size_hint(2 * hidden, R)
    assert hint == c_bytes(lib, "vmep_ep_buffer_bytes", 4096, hidden, R, R)
    small = vmep.Config(num_max_tokens_per_rank=64)
    assert small.get_nvl_buffer_size_hint(2 * hidden, R) == \
        c_bytes(lib, "vmep_ep_buffer_bytes", 64, hidden, R, R)
    assert vmep.Config().get_rdma_buffer_size_hint(2 * hidden, R) == 0


def test_config_nvl_hint_refuses_bad_shapes(lib):
    with pytest.raises(vmep.Error, match="hidden"):
        vmep.Config().get_nvl_buffer_size_hint(2 * 100, 8)  # not 128k
    with pytest.raises(ValueError, match="hidden_bytes"):
        vmep.Config().get_nvl_buffer_size_hint(0, 8)


def ht_sizer(num_nvl_bytes, R):
    """What Buffer._ht_tokens reads of a Buffer, and nothing else."""
    b = object.__new__(vmep.Buffer)
    b.num_nvl_bytes, b.group_size, b.zero_copy = num_nvl_bytes, R, False
    return b


@pytest.mark.parametrize("T,H,R,E,K", [(4096, 7168, 8, 256, 8),
                                       (300, 2048, 4, 16, 8),
                                       (1, 128, 2, 2, 1)])
def test_ht_tokens_is_the_largest_t_that_fits(lib, T, H, R, E, K):
    """A Buffer given num_nvl_bytes = the hint for T tokens gets at least T
    from its first high-throughput dispatch (more where the rounding of the
    size leaves room), the largest T that fits; one byte less gives less
    than T; a smaller top-k leaves room for more."""
    def size(t, k=K):
        return c_bytes(lib, "vmep_ep_buffer_bytes", t, H, R, E, k)

    def largest(budget, k):
        got = ht_sizer(budget, R)._ht_tokens(H, E, k)
        assert size(got, k) <= budget
        assert got == 65535 or size(got + 1, k) > budget
        return got

    budget = size(T)
    assert largest(budget, K) >= T
    if T > 1:
        assert largest(budget - 1, K) < T
    else:
        with pytest.raises(vmep.Error, match="below the EP buffer of one"):
            ht_sizer(budget - 1, R)._ht_tokens(H, E, K)
    assert largest(budget, 1) >= largest(budget, K)
    assert largest(size(65535) * 2, K) == 65535
