/*
 * The fake driver's machine: simulated devices, their attributes and
 * primary contexts, the table generated from VMEP_DRIVER_FUNCS, and the
 * records tests read afterwards (live counts, release order). CUdevice
 * values differ from ordinals, so code that mixes them up fails here as
 * the driver API says it may. One recursive lock makes the fake safe for
 * library threads; contexts are current per thread, as in the driver.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_machine.h"

#define FAKE_DEVICE_BASE 0x40
#define FAKE_FIRST_VA ((CUdeviceptr)1 << 44)

struct fake_machine fake__m;
_Thread_local int fake__ctx_stack[FAKE_CTX_DEPTH];
_Thread_local int fake__ctx_depth;

static struct vmep_driver table;
static pthread_mutex_t lock;
static pthread_once_t lock_once = PTHREAD_ONCE_INIT;

/* ---- the lock --------------------------------------------------------- */

static void lock_init(void) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init(&lock, &attr);
  pthread_mutexattr_destroy(&attr);
}

int fake__lock(void) {
  pthread_once(&lock_once, lock_init);
  pthread_mutex_lock(&lock);
  return 1;
}

void fake__unlock(const int *held) {
  if (*held)
    pthread_mutex_unlock(&lock);
}

/* ---- machine set-up --------------------------------------------------- */

static void default_device(struct fake_device *d, int ordinal) {
  memset(d, 0, sizeof(*d));
  snprintf(d->name, sizeof(d->name), "Fake H100 #%d", ordinal);
  for (int i = 0; i < 16; i++)
    d->uuid[i] = (unsigned char)(0xa0 + 16 * ordinal + i);
  d->cc_major = 9;
  d->vmm = 1;
  d->posix_fd = 1;
  d->fabric_attr = 1;
  d->rdma_with_vmm = 1;
  d->dma_buf = 1;
  d->fabric_create = CUDA_SUCCESS;
  d->granularity = (size_t)2 << 20;
  d->total_bytes = (size_t)80 << 30;
}

void fake_reset(int devices) {
  FAKE_LOCK_SCOPE();
  if (devices < 1 || devices > FAKE_MAX_DEVICES)
    devices = 1;
  memset(&fake__m, 0, sizeof(fake__m));
  fake__ctx_depth = 0;
  fake__m.device_count = devices;
  fake__m.driver_version = 13000;
  fake__m.next_va = FAKE_FIRST_VA;
  for (int i = 0; i < devices; i++)
    default_device(&fake__m.dev[i], i);
  fake__faults_reset();
#define FAKE_TABLE_ENTRY(name, version, required) table.name = fake_##name;
  VMEP_DRIVER_FUNCS(FAKE_TABLE_ENTRY)
#undef FAKE_TABLE_ENTRY
}

struct fake_device *fake_device(int ordinal) {
  return &fake__m.dev[ordinal];
}

void fake_set_driver_version(int version) {
  FAKE_LOCK_SCOPE();
  fake__m.driver_version = version;
}

void fake_install(void) { vmep__driver_install(&table); }

void fake_setup(int devices) {
  unsetenv("VMEP_MEM_SHARE");
  fake_reset(devices);
  fake_install();
}

void fake_uninstall(void) {
  vmep__driver_install(NULL);
  vmep__allocator_install(NULL);
}

int fake_drop_entry(enum fake_entry entry) {
  switch (entry) {
#define FAKE_DROP(name, version, required)                                     \
  case FAKE_##name:                                                            \
    if (required)                                                              \
      return 0;                                                                \
    table.name = NULL;                                                         \
    return 1;
    VMEP_DRIVER_FUNCS(FAKE_DROP)
#undef FAKE_DROP
  default:
    return 0;
  }
}

const struct vmep_driver *fake_driver(void) { return &table; }

/* ---- shared helpers --------------------------------------------------- */

int fake__add(struct fake_table *t) {
  if (t->count >= FAKE_MAX_OBJECTS)
    return -1;
  struct fake_object *o = &t->obj[t->count];
  memset(o, 0, sizeof(*o));
  o->live = 1;
  return t->count++;
}

