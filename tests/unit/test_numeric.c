/*
 * The host numerics of the ep layer against independent, deliberately
 * naive computations written here: bf16 over all 65536 values and random
 * floats (nearest of the two neighbours, ties to even), fp8 e4m3 over all
 * 256 codes and random floats (nearest of all 254 finite values, ties to
 * even, saturating), and per-128-channel row quantization (scales, the
 * 1e-4 floor, power-of-two scales, the fp8 error bound).
 */
#include <math.h>

#include "ep/reference.h"
#include "kernels/logfmt.h"
#include "test.h"

/* 2^e in double, exactly, for -1022 <= e <= 1023. */
static double exp2_exact(int e) {
  uint64_t u = (uint64_t)(e + 1023) << 52;
  double d;
  memcpy(&d, &u, sizeof(d));
  return d;
}

/* ---- bf16 ---------------------------------------------------------------- */

/* Magnitude of bf16 bits `m` (no sign) as if the exponent had no top: the
 * pattern of Inf reads as 2^128, the first value past the largest. */
static double bf16_magnitude(uint32_t m) {
  uint32_t e = m >> 7, f = m & 0x7f;
  return e == 0 ? f * exp2_exact(-133) : (128 + f) * exp2_exact((int)e - 134);
}

/* float -> bf16 the long way: compare the distances to both neighbours. */
static uint16_t oracle_bf16(float f) {
  uint32_t u = vmep_f32_bits(f), sign = (u >> 16) & 0x8000,
           mag = u & 0x7fffffff;
  if (isnan(f))
    return 0x7fff;
  if (isinf(f))
    return (uint16_t)(sign | 0x7f80);
  uint32_t lo = mag >> 16, hi = lo + 1;
  double v = fabs((double)f);
  double below = v - bf16_magnitude(lo), above = bf16_magnitude(hi) - v;
  uint32_t pick = below < above ? lo : above < below ? hi : (lo & 1) ? hi : lo;
  return (uint16_t)(sign | pick);
}

static void test_bf16_all_values(void) {
  for (uint32_t b = 0; b < 65536; b++) {
    float f = vmep__bf16_to_float((uint16_t)b);
    ASSERT_EQ(vmep_f32_bits(f), b << 16);
    uint16_t back = vmep__bf16_from_float(f);
    if ((b & 0x7fff) > 0x7f80) {
      ASSERT_TRUE(isnan(f));
      ASSERT_EQ(back, 0x7fff);
    } else {
      ASSERT_EQ(back, b);
    }
  }
}

static void test_bf16_cases(void) {
  ASSERT_EQ(vmep__bf16_from_float(vmep_f32_of_bits(0x3f808000)),
            0x3f80); /* tie */
  ASSERT_EQ(vmep__bf16_from_float(vmep_f32_of_bits(0x3f818000)),
            0x3f82); /* tie */
  ASSERT_EQ(vmep__bf16_from_float(vmep_f32_of_bits(0x3f808001)), 0x3f81);
  ASSERT_EQ(vmep__bf16_from_float(vmep_f32_of_bits(0x7f7fffff)),
            0x7f80); /* Inf */
  ASSERT_EQ(vmep__bf16_from_float(vmep_f32_of_bits(0xff7f8000)), 0xff80);
  ASSERT_EQ(vmep__bf16_from_float(vmep_f32_of_bits(0x7f7f7fff)), 0x7f7f);
  ASSERT_EQ(vmep__bf16_from_float(vmep_f32_of_bits(0xff800000)), 0xff80);
  ASSERT_EQ(vmep__bf16_from_float(vmep_f32_of_bits(0xffc00001)),
            0x7fff); /* NaN */
  ASSERT_EQ(vmep__bf16_from_float(vmep_f32_of_bits(0x7f800001)), 0x7fff);
  ASSERT_EQ(vmep__bf16_from_float(vmep_f32_of_bits(0x00008000)), 0x0000);
  ASSERT_EQ(vmep__bf16_from_float(vmep_f32_of_bits(0x80018000)), 0x8002);
}

/* Random bit patterns, exact ties and values near the top. */
static float random_bf16_input(int kind) {
  uint32_t r = (uint32_t)test_rand();
  switch (kind) {
  case 0:
    return vmep_f32_of_bits(r);
  case 1:
    return vmep_f32_of_bits((r & 0xffff0000u) | 0x8000u);
  default:
    return vmep_f32_of_bits((r & 0x80000000u) | 0x7f7f0000u | (r & 0xffffu));
  }
}

static void test_bf16_random(void) {
  long checked = 0;
  for (int i = 0; i < 3000000; i++) {
    float f = random_bf16_input(i % 3);
    uint16_t got = vmep__bf16_from_float(f), want = oracle_bf16(f);
    if (got != want)
      TEST_FAIL("bf16(0x%08x): 0x%04x, the oracle says 0x%04x",
                vmep_f32_bits(f), got, want);
    checked++;
  }
  printf("bf16: %ld random floats agree with the oracle\n", checked);
}

/* ---- fp8 e4m3 ------------------------------------------------------------ */

