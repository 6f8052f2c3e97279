/*
 * The dispatch and combine kernels against the host reference, with R
 * ranks simulated in one process: each rank gets its own buffer, state and
 * stream, and peers reach each other's buffers through the same pointer
 * table the real windows provide. Fresh random inputs every round, outputs
 * poisoned before each call and checked element by element; rounds
 * alternate buffer parity so the epoch protocol is exercised. Some cases
 * reduce the combine at the expert side in rounds 2 and 3 (weights given
 * to dispatch by every rank, or by the odd ranks only), with zero-copy
 * and with a dead rank.
 */
#include <time.h>

#include "ep_test.cuh"

#define SIM_MAX_RANKS 8

struct sim_rank {
  char *buffer;
  char **inbox; /* [R]: every peer's writes land in our own buffer */
  struct vmep_ll_state *state;
  int *entries, *counts, *begins, *recv_count_copy, *src_weighted;
  unsigned int *row_map;
  float *sel_weights;
  cudaStream_t stream;
  /* per-round device inputs / outputs */
  uint16_t *x;
  int64_t *topk;
  float *weights;
  void *recv_x;
  float *recv_scales;
  int *recv_count, *src_info;
  int64_t *layout_range;
  uint16_t *expert_out, *out;
  /* recv_wait_ns of dispatch [0, R) and combine [R, 2R), from wait_base */
  int64_t *wait_ns;
  int64_t wait_base[2 * SIM_MAX_RANKS];
};

struct sim {
  int R, E, L, T, H, K, fp8, round_scale, zero_copy, blocks;
  int scale_layout; /* VMEP_EP_SCALES_* */
  unsigned dead;    /* bit r: rank r's kernels never run */
  int untimed;      /* run without wait counters */
  int reduce;       /* rounds 2 and 3 give dispatch the weights: 1 every rank, 2
                       the odd ranks (their combine is reduced at the experts) */
  long long timeout_ns; /* after which the others mask a dead rank */
  struct vmep_ll_layout layout;
  char **peers; /* device array */
  struct sim_rank rank[SIM_MAX_RANKS];
};

static int is_dead(const struct sim *s, int r) { return (s->dead >> r) & 1u; }

template <typename T> static T *dev_alloc(size_t count) {
  T *p = NULL;
  CUDA_OK(cudaMalloc((void **)&p, count * sizeof(T) + 16));
  CUDA_OK(cudaMemset(p, 0xff, count * sizeof(T) + 16));
  return p;
}

