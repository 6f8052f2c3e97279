/*
 * kernels: the CUDA C kernels of low-latency dispatch and combine, behind
 * extern "C" launchers that return vmep_status and check the launch. No
 * policy here: the ep layer validates arguments, owns the memory and
 * decides what to launch. This header is shared by C and CUDA code.
 *
 * Transport (see docs/EP.md): every rank's EP buffer has the same layout;
 * peers reach it through `peers[r]` (a device array of base addresses).
 * Dispatch is pull-based: a sender stages its tokens once in its own send
 * area and raises a ready flag in each receiver's buffer; receivers read
 * the rows they need and acknowledge. Combine pushes each expert row into
 * the source's per-(token, k) slot (bf16, or LogFMT: kernels/logfmt.h);
 * the source reduces in fp32. Flags hold
 * monotonic epochs per buffer parity, so nothing is ever reset and CUDA
 * graph replays stay consistent.
 */
#ifndef VMEP_KERNELS_H
#define VMEP_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "vmep.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VMEP_LL_MAX_TOPK 16
#define VMEP_LL_MAX_RANKS 1024
/* The dispatch count kernels keep a 4-byte counter per local expert in
 * shared memory: 32 KiB, within the 48 KiB a launch gets unasked. */
#define VMEP_LL_MAX_LOCAL_EXPERTS 8192
#define VMEP_LL_FP8_GROUP 128

/* Device error word bits: the public VMEP_EP_ERR_* of vmep.h, which
 * vmep_ep_poll_errors reports as they are (src/ep/ll.c checks at compile
 * time that the values agree). */
#define VMEP_LL_ERR_BAD_EXPERT 1u /* an expert id >= E or < -1 was skipped */
#define VMEP_LL_ERR_TIMEOUT 2u    /* a rank was masked after a timeout */
#define VMEP_LL_ERR_OVERFLOW 4u   /* high-throughput rows past capacity */

/* Byte offsets of the parts of one rank's EP buffer (identical on all
 * ranks). Flags are uint64 epochs, indexed [parity][peer rank]. */
struct vmep_ll_layout {
  size_t disp_ready; /* written by sender s at [b][s] when send[b] is ready */
  size_t disp_ack;   /* written by receiver d at [b][d] when it read send[b] */
  size_t comb_ready; /* written by expert rank d at [b][d] after its rows */
  size_t comb_ack;   /* written by source s at [b][s] after reducing */
  size_t alive;      /* uint64 heartbeat, advanced by this rank's waits */
  size_t send[2];    /* per parity: header (int32 token count; int32 1 when
                        a low-latency dispatch staged weights), topk
                        [T][K] int32, weights [T][K] fp32, rows [T] */
  size_t send_topk;  /* offset of topk within a send area */
  size_t send_weights;  /* offset of the [T][K] fp32 weights within a send
                           area (high-throughput dispatch, or a low-latency
                           one given weights) */
  size_t send_rows;     /* offset of the rows within a send area */
  size_t row_bytes;     /* one staged row: max(2H, H + 4H/128), 16-aligned */
  size_t slots[2];      /* per parity: combine slots [T][K][H] bf16 */
  size_t where[2];      /* per parity: [T][K] int32, written by the expert
                           ranks: the row (l * R*T + i) each selection of
                           ours landed in */
  size_t ht_mark[2];    /* per parity: [T][K] uint64, written by the expert
                           ranks of a high-throughput combine: the epoch
                           when slot [t][j] holds a row of this call */
  size_t ht_weights[2]; /* per parity: [T][K][K] fp32, the weights sent
                           back with slot [t][j] */
  size_t ht_row[2];     /* per parity: [T][K] int32, the row of a zero-copy
                           high-throughput combine in the sender's slots */
  size_t zero_copy[2];  /* per parity: [L][R*T][H] bf16 expert outputs that
                           sources pull (0 when the buffer has none) */
  size_t total;         /* bytes, a multiple of 4096 */
};

