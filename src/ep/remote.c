/*
 * Remote peers of an EP buffer (docs/INTERNODE.md): the ranks that the
 * topology decision does not map (other nodes, pretend nodes included)
 * are reached through the RDMA engine. Creation makes the engine, the
 * host memory that kernels and proxy share (mapped into the device,
 * registered with the engine), exchanges the records through the group,
 * connects, and starts the proxy thread; release undoes it in reverse.
 * Ranks that come later (elastic groups, connects after a disconnect)
 * are connected from the record each publishes in the store. The proxy
 * thread and the membership calls share the engine under one lock.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "boot/boot.h"
#include "ep/ep.h"

/* Upper bound of one rank's record (engine address + remote key); UCX's
 * are a few hundred bytes over TCP, a few KiB over InfiniBand. */
#define RECORD_MAX 16384
/* Idle turns of the proxy before it yields its core once. */
#define IDLE_SPINS 256

struct vmep_ep_remote {
  struct vmep_ep_proxy px;
  vmep_engine *engine;
  vmep_engine_mr *mr;
  void *host; /* vmep__ep_proxy_host_bytes, mapped into the device */
  char *dev;  /* its device address */
  size_t bytes;
  void *record; /* ours, published for ranks that connect later */
  size_t record_len;
  pthread_mutex_t lock; /* the engine and px: proxy turns, membership */
  int waiting;          /* atomic: membership calls waiting for the lock */
  pthread_t thread;
  int running;
  int stop; /* atomic */
};

static const char call[] = "vmep_ep_create";

static void *proxy_main(void *arg) {
  struct vmep_ep_remote *rm = arg;
  unsigned idle = 0;
  while (!__atomic_load_n(&rm->stop, __ATOMIC_ACQUIRE)) {
    /* A membership call wants the engine: let it have the lock first. */
    if (__atomic_load_n(&rm->waiting, __ATOMIC_ACQUIRE))
      sched_yield();
    pthread_mutex_lock(&rm->lock);
    int served = vmep__ep_proxy_step(&rm->px);
    pthread_mutex_unlock(&rm->lock);
    if (served)
      idle = 0;
    else if (++idle % IDLE_SPINS == 0)
      sched_yield();
  }
  return NULL;
}

/* The lock, for a membership call (the proxy yields to it). */
static void lock_for_host(struct vmep_ep_remote *rm) {
  __atomic_fetch_add(&rm->waiting, 1, __ATOMIC_ACQ_REL);
  pthread_mutex_lock(&rm->lock);
  __atomic_fetch_sub(&rm->waiting, 1, __ATOMIC_ACQ_REL);
}

/* The device address of a host address inside rm->host. */
static char *dev_of(const struct vmep_ep_remote *rm, const char *host) {
  return rm->dev + (host - (const char *)rm->host);
}

/* Engine, host memory and registration; *record_out our record. */
static vmep_status prepare(vmep_ep *ep, struct vmep_ep_remote *rm,
                           const struct vmep_ll_rank_set *remote, int n,
                           void **record_out, size_t *len_out) {
  struct vmep_engine_params params = {ep->rank, ep->num_ranks,
                                      (int)(ep->timeout_ns / 1000000)};
  vmep_status status = vmep__engine_create(&params, &rm->engine);
  rm->bytes = vmep__ep_proxy_host_bytes(&ep->layout, n);
  if (status == VMEP_OK)
    status = vmep__ep_device_host_alloc(&ep->dev, rm->bytes, &rm->host,
                                        &rm->dev, call);
  if (status != VMEP_OK)
    return status;
  vmep__ep_proxy_init(&rm->px, rm->engine, &ep->config, ep->rank, ep->num_ranks,
                      remote, rm->host);
  status = vmep__engine_mem_reg(rm->engine, rm->host, rm->bytes, 0, &rm->mr);
  if (status == VMEP_OK)
    status = vmep__ep_proxy_record(&rm->px, rm->mr, record_out, len_out);
  if (status == VMEP_OK && *len_out > RECORD_MAX)
    status = vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                        "%s: the engine's address and key take %zu B, more "
                        "than %d",
                        call, *len_out, RECORD_MAX);
  return status;
}

