/*
 * ep/reference.h: the test oracle of the ep layer. Host numerics (bf16,
 * fp8 e4m3 and the fp8 scales, bit for bit as the kernels compute them),
 * a plain-C reference of dispatch and combine, low-latency and
 * high-throughput, and the checkers that compare an implementation's
 * outputs with it (docs/EP.md).
 * Tests, tools and benchmarks include it; the EP buffer itself does not
 * need it. Plain C, no CUDA headers, so that CPU tests and GPU tests (.cu,
 * C++) can include it alike.
 */
#ifndef VMEP_EP_REFERENCE_H
#define VMEP_EP_REFERENCE_H

#include <stddef.h>
#include <stdint.h>

#include "vmep.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ======================================================================
 * Reference and numerics (numeric.c, reference.c, check.c)
 *
 * bf16 values travel as their bits (uint16_t), fp8 e4m3 values as their
 * code (uint8_t). Every array is a dense host array in row-major order.
 * ==================================================================== */

/* Most top-k entries per token. */
#define VMEP_EP_MAX_TOPK 16
/* Channels that share one fp8 scale. */
#define VMEP_FP8_GROUP 128
/* Largest finite fp8 e4m3 magnitude. */
#define VMEP_FP8_E4M3_MAX 448.0f
/* A group's amax is raised to at least this before its scale is taken, so
 * an all-zero group gets a finite, nonzero scale. */
#define VMEP_FP8_AMAX_FLOOR 1e-4f

/* ---- numerics (numeric.c) ------------------------------------------- */

/*
 * float -> bf16, round to nearest, ties to even: the bits of CUDA's
 * __float2bfloat16_rn on the device and the host. Overflow gives +-Inf,
 * Inf stays Inf, every NaN gives the canonical 0x7fff. Cannot fail.
 */
uint16_t vmep__bf16_from_float(float value);

/* bf16 -> float: exact (the bits shifted up), NaN payloads kept, as
 * __bfloat162float. Cannot fail. */
float vmep__bf16_to_float(uint16_t bits);

/*
 * float -> fp8 e4m3 (OCP "E4M3FN": bias 7, no Inf, NaN = S.1111.111), round
 * to nearest, ties to even, saturating: the bits of the device's
 * __nv_cvt_float_to_fp8(value, __NV_SATFINITE, __NV_E4M3). Magnitudes
 * >= 448 and +-Inf give +-448 (0x7e / 0xfe); subnormals (steps of 2^-9) are
 * rounded, not flushed; the sign of a zero result is kept (0x80 for -0 and
 * tiny negatives); every NaN gives 0x7f. Cannot fail.
 */
uint8_t vmep__fp8_from_float(float value);

/* fp8 e4m3 -> float: exact for the 254 finite codes; 0x7f and 0xff give
 * the quiet NaN 0x7fffffff, as the device's fp8 -> half -> float does.
 * Cannot fail. */
float vmep__fp8_to_float(uint8_t code);

/*
 * The fp8 scale of one group of VMEP_FP8_GROUP bf16 channels: amax = the
 * largest |x| (NaN ignored), raised to VMEP_FP8_AMAX_FLOOR; scale =
 * amax / 448 in fp32 (IEEE division); with round_scale, the scale is
 * rounded up to a power of two, 2^ceil(log2(scale)), exactly. Cannot fail.
 */
float vmep__fp8_group_scale(const uint16_t *group, int round_scale);

/*
 * Quantizes one row of `hidden` (a multiple of VMEP_FP8_GROUP) bf16 values:
 * scales_out[g] = vmep__fp8_group_scale(group g), and q_out[i] =
 * vmep__fp8_from_float(x[i] / scale) with an IEEE fp32 division. A kernel
 * matches bit for bit when it divides (nvcc's default -prec-div=true) or,
 * with round_scale, multiplies by the exact power-of-two reciprocal; a
 * multiplication by 448 / amax does not match. Cannot fail.
 */
void vmep__fp8_quantize_row(const uint16_t *x, int hidden, int round_scale,
                            uint8_t *q_out, float *scales_out);

