/*
 * The configuration table: every environment variable vmep reads, with its
 * default, its rule and documentation, generated from VMEP_CONFIG_ROWS.
 * Every value is checked here against its row's rule, so a bad value is
 * refused with the same words wherever it is read. Values are read from
 * the environment at each use, so a process (or a test) may change them
 * between calls.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

struct config_row {
  const char *name;
  const char *def;
  const char *rule; /* "a|b|c", "MIN..MAX" or "" (VMEP_CONFIG_ROWS) */
  const char *doc;
};

static const struct config_row rows[] = {
#define VMEP_CONFIG_ROW(id, name, def, rule, doc) {name, def, rule, doc},
    VMEP_CONFIG_ROWS(VMEP_CONFIG_ROW)
#undef VMEP_CONFIG_ROW
};

const char *vmep__config_name(enum vmep_config_id id) { return rows[id].name; }

const char *vmep__config_get(enum vmep_config_id id) {
  const char *value = getenv(rows[id].name);
  return (value && value[0]) ? value : rows[id].def;
}

/* Strict decimal: optional '-', digits only, no overflow. */
static int parse_decimal(const char *text, long long *value_out) {
  char *end = NULL;
  if (!((text[0] >= '0' && text[0] <= '9') ||
        (text[0] == '-' && text[1] >= '0' && text[1] <= '9')))
    return -1;
  errno = 0;
  long long value = strtoll(text, &end, 10);
  if (*end || errno)
    return -1;
  *value_out = value;
  return 0;
}

/* A "MIN..MAX" rule's bounds; 0 when `rule` is one, -1 otherwise. */
static int rule_range(const char *rule, long long *min_out,
                      long long *max_out) {
  char low[24];
  const char *dots = strstr(rule, "..");
  size_t n = dots ? (size_t)(dots - rule) : 0;
  if (!dots || n == 0 || n >= sizeof(low))
    return -1;
  memcpy(low, rule, n);
  low[n] = '\0';
  return parse_decimal(low, min_out) == 0 &&
                 parse_decimal(dots + 2, max_out) == 0
             ? 0
             : -1;
}

const char *vmep__config_allowed(enum vmep_config_id id, char *out,
                                 size_t bytes) {
  const char *rule = rows[id].rule;
  long long min = 0, max = 0;
  if (!rule[0])
    snprintf(out, bytes, "any text");
  else if (rule_range(rule, &min, &max) == 0)
    snprintf(out, bytes, "an integer in %lld..%lld", min, max);
  else
    snprintf(out, bytes, "one of %s", rule);
  return out;
}

/* 1 when `value` is one of the '|'-separated words of `list`. */
static int in_choices(const char *value, const char *list) {
  size_t n = strlen(value);
  for (const char *p = list; *p;) {
    size_t word = strcspn(p, "|");
    if (word == n && strncmp(p, value, n) == 0)
      return 1;
    p += word + (p[word] == '|');
  }
  return 0;
}

vmep_status vmep__config_check(enum vmep_config_id id) {
  const char *value = vmep__config_get(id);
  const char *rule = rows[id].rule;
  long long number = 0, min = 0, max = 0;
  int ok = 1;
  if (!value[0] || !rule[0])
    return VMEP_OK;
  if (rule_range(rule, &min, &max) == 0)
    ok = parse_decimal(value, &number) == 0 && number >= min && number <= max;
  else
    ok = in_choices(value, rule);
  if (ok)
    return VMEP_OK;
  char allowed[160];
  if (id == VMEP_CONFIG_LOG) /* the caller is told: the logger need not */
    vmep__log_level_reported();
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "%s=\"%s\": expected %s", rows[id].name, value,
                    vmep__config_allowed(id, allowed, sizeof(allowed)));
}

vmep_status vmep__config_choice(enum vmep_config_id id,
                                const char *const *choices, int *index_out) {
  vmep_status status = vmep__config_check(id);
  if (status != VMEP_OK)
    return status;
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
                    "%s=\"%s\": expected one of %s", rows[id].name, value,
                    accepted);
}

vmep_status vmep__config_int(enum vmep_config_id id, long long min,
                             long long max, long long *value_out) {
  vmep_status status = vmep__config_check(id);
  if (status != VMEP_OK)
    return status;
  const char *text = vmep__config_get(id);
  long long value = 0;
  if (parse_decimal(text, &value) != 0 || value < min || value > max)
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

vmep_status vmep_config_check(int index, const char **allowed_out) {
  static _Thread_local char allowed[160];
  if (index < 0 || index >= (int)VMEP_CONFIG_COUNT)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "vmep_config_check: index %d out of range [0, %d)", index,
                      (int)VMEP_CONFIG_COUNT);
  if (allowed_out)
    *allowed_out = vmep__config_allowed((enum vmep_config_id)index, allowed,
                                        sizeof(allowed));
  return vmep__config_check((enum vmep_config_id)index);
}
