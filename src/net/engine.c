/*
 * The engine in front of its transport: argument and peer checks that
 * every transport would repeat (rank in range and connected, a failed
 * peer answered with VMEP_ERR_PEER, remote ranges inside the peer's
 * registration), the address and remote-key blobs, the registrations and
 * keys still held at destroy, and the waits' bound. The transport's table
 * (struct vmep_engine_ops) does only the transport's part.
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "net/net.h"

struct engine_peer {
  int connected;
  int failed;
  char why[256];
};

/* Registrations and keys still held, so that destroy can release them:
 * each record starts with its link. */
struct engine_link {
  struct engine_link *next;
};

struct vmep_engine_mr {
  struct engine_link link;
  void *impl;
  unsigned char *blob;
  size_t blob_len;
};

struct vmep_engine_rkey {
  struct engine_link link;
  void *impl;
  int rank;
  uint64_t base;
  uint64_t length;
};

struct vmep_engine {
  const struct vmep_engine_ops *ops;
  void *impl;
  int rank;
  int size;
  int timeout_ms;
  struct engine_peer *peers;
  unsigned char *address;
  size_t address_len;
  struct engine_link *mrs;   /* vmep_engine_mr records */
  struct engine_link *rkeys; /* vmep_engine_rkey records */
};

static void link_push(struct engine_link **head, struct engine_link *item) {
  item->next = *head;
  *head = item;
}

static void link_remove(struct engine_link **head, struct engine_link *item) {
  for (struct engine_link **at = head; *at; at = &(*at)->next)
    if (*at == item) {
      *at = item->next;
      return;
    }
}

/* ---- checks --------------------------------------------------------- */

static vmep_status check_engine(const vmep_engine *engine, const char *call) {
  if (!engine)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: engine is NULL", call);
  return VMEP_OK;
}

/* `rank` is a connected peer that has not failed. */
static vmep_status check_peer(const vmep_engine *engine, int rank,
                              const char *call) {
  if (rank < 0 || rank >= engine->size || rank == engine->rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: rank %d is not a peer (ranks 0..%d, this is %d)",
                      call, rank, engine->size - 1, engine->rank);
  const struct engine_peer *peer = &engine->peers[rank];
  if (peer->failed)
    return vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR, "%s: rank %d failed: %s",
                      call, rank, peer->why);
  if (!peer->connected)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: rank %d is not connected", call, rank);
  return VMEP_OK;
}

/* [raddr, raddr+bytes) lies in the key's range, and the key is rank's. */
static vmep_status check_range(const vmep_engine_rkey *rkey, int rank,
                               uint64_t raddr, size_t bytes, const char *call) {
  if (!rkey)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: remote key is NULL", call);
  if (rkey->rank != rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: the remote key is rank %d's, not rank %d's", call,
                      rkey->rank, rank);
  if (raddr < rkey->base || bytes > rkey->length ||
      raddr - rkey->base > rkey->length - bytes)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: remote range 0x%llx + %zu bytes is outside rank "
                      "%d's registration (0x%llx, %llu bytes)",
                      call, (unsigned long long)raddr, bytes, rank,
                      (unsigned long long)rkey->base,
                      (unsigned long long)rkey->length);
  return VMEP_OK;
}

/* ---- life cycle ------------------------------------------------------ */

static vmep_status engine_timeout(const struct vmep_engine_params *params,
                                  int *timeout_out) {
  if (params->timeout_ms > 0) {
    *timeout_out = params->timeout_ms;
    return VMEP_OK;
  }
  long long value = 0;
  vmep_status status =
      vmep__config_int(VMEP_CONFIG_TIMEOUT_MS, 1, INT_MAX, &value);
  if (status == VMEP_OK)
    *timeout_out = (int)value;
  return status;
}

/* The engine's own address blob around the transport's address. */
static vmep_status make_address(vmep_engine *engine) {
  const void *bytes = NULL;
  size_t len = 0;
  vmep_status status = engine->ops->address(engine->impl, &bytes, &len);
  if (status != VMEP_OK)
    return status;
  struct vmep_blob b = {.kind = VMEP_BLOB_ADDRESS,
                        .rank = engine->rank,
                        .payload = bytes,
                        .payload_len = len};
  engine->address = vmep__malloc(vmep__blob_size(len));
  if (!engine->address)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "engine: address blob of %zu bytes",
                      vmep__blob_size(len));
  vmep__blob_write(&b, engine->address);
  engine->address_len = vmep__blob_size(len);
  return VMEP_OK;
}

