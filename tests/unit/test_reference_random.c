/*
 * The checkers of dispatch and combine on random cases (1 to 8 ranks, bf16
 * and fp8, masked ranks, invalid ids, empty ranks): the reference's output
 * and a reshuffled but valid layout must pass, a combine summed in another
 * order must pass, and each single corruption (a row, a scale, a count, a
 * src_info, a range, a combine value 2 ulp off) must be caught: proof that
 * the checkers can fail.
 */
#include "test_ref_util.h"

/* ---- random worlds ---------------------------------------------------------
 */

/* How often each corruption was tried; each must be, at least once. */
static int corrupted_rows, corrupted_scales, corrupted_counts,
    corrupted_src_infos, corrupted_ranges, corrupted_overlaps, corrupted_holes,
    corrupted_combines;

/* Token t of rank r: K distinct experts, some slots -1, a few invalid. */
static void random_token(struct world *w, int r, int t) {
  int E = w->p.num_experts, K = w->p.top_k, experts[MAX_EXPERTS];
  for (int e = 0; e < E; e++)
    experts[e] = e;
  shuffle(experts, E);
  for (int k = 0; k < K; k++)
    random_slot(experts[k], E, w->idx[r], w->weight[r], (size_t)(t * K + k));
}

static void random_world(struct world *w) {
  static const int rank_counts[] = {1, 2, 3, 4, 8};
  int R = rank_counts[test_rand() % 5], L = 1 + (int)(test_rand() % 3);
  int E = R * L, T = 1 + (int)(test_rand() % 40), fp8 = test_rand() & 1;
  int H = fp8 ? VMEP_FP8_GROUP * (1 + (int)(test_rand() % 2))
              : 8 + (int)(test_rand() % 200);
  int K = 1 + (int)(test_rand() % (uint64_t)(E < 16 ? E : 16));
  int tokens[MAX_RANKS];
  for (int r = 0; r < R; r++)
    tokens[r] = test_rand() % 4 ? (int)(test_rand() % (T + 1))
                                : (int)(test_rand() & 1) * T;
  world_init(w, R, E, T, H, K, tokens);
  w->p.use_fp8 = fp8;
  w->p.round_scale = test_rand() & 1;
  if (R > 1 && test_rand() % 3 == 0)
    w->masked[test_rand() % R] = 1;
  for (int e = 0; e < E; e++)
    w->factor[e] = (float)(32 + test_rand() % 96) / 64.0f;
  for (int r = 0; r < R; r++)
    for (int t = 0; t < tokens[r]; t++) {
      random_token(w, r, t);
      for (int h = 0; h < H; h++)
        w->x[r][t * H + h] = random_value();
    }
  /* One live rank's token 0 selects one of its own experts, alone: its
   * combine is one product, where 1 ulp passes and 2 must not. */
  for (int r = 0; r < R && w->single_rank < 0; r++)
    if (tokens[r] > 0 && !w->masked[r]) {
      w->single_rank = r;
      for (int k = 0; k < K; k++)
        w->idx[r][k] = k == 0 ? r * L + (int)(test_rand() % L) : -1;
    }
}

/* A row of expert l, the range it lies in, and its source rank. */
struct row_pick {
  int l, src;
  uint32_t row; /* within the expert */
};

static int pick_row(const struct world *w, const struct vmep_ref_recv *r,
                    struct row_pick *pick) {
  int L = L_of(w), start = (int)(test_rand() % L);
  for (int j = 0; j < L; j++) {
    int l = (start + j) % L;
    if (r->recv_count[l] == 0)
      continue;
    pick->l = l;
    pick->row = (uint32_t)(test_rand() % r->recv_count[l]);
    pick->src = -1;
    for (int src = 0; src < w->p.num_ranks; src++) {
      int64_t range = r->layout_range[l * w->p.num_ranks + src];
      if (pick->row - vmep__range_begin(range) < vmep__range_count(range))
        pick->src = src;
    }
    ASSERT_TRUE(pick->src >= 0);
    return 1;
  }
  return 0;
}