static void sim_init(struct sim *s) {
  ASSERT_TRUE(s->R >= 1 && s->R <= SIM_MAX_RANKS);
  vmep_ep_config c;
  vmep_ep_config_init(&c);
  c.num_experts = s->E;
  c.hidden = s->H;
  c.max_tokens_per_rank = s->T;
  c.max_topk = s->K;
  c.zero_copy = s->zero_copy;
  ASSERT_OK(vmep__ep_config_check(&c, s->R));
  vmep__ep_layout(&c, s->R, &s->layout);
  s->L = s->E / s->R;
  char *bases[SIM_MAX_RANKS];
  int sms = 0;
  CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  s->blocks = sms / s->R;
  for (int r = 0; r < s->R; r++) {
    struct sim_rank *k = &s->rank[r];
    size_t RT = (size_t)s->R * s->T;
    CUDA_OK(cudaMalloc((void **)&k->buffer, s->layout.total));
    CUDA_OK(cudaMemset(k->buffer, 0, s->layout.total));
    CUDA_OK(cudaMalloc((void **)&k->state, sizeof(*k->state)));
    CUDA_OK(cudaMemset(k->state, 0, sizeof(*k->state)));
    k->entries = dev_alloc<int>(2 * RT * s->K);
    k->counts = dev_alloc<int>(2 * s->R * (s->L + 1));
    k->begins = dev_alloc<int>(2 * s->R * s->L);
    k->recv_count_copy = dev_alloc<int>(2 * s->L);
    k->row_map = dev_alloc<unsigned int>(2 * s->L * RT);
    k->sel_weights = dev_alloc<float>(2 * RT * s->K);
    k->src_weighted = dev_alloc<int>(2 * s->R);
    k->x = dev_alloc<uint16_t>((size_t)s->T * s->H);
    k->topk = dev_alloc<int64_t>((size_t)s->T * s->K);
    k->weights = dev_alloc<float>((size_t)s->T * s->K);
    k->recv_x = dev_alloc<uint16_t>(s->L * RT * s->H);
    k->recv_scales = dev_alloc<float>(s->L * RT * (s->H / 128));
    k->recv_count = dev_alloc<int>(s->L);
    k->src_info = dev_alloc<int>(s->L * RT);
    k->layout_range = dev_alloc<int64_t>((size_t)s->L * s->R);
    k->expert_out = dev_alloc<uint16_t>(s->L * RT * s->H);
    k->out = dev_alloc<uint16_t>((size_t)s->T * s->H);
    CUDA_OK(cudaStreamCreateWithFlags(&k->stream, cudaStreamNonBlocking));
    for (int i = 0; i < 2 * s->R; i++)
      k->wait_base[i] = (int64_t)(test_rand() % (1ull << 40));
    CUDA_OK(cudaMalloc((void **)&k->wait_ns, sizeof(int64_t) * 2 * s->R));
    CUDA_OK(cudaMemcpy(k->wait_ns, k->wait_base, sizeof(int64_t) * 2 * s->R,
                       cudaMemcpyHostToDevice));
    bases[r] = k->buffer;
    char *own[SIM_MAX_RANKS];
    for (int i = 0; i < s->R; i++)
      own[i] = k->buffer;
    CUDA_OK(cudaMalloc((void **)&k->inbox, sizeof(char *) * s->R));
    CUDA_OK(cudaMemcpy(k->inbox, own, sizeof(char *) * s->R,
                       cudaMemcpyHostToDevice));
  }
  CUDA_OK(cudaMalloc((void **)&s->peers, sizeof(char *) * s->R));
  CUDA_OK(cudaMemcpy(s->peers, bases, sizeof(char *) * s->R,
                     cudaMemcpyHostToDevice));
}

static struct vmep_ll_params sim_params(const struct sim *s, int r,
                                        int parity) {
  const struct sim_rank *k = &s->rank[r];
  struct vmep_ll_params p;
  memset(&p, 0, sizeof(p));
  p.rank = r;
  p.num_ranks = s->R;
  p.num_experts = s->E;
  p.hidden = s->H;
  p.max_tokens = s->T;
  p.num_topk = s->K;
  p.num_blocks = s->blocks;
  p.parity = parity;
  p.timeout_ns = s->timeout_ns;
  p.layout = s->layout;
  p.peers = s->peers;
  p.inbox = k->inbox;
  p.state = k->state;
  p.entries = k->entries;
  p.counts = k->counts;
  p.begins = k->begins;
  p.row_map = k->row_map;
  p.recv_count_copy = k->recv_count_copy;
  p.sel_weights = k->sel_weights;
  p.src_weighted = k->src_weighted;
  return p;
}

/* One round's host inputs and the device outputs copied back, per rank. */
struct host_rank {
  uint16_t *x;
  int64_t *topk;
  float *w;
  uint16_t *recv_x, *expert_out, *out;
  float *recv_scales;
  int32_t *recv_count, *src_info;
  int64_t *layout_range;
};

static void *host_alloc(size_t bytes) {
  void *p = calloc(1, bytes ? bytes : 1);
  if (!p)
    TEST_FAIL("calloc(%zu)", bytes);
  return p;
}

