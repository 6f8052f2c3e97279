/*
 * boot: how the processes of a job find each other, as the layers above
 * see it: the process group (over the store of src/store, or a framework's
 * callbacks), membership records of elastic jobs, launch-environment
 * detection, and passing file descriptors between processes of one node.
 * The store's wire format, tables and server stay in store/store.h, which
 * this header never includes: upper layers hold a store client only as an
 * opaque pointer. Moves bytes and fds only: never includes mem.
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

/*
 * The job token and job id of a group made from explicit arguments, by
 * the rules and with the messages of vmep__launch_env_parse: the token is
 * `token` (NULL: VMEP_JOB_TOKEN, "" when unset), the job id VMEP_JOB_ID,
 * else derived from `store_addr` ("host:port", checked as a launcher's),
 * else "" when store_addr is NULL (the caller names the job). Variables
 * are read through the configuration table. In *env_out only source,
 * store_addr, token and job_id mean something (rank and local_rank are
 * -1); it is written only on success.
 */
vmep_status vmep__launch_job_names(const char *token, const char *store_addr,
                                   struct vmep_launch_env *env_out);

/* ---- the store, as upper layers see it -------------------------------- */

/* One connection to the job's store (store/store.h): upper layers get it
 * from vmep__group_store and pass it to the member functions below. */
struct vmep_store_client;

/* ---- allgatherv over the store (store_gather.c) ---- */

/* The collectives one rank runs over a store client; every rank of the
 * group runs the same sequence. */
struct vmep_store_gather {
  struct vmep_store_client *client;
  int rank, size;
  uint64_t round;  /* collectives begun so far */
  size_t parts[2]; /* keys this rank wrote in the last two rounds */
};

/*
 * Collective: recv[0..recv_capacity) gets every rank's payload (this
 * rank's is send[0..bytes)) concatenated in rank order, sizes_out[size]
 * their sizes. VMEP_ERR_INVALID_ARG when the total exceeds recv_capacity
 * (every rank sees the same sizes, so each one with too small a buffer
 * fails, and the round completes on all); store failures as
 * vmep__store_wait_get gives them (VMEP_ERR_PEER naming a dead rank,
 * VMEP_ERR_TIMEOUT naming missing keys). Deletes this rank's keys of two
 * rounds before. Its keys are "vmep/<round>/rank<r>/part<p>": other users
 * of the store pick other names. Not thread-safe per gather.
 */
vmep_status vmep__store_allgatherv(struct vmep_store_gather *gather,
                                   const void *send, size_t bytes, void *recv,
                                   size_t recv_capacity, size_t *sizes_out);

/* ---- group internals (group.c) ---- */

/* The store client of a store-backed group (NULL for a custom group), for
 * boot-level code that needs more than the collectives (e.g. publishing
 * descriptors). Same thread rules as the group's collectives. */
struct vmep_store_client *vmep__group_store(const vmep_group *group);
/* The job id (names the job's Unix sockets; the same on every rank) and
 * the job token; valid while the group lives. */
const char *vmep__group_job_id(const vmep_group *group);
const char *vmep__group_token(const vmep_group *group);
/* VMEP_TIMEOUT_MS as read when the group was created. */
int vmep__group_timeout_ms(const vmep_group *group);
/* VMEP_NODES as read when the group was created: N > 0 when its node
 * indices are N pretend nodes (rank r in node r * N / size; for a group
 * of vmep_group_join, r * N / max_ranks), 0 when they come from host
 * identity. Every rank of a created group has the same value. */
int vmep__group_pretend_nodes(const vmep_group *group);
/* 1 for a group made by vmep_group_join (no fixed membership), else 0. */
int vmep__group_elastic(const vmep_group *group);
/*
 * A user of the group (an EP buffer, a window) holds it for as long as it
 * keeps the pointer: hold once its creation has succeeded, release as the
 * last step of its destruction (and on a failed creation's unwind, if it
 * held already). While any hold is outstanding vmep_group_destroy refuses
 * with VMEP_ERR_BUSY naming the count, and changes nothing. Thread-safe
 * (atomic); they cannot fail. A release without a hold is ignored (logged
 * at warn). group must not be NULL.
 */
void vmep__group_hold(vmep_group *group);
void vmep__group_release(vmep_group *group);

/* ---- membership over the store (member.c, member_record.c) ---- */

/*
 * Elastic membership: ranks come and go, so nothing here waits with the
 * store's WAIT (which fails on any dead rank); it polls GETs that answer
 * at once, and only the deaths of the ranks it waits for fail it. Keys:
 * "<ns>/member/<rank>" holds a member's record while it is in,
 * "<ns>/sync/<rank>" a rank's last two allgather contributions, and
 * "vmep/dead/<rank>" and "vmep/session/<rank>" the store's published
 * deaths and the session holding each rank. A stored record starts with
 * VMEP_MEMBER_HEADER bytes (a magic and its publisher's store session)
 * that the fetches take off again. Each call follows the
 * client's thread rules; failures are logged and named as below.
 */
#define VMEP_MEMBER_RANKS_MAX 1024
#define VMEP_MEMBER_HEADER 16 /* u32 magic "VMR1", u32 0, u64 session */

