/*
 * Symmetric windows made collectively: every rank of a group allocates one
 * region, and every rank maps the regions of the peers it can reach by
 * load and store. The ranks first exchange the strategies each can use;
 * the topology decision (topology.c) gives each node the strongest its
 * ranks share and each peer its class: peers of our node, and of other
 * nodes when both use FABRIC (never between pretend nodes), are mapped;
 * the others are marked remote (VMEP_PEER_REMOTE, no base). The ranks then
 * exchange descriptors through the group and POSIX fds through a
 * short-lived fd server. VMM regions are mapped into one reserved VA range
 * at base + rank * stride; LEGACY IPC cannot choose addresses, so the peer
 * table is what kernels use in every case. Each fallible step ends with an
 * agreement (agree.c), so a failure on one rank unwinds every rank.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "sym/window_int.h"

/* What each rank tells the others at each step. */
struct step_report {
  uint32_t value; /* step 1: usable strategies; step 2: descriptor bytes */
  unsigned char desc[VMEP_MEM_DESC_MAX_BYTES];
};

static vmep_status share_step(vmep_window *w, vmep_status mine,
                              const struct step_report *me,
                              struct step_report *all, const char *step) {
  return vmep__sym_agree(w->group, mine, me, sizeof(*me), all, w->call, step);
}

/* The refusal when the ranks of node `node` share no strategy: which
 * strategies each rank allows, and why this rank cannot use the others. */
static vmep_status no_common_strategy(const vmep_window *w, int node,
                                      const struct step_report *all) {
  char why[3 * VMEP_MEM_REASON_BYTES] = "", ranks[256] = "";
  vmep_mem_caps caps;
  size_t used = 0;
  if (vmep_mem_probe(w->device, &caps) == VMEP_OK)
    for (int s = VMEP_MEM_FABRIC; s <= VMEP_MEM_LEGACY; s++)
      if (!(all[w->rank].value & (1u << s)) && used < sizeof(why))
        used += (size_t)snprintf(why + used, sizeof(why) - used, "; %s: %s",
                                 vmep_mem_strategy_name((vmep_mem_strategy)s),
                                 caps.reason[s][0] ? caps.reason[s]
                                                   : "excluded by "
                                                     "VMEP_MEM_SHARE");
  used = 0;
  for (int r = 0; r < w->size && used < sizeof(ranks); r++)
    if (vmep_group_node(w->group, r) == node)
      used += (size_t)snprintf(
          ranks + used, sizeof(ranks) - used, "%s%d:%s%s%s", used ? " " : "", r,
          all[r].value & VMEP_REGION_ALLOW_FABRIC ? "F" : "",
          all[r].value & VMEP_REGION_ALLOW_POSIX_FD ? "P" : "",
          all[r].value & VMEP_REGION_ALLOW_LEGACY ? "L" : "");
  return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                    "%s: no sharing strategy is usable on every rank of node "
                    "%d (VMEP_MEM_SHARE=%s; usable per rank, F fabric P "
                    "posix_fd L legacy: %s); on this rank%s",
                    w->call, node, vmep__config_get(VMEP_CONFIG_MEM_SHARE),
                    ranks, why[0] ? why : ": all usable");
}

/* The topology decision over every rank's usable strategies: our
 * strategy, and remote peers marked as such (exchange skips them). */
static vmep_status decide(vmep_window *w, const struct step_report *all) {
  int *node_of = vmep__calloc((size_t)w->size, sizeof(*node_of));
  unsigned *usable = vmep__calloc((size_t)w->size, sizeof(*usable));
  vmep_mem_strategy *strategy =
      vmep__calloc((size_t)w->size, sizeof(*strategy));
  vmep_status status = VMEP_OK;
  if (!node_of || !usable || !strategy)
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "%s: host allocation failed", w->call);
  for (int r = 0; status == VMEP_OK && r < w->size; r++) {
    node_of[r] = vmep_group_node(w->group, r);
    usable[r] = all[r].value;
  }
  int bad = status == VMEP_OK
                ? vmep__topology_strategies(w->size, node_of, usable, strategy)
                : -1;
  if (bad >= 0)
    status = no_common_strategy(w, bad, all);
  int pretend = vmep__group_pretend_nodes(w->group) > 0;
  for (int r = 0; status == VMEP_OK && r < w->size; r++)
    if (vmep__topology_class(node_of, strategy, pretend, w->rank, r) ==
        VMEP_CLASS_REMOTE) {
      w->peers[r].kind = VMEP_PEER_REMOTE;
      w->remote++;
    }
  if (status == VMEP_OK)
    w->strategy = strategy[w->rank];
  vmep__free(node_of);
  vmep__free(usable);
  vmep__free(strategy);
  return status;
}

