/*
 * Pretend nodes in the group (VMEP_NODES, docs/TOPOLOGY.md): ranks of
 * forked processes over the store see node r * N / size for every rank r
 * and their rank within their pretend node as local rank; ranks that
 * disagree on VMEP_NODES all fail naming both values; pretend nodes on two
 * hosts (simulated by a custom allgather that rewrites a hostname) and an
 * invalid value are refused; a joiner of an elastic job splits max_ranks.
 */
#include "boot/boot.h"
#include "store/store.h"
#include "test_store_util.h"

struct job {
  char addr[64];
  int nodes;    /* VMEP_NODES of every rank */
  int odd_rank; /* this rank runs with VMEP_NODES=odd_nodes (-1: none) */
  int odd_nodes;
};

/* The pretend node of rank r, found by search rather than by the formula:
 * node n holds the ranks r with n * size <= r * nodes < (n + 1) * size. */
static int expected_node(int r, int nodes, int size) {
  int node = 0;
  while ((long long)(node + 1) * size <= (long long)r * nodes)
    node++;
  return node;
}

static void set_nodes(int nodes) {
  char text[16];
  snprintf(text, sizeof(text), "%d", nodes);
  ASSERT_EQ(setenv("VMEP_NODES", text, 1), 0);
}

static void agreeing_rank(int rank, int size, void *arg) {
  const struct job *j = arg;
  vmep_group *g = NULL;
  set_nodes(j->nodes);
  ASSERT_OK(vmep_group_create(rank, size, j->addr, "nodes", &g));
  ASSERT_EQ(vmep__group_pretend_nodes(g), j->nodes);
  int local = 0;
  for (int r = 0; r < size; r++) {
    ASSERT_EQ(vmep_group_node(g, r), expected_node(r, j->nodes, size));
    local += r < rank && expected_node(r, j->nodes, size) ==
                             expected_node(rank, j->nodes, size);
  }
  ASSERT_EQ(vmep_group_local_rank(g), local);
  ASSERT_EQ(vmep_group_node(g, size), -1);
  ASSERT_OK(vmep_group_destroy(g));
}

static void disagreeing_rank(int rank, int size, void *arg) {
  const struct job *j = arg;
  vmep_group *g = (vmep_group *)0x7;
  char mine[32], theirs[32];
  set_nodes(rank == j->odd_rank ? j->odd_nodes : j->nodes);
  ASSERT_STATUS(vmep_group_create(rank, size, j->addr, "nodes", &g),
                VMEP_ERR_INVALID_ARG);
  snprintf(mine, sizeof(mine), "VMEP_NODES=%d", j->nodes);
  snprintf(theirs, sizeof(theirs), "VMEP_NODES=%d", j->odd_nodes);
  ASSERT_STR_CONTAINS(vmep_last_error(), mine);
  ASSERT_STR_CONTAINS(vmep_last_error(), theirs);
  ASSERT_STR_CONTAINS(vmep_last_error(), "every rank must see the same value");
  ASSERT_TRUE(g == (vmep_group *)0x7);
}

static void run_job(test_rank_fn fn, int size, int nodes, int odd_rank,
                    int odd_nodes) {
  struct job j = {.nodes = nodes, .odd_rank = odd_rank, .odd_nodes = odd_nodes};
  snprintf(j.addr, sizeof(j.addr), "127.0.0.1:%d", test_free_port());
  printf("  %d ranks, VMEP_NODES=%d", size, nodes);
  if (odd_rank >= 0)
    printf(" (rank %d: %d)", odd_rank, odd_nodes);
  printf("\n");
  ASSERT_EQ(test_run_ranks(size, fn, &j), 0);
}

/* A custom allgather of two ranks in one process: rank 1's record is ours
 * with its hostname's first byte changed (another host). */
static vmep_status two_hosts(const void *send, size_t bytes, void *recv,
                             void *user) {
  (void)user;
  memcpy(recv, send, bytes);
  memcpy((char *)recv + bytes, send, bytes);
  ((char *)recv)[bytes] ^= 0x20;
  return VMEP_OK;
}

static void test_local_refusals(void) {
  vmep_group *g = NULL;
  set_nodes(2);
  ASSERT_STATUS(vmep_group_create_custom(0, 2, two_hosts, NULL, NULL, &g),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "need every rank on one host");
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 1 is on host");
  /* Without pretend nodes two hosts are two nodes. */
  set_nodes(0);
  ASSERT_OK(vmep_group_create_custom(0, 2, two_hosts, NULL, NULL, &g));
  ASSERT_EQ(vmep_group_node(g, 1), 1);
  ASSERT_EQ(vmep__group_pretend_nodes(g), 0);
  ASSERT_OK(vmep_group_destroy(g));
  ASSERT_EQ(setenv("VMEP_NODES", "two", 1), 0);
  ASSERT_STATUS(vmep_group_create_custom(0, 1, NULL, NULL, NULL, &g),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "VMEP_NODES=\"two\"");
  ASSERT_EQ(setenv("VMEP_NODES", "65537", 1), 0);
  ASSERT_STATUS(vmep_group_create_custom(0, 1, NULL, NULL, NULL, &g),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "0..65536");
  /* More nodes than ranks leaves nodes empty: one rank, node 0. */
  set_nodes(3);
  ASSERT_OK(vmep_group_create_custom(0, 1, NULL, NULL, NULL, &g));
  ASSERT_EQ(vmep_group_node(g, 0), 0);
  ASSERT_OK(vmep_group_destroy(g));
  ASSERT_EQ(unsetenv("VMEP_NODES"), 0);
}

/* A joiner splits the job's capacity: with max_ranks 6 and VMEP_NODES=4
 * the nodes of ranks 0..5 are 0 0 1 2 2 3, so rank 4 is the second of
 * node 2; VMEP_LOCAL_RANK does not count then. */
static void test_join(void) {
  struct test_store_host host;
  char addr[64];
  vmep_group *g = NULL;
  test_store_host_start(&host, "nodes");
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", host.port);
  set_nodes(4);
  ASSERT_EQ(setenv("VMEP_LOCAL_RANK", "5", 1), 0); /* ignored */
  ASSERT_OK(vmep_group_join(4, 6, addr, "nodes", &g));
  for (int r = 0; r < 6; r++)
    ASSERT_EQ(vmep_group_node(g, r), expected_node(r, 4, 6));
  ASSERT_EQ(vmep_group_node(g, 4), 2);
  ASSERT_EQ(vmep_group_local_rank(g), 1); /* node 2 holds ranks 3 and 4 */
  ASSERT_EQ(vmep__group_pretend_nodes(g), 4);
  ASSERT_OK(vmep_group_destroy(g));
  ASSERT_EQ(unsetenv("VMEP_NODES"), 0);
  ASSERT_EQ(unsetenv("VMEP_LOCAL_RANK"), 0);
  test_store_host_stop(&host);
}

int main(void) {
  test_seed("test_group_nodes");
  test_local_refusals();
  test_join();
  run_job(agreeing_rank, 5, 2, -1, 0);
  run_job(agreeing_rank, 4, 4, -1, 0);
  run_job(agreeing_rank, 3, 1, -1, 0);
  run_job(agreeing_rank, 2, 0, -1, 0);
  setenv("VMEP_TIMEOUT_MS", "5000", 1);
  run_job(disagreeing_rank, 3, 2, 1, 3);
  run_job(disagreeing_rank, 2, 2, 0, 0);
  printf("test_group_nodes: ok\n");
  return 0;
}
