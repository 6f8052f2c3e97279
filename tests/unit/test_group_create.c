/*
 * Creating and destroying store groups: argument checks with their
 * messages (and untouched outputs), VMEP_TIMEOUT_MS and VMEP_JOB_ID
 * checks, a group of one, a group from the launch environment, and the
 * ways a create fails across processes: a missing rank (VMEP_ERR_TIMEOUT
 * naming it), ranks that disagree on the size, a wrong token, a port in
 * use. Failed creates leave no fd and no thread behind, and rank 0's
 * destroy keeps the store up until the other ranks have left.
 */
#include "boot/boot.h"
#include "store/store.h"
#include "test_store_util.h"

static vmep_group *const untouched = (vmep_group *)0x7;

static int count_threads(void) {
  char line[256];
  int n = -1;
  FILE *f = fopen("/proc/self/status", "r");
  ASSERT_TRUE(f != NULL);
  while (fgets(line, sizeof(line), f))
    if (sscanf(line, "Threads: %d", &n) == 1)
      break;
  fclose(f);
  return n;
}

static void expect_invalid(int rank, int size, const char *addr,
                           const char *token, const char *needle) {
  vmep_group *g = untouched;
  ASSERT_STATUS(vmep_group_create(rank, size, addr, token, &g),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), needle);
  ASSERT_TRUE(g == untouched);
}

