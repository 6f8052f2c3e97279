"""GPU test 2: dispatch -> hook -> expert -> combine -> hook captured in a
CUDA graph for several batch sizes sharing one buffer, replayed in a random
order (the same on every rank) with fresh inputs copied in before each
replay and the output poisoned."""
import torch

import gpu_common as G
import vmep


def body(seed):
    T, H, K = 128, 2048, 8
    E = 8 * G.WORLD  # at least K distinct experts per token
    buf = vmep.Buffer(explicitly_destroy=True)
    mode = G.Mode()
    G.one_round(buf, seed, 0, T, H, E, K, mode)  # creates the EP buffer
    sizes = [1, 7, T // 2, T]
    graphs = {}
    for n in sizes:
        static = G.all_inputs(seed, 1000 + n, [n] * G.WORLD, H, E, K)
        x, topk, w = G.to_cuda(static[G.RANK])
        out = torch.empty((n, H), dtype=torch.bfloat16, device="cuda")
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            recv, count, handle, _, hook = buf.low_latency_dispatch(
                x, topk, T, E, use_fp8=False, return_recv_hook=True)
            hook()
            eo = G.expert_compute(recv, E, mode)
            _, _, chook = buf.low_latency_combine(eo, topk, w, handle,
                                                  return_recv_hook=True,
                                                  out=out)
            chook()
        graphs[n] = (g, x, topk, w, out, recv, count, handle)
    rnd = G.shared_random(seed, "graph")
    for replay in range(12):
        n = rnd.choice(sizes)
        g, x, topk, w, out, recv, count, handle = graphs[n]
        ins = G.all_inputs(seed, 2000 + replay, [n] * G.WORLD, H, E, K)
        mine = ins[G.RANK]
        x.copy_(mine.x)
        topk.copy_(mine.topk)
        w.copy_(mine.weights)
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        G.check_dispatch(ins, T, E, recv, count, handle, mode)
        G.check_combine(ins, out, E, mode)
        print(f"rank {G.RANK} replay {replay} (n={n}): exact", flush=True)
    # eager calls still work after the replays
    G.one_round(buf, seed, 3000, T, H, E, K, G.Mode(fp8=True))
    buf.destroy()


if __name__ == "__main__":
    G.run("gpu_graph", body)