/* Per-rank device state private to the rank (not shared). */
struct vmep_ll_state {
  uint64_t disp_epoch[2];
  uint64_t comb_epoch[2];
  unsigned int done[8];     /* "last block" counters of each kernel */
  unsigned int errors;      /* VMEP_LL_ERR_* bits */
  unsigned int bad_experts; /* selections skipped for a bad expert id */
  int masked[VMEP_LL_MAX_RANKS];
  unsigned long long ring_head; /* requests reserved in the proxy ring */
};

/*
 * Remote peers (docs/INTERNODE.md): kernels never call the RDMA engine.
 * What a remote peer must receive is written into host memory mapped into
 * the device (the staging area, or the outbox of that peer), and one
 * request per phase goes into a ring in host memory that this rank's proxy
 * thread reads: it puts the bytes the request names to every remote peer,
 * then their flag, in that order. What remote peers send lands in this
 * rank's inbox of each (host memory too), at the offsets of the layout.
 */
enum vmep_ll_ship {
  VMEP_LL_SHIP_DISPATCH = 1, /* the staged send area's header, expert ids
                                and the rows each peer selected; then the
                                flag at `offset` */
  VMEP_LL_SHIP_COMBINE = 2,  /* each remote source's slots that our experts
                                filled (from its expert ids in our inbox:
                                every selection of ours, or, when its send
                                area's header says it staged weights, each
                                token's first), into its staging area; then
                                the flag */
  VMEP_LL_SHIP_FLAG = 3,     /* the flag alone */
  /* As VMEP_LL_SHIP_DISPATCH, and the weights: a high-throughput dispatch,
   * or a low-latency one given weights */
  VMEP_LL_SHIP_DISPATCH_WEIGHTS = 4,
  /* Cached high-throughput dispatch (the staged expert ids are not this
   * call's): the header and every staged row */
  VMEP_LL_SHIP_HT_CACHED = 5,
  /* High-throughput combine: each remote source's slots in our outbox of
   * it whose mark is this call's epoch (`value`): the row, the weights and
   * the mark, into its staging area; then the flag */
  VMEP_LL_SHIP_HT_COMBINE = 6,
};

/* A high-throughput combine slot's mark: (epoch << 12) | (the row stays
 * in the sender's window: zero-copy) << 11 | the rank that filled it. */
#define VMEP_HT_MARK_RANK 0x7ffu
#define VMEP_HT_MARK_IN_PLACE (1u << 11)
#define VMEP_HT_MARK_EPOCH_SHIFT 12

#define VMEP_LL_RING_SLOTS 256

/* One request. `seq` is written last (release): slot number + 1. */
struct vmep_ll_ring_entry {
  uint64_t seq;
  uint32_t op;       /* enum vmep_ll_ship */
  uint32_t parity;   /* buffer parity of the call */
  uint32_t num_topk; /* the call's K (the expert-id and slot strides) */
  uint32_t row_len;  /* bytes of each staged row (dispatch) or slot
                        (combine; 0: all of it) that matter */
  uint64_t offset;   /* the flag array: flag [parity][rank] at the peer */
  uint64_t value;    /* the epoch the flag takes */
  uint64_t pad[4];
};

/* The ring, in host memory mapped into the device. The device reserves
 * slots with state->ring_head; the proxy writes `tail` after each request
 * it took. `masked` mirrors state->masked for the proxy, which sends a
 * masked rank no combine rows (the kernels and the host write both). */
struct vmep_ll_ring {
  uint64_t tail;
  uint64_t pad[7];
  struct vmep_ll_ring_entry entries[VMEP_LL_RING_SLOTS];
  uint32_t masked[VMEP_LL_MAX_RANKS];
};

