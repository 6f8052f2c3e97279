/*
 * Symmetric windows: every rank of a group allocates one region, and every
 * rank maps every peer's. The ranks first agree on one strategy (the
 * strongest all can use; FABRIC when they span nodes), then exchange
 * descriptors through the group and POSIX fds through a short-lived fd
 * server. VMM regions are mapped into one reserved VA range at
 * base + rank * stride; LEGACY IPC cannot choose addresses, so the peer
 * table is what kernels use in every case. Each fallible step ends with an
 * allgather of statuses, so a failure on one rank unwinds every rank.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "boot/boot.h"
#include "ep/ep.h"
#include "mem/mem.h"

struct vmep_window {
  vmep_group *group;
  int rank, size, device;
  int slots; /* ranks the window has room for (>= size) */
  vmep_mem_strategy strategy;
  vmep_region *local;
  size_t stride;
  CUdeviceptr base;        /* VMM: the reserved range [size * stride] */
  int own_slot_mapped;     /* VMM: our region mapped at base + rank * stride */
  vmep_mapping **mappings; /* [slots], NULL for ourselves */
  void **peers;            /* [slots] what each rank's region is here */
  struct vmep_fd_server *server; /* serves our fd to ranks that join */
  char ns[64];                   /* store namespace of our member record */
};

/* What each rank tells the others at each step. */
struct step_report {
  int32_t status;
  uint32_t value; /* step 1: usable strategies; step 2: descriptor bytes */
  unsigned char desc[VMEP_MEM_DESC_MAX_BYTES];
};

/* Allgathers this rank's report; when any rank failed, returns (on every
 * rank) that failure: ours as it is, a peer's as VMEP_ERR_PEER naming it. */
static vmep_status share_step(vmep_window *w, vmep_status mine,
                              struct step_report *me, struct step_report *all,
                              const char *step) {
  me->status = mine;
  vmep_status status = vmep_group_allgather(w->group, me, sizeof(*me), all);
  if (status != VMEP_OK || mine != VMEP_OK)
    return status != VMEP_OK ? status : mine;
  for (int r = 0; r < w->size; r++)
    if (all[r].status != VMEP_OK)
      return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                        "vmep_window_create: rank %d failed to %s (%s)", r,
                        step, vmep_status_name((vmep_status)all[r].status));
  return VMEP_OK;
}

/* The refusal when the ranks share no strategy: which strategies each
 * rank allows, and why this rank cannot use the others. */
static vmep_status no_common_strategy(const vmep_window *w,
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
    used += (size_t)snprintf(
        ranks + used, sizeof(ranks) - used, "%s%d:%s%s%s", r ? " " : "", r,
        all[r].value & VMEP_REGION_ALLOW_FABRIC ? "F" : "",
        all[r].value & VMEP_REGION_ALLOW_POSIX_FD ? "P" : "",
        all[r].value & VMEP_REGION_ALLOW_LEGACY ? "L" : "");
  return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                    "vmep_window_create: no sharing strategy is usable on "
                    "every rank (VMEP_MEM_SHARE=%s; usable per rank, F fabric "
                    "P posix_fd L legacy: %s); on this rank%s",
                    vmep__config_get(VMEP_CONFIG_MEM_SHARE), ranks,
                    why[0] ? why : ": all usable");
}

/* The strongest strategy in every rank's mask; FABRIC alone across nodes. */
static vmep_status agree_strategy(vmep_window *w,
                                  const struct step_report *all) {
  unsigned common = VMEP_REGION_ALLOW_ALL;
  int spans_nodes = 0;
  for (int r = 0; r < w->size; r++) {
    common &= all[r].value;
    spans_nodes |= vmep_group_node(w->group, r) != vmep_group_node(w->group, 0);
  }
  if (spans_nodes)
    common &= VMEP_REGION_ALLOW_FABRIC;
  for (int s = VMEP_MEM_FABRIC; s <= VMEP_MEM_LEGACY; s++)
    if (common & (1u << s)) {
      w->strategy = (vmep_mem_strategy)s;
      return VMEP_OK;
    }
  for (int r = 0; r < w->size; r++)
    if (spans_nodes && !(all[r].value & VMEP_REGION_ALLOW_FABRIC))
      return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                        "vmep_window_create: the ranks span nodes, which needs "
                        "fabric handles, and rank %d cannot use them (see "
                        "vmep-info on its node)",
                        r);
  return no_common_strategy(w, all);
}

