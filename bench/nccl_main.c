/*
 * nccl-a2a: the NCCL baseline on its own, with vmep-bench's options where
 * they apply. One rank per GPU under vmep-run, torchrun or mpirun (NCCL
 * refuses two ranks on one GPU); started plainly it is a single rank.
 * Prints per rank the NCCL line with vmep-bench's byte accounting; --check
 * compares the outputs with the host reference first. Exit 2: bad usage;
 * 77: no GPU; 1: a failure.
 */
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cli.h"

#define PROG "nccl-a2a"

static void usage(FILE *out) {
  fprintf(out, "usage: nccl-a2a [--tokens LIST] [--hidden H] [--topk K] "
               "[--experts E] [--fp8] [--round-scale]\n"
               "                [--iters N] [--warmup N] [--seed S] "
               "[--check]\n"
               "as vmep-bench (defaults: tokens 128, hidden 7168, top-k 8, "
               "experts 4 per rank,\n"
               "at least top-k rounded up to a multiple of the ranks; iters "
               "100, warmup 10, seed 1)\n"
               "  --version  print the version; -h, --help this text\n");
}

/* Returns -1 to go on, or an exit status: 0 after --help or --version, 2
 * after one line naming a bad option and the rule it broke. */
static int parse(int argc, char **argv, struct bench_options *o) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    if (!strcmp(a, "--version"))
      return cli_print_version(PROG);
    enum bench_arg got = bench_parse_shared_option(
        PROG, a, i + 1 < argc ? argv[i + 1] : NULL, o);
    if (got == BENCH_ARG_UNKNOWN)
      return cli_usage_error(
          PROG, "%s %s (see %s --help)",
          a[0] == '-' ? "unknown option" : "unexpected argument", a, PROG);
    if (got == BENCH_ARG_BAD)
      return CLI_EXIT_USAGE;
    i += got == BENCH_ARG_VALUE;
  }
  return bench_experts_refused(o, PROG) ? CLI_EXIT_USAGE : -1;
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
      fprintf(stderr, "nccl-a2a: rank %d, tokens %d: %s (%s)\n", rank, r.tokens,
              vmep_status_name(st), vmep_last_error());
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
  if (rc >= 0)
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
  st = rc ? VMEP_OK : bench_gpu_sharing(g, &shared);
  if (st != VMEP_OK) { /* a CUDA failure has been printed already */
    if (st != VMEP_ERR_CUDA)
      fprintf(stderr, "nccl-a2a: %s\n", vmep_last_error());
    rc = 1;
  }
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
