/*
 * Properties of the high-throughput reference on random cases (1 to 8
 * ranks, bf16 and fp8, masked ranks, invalid and repeated ids, empty
 * ranks, expert alignment), each computed here a second way from the
 * layout or the tokens alone: the rows every rank receives add up to the
 * tokens every rank sends; each row is where its recv_src says, carries
 * its source's data and ids, and follows the (source, token) order; the
 * expert counts are the layouts' per-expert counts, rounded up; a smaller
 * capacity keeps the first rows and writes nothing past them; and
 * combining what was received gives each token back times its number of
 * contributing ranks (plus its biases), with its weights. The reference's
 * outputs pass the checkers, and one flipped bit anywhere is caught.
 */
#include "test_ref_ht_util.h"

static int flipped;

/* Token t of rank r: random experts (skewed: rank 0's), repeats allowed,
 * with random_slot's -1 and invalid ids. */
static void random_token(struct ht_world *w, int r, int t, int skew) {
  int E = w->p.num_experts, K = w->p.top_k;
  for (int k = 0; k < K; k++) {
    uint64_t pick = test_rand() % (uint64_t)(skew ? ht_L(w) : E);
    random_slot((int64_t)pick, E, w->idx[r], w->weight[r], (size_t)(t * K + k));
  }
}

static void random_world(struct ht_world *w) {
  static const int rank_counts[] = {1, 2, 3, 4, 8};
  int R = rank_counts[test_rand() % 5], L = 1 + (int)(test_rand() % 3);
  int E = R * L, T = 1 + (int)(test_rand() % 40), fp8 = test_rand() & 1;
  int H = fp8 ? VMEP_FP8_GROUP * (1 + (int)(test_rand() % 2))
              : 8 + (int)(test_rand() % 200);
  int K = 1 + (int)(test_rand() % 8), skew = test_rand() % 4 == 0;
  int tokens[MAX_RANKS];
  for (int r = 0; r < R; r++)
    tokens[r] = test_rand() % 4 ? (int)(test_rand() % (T + 1))
                                : (int)(test_rand() & 1) * T;
  ht_world_init(w, R, E, T, H, K, fp8, tokens);
  w->p.expert_alignment = (int)(test_rand() % 5);
  if (R > 1 && test_rand() % 3 == 0)
    w->masked[test_rand() % R] = 1;
  if (test_rand() % 5 == 0)
    w->in[test_rand() % R].topk_weights = NULL;
  for (int r = 0; r < R; r++)
    for (int t = 0; t < tokens[r]; t++) {
      random_token(w, r, t, skew);
      for (int h = 0; h < H; h++) {
        uint16_t v = random_value();
        if (fp8) /* any code: fp8 rows pass through as bytes */
          w->x[r][t * H + h] = (uint8_t)(1 + test_rand() % 255);
        else
          memcpy(&w->x[r][(t * H + h) * 2], &v, 2);
      }
      for (size_t g = 0; g < ht_groups(w); g++)
        w->scales[r][t * ht_groups(w) + g] =
            (float)(1 + test_rand() % 4096) / 512.0f;
    }
}

/* ---- dispatch against the layouts ---------------------------------------- */

/* Every rank's layout, and the counts they imply. */
struct layouts {
  int32_t per_rank[MAX_RANKS][MAX_RANKS];
  int32_t per_expert[MAX_RANKS][MAX_EXPERTS];
  uint8_t *in_rank[MAX_RANKS];
};

static void all_layouts(const struct ht_world *w, struct layouts *lay) {
  for (int s = 0; s < w->p.num_ranks; s++) {
    lay->in_rank[s] = malloc((size_t)w->in[s].num_tokens * w->p.num_ranks + 1);
    ASSERT_TRUE(lay->in_rank[s] != NULL);
    struct vmep_ref_ht_layout out = {lay->per_rank[s], lay->per_expert[s],
                                     lay->in_rank[s]};
    struct vmep_ref_report report;
    ASSERT_OK(vmep__ref_ht_layout(&w->p, s, &out));
    ASSERT_OK(vmep__ref_ht_check_layout(&w->p, s, &out, &report));
    expect_clean(report);
  }
}

static int live(const struct ht_world *w, int r) { return !w->masked[r]; }

/* Row i of rank d: its recv_src names a token of a live source that has an
 * expert on d first at slot j, after the row before it; the row carries
 * that token's data, its ids of d's experts and their weights. */
