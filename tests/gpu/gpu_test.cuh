/*
 * Shared pieces of the GPU tests: CUDA runtime checks that name the call,
 * the skip rule when there is no GPU, and a seeded pattern that a kernel
 * writes and the host checks element by element.
 */
#ifndef VMEP_GPU_TEST_CUH
#define VMEP_GPU_TEST_CUH

#include <cuda_runtime.h>
#include <dirent.h>

#include "test.h"

#define CUDA_OK(call)                                                          \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    if (e_ != cudaSuccess)                                                     \
      TEST_FAIL("%s: %s (%s)", #call, cudaGetErrorName(e_),                    \
                cudaGetErrorString(e_));                                       \
  } while (0)

/* A launch followed by its error check. */
#define LAUNCH_OK(...)                                                         \
  do {                                                                         \
    __VA_ARGS__;                                                               \
    CUDA_OK(cudaGetLastError());                                               \
  } while (0)

/* Exits 77 (skipped) unless vmep sees at least one GPU. */
static inline void gpu_test_require_device(void) {
  int count = 0;
  vmep_status st = vmep_device_count(&count);
  if (st != VMEP_OK)
    TEST_SKIP("no GPU: %s", vmep_last_error());
  if (count == 0)
    TEST_SKIP("no GPU: the driver reports 0 devices");
}

/*
 * The start of a multi-rank GPU test (run under vmep-run): skips without a
 * launcher or a GPU, joins the group, gives every rank rank 0's seed (so all
 * agree on sizes and inputs) and makes the rank's device current. Returns
 * the device.
 */
static inline int gpu_test_join(const char *name, vmep_group **group_out,
                                uint64_t *seed_out) {
  int count = 0;
  if (!getenv("VMEP_RANK"))
    TEST_SKIP("run under vmep-run");
  gpu_test_require_device();
  ASSERT_OK(vmep_group_create_from_env(group_out));
  *seed_out = test_seed(name);
  ASSERT_OK(vmep_group_broadcast(*group_out, 0, seed_out, sizeof(*seed_out)));
  ASSERT_OK(vmep_device_count(&count));
  int device = vmep_group_local_rank(*group_out) % count;
  CUDA_OK(cudaSetDevice(device));
  return device;
}

/* Word i of the pattern for `seed`: distinct per seed and index, never a
 * run of zeros. */
__host__ __device__ static inline uint32_t pattern_word(uint64_t seed,
                                                        size_t i) {
  uint64_t x = seed ^ (0x9e3779b97f4a7c15ull * (i + 1));
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 29;
  return (uint32_t)x | 1u;
}

__global__ void pattern_fill_kernel(uint32_t *dst, size_t words,
                                    uint64_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words;
       i += (size_t)gridDim.x * blockDim.x)
    dst[i] = pattern_word(seed, i);
}

static inline void pattern_fill(void *dst, size_t bytes, uint64_t seed) {
  LAUNCH_OK(
      pattern_fill_kernel<<<264, 256>>>((uint32_t *)dst, bytes / 4, seed));
  CUDA_OK(cudaDeviceSynchronize());
}

/* Copies `bytes` of device memory back and checks every word; returns the
 * number of mismatches (printing the first few). */
static inline size_t pattern_check(const void *src, size_t bytes, uint64_t seed,
                                   const char *what) {
  size_t words = bytes / 4, bad = 0;
  uint32_t *host = (uint32_t *)malloc(bytes);
  if (!host)
    TEST_FAIL("malloc(%zu)", bytes);
  CUDA_OK(cudaMemcpy(host, src, bytes, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < words; i++) {
    if (host[i] != pattern_word(seed, i)) {
      if (bad < 5)
        fprintf(stderr, "%s: word %zu is 0x%08x, expected 0x%08x\n", what, i,
                host[i], pattern_word(seed, i));
      bad++;
    }
  }
  free(host);
  return bad;
}

/* Open file descriptors of this process. */
static inline int count_open_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d)
    TEST_FAIL("opendir(/proc/self/fd)");
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

#endif /* VMEP_GPU_TEST_CUH */
