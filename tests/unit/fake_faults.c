/*
 * Calls and faults of the fake driver (after SQLite's test_malloc.c and
 * test_vfs.c): a counter and a fault plan per entry, generated from
 * VMEP_DRIVER_FUNCS, a plan over all entries, a counting host allocator
 * with its own plan, and the process-level views tests need (open fds, a
 * quiet stderr). Also cuGetErrorName, with the driver's real names.
 * A plan belongs to the thread that armed it: only that thread's calls
 * count it down and fail, so that a test can fail one rank's calls while
 * another thread runs a peer rank.
 */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake_machine.h"

#if defined(__SANITIZE_ADDRESS__)
#define FAKE_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FAKE_SANITIZED 1
#endif
#endif
#ifdef FAKE_SANITIZED
#include <sanitizer/common_interface_defs.h>
#endif

/* Fails call number `countdown` (counting down to 1) of thread `owner`
 * with `result`; a persistent plan then keeps failing (`firing`).
 * countdown 0: disarmed. */
struct fault_plan {
  int countdown;
  int persistent;
  int firing;
  CUresult result;
  pthread_t owner;
};

static unsigned long calls[FAKE_ENTRY_COUNT];
static struct fault_plan entry_plan[FAKE_ENTRY_COUNT];
static struct fault_plan any_plan;
static struct fault_plan alloc_plan; /* host allocations */
static int exempt[FAKE_ENTRY_COUNT];
static int fired;
static int fired_at[FAKE_ENTRY_COUNT];

static const char *const entry_names[FAKE_ENTRY_COUNT] = {
#define FAKE_ENTRY_NAME(name, version, required) #name,
    VMEP_DRIVER_FUNCS(FAKE_ENTRY_NAME)
#undef FAKE_ENTRY_NAME
};

/* ---- fault plans ------------------------------------------------------ */

__attribute__((noinline)) void fake_fault_hit(void) {
  /* Keeps the compiler from dropping calls to an empty function. */
  __asm__ volatile("");
}

static void arm(struct fault_plan *p, int nth, CUresult result,
                int persistent) {
  p->countdown = nth > 0 ? nth : 0;
  p->persistent = persistent;
  p->firing = 0;
  p->result = result;
  p->owner = pthread_self();
}

/* Whether the plan fails this call (of the calling thread). */
static int plan_fires(struct fault_plan *p) {
  if ((!p->firing && p->countdown == 0) ||
      !pthread_equal(p->owner, pthread_self()))
    return 0;
  if (p->firing)
    return 1;
  if (p->countdown == 0 || --p->countdown > 0)
    return 0;
  p->firing = p->persistent;
  return 1;
}

CUresult fake__enter(enum fake_entry entry) {
  struct fault_plan *plan = NULL;
  calls[entry]++;
  if (plan_fires(&entry_plan[entry]))
    plan = &entry_plan[entry];
  else if (!exempt[entry] && plan_fires(&any_plan))
    plan = &any_plan;
  if (!plan)
    return CUDA_SUCCESS;
  fired++;
  fired_at[entry]++;
  fake_fault_hit();
  return plan->result;
}

void fake__faults_reset(void) {
  FAKE_LOCK_SCOPE();
  memset(calls, 0, sizeof(calls));
  memset(entry_plan, 0, sizeof(entry_plan));
  memset(&any_plan, 0, sizeof(any_plan));
  memset(exempt, 0, sizeof(exempt));
  fired = 0;
  memset(fired_at, 0, sizeof(fired_at));
}

const char *fake_entry_name(enum fake_entry entry) {
  return entry >= 0 && entry < FAKE_ENTRY_COUNT ? entry_names[entry] : "?";
}

unsigned long fake_calls(enum fake_entry entry) {
  FAKE_LOCK_SCOPE();
  return calls[entry];
}

void fake_fail(enum fake_entry entry, int nth, CUresult result,
               int persistent) {
  FAKE_LOCK_SCOPE();
  arm(&entry_plan[entry], nth, result, persistent);
}

void fake_fail_any(int nth, CUresult result, int persistent) {
  FAKE_LOCK_SCOPE();
  arm(&any_plan, nth, result, persistent);
}

void fake_fault_exempt(enum fake_entry entry, int is_exempt) {
  FAKE_LOCK_SCOPE();
  exempt[entry] = is_exempt;
}

void fake_exempt_undo(void) {
  static const enum fake_entry undo[] = {FAKE_cuMemUnmap,
                                         FAKE_cuMemAddressFree,
                                         FAKE_cuMemRelease,
                                         FAKE_cuMemFree,
                                         FAKE_cuIpcCloseMemHandle,
                                         FAKE_cuCtxPopCurrent,
                                         FAKE_cuDevicePrimaryCtxRelease};
  for (size_t i = 0; i < sizeof(undo) / sizeof(undo[0]); i++)
    fake_fault_exempt(undo[i], 1);
}

int fake_names_fired(const char *text) {
  FAKE_LOCK_SCOPE();
  for (int e = 0; e < FAKE_ENTRY_COUNT; e++)
    if (fired_at[e] && strstr(text, entry_names[e]))
      return 1;
  return 0;
}

void fake_faults_clear(void) {
  FAKE_LOCK_SCOPE();
  memset(entry_plan, 0, sizeof(entry_plan));
  memset(&any_plan, 0, sizeof(any_plan));
  memset(&alloc_plan, 0, sizeof(alloc_plan));
}

int fake_faults_fired(void) {
  FAKE_LOCK_SCOPE();
  return fired;
}

int fake_faults_fired_at(enum fake_entry entry) {
  FAKE_LOCK_SCOPE();
  return fired_at[entry];
}