/* Maps rank r's region from its serialized descriptor (fd fetched from its
 * server in job `job`). */
static vmep_status map_peer(vmep_window *w, int r, const void *bytes,
                            size_t len, const char *job) {
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
                      "vmep_window_create: rank %d's region has %llu B, ours "
                      "%zu B",
                      r, (unsigned long long)desc.size, w->stride);
  }
  CUdeviceptr at = w->base ? w->base + (CUdeviceptr)r * w->stride : 0;
  status = vmep__mapping_import(w->device, &desc, at, &w->mappings[r]);
  if (status == VMEP_OK)
    w->peers[r] = vmep_mapping_ptr(w->mappings[r]);
  return status;
}

/* Exports our region, serves its fd if it has one, and maps every peer. */
static vmep_status exchange(vmep_window *w, struct step_report *all) {
  struct step_report me;
  vmep_mem_desc desc = {0};
  struct vmep_fd_server *server = NULL;
  char job[VMEP_JOB_ID_MAX + 1];
  uint64_t id = ((uint64_t)getpid() << 20) ^ (uint64_t)(uintptr_t)w;
  size_t len = 0;
  desc.fd = -1;
  /* Every rank serves its fd under rank 0's id for this window. */
  vmep_status status = vmep_group_broadcast(w->group, 0, &id, sizeof(id));
  if (status != VMEP_OK)
    return status;
  snprintf(job, sizeof(job), "w%016llx", (unsigned long long)id);
  memset(&me, 0, sizeof(me));
  status = vmep_region_export(w->local, &desc);
  if (status == VMEP_OK)
    status = vmep_mem_desc_serialize(&desc, me.desc, sizeof(me.desc), &len);
  if (status == VMEP_OK && desc.fd >= 0)
    status = vmep__fd_server_start(job, w->rank, vmep__group_token(w->group),
                                   &server);
  if (status == VMEP_OK && server)
    status = vmep__fd_server_offer(server, 0, desc.fd);
  vmep_mem_desc_close(&desc);
  me.value = (uint32_t)len;
  status = share_step(w, status, &me, all, "export its region");
  for (int r = 0; r < w->size && status == VMEP_OK; r++)
    if (r != w->rank)
      status = map_peer(w, r, all[r].desc, all[r].value, job);
  /* Everyone has fetched our fd (or failed) once all reach this point. */
  status = share_step(w, status, &me, all, "map its peers");
  vmep__fd_server_stop(server);
  return status;
}

static vmep_status place_local(vmep_window *w) {
  w->stride = vmep_region_size(w->local);
  w->peers[w->rank] = vmep_region_ptr(w->local);
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
    w->peers[w->rank] = (void *)(uintptr_t)slot;
  }
  return status;
}

