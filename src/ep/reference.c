/*
 * The host reference of low-latency dispatch and combine (docs/EP.md): plain
 * loops over the inputs of every rank, written for obviousness rather than
 * speed, yet linear in the data so that T = 4096, H = 8192, K = 16, R = 8 takes
 * seconds. Dispatch produces one canonical layout; combine follows whatever
 * layout an implementation produced, so the same code checks any kernel's
 * outputs (check.c).
 */
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "ep/reference.h"
#include "kernels/kernels.h"
#include "kernels/logfmt.h"

/* The oracle and the kernels must agree on the shapes they both know. */
_Static_assert(VMEP_FP8_GROUP == VMEP_LL_FP8_GROUP,
               "the reference's fp8 group differs from the kernels'");
_Static_assert(VMEP_EP_MAX_TOPK == VMEP_LL_MAX_TOPK,
               "the reference's top-k bound differs from the kernels'");

enum selection {
  SEL_NONE,    /* topk_idx == -1 */
  SEL_INVALID, /* an id >= E or < -1 */
  SEL_MASKED,  /* source or expert rank masked */
  SEL_SENT
};

static int rank_masked(const struct vmep_ref_problem *p, int rank) {
  return p->masked != NULL && p->masked[rank] != 0;
}

static int local_experts(const struct vmep_ref_problem *p) {
  return p->num_experts / p->num_ranks;
}

/* Rows each local expert can hold: R * T (validated to fit an int32). */
static int expert_rows(const struct vmep_ref_problem *p) {
  return p->num_ranks * p->max_tokens;
}

/* What becomes of `src`'s selection of `expert`. */
static enum selection classify(const struct vmep_ref_problem *p, int src,
                               int64_t expert) {
  if (expert == -1)
    return SEL_NONE;
  if (expert < -1 || expert >= p->num_experts)
    return SEL_INVALID;
  if (rank_masked(p, src) || rank_masked(p, (int)(expert / local_experts(p))))
    return SEL_MASKED;
  return SEL_SENT;
}

static vmep_status check_rank_input(const struct vmep_ref_problem *p, int r,
                                    int need_weights) {
  const struct vmep_ref_rank_input *in = &p->ranks[r];
  if (in->num_tokens < 0 || in->num_tokens > p->max_tokens)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: rank %d has %d tokens, outside [0, %d]", r,
                      in->num_tokens, p->max_tokens);
  if (in->num_tokens > 0 &&
      (!in->x || !in->topk_idx || (need_weights && !in->topk_weights)))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: rank %d lacks x, topk_idx or topk_weights",
                      r);
  return VMEP_OK;
}

vmep_status vmep__ref_validate(const struct vmep_ref_problem *p,
                               int need_weights) {
  if (!p || !p->ranks)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: problem or its ranks is NULL");
  if (p->num_ranks < 1 || p->num_experts < 1 ||
      p->num_experts % p->num_ranks != 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: %d experts over %d ranks: experts must be "
                      "a positive multiple of ranks",
                      p->num_experts, p->num_ranks);
  if (p->max_tokens < 1 || (int64_t)p->num_ranks * p->max_tokens > INT32_MAX)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: max_tokens %d with %d ranks is out of "
                      "range",
                      p->max_tokens, p->num_ranks);
  int grouped = p->use_fp8 || p->use_logfmt;
  if (p->hidden < 1 || (grouped && p->hidden % VMEP_FP8_GROUP != 0))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: hidden %d must be positive%s", p->hidden,
                      grouped ? " and a multiple of 128 with fp8 or LogFMT"
                              : "");
  if (p->use_fp8 && (p->scale_layout < VMEP_EP_SCALES_ROW_MAJOR ||
                     p->scale_layout > VMEP_EP_SCALES_UE8M0 ||
                     (p->scale_layout == VMEP_EP_SCALES_UE8M0 &&
                      (!p->round_scale || p->hidden % 512 != 0))))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: scale_layout %d (UE8M0 needs round_scale "
                      "and hidden a multiple of 512)",
                      p->scale_layout);
  if (p->top_k < 1 || p->top_k > VMEP_EP_MAX_TOPK)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: top_k %d outside [1, %d]", p->top_k,
                      VMEP_EP_MAX_TOPK);
  for (int r = 0; r < p->num_ranks; r++) {
    vmep_status st = check_rank_input(p, r, need_weights);
    if (st != VMEP_OK)
      return st;
  }
  return VMEP_OK;
}

