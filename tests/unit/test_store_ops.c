/*
 * Store operations one by one against a server in this process: set, get,
 * add, compare-and-set, delete, waits (present keys, a key set later by
 * another thread, a timeout that names the missing keys), values that need
 * several answer frames, the key and value limits, a wrong token, and
 * allgatherv over the store deleting its old keys as it goes.
 */
#include <pthread.h>

#include "boot/boot.h"
#include "store/store.h"
#include "test_store_util.h"

static char addr[64];

static struct vmep_store_client *connect_as(int rank) {
  struct vmep_store_client *c = NULL;
  ASSERT_OK(vmep__store_client_connect(addr, "tok", rank, -1, 10000, &c));
  return c;
}

static void expect_value(struct vmep_store_client *c, const char *key,
                         const void *want, size_t len) {
  int found = 0;
  void *value = NULL;
  size_t got = 0;
  ASSERT_OK(vmep__store_get(c, key, &found, &value, &got));
  ASSERT_TRUE(found);
  ASSERT_EQ(got, len);
  ASSERT_TRUE(len == 0 || memcmp(value, want, len) == 0);
  vmep__free(value);
}

static void expect_absent(struct vmep_store_client *c, const char *key) {
  int found = 1;
  void *value = (void *)1;
  size_t len = 1;
  ASSERT_OK(vmep__store_get(c, key, &found, &value, &len));
  ASSERT_EQ(found, 0);
  ASSERT_TRUE(value == NULL);
  ASSERT_EQ(len, 0);
}

static void test_set_get_delete(struct vmep_store_client *c) {
  unsigned char value[5000];
  char key[64];
  for (int i = 0; i < 200; i++) {
    size_t n = (size_t)(test_rand() % sizeof(value));
    if (i % 10 == 0)
      n = 0;
    test_fill(value, n, (uint64_t)i);
    snprintf(key, sizeof(key), "k%d", i);
    ASSERT_OK(vmep__store_set(c, key, value, n));
    expect_value(c, key, value, n);
  }
  static char long_key[VMEP_STORE_KEY_MAX + 2];
  memset(long_key, 'x', VMEP_STORE_KEY_MAX);
  ASSERT_OK(vmep__store_set(c, long_key, "v", 1));
  expect_value(c, long_key, "v", 1);
  long_key[VMEP_STORE_KEY_MAX] = 'x';
  ASSERT_STATUS(vmep__store_set(c, long_key, "v", 1), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__store_set(c, "big", value, VMEP_STORE_VALUE_MAX + 1),
                VMEP_ERR_INVALID_ARG);
  int existed = -1;
  ASSERT_OK(vmep__store_delete(c, "k3", &existed));
  ASSERT_EQ(existed, 1);
  ASSERT_OK(vmep__store_delete(c, "k3", &existed));
  ASSERT_EQ(existed, 0);
  expect_absent(c, "k3");
  expect_absent(c, "never set");
}

static void test_add_cas(struct vmep_store_client *c) {
  int64_t v = 0, sum = 0;
  for (int i = 0; i < 50; i++) {
    int64_t delta = (int64_t)(test_rand() % 2001) - 1000;
    sum += delta;
    ASSERT_OK(vmep__store_add(c, "counter", delta, &v));
    ASSERT_EQ(v, sum);
  }
  ASSERT_OK(vmep__store_set(c, "text", "abc", 3));
  ASSERT_STATUS(vmep__store_add(c, "text", 1, &v), VMEP_ERR_SYSTEM);
  ASSERT_STR_CONTAINS(vmep_last_error(), "not a counter");
  int swapped = -1;
  ASSERT_OK(vmep__store_cas(c, "lock", NULL, 0, "me", 2, &swapped));
  ASSERT_EQ(swapped, 1);
  ASSERT_OK(vmep__store_cas(c, "lock", NULL, 0, "you", 3, &swapped));
  ASSERT_EQ(swapped, 0);
  ASSERT_OK(vmep__store_cas(c, "lock", "m", 1, "you", 3, &swapped));
  ASSERT_EQ(swapped, 0);
  expect_value(c, "lock", "me", 2);
  ASSERT_OK(vmep__store_cas(c, "lock", "me", 2, "", 0, &swapped));
  ASSERT_EQ(swapped, 1);
  expect_value(c, "lock", "", 0);
  ASSERT_OK(vmep__store_cas(c, "lock", "", 0, "z", 1, &swapped));
  ASSERT_EQ(swapped, 1);
  expect_value(c, "lock", "z", 1);
}

struct later {
  const char *key;
  int delay_ms;
};

static void *set_later(void *arg) {
  const struct later *l = arg;
  struct vmep_store_client *c = connect_as(-1);
  usleep((useconds_t)l->delay_ms * 1000);
  ASSERT_OK(vmep__store_set(c, l->key, "late", 4));
  vmep__store_client_close(c, 1);
  return NULL;
}

struct collected {
  size_t calls;
  uint64_t keys[8];
  size_t lens[8];
};