vmep_status vmep__window_offer(vmep_window *w, const char *job, void *bytes,
                               size_t cap, size_t *len_out,
                               struct vmep_fd_server **server_out) {
  vmep_mem_desc desc = {0};
  struct vmep_fd_server *server = NULL;
  desc.fd = -1;
  vmep_status status = vmep_region_export(w->local, &desc);
  if (status == VMEP_OK)
    status = vmep_mem_desc_serialize(&desc, bytes, cap, len_out);
  if (status == VMEP_OK && desc.fd >= 0)
    status = vmep__fd_server_start(job, w->rank, vmep__group_token(w->group),
                                   &server);
  if (status == VMEP_OK && server)
    status = vmep__fd_server_offer(server, 0, desc.fd);
  vmep_mem_desc_close(&desc);
  if (status != VMEP_OK) {
    vmep__fd_server_stop(server);
    server = NULL;
  }
  *server_out = server;
  return status;
}

vmep_status vmep__window_map_peer(vmep_window *w, int r, const void *bytes,
                                  size_t len, const char *job,
                                  const char *call) {
  vmep_mem_desc desc;
  vmep_status status = vmep_mem_desc_parse(bytes, len, &desc);
  if (status == VMEP_OK && desc.strategy == VMEP_MEM_POSIX_FD)
    status = vmep__fd_fetch(job, r, vmep__group_token(w->group), 0,
                            vmep__group_timeout_ms(w->group), &desc.fd);
  if (status != VMEP_OK)
    return status;
  if (desc.size != w->stride) {
    vmep_mem_desc_close(&desc);
    return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                      "%s: rank %d's region has %llu B, ours %zu B", call, r,
                      (unsigned long long)desc.size, w->stride);
  }
  CUdeviceptr at = w->base ? w->base + (CUdeviceptr)r * w->stride : 0;
  status = vmep__mapping_import(w->device, &desc, at, &w->peers[r].mapping);
  if (status == VMEP_OK) {
    w->peers[r].kind = VMEP_PEER_MAPPED;
    w->peers[r].base = vmep_mapping_ptr(w->peers[r].mapping);
  }
  return status;
}

/* Offers our region and maps every peer's. */
static vmep_status exchange(vmep_window *w, struct step_report *all) {
  struct step_report me;
  struct vmep_fd_server *server = NULL;
  char job[VMEP_JOB_ID_MAX + 1];
  uint64_t id = ((uint64_t)getpid() << 20) ^ (uint64_t)(uintptr_t)w;
  size_t len = 0;
  /* Every rank serves its fd under rank 0's id for this window. */
  vmep_status status = vmep_group_broadcast(w->group, 0, &id, sizeof(id));
  if (status != VMEP_OK)
    return status;
  snprintf(job, sizeof(job), "w%016llx", (unsigned long long)id);
  memset(&me, 0, sizeof(me));
  status = vmep__window_offer(w, job, me.desc, sizeof(me.desc), &len, &server);
  me.value = (uint32_t)len;
  status = share_step(w, status, &me, all, "export its region");
  for (int r = 0; r < w->size && status == VMEP_OK; r++)
    if (r != w->rank && w->peers[r].kind != VMEP_PEER_REMOTE)
      status =
          vmep__window_map_peer(w, r, all[r].desc, all[r].value, job, w->call);
  /* Everyone has fetched our fd (or failed) once all reach this point. */
  status = share_step(w, status, &me, all, "map its peers");
  vmep__fd_server_stop(server);
  return status;
}