vmep_status vmep__engine_create_with(const struct vmep_engine_ops *ops,
                                     const struct vmep_engine_params *params,
                                     vmep_engine **engine_out) {
  if (!ops || !params || !engine_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__engine_create: %s is NULL",
                      !ops      ? "ops"
                      : !params ? "params"
                                : "engine_out");
  if (params->size < 1 || params->rank < 0 || params->rank >= params->size)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__engine_create: rank %d of size %d", params->rank,
                      params->size);
  int timeout_ms = 0;
  vmep_status status = engine_timeout(params, &timeout_ms);
  if (status != VMEP_OK)
    return status;
  vmep_engine *engine = vmep__calloc(1, sizeof(*engine));
  struct engine_peer *peers =
      vmep__calloc((size_t)params->size, sizeof(*peers));
  if (!engine || !peers) {
    vmep__free(engine);
    vmep__free(peers);
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "vmep__engine_create: engine of %d peers", params->size);
  }
  engine->ops = ops;
  engine->rank = params->rank;
  engine->size = params->size;
  engine->timeout_ms = timeout_ms;
  engine->peers = peers;
  status = ops->create(engine, params->size, &engine->impl);
  if (status != VMEP_OK)
    goto err_free;
  status = make_address(engine);
  if (status != VMEP_OK)
    goto err_destroy;
  *engine_out = engine;
  return VMEP_OK;

err_destroy:
  ops->destroy(engine->impl);
err_free:
  vmep__free(peers);
  vmep__free(engine);
  return status;
}

vmep_status vmep__engine_create(const struct vmep_engine_params *params,
                                vmep_engine **engine_out) {
  return vmep__engine_create_with(&vmep__ucx_ops, params, engine_out);
}

void vmep__engine_destroy(vmep_engine *engine) {
  if (!engine)
    return;
  while (engine->rkeys)
    vmep__engine_rkey_release(engine, (vmep_engine_rkey *)engine->rkeys);
  while (engine->mrs)
    vmep__engine_mem_dereg(engine, (vmep_engine_mr *)engine->mrs);
  engine->ops->destroy(engine->impl);
  vmep__free(engine->address);
  vmep__free(engine->peers);
  vmep__free(engine);
}

vmep_status vmep__engine_probe(struct vmep_engine_info *info) {
  if (!info)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__engine_probe: info is NULL");
  memset(info, 0, sizeof(*info));
  snprintf(info->name, sizeof(info->name), "%s", vmep__ucx_ops.name);
  return vmep__ucx_ops.probe(info);
}

/* ---- peers ------------------------------------------------------------ */

vmep_status vmep__engine_address(vmep_engine *engine, const void **blob_out,
                                 size_t *len_out) {
  vmep_status status = check_engine(engine, "vmep__engine_address");
  if (status != VMEP_OK)
    return status;
  if (!blob_out || !len_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep__engine_address: %s is NULL",
                      !blob_out ? "blob_out" : "len_out");
  *blob_out = engine->address;
  *len_out = engine->address_len;
  return VMEP_OK;
}

vmep_status vmep__engine_connect(vmep_engine *engine, int rank,
                                 const void *blob, size_t len) {
  static const char call[] = "vmep__engine_connect";
  vmep_status status = check_engine(engine, call);
  if (status != VMEP_OK)
    return status;
  if (rank < 0 || rank >= engine->size || rank == engine->rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: rank %d is not a peer (ranks 0..%d, this is %d)",
                      call, rank, engine->size - 1, engine->rank);
  if (engine->peers[rank].connected)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: rank %d is already connected", call, rank);
  struct vmep_blob b;
  status = vmep__blob_parse(blob, len, VMEP_BLOB_ADDRESS, call, &b);
  if (status != VMEP_OK)
    return status;
  if (b.rank != rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: the address blob is rank %d's, not rank %d's", call,
                      b.rank, rank);
  status = engine->ops->connect(engine->impl, rank, b.payload, b.payload_len);
  if (status == VMEP_OK)
    engine->peers[rank].connected = 1;
  return status;
}

