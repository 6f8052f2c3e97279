/*
 * The host reference of high-throughput layout, dispatch and combine on
 * cases worked out by hand: 3 ranks, 6 experts, K 4, with a token that
 * has two experts on one rank, a token with none, invalid ids, a rank with
 * no tokens, a masked rank, expert alignment, an overflowing capacity, fp8
 * rows, and combines whose order, single rounding and biases show in the
 * bits. Every count, row, id, weight, recv_src and combined value is
 * written here. Then each checker catches each kind of corruption, and
 * invalid problems are refused.
 */
#include <math.h>

#include "test_ref_ht_util.h"

#define HAND_H 128
#define HAND_K 4

/* ---- case A ----------------------------------------------------------------
 * Ranks 0..2, experts 0,1 on rank 0; 2,3 on rank 1; 4,5 on rank 2.
 * Token t of rank r is the row +-(4r + t + 1), the sign alternating by
 * channel (bf16); in fp8 its codes are (r, t, channel) mixed, with scale
 * (r + 1) * (t + 1) / 8 for its one group. Weights of -1 slots are
 * nonzero, to show they are dropped.
 */
struct hand_token {
  int64_t idx[HAND_K];
  float weight[HAND_K];
};

static const int A_TOKENS[3] = {3, 2, 0};
static const struct hand_token CASE_A[3][3] = {
    {{{1, 0, 4, -1}, {0.5f, 0.25f, 2, 8}},     /* ranks 0 (twice), 2 */
     {{-1, -1, -1, -1}, {1, 1, 1, 1}},         /* nowhere */
     {{3, 6, 2, -1}, {0.125f, 3, 4, 16}}},     /* rank 1 (twice); 6 = E bad */
    {{{5, 2, -1, 1}, {1.5f, -0.5f, 9, 0.75f}}, /* ranks 2, 1, 0 */
     {{0, -3, 5, -1}, {0.625f, 5, -2, 32}}}};  /* ranks 0, 2; -3 bad */

static void hand_world(struct ht_world *w, int fp8) {
  ht_world_init(w, 3, 6, 3, HAND_H, HAND_K, fp8, A_TOKENS);
  for (int r = 0; r < 3; r++)
    for (int t = 0; t < A_TOKENS[r]; t++) {
      memcpy(&w->idx[r][t * HAND_K], CASE_A[r][t].idx, sizeof(int64_t) * 4);
      memcpy(&w->weight[r][t * HAND_K], CASE_A[r][t].weight, sizeof(float) * 4);
      w->scales[r][t] = (float)((r + 1) * (t + 1)) / 8;
      for (int h = 0; h < HAND_H; h++) {
        uint16_t v =
            vmep__bf16_from_float((h & 1 ? -1.0f : 1.0f) * (4 * r + t + 1));
        if (fp8) /* 1..126: never zero, never NaN */
          w->x[r][t * HAND_H + h] = (uint8_t)((r * 64 + t * 16 + h) % 126 + 1);
        else
          memcpy(&w->x[r][(t * HAND_H + h) * 2], &v, 2);
      }
    }
}

/* ---- layout ----------------------------------------------------------------
 */

struct hand_layout {
  int32_t per_rank[3], per_expert[6];
  uint8_t in_rank[3][3];
  int64_t bad;
};

static const struct hand_layout A_LAYOUT[3] = {
    {{1, 1, 1}, {1, 1, 1, 1, 1, 0}, {{1, 0, 1}, {0, 0, 0}, {0, 1, 0}}, 1},
    {{2, 1, 2}, {1, 1, 1, 0, 0, 2}, {{1, 1, 1}, {1, 0, 1}}, 1},
    {{0, 0, 0}, {0, 0, 0, 0, 0, 0}, {{0}}, 0}};

