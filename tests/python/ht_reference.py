"""The high-throughput layout by the rules, one expert id at a time: the
oracle of test_ht_cpu.py (without a GPU) and gpu_ht_prefill.py."""


def layout_by_loops(idx, E, R):
    """(tokens per rank, tokens per expert, in rank) of topk ids `idx`
    [n, K] (a tensor): ids outside 0..E-1 count nowhere."""
    L = E // R
    per_rank, per_expert = [0] * R, [0] * E
    in_rank = [[False] * R for _ in range(idx.shape[0])]
    for t, row in enumerate(idx.tolist()):
        for e in row:
            if 0 <= e < E:
                per_expert[e] += 1
                in_rank[t][e // L] = True
        for r in range(R):
            per_rank[r] += in_rank[t][r]
    return per_rank, per_expert, in_rank
