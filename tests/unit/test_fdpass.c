/*
 * fd passing: one fd plus a payload over socketpairs (message and stream),
 * and the per-rank fd server: a memfd with random content fetched by a
 * forked child (which starts fetching before the server is up), wrong
 * tokens, a foreign uid, malformed requests and unknown keys refused while
 * the server keeps serving, a fetch from a rank with no server timing out
 * with a message naming it, and no fd leaked by any of it.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "boot/boot.h"
#include "test.h"

#define FETCH_TIMEOUT_MS 5000

static char job_id[32];
static char token[40];

static int count_open_fds(void) {
  DIR *dir = opendir("/proc/self/fd");
  int count = 0;
  ASSERT_TRUE(dir != NULL);
  while (readdir(dir))
    count++;
  closedir(dir);
  return count;
}

/* The count once a running server thread has closed the connections it is
 * still finishing: the same for 5 samples 10 ms apart (at most 2 s). */
static int settled_fd_count(void) {
  int last = count_open_fds(), same = 0;
  for (int i = 0; i < 200 && same < 5; i++) {
    usleep(10000);
    int now = count_open_fds();
    same = now == last ? same + 1 : 0;
    last = now;
  }
  return last;
}

static void fill_random(unsigned char *buf, size_t bytes) {
  for (size_t i = 0; i < bytes; i++)
    buf[i] = (unsigned char)test_rand();
}

/* A memfd holding `bytes` random bytes, also copied to *content_out. */
static int random_memfd(size_t bytes, unsigned char **content_out) {
  unsigned char *content = malloc(bytes);
  ASSERT_TRUE(content != NULL);
  fill_random(content, bytes);
  int fd = memfd_create("vmep-test", MFD_CLOEXEC);
  ASSERT_TRUE(fd >= 0);
  ASSERT_EQ(pwrite(fd, content, bytes, 0), (long long)bytes);
  *content_out = content;
  return fd;
}

/* Nonzero when `fd` holds exactly `content`. */
static int fd_holds(int fd, const unsigned char *content, size_t bytes) {
  unsigned char *seen = malloc(bytes + 1);
  ASSERT_TRUE(seen != NULL);
  ssize_t n = pread(fd, seen, bytes + 1, 0);
  int same = n == (ssize_t)bytes && memcmp(seen, content, bytes) == 0;
  free(seen);
  return same;
}

static int64_t elapsed_ms(const struct timespec *since) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)(now.tv_sec - since->tv_sec) * 1000 +
         (now.tv_nsec - since->tv_nsec) / 1000000;
}

/* Over a socketpair of `type`: fd + payload, payload alone, two messages
 * back to back, an oversize payload, a timeout and a closed peer. */
static void test_socketpair(int type, const char *name) {
  int sv[2], fd = -1;
  unsigned char payload[VMEP_FD_PAYLOAD_MAX], got[VMEP_FD_PAYLOAD_MAX];
  unsigned char *content = NULL;
  size_t n = 0, bytes = test_rand() % (VMEP_FD_PAYLOAD_MAX + 1);
  size_t file_bytes = 1 + test_rand() % 65536;
  printf("socketpair %s: %zu B payload, %zu B file\n", name, bytes, file_bytes);
  ASSERT_EQ(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0);
  int memfd = random_memfd(file_bytes, &content);
  fill_random(payload, sizeof(payload));

  ASSERT_OK(vmep__fd_send(sv[0], memfd, payload, bytes, "test peer"));
  ASSERT_OK(vmep__fd_send(sv[0], -1, payload, 3, "test peer"));
  ASSERT_OK(vmep__fd_recv(sv[1], 1000, &fd, got, sizeof(got), &n, "test"));
  ASSERT_EQ(n, bytes);
  ASSERT_EQ(memcmp(got, payload, bytes), 0);
  ASSERT_TRUE(fd >= 0 && fd != memfd);
  ASSERT_TRUE(fd_holds(fd, content, file_bytes));
  /* The same file, not a copy: a write through one shows in the other. */
  ASSERT_EQ(pwrite(fd, "Z", 1, 0), 1);
  content[0] = 'Z';
  ASSERT_TRUE(fd_holds(memfd, content, file_bytes));
  close(fd);
  ASSERT_OK(vmep__fd_recv(sv[1], 1000, &fd, got, sizeof(got), &n, "test"));
  ASSERT_EQ(fd, -1);
  ASSERT_EQ(n, 3);
  ASSERT_EQ(memcmp(got, payload, 3), 0);

  /* Nothing sent: a timeout naming the peer. */
  ASSERT_STATUS(vmep__fd_recv(sv[1], 50, &fd, got, sizeof(got), &n, "peer x"),
                VMEP_ERR_TIMEOUT);
  ASSERT_STR_CONTAINS(vmep_last_error(), "peer x");

  /* Too big for the receiver: refused, and the fd that came is closed.
   * The connection is unusable after that, as documented. */
  int before = count_open_fds();
  ASSERT_OK(vmep__fd_send(sv[0], memfd, payload, 16, "test peer"));
  ASSERT_STATUS(vmep__fd_recv(sv[1], 1000, &fd, got, 8, &n, "test"),
                VMEP_ERR_INVALID_ARG);
  ASSERT_EQ(count_open_fds(), before);
  ASSERT_STATUS(
      vmep__fd_send(sv[0], -1, payload, VMEP_FD_PAYLOAD_MAX + 1, "test peer"),
      VMEP_ERR_INVALID_ARG);
  close(sv[0]);
  close(sv[1]);

  /* The peer closed the connection. */
  ASSERT_EQ(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0);
  close(sv[0]);
  ASSERT_STATUS(vmep__fd_recv(sv[1], 1000, &fd, got, sizeof(got), &n, "test"),
                VMEP_ERR_PEER);
  close(sv[1]);
  close(memfd);
  free(content);
}