/* Everything a launch needs. Pointers are device pointers. */
struct vmep_ll_params {
  int rank, num_ranks, num_experts, hidden, max_tokens, num_topk;
  int num_blocks; /* the SM budget */
  int parity;     /* buffer parity of this call (0 or 1) */
  long long timeout_ns;
  struct vmep_ll_layout layout;
  /* [num_ranks] where we write what each rank receives: its buffer
   * (mapped peers, ourselves), or our outbox of it (remote peers) */
  char *const *peers;
  /* [num_ranks] where what each rank sent us is read: our own buffer for
   * mapped peers, our inbox of it for remote peers; a remote peer's own
   * parts (send area, heartbeat) are read there too */
  char *const *inbox;
  /* With remote peers (else NULL): the proxy's ring and the host staging
   * area (layout-shaped: the send areas and the heartbeat that go to every
   * remote peer, and the combine slots that remote expert ranks fill) */
  struct vmep_ll_ring *ring;
  char *stage;
  struct vmep_ll_state *state; /* this rank's private state */
  /* routing scratch (private): entries [2][R][T][K] (l << 16 | rank within
   * (source, l), or -1), per-(source, local expert) counts and begins
   * [2][R][L], and the combine map [2][L][R*T] ((t << 16) | (s << 5) | k) */
  int *entries;
  int *counts;
  int *begins;
  unsigned int *row_map;
  int *recv_count_copy; /* [2][L] */
  /* [2][R][T][K]: the weight of each of our selections, entries-shaped,
   * from the sources whose dispatch staged weights; [2][R]: 1 for those
   * sources (their combine is reduced at the expert side) */
  float *sel_weights;
  int *src_weighted;
};

struct vmep_ll_dispatch_io {
  const void *x;           /* bf16 [n, H] */
  const int64_t *topk_idx; /* [n, K] */
  int num_tokens;
  int use_fp8, round_scale;
  const float *topk_weights; /* [n, K] or NULL: staged, so that the expert
                                ranks reduce our combine */
  void *recv_x;              /* bf16 or fp8 [L, R*T, H] */
  float *recv_scales;        /* fp8 only: [L, R*T, H/128] in scale_layout */
  int *recv_count;           /* [L] */
  int *src_info;             /* [L, R*T] */
  int64_t *layout_range;     /* [L, R] */
  int scale_layout;          /* VMEP_EP_SCALES_* */
  int64_t *recv_wait_ns;     /* NULL or [R]: += ns waited for each source */
};

struct vmep_ll_combine_io {
  const void *expert_out;  /* bf16 [L, R*T, H] */
  int zero_copy;           /* expert_out is this rank's zero-copy buffer of the
                              call's parity: sources pull from it */
  const int64_t *topk_idx; /* [n, K] */
  const float *topk_weights; /* [n, K] */
  int num_tokens;
  void *out;             /* bf16 [n, H] */
  int64_t *recv_wait_ns; /* NULL or [R]: += ns waited for each expert rank */
  int use_logfmt;        /* slots hold LogFMT rows (kernels/logfmt.h), not
                            bf16; never with zero_copy */
  int expert_reduce;     /* our dispatch staged weights: each expert rank
                            sent one row per (token, rank), its selections'
                            rows times their weights, summed; recv adds
                            them (topk_weights unused, nothing pulled) */
};

/* Dispatch send phase: waits until every receiver released send[parity],
 * stages the tokens (bf16 copy or fp8 quantization) and raises the ready
 * flags. Asynchronous on `stream` (a cudaStream_t). */
vmep_status vmep__ll_dispatch_send(const struct vmep_ll_params *p,
                                   const struct vmep_ll_dispatch_io *io,
                                   void *stream);

/* Dispatch receive phase: waits for every live sender, routes, pulls the
 * rows into recv_x and acknowledges. */
vmep_status vmep__ll_dispatch_recv(const struct vmep_ll_params *p,
                                   const struct vmep_ll_dispatch_io *io,
                                   void *stream);

/* Combine send phase: pushes every received row's expert output into its
 * source's slot (zero-copy: only to remote sources, mapped ones pull),
 * except for the sources whose dispatch staged weights: each token's
 * weighted sum of its rows into one slot, zero-copy or not; then raises
 * the ready flags. */
vmep_status vmep__ll_combine_send(const struct vmep_ll_params *p,
                                  const struct vmep_ll_combine_io *io,
                                  void *stream);

/* Combine receive phase: waits for every live expert rank, reduces the
 * slots (or, zero-copy, the rows pulled from the expert ranks' buffers) with
 * the weights in fp32 and writes bf16 out; acknowledges. */
