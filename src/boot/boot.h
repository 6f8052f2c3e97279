/*
 * boot: how the processes of a job find each other. A TCP key-value store
 * (rendezvous, collectives, membership), the process group built on it,
 * launch-environment detection, and passing file descriptors between
 * processes of one node. Moves bytes and fds only: never includes mem.
 */
#ifndef VMEP_BOOT_H
#define VMEP_BOOT_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* ---- launch environment (launch.c) ------------------------------------ */

/* Where the rank, size and store address of this process came from. */
struct vmep_launch_env {
  const char *source; /* "vmep-run", "torchrun", "openmpi", "slurm" */
  int rank;
  int size;
  int local_rank;
  char store_addr[256]; /* "host:port" */
  char token[256];      /* "" when none is set */
  char job_id[128];     /* names the job's Unix sockets */
};

/* Longest job id: it is part of an abstract Unix socket name, which must
 * fit in sun_path with the "vmep-" prefix and the rank. */
#define VMEP_JOB_ID_MAX 64

/* Looks up one environment variable; NULL when it is not set. `user` is the
 * pointer given to vmep__launch_env_parse. */
typedef const char *(*vmep_env_lookup_fn)(const char *name, void *user);

/*
 * Detects the launcher from variables read through `lookup` (so tests can
 * feed tables), trying vmep-run, torchrun, Open MPI and Slurm in that
 * order; the first whose rank, size or local-rank variable is set wins.
 * An empty value counts as unset. Integers must be plain decimal and in
 * range, rank < size and local rank <= rank. The store address is
 * VMEP_STORE_ADDR (required by vmep-run, Open MPI and Slurm), or for
 * torchrun MASTER_ADDR:(MASTER_PORT + 1), since torch's own store holds
 * MASTER_PORT. The token is VMEP_JOB_TOKEN ("" when unset); the job id is
 * VMEP_JOB_ID, else derived from the store address, so that every rank of
 * a job gets the same one. Missing, contradictory or malformed variables
 * give VMEP_ERR_INVALID_ARG with a message naming them and the launcher.
 * *env_out is written only on success.
 */
vmep_status vmep__launch_env_parse(vmep_env_lookup_fn lookup, void *user,
                                   struct vmep_launch_env *env_out);

/* vmep__launch_env_parse over the process environment (getenv). */
vmep_status vmep__launch_env_detect(struct vmep_launch_env *env_out);

/* ---- store and group (store_proto.c, store_server.c, store_client.c,
 *      group.c) ------------------------------------------------------------ */

/* ---- fd passing (fdpass.c) -------------------------------------------- */

#endif /* VMEP_BOOT_H */
