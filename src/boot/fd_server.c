/*
 * The fd server: a thread per process that hands out offered fds on the
 * abstract Unix socket "\0vmep-<job_id>-<rank>" (protocol in boot.h). A
 * request is answered only when the caller runs as our uid (SO_PEERCRED)
 * and presents the job token (compared in constant time); anything else is
 * refused with a reason and a warning, and the server keeps serving. One
 * client at a time: requests are tiny and local.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "boot/boot.h"

/* How long the server waits for a connected client's request. */
#define REQUEST_TIMEOUT_MS 2000

struct offered_fd {
  uint64_t key;
  int fd;
};

struct vmep_fd_server {
  int rank;
  int listen_fd;
  int wake_fd; /* eventfd: written once to stop the thread */
  pthread_t thread;
  pthread_mutex_t lock; /* guards offers */
  struct offered_fd *offers;
  size_t count, capacity;
  size_t token_len;
  char token[VMEP_FD_TOKEN_MAX + 1];
};

/* Compares in time that depends only on the lengths, not on the bytes. */
static int token_equal(const struct vmep_fd_server *server,
                       const unsigned char *got, size_t got_len) {
  unsigned diff = (unsigned)(server->token_len ^ got_len);
  for (size_t i = 0; i < VMEP_FD_TOKEN_MAX; i++) {
    unsigned char a =
        i < server->token_len ? (unsigned char)server->token[i] : 0;
    unsigned char b = i < got_len ? got[i] : 0;
    diff |= (unsigned)(a ^ b);
  }
  return diff == 0;
}

/* A duplicate of the fd offered under `key`, or -1 with errno set
 * (ENOENT: not offered). */
static int dup_offered(struct vmep_fd_server *server, uint64_t key) {
  int fd = -1;
  errno = ENOENT;
  pthread_mutex_lock(&server->lock);
  for (size_t i = 0; i < server->count; i++)
    if (server->offers[i].key == key)
      fd = fcntl(server->offers[i].fd, F_DUPFD_CLOEXEC, 0);
  pthread_mutex_unlock(&server->lock);
  return fd;
}

/* Sends a reply; the connection is closed right after, so a failure to
 * reach the client is only logged (by vmep__fd_send). */
static void reply(int conn, enum vmep_fd_reply code, int fd, const char *reason,
                  const char *peer) {
  unsigned char buf[256];
  size_t n = strlen(reason);
  if (n > sizeof(buf) - 1)
    n = sizeof(buf) - 1;
  buf[0] = (unsigned char)code;
  memcpy(buf + 1, reason, n);
  vmep__fd_send(conn, fd, buf, n + 1, peer);
}

static void refuse(struct vmep_fd_server *server, int conn,
                   enum vmep_fd_reply code, const char *reason,
                   const struct ucred *cred) {
  vmep_log_warn("fd server of rank %d: refused a request from pid %d (uid "
                "%u): %s",
                server->rank, (int)cred->pid, (unsigned)cred->uid, reason);
  reply(conn, code, -1, reason, "an fd client");
}

/* Answers one request on `conn`. The request is read before any check,
 * so that a refusal reaches the client instead of a connection reset. */
