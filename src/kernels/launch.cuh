/*
 * The check every launcher makes right after a kernel launch: the launch
 * error becomes a vmep_status with the kernel's name in the message.
 */
#ifndef VMEP_KERNELS_LAUNCH_CUH
#define VMEP_KERNELS_LAUNCH_CUH

#include <cuda_runtime.h>

extern "C" {
#include "core/core.h"
}

static inline vmep_status ll_launched(const char *what) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess)
    return VMEP_OK;
  return vmep__fail(VMEP_ERR_CUDA, VMEP_LOG_ERROR, "%s launch: %s", what,
                    cudaGetErrorString(err));
}

#endif /* VMEP_KERNELS_LAUNCH_CUH */
