/*
 * vmep-bench: shared declarations of its parts. bench_main.c parses the
 * command line and starts the ranks through vmep-run when no launcher did;
 * bench_run.c times the low-latency dispatch and combine for one token
 * count, bench_ht.c the high-throughput ones (--mode ht, checked by
 * bench_ht_check.c); bench_ceiling.c times the same-run copy ceiling of
 * either; bench_device.c holds their device buffers, events and timing
 * stream; bench_report.c prints the per-rank lines, the summary table and
 * the JSON file; bench_shared.c holds what the NCCL baseline (bench/)
 * shares with it: inputs, checks, the median, the byte accounting;
 * bench_nodes.c adds, across nodes, the proxy's measured bytes and the
 * engine ceiling (bench_engine.c, bench_engine.h).
 */
#ifndef VMEP_BENCH_H
#define VMEP_BENCH_H

#include <stdint.h>
#include <stdio.h>

#include <cuda_runtime_api.h>

#include "vmep.h"

#define BENCH_MAX_SWEEP 16

struct bench_options {
  int ranks; /* ranks to launch when no launcher started us */
  int tokens[BENCH_MAX_SWEEP];
  int num_tokens_values;
  int hidden, topk, experts; /* experts 0: 4 per rank */
  int fp8, round_scale;
  int iters, warmup;
  int check;
  int zero_copy; /* experts write into the buffer's combine area */
  int logfmt;    /* --logfmt: combine rows travel as LogFMT (ll only) */
  int reduce;    /* --expert-reduce: weights given to dispatch, the combine
                    reduced at the expert side (ll only) */
  int num_sms;   /* 0: this rank's whole share of the GPU */
  uint64_t seed;
  const char *json;
  int compare_nccl; /* --compare nccl: the NCCL baseline after vmep */
  int nodes;        /* --nodes N: pretend nodes for vmep-run (0: not given) */
  int own_gpus;     /* set per run: every rank has a GPU of its own */
  int ht;           /* --mode ht: the high-throughput calls (0: --mode ll) */
  int cached;       /* --cached (ht): time the cached dispatch */
};

/* One rank's numbers for one token count. */
struct bench_result {
  int rank, tokens;
  /* Per call. Low-latency: the DeepEP LL accounting, every selection
   * counted (sel * (2H + 16), fp8 sel * (H + H/32 + 16); combine sel * 2H,
   * the rows actually sent back: LogFMT 41H/32 bytes each, reduced at the
   * expert side one per (token, expert rank)).
   * High-throughput (ht): DeepEP's normal-mode accounting, the rows this
   * rank received, num_recv * (2H, fp8 H + H/32), and the same rows sent
   * back for combine, num_recv * 2H. */
  double dispatch_bytes, combine_bytes;
  double dispatch_us, combine_us;           /* median per call */
  double copy_dispatch_us, copy_combine_us; /* same bytes, D2D copy */
  int checked;                              /* 1 passed, 0 not run */
  int num_sms;                              /* blocks per kernel used */
  /* medians of dispatch send, dispatch receive, combine send, combine
   * receive, each launched alone */
  double phase_us[4];
  /* the ceiling used: 0 a D2D copy (ranks share a GPU), 1 the all-pairs
   * peer copy; pair_us: rank 0 -> rank 1 alone, dispatch bytes (rank 0,
   * when own_gpus and 2+ ranks; else 0) */
  int ceiling;
  double pair_us;
  /* Bytes per call that cross to (or are read by) another rank on account
   * of this rank's tokens (bench_link_bytes): what NVLink carries, unlike
   * the DeepEP accounting above, which counts local selections and every
   * selection of a token that dispatch pulls once per receiving rank. */
  double dispatch_link_bytes, combine_link_bytes;
  /* With the peer ceiling: the all-pairs copy of the link bytes, median
   * (0 with the D2D ceiling, which copies the DeepEP bytes above) */
  double copy_dispatch_link_us, copy_combine_link_us;
  /* --compare nccl: the NCCL baseline's medians (0: not run) */
  double nccl_dispatch_us, nccl_combine_us;
  int nccl_checked;
  /* This rank's node and the nodes the ranks span (vmep_group_node). With
   * nodes > 1 (bench_nodes.c): the bytes per call split by node
   * (bench_node_bytes); what this rank's proxy put per call, measured
   * (vmep__ep_remote_bytes_out over the warm-up and timed calls: its own
   * dispatch, the combine rows its experts return to other ranks' tokens,
   * flags and heartbeats); the engine ceiling's medians (bench_engine.h)
   * of this rank's inter-node dispatch and combine bytes. */
  int node, nodes;
  double intra_dispatch_bytes, intra_combine_bytes;
  double inter_dispatch_bytes, inter_combine_bytes;
  double proxy_bytes;
  double engine_dispatch_us, engine_combine_us;
  /* ht: 1 for a high-throughput result; num_recv, the rows this rank
   * received per dispatch (N), read after the timed calls. */
  int ht;
  int num_recv;
};

