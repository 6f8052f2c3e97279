/*
 * Membership over the store, for elastic jobs whose ranks come and go: a
 * member publishes a record while it is in, others fetch it, and an
 * allgather runs among an explicit set of ranks. The store's WAIT fails as
 * soon as any rank dies, which in an elastic job is normal, so everything
 * here polls GETs that answer at once (backing off from 1 to 20 ms) and
 * reads the store's published deaths ("vmep/dead/<rank>") of only the
 * ranks it waits for.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "boot/boot.h"
#include "store/store.h"

#define POLL_FIRST_MS 1
#define POLL_MAX_MS 20
#define MISSING_LISTED 8 /* ranks named in a timeout message */
/* A sync value: u64 tag, u32 length, bytes; then the same for the
 * contribution before it (tag 0 and no bytes when there was none). */
#define SYNC_HEADER 12

/* ---- helpers ---------------------------------------------------------- */

static vmep_status bad_arg(const char *fn, const char *what) {
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: %s", fn, what);
}

/* key[VMEP_STORE_KEY_MAX + 1] = "<ns>/<kind>/<rank>". */
static vmep_status member_key(const char *fn, const char *ns, const char *kind,
                              int rank, char *key) {
  int n = snprintf(key, VMEP_STORE_KEY_MAX + 1, "%s/%s/%d", ns, kind, rank);
  if (n < 0 || n > (int)VMEP_STORE_KEY_MAX)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: namespace of %zu bytes makes a key over the "
                      "store's limit of %u",
                      fn, strlen(ns), VMEP_STORE_KEY_MAX);
  return VMEP_OK;
}

static vmep_status check_common(const char *fn,
                                const struct vmep_store_client *c,
                                const char *ns, int rank) {
  if (!c || !ns)
    return bad_arg(fn, c ? "ns is NULL" : "client is NULL");
  if (rank < 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: rank %d (ranks are >= 0)", fn, rank);
  return VMEP_OK;
}

static int timeout_of(struct vmep_store_client *c, int timeout_ms) {
  return timeout_ms < 0 ? vmep__store_client_timeout(c) : timeout_ms;
}

/* Sleeps *pause_ms (not past the deadline) and doubles it up to
 * POLL_MAX_MS. */
static void back_off(int *pause_ms, uint64_t deadline) {
  int ms =
      *pause_ms < vmep__ms_left(deadline) ? *pause_ms : vmep__ms_left(deadline);
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
  *pause_ms = *pause_ms * 2 > POLL_MAX_MS ? POLL_MAX_MS : *pause_ms * 2;
}

/* ---- records ---------------------------------------------------------- */

/* A stored record: u32 MEMBER_MAGIC, u32 0, u64 the publisher's store
 * session, then the caller's bytes. */
#define MEMBER_MAGIC 0x31524d56u /* "VMR1" */

vmep_status vmep__member_publish(struct vmep_store_client *c, const char *ns,
                                 int rank, const void *rec, size_t len) {
  char key[VMEP_STORE_KEY_MAX + 1];
  unsigned char *value = NULL;
  vmep_status status = check_common("vmep__member_publish", c, ns, rank);
  if (status == VMEP_OK && len && !rec)
    status = bad_arg("vmep__member_publish", "rec is NULL");
  if (status == VMEP_OK)
    status = member_key("vmep__member_publish", ns, "member", rank, key);
  if (status == VMEP_OK && len > VMEP_STORE_VALUE_MAX - VMEP_MEMBER_HEADER)
    status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "vmep__member_publish: a record of %zu bytes (at "
                        "most %u)",
                        len, VMEP_STORE_VALUE_MAX - VMEP_MEMBER_HEADER);
  if (status == VMEP_OK && !(value = vmep__malloc(VMEP_MEMBER_HEADER + len)))
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "vmep__member_publish: no memory for %zu bytes", len);
  if (status != VMEP_OK)
    return status;
  vmep__le_put(value, MEMBER_MAGIC, 4);
  vmep__le_put(value + 4, 0, 4);
  vmep__le_put(value + 8, vmep__store_client_session(c), 8);
  if (len)
    memcpy(value + VMEP_MEMBER_HEADER, rec, len);
  status = vmep__store_set(c, key, value, VMEP_MEMBER_HEADER + len);
  vmep__free(value);
  return status;
}

