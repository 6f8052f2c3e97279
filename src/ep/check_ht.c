/*
 * Checkers that hold an implementation's high-throughput layout, dispatch
 * and combine outputs to the host reference (reference_ht.c). The
 * contract fixes every output to the bit, so each array is compared
 * element by element; the report counts the elements that differ and
 * names the first by array, row and column (and, for a received row, its
 * source token), with both values.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "core/core.h"
#include "ep/reference.h"

/* The element types of the outputs. */
enum elem { ELEM_U8, ELEM_BF16, ELEM_I32, ELEM_I64, ELEM_F32 };

/* One output array as a table of rows x cols elements. */
struct table {
  const char *name, *row_word, *col_word; /* "recv_x", "row", "channel" */
  enum elem type;
  size_t rows, cols;
  const void *got, *want;
  const int32_t *src; /* NULL, or [rows]: each row's recv_src */
};

static size_t elem_size(enum elem type) {
  static const size_t sizes[] = {1, 2, 4, 8, 4};
  return sizes[type];
}

/* Element i of `base` as "0x3f80 (1)": its bits, then its value. */
static void elem_text(enum elem type, const void *base, size_t i, char *buf,
                      size_t size) {
  const uint8_t *at = (const uint8_t *)base + i * elem_size(type);
  uint8_t u8;
  uint16_t u16;
  int32_t i32;
  int64_t i64;
  float f32;
  switch (type) {
  case ELEM_U8:
    memcpy(&u8, at, 1);
    snprintf(buf, size, "0x%02x", u8);
    break;
  case ELEM_BF16:
    memcpy(&u16, at, 2);
    snprintf(buf, size, "0x%04x (%.6g)", u16, (double)vmep__bf16_to_float(u16));
    break;
  case ELEM_I32:
    memcpy(&i32, at, 4);
    snprintf(buf, size, "%" PRId32 " (0x%08" PRIx32 ")", i32, (uint32_t)i32);
    break;
  case ELEM_I64:
    memcpy(&i64, at, 8);
    snprintf(buf, size, "%" PRId64, i64);
    break;
  default:
    memcpy(&f32, at, 4);
    memcpy(&i32, at, 4);
    snprintf(buf, size, "%.9g (0x%08" PRIx32 ")", (double)f32, (uint32_t)i32);
  }
}

/* Compares every element of a table bit for bit. */
static void compare_table(struct vmep_ref_report *report, int rank,
                          const struct table *tb) {
  size_t width = elem_size(tb->type);
  for (size_t i = 0; i < tb->rows * tb->cols; i++) {
    if (memcmp((const uint8_t *)tb->got + i * width,
               (const uint8_t *)tb->want + i * width, width) == 0)
      continue;
    char got[48], want[48], from[48] = "";
    elem_text(tb->type, tb->got, i, got, sizeof(got));
    elem_text(tb->type, tb->want, i, want, sizeof(want));
    if (tb->src) {
      uint32_t src = (uint32_t)tb->src[i / tb->cols];
      snprintf(from, sizeof(from), " (token %u of rank %u)", src >> 16,
               (src >> 5) & 0x7ffu);
    }
    vmep__ref_mismatch(report, "rank %d %s: %s %zu%s, %s %zu: %s, expected %s",
                       rank, tb->name, tb->row_word, i / tb->cols, from,
                       tb->col_word, i % tb->cols, got, want);
  }
}

/* Compares `got` (may be NULL: not checked) with `want`, rows x cols. */
static void compare(struct vmep_ref_report *report, int rank, struct table tb) {
  if (tb.got && tb.rows * tb.cols > 0)
    compare_table(report, rank, &tb);
}

/* Validates what every checker needs. */
static vmep_status check_args(const struct vmep_ref_ht_problem *p, int rank,
                              const void *impl, const void *report_out) {
  vmep_status st = vmep__ref_ht_validate(p);
  if (st != VMEP_OK)
    return st;
  if (rank < 0 || rank >= p->num_ranks || !impl || !report_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "check: rank %d, its outputs or the report is missing",
                      rank);
  return VMEP_OK;
}

static vmep_status scratch_failed(const char *what) {
  return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                    "check: scratch for the reference %s", what);
}

