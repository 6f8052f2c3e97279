/*
 * Explicit device selection for driver calls: the device's primary context
 * (the one the CUDA runtime uses too) is retained by each owner of device
 * memory and pushed around each group of calls, so no call depends on
 * whatever context happens to be current on the caller's thread.
 */
#include "driver/driver.h"

vmep_status vmep__ctx_retain(const struct vmep_driver *drv, int device,
                             CUdevice *dev_out, CUcontext *ctx_out) {
  CUdevice dev;
  vmep_status status =
      vmep__cu_check(drv->cuDeviceGet(&dev, device), VMEP_LOG_ERROR, NULL,
                     "cuDeviceGet(device %d)", device);
  if (status != VMEP_OK)
    return status;
  status = vmep__cu_check(drv->cuDevicePrimaryCtxRetain(ctx_out, dev),
                          VMEP_LOG_ERROR, NULL,
                          "cuDevicePrimaryCtxRetain(device %d)", device);
  if (status == VMEP_OK)
    *dev_out = dev;
  return status;
}

void vmep__ctx_release(const struct vmep_driver *drv, CUdevice dev) {
  /* Cannot fail for a retained context; nothing to undo if it did. */
  (void)drv->cuDevicePrimaryCtxRelease(dev);
}

vmep_status vmep__ctx_push(const struct vmep_driver *drv, CUcontext ctx,
                           int device) {
  return vmep__cu_check(drv->cuCtxPushCurrent(ctx), VMEP_LOG_ERROR, NULL,
                        "cuCtxPushCurrent(device %d)", device);
}

void vmep__ctx_pop(const struct vmep_driver *drv) {
  CUcontext ctx;
  /* Pops what vmep__ctx_push pushed on this thread; cannot fail then. */
  (void)drv->cuCtxPopCurrent(&ctx);
}
