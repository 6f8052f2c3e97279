/*
 * vmep-run: starts N local ranks of a program with everything vmep's
 * launch-environment detection looks for (VMEP_RANK, VMEP_WORLD_SIZE,
 * VMEP_LOCAL_RANK, VMEP_STORE_ADDR, VMEP_JOB_TOKEN, VMEP_JOB_ID,
 * VMEP_DEVICE and, with --nodes, VMEP_NODES), with a private MPS daemon
 * when ranks share a GPU. This file
 * parses the command line and sets the job up; run_ranks.c supervises the
 * ranks and run_mps.c runs the daemon.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli.h"
#include "vmep.h"
#include "vmep_run.h"

#define MAX_RANKS 4096
#define MAX_GPUS 1024
#define ENV_VARS 10 /* VMEP_* and CUDA_MPS_* variables set per rank */
#define ENV_BYTES 320

extern char **environ;

enum mps_mode { MPS_AUTO, MPS_ON, MPS_OFF };

struct options {
  int ranks;
  int gpus[MAX_GPUS];
  int gpu_count; /* 0 with gpus_given: never, --gpus needs one */
  int gpus_given;
  enum mps_mode mps;
  int timeout_s;
  int nodes;   /* --nodes: pretend nodes, 0 when not given */
  char **argv; /* the program and its arguments */
};

static void usage(FILE *out) {
  fprintf(out,
          "usage: vmep-run -n N [--nodes K] [--gpus LIST] [--mps "
          "auto|on|off]\n"
          "                [--timeout S] [--] PROGRAM [ARGS...]\n"
          "Starts N local ranks of PROGRAM for vmep and prefixes each line of\n"
          "their output with \"[rank i] \".\n"
          "  -n N            number of ranks (1..%d)\n"
          "  --nodes K       split the ranks into K pretend nodes (1..N) in\n"
          "                  contiguous blocks: rank r is in node r * K / N;\n"
          "                  peers in other pretend nodes are never mapped\n"
          "                  (VMEP_NODES=K; VMEP_LOCAL_RANK is the rank "
          "within\n"
          "                  its pretend node)\n"
          "  --gpus LIST     devices to assign round-robin, e.g. 0,1 "
          "(default: all)\n"
          "  --mps MODE      when ranks share a GPU: auto (default) starts a "
          "private\n"
          "                  MPS daemon if nvidia-cuda-mps-control is found, "
          "on\n"
          "                  requires it, off never starts one\n"
          "  --timeout S     kill all ranks after S seconds and exit 124\n"
          "  --version       print the version\n"
          "  -h, --help      this text\n"
          "Every rank gets VMEP_RANK, VMEP_WORLD_SIZE, VMEP_LOCAL_RANK,\n"
          "VMEP_STORE_ADDR (rank 0 hosts the store), VMEP_JOB_TOKEN, "
          "VMEP_JOB_ID,\n"
          "VMEP_NODES with --nodes and, when there are GPUs, VMEP_DEVICE. If "
          "a rank\n"
          "fails, the others are killed and vmep-run exits with its status\n"
          "(128+signal when killed).\n",
          MAX_RANKS);
}

/* Prints the problem as one line and returns 2 (usage only on --help). */
#define usage_error(...) cli_usage_error("vmep-run", __VA_ARGS__)

/* Plain decimal in [min, max]; 0 on success. */
static int parse_int(const char *text, long min, long max, int *out) {
  long long value = 0;
  if (!text || text[0] == '-' || cli_parse_int(text, min, max, &value) != 0)
    return -1;
  *out = (int)value;
  return 0;
}

static int parse_gpus(const char *list, struct options *opt) {
  const char *p = list;
  opt->gpu_count = 0;
  while (*p) {
    char item[16];
    size_t n = strcspn(p, ",");
    if (n == 0 || n >= sizeof(item) || opt->gpu_count == MAX_GPUS)
      return -1;
    memcpy(item, p, n);
    item[n] = '\0';
    if (parse_int(item, 0, 65535, &opt->gpus[opt->gpu_count++]) != 0)
      return -1;
    p += n;
    if (*p == ',' && *++p == '\0')
      return -1;
  }
  opt->gpus_given = 1;
  return opt->gpu_count > 0 ? 0 : -1;
}

/* The value of option `name` at argv[*i]: "--name=value" or the next
 * argument. NULL when missing. */
static const char *option_value(char **argv, int argc, int *i,
                                const char *name) {
  size_t n = strlen(name);
  if (argv[*i][n] == '=')
    return argv[*i] + n + 1;
  if (*i + 1 >= argc)
    return NULL;
  return argv[++*i];
}

