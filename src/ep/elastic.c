/*
 * Masks and membership of an EP buffer. The buffer has room for max_ranks
 * ranks; `connected` says whose windows are mapped here. Every rank
 * publishes a member record (its descriptor, under its store session)
 * under the buffer's store namespace, so that ranks joining later can map
 * it. A membership change ends with a resynchronization of the flags: the
 * connected ranks agree, through the store, on an epoch above any they
 * used, and each raises its flags to it everywhere (host copies). All of
 * this is host-synchronous: it waits for this rank's device work first.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "boot/boot.h"
#include "ep/ep.h"

#define NS_SHAPES 64
#define GATHER_WORDS 2 /* most u64 words one rank gives an allgather */

/* Buffers of one shape and rank alive in this process: each takes the
 * lowest free index among them, so that a process joining a job names its
 * buffer as the members named theirs. Keyed by rank too, so that ranks
 * sharing a process (threads) name one buffer alike. */
static struct {
  uint64_t shape;
  int rank;
  uint64_t used; /* bit i: index i is taken */
} shapes[NS_SHAPES];
static pthread_mutex_t shapes_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t shape_hash(const vmep_ep *ep) {
  int v[7] = {ep->config.num_experts,
              ep->config.hidden,
              ep->config.max_tokens_per_rank,
              ep->config.max_topk,
              ep->num_ranks,
              ep->config.zero_copy,
              0};
  return vmep__bytes_hash(v, sizeof(v));
}

/* The table slot of (`shape`, `rank`), or a free one; -1 when the table
 * is full. The caller holds shapes_lock. */
static int shape_slot(uint64_t shape, int rank) {
  for (int i = 0; i < NS_SHAPES; i++)
    if (shapes[i].used && shapes[i].shape == shape && shapes[i].rank == rank)
      return i;
  for (int i = 0; i < NS_SHAPES; i++)
    if (!shapes[i].used)
      return i;
  return -1;
}

/* Marks `index` (or, when it is -1, the lowest free index) taken for
 * `shape` on `rank`; returns it, or -1 when it was taken already, 64 are
 * alive or the table is full. */
static int shape_take(uint64_t shape, int rank, int index) {
  pthread_mutex_lock(&shapes_lock);
  int slot = shape_slot(shape, rank);
  for (int b = 0; slot >= 0 && index < 0 && b < 64; b++)
    if (!(shapes[slot].used & (1ull << b)))
      index = b;
  if (slot < 0 || index < 0 || (shapes[slot].used & (1ull << index)))
    index = -1;
  else {
    shapes[slot].shape = shape;
    shapes[slot].rank = rank;
    shapes[slot].used |= 1ull << index;
  }
  pthread_mutex_unlock(&shapes_lock);
  return index;
}

static void shape_give(uint64_t shape, int rank, int index) {
  pthread_mutex_lock(&shapes_lock);
  for (int i = 0; i < NS_SHAPES; i++)
    if (shapes[i].used && shapes[i].shape == shape && shapes[i].rank == rank)
      shapes[i].used &= ~(1ull << index);
  pthread_mutex_unlock(&shapes_lock);
}

static int is_connected(const vmep_ep *ep, int r) {
  return vmep__rank_set_has(&ep->connected, r);
}

static void set_connected(vmep_ep *ep, int r, int on) {
  vmep__rank_set_put(&ep->connected, r, on);
}

/* The connected ranks in order; returns how many. */
static int connected_list(const vmep_ep *ep, int *ranks) {
  int n = 0;
  for (int r = 0; r < ep->num_ranks; r++)
    if (is_connected(ep, r))
      ranks[n++] = r;
  return n;
}

/* Names the connected set and its sessions: equal on every member of one
 * view, different after any change (a rank that rejoins comes back as
 * another process, with another session). */
static uint64_t view_tag(const vmep_ep *ep, uint64_t what) {
  uint64_t h = vmep__bytes_hash(&what, sizeof(what));
  for (int r = 0; r < ep->num_ranks; r++)
    if (is_connected(ep, r)) {
      uint64_t pair[2] = {(uint64_t)r, ep->session[r]};
      h ^= vmep__bytes_hash(pair, sizeof(pair)) + (h << 6) + (h >> 2);
    }
  return h;
}

