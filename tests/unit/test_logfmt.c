/*
 * LogFMT-10, the combine's low-precision rows (docs/EP.md, "LogFMT"):
 * hand-worked groups (zeros, signs, one value far above the rest, bf16
 * subnormals, equal magnitudes, codes worked out on paper, Inf and NaN),
 * the packed row against the per-value codec, the round-trip error bound
 * of every value, and the accuracy of a whole combine against the bf16
 * path on normal, Student-t and log-normal data, printed and held to a
 * bound that follows from the format.
 */
#include <math.h>

#include "ep/reference.h"
#include "kernels/logfmt.h"
#include "test.h"

#define G VMEP_LOGFMT_GROUP
/* Slack for the fp32 roundings of the step and of a value's place
 * between two levels (each a few 2^-24 of a step): far above what they
 * can add, far below the format's own error. */
#define SLACK 0x1p-14

static uint16_t bf16(float f) { return vmep__bf16_from_float(f); }

static struct vmep_logfmt_group group_of(const uint16_t *x) {
  struct vmep_logfmt_group g;
  vmep_logfmt_group_of(vmep__logfmt_header(x), &g);
  return g;
}

static unsigned field_of(const uint16_t *x, int i) {
  struct vmep_logfmt_group g = group_of(x);
  return vmep_logfmt_encode(&g, vmep__bf16_to_float(x[i]));
}

/* The most a value of group g can move: below level 1 (only in a group
 * clipped to 32 octaves), half of level 1 (to 0 or level 1); else it
 * rounds to the nearer of two levels at most step + 1 apart in the bits,
 * half of that in units of its binade's last bit, (step + 1) / 2^24 of
 * itself at most (in the bits' linear stretch below 2^-125, half of that
 * many units of 2^-149), plus SLACK for the roundings of step and 1 / step
 * (which put a few values on the farther level, by a few bits). */
static double value_bound(const struct vmep_logfmt_group *g, double x) {
  if (g->step == 0.0f)
    return 0.0;
  if (vmep_f32_bits((float)fabs(x)) < g->lo)
    return 0.5 * vmep_f32_of_bits(g->lo) * (1 + SLACK);
  double gap = (double)g->step + 1;
  return (gap * 0x1p-24 + SLACK) * fabs(x) + gap * 0x1p-150;
}

static void test_zero_and_signs(void) {
  uint16_t x[G];
  for (int i = 0; i < G; i++)
    x[i] = i % 2 ? 0x8000 : 0;                    /* +0 and -0 */
  ASSERT_EQ(vmep__logfmt_header(x), 0x7f800000u); /* amax 0, amin +Inf */
  ASSERT_EQ(field_of(x, 0), 0u);
  ASSERT_EQ(field_of(x, 1), 0x200u); /* -0 keeps its sign */
  float out[G];
  vmep__logfmt_round_trip_group(x, out);
  for (int i = 0; i < G; i++)
    ASSERT_TRUE(out[i] == 0.0f && !signbit(out[i]) == (i % 2 == 0));
  /* Signs: -v decodes to minus what v decodes to. */
  for (int i = 0; i < G; i++)
    x[i] = bf16((i % 2 ? -1.0f : 1.0f) * (1.0f + (float)(i / 2) / 64.0f));
  vmep__logfmt_round_trip_group(x, out);
  for (int i = 0; i + 1 < G; i += 2) {
    ASSERT_EQ(field_of(x, i + 1), field_of(x, i) | 0x200u);
    ASSERT_TRUE(out[i + 1] == -out[i]);
  }
  printf("zeros (signed) and signs: ok\n");
}

static void test_worked_codes(void) {
  /* amin 1, amax 2: one binade, level 1 at 1.0, 510 steps of 2^23 / 510
   * bits (1 / 510 in value) to 2.0. A value v in [1, 2) takes code
   * 1 + 510 (v - 1) rounded to the nearer level, a midpoint up. */
  uint16_t x[G];
  for (int i = 0; i < G; i++)
    x[i] = bf16(1.0f);
  x[1] = bf16(2.0f);
  x[2] = bf16(1.5f);       /* 255 steps: code 256 */
  x[3] = bf16(1.4140625f); /* 1 + 53/128: 211.17 steps, code 212 */
  x[4] = bf16(-1.5f);
  x[5] = bf16(1.25f); /* 127.5 steps, a midpoint: code 129 */
  struct vmep_logfmt_group g = group_of(x);
  ASSERT_TRUE(g.lo == vmep_f32_bits(1.0f) && g.top == vmep_f32_bits(2.0f));
  ASSERT_TRUE(g.step == 0x1p23f * (1.0f / 510.0f));
  ASSERT_EQ(field_of(x, 0), 1u);
  ASSERT_EQ(field_of(x, 1), 511u);
  ASSERT_EQ(field_of(x, 2), 256u);
  ASSERT_EQ(field_of(x, 3), 212u);
  ASSERT_EQ(field_of(x, 4), 0x200u | 256u);
  ASSERT_EQ(field_of(x, 5), 129u);
  float out[G];
  vmep__logfmt_round_trip_group(x, out);
  ASSERT_TRUE(out[0] == 1.0f);
  /* level c at 1 + (c - 1) / 510, to the truncated last bits */
  const double want[] = {1.0, 2.0, 1.5, 1 + 211.0 / 510, -1.5, 1 + 128.0 / 510};
  for (int i = 0; i < 6; i++)
    if (fabs(out[i] - want[i]) > 0x1p-21)
      TEST_FAIL("worked value %d: decoded %.9g, level %.9g", i, (double)out[i],
                want[i]);
  printf("codes worked by hand (1, 511, 256, 212, -256, 129): ok\n");
}

