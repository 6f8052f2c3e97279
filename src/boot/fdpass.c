/*
 * Passing file descriptors between processes of one node: one fd plus a
 * small payload per message with SCM_RIGHTS (used directly over a
 * socketpair, and by the fd server in fd_server.c), the server's abstract
 * socket address, and the client that fetches an offered fd from another
 * rank's server. pidfd_getfd is not used: it needs ptrace rights that
 * containers usually deny.
 *
 * Message: u32 little-endian payload length, then the payload, one sendmsg.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "boot/boot.h"

#define FRAME_HEADER 4

/* ---- one message with an optional fd --------------------------------- */

vmep_status vmep__fd_send(int sock, int fd, const void *payload, size_t bytes,
                          const char *peer) {
  unsigned char frame[FRAME_HEADER + VMEP_FD_PAYLOAD_MAX];
  union {
    struct cmsghdr align;
    char bytes[CMSG_SPACE(sizeof(int))];
  } control;
  if (bytes > VMEP_FD_PAYLOAD_MAX || (bytes && !payload))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "fd send to %s: payload of %zu B (at most %d)", peer,
                      bytes, VMEP_FD_PAYLOAD_MAX);
  vmep__le_put(frame, bytes, 4);
  if (bytes)
    memcpy(frame + FRAME_HEADER, payload, bytes);
  struct iovec iov = {frame, FRAME_HEADER + bytes};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    memset(&control, 0, sizeof(control));
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof(control.bytes);
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  }
  ssize_t sent;
  do
    sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
  while (sent < 0 && errno == EINTR);
  if (sent < 0)
    return vmep__fail_errno(errno, "sendmsg(fd %d to %s)", fd, peer);
  if ((size_t)sent != iov.iov_len) /* a stream socket may take part */
    return vmep__fail(VMEP_ERR_SYSTEM, VMEP_LOG_ERROR,
                      "sendmsg(fd %d to %s): sent %zd of %zu B", fd, peer, sent,
                      iov.iov_len);
  return VMEP_OK;
}

/* Waits until `sock` is readable or the deadline passes (none when
 * timeout_ms < 0). */
static vmep_status wait_readable(int sock, uint64_t deadline, const char *peer,
                                 int timeout_ms) {
  for (;;) {
    int wait = timeout_ms < 0 ? -1 : vmep__ms_left(deadline);
    struct pollfd p = {.fd = sock, .events = POLLIN};
    int n = poll(&p, 1, wait);
    if (n > 0)
      return VMEP_OK;
    if (n == 0)
      return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR,
                        "fd receive from %s: nothing within %d ms", peer,
                        timeout_ms);
    if (errno != EINTR)
      return vmep__fail_errno(errno, "poll(fd receive from %s)", peer);
  }
}

/* Closes every fd an SCM_RIGHTS message brought; returns the first, or -1,
 * in *fd_out and how many came. */
static int take_fds(struct msghdr *msg, int *fd_out) {
  int count = 0;
  *fd_out = -1;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
      continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (count++ == 0)
        *fd_out = fd;
      else
        close(fd);
    }
  }
  return count;
}

/* Reads the rest of a frame that a stream socket split. */
static vmep_status read_rest(int sock, unsigned char *frame, size_t have,
                             size_t want, uint64_t deadline, int timeout_ms,
                             const char *peer) {
  while (have < want) {
    vmep_status status = wait_readable(sock, deadline, peer, timeout_ms);
    if (status != VMEP_OK)
      return status;
    ssize_t n = recv(sock, frame + have, want - have, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return vmep__fail_errno(errno, "recv(fd message from %s)", peer);
    if (n == 0)
      return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                        "fd receive from %s: connection closed mid-message",
                        peer);
    have += (size_t)n;
  }
  return VMEP_OK;
}

/* One recvmsg of up to `size` bytes into `frame`; any fd in *fd_out. At
 * most one fd is accepted, and nothing truncated. */
static vmep_status recv_first(int sock, unsigned char *frame, size_t size,
                              size_t *got_out, int *fd_out, const char *peer) {
  union {
    struct cmsghdr align;
    char bytes[CMSG_SPACE(4 * sizeof(int))];
  } control;
  struct iovec iov = {frame, size};
  struct msghdr msg = {.msg_iov = &iov,
                       .msg_iovlen = 1,
                       .msg_control = control.bytes,
                       .msg_controllen = sizeof(control.bytes)};
  ssize_t n;
  do
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno == ECONNRESET)
    return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                      "fd receive from %s: connection reset", peer);
  if (n < 0)
    return vmep__fail_errno(errno, "recvmsg(fd message from %s)", peer);
  int fds = take_fds(&msg, fd_out);
  if (n == 0 && fds == 0)
    return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                      "fd receive from %s: connection closed", peer);
  if (fds > 1 || (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC))) {
    if (*fd_out >= 0)
      close(*fd_out);
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "fd receive from %s: malformed message (%zd B, %d fds, "
                      "truncated: %s)",
                      peer, n, fds,
                      (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) ? "yes"
                                                                 : "no");
  }
  *got_out = (size_t)n;
  return VMEP_OK;
}

