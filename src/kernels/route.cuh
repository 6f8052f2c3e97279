/*
 * What low-latency and high-throughput dispatch both read: a rank's send
 * area, an expert id checked against the experts (a bad one is counted
 * and skipped, never a fault), and whether a token goes to a remote rank.
 */
#ifndef VMEP_KERNELS_ROUTE_CUH
#define VMEP_KERNELS_ROUTE_CUH

#include "kernels/rows.cuh"
#include "kernels/sync.cuh"

/* The send area of `rank` for this call's parity (a remote rank's is in
 * our inbox of it). */
__device__ __forceinline__ char *send_area(const vmep_ll_params &p, int rank) {
  return ll_src(p, rank) + p.layout.send[p.parity];
}

/* `e` when it names an expert; else -1, and an id other than -1 counts as
 * a bad expert. */
__device__ __forceinline__ int32_t checked_expert(const vmep_ll_params &p,
                                                  int64_t e) {
  if (e >= 0 && e < p.num_experts)
    return (int32_t)e;
  if (e != -1) {
    atomicAdd(&p.state->bad_experts, 1u);
    atomicOr(&p.state->errors, VMEP_LL_ERR_BAD_EXPERT);
  }
  return -1;
}

/* Whether token `t` of `topk_idx` ([n, K]) selected an expert of a remote
 * rank (one warp). */
__device__ __forceinline__ int
goes_remote(const vmep_ll_params &p, const int64_t *topk_idx, int t, int lane) {
  int remote = 0;
  if (lane < p.num_topk) {
    int64_t e = topk_idx[(size_t)t * p.num_topk + lane];
    remote = e >= 0 && e < p.num_experts &&
             ll_remote(p, (int)(e / (p.num_experts / p.num_ranks)));
  }
  return __any_sync(LL_FULL_MASK, remote);
}

#endif /* VMEP_KERNELS_ROUTE_CUH */
