/*
 * High-throughput layout, dispatch and combine end to end across processes
 * (run under vmep-run, several ranks on one GPU). Every rank derives every
 * rank's inputs from one seed, and the rows each rank sends back to
 * combine from (seed, rank, source, token), so each computes the reference
 * of the whole group (ep/reference_ht.c) and checks its own outputs
 * against it, every element, bit for bit. Covered: bf16 and fp8 rows
 * (random positive scales passed through), uniform and skewed routings, a
 * rank with no tokens, tokens with all their experts on one rank, with
 * none, with invalid ids; expert_alignment 1 and 4; capacity R*T in one
 * call, and the two-step path (VMEP_EP_SEND, N read on the host, then
 * vmep_ep_ht_dispatch_recv with capacity N); a cached dispatch of new
 * rows; combines with and without weights and biases, from the caller's
 * memory and in place (the zero-copy buffer, NaNs past the rows it holds,
 * and its refusals, max_topk below R among them); a capacity below N
 * (VMEP_EP_ERR_OVERFLOW, nothing written past it); refused arguments; a
 * handle whose parity later dispatches took, still good for a combine and
 * a cached dispatch. Every output is poisoned before each call and
 * followed by a guard that must stay poisoned, as must the rows past N, and
 * vmep_ep_poll_errors must report exactly what each call should have. The
 * helpers are in ht_test.cuh; test_ht_modes.cu puts the calls among
 * low-latency ones and masks. Nothing here assumes mapped peers: over
 * pretend nodes (CTest test_ht_<R>ranks_<N>nodes) the same checks cover the
 * proxies' path, the in-place combine included (rows for remote sources
 * pushed, mapped ones read in place).
 */
#include "ht_test.cuh"

static const char *const ROUTING_NAMES[] = {"uniform", "skewed", "special",
                                            "full"};

static void check_layout(vmep_ep *ep, const struct world *w,
                         const struct io *io) {
  int R = w->R, n = w->in[w->me].num_tokens;
  size_t E = (size_t)w->p.num_experts;
  int32_t *per_rank = dev_alloc<int32_t>((size_t)R * 4);
  int32_t *per_expert = dev_alloc<int32_t>(E * 4);
  uint8_t *in_rank = dev_alloc<uint8_t>((size_t)n * R);
  struct vmep_ref_report rep;
  ASSERT_OK(vmep_ep_ht_layout(ep, io->topk, n, w->c.K, per_rank, per_expert,
                              in_rank, NULL));
  CUDA_OK(cudaDeviceSynchronize());
  struct vmep_ref_ht_layout got = {
      fetch<int32_t>(per_rank, (size_t)R * 4, "tokens_per_rank"),
      fetch<int32_t>(per_expert, E * 4, "tokens_per_expert"),
      fetch<uint8_t>(in_rank, (size_t)n * R, "in_rank")};
  ASSERT_OK(vmep__ref_ht_check_layout(&w->p, w->me, &got, &rep));
  expect_clean(&rep, "layout");
  /* Whether the layout counts invalid ids is not said; dispatch must. */
  unsigned errors = 0;
  uint64_t bad = 0;
  ASSERT_OK(vmep_ep_poll_errors(ep, &errors, &bad));
  ASSERT_TRUE(bad == 0 || bad == (uint64_t)w->bad);
  ASSERT_EQ(errors, bad ? VMEP_EP_ERR_BAD_EXPERT : 0u);
  /* Any output may be NULL. */
  dev_poison(per_rank, (size_t)R * 4);
  ASSERT_OK(
      vmep_ep_ht_layout(ep, io->topk, n, w->c.K, per_rank, NULL, NULL, NULL));
  CUDA_OK(cudaDeviceSynchronize());
  free(got.tokens_per_rank);
  got.tokens_per_rank = fetch<int32_t>(per_rank, (size_t)R * 4, "per_rank");
  free(got.tokens_per_expert);
  free(got.in_rank);
  got.tokens_per_expert = NULL;
  got.in_rank = NULL;
  ASSERT_OK(vmep__ref_ht_check_layout(&w->p, w->me, &got, &rep));
  expect_clean(&rep, "layout of tokens_per_rank alone");
  ASSERT_OK(vmep_ep_poll_errors(ep, NULL, NULL));
  free(got.tokens_per_rank);
  dev_free(per_rank);
  dev_free(per_expert);
  dev_free(in_rank);
}