/* ---- LogFMT rows (logfmt.c; the scalar codec: kernels/logfmt.h) ------ */

/* The header of one group of 128 bf16 values: the bf16 bits of amax (the
 * largest finite magnitude, 0 if none) | those of amin (the smallest
 * nonzero finite one, +Inf if none) << 16. Cannot fail. */
uint32_t vmep__logfmt_header(const uint16_t *group);

/*
 * Encodes one bf16 row of `hidden` channels (a multiple of 128) into the
 * vmep_logfmt_row_bytes(hidden) bytes at `out` (docs/EP.md): field i (sign
 * << 9 | code) at bits [10 i, 10 i + 10) of a little-endian bit stream,
 * then the groups' headers as little-endian uint32. Bit for bit what the
 * combine's send kernel writes into a slot. Cannot fail.
 */
void vmep__logfmt_encode_row(const uint16_t *x, int hidden, uint8_t *out);

/* Decodes an encoded row into `hidden` floats, as the receive kernel
 * does before it weighs them. Cannot fail. */
void vmep__logfmt_decode_row(const uint8_t *row, int hidden, float *out);

/* The decoded values of one group of 128 bf16 values after a trip through
 * LogFMT: what vmep__logfmt_decode_row gives for that group of an encoded
 * row, without the row. Cannot fail. */
void vmep__logfmt_round_trip_group(const uint16_t *group, float *out);

/* ---- reference dispatch / combine (reference.c) ---------------------- */

/* One rank's inputs to a dispatch / combine call. */
struct vmep_ref_rank_input {
  int num_tokens;            /* n, 0 <= n <= max_tokens */
  const uint16_t *x;         /* bf16 [n, hidden] */
  const int64_t *topk_idx;   /* [n, top_k]: expert id, -1 = none */
  const float *topk_weights; /* [n, top_k]: combine only; NULL for dispatch */
};

/*
 * One call over the whole group. R = num_ranks, E = num_experts (a
 * multiple of R), L = E / R local experts per rank, expert e lives on rank
 * e / L as local expert e % L; T = max_tokens, H = hidden, K = top_k.
 *
 * Every (token, k) with topk_idx >= 0 is one selection. A token that lists
 * an expert twice is received twice (two rows, and two terms in combine),
 * so such inputs can exceed an expert's R*T rows; the reference refuses
 * them then. An id >= E or < -1 is skipped and counted as invalid. A
 * selection is skipped when its source rank or its expert's rank is
 * masked: a masked rank neither sends nor receives.
 */
struct vmep_ref_problem {
  int num_ranks;     /* R >= 1 */
  int num_experts;   /* E, a positive multiple of R */
  int max_tokens;    /* T >= 1, R * T < 2^31 */
  int hidden;        /* H >= 1; a multiple of VMEP_FP8_GROUP with use_fp8 */
  int top_k;         /* K, 1..VMEP_EP_MAX_TOPK */
  int use_fp8;       /* dispatch sends fp8 e4m3 rows with fp32 scales */
  int round_scale;   /* fp8 scales rounded up to powers of two */
  const int *masked; /* [R], nonzero = rank masked; NULL: none masked */
  const struct vmep_ref_rank_input *ranks; /* [R] */
  int scale_layout;  /* use_fp8: VMEP_EP_SCALES_* of recv_scales (UE8M0
                        needs round_scale and hidden a multiple of 512) */
  int use_logfmt;    /* combine: expert rows travel as LogFMT (hidden a
                        multiple of 128) */
  int expert_reduce; /* combine: reduced at the expert side (the dispatch
                        was given the weights) */
};

/*
 * One rank's dispatch outputs, as host arrays (a GPU test copies the
 * device's outputs into them). With L local experts and RT = R * T rows
 * per expert: rows [0, recv_count[l]) of expert l are valid, and
 * layout_range[l * R + r] = (begin << 32) | count locates the rows that
 * came from rank r. The checkers only read.
 */