struct fake_object *fake__at(struct fake_table *t, CUdeviceptr va) {
  for (int i = 0; i < t->count; i++)
    if (t->obj[i].live && t->obj[i].va == va)
      return &t->obj[i];
  return NULL;
}

void fake__log_release(enum fake_entry entry) {
  if (fake__m.log_count < FAKE_LOG_MAX)
    fake__m.log[fake__m.log_count++] = entry;
}

int fake__current_device(void) {
  return fake__ctx_depth ? fake__ctx_stack[fake__ctx_depth - 1] : -1;
}

int fake__ordinal(CUdevice dev) {
  int ordinal = dev - FAKE_DEVICE_BASE;
  return ordinal >= 0 && ordinal < fake__m.device_count ? ordinal : -1;
}

/* ---- records ---------------------------------------------------------- */

static int live_in(const struct fake_table *t) {
  int n = 0;
  for (int i = 0; i < t->count; i++)
    n += t->obj[i].live;
  return n;
}

struct fake_live fake_live(void) {
  FAKE_LOCK_SCOPE();
  struct fake_live l;
  memset(&l, 0, sizeof(l));
  l.handles = live_in(&fake__m.handles);
  l.reservations = live_in(&fake__m.reservations);
  l.mappings = live_in(&fake__m.mappings);
  l.allocs = live_in(&fake__m.blocks);
  l.ipc_opened = live_in(&fake__m.ipc);
  for (int d = 0; d < fake__m.device_count; d++)
    l.ctx_retains += fake__m.ctx_retains[d];
  l.ctx_pushes = fake__m.ctx_pushes;
  l.host_allocs = fake__m.host_allocs;
  return l;
}

const char *fake_leaks(void) {
  FAKE_LOCK_SCOPE();
  static char text[256];
  struct fake_live l = fake_live();
  const struct {
    const char *name;
    int count;
  } counts[] = {{"handles", l.handles},       {"reservations", l.reservations},
                {"mappings", l.mappings},     {"allocs", l.allocs},
                {"ipc_opened", l.ipc_opened}, {"ctx_retains", l.ctx_retains},
                {"ctx_pushes", l.ctx_pushes}, {"host_allocs", l.host_allocs}};
  size_t used = 0;
  text[0] = '\0';
  for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++)
    if (counts[i].count != 0 && used < sizeof(text))
      used +=
          (size_t)snprintf(text + used, sizeof(text) - used, "%s%d %s",
                           used ? ", " : "", counts[i].count, counts[i].name);
  return used ? text : NULL;
}

size_t fake_mem_used(int device) {
  FAKE_LOCK_SCOPE();
  size_t used = 0;
  const struct fake_table *tables[] = {&fake__m.handles, &fake__m.blocks};
  for (int t = 0; t < 2; t++)
    for (int i = 0; i < tables[t]->count; i++) {
      const struct fake_object *o = &tables[t]->obj[i];
      if (o->live && o->uses_memory && o->device == device)
        used += o->size;
    }
  return used;
}

int fake_release_log(const enum fake_entry **log_out) {
  FAKE_LOCK_SCOPE();
  *log_out = fake__m.log;
  return fake__m.log_count;
}

void fake_release_log_clear(void) {
  FAKE_LOCK_SCOPE();
  fake__m.log_count = 0;
}

const char *fake_release_log_diff(const enum fake_entry *want, int count) {
  FAKE_LOCK_SCOPE();
  static char text[160];
  for (int i = 0; i < count || i < fake__m.log_count; i++) {
    const char *seen =
        i < fake__m.log_count ? fake_entry_name(fake__m.log[i]) : "nothing";
    const char *expected = i < count ? fake_entry_name(want[i]) : "nothing";
    if (strcmp(seen, expected) != 0) {
      snprintf(text, sizeof(text), "release call %d is %s, expected %s", i,
               seen, expected);
      return text;
    }
  }
  return NULL;
}

