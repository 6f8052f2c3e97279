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

/* Largest payload one vmep__fd_send message carries. */
#define VMEP_FD_PAYLOAD_MAX 1024

/*
 * Sends `bytes` (<= VMEP_FD_PAYLOAD_MAX) of `payload` and, when fd >= 0, a
 * duplicate of `fd` (SCM_RIGHTS) as one message over the connected Unix
 * socket `sock` (SOCK_SEQPACKET or SOCK_STREAM). `fd` stays the caller's.
 * `peer` names the other end in messages ("rank 3"). VMEP_ERR_SYSTEM on a
 * failed sendmsg, VMEP_ERR_INVALID_ARG for bad arguments.
 */
vmep_status vmep__fd_send(int sock, int fd, const void *payload, size_t bytes,
                          const char *peer);

/*
 * Receives one vmep__fd_send message from `sock`, waiting at most
 * timeout_ms (-1: no limit; then VMEP_ERR_TIMEOUT naming `peer`). The
 * payload goes to payload[0..capacity) and its size to *bytes_out; the fd
 * that came with it (close-on-exec, now the caller's) to *fd_out, or -1
 * when none came. VMEP_ERR_PEER when the peer closed the connection,
 * VMEP_ERR_INVALID_ARG for a malformed or oversize message. On failure no
 * received fd stays open, the outputs are untouched, and the connection's
 * framing is lost: close it.
 */
vmep_status vmep__fd_recv(int sock, int timeout_ms, int *fd_out, void *payload,
                          size_t capacity, size_t *bytes_out, const char *peer);

/* The fetch protocol between vmep__fd_fetch and the fd server: a request
 * payload is VMEP_FD_REQUEST_MAGIC, the u64 key (little-endian), then the
 * token; a reply payload is one enum vmep_fd_reply byte, then a reason
 * text, with the fd attached to VMEP_FD_REPLY_OK. */
#define VMEP_FD_TOKEN_MAX 255
#define VMEP_FD_REQUEST_MAGIC "VFDQ"
#define VMEP_FD_REQUEST_HEADER 12 /* magic and key */

enum vmep_fd_reply {
  VMEP_FD_REPLY_OK = 0,
  VMEP_FD_REPLY_REFUSED = 1,    /* wrong uid or token: VMEP_ERR_PEER */
  VMEP_FD_REPLY_BAD_REQUEST = 2 /* malformed, unknown key: INVALID_ARG */
};

struct sockaddr_un;

/* The fd server address of `rank` in job `job_id`: the abstract name
 * "\0vmep-<job_id>-<rank>" and its length for bind/connect.
 * VMEP_ERR_INVALID_ARG for an empty or too long job id or a negative rank. */
vmep_status vmep__fd_socket_address(const char *job_id, int rank,
                                    struct sockaddr_un *addr, size_t *len_out);

/* VMEP_ERR_INVALID_ARG when `token` (NULL: empty) exceeds
 * VMEP_FD_TOKEN_MAX characters. */
vmep_status vmep__fd_token_check(const char *token);

/* A process's fd server: a thread answering fetches of offered fds on the
 * abstract Unix socket "\0vmep-<job_id>-<rank>". */
struct vmep_fd_server;

/*
 * Starts the fd server of `rank` in job `job_id` (1..VMEP_JOB_ID_MAX
 * characters). A request is answered only when the caller runs as our uid
 * (SO_PEERCRED) and presents `token` (NULL or "": the empty token);
 * refusals are logged as warnings and the server keeps serving.
 * VMEP_ERR_SYSTEM naming the socket when it is taken (another process
 * serves that rank). On failure nothing is left open.
 */
vmep_status vmep__fd_server_start(const char *job_id, int rank,
                                  const char *token,
                                  struct vmep_fd_server **server_out);

/* Offers a duplicate of `fd` under `key` (the caller keeps `fd`).
 * VMEP_ERR_INVALID_ARG when `key` is already offered. Thread-safe. */
vmep_status vmep__fd_server_offer(struct vmep_fd_server *server, uint64_t key,
                                  int fd);

/* Closes the duplicate offered under `key`; fds already fetched stay valid
 * in the fetching process. VMEP_ERR_INVALID_ARG for an unknown key. */
vmep_status vmep__fd_server_withdraw(struct vmep_fd_server *server,
                                     uint64_t key);

/* Stops the thread and closes the socket and every offered fd. Cannot fail;
 * NULL is a no-op. Not to be called from a forked child. */
void vmep__fd_server_stop(struct vmep_fd_server *server);

/*
 * Fetches the fd that rank `rank` of job `job_id` offers under `key`,
 * retrying the connection until that rank's server is up or timeout_ms
 * (>= 0) has passed: VMEP_ERR_TIMEOUT naming the rank. Before sending the
 * token it checks that the server runs as our uid (VMEP_ERR_PEER if not).
 * A refusal is VMEP_ERR_PEER (wrong token or uid) or VMEP_ERR_INVALID_ARG
 * (unknown key, malformed request), with the server's reason. On success
 * *fd_out is a new close-on-exec fd the caller owns.
 */
vmep_status vmep__fd_fetch(const char *job_id, int rank, const char *token,
                           uint64_t key, int timeout_ms, int *fd_out);

#endif /* VMEP_BOOT_H */
