/*
 * vmep-bench, one token count on one rank: random inputs (seeded per rank,
 * so any rank can rebuild any rank's), an optional check against the host
 * reference, then the timing of dispatch and combine with CUDA events
 * (median of many calls after warm-up) and of a device-to-device copy of
 * the same bytes on the same GPU at the same time: the ceiling that the
 * efficiency is measured against.
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "ep/ep.h"

struct buffers {
  uint16_t *x, *expert_out, *out;
  int64_t *topk;
  float *weights, *recv_scales;
  void *recv_x, *copy_src, *copy_dst;
  int *recv_count, *src_info;
  int64_t *layout_range;
};

struct inputs {
  int n;
  uint16_t *x;
  int64_t *topk;
  float *weights;
};

static uint64_t rng_next(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ull;
}

/* Rank `rank`'s inputs: n = T tokens, non-zero bf16 values, K distinct
 * experts per token, positive weights. */
static int make_inputs(const struct bench_options *o, int rank, int tokens,
                       int experts, struct inputs *in) {
  uint64_t s = (o->seed ^ ((uint64_t)rank << 32) ^ (uint64_t)tokens) | 1;
  size_t n = (size_t)tokens, H = (size_t)o->hidden, K = (size_t)o->topk;
  in->n = tokens;
  in->x = malloc(n * H * 2);
  in->topk = malloc(n * K * 8);
  in->weights = malloc(n * K * 4);
  if (!in->x || !in->topk || !in->weights)
    return -1;
  for (size_t i = 0; i < n * H; i++) {
    float mag = ldexpf(0.5f + (float)(rng_next(&s) % 1024) / 1024.0f,
                       (int)(rng_next(&s) % 5) - 2);
    in->x[i] = vmep__bf16_from_float(rng_next(&s) & 1 ? -mag : mag);
  }
  for (size_t t = 0; t < n; t++)
    for (size_t k = 0; k < K; k++) {
      int64_t e;
      int taken;
      do {
        e = (int64_t)(rng_next(&s) % (uint64_t)experts);
        taken = 0;
        for (size_t j = 0; j < k; j++)
          taken |= in->topk[t * K + j] == e;
      } while (taken);
      in->topk[t * K + k] = e;
      in->weights[t * K + k] = (float)(1 + rng_next(&s) % 1000) / 1000.0f;
    }
  return 0;
}

static void free_inputs(struct inputs *in) {
  free(in->x);
  free(in->topk);
  free(in->weights);
}

static vmep_status cuda_check(cudaError_t err, const char *what) {
  if (err == cudaSuccess)
    return VMEP_OK;
  fprintf(stderr, "vmep-bench: %s: %s\n", what, cudaGetErrorString(err));
  return VMEP_ERR_CUDA;
}

static vmep_status alloc_buffers(struct buffers *b, const vmep_ep_config *c,
                                 int ranks, size_t copy_bytes) {
  size_t rows = (size_t)c->num_experts / ranks * ranks * c->max_tokens_per_rank,
         H = (size_t)c->hidden;
  size_t T = (size_t)c->max_tokens_per_rank, K = (size_t)c->max_topk;
  struct {
    void **p;
    size_t bytes;
  } parts[] = {
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
      {&b->copy_src, copy_bytes},
      {&b->copy_dst, copy_bytes},
  };
  memset(b, 0, sizeof(*b));
  for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
    vmep_status st =
        cuda_check(cudaMalloc(parts[i].p, parts[i].bytes + 16), "cudaMalloc");
    if (st != VMEP_OK)
      return st;
    /* 0x3c: bf16 about 0.0115, never zero, for what is read unwritten. */
    st = cuda_check(cudaMemset(*parts[i].p, 0x3c, parts[i].bytes + 16),
                    "cudaMemset");
    if (st != VMEP_OK)
      return st;
  }
  return VMEP_OK;
}

