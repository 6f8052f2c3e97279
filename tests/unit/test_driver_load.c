/*
 * The library on a machine without a CUDA driver (CI): every entry point
 * that needs the driver answers VMEP_ERR_UNSUPPORTED with a message naming
 * libcuda.so.1, every time (the load is cached with its message), and a
 * fake table installed and removed again does not hide that. Skips where a
 * driver is installed: the GPU tests cover that case.
 */
#include <dlfcn.h>

#include "fake_driver.h"
#include "test.h"

static void test_null_outputs(void) {
  ASSERT_STATUS(vmep_device_count(NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "count_out is NULL");
  ASSERT_STATUS(vmep_driver_version(NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "version_out is NULL");
  ASSERT_STATUS(vmep_mem_probe(0, NULL), VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "caps_out is NULL");
  ASSERT_STATUS(vmep_region_alloc(0, 1 + test_rand() % 4096, 0, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "region_out is NULL");
}

/* Every driver-backed entry point fails the same way; outputs untouched. */
static void expect_no_driver(void) {
  int sentinel = (int)(test_rand() % 1000) + 1;
  int count = sentinel, version = sentinel;
  vmep_mem_caps caps, untouched;
  vmep_region *region = (vmep_region *)&sentinel;
  memset(&caps, 0x5a, sizeof(caps));
  untouched = caps;

  ASSERT_STATUS(vmep_device_count(&count), VMEP_ERR_UNSUPPORTED);
  ASSERT_STR_CONTAINS(vmep_last_error(), "libcuda.so.1");
  ASSERT_EQ(count, sentinel);
  /* An unrelated failure replaces the message... */
  ASSERT_STATUS(vmep_config_row(-1, NULL, NULL, NULL, NULL),
                VMEP_ERR_INVALID_ARG);
  /* ...and the cached load failure brings it back. */
  ASSERT_STATUS(vmep_driver_version(&version), VMEP_ERR_UNSUPPORTED);
  ASSERT_STR_CONTAINS(vmep_last_error(), "libcuda.so.1");
  ASSERT_EQ(version, sentinel);
  ASSERT_STATUS(vmep_mem_probe((int)(test_rand() % 8), &caps),
                VMEP_ERR_UNSUPPORTED);
  ASSERT_STR_CONTAINS(vmep_last_error(), "libcuda.so.1");
  ASSERT_TRUE(memcmp(&caps, &untouched, sizeof(caps)) == 0);
  ASSERT_STATUS(vmep_region_alloc((int)(test_rand() % 8),
                                  1 + test_rand() % (1u << 30), 0, &region),
                VMEP_ERR_UNSUPPORTED);
  ASSERT_STR_CONTAINS(vmep_last_error(), "libcuda.so.1");
  ASSERT_TRUE(region == (vmep_region *)&sentinel);
}

/* A fake table takes over and gives the machine back when removed. */
static void test_fake_then_no_driver(void) {
  int devices = 1 + (int)(test_rand() % FAKE_MAX_DEVICES);
  int version = 12000 + (int)(test_rand() % 2000);
  int count = 0, seen_version = 0;
  fake_reset(devices);
  fake_set_driver_version(version);
  fake_install();
  ASSERT_OK(vmep_device_count(&count));
  ASSERT_EQ(count, devices);
  ASSERT_OK(vmep_driver_version(&seen_version));
  ASSERT_EQ(seen_version, version);
  fake_uninstall();
  expect_no_driver();
}

int main(void) {
  test_seed("test_driver_load");
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib) {
    dlclose(lib);
    TEST_SKIP("libcuda.so.1 is installed here; this test is for machines "
              "without a CUDA driver (the gpu tests cover the rest)");
  }
  test_null_outputs();
  expect_no_driver();
  test_fake_then_no_driver();
  printf("test_driver_load: ok\n");
  return 0;
}