/* Runs the dispatch checker over impl; a NULL `what` accepts any text. */
static void expect_caught_any(const struct world *w, int d,
                              const struct vmep_ref_recv *impl,
                              const char *what, int *tally) {
  struct vmep_ref_report report = check_dispatch(w, d, impl);
  expect_caught(report, what ? what : "");
  (*tally)++;
}

/* One bit of one channel of the row, then one bit of one of its scales. */
static void corrupt_row(const struct world *w, int d,
                        struct vmep_ref_recv *impl, size_t at) {
  size_t H = (size_t)w->p.hidden, h = test_rand() % H;
  size_t width = w->p.use_fp8 ? 1 : 2; /* bytes per channel */
  uint8_t *byte =
      (uint8_t *)impl->recv_x + (at * H + h) * width + test_rand() % width;
  uint8_t saved_byte = *byte;
  *byte ^= (uint8_t)(1u << (test_rand() % 8));
  expect_caught_any(w, d, impl, "channel", &corrupted_rows);
  *byte = saved_byte;
  if (w->p.use_fp8) {
    /* The scale's lowest mantissa bit: one fp32 ulp. */
    uint8_t *scale =
        (uint8_t *)&impl
            ->recv_scales[at * (H / VMEP_FP8_GROUP) + h / VMEP_FP8_GROUP];
    *scale ^= 1;
    expect_caught_any(w, d, impl, "scale", &corrupted_scales);
    *scale ^= 1;
  }
}

/* The row claims another token of its rank (or one it does not have), and
 * carries that token's data, as a kernel that sent the wrong token would:
 * only the src_info check can see it. */
static void corrupt_src_info(const struct world *w, int d,
                             struct vmep_ref_recv *impl,
                             const struct row_pick *pk, size_t at) {
  size_t H = (size_t)w->p.hidden, groups = H / VMEP_FP8_GROUP;
  size_t bytes = H * (w->p.use_fp8 ? 1 : 2);
  int tokens = w->in[pk->src].num_tokens;
  int32_t *src = &impl->src_info[at], saved_src = *src;
  uint8_t *row = (uint8_t *)impl->recv_x + at * bytes, saved_row[1024];
  float *scales = impl->recv_scales + at * groups, saved_scales[2];
  ASSERT_TRUE(bytes <= sizeof(saved_row) && groups <= 2);
  memcpy(saved_row, row, bytes);
  if (w->p.use_fp8)
    memcpy(saved_scales, scales, groups * sizeof(float));
  *src = (saved_src + 1 + (int)(test_rand() % tokens)) % (tokens + 1);
  if (*src < tokens) {
    const uint16_t *x = w->x[pk->src] + (size_t)*src * H;
    if (w->p.use_fp8)
      vmep__fp8_quantize_row(x, (int)H, w->p.round_scale, row, scales);
    else
      memcpy(row, x, bytes);
  }
  expect_caught_any(w, d, impl, "token", &corrupted_src_infos);
  *src = saved_src;
  memcpy(row, saved_row, bytes);
  if (w->p.use_fp8)
    memcpy(scales, saved_scales, groups * sizeof(float));
}

/* The row's range one row too long, then one row later, then, when the
 * expert has another nonempty range from a lower rank, on top of it. */
static void corrupt_range(const struct world *w, int d,
                          struct vmep_ref_recv *impl,
                          const struct row_pick *pk) {
  int64_t *ranges = &impl->layout_range[pk->l * w->p.num_ranks];
  int64_t saved = ranges[pk->src];
  uint32_t begin = vmep__range_begin(saved), rows = vmep__range_count(saved);
  ranges[pk->src] = vmep__range_pack(begin, rows + 1);
  expect_caught_any(w, d, impl, "range", &corrupted_ranges);
  ranges[pk->src] = vmep__range_pack(begin + 1, rows);
  expect_caught_any(w, d, impl, NULL, &corrupted_ranges);
  for (int a = 0; a < pk->src; a++) {
    uint32_t other = vmep__range_begin(ranges[a]);
    if (vmep__range_count(ranges[a]) == 0 ||
        other + rows > (uint32_t)impl->recv_count[pk->l])
      continue;
    ranges[pk->src] = vmep__range_pack(other, rows);
    expect_caught_any(w, d, impl, "share row", &corrupted_overlaps);
    break;
  }
  ranges[pk->src] = saved;
}

