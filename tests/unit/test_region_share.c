/*
 * Sharing a region on the fake driver, for each strategy: export ->
 * serialize -> parse -> (the fd set, as SCM_RIGHTS would) -> import ->
 * release. The importer gets a new mapping of the same size with access
 * for its device; every fd is closed once imported, also when the import
 * fails; a mapping is undone in order and nothing is left live.
 */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "fake_driver.h"
#include "test.h"

static int fd_is_open(int fd) { return fcntl(fd, F_GETFD) != -1; }

/* Exports `r` and brings the descriptor through its wire form, as a peer
 * would receive it: the parsed copy gets the fd (duplicated, as SCM_RIGHTS
 * does) and the exporter closes its own. */
static vmep_mem_desc ship(const vmep_region *r, int device) {
  vmep_mem_desc sent, got;
  unsigned char wire[VMEP_MEM_DESC_MAX_BYTES];
  size_t len = 0;
  int fds = fake_open_fds();
  ASSERT_OK(vmep_region_export(r, &sent));
  vmep_mem_strategy s = vmep_region_strategy(r);
  ASSERT_EQ(sent.strategy, s);
  ASSERT_EQ(sent.version, VMEP_MEM_DESC_VERSION);
  ASSERT_EQ(sent.size, vmep_region_size(r));
  ASSERT_TRUE(memcmp(sent.device_uuid, fake_device(device)->uuid, 16) == 0);
  ASSERT_EQ(sent.fd >= 0, s == VMEP_MEM_POSIX_FD);
  ASSERT_EQ(fake_open_fds(), fds + (s == VMEP_MEM_POSIX_FD));
  ASSERT_OK(vmep_mem_desc_serialize(&sent, wire, sizeof(wire), &len));
  memset(&got, 0x77, sizeof(got));
  ASSERT_OK(vmep_mem_desc_parse(wire, len, &got));
  ASSERT_EQ(got.fd, -1);
  ASSERT_EQ(got.strategy, s);
  ASSERT_EQ(got.size, sent.size);
  ASSERT_TRUE(memcmp(got.device_uuid, sent.device_uuid, 16) == 0);
  if (s != VMEP_MEM_POSIX_FD)
    ASSERT_TRUE(memcmp(got.handle, sent.handle, sizeof(got.handle)) == 0);
  if (sent.fd >= 0) {
    got.fd = dup(sent.fd);
    ASSERT_TRUE(got.fd >= 0);
  }
  vmep_mem_desc_close(&sent);
  ASSERT_EQ(sent.fd, -1);
  ASSERT_EQ(fake_open_fds(), fds + (s == VMEP_MEM_POSIX_FD));
  return got;
}

static void check_release_log(vmep_mem_strategy s) {
  static const enum fake_entry vmm[] = {FAKE_cuCtxSynchronize, FAKE_cuMemUnmap,
                                        FAKE_cuMemAddressFree,
                                        FAKE_cuMemRelease};
  static const enum fake_entry legacy[] = {FAKE_cuCtxSynchronize,
                                           FAKE_cuIpcCloseMemHandle};
  const char *diff = s == VMEP_MEM_LEGACY ? fake_release_log_diff(legacy, 2)
                                          : fake_release_log_diff(vmm, 4);
  if (diff)
    TEST_FAIL("mapping release, %s: %s", vmep_mem_strategy_name(s), diff);
}

static void round_trip(vmep_mem_strategy s) {
  fake_setup(2);
  int owner = (int)(test_rand() % 2), importer = (int)(test_rand() % 2);
  int fds = fake_open_fds();
  vmep_region *r = NULL;
  ASSERT_OK(
      vmep_region_alloc(owner, 1 + test_rand() % (64u << 20), 1u << s, &r));
  ASSERT_EQ(vmep_region_strategy(r), s);
  size_t used = fake_mem_used(owner);
  vmep_mem_desc d = ship(r, owner);
  int fd = d.fd;
  vmep_mapping *m = NULL;
  ASSERT_OK(vmep_region_import(importer, &d, &m));
  ASSERT_EQ(d.fd, -1);
  if (fd >= 0 && fd_is_open(fd))
    TEST_FAIL("fd %d still open after import", fd);
  ASSERT_EQ(fake_open_fds(), fds);
  ASSERT_EQ(vmep_mapping_size(m), vmep_region_size(r));
  ASSERT_TRUE(vmep_mapping_ptr(m) != NULL);
  ASSERT_TRUE(vmep_mapping_ptr(m) != vmep_region_ptr(r));
  ASSERT_EQ(fake_mem_used(owner), used); /* an import allocates nothing */
  struct fake_live live = fake_live();
  if (s == VMEP_MEM_LEGACY) {
    ASSERT_EQ(live.ipc_opened, 1);
  } else {
    ASSERT_EQ(live.handles, 2);
    ASSERT_EQ(live.mappings, 2);
    CUdeviceptr va = (CUdeviceptr)(uintptr_t)vmep_mapping_ptr(m);
    ASSERT_EQ(fake_mapping_access(va), 1u << importer);
  }
  fake_release_log_clear();
  ASSERT_OK(vmep_mapping_release(m));
  check_release_log(s);
  ASSERT_OK(vmep_region_free(r));
  ASSERT_NO_LEAKS();
  ASSERT_EQ(fake_open_fds(), fds);
}

