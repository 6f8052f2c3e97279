/*
 * Member records keyed by their publisher's store session
 * (vmep__member_fetch_current): a rank replaced twice over is served only
 * its current process's record, never a predecessor's leftover; a rank
 * the store wrongly took for dead (its connection broke while it lived)
 * comes back under its own session, its death cleared, and is served its
 * record as it is; a rank that left cleanly has no current record; and a
 * value without a member header is refused. The store runs in a forked
 * host; clients stand for processes (a close without goodbye is a death).
 */
#include <pthread.h>

#include "boot/boot.h"
#include "store/store.h"
#include "test_store_util.h"

#define TOKEN "member-session"
#define NS "ms"

static struct test_store_host host;
static char addr[64];
static struct vmep_store_client *obs; /* an observer without a rank */

static struct vmep_store_client *connect_as(int rank) {
  struct vmep_store_client *c = NULL;
  ASSERT_OK(vmep__store_client_connect(addr, TOKEN, rank, -1, 5000, &c));
  return c;
}

/* fetch_current of rank must give `text` published under `session`. */
static void expect_current(int rank, int wait_dead, int ms, const char *text,
                           uint64_t session) {
  void *rec = NULL;
  size_t len = 0;
  uint64_t got = 0;
  ASSERT_OK(vmep__member_fetch_current(obs, NS, rank, ms, wait_dead, &rec, &len,
                                       &got));
  ASSERT_EQ(len, strlen(text));
  ASSERT_TRUE(memcmp(rec, text, len) == 0);
  ASSERT_EQ(got, session);
  vmep__free(rec);
}

static void wait_dead_flag(int rank, int want) {
  int dead = !want;
  uint64_t give_up = test_now_ms() + 5000;
  while (dead != want && test_now_ms() < give_up) {
    ASSERT_OK(vmep__member_is_dead(obs, rank, &dead));
    if (dead != want)
      usleep(2000);
  }
  ASSERT_EQ(dead, want);
}

struct successor {
  int rank;
  struct vmep_store_client *c;
};

/* Says hello as the rank after 200 ms, publishes 200 ms later. */
static void *successor_main(void *arg) {
  struct successor *s = arg;
  usleep(200000);
  s->c = connect_as(s->rank);
  usleep(200000);
  ASSERT_OK(vmep__member_publish(s->c, NS, s->rank, "three", 5));
  return NULL;
}

static void test_replaced_twice(void) {
  void *rec = NULL;
  size_t len = 0;
  struct vmep_store_client *p1 = connect_as(2);
  uint64_t s1 = vmep__member_session(p1);
  ASSERT_TRUE(s1 != 0);
  ASSERT_OK(vmep__member_publish(p1, NS, 2, "one", 3));
  expect_current(2, 0, 1000, "one", s1);
  vmep__store_client_close(p1, 0); /* dies */
  wait_dead_flag(2, 1);
  ASSERT_STATUS(
      vmep__member_fetch_current(obs, NS, 2, 100, 0, &rec, &len, NULL),
      VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 2 died");
  /* A successor says hello, clearing the death, and has not published:
   * the plain fetch serves the leftover, the current one waits past it. */
  struct vmep_store_client *p2 = connect_as(2);
  ASSERT_TRUE(vmep__member_session(p2) != s1);
  ASSERT_OK(vmep__member_fetch(obs, NS, 2, 0, &rec, &len));
  ASSERT_TRUE(len == 3 && memcmp(rec, "one", 3) == 0);
  vmep__free(rec);
  ASSERT_STATUS(
      vmep__member_fetch_current(obs, NS, 2, 200, 0, &rec, &len, NULL),
      VMEP_ERR_TIMEOUT);
  ASSERT_STR_CONTAINS(vmep_last_error(), "is still the one of session");
  /* The successor dies too before publishing; a third process takes the
   * rank while the fetch waits through the death. */
  vmep__store_client_close(p2, 0);
  wait_dead_flag(2, 1);
  struct successor s = {2, NULL};
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, NULL, successor_main, &s), 0);
  uint64_t start = test_now_ms();
  void *got = NULL;
  uint64_t session = 0;
  ASSERT_OK(
      vmep__member_fetch_current(obs, NS, 2, 5000, 1, &got, &len, &session));
  uint64_t took = test_now_ms() - start;
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_TRUE(len == 5 && memcmp(got, "three", 5) == 0);
  ASSERT_EQ(session, vmep__member_session(s.c));
  vmep__free(got);
  printf("replaced twice over: the third process's record after %llu ms\n",
         (unsigned long long)took);
  ASSERT_TRUE(took >= 350);
  ASSERT_OK(vmep__member_withdraw(s.c, NS, 2));
  vmep__store_client_close(s.c, 1);
}

static void test_false_death(void) {
  void *rec = NULL;
  size_t len = 0;
  int dead = 1;
  struct vmep_store_client *q = connect_as(5);
  uint64_t session = vmep__member_session(q);
  ASSERT_OK(vmep__member_publish(q, NS, 5, "five", 4));
  vmep__store_client_drop(q); /* the connection breaks; q lives on */
  wait_dead_flag(5, 1);
  ASSERT_STATUS(
      vmep__member_fetch_current(obs, NS, 5, 100, 0, &rec, &len, NULL),
      VMEP_ERR_PEER);
  /* Its next call reconnects under the same session: alive again. */
  ASSERT_OK(vmep__member_is_dead(q, 5, &dead));
  ASSERT_EQ(dead, 0);
  ASSERT_EQ(vmep__member_session(q), session);
  expect_current(5, 0, 1000, "five", session);
  ASSERT_OK(vmep__member_withdraw(q, NS, 5));
  vmep__store_client_close(q, 1);
}

static void test_left_and_malformed(void) {
  void *rec = NULL;
  size_t len = 0;
  struct vmep_store_client *r = connect_as(7);
  ASSERT_OK(vmep__member_publish(r, NS, 7, "seven", 5));
  vmep__store_client_close(r, 1); /* leaves, record left behind */
  ASSERT_OK(vmep__member_fetch(obs, NS, 7, 0, &rec, &len));
  vmep__free(rec);
  ASSERT_STATUS(
      vmep__member_fetch_current(obs, NS, 7, 100, 0, &rec, &len, NULL),
      VMEP_ERR_TIMEOUT);
  ASSERT_STR_CONTAINS(vmep_last_error(), "none connected");
  ASSERT_OK(vmep__store_set(obs, NS "/member/9", "abc", 3));
  ASSERT_STATUS(vmep__member_fetch(obs, NS, 9, 0, &rec, &len), VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(), "malformed (3 bytes");
}

int main(void) {
  test_seed("test_member_session");
  test_store_host_start(&host, TOKEN); /* before any thread */
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", host.port);
  obs = connect_as(-1);
  test_replaced_twice();
  test_false_death();
  test_left_and_malformed();
  vmep__store_client_close(obs, 1);
  test_store_host_stop(&host);
  printf("test_member_session: ok\n");
  return 0;
}
