/*
 * The EP buffer: one symmetric window per rank (layout.c) plus private
 * device memory for the routing state the kernels keep between dispatch
 * and combine. Creation resolves the device, the SM budget (ranks sharing
 * a GPU split its SMs, so that every rank's spinning kernels fit at once)
 * and the timeout, then zeroes the window's flags before any peer can
 * write them.
 */
#include <stdlib.h>
#include <string.h>

#include "boot/boot.h"
#include "ep/ep.h"

#define DEFAULT_NUM_SMS 24
#define ARENA_ALIGN 256

static vmep_status resolve_device(vmep_ep *ep) {
  int count = 0;
  vmep_status status = vmep_device_count(&count);
  if (status != VMEP_OK)
    return status;
  long long device = ep->config.device;
  if (device < 0 && vmep__config_get(VMEP_CONFIG_DEVICE)[0]) {
    status = vmep__config_int(VMEP_CONFIG_DEVICE, 0, count - 1, &device);
    if (status != VMEP_OK)
      return status;
  } else if (device < 0) {
    device = count > 0 ? vmep_group_local_rank(ep->group) % count : 0;
  }
  if (device < 0 || device >= count)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_ep_create: device %lld does not exist (%d visible)",
                      device, count);
  ep->config.device = (int)device;
  return VMEP_OK;
}

/* Ranks of this node on our GPU split its SMs between them. */
static vmep_status resolve_sms(vmep_ep *ep) {
  vmep_mem_caps caps;
  int sms = 0, sharing = 0;
  vmep_status status = vmep_mem_probe(ep->config.device, &caps);
  if (status == VMEP_OK)
    status = vmep__ep_device_sms(&ep->dev, &sms);
  if (status != VMEP_OK)
    return status;
  /* A rank joining an elastic job cannot ask the others: it takes the
   * config's num_sms (or the default) within the device's SMs. */
  int size = vmep_group_size(ep->group);
  unsigned char *uuids =
      vmep__group_elastic(ep->group) ? NULL : vmep__calloc((size_t)size, 16);
  if (!uuids && !vmep__group_elastic(ep->group))
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "vmep_ep_create: host allocation failed");
  if (uuids)
    status = vmep_group_allgather(ep->group, caps.uuid, 16, uuids);
  for (int r = 0; uuids && status == VMEP_OK && r < size; r++)
    sharing += memcmp(uuids + 16 * r, caps.uuid, 16) == 0;
  vmep__free(uuids);
  if (status != VMEP_OK)
    return status;
  int budget = sms / (sharing > 0 ? sharing : 1);
  int want = ep->config.num_sms ? ep->config.num_sms : DEFAULT_NUM_SMS;
  if (want > budget)
    vmep_log_info("num_sms %d capped to %d: %d ranks share device %d", want,
                  budget, sharing, ep->config.device);
  ep->config.num_sms = want < budget ? want : (budget > 0 ? budget : 1);
  return VMEP_OK;
}

/* Carves the private arena; with base NULL only sums its size. */
static size_t carve(vmep_ep *ep, char *base) {
  const size_t R = (size_t)ep->num_ranks, L = (size_t)ep->local_experts;
  const size_t T = (size_t)ep->config.max_tokens_per_rank;
  const size_t K = (size_t)ep->config.max_topk;
  struct {
    void **field;
    size_t bytes;
  } parts[] = {
      {(void **)&ep->peers, R * sizeof(char *)},
      {(void **)&ep->inbox, R * sizeof(char *)},
      {(void **)&ep->state, sizeof(struct vmep_ll_state)},
      {(void **)&ep->entries, 2 * R * T * K * sizeof(int)},
      {(void **)&ep->counts, 2 * R * (L + 1) * sizeof(int)},
      {(void **)&ep->begins, 2 * R * L * sizeof(int)},
      {(void **)&ep->recv_count_copy, 2 * L * sizeof(int)},
      {(void **)&ep->row_map, 2 * L * R * T * sizeof(unsigned int)},
      {(void **)&ep->sel_weights, 2 * R * T * K * sizeof(float)},
      {(void **)&ep->src_weighted, 2 * R * sizeof(int)},
  };
  size_t at = 0;
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(parts); i++) {
    if (base)
      *parts[i].field = base + at;
    at += vmep__round_up(parts[i].bytes, ARENA_ALIGN);
  }
  return at;
}

