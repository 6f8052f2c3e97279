/*
 * The host reference of dispatch / combine on cases worked out by hand:
 * 2 ranks, 4 experts, H 128, with -1 slots, a token choosing two experts of
 * one rank, all tokens to one expert, a rank sending nothing, a masked
 * rank, invalid ids and a repeated expert. Every count, range, src_info and
 * combined value is written here; case A again reduced at the expert side,
 * and a token whose expert-side partial sum rounds away what the direct
 * sum keeps. Then the inputs the reference refuses.
 */
#include "test_ref_util.h"

/* ---- cases worked out by hand -------------------------------------------- */

/* 2 ranks, 4 experts (2 per rank), H 128, K 2, at most 3 tokens per rank.
 * Token t of rank r is the row +-(4r + t + 1), the sign alternating by
 * channel; expert e multiplies by e + 1 (world_init's factors). */
#define HAND_H 128

struct hand_token {
  int64_t idx[2];
  float weight[2];
};

/* What rank d must receive, and what its own tokens combine to. */
struct hand_rank {
  int count[2];       /* recv_count per local expert */
  int range[2][2][2]; /* [l][source rank] = {begin, count} */
  int src[2][6];      /* src_info of the valid rows of each expert */
  float out[3];       /* combined value of each token (sign: channel's) */
};

static void hand_world(struct world *w, const int tokens[2],
                       const struct hand_token tok[2][3]) {
  world_init(w, 2, 4, 3, HAND_H, 2, tokens);
  for (int r = 0; r < 2; r++)
    for (int t = 0; t < tokens[r]; t++) {
      memcpy(&w->idx[r][t * 2], tok[r][t].idx, sizeof(tok[r][t].idx));
      memcpy(&w->weight[r][t * 2], tok[r][t].weight, sizeof(tok[r][t].weight));
      for (int h = 0; h < HAND_H; h++)
        w->x[r][t * HAND_H + h] =
            vmep__bf16_from_float((h & 1 ? -1.0f : 1.0f) * (4 * r + t + 1));
    }
}

/* Rank d's reference dispatch against the hand-written layout. */
static void check_hand_layout(const struct world *w, int d,
                              const struct vmep_ref_recv *recv,
                              const struct hand_rank *want) {
  for (int l = 0; l < 2; l++) {
    ASSERT_EQ(recv->recv_count[l], want->count[l]);
    for (int r = 0; r < 2; r++) {
      int64_t range = recv->layout_range[l * 2 + r];
      int begin = want->range[l][r][0], count = want->range[l][r][1];
      ASSERT_EQ(vmep__range_begin(range), begin);
      ASSERT_EQ(vmep__range_count(range), count);
      for (int i = begin; i < begin + count; i++) {
        int32_t t = recv->src_info[l * RT_of(w) + i];
        ASSERT_EQ(t, want->src[l][i]);
        const uint16_t *row =
            (const uint16_t *)recv->recv_x + (l * RT_of(w) + i) * HAND_H;
        if (!w->p.use_fp8)
          ASSERT_EQ(memcmp(row, w->x[r] + t * HAND_H, HAND_H * 2), 0);
      }
    }
  }
  expect_clean(check_dispatch(w, d, recv));
}

/* Rank s's combine over the reference layout, over a reshuffled one, and
 * computed directly: all equal to the hand-written values, bit for bit. */
static void check_hand_combine(const struct world *w, int s,
                               const struct vmep_ref_recv *recv,
                               const struct vmep_ref_recv *impl,
                               const uint16_t *const *eo,
                               const uint16_t *const *eo_impl,
                               const struct hand_rank *want) {
  uint16_t out[3 * HAND_H], again[3 * HAND_H];
  struct vmep_ref_report report;
  ASSERT_OK(vmep__ref_combine(&w->p, s, recv, eo, out));
  for (int t = 0; t < w->in[s].num_tokens; t++)
    for (int h = 0; h < HAND_H; h++) {
      float v = want->out[t] == 0 ? 0 : (h & 1 ? -1 : 1) * want->out[t];
      ASSERT_EQ(out[t * HAND_H + h], vmep__bf16_from_float(v));
    }
  size_t bytes = (size_t)w->in[s].num_tokens * HAND_H * 2;
  ASSERT_OK(vmep__ref_combine(&w->p, s, impl, eo_impl, again));
  ASSERT_EQ(memcmp(out, again, bytes), 0);
  direct_combine(w, s, again);
  ASSERT_EQ(memcmp(out, again, bytes), 0);
  ASSERT_OK(vmep__ref_check_combine(&w->p, s, impl, eo_impl, out, &report));
  expect_clean(report);
}

