/*
 * Pieces shared by regions and mappings for the VMM strategies: the
 * allocation properties, and map / unmap of a handle with access for the
 * device (VMM memory ignores peer-access enablement: cuMemSetAccess must
 * name every device that touches it).
 */
#include <string.h>

#include "mem/mem.h"

void vmep__vmm_prop(int device, vmep_mem_strategy strategy, int rdma,
                    CUmemAllocationProp *prop) {
  memset(prop, 0, sizeof(*prop));
  prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop->location.id = device;
  prop->requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  if (strategy == VMEP_MEM_FABRIC)
    prop->requestedHandleTypes =
        (CUmemAllocationHandleType)(CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR |
                                    CU_MEM_HANDLE_TYPE_FABRIC);
  prop->allocFlags.gpuDirectRDMACapable = rdma ? 1 : 0;
}

vmep_status vmep__vmm_map(const struct vmep_driver *drv, int device,
                          CUmemGenericAllocationHandle handle, size_t size,
                          size_t align, CUdeviceptr fixed_va,
                          CUdeviceptr *va_out) {
  CUdeviceptr va = fixed_va;
  vmep_status status;
  if (!fixed_va) {
    status = vmep__cu_check(
        drv->cuMemAddressReserve(&va, size, align, 0, 0), VMEP_LOG_ERROR, NULL,
        "cuMemAddressReserve(%zu B, device %d)", size, device);
    if (status != VMEP_OK)
      return status;
  }
  status = vmep__cu_check(drv->cuMemMap(va, size, 0, handle, 0), VMEP_LOG_ERROR,
                          NULL, "cuMemMap(%zu B, device %d)", size, device);
  if (status != VMEP_OK)
    goto err_free_va;
  CUmemAccessDesc access;
  memset(&access, 0, sizeof(access));
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = device;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  status = vmep__cu_check(
      drv->cuMemSetAccess(va, size, &access, 1), VMEP_LOG_ERROR, NULL,
      "cuMemSetAccess(%zu B, read/write, device %d)", size, device);
  if (status != VMEP_OK)
    goto err_unmap;
  *va_out = va;
  return VMEP_OK;

err_unmap:
  (void)drv->cuMemUnmap(va, size);
err_free_va:
  if (!fixed_va)
    (void)drv->cuMemAddressFree(va, size);
  return status;
}

vmep_status vmep__vmm_unmap(const struct vmep_driver *drv, CUdeviceptr va,
                            size_t size, int owns_va) {
  vmep_status status = vmep__cu_check(drv->cuMemUnmap(va, size), VMEP_LOG_ERROR,
                                      NULL, "cuMemUnmap(%zu B)", size);
  if (owns_va) {
    vmep_status freed =
        vmep__cu_check(drv->cuMemAddressFree(va, size), VMEP_LOG_ERROR, NULL,
                       "cuMemAddressFree(%zu B)", size);
    if (status == VMEP_OK)
      status = freed;
  }
  return status;
}

vmep_status vmep__va_reserve(size_t bytes, size_t align, CUdeviceptr *va_out) {
  const struct vmep_driver *drv = NULL;
  vmep_status status = vmep__driver_get(&drv);
  if (status != VMEP_OK)
    return status;
  return vmep__cu_check(drv->cuMemAddressReserve(va_out, bytes, align, 0, 0),
                        VMEP_LOG_ERROR, NULL, "cuMemAddressReserve(%zu B)",
                        bytes);
}

vmep_status vmep__va_free(CUdeviceptr va, size_t bytes) {
  const struct vmep_driver *drv = NULL;
  vmep_status status = vmep__driver_get(&drv);
  if (status != VMEP_OK)
    return status;
  return vmep__cu_check(drv->cuMemAddressFree(va, bytes), VMEP_LOG_ERROR, NULL,
                        "cuMemAddressFree(%zu B)", bytes);
}
