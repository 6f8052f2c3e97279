/*
 * Groups over a framework's own collectives (vmep_group_create_custom):
 * four threads play the ranks, with an allgather over shared memory and a
 * pthread barrier as the "framework". Checks node identity and the job
 * id, 50 rounds of allgatherv (random sizes, zero included), broadcast,
 * allgather and barrier with and without a barrier callback, a buffer one
 * byte short refused on every rank, and a failing callback reported as
 * such.
 */
#include <pthread.h>

#include "boot/boot.h"
#include "test_store_util.h"

#define RANKS 4
#define ROUNDS 50

static struct world {
  pthread_barrier_t barrier;
  unsigned char *slots; /* RANKS slots of slot_bytes */
  size_t slot_bytes;
  uint64_t seed;
  _Atomic int fail_next[RANKS]; /* the rank's next call fails */
  char job_ids[RANKS][128];
} world;

struct rank_ctx {
  int rank;
  int with_barrier;
};

static vmep_status world_allgather(const void *send, size_t bytes, void *recv,
                                   void *user) {
  const struct rank_ctx *ctx = user;
  if (world.fail_next[ctx->rank]) {
    world.fail_next[ctx->rank] = 0;
    return VMEP_ERR_PEER;
  }
  pthread_barrier_wait(&world.barrier);
  if (ctx->rank == 0 && world.slot_bytes < bytes) {
    free(world.slots);
    world.slots = malloc(bytes * RANKS);
    ASSERT_TRUE(world.slots != NULL);
    world.slot_bytes = bytes;
  }
  pthread_barrier_wait(&world.barrier);
  if (bytes)
    memcpy(world.slots + (size_t)ctx->rank * bytes, send, bytes);
  pthread_barrier_wait(&world.barrier);
  if (bytes)
    memcpy(recv, world.slots, bytes * RANKS);
  pthread_barrier_wait(&world.barrier);
  return VMEP_OK;
}

static vmep_status world_barrier(void *user) {
  (void)user;
  pthread_barrier_wait(&world.barrier);
  return VMEP_OK;
}

static size_t size_of(int rank, int round) {
  uint64_t x = test_mix(world.seed, (uint64_t)rank, (uint64_t)round);
  return x % 5 == 0 ? 0 : (size_t)(x % 3000);
}

static void rounds(vmep_group *g, int rank, int phase) {
  unsigned char send[3000], recv[3000 * RANKS];
  size_t sizes[RANKS];
  for (int round = phase * ROUNDS; round < (phase + 1) * ROUNDS; round++) {
    size_t total = 0;
    for (int r = 0; r < RANKS; r++)
      total += size_of(r, round);
    test_fill(send, size_of(rank, round), test_mix(world.seed, rank, round));
    if (round % 10 == 7 && total > 0) {
      ASSERT_STATUS(vmep_group_allgatherv(g, send, size_of(rank, round), recv,
                                          total - 1, sizes),
                    VMEP_ERR_INVALID_ARG);
      continue;
    }
    ASSERT_OK(vmep_group_allgatherv(g, send, size_of(rank, round), recv, total,
                                    sizes));
    for (int r = 0, off = 0; r < RANKS; off += (int)sizes[r], r++) {
      ASSERT_EQ(sizes[r], size_of(r, round));
      test_check(recv + off, sizes[r], test_mix(world.seed, r, round),
                 "custom allgatherv");
    }
    int root = (int)(test_mix(world.seed, 99, round) % RANKS);
    unsigned char b[500];
    if (rank == root)
      test_fill(b, sizeof(b), (uint64_t)round);
    ASSERT_OK(vmep_group_broadcast(g, root, b, sizeof(b)));
    test_check(b, sizeof(b), (uint64_t)round, "custom broadcast");
    test_fill(send, 64, test_mix(world.seed, rank, round + 1000));
    ASSERT_OK(vmep_group_allgather(g, send, 64, recv));
    for (int r = 0; r < RANKS; r++)
      test_check(recv + 64 * r, 64, test_mix(world.seed, r, round + 1000),
                 "custom allgather");
    ASSERT_OK(vmep_group_barrier(g));
  }
}

