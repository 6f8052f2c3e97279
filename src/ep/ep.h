/*
 * ep: the expert-parallel layer's private header. The EP buffer, its layout
 * math, peer windows, masks and the host entry points of low-latency
 * dispatch / combine live here, each in its own section. The host
 * reference of dispatch and combine, the numerics and the checkers (the
 * test oracle) are in ep/reference.h. Plain C, no CUDA headers, so that
 * CPU tests and GPU tests (.cu, C++) can include it alike.
 */
#ifndef VMEP_EP_H
#define VMEP_EP_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "driver/driver.h"
#include "kernels/kernels.h"
#include "net/net.h"
#include "sym/sym.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- EP buffer: configuration and layout (config.c, layout.c) -------- */

/*
 * The reader of the public structs that grow (vmep.h): copies the caller's
 * struct `in` of type `type` (its first field the size_t struct_size) over
 * `out`, which holds the defaults in this library's layout of `full_size`
 * bytes: the caller's struct_size bytes, so fields past them keep their
 * defaults; out's struct_size becomes full_size. VMEP_ERR_INVALID_ARG,
 * with a message "<call>: <type>.struct_size = ..." (call may be NULL),
 * when `in` is NULL or its struct_size is below `min_size` (the end of the
 * type's last 0.3.0 field) or above full_size; `out` is then partly
 * written.
 */
vmep_status vmep__ep_struct_read(const char *call, const char *type,
                                 const void *in, size_t min_size,
                                 size_t full_size, void *out);

/* The caller's `config` in this library's layout: *out gets the defaults
 * of vmep_ep_config_init, then the fields within config->struct_size.
 * VMEP_ERR_INVALID_ARG as vmep__ep_struct_read; nothing else is checked. */
vmep_status vmep__ep_config_read(const vmep_ep_config *config,
                                 vmep_ep_config *out);

/* VMEP_OK when `config` is valid for a group of `num_ranks` (its
 * struct_size included); else VMEP_ERR_INVALID_ARG naming the field and
 * its accepted range. */
vmep_status vmep__ep_config_check(const vmep_ep_config *config, int num_ranks);

/* The layout of one rank's EP buffer for a valid `config` and `num_ranks`
 * (see kernels/kernels.h). Cannot fail. */
void vmep__ep_layout(const vmep_ep_config *config, int num_ranks,
                     struct vmep_ll_layout *layout_out);

/* The ranks of a buffer: config.max_ranks, or the group's size. */
int vmep__ep_ranks(const vmep_ep_config *config, int group_size);

/* ---- the buffer's device (device.c) ---------------------------------- */

/* The device of an EP buffer: its primary context, retained by
 * vmep__ep_device_open for the buffer's life. */
struct vmep_ep_device {
  const struct vmep_driver *drv;
  int device;
  CUdevice dev;
  CUcontext ctx; /* NULL when not open */
};

/* Retains `device`'s primary context into *dev_out; on failure nothing is
 * retained and *dev_out is untouched. */
vmep_status vmep__ep_device_open(int device, struct vmep_ep_device *dev_out);
/* Releases what open retained; a device not open is a no-op. */
void vmep__ep_device_close(struct vmep_ep_device *d);

/* The one device guard: makes the buffer's context current on this thread
 * (for driver calls and for the runtime's kernel launches alike) until
 * vmep__ep_device_leave, which only follows a successful enter. Checked:
 * a failure is VMEP_ERR_CUDA naming the device. */
vmep_status vmep__ep_device_enter(const struct vmep_ep_device *d);
void vmep__ep_device_leave(const struct vmep_ep_device *d);

/* Inside enter / leave: waits for all the device's work; allocates / frees
 * device memory; zeroes it; copies host -> device (put) and device -> host
 * (get). Each returns VMEP_OK or the driver's failure with a message
 * naming `call`, the driver call, the size and the device. */
vmep_status vmep__ep_device_sync(const struct vmep_ep_device *d,
                                 const char *call);
vmep_status vmep__ep_device_alloc(const struct vmep_ep_device *d, size_t bytes,
                                  void **ptr_out, const char *call);
vmep_status vmep__ep_device_free(const struct vmep_ep_device *d, void *ptr);
vmep_status vmep__ep_device_zero(const struct vmep_ep_device *d, void *ptr,
                                 size_t bytes, const char *call);
