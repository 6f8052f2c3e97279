/*
 * Helpers of the reference tests: a world of R ranks' inputs, host arrays
 * for dispatch outputs, an implementation simulated by reshuffling the
 * reference layout into another valid one, experts that scale their rows,
 * and a combine computed directly from the tokens, without any layout.
 * Header-only, like test.h, so that they share its seeded random source.
 */
#ifndef VMEP_TEST_REF_UTIL_H
#define VMEP_TEST_REF_UTIL_H

#include "core/core.h"
#include "ep/reference.h"
#include "test.h"

#define MAX_RANKS 8
#define MAX_EXPERTS (3 * MAX_RANKS)

struct world {
  struct vmep_ref_problem p;
  struct vmep_ref_rank_input in[MAX_RANKS];
  int masked[MAX_RANKS];
  uint16_t *x[MAX_RANKS];
  int64_t *idx[MAX_RANKS];
  float *weight[MAX_RANKS];
  float factor[MAX_EXPERTS]; /* expert e multiplies its rows by this */
  int single_rank; /* its token 0 has one selection, to itself; or -1 */
};

static inline int L_of(const struct world *w) {
  return w->p.num_experts / w->p.num_ranks;
}
static inline size_t RT_of(const struct world *w) {
  return (size_t)w->p.num_ranks * (size_t)w->p.max_tokens;
}

static inline void world_init(struct world *w, int R, int E, int T, int H,
                              int K, const int *tokens) {
  memset(w, 0, sizeof(*w));
  w->p = (struct vmep_ref_problem){
      R, E, T, H, K, 0, 0, w->masked, w->in, VMEP_EP_SCALES_ROW_MAJOR, 0, 0};
  w->single_rank = -1;
  for (int r = 0; r < R; r++) {
    size_t n = (size_t)tokens[r];
    w->x[r] = calloc(n * H + 1, sizeof(uint16_t));
    w->idx[r] = malloc((n * K + 1) * sizeof(int64_t));
    w->weight[r] = calloc(n * K + 1, sizeof(float));
    ASSERT_TRUE(w->x[r] && w->idx[r] && w->weight[r]);
    for (size_t i = 0; i < n * K; i++)
      w->idx[r][i] = -1;
    w->in[r] = (struct vmep_ref_rank_input){tokens[r], w->x[r], w->idx[r],
                                            w->weight[r]};
  }
  for (int e = 0; e < E; e++)
    w->factor[e] = (float)(e + 1);
}

static inline void world_free(struct world *w) {
  for (int r = 0; r < w->p.num_ranks; r++) {
    free(w->x[r]);
    free(w->idx[r]);
    free(w->weight[r]);
  }
}

static inline void recv_alloc(const struct world *w, struct vmep_ref_recv *r) {
  size_t L = (size_t)L_of(w), rows = L * RT_of(w), H = (size_t)w->p.hidden;
  r->recv_x = malloc(rows * H * 2);
  r->recv_scales = malloc((rows * H / VMEP_FP8_GROUP + 1) * sizeof(float));
  r->recv_count = malloc(L * sizeof(int32_t));
  r->src_info = malloc(rows * sizeof(int32_t));
  r->layout_range = malloc(L * w->p.num_ranks * sizeof(int64_t));
  ASSERT_TRUE(r->recv_x && r->recv_scales && r->recv_count && r->src_info &&
              r->layout_range);
}

static inline void recv_free(struct vmep_ref_recv *r) {
  free(r->recv_x);
  free(r->recv_scales);
  free(r->recv_count);
  free(r->src_info);
  free(r->layout_range);
}

/* A nonzero bf16 with magnitude in [1/64, 8). */
static inline uint16_t random_value(void) {
  float mag = (float)(1 + test_rand() % 512) / 64.0f;
  return vmep__bf16_from_float((test_rand() & 1) ? -mag : mag);
}

/* Slot `slot` of an id array and its weight: `expert`, or one time in
 * eight -1, one in forty an invalid id (>= E or < -1); the weight in
 * +-[0.001, 1], never zero. */
static inline void random_slot(int64_t expert, int E, int64_t *ids,
                               float *weights, size_t slot) {
  uint64_t dice = test_rand() % 40;
  int64_t id = dice < 5 ? -1 : expert;
  if (dice == 5)
    id = (test_rand() & 1) ? E + (int64_t)(test_rand() % 5)
                           : -2 - (int64_t)(test_rand() % 5);
  ids[slot] = id;
  weights[slot] =
      (float)(1 + test_rand() % 1000) / ((test_rand() & 1) ? 1000 : -1000);
}

/* ---- an implementation's layout, simulated ------------------------------ */

static inline void copy_recv_row(const struct world *w,
                                 const struct vmep_ref_recv *a, size_t from,
                                 struct vmep_ref_recv *b, size_t to) {
  size_t H = (size_t)w->p.hidden, width = w->p.use_fp8 ? 1 : 2;
  memcpy((char *)b->recv_x + to * H * width,
         (const char *)a->recv_x + from * H * width, H * width);
  if (w->p.use_fp8)
    memcpy(b->recv_scales + to * (H / VMEP_FP8_GROUP),
           a->recv_scales + from * (H / VMEP_FP8_GROUP),
           H / VMEP_FP8_GROUP * sizeof(float));
  b->src_info[to] = a->src_info[from];
}

static inline void shuffle(int *v, int n) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)(test_rand() % (uint64_t)(i + 1)), t = v[i];
    v[i] = v[j];
    v[j] = t;
  }
}

/* A valid layout other than the canonical one: ranges in a random order of
 * source ranks, rows shuffled within each range, empty ranges at random
 * begins, and garbage past the counts. */
