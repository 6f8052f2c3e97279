/*
 * Regions: device memory that peers can map, allocated through the
 * strategy chain FABRIC -> POSIX_FD -> LEGACY (docs/MEMORY.md). A
 * strategy the probe found unusable, or whose allocation answers "not
 * permitted / not supported / invalid value", is skipped and the reason
 * kept; out of memory and other errors end the call.
 */
#include <stdio.h>
#include <string.h>

#include "mem/mem.h"

static const char *const share_choices[] = {"auto", "fabric", "posix_fd",
                                            "legacy", NULL};

static int may_fall_back(CUresult rc) {
  return rc == CUDA_ERROR_NOT_PERMITTED || rc == CUDA_ERROR_NOT_SUPPORTED ||
         rc == CUDA_ERROR_INVALID_VALUE;
}

static void add_reason(struct vmep_region *r, vmep_mem_strategy s,
                       const char *why) {
  size_t used = strlen(r->reason);
  snprintf(r->reason + used, sizeof(r->reason) - used, "%s%s: %s",
           used ? "; " : "", vmep_mem_strategy_name(s), why);
}

/* The strategies allowed by `flags` and VMEP_MEM_SHARE (before the probe). */
static vmep_status allowed_strategies(unsigned flags, unsigned *allowed_out) {
  int choice;
  unsigned allowed = flags ? flags : VMEP_REGION_ALLOW_ALL;
  vmep_status status =
      vmep__config_choice(VMEP_CONFIG_MEM_SHARE, share_choices, &choice);
  if (status != VMEP_OK)
    return status;
  if (choice != 0) {
    /* choices[1..3] are the strategies FABRIC..LEGACY in order. */
    allowed &= 1u << choice;
    if (!allowed)
      return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                        "VMEP_MEM_SHARE=%s conflicts with the strategies "
                        "allowed by the caller (flags 0x%x)",
                        share_choices[choice], flags);
  }
  *allowed_out = allowed;
  return VMEP_OK;
}

/* One VMM attempt; *fell_back is set when the failure allows the next
 * strategy. The region's context is current. */
