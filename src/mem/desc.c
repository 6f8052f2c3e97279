/*
 * Portable descriptors: what a peer needs to map a region, and their wire
 * form. The bytes may come from anywhere (a store, a socket), so the
 * parser trusts nothing: every field is checked and any mismatch is
 * VMEP_ERR_INVALID_ARG with a message, never a crash.
 *
 * Wire form, little-endian:
 *   0  magic "VMDS"     4  u16 version     6  u16 strategy
 *   8  u64 size        16  16 B device UUID
 *  32  u16 handle length (64 for FABRIC and LEGACY, 0 for POSIX_FD)
 *  34  handle bytes    34+n  u32 FNV-1a checksum of all preceding bytes
 */
#include <string.h>
#include <unistd.h>

#include "mem/mem.h"

#define DESC_MAGIC "VMDS"
#define DESC_HEADER_BYTES 34
#define DESC_CHECKSUM_BYTES 4
/* A region larger than this (1 PiB) is certainly a corrupt descriptor. */
#define DESC_MAX_SIZE ((uint64_t)1 << 50)

static uint32_t fnv1a(const unsigned char *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 16777619u;
  return h;
}

/* Handle bytes a strategy carries on the wire; -1 for an unknown one. */
static int handle_bytes(uint32_t strategy) {
  switch (strategy) {
  case VMEP_MEM_FABRIC:
  case VMEP_MEM_LEGACY:
    return VMEP_MEM_HANDLE_BYTES;
  case VMEP_MEM_POSIX_FD:
    return 0;
  default:
    return -1;
  }
}

static vmep_status bad_desc(const char *what) {
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "vmep_mem_desc_parse: %s", what);
}

vmep_status vmep_region_export(const vmep_region *r, vmep_mem_desc *desc_out) {
  const struct vmep_driver *drv = NULL;
  vmep_mem_desc d;
  if (!r || !desc_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_region_export: %s is NULL",
                      r ? "desc_out" : "region");
  vmep_status status = vmep__driver_get(&drv);
  if (status != VMEP_OK)
    return status;
  memset(&d, 0, sizeof(d));
  d.version = VMEP_MEM_DESC_VERSION;
  d.strategy = r->mem.strategy;
  d.size = r->mem.size;
  d.fd = -1;
  memcpy(d.device_uuid, r->uuid, sizeof(d.device_uuid));
  switch (r->mem.strategy) {
  case VMEP_MEM_FABRIC:
    status = vmep__cu_check(
        drv->cuMemExportToShareableHandle(d.handle, r->mem.handle,
                                          CU_MEM_HANDLE_TYPE_FABRIC, 0),
        VMEP_LOG_ERROR, NULL, "cuMemExportToShareableHandle(fabric, device %d)",
        r->mem.device);
    break;
  case VMEP_MEM_POSIX_FD:
    status = vmep__cu_check(
        drv->cuMemExportToShareableHandle(
            &d.fd, r->mem.handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
        VMEP_LOG_ERROR, NULL,
        "cuMemExportToShareableHandle(posix_fd, device %d)", r->mem.device);
    break;
  default: {
    CUipcMemHandle ipc;
    status = vmep__ctx_push(drv, r->mem.ctx, r->mem.device);
    if (status != VMEP_OK)
      break;
    status = vmep__cu_check(
        drv->cuIpcGetMemHandle(&ipc, r->mem.ptr), VMEP_LOG_ERROR, NULL,
        "cuIpcGetMemHandle(%zu B, device %d)", r->mem.size, r->mem.device);
    vmep__ctx_pop(drv);
    memcpy(d.handle, ipc.reserved, sizeof(d.handle));
    break;
  }
  }
  if (status == VMEP_OK)
    *desc_out = d;
  return status;
}

void vmep_mem_desc_close(vmep_mem_desc *desc) {
  if (desc && desc->fd >= 0) {
    close(desc->fd);
    desc->fd = -1;
  }
}

vmep_status vmep_mem_desc_serialize(const vmep_mem_desc *d, void *buf,
                                    size_t capacity, size_t *len_out) {
  if (!d || !buf || !len_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_mem_desc_serialize: %s is NULL",
                      !d     ? "desc"
                      : !buf ? "buf"
                             : "len_out");
  int hbytes = handle_bytes(d->strategy);
  if (d->version != VMEP_MEM_DESC_VERSION || hbytes < 0 || d->size == 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_mem_desc_serialize: not a valid descriptor "
                      "(version %u, strategy %d, size %llu)",
                      d->version, (int)d->strategy,
                      (unsigned long long)d->size);
  size_t len = DESC_HEADER_BYTES + (size_t)hbytes + DESC_CHECKSUM_BYTES;
  if (capacity < len)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_mem_desc_serialize: needs %zu B, buffer has %zu",
                      len, capacity);
  unsigned char *p = buf;
  memcpy(p, DESC_MAGIC, 4);
  vmep__le_put(p + 4, d->version, 2);
  vmep__le_put(p + 6, (uint64_t)d->strategy, 2);
  vmep__le_put(p + 8, d->size, 8);
  memcpy(p + 16, d->device_uuid, 16);
  vmep__le_put(p + 32, (uint64_t)hbytes, 2);
  memcpy(p + DESC_HEADER_BYTES, d->handle, (size_t)hbytes);
  vmep__le_put(p + len - DESC_CHECKSUM_BYTES,
               fnv1a(p, len - DESC_CHECKSUM_BYTES), 4);
  *len_out = len;
  return VMEP_OK;
}

