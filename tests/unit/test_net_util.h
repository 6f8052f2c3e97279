/*
 * Helpers of the engine tests (test_net_*): ranks as forked processes, each
 * joined to the parent by a socketpair; the parent relays allgathers of
 * blobs (address, remote keys) and barriers between them. UCX runs over
 * TCP on loopback unless the environment says otherwise, so the tests need
 * no RDMA device.
 */
#ifndef VMEP_TEST_NET_UTIL_H
#define VMEP_TEST_NET_UTIL_H

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "net/net.h"
#include "test.h"

#define NET_MAX_RANKS 8

struct net_job {
  int size;
  pid_t pid[NET_MAX_RANKS];
  int fd[NET_MAX_RANKS];
};

/* UCX over TCP on loopback (unless set already), or skip when UCX is not
 * loadable here. Call before forking. */
static inline void net_test_env(void) {
  setenv("UCX_TLS", "tcp", 0);
  setenv("UCX_NET_DEVICES", "lo", 0);
  setenv("UCX_WARN_UNUSED_ENV_VARS", "n", 0);
  /* UCX's memory hooks (patched mmap / munmap) serve its registration
   * cache, which TCP does not use; without them, sanitizer runs keep their
   * own view of memory. */
  setenv("UCX_MEM_EVENTS", "no", 0);
  struct vmep_engine_info info;
  ASSERT_OK(vmep__engine_probe(&info));
  if (!info.available)
    TEST_SKIP("no inter-node engine: %s", info.reason);
  printf("engine: %s %s\n", info.name, info.version);
  fflush(stdout);
}

static inline void net_write_all(int fd, const void *data, size_t len) {
  const char *p = (const char *)data;
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      TEST_FAIL("write to the relay: %s", strerror(errno));
    p += n;
    len -= (size_t)n;
  }
}

/* 0 on EOF (the other side is gone), 1 when len bytes came. */
static inline int net_read_all(int fd, void *data, size_t len) {
  char *p = (char *)data;
  while (len) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return 0;
    p += n;
    len -= (size_t)n;
  }
  return 1;
}

static inline void net_frame_send(int fd, const void *data, uint32_t len) {
  net_write_all(fd, &len, sizeof(len));
  if (len)
    net_write_all(fd, data, len);
}

/* A frame's bytes (malloc'd, *len_out long), or NULL on EOF. */
static inline void *net_frame_recv(int fd, uint32_t *len_out) {
  uint32_t len = 0;
  if (!net_read_all(fd, &len, sizeof(len)))
    return NULL;
  void *data = malloc(len ? len : 1);
  ASSERT_TRUE(data != NULL);
  if (len && !net_read_all(fd, data, len)) {
    free(data);
    return NULL;
  }
  *len_out = len;
  return data;
}

/* Drives `engine` (when not NULL) until fd is readable: a rank that waits
 * for the relay must keep serving its peers' operations, since transports
 * that emulate RMA (TCP) complete a put only when the target progresses. */
static inline void net_wait_readable(int fd, vmep_engine *engine) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  while (engine && poll(&p, 1, 0) == 0)
    vmep__engine_progress(engine);
}

/* Rank side: gives `mine` and gets every rank's frame (out[r], lens[r];
 * free each), progressing `engine` (may be NULL) while it waits. With mine
 * NULL and len 0 it is a barrier. */
static inline void net_allgather(int fd, int size, vmep_engine *engine,
                                 const void *mine, uint32_t len, void **out,
                                 uint32_t *lens) {
  net_frame_send(fd, mine, len);
  net_wait_readable(fd, engine);
  for (int r = 0; r < size; r++) {
    out[r] = net_frame_recv(fd, &lens[r]);
    if (!out[r])
      TEST_FAIL("the relay closed during an allgather");
  }
}

static inline void net_barrier(int fd, int size, vmep_engine *engine) {
  void *out[NET_MAX_RANKS];
  uint32_t lens[NET_MAX_RANKS];
  net_allgather(fd, size, engine, NULL, 0, out, lens);
  for (int r = 0; r < size; r++)
    free(out[r]);
}

/* Rank side: allgathers the engines' addresses and connects every peer. */
static inline void net_connect_all(vmep_engine *engine, int fd, int rank,
                                   int size) {
  const void *blob = NULL;
  size_t len = 0;
  void *all[NET_MAX_RANKS];
  uint32_t lens[NET_MAX_RANKS];
  ASSERT_OK(vmep__engine_address(engine, &blob, &len));
  net_allgather(fd, size, engine, blob, (uint32_t)len, all, lens);
  for (int r = 0; r < size; r++) {
    if (r != rank)
      ASSERT_OK(vmep__engine_connect(engine, r, all[r], lens[r]));
    free(all[r]);
  }
}

/* Forks `size` ranks running fn(rank, size, fd); their exit status is
 * fn's return value. stdout is flushed first, so no rank repeats it. */
static inline void net_job_start(struct net_job *job, int size,
                                 int (*fn)(int rank, int size, int fd)) {
  ASSERT_TRUE(size >= 1 && size <= NET_MAX_RANKS);
  job->size = size;
  fflush(stdout);
  for (int r = 0; r < size; r++) {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
      close(sv[0]);
      for (int q = 0; q < r; q++)
        close(job->fd[q]);
      exit(fn(r, size, sv[1])); /* exit, not _exit: LeakSanitizer runs */
    }
    close(sv[1]);
    job->pid[r] = pid;
    job->fd[r] = sv[0];
  }
}

/* Parent side: one relay round (a frame from each rank, then every frame
 * to every rank). 0 when some rank closed instead (the job is over). */
static inline int net_relay_round(struct net_job *job) {
  void *frames[NET_MAX_RANKS] = {0};
  uint32_t lens[NET_MAX_RANKS] = {0};
  int ok = 1;
  for (int r = 0; r < job->size && ok; r++)
    ok = (frames[r] = net_frame_recv(job->fd[r], &lens[r])) != NULL;
  for (int r = 0; r < job->size && ok; r++)
    for (int q = 0; q < job->size; q++)
      net_frame_send(job->fd[r], frames[q], lens[q]);
  for (int r = 0; r < job->size; r++)
    free(frames[r]);
  return ok;
}

/* Parent side: closes every rank's socket and waits for each rank not in
 * skip[] (NULL: every rank); returns nonzero, after naming them, when one
 * did not exit 0. */
static inline int net_job_reap(struct net_job *job, const int *skip) {
  int failed = 0;
  for (int r = 0; r < job->size; r++) {
    if (skip && skip[r])
      continue;
    close(job->fd[r]);
    int wstatus = 0;
    ASSERT_EQ(waitpid(job->pid[r], &wstatus, 0), job->pid[r]);
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
      fprintf(stderr, "rank %d: %s %d\n", r,
              WIFEXITED(wstatus) ? "exit status" : "signal",
              WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : WTERMSIG(wstatus));
      failed = 1;
    }
  }
  return failed;
}

/* Parent side: relays until a rank closes, then waits for every rank.
 * Fails the test naming each rank that did not exit 0. */
static inline void net_job_finish(struct net_job *job) {
  while (net_relay_round(job)) {
  }
  if (net_job_reap(job, NULL))
    TEST_FAIL("a rank failed");
}

#endif /* VMEP_TEST_NET_UTIL_H */