/* Makes ep's device current and waits for its work; on success the caller
 * leaves the device (vmep__ep_device_leave) when done. */
static vmep_status quiesce(vmep_ep *ep, const char *call) {
  vmep_status status = vmep__ep_device_enter(&ep->dev);
  if (status != VMEP_OK)
    return status;
  status = vmep__ep_device_sync(&ep->dev, call);
  /* And the proxy: nothing posted before the change may land after it. */
  if (status == VMEP_OK)
    status = vmep__ep_remote_drain(ep, call);
  if (status != VMEP_OK)
    vmep__ep_device_leave(&ep->dev); /* the caller returns at once */
  return status;
}

static vmep_status write_mask(vmep_ep *ep, int r, int masked) {
  int32_t v = masked ? 1 : 0;
  vmep__ep_remote_mask(ep, r, masked);
  return vmep__ep_device_put(&ep->dev, &ep->state->masked[r], &v, sizeof(v),
                             "mask update");
}

/* Rank r's entries of the peer table and of the inbox table, from how
 * the window reaches it now. */
static vmep_status write_peer(vmep_ep *ep, int r) {
  char *base = vmep__ep_peer_base(ep, r), *inbox = vmep__ep_inbox(ep, r);
  vmep_status status = vmep__ep_device_put(&ep->dev, &ep->peers[r], &base,
                                           sizeof(base), "peer table update");
  if (status == VMEP_OK)
    status = vmep__ep_device_put(&ep->dev, &ep->inbox[r], &inbox, sizeof(inbox),
                                 "inbox table update");
  return status;
}

/* Ends a group of host writes to device memory (masks, the peer table):
 * cuMemcpyHtoD from pageable memory may return before its copy lands, so
 * wait for the device before kernels on any stream may read them, then
 * leave the device. Returns `status`, or the wait's failure. */
static vmep_status settle(const vmep_ep *ep, vmep_status status,
                          const char *call) {
  vmep_status synced = vmep__ep_device_sync(&ep->dev, call);
  vmep__ep_device_leave(&ep->dev);
  return status != VMEP_OK ? status : synced;
}

static struct vmep_store_client *store_of(const vmep_ep *ep, const char *call) {
  struct vmep_store_client *c = vmep__group_store(ep->group);
  if (!c)
    vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
               "%s: membership changes need a group with a store "
               "(vmep_group_create, _from_env or _join); a custom group has "
               "none",
               call);
  return c;
}

/* Our session: the store client's (records are keyed by it), or, for a
 * group without a store, a random one. */
static uint64_t own_session(const vmep_ep *ep, struct vmep_store_client *c) {
  if (c)
    return vmep__member_session(c);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t v[4] = {(uint64_t)getpid(), (uint64_t)ts.tv_sec,
                   (uint64_t)ts.tv_nsec, (uint64_t)(uintptr_t)ep};
  return vmep__bytes_hash(v, sizeof(v));
}

/* A fixed group's start: the ranks begin connected, with their sessions,
 * and with rank 0's name index (`*index`, -1 when rank 0 has
 * none) taken in every process, so that processes name the buffer alike
 * whatever buffers of its shape each made or destroyed before. A rank that
 * failed before still joins the allgather. */
