/*
 * vmep: expert-parallel communication for Mixture-of-Experts models over
 * memory shared through the CUDA Virtual Memory Management API.
 *
 * This is the only public header. It is C99, usable from C++ and from
 * Python through ctypes/cffi. Every function returns a vmep_status (or a
 * plain accessor value) and never aborts; after a failure,
 * vmep_last_error() names what failed and why.
 *
 * NULL handles: a destroy / free / release of NULL is a no-op (VMEP_OK);
 * any other call given a NULL handle, or a NULL pointer it needs, returns
 * VMEP_ERR_INVALID_ARG with the message "<function>: <argument> is NULL"
 * (a NULL argument struct is named by its type, e.g. "vmep_ep_dispatch:
 * vmep_ep_dispatch_args is NULL").
 * An accessor given NULL returns -1 for an index (rank, device, node), 0
 * for a count or a size, NULL or "" for a pointer or a text, and
 * VMEP_MEM_NONE for a strategy (tests/unit/test_null_handles.c).
 */
#ifndef VMEP_H
#define VMEP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define VMEP_API __attribute__((visibility("default")))
#else
#define VMEP_API
#endif

#define VMEP_VERSION_MAJOR 0
#define VMEP_VERSION_MINOR 5
#define VMEP_VERSION_PATCH 0

/* ------------------------------------------------------------------------
 * Status codes. One list generates the enum, the names and the texts.
 * Values are never renumbered; new codes are appended.
 * --------------------------------------------------------------------- */

#define VMEP_STATUS_MAP(X)                                                     \
  X(OK, 0, "success")                                                          \
  X(ERR_INVALID_ARG, -1, "invalid argument")                                   \
  X(ERR_CUDA, -2, "CUDA driver error")                                         \
  X(ERR_UNSUPPORTED, -3, "not supported on this machine")                      \
  X(ERR_OUT_OF_MEMORY, -4, "out of memory")                                    \
  X(ERR_TIMEOUT, -5, "timed out")                                              \
  X(ERR_PEER, -6, "a peer failed or left")                                     \
  X(ERR_SYSTEM, -7, "system call failed")                                      \
  X(ERR_BUSY, -8, "still in use")

typedef enum vmep_status {
#define VMEP_STATUS_ENUM(name, value, text) VMEP_##name = value,
  VMEP_STATUS_MAP(VMEP_STATUS_ENUM)
#undef VMEP_STATUS_ENUM
} vmep_status;

/* "VMEP_ERR_CUDA" for VMEP_ERR_CUDA; "VMEP_UNKNOWN_STATUS" for other values. */
VMEP_API const char *vmep_status_name(vmep_status status);

/* A short static text ("out of memory"); "unknown status" for other values. */
VMEP_API const char *vmep_status_string(vmep_status status);

/*
 * The message of the last failure on the calling thread, written where the
 * failure was first detected, e.g.
 *   "cuMemCreate(fabric, 2097152 B, device 0): CUDA_ERROR_NOT_PERMITTED
 *    (no IMEX channel for this process?)".
 * Valid until the next vmep call on this thread fails. "" if none.
 */
VMEP_API const char *vmep_last_error(void);

/* "0.5.0". The minor number grows whenever a public struct or call changes
 * (0.2.0: elastic membership, scale layouts, wait counters; 0.3.0:
 * struct_size in the structs a caller fills in, VMEP_EP_ERR_* bits; 0.4.0:
 * the high-throughput calls, vmep_ep_combine_args.use_logfmt; 0.5.0:
 * vmep_ep_dispatch_args.topk_weights, the combine reduced at the expert
 * side). */
VMEP_API const char *vmep_version(void);

/* ------------------------------------------------------------------------
 * Driver and devices. The CUDA driver is loaded at run time; on a machine
 * without one these return VMEP_ERR_UNSUPPORTED with a message.
 * --------------------------------------------------------------------- */

/* The driver's CUDA version, e.g. 13000. */
VMEP_API vmep_status vmep_driver_version(int *version_out);

/* Number of CUDA devices visible to this process. */
VMEP_API vmep_status vmep_device_count(int *count_out);

/* ------------------------------------------------------------------------
 * Memory sharing strategies and the device probe.
 * --------------------------------------------------------------------- */

typedef enum vmep_mem_strategy {
  VMEP_MEM_NONE = 0,   /* no strategy (probe found none usable) */
  VMEP_MEM_FABRIC = 1, /* VMM + fabric handle: any rank of the NVLink domain */
  VMEP_MEM_POSIX_FD =
      2,              /* VMM + POSIX fd passed over a Unix socket: one node */
  VMEP_MEM_LEGACY = 3 /* cuMemAlloc + legacy IPC handle: one node, no VMM */
} vmep_mem_strategy;

#define VMEP_MEM_STRATEGY_COUNT 4

/* "none", "fabric", "posix_fd", "legacy"; "unknown" for other values. */
VMEP_API const char *vmep_mem_strategy_name(vmep_mem_strategy strategy);

#define VMEP_MEM_REASON_BYTES 256

/*
 * What one device supports for shared memory. A capability is 1 only when
 * the attribute says so and a trial allocation confirmed it: on some
 * machines the fabric attribute reads 1 while cuMemCreate(FABRIC) returns
 * CUDA_ERROR_NOT_PERMITTED (no IMEX channel).
 */