static void check_layout(const struct ht_world *w) {
  for (int r = 0; r < 3; r++) {
    int32_t per_rank[3], per_expert[6];
    uint8_t in_rank[9];
    int64_t bad;
    struct vmep_ref_ht_layout lay = {per_rank, per_expert, in_rank};
    struct vmep_ref_report report;
    ASSERT_OK(vmep__ref_ht_layout(&w->p, r, &lay));
    ASSERT_EQ(memcmp(per_rank, A_LAYOUT[r].per_rank, sizeof(per_rank)), 0);
    ASSERT_EQ(memcmp(per_expert, A_LAYOUT[r].per_expert, sizeof(per_expert)),
              0);
    ASSERT_EQ(memcmp(in_rank, A_LAYOUT[r].in_rank, A_TOKENS[r] * 3), 0);
    ASSERT_OK(vmep__ref_ht_bad_experts(&w->p, r, &bad));
    ASSERT_EQ(bad, A_LAYOUT[r].bad);
    ASSERT_OK(vmep__ref_ht_check_layout(&w->p, r, &lay, &report));
    expect_clean(report);
  }
}

/* ---- dispatch --------------------------------------------------------------
 */

struct hand_row {
  int s, t;    /* the source token, whose x the row must carry */
  int32_t src; /* recv_src, packed by hand */
  int64_t idx[HAND_K];
  float weight[HAND_K];
};

struct hand_recv {
  int n;
  int32_t count[2], count4[2]; /* exact, and with expert_alignment 4 */
  struct hand_row row[3];
};

static const struct hand_recv A_RECV[3] = {
    {3,
     {2, 2},
     {4, 4},
     {{0, 0, 0, {1, 0, -1, -1}, {0.5f, 0.25f, 0, 0}},
      {1, 0, 35, {-1, -1, -1, 1}, {0, 0, 0, 0.75f}},
      {1, 1, 65568, {0, -1, -1, -1}, {0.625f, 0, 0, 0}}}},
    {2,
     {2, 1},
     {4, 4},
     {{0, 2, 131072, {1, -1, 0, -1}, {0.125f, 0, 4, 0}},
      {1, 0, 33, {-1, 0, -1, -1}, {0, -0.5f, 0, 0}}}},
    {3,
     {1, 2},
     {4, 4},
     {{0, 0, 2, {-1, -1, 0, -1}, {0, 0, 2, 0}},
      {1, 0, 32, {1, -1, -1, -1}, {1.5f, 0, 0, 0}},
      {1, 1, 65570, {-1, -1, 1, -1}, {0, 0, -2, 0}}}}};

/* Rank 1 masked: it sends and receives nothing. */
static const struct hand_recv MASKED_RECV[3] = {
    {1, {1, 1}, {4, 4}, {{0, 0, 0, {1, 0, -1, -1}, {0.5f, 0.25f, 0, 0}}}},
    {0, {0, 0}, {0, 0}, {{0}}},
    {1, {1, 0}, {4, 0}, {{0, 0, 2, {-1, -1, 0, -1}, {0, 0, 2, 0}}}}};

/* Rank d's reference dispatch into `capacity` rows against `want`; with
 * `alignment` 4 the aligned counts. Rows past the capacity stay 0xa5. */
static void check_recv(struct ht_world *w, int d, int capacity, int alignment,
                       const struct hand_recv *want) {
  struct vmep_ref_ht_recv r;
  size_t G = ht_groups(w), bytes = ht_row_bytes(w);
  ht_recv_alloc(w, capacity, &r);
  w->p.expert_alignment = alignment;
  ASSERT_OK(vmep__ref_ht_dispatch(&w->p, d, &r));
  ASSERT_EQ(*r.num_recv, want->n);
  for (int l = 0; l < 2; l++)
    ASSERT_EQ(r.recv_expert_count[l],
              alignment == 4 ? want->count4[l] : want->count[l]);
  for (int i = 0; i < want->n && i < capacity; i++) {
    const struct hand_row *row = &want->row[i];
    ASSERT_EQ(r.recv_src[i], row->src);
    ASSERT_EQ(memcmp((uint8_t *)r.recv_x + i * bytes,
                     w->x[row->s] + row->t * bytes, bytes),
              0);
    if (w->p.use_fp8)
      ASSERT_EQ(memcmp(&r.recv_scales[i * G], &w->scales[row->s][row->t * G],
                       G * sizeof(float)),
                0);
    ASSERT_EQ(memcmp(&r.recv_topk_idx[i * HAND_K], row->idx, 8 * HAND_K), 0);
    ASSERT_EQ(memcmp(&r.recv_topk_weights[i * HAND_K], row->weight, 4 * HAND_K),
              0);
  }
  if (capacity < want->n) {
    ASSERT_EQ(r.recv_src[capacity], (int32_t)0xa5a5a5a5);
    ASSERT_EQ(((uint8_t *)r.recv_x)[capacity * bytes], 0xa5);
  }
  ht_expect_dispatch_clean(w, d, &r);
  ht_recv_free(&r);
}

