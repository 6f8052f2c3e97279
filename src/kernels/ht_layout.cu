/*
 * The local routing tables of a high-throughput dispatch (DeepEP's
 * get_dispatch_layout): per rank the tokens that have an expert there, per
 * expert the (token, k) pairs that chose it, and per token the ranks it
 * goes to. One thread per token; no communication.
 */
#include "kernels/rows.cuh"

#include "kernels/launch.cuh"

__global__ void __launch_bounds__(LL_THREADS)
    ht_layout_kernel(const int64_t *topk_idx, int n, int K, int R, int E,
                     int32_t *per_rank, int32_t *per_expert, uint8_t *in_rank) {
  const int L = E / R;
  for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += gridDim.x * blockDim.x) {
    if (in_rank)
      for (int r = 0; r < R; r++)
        in_rank[(size_t)t * R + r] = 0;
    for (int k = 0; k < K; k++) {
      int64_t e = topk_idx[(size_t)t * K + k];
      if (e < 0 || e >= E)
        continue;
      if (per_expert)
        atomicAdd(&per_expert[e], 1);
      int r = (int)(e / L), seen = 0;
      for (int j = 0; j < k; j++) {
        int64_t f = topk_idx[(size_t)t * K + j];
        seen |= f >= 0 && f < E && f / L == r;
      }
      if (seen)
        continue;
      if (per_rank)
        atomicAdd(&per_rank[r], 1);
      if (in_rank)
        in_rank[(size_t)t * R + r] = 1;
    }
  }
}

extern "C" vmep_status
vmep__ht_layout(const int64_t *topk_idx, int num_tokens, int num_topk,
                int num_ranks, int num_experts, int32_t *tokens_per_rank,
                int32_t *tokens_per_expert, uint8_t *in_rank, void *stream) {
  cudaStream_t s = (cudaStream_t)stream;
  cudaError_t err = cudaSuccess;
  if (tokens_per_rank)
    err = cudaMemsetAsync(tokens_per_rank, 0, sizeof(int32_t) * num_ranks, s);
  if (err == cudaSuccess && tokens_per_expert)
    err =
        cudaMemsetAsync(tokens_per_expert, 0, sizeof(int32_t) * num_experts, s);
  if (err != cudaSuccess)
    return vmep__fail(VMEP_ERR_CUDA, VMEP_LOG_ERROR,
                      "vmep_ep_ht_layout: clearing the counts: %s",
                      cudaGetErrorString(err));
  if (num_tokens == 0)
    return VMEP_OK;
  int blocks = (num_tokens + LL_THREADS - 1) / LL_THREADS;
  if (blocks > 1024)
    blocks = 1024;
  ht_layout_kernel<<<blocks, LL_THREADS, 0, s>>>(
      topk_idx, num_tokens, num_topk, num_ranks, num_experts, tokens_per_rank,
      tokens_per_expert, in_rank);
  return ll_launched("high-throughput layout kernel");
}