static vmep_status fixed_start(vmep_ep *ep, uint64_t mine, int *index,
                               vmep_status status) {
  int size = vmep_group_size(ep->group);
  /* Two allgathers into arrays the buffer already has ([num_ranks] >=
   * size), so that no allocation can keep this rank out of them. */
  uint64_t proposed = (uint64_t)(int64_t)*index;
  vmep_status st =
      vmep_group_allgather(ep->group, &mine, sizeof(mine), ep->session);
  if (st == VMEP_OK)
    st = vmep_group_allgather(ep->group, &proposed, sizeof(proposed),
                              ep->seen_from);
  status = status != VMEP_OK ? status : st;
  int want = status == VMEP_OK ? (int)(int64_t)ep->seen_from[0] : -1;
  for (int r = 0; r < size; r++) {
    ep->seen_from[r] = status == VMEP_OK ? ep->session[r] : 0;
    if (status == VMEP_OK)
      set_connected(ep, r, 1);
  }
  /* The index is ours only once taken: a refused one belongs to another
   * live buffer, which must keep it. */
  if (status == VMEP_OK && ep->rank != 0 && want >= 0) {
    if (shape_take(shape_hash(ep), ep->rank, want) < 0)
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "vmep_ep_create: rank 0 named this buffer "
                        "\"ep-%016llx-%d\", the name of another live buffer "
                        "of this shape in this process",
                        (unsigned long long)shape_hash(ep), want);
    *index = want;
  }
  return status;
}

vmep_status vmep__ep_membership_init(vmep_ep *ep, vmep_status before) {
  vmep_status status = before;
  int elastic = vmep__group_elastic(ep->group);
  struct vmep_store_client *c = vmep__group_store(ep->group);
  uint64_t mine = own_session(ep, c);
  int index = -1;
  ep->changed = elastic || ep->num_ranks > vmep_group_size(ep->group);
  /* An elastic rank names its buffer alone (the lowest free index here);
   * a fixed group takes rank 0's. */
  if (c && status == VMEP_OK && (elastic || ep->rank == 0)) {
    index = shape_take(shape_hash(ep), ep->rank, -1);
    if (index < 0)
      status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                          "vmep_ep_create: 64 buffers of this shape are alive "
                          "in this process (or 64 shapes): no store name is "
                          "left");
  }
  if (elastic) {
    set_connected(ep, ep->rank, 1);
    ep->session[ep->rank] = mine;
  } else {
    status = fixed_start(ep, mine, &index, status);
  }
  if (index >= 0) { /* from here on, leave() gives the index back */
    ep->ns_index = index;
    snprintf(ep->ns, sizeof(ep->ns), "vmep/ep-%016llx-%d",
             (unsigned long long)shape_hash(ep), index);
  }
  for (int r = 0; status == VMEP_OK && r < ep->num_ranks; r++)
    if (!is_connected(ep, r))
      status = write_mask(ep, r, 1);
  /* Without a store, or when rank 0 could not name the buffer (its failure
   * fails the creation's agreement), there is nothing to publish. */
  if (status != VMEP_OK || !c || index < 0)
    return status;
  status = vmep__ep_remote_publish(ep, c);
  return status == VMEP_OK ? vmep__window_publish(ep->window, c, ep->ns)
                           : status;
}

/* An allgather of `words` u64 words among the connected ranks: into
 * all[n * words] in connected order. Each part leads with this process's
 * next sequence number, and a part consumed before is never taken again,
 * so a view that comes back (the same ranks and sessions, hence the
 * same tags) cannot complete on leftovers of its earlier turn. */
static vmep_status gather(vmep_ep *ep, struct vmep_store_client *c,
                          uint64_t tag, const uint64_t *mine, int words,
                          uint64_t *all) {
  static uint64_t sequence;
  int ranks[VMEP_LL_MAX_RANKS];
  int n = connected_list(ep, ranks);
  size_t part = (size_t)(words + 1);
  uint64_t *parts = vmep__malloc((size_t)n * part * sizeof(uint64_t));
  uint64_t *seen = vmep__malloc((size_t)n * sizeof(uint64_t));
  uint64_t me[1 + GATHER_WORDS];
  vmep_status status = VMEP_OK;
  if (!parts || !seen)
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "membership: no memory for %d ranks", n);
  me[0] = __atomic_add_fetch(&sequence, 1, __ATOMIC_RELAXED);
  for (int w = 0; w < words; w++)
    me[1 + w] = mine[w];
  for (int i = 0; status == VMEP_OK && i < n; i++)
    seen[i] = ep->seen[ranks[i]];
  if (status == VMEP_OK)
    status = vmep__member_allgather_fresh(
        c, ep->ns, tag, ep->rank, ranks, n, me, part * sizeof(uint64_t), parts,
        vmep__group_timeout_ms(ep->group), seen);
  for (int i = 0; status == VMEP_OK && i < n; i++) {
    ep->seen[ranks[i]] = seen[i];
    for (int w = 0; w < words; w++)
      all[(size_t)i * words + w] = parts[(size_t)i * part + 1 + w];
  }
  vmep__free(parts);
  vmep__free(seen);
  return status;
}