static void test_hand_dispatch(void) {
  struct ht_world w;
  for (int fp8 = 0; fp8 < 2; fp8++) {
    hand_world(&w, fp8);
    check_layout(&w);
    for (int d = 0; d < 3; d++) {
      check_recv(&w, d, 9, 1, &A_RECV[d]);
      check_recv(&w, d, A_RECV[d].n, 4, &A_RECV[d]);
    }
    /* Capacity 1 on rank 2: two rows dropped, N and the counts stay. */
    check_recv(&w, 2, 1, 1, &A_RECV[2]);
    check_recv(&w, 0, 0, 4, &A_RECV[0]);
    /* A mask changes what is sent, not the layout. */
    w.masked[1] = 1;
    check_layout(&w);
    for (int d = 0; d < 3; d++)
      check_recv(&w, d, 3, 4, &MASKED_RECV[d]);
    ht_world_free(&w);
  }
}

/* topk_weights NULL: every received weight is 0. */
static void test_no_weights(void) {
  struct ht_world w;
  struct vmep_ref_ht_recv r;
  hand_world(&w, 0);
  w.in[1].topk_weights = NULL;
  ht_recv_alloc(&w, 3, &r);
  ASSERT_OK(vmep__ref_ht_dispatch(&w.p, 2, &r));
  static const float want[3][HAND_K] = {{0, 0, 2, 0}, {0}, {0}};
  ASSERT_EQ(memcmp(r.recv_topk_weights, want, sizeof(want)), 0);
  ht_expect_dispatch_clean(&w, 2, &r);
  ht_recv_free(&r);
  ht_world_free(&w);
}

/* ---- combine ---------------------------------------------------------------
 * Each rank sends back one constant row per received row (sign alternating
 * by channel, like x) and one weight row. Source 1's token 0 sums 2^24,
 * then 1, then -2^24 (ranks 2, 1, 0: its expert order), which gives 0;
 * rank order would give 1. Source 1's token 1 sums to 257, a bf16 tie
 * that rounds to 256, but with bias 2 to 259, which rounds to 260: the
 * sum is rounded once, at the end. Source 0 has bias0 and bias1; source 1
 * bias1 only.
 */
static const float A_BACK_X[3][3] = {
    {3, -16777216.0f, 256}, {-1.25f, 1}, {0.5f, 16777216.0f, 1}};
static const float A_BACK_W[3][3][HAND_K] = {
    {{1, 2, 3, 4}, {-16777216.0f, 0.125f, -1, 1}, {0.5f, 0.5f, 0.5f, 0.5f}},
    {{7, -7, 0.25f, 100}, {1, 0.25f, 2, 3}},
    {{10, 20, 30, 40}, {16777216.0f, 0.5f, 4, -4}, {-0.5f, 1.5f, 2.5f, 3.5f}}};
static const float MASKED_BACK_X[3][3] = {{3}, {0}, {0.5f}};
static const float MASKED_BACK_W[3][3][HAND_K] = {
    {{1, 2, 3, 4}}, {{0}}, {{10, 20, 30, 40}}};

/* bias0 and bias1 of each source token ([s][t]); NAN: no such bias. */
static const float BIAS0[2][3] = {{256, -3, 0.25f}, {NAN, NAN}};
static const float BIAS1[2][3] = {{-0.5f, 1, 0.75f}, {0.5f, 2}};

