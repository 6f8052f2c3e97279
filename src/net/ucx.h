/*
 * UCX's entry points that the engine's UCX transport uses, resolved at
 * run time from libucp.so.0 (vmep never links UCX, so it builds and runs
 * where UCX is absent). One list, VMEP_UCX_FUNCS, gives the table's fields
 * (typed from UCX's own declarations) and the loader (ucx_load.c).
 * Private to src/net; needs UCX's headers.
 */
#ifndef VMEP_NET_UCX_H
#define VMEP_NET_UCX_H

#include <ucp/api/ucp.h>

#include "net/net.h"

/* (name, required). ucp_init is an inline wrapper of ucp_init_version;
 * ucs_status_string lives in libucs, which libucp depends on, so it is
 * found through libucp's handle. */
#define VMEP_UCX_FUNCS(X)                                                      \
  X(ucp_get_version_string, 1)                                                 \
  X(ucp_config_read, 1)                                                        \
  X(ucp_config_release, 1)                                                     \
  X(ucp_init_version, 1)                                                       \
  X(ucp_cleanup, 1)                                                            \
  X(ucp_context_query, 1)                                                      \
  X(ucp_worker_create, 1)                                                      \
  X(ucp_worker_destroy, 1)                                                     \
  X(ucp_worker_get_address, 1)                                                 \
  X(ucp_worker_release_address, 1)                                             \
  X(ucp_worker_progress, 1)                                                    \
  X(ucp_worker_fence, 1)                                                       \
  X(ucp_ep_create, 1)                                                          \
  X(ucp_ep_close_nbx, 1)                                                       \
  X(ucp_ep_flush_nbx, 1)                                                       \
  X(ucp_mem_map, 1)                                                            \
  X(ucp_mem_unmap, 1)                                                          \
  X(ucp_rkey_pack, 1)                                                          \
  X(ucp_rkey_buffer_release, 1)                                                \
  X(ucp_ep_rkey_unpack, 1)                                                     \
  X(ucp_rkey_destroy, 1)                                                       \
  X(ucp_put_nbx, 1)                                                            \
  X(ucp_atomic_op_nbx, 1)                                                      \
  X(ucp_request_check_status, 1)                                               \
  X(ucp_request_free, 1)                                                       \
  X(ucs_status_string, 1)

struct vmep_ucx {
#define VMEP_UCX_FIELD(name, required) __typeof__(&name) name;
  VMEP_UCX_FUNCS(VMEP_UCX_FIELD)
#undef VMEP_UCX_FIELD
};

/*
 * The UCX table. The first call dlopens libucp.so.0 and resolves every
 * entry; the outcome is cached. VMEP_ERR_UNSUPPORTED (naming the library
 * and dlerror, or the missing entry) with the cached message set as the
 * thread's last error, *ucx_out untouched. Thread-safe.
 */
vmep_status vmep__ucx_get(const struct vmep_ucx **ucx_out);

#endif /* VMEP_NET_UCX_H */
