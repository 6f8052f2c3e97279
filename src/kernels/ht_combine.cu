/*
 * High-throughput combine (docs/HT.md), in two launches:
 *  send - on each expert rank: wait until each source has reduced the
 *         previous use of its slots, push every received row back into its
 *         source's slot [t][j] with the row's weights, mark the slot with
 *         (epoch, our rank), raise the ready flags. Zero-copy: the rows
 *         already sit in our own slots, where the caller wrote them
 *         (vmep_ep_ht_combine_buffer); only the row's index goes to a
 *         mapped source, with the weights and a mark that says so. A
 *         remote source's slot, weights and mark go into our outbox of it,
 *         and its row always (it cannot read our window); the proxy ships
 *         them into the source's stage (VMEP_LL_SHIP_HT_COMBINE);
 *  recv - on each source: wait for every live rank, sum each token's
 *         marked slots in slot order in fp32 (plus the biases), reading a
 *         zero-copy row in place in its rank's window and a remote rank's
 *         slot in our stage, round once to bf16; sum the weights likewise;
 *         acknowledge.
 * A slot marked by a rank masked here, or by an earlier call, counts as
 * zero.
 */
#include "kernels/logfmt.cuh"
#include "kernels/sync.cuh"

#include "kernels/launch.cuh"

__device__ __forceinline__ uint64_t ht_mark(uint64_t epoch, int in_place,
                                            int rank) {
  return epoch << VMEP_HT_MARK_EPOCH_SHIFT |
         (in_place ? VMEP_HT_MARK_IN_PLACE : 0u) | (uint64_t)rank;
}

__global__ void __launch_bounds__(LL_THREADS, LL_MIN_BLOCKS)
    ht_push_kernel(vmep_ll_params p, vmep_ht_combine_io io) {
  const int K = p.num_topk;
  uint64_t epoch = p.state->comb_epoch[p.parity] + 1;
  ll_wait_all(p, p.layout.comb_ack, epoch - 1, NULL);
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const int chunks = p.hidden / 8;
  /* In place, only remote sources' rows move (below). */
  const int slices = io.zero_copy && !p.ring ? 1 : ll_slices(chunks);
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
    /* A remote source cannot read our window: its rows are pushed (into
     * our outbox of it, which the proxy ships) even in place. */
    const int in_place = io.zero_copy && !ll_remote(p, s);
    if (!in_place)
      ll_copy_slice(
          (const uint4 *)((const __nv_bfloat16 *)io.x + (size_t)i * p.hidden),
          (uint4 *)(base + p.layout.slots[p.parity] + slot * p.hidden * 2),
          chunks, slice, lane);
    if (slice != 0)
      continue;
    float *w = (float *)(base + p.layout.ht_weights[p.parity]) + slot * K;
    if (lane < K)
      w[lane] = io.topk_weights ? io.topk_weights[(size_t)i * K + lane] : 0.0f;
    if (lane == 0) {
      ((int32_t *)(base + p.layout.ht_row[p.parity]))[slot] = i;
      ((uint64_t *)(base + p.layout.ht_mark[p.parity]))[slot] =
          ht_mark(epoch, in_place, p.rank);
    }
  }
  if (ll_last_block(p.state, 3))
    ll_signal_all(p, p.layout.comb_ready, epoch, VMEP_LL_SHIP_HT_COMBINE, 0);
}

/* Adds the 8 bf16 channels of `v` to acc. */
__device__ __forceinline__ void ht_add8(float acc[8], uint4 v) {
  const __nv_bfloat16 *h = (const __nv_bfloat16 *)&v;
#pragma unroll
  for (int c = 0; c < 8; c++)
    acc[c] = __fadd_rn(acc[c], __bfloat162float(h[c]));
}

/* The row of slot `slot` (token t, slot j) if a live rank filled it in
 * this call: in our slots (a mapped rank's push), in our stage's (a remote
 * rank's, put there by its proxy), or (zero-copy) in place in the sender's;
 * *weights_out the weights sent with it. */
__device__ __forceinline__ const uint4 *ht_slot_row(const vmep_ll_params &p,
                                                    uint64_t epoch, size_t slot,
                                                    const float **weights_out) {
  const char *base = p.peers[p.rank];
  uint64_t m =
      __ldcg((const uint64_t *)(base + p.layout.ht_mark[p.parity]) + slot);
  if (m >> VMEP_HT_MARK_EPOCH_SHIFT != epoch && p.stage) {
    base = p.stage;
    m = __ldcg((const uint64_t *)(base + p.layout.ht_mark[p.parity]) + slot);
  }
  int from = (int)(m & VMEP_HT_MARK_RANK);
  if (m >> VMEP_HT_MARK_EPOCH_SHIFT != epoch || from >= p.num_ranks ||
      ll_is_masked(p.state, from))
    return NULL;
  *weights_out =
      (const float *)(base + p.layout.ht_weights[p.parity]) + slot * p.num_topk;
  if (!(m & VMEP_HT_MARK_IN_PLACE))
    return (const uint4 *)(base + p.layout.slots[p.parity] +
                           slot * p.hidden * 2);
  int row = __ldcg((const int32_t *)(base + p.layout.ht_row[p.parity]) + slot);
  return (const uint4 *)(p.peers[from] + p.layout.slots[p.parity] +
                         (size_t)row * p.hidden * 2);
}

__global__ void __launch_bounds__(LL_THREADS, LL_MIN_BLOCKS)
    ht_sum_kernel(vmep_ll_params p, vmep_ht_combine_io io) {
  const int K = p.num_topk;
  uint64_t epoch = p.state->comb_epoch[p.parity] + 1;
  ll_wait_all(p, p.layout.comb_ready, epoch, NULL);
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const int chunks = p.hidden / 8, groups = (chunks + 31) / 32;
  /* Items (token, 32 chunks of 8 channels): each lane sums one chunk. */
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       item < io.num_tokens * groups; item += warps) {
    int t = item / groups, c = (item % groups) * 32 + lane;
    const float *weights = NULL; /* slot `lane`'s */
    const uint4 *row =
        lane < K ? ht_slot_row(p, epoch, (size_t)t * K + lane, &weights) : NULL;
    const unsigned valid = __ballot_sync(LL_FULL_MASK, row != NULL);
    if (item % groups == 0 && io.out_topk_weights) {
      float w = 0.0f;
      for (unsigned v = valid; v; v &= v - 1) {
        const float *wv = (const float *)__shfl_sync(
            LL_FULL_MASK, (unsigned long long)weights, __ffs(v) - 1);
        if (lane < K)
          w = __fadd_rn(w, __ldcg(wv + lane));
      }
      if (lane < K)
        io.out_topk_weights[(size_t)t * K + lane] = w;
    }
    const int active = c < chunks; /* the last group may be partial */
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    /* Weight 1: fma(1, x, acc) rounds as acc + x does. */
    ll_sum_rows<false>(row, 1.0f, valid, K, p.hidden, c, active, acc);
    if (!active)
      continue;
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