vmep_status vmep__ep_device_put(const struct vmep_ep_device *d, void *dst,
                                const void *src, size_t bytes,
                                const char *call);
vmep_status vmep__ep_device_get(const struct vmep_ep_device *d, void *dst,
                                const void *src, size_t bytes,
                                const char *call);
/* Inside enter / leave: zeroed host memory mapped into the device
 * (*host_out for the host, *dev_out for kernels), and its release. */
vmep_status vmep__ep_device_host_alloc(const struct vmep_ep_device *d,
                                       size_t bytes, void **host_out,
                                       char **dev_out, const char *call);
vmep_status vmep__ep_device_host_free(const struct vmep_ep_device *d,
                                      void *host);
/* The device's multiprocessor count (needs no enter). */
vmep_status vmep__ep_device_sms(const struct vmep_ep_device *d, int *sms_out);

/* ---- the proxy of remote peers (proxy.c, docs/INTERNODE.md) ---------- */

/*
 * Host memory of a buffer with remote peers, mapped into the device and
 * registered with the engine: [stage][inbox of each remote peer, in rank
 * order][outbox of each][ring]. The stage is layout-shaped, `image` bytes
 * (the layout without its zero-copy areas): our staged send areas and
 * heartbeat, and the combine slots where remote expert ranks put the rows
 * of our tokens. An inbox of peer r holds the layout's parts before the
 * slots (flags, heartbeat, send areas) at their offsets: what r's proxy
 * puts there. An outbox of r holds the rest of the image (offset slots[0]
 * at its start): the rows of r's tokens our experts made, with the
 * high-throughput combine's weights and marks, which our proxy puts into
 * the same parts of r's stage.
 */
struct vmep_ep_proxy {
  vmep_engine *engine;
  int rank, num_ranks, local_experts, hidden, max_tokens;
  struct vmep_ll_layout layout;
  size_t image;
  struct vmep_ll_rank_set remote;
  char *stage;
  struct vmep_ll_ring *ring;
  char *inbox[VMEP_LL_MAX_RANKS];  /* NULL for mapped peers */
  char *outbox[VMEP_LL_MAX_RANKS]; /* NULL for mapped peers; its start is
                                      the layout's slots[0] */
  vmep_engine_rkey *keys[VMEP_LL_MAX_RANKS];
  uint64_t peer_stage[VMEP_LL_MAX_RANKS];    /* at the peer: its stage */
  uint64_t peer_inbox[VMEP_LL_MAX_RANKS];    /* at the peer: its inbox of us */
  unsigned char reported[VMEP_LL_MAX_RANKS]; /* its failure was logged */
  uint64_t tail;                             /* requests taken from the ring */
  uint64_t beat;                             /* the heartbeat last forwarded */
  uint64_t beat_at_ns;                       /* when */
  uint64_t bytes_out; /* bytes put to remote peers, flags included */
};

/* The image size of `layout`, and the host bytes of a proxy with
 * `num_remote` remote peers. */
size_t vmep__ep_proxy_image(const struct vmep_ll_layout *layout);
size_t vmep__ep_proxy_host_bytes(const struct vmep_ll_layout *layout,
                                 int num_remote);

/* Sets px up over `host` (vmep__ep_proxy_host_bytes, zeroed by the
 * caller) for the ranks in `remote`; keys and addresses come with
 * vmep__ep_proxy_connect. `engine` stays the caller's. */
void vmep__ep_proxy_init(struct vmep_ep_proxy *px, vmep_engine *engine,
                         const vmep_ep_config *config, int rank, int num_ranks,
                         const struct vmep_ll_rank_set *remote, char *host);

/* Our record for every peer: the engine's address, `mr`'s key (the
 * registration of `host`), the image size and our remote set.
 * *record_out is from vmep__malloc; the caller frees it. */
vmep_status vmep__ep_proxy_record(const struct vmep_ep_proxy *px,
                                  const vmep_engine_mr *mr, void **record_out,
                                  size_t *len_out);

/* Connects to the ranks of `which` from the records of ranks
 * 0..count-1 (concatenated in rank order, sizes[count]), each checked.
 * A record that is cut, foreign, of another shape, or whose remote set
 * disagrees with ours is VMEP_ERR_INVALID_ARG naming the rank. */
vmep_status vmep__ep_proxy_connect(struct vmep_ep_proxy *px, const void *all,
                                   const size_t *sizes, int count,
                                   const struct vmep_ll_rank_set *which);
