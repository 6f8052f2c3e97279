/*
 * vmep_mem_probe on the fake driver: one cached result per device (two
 * devices with different capabilities give different answers, and a second
 * probe makes no driver call), rebuilt when the driver table is replaced,
 * a failed probe not cached, trial allocations confirming attributes and
 * left behind by nothing, and a reason for every strategy that cannot be
 * used.
 */
#include "fake_driver.h"
#include "test.h"

static unsigned long all_calls(void) {
  unsigned long n = 0;
  for (int e = 0; e < FAKE_ENTRY_COUNT; e++)
    n += fake_calls((enum fake_entry)e);
  return n;
}

static void probe_ok(int device, vmep_mem_caps *caps) {
  memset(caps, 0x5a, sizeof(*caps));
  ASSERT_OK(vmep_mem_probe(device, caps));
  ASSERT_EQ(caps->device, device);
}

/* A usable strategy has no reason; an unusable one has one. */
static void check_reasons(const vmep_mem_caps *c) {
  int usable[VMEP_MEM_STRATEGY_COUNT] = {1, c->fabric, c->posix_fd,
                                         c->legacy_ipc};
  for (int s = 0; s < VMEP_MEM_STRATEGY_COUNT; s++)
    if (usable[s] != (c->reason[s][0] == '\0'))
      TEST_FAIL("device %d, %s: usable %d but reason \"%s\"", c->device,
                vmep_mem_strategy_name((vmep_mem_strategy)s), usable[s],
                c->reason[s]);
}

static void test_two_devices(void) {
  fake_setup(2);
  struct fake_device *d1 = fake_device(1);
  snprintf(d1->name, sizeof(d1->name), "Fake L40S %u",
           (unsigned)(test_rand() % 1000));
  d1->uuid[test_rand() % 16] ^= 0xff;
  d1->cc_major = 8;
  d1->cc_minor = 9;
  d1->fabric_attr = 0;
  d1->rdma_with_vmm = 0;
  d1->dma_buf = 0;
  d1->granularity = 4 * FAKE_MIB;
  d1->total_bytes = ((size_t)40 + test_rand() % 8) << 30;
  fake_install();
  int fds = fake_open_fds();
  vmep_mem_caps c0, c1;
  probe_ok(1, &c1); /* out of order: each device has its own slot */
  probe_ok(0, &c0);
  ASSERT_STR_CONTAINS(c0.name, fake_device(0)->name);
  ASSERT_STR_CONTAINS(c1.name, d1->name);
  ASSERT_TRUE(memcmp(c0.uuid, fake_device(0)->uuid, 16) == 0);
  ASSERT_TRUE(memcmp(c1.uuid, d1->uuid, 16) == 0);
  ASSERT_EQ(c0.cc_major * 10 + c0.cc_minor, 90);
  ASSERT_EQ(c1.cc_major * 10 + c1.cc_minor, 89);
  ASSERT_EQ(c1.total_bytes, d1->total_bytes);
  ASSERT_EQ(c0.vmm + c0.posix_fd + c0.fabric_attr + c0.fabric, 4);
  ASSERT_EQ(c0.rdma_with_vmm + c0.legacy_ipc + c0.dma_buf, 3);
  ASSERT_EQ(c0.granularity, 2 * FAKE_MIB);
  ASSERT_EQ(c0.best, VMEP_MEM_FABRIC);
  ASSERT_EQ(c1.fabric_attr + c1.fabric + c1.rdma_with_vmm + c1.dma_buf, 0);
  ASSERT_EQ(c1.posix_fd, 1);
  ASSERT_EQ(c1.granularity, 4 * FAKE_MIB);
  ASSERT_EQ(c1.best, VMEP_MEM_POSIX_FD);
  ASSERT_STR_CONTAINS(c1.reason[VMEP_MEM_FABRIC], "fabric handles not");
  check_reasons(&c0);
  check_reasons(&c1);
  /* The trials left nothing behind, not even the exported fd. */
  ASSERT_NO_LEAKS();
  ASSERT_EQ(fake_open_fds(), fds);
  /* Cached: probing again asks the driver only for the device count. */
  unsigned long before = all_calls();
  unsigned long counts = fake_calls(FAKE_cuDeviceGetCount);
  vmep_mem_caps again;
  probe_ok(0, &again);
  ASSERT_TRUE(memcmp(&again, &c0, sizeof(again)) == 0);
  probe_ok(1, &again);
  ASSERT_TRUE(memcmp(&again, &c1, sizeof(again)) == 0);
  ASSERT_EQ(all_calls() - before, fake_calls(FAKE_cuDeviceGetCount) - counts);
}

static void test_rebuilt_on_install(void) {
  fake_setup(1);
  vmep_mem_caps caps;
  probe_ok(0, &caps);
  ASSERT_EQ(caps.fabric, 1);
  /* The machine changes under a cached probe: the cache still answers... */
  fake_device(0)->fabric_create = CUDA_ERROR_NOT_PERMITTED;
  probe_ok(0, &caps);
  ASSERT_EQ(caps.fabric, 1);
  /* ...until a table is installed. */
  fake_install();
  probe_ok(0, &caps);
  ASSERT_EQ(caps.fabric_attr, 1);
  ASSERT_EQ(caps.fabric, 0);
  ASSERT_EQ(caps.best, VMEP_MEM_POSIX_FD);
  ASSERT_STR_CONTAINS(caps.reason[VMEP_MEM_FABRIC], "CUDA_ERROR_NOT_PERMITTED");
  ASSERT_STR_CONTAINS(caps.reason[VMEP_MEM_FABRIC], "IMEX");
  check_reasons(&caps);
  ASSERT_NO_LEAKS();
}