/* The range that ends at recv_count moves one row up with its rows: each
 * row is right, but row recv_count falls outside the valid rows and a hole
 * opens below. Only the bounds check can see it. */
static void corrupt_hole(const struct world *w, int d,
                         struct vmep_ref_recv *impl, int l,
                         struct vmep_ref_recv *scratch) {
  size_t RT = RT_of(w), base = (size_t)l * RT;
  uint32_t valid = (uint32_t)impl->recv_count[l];
  int64_t *ranges = &impl->layout_range[l * w->p.num_ranks];
  for (int src = 0; valid < RT && src < w->p.num_ranks; src++) {
    uint32_t begin = vmep__range_begin(ranges[src]);
    uint32_t rows = vmep__range_count(ranges[src]);
    if (rows == 0 || begin + rows != valid)
      continue;
    for (uint32_t i = begin; i <= valid; i++)
      copy_recv_row(w, impl, base + i, scratch, base + i);
    for (uint32_t i = begin; i < valid; i++)
      copy_recv_row(w, scratch, base + i, impl, base + i + 1);
    ranges[src] = vmep__range_pack(begin + 1, rows);
    expect_caught_any(w, d, impl, "exceeds recv_count", &corrupted_holes);
    ranges[src] = vmep__range_pack(begin, rows);
    for (uint32_t i = begin; i <= valid; i++)
      copy_recv_row(w, scratch, base + i, impl, base + i);
  }
}

/* Each corruption alone, on one random valid row, then undone. */
static void corrupt_dispatch(const struct world *w, int d,
                             struct vmep_ref_recv *impl,
                             struct vmep_ref_recv *scratch) {
  struct row_pick pk;
  if (!pick_row(w, impl, &pk))
    return;
  size_t RT = RT_of(w), at = pk.l * RT + pk.row;
  corrupt_row(w, d, impl, at);
  int32_t *count = &impl->recv_count[pk.l], saved_count = *count;
  *count += *count == (int32_t)RT ? -1 : 1;
  expect_caught_any(w, d, impl, "recv_count", &corrupted_counts);
  *count = saved_count;
  corrupt_src_info(w, d, impl, &pk, at);
  corrupt_range(w, d, impl, &pk);
  corrupt_hole(w, d, impl, pk.l, scratch);
  expect_clean(check_dispatch(w, d, impl));
}

/* One output channel of the single-selection token, 1 ulp off (passes)
 * and 2 ulp off (caught). */
static void corrupt_combine(const struct world *w, int s,
                            const struct vmep_ref_recv *impl,
                            const uint16_t *const *eo, uint16_t *out) {
  struct vmep_ref_report report;
  size_t h = test_rand() % (size_t)w->p.hidden;
  uint16_t saved = out[h];
  out[h] = (uint16_t)(saved + 1);
  ASSERT_OK(vmep__ref_check_combine(&w->p, s, impl, eo, out, &report));
  expect_clean(report);
  out[h] = (uint16_t)(saved + 2);
  ASSERT_OK(vmep__ref_check_combine(&w->p, s, impl, eo, out, &report));
  expect_caught(report, "token 0 channel");
  out[h] = saved;
  corrupted_combines++;
}

