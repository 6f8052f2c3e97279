/*
 * Loading the CUDA driver at run time: dlopen("libcuda.so.1"), then
 * cuGetProcAddress_v2 for every entry of VMEP_DRIVER_FUNCS by name and ABI
 * version (a plain dlsym("cuMemAlloc") would give the old 32-bit ABI).
 * Done once; the result and its message are cached.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "driver/driver.h"

static struct vmep_driver real_driver;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static vmep_status load_status;
static char load_message[512];

static const struct vmep_driver *_Atomic installed_fake;
static _Atomic unsigned generation;

typedef CUresult (*get_proc_fn)(const char *symbol, void **pfn, int version,
                                cuuint64_t flags,
                                CUdriverProcAddressQueryResult *found);

static vmep_status load_failed(vmep_status status, const char *fmt,
                               const char *arg) {
  snprintf(load_message, sizeof(load_message), fmt, arg);
  return status;
}

static vmep_status resolve_all(get_proc_fn get_proc) {
#define VMEP_DRIVER_RESOLVE(name, version, required)                           \
  {                                                                            \
    void *fn = NULL;                                                           \
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SUCCESS;        \
    CUresult rc =                                                              \
        get_proc(#name, &fn, version, CU_GET_PROC_ADDRESS_DEFAULT, &found);    \
    if (rc != CUDA_SUCCESS || found != CU_GET_PROC_ADDRESS_SUCCESS)            \
      fn = NULL;                                                               \
    if (!fn && required)                                                       \
      return load_failed(VMEP_ERR_UNSUPPORTED,                                 \
                         "CUDA driver lacks %s (version " #version             \
                         "): driver too old?",                                 \
                         #name);                                               \
    real_driver.name = (PFN_##name##_v##version)fn;                            \
  }
  VMEP_DRIVER_FUNCS(VMEP_DRIVER_RESOLVE)
#undef VMEP_DRIVER_RESOLVE
  return VMEP_OK;
}

static vmep_status load(void) {
  /* The handle stays open for the life of the process, as the table does. */
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib)
    return load_failed(VMEP_ERR_UNSUPPORTED,
                       "CUDA driver not found (%s): no GPU on "
                       "this machine?",
                       dlerror());
  get_proc_fn get_proc = (get_proc_fn)dlsym(lib, "cuGetProcAddress_v2");
  if (!get_proc)
    return load_failed(VMEP_ERR_UNSUPPORTED,
                       "CUDA driver too old: %s not found (need 12.0+)",
                       "cuGetProcAddress_v2");
  vmep_status status = resolve_all(get_proc);
  if (status != VMEP_OK)
    return status;
  CUresult rc = real_driver.cuInit(0);
  if (rc != CUDA_SUCCESS) {
    const char *name = NULL;
    if (real_driver.cuGetErrorName(rc, &name) != CUDA_SUCCESS || !name)
      name = "unknown CUresult";
    return load_failed(vmep__cu_status(rc), "cuInit(0): %s (no usable GPU?)",
                       name);
  }
  return VMEP_OK;
}

static void load_once_fn(void) {
  load_status = load();
  if (load_status != VMEP_OK)
    vmep_log_info("%s", load_message);
}

vmep_status vmep__driver_get(const struct vmep_driver **driver_out) {
  const struct vmep_driver *fake = installed_fake;
  if (fake) {
    *driver_out = fake;
    return VMEP_OK;
  }
  pthread_once(&load_once, load_once_fn);
  if (load_status != VMEP_OK) {
    vmep__set_last_error(load_message);
    return load_status;
  }
  *driver_out = &real_driver;
  return VMEP_OK;
}

void vmep__driver_install(const struct vmep_driver *fake) {
  installed_fake = fake;
  generation++;
}

unsigned vmep__driver_generation(void) { return generation; }

vmep_status vmep_driver_version(int *version_out) {
  const struct vmep_driver *drv = NULL;
  if (!version_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_driver_version: version_out is NULL");
  vmep_status status = vmep__driver_get(&drv);
  if (status != VMEP_OK)
    return status;
  return vmep__cu_check(drv->cuDriverGetVersion(version_out), VMEP_LOG_ERROR,
                        NULL, "cuDriverGetVersion");
}

vmep_status vmep_device_count(int *count_out) {
  const struct vmep_driver *drv = NULL;
  if (!count_out)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_device_count: count_out is NULL");
  vmep_status status = vmep__driver_get(&drv);
  if (status != VMEP_OK)
    return status;
  return vmep__cu_check(drv->cuDeviceGetCount(count_out), VMEP_LOG_ERROR, NULL,
                        "cuDeviceGetCount");
}
