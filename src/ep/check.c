/*
 * Checkers that hold an implementation's dispatch and combine outputs to
 * the host reference (reference.c). They accept every layout the contract
 * allows (any order of ranges, any order within a range), count what
 * differs and describe the first difference in words, so that a GPU test
 * failure says which rank, expert, row, token or channel is wrong.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/core.h"
#include "ep/reference.h"

void vmep__ref_mismatch(struct vmep_ref_report *report, const char *fmt, ...) {
  if (report->mismatches++ == 0) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(report->first, sizeof(report->first), fmt, args);
    va_end(args);
  }
}

/* ---- dispatch ---------------------------------------------------------- */

/* One dispatch check: the reference layout and the scratch it needs. */
struct dispatch_check {
  const struct vmep_ref_problem *p;
  int rank, experts, rows;          /* receiving rank, L, R*T */
  const struct vmep_ref_recv *impl; /* what is checked */
  struct vmep_ref_recv ref;         /* the reference layout (no rows) */
  int32_t *owner;                   /* [R*T]: source rank of each row */
  int32_t *tally;                   /* [T]: reference minus impl uses */
  uint8_t *q;                       /* [H]: a quantized row (fp8) */
  float *scales;                    /* [H / 128] */
  struct vmep_ref_report *report;
};

/* Compares the multiset of source tokens of impl rows [begin, begin+count)
 * with the reference's range of rank src. Leaves c->tally all zero. */
static void check_tokens(struct dispatch_check *c, int l, int src,
                         uint32_t begin, uint32_t count) {
  int tokens = c->p->ranks[src].num_tokens;
  size_t base = (size_t)l * c->rows;
  int64_t ref_range = c->ref.layout_range[(size_t)l * c->p->num_ranks + src];
  const int32_t *ref = c->ref.src_info + base + vmep__range_begin(ref_range);
  const int32_t *got = c->impl->src_info + base + begin;
  for (uint32_t i = 0; i < count; i++)
    c->tally[ref[i]]++;
  for (uint32_t i = 0; i < count; i++) {
    if (got[i] >= 0 && got[i] < tokens)
      c->tally[got[i]]--;
    else
      vmep__ref_mismatch(
          c->report,
          "rank %d expert %d row %u: src_info %d is not a token of "
          "rank %d (it has %d)",
          c->rank, l, begin + i, got[i], src, tokens);
  }
  for (int pass = 0; pass < 2; pass++)
    for (uint32_t i = 0; i < count; i++) {
      int32_t t = pass == 0 ? ref[i] : got[i];
      if (t < 0 || t >= tokens || c->tally[t] == 0)
        continue;
      vmep__ref_mismatch(
          c->report,
          "rank %d expert %d, range of rank %d: token %d appears %d "
          "time(s) too %s",
          c->rank, l, src, t, c->tally[t] > 0 ? c->tally[t] : -c->tally[t],
          c->tally[t] > 0 ? "few" : "many");
      c->tally[t] = 0;
    }
}

/* Compares impl row `row` of expert l with token `token` of rank src. */
static void check_row(struct dispatch_check *c, int l, uint32_t row, int src,
                      int token) {
  size_t hidden = (size_t)c->p->hidden, at = (size_t)l * c->rows + row;
  const uint16_t *x = c->p->ranks[src].x + (size_t)token * hidden;
  if (!c->p->use_fp8) {
    const uint16_t *got = (const uint16_t *)c->impl->recv_x + at * hidden;
    for (size_t h = 0; h < hidden; h++)
      if (got[h] != x[h]) {
        vmep__ref_mismatch(
            c->report,
            "rank %d expert %d row %u (token %d of rank %d): channel "
            "%zu is bf16 0x%04x, expected 0x%04x",
            c->rank, l, row, token, src, h, got[h], x[h]);
        return;
      }
    return;
  }
  size_t groups = hidden / VMEP_FP8_GROUP;
  const uint8_t *got = (const uint8_t *)c->impl->recv_x + at * hidden;
  vmep__fp8_quantize_row(x, c->p->hidden, c->p->round_scale, c->q, c->scales);
  for (size_t g = 0; g < groups; g++) {
    float got_scale = vmep__ref_scale_load(c->p, c->impl->recv_scales, at, g);
    if (memcmp(&got_scale, &c->scales[g], sizeof(float)) != 0) {
      vmep__ref_mismatch(
          c->report,
          "rank %d expert %d row %u (token %d of rank %d): scale %zu is "
          "%.9g, expected %.9g",
          c->rank, l, row, token, src, g, got_scale, c->scales[g]);
      return;
    }
  }
  for (size_t h = 0; h < hidden; h++)
    if (got[h] != c->q[h]) {
      vmep__ref_mismatch(
          c->report,
          "rank %d expert %d row %u (token %d of rank %d): channel %zu "
          "is fp8 0x%02x, expected 0x%02x",
          c->rank, l, row, token, src, h, got[h], c->q[h]);
      return;
    }
}