void vmep__engine_disconnect(vmep_engine *engine, int rank) {
  if (!engine || rank < 0 || rank >= engine->size ||
      !engine->peers[rank].connected)
    return;
  struct engine_link **at = &engine->rkeys;
  while (*at) {
    vmep_engine_rkey *rkey = (vmep_engine_rkey *)*at;
    if (rkey->rank != rank) {
      at = &(*at)->next;
      continue;
    }
    *at = rkey->link.next;
    engine->ops->rkey_release(engine->impl, rkey->impl);
    vmep__free(rkey);
  }
  engine->ops->disconnect(engine->impl, rank);
  memset(&engine->peers[rank], 0, sizeof(engine->peers[rank]));
}

int vmep__engine_peer_is_failed(const vmep_engine *engine, int rank) {
  return vmep__engine_peer_failure(engine, rank) != NULL;
}

const char *vmep__engine_peer_failure(const vmep_engine *engine, int rank) {
  if (!engine || rank < 0 || rank >= engine->size ||
      !engine->peers[rank].failed)
    return NULL;
  return engine->peers[rank].why;
}

void vmep__engine_peer_failed(vmep_engine *engine, int rank, const char *why) {
  struct engine_peer *peer = &engine->peers[rank];
  if (peer->failed)
    return;
  peer->failed = 1;
  snprintf(peer->why, sizeof(peer->why), "%s", why);
  /* Info only: a peer that leaves first closes its endpoints, which reads
   * the same here; the engine's user says so when the rank is needed. */
  vmep_log_info("engine: rank %d failed: %s", rank, why);
}

int vmep__engine_timeout_ms(const vmep_engine *engine) {
  return engine->timeout_ms;
}

/* ---- memory ------------------------------------------------------------ */

vmep_status vmep__engine_mem_reg(vmep_engine *engine, void *addr, size_t len,
                                 unsigned flags, vmep_engine_mr **mr_out) {
  static const char call[] = "vmep__engine_mem_reg";
  vmep_status status = check_engine(engine, call);
  if (status != VMEP_OK)
    return status;
  if (!addr || !mr_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: %s is NULL",
                      call, !addr ? "addr" : "mr_out");
  if (len == 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: zero length",
                      call);
  if (flags & ~(unsigned)VMEP_ENGINE_MEM_GPU)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: unknown flags 0x%x", call, flags);
  vmep_engine_mr *mr = vmep__calloc(1, sizeof(*mr));
  if (!mr)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "%s: registration record", call);
  void *packed = NULL;
  size_t packed_len = 0;
  status = engine->ops->mem_reg(engine->impl, addr, len, flags, &mr->impl,
                                &packed, &packed_len);
  if (status != VMEP_OK)
    goto err_free;
  struct vmep_blob b = {.kind = VMEP_BLOB_RKEY,
                        .rank = engine->rank,
                        .base = (uint64_t)(uintptr_t)addr,
                        .length = len,
                        .payload = packed,
                        .payload_len = packed_len};
  mr->blob = vmep__malloc(vmep__blob_size(packed_len));
  if (!mr->blob) {
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "%s: remote-key blob of %zu bytes", call,
                        vmep__blob_size(packed_len));
    goto err_dereg;
  }
  vmep__blob_write(&b, mr->blob);
  mr->blob_len = vmep__blob_size(packed_len);
  vmep__free(packed);
  link_push(&engine->mrs, &mr->link);
  *mr_out = mr;
  return VMEP_OK;

err_dereg:
  vmep__free(packed);
  engine->ops->mem_dereg(engine->impl, mr->impl);
err_free:
  vmep__free(mr);
  return status;
}

const void *vmep__engine_mr_blob(const vmep_engine_mr *mr, size_t *len_out) {
  *len_out = mr->blob_len;
  return mr->blob;
}

void vmep__engine_mem_dereg(vmep_engine *engine, vmep_engine_mr *mr) {
  if (!engine || !mr)
    return;
  link_remove(&engine->mrs, &mr->link);
  engine->ops->mem_dereg(engine->impl, mr->impl);
  vmep__free(mr->blob);
  vmep__free(mr);
}

