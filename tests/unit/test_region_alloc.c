/*
 * vmep_region_alloc / vmep_region_free on the fake driver: the strategy
 * chain FABRIC -> POSIX_FD -> LEGACY and the reason kept for each skipped
 * strategy, out of memory as an error rather than a fallback, narrowing by
 * flags and VMEP_MEM_SHARE, size rounding, access for the region's device
 * and the release order. Every case ends with nothing live in the fake.
 */
#include "fake_driver.h"
#include "test.h"

static size_t random_bytes(void) { return 1 + test_rand() % (64 * FAKE_MIB); }

static vmep_region *alloc_ok(int device, size_t bytes, unsigned flags) {
  vmep_region *r = NULL;
  ASSERT_OK(vmep_region_alloc(device, bytes, flags, &r));
  ASSERT_TRUE(r != NULL && vmep_region_ptr(r) != NULL);
  ASSERT_EQ(vmep_region_device(r), device);
  ASSERT_TRUE(vmep_region_size(r) >= bytes);
  return r;
}

static void free_ok(vmep_region *r) {
  ASSERT_OK(vmep_region_free(r));
  ASSERT_NO_LEAKS();
}

static void test_auto_picks_fabric(void) {
  for (int rdma = 0; rdma <= 1; rdma++) {
    fake_setup(1);
    fake_device(0)->rdma_with_vmm = rdma;
    fake_install();
    size_t bytes = random_bytes();
    vmep_region *r = alloc_ok(0, bytes, 0);
    ASSERT_EQ(vmep_region_strategy(r), VMEP_MEM_FABRIC);
    ASSERT_EQ(vmep_region_reason(r)[0], '\0');
    const CUmemAllocationProp *prop = fake_last_prop();
    ASSERT_TRUE(prop != NULL);
    ASSERT_EQ(prop->requestedHandleTypes,
              CU_MEM_HANDLE_TYPE_FABRIC |
                  CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    ASSERT_EQ(prop->allocFlags.gpuDirectRDMACapable, rdma);
    ASSERT_EQ(prop->location.type, CU_MEM_LOCATION_TYPE_DEVICE);
    ASSERT_EQ(prop->location.id, 0);
    ASSERT_EQ(fake_mem_used(0), vmep_region_size(r));
    free_ok(r);
    ASSERT_EQ(fake_mem_used(0), 0);
  }
}

/* The H100 case: the fabric attribute reads 1, cuMemCreate refuses. */
static void test_fabric_not_permitted(void) {
  fake_setup(1);
  fake_device(0)->fabric_create = CUDA_ERROR_NOT_PERMITTED;
  fake_install();
  vmep_region *r = alloc_ok(0, random_bytes(), 0);
  ASSERT_EQ(vmep_region_strategy(r), VMEP_MEM_POSIX_FD);
  ASSERT_STR_CONTAINS(vmep_region_reason(r), "fabric: cuMemCreate(fabric");
  ASSERT_STR_CONTAINS(vmep_region_reason(r), "CUDA_ERROR_NOT_PERMITTED");
  ASSERT_STR_CONTAINS(vmep_region_reason(r), "IMEX");
  ASSERT_EQ(fake_last_prop()->requestedHandleTypes,
            CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
  free_ok(r);

  /* The trial passed, then the allocation itself is refused. */
  fake_setup(1);
  vmep_mem_caps caps;
  ASSERT_OK(vmep_mem_probe(0, &caps));
  ASSERT_EQ(caps.best, VMEP_MEM_FABRIC);
  fake_fail(FAKE_cuMemCreate, 1, CUDA_ERROR_NOT_PERMITTED, 0);
  r = alloc_ok(0, random_bytes(), 0);
  ASSERT_EQ(vmep_region_strategy(r), VMEP_MEM_POSIX_FD);
  ASSERT_STR_CONTAINS(vmep_region_reason(r), "CUDA_ERROR_NOT_PERMITTED");
  free_ok(r);
}

static void test_posix_not_supported(void) {
  fake_setup(1);
  fake_device(0)->fabric_attr = 0;
  fake_device(0)->posix_fd = 0;
  fake_install();
  size_t bytes = random_bytes();
  vmep_region *r = alloc_ok(0, bytes, 0);
  ASSERT_EQ(vmep_region_strategy(r), VMEP_MEM_LEGACY);
  ASSERT_STR_CONTAINS(vmep_region_reason(r), "fabric: ");
  ASSERT_STR_CONTAINS(vmep_region_reason(r), "posix_fd: ");
  ASSERT_EQ(vmep_region_size(r) % (2 * FAKE_MIB), 0);
  ASSERT_TRUE(vmep_region_size(r) - bytes < 2 * FAKE_MIB);
  ASSERT_EQ(fake_live().allocs, 1);
  free_ok(r);

  /* The trials passed, then every allocation answers NOT_SUPPORTED. */
  fake_setup(1);
  vmep_mem_caps caps;
  ASSERT_OK(vmep_mem_probe(0, &caps));
  fake_fail(FAKE_cuMemCreate, 1, CUDA_ERROR_NOT_SUPPORTED, 1);
  r = alloc_ok(0, random_bytes(), 0);
  ASSERT_EQ(vmep_region_strategy(r), VMEP_MEM_LEGACY);
  ASSERT_STR_CONTAINS(vmep_region_reason(r), "CUDA_ERROR_NOT_SUPPORTED");
  free_ok(r);
}

static void test_out_of_memory(void) {
  fake_setup(1);
  fake_device(0)->total_bytes = 16 * FAKE_MIB;
  fake_install();
  vmep_mem_caps caps;
  ASSERT_OK(vmep_mem_probe(0, &caps));
  unsigned long creates = fake_calls(FAKE_cuMemCreate);
  unsigned long mallocs = fake_calls(FAKE_cuMemAlloc);
  vmep_region *r = (vmep_region *)&caps;
  ASSERT_STATUS(
      vmep_region_alloc(0, 16 * FAKE_MIB + 1 + test_rand() % FAKE_MIB, 0, &r),
      VMEP_ERR_OUT_OF_MEMORY);
  ASSERT_STR_CONTAINS(vmep_last_error(), "cuMemCreate(fabric");
  ASSERT_STR_CONTAINS(vmep_last_error(), "CUDA_ERROR_OUT_OF_MEMORY");
  if (strstr(vmep_last_error(), "IMEX"))
    TEST_FAIL("the IMEX hint is for NOT_PERMITTED only: %s", vmep_last_error());
  ASSERT_TRUE(r == (vmep_region *)&caps);
  /* No fallback: one create, no cuMemAlloc. */
  ASSERT_EQ(fake_calls(FAKE_cuMemCreate), creates + 1);
  ASSERT_EQ(fake_calls(FAKE_cuMemAlloc), mallocs);
  ASSERT_NO_LEAKS();
}

static void test_mem_share_env(void) {
  static const char *const names[] = {"auto", "fabric", "posix_fd", "legacy"};
  for (int s = 0; s < VMEP_MEM_STRATEGY_COUNT; s++) {
    fake_setup(1);
    ASSERT_EQ(setenv("VMEP_MEM_SHARE", names[s], 1), 0);
    vmep_region *r = alloc_ok(0, random_bytes(), 0);
    ASSERT_EQ(vmep_region_strategy(r), s ? s : VMEP_MEM_FABRIC);
    free_ok(r);
  }
  /* Forced and impossible. */
  fake_setup(1);
  fake_device(0)->fabric_create = CUDA_ERROR_NOT_PERMITTED;
  fake_install();
  ASSERT_EQ(setenv("VMEP_MEM_SHARE", "fabric", 1), 0);
  vmep_region *r = NULL;
  ASSERT_STATUS(vmep_region_alloc(0, random_bytes(), 0, &r),
                VMEP_ERR_UNSUPPORTED);
  ASSERT_STR_CONTAINS(vmep_last_error(), "VMEP_MEM_SHARE=fabric");
  ASSERT_STR_CONTAINS(vmep_last_error(), "CUDA_ERROR_NOT_PERMITTED");
  ASSERT_TRUE(r == NULL);
  ASSERT_NO_LEAKS();
  /* Not a strategy. */
  char bad[32];
  snprintf(bad, sizeof(bad), "fabric%u", (unsigned)(test_rand() % 1000));
  ASSERT_EQ(setenv("VMEP_MEM_SHARE", bad, 1), 0);
  ASSERT_STATUS(vmep_region_alloc(0, random_bytes(), 0, &r),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "VMEP_MEM_SHARE");
  ASSERT_STR_CONTAINS(vmep_last_error(), bad);
  ASSERT_TRUE(r == NULL);
  ASSERT_NO_LEAKS();
}

static void test_flags(void) {
  fake_setup(1);
  for (int s = VMEP_MEM_FABRIC; s < VMEP_MEM_STRATEGY_COUNT; s++) {
    vmep_region *r = alloc_ok(0, random_bytes(), 1u << s);
    ASSERT_EQ(vmep_region_strategy(r), s);
    free_ok(r);
  }
  unsigned unknown[] = {1u, 1u << 4, (unsigned)test_rand() | (1u << 31)};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(unknown); i++) {
    vmep_region *r = NULL;
    ASSERT_STATUS(vmep_region_alloc(0, random_bytes(),
                                    unknown[i] | VMEP_REGION_ALLOW_LEGACY, &r),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), "unknown flags");
  }
  /* The caller allows LEGACY only, the environment asks for FABRIC. */
  ASSERT_EQ(setenv("VMEP_MEM_SHARE", "fabric", 1), 0);
  vmep_region *r = NULL;
  ASSERT_STATUS(
      vmep_region_alloc(0, random_bytes(), VMEP_REGION_ALLOW_LEGACY, &r),
      VMEP_ERR_UNSUPPORTED);
  ASSERT_STR_CONTAINS(vmep_last_error(), "VMEP_MEM_SHARE=fabric conflicts");
  ASSERT_NO_LEAKS();
  /* Narrowed to what the caller allows, the chain still falls back. */
  fake_setup(1);
  fake_device(0)->fabric_create = CUDA_ERROR_NOT_PERMITTED;
  fake_install();
  r = alloc_ok(0, random_bytes(),
               VMEP_REGION_ALLOW_FABRIC | VMEP_REGION_ALLOW_POSIX_FD);
  ASSERT_EQ(vmep_region_strategy(r), VMEP_MEM_POSIX_FD);
  free_ok(r);
}

