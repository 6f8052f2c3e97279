/*
 * Turning a CUresult into a vmep_status and a last-error message that names
 * the call, its key arguments and the driver's name for the error.
 */
#include <stdio.h>

#include "driver/driver.h"

const char *vmep__cu_error_name(CUresult result) {
  static _Thread_local char unknown[32];
  const struct vmep_driver *drv = NULL;
  const char *name = NULL;
  char saved[512];
  /* Looking the driver up must not replace the message being built. */
  snprintf(saved, sizeof(saved), "%s", vmep_last_error());
  if (vmep__driver_get(&drv) == VMEP_OK &&
      drv->cuGetErrorName(result, &name) == CUDA_SUCCESS && name)
    return name;
  vmep__set_last_error(saved);
  snprintf(unknown, sizeof(unknown), "CUresult %d", (int)result);
  return unknown;
}

vmep_status vmep__cu_status(CUresult result) {
  switch (result) {
  case CUDA_SUCCESS:
    return VMEP_OK;
  case CUDA_ERROR_OUT_OF_MEMORY:
    return VMEP_ERR_OUT_OF_MEMORY;
  case CUDA_ERROR_NOT_PERMITTED:
  case CUDA_ERROR_NOT_SUPPORTED:
  case CUDA_ERROR_NO_DEVICE:
  case CUDA_ERROR_STUB_LIBRARY:
    return VMEP_ERR_UNSUPPORTED;
  case CUDA_ERROR_INVALID_DEVICE:
    return VMEP_ERR_INVALID_ARG;
  default:
    return VMEP_ERR_CUDA;
  }
}

vmep_status vmep__cu_check(CUresult result, int level, const char *hint,
                           const char *what_fmt, ...) {
  if (result == CUDA_SUCCESS)
    return VMEP_OK;
  char what[384];
  va_list ap;
  va_start(ap, what_fmt);
  vsnprintf(what, sizeof(what), what_fmt, ap);
  va_end(ap);
  const char *name = vmep__cu_error_name(result);
  if (hint)
    return vmep__fail(vmep__cu_status(result), level, "%s: %s (%s)", what, name,
                      hint);
  return vmep__fail(vmep__cu_status(result), level, "%s: %s", what, name);
}
