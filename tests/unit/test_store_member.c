/*
 * The store's side of elastic membership (the store runs in a process of
 * its own, as in an elastic job). Deaths: a rank whose connection
 * closes without goodbye (a SIGKILLed process) is published under
 * "vmep/dead/<r>" with a store-wide serial, a goodbye publishes nothing, a
 * rejoin deletes the key, FORGET stops waits failing and keeps the key,
 * and GETs that do not wait answer whatever ranks died. Records: publish,
 * fetch and withdraw, a fetch that fails for the dead rank it waits for
 * only, and member_dead. Allgathers among rank sets: forked ranks running
 * back-to-back tags with a dead rank outside the set, a rank one round
 * ahead read from its previous contribution, a dead or silent participant,
 * a participant that died after giving its part (no failure),
 * a size mismatch, and bad arguments. No fd stays open.
 */
#include <pthread.h>

#include "boot/boot.h"
#include "store/store.h"
#include "test_store_util.h"

#define TOKEN "member-token"
#define NS "job"
#define ROUNDS 40

static char addr[64];
static unsigned char expect_dead[VMEP_MEMBER_RANKS_MAX];
static uint64_t run_seed;

static struct vmep_store_client *connect_as(int rank) {
  struct vmep_store_client *c = NULL;
  ASSERT_OK(vmep__store_client_connect(addr, TOKEN, rank, -1, 10000, &c));
  return c;
}

/* A process holding `rank` (publishing `record` first, if not NULL) until
 * it is killed; returns once it holds it. */
static pid_t spawn_holder(int rank, const char *record) {
  int ready[2];
  char byte;
  ASSERT_EQ(pipe(ready), 0);
  fflush(stdout);
  pid_t pid = fork();
  ASSERT_TRUE(pid >= 0);
  if (pid == 0) {
    struct vmep_store_client *c = connect_as(rank);
    if (record)
      ASSERT_OK(vmep__member_publish(c, NS, rank, record, strlen(record)));
    ASSERT_EQ(write(ready[1], "r", 1), 1);
    for (;;)
      pause(); /* until SIGKILL */
  }
  ASSERT_EQ(read(ready[0], &byte, 1), 1);
  close(ready[0]);
  close(ready[1]);
  return pid;
}

static void kill_holder(pid_t pid, int rank) {
  int wstatus = 0;
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(wstatus));
  expect_dead[rank] = 1;
}

/* The serial under rank's dead key, 0 when it is absent. */
static uint64_t dead_serial(struct vmep_store_client *c, int rank) {
  char key[VMEP_STORE_DEAD_KEY_BYTES];
  void *value = NULL;
  size_t len = 0;
  int found = 0;
  uint64_t serial = 0;
  vmep__store_dead_key(rank, key);
  ASSERT_OK(vmep__store_get(c, key, &found, &value, &len));
  if (!found)
    return 0;
  ASSERT_EQ(len, 8);
  for (int i = 0; i < 8; i++)
    serial |= (uint64_t)((unsigned char *)value)[i] << (8 * i);
  vmep__free(value);
  ASSERT_TRUE(serial > 0);
  return serial;
}

/* Waits (bounded) until the store has seen rank's connection close. */
static uint64_t await_death(struct vmep_store_client *c, int rank) {
  uint64_t give_up = test_now_ms() + 5000, serial;
  while (!(serial = dead_serial(c, rank)) && test_now_ms() < give_up)
    usleep(1000);
  if (!serial)
    TEST_FAIL("rank %d's death was not published within 5 s", rank);
  return serial;
}

