/*
 * vmep-bench --mode ht, one token count on one rank: the high-throughput
 * dispatch (capacity R*T, so VMEP_EP_SEND_RECV needs no host
 * synchronization) and its combine, timed as the low-latency calls are
 * (CUDA events around each call, median of --iters after --warmup, the
 * calls back to back on one stream; with --cached, the dispatch reuses
 * the layout of a first one, as DeepEP's normal-mode tuning loop does).
 * Bytes follow DeepEP's normal-mode accounting: the N rows this rank
 * received, N * (2H bf16, H + H/32 fp8) per dispatch, and the same N rows
 * of 2H sent back per combine; the link bytes (ht_link_bytes) are what
 * crosses between ranks for them. The ceiling is bench_ceiling.c's;
 * --check verifies the outputs once (bench_ht_check.c).
 */
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "ep/reference.h"

struct ht_buffers {
  uint16_t *x;       /* bf16 [T, H]: this rank's tokens */
  uint8_t *x_fp8;    /* fp8 [T, H]: x quantized on the host (--fp8) */
  float *x_scales;   /* fp8 [T, H/128] */
  int64_t *topk;     /* [T, K] */
  float *weights;    /* [T, K] */
  uint16_t *rows;    /* bf16 [R*T, H]: a bf16 dispatch's recv_x, and the
                        combine's input (rows sent back unchanged) */
  uint8_t *rows_fp8; /* fp8 [R*T, H]: an fp8 dispatch's recv_x */
  float *recv_scales;
  int64_t *recv_topk;
  float *recv_weights;
  int32_t *recv_src, *num_recv, *expert_count;
  int32_t *tokens_per_rank, *tokens_per_expert; /* the layout (--check) */
  uint8_t *in_rank;
  uint16_t *out;      /* bf16 [T, H] */
  float *out_weights; /* [T, K] */
};

#define PARTS 18

/* The table of b's buffers: T tokens, R ranks, E experts (fp8 parts
 * empty without --fp8). */
static void buffer_parts(struct ht_buffers *b, const struct bench_options *o,
                         int T, int R, int E, struct bench_part *out) {
  const size_t t = (size_t)T, rows = (size_t)R * T, H = (size_t)o->hidden,
               K = (size_t)o->topk, f = o->fp8 ? 1 : 0;
  const struct bench_part parts[] = {
      {(void **)&b->x, t * H * 2},
      {(void **)&b->x_fp8, f * t * H},
      {(void **)&b->x_scales, f * t * (H / 128) * 4},
      {(void **)&b->topk, t * K * 8},
      {(void **)&b->weights, t * K * 4},
      {(void **)&b->rows, rows * H * 2},
      {(void **)&b->rows_fp8, f * rows * H},
      {(void **)&b->recv_scales, f * rows * (H / 128) * 4},
      {(void **)&b->recv_topk, rows * K * 8},
      {(void **)&b->recv_weights, rows * K * 4},
      {(void **)&b->recv_src, rows * 4},
      {(void **)&b->num_recv, 4},
      {(void **)&b->expert_count, (size_t)E / R * 4},
      {(void **)&b->tokens_per_rank, (size_t)R * 4},
      {(void **)&b->tokens_per_expert, (size_t)E * 4},
      {(void **)&b->in_rank, t * R},
      {(void **)&b->out, t * H * 2},
      {(void **)&b->out_weights, t * K * 4},
  };
  _Static_assert(sizeof(parts) / sizeof(parts[0]) == PARTS, "PARTS");
  memcpy(out, parts, sizeof(parts));
}