static void check_hand(const struct world *w, const struct hand_rank want[2]) {
  struct vmep_ref_recv recv[2], impl[2];
  uint16_t *eo[2], *eo_impl[2];
  size_t rows = 2 * RT_of(w);
  for (int d = 0; d < 2; d++) {
    recv_alloc(w, &recv[d]);
    recv_alloc(w, &impl[d]);
    eo[d] = malloc(rows * HAND_H * 2);
    eo_impl[d] = malloc(rows * HAND_H * 2);
    ASSERT_TRUE(eo[d] && eo_impl[d]);
    ASSERT_OK(vmep__ref_dispatch(&w->p, d, &recv[d]));
    check_hand_layout(w, d, &recv[d], &want[d]);
    reshuffle(w, &recv[d], &impl[d]);
    expect_clean(check_dispatch(w, d, &impl[d]));
    run_experts(w, d, &recv[d], eo[d]);
    run_experts(w, d, &impl[d], eo_impl[d]);
  }
  for (int s = 0; s < 2; s++)
    check_hand_combine(w, s, recv, impl, (const uint16_t *const *)eo,
                       (const uint16_t *const *)eo_impl, &want[s]);
  for (int d = 0; d < 2; d++) {
    recv_free(&recv[d]);
    recv_free(&impl[d]);
    free(eo[d]);
    free(eo_impl[d]);
  }
}

/* Rank 0: t0 -> experts 1 and 2, t1 -> 3 (and -1), t2 -> 0 (and -1).
 * Rank 1: t0 -> 2 and 3 (both on rank 1), t1 -> nothing, t2 -> 0 and 2.
 * Weights of -1 slots are nonzero, to show they are skipped. */
static const struct hand_token CASE_A[2][3] = {
    {{{1, 2}, {0.5f, 0.25f}}, {{-1, 3}, {9, 0.5f}}, {{0, -1}, {1.5f, 7}}},
    {{{2, 3}, {0.5f, 0.5f}}, {{-1, -1}, {3, 3}}, {{0, 2}, {0.25f, 0.125f}}}};

static void test_hand_basic(void) {
  static const int tokens[2] = {3, 3};
  static const struct hand_rank want[2] = {
      {{2, 1},
       {{{0, 1}, {1, 1}}, {{0, 1}, {1, 0}}},
       {{2, 2}, {0}},
       {0.5f * 2 * 1 + 0.25f * 3 * 1, 0.5f * 4 * 2, 1.5f * 1 * 3}},
      {{3, 2},
       {{{0, 1}, {1, 2}}, {{0, 1}, {1, 1}}},
       {{0, 0, 2}, {1, 0}},
       {0.5f * 3 * 5 + 0.5f * 4 * 5, 0, 0.25f * 1 * 7 + 0.125f * 3 * 7}}};
  struct world w;
  hand_world(&w, tokens, CASE_A);
  check_hand(&w, want);
  check_stats(&w, 0, 4, 0, 0);
  check_stats(&w, 1, 4, 0, 0);
  /* The same layout in fp8, then with power-of-two scales: combine values
   * survive (each row is +-c, which fp8 carries through the scale). */
  w.p.use_fp8 = 1;
  for (w.p.round_scale = 0; w.p.round_scale < 2; w.p.round_scale++)
    check_hand(&w, want);
  /* Reduced at the expert side: rank 1's t0 sums its two experts there
   * (17.5, exact), every other partial is one exact term. */
  w.p.use_fp8 = 0;
  w.p.expert_reduce = 1;
  check_hand(&w, want);
  world_free(&w);
}

/* One token of rank 0 -> experts 2, 3 (rank 1) and 0 (rank 0), rows +-1,
 * expert e scaling by e + 1. Rank 1's partial 0.25 * 3 + (2^-4 + 2^-11) *
 * 4 = 1 + 2^-9 rounds to bf16 1; plus rank 0's 2^-8 * 1 gives 1 + 2^-8, a
 * tie that rounds to even: 1. The direct sum 1 + 3 * 2^-9 rounds to
 * 1 + 2^-7. Each reference gives its own, and the reduced check, exact,
 * refuses the other. */