/* Connects to rank r (in px's remote set) from its record: its endpoint,
 * its key, where its inbox of us is; from then on requests reach it. On
 * failure nothing of r is kept. */
vmep_status vmep__ep_proxy_connect_one(struct vmep_ep_proxy *px, int r,
                                       const void *record, size_t len);
/* Stops serving rank r and forgets its endpoint and key (a no-op when not
 * connected). */
void vmep__ep_proxy_forget(struct vmep_ep_proxy *px, int r);
/* Sets our flags [b][rank] at each of the n flag offsets, both parities,
 * to `value` in rank r's inbox of us and waits until they landed (the
 * engine's bound). VMEP_OK for a rank not connected. */
vmep_status vmep__ep_proxy_raise(struct vmep_ep_proxy *px, int r,
                                 const size_t *offsets, int n, uint64_t value);

/* One turn: serves every request published in the ring (in order), sends
 * a moved heartbeat (at most every 100 us), drives the engine once.
 * Returns the number of requests served. A rank masked (ring->masked) gets
 * no combine rows, as from the kernels, and everything else (dispatch
 * areas, flags, heartbeats); a peer the engine reports
 * failed is skipped (logged once, with its rank): the kernels mask it after
 * their timeout. */
int vmep__ep_proxy_step(struct vmep_ep_proxy *px);

/* ---- the EP buffer object (ep.c, ll.c, elastic.c) -------------------- */

struct vmep_ep {
  vmep_group *group;
  vmep_window *window;
  struct vmep_ep_device dev;
  vmep_ep_config config; /* device, num_sms and timeout resolved */
  int rank, num_ranks, local_experts;
  long long timeout_ns;
  struct vmep_ll_layout layout;
  void *arena; /* private device memory: peers, state, routing scratch */
  char **peers;
  struct vmep_ll_state *state;
  int *entries, *counts, *begins, *recv_count_copy;
  unsigned int *row_map;
  float *sel_weights;
  int *src_weighted;
  uint64_t calls;          /* dispatches so far */
  uint64_t parity_call[2]; /* the dispatch that last used each parity */
  int dispatch_pending[2]; /* send launched, receive not yet */
  struct vmep_ll_dispatch_io pending_dispatch[2];
  int combine_pending[2];
  struct vmep_ll_combine_io pending_combine[2];
  /* the last dispatch of each parity was a high-throughput one (ht.c): its
   * handle is a vmep_ep_ht_handle, and the other mode's calls refuse it */
  int parity_ht[2];
  uint64_t calls_at_change; /* `calls` at the last membership change: older
                               handles of either mode are stale */
  struct vmep_ht_dispatch_io pending_ht[2];
  /* the dispatch whose zero-copy combine buffer (the parity's slots) was
   * handed out and not yet combined: other combines into those slots wait */
  uint64_t ht_in_place[2];
  /* membership (elastic.c): who is mapped here, the store session (the
   * process) of each one's member record, and our store namespace */
  struct vmep_ll_rank_set connected;
  uint64_t *session;   /* [num_ranks] */
  unsigned char *died; /* [num_ranks]: disconnected after it died, so a
                          connect waits for its successor */
  uint64_t *seen;      /* [num_ranks]: the last allgather sequence taken from
                          each rank (elastic.c) */
  uint64_t *seen_from; /* [num_ranks]: the session (process) whose
                          sequence seen[] holds */
  uint64_t barriers;   /* vmep_ep_barrier calls since the last change */
  int changed;         /* the connected set is not (or no longer) the group */
  int ns_index;        /* among this process's live buffers of one shape */
  char ns[64];
  /* remote peers (remote.c): NULL when every peer is mapped */
  struct vmep_ep_remote *remote;
  char **inbox; /* device [num_ranks]: struct vmep_ll_params.inbox */
};

/* ---- remote peers of a buffer (remote.c) ------------------------------ */

/* After the window: when any rank of a fixed group has a remote peer,
 * every rank makes the engine, the shared host memory and the proxy, and
 * connects (collective; joined whatever `before` is, which it returns when
 * not VMEP_OK). A buffer of an elastic group makes them alone when it has
 * room for remote peers (pretend nodes), and connects them later. */
vmep_status vmep__ep_remote_init(vmep_ep *ep, vmep_status before);
/* Stops the proxy, withdraws our record, releases what init made; a
 * no-op without. */
