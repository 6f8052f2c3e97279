/*
 * ep: the expert-parallel layer's private header. The EP buffer, its layout
 * math, peer windows, masks and the host entry points of low-latency
 * dispatch / combine live here, each in its own section. The host
 * reference of dispatch and combine, the numerics and the checkers (the
 * test oracle) are in ep/reference.h. Plain C, no CUDA headers, so that
 * CPU tests and GPU tests (.cu, C++) can include it alike.
 */
#ifndef VMEP_EP_H
#define VMEP_EP_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "driver/driver.h"
#include "kernels/kernels.h"
#include "sym/sym.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- EP buffer: configuration and layout (config.c, layout.c) -------- */

/*
 * The reader of the public structs that grow (vmep.h): copies the caller's
 * struct `in` of type `type` (its first field the size_t struct_size) over
 * `out`, which holds the defaults in this library's layout of `full_size`
 * bytes: the caller's struct_size bytes, so fields past them keep their
 * defaults; out's struct_size becomes full_size. VMEP_ERR_INVALID_ARG,
 * with a message "<call>: <type>.struct_size = ..." (call may be NULL),
 * when `in` is NULL or its struct_size is below `min_size` (the end of the
 * type's last 0.3.0 field) or above full_size; `out` is then partly
 * written.
 */
vmep_status vmep__ep_struct_read(const char *call, const char *type,
                                 const void *in, size_t min_size,
                                 size_t full_size, void *out);

/* The caller's `config` in this library's layout: *out gets the defaults
 * of vmep_ep_config_init, then the fields within config->struct_size.
 * VMEP_ERR_INVALID_ARG as vmep__ep_struct_read; nothing else is checked. */
vmep_status vmep__ep_config_read(const vmep_ep_config *config,
                                 vmep_ep_config *out);

/* VMEP_OK when `config` is valid for a group of `num_ranks` (its
 * struct_size included); else VMEP_ERR_INVALID_ARG naming the field and
 * its accepted range. */
vmep_status vmep__ep_config_check(const vmep_ep_config *config, int num_ranks);

/* The layout of one rank's EP buffer for a valid `config` and `num_ranks`
 * (see kernels/kernels.h). Cannot fail. */
void vmep__ep_layout(const vmep_ep_config *config, int num_ranks,
                     struct vmep_ll_layout *layout_out);

/* The ranks of a buffer: config.max_ranks, or the group's size. */
int vmep__ep_ranks(const vmep_ep_config *config, int group_size);

/* ---- the buffer's device (device.c) ---------------------------------- */

/* The device of an EP buffer: its primary context, retained by
 * vmep__ep_device_open for the buffer's life. */
struct vmep_ep_device {
  const struct vmep_driver *drv;
  int device;
  CUdevice dev;
  CUcontext ctx; /* NULL when not open */
};

/* Retains `device`'s primary context into *dev_out; on failure nothing is
 * retained and *dev_out is untouched. */
vmep_status vmep__ep_device_open(int device, struct vmep_ep_device *dev_out);
/* Releases what open retained; a device not open is a no-op. */
void vmep__ep_device_close(struct vmep_ep_device *d);

/* The one device guard: makes the buffer's context current on this thread
 * (for driver calls and for the runtime's kernel launches alike) until
 * vmep__ep_device_leave, which only follows a successful enter. Checked:
 * a failure is VMEP_ERR_CUDA naming the device. */
vmep_status vmep__ep_device_enter(const struct vmep_ep_device *d);
void vmep__ep_device_leave(const struct vmep_ep_device *d);

/* Inside enter / leave: waits for all the device's work; allocates / frees
 * device memory; zeroes it; copies host -> device (put) and device -> host
 * (get). Each returns VMEP_OK or the driver's failure with a message
 * naming `call`, the driver call, the size and the device. */
vmep_status vmep__ep_device_sync(const struct vmep_ep_device *d,
                                 const char *call);
vmep_status vmep__ep_device_alloc(const struct vmep_ep_device *d, size_t bytes,
                                  void **ptr_out, const char *call);
vmep_status vmep__ep_device_free(const struct vmep_ep_device *d, void *ptr);
vmep_status vmep__ep_device_zero(const struct vmep_ep_device *d, void *ptr,
                                 size_t bytes, const char *call);
vmep_status vmep__ep_device_put(const struct vmep_ep_device *d, void *dst,
                                const void *src, size_t bytes,
                                const char *call);
vmep_status vmep__ep_device_get(const struct vmep_ep_device *d, void *dst,
                                const void *src, size_t bytes,
                                const char *call);
/* The device's multiprocessor count (needs no enter). */
vmep_status vmep__ep_device_sms(const struct vmep_ep_device *d, int *sms_out);

/* ---- the EP buffer object (ep.c, ll.c, elastic.c) -------------------- */

struct vmep_ep {
  vmep_group *group;
  vmep_window *window;
  struct vmep_ep_device dev;
  vmep_ep_config config; /* device, num_sms and timeout resolved */
  int rank, num_ranks, local_experts;
  long long timeout_ns;
  struct vmep_ll_layout layout;
  void *arena; /* private device memory: peers, state, routing scratch */
  char **peers;
  struct vmep_ll_state *state;
  int *entries, *counts, *begins, *recv_count_copy;
  unsigned int *row_map;
  uint64_t calls;          /* dispatches so far */
  uint64_t parity_call[2]; /* the dispatch that last used each parity */
  int dispatch_pending[2]; /* send launched, receive not yet */
  struct vmep_ll_dispatch_io pending_dispatch[2];
  int combine_pending[2];
  struct vmep_ll_combine_io pending_combine[2];
  /* membership (elastic.c): who is mapped here, the store session (the
   * process) of each one's member record, and our store namespace */
  struct vmep_ll_rank_set connected;
  uint64_t *session;   /* [num_ranks] */
  unsigned char *died; /* [num_ranks]: disconnected after it died, so a
                          connect waits for its successor */
  uint64_t *seen;      /* [num_ranks]: the last allgather sequence taken from
                          each rank (elastic.c) */
  uint64_t *seen_from; /* [num_ranks]: the session (process) whose
                          sequence seen[] holds */
  uint64_t barriers;   /* vmep_ep_barrier calls since the last change */
  int changed;         /* the connected set is not (or no longer) the group */
  int ns_index;        /* among this process's live buffers of one shape */
  char ns[64];
};

/* Membership setup at creation (elastic.c): publishes our member record,
 * masks every rank not connected. Over a fixed group it joins the group's
 * allgather even when `before` (the creation's status so far) is a
 * failure, and then returns that failure. */
vmep_status vmep__ep_membership_init(struct vmep_ep *ep, vmep_status before);
/* Gives the buffer's store name back (after its window is released). */
void vmep__ep_membership_leave(struct vmep_ep *ep);

/* The launch parameters of `ep` for buffer `parity`. Cannot fail. */
void vmep__ep_params(const struct vmep_ep *ep, int parity, int num_topk,
                     struct vmep_ll_params *params_out);

#ifdef __cplusplus
}
#endif

#endif /* VMEP_EP_H */
