/*
 * The permutations around the NCCL baseline's exchanges: route (each
 * selection's index within its expert), gather (x rows into the send order,
 * grouped by destination rank then local expert, quantized for fp8),
 * scatter (received rows into [L, R*T, H] with the counts and ranges),
 * return (expert outputs back into the receive order) and reduce (the
 * weighted sum in fp32). Rows move a warp at a time in 16-byte accesses,
 * with vmep's own row helpers, so that fp8 rows match bit for bit.
 */
#include "kernels/rows.cuh"
#include "nccl_a2a.h"

#define A2A_BLOCKS 264

/* The (source, local expert) range j holding received row i: the largest
 * j with recv_off[j] <= i; its row within expert j % L is *pos. */
__device__ __forceinline__ int find_range(const nccl_a2a_params &p, int i,
                                          int *pos) {
  const int *recv_off = p.plan + p.experts + 1;
  const int *dest_begin = recv_off + p.experts + 1;
  int lo = 0, hi = p.experts - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (recv_off[mid] <= i)
      lo = mid;
    else
      hi = mid - 1;
  }
  *pos = dest_begin[lo] + i - recv_off[lo];
  return lo;
}

__global__ void route_kernel(nccl_a2a_params p) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n * p.topk;
       i += gridDim.x * blockDim.x) {
    int64_t e = p.topk_idx[i];
    p.slot[i] = e >= 0 && e < p.experts ? atomicAdd(&p.counts[e], 1) : -1;
  }
}

__global__ void __launch_bounds__(LL_THREADS)
    gather_kernel(nccl_a2a_params p, const __nv_bfloat16 *x) {
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const int slices = p.fp8 ? (p.hidden + LL_QUANT_SLICE - 1) / LL_QUANT_SLICE
                           : ll_slices(p.hidden / 8);
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       item < p.n * p.topk * slices; item += warps) {
    int sel = item / slices, slice = item % slices, t = sel / p.topk;
    if (p.slot[sel] < 0)
      continue;
    int e = (int)p.topk_idx[sel];
    char *row = p.send + (size_t)(p.plan[e] + p.slot[sel]) * p.stride;
    if (slice == 0 && lane == 0)
      *(int4 *)row = make_int4(t, e % p.local, sel % p.topk, p.rank);
    const __nv_bfloat16 *src = x + (size_t)t * p.hidden;
    if (p.fp8)
      ll_quantize_slice(src, (unsigned char *)row + 16, p.hidden, slice,
                        p.round_scale, lane);
    else
      ll_copy_slice((const uint4 *)src, (uint4 *)(row + 16), p.hidden / 8,
                    slice, lane);
  }
}

__global__ void __launch_bounds__(LL_THREADS)
    scatter_kernel(nccl_a2a_params p, char *recv_x, float *recv_scales,
                   int32_t *recv_count, int32_t *src_info,
                   int64_t *layout_range) {
  const int *recv_off = p.plan + p.experts + 1;
  const int *dest_begin = recv_off + p.experts + 1;
  const size_t RT = (size_t)p.ranks * p.tokens;
  const int groups = p.hidden / VMEP_LL_FP8_GROUP;
  if (blockIdx.x == 0)
    for (int j = threadIdx.x; j < p.experts; j += blockDim.x) {
      int s = j / p.local, l = j % p.local;
      int count = recv_off[j + 1] - recv_off[j];
      layout_range[(size_t)l * p.ranks + s] =
          (int64_t)(((uint64_t)dest_begin[j] << 32) | (uint32_t)count);
      if (s == p.ranks - 1)
        recv_count[l] = dest_begin[j] + count;
    }
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const int chunks = p.hidden * (p.fp8 ? 1 : 2) / 16;
  const int slices = ll_slices(chunks);
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       item < p.recv_rows * slices; item += warps) {
    int i = item / slices, slice = item % slices, pos;
    int l = find_range(p, i, &pos) % p.local;
    size_t at = (size_t)l * RT + pos;
    const char *row = p.recv + (size_t)i * p.stride;
    if (slice == 0 && lane == 0)
      src_info[at] = *(const int *)row;
    if (slice == 0 && p.fp8)
      for (int g = lane; g < groups; g += 32)
        recv_scales[at * groups + g] =
            ((const float *)(row + 16 + p.hidden))[g];
    ll_copy_slice((const uint4 *)(row + 16),
                  (uint4 *)(recv_x + at * chunks * 16), chunks, slice, lane);
  }
}