/* The dispatch of our T tokens, in fp8 or bf16, every output asked for. */
static vmep_ep_ht_dispatch_args dispatch_args(const struct ht_buffers *b,
                                              const struct bench_options *o,
                                              int T, int capacity, int fp8) {
  vmep_ep_ht_dispatch_args da;
  vmep_ep_ht_dispatch_args_init(&da);
  da.x = fp8 ? (const void *)b->x_fp8 : b->x;
  da.x_scales = fp8 ? b->x_scales : NULL;
  da.topk_idx = b->topk;
  da.topk_weights = b->weights;
  da.num_tokens = T;
  da.num_topk = o->topk;
  da.use_fp8 = fp8;
  da.num_recv = b->num_recv;
  da.recv_expert_count = b->expert_count;
  da.capacity = capacity;
  da.recv_x = fp8 ? (void *)b->rows_fp8 : b->rows;
  da.recv_scales = fp8 ? b->recv_scales : NULL;
  da.recv_topk_idx = b->recv_topk;
  da.recv_topk_weights = b->recv_weights;
  da.recv_src = b->recv_src;
  return da;
}

/* The combine of the bf16 rows, with the dispatch's weights. */
static vmep_ep_ht_combine_args combine_args(const struct ht_buffers *b) {
  vmep_ep_ht_combine_args ca;
  vmep_ep_ht_combine_args_init(&ca);
  ca.x = b->rows;
  ca.topk_weights = b->recv_weights;
  ca.out = b->out;
  ca.out_topk_weights = b->out_weights;
  return ca;
}

void bench_ht_quantize(const struct bench_options *o,
                       const struct bench_inputs *in, uint8_t *q,
                       float *scales) {
  const size_t H = (size_t)o->hidden;
  for (size_t t = 0; t < (size_t)in->n; t++)
    vmep__fp8_quantize_row(in->x + t * H, o->hidden, o->round_scale, q + t * H,
                           scales + t * (H / 128));
}

/* Our tokens on the device; with --fp8 also quantized on the host
 * (bench_ht_quantize). */
static vmep_status upload(const struct ht_buffers *b,
                          const struct bench_options *o,
                          const struct bench_inputs *in) {
  const size_t n = (size_t)in->n, H = (size_t)o->hidden;
  vmep_status st = bench_upload_inputs(in, o, b->x, b->topk, b->weights);
  uint8_t *q = o->fp8 ? malloc(n * H) : NULL;
  float *scales = o->fp8 ? malloc(n * (H / 128) * 4) : NULL;
  if (st == VMEP_OK && o->fp8 && (!q || !scales))
    st = VMEP_ERR_OUT_OF_MEMORY;
  if (st == VMEP_OK && o->fp8)
    bench_ht_quantize(o, in, q, scales);
  if (st == VMEP_OK && o->fp8)
    st = bench_cuda_check(
        cudaMemcpy(b->x_fp8, q, n * H, cudaMemcpyHostToDevice), "x (fp8)");
  if (st == VMEP_OK && o->fp8)
    st = bench_cuda_check(cudaMemcpy(b->x_scales, scales, n * (H / 128) * 4,
                                     cudaMemcpyHostToDevice),
                          "x_scales");
  free(q);
  free(scales);
  return st;
}

/* --zero-copy: the zero-copy buffer of dispatch `h` for *ca; with `fill`
 * the expert outputs (the dispatched bf16 rows, sent back unchanged)
 * copied into it first. */
static vmep_status in_place(vmep_ep *ep, const struct bench_options *o,
                            const struct ht_buffers *b, cudaStream_t s,
                            const vmep_ep_ht_handle *h, int fill,
                            vmep_ep_ht_combine_args *ca) {
  void *buf = NULL;
  vmep_status st = vmep_ep_ht_combine_buffer(ep, h, &buf, NULL);
  if (st == VMEP_OK && fill)
    st = bench_cuda_check(cudaMemcpyAsync(buf, b->rows,
                                          (size_t)h->capacity * o->hidden * 2,
                                          cudaMemcpyDeviceToDevice, s),
                          "expert outputs into the zero-copy buffer");
  ca->x = buf;
  return st;
}

