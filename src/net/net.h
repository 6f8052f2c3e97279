/*
 * net: the RDMA engine that reaches peers in other nodes (docs/
 * INTERNODE.md). Callers see one opaque engine and the vmep__engine_* calls
 * below; a transport plugs in through struct vmep_engine_ops (UCX's ucp
 * today, in ucx.c; NCCL GIN or libfabric could follow without touching
 * callers). Address and remote-key blobs travel between ranks in vmep's
 * own wire form (blob.c). Depends on core only. An engine is used by one
 * thread at a time (its worker is single-threaded); engines are
 * independent of each other.
 */
#ifndef VMEP_NET_H
#define VMEP_NET_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

typedef struct vmep_engine vmep_engine;
typedef struct vmep_engine_mr vmep_engine_mr;     /* a local registration */
typedef struct vmep_engine_rkey vmep_engine_rkey; /* a peer's registration */

/* What vmep__engine_probe found. */
struct vmep_engine_info {
  int available;    /* the transport loads and a context can be made */
  char name[16];    /* "ucx" */
  char version[32]; /* "1.13.1" when available */
  int cuda_memory;  /* the transport registers CUDA device memory */
  char reason[320]; /* why not available; empty when available */
};

/* Flags of vmep__engine_mem_reg. */
enum {
  /* Device memory (reserved: needs a transport with CUDA memory support,
   * else VMEP_ERR_UNSUPPORTED). */
  VMEP_ENGINE_MEM_GPU = 1u << 0,
};

/* How put + signal changes the peer's 64-bit signal word. */
enum vmep_engine_signal {
  VMEP_ENGINE_SIGNAL_SET = 0, /* the word becomes `value` */
  VMEP_ENGINE_SIGNAL_ADD = 1, /* `value` is added to the word atomically */
};

struct vmep_engine_params {
  int rank;       /* this process's rank, 0..size-1 */
  int size;       /* number of ranks that may be connected */
  int timeout_ms; /* bound of every wait; <= 0: VMEP_TIMEOUT_MS */
};

/* ---- the transport's table ------------------------------------------- */

/*
 * A transport's operations. `impl` is the transport's state for one
 * engine; ranks are already checked (in range, connected, not failed),
 * sizes nonzero and remote ranges inside the peer's registration. A
 * transport reports a peer's failure through vmep__engine_peer_failed.
 * Every function returns VMEP_OK or a status recorded with vmep__fail.
 */
struct vmep_engine_ops {
  const char *name;
  vmep_status (*probe)(struct vmep_engine_info *info);
  /* State for `size` ranks; `engine` is given back to
   * vmep__engine_peer_failed. */
  vmep_status (*create)(vmep_engine *engine, int size, void **impl_out);
  void (*destroy)(void *impl);
  /* This worker's address (owned by impl, valid until destroy). */
  vmep_status (*address)(void *impl, const void **bytes_out, size_t *len_out);
  vmep_status (*connect)(void *impl, int rank, const void *address, size_t len);
  /* Closes the endpoint to `rank` within the engine's bound (by force when
   * it failed); never fails. */
  void (*disconnect)(void *impl, int rank);
  /* Registers [addr, addr+len); *packed_out (len *packed_len_out, from
   * vmep__malloc, the caller frees it) is the remote key for peers. */
  vmep_status (*mem_reg)(void *impl, void *addr, size_t len, unsigned flags,
                         void **mr_out, void **packed_out,
                         size_t *packed_len_out);
  void (*mem_dereg)(void *impl, void *mr);
  vmep_status (*rkey_unpack)(void *impl, int rank, const void *packed,
                             size_t len, void **rkey_out);
  void (*rkey_release)(void *impl, void *rkey);
  vmep_status (*put)(void *impl, int rank, const void *src, size_t bytes,
                     void *rkey, uint64_t raddr);
  /* Orders every operation posted before it before any posted after. */
  vmep_status (*fence)(void *impl);
  vmep_status (*signal)(void *impl, int rank, void *rkey, uint64_t raddr,
                        enum vmep_engine_signal op, uint64_t value);
  /* Waits until everything posted toward `rank` (-1: every peer) is
   * complete at the target, at most timeout_ms (> 0). */
  vmep_status (*flush)(void *impl, int rank, int timeout_ms);
  int (*progress)(void *impl);
};

