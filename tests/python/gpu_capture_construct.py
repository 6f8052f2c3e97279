"""GPU test 6: creating a Buffer while the current stream captures a CUDA
graph raises a clear error (before any collective, so no rank hangs), and
so does the first dispatch (which creates the EP buffer) inside capture;
outside capture both then work."""
import torch

import gpu_common as G
import vmep


def expect_capture_error(fn, text):
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            fn()
    except vmep.Error as exc:
        assert text in str(exc), exc
        print(f"rank {G.RANK}: refused: {exc}", flush=True)
        return
    raise AssertionError("accepted inside graph capture")


def body(seed):
    T, H, E, K = 32, 1024, 2 * G.WORLD, 4
    expect_capture_error(lambda: vmep.Buffer(), "capturing")
    buf = vmep.Buffer(explicitly_destroy=True)
    x = torch.zeros((4, H), dtype=torch.bfloat16, device="cuda")
    topk = torch.zeros((4, K), dtype=torch.int64, device="cuda")
    expect_capture_error(
        lambda: buf.low_latency_dispatch(x, topk, T, E, use_fp8=False),
        "capture")
    G.one_round(buf, seed, 0, T, H, E, K, G.Mode())
    buf.destroy()


if __name__ == "__main__":
    G.run("gpu_capture_construct", body)