const CUmemAllocationProp *fake_last_prop(void) {
  FAKE_LOCK_SCOPE();
  return fake__m.has_prop ? &fake__m.last_prop : NULL;
}

unsigned fake_mapping_access(CUdeviceptr va) {
  FAKE_LOCK_SCOPE();
  const struct fake_object *o = fake__at(&fake__m.mappings, va);
  return o ? o->access : 0;
}

const struct fake_access *fake_last_access(void) {
  FAKE_LOCK_SCOPE();
  return &fake__m.last_access;
}

/* ---- entries: driver and devices -------------------------------------- */

CUresult fake_cuInit(unsigned int flags) {
  FAKE_ENTER(FAKE_cuInit);
  if (rc != CUDA_SUCCESS)
    return rc;
  return flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult fake_cuDriverGetVersion(int *version) {
  FAKE_ENTER(FAKE_cuDriverGetVersion);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (!version)
    return CUDA_ERROR_INVALID_VALUE;
  *version = fake__m.driver_version;
  return CUDA_SUCCESS;
}

CUresult fake_cuDeviceGetCount(int *count) {
  FAKE_ENTER(FAKE_cuDeviceGetCount);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (!count)
    return CUDA_ERROR_INVALID_VALUE;
  *count = fake__m.device_count;
  return CUDA_SUCCESS;
}

CUresult fake_cuDeviceGet(CUdevice *dev, int ordinal) {
  FAKE_ENTER(FAKE_cuDeviceGet);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (!dev)
    return CUDA_ERROR_INVALID_VALUE;
  if (ordinal < 0 || ordinal >= fake__m.device_count)
    return CUDA_ERROR_INVALID_DEVICE;
  *dev = FAKE_DEVICE_BASE + ordinal;
  return CUDA_SUCCESS;
}

CUresult fake_cuDeviceGetAttribute(int *value, CUdevice_attribute attr,
                                   CUdevice dev) {
  FAKE_ENTER(FAKE_cuDeviceGetAttribute);
  if (rc != CUDA_SUCCESS)
    return rc;
  int d = fake__ordinal(dev);
  if (d < 0)
    return CUDA_ERROR_INVALID_DEVICE;
  if (!value || attr <= 0 || attr >= CU_DEVICE_ATTRIBUTE_MAX)
    return CUDA_ERROR_INVALID_VALUE;
  const struct fake_device *c = &fake__m.dev[d];
  switch (attr) {
  case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR:
    *value = c->cc_major;
    break;
  case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR:
    *value = c->cc_minor;
    break;
  case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
    *value = c->vmm;
    break;
  case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED:
    *value = c->posix_fd;
    break;
  case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED:
    *value = c->fabric_attr;
    break;
  case CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED:
    *value = c->rdma_with_vmm;
    break;
  case CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED:
    *value = c->dma_buf;
    break;
  default:
    *value = 0;
  }
  return CUDA_SUCCESS;
}

CUresult fake_cuDeviceGetName(char *name, int len, CUdevice dev) {
  FAKE_ENTER(FAKE_cuDeviceGetName);
  if (rc != CUDA_SUCCESS)
    return rc;
  int d = fake__ordinal(dev);
  if (d < 0)
    return CUDA_ERROR_INVALID_DEVICE;
  if (!name || len <= 0)
    return CUDA_ERROR_INVALID_VALUE;
  snprintf(name, (size_t)len, "%s", fake__m.dev[d].name);
  return CUDA_SUCCESS;
}

CUresult fake_cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) {
  FAKE_ENTER(FAKE_cuDeviceGetUuid);
  if (rc != CUDA_SUCCESS)
    return rc;
  int d = fake__ordinal(dev);
  if (d < 0)
    return CUDA_ERROR_INVALID_DEVICE;
  if (!uuid)
    return CUDA_ERROR_INVALID_VALUE;
  memcpy(uuid->bytes, fake__m.dev[d].uuid, sizeof(uuid->bytes));
  return CUDA_SUCCESS;
}

