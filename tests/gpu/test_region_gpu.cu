/*
 * Every strategy the device allows: allocate a region, poison it, fill it
 * with a seeded pattern by a kernel, read every word back, free. Strategies
 * the probe rejects must carry a reason, and a forced allocation of one of
 * them must fail with VMEP_ERR_UNSUPPORTED naming it.
 */
#include "gpu_test.cuh"

static void check_strategy(int device, vmep_mem_strategy s, int usable,
                           const vmep_mem_caps *caps) {
  unsigned flag = 1u << s;
  vmep_region *region = NULL;
  size_t bytes = (size_t)(1 + test_rand() % 64) << 20; /* 1..64 MiB */
  if (!usable) {
    printf("%s: not usable (%s)\n", vmep_mem_strategy_name(s), caps->reason[s]);
    ASSERT_TRUE(caps->reason[s][0] != '\0');
    ASSERT_STATUS(vmep_region_alloc(device, bytes, flag, &region),
                  VMEP_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(vmep_last_error(), vmep_mem_strategy_name(s));
    ASSERT_TRUE(region == NULL);
    return;
  }
  ASSERT_OK(vmep_region_alloc(device, bytes, flag, &region));
  ASSERT_EQ(vmep_region_strategy(region), s);
  ASSERT_TRUE(vmep_region_size(region) >= bytes);
  ASSERT_EQ(vmep_region_size(region) % caps->granularity, 0);
  void *ptr = vmep_region_ptr(region);
  size_t size = vmep_region_size(region);
  uint64_t seed = test_rand();
  CUDA_OK(cudaMemset(ptr, 0xA5, size));
  pattern_fill(ptr, size, seed);
  size_t bad = pattern_check(ptr, size, seed, vmep_mem_strategy_name(s));
  ASSERT_EQ(bad, 0);
  ASSERT_OK(vmep_region_free(region));
  printf("%s: %zu B written and read back\n", vmep_mem_strategy_name(s), size);
}

int main(void) {
  test_seed("test_region_gpu");
  gpu_test_require_device();
  int count = 0;
  ASSERT_OK(vmep_device_count(&count));
  for (int device = 0; device < count; device++) {
    vmep_mem_caps caps;
    CUDA_OK(cudaSetDevice(device));
    ASSERT_OK(vmep_mem_probe(device, &caps));
    printf("device %d (%s): auto picks %s\n", device, caps.name,
           vmep_mem_strategy_name(caps.best));
    ASSERT_TRUE(caps.best != VMEP_MEM_NONE);
    check_strategy(device, VMEP_MEM_FABRIC, caps.fabric, &caps);
    check_strategy(device, VMEP_MEM_POSIX_FD, caps.posix_fd, &caps);
    check_strategy(device, VMEP_MEM_LEGACY, caps.legacy_ipc, &caps);
    /* The automatic chain lands on what the probe predicted. */
    vmep_region *region = NULL;
    ASSERT_OK(vmep_region_alloc(device, 4096, 0, &region));
    ASSERT_EQ(vmep_region_strategy(region), caps.best);
    ASSERT_OK(vmep_region_free(region));
  }
  ASSERT_STATUS(vmep_mem_probe(count, NULL), VMEP_ERR_INVALID_ARG);
  vmep_mem_caps caps;
  ASSERT_STATUS(vmep_mem_probe(count, &caps), VMEP_ERR_INVALID_ARG);
  printf("1 passed, 0 failed\n");
  return 0;
}
