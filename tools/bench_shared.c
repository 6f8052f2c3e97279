/*
 * What vmep-bench and the NCCL baseline (bench/) share, so that both run
 * on the same inputs and are judged by the same rules: the seeded inputs
 * of any rank, the dispatch check against the host reference, the combine
 * check with identity experts, the CUDA check that names the call, and the
 * median of timed calls.
 */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "ep/ep.h"
#include "ep/reference.h"
#include "kernels/kernels.h"
#include "kernels/logfmt.h"

static uint64_t rng_next(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ull;
}

int bench_make_inputs(const struct bench_options *o, int rank, int tokens,
                      int experts, struct bench_inputs *in) {
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

void bench_free_inputs(struct bench_inputs *in) {
  free(in->x);
  free(in->topk);
  free(in->weights);
}

void bench_count_peers(const struct bench_options *o, int ranks, int experts,
                       int me, const struct bench_inputs *in, double *rows,
                       double *sel) {
  const int L = experts / ranks, K = o->topk;
  /* seen[r] == t + 1: token t already counted a row for rank r. */
  int seen[VMEP_LL_MAX_RANKS] = {0};
  for (int r = 0; r < ranks; r++)
    rows[r] = sel[r] = 0;
  for (int t = 0; t < in->n; t++)
    for (int k = 0; k < K; k++) {
      int64_t e = in->topk[(size_t)t * K + k];
      int r = e >= 0 && e < experts ? (int)(e / L) : me;
      sel[r]++;
      rows[r] += seen[r] != t + 1;
      seen[r] = t + 1;
    }
}

double bench_row_bytes(const struct bench_options *o) {
  const double H = o->hidden;
  return o->fp8 ? H + H / 128 * 4 : 2 * H;
}

double bench_combine_row_bytes(const struct bench_options *o) {
  return o->logfmt ? (double)vmep_logfmt_row_bytes(o->hidden) : 2.0 * o->hidden;
}

/* What one mapped peer costs (bench_link_bytes' rule), from our rows and
 * selections of it: *dispatch and *combine are increased. High-throughput
 * (src/kernels/ht_*.cu): the peer reads our count and, unless cached, our
 * ids, then each row once with its K ids and its selections' weights; it
 * puts each row back with K weights and a mark (in place: the mark and a
 * row index, and we read the row). */
static void mapped_peer_bytes(const struct bench_options *o,
                              const struct bench_inputs *in, double rows,
                              double sel, double *dispatch, double *combine) {
  const double flags = 2.0 * 8, K = o->topk, ids = 4.0 * in->n * K;
  if (o->ht) {
    *dispatch += 4.0 + rows * bench_row_bytes(o) + flags +
                 (o->cached ? 0 : ids + rows * K * 4 + sel * 4);
    *combine +=
        rows * (2.0 * o->hidden + K * 4 + 8 + (o->zero_copy ? 4 : 0)) + flags;
    return;
  }
  /* Reduced at the expert side: the peer reads our weights of its
   * selections, and sends a row per (token, its rank). */
  *dispatch += rows * bench_row_bytes(o) + 4.0 + ids +
               (o->zero_copy || o->reduce ? 4 * sel : 0) + flags;
  *combine +=
      bench_combine_rows(o, rows, sel) * bench_combine_row_bytes(o) + flags;
}

/* What the proxy puts to remote rank r (src/ep/proxy.c), from our rows
 * and selections of it: the send area's header, the ids of every token
 * (high-throughput or reduced at the expert side: and their weights), each
 * row a rank takes once (a cached high-throughput dispatch: every row);
 * back, each selection's combine row (reduced: each token's row;
 * high-throughput: each row with its K weights and mark). */
static void remote_peer_bytes(const struct bench_options *o,
                              const struct vmep_ll_layout *layout,
                              const struct bench_inputs *in, double rows,
                              double sel, double *to, double *from) {
  const double K = o->topk, ids = 4.0 * in->n * K;
  if (o->ht && o->cached) {
    *to = (double)layout->send_topk + in->n * bench_row_bytes(o);
  } else {
    *to = (double)layout->send_topk + ids + (o->ht || o->reduce ? ids : 0) +
          rows * bench_row_bytes(o);
  }
  *from = o->ht ? rows * (2.0 * o->hidden + K * 4 + 8)
                : bench_combine_rows(o, rows, sel) * bench_combine_row_bytes(o);
}

void bench_link_bytes(const struct bench_options *o, int ranks, int experts,
                      int me, const struct bench_inputs *in, double *dispatch,
                      double *combine) {
  double rows[VMEP_LL_MAX_RANKS], sel[VMEP_LL_MAX_RANKS];
  bench_count_peers(o, ranks, experts, me, in, rows, sel);
  *dispatch = *combine = 0;
  for (int r = 0; r < ranks; r++)
    if (r != me)
      mapped_peer_bytes(o, in, rows[r], sel[r], dispatch, combine);
}

void bench_node_bytes(const struct bench_options *o, int ranks, int experts,
                      int me, const int *node, const struct bench_inputs *in,
                      struct bench_node_bytes *out) {
  double rows[VMEP_LL_MAX_RANKS], sel[VMEP_LL_MAX_RANKS];
  vmep_ep_config c;
  struct vmep_ll_layout layout;
  vmep_ep_config_init(&c);
  c.num_experts = experts;
  c.hidden = o->hidden;
  c.max_tokens_per_rank = in->n;
  c.max_topk = o->topk;
  vmep__ep_layout(&c, ranks, &layout);
  /* Flags through the proxies, per remote peer and phase: ours (ready)
   * and the peer's answer (ack). */
  const double flags = 2.0 * 8;
  bench_count_peers(o, ranks, experts, me, in, rows, sel);
  out->intra_dispatch = out->intra_combine = 0;
  out->inter_dispatch = out->inter_combine = 0;
  for (int r = 0; r < ranks; r++) {
    out->dispatch_to[r] = out->combine_from[r] = 0;
    if (r == me)
      continue;
    if (node[r] == node[me]) {
      mapped_peer_bytes(o, in, rows[r], sel[r], &out->intra_dispatch,
                        &out->intra_combine);
      continue;
    }
    remote_peer_bytes(o, &layout, in, rows[r], sel[r], &out->dispatch_to[r],
                      &out->combine_from[r]);
    out->inter_dispatch += out->dispatch_to[r] + flags;
    out->inter_combine += out->combine_from[r] + flags;
  }
}

vmep_status bench_cuda_check(cudaError_t err, const char *what) {
  if (err == cudaSuccess)
    return VMEP_OK;
  fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, what,
          cudaGetErrorString(err));
  return VMEP_ERR_CUDA;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double bench_median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void *bench_fetch(const void *dev, size_t bytes) {
  void *host = malloc(bytes + 16);
  if (host &&
      bench_cuda_check(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost),
                       "cudaMemcpy (check)") != VMEP_OK) {
    free(host);
    host = NULL;
  }
  return host;
}

