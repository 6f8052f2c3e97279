/*
 * What the store does with a parsed request, apart from sockets: sessions
 * (so that a client that reconnects is recognised and a retried mutation
 * is not applied twice), the ranks that died (published as keys, so that
 * elastic members can tell a dead rank from a slow one), the commands on
 * the key table, and waits that finish when their keys exist, when a rank
 * dies or at their deadline. One thread (the server's) calls all of this.
 */
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "store/store.h"

#define MAX_SESSIONS 4096
#define CACHED_REPLY_MAX 32
#define MISSING_LISTED 8 /* keys named in a timeout message */

struct session {
  struct session *next;
  uint64_t id;
  int32_t rank;
  struct vmep_store_peer *peer; /* the connection speaking for it, if any */
  uint64_t last_seq;            /* of the last mutation answered OK */
  unsigned char last_reply[CACHED_REPLY_MAX];
  size_t last_reply_len; /* 0: nothing cached */
};

struct vmep_store_peer {
  char name[96];
  /* Set by HELLO; cleared by BYE, or when the session's client reconnects
   * on another connection before this one's close was seen. */
  struct session *session;
  /* The pending GET or WAIT, if `waiting`. */
  int waiting;
  unsigned wait_cmd;
  unsigned char *wait_keys; /* a copy of the request's key list */
  size_t wait_keys_len;
  uint32_t wait_nkeys;
  uint32_t wait_done; /* keys known present, in order */
  size_t wait_done_off;
  int32_t wait_timeout_ms;
  uint64_t wait_deadline;
};

struct vmep_store_state {
  unsigned char token[VMEP_STORE_TOKEN_MAX];
  size_t token_len;
  uint64_t instance; /* random, nonzero: this store among those at an address */
  int retired;       /* no new sessions */
  struct vmep_store_table *table;
  struct session *sessions;
  size_t nsessions;
  int32_t *dead; /* ranks whose connection closed without BYE */
  size_t ndead, dead_cap;
  uint64_t deaths; /* the serial of the last death published */
};

vmep_status vmep__store_state_create(const char *token,
                                     struct vmep_store_state **state_out) {
  size_t len = strlen(token);
  if (len > VMEP_STORE_TOKEN_MAX)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "store: job token of %zu bytes (at most %u)", len,
                      VMEP_STORE_TOKEN_MAX);
  struct vmep_store_state *st = vmep__calloc(1, sizeof(*st));
  if (!st)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "store: no memory for its state");
  vmep_status status = vmep__store_table_create(&st->table);
  if (status != VMEP_OK) {
    vmep__free(st);
    return status;
  }
  memcpy(st->token, token, len);
  st->token_len = len;
  if (getrandom(&st->instance, sizeof(st->instance), GRND_NONBLOCK) !=
      (ssize_t)sizeof(st->instance))
    st->instance = vmep__now_ms() ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)st;
  st->instance |= 1; /* 0 means "any instance" on the wire */
  *state_out = st;
  return VMEP_OK;
}

uint64_t vmep__store_state_instance(const struct vmep_store_state *st) {
  return st->instance;
}

void vmep__store_state_retire(struct vmep_store_state *st) {
  if (!st->retired)
    vmep_log_info("store: instance %016llx retired: no new sessions",
                  (unsigned long long)st->instance);
  st->retired = 1;
}

void vmep__store_state_destroy(struct vmep_store_state *st) {
  if (!st)
    return;
  while (st->sessions) {
    struct session *next = st->sessions->next;
    vmep__free(st->sessions);
    st->sessions = next;
  }
  vmep__store_table_destroy(st->table);
  vmep__free(st->dead);
  vmep__free(st);
}

size_t vmep__store_state_keys(const struct vmep_store_state *st) {
  return vmep__store_table_count(st->table);
}

struct vmep_store_peer *vmep__store_peer_open(struct vmep_store_state *st,
                                              const char *name) {
  (void)st;
  struct vmep_store_peer *p = vmep__calloc(1, sizeof(*p));
  if (p)
    snprintf(p->name, sizeof(p->name), "%s", name);
  return p;
}

const char *vmep__store_peer_name(const struct vmep_store_peer *p) {
  return p->name;
}

