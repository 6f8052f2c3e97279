/*
 * High-throughput dispatch (docs/HT.md), pull-based like the low-latency
 * one, in three launches:
 *  send  - wait until every receiver released send[parity], stage each
 *          token once as given (bf16 row, or fp8 row and its scales), its
 *          checked expert ids and weights; with remote peers, the same in
 *          the host stage for the proxy (rows only of tokens that some
 *          remote rank takes); raise the ready flags;
 *  count - per source: wait for its flag, mark the source's tokens that
 *          have an expert here and number them in token order (a block
 *          scan), count them per local expert; the last block turns the
 *          per-source counts into begins, N and the per-expert counts;
 *  copy  - per (source, token) received: pull the row into its place,
 *          write the local ids, weights and the row's source record;
 *          acknowledge every source. A cached dispatch skips the count and
 *          takes the places from the handle's records.
 * The launches use the low-latency kernels' "last block" counters of the
 * same phases: calls of one kind never overlap on a buffer.
 */
#include "kernels/route.cuh"
#include "kernels/rows.cuh"
#include "kernels/sync.cuh"

#include "kernels/launch.cuh"

/* Bytes of a staged or received row: 2H (bf16) or H (fp8, its scales
 * apart). */
__device__ __forceinline__ size_t ht_row_bytes(const vmep_ll_params &p,
                                               const vmep_ht_dispatch_io &io) {
  return io.use_fp8 ? (size_t)p.hidden : 2 * (size_t)p.hidden;
}

__global__ void __launch_bounds__(LL_THREADS, LL_MIN_BLOCKS)
    ht_send_kernel(vmep_ll_params p, vmep_ht_dispatch_io io) {
  const int K = p.num_topk, groups = p.hidden / VMEP_LL_FP8_GROUP;
  uint64_t epoch = p.state->disp_epoch[p.parity] + 1;
  ll_wait_all(p, p.layout.disp_ack, epoch - 1, NULL);
  char *area = send_area(p, p.rank);
  /* With remote peers, the same area in host memory for the proxy. */
  char *stage = p.stage ? p.stage + p.layout.send[p.parity] : NULL;
  const int thread = blockIdx.x * blockDim.x + threadIdx.x;
  if (thread == 0)
    *(int *)area = io.num_tokens;
  if (thread == 0 && stage)
    *(int *)stage = io.num_tokens;
  for (int i = thread; io.topk_idx && i < io.num_tokens * K;
       i += gridDim.x * blockDim.x) {
    int32_t e = checked_expert(p, io.topk_idx[i]);
    float w = io.topk_weights ? io.topk_weights[i] : 0.0f;
    ((int32_t *)(area + p.layout.send_topk))[i] = e;
    ((float *)(area + p.layout.send_weights))[i] = w;
    if (stage) {
      ((int32_t *)(stage + p.layout.send_topk))[i] = e;
      ((float *)(stage + p.layout.send_weights))[i] = w;
    }
  }
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const int chunks = (int)(ht_row_bytes(p, io) / 16),
            slices = ll_slices(chunks);
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       item < io.num_tokens * slices; item += warps) {
    int t = item / slices, slice = item % slices;
    const size_t at = p.layout.send_rows + (size_t)t * p.layout.row_bytes;
    uint4 v[LL_UNROLL];
    ll_load_slice(
        (const uint4 *)((const char *)io.x + (size_t)t * ht_row_bytes(p, io)),
        chunks, slice, lane, v);
    /* A row for remote peers is staged a second time, in host memory
     * (every row when cached: which ranks take it is not known here). */
    const int copies =
        stage && (io.cached || goes_remote(p, io.topk_idx, t, lane)) ? 2 : 1;
    for (int c = 0; c < copies; c++) {
      char *row = (c ? stage : area) + at;
      ll_store_slice((uint4 *)row, chunks, slice, lane, v);
      if (io.use_fp8 && slice == 0)
        for (int g = lane; g < groups; g += 32)
          ((float *)(row + p.hidden))[g] = io.x_scales[(size_t)t * groups + g];
    }
  }
  const unsigned row_len =
      (unsigned)(ht_row_bytes(p, io) +
                 (io.use_fp8 ? groups * sizeof(float) : 0));
  if (ll_last_block(p.state, 0))
    ll_signal_all(p, p.layout.disp_ready, epoch,
                  io.cached ? VMEP_LL_SHIP_HT_CACHED
                            : VMEP_LL_SHIP_DISPATCH_WEIGHTS,
                  row_len);
}

/* Whether expert id `e` (checked, or -1) is one of ours. */
__device__ __forceinline__ int ht_ours(const vmep_ll_params &p, int e) {
  const int L = p.num_experts / p.num_ranks;
  return e >= p.rank * L && e < (p.rank + 1) * L;
}

