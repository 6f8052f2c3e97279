/*
 * The one way device memory is given back, shared by regions (ours) and
 * mappings (peers' memory imported here): wait for every kernel that may
 * still use it, undo it the way its strategy needs, and let the retained
 * context go. Every step is attempted even after a failure, so nothing
 * stays behind; the first error is what the caller sees.
 */
#include "mem/mem.h"

/* Undoes the memory itself: the steps after the device's work is done. */
static vmep_status undo(const struct vmep_driver *drv,
                        const struct vmep_devmem *m, int imported, int owns_va,
                        int pushed) {
  if (m->strategy == VMEP_MEM_LEGACY && !imported)
    /* cuMemFree needs no current context (driver 580). */
    return vmep__cu_check(drv->cuMemFree(m->ptr), VMEP_LOG_ERROR, NULL,
                          "cuMemFree(%zu B, device %d)", m->size, m->device);
  if (m->strategy == VMEP_MEM_LEGACY)
    /* cuIpcCloseMemHandle needs the context current (driver 580): without
     * it the handle stays open until the process exits. */
    return pushed ? vmep__cu_check(drv->cuIpcCloseMemHandle(m->ptr),
                                   VMEP_LOG_ERROR, NULL,
                                   "cuIpcCloseMemHandle(device %d)", m->device)
                  : VMEP_OK;
  /* The VMM calls need no current context. */
  vmep_status status = vmep__vmm_unmap(drv, m->ptr, m->size, owns_va);
  vmep_status released =
      vmep__cu_check(drv->cuMemRelease(m->handle), VMEP_LOG_ERROR, NULL,
                     "cuMemRelease(%s%zu B, device %d)",
                     imported ? "imported, " : "", m->size, m->device);
  return status != VMEP_OK ? status : released;
}

vmep_status vmep__devmem_release(const struct vmep_devmem *m, int imported,
                                 int owns_va, const char *what) {
  const struct vmep_driver *drv = NULL;
  vmep_status status = vmep__driver_get(&drv);
  if (status != VMEP_OK)
    return status;
  vmep_status pushed = vmep__ctx_push(drv, m->ctx, m->device);
  status = pushed;
  if (pushed == VMEP_OK)
    /* A kernel may still be using the memory: let it finish first. */
    status = vmep__cu_check(drv->cuCtxSynchronize(), VMEP_LOG_ERROR, NULL,
                            "cuCtxSynchronize(device %d) before %s", m->device,
                            what);
  vmep_status undone = undo(drv, m, imported, owns_va, pushed == VMEP_OK);
  if (status == VMEP_OK)
    status = undone;
  if (pushed == VMEP_OK)
    vmep__ctx_pop(drv);
  vmep__ctx_release(drv, m->dev);
  return status;
}