static inline void reshuffle(const struct world *w,
                             const struct vmep_ref_recv *ref,
                             struct vmep_ref_recv *impl) {
  int R = w->p.num_ranks, L = L_of(w), order[MAX_RANKS];
  size_t RT = RT_of(w), rows = (size_t)L * RT, H = (size_t)w->p.hidden;
  int *perm = malloc(RT * sizeof(int));
  ASSERT_TRUE(perm != NULL);
  for (size_t i = 0; i < rows * H * 2; i++)
    ((uint8_t *)impl->recv_x)[i] = (uint8_t)test_rand();
  for (size_t i = 0; i < rows; i++)
    impl->src_info[i] = (int32_t)(test_rand() % 1000);
  for (int l = 0; l < L; l++) {
    uint32_t at = 0;
    impl->recv_count[l] = ref->recv_count[l];
    for (int r = 0; r < R; r++)
      order[r] = r;
    shuffle(order, R);
    for (int j = 0; j < R; j++) {
      int64_t range = ref->layout_range[l * R + order[j]];
      int count = (int)vmep__range_count(range);
      size_t begin = vmep__range_begin(range) + (size_t)l * RT;
      uint32_t empty_begin = (uint32_t)(test_rand() % (RT + 1));
      impl->layout_range[l * R + order[j]] =
          vmep__range_pack(count ? at : empty_begin, (uint32_t)count);
      for (int i = 0; i < count; i++)
        perm[i] = i;
      shuffle(perm, count);
      for (int i = 0; i < count; i++)
        copy_recv_row(w, ref, begin + perm[i], impl, l * RT + at + i);
      at += (uint32_t)count;
    }
  }
  free(perm);
}

/* Expert e's output rows: factor[e] * the received row (dequantized for
 * fp8), in bf16; random bits past the count, which nothing may read. */
static inline void run_experts(const struct world *w, int d,
                               const struct vmep_ref_recv *recv,
                               uint16_t *out) {
  size_t RT = RT_of(w), H = (size_t)w->p.hidden;
  for (int l = 0; l < L_of(w); l++)
    for (size_t i = 0; i < RT; i++)
      for (size_t h = 0; h < H; h++) {
        size_t at = ((size_t)l * RT + i) * H + h;
        if (i >= (size_t)recv->recv_count[l]) {
          out[at] = (uint16_t)test_rand();
          continue;
        }
        float v = w->p.use_fp8
                      ? vmep__fp8_to_float(((uint8_t *)recv->recv_x)[at]) *
                            recv->recv_scales[at / VMEP_FP8_GROUP]
                      : vmep__bf16_to_float(((uint16_t *)recv->recv_x)[at]);
        out[at] = vmep__bf16_from_float(w->factor[d * L_of(w) + l] * v);
      }
}

/* Rank s's combine computed here without any layout, from each token's own
 * row, summing in double in reverse k order: another order than the
 * reference's, so the checker's tolerance is exercised. */
static inline void direct_combine(const struct world *w, int s, uint16_t *out) {
  int H = w->p.hidden, K = w->p.top_k, L = L_of(w);
  uint8_t *q = malloc((size_t)H);
  float *scale = malloc(((size_t)H / VMEP_FP8_GROUP + 1) * sizeof(float));
  ASSERT_TRUE(q && scale);
  for (int t = 0; t < w->in[s].num_tokens; t++) {
    const uint16_t *x = w->x[s] + (size_t)t * H;
    if (w->p.use_fp8)
      vmep__fp8_quantize_row(x, H, w->p.round_scale, q, scale);
    for (int h = 0; h < H; h++) {
      double acc = 0;
      for (int k = K - 1; k >= 0; k--) {
        int64_t e = w->idx[s][(size_t)t * K + k];
        if (e < 0 || e >= w->p.num_experts || w->masked[s] || w->masked[e / L])
          continue;
        float v = w->p.use_fp8
                      ? vmep__fp8_to_float(q[h]) * scale[h / VMEP_FP8_GROUP]
                      : vmep__bf16_to_float(x[h]);
        float y = vmep__bf16_to_float(vmep__bf16_from_float(w->factor[e] * v));
        acc += (double)w->weight[s][(size_t)t * K + k] * y;
      }
      out[(size_t)t * H + h] = vmep__bf16_from_float((float)acc);
    }
  }
  free(scale);
  free(q);
}

static inline struct vmep_ref_report
check_dispatch(const struct world *w, int d, const struct vmep_ref_recv *r) {
  struct vmep_ref_report report;
  ASSERT_OK(vmep__ref_check_dispatch(&w->p, d, r, &report));
  return report;
}

static inline void expect_clean(struct vmep_ref_report report) {
  if (report.mismatches != 0)
    TEST_FAIL("%lld mismatches, first: %s", (long long)report.mismatches,
              report.first);
}

static inline void expect_caught(struct vmep_ref_report report,
                                 const char *what) {
  if (report.mismatches == 0)
    TEST_FAIL("a corrupted %s was not caught", what);
  ASSERT_STR_CONTAINS(report.first, what);
}

/* vmep__ref_send_stats of `rank` must say exactly this. */
static inline void check_stats(const struct world *w, int rank, int64_t sent,
                               int64_t masked, int64_t invalid) {
  struct vmep_ref_send_stats stats;
  ASSERT_OK(vmep__ref_send_stats(&w->p, rank, &stats));
  ASSERT_EQ(stats.sent, sent);
  ASSERT_EQ(stats.masked, masked);
  ASSERT_EQ(stats.invalid, invalid);
}

#endif /* VMEP_TEST_REF_UTIL_H */