__global__ void __launch_bounds__(LL_THREADS, LL_MIN_BLOCKS)
    ht_count_kernel(vmep_ll_params p, vmep_ht_dispatch_io io) {
  extern __shared__ int expert_counts[]; /* [L] */
  __shared__ int n_src, base, warp_sums[LL_WARPS];
  const int L = p.num_experts / p.num_ranks, K = p.num_topk, T = p.max_tokens;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint64_t epoch = p.state->disp_epoch[p.parity] + 1;
  int *pos = p.entries + (size_t)p.parity * p.num_ranks * T * K;
  int *counts = p.counts + (size_t)p.parity * p.num_ranks * (L + 1);
  int *begins = p.begins + (size_t)p.parity * p.num_ranks * L;
  ll_wait_peers(p, p.layout.disp_ready, epoch, blockIdx.x, gridDim.x, NULL);
  for (int s = blockIdx.x; s < p.num_ranks; s += gridDim.x) {
    if (threadIdx.x == 0) {
      int ready = ll_wait_flag(
          p, ll_flag(p.inbox[s], p.layout.disp_ready, p.parity, p.num_ranks, s),
          epoch, s, ll_now_ns());
      n_src = ready ? __ldcg((const int *)send_area(p, s)) : 0;
      base = 0;
    }
    for (int l = threadIdx.x; l < L; l += blockDim.x)
      expert_counts[l] = 0;
    __syncthreads();
    const int32_t *topk =
        (const int32_t *)(send_area(p, s) + p.layout.send_topk);
    /* Tokens in rounds of one per thread; a token's place among the
     * source's tokens received here is an exclusive block scan. */
    for (int t0 = 0; t0 < n_src; t0 += blockDim.x) {
      int t = t0 + (int)threadIdx.x, here = 0;
      for (int k = 0; t < n_src && k < K; k++) {
        int e = __ldcg(topk + (size_t)t * K + k);
        if (ht_ours(p, e)) {
          here = 1;
          atomicAdd(&expert_counts[e - p.rank * L], 1);
        }
      }
      unsigned votes = __ballot_sync(LL_FULL_MASK, here);
      if (lane == 0)
        warp_sums[warp] = __popc(votes);
      __syncthreads();
      int before = base, total = base;
      for (int w = 0; w < LL_WARPS; w++) {
        before += w < warp ? warp_sums[w] : 0;
        total += warp_sums[w];
      }
      if (t < n_src)
        pos[(size_t)s * T + t] =
            here ? before + __popc(votes & ((1u << lane) - 1)) : -1;
      __syncthreads();
      if (threadIdx.x == 0)
        base = total;
    }
    __syncthreads();
    for (int l = threadIdx.x; l < L; l += blockDim.x)
      counts[s * (L + 1) + l] = expert_counts[l];
    if (threadIdx.x == 0) {
      counts[s * (L + 1) + L] = n_src;
      begins[s * L] = base; /* rows from s; its begin after the last block */
    }
    __syncthreads();
  }
  if (!ll_last_block(p.state, 1))
    return;
  if (threadIdx.x == 0) {
    int run = 0;
    for (int s = 0; s < p.num_ranks; s++) {
      int rows = begins[s * L];
      begins[s * L] = run;
      run += rows;
    }
    *io.num_recv = run;
  }
  const int align = io.expert_alignment > 1 ? io.expert_alignment : 1;
  for (int l = threadIdx.x; l < L; l += blockDim.x) {
    int total = 0;
    for (int s = 0; s < p.num_ranks; s++)
      total += counts[s * (L + 1) + l];
    io.recv_expert_count[l] =
        (int)(((long long)total + align - 1) / align * align);
  }
}

/* Slice 0's extras of received row `dst` from (s, t): the fp8 scales, the
 * local ids and weights, and (unless cached) the row's source record. */
__device__ __forceinline__ void ht_row_extras(const vmep_ll_params &p,
                                              const vmep_ht_dispatch_io &io,
                                              const char *src_row, int s, int t,
                                              size_t dst, int lane) {
  const int K = p.num_topk, groups = p.hidden / VMEP_LL_FP8_GROUP;
  if (io.use_fp8)
    for (int g = lane; g < groups; g += 32)
      io.recv_scales[dst * groups + g] =
          __ldcg((const float *)(src_row + p.hidden) + g);
  if (io.cached)
    return;
  const char *area = send_area(p, s);
  int local = -1;
  float w = 0.0f;
  if (lane < K) {
    int e = __ldcg((const int32_t *)(area + p.layout.send_topk) +
                   (size_t)t * K + lane);
    if (ht_ours(p, e)) {
      local = e - p.rank * (p.num_experts / p.num_ranks);
      w = __ldcg((const float *)(area + p.layout.send_weights) + (size_t)t * K +
                 lane);
    }
    if (io.recv_topk_idx)
      io.recv_topk_idx[dst * K + lane] = local;
    if (io.recv_topk_weights)
      io.recv_topk_weights[dst * K + lane] = w;
  }
  int j = __ffs(__ballot_sync(LL_FULL_MASK, local >= 0)) - 1;
  if (lane == 0)
    io.recv_src[dst] = (int32_t)(((unsigned)t << 16) | ((unsigned)s << 5) | j);
}

