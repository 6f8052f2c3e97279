/*
 * Low-latency dispatch, pull-based, in three launches:
 *  send  - wait until every receiver released send[parity], stage each token
 *          once (bf16 copy or fp8 quantization, expert ids as int32, and
 *          the weights when given), raise the ready flag in every
 *          receiver's buffer;
 *  count - per source: wait for its flag, read its expert ids, give each of
 *          our (token, k) selections its rank within (source, local expert)
 *          (and, when the source staged weights, its weight: the combine
 *          then reduces that source's rows here);
 *          the last block turns counts into begins, layout_range, recv_count;
 *  copy  - per (source, token): read the staged row once and write it to
 *          every local expert that selected it; acknowledge every source.
 * No grid-wide barrier inside a kernel: ranks sharing a GPU under MPS
 * cannot starve one another of SMs into a deadlock.
 */
#include "kernels/route.cuh"
#include "kernels/rows.cuh"
#include "kernels/sync.cuh"

#include "kernels/launch.cuh"

__global__ void __launch_bounds__(LL_THREADS, LL_MIN_BLOCKS)
    dispatch_send_kernel(vmep_ll_params p, vmep_ll_dispatch_io io) {
  uint64_t epoch = p.state->disp_epoch[p.parity] + 1;
  ll_wait_all(p, p.layout.disp_ack, epoch - 1, NULL);
  char *area = send_area(p, p.rank);
  /* With remote peers, the same area in host memory for the proxy. */
  char *stage = p.stage ? p.stage + p.layout.send[p.parity] : NULL;
  int32_t *topk = (int32_t *)(area + p.layout.send_topk);
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const int thread = blockIdx.x * blockDim.x + threadIdx.x;
  float *weights = (float *)(area + p.layout.send_weights);
  const int weighted = io.topk_weights != NULL;
  if (thread == 0) {
    ((int *)area)[0] = io.num_tokens;
    ((int *)area)[1] = weighted;
  }
  if (thread == 0 && stage) {
    ((int *)stage)[0] = io.num_tokens;
    ((int *)stage)[1] = weighted;
  }
  for (int i = thread; i < io.num_tokens * p.num_topk;
       i += gridDim.x * blockDim.x) {
    topk[i] = checked_expert(p, io.topk_idx[i]);
    if (weighted)
      weights[i] = io.topk_weights[i];
    if (stage)
      ((int32_t *)(stage + p.layout.send_topk))[i] = topk[i];
    if (stage && weighted)
      ((float *)(stage + p.layout.send_weights))[i] = weights[i];
  }
  /* Work items: (token, 2 KiB slice) in bf16, (token, 1024 channels) in
   * fp8. */
  const int per_row = io.use_fp8
                          ? (p.hidden + LL_QUANT_SLICE - 1) / LL_QUANT_SLICE
                          : ll_slices(p.hidden / 8);
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       item < io.num_tokens * per_row; item += warps) {
    int t = item / per_row, part = item % per_row;
    const __nv_bfloat16 *x = (const __nv_bfloat16 *)io.x + (size_t)t * p.hidden;
    const size_t at = p.layout.send_rows + (size_t)t * p.layout.row_bytes;
    /* A row for remote peers is staged a second time, in host memory. */
    const int copies = stage && goes_remote(p, io.topk_idx, t, lane) ? 2 : 1;
    for (int c = 0; c < copies; c++) {
      char *row = (c ? stage : area) + at;
      if (io.use_fp8)
        ll_quantize_slice(x, (unsigned char *)row, p.hidden, part,
                          io.round_scale, lane);
      else
        ll_copy_slice((const uint4 *)x, (uint4 *)row, p.hidden / 8, part, lane);
    }
  }
  const unsigned row_len =
      io.use_fp8
          ? (unsigned)(p.hidden + p.hidden / VMEP_LL_FP8_GROUP * sizeof(float))
          : (unsigned)(2 * p.hidden);
  if (ll_last_block(p.state, 0))
    ll_signal_all(p, p.layout.disp_ready, epoch,
                  weighted ? VMEP_LL_SHIP_DISPATCH_WEIGHTS
                           : VMEP_LL_SHIP_DISPATCH,
                  row_len);
}