static void test_arguments(void) {
  char long_token[300];
  memset(long_token, 't', sizeof(long_token) - 1);
  long_token[sizeof(long_token) - 1] = '\0';
  ASSERT_STATUS(vmep_group_create(0, 1, "127.0.0.1:5", NULL, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "group_out is NULL");
  expect_invalid(0, 0, "127.0.0.1:5", NULL, "size 0 is not in 1..65536");
  expect_invalid(0, 65537, "127.0.0.1:5", NULL, "size 65537");
  expect_invalid(-1, 2, "127.0.0.1:5", NULL, "rank -1 is not in 0..1");
  expect_invalid(2, 2, "127.0.0.1:5", NULL, "rank 2 is not in 0..1");
  expect_invalid(0, 1, NULL, NULL, "store_addr is NULL");
  const char *bad[] = {"nohost", "h:", ":5", "h:0", "h:70000", "h:abc"};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad); i++)
    expect_invalid(0, 1, bad[i], NULL, bad[i]);
  expect_invalid(0, 1, "127.0.0.1:5", long_token, "token of 299 bytes");
  setenv("VMEP_TIMEOUT_MS", "soon", 1);
  expect_invalid(0, 1, "127.0.0.1:5", NULL, "VMEP_TIMEOUT_MS=\"soon\"");
  setenv("VMEP_TIMEOUT_MS", "0", 1);
  expect_invalid(0, 1, "127.0.0.1:5", NULL, "VMEP_TIMEOUT_MS");
  unsetenv("VMEP_TIMEOUT_MS");
  setenv("VMEP_JOB_ID", "no spaces please", 1);
  expect_invalid(0, 1, "127.0.0.1:5", NULL, "VMEP_JOB_ID");
  unsetenv("VMEP_JOB_ID");
  vmep_group *g = untouched;
  ASSERT_STATUS(vmep_group_create_custom(0, 2, NULL, NULL, NULL, &g),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "allgather is NULL");
  /* A group of one needs no collectives: its allgather is a copy. */
  vmep_group *solo = NULL;
  unsigned char one = 0x5a, back = 0;
  ASSERT_OK(vmep_group_create_custom(0, 1, NULL, NULL, NULL, &solo));
  ASSERT_OK(vmep_group_allgather(solo, &one, 1, &back));
  ASSERT_EQ(back, 0x5a);
  ASSERT_OK(vmep_group_barrier(solo));
  ASSERT_OK(vmep_group_destroy(solo));
  ASSERT_STATUS(vmep_group_create_from_env(&g), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "no launch environment");
  ASSERT_TRUE(g == untouched);
  ASSERT_STATUS(vmep_group_create_from_env(NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_OK(vmep_group_destroy(NULL));
  ASSERT_EQ(vmep_group_rank(NULL), -1);
  ASSERT_EQ(vmep_group_size(NULL), 0);
  ASSERT_EQ(vmep_group_local_rank(NULL), -1);
  ASSERT_EQ(vmep_group_node(NULL, 0), -1);
  ASSERT_STATUS(vmep_group_barrier(NULL), VMEP_ERR_INVALID_ARG);
}

static void test_group_of_one(void) {
  char addr[64], job[64];
  vmep_group *g = NULL;
  int port = test_free_port();
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
  setenv("VMEP_JOB_TOKEN", "env-token", 1);
  ASSERT_OK(vmep_group_create(0, 1, addr, NULL, &g));
  ASSERT_EQ(strcmp(vmep__group_token(g), "env-token"), 0);
  ASSERT_EQ(strncmp(vmep__group_job_id(g), "store-", 6), 0);
  snprintf(job, sizeof(job), "%s", vmep__group_job_id(g));
  ASSERT_EQ(vmep_group_local_rank(g), 0);
  ASSERT_EQ(vmep_group_node(g, 0), 0);
  unsigned char in[100], out[100];
  size_t size = 0;
  test_fill(in, sizeof(in), 1);
  ASSERT_OK(vmep_group_allgather(g, in, sizeof(in), out));
  test_check(out, sizeof(out), 1, "allgather of one");
  ASSERT_OK(vmep_group_allgatherv(g, in, 0, NULL, 0, &size));
  ASSERT_EQ(size, 0);
  ASSERT_OK(vmep_group_broadcast(g, 0, in, sizeof(in)));
  test_check(in, sizeof(in), 1, "broadcast of one");
  ASSERT_STATUS(vmep_group_broadcast(g, 1, in, sizeof(in)),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "root 1 is not in 0..0");
  ASSERT_STATUS(vmep_group_allgatherv(g, in, 1, out, 1, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_OK(vmep_group_barrier(g));
  ASSERT_OK(vmep_group_destroy(g));
  /* The same address names the same job; VMEP_JOB_ID overrides it. */
  setenv("VMEP_JOB_ID", "my-job.1", 1);
  ASSERT_OK(vmep_group_create(0, 1, addr, "explicit", &g));
  ASSERT_EQ(strcmp(vmep__group_job_id(g), "my-job.1"), 0);
  ASSERT_EQ(strcmp(vmep__group_token(g), "explicit"), 0);
  ASSERT_OK(vmep_group_destroy(g));
  unsetenv("VMEP_JOB_ID");
  unsetenv("VMEP_JOB_TOKEN");
  ASSERT_OK(vmep_group_create(0, 1, addr, NULL, &g));
  ASSERT_EQ(strcmp(vmep__group_job_id(g), job), 0);
  ASSERT_OK(vmep_group_destroy(g));
}

/* Failures inside this process: nothing may stay open. */
static void test_local_failures(void) {
  char addr[64];
  vmep_group *g = untouched;
  int fds = test_count_fds(), threads = count_threads();
  int port = test_free_port();
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
  /* Rank 0 of 2 alone: its wait for rank 1 times out, naming it. */
  setenv("VMEP_TIMEOUT_MS", "500", 1);
  ASSERT_STATUS(vmep_group_create(0, 2, addr, "t", &g), VMEP_ERR_TIMEOUT);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank1");
  /* Rank 1 of 2 with no store: the connection times out. */
  ASSERT_STATUS(vmep_group_create(1, 2, addr, "t", &g), VMEP_ERR_TIMEOUT);
  ASSERT_STR_CONTAINS(vmep_last_error(), addr);
  unsetenv("VMEP_TIMEOUT_MS");
  /* The port is taken. */
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int taken = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(bind(taken, (struct sockaddr *)&sa, sizeof(sa)), 0);
  ASSERT_EQ(listen(taken, 1), 0);
  ASSERT_STATUS(vmep_group_create(0, 2, addr, "t", &g), VMEP_ERR_SYSTEM);
  ASSERT_STR_CONTAINS(vmep_last_error(), "Address already in use");
  close(taken);
  ASSERT_TRUE(g == untouched);
  ASSERT_EQ(test_count_fds(), fds);
  ASSERT_EQ(count_threads(), threads);
}

struct job {
  char addr[64];
  int mode;
};

enum { FROM_ENV, DRAIN, SIZE_MISMATCH, WRONG_TOKEN, MISSING_RANK };

static void from_env(int rank, const struct job *j) {
  char text[16], id[128] = {0}, ids[2][128];
  vmep_group *g = NULL;
  snprintf(text, sizeof(text), "%d", rank);
  setenv("VMEP_RANK", text, 1);
  setenv("VMEP_LOCAL_RANK", text, 1);
  setenv("VMEP_WORLD_SIZE", "2", 1);
  setenv("VMEP_STORE_ADDR", j->addr, 1);
  setenv("VMEP_JOB_TOKEN", "from-env", 1);
  ASSERT_OK(vmep_group_create_from_env(&g));
  ASSERT_EQ(vmep_group_rank(g), rank);
  ASSERT_EQ(vmep_group_local_rank(g), rank);
  snprintf(id, sizeof(id), "%s", vmep__group_job_id(g));
  ASSERT_OK(vmep_group_allgather(g, id, sizeof(id), ids));
  ASSERT_EQ(strcmp(ids[0], ids[1]), 0);
  ASSERT_EQ(strcmp(vmep__group_token(g), "from-env"), 0);
  ASSERT_OK(vmep_group_destroy(g));
}

/* Rank 0 keeps the store up until rank 1 has left. */
static void drain(int rank, const struct job *j) {
  vmep_group *g = NULL;
  ASSERT_OK(vmep_group_create(rank, 2, j->addr, NULL, &g));
  ASSERT_OK(vmep_group_barrier(g));
  uint64_t start = test_now_ms();
  if (rank == 1) {
    usleep(400000);
    ASSERT_OK(vmep__store_set(vmep__group_store(g), "late", "x", 1));
  }
  ASSERT_OK(vmep_group_destroy(g));
  if (rank == 0)
    ASSERT_TRUE(test_now_ms() - start >= 350);
}

/* Creates that must fail, on every rank, each with its reason. */
static void failing_create(int rank, int size, const struct job *j) {
  vmep_group *g = untouched;
  vmep_status status;
  switch (j->mode) {
  case SIZE_MISMATCH:
    status = vmep_group_create(rank, rank ? 3 : 2, j->addr, NULL, &g);
    if (rank == 0) {
      ASSERT_EQ(status, VMEP_ERR_INVALID_ARG);
      ASSERT_STR_CONTAINS(vmep_last_error(), "rank 1 was created with size 3");
    } else { /* rank 0 left without goodbye, or took its store along */
      ASSERT_EQ(status, VMEP_ERR_PEER);
      ASSERT_STR_CONTAINS(vmep_last_error(), "rank 0 died");
    }
    break;
  case WRONG_TOKEN:
    status = vmep_group_create(rank, size, j->addr, rank ? "bad" : "good", &g);
    if (rank == 1) {
      ASSERT_EQ(status, VMEP_ERR_INVALID_ARG);
      ASSERT_STR_CONTAINS(vmep_last_error(), "wrong job token");
    } else {
      ASSERT_EQ(status, VMEP_ERR_TIMEOUT);
      ASSERT_STR_CONTAINS(vmep_last_error(), "rank1");
    }
    break;
  default: /* MISSING_RANK: ranks 0 and 1 of 3 */
    status = vmep_group_create(rank, 3, j->addr, NULL, &g);
    ASSERT_TRUE(status == VMEP_ERR_TIMEOUT || status == VMEP_ERR_PEER);
    /* Rank 1 may time out first and leave: rank 0 then sees it die. */
    if (rank == 0)
      ASSERT_STR_CONTAINS(vmep_last_error(), status == VMEP_ERR_TIMEOUT
                                                 ? "1 of 3 keys: vmep/0/rank2"
                                                 : "rank 1 died");
    break;
  }
  ASSERT_TRUE(g == untouched);
}

static void rank_main(int rank, int size, void *arg) {
  const struct job *j = arg;
  if (j->mode == FROM_ENV)
    from_env(rank, j);
  else if (j->mode == DRAIN)
    drain(rank, j);
  else
    failing_create(rank, size, j);
}

static void run_job(int mode, int ranks) {
  struct job j = {.mode = mode};
  snprintf(j.addr, sizeof(j.addr), "127.0.0.1:%d", test_free_port());
  ASSERT_EQ(test_run_ranks(ranks, rank_main, &j), 0);
}

int main(void) {
  test_seed("test_group_create");
  test_arguments();
  test_group_of_one();
  test_local_failures();
  run_job(FROM_ENV, 2);
  run_job(DRAIN, 2);
  setenv("VMEP_TIMEOUT_MS", "1500", 1);
  run_job(SIZE_MISMATCH, 2);
  run_job(WRONG_TOKEN, 2);
  run_job(MISSING_RANK, 2);
  return 0;
}