vmep_status vmep__member_withdraw(struct vmep_store_client *c, const char *ns,
                                  int rank) {
  char key[VMEP_STORE_KEY_MAX + 1];
  vmep_status status = check_common("vmep__member_withdraw", c, ns, rank);
  if (status == VMEP_OK)
    status = member_key("vmep__member_withdraw", ns, "member", rank, key);
  if (status == VMEP_OK)
    status = vmep__store_delete(c, key, NULL);
  return status;
}

uint64_t vmep__member_session(const struct vmep_store_client *c) {
  return c ? vmep__store_client_session(c) : 0;
}

/* What one GET of a record, its rank's dead key and (for a current
 * record) its rank's session key found. */
struct fetch_poll {
  int dead;
  void *rec; /* a copy of the caller's bytes, when present */
  size_t len;
  int present;
  size_t malformed;   /* the length of a value that is no record, else 0 */
  uint64_t publisher; /* the record's session */
  int held;           /* the rank's session key is present: */
  uint64_t holder;    /* the session holding the rank */
};

static vmep_status fetch_value(void *user, size_t index, const void *value,
                               size_t len) {
  struct fetch_poll *f = user;
  const unsigned char *v = value;
  if (index > 0) {
    if (index == 1)
      f->dead = v != NULL;
    else if (v && len == 8)
      f->held = 1, f->holder = vmep__le_get(v, 8);
    return VMEP_OK;
  }
  if (!v)
    return VMEP_OK;
  if (len < VMEP_MEMBER_HEADER || vmep__le_get(v, 4) != MEMBER_MAGIC) {
    f->malformed = len ? len : 1;
    return VMEP_OK;
  }
  len -= VMEP_MEMBER_HEADER;
  f->rec = vmep__malloc(len ? len : 1);
  if (!f->rec)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "member fetch: no memory for a record of %zu bytes", len);
  if (len)
    memcpy(f->rec, v + VMEP_MEMBER_HEADER, len);
  f->len = len;
  f->publisher = vmep__le_get(v + 8, 8);
  f->present = 1;
  return VMEP_OK;
}

/* The failure of a fetch's last poll `f` at its deadline. */
static vmep_status fetch_timeout(const struct fetch_poll *f, int rank,
                                 const char *key, int waited) {
  if (f->present)
    return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR,
                      "rank %d's record %s is still the one of session "
                      "%016llx, not of the rank's current process (%s "
                      "%016llx), after %d ms",
                      rank, key, (unsigned long long)f->publisher,
                      f->held ? "session" : "none connected, last session",
                      (unsigned long long)f->holder, waited);
  return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR,
                    "rank %d's record %s did not appear within %d ms", rank,
                    key, waited);
}

/* vmep__member_fetch (current 0) and vmep__member_fetch_current. */
static vmep_status fetch(const char *fn, struct vmep_store_client *c,
                         const char *ns, int rank, int timeout_ms, int current,
                         int wait_dead, void **rec_out, size_t *len_out,
                         uint64_t *session_out) {
  char key[VMEP_STORE_KEY_MAX + 1], dead_key[VMEP_STORE_DEAD_KEY_BYTES];
  char session_key[VMEP_STORE_SESSION_KEY_BYTES];
  vmep_status status = check_common(fn, c, ns, rank);
  if (status == VMEP_OK && (!rec_out || !len_out))
    status = bad_arg(fn, "rec_out or len_out is NULL");
  if (status == VMEP_OK)
    status = member_key(fn, ns, "member", rank, key);
  if (status != VMEP_OK)
    return status;
  vmep__store_dead_key(rank, dead_key);
  vmep__store_session_key(rank, session_key);
  const char *keys[3] = {key, dead_key, session_key};
  int waited = timeout_of(c, timeout_ms), pause = POLL_FIRST_MS;
  uint64_t deadline = vmep__now_ms() + (uint64_t)waited;
  for (;;) {
    struct fetch_poll f = {0, NULL, 0, 0, 0, 0, 0, 0};
    int late = vmep__now_ms() >= deadline;
    status = vmep__store_get_many(c, keys, current ? 3 : 2, fetch_value, &f);
    if (status == VMEP_OK && f.malformed)
      status = vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                          "rank %d's record %s is malformed (%zu bytes, no "
                          "member header)",
                          rank, key, f.malformed);
    if (status == VMEP_OK && f.dead && (!wait_dead || late))
      status = vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                          wait_dead ? "rank %d died (%s is set) and no process "
                                      "rejoined as it before its record %s "
                                      "could be fetched"
                                    : "rank %d died (%s is set) before its "
                                      "record %s could be fetched",
                          rank, dead_key, key);
    if (status == VMEP_OK && !f.dead && f.present &&
        (!current || (f.held && f.holder == f.publisher))) {
      *rec_out = f.rec;
      *len_out = f.len;
      if (session_out)
        *session_out = f.publisher;
      return VMEP_OK;
    }
    vmep__free(f.rec);
    if (status != VMEP_OK)
      return status;
    if (late)
      return fetch_timeout(&f, rank, key, waited);
    back_off(&pause, deadline);
  }
}

