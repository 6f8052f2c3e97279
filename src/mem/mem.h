/*
 * mem: device capability probe, regions (device memory peers can map),
 * portable descriptors, and mappings of peers' regions. Builds on the
 * driver layer; knows nothing of process groups.
 */
#ifndef VMEP_MEM_H
#define VMEP_MEM_H

#include "driver/driver.h"

/* Devices the probe cache holds; a larger ordinal is refused. */
#define VMEP_MAX_DEVICES 64

/* What a region and a mapping both hold: device memory at ptr, kept alive
 * by a retained context, undone by vmep__devmem_release. */
struct vmep_devmem {
  int device;
  vmep_mem_strategy strategy;
  CUdevice dev;  /* the driver's handle of `device` */
  CUcontext ctx; /* retained for the object's life */
  CUdeviceptr ptr;
  size_t size;
  CUmemGenericAllocationHandle handle; /* VMM strategies only */
};

struct vmep_region {
  struct vmep_devmem mem;
  unsigned char uuid[16];
  char reason[VMEP_MEM_STRATEGY_COUNT * VMEP_MEM_REASON_BYTES];
};

struct vmep_mapping {
  struct vmep_devmem mem;
  int owns_va; /* the mapping reserved its VA range and frees it */
};

/*
 * Releases `m` once no kernel may use it: waits for its device's work,
 * then undoes the memory: a LEGACY region's cuMemFree, a LEGACY mapping's
 * cuIpcCloseMemHandle (`imported`), or a VMM unmap (and the reservation's
 * free when `owns_va`) and the handle's release; then lets the context
 * go. Always attempts every step; returns the first error, whose message
 * names `what` ("free", "unmap").
 */
vmep_status vmep__devmem_release(const struct vmep_devmem *m, int imported,
                                 int owns_va, const char *what);

/* The hint added to the message of a failed call on `strategy`'s memory:
 * a missing IMEX channel shows as CUDA_ERROR_NOT_PERMITTED on fabric
 * handles; any other failure gets none (NULL). */
static inline const char *vmep__share_hint(vmep_mem_strategy strategy,
                                           CUresult rc) {
  return strategy == VMEP_MEM_FABRIC && rc == CUDA_ERROR_NOT_PERMITTED
             ? "no IMEX channel for this process?"
             : NULL;
}

/* The cached probe of `device` (see vmep_mem_probe); the pointer stays
 * valid until the driver table is replaced. */
vmep_status vmep__mem_probe_get(int device, const vmep_mem_caps **caps_out);

/* Fills the allocation properties vmep uses for a VMM strategy (FABRIC is
 * requested together with POSIX_FD), with the GPUDirect RDMA flag when
 * `rdma` is set. */
void vmep__vmm_prop(int device, vmep_mem_strategy strategy, int rdma,
                    CUmemAllocationProp *prop);

/*
 * Maps `handle` (size bytes) with read/write access for `device`: at
 * `fixed_va` when it is not 0 (a range the caller reserved), else in a new
 * reservation aligned to `align`. The caller's context must be current. On
 * failure nothing stays mapped or reserved.
 */
vmep_status vmep__vmm_map(const struct vmep_driver *drv, int device,
                          CUmemGenericAllocationHandle handle, size_t size,
                          size_t align, CUdeviceptr fixed_va,
                          CUdeviceptr *va_out);

/* Unmaps [va, va+size) and frees the reservation when `owns_va`. Returns
 * the first error; always attempts both. */
vmep_status vmep__vmm_unmap(const struct vmep_driver *drv, CUdeviceptr va,
                            size_t size, int owns_va);

/*
 * Imports `desc` for `device` (see vmep_region_import); a VMM region goes
 * at `fixed_va` when it is not 0 (a slot of a window the caller reserved).
 * Consumes desc->fd on every path.
 */
vmep_status vmep__mapping_import(int device, vmep_mem_desc *desc,
                                 CUdeviceptr fixed_va,
                                 vmep_mapping **mapping_out);

/*
 * The strategies `device` can use under `flags` (0: all) and
 * VMEP_MEM_SHARE, as VMEP_REGION_ALLOW_* bits (0 when none), with the
 * probe's reasons for the others in caps_out when it is not NULL. Fails
 * as vmep_mem_probe, or VMEP_ERR_INVALID_ARG for a bad VMEP_MEM_SHARE.
 */
vmep_status vmep__mem_usable(int device, unsigned flags, unsigned *mask_out,
                             vmep_mem_caps *caps_out);

/* Reserves `bytes` of device virtual address space aligned to `align`
 * (a VA window for peers' regions) / frees it. */
vmep_status vmep__va_reserve(size_t bytes, size_t align, CUdeviceptr *va_out);
vmep_status vmep__va_free(CUdeviceptr va, size_t bytes);

/* Maps a VMM region's own memory a second time at `va` (its slot in a
 * window) with access for its device / unmaps it again. LEGACY regions
 * cannot be placed: VMEP_ERR_UNSUPPORTED. */
vmep_status vmep__region_map_at(const struct vmep_region *region,
                                CUdeviceptr va);
vmep_status vmep__region_unmap_at(const struct vmep_region *region,
                                  CUdeviceptr va);

/* Waits for all work on the region's device (cuCtxSynchronize). */
vmep_status vmep__region_sync(const struct vmep_region *region);

#endif /* VMEP_MEM_H */
