/*
 * vmep-bench, one token count on one rank, low-latency calls: random
 * inputs (seeded per rank, so any rank can rebuild any rank's), an
 * optional check against the host reference, then the timing of dispatch
 * and combine with CUDA events (median of many calls after warm-up) and
 * the same-run copy ceiling of the same bytes (bench_ceiling.c): the
 * ceiling that the efficiency is measured against. Across nodes,
 * bench_nodes.c adds the proxy's bytes and the engine's ceiling.
 */
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "ep/reference.h"
#include "kernels/kernels.h"

struct buffers {
  uint16_t *x, *expert_out, *out;
  int64_t *topk;
  float *weights, *recv_scales;
  void *recv_x;
  int *recv_count, *src_info;
  int64_t *layout_range;
};

/* The combine's arguments over `b`, reading expert outputs from
 * `expert_out`. */
static vmep_ep_combine_args combine_args(const struct buffers *b,
                                         const void *expert_out,
                                         const struct bench_options *o) {
  vmep_ep_combine_args ca;
  vmep_ep_combine_args_init(&ca);
  ca.use_logfmt = o->logfmt;
  ca.expert_out = expert_out;
  ca.topk_idx = b->topk;
  /* Reduced at the expert side: the dispatch took the weights. */
  ca.topk_weights = o->reduce ? NULL : b->weights;
  ca.out = b->out;
  return ca;
}

/* The table of b's buffers for `c` over `ranks` ranks. */
#define PARTS 10

static void buffer_parts(struct buffers *b, const vmep_ep_config *c, int ranks,
                         struct bench_part *out) {
  size_t rows = (size_t)c->num_experts / ranks * ranks * c->max_tokens_per_rank,
         H = (size_t)c->hidden;
  size_t T = (size_t)c->max_tokens_per_rank, K = (size_t)c->max_topk;
  const struct bench_part parts[] = {
      {(void **)&b->x, T * H * 2},
      {(void **)&b->topk, T * K * 8},
      {(void **)&b->weights, T * K * 4},
      {&b->recv_x, rows * H * 2},
      {(void **)&b->recv_scales, rows * (H / 128) * 4},
      {(void **)&b->recv_count, rows / ((size_t)ranks * T) * 4},
      {(void **)&b->src_info, rows * 4},
      {(void **)&b->layout_range, rows / T * 8},
      {(void **)&b->expert_out, rows * H * 2},
      {(void **)&b->out, T * H * 2},
  };
  _Static_assert(sizeof(parts) / sizeof(parts[0]) == PARTS, "PARTS");
  memcpy(out, parts, sizeof(parts));
}

/* Dispatch checked against the reference over every rank's inputs; then,
 * with each expert returning its input (bf16 only), combine checked
 * against sum_k w[t,k] * x[t] within one bf16 ulp (LogFMT: exactly, see
 * bench_check_combine). */
static vmep_status check_call(vmep_ep *ep, const struct bench_options *o,
                              const vmep_ep_config *c, int ranks,
                              const struct buffers *b,
                              const vmep_ep_dispatch_args *da) {
  int me = vmep_ep_rank(ep), T = c->max_tokens_per_rank;
  vmep_ep_handle h;
  vmep_status st = vmep_ep_dispatch(ep, da, VMEP_EP_SEND_RECV, NULL, &h);
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaDeviceSynchronize(), "dispatch");
  struct vmep_ref_recv dev = {b->recv_x, b->recv_scales, b->recv_count,
                              b->src_info, b->layout_range};
  if (st == VMEP_OK)
    st = bench_check_dispatch(o, ranks, c->num_experts, T, me, &dev);
  /* bf16: each expert returns its input; fp8: any outputs, unchecked. */
  vmep_ep_combine_args ca =
      combine_args(b, o->fp8 ? (void *)b->expert_out : b->recv_x, o);
  if (st == VMEP_OK)
    st = vmep_ep_combine(ep, &ca, &h, VMEP_EP_SEND_RECV, NULL);
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaDeviceSynchronize(), "combine");
  if (st == VMEP_OK && !o->fp8)
    st = bench_check_combine(o, ranks, me, T, c->num_experts, b->out);
  return st;
}

/* Medians over `iters` dispatch + combine pairs, each phase on its own:
 * events around dispatch send, dispatch receive, combine send, combine
 * receive (each half launched by itself, as a receive hook would). */
#define PHASES 4

