/*
 * The fake CUDA driver for CPU tests: a struct vmep_driver whose entries
 * simulate N devices (VMM, POSIX-fd and fabric handles, legacy IPC), check
 * their arguments the way the real driver does where it matters, count
 * every call and every live object, and fail any call on request. Tests
 * install it with fake_install() to prove each fallback and error path of
 * the library and that nothing leaks (after SQLite's test_vfs.c idea).
 *
 * Threads: every entry and every function below runs under one recursive
 * lock, so library threads (two ranks of one process, a store's thread)
 * may call the fake at once. Current contexts are per thread, as in the
 * driver; objects, live counts, call counts and the records are global.
 * Fault plans (fake_fail, fake_fail_any, fake_alloc_fail) belong to the
 * thread that armed them: only that thread's calls count them down and
 * fail, while every thread's calls count in fake_calls. Set the machine up
 * (fake_reset, fake_device, fake_install) while no other thread uses it.
 */
#ifndef VMEP_FAKE_DRIVER_H
#define VMEP_FAKE_DRIVER_H

#include "driver/driver.h"

/* One id per entry of VMEP_DRIVER_FUNCS: FAKE_cuMemCreate, ... */
enum fake_entry {
#define FAKE_ENTRY_ID(name, version, required) FAKE_##name,
  VMEP_DRIVER_FUNCS(FAKE_ENTRY_ID)
#undef FAKE_ENTRY_ID
      FAKE_ENTRY_COUNT
};

#define FAKE_MAX_DEVICES 8
#define FAKE_MIB ((size_t)1 << 20)

/* A simulated device. fake_reset fills the defaults; a test edits them
 * through fake_device() and then calls fake_install(). */
struct fake_device {
  char name[64];
  unsigned char uuid[16];
  int cc_major, cc_minor;
  int vmm;           /* VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED */
  int posix_fd;      /* HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED */
  int fabric_attr;   /* HANDLE_TYPE_FABRIC_SUPPORTED */
  int rdma_with_vmm; /* GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED */
  int dma_buf;       /* DMA_BUF_SUPPORTED */
  /* What cuMemCreate requesting FABRIC returns when fabric_attr is 1:
   * CUDA_SUCCESS, or CUDA_ERROR_NOT_PERMITTED as on an H100 without an
   * IMEX channel. */
  CUresult fabric_create;
  size_t granularity;
  size_t total_bytes;
};

/* ---- the simulated machine (fake_driver.c) ---------------------------- */

/*
 * Restores a clean machine of `devices` devices (1..FAKE_MAX_DEVICES) with
 * defaults: an H100-like device with VMM, POSIX fd, fabric and RDMA
 * support, 2 MiB granularity, 80 GiB; driver version 13000. Clears every
 * object, counter, fault plan, exemption and record, the calling thread's
 * current contexts, and puts dropped entries back. Does not install, nor
 * touch the host allocator.
 */
void fake_reset(int devices);

/* Device `ordinal`'s configuration, to edit before fake_install(). */
struct fake_device *fake_device(int ordinal);

/* What cuDriverGetVersion reports. */
void fake_set_driver_version(int version);

/* Makes the library use the fake (vmep__driver_install), which also makes
 * it rebuild its per-device probe. */
void fake_install(void);

/* fake_reset(devices) and fake_install(), with VMEP_MEM_SHARE unset so the
 * caller's environment does not steer the library: the usual start of a
 * test case. */
void fake_setup(int devices);

/* Makes the library use the real driver again and restores the C
 * library's allocator. */
void fake_uninstall(void);

/* Removes an optional entry (required == 0 in VMEP_DRIVER_FUNCS) from the
 * table, like an old driver without it; returns 0 for a required one. */
int fake_drop_entry(enum fake_entry entry);

/* The fake's table, as the library sees it once installed. */
const struct vmep_driver *fake_driver(void);

/* ---- what the library left behind (fake_driver.c) --------------------- */

struct fake_live {
  int handles;      /* cuMemCreate + import - cuMemRelease */
  int reservations; /* cuMemAddressReserve - cuMemAddressFree */
  int mappings;     /* cuMemMap - cuMemUnmap */
  int allocs;       /* cuMemAlloc - cuMemFree */
  int ipc_opened;   /* cuIpcOpenMemHandle - cuIpcCloseMemHandle */
  int ctx_retains;  /* primary context retains - releases */
  int ctx_pushes;   /* cuCtxPushCurrent - cuCtxPopCurrent, all threads */
  int host_allocs;  /* cuMemHostAlloc - cuMemFreeHost */
};

struct fake_live fake_live(void);

/* NULL when every live count is 0; else a text naming the non-zero ones,
 * e.g. "1 handles, 1 ctx_retains" (static storage). */
const char *fake_leaks(void);

