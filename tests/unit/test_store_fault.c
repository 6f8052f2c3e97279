/*
 * Host allocation faults in the store, in the fault-loop style of the
 * mem tests: fail the 1st, 2nd, ... allocation (transient, then
 * persistent) until a run fires no fault, and require every step to end
 * either well or with its documented failure, and no allocation or fd to
 * stay behind. Covers the request semantics (driven directly, one thread)
 * the client with allgatherv (against a store in another process, so
 * that only this process's allocations are counted), and a custom group.
 */
#include <signal.h>

#include "boot/boot.h"
#include "store/store.h"
#include "fake_driver.h"
#include "test_store_util.h"

#define TOKEN "fault-token"

/* ---- request semantics ------------------------------------------------ */

/* Runs `op` on `p`; returns the answer (VMEP_STORE_ANSWER_END: none was
 * queued, i.e. no memory, and the connection would close) and whether it
 * blocks. */
static unsigned request(struct vmep_store_state *st, struct vmep_store_peer *p,
                        const struct vmep_store_op *op, int *pending) {
  struct vmep_store_wbuf in = {0}, out = {0};
  struct vmep_store_request q;
  struct vmep_store_reply a;
  const char *error = NULL;
  unsigned answer = VMEP_STORE_ANSWER_END;
  *pending = 0;
  if (vmep__store_request_encode(&in, op, NULL) == VMEP_OK) {
    ASSERT_EQ(vmep__store_request_parse(in.data, in.len, &q, &error),
              (long)in.len);
    *pending =
        vmep__store_peer_request(st, p, &q, &out) == VMEP_STORE_PEER_PENDING;
  }
  if (out.len)
    ASSERT_EQ(vmep__store_reply_parse(out.data, out.len, op->cmd, &a, &error),
              (long)out.len);
  answer = out.len ? a.answer : answer;
  vmep__wbuf_release(&in);
  vmep__wbuf_release(&out);
  return answer;
}

/* Polls a blocked wait at time `now`; the answer as request() gives it. */
static unsigned poll_wait(struct vmep_store_state *st,
                          struct vmep_store_peer *p, uint64_t now,
                          unsigned cmd) {
  struct vmep_store_wbuf out = {0};
  struct vmep_store_reply a;
  const char *error = NULL;
  uint64_t next = UINT64_MAX;
  if (vmep__store_peer_poll(st, p, now, &out, &next) == VMEP_STORE_PEER_PENDING)
    return VMEP_STORE_ANSWER_END + 1;
  unsigned answer = VMEP_STORE_ANSWER_END;
  if (out.len) {
    ASSERT_EQ(vmep__store_reply_parse(out.data, out.len, cmd, &a, &error),
              (long)out.len);
    answer = a.answer;
  }
  vmep__wbuf_release(&out);
  return answer;
}

static void expect_ok_or_nomem(unsigned answer) {
  ASSERT_TRUE(answer == VMEP_STORE_OK || answer == VMEP_STORE_FAILED ||
              answer == VMEP_STORE_ANSWER_END);
}

/* A wait that a second client q (rank 5) completes, then one that fails
 * because q leaves without goodbye. Closes q. */