/* The import fails at `entry`: the fd is closed all the same, and what
 * the import had done is undone. */
static void failed_import(vmep_mem_strategy s, enum fake_entry entry) {
  fake_setup(1);
  int fds = fake_open_fds();
  vmep_region *r = NULL;
  ASSERT_OK(vmep_region_alloc(0, 1 + test_rand() % (8u << 20), 1u << s, &r));
  vmep_mem_desc d = ship(r, 0);
  int fd = d.fd;
  vmep_mapping *m = NULL;
  fake_fail(entry, 1, CUDA_ERROR_INVALID_VALUE, 0);
  ASSERT_STATUS(vmep_region_import(0, &d, &m), VMEP_ERR_CUDA);
  ASSERT_STR_CONTAINS(vmep_last_error(), fake_entry_name(entry));
  ASSERT_TRUE(m == NULL);
  ASSERT_EQ(d.fd, -1);
  if (fd >= 0 && fd_is_open(fd))
    TEST_FAIL("fd %d still open after a failed import", fd);
  ASSERT_EQ(fake_open_fds(), fds);
  ASSERT_OK(vmep_region_free(r));
  ASSERT_NO_LEAKS();
}

/* The importing device's probe found no POSIX-fd granularity (its trial
 * failed): the mapping still goes at a valid alignment. */
static void test_import_without_granularity(void) {
  fake_setup(2);
  fake_fail(FAKE_cuMemGetAllocationGranularity, 1, CUDA_ERROR_NOT_SUPPORTED, 0);
  vmep_mem_caps caps;
  ASSERT_OK(vmep_mem_probe(1, &caps));
  ASSERT_EQ(caps.granularity, 0);
  ASSERT_EQ(caps.best, VMEP_MEM_FABRIC);
  vmep_region *r = NULL;
  /* 3 granules: not a power of two. */
  ASSERT_OK(vmep_region_alloc(0, (6u << 20) - test_rand() % (2u << 20),
                              VMEP_REGION_ALLOW_FABRIC, &r));
  ASSERT_EQ(vmep_region_size(r), 6u << 20);
  vmep_mem_desc d = ship(r, 0);
  vmep_mapping *m = NULL;
  ASSERT_OK(vmep_region_import(1, &d, &m));
  ASSERT_EQ(vmep_mapping_size(m), 6u << 20);
  ASSERT_OK(vmep_mapping_release(m));
  ASSERT_OK(vmep_region_free(r));
  ASSERT_NO_LEAKS();
}

/* Bad calls are refused, and a POSIX_FD descriptor's fd is still closed. */
static void test_bad_imports(void) {
  fake_setup(1);
  int fds = fake_open_fds();
  vmep_region *r = NULL;
  ASSERT_OK(vmep_region_alloc(0, 1 + test_rand() % (4u << 20),
                              VMEP_REGION_ALLOW_POSIX_FD, &r));
  vmep_mapping *m = NULL;
  vmep_mem_desc d = ship(r, 0);
  ASSERT_STATUS(vmep_region_import(0, &d, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "mapping_out is NULL");
  ASSERT_EQ(d.fd, -1);
  ASSERT_STATUS(vmep_region_import(0, &d, &m), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "without an fd");
  d = ship(r, 0);
  d.version = VMEP_MEM_DESC_VERSION + 1 + (uint32_t)(test_rand() % 100);
  ASSERT_STATUS(vmep_region_import(0, &d, &m), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "version");
  ASSERT_EQ(d.fd, -1);
  d = ship(r, 0);
  ASSERT_STATUS(vmep_region_import(1 + (int)(test_rand() % 50), &d, &m),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "cuDeviceGet");
  ASSERT_EQ(d.fd, -1);
  ASSERT_STATUS(vmep_region_import(0, NULL, &m), VMEP_ERR_INVALID_ARG);
  ASSERT_TRUE(m == NULL);
  ASSERT_EQ(fake_open_fds(), fds);
  ASSERT_STATUS(vmep_region_export(NULL, &d), VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(vmep_region_export(r, NULL), VMEP_ERR_INVALID_ARG);
  vmep_mem_desc_close(NULL);
  ASSERT_OK(vmep_mapping_release(NULL));
  ASSERT_TRUE(vmep_mapping_ptr(NULL) == NULL);
  ASSERT_EQ(vmep_mapping_size(NULL), 0);
  ASSERT_OK(vmep_region_free(r));
  ASSERT_NO_LEAKS();
}

int main(void) {
  static const enum fake_entry vmm_import[] = {
      FAKE_cuMemImportFromShareableHandle, FAKE_cuMemAddressReserve,
      FAKE_cuMemMap, FAKE_cuMemSetAccess};
  test_seed("test_region_share");
  for (int s = VMEP_MEM_FABRIC; s < VMEP_MEM_STRATEGY_COUNT; s++) {
    round_trip((vmep_mem_strategy)s);
    if (s == VMEP_MEM_LEGACY)
      failed_import((vmep_mem_strategy)s, FAKE_cuIpcOpenMemHandle);
    else
      for (size_t i = 0; i < VMEP_ARRAY_SIZE(vmm_import); i++)
        failed_import((vmep_mem_strategy)s, vmm_import[i]);
  }
  test_import_without_granularity();
  test_bad_imports();
  fake_uninstall();
  printf("test_region_share: ok\n");
  return 0;
}