struct vmep_ref_recv {
  void *recv_x;          /* [L, RT, H]: bf16 (uint16_t) or fp8 (uint8_t) */
  float *recv_scales;    /* with use_fp8, H / 128 scales per row in the
                            problem's scale_layout; else unused */
  int32_t *recv_count;   /* [L] */
  int32_t *src_info;     /* [L, RT]: source token index of each valid row */
  int64_t *layout_range; /* [L, R] */
};

/*
 * Stores / loads the scale of channel group g of row `row` (l * R*T + i) in
 * recv_scales, in p->scale_layout (vmep.h). A UE8M0 store keeps the biased
 * exponent only (exact for the power-of-two scales round_scale gives); its
 * load gives that power of two back. Cannot fail.
 */
void vmep__ref_scale_store(const struct vmep_ref_problem *p, float *scales,
                           size_t row, size_t g, float scale);
float vmep__ref_scale_load(const struct vmep_ref_problem *p,
                           const float *scales, size_t row, size_t g);

/* layout_range entries: (begin << 32) | count. */
static inline int64_t vmep__range_pack(uint32_t begin, uint32_t count) {
  return (int64_t)(((uint64_t)begin << 32) | count);
}
static inline uint32_t vmep__range_begin(int64_t range) {
  return (uint32_t)((uint64_t)range >> 32);
}
static inline uint32_t vmep__range_count(int64_t range) {
  return (uint32_t)range;
}

/* What one source rank's selections became. */
struct vmep_ref_send_stats {
  int64_t sent;    /* selections delivered to a live expert rank */
  int64_t masked;  /* valid selections skipped for a masked rank */
  int64_t invalid; /* ids >= E or < -1 */
};

/*
 * Checks the shapes, ranges and pointers of `p` (topk_weights only when
 * `need_weights`). VMEP_OK, or VMEP_ERR_INVALID_ARG naming the field.
 */
vmep_status vmep__ref_validate(const struct vmep_ref_problem *p,
                               int need_weights);

/* Counts rank `rank`'s selections into *stats_out. VMEP_ERR_INVALID_ARG
 * for an invalid problem or rank; *stats_out is then untouched. */
vmep_status vmep__ref_send_stats(const struct vmep_ref_problem *p, int rank,
                                 struct vmep_ref_send_stats *stats_out);

/*
 * Reference dispatch on receiving rank `rank`, in the canonical layout:
 * within each expert the ranges in source-rank order, rows of a range in
 * token order (a token's repeats adjacent, in k order); the begin of an
 * empty range is where it would start. Fills out's recv_count, src_info,
 * layout_range and, when out->recv_x is not NULL, the valid rows (bf16
 * copies, or vmep__fp8_quantize_row with recv_scales). Rows past the count
 * are left untouched. Allocates nothing. VMEP_ERR_INVALID_ARG for an
 * invalid problem or output, or when an expert would receive more than R*T
 * rows; the outputs may then be partly written.
 */
vmep_status vmep__ref_dispatch(const struct vmep_ref_problem *p, int rank,
                               const struct vmep_ref_recv *out);

/*
 * Where each selection of source rank `rank` landed, in the layout an
 * implementation produced: for token t and slot k, rows_out[t * K + k] is
 * the row (l * R*T + i) of the expert rank's expert_out, or -1 when the
 * selection is skipped. recv[d] is rank d's dispatch output (only
 * recv_count, src_info and layout_range are read); expert_out[d] is rank
 * d's bf16 [L, R*T, H] expert outputs. A token's repeats of one expert take
 * that token's rows of the range in row order; rows no selection takes are
 * ignored. The first step of every combine: it validates the problem (with
 * weights), and the layouts and expert outputs of every live rank.
 * VMEP_ERR_INVALID_ARG, naming it, when something is missing, or a layout
 * is malformed or lacks a selection; VMEP_ERR_OUT_OF_MEMORY.
 */
vmep_status vmep__ref_combine_rows(const struct vmep_ref_problem *p, int rank,
                                   const struct vmep_ref_recv *recv,
                                   const uint16_t *const *expert_out,
                                   int64_t *rows_out);