/* Sets our four epochs of both parities to `base`, and raises our flags
 * [b][rank] to `base` in the buffer of every connected rank (ours
 * included), so that every rank of the set, old or new, continues from
 * base + 1. Host copies: every rank of the set waits for the others after
 * this, so nothing reads the flags before they are written. */
static vmep_status raise_flags(vmep_ep *ep, uint64_t base) {
  const char *call = "vmep_ep_connect_ranks: flag resync";
  const size_t flags[4] = {ep->layout.disp_ready, ep->layout.disp_ack,
                           ep->layout.comb_ready, ep->layout.comb_ack};
  const uint64_t epochs[4] = {base, base, base, base};
  struct vmep_ll_state *st = ep->state;
  /* disp_epoch[2] and comb_epoch[2] lead the state, in that order. */
  vmep_status status = vmep__ep_device_put(&ep->dev, st->disp_epoch, epochs,
                                           sizeof(epochs), call);
  for (int r = 0; status == VMEP_OK && r < ep->num_ranks; r++) {
    char *peer = vmep_window_peer(ep->window, r);
    if (is_connected(ep, r) && r != ep->rank &&
        vmep__window_peer_kind(ep->window, r) == VMEP_PEER_REMOTE)
      status = vmep__ep_remote_raise(ep, r, flags, 4, base);
    if (!is_connected(ep, r) || !peer)
      continue;
    for (int f = 0; status == VMEP_OK && f < 4; f++)
      for (int b = 0; status == VMEP_OK && b < 2; b++)
        status = vmep__ep_device_put(
            &ep->dev,
            peer + flags[f] +
                ((size_t)b * (size_t)ep->num_ranks + (size_t)ep->rank) *
                    sizeof(uint64_t),
            &base, sizeof(base), call);
  }
  return status;
}

/* Every connected rank agrees on an epoch above all it used, and raises
 * its flags to it in every connected window. */
static vmep_status resync(vmep_ep *ep, struct vmep_store_client *c) {
  struct vmep_ll_state st;
  int ranks[VMEP_LL_MAX_RANKS];
  uint64_t epochs[2 * VMEP_LL_MAX_RANKS];
  int n = connected_list(ep, ranks);
  vmep_status status =
      vmep__ep_device_get(&ep->dev, &st, ep->state, sizeof(st),
                          "vmep_ep_connect_ranks: reading the epochs");
  if (status != VMEP_OK)
    return status;
  /* Ours: the highest epoch, and the dispatches made (which pick the
   * buffer parity on the host). */
  uint64_t mine[2] = {0, ep->calls};
  for (int b = 0; b < 2; b++) {
    mine[0] = st.disp_epoch[b] > mine[0] ? st.disp_epoch[b] : mine[0];
    mine[0] = st.comb_epoch[b] > mine[0] ? st.comb_epoch[b] : mine[0];
  }
  uint64_t tag = view_tag(ep, 1);
  status = gather(ep, c, tag, mine, 2, epochs);
  if (status != VMEP_OK)
    return status;
  uint64_t base = 0, calls = 0;
  for (int i = 0; i < n; i++) {
    base = epochs[2 * i] > base ? epochs[2 * i] : base;
    calls = epochs[2 * i + 1] > calls ? epochs[2 * i + 1] : calls;
  }
  /* +2: a rank that died mid-call may have run one epoch ahead. The
   * copies may still be in flight when cuMemcpyHtoD returns: wait for
   * them before telling the others (a kernel of ours on another stream,
   * or a peer's, must see the raised flags). */
  status = raise_flags(ep, base + 2);
  if (status == VMEP_OK)
    status = vmep__ep_device_sync(&ep->dev, "vmep_ep_connect_ranks");
  if (status != VMEP_OK)
    return status;
  /* Every rank continues with the same parity; handles from before the
   * change are refused as stale. */
  ep->calls = calls;
  ep->calls_at_change = calls;
  memset(ep->parity_call, 0, sizeof(ep->parity_call));
  memset(ep->dispatch_pending, 0, sizeof(ep->dispatch_pending));
  memset(ep->combine_pending, 0, sizeof(ep->combine_pending));
  ep->barriers = 0;
  /* Nobody starts a call before everybody's flags are raised. */
  return gather(ep, c, tag + 1, mine, 2, epochs);
}