static void free_buffers(struct buffers *b) {
  void *p[] = {b->x,           b->topk,       b->weights,  b->recv_x,
               b->recv_scales, b->recv_count, b->src_info, b->layout_range,
               b->expert_out,  b->out,        b->copy_src, b->copy_dst};
  for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
    cudaFree(p[i]);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Dispatch checked against the reference over every rank's inputs; then,
 * with each expert returning its input (bf16 only), combine checked
 * against sum_k w[t,k] * x[t] within one bf16 ulp. */
static vmep_status check_call(vmep_ep *ep, const struct bench_options *o,
                              const vmep_ep_config *c, int ranks,
                              const struct buffers *b,
                              const vmep_ep_dispatch_args *da) {
  int me = vmep_ep_rank(ep), L = c->num_experts / ranks;
  size_t RT = (size_t)ranks * c->max_tokens_per_rank, H = (size_t)c->hidden;
  struct inputs in[VMEP_LL_MAX_RANKS];
  struct vmep_ref_rank_input ref_in[VMEP_LL_MAX_RANKS];
  vmep_ep_handle h;
  vmep_status st = vmep_ep_dispatch(ep, da, VMEP_EP_SEND_RECV, NULL, &h);
  if (st == VMEP_OK)
    st = cuda_check(cudaDeviceSynchronize(), "dispatch");
  if (st != VMEP_OK)
    return st;
  struct vmep_ref_recv got = {malloc((size_t)L * RT * H * 2),
                              malloc((size_t)L * RT * (H / 128) * 4 + 4),
                              malloc((size_t)L * 4), malloc((size_t)L * RT * 4),
                              malloc((size_t)L * ranks * 8)};
  for (int r = 0; r < ranks; r++) {
    make_inputs(o, r, c->max_tokens_per_rank, c->num_experts, &in[r]);
    struct vmep_ref_rank_input one = {in[r].n, in[r].x, in[r].topk,
                                      in[r].weights};
    ref_in[r] = one;
  }
  cudaMemcpy(got.recv_x, b->recv_x, (size_t)L * RT * H * (o->fp8 ? 1 : 2),
             cudaMemcpyDeviceToHost);
  cudaMemcpy(got.recv_scales, b->recv_scales, (size_t)L * RT * (H / 128) * 4,
             cudaMemcpyDeviceToHost);
  cudaMemcpy(got.recv_count, b->recv_count, (size_t)L * 4,
             cudaMemcpyDeviceToHost);
  cudaMemcpy(got.src_info, b->src_info, (size_t)L * RT * 4,
             cudaMemcpyDeviceToHost);
  cudaMemcpy(got.layout_range, b->layout_range, (size_t)L * ranks * 8,
             cudaMemcpyDeviceToHost);
  struct vmep_ref_problem p = {
      ranks,          c->num_experts, c->max_tokens_per_rank,
      c->hidden,      o->topk,        o->fp8,
      o->round_scale, NULL,           ref_in};
  struct vmep_ref_report rep = {0, ""};
  st = vmep__ref_check_dispatch(&p, me, &got, &rep);
  if (st == VMEP_OK && rep.mismatches) {
    fprintf(stderr,
            "vmep-bench: rank %d dispatch check: %lld mismatches, "
            "first: %s\n",
            me, (long long)rep.mismatches, rep.first);
    st = VMEP_ERR_CUDA;
  }
  if (st == VMEP_OK && !o->fp8) {
    vmep_ep_combine_args ca = {b->recv_x, b->topk, b->weights, b->out};
    st = vmep_ep_combine(ep, &ca, &h, VMEP_EP_SEND_RECV, NULL);
    uint16_t *out = malloc((size_t)in[me].n * H * 2 + 2);
    if (st == VMEP_OK)
      st = cuda_check(cudaMemcpy(out, b->out, (size_t)in[me].n * H * 2,
                                 cudaMemcpyDeviceToHost),
                      "combine");
    for (size_t t = 0; st == VMEP_OK && t < (size_t)in[me].n; t++) {
      float wsum = 0.0f;
      for (int k = 0; k < o->topk; k++)
        wsum += in[me].weights[t * o->topk + k];
      for (size_t h2 = 0; h2 < H; h2++) {
        float x = vmep__bf16_to_float(in[me].x[t * H + h2]);
        float want = vmep__bf16_to_float(vmep__bf16_from_float(wsum * x));
        float have = vmep__bf16_to_float(out[t * H + h2]);
        if (fabsf(have - want) > fabsf(want) * (1.0f / 128.0f)) {
          fprintf(stderr,
                  "vmep-bench: rank %d combine check: token %zu "
                  "channel %zu is %g, expected %g\n",
                  me, t, h2, have, want);
          st = VMEP_ERR_CUDA;
          break;
        }
      }
    }
    free(out);
  } else if (st == VMEP_OK) {
    vmep_ep_combine_args ca = {b->expert_out, b->topk, b->weights, b->out};
    st = vmep_ep_combine(ep, &ca, &h, VMEP_EP_SEND_RECV, NULL);
  }
  for (int r = 0; r < ranks; r++)
    free_inputs(&in[r]);
  free(got.recv_x);
  free(got.recv_scales);
  free(got.recv_count);
  free(got.src_info);
  free(got.layout_range);
  return st == VMEP_OK ? cuda_check(cudaDeviceSynchronize(), "check") : st;
}

/* Medians over `iters` dispatch + combine pairs, each phase on its own:
 * events around dispatch send, dispatch receive, combine send, combine
 * receive (each half launched by itself, as a receive hook would). */
#define PHASES 4

static vmep_status time_calls(vmep_ep *ep, const struct bench_options *o,
                              const vmep_ep_dispatch_args *da,
                              const vmep_ep_combine_args *ca, cudaStream_t s,
                              struct bench_result *res) {
  int n = o->iters;
  cudaEvent_t *ev = calloc((size_t)(PHASES + 1) * n, sizeof(cudaEvent_t));
  double *t = calloc((size_t)PHASES * n, sizeof(double));
  vmep_status st = ev && t ? VMEP_OK : VMEP_ERR_OUT_OF_MEMORY;
  for (int i = 0; st == VMEP_OK && i < (PHASES + 1) * n; i++)
    st = cuda_check(cudaEventCreate(&ev[i]), "cudaEventCreate");
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
    st = cuda_check(cudaStreamSynchronize(s), "timed calls");
  for (int i = 0; st == VMEP_OK && i < n; i++)
    for (int ph = 0; ph < PHASES; ph++) {
      float ms = 0;
      cudaEventElapsedTime(&ms, ev[(PHASES + 1) * i + ph],
                           ev[(PHASES + 1) * i + ph + 1]);
      t[ph * n + i] = ms * 1000.0;
    }
  if (st == VMEP_OK) {
    for (int ph = 0; ph < PHASES; ph++)
      res->phase_us[ph] = median(t + ph * n, n);
    /* A call's time: the median of the sums, not the sum of medians. */
    for (int i = 0; i < n; i++) {
      t[i] = t[i] + t[n + i];
      t[2 * n + i] = t[2 * n + i] + t[3 * n + i];
    }
    res->dispatch_us = median(t, n);
    res->combine_us = median(t + 2 * n, n);
  }
  for (int i = 0; ev && i < (PHASES + 1) * n; i++)
    if (ev[i])
      cudaEventDestroy(ev[i]);
  free(ev);
  free(t);
  return st;
}

/* Copy sets rotated through, so that the copies (and their ceiling) are
 * not served from the 50 MB L2: every set together spans COPY_FOOTPRINT. */
#define COPY_FOOTPRINT ((size_t)256 << 20)

static size_t copy_sets(size_t bytes) {
  size_t sets = COPY_FOOTPRINT / (2 * bytes + 1) + 1;
  /* cppcheck assumes bytes == 0 here; it is a run-time size. */
  // cppcheck-suppress knownConditionTrueFalse
  return sets > 64 ? 64 : sets;
}

/* Median microseconds of a D2D copy of `bytes`, every rank at once: after a
 * barrier, back to back as the calls are timed, rotating the sets. */
static vmep_status time_copy(vmep_group *g, const struct bench_options *o,
                             const struct buffers *b, size_t bytes,
                             cudaStream_t s, double *us) {
  int n = o->iters;
  size_t sets = copy_sets(bytes);
  cudaEvent_t *ev = calloc((size_t)n + 1, sizeof(cudaEvent_t));
  double *t = calloc((size_t)n, sizeof(double));
  vmep_status st = ev && t ? vmep_group_barrier(g) : VMEP_ERR_OUT_OF_MEMORY;
  for (int i = 0; st == VMEP_OK && i <= n; i++)
    st = cuda_check(cudaEventCreate(&ev[i]), "cudaEventCreate");
  for (int i = 0; st == VMEP_OK && i < o->warmup + n; i++) {
    size_t at = (size_t)i % sets * bytes;
    if (i >= o->warmup && i == o->warmup)
      cudaEventRecord(ev[0], s);
    st = cuda_check(cudaMemcpyAsync((char *)b->copy_dst + at,
                                    (char *)b->copy_src + at, bytes,
                                    cudaMemcpyDeviceToDevice, s),
                    "cudaMemcpyAsync");
    if (i >= o->warmup)
      cudaEventRecord(ev[i - o->warmup + 1], s);
  }
  if (st == VMEP_OK)
    st = cuda_check(cudaStreamSynchronize(s), "copies");
  for (int i = 0; st == VMEP_OK && i < n; i++) {
    float ms = 0;
    cudaEventElapsedTime(&ms, ev[i], ev[i + 1]);
    t[i] = ms * 1000.0;
  }
  if (st == VMEP_OK)
    *us = median(t, n);
  for (int i = 0; ev && i <= n; i++)
    if (ev[i])
      cudaEventDestroy(ev[i]);
  free(ev);
  free(t);
  return st;
}

/* One dispatch, its combine buffer filled with the expert outputs, and the
 * combine that releases it: called once per parity before timing. */
static vmep_status fill_zero_copy(vmep_ep *ep, const vmep_ep_dispatch_args *da,
                                  const struct buffers *b, size_t bytes) {
  vmep_ep_handle h;
  void *buf = NULL;
  vmep_status st = vmep_ep_dispatch(ep, da, VMEP_EP_SEND_RECV, NULL, &h);
  if (st == VMEP_OK)
    st = vmep_ep_combine_buffer(ep, &h, &buf);
  if (st == VMEP_OK)
    st = cuda_check(
        cudaMemcpy(buf, b->expert_out, bytes, cudaMemcpyDeviceToDevice),
        "zero-copy buffer");
  vmep_ep_combine_args ca = {buf, b->topk, b->weights, b->out};
  if (st == VMEP_OK)
    st = vmep_ep_combine(ep, &ca, &h, VMEP_EP_SEND_RECV, NULL);
  return st == VMEP_OK ? cuda_check(cudaDeviceSynchronize(), "fill") : st;
}

static vmep_status upload(const struct buffers *b, const struct inputs *in,
                          const struct bench_options *o) {
  size_t n = (size_t)in->n, K = (size_t)o->topk;
  vmep_status st = cuda_check(
      cudaMemcpy(b->x, in->x, n * o->hidden * 2, cudaMemcpyHostToDevice), "x");
  if (st == VMEP_OK)
    st = cuda_check(
        cudaMemcpy(b->topk, in->topk, n * K * 8, cudaMemcpyHostToDevice),
        "topk");
  if (st == VMEP_OK)
    st = cuda_check(
        cudaMemcpy(b->weights, in->weights, n * K * 4, cudaMemcpyHostToDevice),
        "weights");
  return st;
}

/* Times everything with a buffer that exists; the caller destroys it. */
static vmep_status measure(vmep_group *g, vmep_ep *ep,
                           const struct bench_options *o,
                           const vmep_ep_config *c, struct buffers *b,
                           struct bench_result *res) {
  int R = vmep_group_size(g);
  struct inputs in;
  cudaStream_t s = NULL;
  if (make_inputs(o, res->rank, res->tokens, c->num_experts, &in) != 0)
    return VMEP_ERR_OUT_OF_MEMORY;
  vmep_status st = upload(b, &in, o);
  free_inputs(&in);
  vmep_ep_dispatch_args da = {b->x,        b->topk,        res->tokens,
                              o->topk,     o->fp8,         o->round_scale,
                              b->recv_x,   b->recv_scales, b->recv_count,
                              b->src_info, b->layout_range};
  if (st == VMEP_OK && o->check) {
    st = check_call(ep, o, c, R, b, &da);
    res->checked = st == VMEP_OK;
  }
  /* Expert outputs with real values: the received rows themselves, in the
   * caller's tensor and (zero-copy) in both parities' buffers. */
  const size_t eo_bytes = (size_t)c->num_experts * res->tokens * c->hidden * 2;
  if (st == VMEP_OK && !o->fp8)
    st = cuda_check(cudaMemcpy(b->expert_out, b->recv_x, eo_bytes,
                               cudaMemcpyDeviceToDevice),
                    "expert_out");
  for (int parity = 0; st == VMEP_OK && o->zero_copy && parity < 2; parity++)
    st = fill_zero_copy(ep, &da, b, eo_bytes);
  if (st == VMEP_OK)
    st = cuda_check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking),
                    "cudaStreamCreate");
  vmep_ep_combine_args ca = {b->expert_out, b->topk, b->weights, b->out};
  if (st == VMEP_OK)
    st = vmep_group_barrier(g);
  if (st == VMEP_OK)
    st = time_calls(ep, o, &da, &ca, s, res);
  if (st == VMEP_OK)
    st = time_copy(g, o, b, (size_t)res->dispatch_bytes, s,
                   &res->copy_dispatch_us);
  if (st == VMEP_OK)
    st = time_copy(g, o, b, (size_t)res->combine_bytes, s,
                   &res->copy_combine_us);
  if (s)
    cudaStreamDestroy(s);
  return st;
}

