/*
 * The fake driver itself, called directly: the library's tests only prove
 * something if the fake refuses what the real driver refuses, counts what
 * is live, and fails exactly the call a plan names. Each check here is one
 * a library bug would otherwise slip past. With threads: contexts are
 * current per thread, plans fail only the arming thread's calls, and
 * concurrent calls keep the counts exact.
 */
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include "fake_driver.h"
#include "test.h"

#define FAKE_MIB ((size_t)1 << 20)
#define EXPECT_CU(call, expected) ASSERT_EQ((call), (expected))

static const struct vmep_driver *drv;

static CUmemAllocationProp prop_for(int device, unsigned types) {
  CUmemAllocationProp prop;
  memset(&prop, 0, sizeof(prop));
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  prop.requestedHandleTypes = (CUmemAllocationHandleType)types;
  return prop;
}

static size_t granules(void) { return (1 + test_rand() % 8) * 2 * FAKE_MIB; }

static void test_vmm_checks(void) {
  fake_reset(2);
  CUmemAllocationProp prop =
      prop_for(1, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
  CUmemGenericAllocationHandle h;
  size_t size = granules();
  EXPECT_CU(drv->cuMemCreate(&h, size + 4096, &prop, 0),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_CU(drv->cuMemCreate(&h, 0, &prop, 0), CUDA_ERROR_INVALID_VALUE);
  prop.location.id = 2;
  EXPECT_CU(drv->cuMemCreate(&h, size, &prop, 0), CUDA_ERROR_INVALID_VALUE);
  prop.location.id = 1;
  EXPECT_CU(drv->cuMemCreate(&h, size, &prop, 0), CUDA_SUCCESS);
  ASSERT_EQ(fake_mem_used(1), size);
  ASSERT_EQ(fake_last_prop()->location.id, 1);
  CUdeviceptr va = 0, other = 0;
  EXPECT_CU(drv->cuMemAddressReserve(&va, size + 4096, 0, 0, 0),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_CU(drv->cuMemAddressReserve(&va, size, 3 * FAKE_MIB, 0, 0),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_CU(drv->cuMemAddressReserve(&va, 2 * size, 0, 0, 0), CUDA_SUCCESS);
  EXPECT_CU(drv->cuMemAddressReserve(&other, size, 0, 0, 0), CUDA_SUCCESS);
  CUmemAccessDesc access;
  memset(&access, 0, sizeof(access));
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = 1;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  EXPECT_CU(drv->cuMemSetAccess(va, size, &access, 1),
            CUDA_ERROR_INVALID_VALUE); /* nothing mapped there yet */
  EXPECT_CU(drv->cuMemMap(other + size, size, 0, h, 0),
            CUDA_ERROR_INVALID_VALUE); /* past the reservation */
  EXPECT_CU(drv->cuMemMap(va, size, 0, h, 0), CUDA_SUCCESS);
  EXPECT_CU(drv->cuMemMap(va, size, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CU(drv->cuMemSetAccess(va, size, &access, 1), CUDA_SUCCESS);
  ASSERT_EQ(fake_mapping_access(va), 2u);
  EXPECT_CU(drv->cuMemAddressFree(va, 2 * size), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CU(drv->cuMemUnmap(va + size, size), CUDA_ERROR_INVALID_VALUE);
  struct fake_live live = fake_live();
  ASSERT_EQ(live.handles * 100 + live.reservations * 10 + live.mappings, 121);
  ASSERT_STR_CONTAINS(fake_leaks(), "1 handles, 2 reservations, 1 mappings");
  EXPECT_CU(drv->cuMemUnmap(va, size), CUDA_SUCCESS);
  EXPECT_CU(drv->cuMemAddressFree(va, 2 * size), CUDA_SUCCESS);
  EXPECT_CU(drv->cuMemAddressFree(other, size), CUDA_SUCCESS);
  EXPECT_CU(drv->cuMemRelease(h), CUDA_SUCCESS);
  EXPECT_CU(drv->cuMemRelease(h), CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(fake_leaks() == NULL);
  /* A device without fabric, and one whose fabric allocations are refused. */
  fake_device(0)->fabric_attr = 0;
  fake_device(1)->fabric_create = CUDA_ERROR_NOT_PERMITTED;
  for (int d = 0; d < 2; d++) {
    prop = prop_for(d, CU_MEM_HANDLE_TYPE_FABRIC);
    EXPECT_CU(drv->cuMemCreate(&h, size, &prop, 0),
              d ? CUDA_ERROR_NOT_PERMITTED : CUDA_ERROR_NOT_SUPPORTED);
  }
}

static void test_shareable_handles(void) {
  fake_reset(1);
  CUmemAllocationProp prop =
      prop_for(0, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
  CUmemGenericAllocationHandle h, imported;
  CUmemFabricHandle fabric;
  EXPECT_CU(drv->cuMemCreate(&h, granules(), &prop, 0), CUDA_SUCCESS);
  EXPECT_CU(drv->cuMemExportToShareableHandle(&fabric, h,
                                              CU_MEM_HANDLE_TYPE_FABRIC, 0),
            CUDA_ERROR_INVALID_VALUE); /* not a requested type */
  int fds = fake_open_fds(), fd = -1;
  EXPECT_CU(drv->cuMemExportToShareableHandle(
                &fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
            CUDA_SUCCESS);
  ASSERT_EQ(fake_open_fds(), fds + 1);
  ASSERT_TRUE(fcntl(fd, F_GETFD) != -1);
  EXPECT_CU(drv->cuMemImportFromShareableHandle(
                &imported, (void *)(intptr_t)fd,
                CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
            CUDA_SUCCESS);
  ASSERT_NE(imported, h);
  ASSERT_EQ(fake_live().handles, 2);
  close(fd);
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0); /* an fd the fake did not export */
  EXPECT_CU(drv->cuMemImportFromShareableHandle(
                &imported, (void *)(intptr_t)pipe_fds[0],
                CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
            CUDA_ERROR_INVALID_VALUE);
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  prop = prop_for(0, CU_MEM_HANDLE_TYPE_FABRIC);
  EXPECT_CU(drv->cuMemCreate(&h, granules(), &prop, 0), CUDA_SUCCESS);
  EXPECT_CU(drv->cuMemExportToShareableHandle(&fabric, h,
                                              CU_MEM_HANDLE_TYPE_FABRIC, 0),
            CUDA_SUCCESS);
  fabric.data[0] ^= 1;
  EXPECT_CU(drv->cuMemImportFromShareableHandle(&imported, &fabric,
                                                CU_MEM_HANDLE_TYPE_FABRIC),
            CUDA_ERROR_INVALID_VALUE);
  fabric.data[0] ^= 1;
  EXPECT_CU(drv->cuMemImportFromShareableHandle(&imported, &fabric,
                                                CU_MEM_HANDLE_TYPE_FABRIC),
            CUDA_SUCCESS);
  ASSERT_EQ(fake_live().handles, 4);
}

static void test_contexts_and_legacy(void) {
  fake_reset(2);
  CUdevice dev;
  CUcontext ctx;
  CUdeviceptr ptr, opened;
  size_t bytes = 1 + test_rand() % (64 * FAKE_MIB), free_before, free_after,
         total;
  EXPECT_CU(drv->cuDeviceGet(&dev, 2), CUDA_ERROR_INVALID_DEVICE);
  EXPECT_CU(drv->cuDeviceGet(&dev, 1), CUDA_SUCCESS);
  EXPECT_CU(drv->cuMemAlloc(&ptr, bytes), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_CU(drv->cuCtxPopCurrent(&ctx), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_CU(drv->cuDevicePrimaryCtxRelease(dev), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_CU(drv->cuDevicePrimaryCtxRetain(&ctx, dev), CUDA_SUCCESS);
  EXPECT_CU(drv->cuCtxPushCurrent((CUcontext)&dev), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_CU(drv->cuCtxPushCurrent(ctx), CUDA_SUCCESS);
  EXPECT_CU(drv->cuMemGetInfo(&free_before, &total), CUDA_SUCCESS);
  EXPECT_CU(drv->cuMemAlloc(&ptr, bytes), CUDA_SUCCESS);
  EXPECT_CU(drv->cuMemGetInfo(&free_after, &total), CUDA_SUCCESS);
  ASSERT_EQ(free_before - free_after, bytes);
  ASSERT_EQ(fake_mem_used(1), bytes);
  CUipcMemHandle ipc;
  EXPECT_CU(drv->cuIpcGetMemHandle(&ipc, ptr), CUDA_SUCCESS);
  EXPECT_CU(drv->cuIpcOpenMemHandle(&opened, ipc, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CU(
      drv->cuIpcOpenMemHandle(&opened, ipc, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS),
      CUDA_SUCCESS);
  ASSERT_NE(opened, ptr);
  ASSERT_STR_CONTAINS(fake_leaks(),
                      "1 allocs, 1 ipc_opened, 1 ctx_retains, 1 ctx_pushes");
  EXPECT_CU(drv->cuIpcCloseMemHandle(ptr), CUDA_ERROR_INVALID_VALUE);
  EXPECT_CU(drv->cuIpcCloseMemHandle(opened), CUDA_SUCCESS);
  EXPECT_CU(drv->cuCtxPopCurrent(NULL), CUDA_SUCCESS);
  EXPECT_CU(drv->cuIpcGetMemHandle(&ipc, ptr), CUDA_ERROR_INVALID_CONTEXT);
  EXPECT_CU(drv->cuMemFree(ptr), CUDA_SUCCESS); /* needs no context */
  EXPECT_CU(drv->cuDevicePrimaryCtxRelease(dev), CUDA_SUCCESS);
  ASSERT_TRUE(fake_leaks() == NULL);
  const enum fake_entry order[] = {FAKE_cuIpcCloseMemHandle, FAKE_cuMemFree};
  ASSERT_TRUE(fake_release_log_diff(order, 2) == NULL);
  ASSERT_TRUE(fake_release_log_diff(order + 1, 1) != NULL);
}

static void test_error_names(void) {
  const char *name = NULL;
  fake_reset(1);
  EXPECT_CU(drv->cuGetErrorName(CUDA_ERROR_NOT_PERMITTED, &name), CUDA_SUCCESS);
  ASSERT_TRUE(strcmp(name, "CUDA_ERROR_NOT_PERMITTED") == 0);
  EXPECT_CU(drv->cuGetErrorName((CUresult)(12345 + test_rand() % 1000), &name),
            CUDA_ERROR_INVALID_VALUE);
  ASSERT_TRUE(name == NULL);
}

static void test_fault_plans(void) {
  int count = 0;
  int nth = 2 + (int)(test_rand() % 5);
  fake_reset(1);
  fake_fail(FAKE_cuDeviceGetCount, nth, CUDA_ERROR_UNKNOWN, 0);
  for (int i = 1; i <= nth + 3; i++)
    EXPECT_CU(drv->cuDeviceGetCount(&count),
              i == nth ? CUDA_ERROR_UNKNOWN : CUDA_SUCCESS);
  fake_fail(FAKE_cuDeviceGetCount, nth, CUDA_ERROR_NO_DEVICE, 1);
  for (int i = 1; i <= nth + 3; i++)
    EXPECT_CU(drv->cuDeviceGetCount(&count),
              i >= nth ? CUDA_ERROR_NO_DEVICE : CUDA_SUCCESS);
  ASSERT_EQ(fake_faults_fired(), 5);
  ASSERT_EQ(fake_faults_fired_at(FAKE_cuDeviceGetCount), 5);
  ASSERT_EQ(fake_calls(FAKE_cuDeviceGetCount), 2 * (nth + 3));
  fake_faults_clear();
  EXPECT_CU(drv->cuDeviceGetCount(&count), CUDA_SUCCESS);
  fake_fail(FAKE_cuDeviceGetCount, 1, CUDA_ERROR_UNKNOWN, 1);
  fake_fail(FAKE_cuDeviceGetCount, 0, CUDA_ERROR_UNKNOWN, 1); /* disarms */
  EXPECT_CU(drv->cuDeviceGetCount(&count), CUDA_SUCCESS);
  /* The any-entry plan counts every entry but the exempt ones. */
  int version;
  fake_fault_exempt(FAKE_cuDriverGetVersion, 1);
  fake_fail_any(3, CUDA_ERROR_OUT_OF_MEMORY, 0);
  EXPECT_CU(drv->cuDeviceGetCount(&count), CUDA_SUCCESS);
  EXPECT_CU(drv->cuDriverGetVersion(&version), CUDA_SUCCESS);
  EXPECT_CU(drv->cuInit(0), CUDA_SUCCESS);
  EXPECT_CU(drv->cuDriverGetVersion(&version), CUDA_SUCCESS);
  EXPECT_CU(drv->cuDeviceGetCount(&count), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_CU(drv->cuDeviceGetCount(&count), CUDA_SUCCESS);
  ASSERT_EQ(fake_faults_fired(), 6);
  ASSERT_EQ(fake_drop_entry(FAKE_cuMemMap), 1);
  ASSERT_TRUE(drv->cuMemMap == NULL);
  ASSERT_EQ(fake_drop_entry(FAKE_cuCtxPushCurrent), 0);
  fake_reset(1);
  ASSERT_TRUE(drv->cuMemMap != NULL);
  ASSERT_EQ(fake_faults_fired(), 0);
}

static void test_host_allocations(void) {
  int nth = 1 + (int)(test_rand() % 4);
  fake_alloc_install();
  void *kept[8];
  for (int i = 0; i < 8; i++) {
    if (i == 0)
      fake_alloc_fail(nth, 0);
    kept[i] = vmep__malloc(16 + test_rand() % 64);
    ASSERT_EQ(kept[i] == NULL, i + 1 == nth);
  }
  ASSERT_EQ(fake_alloc_live(), 7);
  ASSERT_EQ(fake_alloc_fired(), 1);
  for (int i = 0; i < 8; i++)
    vmep__free(kept[i]);
  ASSERT_EQ(fake_alloc_live(), 0);
  fake_alloc_fail(2, 1);
  void *first = vmep__malloc(8);
  ASSERT_TRUE(first != NULL);
  ASSERT_TRUE(vmep__malloc(8) == NULL && vmep__calloc(2, 8) == NULL);
  fake_faults_clear(); /* disarms the host plan too */
  void *second = vmep__malloc(8);
  ASSERT_TRUE(second != NULL);
  vmep__free(second);
  vmep__free(first);
  fake_uninstall();
}

/* What a second thread saw: its calls' results. */
struct peer_calls {
  CUcontext ctx;
  CUresult alloc_no_ctx, count, alloc, popped;
  unsigned long rounds;
};

static void *peer_thread(void *arg) {
  struct peer_calls *p = arg;
  CUdeviceptr ptr = 0;
  int count = 0;
  /* The main thread's pushed context is not current here. */
  p->alloc_no_ctx = drv->cuMemAlloc(&ptr, 4096);
  p->count = drv->cuDeviceGetCount(&count);
  ASSERT_EQ(drv->cuCtxPushCurrent(p->ctx), CUDA_SUCCESS);
  p->alloc = drv->cuMemAlloc(&ptr, 4096);
  for (unsigned long i = 0; i < p->rounds; i++) {
    CUmemGenericAllocationHandle h;
    CUmemAllocationProp prop = prop_for(0, 0);
    ASSERT_EQ(drv->cuMemCreate(&h, 2 * FAKE_MIB, &prop, 0), CUDA_SUCCESS);
    ASSERT_EQ(drv->cuMemRelease(h), CUDA_SUCCESS);
  }
  if (p->alloc == CUDA_SUCCESS)
    ASSERT_EQ(drv->cuMemFree(ptr), CUDA_SUCCESS);
  p->popped = drv->cuCtxPopCurrent(NULL);
  return NULL;
}

static void test_threads(void) {
  CUdevice dev;
  CUcontext ctx;
  pthread_t t;
  int count = 0;
  struct peer_calls p = {0};
  fake_reset(1);
  ASSERT_EQ(drv->cuDeviceGet(&dev, 0), CUDA_SUCCESS);
  ASSERT_EQ(drv->cuDevicePrimaryCtxRetain(&ctx, dev), CUDA_SUCCESS);
  ASSERT_EQ(drv->cuCtxPushCurrent(ctx), CUDA_SUCCESS);
  /* Armed here: the peer's calls pass and do not count the plans down. */
  fake_fail_any(1, CUDA_ERROR_UNKNOWN, 1);
  fake_fail(FAKE_cuMemAlloc, 1, CUDA_ERROR_OUT_OF_MEMORY, 0);
  p.ctx = ctx;
  p.rounds = 200 + test_rand() % 200;
  ASSERT_EQ(pthread_create(&t, NULL, peer_thread, &p), 0);
  /* Concurrent calls, the fault plan firing in this thread only. */
  for (unsigned long i = 0; i < p.rounds; i++)
    ASSERT_EQ(drv->cuDeviceGetCount(&count), CUDA_ERROR_UNKNOWN);
  ASSERT_EQ(pthread_join(t, NULL), 0);
  ASSERT_EQ(p.alloc_no_ctx, CUDA_ERROR_INVALID_CONTEXT);
  ASSERT_EQ(p.count, CUDA_SUCCESS);
  ASSERT_EQ(p.alloc, CUDA_SUCCESS);
  ASSERT_EQ(p.popped, CUDA_SUCCESS);
  ASSERT_EQ(fake_faults_fired(), (long long)p.rounds);
  ASSERT_EQ(fake_calls(FAKE_cuDeviceGetCount), p.rounds + 1);
  ASSERT_EQ(fake_calls(FAKE_cuMemCreate), p.rounds);
  ASSERT_EQ(fake_live().ctx_pushes, 1); /* ours, still current here */
  ASSERT_EQ(fake_live().handles, 0);
  /* The transient cuMemAlloc plan is still armed for this thread. */
  CUdeviceptr ptr;
  fake_fail_any(0, CUDA_SUCCESS, 0);
  ASSERT_EQ(drv->cuMemAlloc(&ptr, 4096), CUDA_ERROR_OUT_OF_MEMORY);
  ASSERT_EQ(drv->cuCtxPopCurrent(NULL), CUDA_SUCCESS);
  ASSERT_EQ(drv->cuDevicePrimaryCtxRelease(dev), CUDA_SUCCESS);
  ASSERT_NO_LEAKS();
}

int main(void) {
  test_seed("test_fake_driver");
  drv = fake_driver();
  test_vmm_checks();
  test_shareable_handles();
  test_contexts_and_legacy();
  test_error_names();
  test_fault_plans();
  test_host_allocations();
  test_threads();
  printf("test_fake_driver: ok\n");
  return 0;
}
