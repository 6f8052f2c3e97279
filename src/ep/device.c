/*
 * The EP buffer's device, through the driver table: the device's primary
 * context (the one the CUDA runtime uses too) is retained for the buffer's
 * life and pushed around each group of calls, so that no call depends on
 * the caller's current device and every failure is checked and named.
 * Allocation, zeroing and copies go through the resolved driver entry
 * points, so the fake driver of the CPU tests reaches every one of them.
 */
#include <string.h>

#include "ep/ep.h"

vmep_status vmep__ep_device_open(int device, struct vmep_ep_device *dev_out) {
  struct vmep_ep_device d = {0};
  vmep_status status = vmep__driver_get(&d.drv);
  if (status == VMEP_OK)
    status = vmep__ctx_retain(d.drv, device, &d.dev, &d.ctx);
  if (status != VMEP_OK)
    return status;
  d.device = device;
  *dev_out = d;
  return VMEP_OK;
}

void vmep__ep_device_close(struct vmep_ep_device *d) {
  if (d->drv && d->ctx)
    vmep__ctx_release(d->drv, d->dev);
  d->ctx = NULL;
}

vmep_status vmep__ep_device_enter(const struct vmep_ep_device *d) {
  return vmep__ctx_push(d->drv, d->ctx, d->device);
}

void vmep__ep_device_leave(const struct vmep_ep_device *d) {
  vmep__ctx_pop(d->drv);
}

vmep_status vmep__ep_device_sync(const struct vmep_ep_device *d,
                                 const char *call) {
  return vmep__cu_check(d->drv->cuCtxSynchronize(), VMEP_LOG_ERROR, NULL,
                        "%s: cuCtxSynchronize(device %d)", call, d->device);
}

vmep_status vmep__ep_device_alloc(const struct vmep_ep_device *d, size_t bytes,
                                  void **ptr_out, const char *call) {
  CUdeviceptr ptr = 0;
  vmep_status status = vmep__cu_check(
      d->drv->cuMemAlloc(&ptr, bytes), VMEP_LOG_ERROR, NULL,
      "%s: cuMemAlloc(%zu B, device %d)", call, bytes, d->device);
  if (status == VMEP_OK)
    *ptr_out = (void *)(uintptr_t)ptr;
  return status;
}

vmep_status vmep__ep_device_free(const struct vmep_ep_device *d, void *ptr) {
  return vmep__cu_check(d->drv->cuMemFree((CUdeviceptr)(uintptr_t)ptr),
                        VMEP_LOG_ERROR, NULL, "cuMemFree(device %d)",
                        d->device);
}

vmep_status vmep__ep_device_host_alloc(const struct vmep_ep_device *d,
                                       size_t bytes, void **host_out,
                                       char **dev_out, const char *call) {
  void *host = NULL;
  CUdeviceptr dev = 0;
  vmep_status status = vmep__cu_check(
      d->drv->cuMemHostAlloc(&host, bytes, CU_MEMHOSTALLOC_DEVICEMAP),
      VMEP_LOG_ERROR, NULL, "%s: cuMemHostAlloc(%zu B, mapped, device %d)",
      call, bytes, d->device);
  if (status == VMEP_OK)
    status = vmep__cu_check(
        d->drv->cuMemHostGetDevicePointer(&dev, host, 0), VMEP_LOG_ERROR, NULL,
        "%s: cuMemHostGetDevicePointer(device %d)", call, d->device);
  if (status != VMEP_OK) {
    if (host)
      (void)d->drv->cuMemFreeHost(host);
    return status;
  }
  memset(host, 0, bytes);
  *host_out = host;
  *dev_out = (char *)(uintptr_t)dev;
  return VMEP_OK;
}

vmep_status vmep__ep_device_host_free(const struct vmep_ep_device *d,
                                      void *host) {
  return vmep__cu_check(d->drv->cuMemFreeHost(host), VMEP_LOG_ERROR, NULL,
                        "cuMemFreeHost(device %d)", d->device);
}

vmep_status vmep__ep_device_zero(const struct vmep_ep_device *d, void *ptr,
                                 size_t bytes, const char *call) {
  return vmep__cu_check(
      d->drv->cuMemsetD8((CUdeviceptr)(uintptr_t)ptr, 0, bytes), VMEP_LOG_ERROR,
      NULL, "%s: cuMemsetD8(%zu B, device %d)", call, bytes, d->device);
}

vmep_status vmep__ep_device_put(const struct vmep_ep_device *d, void *dst,
                                const void *src, size_t bytes,
                                const char *call) {
  return vmep__cu_check(
      d->drv->cuMemcpyHtoD((CUdeviceptr)(uintptr_t)dst, src, bytes),
      VMEP_LOG_ERROR, NULL, "%s: cuMemcpyHtoD(%zu B, device %d)", call, bytes,
      d->device);
}

vmep_status vmep__ep_device_get(const struct vmep_ep_device *d, void *dst,
                                const void *src, size_t bytes,
                                const char *call) {
  return vmep__cu_check(
      d->drv->cuMemcpyDtoH(dst, (CUdeviceptr)(uintptr_t)src, bytes),
      VMEP_LOG_ERROR, NULL, "%s: cuMemcpyDtoH(%zu B, device %d)", call, bytes,
      d->device);
}

vmep_status vmep__ep_device_sms(const struct vmep_ep_device *d, int *sms_out) {
  return vmep__cu_check(
      d->drv->cuDeviceGetAttribute(
          sms_out, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, d->dev),
      VMEP_LOG_ERROR, NULL, "cuDeviceGetAttribute(multiprocessors, device %d)",
      d->device);
}
