/*
 * Warp-wide row movement for the dispatch and combine kernels: rows go in
 * 2 KiB slices, 16-byte accesses, four loads in flight per lane before the
 * first store, loads that bypass L1 (rows written by other processes must
 * never be served from a stale L1 line), and fp8 e4m3 quantization of a
 * bf16 row with one fp32 scale per 128 channels, a group per warp item.
 */
#ifndef VMEP_KERNELS_ROWS_CUH
#define VMEP_KERNELS_ROWS_CUH

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "kernels/kernels.h"

#define LL_THREADS 512
#define LL_WARPS (LL_THREADS / 32)
#define LL_UNROLL 4
/* Two blocks fit on every SM (at most 64 registers a thread). Kernels wait
 * for peers' kernels; when ranks share a GPU, every rank's spinning blocks
 * must leave room for the others, or they would starve each other. */
#define LL_MIN_BLOCKS 2
#define LL_FULL_MASK 0xffffffffu

/* A row is moved in slices of LL_SLICE_CHUNKS 16-byte chunks (2 KiB): one
 * warp-sized work item with LL_UNROLL loads in flight per lane. Splitting
 * rows this way gives enough independent work when tokens are few. */
#define LL_SLICE_CHUNKS (32 * LL_UNROLL)

__device__ __forceinline__ int ll_slices(int chunks) {
  return (chunks + LL_SLICE_CHUNKS - 1) / LL_SLICE_CHUNKS;
}

/* Loads slice `slice` of a row into registers (one warp)... */
__device__ __forceinline__ void ll_load_slice(const uint4 *src, int chunks,
                                              int slice, int lane,
                                              uint4 v[LL_UNROLL]) {
  int base = slice * LL_SLICE_CHUNKS + lane;
#pragma unroll
  for (int j = 0; j < LL_UNROLL; j++)
    if (base + j * 32 < chunks)
      v[j] = __ldcg(src + base + j * 32);
}

/* ...and stores it, to as many destinations as needed. */
__device__ __forceinline__ void ll_store_slice(uint4 *dst, int chunks,
                                               int slice, int lane,
                                               const uint4 v[LL_UNROLL]) {
  int base = slice * LL_SLICE_CHUNKS + lane;
#pragma unroll
  for (int j = 0; j < LL_UNROLL; j++)
    if (base + j * 32 < chunks)
      dst[base + j * 32] = v[j];
}

/* Copies slice `slice` of a row of `chunks` 16-byte chunks with a warp. */
__device__ __forceinline__ void ll_copy_slice(const uint4 *src, uint4 *dst,
                                              int chunks, int slice, int lane) {
  uint4 v[LL_UNROLL];
  ll_load_slice(src, chunks, slice, lane, v);
  ll_store_slice(dst, chunks, slice, lane, v);
}

/* The smallest power of two >= scale (positive, normal), bit-exact. */
__device__ __forceinline__ float ll_pow2_ceil(float scale) {
  unsigned int bits = __float_as_uint(scale);
  if (bits & 0x7fffffu)
    bits = (bits & 0xff800000u) + 0x800000u;
  return __uint_as_float(bits);
}

/* Channels quantized per warp item: 4 loads of 16 bytes per lane. */
#define LL_QUANT_SLICE (LL_UNROLL * 256)

/* Loads channels [slice * 1024, +1024) of a bf16 row for a warp: load j
 * gives the lane channels slice * 1024 + j * 256 + lane * 8, 8 of them
 * (none past `hidden`). */
__device__ __forceinline__ void ll_load_quant_slice(const __nv_bfloat16 *src,
                                                    int hidden, int slice,
                                                    int lane,
                                                    uint4 raw[LL_UNROLL]) {
#pragma unroll
  for (int j = 0; j < LL_UNROLL; j++) {
    int c = slice * LL_QUANT_SLICE + j * 256 + lane * 8;
    if (c < hidden)
      raw[j] = __ldcg((const uint4 *)(src + c));
  }
}

/*
 * Quantizes channels [slice * 1024, +1024) of one bf16 row with a warp.
 * Each load covers 256 channels, 8 per lane: lanes 0-15 hold one group of
 * 128 channels, lanes 16-31 the next, so a group's amax is a half-warp
 * reduction. Per group: amax (floored at 1e-4), scale = amax / 448 (a power
 * of two when round_scale), q = fp8(x / scale). The staged row holds
 * q[hidden] bytes, then the scales as floats.
 */
__device__ __forceinline__ void ll_quantize_slice(const __nv_bfloat16 *src,
                                                  unsigned char *dst,
                                                  int hidden, int slice,
                                                  int round_scale, int lane) {
  uint4 raw[LL_UNROLL];
  ll_load_quant_slice(src, hidden, slice, lane, raw);
#pragma unroll
  for (int j = 0; j < LL_UNROLL; j++) {
    int c = slice * LL_QUANT_SLICE + j * 256 + lane * 8;
    const __nv_bfloat16 *h = (const __nv_bfloat16 *)&raw[j];
    float v[8], amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      v[i] = c < hidden ? __bfloat162float(h[i]) : 0.0f;
      amax = fmaxf(amax, fabsf(v[i]));
    }
#pragma unroll
    for (int off = 8; off > 0; off >>= 1)
      amax = fmaxf(amax, __shfl_xor_sync(LL_FULL_MASK, amax, off));
    if (c >= hidden)
      continue; /* groups are whole: hidden is a multiple of 128 */
    float scale = fmaxf(amax, 1e-4f) / 448.0f;
    if (round_scale)
      scale = ll_pow2_ceil(scale);
    unsigned int packed[2] = {0, 0};
#pragma unroll
    for (int i = 0; i < 8; i++)
      packed[i / 4] |= (unsigned int)__nv_cvt_float_to_fp8(
                           v[i] / scale, __NV_SATFINITE, __NV_E4M3)
                       << (8 * (i % 4));
    *(uint2 *)(dst + c) = make_uint2(packed[0], packed[1]);
    if (lane % 16 == 0)
      ((float *)(dst + hidden))[c / VMEP_LL_FP8_GROUP] = scale;
  }
}

/*
 * Stores the scale of channel group g of received row `row` (l * RT + i)
 * in the caller's layout (VMEP_EP_SCALES_*, see vmep.h): row-major,
 * column-major per expert, or the UE8M0 byte (the biased exponent of a
 * power-of-two scale) in column-major int32 words of four groups.
 */
__device__ __forceinline__ void ll_store_scale(const vmep_ll_dispatch_io &io,
                                               size_t row, size_t rows,
                                               int groups, int g, float scale) {
  if (io.scale_layout == VMEP_EP_SCALES_ROW_MAJOR) {
    io.recv_scales[row * groups + g] = scale;
    return;
  }
  size_t l = row / rows, i = row % rows;
  if (io.scale_layout == VMEP_EP_SCALES_COL_MAJOR) {
    io.recv_scales[(l * groups + g) * rows + i] = scale;
    return;
  }
  size_t word = (l * (groups / 4) + g / 4) * rows + i;
  ((unsigned char *)io.recv_scales)[word * 4 + g % 4] =
      (unsigned char)(__float_as_uint(scale) >> 23);
}

#endif /* VMEP_KERNELS_ROWS_CUH */
