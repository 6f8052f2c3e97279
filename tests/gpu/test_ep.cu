/*
 * The EP buffer end to end across processes (run under vmep-run, several
 * ranks on one GPU). Every rank derives every rank's inputs from one seed,
 * so each can compute the reference of the whole group; layouts are
 * exchanged through the group for the combine check. Covered: hidden sizes
 * 640..8192 (partial last slices and parts), bf16 and fp8 (with round_scale), a
 * LogFMT combine (bit for bit against the reference, refused with a zero-copy
 * expert_out), the combine reduced at the expert side (weights given to
 * dispatch by every rank or by the odd ranks only; bf16 and LogFMT rows, from
 * the zero-copy buffer too, bit for bit; the weights given again refused),
 * top-k 1..16, uniform routing with -1 entries, all tokens to one expert, a
 * rank that sends nothing, n = T, invalid expert ids (reported, not trapped),
 * 1000 back-to-back dispatch / expert / combine sequences in batches without
 * host synchronization (two in flight; a quarter of them reduced at the expert
 * side), and a captured CUDA graph of dispatch,
 * experts and combine replayed 100 times with new inputs copied in, the
 * receive phases' wait counters (recv_wait_ns) with ranks that come late,
 * and one store name per buffer on every rank. The expert is a device
 * kernel mapping each row to bf16(x * (1 + e / 16)); the host's copy of
 * that model is the oracle for combine.
 */
#include <unistd.h>

#include "ep_test.cuh"
#include "test_port.h"

#define BATCH 10

enum routing { UNIFORM, ONE_EXPERT, SILENT_RANK, FULL, INVALID_IDS };

struct world {
  int R, E, L, T, H, K, fp8, round_scale;
  int logfmt; /* combine rows as LogFMT */
  int reduce; /* weights given to dispatch (the combine reduced at the
                 expert side): 1 by every rank, 2 by the odd ranks */
  struct vmep_ref_rank_input in[MAX_RANKS];
  uint16_t *x[MAX_RANKS];
  int64_t *topk[MAX_RANKS];
  float *w[MAX_RANKS];
  int invalid[MAX_RANKS];
};

/* This rank's device buffers for one call. */
struct io {
  uint16_t *x, *expert_out, *out;
  int64_t *topk;
  float *w, *recv_scales;
  void *recv_x;
  int *recv_count, *src_info;
  int64_t *layout_range;
};

static struct world shape(int R, int T, int H, int K, int fp8,
                          int round_scale) {
  struct world w;
  memset(&w, 0, sizeof(w));
  w.R = R;
  w.E = 4 * R;
  w.L = 4;
  w.T = T;
  w.H = H;
  w.K = K < w.E ? K : w.E;
  w.fp8 = fp8;
  w.round_scale = round_scale;
  return w;
}

static void gen_world(struct world *w, uint64_t seed, enum routing how) {
  uint64_t saved = test_rng_state;
  test_rng_state = seed | 1;
  for (int r = 0; r < w->R; r++) {
    int n = how == FULL ? w->T : (int)(test_rand() % (w->T + 1));
    if (how == SILENT_RANK && r == 1)
      n = 0;
    w->x[r] = (uint16_t *)calloc((size_t)w->T * w->H + 1, 2);
    w->topk[r] = (int64_t *)calloc((size_t)w->T * w->K + 1, 8);
    w->w[r] = (float *)calloc((size_t)w->T * w->K + 1, 4);
    for (size_t i = 0; i < (size_t)n * w->H; i++)
      w->x[r][i] = random_bf16();
    random_topk(w->topk[r], n, w->K, w->E, 0);
    w->invalid[r] = 0;
    for (int t = 0; t < n; t++) {
      if (how == ONE_EXPERT)
        for (int k = 0; k < w->K; k++)
          w->topk[r][t * w->K + k] = k == 0 ? (int64_t)(seed % w->E) : -1;
      if (how == INVALID_IDS && t % 3 == 0) {
        w->topk[r][t * w->K] = t % 2 ? w->E + 5 : -7;
        w->invalid[r]++;
      }
    }
    for (size_t i = 0; i < (size_t)n * w->K; i++)
      w->w[r][i] = (float)(test_rand() % 2000) / 1000.0f - 1.0f + 1e-3f;
    w->in[r].num_tokens = n;
    w->in[r].x = w->x[r];
    w->in[r].topk_idx = w->topk[r];
    w->in[r].topk_weights = w->w[r];
  }
  test_rng_state = saved;
}