vmep_status vmep__ll_combine_recv(const struct vmep_ll_params *p,
                                  const struct vmep_ll_combine_io *io,
                                  void *stream);

/*
 * High-throughput ("normal") mode on the same buffer and flags (docs/HT.md):
 * dispatch stages each token once (its row as given, bf16 or fp8 with its
 * scales, its expert ids and weights) and receivers pull each token once,
 * token-major; combine pushes each received row back into the source's
 * slot [t][j] (j: the first k whose expert is on the sending rank), or,
 * zero-copy, the index of the row in the sender's own slots, marks it with
 * the call's epoch and the weights, and the source sums its marked slots
 * in fp32. The routing scratch of the low-latency calls of
 * the same parity holds the receive positions ([R][T] in `entries`), each
 * source's token count (counts[s * (L + 1) + L]) and begin (begins[s * L]).
 */
struct vmep_ht_dispatch_io {
  const void *x;             /* bf16 or fp8 [n, H] */
  const float *x_scales;     /* fp8: [n, H/128] */
  const int64_t *topk_idx;   /* [n, K]; NULL when cached */
  const float *topk_weights; /* [n, K] or NULL */
  int num_tokens, use_fp8, expert_alignment;
  int cached; /* positions from recv_src / num_recv */
  int capacity;
  int32_t *num_recv;          /* [1] */
  int32_t *recv_expert_count; /* [L] */
  void *recv_x;
  float *recv_scales;
  int64_t *recv_topk_idx;
  float *recv_topk_weights;
  int32_t *recv_src; /* [capacity]: (t << 16) | (s << 5) | j */
};

struct vmep_ht_combine_io {
  const void *x;             /* bf16 [N, H] */
  int zero_copy;             /* x is this rank's slots of the parity: the
                                sources read the rows there */
  const float *topk_weights; /* [N, K] or NULL */
  const int32_t *num_recv;   /* [1] */
  const int32_t *recv_src;   /* [capacity] */
  int capacity;
  int num_tokens;            /* the source's */
  const void *bias0, *bias1; /* bf16 [n, H] or NULL */
  void *out;                 /* bf16 [n, H] */
  float *out_topk_weights;   /* [n, K] or NULL */
};

/* The local routing tables of vmep_ep_ht_layout (no communication). */
vmep_status vmep__ht_layout(const int64_t *topk_idx, int num_tokens,
                            int num_topk, int num_ranks, int num_experts,
                            int32_t *tokens_per_rank,
                            int32_t *tokens_per_expert, uint8_t *in_rank,
                            void *stream);

/* Dispatch send phase (stage, signal) and, unless cached, the count of
 * what this rank receives; then the receive phase (copy, acknowledge). */
vmep_status vmep__ht_dispatch_send(const struct vmep_ll_params *p,
                                   const struct vmep_ht_dispatch_io *io,
                                   void *stream);
vmep_status vmep__ht_dispatch_recv(const struct vmep_ll_params *p,
                                   const struct vmep_ht_dispatch_io *io,
                                   void *stream);
/* Combine: push the rows back, then sum them at the source. */
vmep_status vmep__ht_combine(const struct vmep_ll_params *p,
                             const struct vmep_ht_combine_io *io, void *stream);

/* A set of ranks, one bit each (e.g. those connected to a buffer). */
struct vmep_ll_rank_set {
  uint32_t bits[VMEP_LL_MAX_RANKS / 32];
};

static inline int vmep__rank_set_has(const struct vmep_ll_rank_set *set,
                                     int r) {
  return (set->bits[r / 32] >> (r % 32)) & 1u;
}

static inline void vmep__rank_set_put(struct vmep_ll_rank_set *set, int r,
                                      int on) {
  if (on)
    set->bits[r / 32] |= 1u << (r % 32);
  else
    set->bits[r / 32] &= ~(1u << (r % 32));
}

#ifdef __cplusplus
}
#endif

#endif /* VMEP_KERNELS_H */