static vmep_status check_ep(const vmep_ep *ep, const char *call) {
  return ep ? VMEP_OK
            : vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: ep is NULL",
                         call);
}

static vmep_status check_ranks(const vmep_ep *ep, const int *ranks, int n,
                               const char *call) {
  if (n < 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: n = %d, expected >= 0", call, n);
  if (n > 0 && !ranks)
    return vmep__ep_null_arg(call, "ranks");
  for (int i = 0; i < n; i++) {
    if (ranks[i] < 0 || ranks[i] >= ep->num_ranks)
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "%s: ranks[%d] = %d, expected 0..%d", call, i, ranks[i],
                        ep->num_ranks - 1);
    if (ranks[i] == ep->rank)
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "%s: ranks[%d] = %d is this rank", call, i, ranks[i]);
  }
  return VMEP_OK;
}

int vmep_ep_max_ranks(const vmep_ep *ep) { return ep ? ep->num_ranks : 0; }

vmep_status vmep_ep_query_mask(vmep_ep *ep, int32_t *masked_out) {
  const char *call = "vmep_ep_query_mask";
  vmep_status status = check_ep(ep, call);
  if (status == VMEP_OK && !masked_out)
    status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "%s: masked_out is NULL", call);
  if (status == VMEP_OK)
    status = quiesce(ep, call);
  if (status == VMEP_OK) {
    status = vmep__ep_device_get(&ep->dev, masked_out, ep->state->masked,
                                 sizeof(int32_t) * (size_t)ep->num_ranks, call);
    vmep__ep_device_leave(&ep->dev);
  }
  return status;
}

vmep_status vmep_ep_set_mask(vmep_ep *ep, int rank, int masked) {
  vmep_status status = check_ep(ep, "vmep_ep_set_mask");
  if (status == VMEP_OK && (rank < 0 || rank >= ep->num_ranks ||
                            rank == ep->rank || !is_connected(ep, rank)))
    status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "vmep_ep_set_mask: rank %d is %s", rank,
                        rank == ep->rank ? "this rank"
                        : rank >= 0 && rank < ep->num_ranks
                            ? "not connected (vmep_ep_connect_ranks)"
                            : "out of range");
  if (status == VMEP_OK)
    status = quiesce(ep, "vmep_ep_set_mask");
  if (status == VMEP_OK) {
    status = settle(ep, write_mask(ep, rank, masked), "vmep_ep_set_mask");
  }
  return status;
}

vmep_status vmep_ep_clear_mask(vmep_ep *ep) {
  vmep_status status = check_ep(ep, "vmep_ep_clear_mask");
  if (status == VMEP_OK)
    status = quiesce(ep, "vmep_ep_clear_mask");
  if (status != VMEP_OK)
    return status;
  for (int r = 0; status == VMEP_OK && r < ep->num_ranks; r++)
    if (is_connected(ep, r) && r != ep->rank)
      status = write_mask(ep, r, 0);
  return settle(ep, status, "vmep_ep_clear_mask");
}

/* The start of a membership change: valid arguments, a store, and this
 * rank's device work finished (the device stays entered: the caller leaves
 * it). */