static void test_sizes(void) {
  static const size_t granularities[] = {64 << 10, 2 * FAKE_MIB, 4 * FAKE_MIB};
  for (int s = VMEP_MEM_FABRIC; s < VMEP_MEM_STRATEGY_COUNT; s++) {
    fake_setup(1);
    size_t g = granularities[test_rand() % 3];
    fake_device(0)->granularity = g;
    fake_install();
    for (int i = 0; i < 20; i++) {
      size_t bytes = 1 + test_rand() % (i < 10 ? 4 * g : 256 * FAKE_MIB);
      vmep_region *r = alloc_ok(0, bytes, 1u << s);
      ASSERT_EQ(vmep_region_size(r) % g, 0);
      ASSERT_TRUE(vmep_region_size(r) - bytes < g);
      free_ok(r);
    }
    vmep_region *r = NULL;
    ASSERT_STATUS(vmep_region_alloc(0, 0, 1u << s, &r), VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), "size is 0");
    ASSERT_STATUS(
        vmep_region_alloc(0, SIZE_MAX - test_rand() % 1000, 1u << s, &r),
        VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), "overflows");
    ASSERT_STATUS(vmep_region_alloc(0, SIZE_MAX / 2, 1u << s, &r),
                  VMEP_ERR_OUT_OF_MEMORY);
    ASSERT_TRUE(r == NULL);
    ASSERT_NO_LEAKS();
  }
}

