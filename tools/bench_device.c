/*
 * vmep-bench's device resources, for the low-latency and the
 * high-throughput runs and their ceiling alike: buffers allocated from one
 * table of parts and filled with a non-zero pattern, freed from the same
 * table, the inputs uploaded; the CUDA events of the timed calls; the
 * stream they run on.
 */
#include <cuda_runtime_api.h>
#include <stdlib.h>

#include "bench.h"

vmep_status bench_alloc_parts(const struct bench_part *parts, size_t n) {
  for (size_t i = 0; i < n; i++) {
    vmep_status st = bench_cuda_check(
        cudaMalloc(parts[i].p, parts[i].bytes + 16), "cudaMalloc");
    if (st != VMEP_OK)
      return st;
    /* 0x3c: bf16 about 0.0115, never zero, for what is read unwritten. */
    st = bench_cuda_check(cudaMemset(*parts[i].p, 0x3c, parts[i].bytes + 16),
                          "cudaMemset");
    if (st != VMEP_OK)
      return st;
  }
  return VMEP_OK;
}

void bench_free_parts(const struct bench_part *parts, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (*parts[i].p) {
      cudaFree(*parts[i].p);
      *parts[i].p = NULL;
    }
}

vmep_status bench_upload_inputs(const struct bench_inputs *in,
                                const struct bench_options *o, void *x,
                                int64_t *topk, float *weights) {
  size_t n = (size_t)in->n, K = (size_t)o->topk;
  vmep_status st = VMEP_OK;
  if (x)
    st = bench_cuda_check(
        cudaMemcpy(x, in->x, n * o->hidden * 2, cudaMemcpyHostToDevice), "x");
  if (st == VMEP_OK)
    st = bench_cuda_check(
        cudaMemcpy(topk, in->topk, n * K * 8, cudaMemcpyHostToDevice), "topk");
  if (st == VMEP_OK)
    st = bench_cuda_check(
        cudaMemcpy(weights, in->weights, n * K * 4, cudaMemcpyHostToDevice),
        "weights");
  return st;
}

vmep_status bench_events_open(cudaEvent_t **ev, size_t n) {
  vmep_status st = VMEP_OK;
  *ev = calloc(n, sizeof(cudaEvent_t));
  if (!*ev)
    return VMEP_ERR_OUT_OF_MEMORY;
  for (size_t i = 0; st == VMEP_OK && i < n; i++)
    st = bench_cuda_check(cudaEventCreate(&(*ev)[i]), "cudaEventCreate");
  if (st != VMEP_OK) {
    bench_events_close(*ev, n);
    *ev = NULL;
  }
  return st;
}

void bench_events_close(cudaEvent_t *ev, size_t n) {
  for (size_t i = 0; ev && i < n; i++)
    if (ev[i])
      cudaEventDestroy(ev[i]);
  free(ev);
}

double bench_events_us(cudaEvent_t from, cudaEvent_t to) {
  float ms = 0;
  return cudaEventElapsedTime(&ms, from, to) == cudaSuccess ? ms * 1000.0 : 0.0;
}

vmep_status bench_timing_stream(vmep_group *g, cudaStream_t *s) {
  vmep_status st = bench_cuda_check(
      cudaStreamCreateWithFlags(s, cudaStreamNonBlocking), "cudaStreamCreate");
  return st == VMEP_OK ? vmep_group_barrier(g) : st;
}