static vmep_status begin_change(vmep_ep *ep, const int *ranks, int n,
                                const char *call,
                                struct vmep_store_client **c_out) {
  vmep_status status = check_ep(ep, call);
  if (status == VMEP_OK)
    status = check_ranks(ep, ranks, n, call);
  if (status != VMEP_OK)
    return status;
  *c_out = store_of(ep, call);
  return *c_out ? quiesce(ep, call) : VMEP_ERR_UNSUPPORTED;
}

/* Rank r leaves this buffer's view: masked, unmapped, out of the peer
 * table and the connected set. Returns the first error. */
static vmep_status drop(vmep_ep *ep, int r) {
  vmep_status status = write_mask(ep, r, 1);
  set_connected(ep, r, 0);
  if (vmep__window_peer_kind(ep->window, r) == VMEP_PEER_REMOTE)
    vmep__ep_remote_detach(ep, r);
  vmep_status st = vmep__window_detach(ep->window, r);
  status = status != VMEP_OK ? status : st;
  st = write_peer(ep, r);
  return status != VMEP_OK ? status : st;
}

/* A newcomer of one connect call, and what we knew of its rank before. */
struct newcomer {
  int rank, died;
  uint64_t session;
};

/* Takes a newcomer of a failed connect back out: dropped, with what we
 * knew of its rank before the call, so that the call can be retried. */
static void undo_newcomer(vmep_ep *ep, const struct newcomer *was) {
  (void)drop(ep, was->rank);
  ep->died[was->rank] = (unsigned char)was->died;
  ep->session[was->rank] = was->session;
  /* seen[] keeps what the failed call consumed: the store still holds the
   * peer's parts of that attempt, and a retry with the same tags must not
   * complete on them. A new session of the rank still restarts it. */
}

vmep_status vmep_ep_connect_ranks(vmep_ep *ep, const int *ranks, int n,
                                  int activate) {
  struct vmep_store_client *c = NULL;
  vmep_status status = begin_change(ep, ranks, n, "vmep_ep_connect_ranks", &c);
  if (status != VMEP_OK)
    return status;
  struct newcomer added[VMEP_LL_MAX_RANKS];
  int nadded = 0;
  for (int i = 0; status == VMEP_OK && i < n; i++) {
    int r = ranks[i];
    if (is_connected(ep, r))
      continue;
    /* Only the record of the rank's current process is mapped (one an
     * earlier process left is waited past); a rank id that died comes back
     * as a new process, which we wait for. A new process starts its
     * allgather sequence afresh; a rank that was disconnected alive comes
     * back as itself (its session) and goes on with its sequence, so that
     * its parts of an earlier turn of this view are not taken again. */
    struct newcomer was = {r, ep->died[r], ep->session[r]};
    status = vmep__window_attach(ep->window, c, r,
                                 vmep__group_timeout_ms(ep->group), ep->died[r],
                                 "vmep_ep_connect_ranks", &ep->session[r]);
    if (status == VMEP_OK && ep->session[r] != ep->seen_from[r]) {
      ep->seen[r] = 0;
      ep->seen_from[r] = ep->session[r];
    }
    ep->died[r] = status == VMEP_OK ? 0 : ep->died[r];
    if (status == VMEP_OK &&
        vmep__window_peer_kind(ep->window, r) == VMEP_PEER_REMOTE)
      status = vmep__ep_remote_attach(ep, c, r, ep->session[r],
                                      "vmep_ep_connect_ranks");
    if (status == VMEP_OK)
      status = write_peer(ep, r);
    if (status == VMEP_OK)
      status = write_mask(ep, r, !activate);
    if (status == VMEP_OK) {
      set_connected(ep, r, 1);
      added[nadded++] = was;
    } else {
      undo_newcomer(ep, &was);
    }
  }
  /* A remote rank that stayed connected here may have dropped us and come
   * back alive: its end of our endpoint is gone, so make it again. */
  for (int r = 0; status == VMEP_OK && r < ep->num_ranks; r++)
    if (is_connected(ep, r) && vmep__ep_remote_failed(ep, r))
      status = vmep__ep_remote_attach(ep, c, r, ep->session[r],
                                      "vmep_ep_connect_ranks");
  if (status == VMEP_OK)
    status = resync(ep, c);
  /* A newcomer that cannot be mapped, or a resync that fails, undoes this
   * call's newcomers: without the resync they would be waited for on flags
   * nobody raised. */
  for (int i = 0; status != VMEP_OK && i < nadded; i++)
    undo_newcomer(ep, &added[i]);
  if (status == VMEP_OK && nadded > 0)
    ep->changed = 1;
  vmep__ep_device_leave(&ep->dev);
  return status;
}