int vmep__store_peer_rank(const struct vmep_store_peer *p) {
  return p->session ? p->session->rank : -1;
}

/* Takes `rank` off the dead list; 1 when it was on it. */
static int forget_dead(struct vmep_store_state *st, int32_t rank) {
  for (size_t i = 0; i < st->ndead; i++)
    if (st->dead[i] == rank) {
      memmove(st->dead + i, st->dead + i + 1,
              (st->ndead - i - 1) * sizeof(*st->dead));
      st->ndead--;
      return 1;
    }
  return 0;
}

/* SETs rank's dead key to the next death serial (8 bytes, little-endian). */
static void publish_death(struct vmep_store_state *st, int32_t rank) {
  char key[VMEP_STORE_DEAD_KEY_BYTES];
  unsigned char serial[8];
  uint64_t n = ++st->deaths;
  vmep__le_put(serial, n, 8);
  vmep__store_dead_key(rank, key);
  struct vmep_store_bytes k = {(const unsigned char *)key, strlen(key)};
  struct vmep_store_bytes v = {serial, sizeof(serial)};
  if (vmep__store_table_set(st->table, k, v) != VMEP_OK)
    vmep_log_error("store: no memory to publish that rank %d died; members "
                   "waiting for it will time out instead",
                   (int)rank);
}

/* SETs "vmep/session/<rank>" to the session now holding the rank (on), or
 * deletes it if that session still holds it (off: a goodbye). */
static void publish_session(struct vmep_store_state *st, int32_t rank,
                            uint64_t id, int on) {
  char key[VMEP_STORE_SESSION_KEY_BYTES];
  unsigned char bytes[8];
  struct vmep_store_bytes cur;
  vmep__store_session_key(rank, key);
  vmep__le_put(bytes, id, 8);
  struct vmep_store_bytes k = {(const unsigned char *)key, strlen(key)};
  struct vmep_store_bytes v = {bytes, sizeof(bytes)};
  if (!on) {
    if (vmep__store_table_get(st->table, k, &cur) && cur.len == 8 &&
        vmep__le_get(cur.data, 8) == id)
      vmep__store_table_delete(st->table, k);
  } else if (vmep__store_table_set(st->table, k, v) != VMEP_OK) {
    vmep_log_error("store: no memory to publish the session of rank %d; "
                   "its records will not be taken for current",
                   (int)rank);
  }
}

/* A rank rejoins: its death is neither waited on nor published. */
static void clear_death(struct vmep_store_state *st, int32_t rank) {
  char key[VMEP_STORE_DEAD_KEY_BYTES];
  vmep__store_dead_key(rank, key);
  struct vmep_store_bytes k = {(const unsigned char *)key, strlen(key)};
  forget_dead(st, rank);
  vmep__store_table_delete(st->table, k);
}

static void mark_dead(struct vmep_store_state *st, int32_t rank) {
  forget_dead(st, rank);
  if (st->ndead == st->dead_cap) {
    size_t cap = st->dead_cap ? st->dead_cap * 2 : 16;
    int32_t *grown = vmep__malloc(cap * sizeof(*grown));
    if (!grown) {
      vmep_log_error("store: no memory to record that rank %d died; waits "
                     "for it will time out instead",
                     (int)rank);
      return;
    }
    if (st->ndead)
      memcpy(grown, st->dead, st->ndead * sizeof(*grown));
    vmep__free(st->dead);
    st->dead = grown;
    st->dead_cap = cap;
  }
  st->dead[st->ndead++] = rank;
}

static void unlink_session(struct vmep_store_state *st, struct session *s) {
  struct session **at = &st->sessions;
  while (*at != s)
    at = &(*at)->next;
  *at = s->next;
  st->nsessions--;
  vmep__free(s);
}

void vmep__store_peer_close(struct vmep_store_state *st,
                            struct vmep_store_peer *p) {
  if (!p)
    return;
  struct session *s = p->session;
  if (st && s) {
    s->peer = NULL; /* kept: the client may reconnect */
    if (s->rank >= 0) {
      vmep_log_warn("store: rank %d (%s) closed its connection without "
                    "goodbye: waits of other clients now fail",
                    (int)s->rank, p->name);
      mark_dead(st, s->rank);
      publish_death(st, s->rank);
    }
  }
  vmep__free(p->wait_keys);
  vmep__free(p);
}