static void *rank_thread(void *arg) {
  struct rank_ctx *ctx = arg;
  vmep_group *g = NULL;
  ASSERT_OK(vmep_group_create_custom(ctx->rank, RANKS, world_allgather,
                                     ctx->with_barrier ? world_barrier : NULL,
                                     ctx, &g));
  ASSERT_EQ(vmep_group_rank(g), ctx->rank);
  ASSERT_EQ(vmep_group_local_rank(g), ctx->rank);
  for (int r = 0; r < RANKS; r++)
    ASSERT_EQ(vmep_group_node(g, r), 0);
  ASSERT_TRUE(vmep__group_store(g) == NULL);
  snprintf(world.job_ids[ctx->rank], sizeof(world.job_ids[0]), "%s",
           vmep__group_job_id(g));
  rounds(g, ctx->rank, ctx->with_barrier);
  /* A framework failure comes back as the callback's status. */
  world.fail_next[ctx->rank] = 1;
  unsigned char byte = 1, all[RANKS];
  ASSERT_STATUS(vmep_group_allgather(g, &byte, 1, all), VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(),
                      "allgather callback returned VMEP_ERR_PEER");
  ASSERT_OK(vmep_group_allgather(g, &byte, 1, all));
  ASSERT_OK(vmep_group_destroy(g));
  return NULL;
}

static void run_phase(int with_barrier) {
  pthread_t threads[RANKS];
  struct rank_ctx ctx[RANKS];
  for (int r = 0; r < RANKS; r++) {
    ctx[r] = (struct rank_ctx){r, with_barrier};
    ASSERT_EQ(pthread_create(&threads[r], NULL, rank_thread, &ctx[r]), 0);
  }
  for (int r = 0; r < RANKS; r++)
    ASSERT_EQ(pthread_join(threads[r], NULL), 0);
  for (int r = 0; r < RANKS; r++)
    ASSERT_EQ(strcmp(world.job_ids[r], world.job_ids[0]), 0);
  ASSERT_EQ(strncmp(world.job_ids[0], "custom-", 7), 0);
}

/* A custom group has no store address: its token and job id come from
 * VMEP_JOB_TOKEN and VMEP_JOB_ID, checked as a launcher's, else the job is
 * named after rank 0; nothing names a made-up store. */
static void test_names_from_env(void) {
  vmep_group *g = NULL;
  setenv("VMEP_JOB_ID", "custom-job.7", 1);
  setenv("VMEP_JOB_TOKEN", "s3cret", 1);
  ASSERT_OK(vmep_group_create_custom(0, 1, NULL, NULL, NULL, &g));
  ASSERT_EQ(strcmp(vmep__group_job_id(g), "custom-job.7"), 0);
  ASSERT_EQ(strcmp(vmep__group_token(g), "s3cret"), 0);
  ASSERT_OK(vmep_group_destroy(g));
  g = NULL;
  setenv("VMEP_JOB_ID", "no spaces allowed", 1);
  ASSERT_STATUS(vmep_group_create_custom(0, 1, NULL, NULL, NULL, &g),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(),
                      "VMEP_JOB_ID=\"no spaces allowed\" must be");
  ASSERT_TRUE(g == NULL);
  unsetenv("VMEP_JOB_ID");
  unsetenv("VMEP_JOB_TOKEN");
  ASSERT_OK(vmep_group_create_custom(0, 1, NULL, NULL, NULL, &g));
  ASSERT_EQ(strncmp(vmep__group_job_id(g), "custom-", 7), 0);
  ASSERT_EQ(strcmp(vmep__group_token(g), ""), 0);
  ASSERT_OK(vmep_group_destroy(g));
}

int main(void) {
  world.seed = test_seed("test_group_custom");
  test_names_from_env();
  unsetenv("VMEP_JOB_ID");
  ASSERT_EQ(pthread_barrier_init(&world.barrier, NULL, RANKS), 0);
  run_phase(1);
  run_phase(0);
  pthread_barrier_destroy(&world.barrier);
  free(world.slots);
  return 0;
}