typedef struct vmep_mem_caps {
  int device;
  char name[256];
  unsigned char uuid[16];
  int cc_major, cc_minor;
  size_t total_bytes;
  int vmm;            /* virtual memory management supported */
  int posix_fd;       /* POSIX-fd VMM handles: attribute and trial allocation */
  int fabric_attr;    /* the fabric attribute alone (a hint) */
  int fabric;         /* fabric handles: attribute and trial allocation */
  int rdma_with_vmm;  /* GPUDirect RDMA with VMM allocations */
  int dma_buf;        /* dma-buf export of device memory (for NICs) */
  int legacy_ipc;     /* cuMemAlloc + cuIpcGetMemHandle: trial */
  size_t granularity; /* minimum VMM granularity for a POSIX-fd allocation */
  vmep_mem_strategy best; /* what VMEP_MEM_SHARE=auto picks on this device */
  /* reason[s]: why strategy s is not usable here; "" when it is. */
  char reason[VMEP_MEM_STRATEGY_COUNT][VMEP_MEM_REASON_BYTES];
} vmep_mem_caps;

/*
 * Probes device `device` once (cached per device, thread-safe) and copies
 * the result to *caps_out. Fails with VMEP_ERR_UNSUPPORTED when there is no
 * driver, VMEP_ERR_INVALID_ARG for a device ordinal out of range.
 */
VMEP_API vmep_status vmep_mem_probe(int device, vmep_mem_caps *caps_out);

/* ------------------------------------------------------------------------
 * Regions: device memory that peers can map.
 * --------------------------------------------------------------------- */

typedef struct vmep_region vmep_region;

/* Flags of vmep_region_alloc: the strategies it may use (0 = all). The
 * environment variable VMEP_MEM_SHARE narrows this further. */
#define VMEP_REGION_ALLOW_FABRIC (1u << VMEP_MEM_FABRIC)
#define VMEP_REGION_ALLOW_POSIX_FD (1u << VMEP_MEM_POSIX_FD)
#define VMEP_REGION_ALLOW_LEGACY (1u << VMEP_MEM_LEGACY)
#define VMEP_REGION_ALLOW_ALL                                                  \
  (VMEP_REGION_ALLOW_FABRIC | VMEP_REGION_ALLOW_POSIX_FD |                     \
   VMEP_REGION_ALLOW_LEGACY)

/*
 * Allocates at least `bytes` (rounded up to the granularity) on `device`,
 * trying FABRIC, then POSIX_FD, then LEGACY among the allowed strategies.
 * A strategy that answers CUDA_ERROR_NOT_PERMITTED, NOT_SUPPORTED or
 * INVALID_VALUE is skipped and the reason recorded; out of memory is an
 * error (VMEP_ERR_OUT_OF_MEMORY), not a fallback. A strategy forced by
 * flags or VMEP_MEM_SHARE that cannot be had gives VMEP_ERR_UNSUPPORTED.
 * On failure nothing stays allocated and *region_out is untouched.
 */
VMEP_API vmep_status vmep_region_alloc(int device, size_t bytes, unsigned flags,
                                       vmep_region **region_out);

/*
 * Waits for all work on the device (so a kernel still writing the memory
 * finishes first), then unmaps and releases. NULL is a no-op. Returns the
 * first error met; the region is freed regardless.
 */
VMEP_API vmep_status vmep_region_free(vmep_region *region);

VMEP_API void *vmep_region_ptr(const vmep_region *region);
VMEP_API size_t vmep_region_size(const vmep_region *region);
VMEP_API int vmep_region_device(const vmep_region *region);
VMEP_API vmep_mem_strategy vmep_region_strategy(const vmep_region *region);
/* Why the stronger strategies were not used ("" if the first one was). */
VMEP_API const char *vmep_region_reason(const vmep_region *region);

/* ------------------------------------------------------------------------
 * Portable descriptors: how a peer finds a region.
 * --------------------------------------------------------------------- */

#define VMEP_MEM_DESC_VERSION 1
#define VMEP_MEM_HANDLE_BYTES 64
/* Upper bound of vmep_mem_desc_serialize's output. */
#define VMEP_MEM_DESC_MAX_BYTES 128

typedef struct vmep_mem_desc {
  uint32_t version;
  vmep_mem_strategy strategy;
  uint64_t size; /* bytes, a multiple of the granularity */
  unsigned char device_uuid[16];
  /* POSIX_FD: the exported file descriptor, owned by the descriptor until
   * vmep_region_import or vmep_mem_desc_close; -1 otherwise. It does not
   * travel in the serialized bytes: pass it with SCM_RIGHTS. */
  int fd;
  /* FABRIC: the CUmemFabricHandle; LEGACY: the CUipcMemHandle. */
  unsigned char handle[VMEP_MEM_HANDLE_BYTES];
} vmep_mem_desc;

/* Fills *desc_out so that another process can map `region`. A POSIX_FD
 * descriptor holds a new fd: close it with vmep_mem_desc_close if it is not
 * imported. */
VMEP_API vmep_status vmep_region_export(const vmep_region *region,
                                        vmep_mem_desc *desc_out);

/* Closes the descriptor's fd, if any, and sets it to -1. NULL is a no-op. */
VMEP_API void vmep_mem_desc_close(vmep_mem_desc *desc);

/* Writes the descriptor (without its fd) into buf[0..capacity) and the byte
 * count into *len_out. VMEP_ERR_INVALID_ARG if it does not fit. */
VMEP_API vmep_status vmep_mem_desc_serialize(const vmep_mem_desc *desc,
                                             void *buf, size_t capacity,
                                             size_t *len_out);

/* Parses bytes from vmep_mem_desc_serialize, validating everything (magic,
 * version, length, strategy, size, checksum): VMEP_ERR_INVALID_ARG with a
 * message otherwise. The result's fd is -1. */
VMEP_API vmep_status vmep_mem_desc_parse(const void *buf, size_t len,
                                         vmep_mem_desc *desc_out);

/* ------------------------------------------------------------------------
 * Mappings: a peer's region mapped into this process.
 * --------------------------------------------------------------------- */

typedef struct vmep_mapping vmep_mapping;

/*
 * Maps the region that `desc` describes, with read/write access for
 * `device`. A POSIX_FD descriptor's fd is consumed (closed and set to -1)
 * whether or not the import succeeds. On failure nothing stays mapped.
 */
