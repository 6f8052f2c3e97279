"""GPU test 5: ranks that disagree on num_max_dispatch_tokens_per_rank (then
on hidden) get an error on every rank, quickly, not a hang; a buffer the
ranks then agree on works."""
import time

import torch

import gpu_common as G
import vmep


def expect_disagreement(buf, T, H, E, K):
    x = torch.zeros((4, H), dtype=torch.bfloat16, device="cuda")
    topk = torch.zeros((4, K), dtype=torch.int64, device="cuda")
    start = time.monotonic()
    try:
        buf.low_latency_dispatch(x, topk, T, E, use_fp8=False)
    except vmep.Error as exc:
        assert "disagree" in str(exc), exc
        took = time.monotonic() - start
        assert took < 30, f"the error took {took:.1f} s"
        print(f"rank {G.RANK}: refused in {took:.2f} s: {exc}", flush=True)
        return
    raise AssertionError("mismatched shapes were accepted")


def body(seed):
    E, K = 2 * G.WORLD, 4
    buf = vmep.Buffer(explicitly_destroy=True)
    expect_disagreement(buf, 64 if G.RANK == 0 else 128, 1024, E, K)
    expect_disagreement(buf, 64, 1024 if G.RANK == G.WORLD - 1 else 2048, E,
                        K)
    G.one_round(buf, seed, 0, 64, 1024, E, K, G.Mode())
    buf.destroy()


if __name__ == "__main__":
    G.run("gpu_mismatch_T", body)