/* Allgathers the records and connects; every rank joins both steps. */
static vmep_status exchange(vmep_ep *ep, struct vmep_ep_remote *rm,
                            vmep_status status, const void *record,
                            size_t len) {
  static char none[1]; /* without memory: a capacity every rank exceeds */
  size_t sizes[VMEP_LL_MAX_RANKS];
  int size = vmep_group_size(ep->group);
  size_t capacity = (size_t)size * RECORD_MAX;
  char *all = vmep__malloc(capacity);
  if (!all && status == VMEP_OK)
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "%s: host allocation failed", call);
  vmep_status st = vmep_group_allgatherv(
      ep->group, status == VMEP_OK ? record : NULL, status == VMEP_OK ? len : 0,
      all ? all : none, all ? capacity : sizeof(none), sizes);
  status = vmep__sym_agree(ep->group, status != VMEP_OK ? status : st, NULL, 0,
                           NULL, call, "set up its inter-node engine");
  struct vmep_ll_rank_set now;
  memset(&now, 0, sizeof(now));
  for (int r = 0; r < size; r++)
    if (vmep__window_peer_kind(ep->window, r) == VMEP_PEER_REMOTE)
      vmep__rank_set_put(&now, r, 1);
  if (status == VMEP_OK)
    status = vmep__ep_proxy_connect(&rm->px, all, sizes, size, &now);
  vmep__free(all);
  return vmep__sym_agree(ep->group, status, NULL, 0, NULL, call,
                         "connect to its remote peers");
}

/*
 * The ranks this buffer keeps room for as remote peers: those the window
 * marked remote; with pretend nodes, when ranks may connect later (an
 * elastic group, or room beyond the group), every other rank, since which
 * of them land in other nodes is known only when they publish.
 */
static int room_for(const vmep_ep *ep, struct vmep_ll_rank_set *set) {
  int later = vmep__group_elastic(ep->group) ||
              ep->num_ranks > vmep_group_size(ep->group);
  int all = later && vmep__group_pretend_nodes(ep->group) > 1;
  int n = 0;
  memset(set, 0, sizeof(*set));
  for (int r = 0; ep->window && r < ep->num_ranks; r++)
    if (r != ep->rank &&
        (all || vmep__window_peer_kind(ep->window, r) == VMEP_PEER_REMOTE)) {
      vmep__rank_set_put(set, r, 1);
      n++;
    }
  return n;
}

/* Allocates the state, prepares it and, on success, starts the proxy. */
static vmep_status start(vmep_ep *ep, vmep_status status,
                         const struct vmep_ll_rank_set *remote, int n) {
  struct vmep_ep_remote *rm = vmep__calloc(1, sizeof(*rm));
  ep->remote = rm;
  if (!rm && status == VMEP_OK)
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "%s: host allocation failed", call);
  if (rm)
    pthread_mutex_init(&rm->lock, NULL);
  if (status == VMEP_OK)
    status = prepare(ep, rm, remote, n, &rm->record, &rm->record_len);
  /* A fixed group's ranks exchange records even after a failure here, so
   * that all fail together. */
  if (!vmep__group_elastic(ep->group))
    status = exchange(ep, rm, status, rm ? rm->record : NULL,
                      rm ? rm->record_len : 0);
  if (status == VMEP_OK && pthread_create(&rm->thread, NULL, proxy_main, rm))
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "%s: cannot start the inter-node proxy thread", call);
  if (status == VMEP_OK) {
    rm->running = 1;
    vmep_log_info("room for %d remote peers through ucx, GPU data staged "
                  "through host memory (%zu B mapped and registered)",
                  n, rm->bytes);
  }
  return status;
}