/* Validates the problem and that `rank` names one of its ranks. */
static vmep_status validate_rank(const struct vmep_ref_problem *p, int rank,
                                 int need_weights) {
  vmep_status st = vmep__ref_validate(p, need_weights);
  if (st != VMEP_OK)
    return st;
  if (rank < 0 || rank >= p->num_ranks)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: rank %d outside [0, %d)", rank, p->num_ranks);
  return VMEP_OK;
}

vmep_status vmep__ref_send_stats(const struct vmep_ref_problem *p, int rank,
                                 struct vmep_ref_send_stats *stats_out) {
  vmep_status st = validate_rank(p, rank, 0);
  if (st != VMEP_OK)
    return st;
  if (!stats_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: stats_out is NULL");
  const struct vmep_ref_rank_input *in = &p->ranks[rank];
  struct vmep_ref_send_stats stats = {0, 0, 0};
  for (int64_t i = 0; i < (int64_t)in->num_tokens * p->top_k; i++) {
    enum selection sel = classify(p, rank, in->topk_idx[i]);
    stats.sent += sel == SEL_SENT;
    stats.masked += sel == SEL_MASKED;
    stats.invalid += sel == SEL_INVALID;
  }
  *stats_out = stats;
  return VMEP_OK;
}

void vmep__ref_scale_store(const struct vmep_ref_problem *p, float *scales,
                           size_t row, size_t g, float scale) {
  size_t groups = (size_t)p->hidden / VMEP_FP8_GROUP;
  size_t rows = (size_t)expert_rows(p), l = row / rows, i = row % rows;
  uint32_t bits;
  switch (p->scale_layout) {
  case VMEP_EP_SCALES_COL_MAJOR:
    scales[(l * groups + g) * rows + i] = scale;
    break;
  case VMEP_EP_SCALES_UE8M0:
    memcpy(&bits, &scale, sizeof(bits));
    ((uint8_t *)scales)[((l * (groups / 4) + g / 4) * rows + i) * 4 + g % 4] =
        (uint8_t)(bits >> 23);
    break;
  default:
    scales[row * groups + g] = scale;
  }
}

float vmep__ref_scale_load(const struct vmep_ref_problem *p,
                           const float *scales, size_t row, size_t g) {
  size_t groups = (size_t)p->hidden / VMEP_FP8_GROUP;
  size_t rows = (size_t)expert_rows(p), l = row / rows, i = row % rows;
  uint32_t bits;
  float value;
  switch (p->scale_layout) {
  case VMEP_EP_SCALES_COL_MAJOR:
    return scales[(l * groups + g) * rows + i];
  case VMEP_EP_SCALES_UE8M0:
    bits =
        (uint32_t)((
            const uint8_t
                *)scales)[((l * (groups / 4) + g / 4) * rows + i) * 4 + g % 4]
        << 23;
    memcpy(&value, &bits, sizeof(value));
    return value;
  default:
    return scales[row * groups + g];
  }
}

/* Writes token `token` of rank `src` into row `row` (l * R*T + i). */
static void copy_row(const struct vmep_ref_problem *p, int src, int token,
                     const struct vmep_ref_recv *out, size_t row) {
  size_t hidden = (size_t)p->hidden;
  const uint16_t *x = p->ranks[src].x + (size_t)token * hidden;
  if (p->use_fp8)
    /* group by group, so that any scale layout needs no scratch */
    for (size_t g = 0; g < hidden / VMEP_FP8_GROUP; g++) {
      float scale;
      vmep__fp8_quantize_row(
          x + g * VMEP_FP8_GROUP, VMEP_FP8_GROUP, p->round_scale,
          (uint8_t *)out->recv_x + row * hidden + g * VMEP_FP8_GROUP, &scale);
      vmep__ref_scale_store(p, out->recv_scales, row, g, scale);
    }
  else
    memcpy((uint16_t *)out->recv_x + row * hidden, x,
           hidden * sizeof(uint16_t));
}

/* Appends source rank `src`'s selections of `rank`'s experts, in token
 * order, after the rows already in out->recv_count. */
static vmep_status dispatch_from(const struct vmep_ref_problem *p, int rank,
                                 int src, const struct vmep_ref_recv *out) {
  const struct vmep_ref_rank_input *in = &p->ranks[src];
  int experts = local_experts(p), rows = expert_rows(p);
  for (int t = 0; t < in->num_tokens; t++)
    for (int k = 0; k < p->top_k; k++) {
      int64_t e = in->topk_idx[(size_t)t * p->top_k + k];
      if (classify(p, src, e) != SEL_SENT || e / experts != rank)
        continue;
      int l = (int)(e % experts);
      if (out->recv_count[l] == rows)
        return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                          "reference: expert %d of rank %d receives more "
                          "than %d rows (a token lists it twice?)",
                          l, rank, rows);
      size_t row = (size_t)l * rows + (size_t)out->recv_count[l]++;
      out->src_info[row] = t;
      if (out->recv_x)
        copy_row(p, src, t, out, row);
    }
  return VMEP_OK;
}

