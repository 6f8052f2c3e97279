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

/*
 * Store wire protocol (store_proto.c). A frame is a u32 little-endian body
 * length (1..VMEP_STORE_FRAME_MAX) and the body. A request body is u8
 * command, u64 sequence number, then the command's fields; a reply body is
 * u8 answer then the answer's fields. Byte strings travel as u32 length +
 * bytes; integers are little-endian.
 */
/* 2: FORGET, published deaths; 3: store instances (HELLO names the one
 * it resumes and those it avoids, its OK answer the store's), CLOSING and
 * GONE answers. */
#define VMEP_STORE_PROTOCOL_VERSION 3u
#define VMEP_STORE_FRAME_MAX (8u << 20) /* body bytes of one frame */
#define VMEP_STORE_KEY_MAX 1024u
#define VMEP_STORE_TOKEN_MAX 255u
#define VMEP_STORE_MESSAGE_MAX 1024u
#define VMEP_STORE_AVOID_MAX 8u /* instances one HELLO may avoid */
/* Room for a SET of the longest key, so one value always fits a frame. */
#define VMEP_STORE_VALUE_MAX (VMEP_STORE_FRAME_MAX - VMEP_STORE_KEY_MAX - 64u)
/* Value length that marks a missing key in a GET answer. */
#define VMEP_STORE_ABSENT 0xffffffffu

enum vmep_store_cmd {
  VMEP_STORE_HELLO = 1,  /* u32 version, i32 rank (-1: none), u64 session,
                            u64 instance (0: any), u32 n (at most
                            VMEP_STORE_AVOID_MAX), n u64 instances to
                            avoid, token; OK answers u64 instance */
  VMEP_STORE_BYE = 2,    /* clean goodbye: the rank is not marked dead */
  VMEP_STORE_SET = 3,    /* key, value */
  VMEP_STORE_GET = 4,    /* i32 timeout_ms (-1: no wait), u32 n, n keys */
  VMEP_STORE_WAIT = 5,   /* as GET, answers without values */
  VMEP_STORE_ADD = 6,    /* key, i64 delta (a missing key counts as 0) */
  VMEP_STORE_CAS = 7,    /* key, u8 expect_present, expected, desired */
  VMEP_STORE_DELETE = 8, /* key */
  VMEP_STORE_FORGET = 9, /* i32 rank (>= 0): waits stop failing for it */
  VMEP_STORE_CMD_END
};

enum vmep_store_answer {
  VMEP_STORE_OK = 0,       /* then the command's result */
  VMEP_STORE_FAILED = 1,   /* refused (e.g. ADD on a non-counter) */
  VMEP_STORE_TIMEOUT = 2,  /* a wait ran out of time */
  VMEP_STORE_DEAD = 3,     /* a wait cannot finish: rank `rank` died */
  VMEP_STORE_REJECTED = 4, /* protocol violation or wrong token: the
                              store closes the connection */
  VMEP_STORE_CLOSING = 5,  /* HELLO: no new session here (the store is
                              shutting down, or the client avoids it): try
                              again, a new store may come up; closes */
  VMEP_STORE_GONE = 6,     /* HELLO: the session's store instance is gone
                              (this one is another): its keys are lost;
                              closes */
  VMEP_STORE_ANSWER_END
};

/* A byte range inside a parsed frame (not owned). */
struct vmep_store_bytes {
  const unsigned char *data;
  size_t len;
};

/* A parsed request; its byte ranges point into the parsed buffer. */
struct vmep_store_request {
  unsigned cmd;
  uint64_t seq;
  uint32_t version;                     /* HELLO */
  int32_t rank;                         /* HELLO, FORGET */
  uint64_t session;                     /* HELLO */
  uint64_t instance;                    /* HELLO: 0, or the one to resume */
  uint32_t navoid;                      /* HELLO: instances to avoid, */
  uint64_t avoid[VMEP_STORE_AVOID_MAX]; /* the first navoid */
  struct vmep_store_bytes token;        /* HELLO */
  struct vmep_store_bytes key;          /* SET, ADD, CAS, DELETE */
  struct vmep_store_bytes value;        /* SET value, CAS desired value */
  struct vmep_store_bytes expected;     /* CAS, when expect_present */
  int expect_present;                   /* CAS: 0 means "key must be absent" */
  int64_t delta;                        /* ADD */
  int32_t timeout_ms;                   /* GET, WAIT */
  uint32_t nkeys;                       /* GET, WAIT: at least 1 */
  struct vmep_store_bytes keys;         /* GET, WAIT: the nkeys entries */
};

