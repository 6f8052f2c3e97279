/*
 * Mappings: a peer's region, described by a vmep_mem_desc, mapped into
 * this process with read/write access for one device. VMM descriptors
 * (FABRIC, POSIX_FD) are imported and mapped at an address of our choice,
 * so a window can place each peer at base + rank * stride; LEGACY IPC
 * handles are opened where the driver decides.
 */
#include <string.h>
#include <unistd.h>

#include "mem/mem.h"

static vmep_status check_desc(const vmep_mem_desc *d) {
  if (d->version != VMEP_MEM_DESC_VERSION)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_region_import: descriptor version %u, expected %d",
                      d->version, VMEP_MEM_DESC_VERSION);
  if (d->strategy != VMEP_MEM_FABRIC && d->strategy != VMEP_MEM_POSIX_FD &&
      d->strategy != VMEP_MEM_LEGACY)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_region_import: unknown strategy %d",
                      (int)d->strategy);
  if (d->size == 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_region_import: descriptor size is 0");
  if (d->strategy == VMEP_MEM_POSIX_FD && d->fd < 0)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_region_import: posix_fd descriptor without an fd "
                      "(pass it with SCM_RIGHTS and set desc.fd)");
  return VMEP_OK;
}

/* Imports and maps a VMM descriptor; the mapping's context is current. */
static vmep_status import_vmm(const struct vmep_driver *drv,
                              struct vmep_mapping *m, vmep_mem_desc *d,
                              CUdeviceptr fixed_va) {
  const vmep_mem_caps *caps = NULL;
  vmep_status status = vmep__mem_probe_get(m->mem.device, &caps);
  if (status != VMEP_OK)
    return status;
  if (d->strategy == VMEP_MEM_FABRIC) {
    CUresult rc = drv->cuMemImportFromShareableHandle(
        &m->mem.handle, d->handle, CU_MEM_HANDLE_TYPE_FABRIC);
    status = vmep__cu_check(
        rc, VMEP_LOG_ERROR, vmep__share_hint(VMEP_MEM_FABRIC, rc),
        "cuMemImportFromShareableHandle(fabric, %llu B, device %d)",
        (unsigned long long)d->size, m->mem.device);
  } else {
    status = vmep__cu_check(
        drv->cuMemImportFromShareableHandle(
            &m->mem.handle, (void *)(uintptr_t)d->fd,
            CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
        VMEP_LOG_ERROR, NULL,
        "cuMemImportFromShareableHandle(posix_fd %d, %llu B, device %d)", d->fd,
        (unsigned long long)d->size, m->mem.device);
    /* The imported handle keeps the memory; the fd is no longer needed. */
    vmep_mem_desc_close(d);
  }
  if (status != VMEP_OK)
    return status;
  status = vmep__vmm_map(drv, m->mem.device, m->mem.handle, m->mem.size,
                         caps->granularity, /* 0: the driver's default */
                         fixed_va, &m->mem.ptr);
  if (status != VMEP_OK) {
    (void)drv->cuMemRelease(m->mem.handle);
    return status;
  }
  m->owns_va = fixed_va == 0;
  return VMEP_OK;
}

static vmep_status import_legacy(const struct vmep_driver *drv,
                                 struct vmep_mapping *m,
                                 const vmep_mem_desc *d) {
  CUipcMemHandle ipc;
  memcpy(ipc.reserved, d->handle, sizeof(ipc.reserved));
  return vmep__cu_check(
      drv->cuIpcOpenMemHandle(&m->mem.ptr, ipc,
                              CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS),
      VMEP_LOG_ERROR, NULL, "cuIpcOpenMemHandle(%llu B, device %d)",
      (unsigned long long)d->size, m->mem.device);
}

vmep_status vmep__mapping_import(int device, vmep_mem_desc *d,
                                 CUdeviceptr fixed_va,
                                 vmep_mapping **mapping_out) {
  const struct vmep_driver *drv = NULL;
  struct vmep_mapping *m = NULL;
  vmep_status status = check_desc(d);
  if (status == VMEP_OK && d->strategy == VMEP_MEM_LEGACY && fixed_va)
    status = vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                        "vmep_region_import: a legacy IPC handle cannot be "
                        "mapped at a chosen address");
  if (status == VMEP_OK)
    status = vmep__driver_get(&drv);
  if (status != VMEP_OK)
    goto err_close;
  m = vmep__calloc(1, sizeof(*m));
  if (!m) {
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "vmep_region_import: host allocation of %zu B failed",
                        sizeof(*m));
    goto err_close;
  }
  m->mem.device = device;
  m->mem.strategy = d->strategy;
  m->mem.size = (size_t)d->size;
  status = vmep__ctx_retain(drv, device, &m->mem.dev, &m->mem.ctx);
  if (status != VMEP_OK)
    goto err_free;
  status = vmep__ctx_push(drv, m->mem.ctx, device);
  if (status != VMEP_OK)
    goto err_release_ctx;
  if (d->strategy == VMEP_MEM_LEGACY)
    status = import_legacy(drv, m, d);
  else
    status = import_vmm(drv, m, d, fixed_va);
  vmep__ctx_pop(drv);
  if (status != VMEP_OK)
    goto err_release_ctx;
  *mapping_out = m;
  return VMEP_OK;

err_release_ctx:
  vmep__ctx_release(drv, m->mem.dev);
err_free:
  vmep__free(m);
err_close:
  vmep_mem_desc_close(d);
  return status;
}

vmep_status vmep_region_import(int device, vmep_mem_desc *desc,
                               vmep_mapping **mapping_out) {
  if (!desc || !mapping_out) {
    vmep_mem_desc_close(desc);
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_region_import: %s is NULL",
                      desc ? "mapping_out" : "desc");
  }
  return vmep__mapping_import(device, desc, 0, mapping_out);
}

vmep_status vmep_mapping_release(vmep_mapping *m) {
  if (!m)
    return VMEP_OK;
  vmep_status status = vmep__devmem_release(&m->mem, 1, m->owns_va, "unmap");
  vmep__free(m);
  return status;
}

void *vmep_mapping_ptr(const vmep_mapping *m) {
  return m ? (void *)(uintptr_t)m->mem.ptr : NULL;
}

size_t vmep_mapping_size(const vmep_mapping *m) { return m ? m->mem.size : 0; }