vmep_status vmep__ref_dispatch(const struct vmep_ref_problem *p, int rank,
                               const struct vmep_ref_recv *out) {
  vmep_status st = validate_rank(p, rank, 0);
  if (st != VMEP_OK)
    return st;
  if (!out || !out->recv_count || !out->src_info || !out->layout_range ||
      (out->recv_x && p->use_fp8 && !out->recv_scales))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: dispatch output array missing");
  int experts = local_experts(p), ranks = p->num_ranks;
  memset(out->recv_count, 0, (size_t)experts * sizeof(int32_t));
  for (int src = 0; src < ranks; src++) {
    /* Each range starts where the expert's rows stand before `src`. */
    for (int l = 0; l < experts; l++)
      out->layout_range[(size_t)l * ranks + src] = out->recv_count[l];
    st = dispatch_from(p, rank, src, out);
    if (st != VMEP_OK)
      return st;
    for (int l = 0; l < experts; l++) {
      int64_t *range = &out->layout_range[(size_t)l * ranks + src];
      *range = vmep__range_pack((uint32_t)*range,
                                (uint32_t)(out->recv_count[l] - *range));
    }
  }
  return VMEP_OK;
}

/* Checks that rank d's layout and expert outputs are there to be read. */
static vmep_status check_live_rank(const struct vmep_ref_problem *p, int d,
                                   const struct vmep_ref_recv *recv,
                                   const uint16_t *const *expert_out) {
  if (!recv[d].recv_count || !recv[d].src_info || !recv[d].layout_range ||
      !expert_out[d])
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: rank %d's layout or expert output is "
                      "missing",
                      d);
  for (int l = 0; l < local_experts(p); l++)
    if (recv[d].recv_count[l] < 0 || recv[d].recv_count[l] > expert_rows(p))
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "reference: rank %d expert %d: recv_count %d "
                        "outside [0, %d]",
                        d, l, recv[d].recv_count[l], expert_rows(p));
  return VMEP_OK;
}

/* Where the rows of one source rank sit in one expert's range. */
struct range_rows {
  int d, l, src;  /* expert rank, local expert, source rank */
  uint32_t begin; /* first row of the range */
  int32_t *head;  /* [source tokens]: a token's next unused row, or -1 */
  int32_t *next;  /* [R*T]: next[i - begin], the token's row after i */
};

/* Reads range (l, src) of rank d and links its rows per token, in row
 * order, into rr->head / rr->next. */
static vmep_status link_range(const struct vmep_ref_problem *p,
                              const struct vmep_ref_recv *recv_d,
                              struct range_rows *rr) {
  int tokens = p->ranks[rr->src].num_tokens;
  int64_t range = recv_d->layout_range[(size_t)rr->l * p->num_ranks + rr->src];
  uint64_t begin = vmep__range_begin(range), count = vmep__range_count(range);
  if (count > 0 && begin + count > (uint64_t)recv_d->recv_count[rr->l])
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: rank %d expert %d: range of rank %d "
                      "[%llu, %llu) exceeds its %d rows",
                      rr->d, rr->l, rr->src, (unsigned long long)begin,
                      (unsigned long long)(begin + count),
                      recv_d->recv_count[rr->l]);
  rr->begin = (uint32_t)begin;
  for (int t = 0; t < tokens; t++)
    rr->head[t] = -1;
  const int32_t *src_info =
      recv_d->src_info + (size_t)rr->l * (size_t)expert_rows(p);
  for (int64_t i = (int64_t)(begin + count) - 1; i >= (int64_t)begin; i--) {
    int32_t t = src_info[i];
    if (t < 0 || t >= tokens)
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "reference: rank %d expert %d row %lld: src_info %d "
                        "is not a token of rank %d",
                        rr->d, rr->l, (long long)i, t, rr->src);
    rr->next[i - (int64_t)begin] = rr->head[t];
    rr->head[t] = (int32_t)i;
  }
  return VMEP_OK;
}