static void test_reduce_rounding(void) {
  static const int tokens[2] = {1, 0};
  static const int64_t idx[3] = {2, 3, 0};
  static const float weight[3] = {0.25f, 0x1p-4f + 0x1p-11f, 0x1p-8f};
  struct world w;
  struct vmep_ref_recv recv[2];
  uint16_t *eo[2], direct[HAND_H], reduced[HAND_H];
  struct vmep_ref_report report;
  world_init(&w, 2, 4, 1, HAND_H, 3, tokens);
  memcpy(w.idx[0], idx, sizeof(idx));
  memcpy(w.weight[0], weight, sizeof(weight));
  for (int h = 0; h < HAND_H; h++)
    w.x[0][h] = vmep__bf16_from_float(h & 1 ? -1.0f : 1.0f);
  for (int d = 0; d < 2; d++) {
    recv_alloc(&w, &recv[d]);
    eo[d] = malloc(2 * RT_of(&w) * HAND_H * 2);
    ASSERT_TRUE(eo[d] != NULL);
    ASSERT_OK(vmep__ref_dispatch(&w.p, d, &recv[d]));
    run_experts(&w, d, &recv[d], eo[d]);
  }
  const uint16_t *const *eoc = (const uint16_t *const *)eo;
  ASSERT_OK(vmep__ref_combine(&w.p, 0, recv, eoc, direct));
  w.p.expert_reduce = 1;
  ASSERT_OK(vmep__ref_combine(&w.p, 0, recv, eoc, reduced));
  for (int h = 0; h < HAND_H; h++) {
    float sign = h & 1 ? -1.0f : 1.0f;
    ASSERT_EQ(direct[h], vmep__bf16_from_float(sign * (1.0f + 0x1p-7f)));
    ASSERT_EQ(reduced[h], vmep__bf16_from_float(sign));
  }
  ASSERT_OK(vmep__ref_check_combine(&w.p, 0, recv, eoc, reduced, &report));
  expect_clean(report);
  ASSERT_OK(vmep__ref_check_combine(&w.p, 0, recv, eoc, direct, &report));
  ASSERT_EQ(report.mismatches, HAND_H);
  for (int d = 0; d < 2; d++) {
    recv_free(&recv[d]);
    free(eo[d]);
  }
  world_free(&w);
}

/* Case A in fp8: rank 1's expert 2 receives rows c = 1, 5, 7; each group's
 * amax is c, so scale = c / 448 and every code is +-448; with power-of-two
 * scales 2^-8, 2^-6, 2^-6 the codes are +-256, +-320, +-448. */
static void test_hand_fp8(void) {
  static const int tokens[2] = {3, 3};
  static const float c[3] = {1, 5, 7};
  static const float pow2_scale[3] = {0x1p-8f, 0x1p-6f, 0x1p-6f};
  static const uint8_t pow2_code[3] = {0x78, 0x7a, 0x7e};
  struct world w;
  struct vmep_ref_recv recv;
  hand_world(&w, tokens, CASE_A);
  w.p.use_fp8 = 1;
  recv_alloc(&w, &recv);
  for (int round = 0; round < 2; round++) {
    w.p.round_scale = round;
    ASSERT_OK(vmep__ref_dispatch(&w.p, 1, &recv));
    ASSERT_EQ(recv.recv_count[0], 3);
    for (int i = 0; i < 3; i++) {
      float scale = round ? pow2_scale[i] : c[i] / 448.0f;
      uint8_t code = round ? pow2_code[i] : 0x7e;
      ASSERT_EQ(memcmp(&recv.recv_scales[i], &scale, sizeof(float)), 0);
      for (int h = 0; h < HAND_H; h++)
        ASSERT_EQ(((uint8_t *)recv.recv_x)[i * HAND_H + h],
                  code | (h & 1 ? 0x80 : 0));
    }
  }
  recv_free(&recv);
  world_free(&w);
}

