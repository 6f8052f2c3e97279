/*
 * High-throughput calls among the other uses of their buffer, across
 * processes (run under vmep-run, several ranks on one GPU), with the inputs
 * and checks of test_ht.cu (ht_test.cuh): every output poisoned before each
 * call, every element checked against the reference of the whole group, the
 * rows past N still poisoned, and the error word after each call.
 * Covered:
 *  - low-latency and high-throughput calls interleaved on one buffer, each
 *    mode taking either parity, each call checked against its reference
 *    (ep/reference.c, ep/reference_ht.c); vmep_ep_combine refuses, as
 *    stale, a low-latency handle whose parity a high-throughput dispatch
 *    took and one naming a high-throughput dispatch; a high-throughput
 *    handle whose parity a low-latency dispatch took still combines;
 *  - a low-latency combine whose receive phase waits holds its parity: a
 *    dispatch of either mode there is refused, and a high-throughput
 *    combine of a handle of that parity, while one of the other parity
 *    goes on; after vmep_ep_combine_recv all of them go on;
 *  - masks: one rank m isolated (every other rank masks m, m masks every
 *    other rank): dispatch and combine checked against the reference of
 *    each rank's view; after vmep_ep_clear_mask a call checked again; a
 *    cached dispatch of a handle from before the masks while m is
 *    isolated again, the rows of masked sources zeros; after clearing the
 *    masks again, a call on each parity.
 */
#include "ht_test.cuh"

/* Rounds of the interleaved calls: even, so that the low-latency dispatch
 * after them takes the parity of the last high-throughput one. */
#define ROUNDS 4
/* The masks case's buffer masks a rank it waited for this long in vain (a
 * flag that never comes costs at most four times this, docs/RELIABILITY.md,
 * not four minutes). */
#define MASKS_TIMEOUT_MS 5000

/* `what` and the running case, for a failure message of the low-latency
 * checks (valid until the next call). */
static const char *in_case(const char *what) {
  static char text[160];
  snprintf(text, sizeof(text), "(%s) %s", case_name, what);
  return text;
}

/* ---- low-latency calls on the same buffer ------------------------------- */

/* A low-latency dispatch and its combine: the problem (a world's bf16
 * rows, expert ids and weights), the device arrays, [L, R*T] rows each,
 * and every rank's layout and expert outputs. */
struct ll {
  struct vmep_ref_rank_input in[MAX_RANKS];
  struct vmep_ref_problem p;
  vmep_ep_dispatch_args a;
  void *expert_out, *out;
  struct layouts lay;
};

static size_t ll_rows(const struct world *w) {
  return (size_t)w->c.L * w->R * w->c.T;
}

static void ll_alloc(struct ll *ll, const struct world *w) {
  size_t rows = ll_rows(w), H = (size_t)w->c.H;
  memset(ll, 0, sizeof(*ll));
  vmep_ep_dispatch_args_init(&ll->a);
  ll->a.recv_x = dev_alloc<void>(rows * H * 2);
  ll->a.recv_scales = dev_alloc<float>(rows * groups(w) * 4);
  ll->a.recv_count = dev_alloc<int32_t>((size_t)w->c.L * 4);
  ll->a.src_info = dev_alloc<int32_t>(rows * 4);
  ll->a.layout_range = dev_alloc<int64_t>((size_t)w->c.L * w->R * 8);
  ll->expert_out = dev_alloc<void>(rows * H * 2);
  ll->out = dev_alloc<void>((size_t)w->c.T * H * 2);
}

static void ll_free(struct ll *ll) {
  void *p[] = {ll->a.recv_x,   ll->a.recv_scales,  ll->a.recv_count,
               ll->a.src_info, ll->a.layout_range, ll->expert_out,
               ll->out};
  for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
    dev_free(p[i]);
}