/* Gives each selection of expert (d, l) by rr->src its token's next row. */
static vmep_status take_rows(const struct vmep_ref_problem *p,
                             struct range_rows *rr, int64_t *rows_out) {
  const struct vmep_ref_rank_input *in = &p->ranks[rr->src];
  int64_t expert = (int64_t)rr->d * local_experts(p) + rr->l;
  for (int t = 0; t < in->num_tokens; t++)
    for (int k = 0; k < p->top_k; k++) {
      size_t slot = (size_t)t * p->top_k + k;
      if (in->topk_idx[slot] != expert)
        continue;
      int32_t row = rr->head[t];
      if (row < 0)
        return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                          "reference: rank %d expert %d has no row for "
                          "token %d of rank %d (slot %d)",
                          rr->d, rr->l, t, rr->src, k);
      rows_out[slot] = (int64_t)rr->l * expert_rows(p) + row;
      rr->head[t] = rr->next[row - (int32_t)rr->begin];
    }
  return VMEP_OK;
}

/* Fills rows_out for rr->src's selections of every live expert rank;
 * rr->head and rr->next are allocated. */
static vmep_status find_rows(const struct vmep_ref_problem *p,
                             const struct vmep_ref_recv *recv,
                             const uint16_t *const *expert_out,
                             struct range_rows *rr, int64_t *rows_out) {
  for (int d = 0; d < p->num_ranks; d++) {
    if (rank_masked(p, d))
      continue;
    vmep_status st = check_live_rank(p, d, recv, expert_out);
    for (int l = 0; st == VMEP_OK && l < local_experts(p); l++) {
      rr->d = d;
      rr->l = l;
      st = link_range(p, &recv[d], rr);
      if (st == VMEP_OK)
        st = take_rows(p, rr, rows_out);
    }
    if (st != VMEP_OK)
      return st;
  }
  return VMEP_OK;
}

vmep_status vmep__ref_combine_rows(const struct vmep_ref_problem *p, int rank,
                                   const struct vmep_ref_recv *recv,
                                   const uint16_t *const *expert_out,
                                   int64_t *rows_out) {
  vmep_status st = validate_rank(p, rank, 1);
  if (st != VMEP_OK)
    return st;
  if (!recv || !expert_out || !rows_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: combine layouts, expert outputs or rows "
                      "missing");
  int tokens = p->ranks[rank].num_tokens;
  for (size_t i = 0; i < (size_t)tokens * p->top_k; i++)
    rows_out[i] = -1;
  if (tokens == 0 || rank_masked(p, rank))
    return VMEP_OK;
  struct range_rows rr = {.src = rank};
  rr.head = vmep__malloc((size_t)tokens * sizeof(int32_t));
  rr.next = vmep__malloc((size_t)expert_rows(p) * sizeof(int32_t));
  if (!rr.head || !rr.next)
    st = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                    "reference: combine row index of %d tokens", tokens);
  else
    st = find_rows(p, recv, expert_out, &rr, rows_out);
  vmep__free(rr.next);
  vmep__free(rr.head);
  return st;
}

/* Adds to sum_out (and |value| to abs_out) the partial sum of expert rank
 * d for one token with expert_reduce: its selections from k0 on, one fmaf
 * each in k order, rounded to bf16, with use_logfmt then through LogFMT;
 * a group of 128 channels at a time. */
static void add_partial(const struct vmep_ref_problem *p, int rank,
                        const int64_t *rows, const uint16_t *const *expert_out,
                        size_t slot0, int k0, float *sum_out, float *abs_out) {
  const struct vmep_ref_rank_input *in = &p->ranks[rank];
  const size_t hidden = (size_t)p->hidden;
  const int64_t d = in->topk_idx[slot0 + k0] / local_experts(p);
  for (size_t h0 = 0; h0 < hidden; h0 += VMEP_LOGFMT_GROUP) {
    size_t n = hidden - h0; /* the last group of a bf16 row may be short */
    if (n > VMEP_LOGFMT_GROUP)
      n = VMEP_LOGFMT_GROUP;
    float partial[VMEP_LOGFMT_GROUP] = {0};
    uint16_t rounded[VMEP_LOGFMT_GROUP];
    for (int k = k0; k < p->top_k; k++) {
      if (rows[slot0 + k] < 0 ||
          in->topk_idx[slot0 + k] / local_experts(p) != d)
        continue;
      const uint16_t *v = expert_out[d] + (size_t)rows[slot0 + k] * hidden;
      for (size_t i = 0; i < n; i++)
        partial[i] = fmaf(in->topk_weights[slot0 + k],
                          vmep__bf16_to_float(v[h0 + i]), partial[i]);
    }
    for (size_t i = 0; i < n; i++)
      rounded[i] = vmep__bf16_from_float(partial[i]);
    if (p->use_logfmt)
      vmep__logfmt_round_trip_group(rounded, partial);
    for (size_t i = 0; i < n; i++) {
      float value =
          p->use_logfmt ? partial[i] : vmep__bf16_to_float(rounded[i]);
      sum_out[h0 + i] += value;
      if (abs_out)
        abs_out[h0 + i] += value < 0.0f ? -value : value;
    }
  }
}

