/*
 * Freeing a region while a kernel is still writing into it must not fault:
 * vmep_region_free waits for the device's work before it unmaps. A kernel
 * that keeps writing for a while is launched, the region freed at once,
 * and the context must still be healthy (a write to unmapped memory would
 * leave a sticky illegal-address error).
 */
#include "gpu_test.cuh"

/* Writes the region over and over for about `ns` nanoseconds (global
 * timer: SM clocks differ between SMs). */
__global__ void busy_write_kernel(uint32_t *dst, size_t words,
                                  unsigned long long ns,
                                  unsigned long long *laps) {
  unsigned long long start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  unsigned long long lap = 0;
  do {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words;
         i += (size_t)gridDim.x * blockDim.x)
      dst[i] = (uint32_t)(i + lap) | 1u;
    lap++;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns);
  if (blockIdx.x == 0 && threadIdx.x == 0)
    *laps = lap;
}

int main(void) {
  test_seed("test_region_free_busy");
  gpu_test_require_device();
  vmep_mem_caps caps;
  CUDA_OK(cudaSetDevice(0));
  ASSERT_OK(vmep_mem_probe(0, &caps));
  unsigned long long *laps;
  CUDA_OK(cudaMalloc(&laps, sizeof(*laps)));
  int usable[VMEP_MEM_STRATEGY_COUNT] = {0, caps.fabric, caps.posix_fd,
                                         caps.legacy_ipc};
  int ran = 0;
  for (int s = VMEP_MEM_FABRIC; s <= VMEP_MEM_LEGACY; s++) {
    if (!usable[s])
      continue;
    vmep_region *region = NULL;
    size_t bytes = (size_t)(8 + test_rand() % 24) << 20;
    ASSERT_OK(vmep_region_alloc(0, bytes, 1u << s, &region));
    size_t size = vmep_region_size(region);
    unsigned long long host_laps = 0;
    CUDA_OK(cudaMemset(laps, 0, sizeof(*laps)));
    LAUNCH_OK(busy_write_kernel<<<132, 256>>>(
        (uint32_t *)vmep_region_ptr(region), size / 4, 300000000ull, laps));
    /* No synchronization here: the kernel is still writing. */
    ASSERT_OK(vmep_region_free(region));
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(&host_laps, laps, sizeof(host_laps),
                       cudaMemcpyDeviceToHost));
    printf("%s: freed while a kernel wrote %zu B (%llu laps): no fault\n",
           vmep_mem_strategy_name((vmep_mem_strategy)s), size, host_laps);
    ASSERT_TRUE(host_laps > 0);
    ran++;
  }
  CUDA_OK(cudaFree(laps));
  ASSERT_TRUE(ran > 0);
  printf("%d passed, 0 failed\n", ran);
  return 0;
}