vmep_status vmep_mem_desc_parse(const void *buf, size_t len,
                                vmep_mem_desc *desc_out) {
  const unsigned char *p = buf;
  vmep_mem_desc d;
  if (!buf || !desc_out)
    return bad_desc(!buf ? "buf is NULL" : "desc_out is NULL");
  if (len < DESC_HEADER_BYTES + DESC_CHECKSUM_BYTES)
    return bad_desc("truncated (shorter than the header)");
  if (memcmp(p, DESC_MAGIC, 4) != 0)
    return bad_desc("bad magic: not a vmep memory descriptor");
  memset(&d, 0, sizeof(d));
  d.version = (uint32_t)vmep__le_get(p + 4, 2);
  if (d.version != VMEP_MEM_DESC_VERSION)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_mem_desc_parse: version %u, this library reads %d",
                      d.version, VMEP_MEM_DESC_VERSION);
  uint32_t strategy = (uint32_t)vmep__le_get(p + 6, 2);
  int hbytes = handle_bytes(strategy);
  if (hbytes < 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_mem_desc_parse: unknown strategy %u", strategy);
  if (vmep__le_get(p + 32, 2) != (uint64_t)hbytes)
    return bad_desc("handle length does not match the strategy");
  if (len != DESC_HEADER_BYTES + (size_t)hbytes + DESC_CHECKSUM_BYTES)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_mem_desc_parse: %zu B, a %s descriptor has %d", len,
                      vmep_mem_strategy_name((vmep_mem_strategy)strategy),
                      DESC_HEADER_BYTES + hbytes + DESC_CHECKSUM_BYTES);
  if (vmep__le_get(p + len - DESC_CHECKSUM_BYTES, 4) !=
      fnv1a(p, len - DESC_CHECKSUM_BYTES))
    return bad_desc("checksum mismatch: corrupted in transit");
  d.strategy = (vmep_mem_strategy)strategy;
  d.size = vmep__le_get(p + 8, 8);
  if (d.size == 0 || d.size > DESC_MAX_SIZE)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_mem_desc_parse: implausible size %llu B",
                      (unsigned long long)d.size);
  memcpy(d.device_uuid, p + 16, 16);
  memcpy(d.handle, p + DESC_HEADER_BYTES, (size_t)hbytes);
  d.fd = -1;
  *desc_out = d;
  return VMEP_OK;
}
