/*
 * vmep-bench's engine ceiling (tools/bench_engine.c) between forked
 * processes over UCX on loopback, its exchange relayed by the parent:
 * two ranks in two nodes (one rank receives nothing but the signal in
 * one load), three ranks in two nodes (the pair in one node is left
 * alone), and a rank that fails inside the collective (every rank returns
 * an error, none hangs). Each timed iteration must take some time.
 */
#include "bench_engine.h"
#include "test_net_util.h"

#define ITERS 20
#define WARMUP 3

/* The relay over the socketpair to the parent, as the ceiling's
 * exchange. */
struct relay {
  int fd, size;
};

static vmep_status relay_allgatherv(void *ctx, vmep_engine *engine,
                                    const void *send, size_t bytes, void *recv,
                                    size_t capacity, size_t *sizes) {
  const struct relay *x = ctx;
  void *out[NET_MAX_RANKS];
  uint32_t lens[NET_MAX_RANKS];
  vmep_status status = VMEP_OK;
  size_t at = 0;
  net_allgather(x->fd, x->size, engine, send, (uint32_t)bytes, out, lens);
  for (int r = 0; r < x->size; r++) {
    if (at + lens[r] > capacity)
      status = VMEP_ERR_INVALID_ARG;
    else
      memcpy((char *)recv + at, out[r], lens[r]);
    sizes[r] = lens[r];
    at += lens[r];
    free(out[r]);
  }
  return status;
}

enum scenario { TWO_NODES, SHARED_NODE, FAILED_RANK };
static enum scenario scenario;

static int run_rank(int rank, int size, int fd) {
  struct relay link = {fd, size};
  struct bench_exchange x = {relay_allgatherv, &link};
  int node[3] = {0, 1, 1};
  if (scenario == SHARED_NODE) /* ranks 0 and 1 in node 0, rank 2 in 1 */
    node[1] = 0;
  struct bench_engine_job job = {&x, rank, size, node, ITERS, WARMUP, 20000};
  /* Dispatch-like: different bytes toward each peer; combine-like
   * (incoming): rank 0 gets nothing from rank 1 but the signal. */
  double to[3], from[3], us[2][ITERS];
  for (int r = 0; r < size; r++) {
    to[r] = 1000.0 * (1 + rank) + 65536.0 * r + 7;
    from[r] = rank == 0 && r == 1 ? 0 : 4096.0 * (1 + r);
  }
  struct bench_engine_load loads[2] = {{to, 0, us[0]}, {from, 1, us[1]}};
  if (scenario == FAILED_RANK && rank == 1)
    loads[1].bytes = NULL; /* fails on rank 1, inside the collective */
  vmep_status st = bench_engine_ceiling(&job, loads, 2);
  if (scenario == FAILED_RANK) {
    if (st == VMEP_OK)
      TEST_FAIL("rank %d: a failed rank went unnoticed", rank);
    printf("rank %d: %s: %s\n", rank, vmep_status_name(st), vmep_last_error());
    ASSERT_EQ(st, rank == 1 ? VMEP_ERR_INVALID_ARG : VMEP_ERR_PEER);
    return 0;
  }
  if (st != VMEP_OK)
    TEST_FAIL("rank %d: %s: %s", rank, vmep_status_name(st), vmep_last_error());
  for (int l = 0; l < 2; l++)
    for (int i = 0; i < ITERS; i++)
      if (!(us[l][i] > 0.0 && us[l][i] < 2e7))
        TEST_FAIL("rank %d: load %d iteration %d took %g us", rank, l, i,
                  us[l][i]);
  printf("rank %d: dispatch-like %.1f us, combine-like %.1f us (first "
         "iteration)\n",
         rank, us[0][0], us[1][0]);
  return 0;
}

static void run(enum scenario s, int size, const char *what) {
  struct net_job job;
  scenario = s;
  printf("%s\n", what);
  net_job_start(&job, size, run_rank);
  net_job_finish(&job);
}

int main(void) {
  net_test_env();
  run(TWO_NODES, 2, "2 ranks, 2 nodes");
  run(SHARED_NODE, 3, "3 ranks, 2 nodes (ranks 0 and 1 in one)");
  run(FAILED_RANK, 3, "3 ranks, rank 1 fails inside the collective");
  printf("test_bench_engine: ok\n");
  return 0;
}