static void random_combine(const struct world *w, int s,
                           const struct vmep_ref_recv *ref,
                           const struct vmep_ref_recv *impl,
                           const uint16_t *const *eo,
                           const uint16_t *const *eo_impl) {
  size_t bytes = ((size_t)w->in[s].num_tokens * w->p.hidden + 1) * 2;
  uint16_t *out = malloc(bytes), *again = malloc(bytes);
  struct vmep_ref_report report;
  ASSERT_TRUE(out && again);
  /* The same sums over either layout: combine follows the layout given. */
  ASSERT_OK(vmep__ref_combine(&w->p, s, ref, eo, out));
  ASSERT_OK(vmep__ref_combine(&w->p, s, impl, eo_impl, again));
  ASSERT_EQ(memcmp(out, again, bytes - 2), 0);
  direct_combine(w, s, again);
  ASSERT_OK(vmep__ref_check_combine(&w->p, s, impl, eo_impl, again, &report));
  expect_clean(report);
  if (s == w->single_rank)
    corrupt_combine(w, s, impl, eo_impl, again);
  free(again);
  free(out);
}

/* Rank s's selections counted here, against vmep__ref_send_stats. */
static void random_stats(const struct world *w, int s) {
  int64_t sent = 0, masked = 0, invalid = 0;
  for (size_t i = 0; i < (size_t)w->in[s].num_tokens * w->p.top_k; i++) {
    int64_t e = w->idx[s][i];
    if (e == -1)
      continue;
    if (e < -1 || e >= w->p.num_experts)
      invalid++;
    else if (w->masked[s] || w->masked[e / L_of(w)])
      masked++;
    else
      sent++;
  }
  check_stats(w, s, sent, masked, invalid);
}

static void random_case(void) {
  struct world w;
  struct vmep_ref_recv ref[MAX_RANKS], impl[MAX_RANKS], scratch;
  uint16_t *eo[MAX_RANKS], *eo_impl[MAX_RANKS];
  random_world(&w);
  recv_alloc(&w, &scratch);
  size_t eo_bytes = (size_t)L_of(&w) * RT_of(&w) * w.p.hidden * 2;
  for (int d = 0; d < w.p.num_ranks; d++) {
    recv_alloc(&w, &ref[d]);
    recv_alloc(&w, &impl[d]);
    eo[d] = malloc(eo_bytes);
    eo_impl[d] = malloc(eo_bytes);
    ASSERT_TRUE(eo[d] && eo_impl[d]);
    ASSERT_OK(vmep__ref_dispatch(&w.p, d, &ref[d]));
    expect_clean(check_dispatch(&w, d, &ref[d]));
    reshuffle(&w, &ref[d], &impl[d]);
    expect_clean(check_dispatch(&w, d, &impl[d]));
    corrupt_dispatch(&w, d, &impl[d], &scratch);
    run_experts(&w, d, &ref[d], eo[d]);
    run_experts(&w, d, &impl[d], eo_impl[d]);
  }
  for (int s = 0; s < w.p.num_ranks; s++) {
    random_stats(&w, s);
    random_combine(&w, s, ref, impl, (const uint16_t *const *)eo,
                   (const uint16_t *const *)eo_impl);
  }
  for (int d = 0; d < w.p.num_ranks; d++) {
    recv_free(&ref[d]);
    recv_free(&impl[d]);
    free(eo[d]);
    free(eo_impl[d]);
  }
  recv_free(&scratch);
  world_free(&w);
}

int main(void) {
  test_seed("test_reference_random");
  for (int i = 0; i < 300; i++)
    random_case();
  printf("corruptions caught: %d rows, %d scales, %d counts, %d src_info, "
         "%d ranges, %d overlaps, %d holes; %d combine values\n",
         corrupted_rows, corrupted_scales, corrupted_counts,
         corrupted_src_infos, corrupted_ranges, corrupted_overlaps,
         corrupted_holes, corrupted_combines);
  ASSERT_TRUE(corrupted_rows > 0 && corrupted_scales > 0 &&
              corrupted_counts > 0 && corrupted_src_infos > 0 &&
              corrupted_ranges > 0 && corrupted_overlaps > 0 &&
              corrupted_holes > 0 && corrupted_combines > 0);
  printf("test_reference_random: ok\n");
  return 0;
}