VMEP_API vmep_status vmep_region_import(int device, vmep_mem_desc *desc,
                                        vmep_mapping **mapping_out);

/* Waits for the device's work, unmaps and releases the imported handle.
 * NULL is a no-op. */
VMEP_API vmep_status vmep_mapping_release(vmep_mapping *mapping);

VMEP_API void *vmep_mapping_ptr(const vmep_mapping *mapping);
VMEP_API size_t vmep_mapping_size(const vmep_mapping *mapping);

/* ------------------------------------------------------------------------
 * Process groups: how the ranks of a job find each other (host side).
 * --------------------------------------------------------------------- */

typedef struct vmep_group vmep_group;

/*
 * Collective: joins group `rank` of `size` through the TCP store at
 * `store_addr` ("host:port"). Rank 0 hosts the store on that port; the
 * others connect (retrying until VMEP_TIMEOUT_MS). Every connection
 * presents `token` (NULL: VMEP_JOB_TOKEN; a store refuses a wrong one).
 * Groups may follow one another on one address: a process never joins the
 * store of a group it destroyed, nor one whose rank 0 has begun to destroy
 * its group; it waits for the new store instead.
 */
VMEP_API vmep_status vmep_group_create(int rank, int size,
                                       const char *store_addr,
                                       const char *token,
                                       vmep_group **group_out);

/*
 * Collective: like vmep_group_create with rank, size and store address
 * taken from the launch environment, tried in this order: vmep-run
 * (VMEP_RANK, VMEP_WORLD_SIZE, VMEP_LOCAL_RANK, VMEP_STORE_ADDR), torchrun
 * (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), Open MPI
 * (OMPI_COMM_WORLD_*), Slurm (SLURM_*). Missing or contradictory variables
 * give VMEP_ERR_INVALID_ARG naming them.
 */
VMEP_API vmep_status vmep_group_create_from_env(vmep_group **group_out);

/* A framework's own collectives: gathers `bytes` from every rank into
 * recv[size * bytes] in rank order / waits for every rank. */
typedef vmep_status (*vmep_allgather_fn)(const void *send, size_t bytes,
                                         void *recv, void *user);
typedef vmep_status (*vmep_barrier_fn)(void *user);

/* A group over a framework's process group (no store is started).
 * `barrier` may be NULL (an allgather serves); a group of one (size 1) may
 * pass NULL for both. */
VMEP_API vmep_status vmep_group_create_custom(int rank, int size,
                                              vmep_allgather_fn allgather,
                                              vmep_barrier_fn barrier,
                                              void *user,
                                              vmep_group **group_out);

/*
 * Not collective: joins a running elastic job as `rank` (0..max_ranks-1)
 * of at most `max_ranks` ranks (1..1024), through the store at
 * `store_addr` (NULL: VMEP_STORE_ADDR), presenting `token` (NULL:
 * VMEP_JOB_TOKEN). The store must already run in another process (this
 * never hosts one; it retries the connection until VMEP_TIMEOUT_MS). A
 * rank that a live process holds is refused (VMEP_ERR_INVALID_ARG with the
 * store's reason) once it stays held for VMEP_TIMEOUT_MS; the rank of a
 * process that died is taken over (a rejoin, retried until the store sees
 * it closed). The group's size is max_ranks; its local rank VMEP_LOCAL_RANK
 * if set, else rank; vmep_group_node gives 0 for every rank (with
 * VMEP_NODES=N > 0: rank r is in pretend node r * N / max_ranks, and the
 * local rank is its index there; docs/TOPOLOGY.md); its job id is
 * VMEP_JOB_ID, else derived from the store address as for the other
 * groups, so all members agree. An elastic group has no fixed membership:
 * vmep_group_allgather, _allgatherv, _broadcast and _barrier return
 * VMEP_ERR_UNSUPPORTED (EP buffers over it use connect/disconnect).
 * vmep_group_destroy leaves cleanly; a process that dies without it is
 * seen as dead by the others.
 */
VMEP_API vmep_status vmep_group_join(int rank, int max_ranks,
                                     const char *store_addr, const char *token,
                                     vmep_group **group_out);

/* Leaves the group (not collective). Rank 0 of a store group keeps the
 * store up, starting no new session on it, until the other ranks have left
 * (at most VMEP_TIMEOUT_MS: VMEP_ERR_TIMEOUT then), and stops it. While an
 * EP buffer or window still uses the group it returns VMEP_ERR_BUSY
 * naming how many, and the group stays as it was: destroy them first.
 * NULL is a no-op. */
VMEP_API vmep_status vmep_group_destroy(vmep_group *group);

VMEP_API int vmep_group_rank(const vmep_group *group);
VMEP_API int vmep_group_size(const vmep_group *group);
/* Rank within this node, and the node index (0..) of any rank: ranks with
 * the same node index share a host (same hostname and boot id). With
 * VMEP_NODES=N > 0 (pretend nodes, docs/TOPOLOGY.md) every rank must be on
 * one host and see the same N (else creation fails with
 * VMEP_ERR_INVALID_ARG naming both), and rank r is in node r * N / size. */
VMEP_API int vmep_group_local_rank(const vmep_group *group);
VMEP_API int vmep_group_node(const vmep_group *group, int rank);

/* Collective: recv[size * bytes] gets every rank's `bytes` in rank order. */
VMEP_API vmep_status vmep_group_allgather(vmep_group *group, const void *send,
                                          size_t bytes, void *recv);

/* Collective, payload sizes may differ: recv gets the payloads concatenated
 * in rank order and sizes_out[size] their sizes. VMEP_ERR_INVALID_ARG when
 * the total exceeds recv_capacity (on every rank). */
VMEP_API vmep_status vmep_group_allgatherv(vmep_group *group, const void *send,
                                           size_t bytes, void *recv,
                                           size_t recv_capacity,
                                           size_t *sizes_out);

