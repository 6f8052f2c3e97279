/*
 * The fake driver's memory entries: VMM handles, address reservations,
 * mappings and access, shareable handles (a POSIX fd is a real memfd, so
 * fd leaks show in /proc/self/fd), and cuMemAlloc with legacy IPC. Each
 * checks its arguments as the real driver does where a library bug would
 * otherwise pass unnoticed (sizes off the granularity, a map outside a
 * reservation, a free of a range that is still mapped, ...).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fake_machine.h"

#define FAKE_HANDLE_BASE 0x5eed0000ull

/* What an exported handle carries: enough to find the object again. */
struct fake_token {
  char magic[16];
  uint64_t index;
};

static const char fd_magic[16] = "fake-posix-fd";
static const char fabric_magic[16] = "fake-fabric";
static const char ipc_magic[16] = "fake-ipc";

/* ---- helpers ---------------------------------------------------------- */

/* The smallest granularity of any device: VA ranges are multiples of it. */
static size_t va_granule(void) {
  size_t g = fake__m.dev[0].granularity;
  for (int d = 1; d < fake__m.device_count; d++)
    if (fake__m.dev[d].granularity < g)
      g = fake__m.dev[d].granularity;
  return g ? g : 1;
}

/* A fresh VA range; a one-granule gap keeps ranges from touching. */
static CUdeviceptr take_va(size_t size, size_t align) {
  size_t granule = va_granule();
  if (align < granule)
    align = granule;
  CUdeviceptr va = (fake__m.next_va + align - 1) / align * align;
  fake__m.next_va = va + size + granule;
  return va;
}

static struct fake_object *handle_object(CUmemGenericAllocationHandle h) {
  uint64_t index = h - FAKE_HANDLE_BASE;
  if (h < FAKE_HANDLE_BASE || index >= (uint64_t)fake__m.handles.count)
    return NULL;
  struct fake_object *o = &fake__m.handles.obj[index];
  return o->live ? o : NULL;
}

/* The live object of `t` whose range is exactly [va, va+size). */
static struct fake_object *range_exact(struct fake_table *t, CUdeviceptr va,
                                       size_t size) {
  struct fake_object *o = fake__at(t, va);
  return o && o->size == size ? o : NULL;
}

/* The live object of `t` whose range contains [va, va+size). */
static struct fake_object *range_within(struct fake_table *t, CUdeviceptr va,
                                        size_t size) {
  for (int i = 0; i < t->count; i++) {
    const struct fake_object *o = &t->obj[i];
    if (o->live && va >= o->va && va - o->va <= o->size &&
        size <= o->size - (va - o->va))
      return &t->obj[i];
  }
  return NULL;
}

static int overlaps_mapping(CUdeviceptr va, size_t size) {
  for (int i = 0; i < fake__m.mappings.count; i++) {
    const struct fake_object *o = &fake__m.mappings.obj[i];
    if (o->live && va < o->va + o->size && o->va < va + size)
      return 1;
  }
  return 0;
}

static int prop_device(const CUmemAllocationProp *prop) {
  if (!prop || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
      prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
      prop->location.id < 0 || prop->location.id >= fake__m.device_count)
    return -1;
  return prop->location.id;
}

static int token_index(const struct fake_token *t, const char *magic,
                       const struct fake_table *table) {
  if (memcmp(t->magic, magic, sizeof(t->magic)) != 0 ||
      t->index >= (uint64_t)table->count)
    return -1;
  return (int)t->index;
}

/* ---- VMM: handles ----------------------------------------------------- */

