/*
 * LogFMT-10, the low-precision row format of the low-latency combine
 * (docs/EP.md, "LogFMT"): per group of 128 channels, the largest and the
 * smallest nonzero magnitude, and per channel a sign and a 9-bit code, 0
 * for zero, else the index of a level on a log2 scale between the two.
 * This is the scalar codec, one source for the kernels and the host
 * reference, so that both give the same bits. Every float operation is
 * spelled out with its rounding: fmaf where fused, LF_* elsewhere (the
 * device's __f*_rn, which nvcc never fuses; plain operators on the host,
 * which is built with -ffp-contract=off). log2 and exp2 are polynomials
 * of those operations, not libm, whose last bits differ between host and
 * device. Shared by C and CUDA code.
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
 * powers of two: smaller magnitudes decode as 0 or the smallest level. */
#define VMEP_LOGFMT_RANGE 32.0f

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

/* log2(x) for a positive finite x, subnormals included; within a few
 * ulps of the result. */
LF_FN float lf_log2(float x) {
  uint32_t bits = vmep_f32_bits(x);
  int e = 0;
  if (bits < 0x00800000u) { /* subnormal: scaled by 2^24, exactly */
    bits = vmep_f32_bits(LF_MUL(x, 16777216.0f));
    e = -24;
  }
  e += (int)(bits >> 23) - 127;
  float m = vmep_f32_of_bits((bits & 0x007fffffu) | 0x3f800000u); /* [1, 2) */
  if (m > 1.41421356f) {
    m = LF_MUL(m, 0.5f);
    e += 1;
  }
  /* log2(m) = 2 / ln 2 * atanh(s), s = (m - 1) / (m + 1), |s| < 0.172:
   * the odd series to s^9 leaves less than 2^-30. */
  float s = LF_DIV(LF_SUB(m, 1.0f), LF_ADD(m, 1.0f));
  float s2 = LF_MUL(s, s);
  float p = fmaf(s2, 0.111111111f, 0.142857143f);
  p = fmaf(s2, p, 0.2f);
  p = fmaf(s2, p, 0.333333333f);
  p = fmaf(s2, p, 1.0f);
  return fmaf(LF_MUL(s, p), 2.88539008f, (float)e);
}

/* 2^n for -126 <= n <= 127, exactly. */
LF_FN float lf_pow2i(int n) {
  return vmep_f32_of_bits((uint32_t)(n + 127) << 23);
}

/* 2^y for -190 < y < 129: 2^f (|f| <= 0.5, Taylor to f^7, relative error
 * below 2^-26) times 2^n, rounded once where the result is subnormal. */
LF_FN float lf_exp2(float y) {
  float n = floorf(LF_ADD(y, 0.5f));
  float f = LF_SUB(y, n); /* exact (Sterbenz) */
  float p = fmaf(f, 1.52527338e-5f, 1.54035304e-4f);
  p = fmaf(f, p, 1.33335581e-3f);
  p = fmaf(f, p, 9.61812911e-3f);
  p = fmaf(f, p, 5.55041087e-2f);
  p = fmaf(f, p, 0.240226507f);
  p = fmaf(f, p, 0.693147181f);
  p = fmaf(f, p, 1.0f);
  int e = (int)n;
  if (e > 127)
    return LF_MUL(LF_MUL(p, lf_pow2i(127)), lf_pow2i(e - 127));
  if (e < -126)
    return LF_MUL(LF_MUL(p, lf_pow2i(e + 64)), lf_pow2i(-64));
  return LF_MUL(p, lf_pow2i(e));
}

/* What both ends derive from a group's header. step == 0 marks a flat
 * group: every nonzero magnitude is `flat` (all zero when flat is 0). */
struct vmep_logfmt_group {
  float log_min;  /* log2 of level 1 (code 1) */
  float step;     /* log2 distance between levels: 510 steps to amax */
  float inv_step; /* 1 / step */
  float bias;     /* code = floor((log2|x| - log_min) / step + bias) */
  float flat;
};

