/*
 * The engine's UCX transport: one ucp context and one worker per engine,
 * an endpoint per peer in UCP_ERR_HANDLING_MODE_PEER (so a peer's death
 * reaches on_ep_error and fails its requests instead of hanging them), RMA
 * puts into memory registered with ucp_mem_map, and the signal word
 * written by a put or added by an atomic. UCX reads its own environment
 * (UCX_TLS, UCX_NET_DEVICES, ...) in ucp_config_read, untouched.
 */
#include <stdio.h>
#include <string.h>

#include "net/ucx.h"

struct ucx_peer {
  struct ucx_engine *ue;
  int rank;
  ucp_ep_h ep;
};

struct ucx_engine {
  vmep_engine *engine;
  const struct vmep_ucx *api;
  ucp_context_h context;
  ucp_worker_h worker;
  ucp_address_t *address;
  size_t address_len;
  uint64_t memory_types; /* ucp_context_query's mask */
  int size;
  struct ucx_peer *peers;
};

/* An in-flight signal: its 8-byte operand must outlive the request, so
 * it lives here until the completion callback frees it. */
struct signal_slot {
  struct ucx_engine *ue;
  uint64_t value;
};

static const char *ucx_error(const struct vmep_ucx *api, ucs_status_t status) {
  return api->ucs_status_string(status);
}

/* A context with RMA and 64-bit atomics, from UCX's environment. */
static vmep_status make_context(const struct vmep_ucx *api,
                                ucp_context_h *context_out) {
  ucp_config_t *config = NULL;
  ucs_status_t st = api->ucp_config_read(NULL, NULL, &config);
  if (st != UCS_OK)
    return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                      "ucp_config_read: %s (check the UCX_* variables)",
                      ucx_error(api, st));
  ucp_params_t params = {.field_mask = UCP_PARAM_FIELD_FEATURES,
                         .features = UCP_FEATURE_RMA | UCP_FEATURE_AMO64};
  st = api->ucp_init_version(UCP_API_MAJOR, UCP_API_MINOR, &params, config,
                             context_out);
  api->ucp_config_release(config);
  if (st != UCS_OK)
    return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                      "ucp_init: %s (no usable UCX transport?)",
                      ucx_error(api, st));
  return VMEP_OK;
}

static vmep_status query_memory_types(const struct vmep_ucx *api,
                                      ucp_context_h context,
                                      uint64_t *types_out) {
  ucp_context_attr_t attr = {.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES};
  ucs_status_t st = api->ucp_context_query(context, &attr);
  if (st != UCS_OK)
    return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                      "ucp_context_query: %s", ucx_error(api, st));
  *types_out = attr.memory_types;
  return VMEP_OK;
}