/*
 * A low-latency dispatch of w's inputs (bf16 rows, in fp8 on the way with
 * `fp8`), checked: the handle, the error word, this rank's outputs against
 * the reference; every rank's expert outputs are made (ll->lay) and this
 * rank's uploaded for the combine.
 */
static vmep_ep_handle ll_dispatch(vmep_group *g, vmep_ep *ep,
                                  const struct world *w, struct io *io,
                                  struct ll *ll, int fp8) {
  const int me = w->me;
  size_t rows = ll_rows(w), H = (size_t)w->c.H;
  vmep_ep_handle h;
  ASSERT_TRUE(!w->c.fp8 && w->c.weights);
  for (int r = 0; r < w->R; r++)
    ll->in[r] = {w->in[r].num_tokens, (const uint16_t *)w->x[r], w->topk[r],
                 w->w[r]};
  ll->p = {
      w->R,   w->p.num_experts,         w->c.T, w->c.H, w->c.K, fp8, 0, NULL,
      ll->in, VMEP_EP_SCALES_ROW_MAJOR, 0,      0};
  io_load(io, w);
  dev_poison(ll->a.recv_x, rows * H * 2);
  dev_poison(ll->a.recv_scales, rows * groups(w) * 4);
  dev_poison(ll->a.recv_count, (size_t)w->c.L * 4);
  dev_poison(ll->a.src_info, rows * 4);
  dev_poison(ll->a.layout_range, (size_t)w->c.L * w->R * 8);
  ll->a.x = io->x;
  ll->a.topk_idx = io->topk;
  ll->a.num_tokens = w->in[me].num_tokens;
  ll->a.num_topk = w->c.K;
  ll->a.use_fp8 = fp8;
  ASSERT_OK(vmep_ep_dispatch(ep, &ll->a, VMEP_EP_SEND_RECV, NULL, &h));
  expect_errors(ep, w->bad ? VMEP_EP_ERR_BAD_EXPERT : 0, w->bad,
                "a low-latency dispatch");
  ASSERT_TRUE(h.parity == 0 || h.parity == 1);
  ASSERT_EQ(h.num_tokens, w->in[me].num_tokens);
  ASSERT_EQ(h.num_topk, w->c.K);
  check_ll_dispatch(g, &ll->p, &ll->a, &ll->lay,
                    in_case("low-latency dispatch"));
  CUDA_OK(cudaMemcpy(ll->expert_out, ll->lay.eo[me], rows * H * 2,
                     cudaMemcpyHostToDevice));
  return h;
}

/* The combine arguments of ll_dispatch's outputs (io: its inputs). */
static vmep_ep_combine_args ll_combine_args(const struct io *io,
                                            const struct ll *ll) {
  vmep_ep_combine_args a;
  vmep_ep_combine_args_init(&a);
  a.expert_out = ll->expert_out;
  a.topk_idx = io->topk;
  a.topk_weights = io->w;
  a.out = ll->out;
  return a;
}

/* After a low-latency combine's receive phase: the error word and out
 * against the reference; frees the layouts. */
static void ll_combine_check(vmep_ep *ep, const struct world *w,
                             struct ll *ll) {
  expect_errors(ep, 0, 0, "a low-latency combine");
  check_ll_combine(&ll->p, w->me, ll->out, &ll->lay,
                   in_case("low-latency combine"));
  free_layouts(w->R, &ll->lay);
}

/* The combine of low-latency handle h: checked with VMEP_EP_SEND_RECV;
 * with VMEP_EP_SEND alone its receive phase and check come later. */
static void ll_combine(vmep_ep *ep, const struct world *w, const struct io *io,
                       struct ll *ll, const vmep_ep_handle *h, int phases) {
  vmep_ep_combine_args a = ll_combine_args(io, ll);
  dev_poison(ll->out, (size_t)w->c.T * w->c.H * 2);
  ASSERT_OK(vmep_ep_combine(ep, &a, h, phases, NULL));
  if (phases == VMEP_EP_SEND_RECV)
    ll_combine_check(ep, w, ll);
}