/* Checks impl range (l, src): its count, bounds, overlap with the ranges
 * before it, its tokens and its rows. `valid` is the impl row count. */
static void check_range(struct dispatch_check *c, int l, int src,
                        uint32_t valid) {
  size_t at = (size_t)l * c->p->num_ranks + src;
  uint32_t begin = vmep__range_begin(c->impl->layout_range[at]);
  uint32_t count = vmep__range_count(c->impl->layout_range[at]);
  uint32_t expected = vmep__range_count(c->ref.layout_range[at]);
  if (count != expected) {
    vmep__ref_mismatch(
        c->report,
        "rank %d expert %d: range of rank %d has %u rows, expected %u", c->rank,
        l, src, count, expected);
    return;
  }
  if (count == 0)
    return;
  if ((uint64_t)begin + count > valid) {
    vmep__ref_mismatch(c->report,
                       "rank %d expert %d: range of rank %d [%u, %llu) exceeds "
                       "recv_count %u",
                       c->rank, l, src, begin,
                       (unsigned long long)begin + count, valid);
    return;
  }
  for (uint32_t i = begin; i < begin + count; i++) {
    if (c->owner[i] >= 0) {
      vmep__ref_mismatch(
          c->report,
          "rank %d expert %d: ranges of ranks %d and %d share row %u", c->rank,
          l, c->owner[i], src, i);
      return;
    }
    c->owner[i] = src;
  }
  check_tokens(c, l, src, begin, count);
  const int32_t *src_info = c->impl->src_info + (size_t)l * c->rows;
  for (uint32_t i = begin; i < begin + count; i++)
    if (src_info[i] >= 0 && src_info[i] < c->p->ranks[src].num_tokens)
      check_row(c, l, i, src, src_info[i]);
}

static void check_expert(struct dispatch_check *c, int l) {
  int32_t got = c->impl->recv_count[l], expected = c->ref.recv_count[l];
  if (got != expected)
    vmep__ref_mismatch(c->report,
                       "rank %d expert %d: recv_count %d, expected %d", c->rank,
                       l, got, expected);
  uint32_t valid = (uint32_t)(got < 0 ? 0 : got > c->rows ? c->rows : got);
  for (uint32_t i = 0; i < valid; i++)
    c->owner[i] = -1;
  /* No coverage pass: when every range holds the reference's count and
   * recv_count is the reference's (their sum), ranges that are in bounds
   * and disjoint cover [0, recv_count) exactly. */
  for (int src = 0; src < c->p->num_ranks; src++)
    check_range(c, l, src, valid);
}

/* Allocates the reference layout and scratch of `c`; all or nothing. */
static vmep_status check_alloc(struct dispatch_check *c) {
  size_t experts = (size_t)c->experts, rows = (size_t)c->rows;
  c->ref.recv_count = vmep__malloc(experts * sizeof(int32_t));
  c->ref.src_info = vmep__malloc(experts * rows * sizeof(int32_t));
  c->ref.layout_range =
      vmep__malloc(experts * (size_t)c->p->num_ranks * sizeof(int64_t));
  c->owner = vmep__malloc(rows * sizeof(int32_t));
  c->tally = vmep__calloc((size_t)c->p->max_tokens, sizeof(int32_t));
  c->q = vmep__malloc((size_t)c->p->hidden);
  c->scales = vmep__malloc(
      (size_t)c->p->hidden / VMEP_FP8_GROUP * sizeof(float) + sizeof(float));
  if (c->ref.recv_count && c->ref.src_info && c->ref.layout_range && c->owner &&
      c->tally && c->q && c->scales)
    return VMEP_OK;
  return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                    "check: dispatch scratch for %zu x %zu rows", experts,
                    rows);
}

static void check_free(struct dispatch_check *c) {
  vmep__free(c->scales);
  vmep__free(c->q);
  vmep__free(c->tally);
  vmep__free(c->owner);
  vmep__free(c->ref.layout_range);
  vmep__free(c->ref.src_info);
  vmep__free(c->ref.recv_count);
}

vmep_status vmep__ref_check_dispatch(const struct vmep_ref_problem *p, int rank,
                                     const struct vmep_ref_recv *impl,
                                     struct vmep_ref_report *report_out) {
  vmep_status st = vmep__ref_validate(p, 0);
  if (st != VMEP_OK)
    return st;
  if (rank < 0 || rank >= p->num_ranks || !report_out || !impl ||
      !impl->recv_x || !impl->recv_count || !impl->src_info ||
      !impl->layout_range || (p->use_fp8 && !impl->recv_scales))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "check: rank %d, a dispatch output or the report is "
                      "missing",
                      rank);
  struct vmep_ref_report report = {0, ""};
  struct dispatch_check c = {.p = p,
                             .rank = rank,
                             .experts = p->num_experts / p->num_ranks,
                             .rows = p->num_ranks * p->max_tokens,
                             .impl = impl,
                             .report = &report};
  st = check_alloc(&c);
  if (st == VMEP_OK)
    st = vmep__ref_dispatch(p, rank, &c.ref);
  for (int l = 0; st == VMEP_OK && l < c.experts; l++)
    check_expert(&c, l);
  check_free(&c);
  if (st == VMEP_OK)
    *report_out = report;
  return st;
}