/* The EP buffer's config for one token count (`tokens` per rank, the
 * options' shape, num_sms the option or this rank's whole share of the
 * GPU) and a result naming the run (rank, tokens, mode, node), its numbers
 * cleared. */
void bench_start_run(vmep_group *g, const struct bench_options *o, int tokens,
                     vmep_ep_config *c, struct bench_result *res);

/* Runs one token count on this rank: creates the buffer, optionally checks
 * against the reference, times, destroys. Prints nothing. */
vmep_status bench_run_tokens(vmep_group *group, const struct bench_options *o,
                             int tokens, struct bench_result *result);

/* The same for the high-throughput calls (bench_ht.c, --mode ht): the
 * dispatch with capacity R*T and VMEP_EP_SEND_RECV, then its combine, no
 * host synchronization between the timed calls; bf16, or fp8 rows with
 * their scales quantized on the host (--fp8). */
vmep_status bench_ht_run_tokens(vmep_group *group,
                                const struct bench_options *o, int tokens,
                                struct bench_result *result);

/* Collective: the same-run ceiling of result's bytes, every rank at once
 * (bench_ceiling.c). With o->own_gpus and 2+ ranks (result->ceiling = 1),
 * the all-pairs peer copy of the link bytes (copy_*_link_us) and of the
 * accounted bytes (copy_*_us, and pair_us on rank 0); else
 * (result->ceiling = 0) a device-to-device copy of the accounted bytes on
 * `stream`, through buffers of its own rotated past L2 (copy_*_us). */
vmep_status bench_time_ceiling(vmep_group *g, const struct bench_options *o,
                               cudaStream_t stream,
                               struct bench_result *result);

/* The multi-GPU ceilings (bench_peer.c), collective, with own_gpus: each
 * rank writes its own `bytes` (they may differ between ranks) split evenly
 * over the other ranks' GPUs, every rank at once (*us: its median); and
 * rank 0 alone writes `bytes` to rank 1 (*pair_us on rank 0; 0 elsewhere
 * or with 1 rank). */
vmep_status bench_time_peer_copy(vmep_group *g, const struct bench_options *o,
                                 size_t bytes, double *us, double *pair_us);

/* The ranks in other nodes (bench_nodes.c). Fills r->node and r->nodes
 * from the group (pretend nodes, VMEP_NODES, or host identity). */
void bench_nodes_of(vmep_group *g, struct bench_result *r);

/* The count of bytes this buffer's proxy has put so far
 * (vmep__ep_remote_bytes_out), read once it has stood still for 2 ms
 * (after the calls, the proxy may still serve their last requests); at
 * most 1 s of waiting. */
uint64_t bench_proxy_bytes(const vmep_ep *ep);

/* Collective, with r->nodes > 1, after the EP buffer is gone: r's byte
 * split by node (bench_node_bytes over this rank's inputs) and the engine
 * ceiling of its inter-node dispatch and combine bytes between the same
 * ranks (o->warmup + o->iters iterations each, medians). */
vmep_status bench_nodes_run(vmep_group *g, const struct bench_options *o,
                            int experts, struct bench_result *r);

/* Collective: once every rank's calls are done, the proxy's bytes per
 * timed or warm-up call since `before`, its count (bench_proxy_bytes)
 * when they began, into r->proxy_bytes. */
vmep_status bench_proxy_per_call(vmep_group *g, const vmep_ep *ep,
                                 const struct bench_options *o, uint64_t before,
                                 struct bench_result *r);

/* The end of a run of either mode, whatever `st` its measurement gave:
 * destroys `ep` and, across nodes with everything well, with the buffer
 * (and its proxy) gone, adds the byte split and the engine's own ceiling
 * (bench_nodes_run). The run's status. */
