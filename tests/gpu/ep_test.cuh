/*
 * Shared pieces of the dispatch / combine GPU tests: random inputs that
 * are never zero (bf16 values, distinct expert choices with some -1), and
 * the expert model: expert e maps a row to bf16(x * (1 + e / 16)), a
 * function of the row's content as a real expert is, so any rank can
 * rebuild any rank's expert outputs from its dispatch layout; and the
 * checks of a low-latency dispatch and combine against the reference.
 */
#ifndef VMEP_EP_TEST_CUH
#define VMEP_EP_TEST_CUH

#include <cuda_bf16.h>

#include "gpu_test.cuh"

/* Most ranks a multi-rank test runs with. */
#define MAX_RANKS 8

extern "C" {
#include "ep/ep.h"
#include "ep/reference.h"
}

/* A bf16 value that is never zero, sign * (0.5 .. 2) * 2^(-2..2), drawn
 * from the bits of `word`. */
static inline uint16_t bf16_from_word(uint32_t word) {
  float mag = (float)(0.5 + (word % 1536) / 1024.0);
  mag = ldexpf(mag, (int)(word / 1536 % 5) - 2);
  return vmep__bf16_from_float(word >> 31 ? -mag : mag);
}

static inline uint16_t random_bf16(void) {
  return bf16_from_word((uint32_t)(test_rand() >> 32));
}

/* Distinct experts per token, some slots -1. */
static inline void random_topk(int64_t *topk, int n, int K, int E, int skew) {
  for (int t = 0; t < n; t++)
    for (int k = 0; k < K; k++) {
      int64_t e;
      int again;
      do {
        e = skew ? (int64_t)(test_rand() % 2) * (E - 1)
                 : (int64_t)(test_rand() % E);
        again = 0;
        for (int j = 0; j < k; j++)
          again |= topk[t * K + j] == e;
      } while (again && !skew);
      if (test_rand() % 10 == 0 || (skew && again))
        e = -1;
      topk[t * K + k] = e;
    }
}

/* Fills expert_out [L, R*T, H] of rank d from its layout (recv_count,
 * src_info, layout_range) and the sources' inputs; NaN outside the valid
 * rows, so a combine that reads them shows it. */
static inline void expert_model(const struct vmep_ref_problem *p, int d,
                                const struct vmep_ref_recv *recv,
                                uint16_t *eo) {
  const int R = p->num_ranks, L = p->num_experts / R, H = p->hidden;
  const size_t RT = (size_t)R * p->max_tokens;
  for (size_t i = 0; i < (size_t)L * RT * H; i++)
    eo[i] = 0x7fc0;
  for (int l = 0; l < L; l++)
    for (int src = 0; src < R; src++) {
      int64_t range = recv->layout_range[l * R + src];
      int begin = (int)(range >> 32), count = (int)(range & 0xffffffff);
      float f = 1.0f + (float)(d * L + l) / 16.0f;
      const struct vmep_ref_rank_input *in = &p->ranks[src];
      for (int i = begin; i < begin + count; i++) {
        int t = recv->src_info[l * RT + i];
        ASSERT_TRUE(t >= 0 && t < in->num_tokens);
        for (int c = 0; c < H; c++)
          eo[(l * RT + i) * H + c] = vmep__bf16_from_float(
              vmep__bf16_to_float(in->x[(size_t)t * H + c]) * f);
      }
    }
}

/* The same expert model on the device (bf16 dispatch): rows [0,
 * recv_count[l]) of recv_x [L, RT, H] through expert first_expert + l. */
__global__ void expert_model_kernel(const __nv_bfloat16 *recv_x,
                                    const int *recv_count, int L, size_t RT,
                                    int H, int first_expert,
                                    __nv_bfloat16 *eo) {
  size_t total = (size_t)L * RT * H;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    int l = (int)(i / (RT * H));
    size_t row = i / H % RT;
    if (row < (size_t)recv_count[l])
      eo[i] = __float2bfloat16_rn(__bfloat162float(recv_x[i]) *
                                  (1.0f + (float)(first_expert + l) / 16.0f));
  }
}

/* Host copies of every rank's low-latency dispatch layout, and of every
 * rank's expert outputs. */
struct layouts {
  struct vmep_ref_recv recv[MAX_RANKS];
  uint16_t *eo[MAX_RANKS];
  void *mine_x;
  float *mine_scales;
};