/* Our own region in its slot: at base + rank * stride of a reserved range
 * for VMM strategies, where it was allocated for LEGACY. */
static vmep_status place_local(vmep_window *w) {
  struct vmep_sym_peer *self = &w->peers[w->rank];
  w->stride = vmep_region_size(w->local);
  self->kind = VMEP_PEER_SELF;
  self->base = vmep_region_ptr(w->local);
  if (w->strategy == VMEP_MEM_LEGACY)
    return VMEP_OK;
  vmep_mem_caps caps;
  vmep_status status = vmep_mem_probe(w->device, &caps);
  /* The alignment must be a power of two: the granularity, not the stride
   * (a region of 6 MiB gives a 6 MiB stride). */
  if (status == VMEP_OK)
    status = vmep__va_reserve((size_t)w->slots * w->stride, caps.granularity,
                              &w->base);
  if (status != VMEP_OK)
    return status;
  CUdeviceptr slot = w->base + (CUdeviceptr)w->rank * w->stride;
  status = vmep__region_map_at(w->local, slot);
  if (status == VMEP_OK) {
    w->own_slot_mapped = 1;
    self->base = (void *)(uintptr_t)slot;
  }
  return status;
}

/* Releases the mappings of peers' regions; returns the first error. */
static vmep_status release_peers(vmep_window *w) {
  vmep_status status = VMEP_OK;
  for (int r = 0; r < w->slots; r++) {
    vmep_status st = vmep__window_detach(w, r);
    status = status != VMEP_OK ? status : st;
  }
  return status;
}

/* Releases whatever `w` still holds, then `w`; returns the first error. */
static vmep_status release(vmep_window *w) {
  vmep_status status = release_peers(w), st;
  if (w->own_slot_mapped) {
    st = vmep__region_unmap_at(w->local,
                               w->base + (CUdeviceptr)w->rank * w->stride);
    status = status != VMEP_OK ? status : st;
  }
  if (w->base) {
    st = vmep__va_free(w->base, (size_t)w->slots * w->stride);
    status = status != VMEP_OK ? status : st;
  }
  vmep__fd_server_stop(w->server);
  st = vmep_region_free(w->local);
  status = status != VMEP_OK ? status : st;
  if (w->holds_group)
    vmep__group_release(w->group);
  vmep__free(w->peers);
  vmep__free(w);
  return status;
}

/* A window of one rank that joined an elastic job: its own region, with
 * the strongest strategy this device can use under VMEP_MEM_SHARE, in slot
 * `rank`; peers come later (vmep__window_attach). */
static vmep_status create_alone(vmep_window *w, size_t bytes) {
  unsigned usable = 0;
  vmep_status status = vmep__mem_usable(w->device, 0, &usable, NULL);
  if (status != VMEP_OK)
    return status;
  if (!usable)
    return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                      "%s: no sharing strategy is usable on device %d "
                      "(VMEP_MEM_SHARE=%s; see vmep-info)",
                      w->call, w->device,
                      vmep__config_get(VMEP_CONFIG_MEM_SHARE));
  w->strategy = VMEP_MEM_FABRIC;
  while (!(usable & (1u << w->strategy)))
    w->strategy = (vmep_mem_strategy)(w->strategy + 1);
  status = vmep_region_alloc(w->device, bytes, 1u << w->strategy, &w->local);
  return status == VMEP_OK ? place_local(w) : status;
}

static vmep_status create_together(vmep_window *w, size_t bytes) {
  struct step_report me, *all = vmep__calloc((size_t)w->size, sizeof(*all));
  if (!all)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "%s: host allocation failed", w->call);
  memset(&me, 0, sizeof(me));
  vmep_status status = vmep__mem_usable(w->device, 0, &me.value, NULL);
  /* A rank that failed to probe still joins the exchange, so that no peer
   * waits for it until the timeout. */
  status = share_step(w, status, &me, all, "probe its device");
  if (status == VMEP_OK) {
    /* A decision that fails on one rank only (no memory) still joins. */
    vmep_status local = decide(w, all);
    if (local == VMEP_OK)
      local = vmep_region_alloc(w->device, bytes, 1u << w->strategy, &w->local);
    if (local == VMEP_OK)
      local = place_local(w);
    status = share_step(w, local, &me, all, "allocate its region");
  }
  if (status == VMEP_OK)
    status = exchange(w, all);
  vmep__free(all);
  return status;
}

