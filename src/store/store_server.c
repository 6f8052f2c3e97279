/*
 * The store server: one thread with one poll() loop serving every
 * connection, so that a slow or hostile client never blocks the others.
 * It owns sockets and buffers; what requests mean is in store_serve.c. A
 * connection that breaks the protocol is answered (best effort), logged
 * and closed alone. Rank 0 hosts it inside its process; nothing here
 * depends on that, so a standalone process can host it too.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "store/store.h"

#define MAX_CONNS 4096
#define IN_BUF_MIN 4096

struct conn {
  int fd; /* -1 once closed (removed at the end of the loop turn) */
  struct vmep_store_peer *peer;
  unsigned char *in;
  size_t in_len, in_cap;
  struct vmep_store_wbuf out;
  size_t out_off;
  int pending; /* the peer's GET or WAIT blocks */
  int closing; /* close after this turn's write */
};

struct vmep_store_server {
  int listen_fd, wake_fd, port;
  pthread_t thread;
  struct vmep_store_state *state;
  struct conn **conns; /* [MAX_CONNS] */
  size_t nconns;
  struct pollfd *pfds;  /* [MAX_CONNS + 2] */
  pthread_mutex_t lock; /* guards rank_conns, keys, retire and retired */
  pthread_cond_t changed;
  int rank_conns; /* connections of ranks that have not said BYE */
  size_t keys;
  int retire, retired; /* asked / done by the thread */
  uint64_t instance;   /* the state's, for other threads */
  _Atomic int stop;
};

static void conn_close(struct vmep_store_server *s, struct conn *c) {
  /* Unread input would make close() reset the connection, and the reset
   * can destroy the answer before the client reads it: discard what has
   * arrived (bounded). */
  char sink[4096];
  for (int i = 0; c->closing && i < 256; i++)
    if (recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT) <= 0)
      break;
  vmep__store_peer_close(s->state, c->peer);
  close(c->fd);
  c->fd = -1;
  c->peer = NULL;
}

/* Writes what is queued; on a write error the connection closes. */
static void conn_flush(struct vmep_store_server *s, struct conn *c) {
  while (c->fd >= 0 && c->out_off < c->out.len) {
    ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c->out_off += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      break;
    } else {
      vmep_log_warn("store: send to %s failed: %s",
                    vmep__store_peer_name(c->peer), strerror(errno));
      conn_close(s, c);
      return;
    }
  }
  if (c->out_off == c->out.len) {
    vmep__wbuf_reset(&c->out);
    c->out_off = 0;
  }
  /* A rejected or departing client gets one try to read its answer. */
  if (c->closing && c->fd >= 0)
    conn_close(s, c);
}

/* Whether the connection may take more input now. */
static int conn_ready(const struct conn *c) {
  return c->fd >= 0 && !c->pending && !c->closing && c->out_off == c->out.len;
}

/* Every request gets an answer, unless it waits: when there was no memory
 * to queue one, the connection closes (the client reconnects and resends)
 * instead of leaving the client waiting. */
static int answered(const struct conn *c, int next, size_t queued_before) {
  if (next == VMEP_STORE_PEER_PENDING || c->out.len > queued_before)
    return next;
  vmep_log_warn("store: no memory for an answer to %s; closing it",
                vmep__store_peer_name(c->peer));
  return VMEP_STORE_PEER_CLOSE;
}

/* The key count vmep__store_server_keys reads. */
static void publish_keys(struct vmep_store_server *s) {
  pthread_mutex_lock(&s->lock);
  s->keys = vmep__store_state_keys(s->state);
  pthread_mutex_unlock(&s->lock);
}

/* Handles the complete frames buffered, one at a time, while the client
 * is not blocked in a wait and its answers are not backed up. */
