/*
 * Status names and texts (generated from VMEP_STATUS_MAP) and the
 * thread-local last-error message written at the first detection site.
 * Errors are returned, not printed: the message reaches stderr only when
 * VMEP_LOG is info or debug.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/core.h"

#define VMEP_LAST_ERROR_BYTES 512

static _Thread_local char last_error[VMEP_LAST_ERROR_BYTES];

const char *vmep_status_name(vmep_status status) {
  switch (status) {
#define VMEP_STATUS_NAME(name, value, text)                                    \
  case VMEP_##name:                                                            \
    return "VMEP_" #name;
    VMEP_STATUS_MAP(VMEP_STATUS_NAME)
#undef VMEP_STATUS_NAME
  }
  return "VMEP_UNKNOWN_STATUS";
}

const char *vmep_status_string(vmep_status status) {
  switch (status) {
#define VMEP_STATUS_TEXT(name, value, text)                                    \
  case VMEP_##name:                                                            \
    return text;
    VMEP_STATUS_MAP(VMEP_STATUS_TEXT)
#undef VMEP_STATUS_TEXT
  }
  return "unknown status";
}

const char *vmep_last_error(void) { return last_error; }

#define VERSION_TEXT(x) #x
#define VERSION_STRING(major, minor, patch)                                    \
  VERSION_TEXT(major) "." VERSION_TEXT(minor) "." VERSION_TEXT(patch)

/* The header's numbers, so that the two never disagree. */
const char *vmep_version(void) {
  return VERSION_STRING(VMEP_VERSION_MAJOR, VMEP_VERSION_MINOR,
                        VMEP_VERSION_PATCH);
}

void vmep__set_last_error(const char *text) {
  snprintf(last_error, sizeof(last_error), "%s", text);
}

vmep_status vmep__fail(vmep_status status, int level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof(last_error), fmt, ap);
  va_end(ap);
  /* Returned to the caller, who reports it: on stderr only when asked. */
  int shown = level < VMEP_LOG_INFO ? VMEP_LOG_INFO : level;
  if (vmep__log_enabled(shown))
    vmep__log(level, __FILE__, __LINE__, "%s -> %s", last_error,
              vmep_status_name(status));
  return status;
}

vmep_status vmep__fail_errno(int err, const char *fmt, ...) {
  char what[VMEP_LAST_ERROR_BYTES / 2];
  char reason[128];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof(what), fmt, ap);
  va_end(ap);
  /* The GNU strerror_r returns a pointer that may not be `reason`. */
  const char *text = strerror_r(err, reason, sizeof(reason));
  return vmep__fail(VMEP_ERR_SYSTEM, VMEP_LOG_ERROR, "%s: %s", what, text);
}