/* Collective: every rank gets root's buf[0..bytes). */
VMEP_API vmep_status vmep_group_broadcast(vmep_group *group, int root,
                                          void *buf, size_t bytes);

/* Collective: returns when every rank has entered. A rank that died makes
 * every collective return VMEP_ERR_PEER naming it within a few seconds;
 * a wait longer than VMEP_TIMEOUT_MS gives VMEP_ERR_TIMEOUT. */
VMEP_API vmep_status vmep_group_barrier(vmep_group *group);

/* ------------------------------------------------------------------------
 * Symmetric windows: one region per rank, every reachable peer's mapped here.
 * --------------------------------------------------------------------- */

typedef struct vmep_window vmep_window;

/*
 * Collective: each rank allocates `bytes` (rounded up to the granularity)
 * on `device`; the ranks of each node agree on the strongest strategy they
 * can all use (VMEP_ERR_UNSUPPORTED saying why when they share none);
 * descriptors and fds are exchanged and the region of every peer in this
 * node, or in another node when both nodes use FABRIC (never between
 * pretend nodes, VMEP_NODES), is mapped with read/write access for
 * `device`, VMM regions into one reserved VA range at base + rank * stride.
 * Other peers are remote: not mapped (docs/TOPOLOGY.md). A failure on any rank
 * fails the call on every rank (VMEP_ERR_PEER naming it) and leaves nothing
 * behind.
 */
VMEP_API vmep_status vmep_window_create(vmep_group *group, int device,
                                        size_t bytes, vmep_window **win_out);

/* Collective: waits for the device's work and for every rank (so no peer
 * still uses our memory), then unmaps and releases everything. NULL is a
 * no-op. A dead peer gives VMEP_ERR_PEER, after releasing all the same. */
VMEP_API vmep_status vmep_window_destroy(vmep_window *win);

VMEP_API void *vmep_window_local(const vmep_window *win);
/* Rank `rank`'s region as this process sees it; NULL out of range and for
 * a remote peer (another node, not mapped: docs/TOPOLOGY.md). */
VMEP_API void *vmep_window_peer(const vmep_window *win, int rank);
/* Bytes of each rank's region (the slot stride of a VMM window). */
VMEP_API size_t vmep_window_size(const vmep_window *win);
VMEP_API vmep_mem_strategy vmep_window_strategy(const vmep_window *win);

/* ------------------------------------------------------------------------
 * The EP buffer and low-latency dispatch / combine.
 *
 * R ranks, E experts (a multiple of R), L = E / R local experts per rank;
 * expert e lives on rank e / L. Per call each rank sends at most T tokens
 * (max_tokens_per_rank) of hidden size H with top-k K. Shapes, on rank d:
 *   recv_x       [L, R*T, H]  bf16, or fp8 e4m3 with recv_scales
 *                             [L, R*T, H/128] fp32 (one scale per 128
 *                             channels: amax / 448)
 *   recv_count   [L] int32    rows [0, recv_count[l]) of expert l are valid
 *   src_info     [L, R*T] int32  source token index of each valid row
 *   layout_range [L, R] int64 (begin << 32) | count of the rows of expert
 *                             l that came from rank r (contiguous)
 * combine: out[t] = sum_k w[t,k] * expert_out(topk_idx[t,k], t), in fp32,
 * written as bf16; -1 entries and masked ranks count as zero.
 * Everything is asynchronous on the caller's stream and capturable in a
 * CUDA graph. All pointers are device pointers, 16-byte aligned.
 * --------------------------------------------------------------------- */

typedef struct vmep_ep vmep_ep;

/*
 * Structs that grow. The structs a caller fills in (vmep_ep_config,
 * vmep_ep_dispatch_args, vmep_ep_combine_args) start with `struct_size`:
 * the struct's size as the caller's vmep.h declares it, set by the
 * struct's _init function (or to sizeof by hand). A later minor version
 * only appends fields, after the end of the struct's previous size (never
 * into its tail padding), so a caller built against an older vmep.h keeps
 * working: the library reads the caller's struct_size bytes and gives
 * every field beyond them its default (what _init sets). Accepted: from
 * the end of the struct's last field of 0.3.0 (the first layout with
 * struct_size) up to the library's sizeof. 0 (not set), a smaller value or
 * a larger one (a caller built against a newer vmep.h than the library's)
 * is VMEP_ERR_INVALID_ARG naming the struct. Start from _init, so that
 * fields a newer header adds get their defaults too. The high-throughput
 * argument structs (vmep_ep_ht_dispatch_args, vmep_ep_ht_combine_args)
 * start with struct_size too, but take only their exact size for now.
 */

typedef struct vmep_ep_config {
  size_t struct_size;      /* sizeof(vmep_ep_config): vmep_ep_config_init */
  int num_experts;         /* E: a multiple of the ranks (max_ranks, or the
                              group's size), at most 8192 per rank,
                              E * max_tokens_per_rank < 2^31 */
  int hidden;              /* H: a multiple of 128, 128..32768 */
  int max_tokens_per_rank; /* T: 1..65535 */
  int max_topk;            /* 1..16 */
  int device;     /* CUDA device; -1: VMEP_DEVICE, else local rank modulo
                     the device count */
  int num_sms;    /* blocks per kernel; 0: 24, at most the device's SMs
                     divided by the ranks sharing the GPU */
  int timeout_ms; /* a silent peer is masked after this; 0: VMEP_TIMEOUT_MS */
  int zero_copy;  /* 1: the window also holds two [L, R*T, H] bf16 combine
                     buffers (vmep_ep_combine_buffer); expert outputs written
                     there are pulled by their sources, with no copy */
  int max_ranks;  /* capacity R of an elastic buffer: every shape uses R,
                     ranks outside the connected set are masked; 0: the
                     group's size */
} vmep_ep_config;

