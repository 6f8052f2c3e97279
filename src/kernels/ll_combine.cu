/*
 * Low-latency combine, in two launches:
 *  send - on each expert rank: wait until each source has reduced the
 *         previous use of its slots, push every received row's expert output
 *         into the source's slot [t][k], raise the ready flags;
 *  recv - on each source: wait for every live expert rank, reduce each
 *         token's K slots with its weights in fp32, write bf16; acknowledge.
 * Zero-copy: the expert outputs already sit in each expert rank's window,
 * so send only raises the flags and recv pulls each selection's row from
 * where dispatch recorded it landed (sel + n rows of traffic, not 3 sel + n).
 * LogFMT (use_logfmt, never zero-copy): send encodes each row into its slot
 * (41 H / 32 bytes instead of 2 H) and recv decodes before it weighs.
 * Reduced at the expert side (for each source whose dispatch staged
 * weights, whatever this rank's own dispatch did): send sums, per (source,
 * token), the rows of the token's selections of our experts times their
 * weights (kept by dispatch) in fp32, and writes that bf16 (or LogFMT) row
 * into the slot of the first of them; the source (expert_reduce) adds those
 * slots, one per expert rank, and pulls nothing even when zero-copy.
 * Selections of masked ranks and invalid expert ids count as zero.
 */
#include "kernels/logfmt.cuh"
#include "kernels/rows.cuh"
#include "kernels/sync.cuh"

#include "kernels/launch.cuh"

/* Whether source s's rows are reduced here (its dispatch staged weights). */
__device__ __forceinline__ int ll_reduced_for(const vmep_ll_params &p, int s) {
  return p.src_weighted[p.parity * p.num_ranks + s];
}

/* Pushes every received row of the sources not reduced for into its
 * slot [t][k]. Items (row, slice) over the rows [0, recv_count[l]) of
 * every expert, walked as one sequence: a warp's items only move forward.
 * Zero-copy: the outputs stay where the experts wrote them; mapped
 * sources pull them, so only remote sources get their rows pushed. */
template <bool LOGFMT>
__device__ __forceinline__ void ll_push_rows(const vmep_ll_params &p,
                                             const vmep_ll_combine_io &io) {
  const int L = p.num_experts / p.num_ranks, K = p.num_topk;
  const size_t RT = (size_t)p.num_ranks * p.max_tokens;
  const int *recv_count = p.recv_count_copy + p.parity * L;
  const unsigned int *row_map = p.row_map + (size_t)p.parity * L * RT;
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const int chunks = p.hidden / 8, slices = ll_slices(chunks);
  int l = 0, before = 0;
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       !io.zero_copy || p.ring; item += warps) {
    int row = item / slices, slice = item % slices;
    while (l < L && row >= before + recv_count[l])
      before += recv_count[l++];
    if (l == L)
      break;
    size_t local = (size_t)l * RT + (row - before);
    unsigned int m = row_map[local];
    int t = (int)(m >> 16), s = (int)((m >> 5) & 0x7ff), k = (int)(m & 31);
    if (ll_is_masked(p.state, s) || ll_reduced_for(p, s) ||
        (io.zero_copy && !ll_remote(p, s)))
      continue;
    const __nv_bfloat16 *src =
        (const __nv_bfloat16 *)io.expert_out + local * p.hidden;
    char *dst = p.peers[s] + p.layout.slots[p.parity] +
                ((size_t)t * K + k) * p.hidden * 2;
    if (LOGFMT)
      ll_logfmt_encode_slice(src, (unsigned char *)dst, p.hidden, slice, lane);
    else
      ll_copy_slice((const uint4 *)src, (uint4 *)dst, chunks, slice, lane);
  }
}

/* Loads per lane of a reduction item (512 channels): its fp32 sums stay
 * within the register budget. */
#define LL_REDUCE_LOADS 2

/* For the sources reduced for: per (source, token) the weighted sum of its
 * selections' rows into the slot of the first. Items (source, token, 512
 * channels); a lane holds one selection's row and weight, as in dispatch's
 * copy. */