CUresult fake_cuDeviceTotalMem(size_t *bytes, CUdevice dev) {
  FAKE_ENTER(FAKE_cuDeviceTotalMem);
  if (rc != CUDA_SUCCESS)
    return rc;
  int d = fake__ordinal(dev);
  if (d < 0)
    return CUDA_ERROR_INVALID_DEVICE;
  if (!bytes)
    return CUDA_ERROR_INVALID_VALUE;
  *bytes = fake__m.dev[d].total_bytes;
  return CUDA_SUCCESS;
}

/* ---- entries: primary contexts ---------------------------------------- */

/* A primary context is the address of its device's retain counter. */
static int context_device(CUcontext ctx) {
  for (int d = 0; d < fake__m.device_count; d++)
    if ((void *)ctx == (void *)&fake__m.ctx_retains[d])
      return d;
  return -1;
}

CUresult fake_cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev) {
  FAKE_ENTER(FAKE_cuDevicePrimaryCtxRetain);
  if (rc != CUDA_SUCCESS)
    return rc;
  int d = fake__ordinal(dev);
  if (d < 0)
    return CUDA_ERROR_INVALID_DEVICE;
  if (!ctx)
    return CUDA_ERROR_INVALID_VALUE;
  fake__m.ctx_retains[d]++;
  *ctx = (CUcontext)(void *)&fake__m.ctx_retains[d];
  return CUDA_SUCCESS;
}

CUresult fake_cuDevicePrimaryCtxRelease(CUdevice dev) {
  FAKE_ENTER(FAKE_cuDevicePrimaryCtxRelease);
  if (rc != CUDA_SUCCESS)
    return rc;
  int d = fake__ordinal(dev);
  if (d < 0)
    return CUDA_ERROR_INVALID_DEVICE;
  if (fake__m.ctx_retains[d] == 0)
    return CUDA_ERROR_INVALID_CONTEXT;
  fake__m.ctx_retains[d]--;
  return CUDA_SUCCESS;
}

CUresult fake_cuCtxPushCurrent(CUcontext ctx) {
  FAKE_ENTER(FAKE_cuCtxPushCurrent);
  if (rc != CUDA_SUCCESS)
    return rc;
  int d = context_device(ctx);
  if (d < 0 || fake__m.ctx_retains[d] == 0)
    return CUDA_ERROR_INVALID_CONTEXT;
  if (fake__ctx_depth == FAKE_CTX_DEPTH)
    return CUDA_ERROR_INVALID_VALUE;
  fake__ctx_stack[fake__ctx_depth++] = d;
  fake__m.ctx_pushes++;
  return CUDA_SUCCESS;
}

CUresult fake_cuCtxPopCurrent(CUcontext *ctx) {
  FAKE_ENTER(FAKE_cuCtxPopCurrent);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (fake__ctx_depth == 0)
    return CUDA_ERROR_INVALID_CONTEXT;
  int d = fake__ctx_stack[--fake__ctx_depth];
  fake__m.ctx_pushes--;
  if (ctx)
    *ctx = (CUcontext)(void *)&fake__m.ctx_retains[d];
  return CUDA_SUCCESS;
}

CUresult fake_cuCtxSynchronize(void) {
  FAKE_ENTER(FAKE_cuCtxSynchronize);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (fake__current_device() < 0)
    return CUDA_ERROR_INVALID_CONTEXT;
  fake__log_release(FAKE_cuCtxSynchronize);
  return CUDA_SUCCESS;
}

CUresult fake_cuMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
  FAKE_ENTER(FAKE_cuMemGetInfo);
  if (rc != CUDA_SUCCESS)
    return rc;
  int d = fake__current_device();
  if (d < 0)
    return CUDA_ERROR_INVALID_CONTEXT;
  if (!free_bytes || !total_bytes)
    return CUDA_ERROR_INVALID_VALUE;
  *total_bytes = fake__m.dev[d].total_bytes;
  *free_bytes = *total_bytes - fake_mem_used(d);
  return CUDA_SUCCESS;
}