vmep_status vmep__member_fetch(struct vmep_store_client *c, const char *ns,
                               int rank, int timeout_ms, void **rec_out,
                               size_t *len_out) {
  return fetch("vmep__member_fetch", c, ns, rank, timeout_ms, 0, 0, rec_out,
               len_out, NULL);
}

vmep_status vmep__member_fetch_current(struct vmep_store_client *c,
                                       const char *ns, int rank, int timeout_ms,
                                       int wait_dead, void **rec_out,
                                       size_t *len_out, uint64_t *session_out) {
  return fetch("vmep__member_fetch_current", c, ns, rank, timeout_ms, 1,
               wait_dead, rec_out, len_out, session_out);
}

/* ---- deaths ----------------------------------------------------------- */

/* key_of[i] = "vmep/dead/<ranks[i]>" (ranks NULL: i), in one block. */
static char **dead_keys(const int *ranks, int n) {
  char **keys =
      vmep__malloc((size_t)n * (sizeof(char *) + VMEP_STORE_DEAD_KEY_BYTES));
  if (!keys) {
    vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
               "member: no memory for %d dead keys", n);
    return NULL;
  }
  char *text = (char *)(keys + n);
  for (int i = 0; i < n; i++) {
    keys[i] = text + (size_t)i * VMEP_STORE_DEAD_KEY_BYTES;
    vmep__store_dead_key(ranks ? ranks[i] : i, keys[i]);
  }
  return keys;
}

static vmep_status dead_value(void *user, size_t index, const void *value,
                              size_t len) {
  (void)len;
  ((unsigned char *)user)[index] = value != NULL;
  return VMEP_OK;
}

vmep_status vmep__member_is_dead(struct vmep_store_client *c, int rank,
                                 int *dead_out) {
  char key[VMEP_STORE_DEAD_KEY_BYTES];
  void *value = NULL;
  size_t len = 0;
  if (!c || !dead_out || rank < 0)
    return bad_arg("vmep__member_is_dead", "client, rank or dead_out");
  vmep__store_dead_key(rank, key);
  vmep_status status = vmep__store_get(c, key, dead_out, &value, &len);
  vmep__free(value);
  return status;
}

vmep_status vmep__member_dead(struct vmep_store_client *c, int max_ranks,
                              unsigned char *dead_out) {
  if (!c || !dead_out)
    return bad_arg("vmep__member_dead", "client or dead_out is NULL");
  if (max_ranks < 1 || max_ranks > VMEP_MEMBER_RANKS_MAX)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__member_dead: max_ranks %d is not in 1..%d",
                      max_ranks, VMEP_MEMBER_RANKS_MAX);
  char **keys = dead_keys(NULL, max_ranks);
  unsigned char *dead = vmep__calloc((size_t)max_ranks, 1);
  vmep_status status = VMEP_ERR_OUT_OF_MEMORY;
  if (keys && dead)
    status = vmep__store_get_many(c, (const char *const *)keys,
                                  (size_t)max_ranks, dead_value, dead);
  else if (keys)
    vmep__fail(status, VMEP_LOG_ERROR, "member: no memory for %d flags",
               max_ranks);
  if (status == VMEP_OK)
    memcpy(dead_out, dead, (size_t)max_ranks);
  vmep__free(dead);
  vmep__free(keys);
  return status;
}

