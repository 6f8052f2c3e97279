/*
 * LogFMT-10, the low-precision row format of the low-latency combine
 * (docs/EP.md, "LogFMT"): per group of 128 channels, the largest and the
 * smallest nonzero magnitude, and per channel a sign and a 9-bit code, 0
 * for zero, else the index of a level between the two. The levels are
 * evenly spaced in the bits of an fp32 magnitude, the piecewise-linear
 * log2 that a float's exponent and mantissa spell (its error to log2 is
 * at most 0.086 of an octave): each code costs a few integer and float
 * operations and no transcendental function, on the device as on the
 * host. This is the scalar codec, one source for the kernels and the host
 * reference, so that both give the same bits. Every float operation is
 * spelled out with its rounding: fmaf where fused, LF_* elsewhere (the
 * device's __f*_rn, which nvcc never fuses; plain operators on the host,
 * which is built with -ffp-contract=off); conversions to float round to
 * nearest and conversions to integers truncate on both. Shared by C and
 * CUDA code.
 */
#ifndef VMEP_KERNELS_LOGFMT_H
#define VMEP_KERNELS_LOGFMT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define LF_FN static __host__ __device__ __forceinline__
#else
#define LF_FN static inline
#endif

#ifdef __CUDA_ARCH__
#define LF_ADD(a, b) __fadd_rn(a, b)
#define LF_SUB(a, b) __fsub_rn(a, b)
#define LF_MUL(a, b) __fmul_rn(a, b)
#define LF_DIV(a, b) __fdiv_rn(a, b)
#else
#define LF_ADD(a, b) ((a) + (b))
#define LF_SUB(a, b) ((a) - (b))
#define LF_MUL(a, b) ((a) * (b))
#define LF_DIV(a, b) ((a) / (b))
#endif

#define VMEP_LOGFMT_GROUP 128 /* channels that share a range */
#define VMEP_LOGFMT_BITS 10   /* per channel: sign (bit 9), code (0..8) */
#define VMEP_LOGFMT_MAX_CODE 511u
/* The range below a group's largest magnitude that codes cover, in
 * octaves (units of 2^23 in the bits): smaller magnitudes decode as 0 or
 * the smallest level. */
#define VMEP_LOGFMT_RANGE 32u

/* Bytes of one encoded row of `hidden` channels (a multiple of 128): the
 * 10-bit fields, then one 4-byte header per group. */
LF_FN size_t vmep_logfmt_row_bytes(int hidden) {
  return (size_t)hidden / 8 * VMEP_LOGFMT_BITS +
         (size_t)hidden / VMEP_LOGFMT_GROUP * 4;
}

/* Offset of the group headers within an encoded row. */
LF_FN size_t vmep_logfmt_header_offset(int hidden) {
  return (size_t)hidden / 8 * VMEP_LOGFMT_BITS;
}

/* A float's bits and back (for the host's bf16 / fp8 numerics too). */
LF_FN uint32_t vmep_f32_bits(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof(bits));
  return bits;
}