vmep_status vmep__ep_remote_init(vmep_ep *ep, vmep_status status) {
  struct vmep_ll_rank_set remote;
  int n = room_for(ep, &remote);
  if (vmep__group_elastic(ep->group))
    return status != VMEP_OK || n == 0 ? status : start(ep, status, &remote, n);
  /* Whether any rank has a remote peer: then all make the engine. */
  int size = vmep_group_size(ep->group);
  int *counts = vmep__calloc((size_t)size, sizeof(int));
  if (!counts && status == VMEP_OK)
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "%s: host allocation failed", call);
  status = vmep__sym_agree(ep->group, status, &n, sizeof(n), counts, call,
                           "find its remote peers");
  int any = 0;
  for (int r = 0; counts && status == VMEP_OK && r < size; r++)
    any |= counts[r] > 0;
  vmep__free(counts);
  if (status != VMEP_OK || !any)
    return status;
  return start(ep, status, &remote, n);
}

/* Our record's store namespace: the buffer's, plus "/net". */
static void net_ns(const vmep_ep *ep, char *ns, size_t size) {
  snprintf(ns, size, "%s/net", ep->ns);
}

vmep_status vmep__ep_remote_publish(vmep_ep *ep, struct vmep_store_client *c) {
  char ns[96];
  if (!ep->remote)
    return VMEP_OK;
  net_ns(ep, ns, sizeof(ns));
  return vmep__member_publish(c, ns, ep->rank, ep->remote->record,
                              ep->remote->record_len);
}

vmep_status vmep__ep_remote_attach(vmep_ep *ep, struct vmep_store_client *c,
                                   int r, uint64_t session,
                                   const char *caller) {
  struct vmep_ep_remote *rm = ep->remote;
  char ns[96];
  if (!rm || !rm->running || !vmep__rank_set_has(&rm->px.remote, r))
    return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                      "%s: rank %d is in another node, and this buffer was "
                      "made without room for it as a remote peer",
                      caller, r);
  net_ns(ep, ns, sizeof(ns));
  void *record = NULL;
  size_t len = 0;
  uint64_t from = 0;
  vmep_status status = vmep__member_fetch_current(
      c, ns, r, vmep__group_timeout_ms(ep->group), 0, &record, &len, &from);
  if (status == VMEP_OK && from != session)
    status = vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                        "%s: rank %d's inter-node record is of another "
                        "process than its member record",
                        caller, r);
  if (status == VMEP_OK) {
    lock_for_host(rm);
    vmep__ep_proxy_forget(&rm->px, r);
    status = vmep__ep_proxy_connect_one(&rm->px, r, record, len);
    pthread_mutex_unlock(&rm->lock);
  }
  vmep__free(record);
  return status;
}

void vmep__ep_remote_detach(vmep_ep *ep, int r) {
  struct vmep_ep_remote *rm = ep->remote;
  if (!rm || !rm->running)
    return;
  lock_for_host(rm);
  vmep__ep_proxy_forget(&rm->px, r);
  pthread_mutex_unlock(&rm->lock);
}

void vmep__ep_remote_mask(vmep_ep *ep, int r, int masked) {
  if (ep->remote)
    __atomic_store_n(&ep->remote->px.ring->masked[r], masked ? 1u : 0u,
                     __ATOMIC_RELEASE);
}

int vmep__ep_remote_failed(vmep_ep *ep, int r) {
  struct vmep_ep_remote *rm = ep->remote;
  if (!rm || !rm->running)
    return 0;
  lock_for_host(rm);
  int failed = rm->px.keys[r] && vmep__engine_peer_is_failed(rm->engine, r);
  pthread_mutex_unlock(&rm->lock);
  return failed;
}

