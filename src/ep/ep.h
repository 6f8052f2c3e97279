/*
 * ep: the expert-parallel layer's private header. The EP buffer, its layout
 * math, peer windows, masks and the host entry points of low-latency
 * dispatch / combine live here, each in its own section, together with the
 * host reference of dispatch and combine that every implementation is
 * checked against (DESIGN.md section 6). Plain C, no CUDA headers, so that
 * CPU tests and GPU tests (.cu, C++) can include it alike.
 */
#ifndef VMEP_EP_H
#define VMEP_EP_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "driver/driver.h"
#include "kernels/kernels.h"
#include "sym/sym.h"

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
  int scale_layout; /* use_fp8: VMEP_EP_SCALES_* of recv_scales (UE8M0
                       needs round_scale and hidden a multiple of 512) */
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
 * rounding error another order could make. Cannot fail.
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
 * the rounding any order or fused multiply-add may add. Returns as
 * vmep__ref_check_dispatch.
 */
vmep_status vmep__ref_check_combine(const struct vmep_ref_problem *p, int rank,
                                    const struct vmep_ref_recv *recv,
                                    const uint16_t *const *expert_out,
                                    const uint16_t *out,
                                    struct vmep_ref_report *report_out);

/* ---- EP buffer: configuration and layout (config.c, layout.c) -------- */

/* VMEP_OK when `config` is valid for a group of `num_ranks`; else
 * VMEP_ERR_INVALID_ARG naming the field and its accepted range. */
vmep_status vmep__ep_config_check(const vmep_ep_config *config, int num_ranks);

/* The layout of one rank's EP buffer for a valid `config` and `num_ranks`
 * (see kernels/kernels.h). Cannot fail. */
void vmep__ep_layout(const vmep_ep_config *config, int num_ranks,
                     struct vmep_ll_layout *layout_out);

/* The ranks of a buffer: config.max_ranks, or the group's size. */
int vmep__ep_ranks(const vmep_ep_config *config, int group_size);

/* ---- the buffer's device (device.c) ---------------------------------- */

/* The device of an EP buffer: its primary context, retained by
 * vmep__ep_device_open for the buffer's life. */
struct vmep_ep_device {
  const struct vmep_driver *drv;
  int device;
  CUdevice dev;
  CUcontext ctx; /* NULL when not open */
};

/* Retains `device`'s primary context into *dev_out; on failure nothing is
 * retained and *dev_out is untouched. */
vmep_status vmep__ep_device_open(int device, struct vmep_ep_device *dev_out);
/* Releases what open retained; a device not open is a no-op. */
void vmep__ep_device_close(struct vmep_ep_device *d);

/* The one device guard: makes the buffer's context current on this thread
 * (for driver calls and for the runtime's kernel launches alike) until
 * vmep__ep_device_leave, which only follows a successful enter. Checked:
 * a failure is VMEP_ERR_CUDA naming the device. */
vmep_status vmep__ep_device_enter(const struct vmep_ep_device *d);
void vmep__ep_device_leave(const struct vmep_ep_device *d);

/* Inside enter / leave: waits for all the device's work; allocates / frees
 * device memory; zeroes it; copies host -> device (put) and device -> host
 * (get). Each returns VMEP_OK or the driver's failure with a message
 * naming `call`, the driver call, the size and the device. */
vmep_status vmep__ep_device_sync(const struct vmep_ep_device *d,
                                 const char *call);
vmep_status vmep__ep_device_alloc(const struct vmep_ep_device *d, size_t bytes,
                                  void **ptr_out, const char *call);
vmep_status vmep__ep_device_free(const struct vmep_ep_device *d, void *ptr);
vmep_status vmep__ep_device_zero(const struct vmep_ep_device *d, void *ptr,
                                 size_t bytes, const char *call);
vmep_status vmep__ep_device_put(const struct vmep_ep_device *d, void *dst,
                                const void *src, size_t bytes,
                                const char *call);
vmep_status vmep__ep_device_get(const struct vmep_ep_device *d, void *dst,
                                const void *src, size_t bytes,
                                const char *call);
/* The device's multiprocessor count (needs no enter). */
vmep_status vmep__ep_device_sms(const struct vmep_ep_device *d, int *sms_out);

/* ---- the EP buffer object (ep.c, ll.c, elastic.c) -------------------- */

struct vmep_ep {
  vmep_group *group;
  vmep_window *window;
  struct vmep_ep_device dev;
  vmep_ep_config config; /* device, num_sms and timeout resolved */
  int rank, num_ranks, local_experts;
  long long timeout_ns;
  struct vmep_ll_layout layout;
  void *arena; /* private device memory: peers, state, routing scratch */
  char **peers;
  struct vmep_ll_state *state;
  int *entries, *counts, *begins, *recv_count_copy;
  unsigned int *row_map;
  uint64_t calls;          /* dispatches so far */
  uint64_t parity_call[2]; /* the dispatch that last used each parity */
  int dispatch_pending[2]; /* send launched, receive not yet */
  struct vmep_ll_dispatch_io pending_dispatch[2];
  int combine_pending[2];
  struct vmep_ll_combine_io pending_combine[2];
  /* membership (elastic.c): who is mapped here, each one's incarnation
   * (from its member record), and our store namespace */
  struct vmep_ll_rank_set connected;
  uint64_t *incarnation; /* [num_ranks]; after a disconnect, a dead rank's
                            (its successor must publish another), else 0 */
  uint64_t *seen;        /* [num_ranks]: the last allgather sequence taken from
                            each rank (elastic.c) */
  uint64_t *seen_from;   /* [num_ranks]: the incarnation (process) whose
                            sequence seen[] holds */
  uint64_t barriers;     /* vmep_ep_barrier calls since the last change */
  int changed;           /* the connected set is not (or no longer) the group */
  int ns_index;          /* among this process's live buffers of one shape */
  char ns[64];
};

/* Membership setup at creation (elastic.c): publishes our member record,
 * masks every rank not connected. Over a fixed group it joins the group's
 * allgather even when `before` (the creation's status so far) is a
 * failure, and then returns that failure. */
vmep_status vmep__ep_membership_init(struct vmep_ep *ep, vmep_status before);
/* Gives the buffer's store name back (after its window is released). */
void vmep__ep_membership_leave(struct vmep_ep *ep);

/* The launch parameters of `ep` for buffer `parity`. Cannot fail. */
void vmep__ep_params(const struct vmep_ep *ep, int parity, int num_topk,
                     struct vmep_ll_params *params_out);

#ifdef __cplusplus
}
#endif

#endif /* VMEP_EP_H */