/* Releases the mappings of peers' regions; returns the first error. */
static vmep_status release_peers(vmep_window *w) {
  vmep_status status = VMEP_OK;
  for (int r = 0; w->mappings && r < w->slots; r++) {
    vmep_status st = vmep_mapping_release(w->mappings[r]);
    w->mappings[r] = NULL;
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
  vmep__free(w->mappings);
  vmep__free(w->peers);
  vmep__free(w);
  return status;
}

/* A window of one rank that joined an elastic job: its own region, with
 * the strategy this device does best, in slot `rank`; peers come later
 * (vmep__window_attach). */
static vmep_status create_alone(vmep_window *w, size_t bytes) {
  const vmep_mem_caps *caps = NULL;
  vmep_status status = vmep__mem_probe_get(w->device, &caps);
  if (status != VMEP_OK)
    return status;
  w->strategy = caps->best;
  status = vmep_region_alloc(w->device, bytes, 1u << w->strategy, &w->local);
  return status == VMEP_OK ? place_local(w) : status;
}

static vmep_status create_together(vmep_window *w, size_t bytes) {
  struct step_report me, *all = vmep__calloc((size_t)w->size, sizeof(*all));
  if (!all)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "vmep_window_create: host allocation failed");
  memset(&me, 0, sizeof(me));
  vmep_status status = vmep__mem_usable(w->device, 0, &me.value, NULL);
  /* A rank that failed to probe still joins the exchange, so that no peer
   * waits for it until the timeout. */
  status = share_step(w, status, &me, all, "probe its device");
  if (status == VMEP_OK)
    status = agree_strategy(w, all);
  if (status == VMEP_OK) {
    vmep_status local =
        vmep_region_alloc(w->device, bytes, 1u << w->strategy, &w->local);
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
                                int slots, vmep_window **win_out) {
  if (!group || !win_out || bytes == 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_window_create: %s",
                      !group     ? "group is NULL"
                      : !win_out ? "win_out is NULL"
                                 : "size is 0");
  int size = vmep_group_size(group);
  if (slots < size)
    slots = size;
  vmep_window *w = vmep__calloc(1, sizeof(*w));
  if (w) {
    w->mappings = vmep__calloc((size_t)slots, sizeof(*w->mappings));
    w->peers = vmep__calloc((size_t)slots, sizeof(*w->peers));
  }
  if (!w || !w->mappings || !w->peers) {
    if (w) {
      vmep__free(w->mappings);
      vmep__free(w->peers);
      vmep__free(w);
    }
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "vmep_window_create: host allocation failed");
  }
  w->group = group;
  w->rank = vmep_group_rank(group);
  w->size = size;
  w->slots = slots;
  w->device = device;
  vmep_status status = vmep__group_elastic(group) ? create_alone(w, bytes)
                                                  : create_together(w, bytes);
  if (status != VMEP_OK) {
    (void)release(w);
    return status;
  }
  vmep_log_info("window of %zu B per rank, %d of %d slots, strategy %s",
                w->stride, vmep__group_elastic(group) ? 1 : w->size, w->slots,
                vmep_mem_strategy_name(w->strategy));
  *win_out = w;
  return VMEP_OK;
}

vmep_status vmep_window_create(vmep_group *group, int device, size_t bytes,
                               vmep_window **win_out) {
  return vmep__window_create(group, device, bytes, 0, win_out);
}

/* ---- membership: member records, attach and detach ------------------ */

/* What a member publishes under "<ns>/member/<rank>". */
struct member_record {
  uint32_t magic;
  uint32_t desc_len;
  uint64_t incarnation;
  unsigned char desc[VMEP_MEM_DESC_MAX_BYTES];
};
#define MEMBER_MAGIC 0x564d4d31u /* "VMM1" */

/* The fd server's job name for namespace `ns` of this job: the same in
 * every process of the job, short enough for a socket name. */
static void member_job(const vmep_window *w, char *job, size_t cap) {
  char key[256];
  snprintf(key, sizeof(key), "%s/%s", vmep__group_job_id(w->group), w->ns);
  snprintf(job, cap, "m%016llx",
           (unsigned long long)vmep__bytes_hash(key, strlen(key)));
}

vmep_status vmep__window_publish(vmep_window *w, struct vmep_store_client *c,
                                 const char *ns, uint64_t incarnation) {
  struct member_record rec;
  vmep_mem_desc desc = {0};
  char job[VMEP_JOB_ID_MAX + 1];
  size_t len = 0;
  snprintf(w->ns, sizeof(w->ns), "%s", ns);
  memset(&rec, 0, sizeof(rec));
  desc.fd = -1;
  vmep_status status = vmep_region_export(w->local, &desc);
  if (status == VMEP_OK)
    status = vmep_mem_desc_serialize(&desc, rec.desc, sizeof(rec.desc), &len);
  member_job(w, job, sizeof(job));
  if (status == VMEP_OK && desc.fd >= 0)
    status = vmep__fd_server_start(job, w->rank, vmep__group_token(w->group),
                                   &w->server);
  if (status == VMEP_OK && w->server)
    status = vmep__fd_server_offer(w->server, 0, desc.fd);
  vmep_mem_desc_close(&desc);
  rec.magic = MEMBER_MAGIC;
  rec.desc_len = (uint32_t)len;
  rec.incarnation = incarnation;
  if (status == VMEP_OK)
    status = vmep__member_publish(c, ns, w->rank, &rec, sizeof(rec));
  return status;
}

