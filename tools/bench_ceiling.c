/*
 * vmep-bench's same-run ceiling, for the low-latency and the
 * high-throughput calls alike: what a plain copy of the same bytes takes
 * on the same GPUs at the same time, every rank at once. Ranks that share
 * a GPU are bound by its HBM: a device-to-device copy of the accounted
 * bytes. Ranks with a GPU each are bound by NVLink: the all-pairs peer
 * copy of the link bytes (bench_peer.c), the bytes that cross between
 * ranks; the copy of the accounted bytes is kept for the record.
 */
#include <cuda_runtime_api.h>
#include <stdlib.h>

#include "bench.h"

/* Copy sets rotated through, so that the copies (and their ceiling) are
 * not served from the 50 MB L2: every set together spans COPY_FOOTPRINT. */
#define COPY_FOOTPRINT ((size_t)256 << 20)

static size_t copy_sets(size_t bytes) {
  size_t sets = COPY_FOOTPRINT / (2 * bytes + 1) + 1;
  /* cppcheck assumes bytes == 0 here; it is a run-time size. */
  // cppcheck-suppress knownConditionTrueFalse
  return sets > 64 ? 64 : sets;
}

/* Median microseconds of a D2D copy of `bytes` from src to dst, every rank
 * at once: after a barrier, back to back as the calls are timed, rotating
 * the sets. */
static vmep_status time_copy(vmep_group *g, const struct bench_options *o,
                             const char *src, char *dst, size_t bytes,
                             cudaStream_t s, double *us) {
  int n = o->iters;
  size_t sets = copy_sets(bytes);
  cudaEvent_t *ev = NULL;
  double *t = calloc((size_t)n, sizeof(double));
  vmep_status st =
      t ? bench_events_open(&ev, (size_t)n + 1) : VMEP_ERR_OUT_OF_MEMORY;
  if (st == VMEP_OK)
    st = vmep_group_barrier(g);
  for (int i = 0; st == VMEP_OK && i < o->warmup + n; i++) {
    size_t at = (size_t)i % sets * bytes;
    if (i >= o->warmup && i == o->warmup)
      cudaEventRecord(ev[0], s);
    st = bench_cuda_check(
        cudaMemcpyAsync(dst + at, src + at, bytes, cudaMemcpyDeviceToDevice, s),
        "cudaMemcpyAsync");
    if (i >= o->warmup)
      cudaEventRecord(ev[i - o->warmup + 1], s);
  }
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaStreamSynchronize(s), "copies");
  for (int i = 0; st == VMEP_OK && i < n; i++)
    t[i] = bench_events_us(ev[i], ev[i + 1]);
  if (st == VMEP_OK)
    *us = bench_median(t, n);
  bench_events_close(ev, (size_t)n + 1);
  free(t);
  return st;
}

/* The D2D ceiling: copies of the dispatch and the combine bytes, through
 * sets of buffers allocated for the larger. */
static vmep_status time_d2d(vmep_group *g, const struct bench_options *o,
                            cudaStream_t s, struct bench_result *res) {
  size_t copy =
      (size_t)(res->dispatch_bytes > res->combine_bytes ? res->dispatch_bytes
                                                        : res->combine_bytes);
  char *src = NULL, *dst = NULL;
  /* +1 set: a smaller copy may rotate through a little more. */
  size_t room = copy * (copy_sets(copy) + 1);
  const struct bench_part parts[] = {{(void **)&src, room},
                                     {(void **)&dst, room}};
  vmep_status st = bench_alloc_parts(parts, 2);
  if (st == VMEP_OK)
    st = time_copy(g, o, src, dst, (size_t)res->dispatch_bytes, s,
                   &res->copy_dispatch_us);
  if (st == VMEP_OK)
    st = time_copy(g, o, src, dst, (size_t)res->combine_bytes, s,
                   &res->copy_combine_us);
  bench_free_parts(parts, 2);
  return st;
}

vmep_status bench_time_ceiling(vmep_group *g, const struct bench_options *o,
                               cudaStream_t s, struct bench_result *res) {
  res->ceiling = o->own_gpus && vmep_group_size(g) > 1;
  if (!res->ceiling)
    return time_d2d(g, o, s, res);
  vmep_status st = bench_time_peer_copy(g, o, (size_t)res->dispatch_link_bytes,
                                        &res->copy_dispatch_link_us, NULL);
  if (st == VMEP_OK)
    st = bench_time_peer_copy(g, o, (size_t)res->combine_link_bytes,
                              &res->copy_combine_link_us, NULL);
  if (st == VMEP_OK)
    st = bench_time_peer_copy(g, o, (size_t)res->dispatch_bytes,
                              &res->copy_dispatch_us, &res->pair_us);
  if (st == VMEP_OK)
    st = bench_time_peer_copy(g, o, (size_t)res->combine_bytes,
                              &res->copy_combine_us, NULL);
  return st;
}