vmep_status bench_check_dispatch(const struct bench_options *o, int ranks,
                                 int experts, int tokens, int me,
                                 const struct vmep_ref_recv *dev) {
  size_t L = (size_t)(experts / ranks), RT = (size_t)ranks * tokens,
         H = (size_t)o->hidden;
  struct bench_inputs in[VMEP_LL_MAX_RANKS];
  struct vmep_ref_rank_input ref_in[VMEP_LL_MAX_RANKS];
  vmep_status st = VMEP_OK;
  struct vmep_ref_recv got = {
      bench_fetch(dev->recv_x, L * RT * H * (o->fp8 ? 1 : 2)),
      o->fp8 ? bench_fetch(dev->recv_scales, L * RT * (H / 128) * 4) : NULL,
      bench_fetch(dev->recv_count, L * 4),
      bench_fetch(dev->src_info, L * RT * 4),
      bench_fetch(dev->layout_range, L * ranks * 8)};
  if (!got.recv_x || (o->fp8 && !got.recv_scales) || !got.recv_count ||
      !got.src_info || !got.layout_range)
    st = VMEP_ERR_CUDA;
  memset(in, 0, sizeof(in[0]) * (size_t)ranks);
  for (int r = 0; st == VMEP_OK && r < ranks; r++) {
    if (bench_make_inputs(o, r, tokens, experts, &in[r]) != 0)
      st = VMEP_ERR_OUT_OF_MEMORY;
    struct vmep_ref_rank_input one = {in[r].n, in[r].x, in[r].topk,
                                      in[r].weights};
    ref_in[r] = one;
  }
  struct vmep_ref_problem p = {ranks,
                               experts,
                               tokens,
                               o->hidden,
                               o->topk,
                               o->fp8,
                               o->round_scale,
                               NULL,
                               ref_in,
                               VMEP_EP_SCALES_ROW_MAJOR,
                               0,
                               0};
  struct vmep_ref_report rep = {0, ""};
  if (st == VMEP_OK)
    st = vmep__ref_check_dispatch(&p, me, &got, &rep);
  if (st == VMEP_OK && rep.mismatches) {
    fprintf(stderr, "%s: rank %d dispatch check: %lld mismatches, first: %s\n",
            program_invocation_short_name, me, (long long)rep.mismatches,
            rep.first);
    st = VMEP_ERR_CUDA;
  }
  for (int r = 0; r < ranks; r++)
    bench_free_inputs(&in[r]);
  free(got.recv_x);
  free(got.recv_scales);
  free(got.recv_count);
  free(got.src_info);
  free(got.layout_range);
  return st;
}

