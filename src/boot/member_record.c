/*
 * Member records of elastic jobs: a member publishes its record under
 * "<ns>/member/<rank>" behind a header naming its store session, and
 * others fetch it: any record (vmep__member_fetch), or only the one of
 * the rank's current process (vmep__member_fetch_current), which a
 * predecessor's leftover or a false death cannot fool. Polls GETs that
 * answer at once, as everything in membership does (see member.c).
 */
#include "boot/member.h"

/* ---- records ---------------------------------------------------------- */

/* A stored record: u32 MEMBER_MAGIC, u32 0, u64 the publisher's store
 * session, then the caller's bytes. */
#define MEMBER_MAGIC 0x31524d56u /* "VMR1" */

vmep_status vmep__member_publish(struct vmep_store_client *c, const char *ns,
                                 int rank, const void *rec, size_t len) {
  char key[VMEP_STORE_KEY_MAX + 1];
  unsigned char *value = NULL;
  vmep_status status = vmep__member_check("vmep__member_publish", c, ns, rank);
  if (status == VMEP_OK && len && !rec)
    status = vmep__member_bad_arg("vmep__member_publish", "rec is NULL");
  if (status == VMEP_OK)
    status = vmep__member_key("vmep__member_publish", ns, "member", rank, key);
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
  vmep_status status = vmep__member_check("vmep__member_withdraw", c, ns, rank);
  if (status == VMEP_OK)
    status = vmep__member_key("vmep__member_withdraw", ns, "member", rank, key);
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
  vmep_status status = vmep__member_check(fn, c, ns, rank);
  if (status == VMEP_OK && (!rec_out || !len_out))
    status = vmep__member_bad_arg(fn, "rec_out or len_out is NULL");
  if (status == VMEP_OK)
    status = vmep__member_key(fn, ns, "member", rank, key);
  if (status != VMEP_OK)
    return status;
  vmep__store_dead_key(rank, dead_key);
  vmep__store_session_key(rank, session_key);
  const char *keys[3] = {key, dead_key, session_key};
  int waited = vmep__member_timeout(c, timeout_ms),
      pause = VMEP_MEMBER_POLL_FIRST_MS;
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
    vmep__member_back_off(&pause, deadline);
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