/* ---- layout ------------------------------------------------------------- */

vmep_status vmep__ref_ht_check_layout(const struct vmep_ref_ht_problem *p,
                                      int rank,
                                      const struct vmep_ref_ht_layout *impl,
                                      struct vmep_ref_report *report_out) {
  vmep_status st = check_args(p, rank, impl, report_out);
  if (st != VMEP_OK)
    return st;
  size_t R = (size_t)p->num_ranks, E = (size_t)p->num_experts;
  size_t tokens = (size_t)p->ranks[rank].num_tokens;
  struct vmep_ref_report report = {0, ""};
  struct vmep_ref_ht_layout ref = {vmep__malloc(R * sizeof(int32_t)),
                                   vmep__malloc(E * sizeof(int32_t)),
                                   vmep__malloc(tokens * R + 1)};
  if (!ref.tokens_per_rank || !ref.tokens_per_expert || !ref.in_rank)
    st = scratch_failed("layout");
  else
    st = vmep__ref_ht_layout(p, rank, &ref);
  if (st == VMEP_OK) {
    compare(&report, rank,
            (struct table){"tokens_per_rank", "row", "rank", ELEM_I32, 1, R,
                           impl->tokens_per_rank, ref.tokens_per_rank, NULL});
    compare(&report, rank,
            (struct table){"tokens_per_expert", "row", "expert", ELEM_I32, 1, E,
                           impl->tokens_per_expert, ref.tokens_per_expert,
                           NULL});
    compare(&report, rank,
            (struct table){"in_rank", "token", "rank", ELEM_U8, tokens, R,
                           impl->in_rank, ref.in_rank, NULL});
    *report_out = report;
  }
  vmep__free(ref.in_rank);
  vmep__free(ref.tokens_per_expert);
  vmep__free(ref.tokens_per_rank);
  return st;
}

/* ---- dispatch ----------------------------------------------------------- */

/* Allocates the reference's arrays for `rows` rows; all or nothing. */
static vmep_status recv_alloc(const struct vmep_ref_ht_problem *p, int rows,
                              struct vmep_ref_ht_recv *ref) {
  size_t n = (size_t)rows, H = (size_t)p->hidden, K = (size_t)p->top_k;
  size_t L = (size_t)(p->num_experts / p->num_ranks);
  ref->capacity = rows;
  ref->num_recv = vmep__malloc(sizeof(int32_t));
  ref->recv_expert_count = vmep__malloc(L * sizeof(int32_t));
  ref->recv_x = vmep__malloc(n * H * (p->use_fp8 ? 1 : 2) + 1);
  ref->recv_scales = vmep__malloc(n * (H / VMEP_FP8_GROUP) * sizeof(float) + 1);
  ref->recv_topk_idx = vmep__malloc(n * K * sizeof(int64_t) + 1);
  ref->recv_topk_weights = vmep__malloc(n * K * sizeof(float) + 1);
  ref->recv_src = vmep__malloc(n * sizeof(int32_t) + 1);
  if (ref->num_recv && ref->recv_expert_count && ref->recv_x &&
      ref->recv_scales && ref->recv_topk_idx && ref->recv_topk_weights &&
      ref->recv_src)
    return VMEP_OK;
  return scratch_failed("dispatch");
}

static void recv_free(struct vmep_ref_ht_recv *ref) {
  vmep__free(ref->recv_src);
  vmep__free(ref->recv_topk_weights);
  vmep__free(ref->recv_topk_idx);
  vmep__free(ref->recv_scales);
  vmep__free(ref->recv_x);
  vmep__free(ref->recv_expert_count);
  vmep__free(ref->num_recv);
}