/* Dispatch handles of two modes on the same parity, which the test's order
 * of calls decides: a premise of what follows. */
static void expect_same_parity(int ll_parity, int ht_parity, const char *what) {
  if (ll_parity != ht_parity)
    TEST_FAIL("rank %d (%s): %s: the low-latency handle has parity %d, the "
              "high-throughput one %d",
              me_rank, case_name, what, ll_parity, ht_parity);
}

/* ---- the cases ---------------------------------------------------------- */

/*
 * ROUNDS rounds of a low-latency dispatch and a high-throughput one (each
 * first in turn, so that each mode takes either parity), then the
 * low-latency combine of the first and the high-throughput combine (each
 * first in turn), of new inputs each round. From the second round on the
 * high-throughput dispatch takes the parity of the previous round's
 * low-latency handle, which vmep_ep_combine then refuses as stale, as it
 * does a low-latency handle naming that high-throughput dispatch. Last, a
 * low-latency dispatch takes the parity of the last high-throughput
 * handle, which still combines (such handles do not expire).
 */
static void interleave(vmep_group *g, uint64_t seed) {
  const int R = vmep_group_size(g);
  struct ht_case lc = {1024, 32, 4, 6, 0, 1, UNIFORM, ONE_CALL, 1, 0};
  struct ht_case hc = {1024, 32, 4, 6, 1, 4, SPECIAL, ONE_CALL, 1, 0};
  struct world lw, hw;
  struct io lio, hio;
  struct ll ll;
  vmep_ep_handle lh = {0, 0, 0, 0}, before = lh;
  vmep_ep_ht_handle hh;
  gen_world(&lw, &lc, R, me_rank, seed);
  gen_world(&hw, &hc, R, me_rank, seed + 1);
  io_alloc(&lio, &lw);
  io_alloc(&hio, &hw);
  ll_alloc(&ll, &lw);
  vmep_ep *ep = make_ep(g, &lc);
  for (int round = 0; round < ROUNDS; round++) {
    uint64_t key = seed + 10 * (uint64_t)(round + 1);
    int ht_first = round % 2, ll_fp8 = (round + 1) / 2 % 2;
    if (round > 0) {
      free_world(&lw);
      free_world(&hw);
      lc.how = (enum routing)(round % 4);
      hc.how = (enum routing)((round + 2) % 4);
      hc.fp8 = !hc.fp8;
      gen_world(&lw, &lc, R, me_rank, key);
      gen_world(&hw, &hc, R, me_rank, key + 1);
    }
    if (!ht_first)
      lh = ll_dispatch(g, ep, &lw, &lio, &ll, ll_fp8);
    hh = dispatch(ep, &hw, &hio, R * hc.T, NULL);
    if (round > 0) {
      vmep_ep_combine_args a = ll_combine_args(&lio, &ll);
      vmep_ep_handle of_ht = {hh.parity, hh.num_tokens, hh.num_topk, hh.call};
      expect_same_parity(before.parity, hh.parity,
                         "the previous round's handle");
      EXPECT_REFUSED(vmep_ep_combine(ep, &a, &before, VMEP_EP_SEND_RECV, NULL),
                     "stale");
      EXPECT_REFUSED(vmep_ep_combine(ep, &a, &of_ht, VMEP_EP_SEND_RECV, NULL),
                     "stale");
    }
    if (ht_first)
      lh = ll_dispatch(g, ep, &lw, &lio, &ll, ll_fp8);
    if (lh.parity == hh.parity)
      TEST_FAIL("rank %d (%s): round %d: both dispatches took parity %d",
                me_rank, case_name, round, lh.parity);
    if (!ht_first)
      ll_combine(ep, &lw, &lio, &ll, &lh, VMEP_EP_SEND_RECV);
    combine(ep, &hw, &hh, key + 2, round % 2 ? WITH_WEIGHTS : WITH_BIAS0);
    if (ht_first)
      ll_combine(ep, &lw, &lio, &ll, &lh, VMEP_EP_SEND_RECV);
    before = lh;
  }
  free_world(&lw);
  gen_world(&lw, &lc, R, me_rank, seed + 2);
  lh = ll_dispatch(g, ep, &lw, &lio, &ll, 0);
  expect_same_parity(lh.parity, hh.parity, "the last high-throughput handle");
  ll_combine(ep, &lw, &lio, &ll, &lh, VMEP_EP_SEND_RECV);
  combine(ep, &hw, &hh, seed + 3, WITH_WEIGHTS | WITH_BIAS1);
  ASSERT_OK(vmep_ep_destroy(ep));
  ll_free(&ll);
  io_free(&lio);
  io_free(&hio);
  free_world(&lw);
  free_world(&hw);
  printf("%d rounds of low-latency and high-throughput calls on one buffer, "
         "each mode on either parity: exact; stale handles refused\n",
         ROUNDS);
}