static void wait_and_death(struct vmep_store_state *st,
                           struct vmep_store_peer *p,
                           struct vmep_store_peer *q) {
  int pending = 0, q_pending = 0;
  struct vmep_store_op wait = {.cmd = VMEP_STORE_GET,
                               .seq = 20,
                               .keys = (const char *[]){"a", "e"},
                               .nkeys = 2,
                               .timeout_ms = 1000};
  unsigned answer = request(st, p, &wait, &pending);
  ASSERT_TRUE(pending || answer == VMEP_STORE_FAILED ||
              answer == VMEP_STORE_ANSWER_END);
  struct vmep_store_op hello = {
      .cmd = VMEP_STORE_HELLO, .rank = 5, .session = 10, .token = TOKEN};
  struct vmep_store_op set_e = {.cmd = VMEP_STORE_SET, .seq = 1, .key = "e"};
  if (request(st, q, &hello, &q_pending) == VMEP_STORE_OK)
    expect_ok_or_nomem(request(st, q, &set_e, &q_pending));
  /* Done, or still waiting for "a" (its SET failed): then it times out. */
  if (pending)
    answer = poll_wait(st, p, vmep__now_ms() + 2000, VMEP_STORE_GET);
  ASSERT_TRUE(!pending || answer == VMEP_STORE_OK ||
              answer == VMEP_STORE_TIMEOUT || answer == VMEP_STORE_ANSWER_END);
  /* Rank 5 leaves without goodbye: a wait fails (DEAD), or, when there was
   * no memory to record the death, times out. */
  vmep__store_peer_close(st, q);
  struct vmep_store_op never = {.cmd = VMEP_STORE_WAIT,
                                .seq = 21,
                                .keys = (const char *[]){"never"},
                                .nkeys = 1,
                                .timeout_ms = 50};
  request(st, p, &never, &pending);
  answer = pending ? poll_wait(st, p, vmep__now_ms() + 100, VMEP_STORE_WAIT)
                   : VMEP_STORE_FAILED;
  ASSERT_TRUE(answer == VMEP_STORE_DEAD || answer == VMEP_STORE_TIMEOUT ||
              answer == VMEP_STORE_FAILED || answer == VMEP_STORE_ANSWER_END);
}

static void state_script(void) {
  struct vmep_store_state *st = NULL;
  struct vmep_store_peer *p = NULL, *q = NULL;
  int pending = 0;
  unsigned char value[100] = {1};
  if (vmep__store_state_create(TOKEN, &st) != VMEP_OK)
    return;
  p = vmep__store_peer_open(st, "p");
  q = vmep__store_peer_open(st, "q");
  struct vmep_store_op hello = {
      .cmd = VMEP_STORE_HELLO, .rank = 2, .session = 9, .token = TOKEN};
  struct vmep_store_op ops[] = {
      {.cmd = VMEP_STORE_SET, .key = "a", .value = value, .value_len = 100},
      {.cmd = VMEP_STORE_SET, .key = "b", .value = value, .value_len = 3},
      {.cmd = VMEP_STORE_ADD, .key = "c", .delta = 5},
      {.cmd = VMEP_STORE_CAS, .key = "d", .value = "x", .value_len = 1},
      {.cmd = VMEP_STORE_GET,
       .keys = (const char *[]){"a"},
       .nkeys = 1,
       .timeout_ms = -1},
      {.cmd = VMEP_STORE_DELETE, .key = "b"}};
  if (p && q && request(st, p, &hello, &pending) == VMEP_STORE_OK) {
    for (size_t i = 0; i < VMEP_ARRAY_SIZE(ops); i++) {
      ops[i].seq = i + 1;
      expect_ok_or_nomem(request(st, p, &ops[i], &pending));
    }
    wait_and_death(st, p, q);
    q = NULL; /* closed there */
  }
  vmep__store_peer_close(st, q);
  vmep__store_peer_close(st, p);
  vmep__store_state_destroy(st);
}

/* ---- the client ------------------------------------------------------- */

static char addr[64];

static vmep_status count_values(void *user, size_t index, const void *value,
                                size_t len) {
  (void)index;
  (void)value;
  *(size_t *)user += len;
  return VMEP_OK;
}

static void expect_ok_or_oom(vmep_status status) {
  if (status != VMEP_OK && status != VMEP_ERR_OUT_OF_MEMORY)
    TEST_FAIL("%s: %s", vmep_status_name(status), vmep_last_error());
}