/* ---- combine ----------------------------------------------------------- */

/* 2^e for -1022 <= e <= 1023, exactly. */
static double pow2(int e) {
  uint64_t bits = (uint64_t)(e + 1023) << 52;
  double value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

/* bf16 bits as a signed integer that counts ulps: neighbours differ by 1,
 * and +0 and -0 are both 0. */
static int32_t bf16_ordinal(uint16_t bits) {
  int32_t mag = bits & 0x7fff;
  return (bits & 0x8000) ? -mag : mag;
}

static int bf16_is_nan(uint16_t bits) { return (bits & 0x7fff) > 0x7f80; }

/* Whether `got` passes against the fp32 sum of `terms` products whose
 * magnitudes add up to abs_sum (the rule in ep.h); `exact`: only the sum's
 * own bits pass (LogFMT, expert_reduce: their reference sums as the
 * kernels do). */
static int combine_close(uint16_t got, float sum, float abs_sum, int terms,
                         int exact) {
  uint16_t want = vmep__bf16_from_float(sum);
  if (bf16_is_nan(got) || bf16_is_nan(want))
    return bf16_is_nan(got) && bf16_is_nan(want);
  if (exact)
    return got == want;
  int32_t distance = bf16_ordinal(got) - bf16_ordinal(want);
  if (distance >= -1 && distance <= 1)
    return 1;
  int exponent = (want >> 7) & 0xff;
  if (exponent == 0xff)
    return 0; /* Inf: only its neighbour passes */
  double ulp = pow2((exponent > 0 ? exponent : 1) - 127 - 7);
  double error = (double)vmep__bf16_to_float(got) - (double)sum;
  if (error < 0)
    error = -error;
  return error <= ulp + terms * pow2(-23) * (double)abs_sum;
}

/* Compares one token's output row with its reference sums. */
static void check_token(const struct vmep_ref_problem *p, int rank, int token,
                        const int64_t *rows, const float *sum,
                        const float *abs_sum, const uint16_t *out,
                        struct vmep_ref_report *report) {
  int terms = 0;
  for (int k = 0; k < p->top_k; k++)
    terms += rows[(size_t)token * p->top_k + k] >= 0;
  const uint16_t *got = out + (size_t)token * (size_t)p->hidden;
  for (size_t h = 0; h < (size_t)p->hidden; h++)
    if (!combine_close(got[h], sum[h], abs_sum[h], terms,
                       p->use_logfmt || p->expert_reduce))
      vmep__ref_mismatch(
          report,
          "rank %d token %d channel %zu: bf16 0x%04x (%.6g), expected "
          "0x%04x (fp32 sum %.9g of %d terms)",
          rank, token, h, got[h], (double)vmep__bf16_to_float(got[h]),
          vmep__bf16_from_float(sum[h]), (double)sum[h], terms);
}

vmep_status vmep__ref_check_combine(const struct vmep_ref_problem *p, int rank,
                                    const struct vmep_ref_recv *recv,
                                    const uint16_t *const *expert_out,
                                    const uint16_t *out,
                                    struct vmep_ref_report *report_out) {
  vmep_status st = vmep__ref_validate(p, 1);
  if (st != VMEP_OK)
    return st;
  if (rank < 0 || rank >= p->num_ranks || !out || !report_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "check: rank %d, its combine output or the report is "
                      "missing",
                      rank);
  size_t tokens = (size_t)p->ranks[rank].num_tokens;
  size_t hidden = (size_t)p->hidden;
  struct vmep_ref_report report = {0, ""};
  int64_t *rows = vmep__malloc((tokens * p->top_k + 1) * sizeof(int64_t));
  float *sum = vmep__malloc(hidden * sizeof(float));
  float *abs_sum = vmep__malloc(hidden * sizeof(float));
  if (!rows || !sum || !abs_sum)
    st = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                    "check: combine of %zu tokens", tokens);
  else
    st = vmep__ref_combine_rows(p, rank, recv, expert_out, rows);
  for (size_t t = 0; st == VMEP_OK && t < tokens; t++) {
    vmep__ref_combine_token(p, rank, rows, expert_out, (int)t, sum, abs_sum);
    check_token(p, rank, (int)t, rows, sum, abs_sum, out, &report);
  }
  vmep__free(abs_sum);
  vmep__free(sum);
  vmep__free(rows);
  if (st == VMEP_OK)
    *report_out = report;
  return st;
}
