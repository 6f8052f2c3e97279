/*
 * Agreement on a collective step: every rank gives its status (and an
 * optional fixed-size report), so that a failure on one rank fails the
 * step on all of them at once instead of leaving the others waiting for a
 * rank that gave up. Window creation and EP buffer creation both end each
 * fallible step with it.
 */
#include <string.h>

#include "boot/boot.h"
#include "sym/sym.h"

/* A report travels behind its rank's status, 8-byte aligned. */
#define HEADER 8

vmep_status vmep__sym_agree(vmep_group *group, vmep_status mine,
                            const void *report, size_t bytes, void *all,
                            const char *call, const char *step) {
  int size = vmep_group_size(group);
  size_t record = HEADER + vmep__round_up(bytes, HEADER);
  unsigned char *me = vmep__calloc(1, record);
  unsigned char *gathered = vmep__calloc((size_t)size, record);
  vmep_status status = VMEP_OK;
  if (!me || !gathered)
    status = vmep__fail(VMEP_ERR_OUT_OF_MEMORY, VMEP_LOG_ERROR,
                        "%s: no memory to %s", call, step);
  if (status == VMEP_OK) {
    int32_t code = (int32_t)mine;
    memcpy(me, &code, sizeof(code));
    if (bytes)
      memcpy(me + HEADER, report, bytes);
    status = vmep_group_allgather(group, me, record, gathered);
  }
  for (int r = 0; status == VMEP_OK && r < size; r++) {
    int32_t code;
    memcpy(&code, gathered + (size_t)r * record, sizeof(code));
    if (all && bytes)
      memcpy((unsigned char *)all + (size_t)r * bytes,
             gathered + (size_t)r * record + HEADER, bytes);
    if (code != VMEP_OK && mine == VMEP_OK)
      status = vmep__fail(VMEP_ERR_PEER, VMEP_LOG_ERROR,
                          "%s: rank %d failed to %s (%s)", call, r, step,
                          vmep_status_name((vmep_status)code));
  }
  vmep__free(me);
  vmep__free(gathered);
  return mine != VMEP_OK ? mine : status;
}