vmep_status vmep__member_forget(struct vmep_store_client *c, int rank,
                                int *was_dead_out) {
  if (!c)
    return bad_arg("vmep__member_forget", "client is NULL");
  return vmep__store_forget(c, rank, was_dead_out);
}

/* ---- allgather among a rank set ---------------------------------------- */

/* One contribution inside a sync value. */
struct sync_part {
  uint64_t tag;
  const unsigned char *data;
  size_t len;
};

/* Splits a sync value into its current and previous contributions; 0 when
 * it is malformed. */
static int sync_parse(const unsigned char *v, size_t len,
                      struct sync_part part[2]) {
  for (int i = 0; i < 2; i++) {
    if (len < SYNC_HEADER)
      return 0;
    part[i].tag = vmep__le_get(v, 8);
    part[i].len = (size_t)vmep__le_get(v + 8, 4);
    if (len - SYNC_HEADER < part[i].len)
      return 0;
    part[i].data = v + SYNC_HEADER;
    v += SYNC_HEADER + part[i].len;
    len -= SYNC_HEADER + part[i].len;
  }
  return len == 0;
}

/* The state of one allgather between polls. */
struct sync {
  const char *ns;
  uint64_t tag;
  int self, n;
  const int *ranks;
  size_t bytes;
  unsigned char *all;
  unsigned char *have; /* [n]: 1 once ranks[i]'s part is in all */
  uint64_t *seen;      /* [n] or NULL: a part must start with a sequence
                          number above seen[i] (vmep__member_allgather_fresh) */
  int *poll_of;        /* [2n]: which participant a polled key is for */
  size_t nsync;        /* sync keys in the poll; dead keys follow */
  vmep_status status;  /* a participant's fault seen in the poll */
};

/* VMEP_ERR_PEER: "member allgather <ns> tag <tag>: <what>". */
static vmep_status sync_fault(const struct sync *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static vmep_status sync_fault(const struct sync *s, const char *fmt, ...) {
  char what[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof(what), fmt, ap);
  va_end(ap);
  return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                    "member allgather %s tag %llu: %s", s->ns,
                    (unsigned long long)s->tag, what);
}

static vmep_status sync_value(void *user, size_t index, const void *value,
                              size_t len) {
  struct sync *s = user;
  int i = s->poll_of[index], rank = s->ranks[i];
  struct sync_part part[2];
  if (!value || s->status != VMEP_OK)
    return VMEP_OK;
  if (index >= s->nsync) { /* a dead key: the first one found fails it */
    if (s->have[i])
      return VMEP_OK; /* its part came in this poll: it died after giving it */
    s->status = sync_fault(
        s, "rank %d died (" VMEP_STORE_DEAD_PREFIX "%d is set)", rank, rank);
    return VMEP_OK;
  }
  if (!sync_parse(value, len, part)) {
    s->status = sync_fault(s,
                           "rank %d's sync record of %zu bytes is "
                           "malformed",
                           rank, len);
    return VMEP_OK;
  }
  for (int p = 0; p < 2; p++) {
    if (part[p].tag != s->tag)
      continue;
    if (part[p].len != s->bytes) {
      s->status = sync_fault(s, "rank %d gave %zu bytes, this rank %zu", rank,
                             part[p].len, s->bytes);
      return VMEP_OK;
    }
    /* A part this caller consumed before (the same tag came round again):
     * wait for the fresh one. */
    if (s->seen && vmep__le_get(part[p].data, 8) <= s->seen[i])
      continue;
    if (s->seen)
      s->seen[i] = vmep__le_get(part[p].data, 8);
    if (s->bytes)
      memcpy(s->all + (size_t)i * s->bytes, part[p].data, s->bytes);
    s->have[i] = 1;
    return VMEP_OK;
  }
  return VMEP_OK; /* another round's: wait past it */
}

/* One poll: the sync keys and the dead keys of the ranks still missing, in
 * one GET (a consistent view) unless the values overflow a frame. A rank
 * that gave its part and died afterwards fails nothing: the result is
 * whole, and its death is the next call's to find. */