vmep_status vmep__ep_remote_drain(vmep_ep *ep, const char *caller) {
  struct vmep_ep_remote *rm = ep->remote;
  if (!rm || !rm->running)
    return VMEP_OK;
  unsigned long long head = 0;
  vmep_status status = vmep__ep_device_get(
      &ep->dev, &head, &ep->state->ring_head, sizeof(head), caller);
  uint64_t deadline = vmep__now_ms() + (uint64_t)(ep->timeout_ns / 1000000);
  while (status == VMEP_OK &&
         __atomic_load_n(&rm->px.tail, __ATOMIC_ACQUIRE) < head) {
    if (vmep__now_ms() > deadline)
      return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR,
                        "%s: the inter-node proxy served %llu of the %llu "
                        "requests posted, within %lld ms",
                        caller, (unsigned long long)rm->px.tail, head,
                        ep->timeout_ns / 1000000);
    sched_yield();
  }
  if (status != VMEP_OK)
    return status;
  /* Delivered too; a failed peer's refusal is the kernels' business. */
  lock_for_host(rm);
  for (int r = 0; r < ep->num_ranks; r++)
    if (rm->px.keys[r] && !vmep__engine_peer_is_failed(rm->engine, r))
      (void)vmep__engine_flush(rm->engine, r, 0);
  pthread_mutex_unlock(&rm->lock);
  return VMEP_OK;
}

vmep_status vmep__ep_remote_raise(vmep_ep *ep, int r, const size_t *offsets,
                                  int n, uint64_t value) {
  struct vmep_ep_remote *rm = ep->remote;
  if (!rm || !rm->running)
    return VMEP_OK;
  lock_for_host(rm);
  vmep_status status = vmep__ep_proxy_raise(&rm->px, r, offsets, n, value);
  pthread_mutex_unlock(&rm->lock);
  return status;
}

char *vmep__ep_remote_outbox(const vmep_ep *ep, int r) {
  const struct vmep_ep_remote *rm = ep->remote;
  if (!rm || !rm->px.outbox[r])
    return NULL;
  /* Kernels add the layout's slot offsets to it: the outbox starts at
   * slots[0]. */
  return (char *)((uintptr_t)dev_of(rm, rm->px.outbox[r]) -
                  ep->layout.slots[0]);
}

char *vmep__ep_remote_inbox(const vmep_ep *ep, int r) {
  const struct vmep_ep_remote *rm = ep->remote;
  return rm && rm->px.inbox[r] ? dev_of(rm, rm->px.inbox[r]) : NULL;
}

void vmep__ep_remote_params(const vmep_ep *ep, struct vmep_ll_params *p) {
  const struct vmep_ep_remote *rm = ep->remote;
  if (!rm || !rm->running)
    return;
  p->ring = (struct vmep_ll_ring *)dev_of(rm, (const char *)rm->px.ring);
  p->stage = dev_of(rm, rm->px.stage);
}

uint64_t vmep__ep_remote_bytes_out(const vmep_ep *ep) {
  return ep->remote
             ? __atomic_load_n(&ep->remote->px.bytes_out, __ATOMIC_RELAXED)
             : 0;
}

void vmep__ep_remote_fini(vmep_ep *ep) {
  struct vmep_ep_remote *rm = ep->remote;
  if (!rm)
    return;
  if (rm->running) {
    __atomic_store_n(&rm->stop, 1, __ATOMIC_RELEASE);
    pthread_join(rm->thread, NULL);
  }
  if (ep->ns[0] && vmep__group_store(ep->group)) {
    char ns[96];
    net_ns(ep, ns, sizeof(ns));
    (void)vmep__member_withdraw(vmep__group_store(ep->group), ns, ep->rank);
  }
  vmep__engine_mem_dereg(rm->engine, rm->mr);
  vmep__engine_destroy(rm->engine); /* releases the peers' keys */
  if (rm->host) {
    int entered = vmep__ep_device_enter(&ep->dev) == VMEP_OK;
    (void)vmep__ep_device_host_free(&ep->dev, rm->host);
    if (entered)
      vmep__ep_device_leave(&ep->dev);
  }
  pthread_mutex_destroy(&rm->lock);
  vmep__free(rm->record);
  vmep__free(rm);
  ep->remote = NULL;
}
