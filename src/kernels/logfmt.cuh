/*
 * LogFMT rows in the combine kernels (docs/EP.md, "LogFMT"): a warp
 * encodes a slice of a bf16 row into a slot, and a lane decodes its chunk
 * of 8 channels of a slot while it sums. The field layout is the host
 * reference's (vmep__logfmt_encode_row): field i at bits [10 i, 10 i +
 * 10) of a little-endian bit stream, then a header word per group. The 80
 * bits of a chunk of 8 channels start at byte 10 * chunk: a 4-byte
 * boundary for even chunks, 2 bytes past one for odd chunks.
 */
#ifndef VMEP_KERNELS_LOGFMT_CUH
#define VMEP_KERNELS_LOGFMT_CUH

#include <math_constants.h>

#include "kernels/logfmt.h"
#include "kernels/rows.cuh"

/* The 8 fields of one chunk as an 80-bit stream: lo (bits 0..63), hi
 * (bits 64..79). */
__device__ __forceinline__ void
ll_logfmt_pack(const struct vmep_logfmt_group *g, const float v[8],
               unsigned long long *lo, unsigned *hi) {
  *lo = 0;
  *hi = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    unsigned field = vmep_logfmt_encode(g, v[i]);
    const int bit = VMEP_LOGFMT_BITS * i;
    if (bit < 64)
      *lo |= (unsigned long long)field << bit;
    if (bit + VMEP_LOGFMT_BITS > 64)
      *hi |= bit >= 64 ? field << (bit - 64) : field >> (64 - bit);
  }
}

/*
 * Encodes channels [base, base + 256 LOADS) of a row (base a multiple of
 * 256) into the LogFMT row `dst` with a warp; values(j, v) gives the
 * lane's 8 bf16-exact values of load j (channels base + j * 256 + lane *
 * 8, as ll_load_quant_slice and ll_load_slice place them; never past
 * `hidden`). A half-warp holds one group, whose amax and smallest nonzero
 * magnitude are half-warp reductions. A pair of lanes writes its 20 bytes
 * as five words: the even lane the first 80 bits and 16 of its
 * neighbour's, the odd lane the rest.
 */
template <int LOADS, typename Values>
__device__ __forceinline__ void
ll_logfmt_encode_values(Values values, unsigned char *dst, int hidden, int base,
                        int lane) {
  unsigned *header = (unsigned *)(dst + vmep_logfmt_header_offset(hidden));
#pragma unroll
  for (int j = 0; j < LOADS; j++) {
    int c = base + j * 256 + lane * 8;
    float v[8], amax = 0.0f, amin = CUDART_INF_F;
    if (c < hidden)
      values(j, v);
#pragma unroll
    for (int i = 0; i < 8; i++) {
      v[i] = c < hidden ? v[i] : 0.0f;
      float mag = fabsf(v[i]);
      if (mag < CUDART_INF_F) { /* finite magnitudes only */
        amax = fmaxf(amax, mag);
        amin = mag > 0.0f ? fminf(amin, mag) : amin;
      }
    }
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) {
      amax = fmaxf(amax, __shfl_xor_sync(LL_FULL_MASK, amax, off));
      amin = fminf(amin, __shfl_xor_sync(LL_FULL_MASK, amin, off));
    }
    struct vmep_logfmt_group g;
    vmep_logfmt_group_init(amax, amin, &g);
    unsigned long long lo;
    unsigned hi;
    ll_logfmt_pack(&g, v, &lo, &hi);
    const unsigned next_lo =
        __shfl_down_sync(LL_FULL_MASK, (unsigned)lo, 1); /* whole warp */
    if (c >= hidden)
      continue; /* groups are whole: hidden is a multiple of 128 */
    unsigned *out = (unsigned *)(dst + (size_t)(c / 16) * 20);
    if (lane % 2 == 0) {
      out[0] = (unsigned)lo;
      out[1] = (unsigned)(lo >> 32);
      out[2] = hi | next_lo << 16;
    } else {
      out[3] = (unsigned)(lo >> 16);
      out[4] = (unsigned)(lo >> 48) | hi << 16;
    }
    if (lane % 16 == 0)
      header[c / VMEP_LOGFMT_GROUP] =
          (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(amax)) |
          (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(amin)) << 16;
  }
}

/* The values of 8 bf16 channels packed in a uint4. */
__device__ __forceinline__ void ll_bf16x8_values(const uint4 &packed,
                                                 float v[8]) {
  const __nv_bfloat16 *h = (const __nv_bfloat16 *)&packed;
#pragma unroll
  for (int i = 0; i < 8; i++)
    v[i] = __bfloat162float(h[i]);
}

