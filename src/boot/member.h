/*
 * Helpers shared by the membership files (member.c: deaths and the
 * allgather; member_record.c: records), inline so that nothing new is
 * exported. Private to boot.
 */
#ifndef VMEP_BOOT_MEMBER_H
#define VMEP_BOOT_MEMBER_H

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "boot/boot.h"
#include "store/store.h"

/* Polls back off from the first pause to the longest, doubling. */
#define VMEP_MEMBER_POLL_FIRST_MS 1
#define VMEP_MEMBER_POLL_MAX_MS 20

/* VMEP_ERR_INVALID_ARG "<fn>: <what>". */
static inline vmep_status vmep__member_bad_arg(const char *fn,
                                               const char *what) {
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: %s", fn, what);
}

/* key[VMEP_STORE_KEY_MAX + 1] = "<ns>/<kind>/<rank>". */
static inline vmep_status vmep__member_key(const char *fn, const char *ns,
                                           const char *kind, int rank,
                                           char *key) {
  int n = snprintf(key, VMEP_STORE_KEY_MAX + 1, "%s/%s/%d", ns, kind, rank);
  if (n < 0 || n > (int)VMEP_STORE_KEY_MAX)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: namespace of %zu bytes makes a key over the "
                      "store's limit of %u",
                      fn, strlen(ns), VMEP_STORE_KEY_MAX);
  return VMEP_OK;
}

/* A client and a namespace given, and a rank >= 0. */
static inline vmep_status vmep__member_check(const char *fn,
                                             const struct vmep_store_client *c,
                                             const char *ns, int rank) {
  if (!c || !ns)
    return vmep__member_bad_arg(fn, c ? "ns is NULL" : "client is NULL");
  if (rank < 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: rank %d (ranks are >= 0)", fn, rank);
  return VMEP_OK;
}

/* timeout_ms, or the client's when it is < 0. */
static inline int vmep__member_timeout(struct vmep_store_client *c,
                                       int timeout_ms) {
  return timeout_ms < 0 ? vmep__store_client_timeout(c) : timeout_ms;
}

/* Sleeps *pause_ms (not past the deadline) and doubles it up to
 * VMEP_MEMBER_POLL_MAX_MS. */
static inline void vmep__member_back_off(int *pause_ms, uint64_t deadline) {
  int ms =
      *pause_ms < vmep__ms_left(deadline) ? *pause_ms : vmep__ms_left(deadline);
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
  *pause_ms = *pause_ms * 2 > VMEP_MEMBER_POLL_MAX_MS ? VMEP_MEMBER_POLL_MAX_MS
                                                      : *pause_ms * 2;
}

#endif /* VMEP_BOOT_MEMBER_H */