CUresult
fake_cuMemGetAllocationGranularity(size_t *granularity,
                                   const CUmemAllocationProp *prop,
                                   CUmemAllocationGranularity_flags option) {
  FAKE_ENTER(FAKE_cuMemGetAllocationGranularity);
  if (rc != CUDA_SUCCESS)
    return rc;
  int d = prop_device(prop);
  if (!granularity || d < 0 ||
      (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM &&
       option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
    return CUDA_ERROR_INVALID_VALUE;
  if (!fake__m.dev[d].vmm)
    return CUDA_ERROR_NOT_SUPPORTED;
  *granularity = fake__m.dev[d].granularity;
  return CUDA_SUCCESS;
}

/* Whether device `d` can create a handle with `prop`'s handle types. */
static CUresult check_handle_types(int d, const CUmemAllocationProp *prop) {
  const struct fake_device *c = &fake__m.dev[d];
  unsigned types = (unsigned)prop->requestedHandleTypes;
  unsigned known =
      CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR | CU_MEM_HANDLE_TYPE_FABRIC;
  if (types & ~known)
    return CUDA_ERROR_INVALID_VALUE;
  if (!c->vmm)
    return CUDA_ERROR_NOT_SUPPORTED;
  if ((types & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) && !c->posix_fd)
    return CUDA_ERROR_NOT_SUPPORTED;
  if (prop->allocFlags.gpuDirectRDMACapable && !c->rdma_with_vmm)
    return CUDA_ERROR_NOT_SUPPORTED;
  if (types & CU_MEM_HANDLE_TYPE_FABRIC)
    return c->fabric_attr ? c->fabric_create : CUDA_ERROR_NOT_SUPPORTED;
  return CUDA_SUCCESS;
}

CUresult fake_cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                          const CUmemAllocationProp *prop,
                          unsigned long long flags) {
  FAKE_ENTER(FAKE_cuMemCreate);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (prop) {
    fake__m.last_prop = *prop;
    fake__m.has_prop = 1;
  }
  int d = prop_device(prop);
  if (!handle || d < 0 || flags != 0 || size == 0 ||
      size % fake__m.dev[d].granularity != 0)
    return CUDA_ERROR_INVALID_VALUE;
  rc = check_handle_types(d, prop);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (size > fake__m.dev[d].total_bytes - fake_mem_used(d))
    return CUDA_ERROR_OUT_OF_MEMORY;
  int i = fake__add(&fake__m.handles);
  if (i < 0)
    return CUDA_ERROR_OUT_OF_MEMORY;
  struct fake_object *o = &fake__m.handles.obj[i];
  o->device = d;
  o->size = size;
  o->ref = i;
  o->types = (unsigned)prop->requestedHandleTypes;
  o->uses_memory = 1;
  *handle = FAKE_HANDLE_BASE + (uint64_t)i;
  return CUDA_SUCCESS;
}

CUresult fake_cuMemRelease(CUmemGenericAllocationHandle handle) {
  FAKE_ENTER(FAKE_cuMemRelease);
  if (rc != CUDA_SUCCESS)
    return rc;
  struct fake_object *o = handle_object(handle);
  if (!o)
    return CUDA_ERROR_INVALID_VALUE;
  o->live = 0;
  fake__log_release(FAKE_cuMemRelease);
  return CUDA_SUCCESS;
}

CUresult fake_cuMemExportToShareableHandle(void *shareable,
                                           CUmemGenericAllocationHandle handle,
                                           CUmemAllocationHandleType type,
                                           unsigned long long flags) {
  FAKE_ENTER(FAKE_cuMemExportToShareableHandle);
  if (rc != CUDA_SUCCESS)
    return rc;
  const struct fake_object *o = handle_object(handle);
  if (!o || !shareable || flags != 0 ||
      (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR &&
       type != CU_MEM_HANDLE_TYPE_FABRIC) ||
      !(o->types & (unsigned)type))
    return CUDA_ERROR_INVALID_VALUE;
  struct fake_token token;
  memset(&token, 0, sizeof(token));
  token.index = (uint64_t)(o - fake__m.handles.obj);
  if (type == CU_MEM_HANDLE_TYPE_FABRIC) {
    memcpy(token.magic, fabric_magic, sizeof(token.magic));
    memset(shareable, 0, sizeof(CUmemFabricHandle));
    memcpy(shareable, &token, sizeof(token));
    return CUDA_SUCCESS;
  }
  memcpy(token.magic, fd_magic, sizeof(token.magic));
  int fd = memfd_create("vmep-fake-handle", MFD_CLOEXEC);
  if (fd < 0)
    return CUDA_ERROR_OPERATING_SYSTEM;
  if (write(fd, &token, sizeof(token)) != (ssize_t)sizeof(token)) {
    close(fd);
    return CUDA_ERROR_OPERATING_SYSTEM;
  }
  *(int *)shareable = fd;
  return CUDA_SUCCESS;
}

/* Reads the token an exported handle carries; -1 when it is not one. */
static int imported_index(void *os_handle, CUmemAllocationHandleType type) {
  struct fake_token token;
  if (type == CU_MEM_HANDLE_TYPE_FABRIC) {
    if (!os_handle)
      return -1;
    memcpy(&token, os_handle, sizeof(token));
    return token_index(&token, fabric_magic, &fake__m.handles);
  }
  if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
    return -1;
  int fd = (int)(intptr_t)os_handle;
  if (pread(fd, &token, sizeof(token), 0) != (ssize_t)sizeof(token))
    return -1;
  return token_index(&token, fd_magic, &fake__m.handles);
}

CUresult
fake_cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle,
                                    void *os_handle,
                                    CUmemAllocationHandleType type) {
  FAKE_ENTER(FAKE_cuMemImportFromShareableHandle);
  if (rc != CUDA_SUCCESS)
    return rc;
  int source = imported_index(os_handle, type);
  if (!handle || source < 0)
    return CUDA_ERROR_INVALID_VALUE;
  int i = fake__add(&fake__m.handles);
  if (i < 0)
    return CUDA_ERROR_OUT_OF_MEMORY;
  struct fake_object *o = &fake__m.handles.obj[i];
  const struct fake_object *src = &fake__m.handles.obj[source];
  o->device = src->device;
  o->size = src->size;
  o->ref = source;
  o->types = src->types;
  *handle = FAKE_HANDLE_BASE + (uint64_t)i;
  return CUDA_SUCCESS;
}

