/*
 * The options vmep-bench and nccl-a2a share (--tokens, --hidden, --topk,
 * --experts, --iters, --warmup, --seed and the flags), parsed strictly in
 * one place: "abc", "128,,512" or a hidden size that is not a multiple of
 * 128 are refused up front, in one line naming the option and its rule.
 */
#include <stddef.h>
#include <string.h>

#include "bench.h"
#include "cli.h"

/* An integer option: its range, a required multiple (1: any) and where it
 * goes in struct bench_options. */
struct int_option {
  const char *name;
  long long min, max, multiple;
  size_t offset;
};

static const struct int_option int_options[] = {
    {"--hidden", 128, 32768, 128, offsetof(struct bench_options, hidden)},
    {"--topk", 1, 16, 1, offsetof(struct bench_options, topk)},
    {"--experts", 1, 1 << 20, 1, offsetof(struct bench_options, experts)},
    {"--iters", 1, 1000000, 1, offsetof(struct bench_options, iters)},
    {"--warmup", 0, 1000000, 1, offsetof(struct bench_options, warmup)},
};

enum bench_arg bench_int_option(const char *prog, const char *opt,
                                const char *value, long long min, long long max,
                                long long multiple, int *out) {
  long long v = 0;
  char rule[96];
  snprintf(rule, sizeof(rule), "an integer in %lld..%lld%s", min, max,
           multiple > 1 ? ", a multiple of " : "");
  if (multiple > 1)
    snprintf(rule + strlen(rule), sizeof(rule) - strlen(rule), "%lld",
             multiple);
  if (!value)
    return cli_usage_error(prog, "%s needs a value: %s", opt, rule),
           BENCH_ARG_BAD;
  if (cli_parse_int(value, min, max, &v) != 0 || v % multiple != 0)
    return cli_usage_error(prog, "%s %s: expected %s", opt, value, rule),
           BENCH_ARG_BAD;
  *out = (int)v;
  return BENCH_ARG_VALUE;
}

/* --tokens: 1 to BENCH_MAX_SWEEP integers in 1..65535, comma-separated,
 * no empty item. Parses a copy: argv is passed on unchanged when
 * vmep-bench re-runs itself. */
static enum bench_arg token_list(const char *prog, const char *value,
                                 struct bench_options *o) {
  static const char rule[] = "a comma-separated list of up to 16 integers "
                             "in 1..65535, e.g. 128,512";
  if (!value)
    return cli_usage_error(prog, "--tokens needs a value: %s", rule),
           BENCH_ARG_BAD;
  const char *p = value;
  int n = 0;
  for (;;) {
    char item[16];
    long long v = 0;
    size_t len = strcspn(p, ",");
    int bad = len == 0 || len >= sizeof(item) || n == BENCH_MAX_SWEEP;
    if (!bad) {
      memcpy(item, p, len);
      item[len] = '\0';
      bad = cli_parse_int(item, 1, 65535, &v) != 0;
    }
    if (bad)
      return cli_usage_error(prog, "--tokens %s: expected %s", value, rule),
             BENCH_ARG_BAD;
    o->tokens[n++] = (int)v;
    if (!p[len])
      break;
    p += len + 1;
  }
  o->num_tokens_values = n;
  return BENCH_ARG_VALUE;
}

enum bench_arg bench_parse_shared_option(const char *prog, const char *opt,
                                         const char *value,
                                         struct bench_options *o) {
  static const struct {
    const char *name;
    size_t offset;
  } flags[] = {{"--fp8", offsetof(struct bench_options, fp8)},
               {"--round-scale", offsetof(struct bench_options, round_scale)},
               {"--check", offsetof(struct bench_options, check)}};
  for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
    if (!strcmp(opt, flags[i].name)) {
      *(int *)((char *)o + flags[i].offset) = 1;
      return BENCH_ARG_FLAG;
    }
  for (size_t i = 0; i < sizeof(int_options) / sizeof(int_options[0]); i++) {
    const struct int_option *io = &int_options[i];
    if (!strcmp(opt, io->name))
      return bench_int_option(prog, opt, value, io->min, io->max, io->multiple,
                              (int *)((char *)o + io->offset));
  }
  if (!strcmp(opt, "--tokens"))
    return token_list(prog, value, o);
  if (!strcmp(opt, "--seed")) {
    if (cli_parse_u64(value, &o->seed) == 0)
      return BENCH_ARG_VALUE;
    if (!value)
      return cli_usage_error(prog, "--seed needs a value: an unsigned "
                                   "decimal integer"),
             BENCH_ARG_BAD;
    return cli_usage_error(
               prog, "--seed %s: expected an unsigned decimal integer", value),
           BENCH_ARG_BAD;
  }
  return BENCH_ARG_UNKNOWN;
}
