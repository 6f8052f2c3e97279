/*
 * The store client: one TCP connection to the store, one request at a
 * time. It retries the connection until the store is up (rank 0 may start
 * it after the others try), and when a connection breaks it reconnects,
 * says HELLO again under the same session and resends the request; the
 * session and sequence number let the store answer a resent mutation from
 * its cache instead of applying it twice. It keeps to the store instance it
 * first reached: a store that replaced it at the address has none of its
 * keys, so a reconnect there fails the call instead.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "store/store.h"

/* How long a reply may lag behind the end of the wait it answers. */
#define REPLY_SLACK_MS 5000
/* A client of a store hosted by a rank gives up this long after losing
 * its connection if the store stays unreachable: the host died. */
#define HOST_LOST_MS 2000
/* Pause between connection attempts: doubling from 10 ms up to this. */
#define RETRY_MAX_MS 200

struct vmep_store_client {
  int fd;
  char addr[300]; /* for messages */
  char host[256];
  int port;
  char token[VMEP_STORE_TOKEN_MAX + 1];
  int32_t rank;
  int host_rank;
  int timeout_ms;
  uint64_t session, seq;
  uint64_t instance; /* of the store, once a HELLO was answered OK */
  char refusal[160]; /* the last CLOSING or TAKEN answer's reason */
  struct vmep_store_wbuf out;
  unsigned char *in;
  size_t in_len, in_cap;
};

/* The store instances this process left for good (vmep__store_left), the
 * latest VMEP_STORE_AVOID_MAX of them: no new session starts on them. */
static struct {
  pthread_mutex_t lock;
  uint64_t ids[VMEP_STORE_AVOID_MAX];
  size_t count, next;
} left = {PTHREAD_MUTEX_INITIALIZER, {0}, 0, 0};

void vmep__store_left(uint64_t instance) {
  if (!instance)
    return;
  pthread_mutex_lock(&left.lock);
  left.ids[left.next] = instance;
  left.next = (left.next + 1) % VMEP_STORE_AVOID_MAX;
  left.count += left.count < VMEP_STORE_AVOID_MAX;
  pthread_mutex_unlock(&left.lock);
}

static size_t left_copy(uint64_t *ids) {
  pthread_mutex_lock(&left.lock);
  size_t n = left.count;
  memcpy(ids, left.ids, n * sizeof(*ids));
  pthread_mutex_unlock(&left.lock);
  return n;
}

/* What one attempt at a socket operation came to. */
enum io { IO_OK, IO_LOST, IO_TIMEOUT, IO_BAD, IO_NOMEM };

static void hang_up(struct vmep_store_client *c) {
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
}

/* Waits until the socket is ready for `events` or the deadline passes. */
static enum io wait_fd(int fd, short events, uint64_t deadline) {
  int ready = vmep__tcp_wait(fd, events, deadline);
  return ready > 0 ? IO_OK : ready == 0 ? IO_TIMEOUT : IO_LOST;
}

static enum io send_all(struct vmep_store_client *c, uint64_t deadline) {
  size_t off = 0;
  while (off < c->out.len) {
    ssize_t n = send(c->fd, c->out.data + off, c->out.len - off,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      off += (size_t)n;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      enum io io = wait_fd(c->fd, POLLOUT, deadline);
      if (io != IO_OK)
        return io;
    } else if (n < 0 && errno != EINTR) {
      return IO_LOST;
    }
  }
  return IO_OK;
}

/* Reads one reply frame to `cmd` into c->in and parses it. */
static enum io recv_reply(struct vmep_store_client *c, unsigned cmd,
                          uint64_t deadline, struct vmep_store_reply *reply) {
  const char *error = NULL;
  c->in_len = 0;
  for (;;) {
    long n = vmep__store_reply_parse(c->in, c->in_len, cmd, reply, &error);
    if (n < 0 || (n > 0 && (size_t)n != c->in_len))
      return IO_BAD; /* malformed, or more than one answer */
    if (n > 0)
      return IO_OK;
    size_t need = c->in_len < 4 ? 4096 : 4 + (size_t)vmep__le_get(c->in, 4);
    if (need > c->in_cap) {
      unsigned char *grown = vmep__malloc(need);
      if (!grown)
        return IO_NOMEM;
      if (c->in_len)
        memcpy(grown, c->in, c->in_len);
      vmep__free(c->in);
      c->in = grown;
      c->in_cap = need;
    }
    ssize_t got = recv(c->fd, c->in + c->in_len, need - c->in_len, 0);
    if (got > 0) {
      c->in_len += (size_t)got;
    } else if (got == 0) {
      return IO_LOST;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      enum io io = wait_fd(c->fd, POLLIN, deadline);
      if (io != IO_OK)
        return io;
    } else if (errno != EINTR) {
      return IO_LOST;
    }
  }
}