/* ---- VMM: address ranges and mappings --------------------------------- */

CUresult fake_cuMemAddressReserve(CUdeviceptr *ptr, size_t size,
                                  size_t alignment, CUdeviceptr addr,
                                  unsigned long long flags) {
  FAKE_ENTER(FAKE_cuMemAddressReserve);
  if (rc != CUDA_SUCCESS)
    return rc;
  (void)addr; /* only a hint */
  if (!ptr || flags != 0 || size == 0 || size % va_granule() != 0 ||
      (alignment & (alignment - 1)) != 0)
    return CUDA_ERROR_INVALID_VALUE;
  int i = fake__add(&fake__m.reservations);
  if (i < 0)
    return CUDA_ERROR_OUT_OF_MEMORY;
  struct fake_object *o = &fake__m.reservations.obj[i];
  o->size = size;
  o->va = take_va(size, alignment);
  *ptr = o->va;
  return CUDA_SUCCESS;
}

CUresult fake_cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  FAKE_ENTER(FAKE_cuMemAddressFree);
  if (rc != CUDA_SUCCESS)
    return rc;
  struct fake_object *o = range_exact(&fake__m.reservations, ptr, size);
  if (!o || overlaps_mapping(ptr, size))
    return CUDA_ERROR_INVALID_VALUE;
  o->live = 0;
  fake__log_release(FAKE_cuMemAddressFree);
  return CUDA_SUCCESS;
}

CUresult fake_cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                       CUmemGenericAllocationHandle handle,
                       unsigned long long flags) {
  FAKE_ENTER(FAKE_cuMemMap);
  if (rc != CUDA_SUCCESS)
    return rc;
  const struct fake_object *h = handle_object(handle);
  if (!h || flags != 0 || size == 0)
    return CUDA_ERROR_INVALID_VALUE;
  size_t g = fake__m.dev[h->device].granularity;
  if (size % g != 0 || offset % g != 0 || ptr % g != 0 || offset > h->size ||
      size > h->size - offset)
    return CUDA_ERROR_INVALID_VALUE;
  if (!range_within(&fake__m.reservations, ptr, size) ||
      overlaps_mapping(ptr, size))
    return CUDA_ERROR_INVALID_VALUE;
  int i = fake__add(&fake__m.mappings);
  if (i < 0)
    return CUDA_ERROR_OUT_OF_MEMORY;
  struct fake_object *m = &fake__m.mappings.obj[i];
  m->va = ptr;
  m->size = size;
  m->device = h->device;
  m->ref = (int)(h - fake__m.handles.obj);
  return CUDA_SUCCESS;
}

CUresult fake_cuMemUnmap(CUdeviceptr ptr, size_t size) {
  FAKE_ENTER(FAKE_cuMemUnmap);
  if (rc != CUDA_SUCCESS)
    return rc;
  struct fake_object *m = range_exact(&fake__m.mappings, ptr, size);
  if (!m)
    return CUDA_ERROR_INVALID_VALUE;
  m->live = 0;
  fake__log_release(FAKE_cuMemUnmap);
  return CUDA_SUCCESS;
}