/* --check, once before timing: the layout and the dispatch against the
 * host reference over every rank's inputs, then the combine of the
 * dispatched bf16 rows sent back unchanged. With --fp8 the fp8 rows
 * cannot be sent back: that dispatch is paired with a combine of whatever
 * `rows` holds, and a bf16 dispatch of the same tokens then fills `rows`
 * for the combine that is checked. */
static vmep_status check_calls(vmep_ep *ep, const struct bench_options *o,
                               int T, int E, const struct ht_buffers *b,
                               const vmep_ep_ht_dispatch_args *da,
                               const vmep_ep_ht_combine_args *given) {
  const int R = vmep_ep_max_ranks(ep), me = vmep_ep_rank(ep);
  const struct bench_ht_outputs dev = {
      b->tokens_per_rank, b->tokens_per_expert, b->in_rank, b->num_recv,
      b->expert_count,    b->recv_src,          da->recv_x, b->recv_scales,
      b->recv_topk,       b->recv_weights,      b->out,     b->out_weights};
  vmep_ep_ht_dispatch_args bf16 = dispatch_args(b, o, T, da->capacity, 0);
  vmep_ep_ht_combine_args ca = *given;
  vmep_ep_ht_handle h;
  vmep_status st =
      vmep_ep_ht_layout(ep, b->topk, T, o->topk, b->tokens_per_rank,
                        b->tokens_per_expert, b->in_rank, NULL);
  if (st == VMEP_OK)
    st = vmep_ep_ht_dispatch(ep, da, VMEP_EP_SEND_RECV, NULL, &h);
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaDeviceSynchronize(), "ht dispatch");
  if (st == VMEP_OK)
    st = bench_ht_check_dispatch(o, R, E, T, me, &dev);
  if (st == VMEP_OK && o->fp8)
    st = vmep_ep_ht_combine(ep, given, &h, NULL);
  if (st == VMEP_OK && o->fp8)
    st = vmep_ep_ht_dispatch(ep, &bf16, VMEP_EP_SEND_RECV, NULL, &h);
  if (st == VMEP_OK && o->zero_copy)
    st = in_place(ep, o, b, NULL, &h, 1, &ca);
  if (st == VMEP_OK)
    st = vmep_ep_ht_combine(ep, &ca, &h, NULL);
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaDeviceSynchronize(), "ht combine");
  if (st == VMEP_OK)
    st = bench_ht_check_combine(o, R, E, T, me, &dev);
  return st;
}

/* Medians over `iters` dispatch + combine pairs after `warmup`: events
 * before the dispatch, between the calls and after the combine. With
 * --cached, a first dispatch and combine (untimed) give the handle that
 * the timed dispatches reuse; with --zero-copy, two more fill both
 * parities' zero-copy buffers, which the timed combines then read. */