/* Every token of both ranks selects expert 3 (rank 1, local 1). */
static void test_hand_one_expert(void) {
  static const int tokens[2] = {3, 3};
  static const struct hand_token all3 = {{3, -1}, {0.5f, 1}};
  static const struct hand_rank want[2] = {
      {{0, 0}, {{{0, 0}, {0, 0}}, {{0, 0}, {0, 0}}}, {{0}}, {2, 4, 6}},
      {{0, 6},
       {{{0, 0}, {0, 0}}, {{0, 3}, {3, 3}}},
       {{0}, {0, 1, 2, 0, 1, 2}},
       {10, 12, 14}}};
  struct hand_token tok[2][3];
  for (int i = 0; i < 6; i++)
    tok[i / 3][i % 3] = all3;
  struct world w;
  hand_world(&w, tokens, (const struct hand_token(*)[3])tok);
  check_hand(&w, want);
  world_free(&w);
}

/* Rank 1 sends nothing; rank 0: t0 -> 0, 1; t1 -> 2, 3; t2 -> 1, 2. */
static void test_hand_empty_rank(void) {
  static const int tokens[2] = {3, 0};
  static const struct hand_token tok[2][3] = {{{{0, 1}, {0.5f, 0.25f}},
                                               {{2, 3}, {0.5f, 0.25f}},
                                               {{1, 2}, {0.5f, 0.25f}}}};
  static const struct hand_rank want[2] = {
      {{1, 2},
       {{{0, 1}, {1, 0}}, {{0, 2}, {2, 0}}},
       {{0}, {0, 2}},
       {0.5f * 1 + 0.25f * 2, 0.5f * 3 * 2 + 0.25f * 4 * 2,
        0.5f * 2 * 3 + 0.25f * 3 * 3}},
      {{2, 1}, {{{0, 2}, {2, 0}}, {{0, 1}, {1, 0}}}, {{1, 2}, {1}}, {0}}};
  struct world w;
  hand_world(&w, tokens, tok);
  check_hand(&w, want);
  check_stats(&w, 1, 0, 0, 0);
  world_free(&w);
}

/* Case A with rank 1 masked: it neither sends nor receives. */
static void test_hand_masked(void) {
  static const int tokens[2] = {3, 3};
  static const struct hand_rank want[2] = {
      {{1, 1},
       {{{0, 1}, {1, 0}}, {{0, 1}, {1, 0}}},
       {{2}, {0}},
       {0.5f * 2 * 1, 0, 1.5f * 1 * 3}},
      {{0, 0}, {{{0, 0}, {0, 0}}, {{0, 0}, {0, 0}}}, {{0}}, {0, 0, 0}}};
  struct world w;
  hand_world(&w, tokens, CASE_A);
  w.masked[1] = 1;
  check_hand(&w, want);
  check_stats(&w, 0, 2, 2, 0);
  check_stats(&w, 1, 0, 4, 0);
  world_free(&w);
}

/* Case A with rank 0's t1 -> {4 (invalid), 3}, rank 1's t1 -> {-2
 * (invalid), 2}: invalid ids are skipped and counted. */
static void test_hand_invalid(void) {
  static const int tokens[2] = {3, 3};
  static const struct hand_rank want[2] = {
      {{2, 1},
       {{{0, 1}, {1, 1}}, {{0, 1}, {1, 0}}},
       {{2, 2}, {0}},
       {1.75f, 4, 4.5f}},
      {{4, 2},
       {{{0, 1}, {1, 3}}, {{0, 1}, {1, 1}}},
       {{0, 0, 1, 2}, {1, 0}},
       {17.5f, 0.5f * 3 * 6, 4.375f}}};
  struct hand_token tok[2][3];
  memcpy(tok, CASE_A, sizeof(tok));
  tok[0][1].idx[0] = 4;
  tok[1][1] = (struct hand_token){{-2, 2}, {3, 0.5f}};
  struct world w;
  hand_world(&w, tokens, (const struct hand_token(*)[3])tok);
  check_hand(&w, want);
  check_stats(&w, 0, 4, 0, 1);
  check_stats(&w, 1, 5, 0, 1);
  world_free(&w);
}

/* Rank 0's t0 lists expert 1 twice: it is received twice and both terms
 * count. Rank 1 has one token. */
static void test_hand_duplicate(void) {
  static const int tokens[2] = {3, 1};
  static const struct hand_token tok[2][3] = {
      {{{1, 1}, {0.5f, 0.25f}}, {{3, 0}, {0.5f, 0.25f}}, {{-1, -1}, {2, 2}}},
      {{{1, 2}, {0.5f, 0.25f}}}};
  static const struct hand_rank want[2] = {
      {{1, 3},
       {{{0, 1}, {1, 0}}, {{0, 2}, {2, 1}}},
       {{1}, {0, 0, 0}},
       {(0.5f + 0.25f) * 2 * 1, 0.5f * 4 * 2 + 0.25f * 1 * 2, 0}},
      {{1, 1},
       {{{0, 0}, {0, 1}}, {{0, 1}, {1, 0}}},
       {{0}, {1}},
       {0.5f * 2 * 5 + 0.25f * 3 * 5}}};
  struct world w;
  hand_world(&w, tokens, tok);
  check_hand(&w, want);
  world_free(&w);
}

