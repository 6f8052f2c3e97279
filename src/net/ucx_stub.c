/*
 * The engine's UCX transport when vmep was built without UCX's headers
 * (libucx-dev): the engine exists, says why it cannot work, and every
 * create fails with VMEP_ERR_UNSUPPORTED. Built instead of ucx.c and
 * ucx_load.c (src/CMakeLists.txt).
 */
#include <stdio.h>

#include "net/net.h"

#define NO_UCX "vmep was built without UCX headers (install libucx-dev)"

static vmep_status stub_probe(struct vmep_engine_info *info) {
  snprintf(info->reason, sizeof(info->reason), "%s", NO_UCX);
  return VMEP_OK;
}

static vmep_status stub_create(vmep_engine *engine, int size, void **impl_out) {
  (void)engine;
  (void)size;
  (void)impl_out;
  return vmep__fail(VMEP_ERR_UNSUPPORTED, VMEP_LOG_ERROR, "%s", NO_UCX);
}

/* Only probe and create are ever called: nothing else exists without a
 * created engine. */
const struct vmep_engine_ops vmep__ucx_ops = {
    .name = "ucx",
    .probe = stub_probe,
    .create = stub_create,
};