/* Checks this rank's low-latency dispatch of problem `p` (the outputs in
 * the device arrays `a` names) against the reference, shares the layouts
 * through `g` and builds every rank's expert outputs on the host. `what`
 * names the call in a failure. */
static inline void check_ll_dispatch(vmep_group *g,
                                     const struct vmep_ref_problem *p,
                                     const vmep_ep_dispatch_args *a,
                                     struct layouts *lay, const char *what) {
  const int R = p->num_ranks, L = p->num_experts / R, H = p->hidden;
  const int me = vmep_group_rank(g);
  size_t RT = (size_t)R * p->max_tokens, rows = (size_t)L * RT;
  size_t per_rank = L * 4 + rows * 4 + (size_t)L * R * 8;
  char *mine = (char *)malloc(per_rank), *all = (char *)malloc(per_rank * R);
  lay->mine_x = malloc(rows * H * 2);
  lay->mine_scales = (float *)malloc(rows * (H / 128) * 4 + 4);
  ASSERT_TRUE(mine && all && lay->mine_x && lay->mine_scales);
  CUDA_OK(cudaMemcpy(mine, a->recv_count, L * 4, cudaMemcpyDeviceToHost));
  CUDA_OK(
      cudaMemcpy(mine + L * 4, a->src_info, rows * 4, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(mine + L * 4 + rows * 4, a->layout_range,
                     (size_t)L * R * 8, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(lay->mine_x, a->recv_x, rows * H * (p->use_fp8 ? 1 : 2),
                     cudaMemcpyDeviceToHost));
  if (p->use_fp8)
    CUDA_OK(cudaMemcpy(lay->mine_scales, a->recv_scales, rows * (H / 128) * 4,
                       cudaMemcpyDeviceToHost));
  ASSERT_OK(vmep_group_allgather(g, mine, per_rank, all));
  for (int r = 0; r < R; r++) {
    char *at = all + per_rank * r;
    lay->recv[r].recv_x = r == me ? lay->mine_x : NULL;
    lay->recv[r].recv_scales = r == me ? lay->mine_scales : NULL;
    lay->recv[r].recv_count = (int32_t *)at;
    lay->recv[r].src_info = (int32_t *)(at + L * 4);
    lay->recv[r].layout_range = (int64_t *)(at + L * 4 + rows * 4);
    lay->eo[r] = (uint16_t *)malloc(rows * H * 2);
    ASSERT_TRUE(lay->eo[r] != NULL);
    expert_model(p, r, &lay->recv[r], lay->eo[r]);
  }
  struct vmep_ref_report rep;
  ASSERT_OK(vmep__ref_check_dispatch(p, me, &lay->recv[me], &rep));
  if (rep.mismatches)
    TEST_FAIL("rank %d %s: %lld mismatches, first: %s", me, what,
              (long long)rep.mismatches, rep.first);
  free(mine); /* `all` is freed through recv[0].recv_count */
}

/* Checks this rank's low-latency combine output (device `out`) of problem
 * `p` against the reference over the layouts of check_ll_dispatch. */
static inline void check_ll_combine(const struct vmep_ref_problem *p, int me,
                                    const void *out, const struct layouts *lay,
                                    const char *what) {
  size_t bytes = (size_t)p->ranks[me].num_tokens * p->hidden * 2;
  uint16_t *host = (uint16_t *)malloc(bytes + 2);
  struct vmep_ref_report rep;
  ASSERT_TRUE(host != NULL);
  CUDA_OK(cudaMemcpy(host, out, bytes, cudaMemcpyDeviceToHost));
  const uint16_t *eo[MAX_RANKS];
  for (int r = 0; r < p->num_ranks; r++)
    eo[r] = lay->eo[r];
  ASSERT_OK(vmep__ref_check_combine(p, me, lay->recv, eo, host, &rep));
  if (rep.mismatches)
    TEST_FAIL("rank %d %s: %lld mismatches, first: %s", me, what,
              (long long)rep.mismatches, rep.first);
  free(host);
}

static inline void free_layouts(int num_ranks, struct layouts *lay) {
  free(lay->recv[0].recv_count);
  free(lay->mine_x);
  free(lay->mine_scales);
  for (int r = 0; r < num_ranks; r++)
    free(lay->eo[r]);
}

#endif /* VMEP_EP_TEST_CUH */