static vmep_status sync_poll(struct vmep_store_client *c, struct sync *s,
                             const char **keys, char *const *sync_keys,
                             char *const *dead) {
  size_t k = 0;
  for (int i = 0; i < s->n; i++)
    if (!s->have[i]) {
      s->poll_of[k] = i;
      keys[k++] = sync_keys[i];
    }
  s->nsync = k;
  for (int i = 0; i < s->n; i++)
    if (s->ranks[i] != s->self && !s->have[i]) {
      s->poll_of[k] = i;
      keys[k++] = dead[i];
    }
  s->status = VMEP_OK;
  vmep_status status = vmep__store_get_many(c, keys, k, sync_value, s);
  return status != VMEP_OK ? status : s->status;
}

/* "3, 5, 9": the ranks still missing. */
static void missing_list(const struct sync *s, char *text, size_t cap) {
  int listed = 0;
  text[0] = '\0';
  for (int i = 0; i < s->n; i++) {
    if (s->have[i])
      continue;
    size_t at = strlen(text);
    if (listed++ == MISSING_LISTED) {
      snprintf(text + at, cap - at, ", ...");
      return;
    }
    snprintf(text + at, cap - at, "%s%d", at ? ", " : "", s->ranks[i]);
  }
}

static vmep_status sync_check_args(const char *ns, int self, const int *ranks,
                                   int n, const void *mine, size_t bytes,
                                   const void *all_out) {
  const char *fn = "vmep__member_allgather";
  int found = 0;
  if (!ns || !ranks || n < 1 || n > VMEP_MEMBER_RANKS_MAX)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: ns %s, ranks %s, n %d (1..%d)", fn,
                      ns ? "set" : "NULL", ranks ? "set" : "NULL", n,
                      VMEP_MEMBER_RANKS_MAX);
  if (bytes && (!mine || !all_out))
    return bad_arg(fn, "mine or all_out is NULL");
  if (bytes > (VMEP_STORE_VALUE_MAX - 2 * SYNC_HEADER) / 2)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: %zu bytes per rank (at most %u)", fn, bytes,
                      (VMEP_STORE_VALUE_MAX - 2 * SYNC_HEADER) / 2);
  for (int i = 0; i < n; i++) {
    if (ranks[i] < 0)
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "%s: ranks[%d] is %d", fn, i, ranks[i]);
    for (int j = 0; j < i; j++)
      if (ranks[j] == ranks[i])
        return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                          "%s: rank %d is listed twice", fn, ranks[i]);
    found |= ranks[i] == self;
  }
  if (!found)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: self (rank %d) is not among the %d ranks", fn, self,
                      n);
  return VMEP_OK;
}

/* SETs this rank's sync value: `tag` and mine, then the contribution it
 * replaces (or, when it is for the same tag, the one before that). */
static vmep_status sync_publish(struct vmep_store_client *c, const char *key,
                                uint64_t tag, const void *mine, size_t bytes) {
  void *old = NULL;
  size_t old_len = 0;
  int found = 0;
  struct sync_part part[2] = {{0, NULL, 0}, {0, NULL, 0}};
  vmep_status status = vmep__store_get(c, key, &found, &old, &old_len);
  if (status != VMEP_OK)
    return status;
  if (!found || !sync_parse(old, old_len, part))
    memset(part, 0, sizeof(part));
  const struct sync_part *prev = part[0].tag == tag ? &part[1] : &part[0];
  size_t len = 2 * SYNC_HEADER + bytes + prev->len;
  unsigned char *v = vmep__malloc(len);
  if (!v) {
    vmep__free(old);
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "member allgather: no memory for %zu bytes", len);
  }
  vmep__le_put(v, tag, 8);
  vmep__le_put(v + 8, bytes, 4);
  if (bytes)
    memcpy(v + SYNC_HEADER, mine, bytes);
  vmep__le_put(v + SYNC_HEADER + bytes, prev->tag, 8);
  vmep__le_put(v + SYNC_HEADER + bytes + 8, prev->len, 4);
  if (prev->len)
    memcpy(v + 2 * SYNC_HEADER + bytes, prev->data, prev->len);
  status = vmep__store_set(c, key, v, len);
  vmep__free(v);
  vmep__free(old);
  return status;
}

/* The key blocks of one allgather: sync keys, dead keys, the poll list. */
struct sync_keys {
  char *text;        /* n sync keys of `stride` bytes */
  char **sync;       /* [n] */
  char **dead;       /* [n] */
  const char **poll; /* [2n] */
};