/* Fills *config with the defaults: struct_size = sizeof(vmep_ep_config),
 * 0 experts / hidden / tokens (must be set), max_topk 8, device -1,
 * num_sms 0, timeout_ms 0, zero_copy 0, max_ranks 0. NULL is a no-op. */
VMEP_API void vmep_ep_config_init(vmep_ep_config *config);

/* Bytes of the symmetric buffer each rank allocates for `config` in a
 * group of `num_ranks` (before rounding to the allocation granularity).
 * VMEP_ERR_INVALID_ARG naming the field for an invalid config. */
VMEP_API vmep_status vmep_ep_buffer_bytes(const vmep_ep_config *config,
                                          int num_ranks, size_t *bytes_out);

/* The size DeepEP's low-latency mode asks for the same shape
 * (get_low_latency_rdma_size_hint), for comparison. */
VMEP_API vmep_status vmep_ep_deepep_bytes(const vmep_ep_config *config,
                                          int num_ranks, size_t *bytes_out);

/*
 * Collective: creates the EP buffer of this rank for `config` over
 * `group`: validates the config (VMEP_ERR_INVALID_ARG naming the field),
 * allocates one symmetric window (vmep_ep_buffer_bytes per rank) and the
 * rank's private routing state. The group must outlive the buffer. The
 * group's ranks start connected; with config.max_ranks above the group's
 * size the other ranks start masked, and can join later. Over a group of
 * vmep_group_join it is not collective: only this rank is connected until
 * vmep_ep_connect_ranks. Ranks the window cannot map (other nodes,
 * docs/TOPOLOGY.md) are reached through the inter-node engine (UCX,
 * loaded at run time) and a proxy thread of the buffer
 * (docs/INTERNODE.md); where UCX cannot be loaded such a buffer fails
 * with VMEP_ERR_UNSUPPORTED saying what is missing.
 */
VMEP_API vmep_status vmep_ep_create(vmep_group *group,
                                    const vmep_ep_config *config,
                                    vmep_ep **ep_out);

/* Waits for outstanding work and releases everything; collective over the
 * group while the connected set is the group, otherwise not (a rank that
 * mapped our window keeps it alive until it disconnects us). NULL is a
 * no-op. */
VMEP_API vmep_status vmep_ep_destroy(vmep_ep *ep);

VMEP_API int vmep_ep_rank(const vmep_ep *ep);
VMEP_API int vmep_ep_num_ranks(const vmep_ep *ep);
VMEP_API int vmep_ep_num_local_experts(const vmep_ep *ep);
/* The CUDA device the buffer lives on. */
VMEP_API int vmep_ep_device(const vmep_ep *ep);
/* Blocks each kernel uses (the SM budget actually applied). */
VMEP_API int vmep_ep_num_sms(const vmep_ep *ep);

/* Phases of vmep_ep_dispatch / vmep_ep_combine. SEND alone launches only
 * the sending half and returns; the matching *_recv call launches the
 * receiving half later (e.g. after overlapping computation). */
#define VMEP_EP_SEND 1
#define VMEP_EP_RECV 2
#define VMEP_EP_SEND_RECV 3

/* Identifies one dispatch for its combine. At most two dispatches may be
 * outstanding (they use two buffer parities); a handle whose parity was
 * reused by a later dispatch is refused by combine. */
typedef struct vmep_ep_handle {
  int parity;
  int num_tokens;
  int num_topk;
  uint64_t call; /* this buffer's dispatch number, from 1 */
} vmep_ep_handle;

typedef struct vmep_ep_dispatch_args {
  size_t struct_size;      /* sizeof: vmep_ep_dispatch_args_init */
  const void *x;           /* bf16 [num_tokens, H]; NULL when num_tokens 0 */
  const int64_t *topk_idx; /* [num_tokens, num_topk], -1 = none */
  int num_tokens;          /* 0..T */
  int num_topk;            /* 1..max_topk, the same on every rank */
  int use_fp8;             /* recv_x as fp8 e4m3 with recv_scales */
  int round_scale;         /* fp8 scales rounded up to powers of two */
  void *recv_x;            /* bf16 or fp8 [L, R*T, H] */
  float *recv_scales;      /* [L, R*T, H/128] when use_fp8, else NULL */
  int32_t *recv_count;     /* [L] */
  int32_t *src_info;       /* [L, R*T] */
  int64_t *layout_range;   /* [L, R] */
  int scale_layout;        /* use_fp8: how recv_scales is stored, one of
                              VMEP_EP_SCALES_* (0: row-major) */
  int64_t *recv_wait_ns;   /* NULL, or [R]: element s gains the nanoseconds
                              from the receive phase's start until rank s's
                              tokens were there, every rank timed from the
                              same start (a late rank is charged its own
                              lateness only) */
  /* appended in 0.5.0 (struct_size 96 leaves it NULL) */
  const float *topk_weights; /* NULL, or [num_tokens, num_topk]: the combine
                                is then reduced at the expert side. Each
                                expert rank sums, per token, the rows of
                                its local experts that the token chose,
                                times these weights, in fp32, and sends one
                                bf16 (or LogFMT) row per (token, expert
                                rank) instead of one per selection; the
                                source adds those rows. Fewer bytes cross
                                the links; each partial sum is rounded to
                                bf16 once more (docs/EP.md). The weights
                                travel with the expert ids (4 K bytes a
                                token). That combine takes topk_weights
                                NULL. Each rank chooses for its own
                                tokens: the expert ranks reduce for the
                                sources that gave weights and push single
                                rows to the others (from a zero-copy
                                expert_out too). */
} vmep_ep_dispatch_args;

/* Fills *args with the defaults: struct_size = sizeof, every pointer NULL,
 * every number 0 (scale_layout VMEP_EP_SCALES_ROW_MAJOR). NULL is a
 * no-op. */
