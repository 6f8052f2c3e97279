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

/* ---- store and group (store_proto.c, store_server.c, store_client.c,
 *      group.c) ------------------------------------------------------------ */

/* ---- fd passing (fdpass.c) -------------------------------------------- */

#endif /* VMEP_BOOT_H */