__global__ void __launch_bounds__(LL_THREADS, LL_MIN_BLOCKS)
    dispatch_count_kernel(vmep_ll_params p, vmep_ll_dispatch_io io) {
  extern __shared__ int counts_smem[];
  __shared__ int n_src, weighted;
  const int L = p.num_experts / p.num_ranks, K = p.num_topk;
  const int first = p.rank * L;
  uint64_t epoch = p.state->disp_epoch[p.parity] + 1;
  int *entries = p.entries + (size_t)p.parity * p.num_ranks * p.max_tokens * K;
  int *counts = p.counts + (size_t)p.parity * p.num_ranks * (L + 1);
  float *sel_weights =
      p.sel_weights + (size_t)p.parity * p.num_ranks * p.max_tokens * K;
  /* This block's sources are awaited in parallel first (the loop's waits
   * then return at once): one timeout for all of them, and with
   * recv_wait_ns each is charged its own lateness. */
  ll_wait_peers(p, p.layout.disp_ready, epoch, blockIdx.x, gridDim.x,
                io.recv_wait_ns);
  for (int s = blockIdx.x; s < p.num_ranks; s += gridDim.x) {
    if (threadIdx.x == 0) {
      int ready = ll_wait_flag(
          p, ll_flag(p.inbox[s], p.layout.disp_ready, p.parity, p.num_ranks, s),
          epoch, s, ll_now_ns());
      n_src = ready ? __ldcg((const int *)send_area(p, s)) : 0;
      weighted = ready && __ldcg((const int *)send_area(p, s) + 1);
    }
    for (int l = threadIdx.x; l < L; l += blockDim.x)
      counts_smem[l] = 0;
    __syncthreads();
    const int32_t *topk =
        (const int32_t *)(send_area(p, s) + p.layout.send_topk);
    const float *weights =
        (const float *)(send_area(p, s) + p.layout.send_weights);
    int *out = entries + (size_t)s * p.max_tokens * K;
    float *out_weights = sel_weights + (size_t)s * p.max_tokens * K;
    for (int i = threadIdx.x; i < n_src * K; i += blockDim.x) {
      int e = __ldcg(topk + i), entry = -1;
      if (e >= first && e < first + L)
        entry = ((e - first) << 16) | atomicAdd(&counts_smem[e - first], 1);
      out[i] = entry;
      if (weighted && entry >= 0)
        out_weights[i] = __ldcg(weights + i);
    }
    __syncthreads();
    for (int l = threadIdx.x; l < L; l += blockDim.x)
      counts[s * (L + 1) + l] = counts_smem[l];
    if (threadIdx.x == 0) {
      counts[s * (L + 1) + L] = n_src;
      p.src_weighted[p.parity * p.num_ranks + s] = weighted;
    }
    __syncthreads();
  }
  if (!ll_last_block(p.state, 1))
    return;
  int *begins = p.begins + (size_t)p.parity * p.num_ranks * L;
  for (int l = threadIdx.x; l < L; l += blockDim.x) {
    long long run = 0;
    for (int s = 0; s < p.num_ranks; s++) {
      int c = counts[s * (L + 1) + l];
      begins[s * L + l] = (int)run;
      io.layout_range[(size_t)l * p.num_ranks + s] = (run << 32) | c;
      run += c;
    }
    io.recv_count[l] = (int)run;
    p.recv_count_copy[p.parity * L + l] = (int)run;
  }
}