static void serve_one(struct vmep_fd_server *server, int conn) {
  unsigned char req[VMEP_FD_REQUEST_HEADER + VMEP_FD_TOKEN_MAX];
  struct ucred cred = {0, 0, 0};
  socklen_t cred_len = sizeof(cred);
  size_t n = 0;
  int fd = -1;
  char reason[160], text[64];
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) != 0) {
    vmep_log_warn("fd server of rank %d: getsockopt(SO_PEERCRED): %s",
                  server->rank, strerror_r(errno, text, sizeof(text)));
    return;
  }
  if (vmep__fd_recv(conn, REQUEST_TIMEOUT_MS, &fd, req, sizeof(req), &n,
                    "an fd client") != VMEP_OK)
    return;
  int brought_fd = fd >= 0; /* requests carry none: malformed */
  if (brought_fd)
    close(fd);
  if (cred.uid != geteuid()) {
    snprintf(reason, sizeof(reason), "uid %u is not the server's uid %u",
             (unsigned)cred.uid, (unsigned)geteuid());
    refuse(server, conn, VMEP_FD_REPLY_REFUSED, reason, &cred);
  } else if (brought_fd || n < VMEP_FD_REQUEST_HEADER ||
             memcmp(req, VMEP_FD_REQUEST_MAGIC, 4) != 0) {
    refuse(server, conn, VMEP_FD_REPLY_BAD_REQUEST, "malformed request", &cred);
  } else if (!token_equal(server, req + VMEP_FD_REQUEST_HEADER,
                          n - VMEP_FD_REQUEST_HEADER)) {
    refuse(server, conn, VMEP_FD_REPLY_REFUSED, "wrong job token", &cred);
  } else {
    uint64_t key = vmep__le_get(req + 4, 8);
    fd = dup_offered(server, key);
    if (fd >= 0) {
      reply(conn, VMEP_FD_REPLY_OK, fd, "", "an fd client");
      close(fd);
      return;
    }
    if (errno == ENOENT)
      snprintf(reason, sizeof(reason), "no fd offered under key 0x%llx",
               (unsigned long long)key);
    else
      snprintf(reason, sizeof(reason), "duplicating the fd of key 0x%llx: %s",
               (unsigned long long)key, strerror_r(errno, text, sizeof(text)));
    refuse(server, conn, VMEP_FD_REPLY_BAD_REQUEST, reason, &cred);
  }
}

static void *serve(void *arg) {
  struct vmep_fd_server *server = arg;
  struct pollfd p[2] = {{.fd = server->listen_fd, .events = POLLIN},
                        {.fd = server->wake_fd, .events = POLLIN}};
  for (;;) {
    if (poll(p, 2, -1) < 0 && errno != EINTR) {
      vmep_log_error("fd server of rank %d: poll: %s", server->rank,
                     strerror(errno));
      return NULL;
    }
    if (p[1].revents)
      return NULL;
    if (!(p[0].revents & POLLIN))
      continue;
    int conn = accept4(server->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) {
      /* Out of fds, say: back off instead of spinning on the same error. */
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
        usleep(10000);
      continue;
    }
    serve_one(server, conn);
    close(conn);
  }
}

/* A listening socket at the server's abstract address. */
static vmep_status listen_at(const char *job_id, int rank, int *fd_out) {
  struct sockaddr_un addr;
  size_t len = 0;
  vmep_status status = vmep__fd_socket_address(job_id, rank, &addr, &len);
  if (status != VMEP_OK)
    return status;
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return vmep__fail_errno(errno, "socket(AF_UNIX) for the fd server");
  if (bind(fd, (struct sockaddr *)&addr, (socklen_t)len) != 0) {
    status = vmep__fail_errno(errno,
                              "bind(@%s): is another process serving rank %d "
                              "of job %s?",
                              addr.sun_path + 1, rank, job_id);
  } else if (listen(fd, 64) != 0) {
    status = vmep__fail_errno(errno, "listen(@%s)", addr.sun_path + 1);
  }
  if (status != VMEP_OK) {
    close(fd);
    return status;
  }
  *fd_out = fd;
  return VMEP_OK;
}