static int is_option(const char *arg, const char *name) {
  size_t n = strlen(name);
  return strncmp(arg, name, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

/* Returns -1 to go on, or an exit status (help: 0, bad arguments: 2). */
static int parse_args(int argc, char **argv, struct options *opt) {
  static const char *const modes[] = {"auto", "on", "off"};
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; i++) {
    const char *arg = argv[i], *value;
    if (strcmp(arg, "--") == 0) {
      i++;
      break;
    }
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      usage(stdout);
      return 0;
    }
    if (strcmp(arg, "--version") == 0)
      return cli_print_version("vmep-run");
    if (is_option(arg, "-n")) {
      value = option_value(argv, argc, &i, "-n");
      if (parse_int(value, 1, MAX_RANKS, &opt->ranks) != 0)
        return usage_error("-n needs a rank count in 1..%d, not \"%s\"",
                           MAX_RANKS, value ? value : "");
    } else if (is_option(arg, "--gpus")) {
      value = option_value(argv, argc, &i, "--gpus");
      if (!value || parse_gpus(value, opt) != 0)
        return usage_error("--gpus needs a list of device ordinals such as "
                           "0,1,2, not \"%s\"",
                           value ? value : "");
    } else if (is_option(arg, "--mps")) {
      value = option_value(argv, argc, &i, "--mps");
      int m = 0;
      while (m < 3 && (!value || strcmp(value, modes[m]) != 0))
        m++;
      if (m == 3)
        return usage_error("--mps takes auto, on or off, not \"%s\"",
                           value ? value : "");
      opt->mps = (enum mps_mode)m;
    } else if (is_option(arg, "--nodes")) {
      value = option_value(argv, argc, &i, "--nodes");
      if (parse_int(value, 1, MAX_RANKS, &opt->nodes) != 0)
        return usage_error("--nodes needs a node count in 1..%d (at most -n), "
                           "not \"%s\"",
                           MAX_RANKS, value ? value : "");
    } else if (is_option(arg, "--timeout")) {
      value = option_value(argv, argc, &i, "--timeout");
      if (parse_int(value, 1, 100000000, &opt->timeout_s) != 0)
        return usage_error("--timeout needs whole seconds >= 1, not \"%s\"",
                           value ? value : "");
    } else {
      return usage_error("unknown option %s (see vmep-run --help)", arg);
    }
  }
  if (opt->ranks == 0)
    return usage_error("-n N is required");
  if (opt->nodes > opt->ranks)
    return usage_error("--nodes %d: expected a node count in 1..%d (the "
                       "ranks of -n)",
                       opt->nodes, opt->ranks);
  if (i >= argc)
    return usage_error("no PROGRAM to run");
  opt->argv = argv + i;
  return -1;
}

/* Devices: --gpus, checked against the driver (no driver or no device
 * refuses --gpus); else all devices; none without a driver. --mps on needs
 * a device. */
static int resolve_gpus(struct options *opt) {
  int count = 0;
  /* Tests only: VMEP_RUN_FAKE_DEVICES=N stands for N devices, so that
   * --gpus and the MPS daemon's life cycle are tested without a GPU. */
  const char *fake = getenv("VMEP_RUN_FAKE_DEVICES");
  if (fake && parse_int(fake, 0, MAX_GPUS, &count) == 0)
    ;
  else if (vmep_device_count(&count) != VMEP_OK)
    count = -1; /* no driver */
  if ((opt->gpus_given || opt->mps == MPS_ON) && count <= 0) {
    fprintf(stderr, "vmep-run: %s: no GPU is usable here (%s)\n",
            opt->gpus_given ? "--gpus" : "--mps on",
            count < 0 ? vmep_last_error() : "the driver reports 0 devices");
    return RUN_EXIT_SETUP;
  }
  if (!opt->gpus_given) {
    opt->gpu_count = count > MAX_GPUS ? MAX_GPUS : count > 0 ? count : 0;
    for (int g = 0; g < opt->gpu_count; g++)
      opt->gpus[g] = g;
    return 0;
  }
  for (int g = 0; g < opt->gpu_count; g++)
    if (count >= 0 && opt->gpus[g] >= count) {
      fprintf(stderr,
              "vmep-run: --gpus names device %d, but only %d are "
              "visible\n",
              opt->gpus[g], count);
      return RUN_EXIT_USAGE;
    }
  return 0;
}

/* Nonzero when two ranks get the same device. */
static int gpus_shared(const struct options *opt) {
  for (int a = 0; a < opt->ranks && a < opt->gpu_count; a++)
    for (int b = a + 1; b < opt->ranks; b++)
      if (opt->gpus[a] == opt->gpus[b % opt->gpu_count])
        return 1;
  return 0;
}

