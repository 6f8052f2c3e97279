/*
 * vmep_group_join: ranks of an elastic job, forked processes, join a store
 * that another process hosts. Bad arguments with their messages; what a
 * joined group reports (size, local rank, nodes, job id) and that its
 * collectives are unsupported; a rank held by a live process is refused;
 * several ranks publish and exchange records and leave cleanly (no dead
 * key); a rank SIGKILLed after joining fails the survivors' fetches and
 * allgathers that include it while allgathers among survivors run on; and
 * 20 processes killed at seeded random points of their join (before
 * connecting, between connecting and publishing, after publishing) each
 * leave the store consistent and a new process rejoins under the same
 * rank id. No fd leaks in this process.
 */
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>

#include "boot/boot.h"
#include "store/store.h"
#include "test_store_util.h"

#define TOKEN "join-token"
#define NS "job"
#define MAX_RANKS 16
#define KILL_ROUNDS 20

static vmep_group *const untouched = (vmep_group *)0x7;
static char addr[64];
static struct test_store_host host;
static struct vmep_store_client *obs; /* this process's view, no rank */

static void expect_invalid(int rank, int max_ranks, const char *store,
                           const char *token, const char *needle) {
  vmep_group *g = untouched;
  ASSERT_STATUS(vmep_group_join(rank, max_ranks, store, token, &g),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), needle);
  ASSERT_TRUE(g == untouched);
}