__global__ void __launch_bounds__(LL_THREADS, LL_MIN_BLOCKS)
    ht_copy_kernel(vmep_ll_params p, vmep_ht_dispatch_io io) {
  const int L = p.num_experts / p.num_ranks, K = p.num_topk, T = p.max_tokens;
  uint64_t epoch = p.state->disp_epoch[p.parity] + 1;
  const int *pos = p.entries + (size_t)p.parity * p.num_ranks * T * K;
  const int *counts = p.counts + (size_t)p.parity * p.num_ranks * (L + 1);
  const int *begins = p.begins + (size_t)p.parity * p.num_ranks * L;
  /* Cached: no count launch waited for the senders. */
  if (io.cached)
    ll_wait_all(p, p.layout.disp_ready, epoch, NULL);
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const size_t row_bytes = ht_row_bytes(p, io);
  const int chunks = (int)(row_bytes / 16), slices = ll_slices(chunks);
  /* Items (source token or received row, slice). */
  const int rows = io.cached ? min(*io.num_recv, io.capacity) : p.num_ranks * T;
  if (io.cached && *io.num_recv > io.capacity && blockIdx.x == 0 &&
      threadIdx.x == 0)
    atomicOr(&p.state->errors, VMEP_LL_ERR_OVERFLOW);
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       item < rows * slices; item += warps) {
    int row = item / slices, slice = item % slices, s, t;
    size_t dst;
    if (io.cached) {
      unsigned m = (unsigned)io.recv_src[row];
      t = (int)(m >> 16), s = (int)((m >> 5) & 0x7ff), dst = (size_t)row;
    } else {
      s = row / T, t = row % T;
      if (t >= counts[s * (L + 1) + L] || pos[row] < 0)
        continue;
      dst = (size_t)begins[s * L] + pos[row];
      if (dst >= (size_t)io.capacity) {
        if (slice == 0 && lane == 0)
          atomicOr(&p.state->errors, VMEP_LL_ERR_OVERFLOW);
        continue;
      }
    }
    uint4 *out = (uint4 *)((char *)io.recv_x + dst * row_bytes);
    /* A cached row whose source is masked now, or that names no staged
     * token of its source, is zeros. */
    if (io.cached && (s >= p.num_ranks || ll_is_masked(p.state, s) ||
                      t >= __ldcg((const int *)send_area(p, s)))) {
      uint4 v[LL_UNROLL] = {};
      ll_store_slice(out, chunks, slice, lane, v);
      for (int g = lane; io.use_fp8 && slice == 0 && g < p.hidden / 128;
           g += 32)
        io.recv_scales[dst * (p.hidden / 128) + g] = 0.0f;
      continue;
    }
    const char *src =
        send_area(p, s) + p.layout.send_rows + (size_t)t * p.layout.row_bytes;
    ll_copy_slice((const uint4 *)src, out, chunks, slice, lane);
    if (slice == 0)
      ht_row_extras(p, io, src, s, t, dst, lane);
  }
  ll_acknowledge(p, 2, p.layout.disp_ack, epoch,
                 &p.state->disp_epoch[p.parity]);
}

extern "C" vmep_status
vmep__ht_dispatch_send(const struct vmep_ll_params *p,
                       const struct vmep_ht_dispatch_io *io, void *stream) {
  ht_send_kernel<<<p->num_blocks, LL_THREADS, 0, (cudaStream_t)stream>>>(*p,
                                                                         *io);
  vmep_status status = ll_launched("high-throughput send kernel");
  if (status != VMEP_OK || io->cached)
    return status;
  size_t smem = sizeof(int) * (size_t)(p->num_experts / p->num_ranks);
  ht_count_kernel<<<p->num_blocks, LL_THREADS, smem, (cudaStream_t)stream>>>(
      *p, *io);
  return ll_launched("high-throughput count kernel");
}

extern "C" vmep_status
vmep__ht_dispatch_recv(const struct vmep_ll_params *p,
                       const struct vmep_ht_dispatch_io *io, void *stream) {
  ht_copy_kernel<<<p->num_blocks, LL_THREADS, 0, (cudaStream_t)stream>>>(*p,
                                                                         *io);
  return ll_launched("high-throughput copy kernel");
}