/* Logs, answers REJECTED and tells the caller to close the connection. */
static int reject(struct vmep_store_peer *p, struct vmep_store_wbuf *out,
                  const char *why) {
  vmep_log_warn("store: %s: %s; closing that connection", p->name, why);
  vmep__store_reply_error(out, VMEP_STORE_REJECTED, -1, "%s", why);
  return VMEP_STORE_PEER_CLOSE;
}

/* A HELLO refused in the normal course of stores coming and going
 * (CLOSING, GONE): answered, logged at debug, connection closed. */
static int turn_away(struct vmep_store_peer *p, struct vmep_store_wbuf *out,
                     unsigned answer, const char *why) {
  vmep_log_debug("store: %s: %s; closing that connection", p->name, why);
  vmep__store_reply_error(out, answer, -1, "%s", why);
  return VMEP_STORE_PEER_CLOSE;
}

static void reply_ok(struct vmep_store_wbuf *out) {
  vmep__wbuf_frame_begin(out);
  vmep__wbuf_put_u8(out, VMEP_STORE_OK);
  vmep__wbuf_frame_end(out);
}

/* Whether the HELLO asks to avoid this store instance. */
static int avoided(const struct vmep_store_state *st,
                   const struct vmep_store_request *q) {
  for (uint32_t i = 0; i < q->navoid; i++)
    if (q->avoid[i] == st->instance)
      return 1;
  return 0;
}

static struct session *find_session(struct vmep_store_state *st, uint64_t id) {
  for (struct session *s = st->sessions; s; s = s->next)
    if (s->id == id)
      return s;
  return NULL;
}

/* Whether a connection other than the session `id`'s speaks for `rank`. */
static int rank_taken(const struct vmep_store_state *st, int32_t rank,
                      uint64_t id) {
  for (const struct session *s = st->sessions; s; s = s->next)
    if (rank >= 0 && s->rank == rank && s->peer && s->id != id)
      return 1;
  return 0;
}

/* A new session; at the limit, the oldest one without a connection (a
 * client that died or went away) makes room. NULL when none can. */
static struct session *new_session(struct vmep_store_state *st, uint64_t id,
                                   int32_t rank) {
  if (st->nsessions >= MAX_SESSIONS) {
    struct session *oldest = NULL;
    for (struct session *s = st->sessions; s; s = s->next)
      if (!s->peer)
        oldest = s; /* the list runs from newest to oldest */
    if (!oldest)
      return NULL;
    unlink_session(st, oldest);
  }
  struct session *s = vmep__calloc(1, sizeof(*s));
  if (!s)
    return NULL;
  s->id = id;
  s->rank = rank;
  s->next = st->sessions;
  st->sessions = s;
  st->nsessions++;
  return s;
}

