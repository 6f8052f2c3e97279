/*
 * The argument checks that the entry points of dispatch and combine (both
 * modes) share: a refusal names the call and what is wrong.
 */
#include <stdint.h>

#include "ep/ep.h"

vmep_status vmep__ep_bad_arg(const char *call, const char *what) {
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: %s", call, what);
}

vmep_status vmep__ep_null_arg(const char *call, const char *name) {
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR, "%s: %s is NULL",
                    call, name);
}

int vmep__ep_bad_ptr(const void *p, size_t align, int optional) {
  if (!p)
    return !optional;
  return ((uintptr_t)p % align) != 0;
}
