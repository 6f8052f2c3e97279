/*
 * The EP buffer without a GPU: every invalid config field is refused with a
 * message naming it; the buffer size matches a hand computation of the
 * layout (and DeepEP's low-latency size its published formula); and the
 * dispatch / combine entry points refuse bad arguments (NULL or misaligned
 * pointers, n > T, K > max_topk, bad phases, stale or foreign handles,
 * handles whose counts no dispatch could have had) before anything is
 * launched, as do the membership calls (NULL buffers, bad rank lists);
 * creating a buffer or a window refuses bad arguments and, without a
 * driver, fails cleanly leaving no output. The structs that grow are
 * refused with a bad struct_size, and read with defaults past a smaller
 * one.
 */
#include <stddef.h>
#include <string.h>

#include "ep/ep.h"
#include "test.h"

static vmep_ep_config valid_config(void) {
  vmep_ep_config c;
  vmep_ep_config_init(&c);
  c.num_experts = 16;
  c.hidden = 7168;
  c.max_tokens_per_rank = 128;
  c.max_topk = 8;
  return c;
}

static void expect_bad(vmep_ep_config c, int ranks, const char *field) {
  size_t bytes = 12345;
  ASSERT_STATUS(vmep_ep_buffer_bytes(&c, ranks, &bytes), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), field);
  ASSERT_EQ(bytes, 12345);
}

static void config_fields(void) {
  vmep_ep_config c = valid_config();
  size_t bytes = 0;
  ASSERT_OK(vmep_ep_buffer_bytes(&c, 4, &bytes));
  c.num_experts = 6; /* not a multiple of 4 ranks */
  expect_bad(c, 4, "num_experts");
  c = valid_config();
  c.num_experts = 0;
  expect_bad(c, 4, "num_experts");
  /* The count kernels' shared counters bound the local experts. */
  c = valid_config();
  c.num_experts = 4 * 8192;
  c.max_tokens_per_rank = 64;
  ASSERT_OK(vmep_ep_buffer_bytes(&c, 4, &bytes));
  c.num_experts = 4 * 8193;
  expect_bad(c, 4, "at most 8192 local experts on each of the 4 ranks");
  int bad_hidden[] = {0, 100, 129, 32768 + 128, -128};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad_hidden); i++) {
    c = valid_config();
    c.hidden = bad_hidden[i];
    expect_bad(c, 4, "hidden");
  }
  int bad_tokens[] = {0, -1, 65536};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad_tokens); i++) {
    c = valid_config();
    c.max_tokens_per_rank = bad_tokens[i];
    expect_bad(c, 4, "max_tokens_per_rank");
  }
  int bad_topk[] = {0, 17, -3};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad_topk); i++) {
    c = valid_config();
    c.max_topk = bad_topk[i];
    expect_bad(c, 4, "max_topk");
  }
  c = valid_config();
  c.device = -2;
  expect_bad(c, 4, "device");
  c = valid_config();
  c.num_sms = 1025;
  expect_bad(c, 4, "num_sms");
  c = valid_config();
  c.timeout_ms = -1;
  expect_bad(c, 4, "timeout_ms");
  c = valid_config();
  c.zero_copy = 2;
  expect_bad(c, 4, "zero_copy");
  c = valid_config();
  c.num_experts = 1024 * 2048; /* 2048 local experts on each of 1024 ranks */
  c.max_tokens_per_rank = 65535;
  expect_bad(c, 1024, "num_experts * max_tokens_per_rank"); /* >= 2^31 */
  c = valid_config();
  c.max_ranks = -1;
  expect_bad(c, 4, "max_ranks");
  c.max_ranks = 1025;
  expect_bad(c, 4, "max_ranks");
  c = valid_config();
  c.max_ranks = 6; /* experts must divide over the capacity, not the group */
  expect_bad(c, 4, "multiple of the 6 ranks");
  c = valid_config();
  expect_bad(c, 0, "number of ranks");
  expect_bad(c, 1025, "number of ranks");
  /* A capacity below the group's size, and a group of no ranks beside a
   * capacity: refused by the size calls as by vmep_ep_create. */
  c.max_ranks = 4;
  expect_bad(c, 8,
             "vmep_ep_config: max_ranks = 4, expected 0 or at least the "
             "group's 8 ranks");
  expect_bad(c, 0, "vmep_ep_config: number of ranks = 0, expected 1..1024");
  expect_bad(c, -5, "vmep_ep_config: number of ranks = -5, expected 1..1024");
  bytes = 12345;
  ASSERT_STATUS(vmep_ep_deepep_bytes(&c, 8, &bytes), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "max_ranks = 4");
  ASSERT_STATUS(vmep_ep_deepep_bytes(&c, -5, &bytes), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "number of ranks = -5");
  ASSERT_EQ(bytes, 12345);
  ASSERT_OK(vmep_ep_buffer_bytes(&c, 2, &bytes)); /* room for 2 more */
  ASSERT_STATUS(vmep_ep_buffer_bytes(NULL, 4, &bytes), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_buffer_bytes(&c, 4, NULL), VMEP_ERR_INVALID_ARG);
  vmep_ep_config_init(NULL); /* a no-op */
}

