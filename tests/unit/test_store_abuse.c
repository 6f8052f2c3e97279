/*
 * Bad input against a live store while three worker processes run
 * allgathers through it: random bytes, oversize lengths, a wrong token,
 * unknown commands, requests before HELLO, a second HELLO, a rank that is
 * already connected, a HELLO of protocol version 2, one avoiding too many
 * store instances, an oversize key and value, half a frame then close, and
 * connections that go silent. Each bad connection must be answered
 * REJECTED (where a frame was complete) and closed; the store must keep
 * serving a fresh client after each one, and the workers must finish with
 * every byte right.
 */
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/mman.h>

#include "boot/boot.h"
#include "store/store.h"
#include "test_store_util.h"

#define WORKERS 3
#define MIN_ROUNDS 50
#define TOKEN "abuse-token"

static char addr[64];
static int port;
/* Shared with the workers: whether the abuse is over, and worker 0's
 * rounds so far. */
static struct shared {
  _Atomic int abuse_done;
  _Atomic int rounds;
} * sh;

/* ---- the workers --------------------------------------------------- */

static void worker(int rank, int size, void *arg) {
  const uint64_t seed = *(const uint64_t *)arg;
  struct vmep_store_gather x = {.rank = rank, .size = size};
  unsigned char send[2048], recv[2048 * WORKERS];
  size_t sizes[WORKERS];
  ASSERT_OK(
      vmep__store_client_connect(addr, TOKEN, rank, -1, 20000, &x.client));
  for (int round = 0;; round++) {
    /* Byte 0 says "stop after this round": all ranks see the same. */
    size_t n = 1 + (size_t)(test_mix(seed, rank, round) % 2047);
    test_fill(send, n, test_mix(seed, rank, round));
    send[0] = round >= MIN_ROUNDS && sh->abuse_done;
    ASSERT_OK(vmep__store_allgatherv(&x, send, n, recv, sizeof(recv), sizes));
    int stop = 0;
    size_t off = 0;
    for (int r = 0; r < size; r++) {
      uint64_t key = test_mix(seed, r, round);
      ASSERT_EQ(sizes[r], 1 + key % 2047);
      stop |= recv[off];
      for (size_t i = 1; i < sizes[r]; i++)
        if (recv[off + i] != test_byte(key, i))
          TEST_FAIL("round %d, rank %d's byte %zu is wrong", round, r, i);
      off += sizes[r];
    }
    if (rank == 0)
      sh->rounds = round + 1;
    if (stop)
      break;
  }
  vmep__store_client_close(x.client, 1);
}

/* ---- raw connections ------------------------------------------------ */

static int raw_connect(void) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_TRUE(fd >= 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  return fd;
}

static void send_raw(int fd, const void *buf, size_t n) {
  size_t off = 0;
  while (off < n) {
    ssize_t k = send(fd, (const char *)buf + off, n - off, MSG_NOSIGNAL);
    if (k < 0)
      return; /* the store may have closed already: that is allowed */
    off += (size_t)k;
  }
}

static void send_op(int fd, const struct vmep_store_op *op) {
  struct vmep_store_wbuf w = {0};
  ASSERT_OK(vmep__store_request_encode(&w, op, NULL));
  send_raw(fd, w.data, w.len);
  vmep__wbuf_release(&w);
}

static void hello(int fd, const char *token, int rank) {
  struct vmep_store_op op = {.cmd = VMEP_STORE_HELLO,
                             .rank = rank,
                             .session = test_rand() | 1,
                             .token = token};
  unsigned char buf[64];
  send_op(fd, &op);
  /* OK and the store's u64 instance. */
  ASSERT_TRUE(recv(fd, buf, sizeof(buf), 0) == 13 && buf[4] == 0);
}

/* Reads until the store closes (within 5 s): first a REJECTED answer
 * containing `needle` (NULL: any text) must come. */
static void expect_answer_closed(int fd, unsigned answer, const char *needle) {
  unsigned char buf[4096];
  size_t len = 0;
  uint64_t deadline = test_now_ms() + 5000;
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, (int)(deadline - test_now_ms())), 1);
    ssize_t n = recv(fd, buf + len, sizeof(buf) - len, 0);
    if (n <= 0)
      break;
    len += (size_t)n;
  }
  struct vmep_store_reply a;
  const char *error = NULL;
  ASSERT_TRUE(len > 0); /* the answer came before the close */
  ASSERT_EQ(vmep__store_reply_parse(buf, len, VMEP_STORE_SET, &a, &error),
            (long)len);
  ASSERT_EQ(a.answer, answer);
  char text[VMEP_STORE_MESSAGE_MAX + 1];
  snprintf(text, sizeof(text), "%.*s", (int)a.message.len,
           (const char *)a.message.data);
  if (needle)
    ASSERT_STR_CONTAINS(text, needle);
  close(fd);
}