vmep_status bench_end_run(vmep_group *g, const struct bench_options *o,
                          vmep_ep *ep, int experts, vmep_status st,
                          struct bench_result *r);

/* The NCCL baseline (bench/nccl_run.c, or bench/nccl_none.c without
 * NCCL): 1 when built in; collective: times one token count on the same
 * inputs (checked with o->check), filling r's nccl_* fields.
 * VMEP_ERR_UNSUPPORTED when not built. */
int bench_nccl_built(void);
vmep_status bench_nccl_run_tokens(vmep_group *g, const struct bench_options *o,
                                  int tokens, struct bench_result *r);

/* Per-rank line, as users of other EP libraries know it. `prefix` adds
 * "[rank N] " (when no launcher prefixes lines). */
void bench_print_rank(const struct bench_result *r, int prefix);

/* The NCCL baseline's per-rank line (--compare nccl, nccl-a2a). */
void bench_print_nccl_rank(const struct bench_result *r, int prefix);

/* Rank 0: the summary of every rank's results for every token count. */
void bench_print_summary(const struct bench_options *o,
                         const struct bench_result *all, int ranks, int sweeps);

/* Rank 0: the same as JSON into `path`. 0 on success. */
int bench_write_json(const char *path, const struct bench_options *o,
                     const struct bench_result *all, int ranks, int sweeps);

/* ---- shared with the NCCL baseline (bench_shared.c) ------------------ */

/* One rank's inputs, host arrays: x bf16 [n, H], topk [n, K], weights. */
struct bench_inputs {
  int n;
  uint16_t *x;
  int64_t *topk;
  float *weights;
};

struct vmep_ref_recv;

/* Rank `rank`'s inputs (seeded per rank, so any rank can rebuild any
 * rank's): n = tokens, non-zero bf16 values, K distinct experts per token,
 * positive weights. -1 when out of memory; free with bench_free_inputs
 * either way. */
int bench_make_inputs(const struct bench_options *o, int rank, int tokens,
                      int experts, struct bench_inputs *in);
void bench_free_inputs(struct bench_inputs *in);

/* Per rank r: rows[r], the tokens of `in` (rank me's) that select one of
 * r's experts at least once (a high-throughput dispatch sends r one row
 * for each); sel[r], their selections of r's experts (an invalid expert id
 * counts as me's: the bench draws none). */
void bench_count_peers(const struct bench_options *o, int ranks, int experts,
                       int me, const struct bench_inputs *in, double *rows,
                       double *sel);

/* The bytes of a row as dispatch moves it: 2H bf16, H + H/128*4 fp8 (the
 * e4m3 codes and one fp32 scale per 128 channels). */
double bench_row_bytes(const struct bench_options *o);
/* Bytes of one combine row as it travels: 2H, or LogFMT's 41H/32. */
double bench_combine_row_bytes(const struct bench_options *o);

/* The combine rows a rank's tokens get back: one per selection, or, with
 * o->reduce, one per (token, expert rank), from bench_count_peers' rows
 * and sel of a rank. */
static inline double bench_combine_rows(const struct bench_options *o,
                                        double rows, double sel) {
  return o->reduce ? rows : sel;
}

/* The bytes that cross between ranks per call on account of rank `me`'s
 * inputs `in` (what the kernels in src/kernels/ll_*.cu move; flags
 * included, 8 bytes per peer and signal):
 *  dispatch: each receiver pulls a staged row once per (token, receiver),
 *    however many of its experts chose the token: distinct remote ranks
 *    among a token's experts x (2H bf16, H + H/128*4 fp8); plus the
 *    token count and the K int32 expert ids of every token, read by each
 *    other rank; with zero_copy, the int32 `where` entry each remote
 *    selection's receiver writes back; two flags to each peer;
 *  combine: 2H per selection whose expert is on another rank (pushed into
 *    our slot, or pulled by us with zero_copy); two flags to each peer. */
void bench_link_bytes(const struct bench_options *o, int ranks, int experts,
                      int me, const struct bench_inputs *in, double *dispatch,
                      double *combine);