template <bool LOGFMT>
__device__ __forceinline__ void ll_reduce_rows(const vmep_ll_params &p,
                                               const vmep_ll_combine_io &io) {
  const int L = p.num_experts / p.num_ranks, K = p.num_topk, T = p.max_tokens;
  const size_t RT = (size_t)p.num_ranks * T;
  const size_t scratch = (size_t)p.parity * p.num_ranks * T * K;
  const int *entries = p.entries + scratch;
  const float *weights = p.sel_weights + scratch;
  const int *counts = p.counts + (size_t)p.parity * p.num_ranks * (L + 1);
  const int *begins = p.begins + (size_t)p.parity * p.num_ranks * L;
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const int chunks = p.hidden / 8, step = 32 * LL_REDUCE_LOADS;
  const int parts = (chunks + step - 1) / step;
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       item < p.num_ranks * T * parts; item += warps) {
    int pair = item / parts, part = item % parts;
    int s = pair / T, t = pair % T;
    if (t >= counts[s * (L + 1) + L] || ll_is_masked(p.state, s) ||
        !ll_reduced_for(p, s))
      continue;
    int entry = lane < K ? entries[(size_t)pair * K + lane] : -1;
    unsigned int todo = __ballot_sync(LL_FULL_MASK, entry >= 0);
    if (!todo)
      continue;
    const int first = __ffs(todo) - 1;
    size_t row = 0;
    float w = 0.0f;
    if (entry >= 0) {
      int l = entry >> 16;
      row = (size_t)l * RT + begins[s * L + l] + (entry & 0xffff);
      w = weights[(size_t)pair * K + lane];
    }
    const int c0 = part * step + lane; /* chunk of load j: c0 + 32 j */
    float acc[LL_REDUCE_LOADS][8];
#pragma unroll
    for (int j = 0; j < LL_REDUCE_LOADS; j++)
#pragma unroll
      for (int i = 0; i < 8; i++)
        acc[j][i] = 0.0f;
    while (todo) { /* in k order: the reference's fmaf chain */
      int k = __ffs(todo) - 1;
      todo &= todo - 1;
      const uint4 *src = (const uint4 *)io.expert_out +
                         __shfl_sync(LL_FULL_MASK, row, k) * chunks;
      float wk = __shfl_sync(LL_FULL_MASK, w, k);
      uint4 v[LL_REDUCE_LOADS];
#pragma unroll
      for (int j = 0; j < LL_REDUCE_LOADS; j++)
        if (c0 + 32 * j < chunks)
          v[j] = __ldcg(src + c0 + 32 * j);
#pragma unroll
      for (int j = 0; j < LL_REDUCE_LOADS; j++) {
        float x[8];
        ll_bf16x8_values(v[j], x);
#pragma unroll
        for (int i = 0; i < 8; i++)
          acc[j][i] = fmaf(wk, x[i], acc[j][i]);
      }
    }
    uint4 packed[LL_REDUCE_LOADS];
#pragma unroll
    for (int j = 0; j < LL_REDUCE_LOADS; j++) {
      __nv_bfloat16 *o = (__nv_bfloat16 *)&packed[j];
#pragma unroll
      for (int i = 0; i < 8; i++)
        o[i] = __float2bfloat16_rn(acc[j][i]);
    }
    char *dst = p.peers[s] + p.layout.slots[p.parity] +
                ((size_t)t * K + first) * p.hidden * 2;
    if (LOGFMT)
      ll_logfmt_encode_values<LL_REDUCE_LOADS>(ll_bf16_loads{packed},
                                               (unsigned char *)dst, p.hidden,
                                               part * step * 8, lane);
    else
      for (int j = 0; j < LL_REDUCE_LOADS; j++)
        if (c0 + 32 * j < chunks)
          ((uint4 *)dst)[c0 + 32 * j] = packed[j];
  }
}

/* LOGFMT a template argument, as in combine_recv_kernel: the encoders
 * would cost the bf16 path registers. */
template <bool LOGFMT>
__global__ void __launch_bounds__(LL_THREADS, LL_MIN_BLOCKS)
    combine_send_kernel(vmep_ll_params p, vmep_ll_combine_io io) {
  uint64_t epoch = p.state->comb_epoch[p.parity] + 1;
  ll_wait_all(p, p.layout.comb_ack, epoch - 1, NULL);
  /* Each walk only where some source needs it (the same in every block). */
  int any = 0, all = 1;
  for (int s = threadIdx.x; s < p.num_ranks; s += blockDim.x) {
    any |= ll_reduced_for(p, s);
    all &= ll_reduced_for(p, s);
  }
  if (__syncthreads_or(any))
    ll_reduce_rows<LOGFMT>(p, io);
  if (!__syncthreads_and(all))
    ll_push_rows<LOGFMT>(p, io);
  /* Remote sources get only the bytes of each slot that matter; the proxy
   * tells reduced ones by their send area's header. */
  if (ll_last_block(p.state, 3))
    ll_signal_all(p, p.layout.comb_ready, epoch, VMEP_LL_SHIP_COMBINE,
                  LOGFMT ? (unsigned)vmep_logfmt_row_bytes(p.hidden) : 0u);
}

/* Whether selection `lane` (< K, expert e, counted: `use`) is the first
 * of its token's counted selections on its expert rank (one warp). */
