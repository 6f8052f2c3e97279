/*
 * The topology decision (src/sym/topology.c) against an oracle written
 * here from the rule in docs/TOPOLOGY.md, pair by pair: random node
 * layouts (contiguous blocks, scattered hosts, sparse node indices) and
 * random usable-strategy masks, with and without pretend nodes, plus the
 * cases the rule names by hand. The seed is printed (VMEP_TEST_SEED
 * replays it).
 */
#include "sym/sym.h"
#include "test.h"

#define MAX_SIZE 48
#define TRIALS 20000

static const unsigned fabric = VMEP_REGION_ALLOW_FABRIC;
static const unsigned posix_fd = VMEP_REGION_ALLOW_POSIX_FD;
static const unsigned legacy = VMEP_REGION_ALLOW_LEGACY;

/* ---- the oracle: the rule, written plainly ---------------------------- */

/* What every rank of rank r's node can use. */
static unsigned oracle_common(int size, const int *node_of,
                              const unsigned *usable, int r) {
  unsigned common = fabric | posix_fd | legacy;
  for (int k = 0; k < size; k++)
    if (node_of[k] == node_of[r])
      common = common & usable[k];
  return common;
}

static vmep_mem_strategy oracle_strategy(unsigned common) {
  if (common & fabric)
    return VMEP_MEM_FABRIC;
  if (common & posix_fd)
    return VMEP_MEM_POSIX_FD;
  if (common & legacy)
    return VMEP_MEM_LEGACY;
  return VMEP_MEM_NONE;
}

static enum vmep_peer_class oracle_class(int size, const int *node_of,
                                         const unsigned *usable, int pretend,
                                         int me, int peer) {
  if (node_of[me] == node_of[peer])
    return VMEP_CLASS_NODE;
  int both_fabric = (oracle_common(size, node_of, usable, me) & fabric) != 0 &&
                    (oracle_common(size, node_of, usable, peer) & fabric) != 0;
  return both_fabric && !pretend ? VMEP_CLASS_FABRIC : VMEP_CLASS_REMOTE;
}

static int oracle_bad_node(int size, const int *node_of,
                           const unsigned *usable) {
  for (int r = 0; r < size; r++)
    if (oracle_common(size, node_of, usable, r) == 0)
      return node_of[r];
  return -1;
}

/* ---- one layout ------------------------------------------------------- */

static void describe(int size, const int *node_of, const unsigned *usable,
                     int pretend) {
  fprintf(stderr, "layout (pretend %d):", pretend);
  for (int r = 0; r < size; r++)
    fprintf(stderr, " %d:n%d/%s%s%s", r, node_of[r],
            usable[r] & fabric ? "F" : "", usable[r] & posix_fd ? "P" : "",
            usable[r] & legacy ? "L" : "");
  fprintf(stderr, "\n");
}

/* Checks the decision for every rank and pair; returns the number of
 * cross-node pairs that were mapped. */
static int check_layout(int size, const int *node_of, const unsigned *usable,
                        int pretend) {
  vmep_mem_strategy strategy[MAX_SIZE];
  int mapped_across = 0;
  int bad = vmep__topology_strategies(size, node_of, usable, strategy);
  if (bad != oracle_bad_node(size, node_of, usable)) {
    describe(size, node_of, usable, pretend);
    TEST_FAIL("bad node %d, oracle %d", bad,
              oracle_bad_node(size, node_of, usable));
  }
  for (int r = 0; r < size; r++) {
    vmep_mem_strategy want =
        oracle_strategy(oracle_common(size, node_of, usable, r));
    if (strategy[r] != want) {
      describe(size, node_of, usable, pretend);
      TEST_FAIL("rank %d: strategy %d, oracle %d", r, strategy[r], want);
    }
  }
  for (int me = 0; me < size; me++)
    for (int peer = 0; peer < size; peer++) {
      enum vmep_peer_class got =
          vmep__topology_class(node_of, strategy, pretend, me, peer);
      enum vmep_peer_class want =
          oracle_class(size, node_of, usable, pretend, me, peer);
      if (got != want ||
          got != vmep__topology_class(node_of, strategy, pretend, peer, me)) {
        describe(size, node_of, usable, pretend);
        TEST_FAIL("rank %d sees rank %d as class %d, oracle %d (or not "
                  "symmetric)",
                  me, peer, got, want);
      }
      /* Mapped peers share one strategy. */
      if (got != VMEP_CLASS_REMOTE && strategy[me] != strategy[peer]) {
        describe(size, node_of, usable, pretend);
        TEST_FAIL("ranks %d and %d are mapped with strategies %d and %d", me,
                  peer, strategy[me], strategy[peer]);
      }
      mapped_across += got == VMEP_CLASS_FABRIC;
    }
  return mapped_across;
}