static vmep_status malformed(const char *peer, size_t got) {
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "fd receive from %s: malformed message (%zu B)", peer, got);
}

/* The frame after its first `got` bytes: on a stream socket the rest is
 * read; on a message socket the first read must have brought all of it. */
static vmep_status recv_frame_rest(int sock, int stream, unsigned char *frame,
                                   size_t got, size_t capacity,
                                   uint64_t deadline, int timeout_ms,
                                   size_t *bytes_out, const char *peer) {
  vmep_status status = VMEP_OK;
  if (stream)
    status =
        read_rest(sock, frame, got, FRAME_HEADER, deadline, timeout_ms, peer);
  else if (got < FRAME_HEADER)
    status = malformed(peer, got);
  if (status != VMEP_OK)
    return status;
  size_t bytes = (size_t)vmep__le_get(frame, 4);
  size_t limit =
      capacity < VMEP_FD_PAYLOAD_MAX ? capacity : VMEP_FD_PAYLOAD_MAX;
  if (bytes > limit)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "fd receive from %s: payload of %zu B exceeds %zu B",
                      peer, bytes, limit);
  if (stream)
    status = read_rest(sock, frame, FRAME_HEADER, FRAME_HEADER + bytes,
                       deadline, timeout_ms, peer);
  else if (got != FRAME_HEADER + bytes)
    status = malformed(peer, got);
  if (status == VMEP_OK)
    *bytes_out = bytes;
  return status;
}

vmep_status vmep__fd_recv(int sock, int timeout_ms, int *fd_out, void *payload,
                          size_t capacity, size_t *bytes_out,
                          const char *peer) {
  unsigned char frame[FRAME_HEADER + VMEP_FD_PAYLOAD_MAX];
  uint64_t deadline =
      timeout_ms >= 0 ? vmep__now_ms() + (uint64_t)timeout_ms : 0;
  size_t got = 0, bytes = 0;
  int fd = -1, type = 0;
  socklen_t type_len = sizeof(type);
  if (!fd_out || !bytes_out || (capacity && !payload))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__fd_recv: an output pointer is NULL");
  if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0)
    return vmep__fail_errno(errno, "getsockopt(SO_TYPE, fd receive from %s)",
                            peer);
  /* On a stream, read only the header first: the next message may follow. */
  int stream = type == SOCK_STREAM;
  vmep_status status = wait_readable(sock, deadline, peer, timeout_ms);
  if (status == VMEP_OK)
    status = recv_first(sock, frame, stream ? FRAME_HEADER : sizeof(frame),
                        &got, &fd, peer);
  if (status != VMEP_OK)
    return status;
  status = recv_frame_rest(sock, stream, frame, got, capacity, deadline,
                           timeout_ms, &bytes, peer);
  if (status != VMEP_OK) {
    if (fd >= 0)
      close(fd);
    return status;
  }
  if (bytes)
    memcpy(payload, frame + FRAME_HEADER, bytes);
  *bytes_out = bytes;
  *fd_out = fd;
  return VMEP_OK;
}

/* ---- the server's address --------------------------------------------- */

vmep_status vmep__fd_socket_address(const char *job_id, int rank,
                                    struct sockaddr_un *addr, size_t *len_out) {
  if (!job_id || !job_id[0] || strlen(job_id) > VMEP_JOB_ID_MAX || rank < 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "fd passing: job id \"%s\" (1..%d characters) or rank "
                      "%d (>= 0) invalid",
                      job_id ? job_id : "(null)", VMEP_JOB_ID_MAX, rank);
  memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  /* sun_path[0] stays 0: the abstract namespace, no file to clean up. */
  int n = snprintf(addr->sun_path + 1, sizeof(addr->sun_path) - 1, "vmep-%s-%d",
                   job_id, rank);
  *len_out = offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n;
  return VMEP_OK;
}

vmep_status vmep__fd_token_check(const char *token) {
  if (token && strlen(token) > VMEP_FD_TOKEN_MAX)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "fd passing: job token of %zu characters (at most %d)",
                      strlen(token), VMEP_FD_TOKEN_MAX);
  return VMEP_OK;
}

/* ---- the client ------------------------------------------------------- */

