/*
 * The device capability probe. A device attribute is only a hint (the
 * fabric attribute reads 1 on machines where cuMemCreate(FABRIC) answers
 * CUDA_ERROR_NOT_PERMITTED for lack of an IMEX channel), so every sharing
 * strategy is confirmed by a trial allocation and export. Results are
 * cached per device under a lock, and rebuilt when the driver table is
 * replaced (tests); a failure to probe (out of memory, a driver error) is
 * reported and not cached.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mem/mem.h"

#define LEGACY_DEFAULT_GRANULARITY ((size_t)2 << 20)

struct probe_slot {
  int valid;
  unsigned generation;
  vmep_mem_caps caps;
};

static pthread_mutex_t probe_lock = PTHREAD_MUTEX_INITIALIZER;
static struct probe_slot slots[VMEP_MAX_DEVICES];

static vmep_status get_attr(const struct vmep_driver *drv, CUdevice dev,
                            CUdevice_attribute attr, const char *name,
                            int *value) {
  return vmep__cu_check(drv->cuDeviceGetAttribute(value, attr, dev),
                        VMEP_LOG_ERROR, NULL, "cuDeviceGetAttribute(%s)", name);
}

/* Records why strategy `s` is unusable from the last error (or `text`). */
static void set_reason(vmep_mem_caps *caps, vmep_mem_strategy s,
                       const char *text) {
  snprintf(caps->reason[s], VMEP_MEM_REASON_BYTES, "%s",
           text ? text : vmep_last_error());
}

/* An error that means "this strategy is not available here" rather than a
 * failure of the probe itself. */
static int is_unavailable(CUresult rc) {
  return rc == CUDA_ERROR_NOT_PERMITTED || rc == CUDA_ERROR_NOT_SUPPORTED ||
         rc == CUDA_ERROR_INVALID_VALUE;
}

/*
 * Trial of a VMM strategy: granularity, create, export, release. Sets
 * *usable; returns an error only for failures that are not "unavailable".
 */