static vmep_status time_calls(vmep_ep *ep, const struct bench_options *o,
                              const struct ht_buffers *b,
                              const vmep_ep_ht_dispatch_args *da,
                              const vmep_ep_ht_combine_args *ca, cudaStream_t s,
                              struct bench_result *res) {
  const int n = o->iters;
  cudaEvent_t *ev = NULL;
  double *t = calloc((size_t)2 * n, sizeof(double));
  vmep_ep_ht_dispatch_args timed = *da;
  vmep_ep_ht_combine_args comb = *ca;
  vmep_ep_ht_handle first;
  vmep_status st =
      t ? bench_events_open(&ev, (size_t)3 * n) : VMEP_ERR_OUT_OF_MEMORY;
  if (st == VMEP_OK && o->cached)
    st = vmep_ep_ht_dispatch(ep, da, VMEP_EP_SEND_RECV, s, &first);
  if (st == VMEP_OK && o->cached)
    st = vmep_ep_ht_combine(ep, ca, &first, s);
  for (int i = 0; st == VMEP_OK && o->zero_copy && i < 2; i++) {
    vmep_ep_ht_handle h;
    st = vmep_ep_ht_dispatch(ep, da, VMEP_EP_SEND_RECV, s, &h);
    if (st == VMEP_OK)
      st = in_place(ep, o, b, s, &h, 1, &comb);
    if (st == VMEP_OK)
      st = vmep_ep_ht_combine(ep, &comb, &h, s);
  }
  timed.cached = o->cached ? &first : NULL;
  for (int i = 0; st == VMEP_OK && i < o->warmup + n; i++) {
    vmep_ep_ht_handle h;
    cudaEvent_t *e = i >= o->warmup ? ev + 3 * (i - o->warmup) : NULL;
    if (e)
      cudaEventRecord(e[0], s);
    st = vmep_ep_ht_dispatch(ep, &timed, VMEP_EP_SEND_RECV, s, &h);
    if (e)
      cudaEventRecord(e[1], s);
    if (st == VMEP_OK && o->zero_copy)
      st = in_place(ep, o, b, s, &h, 0, &comb);
    if (st == VMEP_OK)
      st = vmep_ep_ht_combine(ep, &comb, &h, s);
    if (e)
      cudaEventRecord(e[2], s);
  }
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaStreamSynchronize(s), "timed calls");
  for (int i = 0; st == VMEP_OK && i < n; i++)
    for (int k = 0; k < 2; k++)
      t[k * n + i] = bench_events_us(ev[3 * i + k], ev[3 * i + k + 1]);
  if (st == VMEP_OK) {
    res->dispatch_us = bench_median(t, n);
    res->combine_us = bench_median(t + n, n);
  }
  bench_events_close(ev, (size_t)3 * n);
  free(t);
  return st;
}

/*
 * The bytes that cross between ranks per call for the rows this rank
 * receives, after what src/kernels/ht_*.cu move: `rows` rows from other
 * ranks, with `sel` selections of our experts among them. Dispatch pulls
 * from each other rank its token count and, unless cached, the K int32
 * ids of each of its T tokens (to count); then each row (2H, fp8 H +
 * H/32) and, unless cached, the row's K ids and the weight of each
 * selection of ours. Combine pushes each row back (2H) with its K fp32
 * weights and an 8-byte slot mark (zero-copy: the source pulls the row,
 * and a 4-byte row index goes with the mark). Two 8-byte flags per peer
 * and call.
 */
static void ht_link_bytes(const struct bench_options *o, int R, int T,
                          double rows, double sel, double *dispatch,
                          double *combine) {
  const double K = o->topk, peers = R - 1, flags = 2.0 * 8;
  *dispatch = peers * (4 + flags) + rows * bench_row_bytes(o);
  if (!o->cached)
    *dispatch += peers * T * K * 4 + rows * K * 4 + sel * 4;
  *combine = peers * flags +
             rows * (2.0 * o->hidden + K * 4 + 8 + (o->zero_copy ? 4 : 0));
}

/* After the calls: N and the bytes it makes (own[0] rows of them came from
 * us, with own[1] selections of our experts); *errors, the buffer's error
 * bits (an overflow would have dropped rows), printed when set. */
static vmep_status account(vmep_ep *ep, const struct bench_options *o,
                           const struct ht_buffers *b, const double own[2],
                           unsigned *errors, struct bench_result *res) {
  const int R = vmep_ep_max_ranks(ep), L = vmep_ep_num_local_experts(ep);
  uint64_t bad = 0;
  double sel = 0;
  int32_t *count = bench_fetch(b->expert_count, (size_t)L * 4);
  vmep_status st =
      count ? bench_cuda_check(cudaMemcpy(&res->num_recv, b->num_recv, 4,
                                          cudaMemcpyDeviceToHost),
                               "num_recv")
            : VMEP_ERR_OUT_OF_MEMORY;
  for (int l = 0; st == VMEP_OK && l < L; l++)
    sel += count[l];
  free(count);
  if (st == VMEP_OK)
    st = vmep_ep_poll_errors(ep, errors, &bad);
  if (st == VMEP_OK && *errors)
    fprintf(stderr,
            "vmep-bench: rank %d: the ht calls raised error bits 0x%x (4: "
            "rows dropped past the capacity; %llu bad expert ids)\n",
            res->rank, *errors, (unsigned long long)bad);
  const double n = res->num_recv;
  res->dispatch_bytes = n * bench_row_bytes(o);
  res->combine_bytes = n * 2 * o->hidden;
  ht_link_bytes(o, R, res->tokens, n - own[0], sel - own[1],
                &res->dispatch_link_bytes, &res->combine_link_bytes);
  return st;
}

