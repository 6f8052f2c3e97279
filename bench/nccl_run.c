/*
 * One token count of the NCCL baseline on one rank, as vmep-bench runs
 * vmep: the same seeded inputs, an optional check against the host
 * reference (dispatch) and identity experts (combine), then CUDA events
 * around each dispatch and each combine, the median of the timed calls.
 * Used by nccl-a2a and by vmep-bench --compare nccl.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "ep/reference.h"
#include "nccl_a2a.h"

/* The tensors of one call, carved from one allocation. */
struct tensors {
  void *arena, *x, *recv_x, *expert_out, *out;
  int64_t *topk, *layout_range;
  float *weights, *recv_scales;
  int32_t *recv_count, *src_info;
};

static vmep_status carve(struct tensors *t, const struct bench_options *o,
                         int ranks, int experts, int tokens) {
  size_t T = (size_t)tokens, K = (size_t)o->topk, H = (size_t)o->hidden;
  size_t L = (size_t)(experts / ranks), rows = L * ranks * T;
  size_t sizes[] = {
      T * H * 2, T * K * 8, T * K * 4,     rows * H * 2, rows * (H / 128) * 4,
      L * 4,     rows * 4,  L * ranks * 8, rows * H * 2, T * H * 2};
  void **ptrs[] = {&t->x,
                   (void **)&t->topk,
                   (void **)&t->weights,
                   &t->recv_x,
                   (void **)&t->recv_scales,
                   (void **)&t->recv_count,
                   (void **)&t->src_info,
                   (void **)&t->layout_range,
                   &t->expert_out,
                   &t->out};
  size_t total = 0;
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
    total += (sizes[i] + 255) / 256 * 256;
  vmep_status st =
      bench_cuda_check(cudaMalloc(&t->arena, total), "cudaMalloc (tensors)");
  /* 0x3c: bf16 about 0.0115, never zero, for what is read unwritten. */
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaMemset(t->arena, 0x3c, total), "cudaMemset");
  for (size_t i = 0, at = 0;
       st == VMEP_OK && i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    *ptrs[i] = (char *)t->arena + at;
    at += (sizes[i] + 255) / 256 * 256;
  }
  return st;
}

static vmep_status fill(const struct tensors *t, const struct bench_options *o,
                        int rank, int experts, int tokens) {
  struct bench_inputs in;
  size_t T = (size_t)tokens, K = (size_t)o->topk;
  vmep_status st = bench_make_inputs(o, rank, tokens, experts, &in) == 0
                       ? VMEP_OK
                       : VMEP_ERR_OUT_OF_MEMORY;
  if (st == VMEP_OK)
    st = bench_cuda_check(
        cudaMemcpy(t->x, in.x, T * o->hidden * 2, cudaMemcpyHostToDevice),
        "cudaMemcpy (x)");
  if (st == VMEP_OK)
    st = bench_cuda_check(
        cudaMemcpy(t->topk, in.topk, T * K * 8, cudaMemcpyHostToDevice),
        "cudaMemcpy (topk)");
  if (st == VMEP_OK)
    st = bench_cuda_check(
        cudaMemcpy(t->weights, in.weights, T * K * 4, cudaMemcpyHostToDevice),
        "cudaMemcpy (weights)");
  bench_free_inputs(&in);
  return st;
}

static vmep_status dispatch(nccl_a2a *a, const struct tensors *t, int tokens,
                            cudaStream_t s) {
  return nccl_a2a_dispatch(a, t->x, t->topk, tokens, t->recv_x, t->recv_scales,
                           t->recv_count, t->src_info, t->layout_range, s);
}

/* Identity experts in bf16 (combine reads recv_x); fp8: the filler. */
static const void *expert_out(const struct tensors *t,
                              const struct bench_options *o) {
  return o->fp8 ? t->expert_out : t->recv_x;
}