/*
 * One token's combine from rows a successful vmep__ref_combine_rows gave:
 * sum_out[h] = the fp32 sum, in k order, of w[t,k] * expert_out[d][row, h];
 * abs_out[h] (may be NULL) = the fp32 sum of |w * v|, the scale of the
 * rounding error another order could make. With use_logfmt, v is the
 * row's value after a trip through LogFMT and each term is added with one
 * fmaf, in k order: the receive kernel's sum, bit for bit. With
 * expert_reduce, per expert rank in the order of its first selection: its
 * partial sum, one fmaf per selection in k order, rounded to bf16 (with
 * use_logfmt: then through LogFMT), added to the sum; abs_out sums |partial|:
 * the kernels' sums, bit for bit. Cannot fail.
 */
void vmep__ref_combine_token(const struct vmep_ref_problem *p, int rank,
                             const int64_t *rows,
                             const uint16_t *const *expert_out, int token,
                             float *sum_out, float *abs_out);

/*
 * Reference combine on source rank `rank`: out[n, H] bf16 = the rounded
 * vmep__ref_combine_token of every token, given every rank's dispatch
 * layout recv[R] and expert outputs expert_out[R]. Fails as
 * vmep__ref_combine_rows, or with VMEP_ERR_OUT_OF_MEMORY.
 */
vmep_status vmep__ref_combine(const struct vmep_ref_problem *p, int rank,
                              const struct vmep_ref_recv *recv,
                              const uint16_t *const *expert_out, uint16_t *out);

/* ---- checkers (check.c) ------------------------------------------------ */

#define VMEP_REF_REPORT_BYTES 256

/* A checker's verdict: how many things differ, and the first, in words. */
struct vmep_ref_report {
  int64_t mismatches;
  char first[VMEP_REF_REPORT_BYTES]; /* "" when mismatches == 0 */
};

/*
 * Compares rank `rank`'s dispatch outputs `impl` with the reference:
 * recv_count exactly; per expert, ranges disjoint, each contiguous, with the
 * reference's count per source rank, together covering [0, recv_count)
 * (an empty range's begin is free); the src_info of a range the same
 * multiset of tokens as the reference's; every valid row equal to its
 * source token's bf16 row, or to its fp8 quantization with equal scales,
 * bit for bit. Returns VMEP_OK with *report_out filled, or
 * VMEP_ERR_INVALID_ARG / VMEP_ERR_OUT_OF_MEMORY when it cannot check.
 */
vmep_status vmep__ref_check_dispatch(const struct vmep_ref_problem *p, int rank,
                                     const struct vmep_ref_recv *impl,
                                     struct vmep_ref_report *report_out);

/*
 * Compares source rank `rank`'s combine output out[n, H] with the
 * reference over the layouts recv[R] and expert outputs expert_out[R]
 * (as vmep__ref_combine). An element passes when it is within one bf16 ulp
 * of the reference's fp32 sum rounded to bf16, or, for sums that cancel,
 * within one ulp plus (valid terms) * 2^-23 * sum|w * v| of the fp32 sum:
 * the rounding any order or fused multiply-add may add. With use_logfmt
 * or expert_reduce every element must equal the reference's bits (NaN
 * matching any NaN).
 * Returns as vmep__ref_check_dispatch.
 */
vmep_status vmep__ref_check_combine(const struct vmep_ref_problem *p, int rank,
                                    const struct vmep_ref_recv *recv,
                                    const uint16_t *const *expert_out,
                                    const uint16_t *out,
                                    struct vmep_ref_report *report_out);

/* Records one mismatch in `report`: counts it, and keeps the text of the
 * first one (printf format). Cannot fail. */