/* Times everything with a buffer that exists; the caller destroys it. */
static vmep_status measure(vmep_group *g, vmep_ep *ep,
                           const struct bench_options *o, int E,
                           const struct ht_buffers *b,
                           struct bench_result *res) {
  const int R = vmep_ep_max_ranks(ep), T = res->tokens;
  double *peers = calloc((size_t)R * 2, sizeof(double));
  struct bench_inputs in;
  cudaStream_t s = NULL;
  unsigned errors = 0;
  memset(&in, 0, sizeof(in));
  vmep_status st = peers && bench_make_inputs(o, res->rank, T, E, &in) == 0
                       ? VMEP_OK
                       : VMEP_ERR_OUT_OF_MEMORY;
  /* Our tokens that stay with us (one row each), and their selections. */
  if (st == VMEP_OK)
    bench_count_peers(o, R, E, res->rank, &in, peers, peers + R);
  const double own[2] = {peers ? peers[res->rank] : 0,
                         peers ? peers[R + res->rank] : 0};
  if (st == VMEP_OK)
    st = upload(b, o, &in);
  bench_free_inputs(&in);
  free(peers);
  vmep_ep_ht_dispatch_args da = dispatch_args(b, o, T, R * T, o->fp8);
  vmep_ep_ht_combine_args ca = combine_args(b);
  if (st == VMEP_OK && o->check) {
    st = check_calls(ep, o, T, E, b, &da, &ca);
    res->checked = st == VMEP_OK;
  }
  if (st == VMEP_OK)
    st = bench_timing_stream(g, &s);
  /* Across nodes: what the proxy puts over the warm-up and timed calls. */
  uint64_t proxy = res->nodes > 1 ? bench_proxy_bytes(ep) : 0;
  if (st == VMEP_OK)
    st = time_calls(ep, o, b, &da, &ca, s, res);
  if (st == VMEP_OK && res->nodes > 1)
    st = bench_proxy_per_call(g, ep, o, proxy, res);
  if (st == VMEP_OK)
    st = account(ep, o, b, own, &errors, res);
  /* The ceiling is collective: taken even when error bits are set (the
   * failure, printed, is returned as the checks return theirs). */
  if (st == VMEP_OK)
    st = bench_time_ceiling(g, o, s, res);
  if (s)
    cudaStreamDestroy(s);
  return st == VMEP_OK && errors ? VMEP_ERR_CUDA : st;
}

vmep_status bench_ht_run_tokens(vmep_group *g, const struct bench_options *o,
                                int tokens, struct bench_result *res) {
  vmep_ep_config c;
  vmep_ep *ep = NULL;
  struct ht_buffers b;
  struct bench_part parts[PARTS];
  bench_start_run(g, o, tokens, &c, res);
  vmep_status st = vmep_ep_create(g, &c, &ep);
  if (st != VMEP_OK)
    return st;
  res->num_sms = vmep_ep_num_sms(ep);
  memset(&b, 0, sizeof(b));
  buffer_parts(&b, o, tokens, vmep_ep_max_ranks(ep), c.num_experts, parts);
  st = bench_alloc_parts(parts, PARTS);
  if (st == VMEP_OK)
    st = measure(g, ep, o, c.num_experts, &b, res);
  bench_free_parts(parts, PARTS);
  return bench_end_run(g, o, ep, c.num_experts, st, res);
}