static vmep_status ucx_probe(struct vmep_engine_info *info) {
  const struct vmep_ucx *api = NULL;
  ucp_context_h context = NULL;
  uint64_t types = 0;
  vmep_status status = vmep__ucx_get(&api);
  if (status == VMEP_OK)
    status = make_context(api, &context);
  if (status == VMEP_OK) {
    status = query_memory_types(api, context, &types);
    api->ucp_cleanup(context);
  }
  if (status != VMEP_OK) {
    snprintf(info->reason, sizeof(info->reason), "%s", vmep_last_error());
    return VMEP_OK;
  }
  info->available = 1;
  snprintf(info->version, sizeof(info->version), "%s",
           api->ucp_get_version_string());
  info->cuda_memory = (types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  return VMEP_OK;
}

/* ---- requests ------------------------------------------------------------ */

/*
 * Waits for `request` (a ucp_*_nbx result) until it completes, `rank`
 * fails (rank >= 0) or deadline_ms passes (the end of a wait of
 * timeout_ms), then releases it. VMEP_OK, VMEP_ERR_PEER (the peer marked
 * failed) or VMEP_ERR_TIMEOUT, naming `what` and the rank.
 */
static vmep_status wait_request(struct ucx_engine *ue, void *request, int rank,
                                uint64_t deadline_ms, int timeout_ms,
                                const char *what) {
  const struct vmep_ucx *api = ue->api;
  if (request == NULL)
    return VMEP_OK;
  ucs_status_t st = UCS_INPROGRESS;
  if (UCS_PTR_IS_ERR(request)) {
    st = UCS_PTR_STATUS(request);
  } else {
    while ((st = api->ucp_request_check_status(request)) == UCS_INPROGRESS) {
      if (rank >= 0 && vmep__engine_peer_is_failed(ue->engine, rank))
        break;
      if (vmep__now_ms() >= deadline_ms)
        break;
      api->ucp_worker_progress(ue->worker);
    }
    api->ucp_request_free(request);
  }
  if (st == UCS_OK)
    return VMEP_OK;
  if (st != UCS_INPROGRESS && rank >= 0) {
    char why[160];
    snprintf(why, sizeof(why), "%s: %s", what, ucx_error(api, st));
    vmep__engine_peer_failed(ue->engine, rank, why);
  }
  if (rank >= 0 && vmep__engine_peer_is_failed(ue->engine, rank))
    return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                      "%s toward rank %d: the peer failed (%s)", what, rank,
                      st == UCS_INPROGRESS ? "endpoint error"
                                           : ucx_error(api, st));
  if (st == UCS_INPROGRESS && rank >= 0)
    return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR,
                      "%s toward rank %d: not complete within %d ms", what,
                      rank, timeout_ms);
  if (st == UCS_INPROGRESS)
    return vmep__fail(VMEP_ERR_TIMEOUT, VMEP_LOG_ERROR,
                      "%s: not complete within %d ms", what, timeout_ms);
  return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR, "%s: %s", what,
                    ucx_error(api, st));
}

/* A posted operation's immediate result: VMEP_OK (done or in flight), or
 * the peer marked failed with VMEP_ERR_PEER. */
static vmep_status posted(struct ucx_engine *ue, int rank, ucs_status_ptr_t r,
                          const char *what) {
  if (!UCS_PTR_IS_ERR(r))
    return VMEP_OK;
  char why[160];
  snprintf(why, sizeof(why), "%s: %s", what,
           ucx_error(ue->api, UCS_PTR_STATUS(r)));
  vmep__engine_peer_failed(ue->engine, rank, why);
  return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR, "%s toward rank %d: %s",
                    what, rank, ucx_error(ue->api, UCS_PTR_STATUS(r)));
}

/* ---- life cycle ------------------------------------------------------ */

static void on_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status) {
  (void)ep;
  struct ucx_peer *peer = arg;
  char why[160];
  snprintf(why, sizeof(why), "UCX endpoint error: %s",
           ucx_error(peer->ue->api, status));
  vmep__engine_peer_failed(peer->ue->engine, peer->rank, why);
}

/* Closes the endpoint to rank r (if any) by `deadline`: a failed peer's
 * by force, a live one flushed first. */
static void close_peer(struct ucx_engine *ue, int r, uint64_t deadline,
                       int bound) {
  if (!ue->peers[r].ep)
    return;
  ucp_request_param_t param = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS};
  if (vmep__engine_peer_is_failed(ue->engine, r))
    param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  void *request = ue->api->ucp_ep_close_nbx(ue->peers[r].ep, &param);
  /* A peer that closed first resets the connection: expected, so it is
   * only told at info level. */
  if (wait_request(ue, request, -1, deadline, bound, "ucp_ep_close_nbx") !=
      VMEP_OK)
    vmep_log_info("engine: closing the endpoint to rank %d: %s", r,
                  vmep_last_error());
  ue->peers[r].ep = NULL;
}

/* Closes every endpoint, all within one engine bound (so destroy takes at
 * most that long, however many peers are stuck). */
