/*
 * Loading UCX at run time: dlopen("libucp.so.0"), then dlsym of every
 * entry of VMEP_UCX_FUNCS. Done once; the result and its message are
 * cached, as the CUDA driver's are (driver/driver.c).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "net/ucx.h"

#define UCX_LIBRARY "libucp.so.0"

static struct vmep_ucx real_ucx;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static vmep_status load_status;
static char load_message[512];

static vmep_status load(void) {
  /* The handle stays open for the life of the process, as the table does. */
  void *lib = dlopen(UCX_LIBRARY, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    snprintf(load_message, sizeof(load_message),
             "UCX not found: %s (install libucx0, or put its libraries on "
             "LD_LIBRARY_PATH)",
             dlerror());
    return VMEP_ERR_UNSUPPORTED;
  }
#define VMEP_UCX_RESOLVE(name, required)                                       \
  real_ucx.name = (__typeof__(&name))dlsym(lib, #name);                        \
  if (!real_ucx.name && (required)) {                                          \
    snprintf(load_message, sizeof(load_message), "%s lacks %s: UCX too old?",  \
             UCX_LIBRARY, #name);                                              \
    return VMEP_ERR_UNSUPPORTED;                                               \
  }
  VMEP_UCX_FUNCS(VMEP_UCX_RESOLVE)
#undef VMEP_UCX_RESOLVE
  return VMEP_OK;
}

static void load_once_fn(void) {
  load_status = load();
  if (load_status != VMEP_OK)
    vmep_log_info("%s", load_message);
}

vmep_status vmep__ucx_get(const struct vmep_ucx **ucx_out) {
  pthread_once(&load_once, load_once_fn);
  if (load_status != VMEP_OK) {
    vmep__set_last_error(load_message);
    return load_status;
  }
  *ucx_out = &real_ucx;
  return VMEP_OK;
}
