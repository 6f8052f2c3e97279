/*
 * Store sessions and failures: a client that connects before the store is
 * up, one that never finds it (VMEP_ERR_TIMEOUT), reconnecting after a
 * dropped connection (the rank is taken for dead meanwhile and alive
 * again after), a resent mutation applied only once, a process holding a
 * rank SIGKILLed during another client's wait (VMEP_ERR_PEER naming it,
 * promptly), a second client claiming a live rank, a client whose
 * rank-hosted store vanishes, drain waiting for ranks to leave, and store
 * instances: a retired store starts no new session but resumes old ones, a
 * client never resumes on the store that replaced its own, and a process
 * does not start a session on a store it left, only on the next one.
 */
#include <poll.h>
#include <pthread.h>

#include "boot/boot.h"
#include "store/store.h"
#include "test_store_util.h"

#define TOKEN "session-token"

static char addr[64];
static int port;

static struct vmep_store_client *connect_as(int rank) {
  struct vmep_store_client *c = NULL;
  ASSERT_OK(vmep__store_client_connect(addr, TOKEN, rank, -1, 10000, &c));
  return c;
}

static void *start_late(void *arg) {
  struct vmep_store_server **server = arg;
  usleep(300000);
  ASSERT_OK(vmep__store_server_start("127.0.0.1", port, TOKEN, server));
  return NULL;
}

static void test_connect_retry(struct vmep_store_server **server) {
  struct vmep_store_client *c = NULL;
  uint64_t start = test_now_ms();
  ASSERT_STATUS(vmep__store_client_connect(addr, TOKEN, 0, -1, 300, &c),
                VMEP_ERR_TIMEOUT);
  uint64_t took = test_now_ms() - start;
  ASSERT_TRUE(took >= 300 && took < 10000); /* loose: CI may be loaded */
  ASSERT_STR_CONTAINS(vmep_last_error(), addr);
  ASSERT_STR_CONTAINS(vmep_last_error(), "Connection refused");
  ASSERT_TRUE(c == NULL);
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, NULL, start_late, server), 0);
  c = connect_as(0); /* retried until the store came up */
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_OK(vmep__store_set(c, "first", "1", 1));
  vmep__store_client_close(c, 1);
}

struct waiter {
  struct vmep_store_client *c;
  const char *key;
  int timeout_ms;
  vmep_status status;
  uint64_t ended_ms;
  char message[256];
};

static void *wait_thread(void *arg) {
  struct waiter *w = arg;
  w->status = vmep__store_wait(w->c, &w->key, 1, w->timeout_ms);
  w->ended_ms = test_now_ms();
  snprintf(w->message, sizeof(w->message), "%s", vmep_last_error());
  return NULL;
}

static void test_drop_and_reconnect(void) {
  struct vmep_store_client *a = connect_as(5), *b = connect_as(-1);
  /* Dropped without goodbye: rank 5 counts as dead until it is back. */
  vmep__store_client_drop(a);
  usleep(100000);
  ASSERT_STATUS(vmep__store_wait(b, (const char *[]){"never"}, 1, 5000),
                VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(),
                      "rank 5 died (its store connection closed)");
  int64_t v = 0;
  ASSERT_OK(vmep__store_add(a, "ctr", 3, &v)); /* reconnects */
  ASSERT_EQ(v, 3);
  struct waiter w = {b, "set after reconnect", 5000, VMEP_ERR_SYSTEM, 0, ""};
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, NULL, wait_thread, &w), 0);
  usleep(100000);
  ASSERT_OK(vmep__store_set(a, "set after reconnect", "x", 1));
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_EQ(w.status, VMEP_OK);
  vmep__store_client_close(a, 1);
  vmep__store_client_close(b, 1);
}

/* The same mutation sent twice under one session (as a client does after
 * a reconnect) is applied once; a new sequence number applies again. */