static void conn_process(struct vmep_store_server *s, struct conn *c) {
  while (conn_ready(c) && c->in_len > 0) {
    struct vmep_store_request q;
    const char *error = NULL;
    long n = vmep__store_request_parse(c->in, c->in_len, &q, &error);
    if (n == 0)
      break;
    if (n < 0) {
      vmep_log_warn("store: %s: %s; closing that connection",
                    vmep__store_peer_name(c->peer), error);
      vmep__store_reply_error(&c->out, VMEP_STORE_REJECTED, -1, "%s", error);
      c->closing = 1;
    } else {
      size_t queued = c->out.len;
      int next = vmep__store_peer_request(s->state, c->peer, &q, &c->out);
      next = answered(c, next, queued);
      c->in_len -= (size_t)n;
      memmove(c->in, c->in + n, c->in_len);
      if (c->in_len == 0 && c->in_cap > IN_BUF_MIN) {
        vmep__free(c->in); /* after a big frame */
        c->in = NULL;
        c->in_cap = 0;
      }
      c->pending = next == VMEP_STORE_PEER_PENDING;
      c->closing = next == VMEP_STORE_PEER_CLOSE;
      /* Before the answer leaves: a client that has it reads a count that
       * holds its request and everything before it (one turn may serve
       * several requests of a connection). */
      publish_keys(s);
    }
    conn_flush(s, c);
  }
}

/* Room for more of the frame being received: its length is known once 4
 * bytes are in. Complete frames were consumed before. 0 when no memory. */
static int conn_reserve(struct conn *c) {
  size_t need = IN_BUF_MIN;
  if (c->in_len >= 4)
    need = 4 + (size_t)vmep__le_get(c->in, 4);
  if (need < IN_BUF_MIN)
    need = IN_BUF_MIN;
  if (need <= c->in_len) /* cannot happen: complete frames are consumed */
    need = c->in_len + IN_BUF_MIN;
  if (need <= c->in_cap && c->in_len < c->in_cap)
    return 1;
  unsigned char *grown = vmep__malloc(need);
  if (!grown)
    return 0;
  if (c->in_len)
    memcpy(grown, c->in, c->in_len);
  vmep__free(c->in);
  c->in = grown;
  c->in_cap = need;
  return 1;
}

static void conn_read(struct vmep_store_server *s, struct conn *c) {
  while (conn_ready(c)) {
    if (!conn_reserve(c)) {
      vmep_log_warn("store: no memory for a frame of %s; closing it",
                    vmep__store_peer_name(c->peer));
      conn_close(s, c);
      return;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n > 0) {
      c->in_len += (size_t)n;
      conn_process(s, c);
    } else if (n == 0 || errno == ECONNRESET) { /* closed, or died */
      if (c->in_len > 0)
        vmep_log_warn("store: %s closed its connection in the middle of a "
                      "frame (%zu bytes received)",
                      vmep__store_peer_name(c->peer), c->in_len);
      conn_close(s, c);
    } else if (errno != EINTR) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        vmep_log_warn("store: recv from %s failed: %s",
                      vmep__store_peer_name(c->peer), strerror(errno));
        conn_close(s, c);
      }
      return;
    }
  }
}

static void conn_events(struct vmep_store_server *s, struct conn *c,
                        short revents) {
  if (revents & POLLOUT) {
    conn_flush(s, c);
    conn_process(s, c);
  }
  if (conn_ready(c))
    conn_read(s, c); /* a hang-up shows as a 0-byte read */
  else if (c->fd >= 0 && (revents & (POLLRDHUP | POLLHUP | POLLERR)))
    conn_close(s, c); /* gone while blocked in a wait or not reading */
}

static void accept_clients(struct vmep_store_server *s) {
  for (;;) {
    struct sockaddr_storage addr;
    socklen_t addr_len = sizeof(addr);
    int fd = accept4(s->listen_fd, (struct sockaddr *)&addr, &addr_len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        vmep_log_warn("store: accept failed: %s", strerror(errno));
        usleep(10000); /* out of fds: do not spin on the listener */
      }
      return;
    }
    char host[INET6_ADDRSTRLEN] = "?", port[8] = "?", name[64];
    getnameinfo((struct sockaddr *)&addr, addr_len, host, sizeof(host), port,
                sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV);
    snprintf(name, sizeof(name), "client %s:%s", host, port);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct conn *c = NULL;
    if (s->nconns < MAX_CONNS)
      c = vmep__calloc(1, sizeof(*c));
    if (c)
      c->peer = vmep__store_peer_open(s->state, name);
    if (!c || !c->peer) {
      vmep_log_warn("store: refusing %s: %s", name,
                    c ? "no memory" : "too many connections");
      vmep__free(c);
      close(fd);
      continue;
    }
    c->fd = fd;
    s->conns[s->nconns++] = c;
  }
}