vmep_status vmep__fd_server_start(const char *job_id, int rank,
                                  const char *token,
                                  struct vmep_fd_server **server_out) {
  if (!server_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__fd_server_start: server_out is NULL");
  vmep_status status = vmep__fd_token_check(token);
  if (status != VMEP_OK)
    return status;
  struct vmep_fd_server *server = vmep__calloc(1, sizeof(*server));
  if (!server)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "fd server of rank %d: out of host memory", rank);
  server->rank = rank;
  server->wake_fd = -1;
  snprintf(server->token, sizeof(server->token), "%s", token ? token : "");
  server->token_len = strlen(server->token);
  status = listen_at(job_id, rank, &server->listen_fd);
  if (status != VMEP_OK)
    goto err_free;
  server->wake_fd = eventfd(0, EFD_CLOEXEC);
  if (server->wake_fd < 0) {
    status =
        vmep__fail_errno(errno, "eventfd for the fd server of rank %d", rank);
    goto err_close;
  }
  pthread_mutex_init(&server->lock, NULL);
  int rc = pthread_create(&server->thread, NULL, serve, server);
  if (rc != 0) {
    status = vmep__fail_errno(rc, "pthread_create(fd server of rank %d)", rank);
    pthread_mutex_destroy(&server->lock);
    goto err_close;
  }
  *server_out = server;
  return VMEP_OK;
err_close:
  if (server->wake_fd >= 0)
    close(server->wake_fd);
  close(server->listen_fd);
err_free:
  vmep__free(server);
  return status;
}

/* Room for one more offer; the caller holds the lock. */
static vmep_status reserve_offer(struct vmep_fd_server *server) {
  if (server->count < server->capacity)
    return VMEP_OK;
  size_t capacity = server->capacity ? 2 * server->capacity : 8;
  struct offered_fd *grown = vmep__malloc(capacity * sizeof(*grown));
  if (!grown)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "fd server of rank %d: out of host memory for %zu "
                      "offers",
                      server->rank, capacity);
  if (server->count)
    memcpy(grown, server->offers, server->count * sizeof(*grown));
  vmep__free(server->offers);
  server->offers = grown;
  server->capacity = capacity;
  return VMEP_OK;
}

vmep_status vmep__fd_server_offer(struct vmep_fd_server *server, uint64_t key,
                                  int fd) {
  vmep_status status = VMEP_OK;
  if (!server || fd < 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__fd_server_offer: %s",
                      server ? "fd is negative" : "server is NULL");
  pthread_mutex_lock(&server->lock);
  for (size_t i = 0; i < server->count; i++)
    if (server->offers[i].key == key) {
      status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                          "fd server of rank %d: key 0x%llx already offered",
                          server->rank, (unsigned long long)key);
      goto out_unlock;
    }
  status = reserve_offer(server);
  if (status != VMEP_OK)
    goto out_unlock;
  int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) {
    status = vmep__fail_errno(errno, "fcntl(F_DUPFD_CLOEXEC, fd %d)", fd);
    goto out_unlock;
  }
  server->offers[server->count++] = (struct offered_fd){key, dup};
out_unlock:
  pthread_mutex_unlock(&server->lock);
  return status;
}

vmep_status vmep__fd_server_withdraw(struct vmep_fd_server *server,
                                     uint64_t key) {
  if (!server)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__fd_server_withdraw: server is NULL");
  pthread_mutex_lock(&server->lock);
  for (size_t i = 0; i < server->count; i++) {
    if (server->offers[i].key != key)
      continue;
    close(server->offers[i].fd);
    server->offers[i] = server->offers[--server->count];
    pthread_mutex_unlock(&server->lock);
    return VMEP_OK;
  }
  pthread_mutex_unlock(&server->lock);
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "fd server of rank %d: no fd offered under key 0x%llx",
                    server->rank, (unsigned long long)key);
}

void vmep__fd_server_stop(struct vmep_fd_server *server) {
  uint64_t one = 1;
  if (!server)
    return;
  /* An eventfd write of 1 cannot fail short of a counter overflow. */
  ssize_t written = write(server->wake_fd, &one, sizeof(one));
  (void)written;
  pthread_join(server->thread, NULL);
  close(server->wake_fd);
  close(server->listen_fd);
  for (size_t i = 0; i < server->count; i++)
    close(server->offers[i].fd);
  vmep__free(server->offers);
  pthread_mutex_destroy(&server->lock);
  vmep__free(server);
}