/* The child: fetches from `rank` (before the server may be up), checks the
 * content, then writes its mark at offset 1. Exit 0 when all went well. */
static int child_fetch(int rank, uint64_t key, const unsigned char *content,
                       size_t bytes) {
  int fd = -1;
  vmep_status status = VMEP_ERR_INVALID_ARG;
  /* The server may answer between its start and the parent's offer. */
  for (int attempt = 0; attempt < 50 && status == VMEP_ERR_INVALID_ARG;
       attempt++) {
    status = vmep__fd_fetch(job_id, rank, token, key, FETCH_TIMEOUT_MS, &fd);
    if (status == VMEP_ERR_INVALID_ARG)
      usleep(20000);
  }
  if (status != VMEP_OK) {
    fprintf(stderr, "child: fetch: %s (%s)\n", vmep_status_name(status),
            vmep_last_error());
    return 1;
  }
  if (!fd_holds(fd, content, bytes)) {
    fprintf(stderr, "child: fetched fd does not hold the content\n");
    return 1;
  }
  int wrote = pwrite(fd, "C", 1, 1) == 1;
  close(fd);
  return wrote ? 0 : 1;
}

/* A forked child fetches a memfd from the server of `rank`, which starts
 * only after the child has begun trying. */
static void test_fetch_between_processes(int rank) {
  unsigned char *content = NULL;
  struct vmep_fd_server *server = NULL;
  size_t bytes = 1 + test_rand() % (1 << 20);
  uint64_t key = test_rand();
  int memfd = random_memfd(bytes, &content);
  fflush(stdout);
  pid_t pid = fork();
  ASSERT_TRUE(pid >= 0);
  if (pid == 0)
    _exit(child_fetch(rank, key, content, bytes));
  usleep(200000);
  ASSERT_OK(vmep__fd_server_start(job_id, rank, token, &server));
  ASSERT_OK(vmep__fd_server_offer(server, key, memfd));
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  content[1] = 'C';
  ASSERT_TRUE(fd_holds(memfd, content, bytes));
  vmep__fd_server_stop(server);
  close(memfd);
  free(content);
}

/* Sends `bytes` of `request` (and `fd` when >= 0) raw to the server of
 * `rank`; returns the reply code and copies the reason text. */
static int raw_request(int rank, const void *request, size_t bytes, int fd,
                       char *reason, size_t reason_size) {
  struct sockaddr_un addr;
  size_t len = 0;
  unsigned char rep[256];
  size_t n = 0;
  int got_fd = -1;
  ASSERT_OK(vmep__fd_socket_address(job_id, rank, &addr, &len));
  int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  ASSERT_TRUE(sock >= 0);
  ASSERT_EQ(connect(sock, (struct sockaddr *)&addr, (socklen_t)len), 0);
  ASSERT_OK(vmep__fd_send(sock, fd, request, bytes, "server"));
  ASSERT_OK(vmep__fd_recv(sock, FETCH_TIMEOUT_MS, &got_fd, rep, sizeof(rep), &n,
                          "s"));
  close(sock);
  ASSERT_EQ(got_fd, -1);
  ASSERT_TRUE(n >= 1);
  snprintf(reason, reason_size, "%.*s", (int)(n - 1), (const char *)rep + 1);
  return rep[0];
}

