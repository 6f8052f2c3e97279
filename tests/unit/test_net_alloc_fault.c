/*
 * The engine under host allocation faults (the counting allocator of
 * fake_faults.c; UCX's own allocations are not routed through it): for
 * n = 1, 2, ..., transient then persistent, the nth vmep__malloc fails
 * during create, registration, connect, key unpack and destroy of two
 * engines in one process. Every call must succeed or give
 * VMEP_ERR_OUT_OF_MEMORY, and after destroy nothing the engine allocated
 * may be left. Stops at the first trial where no fault fired.
 */
#include "fake_driver.h"
#include "test_net_util.h"

#define BUF_BYTES 4096

/* One trial: every step it reaches; VMEP_OK or the first failure. */
static vmep_status trial(unsigned char *buf) {
  struct vmep_engine_params pa = {.rank = 0, .size = 2, .timeout_ms = 1000};
  struct vmep_engine_params pb = {.rank = 1, .size = 2, .timeout_ms = 1000};
  vmep_engine *a = NULL, *b = NULL;
  vmep_engine_mr *mr = NULL;
  vmep_engine_rkey *key = NULL;
  const void *address = NULL, *key_blob = NULL;
  size_t len = 0, key_len = 0;
  vmep_status st = vmep__engine_create(&pa, &a);
  if (st == VMEP_OK)
    st = vmep__engine_create(&pb, &b);
  if (st == VMEP_OK)
    st = vmep__engine_mem_reg(b, buf, BUF_BYTES, 0, &mr);
  if (st == VMEP_OK)
    st = vmep__engine_address(b, &address, &len);
  if (st == VMEP_OK)
    st = vmep__engine_connect(a, 1, address, len);
  if (st == VMEP_OK) {
    key_blob = vmep__engine_mr_blob(mr, &key_len);
    st = vmep__engine_rkey_unpack(a, 1, key_blob, key_len, &key);
  }
  if (st != VMEP_OK && st != VMEP_ERR_OUT_OF_MEMORY)
    TEST_FAIL("%s (%s), expected VMEP_OK or VMEP_ERR_OUT_OF_MEMORY",
              vmep_status_name(st), vmep_last_error());
  /* Destroy releases what is still held (mr, key) itself. */
  vmep__engine_destroy(b);
  vmep__engine_destroy(a);
  return st;
}

int main(void) {
  /* Engine a's endpoint outlives engine b in every trial: UCX's "connection
   * refused" errors are expected, so they are kept off stderr. */
  setenv("UCX_LOG_LEVEL", "fatal", 0);
  net_test_env();
  static unsigned char buf[BUF_BYTES];
  fake_alloc_install();
  ASSERT_OK(trial(buf));
  ASSERT_EQ(fake_alloc_live(), 0);
  for (int persistent = 0; persistent <= 1; persistent++) {
    int n = 1;
    for (;; n++) {
      int fired_before = fake_alloc_fired();
      fake_alloc_fail(n, persistent);
      vmep_status st = trial(buf);
      fake_alloc_fail(0, 0);
      int fired = fake_alloc_fired() - fired_before;
      if (fake_alloc_live() != 0)
        TEST_FAIL("%s fault at allocation %d: %ld allocations left",
                  persistent ? "persistent" : "transient", n,
                  fake_alloc_live());
      if (!fired) {
        ASSERT_OK(st);
        break;
      }
    }
    printf("%s faults: %d allocation sites, nothing left after any\n",
           persistent ? "persistent" : "transient", n - 1);
  }
  printf("test_net_alloc_fault: ok\n");
  return 0;
}
