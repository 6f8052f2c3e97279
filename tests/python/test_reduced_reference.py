"""The torch reference that gpu_call_compat checks a combine reduced at the
expert side against (gpu_common.reduced_reference), on the CPU: its fmaf
against the C library's, and the whole reduction against a loop over
tokens, channels and selections in libm's fmaf."""
import ctypes
import ctypes.util
import struct

import pytest
import torch

import gpu_common as G


@pytest.fixture
def fmaf():
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    fn = libm.fmaf
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float] * 3
    return fn


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def bf16(v):
    return torch.tensor(v, dtype=torch.float32).to(torch.bfloat16).item()


def test_fma32_rounds_once(fmaf):
    g = torch.Generator().manual_seed(7)
    a = torch.randn(4000, generator=g)
    b = torch.randn(4000, generator=g) * torch.rand(4000, generator=g) ** 8
    c = torch.randn(4000, generator=g) * 1e3 ** torch.rand(4000, generator=g)
    # Ties: a * b = 2^-24 (1 - 2^-46) below the halfway point of
    # c = 1 + 2^-23; summed in fp64 and rounded again it would round up.
    a = torch.cat([a, torch.tensor([1 + 2 ** -23, -(1 + 2 ** -23)])])
    b = torch.cat([b, torch.tensor([2 ** -24 - 2 ** -47] * 2)])
    c = torch.cat([c, torch.tensor([1 + 2 ** -23, -(1 + 2 ** -23)])])
    got = G.fma32(a, b, c)
    want = torch.tensor([fmaf(x, y, z) for x, y, z in
                         zip(a.tolist(), b.tolist(), c.tolist())])
    assert got[-1] == -(1 + 2 ** -23) and got[-2] == 1 + 2 ** -23
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("fp8", [False, True])
def test_reduced_reference_against_a_loop(fmaf, fp8):
    if fp8 and not hasattr(torch, "float8_e4m3fn"):
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    n, H, E, K, R = 12, 256, 16, 6, 4
    mode = G.Mode(fp8=fp8)
    me = G.Inputs(3, 0, 1, n, H, E, K)
    me.topk[0] = torch.tensor([5, 1, 4, -1, 6, 0])  # ranks 1 0 1 - 1 0
    rows = G.expert_rows(me, E, mode)
    want = torch.zeros(n, H)
    for t in range(n):
        ranks = [int(e) // (E // R) if e >= 0 else None
                 for e in me.topk[t].tolist()]
        heads = [k for k in range(K) if ranks[k] is not None and
                 ranks[k] not in ranks[:k]]
        for h in range(H):
            total = 0.0
            for k0 in heads:
                part = 0.0
                for k in range(k0, K):
                    if ranks[k] == ranks[k0]:
                        part = fmaf(me.weights[t, k].item(),
                                    rows[k][0][t, h].item(), part)
                total = f32(total + bf16(part))
            want[t, h] = bf16(total)
    got, _ = G.reduced_reference(me, E, R, mode)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