vmep_status vmep__window_withdraw(vmep_window *w) {
  struct vmep_store_client *c = vmep__group_store(w->group);
  vmep__fd_server_stop(w->server);
  w->server = NULL;
  return c && w->ns[0] ? vmep__member_withdraw(c, w->ns, w->rank) : VMEP_OK;
}

/* Fetches rank's member record, waiting past one whose incarnation is
 * `avoid` (a process that died and whose successor has not published yet). */
static vmep_status fetch_record(vmep_window *w, struct vmep_store_client *c,
                                int rank, int timeout_ms, uint64_t avoid,
                                struct member_record *rec) {
  uint64_t deadline = vmep__now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    void *bytes = NULL;
    size_t len = 0;
    int dead = 0;
    /* The successor of a process that died clears its dead key when it
     * says hello: until then, wait for it rather than fail. */
    vmep_status status = avoid ? vmep__member_is_dead(c, rank, &dead) : VMEP_OK;
    if (status == VMEP_OK && dead && vmep__now_ms() < deadline) {
      usleep(5000);
      continue;
    }
    if (status == VMEP_OK)
      status = vmep__member_fetch(c, w->ns, rank, vmep__ms_left(deadline),
                                  &bytes, &len);
    if (status != VMEP_OK)
      return status;
    if (len == sizeof(*rec))
      memcpy(rec, bytes, sizeof(*rec));
    vmep__free(bytes);
    if (len != sizeof(*rec) || rec->magic != MEMBER_MAGIC ||
        rec->desc_len > sizeof(rec->desc))
      return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                        "vmep_ep_connect_ranks: rank %d's member record is "
                        "malformed (%zu B)",
                        rank, len);
    if (avoid == 0 || rec->incarnation != avoid)
      return VMEP_OK;
    if (vmep__now_ms() >= deadline)
      return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR,
                        "vmep_ep_connect_ranks: rank %d's member record is "
                        "still the one of its previous process after %d ms",
                        rank, timeout_ms);
    usleep(5000);
  }
}

vmep_status vmep__window_attach(vmep_window *w, struct vmep_store_client *c,
                                int rank, int timeout_ms, uint64_t avoid,
                                uint64_t *incarnation_out) {
  char job[VMEP_JOB_ID_MAX + 1];
  struct member_record rec;
  if (rank < 0 || rank >= w->slots || rank == w->rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_ep_connect_ranks: rank %d, expected another rank "
                      "in 0..%d",
                      rank, w->slots - 1);
  if (w->mappings[rank])
    return VMEP_OK;
  vmep_status status = fetch_record(w, c, rank, timeout_ms, avoid, &rec);
  if (status != VMEP_OK)
    return status;
  member_job(w, job, sizeof(job));
  status = map_peer(w, rank, rec.desc, rec.desc_len, job);
  if (status == VMEP_OK && incarnation_out)
    *incarnation_out = rec.incarnation;
  return status;
}

vmep_status vmep__window_detach(vmep_window *w, int rank) {
  if (rank < 0 || rank >= w->slots || rank == w->rank)
    return VMEP_OK;
  vmep_status status = vmep_mapping_release(w->mappings[rank]);
  w->mappings[rank] = NULL;
  w->peers[rank] = NULL;
  return status;
}

int vmep__window_attached(const vmep_window *w, int rank) {
  return rank == w->rank ||
         (rank >= 0 && rank < w->slots && w->mappings[rank] != NULL);
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
  return w ? w->peers[w->rank] : NULL;
}

void *vmep_window_peer(const vmep_window *w, int rank) {
  return w && rank >= 0 && rank < w->slots ? w->peers[rank] : NULL;
}

/* VMM windows: where slot `rank` is (mapped or not); 0 for LEGACY. */
uintptr_t vmep__window_slot(const vmep_window *w, int rank) {
  return w->base ? (uintptr_t)(w->base + (CUdeviceptr)rank * w->stride) : 0;
}

size_t vmep_window_size(const vmep_window *w) { return w ? w->stride : 0; }

vmep_mem_strategy vmep_window_strategy(const vmep_window *w) {
  return w ? w->strategy : VMEP_MEM_NONE;
}