/* The store's non-OK answer as this call's failure. */
static vmep_status answer_failure(const struct vmep_store_client *c,
                                  const struct vmep_store_reply *a) {
  int len = (int)a->message.len;
  const char *text = (const char *)a->message.data;
  switch (a->answer) {
  case VMEP_STORE_DEAD:
    return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR, "%.*s", len, text);
  case VMEP_STORE_TIMEOUT:
    return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR, "store %s: %.*s",
                      c->addr, len, text);
  case VMEP_STORE_REJECTED:
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "store %s refused this client (rank %d): %.*s", c->addr,
                      (int)c->rank, len, text);
  default:
    return vmep__fail(VMEP_ERR_SYSTEM, VMEP_LOG_ERROR,
                      "store %s failed a request: %.*s", c->addr, len, text);
  }
}

/* A malformed answer, or no memory for one, as this call's failure. */
static vmep_status io_failure(const struct vmep_store_client *c, enum io io) {
  if (io == IO_NOMEM)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "store %s: no memory for an answer", c->addr);
  return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                    "store %s sent a malformed answer", c->addr);
}

/* A HELLO that found another instance of the store than the session's. */
static vmep_status store_replaced(const struct vmep_store_client *c,
                                  const struct vmep_store_reply *a) {
  int len = (int)a->message.len;
  const char *text = (const char *)a->message.data;
  if (c->host_rank >= 0)
    return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                      "rank %d died or left: the store it hosted at %s is "
                      "gone, and another serves there (%.*s)",
                      c->host_rank, c->addr, len, text);
  return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                    "store %s was replaced by another: %.*s", c->addr, len,
                    text);
}

/* Values of try_open's *err besides errno values: the store's answer. */
#define ERR_CLOSING (-1)
#define ERR_TAKEN (-2)

/* One try: connect and say HELLO. VMEP_OK; VMEP_ERR_TIMEOUT (not logged)
 * when it may be retried, with *err an errno value, or ERR_CLOSING /
 * ERR_TAKEN when the store answered so (c->refusal says why); any other
 * status is final. A
 * new session avoids the store instances this process left; a resumed one
 * asks for its own instance. */
static vmep_status try_open(struct vmep_store_client *c, uint64_t deadline,
                            int *err) {
  uint64_t avoid[VMEP_STORE_AVOID_MAX];
  struct vmep_store_op hello = {.cmd = VMEP_STORE_HELLO,
                                .rank = c->rank,
                                .session = c->session,
                                .instance = c->instance,
                                .avoid = avoid,
                                .navoid = c->instance ? 0 : left_copy(avoid),
                                .token = c->token};
  struct vmep_store_reply a = {0};
  c->fd = vmep__tcp_dial(c->host, c->port, deadline, err);
  if (c->fd < 0)
    return VMEP_ERR_TIMEOUT;
  vmep__wbuf_reset(&c->out);
  vmep_status status = vmep__store_request_encode(&c->out, &hello, NULL);
  if (status != VMEP_OK) {
    hang_up(c);
    return status;
  }
  enum io io = send_all(c, deadline);
  if (io == IO_OK)
    io = recv_reply(c, VMEP_STORE_HELLO, deadline, &a);
  if (io == IO_OK && a.answer == VMEP_STORE_OK) {
    if (!c->instance)
      vmep_log_debug("store %s: instance %016llx", c->addr,
                     (unsigned long long)a.instance);
    c->instance = a.instance;
    return VMEP_OK;
  }
  hang_up(c);
  if (io == IO_OK &&
      (a.answer == VMEP_STORE_CLOSING || a.answer == VMEP_STORE_TAKEN)) {
    snprintf(c->refusal, sizeof(c->refusal), "%.*s", (int)a.message.len,
             (const char *)a.message.data);
    *err = a.answer == VMEP_STORE_TAKEN ? ERR_TAKEN : ERR_CLOSING;
    return VMEP_ERR_TIMEOUT;
  }
  if (io == IO_OK && a.answer == VMEP_STORE_GONE)
    return store_replaced(c, &a);
  if (io == IO_OK)
    return answer_failure(c, &a);
  if (io == IO_BAD || io == IO_NOMEM)
    return io_failure(c, io);
  *err = io == IO_TIMEOUT ? ETIMEDOUT : ECONNRESET;
  return VMEP_ERR_TIMEOUT;
}