static size_t up(size_t v, size_t a) { return (v + a - 1) / a * a; }

/* The layout written out by hand for random shapes. */
static void sizes(void) {
  for (int i = 0; i < 200; i++) {
    int R = 1 + (int)(test_rand() % 16);
    vmep_ep_config c = valid_config();
    c.num_experts = R * (1 + (int)(test_rand() % 8));
    c.hidden = 128 * (1 + (int)(test_rand() % 64));
    c.max_tokens_per_rank = 1 + (int)(test_rand() % 4096);
    c.max_topk = 1 + (int)(test_rand() % 16);
    c.zero_copy = (int)(test_rand() % 2);
    size_t T = (size_t)c.max_tokens_per_rank, K = (size_t)c.max_topk;
    size_t H = (size_t)c.hidden, E = (size_t)c.num_experts;
    /* four flag arrays and the heartbeat word */
    size_t flags = 4 * up(2 * (size_t)R * 8, 256) + 256;
    size_t row = up(2 * H > H + H / 32 ? 2 * H : H + H / 32, 16);
    /* header, expert ids and weights, rows */
    size_t send = up(up(256 + T * K * 4, 256) + T * K * 4, 256) + T * row;
    /* slots, where tables, high-throughput marks, weights and row
     * indices */
    size_t expect = flags + 2 * up(send, 256) + 2 * up(T * K * 2 * H, 256) +
                    2 * up(T * K * 4, 256) + 2 * up(T * K * 8, 256) +
                    2 * up(T * K * K * 4, 256) + 2 * up(T * K * 4, 256) +
                    (c.zero_copy ? 2 * up(E * T * 2 * H, 256) : 0);
    size_t got = 0;
    ASSERT_OK(vmep_ep_buffer_bytes(&c, R, &got));
    ASSERT_EQ(got, up(expect, 4096));
    /* A capacity above the group's size sizes the buffer: the same bytes
     * as a group of that many ranks. */
    size_t as_group = 0;
    c.max_ranks = R;
    ASSERT_OK(vmep_ep_buffer_bytes(&c, 1, &got));
    ASSERT_OK(vmep_ep_buffer_bytes(&c, R, &as_group));
    ASSERT_EQ(got, as_group);
    ASSERT_EQ(got, up(expect, 4096));
  }
  /* DeepEP's size for DeepSeek-V3's shape, by its published formula:
   * 2 * (max(T*m_d, E*T*m_c) + E*T*max(m_d, m_c) + 4E), m_d = 16 + 2H,
   * m_c = 4H/128 + 2H, rounded to 128 B. */
  vmep_ep_config c = valid_config();
  c.num_experts = 256;
  size_t deepep = 0, m_c = 7168 / 128 * 4 + 2 * 7168;
  size_t want = 2 * (256 * 128 * m_c + 256 * 128 * m_c + 256 * 4);
  ASSERT_OK(vmep_ep_deepep_bytes(&c, 8, &deepep));
  ASSERT_EQ(deepep, up(want, 128));
}

/* A buffer object as vmep_ep_create would leave it, for the argument
 * checks, which all run before any launch. */
static struct vmep_ep fake_ep(void) {
  struct vmep_ep ep;
  memset(&ep, 0, sizeof(ep));
  ep.config = valid_config();
  ep.num_ranks = 4;
  ep.local_experts = 4;
  return ep;
}