static void test_arguments(void) {
  char long_token[300];
  int fds = test_count_fds();
  memset(long_token, 't', sizeof(long_token) - 1);
  long_token[sizeof(long_token) - 1] = '\0';
  ASSERT_STATUS(vmep_group_join(0, 4, addr, TOKEN, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "vmep_group_join: group_out is NULL");
  expect_invalid(0, 0, addr, TOKEN, "max_ranks 0 is not in 1..1024");
  expect_invalid(0, 1025, addr, TOKEN, "max_ranks 1025 is not in 1..1024");
  expect_invalid(-1, 4, addr, TOKEN, "rank -1 is not in 0..3 (max_ranks 4)");
  expect_invalid(4, 4, addr, TOKEN, "rank 4 is not in 0..3");
  expect_invalid(0, 4, addr, long_token, "token of 299 bytes");
  unsetenv("VMEP_STORE_ADDR");
  expect_invalid(0, 4, NULL, TOKEN,
                 "store_addr is NULL and VMEP_STORE_ADDR is not set");
  expect_invalid(0, 4, "nohost", TOKEN, "nohost");
  setenv("VMEP_LOCAL_RANK", "-1", 1);
  expect_invalid(0, 4, addr, TOKEN, "VMEP_LOCAL_RANK=\"-1\"");
  setenv("VMEP_LOCAL_RANK", "4", 1);
  expect_invalid(0, 4, addr, TOKEN, "VMEP_LOCAL_RANK=\"4\"");
  unsetenv("VMEP_LOCAL_RANK");
  expect_invalid(0, 4, addr, "wrong", "wrong job token");
  /* No store there: the connection times out, naming the address. */
  char nowhere[64];
  vmep_group *g = untouched;
  snprintf(nowhere, sizeof(nowhere), "127.0.0.1:%d", test_free_port());
  setenv("VMEP_TIMEOUT_MS", "300", 1);
  ASSERT_STATUS(vmep_group_join(0, 4, nowhere, TOKEN, &g), VMEP_ERR_TIMEOUT);
  ASSERT_STR_CONTAINS(vmep_last_error(), nowhere);
  ASSERT_TRUE(g == untouched);
  unsetenv("VMEP_TIMEOUT_MS");
  test_expect_fds(fds);
}

/* The job id vmep_group_create would derive from this store address. */
static const char *derived_lookup(const char *name, void *user) {
  (void)user;
  if (strcmp(name, "VMEP_RANK") == 0 || strcmp(name, "VMEP_LOCAL_RANK") == 0)
    return "0";
  if (strcmp(name, "VMEP_WORLD_SIZE") == 0)
    return "1";
  if (strcmp(name, "VMEP_STORE_ADDR") == 0)
    return addr;
  return NULL;
}

static void expect_unsupported(vmep_status status) {
  ASSERT_EQ(status, VMEP_ERR_UNSUPPORTED);
  ASSERT_STR_CONTAINS(vmep_last_error(), "elastic group");
  ASSERT_STR_CONTAINS(vmep_last_error(), "connect/disconnect");
}

static void test_joined_group(void) {
  struct vmep_launch_env env;
  vmep_group *a = NULL, *b = NULL, *twin = untouched, *solo = NULL;
  unsigned char byte = 1, all[MAX_RANKS];
  size_t sizes[MAX_RANKS];
  int fds = test_count_fds();
  ASSERT_OK(vmep__launch_env_parse(derived_lookup, NULL, &env));
  ASSERT_OK(vmep_group_join(1, MAX_RANKS, addr, TOKEN, &a));
  /* Address and token from the environment; a local rank set there. */
  setenv("VMEP_STORE_ADDR", addr, 1);
  setenv("VMEP_JOB_TOKEN", TOKEN, 1);
  setenv("VMEP_LOCAL_RANK", "5", 1);
  ASSERT_OK(vmep_group_join(2, MAX_RANKS, NULL, NULL, &b));
  unsetenv("VMEP_STORE_ADDR");
  unsetenv("VMEP_JOB_TOKEN");
  unsetenv("VMEP_LOCAL_RANK");
  ASSERT_EQ(vmep_group_rank(a), 1);
  ASSERT_EQ(vmep_group_size(a), MAX_RANKS);
  ASSERT_EQ(vmep_group_local_rank(a), 1);
  ASSERT_EQ(vmep_group_local_rank(b), 5);
  for (int r = 0; r < MAX_RANKS; r++)
    ASSERT_EQ(vmep_group_node(a, r), 0);
  ASSERT_EQ(vmep_group_node(a, MAX_RANKS), -1);
  ASSERT_EQ(vmep__group_elastic(a), 1);
  ASSERT_EQ(strcmp(vmep__group_job_id(a), env.job_id), 0);
  ASSERT_EQ(strcmp(vmep__group_job_id(b), env.job_id), 0);
  ASSERT_EQ(strcmp(vmep__group_token(b), TOKEN), 0);
  ASSERT_TRUE(vmep__group_store(a) != NULL);
  /* A rank a live process holds is refused once it stays held for the
   * timeout; nothing stays open. */
  int before = test_count_fds();
  setenv("VMEP_TIMEOUT_MS", "500", 1);
  uint64_t start = test_now_ms();
  ASSERT_STATUS(vmep_group_join(2, MAX_RANKS, addr, TOKEN, &twin),
                VMEP_ERR_INVALID_ARG);
  ASSERT_TRUE(test_now_ms() - start >= 500);
  unsetenv("VMEP_TIMEOUT_MS");
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 2 is already connected");
  ASSERT_STR_CONTAINS(vmep_last_error(), "still so after 500 ms");
  ASSERT_TRUE(twin == untouched);
  test_expect_fds(before);
  /* No collectives. */
  expect_unsupported(vmep_group_allgather(a, &byte, 1, all));
  expect_unsupported(
      vmep_group_allgatherv(a, &byte, 1, all, sizeof(all), sizes));
  expect_unsupported(vmep_group_broadcast(a, 0, &byte, 1));
  expect_unsupported(vmep_group_barrier(b));
  ASSERT_STR_CONTAINS(vmep_last_error(), "vmep_group_barrier");
  /* VMEP_JOB_ID names the job when set. */
  setenv("VMEP_JOB_ID", "elastic-7", 1);
  vmep_group *named = NULL;
  ASSERT_OK(vmep_group_join(3, MAX_RANKS, addr, TOKEN, &named));
  unsetenv("VMEP_JOB_ID");
  ASSERT_EQ(strcmp(vmep__group_job_id(named), "elastic-7"), 0);
  ASSERT_OK(vmep_group_create_custom(0, 1, NULL, NULL, NULL, &solo));
  ASSERT_EQ(vmep__group_elastic(solo), 0);
  ASSERT_OK(vmep_group_destroy(solo));
  ASSERT_OK(vmep_group_destroy(named));
  ASSERT_OK(vmep_group_destroy(a));
  ASSERT_OK(vmep_group_destroy(b));
  test_expect_fds(fds);
}

/* Every rank < MAX_RANKS is alive or left cleanly: no dead key. */
/* Drops the holder's connection without goodbye after 300 ms, as its
 * process's death would. */
static void *drop_later(void *arg) {
  usleep(300000);
  vmep__store_client_close(arg, 0);
  return NULL;
}

/* A rejoin that reaches the store before the store has seen its
 * predecessor's connection close is not refused as "rank taken": the join
 * retries until the rank is free. */
static void test_fast_rejoin(void) {
  struct vmep_store_client *holder = NULL;
  vmep_group *g = NULL;
  pthread_t t;
  int dead = 1;
  ASSERT_OK(vmep__store_client_connect(addr, TOKEN, 6, -1, 5000, &holder));
  ASSERT_EQ(pthread_create(&t, NULL, drop_later, holder), 0);
  setenv("VMEP_TIMEOUT_MS", "10000", 1);
  uint64_t start = test_now_ms();
  ASSERT_OK(vmep_group_join(6, MAX_RANKS, addr, TOKEN, &g));
  uint64_t took = test_now_ms() - start;
  unsetenv("VMEP_TIMEOUT_MS");
  ASSERT_EQ(pthread_join(t, NULL), 0);
  printf("fast rejoin: joined %llu ms after asking\n",
         (unsigned long long)took);
  ASSERT_TRUE(took >= 250 && took < 5000);
  /* The rejoin cleared the death the dropped holder left. */
  ASSERT_OK(vmep__member_is_dead(obs, 6, &dead));
  ASSERT_EQ(dead, 0);
  ASSERT_OK(vmep_group_destroy(g));
}

static void expect_no_deaths(void) {
  unsigned char dead[MAX_RANKS];
  ASSERT_OK(vmep__member_dead(obs, MAX_RANKS, dead));
  for (int r = 0; r < MAX_RANKS; r++)
    if (dead[r])
      TEST_FAIL("rank %d has a dead key after leaving cleanly", r);
}

static void record_of(int rank, int round, char *text, size_t cap) {
  snprintf(text, cap, "rank %d round %d", rank, round);
}

static void expect_record(struct vmep_store_client *c, int rank, int timeout,
                          const char *want) {
  void *rec = NULL;
  size_t len = 0;
  ASSERT_OK(vmep__member_fetch(c, NS, rank, timeout, &rec, &len));
  if (len != strlen(want) || memcmp(rec, want, len) != 0)
    TEST_FAIL("rank %d's record is \"%.*s\", expected \"%s\"", rank, (int)len,
              (const char *)rec, want);
  vmep__free(rec);
}

/* ---- several ranks, then a death among them ---------------------------- */

struct shared {
  _Atomic int joined;
  _Atomic int killed;
};

static struct shared *sh;

/* Joins, publishes, reads every other record, allgathers, leaves. */
static void member_rank(int rank, int size, void *arg) {
  char text[64];
  int ranks[4] = {0, 1, 2, 3};
  uint64_t mine = 100 + (uint64_t)rank, all[4];
  vmep_group *g = NULL;
  (void)arg;
  ASSERT_OK(vmep_group_join(rank, MAX_RANKS, addr, TOKEN, &g));
  struct vmep_store_client *c = vmep__group_store(g);
  record_of(rank, 0, text, sizeof(text));
  ASSERT_OK(vmep__member_publish(c, NS, rank, text, strlen(text)));
  for (int r = 0; r < size; r++) {
    record_of(r, 0, text, sizeof(text));
    expect_record(c, r, 20000, text);
  }
  ASSERT_OK(vmep__member_allgather(c, NS, 1, rank, ranks, size, &mine, 8, all,
                                   20000));
  for (int r = 0; r < size; r++)
    ASSERT_EQ(all[r], 100 + r);
  ASSERT_OK(vmep_group_destroy(g));
}

/* Ranks 0..2 join; 2 is killed; 0 and 1 see it dead, and go on alone. */
static void death_rank(int rank, int size, void *arg) {
  int all3[3] = {0, 1, 2}, pair[2] = {0, 1};
  uint64_t mine = (uint64_t)rank, all[3];
  void *rec = NULL;
  size_t len = 0;
  vmep_group *g = NULL;
  (void)size;
  (void)arg;
  ASSERT_OK(vmep_group_join(rank, MAX_RANKS, addr, TOKEN, &g));
  struct vmep_store_client *c = vmep__group_store(g);
  ASSERT_OK(vmep__member_publish(c, "d", rank, &mine, 8));
  sh->joined++;
  if (rank == 2)
    for (;;)
      pause(); /* until SIGKILL */
  uint64_t give_up = test_now_ms() + 20000;
  while (!sh->killed && test_now_ms() < give_up)
    usleep(1000);
  ASSERT_TRUE(sh->killed);
  uint64_t start = test_now_ms();
  ASSERT_STATUS(vmep__member_fetch(c, "d", 2, 30000, &rec, &len),
                VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 2 died");
  ASSERT_STATUS(
      vmep__member_allgather(c, "d", 1, rank, all3, 3, &mine, 8, all, 30000),
      VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 2 died");
  ASSERT_TRUE(test_now_ms() - start < 5000);
  ASSERT_OK(
      vmep__member_allgather(c, "d", 2, rank, pair, 2, &mine, 8, all, 20000));
  ASSERT_TRUE(all[0] == 0 && all[1] == 1);
  ASSERT_OK(vmep_group_destroy(g));
}

static void test_members_and_death(void) {
  char text[64];
  unsigned char dead[MAX_RANKS];
  ASSERT_EQ(test_run_ranks(4, member_rank, NULL), 0);
  expect_no_deaths(); /* every rank said goodbye */
  for (int r = 0; r < 4; r++) {
    record_of(r, 0, text, sizeof(text));
    expect_record(obs, r, 0, text); /* records outlive a clean leave */
  }
  pid_t pids[3];
  fflush(stdout);
  for (int r = 0; r < 3; r++) {
    pids[r] = fork();
    ASSERT_TRUE(pids[r] >= 0);
    if (pids[r] == 0) {
      death_rank(r, 3, NULL);
      exit(0); /* exit, not _exit: LeakSanitizer checks the rank */
    }
  }
  uint64_t give_up = test_now_ms() + 20000;
  while (sh->joined < 3 && test_now_ms() < give_up)
    usleep(1000);
  ASSERT_EQ(sh->joined, 3);
  ASSERT_EQ(kill(pids[2], SIGKILL), 0);
  int wstatus = 0;
  ASSERT_EQ(waitpid(pids[2], &wstatus, 0), pids[2]);
  ASSERT_TRUE(WIFSIGNALED(wstatus));
  /* Its record stays, so the survivors start once the death is out. */
  memset(dead, 0, sizeof(dead));
  while (!dead[2] && test_now_ms() < give_up) {
    ASSERT_OK(vmep__member_dead(obs, MAX_RANKS, dead));
    usleep(1000);
  }
  for (int r = 0; r < MAX_RANKS; r++)
    ASSERT_EQ(dead[r], r == 2);
  sh->killed = 1;
  for (int r = 0; r < 2; r++) {
    ASSERT_EQ(waitpid(pids[r], &wstatus, 0), pids[r]);
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0)
      TEST_FAIL("survivor rank %d failed", r);
  }
  ASSERT_OK(vmep__member_dead(obs, MAX_RANKS, dead));
  for (int r = 0; r < MAX_RANKS; r++)
    ASSERT_EQ(dead[r], r == 2);
}

/* ---- kills during a join ------------------------------------------------ */

enum kill_point { AFTER_JOIN, AT_RANDOM, AFTER_PUBLISH };

/* The victim: joins, reports 'J', (blocks, or) publishes, reports 'P'. */
static void victim(int rank, int round, int block_after_join, int report) {
  char text[64];
  vmep_group *g = NULL;
  ASSERT_OK(vmep_group_join(rank, MAX_RANKS, addr, TOKEN, &g));
  ASSERT_EQ(write(report, "J", 1), 1);
  if (block_after_join)
    for (;;)
      pause(); /* until SIGKILL */
  record_of(rank, round, text, sizeof(text));
  ASSERT_OK(
      vmep__member_publish(vmep__group_store(g), NS, rank, text, strlen(text)));
  ASSERT_EQ(write(report, "P", 1), 1);
  for (;;)
    pause();
}

/* A new process under the same rank: no dead key once it is in, a new
 * record, a clean leave. */
static void rejoin(int rank, int round) {
  char text[64];
  unsigned char dead[MAX_RANKS];
  vmep_group *g = NULL;
  ASSERT_OK(vmep_group_join(rank, MAX_RANKS, addr, TOKEN, &g));
  struct vmep_store_client *c = vmep__group_store(g);
  ASSERT_OK(vmep__member_dead(c, MAX_RANKS, dead));
  ASSERT_EQ(dead[rank], 0);
  record_of(rank, 1000 + round, text, sizeof(text));
  ASSERT_OK(vmep__member_publish(c, NS, rank, text, strlen(text)));
  expect_record(c, rank, 0, text);
  ASSERT_OK(vmep_group_destroy(g));
}

static pid_t spawn(int rank, int round, int block_after_join, int report) {
  fflush(stdout);
  pid_t pid = fork();
  ASSERT_TRUE(pid >= 0);
  if (pid == 0) {
    if (report >= 0)
      victim(rank, round, block_after_join, report);
    rejoin(rank, round);
    exit(0);
  }
  return pid;
}

/* What the victim reported before it died: 0, 'J' or 'P'. */
static char stage_of(int report) {
  char bytes[4], last = 0;
  ssize_t n;
  while ((n = read(report, bytes, sizeof(bytes))) > 0)
    last = bytes[n - 1];
  return last;
}

static void kill_round(int round, int counts[3]) {
  int rank = 4 + (int)(test_rand() % 8), report[2], wstatus = 0;
  enum kill_point point = (enum kill_point)(round % 3);
  char text[64], byte = 0;
  ASSERT_EQ(pipe(report), 0);
  ASSERT_EQ(fcntl(report[0], F_SETFL, O_NONBLOCK), 0);
  ASSERT_OK(vmep__member_withdraw(obs, NS, rank));
  pid_t pid = spawn(rank, round, point == AFTER_JOIN, report[1]);
  close(report[1]);
  if (point == AT_RANDOM) {
    usleep((useconds_t)(test_rand() % 1500)); /* a join takes ~1 ms */
  } else {
    char want = point == AFTER_JOIN ? 'J' : 'P';
    uint64_t give_up = test_now_ms() + 20000;
    while (!(read(report[0], &byte, 1) == 1 && byte == want) &&
           test_now_ms() < give_up)
      usleep(500);
    ASSERT_EQ(byte, want);
  }
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(wstatus));
  char stage = point == AT_RANDOM    ? stage_of(report[0])
               : point == AFTER_JOIN ? 'J'
                                     : 'P';
  close(report[0]);
  counts[stage == 0 ? 0 : stage == 'J' ? 1 : 2]++;
  /* The store has seen every rank connection close (the victim's too). */
  ASSERT_OK(test_store_host_drain(&host));
  unsigned char dead[MAX_RANKS];
  ASSERT_OK(vmep__member_dead(obs, MAX_RANKS, dead));
  for (int r = 0; r < MAX_RANKS; r++) /* the victim's, if it got in */
    if ((r != rank || stage != 0) && dead[r] != (r == rank))
      TEST_FAIL("round %d (victim rank %d, stage %c): rank %d dead %d", round,
                rank, stage ? stage : '0', r, dead[r]);
  if (stage == 'P') { /* the record it left is there, behind its death */
    char key[64];
    void *rec = NULL;
    size_t len = 0;
    int found = 0;
    snprintf(key, sizeof(key), NS "/member/%d", rank);
    ASSERT_OK(vmep__store_get(obs, key, &found, &rec, &len));
    record_of(rank, round, text, sizeof(text));
    ASSERT_TRUE(found && len == VMEP_MEMBER_HEADER + strlen(text) &&
                !memcmp((char *)rec + VMEP_MEMBER_HEADER, text, strlen(text)));
    vmep__free(rec);
    ASSERT_STATUS(vmep__member_fetch(obs, NS, rank, 0, &rec, &len),
                  VMEP_ERR_PEER);
  }
  pid = spawn(rank, round, 0, -1);
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0)
    TEST_FAIL("round %d: the rejoin of rank %d failed", round, rank);
  expect_no_deaths();
  record_of(rank, 1000 + round, text, sizeof(text));
  expect_record(obs, rank, 0, text);
}