/* The value of fp8 code c, straight from the format's definition. */
static double oracle_fp8_value(uint32_t c) {
  uint32_t e = (c >> 3) & 15, m = c & 7;
  double mag = e == 0 ? m * exp2_exact(-9) : (8 + m) * exp2_exact((int)e - 10);
  return (c & 0x80) ? -mag : mag;
}

/* float -> fp8: the nearest of the 127 non-negative finite values by a
 * linear search, ties to the even code; beyond 448 the nearest is 448,
 * which is what saturation asks for. */
static uint8_t oracle_fp8(float f) {
  if (isnan(f))
    return 0x7f;
  uint8_t sign = signbit(f) ? 0x80 : 0;
  if (isinf(f))
    return sign | 0x7e;
  double v = fabs((double)f), best_distance = INFINITY;
  uint32_t best = 0;
  for (uint32_t c = 0; c <= 0x7e; c++) {
    double distance = fabs(oracle_fp8_value(c) - v);
    if (distance < best_distance ||
        (distance == best_distance && (c & 1) == 0)) {
      best_distance = distance;
      best = c;
    }
  }
  return (uint8_t)(sign | best);
}

static void test_fp8_all_codes(void) {
  for (uint32_t c = 0; c < 256; c++) {
    float f = vmep__fp8_to_float((uint8_t)c);
    if ((c & 0x7f) == 0x7f) {
      ASSERT_TRUE(isnan(f));
      ASSERT_EQ(vmep_f32_bits(f), 0x7fffffffu);
      continue;
    }
    if ((double)f != oracle_fp8_value(c))
      TEST_FAIL("fp8 0x%02x decodes to %.9g, expected %.9g", c, (double)f,
                oracle_fp8_value(c));
    ASSERT_EQ(signbit(f) != 0, (c & 0x80) != 0);
    ASSERT_EQ(vmep__fp8_from_float(f), c); /* round trip, -0 included */
  }
}

static void test_fp8_cases(void) {
  ASSERT_EQ(vmep__fp8_from_float(448.0f), 0x7e);
  ASSERT_EQ(vmep__fp8_from_float(464.0f), 0x7e);
  ASSERT_EQ(vmep__fp8_from_float(-1e30f), 0xfe);
  ASSERT_EQ(vmep__fp8_from_float(INFINITY), 0x7e);
  ASSERT_EQ(vmep__fp8_from_float(-INFINITY), 0xfe);
  ASSERT_EQ(vmep__fp8_from_float(-NAN), 0x7f);
  ASSERT_EQ(vmep__fp8_from_float(0x1p-9f), 0x01);
  ASSERT_EQ(vmep__fp8_from_float(0x1p-10f), 0x00);  /* tie with 0 */
  ASSERT_EQ(vmep__fp8_from_float(-0x1p-10f), 0x80); /* keeps the sign */
  ASSERT_EQ(vmep__fp8_from_float(0x1.8p-9f), 0x02); /* tie: 1 or 2 */
  ASSERT_EQ(vmep__fp8_from_float(0x1.ep-7f), 0x08); /* 7.5 * 2^-9 */
  ASSERT_EQ(vmep__fp8_from_float(1.0625f), 0x38);   /* tie: 1 or 1.125 */
  ASSERT_EQ(vmep__fp8_from_float(1.1875f), 0x3a);   /* tie: 1.125, 1.25 */
  ASSERT_EQ(vmep__fp8_from_float(-0.0f), 0x80);
}

/* Inputs of five kinds: the fp8 range with random exponents, exact
 * midpoints between neighbours, a float ulp off them, raw bit patterns,
 * and values around the saturation point. */
static float random_fp8_input(int kind) {
  uint32_t r = (uint32_t)test_rand();
  uint32_t c = (uint32_t)(test_rand() % 0x7e); /* c and c+1 are finite */
  float mid = (float)((oracle_fp8_value(c) + oracle_fp8_value(c + 1)) / 2);
  float sign = (r & 1) ? -1.0f : 1.0f;
  switch (kind) {
  case 0:
    return sign * (float)((1.0 + (r >> 9) * 0x1p-23) *
                          exp2_exact((int)(test_rand() % 23) - 13));
  case 1:
    return sign * mid;
  case 2:
    return sign * vmep_f32_of_bits(vmep_f32_bits(mid) + ((r & 2) ? 1 : -1));
  case 3:
    return vmep_f32_of_bits(r);
  default:
    return sign * (440.0f + (float)(r % 64000) / 1000.0f);
  }
}

static void test_fp8_random(void) {
  long checked = 0;
  for (int i = 0; i < 500000; i++) {
    float f = random_fp8_input(i % 5);
    uint8_t got = vmep__fp8_from_float(f), want = oracle_fp8(f);
    if (got != want)
      TEST_FAIL("fp8(%.9g = 0x%08x): 0x%02x, the oracle says 0x%02x", (double)f,
                vmep_f32_bits(f), got, want);
    checked++;
  }
  ASSERT_TRUE(checked >= 100000);
  printf("fp8: %ld random floats agree with the oracle\n", checked);
}