static void client_script(int run) {
  struct vmep_store_client *c = NULL;
  char key[32];
  unsigned char payload[3000] = {7}, recv[3000];
  size_t total = 0, size = 0;
  int found = 0, swapped = 0;
  void *value = NULL;
  int64_t number = 0;
  vmep_status status =
      vmep__store_client_connect(addr, TOKEN, -1, -1, 5000, &c);
  expect_ok_or_oom(status);
  if (status != VMEP_OK)
    return;
  snprintf(key, sizeof(key), "k%d", run);
  const char *keys[] = {key, "preset"};
  expect_ok_or_oom(vmep__store_set(c, key, payload, sizeof(payload)));
  status = vmep__store_get(c, key, &found, &value, &size);
  expect_ok_or_oom(status);
  if (status == VMEP_OK)
    vmep__free(value);
  expect_ok_or_oom(vmep__store_add(c, "n", 1, &number));
  expect_ok_or_oom(vmep__store_cas(c, key, NULL, 0, "v", 1, &swapped));
  expect_ok_or_oom(
      vmep__store_wait_get(c, keys, 2, 2000, count_values, &total));
  struct vmep_store_gather x = {
      .client = c, .size = 1, .round = (uint64_t)run * 10};
  for (int i = 0; i < 2; i++)
    expect_ok_or_oom(vmep__store_allgatherv(&x, payload, 100 * (size_t)i, recv,
                                            sizeof(recv), &size));
  expect_ok_or_oom(vmep__store_delete(c, key, NULL));
  vmep__store_client_close(c, 1);
}

/* ---- a custom group of one ------------------------------------------- */

static vmep_status copy_allgather(const void *send, size_t bytes, void *recv,
                                  void *user) {
  (void)user;
  if (bytes)
    memcpy(recv, send, bytes);
  return VMEP_OK;
}

static void group_script(int run) {
  vmep_group *g = NULL;
  unsigned char buf[64] = {(unsigned char)run}, out[64];
  size_t size = 0;
  vmep_status status =
      vmep_group_create_custom(0, 1, copy_allgather, NULL, NULL, &g);
  expect_ok_or_oom(status);
  if (status != VMEP_OK)
    return;
  expect_ok_or_oom(vmep_group_allgatherv(g, buf, 10, out, 64, &size));
  expect_ok_or_oom(vmep_group_broadcast(g, 0, buf, 64));
  expect_ok_or_oom(vmep_group_allgather(g, buf, 64, out));
  expect_ok_or_oom(vmep_group_barrier(g));
  ASSERT_OK(vmep_group_destroy(g));
}

static void fault_loop(const char *what, void (*script)(int)) {
  int fds = fake_open_fds();
  for (int persistent = 0; persistent < 2; persistent++) {
    int n = 1;
    for (;; n++) {
      fake_alloc_install();
      fake_alloc_fail(n, persistent);
      script(n);
      fake_alloc_fail(0, 0);
      if (fake_alloc_live() != 0)
        TEST_FAIL("%s: fault at allocation %d (%s): %ld allocations left", what,
                  n, persistent ? "persistent" : "transient",
                  fake_alloc_live());
      ASSERT_EQ(fake_open_fds(), fds);
      if (!fake_alloc_fired())
        break;
    }
    printf("%s: %d %s fault points\n", what, n - 1,
           persistent ? "persistent" : "transient");
  }
  vmep__allocator_install(NULL);
}

static void run_state_script(int run) {
  (void)run;
  state_script();
}

int main(void) {
  int ready[2];
  test_seed("test_store_fault");
  fake_quiet_stderr(1);
  fault_loop("store requests", run_state_script);
  fault_loop("custom group", group_script);
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", test_free_port());
  ASSERT_EQ(pipe(ready), 0);
  fflush(stdout);
  pid_t server = fork();
  ASSERT_TRUE(server >= 0);
  if (server == 0) {
    struct vmep_store_server *s = NULL;
    struct vmep_store_client *c = NULL;
    static unsigned char big[3u << 20];
    ASSERT_OK(vmep__store_server_start("127.0.0.1", atoi(strchr(addr, ':') + 1),
                                       TOKEN, &s));
    ASSERT_OK(vmep__store_client_connect(addr, TOKEN, -1, -1, 5000, &c));
    ASSERT_OK(vmep__store_set(c, "preset", big, sizeof(big)));
    ASSERT_EQ(write(ready[1], "r", 1), 1);
    pause(); /* until the test is done with it */
    exit(0);
  }
  char byte;
  ASSERT_EQ(read(ready[0], &byte, 1), 1);
  close(ready[0]);
  close(ready[1]);
  fault_loop("store client", client_script);
  ASSERT_EQ(kill(server, SIGKILL), 0);
  ASSERT_EQ(waitpid(server, NULL, 0), server);
  fake_quiet_stderr(0);
  return 0;
}
