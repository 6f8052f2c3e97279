/*
 * Internals shared by the fake driver's files (fake_driver.c: devices,
 * contexts and the lock; fake_mem.c: memory entries; fake_faults.c:
 * counters and fault plans). Tests include fake_driver.h, not this.
 */
#ifndef VMEP_FAKE_MACHINE_H
#define VMEP_FAKE_MACHINE_H

#include "fake_driver.h"

/* Objects of one kind a test may hold at once; more is an error. */
#define FAKE_MAX_OBJECTS 1024
#define FAKE_CTX_DEPTH 16
#define FAKE_LOG_MAX 64

/* A handle (cuMemCreate / import) or an address range (reservation,
 * mapping, cuMemAlloc block, opened IPC handle). Never reused, so a stale
 * handle or address stays invalid. */
struct fake_object {
  int live;
  int device;
  size_t size;
  CUdeviceptr va;  /* ranges */
  int ref;         /* mapping: its handle; opened IPC: the block;
                      imported handle: the exported handle */
  unsigned types;  /* handles: requested CUmemAllocationHandleType bits */
  int uses_memory; /* created handles and blocks count in fake_mem_used */
  unsigned access; /* mappings: devices with read/write access */
};

struct fake_table {
  int count;
  struct fake_object obj[FAKE_MAX_OBJECTS];
};

struct fake_machine {
  int device_count;
  int driver_version;
  struct fake_device dev[FAKE_MAX_DEVICES];
  int ctx_retains[FAKE_MAX_DEVICES];
  int ctx_pushes;  /* pushed and not popped, over all threads */
  int host_allocs; /* cuMemHostAlloc - cuMemFreeHost */
  CUdeviceptr next_va;
  struct fake_table handles, reservations, mappings, blocks, ipc;
  enum fake_entry log[FAKE_LOG_MAX];
  int log_count;
  CUmemAllocationProp last_prop;
  int has_prop;
  struct fake_access last_access;
};

extern struct fake_machine fake__m;

/* Each thread's stack of current contexts (the device of each pushed
 * context), as the real driver keeps one per thread. */
extern _Thread_local int fake__ctx_stack[FAKE_CTX_DEPTH];
extern _Thread_local int fake__ctx_depth;

/*
 * One recursive lock guards the whole fake (machine, counters, plans, host
 * allocation counts), so that library threads may call it at once:
 * FAKE_LOCK_SCOPE() takes it until the end of the enclosing block, on
 * every path out of it (GCC's cleanup attribute).
 */
int fake__lock(void);               /* takes the lock; returns 1 */
void fake__unlock(const int *held); /* gives it back when *held */
#define FAKE_LOCK_SCOPE()                                                      \
  const int fake_held_ __attribute__((cleanup(fake__unlock), unused)) =        \
      fake__lock()

/* Declares fake_cuMemCreate etc. with exactly the table's types. */
#define FAKE_DECLARE(name, version, required)                                  \
  __typeof__(*(PFN_##name##_v##version)0) fake_##name;
VMEP_DRIVER_FUNCS(FAKE_DECLARE)
#undef FAKE_DECLARE

/* Counts the call and returns the CUresult a fault plan asks for, or
 * CUDA_SUCCESS to go on. Called with the lock held. */
CUresult fake__enter(enum fake_entry entry);

/* Every entry starts with this: takes the lock for the entry's whole body
 * and declares `rc`, the result of fake__enter. */
#define FAKE_ENTER(entry)                                                      \
  FAKE_LOCK_SCOPE();                                                           \
  CUresult rc = fake__enter(entry)

/* Clears counters and plans (fake_reset). */
void fake__faults_reset(void);

/* Adds an object to `table` (its index, or -1 when full). */
int fake__add(struct fake_table *table);

/* The live object of `t` whose range starts at `va`, or NULL. */
struct fake_object *fake__at(struct fake_table *t, CUdeviceptr va);

/* Appends a successful undo call to the release log. */
void fake__log_release(enum fake_entry entry);

/* The device of the current context, or -1 when none is current. */
int fake__current_device(void);

/* A device ordinal from a CUdevice, or -1 when it is not one. */
int fake__ordinal(CUdevice dev);

#endif /* VMEP_FAKE_MACHINE_H */