static vmep_status collect(void *user, size_t index, const void *value,
                           size_t len) {
  struct collected *got = user;
  ASSERT_EQ(index, got->calls);
  got->lens[index] = len;
  test_check(value, len, got->keys[index], "wait_get value");
  got->calls++;
  return VMEP_OK;
}

static void test_waits(struct vmep_store_client *c) {
  const char *present[] = {"k1", "k2", "counter"};
  ASSERT_OK(vmep__store_wait(c, present, 3, 0));
  /* A key another client sets 150 ms later. The clock starts before the
   * thread does, so the bound holds however the two are scheduled. */
  struct later l = {"late key", 150};
  pthread_t t;
  const char *late[] = {"k1", "late key"};
  uint64_t start = test_now_ms();
  ASSERT_EQ(pthread_create(&t, NULL, set_later, &l), 0);
  ASSERT_OK(vmep__store_wait(c, late, 2, 5000));
  ASSERT_TRUE(test_now_ms() - start >= 149); /* whole ms on both ends */
  ASSERT_EQ(pthread_join(t, NULL), 0);
  /* A timeout names the keys that are missing, and only those. */
  const char *missing[] = {"k1", "absent one", "k2", "absent two"};
  start = test_now_ms();
  ASSERT_STATUS(vmep__store_wait(c, missing, 4, 300), VMEP_ERR_TIMEOUT);
  uint64_t took = test_now_ms() - start;
  printf("a 300 ms wait timed out after %llu ms\n", (unsigned long long)took);
  /* The upper bound is loose: a loaded CI machine delays the answer. */
  ASSERT_TRUE(took >= 290 && took < 20000);
  ASSERT_STR_CONTAINS(vmep_last_error(), "2 of 4 keys: absent one, absent two");
  /* Values that need several answer frames (3 x 3.5 MiB > 8 MiB). */
  struct collected got = {0};
  const char *big[4] = {"big0", "big1", "small", "big2"};
  unsigned char *value = malloc(3670016);
  ASSERT_TRUE(value != NULL);
  for (int i = 0; i < 4; i++) {
    size_t n = i == 2 ? 10 : 3670016;
    got.keys[i] = test_rand();
    test_fill(value, n, got.keys[i]);
    ASSERT_OK(vmep__store_set(c, big[i], value, n));
  }
  free(value);
  ASSERT_OK(vmep__store_wait_get(c, big, 4, 10000, collect, &got));
  ASSERT_EQ(got.calls, 4);
  ASSERT_EQ(got.lens[2], 10);
  ASSERT_EQ(got.lens[3], 3670016);
}

/* The server's key count as of now: it publishes the count before each
 * answer, so once a request (a delete of a key that does not exist) is
 * answered, the count holds everything this process sent before. */
static size_t keys_now(struct vmep_store_server *server,
                       struct vmep_store_client *client) {
  ASSERT_OK(vmep__store_delete(client, "test_store_ops/turn", NULL));
  return vmep__store_server_keys(server);
}

/* allgatherv over the store as a group of one: the store holds at most
 * the keys of two rounds however many rounds run. */
static void test_gather_cleanup(struct vmep_store_server *server) {
  struct vmep_store_gather x = {.client = connect_as(0), .rank = 0, .size = 1};
  size_t before = keys_now(server, x.client), size = 0;
  size_t cap = 3u << 20;
  unsigned char *send = malloc(cap), *recv = malloc(cap);
  ASSERT_TRUE(send && recv);
  for (int round = 0; round < 40; round++) {
    size_t n = round % 5 == 4 ? (size_t)(2.5 * (1 << 20)) : round * 7u;
    test_fill(send, n, (uint64_t)round);
    ASSERT_OK(vmep__store_allgatherv(&x, send, n, recv, cap, &size));
    ASSERT_EQ(size, n);
    test_check(recv, n, (uint64_t)round, "allgatherv of one");
  }
  ASSERT_STATUS(vmep__store_allgatherv(&x, send, 100, recv, 99, &size),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "more than recv_capacity 99");
  size_t after = keys_now(server, x.client);
  printf("store keys: %zu before, %zu after 41 rounds\n", before, after);
  ASSERT_EQ(after, before + 1 + 3); /* rounds 39 (3 parts) and 40 */
  free(send);
  free(recv);
  vmep__store_client_close(x.client, 1);
}

int main(void) {
  test_seed("test_store_ops");
  struct vmep_store_server *server = NULL;
  ASSERT_OK(vmep__store_server_start("127.0.0.1", 0, "tok", &server));
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", vmep__store_server_port(server));
  struct vmep_store_client *c = connect_as(-1), *bad = NULL;
  ASSERT_STATUS(vmep__store_client_connect(addr, "wrong", -1, -1, 10000, &bad),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "wrong job token");
  ASSERT_TRUE(bad == NULL);
  test_set_get_delete(c);
  test_add_cas(c);
  test_waits(c);
  test_gather_cleanup(server);
  vmep__store_client_close(c, 1);
  ASSERT_OK(vmep__store_server_drain(server, 10000));
  vmep__store_server_stop(server);
  vmep__store_server_stop(NULL);
  vmep__store_client_close(NULL, 1);
  return 0;
}
