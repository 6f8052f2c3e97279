/*
 * sym: symmetric memory, the one layer where mem (regions, descriptors,
 * mappings) and boot (groups, the store, fd passing) meet. A window gives
 * every rank of a group one region of the same size and a table of peers:
 * how each rank's region is reached from here. Collective creation and
 * destruction live in window.c; members that come and go publish and
 * attach through the store in window_member.c. ep builds on this header.
 */
#ifndef VMEP_SYM_H
#define VMEP_SYM_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vmep_store_client; /* boot/boot.h */

/* How a peer's region is reached from this process. */
enum vmep_peer_kind {
  VMEP_PEER_NONE = 0, /* not attached (yet, or any more) */
  VMEP_PEER_SELF,     /* our own region */
  VMEP_PEER_MAPPED,   /* imported and mapped: kernels load and store */
  /* Not mapped: in another node (vmep__topology_class), reached through an
   * RDMA engine (docs/INTERNODE.md). Its base is NULL. */
  VMEP_PEER_REMOTE,
};

/* ---- the topology decision (topology.c, docs/TOPOLOGY.md) -------------- */

/* How a peer is reached. */
enum vmep_peer_class {
  VMEP_CLASS_NODE = 0, /* same node: mapped with the node's strategy */
  VMEP_CLASS_FABRIC,   /* another node of the NVLink domain: mapped, FABRIC */
  VMEP_CLASS_REMOTE,   /* elsewhere: never mapped, through an RDMA engine */
};

/*
 * The strategy of every rank's region: the strongest strategy usable by
 * every rank of its node (node_of[r]; usable[r] its VMEP_REGION_ALLOW_*
 * mask), so that the ranks mapped together share one; VMEP_MEM_NONE for
 * the ranks of a node that share none. Returns the node index of the first
 * such node (in rank order), or -1 when every node has a strategy. Pure;
 * strategy_out[size] is written in full. At most size * (nodes + 1)
 * comparisons.
 */
int vmep__topology_strategies(int size, const int *node_of,
                              const unsigned *usable,
                              vmep_mem_strategy *strategy_out);

/*
 * The class of rank `peer` as rank `me` sees it (symmetric in me and
 * peer), from the nodes and the strategies of vmep__topology_strategies:
 * the same node is VMEP_CLASS_NODE (me itself too); another node is
 * VMEP_CLASS_FABRIC when both nodes use FABRIC (every rank of both can)
 * and `pretend` is 0 (pretend nodes never map across nodes); else
 * VMEP_CLASS_REMOTE. Pure.
 */
enum vmep_peer_class vmep__topology_class(const int *node_of,
                                          const vmep_mem_strategy *strategy,
                                          int pretend, int me, int peer);

/*
 * Every rank's status, and a report of `bytes` bytes from each (NULL and 0
 * for none), for one step of a collective: allgathers both into all[size]
 * reports (may be NULL when bytes is 0). VMEP_OK when every rank came with
 * VMEP_OK; else our own failure as it is, or VMEP_ERR_PEER "<call>: rank r
 * failed to <step> (<status>)" for the first rank that failed. Every rank
 * joins whatever `mine` is, so that one failure fails all instead of
 * leaving the others waiting.
 */
vmep_status vmep__sym_agree(vmep_group *group, vmep_status mine,
                            const void *report, size_t bytes, void *all,
                            const char *call, const char *step);

/*
 * vmep_window_create with room for `slots` ranks (at least the group's
 * size), naming `call` in its messages. Collective over a created group:
 * the topology decision (vmep__topology_strategies, _class) over the
 * group's nodes and the strategies every rank can use picks our strategy,
 * maps the peers of our node and of fabric nodes, and marks the others
 * VMEP_PEER_REMOTE; VMEP_ERR_UNSUPPORTED on every rank when the ranks of
 * some node share no strategy. Over a group of vmep_group_join it
 * is not collective: only our region is made, in slot `rank`, with the
 * strategy the device does best. On failure nothing is left.
 */
vmep_status vmep__window_create(vmep_group *group, int device, size_t bytes,
                                int slots, const char *call,
                                vmep_window **win_out);

/* Not collective: waits for our device's work, withdraws our record,
 * releases every mapping and our region. NULL is a no-op. Returns the first
 * error; releases everything all the same. */
vmep_status vmep__window_free(vmep_window *w);

/* How rank `rank`'s region is reached here; VMEP_PEER_NONE out of range.
 * A VMEP_PEER_REMOTE peer (another node that the topology decision does
 * not map, docs/TOPOLOGY.md) has no base: vmep_window_peer gives NULL. */
enum vmep_peer_kind vmep__window_peer_kind(const vmep_window *w, int rank);

/* The lowest rank marked VMEP_PEER_REMOTE here, or -1 when there is none
 * (or w is NULL). */
int vmep__window_remote_peer(const vmep_window *w);

/* ---- members that come and go (window_member.c) ------------------------ */

/*
 * Publishes our member record (our region's descriptor, under our store
 * session) as "<ns>/member/<rank>" in the store, and serves our fd to
 * ranks that attach later. VMEP_OK, or the first failure (nothing
 * published then).
 */
vmep_status vmep__window_publish(vmep_window *w, struct vmep_store_client *c,
                                 const char *ns);

/* Withdraws our record and stops serving our fd; a no-op when nothing was
 * published. */
vmep_status vmep__window_withdraw(vmep_window *w);

/*
 * Maps rank `rank`'s region from the member record of its current process
 * into its slot, waiting up to timeout_ms for one (past a record an
 * earlier process of the rank left; with wait_dead, past the rank's death
 * too, for a successor). A rank already mapped is a no-op.
 * *session_out (may be NULL) gets the record's store session, which names
 * the process. Messages name `call`. On failure the rank stays unattached.
 * A rank whose record names another VMEP_NODES is VMEP_ERR_INVALID_ARG;
 * one in another pretend node, or marked remote at creation, is not
 * mapped but marked VMEP_PEER_REMOTE (with its session), for the window's
 * user to reach through the engine.
 */
vmep_status vmep__window_attach(vmep_window *w, struct vmep_store_client *c,
                                int rank, int timeout_ms, int wait_dead,
                                const char *call, uint64_t *session_out);

/* Unmaps rank `rank`'s region (a no-op when it is not mapped). */
vmep_status vmep__window_detach(vmep_window *w, int rank);

#ifdef __cplusplus
}
#endif

#endif /* VMEP_SYM_H */