VMEP_API void vmep_ep_dispatch_args_init(vmep_ep_dispatch_args *args);

/* Layouts of vmep_ep_dispatch_args.recv_scales. The scale of channel group
 * g (128 channels) of row i of local expert l, with RT = R*T, G = H/128:
 *   ROW_MAJOR  fp32 at l*RT*G + i*G + g    ([L, RT, G])
 *   COL_MAJOR  fp32 at l*G*RT + g*RT + i   ([L, G, RT]: DeepEP's layout,
 *              the transpose of a [L, RT, G] view)
 *   UE8M0      byte g % 4 of int32 word l*(G/4)*RT + (g/4)*RT + i
 *              ([L, G/4, RT] int32): the scale's biased exponent (the scale
 *              is a power of two); needs round_scale and H a multiple of 512.
 */
#define VMEP_EP_SCALES_ROW_MAJOR 0
#define VMEP_EP_SCALES_COL_MAJOR 1
#define VMEP_EP_SCALES_UE8M0 2

/* Collective, asynchronous on `stream` (a cudaStream_t of the buffer's
 * device). An expert id >= E or < -1 in topk_idx is skipped and counted
 * (vmep_ep_poll_errors), never a fault. */
VMEP_API vmep_status vmep_ep_dispatch(vmep_ep *ep,
                                      const vmep_ep_dispatch_args *args,
                                      int phases, void *stream,
                                      vmep_ep_handle *handle_out);

/* Launches the receiving half of a dispatch made with VMEP_EP_SEND. */
VMEP_API vmep_status vmep_ep_dispatch_recv(vmep_ep *ep,
                                           const vmep_ep_handle *handle,
                                           void *stream);

typedef struct vmep_ep_combine_args {
  size_t struct_size;        /* sizeof: vmep_ep_combine_args_init */
  const void *expert_out;    /* bf16 [L, R*T, H] in the dispatch layout */
  const int64_t *topk_idx;   /* [num_tokens, num_topk], as dispatched */
  const float *topk_weights; /* [num_tokens, num_topk]; NULL when the
                                dispatch was given them */
  void *out;                 /* bf16 [num_tokens, H] */
  int64_t *recv_wait_ns;     /* NULL, or [R]: as in dispatch, for rank r's
                                expert outputs */
  /* appended in 0.4.0 (struct_size 48 leaves it 0) */
  int use_logfmt; /* 1: expert rows travel as LogFMT-10 (DeepEP's
                     use_logfmt; docs/EP.md): per 128 channels a range of
                     magnitudes, per channel a sign and a 9-bit code,
                     levels evenly spaced in the fp32 bits between the
                     range's ends, 41 H / 32 bytes a row instead of 2 H;
                     at most about 3.1% error per value before the
                     weighted sum.
                     The same on every rank of a combine (the sources
                     decode what the expert ranks encoded), as is a
                     zero-copy expert_out, which refuses it
                     (VMEP_ERR_UNSUPPORTED). */
} vmep_ep_combine_args;

/* Fills *args with the defaults: struct_size = sizeof, every pointer
 * NULL, use_logfmt 0. NULL is a no-op. */
VMEP_API void vmep_ep_combine_args_init(vmep_ep_combine_args *args);

/*
 * With config.zero_copy: the [L, R*T, H] bf16 buffer in this rank's window
 * for the dispatch `handle` (one per parity). Expert outputs written there,
 * in the dispatch layout, are read by their sources directly when the
 * combine is given this pointer as expert_out. VMEP_ERR_UNSUPPORTED
 * without config.zero_copy.
 */
VMEP_API vmep_status vmep_ep_combine_buffer(vmep_ep *ep,
                                            const vmep_ep_handle *handle,
                                            void **buf_out);

/* Collective, asynchronous: the weighted sum of the dispatch `handle`. */
VMEP_API vmep_status vmep_ep_combine(vmep_ep *ep,
                                     const vmep_ep_combine_args *args,
                                     const vmep_ep_handle *handle, int phases,
                                     void *stream);

/* Launches the receiving half of a combine made with VMEP_EP_SEND. */
VMEP_API vmep_status vmep_ep_combine_recv(vmep_ep *ep,
                                          const vmep_ep_handle *handle,
                                          void *stream);

/* Bits of vmep_ep_poll_errors' error word. Values are never renumbered;
 * new bits are appended. */
#define VMEP_EP_ERR_BAD_EXPERT 1u /* an expert id >= E or < -1 was skipped */
#define VMEP_EP_ERR_TIMEOUT 2u    /* a rank was masked after a timeout */
#define VMEP_EP_ERR_OVERFLOW                                                   \
  4u /* a high-throughput dispatch received more                               \
        rows than its capacity: dropped */

/* Synchronous: the device error bits (VMEP_EP_ERR_*) and the number of
 * skipped selections since the last call, which clears them. Any output
 * may be NULL. */
VMEP_API vmep_status vmep_ep_poll_errors(vmep_ep *ep, unsigned *errors_out,
                                         uint64_t *bad_experts_out);

/* ------------------------------------------------------------------------
 * High-throughput ("normal") dispatch and combine (docs/HT.md): prefill
 * and training, token-major and unpadded, on the same EP buffer as the
 * low-latency calls (its max_tokens_per_rank T bounds num_tokens; its
 * parities, masks and elasticity are shared: a high-throughput dispatch
 * and a low-latency one count alike against the two outstanding
 * dispatches). Each token goes once to every rank that holds at least one
 * of its experts. On rank d, with N the tokens it received (at most R*T):
 *   recv_x             [N, H] bf16, or fp8 e4m3 with recv_scales [N, H/128]
 *                      fp32 (the sender's scales, passed through)
 *   recv_topk_idx      [N, K] int64: the local expert id (expert - d*L)
 *                      where the expert is ours, else -1
 *   recv_topk_weights  [N, K] fp32: the weight where the id is ours, else 0
 *   recv_src           [N] int32: the handle's record of each row's source
 * Rows are ordered by source rank, then by source token. Combine is the
 * inverse: out[t] = the sum over the ranks that received token t of the
 * row each sends back (weights already applied by the caller), in fp32 in
 * the token's expert order, then + bias0[t] + bias1[t], rounded once to
 * bf16. Peers in other nodes are reached through the inter-node proxy,
 * with the same results (docs/HT.md, "Across nodes").
 * --------------------------------------------------------------------- */