static vmep_status time_calls(vmep_ep *ep, const struct bench_options *o,
                              const vmep_ep_dispatch_args *da,
                              const vmep_ep_combine_args *ca, cudaStream_t s,
                              struct bench_result *res) {
  const int n = o->iters, marks = (PHASES + 1) * n;
  cudaEvent_t *ev = NULL;
  double *t = calloc((size_t)PHASES * n, sizeof(double));
  vmep_status st =
      t ? bench_events_open(&ev, (size_t)marks) : VMEP_ERR_OUT_OF_MEMORY;
  for (int i = 0; st == VMEP_OK && i < o->warmup + n; i++) {
    vmep_ep_handle h;
    cudaEvent_t *e =
        i >= o->warmup ? ev + (PHASES + 1) * (i - o->warmup) : NULL;
    if (e)
      cudaEventRecord(e[0], s);
    vmep_ep_combine_args this_ca = *ca;
    st = vmep_ep_dispatch(ep, da, VMEP_EP_SEND, s, &h);
    if (e)
      cudaEventRecord(e[1], s);
    if (st == VMEP_OK)
      st = vmep_ep_dispatch_recv(ep, &h, s);
    if (e)
      cudaEventRecord(e[2], s);
    /* Zero-copy: the experts' outputs are in this parity's buffer. */
    if (st == VMEP_OK && o->zero_copy)
      st = vmep_ep_combine_buffer(ep, &h, (void **)&this_ca.expert_out);
    if (st == VMEP_OK)
      st = vmep_ep_combine(ep, &this_ca, &h, VMEP_EP_SEND, s);
    if (e)
      cudaEventRecord(e[3], s);
    if (st == VMEP_OK)
      st = vmep_ep_combine_recv(ep, &h, s);
    if (e)
      cudaEventRecord(e[4], s);
  }
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaStreamSynchronize(s), "timed calls");
  for (int i = 0; st == VMEP_OK && i < n; i++)
    for (int ph = 0; ph < PHASES; ph++)
      t[ph * n + i] = bench_events_us(ev[(PHASES + 1) * i + ph],
                                      ev[(PHASES + 1) * i + ph + 1]);
  if (st == VMEP_OK) {
    for (int ph = 0; ph < PHASES; ph++)
      res->phase_us[ph] = bench_median(t + ph * n, n);
    /* A call's time: the median of the sums, not the sum of medians. */
    for (int i = 0; i < n; i++) {
      t[i] = t[i] + t[n + i];
      t[2 * n + i] = t[2 * n + i] + t[3 * n + i];
    }
    res->dispatch_us = bench_median(t, n);
    res->combine_us = bench_median(t + 2 * n, n);
  }
  bench_events_close(ev, (size_t)marks);
  free(t);
  return st;
}

/* One dispatch, its combine buffer filled with the expert outputs, and the
 * combine that releases it: called once per parity before timing. */
static vmep_status fill_zero_copy(vmep_ep *ep, const struct bench_options *o,
                                  const vmep_ep_dispatch_args *da,
                                  const struct buffers *b, size_t bytes) {
  vmep_ep_handle h;
  void *buf = NULL;
  vmep_status st = vmep_ep_dispatch(ep, da, VMEP_EP_SEND_RECV, NULL, &h);
  if (st == VMEP_OK)
    st = vmep_ep_combine_buffer(ep, &h, &buf);
  if (st == VMEP_OK)
    st = bench_cuda_check(
        cudaMemcpy(buf, b->expert_out, bytes, cudaMemcpyDeviceToDevice),
        "zero-copy buffer");
  vmep_ep_combine_args ca = combine_args(b, buf, o);
  if (st == VMEP_OK)
    st = vmep_ep_combine(ep, &ca, &h, VMEP_EP_SEND_RECV, NULL);
  return st == VMEP_OK ? bench_cuda_check(cudaDeviceSynchronize(), "fill") : st;
}

