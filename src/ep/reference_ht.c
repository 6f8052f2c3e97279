/*
 * The host reference of high-throughput layout, dispatch and combine
 * (vmep.h, "High-throughput"): plain loops over the inputs of every rank
 * that follow the contract to the bit. Unlike low-latency mode the layout
 * is fixed (rows by source rank, then token), so dispatch and combine both
 * follow it and check_ht.c compares element by element.
 */
#include <limits.h>
#include <string.h>

#include "core/core.h"
#include "ep/reference.h"

/* recv_src keeps the source rank in bits 5..15 and the slot in 0..4. */
#define HT_MAX_RANKS 2048
#define HT_MAX_TOKENS 65536
_Static_assert(VMEP_EP_MAX_TOPK <= 32, "recv_src holds the slot in 5 bits");

static int rank_masked(const struct vmep_ref_ht_problem *p, int rank) {
  return p->masked != NULL && p->masked[rank] != 0;
}

static int local_experts(const struct vmep_ref_ht_problem *p) {
  return p->num_experts / p->num_ranks;
}

/* Bytes of one row of x. */
static size_t row_bytes(const struct vmep_ref_ht_problem *p) {
  return (size_t)p->hidden * (p->use_fp8 ? 1 : 2);
}

static size_t scale_groups(const struct vmep_ref_ht_problem *p) {
  return (size_t)p->hidden / VMEP_FP8_GROUP;
}

/* Slot k of token t of rank s, as an expert id; invalid ids give -1. */
static int64_t expert_of(const struct vmep_ref_ht_problem *p, int s, int t,
                         int k) {
  int64_t e = p->ranks[s].topk_idx[(size_t)t * p->top_k + k];
  return e >= 0 && e < p->num_experts ? e : -1;
}

/* The first slot of token t of rank s whose expert lives on rank d, or -1
 * when none does. */
static int first_slot(const struct vmep_ref_ht_problem *p, int s, int t,
                      int d) {
  for (int k = 0; k < p->top_k; k++) {
    int64_t e = expert_of(p, s, t, k);
    if (e >= 0 && e / local_experts(p) == d)
      return k;
  }
  return -1;
}

/* Whether rank d receives token t of rank s: some expert of t on d, and
 * neither rank masked. */
static int receives(const struct vmep_ref_ht_problem *p, int s, int t, int d) {
  return !rank_masked(p, s) && !rank_masked(p, d) &&
         first_slot(p, s, t, d) >= 0;
}

static vmep_status check_rank_input(const struct vmep_ref_ht_problem *p,
                                    int r) {
  const struct vmep_ref_ht_rank_input *in = &p->ranks[r];
  int n = in->num_tokens;
  int missing =
      n > 0 && (!in->x || !in->topk_idx || (p->use_fp8 && !in->x_scales));
  if (n >= 0 && n <= p->max_tokens && !missing)
    return VMEP_OK;
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "reference: rank %d: %d tokens (0..%d)%s", r, n,
                    p->max_tokens,
                    missing ? ", its x, x_scales or topk_idx NULL" : "");
}

/* One bound of the problem's shape. */
struct bound {
  const char *name;
  int value, low, high;
};

vmep_status vmep__ref_ht_validate(const struct vmep_ref_ht_problem *p) {
  if (!p || !p->ranks)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: problem or its ranks NULL");
  const struct bound bounds[] = {
      {"num_ranks", p->num_ranks, 1, HT_MAX_RANKS},
      {"num_experts", p->num_experts, p->num_ranks, INT_MAX},
      {"max_tokens", p->max_tokens, 1, HT_MAX_TOKENS},
      {"hidden", p->hidden, 1, INT_MAX},
      {"top_k", p->top_k, 1, VMEP_EP_MAX_TOPK},
      {"expert_alignment", p->expert_alignment, 0, INT_MAX}};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bounds); i++)
    if (bounds[i].value < bounds[i].low || bounds[i].value > bounds[i].high)
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "reference: %s %d outside [%d, %d]", bounds[i].name,
                        bounds[i].value, bounds[i].low, bounds[i].high);
  if (p->num_experts % p->num_ranks != 0 ||
      (p->use_fp8 && p->hidden % VMEP_FP8_GROUP != 0))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: num_experts %d is not a multiple of %d "
                      "ranks, or hidden %d not of %d with fp8",
                      p->num_experts, p->num_ranks, p->hidden, VMEP_FP8_GROUP);
  for (int r = 0; r < p->num_ranks; r++) {
    vmep_status st = check_rank_input(p, r);
    if (st != VMEP_OK)
      return st;
  }
  return VMEP_OK;
}

/* Validates the problem and that `rank` names one of its ranks. */
static vmep_status validate_rank(const struct vmep_ref_ht_problem *p,
                                 int rank) {
  vmep_status st = vmep__ref_ht_validate(p);
  if (st == VMEP_OK && (rank < 0 || rank >= p->num_ranks))
    st = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "reference: no rank %d among %d", rank, p->num_ranks);
  return st;
}

