/*
 * Host numerics of the ep layer: bf16 and fp8 e4m3 conversions that give
 * the same bits as CUDA's device conversions, and the per-128-channel fp8
 * quantization that low-latency dispatch applies to each row. They are the
 * ground truth the reference and the checkers hold kernels to, so every
 * rounding step is integer bit work: no libm, and no dependence on the
 * FPU's rounding mode beyond IEEE division. Checked once on an H100 against
 * the device's conversions for all 2^32 floats (bf16 and fp8, no
 * difference) and its decodes of all codes.
 */
#include <string.h>

#include "ep/reference.h"
#include "kernels/logfmt.h"

#define F32_ABS_MASK 0x7fffffffu
#define F32_INF_BITS 0x7f800000u
#define BF16_CANONICAL_NAN 0x7fffu
#define FP8_NAN 0x7fu
#define FP8_MAX_CODE 0x7eu
/* Bits of 448.0f (fp8's largest), 2^-6 (its smallest normal) and 2^-10
 * (half its smallest subnormal: at or below it everything rounds to 0). */
#define F32_BITS_448 0x43e00000u
#define F32_BITS_2M6 0x3c800000u
#define F32_BITS_2M10 0x3a800000u
/* fp32 and fp8 exponent biases differ by 127 - 7; fp8 keeps 3 mantissa
 * bits of fp32's 23. */
#define FP8_REBIAS (120u << 3)
#define FP8_DROPPED_BITS 20u

/* value >> shift (1..31) rounded to nearest, ties to even. A carry out of
 * the kept mantissa bits moves into the exponent, as it must. Branch-free:
 * on real data the round-up is a coin toss that a branch would mispredict
 * half the time. */
static uint32_t shift_round_even(uint32_t value, unsigned shift) {
  uint32_t kept = value >> shift;
  uint32_t rest = value & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1u);
  return kept + (uint32_t)((rest > half) | ((rest == half) & (kept & 1u)));
}

uint16_t vmep__bf16_from_float(float value) {
  uint32_t bits = vmep_f32_bits(value);
  if ((bits & F32_ABS_MASK) > F32_INF_BITS)
    return BF16_CANONICAL_NAN;
  /* The sign rides along in bit 15: the largest finite magnitude rounds up
   * to Inf (0x7f80) and never carries into it. */
  return (uint16_t)shift_round_even(bits, 16);
}

/* The conversions the row quantization runs per channel live here as
 * statics, so that they inline into its loop; the vmep__ entry points
 * wrap them. */
static inline float bf16_value(uint16_t bits) {
  return vmep_f32_of_bits((uint32_t)bits << 16);
}

static inline uint8_t fp8_encode(float value) {
  uint32_t bits = vmep_f32_bits(value);
  uint32_t mag = bits & F32_ABS_MASK;
  uint8_t sign = (uint8_t)((bits >> 24) & 0x80u);
  if (mag > F32_INF_BITS)
    return FP8_NAN;
  /* Everything from 448 up rounds to 448 or beyond, and satfinite clamps
   * what is beyond: 448, Inf and all between give the largest code. */
  if (mag >= F32_BITS_448)
    return (uint8_t)(sign | FP8_MAX_CODE);
  if (mag <= F32_BITS_2M10)
    return sign;
  if (mag < F32_BITS_2M6) {
    /* Subnormal: code = |value| / 2^-9 rounded. With significand s (24
     * bits) and exponent e in [-10, -7], |value| / 2^-9 = s >> (14 - e);
     * a round-up to 8 is the smallest normal code, as it should be. */
    int exponent = (int)(mag >> 23) - 127;
    uint32_t significand = (mag & 0x7fffffu) | 0x800000u;
    return (uint8_t)(sign |
                     shift_round_even(significand, (unsigned)(14 - exponent)));
  }
  return (uint8_t)(sign |
                   (shift_round_even(mag, FP8_DROPPED_BITS) - FP8_REBIAS));
}

float vmep__bf16_to_float(uint16_t bits) { return bf16_value(bits); }

uint8_t vmep__fp8_from_float(float value) { return fp8_encode(value); }

float vmep__fp8_to_float(uint8_t code) {
  uint32_t exponent = (code >> 3) & 0xfu, mantissa = code & 0x7u;
  float mag;
  if ((code & FP8_NAN) == FP8_NAN)
    return vmep_f32_of_bits(F32_ABS_MASK);
  if (exponent == 0)
    mag = (float)mantissa * (1.0f / 512.0f); /* exact: m * 2^-9 */
  else
    mag = vmep_f32_of_bits(((exponent + 120u) << 23) | (mantissa << 20));
  return (code & 0x80u) ? -mag : mag;
}

float vmep__fp8_group_scale(const uint16_t *group, int round_scale) {
  float amax = 0.0f;
  for (int i = 0; i < VMEP_FP8_GROUP; i++) {
    float mag =
        vmep_f32_of_bits(vmep_f32_bits(bf16_value(group[i])) & F32_ABS_MASK);
    if (mag > amax) /* false for NaN: ignored */
      amax = mag;
  }
  if (amax < VMEP_FP8_AMAX_FLOOR)
    amax = VMEP_FP8_AMAX_FLOOR;
  float scale = amax / VMEP_FP8_E4M3_MAX;
  uint32_t bits = vmep_f32_bits(scale);
  /* scale is a positive normal float here (>= 1e-4 / 448); a nonzero
   * mantissa means it lies strictly between two powers of two. */
  if (round_scale && (bits & 0x7fffffu) != 0 && bits < F32_INF_BITS)
    scale = vmep_f32_of_bits((bits & F32_INF_BITS) + 0x800000u);
  return scale;
}

void vmep__fp8_quantize_row(const uint16_t *x, int hidden, int round_scale,
                            uint8_t *q_out, float *scales_out) {
  for (int g = 0; g < hidden / VMEP_FP8_GROUP; g++) {
    const uint16_t *group = x + (size_t)g * VMEP_FP8_GROUP;
    uint8_t *q = q_out + (size_t)g * VMEP_FP8_GROUP;
    float scale = vmep__fp8_group_scale(group, round_scale);
    scales_out[g] = scale;
    for (int i = 0; i < VMEP_FP8_GROUP; i++)
      q[i] = fp8_encode(bf16_value(group[i]) / scale);
  }
}