static void test_kill_during_join(void) {
  int counts[3] = {0, 0, 0}, fds = test_count_fds();
  for (int round = 0; round < KILL_ROUNDS; round++)
    kill_round(round, counts);
  printf("kills during join: %d before joining, %d joined, %d published\n",
         counts[0], counts[1], counts[2]);
  ASSERT_TRUE(counts[1] > 0 && counts[2] > 0);
  test_expect_fds(fds);
}

int main(void) {
  test_seed("test_group_join");
  unsetenv("VMEP_JOB_ID");
  unsetenv("VMEP_JOB_TOKEN");
  unsetenv("VMEP_LOCAL_RANK");
  test_store_host_start(&host, TOKEN); /* before any thread */
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", host.port);
  ASSERT_OK(vmep__store_client_connect(addr, TOKEN, -1, -1, 10000, &obs));
  sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_TRUE(sh != MAP_FAILED);
  memset(sh, 0, sizeof(*sh));
  test_arguments();
  test_joined_group();
  expect_no_deaths();
  test_members_and_death();
  /* Rank 2 died above; its rejoin clears it. */
  vmep_group *back = NULL;
  ASSERT_OK(vmep_group_join(2, MAX_RANKS, addr, TOKEN, &back));
  ASSERT_OK(vmep_group_destroy(back));
  expect_no_deaths();
  test_kill_during_join();
  test_fast_rejoin();
  expect_no_deaths();
  munmap(sh, sizeof(*sh));
  vmep__store_client_close(obs, 1);
  test_store_host_stop(&host);
  return 0;
}
