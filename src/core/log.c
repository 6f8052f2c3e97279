/*
 * The logger: level from VMEP_LOG (error, warn, info, debug; default warn),
 * records to stderr only, each written with one write() so that the lines
 * of several processes sharing a terminal do not interleave.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"

static const char *const level_names[] = {"error", "warn", "info", "debug",
                                          NULL};

static _Atomic int log_rank = -1;

void vmep__log_set_rank(int rank) { log_rank = rank; }

/* An invalid VMEP_LOG keeps the default level, so that logging itself never
 * fails, but it is never silent: the first time the level is read with a
 * bad value, one error record says so (whatever the level); vmep-info
 * --config and vmep_config_check report it too. */
static _Atomic int bad_level_reported;

void vmep__log_level_reported(void) { bad_level_reported = 1; }

static int current_level(void) {
  const char *value = vmep__config_get(VMEP_CONFIG_LOG);
  for (int i = 0; level_names[i]; i++)
    if (strcmp(value, level_names[i]) == 0)
      return i;
  if (!bad_level_reported++)
    vmep__log(VMEP_LOG_ERROR, __FILE__, __LINE__,
              "%s=\"%s\": expected one of error|warn|info|debug; logging at "
              "warn",
              vmep__config_name(VMEP_CONFIG_LOG), value);
  return VMEP_LOG_WARN;
}

int vmep__log_enabled(int level) { return level <= current_level(); }

void vmep__log(int level, const char *file, int line, const char *fmt, ...) {
  char record[1024];
  int used;
  int rank = log_rank;
  if (rank >= 0)
    used = snprintf(record, sizeof(record), "vmep[rank %d] %s: ", rank,
                    level_names[level]);
  else
    used = snprintf(record, sizeof(record), "vmep[pid %d] %s: ", (int)getpid(),
                    level_names[level]);
  if (level >= VMEP_LOG_DEBUG && used < (int)sizeof(record))
    used += snprintf(record + used, sizeof(record) - (size_t)used,
                     "%s:%d: ", file, line);
  if (used < (int)sizeof(record)) {
    va_list ap;
    va_start(ap, fmt);
    used += vsnprintf(record + used, sizeof(record) - (size_t)used, fmt, ap);
    va_end(ap);
  }
  if (used >= (int)sizeof(record))
    used = (int)sizeof(record) - 1;
  record[used++] = '\n';
  /* A failed log write has nowhere to be reported. */
  ssize_t written = write(STDERR_FILENO, record, (size_t)used);
  (void)written;
}