static void free_world(struct world *w) {
  for (int r = 0; r < w->R; r++) {
    free(w->x[r]);
    free(w->topk[r]);
    free(w->w[r]);
  }
}

/* Whether `rank` gives its dispatch the weights. */
static int weighted(const struct world *w, int rank) {
  return w->reduce == 1 || (w->reduce == 2 && rank % 2);
}

/* The reference of rank `me`'s calls: its combine is reduced when its own
 * dispatch took the weights, whatever the other ranks did. */
static struct vmep_ref_problem problem(const struct world *w, int me) {
  struct vmep_ref_problem p = {
      w->R,      w->E,           w->T, w->H,  w->K,
      w->fp8,    w->round_scale, NULL, w->in, VMEP_EP_SCALES_ROW_MAJOR,
      w->logfmt, weighted(w, me)};
  return p;
}

template <typename T> static T *dmalloc(size_t count) {
  T *p = NULL;
  CUDA_OK(cudaMalloc((void **)&p, count * sizeof(T) + 16));
  return p;
}

static void io_alloc(struct io *b, const struct world *w) {
  size_t RT = (size_t)w->R * w->T, rows = (size_t)w->L * RT;
  b->x = dmalloc<uint16_t>((size_t)w->T * w->H);
  b->topk = dmalloc<int64_t>((size_t)w->T * w->K);
  b->w = dmalloc<float>((size_t)w->T * w->K);
  b->recv_x = dmalloc<uint16_t>(rows * w->H);
  b->recv_scales = dmalloc<float>(rows * (w->H / 128));
  b->recv_count = dmalloc<int>(w->L);
  b->src_info = dmalloc<int>(rows);
  b->layout_range = dmalloc<int64_t>((size_t)w->L * w->R);
  b->expert_out = dmalloc<uint16_t>(rows * w->H);
  b->out = dmalloc<uint16_t>((size_t)w->T * w->H);
}

static void io_free(struct io *b) {
  void *p[] = {b->x,           b->topk,       b->w,        b->recv_x,
               b->recv_scales, b->recv_count, b->src_info, b->layout_range,
               b->expert_out,  b->out};
  for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
    CUDA_OK(cudaFree(p[i]));
}