/*
 * Connects, retrying until `deadline`. `lost_at` (0: never connected) is
 * when the previous connection broke: a client of a rank-hosted store then
 * gives up after HOST_LOST_MS, because the host died.
 */
static vmep_status open_connection(struct vmep_store_client *c,
                                   uint64_t deadline, uint64_t lost_at) {
  int pause = 10, err = 0, last = 0;
  for (;;) {
    vmep_status status = try_open(c, deadline, &err);
    if (status != VMEP_ERR_TIMEOUT)
      return status;
    if (err != ETIMEDOUT || !last)
      last = err; /* an attempt cut short by the deadline says less */
    uint64_t now = vmep__now_ms();
    const char *why = last < 0 ? c->refusal : strerror(last);
    /* The rank stayed held for the whole timeout: a live twin. */
    if (last == ERR_TAKEN && now >= deadline)
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "store %s refused this client (rank %d): %s; still "
                        "so after %d ms",
                        c->addr, (int)c->rank, why, c->timeout_ms);
    if (lost_at && c->host_rank >= 0 && now >= lost_at + HOST_LOST_MS)
      return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                        "rank %d died (the store it hosts at %s is gone: %s)",
                        c->host_rank, c->addr, why);
    if (now >= deadline)
      return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR,
                        "store %s unreachable for %d ms (last error: %s)",
                        c->addr, c->timeout_ms, why);
    struct timespec ts = {0, (long)(pause < vmep__ms_left(deadline)
                                        ? pause
                                        : vmep__ms_left(deadline)) *
                                 1000000L};
    nanosleep(&ts, NULL);
    pause = pause * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : pause * 2;
  }
}

/*
 * Sends `op` and reads its answer into *a (valid until the next request),
 * reconnecting and resending while the connection breaks. A wait (its
 * wait_deadline nonzero) is resent with the time it has left.
 */
static vmep_status exchange(struct vmep_store_client *c,
                            struct vmep_store_op *op, uint64_t wait_deadline,
                            struct vmep_store_reply *a, size_t *packed) {
  uint64_t deadline = wait_deadline ? wait_deadline + REPLY_SLACK_MS
                                    : vmep__now_ms() + (uint64_t)c->timeout_ms;
  op->seq = ++c->seq;
  for (;;) {
    if (c->fd < 0) {
      vmep_status status = open_connection(c, deadline, vmep__now_ms());
      if (status != VMEP_OK)
        return status;
    }
    if (wait_deadline)
      op->timeout_ms = vmep__ms_left(wait_deadline);
    vmep__wbuf_reset(&c->out);
    vmep_status status = vmep__store_request_encode(&c->out, op, packed);
    if (status != VMEP_OK)
      return status;
    enum io io = send_all(c, deadline);
    if (io == IO_OK)
      io = recv_reply(c, op->cmd, deadline, a);
    if (io == IO_LOST) {
      vmep_log_info("store %s: connection lost; reconnecting", c->addr);
      hang_up(c);
      continue;
    }
    if (io == IO_OK && a->answer == VMEP_STORE_REJECTED)
      hang_up(c); /* the store closes it too */
    if (io == IO_OK)
      return a->answer == VMEP_STORE_OK ? VMEP_OK : answer_failure(c, a);
    hang_up(c);
    if (io == IO_TIMEOUT)
      return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR,
                        "store %s did not answer within %d ms", c->addr,
                        wait_deadline ? REPLY_SLACK_MS : c->timeout_ms);
    return io_failure(c, io);
  }
}