/*
 * A low-latency combine whose receive phase waits (VMEP_EP_SEND alone)
 * holds its parity: a dispatch of either mode there is refused, and so is
 * a high-throughput combine of a handle of that parity and the combine of
 * the waiting handle itself; a high-throughput combine on the other parity
 * goes on. After vmep_ep_combine_recv the combine is checked, the refused
 * dispatch goes on, and the old high-throughput handle of that parity
 * combines.
 */
static void pending_combine(vmep_group *g, uint64_t seed) {
  const int R = vmep_group_size(g);
  struct ht_case lc = {512, 24, 4, 8, 0, 1, SPECIAL, ONE_CALL, 1, 0};
  struct ht_case hc = {512, 24, 4, 8, 0, 4, SKEWED, ONE_CALL, 1, WITH_WEIGHTS};
  struct world lw, zw, bw;
  struct io lio, zio, bio;
  struct ll ll;
  vmep_ep_ht_handle refused;
  vmep_ep_handle refused_ll;
  gen_world(&zw, &hc, R, me_rank, seed);
  gen_world(&lw, &lc, R, me_rank, seed + 1);
  gen_world(&bw, &hc, R, me_rank, seed + 2);
  io_alloc(&zio, &zw);
  io_alloc(&lio, &lw);
  io_alloc(&bio, &bw);
  ll_alloc(&ll, &lw);
  vmep_ep *ep = make_ep(g, &lc);
  /* z, a low-latency pair on the other parity, then a on z's parity. */
  vmep_ep_ht_handle z = dispatch(ep, &zw, &zio, R * hc.T, NULL);
  combine(ep, &zw, &z, seed + 3, WITH_WEIGHTS | WITH_BIAS0);
  vmep_ep_handle pair = ll_dispatch(g, ep, &lw, &lio, &ll, 0);
  ll_combine(ep, &lw, &lio, &ll, &pair, VMEP_EP_SEND_RECV);
  free_world(&lw);
  gen_world(&lw, &lc, R, me_rank, seed + 4);
  vmep_ep_handle a = ll_dispatch(g, ep, &lw, &lio, &ll, 1);
  expect_same_parity(a.parity, z.parity, "two dispatches apart");
  vmep_ep_ht_handle b = dispatch(ep, &bw, &bio, R * hc.T, NULL);
  ll_combine(ep, &lw, &lio, &ll, &a, VMEP_EP_SEND);
  /* The next dispatch would take a's parity. */
  vmep_ep_ht_dispatch_args da = dispatch_args(&bw, &bio, NULL);
  set_rows(&da, &bw, &bio);
  EXPECT_REFUSED(
      vmep_ep_ht_dispatch(ep, &da, VMEP_EP_SEND_RECV, NULL, &refused),
      "vmep_ep_combine_recv");
  EXPECT_REFUSED(
      vmep_ep_dispatch(ep, &ll.a, VMEP_EP_SEND_RECV, NULL, &refused_ll),
      "vmep_ep_combine_recv");
  vmep_ep_ht_combine_args ca;
  vmep_ep_ht_combine_args_init(&ca);
  ca.x = zio.recv_x;
  ca.out = zio.x;
  EXPECT_REFUSED(vmep_ep_ht_combine(ep, &ca, &z, NULL),
                 "waits for its receive phase");
  vmep_ep_combine_args la = ll_combine_args(&lio, &ll);
  EXPECT_REFUSED(vmep_ep_combine(ep, &la, &a, VMEP_EP_SEND_RECV, NULL),
                 "waits for its receive phase");
  combine(ep, &bw, &b, seed + 5, WITH_WEIGHTS | WITH_BIAS1);
  ASSERT_OK(vmep_ep_combine_recv(ep, &a, NULL));
  ll_combine_check(ep, &lw, &ll);
  free_world(&bw);
  gen_world(&bw, &hc, R, me_rank, seed + 6);
  b = dispatch(ep, &bw, &bio, R * hc.T, NULL);
  expect_same_parity(a.parity, b.parity, "the dispatch refused before");
  combine(ep, &bw, &b, seed + 7, WITH_WEIGHTS);
  combine(ep, &zw, &z, seed + 8, WITH_BIAS0 | WITH_BIAS1);
  ASSERT_OK(vmep_ep_destroy(ep));
  ll_free(&ll);
  io_free(&zio);
  io_free(&lio);
  io_free(&bio);
  free_world(&zw);
  free_world(&lw);
  free_world(&bw);
  printf("a low-latency combine waiting for its receive phase holds its "
         "parity; after it every refused call goes on, exact\n");
}

