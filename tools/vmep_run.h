/*
 * vmep-run, the local launcher: shared declarations of its three parts.
 * vmep_run.c parses the command line and sets up the job (port, token, job
 * id, devices, environment), run_mps.c starts and stops a private MPS
 * daemon, run_ranks.c starts the ranks and supervises them (output
 * prefixes, failures, timeout, signals).
 */
#ifndef VMEP_RUN_H
#define VMEP_RUN_H

#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <sys/types.h>

/* Exit statuses of vmep-run itself (a failed rank's status is passed on). */
#define RUN_EXIT_SETUP 1 /* could not set the job up */
#define RUN_EXIT_USAGE 2 /* bad command line */
#define RUN_EXIT_TIMEOUT 124
#define RUN_EXIT_SIGNAL 128 /* plus the signal number */

/* One started rank. `device` is -1 when no device was assigned. */
struct run_rank {
  pid_t pid; /* also its process group: each rank leads its own */
  int device;
  int out_fd, err_fd;        /* read ends of its stdout and stderr, -1 at EOF */
  char *out_line, *err_line; /* partial lines not yet printed */
  size_t out_used, err_used;
  int reaped;
};

/* What the supervisor needs to know about the job. */
struct run_job {
  struct run_rank *ranks;
  int count;
  int timeout_s;        /* 0: none */
  int mps_on;           /* a private MPS daemon serves the ranks */
  sigset_t parent_mask; /* signal mask to restore in children */
};

/*
 * A copy of the environment with `count` overrides in `extra`: "NAME=value"
 * replaces NAME, a bare "NAME" removes it. NULL-terminated, in one
 * allocation the caller frees with free(); NULL when out of memory.
 */
char **run_env_build(char *const *extra, int count);

/* The private MPS daemon: a fresh directory holds its pipes and logs. */
#define RUN_MPS_DIR_BYTES 256
#define RUN_MPS_PATH_BYTES (RUN_MPS_DIR_BYTES + 16)

struct run_mps {
  char dir[RUN_MPS_DIR_BYTES];
  char pipe_env[RUN_MPS_PATH_BYTES + 32]; /* CUDA_MPS_PIPE_DIRECTORY=... */
  char log_env[RUN_MPS_PATH_BYTES + 32];  /* CUDA_MPS_LOG_DIRECTORY=... */
  char control[PATH_MAX]; /* the nvidia-cuda-mps-control binary */
  int started;
};

/* Finds nvidia-cuda-mps-control in PATH and records it in mps->control;
 * returns 0, or -1 when it is not there. */
int run_mps_find(struct run_mps *mps);

/* Makes the directory and starts the daemon with `control -d`; returns 0,
 * or -1 after printing why (then nothing is left behind). */
int run_mps_start(struct run_mps *mps);

/* Tells a started daemon to quit, waits for that, and removes the
 * directory. No-op when it was not started. */
void run_mps_stop(struct run_mps *mps);

/*
 * Starts every rank of `job` (each in its own process group, stdin from
 * /dev/null, stdout and stderr into pipes) running argv with envs[i]; on
 * failure kills the ones already started and returns -1 after printing
 * why. Returns 0 otherwise.
 */
int run_ranks_start(struct run_job *job, char *const *argv, char **const *envs);

/*
 * Supervises the started ranks until all are gone: prints their lines with
 * "[rank i] ", and on the first failure, --timeout or a forwarded
 * SIGINT/SIGTERM/SIGHUP (read from `signal_fd`, a non-blocking signalfd) stops
 * all of them (SIGTERM, SIGKILL after a grace period). Returns vmep-run's exit
 * status and frees the ranks' buffers.
 */
int run_ranks_supervise(struct run_job *job, int signal_fd);

#endif /* VMEP_RUN_H */