static void close_peers(struct ucx_engine *ue) {
  int bound = vmep__engine_timeout_ms(ue->engine);
  uint64_t deadline = vmep__now_ms() + (uint64_t)bound;
  for (int r = 0; r < ue->size; r++)
    close_peer(ue, r, deadline, bound);
}

static void ucx_disconnect(void *impl, int rank) {
  struct ucx_engine *ue = impl;
  int bound = vmep__engine_timeout_ms(ue->engine);
  close_peer(ue, rank, vmep__now_ms() + (uint64_t)bound, bound);
}

static void ucx_destroy(void *impl) {
  struct ucx_engine *ue = impl;
  close_peers(ue);
  ue->api->ucp_worker_release_address(ue->worker, ue->address);
  ue->api->ucp_worker_destroy(ue->worker);
  ue->api->ucp_cleanup(ue->context);
  vmep__free(ue->peers);
  vmep__free(ue);
}

static vmep_status ucx_create(vmep_engine *engine, int size, void **impl_out) {
  const struct vmep_ucx *api = NULL;
  vmep_status status = vmep__ucx_get(&api);
  if (status != VMEP_OK)
    return status;
  struct ucx_engine *ue = vmep__calloc(1, sizeof(*ue));
  struct ucx_peer *peers = vmep__calloc((size_t)size, sizeof(*peers));
  if (!ue || !peers) {
    vmep__free(ue);
    vmep__free(peers);
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "engine: UCX state for %d peers", size);
  }
  ue->engine = engine;
  ue->size = size;
  ue->peers = peers;
  ue->api = api;
  status = make_context(api, &ue->context);
  if (status != VMEP_OK)
    goto err_free;
  status = query_memory_types(api, ue->context, &ue->memory_types);
  if (status != VMEP_OK)
    goto err_cleanup;
  ucp_worker_params_t wparams = {.field_mask =
                                     UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                                 .thread_mode = UCS_THREAD_MODE_SINGLE};
  ucs_status_t st = api->ucp_worker_create(ue->context, &wparams, &ue->worker);
  if (st != UCS_OK) {
    status = vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                        "ucp_worker_create: %s", ucx_error(api, st));
    goto err_cleanup;
  }
  st = api->ucp_worker_get_address(ue->worker, &ue->address, &ue->address_len);
  if (st != UCS_OK) {
    status = vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                        "ucp_worker_get_address: %s", ucx_error(api, st));
    goto err_worker;
  }
  *impl_out = ue;
  return VMEP_OK;

err_worker:
  api->ucp_worker_destroy(ue->worker);
err_cleanup:
  api->ucp_cleanup(ue->context);
err_free:
  vmep__free(peers);
  vmep__free(ue);
  return status;
}

/* ---- peers and memory ---------------------------------------------------- */

static vmep_status ucx_address(void *impl, const void **bytes_out,
                               size_t *len_out) {
  struct ucx_engine *ue = impl;
  *bytes_out = ue->address;
  *len_out = ue->address_len;
  return VMEP_OK;
}

static vmep_status ucx_connect(void *impl, int rank, const void *address,
                               size_t len) {
  (void)len; /* UCX's address carries its own length */
  struct ucx_engine *ue = impl;
  struct ucx_peer *peer = &ue->peers[rank];
  peer->ue = ue;
  peer->rank = rank;
  ucp_ep_params_t params = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                                          UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                          UCP_EP_PARAM_FIELD_ERR_HANDLER,
                            .address = (const ucp_address_t *)address,
                            .err_mode = UCP_ERR_HANDLING_MODE_PEER,
                            .err_handler = {.cb = on_ep_error, .arg = peer}};
  ucs_status_t st = ue->api->ucp_ep_create(ue->worker, &params, &peer->ep);
  if (st != UCS_OK) {
    peer->ep = NULL;
    return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                      "ucp_ep_create toward rank %d: %s (the address is not "
                      "reachable with this UCX_TLS / UCX_NET_DEVICES?)",
                      rank, ucx_error(ue->api, st));
  }
  return VMEP_OK;
}

