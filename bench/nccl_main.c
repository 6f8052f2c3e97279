/*
 * nccl-a2a: the NCCL baseline on its own, with vmep-bench's options where
 * they apply. One rank per GPU under vmep-run, torchrun or mpirun (NCCL
 * refuses two ranks on one GPU); started plainly it is a single rank.
 * Prints per rank the NCCL line with vmep-bench's byte accounting; --check
 * compares the outputs with the host reference first. Exit 2: bad usage;
 * 77: no GPU; 1: a failure.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static void usage(FILE *out) {
  fprintf(out, "usage: nccl-a2a [--tokens LIST] [--hidden H] [--topk K] "
               "[--experts E] [--fp8] [--round-scale]\n"
               "                [--iters N] [--warmup N] [--seed S] "
               "[--check]\n"
               "as vmep-bench (defaults: tokens 128, hidden 7168, top-k 8, "
               "experts 4 per rank,\n"
               "at least top-k rounded up to a multiple of the ranks; iters "
               "100, warmup 10, seed 1)\n");
}

/* Reads `text` as an integer in [min, max] into *out; 2 (after a message)
 * otherwise. */
static int int_arg(const char *opt, const char *text, long min, long max,
                   int *out) {
  char *end = NULL;
  long v = text ? strtol(text, &end, 10) : 0;
  if (text && text[0] && !*end && v >= min && v <= max) {
    *out = (int)v;
    return 0;
  }
  fprintf(stderr, "nccl-a2a: bad value for --%s: %s (%ld..%ld)\n", opt,
          text ? text : "(none)", min, max);
  return 2;
}

static int token_list(const char *text, struct bench_options *o) {
  char list[256], *save = NULL;
  int rc = snprintf(list, sizeof(list), "%s", text) >= (int)sizeof(list);
  o->num_tokens_values = 0;
  for (char *item = strtok_r(list, ",", &save); !rc && item;
       item = strtok_r(NULL, ",", &save))
    rc = o->num_tokens_values == BENCH_MAX_SWEEP
             ? 2
             : int_arg("tokens", item, 1, 65535,
                       &o->tokens[o->num_tokens_values++]);
  return rc || !o->num_tokens_values ? 2 : 0;
}

static int parse(int argc, char **argv, struct bench_options *o) {
  static const struct option opts[] = {
      {"tokens", 1, 0, 't'},  {"hidden", 1, 0, 'H'}, {"topk", 1, 0, 'k'},
      {"experts", 1, 0, 'e'}, {"fp8", 0, 0, 'f'},    {"round-scale", 0, 0, 'r'},
      {"iters", 1, 0, 'i'},   {"warmup", 1, 0, 'w'}, {"seed", 1, 0, 's'},
      {"check", 0, 0, 'c'},   {"help", 0, 0, 'h'},   {0, 0, 0, 0}};
  int c, rc = 0;
  opterr = 0;
  while (!rc && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 't':
      rc = token_list(optarg, o);
      break;
    case 'H':
      rc = int_arg("hidden", optarg, 128, 32768, &o->hidden);
      break;
    case 'k':
      rc = int_arg("topk", optarg, 1, 16, &o->topk);
      break;
    case 'e':
      rc = int_arg("experts", optarg, 1, 1 << 20, &o->experts);
      break;
    case 'f':
      o->fp8 = 1;
      break;
    case 'r':
      o->round_scale = 1;
      break;
    case 'i':
      rc = int_arg("iters", optarg, 1, 1000000, &o->iters);
      break;
    case 'w':
      rc = int_arg("warmup", optarg, 0, 1000000, &o->warmup);
      break;
    case 's':
      o->seed = strtoull(optarg, NULL, 0);
      break;
    case 'c':
      o->check = 1;
      break;
    case 'h':
      usage(stdout);
      exit(0);
    default:
      fprintf(stderr, "nccl-a2a: bad option: %s\n", argv[optind - 1]);
      rc = 2;
    }
  }
  if (!rc && optind < argc) {
    fprintf(stderr, "nccl-a2a: unexpected argument: %s\n", argv[optind]);
    rc = 2;
  }
  if (!rc && bench_experts_refused(o, "nccl-a2a"))
    rc = 2;
  if (!rc && o->hidden % 128) {
    fprintf(stderr, "nccl-a2a: --hidden must be a multiple of 128\n");
    rc = 2;
  }
  if (rc)
    usage(stderr);
  return rc;
}