/* The bytes per call on account of rank `me`'s inputs `in`, split by
 * whether the peer is in our node (node[r]: rank r's node):
 *  intra: what bench_link_bytes counts, over the peers in our node (NVLink,
 *    the peers are mapped);
 *  inter: what the proxies put through the engine (src/ep/proxy.c), over
 *    the peers in other nodes: dispatch, per remote rank, the send area's
 *    header up to the expert ids (the layout's send_topk bytes) and the
 *    int32 ids of every token, then our row once per token that selects
 *    one of its experts (2H bf16, H + H/128*4 fp8), and two 8-byte flags
 *    (our ready, its ack); combine, 2H per selection of ours whose expert
 *    is on that rank (its proxy pushes them to us), and two flags.
 * dispatch_to[r] and combine_from[r] (the caller's [ranks] arrays) get
 * those data bytes without flags per remote rank r, 0 for ranks in our
 * node: what the engine ceiling puts (bench_engine.h). Heartbeats (8 B per
 * remote peer, at most every 100 us) are left out. */
struct bench_node_bytes {
  double intra_dispatch, intra_combine;
  double inter_dispatch, inter_combine;
  double *dispatch_to, *combine_from;
};
void bench_node_bytes(const struct bench_options *o, int ranks, int experts,
                      int me, const int *node, const struct bench_inputs *in,
                      struct bench_node_bytes *out);

/* VMEP_OK, or VMEP_ERR_CUDA after printing "<program>: what: error". */
vmep_status bench_cuda_check(cudaError_t err, const char *what);

/* The experts of a run over `ranks` ranks: --experts, else 4 per rank but
 * at least top-k (rounded up to a multiple of the ranks), since each token
 * draws K distinct experts (bench_make_inputs would draw forever). */
int bench_experts(const struct bench_options *o, int ranks);

/* 1, after printing why, when --experts is below top-k. */
int bench_experts_refused(const struct bench_options *o, const char *prog);

/* The defaults: 128 tokens, hidden 7168, top-k 8, 100 iterations after
 * 10 warm-up calls, seed 1, everything else 0. */
void bench_options_defaults(struct bench_options *o);

/* ---- the shared options (bench_args.c) ------------------------------- */

enum bench_arg {
  BENCH_ARG_FLAG,    /* a flag: the next argument is not its value */
  BENCH_ARG_VALUE,   /* the option took the next argument as its value */
  BENCH_ARG_UNKNOWN, /* not a shared option: the caller's to handle */
  BENCH_ARG_BAD      /* refused, after one line on stderr */
};

/* Parses `value` (NULL when the command line ends) for option `opt` as an
 * integer in [min, max], a multiple of `multiple`, into *out. VALUE, or BAD
 * after printing "PROG: OPT VALUE: expected <rule>". */
enum bench_arg bench_int_option(const char *prog, const char *opt,
                                const char *value, long long min, long long max,
                                long long multiple, int *out);

/* Parses `opt` (with the next argument `value`, NULL when none) if it is
 * one of the options vmep-bench and nccl-a2a share: --tokens, --hidden,
 * --topk, --experts, --iters, --warmup, --seed, --fp8, --round-scale,
 * --check. Returns what happened; BAD has printed one line naming the
 * option, its value and the rule. */
enum bench_arg bench_parse_shared_option(const char *prog, const char *opt,
                                         const char *value,
                                         struct bench_options *o);

/* 1 when a launcher (vmep-run, torchrun, mpirun, Slurm) started us. */
int bench_under_launcher(void);

/* Collective: *shared_out = 1 when two ranks use one GPU (same host name,
 * same PCI bus id of their current device), on every rank. */
vmep_status bench_gpu_sharing(vmep_group *g, int *shared_out);

/* Copies `bytes` of device memory into a new host buffer, 16 bytes
 * longer (free it); NULL when out of memory or after printing a failed
 * copy. */
void *bench_fetch(const void *dev, size_t bytes);

/* Sorts v[n] and returns its median. */
double bench_median(double *v, int n);

/* Rank `me`'s dispatch outputs (device pointers in `dev`; recv_scales only
 * read with fp8) against the host reference over every rank's inputs.
 * VMEP_OK when they match; VMEP_ERR_CUDA after printing the first
 * mismatch or a failed copy. */
vmep_status bench_check_dispatch(const struct bench_options *o, int ranks,
                                 int experts, int tokens, int me,
                                 const struct vmep_ref_recv *dev);

/* Rank `me`'s combine output out_dev bf16 [tokens, H] with identity
 * experts against sum_k w[t,k] * x[t], element by element, within one
 * bf16 ulp; with o->logfmt or o->reduce, bit for bit against the kernels'
 * sums (of x[t] after a trip through LogFMT; of each expert rank's partial
 * sum rounded to bf16). VMEP_ERR_CUDA after printing the first
 * difference. */