struct hand_out {
  float plain[3], biased[3];
  float weight[3][HAND_K];
};

static const struct hand_out A_OUT[2] = {
    {{3.5f, 0, -1.25f},
     {260, -2, -0.25f},
     {{11, 22, 33, 44}, {0, 0, 0, 0}, {7, -7, 0.25f, 100}}},
    {{0, 256}, {0.5f, 260}, {{0, 0.875f, 5, 0}, {0, 2, 3, 4}}}};
static const struct hand_out MASKED_OUT[2] = {
    {{3.5f, 0, 0}, {260, -2, 1}, {{11, 22, 33, 44}}},
    {{0, 0}, {0.5f, 2}, {{0}}}};

/* [n, H] bf16 rows of the given values, the sign alternating by channel;
 * NULL for a NAN first value. */
static uint16_t *hand_rows(const float *values, int n) {
  if (n > 0 && isnan(values[0]))
    return NULL;
  uint16_t *rows = malloc(((size_t)n * HAND_H + 1) * 2);
  ASSERT_TRUE(rows != NULL);
  for (int i = 0; i < n; i++)
    for (int h = 0; h < HAND_H; h++) {
      float v = values[i];
      rows[i * HAND_H + h] = vmep__bf16_from_float(v == 0 ? 0 : h & 1 ? -v : v);
    }
  return rows;
}

/* Rank s's combine with and without biases and weights, against `want`. */
static void check_out(const struct ht_world *w, int s,
                      struct vmep_ref_ht_combine_input *in,
                      const struct hand_out *want) {
  int n = w->in[s].num_tokens;
  uint16_t out[3 * HAND_H], *expected[2];
  float weights[3 * HAND_K];
  struct vmep_ref_report report;
  expected[0] = hand_rows(want->plain, n);
  expected[1] = hand_rows(want->biased, n);
  for (int biased = 0; biased < 2; biased++) {
    in[s].bias0 = biased ? hand_rows(BIAS0[s], n) : NULL;
    in[s].bias1 = biased ? hand_rows(BIAS1[s], n) : NULL;
    ASSERT_OK(vmep__ref_ht_combine(&w->p, in, s, out, weights));
    ASSERT_EQ(memcmp(out, expected[biased], (size_t)n * HAND_H * 2), 0);
    ASSERT_EQ(memcmp(weights, want->weight, (size_t)n * HAND_K * 4), 0);
    ASSERT_OK(vmep__ref_ht_check_combine(&w->p, in, s, out, weights, &report));
    expect_clean(report);
    ASSERT_OK(vmep__ref_ht_combine(&w->p, in, s, out, NULL));
    ASSERT_EQ(memcmp(out, expected[biased], (size_t)n * HAND_H * 2), 0);
    free((void *)in[s].bias0);
    free((void *)in[s].bias1);
  }
  in[s].bias0 = in[s].bias1 = NULL;
  free(expected[0]);
  free(expected[1]);
}

/* Every rank's rows and weights sent back, as the hand tables give. */
static void hand_back(const float x[3][3], const float weights[3][3][HAND_K],
                      const struct hand_recv recv[3],
                      struct vmep_ref_ht_combine_input *in) {
  for (int r = 0; r < 3; r++)
    in[r] = (struct vmep_ref_ht_combine_input){hand_rows(x[r], recv[r].n),
                                               &weights[r][0][0], NULL, NULL};
}

static void check_combine(const struct ht_world *w, const float x[3][3],
                          const float weights[3][3][HAND_K],
                          const struct hand_recv recv[3],
                          const struct hand_out out[2]) {
  struct vmep_ref_ht_combine_input in[3];
  hand_back(x, weights, recv, in);
  for (int s = 0; s < 2; s++)
    check_out(w, s, in, &out[s]);
  /* Rank 2 has no tokens: nothing to write, nothing read. */
  ASSERT_OK(vmep__ref_ht_combine(&w->p, in, 2, NULL, NULL));
  for (int r = 0; r < 3; r++)
    free((void *)in[r].x);
}