vmep_status vmep__store_client_connect(const char *addr, const char *token,
                                       int rank, int host_rank, int timeout_ms,
                                       struct vmep_store_client **client_out) {
  char host[256];
  int port = 0;
  if (!token || !client_out || rank < -1 || timeout_ms <= 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__store_client_connect: token %s, rank %d, "
                      "timeout %d ms, client_out %s",
                      token ? "set" : "NULL", rank, timeout_ms,
                      client_out ? "set" : "NULL");
  vmep_status status = vmep__store_addr_parse(addr, host, sizeof(host), &port);
  if (status != VMEP_OK)
    return status;
  if (strlen(token) > VMEP_STORE_TOKEN_MAX)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "store job token of %zu bytes (at most %u)",
                      strlen(token), VMEP_STORE_TOKEN_MAX);
  struct vmep_store_client *c = vmep__calloc(1, sizeof(*c));
  if (!c)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "store: no memory for a client");
  c->fd = -1;
  snprintf(c->addr, sizeof(c->addr), "%s", addr);
  snprintf(c->host, sizeof(c->host), "%s", host);
  c->port = port;
  snprintf(c->token, sizeof(c->token), "%s", token);
  c->rank = rank;
  c->host_rank = host_rank;
  c->timeout_ms = timeout_ms;
  if (getrandom(&c->session, sizeof(c->session), GRND_NONBLOCK) !=
      (ssize_t)sizeof(c->session))
    c->session = vmep__now_ms() ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)c;
  c->session |= 1; /* 0 means "no session" on the wire */
  status = open_connection(c, vmep__now_ms() + (uint64_t)timeout_ms, 0);
  if (status != VMEP_OK) {
    vmep__wbuf_release(&c->out);
    vmep__free(c->in);
    vmep__free(c);
    return status;
  }
  *client_out = c;
  return VMEP_OK;
}

void vmep__store_client_close(struct vmep_store_client *c, int goodbye) {
  if (!c)
    return;
  if (c->fd >= 0 && goodbye) {
    struct vmep_store_op bye = {.cmd = VMEP_STORE_BYE};
    struct vmep_store_reply a;
    uint64_t deadline = vmep__now_ms() + (uint64_t)c->timeout_ms;
    vmep__wbuf_reset(&c->out);
    if (vmep__store_request_encode(&c->out, &bye, NULL) != VMEP_OK ||
        send_all(c, deadline) != IO_OK ||
        recv_reply(c, VMEP_STORE_BYE, deadline, &a) != IO_OK)
      vmep_log_info("store %s: goodbye not acknowledged", c->addr);
  }
  hang_up(c);
  vmep__wbuf_release(&c->out);
  vmep__free(c->in);
  vmep__free(c);
}

void vmep__store_client_drop(struct vmep_store_client *c) { hang_up(c); }

int vmep__store_client_timeout(const struct vmep_store_client *c) {
  return c->timeout_ms;
}

uint64_t vmep__store_client_session(const struct vmep_store_client *c) {
  return c->session;
}

uint64_t vmep__store_client_instance(const struct vmep_store_client *c) {
  return c->instance;
}

vmep_status vmep__store_set(struct vmep_store_client *c, const char *key,
                            const void *value, size_t len) {
  struct vmep_store_op op = {
      .cmd = VMEP_STORE_SET, .key = key, .value = value, .value_len = len};
  struct vmep_store_reply a;
  return exchange(c, &op, 0, &a, NULL);
}

vmep_status vmep__store_get(struct vmep_store_client *c, const char *key,
                            int *found_out, void **value_out, size_t *len_out) {
  struct vmep_store_op op = {
      .cmd = VMEP_STORE_GET, .keys = &key, .nkeys = 1, .timeout_ms = -1};
  struct vmep_store_reply a;
  struct vmep_store_bytes value;
  vmep_status status = exchange(c, &op, 0, &a, NULL);
  if (status != VMEP_OK)
    return status;
  if (a.count != 1 || !vmep__store_entry_next(&a.values, &value))
    return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                      "store %s answered GET with %u values", c->addr, a.count);
  void *copy = value.data ? vmep__malloc(value.len ? value.len : 1) : NULL;
  if (value.data && !copy)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "store: no memory for a value of %zu bytes", value.len);
  if (value.len)
    memcpy(copy, value.data, value.len);
  *found_out = value.data != NULL;
  *value_out = copy;
  *len_out = value.len;
  return VMEP_OK;
}

/* WAIT or GET over keys[0..nkeys), as many frames as needed. A GET with
 * wait_deadline 0 does not wait, and passes missing keys to fn as NULL. */