/* A parsed reply; its byte ranges point into the parsed buffer. */
struct vmep_store_reply {
  unsigned answer;
  int32_t rank;                    /* not OK: the dead rank, or -1 */
  struct vmep_store_bytes message; /* not OK: text for the log */
  uint32_t count;                  /* GET, WAIT: keys answered */
  struct vmep_store_bytes values;  /* GET: `count` entries */
  int64_t number;    /* ADD: new value; CAS: 1 if swapped; DELETE: 1 if the
                        key existed; FORGET: 1 if the rank was dead */
  uint64_t instance; /* HELLO: the store's instance */
};

/*
 * Parses one request frame at the start of buf[0..len). Pure: reads only
 * inside the range, allocates and logs nothing. Returns the frame's size
 * when a whole valid frame is there (*req_out filled), 0 when more bytes
 * are needed, -1 when the bytes can never be a valid frame (oversize or
 * zero length, unknown command, a field past the body's end, trailing
 * bytes, a key or token over its limit); *error_out then names the problem
 * (static text). An oversize length is refused from its first 4 bytes.
 * A HELLO of another protocol version is read up to its version only (the
 * rest is skipped), so that the store can name the mismatch.
 */
long vmep__store_request_parse(const void *buf, size_t len,
                               struct vmep_store_request *req_out,
                               const char **error_out);

/* Same for a reply to command `cmd`, whose fields depend on it. */
long vmep__store_reply_parse(const void *buf, size_t len, unsigned cmd,
                             struct vmep_store_reply *reply_out,
                             const char **error_out);

/*
 * Takes the next (u32 length, bytes) entry off `list`, which a parser
 * validated. Returns 1 with *entry_out set (data NULL for a
 * VMEP_STORE_ABSENT entry), 0 when the list is empty or malformed.
 */
int vmep__store_entry_next(struct vmep_store_bytes *list,
                           struct vmep_store_bytes *entry_out);

/*
 * Where the store publishes a death: when a connection that spoke for rank
 * r closes without BYE, the store SETs "vmep/dead/<r>" (decimal r) to an
 * 8-byte little-endian store-wide death serial (1, 2, ...); a HELLO with
 * rank r (a rejoin) deletes it; FORGET leaves it. So the key is present
 * exactly while r's last session has died and nobody has rejoined as r.
 */
#define VMEP_STORE_DEAD_PREFIX "vmep/dead/"
#define VMEP_STORE_DEAD_KEY_BYTES 24 /* prefix, a decimal int32, NUL */
/* key[VMEP_STORE_DEAD_KEY_BYTES] = "vmep/dead/<rank>". */
void vmep__store_dead_key(int rank, char *key);

/* Constant-time comparison of two tokens; 1 when equal. */
int vmep__store_token_equal(const unsigned char *a, size_t a_len,
                            const unsigned char *b, size_t b_len);

/*
 * Splits "host:port" (or "[v6 address]:port") into host[host_cap] and a
 * port 1..65535. VMEP_ERR_INVALID_ARG naming the address otherwise.
 * Outputs are written only on success.
 */
vmep_status vmep__store_addr_parse(const char *addr, char *host,
                                   size_t host_cap, int *port_out);

/* A growing output buffer of frames; `failed` is set when an allocation
 * or a frame limit failed, and stays set until reset. */
struct vmep_store_wbuf {
  unsigned char *data;
  size_t len, cap;
  size_t frame_start;
  int failed;
};

/* Appenders (no-ops once `failed` is set). The buffer owns its memory:
 * release with vmep__wbuf_release. Not thread-safe. */