static vmep_status check(nccl_a2a *a, const struct tensors *t,
                         const struct bench_options *o, int ranks, int rank,
                         int experts, int tokens) {
  struct vmep_ref_recv dev = {t->recv_x, t->recv_scales, t->recv_count,
                              t->src_info, t->layout_range};
  vmep_status st = dispatch(a, t, tokens, NULL);
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaDeviceSynchronize(), "dispatch (check)");
  if (st == VMEP_OK)
    st = bench_check_dispatch(o, ranks, experts, tokens, rank, &dev);
  if (st == VMEP_OK)
    st = nccl_a2a_combine(a, expert_out(t, o), t->weights, t->out, NULL);
  if (st == VMEP_OK)
    st = bench_cuda_check(cudaDeviceSynchronize(), "combine (check)");
  if (st == VMEP_OK && !o->fp8)
    st = bench_check_combine(o, ranks, rank, tokens, experts, t->out);
  return st;
}

/* Medians over o->iters dispatch + combine pairs after o->warmup. */
static vmep_status time_calls(nccl_a2a *a, const struct tensors *t,
                              const struct bench_options *o, int tokens,
                              cudaStream_t s, struct bench_result *res) {
  int n = o->iters;
  cudaEvent_t ev[3] = {NULL, NULL, NULL};
  double *us = calloc(2 * (size_t)n, sizeof(double));
  vmep_status st = us ? VMEP_OK : VMEP_ERR_OUT_OF_MEMORY;
  for (int i = 0; st == VMEP_OK && i < 3; i++)
    st = bench_cuda_check(cudaEventCreate(&ev[i]), "cudaEventCreate");
  for (int i = 0; st == VMEP_OK && i < o->warmup + n; i++) {
    float ms[2] = {0, 0};
    st = bench_cuda_check(cudaEventRecord(ev[0], s), "cudaEventRecord");
    if (st == VMEP_OK)
      st = dispatch(a, t, tokens, s);
    if (st == VMEP_OK)
      st = bench_cuda_check(cudaEventRecord(ev[1], s), "cudaEventRecord");
    if (st == VMEP_OK)
      st = nccl_a2a_combine(a, expert_out(t, o), t->weights, t->out, s);
    if (st == VMEP_OK)
      st = bench_cuda_check(cudaEventRecord(ev[2], s), "cudaEventRecord");
    if (st == VMEP_OK)
      st =
          bench_cuda_check(cudaEventSynchronize(ev[2]), "cudaEventSynchronize");
    if (st == VMEP_OK && i >= o->warmup) {
      cudaEventElapsedTime(&ms[0], ev[0], ev[1]);
      cudaEventElapsedTime(&ms[1], ev[1], ev[2]);
      us[i - o->warmup] = ms[0] * 1000.0;
      us[n + i - o->warmup] = ms[1] * 1000.0;
    }
  }
  if (st == VMEP_OK) {
    res->nccl_dispatch_us = bench_median(us, n);
    res->nccl_combine_us = bench_median(us + n, n);
  }
  for (int i = 0; i < 3; i++)
    if (ev[i])
      cudaEventDestroy(ev[i]);
  free(us);
  return st;
}

int bench_nccl_built(void) { return 1; }

vmep_status bench_nccl_run_tokens(vmep_group *g, const struct bench_options *o,
                                  int tokens, struct bench_result *res) {
  int R = vmep_group_size(g), rank = vmep_group_rank(g);
  int E = bench_experts(o, R);
  struct tensors t;
  nccl_a2a *a = NULL;
  cudaStream_t s = NULL;
  memset(&t, 0, sizeof(t));
  /* Each token draws K distinct experts (bench_make_inputs), which never
   * ends with fewer than K: refuse rather than hang. */
  if (E < o->topk) {
    fprintf(stderr, "%s: %d experts, fewer than top-k %d\n",
            program_invocation_short_name, E, o->topk);
    return VMEP_ERR_INVALID_ARG;
  }
  vmep_status st = carve(&t, o, R, E, tokens);
  if (st == VMEP_OK)
    st = fill(&t, o, rank, E, tokens);
  if (st == VMEP_OK)
    st = nccl_a2a_create(g, E, tokens, o->hidden, o->topk, o->fp8,
                         o->round_scale, &a);
  if (st == VMEP_OK && o->check) {
    st = check(a, &t, o, R, rank, E, tokens);
    res->nccl_checked = st == VMEP_OK;
  }
  if (st == VMEP_OK)
    st = bench_timing_stream(g, &s);
  if (st == VMEP_OK)
    st = time_calls(a, &t, o, tokens, s, res);
  if (s)
    cudaStreamDestroy(s);
  nccl_a2a_destroy(a);
  cudaFree(t.arena);
  return st;
}