void vmep__ref_mismatch(struct vmep_ref_report *report, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ======================================================================
 * High-throughput mode (reference_ht.c, check_ht.c)
 *
 * The semantics of vmep.h's vmep_ep_ht_* calls, bit for bit, over the
 * inputs of every rank. Rows are token-major and unpadded: receiving rank
 * d gets one row per (source s, token t) where t has at least one valid
 * expert on d, ordered by s, then t. Arrays are dense host arrays in
 * row-major order, as in the low-latency section.
 * ==================================================================== */

/* One rank's inputs to a high-throughput dispatch. */
struct vmep_ref_ht_rank_input {
  int num_tokens;            /* n, 0 <= n <= max_tokens */
  const void *x;             /* [n, H]: bf16 bits (uint16_t), or fp8 e4m3
                                codes (uint8_t) with use_fp8 */
  const float *x_scales;     /* use_fp8: [n, H / 128]; else unused */
  const int64_t *topk_idx;   /* [n, top_k]: expert id, -1 = none */
  const float *topk_weights; /* [n, top_k], or NULL: every weight 0 */
};

/*
 * One call over the whole group. R, E, L = E / R, T, H, K as in
 * vmep_ref_problem; expert e lives on rank e / L. An id >= E or < -1 is
 * taken as -1 and counted as bad (vmep__ref_ht_bad_experts). A masked
 * rank sends and receives nothing; the layout is computed without masks
 * (it involves no other rank).
 */
struct vmep_ref_ht_problem {
  int num_ranks;        /* R, 1..2048 (recv_src holds the rank in 11 bits) */
  int num_experts;      /* E, a positive multiple of R */
  int max_tokens;       /* T, 1..65536 (recv_src holds t in 16 bits) */
  int hidden;           /* H >= 1; a multiple of VMEP_FP8_GROUP with use_fp8 */
  int top_k;            /* K, 1..VMEP_EP_MAX_TOPK */
  int use_fp8;          /* x is fp8 codes with x_scales */
  int expert_alignment; /* recv_expert_count rounded up to a multiple of it
                           when > 1; 0 or 1: exact */
  const int *masked;    /* [R], nonzero = masked; NULL: none masked */
  const struct vmep_ref_ht_rank_input *ranks; /* [R] */
};

/* One rank's vmep_ep_ht_layout outputs; any may be NULL (not written). */
struct vmep_ref_ht_layout {
  int32_t *tokens_per_rank;   /* [R]: tokens with an expert on the rank */
  int32_t *tokens_per_expert; /* [E]: (token, k) pairs naming the expert */
  uint8_t *in_rank;           /* [n, R]: 1 when the token has an expert on
                                 the rank, else 0 */
};

/*
 * One rank's dispatch outputs (host arrays). The row arrays hold
 * `capacity` rows; any pointer may be NULL: the reference then does not
 * write it, and the checker does not check it (e.g. the recv_topk_* of a
 * cached dispatch, which are not written).
 */
struct vmep_ref_ht_recv {
  int capacity;               /* rows each row array holds, >= 0 */
  int32_t *num_recv;          /* [1]: N, every row, even those dropped */
  int32_t *recv_expert_count; /* [L]: (row, k) per local expert, aligned */
  void *recv_x;               /* [capacity, H]: bf16 bits or fp8 codes */
  float *recv_scales;         /* use_fp8: [capacity, H / 128] */
  int64_t *recv_topk_idx;     /* [capacity, K]: local id, else -1 */
  float *recv_topk_weights;   /* [capacity, K]: the weight, else 0 */
  int32_t *recv_src;          /* [capacity]: (t << 16) | (s << 5) | j */
};

/* One rank's inputs to a high-throughput combine. */
struct vmep_ref_ht_combine_input {
  const uint16_t *x;         /* bf16 [N, H]: the rank's rows, in its
                                dispatch order */
  const float *topk_weights; /* [N, K], or NULL */
  const uint16_t *bias0;     /* bf16 [n, H] for the rank's own tokens, or
                                NULL */
  const uint16_t *bias1;     /* likewise */
};

/* recv_src of the row of token t of rank s, first sent for slot j. */
static inline int32_t vmep__ht_src_pack(int t, int s, int j) {
  return (int32_t)(((uint32_t)t << 16) | ((uint32_t)s << 5) | (uint32_t)j);
}

/* Checks the shapes, ranges and pointers of `p`. VMEP_OK, or
 * VMEP_ERR_INVALID_ARG naming the field. */
vmep_status vmep__ref_ht_validate(const struct vmep_ref_ht_problem *p);

/* *count_out = the ids of rank `rank`'s topk_idx that are >= E or < -1.
 * VMEP_ERR_INVALID_ARG for an invalid problem, rank or count_out. */
vmep_status vmep__ref_ht_bad_experts(const struct vmep_ref_ht_problem *p,
                                     int rank, int64_t *count_out);

/* Rank `rank`'s vmep_ep_ht_layout into the non-NULL fields of `out`.
 * VMEP_ERR_INVALID_ARG for an invalid problem, rank or `out`. */
vmep_status vmep__ref_ht_layout(const struct vmep_ref_ht_problem *p, int rank,
                                const struct vmep_ref_ht_layout *out);

/*
 * Dispatch on receiving rank `rank` into the non-NULL fields of `out`:
 * *num_recv = N and recv_expert_count count every row; rows at or past
 * out->capacity are not written (an overflow; N > capacity says so).
 * Allocates nothing. VMEP_ERR_INVALID_ARG for an invalid problem, rank or
 * `out`.
 */
vmep_status vmep__ref_ht_dispatch(const struct vmep_ref_ht_problem *p, int rank,
                                  const struct vmep_ref_ht_recv *out);

/*
 * Combine on source rank `rank`, given every rank's combine inputs in[R]
 * (the rows of rank r are N_r = its dispatch's N, with no overflow): out
 * [n, H] bf16 and, when not NULL, out_topk_weights [n, K], summed in
 * fp32 over the contributing ranks in the order they first appear in the
 * token's topk_idx, then + bias0 + bias1, rounded once. A masked source's
 * tokens have no contributing rank. VMEP_ERR_INVALID_ARG when the problem,
 * rank or an output is invalid, or a contributing rank's x (or, with
 * out_topk_weights, its topk_weights) is NULL: the outputs may then be
 * partly written; VMEP_ERR_OUT_OF_MEMORY.
 */
vmep_status vmep__ref_ht_combine(const struct vmep_ref_ht_problem *p,
                                 const struct vmep_ref_ht_combine_input *in,
                                 int rank, uint16_t *out,
                                 float *out_topk_weights);

/*
 * Checkers: compare an implementation's outputs with the reference's,
 * element by element and bit for bit, count the elements that differ and
 * describe the first (rank, row or token, column, both values). They
 * return VMEP_OK with *report_out filled, or VMEP_ERR_INVALID_ARG /
 * VMEP_ERR_OUT_OF_MEMORY when they cannot check.
 *
 * vmep__ref_ht_check_layout: every non-NULL field of `impl`.
 * vmep__ref_ht_check_dispatch: every non-NULL field of `impl`, the rows
 *   [0, min(N, impl->capacity)) of the row arrays, N the reference's.
 * vmep__ref_ht_check_combine: out [n, H] and, when not NULL,
 *   out_topk_weights [n, K], with the inputs of vmep__ref_ht_combine.
 */
vmep_status vmep__ref_ht_check_layout(const struct vmep_ref_ht_problem *p,
                                      int rank,
                                      const struct vmep_ref_ht_layout *impl,
                                      struct vmep_ref_report *report_out);
vmep_status vmep__ref_ht_check_dispatch(const struct vmep_ref_ht_problem *p,
                                        int rank,
                                        const struct vmep_ref_ht_recv *impl,
                                        struct vmep_ref_report *report_out);
vmep_status
vmep__ref_ht_check_combine(const struct vmep_ref_ht_problem *p,
                           const struct vmep_ref_ht_combine_input *in, int rank,
                           const uint16_t *out, const float *out_topk_weights,
                           struct vmep_ref_report *report_out);

#ifdef __cplusplus
}
#endif

#endif /* VMEP_EP_REFERENCE_H */
