/*
 * 1000 allocate / export / free cycles per usable strategy: afterwards the
 * device's free memory is back at its start value (within one granularity)
 * and the process holds no more file descriptors than before.
 */
#include "gpu_test.cuh"

#define CYCLES 1000

static void cycle(int device, vmep_mem_strategy s, size_t granularity) {
  size_t free_before, free_after, total;
  int fds_before = count_open_fds();
  CUDA_OK(cudaMemGetInfo(&free_before, &total));
  for (int i = 0; i < CYCLES; i++) {
    vmep_region *region = NULL;
    vmep_mem_desc desc;
    size_t bytes = (size_t)(1 + test_rand() % 8) * granularity;
    ASSERT_OK(vmep_region_alloc(device, bytes, 1u << s, &region));
    ASSERT_OK(vmep_region_export(region, &desc));
    ASSERT_EQ(desc.fd >= 0, s == VMEP_MEM_POSIX_FD);
    vmep_mem_desc_close(&desc);
    ASSERT_EQ(desc.fd, -1);
    ASSERT_OK(vmep_region_free(region));
  }
  CUDA_OK(cudaMemGetInfo(&free_after, &total));
  int fds_after = count_open_fds();
  long long drift = (long long)free_before - (long long)free_after;
  printf("%s: %d cycles, free memory drift %lld B, fds %d -> %d\n",
         vmep_mem_strategy_name(s), CYCLES, drift, fds_before, fds_after);
  ASSERT_TRUE(drift <= (long long)granularity);
  ASSERT_EQ(fds_after, fds_before);
}

int main(void) {
  test_seed("test_region_cycles");
  gpu_test_require_device();
  vmep_mem_caps caps;
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaFree(0)); /* create the context before measuring */
  ASSERT_OK(vmep_mem_probe(0, &caps));
  int usable[VMEP_MEM_STRATEGY_COUNT] = {0, caps.fabric, caps.posix_fd,
                                         caps.legacy_ipc};
  int ran = 0;
  for (int s = VMEP_MEM_FABRIC; s <= VMEP_MEM_LEGACY; s++) {
    if (!usable[s]) {
      printf("%s: not usable here, skipped (%s)\n",
             vmep_mem_strategy_name((vmep_mem_strategy)s), caps.reason[s]);
      continue;
    }
    cycle(0, (vmep_mem_strategy)s, caps.granularity);
    ran++;
  }
  ASSERT_TRUE(ran > 0);
  printf("%d passed, 0 failed\n", ran);
  return 0;
}