/* Layout, dispatch, combine, a cached dispatch of new rows, combine. */
static void run_case(vmep_group *g, const struct ht_case *c, uint64_t seed) {
  int R = vmep_group_size(g);
  struct world w;
  struct io io;
  vmep_ep *ep = setup(g, c, seed, &w, &io);
  check_layout(ep, &w, &io);
  vmep_ep_ht_handle h =
      dispatch(ep, &w, &io, c->path == ONE_CALL ? R * c->T : -1, NULL);
  combine(ep, &w, &h, seed + 2, c->combine);
  gen_rows(&w, seed + 3);
  vmep_ep_ht_handle again = dispatch(ep, &w, &io, io.cap, &h);
  combine(ep, &w, &again, seed + 4, c->combine ^ 7);
  teardown(ep, &w, &io);
  printf("H=%d T=%d L=%d K=%d %s align %d, %s routing, %s, weights %s%s: "
         "exact\n",
         c->H, c->T, c->L, w.c.K, c->fp8 ? "fp8" : "bf16", c->align,
         ROUTING_NAMES[c->how],
         c->path == ONE_CALL ? "capacity R*T" : "two-step",
         c->weights ? "given" : "NULL",
         c->combine & IN_PLACE ? ", combined in place" : "");
}

static const struct ht_case CASES[] = {
    {512, 48, 4, 8, 0, 1, UNIFORM, ONE_CALL, 1, WITH_WEIGHTS},
    {2048, 32, 4, 4, 1, 4, UNIFORM, TWO_STEP, 1, WITH_WEIGHTS | WITH_BIAS0},
    {7168, 16, 2, 8, 0, 4, SKEWED, ONE_CALL, 0, 0},
    {4096, 24, 8, 6, 1, 1, SKEWED, TWO_STEP, 1, WITH_BIAS1},
    {1024, 64, 4, 8, 1, 4, SPECIAL, ONE_CALL, 1, WITH_WEIGHTS | WITH_BIAS1},
    {512, 40, 8, 8, 0, 1, SPECIAL, TWO_STEP, 0, WITH_BIAS0 | WITH_BIAS1},
    {7168, 8, 4, 1, 0, 1, UNIFORM, ONE_CALL, 1, 7},
    {128, 64, 1, 3, 1, 4, FULL, TWO_STEP, 1, 0},
    /* combined in place */
    {512, 48, 4, 8, 0, 1, UNIFORM, ONE_CALL, 1, WITH_WEIGHTS | IN_PLACE},
    {7168, 16, 2, 8, 1, 4, SKEWED, TWO_STEP, 1, WITH_BIAS0 | IN_PLACE},
    {1024, 64, 4, 8, 0, 1, SPECIAL, ONE_CALL, 0, 7 | IN_PLACE},
    {128, 64, 1, 3, 1, 4, FULL, TWO_STEP, 1, IN_PLACE},
};

/* A capacity below N, in one call and in the two-step path: N counted,
 * the first rows right, nothing written past them, VMEP_EP_ERR_OVERFLOW;
 * then a full dispatch and combine on the same buffer. */
static void overflow(vmep_group *g, uint64_t seed) {
  int R = vmep_group_size(g);
  struct ht_case c = {512, 32, 4, 4, 0, 1, FULL, ONE_CALL, 1, WITH_WEIGHTS};
  struct world w;
  struct io io;
  vmep_ep *ep = setup(g, &c, seed, &w, &io);
  int n = ref_rows(&w, me_rank, NULL);
  dispatch(ep, &w, &io, n / 2, NULL);
  w.c.path = TWO_STEP;
  dispatch(ep, &w, &io, n > 0 ? n - 1 : 0, NULL);
  w.c.path = ONE_CALL;
  vmep_ep_ht_handle h = dispatch(ep, &w, &io, R * c.T, NULL);
  combine(ep, &w, &h, seed + 1, c.combine);
  teardown(ep, &w, &io);
  printf("capacity %d and %d of %d rows: overflow reported, nothing written "
         "past them\n",
         n / 2, n > 0 ? n - 1 : 0, n);
}

