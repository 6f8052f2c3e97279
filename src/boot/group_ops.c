/*
 * The process group's backends: how a store group, a custom group (a
 * framework's allgather and barrier callbacks) and an elastic group run
 * the collectives and leave. group.c picks one table at creation and
 * dispatches every call through it, so no call tests the group's kind.
 */
#include <string.h>

#include "boot/group.h"

/* ---- backends -------------------------------------------------------- */

static vmep_status runs_collectives(const char *fn) {
  (void)fn;
  return VMEP_OK;
}

static vmep_status callback_failed(const char *what, vmep_status status) {
  return vmep__fail(status == VMEP_OK ? VMEP_ERR_PEER : status, VMEP_LOG_ERROR,
                    "the group's %s callback returned %s", what,
                    vmep_status_name(status));
}

/* custom: allgatherv through the callback: sizes first, then payloads
 * padded to the largest. Every rank makes the same callback calls, even
 * one whose recv is too small (it fails after them). */
static vmep_status custom_allgatherv(vmep_group *g, const char *fn,
                                     const void *send, size_t bytes, void *recv,
                                     size_t cap, size_t *sizes) {
  uint64_t mine = bytes, *all = vmep__calloc((size_t)g->size, sizeof(*all));
  unsigned char *padded = NULL, *gathered = NULL;
  size_t max = 0, total = 0;
  int overflow = 0;
  vmep_status status = VMEP_OK;
  (void)fn;
  if (!all)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "allgatherv: no memory for %d sizes", g->size);
  if ((status = g->allgather(&mine, sizeof(mine), all, g->user)) != VMEP_OK) {
    status = callback_failed("allgather", status);
    goto out;
  }
  for (int r = 0; r < g->size; r++) {
    max = all[r] > max ? (size_t)all[r] : max;
    overflow |= all[r] > SIZE_MAX - total;
    total += overflow ? 0 : (size_t)all[r];
  }
  if (max > 0) {
    padded = vmep__calloc(1, max);
    gathered = max <= SIZE_MAX / (size_t)g->size
                   ? vmep__malloc(max * (size_t)g->size)
                   : NULL;
    if (!padded || !gathered) {
      status =
          vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                     "allgatherv: no memory for %d x %zu bytes", g->size, max);
      goto out;
    }
    if (bytes)
      memcpy(padded, send, bytes);
    if ((status = g->allgather(padded, max, gathered, g->user)) != VMEP_OK) {
      status = callback_failed("allgather", status);
      goto out;
    }
  }
  if (overflow || total > cap) {
    status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "allgatherv: the ranks send %zu bytes in all, more "
                        "than recv_capacity %zu",
                        total, cap);
    goto out;
  }
  total = 0;
  for (int r = 0; r < g->size; r++) {
    if (all[r])
      memcpy((unsigned char *)recv + total, gathered + (size_t)r * max,
             (size_t)all[r]);
    sizes[r] = (size_t)all[r];
    total += sizes[r];
  }
out:
  vmep__free(gathered);
  vmep__free(padded);
  vmep__free(all);
  return status;
}

/* custom: a fixed-size allgather is the callback itself. */
static vmep_status custom_allgather(vmep_group *g, const char *fn,
                                    const void *send, size_t bytes,
                                    void *recv) {
  (void)fn;
  vmep_status status = g->allgather(send, bytes, recv, g->user);
  return status == VMEP_OK ? VMEP_OK : callback_failed("allgather", status);
}

/* An empty allgatherv through the group's backend. */
static vmep_status empty_round(vmep_group *g, const char *fn) {
  size_t *sizes = vmep__calloc((size_t)g->size, sizeof(*sizes));
  if (!sizes)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "barrier: no memory for %d sizes", g->size);
  vmep_status status = g->ops->allgatherv(g, fn, NULL, 0, NULL, 0, sizes);
  vmep__free(sizes);
  return status;
}

