/*
 * Helpers of the high-throughput reference tests: a world of R ranks'
 * inputs (bf16 or fp8 rows with scales, top-k ids and weights), host
 * arrays for one rank's dispatch outputs, and each rank's dispatch by the
 * reference. Header-only, like test_ref_util.h, whose report helpers
 * (expect_clean, expect_caught) they share.
 */
#ifndef VMEP_TEST_REF_HT_UTIL_H
#define VMEP_TEST_REF_HT_UTIL_H

#include "test_ref_util.h"

struct ht_world {
  struct vmep_ref_ht_problem p;
  struct vmep_ref_ht_rank_input in[MAX_RANKS];
  int masked[MAX_RANKS];
  uint8_t *x[MAX_RANKS]; /* bf16 bits or fp8 codes */
  float *scales[MAX_RANKS];
  int64_t *idx[MAX_RANKS];
  float *weight[MAX_RANKS];
};

static inline int ht_L(const struct ht_world *w) {
  return w->p.num_experts / w->p.num_ranks;
}

static inline size_t ht_row_bytes(const struct ht_world *w) {
  return (size_t)w->p.hidden * (w->p.use_fp8 ? 1 : 2);
}

static inline size_t ht_groups(const struct ht_world *w) {
  return (size_t)w->p.hidden / VMEP_FP8_GROUP;
}

/* Every slot -1, every weight 1 (they are skipped, so never zero). */
static inline void ht_world_init(struct ht_world *w, int R, int E, int T, int H,
                                 int K, int fp8, const int *tokens) {
  memset(w, 0, sizeof(*w));
  w->p = (struct vmep_ref_ht_problem){R, E, T, H, K, fp8, 0, w->masked, w->in};
  for (int r = 0; r < R; r++) {
    size_t n = (size_t)tokens[r];
    w->x[r] = calloc(n * H * 2 + 1, 1);
    w->scales[r] = calloc(n * (H / VMEP_FP8_GROUP) + 1, sizeof(float));
    w->idx[r] = malloc((n * K + 1) * sizeof(int64_t));
    w->weight[r] = malloc((n * K + 1) * sizeof(float));
    ASSERT_TRUE(w->x[r] && w->scales[r] && w->idx[r] && w->weight[r]);
    for (size_t i = 0; i < n * K; i++) {
      w->idx[r][i] = -1;
      w->weight[r][i] = 1.0f;
    }
    w->in[r] = (struct vmep_ref_ht_rank_input){tokens[r], w->x[r], w->scales[r],
                                               w->idx[r], w->weight[r]};
  }
}

static inline void ht_world_free(struct ht_world *w) {
  for (int r = 0; r < w->p.num_ranks; r++) {
    free(w->x[r]);
    free(w->scales[r]);
    free(w->idx[r]);
    free(w->weight[r]);
  }
}

/* Host arrays for `capacity` rows, filled with 0xa5 bytes: a value no
 * output has, so a row the reference should not write shows it. */
static inline void ht_recv_alloc(const struct ht_world *w, int capacity,
                                 struct vmep_ref_ht_recv *r) {
  size_t n = (size_t)capacity + 1, K = (size_t)w->p.top_k;
  size_t bytes[] = {
      sizeof(int32_t),         (size_t)ht_L(w) * sizeof(int32_t),
      n * ht_row_bytes(w),     n * (ht_groups(w) + 1) * sizeof(float),
      n * K * sizeof(int64_t), n * K * sizeof(float),
      n * sizeof(int32_t)};
  void **arrays[] = {(void **)&r->num_recv,
                     (void **)&r->recv_expert_count,
                     &r->recv_x,
                     (void **)&r->recv_scales,
                     (void **)&r->recv_topk_idx,
                     (void **)&r->recv_topk_weights,
                     (void **)&r->recv_src};
  r->capacity = capacity;
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(arrays); i++) {
    *arrays[i] = malloc(bytes[i]);
    ASSERT_TRUE(*arrays[i] != NULL);
    memset(*arrays[i], 0xa5, bytes[i]);
  }
}

static inline void ht_recv_free(struct vmep_ref_ht_recv *r) {
  free(r->num_recv);
  free(r->recv_expert_count);
  free(r->recv_x);
  free(r->recv_scales);
  free(r->recv_topk_idx);
  free(r->recv_topk_weights);
  free(r->recv_src);
}

/* Every rank's reference dispatch with room for R*T rows (never an
 * overflow). */
static inline void ht_dispatch_all(const struct ht_world *w,
                                   struct vmep_ref_ht_recv *recv) {
  for (int d = 0; d < w->p.num_ranks; d++) {
    ht_recv_alloc(w, w->p.num_ranks * w->p.max_tokens, &recv[d]);
    ASSERT_OK(vmep__ref_ht_dispatch(&w->p, d, &recv[d]));
  }
}

/* A dispatch check that must come back clean. */
static inline void ht_expect_dispatch_clean(const struct ht_world *w, int d,
                                            const struct vmep_ref_ht_recv *r) {
  struct vmep_ref_report report;
  ASSERT_OK(vmep__ref_ht_check_dispatch(&w->p, d, r, &report));
  expect_clean(report);
}

#endif /* VMEP_TEST_REF_HT_UTIL_H */