static void test_failure_not_cached(void) {
  fake_setup(1);
  vmep_mem_caps caps, untouched;
  memset(&caps, 0x3c, sizeof(caps));
  untouched = caps;
  fake_fail(FAKE_cuDeviceGetName, 1, CUDA_ERROR_UNKNOWN, 0);
  ASSERT_STATUS(vmep_mem_probe(0, &caps), VMEP_ERR_CUDA);
  ASSERT_STR_CONTAINS(vmep_last_error(), "cuDeviceGetName");
  ASSERT_STR_CONTAINS(vmep_last_error(), "CUDA_ERROR_UNKNOWN");
  ASSERT_TRUE(memcmp(&caps, &untouched, sizeof(caps)) == 0);
  probe_ok(0, &caps);
  ASSERT_EQ(caps.best, VMEP_MEM_FABRIC);
  /* Out of memory in a trial is an error, not "strategy unusable". */
  fake_setup(1);
  fake_fail(FAKE_cuMemCreate, 1, CUDA_ERROR_OUT_OF_MEMORY, 0);
  ASSERT_STATUS(vmep_mem_probe(0, &caps), VMEP_ERR_OUT_OF_MEMORY);
  probe_ok(0, &caps);
  ASSERT_EQ(caps.posix_fd, 1);
  ASSERT_NO_LEAKS();
}

/* Nothing works: each strategy says why, and allocation says all. */
static void test_every_reason(void) {
  fake_setup(1);
  fake_device(0)->vmm = 0;
  fake_install();
  fake_fail(FAKE_cuIpcGetMemHandle, 1, CUDA_ERROR_NOT_SUPPORTED, 1);
  vmep_mem_caps caps;
  probe_ok(0, &caps);
  ASSERT_EQ(caps.best, VMEP_MEM_NONE);
  ASSERT_EQ(caps.vmm + caps.fabric + caps.posix_fd + caps.legacy_ipc, 0);
  ASSERT_STR_CONTAINS(caps.reason[VMEP_MEM_FABRIC], "does not support VMM");
  ASSERT_STR_CONTAINS(caps.reason[VMEP_MEM_POSIX_FD], "does not support VMM");
  ASSERT_STR_CONTAINS(caps.reason[VMEP_MEM_LEGACY], "cuIpcGetMemHandle");
  ASSERT_STR_CONTAINS(caps.reason[VMEP_MEM_LEGACY], "CUDA_ERROR_NOT_SUPPORTED");
  check_reasons(&caps);
  ASSERT_NO_LEAKS(); /* the trial's cuMemAlloc was freed */
  vmep_region *r = NULL;
  ASSERT_STATUS(vmep_region_alloc(0, 1 + test_rand() % FAKE_MIB, 0, &r),
                VMEP_ERR_UNSUPPORTED);
  for (int s = VMEP_MEM_FABRIC; s < VMEP_MEM_STRATEGY_COUNT; s++)
    ASSERT_STR_CONTAINS(vmep_last_error(), caps.reason[s]);
  ASSERT_TRUE(r == NULL);
  ASSERT_NO_LEAKS();

  fake_setup(1);
  fake_device(0)->posix_fd = 0;
  fake_install();
  probe_ok(0, &caps);
  ASSERT_STR_CONTAINS(caps.reason[VMEP_MEM_POSIX_FD],
                      "POSIX fd handles not supported");
  check_reasons(&caps);
}

/* An old driver without the VMM entry points still offers LEGACY. */
static void test_driver_without_vmm(void) {
  static const enum fake_entry vmm_entries[] = {
      FAKE_cuMemCreate, FAKE_cuMemMap, FAKE_cuMemSetAccess,
      FAKE_cuMemExportToShareableHandle};
  ASSERT_EQ(fake_drop_entry(FAKE_cuInit), 0);
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(vmm_entries); i++) {
    fake_setup(1);
    ASSERT_EQ(fake_drop_entry(vmm_entries[i]), 1);
    fake_install();
    vmep_mem_caps caps;
    probe_ok(0, &caps);
    ASSERT_EQ(caps.best, VMEP_MEM_LEGACY);
    ASSERT_STR_CONTAINS(caps.reason[VMEP_MEM_FABRIC], "lacks the VMM API");
    ASSERT_STR_CONTAINS(caps.reason[VMEP_MEM_POSIX_FD], "lacks the VMM API");
    check_reasons(&caps);
  }
}

static void test_device_range(void) {
  int devices = 1 + (int)(test_rand() % FAKE_MAX_DEVICES);
  fake_setup(devices);
  int bad[] = {-1, devices, devices + 1 + (int)(test_rand() % 1000), INT32_MIN};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad); i++) {
    vmep_mem_caps caps;
    ASSERT_STATUS(vmep_mem_probe(bad[i], &caps), VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), "does not exist");
  }
  vmep_mem_caps caps;
  probe_ok(devices - 1, &caps);
}

static void test_strategy_names(void) {
  static const char *const names[] = {"none", "fabric", "posix_fd", "legacy"};
  for (int s = 0; s < VMEP_MEM_STRATEGY_COUNT; s++)
    ASSERT_TRUE(
        strcmp(vmep_mem_strategy_name((vmep_mem_strategy)s), names[s]) == 0);
  int unknown = VMEP_MEM_STRATEGY_COUNT + (int)(test_rand() % 1000);
  ASSERT_TRUE(strcmp(vmep_mem_strategy_name((vmep_mem_strategy)unknown),
                     "unknown") == 0);
}

int main(void) {
  test_seed("test_mem_probe");
  test_two_devices();
  test_rebuilt_on_install();
  test_failure_not_cached();
  test_every_reason();
  test_driver_without_vmm();
  test_device_range();
  test_strategy_names();
  fake_uninstall();
  printf("test_mem_probe: ok\n");
  return 0;
}