static void test_death_keys(struct vmep_store_client *obs) {
  uint64_t s5, s6;
  kill_holder(spawn_holder(5, NULL), 5);
  s5 = await_death(obs, 5);
  kill_holder(spawn_holder(6, NULL), 6);
  s6 = await_death(obs, 6);
  ASSERT_EQ(s6, s5 + 1); /* one serial per death, store-wide */
  /* A goodbye publishes nothing; a dropped connection does. */
  vmep__store_client_close(connect_as(7), 1);
  struct vmep_store_client *c8 = connect_as(8);
  vmep__store_client_drop(c8);
  ASSERT_EQ(await_death(obs, 8), s6 + 1);
  expect_dead[8] = 1;
  vmep__store_client_close(c8, 0);
  ASSERT_EQ(dead_serial(obs, 7), 0);
  /* A rejoin takes the key away at once, only its own. */
  struct vmep_store_client *c5 = connect_as(5);
  expect_dead[5] = 0;
  ASSERT_EQ(dead_serial(obs, 5), 0);
  ASSERT_EQ(dead_serial(obs, 6), s6);
  vmep__store_client_close(c5, 1);
  ASSERT_EQ(dead_serial(obs, 5), 0);
  /* GETs that do not wait answer while ranks are dead. */
  void *value = NULL;
  size_t len = 0;
  int found = 1;
  ASSERT_OK(vmep__store_get(obs, "absent", &found, &value, &len));
  ASSERT_TRUE(!found && value == NULL);
}