/* Answers waits that can finish; returns the earliest deadline left. */
static uint64_t poll_waits(struct vmep_store_server *s) {
  uint64_t next = UINT64_MAX, now = vmep__now_ms();
  for (size_t i = 0; i < s->nconns; i++) {
    struct conn *c = s->conns[i];
    if (c->fd < 0 || !c->pending)
      continue;
    size_t queued = c->out.len;
    int after = vmep__store_peer_poll(s->state, c->peer, now, &c->out, &next);
    after = answered(c, after, queued);
    if (after != VMEP_STORE_PEER_PENDING) {
      c->pending = 0;
      c->closing = after == VMEP_STORE_PEER_CLOSE;
      conn_flush(s, c);
      conn_process(s, c);
    }
  }
  return next;
}

/* Drops closed connections, publishes the counters drain() reads, and
 * retires the state when asked (before the next request is read). */
static void sweep(struct vmep_store_server *s) {
  size_t kept = 0;
  int ranks = 0;
  for (size_t i = 0; i < s->nconns; i++) {
    struct conn *c = s->conns[i];
    if (c->fd < 0) {
      vmep__free(c->in);
      vmep__wbuf_release(&c->out);
      vmep__free(c);
      continue;
    }
    ranks += vmep__store_peer_rank(c->peer) >= 0;
    s->conns[kept++] = c;
  }
  s->nconns = kept;
  publish_keys(s);
  pthread_mutex_lock(&s->lock);
  if (s->retire && !s->retired) {
    vmep__store_state_retire(s->state);
    s->retired = 1;
    pthread_cond_broadcast(&s->changed);
  }
  if (ranks != s->rank_conns) {
    s->rank_conns = ranks;
    pthread_cond_broadcast(&s->changed);
  }
  pthread_mutex_unlock(&s->lock);
}

/* The poll set: wake fd, listening socket, then every connection. */
static void build_pollset(struct vmep_store_server *s) {
  s->pfds[0] = (struct pollfd){s->wake_fd, POLLIN, 0};
  s->pfds[1] = (struct pollfd){s->listen_fd, POLLIN, 0};
  for (size_t i = 0; i < s->nconns; i++) {
    const struct conn *c = s->conns[i];
    short events = POLLRDHUP;
    if (conn_ready(c))
      events |= POLLIN;
    if (c->out_off < c->out.len)
      events |= POLLOUT;
    s->pfds[i + 2] = (struct pollfd){c->fd, events, 0};
  }
}

static void *serve(void *arg) {
  struct vmep_store_server *s = arg;
  while (!s->stop) {
    uint64_t next = poll_waits(s);
    sweep(s);
    size_t watched = s->nconns;
    build_pollset(s);
    int timeout = next == UINT64_MAX ? -1 : vmep__ms_left(next);
    if (poll(s->pfds, watched + 2, timeout) < 0) {
      if (errno != EINTR)
        vmep_log_warn("store: poll failed: %s", strerror(errno));
      continue;
    }
    if (s->pfds[0].revents) {
      uint64_t count;
      ssize_t n = read(s->wake_fd, &count, sizeof(count));
      (void)n; /* only a wake-up: stop is read above */
    }
    if (s->pfds[1].revents)
      accept_clients(s);
    for (size_t i = 0; i < watched; i++)
      if (s->pfds[i + 2].revents && s->conns[i]->fd >= 0)
        conn_events(s, s->conns[i], s->pfds[i + 2].revents);
  }
  return NULL;
}

/* The sync objects and the thread, with every signal blocked in it (the
 * application's handlers stay on its own threads). */
static vmep_status start_thread(struct vmep_store_server *s) {
  pthread_condattr_t attr;
  sigset_t all, old;
  int err = pthread_condattr_init(&attr);
  if (err == 0) {
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    err = pthread_cond_init(&s->changed, &attr);
    pthread_condattr_destroy(&attr);
  }
  if (err != 0)
    return vmep__fail_errno(err, "store: pthread_cond_init");
  pthread_mutex_init(&s->lock, NULL);
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  err = pthread_create(&s->thread, NULL, serve, s);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err == 0)
    return VMEP_OK;
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->changed);
  return vmep__fail_errno(err, "store: pthread_create");
}

