/*
 * The fault loop (after SQLite's do_faultsim_test): for each strategy,
 * run alloc -> export -> import -> mapping release -> region free with
 * the nth driver call failing (once, then from there on), for n = 1, 2, ...
 * until a run fires no fault. Each run must succeed or fail with the status
 * the CUresult maps to and a message naming a failed call; once what it
 * returned is freed, nothing may be live in the fake and no fd open. Then
 * the same over host allocations.
 */
#include "fake_driver.h"
#include "test.h"

/* What each injected CUresult must become (docs/MEMORY.md). */
static const struct {
  CUresult result;
  const char *name;
  vmep_status status;
} injected[] = {{CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", VMEP_ERR_CUDA},
                {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY",
                 VMEP_ERR_OUT_OF_MEMORY},
                {CUDA_ERROR_NOT_PERMITTED, "CUDA_ERROR_NOT_PERMITTED",
                 VMEP_ERR_UNSUPPORTED}};

static const char *const step_names[] = {"alloc", "export", "import",
                                         "mapping release", "region free"};

struct outcome {
  vmep_status status;
  int step; /* the step that failed (or the last one) */
  char error[512];
};

static size_t region_bytes;
static int trials;

/* A fresh machine, re-probed, with the undo calls exempt. */
static void fresh_machine(void) {
  fake_setup(1);
  fake_exempt_undo();
}

/* Runs the sequence under the armed plan, stopping at the first failing
 * step; then, with faults off, frees whatever it still holds. */
static struct outcome run_sequence(unsigned flags) {
  struct outcome out = {VMEP_OK, 0, ""};
  vmep_region *r = NULL;
  vmep_mapping *m = NULL;
  vmep_mem_desc d;
  out.status = vmep_region_alloc(0, region_bytes, flags, &r);
  if (out.status == VMEP_OK && ++out.step)
    out.status = vmep_region_export(r, &d);
  if (out.status == VMEP_OK && ++out.step)
    out.status = vmep_region_import(0, &d, &m);
  /* cuIpcCloseMemHandle needs the context current: an opened LEGACY
   * handle whose context cannot be pushed cannot be closed at all (the
   * VMM calls and cuMemFree need none). */
  if (out.status == VMEP_OK && ++out.step) {
    int legacy = vmep_region_strategy(r) == VMEP_MEM_LEGACY;
    fake_fault_exempt(FAKE_cuCtxPushCurrent, legacy);
    out.status = vmep_mapping_release(m);
    fake_fault_exempt(FAKE_cuCtxPushCurrent, 0);
    m = NULL;
  }
  if (out.status == VMEP_OK && ++out.step) {
    out.status = vmep_region_free(r);
    r = NULL;
  }
  snprintf(out.error, sizeof(out.error), "%s", vmep_last_error());
  if (out.status != VMEP_OK && out.step == 0)
    ASSERT_TRUE(r == NULL);
  if (out.status != VMEP_OK && out.step == 2)
    ASSERT_TRUE(m == NULL);
  fake_faults_clear();
  ASSERT_OK(vmep_mapping_release(m));
  ASSERT_OK(vmep_region_free(r));
  return out;
}

/* After a run: nothing live, no fd left open. */
static void check_clean(const char *what, int n, int fds) {
  const char *leaks = fake_leaks();
  if (leaks)
    TEST_FAIL("%s, n = %d: still live: %s", what, n, leaks);
  if (fake_open_fds() != fds)
    TEST_FAIL("%s, n = %d: %d fds open, %d before", what, n, fake_open_fds(),
              fds);
  if (fake_alloc_live() != 0)
    TEST_FAIL("%s, n = %d: %ld host allocations not freed", what, n,
              fake_alloc_live());
}

/* The strategies allowed (0: the whole chain), one CUresult, transient or
 * persistent; returns the number of fault points. */
static int driver_loop(unsigned flags, int k, int persistent, int fds) {
  char what[128];
  snprintf(what, sizeof(what), "flags 0x%x, %s, %s", flags, injected[k].name,
           persistent ? "persistent" : "transient");
  int n = 1;
  for (;; n++) {
    fresh_machine();
    fake_fail_any(n, injected[k].result, persistent);
    struct outcome out = run_sequence(flags);
    trials++;
    if (fake_faults_fired() == 0) {
      if (out.status != VMEP_OK)
        TEST_FAIL("%s: no fault, yet %s failed: %s (%s)", what,
                  step_names[out.step], vmep_status_name(out.status),
                  out.error);
      break;
    }
    if (out.status != VMEP_OK && out.status != injected[k].status)
      TEST_FAIL("%s, n = %d: %s returned %s, expected %s (%s)", what, n,
                step_names[out.step], vmep_status_name(out.status),
                vmep_status_name(injected[k].status), out.error);
    if (out.status != VMEP_OK && !fake_names_fired(out.error))
      TEST_FAIL("%s, n = %d: %s failed with a message naming no failed "
                "call: %s",
                what, n, step_names[out.step], out.error);
    check_clean(what, n, fds);
  }
  return n - 1;
}

static int host_loop(unsigned flags, int persistent, int fds) {
  int n = 1;
  for (;; n++) {
    fresh_machine();
    fake_alloc_install();
    fake_alloc_fail(n, persistent);
    struct outcome out = run_sequence(flags);
    trials++;
    if (fake_alloc_fired() == 0) {
      ASSERT_OK(out.status);
      break;
    }
    if (out.status != VMEP_OK) {
      ASSERT_EQ(out.status, VMEP_ERR_OUT_OF_MEMORY);
      ASSERT_STR_CONTAINS(out.error, "host allocation");
    }
    check_clean("host allocation", n, fds);
  }
  fake_uninstall();
  return n - 1;
}

int main(void) {
  test_seed("test_region_fault");
  region_bytes = 1 + test_rand() % (64u << 20);
  fake_quiet_stderr(1); /* thousands of expected failures get logged */
  int fds = fake_open_fds();
  /* The whole chain, then each strategy forced. */
  for (int s = 0; s < VMEP_MEM_STRATEGY_COUNT; s++) {
    unsigned flags = s ? 1u << s : 0;
    for (int persistent = 0; persistent <= 1; persistent++) {
      for (size_t k = 0; k < VMEP_ARRAY_SIZE(injected); k++) {
        int points = driver_loop(flags, (int)k, persistent, fds);
        ASSERT_TRUE(points > 20);
      }
      int points = host_loop(flags, persistent, fds);
      ASSERT_TRUE(points >= 2);
    }
  }
  fake_quiet_stderr(0);
  fake_uninstall();
  printf("test_region_fault: %d trials, every one clean\n", trials);
  return 0;
}