/* Compares every array of `impl` with the reference's `ref`. */
static void compare_recv(const struct vmep_ref_ht_problem *p, int rank,
                         const struct vmep_ref_ht_recv *impl,
                         const struct vmep_ref_ht_recv *ref,
                         struct vmep_ref_report *report) {
  size_t n = (size_t)ref->capacity, H = (size_t)p->hidden;
  size_t K = (size_t)p->top_k, L = (size_t)(p->num_experts / p->num_ranks);
  const int32_t *src = ref->recv_src;
  compare(report, rank,
          (struct table){"num_recv", "row", "col", ELEM_I32, 1, 1,
                         impl->num_recv, ref->num_recv, NULL});
  compare(report, rank,
          (struct table){"recv_expert_count", "row", "expert", ELEM_I32, 1, L,
                         impl->recv_expert_count, ref->recv_expert_count,
                         NULL});
  compare(report, rank,
          (struct table){"recv_src", "row", "col", ELEM_I32, n, 1,
                         impl->recv_src, src, src});
  compare(report, rank,
          (struct table){"recv_x", "row", "channel",
                         p->use_fp8 ? ELEM_U8 : ELEM_BF16, n, H, impl->recv_x,
                         ref->recv_x, src});
  if (p->use_fp8)
    compare(report, rank,
            (struct table){"recv_scales", "row", "group", ELEM_F32, n,
                           H / VMEP_FP8_GROUP, impl->recv_scales,
                           ref->recv_scales, src});
  compare(report, rank,
          (struct table){"recv_topk_idx", "row", "k", ELEM_I64, n, K,
                         impl->recv_topk_idx, ref->recv_topk_idx, src});
  compare(report, rank,
          (struct table){"recv_topk_weights", "row", "k", ELEM_F32, n, K,
                         impl->recv_topk_weights, ref->recv_topk_weights, src});
}

vmep_status vmep__ref_ht_check_dispatch(const struct vmep_ref_ht_problem *p,
                                        int rank,
                                        const struct vmep_ref_ht_recv *impl,
                                        struct vmep_ref_report *report_out) {
  vmep_status st = check_args(p, rank, impl, report_out);
  if (st != VMEP_OK)
    return st;
  if (impl->capacity < 0 || (p->use_fp8 && impl->recv_x && !impl->recv_scales))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "check: rank %d: capacity %d, or fp8 rows without "
                      "recv_scales",
                      rank, impl->capacity);
  int32_t rows = 0;
  struct vmep_ref_ht_recv count_only = {.num_recv = &rows};
  st = vmep__ref_ht_dispatch(p, rank, &count_only);
  if (st != VMEP_OK)
    return st;
  struct vmep_ref_ht_recv ref = {0};
  st = recv_alloc(p, rows < impl->capacity ? rows : impl->capacity, &ref);
  if (st == VMEP_OK)
    st = vmep__ref_ht_dispatch(p, rank, &ref);
  if (st == VMEP_OK) {
    struct vmep_ref_report report = {0, ""};
    compare_recv(p, rank, impl, &ref, &report);
    *report_out = report;
  }
  recv_free(&ref);
  return st;
}

/* ---- combine ------------------------------------------------------------ */

vmep_status
vmep__ref_ht_check_combine(const struct vmep_ref_ht_problem *p,
                           const struct vmep_ref_ht_combine_input *in, int rank,
                           const uint16_t *out, const float *out_topk_weights,
                           struct vmep_ref_report *report_out) {
  vmep_status st = check_args(p, rank, in, report_out);
  if (st != VMEP_OK)
    return st;
  size_t tokens = (size_t)p->ranks[rank].num_tokens, H = (size_t)p->hidden;
  size_t K = (size_t)p->top_k;
  if (!out && tokens > 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "check: rank %d's combine output is NULL", rank);
  uint16_t *want = vmep__malloc(tokens * H * sizeof(uint16_t) + 1);
  float *want_w = vmep__malloc(tokens * K * sizeof(float) + 1);
  if (!want || !want_w)
    st = scratch_failed("combine");
  else
    st = vmep__ref_ht_combine(p, in, rank, want,
                              out_topk_weights ? want_w : NULL);
  if (st == VMEP_OK) {
    struct vmep_ref_report report = {0, ""};
    compare(&report, rank,
            (struct table){"out", "token", "channel", ELEM_BF16, tokens, H, out,
                           want, NULL});
    compare(&report, rank,
            (struct table){"out_topk_weights", "token", "k", ELEM_F32, tokens,
                           K, out_topk_weights, want_w, NULL});
    *report_out = report;
  }
  vmep__free(want_w);
  vmep__free(want);
  return st;
}