__global__ void __launch_bounds__(LL_THREADS)
    return_kernel(nccl_a2a_params p, const char *expert_out, char *rows) {
  const size_t RT = (size_t)p.ranks * p.tokens;
  const int lane = threadIdx.x % 32, warps = gridDim.x * LL_WARPS;
  const int chunks = p.hidden / 8, slices = ll_slices(chunks);
  for (int item = blockIdx.x * LL_WARPS + threadIdx.x / 32;
       item < p.recv_rows * slices; item += warps) {
    int i = item / slices, slice = item % slices, pos;
    int l = find_range(p, i, &pos) % p.local;
    const char *src = expert_out + ((size_t)l * RT + pos) * p.hidden * 2;
    ll_copy_slice((const uint4 *)src,
                  (uint4 *)(rows + (size_t)i * p.hidden * 2), chunks, slice,
                  lane);
  }
}

/* One thread per (token, 8 channels): the K rows' 16-byte pieces, summed
 * in k order in fp32. */
__global__ void reduce_kernel(nccl_a2a_params p, const char *rows,
                              const float *weights, uint4 *out) {
  const int chunks = p.hidden / 8;
  for (int item = blockIdx.x * blockDim.x + threadIdx.x; item < p.n * chunks;
       item += gridDim.x * blockDim.x) {
    int t = item / chunks, c = item % chunks;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int k = 0; k < p.topk; k++) {
      int sel = t * p.topk + k;
      if (p.slot[sel] < 0)
        continue;
      int row = p.plan[(int)p.topk_idx[sel]] + p.slot[sel];
      uint4 v = __ldcg((const uint4 *)(rows + (size_t)row * p.hidden * 2) + c);
      const __nv_bfloat16 *h = (const __nv_bfloat16 *)&v;
      float w = weights[sel];
      for (int j = 0; j < 8; j++)
        acc[j] += w * __bfloat162float(h[j]);
    }
    uint4 r;
    __nv_bfloat16 *h = (__nv_bfloat16 *)&r;
    for (int j = 0; j < 8; j++)
      h[j] = __float2bfloat16_rn(acc[j]);
    out[item] = r;
  }
}

extern "C" cudaError_t nccl_a2a_route(const struct nccl_a2a_params *p,
                                      cudaStream_t s) {
  route_kernel<<<A2A_BLOCKS, 256, 0, s>>>(*p);
  return cudaGetLastError();
}

extern "C" cudaError_t nccl_a2a_gather(const struct nccl_a2a_params *p,
                                       const void *x, cudaStream_t s) {
  gather_kernel<<<A2A_BLOCKS, LL_THREADS, 0, s>>>(*p, (const __nv_bfloat16 *)x);
  return cudaGetLastError();
}

extern "C" cudaError_t nccl_a2a_scatter(const struct nccl_a2a_params *p,
                                        void *recv_x, float *recv_scales,
                                        int32_t *recv_count, int32_t *src_info,
                                        int64_t *layout_range, cudaStream_t s) {
  scatter_kernel<<<A2A_BLOCKS, LL_THREADS, 0, s>>>(
      *p, (char *)recv_x, recv_scales, recv_count, src_info, layout_range);
  return cudaGetLastError();
}

extern "C" cudaError_t nccl_a2a_return(const struct nccl_a2a_params *p,
                                       const void *expert_out, void *rows,
                                       cudaStream_t s) {
  return_kernel<<<A2A_BLOCKS, LL_THREADS, 0, s>>>(*p, (const char *)expert_out,
                                                  (char *)rows);
  return cudaGetLastError();
}

extern "C" cudaError_t nccl_a2a_reduce(const struct nccl_a2a_params *p,
                                       const void *rows, const float *weights,
                                       void *out, cudaStream_t s) {
  reduce_kernel<<<A2A_BLOCKS * 2, 256, 0, s>>>(*p, (const char *)rows, weights,
                                               (uint4 *)out);
  return cudaGetLastError();
}