static void expect_closed(int fd, const char *needle) {
  expect_answer_closed(fd, VMEP_STORE_REJECTED, needle);
}

/* A fresh client still gets served. */
static void expect_alive(void) {
  struct vmep_store_client *c = NULL;
  int found = 0;
  void *value = NULL;
  size_t len = 0;
  ASSERT_OK(vmep__store_client_connect(addr, TOKEN, -1, -1, 5000, &c));
  ASSERT_OK(vmep__store_set(c, "alive", "yes", 3));
  ASSERT_OK(vmep__store_get(c, "alive", &found, &value, &len));
  ASSERT_TRUE(found && len == 3 && memcmp(value, "yes", 3) == 0);
  vmep__free(value);
  vmep__store_client_close(c, 1);
}

/* ---- the bad inputs ------------------------------------------------- */

static void frame_with_length(uint32_t declared, const void *body, size_t n,
                              const char *needle) {
  int fd = raw_connect();
  unsigned char prefix[4];
  for (int i = 0; i < 4; i++)
    prefix[i] = (unsigned char)(declared >> (8 * i));
  send_raw(fd, prefix, 4);
  send_raw(fd, body, n);
  expect_closed(fd, needle);
}

static void random_frames(int count) {
  unsigned char body[2000];
  for (int i = 0; i < count; i++) {
    size_t n = 1 + (size_t)(test_rand() % sizeof(body));
    test_fill(body, n, test_rand());
    if (i % 2)
      body[0] = (unsigned char)(1 + test_rand() % 8); /* a known command */
    frame_with_length((uint32_t)n, body, n, NULL);
  }
}

static void bad_requests(void) {
  unsigned char unknown[9] = {0x63};
  frame_with_length(0xffffffffu, NULL, 0, "over the limit");
  frame_with_length(VMEP_STORE_FRAME_MAX + 1, unknown, 9, "over the limit");
  frame_with_length(0, NULL, 0, "empty frame");
  frame_with_length(9, unknown, 9, "unknown command");
  /* Requests that parse but break the session rules. */
  struct vmep_store_op set = {.cmd = VMEP_STORE_SET, .key = "k"};
  int fd = raw_connect();
  send_op(fd, &set);
  expect_closed(fd, "before HELLO");
  struct vmep_store_op wrong = {.cmd = VMEP_STORE_HELLO,
                                .rank = -1,
                                .session = 5,
                                .token = "not the token"};
  fd = raw_connect();
  send_op(fd, &wrong);
  expect_closed(fd, "wrong job token");
  fd = raw_connect();
  hello(fd, TOKEN, -1);
  wrong.token = TOKEN;
  send_op(fd, &wrong);
  expect_closed(fd, "second HELLO");
  fd = raw_connect();
  hello(fd, TOKEN, -1);
  frame_with_length(9, unknown, 9, "unknown command"); /* on another */
  send_raw(fd, "\x09\0\0\0\x63\0\0\0\0\0\0\0\0", 13);
  expect_closed(fd, "unknown command");
  struct vmep_store_op dup = {
      .cmd = VMEP_STORE_HELLO, .rank = 1, .session = 99, .token = TOKEN};
  fd = raw_connect();
  send_op(fd, &dup);
  /* Answered TAKEN, which clients retry: the holder may have just died. */
  expect_answer_closed(fd, VMEP_STORE_TAKEN, "already connected");
  /* Version 2's HELLO (no instance fields): the store names the versions. */
  unsigned char v2[9 + 4 + 4 + 8 + 4 + sizeof(TOKEN) - 1] = {
      VMEP_STORE_HELLO, [9] = 2, [13] = 0xff, 0xff, 0xff, 0xff};
  v2[25] = sizeof(TOKEN) - 1;
  memcpy(v2 + 29, TOKEN, sizeof(TOKEN) - 1);
  frame_with_length(sizeof(v2), v2, sizeof(v2), "protocol version 2");
  /* A HELLO avoiding one instance more than the limit. */
  unsigned char many[9 + 4 + 4 + 8 + 8 + 4] = {VMEP_STORE_HELLO};
  many[9] = VMEP_STORE_PROTOCOL_VERSION;
  memset(many + 13, 0xff, 4); /* rank -1 */
  many[33] = VMEP_STORE_AVOID_MAX + 1;
  frame_with_length(sizeof(many), many, sizeof(many),
                    "more store instances to avoid");
}