/* Times everything with a buffer that exists; the caller destroys it. */
static vmep_status measure(vmep_group *g, vmep_ep *ep,
                           const struct bench_options *o,
                           const vmep_ep_config *c, struct buffers *b,
                           struct bench_result *res) {
  int R = vmep_group_size(g);
  struct bench_inputs in;
  cudaStream_t s = NULL;
  if (bench_make_inputs(o, res->rank, res->tokens, c->num_experts, &in) != 0) {
    bench_free_inputs(&in);
    return VMEP_ERR_OUT_OF_MEMORY;
  }
  bench_link_bytes(o, R, c->num_experts, res->rank, &in,
                   &res->dispatch_link_bytes, &res->combine_link_bytes);
  if (o->reduce) { /* a row per (token, expert rank) */
    double rows[VMEP_LL_MAX_RANKS], sel[VMEP_LL_MAX_RANKS], back = 0;
    bench_count_peers(o, R, c->num_experts, res->rank, &in, rows, sel);
    for (int r = 0; r < R; r++)
      back += rows[r];
    res->combine_bytes = back * bench_combine_row_bytes(o);
  }
  vmep_status st = bench_upload_inputs(&in, o, b->x, b->topk, b->weights);
  bench_free_inputs(&in);
  vmep_ep_dispatch_args da;
  vmep_ep_dispatch_args_init(&da);
  da.x = b->x;
  da.topk_idx = b->topk;
  da.num_tokens = res->tokens;
  da.num_topk = o->topk;
  da.use_fp8 = o->fp8;
  da.round_scale = o->round_scale;
  da.topk_weights = o->reduce ? b->weights : NULL;
  da.recv_x = b->recv_x;
  da.recv_scales = b->recv_scales;
  da.recv_count = b->recv_count;
  da.src_info = b->src_info;
  da.layout_range = b->layout_range;
  if (st == VMEP_OK && o->check) {
    st = check_call(ep, o, c, R, b, &da);
    res->checked = st == VMEP_OK;
  }
  /* Expert outputs with real values: the received rows themselves, in the
   * caller's tensor and (zero-copy) in both parities' buffers. */
  const size_t eo_bytes = (size_t)c->num_experts * res->tokens * c->hidden * 2;
  if (st == VMEP_OK && !o->fp8)
    st = bench_cuda_check(cudaMemcpy(b->expert_out, b->recv_x, eo_bytes,
                                     cudaMemcpyDeviceToDevice),
                          "expert_out");
  for (int parity = 0; st == VMEP_OK && o->zero_copy && parity < 2; parity++)
    st = fill_zero_copy(ep, o, &da, b, eo_bytes);
  if (st == VMEP_OK)
    st = bench_timing_stream(g, &s);
  vmep_ep_combine_args ca = combine_args(b, b->expert_out, o);
  /* Across nodes: what the proxy puts over the warm-up and timed calls. */
  uint64_t proxy = res->nodes > 1 ? bench_proxy_bytes(ep) : 0;
  if (st == VMEP_OK)
    st = time_calls(ep, o, &da, &ca, s, res);
  if (st == VMEP_OK && res->nodes > 1)
    st = bench_proxy_per_call(g, ep, o, proxy, res);
  if (st == VMEP_OK)
    st = bench_time_ceiling(g, o, s, res);
  if (s)
    cudaStreamDestroy(s);
  return st;
}

void bench_start_run(vmep_group *g, const struct bench_options *o, int tokens,
                     vmep_ep_config *c, struct bench_result *res) {
  vmep_ep_config_init(c);
  c->num_experts = bench_experts(o, vmep_group_size(g));
  c->hidden = o->hidden;
  c->max_tokens_per_rank = tokens;
  c->max_topk = o->topk;
  /* Default: this rank's whole share of the GPU (the library caps it to
   * the SMs divided by the ranks sharing the GPU), as the copy ceiling
   * uses the whole GPU too. */
  c->num_sms = o->num_sms ? o->num_sms : 1024;
  /* The high-throughput combine in place uses the slots it already has. */
  c->zero_copy = o->zero_copy && !o->ht;
  memset(res, 0, sizeof(*res));
  res->rank = vmep_group_rank(g);
  res->tokens = tokens;
  res->ht = o->ht;
  bench_nodes_of(g, res);
}

vmep_status bench_run_tokens(vmep_group *g, const struct bench_options *o,
                             int tokens, struct bench_result *res) {
  vmep_ep_config c;
  vmep_ep *ep = NULL;
  struct buffers b;
  struct bench_part parts[PARTS];
  int R = vmep_group_size(g);
  bench_start_run(g, o, tokens, &c, res);
  /* Every selection is valid here: sel = T * K. */
  double sel = (double)tokens * o->topk, H = o->hidden;
  res->dispatch_bytes = sel * (o->fp8 ? H + H / 128 * 4 + 16 : 2 * H + 16);
  res->combine_bytes = sel * bench_combine_row_bytes(o);
  vmep_status st = vmep_ep_create(g, &c, &ep);
  if (st != VMEP_OK)
    return st;
  res->num_sms = vmep_ep_num_sms(ep);
  memset(&b, 0, sizeof(b));
  buffer_parts(&b, &c, R, parts);
  st = bench_alloc_parts(parts, PARTS);
  if (st == VMEP_OK)
    st = measure(g, ep, o, &c, &b, res);
  bench_free_parts(parts, PARTS);
  return bench_end_run(g, o, ep, c.num_experts, st, res);
}