/* After a disconnect: a rank that died must not fail the store's waits any
 * more, and when its id connects again we wait for its successor; a rank
 * that is alive (it left, or was only dropped) may come back as itself. */
static vmep_status forget(vmep_ep *ep, struct vmep_store_client *c, int r) {
  int dead = 0;
  vmep_status status = vmep__member_is_dead(c, r, &dead);
  if (status == VMEP_OK)
    ep->died[r] = (unsigned char)dead;
  return status == VMEP_OK ? vmep__member_forget(c, r, NULL) : status;
}

vmep_status vmep_ep_disconnect_ranks(vmep_ep *ep, const int *ranks, int n) {
  struct vmep_store_client *c = NULL;
  vmep_status status =
      begin_change(ep, ranks, n, "vmep_ep_disconnect_ranks", &c);
  if (status != VMEP_OK)
    return status;
  int removed = 0;
  for (int i = 0; i < n; i++) {
    int r = ranks[i];
    if (!is_connected(ep, r))
      continue;
    removed++;
    /* drop takes r out of the view even when a step of it fails: forget
     * it all the same, or connecting it again would wait for a record
     * other than the one it has. */
    vmep_status st = drop(ep, r);
    vmep_status forgot = forget(ep, c, r);
    st = st != VMEP_OK ? st : forgot;
    status = status != VMEP_OK ? status : st;
  }
  /* A call that removed nobody (documented as a no-op) changes nothing,
   * so that ranks that made it and ranks that did not stay alike. */
  if (removed > 0) {
    ep->barriers = 0;
    ep->changed = 1;
  }
  return settle(ep, status, "vmep_ep_disconnect_ranks");
}

vmep_status vmep_ep_disconnect_dead(vmep_ep *ep, int *count_out) {
  const char *call = "vmep_ep_disconnect_dead";
  unsigned char dead[VMEP_LL_MAX_RANKS];
  int ranks[VMEP_LL_MAX_RANKS], n = 0;
  vmep_status status = check_ep(ep, call);
  struct vmep_store_client *c = status == VMEP_OK ? store_of(ep, call) : NULL;
  if (!c)
    return status != VMEP_OK ? status : VMEP_ERR_UNSUPPORTED;
  status = vmep__member_dead(c, ep->num_ranks, dead);
  for (int r = 0; status == VMEP_OK && r < ep->num_ranks; r++)
    if (dead[r] && r != ep->rank && is_connected(ep, r))
      ranks[n++] = r;
  if (status == VMEP_OK && n > 0) {
    vmep_log_info("disconnecting %d dead rank(s), the first rank %d", n,
                  ranks[0]);
    status = vmep_ep_disconnect_ranks(ep, ranks, n);
  }
  if (status == VMEP_OK && count_out)
    *count_out = n;
  return status;
}

vmep_status vmep_ep_barrier(vmep_ep *ep) {
  const char *call = "vmep_ep_barrier";
  vmep_status status = check_ep(ep, call);
  struct vmep_store_client *c = status == VMEP_OK ? store_of(ep, call) : NULL;
  if (!c)
    return status != VMEP_OK ? status : VMEP_ERR_UNSUPPORTED;
  return gather(ep, c, view_tag(ep, 3) + ++ep->barriers, NULL, 0, NULL);
}

void vmep__ep_membership_leave(vmep_ep *ep) {
  if (ep->ns[0])
    shape_give(shape_hash(ep), ep->rank, ep->ns_index);
  ep->ns[0] = '\0';
}
