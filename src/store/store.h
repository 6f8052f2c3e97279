/*
 * store: the job's TCP key-value store, private to this layer and to the
 * boot code built on it. The wire format (frames, commands, answers), its
 * parser and encoder, the server's key table, request semantics and
 * thread, the client and TCP with deadlines. Sits between core and boot:
 * includes core only. Upper layers (ep) see the client as an opaque
 * struct vmep_store_client through boot/boot.h and never include this.
 */
#ifndef VMEP_STORE_H
#define VMEP_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/*
 * Store wire protocol (store_proto.c). A frame is a u32 little-endian body
 * length (1..VMEP_STORE_FRAME_MAX) and the body. A request body is u8
 * command, u64 sequence number, then the command's fields; a reply body is
 * u8 answer then the answer's fields. Byte strings travel as u32 length +
 * bytes; integers are little-endian.
 */
/* 2: FORGET, published deaths; 3: store instances (HELLO names the one
 * it resumes and those it avoids, its OK answer the store's), CLOSING and
 * GONE answers; 4: the TAKEN answer (a rank held by a live connection, to
 * be retried) and published rank sessions (VMEP_STORE_SESSION_PREFIX). */
#define VMEP_STORE_PROTOCOL_VERSION 4u
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
  VMEP_STORE_TAKEN = 7,    /* HELLO: another live connection holds the
                              rank. Its process may have just died, before
                              the store saw the close: the client retries
                              within its timeout; closes */
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

/*
 * Where the store publishes which session holds a rank: every HELLO with
 * rank r >= 0 (a new session or a resumed one) SETs "vmep/session/<r>" to
 * its u64 session, little-endian; a BYE of that session deletes it; a
 * death leaves it (with the dead key beside it). So a record that names
 * its publisher's session can be told apart from one an earlier process
 * of the rank left, and a process the store took for dead that comes
 * back (same session) is recognised.
 */
#define VMEP_STORE_SESSION_PREFIX "vmep/session/"
#define VMEP_STORE_SESSION_KEY_BYTES 27 /* prefix, a decimal int32, NUL */
/* key[VMEP_STORE_SESSION_KEY_BYTES] = "vmep/session/<rank>". */
void vmep__store_session_key(int rank, char *key);

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
/* How many keys the table holds. */
size_t vmep__store_table_count(const struct vmep_store_table *table);

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
 * second HELLO) are logged at warn, answered REJECTED and return
 * VMEP_STORE_PEER_CLOSE, as BYE does. A HELLO for a rank another live
 * session holds is answered TAKEN; one that resumes another instance's
 * session GONE; one that would start a session on a retired store, or on
 * an instance it avoids, CLOSING; all three close too.
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
/* Keys it holds, as of the last request it answered or its last loop turn,
 * whichever came later. Thread-safe. */
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
 * token) is VMEP_ERR_INVALID_ARG with the store's reason. A rank another
 * live connection holds (TAKEN) is retried too, because its holder may
 * have died before the store saw its connection close; still held at
 * timeout_ms, it is VMEP_ERR_INVALID_ARG with the store's reason.
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
/* The client's session (nonzero, random, fixed for its life): HELLO
 * carries it, and the store publishes it for the client's rank. */
uint64_t vmep__store_client_session(const struct vmep_store_client *client);
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

#endif /* VMEP_STORE_H */