/* Device memory: the arena, the peer table, zeroed state and flags. */
static vmep_status setup_device(vmep_ep *ep) {
  const char *call = "vmep_ep_create";
  size_t bytes = carve(ep, NULL);
  char *bases[VMEP_LL_MAX_RANKS], *inbox[VMEP_LL_MAX_RANKS];
  vmep_status status = vmep__ep_device_alloc(&ep->dev, bytes, &ep->arena, call);
  if (status != VMEP_OK)
    return status;
  carve(ep, ep->arena);
  for (int r = 0; r < ep->num_ranks; r++) {
    bases[r] = vmep__ep_peer_base(ep, r);
    inbox[r] = vmep__ep_inbox(ep, r);
  }
  status = vmep__ep_device_zero(&ep->dev, ep->arena, bytes, call);
  if (status == VMEP_OK)
    status = vmep__ep_device_put(&ep->dev, ep->peers, bases,
                                 sizeof(char *) * (size_t)ep->num_ranks, call);
  if (status == VMEP_OK)
    status = vmep__ep_device_put(&ep->dev, ep->inbox, inbox,
                                 sizeof(char *) * (size_t)ep->num_ranks, call);
  if (status == VMEP_OK)
    status = vmep__ep_device_zero(&ep->dev, vmep_window_local(ep->window),
                                  ep->layout.total, call);
  return status == VMEP_OK ? vmep__ep_device_sync(&ep->dev, call) : status;
}

char *vmep__ep_peer_base(const vmep_ep *ep, int r) {
  if (vmep__window_peer_kind(ep->window, r) == VMEP_PEER_REMOTE)
    return vmep__ep_remote_outbox(ep, r);
  return vmep_window_peer(ep->window, r);
}

char *vmep__ep_inbox(const vmep_ep *ep, int r) {
  if (vmep__window_peer_kind(ep->window, r) == VMEP_PEER_REMOTE)
    return vmep__ep_remote_inbox(ep, r);
  return vmep_window_local(ep->window);
}

static vmep_status create(vmep_ep *ep) {
  vmep_status status = resolve_device(ep);
  if (status == VMEP_OK)
    status = vmep__ep_device_open(ep->config.device, &ep->dev);
  if (status == VMEP_OK)
    status = resolve_sms(ep);
  if (status != VMEP_OK)
    return status;
  vmep__ep_layout(&ep->config, ep->num_ranks, &ep->layout);
  status = vmep__window_create(ep->group, ep->config.device, ep->layout.total,
                               ep->num_ranks, "vmep_ep_create", &ep->window);
  if (status != VMEP_OK)
    return status;
  status = vmep__ep_device_enter(&ep->dev);
  int entered = status == VMEP_OK;
  /* Peers in other nodes: the engine and the proxy (collective). */
  status = vmep__ep_remote_init(ep, status);
  if (status == VMEP_OK)
    status = setup_device(ep);
  /* Every rank joins the same collectives whatever happened before, so
   * that one rank's failure fails them all instead of leaving the others
   * waiting. */
  status = vmep__ep_membership_init(ep, status);
  if (entered)
    vmep__ep_device_leave(&ep->dev);
  if (vmep__group_elastic(ep->group))
    return status;
  /* No rank's flags may be written before every rank zeroed its own. */
  return vmep__sym_agree(ep->group, status, NULL, 0, NULL, "vmep_ep_create",
                         "set up its buffer");
}

/* Frees the arena and lets the device go; failures are only logged, as
 * nothing more can be done about them. cuMemFree needs no current
 * context: the arena is freed even when the device cannot be entered. */
static void release(vmep_ep *ep) {
  vmep__ep_remote_fini(ep);
  if (ep->arena) {
    int entered = vmep__ep_device_enter(&ep->dev) == VMEP_OK;
    (void)vmep__ep_device_free(&ep->dev, ep->arena);
    if (entered)
      vmep__ep_device_leave(&ep->dev);
  }
  vmep__ep_device_close(&ep->dev);
  vmep__free(ep->session);
  vmep__free(ep->died);
  vmep__free(ep->seen);
  vmep__free(ep->seen_from);
  vmep__free(ep);
}