static vmep_status alloc_vmm(const struct vmep_driver *drv,
                             struct vmep_region *r, vmep_mem_strategy s,
                             size_t bytes, const vmep_mem_caps *caps,
                             int *fell_back) {
  CUmemAllocationProp prop;
  size_t granularity = 0;
  const char *name = vmep_mem_strategy_name(s);
  vmep__vmm_prop(r->mem.device, s, caps->rdma_with_vmm, &prop);
  CUresult rc = drv->cuMemGetAllocationGranularity(
      &granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  *fell_back = may_fall_back(rc);
  vmep_status status = vmep__cu_check(
      rc, *fell_back ? VMEP_LOG_INFO : VMEP_LOG_ERROR, NULL,
      "cuMemGetAllocationGranularity(%s, device %d)", name, r->mem.device);
  if (status != VMEP_OK)
    return status;
  size_t size = vmep__round_up(bytes, granularity);
  if (size == 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_region_alloc: %zu B overflows when rounded up",
                      bytes);
  rc = drv->cuMemCreate(&r->mem.handle, size, &prop, 0);
  *fell_back = may_fall_back(rc);
  status = vmep__cu_check(
      rc, *fell_back ? VMEP_LOG_INFO : VMEP_LOG_ERROR, vmep__share_hint(s, rc),
      "cuMemCreate(%s, %zu B, device %d)", name, size, r->mem.device);
  if (status != VMEP_OK)
    return status;
  *fell_back = 0;
  status = vmep__vmm_map(drv, r->mem.device, r->mem.handle, size, granularity,
                         0, &r->mem.ptr);
  if (status != VMEP_OK) {
    (void)drv->cuMemRelease(r->mem.handle);
    return status;
  }
  r->mem.size = size;
  return VMEP_OK;
}

static vmep_status alloc_legacy(const struct vmep_driver *drv,
                                struct vmep_region *r, size_t bytes,
                                const vmep_mem_caps *caps, int *fell_back) {
  size_t size = vmep__round_up(bytes, caps->granularity ? caps->granularity
                                                        : (size_t)2 << 20);
  if (size == 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_region_alloc: %zu B overflows when rounded up",
                      bytes);
  CUresult rc = drv->cuMemAlloc(&r->mem.ptr, size);
  *fell_back = may_fall_back(rc);
  vmep_status status =
      vmep__cu_check(rc, *fell_back ? VMEP_LOG_INFO : VMEP_LOG_ERROR, NULL,
                     "cuMemAlloc(%zu B, device %d)", size, r->mem.device);
  if (status == VMEP_OK)
    r->mem.size = size;
  return status;
}

/* Walks the chain; the region's context is current. */
static vmep_status alloc_chain(const struct vmep_driver *drv,
                               struct vmep_region *r, size_t bytes,
                               unsigned allowed, const vmep_mem_caps *caps) {
  static const vmep_mem_strategy order[] = {VMEP_MEM_FABRIC, VMEP_MEM_POSIX_FD,
                                            VMEP_MEM_LEGACY};
  const int usable[VMEP_MEM_STRATEGY_COUNT] = {0, caps->fabric, caps->posix_fd,
                                               caps->legacy_ipc};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(order); i++) {
    vmep_mem_strategy s = order[i];
    int fell_back = 0;
    vmep_status status;
    if (!(allowed & (1u << s)))
      continue;
    if (!usable[s]) {
      add_reason(r, s, caps->reason[s]);
      continue;
    }
    if (s == VMEP_MEM_LEGACY)
      status = alloc_legacy(drv, r, bytes, caps, &fell_back);
    else
      status = alloc_vmm(drv, r, s, bytes, caps, &fell_back);
    if (status == VMEP_OK) {
      r->mem.strategy = s;
      return VMEP_OK;
    }
    if (!fell_back)
      return status;
    add_reason(r, s, vmep_last_error());
  }
  return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                    "no allowed sharing strategy works on device %d "
                    "(VMEP_MEM_SHARE=%s): %s",
                    r->mem.device, vmep__config_get(VMEP_CONFIG_MEM_SHARE),
                    r->reason[0] ? r->reason : "none allowed");
}

vmep_status vmep_region_alloc(int device, size_t bytes, unsigned flags,
                              vmep_region **region_out) {
  const struct vmep_driver *drv = NULL;
  const vmep_mem_caps *caps = NULL;
  unsigned allowed = 0;
  if (!region_out || bytes == 0 || (flags & ~VMEP_REGION_ALLOW_ALL))
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_region_alloc(device %d, %zu B, flags 0x%x): %s",
                      device, bytes, flags,
                      !region_out  ? "region_out is NULL"
                      : bytes == 0 ? "size is 0"
                                   : "unknown flags");
  vmep_status status = allowed_strategies(flags, &allowed);
  if (status == VMEP_OK)
    status = vmep__mem_probe_get(device, &caps);
  if (status == VMEP_OK)
    status = vmep__driver_get(&drv);
  if (status != VMEP_OK)
    return status;

  struct vmep_region *r = vmep__calloc(1, sizeof(*r));
  if (!r)
    return vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                      "vmep_region_alloc: host allocation of %zu B failed",
                      sizeof(*r));
  r->mem.device = device;
  memcpy(r->uuid, caps->uuid, sizeof(r->uuid));
  status = vmep__ctx_retain(drv, device, &r->mem.dev, &r->mem.ctx);
  if (status != VMEP_OK)
    goto err_free;
  status = vmep__ctx_push(drv, r->mem.ctx, device);
  if (status != VMEP_OK)
    goto err_release_ctx;
  status = alloc_chain(drv, r, bytes, allowed, caps);
  vmep__ctx_pop(drv);
  if (status != VMEP_OK)
    goto err_release_ctx;
  if (r->reason[0])
    vmep_log_info("device %d: region of %zu B uses %s (%s)", device,
                  r->mem.size, vmep_mem_strategy_name(r->mem.strategy),
                  r->reason);
  *region_out = r;
  return VMEP_OK;