/* want[H] for token t of `in` with identity experts, reduced at the
 * expert side: per expert rank, in the order of its first selection, the
 * fmaf chain of its selections' w * x[t] in k order, rounded to bf16 (and
 * with o->logfmt through LogFMT), added up: the kernels' sums. */
static void reduced_token(const struct bench_options *o, int ranks, int experts,
                          const struct bench_inputs *in, size_t t,
                          float *want) {
  const size_t H = (size_t)o->hidden, K = (size_t)o->topk;
  const int64_t L = experts / ranks, *idx = in->topk + t * K;
  const uint16_t *x = in->x + t * H;
  for (size_t h = 0; h < H; h++)
    want[h] = 0.0f;
  for (size_t k = 0; k < K; k++) {
    int first = 1;
    for (size_t j = 0; j < k; j++)
      first &= idx[j] / L != idx[k] / L;
    for (size_t h0 = 0; first && h0 < H; h0 += VMEP_LOGFMT_GROUP) {
      uint16_t part[VMEP_LOGFMT_GROUP];
      float value[VMEP_LOGFMT_GROUP];
      size_t n = H - h0;
      if (n > VMEP_LOGFMT_GROUP)
        n = VMEP_LOGFMT_GROUP;
      for (size_t i = 0; i < n; i++) {
        float sum = 0.0f;
        for (size_t j = k; j < K; j++)
          if (idx[j] / L == idx[k] / L)
            sum = fmaf(in->weights[t * K + j], vmep__bf16_to_float(x[h0 + i]),
                       sum);
        part[i] = vmep__bf16_from_float(sum);
        value[i] = vmep__bf16_to_float(part[i]);
      }
      if (o->logfmt)
        vmep__logfmt_round_trip_group(part, value);
      for (size_t i = 0; i < n; i++)
        want[h0 + i] += value[i];
    }
  }
}