static vmep_status ucx_mem_reg(void *impl, void *addr, size_t len,
                               unsigned flags, void **mr_out, void **packed_out,
                               size_t *packed_len_out) {
  struct ucx_engine *ue = impl;
  const struct vmep_ucx *api = ue->api;
  ucp_mem_map_params_t params = {.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                                               UCP_MEM_MAP_PARAM_FIELD_LENGTH,
                                 .address = addr,
                                 .length = len};
  if (flags & VMEP_ENGINE_MEM_GPU) {
    if (!(ue->memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)))
      return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                        "engine: this UCX (%s) has no CUDA memory support, "
                        "so device memory cannot be registered",
                        api->ucp_get_version_string());
    params.field_mask |= UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.memory_type = UCS_MEMORY_TYPE_CUDA;
  }
  ucp_mem_h memh = NULL;
  ucs_status_t st = api->ucp_mem_map(ue->context, &params, &memh);
  if (st != UCS_OK)
    return vmep__fail(VMEP_ERR_SYSTEM, VMEP_LOG_ERROR,
                      "ucp_mem_map(%p, %zu bytes): %s", addr, len,
                      ucx_error(api, st));
  void *rkey = NULL;
  size_t rkey_len = 0;
  st = api->ucp_rkey_pack(ue->context, memh, &rkey, &rkey_len);
  if (st != UCS_OK) {
    api->ucp_mem_unmap(ue->context, memh);
    return vmep__fail(VMEP_ERR_SYSTEM, VMEP_LOG_ERROR, "ucp_rkey_pack: %s",
                      ucx_error(api, st));
  }
  void *packed = vmep__malloc(rkey_len);
  if (!packed) {
    api->ucp_rkey_buffer_release(rkey);
    api->ucp_mem_unmap(ue->context, memh);
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "engine: remote key of %zu bytes", rkey_len);
  }
  memcpy(packed, rkey, rkey_len);
  api->ucp_rkey_buffer_release(rkey);
  *mr_out = memh;
  *packed_out = packed;
  *packed_len_out = rkey_len;
  return VMEP_OK;
}

static void ucx_mem_dereg(void *impl, void *mr) {
  struct ucx_engine *ue = impl;
  ucs_status_t st = ue->api->ucp_mem_unmap(ue->context, mr);
  if (st != UCS_OK)
    vmep_log_warn("ucp_mem_unmap: %s", ucx_error(ue->api, st));
}

static vmep_status ucx_rkey_unpack(void *impl, int rank, const void *packed,
                                   size_t len, void **rkey_out) {
  (void)len; /* UCX's packed key carries its own length */
  struct ucx_engine *ue = impl;
  ucp_rkey_h rkey = NULL;
  ucs_status_t st =
      ue->api->ucp_ep_rkey_unpack(ue->peers[rank].ep, packed, &rkey);
  if (st != UCS_OK)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "ucp_ep_rkey_unpack of rank %d's key: %s", rank,
                      ucx_error(ue->api, st));
  *rkey_out = rkey;
  return VMEP_OK;
}

static void ucx_rkey_release(void *impl, void *rkey) {
  struct ucx_engine *ue = impl;
  ue->api->ucp_rkey_destroy(rkey);
}

/* ---- data movement ------------------------------------------------------ */

static vmep_status ucx_put(void *impl, int rank, const void *src, size_t bytes,
                           void *rkey, uint64_t raddr) {
  struct ucx_engine *ue = impl;
  /* No callback: completion is known through flush, errors through the
   * endpoint's error handler; the request is released right away. */
  ucp_request_param_t param = {.op_attr_mask = 0};
  ucs_status_ptr_t r =
      ue->api->ucp_put_nbx(ue->peers[rank].ep, src, bytes, raddr, rkey, &param);
  if (UCS_PTR_IS_PTR(r))
    ue->api->ucp_request_free(r);
  return posted(ue, rank, r, "ucp_put_nbx");
}