LF_FN float vmep_f32_of_bits(uint32_t bits) {
  float value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

/* What both ends derive from a group's header. step == 0 marks a flat
 * group: every nonzero magnitude is `flat` (all zero when flat is 0). */
struct vmep_logfmt_group {
  uint32_t lo;    /* bits of level 1 (code 1) */
  uint32_t top;   /* bits of amax: it and larger magnitudes take code 511 */
  float step;     /* bits between two levels: (top - lo) / 510 */
  float inv_step; /* 510 / (top - lo): the encoder's (vmep_logfmt_group_init) */
  float flat;
};

/*
 * The levels of header (amax, amin), all a decoder needs: amax the
 * largest finite magnitude (0 if none), amin the smallest nonzero one
 * (ignored when amax is 0). lo = max(bits amin, bits amax - 32 octaves);
 * the 511 levels split [lo, bits amax] evenly. Cannot fail.
 */
LF_FN void vmep_logfmt_levels(float amax, float amin,
                              struct vmep_logfmt_group *g) {
  g->lo = 0;
  g->top = 0;
  g->step = 0.0f;
  g->inv_step = 0.0f;
  g->flat = amax;
  if (amax == 0.0f || !(amin < amax))
    return;
  const uint32_t top = vmep_f32_bits(amax), bottom = vmep_f32_bits(amin);
  const uint32_t range = VMEP_LOGFMT_RANGE << 23;
  g->lo = top - bottom > range ? top - range : bottom;
  g->top = top;
  g->step = LF_MUL((float)(top - g->lo), 1.0f / (VMEP_LOGFMT_MAX_CODE - 1u));
}

/* The levels and what the encoder needs besides: one division, done
 * once per group. Cannot fail. */
LF_FN void vmep_logfmt_group_init(float amax, float amin,
                                  struct vmep_logfmt_group *g) {
  vmep_logfmt_levels(amax, amin, g);
  if (g->step != 0.0f)
    g->inv_step =
        LF_DIV((float)(VMEP_LOGFMT_MAX_CODE - 1u), (float)(g->top - g->lo));
}

/* The group of a 4-byte header (bf16 bits of amax | amin << 16): its
 * levels alone, for decoders (no division), or (group_of) what the
 * encoder needs too. */
LF_FN void vmep_logfmt_levels_of(uint32_t header, struct vmep_logfmt_group *g) {
  vmep_logfmt_levels(vmep_f32_of_bits(header << 16),
                     vmep_f32_of_bits(header >> 16 << 16), g);
}

LF_FN void vmep_logfmt_group_of(uint32_t header, struct vmep_logfmt_group *g) {
  vmep_logfmt_group_init(vmep_f32_of_bits(header << 16),
                         vmep_f32_of_bits(header >> 16 << 16), g);
}

/*
 * The 10-bit field of x: the sign bit (of -0 too) at bit 9, and the code:
 * 0 for a zero; for a magnitude below level 1, 0 or 1, whichever is
 * nearer; else 1 + the number of steps from level 1, rounded to the
 * nearer level in the bits (in the linear domain, within a binade), and
 * 511 from amax up. A non-finite x takes the group's top level (code 511,
 * or 1 in a group of equal magnitudes): its largest finite magnitude, or
 * 0 in a group without one. g must come from vmep_logfmt_group_init.
 * Cannot fail.
 */
LF_FN unsigned vmep_logfmt_encode(const struct vmep_logfmt_group *g, float x) {
  uint32_t bits = vmep_f32_bits(x), mag = bits & 0x7fffffffu;
  unsigned sign = (unsigned)(bits >> 31) << 9;
  if (mag == 0)
    return sign;
  if (g->step == 0.0f)
    return sign | 1u;
  if (mag >= g->top)
    return sign | VMEP_LOGFMT_MAX_CODE;
  if (mag < g->lo) /* 2 x is exact, or +Inf, which compares right too */
    return LF_MUL(vmep_f32_of_bits(mag), 2.0f) < vmep_f32_of_bits(g->lo)
               ? sign
               : sign | 1u;
  float v = fmaf((float)(mag - g->lo), g->inv_step, 1.5f);
  return sign | (v >= (float)VMEP_LOGFMT_MAX_CODE ? VMEP_LOGFMT_MAX_CODE
                                                  : (unsigned)v);
}

/* The value of a 10-bit field: +-0 for code 0, else the magnitude whose
 * bits are lo + (code - 1) steps (truncated), or +-flat in a flat group.
 * Cannot fail. */
LF_FN float vmep_logfmt_decode(const struct vmep_logfmt_group *g,
                               unsigned field) {
  unsigned code = field & VMEP_LOGFMT_MAX_CODE;
  uint32_t mag = 0;
  if (code != 0 && g->step == 0.0f)
    mag = vmep_f32_bits(g->flat);
  else if (code != 0)
    mag = g->lo + (uint32_t)LF_MUL((float)(code - 1u), g->step);
  return vmep_f32_of_bits(mag | (uint32_t)(field >> 9 & 1u) << 31);
}

#endif /* VMEP_KERNELS_LOGFMT_H */