vmep_status bench_check_combine(const struct bench_options *o, int ranks,
                                int me, int tokens, int experts,
                                const void *out_dev) {
  struct bench_inputs in;
  size_t H = (size_t)o->hidden, K = (size_t)o->topk;
  uint16_t *out = bench_fetch(out_dev, (size_t)tokens * H * 2);
  float *reduced = malloc(H * sizeof(float));
  vmep_status st = out && reduced ? VMEP_OK : VMEP_ERR_CUDA;
  memset(&in, 0, sizeof(in));
  if (st == VMEP_OK && bench_make_inputs(o, me, tokens, experts, &in) != 0)
    st = VMEP_ERR_OUT_OF_MEMORY;
  float decoded[VMEP_LOGFMT_GROUP];
  for (size_t t = 0; st == VMEP_OK && t < (size_t)tokens; t++) {
    float wsum = 0.0f;
    for (size_t k = 0; k < K; k++)
      wsum += in.weights[t * K + k];
    if (o->reduce)
      reduced_token(o, ranks, experts, &in, t, reduced);
    for (size_t h = 0; h < H; h++) {
      float x = vmep__bf16_to_float(in.x[t * H + h]);
      float want = vmep__bf16_to_float(vmep__bf16_from_float(wsum * x));
      float have = vmep__bf16_to_float(out[t * H + h]);
      float room = fabsf(want) * (1.0f / 128.0f);
      if (o->reduce) {
        want = vmep__bf16_to_float(vmep__bf16_from_float(reduced[h]));
        room = 0.0f;
      } else if (o->logfmt) { /* every selection is valid: K terms, in k
                                 order */
        if (h % VMEP_LOGFMT_GROUP == 0)
          vmep__logfmt_round_trip_group(in.x + t * H + h, decoded);
        float sum = 0.0f;
        for (size_t k = 0; k < K; k++)
          sum =
              fmaf(in.weights[t * K + k], decoded[h % VMEP_LOGFMT_GROUP], sum);
        want = vmep__bf16_to_float(vmep__bf16_from_float(sum));
        room = 0.0f;
      }
      if (!(fabsf(have - want) <= room)) {
        fprintf(stderr,
                "%s: rank %d combine check: token %zu channel %zu is %g, "
                "expected %g\n",
                program_invocation_short_name, me, t, h, have, want);
        st = VMEP_ERR_CUDA;
        break;
      }
    }
  }
  bench_free_inputs(&in);
  free(reduced);
  free(out);
  return st;
}

int bench_under_launcher(void) {
  static const char *vars[] = {"VMEP_RANK", "RANK", "OMPI_COMM_WORLD_RANK",
                               "SLURM_PROCID"};
  for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
    if (getenv(vars[i]))
      return 1;
  return 0;
}

/* Which GPU a rank uses: its host and its current device's PCI bus id.
 * The host name, not the node index: pretend nodes split one host. */
struct gpu_id {
  char host[64];
  char bus[32];
};

vmep_status bench_gpu_sharing(vmep_group *g, int *shared_out) {
  int R = vmep_group_size(g), dev = 0;
  struct gpu_id mine, *all = calloc((size_t)R, sizeof(*all));
  memset(&mine, 0, sizeof(mine));
  (void)gethostname(mine.host, sizeof(mine.host) - 1);
  vmep_status st = all ? bench_cuda_check(cudaGetDevice(&dev), "cudaGetDevice")
                       : VMEP_ERR_OUT_OF_MEMORY;
  if (st == VMEP_OK)
    st =
        bench_cuda_check(cudaDeviceGetPCIBusId(mine.bus, sizeof(mine.bus), dev),
                         "cudaDeviceGetPCIBusId");
  /* Every rank enters the allgather, failed or not: no rank waits alone. */
  vmep_status gathered =
      all ? vmep_group_allgather(g, &mine, sizeof(mine), all) : st;
  st = st != VMEP_OK ? st : gathered;
  int shared = 0;
  for (int i = 0; st == VMEP_OK && i < R; i++)
    for (int j = i + 1; j < R; j++)
      shared |=
          !strcmp(all[i].host, all[j].host) && !strcmp(all[i].bus, all[j].bus);
  if (st == VMEP_OK)
    *shared_out = shared;
  free(all);
  return st;
}

int bench_experts(const struct bench_options *o, int ranks) {
  if (o->experts)
    return o->experts;
  int e = 4 * ranks, at_least_k = (o->topk + ranks - 1) / ranks * ranks;
  return e > at_least_k ? e : at_least_k;
}

int bench_experts_refused(const struct bench_options *o, const char *prog) {
  if (!o->experts || o->experts >= o->topk)
    return 0;
  fprintf(stderr,
          "%s: bad value for --experts: %d (top-k %d needs at least %d "
          "experts: each token picks K distinct ones)\n",
          prog, o->experts, o->topk, o->topk);
  return 1;
}

void bench_options_defaults(struct bench_options *o) {
  memset(o, 0, sizeof(*o));
  o->tokens[0] = 128;
  o->num_tokens_values = 1;
  o->hidden = 7168;
  o->topk = 8;
  o->iters = 100;
  o->warmup = 10;
  o->seed = 1;
}
