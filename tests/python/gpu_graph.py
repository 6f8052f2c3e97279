"""GPU test 2: dispatch -> hook -> expert -> combine -> hook captured in a
CUDA graph for several batch sizes sharing one buffer, plus one graph of
two micro-batches interleaved (A send, B send, A recv, B recv, and the same
for the combines), replayed in a random order (the same on every rank)
with eager rounds mixed in. Before each replay fresh inputs are copied in
and every output (recv_x, recv_count, src_info, layout_range, combined) is
poisoned. Each captured call keeps the buffer parity it had at capture, so
the random order runs the same parity back to back, across graphs and
eager calls: the device-side epochs must keep them apart."""
import torch

import gpu_common as G
import vmep

T, H, K = 128, 2048, 8


class Batch:
    """One micro-batch of a graph: static inputs and the captured
    outputs."""

    def __init__(self, seed, tag, n, E):
        static = G.all_inputs(seed, tag, [n] * G.WORLD, H, E, K)
        self.n = n
        self.x, self.topk, self.w = G.to_cuda(static[G.RANK])
        self.out = torch.empty((n, H), dtype=torch.bfloat16, device="cuda")

    def load(self, ins):
        mine = ins[G.RANK]
        self.x.copy_(mine.x)
        self.topk.copy_(mine.topk)
        self.w.copy_(mine.weights)
        for t in (self.out, self.recv):
            t.fill_(float("nan"))
        for t in (self.count, self.handle[0], self.handle[1]):
            t.fill_(-7)

    def check(self, ins, E, mode):
        G.check_dispatch(ins, T, E, self.recv, self.count, self.handle, mode)
        G.check_combine(ins, self.out, E, mode)


def dispatch_send(buf, b, E):
    b.recv, b.count, b.handle, _, hook = buf.low_latency_dispatch(
        b.x, b.topk, T, E, use_fp8=False, return_recv_hook=True)
    return hook


def combine_send(buf, b, E, mode):
    eo = G.expert_compute(b.recv, E, mode)
    _, _, hook = buf.low_latency_combine(eo, b.topk, b.w, b.handle,
                                         return_recv_hook=True, out=b.out)
    return hook


def capture(buf, batches, E, mode):
    """A graph of the batches interleaved: every send, then every receive,
    for the dispatches and then the combines."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for hook in [dispatch_send(buf, b, E) for b in batches]:
            hook()
        for hook in [combine_send(buf, b, E, mode) for b in batches]:
            hook()
    return g


def body(seed):
    E = 8 * G.WORLD  # at least K distinct experts per token
    buf = vmep.Buffer(explicitly_destroy=True)
    mode = G.Mode()
    G.one_round(buf, seed, 0, T, H, E, K, mode)  # creates the EP buffer
    graphs = {}
    for n in [1, 7, T // 2, T]:
        batches = [Batch(seed, 1000 + n, n, E)]
        graphs[f"n={n}"] = (capture(buf, batches, E, mode), batches)
    batches = [Batch(seed, 1500, T // 2, E), Batch(seed, 1501, 3, E)]
    graphs["interleaved"] = (capture(buf, batches, E, mode), batches)
    rnd = G.shared_random(seed, "graph")
    names = sorted(graphs) + ["eager"]
    for replay in range(16):
        name = rnd.choice(names)
        tag = 2000 + 10 * replay
        if name == "eager":
            G.one_round(buf, seed, tag, T, H, E, K, mode,
                        sizes=[rnd.randint(0, T) for _ in range(G.WORLD)])
        else:
            g, batches = graphs[name]
            ins = [G.all_inputs(seed, tag + i, [b.n] * G.WORLD, H, E, K)
                   for i, b in enumerate(batches)]
            for b, i in zip(batches, ins):
                b.load(i)
            g.replay()
            torch.cuda.synchronize()
            for b, i in zip(batches, ins):
                b.check(i, E, mode)
        print(f"rank {G.RANK} step {replay} ({name}): exact", flush=True)
    # eager calls still work after the replays, in another mode
    G.one_round(buf, seed, 3000, T, H, E, K, G.Mode(fp8=True))
    buf.destroy()


if __name__ == "__main__":
    G.run("gpu_graph", body)