/* ---- row quantization ---------------------------------------------------- */

#define ROW_GROUPS 6
#define ROW_HIDDEN (ROW_GROUPS * VMEP_FP8_GROUP)

/* A random nonzero bf16 of magnitude in [2^lo, 2^hi). */
static uint16_t random_bf16(int lo, int hi) {
  double mag = (1.0 + (double)(test_rand() % 1000) / 1000.0) *
               exp2_exact(lo + (int)(test_rand() % (uint64_t)(hi - lo)));
  return vmep__bf16_from_float((float)((test_rand() & 1) ? -mag : mag));
}

/* Groups of different character: ordinary, all zero (the floor), tiny
 * (below the floor), large, one lone value, and a wide dynamic range. */
static void fill_row(uint16_t *x) {
  for (int g = 0; g < ROW_GROUPS; g++) {
    uint16_t *group = x + g * VMEP_FP8_GROUP;
    for (int i = 0; i < VMEP_FP8_GROUP; i++) {
      switch (g) {
      case 0:
        group[i] = random_bf16(-3, 3);
        break;
      case 1:
        group[i] = 0;
        break;
      case 2:
        group[i] = random_bf16(-24, -15);
        break;
      case 3:
        group[i] = random_bf16(10, 15);
        break;
      case 4:
        group[i] = i == 37 ? random_bf16(-2, 2) : 0;
        break;
      default:
        group[i] = random_bf16(-20, 8);
        break;
      }
    }
  }
}

/* The scale the rule asks for, computed here: amax by a plain loop, the
 * floor, the division, and for round_scale the smallest power of two not
 * below it, found by doubling. */
static float expected_scale(const uint16_t *group, int round_scale) {
  float amax = 0.0f;
  for (int i = 0; i < VMEP_FP8_GROUP; i++)
    amax = fmaxf(amax, fabsf(vmep__bf16_to_float(group[i])));
  float scale = fmaxf(amax, 1e-4f) / 448.0f;
  if (!round_scale)
    return scale;
  float pow2 = 0x1p-40f;
  while (pow2 < scale)
    pow2 *= 2.0f;
  return pow2;
}

static void check_group(const uint16_t *x, const uint8_t *q, float scale,
                        int round_scale) {
  float want = expected_scale(x, round_scale);
  if (vmep_f32_bits(scale) != vmep_f32_bits(want))
    TEST_FAIL("scale %.9g, expected %.9g (round_scale %d)", (double)scale,
              (double)want, round_scale);
  float amax = 0.0f;
  for (int i = 0; i < VMEP_FP8_GROUP; i++) {
    float v = vmep__bf16_to_float(x[i]);
    amax = fmaxf(amax, fabsf(v));
    ASSERT_EQ(q[i], vmep__fp8_from_float(v / scale));
    double back = oracle_fp8_value(q[i]) * scale;
    double bound = (fabs(v) * 0x1p-4 + 0x1p-10 * scale) * (1 + 0x1p-20);
    if (fabs(back - v) > bound)
      TEST_FAIL("channel %d: %.9g came back as %.9g (bound %.3g)", i, (double)v,
                back, bound);
  }
  /* Without rounding, the largest magnitude lands on +-448 exactly. */
  for (int i = 0; !round_scale && amax >= 1e-4f && i < VMEP_FP8_GROUP; i++)
    if (fabsf(vmep__bf16_to_float(x[i])) == amax)
      ASSERT_EQ(q[i] & 0x7f, 0x7e);
}

static void test_quantize_rows(void) {
  uint16_t x[ROW_HIDDEN];
  uint8_t q[ROW_HIDDEN];
  float scales[ROW_GROUPS];
  for (int trial = 0; trial < 400; trial++) {
    int round_scale = trial & 1;
    fill_row(x);
    vmep__fp8_quantize_row(x, ROW_HIDDEN, round_scale, q, scales);
    for (int g = 0; g < ROW_GROUPS; g++)
      check_group(x + g * VMEP_FP8_GROUP, q + g * VMEP_FP8_GROUP, scales[g],
                  round_scale);
    /* The all-zero group: the floored scale, and every code +0. */
    ASSERT_EQ(vmep_f32_bits(scales[1]),
              vmep_f32_bits(round_scale ? 0x1p-22f : 1e-4f / 448.0f));
    for (int g = 0; g < ROW_GROUPS; g++)
      if (round_scale)
        ASSERT_EQ(vmep_f32_bits(scales[g]) & 0x7fffff, 0);
    ASSERT_EQ(vmep_f32_bits(vmep__fp8_group_scale(x, round_scale)),
              vmep_f32_bits(scales[0]));
  }
  ASSERT_EQ(q[VMEP_FP8_GROUP], 0);
}

int main(void) {
  test_seed("test_numeric");
  test_bf16_all_values();
  test_bf16_cases();
  test_bf16_random();
  test_fp8_all_codes();
  test_fp8_cases();
  test_fp8_random();
  test_quantize_rows();
  printf("test_numeric: ok\n");
  return 0;
}