void vmep__ep_remote_fini(vmep_ep *ep);
/* Publishes our inter-node record in the store (buffers with remote
 * room), for ranks that connect later. */
vmep_status vmep__ep_remote_publish(vmep_ep *ep, struct vmep_store_client *c);
/* Connects the proxy to rank r, attached as remote with member-record
 * session `session`, from the inter-node record of the same process;
 * VMEP_ERR_UNSUPPORTED when the buffer has no room for r. */
vmep_status vmep__ep_remote_attach(vmep_ep *ep, struct vmep_store_client *c,
                                   int r, uint64_t session, const char *caller);
/* The proxy stops serving rank r and forgets its endpoint. */
void vmep__ep_remote_detach(vmep_ep *ep, int r);
/* The proxy's copy of rank r's mask (a no-op without remote peers). */
void vmep__ep_remote_mask(vmep_ep *ep, int r, int masked);
/* Nonzero when the engine found remote rank r failed (its endpoint must
 * be made again before the rank is reached). */
int vmep__ep_remote_failed(vmep_ep *ep, int r);
/* After the device is idle: waits until the proxy served every request
 * the kernels posted (at most the buffer's timeout) and the engine
 * delivered them, so that nothing from before a membership change or the
 * end arrives after it. VMEP_ERR_TIMEOUT when the proxy is stuck. */
vmep_status vmep__ep_remote_drain(vmep_ep *ep, const char *caller);
/* Raises our flags [b][rank] at the n offsets to `value` in remote rank
 * r's inbox of us and waits until they landed (VMEP_OK when r is not
 * connected through the proxy). */
vmep_status vmep__ep_remote_raise(vmep_ep *ep, int r, const size_t *offsets,
                                  int n, uint64_t value);
/* Device addresses of our outbox / inbox of rank r (NULL unless r is
 * remote). */
char *vmep__ep_remote_outbox(const vmep_ep *ep, int r);
char *vmep__ep_remote_inbox(const vmep_ep *ep, int r);
/* Sets p's ring and staging area when the buffer has remote peers. */
void vmep__ep_remote_params(const vmep_ep *ep, struct vmep_ll_params *p);
/* Bytes the proxy put to remote peers so far. */
uint64_t vmep__ep_remote_bytes_out(const vmep_ep *ep);
/* Where kernels write what rank r receives: its mapped buffer, or our
 * outbox of it (NULL when neither); where what r sent us is read: our
 * inbox of a remote r, else our own buffer. */
char *vmep__ep_peer_base(const vmep_ep *ep, int r);
char *vmep__ep_inbox(const vmep_ep *ep, int r);

/* Membership setup at creation (elastic.c): publishes our member record,
 * masks every rank not connected. Over a fixed group it joins the group's
 * allgather even when `before` (the creation's status so far) is a
 * failure, and then returns that failure. */
vmep_status vmep__ep_membership_init(struct vmep_ep *ep, vmep_status before);
/* Gives the buffer's store name back (after its window is released). */
void vmep__ep_membership_leave(struct vmep_ep *ep);

/* Argument checks of the entry points (args.c): VMEP_ERR_INVALID_ARG with
 * "<call>: <what>" or "<call>: <name> is NULL"; bad_ptr is nonzero for a
 * NULL pointer (unless `optional`) or one not aligned to `align`. */
vmep_status vmep__ep_bad_arg(const char *call, const char *what);
vmep_status vmep__ep_null_arg(const char *call, const char *name);
int vmep__ep_bad_ptr(const void *p, size_t align, int optional);

/* The parity the next dispatch of either mode takes (ll.c), in
 * *parity_out; refused while a dispatch or a combine there waits for its
 * receive phase. */
vmep_status vmep__ep_next_parity(const struct vmep_ep *ep, const char *call,
                                 int *parity_out);
/* After a dispatch of either mode was launched on `parity`: counts it and
 * makes it the parity's dispatch (`pending`: its receive phase waits;
 * `ht`: a high-throughput one). */
void vmep__ep_dispatched(struct vmep_ep *ep, int parity, int pending, int ht);

/* The launch parameters of `ep` for buffer `parity`. Cannot fail. */
void vmep__ep_params(const struct vmep_ep *ep, int parity, int num_topk,
                     struct vmep_ll_params *params_out);

#ifdef __cplusplus
}
#endif

#endif /* VMEP_EP_H */