void vmep__wbuf_put(struct vmep_store_wbuf *w, const void *p, size_t n);
void vmep__wbuf_put_u8(struct vmep_store_wbuf *w, unsigned v);
void vmep__wbuf_put_u32(struct vmep_store_wbuf *w, uint32_t v);
void vmep__wbuf_put_u64(struct vmep_store_wbuf *w, uint64_t v);
void vmep__wbuf_put_bytes(struct vmep_store_wbuf *w, const void *p, size_t n);
/* Starts a frame (reserves its length) / ends it, writing the length.
 * vmep__wbuf_frame_end returns VMEP_OK, or VMEP_ERR_OUT_OF_MEMORY /
 * VMEP_ERR_INVALID_ARG (body over VMEP_STORE_FRAME_MAX) with the partial
 * frame removed; it does not log. */
void vmep__wbuf_frame_begin(struct vmep_store_wbuf *w);
vmep_status vmep__wbuf_frame_end(struct vmep_store_wbuf *w);
/* Empties the buffer (keeping its memory) / frees it. */
void vmep__wbuf_reset(struct vmep_store_wbuf *w);
void vmep__wbuf_release(struct vmep_store_wbuf *w);

/* Appends a whole non-OK reply frame: answer, rank, formatted message
 * (cut to VMEP_STORE_MESSAGE_MAX). */
