/*
 * Membership over the store, for elastic jobs whose ranks come and go:
 * the ranks' published deaths, and an allgather among an explicit set of
 * ranks (records are in member_record.c). The store's WAIT fails as
 * soon as any rank dies, which in an elastic job is normal, so everything
 * here polls GETs that answer at once (backing off from 1 to 20 ms) and
 * reads the store's published deaths ("vmep/dead/<rank>") of only the
 * ranks it waits for.
 */
#include <stdarg.h>

#include "boot/member.h"

#define MISSING_LISTED 8 /* ranks named in a timeout message */
/* A sync value: u64 tag, u32 length, bytes; then the same for the
 * contribution before it (tag 0 and no bytes when there was none). */
#define SYNC_HEADER 12

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
    return vmep__member_bad_arg("vmep__member_is_dead",
                                "client, rank or dead_out");
  vmep__store_dead_key(rank, key);
  vmep_status status = vmep__store_get(c, key, dead_out, &value, &len);
  vmep__free(value);
  return status;
}

vmep_status vmep__member_dead(struct vmep_store_client *c, int max_ranks,
                              unsigned char *dead_out) {
  if (!c || !dead_out)
    return vmep__member_bad_arg("vmep__member_dead",
                                "client or dead_out is NULL");
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
    return vmep__member_bad_arg("vmep__member_forget", "client is NULL");
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
    return vmep__member_bad_arg(fn, "mine or all_out is NULL");
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

/* Frees the keys and empties `k`, so that freeing it again is harmless
 * (a failed make frees, and its caller frees once more on the way out). */
static void sync_keys_free(struct sync_keys *k) {
  vmep__free(k->text);
  vmep__free(k->sync);
  vmep__free(k->dead);
  vmep__free(k->poll);
  memset(k, 0, sizeof(*k));
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
        : vmep__member_bad_arg("vmep__member_allgather", "client is NULL");
  if (status == VMEP_OK)
    status = vmep__member_key("vmep__member_allgather", ns, "sync", self, key);
  if (status != VMEP_OK)
    return status;
  int waited = vmep__member_timeout(c, timeout_ms),
      pause = VMEP_MEMBER_POLL_FIRST_MS;
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
    vmep__member_back_off(&pause, deadline);
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
    return vmep__member_bad_arg(
        "vmep__member_allgather_fresh",
        "parts need an 8-byte sequence number and seen[n]");
  return allgather(c, ns, tag, self, ranks, n, mine, bytes, all_out, timeout_ms,
                   seen);
}