CUresult fake_cuMemSetAccess(CUdeviceptr ptr, size_t size,
                             const CUmemAccessDesc *desc, size_t count) {
  FAKE_ENTER(FAKE_cuMemSetAccess);
  if (rc != CUDA_SUCCESS)
    return rc;
  struct fake_object *m = range_within(&fake__m.mappings, ptr, size);
  if (!m || size == 0 || !desc || count == 0 || count > FAKE_MAX_DEVICES)
    return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < count; i++) {
    const CUmemAccessDesc *a = &desc[i];
    if (a->location.type != CU_MEM_LOCATION_TYPE_DEVICE || a->location.id < 0 ||
        a->location.id >= fake__m.device_count ||
        (a->flags != CU_MEM_ACCESS_FLAGS_PROT_NONE &&
         a->flags != CU_MEM_ACCESS_FLAGS_PROT_READ &&
         a->flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE))
      return CUDA_ERROR_INVALID_VALUE;
  }
  for (size_t i = 0; i < count; i++) {
    unsigned bit = 1u << desc[i].location.id;
    if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
      m->access |= bit;
    else
      m->access &= ~bit;
    fake__m.last_access.desc[i] = desc[i];
  }
  fake__m.last_access.count = (int)count;
  return CUDA_SUCCESS;
}

/* ---- pinned host memory: plain heap memory, its device pointer itself -- */

CUresult fake_cuMemHostAlloc(void **pp, size_t bytes, unsigned int flags) {
  FAKE_ENTER(FAKE_cuMemHostAlloc);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (fake__current_device() < 0)
    return CUDA_ERROR_INVALID_CONTEXT;
  if (!pp || bytes == 0 || (flags & ~0x7u))
    return CUDA_ERROR_INVALID_VALUE;
  *pp = malloc(bytes);
  if (!*pp)
    return CUDA_ERROR_OUT_OF_MEMORY;
  fake__m.host_allocs++;
  return CUDA_SUCCESS;
}

CUresult fake_cuMemHostGetDevicePointer(CUdeviceptr *dptr, void *p,
                                        unsigned int flags) {
  FAKE_ENTER(FAKE_cuMemHostGetDevicePointer);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (!dptr || !p || flags)
    return CUDA_ERROR_INVALID_VALUE;
  *dptr = (CUdeviceptr)(uintptr_t)p;
  return CUDA_SUCCESS;
}

CUresult fake_cuMemFreeHost(void *p) {
  FAKE_ENTER(FAKE_cuMemFreeHost);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (!p)
    return CUDA_ERROR_INVALID_VALUE;
  free(p);
  fake__m.host_allocs--;
  return CUDA_SUCCESS;
}

/* ---- cuMemAlloc and legacy IPC ---------------------------------------- */

CUresult fake_cuMemAlloc(CUdeviceptr *dptr, size_t bytes) {
  FAKE_ENTER(FAKE_cuMemAlloc);
  if (rc != CUDA_SUCCESS)
    return rc;
  int d = fake__current_device();
  if (d < 0)
    return CUDA_ERROR_INVALID_CONTEXT;
  if (!dptr || bytes == 0)
    return CUDA_ERROR_INVALID_VALUE;
  if (bytes > fake__m.dev[d].total_bytes - fake_mem_used(d))
    return CUDA_ERROR_OUT_OF_MEMORY;
  int i = fake__add(&fake__m.blocks);
  if (i < 0)
    return CUDA_ERROR_OUT_OF_MEMORY;
  struct fake_object *o = &fake__m.blocks.obj[i];
  o->device = d;
  o->size = bytes;
  o->uses_memory = 1;
  o->va = take_va(bytes, 0);
  *dptr = o->va;
  return CUDA_SUCCESS;
}

CUresult fake_cuMemFree(CUdeviceptr dptr) {
  FAKE_ENTER(FAKE_cuMemFree);
  if (rc != CUDA_SUCCESS)
    return rc;
  /* Unlike cuMemAlloc, it needs no current context (driver 580). */
  struct fake_object *o = fake__at(&fake__m.blocks, dptr);
  if (!o)
    return CUDA_ERROR_INVALID_VALUE;
  o->live = 0;
  fake__log_release(FAKE_cuMemFree);
  return CUDA_SUCCESS;
}