/* Invalid problems and outputs are refused with a message, never read. */
static void test_refusals(void) {
  static const int tokens[2] = {3, 3};
  struct world w;
  struct vmep_ref_recv recv[2];
  struct vmep_ref_report report;
  uint16_t out[3 * HAND_H], *eo[2];
  hand_world(&w, tokens, CASE_A);
  recv_alloc(&w, &recv[0]);
  recv_alloc(&w, &recv[1]);
  struct vmep_ref_problem good = w.p;
  int *fields[] = {&w.p.num_experts, &w.p.top_k, &w.p.top_k, &w.p.max_tokens,
                   &w.in[1].num_tokens};
  static const int values[] = {3, 0, VMEP_EP_MAX_TOPK + 1, 0, 4};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(fields); i++) {
    int saved = *fields[i];
    *fields[i] = values[i];
    ASSERT_STATUS(vmep__ref_dispatch(&w.p, 0, &recv[0]), VMEP_ERR_INVALID_ARG);
    *fields[i] = saved;
  }
  w.p.use_fp8 = 1;
  w.p.hidden = 100;
  ASSERT_STATUS(vmep__ref_dispatch(&w.p, 0, &recv[0]), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "hidden 100");
  w.p = good;
  ASSERT_STATUS(vmep__ref_dispatch(&w.p, 2, &recv[0]), VMEP_ERR_INVALID_ARG);
  for (int d = 0; d < 2; d++) {
    ASSERT_OK(vmep__ref_dispatch(&w.p, d, &recv[d]));
    eo[d] = malloc(2 * RT_of(&w) * HAND_H * 2);
    ASSERT_TRUE(eo[d] != NULL);
    run_experts(&w, d, &recv[d], eo[d]);
  }
  /* Rank 1 loses rank 0's row of expert 2: rank 0's t0 finds no row. */
  recv[1].layout_range[0] = vmep__range_pack(0, 0);
  ASSERT_STATUS(
      vmep__ref_combine(&w.p, 0, recv, (const uint16_t *const *)eo, out),
      VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "no row for token 0 of rank 0");
  w.in[0].topk_weights = NULL;
  ASSERT_STATUS(vmep__ref_check_combine(
                    &w.p, 0, recv, (const uint16_t *const *)eo, out, &report),
                VMEP_ERR_INVALID_ARG);
  void *x = recv[1].recv_x;
  recv[1].recv_x = NULL;
  ASSERT_STATUS(vmep__ref_check_dispatch(&w.p, 1, &recv[1], &report),
                VMEP_ERR_INVALID_ARG);
  recv[1].recv_x = x;
  for (int d = 0; d < 2; d++) {
    free(eo[d]);
    recv_free(&recv[d]);
  }
  world_free(&w);
}

/* One rank, one expert, one token that lists the expert twice: two rows
 * for an expert that holds R * T = 1 are refused. */
static void test_capacity(void) {
  static const int tokens[1] = {1};
  struct world w;
  struct vmep_ref_recv recv;
  world_init(&w, 1, 1, 1, HAND_H, 2, tokens);
  w.idx[0][0] = w.idx[0][1] = 0;
  recv_alloc(&w, &recv);
  ASSERT_STATUS(vmep__ref_dispatch(&w.p, 0, &recv), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "more than 1 rows");
  recv_free(&recv);
  world_free(&w);
}

/* ---- fp8 scale layouts -----------------------------------------------------
 */

/* Random bf16 rows and two distinct experts per token, 2 ranks x 3 tokens,
 * 4 experts, H 512 (four UE8M0 groups). */