vmep_status vmep__store_server_start(const char *host, int port,
                                     const char *token,
                                     struct vmep_store_server **server_out) {
  if (port < 0 || port > 65535 || !token || !server_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__store_server_start: port %d, token %s, "
                      "server_out %s",
                      port, token ? "set" : "NULL",
                      server_out ? "set" : "NULL");
  struct vmep_store_server *s = vmep__calloc(1, sizeof(*s));
  if (s) {
    s->conns = vmep__calloc(MAX_CONNS, sizeof(*s->conns));
    s->pfds = vmep__calloc(MAX_CONNS + 2, sizeof(*s->pfds));
  }
  vmep_status status = VMEP_OK;
  if (!s || !s->conns || !s->pfds) {
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "store: no memory for the server");
    goto err_free;
  }
  status = vmep__store_state_create(token, &s->state);
  if (status != VMEP_OK)
    goto err_free;
  s->instance = vmep__store_state_instance(s->state);
  status = vmep__tcp_listen(host, port, &s->listen_fd, &s->port);
  if (status != VMEP_OK)
    goto err_state;
  s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s->wake_fd < 0) {
    status = vmep__fail_errno(errno, "store: eventfd");
    goto err_listen;
  }
  status = start_thread(s);
  if (status != VMEP_OK)
    goto err_wake;
  vmep_log_info("store: serving on %s:%d (instance %016llx)", host ? host : "*",
                s->port, (unsigned long long)s->instance);
  *server_out = s;
  return VMEP_OK;
err_wake:
  close(s->wake_fd);
err_listen:
  close(s->listen_fd);
err_state:
  vmep__store_state_destroy(s->state);
err_free:
  if (s) {
    vmep__free(s->pfds);
    vmep__free(s->conns);
  }
  vmep__free(s);
  return status;
}

int vmep__store_server_port(const struct vmep_store_server *s) {
  return s->port;
}

size_t vmep__store_server_keys(struct vmep_store_server *s) {
  pthread_mutex_lock(&s->lock);
  size_t keys = s->keys;
  pthread_mutex_unlock(&s->lock);
  return keys;
}

uint64_t vmep__store_server_instance(const struct vmep_store_server *s) {
  return s->instance;
}

/* The CLOCK_MONOTONIC time timeout_ms from now. */
static struct timespec monotonic_in(int timeout_ms) {
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += timeout_ms / 1000;
  until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  return until;
}

static void wake(struct vmep_store_server *s) {
  uint64_t one = 1;
  ssize_t n = write(s->wake_fd, &one, sizeof(one));
  (void)n; /* an eventfd write only fails when the counter overflows */
}

void vmep__store_server_retire(struct vmep_store_server *s) {
  struct timespec until = monotonic_in(5000); /* the thread never blocks */
  int err = 0;
  pthread_mutex_lock(&s->lock);
  s->retire = 1;
  wake(s);
  while (!s->retired && err != ETIMEDOUT)
    err = pthread_cond_timedwait(&s->changed, &s->lock, &until);
  pthread_mutex_unlock(&s->lock);
}

vmep_status vmep__store_server_drain(struct vmep_store_server *s,
                                     int timeout_ms) {
  struct timespec until = monotonic_in(timeout_ms);
  int err = 0;
  pthread_mutex_lock(&s->lock);
  while (s->rank_conns > 0 && err != ETIMEDOUT)
    err = pthread_cond_timedwait(&s->changed, &s->lock, &until);
  int left = s->rank_conns;
  pthread_mutex_unlock(&s->lock);
  if (left == 0)
    return VMEP_OK;
  return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_WARN,
                    "store: %d rank(s) still connected after waiting %d ms "
                    "for them to leave",
                    left, timeout_ms);
}

void vmep__store_server_stop(struct vmep_store_server *s) {
  if (!s)
    return;
  s->stop = 1;
  wake(s);
  pthread_join(s->thread, NULL);
  for (size_t i = 0; i < s->nconns; i++) {
    struct conn *c = s->conns[i];
    if (c->fd >= 0)
      close(c->fd);
    vmep__store_peer_close(NULL, c->peer); /* the state goes too */
    vmep__free(c->in);
    vmep__wbuf_release(&c->out);
    vmep__free(c);
  }
  vmep__free(s->conns);
  vmep__free(s->pfds);
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->changed);
  close(s->wake_fd);
  close(s->listen_fd);
  vmep__store_state_destroy(s->state);
  vmep__free(s);
}