/* Connects to the fd server of `rank`, retrying while nobody listens. */
static vmep_status connect_server(const char *job_id, int rank,
                                  uint64_t deadline, int timeout_ms,
                                  int *sock_out) {
  struct sockaddr_un addr;
  size_t len = 0;
  vmep_status status = vmep__fd_socket_address(job_id, rank, &addr, &len);
  if (status != VMEP_OK)
    return status;
  for (int pause_ms = 1;; pause_ms = pause_ms < 32 ? 2 * pause_ms : 50) {
    int sock =
        socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (sock < 0)
      return vmep__fail_errno(errno, "socket(AF_UNIX) to fetch from rank %d",
                              rank);
    if (connect(sock, (struct sockaddr *)&addr, (socklen_t)len) == 0) {
      /* Blocking from here: every later wait is a poll with a deadline. */
      if (fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) & ~O_NONBLOCK) != 0) {
        status = vmep__fail_errno(errno, "fcntl(O_NONBLOCK off)");
        close(sock);
        return status;
      }
      *sock_out = sock;
      return VMEP_OK;
    }
    int err = errno;
    close(sock);
    /* Not listening yet (ECONNREFUSED) or a full backlog (EAGAIN). */
    if (err != ECONNREFUSED && err != EAGAIN && err != EINTR)
      return vmep__fail_errno(err, "connect(@%s, fd server of rank %d)",
                              addr.sun_path + 1, rank);
    int left = vmep__ms_left(deadline);
    if (left <= 0)
      return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR,
                        "fd fetch from rank %d: its fd server (@%s) did not "
                        "answer within %d ms (rank %d not started, or dead?)",
                        rank, addr.sun_path + 1, timeout_ms, rank);
    if (pause_ms > left)
      pause_ms = left;
    struct timespec pause = {(time_t)(pause_ms / 1000),
                             (long)(pause_ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
  }
}

/* The token goes only to a server of our own uid. */
static vmep_status check_server_uid(int sock, int rank) {
  struct ucred cred = {0, 0, 0};
  socklen_t len = sizeof(cred);
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return vmep__fail_errno(errno,
                            "getsockopt(SO_PEERCRED, fd server of "
                            "rank %d)",
                            rank);
  if (cred.uid != geteuid())
    return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                      "fd fetch from rank %d: its socket is served by pid %d "
                      "of uid %u, not by our uid %u: not sending the job "
                      "token",
                      rank, (int)cred.pid, (unsigned)cred.uid,
                      (unsigned)geteuid());
  return VMEP_OK;
}

/* Turns a reply into the fetched fd or the server's reason. */
static vmep_status read_reply(int rank, const unsigned char *rep, size_t n,
                              int fd, int *fd_out) {
  if (n >= 1 && rep[0] == VMEP_FD_REPLY_OK && fd >= 0) {
    *fd_out = fd;
    return VMEP_OK;
  }
  if (fd >= 0)
    close(fd);
  int reason_len = n > 1 ? (int)(n - 1) : 0;
  const char *reason = (const char *)rep + 1;
  if (n >= 1 && rep[0] == VMEP_FD_REPLY_REFUSED)
    return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                      "fd fetch from rank %d refused: %.*s", rank, reason_len,
                      reason);
  if (n >= 1 && rep[0] == VMEP_FD_REPLY_BAD_REQUEST)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "fd fetch from rank %d refused: %.*s", rank, reason_len,
                      reason);
  return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                    "fd fetch from rank %d: malformed reply (%zu B, %s fd)",
                    rank, n, fd >= 0 ? "with" : "without");
}

vmep_status vmep__fd_fetch(const char *job_id, int rank, const char *token,
                           uint64_t key, int timeout_ms, int *fd_out) {
  unsigned char req[VMEP_FD_REQUEST_HEADER + VMEP_FD_TOKEN_MAX];
  unsigned char rep[256];
  char peer[32];
  size_t n = 0;
  int sock = -1, fd = -1;
  if (!fd_out || timeout_ms < 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__fd_fetch: %s",
                      fd_out ? "negative timeout" : "fd_out is NULL");
  vmep_status status = vmep__fd_token_check(token);
  if (status != VMEP_OK)
    return status;
  uint64_t deadline = vmep__now_ms() + (uint64_t)timeout_ms;
  status = connect_server(job_id, rank, deadline, timeout_ms, &sock);
  if (status != VMEP_OK)
    return status;
  status = check_server_uid(sock, rank);
  size_t token_len = token ? strlen(token) : 0;
  memcpy(req, VMEP_FD_REQUEST_MAGIC, 4);
  vmep__le_put(req + 4, key, 8);
  if (token_len)
    memcpy(req + VMEP_FD_REQUEST_HEADER, token, token_len);
  snprintf(peer, sizeof(peer), "rank %d", rank);
  if (status == VMEP_OK)
    status =
        vmep__fd_send(sock, -1, req, VMEP_FD_REQUEST_HEADER + token_len, peer);
  if (status == VMEP_OK)
    status = vmep__fd_recv(sock, vmep__ms_left(deadline), &fd, rep, sizeof(rep),
                           &n, peer);
  close(sock);
  if (status != VMEP_OK)
    return status;
  return read_reply(rank, rep, n, fd, fd_out);
}
