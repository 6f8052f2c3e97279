/*
 * Group collectives over the TCP store with N forked processes (argv[1]):
 * 100 rounds each of allgatherv (random sizes, zero included, now and
 * then a payload of several store parts), barrier, broadcast from a
 * random root and fixed-size allgather. Every rank derives what every
 * other rank must have sent from (seed, rank, round) and checks every
 * byte. Every tenth allgatherv gets a buffer one byte short, which every
 * rank must refuse while the group carries on.
 */
#include "boot/boot.h"
#include "test_store_util.h"

#define ROUNDS 100

struct job {
  uint64_t seed;
  int port;
};

static size_t payload_size(const struct job *j, int rank, int size, int round) {
  uint64_t x = test_mix(j->seed, (uint64_t)rank, (uint64_t)round);
  if (x % 10 == 0)
    return 0;
  if ((round * size + rank) % 97 == 3)
    return (3u << 19) + (size_t)(x % 1000); /* 1.5 MiB: two parts */
  return (size_t)(x % 4096);
}

static uint64_t payload_key(const struct job *j, int rank, int round) {
  return test_mix(j->seed, (uint64_t)rank, (uint64_t)round + 1000000);
}

static void check_allgatherv(vmep_group *g, const struct job *j, int round) {
  int rank = vmep_group_rank(g), size = vmep_group_size(g);
  size_t total = 0, mine = payload_size(j, rank, size, round);
  for (int r = 0; r < size; r++)
    total += payload_size(j, r, size, round);
  unsigned char *send = malloc(mine + 1), *recv = malloc(total + 1);
  size_t *sizes = calloc((size_t)size, sizeof(*sizes));
  ASSERT_TRUE(send && recv && sizes);
  test_fill(send, mine, payload_key(j, rank, round));
  if (round % 10 == 9 && total > 0) {
    ASSERT_STATUS(vmep_group_allgatherv(g, send, mine, recv, total - 1, sizes),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), "recv_capacity");
  } else {
    ASSERT_OK(vmep_group_allgatherv(g, send, mine, recv, total, sizes));
    size_t off = 0;
    for (int r = 0; r < size; r++) {
      char what[64];
      ASSERT_EQ(sizes[r], payload_size(j, r, size, round));
      snprintf(what, sizeof(what), "round %d, rank %d's payload", round, r);
      test_check(recv + off, sizes[r], payload_key(j, r, round), what);
      off += sizes[r];
    }
  }
  free(sizes);
  free(recv);
  free(send);
}

static void check_broadcast_allgather(vmep_group *g, const struct job *j,
                                      int round) {
  int rank = vmep_group_rank(g), size = vmep_group_size(g);
  uint64_t x = test_mix(j->seed, 77, (uint64_t)round);
  int root = (int)(x % (uint64_t)size);
  size_t bytes = (size_t)(x >> 20) % 3000;
  unsigned char *buf = malloc(bytes + 1);
  ASSERT_TRUE(buf != NULL);
  memset(buf, 0xee, bytes);
  if (rank == root)
    test_fill(buf, bytes, x);
  ASSERT_OK(vmep_group_broadcast(g, root, buf, bytes));
  test_check(buf, bytes, x, "broadcast");
  free(buf);
  size_t each = (size_t)(x >> 40) % 300;
  unsigned char *mine = malloc(each + 1), *all = malloc(each * size + 1);
  ASSERT_TRUE(mine && all);
  test_fill(mine, each, payload_key(j, rank, round + 5000));
  ASSERT_OK(vmep_group_allgather(g, mine, each, all));
  for (int r = 0; r < size; r++)
    test_check(all + (size_t)r * each, each, payload_key(j, r, round + 5000),
               "allgather");
  free(all);
  free(mine);
}

static void check_identity(vmep_group *g) {
  int rank = vmep_group_rank(g), size = vmep_group_size(g);
  char id[128] = {0};
  char *ids = calloc((size_t)size, sizeof(id));
  ASSERT_TRUE(ids != NULL);
  ASSERT_EQ(vmep_group_local_rank(g), rank); /* one host */
  for (int r = 0; r < size; r++)
    ASSERT_EQ(vmep_group_node(g, r), 0);
  ASSERT_EQ(vmep_group_node(g, size), -1);
  ASSERT_EQ(vmep_group_node(g, -1), -1);
  snprintf(id, sizeof(id), "%s", vmep__group_job_id(g));
  ASSERT_TRUE(strlen(id) > 0);
  ASSERT_OK(vmep_group_allgather(g, id, sizeof(id), ids));
  for (int r = 0; r < size; r++)
    ASSERT_EQ(strcmp(ids + (size_t)r * sizeof(id), id), 0);
  ASSERT_TRUE(vmep__group_store(g) != NULL);
  ASSERT_EQ(strcmp(vmep__group_token(g), "collective-token"), 0);
  free(ids);
}

static void rank_main(int rank, int size, void *arg) {
  const struct job *j = arg;
  char addr[64];
  vmep_group *g = NULL;
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", j->port);
  uint64_t start = test_now_ms();
  ASSERT_OK(vmep_group_create(rank, size, addr, "collective-token", &g));
  ASSERT_EQ(vmep_group_rank(g), rank);
  ASSERT_EQ(vmep_group_size(g), size);
  check_identity(g);
  for (int round = 0; round < ROUNDS; round++) {
    check_allgatherv(g, j, round);
    ASSERT_OK(vmep_group_barrier(g));
    check_broadcast_allgather(g, j, round);
  }
  ASSERT_OK(vmep_group_destroy(g));
  if (rank == 0)
    printf("%d ranks: %d rounds of 4 collectives in %llu ms\n", size, ROUNDS,
           (unsigned long long)(test_now_ms() - start));
}

int main(int argc, char **argv) {
  int size = argc > 1 ? atoi(argv[1]) : 2;
  struct job j;
  j.seed = test_seed("test_group_collectives");
  j.port = test_free_port();
  ASSERT_TRUE(size >= 1 && size <= 64);
  /* A failing rank must not leave the others waiting for minutes. */
  setenv("VMEP_TIMEOUT_MS", "30000", 1);
  ASSERT_EQ(test_run_ranks(size, rank_main, &j), 0);
  return 0;
}