static void test_outlier_and_flat(void) {
  /* One value 2^40 above ones: the range is clipped to 32 octaves, so
   * level 1 is 2^8 and the ones round to 0; the outlier keeps code 511. */
  uint16_t x[G];
  for (int i = 0; i < G; i++)
    x[i] = bf16(i % 3 ? 1.0f : -1.0f);
  x[7] = bf16(0x1p40f);
  struct vmep_logfmt_group g = group_of(x);
  ASSERT_TRUE(g.lo == vmep_f32_bits(256.0f));
  ASSERT_EQ(field_of(x, 7), 511u);
  ASSERT_EQ(field_of(x, 0), 0x200u);
  ASSERT_EQ(field_of(x, 1), 0u);
  float out[G];
  vmep__logfmt_round_trip_group(x, out);
  ASSERT_TRUE(fabs(out[7] / 0x1p40 - 1) < 0x1p-18 && out[1] == 0.0f);
  /* Equal magnitudes: a flat group, every value back exactly. */
  for (int i = 0; i < G; i++)
    x[i] = bf16(i % 5 ? 0.75f : (i % 2 ? -0.75f : 0.0f));
  g = group_of(x);
  ASSERT_TRUE(g.step == 0.0f && g.flat == 0.75f);
  vmep__logfmt_round_trip_group(x, out);
  for (int i = 0; i < G; i++)
    ASSERT_TRUE(out[i] == vmep__bf16_to_float(x[i]));
  printf("one value 2^40 above the rest (clipped), equal magnitudes "
         "(exact): ok\n");
}

static void test_subnormals_and_nonfinite(void) {
  /* bf16 subnormals 2^-133 (bits 0x0001) .. 2^-126 and normals to 2^-120:
   * subnormal inputs, 13 octaves, decoded within the bound. */
  uint16_t x[G];
  for (int i = 0; i < G; i++)
    x[i] = (uint16_t)(i < 64 ? 1 + i
                             : bf16(ldexpf(1.0f + (float)i / 128.0f,
                                           -126 + (i - 64) / 11)));
  struct vmep_logfmt_group g = group_of(x);
  ASSERT_EQ(vmep__logfmt_header(x) >> 16, 1u);
  ASSERT_EQ(field_of(x, 0), 1u);
  float out[G];
  vmep__logfmt_round_trip_group(x, out);
  for (int i = 0; i < G; i++) {
    double v = vmep__bf16_to_float(x[i]);
    if (fabs(out[i] - v) > value_bound(&g, v))
      TEST_FAIL("subnormal group, value %d: %g decoded as %g", i, v,
                (double)out[i]);
  }
  /* Inf and NaN take code 511 (the largest finite magnitude), signed. */
  for (int i = 0; i < G; i++)
    x[i] = bf16(0.5f + (float)i / 256.0f);
  x[3] = 0xff80; /* -Inf */
  x[9] = 0x7fc0; /* NaN */
  ASSERT_EQ(vmep__logfmt_header(x) & 0xffffu,
            bf16(0.5f + 127.0f / 256.0f)); /* amax of the finite ones */
  ASSERT_EQ(field_of(x, 3), 0x200u | 511u);
  ASSERT_EQ(field_of(x, 9), 511u);
  printf("bf16 subnormals (2^-133 up), Inf and NaN: ok\n");
}

