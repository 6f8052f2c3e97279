/*
 * The EP buffer without a GPU: every invalid config field is refused with a
 * message naming it; the buffer size matches a hand computation of the
 * layout (and DeepEP's low-latency size its published formula); and the
 * dispatch / combine entry points refuse bad arguments (NULL or misaligned
 * pointers, n > T, K > max_topk, bad phases, stale or foreign handles)
 * before anything is launched; creating a buffer or a window refuses bad
 * arguments and, without a driver, fails cleanly leaving no output.
 */
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
    size_t send = up(256 + T * K * 4, 256) + T * row;
    size_t expect = flags + 2 * up(send, 256) + 2 * up(T * K * 2 * H, 256) +
                    2 * up(T * K * 4, 256) +
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
  vmep_ep_dispatch_args a = {mem,
                             (int64_t *)mem,
                             16,
                             8,
                             0,
                             0,
                             mem,
                             NULL,
                             (int32_t *)mem,
                             (int32_t *)mem,
                             (int64_t *)mem,
                             VMEP_EP_SCALES_ROW_MAJOR,
                             NULL};
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

static void combine_args(void) {
  struct vmep_ep ep = fake_ep();
  static uint64_t mem[1024];
  vmep_ep_combine_args a = {mem, (int64_t *)mem, (float *)mem, mem, NULL};
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

int main(void) {
  test_seed("test_ep_config");
  create_refusals();
  config_fields();
  sizes();
  dispatch_args();
  combine_args();
  membership_refusals();
  printf("6 passed, 0 failed\n");
  return 0;
}