/* Starts the MPS daemon when ranks share a GPU and --mps allows. Returns 0
 * (with or without a daemon) or RUN_EXIT_SETUP. */
static int setup_mps(const struct options *opt, struct run_mps *mps) {
  if (opt->mps == MPS_OFF || opt->gpu_count == 0 || !gpus_shared(opt))
    return 0;
  if (run_mps_find(mps) != 0) {
    if (opt->mps == MPS_ON) {
      fprintf(stderr, "vmep-run: --mps on, but nvidia-cuda-mps-control is "
                      "not in PATH\n");
      return RUN_EXIT_SETUP;
    }
    fprintf(stderr, "vmep-run: warning: ranks share a GPU, but "
                    "nvidia-cuda-mps-control is not in PATH: running without "
                    "MPS (time-sliced, cross-process round trips take "
                    "milliseconds)\n");
    return 0;
  }
  if (run_mps_start(mps) == 0)
    return 0;
  if (opt->mps == MPS_ON)
    return RUN_EXIT_SETUP;
  fprintf(stderr, "vmep-run: warning: running without MPS\n");
  return 0;
}

/* A free TCP port on 127.0.0.1 for rank 0's store; 0 on failure. */
static int free_port(void) {
  struct sockaddr_in addr = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(addr);
  int port = 0;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 &&
      getsockname(fd, (struct sockaddr *)&addr, &len) == 0)
    port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

/* `bytes` random bytes from /dev/urandom as hex into out[2 * bytes + 1]. */
static int random_hex(char *out, size_t bytes) {
  unsigned char raw[32];
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0 || bytes > sizeof(raw))
    return -1;
  ssize_t n = read(fd, raw, bytes);
  close(fd);
  if (n != (ssize_t)bytes)
    return -1;
  for (size_t i = 0; i < bytes; i++)
    snprintf(out + 2 * i, 3, "%02x", raw[i]);
  return 0;
}

/* The variables rank `r` gets, as "NAME=value" (a bare "NAME" drops it)
 * in set[], formatted into vars[]; returns their count. */
static int rank_vars(const struct options *opt, const struct run_mps *mps,
                     int r, const char *common[3], char (*vars)[ENV_BYTES],
                     char **set) {
  int n = 0, local = r;
  if (opt->nodes) { /* the rank within its pretend node r * K / N */
    long long node = (long long)r * opt->nodes / opt->ranks;
    local = r - (int)((node * opt->ranks + opt->nodes - 1) / opt->nodes);
    snprintf(vars[n++], ENV_BYTES, "VMEP_NODES=%d", opt->nodes);
  }
  snprintf(vars[n++], ENV_BYTES, "VMEP_RANK=%d", r);
  snprintf(vars[n++], ENV_BYTES, "VMEP_WORLD_SIZE=%d", opt->ranks);
  snprintf(vars[n++], ENV_BYTES, "VMEP_LOCAL_RANK=%d", local);
  for (int c = 0; c < 3; c++)
    snprintf(vars[n++], ENV_BYTES, "%s", common[c]);
  if (opt->gpu_count)
    snprintf(vars[n++], ENV_BYTES, "VMEP_DEVICE=%d",
             opt->gpus[r % opt->gpu_count]);
  else /* no GPU: an inherited VMEP_DEVICE would lie */
    snprintf(vars[n++], ENV_BYTES, "VMEP_DEVICE");
  for (int v = 0; v < n; v++)
    set[v] = vars[v];
  if (mps->started) {
    set[n++] = (char *)mps->pipe_env;
    set[n++] = (char *)mps->log_env;
  }
  return n;
}

/* The store address, token and job id every rank shares. */
static int job_vars(char common[3][ENV_BYTES]) {
  char token[33], job[17];
  int port = free_port();
  if (!port) {
    fprintf(stderr, "vmep-run: no free TCP port on 127.0.0.1: %s\n",
            strerror(errno));
    return -1;
  }
  if (random_hex(token, 16) != 0 || random_hex(job, 8) != 0) {
    fprintf(stderr, "vmep-run: reading /dev/urandom: %s\n", strerror(errno));
    return -1;
  }
  snprintf(common[0], ENV_BYTES, "VMEP_STORE_ADDR=127.0.0.1:%d", port);
  snprintf(common[1], ENV_BYTES, "VMEP_JOB_TOKEN=%s", token);
  snprintf(common[2], ENV_BYTES, "VMEP_JOB_ID=run-%d-%s", (int)getpid(), job);
  return 0;
}

