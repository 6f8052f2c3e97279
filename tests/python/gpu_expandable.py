"""GPU test 7: with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (set by
scripts/gpu-python.sh) torch's allocator maps its own VMM segments next to
vmep's; dispatch / combine in bf16, fp8 and UE8M0 stay
exact, and a second buffer after the first is destroyed works."""
import os

import torch

import gpu_common as G
import vmep


def body(seed):
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    assert "expandable_segments:True" in conf, conf
    T, H, K = 128, 7168, 8
    E = 4 * G.WORLD
    for attempt in range(2):
        buf = vmep.Buffer(explicitly_destroy=True,
                          num_max_dispatch_tokens_per_rank=T, hidden=H,
                          num_experts=E, num_topk=K)
        for round_, mode in enumerate([G.Mode(), G.Mode(fp8=True),
                                       G.Mode(fp8=True, round_scale=True,
                                              ue8m0=True)]):
            big = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
            G.one_round(buf, seed, 10 * attempt + round_, T, H, E, K, mode)
            del big  # grow and shrink torch's segments between calls
            print(f"rank {G.RANK} buffer {attempt} {mode}: exact", flush=True)
        buf.destroy()


if __name__ == "__main__":
    G.run("gpu_expandable", body)