vmep_status vmep__ref_ht_bad_experts(const struct vmep_ref_ht_problem *p,
                                     int rank, int64_t *count_out) {
  vmep_status st = validate_rank(p, rank);
  if (st != VMEP_OK)
    return st;
  if (!count_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: count_out is NULL");
  const struct vmep_ref_ht_rank_input *in = &p->ranks[rank];
  int64_t bad = 0;
  for (size_t i = 0; i < (size_t)in->num_tokens * p->top_k; i++)
    bad += in->topk_idx[i] < -1 || in->topk_idx[i] >= p->num_experts;
  *count_out = bad;
  return VMEP_OK;
}

vmep_status vmep__ref_ht_layout(const struct vmep_ref_ht_problem *p, int rank,
                                const struct vmep_ref_ht_layout *out) {
  vmep_status st = validate_rank(p, rank);
  if (st != VMEP_OK)
    return st;
  if (!out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: layout output is NULL");
  int R = p->num_ranks, tokens = p->ranks[rank].num_tokens;
  if (out->tokens_per_rank)
    memset(out->tokens_per_rank, 0, (size_t)R * sizeof(int32_t));
  if (out->tokens_per_expert)
    memset(out->tokens_per_expert, 0, (size_t)p->num_experts * sizeof(int32_t));
  for (int t = 0; t < tokens; t++) {
    for (int d = 0; d < R; d++) {
      int in_d = first_slot(p, rank, t, d) >= 0;
      if (out->tokens_per_rank)
        out->tokens_per_rank[d] += in_d;
      if (out->in_rank)
        out->in_rank[(size_t)t * R + d] = (uint8_t)in_d;
    }
    for (int k = 0; k < p->top_k && out->tokens_per_expert; k++) {
      int64_t e = expert_of(p, rank, t, k);
      if (e >= 0)
        out->tokens_per_expert[e]++;
    }
  }
  return VMEP_OK;
}

/* Writes row i of `out`: token t of rank s, first sent for slot j. */
static void write_row(const struct vmep_ref_ht_problem *p, int d, int s, int t,
                      int j, const struct vmep_ref_ht_recv *out, size_t i) {
  const struct vmep_ref_ht_rank_input *in = &p->ranks[s];
  size_t K = (size_t)p->top_k, G = scale_groups(p);
  if (out->recv_x)
    memcpy((uint8_t *)out->recv_x + i * row_bytes(p),
           (const uint8_t *)in->x + (size_t)t * row_bytes(p), row_bytes(p));
  if (out->recv_scales && p->use_fp8)
    memcpy(out->recv_scales + i * G, in->x_scales + (size_t)t * G,
           G * sizeof(float));
  for (size_t k = 0; k < K; k++) {
    int64_t e = expert_of(p, s, t, (int)k);
    int64_t local = e >= 0 && e / local_experts(p) == d
                        ? e - (int64_t)d * local_experts(p)
                        : -1;
    if (out->recv_topk_idx)
      out->recv_topk_idx[i * K + k] = local;
    if (out->recv_topk_weights)
      out->recv_topk_weights[i * K + k] =
          local >= 0 && in->topk_weights ? in->topk_weights[(size_t)t * K + k]
                                         : 0.0f;
  }
  if (out->recv_src)
    out->recv_src[i] = vmep__ht_src_pack(t, s, j);
}

/* Adds row (s, t)'s selections of rank d's experts to counts[L]. */
static void count_row(const struct vmep_ref_ht_problem *p, int d, int s, int t,
                      int32_t *counts) {
  int L = local_experts(p);
  for (int k = 0; k < p->top_k; k++) {
    int64_t e = expert_of(p, s, t, k);
    if (e >= 0 && e / L == d)
      counts[e % L]++;
  }
}

vmep_status vmep__ref_ht_dispatch(const struct vmep_ref_ht_problem *p, int rank,
                                  const struct vmep_ref_ht_recv *out) {
  vmep_status st = validate_rank(p, rank);
  if (st != VMEP_OK)
    return st;
  if (!out || out->capacity < 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: dispatch output missing or its capacity "
                      "negative");
  int L = local_experts(p);
  int32_t rows = 0, *counts = out->recv_expert_count;
  if (counts)
    memset(counts, 0, (size_t)L * sizeof(int32_t));
  for (int s = 0; s < p->num_ranks; s++)
    for (int t = 0; t < p->ranks[s].num_tokens; t++) {
      if (!receives(p, s, t, rank))
        continue;
      if (rows < out->capacity)
        write_row(p, rank, s, t, first_slot(p, s, t, rank), out, (size_t)rows);
      if (counts)
        count_row(p, rank, s, t, counts);
      rows++;
    }
  int align = p->expert_alignment;
  for (int l = 0; counts && align > 1 && l < L; l++)
    counts[l] = (int32_t)(((int64_t)counts[l] + align - 1) / align * align);
  if (out->num_recv)
    *out->num_recv = rows;
  return VMEP_OK;
}

/* ---- combine ------------------------------------------------------------ */

/* One combine: where each rank's rows from the source begin, and how many
 * of them the walk over the source's tokens has passed. */
struct combine_walk {
  const struct vmep_ref_ht_problem *p;
  const struct vmep_ref_ht_combine_input *in;
  int s;         /* the source rank */
  int32_t *next; /* [R]: rank r's row for the source's next token to it */
  int *order;    /* [R]: the contributing ranks of one token, in order */
  float *acc;    /* [H] */
};

/* Fills w->next with the row of rank r where the source's rows start: the
 * rows of the sources before it. */
static void walk_start(struct combine_walk *w) {
  const struct vmep_ref_ht_problem *p = w->p;
  for (int r = 0; r < p->num_ranks; r++) {
    w->next[r] = 0;
    for (int s = 0; s < w->s; s++)
      for (int t = 0; t < p->ranks[s].num_tokens; t++)
        w->next[r] += receives(p, s, t, r);
  }
}

/* The contributing ranks of token t into w->order, in the order their
 * first expert appears; returns how many. */
static int contributors(const struct combine_walk *w, int t) {
  int count = 0;
  for (int k = 0; k < w->p->top_k; k++) {
    int64_t e = expert_of(w->p, w->s, t, k);
    if (e < 0)
      continue;
    int r = (int)(e / local_experts(w->p));
    if (first_slot(w->p, w->s, t, r) == k && receives(w->p, w->s, t, r))
      w->order[count++] = r;
  }
  return count;
}

/* acc[h] += bias[t][h] when the bias is there. */
static void add_bias(const struct combine_walk *w, const uint16_t *bias,
                     int t) {
  size_t H = (size_t)w->p->hidden;
  for (size_t h = 0; bias && h < H; h++)
    w->acc[h] += vmep__bf16_to_float(bias[(size_t)t * H + h]);
}

/* Token t: out row and, when wanted, its weights; advances w->next. */
static vmep_status combine_token(struct combine_walk *w, int t, uint16_t *out,
                                 float *out_w) {
  const struct vmep_ref_ht_problem *p = w->p;
  size_t H = (size_t)p->hidden, K = (size_t)p->top_k;
  int count = contributors(w, t);
  for (size_t h = 0; h < H; h++)
    w->acc[h] = 0.0f;
  for (size_t k = 0; out_w && k < K; k++)
    out_w[(size_t)t * K + k] = 0.0f;
  for (int c = 0; c < count; c++) {
    int r = w->order[c];
    size_t i = (size_t)w->next[r]++;
    const struct vmep_ref_ht_combine_input *in = &w->in[r];
    if (!in->x || (out_w && !in->topk_weights))
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "reference: rank %d contributes to token %d of rank "
                        "%d but its combine x or topk_weights is NULL",
                        r, t, w->s);
    for (size_t h = 0; h < H; h++)
      w->acc[h] += vmep__bf16_to_float(in->x[i * H + h]);
    for (size_t k = 0; out_w && k < K; k++)
      out_w[(size_t)t * K + k] += in->topk_weights[i * K + k];
  }
  add_bias(w, w->in[w->s].bias0, t);
  add_bias(w, w->in[w->s].bias1, t);
  for (size_t h = 0; h < H; h++)
    out[(size_t)t * H + h] = vmep__bf16_from_float(w->acc[h]);
  return VMEP_OK;
}

vmep_status vmep__ref_ht_combine(const struct vmep_ref_ht_problem *p,
                                 const struct vmep_ref_ht_combine_input *in,
                                 int rank, uint16_t *out,
                                 float *out_topk_weights) {
  vmep_status st = validate_rank(p, rank);
  if (st != VMEP_OK)
    return st;
  int tokens = p->ranks[rank].num_tokens;
  if (!in || (tokens > 0 && !out))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: combine inputs or output NULL");
  struct combine_walk w = {.p = p, .in = in, .s = rank};
  w.next = vmep__malloc((size_t)p->num_ranks * sizeof(int32_t));
  w.order = vmep__malloc((size_t)p->num_ranks * sizeof(int));
  w.acc = vmep__malloc((size_t)p->hidden * sizeof(float));
  if (!w.next || !w.order || !w.acc)
    st = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                    "reference: combine scratch for %d ranks", p->num_ranks);
  else
    walk_start(&w);
  for (int t = 0; st == VMEP_OK && t < tokens; t++)
    st = combine_token(&w, t, out, out_topk_weights);
  vmep__free(w.acc);
  vmep__free(w.order);
  vmep__free(w.next);
  return st;
}
