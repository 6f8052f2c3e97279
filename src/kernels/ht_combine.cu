/*
 * High-throughput combine (docs/HT.md), in two launches:
 *  send - on each expert rank: wait until each source has reduced the
 *         previous use of its slots, push every received row back into its
 *         source's slot [t][j] with the row's weights, mark the slot with
 *         (epoch, our rank), raise the ready flags;
 *  recv - on each source: wait for every live rank, sum each token's
 *         marked slots in slot order in fp32 (plus the biases), round once
 *         to bf16; sum the weights likewise; acknowledge.
 * A slot marked by a rank masked here, or by an earlier call, counts as
 * zero.
 */
#include "kernels/rows.cuh"
#include "kernels/sync.cuh"

#include "kernels/launch.cuh"

/* A slot's mark: the combine's epoch and the rank that filled it. */
__device__ __forceinline__ uint64_t ht_mark(uint64_t epoch, int rank) {
  return epoch << 11 | (uint64_t)rank;
}

__global__ void __launch_bounds__(LL_THREADS, LL_MIN_BLOCKS)
    ht_push_kernel(vmep_ll_params p, vmep_ht_combine_io io) {
  const int K = p.num_topk;
  uint64_t epoch = p.state->comb_epoch[p.parity] + 1;
  ll_wait_all(p, p.layout.comb_ack, epoch - 1, NULL);
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const int chunks = p.hidden / 8, slices = ll_slices(chunks);
  const int rows = min(*io.num_recv, io.capacity);
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       item < rows * slices; item += warps) {
    int i = item / slices, slice = item % slices;
    unsigned m = (unsigned)io.recv_src[i];
    int t = (int)(m >> 16), s = (int)((m >> 5) & 0x7ff), j = (int)(m & 31);
    if (s >= p.num_ranks || t >= p.max_tokens || j >= K ||
        ll_is_masked(p.state, s))
      continue;
    char *base = p.peers[s];
    size_t slot = (size_t)t * K + j;
    ll_copy_slice(
        (const uint4 *)((const __nv_bfloat16 *)io.x + (size_t)i * p.hidden),
        (uint4 *)(base + p.layout.slots[p.parity] + slot * p.hidden * 2),
        chunks, slice, lane);
    if (slice != 0)
      continue;
    float *w = (float *)(base + p.layout.ht_weights[p.parity]) + slot * K;
    if (lane < K)
      w[lane] = io.topk_weights ? io.topk_weights[(size_t)i * K + lane] : 0.0f;
    if (lane == 0)
      ((uint64_t *)(base + p.layout.ht_mark[p.parity]))[slot] =
          ht_mark(epoch, p.rank);
  }
  if (ll_last_block(p.state, 3))
    ll_signal_all(p, p.layout.comb_ready, epoch, VMEP_LL_SHIP_COMBINE, 0);
}

/* Adds the 8 bf16 channels of `v` to acc. */
__device__ __forceinline__ void ht_add8(float acc[8], uint4 v) {
  const __nv_bfloat16 *h = (const __nv_bfloat16 *)&v;
#pragma unroll
  for (int c = 0; c < 8; c++)
    acc[c] = __fadd_rn(acc[c], __bfloat162float(h[c]));
}

__global__ void __launch_bounds__(LL_THREADS, LL_MIN_BLOCKS)
    ht_sum_kernel(vmep_ll_params p, vmep_ht_combine_io io) {
  const int K = p.num_topk;
  uint64_t epoch = p.state->comb_epoch[p.parity] + 1;
  ll_wait_all(p, p.layout.comb_ready, epoch, NULL);
  const char *own = p.peers[p.rank];
  const char *slots = own + p.layout.slots[p.parity];
  const uint64_t *marks = (const uint64_t *)(own + p.layout.ht_mark[p.parity]);
  const float *weights = (const float *)(own + p.layout.ht_weights[p.parity]);
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const int chunks = p.hidden / 8, groups = (chunks + 31) / 32;
  /* Items (token, 32 chunks of 8 channels): each lane sums one chunk. */
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       item < io.num_tokens * groups; item += warps) {
    int t = item / groups, c = (item % groups) * 32 + lane;
    int filled = 0;
    if (lane < K) {
      uint64_t m = __ldcg(marks + (size_t)t * K + lane);
      filled = m >> 11 == epoch && !ll_is_masked(p.state, (int)(m & 0x7ff));
    }
    const unsigned valid = __ballot_sync(LL_FULL_MASK, filled);
    if (item % groups == 0 && io.out_topk_weights && lane < K) {
      float w = 0.0f;
      for (unsigned v = valid; v; v &= v - 1)
        w = __fadd_rn(
            w, __ldcg(weights + ((size_t)t * K + __ffs(v) - 1) * K + lane));
      io.out_topk_weights[(size_t)t * K + lane] = w;
    }
    if (c >= chunks)
      continue; /* the last group may be partial */
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (unsigned v = valid; v; v &= v - 1)
      ht_add8(acc,
              __ldcg((const uint4 *)(slots + ((size_t)t * K + __ffs(v) - 1) *
                                                 p.hidden * 2) +
                     c));
    const size_t at = (size_t)t * chunks + c;
    if (io.bias0)
      ht_add8(acc, ((const uint4 *)io.bias0)[at]);
    if (io.bias1)
      ht_add8(acc, ((const uint4 *)io.bias1)[at]);
    uint4 packed;
    __nv_bfloat16 *o = (__nv_bfloat16 *)&packed;
#pragma unroll
    for (int k = 0; k < 8; k++)
      o[k] = __float2bfloat16_rn(acc[k]);
    ((uint4 *)io.out)[at] = packed;
  }
  ll_acknowledge(p, 4, p.layout.comb_ack, epoch,
                 &p.state->comb_epoch[p.parity]);
}

extern "C" vmep_status vmep__ht_combine(const struct vmep_ll_params *p,
                                        const struct vmep_ht_combine_io *io,
                                        void *stream) {
  ht_push_kernel<<<p->num_blocks, LL_THREADS, 0, (cudaStream_t)stream>>>(*p,
                                                                         *io);
  vmep_status status = ll_launched("high-throughput push kernel");
  if (status != VMEP_OK)
    return status;
  ht_sum_kernel<<<p->num_blocks, LL_THREADS, 0, (cudaStream_t)stream>>>(*p,
                                                                        *io);
  return ll_launched("high-throughput sum kernel");
}