static void test_exactly_once(void) {
  struct vmep_store_op hello = {.cmd = VMEP_STORE_HELLO,
                                .rank = -1,
                                .session = test_rand() | 1,
                                .token = TOKEN};
  struct vmep_store_op add = {
      .cmd = VMEP_STORE_ADD, .seq = 41, .key = "once", .delta = 7};
  int64_t expect[3] = {7, 7, 14};
  for (int i = 0; i < 3; i++) {
    struct vmep_store_wbuf w = {0};
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_EQ(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    add.seq = i < 2 ? 41 : 42;
    ASSERT_OK(vmep__store_request_encode(&w, &hello, NULL));
    ASSERT_OK(vmep__store_request_encode(&w, &add, NULL));
    ASSERT_EQ(send(fd, w.data, w.len, 0), (ssize_t)w.len);
    unsigned char buf[64];
    size_t len = 0;
    while (len < 13 + 13) { /* HELLO's answer (OK, instance), ADD's */
      ssize_t n = recv(fd, buf + len, sizeof(buf) - len, 0);
      ASSERT_TRUE(n > 0);
      len += (size_t)n;
    }
    struct vmep_store_reply a;
    const char *error = NULL;
    ASSERT_EQ(
        vmep__store_reply_parse(buf + 13, len - 13, VMEP_STORE_ADD, &a, &error),
        13);
    ASSERT_EQ(a.answer, VMEP_STORE_OK);
    ASSERT_EQ(a.number, expect[i]);
    close(fd); /* no goodbye: the session stays for a reconnect */
    vmep__wbuf_release(&w);
  }
}

static void test_killed_rank(void) {
  struct vmep_store_client *b = connect_as(-1);
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  fflush(stdout);
  pid_t child = fork();
  ASSERT_TRUE(child >= 0);
  if (child == 0) {
    struct vmep_store_client *c = connect_as(3);
    ASSERT_EQ(write(ready[1], "r", 1), 1);
    pause();
    vmep__store_client_close(c, 1);
    _exit(0);
  }
  char byte;
  ASSERT_EQ(read(ready[0], &byte, 1), 1);
  struct waiter w = {b, "never set", 20000, VMEP_OK, 0, ""};
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, NULL, wait_thread, &w), 0);
  usleep(200000); /* the wait is blocked in the store */
  uint64_t killed = test_now_ms();
  ASSERT_EQ(kill(child, SIGKILL), 0);
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_EQ(waitpid(child, NULL, 0), child);
  printf("wait failed %llu ms after the kill: %s\n",
         (unsigned long long)(w.ended_ms - killed), w.message);
  ASSERT_EQ(w.status, VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(w.message, "rank 3 died (its store connection closed)");
  ASSERT_TRUE(w.ended_ms - killed < 5000);
  /* A rank back under a new process revives it. */
  struct vmep_store_client *again = connect_as(3);
  ASSERT_OK(vmep__store_set(again, "never set", "now", 3));
  ASSERT_OK(vmep__store_wait(b, (const char *[]){"never set"}, 1, 1000));
  /* Two live clients may not hold one rank. */
  struct vmep_store_client *twin = NULL;
  ASSERT_STATUS(vmep__store_client_connect(addr, TOKEN, 3, -1, 500, &twin),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 3 is already connected");
  vmep__store_client_close(again, 1);
  vmep__store_client_close(b, 1);
  close(ready[0]);
  close(ready[1]);
}

static void test_drain(struct vmep_store_server *server) {
  struct vmep_store_client *r1 = connect_as(1), *anon = connect_as(-1);
  uint64_t start = test_now_ms();
  ASSERT_STATUS(vmep__store_server_drain(server, 200), VMEP_ERR_TIMEOUT);
  ASSERT_TRUE(test_now_ms() - start >= 200);
  ASSERT_STR_CONTAINS(vmep_last_error(), "1 rank(s) still connected");
  vmep__store_client_close(r1, 1);
  ASSERT_OK(vmep__store_server_drain(server, 5000)); /* anon does not count */
  vmep__store_client_close(anon, 1);
}

/* A client of a store hosted by rank 0 reports rank 0 dead when the store
 * disappears and stays away. */
static void test_host_lost(struct vmep_store_server *server) {
  struct vmep_store_client *c = NULL;
  ASSERT_OK(vmep__store_client_connect(addr, TOKEN, 2, 0, 60000, &c));
  vmep__store_server_stop(server);
  uint64_t start = test_now_ms();
  ASSERT_STATUS(vmep__store_set(c, "k", "v", 1), VMEP_ERR_PEER);
  uint64_t took = test_now_ms() - start;
  printf("store loss reported after %llu ms: %s\n", (unsigned long long)took,
         vmep_last_error());
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 0 died");
  ASSERT_TRUE(took < 5000);
  vmep__store_client_close(c, 1);
}

static void *replace_late(void *arg) {
  struct vmep_store_server **server = arg;
  usleep(300000);
  vmep__store_server_stop(*server);
  ASSERT_OK(vmep__store_server_start("127.0.0.1", port, TOKEN, server));
  return NULL;
}

/* On a port of its own, after the others: vmep__store_left is for good. */
static void test_instances(void) {
  struct vmep_store_server *server = NULL;
  struct vmep_store_client *a = NULL, *b = NULL, *c = NULL;
  port = test_free_port();
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
  ASSERT_OK(vmep__store_server_start("127.0.0.1", port, TOKEN, &server));
  uint64_t first = vmep__store_server_instance(server);
  ASSERT_TRUE(first != 0);
  ASSERT_OK(vmep__store_client_connect(addr, TOKEN, 1, 0, 10000, &a));
  ASSERT_OK(vmep__store_client_connect(addr, TOKEN, 2, 0, 10000, &b));
  ASSERT_TRUE(vmep__store_client_instance(a) == first);
  /* Retired: a new session is turned away (retried until the timeout),
   * a known one resumes, and says goodbye. */
  vmep__store_server_retire(server);
  ASSERT_STATUS(vmep__store_client_connect(addr, TOKEN, 3, 0, 300, &c),
                VMEP_ERR_TIMEOUT);
  ASSERT_STR_CONTAINS(vmep_last_error(), "store is shutting down");
  vmep__store_client_drop(a);
  ASSERT_OK(vmep__store_set(a, "resumed", "1", 1));
  vmep__store_client_close(a, 1);
  ASSERT_STATUS(vmep__store_server_drain(server, 100), VMEP_ERR_TIMEOUT);
  ASSERT_STR_CONTAINS(vmep_last_error(), "1 rank(s)"); /* b is still in */
  /* Replaced: b's reconnect finds another instance, and fails at once. */
  vmep__store_server_stop(server);
  ASSERT_OK(vmep__store_server_start("127.0.0.1", port, TOKEN, &server));
  uint64_t second = vmep__store_server_instance(server);
  ASSERT_TRUE(second != first);
  uint64_t start = test_now_ms();
  ASSERT_STATUS(vmep__store_set(b, "k", "v", 1), VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank 0 died or left");
  ASSERT_STR_CONTAINS(vmep_last_error(), "the store was replaced");
  /* At once: before the 2 s after which a lost host counts as dead. */
  ASSERT_TRUE(test_now_ms() - start < 2000);
  vmep__store_client_close(b, 1);
  ASSERT_OK(vmep__store_server_drain(server, 10000)); /* nobody came in */
  /* Left: this process starts no session on the second instance, and
   * finds the third as soon as it serves. */
  vmep__store_left(second);
  ASSERT_STATUS(vmep__store_client_connect(addr, TOKEN, 3, 0, 300, &c),
                VMEP_ERR_TIMEOUT);
  ASSERT_STR_CONTAINS(vmep_last_error(), "left this store's group");
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, NULL, replace_late, &server), 0);
  ASSERT_OK(vmep__store_client_connect(addr, TOKEN, 3, 0, 10000, &c));
  ASSERT_EQ(pthread_join(t, NULL), 0);
  uint64_t third = vmep__store_server_instance(server);
  ASSERT_TRUE(third != second && vmep__store_client_instance(c) == third);
  vmep__store_client_close(c, 1);
  ASSERT_OK(vmep__store_server_drain(server, 10000));
  vmep__store_server_stop(server);
}

int main(void) {
  struct vmep_store_server *server = NULL;
  test_seed("test_store_session");
  port = test_free_port();
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
  test_connect_retry(&server);
  test_drop_and_reconnect();
  test_exactly_once();
  test_killed_rank();
  test_drain(server);
  test_host_lost(server);
  test_instances();
  return 0;
}