void vmep__store_reply_error(struct vmep_store_wbuf *w, unsigned answer,
                             int32_t rank, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* One client request, as the encoder sees it. */
struct vmep_store_op {
  unsigned cmd;
  uint64_t seq;
  const char *key;   /* SET, ADD, CAS, DELETE */
  const void *value; /* SET, CAS desired */
  size_t value_len;
  const void *expected; /* CAS: NULL means "key must be absent" */
  size_t expected_len;
  int64_t delta;           /* ADD */
  const char *const *keys; /* GET, WAIT */
  size_t nkeys;
  int32_t timeout_ms;    /* GET, WAIT */
  int32_t rank;          /* HELLO, FORGET */
  uint64_t session;      /* HELLO */
  uint64_t instance;     /* HELLO: 0, or the store instance to resume */
  const uint64_t *avoid; /* HELLO: navoid (<= VMEP_STORE_AVOID_MAX) */
  size_t navoid;         /* instances not to start a session on */
  const char *token;     /* HELLO */
};

/*
 * Appends the request frame of `op`. GET and WAIT pack as many of the
 * keys as fit one frame (at least one) and report how many in
 * *packed_out (may be NULL otherwise). VMEP_ERR_INVALID_ARG (logged) for a
 * key, value or token over its limit; VMEP_ERR_OUT_OF_MEMORY. On failure
 * the buffer is as before.
 */
vmep_status vmep__store_request_encode(struct vmep_store_wbuf *w,
                                       const struct vmep_store_op *op,
                                       size_t *packed_out);

/* ---- store: key table (store_table.c), server thread only ---- */

struct vmep_store_table;

/* An empty table. VMEP_ERR_OUT_OF_MEMORY (logged). */
vmep_status vmep__store_table_create(struct vmep_store_table **table_out);
/* Frees the table and every key and value. NULL is a no-op. */
void vmep__store_table_destroy(struct vmep_store_table *table);
/* 1 and *value_out (may be NULL; points into the table until the key
 * changes) when `key` is present, else 0. */
int vmep__store_table_get(const struct vmep_store_table *table,
                          struct vmep_store_bytes key,
                          struct vmep_store_bytes *value_out);
/* Inserts or replaces (copies both). VMEP_ERR_OUT_OF_MEMORY (logged at
 * warn) leaves the table as it was. */
vmep_status vmep__store_table_set(struct vmep_store_table *table,
                                  struct vmep_store_bytes key,
                                  struct vmep_store_bytes value);
/* Removes `key`; 1 when it was present. */
int vmep__store_table_delete(struct vmep_store_table *table,
                             struct vmep_store_bytes key);
size_t vmep__store_table_count(const struct vmep_store_table *table);
/* 64-bit FNV-1a of bytes[0..len): stable names and hash buckets. */
uint64_t vmep__bytes_hash(const void *bytes, size_t len);

/* ---- store: request semantics (store_serve.c), server thread only ---- */

struct vmep_store_state; /* table, sessions, dead ranks */
struct vmep_store_peer;  /* one connection's view of the state */

/* What the connection does after a request or poll. */
enum vmep_store_peer_next {
  VMEP_STORE_PEER_IDLE,    /* answered: read the next request */
  VMEP_STORE_PEER_PENDING, /* a wait blocks: call vmep__store_peer_poll */
  VMEP_STORE_PEER_CLOSE    /* flush the answer (best effort) and close */
};

/* A state whose clients must present `token`, with a random nonzero
 * instance id that names this store apart from any other that serves the
 * address before or after it. VMEP_ERR_INVALID_ARG (too long),
 * VMEP_ERR_OUT_OF_MEMORY; nothing allocated on failure. */
vmep_status vmep__store_state_create(const char *token,
                                     struct vmep_store_state **state_out);
uint64_t vmep__store_state_instance(const struct vmep_store_state *state);
/* From now on a HELLO that would start a new session is answered CLOSING
 * (its client retries, and finds the next store at the address); sessions
 * already known may still reconnect (to say BYE). Idempotent. */
void vmep__store_state_retire(struct vmep_store_state *state);
/* Frees the state (peers must be closed first). NULL is a no-op. */
void vmep__store_state_destroy(struct vmep_store_state *state);
size_t vmep__store_state_keys(const struct vmep_store_state *state);

/* A new connection named `name` in logs; NULL when out of memory. */
struct vmep_store_peer *vmep__store_peer_open(struct vmep_store_state *state,
                                              const char *name);
/*
 * Carries out request `q` and appends its answer to `out` (unless the
 * request blocks). Protocol violations (no HELLO first, wrong token, a
 * second HELLO, a rank another live session holds) are logged at warn,
 * answered REJECTED and return VMEP_STORE_PEER_CLOSE, as BYE does. A HELLO
 * that resumes another instance's session is answered GONE; one that
 * would start a session on a retired store, or on an instance it avoids,
 * CLOSING; both close too.
 */
int vmep__store_peer_request(struct vmep_store_state *state,
                             struct vmep_store_peer *peer,
                             const struct vmep_store_request *q,
                             struct vmep_store_wbuf *out);
/*
 * Finishes the peer's pending wait if it can: all keys present (OK),
 * another rank dead (DEAD naming it), or past its deadline (TIMEOUT naming
 * the missing keys); then appends the answer and returns
 * VMEP_STORE_PEER_IDLE. Otherwise lowers *next_deadline_ms to the wait's
 * deadline and returns VMEP_STORE_PEER_PENDING.
 */
int vmep__store_peer_poll(struct vmep_store_state *state,
                          struct vmep_store_peer *peer, uint64_t now_ms,
                          struct vmep_store_wbuf *out,
                          uint64_t *next_deadline_ms);
/* "client 127.0.0.1:5000 rank 3": the peer's name in logs. */
const char *vmep__store_peer_name(const struct vmep_store_peer *peer);
/* The rank the connection speaks for, -1 if none (or after BYE). */
int vmep__store_peer_rank(const struct vmep_store_peer *peer);
/* Frees the peer. If it spoke for a rank and never said BYE, the rank is
 * marked dead (waits of others fail) until a client says HELLO with it
 * again or FORGETs it, and its death is published under its
 * VMEP_STORE_DEAD_PREFIX key. With state NULL (the state is going away)
 * it only frees. */
void vmep__store_peer_close(struct vmep_store_state *state,
                            struct vmep_store_peer *peer);

/* ---- store: server (store_server.c) ---- */

struct vmep_store_server;

/*
 * Listens on host:port (host NULL: every interface; port 0: any free port,
 * see vmep__store_server_port) and serves from a new thread, whose signals
 * are blocked. Clients must present `token`. VMEP_ERR_SYSTEM naming the
 * address when it cannot listen; on failure nothing stays open.
 */
vmep_status vmep__store_server_start(const char *host, int port,
                                     const char *token,
                                     struct vmep_store_server **server_out);
/* The port it listens on. */
int vmep__store_server_port(const struct vmep_store_server *server);
/* Keys it holds (as of its last loop turn). Thread-safe. */
size_t vmep__store_server_keys(struct vmep_store_server *server);
/* Its state's instance id (see vmep__store_state_create). */
uint64_t vmep__store_server_instance(const struct vmep_store_server *server);
/* vmep__store_state_retire, done by the server thread before this returns:
 * the store starts no new session from then on. Thread-safe. */
void vmep__store_server_retire(struct vmep_store_server *server);
/* Waits until no rank is connected (each said BYE or died), at most
 * timeout_ms: VMEP_ERR_TIMEOUT (logged at warn) then. Thread-safe. */
vmep_status vmep__store_server_drain(struct vmep_store_server *server,
                                     int timeout_ms);
/* Stops the thread, closes every connection, frees all. NULL: no-op. */
void vmep__store_server_stop(struct vmep_store_server *server);

/* ---- store: client (store_client.c) ---- */

/* One connection to a store; used by one thread at a time. */
struct vmep_store_client;

/* Receives value `index` of a vmep__store_wait_get (pointing into the
 * answer, valid during the call). A non-OK status stops the call. */
typedef vmep_status (*vmep_store_value_fn)(void *user, size_t index,
                                           const void *value, size_t len);

/*
 * Connects to the store at `addr` ("host:port") as `rank` (-1: not a
 * rank), retrying until timeout_ms passes (VMEP_ERR_TIMEOUT naming the
 * address and the last error). `host_rank` is the rank hosting the store
 * (-1: none): if the connection later breaks and the store stays
 * unreachable for 2 s, calls fail with VMEP_ERR_PEER naming that rank.
 * timeout_ms is also the default of every later call. A refusal (wrong
 * token, rank taken) is VMEP_ERR_INVALID_ARG with the store's reason.
 * The client keeps to the store instance it first reached: a store that
 * answers CLOSING (retired, or one vmep__store_left named) is retried as
 * an unreachable one; a reconnect that finds another instance at the
 * address (the store was replaced, and its keys lost) fails the call with
 * VMEP_ERR_PEER.
 */
vmep_status vmep__store_client_connect(const char *addr, const char *token,
                                       int rank, int host_rank, int timeout_ms,
                                       struct vmep_store_client **client_out);
/* The instance of the store the client is on (0 before the first HELLO
 * was answered). */
uint64_t vmep__store_client_instance(const struct vmep_store_client *client);
/* Records, for the whole process, that it left store instance `instance`
 * (nonzero) for good: the HELLO of every new session avoids the last
 * VMEP_STORE_AVOID_MAX instances recorded, so that a store still serving a
 * group this process destroyed is never taken for its successor at the
 * same address. Thread-safe. */
void vmep__store_left(uint64_t instance);
/* Closes and frees; with `goodbye`, says BYE first (best effort), so that
 * the store does not take the rank for dead. NULL is a no-op. */
void vmep__store_client_close(struct vmep_store_client *client, int goodbye);
/* Tests only: closes the connection without BYE, as a network failure
 * would; the next call reconnects. */
void vmep__store_client_drop(struct vmep_store_client *client);
int vmep__store_client_timeout(const struct vmep_store_client *client);

/*
 * The operations. Each one reconnects and retries while the connection
 * breaks (mutations are applied once), and fails with VMEP_ERR_TIMEOUT
 * after the client's timeout; key and value limits give
 * VMEP_ERR_INVALID_ARG. Values returned by vmep__store_get are the
 * caller's (vmep__free); *found_out is 0 and *value_out NULL for a missing
 * key. ADD treats a missing key as 0 and fails (VMEP_ERR_SYSTEM) on a
 * value that is not 8 bytes. CAS with expected NULL swaps only when the
 * key is absent. Waits take timeout_ms (< 0: the client's): all keys must
 * exist; VMEP_ERR_TIMEOUT names the missing ones, VMEP_ERR_PEER ("rank 3
 * died (its store connection closed)") comes as soon as any rank's
 * connection closes without BYE while the wait blocks (until a HELLO
 * with that rank or a FORGET of it).
 */
vmep_status vmep__store_set(struct vmep_store_client *client, const char *key,
                            const void *value, size_t len);
vmep_status vmep__store_get(struct vmep_store_client *client, const char *key,
                            int *found_out, void **value_out, size_t *len_out);
vmep_status vmep__store_add(struct vmep_store_client *client, const char *key,
                            int64_t delta, int64_t *value_out);
vmep_status vmep__store_cas(struct vmep_store_client *client, const char *key,
                            const void *expected, size_t expected_len,
                            const void *desired, size_t desired_len,
                            int *swapped_out);
vmep_status vmep__store_delete(struct vmep_store_client *client,
                               const char *key, int *existed_out);
vmep_status vmep__store_wait(struct vmep_store_client *client,
                             const char *const *keys, size_t nkeys,
                             int timeout_ms);
/* A wait that passes each key's value, in order, to fn. */
vmep_status vmep__store_wait_get(struct vmep_store_client *client,
                                 const char *const *keys, size_t nkeys,
                                 int timeout_ms, vmep_store_value_fn fn,
                                 void *user);
/* A GET of many keys that does not wait: fn gets each key's value in
 * order, or NULL and 0 for a missing key. Dead ranks do not fail it. */
vmep_status vmep__store_get_many(struct vmep_store_client *client,
                                 const char *const *keys, size_t nkeys,
                                 vmep_store_value_fn fn, void *user);
/* Takes `rank` (>= 0) off the store's dead list, so that waits no longer
 * fail because of it; its "vmep/dead/<rank>" key stays. *was_dead_out
 * (may be NULL) is 1 when it was on the list. Idempotent. */
vmep_status vmep__store_forget(struct vmep_store_client *client, int rank,
                               int *was_dead_out);

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
/* 1 for a group made by vmep_group_join (no fixed membership), else 0. */
int vmep__group_elastic(const vmep_group *group);

/* ---- membership over the store (member.c) ---- */

/*
 * Elastic membership: ranks come and go, so nothing here waits with the
 * store's WAIT (which fails on any dead rank); it polls GETs that answer
 * at once, and only the deaths of the ranks it waits for fail it. Keys:
 * "<ns>/member/<rank>" holds a member's record while it is in,
 * "<ns>/sync/<rank>" a rank's last two allgather contributions, and
 * "vmep/dead/<rank>" the store's published deaths. Each call follows the
 * client's thread rules; failures are logged and named as below.
 */
#define VMEP_MEMBER_RANKS_MAX 1024

/* SETs rank's record rec[0..len). VMEP_ERR_INVALID_ARG for bad arguments
 * or a key or record over the store's limits; store failures. */
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
 * process withdraws or republishes it.
 */
vmep_status vmep__member_fetch(struct vmep_store_client *c, const char *ns,
                               int rank, int timeout_ms, void **rec_out,
                               size_t *len_out);
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

/* ---- TCP with deadlines (store_net.c) ---- */

/* poll() for `events` until deadline_ms: 1 ready, 0 timed out, -1 error
 * (errno set). */
int vmep__tcp_wait(int fd, short events, uint64_t deadline_ms);
/* A connected non-blocking TCP socket to host:port (TCP_NODELAY), trying
 * each address until deadline_ms; -1 with *err_out an errno value
 * (EHOSTUNREACH when the name does not resolve). Does not log: callers
 * retry. */
int vmep__tcp_dial(const char *host, int port, uint64_t deadline_ms,
                   int *err_out);
/* A non-blocking listening socket on host:port (host NULL: every
 * interface; port 0: any) and the port it got. VMEP_ERR_SYSTEM naming the
 * address; nothing open on failure. */
vmep_status vmep__tcp_listen(const char *host, int port, int *fd_out,
                             int *port_out);

/* ---- deadlines (deadline.c) ---- */

/* Milliseconds of a monotonic clock. */
uint64_t vmep__now_ms(void);
/* Milliseconds until deadline_ms (0 when past), capped to INT_MAX. */
int vmep__ms_left(uint64_t deadline_ms);

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
