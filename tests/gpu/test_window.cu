/*
 * Symmetric windows across processes (run under vmep-run, several ranks on
 * one GPU). Every rank writes its own seeded pattern into its slice of
 * every peer's region through the window (each peer's kind in the table:
 * itself, or mapped), then each rank checks every slice of its own region
 * word by word. Then 100 create / destroy cycles
 * must not grow device memory use or open fds, and the forced strategies
 * behave: legacy and posix_fd work, fabric fails with its reason on
 * every rank (no hang) where the device cannot use it.
 */
#include "gpu_test.cuh"
#include "sym/sym.h"

static uint64_t slice_seed(uint64_t seed, int writer, int owner) {
  return seed ^ ((uint64_t)writer << 40) ^ ((uint64_t)owner << 20) ^
         0x5bd1e995u;
}

static void exchange_patterns(vmep_group *g, int device, uint64_t seed) {
  int rank = vmep_group_rank(g), size = vmep_group_size(g);
  vmep_window *w = NULL;
  size_t bytes = (size_t)(1 + seed % 24) << 20;
  ASSERT_OK(vmep_window_create(g, device, bytes, &w));
  size_t stride = vmep_window_size(w);
  size_t slice = stride / (size_t)size / 16 * 16;
  ASSERT_TRUE(stride >= bytes && slice > 0);
  CUDA_OK(cudaMemset(vmep_window_local(w), 0xa5, stride));
  CUDA_OK(cudaDeviceSynchronize());
  ASSERT_OK(vmep_group_barrier(g));
  for (int peer = 0; peer < size; peer++) {
    char *base = (char *)vmep_window_peer(w, peer);
    ASSERT_TRUE(base != NULL);
    ASSERT_EQ(vmep__window_peer_kind(w, peer),
              peer == rank ? VMEP_PEER_SELF : VMEP_PEER_MAPPED);
    pattern_fill(base + (size_t)rank * slice, slice,
                 slice_seed(seed, rank, peer));
  }
  CUDA_OK(cudaDeviceSynchronize());
  ASSERT_OK(vmep_group_barrier(g));
  char *mine = (char *)vmep_window_local(w);
  for (int writer = 0; writer < size; writer++)
    ASSERT_EQ(pattern_check(mine + (size_t)writer * slice, slice,
                            slice_seed(seed, writer, rank), "own slice"),
              0);
  printf("window %s: %d ranks wrote %zu B slices into every peer; all "
         "checked\n",
         vmep_mem_strategy_name(vmep_window_strategy(w)), size, slice);
  ASSERT_OK(vmep_window_destroy(w));
}

static void cycles(vmep_group *g, int device) {
  size_t free0, free1, total;
  vmep_window *w = NULL;
  /* One cycle first, so lazily created driver state is not counted. */
  ASSERT_OK(vmep_window_create(g, device, 1 << 20, &w));
  ASSERT_OK(vmep_window_destroy(w));
  int fds0 = count_open_fds();
  CUDA_OK(cudaMemGetInfo(&free0, &total));
  for (int i = 0; i < 100; i++) {
    ASSERT_OK(vmep_window_create(g, device, (size_t)(1 + i % 4) << 20, &w));
    ASSERT_OK(vmep_window_destroy(w));
  }
  CUDA_OK(cudaMemGetInfo(&free1, &total));
  int fds1 = count_open_fds();
  printf("100 window cycles: free device memory %zu -> %zu B, fds %d -> %d\n",
         free0, free1, fds0, fds1);
  /* Other ranks share the GPU and cycle too: allow their in-flight slack. */
  ASSERT_TRUE(free1 + (size_t)vmep_group_size(g) * (8u << 20) >= free0);
  ASSERT_EQ(fds1, fds0);
}

static void forced(vmep_group *g, int device, const char *share,
                   int expect_ok) {
  vmep_window *w = NULL;
  setenv("VMEP_MEM_SHARE", share, 1);
  vmep_status st = vmep_window_create(g, device, 1 << 20, &w);
  if (expect_ok) {
    ASSERT_OK(st);
    ASSERT_TRUE(
        strcmp(vmep_mem_strategy_name(vmep_window_strategy(w)), share) == 0);
    ASSERT_OK(vmep_window_destroy(w));
  } else {
    ASSERT_TRUE(st != VMEP_OK && w == NULL);
    printf("VMEP_MEM_SHARE=%s: %s (%s)\n", share, vmep_status_name(st),
           vmep_last_error());
  }
  unsetenv("VMEP_MEM_SHARE");
  printf("VMEP_MEM_SHARE=%s: %s as expected\n", share,
         expect_ok ? "works" : "refused");
}

int main(void) {
  vmep_group *g = NULL;
  uint64_t seed = 0;
  int device = gpu_test_join("test_window", &g, &seed);
  vmep_mem_caps caps;
  ASSERT_OK(vmep_mem_probe(device, &caps));
  exchange_patterns(g, device, seed);
  cycles(g, device);
  forced(g, device, "legacy", caps.legacy_ipc);
  exchange_patterns(g, device, seed + 1); /* back to auto */
  forced(g, device, "posix_fd", caps.posix_fd);
  forced(g, device, "fabric", caps.fabric);
  ASSERT_OK(vmep_group_destroy(g));
  printf("1 passed, 0 failed\n");
  return 0;
}
