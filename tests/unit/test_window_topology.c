/*
 * Windows and EP buffers under the topology decision, on the fake driver,
 * with two ranks as two threads of this process (one host): without
 * pretend nodes each maps the other, and an EP buffer is made as before;
 * with VMEP_NODES=2 each marks the other remote (no base, never mapped)
 * and vmep_ep_create makes the inter-node engine and proxy on both (real
 * UCX over TCP between the two threads; where UCX cannot be loaded, both
 * refuse with VMEP_ERR_UNSUPPORTED saying why); a joiner of another pretend
 * node and a fixed rank connect each other as remote peers (with UCX), and
 * disconnect. Nothing is left live in the fake.
 */
#include <pthread.h>

#include "ep/ep.h"
#include "fake_driver.h"
#include "test_ep_util.h"
#include "test_store_util.h"

#define TOKEN "topology-token"

enum mode { WINDOW, EP };

struct rank_run {
  int rank;
  enum mode mode;
  const char *addr;
  vmep_status status; /* of vmep_ep_create (EP) */
  char error[512];
  enum vmep_peer_kind other_kind; /* WINDOW: how the other rank is reached */
  int other_mapped;               /* WINDOW: vmep_window_peer is not NULL */
  int remote;                     /* EP: the buffer made its proxy */
};

static void *run_rank(void *arg) {
  struct rank_run *run = arg;
  vmep_group *g = NULL;
  ASSERT_OK(vmep_group_create(run->rank, 2, run->addr, TOKEN, &g));
  if (run->mode == WINDOW) {
    vmep_window *w = NULL;
    ASSERT_OK(vmep_window_create(g, 0, 1 << 20, &w));
    run->other_kind = vmep__window_peer_kind(w, 1 - run->rank);
    run->other_mapped = vmep_window_peer(w, 1 - run->rank) != NULL;
    ASSERT_TRUE(vmep_window_local(w) != NULL);
    ASSERT_EQ(vmep__window_peer_kind(w, run->rank), VMEP_PEER_SELF);
    ASSERT_OK(vmep_window_destroy(w));
  } else {
    vmep_ep_config c = test_small_ep_config(0);
    vmep_ep *ep = NULL;
    run->status = vmep_ep_create(g, &c, &ep);
    snprintf(run->error, sizeof(run->error), "%s", vmep_last_error());
    run->remote = ep && ep->remote != NULL;
    ASSERT_OK(vmep_ep_destroy(ep));
  }
  ASSERT_OK(vmep_group_destroy(g));
  return NULL;
}

/* Both ranks once; returns their runs in runs[2]. */
static void run_both(enum mode mode, struct rank_run *runs) {
  char addr[64];
  pthread_t t[2];
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", test_free_port());
  fake_setup(1);
  for (int r = 0; r < 2; r++) {
    runs[r] = (struct rank_run){.rank = r, .mode = mode, .addr = addr};
    ASSERT_EQ(pthread_create(&t[r], NULL, run_rank, &runs[r]), 0);
  }
  for (int r = 0; r < 2; r++)
    ASSERT_EQ(pthread_join(t[r], NULL), 0);
  const char *leaks = fake_leaks();
  if (leaks)
    TEST_FAIL("still live in the fake: %s", leaks);
  fake_uninstall();
}

static void test_one_node(void) {
  struct rank_run runs[2];
  ASSERT_EQ(unsetenv("VMEP_NODES"), 0);
  run_both(WINDOW, runs);
  for (int r = 0; r < 2; r++) {
    ASSERT_EQ(runs[r].other_kind, VMEP_PEER_MAPPED);
    ASSERT_TRUE(runs[r].other_mapped);
  }
  run_both(EP, runs);
  ASSERT_OK(runs[0].status);
  ASSERT_OK(runs[1].status);
  /* One pretend node is one node. */
  ASSERT_EQ(setenv("VMEP_NODES", "1", 1), 0);
  run_both(WINDOW, runs);
  ASSERT_EQ(runs[1].other_kind, VMEP_PEER_MAPPED);
  printf("  one node: mapped, EP buffer made\n");
}

static void test_two_pretend_nodes(void) {
  struct rank_run runs[2];
  ASSERT_EQ(setenv("VMEP_NODES", "2", 1), 0);
  /* The engine's transport: TCP on loopback, unless set already. */
  setenv("UCX_TLS", "tcp", 0);
  setenv("UCX_NET_DEVICES", "lo", 0);
  setenv("UCX_WARN_UNUSED_ENV_VARS", "n", 0);
  setenv("UCX_MEM_EVENTS", "no", 0); /* as test_net_util.h says */
  run_both(WINDOW, runs);
  for (int r = 0; r < 2; r++) {
    ASSERT_EQ(runs[r].other_kind, VMEP_PEER_REMOTE);
    ASSERT_TRUE(!runs[r].other_mapped);
  }
  run_both(EP, runs);
  struct vmep_engine_info info;
  (void)vmep__engine_probe(&info);
  for (int r = 0; r < 2; r++) {
    if (!info.available) {
      ASSERT_EQ(runs[r].status, VMEP_ERR_UNSUPPORTED);
      ASSERT_STR_CONTAINS(runs[r].error, "UCX");
      continue;
    }
    ASSERT_OK(runs[r].status);
    ASSERT_TRUE(runs[r].remote);
  }
  printf("  two pretend nodes: remote, EP buffer %s on both ranks\n",
         info.available ? "made with its proxy" : "refused (no UCX)");
  ASSERT_EQ(unsetenv("VMEP_NODES"), 0);
}