static int hello(struct vmep_store_state *st, struct vmep_store_peer *p,
                 const struct vmep_store_request *q,
                 struct vmep_store_wbuf *out) {
  char why[192];
  if (p->session)
    return reject(p, out, "second HELLO on one connection");
  if (q->version != VMEP_STORE_PROTOCOL_VERSION) {
    snprintf(why, sizeof(why), "protocol version %u (this store speaks %u)",
             q->version, VMEP_STORE_PROTOCOL_VERSION);
    return reject(p, out, why);
  }
  if (!vmep__store_token_equal(st->token, st->token_len, q->token.data,
                               q->token.len))
    return reject(p, out, "wrong job token");
  if (q->instance && q->instance != st->instance) {
    snprintf(why, sizeof(why),
             "the session began on store instance %016llx; this is "
             "%016llx (the store was replaced, and its keys are gone)",
             (unsigned long long)q->instance, (unsigned long long)st->instance);
    return turn_away(p, out, VMEP_STORE_GONE, why);
  }
  struct session *s = find_session(st, q->session);
  if (!s && (st->retired || avoided(st, q)))
    return turn_away(p, out, VMEP_STORE_CLOSING,
                     st->retired ? "the store is shutting down (its host "
                                   "left the group) and starts no new session"
                                 : "this client left this store's group; it "
                                   "waits for the next store at the address");
  if (s && s->rank != q->rank)
    return reject(p, out, "a session cannot change its rank");
  if (rank_taken(st, q->rank, q->session)) {
    /* Its holder may have died a moment ago, its close not yet read: the
     * client tries again. */
    snprintf(why, sizeof(why),
             "rank %d is already connected (two processes with one rank?)",
             (int)q->rank);
    vmep_log_info("store: %s: %s; closing that connection", p->name, why);
    vmep__store_reply_error(out, VMEP_STORE_TAKEN, -1, "%s", why);
    return VMEP_STORE_PEER_CLOSE;
  }
  if (!s && !(s = new_session(st, q->session, q->rank)))
    return reject(p, out, "no room for another session");
  if (s->peer)
    s->peer->session = NULL; /* a reconnect replaces the old connection */
  s->peer = p;
  p->session = s;
  if (q->rank >= 0) {
    clear_death(st, q->rank);
    publish_session(st, q->rank, q->session, 1);
  }
  snprintf(p->name + strlen(p->name), sizeof(p->name) - strlen(p->name),
           q->rank >= 0 ? " rank %d" : " (no rank)", (int)q->rank);
  vmep__wbuf_frame_begin(out);
  vmep__wbuf_put_u8(out, VMEP_STORE_OK);
  vmep__wbuf_put_u64(out, st->instance);
  vmep__wbuf_frame_end(out);
  return VMEP_STORE_PEER_IDLE;
}

/* SET, ADD, CAS, DELETE or FORGET; appends the OK answer. */
static void mutate(struct vmep_store_state *st,
                   const struct vmep_store_request *q,
                   struct vmep_store_wbuf *out) {
  struct vmep_store_bytes cur = {NULL, 0};
  int present = q->cmd != VMEP_STORE_FORGET &&
                vmep__store_table_get(st->table, q->key, &cur);
  int64_t number = 0;
  vmep_status status = VMEP_OK;
  if (q->cmd == VMEP_STORE_FORGET) {
    number = forget_dead(st, q->rank);
    if (number)
      vmep_log_info("store: rank %d forgotten: waits no longer fail because "
                    "it died",
                    (int)q->rank);
  } else if (q->cmd == VMEP_STORE_SET) {
    status = vmep__store_table_set(st->table, q->key, q->value);
  } else if (q->cmd == VMEP_STORE_ADD) {
    uint64_t v = 0;
    if (present && cur.len != 8) {
      vmep__store_reply_error(out, VMEP_STORE_FAILED, -1,
                              "ADD on a key holding %zu bytes, not a counter",
                              cur.len);
      return;
    }
    if (present)
      v = vmep__le_get(cur.data, 8);
    v += (uint64_t)q->delta; /* wraps like two's complement */
    unsigned char bytes[8];
    vmep__le_put(bytes, v, 8);
    struct vmep_store_bytes nv = {bytes, 8};
    status = vmep__store_table_set(st->table, q->key, nv);
    number = (int64_t)v;
  } else if (q->cmd == VMEP_STORE_CAS) {
    int match =
        q->expect_present
            ? present && cur.len == q->expected.len &&
                  (!cur.len || memcmp(cur.data, q->expected.data, cur.len) == 0)
            : !present;
    if (match)
      status = vmep__store_table_set(st->table, q->key, q->value);
    number = match;
  } else { /* DELETE */
    number = vmep__store_table_delete(st->table, q->key);
  }
  if (status != VMEP_OK) {
    vmep__store_reply_error(out, VMEP_STORE_FAILED, -1, "%s",
                            vmep_last_error());
    return;
  }
  vmep__wbuf_frame_begin(out);
  vmep__wbuf_put_u8(out, VMEP_STORE_OK);
  if (q->cmd == VMEP_STORE_ADD)
    vmep__wbuf_put_u64(out, (uint64_t)number);
  else if (q->cmd != VMEP_STORE_SET)
    vmep__wbuf_put_u8(out, (unsigned)number);
  vmep__wbuf_frame_end(out);
}