static vmep_status ucx_fence(void *impl) {
  struct ucx_engine *ue = impl;
  ucs_status_t st = ue->api->ucp_worker_fence(ue->worker);
  if (st != UCS_OK)
    return vmep__fail(VMEP_ERR_SYSTEM, VMEP_LOG_ERROR, "ucp_worker_fence: %s",
                      ucx_error(ue->api, st));
  return VMEP_OK;
}

static void on_signal_done(void *request, ucs_status_t status,
                           void *user_data) {
  (void)status; /* a failure reaches the endpoint's error handler */
  struct signal_slot *slot = user_data;
  const struct vmep_ucx *api = slot->ue->api;
  vmep__free(slot);
  api->ucp_request_free(request);
}

static vmep_status ucx_signal(void *impl, int rank, void *rkey, uint64_t raddr,
                              enum vmep_engine_signal op, uint64_t value) {
  struct ucx_engine *ue = impl;
  struct signal_slot *slot = vmep__malloc(sizeof(*slot));
  if (!slot)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "engine: signal toward rank %d", rank);
  slot->ue = ue;
  slot->value = value;
  ucp_request_param_t param = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
                                               UCP_OP_ATTR_FIELD_USER_DATA,
                               .cb = {.send = on_signal_done},
                               .user_data = slot};
  ucp_ep_h ep = ue->peers[rank].ep;
  ucs_status_ptr_t r;
  if (op == VMEP_ENGINE_SIGNAL_ADD) {
    /* One element of 8 bytes: a 64-bit atomic add. */
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE;
    param.datatype = ucp_dt_make_contig(8);
    r = ue->api->ucp_atomic_op_nbx(ep, UCP_ATOMIC_OP_ADD, &slot->value, 1,
                                   raddr, rkey, &param);
  } else
    r = ue->api->ucp_put_nbx(ep, &slot->value, 8, raddr, rkey, &param);
  if (!UCS_PTR_IS_PTR(r)) /* done already or failed: no callback comes */
    vmep__free(slot);
  return posted(ue, rank, r,
                op == VMEP_ENGINE_SIGNAL_ADD ? "ucp_atomic_op_nbx"
                                             : "ucp_put_nbx (signal)");
}

static vmep_status ucx_flush(void *impl, int rank, int timeout_ms) {
  struct ucx_engine *ue = impl;
  ucp_request_param_t param = {.op_attr_mask = 0};
  /* One peer, or every peer one after another within one bound. */
  uint64_t deadline = vmep__now_ms() + (uint64_t)timeout_ms;
  vmep_status status = VMEP_OK;
  for (int r = rank >= 0 ? rank : 0; r < ue->size && status == VMEP_OK; r++) {
    if (ue->peers[r].ep)
      status =
          wait_request(ue, ue->api->ucp_ep_flush_nbx(ue->peers[r].ep, &param),
                       r, deadline, timeout_ms, "ucp_ep_flush_nbx");
    if (rank >= 0)
      break;
  }
  return status;
}

static int ucx_progress(void *impl) {
  struct ucx_engine *ue = impl;
  return (int)ue->api->ucp_worker_progress(ue->worker);
}

const struct vmep_engine_ops vmep__ucx_ops = {
    .name = "ucx",
    .probe = ucx_probe,
    .create = ucx_create,
    .destroy = ucx_destroy,
    .address = ucx_address,
    .connect = ucx_connect,
    .disconnect = ucx_disconnect,
    .mem_reg = ucx_mem_reg,
    .mem_dereg = ucx_mem_dereg,
    .rkey_unpack = ucx_rkey_unpack,
    .rkey_release = ucx_rkey_release,
    .put = ucx_put,
    .fence = ucx_fence,
    .signal = ucx_signal,
    .flush = ucx_flush,
    .progress = ucx_progress,
};