vmep_status bench_check_combine(const struct bench_options *o, int ranks,
                                int me, int tokens, int experts,
                                const void *out_dev);

/* ---- the high-throughput --check (bench_ht_check.c) ----------------- */

/* in's x (bf16 [n, H]) as the caller of an fp8 dispatch brings it,
 * quantized on the host per row and 128 channels (vmep__fp8_quantize_row,
 * o->round_scale): q [n, H] e4m3 codes, scales [n, H / 128]. In
 * bench_ht.c, which uploads them; the check gives the reference every
 * rank's inputs quantized by it too. Cannot fail. */
void bench_ht_quantize(const struct bench_options *o,
                       const struct bench_inputs *in, uint8_t *q,
                       float *scales);

/* Rank me's high-throughput outputs (device pointers): the layout of its
 * tokens, a dispatch of `tokens` per rank with capacity ranks * tokens, and
 * the combine of the dispatched rows sent back unchanged (bf16), with the
 * dispatch's recv_topk_weights as its weights. */
struct bench_ht_outputs {
  const int32_t *tokens_per_rank, *tokens_per_expert; /* vmep_ep_ht_layout */
  const uint8_t *in_rank;
  const int32_t *num_recv, *expert_count, *recv_src;
  const void *recv_x; /* bf16, or fp8 with recv_scales */
  const float *recv_scales;
  const int64_t *recv_topk;
  const float *recv_weights;
  const uint16_t *out;
  const float *out_weights;
};

/* The layout and the dispatch (fp8 with o->fp8) against the host
 * reference over every rank's inputs (vmep__ref_ht_check_layout,
 * vmep__ref_ht_check_dispatch): every field, every row up to N, bit for
 * bit. VMEP_ERR_CUDA after printing, per call, how many elements
 * mismatched and the first; the status of a check that could not run
 * (no host memory, a failed copy) after saying so. */
vmep_status bench_ht_check_dispatch(const struct bench_options *o, int ranks,
                                    int experts, int tokens, int me,
                                    const struct bench_ht_outputs *dev);

/* The combine (out and out_weights) against vmep__ref_ht_check_combine,
 * bit for bit, each rank's input being the bf16 rows the reference
 * dispatches to it with their recv_topk_weights. Fails as
 * bench_ht_check_dispatch. */
vmep_status bench_ht_check_combine(const struct bench_options *o, int ranks,
                                   int experts, int tokens, int me,
                                   const struct bench_ht_outputs *dev);

/* ---- device resources (bench_device.c) --------------------------------- */

/* One device buffer to allocate: where its pointer goes, and its bytes. */
struct bench_part {
  void **p;
  size_t bytes;
};

/* cudaMalloc's every part (16 bytes more, for tails read in whole vectors)
 * and fills it with 0x3c bytes (bf16 about 0.0115: never zero, so that
 * what is read unwritten is not mistaken for a result). Stops at the first
 * failure, printed; the caller frees with bench_free_parts either way
 * (parts not reached stay NULL: clear the pointers first). */
vmep_status bench_alloc_parts(const struct bench_part *parts, size_t n);
void bench_free_parts(const struct bench_part *parts, size_t n);

/* Copies in's x (bf16 [n, H]), top-k ids and weights to x, topk and
 * weights (device; x may be NULL to skip it). */
vmep_status bench_upload_inputs(const struct bench_inputs *in,
                                const struct bench_options *o, void *x,
                                int64_t *topk, float *weights);

/* n CUDA events in a new array (close it with bench_events_close): on
 * failure, printed, nothing stays and *ev is NULL. */
vmep_status bench_events_open(cudaEvent_t **ev, size_t n);
void bench_events_close(cudaEvent_t *ev, size_t n);

/* Microseconds from event `from` to event `to`, both completed (0 when
 * they cannot be read). */
double bench_events_us(cudaEvent_t from, cudaEvent_t to);

/* Collective: a new non-blocking stream for the timed calls (*s; destroy
 * it when set, even on failure), then a barrier, so that every rank starts
 * timing together. */
vmep_status bench_timing_stream(vmep_group *g, cudaStream_t *s);

#endif /* VMEP_BENCH_H */