static void bad_dispatch_args(vmep_ep *ep, const struct world *w,
                              const struct io *io) {
  vmep_ep_ht_handle h;
  vmep_ep_ht_dispatch_args a = dispatch_args(w, io, NULL), bad;
  set_rows(&a, w, io);
  int T = w->c.T;
#define DISPATCH_REFUSED(change, field)                                        \
  do {                                                                         \
    bad = a;                                                                   \
    change;                                                                    \
    EXPECT_REFUSED(vmep_ep_ht_dispatch(ep, &bad, VMEP_EP_SEND_RECV, NULL, &h), \
                   field);                                                     \
  } while (0)
  EXPECT_REFUSED(vmep_ep_ht_dispatch(NULL, &a, VMEP_EP_SEND_RECV, NULL, &h),
                 "ep");
  EXPECT_REFUSED(vmep_ep_ht_dispatch(ep, NULL, VMEP_EP_SEND_RECV, NULL, &h),
                 "args");
  EXPECT_REFUSED(vmep_ep_ht_dispatch(ep, &a, VMEP_EP_SEND_RECV, NULL, NULL),
                 "handle_out");
  DISPATCH_REFUSED(bad.struct_size = 0, "struct_size");
  DISPATCH_REFUSED(bad.struct_size = sizeof(bad) + 8, "struct_size");
  DISPATCH_REFUSED(bad.num_topk = 0, "num_topk");
  DISPATCH_REFUSED(bad.num_topk = MAX_TOPK + 1, "num_topk");
  DISPATCH_REFUSED(bad.num_tokens = -1, "num_tokens");
  DISPATCH_REFUSED(bad.num_tokens = T + 1, "num_tokens");
  DISPATCH_REFUSED(bad.capacity = -1, "capacity");
  DISPATCH_REFUSED(bad.x = NULL, "x");
  DISPATCH_REFUSED(bad.x = (const char *)a.x + 2, "x");
  DISPATCH_REFUSED(bad.recv_x = (char *)a.recv_x + 2, "recv_x");
  DISPATCH_REFUSED(bad.topk_idx = NULL, "topk_idx");
  DISPATCH_REFUSED(
      (bad.use_fp8 = 1, bad.x_scales = NULL, bad.recv_scales = io->recv_scales),
      "x_scales");
  EXPECT_REFUSED(vmep_ep_ht_dispatch_recv(NULL, &a, &h, NULL), "ep");
  EXPECT_REFUSED(vmep_ep_ht_dispatch_recv(ep, &a, NULL, NULL), "handle");
#undef DISPATCH_REFUSED
}

static void bad_combine_args(vmep_ep *ep, const vmep_ep_ht_handle *h,
                             const struct io *io) {
  vmep_ep_ht_combine_args a, bad;
  vmep_ep_ht_combine_args_init(&a);
  a.x = io->recv_x;
  a.out = io->x;
#define COMBINE_REFUSED(change, field)                                         \
  do {                                                                         \
    bad = a;                                                                   \
    change;                                                                    \
    EXPECT_REFUSED(vmep_ep_ht_combine(ep, &bad, h, NULL), field);              \
  } while (0)
  EXPECT_REFUSED(vmep_ep_ht_combine(NULL, &a, h, NULL), "ep");
  EXPECT_REFUSED(vmep_ep_ht_combine(ep, NULL, h, NULL), "args");
  EXPECT_REFUSED(vmep_ep_ht_combine(ep, &a, NULL, NULL), "handle");
  COMBINE_REFUSED(bad.struct_size = 0, "struct_size");
  COMBINE_REFUSED(bad.x = (const char *)a.x + 2, "x");
  COMBINE_REFUSED(bad.out = NULL, "out");
  COMBINE_REFUSED(bad.out = (char *)a.out + 2, "out");
#undef COMBINE_REFUSED
}

/* Refused arguments, on every rank alike; the buffer works on after
 * them. */
static void refusals(vmep_group *g, uint64_t seed) {
  int R = vmep_group_size(g);
  struct ht_case c = {512, 16, 4, 4, 0, 1, UNIFORM, ONE_CALL, 1, WITH_WEIGHTS};
  struct world w;
  struct io io;
  vmep_ep *ep = setup(g, &c, seed, &w, &io);
  io_rows(&io, &w, R * c.T);
  EXPECT_REFUSED(
      vmep_ep_ht_layout(NULL, io.topk, 1, c.K, NULL, NULL, NULL, NULL), "ep");
  EXPECT_REFUSED(vmep_ep_ht_layout(ep, io.topk, 1, 0, NULL, NULL, NULL, NULL),
                 "num_topk");
  EXPECT_REFUSED(
      vmep_ep_ht_layout(ep, io.topk, -1, c.K, NULL, NULL, NULL, NULL),
      "num_tokens");
  bad_dispatch_args(ep, &w, &io);
  vmep_ep_ht_handle h = dispatch(ep, &w, &io, R * c.T, NULL);
  bad_combine_args(ep, &h, &io);
  combine(ep, &w, &h, seed + 1, c.combine);
  expect_errors(ep, 0, 0, "the refused calls");
  teardown(ep, &w, &io);
  printf("refused arguments; the buffer works on after them\n");
}

/* The zero-copy buffer serves the last dispatch of its parity (`h`), not
 * `old`, whose parity h took; while h holds it, old's combine (which
 * would push rows into it) is refused. */
