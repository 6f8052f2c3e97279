/*
 * The NCCL baseline of low-latency dispatch / combine (bench/): the same
 * rows moved with ncclSend / ncclRecv per peer, plus the permutations a
 * user needs around them to get vmep's [L, R*T, H] layout. nccl_a2a.c owns
 * the communicator and the exchanges; nccl_kernels.cu the gather, scatter
 * and reduce kernels; nccl_run.c times and checks one token count.
 */
#ifndef VMEP_BENCH_NCCL_A2A_H
#define VMEP_BENCH_NCCL_A2A_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "vmep.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What the kernels see. A staged row is 16 bytes of metadata (token, local
 * expert, k, source rank) and the payload: bf16 [H], or fp8 [H] then fp32
 * scales [H/128]; rows are `stride` bytes apart (16-byte aligned). */
struct nccl_a2a_params {
  int rank, ranks, experts, local, tokens, hidden, topk, fp8, round_scale;
  int n;                   /* tokens in this call */
  int recv_rows;           /* rows received by this call's dispatch */
  size_t stride;           /* bytes per staged row */
  const int64_t *topk_idx; /* [n, K] */
  int *counts;             /* [2E]: sent per expert, then received per (s, l) */
  int *slot;               /* [n, K]: the selection's index within its expert */
  const int *plan;         /* send_off[E+1], recv_off[E+1], dest_begin[E] */
  char *send, *recv;       /* staged rows, send order / receive order */
};

/* Launchers: each returns the launch's error (cudaGetLastError). */
cudaError_t nccl_a2a_route(const struct nccl_a2a_params *p, cudaStream_t s);
cudaError_t nccl_a2a_gather(const struct nccl_a2a_params *p, const void *x,
                            cudaStream_t s);
cudaError_t nccl_a2a_scatter(const struct nccl_a2a_params *p, void *recv_x,
                             float *recv_scales, int32_t *recv_count,
                             int32_t *src_info, int64_t *layout_range,
                             cudaStream_t s);
cudaError_t nccl_a2a_return(const struct nccl_a2a_params *p,
                            const void *expert_out, void *rows, cudaStream_t s);
cudaError_t nccl_a2a_reduce(const struct nccl_a2a_params *p, const void *rows,
                            const float *weights, void *out, cudaStream_t s);

typedef struct nccl_a2a nccl_a2a;

/* Collective over `group`: a communicator (its unique id broadcast from
 * rank 0 through the group, NVLink multicast off) and the buffers for
 * `experts`, `tokens` (T), `hidden`, `topk`, fp8 or bf16 on the current
 * device. On failure, prints the call that failed and leaves nothing. */
vmep_status nccl_a2a_create(vmep_group *group, int experts, int tokens,
                            int hidden, int topk, int fp8, int round_scale,
                            nccl_a2a **out);

/* Releases everything; NULL is a no-op. */
void nccl_a2a_destroy(nccl_a2a *a);

/* Collective: dispatch of x bf16 [n, H] with topk [n, K] into vmep's
 * output layout (recv_scales only with fp8). Synchronizes `s` once, to
 * learn the counts. */
vmep_status nccl_a2a_dispatch(nccl_a2a *a, const void *x, const int64_t *topk,
                              int n, void *recv_x, float *recv_scales,
                              int32_t *recv_count, int32_t *src_info,
                              int64_t *layout_range, cudaStream_t s);

/* Collective, asynchronous: the weighted sum, in fp32, of the last
 * dispatch's expert outputs bf16 [L, R*T, H], written as bf16 [n, H]. */
vmep_status nccl_a2a_combine(nccl_a2a *a, const void *expert_out,
                             const float *weights, void *out, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif /* VMEP_BENCH_NCCL_A2A_H */