static void check_row(const struct ht_world *w, int d,
                      const struct vmep_ref_ht_recv *r, int i, uint32_t *last) {
  uint32_t src = (uint32_t)r->recv_src[i];
  int t = (int)(src >> 16), s = (int)(src >> 5 & 0x7ff), j = (int)(src & 31);
  int K = w->p.top_k, L = ht_L(w);
  ASSERT_TRUE(s < w->p.num_ranks && live(w, s) && t < w->in[s].num_tokens);
  ASSERT_TRUE(i == 0 || ((uint32_t)s << 16 | (uint32_t)t) > *last);
  *last = (uint32_t)s << 16 | (uint32_t)t;
  size_t bytes = ht_row_bytes(w), G = ht_groups(w);
  ASSERT_EQ(memcmp((uint8_t *)r->recv_x + (size_t)i * bytes,
                   w->x[s] + (size_t)t * bytes, bytes),
            0);
  if (w->p.use_fp8)
    ASSERT_EQ(memcmp(r->recv_scales + (size_t)i * G, w->scales[s] + t * G,
                     G * sizeof(float)),
              0);
  int first = -1;
  for (int k = 0; k < K; k++) {
    int64_t e = w->idx[s][t * K + k], got = r->recv_topk_idx[i * K + k];
    int ours = e >= 0 && e < w->p.num_experts && e / L == d;
    if (ours && first < 0)
      first = k;
    ASSERT_EQ(got, ours ? e % L : -1);
    float want = ours && w->in[s].topk_weights ? w->weight[s][t * K + k] : 0;
    ASSERT_EQ(memcmp(&r->recv_topk_weights[i * K + k], &want, 4), 0);
  }
  ASSERT_EQ(j, first);
}

/* Rank d's rows against the layouts: per source, as many rows as the
 * source's tokens_per_rank[d]; per expert, the sources' tokens_per_expert,
 * then aligned. Returns N. */
static int check_recv(const struct ht_world *w, const struct layouts *lay,
                      int d, const struct vmep_ref_ht_recv *r) {
  int R = w->p.num_ranks, L = ht_L(w), rows = 0, align = w->p.expert_alignment;
  uint32_t last = 0;
  for (int i = 0; i < *r->num_recv; i++)
    check_row(w, d, r, i, &last);
  for (int s = 0; s < R; s++)
    rows += live(w, s) && live(w, d) ? lay->per_rank[s][d] : 0;
  ASSERT_EQ(*r->num_recv, rows);
  for (int l = 0; l < L; l++) {
    int32_t count = 0;
    for (int s = 0; s < R; s++)
      count += live(w, s) && live(w, d) ? lay->per_expert[s][d * L + l] : 0;
    if (align > 1)
      count = (count + align - 1) / align * align;
    ASSERT_EQ(r->recv_expert_count[l], count);
  }
  return rows;
}

/* A capacity below N: the first rows and all counts as before, nothing
 * written past the capacity. */
static void check_overflow(const struct ht_world *w, int d,
                           const struct vmep_ref_ht_recv *full) {
  int n = *full->num_recv, cap = (int)(test_rand() % (uint64_t)n);
  struct vmep_ref_ht_recv r;
  size_t K = (size_t)w->p.top_k, bytes = ht_row_bytes(w);
  ht_recv_alloc(w, cap, &r);
  ASSERT_OK(vmep__ref_ht_dispatch(&w->p, d, &r));
  ASSERT_EQ(*r.num_recv, n);
  ASSERT_EQ(
      memcmp(r.recv_expert_count, full->recv_expert_count, (size_t)ht_L(w) * 4),
      0);
  ASSERT_EQ(memcmp(r.recv_src, full->recv_src, (size_t)cap * 4), 0);
  ASSERT_EQ(memcmp(r.recv_x, full->recv_x, (size_t)cap * bytes), 0);
  ASSERT_EQ(memcmp(r.recv_topk_idx, full->recv_topk_idx, cap * K * 8), 0);
  ASSERT_EQ(r.recv_src[cap], (int32_t)0xa5a5a5a5);
  ASSERT_EQ(((uint8_t *)r.recv_x)[(size_t)cap * bytes], 0xa5);
  ASSERT_EQ(((uint8_t *)r.recv_topk_weights)[cap * K * 4], 0xa5);
  ht_expect_dispatch_clean(w, d, &r);
  ht_recv_free(&r);
}

/* One random bit of one random element of a random array, caught. */
static void check_flip(const struct ht_world *w, int d,
                       struct vmep_ref_ht_recv *r) {
  int n = *r->num_recv, K = w->p.top_k;
  if (n == 0)
    return;
  size_t i = test_rand() % (size_t)n;
  uint8_t *at[] = {
      (uint8_t *)r->recv_x + i * ht_row_bytes(w) +
          test_rand() % ht_row_bytes(w),
      (uint8_t *)&r->recv_src[i] + test_rand() % 4,
      (uint8_t *)&r->recv_topk_idx[i * K + test_rand() % K] + test_rand() % 8,
      (uint8_t *)&r->recv_topk_weights[i * K + test_rand() % K] +
          test_rand() % 4,
      (uint8_t *)&r->recv_expert_count[test_rand() % ht_L(w)] + test_rand() % 4,
      (uint8_t *)&r->recv_scales[i * ht_groups(w)] + test_rand() % 4};
  size_t pick = test_rand() % (VMEP_ARRAY_SIZE(at) - !w->p.use_fp8);
  uint8_t bit = (uint8_t)(1u << (test_rand() % 8));
  struct vmep_ref_report report;
  *at[pick] ^= bit;
  ASSERT_OK(vmep__ref_ht_check_dispatch(&w->p, d, r, &report));
  ASSERT_EQ(report.mismatches, 1);
  *at[pick] ^= bit;
  flipped++;
}

