/*
 * vmep-bench: the dispatch / combine benchmark, of the low-latency calls
 * (--mode ll, the default) or the high-throughput ones (--mode ht, DeepEP's
 * normal-mode accounting: docs/PERFORMANCE.md). Started plainly,
 * it launches its ranks through vmep-run (4 ranks sharing the GPU when
 * there is one GPU, else one per GPU; vmep-run starts a private MPS daemon
 * when ranks share a GPU); under vmep-run, torchrun or mpirun it is one
 * rank. Each rank prints the line users of other EP libraries know; rank 0
 * then prints a summary with the same-run copy ceiling and the efficiency.
 * With --nodes N (passed to vmep-run) or ranks in several nodes, the bytes
 * within and across nodes and the engine ceiling come with them.
 */
#include <cuda_runtime_api.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"

#define PROG "vmep-bench"

static void usage(FILE *out) {
  fprintf(out,
          "usage: vmep-bench [options]\n"
          "  --mode ll|ht     ll: the low-latency calls (default); ht: the "
          "high-throughput\n"
          "                   dispatch / combine, GB/s of the rows received\n"
          "  --cached         (ht) time the cached dispatch: a first "
          "dispatch's layout reused\n"
          "  --ranks N        ranks to launch (default: 4 on one GPU, else "
          "one per GPU)\n"
          "  --tokens LIST    max tokens per rank, a sweep: 128,512,1024 "
          "(default 128,\n"
          "                   4096 with --mode ht)\n"
          "  --hidden H       hidden size, a multiple of 128 (default 7168)\n"
          "  --topk K         experts per token (default 8)\n"
          "  --experts E      experts in all, at least K (default 4 per rank, "
          "at least K)\n"
          "  --fp8            dispatch in fp8 e4m3 with per-128 scales\n"
          "  --round-scale    fp8 scales rounded to powers of two\n"
          "  --iters N        timed calls (default 100); --warmup N (10)\n"
          "  --num-sms N      blocks per kernel (default: this rank's share of "
          "the GPU)\n"
          "  --check          check against the host reference before timing\n"
          "  --zero-copy      experts write into the EP buffer; combine pulls "
          "(ht: in place)\n"
          "  --logfmt         combine rows travel as LogFMT-10, 41H/32 bytes "
          "(ll only, not\n"
          "                   with --zero-copy)\n"
          "  --expert-reduce  weights given to dispatch; combine sends one "
          "row per (token,\n"
          "                   expert rank), summed where the experts are "
          "(ll only)\n"
          "  --compare nccl   also time the NCCL all-to-all baseline (one GPU "
          "per rank; ll only)\n"
          "  --nodes N        N pretend nodes (vmep-run --nodes; VMEP_NODES "
          "under a launcher):\n"
          "                   peers in other nodes go through the inter-node "
          "proxy; adds the\n"
          "                   bytes within and across nodes, the proxy's "
          "measured bytes and\n"
          "                   the engine's own ceiling of the same bytes "
          "(engine eff); over\n"
          "                   TCP on one machine only engine eff means "
          "anything\n"
          "  --seed S         random seed (default 1)\n"
          "  --json FILE      also write the results as JSON (rank 0)\n"
          "  --version        print the version; -h, --help this text\n");
}

/* vmep-bench's own options (the shared ones are in bench_args.c). */
static enum bench_arg own_option(const char *a, const char *v,
                                 struct bench_options *o) {
  if (!strcmp(a, "--mode")) {
    if (!v || (strcmp(v, "ll") && strcmp(v, "ht")))
      return cli_usage_error(PROG, "--mode %s: expected ll or ht",
                             v ? v : "(no value)"),
             BENCH_ARG_BAD;
    o->ht = !strcmp(v, "ht");
    return BENCH_ARG_VALUE;
  }
  if (!strcmp(a, "--zero-copy")) {
    o->zero_copy = 1;
    return BENCH_ARG_FLAG;
  }
  if (!strcmp(a, "--logfmt")) {
    o->logfmt = 1;
    return BENCH_ARG_FLAG;
  }
  if (!strcmp(a, "--expert-reduce")) {
    o->reduce = 1;
    return BENCH_ARG_FLAG;
  }
  if (!strcmp(a, "--cached")) {
    o->cached = 1;
    return BENCH_ARG_FLAG;
  }
  if (!strcmp(a, "--ranks"))
    return bench_int_option(PROG, a, v, 1, 1024, 1, &o->ranks);
  if (!strcmp(a, "--num-sms"))
    return bench_int_option(PROG, a, v, 1, 1024, 1, &o->num_sms);
  if (!strcmp(a, "--nodes"))
    return bench_int_option(PROG, a, v, 1, 1024, 1, &o->nodes);
  if (!strcmp(a, "--json")) {
    if (!v || !v[0])
      return cli_usage_error(PROG, "--json needs a file name"), BENCH_ARG_BAD;
    o->json = v;
    return BENCH_ARG_VALUE;
  }
  if (!strcmp(a, "--compare")) {
    if (!v || strcmp(v, "nccl") != 0)
      return cli_usage_error(PROG, "--compare %s: expected nccl",
                             v ? v : "(no value)"),
             BENCH_ARG_BAD;
    if (!bench_nccl_built())
      return cli_usage_error(PROG, "--compare nccl: this build has no NCCL "
                                   "(nccl.h or libnccl not found when "
                                   "configuring)"),
             BENCH_ARG_BAD;
    o->compare_nccl = 1;
    return BENCH_ARG_VALUE;
  }
  return BENCH_ARG_UNKNOWN;
}