/* The routing of `num_tokens` tokens, computed locally (no communication),
 * asynchronous on `stream`: tokens_per_rank [R] int32, tokens_per_expert
 * [E] int32, in_rank [num_tokens, R] uint8 (1 when the token has an expert
 * on the rank). Ids out of range and -1 count nowhere. Any output may be
 * NULL. */
VMEP_API vmep_status vmep_ep_ht_layout(vmep_ep *ep, const int64_t *topk_idx,
                                       int num_tokens, int num_topk,
                                       int32_t *tokens_per_rank,
                                       int32_t *tokens_per_expert,
                                       uint8_t *in_rank, void *stream);

/* One high-throughput dispatch, kept by the caller for its combine and for
 * cached dispatches. It does not expire with later dispatches (it names
 * only num_recv and recv_src, the caller's memory, which must outlive it);
 * a membership change (vmep_ep_connect_ranks and the like) makes it
 * stale. */
typedef struct vmep_ep_ht_handle {
  int parity;
  int num_tokens; /* this rank's tokens */
  int num_topk;
  int use_fp8;
  uint64_t call;     /* this buffer's dispatch number, from 1 */
  int32_t *num_recv; /* device [1]: N, written by the send phase */
  int32_t *recv_src; /* device [capacity], the caller's (args.recv_src) */
  int capacity;      /* rows recv_src and the recv arrays hold */
} vmep_ep_ht_handle;

typedef struct vmep_ep_ht_dispatch_args {
  size_t struct_size;        /* sizeof: vmep_ep_ht_dispatch_args_init */
  const void *x;             /* bf16 or fp8 [num_tokens, H] */
  const float *x_scales;     /* fp8: [num_tokens, H/128] fp32; else NULL */
  const int64_t *topk_idx;   /* [num_tokens, num_topk], -1 = none */
  const float *topk_weights; /* [num_tokens, num_topk], or NULL (zeros) */
  int num_tokens;            /* 0..T */
  int num_topk;              /* 1..max_topk, the same on every rank */
  int use_fp8;               /* x is fp8 with x_scales */
  int expert_alignment;      /* recv_expert_count rounded up to a multiple;
                                0 or 1: exact */
  /* what the send phase writes */
  int32_t *num_recv;          /* device [1]: N */
  int32_t *recv_expert_count; /* device [L]: rows per local expert */
  /* what the receive phase writes; `capacity` rows each */
  int capacity;                    /* >= N: R*T always suffices */
  void *recv_x;                    /* [capacity, H] */
  float *recv_scales;              /* fp8: [capacity, H/128]; else NULL */
  int64_t *recv_topk_idx;          /* [capacity, num_topk], or NULL */
  float *recv_topk_weights;        /* [capacity, num_topk], or NULL */
  int32_t *recv_src;               /* [capacity]: kept by the handle */
  const vmep_ep_ht_handle *cached; /* a handle of an earlier dispatch of the
                             same routing (num_tokens, num_topk and
                             use_fp8 as it had them, else refused): the
                             layout is not exchanged again; topk_idx,
                             topk_weights, num_recv,
                             recv_expert_count and recv_src are then
                             ignored, recv_topk_* not written */
} vmep_ep_ht_dispatch_args;

/* Fills *args with the defaults: struct_size = sizeof, every pointer NULL,
 * every number 0. NULL is a no-op. */
VMEP_API void vmep_ep_ht_dispatch_args_init(vmep_ep_ht_dispatch_args *args);

/*
 * Collective, asynchronous on `stream`. VMEP_EP_SEND stages the tokens and
 * counts what this rank receives (num_recv, recv_expert_count); the
 * caller may then read N (one synchronization) to size the receive arrays
 * and call vmep_ep_ht_dispatch_recv, or pass capacity R*T (DeepEP's
 * num_worst_tokens) and VMEP_EP_SEND_RECV without synchronizing. Rows past
 * `capacity` are dropped and VMEP_EP_ERR_OVERFLOW set, never written.
 */
VMEP_API vmep_status vmep_ep_ht_dispatch(vmep_ep *ep,
                                         const vmep_ep_ht_dispatch_args *args,
                                         int phases, void *stream,
                                         vmep_ep_ht_handle *handle_out);

/* The receive phase of a dispatch made with VMEP_EP_SEND, into the
 * receive arrays of `args` (the other fields are not read again). */
VMEP_API vmep_status
vmep_ep_ht_dispatch_recv(vmep_ep *ep, const vmep_ep_ht_dispatch_args *args,
                         vmep_ep_ht_handle *handle, void *stream);

typedef struct vmep_ep_ht_combine_args {
  size_t struct_size;        /* sizeof: vmep_ep_ht_combine_args_init */
  const void *x;             /* bf16 [N, H], rows as dispatched; the
                                zero-copy buffer: combined in place */
  const float *topk_weights; /* [N, num_topk] or NULL */
  const void *bias0, *bias1; /* bf16 [num_tokens, H] each, or NULL */
  void *out;                 /* bf16 [num_tokens, H] */
  float *out_topk_weights;   /* [num_tokens, num_topk]: the sum of what each
                                rank sent; NULL without topk_weights */
} vmep_ep_ht_combine_args;

VMEP_API void vmep_ep_ht_combine_args_init(vmep_ep_ht_combine_args *args);