/* A well-formed request for `key` with `tok`, in *request; its size. */
static size_t build_request(unsigned char *request, uint64_t key,
                            const char *tok) {
  memcpy(request, VMEP_FD_REQUEST_MAGIC, 4);
  for (int i = 0; i < 8; i++)
    request[4 + i] = (unsigned char)(key >> (8 * i));
  memcpy(request + VMEP_FD_REQUEST_HEADER, tok, strlen(tok));
  return VMEP_FD_REQUEST_HEADER + strlen(tok);
}

/* A child that runs as another uid sends a valid request: the server must
 * refuse it for the uid, and the library client must not even send. */
static void test_foreign_uid(int rank, uint64_t key) {
  if (geteuid() != 0) {
    printf("foreign uid: not root, cannot switch uid: part skipped\n");
    return;
  }
  fflush(stdout);
  pid_t pid = fork();
  ASSERT_TRUE(pid >= 0);
  if (pid == 0) {
    unsigned char request[VMEP_FD_REQUEST_HEADER + VMEP_FD_TOKEN_MAX];
    char reason[256];
    int fd = -1;
    ASSERT_EQ(setuid(65534), 0);
    ASSERT_STATUS(vmep__fd_fetch(job_id, rank, token, key, 1000, &fd),
                  VMEP_ERR_PEER);
    ASSERT_STR_CONTAINS(vmep_last_error(), "uid");
    size_t bytes = build_request(request, key, token);
    ASSERT_EQ(raw_request(rank, request, bytes, -1, reason, sizeof(reason)),
              VMEP_FD_REPLY_REFUSED);
    ASSERT_STR_CONTAINS(reason, "uid 65534");
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
}

/* Withdraw, a second server for the rank, and stop with offers left. */
static void test_withdraw_and_stop(struct vmep_fd_server *server, int rank,
                                   uint64_t key, const unsigned char *content,
                                   size_t bytes) {
  unsigned char *other = NULL;
  int fd = -1;
  /* Withdrawn: no longer served; fds fetched before stay valid. */
  ASSERT_OK(vmep__fd_fetch(job_id, rank, token, key, 1000, &fd));
  ASSERT_OK(vmep__fd_server_withdraw(server, key));
  ASSERT_STATUS(vmep__fd_server_withdraw(server, key), VMEP_ERR_INVALID_ARG);
  int none = -1;
  ASSERT_STATUS(vmep__fd_fetch(job_id, rank, token, key, 1000, &none),
                VMEP_ERR_INVALID_ARG);
  ASSERT_EQ(none, -1);
  ASSERT_TRUE(fd_holds(fd, content, bytes));
  close(fd);

  /* A second server for the same rank cannot start, and leaks nothing. */
  struct vmep_fd_server *twin = NULL;
  /* The server thread may still be closing the refused fetch's connection:
   * count once it has settled. */
  int with_server = settled_fd_count();
  ASSERT_STATUS(vmep__fd_server_start(job_id, rank, token, &twin),
                VMEP_ERR_SYSTEM);
  ASSERT_STR_CONTAINS(vmep_last_error(), "rank");
  ASSERT_TRUE(twin == NULL);
  ASSERT_EQ(settled_fd_count(), with_server);

  /* Offers still open at stop are closed by it. */
  int memfd = random_memfd(16, &other);
  ASSERT_OK(vmep__fd_server_offer(server, key, memfd));
  close(memfd);
  free(other);
  vmep__fd_server_stop(server);
  vmep__fd_server_stop(NULL);
}

/* Refusals of every kind, each followed by a good fetch: the server keeps
 * serving. Runs in-process, so the fd count covers the server's side. */
static void test_refusals(int rank) {
  struct vmep_fd_server *server = NULL;
  unsigned char *content = NULL;
  unsigned char request[VMEP_FD_REQUEST_HEADER + VMEP_FD_TOKEN_MAX];
  char reason[256];
  uint64_t key = test_rand(), unknown = key ^ 1;
  size_t bytes = 1 + test_rand() % 4096;
  int fd = -1;
  int before = count_open_fds();
  int memfd = random_memfd(bytes, &content);
  ASSERT_OK(vmep__fd_server_start(job_id, rank, token, &server));
  ASSERT_OK(vmep__fd_server_offer(server, key, memfd));
  close(memfd); /* the server holds its own duplicate */
  ASSERT_STATUS(vmep__fd_server_offer(server, key, 0), VMEP_ERR_INVALID_ARG);

  ASSERT_STATUS(vmep__fd_fetch(job_id, rank, "wrong-token", key, 1000, &fd),
                VMEP_ERR_PEER);
  ASSERT_STR_CONTAINS(vmep_last_error(), "wrong job token");
  ASSERT_STATUS(vmep__fd_fetch(job_id, rank, "", key, 1000, &fd),
                VMEP_ERR_PEER);
  ASSERT_STATUS(vmep__fd_fetch(job_id, rank, token, unknown, 1000, &fd),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "no fd offered");
  ASSERT_EQ(raw_request(rank, "junk", 4, -1, reason, sizeof(reason)),
            VMEP_FD_REPLY_BAD_REQUEST);
  ASSERT_STR_CONTAINS(reason, "malformed");
  /* A request carrying an fd is malformed; the server closes that fd. */
  size_t req_bytes = build_request(request, key, token);
  ASSERT_EQ(raw_request(rank, request, req_bytes, STDIN_FILENO, reason,
                        sizeof(reason)),
            VMEP_FD_REPLY_BAD_REQUEST);
  test_foreign_uid(rank, key);

  ASSERT_OK(vmep__fd_fetch(job_id, rank, token, key, 1000, &fd));
  ASSERT_TRUE(fd_holds(fd, content, bytes));
  close(fd);
  test_withdraw_and_stop(server, rank, key, content, bytes);
  free(content);
  ASSERT_EQ(count_open_fds(), before);
}

/* No server for the rank: VMEP_ERR_TIMEOUT naming it, after the timeout. */
static void test_timeout(void) {
  struct timespec start;
  int fd = -1;
  int rank = 100 + (int)(test_rand() % 900);
  char needle[32];
  snprintf(needle, sizeof(needle), "rank %d", rank);
  clock_gettime(CLOCK_MONOTONIC, &start);
  ASSERT_STATUS(vmep__fd_fetch(job_id, rank, token, 1, 300, &fd),
                VMEP_ERR_TIMEOUT);
  int64_t waited = elapsed_ms(&start);
  ASSERT_STR_CONTAINS(vmep_last_error(), needle);
  ASSERT_TRUE(waited >= 295 && waited < 3000); /* ms truncation */
  ASSERT_EQ(fd, -1);
}

static void test_bad_arguments(void) {
  struct vmep_fd_server *server = NULL;
  char long_token[VMEP_FD_TOKEN_MAX + 2];
  int fd = -1;
  memset(long_token, 't', sizeof(long_token) - 1);
  long_token[sizeof(long_token) - 1] = '\0';
  ASSERT_STATUS(vmep__fd_server_start("", 0, token, &server),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__fd_server_start(job_id, -1, token, &server),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__fd_server_start(job_id, 0, long_token, &server),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__fd_fetch(job_id, 0, long_token, 1, 10, &fd),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep__fd_fetch(job_id, 0, token, 1, -1, &fd),
                VMEP_ERR_INVALID_ARG);
  ASSERT_TRUE(server == NULL);
}

int main(void) {
  test_seed("test_fdpass");
  /* Unique per run, so concurrent runs never share a socket name. */
  snprintf(job_id, sizeof(job_id), "t%016llx", (unsigned long long)test_rand());
  snprintf(token, sizeof(token), "%016llx%016llx",
           (unsigned long long)test_rand(), (unsigned long long)test_rand());
  signal(SIGPIPE, SIG_IGN);
  int before = count_open_fds();
  test_socketpair(SOCK_SEQPACKET, "seqpacket");
  test_socketpair(SOCK_STREAM, "stream");
  test_fetch_between_processes(1);
  test_refusals(2);
  test_timeout();
  test_bad_arguments();
  ASSERT_EQ(count_open_fds(), before);
  printf("test_fdpass: ok\n");
  return 0;
}