/* Gives ll_logfmt_encode_values the loads of a bf16 row's slice. */
struct ll_bf16_loads {
  const uint4 *raw;
  __device__ void operator()(int j, float v[8]) const {
    ll_bf16x8_values(raw[j], v);
  }
};

/* Encodes channels [slice * 1024, +1024) of bf16 row `src`. */
__device__ __forceinline__ void ll_logfmt_encode_slice(const __nv_bfloat16 *src,
                                                       unsigned char *dst,
                                                       int hidden, int slice,
                                                       int lane) {
  uint4 raw[LL_UNROLL];
  ll_load_quant_slice(src, hidden, slice, lane, raw);
  ll_logfmt_encode_values<LL_UNROLL>(ll_bf16_loads{raw}, dst, hidden,
                                     slice * LL_QUANT_SLICE, lane);
}

/* Loads what chunk `c` of a LogFMT row needs: the three words that hold
 * its 80 bits (x, y, z) and its group's header (w). */
__device__ __forceinline__ uint4 ll_logfmt_load(const void *row, int hidden,
                                                int c) {
  const unsigned *words = (const unsigned *)row;
  const unsigned *first = words + (size_t)c * 5 / 2;
  const unsigned *header =
      words + vmep_logfmt_header_offset(hidden) / 4 + c / 16;
  return make_uint4(__ldcg(first), __ldcg(first + 1), __ldcg(first + 2),
                    __ldcg(header));
}

/* acc[i] = fmaf(w, value of field i of chunk c, acc[i]), from what
 * ll_logfmt_load gave. */
__device__ __forceinline__ void ll_logfmt_accumulate(uint4 v, int c, float w,
                                                     float acc[8]) {
  unsigned long long lo = v.x | (unsigned long long)v.y << 32;
  unsigned hi = v.z;
  if (c % 2) { /* the chunk starts 16 bits into its first word */
    lo = lo >> 16 | (unsigned long long)v.z << 48;
    hi = v.z >> 16;
  }
  struct vmep_logfmt_group g;
  vmep_logfmt_levels_of(v.w, &g);
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int bit = VMEP_LOGFMT_BITS * i;
    unsigned field = 0;
    if (bit < 64)
      field = (unsigned)(lo >> bit);
    if (bit + VMEP_LOGFMT_BITS > 64)
      field |= bit >= 64 ? hi >> (bit - 64) : hi << (64 - bit);
    acc[i] = fmaf(w, vmep_logfmt_decode(&g, field & 1023u), acc[i]);
  }
}

/*
 * Sums chunk c (8 channels) of up to `K` rows, bf16 or (LOGFMT) LogFMT
 * slots of `hidden` channels, each times its weight, in fp32 in k order,
 * with one warp: lane k holds row k's pointer and weight, bit k of
 * `valid` says whether it counts. Every load of a batch of 8 is in flight
 * before the first multiply, within the register budget. Every lane must
 * call it (the pointers travel by shuffle); lanes whose chunk is past the
 * row (`active` 0) load nothing.
 */
template <bool LOGFMT>
__device__ __forceinline__ void ll_sum_rows(const uint4 *row, float w,
                                            unsigned valid, int K, int hidden,
                                            int c, int active, float acc[8]) {
  for (int k0 = 0; k0 < K; k0 += 8) {
    uint4 v[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const uint4 *rk = (const uint4 *)__shfl_sync(
          LL_FULL_MASK, (unsigned long long)row, (k0 + k) & 31);
      if (active && (valid >> (k0 + k) & 1u))
        v[k] = LOGFMT ? ll_logfmt_load(rk, hidden, c) : __ldcg(rk + c);
    }
#pragma unroll
    for (int k = 0; k < 8; k++) {
      if (!(valid >> (k0 + k) & 1u))
        continue;
      const float wk = __shfl_sync(LL_FULL_MASK, w, (k0 + k) & 31);
      if (LOGFMT) {
        ll_logfmt_accumulate(v[k], c, wk, acc);
        continue;
      }
      const __nv_bfloat16 *h = (const __nv_bfloat16 *)&v[k];
#pragma unroll
      for (int j = 0; j < 8; j++)
        acc[j] = fmaf(wk, __bfloat162float(h[j]), acc[j]);
    }
  }
}

#endif /* VMEP_KERNELS_LOGFMT_CUH */