/* UCX's table (ucx.c, or ucx_stub.c when built without UCX's headers). */
extern const struct vmep_engine_ops vmep__ucx_ops;

/* ---- the engine --------------------------------------------------------- */

/*
 * What the default transport (UCX) offers here: fills *info (never fails
 * for a valid pointer: an absent library is info->available == 0 with the
 * reason). Makes and drops a transport context, so it costs milliseconds.
 * VMEP_ERR_INVALID_ARG for NULL.
 */
vmep_status vmep__engine_probe(struct vmep_engine_info *info);

/*
 * Creates an engine over the default transport: one context and one
 * worker, no peer connected. The transport's own environment (UCX_TLS,
 * UCX_NET_DEVICES, ...) applies untouched. VMEP_ERR_UNSUPPORTED when the
 * transport is absent (message naming the library and why),
 * VMEP_ERR_INVALID_ARG for bad params; a failed create leaves nothing.
 */
vmep_status vmep__engine_create(const struct vmep_engine_params *params,
                                vmep_engine **engine_out);

/* Same, over a given transport table (tests, later transports). */
vmep_status vmep__engine_create_with(const struct vmep_engine_ops *ops,
                                     const struct vmep_engine_params *params,
                                     vmep_engine **engine_out);

/*
 * Releases everything: remote keys, registrations, endpoints (closed,
 * each close bounded by the timeout), the worker and the context.
 * NULL is a no-op. Never fails; a peer that does not answer is left.
 */
void vmep__engine_destroy(vmep_engine *engine);

/* This engine's address blob, to give every peer (e.g. allgathered through
 * the group); owned by the engine, valid until destroy. */
vmep_status vmep__engine_address(vmep_engine *engine, const void **blob_out,
                                 size_t *len_out);

/*
 * Opens the endpoint to `rank` from its address blob. VMEP_ERR_INVALID_ARG
 * for a blob that does not parse (naming what is wrong), one from another
 * rank than `rank`, our own rank, or a rank already connected;
 * VMEP_ERR_PEER when the transport refuses the address.
 */
vmep_status vmep__engine_connect(vmep_engine *engine, int rank,
                                 const void *blob, size_t len);

/*
 * Registers host memory [addr, addr+len) (device memory with
 * VMEP_ENGINE_MEM_GPU) for peers to put into; *mr_out keeps it until
 * vmep__engine_mem_dereg (or destroy). VMEP_ERR_INVALID_ARG for NULL or
 * zero length or unknown flags.
 */
vmep_status vmep__engine_mem_reg(vmep_engine *engine, void *addr, size_t len,
                                 unsigned flags, vmep_engine_mr **mr_out);

/* The registration's remote-key blob for peers (owned by mr). */
const void *vmep__engine_mr_blob(const vmep_engine_mr *mr, size_t *len_out);

/* Unregisters; NULL is a no-op. */
void vmep__engine_mem_dereg(vmep_engine *engine, vmep_engine_mr *mr);

/*
 * Unpacks `rank`'s remote-key blob (rank connected first). The key knows
 * the registered range, so puts outside it are refused.
 * VMEP_ERR_INVALID_ARG for a blob that does not parse; VMEP_ERR_PEER for a
 * failed peer.
 */
vmep_status vmep__engine_rkey_unpack(vmep_engine *engine, int rank,
                                     const void *blob, size_t len,
                                     vmep_engine_rkey **rkey_out);

/* Where the peer's registered range starts (its address there). */
uint64_t vmep__engine_rkey_base(const vmep_engine_rkey *rkey);

/* Releases a remote key; NULL is a no-op. */
void vmep__engine_rkey_release(vmep_engine *engine, vmep_engine_rkey *rkey);

/*
 * Nonblocking RMA write of src[0..bytes) to `rank` at remote address
 * raddr, inside rkey's range. src must stay unchanged until a flush toward
 * rank returns VMEP_OK. VMEP_ERR_PEER naming the rank once it failed;
 * VMEP_ERR_INVALID_ARG for NULL, zero bytes, a key of another rank or a
 * range outside the key's.
 */