/* Every token count: time (and check), print this rank's line. */
static int run(vmep_group *g, const struct bench_options *o) {
  int rank = vmep_group_rank(g), prefix = !getenv("VMEP_RANK");
  for (int i = 0; i < o->num_tokens_values; i++) {
    struct bench_result r;
    double sel = (double)o->tokens[i] * o->topk, H = o->hidden;
    memset(&r, 0, sizeof(r));
    r.rank = rank;
    r.tokens = o->tokens[i];
    r.dispatch_bytes = sel * (o->fp8 ? H + H / 128 * 4 + 16 : 2 * H + 16);
    r.combine_bytes = sel * 2 * H;
    vmep_status st = bench_nccl_run_tokens(g, o, o->tokens[i], &r);
    if (st != VMEP_OK) {
      fprintf(stderr, "nccl-a2a: rank %d, tokens %d: %s\n", rank, r.tokens,
              vmep_status_name(st));
      return 1;
    }
    if (prefix)
      printf("[rank %d] ", rank);
    if (o->check)
      printf("%d tokens: check passed (dispatch against the host "
             "reference%s)\n",
             r.tokens, o->fp8 ? "" : ", combine against sum_k w*x");
    bench_print_nccl_rank(&r, prefix);
    fflush(stdout);
  }
  return 0;
}

int main(int argc, char **argv) {
  struct bench_options o;
  bench_options_defaults(&o);
  int gpus = 0, shared = 0, rc = parse(argc, argv, &o);
  if (rc)
    return rc;
  if (!bench_nccl_built()) {
    fprintf(stderr, "nccl-a2a: built without NCCL\n");
    return 1;
  }
  if (vmep_device_count(&gpus) != VMEP_OK || gpus == 0) {
    fprintf(stderr, "nccl-a2a: no GPU: %s\n",
            gpus == 0 && !vmep_last_error()[0] ? "the driver reports 0 devices"
                                               : vmep_last_error());
    return 77;
  }
  vmep_group *g = NULL;
  vmep_status st = bench_under_launcher()
                       ? vmep_group_create_from_env(&g)
                       : vmep_group_create_custom(0, 1, NULL, NULL, NULL, &g);
  if (st != VMEP_OK) {
    fprintf(stderr, "nccl-a2a: %s\n", vmep_last_error());
    return 1;
  }
  /* With 1 rank the old default (4 experts) was below K = 8, and the
   * 1-rank --check hung drawing distinct experts before NCCL was reached. */
  int R = vmep_group_size(g), E = bench_experts(&o, R);
  o.experts = E;
  rc = bench_cuda_check(cudaSetDevice(vmep_group_local_rank(g) % gpus),
                        "cudaSetDevice") != VMEP_OK;
  if (!rc && bench_gpu_sharing(g, &shared) != VMEP_OK)
    rc = 1;
  if (!rc && shared) {
    fprintf(stderr, "nccl-a2a: ranks share a GPU; NCCL needs one GPU per "
                    "rank (start at most one rank per GPU)\n");
    rc = 1;
  }
  if (!rc && E % R) {
    fprintf(stderr, "nccl-a2a: --experts %d is not a multiple of %d ranks\n", E,
            R);
    rc = 2;
  }
  if (!rc && vmep_group_rank(g) == 0)
    printf("nccl-a2a: %d ranks, hidden %d, top-k %d, experts %d, %s, seed "
           "%llu, NCCL_NVLS_ENABLE=0\n",
           R, o.hidden, o.topk, E, o.fp8 ? "fp8" : "bf16",
           (unsigned long long)o.seed);
  if (!rc)
    rc = run(g, &o);
  vmep_group_destroy(g);
  return rc;
}