/* A standard normal draw (Box-Muller). */
static double normal(void) {
  double u = ((double)(test_rand() >> 11) + 0.5) * 0x1p-53;
  double v = (double)(test_rand() >> 11) * 0x1p-53;
  return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

enum data { NORMAL, STUDENT_T, LOG_NORMAL };
static const char *data_names[] = {"normal N(0, 1)", "Student-t, 3 dof",
                                   "log-normal |x| (sigma 2), random sign"};

static float draw(enum data d) {
  if (d == NORMAL)
    return (float)normal();
  if (d == STUDENT_T) {
    double chi2 = 0;
    for (int i = 0; i < 3; i++) {
      double z = normal();
      chi2 += z * z;
    }
    return (float)(normal() / sqrt(chi2 / 3));
  }
  return (float)((test_rand() & 1 ? -1 : 1) * exp(2 * normal()));
}

/* The packed row against the per-value codec, and every value within its
 * group's bound. */
static void check_rows(const uint16_t *x, int hidden) {
  static uint8_t row[VMEP_LOGFMT_BITS * 8192 / 8 + 8192 / 32];
  static float decoded[8192], trip[G];
  vmep__logfmt_encode_row(x, hidden, row);
  vmep__logfmt_decode_row(row, hidden, decoded);
  for (int g0 = 0; g0 < hidden; g0 += G) {
    struct vmep_logfmt_group g = group_of(x + g0);
    vmep__logfmt_round_trip_group(x + g0, trip);
    for (int i = 0; i < G; i++) {
      double v = vmep__bf16_to_float(x[g0 + i]);
      if (memcmp(&decoded[g0 + i], &trip[i], sizeof(float)) != 0)
        TEST_FAIL("channel %d: the packed row gives %g, the codec %g", g0 + i,
                  (double)decoded[g0 + i], (double)trip[i]);
      if (fabs(trip[i] - v) > value_bound(&g, v))
        TEST_FAIL("channel %d: %g decoded as %g, beyond the bound %g", g0 + i,
                  v, (double)trip[i], value_bound(&g, v));
    }
  }
}

/*
 * A combine of N tokens of top-K rows each, weights in (0, 1): out =
 * bf16(sum_k w x) on the bf16 path, bf16(sum_k fmaf(w, decoded x)) on the
 * LogFMT path (the kernel's sum), both against the exact sum in double.
 * Asserted for every element: |LogFMT - exact| <= (rho + SLACK) sum|w x|
 * + 2^-8 |sum| (bf16's rounding of the result, with room for the fp32
 * sum), rho = 32 / 1020 = 0.0314, half the format's largest step of
 * 32/510 of a binade (no value of these data is subnormal or 32 octaves
 * below its group's largest). Printed: relative L2 error of each path, and the
 * largest error of an element as a fraction of sum|w x|.
 */
static void accuracy(enum data d, int hidden, int tokens, int topk) {
  const double rho = 32.0 / 1020;
  size_t H = (size_t)hidden;
  uint16_t *x = malloc((size_t)topk * H * 2);
  float *dec = malloc((size_t)topk * H * 4);
  ASSERT_TRUE(x && dec);
  double err_bf16 = 0, err_logfmt = 0, norm = 0, worst = 0;
  for (int t = 0; t < tokens; t++) {
    float w[VMEP_EP_MAX_TOPK];
    for (int k = 0; k < topk; k++) {
      w[k] = (float)((double)(test_rand() >> 11) * 0x1p-53);
      for (size_t h = 0; h < H; h++)
        x[k * H + h] = bf16(draw(d));
      check_rows(x + k * H, hidden);
      for (size_t h = 0; h < H; h += G)
        vmep__logfmt_round_trip_group(x + k * H + h, dec + k * H + h);
    }
    for (size_t h = 0; h < H; h++) {
      double exact = 0, scale = 0;
      float sum = 0, lf = 0;
      for (int k = 0; k < topk; k++) {
        double v = vmep__bf16_to_float(x[k * H + h]);
        exact += w[k] * v;
        scale += fabs(w[k] * v);
        sum += w[k] * (float)v;
        lf = fmaf(w[k], dec[k * H + h], lf);
      }
      double a = vmep__bf16_to_float(bf16(sum)) - exact;
      double b = vmep__bf16_to_float(bf16(lf)) - exact;
      if (fabs(b) > (rho + SLACK) * scale + 0x1p-8 * fabs(exact))
        TEST_FAIL("%s, token %d channel %zu: LogFMT %g, exact %g",
                  data_names[d], t, h, vmep__bf16_to_float(bf16(lf)), exact);
      err_bf16 += a * a;
      err_logfmt += b * b;
      norm += exact * exact;
      if (scale > 0 && fabs(b) / scale > worst)
        worst = fabs(b) / scale;
    }
  }
  printf("%-40s relative L2 error: bf16 %.2e, LogFMT %.2e; largest "
         "|error| / sum|w x|: %.4f (bound %.4f + 2^-8 |sum|)\n",
         data_names[d], sqrt(err_bf16 / norm), sqrt(err_logfmt / norm), worst,
         rho + SLACK);
  free(dec);
  free(x);
}

int main(void) {
  test_seed("test_logfmt");
  test_zero_and_signs();
  test_worked_codes();
  test_outlier_and_flat();
  test_subnormals_and_nonfinite();
  printf("combine of 256 tokens, H 7168, top-8, weights in (0, 1):\n");
  for (int d = NORMAL; d <= LOG_NORMAL; d++)
    accuracy((enum data)d, 7168, 256, 8);
  printf("test_logfmt: ok\n");
  return 0;
}