/* For tests (test.h): fails, naming them, when objects are still live. */
#define ASSERT_NO_LEAKS()                                                      \
  do {                                                                         \
    const char *leaks_ = fake_leaks();                                         \
    if (leaks_)                                                                \
      TEST_FAIL("still live in the fake driver: %s", leaks_);                  \
  } while (0)

/* Device memory in use on `device`: cuMemCreate'd handles and cuMemAlloc
 * blocks still live (imported handles use none). */
size_t fake_mem_used(int device);

/* The successful undo calls (cuCtxSynchronize, cuMemUnmap,
 * cuMemAddressFree, cuMemRelease, cuMemFree, cuIpcCloseMemHandle) in call
 * order since the last fake_release_log_clear; returns their number. */
int fake_release_log(const enum fake_entry **log_out);
void fake_release_log_clear(void);

/* NULL when the release log is exactly want[0..count); else a text saying
 * where it differs (static storage). */
const char *fake_release_log_diff(const enum fake_entry *want, int count);

/* The prop of the last cuMemCreate call that got past fault injection;
 * NULL when there was none. */
const CUmemAllocationProp *fake_last_prop(void);

/* The mask of devices with read/write access to the live mapping that
 * starts at `va` (bit d for device d); 0 when none is mapped there. */
unsigned fake_mapping_access(CUdeviceptr va);

/* The descriptors of the last successful cuMemSetAccess. */
struct fake_access {
  int count;
  CUmemAccessDesc desc[FAKE_MAX_DEVICES];
};
const struct fake_access *fake_last_access(void);

/* ---- calls and fault plans (fake_faults.c) ---------------------------- */

/* "cuMemCreate" for FAKE_cuMemCreate. */
const char *fake_entry_name(enum fake_entry entry);

/* Calls of `entry` since the last fake_reset, from every thread. */
unsigned long fake_calls(enum fake_entry entry);

/*
 * Fails the nth call (1 = the next one) of `entry` from now, made by the
 * calling thread, with `result`: that call only (persistent 0), or that
 * one and every later one of this thread. Other threads' calls neither
 * count nor fail. Replaces the entry's previous plan; nth <= 0 disarms it.
 */
void fake_fail(enum fake_entry entry, int nth, CUresult result, int persistent);

/* Like fake_fail, counting the calling thread's calls of every entry that
 * is not exempt. */
void fake_fail_any(int nth, CUresult result, int persistent);

/* Whether fake_fail_any skips (does not count or fail) `entry`. */
void fake_fault_exempt(enum fake_entry entry, int exempt);

/* Exempts the undo calls (cuMemUnmap, cuMemAddressFree, cuMemRelease,
 * cuMemFree, cuIpcCloseMemHandle, cuCtxPopCurrent,
 * cuDevicePrimaryCtxRelease): fault loops treat them as unable to fail, as
 * SQLite's loop treats free(), since when one fails the resource is lost
 * whatever the library does. */
void fake_exempt_undo(void);

/* Whether `text` names an entry at which a fault fired since the last
 * fake_reset: a failure message must name the call that failed. */
int fake_names_fired(const char *text);

/* Disarms every plan, the host allocation plan included; counters and
 * exemptions stay. */
void fake_faults_clear(void);

/* Driver faults fired since the last fake_reset: in all, and in `entry`. */
int fake_faults_fired(void);
int fake_faults_fired_at(enum fake_entry entry);

/* Called whenever a fault fires, host allocation faults included: a place
 * for a breakpoint. */
void fake_fault_hit(void);

/* ---- host allocations (fake_faults.c) --------------------------------- */

/* Routes the library's host allocations through a counting allocator and
 * zeroes its counts and plan. fake_uninstall removes it. */
void fake_alloc_install(void);

/* Fails the nth host allocation from now made by the calling thread
 * (transient or persistent); nth <= 0 disarms. Allocations of every thread
 * count in fake_alloc_live. */
void fake_alloc_fail(int nth, int persistent);

/* Allocations not yet freed, and allocation faults fired, since
 * fake_alloc_install. */
long fake_alloc_live(void);
int fake_alloc_fired(void);

/* ---- the process (fake_faults.c) -------------------------------------- */

/* Open file descriptors of this process (counted in /proc/self/fd). */
int fake_open_fds(void);

/*
 * quiet 1: sends fd 2, where the library logs, to /dev/null, so that tests
 * which fail the library thousands of times do not flood the log
 * (VMEP_TEST_VERBOSE=1 keeps it); the C stream stderr (test failures) and
 * sanitizer reports still reach the real stderr, through a duplicate that
 * stays open from the first call on. quiet 0 restores fd 2.
 */
void fake_quiet_stderr(int quiet);

#endif /* VMEP_FAKE_DRIVER_H */