/* The options of one mode given with the other, refused in one line (1,
 * after printing); --mode ht's default token count (4096, as DeepEP's
 * normal-mode test) when --tokens was not given. */
static int mode_refused(struct bench_options *o, int tokens_given) {
  const char *why =
      !o->ht && o->cached ? "--cached: the cached high-throughput dispatch "
                            "(only with --mode ht)"
      : !o->ht && o->logfmt && o->zero_copy
          ? "--logfmt with --zero-copy: zero-copy rows are pulled as the "
            "experts wrote them (bf16)"
      : !o->ht          ? NULL
      : o->logfmt       ? "--logfmt: the high-throughput combine sends "
                          "bf16 (not with --mode ht)"
      : o->reduce       ? "--expert-reduce: the high-throughput combine "
                          "already sends a row per (token, rank) (not with "
                          "--mode ht)"
      : o->compare_nccl ? "--compare nccl: the NCCL baseline moves the "
                          "low-latency layout (not with --mode ht)"
                        : NULL;
  if (why) {
    cli_usage_error(PROG, "%s", why);
    return 1;
  }
  if (!o->ht)
    return 0;
  if (!tokens_given) {
    o->tokens[0] = 4096;
    o->num_tokens_values = 1;
  }
  return 0;
}

/* Returns -1 to go on, or an exit status: 0 after --help or --version, 2
 * after one line naming a bad option and the rule it broke. */
static int parse(int argc, char **argv, struct bench_options *o) {
  int tokens_given = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    if (!strcmp(a, "--version"))
      return cli_print_version(PROG);
    enum bench_arg got = own_option(a, v, o);
    if (got == BENCH_ARG_UNKNOWN)
      got = bench_parse_shared_option(PROG, a, v, o);
    if (got == BENCH_ARG_UNKNOWN)
      return cli_usage_error(PROG, "unknown option %s (see %s --help)", a,
                             PROG);
    if (got == BENCH_ARG_BAD)
      return CLI_EXIT_USAGE;
    tokens_given |= !strcmp(a, "--tokens");
    i += got == BENCH_ARG_VALUE;
  }
  return bench_experts_refused(o, PROG) || mode_refused(o, tokens_given)
             ? CLI_EXIT_USAGE
             : -1;
}

/* Not under any launcher: run ourselves under vmep-run, which sits next to
 * this program. Returns only on failure. */
static int launch(int argc, char **argv, const struct bench_options *o) {
  char self[PATH_MAX], run[PATH_MAX + 16], ranks[16], nodes[16];
  int gpus = 0;
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0)
    return 1;
  self[n] = '\0';
  snprintf(run, sizeof(run), "%s", self);
  char *slash = strrchr(run, '/');
  snprintf(slash + 1, sizeof(run) - (size_t)(slash + 1 - run), "vmep-run");
  if (vmep_device_count(&gpus) != VMEP_OK || gpus == 0) {
    fprintf(stderr, "vmep-bench: no GPU: %s\n", vmep_last_error());
    return 1;
  }
  snprintf(ranks, sizeof(ranks), "%d",
           o->ranks    ? o->ranks
           : gpus == 1 ? 4
                       : gpus);
  snprintf(nodes, sizeof(nodes), "%d", o->nodes);
  char **args = calloc((size_t)argc + 8, sizeof(char *));
  if (!args)
    return 1;
  int k = 0;
  args[k++] = run;
  args[k++] = "-n";
  args[k++] = ranks;
  if (o->nodes) { /* vmep-run sets VMEP_NODES for every rank */
    args[k++] = "--nodes";
    args[k++] = nodes;
  }
  args[k++] = "--";
  args[k++] = self;
  for (int i = 1; i < argc; i++)
    args[k++] = argv[i];
  execv(run, args);
  fprintf(stderr, "vmep-bench: cannot start %s\n", run);
  free(args);
  return 1;
}