/* SETs rank's record rec[0..len), behind a header naming this client's
 * store session (vmep__member_session). VMEP_ERR_INVALID_ARG for bad
 * arguments or a key or record over the store's limits; store failures. */
vmep_status vmep__member_publish(struct vmep_store_client *c, const char *ns,
                                 int rank, const void *rec, size_t len);
/* Deletes rank's record; an absent one is OK. */
vmep_status vmep__member_withdraw(struct vmep_store_client *c, const char *ns,
                                  int rank);
/*
 * Waits up to timeout_ms (< 0: the client's timeout) for rank's record;
 * *rec_out (the caller frees it with vmep__free) and *len_out are set only
 * on success. VMEP_ERR_PEER naming the rank as soon as its dead key is
 * present (it died and did not rejoin; a record it left behind is not
 * returned); VMEP_ERR_TIMEOUT naming the rank and key. Other ranks' deaths
 * do not fail it. A process that rejoins under a dead rank's id clears
 * that key, so the dead one's record is served again until the new
 * process withdraws or republishes it (vmep__member_fetch_current does
 * not serve it). VMEP_ERR_PEER for a value without a member header.
 */
vmep_status vmep__member_fetch(struct vmep_store_client *c, const char *ns,
                               int rank, int timeout_ms, void **rec_out,
                               size_t *len_out);
/* Takes rank (>= 0) off the store's dead list, so that the store's waits
 * no longer fail because it died; its dead key stays (so fetches still see
 * the death until a successor says hello). *was_dead_out (may be NULL) is
 * 1 when it was on the list. Idempotent; store failures. */
vmep_status vmep__member_forget(struct vmep_store_client *c, int rank,
                                int *was_dead_out);
/*
 * vmep__member_fetch for a record of the rank's current process only: one
 * published under the session the store now holds for the rank (its last
 * HELLO as that rank; see VMEP_STORE_SESSION_PREFIX). So a record left
 * by an earlier process of the rank (it died and was replaced, even twice
 * over, or it left) is waited past until its successor publishes, and a
 * process the store wrongly took for dead, which reconnects under its own
 * session (clearing its dead key), is served its record as it is. While
 * rank's dead key is present: with wait_dead, it waits for a successor to
 * say hello (VMEP_ERR_PEER naming the rank at the timeout), else
 * VMEP_ERR_PEER at once. VMEP_ERR_TIMEOUT names the stale session and the
 * current one. *session_out (may be NULL) gets the publisher's session,
 * which stays the same for the life of that process's group: a consumer
 * can key what it knows of a rank by it.
 */
vmep_status vmep__member_fetch_current(struct vmep_store_client *c,
                                       const char *ns, int rank, int timeout_ms,
                                       int wait_dead, void **rec_out,
                                       size_t *len_out, uint64_t *session_out);
/* The store session this client publishes records under (0 for NULL):
 * random, nonzero, the same for the client's whole life. */
uint64_t vmep__member_session(const struct vmep_store_client *c);
/* *dead_out = 1 when rank's "vmep/dead/<rank>" key is present (it died and
 * nobody rejoined as it since), else 0: one GET. */
vmep_status vmep__member_is_dead(struct vmep_store_client *c, int rank,
                                 int *dead_out);
/* dead_out[r] = 1 for every r < max_ranks (1..VMEP_MEMBER_RANKS_MAX) whose
 * dead key is present, else 0; one GET round trip. dead_out is written
 * only on success. */
vmep_status vmep__member_dead(struct vmep_store_client *c, int max_ranks,
                              unsigned char *dead_out);
/*
 * Allgather among ranks[0..n) (distinct, >= 0, `self` among them):
 * all_out[i * bytes ..] gets ranks[i]'s `bytes` of contribution `tag`
 * (this rank's is mine[0..bytes)). A rank still in an older round is
 * waited for; one that went on to the next round is read from the
 * previous contribution it keeps, so back-to-back calls with different
 * tags do not deadlock (one round only: a rank two rounds further, which
 * only changing rank sets allow, is waited for in vain). VMEP_ERR_PEER naming a
 * participant whose dead key is present, or one that gave another size;
 * VMEP_ERR_TIMEOUT (timeout_ms, < 0: the client's) naming the ranks still
 * missing. Deaths of ranks not in ranks[] do not fail it. all_out is undefined
 * on failure.
 */
vmep_status vmep__member_allgather(struct vmep_store_client *c, const char *ns,
                                   uint64_t tag, int self, const int *ranks,
                                   int n, const void *mine, size_t bytes,
                                   void *all_out, int timeout_ms);

/*
 * vmep__member_allgather for callers whose tags can come round again (a
 * membership that returns to an earlier set): every part starts with a
 * little-endian u64 sequence number that its rank raises with each call,
 * and ranks[i]'s part is taken only when that number is above seen[i],
 * which is then raised to it. So a part consumed before is never taken
 * twice. seen[i] starts at 0 for a rank never heard from.
 */
vmep_status vmep__member_allgather_fresh(struct vmep_store_client *c,
                                         const char *ns, uint64_t tag, int self,
                                         const int *ranks, int n,
                                         const void *mine, size_t bytes,
                                         void *all_out, int timeout_ms,
                                         uint64_t *seen);

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