/* Every rank's environment; NULL after printing why. */
static char ***build_envs(const struct options *opt,
                          const struct run_mps *mps) {
  char common[3][ENV_BYTES], vars[ENV_VARS][ENV_BYTES];
  const char *shared[3] = {common[0], common[1], common[2]};
  if (job_vars(common) != 0)
    return NULL;
  char ***envs = calloc((size_t)opt->ranks, sizeof(*envs));
  int r = 0;
  for (; envs && r < opt->ranks; r++) {
    char *set[ENV_VARS];
    int n = rank_vars(opt, mps, r, shared, vars, set);
    envs[r] = run_env_build(set, n);
    if (!envs[r])
      break;
  }
  if (envs && r == opt->ranks)
    return envs;
  for (int i = 0; envs && i < r; i++)
    free(envs[i]);
  free(envs);
  fprintf(stderr, "vmep-run: out of memory\n");
  return NULL;
}

/* The length of the name in "NAME=value" (all of it without '='). */
static size_t name_length(const char *entry) { return strcspn(entry, "="); }

char **run_env_build(char *const *extra, int count) {
  size_t inherited = 0, text = 0, n = 0;
  while (environ[inherited])
    inherited++;
  for (int e = 0; e < count; e++)
    text += strlen(extra[e]) + 1;
  size_t slots = inherited + (size_t)count + 1;
  char **env = malloc(slots * sizeof(*env) + text);
  if (!env)
    return NULL;
  char *copy = (char *)(env + slots); /* the overrides' text */
  for (size_t i = 0; i < inherited; i++) {
    int overridden = 0;
    for (int e = 0; e < count && !overridden; e++)
      overridden = name_length(environ[i]) == name_length(extra[e]) &&
                   strncmp(environ[i], extra[e], name_length(extra[e])) == 0;
    if (!overridden)
      env[n++] = environ[i];
  }
  for (int e = 0; e < count; e++) {
    if (extra[e][name_length(extra[e])] != '=')
      continue; /* "NAME" alone only drops NAME */
    size_t len = strlen(extra[e]) + 1;
    memcpy(copy, extra[e], len);
    env[n++] = copy;
    copy += len;
  }
  env[n] = NULL;
  return env;
}

/* Runs the job once the command line is parsed; returns the exit status. */
static int run(const struct options *opt, struct run_job *job, int signal_fd) {
  struct run_mps mps;
  memset(&mps, 0, sizeof(mps));
  int status = setup_mps(opt, &mps);
  if (status != 0)
    return status;
  job->mps_on = mps.started;
  char ***envs = build_envs(opt, &mps);
  job->ranks = calloc((size_t)opt->ranks, sizeof(*job->ranks));
  job->count = opt->ranks;
  job->timeout_s = opt->timeout_s;
  if (!envs || !job->ranks) {
    status = RUN_EXIT_SETUP;
  } else {
    for (int r = 0; r < opt->ranks; r++)
      job->ranks[r].device =
          opt->gpu_count ? opt->gpus[r % opt->gpu_count] : -1;
    status = run_ranks_start(job, opt->argv, (char **const *)envs) != 0
                 ? RUN_EXIT_SETUP
                 : run_ranks_supervise(job, signal_fd);
  }
  run_mps_stop(&mps);
  for (int r = 0; envs && r < opt->ranks; r++)
    free(envs[r]);
  free(envs);
  free(job->ranks);
  return status;
}

int main(int argc, char **argv) {
  struct options opt;
  struct run_job job;
  sigset_t handled;
  memset(&opt, 0, sizeof(opt));
  memset(&job, 0, sizeof(job));
  /* From here on these signals arrive through a signalfd: the supervisor
   * forwards them to the ranks instead of dying. Children get the old mask
   * back before exec. Blocked first thing: resolve_gpus loads the CUDA
   * driver, whose threads inherit the mask in force when they start; a
   * thread that does not block SIGCHLD would take (and discard) a rank's
   * exit, and the launcher would never reap it. */
  sigemptyset(&handled);
  sigaddset(&handled, SIGCHLD);
  sigaddset(&handled, SIGINT);
  sigaddset(&handled, SIGTERM);
  sigaddset(&handled, SIGHUP);
  sigprocmask(SIG_BLOCK, &handled, &job.parent_mask);
  signal(SIGPIPE, SIG_IGN); /* a closed stdout must not kill the launcher */
  opt.mps = MPS_AUTO;
  int status = parse_args(argc, argv, &opt);
  if (status >= 0)
    return status;
  status = resolve_gpus(&opt);
  if (status != 0)
    return status;
  int signal_fd = signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK);
  if (signal_fd < 0) {
    fprintf(stderr, "vmep-run: signalfd: %s\n", strerror(errno));
    return RUN_EXIT_SETUP;
  }
  status = run(&opt, &job, signal_fd);
  close(signal_fd);
  return status;
}