vmep_status bench_run_tokens(vmep_group *g, const struct bench_options *o,
                             int tokens, struct bench_result *res) {
  vmep_ep_config c;
  vmep_ep *ep = NULL;
  struct buffers b;
  int R = vmep_group_size(g);
  vmep_ep_config_init(&c);
  c.num_experts = o->experts ? o->experts : 4 * R;
  c.hidden = o->hidden;
  c.max_tokens_per_rank = tokens;
  c.max_topk = o->topk;
  /* Default: this rank's whole share of the GPU (the library caps it to
   * the SMs divided by the ranks sharing the GPU), as the copy ceiling
   * uses the whole GPU too. */
  c.num_sms = o->num_sms ? o->num_sms : 1024;
  c.zero_copy = o->zero_copy;
  memset(res, 0, sizeof(*res));
  res->rank = vmep_group_rank(g);
  res->tokens = tokens;
  /* Every selection is valid here: sel = T * K. */
  double sel = (double)tokens * o->topk, H = o->hidden;
  res->dispatch_bytes = sel * (o->fp8 ? H + H / 128 * 4 + 16 : 2 * H + 16);
  res->combine_bytes = sel * 2 * H;
  vmep_status st = vmep_ep_create(g, &c, &ep);
  if (st != VMEP_OK)
    return st;
  res->num_sms = vmep_ep_num_sms(ep);
  size_t copy =
      (size_t)(res->dispatch_bytes > res->combine_bytes ? res->dispatch_bytes
                                                        : res->combine_bytes);
  /* +1 set: a smaller copy may rotate through a little more. */
  st = alloc_buffers(&b, &c, R, copy * (copy_sets(copy) + 1));
  if (st == VMEP_OK)
    st = measure(g, ep, o, &c, &b, res);
  free_buffers(&b);
  vmep_status destroyed = vmep_ep_destroy(ep);
  return st != VMEP_OK ? st : destroyed;
}
