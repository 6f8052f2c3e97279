/*
 * Store groups created one after another on the same address, as a job
 * that rebuilds its group does: N forked ranks (argv[1], default 4) each
 * run ROUNDS times create (rank 0 hosts the store), an allgather whose
 * result is checked byte for byte, destroy, with random small sleeps
 * before the create and the destroy of every rank, so that fast ranks
 * reach the next create while rank 0 still serves (or drains) the old
 * store. Each create must join the new store, never the old one: a rank
 * that did its first collective on the old store would wait forever (or
 * read the old group's keys). Every create, allgather and destroy must
 * succeed, each within the bound below.
 */
#include "boot/boot.h"
#include "test_store_util.h"

#define ROUNDS 30
#define BYTES 256
#define CALL_BOUND_MS 4000 /* below VMEP_TIMEOUT_MS: no call may time out */

struct job {
  uint64_t seed;
  char addr[64];
};

/* A sleep of 0..max_us, from the rank's stream, with zero half the time
 * (so that ranks also race with no pause at all). */
static void nap(uint64_t *state, unsigned max_us) {
  *state = test_mix(*state, 1, 2);
  if (*state % 2)
    usleep((useconds_t)(*state >> 8) % max_us);
}

static void check_round(vmep_group *g, const struct job *j, int round) {
  int rank = vmep_group_rank(g), size = vmep_group_size(g);
  unsigned char mine[BYTES], *all = malloc((size_t)size * BYTES);
  ASSERT_TRUE(all != NULL);
  test_fill(mine, BYTES, test_mix(j->seed, (uint64_t)rank, (uint64_t)round));
  uint64_t start = test_now_ms();
  ASSERT_OK(vmep_group_allgather(g, mine, BYTES, all));
  ASSERT_TRUE(test_now_ms() - start < CALL_BOUND_MS);
  for (int r = 0; r < size; r++) {
    char what[64];
    snprintf(what, sizeof(what), "round %d, rank %d's part", round, r);
    test_check(all + (size_t)r * BYTES, BYTES,
               test_mix(j->seed, (uint64_t)r, (uint64_t)round), what);
  }
  free(all);
}

static void rank_main(int rank, int size, void *arg) {
  const struct job *j = arg;
  uint64_t naps = test_mix(j->seed, (uint64_t)rank, 99);
  for (int round = 0; round < ROUNDS; round++) {
    vmep_group *g = NULL;
    nap(&naps, 30000);
    uint64_t start = test_now_ms();
    vmep_status status = vmep_group_create(rank, size, j->addr, "tok", &g);
    if (status != VMEP_OK)
      TEST_FAIL("rank %d, round %d: create: %s (%s)", rank, round,
                vmep_status_name(status), vmep_last_error());
    ASSERT_TRUE(test_now_ms() - start < CALL_BOUND_MS);
    check_round(g, j, round);
    nap(&naps, 30000);
    start = test_now_ms();
    status = vmep_group_destroy(g);
    if (status != VMEP_OK)
      TEST_FAIL("rank %d, round %d: destroy: %s (%s)", rank, round,
                vmep_status_name(status), vmep_last_error());
    ASSERT_TRUE(test_now_ms() - start < CALL_BOUND_MS);
  }
}

int main(int argc, char **argv) {
  int ranks = argc > 1 ? atoi(argv[1]) : 4;
  struct job j;
  ASSERT_TRUE(ranks >= 2 && ranks <= 64);
  j.seed = test_seed("test_group_recreate");
  snprintf(j.addr, sizeof(j.addr), "127.0.0.1:%d", test_free_port());
  setenv("VMEP_TIMEOUT_MS", "5000", 1);
  if (!getenv("VMEP_LOG"))
    setenv("VMEP_LOG", "error", 1);
  uint64_t start = test_now_ms();
  ASSERT_EQ(test_run_ranks(ranks, rank_main, &j), 0);
  printf("%d ranks: %d groups on %s in %llu ms\n", ranks, ROUNDS, j.addr,
         (unsigned long long)(test_now_ms() - start));
  return 0;
}