static int run_rank(struct bench_options *o) {
  vmep_group *g = NULL;
  int count = 0;
  char nodes[16];
  /* --nodes under a launcher that did not set VMEP_NODES (vmep-run does
   * with its own --nodes, which then wins). */
  snprintf(nodes, sizeof(nodes), "%d", o->nodes);
  if (o->nodes)
    setenv("VMEP_NODES", nodes, 0);
  if (vmep_group_create_from_env(&g) != VMEP_OK) {
    fprintf(stderr, "vmep-bench: %s\n", vmep_last_error());
    return 1;
  }
  int rank = vmep_group_rank(g), size = vmep_group_size(g);
  if (vmep_device_count(&count) == VMEP_OK && count > 0)
    cudaSetDevice(vmep_group_local_rank(g) % count);
  struct bench_result *all =
      calloc((size_t)size * o->num_tokens_values, sizeof(*all));
  int failed = !all, shared = 1;
  vmep_status sharing = failed ? VMEP_OK : bench_gpu_sharing(g, &shared);
  if (sharing != VMEP_OK) { /* a CUDA failure has been printed already */
    if (sharing != VMEP_ERR_CUDA)
      fprintf(stderr, "vmep-bench: rank %d: %s\n", rank, vmep_last_error());
    failed = 1;
  }
  o->own_gpus = !shared;
  if (!failed && shared && o->compare_nccl) {
    if (rank == 0)
      printf("vmep-bench: --compare nccl skipped: ranks share a GPU, and "
             "NCCL needs one GPU per rank\n");
    o->compare_nccl = 0;
  }
  struct bench_result where;
  char span[32] = "";
  bench_nodes_of(g, &where);
  if (where.nodes > 1)
    snprintf(span, sizeof(span), " in %d nodes", where.nodes);
  if (rank == 0)
    printf("vmep-bench: %s, %d ranks%s, hidden %d, top-k %d, experts %d, "
           "%s%s%s%s%s, seed %llu\n",
           o->ht ? "high-throughput" : "low-latency", size, span, o->hidden,
           o->topk, bench_experts(o, size), o->fp8 ? "fp8" : "bf16",
           o->logfmt ? ", LogFMT combine" : "",
           o->reduce ? ", combine reduced at the experts" : "",
           o->zero_copy ? ", zero-copy combine" : "",
           o->cached ? ", cached dispatch" : "", (unsigned long long)o->seed);
  for (int i = 0; !failed && i < o->num_tokens_values; i++) {
    struct bench_result mine;
    if (rank == 0 && o->num_tokens_values > 1)
      fprintf(stderr, "vmep-bench: tokens %d (%d of %d)\n", o->tokens[i], i + 1,
              o->num_tokens_values);
    vmep_status st = o->ht ? bench_ht_run_tokens(g, o, o->tokens[i], &mine)
                           : bench_run_tokens(g, o, o->tokens[i], &mine);
    if (st == VMEP_OK && o->compare_nccl)
      st = bench_nccl_run_tokens(g, o, o->tokens[i], &mine);
    if (st != VMEP_OK) {
      fprintf(stderr, "vmep-bench: rank %d, tokens %d: %s (%s)\n", rank,
              o->tokens[i], vmep_status_name(st), vmep_last_error());
      failed = 1;
      break;
    }
    bench_print_rank(&mine, !getenv("VMEP_RANK"));
    fflush(stdout);
    if (vmep_group_allgather(g, &mine, sizeof(mine), all + (size_t)i * size) !=
        VMEP_OK) {
      fprintf(stderr, "vmep-bench: rank %d: %s\n", rank, vmep_last_error());
      failed = 1;
    }
  }
  if (!failed && rank == 0) {
    bench_print_summary(o, all, size, o->num_tokens_values);
    if (o->json &&
        bench_write_json(o->json, o, all, size, o->num_tokens_values) != 0)
      failed = 1;
  }
  free(all);
  vmep_group_destroy(g);
  return failed;
}

int main(int argc, char **argv) {
  struct bench_options o;
  bench_options_defaults(&o);
  int rc = parse(argc, argv, &o);
  if (rc >= 0)
    return rc;
  if (!bench_under_launcher())
    return launch(argc, argv, &o);
  return run_rank(&o);
}