/* A key and a value one byte over their limits, by hand (the encoder
 * refuses them); the value's whole frame travels. */
static void oversize_fields(void) {
  unsigned char del[9 + 4 + VMEP_STORE_KEY_MAX + 1] = {VMEP_STORE_DELETE};
  del[9] = (VMEP_STORE_KEY_MAX + 1) & 0xff;
  del[10] = (VMEP_STORE_KEY_MAX + 1) >> 8;
  int fd = raw_connect();
  hello(fd, TOKEN, -1);
  unsigned char prefix[4] = {sizeof(del) & 0xff, sizeof(del) >> 8, 0, 0};
  send_raw(fd, prefix, 4);
  send_raw(fd, del, sizeof(del));
  expect_closed(fd, "key over the limit");
  size_t n = 9 + 4 + 1 + 4 + VMEP_STORE_VALUE_MAX + 1;
  unsigned char *frame = calloc(1, n);
  ASSERT_TRUE(frame != NULL);
  frame[0] = VMEP_STORE_SET;
  frame[9] = 1;
  frame[13] = 'k';
  for (int i = 0; i < 4; i++) {
    frame[14 + i] = (unsigned char)((VMEP_STORE_VALUE_MAX + 1) >> (8 * i));
    prefix[i] = (unsigned char)(n >> (8 * i));
  }
  fd = raw_connect();
  hello(fd, TOKEN, -1);
  send_raw(fd, prefix, 4);
  send_raw(fd, frame, n);
  expect_closed(fd, "value over the limit");
  free(frame);
}

/* Half a frame, then close; and connections that stay silent. */
static void half_frames(int *silent, int nsilent) {
  unsigned char part[100] = {VMEP_STORE_SET};
  unsigned char prefix[4] = {0xe8, 0x03, 0, 0}; /* 1000 bytes announced */
  for (int i = 0; i < 20; i++) {
    int fd = raw_connect();
    if (i % 2)
      hello(fd, TOKEN, -1);
    send_raw(fd, prefix, 4);
    send_raw(fd, part, (size_t)(test_rand() % sizeof(part)));
    close(fd);
  }
  for (int i = 0; i < nsilent; i++) {
    silent[i] = raw_connect();
    if (i % 2)
      send_raw(silent[i], prefix, 3);
  }
}

int main(void) {
  uint64_t seed = test_seed("test_store_abuse");
  int silent[4];
  port = test_free_port();
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
  sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_TRUE(sh != MAP_FAILED);
  memset(sh, 0, sizeof(*sh));
  fflush(stdout);
  pid_t runner = fork(); /* the workers, forked before the server thread */
  ASSERT_TRUE(runner >= 0);
  if (runner == 0)
    exit(test_run_ranks(WORKERS, worker, &seed));
  struct vmep_store_server *server = NULL;
  ASSERT_OK(vmep__store_server_start("127.0.0.1", port, TOKEN, &server));
  uint64_t deadline = test_now_ms() + 20000;
  while (sh->rounds < 3 && test_now_ms() < deadline)
    usleep(1000);
  int rounds_before = sh->rounds;
  ASSERT_TRUE(rounds_before >= 3);
  half_frames(silent, 4);
  expect_alive();
  random_frames(300);
  expect_alive();
  bad_requests();
  oversize_fields();
  expect_alive();
  int rounds_during = sh->rounds - rounds_before;
  printf("the workers ran %d allgather rounds during the abuse\n",
         rounds_during);
  ASSERT_TRUE(rounds_during > 0);
  sh->abuse_done = 1;
  int wstatus = 0;
  ASSERT_EQ(waitpid(runner, &wstatus, 0), runner);
  ASSERT_TRUE(WIFEXITED(wstatus));
  ASSERT_EQ(WEXITSTATUS(wstatus), 0);
  for (int i = 0; i < 4; i++)
    close(silent[i]);
  vmep__store_server_stop(server);
  return 0;
}
