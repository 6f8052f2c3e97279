"""GPU test 4: n = 0 on some ranks (rank 0, the last rank, then all of
them), in bf16 and fp8, with and without the receive hook: outputs keep
their shapes ([L, T*R, H] whatever n is), counts and rows stay exact."""
import gpu_common as G
import vmep


def body(seed):
    T, H, K = 32, 1024, 4
    E = 2 * G.WORLD
    buf = vmep.Buffer(explicitly_destroy=True)
    last = G.WORLD - 1
    plans = [
        [0] + [T] * (G.WORLD - 1),
        [T // 2] * last + [0],
        [0] * G.WORLD,
        [r % 2 * (r + 3) for r in range(G.WORLD)],
        [T] * G.WORLD,
    ]
    for round_, sizes in enumerate(plans * 2):
        mode = G.Mode(fp8=round_ % 2 == 1)
        count = G.one_round(buf, seed, round_, T, H, E, K, mode, sizes,
                            hook=round_ < len(plans))
        assert tuple(count.shape) == (E // G.WORLD,)
        print(f"rank {G.RANK} round {round_} sizes {sizes} {mode}: exact",
              flush=True)
    buf.destroy()


if __name__ == "__main__":
    G.run("gpu_empty_ranks", body)
