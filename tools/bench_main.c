/*
 * vmep-bench: the low-latency dispatch / combine benchmark. Started plainly,
 * it launches its ranks through vmep-run (4 ranks sharing the GPU when
 * there is one GPU, else one per GPU; vmep-run starts a private MPS daemon
 * when ranks share a GPU); under vmep-run, torchrun or mpirun it is one
 * rank. Each rank prints the line users of other EP libraries know; rank 0
 * then prints a summary with the same-run copy ceiling and the efficiency.
 */
#include <cuda_runtime_api.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: vmep-bench [options]\n"
          "  --ranks N        ranks to launch (default: 4 on one GPU, else "
          "one per GPU)\n"
          "  --tokens LIST    max tokens per rank, a sweep: 128,512,1024 "
          "(default 128)\n"
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
          "  --zero-copy      experts write into the EP buffer; combine pulls\n"
          "  --compare nccl   also time the NCCL all-to-all baseline (one GPU "
          "per rank)\n"
          "  --seed S         random seed (default 1)\n"
          "  --json FILE      also write the results as JSON (rank 0)\n");
}

static int parse_int(const char *text, int min, int max, int *out) {
  char *end = NULL;
  long v = strtol(text, &end, 10);
  if (!text[0] || *end || v < min || v > max)
    return -1;
  *out = (int)v;
  return 0;
}

/* Parses a copy: argv is passed on unchanged when we re-exec ourselves. */
static int parse_tokens(const char *text, struct bench_options *o) {
  char list[256], *save = NULL;
  if (snprintf(list, sizeof(list), "%s", text) >= (int)sizeof(list))
    return -1;
  o->num_tokens_values = 0;
  for (char *item = strtok_r(list, ",", &save); item;
       item = strtok_r(NULL, ",", &save)) {
    if (o->num_tokens_values == BENCH_MAX_SWEEP ||
        parse_int(item, 1, 65535, &o->tokens[o->num_tokens_values]) != 0)
      return -1;
    o->num_tokens_values++;
  }
  return o->num_tokens_values ? 0 : -1;
}

/* Returns 0, or 2 after printing a usage error. */
static int parse(int argc, char **argv, struct bench_options *o) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    char *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0, used = 1;
    if (!strcmp(a, "--fp8")) {
      o->fp8 = 1;
      used = 0;
    } else if (!strcmp(a, "--round-scale")) {
      o->round_scale = 1;
      used = 0;
    } else if (!strcmp(a, "--check")) {
      o->check = 1;
      used = 0;
    } else if (!strcmp(a, "--zero-copy")) {
      o->zero_copy = 1;
      used = 0;
    } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      exit(0);
    } else if (!v) {
      bad = 1;
    } else if (!strcmp(a, "--ranks")) {
      bad = parse_int(v, 1, 1024, &o->ranks);
    } else if (!strcmp(a, "--tokens")) {
      bad = parse_tokens(v, o);
    } else if (!strcmp(a, "--hidden")) {
      bad = parse_int(v, 128, 32768, &o->hidden);
    } else if (!strcmp(a, "--topk")) {
      bad = parse_int(v, 1, 16, &o->topk);
    } else if (!strcmp(a, "--experts")) {
      bad = parse_int(v, 1, 1 << 20, &o->experts);
    } else if (!strcmp(a, "--iters")) {
      bad = parse_int(v, 1, 1000000, &o->iters);
    } else if (!strcmp(a, "--warmup")) {
      bad = parse_int(v, 0, 1000000, &o->warmup);
    } else if (!strcmp(a, "--num-sms")) {
      bad = parse_int(v, 1, 1024, &o->num_sms);
    } else if (!strcmp(a, "--seed")) {
      o->seed = strtoull(v, NULL, 0);
    } else if (!strcmp(a, "--json")) {
      o->json = v;
    } else if (!strcmp(a, "--compare")) {
      bad = strcmp(v, "nccl") != 0;
      o->compare_nccl = 1;
      if (!bad && !bench_nccl_built()) {
        fprintf(stderr, "vmep-bench: --compare nccl: this build has no NCCL "
                        "(nccl.h or libnccl not found when configuring)\n");
        return 2;
      }
    } else {
      bad = 1;
    }
    if (bad) {
      fprintf(stderr, "vmep-bench: bad option or value: %s%s%s\n", a,
              v && used ? " " : "", v && used ? v : "");
      usage(stderr);
      return 2;
    }
    i += used;
  }
  return bench_experts_refused(o, "vmep-bench") ? 2 : 0;
}

/* Not under any launcher: run ourselves under vmep-run, which sits next to
 * this program. Returns only on failure. */
static int launch(int argc, char **argv, const struct bench_options *o) {
  char self[PATH_MAX], run[PATH_MAX + 16], ranks[16];
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
  char **args = calloc((size_t)argc + 6, sizeof(char *));
  if (!args)
    return 1;
  int k = 0;
  args[k++] = run;
  args[k++] = "-n";
  args[k++] = ranks;
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
  if (bench_gpu_sharing(g, &shared) != VMEP_OK)
    failed = 1;
  o->own_gpus = !shared;
  if (!failed && shared && o->compare_nccl) {
    if (rank == 0)
      printf("vmep-bench: --compare nccl skipped: ranks share a GPU, and "
             "NCCL needs one GPU per rank\n");
    o->compare_nccl = 0;
  }
  if (rank == 0)
    printf("vmep-bench: %d ranks, hidden %d, top-k %d, experts %d, %s%s, "
           "seed %llu\n",
           size, o->hidden, o->topk, bench_experts(o, size),
           o->fp8 ? "fp8" : "bf16", o->zero_copy ? ", zero-copy combine" : "",
           (unsigned long long)o->seed);
  for (int i = 0; !failed && i < o->num_tokens_values; i++) {
    struct bench_result mine;
    if (rank == 0 && o->num_tokens_values > 1)
      fprintf(stderr, "vmep-bench: tokens %d (%d of %d)\n", o->tokens[i], i + 1,
              o->num_tokens_values);
    vmep_status st = bench_run_tokens(g, o, o->tokens[i], &mine);
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
        VMEP_OK)
      failed = 1;
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
  if (rc != 0)
    return rc;
  if (!bench_under_launcher())
    return launch(argc, argv, &o);
  return run_rank(&o);
}