/* Rank m isolated (`on`: every rank but m masks m, m masks every other
 * rank) or no rank masked (vmep_ep_clear_mask); view[r] = 1 where rank r
 * is masked here, as vmep_ep_query_mask must say. */
static void isolate(vmep_ep *ep, int m, int on, int *view) {
  const int R = vmep_ep_max_ranks(ep);
  int32_t got[MAX_RANKS];
  for (int r = 0; r < R; r++) {
    view[r] = on && r != me_rank && (me_rank == m || r == m);
    if (view[r])
      ASSERT_OK(vmep_ep_set_mask(ep, r, 1));
  }
  if (!on)
    ASSERT_OK(vmep_ep_clear_mask(ep));
  ASSERT_OK(vmep_ep_query_mask(ep, got));
  for (int r = 0; r < R; r++)
    if (got[r] != view[r])
      TEST_FAIL("rank %d (%s): vmep_ep_query_mask says rank %d is %smasked",
                me_rank, case_name, r, got[r] ? "" : "not ");
}

/* A dispatch and a combine of w's world from `seed`, into io, checked
 * against the reference of this rank's view (`view`, or NULL: none
 * masked); returns the dispatch's parity. Every rank enters each call
 * together, so that the masks case's short timeout bounds only the
 * kernels' waits. */
static int masked_pair(vmep_group *g, vmep_ep *ep, struct world *w,
                       struct io *io, const int *view, uint64_t seed) {
  const struct ht_case c = w->c;
  free_world(w);
  gen_world(w, &c, vmep_group_size(g), me_rank, seed);
  w->p.masked = view;
  ASSERT_OK(vmep_group_barrier(g));
  vmep_ep_ht_handle h = dispatch(ep, w, io, w->R * c.T, NULL);
  ASSERT_OK(vmep_group_barrier(g));
  combine(ep, w, &h, seed + 1, c.combine);
  return h.parity;
}

/*
 * Rank m (from the seed) isolated. Before any mask, a dispatch whose
 * handle h0 is kept, and its combine; m isolated: a dispatch and combine
 * (masked sources send nothing, masked ranks receive nothing, their rows
 * count as zero); the masks cleared: a dispatch and combine; m isolated
 * again: a cached dispatch of h0 (rows of masked sources zeros); the masks
 * cleared again: a dispatch and combine on each parity. The masked calls
 * raise no flags between m and the others, so the last call, on the
 * parity they used, needs the flags of both sides to have gone on alike
 * (else its waits time out: VMEP_EP_ERR_TIMEOUT, m masked).
 */
