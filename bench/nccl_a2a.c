/*
 * The NCCL baseline's exchanges. Dispatch: route the selections, swap the
 * per-expert counts (ncclSend / ncclRecv of L ints per peer), copy them to
 * the host (the one synchronization: NCCL needs the sizes on the host),
 * plan the offsets, gather into the send order, one ncclSend / ncclRecv
 * of staged rows per peer, scatter into [L, R*T, H]. Combine: the same
 * rows back (2H bytes each) and the weighted sum. The unique id travels
 * through the vmep group; NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
 */
#include <errno.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "nccl_a2a.h"

struct nccl_a2a {
  ncclComm_t comm;
  struct nccl_a2a_params p;
  int *host;                 /* pinned: counts [2E], then the plan [3E + 2] */
  int *plan;                 /* device copy of the plan */
  char *ret_send, *ret_recv; /* combine rows, receive / send order */
};

static vmep_status nccl_check(ncclResult_t r, const char *call) {
  if (r == ncclSuccess)
    return VMEP_OK;
  fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, call,
          ncclGetErrorString(r));
  return VMEP_ERR_CUDA;
}

static vmep_status init_comm(vmep_group *g, ncclComm_t *comm) {
  ncclUniqueId id;
  int rank = vmep_group_rank(g);
  /* Never NVLink multicast: the baseline is point-to-point copies. */
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  memset(&id, 0, sizeof(id));
  vmep_status st =
      rank == 0 ? nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId") : VMEP_OK;
  /* Every rank enters the broadcast, so a failed rank 0 sends zeros and
   * the others fail in ncclCommInitRank rather than hang here. */
  vmep_status bc = vmep_group_broadcast(g, 0, &id, sizeof(id));
  if (st == VMEP_OK && bc != VMEP_OK) {
    fprintf(stderr, "%s: vmep_group_broadcast (nccl id): %s\n",
            program_invocation_short_name, vmep_last_error());
    st = bc;
  }
  if (st == VMEP_OK)
    st = nccl_check(ncclCommInitRank(comm, vmep_group_size(g), id, rank),
                    "ncclCommInitRank");
  return st;
}

vmep_status nccl_a2a_create(vmep_group *g, int experts, int tokens, int hidden,
                            int topk, int fp8, int round_scale,
                            nccl_a2a **out) {
  nccl_a2a *a = calloc(1, sizeof(*a));
  if (!a)
    return VMEP_ERR_OUT_OF_MEMORY;
  struct nccl_a2a_params *p = &a->p;
  p->rank = vmep_group_rank(g);
  p->ranks = vmep_group_size(g);
  p->experts = experts;
  p->local = experts / p->ranks;
  p->tokens = tokens;
  p->hidden = hidden;
  p->topk = topk;
  p->fp8 = fp8;
  p->round_scale = round_scale;
  size_t payload = fp8 ? (size_t)hidden + hidden / 32 : (size_t)hidden * 2;
  p->stride = 16 + (payload + 15) / 16 * 16;
  /* Rows sent: at most T*K; received: each source's tokens pick at most
   * min(K, L) of our experts. */
  size_t sent = (size_t)tokens * topk,
         got = (size_t)p->ranks * tokens * (topk < p->local ? topk : p->local);
  size_t E = (size_t)experts, H = (size_t)hidden;
  vmep_status st = VMEP_OK;
  struct {
    void **ptr;
    size_t bytes;
  } parts[] = {{(void **)&p->counts, 2 * E * 4},
               {(void **)&p->slot, sent * 4},
               {(void **)&a->plan, (3 * E + 2) * 4},
               {(void **)&p->send, sent * p->stride},
               {(void **)&p->recv, got * p->stride},
               {(void **)&a->ret_send, got * H * 2},
               {(void **)&a->ret_recv, sent * H * 2}};
  for (size_t i = 0; st == VMEP_OK && i < sizeof(parts) / sizeof(parts[0]); i++)
    st = bench_cuda_check(cudaMalloc(parts[i].ptr, parts[i].bytes + 16),
                          "cudaMalloc");
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaMallocHost((void **)&a->host, (5 * E + 2) * 4),
                          "cudaMallocHost");
  p->plan = a->plan;
  if (st == VMEP_OK)
    st = init_comm(g, &a->comm);
  if (st != VMEP_OK) {
    nccl_a2a_destroy(a);
    return st;
  }
  *out = a;
  return VMEP_OK;
}

void nccl_a2a_destroy(nccl_a2a *a) {
  if (!a)
    return;
  if (a->comm)
    ncclCommDestroy(a->comm);
  void *dev[] = {a->p.counts, a->p.slot,   a->plan,    a->p.send,
                 a->p.recv,   a->ret_send, a->ret_recv};
  for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++)
    cudaFree(dev[i]);
  cudaFreeHost(a->host);
  free(a);
}

/* One grouped exchange: to each peer r, send_off[r*L..(r+1)*L) rows of
 * `row_bytes` from `send`; from each peer s, recv_off[s*L..] rows. Peers
 * with nothing either way are skipped on both sides (the counts agree). */