err_release_ctx:
  vmep__ctx_release(drv, r->mem.dev);
err_free:
  vmep__free(r);
  return status;
}

vmep_status vmep_region_free(vmep_region *r) {
  if (!r)
    return VMEP_OK;
  vmep_status status = vmep__devmem_release(&r->mem, 0, 1, "free");
  vmep__free(r);
  return status;
}

void *vmep_region_ptr(const vmep_region *r) {
  return r ? (void *)(uintptr_t)r->mem.ptr : NULL;
}

size_t vmep_region_size(const vmep_region *r) { return r ? r->mem.size : 0; }

int vmep_region_device(const vmep_region *r) { return r ? r->mem.device : -1; }

vmep_mem_strategy vmep_region_strategy(const vmep_region *r) {
  return r ? r->mem.strategy : VMEP_MEM_NONE;
}

const char *vmep_region_reason(const vmep_region *r) {
  return r ? r->reason : "";
}

vmep_status vmep__mem_usable(int device, unsigned flags, unsigned *mask_out,
                             vmep_mem_caps *caps_out) {
  const vmep_mem_caps *caps = NULL;
  unsigned allowed = 0;
  vmep_status status = allowed_strategies(flags, &allowed);
  if (status == VMEP_OK)
    status = vmep__mem_probe_get(device, &caps);
  if (status != VMEP_OK)
    return status;
  unsigned usable = (caps->fabric ? VMEP_REGION_ALLOW_FABRIC : 0u) |
                    (caps->posix_fd ? VMEP_REGION_ALLOW_POSIX_FD : 0u) |
                    (caps->legacy_ipc ? VMEP_REGION_ALLOW_LEGACY : 0u);
  *mask_out = usable & allowed;
  if (caps_out)
    *caps_out = *caps;
  return VMEP_OK;
}

/* Makes the region's context current for a group of driver calls; the
 * caller pops it with vmep__ctx_pop. */
static vmep_status enter(const struct vmep_region *r,
                         const struct vmep_driver **drv_out) {
  vmep_status status = vmep__driver_get(drv_out);
  if (status == VMEP_OK)
    status = vmep__ctx_push(*drv_out, r->mem.ctx, r->mem.device);
  return status;
}

vmep_status vmep__region_map_at(const struct vmep_region *r, CUdeviceptr va) {
  const struct vmep_driver *drv = NULL;
  CUdeviceptr mapped = 0;
  if (r->mem.strategy == VMEP_MEM_LEGACY)
    return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                      "a legacy region cannot be mapped at a chosen address");
  vmep_status status = enter(r, &drv);
  if (status != VMEP_OK)
    return status;
  status = vmep__vmm_map(drv, r->mem.device, r->mem.handle, r->mem.size,
                         r->mem.size, va, &mapped);
  vmep__ctx_pop(drv);
  return status;
}

vmep_status vmep__region_unmap_at(const struct vmep_region *r, CUdeviceptr va) {
  const struct vmep_driver *drv = NULL;
  vmep_status status = vmep__driver_get(&drv);
  if (status != VMEP_OK)
    return status;
  /* cuMemUnmap needs no current context: unmap even when the region's
   * context cannot be pushed, or the range stays mapped for good. */
  vmep_status entered = vmep__ctx_push(drv, r->mem.ctx, r->mem.device);
  status = vmep__vmm_unmap(drv, va, r->mem.size, 0);
  if (entered == VMEP_OK)
    vmep__ctx_pop(drv);
  return status != VMEP_OK ? status : entered;
}

vmep_status vmep__region_sync(const struct vmep_region *r) {
  const struct vmep_driver *drv = NULL;
  vmep_status status = enter(r, &drv);
  if (status != VMEP_OK)
    return status;
  status = vmep__cu_check(drv->cuCtxSynchronize(), VMEP_LOG_ERROR, NULL,
                          "cuCtxSynchronize(device %d)", r->mem.device);
  vmep__ctx_pop(drv);
  return status;
}