/* ---- cuGetErrorName --------------------------------------------------- */

#define FAKE_CU_ERRORS(X)                                                      \
  X(CUDA_SUCCESS)                                                              \
  X(CUDA_ERROR_INVALID_VALUE)                                                  \
  X(CUDA_ERROR_OUT_OF_MEMORY)                                                  \
  X(CUDA_ERROR_NOT_INITIALIZED)                                                \
  X(CUDA_ERROR_DEINITIALIZED)                                                  \
  X(CUDA_ERROR_STUB_LIBRARY)                                                   \
  X(CUDA_ERROR_DEVICE_UNAVAILABLE)                                             \
  X(CUDA_ERROR_NO_DEVICE)                                                      \
  X(CUDA_ERROR_INVALID_DEVICE)                                                 \
  X(CUDA_ERROR_INVALID_CONTEXT)                                                \
  X(CUDA_ERROR_MAP_FAILED)                                                     \
  X(CUDA_ERROR_UNMAP_FAILED)                                                   \
  X(CUDA_ERROR_ALREADY_MAPPED)                                                 \
  X(CUDA_ERROR_NOT_MAPPED)                                                     \
  X(CUDA_ERROR_ECC_UNCORRECTABLE)                                              \
  X(CUDA_ERROR_OPERATING_SYSTEM)                                               \
  X(CUDA_ERROR_INVALID_HANDLE)                                                 \
  X(CUDA_ERROR_ILLEGAL_STATE)                                                  \
  X(CUDA_ERROR_NOT_FOUND)                                                      \
  X(CUDA_ERROR_NOT_READY)                                                      \
  X(CUDA_ERROR_ILLEGAL_ADDRESS)                                                \
  X(CUDA_ERROR_LAUNCH_FAILED)                                                  \
  X(CUDA_ERROR_CONTEXT_IS_DESTROYED)                                           \
  X(CUDA_ERROR_NOT_PERMITTED)                                                  \
  X(CUDA_ERROR_NOT_SUPPORTED)                                                  \
  X(CUDA_ERROR_SYSTEM_NOT_READY)                                               \
  X(CUDA_ERROR_SYSTEM_DRIVER_MISMATCH)                                         \
  X(CUDA_ERROR_MPS_CONNECTION_FAILED)                                          \
  X(CUDA_ERROR_TIMEOUT)                                                        \
  X(CUDA_ERROR_UNKNOWN)

CUresult fake_cuGetErrorName(CUresult error, const char **name) {
  FAKE_ENTER(FAKE_cuGetErrorName);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (!name)
    return CUDA_ERROR_INVALID_VALUE;
  switch (error) {
#define FAKE_CU_ERROR_NAME(code)                                               \
  case code:                                                                   \
    *name = #code;                                                             \
    return CUDA_SUCCESS;
    FAKE_CU_ERRORS(FAKE_CU_ERROR_NAME)
#undef FAKE_CU_ERROR_NAME
  default:
    *name = NULL;
    return CUDA_ERROR_INVALID_VALUE;
  }
}

/* ---- host allocations ------------------------------------------------- */

static long alloc_live;
static int alloc_fired;

static void *counting_malloc(size_t bytes) {
  FAKE_LOCK_SCOPE();
  if (plan_fires(&alloc_plan)) {
    alloc_fired++;
    fake_fault_hit();
    return NULL;
  }
  void *ptr = malloc(bytes);
  if (ptr)
    alloc_live++;
  return ptr;
}

static void counting_free(void *ptr) {
  FAKE_LOCK_SCOPE();
  alloc_live--;
  free(ptr);
}

void fake_alloc_install(void) {
  static const struct vmep_allocator counting = {counting_malloc,
                                                 counting_free};
  FAKE_LOCK_SCOPE();
  memset(&alloc_plan, 0, sizeof(alloc_plan));
  alloc_live = 0;
  alloc_fired = 0;
  vmep__allocator_install(&counting);
}

void fake_alloc_fail(int nth, int persistent) {
  FAKE_LOCK_SCOPE();
  arm(&alloc_plan, nth, CUDA_ERROR_OUT_OF_MEMORY, persistent);
}

long fake_alloc_live(void) {
  FAKE_LOCK_SCOPE();
  return alloc_live;
}

int fake_alloc_fired(void) {
  FAKE_LOCK_SCOPE();
  return alloc_fired;
}

/* ---- the process ------------------------------------------------------ */

int fake_open_fds(void) {
  int count = 0;
  DIR *dir = opendir("/proc/self/fd");
  if (!dir)
    return -1;
  while (readdir(dir))
    count++;
  closedir(dir);
  /* ".", ".." and the directory's own fd. */
  return count - 3;
}

void fake_quiet_stderr(int quiet) {
  static int saved = -1;
  static FILE *real_stderr, *libc_stderr;
  const char *verbose = getenv("VMEP_TEST_VERBOSE");
  if (verbose && verbose[0] == '1')
    return;
  if (saved < 0) {
    saved = dup(STDERR_FILENO);
    real_stderr = saved >= 0 ? fdopen(saved, "w") : NULL;
    if (!real_stderr)
      return;
    setvbuf(real_stderr, NULL, _IONBF, 0);
    libc_stderr = stderr;
#ifdef FAKE_SANITIZED
    __sanitizer_set_report_fd((void *)(intptr_t)saved);
#endif
  }
  if (quiet) {
    int null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null_fd >= 0) {
      dup2(null_fd, STDERR_FILENO);
      close(null_fd);
    }
    /* The test's own failure reports (fprintf(stderr)) still show. */
    stderr = real_stderr;
  } else {
    dup2(saved, STDERR_FILENO);
    stderr = libc_stderr;
  }
}