/* custom: the barrier callback, else an empty allgatherv. */
static vmep_status custom_barrier(vmep_group *g, const char *fn) {
  if (!g->barrier)
    return empty_round(g, fn);
  vmep_status status = g->barrier(g->user);
  return status == VMEP_OK ? VMEP_OK : callback_failed("barrier", status);
}

static vmep_status custom_destroy(vmep_group *g) {
  (void)g;
  return VMEP_OK;
}

static vmep_status store_allgatherv(vmep_group *g, const char *fn,
                                    const void *send, size_t bytes, void *recv,
                                    size_t cap, size_t *sizes) {
  (void)fn;
  return vmep__store_allgatherv(&g->gather, send, bytes, recv, cap, sizes);
}

/* store: an allgatherv whose sizes must all be `bytes`. */
static vmep_status store_allgather(vmep_group *g, const char *fn,
                                   const void *send, size_t bytes, void *recv) {
  size_t *sizes = vmep__calloc((size_t)g->size, sizeof(*sizes));
  if (!sizes)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "allgather: no memory for %d sizes", g->size);
  vmep_status status = store_allgatherv(g, fn, send, bytes, recv,
                                        bytes * (size_t)g->size, sizes);
  for (int r = 0; status == VMEP_OK && r < g->size; r++)
    if (sizes[r] != bytes)
      status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                          "allgather: rank %d gave %zu bytes, rank %d %zu", r,
                          sizes[r], g->rank, bytes);
  vmep__free(sizes);
  return status;
}

/*
 * A store group's store lives as long as rank 0's group, so a new group on
 * the same address gets a new store, and a rank that is done with the old
 * group may try the address while the old store still serves the others.
 * Two rules keep it off the old one: rank 0 retires its store before
 * draining it (it starts no new session, only old ones may resume to say
 * goodbye), and every rank records the store instance it leaves, which
 * its later creates avoid (even before rank 0 retires it). Their clients
 * retry until the new store is up.
 */
static vmep_status store_destroy(vmep_group *g) {
  vmep_status status = VMEP_OK;
  if (g->server)
    vmep__store_server_retire(g->server);
  if (g->gather.client)
    vmep__store_left(vmep__store_client_instance(g->gather.client));
  vmep__store_client_close(g->gather.client, 1);
  if (g->server) {
    /* Serve the others until they have left too (bounded). */
    status = vmep__store_server_drain(g->server, g->timeout_ms);
    vmep__store_server_stop(g->server);
  }
  return status;
}

static vmep_status elastic_refuse(const char *fn) {
  return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                    "%s: an elastic group (vmep_group_join) has no fixed "
                    "membership, so it has no collectives (EP buffers over "
                    "it use connect/disconnect)",
                    fn);
}

static vmep_status elastic_allgatherv(vmep_group *g, const char *fn,
                                      const void *send, size_t bytes,
                                      void *recv, size_t cap, size_t *sizes) {
  (void)g, (void)send, (void)bytes, (void)recv, (void)cap, (void)sizes;
  return elastic_refuse(fn);
}

static vmep_status elastic_allgather(vmep_group *g, const char *fn,
                                     const void *send, size_t bytes,
                                     void *recv) {
  (void)g, (void)send, (void)bytes, (void)recv;
  return elastic_refuse(fn);
}

static vmep_status elastic_barrier(vmep_group *g, const char *fn) {
  (void)g;
  return elastic_refuse(fn);
}

/* An elastic store outlives its members: a goodbye, and no instance to
 * avoid later. */
static vmep_status elastic_destroy(vmep_group *g) {
  vmep__store_client_close(g->gather.client, 1);
  return VMEP_OK;
}

const struct vmep_group_ops vmep__group_store_ops = {
    runs_collectives, store_allgatherv, store_allgather, empty_round,
    store_destroy};
const struct vmep_group_ops vmep__group_custom_ops = {
    runs_collectives, custom_allgatherv, custom_allgather, custom_barrier,
    custom_destroy};
const struct vmep_group_ops vmep__group_elastic_ops = {
    elastic_refuse, elastic_allgatherv, elastic_allgather, elastic_barrier,
    elastic_destroy};