static void dispatch_args(void) {
  struct vmep_ep ep = fake_ep();
  static uint64_t mem[1024]; /* aligned stand-ins for device pointers */
  vmep_ep_dispatch_args a;
  vmep_ep_dispatch_args_init(&a);
  a.x = mem;
  a.topk_idx = (int64_t *)mem;
  a.num_tokens = 16;
  a.num_topk = 8;
  a.recv_x = mem;
  a.recv_count = (int32_t *)mem;
  a.src_info = (int32_t *)mem;
  a.layout_range = (int64_t *)mem;
  vmep_ep_handle h;
  struct {
    vmep_ep_dispatch_args args;
    int phases;
    const char *says;
  } cases[] = {
      {a, 0, "phases"},
      {a, VMEP_EP_RECV, "phases"},
      {a, VMEP_EP_SEND_RECV, NULL},
  };
  cases[2].args.num_tokens = 129;
  cases[2].says = "num_tokens";
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(cases); i++) {
    ASSERT_STATUS(
        vmep_ep_dispatch(&ep, &cases[i].args, cases[i].phases, NULL, &h),
        VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), cases[i].says);
  }
  vmep_ep_dispatch_args b = a;
  b.num_topk = 9;
  ASSERT_STATUS(vmep_ep_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "num_topk");
  b = a;
  b.x = (char *)mem + 8; /* misaligned */
  ASSERT_STATUS(vmep_ep_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "x must");
  b = a;
  b.recv_wait_ns = (int64_t *)((char *)mem + 4); /* misaligned */
  ASSERT_STATUS(vmep_ep_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "recv_wait_ns");
  b = a;
  b.use_fp8 = 1; /* without recv_scales */
  ASSERT_STATUS(vmep_ep_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "recv_scales");
  b = a;
  b.use_fp8 = 1;
  b.recv_scales = (float *)mem;
  b.scale_layout = 3; /* no such layout */
  ASSERT_STATUS(vmep_ep_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "scale_layout");
  b.scale_layout = VMEP_EP_SCALES_UE8M0; /* without round_scale */
  ASSERT_STATUS(vmep_ep_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "UE8M0");
  b = a;
  b.topk_weights = (float *)((char *)mem + 2); /* misaligned */
  ASSERT_STATUS(vmep_ep_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "topk_weights");
  b = a;
  b.recv_count = NULL;
  ASSERT_STATUS(vmep_ep_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  b = a;
  b.x = NULL; /* allowed only with no tokens */
  ASSERT_STATUS(vmep_ep_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_dispatch(NULL, &a, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_dispatch(&ep, NULL, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_dispatch(&ep, &a, VMEP_EP_SEND_RECV, NULL, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_EQ(ep.calls, 0); /* nothing was counted as dispatched */
}

/* Combine arguments the checks accept, all pointing into `mem`. */
static vmep_ep_combine_args valid_combine_args(uint64_t *mem) {
  vmep_ep_combine_args a;
  vmep_ep_combine_args_init(&a);
  a.expert_out = mem;
  a.topk_idx = (int64_t *)mem;
  a.topk_weights = (float *)mem;
  a.out = mem;
  return a;
}

static void combine_args(void) {
  struct vmep_ep ep = fake_ep();
  static uint64_t mem[1024];
  vmep_ep_combine_args a = valid_combine_args(mem);
  void *buf = NULL;
  /* Handles this buffer never gave out. */
  vmep_ep_handle never = {0, 16, 8, 1}, bad_parity = {2, 16, 8, 1};
  ASSERT_STATUS(vmep_ep_combine(&ep, &a, &never, VMEP_EP_SEND_RECV, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "not a handle");
  ASSERT_STATUS(vmep_ep_combine(&ep, &a, &bad_parity, VMEP_EP_SEND_RECV, NULL),
                VMEP_ERR_INVALID_ARG);
  /* As if dispatches 1..3 had run: dispatch 1's parity was reused by 3. */
  ep.calls = 3;
  ep.parity_call[1] = 3;
  ep.parity_call[0] = 2;
  vmep_ep_handle stale = {1, 16, 8, 1}, live = {0, 16, 8, 2};
  ASSERT_STATUS(vmep_ep_combine(&ep, &a, &stale, VMEP_EP_SEND_RECV, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "stale handle");
  ASSERT_STATUS(vmep_ep_combine(&ep, &a, &live, 0, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "phases");
  vmep_ep_combine_args b = a;
  b.out = (char *)mem + 4;
  ASSERT_STATUS(vmep_ep_combine(&ep, &b, &live, VMEP_EP_SEND_RECV, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "out must");
  b = a;
  b.recv_wait_ns = (int64_t *)((char *)mem + 4);
  ASSERT_STATUS(vmep_ep_combine(&ep, &b, &live, VMEP_EP_SEND_RECV, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "recv_wait_ns");
  b = a;
  b.expert_out = NULL;
  ASSERT_STATUS(vmep_ep_combine(&ep, &b, &live, VMEP_EP_SEND_RECV, NULL),
                VMEP_ERR_INVALID_ARG);
  b = a;
  b.topk_weights = NULL; /* needed: the dispatch took none */
  ASSERT_STATUS(vmep_ep_combine(&ep, &b, &live, VMEP_EP_SEND_RECV, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "topk_weights");
  /* The dispatch took weights (reduced at the expert side): given again,
   * they are refused. */
  ep.pending_dispatch[0].topk_weights = (const float *)mem;
  ASSERT_STATUS(vmep_ep_combine(&ep, &a, &live, VMEP_EP_SEND_RECV, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "pass topk_weights NULL");
  ep.pending_dispatch[0].topk_weights = NULL;
  ep.dispatch_pending[0] = 1;
  ASSERT_STATUS(vmep_ep_combine(&ep, &a, &live, VMEP_EP_SEND_RECV, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "receive phase");
  ASSERT_STATUS(vmep_ep_combine_recv(&ep, &live, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_combine_buffer(&ep, &live, &buf),
                VMEP_ERR_UNSUPPORTED); /* created without zero_copy */
  ASSERT_STATUS(vmep_ep_combine_buffer(&ep, &live, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_dispatch_recv(&ep, &stale, NULL), VMEP_ERR_INVALID_ARG);
}

/* A low-latency handle's token and top-k counts size the launches of its
 * receive phases and combine: counts no dispatch of the buffer could have
 * had are refused, as a high-throughput handle's are, before anything is
 * launched. */
static void ll_handle_fields(void) {
  struct vmep_ep ep = fake_ep();
  static uint64_t mem[1024];
  vmep_ep_combine_args a = valid_combine_args(mem);
  void *buf = NULL;
  ep.calls = 2;
  ep.parity_call[0] = 2;
  ep.parity_call[1] = 1;
  /* num_topk above max_topk (8) or below 1, num_tokens above T (128) or
   * negative; the call and parity are dispatch 2's */
  vmep_ep_handle bad[] = {
      {0, 16, 17, 2}, {0, 16, 0, 2}, {0, 129, 8, 2}, {0, -1, 8, 2}};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad); i++) {
    ASSERT_STATUS(vmep_ep_combine(&ep, &a, &bad[i], VMEP_EP_SEND_RECV, NULL),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(),
                        "vmep_ep_combine: not a handle of this buffer's");
    ASSERT_STATUS(vmep_ep_combine_buffer(&ep, &bad[i], &buf),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(),
                        "vmep_ep_combine_buffer: not a handle");
    ep.dispatch_pending[0] = 1; /* its receive phase waits */
    ASSERT_STATUS(vmep_ep_dispatch_recv(&ep, &bad[i], NULL),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(),
                        "vmep_ep_dispatch_recv: not a handle");
    ep.dispatch_pending[0] = 0;
    ep.combine_pending[0] = 1; /* its combine's receive phase waits */
    ASSERT_STATUS(vmep_ep_combine_recv(&ep, &bad[i], NULL),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(),
                        "vmep_ep_combine_recv: not a handle");
    ep.combine_pending[0] = 0;
  }
  ASSERT_TRUE(buf == NULL);
}

/* The high-throughput calls' checks: each bad field named, nothing
 * counted as dispatched, handles of other modes, pending or never given
 * out refused. */
static void ht_args(void) {
  struct vmep_ep ep = fake_ep();
  static uint64_t mem[1024];
  vmep_ep_ht_dispatch_args a;
  vmep_ep_ht_dispatch_args_init(&a);
  ASSERT_EQ(a.struct_size, sizeof(a));
  a.x = mem;
  a.topk_idx = (int64_t *)mem;
  a.num_tokens = 16;
  a.num_topk = 8;
  a.num_recv = (int32_t *)mem;
  a.recv_expert_count = (int32_t *)mem;
  a.capacity = 64;
  a.recv_x = mem;
  a.recv_src = (int32_t *)mem;
  vmep_ep_ht_handle h;
  struct {
    const char *says;
    vmep_ep_ht_dispatch_args args;
  } cases[9];
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(cases); i++)
    cases[i].args = a;
  cases[0].says = "num_tokens", cases[0].args.num_tokens = 129;
  cases[1].says = "num_topk", cases[1].args.num_topk = 0;
  cases[2].says = "x must", cases[2].args.x = (char *)mem + 8;
  cases[3].says = "x_scales", cases[3].args.use_fp8 = 1;
  cases[4].says = "expert_alignment", cases[4].args.expert_alignment = -2;
  cases[5].says = "topk_idx", cases[5].args.topk_idx = NULL;
  cases[6].says = "capacity", cases[6].args.capacity = -1;
  cases[7].says = "recv_src", cases[7].args.recv_src = NULL;
  cases[8].says = "struct_size", cases[8].args.struct_size = 8;
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(cases); i++) {
    ASSERT_STATUS(
        vmep_ep_ht_dispatch(&ep, &cases[i].args, VMEP_EP_SEND_RECV, NULL, &h),
        VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), cases[i].says);
  }
  /* The receive arrays are checked only with the receive phase. */
  vmep_ep_ht_dispatch_args b = a;
  b.recv_x = NULL;
  ASSERT_STATUS(vmep_ep_ht_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "recv_x");
  ASSERT_STATUS(vmep_ep_ht_dispatch(&ep, &a, VMEP_EP_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_ht_dispatch(&ep, &a, VMEP_EP_SEND_RECV, NULL, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_ht_dispatch(NULL, &a, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  /* Handles: one never given out, one of a low-latency parity, one whose
   * receive phase is pending; a handle of dispatch 1 still serves after
   * its parity was reused (high-throughput handles do not expire). */
  int32_t *n = (int32_t *)mem;
  vmep_ep_ht_handle never = {0, 16, 8, 0, 1, n, n, 64};
  b = a;
  b.cached = &never;
  ASSERT_STATUS(vmep_ep_ht_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "cached is not a handle");
  ep.calls = 3;
  ep.parity_call[1] = 3;
  ep.parity_call[0] = 2;
  ep.parity_ht[0] = ep.parity_ht[1] = 1;
  ep.dispatch_pending[1] = 1;
  vmep_ep_ht_handle old = {1, 16, 8, 0, 1, n, n, 64};
  vmep_ep_ht_handle pending = {1, 16, 8, 0, 3, n, n, 0};
  vmep_ep_ht_handle fp8 = {0, 16, 8, 1, 2, n, n, 64};
  vmep_ep_ht_combine_args c;
  vmep_ep_ht_combine_args_init(&c);
  c.x = mem;
  c.out = mem;
  ASSERT_STATUS(vmep_ep_ht_combine(&ep, &c, &pending, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "receive phase was not launched");
  b.cached = &fp8; /* another use_fp8 */
  ASSERT_STATUS(vmep_ep_ht_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "use_fp8");
  /* A cached dispatch repeats its handle's routing: of as many tokens. */
  vmep_ep_ht_handle fewer = {0, 12, 8, 0, 2, n, n, 64};
  b.cached = &fewer;
  ASSERT_STATUS(vmep_ep_ht_dispatch(&ep, &b, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(),
                      "vmep_ep_ht_dispatch: num_tokens = 16, the cached "
                      "handle's dispatch had 12");
  vmep_ep_ht_combine_args d = c;
  d.bias0 = (char *)mem + 4;
  ASSERT_STATUS(vmep_ep_ht_combine(&ep, &d, &old, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "bias0");
  d = c;
  d.out = NULL;
  ASSERT_STATUS(vmep_ep_ht_combine(&ep, &d, &old, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "out must");
  ASSERT_STATUS(vmep_ep_ht_dispatch_recv(&ep, &a, &old, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "waits for its receive phase");
  /* The zero-copy buffer: NULLs named; only for the last dispatch of a
   * parity; only where the slots hold R*T rows. */
  void *buf = NULL;
  ASSERT_STATUS(vmep_ep_ht_combine_buffer(NULL, &old, &buf, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "ep");
  ASSERT_STATUS(vmep_ep_ht_combine_buffer(&ep, NULL, &buf, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "handle");
  ASSERT_STATUS(vmep_ep_ht_combine_buffer(&ep, &fp8, NULL, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "buf_out");
  ASSERT_STATUS(vmep_ep_ht_combine_buffer(&ep, &old, &buf, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "last dispatch");
  ep.config.max_topk = ep.num_ranks - 1;
  vmep_ep_ht_handle top2 = {0, 16, 2, 0, 2, n, n, 64}; /* fits max_topk */
  ASSERT_STATUS(vmep_ep_ht_combine_buffer(&ep, &top2, &buf, NULL),
                VMEP_ERR_UNSUPPORTED);
  ASSERT_STR_CONTAINS(vmep_last_error(), "max_topk");
  ep.config.max_topk = valid_config().max_topk;
  ASSERT_TRUE(buf == NULL); /* nothing handed out */
  /* A low-latency call refuses a parity a high-throughput dispatch took. */
  vmep_ep_combine_args ll;
  vmep_ep_combine_args_init(&ll);
  ll.expert_out = ll.out = mem;
  ll.topk_idx = (int64_t *)mem;
  ll.topk_weights = (float *)mem;
  vmep_ep_handle ll_h = {0, 16, 8, 2};
  ASSERT_STATUS(vmep_ep_combine(&ep, &ll, &ll_h, VMEP_EP_SEND_RECV, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "stale handle");
  /* Layout: counts of tokens and top-k checked. */
  ASSERT_STATUS(
      vmep_ep_ht_layout(&ep, (int64_t *)mem, -1, 8, NULL, NULL, NULL, NULL),
      VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(
      vmep_ep_ht_layout(&ep, (int64_t *)mem, 4, 17, NULL, NULL, NULL, NULL),
      VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_ht_layout(&ep, NULL, 4, 8, NULL, NULL, NULL, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_ht_layout(NULL, NULL, 0, 8, NULL, NULL, NULL, NULL),
                VMEP_ERR_INVALID_ARG);
  /* NULL argument structs and handles, named (vmep.h's convention). */
  ASSERT_STATUS(vmep_ep_ht_dispatch(&ep, NULL, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(),
                      "vmep_ep_ht_dispatch: vmep_ep_ht_dispatch_args is NULL");
  ASSERT_STATUS(vmep_ep_ht_dispatch_recv(&ep, &a, NULL, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(),
                      "vmep_ep_ht_dispatch_recv: handle is NULL");
  ASSERT_STATUS(vmep_ep_ht_combine(&ep, NULL, &old, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(),
                      "vmep_ep_ht_combine: vmep_ep_ht_combine_args is NULL");
  ASSERT_STATUS(vmep_ep_ht_combine(&ep, &c, NULL, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "vmep_ep_ht_combine: handle is NULL");
  ASSERT_EQ(ep.calls, 3); /* nothing was counted as dispatched */
}

/* The receive phase of a high-throughput dispatch launches with its
 * handle's num_topk: a handle whose fields no dispatch of the buffer could
 * have had is refused, as the combine refuses it, even when its call
 * number names the dispatch that waits. */
static void ht_recv_handle(void) {
  struct vmep_ep ep = fake_ep();
  static uint64_t mem[1024];
  int32_t *n = (int32_t *)mem;
  vmep_ep_ht_dispatch_args a;
  vmep_ep_ht_dispatch_args_init(&a);
  a.capacity = 64;
  a.recv_x = mem;
  a.recv_src = n;
  ep.calls = 1;
  ep.parity_call[1] = 1;
  ep.parity_ht[1] = 1;
  ep.dispatch_pending[1] = 1; /* dispatch 1 waits for its receive phase */
  vmep_ep_ht_handle bad[] = {
      {1, 16, 17, 0, 1, n, n, 0},   /* num_topk above max_topk (8) */
      {1, 16, 0, 0, 1, n, n, 0},    /* num_topk 0 */
      {1, 129, 8, 0, 1, n, n, 0},   /* num_tokens above T (128) */
      {1, 16, 8, 0, 1, NULL, n, 0}, /* no num_recv */
      {1, 16, 8, 0, 1, n, n, -1},   /* capacity < 0 */
  };
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad); i++) {
    ASSERT_STATUS(vmep_ep_ht_dispatch_recv(&ep, &a, &bad[i], NULL),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(),
                        "vmep_ep_ht_dispatch_recv: handle is not a handle of "
                        "this buffer's high-throughput dispatches");
  }
  ASSERT_EQ(ep.dispatch_pending[1], 1); /* nothing was launched */
}

/* The layout's direct arguments: num_tokens bounded by the buffer's T as
 * in the dispatch (a count near INT_MAX overflowed the launch's block
 * count), a NULL topk_idx named as NULL, a misaligned one as such. */
static void ht_layout_args(void) {
  struct vmep_ep ep = fake_ep();
  static uint64_t mem[64];
  int32_t *per_rank = (int32_t *)mem;
  int bad_tokens[] = {129, 0x7fffffff};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad_tokens); i++) {
    ASSERT_STATUS(vmep_ep_ht_layout(&ep, (int64_t *)mem, bad_tokens[i], 8,
                                    per_rank, NULL, NULL, NULL),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), "vmep_ep_ht_layout: num_tokens = ");
    ASSERT_STR_CONTAINS(vmep_last_error(), "expected 0..128");
  }
  ASSERT_STATUS(vmep_ep_ht_layout(&ep, NULL, 4, 8, NULL, NULL, NULL, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "vmep_ep_ht_layout: topk_idx is NULL");
  ASSERT_STATUS(vmep_ep_ht_layout(&ep, (int64_t *)((char *)mem + 4), 4, 8, NULL,
                                  NULL, NULL, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(),
                      "vmep_ep_ht_layout: topk_idx must be 8-byte aligned");
}

/* The structs that grow: _init sets struct_size and the defaults; 0, a
 * size below the 0.3.0 layout or one above the library's sizeof is
 * refused naming the struct, by every call that reads it. */
static void struct_sizes(void) {
  vmep_ep_config c = valid_config();
  ASSERT_EQ(c.struct_size, sizeof(vmep_ep_config));
  size_t bad[] = {0, sizeof(size_t), sizeof(vmep_ep_config) - sizeof(int) - 1,
                  sizeof(vmep_ep_config) + 8};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad); i++) {
    c.struct_size = bad[i];
    expect_bad(c, 4, "vmep_ep_config.struct_size");
  }
  c.struct_size = offsetof(vmep_ep_config, max_ranks) + sizeof(int);
  size_t bytes = 0, full = 0;
  ASSERT_OK(vmep_ep_buffer_bytes(&c, 4, &bytes)); /* 0.3.0's end: enough */
  c.struct_size = sizeof(c);
  ASSERT_OK(vmep_ep_buffer_bytes(&c, 4, &full));
  ASSERT_EQ(bytes, full);

  struct vmep_ep ep = fake_ep();
  static uint64_t mem[64];
  vmep_ep_handle h = {0, 0, 0, 0};
  vmep_ep_dispatch_args d;
  memset(&d, 0xff, sizeof(d));
  vmep_ep_dispatch_args_init(&d);
  ASSERT_EQ(d.struct_size, sizeof(d));
  ASSERT_TRUE(d.x == NULL && d.recv_wait_ns == NULL && d.num_tokens == 0);
  ASSERT_EQ(d.scale_layout, VMEP_EP_SCALES_ROW_MAJOR);
  d.struct_size = 0;
  ASSERT_STATUS(vmep_ep_dispatch(&ep, &d, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(),
                      "vmep_ep_dispatch: vmep_ep_dispatch_args.struct_size "
                      "= 0");
  d.struct_size = sizeof(d) + 1;
  ASSERT_STATUS(vmep_ep_dispatch(&ep, &d, VMEP_EP_SEND_RECV, NULL, &h),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "newer vmep.h");
  vmep_ep_combine_args a;
  memset(&a, 0xff, sizeof(a));
  vmep_ep_combine_args_init(&a);
  ASSERT_EQ(a.struct_size, sizeof(a));
  ASSERT_TRUE(a.expert_out == NULL && a.recv_wait_ns == NULL);
  ep.calls = 1;
  ep.parity_call[1] = 1;
  vmep_ep_handle live = {1, 0, 8, 1};
  a.expert_out = mem;
  a.struct_size = sizeof(size_t);
  ASSERT_STATUS(vmep_ep_combine(&ep, &a, &live, VMEP_EP_SEND_RECV, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(),
                      "vmep_ep_combine: vmep_ep_combine_args.struct_size");
  vmep_ep_config_init(NULL);
  vmep_ep_dispatch_args_init(NULL); /* no-ops */
  vmep_ep_combine_args_init(NULL);
}

/* The reader behind struct_size, on a struct of a "later version" with
 * one field more than a caller's: the caller's bytes are taken, the new
 * field keeps its default, and struct_size becomes the library's. */
struct grown {
  size_t struct_size;
  int old_field;
  int new_field; /* appended by the "later version" */
};

static void struct_read(void) {
  struct grown caller = {offsetof(struct grown, new_field), 7, 12345};
  struct grown out = {0, -1, -2}; /* the defaults */
  ASSERT_OK(vmep__ep_struct_read("f", "grown", &caller,
                                 offsetof(struct grown, new_field), sizeof(out),
                                 &out));
  ASSERT_EQ(out.struct_size, sizeof(out));
  ASSERT_EQ(out.old_field, 7);
  ASSERT_EQ(out.new_field, -2); /* beyond the caller's size: the default */
  caller.struct_size = sizeof(caller);
  ASSERT_OK(vmep__ep_struct_read("f", "grown", &caller,
                                 offsetof(struct grown, new_field), sizeof(out),
                                 &out));
  ASSERT_EQ(out.new_field, 12345);
  caller.struct_size = offsetof(struct grown, old_field);
  ASSERT_STATUS(vmep__ep_struct_read("f", "grown", &caller,
                                     offsetof(struct grown, new_field),
                                     sizeof(out), &out),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "f: grown.struct_size");
  ASSERT_STATUS(vmep__ep_struct_read(NULL, "grown", NULL, 8, sizeof(out), &out),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "grown is NULL");
}

/* Creation refusals that need no GPU: NULL arguments, a bad config (named
 * before anything is allocated), and, on a machine without a driver, a
 * clean VMEP_ERR_UNSUPPORTED that leaves no output behind. */
static void create_refusals(void) {
  vmep_group *g = NULL;
  vmep_ep *ep = (vmep_ep *)0x1;
  vmep_window *w = (vmep_window *)0x1;
  /* A group of one needs no collectives of its own. */
  ASSERT_OK(vmep_group_create_custom(0, 1, NULL, NULL, NULL, &g));
  vmep_ep_config c = valid_config();
  c.num_experts = 4; /* one rank: any positive multiple of 1 */
  ASSERT_STATUS(vmep_ep_create(NULL, &c, &ep), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_create(g, NULL, &ep), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_create(g, &c, NULL), VMEP_ERR_INVALID_ARG);
  c.hidden = 100;
  ASSERT_STATUS(vmep_ep_create(g, &c, &ep), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "hidden");
  ASSERT_TRUE(ep == (vmep_ep *)0x1);
  ASSERT_STATUS(vmep_window_create(NULL, 0, 4096, &w), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_window_create(g, 0, 0, &w), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_window_create(g, 0, 4096, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_TRUE(w == (vmep_window *)0x1);
  ASSERT_STATUS(vmep_ep_poll_errors(NULL, NULL, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_OK(vmep_ep_destroy(NULL));
  ASSERT_OK(vmep_window_destroy(NULL));
  int count = 0;
  if (vmep_device_count(&count) != VMEP_OK) {
    /* No driver here: creation fails cleanly, saying so. */
    c.hidden = 512;
    ASSERT_STATUS(vmep_ep_create(g, &c, &ep), VMEP_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(vmep_last_error(), "libcuda.so.1");
    ASSERT_TRUE(ep == (vmep_ep *)0x1);
    ASSERT_STATUS(vmep_window_create(g, 0, 4096, &w), VMEP_ERR_UNSUPPORTED);
    ASSERT_TRUE(w == (vmep_window *)0x1);
  }
  ASSERT_OK(vmep_group_destroy(g));
}

/* The mask and membership calls refuse a NULL buffer (and NULL outputs)
 * by name, before touching the device or the store. */
static void membership_refusals(void) {
  int32_t mask[4];
  int ranks[1] = {1}, count = 0;
  ASSERT_EQ(vmep_ep_max_ranks(NULL), 0);
  ASSERT_STATUS(vmep_ep_query_mask(NULL, mask), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "vmep_ep_query_mask: ep is NULL");
  ASSERT_STATUS(vmep_ep_set_mask(NULL, 1, 1), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "vmep_ep_set_mask");
  ASSERT_STATUS(vmep_ep_clear_mask(NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_connect_ranks(NULL, ranks, 1, 1), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "vmep_ep_connect_ranks");
  ASSERT_STATUS(vmep_ep_disconnect_ranks(NULL, ranks, 1), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_disconnect_dead(NULL, &count), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_ep_barrier(NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "vmep_ep_barrier: ep is NULL");
}

/* vmep_ep_connect_ranks (which 0) or vmep_ep_disconnect_ranks (1). */
static vmep_status change_ranks(vmep_ep *ep, int which, const int *ranks,
                                int n) {
  return which == 0 ? vmep_ep_connect_ranks(ep, ranks, n, 1)
                    : vmep_ep_disconnect_ranks(ep, ranks, n);
}

/* The rank lists of connect and disconnect: a NULL list, a negative
 * count, a rank out of range and this rank are each named, by the call
 * and the element, before the store or the device is touched. */
static void rank_list_refusals(void) {
  struct vmep_ep ep = fake_ep(); /* rank 0 of 4 */
  int out_of_range[2] = {1, 4}, self[3] = {2, 3, 0};
  const char *calls[2] = {"vmep_ep_connect_ranks", "vmep_ep_disconnect_ranks"};
  char says[128];
  for (int i = 0; i < 2; i++) {
    ASSERT_STATUS(change_ranks(&ep, i, NULL, 2), VMEP_ERR_INVALID_ARG);
    snprintf(says, sizeof(says), "%s: ranks is NULL", calls[i]);
    ASSERT_STR_CONTAINS(vmep_last_error(), says);
    ASSERT_STATUS(change_ranks(&ep, i, self, -1), VMEP_ERR_INVALID_ARG);
    snprintf(says, sizeof(says), "%s: n = -1, expected >= 0", calls[i]);
    ASSERT_STR_CONTAINS(vmep_last_error(), says);
    ASSERT_STATUS(change_ranks(&ep, i, out_of_range, 2), VMEP_ERR_INVALID_ARG);
    snprintf(says, sizeof(says), "%s: ranks[1] = 4, expected 0..3", calls[i]);
    ASSERT_STR_CONTAINS(vmep_last_error(), says);
    ASSERT_STATUS(change_ranks(&ep, i, self, 3), VMEP_ERR_INVALID_ARG);
    snprintf(says, sizeof(says), "%s: ranks[2] = 0 is this rank", calls[i]);
    ASSERT_STR_CONTAINS(vmep_last_error(), says);
  }
}

int main(void) {
  test_seed("test_ep_config");
  create_refusals();
  config_fields();
  sizes();
  dispatch_args();
  combine_args();
  ll_handle_fields();
  ht_args();
  ht_recv_handle();
  ht_layout_args();
  struct_sizes();
  struct_read();
  membership_refusals();
  rank_list_refusals();
  printf("13 passed, 0 failed\n");
  return 0;
}
