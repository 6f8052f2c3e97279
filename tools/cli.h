/*
 * The command-line habits every vmep tool shares (vmep-info, vmep-run,
 * vmep-bench, nccl-a2a): strict number parsing, one-line usage errors that
 * name the option and the rule it broke (exit 2, usage only on --help),
 * and --version printing "NAME VERSION" from the project's version.
 */
#ifndef VMEP_TOOLS_CLI_H
#define VMEP_TOOLS_CLI_H

#include <stdint.h>

#define CLI_EXIT_USAGE 2

/* Parses all of `text` as a decimal integer (digits, an optional leading
 * '-') in [min, max] into *out. 0 on success; -1 for NULL, empty text,
 * other characters, overflow or out of range (*out untouched). */
int cli_parse_int(const char *text, long long min, long long max,
                  long long *out);

/* The same for an unsigned 64-bit decimal (digits only). */
int cli_parse_u64(const char *text, uint64_t *out);

/* Prints "PROG: " and the formatted text as one line on stderr and
 * returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints "PROG VERSION" on stdout; returns 0. */
int cli_print_version(const char *prog);

#endif /* VMEP_TOOLS_CLI_H */