/* Copies this rank's inputs in and poisons every output. */
static void io_load(struct io *b, const struct world *w, int me) {
  size_t RT = (size_t)w->R * w->T, rows = (size_t)w->L * RT;
  int n = w->in[me].num_tokens;
  CUDA_OK(
      cudaMemcpy(b->x, w->x[me], (size_t)n * w->H * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(b->topk, w->topk[me], (size_t)n * w->K * 8,
                     cudaMemcpyHostToDevice));
  CUDA_OK(
      cudaMemcpy(b->w, w->w[me], (size_t)n * w->K * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemset(b->recv_x, 0xff, rows * w->H * 2));
  CUDA_OK(cudaMemset(b->recv_scales, 0xff, rows * (w->H / 128) * 4));
  CUDA_OK(cudaMemset(b->recv_count, 0xff, w->L * 4));
  CUDA_OK(cudaMemset(b->src_info, 0xff, rows * 4));
  CUDA_OK(cudaMemset(b->layout_range, 0xff, (size_t)w->L * w->R * 8));
  CUDA_OK(cudaMemset(b->out, 0xff, (size_t)w->T * w->H * 2));
}

static vmep_ep_dispatch_args dispatch_args(const struct io *b,
                                           const struct world *w, int me) {
  vmep_ep_dispatch_args a;
  vmep_ep_dispatch_args_init(&a);
  a.x = b->x;
  a.topk_idx = b->topk;
  a.num_tokens = w->in[me].num_tokens;
  a.num_topk = w->K;
  a.use_fp8 = w->fp8;
  a.round_scale = w->round_scale;
  a.recv_x = b->recv_x;
  a.recv_scales = w->fp8 ? b->recv_scales : NULL;
  a.recv_count = b->recv_count;
  a.src_info = b->src_info;
  a.layout_range = b->layout_range;
  a.topk_weights = weighted(w, me) ? b->w : NULL;
  return a;
}

static vmep_ep_combine_args combine_args(const struct io *b,
                                         const struct world *w, int me) {
  vmep_ep_combine_args a;
  vmep_ep_combine_args_init(&a);
  a.use_logfmt = w->logfmt;
  a.expert_out = b->expert_out;
  a.topk_idx = b->topk;
  a.topk_weights = weighted(w, me) ? NULL : b->w;
  a.out = b->out;
  return a;
}

static void check_dispatch(vmep_group *g, const struct world *w, int me,
                           const struct io *b, struct layouts *lay) {
  struct vmep_ref_problem p = problem(w, me);
  vmep_ep_dispatch_args a = dispatch_args(b, w, me);
  check_ll_dispatch(g, &p, &a, lay, "dispatch");
}

static void check_combine(const struct world *w, int me, const struct io *b,
                          struct layouts *lay) {
  struct vmep_ref_problem p = problem(w, me);
  check_ll_combine(&p, me, b->out, lay, "combine");
}

/* The expert computation between dispatch and combine, on `stream`. */
static void run_experts(const struct io *b, const struct world *w, int me,
                        void *expert_out, cudaStream_t stream) {
  LAUNCH_OK(expert_model_kernel<<<132, 256, 0, stream>>>(
      (const __nv_bfloat16 *)b->recv_x, b->recv_count, w->L,
      (size_t)w->R * w->T, w->H, me * w->L, (__nv_bfloat16 *)expert_out));
}

static vmep_ep *make_ep(vmep_group *g, const struct world *w, int zero_copy) {
  vmep_ep_config c;
  vmep_ep *ep = NULL;
  vmep_ep_config_init(&c);
  c.num_experts = w->E;
  c.hidden = w->H;
  c.max_tokens_per_rank = w->T;
  c.max_topk = w->K;
  c.timeout_ms = 60000;
  c.zero_copy = zero_copy;
  ASSERT_OK(vmep_ep_create(g, &c, &ep));
  return ep;
}

/* One checked dispatch + combine of a fresh world. */
static void checked_pair(vmep_group *g, vmep_ep *ep, struct world *w,
                         struct io *b, uint64_t seed, enum routing how,
                         int zero_copy) {
  int me = vmep_group_rank(g);
  struct layouts lay;
  vmep_ep_handle h;
  gen_world(w, seed, how);
  io_load(b, w, me);
  vmep_ep_dispatch_args da = dispatch_args(b, w, me);
  ASSERT_OK(vmep_ep_dispatch(ep, &da, VMEP_EP_SEND_RECV, NULL, &h));
  CUDA_OK(cudaDeviceSynchronize());
  check_dispatch(g, w, me, b, &lay);
  /* Zero-copy: the expert outputs go straight into the buffer's area;
   * LogFMT refuses that area and sends them from the caller's memory. */
  void *eo = b->expert_out;
  vmep_ep_combine_args ca = combine_args(b, w, me);
  if (zero_copy)
    ASSERT_OK(vmep_ep_combine_buffer(ep, &h, &eo));
  if (zero_copy && w->logfmt) {
    ca.expert_out = eo;
    ASSERT_STATUS(vmep_ep_combine(ep, &ca, &h, VMEP_EP_SEND_RECV, NULL),
                  VMEP_ERR_UNSUPPORTED);
    eo = b->expert_out;
  }
  /* Weights given to dispatch and again to combine: which would apply? */
  if (weighted(w, me)) {
    ca.topk_weights = b->w;
    ASSERT_STATUS(vmep_ep_combine(ep, &ca, &h, VMEP_EP_SEND_RECV, NULL),
                  VMEP_ERR_INVALID_ARG);
    ca.topk_weights = NULL;
  }
  CUDA_OK(cudaMemcpy(eo, lay.eo[me], (size_t)w->L * w->R * w->T * w->H * 2,
                     cudaMemcpyHostToDevice));
  ca.expert_out = eo;
  ASSERT_OK(vmep_ep_combine(ep, &ca, &h, VMEP_EP_SEND_RECV, NULL));
  CUDA_OK(cudaDeviceSynchronize());
  check_combine(w, me, b, &lay);
  unsigned errors = 0;
  uint64_t bad = 0;
  ASSERT_OK(vmep_ep_poll_errors(ep, &errors, &bad));
  ASSERT_EQ(bad, w->invalid[me]);
  ASSERT_EQ(errors, w->invalid[me] ? 1u : 0u);
  free_layouts(w->R, &lay);
  free_world(w);
}

static void shapes(vmep_group *g, uint64_t seed) {
  static const int hiddens[] = {640, 2048, 2560, 7168, 8192};
  static const int topks[] = {1, 8, 16};
  int R = vmep_group_size(g), cases = 0;
  for (size_t hi = 0; hi < 5; hi++)
    /* bf16, fp8, LogFMT combine, reduced at the expert side (bf16 rows,
     * every rank; LogFMT rows after an fp8 dispatch, the odd ranks; bf16
     * rows, the odd ranks, zero-copy at H 640 and 2560) */
    for (int mode = 0; mode < 6; mode++) {
      int fp8 = mode == 1 || mode == 4;
      struct world w =
          shape(R, 32, hiddens[hi], topks[(hi + mode) % 3], fp8, fp8 && hi % 2);
      w.logfmt = mode == 2 || mode == 4;
      w.reduce = mode == 3 ? 1 : mode >= 4 ? 2 : 0;
      struct io b;
      io_alloc(&b, &w);
      int zero_copy = (int)(hi + mode) % 2;
      vmep_ep *ep = make_ep(g, &w, zero_copy);
      for (int how = UNIFORM; how <= INVALID_IDS; how++)
        checked_pair(g, ep, &w, &b, seed + 100 * cases + how, (enum routing)how,
                     zero_copy);
      ASSERT_OK(vmep_ep_destroy(ep));
      io_free(&b);
      cases++;
      printf("H=%d K=%d %s%s%s%s%s: 5 routings exact\n", w.H, w.K,
             fp8 ? "fp8" : "bf16", w.round_scale ? " round_scale" : "",
             w.logfmt ? " LogFMT combine" : "",
             w.reduce == 1   ? " reduced at the experts"
             : w.reduce == 2 ? " reduced at the experts for the odd ranks"
                             : "",
             zero_copy
                 ? (w.logfmt ? " (zero-copy buffer refused)" : " zero-copy")
                 : "");
    }
}

/* 1000 pairs: batches of BATCH enqueued back to back, then all checked. */
static void back_to_back(vmep_group *g, uint64_t seed) {
  int R = vmep_group_size(g), me = vmep_group_rank(g);
  struct world w[BATCH];
  struct io b[BATCH];
  vmep_ep_handle h[BATCH];
  for (int i = 0; i < BATCH; i++) {
    w[i] = shape(R, 16, 512, 4, 0, 0);
    io_alloc(&b[i], &w[i]);
  }
  vmep_ep *ep = make_ep(g, &w[0], 1);
  for (int round = 0; round < 1000 / BATCH; round++) {
    for (int i = 0; i < BATCH; i++) {
      /* rounds 2 mod 4: every rank weighted; 3 mod 4: the odd ranks */
      w[i].reduce = round % 4 >= 2 ? round % 4 - 1 : 0;
      gen_world(&w[i], seed + round * BATCH + i, UNIFORM);
      io_load(&b[i], &w[i], me);
    }
    CUDA_OK(cudaDeviceSynchronize());
    /* Two in flight at a time, nothing waited for on the host. */
    for (int i = 0; i < BATCH; i += 2) {
      for (int j = i; j < i + 2; j++) {
        vmep_ep_dispatch_args da = dispatch_args(&b[j], &w[j], me);
        ASSERT_OK(vmep_ep_dispatch(ep, &da, VMEP_EP_SEND_RECV, NULL, &h[j]));
      }
      for (int j = i; j < i + 2; j++) {
        /* Odd rounds: the experts write into the zero-copy buffer. */
        vmep_ep_combine_args ca = combine_args(&b[j], &w[j], me);
        if (round % 2)
          ASSERT_OK(vmep_ep_combine_buffer(ep, &h[j], (void **)&ca.expert_out));
        run_experts(&b[j], &w[j], me, (void *)ca.expert_out, NULL);
        ASSERT_OK(vmep_ep_combine(ep, &ca, &h[j], VMEP_EP_SEND_RECV, NULL));
      }
    }
    CUDA_OK(cudaDeviceSynchronize());
    for (int i = 0; i < BATCH; i++) {
      struct layouts lay;
      check_dispatch(g, &w[i], me, &b[i], &lay);
      check_combine(&w[i], me, &b[i], &lay);
      free_layouts(w[i].R, &lay);
      free_world(&w[i]);
    }
  }
  /* A third outstanding handle is refused, not used. */
  ASSERT_STATUS(vmep_ep_combine(ep, NULL, &h[0], VMEP_EP_SEND_RECV, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_OK(vmep_ep_destroy(ep));
  for (int i = 0; i < BATCH; i++)
    io_free(&b[i]);
  printf("1000 back-to-back dispatch + combine pairs exact (half of them "
         "zero-copy; reduced at the experts in a quarter, for the odd ranks "
         "in another)\n");
}

/* Dispatch + combine captured once, replayed with new inputs. */
static void graph_replay(vmep_group *g, uint64_t seed) {
  int R = vmep_group_size(g), me = vmep_group_rank(g);
  struct world w = shape(R, 32, 2048, 8, 0, 0);
  struct io b;
  cudaStream_t stream;
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  vmep_ep_handle h;
  io_alloc(&b, &w);
  vmep_ep *ep = make_ep(g, &w, 0);
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  gen_world(&w, seed, FULL); /* the shapes the graph is captured with */
  io_load(&b, &w, me);
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  vmep_ep_dispatch_args da = dispatch_args(&b, &w, me);
  ASSERT_OK(vmep_ep_dispatch(ep, &da, VMEP_EP_SEND_RECV, stream, &h));
  run_experts(&b, &w, me, b.expert_out, stream);
  vmep_ep_combine_args ca = combine_args(&b, &w, me);
  ASSERT_OK(vmep_ep_combine(ep, &ca, &h, VMEP_EP_SEND_RECV, stream));
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  free_world(&w);
  for (int replay = 0; replay < 100; replay++) {
    struct layouts lay;
    gen_world(&w, seed + 1 + replay, FULL);
    io_load(&b, &w, me);
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    check_dispatch(g, &w, me, &b, &lay);
    check_combine(&w, me, &b, &lay);
    free_layouts(w.R, &lay);
    free_world(&w);
  }
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaStreamDestroy(stream));
  ASSERT_OK(vmep_ep_destroy(ep));
  io_free(&b);
  printf("CUDA graph of dispatch, experts and combine replayed 100 times with "
         "new inputs, exact\n");
}

/*
 * recv_wait_ns of dispatch and combine, counters from random starting
 * values: every element only grows, and when the odd ranks start their
 * calls LATE_MS late (after a barrier), every even rank's counters of each
 * of them grow by at least half of that, and of the even ranks by less
 * (a rank is charged its own lateness only). The data is checked by the
 * tests above.
 */
#define LATE_MS 300
static void wait_counters(vmep_group *g, uint64_t seed) {
  int R = vmep_group_size(g), me = vmep_group_rank(g);
  struct world w = shape(R, 16, 512, 4, 0, 0);
  struct io b;
  io_alloc(&b, &w);
  vmep_ep *ep = make_ep(g, &w, 0);
  int64_t base[2][MAX_RANKS], got[2][MAX_RANKS], *dev[2];
  for (int i = 0; i < 2; i++) {
    for (int r = 0; r < R; r++)
      base[i][r] = (int64_t)(test_rand() % (1ull << 40));
    CUDA_OK(cudaMalloc((void **)&dev[i], sizeof(int64_t) * R));
    CUDA_OK(cudaMemcpy(dev[i], base[i], sizeof(int64_t) * R,
                       cudaMemcpyHostToDevice));
  }
  for (int late = 0; late < 2; late++) {
    vmep_ep_handle h;
    gen_world(&w, seed + late, UNIFORM);
    io_load(&b, &w, me);
    vmep_ep_dispatch_args da = dispatch_args(&b, &w, me);
    da.recv_wait_ns = dev[0];
    vmep_ep_combine_args ca = combine_args(&b, &w, me);
    ca.recv_wait_ns = dev[1];
    ASSERT_OK(vmep_group_barrier(g));
    if (late && me % 2)
      usleep(LATE_MS * 1000);
    ASSERT_OK(vmep_ep_dispatch(ep, &da, VMEP_EP_SEND_RECV, NULL, &h));
    CUDA_OK(cudaDeviceSynchronize());
    ASSERT_OK(vmep_group_barrier(g));
    if (late && me % 2)
      usleep(LATE_MS * 1000);
    ASSERT_OK(vmep_ep_combine(ep, &ca, &h, VMEP_EP_SEND_RECV, NULL));
    CUDA_OK(cudaDeviceSynchronize());
    free_world(&w);
  }
  for (int i = 0; i < 2; i++) {
    CUDA_OK(cudaMemcpy(got[i], dev[i], sizeof(int64_t) * R,
                       cudaMemcpyDeviceToHost));
    for (int r = 0; r < R; r++) {
      int64_t waited = got[i][r] - base[i][r];
      ASSERT_TRUE(waited >= 0 && waited < 60ll * 1000000000);
      if (me % 2 == 0)
        ASSERT_EQ(waited >= LATE_MS * 1000000ll / 2, r % 2);
    }
    CUDA_OK(cudaFree(dev[i]));
  }
  if (R > 1)
    printf("wait counters: rank %d waited %.1f / %.1f ms for late rank 1 "
           "(dispatch / combine)\n",
           me, (double)(got[0][1] - base[0][1]) / 1e6,
           (double)(got[1][1] - base[1][1]) / 1e6);
  ASSERT_OK(vmep_ep_destroy(ep));
  io_free(&b);
}

/* Processes name a buffer alike whatever buffers of its shape each already
 * has: rank 0 alone holds one more (over a group of its own), so its lowest
 * free name index differs from the others', and the group's buffer must
 * still carry one store name on every rank (rank 0's choice). */
static void names_agree(vmep_group *g) {
  int R = vmep_group_size(g), me = vmep_group_rank(g);
  struct world w = shape(R, 16, 512, 2, 0, 0);
  vmep_group *solo = NULL;
  vmep_ep *extra = NULL;
  if (me == 0) {
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", test_free_port());
    ASSERT_OK(vmep_group_create(0, 1, addr, "names-agree", &solo));
    /* Room for R ranks: the same shape as the group's buffer. */
    vmep_ep_config c;
    vmep_ep_config_init(&c);
    c.num_experts = w.E;
    c.hidden = w.H;
    c.max_tokens_per_rank = w.T;
    c.max_topk = w.K;
    c.max_ranks = R;
    ASSERT_OK(vmep_ep_create(solo, &c, &extra));
  }
  vmep_ep *ep = make_ep(g, &w, 0);
  char *all = (char *)calloc((size_t)R, sizeof(ep->ns));
  ASSERT_TRUE(all != NULL);
  ASSERT_OK(vmep_group_allgather(g, ep->ns, sizeof(ep->ns), all));
  for (int r = 0; r < R; r++)
    if (strcmp(all + (size_t)r * sizeof(ep->ns), ep->ns) != 0)
      TEST_FAIL("rank %d named the buffer \"%s\", rank %d \"%s\"", r,
                all + (size_t)r * sizeof(ep->ns), me, ep->ns);
  printf("buffer names agree on %d ranks (\"%s\"; rank 0 holds another of "
         "the shape)\n",
         R, ep->ns);
  free(all);
  ASSERT_OK(vmep_ep_destroy(ep));
  ASSERT_OK(vmep_ep_destroy(extra));
  ASSERT_OK(vmep_group_destroy(solo));
}

int main(void) {
  vmep_group *g = NULL;
  uint64_t seed = 0;
  gpu_test_join("test_ep", &g, &seed);
  ASSERT_TRUE(vmep_group_size(g) <= MAX_RANKS);
  shapes(g, seed);
  back_to_back(g, seed + 1000000);
  graph_replay(g, seed + 2000000);
  wait_counters(g, seed + 3000000);
  names_agree(g);
  ASSERT_OK(vmep_group_destroy(g));
  printf("5 passed, 0 failed\n");
  return 0;
}