/* A mutation, exactly once per (session, seq): a retry after a reconnect
 * gets the cached answer instead of being applied again. */
static void mutate_once(struct vmep_store_state *st, struct session *s,
                        const struct vmep_store_request *q,
                        struct vmep_store_wbuf *out) {
  if (s->last_reply_len && s->last_seq == q->seq) {
    vmep__wbuf_put(out, s->last_reply, s->last_reply_len);
    return;
  }
  size_t start = out->len;
  mutate(st, q, out);
  size_t n = out->len - start;
  if (n > 4 && n <= CACHED_REPLY_MAX && out->data[start + 4] == VMEP_STORE_OK) {
    memcpy(s->last_reply, out->data + start, n);
    s->last_reply_len = n;
    s->last_seq = q->seq;
  }
}

/* Starts a GET or WAIT that blocks; the reply comes from peer_poll. */
static int start_wait(struct vmep_store_peer *p,
                      const struct vmep_store_request *q,
                      struct vmep_store_wbuf *out) {
  p->wait_keys = vmep__malloc(q->keys.len);
  if (!p->wait_keys) {
    vmep__store_reply_error(out, VMEP_STORE_FAILED, -1,
                            "store has no memory for a wait on %u keys",
                            q->nkeys);
    return VMEP_STORE_PEER_IDLE;
  }
  memcpy(p->wait_keys, q->keys.data, q->keys.len);
  p->waiting = 1;
  p->wait_cmd = q->cmd;
  p->wait_keys_len = q->keys.len;
  p->wait_nkeys = q->nkeys;
  p->wait_done = 0;
  p->wait_done_off = 0;
  p->wait_timeout_ms = q->timeout_ms < 0 ? 0 : q->timeout_ms;
  p->wait_deadline = vmep__now_ms() + (uint64_t)p->wait_timeout_ms;
  return VMEP_STORE_PEER_PENDING;
}

/* The OK answer of a GET (values of as many keys as fit one frame, absent
 * ones marked) or of a WAIT (the count alone). */
static void answer_keys(const struct vmep_store_state *st, unsigned cmd,
                        struct vmep_store_bytes keys, uint32_t nkeys,
                        struct vmep_store_wbuf *out) {
  struct vmep_store_bytes key, value;
  uint32_t count = 0;
  size_t body = 1 + 4;
  vmep__wbuf_frame_begin(out);
  vmep__wbuf_put_u8(out, VMEP_STORE_OK);
  size_t count_at = out->len;
  vmep__wbuf_put_u32(out, 0); /* patched below */
  while (count < nkeys && vmep__store_entry_next(&keys, &key)) {
    if (cmd == VMEP_STORE_GET) {
      int present = vmep__store_table_get(st->table, key, &value);
      size_t need = 4 + (present ? value.len : 0);
      if (count > 0 && body + need > VMEP_STORE_FRAME_MAX)
        break;
      if (present)
        vmep__wbuf_put_bytes(out, value.data, value.len);
      else
        vmep__wbuf_put_u32(out, VMEP_STORE_ABSENT);
      body += need;
    }
    count++;
  }
  if (!out->failed)
    vmep__le_put(out->data + count_at, count, 4);
  vmep__wbuf_frame_end(out);
}