/* VMM memory ignores peer access: cuMemSetAccess must name the device. */
static void test_access_for_device(void) {
  fake_setup(3);
  int device = 1 + (int)(test_rand() % 2);
  for (int s = VMEP_MEM_FABRIC; s <= VMEP_MEM_POSIX_FD; s++) {
    vmep_region *r = alloc_ok(device, random_bytes(), 1u << s);
    CUdeviceptr va = (CUdeviceptr)(uintptr_t)vmep_region_ptr(r);
    ASSERT_EQ(fake_mapping_access(va), 1u << device);
    const struct fake_access *a = fake_last_access();
    ASSERT_EQ(a->count, 1);
    ASSERT_EQ(a->desc[0].location.id, device);
    ASSERT_EQ(a->desc[0].flags, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
    ASSERT_EQ(fake_last_prop()->location.id, device);
    ASSERT_EQ(fake_mem_used(device), vmep_region_size(r));
    free_ok(r);
  }
  vmep_region *r = alloc_ok(device, random_bytes(), VMEP_REGION_ALLOW_LEGACY);
  ASSERT_EQ(fake_mem_used(device), vmep_region_size(r));
  ASSERT_EQ(fake_mem_used(0), 0);
  free_ok(r);
}

/* sync -> unmap -> address free -> release (cuMemFree for LEGACY). */
static void test_release_order(void) {
  static const enum fake_entry vmm[] = {FAKE_cuCtxSynchronize, FAKE_cuMemUnmap,
                                        FAKE_cuMemAddressFree,
                                        FAKE_cuMemRelease};
  static const enum fake_entry legacy[] = {FAKE_cuCtxSynchronize,
                                           FAKE_cuMemFree};
  fake_setup(1);
  for (int s = VMEP_MEM_FABRIC; s < VMEP_MEM_STRATEGY_COUNT; s++) {
    vmep_region *r = alloc_ok(0, random_bytes(), 1u << s);
    fake_release_log_clear();
    free_ok(r);
    const char *diff = s == VMEP_MEM_LEGACY ? fake_release_log_diff(legacy, 2)
                                            : fake_release_log_diff(vmm, 4);
    if (diff)
      TEST_FAIL("region free, %s: %s",
                vmep_mem_strategy_name((vmep_mem_strategy)s), diff);
  }
  ASSERT_OK(vmep_region_free(NULL));
}

/* A region is released even when its context cannot be made current (the
 * VMM calls and cuMemFree need none); the status names the push. */
static void test_free_without_context(void) {
  fake_setup(1);
  for (int s = VMEP_MEM_FABRIC; s < VMEP_MEM_STRATEGY_COUNT; s++) {
    vmep_region *r = alloc_ok(0, random_bytes(), 1u << s);
    fake_fail(FAKE_cuCtxPushCurrent, 1, CUDA_ERROR_UNKNOWN, 0);
    ASSERT_STATUS(vmep_region_free(r), VMEP_ERR_CUDA);
    ASSERT_STR_CONTAINS(vmep_last_error(), "cuCtxPushCurrent");
    ASSERT_NO_LEAKS();
  }
}

static void test_device_range(void) {
  int devices = 1 + (int)(test_rand() % 4);
  fake_setup(devices);
  int bad[] = {-1, devices, devices + 1 + (int)(test_rand() % 100)};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad); i++) {
    vmep_region *r = NULL;
    ASSERT_STATUS(vmep_region_alloc(bad[i], random_bytes(), 0, &r),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), "does not exist");
    ASSERT_TRUE(r == NULL);
  }
  ASSERT_NO_LEAKS();
  ASSERT_TRUE(vmep_region_ptr(NULL) == NULL);
  ASSERT_EQ(vmep_region_size(NULL), 0);
  ASSERT_EQ(vmep_region_device(NULL), -1);
  ASSERT_EQ(vmep_region_strategy(NULL), VMEP_MEM_NONE);
}

int main(void) {
  test_seed("test_region_alloc");
  test_auto_picks_fabric();
  test_fabric_not_permitted();
  test_posix_not_supported();
  test_out_of_memory();
  test_mem_share_env();
  test_flags();
  test_sizes();
  test_access_for_device();
  test_release_order();
  test_free_without_context();
  test_device_range();
  fake_uninstall();
  printf("test_region_alloc: ok\n");
  return 0;
}
