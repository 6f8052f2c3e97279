/*
 * vmep-bench's ceiling when every rank has a GPU of its own: NVLink, not
 * HBM. Through a vmep window (every rank's buffer mapped in every rank),
 * each rank writes its bytes split evenly over the other GPUs, one stream
 * per peer, every rank at once: the all-pairs copy that dispatch and
 * combine are held against. Rank 0 alone writing the same bytes to rank 1
 * gives the one-pair figure. The copies are cudaMemcpyAsync with
 * cudaMemcpyDefault: peer writes through unified addressing. Ranks may
 * copy different byte counts (their link bytes differ with the routing):
 * each writes its own, into slots sized for the largest.
 */
#include <stdlib.h>

#include "bench.h"

struct peer_run {
  vmep_group *g;
  vmep_window *w;
  const char *src;
  size_t bytes;  /* this rank's */
  size_t stride; /* of the writers' slots in a window: the largest share */
  cudaStream_t main, *peer; /* peer[r]: this rank's stream to rank r */
  cudaEvent_t start, end, *done;
};

/* One timed round: all_pairs, this rank's share to every other rank on
 * its own stream, joined back; else rank 0's bytes to rank 1. */
static vmep_status round_trip(const struct peer_run *p, int all_pairs,
                              double *us) {
  int R = vmep_group_size(p->g), me = vmep_group_rank(p->g);
  size_t share = p->bytes / (size_t)(R - 1);
  float ms = 0;
  vmep_status st =
      bench_cuda_check(cudaEventRecord(p->start, p->main), "cudaEventRecord");
  for (int r = 0; st == VMEP_OK && all_pairs && r < R; r++) {
    if (r == me)
      continue;
    /* Writers into rank r take slots 0..R-2 in rank order, skipping r. */
    char *dst = (char *)vmep_window_peer(p->w, r) +
                (size_t)(me < r ? me : me - 1) * p->stride;
    st = bench_cuda_check(cudaStreamWaitEvent(p->peer[r], p->start, 0),
                          "cudaStreamWaitEvent");
    if (st == VMEP_OK)
      st = bench_cuda_check(
          cudaMemcpyAsync(dst, p->src, share, cudaMemcpyDefault, p->peer[r]),
          "cudaMemcpyAsync (peer)");
    if (st == VMEP_OK)
      st = bench_cuda_check(cudaEventRecord(p->done[r], p->peer[r]),
                            "cudaEventRecord");
    if (st == VMEP_OK)
      st = bench_cuda_check(cudaStreamWaitEvent(p->main, p->done[r], 0),
                            "cudaStreamWaitEvent");
  }
  if (st == VMEP_OK && !all_pairs)
    st = bench_cuda_check(cudaMemcpyAsync(vmep_window_peer(p->w, 1), p->src,
                                          p->bytes, cudaMemcpyDefault, p->main),
                          "cudaMemcpyAsync (pair)");
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaEventRecord(p->end, p->main), "cudaEventRecord");
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaEventSynchronize(p->end), "cudaEventSynchronize");
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaEventElapsedTime(&ms, p->start, p->end),
                          "cudaEventElapsedTime");
  *us = ms * 1000.0;
  return st;
}

/* Median of o->iters rounds after o->warmup, after a barrier. */
static vmep_status time_rounds(const struct peer_run *p,
                               const struct bench_options *o, int all_pairs,
                               double *us) {
  double *t = calloc((size_t)o->iters, sizeof(double)), one = 0;
  vmep_status st = t ? vmep_group_barrier(p->g) : VMEP_ERR_OUT_OF_MEMORY;
  for (int i = 0; st == VMEP_OK && i < o->warmup + o->iters; i++) {
    st = round_trip(p, all_pairs, &one);
    if (i >= o->warmup)
      t[i - o->warmup] = one;
  }
  if (st == VMEP_OK)
    *us = bench_median(t, o->iters);
  free(t);
  return st;
}