vmep_status vmep_ep_create(vmep_group *group, const vmep_ep_config *config,
                           vmep_ep **ep_out) {
  if (!group || !config || !ep_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_ep_create: %s is NULL",
                      !group    ? "group"
                      : !config ? "config"
                                : "ep_out");
  vmep_status status = vmep__ep_config_check(config, vmep_group_size(group));
  if (status != VMEP_OK)
    return status;
  vmep_ep *ep = vmep__calloc(1, sizeof(*ep));
  if (!ep)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "vmep_ep_create: host allocation failed");
  ep->group = group;
  (void)vmep__ep_config_read(config, &ep->config); /* checked above */
  ep->rank = vmep_group_rank(group);
  ep->num_ranks = vmep__ep_ranks(config, vmep_group_size(group));
  ep->local_experts = config->num_experts / ep->num_ranks;
  long long timeout_ms =
      config->timeout_ms ? config->timeout_ms : vmep__group_timeout_ms(group);
  ep->timeout_ns = timeout_ms * 1000000ll;
  ep->session = vmep__calloc((size_t)ep->num_ranks, sizeof(uint64_t));
  ep->died = vmep__calloc((size_t)ep->num_ranks, 1);
  ep->seen = vmep__calloc((size_t)ep->num_ranks, sizeof(uint64_t));
  ep->seen_from = vmep__calloc((size_t)ep->num_ranks, sizeof(uint64_t));
  status = ep->session && ep->died && ep->seen && ep->seen_from
               ? create(ep)
               : vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                            "vmep_ep_create: host allocation "
                            "failed");
  if (status != VMEP_OK) {
    if (ep->window)
      (void)vmep_window_destroy(ep->window);
    vmep__ep_remote_fini(ep);
    vmep__ep_membership_leave(ep); /* gives its store name back */
    release(ep);
    return status;
  }
  *ep_out = ep;
  return VMEP_OK;
}

vmep_status vmep_ep_destroy(vmep_ep *ep) {
  if (!ep)
    return VMEP_OK;
  /* After a membership change no collective spans the ranks still here,
   * and none is needed: a rank that imported our region keeps it alive
   * until it unmaps it. Our own kernels finish before we unmap theirs. */
  /* Our last requests reach the remote peers before anyone tears down. */
  if (ep->remote && vmep__ep_device_enter(&ep->dev) == VMEP_OK) {
    if (vmep__ep_device_sync(&ep->dev, "vmep_ep_destroy") == VMEP_OK)
      (void)vmep__ep_remote_drain(ep, "vmep_ep_destroy");
    vmep__ep_device_leave(&ep->dev);
  }
  vmep_status status = ep->changed ? vmep__window_free(ep->window)
                                   : vmep_window_destroy(ep->window);
  /* The proxy served peers' puts until every rank got here. */
  vmep__ep_remote_fini(ep);
  /* Only now, with our record withdrawn and its fd server stopped, may
   * another buffer of this shape take the name. */
  vmep__ep_membership_leave(ep);
  release(ep);
  return status;
}

vmep_status vmep_ep_poll_errors(vmep_ep *ep, unsigned *errors_out,
                                uint64_t *bad_experts_out) {
  const char *call = "vmep_ep_poll_errors";
  struct vmep_ll_state st;
  const unsigned int zero[2] = {0, 0};
  if (!ep)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: ep is NULL",
                      call);
  vmep_status status = vmep__ep_device_enter(&ep->dev);
  if (status != VMEP_OK)
    return status;
  status = vmep__ep_device_sync(&ep->dev, call);
  if (status == VMEP_OK)
    status = vmep__ep_device_get(&ep->dev, &st, ep->state, sizeof(st), call);
  if (status == VMEP_OK)
    status = vmep__ep_device_put(&ep->dev, &ep->state->errors, zero,
                                 sizeof(zero), call);
  vmep__ep_device_leave(&ep->dev);
  if (status != VMEP_OK)
    return status;
  if (errors_out)
    *errors_out = st.errors;
  if (bad_experts_out)
    *bad_experts_out = st.bad_experts;
  return VMEP_OK;
}

int vmep_ep_rank(const vmep_ep *ep) { return ep ? ep->rank : -1; }
int vmep_ep_num_ranks(const vmep_ep *ep) { return ep ? ep->num_ranks : 0; }
int vmep_ep_num_local_experts(const vmep_ep *ep) {
  return ep ? ep->local_experts : 0;
}
int vmep_ep_device(const vmep_ep *ep) { return ep ? ep->config.device : -1; }
int vmep_ep_num_sms(const vmep_ep *ep) { return ep ? ep->config.num_sms : 0; }