/* A random mask: mostly all three, else any subset (the empty one too). */
static unsigned random_mask(void) {
  uint64_t x = test_rand();
  if (x % 4 == 0)
    return fabric | posix_fd | legacy;
  if (x % 4 == 1)
    return posix_fd | legacy;
  return (unsigned)(x >> 8) & (fabric | posix_fd | legacy);
}

static void test_random(void) {
  int node_of[MAX_SIZE];
  unsigned usable[MAX_SIZE];
  long pairs_fabric = 0, layouts_pretend = 0;
  for (int t = 0; t < TRIALS; t++) {
    int size = 1 + (int)(test_rand() % MAX_SIZE);
    int nodes = 1 + (int)(test_rand() % (uint64_t)size);
    int kind = (int)(test_rand() % 3);
    for (int r = 0; r < size; r++) {
      if (kind == 0) /* pretend nodes: contiguous blocks */
        node_of[r] = (int)((long long)r * nodes / size);
      else if (kind == 1) /* hosts in any order */
        node_of[r] = (int)(test_rand() % (uint64_t)nodes);
      else /* sparse indices, as pretend nodes above the rank count give */
        node_of[r] = 1000 * (int)(test_rand() % (uint64_t)nodes);
      usable[r] = random_mask();
    }
    int pretend = kind == 0 ? (int)(test_rand() % 2) : 0;
    layouts_pretend += pretend;
    pairs_fabric += check_layout(size, node_of, usable, pretend);
  }
  printf("  %d random layouts (%ld with pretend nodes): %ld pairs mapped "
         "across nodes\n",
         TRIALS, layouts_pretend, pairs_fabric);
  ASSERT_TRUE(pairs_fabric > 0);
}

/* The cases the rule names. */
static void test_named(void) {
  vmep_mem_strategy s[4];
  const int one_node[4] = {0, 0, 0, 0}, two_nodes[4] = {0, 0, 1, 1};
  const unsigned all[4] = {
      fabric | posix_fd | legacy, fabric | posix_fd | legacy,
      fabric | posix_fd | legacy, fabric | posix_fd | legacy};
  const unsigned no_fabric[4] = {posix_fd | legacy, fabric | posix_fd,
                                 fabric | posix_fd | legacy, legacy};
  /* One node: the strongest strategy every rank can use, as always. */
  ASSERT_EQ(vmep__topology_strategies(4, one_node, no_fabric, s), 0);
  ASSERT_EQ(s[0], VMEP_MEM_NONE); /* P|L, F|P, all, L share nothing */
  ASSERT_EQ(vmep__topology_strategies(3, one_node, no_fabric, s), -1);
  ASSERT_EQ(s[2], VMEP_MEM_POSIX_FD);
  /* Two nodes that can both use fabric: mapped, unless pretend. */
  ASSERT_EQ(vmep__topology_strategies(4, two_nodes, all, s), -1);
  ASSERT_EQ(s[3], VMEP_MEM_FABRIC);
  ASSERT_EQ(vmep__topology_class(two_nodes, s, 0, 0, 3), VMEP_CLASS_FABRIC);
  ASSERT_EQ(vmep__topology_class(two_nodes, s, 1, 0, 3), VMEP_CLASS_REMOTE);
  ASSERT_EQ(vmep__topology_class(two_nodes, s, 1, 0, 1), VMEP_CLASS_NODE);
  ASSERT_EQ(vmep__topology_class(two_nodes, s, 1, 2, 2), VMEP_CLASS_NODE);
  /* Node 1 (ranks 2, 3: all and L) cannot use fabric: remote; node 0
   * (P|L and F|P) shares posix_fd. */
  ASSERT_EQ(vmep__topology_strategies(4, two_nodes, no_fabric, s), -1);
  ASSERT_EQ(s[0], VMEP_MEM_POSIX_FD);
  ASSERT_EQ(s[2], VMEP_MEM_LEGACY);
  ASSERT_EQ(vmep__topology_class(two_nodes, s, 0, 0, 2), VMEP_CLASS_REMOTE);
  ASSERT_EQ(vmep__topology_class(two_nodes, s, 0, 2, 3), VMEP_CLASS_NODE);
}

int main(void) {
  test_seed("test_topology");
  test_named();
  test_random();
  printf("test_topology: ok\n");
  return 0;
}
