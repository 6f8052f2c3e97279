/*
 * driver: the CUDA driver API entry points vmep uses, resolved at run time
 * (the library never links libcuda, so it builds and runs its CPU tests on
 * machines without a GPU driver). One list, VMEP_DRIVER_FUNCS, generates
 * the table's fields, the loader and the fake driver's counters in tests.
 */
#ifndef VMEP_DRIVER_H
#define VMEP_DRIVER_H

#include <cuda.h>
#include <cudaTypedefs.h>

#include "core/core.h"

/* (name, ABI version, required). The version picks the ABI: cuMemAlloc at
 * 3020 is cuMemAlloc_v2. Optional entries may be NULL in the table. */
#define VMEP_DRIVER_FUNCS(X)                                                   \
  X(cuGetErrorName, 6000, 1)                                                   \
  X(cuInit, 2000, 1)                                                           \
  X(cuDriverGetVersion, 2020, 1)                                               \
  X(cuDeviceGet, 2000, 1)                                                      \
  X(cuDeviceGetCount, 2000, 1)                                                 \
  X(cuDeviceGetAttribute, 2000, 1)                                             \
  X(cuDeviceGetName, 2000, 1)                                                  \
  X(cuDeviceGetUuid, 11040, 1)                                                 \
  X(cuDeviceTotalMem, 3020, 1)                                                 \
  X(cuDevicePrimaryCtxRetain, 7000, 1)                                         \
  X(cuDevicePrimaryCtxRelease, 11000, 1)                                       \
  X(cuCtxPushCurrent, 4000, 1)                                                 \
  X(cuCtxPopCurrent, 4000, 1)                                                  \
  X(cuCtxSynchronize, 2000, 1)                                                 \
  X(cuMemGetInfo, 3020, 1)                                                     \
  X(cuMemAlloc, 3020, 1)                                                       \
  X(cuMemFree, 3020, 1)                                                        \
  X(cuMemsetD8, 3020, 1)                                                       \
  X(cuMemcpyHtoD, 3020, 1)                                                     \
  X(cuMemcpyDtoH, 3020, 1)                                                     \
  X(cuMemHostAlloc, 2020, 1)                                                   \
  X(cuMemHostGetDevicePointer, 3020, 1)                                        \
  X(cuMemFreeHost, 2000, 1)                                                    \
  X(cuIpcGetMemHandle, 4010, 1)                                                \
  X(cuIpcOpenMemHandle, 11000, 1)                                              \
  X(cuIpcCloseMemHandle, 4010, 1)                                              \
  X(cuMemGetAllocationGranularity, 10020, 0)                                   \
  X(cuMemCreate, 10020, 0)                                                     \
  X(cuMemRelease, 10020, 0)                                                    \
  X(cuMemAddressReserve, 10020, 0)                                             \
  X(cuMemAddressFree, 10020, 0)                                                \
  X(cuMemMap, 10020, 0)                                                        \
  X(cuMemUnmap, 10020, 0)                                                      \
  X(cuMemSetAccess, 10020, 0)                                                  \
  X(cuMemExportToShareableHandle, 10020, 0)                                    \
  X(cuMemImportFromShareableHandle, 10020, 0)

struct vmep_driver {
#define VMEP_DRIVER_FIELD(name, version, required) PFN_##name##_v##version name;
  VMEP_DRIVER_FUNCS(VMEP_DRIVER_FIELD)
#undef VMEP_DRIVER_FIELD
};

/*
 * The driver table. The first call loads libcuda.so.1, resolves every
 * entry by name and version and runs cuInit(0); the outcome is cached. On
 * failure (no driver, a required entry missing, cuInit failing) it returns
 * VMEP_ERR_UNSUPPORTED or VMEP_ERR_CUDA with the cached message set as the
 * thread's last error, and *driver_out is untouched. Thread-safe.
 */
vmep_status vmep__driver_get(const struct vmep_driver **driver_out);

/*
 * Tests only: makes vmep__driver_get return `fake` (NULL restores the real
 * driver) and bumps the generation, so that caches built over the previous
 * table (the device probe) are rebuilt.
 */
void vmep__driver_install(const struct vmep_driver *fake);

/* Counts vmep__driver_install calls; caches compare it to notice a new
 * table. */
unsigned vmep__driver_generation(void);

/* "CUDA_ERROR_NOT_PERMITTED", or "CUresult 999" when the driver has no name
 * for it (or is not loaded). */
const char *vmep__cu_error_name(CUresult result);

/* The vmep_status for a CUresult: out of memory, unsupported (not
 * permitted, not supported, no device, stub library), invalid device, else
 * VMEP_ERR_CUDA. */
vmep_status vmep__cu_status(CUresult result);

/*
 * For result != CUDA_SUCCESS: records "<what>: <CUDA error name>" (and
 * " (<hint>)" when hint is not NULL) as the last error, logs it at
 * `level`, and returns vmep__cu_status(result). VMEP_OK for success.
 */
vmep_status vmep__cu_check(CUresult result, int level, const char *hint,
                           const char *what_fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Explicit device selection. vmep__ctx_retain retains device `device`'s
 * primary context (the one the CUDA runtime uses too) and gives its
 * CUdevice, which vmep__ctx_release takes back (so that releasing needs no
 * call that could fail); every object that owns device memory (region,
 * mapping) holds one retain for its life, so the context cannot be
 * destroyed under it. vmep__ctx_push makes a context current on this
 * thread for a group of driver calls; vmep__ctx_pop undoes it. No call
 * depends on what happened to be current before.
 */
vmep_status vmep__ctx_retain(const struct vmep_driver *driver, int device,
                             CUdevice *dev_out, CUcontext *ctx_out);
void vmep__ctx_release(const struct vmep_driver *driver, CUdevice dev);
vmep_status vmep__ctx_push(const struct vmep_driver *driver, CUcontext ctx,
                           int device);
void vmep__ctx_pop(const struct vmep_driver *driver);

#endif /* VMEP_DRIVER_H */