static vmep_status exchange(nccl_a2a *a, const int *send_off,
                            const int *recv_off, const char *send, char *recv,
                            size_t row_bytes, cudaStream_t s) {
  const int L = a->p.local;
  vmep_status st = nccl_check(ncclGroupStart(), "ncclGroupStart");
  for (int r = 0; st == VMEP_OK && r < a->p.ranks; r++) {
    size_t so = (size_t)send_off[r * L], sn = send_off[(r + 1) * L] - so;
    size_t ro = (size_t)recv_off[r * L], rn = recv_off[(r + 1) * L] - ro;
    if (sn)
      st = nccl_check(ncclSend(send + so * row_bytes, sn * row_bytes, ncclUint8,
                               r, a->comm, s),
                      "ncclSend");
    if (st == VMEP_OK && rn)
      st = nccl_check(ncclRecv(recv + ro * row_bytes, rn * row_bytes, ncclUint8,
                               r, a->comm, s),
                      "ncclRecv");
  }
  vmep_status end = nccl_check(ncclGroupEnd(), "ncclGroupEnd");
  return st != VMEP_OK ? st : end;
}

/* Routes the selections and swaps the counts with every peer (L ints
 * each way), then brings both count arrays to the host and waits. */
static vmep_status count(nccl_a2a *a, cudaStream_t s) {
  struct nccl_a2a_params *p = &a->p;
  const int L = p->local, E = p->experts;
  vmep_status st = bench_cuda_check(
      cudaMemsetAsync(p->counts, 0, (size_t)E * 4, s), "cudaMemsetAsync");
  if (st == VMEP_OK)
    st = bench_cuda_check(nccl_a2a_route(p, s), "route kernel");
  if (st == VMEP_OK)
    st = nccl_check(ncclGroupStart(), "ncclGroupStart");
  for (int r = 0; st == VMEP_OK && r < p->ranks; r++) {
    st = nccl_check(ncclSend(p->counts + r * L, L, ncclInt32, r, a->comm, s),
                    "ncclSend (counts)");
    if (st == VMEP_OK)
      st = nccl_check(
          ncclRecv(p->counts + E + r * L, L, ncclInt32, r, a->comm, s),
          "ncclRecv (counts)");
  }
  if (st == VMEP_OK)
    st = nccl_check(ncclGroupEnd(), "ncclGroupEnd");
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaMemcpyAsync(a->host, p->counts, (size_t)E * 8,
                                          cudaMemcpyDeviceToHost, s),
                          "cudaMemcpyAsync (counts)");
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaStreamSynchronize(s),
                          "cudaStreamSynchronize (counts)");
  return st;
}

/* The plan, from the counts: send_off (prefix over experts, so grouped by
 * destination rank), recv_off (prefix over (source, local expert)) and
 * dest_begin (where source s's rows start within local expert l). */
static void plan(nccl_a2a *a) {
  const int E = a->p.experts, L = a->p.local, R = a->p.ranks;
  const int *sent = a->host, *got = a->host + E;
  int *send_off = a->host + 2 * E, *recv_off = send_off + E + 1,
      *dest_begin = recv_off + E + 1;
  send_off[0] = recv_off[0] = 0;
  for (int j = 0; j < E; j++) {
    send_off[j + 1] = send_off[j] + sent[j];
    recv_off[j + 1] = recv_off[j] + got[j];
  }
  for (int l = 0; l < L; l++)
    for (int s = 0, begin = 0; s < R; s++) {
      dest_begin[s * L + l] = begin;
      begin += got[s * L + l];
    }
  a->p.recv_rows = recv_off[E];
}

vmep_status nccl_a2a_dispatch(nccl_a2a *a, const void *x, const int64_t *topk,
                              int n, void *recv_x, float *recv_scales,
                              int32_t *recv_count, int32_t *src_info,
                              int64_t *layout_range, cudaStream_t s) {
  struct nccl_a2a_params *p = &a->p;
  const int E = p->experts;
  p->n = n;
  p->topk_idx = topk;
  vmep_status st = count(a, s);
  if (st != VMEP_OK)
    return st;
  plan(a);
  const int *send_off = a->host + 2 * E, *recv_off = send_off + E + 1;
  st = bench_cuda_check(cudaMemcpyAsync(a->plan, send_off, (3 * E + 2) * 4,
                                        cudaMemcpyHostToDevice, s),
                        "cudaMemcpyAsync (plan)");
  if (st == VMEP_OK)
    st = bench_cuda_check(nccl_a2a_gather(p, x, s), "gather kernel");
  if (st == VMEP_OK)
    st = exchange(a, send_off, recv_off, p->send, p->recv, p->stride, s);
  if (st == VMEP_OK)
    st = bench_cuda_check(nccl_a2a_scatter(p, recv_x, recv_scales, recv_count,
                                           src_info, layout_range, s),
                          "scatter kernel");
  return st;
}

vmep_status nccl_a2a_combine(nccl_a2a *a, const void *expert_out,
                             const float *weights, void *out, cudaStream_t s) {
  struct nccl_a2a_params *p = &a->p;
  const int E = p->experts;
  const int *send_off = a->host + 2 * E, *recv_off = send_off + E + 1;
  size_t row = (size_t)p->hidden * 2;
  vmep_status st = bench_cuda_check(
      nccl_a2a_return(p, expert_out, a->ret_send, s), "return kernel");
  /* Backwards: what we received goes back to its source. */
  if (st == VMEP_OK)
    st = exchange(a, recv_off, send_off, a->ret_send, a->ret_recv, row, s);
  if (st == VMEP_OK)
    st = bench_cuda_check(nccl_a2a_reduce(p, a->ret_recv, weights, out, s),
                          "reduce kernel");
  return st;
}