static void test_hand_combine(void) {
  struct ht_world w;
  hand_world(&w, 0);
  check_combine(&w, A_BACK_X, A_BACK_W, A_RECV, A_OUT);
  w.masked[1] = 1;
  check_combine(&w, MASKED_BACK_X, MASKED_BACK_W, MASKED_RECV, MASKED_OUT);
  ht_world_free(&w);
}

/* ---- the checkers catch what differs -------------------------------------
 */

/* Flips bit 6 of the byte at `at` (bit 7 with FLIP_SIGN), expects
 * exactly one mismatch described with `says`, and flips it back. */
#define FLIP 0x40
#define FLIP_SIGN 0x80
#define EXPECT_CAUGHT(at, bit, check, says)                                    \
  do {                                                                         \
    struct vmep_ref_report report_;                                            \
    *(uint8_t *)(at) ^= (bit);                                                 \
    ASSERT_OK(check);                                                          \
    ASSERT_EQ(report_.mismatches, 1);                                          \
    ASSERT_STR_CONTAINS(report_.first, says);                                  \
    *(uint8_t *)(at) ^= (bit);                                                 \
  } while (0)

static void test_checkers(void) {
  struct ht_world w;
  struct vmep_ref_ht_recv r[3];
  hand_world(&w, 1);
  ht_dispatch_all(&w, r);
  int32_t per_rank[3], per_expert[6];
  uint8_t in_rank[9];
  struct vmep_ref_ht_layout lay = {per_rank, per_expert, in_rank};
  ASSERT_OK(vmep__ref_ht_layout(&w.p, 1, &lay));
#define LAYOUT vmep__ref_ht_check_layout(&w.p, 1, &lay, &report_)
  EXPECT_CAUGHT(&per_rank[2], FLIP, LAYOUT,
                "tokens_per_rank: row 0, rank 2: 66");
  EXPECT_CAUGHT(&per_expert[5], FLIP, LAYOUT,
                "tokens_per_expert: row 0, expert 5");
  EXPECT_CAUGHT(&in_rank[4], FLIP, LAYOUT, "in_rank: token 1, rank 1: 0x40");
#define DISPATCH(d) vmep__ref_ht_check_dispatch(&w.p, d, &r[d], &report_)
  EXPECT_CAUGHT(r[0].num_recv, FLIP, DISPATCH(0), "num_recv");
  EXPECT_CAUGHT(&r[1].recv_expert_count[1], FLIP, DISPATCH(1),
                "recv_expert_count: row 0, expert 1: 65");
  EXPECT_CAUGHT(&r[2].recv_src[2], FLIP, DISPATCH(2),
                "recv_src: row 2 (token 1 of rank 1)");
  EXPECT_CAUGHT((uint8_t *)r[0].recv_x + HAND_H + 5, FLIP, DISPATCH(0),
                "recv_x: row 1 (token 0 of rank 1), channel 5");
  EXPECT_CAUGHT(&r[1].recv_scales[1], FLIP, DISPATCH(1),
                "recv_scales: row 1 (token 0 of rank 1), group 0");
  EXPECT_CAUGHT(&r[2].recv_topk_idx[HAND_K + 1], FLIP, DISPATCH(2),
                "recv_topk_idx: row 1 (token 0 of rank 1), k 1: -65");
  /* -0.0f for a dropped weight: the same value, other bits. */
  EXPECT_CAUGHT((uint8_t *)&r[2].recv_topk_weights[3] + 3, FLIP_SIGN,
                DISPATCH(2),
                "recv_topk_weights: row 0 (token 0 of rank 0), k 3");
  int64_t *idx = r[0].recv_topk_idx;
  r[0].recv_topk_idx = NULL; /* not checked, as after a cached dispatch */
  idx[0] = 7;
  r[0].recv_src[0] = 7;
  struct vmep_ref_report report;
  ASSERT_OK(vmep__ref_ht_check_dispatch(&w.p, 0, &r[0], &report));
  ASSERT_EQ(report.mismatches, 1);
  ((uint8_t *)r[0].recv_x)[3] ^= 1;
  ((uint8_t *)r[0].recv_x)[HAND_H * 2 + 3] ^= 1;
  ASSERT_OK(vmep__ref_ht_check_dispatch(&w.p, 0, &r[0], &report));
  ASSERT_EQ(report.mismatches, 3);
  ASSERT_STR_CONTAINS(report.first, "recv_src: row 0");
  r[0].recv_topk_idx = idx;
  for (int d = 0; d < 3; d++)
    ht_recv_free(&r[d]);
  ht_world_free(&w);
}