vmep_status vmep__window_create(vmep_group *group, int device, size_t bytes,
                                int slots, const char *call,
                                vmep_window **win_out) {
  if (!group || !win_out || bytes == 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: %s", call,
                      !group     ? "group is NULL"
                      : !win_out ? "win_out is NULL"
                                 : "size is 0");
  int size = vmep_group_size(group);
  if (slots < size)
    slots = size;
  vmep_window *w = vmep__calloc(1, sizeof(*w));
  if (w)
    w->peers = vmep__calloc((size_t)slots, sizeof(*w->peers));
  if (!w || !w->peers) {
    vmep__free(w);
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "%s: host allocation failed", call);
  }
  w->group = group;
  w->rank = vmep_group_rank(group);
  w->size = size;
  w->slots = slots;
  w->device = device;
  w->call = call;
  vmep_status status = vmep__group_elastic(group) ? create_alone(w, bytes)
                                                  : create_together(w, bytes);
  if (status != VMEP_OK) {
    (void)release(w);
    return status;
  }
  /* The group may not be destroyed under a window (VMEP_ERR_BUSY). */
  vmep__group_hold(group);
  w->holds_group = 1;
  vmep_log_info("window of %zu B per rank, %d of %d slots, strategy %s, %d "
                "remote peers",
                w->stride, vmep__group_elastic(group) ? 1 : w->size, w->slots,
                vmep_mem_strategy_name(w->strategy), w->remote);
  *win_out = w;
  return VMEP_OK;
}

vmep_status vmep_window_create(vmep_group *group, int device, size_t bytes,
                               vmep_window **win_out) {
  return vmep__window_create(group, device, bytes, 0, "vmep_window_create",
                             win_out);
}

vmep_status vmep__window_free(vmep_window *w) {
  if (!w)
    return VMEP_OK;
  vmep_status status = vmep__region_sync(w->local);
  vmep_status st = vmep__window_withdraw(w);
  status = status != VMEP_OK ? status : st;
  st = release(w);
  return status != VMEP_OK ? status : st;
}

vmep_status vmep_window_destroy(vmep_window *w) {
  if (!w)
    return VMEP_OK;
  if (vmep__group_elastic(w->group))
    return vmep__window_free(w);
  /* Our kernels may still write into peers' memory: finish them, then wait
   * until no rank uses the window; unmap the peers, and wait again, so
   * that no region is freed (and no process exits) while a peer still maps
   * it. */
  vmep_status status = vmep__region_sync(w->local);
  vmep_status st = vmep__window_withdraw(w);
  status = status != VMEP_OK ? status : st;
  st = vmep_group_barrier(w->group);
  status = status != VMEP_OK ? status : st;
  st = release_peers(w);
  status = status != VMEP_OK ? status : st;
  st = vmep_group_barrier(w->group);
  status = status != VMEP_OK ? status : st;
  st = release(w);
  return status != VMEP_OK ? status : st;
}

void *vmep_window_local(const vmep_window *w) {
  return w ? w->peers[w->rank].base : NULL;
}

void *vmep_window_peer(const vmep_window *w, int rank) {
  return w && rank >= 0 && rank < w->slots ? w->peers[rank].base : NULL;
}

int vmep__window_remote_peer(const vmep_window *w) {
  for (int r = 0; w && r < w->slots; r++)
    if (w->peers[r].kind == VMEP_PEER_REMOTE)
      return r;
  return -1;
}

enum vmep_peer_kind vmep__window_peer_kind(const vmep_window *w, int rank) {
  return w && rank >= 0 && rank < w->slots ? w->peers[rank].kind
                                           : VMEP_PEER_NONE;
}

size_t vmep_window_size(const vmep_window *w) { return w ? w->stride : 0; }

vmep_mem_strategy vmep_window_strategy(const vmep_window *w) {
  return w ? w->strategy : VMEP_MEM_NONE;
}