/* Whether selection k of a token (slot0) is the first counted one of its
 * expert rank. */
static int first_of_rank(const struct vmep_ref_problem *p, int rank,
                         const int64_t *rows, size_t slot0, int k) {
  const int64_t *idx = p->ranks[rank].topk_idx + slot0;
  for (int j = 0; j < k; j++)
    if (rows[slot0 + j] >= 0 &&
        idx[j] / local_experts(p) == idx[k] / local_experts(p))
      return 0;
  return 1;
}

void vmep__ref_combine_token(const struct vmep_ref_problem *p, int rank,
                             const int64_t *rows,
                             const uint16_t *const *expert_out, int token,
                             float *sum_out, float *abs_out) {
  size_t hidden = (size_t)p->hidden, slot0 = (size_t)token * p->top_k;
  const struct vmep_ref_rank_input *in = &p->ranks[rank];
  for (size_t h = 0; h < hidden; h++) {
    sum_out[h] = 0.0f;
    if (abs_out)
      abs_out[h] = 0.0f;
  }
  for (int k = 0; p->expert_reduce && k < p->top_k; k++)
    if (rows[slot0 + k] >= 0 && first_of_rank(p, rank, rows, slot0, k))
      add_partial(p, rank, rows, expert_out, slot0, k, sum_out, abs_out);
  for (int k = 0; !p->expert_reduce && k < p->top_k; k++) {
    if (rows[slot0 + k] < 0)
      continue;
    int d = (int)(in->topk_idx[slot0 + k] / local_experts(p));
    float weight = in->topk_weights[slot0 + k];
    const uint16_t *v = expert_out[d] + (size_t)rows[slot0 + k] * hidden;
    float decoded[VMEP_LOGFMT_GROUP];
    for (size_t h = 0; h < hidden; h++) {
      if (p->use_logfmt && h % VMEP_LOGFMT_GROUP == 0)
        vmep__logfmt_round_trip_group(v + h, decoded);
      float value = p->use_logfmt ? decoded[h % VMEP_LOGFMT_GROUP]
                                  : vmep__bf16_to_float(v[h]);
      float term = weight * value;
      sum_out[h] =
          p->use_logfmt ? fmaf(weight, value, sum_out[h]) : sum_out[h] + term;
      if (abs_out)
        abs_out[h] += term < 0.0f ? -term : term;
    }
  }
}

vmep_status vmep__ref_combine(const struct vmep_ref_problem *p, int rank,
                              const struct vmep_ref_recv *recv,
                              const uint16_t *const *expert_out,
                              uint16_t *out) {
  if (!out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "reference: combine output is NULL");
  vmep_status st = validate_rank(p, rank, 1);
  if (st != VMEP_OK)
    return st;
  size_t tokens = (size_t)p->ranks[rank].num_tokens;
  size_t hidden = (size_t)p->hidden;
  int64_t *rows = vmep__malloc((tokens * p->top_k + 1) * sizeof(int64_t));
  float *sum = vmep__malloc(hidden * sizeof(float));
  if (!rows || !sum)
    st = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                    "reference: combine of %zu tokens", tokens);
  else
    st = vmep__ref_combine_rows(p, rank, recv, expert_out, rows);
  for (size_t t = 0; st == VMEP_OK && t < tokens; t++) {
    vmep__ref_combine_token(p, rank, rows, expert_out, (int)t, sum, NULL);
    for (size_t h = 0; h < hidden; h++)
      out[t * hidden + h] = vmep__bf16_from_float(sum[h]);
  }
  vmep__free(sum);
  vmep__free(rows);
  return st;
}
