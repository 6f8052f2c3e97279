/*
 * The process group's insides, shared by group.c (the public API) and
 * group_ops.c (its backends): the group struct and the backend table.
 * Private to boot: nothing outside src/boot includes this.
 */
#ifndef VMEP_BOOT_GROUP_H
#define VMEP_BOOT_GROUP_H

#include <stdatomic.h>

#include "boot/boot.h"
#include "store/store.h"

/* A backend: how the group's collectives and its teardown are done. `fn`
 * names the public call in messages. The elastic backend refuses every
 * collective. */
struct vmep_group_ops {
  /* VMEP_OK when the backend runs collectives, else why not (naming fn):
   * checked before a call's own argument checks. */
  vmep_status (*usable)(const char *fn);
  vmep_status (*allgatherv)(vmep_group *g, const char *fn, const void *send,
                            size_t bytes, void *recv, size_t cap,
                            size_t *sizes);
  /* Every rank gives `bytes`. */
  vmep_status (*allgather)(vmep_group *g, const char *fn, const void *send,
                           size_t bytes, void *recv);
  vmep_status (*barrier)(vmep_group *g, const char *fn);
  /* Leaves the backend (the group's memory is freed by the caller). */
  vmep_status (*destroy)(vmep_group *g);
};

struct vmep_group {
  const struct vmep_group_ops *ops;
  atomic_int holders; /* buffers and windows that use the group */
  int rank, size, local_rank;
  int *node_of; /* [size] */
  int timeout_ms;
  int nodes; /* VMEP_NODES: pretend nodes, 0 for host identity */
  struct vmep_store_server *server; /* rank 0 of a store group */
  struct vmep_store_gather gather;  /* a store group's collectives */
  vmep_allgather_fn allgather;      /* a custom group's */
  vmep_barrier_fn barrier;
  void *user;
  char token[VMEP_STORE_TOKEN_MAX + 1];
  char job_id[sizeof(((struct vmep_launch_env *)0)->job_id)];
};

/* The backends (group_ops.c), one chosen at creation: the TCP store, a
 * framework's callbacks, or an elastic group's (which refuses every
 * collective with the message vmep_group_join documents). */
extern const struct vmep_group_ops vmep__group_store_ops;
extern const struct vmep_group_ops vmep__group_custom_ops;
extern const struct vmep_group_ops vmep__group_elastic_ops;

#endif /* VMEP_BOOT_GROUP_H */