/* ---- combine: what was received, sent back ------------------------------- */

/* Live ranks that hold an expert of token t of rank s. */
static int contributing(const struct ht_world *w, const struct layouts *lay,
                        int s, int t) {
  int count = 0;
  for (int r = 0; r < w->p.num_ranks && live(w, s); r++)
    count += live(w, r) && lay->in_rank[s][t * w->p.num_ranks + r];
  return count;
}

/* Each rank sends back exactly what it received (bf16) and the weights it
 * received: token t comes back as c copies of x added (exact in fp32 for
 * c <= 8 and any order, unlike the general case), + bias0 + bias1, c its
 * contributing ranks by its layout; its weights as they were where the
 * expert was reached, else 0. */
static void check_identity(const struct ht_world *w, const struct layouts *lay,
                           const struct vmep_ref_ht_recv *recv, int s) {
  int n = w->in[s].num_tokens, H = w->p.hidden, K = w->p.top_k;
  struct vmep_ref_ht_combine_input in[MAX_RANKS];
  uint16_t *out = malloc(((size_t)n * H + 1) * 2);
  uint16_t *bias = malloc(((size_t)n * H + 1) * 2);
  float *weights = malloc(((size_t)n * K + 1) * 4);
  ASSERT_TRUE(out && bias && weights);
  for (size_t i = 0; i < (size_t)n * H; i++)
    bias[i] = random_value();
  for (int r = 0; r < w->p.num_ranks; r++)
    in[r] = (struct vmep_ref_ht_combine_input){
        recv[r].recv_x, recv[r].recv_topk_weights, NULL, NULL};
  int biased = test_rand() % 3;
  in[s].bias0 = biased > 0 ? bias : NULL;
  in[s].bias1 = biased > 1 ? bias : NULL;
  ASSERT_OK(vmep__ref_ht_combine(&w->p, in, s, out, weights));
  const uint16_t *x = (const uint16_t *)w->x[s];
  for (int t = 0; t < n; t++) {
    int c = contributing(w, lay, s, t);
    for (int h = 0; h < H; h++) {
      size_t at = (size_t)t * H + h;
      float b = vmep__bf16_to_float(bias[at]);
      float acc = 0.0f; /* c * x would give -0 for c = 0 */
      for (int i = 0; i < c; i++)
        acc += vmep__bf16_to_float(x[at]);
      acc = biased > 0 ? acc + b : acc;
      acc = biased > 1 ? acc + b : acc;
      ASSERT_EQ(out[at], vmep__bf16_from_float(acc));
    }
    for (int k = 0; k < K; k++) {
      int64_t e = w->idx[s][t * K + k];
      int reached = e >= 0 && e < w->p.num_experts && live(w, s) &&
                    live(w, (int)(e / ht_L(w))) && w->in[s].topk_weights;
      float want = reached ? w->weight[s][t * K + k] : 0;
      ASSERT_EQ(memcmp(&weights[t * K + k], &want, 4), 0);
    }
  }
  struct vmep_ref_report report;
  ASSERT_OK(vmep__ref_ht_check_combine(&w->p, in, s, out, weights, &report));
  expect_clean(report);
  if (n > 0) {
    out[test_rand() % ((size_t)n * H)] ^= (uint16_t)(1u << (test_rand() % 16));
    ASSERT_OK(vmep__ref_ht_check_combine(&w->p, in, s, out, weights, &report));
    ASSERT_EQ(report.mismatches, 1);
  }
  free(weights);
  free(bias);
  free(out);
}

static void random_case(void) {
  struct ht_world w;
  struct layouts lay;
  struct vmep_ref_ht_recv recv[MAX_RANKS];
  random_world(&w);
  all_layouts(&w, &lay);
  ht_dispatch_all(&w, recv);
  int R = w.p.num_ranks, received = 0, sent = 0;
  for (int d = 0; d < R; d++) {
    received += check_recv(&w, &lay, d, &recv[d]);
    ht_expect_dispatch_clean(&w, d, &recv[d]);
    if (*recv[d].num_recv > 0)
      check_overflow(&w, d, &recv[d]);
    check_flip(&w, d, &recv[d]);
  }
  for (int s = 0; s < R; s++)
    for (int d = 0; d < R; d++)
      sent += live(&w, s) && live(&w, d) ? lay.per_rank[s][d] : 0;
  ASSERT_EQ(received, sent);
  /* bf16 worlds: what each rank received is a valid combine input. */
  for (int s = 0; s < R && !w.p.use_fp8; s++)
    check_identity(&w, &lay, recv, s);
  for (int r = 0; r < R; r++) {
    ht_recv_free(&recv[r]);
    free(lay.in_rank[r]);
  }
  ht_world_free(&w);
}

int main(void) {
  test_seed("test_reference_ht_random");
  for (int i = 0; i < 2000; i++)
    random_case();
  printf("%d flipped bits caught\n", flipped);
  ASSERT_TRUE(flipped > 100);
  printf("test_reference_ht_random: ok\n");
  return 0;
}