static void scale_world(struct world *w) {
  static const int tokens[2] = {3, 3};
  world_init(w, 2, 4, 3, 512, 2, tokens);
  w->p.use_fp8 = 1;
  for (int r = 0; r < 2; r++)
    for (int t = 0; t < 3; t++) {
      int64_t e = (int64_t)(test_rand() % 4);
      w->idx[r][t * 2] = e;
      w->idx[r][t * 2 + 1] = (e + 1 + (int64_t)(test_rand() % 3)) % 4;
      for (int h = 0; h < 512; h++)
        w->x[r][t * 512 + h] = vmep__bf16_from_float(
            (float)((int)(test_rand() % 2001) - 1000) / 64.0f);
    }
}

/* The scales of a COL_MAJOR or UE8M0 dispatch sit where vmep.h says, with
 * the row-major dispatch's values; the checker accepts them and catches one
 * changed scale. */
static void check_scale_layout(struct world *w, int layout, int round) {
  struct vmep_ref_recv row_major, laid;
  const size_t G = 4, RT = RT_of(w);
  recv_alloc(w, &row_major);
  recv_alloc(w, &laid);
  w->p.round_scale = round;
  for (int d = 0; d < 2; d++) {
    struct vmep_ref_report rep;
    w->p.scale_layout = VMEP_EP_SCALES_ROW_MAJOR;
    ASSERT_OK(vmep__ref_dispatch(&w->p, d, &row_major));
    w->p.scale_layout = layout;
    ASSERT_OK(vmep__ref_dispatch(&w->p, d, &laid));
    for (size_t l = 0; l < 2; l++)
      for (size_t i = 0; i < (size_t)laid.recv_count[l]; i++)
        for (size_t g = 0; g < G; g++) {
          float want = row_major.recv_scales[(l * RT + i) * G + g];
          uint32_t bits;
          memcpy(&bits, &want, sizeof(bits));
          if (layout == VMEP_EP_SCALES_COL_MAJOR)
            ASSERT_EQ(memcmp(&laid.recv_scales[(l * G + g) * RT + i], &want,
                             sizeof(float)),
                      0);
          else
            ASSERT_EQ(((const uint8_t *)laid.recv_scales)[(l * RT + i) * 4 + g],
                      bits >> 23); /* one word per row: G / 4 == 1 */
          float got =
              vmep__ref_scale_load(&w->p, laid.recv_scales, l * RT + i, g);
          ASSERT_EQ(memcmp(&got, &want, sizeof(float)), 0);
        }
    ASSERT_OK(vmep__ref_check_dispatch(&w->p, d, &laid, &rep));
    ASSERT_EQ(rep.mismatches, 0);
    if (laid.recv_count[0] > 0) {
      float changed = 2 * vmep__ref_scale_load(&w->p, laid.recv_scales, 0, 1);
      vmep__ref_scale_store(&w->p, laid.recv_scales, 0, 1, changed);
      ASSERT_OK(vmep__ref_check_dispatch(&w->p, d, &laid, &rep));
      ASSERT_EQ(rep.mismatches, 1);
      ASSERT_STR_CONTAINS(rep.first, "scale 1");
    }
  }
  recv_free(&laid);
  recv_free(&row_major);
}

static void test_scale_layouts(void) {
  struct world w;
  scale_world(&w);
  check_scale_layout(&w, VMEP_EP_SCALES_COL_MAJOR, 0);
  check_scale_layout(&w, VMEP_EP_SCALES_COL_MAJOR, 1);
  check_scale_layout(&w, VMEP_EP_SCALES_UE8M0, 1);
  /* UE8M0 needs power-of-two scales and whole words of four groups. */
  w.p.scale_layout = VMEP_EP_SCALES_UE8M0;
  w.p.round_scale = 0;
  ASSERT_STATUS(vmep__ref_validate(&w.p, 0), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "UE8M0");
  w.p.round_scale = 1;
  w.p.hidden = 384;
  ASSERT_STATUS(vmep__ref_validate(&w.p, 0), VMEP_ERR_INVALID_ARG);
  w.p.hidden = 512;
  w.p.scale_layout = 3;
  ASSERT_STATUS(vmep__ref_validate(&w.p, 0), VMEP_ERR_INVALID_ARG);
  world_free(&w);
}

int main(void) {
  test_seed("test_reference");
  test_scale_layouts();
  test_hand_basic();
  test_reduce_rounding();
  test_hand_fp8();
  test_hand_one_expert();
  test_hand_empty_rank();
  test_hand_masked();
  test_hand_invalid();
  test_hand_duplicate();
  test_refusals();
  test_capacity();
  printf("test_reference: ok\n");
  return 0;
}
