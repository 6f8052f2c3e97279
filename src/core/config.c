/*
 * The configuration table: every environment variable vmep reads, with its
 * default and documentation, generated from VMEP_CONFIG_ROWS. Values are
 * read from the environment at each use, so a process (or a test) may
 * change them between calls.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

struct config_row {
  const char *name;
  const char *def;
  const char *doc;
};

static const struct config_row rows[] = {
#define VMEP_CONFIG_ROW(id, name, def, doc) {name, def, doc},
    VMEP_CONFIG_ROWS(VMEP_CONFIG_ROW)
#undef VMEP_CONFIG_ROW
};

const char *vmep__config_name(enum vmep_config_id id) { return rows[id].name; }

const char *vmep__config_get(enum vmep_config_id id) {
  const char *value = getenv(rows[id].name);
  return (value && value[0]) ? value : rows[id].def;
}

vmep_status vmep__config_choice(enum vmep_config_id id,
                                const char *const *choices, int *index_out) {
  const char *value = vmep__config_get(id);
  char accepted[256] = "";
  for (int i = 0; choices[i]; i++) {
    if (strcmp(value, choices[i]) == 0) {
      *index_out = i;
      return VMEP_OK;
    }
    strncat(accepted, i ? "|" : "", sizeof(accepted) - strlen(accepted) - 1);
    strncat(accepted, choices[i], sizeof(accepted) - strlen(accepted) - 1);
  }
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "%s=%s: expected one of %s", rows[id].name, value,
                    accepted);
}

vmep_status vmep__config_int(enum vmep_config_id id, long long min,
                             long long max, long long *value_out) {
  const char *text = vmep__config_get(id);
  char *end = NULL;
  errno = 0;
  long long value = strtoll(text, &end, 10);
  if (end == text || *end || errno || value < min || value > max)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "%s=\"%s\": expected an integer in %lld..%lld",
                      rows[id].name, text, min, max);
  *value_out = value;
  return VMEP_OK;
}

int vmep_config_count(void) { return (int)VMEP_CONFIG_COUNT; }

vmep_status vmep_config_row(int index, const char **name_out,
                            const char **default_out, const char **doc_out,
                            const char **value_out) {
  if (index < 0 || index >= (int)VMEP_CONFIG_COUNT)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_config_row: index %d out of range [0, %d)", index,
                      (int)VMEP_CONFIG_COUNT);
  if (name_out)
    *name_out = rows[index].name;
  if (default_out)
    *default_out = rows[index].def;
  if (doc_out)
    *doc_out = rows[index].doc;
  if (value_out)
    *value_out = getenv(rows[index].name);
  return VMEP_OK;
}