static void round_inputs(struct sim *s, struct host_rank *h,
                         struct vmep_ref_rank_input *in, int round) {
  for (int r = 0; r < s->R; r++) {
    int n = (int)(test_rand() % (s->T + 1));
    if (round % 3 == 1 && r == 1)
      n = 0; /* a rank that sends nothing */
    if (round % 3 == 2)
      n = s->T;
    in[r].num_tokens = n;
    h[r].x = (uint16_t *)host_alloc((size_t)s->T * s->H * 2);
    h[r].topk = (int64_t *)host_alloc((size_t)s->T * s->K * 8);
    h[r].w = (float *)host_alloc((size_t)s->T * s->K * 4);
    for (size_t i = 0; i < (size_t)n * s->H; i++)
      h[r].x[i] = random_bf16();
    random_topk(h[r].topk, n, s->K, s->E, round == 4);
    for (size_t i = 0; i < (size_t)n * s->K; i++)
      h[r].w[i] = (float)(test_rand() % 2000) / 1000.0f - 1.0f + 1e-3f;
    in[r].x = h[r].x;
    in[r].topk_idx = h[r].topk;
    in[r].topk_weights = h[r].w;
    struct sim_rank *k = &s->rank[r];
    CUDA_OK(
        cudaMemcpy(k->x, h[r].x, (size_t)n * s->H * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(k->topk, h[r].topk, (size_t)n * s->K * 8,
                       cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(k->weights, h[r].w, (size_t)n * s->K * 4,
                       cudaMemcpyHostToDevice));
  }
}

static void poison_outputs(struct sim *s) {
  size_t RT = (size_t)s->R * s->T;
  for (int r = 0; r < s->R; r++) {
    struct sim_rank *k = &s->rank[r];
    CUDA_OK(cudaMemset(k->recv_x, 0xff, s->L * RT * s->H * 2));
    CUDA_OK(cudaMemset(k->recv_scales, 0xff, s->L * RT * (s->H / 128) * 4));
    CUDA_OK(cudaMemset(k->recv_count, 0xff, s->L * 4));
    CUDA_OK(cudaMemset(k->src_info, 0xff, s->L * RT * 4));
    CUDA_OK(cudaMemset(k->layout_range, 0xff, (size_t)s->L * s->R * 8));
    CUDA_OK(cudaMemset(k->out, 0xff, (size_t)s->T * s->H * 2));
  }
}

/* Whether rank r gives this round's dispatch the weights. */
static int weighted(const struct sim *s, int r, int round) {
  return (round == 2 || round == 3) &&
         (s->reduce == 1 || (s->reduce == 2 && r % 2));
}

static void run_dispatch(struct sim *s, const struct vmep_ref_rank_input *in,
                         int round) {
  const int parity = round & 1;
  for (int phase = 0; phase < 2; phase++)
    for (int r = 0; r < s->R; r++) {
      if (is_dead(s, r))
        continue;
      struct sim_rank *k = &s->rank[r];
      struct vmep_ll_params p = sim_params(s, r, parity);
      struct vmep_ll_dispatch_io io = {k->x,
                                       k->topk,
                                       in[r].num_tokens,
                                       s->fp8,
                                       s->round_scale,
                                       weighted(s, r, round) ? k->weights
                                                             : NULL,
                                       k->recv_x,
                                       k->recv_scales,
                                       k->recv_count,
                                       k->src_info,
                                       k->layout_range,
                                       s->scale_layout,
                                       s->untimed ? NULL : k->wait_ns};
      if (phase == 0)
        ASSERT_OK(vmep__ll_dispatch_send(&p, &io, k->stream));
      else
        ASSERT_OK(vmep__ll_dispatch_recv(&p, &io, k->stream));
    }
  CUDA_OK(cudaDeviceSynchronize());
}

static void *expert_out_of(struct sim *s, int r, int parity) {
  if (s->zero_copy)
    return s->rank[r].buffer + s->layout.zero_copy[parity];
  return s->rank[r].expert_out;
}

static void run_combine(struct sim *s, const struct vmep_ref_rank_input *in,
                        int round) {
  const int parity = round & 1;
  for (int phase = 0; phase < 2; phase++)
    for (int r = 0; r < s->R; r++) {
      if (is_dead(s, r))
        continue;
      struct sim_rank *k = &s->rank[r];
      struct vmep_ll_params p = sim_params(s, r, parity);
      struct vmep_ll_combine_io io = {expert_out_of(s, r, parity),
                                      s->zero_copy,
                                      k->topk,
                                      weighted(s, r, round) ? NULL : k->weights,
                                      in[r].num_tokens,
                                      k->out,
                                      s->untimed ? NULL : k->wait_ns + s->R,
                                      0,
                                      weighted(s, r, round)};
      if (phase == 0)
        ASSERT_OK(vmep__ll_combine_send(&p, &io, k->stream));
      else
        ASSERT_OK(vmep__ll_combine_recv(&p, &io, k->stream));
    }
  CUDA_OK(cudaDeviceSynchronize());
}

/* Expert outputs of rank d by the model, uploaded where the combine will
 * read them: the rank's own tensor, or (zero-copy) its buffer's area. */
static void make_expert_out(struct sim *s, struct host_rank *h, int d,
                            const struct vmep_ref_rank_input *in, int parity) {
  size_t RT = (size_t)s->R * s->T;
  struct vmep_ref_problem prob = {
      s->R, s->E, s->T, s->H, s->K, 0, 0, NULL, in, VMEP_EP_SCALES_ROW_MAJOR,
      0,    0};
  struct vmep_ref_recv recv = {NULL, NULL, h[d].recv_count, h[d].src_info,
                               h[d].layout_range};
  expert_model(&prob, d, &recv, h[d].expert_out);
  CUDA_OK(cudaMemcpy(expert_out_of(s, d, parity), h[d].expert_out,
                     s->L * RT * s->H * 2, cudaMemcpyHostToDevice));
}

static void fetch_dispatch(struct sim *s, struct host_rank *h) {
  size_t RT = (size_t)s->R * s->T;
  for (int r = 0; r < s->R; r++) {
    struct sim_rank *k = &s->rank[r];
    h[r].recv_x = (uint16_t *)host_alloc(s->L * RT * s->H * 2);
    h[r].recv_scales = (float *)host_alloc(s->L * RT * (s->H / 128) * 4);
    h[r].recv_count = (int32_t *)host_alloc(s->L * 4);
    h[r].src_info = (int32_t *)host_alloc(s->L * RT * 4);
    h[r].layout_range = (int64_t *)host_alloc((size_t)s->L * s->R * 8);
    h[r].expert_out = (uint16_t *)host_alloc(s->L * RT * s->H * 2);
    h[r].out = (uint16_t *)host_alloc((size_t)s->T * s->H * 2);
    CUDA_OK(cudaMemcpy(h[r].recv_x, k->recv_x, s->L * RT * s->H * 2,
                       cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(h[r].recv_scales, k->recv_scales,
                       s->L * RT * (s->H / 128) * 4, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(h[r].recv_count, k->recv_count, s->L * 4,
                       cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(h[r].src_info, k->src_info, s->L * RT * 4,
                       cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(h[r].layout_range, k->layout_range,
                       (size_t)s->L * s->R * 8, cudaMemcpyDeviceToHost));
  }
}

/* Zero-copy: every valid selection of every source must have its landing
 * row recorded in the source's "where" table by its expert rank. */
static void check_where(struct sim *s, struct host_rank *h,
                        const struct vmep_ref_rank_input *in, int parity) {
  size_t RT = (size_t)s->R * s->T;
  int *where = (int *)malloc((size_t)s->T * s->K * sizeof(int));
  for (int src = 0; src < s->R; src++) {
    CUDA_OK(cudaMemcpy(where, s->rank[src].buffer + s->layout.where[parity],
                       (size_t)s->T * s->K * sizeof(int),
                       cudaMemcpyDeviceToHost));
    for (int t = 0; t < in[src].num_tokens; t++)
      for (int k = 0; k < s->K; k++) {
        int64_t e = in[src].topk_idx[(size_t)t * s->K + k];
        if (e < 0 || e >= s->E)
          continue;
        int d = (int)(e / s->L), l = (int)(e % s->L);
        int64_t range = h[d].layout_range[l * s->R + src];
        int begin = (int)(range >> 32), count = (int)(range & 0xffffffff);
        int row = -1;
        for (int i = begin; i < begin + count; i++)
          if (h[d].src_info[l * RT + i] == t)
            row = (int)(l * RT + i);
        if (where[(size_t)t * s->K + k] != row)
          TEST_FAIL("where[%d][%d] of rank %d is %d, its row is %d (expert "
                    "%lld on rank %d)",
                    t, k, src, where[(size_t)t * s->K + k], row, (long long)e,
                    d);
      }
  }
  free(where);
}

static struct vmep_ref_recv as_recv(struct host_rank *h) {
  struct vmep_ref_recv v = {h->recv_x, h->recv_scales, h->recv_count,
                            h->src_info, h->layout_range};
  return v;
}

static void free_round(struct sim *s, struct host_rank *h) {
  for (int r = 0; r < s->R; r++) {
    free(h[r].x);
    free(h[r].topk);
    free(h[r].w);
    free(h[r].recv_x);
    free(h[r].recv_scales);
    free(h[r].recv_count);
    free(h[r].src_info);
    free(h[r].layout_range);
    free(h[r].expert_out);
    free(h[r].out);
  }
}

/* One dispatch + combine round on every rank, checked. */
/* Every live rank has masked the dead ranks, and only them, after a timeout
 * (error bit 2); without a dead rank, nothing is masked and no error. */
static void check_masks(struct sim *s, int round) {
  for (int r = 0; r < s->R; r++) {
    struct vmep_ll_state st;
    if (is_dead(s, r))
      continue;
    CUDA_OK(
        cudaMemcpy(&st, s->rank[r].state, sizeof(st), cudaMemcpyDeviceToHost));
    unsigned expect = s->dead ? VMEP_LL_ERR_TIMEOUT : 0;
    if (st.errors != expect)
      TEST_FAIL("round %d rank %d: device error bits 0x%x, expected 0x%x",
                round, r, st.errors, expect);
    for (int peer = 0; peer < s->R; peer++)
      if (st.masked[peer] != is_dead(s, peer))
        TEST_FAIL("round %d rank %d: rank %d %s masked", round, r, peer,
                  st.masked[peer] ? "is" : "is not");
  }
}

static void one_round(struct sim *s, int round) {
  struct host_rank h[SIM_MAX_RANKS];
  struct vmep_ref_rank_input in[SIM_MAX_RANKS];
  struct vmep_ref_recv recv[SIM_MAX_RANKS];
  const uint16_t *eo[SIM_MAX_RANKS];
  memset(h, 0, sizeof(h));
  round_inputs(s, h, in, round);
  /* A dead rank is masked: it neither sends nor receives. */
  int masked[SIM_MAX_RANKS] = {0};
  for (int r = 0; r < s->R; r++)
    masked[r] = is_dead(s, r);
  struct vmep_ref_problem prob = {s->R,
                                  s->E,
                                  s->T,
                                  s->H,
                                  s->K,
                                  s->fp8,
                                  s->round_scale,
                                  s->dead ? masked : NULL,
                                  in,
                                  s->scale_layout,
                                  0,
                                  0};
  poison_outputs(s);
  if (getenv("VMEP_TEST_VERBOSE"))
    fprintf(stderr, "round %d: dispatch\n", round);
  run_dispatch(s, in, round);
  fetch_dispatch(s, h);
  for (int r = 0; r < s->R; r++)
    if (is_dead(s, r)) { /* outputs never written: an empty layout */
      memset(h[r].recv_count, 0, s->L * 4);
      memset(h[r].layout_range, 0, (size_t)s->L * s->R * 8);
    }
  for (int r = 0; r < s->R; r++) {
    struct vmep_ref_report rep;
    recv[r] = as_recv(&h[r]);
    if (is_dead(s, r))
      continue;
    ASSERT_OK(vmep__ref_check_dispatch(&prob, r, &recv[r], &rep));
    if (rep.mismatches)
      TEST_FAIL("round %d rank %d dispatch: %lld mismatches, first: %s", round,
                r, (long long)rep.mismatches, rep.first);
  }
  if (s->zero_copy)
    check_where(s, h, in, round & 1);
  for (int r = 0; r < s->R; r++) {
    if (!is_dead(s, r))
      make_expert_out(s, h, r, in, round & 1);
    eo[r] = h[r].expert_out;
  }
  if (getenv("VMEP_TEST_VERBOSE"))
    fprintf(stderr, "round %d: combine\n", round);
  run_combine(s, in, round);
  for (int r = 0; r < s->R; r++) {
    struct vmep_ref_report rep;
    if (is_dead(s, r))
      continue;
    CUDA_OK(cudaMemcpy(h[r].out, s->rank[r].out,
                       (size_t)in[r].num_tokens * s->H * 2,
                       cudaMemcpyDeviceToHost));
    prob.expert_reduce = weighted(s, r, round);
    ASSERT_OK(vmep__ref_check_combine(&prob, r, recv, eo, h[r].out, &rep));
    if (rep.mismatches)
      TEST_FAIL("round %d rank %d combine: %lld mismatches, first: %s", round,
                r, (long long)rep.mismatches, rep.first);
  }
  check_masks(s, round);
  free_round(s, h);
}

/* The wait counters only grew; a live rank's dispatch counter of the dead
 * rank holds at least the timeout it waited before masking it, and its
 * counters of the live ranks less: they are not charged that wait. */
static void check_wait_counters(const struct sim *s, int r) {
  const struct sim_rank *k = &s->rank[r];
  int64_t got[2 * SIM_MAX_RANKS];
  CUDA_OK(cudaMemcpy(got, k->wait_ns, sizeof(int64_t) * 2 * s->R,
                     cudaMemcpyDeviceToHost));
  for (int i = 0; i < 2 * s->R; i++)
    if (got[i] < k->wait_base[i] ||
        got[i] - k->wait_base[i] > 600ll * 1000 * 1000 * 1000)
      TEST_FAIL("rank %d: wait counter %d went from %lld to %lld", r, i,
                (long long)k->wait_base[i], (long long)got[i]);
  if (!s->dead || is_dead(s, r) || s->untimed)
    return;
  for (int peer = 0; peer < s->R; peer++) {
    long long waited = (long long)(got[peer] - k->wait_base[peer]);
    if (is_dead(s, peer) != (waited >= s->timeout_ns))
      TEST_FAIL("rank %d waited %lld ns for %s rank %d (timeout %lld ns)", r,
                waited, is_dead(s, peer) ? "dead" : "live", peer,
                s->timeout_ns);
  }
}

static void sim_free(struct sim *s) {
  for (int r = 0; r < s->R; r++) {
    struct sim_rank *k = &s->rank[r];
    struct vmep_ll_state st;
    CUDA_OK(cudaMemcpy(&st, k->state, sizeof(st), cudaMemcpyDeviceToHost));
    ASSERT_EQ(st.errors, s->dead && !is_dead(s, r) ? VMEP_LL_ERR_TIMEOUT : 0);
    check_wait_counters(s, r);
    void *ptrs[] = {k->buffer,   k->state,        k->entries,
                    k->counts,   k->begins,       k->recv_count_copy,
                    k->row_map,  k->sel_weights,  k->src_weighted,
                    k->x,        k->topk,         k->weights,
                    k->recv_x,   k->recv_scales,  k->recv_count,
                    k->src_info, k->layout_range, k->expert_out,
                    k->out,      k->wait_ns,      k->inbox};
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++)
      CUDA_OK(cudaFree(ptrs[i]));
    CUDA_OK(cudaStreamDestroy(k->stream));
  }
  CUDA_OK(cudaFree(s->peers));
}

/* A simulation of R ranks with `dead` (bits) never running, whose peers
 * mask them after timeout_ms; bf16, not yet initialized. */
static struct sim with_dead(int R, int E, int T, int H, int K, unsigned dead,
                            long long timeout_ms) {
  struct sim s;
  memset(&s, 0, sizeof(s));
  s.R = R;
  s.E = E;
  s.T = T;
  s.H = H;
  s.K = K;
  s.dead = dead;
  s.timeout_ns = timeout_ms * 1000 * 1000;
  return s;
}

/* Rank 2 never runs (dead from the start): the others must mask it after
 * the timeout instead of hanging, and their outputs must equal the
 * reference with rank 2 masked, in this round and the next ones (where the
 * masked rank is skipped without waiting). */
static int dead_rank(void) {
  struct sim s = with_dead(4, 16, 64, 2048, 8, 1u << 2, 200);
  s.reduce = 1;
  sim_init(&s);
  for (int round = 0; round < 4; round++)
    one_round(&s, round);
  sim_free(&s);
  printf("rank 2 dead: masked by every live rank after 200 ms, 4 rounds of "
         "dispatch + combine exact over the live ranks (2 reduced at the "
         "experts)\n");
  return 1;
}

/* Ranks 1, 3 and 5 of 6 never run, the waits are untimed and two blocks
 * serve six sources (so a block waits for three): all three must be masked
 * after one timeout together, not one each, and the first round's
 * dispatch must end before a second timeout could have passed (waits in
 * turn took three). The later rounds skip them without waiting. */
static int dead_ranks(void) {
  struct sim s =
      with_dead(6, 12, 32, 1024, 4, (1u << 1) | (1u << 3) | (1u << 5), 300);
  s.untimed = 1;
  sim_init(&s);
  s.blocks = 2;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  one_round(&s, 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long long took =
      (t1.tv_sec - t0.tv_sec) * 1000000000ll + (t1.tv_nsec - t0.tv_nsec);
  if (took >= 2 * s.timeout_ns)
    TEST_FAIL("3 dead ranks: the first round took %lld ms, expected one "
              "%lld ms timeout for all of them",
              took / 1000000, s.timeout_ns / 1000000);
  for (int round = 1; round < 3; round++)
    one_round(&s, round);
  sim_free(&s);
  printf("ranks 1, 3, 5 dead: masked after one 300 ms timeout together (the "
         "first round took %lld ms), 3 rounds exact over the live ranks\n",
         took / 1000000);
  return 1;
}

int main(void) {
  test_seed("test_ll_kernels");
  gpu_test_require_device();
  CUDA_OK(cudaSetDevice(0));
  /* R, experts per rank, T, H, K, fp8, round_scale, zero_copy, scale
   * layout (0 row-major, 1 column-major, 2 UE8M0), reduce (rounds 2 and 3:
   * 1 every rank weighted, 2 the odd ranks) */
  static const int cases[][10] = {
      {2, 2, 16, 512, 1, 0, 0, 0, 0, 0},   {4, 4, 64, 2048, 8, 0, 0, 0, 0, 1},
      {4, 4, 32, 7168, 8, 1, 0, 0, 0, 2},  {2, 8, 24, 4096, 16, 1, 1, 0, 0, 0},
      {8, 2, 16, 8192, 4, 0, 0, 0, 0, 2},  {4, 4, 128, 7168, 8, 0, 0, 0, 0, 0},
      {4, 4, 128, 7168, 8, 1, 1, 0, 0, 0}, {3, 5, 40, 640, 5, 1, 0, 0, 0, 1},
      {4, 4, 64, 7168, 8, 0, 0, 1, 0, 1},  {2, 8, 24, 4096, 16, 1, 1, 1, 0, 2},
      {4, 4, 32, 7168, 8, 1, 0, 0, 1, 0},  {3, 5, 40, 640, 5, 1, 1, 0, 1, 0},
      {4, 4, 64, 7168, 8, 1, 1, 0, 2, 0},  {2, 8, 24, 4096, 16, 1, 1, 1, 2, 0},
  };
  int passed = 0;
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    struct sim s;
    memset(&s, 0, sizeof(s));
    s.R = cases[c][0];
    s.E = cases[c][0] * cases[c][1];
    s.T = cases[c][2];
    s.H = cases[c][3];
    s.K = cases[c][4];
    s.fp8 = cases[c][5];
    s.round_scale = cases[c][6];
    s.zero_copy = cases[c][7];
    s.scale_layout = cases[c][8];
    s.reduce = cases[c][9];
    s.dead = 0;
    s.timeout_ns = 5ll * 1000 * 1000 * 1000; /* a stuck peer shows as masked */
    sim_init(&s);
    for (int round = 0; round < 6; round++)
      one_round(&s, round);
    sim_free(&s);
    printf("R=%d E=%d T=%d H=%d K=%d %s%s%s%s%s: 6 rounds of dispatch + "
           "combine exact\n",
           s.R, s.E, s.T, s.H, s.K, s.fp8 ? "fp8" : "bf16",
           s.round_scale ? " round_scale" : "", s.zero_copy ? " zero-copy" : "",
           s.scale_layout == 1   ? " col-major scales"
           : s.scale_layout == 2 ? " ue8m0 scales"
                                 : "",
           s.reduce == 1   ? " (rounds 2, 3 reduced at the experts)"
           : s.reduce == 2 ? " (rounds 2, 3 reduced for the odd ranks)"
                           : "");
    passed++;
  }
  passed += dead_rank();
  passed += dead_ranks();
  printf("%d passed, 0 failed\n", passed);
  return 0;
}