vmep_status vmep__engine_put(vmep_engine *engine, int rank, const void *src,
                             size_t bytes, const vmep_engine_rkey *rkey,
                             uint64_t raddr);

/*
 * Put, then the 64-bit signal word at sig_raddr (8-byte aligned, inside
 * sig_rkey) set to or increased by `value`. Ordering: the signal is posted
 * after a transport fence, so when the peer sees the new signal every
 * byte of this put (and of every earlier operation of this engine) is in
 * its memory. bytes may be 0 (signal only, src may be NULL). Same errors
 * as vmep__engine_put.
 */
vmep_status vmep__engine_put_signal(vmep_engine *engine, int rank,
                                    const void *src, size_t bytes,
                                    const vmep_engine_rkey *rkey,
                                    uint64_t raddr,
                                    const vmep_engine_rkey *sig_rkey,
                                    uint64_t sig_raddr,
                                    enum vmep_engine_signal op, uint64_t value);

/*
 * Waits until every operation posted toward `rank` (-1: toward every
 * connected peer) is complete at the target. timeout_ms <= 0 uses the
 * engine's. VMEP_ERR_PEER naming a failed rank, VMEP_ERR_TIMEOUT naming
 * the rank that did not complete when the bound passes.
 */
vmep_status vmep__engine_flush(vmep_engine *engine, int rank, int timeout_ms);

/* Drives the transport once (needed on the target side of transports that
 * emulate RMA, e.g. TCP); returns nonzero when something happened, 0 for
 * a NULL engine. */
int vmep__engine_progress(vmep_engine *engine);

/*
 * Forgets `rank`: releases every remote key of it still held, closes its
 * endpoint (within the engine's bound; by force when it failed) and clears
 * its failure, so that vmep__engine_connect can reach its next process.
 * A rank not connected is a no-op. Never fails.
 */
void vmep__engine_disconnect(vmep_engine *engine, int rank);

/* Nonzero when `rank` was marked failed. */
int vmep__engine_peer_is_failed(const vmep_engine *engine, int rank);

/* Why `rank` was marked failed (the transport's first reason), or NULL
 * when it was not. */
const char *vmep__engine_peer_failure(const vmep_engine *engine, int rank);

/* For transports: marks `rank` failed with `why` (first reason kept); every
 * later call toward it returns VMEP_ERR_PEER. Logs at info once: a peer
 * that leaves first reads the same, so the engine's user says whether the
 * failure matters (docs/INTERNODE.md, "Faults"). */
void vmep__engine_peer_failed(vmep_engine *engine, int rank, const char *why);

/* The engine's timeout in ms (for transports' waits). */
int vmep__engine_timeout_ms(const vmep_engine *engine);

/* ---- blobs (blob.c) ---------------------------------------------------- */

enum vmep_blob_kind { VMEP_BLOB_ADDRESS = 1, VMEP_BLOB_RKEY = 2 };

/* A parsed blob: what the header said, and the transport's payload (a
 * pointer into the blob). */
struct vmep_blob {
  enum vmep_blob_kind kind;
  int rank;      /* the rank that made it */
  uint64_t base; /* rkey: the registered range */
  uint64_t length;
  const void *payload;
  size_t payload_len;
};

/* Bytes of a blob carrying payload_len payload bytes. */
size_t vmep__blob_size(size_t payload_len);

/* Writes the blob of `b` (its payload copied) into out[vmep__blob_size]. */
void vmep__blob_write(const struct vmep_blob *b, unsigned char *out);

/*
 * Parses bytes[0..len) as a blob of `kind`: magic, version, kind, the
 * payload length and its checksum must all agree. VMEP_ERR_INVALID_ARG
 * naming `what` and the defect otherwise; *b_out set only on success.
 */
vmep_status vmep__blob_parse(const void *bytes, size_t len,
                             enum vmep_blob_kind kind, const char *what,
                             struct vmep_blob *b_out);

#endif /* VMEP_NET_H */