__global__ void __launch_bounds__(LL_THREADS, LL_MIN_BLOCKS)
    dispatch_copy_kernel(vmep_ll_params p, vmep_ll_dispatch_io io) {
  const int L = p.num_experts / p.num_ranks, K = p.num_topk, T = p.max_tokens;
  const size_t RT = (size_t)p.num_ranks * T;
  uint64_t epoch = p.state->disp_epoch[p.parity] + 1;
  const int *entries = p.entries + (size_t)p.parity * p.num_ranks * T * K;
  const int *counts = p.counts + (size_t)p.parity * p.num_ranks * (L + 1);
  const int *begins = p.begins + (size_t)p.parity * p.num_ranks * L;
  unsigned int *row_map = p.row_map + (size_t)p.parity * L * RT;
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  /* A row is bf16 (2H bytes) or fp8 (H bytes, then the scales). */
  const int chunks = io.use_fp8 ? p.hidden / 16 : p.hidden / 8;
  const int groups = p.hidden / VMEP_LL_FP8_GROUP;
  const int slices = ll_slices(chunks);
  const size_t row_bytes = io.use_fp8 ? (size_t)p.hidden : 2 * (size_t)p.hidden;
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       item < p.num_ranks * T * slices; item += warps) {
    int pair = item / slices, slice = item % slices;
    int s = pair / T, t = pair % T;
    if (t >= counts[s * (L + 1) + L])
      continue;
    int entry = lane < K ? entries[(size_t)pair * K + lane] : -1;
    unsigned int todo = __ballot_sync(LL_FULL_MASK, entry >= 0);
    if (!todo)
      continue;
    size_t dst_row = 0;
    if (entry >= 0) {
      int l = entry >> 16;
      dst_row = (size_t)l * RT + begins[s * L + l] + (entry & 0xffff);
      if (slice == 0) {
        io.src_info[dst_row] = t;
        row_map[dst_row] = ((unsigned)t << 16) | ((unsigned)s << 5) | lane;
        /* Where this selection landed, for a zero-copy combine's pull
         * (remote sources are pushed their rows instead). */
        if (p.layout.zero_copy[0] && !ll_remote(p, s))
          ((int *)(p.peers[s] +
                   p.layout.where[p.parity]))[(size_t)t * K + lane] =
              (int)dst_row;
      }
    }
    const char *src =
        send_area(p, s) + p.layout.send_rows + (size_t)t * p.layout.row_bytes;
    uint4 v[LL_UNROLL];
    ll_load_slice((const uint4 *)src, chunks, slice, lane, v);
    const float *scales = (const float *)(src + p.hidden);
    float scale = 0.0f;
    if (io.use_fp8 && slice == 0 && lane < groups)
      scale = __ldcg(scales + lane); /* groups <= 32 per pass below */
    while (todo) {
      int j = __ffs(todo) - 1;
      todo &= todo - 1;
      size_t row = __shfl_sync(LL_FULL_MASK, dst_row, j);
      ll_store_slice((uint4 *)((char *)io.recv_x + row * row_bytes), chunks,
                     slice, lane, v);
      if (io.use_fp8 && slice == 0)
        for (int g = lane; g < groups; g += 32)
          ll_store_scale(io, row, RT, groups, g,
                         g < 32 ? scale : __ldcg(scales + g));
    }
  }
  ll_acknowledge(p, 2, p.layout.disp_ack, epoch,
                 &p.state->disp_epoch[p.parity]);
}

extern "C" vmep_status
vmep__ll_dispatch_send(const struct vmep_ll_params *p,
                       const struct vmep_ll_dispatch_io *io, void *stream) {
  dispatch_send_kernel<<<p->num_blocks, LL_THREADS, 0, (cudaStream_t)stream>>>(
      *p, *io);
  return ll_launched("dispatch send kernel");
}

extern "C" vmep_status
vmep__ll_dispatch_recv(const struct vmep_ll_params *p,
                       const struct vmep_ll_dispatch_io *io, void *stream) {
  size_t smem = sizeof(int) * (size_t)(p->num_experts / p->num_ranks);
  dispatch_count_kernel<<<p->num_blocks, LL_THREADS, smem,
                          (cudaStream_t)stream>>>(*p, *io);
  vmep_status status = ll_launched("dispatch count kernel");
  if (status != VMEP_OK)
    return status;
  dispatch_copy_kernel<<<p->num_blocks, LL_THREADS, 0, (cudaStream_t)stream>>>(
      *p, *io);
  return ll_launched("dispatch copy kernel");
}