static void in_place_refusals(vmep_ep *ep, const vmep_ep_ht_handle *old,
                              const vmep_ep_ht_handle *h, const struct io *io,
                              int H) {
  void *buf = NULL;
  EXPECT_REFUSED(vmep_ep_ht_combine_buffer(ep, old, &buf, NULL),
                 "last dispatch");
  EXPECT_REFUSED(vmep_ep_ht_combine_buffer(ep, h, NULL, NULL), "buf_out");
  vmep_ep_ht_handle big = *h;
  big.capacity = h->capacity + 1;
  EXPECT_REFUSED(vmep_ep_ht_combine_buffer(ep, &big, &buf, NULL), "capacity");
  ASSERT_OK(vmep_ep_ht_combine_buffer(ep, h, &buf, NULL));
  vmep_ep_ht_combine_args a;
  vmep_ep_ht_combine_args_init(&a);
  a.x = io->recv_x;
  a.out = io->x;
  EXPECT_REFUSED(vmep_ep_ht_combine(ep, &a, old, NULL), "zero-copy");
  /* Inside the buffer but not at its start: pushed onto itself. */
  a.x = (const char *)buf + (size_t)2 * H;
  EXPECT_REFUSED(vmep_ep_ht_combine(ep, &a, h, NULL), "overlaps");
}

/* With max_topk below R the slots cannot hold all a rank may receive: the
 * zero-copy buffer is refused on every rank alike (not by the rows each
 * happened to get), and the combine from the caller's memory works on. */
static void in_place_too_small(vmep_group *g, uint64_t seed) {
  int R = vmep_group_size(g);
  struct ht_case c = {512, 16, 2, 1, 0, 1, UNIFORM, ONE_CALL, 1, WITH_WEIGHTS};
  struct world w;
  struct io io;
  vmep_ep *ep = setup(g, &c, seed, &w, &io, 1);
  vmep_ep_ht_handle h = dispatch(ep, &w, &io, R * c.T, NULL);
  void *buf = NULL;
  vmep_status st = vmep_ep_ht_combine_buffer(ep, &h, &buf, NULL);
  if (st != VMEP_ERR_UNSUPPORTED || !strstr(vmep_last_error(), "max_topk"))
    TEST_FAIL("rank %d: with max_topk 1 < R = %d the zero-copy buffer gave "
              "%s (\"%s\"), expected VMEP_ERR_UNSUPPORTED naming max_topk",
              me_rank, R, vmep_status_name(st), vmep_last_error());
  combine(ep, &w, &h, seed + 1, c.combine);
  teardown(ep, &w, &io);
  printf("max_topk 1 < R = %d: no zero-copy buffer; the combine works on\n", R);
}

/* Handles do not expire (docs/HT.md): the handle of a dispatch whose
 * parity two later dispatches of another routing took still serves a
 * combine and a cached dispatch, as a backward pass uses its forward's. */
static void old_handle(vmep_group *g, uint64_t seed) {
  int R = vmep_group_size(g);
  struct ht_case c = {1024, 24, 4, 6, 1, 4, SPECIAL, ONE_CALL, 1, 0};
  struct world w, later;
  struct io io, later_io;
  vmep_ep *ep = setup(g, &c, seed, &w, &io);
  vmep_ep_ht_handle old = dispatch(ep, &w, &io, R * c.T, NULL);
  gen_world(&later, &c, R, me_rank, seed + 1);
  io_alloc(&later_io, &later);
  for (int i = 0; i < 2; i++) {
    vmep_ep_ht_handle h = dispatch(ep, &later, &later_io, R * c.T, NULL);
    if (i == 1)
      in_place_refusals(ep, &old, &h, &io, c.H);
    combine(ep, &later, &h, seed + 2 + i, WITH_BIAS0 | (i ? IN_PLACE : 0));
  }
  combine(ep, &w, &old, seed + 4, WITH_WEIGHTS | WITH_BIAS1);
  gen_rows(&w, seed + 5);
  vmep_ep_ht_handle again = dispatch(ep, &w, &io, io.cap, &old);
  combine(ep, &w, &again, seed + 6, WITH_WEIGHTS);
  io_free(&later_io);
  free_world(&later);
  teardown(ep, &w, &io);
  printf("a handle two dispatches old still serves a combine and a cached "
         "dispatch\n");
}

int main(void) {
  vmep_group *g = NULL;
  uint64_t seed = 0;
  gpu_test_join("test_ht", &g, &seed);
  ASSERT_TRUE(vmep_group_size(g) <= MAX_RANKS);
  me_rank = vmep_group_rank(g);
  static char name[32];
  for (size_t i = 0; i < sizeof(CASES) / sizeof(CASES[0]); i++) {
    snprintf(name, sizeof(name), "CASES[%zu]", i);
    case_name = name;
    run_case(g, &CASES[i], seed + 1000 * i);
  }
  case_name = "overflow";
  overflow(g, seed + 100000);
  case_name = "refusals";
  refusals(g, seed + 200000);
  case_name = "old handle";
  old_handle(g, seed + 300000);
  if (vmep_group_size(g) > 1) {
    case_name = "in place, too few slots";
    in_place_too_small(g, seed + 400000);
  }
  ASSERT_OK(vmep_group_destroy(g));
  printf("%zu cases, overflow, refusals and old handles passed\n",
         sizeof(CASES) / sizeof(CASES[0]));
  return 0;
}