static vmep_status open_run(struct peer_run *p, int R) {
  vmep_status st = bench_cuda_check(cudaMalloc((void **)&p->src, p->bytes + 16),
                                    "cudaMalloc");
  p->peer = calloc((size_t)R, sizeof(cudaStream_t));
  p->done = calloc((size_t)R, sizeof(cudaEvent_t));
  if (st == VMEP_OK && (!p->peer || !p->done))
    st = VMEP_ERR_OUT_OF_MEMORY;
  if (st == VMEP_OK)
    st = bench_cuda_check(
        cudaStreamCreateWithFlags(&p->main, cudaStreamNonBlocking),
        "cudaStreamCreate");
  for (int r = 0; st == VMEP_OK && r < R; r++) {
    st = bench_cuda_check(
        cudaStreamCreateWithFlags(&p->peer[r], cudaStreamNonBlocking),
        "cudaStreamCreate");
    if (st == VMEP_OK)
      st = bench_cuda_check(cudaEventCreate(&p->done[r]), "cudaEventCreate");
  }
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaEventCreate(&p->start), "cudaEventCreate");
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaEventCreate(&p->end), "cudaEventCreate");
  return st;
}

static void close_run(struct peer_run *p, int R) {
  for (int r = 0; r < R && p->peer; r++)
    if (p->peer[r])
      cudaStreamDestroy(p->peer[r]);
  for (int r = 0; r < R && p->done; r++)
    if (p->done[r])
      cudaEventDestroy(p->done[r]);
  if (p->main)
    cudaStreamDestroy(p->main);
  if (p->start)
    cudaEventDestroy(p->start);
  if (p->end)
    cudaEventDestroy(p->end);
  free(p->peer);
  free(p->done);
  cudaFree((void *)p->src);
}

/* The largest of every rank's `bytes` (VMEP_OK on every rank or none). */
static vmep_status largest(vmep_group *g, size_t bytes, size_t *max) {
  int R = vmep_group_size(g);
  size_t *all = calloc((size_t)R, sizeof(size_t));
  vmep_status st = all ? vmep_group_allgather(g, &bytes, sizeof(bytes), all)
                       : VMEP_ERR_OUT_OF_MEMORY;
  *max = 0;
  for (int r = 0; st == VMEP_OK && r < R; r++)
    *max = all[r] > *max ? all[r] : *max;
  free(all);
  return st;
}

vmep_status bench_time_peer_copy(vmep_group *g, const struct bench_options *o,
                                 size_t bytes, double *us, double *pair_us) {
  int R = vmep_group_size(g), dev = 0;
  size_t max = 0;
  struct peer_run p = {g, NULL, NULL, bytes, 0, NULL, NULL, NULL, NULL, NULL};
  if (pair_us)
    *pair_us = 0;
  if (R < 2)
    return VMEP_ERR_INVALID_ARG;
  /* Ranks may move different bytes: slots sized for the largest share
   * (256-byte aligned), and room for rank 0's pair copy. */
  vmep_status st = largest(g, bytes, &max);
  if (st != VMEP_OK)
    return st;
  p.stride = (max / (size_t)(R - 1) + 255) / 256 * 256;
  st = open_run(&p, R);
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaGetDevice(&dev), "cudaGetDevice");
  /* Every rank takes part in the window, so none waits alone. */
  size_t room = p.stride * (size_t)(R - 1);
  vmep_status made =
      vmep_window_create(g, dev, (room > max ? room : max) + 16, &p.w);
  if (made != VMEP_OK)
    fprintf(stderr, "vmep-bench: vmep_window_create (peer ceiling): %s\n",
            vmep_last_error());
  st = st != VMEP_OK ? st : made;
  if (st == VMEP_OK)
    st = time_rounds(&p, o, 1, us);
  /* One pair alone: rank 0 copies, the others wait at the barriers. */
  if (st == VMEP_OK && pair_us && vmep_group_rank(g) == 0)
    st = time_rounds(&p, o, 0, pair_us);
  else if (st == VMEP_OK && pair_us)
    st = vmep_group_barrier(g);
  vmep_status freed = vmep_window_destroy(p.w);
  close_run(&p, R);
  return st != VMEP_OK ? st : freed;
}