/* Appends key `k` to text[cap] for a message, printable bytes only. */
static void append_key(char *text, size_t cap, struct vmep_store_bytes k) {
  size_t at = strlen(text);
  for (size_t i = 0; i < k.len && i < 64 && at + 4 < cap; i++) {
    unsigned char c = k.data[i];
    text[at++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
  }
  if (k.len > 64 && at + 4 < cap)
    text[at++] = '~';
  text[at] = '\0';
}

/* The TIMEOUT answer, naming the first missing keys. */
static void answer_timeout(const struct vmep_store_state *st,
                           const struct vmep_store_peer *p,
                           struct vmep_store_wbuf *out) {
  struct vmep_store_bytes keys = {p->wait_keys, p->wait_keys_len}, key;
  char listed[VMEP_STORE_MESSAGE_MAX / 2] = "";
  uint32_t missing = 0;
  while (vmep__store_entry_next(&keys, &key)) {
    if (vmep__store_table_get(st->table, key, NULL))
      continue;
    if (missing++ < MISSING_LISTED) {
      if (missing > 1)
        strncat(listed, ", ", sizeof(listed) - strlen(listed) - 1);
      append_key(listed, sizeof(listed), key);
    }
  }
  vmep__store_reply_error(out, VMEP_STORE_TIMEOUT, -1,
                          "timed out after %d ms waiting for %u of %u keys: "
                          "%s%s",
                          (int)p->wait_timeout_ms, missing, p->wait_nkeys,
                          listed, missing > MISSING_LISTED ? ", ..." : "");
}

/* Moves the wait's cursor past the keys now present; 1 when all are (a
 * last full pass catches keys deleted after the cursor passed them). */
static int wait_satisfied(const struct vmep_store_state *st,
                          struct vmep_store_peer *p) {
  for (int pass = 0; pass < 2; pass++) {
    struct vmep_store_bytes rest = {p->wait_keys + p->wait_done_off,
                                    p->wait_keys_len - p->wait_done_off};
    struct vmep_store_bytes next = rest, key;
    while (p->wait_done < p->wait_nkeys &&
           vmep__store_entry_next(&next, &key) &&
           vmep__store_table_get(st->table, key, NULL)) {
      rest = next;
      p->wait_done++;
      p->wait_done_off = p->wait_keys_len - rest.len;
    }
    if (p->wait_done < p->wait_nkeys)
      return 0;
    if (pass == 0) {
      p->wait_done = 0;
      p->wait_done_off = 0;
    }
  }
  return 1;
}

int vmep__store_peer_poll(struct vmep_store_state *st,
                          struct vmep_store_peer *p, uint64_t now_ms,
                          struct vmep_store_wbuf *out,
                          uint64_t *next_deadline_ms) {
  if (!p->waiting)
    return VMEP_STORE_PEER_IDLE;
  int32_t own = p->session ? p->session->rank : -1;
  int32_t dead = -1;
  for (size_t i = 0; i < st->ndead && dead < 0; i++)
    if (st->dead[i] != own)
      dead = st->dead[i];
  if (wait_satisfied(st, p)) {
    struct vmep_store_bytes keys = {p->wait_keys, p->wait_keys_len};
    answer_keys(st, p->wait_cmd, keys, p->wait_nkeys, out);
  } else if (dead >= 0) {
    vmep__store_reply_error(out, VMEP_STORE_DEAD, dead,
                            "rank %d died (its store connection closed)",
                            (int)dead);
  } else if (now_ms >= p->wait_deadline) {
    answer_timeout(st, p, out);
  } else {
    if (p->wait_deadline < *next_deadline_ms)
      *next_deadline_ms = p->wait_deadline;
    return VMEP_STORE_PEER_PENDING;
  }
  vmep__free(p->wait_keys);
  p->wait_keys = NULL;
  p->waiting = 0;
  return VMEP_STORE_PEER_IDLE;
}

int vmep__store_peer_request(struct vmep_store_state *st,
                             struct vmep_store_peer *p,
                             const struct vmep_store_request *q,
                             struct vmep_store_wbuf *out) {
  if (q->cmd == VMEP_STORE_HELLO)
    return hello(st, p, q, out);
  if (!p->session)
    return reject(p, out, "request before HELLO");
  if (p->waiting) /* the server reads nothing while a wait blocks */
    return reject(p, out, "request while a wait is pending");
  switch (q->cmd) {
  case VMEP_STORE_BYE:
    if (p->session->rank >= 0)
      publish_session(st, p->session->rank, p->session->id, 0);
    unlink_session(st, p->session);
    p->session = NULL;
    reply_ok(out);
    return VMEP_STORE_PEER_CLOSE;
  case VMEP_STORE_GET:
  case VMEP_STORE_WAIT:
    if (q->cmd == VMEP_STORE_GET && q->timeout_ms < 0) {
      answer_keys(st, q->cmd, q->keys, q->nkeys, out);
      return VMEP_STORE_PEER_IDLE;
    }
    return start_wait(p, q, out);
  default:
    mutate_once(st, p->session, q, out);
    return VMEP_STORE_PEER_IDLE;
  }
}
