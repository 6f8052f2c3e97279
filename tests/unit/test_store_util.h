/*
 * Helpers of the store and group tests: a free loopback port, ranks run as
 * forked processes, payloads derived from (seed, rank, round) so that any
 * process can check what any other must have sent, a millisecond clock,
 * open-fd counts, and a store server hosted by a process of its own.
 */
#ifndef VMEP_TEST_STORE_UTIL_H
#define VMEP_TEST_STORE_UTIL_H

#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "boot/boot.h"
#include "store/store.h"
#include "test.h"
#include "test_port.h"

static inline uint64_t test_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* splitmix64 of three words: independent streams per (seed, rank, round). */
static inline uint64_t test_mix(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t z = a * 0x9e3779b97f4a7c15ull ^
               (b + 0x632be59bd9b4e019ull) * 0xbf58476d1ce4e5b9ull ^
               (c + 1) * 0x94d049bb133111ebull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* The bytes of a payload named by `key`. */
static inline unsigned char test_byte(uint64_t key, size_t i) {
  return (unsigned char)(test_mix(key, i / 8, 7) >> (8 * (i % 8)));
}

static inline void test_fill(unsigned char *buf, size_t n, uint64_t key) {
  for (size_t i = 0; i < n; i++)
    buf[i] = test_byte(key, i);
}

/* Fails naming the first byte of buf[0..n) that is not payload `key`'s. */
static inline void test_check(const unsigned char *buf, size_t n, uint64_t key,
                              const char *what) {
  for (size_t i = 0; i < n; i++)
    if (buf[i] != test_byte(key, i))
      TEST_FAIL("%s: byte %zu of %zu is 0x%02x, expected 0x%02x", what, i, n,
                buf[i], test_byte(key, i));
}

/* Open file descriptors of this process. */
static inline int test_count_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  ASSERT_TRUE(d != NULL);
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

/* Waits (at most 5 s) until this process has `want` open fds: a store
 * server in this process closes its side of a connection a moment after
 * the client closes its own. */
static inline void test_expect_fds(int want) {
  uint64_t give_up = test_now_ms() + 5000;
  while (test_count_fds() != want && test_now_ms() < give_up)
    usleep(1000);
  ASSERT_EQ(test_count_fds(), want);
}

/*
 * A store server in a process of its own, so that the test process has no
 * server thread when it forks ranks (a child forked while that thread
 * holds a lock or a fresh allocation can hang or report a false leak).
 * Start it before any thread exists; every command is a byte on a pipe.
 */
struct test_store_host {
  pid_t pid;
  int port;
  int cmd, reply; /* pipe ends: commands to the host, its answers */
};

/* The host's loop: 'd' drains (answering the status), 'q' or EOF stops the
 * server and exits (0: LeakSanitizer checks the host too). */
static inline void test_store_host_serve(const char *token, int cmd,
                                         int reply) {
  struct vmep_store_server *server = NULL;
  char c;
  ASSERT_OK(vmep__store_server_start("127.0.0.1", 0, token, &server));
  int port = vmep__store_server_port(server);
  ASSERT_EQ(write(reply, &port, sizeof(port)), (ssize_t)sizeof(port));
  while (read(cmd, &c, 1) == 1 && c == 'd') {
    signed char status = (signed char)vmep__store_server_drain(server, 5000);
    ASSERT_EQ(write(reply, &status, 1), 1);
  }
  vmep__store_server_stop(server);
  exit(0);
}

static inline void test_store_host_start(struct test_store_host *h,
                                         const char *token) {
  int cmd[2], reply[2];
  ASSERT_EQ(pipe(cmd), 0);
  ASSERT_EQ(pipe(reply), 0);
  fflush(stdout);
  h->pid = fork();
  ASSERT_TRUE(h->pid >= 0);
  if (h->pid == 0) {
    close(cmd[1]);
    close(reply[0]);
    test_store_host_serve(token, cmd[0], reply[1]);
  }
  close(cmd[0]);
  close(reply[1]);
  h->cmd = cmd[1];
  h->reply = reply[0];
  ASSERT_EQ(read(h->reply, &h->port, sizeof(h->port)),
            (ssize_t)sizeof(h->port));
}

/* vmep__store_server_drain(server, 5000) in the host. */
static inline vmep_status test_store_host_drain(struct test_store_host *h) {
  signed char status = 1;
  ASSERT_EQ(write(h->cmd, "d", 1), 1);
  ASSERT_EQ(read(h->reply, &status, 1), 1);
  return (vmep_status)status;
}

/* Stops the server; the host must exit cleanly. */
static inline void test_store_host_stop(struct test_store_host *h) {
  int wstatus = 0;
  ASSERT_EQ(write(h->cmd, "q", 1), 1);
  ASSERT_EQ(waitpid(h->pid, &wstatus, 0), h->pid);
  ASSERT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
  close(h->cmd);
  close(h->reply);
}

typedef void (*test_rank_fn)(int rank, int size, void *arg);

/* Runs fn(rank, size, arg) in `size` forked processes (exit 0 when fn
 * returns) and waits for them all; returns how many failed. A child that
 * fails leaves without closing its store connection, so the others' waits
 * end at once with VMEP_ERR_PEER instead of hanging. */
static inline int test_run_ranks(int size, test_rank_fn fn, void *arg) {
  pid_t pids[64];
  int failed = 0;
  ASSERT_TRUE(size <= 64);
  fflush(stdout);
  for (int r = 0; r < size; r++) {
    pids[r] = fork();
    ASSERT_TRUE(pids[r] >= 0);
    if (pids[r] == 0) {
      fn(r, size, arg);
      fflush(stdout);
      exit(0); /* exit, not _exit: LeakSanitizer checks the rank */
    }
  }
  for (int r = 0; r < size; r++) {
    int wstatus = 0;
    ASSERT_EQ(waitpid(pids[r], &wstatus, 0), pids[r]);
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
      fprintf(stderr, "rank %d: %s %d\n", r,
              WIFEXITED(wstatus) ? "exit" : "signal",
              WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : WTERMSIG(wstatus));
      failed++;
    }
  }
  return failed;
}

#endif /* VMEP_TEST_STORE_UTIL_H */