static void test_forget(struct vmep_store_client *obs) {
  const char *never[] = {"never"};
  int was = -1;
  ASSERT_STATUS(vmep__store_wait(obs, never, 1, 5000), VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 6 died");
  ASSERT_OK(vmep__store_forget(obs, 6, &was));
  ASSERT_EQ(was, 1);
  ASSERT_OK(vmep__store_forget(obs, 6, &was)); /* idempotent */
  ASSERT_EQ(was, 0);
  ASSERT_OK(vmep__store_forget(obs, 6, NULL));
  ASSERT_STATUS(vmep__store_wait(obs, never, 1, 5000), VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 8 died");
  /* With the last dead rank forgotten, waits run to their end. */
  ASSERT_OK(vmep__store_forget(obs, 8, &was));
  ASSERT_EQ(was, 1);
  uint64_t start = test_now_ms();
  ASSERT_STATUS(vmep__store_wait(obs, never, 1, 300), VMEP_ERR_TIMEOUT);
  ASSERT_TRUE(test_now_ms() - start >= 300);
  ASSERT_STR_CONTAINS(vmep_last_error(), "never");
  /* The keys stay: the ranks died and nobody rejoined. */
  ASSERT_TRUE(dead_serial(obs, 6) > 0 && dead_serial(obs, 8) > 0);
  ASSERT_OK(vmep__store_forget(obs, 999, &was));
  ASSERT_EQ(was, 0);
  ASSERT_STATUS(vmep__store_forget(obs, -1, &was), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank -1");
}

static void expect_record(struct vmep_store_client *c, int rank, int ms,
                          const char *want) {
  void *rec = NULL;
  size_t len = 0;
  ASSERT_OK(vmep__member_fetch(c, NS, rank, ms, &rec, &len));
  ASSERT_EQ(len, strlen(want));
  ASSERT_TRUE(rec != NULL && memcmp(rec, want, len) == 0);
  vmep__free(rec);
}

static void *publish_later(void *arg) {
  struct vmep_store_client *c = connect_as(4);
  (void)arg;
  usleep(150000);
  ASSERT_OK(vmep__member_publish(c, NS, 4, "four", 4));
  vmep__store_client_close(c, 1);
  return NULL;
}

static void test_records(struct vmep_store_client *obs) {
  void *rec = (void *)0x7;
  size_t len = 7;
  ASSERT_OK(vmep__member_publish(obs, NS, 3, "abc", 3));
  expect_record(obs, 3, 0, "abc");
  ASSERT_OK(vmep__member_publish(obs, NS, 3, NULL, 0));
  expect_record(obs, 3, 0, "");
  ASSERT_OK(vmep__member_withdraw(obs, NS, 3));
  ASSERT_OK(vmep__member_withdraw(obs, NS, 3)); /* absent is OK */
  uint64_t start = test_now_ms();
  ASSERT_STATUS(vmep__member_fetch(obs, NS, 3, 150, &rec, &len),
                VMEP_ERR_TIMEOUT);
  ASSERT_TRUE(test_now_ms() - start >= 150);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 3's record job/member/3");
  ASSERT_TRUE(rec == (void *)0x7 && len == 7);
  /* Ranks 6 and 8 are dead: a fetch of rank 4 waits on regardless. */
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, NULL, publish_later, NULL), 0);
  expect_record(obs, 4, 10000, "four");
  ASSERT_EQ(pthread_join(t, NULL), 0);
  /* A rank that died after publishing: its record is not returned. */
  pid_t holder = spawn_holder(10, "ten");
  expect_record(obs, 10, 0, "ten");
  kill_holder(holder, 10);
  await_death(obs, 10);
  start = test_now_ms();
  ASSERT_STATUS(vmep__member_fetch(obs, NS, 10, 30000, &rec, &len),
                VMEP_ERR_PEER);
  ASSERT_TRUE(test_now_ms() - start < 5000); /* at once, not after 30 s */
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 10 died (vmep/dead/10 is set)");
  ASSERT_STATUS(vmep__member_fetch(obs, NS, 6, 30000, &rec, &len),
                VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 6 died");
  ASSERT_TRUE(rec == (void *)0x7 && len == 7);
  /* Bad arguments. */
  char long_ns[VMEP_STORE_KEY_MAX];
  memset(long_ns, 'n', sizeof(long_ns) - 1);
  long_ns[sizeof(long_ns) - 1] = '\0';
  ASSERT_STATUS(vmep__member_publish(obs, long_ns, 1, "x", 1),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "over the store's limit");
  ASSERT_STATUS(vmep__member_publish(obs, NULL, 1, "x", 1),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "ns is NULL");
  ASSERT_STATUS(vmep__member_publish(obs, NS, 1, NULL, 1),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__member_withdraw(obs, NS, -1), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank -1");
  ASSERT_STATUS(vmep__member_fetch(obs, NS, 1, 0, NULL, &len),
                VMEP_ERR_INVALID_ARG);
}

static void test_member_dead(struct vmep_store_client *obs) {
  static unsigned char dead[VMEP_MEMBER_RANKS_MAX + 1];
  memset(dead, 0x55, sizeof(dead));
  ASSERT_OK(vmep__member_dead(obs, VMEP_MEMBER_RANKS_MAX, dead));
  for (int r = 0; r < VMEP_MEMBER_RANKS_MAX; r++)
    if (dead[r] != expect_dead[r])
      TEST_FAIL("member_dead: rank %d is %d, expected %d", r, dead[r],
                expect_dead[r]);
  ASSERT_EQ(dead[VMEP_MEMBER_RANKS_MAX], 0x55);
  memset(dead, 0x55, sizeof(dead));
  ASSERT_OK(vmep__member_dead(obs, 7, dead));
  ASSERT_EQ(dead[6], 1);
  ASSERT_EQ(dead[5], 0);
  ASSERT_EQ(dead[7], 0x55);
  memset(dead, 0x55, sizeof(dead));
  ASSERT_STATUS(vmep__member_dead(obs, 0, dead), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "max_ranks 0 is not in 1..1024");
  ASSERT_STATUS(vmep__member_dead(obs, 1025, dead), VMEP_ERR_INVALID_ARG);
  ASSERT_EQ(dead[0], 0x55);
}

/* ---- allgathers -------------------------------------------------------- */

static size_t round_bytes(int round) {
  return (size_t)(test_mix(run_seed, (uint64_t)round, 1) % 300);
}

/* Ranks 20..23 run ROUNDS back-to-back allgathers (random pauses shuffle
 * who runs ahead), then 20 and 22 one among themselves. */
static void gather_rank(int index, int size, void *arg) {
  int ranks[4] = {20, 21, 22, 23}, self = ranks[index];
  unsigned char mine[300], all[4 * 300];
  struct vmep_store_client *c = connect_as(self);
  (void)size;
  (void)arg;
  for (int round = 0; round < ROUNDS; round++) {
    size_t bytes = round_bytes(round);
    if (test_mix(run_seed, (uint64_t)self, (uint64_t)round) % 3 == 0)
      usleep(
          (useconds_t)(test_mix(run_seed, (uint64_t)self, 100 + round) % 3000));
    test_fill(mine, bytes,
              test_mix(run_seed ^ (uint64_t)self, (uint64_t)round, 2));
    ASSERT_OK(vmep__member_allgather(c, NS, 1000 + (uint64_t)round, self, ranks,
                                     4, mine, bytes, all, 20000));
    for (int i = 0; i < 4; i++)
      test_check(all + (size_t)i * bytes, bytes,
                 test_mix(run_seed ^ (uint64_t)ranks[i], (uint64_t)round, 2),
                 "member allgather");
  }
  if (self == 20 || self == 22) {
    int pair[2] = {22, 20};
    uint64_t got[2], want = (uint64_t)self * 7;
    ASSERT_OK(vmep__member_allgather(c, "pair", 5, self, pair, 2, &want,
                                     sizeof(want), got, 20000));
    ASSERT_EQ(got[0], 22 * 7);
    ASSERT_EQ(got[1], 20 * 7);
  }
  vmep__store_client_close(c, 1);
}

struct gather_call {
  struct vmep_store_client *c;
  uint64_t tag;
  int self, n;
  const int *ranks;
  size_t bytes;
  uint64_t mine, all[2];
  vmep_status status;
  char message[512];
};

static void *gather_thread(void *arg) {
  struct gather_call *g = arg;
  g->status = vmep__member_allgather(g->c, "t", g->tag, g->self, g->ranks, g->n,
                                     &g->mine, g->bytes, g->all, 10000);
  snprintf(g->message, sizeof(g->message), "%s", vmep_last_error());
  return NULL;
}

/* Rank 31 is still in round 1 when rank 30 has finished it and runs round
 * 2: 31 reads 30's round-1 contribution from the one 30 keeps. */
static void test_round_ahead(void) {
  struct vmep_store_client *a = connect_as(30), *b = connect_as(31);
  int ranks[2] = {30, 31};
  uint64_t mine = 31, all[2];
  pthread_t t;
  /* 31 arrives first and gives up: its round-1 part stays published. */
  ASSERT_STATUS(
      vmep__member_allgather(b, "t", 1, 31, ranks, 2, &mine, 8, all, 100),
      VMEP_ERR_TIMEOUT);
  ASSERT_STR_CONTAINS(vmep_last_error(), "ranks 30 of 2");
  struct gather_call ga = {a, 1, 30, 2, ranks, 8, 30, {0}, VMEP_OK, ""};
  gather_thread(&ga);
  ASSERT_OK(ga.status);
  ASSERT_TRUE(ga.all[0] == 30 && ga.all[1] == 31);
  ga.tag = 2;
  ga.mine = 300;
  ASSERT_EQ(pthread_create(&t, NULL, gather_thread, &ga), 0);
  usleep(100000); /* 30's round 2 is published and waits for 31 */
  ASSERT_OK(
      vmep__member_allgather(b, "t", 1, 31, ranks, 2, &mine, 8, all, 2000));
  ASSERT_TRUE(all[0] == 30 && all[1] == 31);
  mine = 310;
  ASSERT_OK(
      vmep__member_allgather(b, "t", 2, 31, ranks, 2, &mine, 8, all, 5000));
  ASSERT_TRUE(all[0] == 300 && all[1] == 310);
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_OK(ga.status);
  ASSERT_TRUE(ga.all[0] == 300 && ga.all[1] == 310);
  /* Sizes that differ: each side names the other. */
  struct gather_call gs = {a, 3, 30, 2, ranks, 8, 0, {0}, VMEP_OK, ""};
  ASSERT_EQ(pthread_create(&t, NULL, gather_thread, &gs), 0);
  ASSERT_STATUS(
      vmep__member_allgather(b, "t", 3, 31, ranks, 2, &mine, 4, all, 5000),
      VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 30 gave 8 bytes, this rank 4");
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_EQ(gs.status, VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(gs.message, "rank 31 gave 4 bytes, this rank 8");
  vmep__store_client_close(a, 1);
  vmep__store_client_close(b, 1);
}

/* One rank's allgather_fresh of {sequence, value} on another thread. */
struct fresh_call {
  struct vmep_store_client *c;
  int self;
  uint64_t part[2], all[4], seen[2];
  vmep_status status;
};

static void *fresh_thread(void *arg) {
  struct fresh_call *f = arg;
  int ranks[2] = {32, 33};
  f->status = vmep__member_allgather_fresh(f->c, "fresh", 7, f->self, ranks, 2,
                                           f->part, 16, f->all, 5000, f->seen);
  return NULL;
}

/* A tag that comes round again (a membership back to an earlier set). The
 * plain allgather completes on the earlier turn's leftover parts; the
 * fresh one waits past them and takes the new ones. */
static void test_tag_again(void) {
  struct vmep_store_client *a = connect_as(32), *b = connect_as(33);
  int ranks[2] = {32, 33};
  uint64_t mine = 33, all[4];
  pthread_t t;
  /* The hazard: a second turn of tag 5 by 33 alone completes. */
  struct gather_call ga = {a, 5, 32, 2, ranks, 8, 32, {0}, VMEP_OK, ""};
  ASSERT_EQ(pthread_create(&t, NULL, gather_thread, &ga), 0);
  ASSERT_OK(
      vmep__member_allgather(b, "t", 5, 33, ranks, 2, &mine, 8, all, 5000));
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_OK(ga.status);
  ASSERT_OK(
      vmep__member_allgather(b, "t", 5, 33, ranks, 2, &mine, 8, all, 1000));
  /* The fresh one: a first turn with both ... */
  struct fresh_call fa = {a, 32, {1, 320}, {0}, {0, 0}, VMEP_OK};
  struct fresh_call fb = {b, 33, {1, 330}, {0}, {0, 0}, VMEP_OK};
  ASSERT_EQ(pthread_create(&t, NULL, fresh_thread, &fa), 0);
  fresh_thread(&fb);
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_OK(fa.status);
  ASSERT_OK(fb.status);
  ASSERT_TRUE(fb.all[0] == 1 && fb.all[1] == 320 && fb.all[3] == 330);
  ASSERT_TRUE(fb.seen[0] == 1 && fb.seen[1] == 1);
  /* ... then 33 alone: 32's part of the first turn is not taken again. */
  fb.part[0] = 2;
  fb.part[1] = 331;
  ASSERT_STATUS(vmep__member_allgather_fresh(b, "fresh", 7, 33, ranks, 2,
                                             fb.part, 16, fb.all, 300, fb.seen),
                VMEP_ERR_TIMEOUT);
  ASSERT_STR_CONTAINS(vmep_last_error(), "ranks 32 of 2");
  /* 32 comes with a new part: both complete on the new values (every
   * call raises its rank's number, as a caller must). */
  fa.part[0] = 2;
  fa.part[1] = 321;
  fb.part[0] = 3;
  ASSERT_EQ(pthread_create(&t, NULL, fresh_thread, &fa), 0);
  fresh_thread(&fb);
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_OK(fa.status);
  ASSERT_OK(fb.status);
  ASSERT_TRUE(fb.all[0] == 2 && fb.all[1] == 321 && fb.all[3] == 331);
  /* 32 may take 33's part of its timed-out call (number 2, the same value):
   * new to 32, so it counts. */
  ASSERT_TRUE(fa.all[2] >= 2 && fa.all[3] == 331);
  ASSERT_TRUE(fb.seen[0] == 2 && fa.seen[1] == fa.all[2]);
  /* Parts without room for the number, or no seen[]: refused. */
  ASSERT_STATUS(vmep__member_allgather_fresh(b, "fresh", 8, 33, ranks, 2, &mine,
                                             4, all, 100, fb.seen),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__member_allgather_fresh(b, "fresh", 8, 33, ranks, 2,
                                             fb.part, 16, all, 100, NULL),
                VMEP_ERR_INVALID_ARG);
  vmep__store_client_close(a, 1);
  vmep__store_client_close(b, 1);
}

static void test_gather_failures(struct vmep_store_client *obs) {
  int with_dead[2] = {-1, 10}, silent[3] = {-1, 41, 42}, bad[3] = {-1, 3, 3};
  uint64_t mine = 1, all[3];
  struct vmep_store_client *c41 = connect_as(41), *c42 = connect_as(42);
  /* Rank 10 died (test_records): an allgather with it fails at once. */
  uint64_t start = test_now_ms();
  with_dead[0] = 40;
  ASSERT_STATUS(vmep__member_allgather(obs, "f", 1, 40, with_dead, 2, &mine, 8,
                                       all, 30000),
                VMEP_ERR_PEER);
  ASSERT_TRUE(test_now_ms() - start < 5000); /* at once, not after 30 s */
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 10 died");
  /* Rank 10 gave its part (tag 5: the u64 7) before it died: an allgather
   * with it completes, since every part is there. */
  unsigned char part[2 * 12 + 8] = {0}; /* tag, length, data; no previous */
  part[0] = 5;
  part[8] = 8;
  part[12] = 7;
  ASSERT_OK(vmep__store_set(obs, "f/sync/10", part, sizeof(part)));
  ASSERT_OK(vmep__member_allgather(obs, "f", 5, 40, with_dead, 2, &mine, 8, all,
                                   5000));
  ASSERT_EQ(all[0], 1);
  ASSERT_EQ(all[1], 7);
  /* Live but silent participants: a timeout naming both. */
  silent[0] = 40;
  start = test_now_ms();
  ASSERT_STATUS(
      vmep__member_allgather(obs, "f", 2, 40, silent, 3, &mine, 8, all, 300),
      VMEP_ERR_TIMEOUT);
  ASSERT_TRUE(test_now_ms() - start >= 300);
  ASSERT_STR_CONTAINS(vmep_last_error(), "ranks 41, 42 of 3");
  /* A sync record that is not one. */
  int odd[2] = {40, 43};
  ASSERT_OK(vmep__store_set(obs, "f/sync/43", "xx", 2));
  ASSERT_STATUS(
      vmep__member_allgather(obs, "f", 2, 40, odd, 2, &mine, 8, all, 5000),
      VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(),
                      "rank 43's sync record of 2 bytes is malformed");
  /* Bad arguments. */
  ASSERT_STATUS(
      vmep__member_allgather(obs, "f", 3, 40, bad + 1, 2, &mine, 8, all, 100),
      VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 3 is listed twice");
  bad[2] = 4;
  ASSERT_STATUS(
      vmep__member_allgather(obs, "f", 3, 40, bad + 1, 2, &mine, 8, all, 100),
      VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "self (rank 40) is not among");
  ASSERT_STATUS(
      vmep__member_allgather(obs, "f", 3, 40, bad, 3, &mine, 8, all, 100),
      VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "ranks[0] is -1");
  ASSERT_STATUS(
      vmep__member_allgather(obs, "f", 3, 40, silent, 0, &mine, 8, all, 100),
      VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(
      vmep__member_allgather(obs, "f", 3, 40, silent, 1, NULL, 8, all, 100),
      VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "mine or all_out is NULL");
  ASSERT_STATUS(
      vmep__member_allgather(obs, NULL, 3, 40, silent, 1, &mine, 8, all, 100),
      VMEP_ERR_INVALID_ARG);
  /* A group of one needs nobody. */
  ASSERT_OK(
      vmep__member_allgather(obs, "f", 4, 40, silent, 1, &mine, 8, all, 100));
  ASSERT_EQ(all[0], 1);
  vmep__store_client_close(c41, 1);
  vmep__store_client_close(c42, 1);
}

int main(void) {
  struct test_store_host host;
  run_seed = test_seed("test_store_member");
  test_store_host_start(&host, TOKEN);
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", host.port);
  struct vmep_store_client *obs = connect_as(-1);
  int fds = test_count_fds();
  test_death_keys(obs);
  test_forget(obs);
  test_records(obs);
  test_member_dead(obs);
  /* Ranks 6, 8 and 10 are dead: allgathers without them run on. */
  ASSERT_EQ(test_run_ranks(4, gather_rank, NULL), 0);
  test_round_ahead();
  test_tag_again();
  test_gather_failures(obs);
  test_expect_fds(fds);
  vmep__store_client_close(obs, 1);
  test_store_host_stop(&host);
  return 0;
}