CUresult fake_cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr dptr) {
  FAKE_ENTER(FAKE_cuIpcGetMemHandle);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (fake__current_device() < 0)
    return CUDA_ERROR_INVALID_CONTEXT;
  const struct fake_object *b = range_within(&fake__m.blocks, dptr, 1);
  if (!handle || !b)
    return CUDA_ERROR_INVALID_VALUE;
  struct fake_token token;
  memset(handle, 0, sizeof(*handle));
  memcpy(token.magic, ipc_magic, sizeof(token.magic));
  token.index = (uint64_t)(b - fake__m.blocks.obj);
  memcpy(handle->reserved, &token, sizeof(token));
  return CUDA_SUCCESS;
}

CUresult fake_cuIpcOpenMemHandle(CUdeviceptr *dptr, CUipcMemHandle handle,
                                 unsigned int flags) {
  FAKE_ENTER(FAKE_cuIpcOpenMemHandle);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (fake__current_device() < 0)
    return CUDA_ERROR_INVALID_CONTEXT;
  struct fake_token token;
  memcpy(&token, handle.reserved, sizeof(token));
  int block = token_index(&token, ipc_magic, &fake__m.blocks);
  if (!dptr || flags != CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS || block < 0 ||
      !fake__m.blocks.obj[block].live)
    return CUDA_ERROR_INVALID_VALUE;
  int i = fake__add(&fake__m.ipc);
  if (i < 0)
    return CUDA_ERROR_OUT_OF_MEMORY;
  struct fake_object *o = &fake__m.ipc.obj[i];
  o->device = fake__m.blocks.obj[block].device;
  o->size = fake__m.blocks.obj[block].size;
  o->ref = block;
  o->va = take_va(o->size, 0);
  *dptr = o->va;
  return CUDA_SUCCESS;
}

CUresult fake_cuIpcCloseMemHandle(CUdeviceptr dptr) {
  FAKE_ENTER(FAKE_cuIpcCloseMemHandle);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (fake__current_device() < 0)
    return CUDA_ERROR_INVALID_CONTEXT;
  struct fake_object *o = fake__at(&fake__m.ipc, dptr);
  if (!o)
    return CUDA_ERROR_INVALID_VALUE;
  o->live = 0;
  fake__log_release(FAKE_cuIpcCloseMemHandle);
  return CUDA_SUCCESS;
}

/* ---- zeroing and copies ----------------------------------------------- */

/* Whether [va, va+size) lies in device memory this process can touch: a
 * cuMemAlloc block, a mapping or an opened IPC range. The fake keeps no
 * contents: writes are checked and dropped, reads give zeros. */
static CUresult touchable(CUdeviceptr va, size_t size) {
  if (fake__current_device() < 0)
    return CUDA_ERROR_INVALID_CONTEXT;
  if (size == 0 || range_within(&fake__m.blocks, va, size) ||
      range_within(&fake__m.mappings, va, size) ||
      range_within(&fake__m.ipc, va, size))
    return CUDA_SUCCESS;
  return CUDA_ERROR_INVALID_VALUE;
}

CUresult fake_cuMemsetD8(CUdeviceptr va, unsigned char value, size_t size) {
  FAKE_ENTER(FAKE_cuMemsetD8);
  (void)value;
  return rc != CUDA_SUCCESS ? rc : touchable(va, size);
}

CUresult fake_cuMemcpyHtoD(CUdeviceptr dst, const void *src, size_t size) {
  FAKE_ENTER(FAKE_cuMemcpyHtoD);
  if (rc != CUDA_SUCCESS)
    return rc;
  return size && !src ? CUDA_ERROR_INVALID_VALUE : touchable(dst, size);
}

CUresult fake_cuMemcpyDtoH(void *dst, CUdeviceptr src, size_t size) {
  FAKE_ENTER(FAKE_cuMemcpyDtoH);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (size && !dst)
    return CUDA_ERROR_INVALID_VALUE;
  rc = touchable(src, size);
  if (rc == CUDA_SUCCESS && size)
    memset(dst, 0, size);
  return rc;
}