/* Rank 1 joins an elastic job (node 1 * 2 / 2 = 1) whose rank 0 has a
 * group of one (node 0): each connects the other as a remote peer, through
 * the engine (the flags of the resync go through the proxies), then both
 * disconnect, twice over: the second connect reaches the same processes
 * afresh (endpoints and keys forgotten at the disconnect). */
#define JOIN_ROUNDS 2

struct joiner {
  const char *addr;
  vmep_status status[JOIN_ROUNDS];
  char error[512];
  pthread_barrier_t step; /* both sides connected / disconnected */
};

static void *join_and_connect(void *arg) {
  struct joiner *j = arg;
  vmep_group *g = NULL;
  vmep_ep *ep = NULL;
  vmep_ep_config c = test_small_ep_config(2);
  const int rank0 = 0;
  ASSERT_OK(vmep_group_join(1, 2, j->addr, TOKEN, &g));
  ASSERT_OK(vmep_ep_create(g, &c, &ep));
  for (int round = 0; round < JOIN_ROUNDS; round++) {
    j->status[round] = vmep_ep_connect_ranks(ep, &rank0, 1, 1);
    if (j->status[round] != VMEP_OK)
      snprintf(j->error, sizeof(j->error), "%s", vmep_last_error());
    pthread_barrier_wait(&j->step);
    ASSERT_OK(vmep_ep_disconnect_ranks(ep, &rank0, 1));
    pthread_barrier_wait(&j->step);
  }
  ASSERT_OK(vmep_ep_destroy(ep));
  ASSERT_OK(vmep_group_destroy(g));
  return NULL;
}

static void test_joiner_of_another_node(void) {
  char addr[64];
  vmep_group *g = NULL;
  vmep_ep *ep = NULL;
  vmep_ep_config c = test_small_ep_config(2);
  struct joiner j = {.addr = addr};
  pthread_t t;
  const int rank1 = 1;
  struct vmep_engine_info info;
  (void)vmep__engine_probe(&info);
  if (!info.available) {
    printf("  a joiner of another pretend node: not run (%s)\n", info.reason);
    return;
  }
  ASSERT_EQ(setenv("VMEP_NODES", "2", 1), 0);
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", test_free_port());
  fake_setup(1);
  ASSERT_OK(vmep_group_create(0, 1, addr, TOKEN, &g));
  ASSERT_OK(vmep_ep_create(g, &c, &ep));
  ASSERT_EQ(pthread_barrier_init(&j.step, NULL, 2), 0);
  ASSERT_EQ(pthread_create(&t, NULL, join_and_connect, &j), 0);
  for (int round = 0; round < JOIN_ROUNDS; round++) {
    ASSERT_OK(vmep_ep_connect_ranks(ep, &rank1, 1, 1));
    ASSERT_EQ(vmep__window_peer_kind(ep->window, 1), VMEP_PEER_REMOTE);
    ASSERT_TRUE(ep->remote != NULL);
    pthread_barrier_wait(&j.step);
    ASSERT_OK(vmep_ep_disconnect_ranks(ep, &rank1, 1));
    pthread_barrier_wait(&j.step);
    if (j.status[round] != VMEP_OK)
      TEST_FAIL("the joiner's connect, round %d: %s", round, j.error);
  }
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_EQ(pthread_barrier_destroy(&j.step), 0);
  ASSERT_OK(vmep_ep_destroy(ep));
  ASSERT_OK(vmep_group_destroy(g));
  const char *leaks = fake_leaks();
  if (leaks)
    TEST_FAIL("still live in the fake: %s", leaks);
  fake_uninstall();
  ASSERT_EQ(unsetenv("VMEP_NODES"), 0);
  printf("  a joiner of another pretend node: connected as remote on both "
         "sides, disconnected, connected again\n");
}

int main(void) {
  test_seed("test_window_topology"); /* no random choices */
  setenv("VMEP_TIMEOUT_MS", "10000", 1);
  unsetenv("VMEP_JOB_ID");
  unsetenv("VMEP_JOB_TOKEN");
  test_one_node();
  test_two_pretend_nodes();
  test_joiner_of_another_node();
  printf("test_window_topology: ok\n");
  return 0;
}
