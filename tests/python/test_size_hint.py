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