/*
 * The zero-copy combine buffer of dispatch `handle`: *rows_out (R*T) rows
 * of H bf16 in this rank's window, the combine slots of the handle's
 * parity (VMEP_ERR_UNSUPPORTED when they are too few: R > max_topk). Expert
 * outputs written there (row i: the output for received row i) and passed as
 * the combine's x are read by their sources in place: no push, half the memory
 * traffic. It serves the last dispatch of its parity, whose capacity must fit
 * its rows; until that handle is combined, combines of other handles of the
 * parity are refused (they would push rows into it). Every rank of a combine
 * must combine in place, or none; rows for sources in other nodes are sent to
 * them, not read in place. rows_out may be NULL.
 */
VMEP_API vmep_status vmep_ep_ht_combine_buffer(vmep_ep *ep,
                                               const vmep_ep_ht_handle *handle,
                                               void **buf_out, int *rows_out);

/* Collective, asynchronous: the inverse of dispatch `handle`. */
VMEP_API vmep_status vmep_ep_ht_combine(vmep_ep *ep,
                                        const vmep_ep_ht_combine_args *args,
                                        const vmep_ep_ht_handle *handle,
                                        void *stream);

/* ------------------------------------------------------------------------
 * Masks and membership (docs/RELIABILITY.md). A buffer has room for
 * max_ranks ranks; the connected set is the ranks whose windows are mapped
 * here, and a masked rank neither sends nor receives (its selections count
 * as zero). A kernel that waits longer than timeout_ms for a rank that
 * shows no sign of life masks it and goes on. Membership calls need a
 * store-backed group (vmep_group_create*, vmep_group_join); they wait for
 * this rank's work on the device and are not capturable. Expert e stays on
 * rank e / (E / max_ranks) whoever is connected, so shapes and captured
 * CUDA graphs stay valid across membership changes.
 * --------------------------------------------------------------------- */

/* The buffer's capacity (config.max_ranks, or the group's size). */
VMEP_API int vmep_ep_max_ranks(const vmep_ep *ep);

/* Synchronous: masked_out[r] = 1 when rank r is masked here, for every r
 * below vmep_ep_max_ranks. Ranks not connected are always masked. */
VMEP_API vmep_status vmep_ep_query_mask(vmep_ep *ep, int32_t *masked_out);

/* Synchronous: masks (masked 1) or unmasks (0) a connected rank here.
 * VMEP_ERR_INVALID_ARG for this rank itself or a rank not connected. */
VMEP_API vmep_status vmep_ep_set_mask(vmep_ep *ep, int rank, int masked);

/* Synchronous: unmasks every connected rank (e.g. after a transient
 * timeout). */
VMEP_API vmep_status vmep_ep_clear_mask(vmep_ep *ep);

/*
 * Collective over the connected set that results: maps the windows of
 * `ranks` (which publish them when they create their buffer, e.g. new
 * processes that called vmep_group_join) into this buffer's reserved range,
 * without touching anyone else's mapping, and resynchronizes every
 * connected rank's flags. Every rank of the resulting set calls it: the
 * ones already connected name the newcomers, a newcomer names the ranks
 * already there. With activate 0 the new ranks stay masked until
 * vmep_ep_set_mask (every rank of the set passes the same activate, so that
 * nobody waits for a rank that skips it). A rank already connected is
 * skipped; a rank id that died is taken as a new process once its
 * successor has published a new record, and a rank disconnected alive
 * can be connected again as itself. VMEP_ERR_PEER names a rank that died,
 * VMEP_ERR_TIMEOUT one that never published.
 */
VMEP_API vmep_status vmep_ep_connect_ranks(vmep_ep *ep, const int *ranks, int n,
                                           int activate);

/* Not collective: masks `ranks`, unmaps their windows and forgets them (a
 * rank that died stops failing the store's waits). Disconnecting a rank
 * not connected is a no-op. VMEP_ERR_UNSUPPORTED over a group without a
 * store, as for connect. */
VMEP_API vmep_status vmep_ep_disconnect_ranks(vmep_ep *ep, const int *ranks,
                                              int n);

/* Disconnects every connected rank the store reports dead (its process
 * ended without leaving); *count_out (may be NULL) gets how many. */
VMEP_API vmep_status vmep_ep_disconnect_dead(vmep_ep *ep, int *count_out);

/* Collective over the connected set: returns when every connected rank has
 * entered. VMEP_ERR_PEER names a rank that died. */
VMEP_API vmep_status vmep_ep_barrier(vmep_ep *ep);

/* ------------------------------------------------------------------------
 * Configuration: every environment variable vmep reads.
 * --------------------------------------------------------------------- */

/* Number of configuration variables. */
VMEP_API int vmep_config_count(void);

/* Row `index` (0 <= index < vmep_config_count()): its name, default, doc and
 * the value now in the environment (NULL when unset). Any output pointer
 * may be NULL. VMEP_ERR_INVALID_ARG for an index out of range. */
VMEP_API vmep_status vmep_config_row(int index, const char **name_out,
                                     const char **default_out,
                                     const char **doc_out,
                                     const char **value_out);

/* ---- checking a configuration value (issue 15) ----------------------- */

/*
 * Checks the value of row `index` now in the environment (its default when
 * unset) against the row's rule: one of a list of words, an integer in a
 * range, or any text. VMEP_OK when valid; VMEP_ERR_INVALID_ARG when not,
 * with vmep_last_error() naming the variable, its value and what is
 * allowed (e.g. `VMEP_LOG="bogus": expected one of error|warn|info|debug`),
 * or when `index` is out of range. *allowed_out (may be NULL) gets what
 * the rule allows, as text, valid until this thread's next call. Every
 * function of vmep that reads a variable applies the same rule.
 */
VMEP_API vmep_status vmep_config_check(int index, const char **allowed_out);

#ifdef __cplusplus
}
#endif

#endif /* VMEP_H */