__device__ __forceinline__ int ll_first_of_rank(int use, int64_t e, int L,
                                                int K, int lane) {
  const int rank = use ? (int)(e / L) : -1;
  int first = use;
  for (int k = 0; k < K; k++) {
    int other = __shfl_sync(LL_FULL_MASK, rank, k);
    first &= !(k < lane && other == rank);
  }
  return first;
}

/* LOGFMT a template argument: its decoding would otherwise cost the bf16
 * path registers (spills within the 64-register budget). */
template <bool LOGFMT>
__global__ void __launch_bounds__(LL_THREADS, LL_MIN_BLOCKS)
    combine_recv_kernel(vmep_ll_params p, vmep_ll_combine_io io) {
  const int L = p.num_experts / p.num_ranks, K = p.num_topk;
  uint64_t epoch = p.state->comb_epoch[p.parity] + 1;
  ll_wait_all(p, p.layout.comb_ready, epoch,
              blockIdx.x == 0 ? io.recv_wait_ns : NULL);
  const char *slots = p.peers[p.rank] + p.layout.slots[p.parity];
  const int *where = (const int *)(p.peers[p.rank] + p.layout.where[p.parity]);
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const int chunks = p.hidden / 8, groups = (chunks + 31) / 32;
  /* Items (token, 32 chunks of 8 channels): each lane reduces one chunk. */
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       item < io.num_tokens * groups; item += warps) {
    int t = item / groups, c = (item % groups) * 32 + lane;
    float w = 0.0f;
    int use = 0;
    int64_t e = -1;
    const uint4 *row = NULL; /* selection `lane`'s row (or LogFMT slot) */
    if (lane < K) {
      e = io.topk_idx[(size_t)t * K + lane];
      use = e >= 0 && e < p.num_experts && !ll_is_masked(p.state, (int)(e / L));
    }
    /* Reduced at the expert side: one slot per expert rank, weighed. */
    if (io.expert_reduce)
      use = ll_first_of_rank(use, e, L, K, lane);
    if (lane < K) {
      w = io.expert_reduce ? 1.0f : io.topk_weights[(size_t)t * K + lane];
      /* Remote expert ranks' rows land in the staging area's slots. */
      if (use && ll_remote(p, (int)(e / L)))
        row = (const uint4 *)(p.stage + p.layout.slots[p.parity] +
                              ((size_t)t * K + lane) * p.hidden * 2);
      else if (use && io.zero_copy && !io.expert_reduce)
        row =
            (const uint4 *)(p.peers[e / L] + p.layout.zero_copy[p.parity] +
                            (size_t)where[(size_t)t * K + lane] * p.hidden * 2);
      else if (use)
        row = (const uint4 *)(slots + ((size_t)t * K + lane) * p.hidden * 2);
    }
    const unsigned int valid = __ballot_sync(LL_FULL_MASK, use);
    const int active = c < chunks; /* the last group may be partial */
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    ll_sum_rows<LOGFMT>(row, w, valid, K, p.hidden, c, active, acc);
    if (!active)
      continue;
    uint4 packed;
    __nv_bfloat16 *o = (__nv_bfloat16 *)&packed;
#pragma unroll
    for (int j = 0; j < 8; j++)
      o[j] = __float2bfloat16_rn(acc[j]);
    ((uint4 *)((__nv_bfloat16 *)io.out + (size_t)t * p.hidden))[c] = packed;
  }
  ll_acknowledge(p, 4, p.layout.comb_ack, epoch,
                 &p.state->comb_epoch[p.parity]);
}

extern "C" vmep_status
vmep__ll_combine_send(const struct vmep_ll_params *p,
                      const struct vmep_ll_combine_io *io, void *stream) {
  if (io->use_logfmt)
    combine_send_kernel<true>
        <<<p->num_blocks, LL_THREADS, 0, (cudaStream_t)stream>>>(*p, *io);
  else
    combine_send_kernel<false>
        <<<p->num_blocks, LL_THREADS, 0, (cudaStream_t)stream>>>(*p, *io);
  return ll_launched("combine send kernel");
}

extern "C" vmep_status
vmep__ll_combine_recv(const struct vmep_ll_params *p,
                      const struct vmep_ll_combine_io *io, void *stream) {
  if (io->use_logfmt)
    combine_recv_kernel<true>
        <<<p->num_blocks, LL_THREADS, 0, (cudaStream_t)stream>>>(*p, *io);
  else
    combine_recv_kernel<false>
        <<<p->num_blocks, LL_THREADS, 0, (cudaStream_t)stream>>>(*p, *io);
  return ll_launched("combine recv kernel");
}