/*
 * The group of header (amax, amin): amax the largest finite magnitude (0
 * if none), amin the smallest nonzero one (ignored when amax is 0).
 * log_min = max(log2 amin, log2 amax - 32); the 511 levels split
 * [log_min, log2 amax] evenly, and `bias` puts the boundary between two
 * levels at their mean in the linear domain, so that a value rounds to
 * the nearer level. Cannot fail.
 */
LF_FN void vmep_logfmt_group_init(float amax, float amin,
                                  struct vmep_logfmt_group *g) {
  g->log_min = 0.0f;
  g->step = 0.0f;
  g->inv_step = 0.0f;
  g->bias = 0.0f;
  g->flat = amax;
  if (amax == 0.0f || !(amin < amax))
    return;
  float log_max = lf_log2(amax), log_min = lf_log2(amin);
  float clip = LF_SUB(log_max, VMEP_LOGFMT_RANGE);
  g->log_min = log_min > clip ? log_min : clip;
  g->step =
      LF_DIV(LF_SUB(log_max, g->log_min), (float)(VMEP_LOGFMT_MAX_CODE - 1u));
  g->inv_step = LF_DIV(1.0f, g->step);
  /* Between levels i and i + 1 the linear mean sits at i + mid steps. */
  float mid = lf_log2(LF_MUL(LF_ADD(1.0f, lf_exp2(g->step)), 0.5f));
  g->bias = LF_SUB(2.0f, LF_MUL(mid, g->inv_step));
}

/* The group of a 4-byte header: bf16 bits of amax | amin << 16. */
LF_FN void vmep_logfmt_group_of(uint32_t header, struct vmep_logfmt_group *g) {
  vmep_logfmt_group_init(vmep_f32_of_bits(header << 16),
                         vmep_f32_of_bits(header >> 16 << 16), g);
}

/*
 * The 10-bit field of x: the sign bit (of -0 too) at bit 9, and the code:
 * 0 for a zero, and for magnitudes that round below level 1; 1..511
 * otherwise. A non-finite x takes the group's top level (code 511, or 1
 * in a group of equal magnitudes): its largest finite magnitude, or 0 in
 * a group without one. Cannot fail.
 */
LF_FN unsigned vmep_logfmt_encode(const struct vmep_logfmt_group *g, float x) {
  uint32_t bits = vmep_f32_bits(x), mag = bits & 0x7fffffffu;
  unsigned sign = (unsigned)(bits >> 31) << 9;
  if (mag == 0)
    return sign;
  if (g->step == 0.0f)
    return sign | 1u;
  if (mag >= 0x7f800000u)
    return sign | VMEP_LOGFMT_MAX_CODE;
  float d = LF_SUB(lf_log2(vmep_f32_of_bits(mag)), g->log_min);
  float v = fmaf(d, g->inv_step, g->bias);
  if (!(v >= 1.0f))
    return sign;
  return sign | (v >= (float)VMEP_LOGFMT_MAX_CODE ? VMEP_LOGFMT_MAX_CODE
                                                  : (unsigned)v);
}

/* The value of a 10-bit field: +-0 for code 0, else +-2^(log_min +
 * (code - 1) * step), or +-flat in a flat group. Cannot fail. */
LF_FN float vmep_logfmt_decode(const struct vmep_logfmt_group *g,
                               unsigned field) {
  unsigned code = field & VMEP_LOGFMT_MAX_CODE;
  float mag = 0.0f;
  if (code != 0 && g->step == 0.0f)
    mag = g->flat;
  else if (code != 0)
    mag = lf_exp2(fmaf((float)(code - 1u), g->step, g->log_min));
  return (field >> 9) & 1u ? -mag : mag;
}

#endif /* VMEP_KERNELS_LOGFMT_H */
