/*
 * The tools' shared command-line helpers (cli.h): one strict number parser
 * instead of a strtol per tool that lets "abc" or "128," through, and one
 * shape for usage errors.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

/* CMake passes project(VERSION) (tools/CMakeLists.txt); the tool_options
 * test checks that --version prints it. */
#ifndef VMEP_PROJECT_VERSION
#define VMEP_PROJECT_VERSION "unknown"
#endif

static int is_digit(char c) { return c >= '0' && c <= '9'; }

int cli_parse_int(const char *text, long long min, long long max,
                  long long *out) {
  if (!text || !(is_digit(text[0]) || (text[0] == '-' && is_digit(text[1]))))
    return -1;
  char *end = NULL;
  errno = 0;
  long long value = strtoll(text, &end, 10);
  if (errno || *end || value < min || value > max)
    return -1;
  *out = value;
  return 0;
}

int cli_parse_u64(const char *text, uint64_t *out) {
  if (!text || !is_digit(text[0]))
    return -1;
  char *end = NULL;
  errno = 0;
  unsigned long long value = strtoull(text, &end, 10);
  if (errno || *end)
    return -1;
  *out = (uint64_t)value;
  return 0;
}

int cli_usage_error(const char *prog, const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s: %s\n", prog, line);
  return CLI_EXIT_USAGE;
}

int cli_print_version(const char *prog) {
  printf("%s %s\n", prog, VMEP_PROJECT_VERSION);
  return 0;
}