static void sync_keys_free(struct sync_keys *k) {
  vmep__free(k->text);
  vmep__free(k->sync);
  vmep__free(k->dead);
  vmep__free(k->poll);
}

static vmep_status sync_keys_make(const char *ns, const int *ranks, int n,
                                  struct sync_keys *k) {
  size_t stride = strlen(ns) + 32;
  k->text = vmep__malloc((size_t)n * stride);
  k->sync = vmep__malloc((size_t)n * sizeof(*k->sync));
  k->poll = vmep__malloc(2 * (size_t)n * sizeof(*k->poll));
  k->dead = k->text && k->sync && k->poll ? dead_keys(ranks, n) : NULL;
  if (!k->dead) {
    sync_keys_free(k);
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "member allgather: no memory for the keys of %d ranks",
                      n);
  }
  for (int i = 0; i < n; i++) {
    k->sync[i] = k->text + (size_t)i * stride;
    snprintf(k->sync[i], stride, "%s/sync/%d", ns, ranks[i]);
  }
  return VMEP_OK;
}

static vmep_status allgather(struct vmep_store_client *c, const char *ns,
                             uint64_t tag, int self, const int *ranks, int n,
                             const void *mine, size_t bytes, void *all_out,
                             int timeout_ms, uint64_t *seen) {
  struct sync s = {.ns = ns,
                   .tag = tag,
                   .self = self,
                   .n = n,
                   .ranks = ranks,
                   .bytes = bytes,
                   .all = all_out,
                   .seen = seen};
  struct sync_keys k = {NULL, NULL, NULL, NULL};
  char key[VMEP_STORE_KEY_MAX + 1], missing[128];
  vmep_status status =
      c ? sync_check_args(ns, self, ranks, n, mine, bytes, all_out)
        : bad_arg("vmep__member_allgather", "client is NULL");
  if (status == VMEP_OK)
    status = member_key("vmep__member_allgather", ns, "sync", self, key);
  if (status != VMEP_OK)
    return status;
  int waited = timeout_of(c, timeout_ms), pause = POLL_FIRST_MS;
  uint64_t deadline = vmep__now_ms() + (uint64_t)waited;
  s.have = vmep__calloc((size_t)n, 1);
  s.poll_of = vmep__malloc(2 * (size_t)n * sizeof(*s.poll_of));
  status = s.have && s.poll_of
               ? sync_keys_make(ns, ranks, n, &k)
               : vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                            "member allgather: no memory for %d ranks", n);
  if (status == VMEP_OK)
    status = sync_publish(c, key, tag, mine, bytes);
  while (status == VMEP_OK) {
    status = sync_poll(c, &s, k.poll, k.sync, k.dead);
    if (status != VMEP_OK || !memchr(s.have, 0, (size_t)n))
      break;
    if (vmep__now_ms() >= deadline) {
      missing_list(&s, missing, sizeof(missing));
      status = vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR,
                          "member allgather %s tag %llu: ranks %s of %d did "
                          "not contribute within %d ms",
                          ns, (unsigned long long)tag, missing, n, waited);
      break;
    }
    back_off(&pause, deadline);
  }
  sync_keys_free(&k);
  vmep__free(s.poll_of);
  vmep__free(s.have);
  return status;
}

vmep_status vmep__member_allgather(struct vmep_store_client *c, const char *ns,
                                   uint64_t tag, int self, const int *ranks,
                                   int n, const void *mine, size_t bytes,
                                   void *all_out, int timeout_ms) {
  return allgather(c, ns, tag, self, ranks, n, mine, bytes, all_out, timeout_ms,
                   NULL);
}

vmep_status vmep__member_allgather_fresh(struct vmep_store_client *c,
                                         const char *ns, uint64_t tag, int self,
                                         const int *ranks, int n,
                                         const void *mine, size_t bytes,
                                         void *all_out, int timeout_ms,
                                         uint64_t *seen) {
  if (bytes < 8 || !seen)
    return bad_arg("vmep__member_allgather_fresh",
                   "parts need an 8-byte sequence number and seen[n]");
  return allgather(c, ns, tag, self, ranks, n, mine, bytes, all_out, timeout_ms,
                   seen);
}