static void masks(vmep_group *g, uint64_t seed) {
  const int R = vmep_group_size(g), m = (int)(seed % (uint64_t)R);
  if (R < 2) {
    printf("masks: skipped, a rank alone has nobody to mask\n");
    return;
  }
  struct ht_case c = {1024, 32, 4, 6, 1, 4, SPECIAL, ONE_CALL, 1, 0};
  int view[MAX_RANKS];
  static char name[96];
  struct world w0, w;
  struct io io0, io;
  gen_world(&w0, &c, R, me_rank, seed);
  gen_world(&w, &c, R, me_rank, seed + 1);
  io_alloc(&io0, &w0);
  io_alloc(&io, &w);
  c.combine = WITH_WEIGHTS | WITH_BIAS0;
  vmep_ep *ep = make_ep(g, &c, MASKS_TIMEOUT_MS);
  case_name = "masks, before any mask";
  ASSERT_OK(vmep_group_barrier(g));
  vmep_ep_ht_handle h0 = dispatch(ep, &w0, &io0, R * c.T, NULL);
  ASSERT_OK(vmep_group_barrier(g));
  combine(ep, &w0, &h0, seed + 2, c.combine);
  snprintf(name, sizeof(name), "masks, rank %d isolated", m);
  case_name = name;
  isolate(ep, m, 1, view);
  int masked_parity = masked_pair(g, ep, &w, &io, view, seed + 3);
  snprintf(name, sizeof(name), "masks, after vmep_ep_clear_mask");
  isolate(ep, m, 0, view);
  masked_pair(g, ep, &w, &io, NULL, seed + 5);
  snprintf(name, sizeof(name),
           "masks, a cached dispatch of a handle from before them, rank %d "
           "isolated",
           m);
  isolate(ep, m, 1, view);
  gen_rows(&w0, seed + 7);
  w0.p.masked = view;
  ASSERT_OK(vmep_group_barrier(g));
  if (dispatch(ep, &w0, &io0, io0.cap, &h0).parity != masked_parity)
    TEST_FAIL("rank %d (%s): took parity %d, the first masked call %d", me_rank,
              case_name, !masked_parity, masked_parity);
  isolate(ep, m, 0, view);
  for (int on_masked = 0; on_masked < 2; on_masked++) {
    snprintf(name, sizeof(name), "masks, cleared again, a call on %s",
             on_masked ? "the parity of the masked calls" : "the other parity");
    if (masked_pair(g, ep, &w, &io, NULL, seed + 8 + 2 * (uint64_t)on_masked) !=
        (on_masked ? masked_parity : !masked_parity))
      TEST_FAIL("rank %d (%s): the call took the other parity", me_rank,
                case_name);
  }
  ASSERT_OK(vmep_ep_destroy(ep));
  io_free(&io0);
  io_free(&io);
  free_world(&w0);
  free_world(&w);
  printf("rank %d isolated by masks: dispatch, combine and a cached "
         "dispatch exact; after vmep_ep_clear_mask calls on both parities "
         "exact\n",
         m);
}

int main(void) {
  vmep_group *g = NULL;
  uint64_t seed = 0;
  gpu_test_join("test_ht_modes", &g, &seed);
  ASSERT_TRUE(vmep_group_size(g) <= MAX_RANKS);
  me_rank = vmep_group_rank(g);
  case_name = "interleave";
  interleave(g, seed);
  case_name = "pending combine";
  pending_combine(g, seed + 100000);
  masks(g, seed + 200000);
  ASSERT_OK(vmep_group_destroy(g));
  printf("interleaved modes, a pending combine and masks passed\n");
  return 0;
}