static vmep_status trial_vmm(const struct vmep_driver *drv, vmep_mem_caps *caps,
                             vmep_mem_strategy s, int *usable) {
  CUmemAllocationProp prop;
  size_t granularity = 0;
  CUmemGenericAllocationHandle handle;
  const char *name = vmep_mem_strategy_name(s);
  *usable = 0;
  vmep__vmm_prop(caps->device, s, caps->rdma_with_vmm, &prop);
  CUresult rc = drv->cuMemGetAllocationGranularity(
      &granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  vmep_status status = vmep__cu_check(
      rc, VMEP_LOG_INFO, NULL, "cuMemGetAllocationGranularity(%s, device %d)",
      name, caps->device);
  if (status != VMEP_OK) {
    set_reason(caps, s, NULL);
    return is_unavailable(rc) ? VMEP_OK : status;
  }
  rc = drv->cuMemCreate(&handle, granularity, &prop, 0);
  status = vmep__cu_check(rc, VMEP_LOG_INFO, vmep__share_hint(s, rc),
                          "cuMemCreate(%s, %zu B, device %d)", name,
                          granularity, caps->device);
  if (status != VMEP_OK) {
    set_reason(caps, s, NULL);
    return is_unavailable(rc) ? VMEP_OK : status;
  }
  if (s == VMEP_MEM_FABRIC) {
    CUmemFabricHandle fabric;
    rc = drv->cuMemExportToShareableHandle(&fabric, handle,
                                           CU_MEM_HANDLE_TYPE_FABRIC, 0);
  } else {
    int fd = -1;
    rc = drv->cuMemExportToShareableHandle(
        &fd, handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    if (rc == CUDA_SUCCESS)
      close(fd);
  }
  status = vmep__cu_check(rc, VMEP_LOG_INFO, vmep__share_hint(s, rc),
                          "cuMemExportToShareableHandle(%s, device %d)", name,
                          caps->device);
  (void)drv->cuMemRelease(handle);
  if (status != VMEP_OK) {
    set_reason(caps, s, NULL);
    return is_unavailable(rc) ? VMEP_OK : status;
  }
  if (s == VMEP_MEM_POSIX_FD)
    caps->granularity = granularity;
  *usable = 1;
  return VMEP_OK;
}

/* Trial of LEGACY: cuMemAlloc, cuIpcGetMemHandle, cuMemFree. */
static vmep_status trial_legacy(const struct vmep_driver *drv,
                                vmep_mem_caps *caps) {
  CUdeviceptr ptr;
  CUipcMemHandle ipc;
  size_t bytes =
      caps->granularity ? caps->granularity : LEGACY_DEFAULT_GRANULARITY;
  CUresult rc = drv->cuMemAlloc(&ptr, bytes);
  vmep_status status =
      vmep__cu_check(rc, VMEP_LOG_INFO, NULL, "cuMemAlloc(%zu B, device %d)",
                     bytes, caps->device);
  if (status != VMEP_OK) {
    set_reason(caps, VMEP_MEM_LEGACY, NULL);
    return is_unavailable(rc) ? VMEP_OK : status;
  }
  rc = drv->cuIpcGetMemHandle(&ipc, ptr);
  status = vmep__cu_check(rc, VMEP_LOG_INFO, NULL,
                          "cuIpcGetMemHandle(device %d)", caps->device);
  (void)drv->cuMemFree(ptr);
  if (status != VMEP_OK) {
    set_reason(caps, VMEP_MEM_LEGACY, NULL);
    return is_unavailable(rc) ? VMEP_OK : status;
  }
  caps->legacy_ipc = 1;
  return VMEP_OK;
}

static vmep_status probe_identity(const struct vmep_driver *drv, CUdevice dev,
                                  vmep_mem_caps *caps) {
  CUuuid uuid;
  vmep_status status = vmep__cu_check(
      drv->cuDeviceGetName(caps->name, (int)sizeof(caps->name), dev),
      VMEP_LOG_ERROR, NULL, "cuDeviceGetName(device %d)", caps->device);
  if (status == VMEP_OK)
    status = vmep__cu_check(drv->cuDeviceGetUuid(&uuid, dev), VMEP_LOG_ERROR,
                            NULL, "cuDeviceGetUuid(device %d)", caps->device);
  if (status == VMEP_OK)
    status = vmep__cu_check(drv->cuDeviceTotalMem(&caps->total_bytes, dev),
                            VMEP_LOG_ERROR, NULL, "cuDeviceTotalMem(device %d)",
                            caps->device);
  if (status == VMEP_OK)
    status = get_attr(drv, dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                      "compute capability major", &caps->cc_major);
  if (status == VMEP_OK)
    status = get_attr(drv, dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                      "compute capability minor", &caps->cc_minor);
  if (status == VMEP_OK)
    status = get_attr(drv, dev, CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED,
                      "dma-buf supported", &caps->dma_buf);
  if (status == VMEP_OK)
    memcpy(caps->uuid, uuid.bytes, sizeof(caps->uuid));
  return status;
}

/* Reads the VMM attributes and runs the VMM trials (context current). */
static vmep_status probe_vmm(const struct vmep_driver *drv, CUdevice dev,
                             vmep_mem_caps *caps) {
  int posix_attr = 0;
  vmep_status status;
  if (!drv->cuMemCreate || !drv->cuMemMap || !drv->cuMemSetAccess ||
      !drv->cuMemExportToShareableHandle) {
    set_reason(caps, VMEP_MEM_FABRIC, "the CUDA driver lacks the VMM API");
    set_reason(caps, VMEP_MEM_POSIX_FD, "the CUDA driver lacks the VMM API");
    return VMEP_OK;
  }
  status = get_attr(drv, dev,
                    CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                    "virtual memory management supported", &caps->vmm);
  if (status == VMEP_OK)
    status = get_attr(
        drv, dev,
        CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
        "posix fd handle supported", &posix_attr);
  if (status == VMEP_OK)
    status =
        get_attr(drv, dev, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED,
                 "fabric handle supported", &caps->fabric_attr);
  if (status == VMEP_OK)
    status = get_attr(
        drv, dev, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED,
        "gpudirect rdma with vmm supported", &caps->rdma_with_vmm);
  if (status != VMEP_OK)
    return status;
  if (!caps->vmm) {
    set_reason(caps, VMEP_MEM_FABRIC, "device does not support VMM");
    set_reason(caps, VMEP_MEM_POSIX_FD, "device does not support VMM");
    return VMEP_OK;
  }
  if (posix_attr) {
    status = trial_vmm(drv, caps, VMEP_MEM_POSIX_FD, &caps->posix_fd);
    if (status != VMEP_OK)
      return status;
  } else {
    set_reason(caps, VMEP_MEM_POSIX_FD,
               "device attribute: POSIX fd handles not supported");
  }
  if (!caps->fabric_attr) {
    set_reason(caps, VMEP_MEM_FABRIC,
               "device attribute: fabric handles not supported");
    return VMEP_OK;
  }
  return trial_vmm(drv, caps, VMEP_MEM_FABRIC, &caps->fabric);
}

static vmep_status probe_device(const struct vmep_driver *drv, int device,
                                vmep_mem_caps *caps) {
  CUdevice dev;
  CUcontext ctx;
  memset(caps, 0, sizeof(*caps));
  caps->device = device;
  vmep_status status =
      vmep__cu_check(drv->cuDeviceGet(&dev, device), VMEP_LOG_ERROR, NULL,
                     "cuDeviceGet(device %d)", device);
  if (status == VMEP_OK)
    status = probe_identity(drv, dev, caps);
  if (status != VMEP_OK)
    return status;
  status = vmep__ctx_retain(drv, device, &dev, &ctx);
  if (status != VMEP_OK)
    return status;
  status = vmep__ctx_push(drv, ctx, device);
  if (status == VMEP_OK) {
    status = probe_vmm(drv, dev, caps);
    if (status == VMEP_OK)
      status = trial_legacy(drv, caps);
    vmep__ctx_pop(drv);
  }
  vmep__ctx_release(drv, dev);
  if (status != VMEP_OK)
    return status;
  caps->best = caps->fabric       ? VMEP_MEM_FABRIC
               : caps->posix_fd   ? VMEP_MEM_POSIX_FD
               : caps->legacy_ipc ? VMEP_MEM_LEGACY
                                  : VMEP_MEM_NONE;
  return VMEP_OK;
}

vmep_status vmep__mem_probe_get(int device, const vmep_mem_caps **caps_out) {
  const struct vmep_driver *drv = NULL;
  int count = 0;
  vmep_status status = vmep_device_count(&count);
  if (status != VMEP_OK)
    return status;
  if (device < 0 || device >= count)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "device %d does not exist (%d visible)", device, count);
  if (device >= VMEP_MAX_DEVICES)
    return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR,
                      "device %d: vmep handles at most %d devices", device,
                      VMEP_MAX_DEVICES);
  status = vmep__driver_get(&drv);
  if (status != VMEP_OK)
    return status;
  unsigned generation = vmep__driver_generation();
  pthread_mutex_lock(&probe_lock);
  struct probe_slot *slot = &slots[device];
  if (!slot->valid || slot->generation != generation) {
    slot->valid = 0;
    status = probe_device(drv, device, &slot->caps);
    if (status == VMEP_OK) {
      slot->valid = 1;
      slot->generation = generation;
      vmep_log_info("device %d (%s): strategy %s", device, slot->caps.name,
                    vmep_mem_strategy_name(slot->caps.best));
    }
  }
  pthread_mutex_unlock(&probe_lock);
  if (status == VMEP_OK)
    *caps_out = &slot->caps;
  return status;
}

vmep_status vmep_mem_probe(int device, vmep_mem_caps *caps_out) {
  const vmep_mem_caps *caps = NULL;
  if (!caps_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_mem_probe: caps_out is NULL");
  vmep_status status = vmep__mem_probe_get(device, &caps);
  if (status == VMEP_OK)
    *caps_out = *caps;
  return status;
}

const char *vmep_mem_strategy_name(vmep_mem_strategy strategy) {
  switch (strategy) {
  case VMEP_MEM_NONE:
    return "none";
  case VMEP_MEM_FABRIC:
    return "fabric";
  case VMEP_MEM_POSIX_FD:
    return "posix_fd";
  case VMEP_MEM_LEGACY:
    return "legacy";
  }
  return "unknown";
}