static vmep_status get_keys(struct vmep_store_client *c, unsigned cmd,
                            const char *const *keys, size_t nkeys,
                            uint64_t wait_deadline, vmep_store_value_fn fn,
                            void *user) {
  for (size_t first = 0; first < nkeys;) {
    struct vmep_store_op op = {.cmd = cmd,
                               .keys = keys + first,
                               .nkeys = nkeys - first,
                               .timeout_ms = -1};
    struct vmep_store_reply a;
    struct vmep_store_bytes value;
    size_t packed = 0;
    vmep_status status = exchange(c, &op, wait_deadline, &a, &packed);
    if (status != VMEP_OK)
      return status;
    if (a.count == 0 || a.count > packed)
      return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                        "store %s answered a GET or WAIT of %zu keys with %u",
                        c->addr, packed, a.count);
    for (uint32_t i = 0; cmd == VMEP_STORE_GET && i < a.count; i++) {
      if (!vmep__store_entry_next(&a.values, &value) ||
          (!value.data && wait_deadline))
        return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                          "store %s answered a wait without key %s", c->addr,
                          keys[first + i]);
      status = fn(user, first + i, value.data, value.len);
      if (status != VMEP_OK)
        return status;
    }
    first += a.count;
  }
  return VMEP_OK;
}

static uint64_t wait_deadline_of(const struct vmep_store_client *c,
                                 int timeout_ms) {
  return vmep__now_ms() +
         (uint64_t)(timeout_ms < 0 ? c->timeout_ms : timeout_ms);
}

vmep_status vmep__store_wait(struct vmep_store_client *c,
                             const char *const *keys, size_t nkeys,
                             int timeout_ms) {
  return get_keys(c, VMEP_STORE_WAIT, keys, nkeys,
                  wait_deadline_of(c, timeout_ms), NULL, NULL);
}

vmep_status vmep__store_wait_get(struct vmep_store_client *c,
                                 const char *const *keys, size_t nkeys,
                                 int timeout_ms, vmep_store_value_fn fn,
                                 void *user) {
  return get_keys(c, VMEP_STORE_GET, keys, nkeys,
                  wait_deadline_of(c, timeout_ms), fn, user);
}

vmep_status vmep__store_get_many(struct vmep_store_client *c,
                                 const char *const *keys, size_t nkeys,
                                 vmep_store_value_fn fn, void *user) {
  return get_keys(c, VMEP_STORE_GET, keys, nkeys, 0, fn, user);
}

vmep_status vmep__store_add(struct vmep_store_client *c, const char *key,
                            int64_t delta, int64_t *value_out) {
  struct vmep_store_op op = {.cmd = VMEP_STORE_ADD, .key = key, .delta = delta};
  struct vmep_store_reply a;
  vmep_status status = exchange(c, &op, 0, &a, NULL);
  if (status == VMEP_OK && value_out)
    *value_out = a.number;
  return status;
}

vmep_status vmep__store_cas(struct vmep_store_client *c, const char *key,
                            const void *expected, size_t expected_len,
                            const void *desired, size_t desired_len,
                            int *swapped_out) {
  struct vmep_store_op op = {.cmd = VMEP_STORE_CAS,
                             .key = key,
                             .expected = expected,
                             .expected_len = expected ? expected_len : 0,
                             .value = desired,
                             .value_len = desired_len};
  struct vmep_store_reply a;
  vmep_status status = exchange(c, &op, 0, &a, NULL);
  if (status == VMEP_OK && swapped_out)
    *swapped_out = (int)a.number;
  return status;
}

vmep_status vmep__store_forget(struct vmep_store_client *c, int rank,
                               int *was_dead_out) {
  struct vmep_store_op op = {.cmd = VMEP_STORE_FORGET, .rank = rank};
  struct vmep_store_reply a;
  if (rank < 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__store_forget: rank %d (ranks are >= 0)", rank);
  vmep_status status = exchange(c, &op, 0, &a, NULL);
  if (status == VMEP_OK && was_dead_out)
    *was_dead_out = (int)a.number;
  return status;
}

vmep_status vmep__store_delete(struct vmep_store_client *c, const char *key,
                               int *existed_out) {
  struct vmep_store_op op = {.cmd = VMEP_STORE_DELETE, .key = key};
  struct vmep_store_reply a;
  vmep_status status = exchange(c, &op, 0, &a, NULL);
  if (status == VMEP_OK && existed_out)
    *existed_out = (int)a.number;
  return status;
}