/* The combine checker over case A's combine, one value at a time. */
static void test_combine_checker(void) {
  struct ht_world w;
  struct vmep_ref_ht_combine_input in[3];
  uint16_t out[3 * HAND_H];
  float weights[3 * HAND_K];
  hand_world(&w, 0);
  hand_back(A_BACK_X, A_BACK_W, A_RECV, in);
  ASSERT_OK(vmep__ref_ht_combine(&w.p, in, 1, out, weights));
#define COMBINE vmep__ref_ht_check_combine(&w.p, in, 1, out, weights, &report_)
  EXPECT_CAUGHT(&out[HAND_H + 7], FLIP, COMBINE, "out: token 1, channel 7");
  EXPECT_CAUGHT(&weights[2], FLIP, COMBINE, "out_topk_weights: token 0, k 2");
  for (int r = 0; r < 3; r++)
    free((void *)in[r].x);
  ht_world_free(&w);
}

/* Invalid problems and outputs are refused with a message. */
static void test_refusals(void) {
  struct ht_world w;
  struct vmep_ref_ht_recv r;
  int64_t bad;
  hand_world(&w, 0);
  ht_recv_alloc(&w, 3, &r);
  int *fields[] = {&w.p.num_ranks,     &w.p.num_experts, &w.p.top_k,
                   &w.p.top_k,         &w.p.max_tokens,  &w.p.expert_alignment,
                   &w.in[1].num_tokens};
  static const int values[] = {0, 4, 0, VMEP_EP_MAX_TOPK + 1, 0, -1, 4};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(fields); i++) {
    int saved = *fields[i];
    *fields[i] = values[i];
    ASSERT_STATUS(vmep__ref_ht_dispatch(&w.p, 0, &r), VMEP_ERR_INVALID_ARG);
    *fields[i] = saved;
  }
  w.p.use_fp8 = 1;
  w.p.hidden = 100;
  ASSERT_STATUS(vmep__ref_ht_validate(&w.p), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "hidden 100");
  w.p.hidden = HAND_H;
  w.in[0].x_scales = NULL;
  ASSERT_STATUS(vmep__ref_ht_validate(&w.p), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(),
                      "rank 0: 3 tokens (0..3), its x, x_scales");
  w.in[0].x_scales = w.scales[0];
  w.p.use_fp8 = 0;
  ASSERT_STATUS(vmep__ref_ht_dispatch(&w.p, 3, &r), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__ref_ht_bad_experts(&w.p, 0, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__ref_ht_bad_experts(&w.p, -1, &bad), VMEP_ERR_INVALID_ARG);
  r.capacity = -1;
  ASSERT_STATUS(vmep__ref_ht_dispatch(&w.p, 0, &r), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__ref_ht_layout(&w.p, 0, NULL), VMEP_ERR_INVALID_ARG);
  /* Rank 1 contributes to rank 0's token 0, but sends no rows back. */
  struct vmep_ref_ht_combine_input in[3] = {{0}};
  uint16_t rows[3 * HAND_H] = {0}, out[3 * HAND_H];
  in[0].x = in[2].x = rows;
  ASSERT_STATUS(vmep__ref_ht_combine(&w.p, in, 1, out, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 1 contributes to token 0");
  ht_recv_free(&r);
  ht_world_free(&w);
}

int main(void) {
  test_seed("test_reference_ht");
  test_hand_dispatch();
  test_no_weights();
  test_hand_combine();
  test_checkers();
  test_combine_checker();
  test_refusals();
  printf("test_reference_ht: ok\n");
  return 0;
}