vmep_status vmep__engine_rkey_unpack(vmep_engine *engine, int rank,
                                     const void *blob, size_t len,
                                     vmep_engine_rkey **rkey_out) {
  static const char call[] = "vmep__engine_rkey_unpack";
  vmep_status status = check_engine(engine, call);
  if (status == VMEP_OK)
    status = check_peer(engine, rank, call);
  if (status != VMEP_OK)
    return status;
  if (!rkey_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: rkey_out is NULL", call);
  struct vmep_blob b;
  status = vmep__blob_parse(blob, len, VMEP_BLOB_RKEY, call, &b);
  if (status != VMEP_OK)
    return status;
  if (b.rank != rank)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: the remote-key blob is rank %d's, not rank %d's",
                      call, b.rank, rank);
  vmep_engine_rkey *rkey = vmep__calloc(1, sizeof(*rkey));
  if (!rkey)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "%s: remote-key record", call);
  status = engine->ops->rkey_unpack(engine->impl, rank, b.payload,
                                    b.payload_len, &rkey->impl);
  if (status != VMEP_OK) {
    vmep__free(rkey);
    return status;
  }
  rkey->rank = rank;
  rkey->base = b.base;
  rkey->length = b.length;
  link_push(&engine->rkeys, &rkey->link);
  *rkey_out = rkey;
  return VMEP_OK;
}

uint64_t vmep__engine_rkey_base(const vmep_engine_rkey *rkey) {
  return rkey->base;
}

void vmep__engine_rkey_release(vmep_engine *engine, vmep_engine_rkey *rkey) {
  if (!engine || !rkey)
    return;
  link_remove(&engine->rkeys, &rkey->link);
  engine->ops->rkey_release(engine->impl, rkey->impl);
  vmep__free(rkey);
}

/* ---- data movement ------------------------------------------------------ */

vmep_status vmep__engine_put(vmep_engine *engine, int rank, const void *src,
                             size_t bytes, const vmep_engine_rkey *rkey,
                             uint64_t raddr) {
  static const char call[] = "vmep__engine_put";
  vmep_status status = check_engine(engine, call);
  if (status == VMEP_OK)
    status = check_peer(engine, rank, call);
  if (status != VMEP_OK)
    return status;
  if (!src || bytes == 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: %s", call,
                      !src ? "src is NULL" : "zero bytes");
  status = check_range(rkey, rank, raddr, bytes, call);
  if (status != VMEP_OK)
    return status;
  return engine->ops->put(engine->impl, rank, src, bytes, rkey->impl, raddr);
}

vmep_status
vmep__engine_put_signal(vmep_engine *engine, int rank, const void *src,
                        size_t bytes, const vmep_engine_rkey *rkey,
                        uint64_t raddr, const vmep_engine_rkey *sig_rkey,
                        uint64_t sig_raddr, enum vmep_engine_signal op,
                        uint64_t value) {
  static const char call[] = "vmep__engine_put_signal";
  vmep_status status = check_engine(engine, call);
  if (status == VMEP_OK)
    status = check_peer(engine, rank, call);
  if (status != VMEP_OK)
    return status;
  if (bytes && !src)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: src is NULL",
                      call);
  if (op != VMEP_ENGINE_SIGNAL_SET && op != VMEP_ENGINE_SIGNAL_ADD)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: unknown signal operation %d", call, (int)op);
  if (sig_raddr % 8)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s: signal address 0x%llx is not 8-byte aligned", call,
                      (unsigned long long)sig_raddr);
  if (bytes)
    status = check_range(rkey, rank, raddr, bytes, call);
  if (status == VMEP_OK)
    status = check_range(sig_rkey, rank, sig_raddr, 8, call);
  if (status == VMEP_OK && bytes)
    status =
        engine->ops->put(engine->impl, rank, src, bytes, rkey->impl, raddr);
  /* The fence orders the data (and everything before it) before the
   * signal: a peer that sees the signal sees the bytes. */
  if (status == VMEP_OK)
    status = engine->ops->fence(engine->impl);
  if (status == VMEP_OK)
    status = engine->ops->signal(engine->impl, rank, sig_rkey->impl, sig_raddr,
                                 op, value);
  return status;
}

vmep_status vmep__engine_flush(vmep_engine *engine, int rank, int timeout_ms) {
  static const char call[] = "vmep__engine_flush";
  vmep_status status = check_engine(engine, call);
  if (status != VMEP_OK)
    return status;
  if (rank != -1) {
    status = check_peer(engine, rank, call);
  } else {
    for (int r = 0; r < engine->size && status == VMEP_OK; r++)
      if (engine->peers[r].connected && engine->peers[r].failed)
        status = check_peer(engine, r, call);
  }
  if (status != VMEP_OK)
    return status;
  return engine->ops->flush(engine->impl, rank,
                            timeout_ms > 0 ? timeout_ms : engine->timeout_ms);
}

int vmep__engine_progress(vmep_engine *engine) {
  return engine ? engine->ops->progress(engine->impl) : 0;
}
